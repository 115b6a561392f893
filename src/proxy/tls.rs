//! The proxy's TLS listener: the configured certificate chain and key, with ALPN offering
//! HTTP/2 first, then HTTP/1.1.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::ProxyTls;

/// A TLS acceptor for `tls`, or why there is none (naming the file at fault).
pub(super) fn acceptor(tls: &ProxyTls) -> Result<TlsAcceptor, String> {
    let certs = CertificateDer::pem_file_iter(&tls.cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("reading tls_cert {}: {e}", tls.cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "tls_cert {} holds no PEM certificate",
            tls.cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&tls.key)
        .map_err(|e| format!("reading tls_key {}: {e}", tls.key.display()))?;
    let provider = Arc::new(crate::http::ring_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("setting up TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            format!(
                "tls_key {} does not go with tls_cert {}: {e}",
                tls.key.display(),
                tls.cert.display()
            )
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
