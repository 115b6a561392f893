//! HTTP health probes of the slot that gets traffic, on an interval with a
//! timeout. It follows the router's target, so after a switch it probes the new release.

use std::time::Duration;

use tokio::sync::mpsc;

use super::Observation;
use crate::clock::now_ms;
use crate::config::{HealthRule, ServiceConfig};
use crate::execute::Router;
use crate::http::HttpClient;

/// Probes until the channel closes.
pub async fn run(
    cfg: ServiceConfig,
    rule: HealthRule,
    router: Router,
    tx: mpsc::Sender<Observation>,
) {
    let client = HttpClient::default();
    let mut tick = tokio::time::interval(Duration::from_secs(rule.interval_secs));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(target) = router.target() else {
            if tx.is_closed() {
                return;
            }
            continue;
        };
        let url = cfg.health_url(target.slot);
        let (ok, detail) = match client
            .get(&url, Duration::from_secs(rule.timeout_secs))
            .await
        {
            Ok(r) if (200..300).contains(&r.status) => {
                (true, format!("{url} answered {}", r.status))
            }
            Ok(r) => (false, format!("{url} answered {}", r.status)),
            Err(e) => (false, format!("{url}: {e}")),
        };
        let obs = Observation::Health {
            release_id: target.release_id,
            ok,
            detail,
            at_ms: now_ms(),
        };
        if tx.send(obs).await.is_err() {
            return;
        }
    }
}
