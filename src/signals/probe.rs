//! HTTP health probes, per slot, on an interval with a timeout. The slot that gets
//! traffic is probed for the guard's health rule (it follows the router's target, so
//! after a switch it probes the new release); a slot that keeps the previous release
//! warm is probed too, so `status` tells whether the rollback target would answer.

use tokio::sync::mpsc;

use super::{Observation, SlotSource, Targets};
use crate::clock::now_ms;
use crate::config::{HealthRule, ServiceConfig};
use crate::http::HttpClient;

/// Probes until the channel closes.
pub async fn run(
    cfg: ServiceConfig,
    rule: HealthRule,
    router: impl Targets,
    exec: std::sync::Arc<impl SlotSource>,
    tx: mpsc::Sender<Observation>,
) {
    let client = HttpClient::default();
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
        let probe = async |slot| {
            let url = cfg.health_url(slot);
            match client.get(&url, rule.timeout).await {
                Ok(r) if (200..300).contains(&r.status) => {
                    (true, format!("{url} answered {}", r.status))
                }
                Ok(r) => (false, format!("{url} answered {}", r.status)),
                Err(e) => (false, format!("{url}: {e}")),
            }
        };
        let (ok, detail) = probe(target.slot).await;
        let obs = Observation::Health {
            release_id: target.release_id,
            ok,
            detail,
            at_ms: now_ms(),
        };
        if tx.send(obs).await.is_err() {
            return;
        }
        // The other slot, when a release stays warm in it (runtime external slots are
        // someone else's and always count as running).
        let warm = exec
            .slots()
            .into_iter()
            .find(|sv| sv.slot != target.slot && sv.running);
        if let Some(sv) = warm {
            let (ok, detail) = probe(sv.slot).await;
            let obs = Observation::WarmHealth {
                release_id: sv.release_id,
                ok,
                detail,
                at_ms: now_ms(),
            };
            if tx.send(obs).await.is_err() {
                return;
            }
        }
    }
}
