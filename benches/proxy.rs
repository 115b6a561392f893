//! Benchmark of ripcord's reverse proxy: how much latency and throughput it costs compared
//! with talking to the app directly, and how fast a blue/green switch takes effect.
//!
//! Everything runs in one process over 127.0.0.1: two in-process demo apps (blue answers
//! `v1`, green answers `v2`), one `ripcord::proxy::Proxy`, and a load generator that drives
//! keep-alive HTTP/1.1 connections with hyper's low-level client, one task per connection.
//! It measures:
//!
//! 1. `GET /api/bench` latency (p50, p99) and throughput, direct to blue and through the
//!    proxy, at 1 and 32 concurrent connections, alternating direct and proxy runs.
//! 2. The cost of one `Proxy::switch` call, and, under load from 8 connections, the time
//!    from the switch call to the first response served by the new slot, with every failed
//!    request counted.
//!
//! Run it with `cargo bench --bench proxy`; `bench/README.md` explains how to read the table.
//! It exits with status 1 if any request failed or was answered by the wrong slot, because a
//! switch that drops or misroutes requests is a bug rather than a slow result.

use std::error::Error as StdError;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HOST, HeaderValue};
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use ripcord::config::Slot;
use ripcord::demo_app::{self, DemoAppArgs};
use ripcord::proxy::{Proxy, RequestRecord, Target};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Barrier, mpsc, oneshot};
use tokio::task::JoinHandle;

type BoxError = Box<dyn StdError + Send + Sync>;

/// Two workers, because the reference machine has two cores and the client, the proxy and
/// both apps share them, as they would on the one host ripcord manages.
const WORKERS: usize = 2;
/// Runs per configuration; every figure in the table is the median over these runs.
const RUNS: usize = 5;
/// Concurrent connections and requests per run. One connection measures the bare round
/// trip; 32 connections saturate two cores, so they measure throughput and queueing.
const LEVELS: [(usize, usize); 2] = [(1, 5_000), (32, 20_000)];
/// Requests per warm-up run, thrown away, so the first measured run does not pay for lazy
/// initialisation or for the proxy opening its upstream connections.
const WARMUP_REQUESTS: usize = 1_000;
/// The longest one measured run may take; a run that hits it is marked in the table.
const RUN_CAP: Duration = Duration::from_secs(4);
/// The path every request asks for; any `/api/...` path gets the same small JSON answer.
const PATH: &str = "/api/bench";

/// How many switches the bare switch-cost measurement makes.
const SWITCH_COST_COUNT: usize = 10_000;
/// Switches are timed in batches, because one `Instant::now()` pair costs about as much as
/// the switch itself and would swamp it.
const SWITCH_BATCH: usize = 100;
/// Connections looping requests while the switch under load happens.
const SWITCH_CONNS: usize = 8;
/// Load before the switch, so every connection is in its steady request loop when it comes.
const SWITCH_BEFORE: Duration = Duration::from_millis(150);
/// Load after the switch, long enough for many responses from the new slot.
const SWITCH_AFTER: Duration = Duration::from_millis(250);
/// Capacity of the request-record channel, the size `ripcord watch` gives it.
const RECORD_CHANNEL: usize = 65_536;

fn main() {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKERS)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("proxy bench: cannot start the tokio runtime: {err}");
            std::process::exit(2);
        }
    };
    let result = runtime.block_on(run());
    // Every server has been shut down by now; the timeout only guards against a stray task
    // keeping the process alive after the table is printed.
    runtime.shutdown_timeout(Duration::from_secs(2));
    match result {
        Ok(0) => {}
        Ok(failed) => {
            eprintln!("proxy bench: {failed} request(s) failed or were misrouted; expected none");
            std::process::exit(1);
        }
        Err(err) => {
            eprintln!("proxy bench: {err}");
            std::process::exit(2);
        }
    }
}

