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
//! Runtime `process` behind the built-in proxy, and behind a real nginx (where the
//! site file must also pass `nginx -t` and point at the active release's slot). The
//! table of points and outcomes is `docs/failpoints.md`.

mod common;
mod nginx_fixture;

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

/// What is in front of the releases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Front {
    Proxy,
    Nginx,
}

/// A project, and the nginx in front of it (router `nginx`).
struct World {
    p: Project,
    nginx: Option<(nginx_fixture::Nginx, std::path::PathBuf)>,
}

fn world(front: Front) -> World {
    if front == Front::Proxy {
        return World {
            p: Project::new("bake = \"300s\"", ""),
            nginx: None,
        };
    }
    let dir = tempfile::tempdir().unwrap();
    let (port, blue, green) = (free_port(), free_port(), free_port());
    let site = dir.path().join("sites/app");
    std::fs::create_dir_all(site.parent().unwrap()).unwrap();
    std::fs::write(
        &site,
        nginx_fixture::primary_backup_site(
            port,
            &format!("127.0.0.1:{blue}"),
            &format!("127.0.0.1:{green}"),
        ),
    )
    .unwrap();
    let nginx =
        nginx_fixture::Nginx::start(&dir.path().join("nginx"), site.to_str().unwrap(), port);
    let argv = |v: Vec<String>| serde_json::to_string(&v).unwrap();
    let config = format!(
        r#"[service.web]
router = "nginx"
slots = {{ blue = {blue}, green = {green} }}
start_timeout = "10s"
stop_timeout = "5s"
bake = "300s"
command = [{BIN:?}, "demo-app", "--port", "{{port}}", "--version", "{{version}}"]

[service.web.nginx]
site = {site:?}
upstream = "app"
test_command = {test}
reload_command = {reload}

[[service.web.verify]]
http = "http://127.0.0.1:{port}/api/verify"
json_field = "version"
json_equals = "{{version}}"
"#,
        site = site.to_str().unwrap(),
        test = argv(nginx.test_command()),
        reload = argv(nginx.reload_command()),
    );
    std::fs::write(dir.path().join("ripcord.toml"), config).unwrap();
    World {
        p: Project {
            dir,
            listen: port,
            blue,
            green,
            watcher: None,
        },
        nginx: Some((nginx, site)),
    }
}

