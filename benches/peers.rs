//! Peers side by side (issue 18, item 4): the same bad releases through ripcord and through
//! Docker Swarm's own automatic rollback (`--update-failure-action rollback`) on a
//! single-node swarm, under the same open-loop load, and what users saw.
//!
//! Scenarios: v2 of the demo app, good when it starts (so every system's deploy-time
//! checks pass, as in life) and bad from `AFTER_SECS` after its start:
//!
//! - `http500`: every `/api` request answers 500; `/health` still passes;
//! - `health`: `/health` answers 503; users see nothing wrong;
//! - `oom`: memory grows by `LEAK_MB_PER_SEC` MiB/s under a `MEMORY_LIMIT_MB` limit
//!   (the kernel kills it);
//! - `err12`: 12% of `/api` requests answer 500, at random (seeded);
//! - `slow80`: every `/api` answer takes 80 ms more.
//!
//! Systems:
//!
//! - ripcord, runtime `docker`, router `proxy` (its built-in proxy, container blue-green,
//!   v1 kept warm by `bake`);
//! - ripcord, runtime `process`, router `proxy`;
//! - Docker Swarm: a service on the host network (listening on 127.0.0.1 only) with
//!   `--update-failure-action rollback`, an update monitor window and, from the image, an
//!   exec-form `HEALTHCHECK` that runs the demo app itself as a probe (`--probe /health`).
//!
//! Every image here (all systems use the same ones) is `FROM scratch` with the static demo
//! app and that health check. The load is the same for every system: `RATE` requests a
//! second to `/api`, open loop (each request sent at its time, whatever the answers to the
//! earlier ones), keep-alive, at most `MAX_IN_FLIGHT` at a time, each bounded by
//! `REQUEST_TIMEOUT`; every request is recorded with its send time, status (0 for a
//! connection error or a timeout), latency and the version that answered
//! (`x-demo-version`).
//!
//! Per run: from the first bad request once v2 has turned bad (a 5xx or a failed
//! connection; for `slow80`, also an answer slower than 80 ms; for `health`, where users
//! may see nothing bad, from the moment v2 turned bad) to the old release serving again (the first request of the final
//! stretch answered 200 by v1 and nothing else), the failed requests, and whether it
//! recovered within `RECOVERY_WAIT` at all.
//!
//! Output: a table on stdout, `docs/peers.md` (the same table, the machine, the settings)
//! and `docs/peers-<scenario>.svg` (bad requests a second over time, one line per system).
//!
//! Run: `cargo bench --bench peers` (RIPCORD_BENCH_RUNS changes the number of runs per
//! cell, default 3; RIPCORD_BENCH_SCENARIOS=http500,oom runs only those). Needs a Docker
//! engine. Everything on 127.0.0.1; every wait is bounded; every container, service,
//! image and swarm made here is removed at the end, also on a panic.

#[path = "../tests/nginx_fixture/mod.rs"]
mod nginx_fixture;
mod support;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use plotters::prelude::*;
use ripcord::docker::{Engine, Healthcheck};
use support::{
    BIN, Cleanup, Project, docker, env_or, free_port, health_version, remove_swarm_service,
    rfc3339_ms, static_demo_app, stats, swarm_create_args, wait_for, words,
};

/// Requests a second, for every system.
const RATE: u64 = 100;
/// At most this many requests in flight (the load's bound).
const MAX_IN_FLIGHT: usize = 256;
/// One request (connect, answer and body) gives up after this; it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// v1 under load before v2 is deployed (the p95 rule compares v2 with v1).
const WARMUP: Duration = Duration::from_secs(5);
/// v2 turns bad this many seconds after it starts.
const AFTER_SECS: u64 = 5;
/// How far before v2's computed bad moment (its start, from the engine or /proc, + AFTER_SECS)
/// a request may be sent and still count as its first bad one: the two clocks' resolution.
const CLOCK_SLACK_MS: f64 = 50.0;
/// A system that has not recovered this long after the first bad request did not.
const RECOVERY_WAIT: Duration = Duration::from_secs(60);
/// v1 must serve alone this long for the recovery to count (and the run to end early).
const SETTLE: Duration = Duration::from_secs(3);
/// The memory limit of every release, in every system.
const MEMORY_LIMIT_MB: u64 = 64;
/// `oom`: how fast v2 grows once bad.
const LEAK_MB_PER_SEC: u64 = 100;
/// `slow80`: the added latency, and the latency from which an answer counts as bad.
const SLOW_MS: u64 = 80;
/// Swarm's update monitor window (`--update-monitor`).
const SWARM_MONITOR: &str = "30s";
/// The image's health check (Swarm acts on it), and ripcord's health probe, alike.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);
const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
const HEALTH_RETRIES: u32 = 3;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Scenario {
    Http500,
    Health,
    Oom,
    Err12,
    Slow80,
}

const SCENARIOS: [Scenario; 5] = [
    Scenario::Http500,
    Scenario::Health,
    Scenario::Oom,
    Scenario::Err12,
    Scenario::Slow80,
];

