//! Proxy tests over real loopback HTTP: small upstream servers built on hyper stand in
//! for the two slots.

use super::*;
use crate::config::{ProxyTls, UpstreamProtocol};
use http_body_util::channel::Channel;

/// An upstream that answers `name` plus what it saw, with a few behaviours by path.
async fn upstream(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve_text(listener, name));
    addr
}

/// Serves `upstream`'s answers on `listener` until it fails.
async fn serve_text(listener: TcpListener, name: &'static str) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| async move {
                let path = req.uri().path().to_string();
                let seen: Vec<String> = req.headers().keys().map(|k| k.to_string()).collect();
                let resp: Response<ProxyBody> = match path.as_str() {
                    "/slow" => {
                        tokio::time::sleep(Duration::from_millis(400)).await;
                        text(name)
                    }
                    "/stream" => {
                        let (mut tx, body) = Channel::<Bytes, hyper::Error>::new(4);
                        tokio::spawn(async move {
                            for i in 0..3 {
                                let _ = tx.send_data(Bytes::from(format!("part{i};"))).await;
                                tokio::time::sleep(Duration::from_millis(150)).await;
                            }
                        });
                        Response::new(body.boxed())
                    }
                    "/hang" => {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                        text(name)
                    }
                    "/first" => {
                        // Answers with the body's first frame, before the rest exists.
                        let mut body = req.into_body();
                        let first = body
                            .frame()
                            .await
                            .and_then(|f| f.ok())
                            .and_then(|f| f.into_data().ok())
                            .unwrap_or_default();
                        Response::new(Full::new(first).map_err(|n| match n {}).boxed())
                    }
                    "/headers" => {
                        // Each header as the release received it, one per line.
                        let mut lines = String::new();
                        for (k, v) in req.headers() {
                            lines.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("?")));
                        }
                        text(&lines)
                    }
                    "/echo" => {
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        Response::new(Full::new(body).map_err(|n| match n {}).boxed())
                    }
                    "/echo-name" => {
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        text(&format!("{name}:{}", String::from_utf8_lossy(&body)))
                    }
                    _ => {
                        let mut r = text(&format!("{name} saw {}", seen.join(",")));
                        r.headers_mut()
                            .insert("connection", HeaderValue::from_static("x-up-hop"));
                        r.headers_mut()
                            .insert("x-up-hop", HeaderValue::from_static("1"));
                        r.headers_mut()
                            .insert("keep-alive", HeaderValue::from_static("timeout=5"));
                        r
                    }
                };
                Ok::<_, Infallible>(resp)
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn text(s: &str) -> Response<ProxyBody> {
    Response::new(
        Full::new(Bytes::from(s.to_string()))
            .map_err(|n| match n {})
            .boxed(),
    )
}

fn target(slot: Slot, addr: SocketAddr, id: i64) -> Target {
    Target {
        slot,
        addr,
        release_id: id,
        version: format!("v{id}"),
    }
}

fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

async fn get(
    c: &Client<HttpConnector, Full<Bytes>>,
    url: String,
) -> (u16, hyper::HeaderMap, String) {
    let resp = c.get(url.parse().unwrap()).await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

async fn proxy(records: Option<mpsc::Sender<RequestRecord>>) -> Proxy {
    Proxy::bind("web", "127.0.0.1:0".parse().unwrap(), records)
        .await
        .unwrap()
        .0
}

#[tokio::test]
async fn no_target_is_a_clear_503() {
    let p = proxy(None).await;
    let (status, headers, body) = get(&client(), format!("http://{}/", p.local_addr())).await;
    assert_eq!(status, 503);
    assert!(body.contains("no active release"), "{body}");
    // It has a request id like any answer, and keeps the client's.
    assert!(headers.get("x-request-id").is_some_and(|id| !id.is_empty()));
    let mut s = raw_connection(&p).await;
    let (head, _) = exchange_raw(
        &mut s,
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Request-Id: mine-1\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("http/1.1 503"), "{head}");
    assert!(head.contains("\r\nx-request-id: mine-1"), "{head}");
}

#[tokio::test]
async fn forwards_to_the_active_slot_and_switches() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let (tx, mut rx) = mpsc::channel(16);
    let p = proxy(Some(tx)).await;
    let c = client();
    let url = format!("http://{}/x?y=1", p.local_addr());
    p.switch(Some(target(Slot::Blue, blue, 1)));
    assert!(get(&c, url.clone()).await.2.starts_with("blue"));
    let old = p.switch(Some(target(Slot::Green, green, 2))).unwrap();
    assert_eq!(old.slot, Slot::Blue);
    assert!(get(&c, url.clone()).await.2.starts_with("green"));
    let first = rx.recv().await.unwrap();
    let second = rx.recv().await.unwrap();
    assert_eq!(
        (first.slot, first.release_id, first.status),
        (Slot::Blue, 1, 200)
    );
    assert_eq!((second.slot, second.release_id), (Slot::Green, 2));
    assert_eq!(p.counters().requests.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn hop_by_hop_headers_are_not_forwarded_either_way() {
    let blue = upstream("blue").await;
    let p = proxy(None).await;
    p.switch(Some(target(Slot::Blue, blue, 1)));
    let c = client();
    let req = Request::get(format!("http://{}/", p.local_addr()))
        .header("connection", "x-private")
        .header("x-private", "secret")
        .header("x-end-to-end", "kept")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = c.request(req).await.unwrap();
    assert!(resp.headers().get("x-up-hop").is_none());
    assert!(resp.headers().get("keep-alive").is_none());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("x-end-to-end"), "{body}");
    assert!(body.contains("x-forwarded-for"), "{body}");
    assert!(!body.contains("x-private"), "{body}");
}

#[tokio::test]
async fn a_request_in_flight_finishes_on_its_slot() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let p = proxy(None).await;
    p.switch(Some(target(Slot::Blue, blue, 1)));
    let url = format!("http://{}/slow", p.local_addr());
    let slow = tokio::spawn(async move { get(&client(), url).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    p.switch(Some(target(Slot::Green, green, 2)));
    let after = get(&client(), format!("http://{}/", p.local_addr())).await;
    assert!(after.2.starts_with("green"));
    let (status, _, body) = slow.await.unwrap();
    assert_eq!((status, body.as_str()), (200, "blue"));
}

#[tokio::test]
async fn a_dead_slot_gets_a_502_that_says_which() {
    // A port that was just free: nothing listens there.
    let dead = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let (tx, mut rx) = mpsc::channel(4);
    let p = proxy(Some(tx)).await;
    p.switch(Some(target(Slot::Green, dead, 7)));
    let (status, _, body) = get(&client(), format!("http://{}/", p.local_addr())).await;
    assert_eq!(status, 502);
    assert!(body.contains("release v7 in slot green"), "{body}");
    assert!(body.contains(&dead.to_string()), "{body}");
    let rec = rx.recv().await.unwrap();
    assert!(rec.upstream_error);
    assert_eq!(rec.status, 502);
}

#[tokio::test]
async fn bodies_stream_both_ways() {
    let blue = upstream("blue").await;
    let p = proxy(None).await;
    p.switch(Some(target(Slot::Blue, blue, 1)));
    let c = client();
    // Response streaming: the first part arrives well before the whole body is done.
    let start = Instant::now();
    let resp = c
        .get(format!("http://{}/stream", p.local_addr()).parse().unwrap())
        .await
        .unwrap();
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    let first_at = start.elapsed();
    assert_eq!(&first[..], b"part0;");
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(&rest[..], b"part1;part2;");
    assert!(
        first_at < Duration::from_millis(250) && start.elapsed() >= Duration::from_millis(300),
        "first part at {first_at:?}, all at {:?}",
        start.elapsed()
    );
    // Request bodies pass through unchanged.
    let payload = Bytes::from(vec![b'x'; 256 * 1024]);
    let req = Request::post(format!("http://{}/echo", p.local_addr()))
        .body(Full::new(payload.clone()))
        .unwrap();
    let echoed = c
        .request(req)
        .await
        .unwrap()
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(echoed, payload);
}

#[tokio::test]
async fn keep_alive_connections_are_reused() {
    let blue = upstream("blue").await;
    let p = proxy(None).await;
    p.switch(Some(target(Slot::Blue, blue, 1)));
    // One raw TCP connection carrying three requests proves the proxy keeps it open.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(p.local_addr())
        .await
        .unwrap();
    let mut seen = 0;
    for _ in 0..3 {
        s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).await.unwrap();
        let head = String::from_utf8_lossy(&buf[..n]);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        seen += 1;
    }
    assert_eq!(seen, 3);
}

#[tokio::test]
async fn shutdown_stops_accepting() {
    let p = proxy(None).await;
    let addr = p.local_addr();
    p.shutdown();
    let mut refused = false;
    for _ in 0..50 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "the proxy still accepts after shutdown");
}

