//! `ripcord db backup|backups|restore` end to end: a real PostgreSQL (private, started
//! by the test), a real watcher running the demo app, the real CLI. A restore needs
//! consent, refuses a damaged backup before the app is stopped, keeps the old database
//! renamed, and a restore that fails midway leaves the original serving.

mod common;
mod pg_fixture;

use std::time::Duration;

use common::{Project, assert_ok, eventually, serving, stderr, stdout};
use pg_fixture::{Postgres, broken_pg_dump_dir, start};

/// A project whose service `web` has database `db` on `pg`; `extra` goes into the
/// `[service.web.database]` table.
fn project(pg: &Postgres, db: &str, extra: &str) -> Project {
    let tail = pg.service_table(db, extra);
    Project::new("", &tail)
}

fn kinds(p: &Project) -> Vec<String> {
    let events = p.json(&["events", "web"]);
    events
        .as_array()
        .cloned()
        .or_else(|| events["events"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|e| e["kind"].as_str().map(str::to_string))
        .collect()
}

/// The `restore_refused` events, oldest first.
fn refusals(p: &Project) -> Vec<serde_json::Value> {
    let events = p.json(&["events", "web"]);
    events
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e["kind"] == "restore_refused")
        .collect()
}

fn app_pid(p: &Project) -> i64 {
    let s = p.json(&["status", "web"]);
    s["live"]["slots"]
        .as_array()
        .and_then(|a| a.iter().find_map(|sl| sl["pid"].as_i64()))
        .unwrap_or_else(|| panic!("no app pid in {s}"))
}

