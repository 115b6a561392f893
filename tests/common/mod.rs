//! Shared fixtures for the integration tests: a real `ripcord watch` process on a
//! temporary state dir with free loopback ports, the real CLI, and a bounded load loop.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ripcord::http::HttpClient;

pub const BIN: &str = env!("CARGO_BIN_EXE_ripcord");

/// A loopback port nothing listens on now, never the same twice in one test binary (the
/// kernel may hand a released port out again at once, and a config whose listen and slot
/// ports clash is refused).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    for _ in 0..100 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
    panic!("no fresh loopback port in 100 tries");
}

/// A temporary project: a config, a state dir, and (once started) a watcher.
pub struct Project {
    pub dir: tempfile::TempDir,
    pub listen: u16,
    pub blue: u16,
    pub green: u16,
    pub watcher: Option<Child>,
}

impl Project {
    /// A config for service `web` on fresh ports; `extra` is appended inside
    /// `[service.web]` (before any sub-tables), `tail` after everything.
    pub fn new(extra: &str, tail: &str) -> Project {
        let dir = tempfile::tempdir().unwrap();
        let (listen, blue, green) = (free_port(), free_port(), free_port());
        // A test may set its own start timeout; TOML refuses a key given twice.
        let start_timeout = if extra.contains("start_timeout") {
            ""
        } else {
            "start_timeout = \"10s\"\n"
        };
        let config = format!(
            r#"[service.web]
listen = "127.0.0.1:{listen}"
slots = {{ blue = {blue}, green = {green} }}
{start_timeout}stop_timeout = "5s"
command = [{BIN:?}, "demo-app", "--port", "{{port}}", "--version", "{{version}}"]
{extra}

[[service.web.verify]]
http = "http://127.0.0.1:{listen}/health"

[[service.web.verify]]
http = "http://127.0.0.1:{listen}/api/verify"
json_field = "version"
json_equals = "{{version}}"
{tail}
"#
        );
        std::fs::write(dir.path().join("ripcord.toml"), config).unwrap();
        Project {
            dir,
            listen,
            blue,
            green,
            watcher: None,
        }
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("ripcord.toml")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.listen)
    }

    /// The CLI with this project's config and state dir.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--config")
            .arg(self.config())
            .arg("--state-dir")
            .arg(self.state_dir())
            .args(args)
            .current_dir(self.dir.path())
            .env_remove("RIPCORD_CONFIG")
            .env_remove("RIPCORD_STATE_DIR");
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    /// Runs and parses stdout as JSON.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.run(&all);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{args:?}: not JSON ({e}): stdout {} stderr {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    /// Starts `ripcord watch` and waits (bounded) until it answers on its socket.
    pub fn start_watcher(&mut self) {
        let child = start_watch(
            self.cmd(&["watch"]),
            &self.dir.path().join("watcher.log"),
            || self.run(&["--json", "status", "web"]),
        );
        self.watcher = Some(child);
    }

    pub fn watcher_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("watcher.log")).unwrap_or_default()
    }

    pub fn watcher_pid(&self) -> i32 {
        self.watcher.as_ref().unwrap().id() as i32
    }

    /// Sends SIGTERM and waits (bounded) for the watcher to exit.
    pub fn stop_watcher(&mut self) -> std::process::ExitStatus {
        let mut child = self.watcher.take().unwrap();
        terminate(&mut child, "the watcher", Duration::from_secs(30))
    }

    /// `deploy web VERSION -- demo-app ... EXTRA`.
    pub fn deploy(&self, version: &str, extra: &[&str]) -> Output {
        let mut args = vec!["deploy", "web", version];
        if !extra.is_empty() {
            args.extend(DEMO_APP_ARGV);
            args.extend_from_slice(extra);
        }
        self.run(&args)
    }
}

