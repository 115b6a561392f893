//! The HTTP/1.1 fast path: a client connection's `GET` and `HEAD` requests without a
//! body go to the release as bytes, the way nginx forwards them, instead of through
//! hyper's server and client.
//!
//! The request head is parsed once (`httparse`) and written to the release with the
//! hop-by-hop headers left out and the forwarding headers and request id put in, on the
//! one release connection this client connection holds; the response head is parsed,
//! rewritten the same way, and its body copied through as it comes (by its
//! `Content-Length`, its chunks, or to the end of the connection). One task does all of
//! it: no channel between a server and a client connection, no header map, no body
//! frames.
//!
//! Anything else (a request body, an upgrade, HTTP/1.0, `Expect`, a `Connection`
//! header naming other headers, a head too large or malformed, no release yet, or
//! the connection's place among [`super::OWN_MAX`] taken) hands the connection, with
//! the bytes read so far, to hyper's server for the rest of its life ([`Rewind`]),
//! which answers it as it always has. Requests on this path are counted, recorded and
//! timed out exactly as there.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use hyper::StatusCode;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::deadline::Deadline;
use super::{
    OwnPlace, Route, Shared, UPSTREAM_CONNECT_TIMEOUT, headers, no_answer, record, too_slow,
    wait_for_release,
};

/// The most headers a request on this path has; one with more goes to hyper (which
/// takes 100).
const MAX_REQUEST_HEADERS: usize = 64;
/// The most headers a release's response has (hyper's client takes as many).
const MAX_RESPONSE_HEADERS: usize = 100;
/// The largest response head taken from a release.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Room made for a read, at least.
const MIN_READ: usize = 4096;

/// Serves a client connection's requests until it closes, or until one is not for this
/// path: then the bytes read and not yet served are returned, for hyper to serve the
/// connection from there. On shutdown (`stop`) a connection waiting for its next request
/// is closed at once, one in the middle of a response after it.
pub(super) async fn serve<I>(
    shared: &Arc<Shared>,
    client: &headers::Client,
    io: &mut I,
    stop: &mut watch::Receiver<bool>,
) -> Option<Vec<u8>>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let stopping = Stopping::default();
    let served = serve_until_stopped(shared, client, io, &stopping);
    tokio::pin!(served);
    let ended = tokio::select! {
        rest = served.as_mut() => Some(rest),
        _ = stop.wait_for(|stopped| *stopped) => None,
    };
    match ended {
        Some(rest) => rest,
        None => {
            stopping.asked.store(true, Ordering::Relaxed);
            if stopping.idle.load(Ordering::Relaxed) {
                None
            } else {
                served.await
            }
        }
    }
}

/// [`serve`], told of shutdown through `stopping`.
async fn serve_until_stopped<I>(
    shared: &Arc<Shared>,
    client: &headers::Client,
    io: &mut I,
    stopping: &Stopping,
) -> Option<Vec<u8>>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let mut conn = Conn {
        inb: Buf::with_capacity(MIN_READ),
        up: None,
        request: Vec::with_capacity(1024),
        response: Vec::with_capacity(1024),
        id: Vec::with_capacity(64),
        line: String::with_capacity(128),
    };
    loop {
        // A whole request head, within header_timeout of waiting for it (an idle
        // keep-alive connection, or a client that trickles its head, is closed).
        let mut since: Option<Instant> = None;
        let plan = loop {
            if !conn.inb.is_empty() {
                match plan(&mut conn, shared, client) {
                    Plan::Partial if conn.inb.len() <= shared.limits.max_header_bytes => {}
                    // Too large, or not one for this path: hyper answers it.
                    Plan::Partial | Plan::Hyper => return Some(conn.inb.into_rest()),
                    Plan::Forward(forward) if forward.len > shared.limits.max_header_bytes => {
                        return Some(conn.inb.into_rest());
                    }
                    Plan::Forward(forward) => break forward,
                }
            }
            let idle = conn.inb.is_empty();
            if idle && stopping.asked.load(Ordering::Relaxed) {
                return None;
            }
            let waited = since.get_or_insert_with(Instant::now);
            let deadline = Deadline::new(*waited, shared.limits.header_timeout);
            stopping.idle.store(idle, Ordering::Relaxed);
            let read = tokio::select! {
                biased;
                read = conn.inb.fill(io) => read,
                () = deadline => return None,
            };
            stopping.idle.store(false, Ordering::Relaxed);
            if matches!(read, Ok(0) | Err(_)) {
                return None;
            }
        };
        if shared.held.load(Ordering::Acquire) {
            wait_for_release(shared).await;
        }
        // Read the target exactly once: this request stays on this slot.
        let Some(route) = shared.route.load_full() else {
            return Some(conn.inb.into_rest());
        };
        if conn
            .up
            .as_ref()
            .is_some_and(|up| !Arc::ptr_eq(&up.route, &route) || !up.idle())
        {
            // The release switched away from, or the connection closed or sent what
            // nobody asked for while idle: let go.
            conn.up = None;
        }
        // A new release connection takes its place under OWN_MAX first; past it, hyper's
        // server and the worker's pool take the connection.
        let place = match conn.up {
            Some(_) => None,
            None => match OwnPlace::take(shared) {
                Some(place) => Some(place),
                None => return Some(conn.inb.into_rest()),
            },
        };
        let mut plan = plan;
        // Shutdown asked: this is the connection's last response, and says so.
        plan.close |= stopping.asked.load(Ordering::Relaxed);
        match exchange(&mut conn, shared, &route, &plan, place, io).await {
            Ok(Next::Serve) => conn.inb.consume(plan.len),
            Ok(Next::Close) => {
                let _ = io.shutdown().await;
                return None;
            }
            Err(()) => return None,
        }
    }
}

