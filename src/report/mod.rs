//! Incident reports: a Markdown post-mortem draft and an SVG chart of the 5xx ratio and
//! p95 latency around an incident, built from the incident, the service's events and
//! its releases, for a person to read the morning after.
//!
//! Everything here is a pure function of its input except [`write`], the only function
//! that touches the file system. A report never invents a number: a value the ledger
//! did not record is printed as "unknown", and a duration is only ever the difference
//! of two recorded instants. Nothing reads the clock, so the same incident always
//! renders the same bytes (which is what lets the snapshot tests hold).

pub mod chart;
pub mod github;
pub mod runbook;

use std::fmt::Write as _;
use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::Value;

use crate::clock::format_utc;
use crate::ledger::{Event, Incident, Release, ReleaseStatus};
pub use chart::{ChartData, Exposure};

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
/// How far before the incident the timeline reaches when the bad release's deploy is
/// not among the events.
const LEAD_IN_MS: i64 = 60_000;
/// How far past the incident's end the timeline reaches: long enough for the release
/// rolled away from to drain and stop.
const TAIL_MS: i64 = 10_000;

/// The Markdown report. `chart_file`, when given, is embedded as the chart's image
/// link (a path relative to the Markdown file).
pub fn markdown(input: &ReportInput<'_>, chart_file: Option<&str>) -> String {
    let facts = Facts::new(input);
    let mut out = String::new();
    title(&mut out, &facts);
    summary(&mut out, &facts);
    timeline(&mut out, &facts);
    impact(&mut out, &facts, chart_file);
    decision(&mut out, &facts);
    write_ups(&mut out, &facts);
    follow_ups(&mut out, &facts);
    out.push_str(
        "---\n\n_Drafted by ripcord from its ledger. Every number is as recorded; \
         \"unknown\" means the ledger holds no value for it._\n",
    );
    out
}

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

/// Writes `incident-<id>.md` and `incident-<id>.svg` into `dir` (created if missing),
/// each atomically (a temporary file, then a rename), and returns the Markdown path.
/// The SVG is only written when the incident has a series to chart.
pub fn write(dir: &Path, input: &ReportInput<'_>) -> io::Result<PathBuf> {
    fs::create_dir_all(dir)?;
    let id = input.incident.id;
    let svg_name = format!("incident-{id}.svg");
    let svg = chart_svg(input);
    // The chart goes first so the Markdown never links to a file that is not there yet.
    if let Some(svg) = &svg {
        write_atomic(dir, &svg_name, svg.as_bytes())?;
    }
    let md = markdown(input, svg.as_ref().map(|_| svg_name.as_str()));
    write_atomic(dir, &format!("incident-{id}.md"), md.as_bytes())
}

/// Writes `name` in `dir` through a temporary file in the same directory, so a reader
/// sees either the old file or the whole new one, never a torn one.
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<PathBuf> {
    // Two reports written at once in one process must not share a temporary file.
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let tmp = dir.join(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let path = dir.join(name);
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, &path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    // The rename is only durable once the directory itself is synced.
    fs::File::open(dir)?.sync_all()?;
    Ok(path)
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

/// A rule's name as a person would say it.
fn rule_words(rule: &str) -> String {
    match rule {
        "error_rate" => "user-facing errors".to_string(),
        "latency_p95" => "slow responses".to_string(),
        "health" => "failed health checks".to_string(),
        "crash" => "a crash".to_string(),
        "oom_kills" => "OOM kills".to_string(),
        "cpu" => "high CPU".to_string(),
        "data_corruption" => "data corruption".to_string(),
        "decision" => "a guard decision".to_string(),
        other => other.replace('_', " "),
    }
}

/// What users went through under a rule, for "users saw ...": errors unless the rule
/// is about slowness or load.
fn symptom(rule: &str) -> &'static str {
    match rule {
        "latency_p95" => "slow responses",
        "cpu" => "a degraded service",
        _ => "errors",
    }
}

fn rollback_words(kind: Option<&str>) -> &'static str {
    match kind {
        Some("automatic") => "an automatic rollback (health checks failed)",
        Some("immediate") => "an immediate rollback (users saw errors)",
        Some("cannot_wait") => "a rollback that could not wait",
        Some("standard") => "a standard rollback",
        _ => "a rollback",
    }
}

// ---- sections ----------------------------------------------------------------------

fn title(out: &mut String, f: &Facts<'_>) {
    let _ = writeln!(
        out,
        "# Incident #{}: {} — {} on {}\n",
        f.inc.id,
        f.inc.service,
        rule_words(&f.inc.rule),
        f.bad
    );
}

