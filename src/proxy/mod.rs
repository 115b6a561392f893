//! The built-in reverse proxy (`router = "proxy"`): listens on a service's `listen`
//! address and forwards every request to the active slot.
//!
//! The switch is one atomic pointer swap; each request reads the target once, so a
//! request in flight finishes on the slot it started on. Every request is recorded
//! (status, latency, slot, release) into a bounded channel with `try_send`: the request
//! path never waits on the ledger, on a lock held across IO, or on the guard. When the
//! channel is full the record is dropped and counted, never the request.

mod deadline;
mod h1;
mod headers;
mod tls;
mod workers;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::http::uri::{Authority, Scheme};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, Uri, Version};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tokio::task::JoinHandle;

use crate::config::{ProxyLimits, ProxyTls, Slot, UpstreamProtocol};
use crate::http::error_chain;

pub use headers::strip_hop_by_hop;
pub use workers::{MAX_WORKERS, WORKERS_ENV};

/// Whether the proxy can serve HTTPS with `tls` (the certificate and key read, and one
/// going with the other); why not, naming the file at fault.
pub fn check_tls(tls: &crate::config::ProxyTls) -> Result<(), String> {
    tls::acceptor(tls).map(|_| ())
}

/// Where traffic goes: one slot and the release running in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub slot: Slot,
    pub addr: SocketAddr,
    pub release_id: i64,
    pub version: String,
}

/// One proxied request, as the guard sees it.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    pub slot: Slot,
    pub release_id: i64,
    pub status: u16,
    /// Time to the response head (or to the error), in microseconds.
    pub latency_us: u64,
    /// Whether `latency_us` was measured: an access log whose format has neither
    /// `$request_time` nor `$upstream_response_time` (nginx's `combined`) has no timing,
    /// and such requests feed no latency rule or baseline.
    pub timed: bool,
    /// Whether ripcord answered itself because the slot could not be reached.
    pub upstream_error: bool,
    pub at_ms: i64,
}

/// Counters the proxy keeps without any lock.
#[derive(Debug, Default)]
pub struct ProxyCounters {
    pub requests: AtomicU64,
    pub in_flight: AtomicU64,
    pub upstream_errors: AtomicU64,
    /// Records dropped because the guard's channel was full.
    pub records_dropped: AtomicU64,
    /// Upgraded connections (WebSockets) open now, spliced between a client and a release.
    pub upgraded: AtomicU64,
}

type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// The active target, with its address as an upstream URI's authority, made once at the
/// switch rather than at every request.
struct Route {
    target: Arc<Target>,
    authority: Authority,
}

impl Route {
    fn new(target: Target) -> Route {
        let authority =
            Authority::try_from(target.addr.to_string()).expect("a socket address is an authority");
        Route {
            target: Arc::new(target),
            authority,
        }
    }
}

struct Shared {
    service: Arc<str>,
    route: ArcSwapOption<Route>,
    records: Option<mpsc::Sender<RequestRecord>>,
    counters: ProxyCounters,
    limits: ProxyLimits,
    /// Set while a release is put in place at the one address behind the proxy: new
    /// requests wait (at most [`MAX_HOLD`]) instead of meeting a closed port.
    held: AtomicBool,
    released: Notify,
    /// Release connections held by client connections now ([`OWN_MAX`]).
    own_count: AtomicUsize,
    request_ids: headers::RequestIds,
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// Whether shutdown was asked for ([`Proxy::shutdown`]).
    stop: watch::Receiver<bool>,
    /// Told of every switch: an upgraded connection on a release switched away from is
    /// closed `websocket_drain` later.
    switches: watch::Sender<()>,
}

/// The longest a request waits while the proxy holds new requests; then it goes on to
/// the target as it is.
pub const MAX_HOLD: Duration = Duration::from_secs(60);

/// Holds new requests for as long as it lives ([`Proxy::hold`]).
pub struct HoldGuard {
    shared: Arc<Shared>,
}

impl Drop for HoldGuard {
    fn drop(&mut self) {
        self.shared.held.store(false, Ordering::Release);
        self.shared.released.notify_waiters();
    }
}

/// A running proxy. Cloning shares it.
#[derive(Clone)]
pub struct Proxy {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
}

impl Proxy {
    /// Binds `listen` and serves until [`Proxy::shutdown`]. With no target set, every
    /// request gets a 503 that says so.
    pub async fn bind(
        service: &str,
        listen: SocketAddr,
        records: Option<mpsc::Sender<RequestRecord>>,
    ) -> std::io::Result<(Proxy, JoinHandle<()>)> {
        Proxy::bind_with(service, listen, records, ProxyLimits::default()).await
    }

