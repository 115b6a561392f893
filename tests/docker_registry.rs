//! Images from a registry, pinned by digest, on the real engine and a real Distribution
//! server (Debian's `docker-registry`, started per test on a loopback port with its
//! storage in a temporary directory): a deploy pulls what the engine lacks and records
//! `name@sha256:…`; a rollback to a pruned image pulls that digest and runs the pinned
//! id; `doctor` says the image is pullable, or not once the registry lost it; a Swarm
//! service is created, updated and rolled back by digest; basic auth from the Docker
//! config or from the service's `registry_username` + `registry_password_env`. The Docker config is a
//! per-test `DOCKER_CONFIG` directory: the real `~/.docker` is never read or written.
//! Every test removes the containers and images it made, also when it fails. Needs the
//! engine, `docker-registry` and `htpasswd`: fails, never skips, without them.

mod common;
mod docker_fixture;
mod registry_fixture;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{BIN, assert_ok, eventually, free_port, get, stderr, stdout};
use docker_fixture::{Cleanup, Swarm, build_image, containers_of, engine, rt, unique};
use registry_fixture::Registry;

/// The app's arguments in a container: listen on the container port, all interfaces.
const LISTEN: &[&str] = &["--listen", "0.0.0.0:8080"];

/// Runs `docker --config DIR ARGS` (never the real ~/.docker).
fn docker_cli(config_dir: &Path, args: &[&str]) -> Output {
    Command::new("docker")
        .arg("--config")
        .arg(config_dir)
        .args(args)
        .output()
        .unwrap()
}

/// A project whose one service runs containers of `repo` (blue-green behind the proxy).
struct Project {
    dir: tempfile::TempDir,
    svc: String,
    entry: u16,
    slots: (u16, u16),
    repo: String,
    watcher: Option<Child>,
    /// The Docker config the CLI and the watcher see (empty unless a test logs in).
    docker_config: PathBuf,
    /// More environment for the CLI and the watcher.
    env: Vec<(String, String)>,
    /// More lines for the app's env file.
    app_env: String,
    /// Runtime swarm: the tasks bind this loopback port themselves (host network).
    swarm_port: Option<u16>,
    // Last: containers and images go after the watcher is stopped.
    cleanup: Cleanup,
}

impl Project {
    fn new(repo: &str, docker_extra: &str) -> Project {
        let dir = tempfile::tempdir().unwrap();
        let svc = unique("reg");
        let docker_config = dir.path().join("docker-config");
        std::fs::create_dir(&docker_config).unwrap();
        let mut cleanup = Cleanup::new();
        cleanup.services.push(svc.clone());
        let p = Project {
            entry: free_port(),
            slots: (free_port(), free_port()),
            dir,
            svc,
            repo: repo.to_string(),
            watcher: None,
            docker_config,
            env: Vec::new(),
            app_env: String::new(),
            swarm_port: None,
            cleanup,
        };
        p.write_config(docker_extra);
        p
    }

    fn write_config(&self, docker_extra: &str) {
        let (svc, entry, repo) = (&self.svc, self.entry, &self.repo);
        let (blue, green) = self.slots;
        let (runtime, placement) = match self.swarm_port {
            Some(port) => (
                "swarm",
                format!("publish = \"127.0.0.1:{port}\"\nnetwork = \"host\""),
            ),
            None => ("docker", String::new()),
        };
        let slots = match self.swarm_port {
            Some(_) => String::new(),
            None => format!("slots = {{ blue = {blue}, green = {green} }}"),
        };
        let config = format!(
            r#"[service.{svc}]
runtime = "{runtime}"
router = "proxy"
listen = "127.0.0.1:{entry}"
{slots}
start_timeout = "20s"
stop_timeout = "5s"
bake = "1s"
health_path = "/health"

[service.{svc}.docker]
image = "{repo}"
env_file = "app.env"
container_port = 8080
{placement}
{docker_extra}

[[service.{svc}.verify]]
name = "the API answers with the expected version"
http = "http://127.0.0.1:{entry}/api/status"
json_field = "version"
json_equals = "{{version}}"
"#
        );
        std::fs::write(self.dir.path().join("ripcord.toml"), config).unwrap();
    }