fn summary(out: &mut String, f: &Facts<'_>) {
    let inc = f.inc;
    let mut s = String::new();
    // Name the release as precisely as the input allows, without repeating an id as a
    // version.
    let known_version = inc.release_id.and_then(|id| f.version_of(Some(id)));
    let subject = match (known_version, inc.release_id) {
        (Some(v), Some(id)) => format!("Release **{v}** of **{}** (release #{id})", inc.service),
        (_, Some(id)) => format!("Release #{id} of **{}**", inc.service),
        (_, None) => format!("A release of **{}**", inc.service),
    };
    match f.first_bad_ms {
        Some(ms) => {
            let _ = write!(
                s,
                "{subject} went bad: the guard saw its first bad request at {}.",
                format_utc(ms)
            );
        }
        None => {
            let _ = write!(
                s,
                "{subject} went bad; its first bad request was not recorded, and the incident \
                 opened at {}.",
                format_utc(inc.opened_at_ms)
            );
        }
    }
    let _ = write!(
        s,
        " The `{}` rule ({}) fired: {}.",
        inc.rule,
        rule_words(&inc.rule),
        inc.summary.trim_end_matches('.')
    );
    s.push(' ');
    s.push_str(&action_sentence(f));
    if f.bad_marked_bad {
        let _ = write!(s, " {} is now marked **bad** in the ledger.", f.bad);
    }
    s.push(' ');
    s.push_str(&outcome_sentence(f));
    match f.errors_seen_ms() {
        Some(ms) if f.first_bad_ms.is_some() => {
            let _ = write!(
                s,
                " Users saw {} for **{}** (first bad request → traffic switched).",
                symptom(&inc.rule),
                duration(ms)
            );
        }
        // Without a first bad request the guard measures from detection, which is only
        // a lower bound on what users saw.
        Some(ms) => {
            let _ = write!(
                s,
                " Users saw {} for at least **{}** (detection → traffic switched).",
                symptom(&inc.rule),
                duration(ms)
            );
        }
        None => {
            let _ = write!(s, " How long users saw {} is unknown.", symptom(&inc.rule));
        }
    }
    if let Some(e) = f.exposure() {
        let _ = write!(
            s,
            " From {} to the {}, **{} of {}** requests failed.",
            f.exposure_start_words(),
            f.exposure_end_words(e),
            count(e.errors),
            count(e.requests)
        );
    }
    let _ = writeln!(out, "## Summary\n\n{s}\n");
}

fn action_sentence(f: &Facts<'_>) -> String {
    let inc = f.inc;
    let target = f.target.as_deref();
    let Some(action) = &f.action else {
        return "No decision was recorded.".to_string();
    };
    match action.name.as_str() {
        "rollback" => {
            let what = rollback_words(action.kind.as_deref());
            let to = target.map_or_else(String::new, |t| format!(" to **{t}**"));
            if inc.status == "failed" {
                format!("ripcord decided on {what}{to}, but the rollback failed.")
            } else if inc.switched_at_ms.is_some() {
                let to = target.map_or_else(
                    || " to the previous good release".to_string(),
                    |t| format!(" to **{t}**"),
                );
                format!("ripcord decided on {what} and rolled back{to}.")
            } else {
                format!("ripcord decided on {what}{to}; no traffic switch is recorded.")
            }
        }
        "investigate" => {
            let by = action.deadline_ms.map_or_else(
                || "after a deadline".to_string(),
                |ms| format!("at {}", format_utc(ms)),
            );
            let mut s = format!(
                "ripcord opened an investigation: it would roll back {by} unless a person ran \
                 `ripcord ack`."
            );
            if inc.switched_at_ms.is_some() {
                match target {
                    Some(t) => {
                        let _ = write!(s, " It rolled back to **{t}**.");
                    }
                    None => s.push_str(" It rolled back."),
                }
            }
            s
        }
        "freeze" => format!(
            "ripcord froze **{}**: no deploy or rollback, automatic or manual, until a person \
             runs `ripcord unfreeze`.",
            inc.service
        ),
        "escalate" => {
            "ripcord found no good release to roll back to and escalated to a person.".to_string()
        }
        "none" => "ripcord took no automatic action.".to_string(),
        other => format!("ripcord decided `{other}`."),
    }
}

fn outcome_sentence(f: &Facts<'_>) -> String {
    let inc = f.inc;
    match inc.status.as_str() {
        "resolved" => {
            let back_on = f
                .target
                .as_deref()
                .map_or_else(String::new, |t| format!(" traffic is back on **{t}** and"));
            match inc.verified_at_ms {
                Some(ms) => format!(
                    "Outcome: **resolved**:{back_on} verification passed at {}.",
                    format_utc(ms)
                ),
                None => "Outcome: **resolved**.".to_string(),
            }
        }
        "failed" => "Outcome: **failed**: the rollback did not complete, so ripcord froze the \
                     service and escalated to a person."
            .to_string(),
        // After a freeze decision the sentence before already says what frozen means.
        "frozen" if f.action.as_ref().is_some_and(|a| a.name == "freeze") => {
            "Outcome: **frozen**.".to_string()
        }
        "frozen" => "Outcome: **frozen**: deploys and rollbacks stay blocked until a person runs \
                     `ripcord unfreeze`."
            .to_string(),
        "open" => "Outcome: **open**: the incident was still open when this report was drafted."
            .to_string(),
        other => format!("Outcome: **{other}**."),
    }
}

/// One row of the timeline. `synthetic` rows come from the incident record rather than
/// the event log, and say so.
struct Row {
    ts_ms: i64,
    what: String,
    detail: String,
    synthetic: bool,
}

