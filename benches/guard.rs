//! The guard's benchmark: how fast a sudden failure is rolled back, and whether a healthy
//! release is ever rolled back by mistake.
//!
//! It runs the real binary (`ripcord demo --json`, release build) over loopback: a
//! watcher, the built-in proxy, about 200 requests a second, a good v1 and a v2 that
//! fails every API request a second after it starts (`--scenario outage`), RUNS times;
//! then one healthy run (`--scenario healthy`: 1% background errors and up to 20 ms of
//! jitter) for HEALTHY_SECS, which must cause no rollback.
//!
//! Run: `cargo bench --bench guard` (RIPCORD_BENCH_RUNS and RIPCORD_BENCH_HEALTHY_SECS
//! change the counts). It prints a table; figures are medians and p90s over the runs.

use std::process::Command;
use std::time::Instant;

const BIN: &str = env!("CARGO_BIN_EXE_ripcord");

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn demo(args: &[&str]) -> serde_json::Value {
    let tmp = std::env::temp_dir().join(format!("ripcord-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let out = Command::new(BIN)
        .arg("demo")
        .args(args)
        .arg("--json")
        .env("TMPDIR", &tmp)
        .output()
        .expect("run ripcord demo");
    let _ = std::fs::remove_dir_all(&tmp);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "ripcord demo {args:?} printed no JSON ({e}):\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The value at quantile `q` (nearest rank) of sorted data.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((sorted.len() as f64) * q).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

fn row(name: &str, mut values: Vec<f64>, unit: &str, target: &str) {
    values.sort_by(f64::total_cmp);
    println!(
        "{name:<38} {:>9.0} {:>9.0} {:>9.0} {:<6} {target}",
        quantile(&values, 0.5),
        quantile(&values, 0.9),
        values.last().copied().unwrap_or(f64::NAN),
        unit
    );
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument that is not ours skips the run.
    if std::env::args()
        .skip(1)
        .any(|a| a != "--bench" && !a.starts_with('-') && a != "guard")
    {
        return;
    }
    let runs = env_or("RIPCORD_BENCH_RUNS", 7);
    let healthy_secs = env_or("RIPCORD_BENCH_HEALTHY_SECS", 180);
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "ripcord guard benchmark: {runs} sudden-failure runs at ~200 req/s, one healthy run of {healthy_secs} s; {cores} cores, release build"
    );

    let (mut trigger, mut switch, mut verified, mut failed, mut total) =
        (vec![], vec![], vec![], vec![], vec![]);
    let mut not_rolled_back = 0;
    for i in 0..runs {
        let t0 = Instant::now();
        let v = demo(&["--scenario", "outage"]);
        if v["rolled_back"] != true || v["verified"] != true {
            not_rolled_back += 1;
            eprintln!("run {i}: not rolled back and verified: {v}");
            continue;
        }
        trigger.push(v["first_bad_to_trigger_ms"].as_f64().unwrap_or(f64::NAN));
        switch.push(v["first_bad_to_switch_ms"].as_f64().unwrap_or(f64::NAN));
        verified.push(v["first_bad_to_verified_ms"].as_f64().unwrap_or(f64::NAN));
        failed.push(v["failed_requests"].as_f64().unwrap_or(f64::NAN));
        total.push(v["load_sent"].as_f64().unwrap_or(f64::NAN));
        eprintln!("run {i}: {:.1} s", t0.elapsed().as_secs_f64());
    }
    let healthy = demo(&[
        "--scenario",
        "healthy",
        "--duration",
        &healthy_secs.to_string(),
    ]);

    println!();
    println!(
        "{:<38} {:>9} {:>9} {:>9} {:<6} target",
        "sudden 100% failure (outage)", "median", "p90", "max", "unit"
    );
    row("first bad request → trigger", trigger, "ms", "");
    row(
        "first bad request → traffic on v1",
        switch,
        "ms",
        "< 500 ms (runbook: 60 s)",
    );
    row("first bad request → verified", verified, "ms", "< 10 s");
    row("failed user requests per incident", failed, "req", "< 100");
    row("requests per run", total, "req", "");
    println!("runs not rolled back and verified: {not_rolled_back} of {runs}");
    println!();
    println!(
        "healthy run ({} s, 1% background errors, 0-20 ms jitter): {} requests, {} failed, {} incidents, {} false rollbacks (target 0)",
        healthy_secs,
        healthy["total_requests"],
        healthy["failed_requests"],
        healthy["incidents"],
        healthy["false_rollbacks"]
    );
}
