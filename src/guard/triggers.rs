//! Trigger rules: each turns what the windows hold into `Ok`, `NoData` (not enough to
//! judge, reported as such: never read as healthy) or `Fired` with the values that made
//! it fire. A ratio only fires when its Wilson lower bound is above the threshold and the
//! window holds at least `min_samples`, so a handful of requests cannot cause a rollback.
//!
//! Pure: values and time in, verdicts out.

use serde::Serialize;
use serde_json::json;

use super::window::{Window, WindowStats};
use crate::config::{CpuRule, ErrorRateRule, HealthRule, LatencyRule};

/// Which rule fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    ErrorRate,
    LatencyP95,
    OomKill,
    Crash,
    Cpu,
    Health,
    /// A metric rule (a PromQL query against the user's Prometheus).
    Metric,
    DataCorruption,
}

impl Rule {
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::ErrorRate => "error_rate",
            Rule::LatencyP95 => "latency_p95",
            Rule::OomKill => "oom_kills",
            Rule::Crash => "crash",
            Rule::Cpu => "cpu",
            Rule::Health => "health",
            Rule::Metric => "metric",
            Rule::DataCorruption => "data_corruption",
        }
    }
}

/// A fired trigger: the rule, the release it is about, and why, in numbers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    pub rule: Rule,
    pub release_id: i64,
    pub at_ms: i64,
    /// One sentence for people, with the values and the window.
    pub summary: String,
    pub values: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Ok(String),
    NoData(String),
    Fired(Finding),
}

impl Verdict {
    pub fn fired(&self) -> Option<&Finding> {
        match self {
            Verdict::Fired(f) => Some(f),
            _ => None,
        }
    }
}

/// The z for a one-sided 99% bound: false alarms stay rare even across many windows.
pub const Z: f64 = 2.576;

/// The Wilson score interval's lower bound for `k` successes in `n` trials.
pub fn wilson_lower(k: u64, n: u64, z: f64) -> f64 {
    if n == 0 {
        return 0.0;
    }
    let n_f = n as f64;
    let p = k as f64 / n_f;
    let z2 = z * z;
    let centre = p + z2 / (2.0 * n_f);
    let spread = z * (p * (1.0 - p) / n_f + z2 / (4.0 * n_f * n_f)).sqrt();
    ((centre - spread) / (1.0 + z2 / n_f)).max(0.0)
}

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

/// The 5xx ratio over the rule's time window.
pub fn error_rate(
    rule: &ErrorRateRule,
    stats: &WindowStats,
    release_id: i64,
    now_ms: i64,
) -> Verdict {
    ratio_verdict(
        rule,
        stats.errors,
        stats.requests,
        &format!("over the last {} s", rule.window_secs),
        release_id,
        now_ms,
    )
}

/// The 5xx ratio over the release's most recent requests: a sudden failure shows here
/// before it outweighs a window of healthy traffic. The same bound and threshold apply.
pub fn error_rate_recent(
    rule: &ErrorRateRule,
    errors: u64,
    requests: u64,
    release_id: i64,
    now_ms: i64,
) -> Verdict {
    ratio_verdict(
        rule,
        errors,
        requests,
        &format!("in the last {requests} requests"),
        release_id,
        now_ms,
    )
}

fn ratio_verdict(
    rule: &ErrorRateRule,
    errors: u64,
    requests: u64,
    window: &str,
    release_id: i64,
    now_ms: i64,
) -> Verdict {
    if requests < rule.min_samples {
        return Verdict::NoData(format!(
            "{requests} request{} {window} (needs {} to judge the 5xx ratio)",
            if requests == 1 { "" } else { "s" },
            rule.min_samples
        ));
    }
    let ratio = errors as f64 / requests as f64;
    let lower = wilson_lower(errors, requests, Z);
    if lower > rule.above {
        return Verdict::Fired(Finding {
            rule: Rule::ErrorRate,
            release_id,
            at_ms: now_ms,
            summary: format!(
                "5xx ratio {} ({errors} of {requests} requests; 99% lower bound {}) {window} is above {}",
                pct(ratio),
                pct(lower),
                pct(rule.above)
            ),
            values: json!({
                "ratio": ratio, "lower_bound": lower, "errors": errors,
                "requests": requests, "threshold": rule.above, "window": window,
                "window_secs": rule.window_secs,
            }),
        });
    }
    Verdict::Ok(format!(
        "5xx ratio {} of {requests} requests {window} (threshold {})",
        pct(ratio),
        pct(rule.above)
    ))
}