#[test]
fn backup_then_restore_brings_the_rows_back_and_keeps_the_old_database() {
    let pg = start();
    pg.create_app("app");
    let mut p = project(&pg, "app", "keep = 2");
    p.start_watcher();
    assert_ok(&p.deploy("v1", &[]), "deploy v1");
    let out = p.run(&["db", "backup", "web"]);
    assert_ok(&out, "db backup");
    let list = p.json(&["db", "backups", "web"]);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["verified_ok"], true, "read back at once: {list}");
    assert_eq!(list[0]["sha256"].as_str().unwrap().len(), 64);
    let first_path = list[0]["path"].as_str().unwrap().to_string();

    pg.sql(
        "app",
        "DELETE FROM items WHERE id = 1; INSERT INTO items VALUES (4, 'four')",
    );
    let dbs_before = pg.databases();
    let pid_before = app_pid(&p);

    // No consent: refused, nothing changed.
    let out = p.run(&["db", "restore", "web"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("DATA WRITTEN SINCE"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("--confirm app"), "{}", stderr(&out));
    let out = p.run(&["db", "restore", "web", "--confirm", "ap"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!(pg.items("app"), "2,3,4");
    assert_eq!(pg.databases(), dbs_before);
    assert_eq!(app_pid(&p), pid_before, "the app was not touched");
    // Both refusals are in the ledger, with the reason and the backup.
    let refused = refusals(&p);
    let reasons: Vec<&str> = refused
        .iter()
        .filter_map(|e| e["data"]["reason"].as_str())
        .collect();
    assert_eq!(reasons, vec!["no_consent", "wrong_confirm"], "{refused:?}");
    for e in &refused {
        assert_eq!(e["data"]["backup"], list[0]["id"], "{e}");
        assert!(e["incident_id"].is_null(), "no incident is open: {e}");
    }

    // Consent given: the backup's rows are back, the old database is kept.
    let out = p.run(&["db", "restore", "web", "--confirm", "app"]);
    assert_ok(&out, "db restore");
    assert_eq!(pg.items("app"), "1,2,3");
    let kept: Vec<String> = pg
        .databases()
        .into_iter()
        .filter(|d| d.starts_with("app_before_restore_"))
        .collect();
    assert_eq!(kept.len(), 1, "{:?}", pg.databases());
    assert_eq!(pg.items(&kept[0]), "2,3,4");
    assert_eq!(serving(&p), "v1", "the app is back");
    assert_ne!(app_pid(&p), pid_before, "it was stopped and started");
    let k = kinds(&p);
    for kind in [
        "restore_started",
        "app_stopped",
        "restore_checked",
        "database_swapped",
        "restore_finished",
        "unfrozen",
    ] {
        assert!(k.contains(&kind.to_string()), "no {kind} event in {k:?}");
    }

    // Retention: keep = 2 keeps the two newest.
    assert_ok(&p.run(&["db", "backup", "web"]), "second backup");
    assert_ok(&p.run(&["db", "backup", "web"]), "third backup");
    let list = p.json(&["db", "backups", "web"]);
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
    assert!(
        !std::path::Path::new(&first_path).exists(),
        "the oldest file is gone"
    );
}

#[test]
fn a_damaged_backup_is_refused_before_the_app_is_stopped() {
    let pg = start();
    pg.create_app("shop");
    let mut p = project(&pg, "shop", "");
    p.start_watcher();
    assert_ok(&p.deploy("v1", &[]), "deploy v1");
    assert_ok(&p.run(&["db", "backup", "web"]), "db backup");
    let list = p.json(&["db", "backups", "web"]);
    let path = list[0]["path"].as_str().unwrap().to_string();
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let pid = app_pid(&p);
    let out = p.run(&["db", "restore", "web", "--confirm", "shop"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("integrity check"), "{}", stderr(&out));
    assert_eq!(app_pid(&p), pid, "the app was never stopped");
    assert!(!kinds(&p).contains(&"app_stopped".to_string()));
    assert_eq!(p.json(&["db", "backups", "web"])[0]["verified_ok"], false);
    assert_eq!(pg.items("shop"), "1,2,3");
}

#[test]
fn a_tampered_backup_of_the_same_size_is_refused_before_the_app_is_stopped() {
    let pg = start();
    pg.create_app("till");
    let mut p = project(&pg, "till", "");
    p.start_watcher();
    assert_ok(&p.deploy("v1", &[]), "deploy v1");
    assert_ok(&p.run(&["db", "backup", "web"]), "db backup");
    let list = p.json(&["db", "backups", "web"]);
    let path = list[0]["path"].as_str().unwrap().to_string();
    let mut bytes = std::fs::read(&path).unwrap();
    let len = bytes.len();
    // One byte flipped in the middle: same size, so only the checksum can tell.
    bytes[len / 2] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len() as usize, len);
    let pid = app_pid(&p);
    let out = p.run(&["db", "restore", "web", "--confirm", "till"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("integrity check"), "{}", stderr(&out));
    assert!(stderr(&out).contains("sha256"), "{}", stderr(&out));
    assert_eq!(app_pid(&p), pid, "the app was never stopped");
    assert!(!kinds(&p).contains(&"app_stopped".to_string()));
    assert_eq!(p.json(&["db", "backups", "web"])[0]["verified_ok"], false);
    assert_eq!(pg.items("till"), "1,2,3");
    let refused = refusals(&p);
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0]["data"]["reason"], "integrity_check_failed");
    assert_eq!(refused[0]["data"]["backup"], list[0]["id"]);

    // The same, chosen with --backup ID.
    let id = list[0]["id"].to_string();
    let out = p.run(&["db", "restore", "web", "--backup", &id, "--confirm", "till"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!(app_pid(&p), pid, "the app was never stopped");
    assert_eq!(refusals(&p).len(), 2);

    // A file ripcord did not record is refused (usage): its checksum is unknown.
    let stray = p.dir.path().join("stray.dump");
    std::fs::write(&stray, b"anything").unwrap();
    let out = p.run(&[
        "db",
        "restore",
        "web",
        "--backup",
        stray.to_str().unwrap(),
        "--confirm",
        "till",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    eprintln!("unrecorded file: {}", stderr(&out));
    assert!(
        stderr(&out).contains("is not a backup ripcord recorded for web"),
        "{}",
        stderr(&out)
    );
    assert_eq!(app_pid(&p), pid);
}

#[test]
fn retention_never_removes_the_only_good_backup() {
    let pg = start();
    pg.create_app("vault");
    let p = project(&pg, "vault", "keep = 1");
    assert_ok(&p.run(&["db", "backup", "web"]), "good backup");
    let good = p.json(&["db", "backups", "web"])[0].clone();
    assert_eq!(good["verified_ok"], true, "{good}");
    // From now on pg_dump writes files that do not read back.
    let broken = broken_pg_dump_dir(p.dir.path());
    let config = std::fs::read_to_string(p.config()).unwrap();
    std::fs::write(
        p.config(),
        config.replace(
            "keep = 1",
            &format!("keep = 1\npg_bin_dir = {:?}", broken.display().to_string()),
        ),
    )
    .unwrap();
    for n in 1..=3 {
        let out = p.run(&["db", "backup", "web"]);
        assert_eq!(
            out.status.code(),
            Some(1),
            "bad backup {n}: {}",
            stderr(&out)
        );
        assert!(
            stderr(&out).contains("does not read back"),
            "{}",
            stderr(&out)
        );
    }
    let list = p.json(&["db", "backups", "web"]);
    let list = list.as_array().unwrap();
    // keep = 1: the newest (bad) one, and the good one beyond it; the older bad ones went.
    assert_eq!(list.len(), 2, "{list:?}");
    assert_eq!(list[0]["verified_ok"], false, "{list:?}");
    assert_eq!(
        list[1]["id"], good["id"],
        "the good backup is listed: {list:?}"
    );
    let good_path = good["path"].as_str().unwrap();
    assert!(std::path::Path::new(good_path).exists(), "{good_path}");
    let files = std::fs::read_dir(std::path::Path::new(good_path).parent().unwrap())
        .unwrap()
        .count();
    assert_eq!(files, 2, "the older bad dumps were deleted from disk");
}

#[test]
fn a_restore_that_fails_midway_leaves_the_original_database_serving() {
    let pg = start();
    pg.create_app("crm");
    // The restored copy must hold more than 100 items: it holds 3, so the check fails
    // after the app was stopped and before the swap.
    let mut p = project(
        &pg,
        "crm",
        "checks = [\"SELECT count(*) > 100 FROM items\"]",
    );
    p.start_watcher();
    assert_ok(&p.deploy("v1", &[]), "deploy v1");
    assert_ok(&p.run(&["db", "backup", "web"]), "db backup");
    pg.sql("crm", "INSERT INTO items VALUES (9, 'nine')");
    let dbs = pg.databases();
    let out = p.run(&["db", "restore", "web", "--confirm", "crm"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(stderr(&out).contains("untouched"), "{}", stderr(&out));
    assert_eq!(
        pg.items("crm"),
        "1,2,3,9",
        "the original database is as it was"
    );
    assert_eq!(pg.databases(), dbs, "the half-made copy was dropped");
    eventually("the app serves again", Duration::from_secs(10), || {
        common::get(&p.url("/health")).0 == 200
    });
    assert_eq!(serving(&p), "v1");
    let k = kinds(&p);
    assert!(k.contains(&"restore_failed".to_string()), "{k:?}");
    assert!(k.contains(&"unfrozen".to_string()), "{k:?}");
}

#[test]
fn a_restore_under_a_corruption_freeze_is_in_the_incident_report() {
    let pg = start();
    pg.create_app("ledger");
    let mut p = project(&pg, "ledger", "");
    p.start_watcher();
    assert_ok(&p.deploy("v1", &[]), "deploy v1");
    assert_ok(&p.run(&["db", "backup", "web"]), "db backup");
    pg.sql("ledger", "UPDATE items SET name = 'garbage'");
    // A person finds corrupt data: everything freezes, an incident opens.
    assert_ok(
        &p.run(&["freeze", "web", "--reason", "items corrupted by a bad job"]),
        "freeze",
    );
    // A refused attempt (no consent) is attached to the incident too.
    let out = p.run(&["db", "restore", "web"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let incident = p.json(&["incident", "list", "--service", "web"])[0]["id"].clone();
    let refused = refusals(&p);
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0]["incident_id"], incident, "{refused:?}");
    assert_eq!(refused[0]["data"]["incident"], incident, "{refused:?}");
    let out = p.run(&["db", "restore", "web", "--confirm", "ledger"]);
    assert_ok(&out, "restore while frozen");
    assert_eq!(
        pg.sql(
            "ledger",
            "SELECT string_agg(name, ',' ORDER BY id) FROM items"
        ),
        "one,two,three"
    );
    // The freeze a person set stays until a person lifts it.
    let out = p.run(&["deploy", "web", "v2"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let incidents = p.json(&["incident", "list", "--service", "web"]);
    let id = incidents[0]["id"].as_i64().unwrap().to_string();
    let dir = p.dir.path().join("reports");
    let out = p.run(&["incident", "report", &id, "--out", dir.to_str().unwrap()]);
    assert_ok(&out, "incident report");
    let md = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .find(|e| e.path().extension().is_some_and(|x| x == "md"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .expect("a Markdown report");
    assert!(
        md.contains("restore_started") || md.contains("restoring ledger"),
        "{md}"
    );
    assert!(
        md.contains("leaves the live database"),
        "the data-loss window: {md}"
    );
    assert!(md.contains("kept as ledger_before_restore_"), "{md}");
    assert!(
        md.contains("restore_refused") || md.contains("needs --confirm"),
        "{md}"
    );
}

/// Runs the CLI on a pseudo-terminal (util-linux `script`), typing `typed`.
fn on_a_terminal(p: &Project, args: &[&str], typed: &str) -> std::process::Output {
    use std::io::Write;
    let mut argv = vec![
        common::BIN.to_string(),
        "--config".into(),
        p.config().display().to_string(),
        "--state-dir".into(),
        p.state_dir().display().to_string(),
    ];
    argv.extend(args.iter().map(|a| a.to_string()));
    // Our own binary and temp paths only (no user data); each word single-quoted.
    let line = argv
        .iter()
        .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
        .collect::<Vec<_>>()
        .join(" ");
    let mut child = std::process::Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("util-linux `script` runs the CLI on a terminal");
    let mut stdin = child.stdin.take().unwrap();
    // Type once the prompt is up (the backup check runs first).
    std::thread::sleep(Duration::from_millis(1500));
    let _ = stdin.write_all(typed.as_bytes());
    let _ = stdin.flush();
    let out = child.wait_with_output().unwrap();
    drop(stdin);
    out
}

#[test]
fn an_interactive_restore_needs_the_database_name_typed() {
    let pg = start();
    pg.create_app("desk");
    let mut p = project(&pg, "desk", "");
    p.start_watcher();
    assert_ok(&p.deploy("v1", &[]), "deploy v1");
    assert_ok(&p.run(&["db", "backup", "web"]), "db backup");
    pg.sql("desk", "DELETE FROM items");
    let out = on_a_terminal(&p, &["db", "restore", "web"], "desk-typo\n");
    let shown = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(3), "{shown}");
    assert!(shown.contains("type the database's name (desk)"), "{shown}");
    assert_eq!(pg.items("desk"), "");
    let refused = refusals(&p);
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0]["data"]["reason"], "wrong_confirm");
    assert!(
        !refused[0]["message"]
            .as_str()
            .unwrap()
            .contains("desk-typo"),
        "what was typed stays out of the ledger: {refused:?}"
    );
    let out = on_a_terminal(&p, &["db", "restore", "web"], "desk\n");
    let shown = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(0), "{shown}");
    assert!(shown.contains("WILL BE LOST"), "{shown}");
    assert_eq!(pg.items("desk"), "1,2,3");
}

#[test]
fn the_watcher_restores_only_into_the_database_the_person_confirmed() {
    let pg = start();
    pg.create_app("alpha");
    pg.create_app("beta");
    let mut p = project(&pg, "alpha", "");
    p.start_watcher();
    assert_ok(&p.deploy("v1", &[]), "deploy v1");
    assert_ok(&p.run(&["db", "backup", "web"]), "backup of alpha");
    // The config now names another database, but the watcher still runs the old one:
    // consent for `beta` must not restore alpha's dump over anything.
    let config = std::fs::read_to_string(p.config()).unwrap();
    std::fs::write(p.config(), config.replace("/alpha\"", "/beta\"")).unwrap();
    pg.sql("beta", "DELETE FROM items WHERE id = 3");
    let dbs = pg.databases();
    let out = p.run(&["db", "restore", "web", "--confirm", "beta"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("must all be the same database"),
        "{}",
        stderr(&out)
    );
    assert_eq!(pg.databases(), dbs, "nothing renamed");
    assert_eq!(pg.items("beta"), "1,2");
    assert_eq!(pg.items("alpha"), "1,2,3");
}
