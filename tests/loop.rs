//! The foundation's loop on real processes over loopback: a real `ripcord watch`, the
//! real CLI, the bundled demo app as the released program.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn deploy_v1_v2_rollback_to_v1_loses_no_request() {
    let mut p = Project::new("bake_secs = 300", "");
    p.start_watcher();
    assert_ok(&p.deploy("v1", &[]), "deploy v1");
    assert_eq!(serving(&p), "v1");

    let load = Load::start(p.url("/api/load"), 4, Duration::from_secs(60), 200_000);
    eventually("the load loop runs", Duration::from_secs(10), || {
        load.sent.load(std::sync::atomic::Ordering::Relaxed) > 50
    });
    let out = p.deploy("v2", &[]);
    assert_ok(&out, "deploy v2");
    assert!(
        stdout(&out).contains("web v2 is serving from slot green"),
        "{}",
        stdout(&out)
    );
    assert_eq!(serving(&p), "v2");
    std::thread::sleep(Duration::from_millis(300));

    let status = p.json(&["status", "web"]);
    assert_eq!(status["state"], "baking", "{status:#}");
    assert_eq!(status["active"]["version"], "v2");
    assert_eq!(status["previous"]["version"], "v1");
    assert_eq!(status["previous"]["warm"], true);
    // The warm slot is probed too: the rollback target answers.
    eventually("the warm v1 is probed", Duration::from_secs(20), || {
        let probe = &p.json(&["status", "web"])["live"]["guard"]["warm_probe"];
        probe["ok"] == true
            && probe["detail"]
                .as_str()
                .is_some_and(|d| d.contains(&format!(":{}/health answered 200", p.blue)))
    });

    let out = p.run(&["rollback", "web", "--reason", "test says so"]);
    assert_ok(&out, "rollback");
    assert!(
        stdout(&out).contains("rolled back to v1"),
        "{}",
        stdout(&out)
    );
    assert!(stdout(&out).contains("warm"), "{}", stdout(&out));
    assert_eq!(serving(&p), "v1");
    std::thread::sleep(Duration::from_millis(300));
    let report = load.stop();

    assert!(
        report.failures.is_empty(),
        "requests failed during the switches: {:?}",
        report.failures
    );
    assert!(
        report.ok_by_version.get("v1").copied().unwrap_or(0) > 0,
        "{report:?}"
    );
    assert!(
        report.ok_by_version.get("v2").copied().unwrap_or(0) > 0,
        "{report:?}"
    );

    let out = p.run(&["verify", "web"]);
    assert_ok(&out, "verify");
    assert!(stdout(&out).contains("✓"), "{}", stdout(&out));

    let releases = p.json(&["releases", "web"]);
    let rows = releases.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["version"], "v2");
    assert_eq!(rows[0]["status"], "bad");
    assert_eq!(rows[0]["status_reason"], "test says so");
    assert_eq!(rows[1]["version"], "v1");
    assert_eq!(rows[1]["status"], "active");
    assert!(
        rows[1]["spec"]["argv"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == "{port}")
    );

    let status = p.json(&["status", "web"]);
    assert_eq!(status["state"], "steady", "{status:#}");
    assert_eq!(status["active"]["version"], "v1");
    assert_eq!(status["active"]["slot"], "blue");

    let events = p.json(&["events", "web"]);
    let kinds: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    for k in [
        "deploy_started",
        "health_wait",
        "healthy",
        "traffic_switched",
        "verifying",
        "deploy_succeeded",
        "rollback_started",
        "rollback_succeeded",
    ] {
        assert!(kinds.contains(&k), "no {k} event in {kinds:?}");
    }

    // Redeploying the release that was rolled away from is refused.
    let out = p.deploy("v2", &[]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("marked bad"), "{}", stderr(&out));
}