/// A hold keeps new requests from a closed port: they wait, and go to the address once
/// something listens there and the hold ends; the latency they report is the release's,
/// not the wait.
#[tokio::test]
async fn held_requests_wait_for_the_release_instead_of_meeting_a_closed_port() {
    // The one address, closed for now (as during a stop-first update).
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let (tx, mut rx) = mpsc::channel(16);
    let p = proxy(Some(tx)).await;
    p.switch(Some(target(Slot::Blue, addr, 1)));
    let hold = p.hold();
    let url = format!("http://{}/held", p.local_addr());
    let waiting: Vec<_> = (0..3)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { get(&client(), url).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        waiting.iter().all(|w| !w.is_finished()),
        "held requests are answered only after the hold"
    );
    assert_eq!(p.counters().in_flight.load(Ordering::Relaxed), 0);
    // The new release comes up on the address; then the hold ends.
    let listener = TcpListener::bind(addr).await.unwrap();
    tokio::spawn(serve_text(listener, "new"));
    drop(hold);
    for w in waiting {
        let (status, _, body) = tokio::time::timeout(Duration::from_secs(10), w)
            .await
            .expect("released requests are answered")
            .unwrap();
        assert_eq!((status, body.starts_with("new")), (200, true), "{body}");
    }
    for _ in 0..3 {
        let rec = rx.recv().await.unwrap();
        assert_eq!(rec.status, 200);
        assert!(
            rec.latency_us < 250_000,
            "the 300 ms hold is not the release's latency: {} us",
            rec.latency_us
        );
    }
    assert_eq!(p.counters().upstream_errors.load(Ordering::Relaxed), 0);
}

/// Tight limits, so the tests see them act within a second.
fn tight() -> ProxyLimits {
    ProxyLimits {
        max_connections: 8,
        header_timeout: Duration::from_millis(500),
        response_timeout: Duration::from_millis(500),
        max_header_bytes: 4096,
        max_uri_bytes: 512,
        ..ProxyLimits::default()
    }
}

async fn limited(records: Option<mpsc::Sender<RequestRecord>>) -> Proxy {
    let blue = upstream("blue").await;
    let (p, _) = Proxy::bind_with("web", "127.0.0.1:0".parse().unwrap(), records, tight())
        .await
        .unwrap();
    p.switch(Some(target(Slot::Blue, blue, 1)));
    p
}

/// A normal client's GET, bounded: a proxy that stopped serving fails the test instead
/// of hanging it.
async fn served(p: &Proxy) -> u16 {
    let url = format!("http://{}/", p.local_addr());
    tokio::time::timeout(Duration::from_secs(3), get(&client(), url))
        .await
        .expect("a normal client was not served within 3 s")
        .0
}

/// Whether the server closed `conn` (EOF, reset, or an error answer and then EOF)
/// within `max`.
async fn closed_within(conn: &mut tokio::net::TcpStream, max: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + max;
    loop {
        match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test]
async fn slowloris_clients_lose_their_connections_and_the_others_are_served() {
    use tokio::io::AsyncWriteExt;
    let p = limited(None).await;
    let addr = p.local_addr();
    // Six clients trickle a request head, a byte every 100 ms: it never completes.
    let mut slow = Vec::new();
    for _ in 0..6 {
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        slow.push(c);
    }
    let trickle = tokio::spawn(async move {
        for _ in 0..8 {
            for c in slow.iter_mut() {
                let _ = c.write_all(b"X").await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        slow
    });
    // Meanwhile everyone else is served at once.
    for _ in 0..10 {
        assert_eq!(served(&p).await, 200);
    }
    let mut slow = trickle.await.unwrap();
    for c in slow.iter_mut() {
        assert!(
            closed_within(c, Duration::from_secs(2)).await,
            "a client that never finished its headers still has its connection"
        );
    }
    assert_eq!(served(&p).await, 200);
}

#[tokio::test]
async fn at_the_connection_cap_a_new_client_waits_for_a_free_connection() {
    let p = limited(None).await;
    let addr = p.local_addr();
    // Eight idle connections fill the cap; they are closed at the header timeout.
    let mut idle = Vec::new();
    for _ in 0..8 {
        idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let start = Instant::now();
    assert_eq!(served(&p).await, 200);
    assert!(
        start.elapsed() >= Duration::from_millis(300),
        "served after {:?}: the cap of 8 connections did not hold the ninth back",
        start.elapsed()
    );
    for c in idle.iter_mut() {
        assert!(closed_within(c, Duration::from_secs(2)).await);
    }
}

#[tokio::test]
async fn an_http2_client_that_stops_answering_pings_loses_its_connection() {
    use tokio::io::AsyncWriteExt;
    let p = limited(None).await;
    // The preface and an empty SETTINGS frame, then silence: pings go unanswered.
    let mut c = tokio::net::TcpStream::connect(p.local_addr())
        .await
        .unwrap();
    c.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    assert!(
        closed_within(&mut c, Duration::from_secs(5)).await,
        "a silent HTTP/2 client still has its connection"
    );
    assert_eq!(served(&p).await, 200);
}

#[tokio::test]
async fn oversized_heads_and_targets_are_refused_and_the_proxy_goes_on() {
    let p = limited(None).await;
    let c = client();
    let big = "v".repeat(8 * 1024);
    let req = Request::get(format!("http://{}/", p.local_addr()))
        .header("x-big", big.as_str())
        .body(Full::new(Bytes::new()))
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(3), c.request(req))
        .await
        .unwrap()
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    // A target over max_uri_bytes (but within the head limit) is a 414.
    let (status, headers, body) =
        get(&c, format!("http://{}/{}", p.local_addr(), "a".repeat(600))).await;
    assert_eq!(status, 414, "{body}");
    assert!(headers.contains_key("x-request-id"), "{headers:?}");
    assert!(body.contains("601 bytes"), "{body}");
    // Just under the limit passes.
    let (status, _, _) = get(&c, format!("http://{}/{}", p.local_addr(), "a".repeat(500))).await;
    assert_eq!(status, 200);
    assert_eq!(served(&p).await, 200);
    // A whole head in one piece, just under and just over max_header_bytes (4096).
    for (value, status) in [(4000, "200"), (4200, "431")] {
        let mut s = raw_connection(&p).await;
        let head = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nx-big: {}\r\n\r\n",
            "v".repeat(value)
        );
        let (got, _) = exchange_raw(&mut s, head.as_bytes()).await;
        assert!(
            got.starts_with(&format!("http/1.1 {status}")),
            "{} bytes: {got}",
            head.len()
        );
    }
}

#[tokio::test]
async fn a_release_that_never_answers_is_a_504_at_the_response_timeout() {
    let (tx, mut rx) = mpsc::channel(16);
    let p = limited(Some(tx)).await;
    let c = client();
    let (status, _, body) = tokio::time::timeout(
        Duration::from_secs(5),
        get(&c, format!("http://{}/hang", p.local_addr())),
    )
    .await
    .expect("the proxy answered within its response timeout");
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("no response within 500ms"), "{body}");
    let rec = rx.recv().await.unwrap();
    assert_eq!((rec.status, rec.upstream_error), (504, true));
    assert_eq!(p.counters().upstream_errors.load(Ordering::Relaxed), 1);
    assert_eq!(served(&p).await, 200);
}

#[tokio::test]
async fn a_request_body_is_streamed_to_the_release_not_buffered() {
    let p = limited(None).await;
    let (mut tx, body) = Channel::<Bytes, hyper::Error>::new(1);
    tx.send_data(Bytes::from_static(b"first;")).await.unwrap();
    let req = Request::post(format!("http://{}/first", p.local_addr()))
        .body(body)
        .unwrap();
    // The rest of the body is never sent while the answer is awaited: a proxy that
    // buffered the whole body would never forward it, and this would time out.
    let c: Client<HttpConnector, http_body_util::channel::Channel<Bytes, hyper::Error>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let resp = tokio::time::timeout(Duration::from_secs(3), c.request(req))
        .await
        .expect("the release saw the body's first part before the body ended")
        .unwrap();
    let got = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&got[..], b"first;");
    drop(tx);
}

