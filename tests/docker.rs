//! Runtime `docker` end to end on the real engine: images `FROM scratch` of the static
//! demo app, blue-green containers behind the built-in proxy, image replace (router
//! `none`), the env snapshot, OOM kills and crash loops seen through engine events,
//! `ripcord doctor`, and `ripcord drill` under load (warm and cold). Every test removes
//! the containers and images it made, also when it fails. Needs a Docker engine: fails,
//! never skips, without one.

mod common;
mod docker_fixture;

use std::path::PathBuf;
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use common::{BIN, assert_ok, eventually, free_port, get, stderr, stdout};
use docker_fixture::{Cleanup, Swarm, build_image, containers_of, engine, rt, unique};

/// A project whose one service runs containers.
struct DockerProject {
    dir: tempfile::TempDir,
    svc: String,
    /// Where users reach the service (the proxy, or the published container).
    entry: u16,
    watcher: Option<Child>,
    // Last: containers go after the watcher is stopped.
    cleanup: Cleanup,
}

impl DockerProject {
    /// `router` is "proxy" (blue-green) or "none" (image replace); `extra` goes inside
    /// `[service.NAME]`, `docker_extra` inside `[service.NAME.docker]`.
    fn new(router: &str, repo: &str, extra: &str, docker_extra: &str) -> DockerProject {
        DockerProject::with_runtime("docker", router, repo, extra, docker_extra)
    }

    fn with_runtime(
        runtime: &str,
        router: &str,
        repo: &str,
        extra: &str,
        docker_extra: &str,
    ) -> DockerProject {
        let dir = tempfile::tempdir().unwrap();
        let svc = unique("d");
        let entry = free_port();
        let (blue, green) = (free_port(), free_port());
        let routing = match router {
            "proxy" if runtime == "swarm" => {
                format!("router = \"proxy\"\nlisten = \"127.0.0.1:{entry}\"")
            }
            "proxy" => format!(
                "router = \"proxy\"\nlisten = \"127.0.0.1:{entry}\"\nslots = {{ blue = {blue}, green = {green} }}"
            ),
            _ => "router = \"none\"".to_string(),
        };
        let publish = if router == "none" {
            format!("publish = \"127.0.0.1:{entry}\"")
        } else {
            String::new()
        };
        let config = format!(
            r#"[service.{svc}]
runtime = "{runtime}"
{routing}
start_timeout_secs = 20
stop_timeout_secs = 5
health_path = "/health"
{extra}

[service.{svc}.docker]
image = "{repo}"
env_file = "app.env"
container_port = 8080
{publish}
{docker_extra}

[service.{svc}.triggers]
error_rate = {{ above = 0.10, window_secs = 30 }}
health = {{ consecutive_failures = 3, interval_secs = 1, timeout_secs = 1 }}

[[service.{svc}.verify]]
name = "the API answers with the expected version"
http = "http://127.0.0.1:{entry}/api/status"
json_field = "version"
json_equals = "{{version}}"
"#
        );
        std::fs::write(dir.path().join("ripcord.toml"), config).unwrap();
        let mut cleanup = Cleanup::new();
        cleanup.services.push(svc.clone());
        DockerProject {
            dir,
            svc,
            entry,
            watcher: None,
            cleanup,
        }
    }

    fn env_file(&self, text: &str) {
        std::fs::write(self.dir.path().join("app.env"), text).unwrap();
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--config")
            .arg(self.dir.path().join("ripcord.toml"))
            .arg("--state-dir")
            .arg(self.state_dir())
            .args(args)
            .current_dir(self.dir.path())
            .env_remove("RIPCORD_CONFIG")
            .env_remove("RIPCORD_STATE_DIR");
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.run(&all);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{args:?}: not JSON ({e}): {} {}",
                stdout(&out),
                stderr(&out)
            )
        })
    }

    fn start_watcher(&mut self) {
        let child = common::start_watch(
            self.cmd(&["watch"]),
            &self.dir.path().join("watcher.log"),
            || self.run(&["--json", "status", &self.svc]),
        );
        self.watcher = Some(child);
    }

    fn watcher_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("watcher.log")).unwrap_or_default()
    }

    fn stop_watcher(&mut self) {
        if let Some(mut child) = self.watcher.take() {
            common::stop_quietly(&mut child, Duration::from_secs(30));
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.entry)
    }

    /// The version users get.
    fn serving(&self) -> String {
        let (status, body) = get(&self.url("/api/status"));
        if status != 200 {
            return format!("status {status}");
        }
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        v["version"].as_str().unwrap_or("?").to_string()
    }

    fn release(&self, version: &str) -> serde_json::Value {
        let list = self.json(&["releases", &self.svc]);
        let releases = list
            .as_array()
            .cloned()
            .or_else(|| list["releases"].as_array().cloned())
            .unwrap_or_default();
        releases
            .into_iter()
            .find(|r| r["version"] == version)
            .unwrap_or_else(|| panic!("no release {version} in {list}"))
    }
}

