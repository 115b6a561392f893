//! ripcord's own metrics, served as Prometheus text on `[watch] metrics_listen` (a
//! loopback address): rollbacks by service and trigger, a rollback duration histogram,
//! each trigger's state, how far behind the guard reads its signals, and the proxy's
//! request counts.
//!
//! The registry is written by the guards (a short lock, never on the proxy's request
//! path) and read by the HTTP handler; the text format is written by hand.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Upper bounds of the rollback duration histogram, in seconds.
const BUCKETS: [f64; 11] = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Default)]
struct Inner {
    /// (service, trigger, outcome) → count.
    rollbacks: BTreeMap<(String, String, String), u64>,
    durations: BTreeMap<String, Histogram>,
    /// (service, rule) → "ok" | "no_data" | "fired".
    triggers: BTreeMap<(String, String), &'static str>,
    /// (service, signal) → seconds.
    lag: BTreeMap<(String, String), f64>,
    /// service → (requests, 5xx) seen by the proxy.
    requests: BTreeMap<String, (u64, u64)>,
    /// service → the nginx access-log follower's counters.
    access_logs: BTreeMap<String, Arc<crate::signals::nginx_log::FollowStats>>,
}

/// The shared registry; cheap to clone.
#[derive(Clone, Default)]
pub struct Metrics {
    inner: Arc<Mutex<Inner>>,
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn rollback(&self, service: &str, trigger: &str, outcome: &str, seconds: Option<f64>) {
        let mut m = self.lock();
        *m.rollbacks
            .entry((service.into(), trigger.into(), outcome.into()))
            .or_default() += 1;
        if let Some(s) = seconds {
            let h = m.durations.entry(service.into()).or_default();
            h.count += 1;
            h.sum += s;
            for (i, b) in BUCKETS.iter().enumerate() {
                if s <= *b {
                    h.counts[i] += 1;
                }
            }
        }
    }

    pub fn trigger_state(&self, service: &str, rule: &str, state: &'static str) {
        self.lock()
            .triggers
            .insert((service.into(), rule.into()), state);
    }

    pub fn signal_lag(&self, service: &str, signal: &str, seconds: f64) {
        self.lock()
            .lag
            .insert((service.into(), signal.into()), seconds);
    }

    pub fn requests(&self, service: &str, requests: u64, errors: u64) {
        let mut m = self.lock();
        let e = m.requests.entry(service.into()).or_default();
        e.0 += requests;
        e.1 += errors;
    }

