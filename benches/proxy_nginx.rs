//! Issue 18's acceptance bench: ripcord's built-in proxy against nginx, both in front of
//! the same demo app, loaded with wrk.
//!
//! Targets: throughput >= nginx's and p99 <= 1.1x nginx's (medians of five or more
//! alternating rounds), wrk with 32 connections, the demo app as the upstream; nginx with 2
//! workers, upstream keep-alive and a buffered access log; zero non-2xx; the watcher's RSS
//! under 30 MB under that load.
//!
//! Everything runs on 127.0.0.1 with the real binaries: `ripcord demo-app`, Debian's nginx
//! (its own config in a temp dir), `ripcord watch` with an external-runtime service, and
//! wrk. Each round runs nginx and the proxy (their order alternates between rounds) and
//! then the app alone, for reference. Run: `cargo bench --bench proxy_nginx`;
//! `bench/README.md` explains the table and the knobs.
//!
//! Exit status: 0 if every nginx and proxy run had zero non-2xx answers and zero socket
//! errors, 1 otherwise (the speed targets are reported, not enforced), 2 if the bench could
//! not set itself up (no wrk, a child that would not start, unreadable wrk output).

#[path = "../tests/nginx_fixture/mod.rs"]
mod nginx_fixture;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nginx_fixture::{Nginx, free_port, http_get, nginx_bin};

const BIN: &str = env!("CARGO_BIN_EXE_ripcord");
/// Rounds by default; `RIPCORD_BENCH_RUNS` overrides, never below `MIN_ROUNDS`.
const ROUNDS: usize = 7;
const MIN_ROUNDS: usize = 5;
/// Seconds per wrk run by default; `RIPCORD_BENCH_SECS` overrides.
const SECS: u64 = 5;
const WARMUP_SECS: u64 = 2;
const CONNECTIONS: usize = 32;
const WRK_THREADS: usize = 2;
const PATH: &str = "/api/bench";
/// Clock ticks per second of /proc/PID/stat's utime and stime.
const CLK_TCK: u64 = 100;
const RSS_SAMPLE: Duration = Duration::from_millis(200);
/// The watcher's RSS target, in kB as /proc reports it (30 MB).
const RSS_LIMIT_KB: u64 = 30 * 1024;

type Setup<T> = Result<T, String>;

/// A child killed (SIGTERM, then SIGKILL after 15 s) when dropped.
struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.0.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Fields of /proc/PID/stat after the command name (which may hold spaces and parens):
/// index 0 is field 3 (`state`).
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    Some(stat.rsplit_once(')')?.1.split_whitespace().collect())
}

/// utime + stime (clock ticks) summed over the threads of `pid` (/proc/PID/task/*/stat).
fn cpu_ticks(pid: u32) -> u64 {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    dir.filter_map(|e| {
        let stat = std::fs::read_to_string(e.ok()?.path().join("stat")).ok()?;
        let f = stat_fields(&stat)?;
        // Fields 14 and 15 of stat(5).
        Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
    })
    .sum()
}

fn cpu_ticks_all(pids: &[u32]) -> u64 {
    pids.iter().map(|&p| cpu_ticks(p)).sum()
}