    /// [`Proxy::bind`] with limits other than the defaults.
    pub async fn bind_with(
        service: &str,
        listen: SocketAddr,
        records: Option<mpsc::Sender<RequestRecord>>,
        limits: ProxyLimits,
    ) -> std::io::Result<(Proxy, JoinHandle<()>)> {
        let listener = std::net::TcpListener::bind(listen)?;
        listener.set_nonblocking(true)?;
        Proxy::serve(service, listener, records, limits, None)
    }

    /// [`Proxy::bind_with`], serving HTTPS (HTTP/2 or HTTP/1.1 by ALPN) with `tls`.
    pub async fn bind_tls(
        service: &str,
        listen: SocketAddr,
        records: Option<mpsc::Sender<RequestRecord>>,
        limits: ProxyLimits,
        tls: &ProxyTls,
    ) -> std::io::Result<(Proxy, JoinHandle<()>)> {
        let listener = std::net::TcpListener::bind(listen)?;
        listener.set_nonblocking(true)?;
        Proxy::serve(service, listener, records, limits, Some(tls))
    }

    /// Serves on a listening socket bound elsewhere (one kept across a watcher restart,
    /// or handed over by systemd); it must be non-blocking. With `tls`, it serves HTTPS.
    pub fn serve(
        service: &str,
        listener: std::net::TcpListener,
        records: Option<mpsc::Sender<RequestRecord>>,
        limits: ProxyLimits,
        tls: Option<&ProxyTls>,
    ) -> std::io::Result<(Proxy, JoinHandle<()>)> {
        Proxy::start(service, listener, records, false, limits, tls).map(|(p, t, _)| (p, t))
    }

    /// [`Proxy::serve`], held from its first request until the guard is dropped: for a
    /// watcher that takes over a socket with connections already waiting in its backlog,
    /// before it has routed them anywhere.
    pub fn serve_held(
        service: &str,
        listener: std::net::TcpListener,
        records: Option<mpsc::Sender<RequestRecord>>,
        limits: ProxyLimits,
        tls: Option<&ProxyTls>,
    ) -> std::io::Result<(Proxy, JoinHandle<()>, HoldGuard)> {
        let (p, t, hold) = Proxy::start(service, listener, records, true, limits, tls)?;
        Ok((p, t, hold.expect("started held")))
    }

    fn start(
        service: &str,
        listener: std::net::TcpListener,
        records: Option<mpsc::Sender<RequestRecord>>,
        held: bool,
        limits: ProxyLimits,
        tls: Option<&ProxyTls>,
    ) -> std::io::Result<(Proxy, JoinHandle<()>, Option<HoldGuard>)> {
        let tls = match tls {
            Some(tls) => Some(tls::acceptor(tls).map_err(std::io::Error::other)?),
            None => None,
        };
        let local_addr = listener.local_addr()?;
        // One accepting copy of the socket per worker, each taken into its worker's
        // runtime there; whichever worker is free first takes a new connection.
        let workers = workers::handles();
        let mut listeners = Vec::with_capacity(workers.len());
        for _ in workers {
            listeners.push(listener.try_clone()?);
        }
        drop(listener);
        let (shutdown, rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            service: Arc::from(service),
            route: ArcSwapOption::empty(),
            records,
            counters: ProxyCounters::default(),
            limits,
            held: AtomicBool::new(held),
            released: Notify::new(),
            own_count: AtomicUsize::new(0),
            request_ids: headers::RequestIds::new(),
            tls,
            stop: rx.clone(),
            switches: watch::Sender::new(()),
        });
        let hold = held.then(|| HoldGuard {
            shared: shared.clone(),
        });
        // A connection holds a permit for its life: at the cap, new ones wait in the
        // backlog. Shutdown waits for all of them to come back (the drain).
        let cap = limits
            .max_connections
            .clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
        let open = Arc::new(Semaphore::new(cap));
        let workers: Arc<[Worker]> = workers
            .iter()
            .map(|runtime| Worker::new(runtime.clone(), &shared))
            .collect();
        let loops: Vec<JoinHandle<()>> = listeners
            .into_iter()
            .enumerate()
            .map(|(me, listener)| {
                workers[me].runtime.spawn(accept_loop(
                    listener,
                    shared.clone(),
                    workers.clone(),
                    me,
                    open.clone(),
                    rx.clone(),
                ))
            })
            .collect();
        let stop_on_drop = StopOnDrop(shutdown.clone());
        let task = tokio::spawn(async move {
            // Dropped with the runtime that started the proxy: the workers stop taking
            // connections then, as the proxy's own tasks used to stop with it.
            let _stop_on_drop = stop_on_drop;
            for accepting in loops {
                let _ = accepting.await;
            }
            let _ = tokio::time::timeout(DRAIN_TIMEOUT, open.acquire_many(cap as u32)).await;
        });
        Ok((
            Proxy {
                shared,
                local_addr,
                shutdown,
            },
            task,
            hold,
        ))
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Sends new requests to `target` from now on and returns the old target. Requests
    /// already in flight finish where they started.
    pub fn switch(&self, target: Option<Target>) -> Option<Arc<Target>> {
        let old = self
            .shared
            .route
            .swap(target.map(|t| Arc::new(Route::new(t))));
        // Upgraded connections on the old release start their drain.
        self.shared.switches.send_replace(());
        old.map(|route| route.target.clone())
    }