fn timeline(out: &mut String, f: &Facts<'_>) {
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

fn impact(out: &mut String, f: &Facts<'_>, chart_file: Option<&str>) {
    let inc = f.inc;
    let unknown = || "unknown".to_string();
    let ms = |v: Option<i64>| v.map_or_else(unknown, |v| format!("{v} ms"));
    let exposure = format!(
        "Time users saw {} (first bad request → traffic switched)",
        symptom(&inc.rule)
    );
    let mut rows = vec![(
        exposure.clone(),
        f.errors_seen_ms().map_or_else(unknown, duration),
    )];
    match f.exposure() {
        // One set of counts: the requests of the window the chart shades, in the
        // buckets it draws.
        Some(e) => {
            let to = if e.to_switch {
                "traffic switched"
            } else {
                f.exposure_end_words(e)
            };
            let window = format!(
                "{} → {to}",
                f.exposure_start_words().trim_start_matches("the ")
            );
            let width = chart::width_words(e.bucket_ms);
            let pct = |r: Option<f64>| r.map_or_else(unknown, |r| format!("{:.1}%", r * 100.0));
            rows.extend([
                (format!("Requests ({window})"), count(e.requests)),
                (format!("Failed requests ({window})"), count(e.errors)),
                (
                    format!("5xx ratio ({window})"),
                    pct((e.requests > 0).then(|| e.errors as f64 / e.requests as f64)),
                ),
                (
                    format!("Peak 5xx ratio ({width} buckets, {window})"),
                    pct(e.peak_ratio),
                ),
                (
                    format!("Peak p95 latency ({width} buckets, {window})"),
                    e.peak_p95_ms.map_or_else(unknown, |p| format!("{p:.1} ms")),
                ),
            ]);
        }
        None => rows.extend([
            (
                "Failed requests".to_string(),
                impact_u64(inc, "failed_requests").map_or_else(unknown, count),
            ),
            (
                "Total requests".to_string(),
                impact_u64(inc, "total_requests").map_or_else(unknown, count),
            ),
            (
                "Peak 5xx ratio".to_string(),
                impact_f64(inc, "peak_5xx_ratio")
                    .map_or_else(unknown, |r| format!("{:.1}%", r * 100.0)),
            ),
            (
                "Peak p95 latency".to_string(),
                impact_f64(inc, "peak_p95_ms").map_or_else(unknown, |p| format!("{p:.1} ms")),
            ),
        ]),
    }
    rows.extend([
        (
            "First bad request → trigger".to_string(),
            ms(impact_i64(inc, "first_bad_to_trigger_ms")),
        ),
        (
            "First bad request → traffic switched".to_string(),
            ms(f.first_bad_to_switch_ms()),
        ),
        (
            "First bad request → verified".to_string(),
            ms(f.first_bad_to_verified_ms()),
        ),
    ]);
    let _ = writeln!(out, "## Impact\n");
    let _ = writeln!(out, "| Measure | Value |");
    let _ = writeln!(out, "| --- | ---: |");
    for (what, value) in rows {
        let _ = writeln!(out, "| {what} | {value} |");
    }
    out.push('\n');
    // The guard measures from detection when it never saw a bad request; saying so keeps
    // a reader from taking those durations for the whole exposure.
    if inc.impact.is_some() && f.first_bad_ms.is_none() {
        let _ = writeln!(
            out,
            "The first bad request was not recorded, so these durations are measured from \
             detection (the trigger), and users may have seen errors for longer.\n"
        );
    }
    if let (Some(e), Some(data)) = (f.exposure(), f.chart.as_ref()) {
        let _ = writeln!(
            out,
            "Counted from the requests the guard recorded, every response from {} ({}) up to \
             the {} ({}). The chart draws the same records in {} buckets that start at {}, \
             and shades this window.\n",
            f.exposure_start_words(),
            format_utc(e.from_ms),
            f.exposure_end_words(e),
            format_utc(e.to_ms),
            chart::width_words(data.bucket_ms),
            f.exposure_start_words(),
        );
    } else if f.chart.is_some() {
        let _ = writeln!(
            out,
            "The counts are the bad release's since it began serving; the chart is per \
             second of the wall clock, over every release (recorded before the guard kept \
             each request).\n"
        );
    }
    if let Some(file) = chart_file {
        let _ = writeln!(out, "![5xx ratio and p95]({file})\n");
    }
}

fn decision(out: &mut String, f: &Facts<'_>) {
    let _ = writeln!(out, "## Decision\n");
    let Some(action) = &f.action else {
        let _ = writeln!(out, "No decision was recorded.\n");
        return;
    };
    let what = match action.name.as_str() {
        "rollback" => {
            let words = rollback_words(action.kind.as_deref());
            // "an immediate rollback (...)" reads as a noun phrase; the action line wants
            // it without the article.
            words
                .strip_prefix("an ")
                .or_else(|| words.strip_prefix("a "))
                .unwrap_or(words)
                .to_string()
        }
        "investigate" => match action.deadline_ms {
            Some(ms) => format!(
                "investigate, then roll back at {} unless acknowledged",
                format_utc(ms)
            ),
            None => "investigate".to_string(),
        },
        "freeze" => "freeze the service".to_string(),
        "escalate" => "escalate to a person (nothing good to roll back to)".to_string(),
        "none" => "no action".to_string(),
        other => other.to_string(),
    };
    let _ = writeln!(out, "Action: **{what}**.\n");
    let reasons = f.reasons();
    if reasons.is_empty() {
        let _ = writeln!(out, "No reasons were recorded.\n");
        return;
    }
    let _ = writeln!(out, "Reasons:\n");
    for r in reasons {
        let _ = writeln!(out, "- {r}");
    }
    out.push('\n');
}

fn write_ups(out: &mut String, f: &Facts<'_>) {
    let due = format_utc(f.due_ms());
    let _ = writeln!(
        out,
        "## Root cause\n\n\
         _To be written by a person; due {due} (24 h after the incident opened)._\n\n\
         What in {bad} made it fail, and why that was not caught before it reached users:\n\n\
         - _(to be filled in)_\n",
        bad = f.bad
    );
    let _ = writeln!(
        out,
        "## Prevention\n\n\
         _To be written by a person; due {due} (24 h after the incident opened)._\n\n\
         What changes (to code, tests, checks or process) keep this from happening again:\n\n\
         - _(to be filled in)_\n"
    );
}

fn follow_ups(out: &mut String, f: &Facts<'_>) {
    let rule = &f.inc.rule;
    let words = rule_words(rule);
    let _ = writeln!(out, "## Follow-ups\n");
    let _ = writeln!(
        out,
        "- [ ] Fix forward: ship a fixed release; do not redeploy {} without \
         `--force --reason TEXT`.",
        f.bad
    );
    let _ = writeln!(
        out,
        "- [ ] Add tests that would have caught this ({words}) before release."
    );
    let _ = writeln!(
        out,
        "- [ ] Add monitoring for it, so the next occurrence is seen even before the `{rule}` \
         rule fires."
    );
    let _ = writeln!(
        out,
        "- [ ] Update the runbook (`ripcord runbook`) with what this incident taught.\n"
    );
}

// ---- formatting --------------------------------------------------------------------

/// A table cell: pipes would end the cell and newlines the row.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', "<br>")
}

