//! The Docker rollback benchmark: how long from a crashed release to a verified good one,
//! for ripcord's two container strategies and, measured in the same run on the same bad
//! image, for Swarm's own automatic rollback (`--update-failure-action rollback`).
//!
//! Two `FROM scratch` images of the static demo app: v1 healthy, v2 the same binary with
//! `--crash --after-secs 3` (it exits with code 70 three seconds after it starts). Both
//! take their listen address from `DEMO_LISTEN`, so one pair of images serves all cases:
//!
//! 1. ripcord, container blue-green (runtime `docker`, router `proxy`, `bake = "5m"`
//!    so v1's container stays warm): `ripcord watch`, deploy v1, deploy v2, the guard sees
//!    v2's container die and rolls back. Containers listen on 0.0.0.0:8080 on the bridge
//!    network, published on 127.0.0.1 only.
//! 2. ripcord, image replace (router `none`, published on 127.0.0.1): the same, with a
//!    cold rollback (v2 has exited, so no pre-flight: v1 starts on the published port).
//!
//!    When the guard does not roll back within GUARD_WAIT, the run says so and times a
//!    `ripcord rollback` by hand instead (a row of its own: command → verified).
//! 3. Swarm: a single-node swarm (made here if the engine is in none, and left again at
//!    the end), a service on the host network listening on 127.0.0.1 only, v1, then
//!    `docker service update --image v2` with `--update-failure-action rollback`.
//!
//! Every run has its own service names; every container, service and image made here is
//! removed at the end, also on a panic. Traffic goes to 127.0.0.1 only; every wait is
//! bounded.
//!
//! Run: `cargo bench --bench docker_rollback` (RIPCORD_BENCH_RUNS changes the number of
//! runs per case, default 3). Needs a Docker engine.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use bollard::query_parameters::{InspectContainerOptions, InspectServiceOptions, ListTasksOptions};
use ripcord::docker::Engine;
use support::{
    Cleanup, Project, docker, docker_ok, env_or, free_port, get, health_version, now_ms,
    remove_swarm_service, rfc3339_ms, static_demo_app, stats, swarm_create_args, wait_for, words,
};

/// Seconds after start at which v2 exits with code 70.
const CRASH_AFTER_SECS: &str = "3";
/// How long after `deploy v2` returns the guard has to roll back (v2 exits 3 s after it
/// starts; the guard usually acts within a second of that).
const GUARD_WAIT: Duration = Duration::from_secs(20);
/// Swarm's update monitor period (`--update-monitor`).
const SWARM_MONITOR: &str = "5s";

/// A ripcord project for one run: `router` is "proxy" (blue-green) or "none" (image
/// replace).
fn project(router: &str, svc: &str, repo: &str) -> Project {
    let entry = free_port();
    let (routing, publish, extra) = if router == "proxy" {
        let (blue, green) = (free_port(), free_port());
        (
            format!(
                "router = \"proxy\"\nlisten = \"127.0.0.1:{entry}\"\nslots = {{ blue = {blue}, green = {green} }}"
            ),
            String::new(),
            "bake = \"5m\"",
        )
    } else {
        (
            "router = \"none\"".to_string(),
            format!("publish = \"127.0.0.1:{entry}\""),
            "",
        )
    };
    let config = format!(
        r#"[service.{svc}]
runtime = "docker"
{routing}
start_timeout = "20s"
stop_timeout = "5s"
health_path = "/health"
{extra}

[service.{svc}.docker]
image = "{repo}"
env_file = "app.env"
container_port = 8080
{publish}

[service.{svc}.triggers]
error_rate = {{ above = 0.10, window = "30s" }}
health = {{ consecutive_failures = 3, interval = "1s", timeout = "1s" }}

[[service.{svc}.verify]]
name = "the API answers with the expected version"
http = "http://127.0.0.1:{entry}/api/status"
json_field = "version"
json_equals = "{{version}}"
"#
    );
    Project::with_config(
        svc,
        entry,
        &config,
        &[("app.env", "DEMO_LISTEN=0.0.0.0:8080\n")],
    )
}

