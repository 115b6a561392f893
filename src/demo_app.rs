//! The demo application that ripcord's demo, tests and benchmarks deploy and roll back.
//!
//! It is a small HTTP/1.1 server that reports its version on `/health` and `/api`, and that
//! can be told to misbehave on purpose (injected 5xx responses, added latency, a memory leak,
//! CPU burn, a failing health check, a crash or a slow start) so that ripcord's health gates
//! have something real to detect.
//!
//! Which requests fail, which are slow and how much jitter each gets is random by default
//! (`--fault-mode random`): every request draws independently, as real failures come, because
//! an even spread hides statistical bugs in the rollback guard (a rule that only works when
//! failures never bunch up). The draws come from a small counter-based generator (splitmix64
//! of the seed and the request's index), so with the same `--seed` the outcome of the request
//! at a given index is the same on every run. `--fault-mode even` spreads the faults
//! deterministically instead; it exists only for tests that must assert exact counts.
//!
//! It is not a production server and must never become one: it has no authentication, no
//! limits worth the name and no hardening. It never talks to anything but its own listener:
//! it opens no outbound connections, reads no files and runs no commands.
//!
//! Endpoints:
//!
//! - `GET /health`: `200 {"status":"ok","version":V}`, or `503 {"status":"failing",...}` when
//!   `--fail-health` is active.
//! - any method on `/api` or `/api/...`: `200 {"version":V,"path":P,"method":M,"request":N}`,
//!   where `N` counts every request this server has answered, starting at 1.
//! - `GET /api/stream?chunks=N&delay_ms=M`: a chunked body of `N` lines `chunk i\n` (`i` from 0),
//!   `M` milliseconds apart (defaults 5 and 10, `N` capped at 10000, `M` at 60000).
//! - `POST /api/echo`: streams the request body back unchanged.
//! - anything else: `404` with a short text body.
//!
//! Every response carries `x-demo-version: V`.

use std::convert::Infallible;
use std::error::Error as StdError;
use std::future::Future;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;

/// The name the app uses in its start line and in its messages on stderr.
const APP_NAME: &str = "ripcord-demo-app";

/// The address the app listens on when no `--listen` is given.
const DEFAULT_LISTEN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8000));

/// How long in-flight connections may take to finish once shutdown has been asked for.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The most lines one `/api/stream` response may have, so one request cannot stream forever.
const MAX_STREAM_CHUNKS: u64 = 10_000;

/// The longest pause between two streamed lines, for the same reason.
const MAX_STREAM_DELAY_MS: u64 = 60_000;

/// How often the memory leak grows, so the growth looks steady to anything that samples RSS.
const LEAK_TICK: Duration = Duration::from_millis(100);

/// The header every response carries, so a client can tell which version answered it.
static DEMO_VERSION_HEADER: HeaderName = HeaderName::from_static("x-demo-version");

/// The body type of every response: boxed, because responses mix fixed, streamed and echoed bodies.
type ResponseBody = BoxBody<Bytes, Box<dyn StdError + Send + Sync>>;

/// Command-line arguments of the demo app.
///
/// This derives `clap::Parser`, which also implements `clap::Args`, so the struct can be parsed
/// on its own, flattened into another command with `#[command(flatten)]`, or used as the
/// arguments of a subcommand variant.
#[derive(clap::Parser, Debug, Clone, PartialEq)]
#[command(
    name = APP_NAME,
    about = "Demo HTTP app for ripcord's demo, tests and benchmarks (not a production server)",
    // Without this, `--help` would show the Rust doc comment above instead of the about text.
    long_about = None,
    disable_version_flag = true
)]
pub struct DemoAppArgs {
    /// Address to listen on
    #[arg(long, value_name = "ADDR", default_value_t = DEFAULT_LISTEN, env = "DEMO_LISTEN")]
    pub listen: SocketAddr,

    /// Port to listen on, overriding the port of --listen
    #[arg(long, value_name = "N", env = "PORT")]
    pub port: Option<u16>,

    /// Version the app reports on /health, /api and in x-demo-version
    #[arg(
        long = "version",
        value_name = "TEXT",
        default_value = "v0",
        env = "DEMO_VERSION"
    )]
    pub app_version: String,

    /// Ratio of /api requests that fail with 500, between 0 and 1 (each request with this
    /// probability, or spread evenly with --fault-mode even)
    #[arg(long, value_name = "F", default_value_t = 0.0, value_parser = parse_ratio, env = "DEMO_ERROR_RATIO")]
    pub error_ratio: f64,

    /// Ratio of /api requests that fail with 500 from the start, chosen as --error-ratio's
    /// (background noise, as a healthy service has: not a misbehaviour)
    #[arg(long, value_name = "F", default_value_t = 0.0, value_parser = parse_ratio)]
    pub background_error_ratio: f64,

    /// Milliseconds added before a slow /api response (every one unless --slow-ratio says
    /// otherwise)
    #[arg(long, value_name = "N", default_value_t = 0, env = "DEMO_LATENCY_MS")]
    pub latency_ms: u64,

    /// Share of /api requests, between 0 and 1, that get the --latency-ms delay (each request
    /// with this probability, or spread evenly with --fault-mode even)
    #[arg(long, value_name = "F", default_value_t = 1.0, value_parser = parse_ratio, env = "DEMO_SLOW_RATIO")]
    pub slow_ratio: f64,

    /// Up to N more milliseconds on every /api response, uniform per request (background
    /// noise, from the start: not a misbehaviour)
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub jitter_ms: u64,

    /// How --error-ratio, --background-error-ratio, --slow-ratio and --jitter-ms choose
    /// their requests
    #[arg(
        long,
        value_enum,
        value_name = "MODE",
        default_value_t = FaultMode::Random,
        env = "DEMO_FAULT_MODE"
    )]
    pub fault_mode: FaultMode,

    /// Seed of the random faults: the same seed gives every request index the same outcome
    /// on every run [default: from the clock and the pid, so runs differ]
    #[arg(long, value_name = "N", env = "DEMO_SEED")]
    pub seed: Option<u64>,

    /// Grow resident memory by N MiB per second until killed
    #[arg(
        long,
        value_name = "N",
        default_value_t = 0,
        env = "DEMO_LEAK_MB_PER_SEC"
    )]
    pub leak_mb_per_sec: u64,

    /// Number of threads that busy-loop to burn CPU
    #[arg(long, value_name = "N", default_value_t = 0, env = "DEMO_CPU_BURN")]
    pub cpu_burn: usize,

    /// Answer /health with 503
    #[arg(long, env = "DEMO_FAIL_HEALTH")]
    pub fail_health: bool,

    /// Crash: exit with code 70 when the misbehaviours begin (a real process exit, so
    /// only for a separate process, never in-process)
    #[arg(long, env = "DEMO_CRASH")]
    pub crash: bool,

    /// Print a message to stderr and exit with CODE before binding
    #[arg(long, value_name = "CODE", allow_negative_numbers = true)]
    pub exit_at_start: Option<i32>,

    /// Milliseconds to sleep before binding, to simulate a slow start
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub start_delay_ms: u64,

    /// Seconds after start before the error, latency, leak, cpu-burn and fail-health
    /// misbehaviours begin (0 means from the start)
    #[arg(long, value_name = "N", default_value_t = 0, env = "DEMO_AFTER_SECS")]
    pub after_secs: u64,
}

