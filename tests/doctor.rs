//! `ripcord doctor` on the embedded default (runtime process): what it checks, and its
//! exit code when a rollback would fail today.

mod common;

use common::{Project, assert_ok, stdout};

#[test]
fn doctor_says_whether_a_rollback_would_work() {
    let mut p = Project::new("", "");
    p.start_watcher();
    assert_ok(&p.deploy("v1", &[]), "deploy v1");
    // One release only: nothing to roll back to.
    let out = p.run(&["doctor", "web"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("✗ previous good release"),
        "{}",
        stdout(&out)
    );

    assert_ok(&p.deploy("v2", &[]), "deploy v2");
    let out = p.run(&["doctor", "web"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let text = stdout(&out);
    for line in [
        "✓ not frozen",
        "✓ previous good release: v1",
        "✓ program",
        "✓ slot blue port",
        "✓ slot green port",
        "✓ health URL",
        "a rollback of web would work today",
    ] {
        assert!(text.contains(line), "no `{line}` in:\n{text}");
    }
    let v = p.json(&["doctor", "web"]);
    assert_eq!(v["rollback_ready"], true, "{v}");

    // Frozen: a rollback would be refused, and doctor says so.
    assert_ok(&p.run(&["freeze", "web", "--reason", "test"]), "freeze");
    let out = p.run(&["doctor", "web"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stdout(&out).contains("✗ not frozen"), "{}", stdout(&out));
}