/// Shutdown as a connection on this path sees it: the one serving it says whether it
/// waits for a next request (then it can be closed at once), and is told that shutdown
/// was asked for (then it ends before its next request). One registration with the
/// shutdown signal per connection, not one per request.
#[derive(Default)]
struct Stopping {
    idle: AtomicBool,
    asked: AtomicBool,
}

/// A client connection's state on this path, its buffers kept from request to request.
struct Conn {
    /// Bytes from the client not yet served.
    inb: Buf,
    /// The release connection this client connection holds.
    up: Option<Upstream>,
    /// The request head as it goes to the release.
    request: Vec<u8>,
    /// The response head as it goes to the client.
    response: Vec<u8>,
    /// The request's id.
    id: Vec<u8>,
    /// Room to make a header value in.
    line: String,
}

/// A connection to a release, held by one client connection.
struct Upstream {
    route: Arc<Route>,
    stream: TcpStream,
    /// Bytes from the release not yet sent on.
    buf: Buf,
    /// Its place under [`super::OWN_MAX`].
    place: OwnPlace,
}

impl Upstream {
    /// Whether the connection is still open with nothing unread: the release may have
    /// closed it while idle, or sent bytes nobody asked for (a 408 before closing, a
    /// body longer than its length), which must not be taken for the next response. No
    /// system call unless the worker has seen it readable.
    fn idle(&self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.stream.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => matches!(
                self.stream.try_read(&mut [0u8; 1]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock
            ),
        }
    }
}

/// A request this path forwards.
struct Forward {
    /// Its head's length in the client's bytes.
    len: usize,
    /// A `HEAD` request: its response has no body, whatever its headers say.
    head: bool,
    /// The client asked to close the connection after it.
    close: bool,
}

enum Plan {
    Forward(Forward),
    /// Not a request for this path.
    Hyper,
    /// Not yet a whole head.
    Partial,
}

/// What becomes of the client connection after a response.
enum Next {
    Serve,
    Close,
}

