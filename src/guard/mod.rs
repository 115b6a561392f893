//! The guard: sliding windows per service and per release, and the trigger rules that
//! read them. Pure state and arithmetic; the watcher feeds it observations and acts on
//! what `decide` makes of its findings.

pub mod triggers;
pub mod window;

#[cfg(test)]
mod tests {
    use super::triggers::{Verdict, error_rate, error_rate_recent, latency_p95};
    use super::window::Window;
    use crate::config::{ErrorRateRule, LatencyRule};
    use proptest::prelude::*;

    /// xorshift64*: a deterministic stream of numbers from a proptest seed.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> f64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(12))]
        /// A healthy release with 1% background errors and latency jitter (a 2-20 ms
        /// spread with rare 100 ms outliers) at 200 req/s never fires the error-rate or
        /// latency rule, evaluated every second over three minutes.
        #[test]
        fn a_healthy_release_never_triggers(seed in 1u64..u64::MAX) {
            let mut rng = Rng(seed);
            let er = ErrorRateRule::default();
            let lat = LatencyRule::default();
            let mut errors_w = Window::new(er.window_secs);
            let mut lat_w = Window::new(lat.window_secs);
            let mut recent = std::collections::VecDeque::new();
            let baseline_us = 15_000;
            for ms in (0..180_000i64).step_by(5) {
                let error = rng.next() < 0.01;
                let jitter = 2_000.0 + rng.next() * 18_000.0;
                let latency = if rng.next() < 0.005 { 100_000.0 } else { jitter } as u64;
                errors_w.add(ms, error, latency);
                lat_w.add(ms, error, latency);
                if recent.len() == 2 * er.min_samples as usize {
                    recent.pop_front();
                }
                recent.push_back(error);
                let recent_errors = recent.iter().filter(|e| **e).count() as u64;
                let v = error_rate_recent(&er, recent_errors, recent.len() as u64, 1, ms);
                prop_assert!(!matches!(v, Verdict::Fired(_)), "recent error_rate fired at {ms} ms: {v:?}");
                if ms % 1000 == 0 {
                    let v = error_rate(&er, &errors_w.stats(ms), 1, ms);
                    prop_assert!(!matches!(v, Verdict::Fired(_)), "error_rate fired at {ms} ms: {v:?}");
                    let v = latency_p95(&lat, &lat_w, Some(baseline_us), 1, ms);
                    prop_assert!(!matches!(v, Verdict::Fired(_)), "latency fired at {ms} ms: {v:?}");
                }
            }
        }
    }
}
