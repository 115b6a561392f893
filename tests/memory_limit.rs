//! `memory_limit_mb` for process releases is a kernel limit: each release runs in a
//! cgroup of its own under the watcher's, and a release that outgrows it is killed by
//! the kernel and reported as an OOM kill (not a crash), which the guard rolls back.
//! CI runs as root on a host with a writable memory cgroup (v1 here; v2 where the
//! memory controller can be delegated): the test requires one and fails without.

mod common;

use std::time::Duration;

use common::*;

fn event_messages(p: &Project, kind: &str) -> Vec<String> {
    p.json(&["events", "web", "--limit", "1000"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == kind)
        .map(|e| e["message"].as_str().unwrap_or("").to_string())
        .collect()
}

#[test]
fn a_release_over_its_memory_limit_is_killed_by_the_kernel_and_rolled_back_as_an_oom_kill() {
    let mut p = Project::new("memory_limit_mb = 48\nbake = \"300s\"", "");
    p.start_watcher();
    assert_ok(&p.deploy("v1", &[]), "deploy v1");
    let limits = event_messages(&p, "memory_limit");
    assert_eq!(limits.len(), 1, "{limits:?}");
    assert!(
        limits[0].contains("48 MiB, enforced by the kernel (cgroup"),
        "no kernel memory limit on this host: {limits:?}"
    );
    let pid = p.json(&["status", "web"])["live"]["slots"][0]["pid"]
        .as_i64()
        .unwrap();
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(
        cgroup.contains("ripcord-web-"),
        "v1 does not run in its own cgroup: {cgroup}"
    );

    // v2 leaks 100 MiB a second from 2 s after it starts: over 48 MiB within a second
    // (the watchdog, sampling every second, would often see it first without a cgroup;
    // under one, its RSS never passes the limit).
    assert_ok(
        &p.deploy("v2", &["--leak-mb-per-sec", "100", "--after-secs", "2"]),
        "deploy v2",
    );
    // Until the guard acts, v2's death answers 502s: only v1 answering ends the wait.
    eventually("the guard rolls v2 back", Duration::from_secs(30), || {
        let (status, body) = get(&p.url("/health"));
        status == 200 && body.contains("\"v1\"")
    });
    let incidents = p.json(&["incident", "list", "--service", "web"]);
    let first = &incidents[0];
    // An OOM kill, not a crash: the kernel's SIGKILL in the cgroup is read as one.
    assert_eq!(first["rule"], "oom_kills", "{incidents:#}");
    assert!(
        first["summary"].as_str().unwrap().contains("an OOM kill"),
        "{incidents:#}"
    );
    // The kernel killed it, not ripcord's watchdog.
    let watchdog = event_messages(&p, "oom_killed");
    assert!(
        watchdog
            .iter()
            .all(|m| !m.contains("exceeded memory_limit_mb")),
        "the RSS watchdog killed it, not the kernel: {watchdog:?}"
    );
    p.stop_watcher();
    // A stopped release's cgroup is removed with it.
    let line = cgroup.lines().find(|l| l.contains("ripcord-web-")).unwrap();
    let path = line.splitn(3, ':').nth(2).unwrap().trim_start_matches('/');
    let root = if line.split(':').nth(1) == Some("") {
        "/sys/fs/cgroup"
    } else {
        "/sys/fs/cgroup/memory"
    };
    let dir = std::path::Path::new(root).join(path);
    eventually("v1's cgroup is removed", Duration::from_secs(5), || {
        !dir.exists()
    });
}
