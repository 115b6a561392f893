//! `ripcord demo`: the whole loop on the embedded default, in a temporary directory with
//! free loopback ports and the bundled demo app. A watcher, a bounded load generator
//! (about 200 requests a second), a good v1, then a v2 with a fault; the guard detects
//! it, rolls back and verifies with nobody involved, and the incident report is written
//! to `./ripcord-demo/`. The temporary directory is removed at the end, whether the run
//! passed, failed or was interrupted with Ctrl-C: only the report is kept.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::ValueEnum;
use serde_json::{Value, json};

use super::CliError;
use crate::clock::now_ms;
use crate::config::{Config, duration};
use crate::http::HttpClient;
use crate::ledger::Ledger;
use crate::watch::control::{self, Request};

/// How long the demo waits for the guard before it gives up.
const GUARD_DEADLINE: Duration = Duration::from_secs(40);
/// Where the report goes, in the directory the demo was started from.
pub const REPORT_DIR: &str = "ripcord-demo";

/// The fault v2 carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// 30% of API requests answer 500 from a second after it starts; health stays green
    Errors,
    /// every API request takes 300 ms longer
    Latency,
    /// memory grows until the memory limit kills it
    Oom,
    /// the process exits a second after it starts
    Crash,
    /// /health starts failing a second after it starts
    Health,
    /// a core is burned: investigate, then roll back when nobody acknowledges
    Cpu,
    /// a sudden 100% failure of the API a second after it starts
    Outage,
    /// nothing is wrong: 1% background errors and latency jitter, which must never
    /// cause a rollback (runs for --duration)
    Healthy,
    /// a near miss: 7% of API requests fail at random, under the 10% line, which must
    /// not cause a rollback either (runs for --duration)
    Edge,
}

impl Scenario {
    fn v2_args(self) -> &'static [&'static str] {
        match self {
            Scenario::Errors => &["--error-ratio", "0.3", "--after-secs", "1"],
            Scenario::Latency => &["--latency-ms", "300"],
            Scenario::Oom => &["--leak-mb-per-sec", "80", "--after-secs", "1"],
            Scenario::Crash => &["--crash", "--after-secs", "1"],
            Scenario::Health => &["--fail-health", "--after-secs", "1"],
            Scenario::Cpu => &["--cpu-burn", "1", "--after-secs", "1"],
            Scenario::Outage => &["--error-ratio", "1.0", "--after-secs", "1"],
            Scenario::Healthy => &[
                "--error-ratio",
                "0.01",
                "--jitter-ms",
                "20",
                "--after-secs",
                "1",
            ],
            // From a second after it starts: the deploy's own verification is not
            // left to a 7% chance.
            Scenario::Edge => &[
                "--error-ratio",
                "0.07",
                "--jitter-ms",
                "20",
                "--after-secs",
                "1",
            ],
        }
    }

    /// Whether v2 must stay: the run lasts --duration and any incident is a false
    /// rollback.
    fn stays(self) -> bool {
        matches!(self, Scenario::Healthy | Scenario::Edge)
    }

    fn describe(self) -> &'static str {
        match self {
            Scenario::Errors => {
                "answers 30% of API requests with 500 from a second after it starts, while its health check passes"
            }
            Scenario::Latency => "adds 300 ms to every API request",
            Scenario::Oom => "leaks 80 MiB a second (memory limit 64 MiB)",
            Scenario::Crash => "crashes a second after it starts",
            Scenario::Health => "fails its health check a second after it starts",
            Scenario::Cpu => "burns a whole core a second after it starts",
            Scenario::Outage => "fails every API request from a second after it starts",
            Scenario::Healthy => "is healthy: 1% background errors and up to 20 ms of jitter",
            Scenario::Edge => {
                "fails 7% of API requests at random, under the 10% threshold: it must stay"
            }
        }
    }
}

/// What the load generator saw.
#[derive(Default)]
struct LoadStats {
    sent: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
    first_failure_ms: Mutex<Option<i64>>,
}

