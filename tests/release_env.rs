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
