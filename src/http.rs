//! A small HTTP/1.1 client for health probes and verification checks: one GET with a
//! timeout, the status and (a bounded prefix of) the body. Plain `http://` only.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Bodies past this size are cut off: checks only look at small documents.
const MAX_BODY: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("bad URL {url}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Request(String),
}

#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub body: Bytes,
}

/// A reusable client (connection pool included).
#[derive(Clone)]
pub struct HttpClient {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for HttpClient {
    fn default() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        HttpClient {
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(10))
                .build(connector),
        }
    }
}

impl HttpClient {
    pub async fn get(&self, url: &str, timeout: Duration) -> Result<HttpResponse, HttpError> {
        self.send(hyper::Method::GET, url, None, timeout).await
    }

    /// POSTs a JSON document.
    pub async fn post_json(
        &self,
        url: &str,
        body: &serde_json::Value,
        timeout: Duration,
    ) -> Result<HttpResponse, HttpError> {
        self.send(hyper::Method::POST, url, Some(body.to_string()), timeout)
            .await
    }

    async fn send(
        &self,
        method: hyper::Method,
        url: &str,
        body: Option<String>,
        timeout: Duration,
    ) -> Result<HttpResponse, HttpError> {
        let uri: hyper::Uri =
            url.parse()
                .map_err(|e: hyper::http::uri::InvalidUri| HttpError::BadUrl {
                    url: url.to_string(),
                    reason: e.to_string(),
                })?;
        if uri.scheme_str() != Some("http") {
            return Err(HttpError::BadUrl {
                url: url.to_string(),
                reason: "only http:// is supported".to_string(),
            });
        }
        let mut req = hyper::Request::builder().method(method).uri(uri);
        if body.is_some() {
            req = req.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| HttpError::BadUrl {
                url: url.to_string(),
                reason: e.to_string(),
            })?;
        let fut = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| HttpError::Request(error_chain(&e)))?;
            let status = resp.status().as_u16();
            let body = Limited::new(resp.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| HttpError::Request(format!("reading the body: {e}")))?
                .to_bytes();
            Ok(HttpResponse { status, body })
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| HttpError::Timeout(timeout))?
    }
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
