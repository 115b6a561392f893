//! A tag's digest straight from its registry, without an engine: `HEAD
//! /v2/REPO/manifests/TAG` with the manifest types a registry may hold for a tag in
//! `Accept`, and its `Docker-Content-Digest` header (what `docker pull` then reports).
//! Runtime `kubernetes` pins a release with it before any pod runs; the Docker runtimes
//! ask the engine instead (`registry.rs`).
//!
//! Loopback registries (`127.0.0.0/8`, `localhost`, `[::1]`) are asked over plain HTTP,
//! as Docker treats them as insecure by default; every other over HTTPS. A 401 is
//! answered as its `WWW-Authenticate` asks: `Basic` with the login from the Docker
//! config (`registry.rs`), or `Bearer` with a pull token from the realm it names (with
//! that login, when there is one).

use std::time::Duration;

use super::registry::{Credentials, docker_config_credentials, registry_of, repository_of};
use crate::http::HttpClient;

/// Every manifest a tag may name: an OCI index or Docker manifest list (a multi-arch
/// image), or a single image's manifest. The digest of whichever the registry holds is
/// what a runtime pulling `repo@digest` resolves the same way.
const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
                      application/vnd.docker.distribution.manifest.list.v2+json, \
                      application/vnd.oci.image.manifest.v1+json, \
                      application/vnd.docker.distribution.manifest.v2+json";

/// What a registry said about a tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagDigest {
    /// `sha256:…`: the manifest the tag names now.
    Found(String),
    /// The registry answered that it has no such manifest (404).
    Unknown,
}

/// Host, repository path and tag of `reference` as the registry API names them:
/// `127.0.0.1:5000/demo:v1` → (`127.0.0.1:5000`, `demo`, `v1`); Docker Hub's
/// `nginx` → (`registry-1.docker.io`, `library/nginx`, `latest`). `None` for a
/// reference that already names a digest.
pub fn api_parts(reference: &str) -> Option<(String, String, String)> {
    if reference.contains('@') {
        return None;
    }
    let repo = repository_of(reference);
    let tag = reference
        .get(repo.len()..)
        .and_then(|t| t.strip_prefix(':'))
        .filter(|t| !t.is_empty())
        .unwrap_or("latest");
    let registry = registry_of(reference);
    let (host, path) = match repo.split_once('/') {
        Some((first, rest))
            if first == registry && !matches!(first, "docker.io" | "index.docker.io") =>
        {
            (registry.clone(), rest.to_string())
        }
        _ => {
            // Docker Hub: `nginx` is `library/nginx`, `docker.io/x/y` is `x/y`.
            let bare = repo
                .strip_prefix("docker.io/")
                .or_else(|| repo.strip_prefix("index.docker.io/"))
                .unwrap_or(repo);
            let path = match bare.contains('/') {
                true => bare.to_string(),
                false => format!("library/{bare}"),
            };
            ("registry-1.docker.io".to_string(), path)
        }
    };
    Some((host, path, tag.to_string()))
}