/// One ripcord run's figures (ms).
#[derive(Debug, Default)]
struct RipcordRun {
    /// Whether the guard rolled back; false: it did not within GUARD_WAIT and the
    /// benchmark ran `ripcord rollback` itself.
    guard: bool,
    /// Guard: incident opened → v1 verified. By hand: `ripcord rollback` started → v1
    /// verified.
    trigger_to_verified: f64,
    /// v2's container died → v1 verified (guard only).
    exit_to_verified: f64,
    /// v2's container died → incident opened (guard only).
    exit_to_opened: f64,
    /// v2's container died → traffic on v1 (switched_at; guard only).
    exit_to_switched: f64,
    /// What ripcord recorded as the rollback's downtime (image replace only).
    downtime: Option<f64>,
}

/// Deploys v1 and v2 and waits for the guard's rollback; reads the incident. When the
/// guard does nothing within GUARD_WAIT, runs `ripcord rollback` and reads its outcome.
fn ripcord_run(router: &str, svc: &str, repo: &str) -> Result<RipcordRun, String> {
    let mut p = project(router, svc, repo);
    p.start_watcher()?;
    p.deploy("v1")?;
    p.deploy("v2")?;
    let incident = wait_for(GUARD_WAIT, Duration::from_millis(200), || {
        let list = p.json(&["incident", "list", "--service", &p.svc])?;
        list.as_array()?
            .iter()
            .find(|i| i["status"] == "resolved" || i["status"] == "failed")
            .cloned()
    });
    let run = match incident {
        Some(incident) => guard_figures(&p, router, &incident)?,
        None => by_hand(&p)?,
    };
    let serving = get(p.entry, "/api/status")
        .and_then(|(_, b)| serde_json::from_str::<serde_json::Value>(&b).ok())
        .and_then(|v| v["version"].as_str().map(str::to_string));
    if serving.as_deref() != Some("v1") {
        return Err(format!("after the rollback users get {serving:?}, not v1"));
    }
    Ok(run)
}

/// The guard's incident, read back: its times and (image replace) the downtime event.
fn guard_figures(
    p: &Project,
    router: &str,
    incident: &serde_json::Value,
) -> Result<RipcordRun, String> {
    let id = incident["id"].as_i64().ok_or("incident without an id")?;
    let show = p
        .json(&["incident", "show", &id.to_string()])
        .ok_or("incident show printed no JSON")?;
    if show["status"] != "resolved" {
        return Err(format!(
            "the rollback did not end verified: {show}\n{}",
            p.log()
        ));
    }
    let ms = |v: &serde_json::Value| v.as_i64().ok_or_else(|| format!("missing in {show}"));
    let opened = ms(&show["opened_at_ms"])?;
    let verified = ms(&show["verified_at_ms"])?;
    let switched = ms(&show["switched_at_ms"])?;
    // The crash finding's time is the engine's die event; it is also the first bad moment.
    let exit = show["impact"]["detected_at_ms"]
        .as_i64()
        .or(show["first_bad_at_ms"].as_i64())
        .ok_or_else(|| format!("no crash time in {show}"))?;
    if show["rule"] != "crash" {
        eprintln!("  note: incident rule is {} (expected crash)", show["rule"]);
    }
    let downtime = if router == "none" {
        // The newest `downtime` event is the rollback's replace.
        let events = p.json(&["events", &p.svc]).unwrap_or_default();
        events
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["kind"] == "downtime" && e["ts_ms"].as_i64() >= Some(opened))
            .max_by_key(|e| e["ts_ms"].as_i64())
            .and_then(|e| {
                let m = e["message"].as_str()?;
                let n = m.split("answered nothing for ").nth(1)?;
                n.split(" ms").next()?.parse::<f64>().ok()
            })
    } else {
        None
    };
    Ok(RipcordRun {
        guard: true,
        trigger_to_verified: (verified - opened) as f64,
        exit_to_verified: (verified - exit) as f64,
        exit_to_opened: (opened - exit) as f64,
        exit_to_switched: (switched - exit) as f64,
        downtime,
    })
}

