//! What the Docker benchmarks share (`benches/docker_rollback.rs`, `benches/peers.rs`):
//! the `docker` CLI as an argument vector, waits that are always bounded, loopback HTTP,
//! the static demo app for `FROM scratch` images, one ripcord project with its watcher,
//! and the guard that removes every container, service, image and swarm a benchmark made,
//! also on a panic.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub const BIN: &str = env!("CARGO_BIN_EXE_ripcord");

pub fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind a loopback port")
        .local_addr()
        .expect("local addr")
        .port()
}

/// `docker ARGS` (an argv, never a shell line).
pub fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("the docker CLI runs")
}

pub fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub fn words(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// Milliseconds since the epoch for an RFC 3339 UTC time as the engine writes it
/// (`2024-01-02T03:04:05.123456789Z`).
pub fn rfc3339_ms(s: &str) -> Option<i64> {
    let ms = s.parse::<jiff::Timestamp>().ok()?.as_millisecond();
    // The engine writes 0001-01-01T00:00:00Z for "never".
    (ms > 0).then_some(ms)
}

/// `GET path` on 127.0.0.1:port with a short timeout: the status and the body.
pub fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let timeout = Duration::from_millis(500);
    let mut s = TcpStream::connect_timeout(&addr, timeout).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.set_write_timeout(Some(timeout)).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Some((status, body.to_string()))
}

/// The version a demo app on `port` reports on /health, when it answers 200.
pub fn health_version(port: u16) -> Option<String> {
    let (status, body) = get(port, "/health")?;
    if status != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["version"].as_str().map(str::to_string)
}

/// Polls `f` every `every` until it gives a value or `limit` passes.
pub fn wait_for<T>(
    limit: Duration,
    every: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(every);
    }
}

/// Median, min and max of the values that are numbers.
pub fn stats(values: &[f64]) -> Option<(f64, f64, f64)> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some((median, v[0], v[n - 1]))
}

/// Removes, on drop (also on a panic), everything a benchmark made: ripcord's
/// containers (by service label), Swarm services and their containers, the images, and
/// the swarm itself and its `docker_gwbridge` network when the benchmark created them.
#[derive(Default)]
pub struct Cleanup {
    /// ripcord service names (containers labelled `ripcord.service=NAME`).
    pub services: Vec<String>,
    /// Swarm service names.
    pub swarm_services: Vec<String>,
    pub images: Vec<String>,
    pub swarm_created: bool,
    /// Whether `docker_gwbridge` existed before the benchmark touched the swarm.
    pub gwbridge_existed: bool,
}

pub fn remove_containers(label: &str) {
    let ids = words(&docker(&[
        "ps",
        "-aq",
        "--filter",
        &format!("label={label}"),
    ]));
    if !ids.is_empty() {
        let mut args = vec!["rm", "-f"];
        args.extend(ids.iter().map(String::as_str));
        let _ = docker(&args);
    }
}

/// The argv of `docker service create` for the benches' single-task Swarm service
/// `name`: the demo app listening on 127.0.0.1:`port` on the host network (so nothing
/// leaves loopback), Swarm's automatic rollback on (`--update-failure-action rollback`,
/// monitor `monitor`), stop-first (two tasks cannot bind one port), labelled with this
/// run, `extra` before the image.
pub fn swarm_create_args(
    name: &str,
    port: u16,
    monitor: &str,
    extra: &[&str],
    image: &str,
) -> Vec<String> {
    let label = format!("ripcord.bench={}", std::process::id());
    let mut args: Vec<String> = [
        "service",
        "create",
        "--detach",
        "--quiet",
        "--name",
        name,
        "--network",
        "host",
        "--no-resolve-image",
        "--replicas",
        "1",
        "--restart-condition",
        "none",
        "--update-failure-action",
        "rollback",
        "--update-monitor",
        monitor,
        "--update-parallelism",
        "1",
        "--update-order",
        "stop-first",
        "--stop-grace-period",
        "5s",
        "--init",
    ]
    .map(String::from)
    .to_vec();
    args.extend(extra.iter().map(|a| a.to_string()));
    args.extend([
        "--env".to_string(),
        format!("DEMO_LISTEN=127.0.0.1:{port}"),
        "--label".to_string(),
        label.clone(),
        "--container-label".to_string(),
        label,
        image.to_string(),
    ]);
    args
}

