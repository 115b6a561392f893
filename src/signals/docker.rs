//! Docker's own facts about a service's containers: engine events (`oom`, `die` with
//! its exit code, `health_status`) as they happen, and CPU share from the stats API
//! every few seconds. Exits ripcord asked for (a stop, a replace) are not reported.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::Observation;
use crate::clock::now_ms;
use crate::docker::{ContainerEvent, Engine, EventKind};
use crate::execute::ServiceExec;
use crate::execute::container::describe_exit;

/// How long to wait before subscribing again after the engine closed the stream.
const RESUBSCRIBE: Duration = Duration::from_secs(1);
/// How long a `die` with exit code 137 waits for its `oom` event.
const OOM_GRACE: Duration = Duration::from_millis(500);
/// How often CPU is sampled (each sample itself takes the engine about a second).
const CPU_EVERY: Duration = Duration::from_secs(2);

/// Observes until the channel closes.
pub async fn run(exec: Arc<ServiceExec>, tx: mpsc::Sender<Observation>) {
    // The engine may come up after the watcher (at boot): keep asking, bounded by the
    // watcher's life, and say so once.
    let mut wait = Duration::from_secs(1);
    let mut said = false;
    let engine = loop {
        match exec.engine().await {
            Ok(e) => break e.clone(),
            Err(e) => {
                if !said {
                    tracing::error!(service = %exec.cfg.name, error = %e, "docker signals wait for the engine");
                    said = true;
                }
                if tx.is_closed() {
                    return;
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(30));
            }
        }
    };
    tokio::spawn(cpu_loop(exec.clone(), engine.clone(), tx.clone()));
    let mut oom: HashSet<String> = HashSet::new();
    while !tx.is_closed() {
        let mut events = std::pin::pin!(engine.events(&exec.cfg.name));
        // A `die` with exit code 137 and no `oom` yet: the engine sometimes sends the
        // `oom` a moment after the `die`, so it is held briefly before it counts.
        let mut held: Option<(ContainerEvent, tokio::time::Instant)> = None;
        loop {
            let wait = async {
                match &held {
                    Some((_, until)) => tokio::time::sleep_until(*until).await,
                    None => std::future::pending().await,
                }
            };
            let item = tokio::select! {
                item = events.next() => item,
                () = wait => {
                    if let Some((ev, _)) = held.take()
                        && let Some(obs) = observe(&exec, &mut oom, ev)
                        && tx.send(obs).await.is_err()
                    {
                        return;
                    }
                    continue;
                }
            };
            let Some(item) = item else { break };
            match item {
                Ok(ev) => {
                    let is_kill_without_oom = matches!(
                        ev.kind,
                        EventKind::Die {
                            exit_code: Some(137)
                        }
                    ) && !oom.contains(&ev.id);
                    if is_kill_without_oom && held.is_none() {
                        held = Some((ev, tokio::time::Instant::now() + OOM_GRACE));
                        continue;
                    }
                    let is_oom_for_held = matches!(ev.kind, EventKind::Oom)
                        && held.as_ref().is_some_and(|(h, _)| h.id == ev.id);
                    let obs = observe(&exec, &mut oom, ev);
                    if is_oom_for_held && let Some((h, _)) = held.take() {
                        if let Some(obs) = observe(&exec, &mut oom, h)
                            && tx.send(obs).await.is_err()
                        {
                            return;
                        }
                        continue;
                    }
                    if let Some(obs) = obs
                        && tx.send(obs).await.is_err()
                    {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(service = %exec.cfg.name, error = %e, "docker event stream broke; subscribing again");
                    break;
                }
            }
        }
        if let Some((ev, _)) = held.take()
            && let Some(obs) = observe(&exec, &mut oom, ev)
            && tx.send(obs).await.is_err()
        {
            return;
        }
        tokio::time::sleep(RESUBSCRIBE).await;
    }
}

/// What one engine event means for the guard, if anything.
fn observe(
    exec: &ServiceExec,
    oom: &mut HashSet<String>,
    ev: ContainerEvent,
) -> Option<Observation> {
    // Only containers in a slot count: a pre-flight container is judged by its operation.
    let (slot, sp) = exec
        .slots()
        .into_iter()
        .find(|(_, sp)| sp.container.as_ref().is_some_and(|c| c.id == ev.id))?;
    let handle = sp.container.as_ref()?;
    match ev.kind {
        EventKind::Oom => {
            oom.insert(ev.id);
            None
        }
        EventKind::Die { exit_code } => {
            let was_oom = oom.remove(&ev.id);
            if handle.stopping() {
                return None;
            }
            let how = describe_exit(exit_code, was_oom);
            handle.mark_exited(how.clone(), was_oom);
            Some(Observation::Exit {
                release_id: sp.release.id,
                slot,
                status: how,
                oom: was_oom,
                at_ms: ev.time_ms,
            })
        }
        EventKind::Health(status) if status == "healthy" || status == "unhealthy" => {
            Some(Observation::Health {
                release_id: sp.release.id,
                ok: status == "healthy",
                detail: format!("docker health_status: {status}"),
                at_ms: ev.time_ms,
            })
        }
        EventKind::Health(_) | EventKind::Start => None,
    }
}

async fn cpu_loop(exec: Arc<ServiceExec>, engine: Engine, tx: mpsc::Sender<Observation>) {
    let mut tick = tokio::time::interval(CPU_EVERY);
    while !tx.is_closed() {
        tick.tick().await;
        for (slot, sp) in exec.slots() {
            let Some(c) = sp.container.clone() else {
                continue;
            };
            if c.stopping() || c.exited().is_some() {
                continue;
            }
            let Ok(Some(share)) = engine.cpu_share(&c.id).await else {
                continue;
            };
            let obs = Observation::Resources {
                release_id: sp.release.id,
                slot,
                cpu_share: Some(share),
                rss_mb: None,
                at_ms: now_ms(),
            };
            if tx.send(obs).await.is_err() {
                return;
            }
        }
    }
}
