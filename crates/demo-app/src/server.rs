//! The process and the listener: argument checks, slow start, bind, accept, and the
//! graceful shutdown on SIGTERM or SIGINT.

use std::convert::Infallible;
use std::future::Future;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::APP_NAME;
use super::args::DemoAppArgs;
use super::faults::fresh_seed;
use super::misbehaviour::Misbehaviour;
use super::routes::{State, handle};

/// How long in-flight connections may take to finish once shutdown has been asked for.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Runs the demo app until SIGTERM or SIGINT and returns the process exit code.
///
/// The code is 0 after a clean shutdown, 1 when the address cannot be bound or the server
/// fails, 2 for invalid arguments, and the `--exit-at-start` code when one is given.
pub fn run(args: DemoAppArgs) -> i32 {
    if let Err(message) = args.validate() {
        eprintln!("{APP_NAME}: {message}");
        return 2;
    }
    if let Some(target) = &args.probe {
        return probe(target, args.bind_addr());
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

/// How long `--probe` waits to connect, and then for the whole answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// `--probe TARGET`: one `GET`, exit code 0 when it is answered 200 and 1 otherwise
/// (a container health check in an image that has no shell and no curl). TARGET is
/// `http://HOST:PORT/PATH`, or `/PATH` on `own` (an unspecified address means loopback).
pub(super) fn probe(target: &str, own: SocketAddr) -> i32 {
    match probe_status(target, own) {
        Ok(200) => 0,
        Ok(status) => {
            eprintln!("{APP_NAME}: probe {target}: status {status}");
            1
        }
        Err(err) => {
            eprintln!("{APP_NAME}: probe {target}: {err}");
            1
        }
    }
}

fn probe_status(target: &str, own: SocketAddr) -> Result<u16, String> {
    let (addr, path) = if target.starts_with('/') {
        let mut addr = own;
        if addr.ip().is_unspecified() {
            addr.set_ip(if addr.is_ipv4() {
                Ipv4Addr::LOCALHOST.into()
            } else {
                Ipv6Addr::LOCALHOST.into()
            });
        }
        (addr, target)
    } else {
        let rest = target
            .strip_prefix("http://")
            .ok_or("not an http:// URL or a /path")?;
        let (authority, path) = rest.find('/').map_or((rest, "/"), |i| rest.split_at(i));
        let addr = authority
            .to_socket_addrs()
            .map_err(|e| format!("address {authority:?}: {e}"))?
            .next()
            .ok_or_else(|| format!("address {authority:?} resolves to nothing"))?;
        (addr, path)
    };
    let mut stream =
        TcpStream::connect_timeout(&addr, PROBE_TIMEOUT).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(PROBE_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(PROBE_TIMEOUT)))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("send: {e}"))?;
    // The status line is all a probe needs; it fits in the first read.
    let mut head = [0u8; 64];
    let mut len = 0;
    while len < head.len() {
        match stream.read(&mut head[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) => return Err(format!("read: {e}")),
        }
        if head[..len].contains(&b'\n') {
            break;
        }
    }
    let line = String::from_utf8_lossy(&head[..len]);
    line.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no HTTP status line in {line:?}"))
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
