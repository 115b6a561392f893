//! Crash at every persisted step. A scenario (deploy v1, deploy v2, a drill, a
//! rollback) runs once with every failpoint it reaches logged (`RIPCORD_FAILPOINT_LOG`);
//! then, for each point reached, a fresh project runs the scenario with that point armed
//! (`RIPCORD_FAILPOINT=NAME@N`: the watcher dies there by SIGKILL), a new watcher
//! starts, and the world must be consistent:
//!
//! - exactly one active release in the ledger, and it is what the proxy serves (or,
//!   before the first release was promoted, none, and the proxy says so);
//! - every release process ripcord started for the service is one the new watcher
//!   knows (no orphan), and each of those runs;
//! - no operation left unfinished, the ledger passes its integrity check, no
//!   half-written file in the state dir;
//! - and the next deploy works.
//!
//! Runtime `process` behind the built-in proxy. The table of points and outcomes is
//! `docs/failpoints.md`.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::*;

/// One step of the scenario, run with the CLI.
#[derive(Debug, Clone, Copy)]
enum Op {
    Deploy(&'static str),
    Drill,
    Rollback,
}

const SCENARIO: [Op; 4] = [Op::Deploy("v1"), Op::Deploy("v2"), Op::Drill, Op::Rollback];

fn project() -> Project {
    Project::new("bake = \"300s\"", "")
}

fn start(p: &mut Project, env: &[(&str, String)]) {
    let mut cmd = p.cmd(&["watch"]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = start_watch(cmd, &p.dir.path().join("watcher.log"), || {
        p.run(&["--json", "status", "web"])
    });
    p.watcher = Some(child);
}

fn run_op(p: &Project, op: Op) -> std::process::Output {
    match op {
        Op::Deploy(v) => p.deploy(v, &[]),
        Op::Drill => p.run(&["drill", "web"]),
        Op::Rollback => p.run(&["rollback", "web"]),
    }
}

/// Every failpoint the scenario reaches, in order, as `NAME@N`, and the index of the
/// scenario step it belongs to.
fn points() -> Vec<(String, usize)> {
    let mut p = project();
    let log = p.dir.path().join("failpoints.log");
    start(
        &mut p,
        &[("RIPCORD_FAILPOINT_LOG", log.display().to_string())],
    );
    let mut seen: BTreeMap<String, u32> = BTreeMap::new();
    let mut out = Vec::new();
    let mut read = 0;
    for (i, op) in SCENARIO.iter().enumerate() {
        assert_ok(&run_op(&p, *op), &format!("{op:?} (unarmed)"));
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        for name in &lines[read..] {
            let n = seen.entry(name.to_string()).or_default();
            *n += 1;
            out.push((format!("{name}@{n}"), i));
        }
        read = lines.len();
    }
    p.stop_watcher();
    out
}

/// Release processes of `web` started for this state dir, by their environment.
fn ours(state_dir: &Path) -> Vec<i64> {
    let dir = state_dir.canonicalize().unwrap();
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i64>().ok()) else {
            continue;
        };
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        let vars: Vec<&[u8]> = env.split(|b| *b == 0).collect();
        let has = |kv: &str| vars.contains(&kv.as_bytes());
        if has("RIPCORD_SERVICE=web")
            && has(&format!("RIPCORD_STATE_DIR={}", dir.display()))
            && pid_alive(pid)
        {
            pids.push(pid);
        }
    }
    pids.sort();
    pids
}

fn half_written(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let path = e.path();
            if path.is_dir() {
                stack.push(path);
            } else if e.file_name().to_string_lossy().contains(".tmp") {
                out.push(path.display().to_string());
            }
        }
    }
    out
}