/// Runs every measurement, prints the tables and returns how many requests failed or
/// were answered by the wrong slot.
async fn run() -> Result<u64, BoxError> {
    let bench_start = Instant::now();
    let machine_start = machine_cpu();
    let own_start = process_cpu();
    let blue = Upstream::start(Slot::Blue, "v1", 1).await?;
    let green = Upstream::start(Slot::Green, "v2", 2).await?;

    // The proxy gets a record channel with a consumer that drains it on a 100 ms tick, as
    // the guard in `ripcord watch` does, so the measured cost includes the `try_send` of
    // every record.
    let (records_tx, records_rx) = mpsc::channel(RECORD_CHANNEL);
    let delivered = Arc::new(AtomicU64::new(0));
    let drainer = tokio::spawn(drain_records(records_rx, Arc::clone(&delivered)));
    let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let (proxy, proxy_task) = Proxy::bind("bench", listen, Some(records_tx)).await?;
    proxy.switch(Some(blue.target.clone()));
    // One request to each app and one through the proxy before anything is measured: it
    // proves the set-up answers with the expected versions, and it lets the apps print
    // their start lines before the table rather than in the middle of it.
    wait_ready(blue.target.addr, 1).await?;
    wait_ready(green.target.addr, 2).await?;
    wait_ready(proxy.local_addr(), 1).await?;

    // The demo apps print their start lines on stdout; this blank line keeps them apart
    // from the table.
    println!();
    print_header();

    let mut failed = 0;
    let latency = measure_latency(blue.target.addr, proxy.local_addr()).await;
    print_latency_table(&latency);
    failed += latency.iter().map(|row| row.failed).sum::<u64>();

    let switch_cost = measure_switch_cost(&proxy, &blue.target, &green.target);
    let rounds = measure_switch_under_load(&proxy, &blue.target, &green.target).await;
    print_switch_table(&switch_cost, &rounds);
    failed += rounds
        .iter()
        .map(|round| round.failed + round.misrouted)
        .sum::<u64>();

    let counters = proxy.counters();
    let upstream_errors = counters.upstream_errors.load(Ordering::Relaxed);
    failed += upstream_errors;
    print_summary(&latency, &rounds);

    proxy.shutdown();
    blue.stop().await;
    green.stop().await;
    // Open client connections were closed when their tasks ended, so the proxy's drain has
    // nothing to wait for; the timeout is a backstop, not an expected path.
    let _ = tokio::time::timeout(Duration::from_secs(5), proxy_task).await;
    let requests = counters.requests.load(Ordering::Relaxed);
    let dropped = counters.records_dropped.load(Ordering::Relaxed);
    drop(proxy);
    // Dropping the proxy drops the last record sender, which ends the drainer.
    let _ = tokio::time::timeout(Duration::from_secs(2), drainer).await;
    println!(
        "proxy counters: requests {requests}, upstream errors {upstream_errors}, records \
         delivered {}, records dropped {dropped}",
        delivered.load(Ordering::Relaxed),
    );
    // CPU the rest of the machine used while the bench ran. Everything here is sensitive
    // to it, so it says whether to trust this run: near 0 is a quiet machine.
    let others = machine_start
        .zip(machine_cpu())
        .zip(own_start.zip(process_cpu()))
        .map(|((m0, m1), (o0, o1))| m1.saturating_sub(m0).saturating_sub(o1.saturating_sub(o0)));
    let wall = bench_start.elapsed().as_secs_f64();
    println!(
        "wall time {wall:.1} s; CPU used by other processes meanwhile: {}",
        others.map_or_else(
            || "unknown".to_owned(),
            |cpu| format!(
                "{:.1} s ({:.0}% of one core)",
                cpu.as_secs_f64(),
                cpu.as_secs_f64() / wall * 100.0
            )
        )
    );
    Ok(failed)
}

