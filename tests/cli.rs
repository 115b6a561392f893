//! The real binary's exit codes, messages and `--json` shapes, for commands that need no
//! watcher.

mod common;

use assert_cmd::Command;
use common::free_port;

fn ripcord(dir: &std::path::Path) -> Command {
    let mut c = Command::cargo_bin("ripcord").unwrap();
    c.current_dir(dir)
        .env_remove("RIPCORD_CONFIG")
        .env_remove("RIPCORD_STATE_DIR");
    c
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn config_check_accepts_the_example() {
    let dir = tempfile::tempdir().unwrap();
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/ripcord.toml");
    let out = ripcord(dir.path())
        .args(["--config", example, "config", "check"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("✓") && text(&out.stdout).contains("1 service (web)"));
}

#[test]
fn config_check_reports_every_problem_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("ripcord.toml"),
        "[service.web]\nlisten = \"127.0.0.1:8080\"\nslots = { blue = 8080, green = 8082 }\nbake_sec = 3\n\n[service.api]\nslots = { blue = 9001, green = \"x\" }\n",
    )
    .unwrap();
    // ./ripcord.toml is the default.
    let out = ripcord(dir.path())
        .args(["config", "check"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stdout = text(&out.stdout);
    let expected = [
        "✗ ripcord.toml:3: service.web.slots.blue: port 8080 is already used by `service.web.listen`",
        "✗ ripcord.toml:4: service.web.bake_sec: unknown key (did you mean `bake`?)",
        "✗ ripcord.toml:6: service.api.listen: missing: router \"proxy\" needs the address",
        "✗ ripcord.toml:7: service.api.slots.green: \"x\" is not an address",
        "4 problems in ripcord.toml",
    ];
    for e in expected {
        assert!(stdout.contains(e), "missing {e:?} in:\n{stdout}");
    }

    let out = ripcord(dir.path())
        .args(["--json", "config", "check"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false);
    let errors = v["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 4);
    assert_eq!(errors[1]["line"], 4);
    assert_eq!(errors[1]["key"], "service.web.bake_sec");
    assert!(
        errors[1]["message"]
            .as_str()
            .unwrap()
            .starts_with("unknown key")
    );
}

#[test]
fn the_config_path_comes_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("elsewhere.toml");
    std::fs::write(
        &path,
        "[service.web]\nlisten = \"127.0.0.1:1\"\nslots = { blue = 2, green = 3 }\n",
    )
    .unwrap();
    let out = ripcord(dir.path())
        .env("RIPCORD_CONFIG", &path)
        .args(["config", "check"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("elsewhere.toml"));
}

#[test]
fn a_missing_config_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = ripcord(dir.path())
        .args(["verify", "web"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("no config: ripcord.toml does not exist"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn deploy_without_a_watcher_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let out = ripcord(dir.path())
        .args(["deploy", "web", "v1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("no watcher is running") && err.contains("ripcord watch"),
        "{err}"
    );
}

#[test]
fn read_commands_without_a_ledger_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    for args in [&["releases", "web"][..], &["events", "web"], &["status"]] {
        let out = ripcord(dir.path()).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(
            text(&out.stderr).contains("no ledger in .ripcord"),
            "{}",
            text(&out.stderr)
        );
    }
}

#[test]
fn verify_exits_4_when_a_check_fails() {
    let dir = tempfile::tempdir().unwrap();
    let dead = free_port();
    std::fs::write(
        dir.path().join("ripcord.toml"),
        format!(
            r#"[service.web]
listen = "127.0.0.1:{}"
slots = {{ blue = {}, green = {} }}

[[service.web.verify]]
name = "always fine"
command = ["true"]

[[service.web.verify]]
http = "http://127.0.0.1:{dead}/health"
timeout = "2s"
"#,
            free_port(),
            free_port(),
            free_port()
        ),
    )
    .unwrap();
    let out = ripcord(dir.path())
        .args(["verify", "web"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("✓ always fine"), "{stdout}");
    assert!(
        stdout.contains(&format!("✗ GET http://127.0.0.1:{dead}/health")),
        "{stdout}"
    );
    assert!(stdout.contains("1 of 2 checks failed"), "{stdout}");

    let out = ripcord(dir.path())
        .args(["verify", "web", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["checks"][0]["ok"], true);
    assert_eq!(v["checks"][1]["ok"], false);

    let out = ripcord(dir.path())
        .args(["verify", "nope"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("no service `nope`"));
}

#[test]
fn read_commands_name_the_known_services_for_an_unknown_one() {
    let dir = tempfile::tempdir().unwrap();
    // A freeze is the cheapest way to give the ledger a service without a watcher.
    let out = ripcord(dir.path())
        .args(["freeze", "web", "--reason", "test"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    for args in [
        &["status", "wbe"][..],
        &["releases", "wbe"],
        &["events", "wbe"],
        &["status", "wbe", "--json"],
    ] {
        let out = ripcord(dir.path()).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = text(&out.stderr);
        assert!(
            err.contains("no service `wbe`") && err.contains("known: web"),
            "{err}"
        );
    }
    let out = ripcord(dir.path())
        .args(["status", "web", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["state"], "frozen", "{v:#}");
}

#[test]
fn many_processes_writing_one_new_ledger_at_once_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // Sixteen separate processes race to create the ledger and write to it.
    let children: Vec<_> = (0..16)
        .map(|i| {
            std::process::Command::new(assert_cmd::cargo::cargo_bin("ripcord"))
                .current_dir(dir.path())
                .env_remove("RIPCORD_CONFIG")
                .env_remove("RIPCORD_STATE_DIR")
                .args([
                    "freeze",
                    &format!("svc{i}"),
                    "--reason",
                    &format!("race {i}"),
                ])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (i, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0), "svc{i}: {}", text(&out.stderr));
    }
    for i in 0..16 {
        let out = ripcord(dir.path())
            .args(["status", &format!("svc{i}"), "--json"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["frozen"]["reason"], format!("race {i}"), "{v:#}");
    }
    let db = rusqlite::Connection::open(dir.path().join(".ripcord/ledger.db")).unwrap();
    let check: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
}

#[test]
fn usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let out = ripcord(dir.path()).args(["deploy"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = ripcord(dir.path()).args(["frobnicate"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = ripcord(dir.path()).args(["--help"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let help = text(&out.stdout);
    for cmd in [
        "demo", "deploy", "rollback", "verify", "status", "releases", "events", "watch", "config",
    ] {
        assert!(help.contains(cmd), "--help lacks {cmd}");
    }
    assert!(
        !help.contains("demo-app"),
        "the internal demo-app command is hidden"
    );
}

#[test]
fn the_runbook_is_generated_from_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/ripcord.toml");
    let out = ripcord(dir.path())
        .args(["--config", example, "runbook"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let md = text(&out.stdout);
    assert!(md.starts_with("# Rollback runbook"), "{md}");
    assert!(
        md.contains("## Service `web`") && md.contains("ripcord rollback web"),
        "{md}"
    );
    // A read command creates no state.
    assert!(!dir.path().join(".ripcord").exists());
    let file = dir.path().join("RUNBOOK.md");
    let out = ripcord(dir.path())
        .args([
            "--config",
            example,
            "runbook",
            "web",
            "--out",
            file.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), md);
    let out = ripcord(dir.path())
        .args(["--config", example, "runbook", "nope"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn migrations_check_names_phases_and_exits_by_severity() {
    let dir = tempfile::tempdir().unwrap();
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/migrations");
    let out = ripcord(dir.path())
        .args(["migrations", "check", &format!("{fixtures}/alembic")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("003_switch.py:6: error drop-column"),
        "{stdout}"
    );
    assert!(stdout.contains("[003]: contract"), "{stdout}");
    assert!(
        stdout.contains("[001]: expand") && stdout.contains("downgrade: data-loss"),
        "{stdout}"
    );

    let out = ripcord(dir.path())
        .args([
            "--json",
            "migrations",
            "check",
            &format!("{fixtures}/alembic"),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let files = v["files"].as_array().unwrap();
    assert_eq!(files.len(), 3);
    for f in files {
        assert_eq!(f["kind"], "alembic");
        assert!(
            ["expand", "migrate", "contract"].contains(&f["phase"].as_str().unwrap()),
            "{f:#}"
        );
        assert!(f["upgrade"]["findings"].is_array() && f["downgrade"]["state"].is_string());
        for finding in f["upgrade"]["findings"].as_array().unwrap() {
            for key in ["rule", "severity", "line", "risk", "message", "fix"] {
                assert!(
                    !finding[key].is_null(),
                    "finding without {key}: {finding:#}"
                );
            }
        }
    }

    // A migration done the safe way passes (its suppression carries a reason).
    let out = ripcord(dir.path())
        .args([
            "migrations",
            "check",
            &format!("{fixtures}/safe"),
            "--format",
            "github",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));

    // Usage errors exit 2.
    for args in [
        vec!["migrations", "check", "/nonexistent/dir"],
        vec!["migrations", "check", fixtures, "--disable", "no-such-rule"],
        vec![
            "migrations",
            "check",
            fixtures,
            "--severity",
            "drop-column=fatal",
        ],
    ] {
        let out = ripcord(dir.path()).args(&args).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    // Turning the rule off, or making it a warning, clears the error.
    let out = ripcord(dir.path())
        .args([
            "migrations",
            "check",
            &format!("{fixtures}/alembic"),
            "--severity",
            "drop-column=warning",
            "--severity",
            "rename-column=warning",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
}

/// Under --json a fatal error is exactly one JSON object on stderr, with the same exit
/// code as without; stdout stays empty so a script never parses half an answer.
#[test]
fn fatal_errors_under_json_are_one_json_object_on_stderr() {
    let dir = tempfile::tempdir().unwrap();
    for (args, code, says) in [
        // A command's own failure: no ledger yet.
        (&["--json", "events", "web"][..], 1, "no ledger in .ripcord"),
        // No watcher to deploy through.
        (
            &["--json", "deploy", "web", "v1"],
            1,
            "no watcher is running",
        ),
        // A config error.
        (&["--json", "verify", "web"], 2, "no config"),
        // A usage error, caught by the argument parser before anything runs.
        (&["deploy", "--json", "web"], 2, "required arguments"),
        (&["--json", "status", "--interval", "1s"], 2, "--watch"),
        (&["--json", "deploy", "web", "v2", "--wait=soon"], 2, "soon"),
    ] {
        let out = ripcord(dir.path()).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(code), "{args:?}");
        let err = text(&out.stderr);
        let v: serde_json::Value = serde_json::from_str(&err)
            .unwrap_or_else(|e| panic!("{args:?}: stderr is not one JSON object ({e}): {err}"));
        assert_eq!(v["exit"], code, "{args:?}: {v}");
        let message = v["error"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{args:?}: {v}");
        assert!(!message.starts_with("error:"), "{args:?}: {v}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: one line: {err}");
        assert!(out.stdout.is_empty(), "{args:?}: {}", text(&out.stdout));
    }
    // Without --json the same failure stays text for people.
    let out = ripcord(dir.path())
        .args(["events", "web"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).starts_with("error: no ledger"),
        "{}",
        text(&out.stderr)
    );
    // A release's own `--json` after `--` is its argument, not ripcord's flag.
    let out = ripcord(dir.path())
        .args(["deploy", "web", "--", "app", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).starts_with("error:"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn completions_name_every_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let out = ripcord(dir.path())
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let script = text(&out.stdout);
    assert!(script.contains("complete -F _ripcord"), "{script}");
    for cmd in [
        "deploy",
        "rollback",
        "events",
        "status",
        "incident",
        "completions",
        "--follow",
        "--wait",
    ] {
        assert!(script.contains(cmd), "the bash completions lack {cmd}");
    }
    assert!(
        !script.contains("demo-app"),
        "the hidden demo-app is not offered"
    );
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let out = ripcord(dir.path())
            .args(["completions", shell])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{shell}");
        assert!(text(&out.stdout).contains("rollback"), "{shell}");
    }
    let out = ripcord(dir.path())
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn the_man_page_is_roff_with_every_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    for cmd in ["man", "manpage"] {
        let out = ripcord(dir.path()).arg(cmd).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let page = text(&out.stdout);
        // clap_mangen opens with the groff apostrophe definition (`.ie`/`.el`); the
        // first macro of the page itself is its title.
        let first = page
            .lines()
            .find(|l| !l.starts_with(".ie") && !l.starts_with(".el"))
            .unwrap_or_default();
        assert!(first.starts_with(".TH ripcord 1"), "{page}");
        assert!(page.contains(".SH NAME"), "{page}");
        for sub in ["deploy", "rollback", "events", "completions"] {
            assert!(page.contains(sub), "the man page lacks {sub}");
        }
    }
}
