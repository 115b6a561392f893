//! ripcord's own metrics, served on `[watch] metrics_listen` (a loopback address) in
//! the OpenMetrics text format, which Prometheus scrapes: rollbacks by service and
//! trigger, a rollback duration histogram, each trigger's state, how far behind the
//! guard reads its signals, the proxy's request counts and the nginx access-log
//! follower's counters.
//!
//! The metrics are `prometheus-client` families, written by the guards (atomics and a
//! short lock, never on the proxy's request path) and encoded by the crate when the
//! HTTP handler is asked; the access-log counters are read from the followers at each
//! scrape.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::signals::nginx_log::{FollowSnapshot, FollowStats};

/// Upper bounds of the rollback duration histogram, in seconds.
const BUCKETS: [f64; 11] = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// The states a trigger rule can be in; each is a series, 1 for the current one.
const TRIGGER_STATES: [&str; 3] = ["ok", "no_data", "fired"];

/// What the exposition is, for the `Content-Type` header.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RollbackLabels {
    service: String,
    trigger: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TriggerLabels {
    service: String,
    rule: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SignalLabels {
    service: String,
    signal: String,
}

fn duration_histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

/// The shared registry; cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    rollbacks: Family<RollbackLabels, Counter>,
    durations: Family<ServiceLabels, Histogram, fn() -> Histogram>,
    triggers: Family<TriggerLabels, Gauge>,
    lag: Family<SignalLabels, Gauge<f64, AtomicU64>>,
    requests: Family<ServiceLabels, Counter>,
    errors: Family<ServiceLabels, Counter>,
    access_logs: AccessLogs,
}

impl Default for Metrics {
    fn default() -> Self {
        let rollbacks = Family::<RollbackLabels, Counter>::default();
        let durations = Family::<ServiceLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            duration_histogram,
        );
        let triggers = Family::<TriggerLabels, Gauge>::default();
        let lag = Family::<SignalLabels, Gauge<f64, AtomicU64>>::default();
        let requests = Family::<ServiceLabels, Counter>::default();
        let errors = Family::<ServiceLabels, Counter>::default();
        let access_logs = AccessLogs::default();
        // Counter names are given without `_total`: OpenMetrics adds it to the samples,
        // which keep the names they always had. The registry ends each help text with
        // a period.
        let mut r = Registry::default();
        r.register(
            "ripcord_rollbacks",
            "Rollbacks, by service, trigger and outcome",
            rollbacks.clone(),
        );
        r.register(
            "ripcord_rollback_duration_seconds",
            "Automatic rollbacks: decision to verified",
            durations.clone(),
        );
        r.register(
            "ripcord_trigger_state",
            "1 for the state each trigger rule is in now",
            triggers.clone(),
        );
        r.register(
            "ripcord_signal_lag_seconds",
            "Age of the oldest observation when the guard read it",
            lag.clone(),
        );
        r.register(
            "ripcord_proxy_requests",
            "Requests through the built-in proxy",
            requests.clone(),
        );
        r.register(
            "ripcord_proxy_5xx",
            "5xx answers through the built-in proxy",
            errors.clone(),
        );
        r.register_collector(Box::new(access_logs.clone()));
        Metrics {
            registry: Arc::new(r),
            rollbacks,
            durations,
            triggers,
            lag,
            requests,
            errors,
            access_logs,
        }
    }
}

impl Metrics {
    pub fn rollback(&self, service: &str, trigger: &str, outcome: &str, seconds: Option<f64>) {
        self.rollbacks
            .get_or_create(&RollbackLabels {
                service: service.into(),
                trigger: trigger.into(),
                outcome: outcome.into(),
            })
            .inc();
        if let Some(s) = seconds {
            self.durations
                .get_or_create(&ServiceLabels {
                    service: service.into(),
                })
                .observe(s);
        }
    }

    pub fn trigger_state(&self, service: &str, rule: &str, state: &'static str) {
        for s in TRIGGER_STATES {
            self.triggers
                .get_or_create(&TriggerLabels {
                    service: service.into(),
                    rule: rule.into(),
                    state: s.into(),
                })
                .set(i64::from(state == s));
        }
    }

