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
//! - and the next deploy works (and, with a database, the next restore).
//!
//! Runtime `process` behind the built-in proxy, and behind a real nginx (where the
//! site file must also pass `nginx -t` and point at the active release's slot). Two
//! more scenarios run over a real PostgreSQL: a backup and a `db restore` (the old
//! database must be kept, open to connections, and no half-restored copy left), and a
//! rollback the migration guard judges (the schema untouched). The table of points and
//! outcomes is `docs/failpoints.md`.

mod common;
mod docker_fixture;
mod nginx_fixture;
mod pg_fixture;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::*;
use pg_fixture::Postgres;

/// One step of a scenario, run with the CLI.
#[derive(Debug, Clone, Copy)]
enum Op {
    Deploy(&'static str),
    Drill,
    Rollback,
    /// `db backup`; when it succeeds, the data then changes (row 1 deleted, 4 added).
    Backup,
    /// `db restore` of the newest backup, confirmed.
    Restore,
    /// The schema head set in `alembic_version` (as the release's migrations would),
    /// then the deploy.
    DeployAt(&'static str, &'static str),
}

const SCENARIO: [Op; 4] = [Op::Deploy("v1"), Op::Deploy("v2"), Op::Drill, Op::Rollback];
/// Runtime `docker`: containers, each release's image `REPO:VERSION`.
const CONTAINERS: [Op; 3] = [Op::Deploy("v1"), Op::Deploy("v2"), Op::Rollback];
const RESTORE: [Op; 3] = [Op::Deploy("v1"), Op::Backup, Op::Restore];
/// v2 ships 002 (an expand, already applied), so the guard lets the rollback cross it.
const MIGRATIONS: [Op; 3] = [
    Op::DeployAt("v1", "001"),
    Op::DeployAt("v2", "002"),
    Op::Rollback,
];

/// What is in front of the releases, and what the scenario does (the name is the table's
/// first column).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Front {
    Proxy,
    Nginx,
    /// Behind the proxy, with a database: a backup and a restore.
    Database,
    /// Behind the proxy, with a database and migrations: a guarded rollback.
    Migrations,
    /// Runtime `docker` behind the proxy: blue-green containers.
    Docker,
}

/// What the worlds of one test share: its PostgreSQL, its images' repository.
#[derive(Clone, Copy, Default)]
struct Ctx<'a> {
    pg: Option<&'a Postgres>,
    repo: Option<&'a str>,
}

impl Front {
    fn scenario(self) -> &'static [Op] {
        match self {
            Front::Proxy | Front::Nginx => &SCENARIO,
            Front::Database => &RESTORE,
            Front::Migrations => &MIGRATIONS,
            Front::Docker => &CONTAINERS,
        }
    }
}

/// A project, and the nginx in front of it (router `nginx`), or its database.
struct World<'a> {
    p: Project,
    /// Runtime docker: removes the containers this world's ripcord made, on drop.
    _containers: Option<Containers>,
    /// Set on the CLI where it does the work itself (`db backup`).
    cli_env: Vec<(&'static str, String)>,
    nginx: Option<(nginx_fixture::Nginx, std::path::PathBuf)>,
    db: Option<Db<'a>>,
}

/// A project's own database on the test's PostgreSQL.
struct Db<'a> {
    pg: &'a Postgres,
    name: String,
    /// Whether the backup was taken and the data changed after it.
    changed: bool,
}

const E002: &str = r#"revision = "002"
down_revision = "001"
from alembic import op
import sqlalchemy as sa

def upgrade():
    op.add_column('items', sa.Column('email_new', sa.String(200), nullable=True))

def downgrade():
    op.drop_column('items', 'email_new')
"#;

const E001: &str = r#"revision = "001"
down_revision = None
from alembic import op
import sqlalchemy as sa

def upgrade():
    op.add_column('items', sa.Column('status', sa.String(20), nullable=True))

def downgrade():
    op.drop_column('items', 'status')
"#;

/// Removes, on drop, every container labelled with a state dir.
struct Containers(std::path::PathBuf);

impl Drop for Containers {
    fn drop(&mut self) {
        let ids = containers_of(&self.0, false);
        if !ids.is_empty() {
            let _ = std::process::Command::new("docker")
                .args(["rm", "-f"])
                .args(&ids)
                .output();
        }
    }
}

/// Containers (all, or the running ones) made by the ripcord of `state_dir`.
fn containers_of(state_dir: &Path, running_only: bool) -> Vec<String> {
    let dir = state_dir
        .canonicalize()
        .unwrap_or_else(|_| state_dir.to_path_buf());
    docker_fixture::containers_labelled(
        &format!("ripcord.state_dir={}", dir.display()),
        running_only,
    )
}