    pub fn target(&self) -> Option<Arc<Target>> {
        self.shared.route.load().as_ref().map(|r| r.target.clone())
    }

    pub fn counters(&self) -> &ProxyCounters {
        &self.shared.counters
    }

    /// New requests wait until the guard is dropped (at most [`MAX_HOLD`]), for a
    /// release put in place at the one address behind the proxy (runtime `swarm`):
    /// they meet the new release late rather than a closed port. Requests already in
    /// flight go on; [`ProxyCounters::in_flight`] says when they are done.
    pub fn hold(&self) -> HoldGuard {
        self.shared.held.store(true, Ordering::Release);
        HoldGuard {
            shared: self.shared.clone(),
        }
    }

    /// Stops accepting; the accept task then drains open connections for at most
    /// `drain` before it returns.
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
    }
}

/// Tells a proxy's workers to stop when dropped.
struct StopOnDrop(watch::Sender<bool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.send_replace(true);
    }
}

/// The status recorded for a request whose client went away before its body was sent
/// (nginx's 499): not a 5xx, so no rule counts it against the release.
pub const CLIENT_CLOSED: u16 = 499;

/// A client's request body on its way to the release, noting when it breaks off.
struct ClientBody {
    inner: Incoming,
    /// None for a request with no body, which cannot break off.
    failed: Option<Arc<AtomicBool>>,
}

impl hyper::body::Body for ClientBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Err(_))) = &polled
            && let Some(failed) = &self.failed
        {
            failed.store(true, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// How long open connections get to finish after shutdown is asked for.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// One worker's share of a proxy: its runtime, its connection builders, its pool of
/// connections to the releases, and how many client connections it serves now.
struct Worker {
    runtime: tokio::runtime::Handle,
    builders: Arc<Builders>,
    open: AtomicUsize,
}

impl Worker {
    fn new(runtime: tokio::runtime::Handle, shared: &Shared) -> Worker {
        let limits = shared.limits;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(UPSTREAM_CONNECT_TIMEOUT));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .http2_only(limits.upstream_protocol == UpstreamProtocol::H2c)
            .build(connector);
        let mut http1 = hyper::server::conn::http1::Builder::new();
        http1
            .keep_alive(true)
            // A client that sends its request and closes its writing half still gets the
            // answer (curl -T, some load balancers' health checks).
            .half_close(true)
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .max_header_size(limits.max_header_bytes);
        let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
            // An HTTP/2 client that stops answering pings loses its connection (and its
            // place under max_connections), as an HTTP/1 one idle past header_timeout does.
            .keep_alive_interval(limits.header_timeout)
            .keep_alive_timeout(limits.header_timeout);
        Worker {
            runtime,
            builders: Arc::new(Builders {
                http1,
                http2,
                tls: shared.tls.clone(),
                client,
            }),
            open: AtomicUsize::new(0),
        }
    }
}

/// The worker a connection accepted by worker `me` goes to: `me`, unless another serves
/// at least two connections fewer (a burst of connections woke one worker first).
fn pick_worker(open: &[usize], me: usize) -> usize {
    let (least, fewest) = open
        .iter()
        .copied()
        .enumerate()
        .min_by_key(|&(_, n)| n)
        .unwrap_or((me, 0));
    if open.get(me).is_some_and(|&mine| mine <= fewest + 1) {
        me
    } else {
        least
    }
}

/// A worker's count of the connections it serves, given back when the connection ends.
struct Serving {
    workers: Arc<[Worker]>,
    index: usize,
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.workers[self.index]
            .open
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// One worker's accepting, on that worker's runtime. A connection is served by the
/// worker that accepted it, or handed to the least busy one.
async fn accept_loop(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    workers: Arc<[Worker]>,
    me: usize,
    open: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(e) => {
            tracing::error!(service = %shared.service, error = %e, "a proxy worker cannot take its listening socket");
            return;
        }
    };
    loop {
        let permit = tokio::select! {
            p = open.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            _ = stop.changed() => break,
        };
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and similar: back off instead of spinning.
                        tracing::warn!(service = %shared.service, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let counts: Vec<usize> = workers.iter().map(|w| w.open.load(Ordering::Relaxed)).collect();
                let to = pick_worker(&counts, me);
                workers[to].open.fetch_add(1, Ordering::Relaxed);
                let serving = Serving { workers: workers.clone(), index: to };
                let (shared, stop) = (shared.clone(), stop.clone());
                let builders = workers[to].builders.clone();
                if to == me {
                    tokio::spawn(async move {
                        let _serving = serving;
                        connection(shared, builders, stream, peer, stop, permit).await;
                    });
                } else {
                    // Into the other worker's reactor: out of this one, into that one there.
                    let Ok(stream) = stream.into_std() else { continue };
                    workers[to].runtime.spawn(async move {
                        let _serving = serving;
                        let Ok(stream) = tokio::net::TcpStream::from_std(stream) else { return };
                        connection(shared, builders, stream, peer, stop, permit).await;
                    });
                }
            }
            _ = stop.changed() => break,
        }
    }
}