impl Drop for DockerProject {
    fn drop(&mut self) {
        self.stop_watcher();
    }
}

fn inspect(id: &str) -> serde_json::Value {
    let out = Command::new("docker")
        .args(["inspect", id])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v[0].clone()
}

/// Runs with the engine, the images `repo:v1` and `repo:v2` (v2 with `v2_args` added),
/// and a project; images and containers are removed afterwards.
fn images(p: &mut DockerProject, repo: &str, v2_args: &[&str]) -> (String, String) {
    let rt = rt();
    let engine = engine(&rt);
    let base = ["--listen", "0.0.0.0:8080"];
    let v1 = build_image(&rt, &engine, &mut p.cleanup, &format!("{repo}:v1"), &base);
    let mut args = base.to_vec();
    args.extend_from_slice(v2_args);
    let v2 = build_image(&rt, &engine, &mut p.cleanup, &format!("{repo}:v2"), &args);
    assert_ne!(v1, v2, "two releases must be two images");
    (v1, v2)
}

#[test]
fn blue_green_rollback_runs_the_old_image_with_its_own_env_snapshot() {
    let repo = unique("ripcord-test-bg");
    // bake_secs = 1: the previous container stops soon after a deploy, so the rollback
    // below is a cold start from the image and the snapshot, not a traffic switch.
    let mut p = DockerProject::new(
        "proxy",
        &repo,
        "bake_secs = 1\nenv = { FROM_TABLE = \"table-a\" }",
        "memory_limit_mb = 64",
    );
    let (v1_id, v2_id) = images(&mut p, &repo, &[]);
    p.env_file("# v1's config\nDEMO_VERSION=v1\nAPI_TOKEN=s3cret-one\n");
    p.start_watcher();

    let out = p.run(&["deploy", &p.svc, "v1"]);
    assert_ok(&out, "deploy v1");
    assert_eq!(p.serving(), "v1");
    p.env_file("DEMO_VERSION=v2\nAPI_TOKEN=s3cret-two\n");
    let out = p.run(&["deploy", &p.svc, "v2"]);
    assert_ok(&out, "deploy v2");
    assert!(
        !format!("{}{}", stdout(&out), stderr(&out)).contains("s3cret"),
        "deploy printed a secret"
    );
    assert_eq!(p.serving(), "v2");

    // The ledger pinned each release to its image id, and names (never values) of its env.
    let r1 = p.release("v1");
    let r2 = p.release("v2");
    assert_eq!(r1["spec"]["image"]["id"], v1_id.as_str(), "{r1}");
    assert_eq!(r2["spec"]["image"]["id"], v2_id.as_str(), "{r2}");
    assert_eq!(
        r1["spec"]["image"]["env_keys"],
        serde_json::json!(["FROM_TABLE", "DEMO_VERSION", "API_TOKEN"])
    );
    let snapshot = PathBuf::from(r1["spec"]["image"]["env_snapshot"].as_str().unwrap());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&snapshot).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the env snapshot is owner-only");
    for args in [
        vec!["--json", "releases", p.svc.as_str()],
        vec!["--json", "status", p.svc.as_str()],
        vec!["status", p.svc.as_str()],
        vec!["events", p.svc.as_str()],
        vec!["--json", "events", p.svc.as_str()],
        vec!["doctor", p.svc.as_str()],
    ] {
        let out = p.run(&args);
        let all = format!("{}{}", stdout(&out), stderr(&out));
        assert!(!all.contains("s3cret"), "{args:?} printed a secret: {all}");
    }

    let status = stdout(&p.run(&["status", &p.svc]));
    assert!(
        status.contains(&format!("container {}-", p.svc)) && status.contains(" v2 ("),
        "{status}"
    );
    // The container: ours by label, published on loopback only, with an init process.
    let ids = containers_of(&p.svc);
    let running: Vec<serde_json::Value> = ids.iter().map(|i| inspect(i)).collect();
    let c2 = running
        .iter()
        .find(|c| c["Config"]["Labels"]["ripcord.version"] == "v2")
        .expect("v2's container");
    assert_eq!(c2["Config"]["Labels"]["ripcord.service"], p.svc.as_str());
    assert_eq!(c2["HostConfig"]["Init"], true);
    let bindings = &c2["HostConfig"]["PortBindings"]["8080/tcp"];
    assert_eq!(bindings[0]["HostIp"], "127.0.0.1", "{bindings}");

    // After the bake, v1's container is gone (once v2's first requests cleared it: the
    // bake ends on evidence); today's env file says something else.
    let clean = common::Load::start(p.url("/api/load"), 2, Duration::from_secs(20), 150);
    eventually(
        "v1's container stops after the bake",
        Duration::from_secs(20),
        || containers_of(&p.svc).len() == 1,
    );
    clean.stop();
    p.env_file("DEMO_VERSION=v3-todays-env\nAPI_TOKEN=changed\n");
    // Today's `[service.NAME.env]` changes too (a watcher reads its config at start).
    let config = p.dir.path().join("ripcord.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("\"table-a\"", "\"table-b\", ONLY_TODAY = \"1\""),
    )
    .unwrap();
    p.stop_watcher();
    p.start_watcher();
    let out = p.run(&["--json", "rollback", &p.svc, "--reason", "test"]);
    assert_ok(&out, "rollback");
    assert!(
        !format!("{}{}", stdout(&out), stderr(&out)).contains("s3cret"),
        "rollback printed a secret"
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["result"]["warm"], false, "a cold rollback: {v}");
    // v1 runs v1's image with v1's snapshot: it says v1, not today's v3-todays-env.
    assert_eq!(p.serving(), "v1");
    let c1 = containers_of(&p.svc)
        .iter()
        .map(|i| inspect(i))
        .find(|c| c["Config"]["Labels"]["ripcord.version"] == "v1")
        .expect("v1 runs again");
    assert_eq!(c1["Image"], v1_id.as_str());
    let env: Vec<String> = serde_json::from_value(c1["Config"]["Env"].clone()).unwrap();
    assert!(env.contains(&"API_TOKEN=s3cret-one".to_string()), "{env:?}");
    assert!(env.contains(&"FROM_TABLE=table-a".to_string()), "{env:?}");
    assert!(!env.contains(&"ONLY_TODAY=1".to_string()), "{env:?}");

    // A watcher restart adopts the running container instead of restarting it.
    let before = containers_of(&p.svc);
    p.stop_watcher();
    assert_eq!(
        containers_of(&p.svc),
        before,
        "containers outlive the watcher"
    );
    p.start_watcher();
    assert_eq!(p.serving(), "v1");
    assert_eq!(containers_of(&p.svc), before, "adopted, not restarted");
}

