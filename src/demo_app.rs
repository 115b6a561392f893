//! The demo application that ripcord's demo, tests and benchmarks deploy and roll back.
//!
//! It is a small HTTP/1.1 server that reports its version on `/health` and `/api`, and that
//! can be told to misbehave on purpose (injected 5xx responses, added latency, a memory leak,
//! CPU burn, a failing health check, a crash or a slow start) so that ripcord's health gates
//! have something real to detect. Every misbehaviour is deterministic, so tests can assert
//! exact counts.
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

    /// Ratio of /api requests that fail with 500, between 0 and 1, spread deterministically
    #[arg(long, value_name = "F", default_value_t = 0.0, value_parser = parse_ratio, env = "DEMO_ERROR_RATIO")]
    pub error_ratio: f64,

    /// Ratio of /api requests that fail with 500 from the start, spread evenly
    /// (background noise, as a healthy service has: not a misbehaviour)
    #[arg(long, value_name = "F", default_value_t = 0.0, value_parser = parse_ratio)]
    pub background_error_ratio: f64,

    /// Milliseconds added before every /api response
    #[arg(long, value_name = "N", default_value_t = 0, env = "DEMO_LATENCY_MS")]
    pub latency_ms: u64,

    /// Up to N more milliseconds on every /api response, spread evenly (background
    /// noise, from the start: not a misbehaviour)
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub jitter_ms: u64,

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
            jitter_ms: 0,
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
        check_ratio(self.error_ratio)?;
        check_ratio(self.background_error_ratio)?;
        HeaderValue::from_str(&self.app_version).map_err(|_| {
            format!(
                "version {:?} cannot be sent in an http header",
                self.app_version
            )
        })?;
        Ok(())
    }
}

/// Parses `--error-ratio`, so that a bad value is a usage error (exit code 2) from clap itself.
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
fn check_ratio(ratio: f64) -> Result<(), String> {
    if ratio_in_range(ratio) {
        Ok(())
    } else {
        Err(format!(
            "--error-ratio must be between 0 and 1, got {ratio}"
        ))
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
    /// The failure ratio in parts per million, so the failure pattern is integer arithmetic
    /// and exact rather than subject to floating-point rounding.
    error_ppm: u64,
    /// Background failures, from the start, in parts per million.
    background_ppm: u64,
    latency: Duration,
    jitter_ms: u64,
    fail_health: bool,
    /// Every request answered, for the `request` field of `/api` responses.
    requests: AtomicU64,
    /// `/api` requests seen while misbehaving, which decides which of them fail.
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
            error_ppm: (args.error_ratio * 1_000_000.0).round() as u64,
            background_ppm: (args.background_error_ratio * 1_000_000.0).round() as u64,
            latency: Duration::from_millis(args.latency_ms),
            jitter_ms: args.jitter_ms,
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

    /// Decides whether the `/api` request with index `n` (from 0) fails.
    ///
    /// It fails exactly when `floor((n+1)*r) > floor(n*r)`, so the first `k` requests
    /// always hold `floor(k*r)` failures and the ratio is exact over any long run.
    fn should_fail(&self, n: u64) -> bool {
        let ppm = self.error_ppm;
        (n + 1) * ppm / 1_000_000 > n * ppm / 1_000_000
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

    // The failure decision is taken on arrival, so concurrent requests keep the exact ratio.
    let misbehaving = state.misbehaving();
    let fail = misbehaving && {
        let n = state.faulty_api_requests.fetch_add(1, Ordering::Relaxed);
        state.should_fail(n)
    } || {
        let ppm = state.background_ppm;
        let n = request_number;
        (n + 1) * ppm / 1_000_000 > n * ppm / 1_000_000
    };
    if state.jitter_ms > 0 {
        // splitmix64 of the request number: even, repeatable noise without a RNG crate.
        let mut z = request_number.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        tokio::time::sleep(Duration::from_micros(z % (state.jitter_ms * 1000 + 1))).await;
    }
    if misbehaving && !state.latency.is_zero() {
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
    if args.latency_ms > 0 {
        parts.push(format!("latency {}ms", args.latency_ms));
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
        ])
        .expect("parse");
        assert_eq!(args.bind_addr(), "127.0.0.2:9100".parse().unwrap());
        assert_eq!(args.app_version, "v7");
        assert_eq!(args.error_ratio, 0.5);
        assert_eq!(args.exit_at_start, Some(-3));
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
    fn failure_pattern_is_exact() {
        let state = State::new(&DemoAppArgs {
            error_ratio: 0.1,
            ..DemoAppArgs::default()
        });
        let failures = (0..1000).filter(|&n| state.should_fail(n)).count();
        assert_eq!(failures, 100);
        assert!(state.should_fail(9) && !state.should_fail(8));
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn error_ratio_is_exact() {
        let server = TestServer::start(&["--version", "v1", "--error-ratio", "0.25"]).await;
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
