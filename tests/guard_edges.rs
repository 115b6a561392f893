//! The guard at the edges of its thresholds, under the real watcher with the demo app's
//! random faults (each request fails, or is slow, independently: as a real service's
//! errors are, never evenly spread): just below the line stays, just above it is
//! rolled back; a total failure is caught within a handful of requests, at 200 req/s
//! and at 1 req/s. How fast is measured by `cargo bench --bench guard_sim` (the
//! detector) and `cargo bench --bench guard` (end to end); the bounds here catch hangs.

mod common;

use std::time::Duration;

use common::*;

/// The p95 rule's floor is raised from 25 ms to 60 ms here: on a CI machine running other
/// tests beside this one, a loaded proxy's ordinary requests can take 25 ms now and
/// then, which would make the slow share the machine's rather than the release's. The
/// injected slow requests take 250 ms, far over either limit.
const TRIGGERS: &str =
    "\n[service.web.triggers]\nlatency_p95 = { factor = 5.0, floor = \"60ms\" }\n";

/// Starts the watcher, deploys a clean v1, sends `rate` req/s through the proxy for a
/// few seconds (v1's p95 becomes the baseline), then deploys v2 with `v2` (faults that
/// begin 4 s after v2 starts, once its deploy is verified).
fn start(v2: &[&str], rate: u64, run_for: Duration) -> (Project, Load) {
    let mut p = Project::new("bake_secs = 300", TRIGGERS);
    p.start_watcher();
    assert_ok(&p.deploy("v1", &["--jitter-ms", "5"]), "deploy v1");
    let load = PacedLoad::start(p.url("/api/load"), rate, run_for);
    std::thread::sleep(Duration::from_secs(3));
    let mut args = vec!["--jitter-ms", "5", "--after-secs", "4"];
    args.extend_from_slice(v2);
    assert_ok(&p.deploy("v2", &args), "deploy v2");
    assert_eq!(serving(&p), "v2");
    (p, load)
}

/// The first `trigger_fired` event of `rule`, once there is one (bounded).
fn wait_for_trigger(p: &Project, rule: &str, max: Duration) -> serde_json::Value {
    let mut found = serde_json::Value::Null;
    eventually(&format!("{rule} fires"), max, || {
        let events = p.json(&["events", "web"]);
        if let Some(e) = events
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["kind"] == "trigger_fired" && e["data"]["rule"] == rule)
        {
            found = e.clone();
            true
        } else {
            false
        }
    });
    found
}

fn rolled_back_to_v1(p: &Project) {
    eventually("the rollback is verified", Duration::from_secs(30), || {
        p.json(&["incident", "list"])
            .as_array()
            .is_some_and(|l| l.first().is_some_and(|i| i["status"] == "resolved"))
    });
    assert_eq!(serving(p), "v1");
}

/// The evidence in a fired trigger: it crossed what was needed, over the stretch it
/// names, and says so in words.
fn assert_evidence(event: &serde_json::Value) -> (u64, u64) {
    let v = &event["data"]["values"];
    let evidence = v["evidence"].as_f64().expect("evidence");
    let needed = v["needed"].as_f64().expect("needed");
    assert!(evidence >= needed, "{event:#}");
    // ln(6 arms × 10^8 requests): the default budget.
    assert!((needed - (6e8f64).ln()).abs() < 1e-6, "{event:#}");
    let message = event["message"].as_str().unwrap();
    assert!(
        message.contains("crosses it less than once per 10^8 requests"),
        "{message}"
    );
    (
        v["requests"].as_u64().expect("requests"),
        v["bad"].as_u64().expect("bad"),
    )
}

/// 7% 5xx (under the 10% threshold) and 3% slow requests (under the p95 rule's 5%), both
/// at random, at 200 req/s for 60 s: about 12,000 requests, and no rollback.
#[test]
fn just_below_both_lines_stays() {
    let run = Duration::from_secs(60);
    let (p, load) = start(
        &[
            "--error-ratio",
            "0.07",
            "--latency-ms",
            "250",
            "--slow-ratio",
            "0.03",
            "--seed",
            "7",
        ],
        200,
        run + Duration::from_secs(10),
    );
    std::thread::sleep(run);
    let report = load.stop();
    let served_v2 = report.ok_by_version.get("v2").copied().unwrap_or(0);
    assert!(served_v2 > 5_000, "too little traffic to judge: {report:?}");
    // The faults were real: about 7% of v2's answers failed.
    let failed = report.failures.len() as f64;
    let share = failed / (failed + served_v2 as f64);
    assert!((0.04..0.10).contains(&share), "5xx share {share}");
    let incidents = p.json(&["incident", "list"]);
    assert_eq!(incidents, serde_json::json!([]), "a false rollback");
    assert_eq!(serving(&p), "v2");
    let status = p.json(&["status", "web"]);
    let rules = &status["live"]["guard"]["rules"];
    let er = rules["error_rate"].as_str().unwrap();
    assert!(er.starts_with("ok: 5xx "), "{status:#}");
    assert!(er.contains("needed (threshold 10.0%)"), "{er}");
    let lat = rules["latency_p95"].as_str().unwrap();
    assert!(lat.starts_with("ok: p95 "), "{status:#}");
}

/// 12% 5xx at random at 200 req/s: rolled back (the detector needs about 2,700 of its
/// requests; the bound is a hang bound).
#[test]
fn just_over_the_error_line_is_rolled_back() {
    let (p, load) = start(
        &["--error-ratio", "0.12", "--seed", "12"],
        200,
        Duration::from_secs(150),
    );
    let event = wait_for_trigger(&p, "error_rate", Duration::from_secs(120));
    let (requests, bad) = assert_evidence(&event);
    let ratio = bad as f64 / requests as f64;
    assert!(
        (0.10..0.25).contains(&ratio),
        "the stretch's ratio {ratio}: {event:#}"
    );
    rolled_back_to_v1(&p);
    load.stop();
}

/// 7% of requests slower than the limit (over the p95 rule's 5%), at random: rolled back
/// by the latency rule, not the error rule.
#[test]
fn just_over_the_latency_line_is_rolled_back() {
    let (p, load) = start(
        &[
            "--latency-ms",
            "250",
            "--slow-ratio",
            "0.07",
            "--seed",
            "70",
        ],
        200,
        Duration::from_secs(150),
    );
    let event = wait_for_trigger(&p, "latency_p95", Duration::from_secs(120));
    let (requests, bad) = assert_evidence(&event);
    assert!(bad * 100 > requests * 5, "{event:#}");
    rolled_back_to_v1(&p);
    let incident = &p.json(&["incident", "list"])[0];
    assert_eq!(incident["rule"], "latency_p95", "{incident:#}");
    load.stop();
}

/// Every request fails: the detector crosses on the ninth failure (ln(6·10^8) /
/// ln(0.99/0.08) = 8.06), at 200 req/s and at 1 req/s alike: no sample minimum.
#[test]
fn a_total_failure_is_caught_within_a_handful_of_requests_at_any_rate() {
    for rate in [200, 1] {
        let (p, load) = start(&["--error-ratio", "1.0"], rate, Duration::from_secs(90));
        let event = wait_for_trigger(&p, "error_rate", Duration::from_secs(60));
        let (requests, bad) = assert_evidence(&event);
        assert_eq!(requests, bad, "rate {rate}: {event:#}");
        assert!(
            requests <= 15,
            "rate {rate}: {requests} requests: {event:#}"
        );
        rolled_back_to_v1(&p);
        load.stop();
    }
}