/// Parses the request head at the start of the client's bytes and, when it is one for
/// this path, writes the release's copy of it into `conn.request` and its id into
/// `conn.id`.
fn plan(conn: &mut Conn, shared: &Shared, client: &headers::Client) -> Plan {
    let mut slots = [httparse::EMPTY_HEADER; MAX_REQUEST_HEADERS];
    let mut req = httparse::Request::new(&mut slots);
    let len = match req.parse(conn.inb.bytes()) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Plan::Partial,
        Err(_) => return Plan::Hyper,
    };
    let (Some(method), Some(path), Some(1)) = (req.method, req.path, req.version) else {
        return Plan::Hyper;
    };
    let head = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Plan::Hyper,
    };
    if !path.starts_with('/')
        || path.len() > shared.limits.max_uri_bytes
        || !path.bytes().all(plain_target_byte)
    {
        return Plan::Hyper;
    }
    let out = &mut conn.request;
    out.clear();
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut host: Option<&[u8]> = None;
    let mut close = false;
    let mut zero_length = false;
    let mut te: Option<bool> = None;
    let (mut prior_for, mut prior_forwarded) = (false, false);
    let mut id: Option<&[u8]> = None;
    for h in req.headers.iter() {
        match Name::of(h.name) {
            Name::Host if host.is_none() => host = Some(h.value),
            Name::Host => return Plan::Hyper,
            Name::ContentLength if !zero_length && h.value.trim_ascii() == b"0" => {
                zero_length = true;
            }
            Name::ContentLength | Name::TransferEncoding | Name::Upgrade | Name::Expect => {
                return Plan::Hyper;
            }
            Name::Connection => {
                for token in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                    if token.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if !token.is_empty() && !token.eq_ignore_ascii_case(b"keep-alive") {
                        // It names other headers as hop-by-hop (or asks to upgrade).
                        return Plan::Hyper;
                    }
                }
                continue;
            }
            Name::HopByHop => continue,
            Name::Te => {
                te.get_or_insert(h.value.eq_ignore_ascii_case(b"trailers"));
                continue;
            }
            Name::XForwardedFor => {
                prior_for = true;
                continue;
            }
            Name::Forwarded => {
                prior_forwarded = true;
                continue;
            }
            Name::XForwardedProto | Name::XForwardedHost => continue,
            Name::XRequestId => match id {
                None if !h.value.is_empty() => id = Some(h.value),
                None => {
                    // The first is empty: all are replaced by a new one.
                    id = Some(b"");
                    continue;
                }
                Some(b"") => continue,
                Some(_) => {}
            },
            Name::Other => {}
        }
        push_header(out, h.name.as_bytes(), h.value);
    }
    let Some(host) = host else {
        return Plan::Hyper;
    };
    if te == Some(true) {
        out.extend_from_slice(b"te: trailers\r\n");
    }
    // X-Forwarded-For: the client's address after those of the proxies before us.
    out.extend_from_slice(b"x-forwarded-for: ");
    if prior_for {
        for h in req.headers.iter() {
            if Name::of(h.name) == Name::XForwardedFor && visible(h.value) {
                out.extend_from_slice(h.value);
                out.extend_from_slice(b", ");
            }
        }
    }
    out.extend_from_slice(client.ip());
    out.extend_from_slice(b"\r\nx-forwarded-proto: ");
    out.extend_from_slice(client.proto().as_bytes());
    out.extend_from_slice(b"\r\n");
    push_header(out, b"x-forwarded-host", host);
    // Forwarded (RFC 7239): this hop's element after any before it.
    let line = &mut conn.line;
    line.clear();
    if prior_forwarded {
        for h in req.headers.iter() {
            if Name::of(h.name) == Name::Forwarded
                && let Some(v) = std::str::from_utf8(h.value)
                    .ok()
                    .filter(|v| visible(v.as_bytes()))
            {
                line.push_str(v);
                line.push_str(", ");
            }
        }
    }
    let host_text = std::str::from_utf8(host)
        .ok()
        .filter(|h| visible(h.as_bytes()));
    headers::push_forwarded_hop(line, client, host_text);
    push_header(out, b"forwarded", line.as_bytes());
    conn.id.clear();
    match id {
        Some(id) if !id.is_empty() => conn.id.extend_from_slice(id),
        _ => {
            shared.request_ids.write_next(&mut conn.id);
            push_header(out, b"x-request-id", &conn.id);
        }
    }
    out.extend_from_slice(b"\r\n");
    Plan::Forward(Forward { len, head, close })
}