impl Scenario {
    fn slug(self) -> &'static str {
        match self {
            Scenario::Http500 => "http500",
            Scenario::Health => "health",
            Scenario::Oom => "oom",
            Scenario::Err12 => "err12",
            Scenario::Slow80 => "slow80",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Scenario::Http500 => "100% 5xx, health check passing",
            Scenario::Health => "failing health check",
            Scenario::Oom => "OOM kill",
            Scenario::Err12 => "12% 5xx (random, seeded)",
            Scenario::Slow80 => "+80 ms on every request",
        }
    }

    /// What counts as the first bad request.
    fn bad_means(self) -> String {
        match self {
            Scenario::Health => {
                "(users may see nothing bad) measured from the moment v2 turned bad: its start + AFTER_SECS".to_string()
            }
            Scenario::Slow80 => format!("a 5xx, a failed connection, or an answer taking ≥ {SLOW_MS} ms"),
            _ => "a 5xx or a failed connection (status 0)".to_string(),
        }
    }

    /// The demo app's flags that make v2 bad.
    fn v2_flags(self) -> Vec<String> {
        let after = AFTER_SECS.to_string();
        let mut f: Vec<String> = match self {
            Scenario::Http500 => vec!["--error-ratio".into(), "1".into()],
            Scenario::Health => vec!["--fail-health".into()],
            Scenario::Oom => vec!["--leak-mb-per-sec".into(), LEAK_MB_PER_SEC.to_string()],
            Scenario::Err12 => vec![
                "--error-ratio".into(),
                "0.12".into(),
                "--seed".into(),
                "12".into(),
            ],
            Scenario::Slow80 => vec!["--latency-ms".into(), SLOW_MS.to_string()],
        };
        f.extend(["--after-secs".to_string(), after]);
        f
    }

    fn is_bad(self, r: &Rec) -> bool {
        r.failed() || (self == Scenario::Slow80 && r.lat_ms >= SLOW_MS as f64)
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum System {
    RipcordDocker,
    RipcordProcess,
    RipcordNginx,
    Swarm,
}

const SYSTEMS: [System; 4] = [
    System::RipcordDocker,
    System::RipcordProcess,
    System::RipcordNginx,
    System::Swarm,
];

impl System {
    fn name(self) -> &'static str {
        match self {
            System::RipcordDocker => "ripcord, docker runtime, built-in proxy",
            System::RipcordProcess => "ripcord, process runtime, built-in proxy",
            System::RipcordNginx => "ripcord, process runtime, behind nginx",
            System::Swarm => "Docker Swarm, --update-failure-action rollback",
        }
    }

    fn short(self) -> &'static str {
        match self {
            System::RipcordDocker => "ripcord docker",
            System::RipcordProcess => "ripcord process",
            System::RipcordNginx => "ripcord nginx",
            System::Swarm => "Swarm",
        }
    }

    fn color(self) -> RGBColor {
        match self {
            System::RipcordDocker => RGBColor(0, 120, 60),
            System::RipcordProcess => RGBColor(30, 80, 220),
            System::RipcordNginx => RGBColor(230, 130, 0),
            System::Swarm => RGBColor(220, 30, 30),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The load.

/// One request as the load saw it.
#[derive(Clone, Copy, Debug)]
struct Rec {
    /// When it was sent (ms since the epoch).
    sent_ms: f64,
    /// Send → body read, or → the error.
    lat_ms: f64,
    /// 0: no answer (connection error or timeout).
    status: u16,
    /// `x-demo-version`: 1 for v1, 2 for v2, 0 otherwise or none.
    version: u8,
}

impl Rec {
    fn failed(&self) -> bool {
        self.status == 0 || self.status >= 500
    }

    fn v1_ok(&self) -> bool {
        self.status == 200 && self.version == 1
    }

    fn done_ms(&self) -> f64 {
        self.sent_ms + self.lat_ms
    }
}

fn epoch_ms_f() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// Open-loop load on its own thread: request i is sent at start + i / RATE.
struct Load {
    stop: Arc<AtomicBool>,
    records: Arc<Mutex<Vec<Rec>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(port: u16) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let records = Arc::new(Mutex::new(Vec::new()));
        let (s, r) = (Arc::clone(&stop), Arc::clone(&records));
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime for the load");
            rt.block_on(load_loop(port, s, r));
        });
        Load {
            stop,
            records,
            thread: Some(thread),
        }
    }

    fn snapshot(&self) -> Vec<Rec> {
        self.records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Stops sending, waits (bounded) for the requests in flight, returns every record
    /// sorted by send time.
    fn finish(mut self) -> Vec<Rec> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let mut v = self.snapshot();
        v.sort_by(|a, b| a.sent_ms.total_cmp(&b.sent_ms));
        v
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn load_loop(port: u16, stop: Arc<AtomicBool>, records: Arc<Mutex<Vec<Rec>>>) {
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(MAX_IN_FLIGHT)
        .build_http();
    let uri: hyper::Uri = format!("http://127.0.0.1:{port}/api")
        .parse()
        .expect("a URI");
    let sem = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let period = Duration::from_secs_f64(1.0 / RATE as f64);
    let start = tokio::time::Instant::now();
    let mut i: u32 = 0;
    while !stop.load(Ordering::SeqCst) {
        tokio::time::sleep_until(start + period * i).await;
        i += 1;
        let Ok(permit) = Arc::clone(&sem).acquire_owned().await else {
            break;
        };
        let (client, uri, records) = (client.clone(), uri.clone(), Arc::clone(&records));
        tokio::spawn(async move {
            let sent_ms = epoch_ms_f();
            let t0 = Instant::now();
            let req = hyper::Request::get(uri)
                .body(Empty::<Bytes>::new())
                .expect("a request");
            let answer = tokio::time::timeout(REQUEST_TIMEOUT, async {
                let resp = client.request(req).await.ok()?;
                let status = resp.status().as_u16();
                let version = match resp
                    .headers()
                    .get("x-demo-version")
                    .and_then(|v| v.to_str().ok())
                {
                    Some("v1") => 1,
                    Some("v2") => 2,
                    _ => 0,
                };
                resp.into_body().collect().await.ok()?;
                Some((status, version))
            })
            .await
            .ok()
            .flatten();
            let (status, version) = answer.unwrap_or((0, 0));
            let rec = Rec {
                sent_ms,
                lat_ms: t0.elapsed().as_secs_f64() * 1000.0,
                status,
                version,
            };
            records.lock().unwrap_or_else(|p| p.into_inner()).push(rec);
            drop(permit);
        });
    }
    // The requests in flight finish within REQUEST_TIMEOUT.
    let _ = tokio::time::timeout(
        REQUEST_TIMEOUT + Duration::from_secs(1),
        sem.acquire_many(MAX_IN_FLIGHT as u32),
    )
    .await;
}

// ---------------------------------------------------------------------------------------
// What one run measured.

#[derive(Clone, Debug)]
struct Outcome {
    /// When v2's deploy began (ms since the epoch).
    deploy_ms: f64,
    /// When v2 turned bad: its start + AFTER_SECS.
    v2_bad_ms: f64,
    /// The first bad request's send time (or v2_bad_ms, see `from_request`).
    first_bad_ms: f64,
    /// Whether `first_bad_ms` is a request's (false: v2's bad moment, for `health` or
    /// when no request was bad).
    from_request: bool,
    /// The answer that began the final stretch of v1 answers, if it came in time.
    recovered_ms: Option<f64>,
    /// Failed requests sent from the deploy on.
    failed: usize,
    /// Of them, sent before v2 turned bad (the deploy itself).
    failed_at_deploy: usize,
    /// Answers slower than SLOW_MS, from the deploy on.
    slow: usize,
    /// Requests sent from the deploy on.
    requests: usize,
    records: Vec<Rec>,
}

impl Outcome {
    fn recovery_s(&self) -> f64 {
        self.recovered_ms
            .map_or(f64::NAN, |r| (r - self.first_bad_ms) / 1000.0)
    }
}

fn analyze(scenario: Scenario, recs: &[Rec], deploy_ms: f64, v2_bad_ms: f64) -> Outcome {
    let after: Vec<&Rec> = recs.iter().filter(|r| r.sent_ms >= deploy_ms).collect();
    let first_bad = if scenario == Scenario::Health {
        None
    } else {
        // Requests that failed during the deploy itself (before v2 turned bad) are not
        // v2's fault: they count in `failed_at_deploy`, not here.
        after
            .iter()
            .find(|r| r.sent_ms >= v2_bad_ms - CLOCK_SLACK_MS && scenario.is_bad(r))
            .map(|r| r.sent_ms)
    };
    let from_request = first_bad.is_some();
    let first_bad_ms = first_bad.unwrap_or(v2_bad_ms);
    let since: Vec<&&Rec> = after.iter().filter(|r| r.sent_ms >= first_bad_ms).collect();
    // The final stretch of v1 answers: after the last request that v1 did not answer 200.
    let last_not_v1 = since.iter().rposition(|r| !r.v1_ok());
    let begin = match last_not_v1 {
        Some(j) => j + 1,
        None => 0,
    };
    let recovered_ms = since.get(begin).and_then(|r| {
        let settled = since
            .last()
            .is_some_and(|l| l.sent_ms - r.sent_ms >= SETTLE.as_millis() as f64);
        let in_time = r.done_ms() - first_bad_ms <= RECOVERY_WAIT.as_millis() as f64;
        (settled && in_time).then(|| r.done_ms())
    });
    Outcome {
        deploy_ms,
        v2_bad_ms,
        first_bad_ms,
        from_request,
        recovered_ms,
        failed: after.iter().filter(|r| r.failed()).count(),
        failed_at_deploy: after
            .iter()
            .filter(|r| r.failed() && r.sent_ms < v2_bad_ms)
            .count(),
        slow: after.iter().filter(|r| r.lat_ms >= SLOW_MS as f64).count(),
        requests: after.len(),
        records: recs.to_vec(),
    }
}

/// Watches the load after v2's deploy until the old release has served alone for SETTLE,
/// or RECOVERY_WAIT after the first bad moment has passed; then stops the load.
fn observe(scenario: Scenario, load: Load, deploy_ms: f64, v2_bad_ms: f64) -> Outcome {
    let hard_end = Instant::now() + RECOVERY_WAIT + SETTLE + Duration::from_secs(60);
    loop {
        std::thread::sleep(Duration::from_millis(250));
        let snap = load.snapshot();
        let mut sorted = snap;
        sorted.sort_by(|a, b| a.sent_ms.total_cmp(&b.sent_ms));
        let o = analyze(scenario, &sorted, deploy_ms, v2_bad_ms);
        let now = epoch_ms_f();
        let bound = o.first_bad_ms.max(v2_bad_ms)
            + (RECOVERY_WAIT + SETTLE + Duration::from_secs(1)).as_millis() as f64;
        if o.recovered_ms.is_some() || now > bound || Instant::now() > hard_end {
            break;
        }
    }
    let recs = load.finish();
    analyze(scenario, &recs, deploy_ms, v2_bad_ms)
}

// ---------------------------------------------------------------------------------------
// Where v2 started.

/// A container's start (ms since the epoch).
fn container_started_ms(id: &str) -> Option<f64> {
    let out = docker(&["inspect", "--format", "{{.State.StartedAt}}", id]);
    let text = String::from_utf8_lossy(&out.stdout);
    rfc3339_ms(text.trim()).map(|ms| ms as f64)
}

/// A process's start (ms since the epoch), from /proc: its start in clock ticks after
/// boot, and the boot time from /proc/uptime (10 ms resolution both).
fn process_started_ms(pid: i64) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name (which may hold spaces) start after its ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let start_ticks: f64 = rest.split_whitespace().nth(19)?.parse().ok()?;
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let boot_ms = epoch_ms_f() - uptime * 1000.0;
    Some(boot_ms + start_ticks / ticks * 1000.0)
}

