//! The demo app over HTTP: a server in-process on a loopback port, its endpoints, its
//! faults on the wire and its shutdown.

use std::error::Error as StdError;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Body;
use hyper::header::CONTENT_TYPE;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::faults::Faults;
use super::*;

/// Faults built from a command line, the way `serve` builds them.
fn faults(flags: &[&str]) -> Faults {
    let args = DemoAppArgs::try_parse_from(std::iter::once(APP_NAME).chain(flags.iter().copied()))
        .expect("test flags parse");
    Faults::new(&args)
}

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
fn exit_at_start_returns_the_code_without_binding() {
    let args = DemoAppArgs {
        exit_at_start: Some(7),
        ..DemoAppArgs::default()
    };
    assert_eq!(run(args), 7);
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

/// `--probe TARGET` run as a health check would run it: the process's exit code.
async fn probe(target: String, listen: Option<SocketAddr>) -> i32 {
    let mut flags = vec![APP_NAME.to_string(), "--probe".to_string(), target];
    if let Some(listen) = listen {
        flags.extend(["--listen".to_string(), listen.to_string()]);
    }
    let args = DemoAppArgs::try_parse_from(flags).expect("probe flags parse");
    tokio::task::spawn_blocking(move || run(args))
        .await
        .expect("the probe returns")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_exits_0_on_200_and_1_otherwise() {
    let good = TestServer::start(&["--version", "v1"]).await;
    let failing = TestServer::start(&["--version", "v2", "--fail-health"]).await;
    assert_eq!(probe(format!("http://{}/health", good.addr), None).await, 0);
    // A path is asked of the app's own --listen address.
    assert_eq!(probe("/health".to_string(), Some(good.addr)).await, 0);
    let unspecified: SocketAddr = format!("0.0.0.0:{}", good.addr.port()).parse().unwrap();
    assert_eq!(probe("/health".to_string(), Some(unspecified)).await, 0);
    assert_eq!(probe(format!("http://{}/nope", good.addr), None).await, 1);
    assert_eq!(
        probe(format!("http://{}/health", failing.addr), None).await,
        1
    );
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let closed_addr = closed.local_addr().expect("addr");
    drop(closed);
    assert_eq!(probe(format!("http://{closed_addr}/health"), None).await, 1);
    assert_eq!(probe("ftp://example/".to_string(), None).await, 1);
    good.shutdown().await;
    failing.shutdown().await;
}