pub(super) async fn run(
    scenario: Scenario,
    duration: Duration,
    rate: u64,
    json: bool,
) -> Result<i32, CliError> {
    let started = Instant::now();
    let report_dir = std::env::current_dir()?.join(REPORT_DIR);
    let dir = std::env::temp_dir().join(format!("ripcord-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let plan = Plan {
        scenario,
        duration,
        rate,
    };
    let result = run_in(&dir, &report_dir, plan, json, started).await;
    // The report lives outside it, so all of it goes: state, config, logs.
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        eprintln!(
            "warning: cannot remove the demo's temporary directory {}: {e}",
            dir.display()
        );
    }
    result
}

fn free_port() -> Result<u16, CliError> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn say(json: bool, msg: &str) {
    if !json {
        println!("{msg}");
    }
}

async fn run_in(
    dir: &Path,
    report_dir: &Path,
    plan: Plan,
    json: bool,
    started: Instant,
) -> Result<i32, CliError> {
    let scenario = plan.scenario;
    let exe = std::env::current_exe()?;
    let (listen, blue, green) = (free_port()?, free_port()?, free_port()?);
    let config_path = dir.join("ripcord.toml");
    let state_dir = dir.join("state");
    // Tighter than the runbook's defaults so the demo fits in a minute: the same rules,
    // shorter windows.
    let config_text = format!(
        r#"[service.web]
runtime = "process"
router = "proxy"
listen = "127.0.0.1:{listen}"
slots = {{ blue = {blue}, green = {green} }}
health_path = "/health"
bake = "5m"
memory_limit_mb = 64
investigate = "5s"
command = [{exe:?}, "demo-app", "--port", "{{port}}", "--version", "{{version}}"]

[service.web.triggers]
error_rate = {{ above = 0.10, window = "30s" }}
latency_p95 = {{ factor = 5.0, window = "30s" }}
cpu = {{ above = 0.60, for = "3s", action = "investigate" }}
health = {{ consecutive_failures = 3, interval = "1s", timeout = "1s" }}

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
    crate::config::redact::configure(&config.redact);
    say(
        json,
        &format!(
            "ripcord demo ({}): v2 {}; {}.\n  state in {} (removed at the end{})",
            scenario_name(scenario),
            scenario.describe(),
            if scenario.stays() {
                "the guard must leave it alone"
            } else {
                "the guard should roll it back on its own"
            },
            dir.display(),
            if scenario.stays() {
                String::new()
            } else {
                format!("; the report goes to {}", report_dir.display())
            }
        ),
    );

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let watcher_state = state_dir.clone();
    let watcher = tokio::spawn(async move {
        crate::watch::run(
            config,
            &watcher_state,
            crate::sockets::Keep::No,
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
    say(
        json,
        &format!("▶ watcher up: proxy on 127.0.0.1:{listen}, slots {blue} and {green}"),
    );

    // Ctrl-C stops the run here rather than killing the process, so the watcher still
    // stops its releases and the temporary directory is still removed.
    let result = tokio::select! {
        r = drive(&state_dir, report_dir, listen, plan, json, started) => r,
        _ = tokio::signal::ctrl_c() => Err(CliError::new(130, "interrupted")),
    };
    let _ = stop_tx.send(());
    let _ = watcher.await;
    result
}

fn scenario_name(s: Scenario) -> String {
    s.to_possible_value()
        .map(|v| v.get_name().to_string())
        .unwrap_or_default()
}

/// What a demo run does: the fault, how long a must-stay scenario runs, how much load.
#[derive(Debug, Clone, Copy)]
struct Plan {
    scenario: Scenario,
    duration: Duration,
    rate: u64,
}

async fn drive(
    state_dir: &Path,
    report_dir: &Path,
    listen: u16,
    plan: Plan,
    json: bool,
    started: Instant,
) -> Result<i32, CliError> {
    let Plan {
        scenario,
        duration,
        rate,
    } = plan;
    // In the healthy run both releases carry the same background noise: v1's baseline
    // must be as noisy as v2.
    // In the edge run v1 has v2's jitter too (not its errors): a baseline without the
    // jitter would put v2's ordinary requests near the p95 rule's limit, a latency
    // difference the run is not about.
    let v1_args: &[&str] = match scenario {
        Scenario::Healthy => scenario.v2_args(),
        Scenario::Edge => &["--jitter-ms", "20"],
        _ => &[],
    };
    let v1 = deploy(state_dir, "v1", v1_args).await?;
    say(
        json,
        &format!(
            "▶ deploy web v1: healthy, serving, verified ({} ms)",
            v1["total_ms"].as_u64().unwrap_or(0)
        ),
    );

    let stats = Arc::new(LoadStats::default());
    let stop = Arc::new(AtomicBool::new(false));
    let run_for = if scenario.stays() {
        duration
    } else {
        GUARD_DEADLINE
    };
    let load = tokio::spawn(load(
        listen,
        rate,
        stats.clone(),
        stop.clone(),
        run_for + Duration::from_secs(30),
    ));
    say(
        json,
        &format!("▶ traffic: about {rate} requests a second through the proxy"),
    );
    // A second of healthy traffic gives v1 a baseline p95 for the latency rule.
    tokio::time::sleep(Duration::from_millis(1200)).await;

    // One connection for the whole follow loop: it polls every 50 ms.
    let ledger = Ledger::open(state_dir)?;
    let mut watermark = last_event_id(&ledger);
    let v2 = deploy(state_dir, "v2", scenario.v2_args()).await?;
    let v2_deployed_ms = now_ms();
    say(
        json,
        &format!(
            "▶ deploy web v2 ({}): healthy at start, serving, verified ({} ms)",
            scenario.v2_args().join(" "),
            v2["total_ms"].as_u64().unwrap_or(0)
        ),
    );
    say(json, "▶ the guard is watching v2…");

    // Follow the ledger until the incident for v2 closes (or, in the healthy run, until
    // the time is up: any incident then is a false rollback).
    let deadline = Instant::now() + run_for;
    let incident = loop {
        for e in new_events(&ledger, &mut watermark) {
            if matches!(
                e.kind.as_str(),
                "trigger_fired"
                    | "decision"
                    | "incident_opened"
                    | "rollback_started"
                    | "traffic_switched"
                    | "rollback_succeeded"
                    | "rollback_failed"
                    | "frozen"
                    | "oom_killed"
                    | "release_stopped"
            ) {
                print_event(json, &e, v2_deployed_ms);
            }
        }
        let incidents = ledger.incidents(Some("web")).unwrap_or_default();
        if let Some(i) = incidents.iter().find(|i| i.status != "open") {
            break Some(i.clone());
        }
        // In the healthy run any incident at all is the answer.
        if scenario.stays()
            && let Some(i) = incidents.first()
        {
            break Some(i.clone());
        }
        if Instant::now() > deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // A little more traffic on v1 shows the recovery in the chart.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    let _ = load.await;
    for e in new_events(&ledger, &mut watermark) {
        if e.kind == "release_stopped" {
            print_event(json, &e, v2_deployed_ms);
        }
    }

    if scenario.stays() {
        return healthy_summary(
            &ledger,
            scenario,
            incident.is_some(),
            &stats,
            duration,
            json,
            started,
        );
    }
    let incident = match incident {
        Some(i) => ledger.incident(i.id)?.unwrap_or(i),
        None => {
            return Err(CliError::new(
                1,
                format!(
                    "the guard did not act within {} s",
                    GUARD_DEADLINE.as_secs()
                ),
            ));
        }
    };
    let releases = ledger.releases("web")?;
    let events = ledger.events("web", 10_000)?;
    let input = crate::report::ReportInput {
        incident: &incident,
        events: &events,
        releases: &releases,
    };
    let report = crate::report::write(report_dir, &input)?;
    // The summary counts what the report counts: the window its chart shades.
    let counted = crate::report::chart_data(&input).and_then(|c| c.exposure);
    let impact = incident.impact.clone().unwrap_or(Value::Null);
    let rolled_back = incident.switched_at_ms.is_some();
    let verified = incident.verified_at_ms.is_some() && incident.status == "resolved";
    let v2_status = releases
        .iter()
        .find(|r| r.version == "v2")
        .map(|r| r.status.as_str())
        .unwrap_or("?");
    let active = releases
        .iter()
        .find(|r| r.status == crate::ledger::ReleaseStatus::Active)
        .map(|r| r.version.clone());
    let (sent, load_failed) = (
        stats.sent.load(Ordering::Relaxed),
        stats.failed.load(Ordering::Relaxed),
    );
    let summary = json!({
        "scenario": scenario_name(scenario),
        "rolled_back": rolled_back,
        "verified": verified,
        "active": active,
        "bad_release_status": v2_status,
        "incident": incident.id,
        "rule": incident.rule,
        // The report's window: first bad request → traffic switched.
        "failed_requests": counted.as_ref().map(|e| e.errors),
        "total_requests": counted.as_ref().map(|e| e.requests),
        "requests_from_ms": counted.as_ref().map(|e| e.from_ms),
        "requests_to_ms": counted.as_ref().map(|e| e.to_ms),
        // The load generator's own view of the whole run, v1 before and after included.
        "load_sent": sent,
        "load_failed": load_failed,
        "first_bad_to_trigger_ms": impact["first_bad_to_trigger_ms"],
        "first_bad_to_switch_ms": impact["first_bad_to_switch_ms"],
        "first_bad_to_verified_ms": impact["first_bad_to_verified_ms"],
        "total_ms": started.elapsed().as_millis() as u64,
        "report": report,
    });
    if json {
        super::output::print_json(&summary);
    } else {
        let ms = |k: &str| {
            impact[k]
                .as_i64()
                .map_or("unknown".to_string(), |v| format!("{v} ms"))
        };
        println!(
            "\nWhat happened (incident #{}, rule {}):",
            incident.id, incident.rule
        );
        println!(
            "  first bad request → trigger        {}",
            ms("first_bad_to_trigger_ms")
        );
        println!(
            "  first bad request → traffic on v1  {}",
            ms("first_bad_to_switch_ms")
        );
        println!(
            "  first bad request → verified       {}",
            ms("first_bad_to_verified_ms")
        );
        match &counted {
            Some(e) => println!(
                "  requests that failed for users     {} of {} (first bad request → traffic on v1, as the report counts)",
                e.errors, e.requests
            ),
            None => println!("  requests that failed for users     unknown"),
        }
        println!(
            "  the load generator, whole run      {load_failed} of {sent} failed (v1 before and after included)"
        );
        println!(
            "  v2 is now                          {v2_status} (redeploying it needs --force --reason)"
        );
        println!("  report (kept)                      {}", report.display());
        println!(
            "\n{} demo finished in {:.1} s: nobody had to notice.",
            if rolled_back && verified {
                "✓"
            } else {
                "✗"
            },
            started.elapsed().as_secs_f64()
        );
    }
    Ok(if rolled_back && verified { 0 } else { 1 })
}

/// The healthy run's verdict: any incident is a false rollback.
fn healthy_summary(
    ledger: &Ledger,
    scenario: Scenario,
    any: bool,
    stats: &LoadStats,
    duration: Duration,
    json: bool,
    started: Instant,
) -> Result<i32, CliError> {
    let incidents = ledger.incidents(Some("web"))?;
    let false_rollbacks = incidents
        .iter()
        .filter(|i| i.switched_at_ms.is_some())
        .count();
    let summary = json!({
        "scenario": scenario_name(scenario),
        "duration_secs": duration::secs_json(duration),
        "incidents": incidents.len(),
        "false_rollbacks": false_rollbacks,
        "rolled_back": false_rollbacks > 0,
        "failed_requests": stats.failed.load(Ordering::Relaxed),
        "total_requests": stats.sent.load(Ordering::Relaxed),
        "total_ms": started.elapsed().as_millis() as u64,
    });
    if json {
        super::output::print_json(&summary);
    } else {
        println!(
            "
{} {} run of {} s: {} incidents, {false_rollbacks} false rollbacks; {} of {} requests failed ({})",
            if any { "✗" } else { "✓" },
            scenario_name(scenario),
            duration::secs_text(duration),
            incidents.len(),
            stats.failed.load(Ordering::Relaxed),
            stats.sent.load(Ordering::Relaxed),
            if scenario == Scenario::Edge {
                "v2's 7% at random"
            } else {
                "the 1% background"
            }
        );
    }
    Ok(if incidents.is_empty() { 0 } else { 1 })
}

/// One timeline line, timed from the deploy of v2.
fn print_event(json: bool, e: &crate::ledger::Event, since_ms: i64) {
    say(
        json,
        &format!(
            "  {:>+7.3} s  {:<18} {}",
            (e.ts_ms - since_ms) as f64 / 1000.0,
            e.kind,
            e.message
        ),
    );
}

fn last_event_id(ledger: &Ledger) -> i64 {
    ledger
        .events("web", 1)
        .ok()
        .and_then(|e| e.last().map(|e| e.id))
        .unwrap_or(0)
}

fn new_events(ledger: &Ledger, watermark: &mut i64) -> Vec<crate::ledger::Event> {
    let events: Vec<_> = ledger
        .events("web", 500)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.id > *watermark)
        .collect();
    if let Some(last) = events.last() {
        *watermark = last.id;
    }
    events
}

async fn deploy(state_dir: &Path, version: &str, extra: &[&str]) -> Result<Value, CliError> {
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
    let (exit, result, error) = control::call(
        state_dir,
        &Request::Deploy {
            service: "web".into(),
            version: version.into(),
            slot: None,
            argv: Some(argv),
            cwd: None::<PathBuf>,
            image: None,
            force: false,
            reason: None,
        },
        |_| {},
    )
    .await?;
    match error {
        Some(e) => Err(CliError::new(exit, format!("deploy {version}: {e}"))),
        None => Ok(result),
    }
}

/// About 200 requests a second on `/api/demo`, each in its own task (at most 64 in
/// flight), until told to stop or the bounds are reached.
async fn load(
    port: u16,
    rate: u64,
    stats: Arc<LoadStats>,
    stop: Arc<AtomicBool>,
    max_time: Duration,
) {
    let rate = rate.clamp(1, 2_000);
    let max_requests = rate * max_time.as_secs() + 1_000;
    let client = HttpClient::default();
    let url = format!("http://127.0.0.1:{port}/api/demo");
    let limit = Arc::new(tokio::sync::Semaphore::new(64));
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    while !stop.load(Ordering::Relaxed)
        && start.elapsed() < max_time
        && stats.sent.load(Ordering::Relaxed) < max_requests
    {
        tick.tick().await;
        let Ok(permit) = limit.clone().acquire_owned().await else {
            break;
        };
        stats.sent.fetch_add(1, Ordering::Relaxed);
        let (client, url, stats) = (client.clone(), url.clone(), stats.clone());
        tokio::spawn(async move {
            let ok =
                matches!(client.get(&url, Duration::from_secs(5)).await, Ok(r) if r.status == 200);
            if ok {
                stats.ok.fetch_add(1, Ordering::Relaxed);
            } else {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                let mut first = stats
                    .first_failure_ms
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                first.get_or_insert(now_ms());
            }
            drop(permit);
        });
    }
    // Let the requests in flight finish (bounded).
    let _ = tokio::time::timeout(Duration::from_secs(5), limit.acquire_many(64)).await;
}