/// v1 under load (4 workers through the proxy), then v2, bad a second after it starts
/// (so its deploy-time verification passes, as in life; then half its requests fail,
/// at random); waits (bounded) until the guard has rolled v2 back, and returns what the
/// load saw.
pub fn bad_v2_rolled_back_under_load(p: &Project) -> LoadReport {
    assert_ok(&p.deploy("v1", &[]), "deploy v1");
    let load = Load::start(p.url("/api/load"), 4, Duration::from_secs(60), 200_000);
    std::thread::sleep(Duration::from_millis(500));
    assert_ok(
        &p.deploy("v2", &["--error-ratio", "0.5", "--after-secs", "1"]),
        "deploy v2",
    );
    eventually("the guard rolls v2 back", Duration::from_secs(20), || {
        serving(p) == "v1"
    });
    load.stop()
}

/// What follows `deploy web VERSION` to run the demo app: `-- ripcord demo-app ...`.
pub const DEMO_APP_ARGV: [&str; 7] = [
    "--",
    BIN,
    "demo-app",
    "--port",
    "{port}",
    "--version",
    "{version}",
];

/// SIGTERM, then waits (bounded by `max`) for the exit status.
pub fn terminate(child: &mut Child, what: &str, max: Duration) -> std::process::ExitStatus {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    wait_exit(child, what, max)
}

/// Waits (bounded by `max`, then kills it and fails) for a child to exit.
pub fn wait_exit(child: &mut Child, what: &str, max: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + max;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} did not exit within {max:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        if let Some(mut child) = self.watcher.take() {
            // SIGTERM first so the watcher stops its releases too.
            stop_quietly(&mut child, Duration::from_secs(20));
        }
    }
}