/// The connection builders and the pool of connections to the releases, one per proxy
/// and worker.
struct Builders {
    http1: hyper::server::conn::http1::Builder,
    http2: hyper::server::conn::http2::Builder<TokioExecutor>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    client: Client<HttpConnector, ClientBody>,
}

/// What an HTTP/2 client sends first (RFC 9113 §3.4): a client that speaks HTTP/2
/// without TLS (h2c) with prior knowledge.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether a client starts with the HTTP/2 preface, from its first bytes, left unread.
/// An HTTP/1 request differs at its first byte, so it is told at the first look. A
/// preface cut short that makes no progress for [`PREFACE_PATIENCE`] is left to HTTP/1,
/// which answers what it is (a peek cannot see the client's end of the stream).
async fn sends_h2_preface(stream: &tokio::net::TcpStream) -> std::io::Result<bool> {
    let mut buf = [0u8; H2_PREFACE.len()];
    let mut seen = 0;
    let mut since = tokio::time::Instant::now();
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 || buf[..n] != H2_PREFACE[..n] {
            return Ok(false);
        }
        if n == H2_PREFACE.len() {
            return Ok(true);
        }
        if n != seen {
            (seen, since) = (n, tokio::time::Instant::now());
        } else if since.elapsed() >= PREFACE_PATIENCE {
            return Ok(false);
        }
        // A preface in pieces: look again once more may have come.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// How long a preface cut short may wait for its next byte.
const PREFACE_PATIENCE: Duration = Duration::from_millis(200);

/// One accepted client connection: TLS when configured (ALPN picks HTTP/2 or HTTP/1.1),
/// else HTTP/1 or h2c by the client's first bytes. A client that has not said which
/// within `header_timeout` loses its connection, as with a slow request head.
async fn connection(
    shared: Arc<Shared>,
    builders: Arc<Builders>,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    stop: watch::Receiver<bool>,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let wait = shared.limits.header_timeout;
    if let Some(acceptor) = builders.tls.clone() {
        let Ok(Ok(tls)) = tokio::time::timeout(wait, acceptor.accept(stream)).await else {
            return;
        };
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        let client = headers::Client::new(peer, true);
        serve(shared, builders, tls, client, h2, stop, permit).await;
    } else {
        let Ok(Ok(h2)) = tokio::time::timeout(wait, sends_h2_preface(&stream)).await else {
            return;
        };
        let client = headers::Client::new(peer, false);
        serve(shared, builders, stream, client, h2, stop, permit).await;
    }
}

/// Drives a connection until it ends, or until shutdown: then it stops taking requests
/// and lets those in flight finish.
macro_rules! until_stopped {
    ($served:ident, $stop:ident) => {{
        tokio::pin!($served);
        let stopping = tokio::select! {
            _ = $served.as_mut() => false,
            _ = $stop.wait_for(|stopped| *stopped) => true,
        };
        if stopping {
            $served.as_mut().graceful_shutdown();
            let _ = $served.await;
        }
    }};
}

/// Serves a client connection until it closes, or until shutdown lets its requests in
/// flight finish: an HTTP/1 one on the fast path ([`h1`]) for as long as its requests
/// are for it, then with hyper's server; an HTTP/2 one with hyper's.
async fn serve<I>(
    shared: Arc<Shared>,
    builders: Arc<Builders>,
    mut io: I,
    client: headers::Client,
    h2: bool,
    mut stop: watch::Receiver<bool>,
    permit: tokio::sync::OwnedSemaphorePermit,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let first = if h2 || shared.limits.upstream_protocol != UpstreamProtocol::Http1 {
        Vec::new()
    } else {
        match h1::serve(&shared, &client, &mut io, &mut stop).await {
            Some(rest) => rest,
            None => return,
        }
    };
    let ctx = Arc::new(Connection {
        shared,
        client,
        upstream: builders.client.clone(),
        own: std::sync::Mutex::new(None),
        permit: std::sync::Mutex::new(Some(permit)),
    });
    let svc = service_fn(move |req| handle(ctx.clone(), req));
    let io = TokioIo::new(h1::Rewind::new(first, io));
    if h2 {
        let served = builders.http2.serve_connection(io, svc);
        until_stopped!(served, stop);
    } else {
        let served = builders.http1.serve_connection(io, svc).with_upgrades();
        until_stopped!(served, stop);
    }
    // The permit goes back with the connection's state, unless an upgrade took it.
}

/// One client connection, as its requests see it.
struct Connection {
    shared: Arc<Shared>,
    client: headers::Client,
    /// The worker's pool of connections to the releases.
    upstream: Client<HttpConnector, ClientBody>,
    /// The connection to the release this client connection holds, request after request
    /// (HTTP/1 releases): its requests skip the pool, and its release connection is
    /// driven on the same worker. Taken while a request is on it.
    own: std::sync::Mutex<Option<Own>>,
    /// The connection's place under `max_connections`: an upgraded connection takes it
    /// along, so WebSockets count against the cap too.
    permit: std::sync::Mutex<Option<tokio::sync::OwnedSemaphorePermit>>,
}

async fn handle(
    ctx: Arc<Connection>,
    mut req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let shared = &ctx.shared;
    let mut start = Instant::now();
    let counters = &shared.counters;
    counters.requests.fetch_add(1, Ordering::Relaxed);
    if shared.held.load(Ordering::Acquire) {
        wait_for_release(shared).await;
        // The release's latency is its own, not the time the request was held.
        start = Instant::now();
    }
    // Read the target exactly once: this request stays on this slot whatever happens.
    let Some(route) = shared.route.load_full() else {
        return Ok(own_answer(
            &shared.request_ids,
            req.headers(),
            plain(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "ripcord: service `{}` has no active release yet: deploy one with `ripcord deploy {} VERSION`\n",
                    shared.service, shared.service
                ),
            ),
        ));
    };
    let uri_len = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if uri_len > shared.limits.max_uri_bytes {
        return Ok(own_answer(
            &shared.request_ids,
            req.headers(),
            plain(
                StatusCode::URI_TOO_LONG,
                format!(
                    "ripcord: the request target is {uri_len} bytes, more than the {} allowed\n",
                    shared.limits.max_uri_bytes
                ),
            ),
        ));
    }
    let upgrade = headers::upgrade_of(req.headers());
    if upgrade.is_some() && shared.limits.upstream_protocol == UpstreamProtocol::H2c {
        // Not the release's failure, so not recorded: the proxy's configuration.
        return Ok(own_answer(
            &shared.request_ids,
            req.headers(),
            plain(
                StatusCode::NOT_IMPLEMENTED,
                format!(
                    "ripcord: service `{}` speaks HTTP/2 to its releases (upstream_protocol = \"h2c\"), \
                 which has no upgrades: WebSockets need upstream_protocol = \"http1\"\n",
                    shared.service
                ),
            ),
        ));
    }
    counters.in_flight.fetch_add(1, Ordering::Relaxed);
    // An upgrade (WebSocket): the client's side of the connection, once it is switched.
    let upgrade = upgrade.map(|protocol| (protocol, hyper::upgrade::on(&mut req)));
    let (mut parts, body) = req.into_parts();
    let version = parts.version;
    parts.version = match shared.limits.upstream_protocol {
        UpstreamProtocol::H2c => Version::HTTP_2,
        UpstreamProtocol::Http1 if version == Version::HTTP_2 => Version::HTTP_11,
        UpstreamProtocol::Http1 => version,
    };
    let target = &route.target;
    let client_failed =
        (!hyper::body::Body::is_end_stream(&body)).then(|| Arc::new(AtomicBool::new(false)));
    let body = ClientBody {
        inner: body,
        failed: client_failed.clone(),
    };
    let request_id = headers::prepare_request(
        &mut parts.headers,
        &parts.uri,
        &ctx.client,
        &shared.request_ids,
    );
    if let Some((protocol, _)) = &upgrade {
        headers::set_upgrade(&mut parts.headers, protocol.clone());
    }
    if shared.limits.upstream_protocol == UpstreamProtocol::H2c {
        // HTTP/2 names the host in `:authority` (the release's address, which the
        // connection pool goes by); a `Host` that differs makes the request malformed
        // (RFC 9113 §8.3.1). The client's host is in X-Forwarded-Host and Forwarded.
        parts.headers.remove(hyper::header::HOST);
    }
    let deadline = deadline::Deadline::new(start, shared.limits.response_timeout);
    let result = tokio::select! {
        biased;
        sent = send(&ctx, &route, Request::from_parts(parts, body), upgrade.is_some()) => Ok(sent),
        () = deadline => Err(()),
    };
    counters.in_flight.fetch_sub(1, Ordering::Relaxed);
    // The client's body broke off (it went away mid-upload): its failure, not the
    // release's, so the guard does not count it (nginx logs these as 499).
    if client_failed.is_some_and(|f| f.load(Ordering::Relaxed)) && !matches!(result, Ok(Ok(_))) {
        record(shared, target, CLIENT_CLOSED, start, false);
        let resp = plain(
            StatusCode::BAD_REQUEST,
            "ripcord: the request body ended before its length\n".to_string(),
        );
        return Ok(with_id(resp, request_id));
    }
    let response = match result {
        Err(_) => {
            counters.upstream_errors.fetch_add(1, Ordering::Relaxed);
            record(shared, target, 504, start, true);
            plain(StatusCode::GATEWAY_TIMEOUT, too_slow(shared, target))
        }
        Ok(result) => match result {
            Err(Failed::Target(e)) => {
                let resp = plain(
                    StatusCode::BAD_REQUEST,
                    format!("ripcord: bad request target: {e}\n"),
                );
                return Ok(with_id(resp, request_id));
            }
            Ok(mut resp) => {
                let switched = match upgrade {
                    Some((_, client)) if resp.status() == StatusCode::SWITCHING_PROTOCOLS => {
                        let release = hyper::upgrade::on(&mut resp);
                        Some((client, release))
                    }
                    _ => None,
                };
                let (mut parts, body) = resp.into_parts();
                // The client's protocol, whatever the release's.
                parts.version = version;
                let protocol = parts.headers.get(hyper::header::UPGRADE).cloned();
                headers::strip_hop_by_hop(&mut parts.headers);
                record(shared, target, parts.status.as_u16(), start, false);
                if let Some((client, release)) = switched {
                    if let Some(protocol) = protocol {
                        headers::set_upgrade(&mut parts.headers, protocol);
                    }
                    let permit = ctx.permit.lock().unwrap_or_else(|p| p.into_inner()).take();
                    tokio::spawn(splice(
                        shared.clone(),
                        target.clone(),
                        client,
                        release,
                        permit,
                    ));
                }
                Response::from_parts(parts, body.boxed())
            }
            Err(Failed::Upstream(e)) => {
                counters.upstream_errors.fetch_add(1, Ordering::Relaxed);
                record(shared, target, 502, start, true);
                plain(StatusCode::BAD_GATEWAY, no_answer(shared, target, &e))
            }
        },
    };
    Ok(with_id(response, request_id))
}