/// A `VmRSS:`-style line of /proc/PID/status, in kB.
fn status_kb(pid: u32, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn wait_port(port: u16, what: &str) -> Setup<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() >= deadline {
            return Err(format!("{what}: port {port} never opened"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn spawn(cmd: &mut Command, what: &str) -> Setup<Child> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {what}: {e}"))
}

fn demo_app(port: u16) -> Setup<Kill> {
    let child = spawn(
        Command::new(BIN).args(["demo-app", "--port", &port.to_string(), "--version", "v1"]),
        "the demo app",
    )?;
    let app = Kill(child);
    wait_port(port, "the demo app")?;
    Ok(app)
}

/// nginx as people run it in front of an app: 2 workers, keep-alive to the upstream, an
/// access log written through a 64 kB buffer. Started by the tests' fixture, which stops
/// it (workers included) when dropped.
fn nginx(prefix: &Path, port: u16, app_port: u16) -> Setup<Nginx> {
    std::fs::create_dir_all(prefix).map_err(|e| format!("nginx prefix: {e}"))?;
    let site = prefix.join("site.conf");
    let text = format!(
        "upstream app {{\n    server 127.0.0.1:{app_port};\n    keepalive 64;\n}}\n\
         server {{\n    listen 127.0.0.1:{port};\n    location / {{\n        proxy_pass http://app;\n        \
         proxy_http_version 1.1;\n        proxy_set_header Connection \"\";\n    }}\n}}\n"
    );
    std::fs::write(&site, text).map_err(|e| format!("write {}: {e}", site.display()))?;
    let site = site.display().to_string();
    // The fixture panics with nginx's error log when nginx does not come up.
    std::panic::catch_unwind(|| {
        Nginx::start_with(prefix, &site, port, 2, "combined buffer=64k flush=1s")
    })
    .map_err(|_| "nginx did not start (its error log is printed above)".to_string())
}

fn ripcord_cmd(dir: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("--config")
        .arg(dir.join("ripcord.toml"))
        .arg("--state-dir")
        .arg(dir.join("state"));
    cmd
}

fn watch(dir: &Path) -> Setup<Kill> {
    let watcher = Kill(spawn(ripcord_cmd(dir).arg("watch"), "ripcord watch")?);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !dir.join("state/ripcord.sock").exists() {
        if Instant::now() >= deadline {
            return Err("the watcher never started (no state/ripcord.sock)".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    Ok(watcher)
}

fn deploy(dir: &Path) -> Setup<()> {
    let out = ripcord_cmd(dir)
        .args(["deploy", "web", "v1", "--slot", "blue"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("ripcord deploy: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "ripcord deploy web v1 --slot blue failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// One GET must answer 200 before any load goes to `port`.
fn probe(port: u16, what: &str) -> Setup<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = http_get(port, PATH);
        if matches!(got, Ok((200, _))) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("{what} did not answer 200 on {PATH}: {got:?}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// What one wrk run reports.
#[derive(Clone, Copy, Default)]
struct Run {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    requests: u64,
    non_2xx: u64,
    socket_errors: u64,
}

/// wrk's latency figure (`812.00us`, `1.20ms`, `2.00s`, `1.00m`) in µs.
fn latency_us(s: &str) -> Option<f64> {
    let (num, scale) = if let Some(n) = s.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1e6)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60e6)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3600e6)
    } else {
        return None;
    };
    Some(num.parse::<f64>().ok()? * scale)
}

fn parse_wrk(out: &str) -> Option<Run> {
    let mut run = Run::default();
    let (mut rps, mut p50, mut p99) = (None, None, None);
    let mut in_dist = false;
    for line in out.lines().map(str::trim) {
        if line.starts_with("Latency Distribution") {
            in_dist = true;
        } else if in_dist && line.starts_with("50%") {
            p50 = latency_us(line.split_whitespace().nth(1)?);
        } else if in_dist && line.starts_with("99%") {
            p99 = latency_us(line.split_whitespace().nth(1)?);
            in_dist = false;
        } else if let Some(rest) = line.strip_prefix("Requests/sec:") {
            rps = rest.trim().parse::<f64>().ok();
        } else if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            run.non_2xx = rest.trim().parse().ok()?;
        } else if let Some(rest) = line.strip_prefix("Socket errors:") {
            // `connect 0, read 0, write 0, timeout 0`
            for part in rest.split(',') {
                run.socket_errors += part.split_whitespace().last()?.parse::<u64>().ok()?;
            }
        } else if line.contains(" requests in ") {
            run.requests = line.split_whitespace().next()?.parse().ok()?;
        }
    }
    run.rps = rps?;
    run.p50_us = p50?;
    run.p99_us = p99?;
    Some(run)
}

/// `wrk -t2 -c32 -dNs --latency http://127.0.0.1:PORT/api/bench`, bounded in time.
fn wrk(port: u16, secs: u64) -> Setup<Run> {
    let url = format!("http://127.0.0.1:{port}{PATH}");
    let args = [
        format!("-t{WRK_THREADS}"),
        format!("-c{CONNECTIONS}"),
        format!("-d{secs}s"),
        "--latency".to_string(),
        url,
    ];
    let mut child = Command::new("wrk")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start wrk: {e}"))?;
    // wrk stops itself after `secs`; the deadline is for a wrk that hangs.
    let deadline = Instant::now() + Duration::from_secs(secs + 30);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("wrk {args:?} did not finish within {}s", secs + 30));
            }
        }
    };
    // wrk's output is a few hundred bytes, well under a pipe buffer: reading after the
    // exit cannot deadlock.
    let (mut out, mut err) = (String::new(), String::new());
    if let Some(mut s) = child.stdout.take() {
        let _ = s.read_to_string(&mut out);
    }
    if let Some(mut s) = child.stderr.take() {
        let _ = s.read_to_string(&mut err);
    }
    if !status.success() {
        return Err(format!("wrk {args:?} failed ({status}): {out}{err}"));
    }
    parse_wrk(&out).ok_or_else(|| format!("cannot read wrk's output for {args:?}:\n{out}{err}"))
}

/// A wrk run against `port` with `pids`' CPU ticks sampled around it, and, if `rss_pid`
/// is given, that process's VmRSS sampled every 200 ms during it (max, kB).
fn measured(port: u16, secs: u64, pids: &[u32], rss_pid: Option<u32>) -> Setup<(Run, u64, u64)> {
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let Some(pid) = rss_pid else { return 0 };
            let deadline = Instant::now() + Duration::from_secs(secs + 60);
            let mut max = 0;
            loop {
                max = max.max(status_kb(pid, "VmRSS").unwrap_or(0));
                if stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
                    return max;
                }
                std::thread::sleep(RSS_SAMPLE);
            }
        });
        let before = cpu_ticks_all(pids);
        let run = wrk(port, secs);
        let ticks = cpu_ticks_all(pids).saturating_sub(before);
        stop.store(true, Ordering::Relaxed);
        let rss = sampler.join().unwrap_or(0);
        run.map(|r| (r, ticks, rss))
    })
}

