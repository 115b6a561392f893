//! `ripcord demo`: the whole loop on the embedded default, in a temporary state dir with
//! free loopback ports and the bundled demo app: a watcher, v1 deployed, v2 deployed and
//! misbehaving under steady traffic, a rollback back to v1, verification, the ledger's
//! history. Nothing outside the temporary directory is touched.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::CliError;
use crate::config::Config;
use crate::http::HttpClient;
use crate::watch::control::{self, Request};

/// The demo's traffic: at most this many requests, at most this long.
const LOAD_MAX_REQUESTS: u64 = 20_000;
const LOAD_MAX_TIME: Duration = Duration::from_secs(60);

/// Status counts per version, as the demo's client saw them.
type Seen = Arc<Mutex<BTreeMap<String, (u64, u64)>>>;

pub(super) async fn run(json: bool) -> Result<i32, CliError> {
    let started = Instant::now();
    let dir = std::env::temp_dir().join(format!("ripcord-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = run_in(&dir, json, started).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn free_port() -> Result<u16, CliError> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn step(json: bool, msg: &str) {
    if !json {
        println!("\n▶ {msg}");
    }
}

async fn run_in(dir: &Path, json: bool, started: Instant) -> Result<i32, CliError> {
    let exe = std::env::current_exe()?;
    let (listen, blue, green) = (free_port()?, free_port()?, free_port()?);
    let config_path = dir.join("ripcord.toml");
    let state_dir = dir.join("state");
    let config_text = format!(
        r#"[service.web]
runtime = "process"
router = "proxy"
listen = "127.0.0.1:{listen}"
slots = {{ blue = {blue}, green = {green} }}
health_path = "/health"
bake_secs = 120
command = [{exe:?}, "demo-app", "--port", "{{port}}", "--version", "{{version}}"]

[[service.web.verify]]
http = "http://127.0.0.1:{listen}/health"

[[service.web.verify]]
name = "the API answers with the expected version"
http = "http://127.0.0.1:{listen}/api/status"
json_field = "version"
json_equals = "{{version}}"
"#
    );
    std::fs::write(&config_path, &config_text)?;
    let config =
        Config::load(&config_path).map_err(|e| CliError::new(1, format!("demo config: {e}")))?;
    if !json {
        println!(
            "ripcord demo: a watcher, two releases, a bad one, a rollback (in {})",
            dir.display()
        );
    }

    step(
        json,
        &format!("ripcord watch   (proxy on 127.0.0.1:{listen}, slots {blue}/{green})"),
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let watcher_state = state_dir.clone();
    let watcher = tokio::spawn(async move {
        crate::watch::run(
            config,
            &watcher_state,
            async {
                let _ = stop_rx.await;
            },
            Some(ready_tx),
        )
        .await
    });
    if ready_rx.await.is_err() {
        let err = watcher.await.map_err(|e| CliError::new(1, e.to_string()))?;
        return Err(CliError::new(
            1,
            format!("the watcher did not start: {err:?}"),
        ));
    }

    let mut timings: Vec<(String, u64)> = Vec::new();
    let result = async {
        let v1 = deploy(&state_dir, "v1", &[], json).await?;
        timings.push(("deploy v1 (cold start, health, switch, verify)".into(), v1["total_ms"].as_u64().unwrap_or(0)));

        step(json, "steady traffic through the proxy (a bounded loop on loopback)");
        let seen: Seen = Arc::default();
        let (load_stop, load) = start_load(listen, seen.clone());
        tokio::time::sleep(Duration::from_millis(500)).await;

        let v2 = deploy(&state_dir, "v2", &["--error-ratio", "0.3"], json).await?;
        timings.push(("deploy v2 (answers 30% of /api with 500)".into(), v2["total_ms"].as_u64().unwrap_or(0)));
        tokio::time::sleep(Duration::from_millis(800)).await;
        if !json {
            let s = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
            if let Some((ok, bad)) = s.get("v2") {
                println!("  users see v2 failing: {bad} of {} requests answered 5xx", ok + bad);
            }
        }

        step(json, "ripcord rollback web --reason \"v2 answers 5xx\"");
        let rb = call(&state_dir, Request::Rollback {
            service: "web".into(),
            to: None,
            reason: Some("v2 answers 5xx".into()),
        }, json).await?;
        timings.push(("rollback to v1 (warm: traffic switch)".into(), rb["switch_ms"].as_u64().unwrap_or(0)));
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = load_stop.send(());
        let total_requests = load.await.unwrap_or(0);

        step(json, "ripcord verify web");
        let cfg = Config::load(&config_path).map_err(|e| CliError::new(1, e.to_string()))?;
        let svc = cfg.service("web").expect("the demo config has web");
        let report = crate::verify::run(&svc.verify, Duration::from_secs(10), "v1").await;
        if !json {
            print!("{}", report.render());
        }

        let ledger = crate::ledger::Ledger::open(&state_dir)?;
        let releases = ledger.releases("web")?;
        let seen = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let summary = json!({
            "ok": report.ok,
            "elapsed_ms": started.elapsed().as_millis() as u64,
            "timings_ms": timings.iter().map(|(k, v)| json!({"step": k, "ms": v})).collect::<Vec<_>>(),
            "requests": total_requests,
            "by_version": seen.iter().map(|(v, (ok, bad))| (v.clone(), json!({"ok": ok, "5xx": bad}))).collect::<serde_json::Map<_, _>>(),
            "releases": releases,
        });
        if json {
            super::output::print_json(&summary);
        } else {
            step(json, "ripcord releases web");
            super::output::releases(&ledger, "web", false)?;
            println!("\nWhat happened:");
            for (what, ms) in &timings {
                println!("  {ms:>6} ms  {what}");
            }
            println!("  {total_requests} requests through the proxy: by version {:?} (ok, 5xx)", seen);
            println!(
                "\n{} demo finished in {:.1} s. Today the rollback is by hand; the guard (next) makes it automatic.",
                if report.ok { "✓" } else { "✗" },
                started.elapsed().as_secs_f64()
            );
        }
        Ok::<i32, CliError>(if report.ok { 0 } else { 4 })
    }
    .await;
    let _ = stop_tx.send(());
    let _ = watcher.await;
    result
}

async fn deploy(
    state_dir: &Path,
    version: &str,
    extra: &[&str],
    json: bool,
) -> Result<Value, CliError> {
    let exe = std::env::current_exe()?;
    let mut argv: Vec<String> = [
        exe.to_string_lossy().as_ref(),
        "demo-app",
        "--port",
        "{port}",
        "--version",
        "{version}",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    argv.extend(extra.iter().map(|s| s.to_string()));
    step(
        json,
        &format!(
            "ripcord deploy web {version}{}",
            if extra.is_empty() {
                String::new()
            } else {
                format!("   (demo-app {})", extra.join(" "))
            }
        ),
    );
    call(
        state_dir,
        Request::Deploy {
            service: "web".into(),
            version: version.into(),
            argv: Some(argv),
            cwd: None::<PathBuf>,
            force: false,
            reason: None,
        },
        json,
    )
    .await
}

async fn call(state_dir: &Path, request: Request, json: bool) -> Result<Value, CliError> {
    let (exit, result, error) = control::call(state_dir, &request, |m| {
        if !json {
            for line in m.lines() {
                println!("  {line}");
            }
        }
    })
    .await?;
    if let Some(e) = error {
        return Err(CliError::new(exit, e));
    }
    if !json {
        super::output::outcome(&result);
    }
    Ok(result)
}

/// Requests `/api/demo` in a bounded loop until told to stop; counts answers by version.
fn start_load(
    port: u16,
    seen: Seen,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<u64>,
) {
    let (tx, mut rx) = tokio::sync::oneshot::channel();
    let handle = tokio::spawn(async move {
        let client = HttpClient::default();
        let url = format!("http://127.0.0.1:{port}/api/demo");
        let start = Instant::now();
        let mut n = 0;
        while n < LOAD_MAX_REQUESTS && start.elapsed() < LOAD_MAX_TIME && rx.try_recv().is_err() {
            n += 1;
            if let Ok(r) = client.get(&url, Duration::from_secs(2)).await {
                let v: Value = serde_json::from_slice(&r.body).unwrap_or_default();
                let version = v["version"].as_str().unwrap_or("?").to_string();
                let mut s = seen.lock().unwrap_or_else(|p| p.into_inner());
                let e = s.entry(version).or_default();
                if r.status >= 500 { e.1 += 1 } else { e.0 += 1 }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        n
    });
    (tx, handle)
}