// ---------------------------------------------------------------------------------------
// The systems.

/// Everything one run needs to know of the images.
struct Images {
    repo: String,
}

impl Images {
    fn v1(&self) -> String {
        format!("{}:v1", self.repo)
    }

    fn v2(&self, s: Scenario) -> String {
        format!("{}:v2-{}", self.repo, s.slug())
    }
}

/// nginx's access log line, as ripcord's `log_format = "ripcord"` reads it.
const NGINX_LOG_FORMAT: &str = "log_format ripcord '$remote_addr - [$time_local] \"$request\" $status $body_bytes_sent '\n    'rt=$request_time urt=\"$upstream_response_time\" ua=\"$upstream_addr\" ts=$msec';\n";

/// A private nginx on loopback in front of two slots, as in the runbook (a primary and a
/// `backup` server in `upstream app`, which ripcord rewrites), logging every request.
struct NginxSite {
    nginx: nginx_fixture::Nginx,
    site: PathBuf,
    log: PathBuf,
    blue: u16,
    green: u16,
    /// Dropped last: nginx's prefix is in it.
    _dir: tempfile::TempDir,
}

impl NginxSite {
    fn start() -> Result<NginxSite, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let (port, blue, green) = (free_port(), free_port(), free_port());
        let site = dir.path().join("site.conf");
        let log = dir.path().join("access.log");
        let text = nginx_fixture::primary_backup_site(
            port,
            &format!("127.0.0.1:{blue}"),
            &format!("127.0.0.1:{green}"),
        );
        let listen = format!("listen 127.0.0.1:{port};");
        let text = text.replace(
            &listen,
            &format!("{listen}\n    access_log {} ripcord;", log.display()),
        );
        std::fs::write(&site, format!("{NGINX_LOG_FORMAT}{text}")).map_err(|e| e.to_string())?;
        let nginx = nginx_fixture::Nginx::start(
            &dir.path().join("nginx"),
            &site.display().to_string(),
            port,
        );
        Ok(NginxSite {
            nginx,
            site,
            log,
            blue,
            green,
            _dir: dir,
        })
    }
}

