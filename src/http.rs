//! The one HTTP client for health probes, verification checks, Prometheus queries and
//! webhooks: a thin wrapper over `reqwest` (rustls with the ring provider, HTTP/1 only,
//! no cookies, no proxy) that returns the status and (a bounded prefix of) the body.
//!
//! `http://` and `https://` both work. Servers are trusted through the system's roots,
//! plus the certificates of an optional CA file per target (`ca_file` in the config).
//! GETs follow up to [`MAX_REDIRECTS`] redirects; POSTs follow none, so a webhook that
//! moved answers with its 3xx instead of being silently turned into a GET.
//!
//! It must never turn a TLS failure into a vague "request failed": a certificate that
//! is not trusted or not valid for the host is its own error naming the URL.

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// Bodies past this size are refused: checks only look at small documents.
const MAX_BODY: usize = 1 << 20;
/// Redirects a GET follows before it fails.
pub const MAX_REDIRECTS: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("bad URL {url}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error(
        "the certificate of {url} is not trusted ({reason}): give its CA with `ca_file`, or use a certificate the system trusts"
    )]
    UntrustedCertificate { url: String, reason: String },
    #[error("the certificate of {url} is not valid for this host ({reason})")]
    WrongHost { url: String, reason: String },
    #[error("TLS with {url} failed: {reason}")]
    Tls { url: String, reason: String },
    #[error("CA file {path}: {reason}")]
    CaFile { path: String, reason: String },
    #[error("{0}")]
    Request(String),
}

#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub body: Bytes,
    /// The response's headers (names lowercase), for the few callers that read one.
    pub headers: Vec<(String, String)>,
}

impl HttpResponse {
    /// The first header named `name` (lowercase), if it is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A reusable client (connection pools included); cheap to clone.
#[derive(Clone)]
pub struct HttpClient {
    /// Follows up to [`MAX_REDIRECTS`] redirects.
    get: reqwest::Client,
    /// Follows none.
    post: reqwest::Client,
}

impl Default for HttpClient {
    /// A client trusting the system's roots.
    fn default() -> Self {
        // Without a CA file, building fails only if reqwest cannot start at all, which
        // no caller could handle better than by stopping.
        HttpClient::build(Vec::new()).expect("the HTTP client (rustls, system roots) starts")
    }
}

impl HttpClient {
    /// A client trusting the system's roots and, when given, the certificates in
    /// `ca_file` (PEM).
    pub fn with_ca_file(ca_file: Option<&Path>) -> Result<HttpClient, HttpError> {
        let certs = match ca_file {
            Some(path) => read_ca_file(path)?,
            None => Vec::new(),
        };
        HttpClient::build(certs)
    }