/// The body of the 504 for a request the release did not answer in time.
fn too_slow(shared: &Shared, target: &Target) -> String {
    format!(
        "ripcord: service `{}`: release {} in slot {} ({}) sent no response within {}\n",
        shared.service,
        target.version,
        target.slot,
        target.addr,
        crate::config::duration::unit_text(shared.limits.response_timeout)
    )
}

/// The body of the 502 for a request the release could not be reached for, or broke
/// off: `why`, in words.
fn no_answer(shared: &Shared, target: &Target, why: &str) -> String {
    format!(
        "ripcord: service `{}`: release {} in slot {} ({}) did not answer: {}\n",
        shared.service, target.version, target.slot, target.addr, why
    )
}

/// The most release connections a proxy's client connections hold at once; past it,
/// their requests go through the workers' pools (nginx's `keepalive` is per worker, 64
/// in the configuration people copy).
const OWN_MAX: usize = 256;

/// The release connection a client connection holds ([`Connection::own`]), driven by a
/// task of its own on the same worker.
///
/// Driving it from the request's own task instead (polled with the request, then with
/// the response body) was measured and was no faster: every step of the connection then
/// polls the whole client connection again.
struct Own {
    route: Arc<Route>,
    sender: hyper::client::conn::http1::SendRequest<ClientBody>,
    _place: OwnPlace,
}