/// Whether `host` (with its port) is a loopback address, asked over plain HTTP.
fn loopback(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name == "localhost"
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The digest `reference`'s registry gives for its tag now. An error says why the
/// registry would not say (not reachable, a login refused, an answer without the
/// header), naming the registry and the reference.
pub async fn tag_digest(
    client: &HttpClient,
    reference: &str,
    timeout: Duration,
) -> Result<TagDigest, String> {
    let (host, path, tag) =
        api_parts(reference).ok_or_else(|| format!("{reference} already names a digest"))?;
    let scheme = if loopback(&host) { "http" } else { "https" };
    let url = format!("{scheme}://{host}/v2/{path}/manifests/{tag}");
    let login = docker_config_credentials(&registry_of(reference));
    let ask = |auth: Option<String>| {
        let mut headers = vec![("accept", ACCEPT.to_string())];
        if let Some(a) = auth {
            headers.push(("authorization", a));
        }
        let url = url.clone();
        async move { client.get_with_headers(&url, true, &headers, timeout).await }
    };
    let failed = |what: String| format!("registry {host} for {reference}: {what}");
    let mut resp = ask(None).await.map_err(|e| failed(e.to_string()))?;
    if resp.status == 401 {
        let challenge = resp.header("www-authenticate").unwrap_or("").to_string();
        let auth = authorization(client, &challenge, login.as_ref(), &path, timeout)
            .await
            .map_err(failed)?;
        resp = ask(Some(auth)).await.map_err(|e| failed(e.to_string()))?;
    }
    match resp.status {
        200 => match resp.header("docker-content-digest") {
            Some(d) if d.starts_with("sha256:") => Ok(TagDigest::Found(d.to_string())),
            other => Err(failed(format!(
                "answered 200 without a sha256 Docker-Content-Digest header ({other:?})"
            ))),
        },
        404 => Ok(TagDigest::Unknown),
        401 | 403 => Err(failed(format!(
            "HTTP {} {}",
            resp.status,
            match &login {
                Some(c) => format!("as {}", c.username),
                None => "without a login (none in the Docker config for it)".to_string(),
            }
        ))),
        s => Err(failed(format!("HTTP {s}"))),
    }
}

/// The `Authorization` a 401's challenge asks for.
async fn authorization(
    client: &HttpClient,
    challenge: &str,
    login: Option<&Credentials>,
    path: &str,
    timeout: Duration,
) -> Result<String, String> {
    let basic = login.map(|c| {
        format!(
            "Basic {}",
            encode_base64(format!("{}:{}", c.username, c.password).as_bytes())
        )
    });
    let (scheme, params) = challenge.split_once(' ').unwrap_or((challenge, ""));
    match scheme.to_ascii_lowercase().as_str() {
        "basic" => basic.ok_or_else(|| {
            "it asks for a login and the Docker config has none for it (`docker login`)".to_string()
        }),
        "bearer" => {
            let param = |name: &str| {
                params.split(',').find_map(|kv| {
                    let (k, v) = kv.trim().split_once('=')?;
                    (k == name).then(|| v.trim_matches('"').to_string())
                })
            };
            let realm = param("realm").ok_or("its Bearer challenge names no realm")?;
            let scope = param("scope").unwrap_or_else(|| format!("repository:{path}:pull"));
            let mut url = format!("{realm}?scope={}", query_escape(&scope));
            if let Some(service) = param("service") {
                url.push_str(&format!("&service={}", query_escape(&service)));
            }
            let headers: Vec<(&str, String)> =
                basic.into_iter().map(|b| ("authorization", b)).collect();
            let resp = client
                .get_with_headers(&url, false, &headers, timeout)
                .await
                .map_err(|e| format!("its token service {realm}: {e}"))?;
            if resp.status != 200 {
                return Err(format!(
                    "its token service {realm} answered HTTP {}",
                    resp.status
                ));
            }
            let v: serde_json::Value = serde_json::from_slice(&resp.body)
                .map_err(|e| format!("its token service {realm} answered no JSON: {e}"))?;
            let token = v["token"]
                .as_str()
                .or_else(|| v["access_token"].as_str())
                .ok_or_else(|| format!("its token service {realm} gave no token"))?;
            Ok(format!("Bearer {token}"))
        }
        _ => Err(format!(
            "it asks for an authentication ripcord does not speak: {challenge:?}"
        )),
    }
}

/// Percent-escapes a query value (`repository:a/b:pull`).
fn query_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Standard base64 with padding, for a Basic `Authorization`.
fn encode_base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reference_in_the_registry_apis_terms() {
        let parts = |r: &str| api_parts(r).map(|(h, p, t)| format!("{h} {p} {t}"));
        assert_eq!(
            parts("127.0.0.1:5000/demo:v1").as_deref(),
            Some("127.0.0.1:5000 demo v1")
        );
        assert_eq!(
            parts("registry.local/team/app").as_deref(),
            Some("registry.local team/app latest")
        );
        assert_eq!(
            parts("nginx:1.25").as_deref(),
            Some("registry-1.docker.io library/nginx 1.25")
        );
        assert_eq!(
            parts("docker.io/grafana/grafana:10").as_deref(),
            Some("registry-1.docker.io grafana/grafana 10")
        );
        assert_eq!(parts("127.0.0.1:5000/demo@sha256:abc"), None);
    }

    #[test]
    fn only_loopback_registries_are_asked_over_http() {
        assert!(loopback("127.0.0.1:5000"));
        assert!(loopback("localhost:5000"));
        assert!(loopback("[::1]:5000"));
        assert!(!loopback("registry.local"));
        assert!(!loopback("10.0.0.1:5000"));
    }

    #[test]
    fn base64_and_query_escapes() {
        assert_eq!(encode_base64(b"user:pass"), "dXNlcjpwYXNz");
        assert_eq!(encode_base64(b"a"), "YQ==");
        assert_eq!(encode_base64(b"ab"), "YWI=");
        assert_eq!(
            query_escape("repository:a/b:pull"),
            "repository%3Aa%2Fb%3Apull"
        );
    }
}