/// `+0.213 s`, `-12.000 s`: milliseconds as signed seconds, exact to the millisecond.
fn signed_secs(ms: i64) -> String {
    let sign = if ms < 0 { '-' } else { '+' };
    let abs = ms.unsigned_abs();
    format!("{sign}{}.{:03} s", abs / 1000, abs % 1000)
}

/// `1.266 s`, `2 min 5.300 s`.
fn duration(ms: i64) -> String {
    let sign = if ms < 0 { "-" } else { "" };
    let abs = ms.unsigned_abs();
    let (min, rest) = (abs / 60_000, abs % 60_000);
    if min == 0 {
        format!("{sign}{}.{:03} s", rest / 1000, rest % 1000)
    } else {
        format!("{sign}{min} min {}.{:03} s", rest / 1000, rest % 1000)
    }
}

/// `9,412`: thousands separated, so big counts read at a glance.
fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::requests::{self, Sample};
    use crate::ledger::ReleaseSpec;
    use serde_json::json;

    /// 2026-11-26 13:22:12.710 UTC: the first bad request in the fixture.
    const F: i64 = 1_795_699_332_710;
    const DETECTED: i64 = F + 4_213;
    const OPENED: i64 = F + 4_240;
    const SWITCHED: i64 = F + 4_266;
    const VERIFIED: i64 = F + 6_958;

    fn release(id: i64, version: &str, status: ReleaseStatus, reason: Option<&str>) -> Release {
        Release {
            id,
            service: "web".into(),
            version: version.into(),
            spec: ReleaseSpec {
                argv: vec!["./web".into(), "--port".into(), "{port}".into()],
                cwd: Some("/srv/web".into()),
                image: None,
            },
            config_snapshot: json!({}),
            status,
            status_reason: reason.map(str::to_string),
            created_at_ms: F - 3_700_000,
            activated_at_ms: Some(F - 46_788),
            healthy_p95_us: Some(41_000),
            migration_head: None,
        }
    }

    /// Builds a service's event log in order; `op` and `incident` apply to the events
    /// added while they are set, as they do in the ledger.
    #[derive(Default)]
    struct EventLog {
        events: Vec<Event>,
        op: Option<i64>,
        incident: Option<i64>,
    }

    impl EventLog {
        fn add(&mut self, ts_ms: i64, release: i64, kind: &str, message: &str) -> &mut Event {
            self.events.push(Event {
                id: self.events.len() as i64 + 100,
                ts_ms,
                service: "web".into(),
                release_id: Some(release),
                operation_id: self.op,
                kind: kind.into(),
                message: message.into(),
                data: None,
                incident_id: self.incident,
            });
            self.events.last_mut().expect("just pushed")
        }
    }

    /// xorshift64*: the fixture's faults are random, but the same on every run.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn unit(&mut self) -> f64 {
            (self.next() >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    /// When traffic reached v2: its deploy's `traffic_switched`.
    const DEPLOY_SWITCHED: i64 = F - 46_788;

    /// Every request the guard recorded around the incident: 1 to 9 ms apart at random;
    /// v1 (release 11) before the deploy and after the switch back, v2 (release 12)
    /// between. v2's first bad request is the one at `F`; after it v2 fails at random in
    /// bursts (10%, then 60%, then 30%), not an even spread; a few of its requests still
    /// in flight answer just after the switch. Nothing failed before `F`.
    fn records() -> Vec<Sample> {
        let mut rng = Rng(0x005e_ed0f_c4a7);
        let mut out = vec![Sample {
            at_ms: F,
            release_id: 12,
            error: true,
            latency_us: Some(61_000),
        }];
        let mut t = F - 50_000;
        while t < VERIFIED + 5_000 {
            let in_flight = (SWITCHED..SWITCHED + 20).contains(&t) && rng.unit() < 0.3;
            let release = if (DEPLOY_SWITCHED..SWITCHED).contains(&t) || in_flight {
                12
            } else {
                11
            };
            let p = match t - F {
                d if d <= 0 => 0.0,
                d if d < 1_500 => 0.1,
                d if d < 3_000 => 0.6,
                _ => 0.3,
            };
            let error = release == 12 && rng.unit() < p;
            let slow = if release == 12 && t > F { 300_000 } else { 0 };
            out.push(Sample {
                at_ms: t,
                release_id: release,
                error,
                latency_us: Some(30_000 + rng.next() % 20_000 + slow),
            });
            t += 1 + (rng.next() % 9) as i64;
        }
        out.sort_by_key(|s| s.at_ms);
        out
    }

    /// Requests and 5xx among `samples` in `[from, to)`, counted one by one.
    fn tally(samples: &[Sample], from: i64, to: i64) -> (u64, u64) {
        samples
            .iter()
            .filter(|s| (from..to).contains(&s.at_ms))
            .fold((0, 0), |(n, e), s| (n + 1, e + u64::from(s.error)))
    }

    const SUMMARY: &str = "5xx ratio 30.0% (36 of 120 requests; 99% lower bound 21.0%) over the \
                           last 10 s is above 5.0%";

    fn resolved() -> (Incident, Vec<Event>, Vec<Release>) {
        let reasons = ["user-facing errors → immediate rollback", SUMMARY];
        let decision = json!({
            "action": { "action": "rollback", "kind": "immediate", "release_id": 12 },
            "reasons": reasons,
        });
        let samples = records();
        let (total, failed) = tally(&samples, F, SWITCHED);
        let incident = Incident {
            id: 7,
            service: "web".into(),
            release_id: Some(12),
            status: "resolved".into(),
            rule: "error_rate".into(),
            summary: SUMMARY.into(),
            opened_at_ms: OPENED,
            first_bad_at_ms: Some(F),
            switched_at_ms: Some(SWITCHED),
            verified_at_ms: Some(VERIFIED),
            closed_at_ms: Some(VERIFIED),
            decision: Some(decision.clone()),
            impact: Some(json!({
                "failed_requests": failed,
                "total_requests": total,
                "first_bad_at_ms": F,
                "detected_at_ms": DETECTED,
                "errors_seen_ms": SWITCHED - F,
                "first_bad_to_trigger_ms": DETECTED - F,
                "first_bad_to_switch_ms": SWITCHED - F,
                "first_bad_to_verified_ms": VERIFIED - F,
                "peak_5xx_ratio": 0.3,
                "peak_p95_ms": 410.0,
            })),
            series: Some(requests::to_json(&samples)),
        };
        // Long before the incident: v1's own deploy, which the timeline leaves out.
        let mut log = EventLog {
            op: Some(39),
            ..Default::default()
        };
        log.add(F - 3_600_000, 11, "deploy_started", "deploy started");
        log.op = Some(40);
        log.add(F - 47_300, 12, "deploy_started", "deploy started")
            .data = Some(json!({ "reason": "weekly release" }));
        log.add(
            F - 47_250,
            12,
            "starting",
            "starting v2 in slot green (127.0.0.1:9102)",
        );
        log.add(
            F - 47_240,
            12,
            "health_wait",
            "waiting up to 30s for v2 to answer http://127.0.0.1:9102/healthz",
        );
        log.add(
            F - 46_800,
            12,
            "healthy",
            "v2 is healthy in slot green after 440 ms",
        );
        log.add(
            F - 46_790,
            12,
            "switching",
            "switching traffic to v2 in slot green",
        );
        log.add(
            F - 46_788,
            12,
            "traffic_switched",
            "traffic switched to v2 in slot green (from v1 in slot blue)",
        );
        log.add(F - 46_780, 12, "verifying", "verifying v2");
        log.add(F - 46_500, 12, "deploy_succeeded", "deploy succeeded");
        log.op = None;
        log.incident = Some(7);
        log.add(
            OPENED,
            12,
            "incident_opened",
            &format!("incident #7 opened: {SUMMARY}"),
        );
        log.add(
            OPENED + 1,
            12,
            "trigger_fired",
            &format!("error_rate fired: {SUMMARY}"),
        )
        .data =
            Some(json!({ "rule": "error_rate", "values": { "ratio": 0.3 }, "at_ms": DETECTED }));
        let msg = format!("decision: {}", reasons.join("; "));
        log.add(OPENED + 2, 12, "decision", &msg).data = Some(decision);
        log.incident = None;
        log.op = Some(41);
        log.add(OPENED + 10, 11, "rollback_started", "rollback started")
            .data = Some(json!({
            "reason": "automatic (Immediate): user-facing errors → immediate rollback"
        }));
        log.add(
            OPENED + 22,
            11,
            "switching",
            "switching traffic to v1 in slot blue",
        );
        log.add(
            OPENED + 25,
            11,
            "traffic_switched",
            "traffic switched to v1 in slot blue (from v2 in slot green)",
        );
        log.add(OPENED + 30, 11, "verifying", "verifying v1");
        log.add(VERIFIED + 2, 11, "rollback_succeeded", "rollback succeeded");
        log.op = None;
        log.add(
            SWITCHED + 5_040,
            12,
            "release_stopped",
            "v2 in slot green stopped",
        );
        // Well after the incident: the timeline leaves it out.
        log.add(
            F + 600_000,
            11,
            "bake_ended",
            "v0 in slot green is no longer kept warm: stopping it",
        );
        let releases = vec![
            release(
                12,
                "v2",
                ReleaseStatus::Bad,
                Some("automatic (Immediate): user-facing errors"),
            ),
            release(11, "v1", ReleaseStatus::Active, None),
        ];
        (incident, log.events, releases)
    }

    /// A data-corruption incident: frozen at once, nothing measured, no series.
    fn frozen() -> (Incident, Vec<Event>, Vec<Release>) {
        let summary = "db check `SELECT count(*) FROM orders` failed: checksum mismatch";
        let reasons = [
            "data corruption → stop everything: freeze deploys and rollbacks",
            summary,
        ];
        let decision = json!({ "action": { "action": "freeze" }, "reasons": reasons });
        let incident = Incident {
            id: 9,
            service: "web".into(),
            release_id: Some(12),
            status: "frozen".into(),
            rule: "data_corruption".into(),
            summary: summary.into(),
            opened_at_ms: OPENED,
            first_bad_at_ms: None,
            switched_at_ms: None,
            verified_at_ms: None,
            closed_at_ms: None,
            decision: Some(decision.clone()),
            impact: None,
            series: None,
        };
        let mut log = EventLog {
            incident: Some(9),
            ..Default::default()
        };
        log.add(
            OPENED,
            12,
            "incident_opened",
            &format!("incident #9 opened: {summary}"),
        );
        log.add(
            OPENED + 1,
            12,
            "trigger_fired",
            &format!("data_corruption fired: {summary}"),
        );
        let msg = format!("decision: {}", reasons.join("; "));
        log.add(OPENED + 2, 12, "decision", &msg).data = Some(decision);
        log.add(
            OPENED + 3,
            12,
            "frozen",
            "frozen: data corruption; no deploy or rollback until `ripcord unfreeze`",
        );
        let releases = vec![release(12, "v2", ReleaseStatus::Active, None)];
        (incident, log.events, releases)
    }

    #[test]
    fn the_markdown_of_a_resolved_incident() {
        let (incident, events, releases) = resolved();
        let input = ReportInput {
            incident: &incident,
            events: &events,
            releases: &releases,
        };
        let md = markdown(&input, Some("incident-7.svg"));
        insta::assert_snapshot!("resolved_incident", md);
    }

    #[test]
    fn the_timeline_spans_the_incident_and_keeps_the_key_steps() {
        let (incident, events, releases) = resolved();
        let input = ReportInput {
            incident: &incident,
            events: &events,
            releases: &releases,
        };
        let md = markdown(&input, None);
        for needle in [
            "| +0.000 s | *first bad observation* |",
            "`deploy_started` | deploy of v2 started: weekly release",
            "`trigger_fired`",
            "`decision` | rollback (immediate): user-facing errors → immediate rollback;",
            "`rollback_started` | rollback to v1 started",
            "| +4.265 s | `traffic_switched` |",
            "| +6.958 s | *verified* | verification of v1 passed |",
            "`release_stopped`",
        ] {
            assert!(md.contains(needle), "missing {needle:?} in\n{md}");
        }
        assert!(
            !md.contains("bake_ended"),
            "an event long after the incident is left out"
        );
        assert_eq!(
            md.matches("`deploy_started`").count(),
            1,
            "v1's old deploy is left out"
        );
        assert!(!md.contains("!["), "no chart link without a chart file");
        assert!(md.starts_with("# Incident #7: web — user-facing errors on v2\n"));
        assert!(md.contains("due 2026-11-27 13:22:16.950 UTC (24 h after the incident opened)"));
    }

    #[test]
    fn the_chart_has_both_series_and_every_marker() {
        let (incident, events, releases) = resolved();
        let input = ReportInput {
            incident: &incident,
            events: &events,
            releases: &releases,
        };
        let svg = chart_svg(&input).expect("a series makes a chart");
        assert!(svg.starts_with("<svg"), "{}", &svg[..80.min(svg.len())]);
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_well_formed(&svg);
        assert!(svg.contains(r#"width="900" height="500""#));
        for label in [
            "Incident #7: web — 5xx ratio and p95",
            "deploy -46.788 s",
            "trigger +4.213 s",
            "switch +4.266 s",
            "verified +6.958 s",
            "5xx ratio (%)",
            "p95 (ms)",
            "seconds since the first bad request (200 ms buckets, starting at it)",
        ] {
            // The SVG backend writes each text on a line of its own inside `<text>`.
            assert!(svg.lines().any(|l| l == label), "missing {label:?}");
        }
        let polylines_in = |color: &str| {
            svg.lines()
                .filter(|l| {
                    l.contains("<polyline") && l.contains(&format!(r##"stroke="{color}""##))
                })
                .count()
        };
        // The series itself, plus the legend's sample line.
        assert!(polylines_in("#DC1E1E") >= 1, "no 5xx ratio line");
        assert!(polylines_in("#1E50DC") >= 1, "no p95 line");
        assert_eq!(chart_svg(&input), Some(svg), "the chart is deterministic");
    }

    /// Regression test for issue 14: the demo's chart drew the 5xx peak before the first
    /// bad request (seconds of the wall clock, drawn at their middle), its peak stayed
    /// far below the table's (per-second ratios over every release against the bad
    /// release's latest 40 requests), and the table counted another window than the
    /// summary. Everything here is checked against the incident's own records, counted
    /// one by one, never against the code's own bucketing.
    #[test]
    fn the_chart_data_agrees_with_the_incidents_own_records() {
        let (incident, events, releases) = resolved();
        let samples = records();
        let input = ReportInput {
            incident: &incident,
            events: &events,
            releases: &releases,
        };
        let data = chart_data(&input).expect("records make a chart");
        let e = data
            .exposure
            .clone()
            .expect("records make a counted window");
        assert_eq!((data.reference_ms, e.from_ms, e.to_ms), (F, F, SWITCHED));
        assert!(e.to_switch);

        // Each bucket holds exactly the records of its span (fails on edges off by one,
        // records counted twice or dropped), and the buckets tile the axis.
        for b in &data.buckets {
            assert_eq!(
                (b.requests, b.errors),
                tally(&samples, b.start_ms, b.end_ms),
                "bucket {}..{}",
                b.start_ms,
                b.end_ms
            );
        }
        for pair in data.buckets.windows(2) {
            assert_eq!(pair[0].end_ms, pair[1].start_ms, "buckets leave no gap");
        }
        assert_eq!(data.buckets.first().unwrap().start_ms, data.from_ms);
        assert_eq!(data.buckets.last().unwrap().end_ms, data.to_ms);

        // The first bad request opens the bucket that holds it (fails on buckets aligned
        // to the wall clock), nothing is drawn failing before it (fails on a bucket drawn
        // as a point at its middle, or a line from the bucket before), and the bucket
        // before it has requests but no failure.
        let at_first = data
            .buckets
            .iter()
            .position(|b| (b.start_ms..b.end_ms).contains(&F))
            .expect("a bucket holds the first bad request");
        assert_eq!(data.buckets[at_first].start_ms, F);
        assert!(data.buckets[at_first].errors >= 1);
        let before = &data.buckets[at_first - 1];
        assert!(before.requests > 0 && before.errors == 0, "{before:?}");
        for seg in chart::steps(&data, |b| b.ratio()) {
            for (x, ratio) in seg {
                assert!(
                    ratio == 0.0 || x >= 0.0,
                    "a 5xx ratio of {ratio} drawn at {x} s, before the first bad request"
                );
            }
        }

        // One set of counts: the records in the window, the buckets inside it, the
        // summary and the table all say the same (fails when a section counts another
        // window, e.g. the release's whole life or the load generator's run).
        let (requests, errors) = tally(&samples, F, SWITCHED);
        assert!(requests > 500 && errors > 100, "{requests} {errors}");
        assert_eq!((e.requests, e.errors), (requests, errors));
        let inside: Vec<&chart::Bucket> = data
            .buckets
            .iter()
            .filter(|b| b.start_ms >= F && b.end_ms <= SWITCHED)
            .collect();
        assert_eq!(inside.first().map(|b| b.start_ms), Some(F));
        assert_eq!(inside.last().map(|b| b.end_ms), Some(SWITCHED));
        assert_eq!(inside.iter().map(|b| b.requests).sum::<u64>(), requests);
        assert_eq!(inside.iter().map(|b| b.errors).sum::<u64>(), errors);
        let md = markdown(&input, None);
        let window = "first bad request → traffic switched";
        for needle in [
            format!(
                "From the first bad request to the traffic switch, **{} of {}** requests failed.",
                count(errors),
                count(requests)
            ),
            format!("| Requests ({window}) | {} |", count(requests)),
            format!("| Failed requests ({window}) | {} |", count(errors)),
            "The chart draws the same records in 200 ms buckets that start at the first bad \
             request"
                .to_string(),
        ] {
            assert!(md.contains(&needle), "missing {needle:?} in\n{md}");
        }

        // The chart's peak is the table's peak (fails when the table takes its peak from
        // anywhere but the buckets drawn), and it is the highest ratio drawn in the window.
        let peak = data.peak_ratio().expect("a peak");
        let highest = inside
            .iter()
            .map(|b| b.errors as f64 / b.requests as f64)
            .fold(0.0, f64::max);
        assert_eq!(peak, highest);
        assert_eq!(e.peak_ratio, Some(peak));
        assert!(
            peak > 0.45,
            "the 60% burst is the peak, not diluted: {peak}"
        );
        let row = format!(
            "| Peak 5xx ratio (200 ms buckets, {window}) | {:.1}% |",
            peak * 100.0
        );
        assert!(md.contains(&row), "missing {row:?} in\n{md}");
        let svg = chart_svg(&input).unwrap();
        let label = format!("peak {:.1}%", peak * 100.0);
        assert!(svg.lines().any(|l| l == label), "no {label:?} on the chart");

        // Deploy, trigger, switch and verify at their own milliseconds (fails on markers
        // rounded to a bucket or a second, or taken from the wrong event).
        let markers: Vec<(&str, i64)> = data.markers.iter().map(|m| (m.label, m.at_ms)).collect();
        assert_eq!(
            markers,
            [
                ("deploy", DEPLOY_SWITCHED),
                ("trigger", DETECTED),
                ("switch", SWITCHED),
                ("verified", VERIFIED),
            ]
        );
    }

    #[test]
    fn an_incident_without_impact_says_unknown_and_has_no_chart() {
        let (incident, events, releases) = frozen();
        let input = ReportInput {
            incident: &incident,
            events: &events,
            releases: &releases,
        };
        assert_eq!(chart_svg(&input), None);
        let md = markdown(&input, None);
        assert!(md.contains("| Failed requests | unknown |"));
        assert!(md.contains("| Peak 5xx ratio | unknown |"));
        assert!(md.contains("| First bad request → trigger | unknown |"));
        assert!(md.contains("How long users saw errors is unknown."));
        assert!(!md.contains("!["));
        insta::assert_snapshot!("frozen_incident", md);
    }

    #[test]
    fn a_failed_rollback_says_so_and_invents_nothing() {
        let (mut incident, mut events, releases) = resolved();
        incident.status = "failed".into();
        incident.switched_at_ms = None;
        incident.verified_at_ms = None;
        incident.closed_at_ms = Some(OPENED + 3_000);
        incident.impact = None;
        incident.series = None;
        events.retain(|e| e.ts_ms <= OPENED + 10);
        let input = ReportInput {
            incident: &incident,
            events: &events,
            releases: &releases,
        };
        let md = markdown(&input, None);
        for needle in [
            "ripcord decided on an immediate rollback (users saw errors) to **v1**, but the \
             rollback failed.",
            "Outcome: **failed**",
            "| *incident closed* | incident #7 closed as failed |",
            "| Time users saw errors (first bad request → traffic switched) | unknown |",
            "| First bad request → verified | unknown |",
        ] {
            assert!(md.contains(needle), "missing {needle:?} in\n{md}");
        }
        assert!(!md.contains("*verified*"));
        assert!(!md.contains("*traffic switched*"));
    }

    #[test]
    fn without_a_first_bad_request_offsets_count_from_the_opening() {
        let (mut incident, events, releases) = resolved();
        incident.first_bad_at_ms = None;
        if let Some(impact) = incident.impact.as_mut() {
            impact["first_bad_at_ms"] = Value::Null;
        }
        let input = ReportInput {
            incident: &incident,
            events: &events,
            releases: &releases,
        };
        let md = markdown(&input, None);
        assert!(md.contains("| Time (UTC) | Since incident opened | Event | Detail |"));
        assert!(md.contains("| +0.000 s | `incident_opened` |"));
        assert!(md.contains("measured from detection"));
        assert!(
            md.contains(
                "Users saw errors for at least **4.266 s** (detection → traffic switched)."
            )
        );
        assert!(!md.contains("*first bad observation*"));
        let svg = chart_svg(&input).unwrap();
        assert!(
            svg.lines()
                .any(|l| l == "seconds since the incident opened")
        );
    }

    #[test]
    fn a_gap_in_an_older_per_second_series_breaks_the_line() {
        let (mut incident, events, releases) = frozen();
        incident.series = Some(json!([
            { "t_ms": OPENED, "requests": 10, "errors": 1, "p95_ms": 20.0 },
            { "t_ms": OPENED + 1000, "requests": 0, "errors": 0, "p95_ms": null },
            { "t_ms": OPENED + 2000, "requests": 10, "errors": 2, "p95_ms": 25.0 },
            { "t_ms": OPENED + 3000, "requests": 10, "errors": 3, "p95_ms": 30.0 },
        ]));
        let input = ReportInput {
            incident: &incident,
            events: &events,
            releases: &releases,
        };
        let data = chart_data(&input).unwrap();
        assert_eq!(data.exposure, None, "no records, no counted window");
        assert_eq!(chart::steps(&data, |b| b.ratio()).len(), 2);
        assert_eq!(chart::steps(&data, |b| b.p95_ms).len(), 2);
        // Each second is drawn flat across the second it covers.
        assert_eq!(
            chart::steps(&data, |b| b.ratio())[1][..2],
            [(2.0, 0.2), (3.0, 0.2)]
        );
        let md = markdown(&input, None);
        assert!(md.contains("per second of the wall clock"), "{md}");
        incident.series = Some(json!([]));
        let input = ReportInput {
            incident: &incident,
            events: &events,
            releases: &releases,
        };
        assert!(chart_data(&input).is_none());
    }

    #[test]
    fn write_creates_both_files_and_returns_the_markdown_path() {
        let dir = std::env::temp_dir().join(format!("ripcord-report-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let out = dir.join("reports");
        let (incident, events, releases) = resolved();
        let input = ReportInput {
            incident: &incident,
            events: &events,
            releases: &releases,
        };
        let path = write(&out, &input).unwrap();
        assert_eq!(path, out.join("incident-7.md"));
        let md = fs::read_to_string(&path).unwrap();
        assert!(md.contains("![5xx ratio and p95](incident-7.svg)"));
        let svg = fs::read_to_string(out.join("incident-7.svg")).unwrap();
        assert!(svg.starts_with("<svg"));
        // Writing again replaces both, and no temporary file is left behind.
        write(&out, &input).unwrap();
        let mut names: Vec<String> = fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["incident-7.md", "incident-7.svg"]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn formatting_helpers() {
        assert_eq!(signed_secs(213), "+0.213 s");
        assert_eq!(signed_secs(0), "+0.000 s");
        assert_eq!(signed_secs(-46_788), "-46.788 s");
        assert_eq!(duration(1_266), "1.266 s");
        assert_eq!(duration(125_300), "2 min 5.300 s");
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1_234_567), "1,234,567");
        assert_eq!(cell("a|b\nc"), "a\\|b<br>c");
        assert_eq!(chart::decimals(82.0), 0);
        assert_eq!(chart::decimals(2.4), 1);
        assert_eq!(chart::decimals(0.5), 2);
        assert_eq!(chart::width_words(200), "200 ms");
        assert_eq!(chart::width_words(2_000), "2 s");
    }

    /// A small check that tags open and close in order: enough to catch a chart that
    /// a browser would refuse, without an XML parser as a dependency.
    fn assert_well_formed(svg: &str) {
        let mut stack: Vec<&str> = Vec::new();
        let mut rest = svg;
        while let Some(start) = rest.find('<') {
            let end = rest[start..].find('>').expect("an unclosed tag") + start;
            let tag = &rest[start + 1..end];
            rest = &rest[end + 1..];
            if tag.starts_with('?') || tag.starts_with('!') {
                continue;
            }
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(stack.pop(), Some(name.trim()), "mismatched </{name}>");
            } else if !tag.ends_with('/') {
                let name = tag.split_whitespace().next().unwrap_or_default();
                stack.push(name);
            }
        }
        assert!(stack.is_empty(), "unclosed tags: {stack:?}");
    }
}
