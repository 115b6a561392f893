//! Notifications: JSON webhooks (with a `text` field, so Slack-compatible receivers
//! work) on triggers, decisions, rollbacks, freezes and investigations.
//!
//! Sending never waits: messages go into a bounded queue with `try_send` and a worker
//! posts them with a bounded number of retries and backoff. Each receiver has its own
//! queue and worker, so a slow or dead receiver delays nothing but its own messages;
//! when its queue is full a message is dropped and counted.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::json;
use tokio::sync::mpsc;

use crate::clock::now_ms;
use crate::http::HttpClient;

/// Attempts per message and receiver, and the pause before each retry.
const BACKOFF: [Duration; 3] = [
    Duration::from_millis(0),
    Duration::from_millis(500),
    Duration::from_millis(2000),
];
const TIMEOUT: Duration = Duration::from_secs(3);
const QUEUE: usize = 256;

#[derive(Debug, Clone)]
struct Message {
    kind: &'static str,
    service: String,
    text: String,
    data: serde_json::Value,
    at_ms: i64,
}

/// A handle to send notifications; cheap to clone.
#[derive(Clone, Default)]
pub struct Notifier {
    /// One queue and worker per receiver: a dead one never holds up the others.
    txs: Vec<mpsc::Sender<Message>>,
    pub dropped: Arc<AtomicU64>,
}

impl Notifier {
    /// Starts a worker for each of these webhooks; with none, sending does nothing.
    pub fn start(webhooks: Vec<String>) -> Notifier {
        Notifier::start_with_ca_file(webhooks, None)
    }

    /// [`Notifier::start`], trusting the CA certificates in `ca_file` (PEM) beside the
    /// system's roots for every webhook.
    pub fn start_with_ca_file(webhooks: Vec<String>, ca_file: Option<PathBuf>) -> Notifier {
        let txs = webhooks
            .into_iter()
            .map(|url| {
                let (tx, rx) = mpsc::channel(QUEUE);
                tokio::spawn(worker(url, ca_file.clone(), rx));
                tx
            })
            .collect();
        Notifier {
            txs,
            dropped: Arc::default(),
        }
    }

    /// Queues a message; never waits.
    pub fn send(&self, kind: &'static str, service: &str, text: String, data: serde_json::Value) {
        if self.txs.is_empty() {
            return;
        }
        let msg = Message {
            kind,
            service: service.to_string(),
            text,
            data,
            at_ms: now_ms(),
        };
        for tx in &self.txs {
            if tx.try_send(msg.clone()).is_err() {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(kind, "notification queue full: message dropped");
            }
        }
    }
}