// WebSockets: a real client (tokio-tungstenite) through the proxy to real WebSocket
// servers, one per release, that answer each text message with their name.

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

type WebSocket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket server that answers `text` with `name: text`.
/// WebSocket echo releases blue and green behind a proxy whose open WebSockets drain
/// for `drain` after a switch; blue is active.
async fn websocket_proxy(drain: Duration) -> (Proxy, SocketAddr, SocketAddr) {
    let (blue, green) = (ws_upstream("blue").await, ws_upstream("green").await);
    let limits = ProxyLimits {
        websocket_drain: drain,
        ..ProxyLimits::default()
    };
    let (p, _) = Proxy::bind_with("web", "127.0.0.1:0".parse().unwrap(), None, limits)
        .await
        .unwrap();
    p.switch(Some(target(Slot::Blue, blue, 1)));
    (p, blue, green)
}

async fn ws_upstream(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if let Message::Text(t) = msg {
                        let answer = Message::text(format!("{name}: {t}"));
                        if ws.send(answer).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

/// Bounds a step of a WebSocket test, so a proxy that stalls fails it instead of hanging.
async fn bounded<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .unwrap_or_else(|_| panic!("{what} took over 10 s"))
}

async fn ws_connect(p: &Proxy) -> WebSocket {
    let url = format!("ws://{}/socket", p.local_addr());
    let (ws, resp) = bounded("the handshake", tokio_tungstenite::connect_async(url))
        .await
        .expect("the WebSocket handshake through the proxy");
    assert_eq!(resp.status(), 101);
    ws
}

async fn ws_round_trip(ws: &mut WebSocket, text: &str) -> String {
    bounded("a round trip", async {
        ws.send(Message::text(text)).await.unwrap();
        match ws.next().await {
            Some(Ok(Message::Text(t))) => t.to_string(),
            other => panic!("no text answer to {text:?}: {other:?}"),
        }
    })
    .await
}

#[tokio::test]
async fn websockets_pass_and_open_ones_stay_on_their_release_after_a_switch() {
    let (blue, green) = (ws_upstream("blue").await, ws_upstream("green").await);
    let (tx, mut rx) = mpsc::channel(16);
    let p = proxy(Some(tx)).await;
    p.switch(Some(target(Slot::Blue, blue, 1)));
    let mut old = ws_connect(&p).await;
    assert_eq!(ws_round_trip(&mut old, "hi").await, "blue: hi");
    p.switch(Some(target(Slot::Green, green, 2)));
    // Within the drain (30 s by default) the open socket goes on with its release...
    assert_eq!(ws_round_trip(&mut old, "still").await, "blue: still");
    // ...and a new one lands on the new release.
    let mut new = ws_connect(&p).await;
    assert_eq!(ws_round_trip(&mut new, "hello").await, "green: hello");
    assert_eq!(ws_round_trip(&mut old, "again").await, "blue: again");
    assert_eq!(p.counters().upgraded.load(Ordering::Relaxed), 2);
    // Each upgrade is recorded for the guard as its 101, on its release.
    let first = rx.recv().await.unwrap();
    let second = rx.recv().await.unwrap();
    assert_eq!((first.status, first.release_id), (101, 1));
    assert_eq!((second.status, second.release_id), (101, 2));
    // A client that closes ends its splice.
    bounded("closing", old.close(None)).await.unwrap();
    drop(old);
    bounded("the splice's end", async {
        while p.counters().upgraded.load(Ordering::Relaxed) != 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn open_websockets_on_the_old_release_are_closed_after_the_drain() {
    let (p, _, green) = websocket_proxy(Duration::from_millis(200)).await;
    let mut old = ws_connect(&p).await;
    assert_eq!(ws_round_trip(&mut old, "hi").await, "blue: hi");
    p.switch(Some(target(Slot::Green, green, 2)));
    let mut new = ws_connect(&p).await;
    // The old socket ends (its connection closed under it) once the drain is over.
    let end = bounded("the old socket's end", async {
        loop {
            match old.next().await {
                Some(Ok(Message::Text(t))) => panic!("an unasked answer: {t}"),
                Some(Ok(_)) => continue,
                other => return other,
            }
        }
    })
    .await;
    assert!(
        matches!(end, None | Some(Err(_))),
        "the old socket was not closed: {end:?}"
    );
    // The socket on the active release is not touched.
    assert_eq!(ws_round_trip(&mut new, "hello").await, "green: hello");
    assert_eq!(p.counters().upgraded.load(Ordering::Relaxed), 1);
}

/// The value of header `name` in an upstream's `/headers` answer.
fn seen<'a>(lines: &'a str, name: &str) -> Vec<&'a str> {
    lines
        .lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
        .collect()
}

#[tokio::test]
async fn forwarded_headers_and_request_ids_reach_the_release_and_the_id_comes_back() {
    let blue = upstream("blue").await;
    let p = proxy(None).await;
    p.switch(Some(target(Slot::Blue, blue, 1)));
    let c = client();
    let url = format!("http://{}/headers", p.local_addr());
    let req = Request::get(&url)
        .header("host", "shop.example")
        .header("x-forwarded-for", "10.1.2.3")
        .header("forwarded", "for=10.1.2.3;proto=https")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = c.request(req).await.unwrap();
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let lines = String::from_utf8_lossy(&body);
    assert_eq!(
        seen(&lines, "x-forwarded-for"),
        ["10.1.2.3, 127.0.0.1"],
        "{lines}"
    );
    assert_eq!(seen(&lines, "x-forwarded-proto"), ["http"], "{lines}");
    assert_eq!(
        seen(&lines, "x-forwarded-host"),
        ["shop.example"],
        "{lines}"
    );
    assert_eq!(
        seen(&lines, "forwarded"),
        ["for=10.1.2.3;proto=https, for=127.0.0.1;host=shop.example;proto=http"],
        "{lines}"
    );
    // The id the release saw is the one the client got back.
    assert_eq!(seen(&lines, "x-request-id"), [id.as_str()], "{lines}");
    // Another request gets another id.
    let (_, headers, lines) = get(&c, url.clone()).await;
    let other = headers["x-request-id"].to_str().unwrap();
    assert_ne!(other, id);
    assert_eq!(seen(&lines, "x-request-id"), [other], "{lines}");
    // A client's own id is passed through and returned.
    let req = Request::get(&url)
        .header("x-request-id", "trace-42")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = c.request(req).await.unwrap();
    assert_eq!(resp.headers()["x-request-id"], "trace-42");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        seen(&String::from_utf8_lossy(&body), "x-request-id"),
        ["trace-42"]
    );
}

#[tokio::test]
async fn a_failed_request_still_answers_with_its_request_id() {
    let dead = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let p = proxy(None).await;
    p.switch(Some(target(Slot::Green, dead, 7)));
    let c = client();
    let req = Request::get(format!("http://{}/", p.local_addr()))
        .header("x-request-id", "trace-502")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = c.request(req).await.unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.headers()["x-request-id"], "trace-502");
}