/// The guard did not act: check that v2's container did exit, then roll back by hand
/// and time the command (start → verified) from its JSON outcome.
fn by_hand(p: &Project) -> Result<RipcordRun, String> {
    let ids = words(&docker(&[
        "ps",
        "-aq",
        "--filter",
        &format!("label=ripcord.service={}", p.svc),
        "--filter",
        "label=ripcord.version=v2",
    ]));
    let exited = ids.iter().any(|id| {
        docker(&["inspect", "--format", "{{.State.Running}}", id])
            .stdout
            .starts_with(b"false")
    });
    let status = p
        .json(&["status", &p.svc])
        .map(|v| v.to_string())
        .unwrap_or_default();
    eprintln!(
        "  the guard did not roll back within {} s of deploying v2 (v2's container exited: {exited}; status {status}); running `ripcord rollback`",
        GUARD_WAIT.as_secs()
    );
    let started = now_ms();
    let out = p.run(&[
        "--json",
        "rollback",
        &p.svc,
        "--reason",
        "benchmark: the guard did not act",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        format!(
            "rollback printed no JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    let verified = v["result"]["verified_at_ms"]
        .as_i64()
        .ok_or_else(|| format!("no verified_at_ms in {v}"))?;
    Ok(RipcordRun {
        guard: false,
        trigger_to_verified: (verified - started) as f64,
        exit_to_verified: f64::NAN,
        exit_to_opened: f64::NAN,
        exit_to_switched: f64::NAN,
        downtime: v["result"]["downtime_ms"].as_f64(),
    })
}

/// One Swarm run's figures (ms).
#[derive(Debug, Default)]
struct SwarmRun {
    /// v2's task container died → UpdateStatus `rollback_completed` (its CompletedAt).
    exit_to_completed: f64,
    /// v2's task container died → a v1 container started again (its StartedAt).
    exit_to_v1_started: f64,
    /// v2's task container died → /health on 127.0.0.1:PORT answers v1.
    exit_to_v1_health: f64,
    /// `rollback_completed` came before v1 answered.
    completed_before_health: bool,
}

fn swarm_run(
    rt: &tokio::runtime::Runtime,
    engine: &Engine,
    cleanup: &mut Cleanup,
    name: &str,
    repo: &str,
) -> Result<SwarmRun, String> {
    let port = free_port();
    let v1 = format!("{repo}:v1");
    let v2 = format!("{repo}:v2");
    cleanup.swarm_services.push(name.to_string());
    let args = swarm_create_args(name, port, SWARM_MONITOR, &[], &v1);
    docker_ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let result = swarm_measure(rt, engine, name, port, &v2);
    remove_swarm_service(name);
    cleanup.swarm_services.retain(|n| n != name);
    result
}

fn swarm_measure(
    rt: &tokio::runtime::Runtime,
    engine: &Engine,
    name: &str,
    port: u16,
    v2: &str,
) -> Result<SwarmRun, String> {
    wait_for(Duration::from_secs(60), Duration::from_millis(100), || {
        (health_version(port).as_deref() == Some("v1")).then_some(())
    })
    .ok_or_else(|| format!("Swarm's v1 task never answered on 127.0.0.1:{port}"))?;
    let c = engine.client();
    let update_started = now_ms();
    docker_ok(&[
        "service",
        "update",
        "--detach",
        "--quiet",
        "--no-resolve-image",
        "--image",
        v2,
        name,
    ]);
    // Poll the engine every 20 ms: the v2 task's exit, the update state, v1's return.
    let mut exit_ms: Option<i64> = None;
    let mut completed_ms: Option<i64> = None;
    let mut health_ms: Option<i64> = None;
    let mut v1_started_ms: Option<i64> = None;
    let mut last_state = String::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    while exit_ms.is_none()
        || completed_ms.is_none()
        || health_ms.is_none()
        || v1_started_ms.is_none()
    {
        // The v1 container's start time is a note: looked for 5 s at most after v1 answers.
        let late = health_ms.is_some_and(|h| now_ms() - h > 5_000);
        if Instant::now() > deadline || late {
            if exit_ms.is_some() && completed_ms.is_some() && health_ms.is_some() {
                break;
            }
            return Err(format!(
                "Swarm's rollback did not finish in 90 s: exit {exit_ms:?}, completed {completed_ms:?}, health {health_ms:?}, update state {last_state:?}"
            ));
        }
        let tasks = rt
            .block_on(c.list_tasks(Some(ListTasksOptions {
                filters: Some(std::collections::HashMap::from([(
                    "service".to_string(),
                    vec![name.to_string()],
                )])),
            })))
            .map_err(|e| format!("task list: {e}"))?;
        for t in &tasks {
            let image = t
                .spec
                .as_ref()
                .and_then(|s| s.container_spec.as_ref())
                .and_then(|c| c.image.clone())
                .unwrap_or_default();
            let status = t.status.clone().unwrap_or_default();
            let state = status.state.map(|s| s.to_string()).unwrap_or_default();
            let container = status
                .container_status
                .and_then(|c| c.container_id)
                .filter(|c| !c.is_empty());
            let created = t.created_at.as_deref().and_then(rfc3339_ms).unwrap_or(0);
            if image == v2 && exit_ms.is_none() && matches!(state.as_str(), "failed" | "complete") {
                // The container's FinishedAt is the die time; the task's status time next.
                let finished = container.as_deref().and_then(|id| {
                    let s = rt
                        .block_on(c.inspect_container(id, None::<InspectContainerOptions>))
                        .ok()?;
                    s.state?.finished_at.as_deref().and_then(rfc3339_ms)
                });
                exit_ms = finished.or(status.timestamp.as_deref().and_then(rfc3339_ms));
            }
            if image != v2
                && created > update_started
                && state == "running"
                && v1_started_ms.is_none()
            {
                v1_started_ms = container.as_deref().and_then(|id| {
                    let s = rt
                        .block_on(c.inspect_container(id, None::<InspectContainerOptions>))
                        .ok()?;
                    s.state?.started_at.as_deref().and_then(rfc3339_ms)
                });
            }
        }
        let svc = rt
            .block_on(c.inspect_service(name, None::<InspectServiceOptions>))
            .map_err(|e| format!("service inspect: {e}"))?;
        if let Some(u) = svc.update_status {
            last_state = u.state.map(|s| s.to_string()).unwrap_or_default();
            if last_state == "rollback_completed" && completed_ms.is_none() {
                completed_ms = Some(
                    u.completed_at
                        .as_deref()
                        .and_then(rfc3339_ms)
                        .unwrap_or_else(now_ms),
                );
            }
            if matches!(last_state.as_str(), "paused" | "rollback_paused") {
                return Err(format!(
                    "Swarm's update ended {last_state}: {}",
                    u.message.unwrap_or_default()
                ));
            }
        }
        if exit_ms.is_some() && health_ms.is_none() {
            let t = now_ms();
            if health_version(port).as_deref() == Some("v1") {
                health_ms = Some(t);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let (exit, completed, health) = (
        exit_ms.unwrap_or_default(),
        completed_ms.unwrap_or_default(),
        health_ms.unwrap_or_default(),
    );
    Ok(SwarmRun {
        exit_to_completed: (completed - exit) as f64,
        exit_to_v1_started: v1_started_ms.map_or(f64::NAN, |s| (s - exit) as f64),
        exit_to_v1_health: (health - exit) as f64,
        completed_before_health: completed < health,
    })
}

fn fmt_ms(x: f64) -> String {
    format!("{x:.0}")
}

fn med(values: &[f64]) -> String {
    stats(values).map_or_else(|| "–".to_string(), |(m, _, _)| fmt_ms(m))
}

fn table_row(case: &str, runs: u64, values: &[f64], notes: &str) {
    let ok = values.iter().filter(|x| !x.is_nan()).count();
    let (m, lo, hi) = stats(values).map_or_else(
        || ("–".to_string(), "–".to_string(), "–".to_string()),
        |(m, lo, hi)| (fmt_ms(m), fmt_ms(lo), fmt_ms(hi)),
    );
    println!("| {case} | {ok}/{runs} | {m} | {lo} | {hi} | {notes} |");
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument that is not ours skips the run.
    if std::env::args()
        .skip(1)
        .any(|a| a != "--bench" && !a.starts_with('-') && a != "docker_rollback")
    {
        return;
    }
    let runs = env_or("RIPCORD_BENCH_RUNS", 3).max(1);
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
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "ripcord Docker rollback benchmark: Docker Engine {} (API {}), {cores} cores, {runs} runs per case",
        info.version, info.api_version
    );

    let mut cleanup = Cleanup::default();
    let repo = format!("ripcord-bench-dr{pid}");
    let app = static_demo_app();
    let build = |cleanup: &mut Cleanup, tag: &str, cmd: &[&str]| -> String {
        let reference = format!("{repo}:{tag}");
        cleanup.images.push(reference.clone());
        let cmd: Vec<String> = cmd.iter().map(|s| s.to_string()).collect();
        let labels = BTreeMap::from([("ripcord.bench".to_string(), reference.clone())]);
        rt.block_on(engine.build_scratch_image_with(&reference, Path::new(&app), &cmd, &labels))
            .unwrap_or_else(|e| panic!("building {reference}: {e}"))
    };
    let v1_id = build(&mut cleanup, "v1", &["--version", "v1"]);
    let v2_id = build(
        &mut cleanup,
        "v2",
        &[
            "--version",
            "v2",
            "--crash",
            "--after-secs",
            CRASH_AFTER_SECS,
        ],
    );
    eprintln!(
        "images: {repo}:v1 {} and {repo}:v2 {} (exits with code 70 {CRASH_AFTER_SECS} s after start)",
        &v1_id[..v1_id.len().min(19)],
        &v2_id[..v2_id.len().min(19)]
    );

    // 1 and 2: ripcord.
    let mut n = 0;
    let mut ripcord_case = |cleanup: &mut Cleanup, router: &str, prefix: &str| {
        let mut out = Vec::new();
        for i in 0..runs {
            n += 1;
            let svc = format!("{prefix}{pid}x{n}");
            cleanup.services.push(svc.clone());
            let t0 = Instant::now();
            match ripcord_run(router, &svc, &repo) {
                Ok(r) => {
                    eprintln!(
                        "{prefix} run {i}: guard {}, trigger→verified {} ms, exit→verified {} ms ({:.1} s)",
                        r.guard,
                        r.trigger_to_verified,
                        r.exit_to_verified,
                        t0.elapsed().as_secs_f64()
                    );
                    out.push(r);
                }
                Err(e) => eprintln!("{prefix} run {i} failed: {e}"),
            }
        }
        out
    };
    let bg = ripcord_case(&mut cleanup, "proxy", "drbg");
    let ir = ripcord_case(&mut cleanup, "none", "drir");

    // 3: Swarm.
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
    let mut sw = Vec::new();
    for i in 0..runs {
        let name = format!("drsw{pid}x{i}");
        let t0 = Instant::now();
        match swarm_run(&rt, &engine, &mut cleanup, &name, &repo) {
            Ok(r) => {
                eprintln!(
                    "swarm run {i}: exit→rollback_completed {} ms, exit→v1 /health {} ms ({:.1} s)",
                    r.exit_to_completed,
                    r.exit_to_v1_health,
                    t0.elapsed().as_secs_f64()
                );
                sw.push(r);
            }
            Err(e) => eprintln!("swarm run {i} failed: {e}"),
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

    // A column over the runs that worked, padded with NaN (a failed run) to RUNS.
    let col = |rs: &[&RipcordRun], f: fn(&RipcordRun) -> f64| -> Vec<f64> {
        let mut v: Vec<f64> = rs.iter().map(|r| f(r)).collect();
        v.resize(runs as usize, f64::NAN);
        v
    };
    let scol = |rs: &[SwarmRun], f: fn(&SwarmRun) -> f64| -> Vec<f64> {
        let mut v: Vec<f64> = rs.iter().map(f).collect();
        v.resize(runs as usize, f64::NAN);
        v
    };
    let (bg_guard, bg_hand) = (by_guard(&bg, true), by_guard(&bg, false));
    let (ir_guard, ir_hand) = (by_guard(&ir, true), by_guard(&ir, false));
    let bg_exit = col(&bg_guard, |r| r.exit_to_verified);
    let ir_exit = col(&ir_guard, |r| r.exit_to_verified);
    let sw_completed = scol(&sw, |r| r.exit_to_completed);
    let sw_health = scol(&sw, |r| r.exit_to_v1_health);
    let early = sw.iter().filter(|r| r.completed_before_health).count();
    let guard_note = |hand: usize| {
        if hand == 0 {
            String::new()
        } else {
            format!(
                "; **the guard did not roll back in {hand} of {runs} runs** (within {} s; see the next row)",
                GUARD_WAIT.as_secs()
            )
        }
    };

    println!();
    println!("| case | runs | median trigger→verified (ms) | min | max | notes |");
    println!("|---|---|---|---|---|---|");
    table_row(
        "ripcord, container blue-green (router proxy)",
        runs,
        &col(&bg_guard, |r| r.trigger_to_verified),
        &format!(
            "incident opened → v1 verified (warm v1, bake 300 s); from v2's exit: {} ms (exit → opened {} ms, → traffic on v1 {} ms){}",
            med(&bg_exit),
            med(&col(&bg_guard, |r| r.exit_to_opened)),
            med(&col(&bg_guard, |r| r.exit_to_switched)),
            guard_note(bg_hand.len()),
        ),
    );
    if !bg_hand.is_empty() {
        table_row(
            "ripcord, container blue-green, `ripcord rollback` by hand",
            runs,
            &col(&bg_hand, |r| r.trigger_to_verified),
            "command started → v1 verified",
        );
    }
    table_row(
        "ripcord, image replace (router none)",
        runs,
        &col(&ir_guard, |r| r.trigger_to_verified),
        &format!(
            "incident opened → v1 verified (cold: v2 has exited, so v1 starts on the published port at once); from v2's exit: {} ms (exit → opened {} ms); recorded downtime {} ms{}",
            med(&ir_exit),
            med(&col(&ir_guard, |r| r.exit_to_opened)),
            med(&col(&ir_guard, |r| r.downtime.unwrap_or(f64::NAN))),
            guard_note(ir_hand.len()),
        ),
    );
    if !ir_hand.is_empty() {
        table_row(
            "ripcord, image replace, `ripcord rollback` by hand",
            runs,
            &col(&ir_hand, |r| r.trigger_to_verified),
            &format!(
                "command started → v1 verified (cold: v2 has exited, so v1 starts on the published port at once); recorded downtime {} ms",
                med(&col(&ir_hand, |r| r.downtime.unwrap_or(f64::NAN))),
            ),
        );
    }
    table_row(
        "Swarm auto rollback: `rollback_completed`",
        runs,
        &sw_completed,
        &format!(
            "v2 task's container exit → UpdateStatus rollback_completed (its CompletedAt); --update-monitor {SWARM_MONITOR}; before v1 answered in {early} of {} runs",
            sw.len()
        ),
    );
    table_row(
        "Swarm auto rollback: v1 answers /health",
        runs,
        &sw_health,
        &format!(
            "v2 task's container exit → v1's new task answers 200 on 127.0.0.1 (its container started at {} ms)",
            med(&scol(&sw, |r| r.exit_to_v1_started)),
        ),
    );
    println!();
    println!("From the same start event for all (the v2 container's exit, engine time):");
    println!();
    println!("| case | runs | median exit→v1 back (ms) | min | max | notes |");
    println!("|---|---|---|---|---|---|");
    table_row(
        "ripcord, container blue-green (guard)",
        runs,
        &bg_exit,
        "die → v1 verified through the proxy",
    );
    table_row(
        "ripcord, image replace (guard)",
        runs,
        &ir_exit,
        "die → v1 verified on the published port",
    );
    table_row(
        "Swarm, v1 answers /health",
        runs,
        &sw_health,
        "die → v1 answers (Swarm verifies nothing)",
    );
    drop(cleanup);
}

/// The runs in which the guard did (`true`) or did not roll back.
fn by_guard(rs: &[RipcordRun], guard: bool) -> Vec<&RipcordRun> {
    rs.iter().filter(|r| r.guard == guard).collect()
}