/// Kills the watcher at `point` during the scenario, restarts it, checks the world.
fn crash_at(point: &str, step: usize) -> String {
    let mut p = project();
    start(&mut p, &[("RIPCORD_FAILPOINT", point.to_string())]);
    let mut died = false;
    for (i, op) in SCENARIO[..=step].iter().enumerate() {
        let ok = run_op(&p, *op).status.success();
        // A step before the armed one succeeds and leaves the watcher running.
        let wait = if ok && i < step {
            Duration::ZERO
        } else {
            Duration::from_secs(5)
        };
        let child = p.watcher.as_mut().unwrap();
        if wait_gone(child, wait) {
            died = true;
            break;
        }
    }
    assert!(
        died,
        "{point}: the watcher never reached it: {}",
        p.watcher_log()
    );
    p.watcher = None;
    start(&mut p, &[]);

    let status = p.json(&["status", "web"]);
    let active = status["active"]["version"].as_str().map(str::to_string);
    let (code, body) = get(&p.url("/health"));
    match &active {
        Some(v) => {
            assert_eq!(code, 200, "{point}: {body}");
            let served: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(
                served["version"].as_str(),
                Some(v.as_str()),
                "{point}: {status:#}"
            );
        }
        None => assert_eq!(code, 503, "{point}: no release is active, yet: {body}"),
    }
    let releases = p.json(&["releases", "web"]);
    let active_rows = releases
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["status"] == "active")
        .count();
    assert_eq!(
        active_rows,
        usize::from(active.is_some()),
        "{point}: {releases:#}"
    );

    let mut known: Vec<i64> = status["live"]["slots"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["pid"].as_i64())
        .collect();
    known.sort();
    for pid in &known {
        assert!(pid_alive(*pid), "{point}: slot pid {pid} is not running");
    }
    assert_eq!(
        ours(&p.state_dir()),
        known,
        "{point}: an orphaned release process runs"
    );

    let db = rusqlite::Connection::open(p.state_dir().join("ledger.db")).unwrap();
    let open: i64 = db
        .query_row(
            "SELECT count(*) FROM operations WHERE outcome IS NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(open, 0, "{point}: an operation is left unfinished");
    let check: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok", "{point}");
    assert!(
        half_written(&p.state_dir()).is_empty(),
        "{point}: {:?}",
        half_written(&p.state_dir())
    );

    assert_ok(&p.deploy("v3", &[]), &format!("{point}: the next deploy"));
    assert_eq!(serving(&p), "v3", "{point}");
    p.stop_watcher();
    format!(
        "{} active, {} slot(s) adopted",
        active.as_deref().unwrap_or("none"),
        known.len()
    )
}

/// Whether `child` exited within `max` (reaped, then).
fn wait_gone(child: &mut std::process::Child, max: Duration) -> bool {
    let deadline = std::time::Instant::now() + max;
    loop {
        if child.try_wait().unwrap().is_some() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Crashes at every point of scenario step `step`; prints its rows of the table.
fn every_point_of(step: usize) {
    let all = points();
    assert!(all.len() >= 20, "too few failpoints reached: {all:?}");
    let mine: Vec<&String> = all
        .iter()
        .filter(|(_, s)| *s == step)
        .map(|(p, _)| p)
        .collect();
    assert!(
        mine.len() >= 3,
        "{:?} reaches too few failpoints: {all:?}",
        SCENARIO[step]
    );
    // The table in the docs lists every point the scenario reaches.
    let docs =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/failpoints.md"))
            .unwrap();
    for point in &mine {
        assert!(
            docs.contains(&format!("`{point}`")),
            "docs/failpoints.md has no row for {point}"
        );
    }
    let mut table = Vec::new();
    for point in mine {
        let outcome = crash_at(point, step);
        table.push(format!("| {:?} | `{point}` | {outcome} |", SCENARIO[step]));
    }
    eprintln!("{}", table.join("\n"));
}

#[test]
fn killed_anywhere_in_the_first_deploy() {
    every_point_of(0);
}

#[test]
fn killed_anywhere_in_a_deploy_over_a_running_release() {
    every_point_of(1);
}

#[test]
fn killed_anywhere_in_a_drill() {
    every_point_of(2);
}

#[test]
fn killed_anywhere_in_a_rollback() {
    every_point_of(3);
}