#[tokio::test]
async fn a_switch_back_within_the_drain_keeps_open_websockets() {
    let (p, blue, green) = websocket_proxy(Duration::from_millis(200)).await;
    let mut ws = ws_connect(&p).await;
    assert_eq!(ws_round_trip(&mut ws, "hi").await, "blue: hi");
    // A deploy and its rollback: blue is active again before the drain is over.
    p.switch(Some(target(Slot::Green, green, 2)));
    p.switch(Some(target(Slot::Blue, blue, 1)));
    // Well past the drain, the socket still works.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(ws_round_trip(&mut ws, "later").await, "blue: later");
    assert_eq!(p.counters().upgraded.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn an_open_websocket_counts_against_max_connections() {
    let blue = ws_upstream("blue").await;
    let limits = ProxyLimits {
        max_connections: 1,
        ..ProxyLimits::default()
    };
    let (p, _) = Proxy::bind_with("web", "127.0.0.1:0".parse().unwrap(), None, limits)
        .await
        .unwrap();
    p.switch(Some(target(Slot::Blue, blue, 1)));
    let mut ws = ws_connect(&p).await;
    assert_eq!(ws_round_trip(&mut ws, "hi").await, "blue: hi");
    // The socket holds the one connection: another client waits for it.
    let url = format!("ws://{}/socket", p.local_addr());
    let waiting = tokio::spawn(async move {
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        ws_round_trip(&mut ws, "second").await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "a second client was served while the WebSocket held the only connection"
    );
    drop(ws);
    let answer = bounded("the waiting client", waiting).await.unwrap();
    assert_eq!(answer, "blue: second");
}

#[tokio::test]
async fn shutdown_closes_open_websockets_after_the_drain() {
    let blue = ws_upstream("blue").await;
    let limits = ProxyLimits {
        websocket_drain: Duration::from_millis(200),
        ..ProxyLimits::default()
    };
    let (p, task) = Proxy::bind_with("web", "127.0.0.1:0".parse().unwrap(), None, limits)
        .await
        .unwrap();
    p.switch(Some(target(Slot::Blue, blue, 1)));
    let mut ws = ws_connect(&p).await;
    assert_eq!(ws_round_trip(&mut ws, "hi").await, "blue: hi");
    p.shutdown();
    let end = bounded("the socket's end", async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => panic!("an unasked answer: {t}"),
                Some(Ok(_)) => continue,
                other => return other,
            }
        }
    })
    .await;
    assert!(matches!(end, None | Some(Err(_))), "{end:?}");
    // The proxy's drain waited for it, and is over.
    bounded("the proxy's end", task).await.unwrap();
    assert_eq!(p.counters().upgraded.load(Ordering::Relaxed), 0);
}

// HTTP/2: h2c with prior knowledge and HTTPS with ALPN from clients, h2c to releases.

fn h2c_client<B>() -> Client<HttpConnector, B>
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(HttpConnector::new())
}

#[tokio::test]
async fn h2c_clients_are_served_many_streams_on_one_connection() {
    let blue = upstream("blue").await;
    let p = proxy(None).await;
    p.switch(Some(target(Slot::Blue, blue, 1)));
    let c = h2c_client::<Full<Bytes>>();
    let url = format!("http://{}/headers", p.local_addr());
    let answers = futures_util::future::join_all((0..20).map(|_| {
        let c = c.clone();
        let url = url.clone();
        async move {
            let resp = bounded("an h2c request", c.get(url.parse().unwrap()))
                .await
                .unwrap();
            let version = resp.version();
            let status = resp.status();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (version, status, String::from_utf8_lossy(&body).into_owned())
        }
    }))
    .await;
    let authority = p.local_addr().to_string();
    for (version, status, lines) in answers {
        assert_eq!(
            (version, status),
            (Version::HTTP_2, StatusCode::OK),
            "{lines}"
        );
        // The HTTP/1 release gets the client's authority as its Host.
        assert_eq!(seen(&lines, "host"), [authority.as_str()], "{lines}");
        assert_eq!(seen(&lines, "x-forwarded-proto"), ["http"], "{lines}");
    }
    // HTTP/1 clients share the port.
    assert_eq!(get(&client(), url).await.0, 200);
}

/// A self-signed certificate for `localhost` in PEM files, and the certificate to trust.
fn localhost_cert(dir: &std::path::Path) -> (ProxyTls, rustls::pki_types::CertificateDer<'static>) {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let tls = ProxyTls {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    std::fs::write(&tls.cert, cert.pem()).unwrap();
    std::fs::write(&tls.key, signing_key.serialize_pem()).unwrap();
    (tls, cert.der().clone())
}

/// A TLS connection to the proxy offering only `alpn`, and what was agreed.
async fn tls_connect(
    p: &Proxy,
    trust: &rustls::pki_types::CertificateDer<'static>,
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trust.clone()).unwrap();
    let mut config =
        rustls::ClientConfig::builder_with_provider(Arc::new(crate::http::ring_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(p.local_addr())
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = bounded("the TLS handshake", connector.connect(name, tcp))
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(alpn));
    tls
}

async fn lines_of(resp: Response<Incoming>) -> String {
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

#[tokio::test]
async fn https_serves_http2_and_http1_by_alpn() {
    let blue = upstream("blue").await;
    let dir = tempfile::tempdir().unwrap();
    let (tls, trust) = localhost_cert(dir.path());
    let (p, _) = Proxy::bind_tls(
        "web",
        "127.0.0.1:0".parse().unwrap(),
        None,
        ProxyLimits::default(),
        &tls,
    )
    .await
    .unwrap();
    p.switch(Some(target(Slot::Blue, blue, 1)));
    // HTTP/2 over TLS.
    let io = TokioIo::new(tls_connect(&p, &trust, b"h2").await);
    let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("https://localhost/headers")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = bounded("an h2 request", send.send_request(req))
        .await
        .unwrap();
    assert_eq!(
        (resp.version(), resp.status()),
        (Version::HTTP_2, StatusCode::OK)
    );
    let lines = lines_of(resp).await;
    assert_eq!(seen(&lines, "x-forwarded-proto"), ["https"], "{lines}");
    assert_eq!(
        seen(&lines, "forwarded"),
        ["for=127.0.0.1;host=localhost;proto=https"],
        "{lines}"
    );
    // HTTP/1.1 over TLS.
    let io = TokioIo::new(tls_connect(&p, &trust, b"http/1.1").await);
    let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn);
    let req = Request::get("/headers")
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = bounded("an HTTP/1.1 request", send.send_request(req))
        .await
        .unwrap();
    assert_eq!(
        (resp.version(), resp.status()),
        (Version::HTTP_11, StatusCode::OK)
    );
    let lines = lines_of(resp).await;
    assert_eq!(seen(&lines, "x-forwarded-proto"), ["https"], "{lines}");
    // A streamed body reaches an HTTP/1.1 client over TLS as it comes, not when it ends.
    let start = Instant::now();
    let req = Request::get("/stream")
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let mut body = bounded("a streamed response", send.send_request(req))
        .await
        .unwrap()
        .into_body();
    let first = bounded("its first part", body.frame())
        .await
        .unwrap()
        .unwrap();
    let first_at = start.elapsed();
    assert_eq!(first.into_data().unwrap(), Bytes::from_static(b"part0;"));
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(&rest[..], b"part1;part2;");
    assert!(
        first_at < Duration::from_millis(250) && start.elapsed() >= Duration::from_millis(300),
        "first part at {first_at:?}, all at {:?}",
        start.elapsed()
    );
    // Plain HTTP is not served on the TLS port.
    let plain = tokio::time::timeout(
        Duration::from_secs(10),
        client().get(format!("http://{}/", p.local_addr()).parse().unwrap()),
    )
    .await
    .expect("a plain request to the TLS port ends");
    assert!(plain.is_err(), "plain HTTP was answered: {plain:?}");
}

#[test]
fn a_key_that_is_not_the_certificates_is_refused_naming_both_files() {
    let dir = tempfile::tempdir().unwrap();
    let (tls, _) = localhost_cert(dir.path());
    let other = tempfile::tempdir().unwrap();
    let (other, _) = localhost_cert(other.path());
    let mixed = ProxyTls {
        cert: tls.cert.clone(),
        key: other.key,
    };
    let err = tls::acceptor(&mixed)
        .err()
        .expect("a key of another certificate");
    assert!(err.contains(&mixed.key.display().to_string()), "{err}");
    assert!(err.contains(&mixed.cert.display().to_string()), "{err}");
    assert!(tls::acceptor(&tls).is_ok());
}