/// p95 above `factor` × the previous release's healthy p95 (and above `floor_ms`): fires
/// when the share of requests slower than that limit is confidently above 5%.
pub fn latency_p95(
    rule: &LatencyRule,
    window: &Window,
    baseline_p95_us: Option<u64>,
    release_id: i64,
    now_ms: i64,
) -> Verdict {
    let Some(baseline) = baseline_p95_us else {
        return Verdict::NoData(
            "no baseline p95: the previous release has no recorded healthy latency".to_string(),
        );
    };
    let stats = window.stats(now_ms);
    if stats.requests < rule.min_samples {
        return Verdict::NoData(format!(
            "{} requests in the last {} s (needs {} to judge p95)",
            stats.requests, rule.window_secs, rule.min_samples
        ));
    }
    let limit_us = ((baseline as f64 * rule.factor) as u64).max(rule.floor_ms * 1000);
    let slow = window.slower_than(now_ms, limit_us);
    let lower = wilson_lower(slow, stats.requests, Z);
    let p95 = stats.p95_us.unwrap_or(0);
    if lower > 0.05 {
        return Verdict::Fired(Finding {
            rule: Rule::LatencyP95,
            release_id,
            at_ms: now_ms,
            summary: format!(
                "p95 {} ms over the last {} s is above {} × the baseline {} ms ({} of {} requests slower than {} ms)",
                p95 / 1000,
                rule.window_secs,
                rule.factor,
                baseline as f64 / 1000.0,
                slow,
                stats.requests,
                limit_us / 1000
            ),
            values: json!({
                "p95_ms": p95 as f64 / 1000.0, "baseline_p95_ms": baseline as f64 / 1000.0,
                "factor": rule.factor, "limit_ms": limit_us as f64 / 1000.0, "slow": slow,
                "requests": stats.requests, "window_secs": rule.window_secs,
            }),
        });
    }
    Verdict::Ok(format!(
        "p95 {} ms (limit {} ms)",
        p95 / 1000,
        limit_us / 1000
    ))
}

pub fn health(
    rule: &HealthRule,
    consecutive_failures: u32,
    probes: u64,
    last: &str,
    release_id: i64,
    now_ms: i64,
) -> Verdict {
    if probes == 0 {
        return Verdict::NoData("no health probe has answered yet".to_string());
    }
    if consecutive_failures >= rule.consecutive_failures {
        return Verdict::Fired(Finding {
            rule: Rule::Health,
            release_id,
            at_ms: now_ms,
            summary: format!(
                "{consecutive_failures} consecutive failed health checks (limit {}); last: {last}",
                rule.consecutive_failures
            ),
            values: json!({
                "consecutive_failures": consecutive_failures,
                "limit": rule.consecutive_failures, "last": last,
            }),
        });
    }
    Verdict::Ok(format!("{consecutive_failures} consecutive failures"))
}