/// How the demo app chooses the requests that get a fault.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FaultMode {
    /// Each request independently, with the given probability, as a real service fails
    #[default]
    Random,
    /// Spread evenly and deterministically, for tests that must assert exact counts
    ///
    /// Request `n` (from 0) gets the fault when `floor((n+1)r) > floor(nr)`, so the first `k`
    /// requests hold exactly `floor(kr)` faults and failures never bunch up. It exists only
    /// for tests that compare an exact number, and such a test must say why it cannot use a
    /// fixed `--seed` instead: an even spread is kinder than any real service, so a guard
    /// tested only against it can pass with statistical bugs.
    Even,
}

impl Default for DemoAppArgs {
    /// The same values as parsing an empty command line with `PORT` unset.
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN,
            port: None,
            app_version: "v0".to_owned(),
            error_ratio: 0.0,
            background_error_ratio: 0.0,
            latency_ms: 0,
            slow_ratio: 1.0,
            jitter_ms: 0,
            fault_mode: FaultMode::Random,
            seed: None,
            leak_mb_per_sec: 0,
            cpu_burn: 0,
            fail_health: false,
            crash: false,
            exit_at_start: None,
            start_delay_ms: 0,
            after_secs: 0,
        }
    }
}

impl DemoAppArgs {
    /// The address to bind: `--listen` with its port replaced by `--port` when one is given.
    fn bind_addr(&self) -> SocketAddr {
        let mut addr = self.listen;
        if let Some(port) = self.port {
            addr.set_port(port);
        }
        addr
    }

    /// Checks what clap cannot check for a struct built in code rather than parsed.
    fn validate(&self) -> Result<(), String> {
        check_ratio("--error-ratio", self.error_ratio)?;
        check_ratio("--background-error-ratio", self.background_error_ratio)?;
        check_ratio("--slow-ratio", self.slow_ratio)?;
        HeaderValue::from_str(&self.app_version).map_err(|_| {
            format!(
                "version {:?} cannot be sent in an http header",
                self.app_version
            )
        })?;
        Ok(())
    }
}

/// Parses a ratio flag (`--error-ratio`, `--slow-ratio`, ...), so that a bad value is a usage
/// error (exit code 2) from clap itself.
fn parse_ratio(text: &str) -> Result<f64, String> {
    // Clap already names the flag and the value, so the message only says what is wrong.
    let ratio: f64 = text.trim().parse().map_err(|_| "not a number".to_owned())?;
    if ratio_in_range(ratio) {
        Ok(ratio)
    } else {
        Err("must be between 0 and 1".to_owned())
    }
}

/// Rejects ratios outside `0..=1`, NaN included, because they have no meaning as a failure rate.
fn check_ratio(flag: &str, ratio: f64) -> Result<(), String> {
    if ratio_in_range(ratio) {
        Ok(())
    } else {
        Err(format!("{flag} must be between 0 and 1, got {ratio}"))
    }
}

fn ratio_in_range(ratio: f64) -> bool {
    (0.0..=1.0).contains(&ratio)
}

/// Runs the demo app until SIGTERM or SIGINT and returns the process exit code.
///
/// The code is 0 after a clean shutdown, 1 when the address cannot be bound or the server
/// fails, 2 for invalid arguments, and the `--exit-at-start` code when one is given.
pub fn run(args: DemoAppArgs) -> i32 {
    if let Err(message) = args.validate() {
        eprintln!("{APP_NAME}: {message}");
        return 2;
    }
    if let Some(code) = args.exit_at_start {
        eprintln!("{APP_NAME}: exiting at start with code {code} as asked by --exit-at-start");
        return code;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("{APP_NAME}: cannot start the async runtime: {err}");
            return 1;
        }
    };
    let code = runtime.block_on(run_async(args));
    // Connections still open after the grace period are abandoned here rather than waited on,
    // because the grace period is the whole point of having one.
    runtime.shutdown_timeout(Duration::from_secs(1));
    code
}

/// The async part of [`run`]: slow start, bind, then serve until a signal arrives.
async fn run_async(args: DemoAppArgs) -> i32 {
    // The signal handlers are installed before anything else, so a supervisor that sends
    // SIGTERM as soon as it sees the start line gets a clean shutdown rather than the
    // default action, which would kill the process.
    let shutdown = match shutdown_signal() {
        Ok(shutdown) => shutdown,
        Err(err) => {
            eprintln!("{APP_NAME}: cannot install signal handlers: {err}");
            return 1;
        }
    };
    if args.start_delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(args.start_delay_ms)).await;
    }
    let addr = args.bind_addr();
    let listener = match TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("{APP_NAME}: cannot listen on {addr}: {err}");
            return 1;
        }
    };
    match serve(listener, args, shutdown).await {
        Ok(()) => 0,
        Err(err) => {
            eprintln!("{APP_NAME}: server failed: {err}");
            1
        }
    }
}

/// Returns a future that completes on the first SIGTERM or SIGINT.
///
/// The handlers are registered when this function returns, not when the future is first
/// polled, so no signal that arrives in between is lost.
#[cfg(unix)]
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

/// Returns a future that completes on Ctrl-C, the only portable shutdown signal.
#[cfg(not(unix))]
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

