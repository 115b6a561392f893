//! `ripcord drill` against a real watcher and real demo-app processes: a drill under
//! live load through the proxy (no request lost, back on the current release, recorded;
//! `--dry-run` before and after touches nothing), and a drill whose way back fails (the
//! previous release cannot start, or starts and fails verification) restoring the current
//! release with exit 1; and one whose current release fails verification at the end (exit 4,
//! still on it).

mod common;

use std::time::Duration;

use common::*;

fn events(p: &Project) -> usize {
    p.json(&["events", "web", "--limit", "1000"])
        .as_array()
        .map_or(0, Vec::len)
}

fn release_status(p: &Project, version: &str) -> String {
    p.json(&["releases", "web"])
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["version"] == version)
        .unwrap_or_else(|| panic!("no release {version}"))["status"]
        .as_str()
        .unwrap()
        .to_string()
}

fn drill_json(p: &Project, extra: &[&str]) -> (Option<i32>, serde_json::Value, String) {
    let mut args = vec!["--json", "drill", "web"];
    args.extend_from_slice(extra);
    let out = p.run(&args);
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "drill: stdout is not JSON ({e}): {}\nstderr: {}\nwatcher: {}",
            stdout(&out),
            stderr(&out),
            p.watcher_log()
        )
    });
    (out.status.code(), v, stderr(&out))
}