    fn build(extra: Vec<CertificateDer<'static>>) -> Result<HttpClient, HttpError> {
        // The system-roots-only configuration is made once: tests and the load loop
        // make a client per request.
        static SYSTEM: OnceLock<rustls::ClientConfig> = OnceLock::new();
        let tls = if extra.is_empty() {
            SYSTEM
                .get_or_init(|| {
                    tls_config(Vec::new()).expect("ring supports rustls's default TLS versions")
                })
                .clone()
        } else {
            tls_config(extra)?
        };
        let builder = |redirects: reqwest::redirect::Policy| {
            reqwest::Client::builder()
                .tls_backend_preconfigured(tls.clone())
                .redirect(redirects)
                .connect_timeout(Duration::from_secs(2))
                .pool_idle_timeout(Duration::from_secs(10))
                .tcp_nodelay(true)
                // Targets are local services and servers named in the config: an
                // `HTTP_PROXY` meant for something else must not reroute them.
                .no_proxy()
                .user_agent(concat!("ripcord/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| HttpError::Request(error_chain(&e)))
        };
        Ok(HttpClient {
            get: builder(reqwest::redirect::Policy::limited(MAX_REDIRECTS))?,
            post: builder(reqwest::redirect::Policy::none())?,
        })
    }

    pub async fn get(&self, url: &str, timeout: Duration) -> Result<HttpResponse, HttpError> {
        let parsed = parse(url)?;
        self.send(self.get.get(parsed.clone()), &parsed, timeout)
            .await
    }

    /// A GET (`head`: a HEAD) with request headers, e.g. a registry's `Accept` and
    /// `Authorization`; redirects are followed as for a GET.
    pub async fn get_with_headers(
        &self,
        url: &str,
        head: bool,
        headers: &[(&str, String)],
        timeout: Duration,
    ) -> Result<HttpResponse, HttpError> {
        let parsed = parse(url)?;
        let mut req = match head {
            true => self.get.head(parsed.clone()),
            false => self.get.get(parsed.clone()),
        };
        for (name, value) in headers {
            req = req.header(*name, value.as_str());
        }
        self.send(req, &parsed, timeout).await
    }

    /// POSTs a JSON document.
    pub async fn post_json(
        &self,
        url: &str,
        body: &serde_json::Value,
        timeout: Duration,
    ) -> Result<HttpResponse, HttpError> {
        let parsed = parse(url)?;
        let req = self
            .post
            .post(parsed.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string());
        self.send(req, &parsed, timeout).await
    }

    async fn send(
        &self,
        req: reqwest::RequestBuilder,
        url: &reqwest::Url,
        timeout: Duration,
    ) -> Result<HttpResponse, HttpError> {
        let fut = async {
            let mut resp = req.send().await.map_err(|e| request_error(url, e))?;
            let status = resp.status().as_u16();
            let headers = resp
                .headers()
                .iter()
                .filter_map(|(n, v)| Some((n.as_str().to_string(), v.to_str().ok()?.to_string())))
                .collect();
            let mut body = BytesMut::new();
            while let Some(chunk) = resp
                .chunk()
                .await
                .map_err(|e| HttpError::Request(format!("reading the body: {}", e.without_url())))?
            {
                if body.len() + chunk.len() > MAX_BODY {
                    return Err(HttpError::Request(format!(
                        "reading the body: longer than {MAX_BODY} bytes"
                    )));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(HttpResponse {
                status,
                body: body.freeze(),
                headers,
            })
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| HttpError::Timeout(timeout))?
    }
}

/// rustls trusting the system's roots and `extra`, with ring explicitly rather than a
/// process-wide default provider, so nothing else can change what a client accepts.
fn tls_config(extra: Vec<CertificateDer<'static>>) -> Result<rustls::ClientConfig, HttpError> {
    let mut roots = system_roots().clone();
    for cert in extra {
        // `read_ca_file` has checked each one already.
        roots
            .add(cert)
            .map_err(|e| HttpError::Request(format!("a CA certificate: {e}")))?;
    }
    Ok(
        rustls::ClientConfig::builder_with_provider(Arc::new(ring_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| HttpError::Request(format!("TLS setup: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// ring's provider. rustls 0.23.48 deprecates it for lacking post-quantum key exchange
/// and recommends aws-lc-rs, which would add a large C build (cmake-free, but minutes on
/// a small machine) to every build; for checks and webhooks ring's classical suites
/// are enough. Switching is reqwest's `rustls` feature and this one function.
#[allow(deprecated)]
pub(crate) fn ring_provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// Reads the PEM certificates in `path`: an unreadable file, or one without a single
/// certificate, is an error.
pub fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, HttpError> {
    let err = |reason: String| HttpError::CaFile {
        path: path.display().to_string(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(format!("not PEM: {e}")))?;
    if certs.is_empty() {
        return Err(err(
            "no PEM certificate in it (want -----BEGIN CERTIFICATE-----)".to_string(),
        ));
    }
    // Checked here, so that a file of bad certificates is a config error, not a
    // failure at the first request.
    let mut store = rustls::RootCertStore::empty();
    for cert in &certs {
        store
            .add(cert.clone())
            .map_err(|e| err(format!("not a usable CA certificate: {e}")))?;
    }
    Ok(certs)
}

/// The system's trusted roots, read once. None found (a minimal container) is not an
/// error here: http:// still works, and https fails with "not trusted" naming the URL.
fn system_roots() -> &'static rustls::RootCertStore {
    static ROOTS: OnceLock<rustls::RootCertStore> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            tracing::debug!("reading the system's CA certificates: {e}");
        }
        let mut roots = rustls::RootCertStore::empty();
        let (_, ignored) = roots.add_parsable_certificates(found.certs);
        if ignored > 0 {
            tracing::debug!("{ignored} system CA certificates could not be used");
        }
        roots
    })
}

fn parse(url: &str) -> Result<reqwest::Url, HttpError> {
    let bad = |reason: String| HttpError::BadUrl {
        url: url.to_string(),
        reason,
    };
    let parsed = reqwest::Url::parse(url).map_err(|e| bad(e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(bad("only http:// and https:// are supported".to_string()));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(bad("no host".to_string()));
    }
    Ok(parsed)
}

/// The URL for an error message: without user info or query, which may hold secrets.
fn shown(url: &reqwest::Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.set_query(None);
    u.set_fragment(None);
    u.to_string()
}

/// Names TLS failures; everything else keeps reqwest's chain (without the URL, which
/// callers print themselves and which may hold secrets).
fn request_error(url: &reqwest::Url, e: reqwest::Error) -> HttpError {
    if let Some(tls) = find_rustls_error(&e) {
        let url = shown(url);
        let reason = tls.to_string();
        return match tls {
            rustls::Error::InvalidCertificate(c) => match c {
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. } => {
                    HttpError::WrongHost { url, reason }
                }
                _ => HttpError::UntrustedCertificate { url, reason },
            },
            _ => HttpError::Tls { url, reason },
        };
    }
    if e.is_redirect() {
        return HttpError::Request(format!(
            "more than {MAX_REDIRECTS} redirects from {}",
            shown(url)
        ));
    }
    HttpError::Request(error_chain(&e.without_url()))
}

/// The rustls error behind a request error, if any. `io::Error` hides the error it
/// wraps from `source()`, so it is looked into by hand.
fn find_rustls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
        {
            if let Some(tls) = inner.downcast_ref::<rustls::Error>() {
                return Some(tls);
            }
            if let Some(tls) = find_rustls_error(inner) {
                return Some(tls);
            }
        }
        cur = err.source();
    }
    None
}

/// An error and all its sources, `: `-separated.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
pub(crate) mod test_server;

#[cfg(test)]
mod tests {
    use super::test_server::TlsServer;
    use super::*;

    const T: Duration = Duration::from_secs(10);

    /// The server's CA written to a file, and a client trusting it.
    fn trusting(server: &TlsServer) -> (tempfile::TempDir, HttpClient) {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, &server.ca_pem).unwrap();
        let client = HttpClient::with_ca_file(Some(&ca)).unwrap();
        (dir, client)
    }

    #[tokio::test]
    async fn https_works_with_the_ca_file_by_address_and_by_name() {
        let server = TlsServer::start(&["localhost", "127.0.0.1"]);
        let (_dir, client) = trusting(&server);
        let r = client.get(&server.url("/health"), T).await.unwrap();
        assert_eq!((r.status, &r.body[..]), (200, &b"ok"[..]));
        let r = client
            .get(&server.localhost_url("/health"), T)
            .await
            .unwrap();
        assert_eq!(r.status, 200);
    }

    #[tokio::test]
    async fn an_unknown_ca_is_refused_naming_the_url_without_secrets() {
        let server = TlsServer::start(&["127.0.0.1"]);
        let url = format!(
            "https://user:pw@127.0.0.1:{}/health?token=s3cret",
            server.addr.port()
        );
        let e = HttpClient::default().get(&url, T).await.unwrap_err();
        assert!(matches!(e, HttpError::UntrustedCertificate { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!(
                "the certificate of {} is not trusted (",
                server.url("/health")
            )),
            "{msg}"
        );
        assert!(msg.contains("ca_file"), "{msg}");
        assert!(!msg.contains("s3cret") && !msg.contains("pw@"), "{msg}");
    }

    #[tokio::test]
    async fn a_certificate_for_another_host_is_refused_even_from_a_trusted_ca() {
        let server = TlsServer::start(&["other.example"]);
        let (_dir, client) = trusting(&server);
        let e = client.get(&server.url("/health"), T).await.unwrap_err();
        assert!(matches!(e, HttpError::WrongHost { .. }), "{e:?}");
        assert!(
            e.to_string().starts_with(&format!(
                "the certificate of {} is not valid for this host",
                server.url("/health")
            )),
            "{e}"
        );
    }

    #[tokio::test]
    async fn gets_follow_a_bounded_number_of_redirects() {
        let server = TlsServer::start(&["127.0.0.1"]);
        let (_dir, client) = trusting(&server);
        let r = client.get(&server.url("/moved"), T).await.unwrap();
        assert_eq!((r.status, &r.body[..]), (200, &b"ok"[..]));
        let e = client.get(&server.url("/loop"), T).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "more than {MAX_REDIRECTS} redirects from {}",
                server.url("/loop")
            )
        );
    }

    #[tokio::test]
    async fn posts_never_follow_a_redirect() {
        // Followed, a 307 would POST the document again elsewhere and a 302 would turn
        // it into a GET that "succeeds" with nothing delivered.
        let server = TlsServer::start(&["127.0.0.1"]);
        let (_dir, client) = trusting(&server);
        let body = serde_json::json!({"text": "hi"});
        let r = client
            .post_json(&server.url("/moved-hook"), &body, T)
            .await
            .unwrap();
        assert_eq!(r.status, 307);
        let r = client
            .post_json(&server.url("/hook"), &body, T)
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(*server.posted.lock().unwrap(), vec![body.to_string()]);
    }

    #[test]
    fn ca_files_that_cannot_be_used_say_why() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let e = read_ca_file(&missing).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("CA file {}: No such file", missing.display())),
            "{e}"
        );
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "hello\n").unwrap();
        assert_eq!(
            read_ca_file(&junk).unwrap_err().to_string(),
            format!(
                "CA file {}: no PEM certificate in it (want -----BEGIN CERTIFICATE-----)",
                junk.display()
            )
        );
        let broken = dir.path().join("broken.pem");
        std::fs::write(
            &broken,
            "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let e = read_ca_file(&broken).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!(
                "CA file {}: not a usable CA certificate",
                broken.display()
            )),
            "{e}"
        );
    }

    #[tokio::test]
    async fn only_http_and_https_urls_are_fetched() {
        let e = HttpClient::default()
            .get("ftp://127.0.0.1/x", T)
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "bad URL ftp://127.0.0.1/x: only http:// and https:// are supported"
        );
    }
}