pub fn remove_swarm_service(name: &str) {
    let _ = docker(&["service", "rm", name]);
    // The engine removes the task containers asynchronously: wait, then make sure.
    let label = format!("com.docker.swarm.service.name={name}");
    wait_for(Duration::from_secs(20), Duration::from_millis(200), || {
        let ids = words(&docker(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label={label}"),
        ]));
        ids.is_empty().then_some(())
    });
    remove_containers(&label);
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for name in &self.swarm_services {
            remove_swarm_service(name);
        }
        for svc in &self.services {
            remove_containers(&format!("ripcord.service={svc}"));
        }
        if !self.images.is_empty() {
            let mut args = vec!["rmi", "-f"];
            args.extend(self.images.iter().map(String::as_str));
            let _ = docker(&args);
        }
        if self.swarm_created {
            let _ = docker(&["swarm", "leave", "--force"]);
            if !self.gwbridge_existed {
                let _ = docker(&["network", "rm", "docker_gwbridge"]);
            }
        }
    }
}

// The static demo app for `FROM scratch` images: built (or brought up to date) by the
// Docker tests' own fixture, one copy of that build for tests and benches.
#[path = "../../tests/docker_fixture/mod.rs"]
mod docker_fixture;
pub use docker_fixture::static_demo_app;

/// One ripcord project: a config, a state dir and a watcher, for one run. Dropping it
/// stops the watcher and removes the containers of its service.
pub struct Project {
    pub dir: tempfile::TempDir,
    pub svc: String,
    /// Where users reach the service (the proxy's listen address, or the published port).
    pub entry: u16,
    pub watcher: Option<Child>,
}

impl Project {
    /// A project whose `ripcord.toml` is `config`, with `files` (name, contents) beside it.
    pub fn with_config(svc: &str, entry: u16, config: &str, files: &[(&str, &str)]) -> Project {
        let dir = tempfile::tempdir().expect("a temporary directory");
        std::fs::write(dir.path().join("ripcord.toml"), config).expect("write the config");
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).expect("write a project file");
        }
        Project {
            dir,
            svc: svc.to_string(),
            entry,
            watcher: None,
        }
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--config")
            .arg(self.dir.path().join("ripcord.toml"))
            .arg("--state-dir")
            .arg(self.dir.path().join("state"))
            .args(args)
            .current_dir(self.dir.path())
            .env_remove("RIPCORD_CONFIG")
            .env_remove("RIPCORD_STATE_DIR");
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run ripcord")
    }

    pub fn json(&self, args: &[&str]) -> Option<serde_json::Value> {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.run(&all);
        serde_json::from_slice(&out.stdout).ok()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("watcher.log")).unwrap_or_default()
    }

    pub fn start_watcher(&mut self) -> Result<(), String> {
        let log = std::fs::File::create(self.dir.path().join("watcher.log"))
            .map_err(|e| e.to_string())?;
        let child = self
            .cmd(&["watch"])
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(|e| e.to_string())?;
        self.watcher = Some(child);
        wait_for(Duration::from_secs(30), Duration::from_millis(100), || {
            self.json(&["status", &self.svc])
                .filter(|v| !v["live"].is_null())
        })
        .map(|_| ())
        .ok_or_else(|| format!("the watcher never became ready:\n{}", self.log()))
    }

    /// `deploy SVC VERSION EXTRA...`.
    pub fn deploy_with(&self, version: &str, extra: &[&str]) -> Result<(), String> {
        let mut args = vec!["deploy", self.svc.as_str(), version];
        args.extend_from_slice(extra);
        let out = self.run(&args);
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "deploy {version} failed: {}\nwatcher log:\n{}",
                String::from_utf8_lossy(&out.stderr),
                self.log()
            ))
        }
    }

    pub fn deploy(&self, version: &str) -> Result<(), String> {
        self.deploy_with(version, &[])
    }

    /// Stops the watcher (SIGTERM, then SIGKILL after 30 s) and waits for it.
    pub fn stop_watcher(&mut self) {
        if let Some(mut child) = self.watcher.take() {
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            let deadline = Instant::now() + Duration::from_secs(30);
            while matches!(child.try_wait(), Ok(None)) {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.wait();
        }
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        self.stop_watcher();
        // Containers outlive the watcher: this run's go now, not at the very end.
        remove_containers(&format!("ripcord.service={}", self.svc));
    }
}