/// Sends a request to the release and its response to the client: on the release
/// connection held, else a new one. A held connection that turns out closed before any
/// of the response (the release closed it while idle) is replaced and the request sent
/// again: it is a `GET` or `HEAD`. Err when the client connection must end now.
async fn exchange<I>(
    conn: &mut Conn,
    shared: &Arc<Shared>,
    route: &Arc<Route>,
    req: &Forward,
    mut place: Option<OwnPlace>,
    io: &mut I,
) -> Result<Next, ()>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let counters = &shared.counters;
    counters.requests.fetch_add(1, Ordering::Relaxed);
    counters.in_flight.fetch_add(1, Ordering::Relaxed);
    let start = Instant::now();
    let target = &route.target;
    let mut deadline = Deadline::new(start, shared.limits.response_timeout);
    let got = loop {
        let reused = conn.up.is_some();
        let up = match conn.up.as_mut() {
            Some(up) => up,
            None => match connect(route, place.take().expect("a place for a new connection")).await
            {
                Ok(up) => conn.up.insert(up),
                Err(e) => break Err(no_answer(shared, target, &e.to_string())),
            },
        };
        let sent = tokio::select! {
            biased;
            got = response_head(up, &conn.request, req, &conn.id, &mut conn.response) => got,
            () = &mut deadline => {
                counters.in_flight.fetch_sub(1, Ordering::Relaxed);
                counters.upstream_errors.fetch_add(1, Ordering::Relaxed);
                record(shared, target, 504, start, true);
                conn.up = None;
                let body = too_slow(shared, target);
                return answer(conn, io, StatusCode::GATEWAY_TIMEOUT, &body, req).await;
            }
        };
        match sent {
            Ok(head) => break Ok(head),
            // Sent again on a new connection, in the old one's place (a GET or HEAD, as
            // nginx's `proxy_next_upstream error` does).
            Err(Failure { retry: true, .. }) if reused => {
                place = conn.up.take().map(|up| up.place);
            }
            Err(failure) => {
                conn.up = None;
                break Err(no_answer(shared, target, &failure.why));
            }
        }
    };
    counters.in_flight.fetch_sub(1, Ordering::Relaxed);
    let head = match got {
        Ok(head) => head,
        Err(body) => {
            counters.upstream_errors.fetch_add(1, Ordering::Relaxed);
            record(shared, target, 502, start, true);
            return answer(conn, io, StatusCode::BAD_GATEWAY, &body, req).await;
        }
    };
    let up = conn.up.as_mut().expect("a response came on it");
    let mut framing = head.framing;
    // What of the body came with the head; a body that is not what its head says from
    // its first bytes is a 502, as nothing has been sent yet.
    let Ok(first) = framing.take(up.buf.bytes()) else {
        conn.up = None;
        counters.upstream_errors.fetch_add(1, Ordering::Relaxed);
        record(shared, target, 502, start, true);
        let body = no_answer(shared, target, "a malformed chunked body");
        return answer(conn, io, StatusCode::BAD_GATEWAY, &body, req).await;
    };
    record(shared, target, head.status, start, false);
    let ended = relay(io, up, &mut conn.response, framing, first).await?;
    io.flush().await.map_err(|_| ())?;
    if !head.keep || !ended || !up.buf.is_empty() {
        // Closed by the release, or bytes past the response's end: not used again.
        conn.up = None;
    }
    if req.close || head.close_client {
        Ok(Next::Close)
    } else {
        Ok(Next::Serve)
    }
}

/// Makes a release connection for a client connection to hold.
async fn connect(route: &Arc<Route>, place: OwnPlace) -> io::Result<Upstream> {
    let stream = tokio::time::timeout(
        UPSTREAM_CONNECT_TIMEOUT,
        TcpStream::connect(route.target.addr),
    )
    .await
    .map_err(|_| {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "connecting took more than {} s",
                UPSTREAM_CONNECT_TIMEOUT.as_secs()
            ),
        )
    })??;
    let _ = stream.set_nodelay(true);
    Ok(Upstream {
        route: route.clone(),
        stream,
        buf: Buf::with_capacity(2 * MIN_READ),
        place,
    })
}

/// A response head as the client gets it (in `Conn::response`), and what follows it.
struct Head {
    status: u16,
    framing: Framing,
    /// The release connection can take another request after this response.
    keep: bool,
    /// The client connection ends after this response (its end marks the body's).
    close_client: bool,
}

/// Why a release gave no response head.
struct Failure {
    why: String,
    /// Nothing at all came back: the connection was closed while idle, and the request
    /// can go again on a new one.
    retry: bool,
}

impl Failure {
    fn new(why: impl Into<String>, retry: bool) -> Failure {
        Failure {
            why: why.into(),
            retry,
        }
    }
}

/// Writes the request head to the release and reads the response head (past any 1xx),
/// writing the client's copy into `out`.
async fn response_head(
    up: &mut Upstream,
    request: &[u8],
    req: &Forward,
    id: &[u8],
    out: &mut Vec<u8>,
) -> Result<Head, Failure> {
    // Its buffer is empty: a connection with bytes left over is never reused
    // (`Upstream::idle`, and `exchange` lets go of one after its response).
    if let Err(e) = up.stream.write_all(request).await {
        return Err(Failure::new(e.to_string(), true));
    }
    let mut got_any = false;
    loop {
        if !up.buf.is_empty() {
            got_any = true;
            let mut slots = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
            let mut resp = httparse::Response::new(&mut slots);
            match resp.parse(up.buf.bytes()) {
                Ok(httparse::Status::Complete(len)) => {
                    let status = resp.code.unwrap_or(0);
                    if (100..200).contains(&status) && status != 101 {
                        // Informational (100, 103): the final response follows.
                        up.buf.consume(len);
                        continue;
                    }
                    let head = rewrite(&resp, req, id, out).map_err(|e| Failure::new(e, false))?;
                    up.buf.consume(len);
                    return Ok(head);
                }
                Ok(httparse::Status::Partial) if up.buf.len() > MAX_RESPONSE_HEAD => {
                    return Err(Failure::new("a response head over 64 KiB", false));
                }
                Ok(httparse::Status::Partial) => {}
                Err(e) => {
                    return Err(Failure::new(
                        format!("an invalid response head: {e}"),
                        false,
                    ));
                }
            }
        }
        match up.buf.fill(&mut up.stream).await {
            Ok(0) => {
                return Err(Failure::new(
                    "the connection closed before a response",
                    !got_any,
                ));
            }
            Ok(_) => {}
            Err(e) => return Err(Failure::new(e.to_string(), !got_any)),
        }
    }
}

