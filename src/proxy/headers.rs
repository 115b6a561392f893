//! Header handling for the proxy: hop-by-hop headers (RFC 9110 §7.6.1) belong to one
//! connection and must not be forwarded, including every header the `Connection`
//! header names; `X-Forwarded-For` carries the client's address on.

use std::net::SocketAddr;

use hyper::HeaderMap;
use hyper::header::{self, HeaderName, HeaderValue};

/// Headers that are always hop-by-hop.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "proxy-connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Removes hop-by-hop headers, and those the `Connection` header lists.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
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
    for name in HOP_BY_HOP {
        headers.remove(*name);
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

/// Makes an incoming request's headers fit to send upstream.
pub(crate) fn prepare_request(headers: &mut HeaderMap, peer: SocketAddr) {
    strip_hop_by_hop(headers);
    let client = peer.ip().to_string();
    let forwarded = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prior) => format!("{prior}, {client}"),
        None => client,
    };
    if let Ok(v) = HeaderValue::from_str(&forwarded) {
        headers.insert("x-forwarded-for", v);
    }
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

    #[test]
    fn appends_forwarded_for() {
        let peer: SocketAddr = "127.0.0.9:5555".parse().unwrap();
        let mut h = map(&[("x-forwarded-for", "10.0.0.1")]);
        prepare_request(&mut h, peer);
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.9");
        let mut h = HeaderMap::new();
        prepare_request(&mut h, peer);
        assert_eq!(h["x-forwarded-for"], "127.0.0.9");
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