/// One of a proxy's [`OWN_MAX`] places for held release connections, given back when
/// dropped (with its connection, or when the connection could not be made).
struct OwnPlace(Arc<Shared>);

impl OwnPlace {
    fn take(shared: &Arc<Shared>) -> Option<OwnPlace> {
        if shared.own_count.fetch_add(1, Ordering::Relaxed) >= OWN_MAX {
            shared.own_count.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(OwnPlace(shared.clone()))
    }
}

impl Drop for OwnPlace {
    fn drop(&mut self) {
        self.0.own_count.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Puts a free release connection back in its client connection's hold.
fn give_back(ctx: &Connection, own: Own) {
    let mut slot = ctx.own.lock().unwrap_or_else(|p| p.into_inner());
    if slot.is_none() {
        *slot = Some(own);
    }
}

/// Why a request got no response from its release.
enum Failed {
    /// Its target made no URI with the release's address (not the release's fault).
    Target(String),
    /// The release could not be reached or broke off; why, in words.
    Upstream(String),
}

/// Sends a request (in origin form) to the route's release: on the release connection
/// the client connection holds when it is free, else through the worker's pool. A
/// request the held connection could not take (it had closed) goes through the pool.
async fn send(
    ctx: &Connection,
    route: &Arc<Route>,
    mut req: Request<ClientBody>,
    upgrade: bool,
) -> Result<Response<Incoming>, Failed> {
    if !upgrade
        && ctx.shared.limits.upstream_protocol == UpstreamProtocol::Http1
        && let Some(mut own) = take_own(ctx, route).await
    {
        // Origin form (an HTTP/2 client's request has its scheme and authority in it).
        if req.uri().authority().is_some() {
            let path = req
                .uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| hyper::http::uri::PathAndQuery::from_static("/"));
            *req.uri_mut() = Uri::from(path);
        }
        if !req.headers().contains_key(hyper::header::HOST)
            && let Ok(host) = HeaderValue::from_str(route.authority.as_str())
        {
            req.headers_mut().insert(hyper::header::HOST, host);
        }
        match own.sender.try_send_request(req).await {
            Ok(resp) => {
                // Free again once this response's body has been read: the client
                // connection's next request comes after that.
                give_back(ctx, own);
                return Ok(resp);
            }
            Err(mut e) => match e.take_message() {
                Some(unsent) => req = unsent,
                None => return Err(Failed::Upstream(error_chain(e.error()))),
            },
        }
    }
    let mut uri = std::mem::take(req.uri_mut()).into_parts();
    uri.scheme = Some(Scheme::HTTP);
    uri.authority = Some(route.authority.clone());
    if uri.path_and_query.is_none() {
        uri.path_and_query = Some(hyper::http::uri::PathAndQuery::from_static("/"));
    }
    *req.uri_mut() = Uri::from_parts(uri).map_err(|e| Failed::Target(e.to_string()))?;
    ctx.upstream
        .request(req)
        .await
        .map_err(|e| Failed::Upstream(error_chain(&e)))
}

/// The client connection's release connection to `route`, free for a request: the one
/// it holds, or a new one. None when it holds one that is busy (another stream of an
/// HTTP/2 client), when the proxy holds [`OWN_MAX`] already, or when the release cannot
/// be reached (the pool then tries, and says why it failed).
async fn take_own(ctx: &Connection, route: &Arc<Route>) -> Option<Own> {
    let held = ctx.own.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(own) = held {
        if Arc::ptr_eq(&own.route, route) && own.sender.is_ready() {
            return Some(own);
        }
        if Arc::ptr_eq(&own.route, route) && !own.sender.is_closed() {
            // Busy with another stream: kept for the next request.
            give_back(ctx, own);
            return None;
        }
        // Closed, or to a release switched away from: let go.
    }
    let place = OwnPlace::take(&ctx.shared)?;
    let stream = tokio::time::timeout(
        UPSTREAM_CONNECT_TIMEOUT,
        tokio::net::TcpStream::connect(route.target.addr),
    )
    .await
    .ok()?
    .ok()?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    // Ends when the release closes it, or when the client connection lets go of it.
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Some(Own {
        route: route.clone(),
        sender,
        _place: place,
    })
}

/// How long connecting to a release may take.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// ripcord's own answer to a request it did not forward (no release yet, a target too
/// long, an upgrade it cannot pass), with the request's id: the client's, or a new one.
fn own_answer(
    ids: &headers::RequestIds,
    request: &hyper::HeaderMap,
    resp: Response<ProxyBody>,
) -> Response<ProxyBody> {
    let id = match request.get(headers::X_REQUEST_ID) {
        Some(id) if !id.is_empty() => id.clone(),
        _ => ids.next(),
    };
    with_id(resp, id)
}

/// The request's id on its response, unless the release gave one of its own.
fn with_id(mut resp: Response<ProxyBody>, id: HeaderValue) -> Response<ProxyBody> {
    resp.headers_mut()
        .entry(headers::X_REQUEST_ID)
        .or_insert(id);
    resp
}

/// Splices an upgraded client connection to the release's until either side closes, or
/// until `websocket_drain` after a switch away from that release.
async fn splice(
    shared: Arc<Shared>,
    target: Arc<Target>,
    client: hyper::upgrade::OnUpgrade,
    release: hyper::upgrade::OnUpgrade,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
) {
    let _permit = permit;
    let mut stop = shared.stop.clone();
    // Subscribed before the first look at the target: a switch in between is seen.
    let mut switches = shared.switches.subscribe();
    switches.mark_changed();
    let (client, release) = match tokio::join!(client, release) {
        (Ok(c), Ok(r)) => (c, r),
        (c, r) => {
            let error = c.err().or(r.err()).map(|e| error_chain(&e));
            tracing::debug!(service = %shared.service, error = ?error, "an upgrade did not complete");
            return;
        }
    };
    let counters = &shared.counters;
    counters.upgraded.fetch_add(1, Ordering::Relaxed);
    let (mut client, mut release) = (TokioIo::new(client), TokioIo::new(release));
    let copy = tokio::io::copy_bidirectional(&mut client, &mut release);
    tokio::pin!(copy);
    let drain = shared.limits.websocket_drain;
    // Set while this connection's release is not the active one.
    let mut closes_at: Option<tokio::time::Instant> = None;
    let mut stopping = false;
    loop {
        let deadline = async {
            match closes_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = copy.as_mut() => break,
            // Never an error: the sender lives in `shared`, which this task holds.
            _ = switches.changed() => {
                let active = shared
                    .route
                    .load()
                    .as_ref()
                    .is_some_and(|route| *route.target == *target);
                closes_at = match (active, closes_at) {
                    (true, _) if stopping => closes_at,
                    (true, _) => None,
                    (false, Some(at)) => Some(at),
                    (false, None) => Some(tokio::time::Instant::now() + drain),
                };
            }
            _ = async { stop.wait_for(|stopped| *stopped).await.is_ok() }, if !stopping => {
                // Shutdown: as a switch away, with the drain bounded by DRAIN_TIMEOUT.
                stopping = true;
                let at = tokio::time::Instant::now() + drain.min(DRAIN_TIMEOUT);
                closes_at = Some(closes_at.map_or(at, |c| c.min(at)));
            }
            _ = deadline => {
                tracing::debug!(
                    service = %shared.service,
                    release = %target.version,
                    "an upgraded connection outlived its drain after a switch: closed"
                );
                break;
            }
        }
    }
    counters.upgraded.fetch_sub(1, Ordering::Relaxed);
}

/// Waits until the proxy stops holding new requests, at most [`MAX_HOLD`].
async fn wait_for_release(shared: &Shared) {
    let deadline = tokio::time::Instant::now() + MAX_HOLD;
    loop {
        let released = shared.released.notified();
        tokio::pin!(released);
        // Registered before the flag is read: a release in between still wakes it.
        released.as_mut().enable();
        if !shared.held.load(Ordering::Acquire) {
            return;
        }
        if tokio::time::timeout_at(deadline, released).await.is_err() {
            return;
        }
    }
}

fn record(shared: &Shared, target: &Target, status: u16, start: Instant, upstream_error: bool) {
    let Some(tx) = &shared.records else { return };
    let rec = RequestRecord {
        slot: target.slot,
        release_id: target.release_id,
        status,
        latency_us: start.elapsed().as_micros() as u64,
        timed: true,
        upstream_error,
        at_ms: crate::clock::now_ms(),
    };
    if tx.try_send(rec).is_err() {
        shared
            .counters
            .records_dropped
            .fetch_add(1, Ordering::Relaxed);
    }
}

fn plain(status: StatusCode, body: String) -> Response<ProxyBody> {
    let mut resp = Response::new(Full::new(Bytes::from(body)).map_err(|n| match n {}).boxed());
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests;
