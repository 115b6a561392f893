//! `ripcord migrations check` as a user runs it, for what only the real binary shows: a
//! file that is not UTF-8 does not stop the run, a Python file nested deeper than the
//! parser's scanner can hold does not abort the process, and the commands that fix texts
//! point to exist.

use assert_cmd::Command;

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
fn a_file_that_is_not_utf8_is_reported_and_the_others_are_checked() {
    // Regression: discover refused the file and the whole run exited 2.
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m");
    std::fs::create_dir(&m).unwrap();
    std::fs::write(
        m.join("1_a.up.sql"),
        b"SET lock_timeout = '2s';\nALTER TABLE users ADD COLUMN y int; -- caf\xe9\n",
    )
    .unwrap();
    std::fs::write(m.join("1_a.down.sql"), "SELECT 1;\n").unwrap();
    std::fs::write(
        m.join("2_b.up.sql"),
        "SET lock_timeout = '2s';\nALTER TABLE users DROP COLUMN z;\n",
    )
    .unwrap();
    std::fs::write(m.join("2_b.down.sql"), "SELECT 1;\n").unwrap();
    let out = ripcord(dir.path())
        .args(["migrations", "check", "m"])
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("1_a.up.sql:2: warning parse-error") && stdout.contains("UTF-8"),
        "{stdout}"
    );
    assert!(
        stdout.contains("2_b.up.sql:2: error drop-column"),
        "{stdout}"
    );
}

#[test]
fn python_nested_600_levels_deep_does_not_abort() {
    // Regression: tree-sitter's scanner failed an assertion and the process got SIGABRT.
    let dir = tempfile::tempdir().unwrap();
    let mut py = String::from("revision = \"r1\"\ndown_revision = None\n\ndef upgrade():\n");
    for level in 1..=600 {
        py.push_str(&" ".repeat(level));
        py.push_str("if x:\n");
    }
    py.push_str(&" ".repeat(601));
    py.push_str("y = 's'\n");
    let versions = dir.path().join("versions");
    std::fs::create_dir(&versions).unwrap();
    std::fs::write(versions.join("r1.py"), py).unwrap();
    let out = ripcord(dir.path())
        .args(["--json", "migrations", "check", "versions"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let finding = &v["files"][0]["upgrade"]["findings"][0];
    assert_eq!(finding["rule"], "parse-error", "{v:#}");
    assert_eq!(finding["line"], 104);
    assert_eq!(finding["risk"][0], "unknown");
}

#[test]
fn commands_named_in_fix_texts_exist() {
    // Regression: the suppression-unknown-rule fix sent people to `ripcord migrations
    // rules`, which does not exist.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("m.sql"),
        "-- ripcord:allow no-such-rule because testing\nSELECT 1;\n",
    )
    .unwrap();
    let out = ripcord(dir.path())
        .args(["--json", "migrations", "check", "m.sql"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let findings = v["files"][0]["upgrade"]["findings"].as_array().unwrap();
    let fix = findings
        .iter()
        .find(|f| f["rule"] == "suppression-unknown-rule")
        .and_then(|f| f["fix"].as_str())
        .expect("a suppression-unknown-rule finding")
        .to_string();
    // Every `ripcord ...` in backquotes: its subcommand words answer --help.
    let commands: Vec<&str> = fix
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|c| c.starts_with("ripcord "))
        .collect();
    assert!(!commands.is_empty(), "{fix}");
    for command in commands {
        let words: Vec<&str> = command
            .split_whitespace()
            .skip(1)
            .take_while(|w| !w.starts_with('-') && w.chars().all(|c| c.is_ascii_lowercase()))
            .collect();
        let out = ripcord(dir.path())
            .args(&words)
            .arg("--help")
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "`{command}` from the fix text: {}",
            text(&out.stderr)
        );
    }
    // What the fix promises: an unknown rule given to --disable lists every rule id.
    let out = ripcord(dir.path())
        .args(["migrations", "check", "m.sql", "--disable", "no-such-rule"])
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("drop-column") && stderr.contains("suppression-unknown-rule"),
        "{stderr}"
    );
}

/// A project whose ripcord.toml sets the checker up: one SQL migration that drops a
/// column and sets a lock_timeout above the limit, and no statement_timeout.
fn project(settings: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("db/migrations");
    std::fs::create_dir_all(&m).unwrap();
    std::fs::write(
        m.join("1_drop.up.sql"),
        "SET lock_timeout = '10s';\nALTER TABLE users DROP COLUMN legacy;\n",
    )
    .unwrap();
    std::fs::write(
        m.join("1_drop.down.sql"),
        "ALTER TABLE users ADD COLUMN legacy text;\n",
    )
    .unwrap();
    // A .py file that is no Alembic revision: `format = "sql"` leaves it out.
    std::fs::write(m.join("helpers.py"), "def helper():\n    pass\n").unwrap();
    std::fs::write(
        dir.path().join("ripcord.toml"),
        format!(
            "[service.web]\nlisten = \"127.0.0.1:8080\"\nslots = {{ blue = 8081, green = 8082 }}\n\n[service.web.migrations]\ndir = \"db/migrations\"\nhead_command = [\"cat\", \"head\"]\n{settings}"
        ),
    )
    .unwrap();
    dir
}

#[test]
fn settings_come_from_ripcord_toml_and_flags_override_them() {
    let dir = project(
        "format = \"sql\"\nlock_timeout = \"5s\"\nstatement_timeout = \"required\"\nseverity = { \"drop-column\" = \"warning\" }\n",
    );
    // The directory, the format, the timeouts and the severity all from the config.
    let out = ripcord(dir.path())
        .args(["migrations", "check", "--service", "web"])
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("1_drop.up.sql:1: warning timeout-above-limit"),
        "{stdout}"
    );
    assert!(
        stdout.contains("1_drop.up.sql:2: warning drop-column"),
        "{stdout}"
    );
    assert!(
        stdout.contains("1_drop.up.sql:2: warning missing-statement-timeout"),
        "{stdout}"
    );
    assert!(!stdout.contains("helpers.py"), "{stdout}");

    // Flags win: the severity back to error (exit 1), statement_timeout unchecked.
    let out = ripcord(dir.path())
        .args([
            "migrations",
            "check",
            "--service",
            "web",
            "--severity",
            "drop-column=error",
            "--statement-timeout",
            "off",
            "--lock-timeout",
            "required",
        ])
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("1_drop.up.sql:2: error drop-column"),
        "{stdout}"
    );
    assert!(!stdout.contains("missing-statement-timeout"), "{stdout}");
    assert!(!stdout.contains("timeout-above-limit"), "{stdout}");

    // A bad flag value is a usage error naming the flag.
    let out = ripcord(dir.path())
        .args([
            "migrations",
            "check",
            "--service",
            "web",
            "--lock-timeout",
            "soon",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--lock-timeout \"soon\""),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_bad_migrations_setting_is_a_config_error_with_its_line() {
    let dir = project("disable = [\"no-such-rule\"]\n");
    let out = ripcord(dir.path())
        .args(["migrations", "check", "--service", "web"])
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "ripcord.toml:8: service.web.migrations.disable[0]: unknown rule `no-such-rule`"
        ),
        "{stderr}"
    );
    // Without --service the config is not read: plain paths still work.
    let out = ripcord(dir.path())
        .args([
            "migrations",
            "check",
            "db/migrations",
            "--migration-format",
            "sql",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
}