fn cpu_us_per_request(ticks: u64, requests: u64) -> f64 {
    ticks as f64 * (1e6 / CLK_TCK as f64) / requests.max(1) as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if !n.is_multiple_of(2) {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn env_num(key: &str) -> Setup<Option<u64>> {
    match std::env::var(key) {
        Ok(v) => v
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| format!("{key}={v:?} is not a number")),
        Err(_) => Ok(None),
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "?".into())
}

fn first_line(cmd: &mut Command) -> String {
    cmd.stdin(Stdio::null())
        .output()
        .map(|o| {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            text.lines().next().unwrap_or("").trim().to_string()
        })
        .unwrap_or_else(|e| format!("({e})"))
}

fn machine_header(rounds: usize, secs: u64) {
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "?".into());
    let profile = if cfg!(debug_assertions) {
        "debug (figures mean nothing)"
    } else {
        "release"
    };
    println!("ripcord proxy vs nginx (issue 18), everything on 127.0.0.1");
    println!("machine: nproc {nproc}, {cpu}, build {profile}");
    println!(
        "{}; {}",
        first_line(Command::new(nginx_bin()).arg("-v")),
        first_line(Command::new("wrk").arg("-v"))
    );
    println!("load average at start: {}", loadavg());
    println!(
        "load: wrk -t{WRK_THREADS} -c{CONNECTIONS} -d{secs}s --latency GET {PATH}; {rounds} rounds, \
         nginx and proxy alternating first, then direct; {WARMUP_SECS} s warm-up per path"
    );
    println!(
        "nginx: 2 workers, upstream keepalive 64 (HTTP/1.1), access_log combined buffer=64k flush=1s"
    );
}