/// Starts `watch` (a `ripcord ... watch` command) with its stderr in `log`, then waits
/// (bounded) until `status` (a `--json status SERVICE` run) shows it live. Panics with
/// the log when the watcher exits first or never answers.
pub fn start_watch(mut watch: Command, log: &Path, status: impl Fn() -> Output) -> Child {
    let file = std::fs::File::create(log).unwrap();
    let mut child = watch
        .stdout(Stdio::null())
        .stderr(Stdio::from(file))
        .spawn()
        .unwrap();
    let read_log = || std::fs::read_to_string(log).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = status();
        if out.status.success() {
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            if !v["live"].is_null() {
                return child;
            }
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the watcher exited ({status}): {}", read_log());
        }
        if Instant::now() >= deadline {
            stop_quietly(&mut child, Duration::from_secs(5));
            panic!("the watcher never became ready: {}", read_log());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// SIGTERM, up to `max` for the exit, then SIGKILL: for cleanup, where a hang must not
/// hide the test's own failure.
pub fn stop_quietly(child: &mut Child, max: Duration) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let deadline = Instant::now() + max;
    while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

pub fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What a load loop saw.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub ok_by_version: BTreeMap<String, u64>,
    /// Non-2xx answers and transport errors, with what happened.
    pub failures: Vec<String>,
}

/// A bounded load loop: `workers` tasks on keep-alive connections send GET /api/load
/// until stopped, at most `max_time` and `max_requests` in all.
pub struct Load {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<LoadReport>,
    pub sent: Arc<AtomicU64>,
}

impl Load {
    pub fn start(url: String, workers: usize, max_time: Duration, max_requests: u64) -> Load {
        Load::start_with(url, workers, max_time, max_requests, true)
    }

    /// With `keep_alive` false every request opens its own connection: nginx's reload
    /// closes idle keep-alive connections of its old workers, and a request racing that
    /// close fails in any client that does not retry; that is nginx's behaviour, not the
    /// switch's, so tests of nginx switches measure with fresh connections.
    pub fn start_with(
        url: String,
        workers: usize,
        max_time: Duration,
        max_requests: u64,
        keep_alive: bool,
    ) -> Load {
        on_load_thread(move |s, n, report| async move {
            let start = Instant::now();
            let mut tasks = Vec::new();
            for _ in 0..workers {
                let (s, n, url, report) = (s.clone(), n.clone(), url.clone(), report.clone());
                tasks.push(tokio::spawn(async move {
                    let mut client = HttpClient::default();
                    while !s.load(Ordering::Relaxed)
                        && start.elapsed() < max_time
                        && n.fetch_add(1, Ordering::Relaxed) < max_requests
                    {
                        if !keep_alive {
                            client = HttpClient::default();
                        }
                        let outcome = version_or_failure(&client, &url).await;
                        report.lock().unwrap().record(outcome);
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
        })
    }

    pub fn stop(self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap()
    }
}

/// GET a URL once (blocking), returning status and body.
pub fn get(url: &str) -> (u16, String) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        match HttpClient::default().get(url, Duration::from_secs(5)).await {
            Ok(r) => (r.status, String::from_utf8_lossy(&r.body).into_owned()),
            Err(e) => (0, e.to_string()),
        }
    })
}

/// The version the service answers with right now.
pub fn serving(p: &Project) -> String {
    let (status, body) = get(&p.url("/health"));
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["version"].as_str().unwrap().to_string()
}

pub fn pid_alive(pid: i64) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.contains(") Z "))
            .unwrap_or(true)
}

/// Waits (bounded) until `f` holds.
pub fn eventually(what: &str, max: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + max;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A paced load: about `rate` requests a second (an open loop, as users arrive: a slow
/// answer does not slow the arrivals), at most 128 in flight, for at most `max_time`.
pub struct PacedLoad;

impl PacedLoad {
    pub fn start(url: String, rate: u64, max_time: Duration) -> Load {
        on_load_thread(move |s, n, report| async move {
            let limit = Arc::new(tokio::sync::Semaphore::new(128));
            let client = HttpClient::default();
            let start = Instant::now();
            let max_requests = rate * max_time.as_secs() + 100;
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
            while !s.load(Ordering::Relaxed)
                && start.elapsed() < max_time
                && n.load(Ordering::Relaxed) < max_requests
            {
                tick.tick().await;
                let Ok(permit) = limit.clone().acquire_owned().await else {
                    break;
                };
                n.fetch_add(1, Ordering::Relaxed);
                let (client, url, report) = (client.clone(), url.clone(), report.clone());
                tokio::spawn(async move {
                    let outcome = version_or_failure(&client, &url).await;
                    report.lock().unwrap().record(outcome);
                    drop(permit);
                });
            }
            let _ = tokio::time::timeout(Duration::from_secs(10), limit.acquire_many(128)).await;
        })
    }
}

impl LoadReport {
    fn record(&mut self, outcome: Result<String, String>) {
        match outcome {
            Ok(version) => *self.ok_by_version.entry(version).or_default() += 1,
            Err(failure) => self.failures.push(failure),
        }
    }
}

/// One GET: the version that answered 200, or what went wrong.
async fn version_or_failure(client: &HttpClient, url: &str) -> Result<String, String> {
    match client.get(url, Duration::from_secs(5)).await {
        Ok(resp) if resp.status == 200 => {
            let v: serde_json::Value = serde_json::from_slice(&resp.body).unwrap_or_default();
            Ok(v["version"].as_str().unwrap_or("?").to_string())
        }
        Ok(resp) => Err(format!(
            "status {}: {}",
            resp.status,
            String::from_utf8_lossy(&resp.body)
        )),
        Err(e) => Err(format!("error: {e}")),
    }
}

/// Runs a load loop on a thread of its own (a two-worker runtime): `body` gets the stop
/// flag, the sent counter and the report to fill.
fn on_load_thread<F, Fut>(body: F) -> Load
where
    F: FnOnce(Arc<AtomicBool>, Arc<AtomicU64>, Arc<Mutex<LoadReport>>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let (s, n) = (stop.clone(), sent.clone());
    let handle = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let report = Arc::new(Mutex::new(LoadReport::default()));
            body(s, n, report.clone()).await;
            std::mem::take(&mut *report.lock().unwrap())
        })
    });
    Load { stop, handle, sent }
}
