//! The report's timeline: the service's events around the incident, with the incident
//! record's own instants where the event log has no row for them.

use std::fmt::Write as _;

use serde_json::Value;

use super::format::cell;
use super::{Facts, impact_i64};
use crate::clock::format_utc;
use crate::ledger::Event;

/// How far before the incident the timeline reaches when the bad release's deploy is
/// not among the events.
const LEAD_IN_MS: i64 = 60_000;
/// How far past the incident's end the timeline reaches: long enough for the release
/// rolled away from to drain and stop.
const TAIL_MS: i64 = 10_000;

/// One row of the timeline. `synthetic` rows come from the incident record rather than
/// the event log, and say so.
struct Row {
    ts_ms: i64,
    what: String,
    detail: String,
    synthetic: bool,
}

pub(super) fn timeline(out: &mut String, f: &Facts<'_>) {
    let inc = f.inc;
    let start = f.deploy_started.map_or_else(
        || inc.opened_at_ms.min(f.reference_ms) - LEAD_IN_MS,
        |e| e.ts_ms,
    );
    // An incident still open has no end yet: everything after the start belongs to it.
    let end = inc
        .closed_at_ms
        .or(inc.verified_at_ms)
        .map_or(i64::MAX, |ms| ms.saturating_add(TAIL_MS));
    let events: Vec<&Event> = f
        .input
        .events
        .iter()
        .filter(|e| e.service == inc.service)
        .filter(|e| (start..=end).contains(&e.ts_ms) || e.incident_id == Some(inc.id))
        .collect();
    let has =
        |kind: &str, after_ms: i64| events.iter().any(|e| e.kind == kind && e.ts_ms >= after_ms);

    let mut rows: Vec<Row> = events
        .iter()
        .map(|e| Row {
            ts_ms: e.ts_ms,
            what: format!("`{}`", e.kind),
            detail: event_detail(f, e),
            synthetic: false,
        })
        .collect();
    let mut synthetic = |ts_ms: i64, what: &str, detail: String| {
        rows.push(Row {
            ts_ms,
            what: what.to_string(),
            detail,
            synthetic: true,
        });
    };
    if let Some(ms) = f.first_bad_ms {
        synthetic(
            ms,
            "first bad observation",
            format!(
                "the first bad request (or check) the guard saw from {}",
                f.bad
            ),
        );
    }
    if !has("incident_opened", i64::MIN) {
        synthetic(
            inc.opened_at_ms,
            "incident opened",
            format!("incident #{} opened: {}", inc.id, inc.summary),
        );
    }
    if let Some(ms) = impact_i64(inc, "detected_at_ms")
        && !has("trigger_fired", i64::MIN)
    {
        synthetic(
            ms,
            "trigger fired",
            format!("the `{}` rule fired", inc.rule),
        );
    }
    if let Some(ms) = inc.switched_at_ms
        && !has("traffic_switched", inc.opened_at_ms)
    {
        let to = f
            .target
            .as_deref()
            .map_or_else(String::new, |t| format!(" to {t}"));
        synthetic(ms, "traffic switched", format!("traffic switched{to}"));
    }
    if let Some(ms) = inc.verified_at_ms
        && !has("verified", i64::MIN)
    {
        let of = f
            .target
            .as_deref()
            .map_or_else(String::new, |t| format!(" of {t}"));
        synthetic(ms, "verified", format!("verification{of} passed"));
    }
    if let Some(ms) = inc.closed_at_ms
        && Some(ms) != inc.verified_at_ms
    {
        synthetic(
            ms,
            "incident closed",
            format!("incident #{} closed as {}", inc.id, inc.status),
        );
    }
    // A stable sort keeps the ledger's own order among events of the same millisecond.
    rows.sort_by_key(|r| r.ts_ms);

    let since = if f.reference_is_first_bad {
        "Since first bad request"
    } else {
        "Since incident opened"
    };
    let _ = writeln!(out, "## Timeline\n");
    let _ = writeln!(out, "| Time (UTC) | {since} | Event | Detail |");
    let _ = writeln!(out, "| --- | ---: | --- | --- |");
    for r in &rows {
        let what = if r.synthetic {
            format!("*{}*", r.what)
        } else {
            r.what.clone()
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            format_utc(r.ts_ms).trim_end_matches(" UTC"),
            f.offset(r.ts_ms),
            what,
            cell(&r.detail)
        );
    }
    out.push('\n');
    if rows.iter().any(|r| r.synthetic) {
        let _ = writeln!(
            out,
            "Rows in italics come from the incident record rather than the event log.\n"
        );
    }
}

/// What a timeline row says about an event: its message, with the version and reason
/// where the message leaves them out.
fn event_detail(f: &Facts<'_>, e: &Event) -> String {
    let version = f.version_of(e.release_id);
    let reason = e
        .data
        .as_ref()
        .and_then(|d| d.get("reason"))
        .and_then(Value::as_str);
    match e.kind.as_str() {
        "deploy_started" | "rollback_started" => {
            let op = e.kind.trim_end_matches("_started");
            let mut s = match (version, op) {
                (Some(v), "rollback") => format!("rollback to {v} started"),
                (Some(v), _) => format!("{op} of {v} started"),
                (None, _) => e.message.clone(),
            };
            if let Some(r) = reason {
                let _ = write!(s, ": {r}");
            }
            s
        }
        "decision" => {
            let reasons: Vec<&str> = e
                .data
                .as_ref()
                .and_then(|d| d.get("reasons"))
                .and_then(Value::as_array)
                .map(|rs| rs.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let field = |path: &str| {
                e.data
                    .as_ref()
                    .and_then(|d| d.pointer(path))
                    .and_then(Value::as_str)
            };
            match (field("/action/action"), field("/action/kind")) {
                _ if reasons.is_empty() => e.message.clone(),
                (Some(a), Some(k)) => format!("{a} ({k}): {}", reasons.join("; ")),
                (Some(a), None) => format!("{a}: {}", reasons.join("; ")),
                (None, _) => e.message.clone(),
            }
        }
        _ => e.message.clone(),
    }
}