/// A release that speaks only HTTP/2 without TLS (as a gRPC server does). `/stream`
/// answers each request body frame as it comes, as `name:frame`, then trailers: a
/// `grpc-status` of 0 and the `te` the request came with.
async fn h2_upstream(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let svc = service_fn(move |req: Request<Incoming>| async move {
                let te = req.headers().get("te").cloned();
                let resp: Response<ProxyBody> = if req.uri().path() == "/stream" {
                    let (mut tx, body) = Channel::<Bytes, hyper::Error>::new(4);
                    tokio::spawn(async move {
                        let mut incoming = req.into_body();
                        while let Some(Ok(frame)) = incoming.frame().await {
                            if let Ok(data) = frame.into_data() {
                                let out = format!("{name}:{};", String::from_utf8_lossy(&data));
                                if tx.send_data(Bytes::from(out)).await.is_err() {
                                    return;
                                }
                            }
                        }
                        let mut trailers = hyper::HeaderMap::new();
                        trailers.insert("grpc-status", HeaderValue::from_static("0"));
                        if let Some(te) = te {
                            trailers.insert("x-te", te);
                        }
                        let _ = tx.send_trailers(trailers).await;
                    });
                    let mut r = Response::new(body.boxed());
                    r.headers_mut()
                        .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
                    r
                } else {
                    let host = match req.headers().get("host") {
                        Some(h) => format!(" with host {h:?}"),
                        None => String::new(),
                    };
                    text(&format!("{name} over {:?}{host}", req.version()))
                };
                Ok::<_, Infallible>(resp)
            });
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc),
            );
        }
    });
    addr
}

async fn h2c_proxy(records: Option<mpsc::Sender<RequestRecord>>) -> Proxy {
    let limits = ProxyLimits {
        upstream_protocol: UpstreamProtocol::H2c,
        ..ProxyLimits::default()
    };
    Proxy::bind_with("grpc", "127.0.0.1:0".parse().unwrap(), records, limits)
        .await
        .unwrap()
        .0
}

#[tokio::test]
async fn an_h2c_release_gets_a_streaming_call_and_its_trailers_come_back() {
    let blue = h2_upstream("blue").await;
    let (tx, mut rx) = mpsc::channel(16);
    let p = h2c_proxy(Some(tx)).await;
    p.switch(Some(target(Slot::Blue, blue, 1)));
    // A streaming call, as gRPC makes: each message answered as it is sent.
    let (mut body_tx, body) = Channel::<Bytes, hyper::Error>::new(1);
    let req = Request::post(format!("http://{}/stream", p.local_addr()))
        .header("te", "trailers")
        .header(CONTENT_TYPE, "application/grpc")
        .body(body)
        .unwrap();
    let c = h2c_client::<Channel<Bytes, hyper::Error>>();
    body_tx.send_data(Bytes::from_static(b"m0")).await.unwrap();
    let resp = bounded("the call's response head", c.request(req))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()[CONTENT_TYPE], "application/grpc");
    let mut body = resp.into_body();
    let mut next_data = async || loop {
        let frame = bounded("a message", body.frame()).await.unwrap().unwrap();
        if let Ok(data) = frame.into_data() {
            return data;
        }
    };
    // The answer to the first message arrives while the call is still open.
    assert_eq!(&next_data().await[..], b"blue:m0;");
    body_tx.send_data(Bytes::from_static(b"m1")).await.unwrap();
    assert_eq!(&next_data().await[..], b"blue:m1;");
    drop(body_tx);
    let trailers = loop {
        let frame = bounded("the trailers", body.frame())
            .await
            .expect("trailers after the data")
            .unwrap();
        if let Ok(t) = frame.into_trailers() {
            break t;
        }
    };
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["x-te"], "trailers");
    assert_eq!(rx.recv().await.unwrap().status, 200);
    // An HTTP/1 client reaches the HTTP/2-only release too; its Host is not sent on as a
    // header beside `:authority`.
    let (status, _, body) = get(&client(), format!("http://{}/", p.local_addr())).await;
    assert_eq!((status, body.as_str()), (200, "blue over HTTP/2.0"));
}

/// Issue 18: zero lost requests in a switch stays true with long-lived connections. Ten
/// switches happen while 20 HTTP/2 streams are in flight on one connection each time, a
/// streaming HTTP/2 upload spans all of them, and an HTTP/1 keep-alive connection asks
/// between them: every request is answered 200 by a release, with its own body, and the
/// guard sees nothing but 200s.
#[tokio::test]
async fn no_request_is_lost_across_switches_with_h2_streams_and_a_streaming_upload() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let (tx, mut rx) = mpsc::channel(1024);
    let p = proxy(Some(tx)).await;
    let slots = [target(Slot::Blue, blue, 1), target(Slot::Green, green, 2)];
    let names = ["blue", "green"];
    p.switch(Some(slots[0].clone()));
    let url = format!("http://{}/echo-name", p.local_addr());
    // The upload: started on blue, one part after each switch.
    let (mut upload_tx, upload_body) = Channel::<Bytes, hyper::Error>::new(1);
    let uploader = h2c_client::<Channel<Bytes, hyper::Error>>();
    let req = Request::post(&url).body(upload_body).unwrap();
    let upload = tokio::spawn(async move { uploader.request(req).await });
    let mut expected_upload = String::from("part0;");
    bounded(
        "the upload's first part",
        upload_tx.send_data(Bytes::from("part0;")),
    )
    .await
    .unwrap();
    // The upload has met the proxy (and read its target) before the first switch.
    bounded("the upload's arrival", async {
        while p.counters().in_flight.load(Ordering::Relaxed) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let streams = h2c_client::<Full<Bytes>>();
    let keep_alive = client();
    let mut answers = Vec::new();
    for round in 0..10usize {
        let batch: Vec<_> = (0..20)
            .map(|i| {
                let (c, url) = (streams.clone(), url.clone());
                tokio::spawn(async move {
                    let payload = format!("r{round}-s{i}");
                    let req = Request::post(url)
                        .body(Full::new(Bytes::from(payload.clone())))
                        .unwrap();
                    let resp = c.request(req).await.expect("an h2 stream failed");
                    let status = resp.status();
                    let body = resp.into_body().collect().await.unwrap().to_bytes();
                    (status, String::from_utf8_lossy(&body).into_owned(), payload)
                })
            })
            .collect();
        let active = (round + 1) % 2;
        p.switch(Some(slots[active].clone()));
        let part = format!("part{};", round + 1);
        expected_upload.push_str(&part);
        bounded("an upload part", upload_tx.send_data(Bytes::from(part)))
            .await
            .unwrap();
        // The keep-alive connection's next request meets the new release.
        let (status, _, body) = bounded(
            "a keep-alive request",
            get(&keep_alive, format!("http://{}/", p.local_addr())),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert!(body.starts_with(names[active]), "round {round}: {body}");
        for b in batch {
            answers.push(bounded("a batch", b).await.unwrap());
        }
    }
    drop(upload_tx);
    let upload = bounded("the upload's answer", upload)
        .await
        .unwrap()
        .expect("the upload failed");
    assert_eq!(upload.status(), 200);
    let body = upload.into_body().collect().await.unwrap().to_bytes();
    // It stayed on the release it started on, and lost no part.
    assert_eq!(
        String::from_utf8_lossy(&body),
        format!("blue:{expected_upload}")
    );
    assert_eq!(answers.len(), 200);
    for (status, body, payload) in &answers {
        assert_eq!(*status, StatusCode::OK, "{body}");
        assert!(
            *body == format!("blue:{payload}") || *body == format!("green:{payload}"),
            "{payload} was answered {body:?}"
        );
    }
    assert_eq!(p.counters().upstream_errors.load(Ordering::Relaxed), 0);
    let mut statuses = Vec::new();
    while let Ok(rec) = rx.try_recv() {
        statuses.push(rec.status);
    }
    assert_eq!(statuses.len(), 200 + 10 + 1);
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
}

// gRPC: a tonic client through the proxy (h2c both ways) to a tonic server. Messages are
// raw bytes (a codec of our own), so no protobuf code generation is needed.

/// Messages as they are: the gRPC framing around them is tonic's.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

#[derive(Debug, Clone, Copy)]
struct Raw;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl tonic::codec::Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        let n = bytes::Buf::remaining(src);
        Ok(Some(bytes::Buf::copy_to_bytes(src, n).to_vec()))
    }
}

