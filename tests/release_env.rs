//! Per-release environment on runtime `process`, and what never leaks from it: a real
//! `ripcord watch`, the real CLI, the demo app as the released program.

mod common;

use common::*;

/// The environment of the running release `version`, read from /proc (the demo app runs
/// without a shell, so its pid is the app's).
fn environ_of(p: &Project, version: &str) -> Vec<String> {
    let status = p.json(&["status", "web"]);
    let pid = status["live"]["slots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["version"] == version)
        .unwrap_or_else(|| panic!("{version} does not run: {status:#}"))["pid"]
        .as_i64()
        .unwrap();
    let raw = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    raw.split(|b| *b == 0)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

fn assert_env(p: &Project, version: &str, want: &[&str], not: &[&str]) {
    let env = environ_of(p, version);
    for w in want {
        assert!(
            env.iter().any(|e| e == w),
            "{version} runs without {w}: {env:?}"
        );
    }
    for n in not {
        assert!(
            !env.iter().any(|e| e == n),
            "{version} runs with {n}: {env:?}"
        );
    }
}

/// Regression (issue 16): a cold rollback of a process release ran it with today's
/// environment, not the one it was deployed with.
#[test]
fn a_cold_rollback_runs_the_release_with_its_own_environment() {
    let mut p = Project::new(
        "bake_secs = 300\nenv_file = \"app.env\"",
        "[service.web.env]\nFROM_TABLE = \"table-a\"\nBOTH = \"table\"\n",
    );
    let env_file = p.dir.path().join("app.env");
    std::fs::write(&env_file, "# the app's env\nMARKER=env-a\nBOTH=file-a\n").unwrap();
    p.start_watcher();
    assert_ok(&p.deploy("v1", &[]), "deploy v1");
    // The env file's variables go over the config's `env`.
    assert_env(
        &p,
        "v1",
        &["MARKER=env-a", "FROM_TABLE=table-a", "BOTH=file-a"],
        &[],
    );
    let releases = p.json(&["releases", "web"]);
    let text = releases.to_string();
    assert!(text.contains("MARKER"), "the names are recorded: {text}");
    assert!(
        !text.contains("env-a") && !text.contains("file-a"),
        "{text}"
    );

    // Today's environment changes: both the env file and the config's table.
    std::fs::write(&env_file, "MARKER=env-b\nBOTH=file-b\nONLY_B=1\n").unwrap();
    let config = std::fs::read_to_string(p.config()).unwrap();
    std::fs::write(p.config(), config.replace("table-a", "table-b")).unwrap();
    assert!(p.stop_watcher().success());
    p.start_watcher();
    // The restarted watcher starts the active v1 again, cold, with v1's own snapshot.
    assert_env(
        &p,
        "v1",
        &["MARKER=env-a", "FROM_TABLE=table-a"],
        &["ONLY_B=1"],
    );

    assert_ok(&p.deploy("v2", &[]), "deploy v2");
    assert_env(
        &p,
        "v2",
        &[
            "MARKER=env-b",
            "FROM_TABLE=table-b",
            "BOTH=file-b",
            "ONLY_B=1",
        ],
        &[],
    );
    // doctor reads the rollback target's snapshot back: names, never values.
    let doctor = stdout(&p.run(&["doctor", "web"]));
    assert!(
        doctor.contains("env snapshot") && doctor.contains("MARKER"),
        "{doctor}"
    );
    assert!(!doctor.contains("env-a"), "{doctor}");
    // v1 stops being warm: the watcher restarts and starts only the active v2.
    assert!(p.stop_watcher().success());
    p.start_watcher();
    let status = p.json(&["status", "web"]);
    assert_eq!(status["active"]["version"], "v2", "{status:#}");
    assert_eq!(status["previous"]["warm"], false, "{status:#}");

    let out = p.run(&["rollback", "web", "--reason", "cold rollback test"]);
    assert_ok(&out, "rollback");
    assert!(
        stdout(&out).contains("rolled back to v1"),
        "{}",
        stdout(&out)
    );
    assert_eq!(serving(&p), "v1");
    assert_env(
        &p,
        "v1",
        &["MARKER=env-a", "FROM_TABLE=table-a", "BOTH=file-a"],
        &["ONLY_B=1", "MARKER=env-b"],
    );
    assert!(p.stop_watcher().success());
}

/// The config files a process release names are copied per release: a cold rollback
/// runs v1 with v1's copies (found through `RIPCORD_CONFIG_FILES`), whatever the files
/// say today; an unchanged set is shared, and a file that cannot be read fails the
/// deploy naming it.
#[test]
fn a_cold_rollback_runs_the_release_with_its_own_config_files() {
    let mut p = Project::new(
        "bake = \"300s\"\nconfig_files = [\"app.conf\", \"conf/flags.json\"]",
        "",
    );
    let conf = p.dir.path().join("app.conf");
    let flags = p.dir.path().join("conf/flags.json");
    std::fs::create_dir_all(flags.parent().unwrap()).unwrap();
    std::fs::write(&conf, "greeting = \"hello from v1\"\n").unwrap();
    std::fs::write(&flags, "{\"new_checkout\": false}\n").unwrap();
    p.start_watcher();
    assert_ok(&p.deploy("v1", &[]), "deploy v1");
    let files_of = |p: &Project, version: &str| -> std::path::PathBuf {
        let env = environ_of(p, version);
        let dir = env
            .iter()
            .find_map(|e| e.strip_prefix("RIPCORD_CONFIG_FILES="))
            .unwrap_or_else(|| panic!("{version} runs without RIPCORD_CONFIG_FILES: {env:?}"));
        std::path::PathBuf::from(dir)
    };
    let v1_files = files_of(&p, "v1");
    assert!(
        v1_files.starts_with(p.state_dir().canonicalize().unwrap())
            || v1_files.starts_with(p.state_dir()),
        "{}",
        v1_files.display()
    );
    let read = |dir: &std::path::Path, name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
    assert_eq!(
        read(&v1_files, "app.conf"),
        "greeting = \"hello from v1\"\n"
    );
    assert_eq!(read(&v1_files, "flags.json"), "{\"new_checkout\": false}\n");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(v1_files.join("app.conf"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "the copies are owner-only: {mode:o}");

    // Today's files change; v2 is deployed with them.
    std::fs::write(&conf, "greeting = \"hello from v2\"\n").unwrap();
    std::fs::write(&flags, "{\"new_checkout\": true}\n").unwrap();
    assert_ok(&p.deploy("v2", &[]), "deploy v2");
    let v2_files = files_of(&p, "v2");
    assert_ne!(v1_files, v2_files);
    assert_eq!(
        read(&v2_files, "app.conf"),
        "greeting = \"hello from v2\"\n"
    );
    assert_eq!(
        read(&v1_files, "app.conf"),
        "greeting = \"hello from v1\"\n",
        "v1's copy kept"
    );
    // doctor checks that the rollback target's copies are there.
    let doctor = stdout(&p.run(&["doctor", "web"]));
    assert!(
        doctor.contains("config files") && doctor.contains("app.conf, flags.json"),
        "{doctor}"
    );

    // v1 goes cold; today's files change again; the rollback starts v1 with its own.
    assert!(p.stop_watcher().success());
    std::fs::write(&conf, "greeting = \"today\"\n").unwrap();
    p.start_watcher();
    assert_eq!(p.json(&["status", "web"])["previous"]["warm"], false);
    assert_ok(&p.run(&["rollback", "web"]), "rollback");
    assert_eq!(serving(&p), "v1");
    let again = files_of(&p, "v1");
    assert_eq!(again, v1_files);
    assert_eq!(read(&again, "app.conf"), "greeting = \"hello from v1\"\n");

    // A config file that cannot be read fails the deploy, naming it; nothing changes.
    std::fs::remove_file(&flags).unwrap();
    let out = p.deploy("v3", &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("flags.json"), "{}", stderr(&out));
    assert_eq!(serving(&p), "v1");
    assert!(p.stop_watcher().success());
}

/// A missing env file fails the deploy before anything starts, naming the file.
#[test]
fn a_missing_env_file_fails_the_deploy_naming_it() {
    let mut p = Project::new("env_file = \"nope.env\"", "");
    p.start_watcher();
    let out = p.deploy("v1", &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("nope.env"), "{}", stderr(&out));
    assert!(p.stop_watcher().success());
}

const SECRET: &str = "planted-secret-7f3a91c2";
const SECRET2: &str = "planted-signing-d41b08e6";

/// A webhook receiver on loopback: every request's bytes, answered 200.
fn webhook_receiver() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = got.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { return };
            s.set_read_timeout(Some(std::time::Duration::from_secs(2)))
                .unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 8192];
            // Headers, then the body by its Content-Length (bounded by the timeout).
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 {
                    break;
                }
                req.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&req).into_owned();
                if let Some(end) = text.find("\r\n\r\n") {
                    let len = text
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if req.len() >= end + 4 + len {
                        break;
                    }
                }
            }
            seen.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&req).into_owned());
            let _ =
                s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    (port, got)
}

