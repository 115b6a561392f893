//! Incident reports: a Markdown post-mortem draft and an SVG chart of the 5xx ratio and
//! p95 latency around an incident, built from the incident, the service's events and
//! its releases, for a person to read the morning after.
//!
//! Everything here is a pure function of its input except [`write`], the only function
//! that touches the file system. A report never invents a number: a value the ledger
//! did not record is printed as "unknown", and a duration is only ever the difference
//! of two recorded instants. Nothing reads the clock, so the same incident always
//! renders the same bytes (which is what lets the snapshot tests hold).
//!
//! `markdown.rs` writes the report from the `Facts` worked out here, with the
//! timeline (`timeline.rs`) and the impact table (`impact.rs`) in files of their own and
//! the way values are written in `format.rs`; `chart.rs` is the chart; `files.rs` the
//! one place that writes files.

pub mod chart;
mod files;
mod format;
pub mod github;
mod impact;
mod markdown;
pub mod runbook;
mod timeline;

#[cfg(test)]
mod tests;

use serde_json::Value;

use crate::ledger::{Event, Incident, Release, ReleaseStatus};
pub use chart::{ChartData, Exposure};
pub use files::{write, write_atomic};
pub use markdown::markdown;

use format::signed_secs;

/// Everything a report is built from.
#[derive(Debug, Clone, Copy)]
pub struct ReportInput<'a> {
    pub incident: &'a Incident,
    /// The service's timeline, oldest first; the report picks the part around the
    /// incident itself, so passing more than that is fine.
    pub events: &'a [Event],
    /// The service's releases, to name versions instead of ids.
    pub releases: &'a [Release],
}

/// How long after an incident opens its root cause and prevention are due.
const WRITE_UP_DUE_MS: i64 = 24 * 3600 * 1000;

/// The chart as an SVG document, or `None` when the incident has no series (or none
/// of its points can be read). Drawing into a string cannot fail in practice; if
/// plotters ever reports an error anyway, there is no chart rather than half of one.
pub fn chart_svg(input: &ReportInput<'_>) -> Option<String> {
    let facts = Facts::new(input);
    let data = facts.chart.as_ref()?;
    let mut svg = String::new();
    chart::draw(&mut svg, &facts, data).ok()?;
    Some(svg)
}

/// The data the chart is drawn from (buckets, the counted window, markers), or `None`
/// when the incident has no series.
pub fn chart_data(input: &ReportInput<'_>) -> Option<ChartData> {
    Facts::new(input).chart
}

// ---- what the report knows ---------------------------------------------------------

/// The facts every section draws on, worked out once from the input.
struct Facts<'a> {
    input: &'a ReportInput<'a>,
    inc: &'a Incident,
    /// The bad release's version, or a phrase that says it is not known.
    bad: String,
    bad_marked_bad: bool,
    first_bad_ms: Option<i64>,
    /// The instant offsets are measured from: the first bad request when recorded,
    /// otherwise the incident's opening.
    reference_ms: i64,
    reference_is_first_bad: bool,
    /// The release's `deploy_started` before the incident.
    deploy_started: Option<&'a Event>,
    /// The bad release's `traffic_switched` before the incident: when users first
    /// reached it.
    deploy_switched: Option<&'a Event>,
    /// The version rolled back to, when the events say.
    target: Option<String>,
    action: Option<ActionFacts>,
    /// The chart's data; its exposure is the one set of request counts every section
    /// shows.
    chart: Option<ChartData>,
}

struct ActionFacts {
    name: String,
    kind: Option<String>,
    deadline_ms: Option<i64>,
}