/// Two projects (two state dirs) with a service of one name on one engine: a watcher
/// killed and started again in one (its reconcile removes the service's containers no
/// slot records) adopts its own container and leaves the other project's alone.
#[test]
fn two_projects_with_a_service_of_one_name_never_take_each_others_containers() {
    let repo = unique("ripcord-test-two");
    let mut a = DockerProject::new("proxy", &repo, "bake_secs = 300", "");
    images(&mut a, &repo, &[]);
    let other_name = unique("other");
    let mut b = DockerProject::new(
        "proxy",
        &repo,
        "bake_secs = 300",
        &format!("name = \"{other_name}\""),
    );
    // b's service takes a's name; its containers keep a name of their own.
    let config = b.dir.path().join("ripcord.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace(&b.svc, &a.svc)).unwrap();
    b.svc = a.svc.clone();
    a.env_file("DEMO_VERSION=v1\n");
    b.env_file("DEMO_VERSION=v1\n");
    a.start_watcher();
    b.start_watcher();
    assert_ok(&a.run(&["deploy", &a.svc, "v1"]), "deploy v1 in a");
    assert_ok(&b.run(&["deploy", &b.svc, "v1"]), "deploy v1 in b");
    let container = |p: &DockerProject| {
        let s = p.json(&["status", &p.svc]);
        s["live"]["slots"][0]["container"]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("no container in {s}"))
            .to_string()
    };
    let (a_id, b_id) = (container(&a), container(&b));
    assert_ne!(a_id, b_id);
    assert_eq!(
        inspect(&b_id)["Config"]["Labels"]["ripcord.state_dir"],
        b.state_dir().canonicalize().unwrap().display().to_string()
    );

    // a's watcher is killed and started again: it adopts its container and sweeps.
    let mut w = a.watcher.take().unwrap();
    w.kill().unwrap();
    w.wait().unwrap();
    a.start_watcher();
    assert_eq!(a.serving(), "v1");
    assert_eq!(container(&a), a_id, "a's container was adopted");
    assert_eq!(
        inspect(&b_id)["State"]["Running"],
        true,
        "b's container was taken: {}",
        a.watcher_log()
    );
    assert_eq!(b.serving(), "v1");
    a.stop_watcher();
    b.stop_watcher();
}