#[test]
fn a_drill_under_load_goes_back_and_forward_within_budget_and_loses_no_request() {
    let dashboard = free_port();
    let mut p = Project::new(
        r#"drill_budget = "30s""#,
        &format!("[watch]\ndashboard_listen = \"127.0.0.1:{dashboard}\""),
    );
    p.start_watcher();
    assert_ok(&p.deploy("v1", &[]), "deploy v1");
    assert_ok(&p.deploy("v2", &[]), "deploy v2");

    // --dry-run: the plan, and nothing touched (no event, no drill, same traffic).
    let before = events(&p);
    let (code, plan, err) = drill_json(&p, &["--dry-run"]);
    assert_eq!(code, Some(0), "{plan:#}\n{err}");
    assert_eq!(plan["dry_run"], true, "{plan:#}");
    assert_eq!(plan["can_run"], true, "{plan:#}");
    assert_eq!(plan["current"]["version"], "v2", "{plan:#}");
    assert_eq!(plan["previous"]["version"], "v1", "{plan:#}");
    assert_eq!(plan["budget_ms"], 30_000, "{plan:#}");
    assert_eq!(plan["last_drill"], serde_json::Value::Null, "{plan:#}");
    assert_eq!(events(&p), before, "a dry run writes no event");
    assert_eq!(serving(&p), "v2");
    let text = p.run(&["drill", "web", "--dry-run"]);
    assert_ok(&text, "drill --dry-run");
    assert!(
        stdout(&text).contains("last drill: never"),
        "{}",
        stdout(&text)
    );

    let load = Load::start(p.url("/api/load"), 4, Duration::from_secs(60), 1_000_000);
    std::thread::sleep(Duration::from_millis(500));
    let (code, v, err) = drill_json(&p, &[]);
    std::thread::sleep(Duration::from_millis(500));
    let report = load.stop();
    assert_eq!(code, Some(0), "{v:#}\n{err}\n{}", p.watcher_log());
    let r = &v["result"];
    assert_eq!(r["outcome"], "passed", "{v:#}");
    assert_eq!(r["within_budget"], true, "{v:#}");
    assert_eq!(r["on_current"], true, "{v:#}");
    assert_eq!(r["previous"]["version"], "v1", "{v:#}");
    let steps: Vec<(String, String)> = r["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            assert_eq!(s["ok"], true, "{s}");
            assert!(s["ms"].is_u64(), "{s}");
            (
                s["leg"].as_str().unwrap().to_string(),
                s["step"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = ["back", "forward"]
        .iter()
        .flat_map(|leg| {
            ["start", "health_gate", "switch", "verify"]
                .iter()
                .map(move |s| (leg.to_string(), s.to_string()))
        })
        .collect();
    assert_eq!(steps, want, "{v:#}");
    eprintln!("drill steps: {:#}", r["steps"]);
    eprintln!("drill total_ms: {}", r["total_ms"]);

    assert!(
        report.failures.is_empty(),
        "no request lost during the drill: {:?}",
        &report.failures[..report.failures.len().min(10)]
    );
    // Traffic really went to v1 and back (the load may or may not catch v1 in its few
    // milliseconds: the ledger's switch events are the evidence).
    eprintln!("served during the drill: {:?}", report.ok_by_version);
    let switches: Vec<String> = p
        .json(&["events", "web", "--limit", "20"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "traffic_switched" && e["operation_id"] == r["operation"])
        .map(|e| e["message"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(switches.len(), 2, "{switches:?}");
    assert!(
        switches.iter().any(|m| m.contains("to v1"))
            && switches.iter().any(|m| m.contains("to v2")),
        "{switches:?}"
    );
    assert_eq!(serving(&p), "v2", "the drill ends on the current release");
    // A drill marks nothing bad and opens no incident.
    assert_eq!(release_status(&p, "v2"), "active");
    assert_eq!(release_status(&p, "v1"), "previous");
    let incidents = p.json(&["incident", "list"]);
    assert_eq!(
        incidents.as_array().map_or(0, Vec::len),
        0,
        "{incidents:#}\n{}",
        p.watcher_log()
    );

    let status = p.json(&["status", "web"]);
    assert_eq!(status["last_drill"]["outcome"], "passed", "{status:#}");
    assert_eq!(
        status["last_drill"]["total_ms"], r["total_ms"],
        "{status:#}"
    );
    assert_eq!(status["state"], "baking", "{status:#}");
    let text = stdout(&p.run(&["status", "web"]));
    assert!(text.contains("drill     passed at"), "{text}");
    let (code, body) = get(&format!("http://127.0.0.1:{dashboard}/api/services/web"));
    assert_eq!(code, 200, "{body}");
    let api: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(api["last_drill"]["outcome"], "passed", "{api:#}");
    assert_eq!(api["last_drill"]["within_budget"], true, "{api:#}");
    assert_eq!(api["last_drill"]["steps"], r["steps"], "{api:#}");
    let runbook = stdout(&p.run(&["runbook", "web"]));
    assert!(runbook.contains("- Last drill: passed at"), "{runbook}");
    let doctor = stdout(&p.run(&["doctor", "web"]));
    assert!(doctor.contains("✓ last drill: passed"), "{doctor}");

    // --dry-run after: the last drill's timings, still nothing touched.
    let before = events(&p);
    let (code, plan, err) = drill_json(&p, &["--dry-run"]);
    assert_eq!(code, Some(0), "{plan:#}\n{err}");
    assert_eq!(plan["last_drill"]["total_ms"], r["total_ms"], "{plan:#}");
    assert_eq!(plan["last_drill"]["steps"], r["steps"], "{plan:#}");
    assert_eq!(events(&p), before, "a dry run writes no event");

    p.stop_watcher();
}

#[test]
fn a_drill_whose_previous_release_cannot_start_or_verify_restores_the_current_one_and_exits_1() {
    let mut p = Project::new("", "");
    p.start_watcher();
    // v1 runs through sh so it can be broken later: with the marker file `broken` it
    // exits 3; with `misversion` it starts, healthy, but answers as another version (so
    // its verification fails).
    let marker = p.dir.path().join("broken");
    let misversion = p.dir.path().join("misversion");
    let script = format!(
        "test -e {} && exit 3; test -e {} && exec {BIN} demo-app --port {{port}} --version other; \
         exec {BIN} demo-app --port {{port}} --version {{version}}",
        marker.display(),
        misversion.display()
    );
    assert_ok(
        &p.run(&["deploy", "web", "v1", "--", "sh", "-c", &script]),
        "deploy v1",
    );
    assert_ok(&p.deploy("v2", &[]), "deploy v2");

    // The warm v1 dies and cannot start again: a real rollback would fail now.
    let status = p.json(&["status", "web"]);
    let pid = status["live"]["slots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["version"] == "v1")
        .and_then(|s| s["pid"].as_i64())
        .unwrap_or_else(|| panic!("v1 is not warm: {status:#}"));
    std::fs::write(&marker, "").unwrap();
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status();
    eventually("v1 exited", Duration::from_secs(10), || !pid_alive(pid));

    let load = Load::start(p.url("/api/load"), 2, Duration::from_secs(60), 1_000_000);
    let (code, v, err) = drill_json(&p, &[]);
    let report = load.stop();
    assert_eq!(code, Some(1), "{v:#}\n{err}\n{}", p.watcher_log());
    let r = &v["result"];
    assert_eq!(r["outcome"], "failed", "{v:#}");
    assert_eq!(r["on_current"], true, "{v:#}");
    let error = v["error"].as_str().unwrap_or_default();
    assert!(error.contains("never became healthy"), "{error}");
    assert!(
        error.contains("restored: v2 serves again and passed verification"),
        "{error}"
    );
    assert_eq!(r["steps"][0]["step"], "start", "{v:#}");
    assert_eq!(r["steps"][0]["ok"], false, "{v:#}");
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert_eq!(serving(&p), "v2", "the current release still serves");
    assert_eq!(release_status(&p, "v2"), "active");

    let status = p.json(&["status", "web"]);
    assert_eq!(status["last_drill"]["outcome"], "failed", "{status:#}");
    // The text says it too.
    let out = p.run(&["drill", "web"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("restored"), "{}", stderr(&out));
    assert_eq!(serving(&p), "v2");

    // v1 starts but fails its verification once it has traffic: traffic goes back to v2.
    std::fs::remove_file(&marker).unwrap();
    std::fs::write(&misversion, "").unwrap();
    let load = Load::start(p.url("/api/load"), 2, Duration::from_secs(60), 1_000_000);
    let (code, v, err) = drill_json(&p, &[]);
    let report = load.stop();
    assert_eq!(code, Some(1), "{v:#}\n{err}\n{}", p.watcher_log());
    let error = v["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("v1 (the previous release) failed verification"),
        "{error}"
    );
    assert!(error.contains("restored: v2 serves again"), "{error}");
    let verify = v["result"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["leg"] == "back" && s["step"] == "verify")
        .cloned();
    assert_eq!(verify.map(|s| s["ok"].clone()), Some(false.into()), "{v:#}");
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert_eq!(serving(&p), "v2", "the current release serves again");
    assert_eq!(release_status(&p, "v2"), "active");
    assert_eq!(
        release_status(&p, "v1"),
        "previous",
        "a drill marks nothing bad"
    );

    p.stop_watcher();
}

#[test]
fn a_drill_whose_current_release_fails_verification_at_the_end_exits_4_on_it() {
    // A third check fails for a version whose marker file exists: v1 passes on the way
    // back, v2 fails once traffic is on it again.
    let dir = tempfile::tempdir().unwrap();
    let fail = dir.path().join("fail-");
    let tail = format!(
        "[[service.web.verify]]\ncommand = [\"sh\", \"-c\", \"test ! -e {}{{version}}\"]",
        fail.display()
    );
    let mut p = Project::new("", &tail);
    p.start_watcher();
    assert_ok(&p.deploy("v1", &[]), "deploy v1");
    assert_ok(&p.deploy("v2", &[]), "deploy v2");
    std::fs::write(format!("{}v2", fail.display()), "").unwrap();

    let (code, v, err) = drill_json(&p, &[]);
    assert_eq!(code, Some(4), "{v:#}\n{err}\n{}", p.watcher_log());
    let r = &v["result"];
    assert_eq!(r["outcome"], "verify_failed", "{v:#}");
    assert_eq!(r["on_current"], true, "{v:#}");
    let last = r["steps"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (
            last["leg"].as_str(),
            last["step"].as_str(),
            last["ok"].as_bool()
        ),
        (Some("forward"), Some("verify"), Some(false)),
        "{v:#}"
    );
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("v2 (the current release) serves again but failed")),
        "{v:#}"
    );
    assert_eq!(serving(&p), "v2");
    assert_eq!(
        release_status(&p, "v2"),
        "active",
        "a drill marks nothing bad"
    );
    assert_eq!(
        p.json(&["status", "web"])["last_drill"]["outcome"],
        "verify_failed"
    );
    p.stop_watcher();
}