    fn env_file(&self, version: &str) {
        std::fs::write(
            self.dir.path().join("app.env"),
            format!("DEMO_VERSION={version}\n{}", self.app_env),
        )
        .unwrap();
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--config")
            .arg(self.dir.path().join("ripcord.toml"))
            .arg("--state-dir")
            .arg(self.dir.path().join("state"))
            .args(args)
            .current_dir(self.dir.path())
            .env_remove("RIPCORD_CONFIG")
            .env_remove("RIPCORD_STATE_DIR")
            .env("DOCKER_CONFIG", &self.docker_config);
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
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

    fn deploy(&self, version: &str) -> Output {
        self.env_file(version);
        self.run(&["deploy", &self.svc, version])
    }

    fn serving(&self) -> String {
        let (status, body) = get(&format!("http://127.0.0.1:{}/api/status", self.entry));
        if status != 200 {
            return format!("status {status}");
        }
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        v["version"].as_str().unwrap_or("?").to_string()
    }

    /// The ledger's pinned image of `version`, as `--json releases` shows it.
    fn pinned(&self, version: &str) -> serde_json::Value {
        let out = self.run(&["--json", "releases", &self.svc]);
        let list: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("releases: not JSON ({e}): {}", stderr(&out)));
        let releases = list
            .as_array()
            .cloned()
            .or_else(|| list["releases"].as_array().cloned())
            .unwrap_or_default();
        releases
            .into_iter()
            .find(|r| r["version"] == version)
            .unwrap_or_else(|| panic!("no release {version} in {list}"))["spec"]["image"]
            .clone()
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        self.stop_watcher();
    }
}

/// Builds `repo:v1` and `repo:v2`, pushes them with the docker CLI (logged in with
/// `login` through a private config dir when given), and removes the local copies so a
/// deploy must pull. Returns the image ids; every reference is left to `p.cleanup`.
/// `args`: the app's default arguments (none for swarm: it listens where DEMO_LISTEN says).
fn publish(p: &mut Project, login: Option<(&str, &str)>, args: &[&str]) -> (String, String) {
    let rt = rt();
    let engine = engine(&rt);
    let push_config = tempfile::tempdir().unwrap();
    if let Some((user, pass)) = login {
        let registry = p.repo.split('/').next().unwrap().to_string();
        let mut child = Command::new("docker")
            .arg("--config")
            .arg(push_config.path())
            .args(["login", "-u", user, "--password-stdin", &registry])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(pass.as_bytes())
            .unwrap();
        assert_ok(&child.wait_with_output().unwrap(), "docker login");
    }
    let mut ids = Vec::new();
    for v in ["v1", "v2"] {
        let reference = format!("{}:{v}", p.repo);
        let id = build_image(&rt, &engine, &mut p.cleanup, &reference, args);
        // Removed by id too: a pull by digest brings it back without the tag.
        p.cleanup.images.push(id.clone());
        assert_ok(
            &docker_cli(push_config.path(), &["push", &reference]),
            "docker push",
        );
        assert_ok(
            &docker_cli(push_config.path(), &["image", "rm", &reference]),
            "removing the local copy",
        );
        ids.push(id);
    }
    assert_ne!(ids[0], ids[1], "two releases must be two images");
    (ids[0].clone(), ids[1].clone())
}

/// Asserts `image` (a release's pinned image) has `id` and a digest of `repo`.
fn assert_pinned(image: &serde_json::Value, repo: &str, id: &str) {
    assert_eq!(image["id"], id, "{image}");
    let digest = image["repo_digest"].as_str().unwrap_or_default();
    assert!(
        digest.starts_with(&format!("{repo}@sha256:")) && digest.len() == repo.len() + 8 + 64,
        "no digest of {repo} pinned: {image}"
    );
}

/// A little traffic for v2, the evidence the bake ends on; waits (bounded) until v1's
/// warm container is stopped, so nothing holds v1's image any more.
fn bake_ended_by_traffic(p: &Project) {
    let load = common::Load::start(
        format!("http://127.0.0.1:{}/api/load", p.entry),
        2,
        Duration::from_secs(30),
        150,
    );
    eventually(
        "v1's warm container stops after the bake",
        Duration::from_secs(30),
        || containers_of(&p.svc).len() == 1,
    );
    load.stop();
}