/// A TOML array of strings.
fn toml_argv(v: &[String]) -> String {
    let items: Vec<String> = v.iter().map(|a| format!("{a:?}")).collect();
    format!("[{}]", items.join(", "))
}

fn ripcord_config(
    system: System,
    svc: &str,
    entry: u16,
    repo: &str,
    nginx: Option<&NginxSite>,
) -> String {
    let (blue, green) = match nginx {
        Some(n) => (n.blue, n.green),
        None => (free_port(), free_port()),
    };
    let health = format!(
        "health = {{ consecutive_failures = {HEALTH_RETRIES}, interval = \"{}ms\", timeout = \"{}ms\" }}",
        HEALTH_INTERVAL.as_millis(),
        HEALTH_TIMEOUT.as_millis()
    );
    let (runtime, extra) = match system {
        System::RipcordDocker => (
            "runtime = \"docker\"\nstart_timeout = \"20s\"".to_string(),
            format!(
                "[service.{svc}.docker]\nimage = \"{repo}\"\nenv_file = \"app.env\"\ncontainer_port = 8080\nmemory_limit_mb = {MEMORY_LIMIT_MB}\n"
            ),
        ),
        _ => (
            format!(
                "start_timeout = \"10s\"\nmemory_limit_mb = {MEMORY_LIMIT_MB}\ncommand = [{BIN:?}, \"demo-app\", \"--port\", \"{{port}}\", \"--version\", \"{{version}}\"]"
            ),
            match nginx {
                Some(n) => format!(
                    "[service.{svc}.nginx]\nsite = {:?}\nupstream = \"app\"\nconf = {:?}\naccess_log = {:?}\nlog_format = \"ripcord\"\ntest_command = {}\nreload_command = {}\n",
                    n.site.display().to_string(),
                    n.site.display().to_string(),
                    n.log.display().to_string(),
                    toml_argv(&n.nginx.test_command()),
                    toml_argv(&n.nginx.reload_command()),
                ),
                None => String::new(),
            },
        ),
    };
    let router = match nginx {
        Some(_) => "router = \"nginx\"".to_string(),
        None => format!("router = \"proxy\"\nlisten = \"127.0.0.1:{entry}\""),
    };
    format!(
        r#"[service.{svc}]
{runtime}
{router}
slots = {{ blue = {blue}, green = {green} }}
stop_timeout = "5s"
health_path = "/health"
bake = "5m"

{extra}
[service.{svc}.triggers]
{health}

[[service.{svc}.verify]]
name = "the API answers with the expected version"
http = "http://127.0.0.1:{entry}/api/status"
json_field = "version"
json_equals = "{{version}}"
"#
    )
}