/// `/test.Echo/Say`: answers `name: message`; any other method is NOT_FOUND.
#[derive(Debug, Clone, Copy)]
struct Say(&'static str);

impl tonic::server::UnaryService<Vec<u8>> for Say {
    type Response = Vec<u8>;
    type Future = std::future::Ready<Result<tonic::Response<Vec<u8>>, tonic::Status>>;
    fn call(&mut self, req: tonic::Request<Vec<u8>>) -> Self::Future {
        let mut out = format!("{}: ", self.0).into_bytes();
        out.extend(req.into_inner());
        std::future::ready(Ok(tonic::Response::new(out)))
    }
}

#[derive(Debug, Clone, Copy)]
struct NotFound;

impl tonic::server::UnaryService<Vec<u8>> for NotFound {
    type Response = Vec<u8>;
    type Future = std::future::Ready<Result<tonic::Response<Vec<u8>>, tonic::Status>>;
    fn call(&mut self, _: tonic::Request<Vec<u8>>) -> Self::Future {
        std::future::ready(Err(tonic::Status::not_found("no such method here")))
    }
}

/// The service of a small tonic server: `test.Echo`, answering with tonic's server-side
/// gRPC.
#[derive(Debug, Clone, Copy)]
struct EchoService(&'static str);

impl tonic::codegen::Service<Request<tonic::body::Body>> for EchoService {
    type Response = Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = std::pin::Pin<
        Box<dyn Future<Output = Result<Response<tonic::body::Body>, Infallible>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<tonic::body::Body>) -> Self::Future {
        let name = self.0;
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(RawCodec);
            Ok(match req.uri().path() {
                "/test.Echo/Say" => grpc.unary(Say(name), req).await,
                _ => grpc.unary(NotFound, req).await,
            })
        })
    }
}

/// A tonic server (`tonic::transport::Server`, HTTP/2 without TLS) on a loopback port.
async fn grpc_upstream(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = Box::pin(futures_util::stream::unfold(listener, |l| async move {
        let next = l.accept().await.map(|(stream, _)| stream);
        Some((next, l))
    }));
    tokio::spawn(
        tonic::transport::Server::builder().serve_with_incoming(EchoService(name), incoming),
    );
    addr
}

async fn grpc_call(
    grpc: &mut tonic::client::Grpc<tonic::transport::Channel>,
    method: &'static str,
    message: &[u8],
) -> Result<tonic::Response<Vec<u8>>, tonic::Status> {
    bounded("a gRPC call", async {
        grpc.ready().await.unwrap();
        let path = hyper::http::uri::PathAndQuery::from_static(method);
        grpc.unary(tonic::Request::new(message.to_vec()), path, RawCodec)
            .await
    })
    .await
}

#[tokio::test]
async fn grpc_calls_pass_through_to_an_h2c_release_and_follow_a_switch() {
    let (blue, green) = (grpc_upstream("blue").await, grpc_upstream("green").await);
    let (tx, mut rx) = mpsc::channel(16);
    let p = h2c_proxy(Some(tx)).await;
    p.switch(Some(target(Slot::Blue, blue, 1)));
    let endpoint =
        tonic::transport::Endpoint::from_shared(format!("http://{}", p.local_addr())).unwrap();
    let channel = bounded("connecting", endpoint.connect()).await.unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    let resp = grpc_call(&mut grpc, "/test.Echo/Say", b"hi").await.unwrap();
    assert!(resp.metadata().get("x-request-id").is_some());
    assert_eq!(resp.into_inner(), b"blue: hi");
    // A gRPC error status comes through with its message.
    let err = grpc_call(&mut grpc, "/test.Echo/Nope", b"?")
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (tonic::Code::NotFound, "no such method here")
    );
    // The same client connection reaches the new release after a switch.
    p.switch(Some(target(Slot::Green, green, 2)));
    let resp = grpc_call(&mut grpc, "/test.Echo/Say", b"again")
        .await
        .unwrap();
    assert_eq!(resp.into_inner(), b"green: again");
    // The guard sees HTTP statuses: gRPC answers 200 whatever its own status.
    for release in [1, 1, 2] {
        let rec = rx.recv().await.unwrap();
        assert_eq!((rec.status, rec.release_id), (200, release));
    }
}

#[tokio::test]
async fn a_websocket_to_an_h2c_release_is_refused_saying_why() {
    let blue = h2_upstream("blue").await;
    let (tx, mut rx) = mpsc::channel(16);
    let p = h2c_proxy(Some(tx)).await;
    p.switch(Some(target(Slot::Blue, blue, 1)));
    let url = format!("ws://{}/socket", p.local_addr());
    let err = bounded("the handshake", tokio_tungstenite::connect_async(url))
        .await
        .expect_err("a WebSocket through an h2c upstream");
    let tokio_tungstenite::tungstenite::Error::Http(resp) = err else {
        panic!("not an HTTP answer: {err:?}");
    };
    assert_eq!(resp.status(), 501);
    assert!(resp.headers().contains_key("x-request-id"));
    let body = String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).into_owned();
    assert!(body.contains("upstream_protocol = \"http1\""), "{body}");
    // Not counted against the release.
    assert!(rx.try_recv().is_err());
}

/// How a raw release ([`raw_release`]) answers each request head it reads.
#[derive(Clone, Copy)]
struct Script {
    /// Written as it is.
    answer: &'static [u8],
    /// Written unasked 100 ms after the answer, on the same connection.
    then: Option<&'static [u8]>,
    /// The connection is closed after the answer.
    close: bool,
    /// A connection idle this long is closed without a word.
    idle_close: Option<Duration>,
}

/// A release speaking raw bytes by `script`, counting the connections it accepts.
async fn raw_release(script: Script) -> (SocketAddr, Arc<AtomicU64>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicU64::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let mut chunk = [0u8; 4096];
                    let idle = script.idle_close.unwrap_or(Duration::from_secs(3600));
                    let n = match tokio::time::timeout(idle, s.read(&mut chunk)).await {
                        Ok(Ok(n)) if n > 0 => n,
                        _ => return, // idle too long, or closed: close
                    };
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        if s.write_all(script.answer).await.is_err() || script.close {
                            return;
                        }
                        if let Some(then) = script.then {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            if s.write_all(then).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    (addr, accepted)
}

/// A release speaking raw HTTP/1.1 that answers `name` to every request and counts the
/// connections it accepts; it closes a connection idle for `idle_close` without a word,
/// as app servers with a short keep-alive timeout do (gunicorn 2 s, node 5 s).
async fn counting_upstream(
    name: &'static str,
    idle_close: Duration,
) -> (SocketAddr, Arc<AtomicU64>) {
    let answer = format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{name}",
        name.len()
    );
    raw_release(Script {
        answer: Box::leak(answer.into_bytes().into_boxed_slice()),
        then: None,
        close: false,
        idle_close: Some(idle_close),
    })
    .await
}

/// Sends `GET /` on a raw keep-alive connection and returns the response's body.
async fn raw_get(s: &mut tokio::net::TcpStream) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, s.read(&mut chunk))
            .await
            .expect("no answer within 10 s")
            .unwrap();
        assert!(n > 0, "the proxy closed the client's connection");
        got.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let head = &text[..end];
            assert!(head.starts_with("HTTP/1.1 200"), "{text}");
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .expect("a content-length")
                .trim()
                .parse()
                .unwrap();
            if text.len() >= end + 4 + len {
                return text[end + 4..end + 4 + len].to_string();
            }
        }
    }
}