#[test]
fn deploy_pulls_from_the_registry_and_pins_the_digest() {
    let registry = Registry::start(None);
    let repo = format!("{}/{}", registry.host(), unique("demo"));
    let mut p = Project::new(&repo, "");
    let (v1, v2) = publish(&mut p, None, LISTEN);
    p.start_watcher();

    for (version, id) in [("v1", &v1), ("v2", &v2)] {
        let out = p.deploy(version);
        assert_ok(
            &out,
            &format!("deploy {version} (pulled) {}", p.watcher_log()),
        );
        assert_eq!(p.serving(), version);
        assert_pinned(&p.pinned(version), &repo, id);
    }
    let out = Command::new("docker")
        .args([
            "image",
            "inspect",
            "--format",
            "{{.Id}}",
            &format!("{repo}:v2"),
        ])
        .output()
        .unwrap();
    assert_eq!(
        stdout(&out).trim(),
        v2,
        "the pull left {repo}:v2 on the engine"
    );

    // v1 gone from the engine and from the registry: doctor says a rollback would fail,
    // and what to do.
    bake_ended_by_traffic(&p);
    assert_ok(
        &Command::new("docker")
            .args(["image", "rm", "-f", &v1])
            .output()
            .unwrap(),
        "docker image rm v1",
    );
    let digest = p.pinned("v1")["repo_digest"].as_str().unwrap().to_string();
    let (name, sha) = digest.split_once('@').unwrap();
    let name = name.split_once('/').unwrap().1;
    let out = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "DELETE",
        ])
        .arg(format!(
            "http://{}/v2/{name}/manifests/{sha}",
            registry.host()
        ))
        .output()
        .unwrap();
    assert_eq!(
        stdout(&out),
        "202",
        "deleting v1's manifest: {}",
        stderr(&out)
    );
    let out = p.run(&["doctor", &p.svc]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("✗ image pullable") && text.contains("push the exact image"),
        "{text}"
    );
}

/// A registry that accepts connections and never answers (a real fault: a hung
/// registry, or a firewall that drops replies): the deploy gives up after
/// `pull_timeout`, says so, and the watcher takes the next deploy.
#[test]
fn a_pull_from_a_registry_that_never_answers_ends_at_pull_timeout() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    silent.set_nonblocking(true).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let holder = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            // Holds every connection open, reads nothing, answers nothing; bounded.
            let mut held = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(120);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
                if let Ok((c, _)) = silent.accept() {
                    held.push(c);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            held.len()
        })
    };
    let repo = format!("127.0.0.1:{port}/{}", unique("silent"));
    let mut p = Project::new(&repo, "pull_timeout = \"2s\"");
    p.env_file("v1");
    p.start_watcher();
    let t = Instant::now();
    let out = p.deploy("v1");
    let took = t.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let connections = holder.join().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("took longer than 2s")
            && err.contains("pull_timeout")
            && err.contains("does not answer"),
        "{err}"
    );
    assert!(
        !err.contains("docker login"),
        "a timeout is not a login problem: {err}"
    );
    assert!(connections > 0, "the engine reached the silent registry");
    // A bound that catches a hang, not a timing claim.
    assert!(took < Duration::from_secs(60), "{took:?}");
    // The watcher is free again: the next deploy is not refused as busy.
    let out = p.deploy("v1");
    assert!(
        !stderr(&out).contains("in progress"),
        "{}\n{}",
        stderr(&out),
        p.watcher_log()
    );
    p.stop_watcher();
}

#[test]
fn rollback_pulls_a_pruned_image_by_its_digest_and_runs_the_pinned_id() {
    let registry = Registry::start(None);
    let repo = format!("{}/{}", registry.host(), unique("demo"));
    let mut p = Project::new(&repo, "");
    let (v1, _v2) = publish(&mut p, None, LISTEN);
    p.start_watcher();
    assert_ok(&p.deploy("v1"), "deploy v1");
    assert_ok(&p.deploy("v2"), "deploy v2");
    // After the bake, v1's container is gone (the bake ends on evidence: v2's first
    // requests): nothing holds its image.
    bake_ended_by_traffic(&p);
    let rm = Command::new("docker")
        .args(["image", "rm", "-f", &v1])
        .output()
        .unwrap();
    assert_ok(&rm, "docker image rm v1");
    let gone = Command::new("docker")
        .args(["image", "inspect", &v1])
        .output()
        .unwrap();
    assert!(!gone.status.success(), "v1's image is still on the engine");

    let out = p.run(&["doctor", &p.svc]);
    assert!(
        stdout(&out).contains("✓ image pullable") && stdout(&out).contains("@sha256:"),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));

    let out = p.run(&["--json", "rollback", &p.svc, "--reason", "registry test"]);
    assert_ok(&out, &format!("rollback {}", p.watcher_log()));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["result"]["warm"], false, "a cold rollback: {v}");
    assert_eq!(p.serving(), "v1");
    let running: Vec<String> = containers_of(&p.svc)
        .into_iter()
        .filter(|c| {
            let out = Command::new("docker")
                .args(["inspect", "--format", "{{.State.Running}}", c])
                .output()
                .unwrap();
            stdout(&out).trim() == "true"
        })
        .collect();
    let images: Vec<String> = running
        .iter()
        .map(|c| {
            let out = Command::new("docker")
                .args(["inspect", "--format", "{{.Image}}", c])
                .output()
                .unwrap();
            stdout(&out).trim().to_string()
        })
        .collect();
    assert!(
        images.contains(&v1),
        "no running container runs the pinned {v1}: {images:?}"
    );
    let events = stdout(&p.run(&["events", &p.svc]));
    assert!(events.contains("pulled"), "no pull event: {events}");
}

