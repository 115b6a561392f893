//! The misbehaviours that are not about single requests: a memory leak, CPU burn and a
//! crash, begun when `--after-secs` is up.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::APP_NAME;
use super::args::{DemoAppArgs, FaultMode};

/// How often the memory leak grows, so the growth looks steady to anything that samples RSS.
const LEAK_TICK: Duration = Duration::from_millis(100);

/// The memory leak and CPU burn, started when the misbehaviours begin and stopped on drop.
///
/// Stopping on drop matters for in-process tests, where a server that has returned must not
/// keep burning CPU or holding memory; a real process is simply killed.
pub(super) struct Misbehaviour {
    task: Option<tokio::task::JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

impl Misbehaviour {
    pub(super) fn start(args: &DemoAppArgs, at: Instant) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let describe = describe_misbehaviour(args);
        if describe.is_empty() {
            return Self { task: None, stop };
        }
        let leak_per_tick = usize::try_from(args.leak_mb_per_sec.saturating_mul(1024 * 1024) / 10)
            .unwrap_or(usize::MAX);
        let burners = args.cpu_burn;
        let crash = args.crash;
        let burn_stop = Arc::clone(&stop);
        let task = tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            eprintln!("{APP_NAME}: misbehaving now: {}", describe.join(", "));
            if crash {
                std::process::exit(70);
            }
            for index in 0..burners {
                start_burner(index, Arc::clone(&burn_stop));
            }
            if leak_per_tick > 0 {
                leak_forever(leak_per_tick).await;
            }
        });
        Self {
            task: Some(task),
            stop,
        }
    }
}

impl Drop for Misbehaviour {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Lists the active misbehaviours for the message printed when they begin.
fn describe_misbehaviour(args: &DemoAppArgs) -> Vec<String> {
    let mut parts = Vec::new();
    if args.error_ratio > 0.0 {
        parts.push(format!("error-ratio {}", args.error_ratio));
    }
    let slow = args.latency_ms > 0 && args.slow_ratio > 0.0;
    if slow && args.slow_ratio >= 1.0 {
        parts.push(format!("latency {}ms", args.latency_ms));
    } else if slow {
        parts.push(format!(
            "latency {}ms on slow-ratio {} of requests",
            args.latency_ms, args.slow_ratio
        ));
    }
    if args.error_ratio > 0.0 || slow {
        parts.push(match (args.fault_mode, args.seed) {
            (FaultMode::Random, Some(seed)) => format!("random faults (seed {seed})"),
            (FaultMode::Random, None) => "random faults".to_owned(),
            (FaultMode::Even, _) => "evenly spread faults".to_owned(),
        });
    }
    if args.leak_mb_per_sec > 0 {
        parts.push(format!("leak {} MiB/s", args.leak_mb_per_sec));
    }
    if args.cpu_burn > 0 {
        parts.push(format!("cpu-burn on {} thread(s)", args.cpu_burn));
    }
    if args.fail_health {
        parts.push("failing health".to_owned());
    }
    if args.crash {
        parts.push("crash (exit 70)".to_owned());
    }
    parts
}

/// Allocates `per_tick` bytes every tick and keeps them until the task is aborted.
async fn leak_forever(per_tick: usize) {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    let mut ticks = tokio::time::interval(LEAK_TICK);
    loop {
        ticks.tick().await;
        // A non-zero fill writes every page, so the memory is resident and not merely
        // reserved; zeroed allocations can be served by untouched pages that never count.
        let block = vec![0xA5_u8; per_tick];
        hoard.push(std::hint::black_box(block));
    }
}

/// Starts one thread that spins until `stop` is set.
fn start_burner(index: usize, stop: Arc<AtomicBool>) {
    let spawned = std::thread::Builder::new()
        .name(format!("demo-cpu-burn-{index}"))
        .spawn(move || {
            let mut x: u64 = 1;
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..100_000 {
                    // The black box keeps the optimiser from deleting the busy loop.
                    x = std::hint::black_box(
                        x.wrapping_mul(6_364_136_223_846_793_005)
                            .wrapping_add(1_442_695_040_888_963_407),
                    );
                }
            }
        });
    if let Err(err) = spawned {
        eprintln!("{APP_NAME}: cannot start cpu-burn thread {index}: {err}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_names_the_mode_seed_and_slow_ratio() {
        let args = DemoAppArgs {
            error_ratio: 0.3,
            latency_ms: 300,
            slow_ratio: 0.07,
            seed: Some(5),
            ..DemoAppArgs::default()
        };
        assert_eq!(
            describe_misbehaviour(&args),
            [
                "error-ratio 0.3",
                "latency 300ms on slow-ratio 0.07 of requests",
                "random faults (seed 5)"
            ]
        );
        let even = DemoAppArgs {
            fault_mode: FaultMode::Even,
            slow_ratio: 1.0,
            ..args.clone()
        };
        assert_eq!(
            describe_misbehaviour(&even),
            ["error-ratio 0.3", "latency 300ms", "evenly spread faults"]
        );
        // A latency that no request gets is no misbehaviour.
        let never_slow = DemoAppArgs {
            latency_ms: 300,
            slow_ratio: 0.0,
            ..DemoAppArgs::default()
        };
        assert!(describe_misbehaviour(&never_slow).is_empty());
    }
}