/// How a response's body ends.
enum Framing {
    /// It has none.
    Empty,
    /// After this many more bytes.
    Length(u64),
    /// At its last chunk and trailers.
    Chunked(Chunks),
    /// When the release closes the connection.
    Eof,
}

/// Writes the client's copy of a response head into `out`: HTTP/1.1, without hop-by-hop
/// headers (but with its `Transfer-Encoding`, as the body is passed on as it is), with
/// the request's id unless the release gave one.
fn rewrite(
    resp: &httparse::Response,
    req: &Forward,
    id: &[u8],
    out: &mut Vec<u8>,
) -> Result<Head, String> {
    let status = resp.code.unwrap_or(0);
    if status == 101 {
        return Err("switched protocols, which nobody asked for".to_string());
    }
    if !(100..=999).contains(&status) {
        return Err(format!("an invalid status {status:03}"));
    }
    // First look: how the body ends, whether the release keeps the connection, and which
    // headers its Connection header names.
    let mut chunked: Option<bool> = None;
    let mut length: Option<u64> = None;
    let mut keep = resp.version == Some(1);
    let mut listed = false;
    for h in resp.headers.iter() {
        match Name::of(h.name) {
            Name::TransferEncoding => {
                let last = h.value.rsplit(|&b| b == b',').next().unwrap_or(b"");
                chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            }
            Name::ContentLength => {
                let n = content_length(h.value).ok_or("an invalid Content-Length")?;
                if length.is_some_and(|l| l != n) {
                    return Err("two different Content-Lengths".to_string());
                }
                length = Some(n);
            }
            Name::Connection => {
                for token in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                    if token.eq_ignore_ascii_case(b"close") {
                        keep = false;
                    } else if !token.is_empty() && !token.eq_ignore_ascii_case(b"keep-alive") {
                        listed = true;
                    }
                }
            }
            _ => {}
        }
    }
    let framing = if req.head || status == 204 || status == 304 {
        Framing::Empty
    } else {
        match (chunked, length) {
            (Some(true), _) => Framing::Chunked(Chunks::default()),
            (Some(false), _) | (None, None) => Framing::Eof,
            (None, Some(0)) => Framing::Empty,
            (None, Some(n)) => Framing::Length(n),
        }
    };
    let close_client = matches!(framing, Framing::Eof) || req.close;
    keep &= !matches!(framing, Framing::Eof);
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    let digits = [status / 100 % 10, status / 10 % 10, status % 10];
    out.extend(digits.map(|d| b'0' + d as u8));
    out.push(b' ');
    out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut has_id = false;
    let mut length_sent = false;
    for h in resp.headers.iter() {
        match Name::of(h.name) {
            Name::Connection | Name::HopByHop | Name::Te | Name::Upgrade => continue,
            // The framing the body is passed on with, whatever the Connection header
            // names: the length once, as digits.
            Name::ContentLength => {
                if let (None, Some(n), false) = (chunked, length, length_sent) {
                    out.extend_from_slice(b"content-length: ");
                    push_decimal(out, n);
                    out.extend_from_slice(b"\r\n");
                    length_sent = true;
                }
                continue;
            }
            Name::TransferEncoding => {}
            _ if listed && named_by_connection(resp.headers, h.name) => continue,
            Name::XRequestId => has_id = true,
            _ => {}
        }
        push_header(out, h.name.as_bytes(), h.value);
    }
    if !has_id {
        push_header(out, b"x-request-id", id);
    }
    if close_client {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(Head {
        status,
        framing,
        keep,
        close_client,
    })
}