    pub fn access_log(&self, service: &str, stats: Arc<crate::signals::nginx_log::FollowStats>) {
        self.lock().access_logs.insert(service.into(), stats);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let m = self.lock();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP ripcord_rollbacks_total Rollbacks, by service, trigger and outcome."
        );
        let _ = writeln!(out, "# TYPE ripcord_rollbacks_total counter");
        for ((svc, trigger, outcome), n) in &m.rollbacks {
            let _ = writeln!(
                out,
                "ripcord_rollbacks_total{{service=\"{}\",trigger=\"{}\",outcome=\"{}\"}} {n}",
                esc(svc),
                esc(trigger),
                esc(outcome)
            );
        }
        let _ = writeln!(
            out,
            "# HELP ripcord_rollback_duration_seconds Automatic rollbacks: decision to verified."
        );
        let _ = writeln!(out, "# TYPE ripcord_rollback_duration_seconds histogram");
        for (svc, h) in &m.durations {
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "ripcord_rollback_duration_seconds_bucket{{service=\"{}\",le=\"{b}\"}} {}",
                    esc(svc),
                    h.counts[i]
                );
            }
            let _ = writeln!(
                out,
                "ripcord_rollback_duration_seconds_bucket{{service=\"{}\",le=\"+Inf\"}} {}",
                esc(svc),
                h.count
            );
            let _ = writeln!(
                out,
                "ripcord_rollback_duration_seconds_sum{{service=\"{}\"}} {}",
                esc(svc),
                h.sum
            );
            let _ = writeln!(
                out,
                "ripcord_rollback_duration_seconds_count{{service=\"{}\"}} {}",
                esc(svc),
                h.count
            );
        }
        let _ = writeln!(
            out,
            "# HELP ripcord_trigger_state 1 for the state each trigger rule is in now."
        );
        let _ = writeln!(out, "# TYPE ripcord_trigger_state gauge");
        for ((svc, rule), state) in &m.triggers {
            for s in ["ok", "no_data", "fired"] {
                let _ = writeln!(
                    out,
                    "ripcord_trigger_state{{service=\"{}\",rule=\"{}\",state=\"{s}\"}} {}",
                    esc(svc),
                    esc(rule),
                    u8::from(*state == s)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP ripcord_signal_lag_seconds Age of the oldest observation when the guard read it."
        );
        let _ = writeln!(out, "# TYPE ripcord_signal_lag_seconds gauge");
        for ((svc, signal), secs) in &m.lag {
            let _ = writeln!(
                out,
                "ripcord_signal_lag_seconds{{service=\"{}\",signal=\"{}\"}} {secs}",
                esc(svc),
                esc(signal)
            );
        }
        let _ = writeln!(
            out,
            "# HELP ripcord_proxy_requests_total Requests through the built-in proxy."
        );
        let _ = writeln!(out, "# TYPE ripcord_proxy_requests_total counter");
        for (svc, (n, _)) in &m.requests {
            let _ = writeln!(
                out,
                "ripcord_proxy_requests_total{{service=\"{}\"}} {n}",
                esc(svc)
            );
        }
        let _ = writeln!(
            out,
            "# HELP ripcord_proxy_5xx_total 5xx answers through the built-in proxy."
        );
        let _ = writeln!(out, "# TYPE ripcord_proxy_5xx_total counter");
        for (svc, (_, e)) in &m.requests {
            let _ = writeln!(
                out,
                "ripcord_proxy_5xx_total{{service=\"{}\"}} {e}",
                esc(svc)
            );
        }
        let _ = writeln!(
            out,
            "# HELP ripcord_access_log_lines_total nginx access-log lines read (malformed included)."
        );
        let _ = writeln!(out, "# TYPE ripcord_access_log_lines_total counter");
        let snaps: Vec<(String, crate::signals::nginx_log::FollowSnapshot)> = m
            .access_logs
            .iter()
            .map(|(svc, st)| (svc.clone(), st.snapshot()))
            .collect();
        for (svc, snap) in &snaps {
            let _ = writeln!(
                out,
                "ripcord_access_log_lines_total{{service=\"{}\"}} {}",
                esc(svc),
                snap.lines
            );
        }
        let _ = writeln!(
            out,
            "# HELP ripcord_access_log_malformed_total nginx access-log lines that did not parse."
        );
        let _ = writeln!(out, "# TYPE ripcord_access_log_malformed_total counter");
        for (svc, snap) in &snaps {
            let _ = writeln!(
                out,
                "ripcord_access_log_malformed_total{{service=\"{}\"}} {}",
                esc(svc),
                snap.malformed
            );
        }
        for (metric, help, value) in [
            (
                "ripcord_access_log_unattributed_total",
                "nginx access-log requests tied to no release (the upstream address is no slot's).",
                (|s: &crate::signals::nginx_log::FollowSnapshot| s.unattributed)
                    as fn(&crate::signals::nginx_log::FollowSnapshot) -> u64,
            ),
            (
                "ripcord_access_log_dropped_total",
                "nginx access-log requests never given to the guard because it stayed behind.",
                |s| s.dropped,
            ),
        ] {
            let _ = writeln!(out, "# HELP {metric} {help}");
            let _ = writeln!(out, "# TYPE {metric} counter");
            for (svc, snap) in &snaps {
                let _ = writeln!(out, "{metric}{{service=\"{}\"}} {}", esc(svc), value(snap));
            }
        }
        out
    }
}

/// Escapes a label value (backslash, quote, newline).
fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Serves `/metrics` until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: Metrics) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                let metrics = metrics.clone();
                async move {
                    let resp = if req.uri().path() == "/metrics" {
                        let mut r = Response::new(Full::new(Bytes::from(metrics.render())));
                        r.headers_mut().insert(
                            hyper::header::CONTENT_TYPE,
                            hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
                        );
                        r
                    } else {
                        let mut r = Response::new(Full::new(Bytes::from_static(b"see /metrics\n")));
                        *r.status_mut() = StatusCode::NOT_FOUND;
                        r
                    };
                    Ok::<_, Infallible>(resp)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_text_format() {
        let m = Metrics::default();
        m.rollback("web", "error_rate", "verified", Some(0.2));
        m.rollback("web", "error_rate", "verified", Some(3.0));
        m.trigger_state("web", "error_rate", "fired");
        m.signal_lag("web", "proxy", 0.05);
        m.requests("web", 10, 2);
        let text = m.render();
        for line in [
            "ripcord_rollbacks_total{service=\"web\",trigger=\"error_rate\",outcome=\"verified\"} 2",
            "ripcord_rollback_duration_seconds_bucket{service=\"web\",le=\"0.25\"} 1",
            "ripcord_rollback_duration_seconds_bucket{service=\"web\",le=\"5\"} 2",
            "ripcord_rollback_duration_seconds_bucket{service=\"web\",le=\"+Inf\"} 2",
            "ripcord_rollback_duration_seconds_sum{service=\"web\"} 3.2",
            "ripcord_trigger_state{service=\"web\",rule=\"error_rate\",state=\"fired\"} 1",
            "ripcord_trigger_state{service=\"web\",rule=\"error_rate\",state=\"ok\"} 0",
            "ripcord_signal_lag_seconds{service=\"web\",signal=\"proxy\"} 0.05",
            "ripcord_proxy_5xx_total{service=\"web\"} 2",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        assert_eq!(esc("a\"b\\c"), "a\\\"b\\\\c");
    }
}