#[tokio::test]
async fn a_client_connection_keeps_one_release_connection_and_follows_a_switch() {
    let (blue, blue_conns) = counting_upstream("blue", Duration::from_secs(60)).await;
    let (green, green_conns) = counting_upstream("green", Duration::from_secs(60)).await;
    let p = proxy(None).await;
    p.switch(Some(target(Slot::Blue, blue, 1)));
    let mut s = tokio::net::TcpStream::connect(p.local_addr())
        .await
        .unwrap();
    for _ in 0..20 {
        assert_eq!(raw_get(&mut s).await, "blue");
    }
    // Twenty requests, one connection to the release: none went through a pool that
    // opened or picked others.
    assert_eq!(blue_conns.load(Ordering::SeqCst), 1);
    // After a switch the same client connection's next request is the new release's.
    p.switch(Some(target(Slot::Green, green, 2)));
    assert_eq!(raw_get(&mut s).await, "green");
    assert_eq!(raw_get(&mut s).await, "green");
    assert_eq!(green_conns.load(Ordering::SeqCst), 1);
    // And back: the connection to blue was let go at the switch, so a new one is made.
    p.switch(Some(target(Slot::Blue, blue, 1)));
    assert_eq!(raw_get(&mut s).await, "blue");
    assert_eq!(blue_conns.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_release_closing_idle_connections_costs_no_request() {
    // The release closes a connection idle for 50 ms; the client waits 150 ms between
    // requests, so every request after the first finds its held connection closed.
    let (blue, blue_conns) = counting_upstream("blue", Duration::from_millis(50)).await;
    let p = proxy(None).await;
    p.switch(Some(target(Slot::Blue, blue, 1)));
    let mut s = tokio::net::TcpStream::connect(p.local_addr())
        .await
        .unwrap();
    for _ in 0..6 {
        assert_eq!(raw_get(&mut s).await, "blue");
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert_eq!(blue_conns.load(Ordering::SeqCst), 6);
    assert_eq!(p.counters().upstream_errors.load(Ordering::Relaxed), 0);
}

#[test]
fn a_new_connection_stays_on_its_worker_unless_another_has_two_fewer() {
    assert_eq!(pick_worker(&[0, 0], 1), 1);
    assert_eq!(pick_worker(&[3, 4], 1), 1);
    assert_eq!(pick_worker(&[3, 5], 1), 0);
    assert_eq!(pick_worker(&[9, 2, 5], 0), 1);
    assert_eq!(pick_worker(&[1], 0), 0);
}

#[test]
fn a_proxy_stops_accepting_when_the_runtime_that_started_it_ends() {
    // The proxy's connections run on the shared worker threads, which outlive any one
    // runtime; the runtime that started it still owns it, as when its tasks ran there.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let addr = rt.block_on(async {
        let blue = upstream("blue").await;
        let p = proxy(None).await;
        p.switch(Some(target(Slot::Blue, blue, 1)));
        p.local_addr()
    });
    assert!(std::net::TcpStream::connect(addr).is_ok(), "not serving");
    drop(rt);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(addr).is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "still accepting 5 s after its runtime ended"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A release speaking raw bytes: every request head it reads is answered with `answer`
/// as it is, and the connection closed after it when `close` is set. Counts the
/// connections it accepts.
async fn scripted_upstream(answer: &'static [u8], close: bool) -> (SocketAddr, Arc<AtomicU64>) {
    raw_release(Script {
        answer,
        then: None,
        close,
        idle_close: None,
    })
    .await
}

/// Writes `request` on a raw client connection and reads one response: its head (lower
/// case) and body, by its Content-Length, its chunks (the body as sent, chunked) or the
/// end of the connection; and whether the proxy closed the connection after it.
async fn exchange_raw(s: &mut tokio::net::TcpStream, request: &[u8]) -> (String, String) {
    use tokio::io::AsyncWriteExt;
    s.write_all(request).await.unwrap();
    read_response(s, false).await
}

/// Reads one response from a raw client connection ([`exchange_raw`]); `head_request`
/// when it answers a HEAD (no body, whatever its length says).
async fn read_response(s: &mut tokio::net::TcpStream, head_request: bool) -> (String, String) {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut closed = false;
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_lowercase();
            let body = &got[end + 4..];
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map(|v| v.trim().parse::<usize>().unwrap());
            let done = if head_request {
                Some(0)
            } else if head.contains("transfer-encoding: chunked") {
                // The last chunk, then the trailers' end (test bodies hold no "\r\n0\r\n").
                let last = if body.starts_with(b"0\r\n") {
                    Some(0)
                } else {
                    body.windows(5)
                        .position(|w| w == b"\r\n0\r\n")
                        .map(|at| at + 2)
                };
                last.and_then(|at| {
                    body[at..]
                        .windows(4)
                        .position(|w| w == b"\r\n\r\n")
                        .map(|end| at + end + 4)
                })
            } else if let Some(length) = length {
                (body.len() >= length).then_some(length)
            } else {
                closed.then_some(body.len())
            };
            if let Some(done) = done {
                let body = String::from_utf8_lossy(&body[..done]).into_owned();
                // What follows belongs to the next response: none is asked for here.
                assert_eq!(got.len(), end + 4 + done, "bytes past the response: {head}");
                return (head, body);
            }
        }
        assert!(
            !closed,
            "the connection closed mid-response: {:?}",
            String::from_utf8_lossy(&got)
        );
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, s.read(&mut chunk))
            .await
            .expect("no answer within 10 s")
            .unwrap();
        closed = n == 0;
        got.extend_from_slice(&chunk[..n]);
    }
}

