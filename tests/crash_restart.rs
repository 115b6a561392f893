//! Crash-only: `kill -9` of a real `ripcord watch` while users send requests, then a new
//! watcher. The listening socket outlives the watcher (the socket keeper holds it), and
//! the new watcher adopts the release processes the dead one left running.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// The slots' pids as the running watcher reports them, blue then green.
fn pids(p: &Project) -> Vec<(String, i64, String)> {
    let live = p.json(&["status", "web"]);
    let mut out: Vec<(String, i64, String)> = live["live"]["slots"]
        .as_array()
        .unwrap_or_else(|| panic!("no live slots: {live:#}"))
        .iter()
        .map(|s| {
            (
                s["slot"].as_str().unwrap().to_string(),
                s["pid"].as_i64().unwrap(),
                s["version"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

fn events(p: &Project) -> Vec<(String, String)> {
    p.json(&["events", "web"])
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_string(),
                e["message"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// SIGKILL, as `kill -9` does: no goodbye to the keeper, no stop of the releases.
fn kill_9(p: &mut Project) {
    let mut child = p.watcher.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn kill_9_of_the_watcher_at_100_requests_a_second_is_not_noticed_and_keeps_both_releases() {
    let mut p = Project::new("bake = \"300s\"", "");
    p.start_watcher();
    assert_ok(&p.deploy("v1", &[]), "deploy v1");
    assert_ok(&p.deploy("v2", &[]), "deploy v2");
    let before = pids(&p);
    assert_eq!(before.len(), 2, "{before:?}");

    let load = PacedLoad::start(p.url("/api/load"), 100, Duration::from_secs(60));
    eventually("the load runs", Duration::from_secs(10), || {
        load.sent.load(std::sync::atomic::Ordering::Relaxed) > 100
    });
    kill_9(&mut p);
    // A second later, as a supervisor would.
    std::thread::sleep(Duration::from_secs(1));
    p.start_watcher();
    let sent_at_restart = load.sent.load(std::sync::atomic::Ordering::Relaxed);
    eventually("the load runs on", Duration::from_secs(10), || {
        load.sent.load(std::sync::atomic::Ordering::Relaxed) > sent_at_restart + 200
    });
    let report = load.stop();
    let ok: u64 = report.ok_by_version.values().sum();
    eprintln!(
        "kill -9 at 100 req/s: {ok} ok, {} failed: {:?}",
        report.failures.len(),
        report.failures
    );
    assert!(
        report.failures.len() <= 10,
        "{} requests failed across the restart (the target is at most 10): {:?}",
        report.failures.len(),
        report.failures
    );
    assert_eq!(
        report.ok_by_version.keys().collect::<Vec<_>>(),
        ["v2"],
        "{report:?}"
    );
    assert!(ok > 300, "{report:?}");

    // The same processes, warm slot included: adopted, not restarted.
    assert_eq!(pids(&p), before);
    let ev = events(&p);
    let adopted: Vec<&String> = ev
        .iter()
        .filter(|(k, _)| k == "process_adopted")
        .map(|(_, m)| m)
        .collect();
    assert_eq!(adopted.len(), 2, "{ev:?}");
    assert!(
        adopted.iter().any(|m| m.contains("v1 (warm)")),
        "{adopted:?}"
    );
    assert!(
        adopted.iter().any(|m| m.contains("v2 (active)")),
        "{adopted:?}"
    );
    assert!(!ev.iter().any(|(k, _)| k == "orphan_stopped"), "{ev:?}");
    let started = ev
        .iter()
        .rev()
        .find(|(k, _)| k == "watcher_started")
        .unwrap();
    assert!(
        started.1.contains("kept open across the watcher restart"),
        "{started:?}"
    );

    // A rollback right after the restart is a warm switch and loses nothing.
    let load = PacedLoad::start(p.url("/api/load"), 100, Duration::from_secs(60));
    eventually("the load runs", Duration::from_secs(10), || {
        load.sent.load(std::sync::atomic::Ordering::Relaxed) > 50
    });
    let out = p.run(&["--json", "rollback", "web"]);
    assert_ok(&out, "rollback after the restart");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["result"]["warm"], true, "{v:#}");
    assert_eq!(serving(&p), "v1");
    std::thread::sleep(Duration::from_millis(300));
    let report = load.stop();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert!(report.ok_by_version.contains_key("v1"), "{report:?}");

    // A clean stop lets the socket go: clients are refused at once, not left waiting.
    p.stop_watcher();
    let t = Instant::now();
    assert_eq!(get(&p.url("/health")).0, 0, "nothing should answer");
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "a request after a clean stop waited {:?} instead of being refused",
        t.elapsed()
    );
    assert!(!p.state_dir().join("sockets.sock").exists());
    for (_, pid, _) in before {
        assert!(!pid_alive(pid), "pid {pid} runs after a clean stop");
    }
}

#[test]
fn a_release_an_unfinished_deploy_was_starting_is_stopped_after_the_restart() {
    let mut p = Project::new("start_timeout = \"20s\"", "");
    p.start_watcher();
    assert_ok(&p.deploy("v1", &[]), "deploy v1");
    let v1 = pids(&p);
    // v2 never answers its health check: the deploy waits for it.
    let mut deploy = p
        .cmd(&["deploy", "web", "v2"])
        .args(DEMO_APP_ARGV)
        .arg("--fail-health")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let ledger = ripcord::ledger::Ledger::open(&p.state_dir()).unwrap();
    let mut v2_pid = None;
    eventually(
        "v2 is started in slot green",
        Duration::from_secs(10),
        || {
            v2_pid = ledger
                .slots("web")
                .unwrap()
                .into_iter()
                .find(|s| s.slot == ripcord::config::Slot::Green)
                .and_then(|s| s.pid);
            v2_pid.is_some()
        },
    );
    let v2_pid = v2_pid.unwrap();
    assert!(pid_alive(v2_pid));
    kill_9(&mut p);
    let _ = wait_exit(&mut deploy, "the deploy", Duration::from_secs(10));
    p.start_watcher();

    assert_eq!(serving(&p), "v1");
    assert_eq!(pids(&p), v1, "v1 is adopted, v2 is gone from the slots");
    eventually("v2 is stopped", Duration::from_secs(10), || {
        !pid_alive(v2_pid)
    });
    let ev = events(&p);
    assert!(
        ev.iter()
            .any(|(k, m)| k == "orphan_stopped" && m.contains(&v2_pid.to_string())),
        "{ev:?}"
    );
    assert!(
        ev.iter()
            .any(|(k, m)| k == "process_adopted" && m.contains("v1 (active)")),
        "{ev:?}"
    );
}

/// systemd's own tool for socket activation: it binds the socket and execs the watcher
/// with it as fd 3 (`LISTEN_FDS=1`, `LISTEN_PID`), as systemd does with ripcord.socket.
#[test]
fn a_socket_from_systemd_socket_activation_is_served_and_no_keeper_is_started() {
    let mut p = Project::new("", "");
    let mut cmd = std::process::Command::new("systemd-socket-activate");
    cmd.arg("-l")
        .arg(format!("127.0.0.1:{}", p.listen))
        .arg(BIN)
        .arg("--config")
        .arg(p.config())
        .arg("--state-dir")
        .arg(p.state_dir())
        .arg("watch")
        .current_dir(p.dir.path());
    let log = p.dir.path().join("watcher.log");
    let mut child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("systemd-socket-activate (Debian's systemd package) must be installed: scripts/test installs it");
    // It execs the watcher on the first connection; that request waits in the backlog
    // until the watcher serves it (no release yet: a 503 that says so).
    eventually(
        "systemd-socket-activate listens",
        Duration::from_secs(10),
        || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("Listening on")
        },
    );
    let (status, body) = get(&p.url("/health"));
    assert_eq!(
        status,
        503,
        "{body}: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(body.contains("no active release yet"), "{body}");
    eventually("the watcher answers", Duration::from_secs(30), || {
        assert!(child.try_wait().unwrap().is_none(), "{}", p.watcher_log());
        p.run(&["--json", "status", "web"]).status.success()
    });
    // The watcher is this process now (systemd-socket-activate exec'd into it).
    p.watcher = Some(child);
    assert_ok(&p.deploy("v1", &[]), "deploy v1");
    assert_eq!(serving(&p), "v1");
    let ev = events(&p);
    let started = ev.iter().find(|(k, _)| k == "watcher_started").unwrap();
    assert!(started.1.contains("handed over by systemd"), "{started:?}");
    assert!(
        !p.state_dir().join("sockets.sock").exists(),
        "systemd holds the socket: no keeper is started"
    );
    p.stop_watcher();
}

#[test]
fn the_shipped_systemd_units_pass_systemd_analyze_verify() {
    let dir = tempfile::tempdir().unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/systemd");
    for unit in ["ripcord.socket", "ripcord.service"] {
        let text = std::fs::read_to_string(root.join(unit)).unwrap();
        // The unit names the installed binary; verify checks it exists and runs.
        let text = text.replace("/usr/local/bin/ripcord", BIN);
        std::fs::write(dir.path().join(unit), text).unwrap();
    }
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(dir.path().join("ripcord.socket"))
        .arg(dir.path().join("ripcord.service"))
        .output()
        .expect("systemd-analyze (Debian's systemd package) must be installed");
    let said = format!("{}{}", stdout(&out), stderr(&out));
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
    // And the one setting that keeps the releases alive across a restart is there.
    let service = std::fs::read_to_string(root.join("ripcord.service")).unwrap();
    assert!(
        service.lines().any(|l| l.trim() == "KillMode=process"),
        "{service}"
    );
    assert!(
        service.lines().any(|l| l.trim() == "Restart=always"),
        "{service}"
    );
}