/// Serves the demo app on `listener` until `shutdown` completes, then shuts down gracefully.
///
/// On start it prints `ripcord-demo-app VERSION listening on ADDR` to stdout. Once `shutdown`
/// completes it stops accepting, lets in-flight requests finish and closes idle keep-alive
/// connections, and returns when every connection is closed or after 10 seconds, whichever
/// comes first. `--exit-at-start`, `--start-delay-ms`, `--listen` and `--port` are the caller's
/// business and are ignored here. Misbehaviour threads and tasks stop when this returns.
pub async fn serve(
    listener: TcpListener,
    args: DemoAppArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    args.validate()
        .map_err(|message| std::io::Error::new(std::io::ErrorKind::InvalidInput, message))?;
    // The seed is settled once, so the faults and the message that names the seed agree.
    let mut args = args;
    args.seed.get_or_insert_with(fresh_seed);
    let local_addr = listener.local_addr()?;
    let state = Arc::new(State::new(&args));
    let _misbehaviour = Misbehaviour::start(&args, state.misbehave_at);

    // println! rather than a raw stdout handle, so the test harness captures the line.
    println!("{APP_NAME} {} listening on {local_addr}", args.app_version);
    // A supervisor reading a pipe waits for this line, and a pipe is block-buffered.
    std::io::stdout().flush()?;

    // Every connection task holds a receiver: the value turning true asks it to shut down,
    // and the sender seeing all receivers dropped tells us every connection has closed.
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    let state = Arc::clone(&state);
                    let stop_rx = stop_rx.clone();
                    tokio::spawn(serve_connection(stream, state, stop_rx));
                }
                Err(err) => {
                    // Accept errors such as running out of file descriptors are transient;
                    // the pause keeps the loop from spinning while they last.
                    eprintln!("{APP_NAME}: accept failed: {err}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }

    // Closing the listener first makes new connections fail fast instead of queueing
    // behind a server that will never accept them.
    drop(listener);
    drop(stop_rx);
    let _ = stop_tx.send(true);
    if tokio::time::timeout(SHUTDOWN_GRACE, stop_tx.closed())
        .await
        .is_err()
    {
        eprintln!(
            "{APP_NAME}: connections still open after {}s, giving up on them",
            SHUTDOWN_GRACE.as_secs()
        );
    }
    Ok(())
}

/// Serves one connection until it closes, switching to a graceful shutdown when asked.
async fn serve_connection(
    stream: tokio::net::TcpStream,
    state: Arc<State>,
    mut stop_rx: watch::Receiver<bool>,
) {
    let service = hyper::service::service_fn(move |req| {
        let state = Arc::clone(&state);
        async move { Ok::<_, Infallible>(handle(&state, req).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        // The timer lets hyper enforce its default header read timeout, so a client that
        // opens a connection and sends nothing cannot hold up a graceful shutdown forever.
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        // An error means the server is gone, which asks for a shutdown just as loudly.
        _ = stop_rx.wait_for(|stop| *stop) => {}
    }
    // Graceful shutdown lets the request in flight finish, then closes the connection;
    // an idle keep-alive connection closes at once.
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

/// What every request handler shares.
struct State {
    version: String,
    version_header: HeaderValue,
    /// When the misbehaviours begin: the serve start plus `--after-secs`.
    misbehave_at: Instant,
    /// Which requests fail, are slow or get how much jitter, by their index.
    faults: Faults,
    latency: Duration,
    fail_health: bool,
    /// Every request answered, for the `request` field of `/api` responses, and the index of
    /// the background error and jitter draws.
    requests: AtomicU64,
    /// `/api` requests seen while misbehaving: the index of the error and slowness draws.
    /// A counter rather than a shared generator, so connections never wait on each other.
    faulty_api_requests: AtomicU64,
    /// `/api` answers by outcome, for `/metrics`.
    api_ok: AtomicU64,
    api_failed: AtomicU64,
}

impl State {
    fn new(args: &DemoAppArgs) -> Self {
        Self {
            version: args.app_version.clone(),
            version_header: HeaderValue::from_str(&args.app_version)
                .unwrap_or_else(|_| HeaderValue::from_static("invalid")),
            misbehave_at: Instant::now() + Duration::from_secs(args.after_secs),
            faults: Faults::new(args),
            latency: Duration::from_millis(args.latency_ms),
            fail_health: args.fail_health,
            requests: AtomicU64::new(0),
            faulty_api_requests: AtomicU64::new(0),
            api_ok: AtomicU64::new(0),
            api_failed: AtomicU64::new(0),
        }
    }

    fn misbehaving(&self) -> bool {
        Instant::now() >= self.misbehave_at
    }
}

/// The golden-ratio increment of splitmix64.
const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// splitmix64's output function: a bijection of 64 bits that turns neighbouring inputs into
/// unrelated-looking outputs.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Maps 64 random bits to a uniform value in `[0, 1)`, from the top 53 bits (an f64's precision).
fn unit_interval(bits: u64) -> f64 {
    (bits >> 11) as f64 * (1.0 / (1_u64 << 53) as f64)
}

/// A seed that differs from run to run, for when no `--seed` is given.
///
/// The clock and the pid alone are not enough: in a container the pid is usually 1, and two
/// servers in one process (tests) share a pid. The call counter separates the latter, and the
/// standard library's per-process random hash keys separate the former.
fn fresh_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let calls = CALLS.fetch_add(1, Ordering::Relaxed);
    let hashed = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let mut seed = mix64(crate::clock::now_ms() as u64);
    seed = mix64(seed ^ u64::from(std::process::id()));
    seed = mix64(seed ^ calls);
    seed ^ hashed
}

/// The independent random streams a request draws from, one per kind of fault, so that
/// whether a request fails says nothing about whether it is slow.
#[derive(Debug, Clone, Copy)]
enum Stream {
    Error = 1,
    Background = 2,
    Slow = 3,
    Jitter = 4,
}

/// A share of requests that get one fault.
#[derive(Debug, Clone, Copy)]
struct Share {
    /// The probability of a random draw.
    ratio: f64,
    /// The same in parts per million, so the even pattern is integer arithmetic and exact
    /// rather than subject to floating-point rounding.
    ppm: u64,
}

impl Share {
    fn new(ratio: f64) -> Self {
        Self {
            ratio,
            ppm: (ratio * 1_000_000.0).round() as u64,
        }
    }

    /// Whether index `n` is in the even spread: exactly when `floor((n+1)*r) > floor(n*r)`,
    /// so the first `k` indexes always hold `floor(k*r)` and the ratio is exact over any run.
    fn in_even_spread(self, n: u64) -> bool {
        let (n, ppm) = (u128::from(n), u128::from(self.ppm));
        (n + 1) * ppm / 1_000_000 > n * ppm / 1_000_000
    }

    /// A Bernoulli draw with probability `ratio` from 64 uniform random bits. A ratio of 1
    /// always hits and 0 never does, because the uniform value is below 1 and at least 0.
    fn hit_by(self, bits: u64) -> bool {
        unit_interval(bits) < self.ratio
    }
}

/// Decides, from a request's index alone, which faults it gets: a pure function of the
/// arguments and the seed, so it is tested without a server.
///
/// In random mode, the draw for index `n` of a stream is the `n`-th output of splitmix64
/// started from a state derived from the seed and the stream. That needs no shared mutable
/// generator (concurrent connections only bump an atomic counter for their index) and makes
/// the sequence of outcomes by index reproducible for a given seed.
#[derive(Debug, Clone)]
struct Faults {
    mode: FaultMode,
    seed: u64,
    error: Share,
    background: Share,
    slow: Share,
    jitter_ms: u64,
}

impl Faults {
    fn new(args: &DemoAppArgs) -> Self {
        Self {
            mode: args.fault_mode,
            seed: args.seed.unwrap_or_else(fresh_seed),
            error: Share::new(args.error_ratio),
            background: Share::new(args.background_error_ratio),
            slow: Share::new(args.slow_ratio),
            jitter_ms: args.jitter_ms,
        }
    }

    /// 64 uniform random bits for index `n` of `stream`.
    fn draw(&self, stream: Stream, n: u64) -> u64 {
        let start = mix64(
            self.seed
                .wrapping_add((stream as u64).wrapping_mul(GOLDEN_GAMMA)),
        );
        mix64(start.wrapping_add(n.wrapping_add(1).wrapping_mul(GOLDEN_GAMMA)))
    }

    fn hits(&self, share: Share, stream: Stream, n: u64) -> bool {
        match self.mode {
            FaultMode::Random => share.hit_by(self.draw(stream, n)),
            FaultMode::Even => share.in_even_spread(n),
        }
    }

    /// Whether the `n`-th `/api` request (from 0) since the misbehaviours began fails.
    fn should_fail(&self, n: u64) -> bool {
        self.hits(self.error, Stream::Error, n)
    }

    /// Whether the `n`-th `/api` request (from 0) since the misbehaviours began is slow.
    fn is_slow(&self, n: u64) -> bool {
        self.hits(self.slow, Stream::Slow, n)
    }

    /// Whether the request numbered `request_number` (the `request` field of `/api`, from 1,
    /// counting every request) fails as background noise.
    fn background_fails(&self, request_number: u64) -> bool {
        self.hits(self.background, Stream::Background, request_number)
    }

    /// The jitter added to the request numbered `request_number`: uniform in
    /// `0..=--jitter-ms` at microsecond resolution.
    fn jitter(&self, request_number: u64) -> Duration {
        if self.jitter_ms == 0 {
            return Duration::ZERO;
        }
        let choices = self.jitter_ms.saturating_mul(1000).saturating_add(1);
        let micros = match self.mode {
            // Lemire's multiply-shift maps the draw onto the choices without a division.
            FaultMode::Random => {
                let bits = self.draw(Stream::Jitter, request_number);
                ((u128::from(bits) * u128::from(choices)) >> 64) as u64
            }
            // Unseeded, as it always was: a fixed pseudo-random value per request number.
            FaultMode::Even => mix64(request_number.wrapping_add(GOLDEN_GAMMA)) % choices,
        };
        Duration::from_micros(micros)
    }
}

/// Routes one request.
async fn handle(state: &State, req: Request<Incoming>) -> Response<ResponseBody> {
    let request_number = state.requests.fetch_add(1, Ordering::Relaxed) + 1;
    let path = req.uri().path().to_owned();
    let method = req.method().clone();

    if path == "/health" && (method == Method::GET || method == Method::HEAD) {
        let (status, word) = if state.fail_health && state.misbehaving() {
            (StatusCode::SERVICE_UNAVAILABLE, "failing")
        } else {
            (StatusCode::OK, "ok")
        };
        return json_response(
            state,
            status,
            &[
                ("status", word.into()),
                ("version", state.version.as_str().into()),
            ],
        );
    }

    if path == "/metrics" && method == Method::GET {
        // Prometheus text format: the app's own request counts, labelled with its
        // version, as an instrumented app would expose them.
        let ok = state.api_ok.load(Ordering::Relaxed);
        let failed = state.api_failed.load(Ordering::Relaxed);
        let v = &state.version;
        let text = format!(
            "# HELP demo_requests_total API requests answered, by status code.\n\
             # TYPE demo_requests_total counter\n\
             demo_requests_total{{version=\"{v}\",code=\"200\"}} {ok}\n\
             demo_requests_total{{version=\"{v}\",code=\"500\"}} {failed}\n"
        );
        return response(
            state,
            StatusCode::OK,
            "text/plain; version=0.0.4",
            full_body(text),
        );
    }

    if path != "/api" && !path.starts_with("/api/") {
        return response(
            state,
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            full_body(format!("not found: {path}\n")),
        );
    }

    // The decisions are taken on arrival, each request taking its index from a counter, so
    // concurrent requests neither wait on each other nor disturb the pattern by index.
    let (injected, slow) = if state.misbehaving() {
        let n = state.faulty_api_requests.fetch_add(1, Ordering::Relaxed);
        (state.faults.should_fail(n), state.faults.is_slow(n))
    } else {
        (false, false)
    };
    let fail = injected || state.faults.background_fails(request_number);
    let jitter = state.faults.jitter(request_number);
    if !jitter.is_zero() {
        tokio::time::sleep(jitter).await;
    }
    if slow && !state.latency.is_zero() {
        tokio::time::sleep(state.latency).await;
    }
    if fail {
        state.api_failed.fetch_add(1, Ordering::Relaxed);
        return json_response(
            state,
            StatusCode::INTERNAL_SERVER_ERROR,
            &[
                ("error", "injected failure".into()),
                ("version", state.version.as_str().into()),
            ],
        );
    }

    if path == "/api/stream" && method == Method::GET {
        return stream_response(state, req.uri().query().unwrap_or(""));
    }
    if path == "/api/echo" && method == Method::POST {
        let content_type = req
            .headers()
            .get(CONTENT_TYPE)
            .cloned()
            .unwrap_or_else(|| HeaderValue::from_static("application/octet-stream"));
        let body = req.into_body().map_err(Into::into).boxed();
        let mut resp = response(state, StatusCode::OK, "application/octet-stream", body);
        resp.headers_mut().insert(CONTENT_TYPE, content_type);
        return resp;
    }
    state.api_ok.fetch_add(1, Ordering::Relaxed);
    json_response(
        state,
        StatusCode::OK,
        &[
            ("version", state.version.as_str().into()),
            ("path", path.into()),
            ("method", method.as_str().into()),
            ("request", request_number.into()),
        ],
    )
}

/// Answers `GET /api/stream`, or 400 when its query does not parse.
fn stream_response(state: &State, query: &str) -> Response<ResponseBody> {
    let mut chunks = 5;
    let mut delay_ms = 10;
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let target = match key {
            "chunks" => &mut chunks,
            "delay_ms" => &mut delay_ms,
            _ => continue,
        };
        match value.parse::<u64>() {
            Ok(number) => *target = number,
            Err(_) => {
                return response(
                    state,
                    StatusCode::BAD_REQUEST,
                    "text/plain; charset=utf-8",
                    full_body(format!("invalid {key}: {value:?}\n")),
                );
            }
        }
    }
    let body = LineStream {
        next: 0,
        total: chunks.min(MAX_STREAM_CHUNKS),
        delay: Duration::from_millis(delay_ms.min(MAX_STREAM_DELAY_MS)),
        sleep: None,
    };
    response(
        state,
        StatusCode::OK,
        "text/plain; charset=utf-8",
        body.map_err(|never| match never {}).boxed(),
    )
}

/// A body of `total` lines `chunk i\n`, each after `delay` except the first.
///
/// It sleeps inside `poll_frame` rather than in a spawned task, so a client that hangs up
/// stops the stream with nothing left running.
struct LineStream {
    next: u64,
    total: u64,
    delay: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Body for LineStream {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        if this.next >= this.total {
            return Poll::Ready(None);
        }
        if this.next > 0 && !this.delay.is_zero() {
            let delay = this.delay;
            let sleep = this
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(delay)));
            std::task::ready!(sleep.as_mut().poll(cx));
            this.sleep = None;
        }
        let line = format!("chunk {}\n", this.next);
        this.next += 1;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(line)))))
    }

    fn is_end_stream(&self) -> bool {
        self.next >= self.total
    }
}