/// Writes `n` in decimal.
fn push_decimal(out: &mut Vec<u8>, n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut n = n;
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// Whether the response's `Connection` header lists `name`.
fn named_by_connection(headers: &[httparse::Header], name: &str) -> bool {
    headers
        .iter()
        .filter(|h| Name::of(h.name) == Name::Connection)
        .flat_map(|h| h.value.split(|&b| b == b','))
        .any(|token| token.trim_ascii().eq_ignore_ascii_case(name.as_bytes()))
}

impl Framing {
    /// How many of `bytes` (the next ones from the release) are the body's, and whether
    /// they end it. Err on a chunked body that is not one.
    fn take(&mut self, bytes: &[u8]) -> Result<(usize, bool), ()> {
        Ok(match self {
            Framing::Empty => (0, true),
            Framing::Length(left) => {
                let take = (*left).min(bytes.len() as u64);
                *left -= take;
                (take as usize, *left == 0)
            }
            Framing::Chunked(chunks) => {
                let take = chunks.advance(bytes)?;
                (take, chunks.done())
            }
            Framing::Eof => (bytes.len(), false),
        })
    }
}

/// Sends the response head (in `out`) with the first `first` bytes of its body (`take`
/// of what came with the head), then the rest of the body as it comes. Ok(false) when
/// the body ended with the release's connection. Err when the client went away or the
/// release broke off mid-body: the client connection ends then.
async fn relay<I>(
    io: &mut I,
    up: &mut Upstream,
    out: &mut Vec<u8>,
    mut framing: Framing,
    first: (usize, bool),
) -> Result<bool, ()>
where
    I: AsyncWrite + Unpin,
{
    // The head and what came with it, in one write.
    let (take, mut done) = first;
    out.extend_from_slice(&up.buf.bytes()[..take]);
    io.write_all(out).await.map_err(|_| ())?;
    up.buf.consume(take);
    while !done {
        // What was written reaches the client before the wait for more (a TLS stream
        // may hold it; a TCP stream sends it as written).
        io.flush().await.map_err(|_| ())?;
        match up.buf.fill(&mut up.stream).await {
            Ok(0) if matches!(framing, Framing::Eof) => return Ok(false),
            Ok(0) | Err(_) => return Err(()),
            Ok(_) => {}
        }
        let avail = up.buf.bytes();
        let take;
        (take, done) = framing.take(avail)?;
        if take > 0 {
            io.write_all(&avail[..take]).await.map_err(|_| ())?;
        }
        up.buf.consume(take);
    }
    Ok(true)
}

/// ripcord's own answer to a request the release did not answer (502, 504), with the
/// request's id; the client connection goes on.
async fn answer<I>(
    conn: &mut Conn,
    io: &mut I,
    status: StatusCode,
    body: &str,
    req: &Forward,
) -> Result<Next, ()>
where
    I: AsyncWrite + Unpin,
{
    let out = &mut conn.response;
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\ncontent-type: text/plain; charset=utf-8\r\n");
    out.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
    push_header(out, b"x-request-id", &conn.id);
    if req.close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !req.head {
        out.extend_from_slice(body.as_bytes());
    }
    io.write_all(out).await.map_err(|_| ())?;
    io.flush().await.map_err(|_| ())?;
    Ok(if req.close { Next::Close } else { Next::Serve })
}

/// A byte of a request target this path forwards as it is: letters, digits and the
/// characters RFC 3986 allows in a path and query. Anything else (`#`, `<`, `"`, a
/// space, a byte past ASCII) goes to hyper, which refuses or forwards it as it always
/// has.
fn plain_target_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b)
}

/// A `Content-Length` value: digits, or a list of the same digits (`5, 5`, which hyper
/// takes too); a sign, a space inside or an overflow is none.
fn content_length(value: &[u8]) -> Option<u64> {
    let mut length = None;
    for part in value.split(|&b| b == b',') {
        let digits = part.trim_ascii();
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = digits.iter().try_fold(0u64, |n, &d| {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })?;
        if length.is_some_and(|l| l != n) {
            return None;
        }
        length = Some(n);
    }
    length
}

fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Whether a header value is text as `HeaderValue::to_str` takes it (visible ASCII and
/// tabs): the values the other path carries into a list header.
fn visible(v: &[u8]) -> bool {
    v.iter().all(|&b| b == b'\t' || (32..127).contains(&b))
}

/// The header names this path treats apart from the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Name {
    Host,
    ContentLength,
    TransferEncoding,
    Upgrade,
    Expect,
    Connection,
    /// Hop-by-hop, left out both ways: `Keep-Alive`, `Proxy-Connection`, `Trailer`,
    /// `Proxy-Authenticate`, `Proxy-Authorization`.
    HopByHop,
    Te,
    XForwardedFor,
    XForwardedProto,
    XForwardedHost,
    Forwarded,
    XRequestId,
    Other,
}