#[test]
fn an_unhealthy_version_never_gets_traffic() {
    let mut p = Project::new("start_timeout_secs = 2", "");
    p.start_watcher();
    assert_ok(&p.deploy("v1", &[]), "deploy v1");
    let load = Load::start(p.url("/api/load"), 2, Duration::from_secs(60), 100_000);

    let out = p.deploy("v2", &["--fail-health"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("never became healthy, so it got no traffic"),
        "{err}"
    );
    assert!(err.contains("answered 503"), "{err}");
    assert!(
        err.contains("ripcord-demo-app v2 listening"),
        "the log tail is missing: {err}"
    );
    // And it was stopped: nothing answers on its slot any more.
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", p.green)).is_err(),
        "the unhealthy v2 still listens on the green slot"
    );

    let out = p.deploy("v3", &["--exit-at-start", "7"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("exited"), "{}", stderr(&out));

    let report = load.stop();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert_eq!(
        report.ok_by_version.keys().collect::<Vec<_>>(),
        ["v1"],
        "{report:?}"
    );
    assert_eq!(serving(&p), "v1");
    let releases = p.json(&["releases", "web"]);
    let status: Vec<(&str, &str)> = releases
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["version"].as_str().unwrap(),
                r["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(status, [("v3", "bad"), ("v2", "bad"), ("v1", "active")]);
}

#[test]
fn a_deploy_to_the_serving_slot_is_refused_and_leaves_nothing_behind() {
    let mut p = Project::new("", "");
    p.start_watcher();
    assert_ok(&p.deploy("v1", &[]), "deploy v1");
    let serving_slot = p.json(&["status", "web"])["active"]["slot"]
        .as_str()
        .expect("status names the active slot")
        .to_string();
    let out = p.run(&["deploy", "web", "v2", "--slot", &serving_slot]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("serves traffic now"),
        "{}",
        stderr(&out)
    );
    let status = p.json(&["status", "web"]);
    assert_eq!(
        status["state"], "steady",
        "an operation was left open: {status:#}"
    );
    let releases = p.json(&["releases", "web"]);
    let versions: Vec<&str> = releases
        .as_array()
        .expect("releases --json lists releases")
        .iter()
        .filter_map(|r| r["version"].as_str())
        .collect();
    assert_eq!(versions, ["v1"], "a refused deploy recorded a release");
    assert_eq!(serving(&p), "v1");
}

#[test]
fn two_operations_on_one_service_one_is_refused() {
    let mut p = Project::new("", "");
    p.start_watcher();
    assert_ok(&p.deploy("v1", &[]), "deploy v1");
    // A slow start keeps the deploy of v2 busy for a while.
    let slow = p
        .cmd(&[
            "deploy",
            "web",
            "v2",
            "--",
            BIN,
            "demo-app",
            "--port",
            "{port}",
            "--version",
            "{version}",
            "--start-delay-ms",
            "2500",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    eventually(
        "the deploy of v2 holds the lease",
        Duration::from_secs(10),
        || p.json(&["status", "web"])["state"] == "deploying",
    );
    let out = p.run(&["rollback", "web"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("busy"), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("ripcord deploy web v2"),
        "the holder is not named: {}",
        stderr(&out)
    );
    let out = p.deploy("v3", &[]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));

    let slow = slow.wait_with_output().unwrap();
    assert_ok(&slow, "the slow deploy");
    assert_eq!(serving(&p), "v2");

    // A second watcher on the same state dir is refused too.
    let out = p.cmd(&["watch"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("another watcher is running"),
        "{}",
        stderr(&out)
    );
}

/// Whether the service's events hold one of `kind`.
fn has_event(p: &Project, kind: &str) -> bool {
    p.json(&["events", "web"])
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["kind"] == kind)
}

#[test]
fn the_previous_release_is_stopped_after_the_bake() {
    let mut p = Project::new("bake_secs = 1", "");
    p.start_watcher();
    assert_ok(&p.deploy("v1", &[]), "deploy v1");
    assert_ok(&p.deploy("v2", &[]), "deploy v2");
    let v1_pid = p.json(&["status", "web"])["live"]["slots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["version"] == "v1")
        .unwrap()["pid"]
        .as_i64()
        .unwrap();
    // The bake ends on evidence, not only on its timer: with only the deploy's two
    // verification requests v2 is not cleared, so v1 stays warm past its second of bake, and status says why.
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        pid_alive(v1_pid),
        "v1 was stopped before v2 served a request"
    );
    let text = stdout(&p.run(&["status", "web"]));
    assert!(
        text.contains(
            "bake      held past its time until the active release is cleared: 5xx ratio: 0 of 2 so far; not yet enough to show it below 10.0%"
        ),
        "{text}"
    );
    assert!(text.contains("web: baking"), "{text}");
    assert!(has_event(&p, "bake_extended"));
    // About 60 clean requests show v2 below 10% with 99% confidence; 150 are sent.
    let load = Load::start(p.url("/api/load"), 2, Duration::from_secs(30), 150);
    eventually(
        "v1 is stopped once v2 is cleared",
        Duration::from_secs(30),
        || !pid_alive(v1_pid),
    );
    load.stop();
    let status = p.json(&["status", "web"]);
    assert_eq!(status["state"], "steady", "{status:#}");
    assert_eq!(status["previous"]["warm"], false);
    assert!(has_event(&p, "bake_ended"));
}

#[test]
fn failed_verification_after_a_deploy_switches_back() {
    let tail = r#"
[[service.web.verify]]
name = "v2 is known broken"
command = ["sh", "-c", "test {version} != v2"]
"#;
    let mut p = Project::new("", tail);
    p.start_watcher();
    assert_ok(&p.deploy("v1", &[]), "deploy v1");
    let load = Load::start(p.url("/api/load"), 4, Duration::from_secs(60), 200_000);
    eventually("the load loop runs", Duration::from_secs(10), || {
        load.sent.load(std::sync::atomic::Ordering::Relaxed) > 50
    });
    let out = p.deploy("v2", &[]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("traffic is back on v1"),
        "{}",
        stderr(&out)
    );
    assert_eq!(serving(&p), "v1");
    std::thread::sleep(Duration::from_millis(300));
    let report = load.stop();
    assert!(
        report.failures.is_empty(),
        "requests failed across the switch there and back: {:?}",
        report.failures
    );
    // v2 drains, then is stopped.
    eventually(
        "v2 is stopped after its drain",
        Duration::from_secs(20),
        || std::net::TcpStream::connect(("127.0.0.1", p.green)).is_err(),
    );
    let releases = p.json(&["releases", "web"]);
    assert_eq!(releases[0]["status"], "bad");
    assert_eq!(releases[1]["status"], "active");
    assert_ok(&p.run(&["verify", "web"]), "verify v1");
}

#[test]
fn sigterm_stops_the_watcher_and_its_releases() {
    let mut p = Project::new("", "");
    p.start_watcher();
    assert_ok(&p.deploy("v1", &[]), "deploy v1");
    let pid = p.json(&["status", "web"])["live"]["slots"][0]["pid"]
        .as_i64()
        .unwrap();
    let status = p.stop_watcher();
    assert!(status.success(), "{status}");
    assert!(!pid_alive(pid), "the release outlived the watcher");
    assert!(!p.state_dir().join("ripcord.sock").exists());
    // The ledger still knows what should run.
    let status = p.json(&["status", "web"]);
    assert_eq!(status["active"]["version"], "v1");
    assert_eq!(status["watcher"]["running"], false);
}
