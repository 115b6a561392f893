//! Docker test fixtures: the demo app built as a static binary, `FROM scratch` images of
//! it (no image can be pulled here), and a guard that removes every container and image
//! a test made, also when it fails. Needs a Docker engine: fails, never skips, without.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use ripcord::docker::Engine;

/// Builds (once per test binary) `ripcord-demo-app` linked statically, so it runs in an
/// image that holds nothing else.
pub fn static_demo_app() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let target_dir = root.join("target").join("static");
        let out = Command::new(env!("CARGO"))
            .current_dir(&root)
            .env("RUSTFLAGS", "-C target-feature=+crt-static")
            .args([
                "build",
                "--profile",
                "static-app",
                "--package",
                "ripcord-demo-app",
                "--bin",
                "ripcord-demo-app",
                "--target",
                "x86_64-unknown-linux-gnu",
                "--target-dir",
            ])
            .arg(&target_dir)
            .output()
            .expect("cargo runs");
        assert!(
            out.status.success(),
            "building the static demo app failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let bin = target_dir
            .join("x86_64-unknown-linux-gnu")
            .join("static-app")
            .join("ripcord-demo-app");
        assert!(bin.exists(), "no static demo app at {}", bin.display());
        bin
    })
    .clone()
}

/// A name unique to this test run: `<prefix><pid>x<n>`.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The engine, or a loud failure: these tests never skip.
pub fn engine(rt: &tokio::runtime::Runtime) -> Engine {
    rt.block_on(Engine::connect()).unwrap_or_else(|e| {
        panic!("the Docker tests need a Docker engine and none answered: {e}; start dockerd (.ci/run does)")
    })
}

/// Removes, on drop, every container labelled with one of `services` and every image
/// in `images`.
pub struct Cleanup {
    pub services: Vec<String>,
    pub images: Vec<String>,
    /// Swarm services to remove (before their images).
    pub swarm_services: Vec<String>,
}

impl Cleanup {
    pub fn new() -> Cleanup {
        Cleanup {
            services: Vec::new(),
            images: Vec::new(),
            swarm_services: Vec::new(),
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for s in &self.swarm_services {
            let _ = Command::new("docker").args(["service", "rm", s]).output();
        }
        if !self.swarm_services.is_empty() {
            // Task containers go a moment after their service.
            for _ in 0..100 {
                let left = self
                    .services
                    .iter()
                    .any(|svc| !containers_of(svc).is_empty());
                if !left {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
        for svc in &self.services {
            let out = Command::new("docker")
                .args([
                    "ps",
                    "-aq",
                    "--filter",
                    &format!("label=ripcord.service={svc}"),
                ])
                .output();
            if let Ok(out) = out {
                let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
                    .split_whitespace()
                    .map(str::to_string)
                    .collect();
                if !ids.is_empty() {
                    let _ = Command::new("docker")
                        .args(["rm", "-f"])
                        .args(&ids)
                        .output();
                }
            }
        }
        if !self.images.is_empty() {
            let _ = Command::new("docker")
                .args(["rmi", "-f"])
                .args(&self.images)
                .output();
        }
    }
}

/// Builds `repo:tag` from the static demo app with `args` as its default arguments;
/// returns the image id. Registered with `cleanup` before it is built.
pub fn build_image(
    rt: &tokio::runtime::Runtime,
    engine: &Engine,
    cleanup: &mut Cleanup,
    reference: &str,
    args: &[&str],
) -> String {
    cleanup.images.push(reference.to_string());
    let bin = static_demo_app();
    let cmd: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let mut labels = BTreeMap::new();
    labels.insert("ripcord.test".to_string(), reference.to_string());
    rt.block_on(engine.build_scratch_image_with(reference, &bin, &cmd, &labels))
        .unwrap_or_else(|e| panic!("building {reference}: {e}"))
}

/// Container ids labelled with `service`, running or not.
pub fn containers_of(service: &str) -> Vec<String> {
    containers_labelled(&format!("ripcord.service={service}"), false)
}

/// Ids of the containers with `label` (`KEY=VALUE`), all or only the running ones,
/// sorted.
pub fn containers_labelled(label: &str, running_only: bool) -> Vec<String> {
    let filter = format!("label={label}");
    let mut args = vec!["ps", "-q", "--no-trunc", "--filter", &filter];
    if !running_only {
        args.push("-a");
    }
    let out = Command::new("docker").args(&args).output().unwrap();
    let mut ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    ids.sort();
    ids
}

/// A single-node swarm for the tests of this process: created (advertising 127.0.0.1)
/// when this engine is in none, and left again when the last test using it is done,
/// only when a test here created it. Tests run in parallel threads: one test leaving
/// the swarm would remove the services of another.
pub struct Swarm(());

/// How many tests use the swarm now, and whether this process created it.
static SWARM_USERS: std::sync::Mutex<(usize, bool)> = std::sync::Mutex::new((0, false));

impl Swarm {
    pub fn join(rt: &tokio::runtime::Runtime, engine: &Engine) -> Swarm {
        let mut users = SWARM_USERS.lock().unwrap_or_else(|p| p.into_inner());
        let created = rt
            .block_on(engine.swarm_init_local())
            .unwrap_or_else(|e| panic!("cannot make this engine a swarm manager: {e}"));
        users.0 += 1;
        users.1 |= created;
        Swarm(())
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        let mut users = SWARM_USERS.lock().unwrap_or_else(|p| p.into_inner());
        users.0 -= 1;
        if users.0 == 0 && users.1 {
            users.1 = false;
            let _ = Command::new("docker")
                .args(["swarm", "leave", "--force"])
                .output();
            // `swarm init` made this bridge; `swarm leave` keeps it.
            let _ = Command::new("docker")
                .args(["network", "rm", "docker_gwbridge"])
                .output();
        }
    }
}
