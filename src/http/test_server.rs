//! A loopback https server for tests, with a certificate from a CA made on the spot
//! (rcgen). Shared by the unit tests (`crate::http::test_server`) and the integration
//! tests (`tests/https.rs` includes this file by path), so it uses only std, tokio,
//! rustls, tokio-rustls and rcgen.
//!
//! Routes: `GET /health` → 200 `ok`; `GET /moved` → 302 to `/health`; `GET /loop` → 302
//! to itself; `GET /api/v1/query?...` → a Prometheus scalar `1`; `POST /hook` → 200,
//! the body kept in `posted`; `POST /moved-hook` → 307 to `/hook`; anything else 404.
//! One request per connection.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A CA, and a leaf it signed for `names` (DNS names or IP addresses).
pub struct Pki {
    pub ca_pem: String,
    pub ca: CertificateDer<'static>,
    pub leaf: CertificateDer<'static>,
    pub leaf_key: Vec<u8>,
    /// The leaf and its key as PEM, for a server that reads files.
    pub leaf_pem: String,
    pub leaf_key_pem: String,
}

impl Pki {
    pub fn new(names: &[&str]) -> Pki {
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "ripcord test CA");
        ca.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut leaf = rcgen::CertificateParams::new(names).unwrap();
        leaf.distinguished_name
            .push(rcgen::DnType::CommonName, "ripcord test server");
        leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
        Pki {
            ca_pem: ca_cert.pem(),
            ca: ca_cert.der().clone(),
            leaf: leaf_cert.der().clone(),
            leaf_key: leaf_key.serialize_der(),
            leaf_pem: leaf_cert.pem(),
            leaf_key_pem: leaf_key.serialize_pem(),
        }
    }
}

pub struct TlsServer {
    pub addr: SocketAddr,
    /// The PEM of the CA that signed the server's certificate.
    pub ca_pem: String,
    /// Bodies POSTed to `/hook`, in order.
    pub posted: Arc<Mutex<Vec<String>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl TlsServer {
    /// Serves on a free loopback port, on its own thread and runtime (so that it works
    /// the same under `#[tokio::test]` and in a plain `#[test]`), with a certificate
    /// for `names`.
    pub fn start(names: &[&str]) -> TlsServer {
        let pki = Pki::new(names);
        #[allow(deprecated)] // See `ring_provider` in src/http.rs.
        let provider = rustls::crypto::ring::default_provider();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(provider))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![pki.leaf.clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pki.leaf_key.clone())),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let posted = Arc::new(Mutex::new(Vec::new()));
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let kept = posted.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let (tcp, _) = tokio::select! {
                        _ = &mut stopped => return,
                        a = listener.accept() => match a {
                            Ok(a) => a,
                            Err(_) => continue,
                        },
                    };
                    let (acceptor, posted) = (acceptor.clone(), kept.clone());
                    tokio::spawn(async move {
                        // A client that refuses the certificate ends the handshake: no
                        // request to answer.
                        if let Ok(tls) = acceptor.accept(tcp).await {
                            let _ = serve(tls, &posted).await;
                        }
                    });
                }
            });
        });
        TlsServer {
            addr,
            ca_pem: pki.ca_pem,
            posted,
            stop: Some(stop),
        }
    }

    /// `https://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.addr.port())
    }

    /// `https://localhost:PORT{path}`.
    pub fn localhost_url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.addr.port())
    }
}

async fn serve<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut s: S,
    posted: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let head_end = loop {
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut words = head.split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    let path = target.split('?').next().unwrap_or("");
    let (status, location, text) = match (method, path) {
        ("GET", "/health") => ("200 OK", None, "ok".to_string()),
        ("GET", "/moved") => ("302 Found", Some("/health"), String::new()),
        ("GET", "/loop") => ("302 Found", Some("/loop"), String::new()),
        ("GET", "/api/v1/query") => (
            "200 OK",
            None,
            r#"{"status":"success","data":{"resultType":"scalar","result":[0,"1"]}}"#.to_string(),
        ),
        ("POST", "/hook") => {
            posted
                .lock()
                .unwrap()
                .push(String::from_utf8_lossy(&body).to_string());
            ("200 OK", None, "ok".to_string())
        }
        ("POST", "/moved-hook") => ("307 Temporary Redirect", Some("/hook"), String::new()),
        _ => ("404 Not Found", None, "not found".to_string()),
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n",
        text.len()
    );
    if let Some(l) = location {
        out.push_str(&format!("location: {l}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(&text);
    s.write_all(out.as_bytes()).await?;
    s.shutdown().await
}