impl Name {
    fn of(name: &str) -> Name {
        let is = |s: &str| name.eq_ignore_ascii_case(s);
        match name.len() {
            2 if is("te") => Name::Te,
            4 if is("host") => Name::Host,
            6 if is("expect") => Name::Expect,
            7 if is("upgrade") => Name::Upgrade,
            7 if is("trailer") => Name::HopByHop,
            9 if is("forwarded") => Name::Forwarded,
            10 if is("connection") => Name::Connection,
            10 if is("keep-alive") => Name::HopByHop,
            12 if is("x-request-id") => Name::XRequestId,
            14 if is("content-length") => Name::ContentLength,
            15 if is("x-forwarded-for") => Name::XForwardedFor,
            16 if is("proxy-connection") => Name::HopByHop,
            16 if is("x-forwarded-host") => Name::XForwardedHost,
            17 if is("transfer-encoding") => Name::TransferEncoding,
            17 if is("x-forwarded-proto") => Name::XForwardedProto,
            18 if is("proxy-authenticate") => Name::HopByHop,
            19 if is("proxy-authorization") => Name::HopByHop,
            _ => Name::Other,
        }
    }
}

/// Where a chunked body (RFC 9112 §7.1) is: passed on as it is, read only to find its
/// end.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Chunks {
    /// At a chunk's size line, before its first digit.
    #[default]
    Size0,
    /// In a chunk's size: the size so far.
    Size {
        size: u64,
    },
    /// In a chunk extension (or whitespace after the size), up to the line's end.
    Ext {
        size: u64,
    },
    /// After the size line's CR.
    SizeLf {
        size: u64,
    },
    /// In a chunk's data: this many bytes left.
    Data(u64),
    /// After a chunk's data: its CR, then its LF.
    DataCr,
    DataLf,
    /// At the start of a trailer line (or of the final empty line).
    TrailerStart,
    /// In a trailer line.
    Trailer,
    /// After the final CR.
    EndLf,
    Done,
}

impl Chunks {
    fn done(&self) -> bool {
        *self == Chunks::Done
    }

    /// Reads `bytes` up to the body's end: how many of them are the body's. Err on
    /// bytes that are not a chunked body.
    fn advance(&mut self, bytes: &[u8]) -> Result<usize, ()> {
        let mut at = 0;
        while at < bytes.len() && !self.done() {
            if let Chunks::Data(left) = *self {
                let take = left.min((bytes.len() - at) as u64);
                at += take as usize;
                *self = if take == left {
                    Chunks::DataCr
                } else {
                    Chunks::Data(left - take)
                };
                continue;
            }
            let b = bytes[at];
            at += 1;
            *self = match (*self, b) {
                (Chunks::Size0, b) => match hex(b) {
                    Some(d) => Chunks::Size { size: u64::from(d) },
                    None => return Err(()),
                },
                (Chunks::Size { size }, b) => match hex(b) {
                    // Leading zeros are fine; a size past 60 bits is not.
                    Some(_) if size >> 60 != 0 => return Err(()),
                    Some(d) => Chunks::Size {
                        size: size * 16 + u64::from(d),
                    },
                    None => match b {
                        b';' | b' ' | b'\t' => Chunks::Ext { size },
                        b'\r' => Chunks::SizeLf { size },
                        b'\n' => Chunks::line_end(size),
                        _ => return Err(()),
                    },
                },
                (Chunks::Ext { size }, b'\r') => Chunks::SizeLf { size },
                (Chunks::Ext { size }, b'\n') => Chunks::line_end(size),
                (Chunks::Ext { size }, _) => Chunks::Ext { size },
                (Chunks::SizeLf { size }, b'\n') => Chunks::line_end(size),
                (Chunks::DataCr, b'\r') => Chunks::DataLf,
                (Chunks::DataCr | Chunks::DataLf, b'\n') => Chunks::Size0,
                (Chunks::TrailerStart, b'\r') => Chunks::EndLf,
                (Chunks::TrailerStart, b'\n') | (Chunks::EndLf, b'\n') => Chunks::Done,
                (Chunks::Trailer, b'\n') => Chunks::TrailerStart,
                (Chunks::TrailerStart | Chunks::Trailer, _) => Chunks::Trailer,
                _ => return Err(()),
            };
        }
        Ok(at)
    }

