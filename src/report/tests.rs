//! Tests for the incident report: a resolved and a frozen incident (insta snapshots), the
//! timeline, the chart and its data against the incident's own records, the files written.

use std::fs;

use super::format::{cell, count, duration, signed_secs};
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
            ..Default::default()
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
    .data = Some(json!({ "rule": "error_rate", "values": { "ratio": 0.3 }, "at_ms": DETECTED }));
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
            .filter(|l| l.contains("<polyline") && l.contains(&format!(r##"stroke="{color}""##)))
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
        md.contains("Users saw errors for at least **4.266 s** (detection → traffic switched).")
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