fn ripcord_run(
    system: System,
    scenario: Scenario,
    svc: &str,
    images: &Images,
) -> Result<Outcome, String> {
    // Declared before the project, so dropped after its watcher has stopped.
    let nginx = match system {
        System::RipcordNginx => Some(NginxSite::start()?),
        _ => None,
    };
    let entry = nginx.as_ref().map_or_else(free_port, |n| n.nginx.port);
    let config = ripcord_config(system, svc, entry, &images.repo, nginx.as_ref());
    let mut p = Project::with_config(
        svc,
        entry,
        &config,
        &[("app.env", "DEMO_LISTEN=0.0.0.0:8080\n")],
    );
    p.start_watcher()?;
    p.deploy("v1")?;
    wait_for(Duration::from_secs(20), Duration::from_millis(100), || {
        (health_version(entry).as_deref() == Some("v1")).then_some(())
    })
    .ok_or("v1 never answered through the proxy")?;
    let load = Load::start(entry);
    std::thread::sleep(WARMUP);
    let deploy_ms = epoch_ms_f();
    let v2_image = images.v2(scenario);
    let flags = scenario.v2_flags();
    let mut extra: Vec<&str> = Vec::new();
    if system == System::RipcordDocker {
        extra.extend(["--image", v2_image.as_str()]);
    } else {
        extra.extend([
            "--",
            BIN,
            "demo-app",
            "--port",
            "{port}",
            "--version",
            "{version}",
        ]);
        extra.extend(flags.iter().map(String::as_str));
    }
    p.deploy_with("v2", &extra)?;
    // Where v2 runs, read at once (a rolled-back container may be removed later).
    let status = p.json(&["status", svc]).ok_or("status printed no JSON")?;
    let slot = status["live"]["slots"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["version"] == "v2"))
        .cloned()
        .ok_or_else(|| format!("no v2 slot in {status}"))?;
    let started = if system == System::RipcordDocker {
        slot["container"]["id"]
            .as_str()
            .and_then(container_started_ms)
    } else {
        slot["pid"].as_i64().and_then(process_started_ms)
    }
    .ok_or_else(|| format!("v2's start time is unknown: {slot}"))?;
    let v2_bad_ms = started + (AFTER_SECS * 1000) as f64;
    let out = observe(scenario, load, deploy_ms, v2_bad_ms);
    let incidents = p
        .json(&["incident", "list", "--service", svc])
        .unwrap_or_default();
    if let Some(i) = incidents.as_array().and_then(|a| a.first()) {
        eprintln!(
            "    incident: rule {} status {} ({})",
            i["rule"],
            i["status"],
            i["summary"].as_str().unwrap_or("")
        );
    } else {
        eprintln!("    no incident opened");
    }
    Ok(out)
}

fn swarm_run(
    scenario: Scenario,
    cleanup: &mut Cleanup,
    name: &str,
    images: &Images,
) -> Result<Outcome, String> {
    let port = free_port();
    cleanup.swarm_services.push(name.to_string());
    let result = swarm_measure(scenario, name, port, images);
    remove_swarm_service(name);
    cleanup.swarm_services.retain(|n| n != name);
    result
}

