//! Header handling for the proxy: hop-by-hop headers (RFC 9110 §7.6.1) belong to one
//! connection and must not be forwarded, including every header the `Connection`
//! header names; `X-Forwarded-For`, `-Proto`, `-Host` and `Forwarded` (RFC 7239) carry
//! the client's address, scheme and host on, and every request has an `X-Request-Id`.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};

use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{HeaderMap, Uri};

pub(crate) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Headers that are always hop-by-hop.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers, and those the `Connection` header lists.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most requests and responses have none: one look at each name, no lookups.
    if !headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
        return;
    }
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// The protocol a request asks to switch to (`Upgrade: websocket` with `Connection:
/// upgrade`), if it does.
pub(crate) fn upgrade_of(headers: &HeaderMap) -> Option<HeaderValue> {
    let protocol = headers.get(header::UPGRADE)?;
    let asked = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    asked.then(|| protocol.clone())
}

/// Puts back the two headers of an upgrade that stripping hop-by-hop headers removed.
pub(crate) fn set_upgrade(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, protocol);
}

/// Request ids for the requests that come without one: a random prefix per proxy and a
/// counter, so making one takes no lock and no system call.
pub(crate) struct RequestIds {
    prefix: u64,
    next: AtomicU64,
}

impl RequestIds {
    pub(crate) fn new() -> RequestIds {
        let mut seed = [0u8; 8];
        // Without the OS's randomness, the time still tells proxies apart.
        let prefix = match getrandom::fill(&mut seed) {
            Ok(()) => u64::from_le_bytes(seed),
            Err(_) => crate::clock::now_ms() as u64,
        };
        RequestIds {
            prefix,
            next: AtomicU64::new(0),
        }
    }

    /// The next id: 16 hex digits of the prefix, a dash, the counter in hex. One
    /// allocation, which the copies on the request and the response share.
    pub(crate) fn next(&self) -> HeaderValue {
        let id = self.next_id();
        HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(id))
            .expect("hex digits are a header value")
    }

    /// The next id, written at the end of `out`.
    pub(crate) fn write_next(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.next_id().as_ref());
    }

    fn next_id(&self) -> Id {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut buf = [0u8; ID_MAX];
        let digits = b"0123456789abcdef";
        for (i, b) in buf[..16].iter_mut().enumerate() {
            *b = digits[(self.prefix >> (60 - 4 * i) & 0xf) as usize];
        }
        buf[16] = b'-';
        let width = (16 - n.leading_zeros() as usize / 4).max(1);
        for i in 0..width {
            buf[17 + i] = digits[(n >> (4 * (width - 1 - i)) & 0xf) as usize];
        }
        Id {
            buf,
            len: 17 + width,
        }
    }
}

/// The longest request id made here: 16 hex digits, a dash, 16 more.
const ID_MAX: usize = 33;

/// A request id's bytes, owned by the `Bytes` that every copy of its header shares.
struct Id {
    buf: [u8; ID_MAX],
    len: usize,
}

impl AsRef<[u8]> for Id {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// What the proxy knows of the client a request came from, with the header values
/// made from it once per connection.
#[derive(Debug, Clone)]
pub(crate) struct Client {
    pub(crate) peer: SocketAddr,
    pub(crate) https: bool,
    /// The client's address, as `X-Forwarded-For` has it when no proxy came before.
    ip: HeaderValue,
    /// This hop's `Forwarded` element up to its host: `for=ADDR`.
    forwarded_for: String,
}

impl Client {
    pub(crate) fn new(peer: SocketAddr, https: bool) -> Client {
        let ip = peer.ip();
        let forwarded_for = match ip {
            IpAddr::V4(ip) => format!("for={ip}"),
            IpAddr::V6(ip) => format!("for=\"[{ip}]\""),
        };
        Client {
            peer,
            https,
            ip: HeaderValue::from_str(&ip.to_string()).expect("an address is a header value"),
            forwarded_for,
        }
    }
}

impl Client {
    /// The scheme the client used: `http` or `https`.
    pub(crate) fn proto(&self) -> &'static str {
        if self.https { "https" } else { "http" }
    }

    /// The client's address as `X-Forwarded-For` has it.
    pub(crate) fn ip(&self) -> &[u8] {
        self.ip.as_bytes()
    }
}

