//! The watcher's proxy serving HTTPS from `[service.NAME.proxy] tls_cert` and `tls_key`:
//! a deploy verified over HTTPS through it (with the certificate's CA as `ca_file`), and a
//! client that speaks HTTP/2 by ALPN reaching the release with `X-Forwarded-Proto: https`.

mod common;
#[path = "../src/http/test_server.rs"]
mod test_server;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};

/// A CA and a certificate it signed for 127.0.0.1, as PEM files in `dir`; the CA's
/// certificate to trust.
fn pki(dir: &std::path::Path) -> rustls::pki_types::CertificateDer<'static> {
    let pki = test_server::Pki::new(&["127.0.0.1"]);
    std::fs::write(dir.join("ca.pem"), &pki.ca_pem).unwrap();
    std::fs::write(dir.join("cert.pem"), &pki.leaf_pem).unwrap();
    std::fs::write(dir.join("key.pem"), &pki.leaf_key_pem).unwrap();
    pki.ca
}

#[test]
fn the_watchers_proxy_serves_https_with_http2_by_alpn() {
    let mut p = Project::new("", "");
    let ca = pki(p.dir.path());
    // The project's config, with its checks over HTTPS and the proxy's certificate.
    let config = std::fs::read_to_string(p.config()).unwrap();
    let config = config.replace(
        &format!("http = \"http://127.0.0.1:{}/", p.listen),
        &format!(
            "ca_file = \"ca.pem\"\nhttp = \"https://127.0.0.1:{}/",
            p.listen
        ),
    );
    let config =
        format!("{config}\n[service.web.proxy]\ntls_cert = \"cert.pem\"\ntls_key = \"key.pem\"\n");
    std::fs::write(p.config(), config).unwrap();
    p.start_watcher();
    assert_ok(&p.deploy("v1", &[]), "deploy v1 (verified over HTTPS)");

    let rt = tokio::runtime::Runtime::new().unwrap();
    let (version, status, body) = rt.block_on(async {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca).unwrap();
        #[allow(deprecated)] // ring's provider, as src/http.rs `ring_provider` says.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"h2".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", p.listen))
            .await
            .unwrap();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let stream = tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
            .await
            .expect("the TLS handshake within 10 s")
            .unwrap();
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let req = hyper::Request::get(format!("https://127.0.0.1:{}/health", p.listen))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(10), send.send_request(req))
            .await
            .expect("an answer within 10 s")
            .unwrap();
        let (version, status) = (resp.version(), resp.status());
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (version, status, String::from_utf8_lossy(&body).into_owned())
    });
    assert_eq!(version, hyper::Version::HTTP_2);
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["version"], "v1", "{body}");
}

/// A key that does not go with its certificate stops the watcher with an error naming
/// both files, not a hint that another program holds the port.
#[test]
fn a_key_that_does_not_go_with_its_certificate_stops_the_watcher_naming_both() {
    let p = Project::new("", "");
    pki(p.dir.path());
    // Another key, valid PEM, that did not sign cert.pem.
    std::fs::write(
        p.dir.path().join("other.pem"),
        rcgen::KeyPair::generate().unwrap().serialize_pem(),
    )
    .unwrap();
    let config = std::fs::read_to_string(p.config()).unwrap();
    std::fs::write(
        p.config(),
        format!(
            "{config}\n[service.web.proxy]\ntls_cert = \"cert.pem\"\ntls_key = \"other.pem\"\n"
        ),
    )
    .unwrap();
    let mut watch = p.cmd(&["watch"]);
    let out = watch.stdin(std::process::Stdio::null()).output().unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("other.pem") && err.contains("cert.pem") && err.contains("does not go with"),
        "{err}"
    );
    assert!(!err.contains("another program"), "{err}");
}