#[test]
fn a_registry_with_basic_auth_needs_a_login_from_the_docker_config_or_the_env() {
    let registry = Registry::start(Some(("ci", "s3cret-pw")));
    let repo = format!("{}/{}", registry.host(), unique("demo"));
    let mut p = Project::new(&repo, "");
    let (v1, v2) = publish(&mut p, Some(("ci", "s3cret-pw")), LISTEN);
    p.start_watcher();

    // No login anywhere: the deploy fails and says what to do.
    let out = p.deploy("v1");
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("cannot pull {repo}:v1"))
            && err.contains("without a login")
            && err.contains("registry_password_env"),
        "{err}"
    );

    // The Docker config's `auths` (what `docker login` writes).
    std::fs::write(
        p.docker_config.join("config.json"),
        format!(
            r#"{{"auths": {{"{}": {{"auth": "Y2k6czNjcmV0LXB3"}}}}}}"#,
            registry.host()
        ),
    )
    .unwrap();
    let out = p.deploy("v1");
    assert_ok(
        &out,
        &format!(
            "deploy v1 with the Docker config's login {}",
            p.watcher_log()
        ),
    );
    assert_pinned(&p.pinned("v1"), &repo, &v1);

    // The service's registry_username, the password from the environment (and no Docker
    // config login any more). The watcher reads both when it starts.
    p.stop_watcher();
    std::fs::remove_file(p.docker_config.join("config.json")).unwrap();
    p.write_config("registry_username = \"ci\"\nregistry_password_env = \"REG_TEST_PASSWORD\"");
    p.env
        .push(("REG_TEST_PASSWORD".to_string(), "s3cret-pw".to_string()));
    p.start_watcher();
    let out = p.deploy("v2");
    assert_ok(
        &out,
        &format!("deploy v2 with the env's password {}", p.watcher_log()),
    );
    assert_pinned(&p.pinned("v2"), &repo, &v2);
    assert_eq!(p.serving(), "v2");
    for args in [
        vec!["--json", "releases", p.svc.as_str()],
        vec!["events", p.svc.as_str()],
        vec!["doctor", p.svc.as_str()],
    ] {
        let out = p.run(&args);
        let all = format!("{}{}{}", stdout(&out), stderr(&out), p.watcher_log());
        assert!(
            !all.contains("s3cret-pw"),
            "{args:?} printed the password: {all}"
        );
    }
}

/// The image a swarm service's spec names.
fn swarm_image(service: &str) -> String {
    let out = Command::new("docker")
        .args([
            "service",
            "inspect",
            "--format",
            "{{.Spec.TaskTemplate.ContainerSpec.Image}}",
            service,
        ])
        .output()
        .unwrap();
    assert_ok(&out, "docker service inspect");
    stdout(&out).trim().to_string()
}

#[test]
fn a_swarm_service_is_updated_and_rolled_back_by_digest() {
    let rt = rt();
    let engine = engine(&rt);
    let _swarm = Swarm::join(&rt, &engine);
    let registry = Registry::start(None);
    let repo = format!("{}/{}", registry.host(), unique("demo"));
    let app_port = free_port();
    let mut p = Project::new(&repo, "");
    p.swarm_port = Some(app_port);
    p.app_env = format!("DEMO_LISTEN=127.0.0.1:{app_port}\n");
    p.write_config("");
    p.cleanup.swarm_services.push(p.svc.clone());
    let (v1, v2) = publish(&mut p, None, &[]);
    p.start_watcher();

    for (version, id) in [("v1", &v1), ("v2", &v2)] {
        let out = p.deploy(version);
        assert_ok(
            &out,
            &format!("deploy {version} (swarm) {}", p.watcher_log()),
        );
        assert_eq!(p.serving(), version);
        let pinned = p.pinned(version);
        assert_pinned(&pinned, &repo, id);
        assert_eq!(
            swarm_image(&p.svc),
            pinned["repo_digest"].as_str().unwrap(),
            "the service names the digest"
        );
    }
    let out = p.run(&["rollback", &p.svc, "--reason", "registry test"]);
    assert_ok(&out, &format!("swarm rollback {}", p.watcher_log()));
    assert_eq!(p.serving(), "v1");
    assert_eq!(
        swarm_image(&p.svc),
        p.pinned("v1")["repo_digest"].as_str().unwrap()
    );
}