/// Whether the proxy closes the client's connection within a second (it reads the end).
async fn proxy_closed(s: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::AsyncReadExt;
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(Duration::from_secs(1), s.read(&mut byte)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// A proxy (no records) whose active release is `blue`, in slot blue.
async fn proxy_to(blue: SocketAddr) -> Proxy {
    let p = proxy(None).await;
    p.switch(Some(target(Slot::Blue, blue, 1)));
    p
}

async fn raw_connection(p: &Proxy) -> tokio::net::TcpStream {
    tokio::net::TcpStream::connect(p.local_addr())
        .await
        .unwrap()
}

#[tokio::test]
async fn the_fast_path_leaves_hop_by_hop_headers_out_both_ways_and_adds_the_forwarding_ones() {
    let blue = upstream("blue").await;
    let p = proxy_to(blue).await;
    let mut s = raw_connection(&p).await;
    // The release's response names x-up-hop in its Connection header and sends
    // Keep-Alive: neither reaches the client; an id does.
    let (head, body) = exchange_raw(&mut s, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        !head.contains("x-up-hop") && !head.contains("keep-alive"),
        "{head}"
    );
    assert!(head.contains("\r\nx-request-id: "), "{head}");
    assert!(body.starts_with("blue saw "), "{body}");
    // What the release sees.
    let request = b"GET /headers HTTP/1.1\r\nHost: shop.example\r\nKeep-Alive: 5\r\n\
        Proxy-Connection: keep-alive\r\nConnection: keep-alive\r\nTE: trailers\r\n\
        X-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: gopher\r\nForwarded: for=10.0.0.1\r\n\
        X-Request-Id: req-7\r\nX-End-To-End: kept\r\n\r\n";
    let (head, body) = exchange_raw(&mut s, request).await;
    assert!(head.contains("\r\nx-request-id: req-7"), "{head}");
    for line in [
        "host: shop.example",
        "te: trailers",
        "x-forwarded-for: 10.0.0.1, 127.0.0.1",
        "x-forwarded-proto: http",
        "x-forwarded-host: shop.example",
        "forwarded: for=10.0.0.1, for=127.0.0.1;host=shop.example;proto=http",
        "x-request-id: req-7",
        "x-end-to-end: kept",
    ] {
        assert!(body.lines().any(|l| l == line), "{line:?} not in\n{body}");
    }
    for gone in ["keep-alive", "proxy-connection", "connection", "gopher"] {
        assert!(
            !body.contains(gone),
            "{gone:?} reached the release:\n{body}"
        );
    }
    // The same connection goes on with the next request.
    let (head, _) = exchange_raw(&mut s, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
}

#[tokio::test]
async fn pipelined_and_head_requests_each_get_their_own_response() {
    use tokio::io::AsyncWriteExt;
    let blue = upstream("blue").await;
    let p = proxy_to(blue).await;
    let mut s = raw_connection(&p).await;
    s.write_all(b"HEAD /headers HTTP/1.1\r\nHost: x\r\n\r\nGET /slow HTTP/1.1\r\nHost: x\r\n\r\nGET /headers HTTP/1.1\r\nHost: y\r\n\r\n")
        .await
        .unwrap();
    let (head, body) = read_response(&mut s, true).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-length: "), "{head}");
    assert_eq!(body, "");
    assert_eq!(read_response(&mut s, false).await.1, "blue");
    let (_, body) = read_response(&mut s, false).await;
    assert!(body.contains("host: y"), "{body}");
}

#[tokio::test]
async fn a_request_with_a_body_after_fast_ones_is_served_on_the_same_connection() {
    let blue = upstream("blue").await;
    let p = proxy_to(blue).await;
    let mut s = raw_connection(&p).await;
    let (_, body) = exchange_raw(&mut s, b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(body, "blue");
    // A body: hyper's server takes the connection from here, with the bytes read.
    let (head, body) = exchange_raw(
        &mut s,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello there",
    )
    .await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(body, "hello there");
    let (_, body) = exchange_raw(&mut s, b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(body, "blue");
    assert_eq!(p.counters().requests.load(Ordering::Relaxed), 3);
}

#[tokio::test]
async fn informational_responses_are_skipped_and_a_body_to_the_end_closes_the_connection() {
    let (blue, _) = scripted_upstream(
        b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nx-a: 1\r\n\r\nto the end",
        true,
    )
    .await;
    let (tx, mut rx) = mpsc::channel(4);
    let p = proxy(Some(tx)).await;
    p.switch(Some(target(Slot::Blue, blue, 1)));
    let mut s = raw_connection(&p).await;
    let (head, body) = exchange_raw(&mut s, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(head.starts_with("http/1.1 200 ok"), "{head}");
    assert!(
        head.contains("x-a: 1") && head.contains("connection: close"),
        "{head}"
    );
    assert!(!head.contains("link:"), "{head}");
    assert_eq!(body, "to the end");
    assert!(proxy_closed(&mut s).await);
    assert_eq!(rx.recv().await.unwrap().status, 200);
}

#[tokio::test]
async fn chunked_bodies_with_trailers_and_a_release_closing_each_connection_cost_nothing() {
    let chunked: &[u8] = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nx-sum: 1\r\n\r\n";
    let (blue, accepted) = scripted_upstream(chunked, true).await;
    let p = proxy_to(blue).await;
    let mut s = raw_connection(&p).await;
    for _ in 0..3 {
        let (head, body) = exchange_raw(&mut s, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(head.contains("transfer-encoding: chunked"), "{head}");
        // The release's Connection: close is its own; the client's connection goes on.
        assert!(!head.contains("connection"), "{head}");
        assert_eq!(
            body,
            "5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nx-sum: 1\r\n\r\n"
        );
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
    assert_eq!(p.counters().upstream_errors.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn a_client_asking_to_close_gets_its_answer_and_the_close() {
    let blue = upstream("blue").await;
    let p = proxy_to(blue).await;
    let mut s = raw_connection(&p).await;
    let (head, body) = exchange_raw(
        &mut s,
        b"GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(head.contains("connection: close"), "{head}");
    assert_eq!(body, "blue");
    assert!(proxy_closed(&mut s).await);
}

#[tokio::test]
async fn a_release_breaking_off_mid_body_ends_that_client_connection_only() {
    let (blue, _) =
        scripted_upstream(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc", true).await;
    let p = proxy_to(blue).await;
    let mut s = raw_connection(&p).await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "the client connection was left open");
    let got = String::from_utf8_lossy(&got);
    assert!(
        got.starts_with("HTTP/1.1 200") && got.ends_with("\r\n\r\nabc"),
        "{got}"
    );
    // The proxy goes on for the next client.
    let (ok, _) = scripted_upstream(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", false).await;
    p.switch(Some(target(Slot::Green, ok, 2)));
    let mut s = raw_connection(&p).await;
    assert_eq!(
        exchange_raw(&mut s, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .1,
        "ok"
    );
}

#[tokio::test]
async fn shutdown_lets_a_request_in_flight_finish_and_closes_idle_connections() {
    use tokio::io::AsyncWriteExt;
    let blue = upstream("blue").await;
    let p = proxy_to(blue).await;
    let mut idle = raw_connection(&p).await;
    assert_eq!(
        exchange_raw(&mut idle, b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .1,
        "blue"
    );
    let mut busy = raw_connection(&p).await;
    busy.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    p.shutdown();
    // The idle one is closed at once; the busy one gets its answer (the release takes
    // 400 ms), then is closed.
    assert!(
        proxy_closed(&mut idle).await,
        "an idle connection stayed open after shutdown"
    );
    let (head, body) = read_response(&mut busy, false).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(body, "blue");
    assert!(
        proxy_closed(&mut busy).await,
        "a connection stayed open after its last answer"
    );
}

#[tokio::test]
async fn past_own_max_held_release_connections_clients_are_served_through_the_pool() {
    let (blue, accepted) = counting_upstream("blue", Duration::from_secs(60)).await;
    let p = proxy_to(blue).await;
    let mut clients = Vec::new();
    for _ in 0..OWN_MAX + 20 {
        let mut s = raw_connection(&p).await;
        assert_eq!(raw_get(&mut s).await, "blue");
        clients.push(s);
    }
    // The first OWN_MAX hold a release connection each; the rest went to the pool.
    assert_eq!(p.shared.own_count.load(Ordering::Relaxed), OWN_MAX);
    assert!(accepted.load(Ordering::SeqCst) > OWN_MAX as u64);
    for s in clients.iter_mut().rev().take(25) {
        assert_eq!(raw_get(s).await, "blue");
    }
    // Closed clients give their places back.
    drop(clients);
    let deadline = Instant::now() + Duration::from_secs(5);
    while p.shared.own_count.load(Ordering::Relaxed) > 0 {
        assert!(Instant::now() < deadline, "held places never given back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A release that answers each request with `answer` and, 100 ms later, sends `then`
/// unasked on the same connection (a 408 before closing, a body longer than its length).
async fn chatty_upstream(
    answer: &'static [u8],
    then: &'static [u8],
) -> (SocketAddr, Arc<AtomicU64>) {
    raw_release(Script {
        answer,
        then: Some(then),
        close: false,
        idle_close: None,
    })
    .await
}

#[tokio::test]
async fn bytes_a_release_sends_unasked_are_never_taken_for_the_next_response() {
    let (blue, accepted) = chatty_upstream(
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfirst",
        b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 5\r\n\r\nstale",
    )
    .await;
    let (tx, mut rx) = mpsc::channel(8);
    let p = proxy(Some(tx)).await;
    p.switch(Some(target(Slot::Blue, blue, 1)));
    let mut s = raw_connection(&p).await;
    for _ in 0..3 {
        let (head, body) = exchange_raw(&mut s, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert_eq!(body, "first");
        assert_eq!(rx.recv().await.unwrap().status, 200);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Each request after the first found its held connection spoilt and took a new one.
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_length_is_passed_on_as_digits_and_never_dropped_for_the_connection_header() {
    // The release's Connection header names Content-Length: the length still frames the
    // body for the client, who asks twice on one connection.
    let (blue, _) = scripted_upstream(
        b"HTTP/1.1 200 OK\r\nconnection: content-length, x-hop\r\nx-hop: 1\r\ncontent-length: 2, 2\r\n\r\nok",
        false,
    )
    .await;
    let p = proxy_to(blue).await;
    let mut s = raw_connection(&p).await;
    for _ in 0..2 {
        let (head, body) = exchange_raw(&mut s, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(
            head.contains("\r\ncontent-length: 2\r\n") || head.ends_with("\r\ncontent-length: 2"),
            "{head}"
        );
        assert!(!head.contains("x-hop"), "{head}");
        assert_eq!(body, "ok");
    }
    // A signed length is no length: a 502, as hyper's client says.
    let (signed, _) =
        scripted_upstream(b"HTTP/1.1 200 OK\r\ncontent-length: +2\r\n\r\nok", false).await;
    p.switch(Some(target(Slot::Green, signed, 2)));
    let (head, body) = exchange_raw(&mut s, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(head.starts_with("http/1.1 502"), "{head}");
    assert!(body.contains("invalid Content-Length"), "{body}");
}

#[tokio::test]
async fn shutdown_marks_the_last_response_of_a_connection() {
    use tokio::io::AsyncWriteExt;
    let blue = upstream("blue").await;
    let p = proxy_to(blue).await;
    let mut s = raw_connection(&p).await;
    // Two pipelined requests; shutdown comes while the first is at the release.
    s.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\nGET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    p.shutdown();
    let (head, body) = read_response(&mut s, false).await;
    assert_eq!(body, "blue");
    assert!(!head.contains("connection: close"), "{head}");
    // The second began after shutdown: it is answered, says it is the last, and the
    // connection ends.
    let (head, body) = read_response(&mut s, false).await;
    assert_eq!(body, "blue");
    assert!(head.contains("connection: close"), "{head}");
    assert!(proxy_closed(&mut s).await);
}