fn full_body(body: impl Into<Bytes>) -> ResponseBody {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed()
}

/// Answers with a JSON object whose keys keep the given order.
///
/// `serde_json::Value` sorts keys, and the documented shapes (`{"version":...,"path":...}`)
/// read better in the order they are written, so the object is assembled by hand while
/// serde_json still does the escaping.
fn json_response(
    state: &State,
    status: StatusCode,
    fields: &[(&str, serde_json::Value)],
) -> Response<ResponseBody> {
    let mut text = String::from("{");
    for (index, (key, value)) in fields.iter().enumerate() {
        if index > 0 {
            text.push(',');
        }
        text.push_str(&serde_json::Value::from(*key).to_string());
        text.push(':');
        text.push_str(&value.to_string());
    }
    text.push('}');
    response(state, status, "application/json", full_body(text))
}

/// Builds a response with the headers every response must carry.
fn response(
    state: &State,
    status: StatusCode,
    content_type: &'static str,
    body: ResponseBody,
) -> Response<ResponseBody> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(DEMO_VERSION_HEADER.clone(), state.version_header.clone());
    resp
}

/// The memory leak and CPU burn, started when the misbehaviours begin and stopped on drop.
///
/// Stopping on drop matters for in-process tests, where a server that has returned must not
/// keep burning CPU or holding memory; a real process is simply killed.
struct Misbehaviour {
    task: Option<tokio::task::JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

impl Misbehaviour {
    fn start(args: &DemoAppArgs, at: Instant) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let describe = describe_misbehaviour(args);
        if describe.is_empty() {
            return Self { task: None, stop };
        }
        let leak_per_tick = usize::try_from(args.leak_mb_per_sec.saturating_mul(1024 * 1024) / 10)
            .unwrap_or(usize::MAX);
        let burners = args.cpu_burn;
        let crash = args.crash;
        let burn_stop = Arc::clone(&stop);
        let task = tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            eprintln!("{APP_NAME}: misbehaving now: {}", describe.join(", "));
            if crash {
                std::process::exit(70);
            }
            for index in 0..burners {
                start_burner(index, Arc::clone(&burn_stop));
            }
            if leak_per_tick > 0 {
                leak_forever(leak_per_tick).await;
            }
        });
        Self {
            task: Some(task),
            stop,
        }
    }
}