fn swarm_measure(
    scenario: Scenario,
    name: &str,
    port: u16,
    images: &Images,
) -> Result<Outcome, String> {
    let memory = format!("{MEMORY_LIMIT_MB}M");
    let v1 = images.v1();
    let v2 = images.v2(scenario);
    let args = swarm_create_args(name, port, SWARM_MONITOR, &["--limit-memory", &memory], &v1);
    let out = docker(&args.iter().map(String::as_str).collect::<Vec<_>>());
    if !out.status.success() {
        return Err(format!(
            "docker service create: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    wait_for(Duration::from_secs(60), Duration::from_millis(100), || {
        (health_version(port).as_deref() == Some("v1")).then_some(())
    })
    .ok_or_else(|| format!("Swarm's v1 task never answered on 127.0.0.1:{port}"))?;
    let load = Load::start(port);
    std::thread::sleep(WARMUP);
    let deploy_ms = epoch_ms_f();
    let out = docker(&[
        "service",
        "update",
        "--detach",
        "--quiet",
        "--no-resolve-image",
        "--image",
        &v2,
        name,
    ]);
    if !out.status.success() {
        return Err(format!(
            "docker service update: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    // v2's container and its start, as the engine records them.
    let service_label = format!("label=com.docker.swarm.service.name={name}");
    let started = wait_for(Duration::from_secs(60), Duration::from_millis(100), || {
        let ids = words(&docker(&["ps", "-aq", "--filter", &service_label]));
        ids.iter().find_map(|id| {
            let out = docker(&["inspect", "--format", "{{.Config.Image}}", id]);
            let image = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if image.starts_with(&v2) {
                container_started_ms(id)
            } else {
                None
            }
        })
    })
    .ok_or("Swarm's v2 container never started")?;
    let v2_bad_ms = started + (AFTER_SECS * 1000) as f64;
    let out = observe(scenario, load, deploy_ms, v2_bad_ms);
    let state = docker(&[
        "service",
        "inspect",
        "--format",
        "{{if .UpdateStatus}}{{.UpdateStatus.State}}: {{.UpdateStatus.Message}}{{end}}",
        name,
    ]);
    eprintln!(
        "    swarm update status: {}",
        String::from_utf8_lossy(&state.stdout).trim()
    );
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Output.

fn fmt_stat(values: &[f64], decimals: usize) -> String {
    let numbers = values.iter().filter(|v| !v.is_nan()).count();
    match stats(values) {
        None => "–".to_string(),
        Some((m, _, _)) if numbers == 1 => format!("{m:.decimals$}"),
        Some((m, lo, hi)) => format!("{m:.decimals$} ({lo:.decimals$}–{hi:.decimals$})"),
    }
}

/// The run whose recovery time is the median of the cell's (a run that did not recover
/// counts as the slowest), for the plot.
fn median_run(runs: &[Outcome]) -> Option<&Outcome> {
    let mut v: Vec<&Outcome> = runs.iter().collect();
    v.sort_by(|a, b| {
        let (x, y) = (a.recovery_s(), b.recovery_s());
        let (x, y) = (
            if x.is_nan() { f64::INFINITY } else { x },
            if y.is_nan() { f64::INFINITY } else { y },
        );
        x.total_cmp(&y)
    });
    v.get(v.len().saturating_sub(1) / 2).copied()
}

const PLOT_SIZE: (u32, u32) = (900, 480);

/// One line of a plot: (seconds, requests a second).
type Points = Vec<(f64, f64)>;

/// Bad requests a second (by send time) against seconds since v2 turned bad, one line
/// per system, from the median run of each.
fn plot(
    path: &Path,
    scenario: Scenario,
    lines: &[(System, &Outcome)],
) -> Result<(), Box<dyn std::error::Error>> {
    let mut series: Vec<(System, String, Points)> = Vec::new();
    let (mut x0, mut x1, mut y1) = (-2.0f64, 10.0f64, 5.0f64);
    for (system, o) in lines {
        let origin = o.v2_bad_ms;
        let start = ((o.deploy_ms - origin) / 1000.0).floor();
        let end = o
            .records
            .last()
            .map_or(start, |r| ((r.sent_ms - origin) / 1000.0).ceil());
        let n = (end - start).max(1.0) as usize;
        let mut buckets = vec![0.0; n];
        for r in o.records.iter().filter(|r| r.sent_ms >= o.deploy_ms) {
            if scenario.is_bad(r) {
                let k = ((r.sent_ms - origin) / 1000.0 - start).floor() as usize;
                if let Some(b) = buckets.get_mut(k) {
                    *b += 1.0;
                }
            }
        }
        let pts: Vec<(f64, f64)> = buckets
            .iter()
            .enumerate()
            .map(|(k, b)| (start + k as f64 + 0.5, *b))
            .collect();
        x0 = x0.min(start);
        x1 = x1.max(end);
        y1 = y1.max(buckets.iter().copied().fold(0.0, f64::max) * 1.15);
        let label = match o.recovered_ms {
            Some(_) => format!(
                "{}: v1 serving {:.2} s after the first bad {}; {} failed",
                system.short(),
                o.recovery_s(),
                if o.from_request { "request" } else { "moment" },
                o.failed
            ),
            None => format!(
                "{}: not recovered in {} s; {} failed",
                system.short(),
                RECOVERY_WAIT.as_secs(),
                o.failed
            ),
        };
        series.push((*system, label, pts));
    }
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, PLOT_SIZE).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!(
                    "Peers: {} (v2 bad {AFTER_SECS} s after its start)",
                    scenario.title()
                ),
                ("sans-serif", 22),
            )
            .margin(14)
            .x_label_area_size(44)
            .y_label_area_size(60)
            .build_cartesian_2d(x0..x1, 0.0..y1)?;
        let y_desc = if scenario == Scenario::Slow80 {
            format!("requests a second: failed or ≥ {SLOW_MS} ms")
        } else {
            "failed requests a second".to_string()
        };
        chart
            .configure_mesh()
            .label_style(("sans-serif", 15))
            .axis_desc_style(("sans-serif", 16))
            .light_line_style(BLACK.mix(0.03))
            .x_desc(format!(
                "seconds since v2 turned bad (load: {RATE} req/s; median run of each)"
            ))
            .y_desc(y_desc)
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_label_formatter(&|v| format!("{v:.0}"))
            .draw()?;
        chart.draw_series(DashedLineSeries::new(
            [(0.0, 0.0), (0.0, y1)],
            6,
            4,
            BLACK.mix(0.5).stroke_width(1),
        ))?;
        for (system, label, pts) in series {
            let color = system.color();
            chart
                .draw_series(LineSeries::new(pts, color.stroke_width(2)))?
                .label(label)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font(("sans-serif", 14))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .draw()?;
        root.present()?;
    }
    std::fs::write(path, svg)?;
    Ok(())
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".to_string());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    format!("{cores} cores ({cpu}), Linux {kernel}")
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument that is not ours skips the run.
    if std::env::args()
        .skip(1)
        .any(|a| a != "--bench" && !a.starts_with('-') && a != "peers")
    {
        return;
    }
    let runs = env_or("RIPCORD_BENCH_RUNS", 3).max(1) as usize;
    let only: Option<Vec<String>> = std::env::var("RIPCORD_BENCH_SCENARIOS")
        .ok()
        .map(|s| s.split(',').map(|x| x.trim().to_string()).collect());
    let scenarios: Vec<Scenario> = SCENARIOS
        .into_iter()
        .filter(|s| {
            only.as_ref()
                .is_none_or(|o| o.iter().any(|x| x == s.slug()))
        })
        .collect();
    let pid = std::process::id();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let engine = rt
        .block_on(Engine::connect())
        .unwrap_or_else(|e| panic!("this benchmark needs a Docker engine: {e}"));
    let info = rt
        .block_on(engine.describe())
        .unwrap_or_else(|e| panic!("docker version: {e}"));
    let started_at = jiff::Timestamp::now();
    let load_before = loadavg();
    let wall = Instant::now();
    println!(
        "ripcord peers benchmark: Docker Engine {} (API {}), {}, load average {load_before}, {runs} runs per cell",
        info.version,
        info.api_version,
        machine()
    );

    let mut cleanup = Cleanup::default();
    let repo = format!("ripcord-bench-peers{pid}");
    let app = static_demo_app();
    let health = Healthcheck {
        command: vec!["/app".into(), "--probe".into(), "/health".into()],
        interval: HEALTH_INTERVAL,
        timeout: HEALTH_TIMEOUT,
        retries: HEALTH_RETRIES,
    };
    let build = |cleanup: &mut Cleanup, reference: String, cmd: Vec<String>| {
        cleanup.images.push(reference.clone());
        let labels = BTreeMap::from([("ripcord.bench".to_string(), reference.clone())]);
        rt.block_on(engine.build_scratch_image_healthcheck(
            &reference,
            Path::new(&app),
            &cmd,
            &labels,
            &health,
        ))
        .unwrap_or_else(|e| panic!("building {reference}: {e}"));
    };
    let images = Images { repo: repo.clone() };
    build(
        &mut cleanup,
        images.v1(),
        vec!["--version".into(), "v1".into()],
    );
    for s in &scenarios {
        let mut cmd = vec!["--version".to_string(), "v2".to_string()];
        cmd.extend(s.v2_flags());
        build(&mut cleanup, images.v2(*s), cmd);
    }
    eprintln!("images: {repo}:v1 and v2 for {} scenarios", scenarios.len());

    let gwbridge_existed = docker(&["network", "inspect", "docker_gwbridge"])
        .status
        .success();
    cleanup.gwbridge_existed = gwbridge_existed;
    let created = rt
        .block_on(engine.swarm_init_local())
        .unwrap_or_else(|e| panic!("swarm init: {e}"));
    cleanup.swarm_created = created;
    eprintln!(
        "swarm: {}",
        if created {
            "created a single-node swarm on 127.0.0.1 (left again at the end)"
        } else {
            "the engine is already in a swarm: using it, leaving it as it is"
        }
    );

    // Runs interleaved: run i of every cell before run i + 1 of any.
    let mut results: BTreeMap<(usize, usize), Vec<Outcome>> = BTreeMap::new();
    let mut failures: BTreeMap<(usize, usize), usize> = BTreeMap::new();
    let mut n = 0;
    for i in 0..runs {
        for (si, scenario) in scenarios.iter().enumerate() {
            for (yi, system) in SYSTEMS.iter().enumerate() {
                n += 1;
                let t0 = Instant::now();
                let name = format!("peers{pid}x{n}");
                let result = match system {
                    System::Swarm => swarm_run(*scenario, &mut cleanup, &name, &images),
                    _ => {
                        cleanup.services.push(name.clone());
                        ripcord_run(*system, *scenario, &name, &images)
                    }
                };
                match result {
                    Ok(o) => {
                        eprintln!(
                            "run {i} {} / {}: {} ({} requests, {} failed, {} at the deploy; {:.0} s)",
                            scenario.slug(),
                            system.short(),
                            match o.recovered_ms {
                                Some(_) => format!(
                                    "v1 serving {:.2} s after the first bad {}",
                                    o.recovery_s(),
                                    if o.from_request { "request" } else { "moment" }
                                ),
                                None => "not recovered".to_string(),
                            },
                            o.requests,
                            o.failed,
                            o.failed_at_deploy,
                            t0.elapsed().as_secs_f64()
                        );
                        results.entry((si, yi)).or_default().push(o);
                    }
                    Err(e) => {
                        eprintln!(
                            "run {i} {} / {} FAILED: {e}",
                            scenario.slug(),
                            system.short()
                        );
                        *failures.entry((si, yi)).or_default() += 1;
                    }
                }
            }
        }
    }
    if created {
        if let Err(e) = rt.block_on(engine.swarm_leave()) {
            eprintln!("swarm leave: {e}");
        }
        cleanup.swarm_created = false;
        if !gwbridge_existed {
            let _ = docker(&["network", "rm", "docker_gwbridge"]);
        }
    }

    // The table.
    let mut table = String::new();
    let _ = writeln!(
        table,
        "| scenario | system | recovered | first bad → v1 serving (s) | failed requests | of them at the deploy | slow (≥ {SLOW_MS} ms) |"
    );
    let _ = writeln!(table, "|---|---|---|---|---|---|---|");
    for (si, scenario) in scenarios.iter().enumerate() {
        for (yi, system) in SYSTEMS.iter().enumerate() {
            let empty = Vec::new();
            let rs = results.get(&(si, yi)).unwrap_or(&empty);
            let broken = failures.get(&(si, yi)).copied().unwrap_or(0);
            let ok = rs.iter().filter(|o| o.recovered_ms.is_some()).count();
            let recovered = match (ok, rs.len()) {
                (_, 0) => "–".to_string(),
                (0, total) => format!("**no** (0/{total})"),
                (k, total) if k == total => format!("yes ({k}/{total})"),
                (k, total) => format!("{k}/{total}"),
            };
            let recovered = if broken > 0 {
                format!("{recovered}; {broken} run(s) failed to set up")
            } else {
                recovered
            };
            let col = |f: &dyn Fn(&Outcome) -> f64| rs.iter().map(f).collect::<Vec<f64>>();
            let _ = writeln!(
                table,
                "| {} | {} | {recovered} | {} | {} | {} | {} |",
                scenario.title(),
                system.name(),
                fmt_stat(&col(&|o| o.recovery_s()), 2),
                fmt_stat(&col(&|o| o.failed as f64), 0),
                fmt_stat(&col(&|o| o.failed_at_deploy as f64), 0),
                fmt_stat(&col(&|o| o.slow as f64), 0),
            );
        }
    }
    println!();
    print!("{table}");

    // The plots and docs/peers.md.
    let docs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs");
    let mut figures = String::new();
    for (si, scenario) in scenarios.iter().enumerate() {
        let lines: Vec<(System, &Outcome)> = SYSTEMS
            .iter()
            .enumerate()
            .filter_map(|(yi, s)| {
                results
                    .get(&(si, yi))
                    .and_then(|rs| median_run(rs))
                    .map(|o| (*s, o))
            })
            .collect();
        let file = format!("peers-{}.svg", scenario.slug());
        match plot(&docs.join(&file), *scenario, &lines) {
            Ok(()) => {
                eprintln!("wrote docs/{file}");
                let _ = writeln!(
                    figures,
                    "- [{file}]({file}): {} — first bad means {}.\n\n  ![{}]({file})\n",
                    scenario.title(),
                    scenario.bad_means(),
                    scenario.title()
                );
            }
            Err(e) => eprintln!("plot {file}: {e}"),
        }
    }
    let minutes = wall.elapsed().as_secs_f64() / 60.0;
    let load_after = loadavg();
    let doc = format!(
        r#"# Peers side by side: ripcord and Docker Swarm's automatic rollback

Written by `cargo bench --bench peers` (this file and the `docs/peers-*.svg` figures;
nothing here is edited by hand). Run {started_at} with {runs} run(s) per cell, in
{minutes:.0} min, on {machine}, Docker Engine {docker}. **The machine was shared**: load
average {load_before} when the run began, {load_after} when it ended (other builds and
tests ran beside it), so single figures can be off by the odd second; medians and
ranges are what to read.

## What runs

The same bad releases through each system, under the same load: {RATE} requests a
second to `/api`, open loop (each sent at its time whatever happened to the earlier
ones), keep-alive, at most {MAX_IN_FLIGHT} in flight, each given {timeout} s. v1 serves
under that load for {warmup} s, then v2 is deployed. v2 is good when it starts (every
system's deploy-time checks pass, as in life) and bad {AFTER_SECS} s after its start:

| scenario | v2's flags (demo app) |
|---|---|
{scenario_rows}
Every release runs under a {MEMORY_LIMIT_MB} MiB memory limit. Every image is `FROM
scratch` with the static demo app and an exec-form health check that runs the demo app
itself (`HEALTHCHECK --interval={hi}s --timeout={ht}s --retries={HEALTH_RETRIES} CMD
["/app", "--probe", "/health"]`); the same images serve every system.

- **ripcord, docker runtime, built-in proxy**: `ripcord watch`, container blue-green
  behind ripcord's proxy on 127.0.0.1, `bake = "5m"` (v1 stays warm), the default
  triggers, with the health probe every {hi} s and {HEALTH_RETRIES} failures in a row
  (as the image's health check). `deploy v2 --image …:v2-<scenario>`.
- **ripcord, process runtime, built-in proxy**: the same with the demo app run as a
  process (`ripcord demo-app`), `memory_limit_mb` enforced by a cgroup.
- **Docker Swarm**: a single-node swarm on 127.0.0.1; a one-replica service on the host
  network (listening on 127.0.0.1 only, so no ingress routing mesh, which would listen
  on every interface, hence `--update-order stop-first`: two tasks cannot bind the same
  port), `--update-failure-action rollback --update-monitor {SWARM_MONITOR}
  --restart-condition none --limit-memory {MEMORY_LIMIT_MB}M`, and the image's health
  check. `docker service update --image …:v2-<scenario>`.
- **ripcord, process runtime, behind nginx**: a private nginx on 127.0.0.1 (the
  runbook's site: `upstream app` with a primary and a `backup` server, which ripcord
  rewrites and reloads), router `nginx`; the guard reads every request from nginx's
  access log (`log_format ripcord`, with `$request_time`). nginx's own passive failover
  (`max_fails`, `proxy_next_upstream error timeout`) is part of what users get.

## The table

Median of the runs per cell, (min–max) when there is more than one.

- **first bad → v1 serving**: from the send time of the first bad request sent once v2
  had turned bad (failures during the deploy itself are counted apart) to the answer that
  began the final stretch of requests answered 200 by v1 (nothing else after it, for at
  least {settle} s). For the failing health check users may see nothing bad, so it is
  measured from the moment v2 turned bad (its start, from the engine or `/proc`, + {AFTER_SECS} s).
  For the others "bad" is a 5xx or a failed connection, and for +80 ms also an answer
  taking ≥ {SLOW_MS} ms; when no request at all was bad, it is measured from the moment
  v2 turned bad as well (the run's log line says "moment" instead of "request").
- **recovered**: whether v1 served again within {wait} s of the first bad request. A
  Swarm update whose tasks keep running passes its monitor window, and Swarm never looks
  at responses or latency: "no" there is a finding, not a failed run.
- **failed requests**: 5xx answers and requests with no answer (connection refused or
  reset, or no answer in {timeout} s), sent from v2's deploy to the end of the run (the
  recovery + {settle} s, or the {wait} s bound: for a system that does not recover this
  count grows with the bound). **of them at the deploy**: those sent before v2 turned
  bad (the deploy itself; Swarm's stop-first update stops v1 before v2 listens).
- **slow**: answers taking ≥ {SLOW_MS} ms, from v2's deploy on.

{table}
## The figures

Bad requests a second (by send time) against seconds since v2 turned bad (the dashed
line), one line per system, each from the run whose recovery time is the median of its
cell; the legend gives that run's recovery time and failed requests.

{figures}"#,
        machine = machine(),
        docker = info.version,
        timeout = REQUEST_TIMEOUT.as_secs(),
        warmup = WARMUP.as_secs(),
        settle = SETTLE.as_secs(),
        wait = RECOVERY_WAIT.as_secs(),
        hi = HEALTH_INTERVAL.as_secs(),
        ht = HEALTH_TIMEOUT.as_secs(),
        scenario_rows = scenarios
            .iter()
            .map(|s| format!("| {} | `{}` |\n", s.title(), s.v2_flags().join(" ")))
            .collect::<String>(),
    );
    match std::fs::write(docs.join("peers.md"), doc) {
        Ok(()) => eprintln!("wrote docs/peers.md"),
        Err(e) => eprintln!("docs/peers.md: {e}"),
    }
    drop(cleanup);
    if results.is_empty() {
        eprintln!("no run worked");
        std::process::exit(2);
    }
}