fn world(front: Front, ctx: Ctx<'_>) -> World<'_> {
    if front == Front::Docker {
        let repo = ctx.repo.expect("the images' repository");
        let dir = tempfile::tempdir().unwrap();
        let (listen, blue, green) = (free_port(), free_port(), free_port());
        // The service is `web` in every world: each ripcord's containers are its own by
        // their state-dir label; their names differ.
        let name = docker_fixture::unique("fp");
        let config = format!(
            r#"[service.web]
runtime = "docker"
listen = "127.0.0.1:{listen}"
slots = {{ blue = {blue}, green = {green} }}
start_timeout = "20s"
stop_timeout = "5s"
bake = "300s"

[service.web.docker]
image = "{repo}"
container_port = 8080
name = "{name}"

[[service.web.verify]]
http = "http://127.0.0.1:{listen}/api/verify"
json_field = "version"
json_equals = "{{version}}"
"#
        );
        std::fs::write(dir.path().join("ripcord.toml"), config).unwrap();
        let state = dir.path().join("state");
        return World {
            p: Project {
                dir,
                listen,
                blue,
                green,
                watcher: None,
            },
            _containers: Some(Containers(state)),
            cli_env: Vec::new(),
            nginx: None,
            db: None,
        };
    }
    if front == Front::Proxy {
        return World {
            p: Project::new("bake = \"300s\"", ""),
            _containers: None,
            cli_env: Vec::new(),
            nginx: None,
            db: None,
        };
    }
    if let Some(pg) = ctx.pg {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!("app{}", N.fetch_add(1, Ordering::Relaxed));
        pg.create_app(&name);
        let tail = pg.service_table(&name, "");
        let extra = if front == Front::Migrations {
            pg.sql(
                &name,
                "CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)",
            );
            "bake = \"300s\"\n[service.web.migrations]\ndir = \"migrations\"\n"
        } else {
            "bake = \"300s\""
        };
        let p = Project::new(extra, &tail);
        if front == Front::Migrations {
            let versions = p.dir.path().join("migrations/versions");
            std::fs::create_dir_all(&versions).unwrap();
            std::fs::write(versions.join("001_status.py"), E001).unwrap();
            std::fs::write(versions.join("002_email_new.py"), E002).unwrap();
        }
        return World {
            p,
            _containers: None,
            cli_env: Vec::new(),
            nginx: None,
            db: Some(Db {
                pg,
                name,
                changed: false,
            }),
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
        _containers: None,
        cli_env: Vec::new(),
        nginx: Some((nginx, site)),
        db: None,
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

fn run_op(w: &mut World, op: Op) -> std::process::Output {
    let p = &w.p;
    match op {
        Op::Deploy(v) => p.deploy(v, &[]),
        Op::Drill => p.run(&["drill", "web"]),
        Op::Rollback => p.run(&["rollback", "web"]),
        Op::Backup => {
            let mut cmd = p.cmd(&["db", "backup", "web"]);
            cmd.envs(w.cli_env.iter().map(|(k, v)| (k, v)));
            let out = cmd.output().unwrap();
            if out.status.success() {
                let db = w.db.as_mut().unwrap();
                db.pg.sql(
                    &db.name,
                    "DELETE FROM items WHERE id = 1; INSERT INTO items VALUES (4, 'four')",
                );
                db.changed = true;
            }
            out
        }
        Op::Restore => {
            let db = w.db.as_ref().unwrap();
            p.run(&["db", "restore", "web", "--confirm", &db.name])
        }
        Op::DeployAt(v, head) => {
            let db = w.db.as_ref().unwrap();
            db.pg.sql(
                &db.name,
                &format!(
                    "DELETE FROM alembic_version; INSERT INTO alembic_version VALUES ('{head}')"
                ),
            );
            p.deploy(v, &[])
        }
    }
}

/// Every failpoint the scenario reaches, in order, as `NAME@N`, and the index of the
/// scenario step it belongs to.
fn points(front: Front, ctx: Ctx<'_>) -> Vec<(String, usize)> {
    let mut w = world(front, ctx);
    let log = w.p.dir.path().join("failpoints.log");
    // A backup is taken by the CLI itself, which logs (and counts) its own points.
    let cli_log = w.p.dir.path().join("cli-failpoints.log");
    w.cli_env = vec![("RIPCORD_FAILPOINT_LOG", cli_log.display().to_string())];
    start(
        &mut w.p,
        &[("RIPCORD_FAILPOINT_LOG", log.display().to_string())],
    );
    let mut out = Vec::new();
    let mut logs = [(log, 0, BTreeMap::new()), (cli_log, 0, BTreeMap::new())];
    for (i, op) in front.scenario().iter().enumerate() {
        assert_ok(&run_op(&mut w, *op), &format!("{op:?} (unarmed)"));
        let (path, read, seen) = &mut logs[usize::from(by_cli(*op))];
        let text = std::fs::read_to_string(&*path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        for name in &lines[*read..] {
            let n: &mut u32 = seen.entry(name.to_string()).or_default();
            *n += 1;
            out.push((format!("{name}@{n}"), i));
        }
        *read = lines.len();
    }
    w.p.stop_watcher();
    out
}

/// Whether `op` runs in the CLI's own process rather than in the watcher.
fn by_cli(op: Op) -> bool {
    matches!(op, Op::Backup)
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
fn crash_at(front: Front, ctx: Ctx<'_>, point: &str, step: usize) -> String {
    let mut w = world(front, ctx);
    // The process that dies: the CLI where it does the work itself, else the watcher.
    let cli = by_cli(front.scenario()[step]);
    let armed = vec![("RIPCORD_FAILPOINT", point.to_string())];
    if cli {
        w.cli_env = armed.clone();
    }
    start(&mut w.p, if cli { &[] } else { &armed });
    let mut died = false;
    for (i, op) in front.scenario()[..=step].iter().enumerate() {
        let out = run_op(&mut w, *op);
        if cli && i == step {
            use std::os::unix::process::ExitStatusExt;
            died = out.status.signal() == Some(9);
            break;
        }
        let ok = out.status.success();
        // A step before the armed one succeeds and leaves the watcher running.
        let wait = if ok && i < step {
            Duration::ZERO
        } else {
            Duration::from_secs(5)
        };
        let child = w.p.watcher.as_mut().unwrap();
        if wait_gone(child, wait) {
            died = true;
            break;
        }
    }
    let p = &mut w.p;
    assert!(
        died,
        "{point}: the process never reached it: {}",
        p.watcher_log()
    );
    if !cli {
        p.watcher = None;
        start(p, &[]);
    }

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

    let mut adopted = 0;
    if front == Front::Docker {
        // No orphan container: the running containers this ripcord made are exactly the
        // ones its slots record.
        let mut recorded: Vec<String> = status["live"]["slots"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|s| s["container"]["id"].as_str().map(str::to_string))
            .collect();
        recorded.sort();
        assert_eq!(
            containers_of(&p.state_dir(), true),
            recorded,
            "{point}: an orphaned container runs"
        );
        adopted = recorded.len();
    }
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
        half_written(p.dir.path()).is_empty(),
        "{point}: {:?}",
        half_written(p.dir.path())
    );
    let database = check_database(&w, point);

    let p = &mut w.p;
    assert_ok(&p.deploy("v3", &[]), &format!("{point}: the next deploy"));
    assert_eq!(serving(p), "v3", "{point}");
    if let (Front::Database, Some(db)) = (front, &w.db) {
        // And the next restore: from the newest backup, whose data is rows 1 to 3.
        let out = w.p.run(&["db", "restore", "web", "--confirm", &db.name]);
        assert_ok(&out, &format!("{point}: the next restore"));
        assert_eq!(db.pg.items(&db.name), "1,2,3", "{point}");
        assert_eq!(serving(&w.p), "v3", "{point}");
    }
    let p = &mut w.p;
    let now = p.json(&["status", "web"]);
    p.stop_watcher();
    check_nginx(&w, point, now["active"]["slot"].as_str());
    format!(
        "{} active, {} slot(s) adopted{database}",
        active.as_deref().unwrap_or("none"),
        known.len() + adopted
    )
}

/// With a database: it takes connections, no half-restored copy is left, and the data
/// from before the restore is kept (live when the names were not swapped, under
/// `*_before_restore_*` when they were). A restore that the crash cut short after the
/// swap leaves the service frozen for a person to check, and only then (lifted here, so
/// that the next deploy can run). Returns the outcome for the table.
fn check_database(w: &World, point: &str) -> String {
    let Some(db) = &w.db else {
        return String::new();
    };
    let (pg, name) = (db.pg, db.name.as_str());
    let items = |d: &str| pg.items(d);
    let allows = pg.sql(
        "postgres",
        &format!("SELECT datallowconn FROM pg_database WHERE datname = '{name}'"),
    );
    assert_eq!(allows, "t", "{point}: {name} refuses connections");
    let all = pg.databases();
    let left: Vec<&String> = all
        .iter()
        .filter(|d| d.starts_with(&format!("{name}_restore_")))
        .collect();
    assert!(
        left.is_empty(),
        "{point}: a half-restored copy is left: {left:?}"
    );
    let kept: Vec<&String> = all
        .iter()
        .filter(|d| d.starts_with(&format!("{name}_before_restore_")))
        .collect();
    assert!(kept.len() <= 1, "{point}: {kept:?}");
    let before = if db.changed { "2,3,4" } else { "1,2,3" };
    let status = w.p.json(&["status", "web"]);
    let frozen = status["frozen"]["reason"].as_str();
    let outcome = if let Some(k) = kept.first() {
        assert_eq!(items(name), "1,2,3", "{point}: the backup's data is live");
        assert_eq!(
            items(k),
            before,
            "{point}: the data before the restore is kept in {k}"
        );
        if frozen.is_some() {
            let events = w.p.json(&["events", "web"]);
            assert!(
                events
                    .to_string()
                    .contains("after the databases were swapped"),
                "{point}: frozen with no word of the interrupted restore: {events:#}"
            );
            assert_ok(
                &w.p.run(&["unfreeze", "web", "--reason", "checked after the crash"]),
                point,
            );
            ", restored, frozen for a person"
        } else {
            ", restored"
        }
    } else {
        assert_eq!(
            items(name),
            before,
            "{point}: the original database changed"
        );
        assert!(
            frozen.is_none(),
            "{point}: frozen, though the restore changed nothing: {status:#}"
        );
        ", database untouched"
    };
    if w.p.dir.path().join("migrations").exists() && kept.is_empty() {
        // The guarded rollback touches no schema: the head is what the deploy set.
        let head = pg.sql(name, "SELECT version_num FROM alembic_version");
        assert!(head == "001" || head == "002", "{point}: head {head}");
    }
    outcome.to_string()
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
    let pg = matches!(front, Front::Database | Front::Migrations).then(pg_fixture::start);
    // Runtime docker: images v1 to v3 of the static demo app, removed at the end.
    let mut images = docker_fixture::Cleanup::new();
    let repo = (front == Front::Docker).then(|| {
        let repo = docker_fixture::unique("ripcord-test-fp");
        let rt = docker_fixture::rt();
        let engine = docker_fixture::engine(&rt);
        for v in ["v1", "v2", "v3"] {
            docker_fixture::build_image(
                &rt,
                &engine,
                &mut images,
                &format!("{repo}:{v}"),
                &["--listen", "0.0.0.0:8080", "--version", v],
            );
        }
        repo
    });
    let ctx = Ctx {
        pg: pg.as_ref(),
        repo: repo.as_deref(),
    };
    let scenario = front.scenario();
    let all = points(front, ctx);
    assert!(all.len() >= 10, "too few failpoints reached: {all:?}");
    let mine: Vec<&String> = all
        .iter()
        .filter(|(_, s)| *s == step)
        .map(|(p, _)| p)
        .collect();
    assert!(
        mine.len() >= 2,
        "{:?} reaches too few failpoints: {all:?}",
        scenario[step]
    );
    // The table in the docs lists every point the scenario reaches.
    let docs =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/failpoints.md"))
            .unwrap();
    // (`FAILPOINTS_WRITE_TABLE=1` prints the rows for the docs instead of checking.)
    let writing = std::env::var_os("FAILPOINTS_WRITE_TABLE").is_some();
    for point in &mine {
        let row = format!("| {front:?} | {:?} | `{point}` |", scenario[step]);
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
                .map(|point| s.spawn(move || crash_at(front, ctx, point, step)))
                .collect();
            runs.into_iter()
                .map(|r| r.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect()
        });
        for (point, outcome) in chunk.iter().zip(outcomes) {
            table.push(format!(
                "| {front:?} | {:?} | `{point}` | {outcome} |",
                scenario[step]
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

#[test]
fn killed_anywhere_in_a_backup() {
    every_point_of(Front::Database, 1);
}

#[test]
fn killed_anywhere_in_a_restore() {
    every_point_of(Front::Database, 2);
}

#[test]
fn killed_anywhere_in_a_guarded_rollback() {
    every_point_of(Front::Migrations, 2);
}

#[test]
fn containers_killed_anywhere_in_the_first_deploy() {
    every_point_of(Front::Docker, 0);
}

#[test]
fn containers_killed_anywhere_in_a_deploy_over_a_running_release() {
    every_point_of(Front::Docker, 1);
}

#[test]
fn containers_killed_anywhere_in_a_rollback() {
    every_point_of(Front::Docker, 2);
}