/// Every file under `dir`, but those skipped by `skip` (relative paths).
fn files_under(
    dir: &std::path::Path,
    skip: &dyn Fn(&std::path::Path) -> bool,
) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let path = e.unwrap().path();
            if skip(path.strip_prefix(dir).unwrap()) {
                continue;
            }
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() {
                out.push(path);
            }
        }
    }
    out
}

fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Issue 16, item 8: a secret planted in the env (file and config) goes through a
/// deploy, a release whose start fails printing it, a release the guard rolls back
/// (an incident, its report, webhooks), a manual rollback and every read command; it
/// is then in no file ripcord wrote (the ledger included: it keeps variable names
/// only), in no CLI output and not in the watcher's log. Only the release's owner-only
/// env snapshot and the app's own log (its stdout, which ripcord only points at a
/// file) hold it.
#[test]
fn a_planted_secret_is_nowhere_ripcord_writes() {
    let (hook, hooks) = webhook_receiver();
    let dashboard = free_port();
    let mut p = Project::new(
        "bake = \"5m\"\nenv_file = \"app.env\"",
        &format!(
            "[service.web.env]\nSESSION_SIGNING = \"{SECRET2}\"\nRUST_LOG = \"info\"\n\
             [service.web.notify]\nwebhooks = [\"http://127.0.0.1:{hook}/hook\"]\n\
             [watch]\ndashboard_listen = \"127.0.0.1:{dashboard}\"\n"
        ),
    );
    // The default list plus a name of the user's own.
    let config = std::fs::read_to_string(p.config()).unwrap();
    std::fs::write(
        p.config(),
        format!(
            "redact = [\"*_KEY\", \"*_SECRET\", \"*_TOKEN\", \"*PASSWORD*\", \"DATABASE_URL\", \"SESSION_SIGNING*\"]\n{config}"
        ),
    )
    .unwrap();
    std::fs::write(p.dir.path().join("app.env"), format!("API_KEY={SECRET}\n")).unwrap();
    p.start_watcher();
    let mut outputs = Vec::new();
    let mut run = |p: &Project, args: &[&str]| {
        let out = p.run(args);
        outputs.push(format!("{args:?}\n{}\n{}", stdout(&out), stderr(&out)));
        out
    };

    assert_ok(&run(&p, &["deploy", "web", "v1"]), "deploy v1");
    // A release whose start fails after printing its key: the deploy's error quotes
    // its last log lines, with the key taken out.
    let leaky = "echo \"booting with key $API_KEY and $SESSION_SIGNING\"; exit 3";
    let out = run(&p, &["deploy", "web", "v2", "--", "sh", "-c", leaky]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("booting with key <redacted> and <redacted>"),
        "{}",
        stderr(&out)
    );
    // A release that prints its key and then fails half its requests: rolled back by
    // the guard, with an incident and webhooks.
    let bad = format!(
        "echo \"key=$API_KEY\" >&2; exec {BIN} demo-app --port {{port}} --version {{version}} \
         --error-ratio 0.5 --after-secs 1"
    );
    let load = Load::start(
        p.url("/api/load"),
        4,
        std::time::Duration::from_secs(60),
        200_000,
    );
    assert_ok(
        &run(&p, &["deploy", "web", "v3", "--", "sh", "-c", &bad]),
        "deploy v3",
    );
    eventually(
        "the guard rolls v3 back",
        std::time::Duration::from_secs(20),
        || serving(&p) == "v1",
    );
    load.stop();
    eventually(
        "webhooks arrive",
        std::time::Duration::from_secs(20),
        || hooks.lock().unwrap().len() >= 2,
    );
    assert_ok(&run(&p, &["deploy", "web", "v4"]), "deploy v4");
    assert_ok(
        &run(&p, &["rollback", "web", "--reason", "manual"]),
        "rollback",
    );
    let report_dir = p.dir.path().join("reports");
    let report_dir = report_dir.to_str().unwrap();
    assert_ok(
        &run(&p, &["incident", "report", "1", "--out", report_dir]),
        "report",
    );
    for args in [
        &["status", "web"][..],
        &["--json", "status", "web"],
        &["events", "web", "--limit", "500"],
        &["--json", "events", "web", "--limit", "500"],
        &["--json", "releases", "web"],
        &["incident", "show", "1"],
        &["--json", "incident", "show", "1"],
        &["runbook", "web"],
        &["doctor", "web"],
    ] {
        run(&p, args);
    }
    // The dashboard's JSON (it reads the ledger and the watcher's live view).
    for path in [
        "/api/overview",
        "/api/incidents",
        "/api/services/web",
        "/incidents/1",
    ] {
        let (status, body) = get(&format!("http://127.0.0.1:{dashboard}{path}"));
        assert_eq!(status, 200, "{path}: {body}");
        outputs.push(format!("GET {path}\n{body}"));
    }
    let events = p.json(&["events", "web", "--limit", "500"]).to_string();
    assert!(
        events.contains("<redacted>"),
        "the failed start's tail: {events}"
    );
    let releases = p.json(&["releases", "web"]).to_string();
    assert!(
        releases.contains("\"SESSION_SIGNING\":\"<redacted>\""),
        "{releases}"
    );

    // Owner-only: the state dir, the ledger, the control socket, the dashboard's token,
    // the env snapshots and the releases' logs.
    let state = p.state_dir();
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&state.join("ledger.db")), 0o600);
    assert_eq!(mode(&state.join("ripcord.sock")), 0o600);
    assert_eq!(mode(&state.join("dashboard.token")), 0o600);
    assert_eq!(mode(&state.join("env")), 0o700);
    let snapshots = files_under(&state.join("env"), &|_| false);
    assert!(!snapshots.is_empty());
    let logs = files_under(&state.join("logs"), &|_| false);
    for f in snapshots.iter().chain(&logs) {
        assert_eq!(mode(f), 0o600, "{}", f.display());
    }
    // The secret went where it must: into a snapshot, and out of the app into its log.
    let holds = |f: &std::path::PathBuf| {
        String::from_utf8_lossy(&std::fs::read(f).unwrap()).contains(SECRET)
    };
    assert!(snapshots.iter().any(holds), "no snapshot holds the env");
    assert!(logs.iter().any(holds), "no app printed its key");
    assert!(p.stop_watcher().success());

    // Nowhere else: every file under the project (the ledger, its WAL, reports, the
    // watcher's log), every webhook, every CLI output.
    let written = files_under(p.dir.path(), &|rel| {
        rel == std::path::Path::new("app.env")
            || rel == std::path::Path::new("ripcord.toml")
            || rel.starts_with("state/env")
            || rel.starts_with("state/logs")
    });
    let names: Vec<String> = written.iter().map(|f| f.display().to_string()).collect();
    assert!(names.iter().any(|n| n.ends_with("ledger.db")), "{names:?}");
    assert!(
        names.iter().any(|n| n.ends_with("watcher.log")),
        "{names:?}"
    );
    assert!(
        names.iter().any(|n| n.ends_with(".md")),
        "no report: {names:?}"
    );
    for f in &written {
        let bytes = std::fs::read(f).unwrap();
        for s in [SECRET, SECRET2] {
            assert!(
                !bytes.windows(s.len()).any(|w| w == s.as_bytes()),
                "{} holds the planted secret",
                f.display()
            );
        }
    }
    let hooks = hooks.lock().unwrap().join("\n");
    assert!(hooks.contains("\"kind\""), "{hooks}");
    for text in outputs.iter().chain([&hooks]) {
        assert!(
            !text.contains(SECRET) && !text.contains(SECRET2),
            "leaked: {text}"
        );
    }
}