/// One in-process demo app on a loopback port chosen by the OS.
struct Upstream {
    target: Target,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Upstream {
    async fn start(slot: Slot, version: &str, release_id: i64) -> std::io::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let args = DemoAppArgs {
            app_version: version.to_owned(),
            ..DemoAppArgs::default()
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(demo_app::serve(listener, args, async move {
            let _ = stopped.await;
        }));
        Ok(Self {
            target: Target {
                slot,
                addr,
                release_id,
                version: version.to_owned(),
            },
            stop,
            task,
        })
    }

    /// Asks the app to shut down and waits, bounded, for it to finish.
    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}

/// Counts records the way the guard in `ripcord watch` consumes them: drained in a batch
/// on each tick (`watch::guard::TICK`), never one wake-up per request.
async fn drain_records(mut rx: mpsc::Receiver<RequestRecord>, delivered: Arc<AtomicU64>) {
    let mut tick = tokio::time::interval(ripcord::watch::guard::TICK);
    loop {
        tick.tick().await;
        loop {
            match rx.try_recv() {
                Ok(_) => {
                    delivered.fetch_add(1, Ordering::Relaxed);
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => return,
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The HTTP client side.
// ---------------------------------------------------------------------------------------

/// Opens one keep-alive HTTP/1.1 connection and spawns its connection task.
async fn open(addr: SocketAddr) -> Result<SendRequest<Empty<Bytes>>, BoxError> {
    let stream = TcpStream::connect(addr).await?;
    // A real client sends each small request in one write and waits for the answer, so
    // Nagle's algorithm could only add delay here, never save packets.
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// Sends one `GET /api/bench` and reads the whole body.
async fn get(
    sender: &mut SendRequest<Empty<Bytes>>,
    host: &HeaderValue,
) -> Result<(StatusCode, Bytes), hyper::Error> {
    sender.ready().await?;
    let mut req = Request::new(Empty::new());
    *req.uri_mut() = Uri::from_static(PATH);
    req.headers_mut().insert(HOST, host.clone());
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

/// Checks that `addr` answers `GET /api/bench` with 200 and the version tagged `tag`.
async fn wait_ready(addr: SocketAddr, tag: u8) -> Result<(), BoxError> {
    let mut sender = open(addr).await?;
    let (status, body) = get(&mut sender, &host_header(addr)).await?;
    if status != StatusCode::OK || version_tag(&body) != tag {
        return Err(
            format!("{addr} answered {status} with {body:?}, not version tag {tag}").into(),
        );
    }
    Ok(())
}

fn host_header(addr: SocketAddr) -> HeaderValue {
    // A socket address always prints as a valid header value; the fallback is unreachable.
    HeaderValue::from_str(&addr.to_string()).unwrap_or_else(|_| HeaderValue::from_static("x"))
}

// ---------------------------------------------------------------------------------------
// Part 1: latency and throughput, direct and through the proxy.
// ---------------------------------------------------------------------------------------

/// What one load run saw.
struct Outcome {
    /// Latency of every response received, 200 or not, in nanoseconds.
    latencies_ns: Vec<u64>,
    /// Responses other than 200, plus requests that got no response at all.
    failed: u64,
    elapsed: Duration,
    /// CPU time the whole process used during the run, client and servers together.
    cpu: Option<Duration>,
    /// Whether the run stopped at `RUN_CAP` before sending all its requests.
    capped: bool,
}

/// What one connection task saw.
#[derive(Default)]
struct ConnOutcome {
    latencies_ns: Vec<u64>,
    failed: u64,
    capped: bool,
}

/// Sends `total` requests to `addr` over `conns` connections, each request on whichever
/// connection is free next, and times each one from just before it is sent until its body
/// has been read.
async fn run_load(addr: SocketAddr, conns: usize, total: usize) -> Outcome {
    let issued = Arc::new(AtomicUsize::new(0));
    // The clock starts once every connection is open, so connection setup is not counted.
    let barrier = Arc::new(Barrier::new(conns + 1));
    let host = host_header(addr);
    let mut tasks = Vec::with_capacity(conns);
    for _ in 0..conns {
        let issued = Arc::clone(&issued);
        let barrier = Arc::clone(&barrier);
        let host = host.clone();
        tasks.push(tokio::spawn(async move {
            let opened = open(addr).await;
            // Every task reaches the barrier, even one that failed to connect, so the
            // others are never left waiting.
            barrier.wait().await;
            let mut out = ConnOutcome {
                latencies_ns: Vec::with_capacity(total / conns + 1),
                ..ConnOutcome::default()
            };
            let Ok(mut sender) = opened else {
                out.failed += 1;
                return out;
            };
            let deadline = Instant::now() + RUN_CAP;
            while issued.fetch_add(1, Ordering::Relaxed) < total {
                if Instant::now() >= deadline {
                    out.capped = true;
                    break;
                }
                let start = Instant::now();
                match get(&mut sender, &host).await {
                    Ok((status, _body)) => {
                        out.latencies_ns.push(start.elapsed().as_nanos() as u64);
                        if status != StatusCode::OK {
                            out.failed += 1;
                        }
                    }
                    Err(_) => {
                        out.failed += 1;
                        // A broken connection is replaced, so one error costs one request
                        // rather than every request left on this connection.
                        match open(addr).await {
                            Ok(fresh) => sender = fresh,
                            Err(_) => break,
                        }
                    }
                }
            }
            out
        }));
    }
    barrier.wait().await;
    let start = Instant::now();
    let cpu_start = process_cpu();
    let mut outcome = Outcome {
        latencies_ns: Vec::with_capacity(total),
        failed: 0,
        elapsed: Duration::ZERO,
        cpu: None,
        capped: false,
    };
    for task in tasks {
        match task.await {
            Ok(conn) => {
                outcome.latencies_ns.extend(conn.latencies_ns);
                outcome.failed += conn.failed;
                outcome.capped |= conn.capped;
            }
            Err(_) => outcome.failed += 1,
        }
    }
    outcome.elapsed = start.elapsed();
    outcome.cpu = cpu_start
        .zip(process_cpu())
        .map(|(before, after)| after.saturating_sub(before));
    outcome
}

/// CPU time used so far by the whole machine, every core added up, from the first line of
/// `/proc/stat` (same `USER_HZ` ticks as [`process_cpu`]); `None` where it does not exist.
fn machine_cpu() -> Option<Duration> {
    const USER_HZ: u64 = 100;
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .map(|field| field.parse().unwrap_or(0))
        .collect();
    // user, nice, system, idle, iowait, irq, softirq, steal: all but idle and iowait are
    // busy. Guest time is already counted in user, so it is not added again.
    let busy: u64 = [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&index| ticks.get(index))
        .sum();
    Some(Duration::from_millis(busy * 1_000 / USER_HZ))
}

/// CPU time (user plus system) used so far by every thread of this process, from
/// `/proc/self/stat`; `None` where that file does not exist.
///
/// The kernel reports it in clock ticks of `USER_HZ`, which is 100 on every Linux
/// architecture in use, so the resolution is 10 ms: fine for runs that burn a second of
/// CPU, and the reason the figure is only shown per request over a whole run.
fn process_cpu() -> Option<Duration> {
    const USER_HZ: u64 = 100;
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name may contain spaces and parentheses, so fields are counted from
    // the last `)`. After it come field 3 (state) onwards; utime and stime are 14 and 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 1_000 / USER_HZ))
}

/// The three figures of one run.
#[derive(Clone, Copy)]
struct RunStats {
    p50_us: f64,
    p99_us: f64,
    rps: f64,
    /// Process CPU per response, in microseconds.
    cpu_us: Option<f64>,
}

impl RunStats {
    fn of(outcome: &mut Outcome) -> Self {
        outcome.latencies_ns.sort_unstable();
        let secs = outcome.elapsed.as_secs_f64();
        Self {
            p50_us: percentile(&outcome.latencies_ns, 50.0) / 1_000.0,
            p99_us: percentile(&outcome.latencies_ns, 99.0) / 1_000.0,
            rps: if secs > 0.0 {
                outcome.latencies_ns.len() as f64 / secs
            } else {
                0.0
            },
            cpu_us: outcome
                .cpu
                .filter(|_| !outcome.latencies_ns.is_empty())
                .map(|cpu| cpu.as_secs_f64() * 1e6 / outcome.latencies_ns.len() as f64),
        }
    }
}

/// One row of the latency table: medians over `RUNS` runs.
struct LatencyRow {
    via_proxy: bool,
    conns: usize,
    requests: usize,
    p50_us: f64,
    p99_us: f64,
    p99_min_us: f64,
    p99_max_us: f64,
    rps: f64,
    cpu_us: Option<f64>,
    /// For proxy rows, medians of the per-pair differences and ratios against the direct
    /// run just before.
    added: Option<Added>,
    failed: u64,
    capped_runs: usize,
}

#[derive(Clone, Copy)]
struct Added {
    p50_us: f64,
    p99_us: f64,
    rps_ratio: f64,
    cpu_us: Option<f64>,
}

async fn measure_latency(direct: SocketAddr, proxied: SocketAddr) -> Vec<LatencyRow> {
    let mut rows = Vec::new();
    for (conns, requests) in LEVELS {
        let _ = run_load(direct, conns, WARMUP_REQUESTS).await;
        let _ = run_load(proxied, conns, WARMUP_REQUESTS).await;
        let mut runs: [Vec<RunStats>; 2] = [Vec::new(), Vec::new()];
        let mut failed = [0u64; 2];
        let mut capped = [0usize; 2];
        // Alternating the two paths spreads slow drift (frequency scaling, other load on
        // the machine) over both instead of loading it onto whichever runs last.
        for _ in 0..RUNS {
            for (index, addr) in [direct, proxied].into_iter().enumerate() {
                let mut outcome = run_load(addr, conns, requests).await;
                runs[index].push(RunStats::of(&mut outcome));
                failed[index] += outcome.failed;
                capped[index] += usize::from(outcome.capped);
            }
        }
        let added = Added {
            p50_us: median(pairwise(&runs, |d, p| p.p50_us - d.p50_us)),
            p99_us: median(pairwise(&runs, |d, p| p.p99_us - d.p99_us)),
            rps_ratio: median(pairwise(&runs, |d, p| p.rps / d.rps)),
            cpu_us: all_cpu(&runs[0])
                .zip(all_cpu(&runs[1]))
                .map(|(d, p)| median(d.iter().zip(&p).map(|(d, p)| p - d).collect())),
        };
        for (index, stats) in runs.iter().enumerate() {
            let p99s: Vec<f64> = stats.iter().map(|s| s.p99_us).collect();
            rows.push(LatencyRow {
                via_proxy: index == 1,
                conns,
                requests,
                p50_us: median(stats.iter().map(|s| s.p50_us).collect()),
                p99_us: median(p99s.clone()),
                p99_min_us: p99s.iter().copied().fold(f64::INFINITY, f64::min),
                p99_max_us: p99s.iter().copied().fold(0.0, f64::max),
                rps: median(stats.iter().map(|s| s.rps).collect()),
                cpu_us: all_cpu(stats).map(median),
                added: (index == 1).then_some(added),
                failed: failed[index],
                capped_runs: capped[index],
            });
        }
    }
    rows
}

/// The CPU figure of every run, or `None` if any run lacks one.
fn all_cpu(stats: &[RunStats]) -> Option<Vec<f64>> {
    stats.iter().map(|s| s.cpu_us).collect()
}

/// Applies `f(direct, proxy)` to each pair of runs made back to back.
fn pairwise(runs: &[Vec<RunStats>; 2], f: impl Fn(&RunStats, &RunStats) -> f64) -> Vec<f64> {
    runs[0].iter().zip(&runs[1]).map(|(d, p)| f(d, p)).collect()
}

// ---------------------------------------------------------------------------------------
// Part 2: switch time.
// ---------------------------------------------------------------------------------------

struct SwitchCost {
    median_ns: f64,
    max_batch_ns: f64,
}

/// Times `SWITCH_COST_COUNT` switches on an idle proxy, alternating green and blue, so it
/// ends on blue where it started.
fn measure_switch_cost(proxy: &Proxy, blue: &Target, green: &Target) -> SwitchCost {
    let mut per_switch_ns = Vec::with_capacity(SWITCH_COST_COUNT / SWITCH_BATCH);
    for _ in 0..SWITCH_COST_COUNT / SWITCH_BATCH {
        // The targets are cloned before the clock starts: building a target is the
        // caller's business, while the swap and dropping the old target are the switch.
        let batch: Vec<Target> = (0..SWITCH_BATCH)
            .map(|i| if i % 2 == 0 { green } else { blue }.clone())
            .collect();
        let start = Instant::now();
        for target in batch {
            std::hint::black_box(proxy.switch(Some(target)));
        }
        per_switch_ns.push(start.elapsed().as_nanos() as f64 / SWITCH_BATCH as f64);
    }
    let max_batch_ns = per_switch_ns.iter().copied().fold(0.0, f64::max);
    SwitchCost {
        median_ns: median(per_switch_ns),
        max_batch_ns,
    }
}

/// What one switch under load saw.
struct SwitchRound {
    from: Slot,
    to: Slot,
    /// Whether the proxy had never sent traffic to the new slot before, so the first
    /// requests there also open the upstream connections.
    cold_pool: bool,
    /// How long the `switch` call itself took, under load.
    call_ns: u128,
    /// From the switch call to the first response carrying the new version.
    first_new_us: Option<f64>,
    /// From the switch call to the last response carrying the old version; requests
    /// already in flight at the switch finish on the old slot.
    last_old_us: Option<f64>,
    requests: usize,
    /// Non-200 responses and requests with no response, over the whole round.
    failed: u64,
    /// Responses that named neither version, the new version before the switch, or the
    /// old version for a request sent after the switch returned. Must be 0.
    misrouted: u64,
}

/// Which version a response body names: 1 for blue's `v1`, 2 for green's `v2`, 0 if neither.
fn version_tag(body: &[u8]) -> u8 {
    let parsed: Result<serde_json::Value, _> = serde_json::from_slice(body);
    match parsed.as_ref().ok().and_then(|v| v["version"].as_str()) {
        Some("v1") => 1,
        Some("v2") => 2,
        _ => 0,
    }
}

fn slot_tag(slot: Slot) -> u8 {
    match slot {
        Slot::Blue => 1,
        Slot::Green => 2,
    }
}

async fn measure_switch_under_load(
    proxy: &Proxy,
    blue: &Target,
    green: &Target,
) -> Vec<SwitchRound> {
    let mut rounds = Vec::with_capacity(RUNS);
    // The latency runs only ever sent traffic to blue, so green's upstream pool starts cold.
    let mut warm = [true, false];
    for round in 0..RUNS {
        let (from, to) = if round % 2 == 0 {
            (blue, green)
        } else {
            (green, blue)
        };
        let cold_pool = !warm[usize::from(slot_tag(to.slot) - 1)];
        let mut result = switch_round(proxy, from, to.clone()).await;
        result.cold_pool = cold_pool;
        warm[usize::from(slot_tag(to.slot) - 1)] = true;
        rounds.push(result);
    }
    rounds
}

/// Drives `SWITCH_CONNS` connections through the proxy, switches from `from` to `to` in the
/// middle, and reports what the clients saw.
async fn switch_round(proxy: &Proxy, from: &Target, to: Target) -> SwitchRound {
    let addr = proxy.local_addr();
    let host = host_header(addr);
    let stop = Arc::new(AtomicBool::new(false));
    let barrier = Arc::new(Barrier::new(SWITCH_CONNS + 1));
    let mut tasks = Vec::with_capacity(SWITCH_CONNS);
    for _ in 0..SWITCH_CONNS {
        let stop = Arc::clone(&stop);
        let barrier = Arc::clone(&barrier);
        let host = host.clone();
        tasks.push(tokio::spawn(async move {
            let opened = open(addr).await;
            barrier.wait().await;
            // Each response is kept as (when its request was sent, when the response was
            // fully read, which version answered).
            let mut seen: Vec<(Instant, Instant, u8)> = Vec::with_capacity(4_096);
            let mut failed = 0u64;
            let Ok(mut sender) = opened else {
                return (seen, failed + 1);
            };
            // The cap only matters if the main task never sets `stop`.
            let deadline = Instant::now() + RUN_CAP;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let sent = Instant::now();
                match get(&mut sender, &host).await {
                    Ok((status, body)) => {
                        let at = Instant::now();
                        if status == StatusCode::OK {
                            seen.push((sent, at, version_tag(&body)));
                        } else {
                            failed += 1;
                        }
                    }
                    Err(_) => {
                        failed += 1;
                        match open(addr).await {
                            Ok(fresh) => sender = fresh,
                            Err(_) => break,
                        }
                    }
                }
            }
            (seen, failed)
        }));
    }
    barrier.wait().await;
    tokio::time::sleep(SWITCH_BEFORE).await;
    let (from_tag, to_tag, from_slot, to_slot) =
        (slot_tag(from.slot), slot_tag(to.slot), from.slot, to.slot);
    let switched_at = Instant::now();
    std::hint::black_box(proxy.switch(Some(to)));
    let switch_returned = Instant::now();
    let call_ns = (switch_returned - switched_at).as_nanos();
    tokio::time::sleep(SWITCH_AFTER).await;
    stop.store(true, Ordering::Relaxed);

    let mut round = SwitchRound {
        from: from_slot,
        to: to_slot,
        cold_pool: false,
        call_ns,
        first_new_us: None,
        last_old_us: None,
        requests: 0,
        failed: 0,
        misrouted: 0,
    };
    let since_switch_us = |at: Instant| -> f64 {
        // Signed, because an old-version response may have finished before the switch.
        if at >= switched_at {
            (at - switched_at).as_nanos() as f64 / 1_000.0
        } else {
            -((switched_at - at).as_nanos() as f64) / 1_000.0
        }
    };
    for task in tasks {
        let Ok((seen, failed)) = task.await else {
            round.failed += 1;
            continue;
        };
        round.failed += failed;
        round.requests += seen.len() + failed as usize;
        for (sent, at, tag) in seen {
            let t = since_switch_us(at);
            // The new version can only answer after the swap. A request sent after `switch`
            // returned reached the proxy after the swap too, so an old-version answer to it
            // would mean the switch is not atomic; anything else from the old version was
            // in flight at the switch and rightly finishes where it started.
            if tag == to_tag && at >= switched_at {
                round.first_new_us = Some(round.first_new_us.map_or(t, |f| f.min(t)));
            } else if tag == from_tag && sent < switch_returned {
                round.last_old_us = Some(round.last_old_us.map_or(t, |l| l.max(t)));
            } else {
                round.misrouted += 1;
            }
        }
    }
    round
}

// ---------------------------------------------------------------------------------------
// Statistics and printing.
// ---------------------------------------------------------------------------------------

/// Nearest-rank percentile of sorted samples, as f64; 0 for no samples.
fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64
}

/// The middle value (the mean of the two middle values for an even count); 0 for none.
fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

fn print_header() {
    let nproc = std::thread::available_parallelism().map_or(0, usize::from);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split_once(':'))
                .map(|(_, name)| name.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    // `cargo bench` builds with the bench profile, which inherits release; a debug build
    // would make every figure meaningless, so it is called out.
    let profile = if cfg!(debug_assertions) {
        "DEBUG (debug assertions on: figures are not representative)"
    } else {
        "bench = release"
    };
    println!(
        "ripcord proxy bench | nproc {nproc} | cpu {cpu} | profile {profile} \
         | tokio multi-thread, {WORKERS} workers, client and servers in one process | loopback \
         127.0.0.1 | {RUNS} runs per row, medians shown"
    );
}

fn print_latency_table(rows: &[LatencyRow]) {
    println!();
    println!("1. GET {PATH}, keep-alive HTTP/1.1: direct to the app vs through the proxy");
    println!(
        "{:<6} {:>5} {:>8} {:>8} {:>8} {:>15} {:>7} {:>7} | {:>8} {:>8} {:>7} {:>8} | {:>7}",
        "path",
        "conns",
        "requests",
        "p50 µs",
        "p99 µs",
        "p99 min-max µs",
        "req/s",
        "CPU µs",
        "+p50 µs",
        "+p99 µs",
        "req/s ×",
        "+CPU µs",
        "non-200"
    );
    let opt = |v: Option<f64>, f: fn(f64) -> String| v.map_or_else(|| "-".to_owned(), f);
    for row in rows {
        let added = row.added;
        let capped = if row.capped_runs > 0 {
            format!(
                "  ({} run(s) hit the {} s cap)",
                row.capped_runs,
                RUN_CAP.as_secs()
            )
        } else {
            String::new()
        };
        println!(
            "{:<6} {:>5} {:>8} {:>8.1} {:>8.1} {:>15} {:>7.0} {:>7} | {:>8} {:>8} {:>7} {:>8} | {:>7}{capped}",
            if row.via_proxy { "proxy" } else { "direct" },
            row.conns,
            row.requests,
            row.p50_us,
            row.p99_us,
            format!("{:.1}-{:.1}", row.p99_min_us, row.p99_max_us),
            row.rps,
            opt(row.cpu_us, |v| format!("{v:.1}")),
            opt(added.map(|a| a.p50_us), |v| format!("{v:+.1}")),
            opt(added.map(|a| a.p99_us), |v| format!("{v:+.1}")),
            opt(added.map(|a| a.rps_ratio), |v| format!("{v:.2}")),
            opt(added.and_then(|a| a.cpu_us), |v| format!("{v:+.1}")),
            row.failed
        );
    }
}

fn print_switch_table(cost: &SwitchCost, rounds: &[SwitchRound]) {
    println!();
    println!(
        "2a. Proxy::switch() on an idle proxy: {SWITCH_COST_COUNT} switches alternating \
         blue/green, timed in batches of {SWITCH_BATCH}"
    );
    println!(
        "    median {:.0} ns per switch (slowest batch {:.0} ns per switch)",
        cost.median_ns, cost.max_batch_ns
    );
    println!();
    println!(
        "2b. Switch under load: {SWITCH_CONNS} connections through the proxy, switch after \
         {} ms, load for {} ms more",
        SWITCH_BEFORE.as_millis(),
        SWITCH_AFTER.as_millis()
    );
    println!(
        "{:<5} {:<14} {:>8} {:>10} {:>14} {:>14} {:>8} {:>6} {:>9}",
        "round",
        "switch",
        "new pool",
        "call ns",
        "first new µs",
        "last old µs",
        "requests",
        "failed",
        "misrouted"
    );
    let fmt_us = |v: Option<f64>| v.map_or_else(|| "none".to_owned(), |v| format!("{v:.1}"));
    for (index, round) in rounds.iter().enumerate() {
        println!(
            "{:<5} {:<14} {:>8} {:>10} {:>14} {:>14} {:>8} {:>6} {:>9}",
            index + 1,
            format!("{} -> {}", round.from, round.to),
            if round.cold_pool { "cold" } else { "warm" },
            round.call_ns,
            fmt_us(round.first_new_us),
            fmt_us(round.last_old_us),
            round.requests,
            round.failed,
            round.misrouted
        );
    }
    let (median_first, max_first) = first_new_stats(rounds);
    println!(
        "      switch -> first new response: median {median_first:.1} µs, max {max_first:.1} µs; \
         failed requests in all rounds: {}",
        rounds.iter().map(|r| r.failed).sum::<u64>()
    );
}

/// Median and max of switch-to-first-new-response; a round that never saw the new version
/// counts as infinitely slow, so it cannot hide.
fn first_new_stats(rounds: &[SwitchRound]) -> (f64, f64) {
    let values: Vec<f64> = rounds
        .iter()
        .map(|r| r.first_new_us.unwrap_or(f64::INFINITY))
        .collect();
    let max = values.iter().copied().fold(0.0, f64::max);
    (median(values), max)
}

fn print_summary(rows: &[LatencyRow], rounds: &[SwitchRound]) {
    let busiest = LEVELS[LEVELS.len() - 1].0;
    let direct = rows.iter().find(|r| r.conns == busiest && !r.via_proxy);
    let proxied = rows.iter().find(|r| r.conns == busiest && r.via_proxy);
    let (median_first, _) = first_new_stats(rounds);
    let failed: u64 = rounds.iter().map(|r| r.failed).sum();
    println!();
    if let (Some(direct), Some(proxied), Some(added)) =
        (direct, proxied, proxied.and_then(|p| p.added))
    {
        println!(
            "SUMMARY: at C={busiest} the proxy adds {:+.1} µs p99 ({:.1} -> {:.1} µs) and keeps \
             {:.2}x the direct throughput ({:.0} -> {:.0} req/s); switch -> first new response \
             median {median_first:.1} µs; failed requests during switches: {failed}",
            added.p99_us, direct.p99_us, proxied.p99_us, added.rps_ratio, direct.rps, proxied.rps
        );
    }
}