/// Makes an incoming request's headers fit to send upstream, and returns its request id
/// (the client's `X-Request-Id`, or a new one).
pub(crate) fn prepare_request(
    headers: &mut HeaderMap,
    uri: &Uri,
    client: &Client,
    ids: &RequestIds,
) -> HeaderValue {
    // `TE: trailers` is end-to-end in effect: gRPC needs it, HTTP/2 allows it.
    let trailers = headers
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    strip_hop_by_hop(headers);
    if trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    // An HTTP/2 client names the host in the target (`:authority`), not in a header.
    if !headers.contains_key(header::HOST)
        && let Some(authority) = uri.authority()
        && let Ok(v) = HeaderValue::from_str(authority.as_str())
    {
        headers.insert(header::HOST, v);
    }
    let proto = client.proto();
    // X-Forwarded-For: the client's address after those of the proxies before us
    // (nginx's `$proxy_add_x_forwarded_for`).
    let mut line = String::new();
    if headers.contains_key(&X_FORWARDED_FOR) {
        push_prior(&mut line, headers, &X_FORWARDED_FOR);
        let _ = write!(line, "{}", client.peer.ip());
        if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(line)) {
            headers.insert(X_FORWARDED_FOR, v);
        }
    } else {
        headers.insert(X_FORWARDED_FOR, client.ip.clone());
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    let host = headers.get(header::HOST).cloned();
    if let Some(host) = &host {
        headers.insert(X_FORWARDED_HOST, host.clone());
    }
    // Forwarded (RFC 7239): this hop's element after any before it.
    let mut line = String::with_capacity(64);
    push_prior(&mut line, headers, &header::FORWARDED);
    push_forwarded_hop(
        &mut line,
        client,
        host.as_ref().and_then(|h| h.to_str().ok()),
    );
    if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(line)) {
        headers.insert(header::FORWARDED, v);
    }
    match headers.get(X_REQUEST_ID) {
        Some(id) if !id.is_empty() => id.clone(),
        _ => {
            let id = ids.next();
            headers.insert(X_REQUEST_ID, id.clone());
            id
        }
    }
}

/// This hop's `Forwarded` element (RFC 7239): `for=ADDR`, `;host=HOST` when the request
/// named one, `;proto=http` or `https`.
pub(crate) fn push_forwarded_hop(line: &mut String, client: &Client, host: Option<&str>) {
    line.push_str(&client.forwarded_for);
    if let Some(host) = host {
        line.push_str(";host=");
        push_token_or_quoted(line, host);
    }
    line.push_str(";proto=");
    line.push_str(client.proto());
}

/// The values a list header came with (every line of it, as one list), then `, `, for
/// this hop's entry to follow.
fn push_prior(line: &mut String, headers: &HeaderMap, name: &HeaderName) {
    for prior in headers.get_all(name).iter().filter_map(|v| v.to_str().ok()) {
        line.push_str(prior);
        line.push_str(", ");
    }
}

