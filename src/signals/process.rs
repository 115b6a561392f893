//! The process runtime's own facts about each running release: CPU share and resident
//! memory from /proc every second, and exits ripcord did not ask for (a crash, or a kill
//! for exceeding the memory limit) within a fifth of a second.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::{Observation, SlotSource, Unit};
use crate::clock::now_ms;
use crate::os::{cpu_ticks, rss_mb, ticks_per_sec};

const EXIT_POLL: Duration = Duration::from_millis(200);
const SAMPLE_EVERY: u32 = 5;

/// Samples until the channel closes.
pub async fn run(exec: Arc<impl SlotSource>, tx: mpsc::Sender<Observation>) {
    let hz = ticks_per_sec() as f64;
    // pid → (last CPU ticks, when), and the pids whose exit was already reported.
    let mut last: HashMap<u32, (u64, Instant)> = HashMap::new();
    let mut reported: Vec<u32> = Vec::new();
    let mut tick = tokio::time::interval(EXIT_POLL);
    let mut n: u32 = 0;
    loop {
        tick.tick().await;
        if tx.is_closed() {
            return;
        }
        n = n.wrapping_add(1);
        for sv in exec.slots() {
            // An external slot's process is not ours to watch.
            let Unit::Process {
                pid,
                exited,
                stopping,
                oom_killed,
            } = sv.unit
            else {
                continue;
            };
            if let Some(status) = exited {
                if !stopping && !reported.contains(&pid) {
                    reported.push(pid);
                    let obs = Observation::Exit {
                        release_id: sv.release_id,
                        slot: sv.slot,
                        status,
                        oom: oom_killed,
                        at_ms: now_ms(),
                    };
                    if tx.send(obs).await.is_err() {
                        return;
                    }
                }
                continue;
            }
            if !n.is_multiple_of(SAMPLE_EVERY) {
                continue;
            }
            let now = Instant::now();
            let ticks = cpu_ticks(pid);
            let cpu_share = match (ticks, last.get(&pid)) {
                (Some(t), Some((prev, at))) => {
                    let secs = now.duration_since(*at).as_secs_f64();
                    (secs > 0.0).then(|| t.saturating_sub(*prev) as f64 / hz / secs)
                }
                _ => None,
            };
            if let Some(t) = ticks {
                last.insert(pid, (t, now));
            }
            let obs = Observation::Resources {
                release_id: sv.release_id,
                slot: sv.slot,
                cpu_share,
                rss_mb: rss_mb(pid),
                at_ms: now_ms(),
            };
            if tx.send(obs).await.is_err() {
                return;
            }
        }
        // Forget pids that are gone, so the maps stay small.
        let live: Vec<u32> = exec
            .slots()
            .into_iter()
            .filter_map(|sv| match sv.unit {
                Unit::Process { pid, .. } => Some(pid),
                Unit::External | Unit::Container { .. } => None,
            })
            .collect();
        last.retain(|pid, _| live.contains(pid));
        reported.retain(|pid| live.contains(pid));
    }
}
