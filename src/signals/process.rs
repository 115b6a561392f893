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
/// The shortest span a CPU share is measured over. /proc counts CPU time in ticks of
/// 10 ms: over a few ms one tick reads as 100% or 1000% of a core. A starved sampler's
/// samples could come that close together, and such a reading is noise, not evidence
/// (it fired the CPU rule at once on a loaded machine).
const MIN_CPU_SPAN: Duration = Duration::from_millis(500);

/// The CPU share of one core between the previous reading (`prev`: ticks, when) and
/// `ticks` at `now`, and whether `now` becomes the next reading's start: none, and the
/// previous reading kept, over a span shorter than [`MIN_CPU_SPAN`].
fn cpu_share(
    prev: Option<(u64, Instant)>,
    ticks: Option<u64>,
    now: Instant,
    hz: f64,
) -> (Option<f64>, bool) {
    match (ticks, prev) {
        (Some(t), Some((p, at))) => {
            let span = now.duration_since(at);
            if span < MIN_CPU_SPAN {
                return (None, false);
            }
            (
                Some(t.saturating_sub(p) as f64 / hz / span.as_secs_f64()),
                true,
            )
        }
        (Some(_), None) => (None, true),
        (None, _) => (None, false),
    }
}

/// Samples until the channel closes.
pub async fn run(exec: Arc<impl SlotSource>, tx: mpsc::Sender<Observation>) {
    let hz = ticks_per_sec() as f64;
    // pid → (last CPU ticks, when), and the pids whose exit was already reported.
    let mut last: HashMap<u32, (u64, Instant)> = HashMap::new();
    let mut reported: Vec<u32> = Vec::new();
    let mut tick = tokio::time::interval(EXIT_POLL);
    // After a stall, no burst of catch-up ticks (their samples would come too close).
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
            let (cpu_share, restart) = cpu_share(last.get(&pid).copied(), ticks, now, hz);
            if let (Some(t), true) = (ticks, restart) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cpu_share_needs_half_a_second_of_span() {
        let t0 = Instant::now();
        let hz = 100.0;
        // The first reading only starts the span.
        assert_eq!(cpu_share(None, Some(50), t0, hz), (None, true));
        // One tick 2 ms later would read as 500% of a core: no reading, start kept.
        assert_eq!(
            cpu_share(Some((50, t0)), Some(51), t0 + Duration::from_millis(2), hz),
            (None, false)
        );
        // 90 ticks over a second: 90% of a core.
        let (share, restart) =
            cpu_share(Some((50, t0)), Some(140), t0 + Duration::from_secs(1), hz);
        assert!((share.unwrap() - 0.9).abs() < 1e-9, "{share:?}");
        assert!(restart);
        // A process gone from /proc: nothing.
        assert_eq!(
            cpu_share(Some((50, t0)), None, t0 + Duration::from_secs(1), hz),
            (None, false)
        );
    }
}
