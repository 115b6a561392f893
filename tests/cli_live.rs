//! The CLI for scripts against a real watcher and real demo-app processes: `deploy
//! --wait` and its exit codes (0 cleared, 5 rolled back, 6 no verdict in time),
//! `events --follow` as JSON lines while a deploy happens, `status --watch` frames.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;

/// How long a follower may take to exit: a bound that catches a hang, nothing more.
const HANG: Duration = Duration::from_secs(15);

/// `--json deploy web VERSION EXTRA... -- demo-app ... APP_FLAGS...`, parsed.
fn deploy_json(
    p: &Project,
    version: &str,
    extra: &[&str],
    app_flags: &[&str],
) -> (Option<i32>, serde_json::Value, String) {
    let mut args = vec!["--json", "deploy", "web", version];
    args.extend_from_slice(extra);
    args.extend(DEMO_APP_ARGV);
    args.extend_from_slice(app_flags);
    let out = p.run(&args);
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "deploy {version}: stdout is not JSON ({e}): {}\nstderr: {}\nwatcher: {}",
            stdout(&out),
            stderr(&out),
            p.watcher_log()
        )
    });
    (out.status.code(), v, stderr(&out))
}

fn release_id(p: &Project, version: &str) -> i64 {
    p.json(&["releases", "web"])
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["version"] == version)
        .unwrap_or_else(|| panic!("no release {version}"))["id"]
        .as_i64()
        .unwrap()
}

#[test]
fn deploy_wait_exits_0_only_once_the_guard_cleared_the_release_and_6_without_a_verdict() {
    let mut p = Project::new("bake_secs = 1", "");
    p.start_watcher();
    assert_ok(&p.deploy("v1", &[]), "deploy v1");

    // No traffic: the guard has no evidence to clear v2, so the bake is held past its
    // one second and the wait ends without a verdict. v2 keeps serving.
    let (code, v, err) = deploy_json(&p, "v2", &["--wait=3s"], &[]);
    assert_eq!(code, Some(6), "{v:#}\n{err}");
    assert_eq!(v["wait"]["verdict"], "timed_out", "{v:#}");
    assert_eq!(v["ok"], false, "{v:#}");
    assert_eq!(v["result"]["active"]["version"], "v2", "{v:#}");
    assert!(
        v["wait"]["hold"]
            .as_str()
            .is_some_and(|h| h.contains("not yet enough")),
        "the timeout says why the bake is held: {v:#}"
    );
    assert!(err.is_empty(), "nothing but JSON under --json: {err}");
    assert_eq!(serving(&p), "v2");

    // With traffic the guard clears v3; the wait ends after the bake does (v2, the
    // previous release, is stopped), not on the deploy's own success.
    let load = Load::start(p.url("/api/load"), 2, Duration::from_secs(90), 200_000);
    let (code, v, err) = deploy_json(&p, "v3", &["--wait"], &[]);
    let report = load.stop();
    assert_eq!(code, Some(0), "{v:#}\n{err}\n{}", p.watcher_log());
    assert_eq!(v["ok"], true, "{v:#}");
    assert_eq!(v["error"], serde_json::Value::Null, "{v:#}");
    assert_eq!(v["wait"]["verdict"], "cleared", "{v:#}");
    assert_eq!(v["wait"]["version"], "v3", "{v:#}");
    // The default limit is the bake period plus a minute.
    assert_eq!(v["wait"]["limit_ms"], 61_000, "{v:#}");
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    let v2 = release_id(&p, "v2");
    let events = p.json(&["events", "web", "--limit", "500"]);
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "bake_ended" && e["release_id"] == v2),
        "the wait said cleared before v2's bake ended: {events:#}"
    );
    let status = p.json(&["status", "web"]);
    assert_eq!(status["active"]["version"], "v3", "{status:#}");
    assert_eq!(status["previous"]["warm"], false, "{status:#}");

    // People get the same verdict in words.
    let load = Load::start(p.url("/api/load"), 2, Duration::from_secs(90), 200_000);
    let out = p.run(&[
        "deploy",
        "web",
        "v4",
        "--wait=60",
        "--",
        BIN,
        "demo-app",
        "--port",
        "{port}",
        "--version",
        "{version}",
    ]);
    load.stop();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("✓ web v4 is still active and cleared by the guard"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn deploy_wait_exits_5_when_the_guard_rolls_the_release_back() {
    // A long bake: the guard cannot clear v2 before its errors begin.
    let mut p = Project::new("bake_secs = 30", "");
    p.start_watcher();
    assert_ok(&p.deploy("v1", &[]), "deploy v1");
    let load = Load::start(p.url("/api/load"), 4, Duration::from_secs(90), 500_000);
    // Bad a second after it starts: its deploy-time verification passes, as in life.
    let (code, v, err) = deploy_json(
        &p,
        "v2",
        &["--wait=60s"],
        &["--error-ratio", "0.5", "--after-secs", "1"],
    );
    load.stop();
    assert_eq!(code, Some(5), "{v:#}\n{err}\n{}", p.watcher_log());
    // The deploy itself succeeded; the verdict did not.
    assert_eq!(v["result"]["active"]["version"], "v2", "{v:#}");
    assert_eq!(v["ok"], false, "{v:#}");
    assert_eq!(v["exit"], 5, "{v:#}");
    assert_eq!(v["wait"]["verdict"], "rolled_back", "{v:#}");
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("was rolled back while we waited")),
        "{v:#}"
    );
    assert!(
        v["wait"]["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("automatic")),
        "the guard's reason is passed on: {v:#}"
    );
    assert_eq!(serving(&p), "v1");
    let releases = p.json(&["releases", "web"]);
    assert_eq!(releases[0]["version"], "v2");
    assert_eq!(releases[0]["status"], "bad", "{releases:#}");
}

