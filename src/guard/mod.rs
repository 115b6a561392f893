//! The guard: sliding windows per service and per release, and the trigger rules that
//! read them. Pure state and arithmetic; the watcher feeds it observations and acts on
//! what `decide` makes of its findings.

pub mod detector;
pub mod recent;
pub mod requests;
pub mod triggers;
pub mod window;

#[cfg(test)]
mod tests {
    use super::detector::{Detector, Spec};
    use super::triggers::{SLOW_SHARE, Verdict, error_rate, latency_limit_us, latency_p95};
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
        /// A healthy release with random 1% background errors and latency jitter (a
        /// 2-20 ms spread with rare 100 ms outliers) at 200 req/s never fires the
        /// error-rate or latency rule, read every second over three minutes, through
        /// the same verdict functions the guard uses.
        #[test]
        fn a_healthy_release_never_triggers(seed in 1u64..u64::MAX) {
            let mut rng = Rng(seed);
            let er = ErrorRateRule::default();
            let lat = LatencyRule::default();
            let mut errors = Detector::new(Spec::new(er.above, er.requests_per_false_alarm));
            let mut slow = Detector::new(Spec::new(SLOW_SHARE, lat.requests_per_false_alarm));
            let mut lat_w = Window::new(lat.window);
            let baseline_us = 15_000;
            let limit = latency_limit_us(&lat, baseline_us);
            for ms in (0..180_000i64).step_by(5) {
                let error = rng.next() < 0.01;
                let jitter = 2_000.0 + rng.next() * 18_000.0;
                let latency = if rng.next() < 0.005 { 100_000.0 } else { jitter } as u64;
                errors.observe(ms, error);
                slow.observe(ms, latency >= limit);
                lat_w.add(ms, error, latency);
                if ms % 1000 == 0 {
                    let v = error_rate(&er, &errors, &lat_w.stats(ms), 1, ms);
                    prop_assert!(!matches!(v, Verdict::Fired(_)), "error_rate fired at {ms} ms: {v:?}");
                    let v = latency_p95(&lat, Some(&slow), &lat_w, Some(baseline_us), 1, ms);
                    prop_assert!(!matches!(v, Verdict::Fired(_)), "latency fired at {ms} ms: {v:?}");
                }
            }
        }
    }
}