impl Drop for Misbehaviour {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Lists the active misbehaviours for the message printed when they begin.
fn describe_misbehaviour(args: &DemoAppArgs) -> Vec<String> {
    let mut parts = Vec::new();
    if args.error_ratio > 0.0 {
        parts.push(format!("error-ratio {}", args.error_ratio));
    }
    let slow = args.latency_ms > 0 && args.slow_ratio > 0.0;
    if slow && args.slow_ratio >= 1.0 {
        parts.push(format!("latency {}ms", args.latency_ms));
    } else if slow {
        parts.push(format!(
            "latency {}ms on slow-ratio {} of requests",
            args.latency_ms, args.slow_ratio
        ));
    }
    if args.error_ratio > 0.0 || slow {
        parts.push(match (args.fault_mode, args.seed) {
            (FaultMode::Random, Some(seed)) => format!("random faults (seed {seed})"),
            (FaultMode::Random, None) => "random faults".to_owned(),
            (FaultMode::Even, _) => "evenly spread faults".to_owned(),
        });
    }
    if args.leak_mb_per_sec > 0 {
        parts.push(format!("leak {} MiB/s", args.leak_mb_per_sec));
    }
    if args.cpu_burn > 0 {
        parts.push(format!("cpu-burn on {} thread(s)", args.cpu_burn));
    }
    if args.fail_health {
        parts.push("failing health".to_owned());
    }
    if args.crash {
        parts.push("crash (exit 70)".to_owned());
    }
    parts
}

/// Allocates `per_tick` bytes every tick and keeps them until the task is aborted.
async fn leak_forever(per_tick: usize) {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    let mut ticks = tokio::time::interval(LEAK_TICK);
    loop {
        ticks.tick().await;
        // A non-zero fill writes every page, so the memory is resident and not merely
        // reserved; zeroed allocations can be served by untouched pages that never count.
        let block = vec![0xA5_u8; per_tick];
        hoard.push(std::hint::black_box(block));
    }
}

/// Starts one thread that spins until `stop` is set.
fn start_burner(index: usize, stop: Arc<AtomicBool>) {
    let spawned = std::thread::Builder::new()
        .name(format!("demo-cpu-burn-{index}"))
        .spawn(move || {
            let mut x: u64 = 1;
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..100_000 {
                    // The black box keeps the optimiser from deleting the busy loop.
                    x = std::hint::black_box(
                        x.wrapping_mul(6_364_136_223_846_793_005)
                            .wrapping_add(1_442_695_040_888_963_407),
                    );
                }
            }
        });
    if let Err(err) = spawned {
        eprintln!("{APP_NAME}: cannot start cpu-burn thread {index}: {err}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use http_body_util::Empty;
    use tokio::sync::oneshot;
    use tokio::task::JoinHandle;

    /// A server running in-process on a loopback port chosen by the OS.
    struct TestServer {
        addr: SocketAddr,
        stop: Option<oneshot::Sender<()>>,
        task: JoinHandle<std::io::Result<()>>,
    }

    impl TestServer {
        async fn start(flags: &[&str]) -> Self {
            let args =
                DemoAppArgs::try_parse_from(std::iter::once(APP_NAME).chain(flags.iter().copied()))
                    .expect("test flags parse");
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("local addr");
            let (stop, stopped) = oneshot::channel::<()>();
            let task = tokio::spawn(serve(listener, args, async {
                let _ = stopped.await;
            }));
            Self {
                addr,
                stop: Some(stop),
                task,
            }
        }

        /// Asks for a graceful shutdown and waits, bounded, for `serve` to return.
        async fn shutdown(mut self) {
            if let Some(stop) = self.stop.take() {
                let _ = stop.send(());
            }
            tokio::time::timeout(Duration::from_secs(15), &mut self.task)
                .await
                .expect("serve returns within the grace period")
                .expect("serve task did not panic")
                .expect("serve returns ok");
        }
    }

    struct Answer {
        status: StatusCode,
        headers: hyper::HeaderMap,
        body: Bytes,
    }

    impl Answer {
        fn json(&self) -> serde_json::Value {
            serde_json::from_slice(&self.body).expect("json body")
        }
    }

    /// Sends one request on a fresh connection and collects the whole response.
    async fn send<B>(addr: SocketAddr, req: Request<B>) -> Answer
    where
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn StdError + Send + Sync>>,
    {
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        let resp = sender.send_request(req).await.expect("response");
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    fn request(method: Method, addr: SocketAddr, path: &str) -> Request<Empty<Bytes>> {
        Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, addr.to_string())
            .body(Empty::new())
            .expect("request")
    }

    async fn get(addr: SocketAddr, path: &str) -> Answer {
        send(addr, request(Method::GET, addr, path)).await
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        DemoAppArgs::command().debug_assert();
    }

    #[test]
    fn defaults_match_an_empty_command_line() {
        let mut parsed = DemoAppArgs::try_parse_from([APP_NAME]).expect("parse");
        // The PORT environment variable of whoever runs the tests must not matter here.
        parsed.port = None;
        assert_eq!(parsed, DemoAppArgs::default());
    }

    #[test]
    fn flags_parse() {
        let args = DemoAppArgs::try_parse_from([
            APP_NAME,
            "--listen",
            "127.0.0.2:9000",
            "--port",
            "9100",
            "--version",
            "v7",
            "--error-ratio",
            "0.5",
            "--exit-at-start",
            "-3",
            "--fault-mode",
            "even",
            "--seed",
            "18446744073709551615",
            "--slow-ratio",
            "0.07",
        ])
        .expect("parse");
        assert_eq!(args.bind_addr(), "127.0.0.2:9100".parse().unwrap());
        assert_eq!(args.app_version, "v7");
        assert_eq!(args.error_ratio, 0.5);
        assert_eq!(args.exit_at_start, Some(-3));
        assert_eq!(args.fault_mode, FaultMode::Even);
        assert_eq!(args.seed, Some(u64::MAX));
        assert_eq!(args.slow_ratio, 0.07);
    }

    #[test]
    fn faults_are_random_by_default() {
        let defaults = DemoAppArgs::default();
        assert_eq!(defaults.fault_mode, FaultMode::Random);
        assert_eq!(
            defaults.slow_ratio, 1.0,
            "every request slow unless told otherwise"
        );
        assert_eq!(defaults.seed, None);
    }

    #[test]
    fn bad_error_ratio_is_a_usage_error() {
        for bad in ["1.5", "-0.1", "NaN", "lots"] {
            let err = DemoAppArgs::try_parse_from([APP_NAME, "--error-ratio", bad])
                .expect_err("rejected");
            assert_eq!(err.exit_code(), 2, "{bad}");
        }
        let args = DemoAppArgs {
            error_ratio: 2.0,
            ..DemoAppArgs::default()
        };
        assert_eq!(run(args), 2);
    }

    #[test]
    fn bad_slow_ratio_mode_or_seed_is_a_usage_error() {
        for (flag, bad) in [
            ("--slow-ratio", "1.01"),
            ("--slow-ratio", "-0.5"),
            ("--slow-ratio", "NaN"),
            ("--fault-mode", "uniform"),
            ("--seed", "-1"),
            ("--seed", "0x10"),
        ] {
            let err = DemoAppArgs::try_parse_from([APP_NAME, flag, bad]).expect_err("rejected");
            assert_eq!(err.exit_code(), 2, "{flag} {bad}");
        }
        let args = DemoAppArgs {
            slow_ratio: f64::NAN,
            ..DemoAppArgs::default()
        };
        assert_eq!(
            args.validate(),
            Err("--slow-ratio must be between 0 and 1, got NaN".to_owned())
        );
        assert_eq!(run(args), 2);
    }

    #[test]
    fn exit_at_start_returns_the_code_without_binding() {
        let args = DemoAppArgs {
            exit_at_start: Some(7),
            ..DemoAppArgs::default()
        };
        assert_eq!(run(args), 7);
    }

    #[test]
    fn embeds_as_flatten_and_as_subcommand() {
        #[derive(clap::Parser, Debug)]
        #[command(name = "outer", version = "1.2.3", propagate_version = true)]
        struct Outer {
            #[command(subcommand)]
            command: OuterCommand,
        }
        #[derive(clap::Subcommand, Debug)]
        enum OuterCommand {
            DemoApp(DemoAppArgs),
        }
        #[derive(clap::Parser, Debug)]
        #[command(name = "flat")]
        struct Flat {
            #[command(flatten)]
            demo: DemoAppArgs,
        }
        use clap::CommandFactory;
        Outer::command().debug_assert();
        Flat::command().debug_assert();

        let outer = Outer::try_parse_from(["outer", "demo-app", "--version", "v3"]).expect("parse");
        let OuterCommand::DemoApp(args) = outer.command;
        assert_eq!(args.app_version, "v3");
        let flat =
            Flat::try_parse_from(["flat", "--version", "v4", "--fail-health"]).expect("parse");
        assert_eq!(flat.demo.app_version, "v4");
        assert!(flat.demo.fail_health);
    }

    #[test]
    fn even_failure_pattern_is_exact() {
        let faults = Faults::new(&DemoAppArgs {
            error_ratio: 0.1,
            fault_mode: FaultMode::Even,
            ..DemoAppArgs::default()
        });
        let failures = (0..1000).filter(|&n| faults.should_fail(n)).count();
        assert_eq!(failures, 100);
        assert!(faults.should_fail(9) && !faults.should_fail(8));
    }

    /// Faults built from a command line, the way `serve` builds them.
    fn faults(flags: &[&str]) -> Faults {
        let args =
            DemoAppArgs::try_parse_from(std::iter::once(APP_NAME).chain(flags.iter().copied()))
                .expect("test flags parse");
        Faults::new(&args)
    }

    /// The first `count` outcomes of `decide`, by index from 0.
    fn outcomes(count: u64, decide: impl Fn(u64) -> bool) -> Vec<bool> {
        (0..count).map(decide).collect()
    }

    /// Asserts that `hits` out of `trials` Bernoulli(`p`) draws is within 4.5 standard
    /// deviations of the mean: a fixed seed makes the test deterministic, and the bound is
    /// still tight enough (about ±1.4 points at p = 0.1 over 20,000) to catch a wrong or
    /// skewed probability.
    fn assert_binomial(hits: usize, trials: usize, p: f64, what: &str) {
        let mean = trials as f64 * p;
        let bound = 4.5 * (mean * (1.0 - p)).sqrt();
        assert!(
            (hits as f64 - mean).abs() <= bound,
            "{what}: {hits} of {trials}, expected {mean} ± {bound:.0}"
        );
    }

    fn longest_run(outcomes: &[bool]) -> usize {
        let mut longest = 0;
        let mut current = 0;
        for &hit in outcomes {
            current = if hit { current + 1 } else { 0 };
            longest = longest.max(current);
        }
        longest
    }

    /// The number of hits in each aligned block of 100.
    fn block_counts(outcomes: &[bool]) -> Vec<usize> {
        outcomes
            .chunks(100)
            .map(|block| block.iter().filter(|&&hit| hit).count())
            .collect()
    }

    #[test]
    fn random_failures_match_the_ratio() {
        // Several seeds and ratios, so a probability that is off (a ppm/ratio mix-up, a
        // comparison the wrong way round, a skewed uniform) cannot hide behind one lucky case.
        for (seed, ratio) in [
            ("1", 0.01),
            ("2", 0.07),
            ("3", 0.1),
            ("4", 0.3),
            ("5", 0.5),
            ("6", 0.9),
        ] {
            let ratio_text = ratio.to_string();
            let f = faults(&[
                "--fault-mode",
                "random",
                "--seed",
                seed,
                "--error-ratio",
                &ratio_text,
            ]);
            let failures = outcomes(20_000, |n| f.should_fail(n));
            let hits = failures.iter().filter(|&&hit| hit).count();
            assert_binomial(hits, 20_000, ratio, &format!("seed {seed} ratio {ratio}"));
        }
        let always = faults(&["--fault-mode", "random", "--error-ratio", "1"]);
        assert!((0..20_000).all(|n| always.should_fail(n)));
        let never = faults(&["--fault-mode", "random", "--error-ratio", "0"]);
        assert!(!(0..20_000).any(|n| never.should_fail(n)));
    }

    #[test]
    fn random_failures_bunch_up_as_an_even_spread_never_does() {
        let args = ["--seed", "42", "--error-ratio", "0.1", "--fault-mode"];
        let random_faults = faults(&[&args[..], &["random"]].concat());
        let even_faults = faults(&[&args[..], &["even"]].concat());
        let random = outcomes(20_000, |n| random_faults.should_fail(n));
        let even = outcomes(20_000, |n| even_faults.should_fail(n));

        // An even spread at 0.1 puts exactly 10 failures in every aligned block of 100 and
        // never two in a row; the same checks on it show they tell the two apart.
        let even_blocks = block_counts(&even);
        assert!(
            even_blocks.iter().all(|&count| count == 10),
            "{even_blocks:?}"
        );
        assert_eq!(longest_run(&even), 1);

        // Random failures do what an even spread cannot: blocks far from 10 and runs of
        // failures. Falling back to the even pattern, or drawing the same value for
        // neighbouring indexes, fails here.
        let blocks = block_counts(&random);
        assert!(blocks.iter().any(|&count| count <= 5), "{blocks:?}");
        assert!(blocks.iter().any(|&count| count >= 15), "{blocks:?}");
        assert!(longest_run(&random) >= 3, "no run of 3 failures in 20,000");
        // The block counts vary as Binomial(100, 0.1) does (variance 9): a generator with
        // correlated neighbours would make them vary much more or much less.
        let mean = blocks.iter().sum::<usize>() as f64 / blocks.len() as f64;
        let variance = blocks
            .iter()
            .map(|&count| (count as f64 - mean).powi(2))
            .sum::<f64>()
            / (blocks.len() - 1) as f64;
        assert!(
            (5.4..=12.6).contains(&variance),
            "block variance {variance}"
        );
    }

    /// Every fault's share at one half: the most draws to compare.
    const EVERY_SHARE_HALF: &[&str] = &[
        "--error-ratio",
        "0.5",
        "--background-error-ratio",
        "0.5",
        "--slow-ratio",
        "0.5",
    ];

    #[test]
    fn the_same_seed_gives_the_same_outcomes() {
        let flags = |seed: &'static str| {
            let mut args = vec![
                "--fault-mode",
                "random",
                "--seed",
                seed,
                "--jitter-ms",
                "20",
            ];
            args.extend_from_slice(EVERY_SHARE_HALF);
            faults(&args)
        };
        let everything = |f: &Faults| -> Vec<(bool, bool, bool, Duration)> {
            (0..20_000)
                .map(|n| {
                    (
                        f.should_fail(n),
                        f.is_slow(n),
                        f.background_fails(n + 1),
                        f.jitter(n + 1),
                    )
                })
                .collect()
        };
        let first = everything(&flags("42"));
        assert_eq!(first, everything(&flags("42")));

        // Another seed gives another sequence: about half the failure outcomes disagree.
        // Catches a seed that is parsed but never reaches the draws.
        let other = everything(&flags("43"));
        let differ = first.iter().zip(&other).filter(|(a, b)| a.0 != b.0).count();
        assert_binomial(
            differ,
            20_000,
            0.5,
            "outcomes differing between seeds 42 and 43",
        );
    }

    #[test]
    fn runs_without_a_seed_differ() {
        // Two servers started in the same millisecond in the same process must still differ.
        let seeds: Vec<u64> = (0..100)
            .map(|_| Faults::new(&DemoAppArgs::default()).seed)
            .collect();
        let mut distinct = seeds.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), seeds.len(), "{seeds:?}");
    }

    #[test]
    fn each_fault_draws_independently() {
        // With every share at one half, each pair of faults coincides on about a quarter of
        // the requests; faults sharing a random stream would coincide on half.
        let mut args = vec!["--fault-mode", "random", "--seed", "9"];
        args.extend_from_slice(EVERY_SHARE_HALF);
        let f = faults(&args);
        let both = |a: &dyn Fn(u64) -> bool, b: &dyn Fn(u64) -> bool| {
            (0..20_000).filter(|&n| a(n) && b(n)).count()
        };
        let fail = |n| f.should_fail(n);
        let slow = |n| f.is_slow(n);
        let background = |n| f.background_fails(n);
        assert_binomial(both(&fail, &slow), 20_000, 0.25, "failing and slow");
        assert_binomial(both(&fail, &background), 20_000, 0.25, "failing twice");
        assert_binomial(
            both(&slow, &background),
            20_000,
            0.25,
            "slow and background",
        );
    }

    #[test]
    fn slow_ratio_picks_that_share_of_requests() {
        let random = faults(&[
            "--fault-mode",
            "random",
            "--seed",
            "7",
            "--slow-ratio",
            "0.07",
        ]);
        let slow = outcomes(20_000, |n| random.is_slow(n));
        assert_binomial(
            slow.iter().filter(|&&hit| hit).count(),
            20_000,
            0.07,
            "random slow",
        );
        assert!(longest_run(&slow) >= 2, "random slowness never bunches up");

        let even = faults(&["--fault-mode", "even", "--slow-ratio", "0.07"]);
        assert_eq!((0..1000).filter(|&n| even.is_slow(n)).count(), 70);
        assert_eq!((0..20_000).filter(|&n| even.is_slow(n)).count(), 1400);

        // The default keeps the old behaviour, latency on every request, in both modes.
        for mode in ["random", "even"] {
            let every = faults(&["--fault-mode", mode]);
            assert!((0..20_000).all(|n| every.is_slow(n)), "{mode}");
            let none = faults(&["--fault-mode", mode, "--slow-ratio", "0"]);
            assert!(!(0..20_000).any(|n| none.is_slow(n)), "{mode}");
        }
    }

    #[test]
    fn background_errors_are_random_or_exact() {
        let random = faults(&[
            "--fault-mode",
            "random",
            "--seed",
            "11",
            "--background-error-ratio",
            "0.01",
        ]);
        let hits = (1..=20_000).filter(|&n| random.background_fails(n)).count();
        assert_binomial(hits, 20_000, 0.01, "random background");

        // The even pattern is the one the demo app always had, by request number from 1.
        let even = faults(&["--fault-mode", "even", "--background-error-ratio", "0.01"]);
        let failing: Vec<u64> = (1..=300).filter(|&n| even.background_fails(n)).collect();
        assert_eq!(failing, [99, 199, 299]);
    }

    #[test]
    fn random_jitter_is_uniform_up_to_the_limit() {
        let f = faults(&["--fault-mode", "random", "--seed", "3", "--jitter-ms", "20"]);
        let micros: Vec<u128> = (1..=20_000).map(|n| f.jitter(n).as_micros()).collect();
        let limit = 20_000;
        assert!(micros.iter().all(|&us| us <= limit));
        // Both ends are reached, so the range is 0..=20 ms rather than a slice of it.
        assert!(micros.iter().any(|&us| us < 200));
        assert!(micros.iter().any(|&us| us > limit - 200));
        // Uniform on 0..=20,000 µs: mean 10,000 µs, standard deviation 5,774 µs, so the
        // mean of 20,000 draws is within about 41 µs · 5 of it.
        let mean = micros.iter().sum::<u128>() as f64 / micros.len() as f64;
        assert!((mean - 10_000.0).abs() < 205.0, "mean jitter {mean} µs");
        let below_quarter = micros.iter().filter(|&&us| us < limit / 4).count();
        assert_binomial(below_quarter, 20_000, 0.25, "jitter below 5 ms");

        let none = faults(&["--fault-mode", "random", "--seed", "3"]);
        assert!((1..=1000).all(|n| none.jitter(n).is_zero()));
    }

    #[test]
    fn even_jitter_is_the_old_fixed_pattern() {
        // The formula the demo app used before fault modes existed, written out again so a
        // change to the even mode's jitter cannot pass unnoticed.
        fn old(request_number: u64, jitter_ms: u64) -> Duration {
            let mut z = request_number.wrapping_add(0x9e37_79b9_7f4a_7c15);
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            Duration::from_micros(z % (jitter_ms * 1000 + 1))
        }
        for seed in ["1", "2"] {
            let f = faults(&["--fault-mode", "even", "--seed", seed, "--jitter-ms", "20"]);
            assert!((1..=1000).all(|n| f.jitter(n) == old(n, 20)));
        }
    }

    #[test]
    fn describe_names_the_mode_seed_and_slow_ratio() {
        let args = DemoAppArgs {
            error_ratio: 0.3,
            latency_ms: 300,
            slow_ratio: 0.07,
            seed: Some(5),
            ..DemoAppArgs::default()
        };
        assert_eq!(
            describe_misbehaviour(&args),
            [
                "error-ratio 0.3",
                "latency 300ms on slow-ratio 0.07 of requests",
                "random faults (seed 5)"
            ]
        );
        let even = DemoAppArgs {
            fault_mode: FaultMode::Even,
            slow_ratio: 1.0,
            ..args.clone()
        };
        assert_eq!(
            describe_misbehaviour(&even),
            ["error-ratio 0.3", "latency 300ms", "evenly spread faults"]
        );
        // A latency that no request gets is no misbehaviour.
        let never_slow = DemoAppArgs {
            latency_ms: 300,
            slow_ratio: 0.0,
            ..DemoAppArgs::default()
        };
        assert!(describe_misbehaviour(&never_slow).is_empty());
    }

    #[test]
    fn bind_failure_names_the_address() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let args = DemoAppArgs {
            listen: taken.local_addr().expect("addr"),
            ..DemoAppArgs::default()
        };
        assert_eq!(run(args), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn health_is_ok_and_carries_the_version() {
        let server = TestServer::start(&["--version", "v1"]).await;
        let answer = get(server.addr, "/health").await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.body, r#"{"status":"ok","version":"v1"}"#);
        assert_eq!(answer.headers[CONTENT_TYPE], "application/json");
        assert_eq!(answer.headers["x-demo-version"], "v1");
        server.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fail_health_answers_503() {
        let server = TestServer::start(&["--version", "v2", "--fail-health"]).await;
        let answer = get(server.addr, "/health").await;
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            answer.json(),
            serde_json::json!({"status": "failing", "version": "v2"})
        );
        server.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn api_reports_version_path_method_and_counter() {
        let server = TestServer::start(&["--version", "v1"]).await;
        let first = get(server.addr, "/api/x").await;
        assert_eq!(first.status, StatusCode::OK);
        assert_eq!(
            first.body,
            r#"{"version":"v1","path":"/api/x","method":"GET","request":1}"#
        );
        assert_eq!(first.headers["x-demo-version"], "v1");
        let second = send(server.addr, request(Method::DELETE, server.addr, "/api")).await;
        assert_eq!(second.status, StatusCode::OK);
        assert_eq!(second.json()["method"], "DELETE");
        assert_eq!(second.json()["path"], "/api");
        assert_eq!(second.json()["request"], 2);
        server.shutdown().await;
    }

    /// Even mode over HTTP: the exact pattern reaches the wire, which this test can check
    /// request by request only because the spread is deterministic.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn error_ratio_is_exact_in_even_mode() {
        let server = TestServer::start(&[
            "--version",
            "v1",
            "--error-ratio",
            "0.25",
            "--fault-mode",
            "even",
        ])
        .await;
        let mut failures = 0;
        for n in 0..100 {
            let answer = get(server.addr, "/api").await;
            if answer.status == StatusCode::INTERNAL_SERVER_ERROR {
                assert_eq!(
                    answer.json(),
                    serde_json::json!({"error": "injected failure", "version": "v1"})
                );
                assert_eq!(answer.headers["x-demo-version"], "v1");
                assert_eq!(n % 4, 3, "request {n} should not have failed");
                failures += 1;
            } else {
                assert_eq!(answer.status, StatusCode::OK);
            }
        }
        assert_eq!(failures, 25);
        server.shutdown().await;
    }

    /// Random mode over HTTP: with a seed, each request's status and delay are the ones
    /// the decision functions predict for its index, and `/metrics` counts them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn seeded_random_faults_reach_the_wire() {
        let flags = [
            "--version",
            "v1",
            "--fault-mode",
            "random",
            "--seed",
            "7",
            "--error-ratio",
            "0.5",
            "--latency-ms",
            "200",
            "--slow-ratio",
            "0.3",
        ];
        let predicted = faults(&flags);
        let count = 40;
        let expect_fail: Vec<bool> = (0..count).map(|n| predicted.should_fail(n)).collect();
        let expect_slow: Vec<bool> = (0..count).map(|n| predicted.is_slow(n)).collect();
        // The seed must give both outcomes of each, or the checks below prove nothing.
        assert!(expect_fail.contains(&true) && expect_fail.contains(&false));
        assert!(expect_slow.contains(&true) && expect_slow.contains(&false));

        let server = TestServer::start(&flags).await;
        let latency = Duration::from_millis(200);
        let mut fastest_fast = Duration::MAX;
        for n in 0..count as usize {
            let started = std::time::Instant::now();
            let answer = get(server.addr, "/api").await;
            let took = started.elapsed();
            let expected = if expect_fail[n] {
                StatusCode::INTERNAL_SERVER_ERROR
            } else {
                StatusCode::OK
            };
            assert_eq!(answer.status, expected, "request {n}");
            if expect_slow[n] {
                assert!(took >= latency, "request {n} took {took:?}, should be slow");
            } else {
                fastest_fast = fastest_fast.min(took);
            }
        }
        // Requests not picked as slow skip the delay: were every request delayed (the
        // slow ratio ignored), none would be faster than it.
        assert!(
            fastest_fast < latency,
            "fastest non-slow request {fastest_fast:?}"
        );

        let failed = expect_fail.iter().filter(|&&fail| fail).count();
        let metrics = get(server.addr, "/metrics").await;
        let text = std::str::from_utf8(&metrics.body).expect("utf-8");
        assert!(
            text.contains(&format!(
                "demo_requests_total{{version=\"v1\",code=\"500\"}} {failed}\n"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "demo_requests_total{{version=\"v1\",code=\"200\"}} {}\n",
                count as usize - failed
            )),
            "{text}"
        );
        server.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stream_sends_every_chunk_with_delays() {
        let server = TestServer::start(&[]).await;
        let started = std::time::Instant::now();
        let answer = get(server.addr, "/api/stream?chunks=7&delay_ms=20").await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.headers["transfer-encoding"], "chunked");
        let expected: String = (0..7).map(|i| format!("chunk {i}\n")).collect();
        assert_eq!(answer.body, expected.as_bytes());
        assert!(started.elapsed() >= Duration::from_millis(120));

        let defaults = get(server.addr, "/api/stream").await;
        assert_eq!(defaults.body.iter().filter(|&&b| b == b'\n').count(), 5);
        let bad = get(server.addr, "/api/stream?chunks=many").await;
        assert_eq!(bad.status, StatusCode::BAD_REQUEST);
        server.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn echo_returns_the_body() {
        let server = TestServer::start(&[]).await;
        let payload: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
        let req = Request::builder()
            .method(Method::POST)
            .uri("/api/echo")
            .header(hyper::header::HOST, server.addr.to_string())
            .body(Full::new(Bytes::from(payload.clone())))
            .expect("request");
        let answer = send(server.addr, req).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.body, payload);
        server.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unknown_path_is_404() {
        let server = TestServer::start(&["--version", "v9"]).await;
        for path in ["/", "/apix", "/nope"] {
            let answer = get(server.addr, path).await;
            assert_eq!(answer.status, StatusCode::NOT_FOUND, "{path}");
            assert_eq!(answer.headers["x-demo-version"], "v9");
        }
        server.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn after_secs_delays_misbehaviour() {
        let server =
            TestServer::start(&["--after-secs", "1", "--fail-health", "--error-ratio", "1"]).await;
        let started = std::time::Instant::now();
        assert_eq!(get(server.addr, "/health").await.status, StatusCode::OK);
        assert_eq!(get(server.addr, "/api").await.status, StatusCode::OK);
        let mut turned = false;
        for _ in 0..40 {
            if get(server.addr, "/health").await.status == StatusCode::SERVICE_UNAVAILABLE {
                turned = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(turned, "health never started failing");
        assert!(started.elapsed() >= Duration::from_millis(900));
        assert_eq!(
            get(server.addr, "/api").await.status,
            StatusCode::INTERNAL_SERVER_ERROR
        );
        server.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn graceful_shutdown_finishes_in_flight_requests() {
        let server = TestServer::start(&["--latency-ms", "300"]).await;
        let addr = server.addr;
        let in_flight = tokio::spawn(async move { get(addr, "/api/slow").await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = std::time::Instant::now();
        server.shutdown().await;
        // The shutdown must have waited for the slow request rather than cut it off.
        assert!(started.elapsed() >= Duration::from_millis(150));
        let answer = in_flight.await.expect("client task");
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.json()["path"], "/api/slow");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "the listener should be closed after shutdown"
        );
    }
}