/// Lines of a child's stdout, read on a thread so the test can wait with a bound.
fn lines_of(child: &mut Child) -> mpsc::Receiver<String> {
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Reads lines until `done` holds for what was read (at most `max`).
fn read_until(
    rx: &mpsc::Receiver<String>,
    seen: &mut Vec<String>,
    what: &str,
    max: Duration,
    done: impl Fn(&[String]) -> bool,
) {
    let deadline = Instant::now() + max;
    while !done(seen) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => panic!("timed out waiting until {what}; read so far:\n{seen:#?}"),
        }
    }
}

fn kinds_after(lines: &[String], kind: &str) -> Vec<String> {
    let events: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let Some(at) = events.iter().rposition(|e| e["kind"] == kind) else {
        return Vec::new();
    };
    events[at..]
        .iter()
        .map(|e| e["kind"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn events_follow_prints_new_events_as_json_lines_and_status_watch_redraws() {
    let mut p = Project::new("bake_secs = 1", "");
    p.start_watcher();
    assert_ok(&p.deploy("v1", &[]), "deploy v1");

    let mut follower = p
        .cmd(&["--json", "events", "web", "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = lines_of(&mut follower);
    let mut seen = Vec::new();
    // The history first, as `events` prints it: v1's deploy.
    read_until(
        &rx,
        &mut seen,
        "v1's switch is printed",
        Duration::from_secs(15),
        |l| l.iter().any(|l| l.contains("\"traffic_switched\"")),
    );
    // Then what happens while it runs.
    assert_ok(&p.deploy("v2", &[]), "deploy v2");
    read_until(
        &rx,
        &mut seen,
        "v2's deploy and switch are printed",
        Duration::from_secs(30),
        |l| {
            l.iter()
                .filter(|l| l.contains("\"deploy_started\""))
                .count()
                == 2
                && kinds_after(l, "deploy_started").contains(&"traffic_switched".to_string())
        },
    );
    let status = terminate(&mut follower, "events --follow", HANG);
    assert!(status.success(), "SIGTERM is a clean stop: {status}");

    // One JSON object a line, each event once, in order, and none missed: the followed
    // ids are exactly the ledger's, from the first printed to the last.
    let followed: Vec<i64> = seen
        .iter()
        .map(|l| {
            let e: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
            assert_eq!(e["service"], "web", "{l}");
            e["id"].as_i64().unwrap()
        })
        .collect();
    let ledger: Vec<i64> = p
        .json(&["events", "web", "--limit", "1000"])
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .filter(|id| followed[0] <= *id && *id <= *followed.last().unwrap())
        .collect();
    assert_eq!(followed, ledger);

    // A follower whose reader goes away stops by itself, even with nothing to print.
    let mut follower = p
        .cmd(&["events", "web", "--follow", "--limit", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(follower.stdout.take());
    let status = wait_exit(
        &mut follower,
        "events --follow with its stdout closed",
        HANG,
    );
    assert!(status.success(), "{status}");

    // status --watch: frames separated by a line of dashes when stdout is a pipe.
    let mut watch = p
        .cmd(&["status", "web", "--watch", "--interval", "200ms"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = lines_of(&mut watch);
    let mut frames = Vec::new();
    read_until(
        &rx,
        &mut frames,
        "three status frames",
        Duration::from_secs(15),
        |l| l.iter().filter(|l| l.starts_with("web: ")).count() == 3,
    );
    assert!(terminate(&mut watch, "status --watch", HANG).success());
    let headers = frames
        .iter()
        .filter(|l| l.starts_with("ripcord status at "))
        .count();
    assert_eq!(headers, 3, "{frames:#?}");
    assert_eq!(
        frames.iter().filter(|l| *l == "---").count(),
        2,
        "{frames:#?}"
    );
    assert!(
        frames.iter().any(|l| l.contains("active    v2")),
        "{frames:#?}"
    );
    assert!(
        !frames.iter().any(|l| l.contains('\x1b')),
        "no escapes in a pipe"
    );

    // Under --json each frame is one line.
    let mut watch = p
        .cmd(&["--json", "status", "web", "--watch", "--interval", "100ms"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = lines_of(&mut watch);
    let mut frames = Vec::new();
    read_until(
        &rx,
        &mut frames,
        "two JSON frames",
        Duration::from_secs(15),
        |l| l.len() >= 2,
    );
    assert!(terminate(&mut watch, "status --watch --json", HANG).success());
    for f in &frames {
        let v: serde_json::Value = serde_json::from_str(f).unwrap();
        assert_eq!(v["service"], "web", "{v:#}");
        assert_eq!(v["active"]["version"], "v2", "{v:#}");
    }
}