async fn worker(url: String, ca_file: Option<PathBuf>, mut rx: mpsc::Receiver<Message>) {
    // The config reader has read the CA file already; should it have gone since, the
    // system's roots alone are tried and a private server's certificate is refused
    // with its own clear error on each message.
    let client = HttpClient::with_ca_file(ca_file.as_deref()).unwrap_or_else(|e| {
        tracing::warn!(url = %url, "webhook client: {e}");
        HttpClient::default()
    });
    while let Some(msg) = rx.recv().await {
        let mut body = json!({
            "text": format!("[ripcord] {}: {}", msg.service, msg.text),
            "kind": msg.kind,
            "service": msg.service,
            "at_ms": msg.at_ms,
            "data": msg.data,
        });
        crate::config::redact::scrub_json(&mut body);
        let mut last = String::new();
        let mut delivered = false;
        for pause in BACKOFF {
            tokio::time::sleep(pause).await;
            match client.post_json(&url, &body, TIMEOUT).await {
                Ok(r) if (200..300).contains(&r.status) => {
                    delivered = true;
                    break;
                }
                Ok(r) => last = format!("answered {}", r.status),
                Err(e) => last = e.to_string(),
            }
        }
        if !delivered {
            tracing::warn!(url = %url, kind = msg.kind, "webhook not delivered after {} attempts: {last}", BACKOFF.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[tokio::test]
    async fn sending_to_a_dead_receiver_never_waits() {
        let dead = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let n = Notifier::start(vec![format!("http://{dead}/hook")]);
        let start = Instant::now();
        for i in 0..1000 {
            n.send("trigger", "web", format!("message {i}"), json!({}));
        }
        assert!(
            start.elapsed() < Duration::from_millis(200),
            "{:?}",
            start.elapsed()
        );
        // The queue holds QUEUE; the rest were dropped and counted, not waited for.
        assert!(n.dropped.load(Ordering::Relaxed) >= 1000 - QUEUE as u64 - 1);
    }

    #[tokio::test]
    async fn a_silent_receiver_does_not_hold_up_the_others() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // Accepts connections and never answers: each post waits out its timeout.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let silent_addr = silent.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = silent.accept().await {
                held.push(s);
            }
        });
        // Answers 200 to every post and counts them.
        let live = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let live_addr = live.local_addr().unwrap();
        let (got_tx, mut got_rx) = mpsc::channel::<()>(16);
        tokio::spawn(async move {
            while let Ok((mut s, _)) = live.accept().await {
                let got_tx = got_tx.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 8192];
                    let mut data = Vec::new();
                    for _ in 0..20 {
                        let Ok(n) = s.read(&mut buf).await else {
                            return;
                        };
                        data.extend_from_slice(&buf[..n]);
                        if data.ends_with(b"}") || n == 0 {
                            break;
                        }
                    }
                    let _ = s
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                        )
                        .await;
                    let _ = got_tx.send(()).await;
                });
            }
        });
        let n = Notifier::start(vec![
            format!("http://{silent_addr}/hook"),
            format!("http://{live_addr}/hook"),
        ]);
        let start = Instant::now();
        for i in 0..3 {
            n.send("trigger", "web", format!("message {i}"), json!({}));
        }
        for i in 0..3 {
            tokio::time::timeout(Duration::from_secs(2), got_rx.recv())
                .await
                .unwrap_or_else(|_| panic!("message {i} waited for the silent receiver"))
                .unwrap();
        }
        // The silent receiver costs TIMEOUT per attempt; the live one got all three
        // well before the first of those ran out.
        assert!(start.elapsed() < TIMEOUT, "{:?}", start.elapsed());
    }

    #[tokio::test]
    async fn a_message_is_posted_with_a_text_field() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (got_tx, mut got_rx) = mpsc::channel::<String>(1);
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 8192];
            let mut data = Vec::new();
            // Read until the JSON body has arrived (bounded by the buffer size).
            for _ in 0..20 {
                let n = s.read(&mut buf).await.unwrap();
                data.extend_from_slice(&buf[..n]);
                if data.ends_with(b"}") || n == 0 {
                    break;
                }
            }
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                .await
                .unwrap();
            got_tx
                .send(String::from_utf8_lossy(&data).into_owned())
                .await
                .unwrap();
        });
        let n = Notifier::start(vec![format!("http://{addr}/hook")]);
        n.send(
            "rollback_done",
            "web",
            "rolled back to v1".into(),
            json!({"v": 1}),
        );
        let req = tokio::time::timeout(Duration::from_secs(5), got_rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(req.starts_with("POST /hook"), "{req}");
        let body = &req[req.find("\r\n\r\n").unwrap() + 4..];
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["text"], "[ripcord] web: rolled back to v1");
        assert_eq!(v["kind"], "rollback_done");
        assert_eq!(v["data"]["v"], 1);
    }

    #[tokio::test]
    async fn an_https_webhook_is_posted_when_its_ca_file_is_given() {
        let server = crate::http::test_server::TlsServer::start(&["127.0.0.1"]);
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, &server.ca_pem).unwrap();
        let n = Notifier::start_with_ca_file(vec![server.url("/hook")], Some(ca));
        n.send("freeze", "web", "frozen".into(), json!({}));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while server.posted.lock().unwrap().is_empty() {
            assert!(std::time::Instant::now() < deadline, "never delivered");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let body: serde_json::Value =
            serde_json::from_str(&server.posted.lock().unwrap()[0]).unwrap();
        assert_eq!(body["text"], "[ripcord] web: frozen");
    }
}
