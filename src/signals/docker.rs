//! Docker's own facts about a service's containers: engine events (`oom`, `die` with
//! its exit code, `health_status`) as they happen, and CPU share from the stats API
//! every few seconds. Exits ripcord asked for (a stop, a replace) are not reported.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::{Containers, Observation, Unit};
use crate::clock::now_ms;
use crate::docker::{ContainerEvent, Engine, EventKind};
use crate::os::describe_exit;

/// How long to wait before subscribing again after the engine closed the stream.
const RESUBSCRIBE: Duration = Duration::from_secs(1);
/// How long a `die` with exit code 137 waits for its `oom` event.
const OOM_GRACE: Duration = Duration::from_millis(500);
/// How often CPU is sampled (each sample itself takes the engine about a second).
const CPU_EVERY: Duration = Duration::from_secs(2);

/// Observes until the channel closes.
pub async fn run(exec: Arc<impl Containers>, tx: mpsc::Sender<Observation>) {
    // The engine may come up after the watcher (at boot): keep asking, bounded by the
    // watcher's life, and say so once.
    let mut wait = Duration::from_secs(1);
    let mut said = false;
    let engine = loop {
        match exec.engine().await {
            Ok(e) => break e,
            Err(e) => {
                if !said {
                    tracing::error!(service = %exec.service(), error = %e, "docker signals wait for the engine");
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
        let mut events = std::pin::pin!(engine.events(exec.service()));
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
                        && let Some(obs) = observe(&*exec, &mut oom, ev)
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
                    let obs = observe(&*exec, &mut oom, ev);
                    if is_oom_for_held && let Some((h, _)) = held.take() {
                        if let Some(obs) = observe(&*exec, &mut oom, h)
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
                    tracing::warn!(service = %exec.service(), error = %e, "docker event stream broke; subscribing again");
                    break;
                }
            }
        }
        if let Some((ev, _)) = held.take()
            && let Some(obs) = observe(&*exec, &mut oom, ev)
            && tx.send(obs).await.is_err()
        {
            return;
        }
        tokio::time::sleep(RESUBSCRIBE).await;
    }
}

/// What one engine event means for the guard, if anything.
fn observe(
    exec: &impl Containers,
    oom: &mut HashSet<String>,
    ev: ContainerEvent,
) -> Option<Observation> {
    // Only containers in a slot count: a pre-flight container is judged by its operation.
    let sv = exec
        .slots()
        .into_iter()
        .find(|sv| matches!(&sv.unit, Unit::Container { id, .. } if *id == ev.id))?;
    let Unit::Container { stopping, .. } = sv.unit else {
        return None;
    };
    match ev.kind {
        EventKind::Oom => {
            oom.insert(ev.id);
            None
        }
        EventKind::Die { exit_code } => {
            let was_oom = oom.remove(&ev.id);
            if stopping {
                return None;
            }
            let how = describe_exit(exit_code, was_oom);
            exec.mark_exited(&ev.id, how.clone(), was_oom);
            Some(Observation::Exit {
                release_id: sv.release_id,
                slot: sv.slot,
                status: how,
                oom: was_oom,
                at_ms: ev.time_ms,
            })
        }
        EventKind::Health(status) if status == "healthy" || status == "unhealthy" => {
            Some(Observation::Health {
                release_id: sv.release_id,
                ok: status == "healthy",
                detail: format!("docker health_status: {status}"),
                at_ms: ev.time_ms,
            })
        }
        EventKind::Health(_) | EventKind::Start => None,
    }
}

async fn cpu_loop(exec: Arc<impl Containers>, engine: Engine, tx: mpsc::Sender<Observation>) {
    let mut tick = tokio::time::interval(CPU_EVERY);
    while !tx.is_closed() {
        tick.tick().await;
        for sv in exec.slots() {
            let Unit::Container { id, .. } = &sv.unit else {
                continue;
            };
            // Each sample takes the engine about a second: ask afresh whether this
            // container is being stopped or has exited, rather than trust the copy.
            if !still_running(&*exec, id) {
                continue;
            }
            let Ok(Some(share)) = engine.cpu_share(id).await else {
                continue;
            };
            let obs = Observation::Resources {
                release_id: sv.release_id,
                slot: sv.slot,
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

/// Whether the container `id` is still in a slot, neither stopping nor exited.
fn still_running(exec: &impl Containers, id: &str) -> bool {
    exec.slots().into_iter().any(|sv| {
        matches!(
            sv.unit,
            Unit::Container { id: ref c, ref exited, stopping } if c == id && !stopping && exited.is_none()
        )
    })
}