/// Behind nginx: the site file passes `nginx -t`, and its upstream's primary server is
/// the active release's slot.
fn check_nginx(w: &World, point: &str, active_slot: Option<&str>) {
    let Some((nginx, site)) = &w.nginx else {
        return;
    };
    let test = nginx.test_command();
    let out = std::process::Command::new(&test[0])
        .args(&test[1..])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{point}: nginx -t fails: {}",
        stderr(&out)
    );
    let text = std::fs::read_to_string(site).unwrap();
    let primary: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("server 127.0.0.1:") && !l.contains("backup"))
        .collect();
    assert_eq!(primary.len(), 1, "{point}: {text}");
    if let Some(slot) = active_slot {
        let port = if slot == "blue" { w.p.blue } else { w.p.green };
        assert!(
            primary[0].starts_with(&format!("server 127.0.0.1:{port}")),
            "{point}: the site's primary is not the active slot {slot}: {text}"
        );
    }
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
fn points(front: Front) -> Vec<(String, usize)> {
    let mut w = world(front);
    let p = &mut w.p;
    let log = p.dir.path().join("failpoints.log");
    start(p, &[("RIPCORD_FAILPOINT_LOG", log.display().to_string())]);
    let mut seen: BTreeMap<String, u32> = BTreeMap::new();
    let mut out = Vec::new();
    let mut read = 0;
    for (i, op) in SCENARIO.iter().enumerate() {
        assert_ok(&run_op(p, *op), &format!("{op:?} (unarmed)"));
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
fn crash_at(front: Front, point: &str, step: usize) -> String {
    let mut w = world(front);
    let p = &mut w.p;
    start(p, &[("RIPCORD_FAILPOINT", point.to_string())]);
    let mut died = false;
    for (i, op) in SCENARIO[..=step].iter().enumerate() {
        let ok = run_op(p, *op).status.success();
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
    start(p, &[]);

    let status = p.json(&["status", "web"]);
    let active = status["active"]["version"].as_str().map(str::to_string);
    // nginx applies a reload a moment after `nginx -s reload` returns: behind it, the
    // served version may lag the switch by that moment (bounded here).
    let lag = if front == Front::Nginx {
        Duration::from_secs(5)
    } else {
        Duration::ZERO
    };
    let deadline = std::time::Instant::now() + lag;
    let (code, body) = loop {
        let (code, body) = get(&p.url("/health"));
        let served: Option<String> = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["version"].as_str().map(str::to_string));
        let right = match &active {
            Some(v) => code == 200 && served.as_deref() == Some(v.as_str()),
            None => code != 200,
        };
        if right || std::time::Instant::now() >= deadline {
            break (code, body);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
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
        // The proxy says so with a 503; nginx has no server to send to (502).
        None => assert!(
            code == 503 || (front == Front::Nginx && code == 502),
            "{point}: no release is active, yet it answered {code}: {body}"
        ),
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

    let p = &mut w.p;
    assert_ok(&p.deploy("v3", &[]), &format!("{point}: the next deploy"));
    assert_eq!(serving(p), "v3", "{point}");
    let now = p.json(&["status", "web"]);
    p.stop_watcher();
    check_nginx(&w, point, now["active"]["slot"].as_str());
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
fn every_point_of(front: Front, step: usize) {
    let all = points(front);
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
    // (`FAILPOINTS_WRITE_TABLE=1` prints the rows for the docs instead of checking.)
    let writing = std::env::var_os("FAILPOINTS_WRITE_TABLE").is_some();
    for point in &mine {
        let row = format!("| {front:?} | {:?} | `{point}` |", SCENARIO[step]);
        assert!(
            writing || docs.contains(&row),
            "docs/failpoints.md has no row {row}"
        );
    }
    // Three projects at a time: each mostly waits (for a watcher, a health check).
    let mut table = Vec::new();
    for chunk in mine.chunks(3) {
        let outcomes: Vec<String> = std::thread::scope(|s| {
            let runs: Vec<_> = chunk
                .iter()
                .map(|point| s.spawn(move || crash_at(front, point, step)))
                .collect();
            runs.into_iter()
                .map(|r| r.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect()
        });
        for (point, outcome) in chunk.iter().zip(outcomes) {
            table.push(format!(
                "| {front:?} | {:?} | `{point}` | {outcome} |",
                SCENARIO[step]
            ));
        }
    }
    eprintln!("{}", table.join("\n"));
}

#[test]
fn killed_anywhere_in_the_first_deploy() {
    every_point_of(Front::Proxy, 0);
}

#[test]
fn killed_anywhere_in_a_deploy_over_a_running_release() {
    every_point_of(Front::Proxy, 1);
}

#[test]
fn killed_anywhere_in_a_drill() {
    every_point_of(Front::Proxy, 2);
}

#[test]
fn killed_anywhere_in_a_rollback() {
    every_point_of(Front::Proxy, 3);
}

#[test]
fn behind_nginx_killed_anywhere_in_the_first_deploy() {
    every_point_of(Front::Nginx, 0);
}

#[test]
fn behind_nginx_killed_anywhere_in_a_deploy_over_a_running_release() {
    every_point_of(Front::Nginx, 1);
}

#[test]
fn behind_nginx_killed_anywhere_in_a_drill() {
    every_point_of(Front::Nginx, 2);
}

#[test]
fn behind_nginx_killed_anywhere_in_a_rollback() {
    every_point_of(Front::Nginx, 3);
}