#[test]
fn image_replace_keeps_the_running_container_when_the_new_one_fails() {
    let repo = unique("ripcord-test-ir");
    let mut p = DockerProject::new("none", &repo, "", "");
    let (_v1, v2_id) = images(&mut p, &repo, &[]);
    let rt = rt();
    let engine = engine(&rt);
    build_image(
        &rt,
        &engine,
        &mut p.cleanup,
        &format!("{repo}:v3"),
        &["--listen", "0.0.0.0:8080", "--exit-at-start", "3"],
    );
    p.env_file("DEMO_VERSION=v1\n");
    p.start_watcher();
    assert_ok(&p.run(&["deploy", &p.svc, "v1"]), "deploy v1");
    assert_eq!(p.serving(), "v1");
    p.env_file("DEMO_VERSION=v2-by-ref\n");
    // `--image REF` deploys any reference; the ledger keeps the id it resolved to.
    let v2_ref = format!("{repo}:v2");
    let started = Instant::now();
    let out = p.run(&["--json", "deploy", &p.svc, "v2-by-ref", "--image", &v2_ref]);
    let deploy_ms = started.elapsed().as_millis() as u64;
    assert_ok(&out, "deploy v2 by reference");
    assert_eq!(
        p.release("v2-by-ref")["spec"]["image"]["id"],
        v2_id.as_str(),
        "the release is pinned to the image the reference named"
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let downtime = v["result"]["downtime_ms"]
        .as_u64()
        .expect("image replace reports its downtime");
    // A replace stops v1 before v2 answers, so there is a gap, and it lies inside the
    // deploy command's own run: a zero or a figure longer than the deploy is a wrong
    // measurement. How long the gap is is measured by benches/docker_rollback.rs.
    assert!(
        0 < downtime && downtime <= deploy_ms,
        "{deploy_ms} ms deploy: {v}"
    );
    // The ledger's `downtime` event (what the bench reads) records the same figure.
    let events = p.json(&["events", &p.svc]);
    let said = format!("answered nothing for {downtime} ms");
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "downtime" && e["message"].as_str().unwrap().contains(&said)),
        "no downtime event saying {said:?}: {events:#}"
    );
    assert_eq!(p.serving(), "v2-by-ref");
    let ids = containers_of(&p.svc);
    assert_eq!(ids.len(), 1, "one container after a replace");
    let serving_id = ids[0].clone();
    assert_eq!(inspect(&serving_id)["Name"], format!("/{}", p.svc));

    // v3 exits at start: the pre-flight catches it and v2's container is untouched.
    p.env_file("DEMO_VERSION=v3\n");
    let out = p.run(&["deploy", &p.svc, "v3"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("was not touched"), "{}", stderr(&out));
    assert_eq!(containers_of(&p.svc), vec![serving_id.clone()]);
    assert_eq!(inspect(&serving_id)["State"]["Running"], true);
    assert_eq!(p.serving(), "v2-by-ref");

    // doctor: ready now; after v1's image is gone, a rollback would fail, and says so.
    let out = p.run(&["doctor", &p.svc]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let rm = Command::new("docker")
        .args(["rmi", "-f", &format!("{repo}:v1")])
        .output()
        .unwrap();
    assert!(
        rm.status.success(),
        "{}",
        String::from_utf8_lossy(&rm.stderr)
    );
    let out = p.run(&["doctor", &p.svc]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stdout(&out).contains("✗ image present"), "{}", stdout(&out));
    let out = p.run(&["rollback", &p.svc, "--reason", "test"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(containers_of(&p.svc), vec![serving_id.clone()]);
    assert_eq!(p.serving(), "v2-by-ref");
}

/// Deploys v1 then v2 (which misbehaves a few seconds after it starts) and waits for
/// the guard to put v1 back; returns the incident JSON.
fn guard_rolls_back(v2_args: &[&str], docker_extra: &str, rule: &str) {
    guard_rolls_back_via("proxy", v2_args, docker_extra, rule);
}

fn guard_rolls_back_via(router: &str, v2_args: &[&str], docker_extra: &str, rule: &str) {
    let repo = unique("ripcord-test-g");
    let mut p = DockerProject::new(router, &repo, "bake_secs = 300", docker_extra);
    images(&mut p, &repo, v2_args);
    p.env_file("DEMO_VERSION=v1\n");
    p.start_watcher();
    assert_ok(&p.run(&["deploy", &p.svc, "v1"]), "deploy v1");
    p.env_file("DEMO_VERSION=v2\n");
    assert_ok(&p.run(&["deploy", &p.svc, "v2"]), "deploy v2");
    eventually(
        &format!("the guard rolls v2 back ({rule})"),
        Duration::from_secs(40),
        || p.release("v2")["status"] == "bad" && p.serving() == "v1",
    );
    let incidents = p.json(&["incident", "list", "--service", &p.svc]);
    let text = incidents.to_string();
    assert!(
        text.contains(rule),
        "incident names {rule}: {text}\n{}",
        p.watcher_log()
    );
}

#[test]
fn an_oom_killed_container_is_rolled_back() {
    guard_rolls_back(
        &["--leak-mb-per-sec", "40", "--after-secs", "3"],
        "memory_limit_mb = 24",
        "oom",
    );
}

#[test]
fn a_crash_looping_container_is_rolled_back() {
    guard_rolls_back(
        &["--crash", "--after-secs", "3"],
        "restart = \"on-failure\"",
        "crash",
    );
}

#[test]
fn a_swarm_service_is_rolled_back_on_5xx_and_verified_by_ripcord() {
    let rt = rt();
    let engine = engine(&rt);
    let _swarm = Swarm::join(&rt, &engine);
    let repo = unique("ripcord-test-sw");
    // The tasks run in the host's network and bind a loopback port themselves: nothing
    // is published beyond 127.0.0.1. The built-in proxy in front sees every request.
    let app_port = free_port();
    let mut p = DockerProject::with_runtime(
        "swarm",
        "proxy",
        &repo,
        "bake_secs = 300",
        &format!("publish = \"127.0.0.1:{app_port}\"\nnetwork = \"host\""),
    );
    p.cleanup.swarm_services.push(p.svc.clone());
    let v1 = build_image(&rt, &engine, &mut p.cleanup, &format!("{repo}:v1"), &[]);
    let v2 = build_image(
        &rt,
        &engine,
        &mut p.cleanup,
        &format!("{repo}:v2"),
        &["--error-ratio", "1", "--after-secs", "6"],
    );
    assert_ne!(v1, v2);
    p.env_file(&format!(
        "DEMO_LISTEN=127.0.0.1:{app_port}\nDEMO_VERSION=v1\n"
    ));
    p.start_watcher();
    let out = p.run(&["deploy", &p.svc, "v1"]);
    assert!(
        out.status.success(),
        "deploy v1: {}\n{}",
        stderr(&out),
        p.watcher_log()
    );
    assert_eq!(p.serving(), "v1");
    p.env_file(&format!(
        "DEMO_LISTEN=127.0.0.1:{app_port}\nDEMO_VERSION=v2\n"
    ));
    assert_ok(
        &p.run(&["deploy", &p.svc, "v2"]),
        "deploy v2 (a service update)",
    );
    assert_eq!(p.serving(), "v2");
    let image = || {
        let out = Command::new("docker")
            .args([
                "service",
                "inspect",
                &p.svc,
                "-f",
                "{{.Spec.TaskTemplate.ContainerSpec.Image}}",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(image(), v2);
    // Every API request fails six seconds after v2 started: the 5xx trigger fires, the
    // engine rolls the service back, and ripcord verifies v1 itself.
    let load = common::Load::start(p.url("/api/load"), 4, Duration::from_secs(60), 100_000);
    eventually(
        "the guard rolls the swarm service back",
        Duration::from_secs(50),
        || p.release("v2")["status"] == "bad",
    );
    let report = load.stop();
    assert_eq!(image(), v1, "the service runs v1's image again");
    assert_eq!(p.serving(), "v1");
    assert!(
        report.ok_by_version.get("v1").copied().unwrap_or(0) > 0,
        "{:?}",
        report.ok_by_version
    );
    let incidents = p
        .json(&["incident", "list", "--service", &p.svc])
        .to_string();
    assert!(incidents.contains("error_rate"), "{incidents}");
    assert!(
        incidents.contains("resolved"),
        "{incidents}\n{}",
        p.watcher_log()
    );
}

#[test]
fn an_image_replace_service_that_crashes_is_replaced_back_by_the_guard() {
    guard_rolls_back_via("none", &["--crash", "--after-secs", "3"], "", "crash");
}

/// `ripcord --json drill NAME`: exit code, the JSON, stderr.
fn drill(p: &DockerProject) -> (Option<i32>, serde_json::Value, String) {
    let out = p.run(&["--json", "drill", &p.svc]);
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

/// How a drill moves between releases.
#[derive(Clone, Copy, PartialEq)]
enum Drill {
    /// Two slots behind the built-in proxy: a switch, no request may fail.
    TwoSlots,
    /// One address (router `none`, runtime `swarm`): each leg puts its release in place.
    /// Behind the built-in proxy (swarm) new requests wait for the new task, so none
    /// may fail either; without it (router `none`) users meet the replace's gap.
    InPlace,
}

/// One drill under live load; asserts it passed within budget, switched to v1 and back,
/// ends on v2, marked nothing bad and opened no incident (also while the load goes on
/// for `after` more), and, behind the built-in proxy, lost no request. Returns the
/// result and the load's report.
fn drill_under_load(
    p: &DockerProject,
    what: &str,
    how: Drill,
    after: Duration,
) -> (serde_json::Value, common::LoadReport) {
    let load = common::Load::start(p.url("/api/load"), 4, Duration::from_secs(90), 1_000_000);
    std::thread::sleep(Duration::from_millis(500));
    let (code, v, err) = drill(p);
    std::thread::sleep(Duration::from_millis(500) + after);
    let report = load.stop();
    assert_eq!(code, Some(0), "{what}: {v:#}\n{err}\n{}", p.watcher_log());
    let r = v["result"].clone();
    eprintln!(
        "{what} drill: total_ms {} steps {}",
        r["total_ms"], r["steps"]
    );
    eprintln!("{what} drill: served during it {:?}", report.ok_by_version);
    assert_eq!(r["outcome"], "passed", "{what}: {v:#}");
    assert_eq!(r["within_budget"], true, "{what}: {v:#}");
    assert_eq!(r["on_current"], true, "{what}: {v:#}");
    assert_eq!(r["previous"]["version"], "v1", "{what}: {v:#}");
    assert_eq!(r["current"]["version"], "v2", "{what}: {v:#}");
    let steps: Vec<String> = r["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            assert_eq!(s["ok"], true, "{what}: {s}");
            format!(
                "{} {}",
                s["leg"].as_str().unwrap(),
                s["step"].as_str().unwrap()
            )
        })
        .collect();
    let leg_steps: &[&str] = match how {
        Drill::TwoSlots => &["start", "health_gate", "switch", "verify"],
        Drill::InPlace => &["put_in_place", "switch", "verify"],
    };
    let want: Vec<String> = ["back", "forward"]
        .iter()
        .flat_map(|leg| leg_steps.iter().map(move |s| format!("{leg} {s}")))
        .collect();
    assert_eq!(steps, want, "{what}: {v:#}");
    assert_eq!(r["in_place"], (how == Drill::InPlace), "{what}: {v:#}");
    if how == Drill::TwoSlots || r["proxied"].is_object() {
        assert!(
            report.failures.is_empty(),
            "{what}: no request fails during the drill ({} of {:?} did): {:?}",
            report.failures.len(),
            report.ok_by_version,
            &report.failures[..report.failures.len().min(10)]
        );
    }
    // The proxy's own count of what users lost is the clients' count.
    if let Some(proxied) = r["proxied"].as_object() {
        assert_eq!(
            proxied["failed"].as_u64(),
            Some(report.failures.len() as u64),
            "{what}: {v:#}\nclients saw: {:?}",
            &report.failures[..report.failures.len().min(10)]
        );
        assert!(
            proxied["requests"].as_u64().unwrap() > 0,
            "{what}: the proxy counted the drill's requests: {v:#}"
        );
    }
    assert!(
        report.ok_by_version.values().sum::<u64>() > 0,
        "{what}: the load ran"
    );
    // Traffic went to v1 and back: the ledger's switch events of this drill's operation.
    let switches: Vec<String> = p
        .json(&["events", &p.svc, "--limit", "50"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "traffic_switched" && e["operation_id"] == r["operation"])
        .map(|e| e["message"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(switches.len(), 2, "{what}: {switches:?}");
    assert!(
        switches
            .iter()
            .any(|m| m.starts_with("traffic switched to v1 "))
            && switches
                .iter()
                .any(|m| m.starts_with("traffic switched to v2 ")),
        "{what}: {switches:?}"
    );
    assert_eq!(
        p.serving(),
        "v2",
        "{what}: the drill ends on the current release"
    );
    // Users were served by both releases; a warm drill stays on v1 only while it
    // verifies (a few ms), which four clients on a loaded machine may all miss, so there
    // the ledger's switch events above are the evidence, and v1 may be absent here.
    let served: Vec<String> = report.ok_by_version.keys().cloned().collect();
    if how == Drill::InPlace {
        assert_eq!(
            served,
            ["v1", "v2"],
            "{what}: users were served by both releases"
        );
    } else {
        assert!(
            served == ["v1", "v2"] || served == ["v2"],
            "{what}: {served:?}"
        );
    }
    // A drill marks nothing bad and opens no incident.
    assert_eq!(p.release("v2")["status"], "active", "{what}");
    assert_eq!(p.release("v1")["status"], "previous", "{what}");
    let incidents = p.json(&["incident", "list", "--service", &p.svc]);
    assert_eq!(
        incidents.as_array().map_or(0, Vec::len),
        0,
        "{what}: {incidents:#}\n{}",
        p.watcher_log()
    );
    (r, report)
}

/// Issue 15: a drill round trip on a Docker service completes within budget with no
/// failed requests through the built-in proxy; warm (v1's container still runs), then
/// cold (v1's container killed, so the drill starts it from its image and snapshot).
#[test]
fn a_drill_of_a_docker_service_goes_back_and_forward_under_load_within_budget() {
    let repo = unique("ripcord-test-dr");
    // bake 300 s: v1's container stays warm for the first drill.
    let mut p = DockerProject::new(
        "proxy",
        &repo,
        "bake_secs = 300\ndrill_budget = \"30s\"",
        "",
    );
    images(&mut p, &repo, &[]);
    p.env_file("DEMO_VERSION=v1\n");
    p.start_watcher();
    assert_ok(&p.run(&["deploy", &p.svc, "v1"]), "deploy v1");
    p.env_file("DEMO_VERSION=v2\n");
    assert_ok(&p.run(&["deploy", &p.svc, "v2"]), "deploy v2");
    assert_eq!(p.serving(), "v2");
    let by_version = |version: &str| {
        containers_of(&p.svc).iter().map(|i| inspect(i)).find(|c| {
            c["Config"]["Labels"]["ripcord.version"] == version && c["State"]["Running"] == true
        })
    };
    for version in ["v1", "v2"] {
        let c = by_version(version).unwrap_or_else(|| panic!("{version} runs"));
        let bindings = &c["HostConfig"]["PortBindings"]["8080/tcp"];
        assert_eq!(bindings[0]["HostIp"], "127.0.0.1", "{version}: {bindings}");
    }

    let (warm, _) = drill_under_load(&p, "warm", Drill::TwoSlots, Duration::ZERO);
    assert_eq!(warm["warm"], true, "{warm:#}");

    // Cold: v1's container is killed; the drill starts v1 again in the idle slot.
    let v1 = by_version("v1").expect("v1 is still warm after the drill");
    let id = v1["Id"].as_str().unwrap().to_string();
    let out = Command::new("docker").args(["kill", &id]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually("v1's container stopped", Duration::from_secs(10), || {
        inspect(&id)["State"]["Running"] != true
    });
    let (cold, _) = drill_under_load(&p, "cold", Drill::TwoSlots, Duration::ZERO);
    assert_eq!(cold["warm"], false, "{cold:#}");
    assert!(
        cold["steps"][0]["ms"].as_u64().unwrap() > 0,
        "a cold drill times its start: {cold:#}"
    );
    p.stop_watcher();
}

/// A drill at one address: each leg puts its release in place, as a rollback and the
/// next deploy would. Router `none` replaces the one published container (the gap is
/// measured); the load goes on after the drill, and the guard does not take the drill's
/// gap for the current release's failure.
#[test]
fn a_drill_of_an_image_replace_service_puts_each_release_in_place_and_reports_the_gap() {
    let repo = unique("ripcord-test-dn");
    let mut p = DockerProject::new("none", &repo, "drill_budget = \"30s\"", "");
    images(&mut p, &repo, &[]);
    p.env_file("DEMO_VERSION=v1\n");
    p.start_watcher();
    assert_ok(&p.run(&["deploy", &p.svc, "v1"]), "deploy v1");
    p.env_file("DEMO_VERSION=v2\n");
    assert_ok(&p.run(&["deploy", &p.svc, "v2"]), "deploy v2");
    assert_eq!(p.serving(), "v2");
    let plan = p.json(&["drill", &p.svc, "--dry-run"]);
    assert_eq!(plan["in_place"], true, "{plan:#}");
    assert_eq!(plan["can_run"], true, "{plan:#}");
    let (r, report) = drill_under_load(&p, "replace", Drill::InPlace, Duration::from_secs(4));
    assert!(r["proxied"].is_null(), "no proxy in front: {r:#}");
    let gap = r["downtime_ms"]
        .as_u64()
        .expect("a replace reports its gap");
    assert!(gap > 0, "{r:#}");
    eprintln!(
        "replace drill: {gap} ms without an answer, {} of {} client requests failed",
        report.failures.len(),
        report.ok_by_version.values().sum::<u64>() + report.failures.len() as u64
    );
    // One container of the service runs, and it runs v2.
    let running: Vec<serde_json::Value> = containers_of(&p.svc)
        .iter()
        .map(|i| inspect(i))
        .filter(|c| c["State"]["Running"] == true)
        .collect();
    assert_eq!(running.len(), 1, "{running:#?}");
    assert_eq!(running[0]["Config"]["Labels"]["ripcord.version"], "v2");
    p.stop_watcher();
}

/// A drill of a Swarm service: the service updated to v1's pinned image and back to
/// v2's, each verified by ripcord, under load through the built-in proxy, which holds
/// new requests through the engine's stop-first gaps: none fails.
#[test]
fn a_drill_of_a_swarm_service_updates_it_back_and_forward_and_loses_no_request() {
    let rt = rt();
    let engine = engine(&rt);
    let _swarm = Swarm::join(&rt, &engine);
    let repo = unique("ripcord-test-ds");
    let app_port = free_port();
    let mut p = DockerProject::with_runtime(
        "swarm",
        "proxy",
        &repo,
        "drill_budget = \"60s\"",
        &format!("publish = \"127.0.0.1:{app_port}\"\nnetwork = \"host\""),
    );
    p.cleanup.swarm_services.push(p.svc.clone());
    let v1 = build_image(&rt, &engine, &mut p.cleanup, &format!("{repo}:v1"), &[]);
    let v2 = build_image(&rt, &engine, &mut p.cleanup, &format!("{repo}:v2"), &[]);
    assert_ne!(v1, v2);
    for version in ["v1", "v2"] {
        p.env_file(&format!(
            "DEMO_LISTEN=127.0.0.1:{app_port}\nDEMO_VERSION={version}\n"
        ));
        if version == "v1" {
            p.start_watcher();
        }
        assert_ok(
            &p.run(&["deploy", &p.svc, version]),
            &format!("deploy {version}"),
        );
    }
    assert_eq!(p.serving(), "v2");
    let (r, _) = drill_under_load(&p, "swarm", Drill::InPlace, Duration::from_secs(4));
    assert!(r["downtime_ms"].is_null(), "{r:#}");
    eprintln!(
        "swarm drill: {} of {} requests through the proxy failed",
        r["proxied"]["failed"], r["proxied"]["requests"]
    );
    let out = Command::new("docker")
        .args([
            "service",
            "inspect",
            &p.svc,
            "-f",
            "{{.Spec.TaskTemplate.ContainerSpec.Image}}",
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        v2,
        "the service runs v2's image again"
    );
    p.stop_watcher();
}
