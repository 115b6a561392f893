//! Trigger rules: each turns what the guard has seen into `Ok`, `NoData` (not enough to
//! judge, reported as such: never read as healthy) or `Fired` with the values that made
//! it fire. The rate rules (5xx ratio, p95) read a sequential detector (`detector.rs`)
//! with a stated false-alarm rate; the others read counts, samples and exits.
//!
//! Pure: values and time in, verdicts out.

use serde::Serialize;
use serde_json::json;

use super::detector::{Alarm, Detector, Spec};
use super::window::{Window, WindowStats};
use crate::config::duration::{secs_json, secs_text};
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

/// `n` with thousands separators: 2,412.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// "1 per 10^8 requests" for people.
pub fn per_requests(n: f64) -> String {
    let exp = n.log10();
    if (exp - exp.round()).abs() < 1e-9 && exp >= 4.0 {
        format!("10^{}", exp.round() as i64)
    } else {
        thousands(n.round() as u64)
    }
}

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{} {}", thousands(n), if n == 1 { one } else { many })
}

/// What the detector has seen, in words: the share, the evidence and what it means.
/// `what` names a bad request ("5xx", "slower than 50 ms").
fn evidence_words(d: &Detector, what: &str) -> String {
    let (total, bad) = d.totals();
    let e = d.evidence();
    format!(
        "{what} {} of {} since it began serving; evidence {:.1} of the {:.1} needed",
        pct(bad as f64 / total as f64),
        plural(total, "request", "requests"),
        e.evidence,
        e.needed
    )
}

/// The sentence behind a fired rate rule: the stretch that crossed, the evidence and the
/// false-alarm rate it stands for.
fn alarm_words(a: &Alarm, spec: &Spec, what: &str, now_ms: i64) -> String {
    let secs = (a.at_ms - a.stretch_since_ms).max(0) as f64 / 1000.0;
    let since = if secs >= 1.0 {
        format!(" ({secs:.0} s)")
    } else {
        format!(" ({:.0} ms)", secs * 1000.0)
    };
    let late = now_ms - a.at_ms;
    format!(
        "{what} {} over the last {}{since}; evidence {:.1} over the {:.1} needed: a healthy release at {} crosses it less than once per {} requests ({} over all {} since it began serving{})",
        pct(a.stretch_bad as f64 / a.stretch_requests.max(1) as f64),
        plural(a.stretch_requests, "request", "requests"),
        a.evidence,
        a.needed,
        pct(spec.healthy),
        per_requests(spec.requests_per_false_alarm),
        pct(a.total_bad as f64 / a.total.max(1) as f64),
        thousands(a.total),
        if late > 1000 {
            format!("; crossed {} s ago", late / 1000)
        } else {
            String::new()
        }
    )
}

fn alarm_values(a: &Alarm, spec: &Spec) -> serde_json::Value {
    json!({
        "ratio": a.stretch_bad as f64 / a.stretch_requests.max(1) as f64,
        "requests": a.stretch_requests, "bad": a.stretch_bad,
        "since_ms": a.stretch_since_ms, "crossed_at_ms": a.at_ms,
        "evidence": a.evidence, "needed": a.needed, "tuned_to": a.tuned_to,
        "total_requests": a.total, "total_bad": a.total_bad,
        "threshold": spec.threshold, "healthy": spec.healthy,
        "requests_per_false_alarm": spec.requests_per_false_alarm,
    })
}

/// The 5xx ratio rule: the sequential detector over the release's requests decides;
/// `window` (the rule's last `window`) gives the recent ratio people read beside it.
pub fn error_rate(
    rule: &ErrorRateRule,
    detector: &Detector,
    window: &WindowStats,
    release_id: i64,
    now_ms: i64,
) -> Verdict {
    let (total, _) = detector.totals();
    let recent = window.error_ratio().map_or(String::new(), |r| {
        format!(
            "; {} over the last {} s ({})",
            pct(r),
            secs_text(rule.window),
            plural(window.requests, "request", "requests")
        )
    });
    if let Some(a) = detector.alarm() {
        let summary = format!("{}{recent}", alarm_words(a, detector.spec(), "5xx", now_ms));
        let mut values = alarm_values(a, detector.spec());
        values["window_secs"] = secs_json(rule.window);
        values["window_ratio"] = json!(window.error_ratio());
        return Verdict::Fired(Finding {
            rule: Rule::ErrorRate,
            release_id,
            at_ms: now_ms,
            summary,
            values,
        });
    }
    if total == 0 {
        return Verdict::NoData("no requests since it began serving".to_string());
    }
    Verdict::Ok(format!(
        "{} (threshold {}){recent}",
        evidence_words(detector, "5xx"),
        pct(rule.above)
    ))
}

/// The p95 is above a limit exactly when more than this share of requests is slower.
pub const SLOW_SHARE: f64 = 0.05;

/// The latency limit: `factor` × the previous release's healthy p95, at least `floor`.
pub fn latency_limit_us(rule: &LatencyRule, baseline_p95_us: u64) -> u64 {
    ((baseline_p95_us as f64 * rule.factor) as u64).max(rule.floor.as_micros() as u64)
}