impl<'a> Facts<'a> {
    fn new(input: &'a ReportInput<'a>) -> Self {
        let inc = input.incident;
        let release = inc
            .release_id
            .and_then(|id| input.releases.iter().find(|r| r.id == id));
        let bad = match (release, inc.release_id) {
            (Some(r), _) => r.version.clone(),
            (None, Some(id)) => format!("release #{id}"),
            (None, None) => "an unknown release".to_string(),
        };
        let first_bad_ms = impact_i64(inc, "first_bad_at_ms").or(inc.first_bad_at_ms);
        let before_incident = |kind: &str| {
            input
                .events
                .iter()
                .filter(|e| {
                    e.kind == kind
                        && e.release_id.is_some()
                        && e.release_id == inc.release_id
                        && e.ts_ms <= inc.opened_at_ms
                })
                .max_by_key(|e| (e.ts_ms, e.id))
        };
        let target = rollback_target(input);
        let action = inc.decision.as_ref().and_then(|d| {
            let a = d.get("action")?;
            Some(ActionFacts {
                name: a.get("action")?.as_str()?.to_string(),
                kind: a.get("kind").and_then(Value::as_str).map(str::to_string),
                deadline_ms: a.get("deadline_ms").and_then(Value::as_i64),
            })
        });
        let mut facts = Facts {
            input,
            inc,
            bad,
            bad_marked_bad: release.is_some_and(|r| r.status == ReleaseStatus::Bad),
            first_bad_ms,
            reference_ms: first_bad_ms.unwrap_or(inc.opened_at_ms),
            reference_is_first_bad: first_bad_ms.is_some(),
            deploy_started: before_incident("deploy_started"),
            deploy_switched: before_incident("traffic_switched"),
            target,
            action,
            chart: None,
        };
        facts.chart = chart::build(&facts);
        facts
    }

    /// The counted window, when the incident kept its requests.
    fn exposure(&self) -> Option<&Exposure> {
        self.chart.as_ref()?.exposure.as_ref()
    }

    /// Where the counted window starts, in words.
    fn exposure_start_words(&self) -> &'static str {
        if self.first_bad_ms.is_some() {
            "the first bad request"
        } else {
            "detection"
        }
    }

    /// Where the counted window ends, in words.
    fn exposure_end_words(&self, e: &Exposure) -> &'static str {
        if e.to_switch {
            "traffic switch"
        } else {
            "last recorded request"
        }
    }

    fn version_of(&self, release: Option<i64>) -> Option<&'a str> {
        let id = release?;
        self.input
            .releases
            .iter()
            .find(|r| r.id == id)
            .map(|r| r.version.as_str())
    }

    /// How long users saw errors: the impact's own figure, else the gap between the
    /// first bad request and the switch when the incident recorded both.
    fn errors_seen_ms(&self) -> Option<i64> {
        impact_i64(self.inc, "errors_seen_ms").or_else(|| self.first_bad_to_switch_ms())
    }

    fn first_bad_to_switch_ms(&self) -> Option<i64> {
        impact_i64(self.inc, "first_bad_to_switch_ms")
            .or_else(|| Some(self.inc.switched_at_ms? - self.first_bad_ms?))
    }

    fn first_bad_to_verified_ms(&self) -> Option<i64> {
        impact_i64(self.inc, "first_bad_to_verified_ms")
            .or_else(|| Some(self.inc.verified_at_ms? - self.first_bad_ms?))
    }

    fn reasons(&self) -> Vec<&'a str> {
        self.inc
            .decision
            .as_ref()
            .and_then(|d| d.get("reasons"))
            .and_then(Value::as_array)
            .map(|rs| rs.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default()
    }

    /// The offset of `ms` from the reference instant, e.g. `+0.213 s`.
    fn offset(&self, ms: i64) -> String {
        signed_secs(ms - self.reference_ms)
    }

    fn due_ms(&self) -> i64 {
        self.inc.opened_at_ms + WRITE_UP_DUE_MS
    }
}

/// The version the incident's rollback went to: the `rollback_started` event after the
/// incident opened names it (its release is the target); failing that, a traffic switch
/// after the incident to some other release.
fn rollback_target(input: &ReportInput<'_>) -> Option<String> {
    let inc = input.incident;
    let version = |id: Option<i64>| {
        let id = id?;
        input
            .releases
            .iter()
            .find(|r| r.id == id)
            .map(|r| r.version.clone())
    };
    let after = |kind: &'static str| {
        input
            .events
            .iter()
            .filter(move |e| e.kind == kind && e.ts_ms >= inc.opened_at_ms)
    };
    after("rollback_started")
        .find_map(|e| version(e.release_id))
        .or_else(|| {
            after("traffic_switched")
                .filter(|e| e.release_id != inc.release_id)
                .find_map(|e| version(e.release_id))
        })
}

fn impact_value<'v>(inc: &'v Incident, key: &str) -> Option<&'v Value> {
    inc.impact.as_ref()?.get(key).filter(|v| !v.is_null())
}

fn impact_i64(inc: &Incident, key: &str) -> Option<i64> {
    impact_value(inc, key)?.as_i64()
}

fn impact_u64(inc: &Incident, key: &str) -> Option<u64> {
    impact_value(inc, key)?.as_u64()
}

fn impact_f64(inc: &Incident, key: &str) -> Option<f64> {
    impact_value(inc, key)?.as_f64()
}
