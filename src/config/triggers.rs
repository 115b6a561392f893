//! The guard's trigger rules for one service, with the runbook's defaults.

use std::time::Duration;

use serde::Serialize;

use super::duration;

/// The guard's trigger rules for one service; `None` means the rule is off. Defaults are
/// the runbook's.
#[derive(Debug, Clone, Serialize)]
pub struct Triggers {
    pub error_rate: Option<ErrorRateRule>,
    pub latency_p95: Option<LatencyRule>,
    /// Any OOM kill of the release rolls it back.
    pub oom_kills: bool,
    /// An unexpected exit of the active release rolls it back.
    pub crash: bool,
    pub cpu: Option<CpuRule>,
    pub health: Option<HealthRule>,
}

impl Default for Triggers {
    fn default() -> Self {
        Triggers {
            error_rate: Some(ErrorRateRule::default()),
            latency_p95: Some(LatencyRule::default()),
            oom_kills: true,
            crash: true,
            cpu: Some(CpuRule::default()),
            health: Some(HealthRule::default()),
        }
    }
}

/// The default false-alarm budget of the rate rules: at most one false rollback per this
/// many requests of a release at the edge of the healthy zone (0.8 × the threshold).
pub const DEFAULT_REQUESTS_PER_FALSE_ALARM: f64 = 1e8;

/// A 5xx ratio at or above `above` is a failing release: a sequential test on the
/// per-request stream (docs/guard-statistics.md) decides, with at most one false alarm
/// per `requests_per_false_alarm` requests of a healthy release (≤ 0.8 × `above`).
/// `window` is the span of the ratio people read beside it (status, charts) and the
/// time the runbook gives a sustained failure just over the threshold.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ErrorRateRule {
    pub above: f64,
    #[serde(rename = "window_secs", serialize_with = "duration::as_secs")]
    pub window: Duration,
    pub requests_per_false_alarm: f64,
}

impl Default for ErrorRateRule {
    fn default() -> Self {
        ErrorRateRule {
            above: 0.10,
            window: Duration::from_secs(120),
            requests_per_false_alarm: DEFAULT_REQUESTS_PER_FALSE_ALARM,
        }
    }
}

/// p95 above `factor` × the previous release's healthy p95, and above `floor`: more
/// than 5% of requests slower than that limit, judged by the same sequential test as
/// the 5xx ratio.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LatencyRule {
    pub factor: f64,
    #[serde(rename = "window_secs", serialize_with = "duration::as_secs")]
    pub window: Duration,
    #[serde(rename = "floor_ms", serialize_with = "duration::as_millis")]
    pub floor: Duration,
    pub requests_per_false_alarm: f64,
}

impl Default for LatencyRule {
    fn default() -> Self {
        LatencyRule {
            factor: 5.0,
            window: Duration::from_secs(120),
            floor: Duration::from_millis(25),
            requests_per_false_alarm: DEFAULT_REQUESTS_PER_FALSE_ALARM,
        }
    }
}

/// CPU above `above` of one core for `for`: investigate (or roll back at once).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CpuRule {
    pub above: f64,
    /// `for`: how long the mean share must stay above.
    #[serde(rename = "for_secs", serialize_with = "duration::as_secs")]
    pub for_: Duration,
    /// `action = "investigate"` (the default) or `"rollback"`.
    pub investigate: bool,
}

impl Default for CpuRule {
    fn default() -> Self {
        CpuRule {
            above: 0.95,
            for_: Duration::from_secs(300),
            investigate: true,
        }
    }
}

/// Consecutive failed health probes of the active release.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthRule {
    pub consecutive_failures: u32,
    #[serde(rename = "interval_secs", serialize_with = "duration::as_secs")]
    pub interval: Duration,
    #[serde(rename = "timeout_secs", serialize_with = "duration::as_secs")]
    pub timeout: Duration,
}

impl Default for HealthRule {
    fn default() -> Self {
        HealthRule {
            consecutive_failures: 3,
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
        }
    }
}
