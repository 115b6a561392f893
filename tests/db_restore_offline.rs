//! `ripcord db restore` with no watcher running (issue 16, item 5): a real PostgreSQL
//! (private, started by the test), a real watcher killed or busy, the real CLI. The
//! restore takes the ledger's locks itself, stops what a crashed watcher left running,
//! and leaves the app to the next watcher; a watcher in the middle of a rollback makes
//! it refuse, naming the rollback.

mod common;
mod pg_fixture;

use std::time::Duration;

use common::*;
use pg_fixture::{Postgres, start};

fn project(pg: &Postgres, db: &str, extra: &str) -> Project {
    let tail = pg.service_table(db, "");
    Project::new(extra, &tail)
}

fn events(p: &Project) -> Vec<serde_json::Value> {
    p.json(&["events", "web", "--limit", "500"])
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn event_message(p: &Project, kind: &str) -> String {
    events(p)
        .iter()
        .rev()
        .find(|e| e["kind"] == kind)
        .and_then(|e| e["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| panic!("no {kind} event in {:?}", events(p)))
}

#[test]
fn a_restore_after_the_watcher_was_killed_takes_the_locks_and_stops_its_orphan() {
    let pg = start();
    pg.create_app("app");
    let mut p = project(&pg, "app", "");
    p.start_watcher();
    assert_ok(&p.deploy("v1", &[]), "deploy v1");
    assert_ok(&p.run(&["db", "backup", "web"]), "db backup");
    pg.sql(
        "app",
        "DELETE FROM items WHERE id = 1; INSERT INTO items VALUES (4, 'four')",
    );
    let v1_pid = p.json(&["status", "web"])["live"]["slots"][0]["pid"]
        .as_i64()
        .unwrap();
    // The watcher dies; v1 keeps running (and writing) without it.
    let mut watcher = p.watcher.take().unwrap();
    watcher.kill().unwrap();
    watcher.wait().unwrap();
    assert!(pid_alive(v1_pid));

    // Someone else holds the service's lease (this test process, through the ledger):
    // refused, naming the holder, with nothing stopped or changed.
    {
        let mut ledger = ripcord::ledger::Ledger::open(&p.state_dir()).unwrap();
        let lease = ledger
            .acquire_lease("web", "a test holding web", Duration::from_secs(60))
            .unwrap();
        let out = p.run(&["db", "restore", "web", "--confirm", "app"]);
        assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
        assert!(
            stderr(&out).contains("service `web` is held by a test holding web"),
            "{}",
            stderr(&out)
        );
        assert_eq!(pg.items("app"), "2,3,4");
        assert!(pid_alive(v1_pid), "nothing was stopped");
        ledger.release_lease(&lease).unwrap();
    }

    let out = p.run(&["db", "restore", "web", "--confirm", "app"]);
    assert_ok(&out, "db restore without a watcher");
    assert!(
        stdout(&out).contains("no watcher runs, so no app was started"),
        "{}",
        stdout(&out)
    );
    assert_eq!(pg.items("app"), "1,2,3");
    let kept: Vec<String> = pg
        .databases()
        .into_iter()
        .filter(|d| d.starts_with("app_before_restore_"))
        .collect();
    assert_eq!(kept.len(), 1, "{:?}", pg.databases());
    assert_eq!(pg.items(&kept[0]), "2,3,4");
    // The crashed watcher's v1 (its pid and start time as the ledger has them) was
    // stopped before the swap.
    assert!(!pid_alive(v1_pid), "the orphaned v1 still runs");
    assert_eq!(
        event_message(&p, "app_stopped"),
        "stopped 1 release process(es) an earlier watcher left running"
    );
    for kind in [
        "restore_started",
        "restore_checked",
        "database_swapped",
        "restore_finished",
        "unfrozen",
    ] {
        event_message(&p, kind);
    }
    let status = p.json(&["status", "web"]);
    assert!(
        status["frozen"].is_null() || status["frozen"] == false,
        "{status:#}"
    );

    // Both leases were given back: a watcher starts and serves v1 on the restored data.
    p.start_watcher();
    assert_eq!(serving(&p), "v1");
    // A second restore, now through the watcher, still works (the watcher's path).
    let out = p.run(&["--json", "db", "restore", "web", "--confirm", "app"]);
    assert_ok(&out, "db restore through the watcher");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["watcher"], true, "{v}");
    assert_eq!(v["result"]["app"], "v1", "{v}");
    assert!(p.stop_watcher().success());
}

#[test]
fn a_restore_while_the_watcher_rolls_back_is_refused_naming_the_rollback() {
    let pg = start();
    pg.create_app("app");
    let mut p = project(&pg, "app", "bake = \"5m\"");
    p.start_watcher();
    // v1 takes 3 s to start: a cold rollback to it holds the service that long.
    assert_ok(&p.deploy("v1", &["--start-delay-ms", "3000"]), "deploy v1");
    assert_ok(&p.deploy("v2", &[]), "deploy v2");
    assert_ok(&p.run(&["db", "backup", "web"]), "db backup");
    pg.sql("app", "INSERT INTO items VALUES (4, 'four')");
    // v1 is no longer warm after a restart of the watcher.
    assert!(p.stop_watcher().success());
    p.start_watcher();
    let mut rollback = p
        .cmd(&["rollback", "web", "--reason", "test"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    eventually("the rollback starts", Duration::from_secs(10), || {
        events(&p).iter().any(|e| e["kind"] == "rollback_started")
    });
    let dbs = pg.databases();
    let out = p.run(&["db", "restore", "web", "--confirm", "app"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("`ripcord rollback web` (watcher pid"),
        "the refusal names the holder: {}",
        stderr(&out)
    );
    assert_eq!(pg.items("app"), "1,2,3,4", "nothing was restored");
    assert_eq!(pg.databases(), dbs);
    let status = wait_exit(&mut rollback, "the rollback", Duration::from_secs(30));
    assert!(status.success());
    assert_eq!(serving(&p), "v1");
    assert!(p.stop_watcher().success());
}