fn pass(ok: bool) -> &'static str {
    if ok { "PASS" } else { "FAIL" }
}

/// Runs the bench; `Ok(true)` if nginx and the proxy had no errors.
fn run() -> Setup<bool> {
    let rounds = match env_num("RIPCORD_BENCH_RUNS")? {
        Some(n) => (n as usize).max(MIN_ROUNDS),
        None => ROUNDS,
    };
    let secs = env_num("RIPCORD_BENCH_SECS")?.unwrap_or(SECS).max(1);
    if on_path("wrk").is_none() {
        return Err(
            "wrk is not on PATH: install it with `apt-get install -y wrk`; this bench needs it"
                .into(),
        );
    }
    machine_header(rounds, secs);

    let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    let (app_port, other, nginx_port, proxy_port) =
        (free_port(), free_port(), free_port(), free_port());
    let _app = demo_app(app_port)?;
    let nginx = nginx(&dir.path().join("nginx"), nginx_port, app_port)?;
    std::fs::write(
        dir.path().join("ripcord.toml"),
        format!(
            "[service.web]\nruntime = \"external\"\nlisten = \"127.0.0.1:{proxy_port}\"\nslots = {{ blue = {app_port}, green = {other} }}\n"
        ),
    )
    .map_err(|e| format!("write ripcord.toml: {e}"))?;
    let watcher = watch(dir.path())?;
    deploy(dir.path())?;
    let watcher_pid = watcher.0.id();
    probe(app_port, "the demo app")?;
    probe(nginx_port, "nginx")?;
    probe(proxy_port, "ripcord's proxy")?;

    for port in [nginx_port, proxy_port, app_port] {
        wrk(port, WARMUP_SECS)?;
    }

    println!();
    println!(
        "{:<5} {:<6} {:>11} {:>11} {:>11} {:>11} {:>9} {:>9} {:>11}",
        "round",
        "first",
        "nginx r/s",
        "nginx p99",
        "proxy r/s",
        "proxy p99",
        "r/s x",
        "p99 x",
        "direct r/s"
    );
    let (mut ng, mut px, mut direct) = (Vec::new(), Vec::new(), Vec::new());
    let (mut ng_cpu, mut px_cpu) = (Vec::new(), Vec::new());
    let mut max_rss_kb = 0;
    for round in 0..rounds {
        let nginx_first = round.is_multiple_of(2);
        let (mut n, mut p) = (None, None);
        for is_nginx in [nginx_first, !nginx_first] {
            if is_nginx {
                let (r, ticks, _) = measured(nginx_port, secs, &nginx.pids(), None)?;
                ng_cpu.push(cpu_us_per_request(ticks, r.requests));
                n = Some(r);
            } else {
                let (r, ticks, rss) =
                    measured(proxy_port, secs, &[watcher_pid], Some(watcher_pid))?;
                px_cpu.push(cpu_us_per_request(ticks, r.requests));
                max_rss_kb = max_rss_kb.max(rss);
                p = Some(r);
            }
        }
        let d = wrk(app_port, secs)?;
        let (n, p) = (n.unwrap_or_default(), p.unwrap_or_default());
        println!(
            "{:<5} {:<6} {:>11.0} {:>8.0} µs {:>11.0} {:>8.0} µs {:>9.3} {:>9.3} {:>11.0}",
            round + 1,
            if nginx_first { "nginx" } else { "proxy" },
            n.rps,
            n.p99_us,
            p.rps,
            p.p99_us,
            p.rps / n.rps,
            p.p99_us / n.p99_us,
            d.rps
        );
        ng.push(n);
        px.push(p);
        direct.push(d);
    }
    let hwm_kb = status_kb(watcher_pid, "VmHWM").unwrap_or(0);

    let med = |runs: &[Run], f: fn(&Run) -> f64| median(runs.iter().map(f).collect());
    let (ng_rps, px_rps) = (med(&ng, |r| r.rps), med(&px, |r| r.rps));
    let (ng_p99, px_p99) = (med(&ng, |r| r.p99_us), med(&px, |r| r.p99_us));
    let (ng_p50, px_p50) = (med(&ng, |r| r.p50_us), med(&px, |r| r.p50_us));
    let rps_ratio = median(ng.iter().zip(&px).map(|(n, p)| p.rps / n.rps).collect());
    let p99_ratio = median(
        ng.iter()
            .zip(&px)
            .map(|(n, p)| p.p99_us / n.p99_us)
            .collect(),
    );
    let errors = |runs: &[Run]| {
        (
            runs.iter().map(|r| r.non_2xx).sum::<u64>(),
            runs.iter().map(|r| r.socket_errors).sum::<u64>(),
        )
    };
    let (ng_err, px_err, d_err) = (errors(&ng), errors(&px), errors(&direct));
    let mb = |kb: u64| kb as f64 / 1024.0;

    println!();
    println!("medians over {rounds} rounds:");
    println!(
        "  nginx  {ng_rps:>9.0} req/s  p50 {ng_p50:>6.0} µs  p99 {ng_p99:>6.0} µs  CPU {:>5.1} µs/request (master + workers)",
        median(ng_cpu)
    );
    println!(
        "  proxy  {px_rps:>9.0} req/s  p50 {px_p50:>6.0} µs  p99 {px_p99:>6.0} µs  CPU {:>5.1} µs/request (the watcher)",
        median(px_cpu)
    );
    println!(
        "  direct {:>9.0} req/s  p50 {:>6.0} µs  p99 {:>6.0} µs",
        med(&direct, |r| r.rps),
        med(&direct, |r| r.p50_us),
        med(&direct, |r| r.p99_us)
    );
    println!(
        "  proxy/nginx req/s: median of per-round ratios {rps_ratio:.3}, ratio of medians {:.3}",
        px_rps / ng_rps
    );
    println!(
        "  proxy/nginx p99:   median of per-round ratios {p99_ratio:.3}, ratio of medians {:.3}",
        px_p99 / ng_p99
    );
    println!(
        "  watcher RSS: max {:.1} MB during load (VmRSS every {} ms), VmHWM {:.1} MB",
        mb(max_rss_kb),
        RSS_SAMPLE.as_millis(),
        mb(hwm_kb)
    );
    for (name, (non, sock)) in [("nginx", ng_err), ("proxy", px_err), ("direct", d_err)] {
        println!("  {name:<6} non-2xx {non}, socket errors {sock} (all rounds)");
    }
    let clean = ng_err == (0, 0) && px_err == (0, 0);
    let rss_ok = max_rss_kb < RSS_LIMIT_KB && hwm_kb < RSS_LIMIT_KB;
    println!();
    println!(
        "{} throughput: median per-round proxy/nginx req/s {rps_ratio:.3} >= 1.00",
        pass(rps_ratio >= 1.0)
    );
    println!(
        "{} p99: median per-round proxy/nginx p99 {p99_ratio:.3} <= 1.10",
        pass(p99_ratio <= 1.10)
    );
    println!(
        "{} errors: nginx {} non-2xx + {} socket, proxy {} non-2xx + {} socket, must all be 0",
        pass(clean),
        ng_err.0,
        ng_err.1,
        px_err.0,
        px_err.1
    );
    println!(
        "{} RSS: watcher max {:.1} MB during load, VmHWM {:.1} MB, < 30 MB",
        pass(rss_ok),
        mb(max_rss_kb),
        mb(hwm_kb)
    );
    println!("load average at end: {}", loadavg());
    Ok(clean)
}

fn main() {
    // `cargo bench -- FILTER` runs every bench binary with the filter; run only for ours.
    if std::env::args()
        .skip(1)
        .any(|a| a != "--bench" && !a.starts_with('-') && a != "proxy_nginx")
    {
        return;
    }
    // Every child is stopped by its drop guard inside `run`, before the exit.
    let code = match run() {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(err) => {
            eprintln!("proxy_nginx bench: {err}");
            2
        }
    };
    std::process::exit(code);
}
