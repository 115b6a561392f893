//! Metric rules: PromQL queries against the user's Prometheus, evaluated on an interval.
//! Each evaluation is reported as it came back (values, or "no data" with why); the
//! guard decides what a breach means.

use std::time::Duration;

use tokio::sync::mpsc;

use super::{Observation, Targets};
use crate::clock::now_ms;
use crate::config::MetricRule;
use crate::http::HttpClient;
use crate::prometheus::query;

/// Evaluates `rule` until the channel closes. `{version}` in the query is the version
/// the router serves at that moment, so a rule can be scoped to the active release.
pub async fn run(
    url: String,
    ca_file: Option<std::path::PathBuf>,
    rule: MetricRule,
    router: impl Targets,
    tx: mpsc::Sender<Observation>,
) {
    // The config loader has read the CA file already; a file changed since is reported
    // in each evaluation's "no data" as an untrusted certificate.
    let client = HttpClient::with_ca_file(ca_file.as_deref()).unwrap_or_else(|e| {
        tracing::error!(url = %url, error = %e, "the Prometheus CA file cannot be used");
        HttpClient::default()
    });
    let mut tick = tokio::time::interval(rule.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(target) = router.serving() else {
            if tx.is_closed() {
                return;
            }
            continue;
        };
        let promql = rule.query.replace("{version}", &target.version);
        let timeout = rule
            .interval
            .clamp(Duration::from_secs(1), Duration::from_secs(10));
        let result = query(&client, &url, &promql, timeout).await;
        let obs = Observation::Metric {
            rule: rule.name.clone(),
            release_id: target.release_id,
            result,
            at_ms: now_ms(),
        };
        if tx.send(obs).await.is_err() {
            return;
        }
    }
}