/// CPU share (of one core) above `above` on average over `for_secs`, once the samples
/// cover that span: an average, as a monitoring query would take, so one scheduling dip
/// on a busy host does not reset the clock.
pub fn cpu(rule: &CpuRule, samples: &[(i64, f64)], release_id: i64, now_ms: i64) -> Verdict {
    let from = now_ms - rule.for_secs as i64 * 1000;
    let Some(&(first_at, _)) = samples.first() else {
        return Verdict::NoData("no CPU samples yet".to_string());
    };
    let recent: Vec<f64> = samples
        .iter()
        .filter(|(at, _)| *at >= from)
        .map(|(_, s)| *s)
        .collect();
    if recent.is_empty() {
        return Verdict::NoData("no recent CPU samples".to_string());
    }
    let mean = recent.iter().sum::<f64>() / recent.len() as f64;
    // The first sample is a delta over the second before it: it covers from then.
    // Too short a watch to judge is no data, never a pass.
    if first_at - 1000 > from {
        return Verdict::NoData(format!(
            "CPU {} over {} s watched of the {} s the rule needs",
            pct(mean),
            (now_ms - first_at) / 1000 + 1,
            rule.for_secs
        ));
    }
    if mean > rule.above {
        return Verdict::Fired(Finding {
            rule: Rule::Cpu,
            release_id,
            at_ms: now_ms,
            summary: format!(
                "CPU {} of a core on average over {} s is above {}",
                pct(mean),
                rule.for_secs,
                pct(rule.above)
            ),
            values: json!({ "mean_share": mean, "samples": recent.len(), "threshold": rule.above, "for_secs": rule.for_secs }),
        });
    }
    Verdict::Ok(format!(
        "CPU {} on average over {} s",
        pct(mean),
        rule.for_secs
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn er() -> ErrorRateRule {
        ErrorRateRule {
            above: 0.10,
            window_secs: 120,
            min_samples: 20,
        }
    }

    fn stats(requests: u64, errors: u64) -> WindowStats {
        WindowStats {
            requests,
            errors,
            p95_us: Some(1000),
            covered_ms: 1000,
        }
    }

    #[test]
    fn wilson_bounds() {
        assert_eq!(wilson_lower(0, 0, Z), 0.0);
        assert!(wilson_lower(0, 100, Z) == 0.0);
        let lb = wilson_lower(30, 100, Z);
        assert!((0.19..0.30).contains(&lb), "{lb}");
        assert!(wilson_lower(1000, 1000, Z) > 0.99);
    }

    #[test]
    fn error_rate_table() {
        // (requests, errors, expected): "n" no data, "ok", "fire".
        let cases = [
            (0, 0, "n"),   // no traffic is no data, not health
            (3, 1, "n"),   // one error in three requests is not an outage
            (19, 19, "n"), // below min_samples, however bad
            (20, 2, "ok"),
            (20, 6, "fire"),
            (100, 12, "ok"), // 12% observed but not confidently above 10%
            (1000, 150, "fire"),
            (10_000, 100, "ok"), // 1% background errors
            (200, 60, "fire"),   // the demo's 30%
        ];
        for (n, e, want) in cases {
            let got = match error_rate(&er(), &stats(n, e), 1, 0) {
                Verdict::NoData(_) => "n",
                Verdict::Ok(_) => "ok",
                Verdict::Fired(_) => "fire",
            };
            assert_eq!(got, want, "{e} errors in {n} requests");
        }
    }

    #[test]
    fn a_fired_error_rate_says_why() {
        let f = error_rate(&er(), &stats(200, 60), 7, 5)
            .fired()
            .cloned()
            .unwrap();
        assert_eq!(f.rule, Rule::ErrorRate);
        assert_eq!(f.release_id, 7);
        assert!(
            f.summary
                .starts_with("5xx ratio 30.0% (60 of 200 requests; 99% lower bound"),
            "{}",
            f.summary
        );
        assert_eq!(f.values["window_secs"], 120);
    }

    fn lat() -> LatencyRule {
        LatencyRule {
            factor: 5.0,
            window_secs: 120,
            min_samples: 50,
            floor_ms: 25,
        }
    }

    #[test]
    fn latency_table() {
        let mut fast = Window::new(120);
        let mut slow = Window::new(120);
        let mut tail = Window::new(120);
        for i in 0..200 {
            fast.add(i * 10, false, 2_000 + (i as u64 % 7) * 300);
            slow.add(i * 10, false, 120_000);
            // 3% of requests slow: p95 is still fine.
            tail.add(i * 10, false, if i % 33 == 0 { 500_000 } else { 2_000 });
        }
        let base = Some(10_000); // 10 ms
        assert!(matches!(
            latency_p95(&lat(), &fast, base, 1, 2_000),
            Verdict::Ok(_)
        ));
        let f = latency_p95(&lat(), &slow, base, 1, 2_000);
        assert!(f.fired().is_some(), "{f:?}");
        assert!(matches!(
            latency_p95(&lat(), &tail, base, 1, 2_000),
            Verdict::Ok(_)
        ));
        assert!(matches!(
            latency_p95(&lat(), &slow, None, 1, 2_000),
            Verdict::NoData(_)
        ));
        let mut few = Window::new(120);
        few.add(0, false, 900_000);
        assert!(matches!(
            latency_p95(&lat(), &few, base, 1, 100),
            Verdict::NoData(_)
        ));
        // A tiny baseline does not make jitter a rollback: the floor holds.
        let mut jitter = Window::new(120);
        for i in 0..200 {
            jitter.add(i * 10, false, 1_000 + (i as u64 % 10) * 1_500);
        }
        assert!(matches!(
            latency_p95(&lat(), &jitter, Some(500), 1, 2_000),
            Verdict::Ok(_)
        ));
    }

    #[test]
    fn health_table() {
        let rule = HealthRule {
            consecutive_failures: 3,
            interval_secs: 5,
            timeout_secs: 2,
        };
        assert!(matches!(health(&rule, 0, 0, "", 1, 0), Verdict::NoData(_)));
        assert!(matches!(health(&rule, 2, 10, "503", 1, 0), Verdict::Ok(_)));
        let f = health(&rule, 3, 10, "GET /health answered 503", 1, 0);
        assert!(
            f.fired()
                .unwrap()
                .summary
                .contains("3 consecutive failed health checks")
        );
    }

    #[test]
    fn cpu_table() {
        let rule = CpuRule {
            above: 0.95,
            for_secs: 10,
            investigate: true,
        };
        let burning: Vec<(i64, f64)> = (0..=20).map(|s| (s * 1000, 0.99)).collect();
        assert!(cpu(&rule, &burning, 1, 20_000).fired().is_some());
        // Not watched long enough yet: no data, never a pass.
        assert!(matches!(
            cpu(&rule, &burning[..5], 1, 4_000),
            Verdict::NoData(_)
        ));
        // One dip on a busy host does not reset the clock; a lower average does not fire.
        let mut dip = burning.clone();
        dip[15].1 = 0.8;
        assert!(cpu(&rule, &dip, 1, 20_000).fired().is_some());
        let idle: Vec<(i64, f64)> = (0..=20)
            .map(|s| (s * 1000, if s % 2 == 0 { 0.99 } else { 0.5 }))
            .collect();
        assert!(matches!(cpu(&rule, &idle, 1, 20_000), Verdict::Ok(_)));
        assert!(matches!(cpu(&rule, &[], 1, 20_000), Verdict::NoData(_)));
    }
}