/// A `Forwarded` value: a token as it is, anything else as a quoted string (RFC 7239 §4).
fn push_token_or_quoted(line: &mut String, value: &str) {
    let tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if !value.is_empty() && value.chars().all(tchar) {
        line.push_str(value);
        return;
    }
    line.push('"');
    for c in value.chars() {
        if c == '"' || c == '\\' {
            line.push('\\');
        }
        line.push(c);
    }
    line.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn names(h: &HeaderMap) -> Vec<String> {
        let mut n: Vec<String> = h.keys().map(|k| k.to_string()).collect();
        n.sort();
        n
    }

    #[test]
    fn strips_standard_and_connection_listed_headers() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret-Hop"),
            ("connection", "x-other"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic x"),
            ("x-secret-hop", "1"),
            ("x-other", "2"),
            ("content-type", "text/plain"),
            ("authorization", "Bearer kept"),
            ("cookie", "a=b"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(names(&h), ["authorization", "content-type", "cookie"]);
    }

    fn client(peer: &str, https: bool) -> Client {
        Client::new(peer.parse().unwrap(), https)
    }

    fn prepare(h: &mut HeaderMap, c: &Client) -> HeaderValue {
        prepare_request(h, &Uri::from_static("/"), c, &RequestIds::new())
    }

    #[test]
    fn appends_forwarded_for() {
        let peer = client("127.0.0.9:5555", false);
        let mut h = map(&[("x-forwarded-for", "10.0.0.1")]);
        prepare(&mut h, &peer);
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.9");
        let mut h = HeaderMap::new();
        prepare(&mut h, &peer);
        assert_eq!(h["x-forwarded-for"], "127.0.0.9");
        // A list sent as several lines is one list, and becomes one line.
        let mut h = map(&[
            ("x-forwarded-for", "10.0.0.1, 10.0.0.2"),
            ("x-forwarded-for", "10.0.0.3"),
            ("forwarded", "for=10.0.0.1"),
            ("forwarded", "for=10.0.0.3"),
        ]);
        prepare(&mut h, &peer);
        let lines = |name: &str| h.get_all(name).iter().collect::<Vec<_>>();
        assert_eq!(
            lines("x-forwarded-for"),
            ["10.0.0.1, 10.0.0.2, 10.0.0.3, 127.0.0.9"]
        );
        assert_eq!(
            lines("forwarded"),
            ["for=10.0.0.1, for=10.0.0.3, for=127.0.0.9;proto=http"]
        );
    }

    #[test]
    fn forwarded_headers_name_the_client_scheme_and_host() {
        let mut h = map(&[
            ("host", "shop.example:8443"),
            ("forwarded", "for=10.0.0.1;proto=https"),
            ("x-forwarded-proto", "gopher"),
        ]);
        prepare(&mut h, &client("[2001:db8::7]:40000", true));
        assert_eq!(h["x-forwarded-for"], "2001:db8::7");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "shop.example:8443");
        assert_eq!(
            h["forwarded"],
            "for=10.0.0.1;proto=https, for=\"[2001:db8::7]\";host=\"shop.example:8443\";proto=https"
        );
        let mut h = map(&[("host", "shop.example")]);
        prepare(&mut h, &client("127.0.0.1:1", false));
        assert_eq!(h["forwarded"], "for=127.0.0.1;host=shop.example;proto=http");
        assert_eq!(h["x-forwarded-proto"], "http");
    }

    #[test]
    fn an_http2_request_gets_its_host_from_the_authority() {
        let mut h = HeaderMap::new();
        let uri = Uri::from_static("https://api.example/v1");
        prepare_request(
            &mut h,
            &uri,
            &client("127.0.0.1:1", true),
            &RequestIds::new(),
        );
        assert_eq!(h["host"], "api.example");
        assert_eq!(h["x-forwarded-host"], "api.example");
    }

    #[test]
    fn te_trailers_is_kept_and_other_te_values_are_not() {
        let mut h = map(&[("te", "trailers")]);
        prepare(&mut h, &client("127.0.0.1:1", false));
        assert_eq!(h["te"], "trailers");
        let mut h = map(&[("te", "gzip")]);
        prepare(&mut h, &client("127.0.0.1:1", false));
        assert!(h.get("te").is_none());
    }

    #[test]
    fn request_ids_are_passed_through_or_made_unique() {
        let ids = RequestIds::new();
        let mut h = map(&[("x-request-id", "abc-123")]);
        let id = prepare_request(
            &mut h,
            &Uri::from_static("/"),
            &client("127.0.0.1:1", false),
            &ids,
        );
        assert_eq!(id, "abc-123");
        assert_eq!(h["x-request-id"], "abc-123");
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let mut h = HeaderMap::new();
            let id = prepare_request(
                &mut h,
                &Uri::from_static("/"),
                &client("127.0.0.1:1", false),
                &ids,
            );
            assert_eq!(h["x-request-id"], id);
            assert!(
                seen.insert(id.to_str().unwrap().to_string()),
                "{id:?} twice"
            );
        }
        // Two proxies' ids differ by their prefix.
        assert_ne!(RequestIds::new().next(), RequestIds::new().next());
        assert!(
            ids.next().to_str().unwrap().ends_with("-3e8"),
            "after ids 0 to 999 comes 0x3e8"
        );
    }

    #[test]
    fn an_upgrade_is_asked_only_with_connection_upgrade() {
        let h = map(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
        ]);
        assert_eq!(upgrade_of(&h).unwrap(), "websocket");
        let h = map(&[("upgrade", "websocket")]);
        assert!(upgrade_of(&h).is_none());
        let h = map(&[("connection", "upgrade")]);
        assert!(upgrade_of(&h).is_none());
    }

    #[test]
    fn malformed_connection_tokens_are_ignored() {
        let mut h = map(&[("connection", "close, , bad header"), ("x-a", "1")]);
        strip_hop_by_hop(&mut h);
        assert_eq!(names(&h), ["x-a"]);
    }
}