/// p95 above `factor` × the previous release's healthy p95 (and above `floor`): the
/// p95 is above a limit exactly when more than 5% of requests are slower than it, so
/// the detector watches the stream of slow requests against a 5% threshold. `window`
/// gives the p95 people read beside it.
pub fn latency_p95(
    rule: &LatencyRule,
    detector: Option<&Detector>,
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
    let limit_us = latency_limit_us(rule, baseline);
    let limit = format!("{} ms", limit_us / 1000);
    let Some(detector) = detector.filter(|d| d.totals().0 > 0) else {
        return Verdict::NoData("no timed requests since the baseline was known".to_string());
    };
    let stats = window.stats(now_ms);
    let p95 = stats
        .p95_us
        .map_or("no requests".to_string(), |p| format!("{} ms", p / 1000));
    let what = format!("slower than {limit}:");
    if let Some(a) = detector.alarm() {
        let summary = format!(
            "p95 {p95} over the last {} s is above {} × the baseline {} ms: {}",
            secs_text(rule.window),
            rule.factor,
            baseline as f64 / 1000.0,
            alarm_words(a, detector.spec(), &what, now_ms)
        );
        let mut values = alarm_values(a, detector.spec());
        values["p95_ms"] = json!(stats.p95_us.map(|p| p as f64 / 1000.0));
        values["baseline_p95_ms"] = json!(baseline as f64 / 1000.0);
        values["factor"] = json!(rule.factor);
        values["limit_ms"] = json!(limit_us as f64 / 1000.0);
        values["window_secs"] = secs_json(rule.window);
        return Verdict::Fired(Finding {
            rule: Rule::LatencyP95,
            release_id,
            at_ms: now_ms,
            summary,
            values,
        });
    }
    Verdict::Ok(format!(
        "p95 {p95} (limit {limit}); {}",
        evidence_words(detector, &what)
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

/// CPU share (of one core) above `above` on average over `for`, once the samples
/// cover that span: an average, as a monitoring query would take, so one scheduling dip
/// on a busy host does not reset the clock.
pub fn cpu(rule: &CpuRule, samples: &[(i64, f64)], release_id: i64, now_ms: i64) -> Verdict {
    let from = now_ms - rule.for_.as_millis() as i64;
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
            secs_text(rule.for_)
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
                secs_text(rule.for_),
                pct(rule.above)
            ),
            values: json!({ "mean_share": mean, "samples": recent.len(), "threshold": rule.above, "for_secs": secs_json(rule.for_) }),
        });
    }
    Verdict::Ok(format!(
        "CPU {} on average over {} s",
        pct(mean),
        secs_text(rule.for_)
    ))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn er() -> ErrorRateRule {
        ErrorRateRule {
            above: 0.10,
            window: Duration::from_secs(120),
            requests_per_false_alarm: 1e8,
        }
    }

    /// The detector and the rule's window fed the same requests, 10 ms apart, as the
    /// guard feeds them.
    fn detector(
        rule: &ErrorRateRule,
        outcomes: impl IntoIterator<Item = bool>,
    ) -> (Detector, WindowStats) {
        let mut d = Detector::new(Spec::new(rule.above, rule.requests_per_false_alarm));
        let mut w = Window::new(rule.window);
        let mut last = 0;
        for (i, bad) in outcomes.into_iter().enumerate() {
            last = i as i64 * 10;
            d.observe(last, bad);
            w.add(last, bad, 1_000);
        }
        (d, w.stats(last))
    }

    fn kind(v: &Verdict) -> &'static str {
        match v {
            Verdict::NoData(_) => "n",
            Verdict::Ok(_) => "ok",
            Verdict::Fired(_) => "fire",
        }
    }

    #[test]
    fn numbers_for_people() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(2_412), "2,412");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(per_requests(1e8), "10^8");
        assert_eq!(per_requests(5e7), "50,000,000");
        assert_eq!(per_requests(1000.0), "1,000");
    }

    #[test]
    fn error_rate_table() {
        // (outcomes, expected): "n" no data, "ok", "fire".
        let cases: Vec<(Vec<bool>, &str)> = vec![
            (vec![], "n"),           // no traffic is no data, not health
            (vec![true; 3], "ok"),   // three failures are not yet an outage
            (vec![true; 9], "fire"), // nine in a row are, with no sample minimum
            // One in three failing, for 300 requests: far over 10%.
            ((0..300).map(|i| i % 3 == 0).collect(), "fire"),
            // 1% background errors over 10,000 requests.
            ((0..10_000).map(|i| i % 100 == 0).collect(), "ok"),
            // A long healthy run, then a total failure: caught as fast as at the start.
            ((0..10_009).map(|i| i >= 10_000).collect(), "fire"),
        ];
        for (outcomes, want) in cases {
            let n = outcomes.len();
            let (d, w) = detector(&er(), outcomes);
            let v = error_rate(&er(), &d, &w, 1, 0);
            assert_eq!(kind(&v), want, "{n} requests: {v:?}");
        }
    }

    #[test]
    fn a_fired_error_rate_says_why_in_numbers() {
        let (d, w) = detector(&er(), (0..10_000).map(|i| i >= 9_900 || i % 100 == 0));
        let f = error_rate(&er(), &d, &w, 7, 100_000)
            .fired()
            .cloned()
            .unwrap();
        assert_eq!(f.rule, Rule::ErrorRate);
        assert_eq!(f.release_id, 7);
        let a = d.alarm().unwrap();
        let want = format!(
            "5xx {:.1}% over the last {} requests",
            a.stretch_bad as f64 * 100.0 / a.stretch_requests as f64,
            a.stretch_requests
        );
        assert!(f.summary.starts_with(&want), "{}", f.summary);
        assert!(
            f.summary.contains(&format!(
                "evidence {:.1} over the {:.1} needed: a healthy release at 8.0% crosses it less than once per 10^8 requests",
                a.evidence, a.needed
            )),
            "{}",
            f.summary
        );
        assert_eq!(f.values["window_secs"], 120);
        assert_eq!(f.values["requests"], a.stretch_requests);
        assert_eq!(f.values["total_requests"], a.total);
        assert!(f.values["evidence"].as_f64().unwrap() >= f.values["needed"].as_f64().unwrap());
    }

    #[test]
    fn an_ok_error_rate_shows_its_evidence() {
        // 2,412 requests 10 ms apart: the last 120 s hold them all.
        let (d, w) = detector(&er(), (0..2_412).map(|i| i % 50 == 0));
        let v = error_rate(&er(), &d, &w, 1, 0);
        let Verdict::Ok(text) = v else {
            panic!("{v:?}")
        };
        assert!(
            text.starts_with("5xx 2.0% of 2,412 requests since it began serving; evidence 0."),
            "{text}"
        );
        assert!(
            text.ends_with("needed (threshold 10.0%); 2.0% over the last 120 s (2,412 requests)"),
            "{text}"
        );
    }

    fn lat() -> LatencyRule {
        LatencyRule {
            factor: 5.0,
            window: Duration::from_secs(120),
            floor: Duration::from_millis(25),
            requests_per_false_alarm: 1e8,
        }
    }

    /// A window and the slow-request detector fed the same latencies, as the guard does.
    fn timed(latencies: impl IntoIterator<Item = u64>, limit_us: u64) -> (Window, Detector) {
        let mut w = Window::new(Duration::from_secs(120));
        let mut d = Detector::new(Spec::new(SLOW_SHARE, 1e8));
        for (i, us) in latencies.into_iter().enumerate() {
            w.add(i as i64 * 10, false, us);
            d.observe(i as i64 * 10, us >= limit_us);
        }
        (w, d)
    }

    #[test]
    fn latency_table() {
        let base = Some(10_000); // 10 ms: the limit is 50 ms
        let limit = latency_limit_us(&lat(), 10_000);
        assert_eq!(limit, 50_000);
        let (fast_w, fast) = timed((0..2_000).map(|i| 2_000 + (i % 7) * 300), limit);
        let v = latency_p95(&lat(), Some(&fast), &fast_w, base, 1, 20_000);
        assert_eq!(kind(&v), "ok", "{v:?}");
        let (slow_w, slow) = timed((0..200).map(|_| 120_000), limit);
        let f = latency_p95(&lat(), Some(&slow), &slow_w, base, 1, 2_000);
        let f = f.fired().expect("all slow fires");
        assert!(f.summary.starts_with("p95 "), "{}", f.summary);
        assert!(
            f.summary
                .contains("slower than 50 ms: 100.0% over the last"),
            "{}",
            f.summary
        );
        // 3% slow (under the 5% of a p95): p95 is still fine, for 20,000 requests.
        let (tail_w, tail) = timed(
            (0..20_000).map(|i| if i % 33 == 0 { 500_000 } else { 2_000 }),
            limit,
        );
        let v = latency_p95(&lat(), Some(&tail), &tail_w, base, 1, 200_000);
        assert_eq!(kind(&v), "ok", "{v:?}");
        assert_eq!(
            kind(&latency_p95(&lat(), Some(&slow), &slow_w, None, 1, 2_000)),
            "n"
        );
        assert_eq!(
            kind(&latency_p95(&lat(), None, &slow_w, base, 1, 2_000)),
            "n"
        );
        // A tiny baseline does not make jitter a rollback: the floor holds.
        let limit = latency_limit_us(&lat(), 500);
        assert_eq!(limit, 25_000);
        let (jw, jitter) = timed((0..2_000).map(|i| 1_000 + (i % 10) * 1_500), limit);
        let v = latency_p95(&lat(), Some(&jitter), &jw, Some(500), 1, 20_000);
        assert_eq!(kind(&v), "ok", "{v:?}");
    }

    #[test]
    fn health_table() {
        let rule = HealthRule {
            consecutive_failures: 3,
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
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
            for_: Duration::from_secs(10),
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
