//! The Kubernetes API's facts about a Deployment's pods (runtime kubernetes): a
//! container terminated `OOMKilled` is an OOM kill, any other termination of a running
//! release's container (a restart) a crash, each reported once to the guard as an
//! [`Observation::Exit`] of the active release. Polled, since there is no event stream
//! ripcord's Role may watch; a failed read is logged and tried again.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::{Observation, Pods};
use crate::clock::now_ms;
use crate::config::Slot;

/// How often the pods are read.
const POLL: Duration = Duration::from_secs(1);

/// How many terminations are remembered as reported (older ones are forgotten; a pod's
/// restart count only grows, so a forgotten one is not read as new).
const SEEN_MAX: usize = 10_000;

pub async fn run(exec: Arc<impl Pods>, tx: mpsc::Sender<Observation>) {
    let mut seen: HashSet<String> = HashSet::new();
    let mut tick = tokio::time::interval(POLL);
    loop {
        tick.tick().await;
        if tx.is_closed() {
            return;
        }
        let terminations = match exec.terminations().await {
            Ok(t) => t,
            Err(e) => {
                tracing::debug!(service = exec.service(), "cannot read the pods: {e}");
                continue;
            }
        };
        if seen.len() > SEEN_MAX {
            seen.clear();
        }
        for t in terminations {
            if !seen.insert(t.key.clone()) {
                continue;
            }
            let oom = t.reason == "OOMKilled";
            let obs = Observation::Exit {
                release_id: t.release_id,
                slot: Slot::Blue,
                status: format!(
                    "a container of pod {} terminated: {} (exit code {}, {} restart(s))",
                    t.pod, t.reason, t.exit_code, t.restart_count
                ),
                oom,
                at_ms: now_ms(),
            };
            if tx.send(obs).await.is_err() {
                return;
            }
        }
    }
}