    fn line_end(size: u64) -> Chunks {
        if size == 0 {
            Chunks::TrailerStart
        } else {
            Chunks::Data(size)
        }
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Bytes read and not yet used, kept in one allocation from request to request.
struct Buf {
    data: Vec<u8>,
    start: usize,
}

impl Buf {
    fn with_capacity(n: usize) -> Buf {
        Buf {
            data: Vec::with_capacity(n),
            start: 0,
        }
    }

    fn bytes(&self) -> &[u8] {
        &self.data[self.start..]
    }

    fn len(&self) -> usize {
        self.data.len() - self.start
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start >= self.data.len() {
            self.data.clear();
            self.start = 0;
        }
    }

    /// Reads what there is (at least [`MIN_READ`] of room): how many bytes, 0 at the end.
    async fn fill<R: AsyncRead + Unpin>(&mut self, from: &mut R) -> io::Result<usize> {
        if self.data.capacity() - self.data.len() < MIN_READ {
            self.data.drain(..self.start);
            self.start = 0;
            self.data.reserve(MIN_READ);
        }
        from.read_buf(&mut self.data).await
    }

    fn into_rest(mut self) -> Vec<u8> {
        self.data.drain(..self.start);
        self.data
    }
}

/// A connection whose first bytes were already read: they are read again first.
pub(super) struct Rewind<I> {
    first: Vec<u8>,
    at: usize,
    io: I,
}

impl<I> Rewind<I> {
    pub(super) fn new(first: Vec<u8>, io: I) -> Rewind<I> {
        Rewind { first, at: 0, io }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Rewind<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.at < self.first.len() {
            let n = buf.remaining().min(self.first.len() - self.at);
            let at = self.at;
            buf.put_slice(&self.first[at..at + n]);
            self.at += n;
            if self.at == self.first.len() {
                self.first = Vec::new();
                self.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Rewind<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunked(bytes: &[u8], pieces: usize) -> Result<(usize, bool), ()> {
        // Fed in pieces of `pieces` bytes: the state carries across reads.
        let mut c = Chunks::default();
        let mut at = 0;
        for piece in bytes.chunks(pieces.max(1)) {
            let used = c.advance(piece)?;
            at += used;
            if c.done() {
                return Ok((at, true));
            }
            assert_eq!(used, piece.len(), "a body not ended takes all it is given");
        }
        Ok((at, c.done()))
    }

    #[test]
    fn a_chunked_body_ends_at_its_last_chunk_and_trailers_however_it_is_cut() {
        let body: &[u8] =
            b"5\r\nhello\r\n1a;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-trailer: 1\r\n\r\n";
        let next = b"GET / HTTP/1.1\r\n";
        let mut all = body.to_vec();
        all.extend_from_slice(next);
        for piece in [1, 2, 3, 7, 64, 1000] {
            assert_eq!(
                chunked(&all, piece),
                Ok((body.len(), true)),
                "pieces of {piece}"
            );
        }
        // No trailers; bare LF line ends (tolerated, as hyper does).
        assert_eq!(chunked(b"3\nabc\n0\n\n", 1), Ok((9, true)));
        // Not yet ended.
        assert_eq!(chunked(b"3\r\nabc\r\n0\r\n", 2), Ok((11, false)));
    }

    #[test]
    fn a_body_that_is_not_chunked_is_refused() {
        assert!(chunked(b"zz\r\n", 1).is_err());
        assert!(
            chunked(b"3\r\nabcX\r\n", 1).is_err(),
            "data longer than its size"
        );
        assert!(
            chunked(b"ffffffffffffffff1\r\n", 4).is_err(),
            "a size past 60 bits"
        );
        assert!(chunked(b"\r\n", 1).is_err(), "a size line without a size");
        // Leading zeros do not count against the size's width.
        assert_eq!(
            chunked(b"000000000000000000003\r\nabc\r\n0\r\n\r\n", 5),
            Ok((33, true))
        );
    }

    #[test]
    fn a_content_length_is_digits_or_a_list_of_the_same_digits() {
        assert_eq!(content_length(b"0"), Some(0));
        assert_eq!(content_length(b" 42 "), Some(42));
        assert_eq!(content_length(b"7, 7,7"), Some(7));
        assert_eq!(content_length(b"18446744073709551615"), Some(u64::MAX));
        for bad in [
            &b"+5"[..],
            b"-1",
            b"5 5",
            b"",
            b"5,",
            b"5, 6",
            b"0x10",
            b"18446744073709551616",
        ] {
            assert_eq!(
                content_length(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn request_targets_with_unusual_bytes_are_left_to_hyper() {
        assert!(
            b"/api/items?id=3&x=%20;a=b:c@d"
                .iter()
                .all(|&b| plain_target_byte(b))
        );
        for bad in [b'#', b'<', b'"', b' ', b'`', 0x80, b'{', b'\\'] {
            assert!(!plain_target_byte(bad), "{bad:#x}");
        }
    }

    #[test]
    fn header_names_are_told_apart_in_any_case() {
        assert_eq!(Name::of("Host"), Name::Host);
        assert_eq!(Name::of("X-FORWARDED-HOST"), Name::XForwardedHost);
        assert_eq!(Name::of("Proxy-Connection"), Name::HopByHop);
        assert_eq!(Name::of("Transfer-Encoding"), Name::TransferEncoding);
        assert_eq!(Name::of("x-forwarded-proto"), Name::XForwardedProto);
        assert_eq!(Name::of("x-forwarded-hosts"), Name::Other);
        assert_eq!(Name::of("hostx"), Name::Other);
    }
}