    pub fn signal_lag(&self, service: &str, signal: &str, seconds: f64) {
        self.lag
            .get_or_create(&SignalLabels {
                service: service.into(),
                signal: signal.into(),
            })
            .set(seconds);
    }

    pub fn requests(&self, service: &str, requests: u64, errors: u64) {
        let labels = ServiceLabels {
            service: service.into(),
        };
        self.requests.get_or_create(&labels).inc_by(requests);
        self.errors.get_or_create(&labels).inc_by(errors);
    }

    pub fn access_log(&self, service: &str, stats: Arc<FollowStats>) {
        self.access_logs
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(service.into(), stats);
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// service → the nginx access-log follower's counters, read at each scrape.
#[derive(Clone, Default)]
struct AccessLogs(Arc<Mutex<BTreeMap<String, Arc<FollowStats>>>>);

impl std::fmt::Debug for AccessLogs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccessLogs")
    }
}

type Read = fn(&FollowSnapshot) -> u64;

impl Collector for AccessLogs {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let snaps: Vec<(String, FollowSnapshot)> = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(svc, st)| (svc.clone(), st.snapshot()))
            .collect();
        let families: [(&str, &str, Read); 4] = [
            (
                "ripcord_access_log_lines",
                "nginx access-log lines read (malformed included).",
                |s| s.lines,
            ),
            (
                "ripcord_access_log_malformed",
                "nginx access-log lines that did not parse.",
                |s| s.malformed,
            ),
            (
                "ripcord_access_log_unattributed",
                "nginx access-log requests tied to no release (the upstream address is no slot's).",
                |s| s.unattributed,
            ),
            (
                "ripcord_access_log_dropped",
                "nginx access-log requests never given to the guard because it stayed behind.",
                |s| s.dropped,
            ),
        ];
        for (name, help, read) in families {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (svc, snap) in &snaps {
                let labels = ServiceLabels {
                    service: svc.clone(),
                };
                ConstCounter::new(read(snap)).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
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
                            hyper::header::HeaderValue::from_static(CONTENT_TYPE),
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
        let stats = Arc::new(FollowStats::default());
        m.access_log("edge", stats);
        m.rollback("we\"b", "x", "verified", None);
        let text = m.render();
        for line in [
            "# HELP ripcord_rollbacks Rollbacks, by service, trigger and outcome.",
            "# TYPE ripcord_rollbacks counter",
            "ripcord_rollbacks_total{service=\"web\",trigger=\"error_rate\",outcome=\"verified\"} 2",
            "# HELP ripcord_rollback_duration_seconds Automatic rollbacks: decision to verified.",
            "ripcord_rollback_duration_seconds_bucket{le=\"0.25\",service=\"web\"} 1",
            "ripcord_rollback_duration_seconds_bucket{le=\"5.0\",service=\"web\"} 2",
            "ripcord_rollback_duration_seconds_bucket{le=\"+Inf\",service=\"web\"} 2",
            "ripcord_rollback_duration_seconds_sum{service=\"web\"} 3.2",
            "ripcord_rollback_duration_seconds_count{service=\"web\"} 2",
            "# HELP ripcord_trigger_state 1 for the state each trigger rule is in now.",
            "ripcord_trigger_state{service=\"web\",rule=\"error_rate\",state=\"fired\"} 1",
            "ripcord_trigger_state{service=\"web\",rule=\"error_rate\",state=\"ok\"} 0",
            "ripcord_signal_lag_seconds{service=\"web\",signal=\"proxy\"} 0.05",
            "ripcord_proxy_requests_total{service=\"web\"} 10",
            "ripcord_proxy_5xx_total{service=\"web\"} 2",
            "# HELP ripcord_access_log_lines nginx access-log lines read (malformed included).",
            "ripcord_access_log_lines_total{service=\"edge\"} 0",
            "ripcord_access_log_dropped_total{service=\"edge\"} 0",
            "ripcord_rollbacks_total{service=\"we\\\"b\",trigger=\"x\",outcome=\"verified\"} 1",
            "# EOF",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }
}
