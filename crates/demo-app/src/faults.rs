//! Which requests get a fault: the seeded per-request draws of random mode and the exact
//! spread of even mode, a pure function of the arguments and a request's index.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::args::{DemoAppArgs, FaultMode};

/// The golden-ratio increment of splitmix64.
const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// splitmix64's output function: a bijection of 64 bits that turns neighbouring inputs into
/// unrelated-looking outputs.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Maps 64 random bits to a uniform value in `[0, 1)`, from the top 53 bits (an f64's precision).
fn unit_interval(bits: u64) -> f64 {
    (bits >> 11) as f64 * (1.0 / (1_u64 << 53) as f64)
}

/// A seed that differs from run to run, for when no `--seed` is given.
///
/// The clock and the pid alone are not enough: in a container the pid is usually 1, and two
/// servers in one process (tests) share a pid. The call counter separates the latter, and the
/// standard library's per-process random hash keys separate the former.
pub(super) fn fresh_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let calls = CALLS.fetch_add(1, Ordering::Relaxed);
    let hashed = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut seed = mix64(now_ms);
    seed = mix64(seed ^ u64::from(std::process::id()));
    seed = mix64(seed ^ calls);
    seed ^ hashed
}

/// The independent random streams a request draws from, one per kind of fault, so that
/// whether a request fails says nothing about whether it is slow.
#[derive(Debug, Clone, Copy)]
enum Stream {
    Error = 1,
    Background = 2,
    Slow = 3,
    Jitter = 4,
}

/// A share of requests that get one fault.
#[derive(Debug, Clone, Copy)]
struct Share {
    /// The probability of a random draw.
    ratio: f64,
    /// The same in parts per million, so the even pattern is integer arithmetic and exact
    /// rather than subject to floating-point rounding.
    ppm: u64,
}

impl Share {
    fn new(ratio: f64) -> Self {
        Self {
            ratio,
            ppm: (ratio * 1_000_000.0).round() as u64,
        }
    }

    /// Whether index `n` is in the even spread: exactly when `floor((n+1)*r) > floor(n*r)`,
    /// so the first `k` indexes always hold `floor(k*r)` and the ratio is exact over any run.
    fn in_even_spread(self, n: u64) -> bool {
        let (n, ppm) = (u128::from(n), u128::from(self.ppm));
        (n + 1) * ppm / 1_000_000 > n * ppm / 1_000_000
    }

    /// A Bernoulli draw with probability `ratio` from 64 uniform random bits. A ratio of 1
    /// always hits and 0 never does, because the uniform value is below 1 and at least 0.
    fn hit_by(self, bits: u64) -> bool {
        unit_interval(bits) < self.ratio
    }
}

/// Decides, from a request's index alone, which faults it gets: a pure function of the
/// arguments and the seed, so it is tested without a server.
///
/// In random mode, the draw for index `n` of a stream is the `n`-th output of splitmix64
/// started from a state derived from the seed and the stream. That needs no shared mutable
/// generator (concurrent connections only bump an atomic counter for their index) and makes
/// the sequence of outcomes by index reproducible for a given seed.
#[derive(Debug, Clone)]
pub(super) struct Faults {
    mode: FaultMode,
    seed: u64,
    error: Share,
    background: Share,
    slow: Share,
    jitter_ms: u64,
}

impl Faults {
    pub(super) fn new(args: &DemoAppArgs) -> Self {
        Self {
            mode: args.fault_mode,
            seed: args.seed.unwrap_or_else(fresh_seed),
            error: Share::new(args.error_ratio),
            background: Share::new(args.background_error_ratio),
            slow: Share::new(args.slow_ratio),
            jitter_ms: args.jitter_ms,
        }
    }

    /// 64 uniform random bits for index `n` of `stream`.
    fn draw(&self, stream: Stream, n: u64) -> u64 {
        let start = mix64(
            self.seed
                .wrapping_add((stream as u64).wrapping_mul(GOLDEN_GAMMA)),
        );
        mix64(start.wrapping_add(n.wrapping_add(1).wrapping_mul(GOLDEN_GAMMA)))
    }

    fn hits(&self, share: Share, stream: Stream, n: u64) -> bool {
        match self.mode {
            FaultMode::Random => share.hit_by(self.draw(stream, n)),
            FaultMode::Even => share.in_even_spread(n),
        }
    }

    /// Whether the `n`-th `/api` request (from 0) since the misbehaviours began fails.
    pub(super) fn should_fail(&self, n: u64) -> bool {
        self.hits(self.error, Stream::Error, n)
    }

    /// Whether the `n`-th `/api` request (from 0) since the misbehaviours began is slow.
    pub(super) fn is_slow(&self, n: u64) -> bool {
        self.hits(self.slow, Stream::Slow, n)
    }

    /// Whether the request numbered `request_number` (the `request` field of `/api`, from 1,
    /// counting every request) fails as background noise.
    pub(super) fn background_fails(&self, request_number: u64) -> bool {
        self.hits(self.background, Stream::Background, request_number)
    }

    /// The jitter added to the request numbered `request_number`: uniform in
    /// `0..=--jitter-ms` at microsecond resolution.
    pub(super) fn jitter(&self, request_number: u64) -> Duration {
        if self.jitter_ms == 0 {
            return Duration::ZERO;
        }
        let choices = self.jitter_ms.saturating_mul(1000).saturating_add(1);
        let micros = match self.mode {
            // Lemire's multiply-shift maps the draw onto the choices without a division.
            FaultMode::Random => {
                let bits = self.draw(Stream::Jitter, request_number);
                ((u128::from(bits) * u128::from(choices)) >> 64) as u64
            }
            // Unseeded, as it always was: a fixed pseudo-random value per request number.
            FaultMode::Even => mix64(request_number.wrapping_add(GOLDEN_GAMMA)) % choices,
        };
        Duration::from_micros(micros)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::APP_NAME;
    use clap::Parser;

    #[test]
    fn even_failure_pattern_is_exact() {
        let faults = Faults::new(&DemoAppArgs {
            error_ratio: 0.1,
            fault_mode: FaultMode::Even,
            ..DemoAppArgs::default()
        });
        let failures = (0..1000).filter(|&n| faults.should_fail(n)).count();
        assert_eq!(failures, 100);
        assert!(faults.should_fail(9) && !faults.should_fail(8));
    }

    /// Faults built from a command line, the way `serve` builds them.
    fn faults(flags: &[&str]) -> Faults {
        let args =
            DemoAppArgs::try_parse_from(std::iter::once(APP_NAME).chain(flags.iter().copied()))
                .expect("test flags parse");
        Faults::new(&args)
    }

    /// The first `count` outcomes of `decide`, by index from 0.
    fn outcomes(count: u64, decide: impl Fn(u64) -> bool) -> Vec<bool> {
        (0..count).map(decide).collect()
    }

    /// Asserts that `hits` out of `trials` Bernoulli(`p`) draws is within 4.5 standard
    /// deviations of the mean: a fixed seed makes the test deterministic, and the bound is
    /// still tight enough (about ±1.4 points at p = 0.1 over 20,000) to catch a wrong or
    /// skewed probability.
    fn assert_binomial(hits: usize, trials: usize, p: f64, what: &str) {
        let mean = trials as f64 * p;
        let bound = 4.5 * (mean * (1.0 - p)).sqrt();
        assert!(
            (hits as f64 - mean).abs() <= bound,
            "{what}: {hits} of {trials}, expected {mean} ± {bound:.0}"
        );
    }

    fn longest_run(outcomes: &[bool]) -> usize {
        let mut longest = 0;
        let mut current = 0;
        for &hit in outcomes {
            current = if hit { current + 1 } else { 0 };
            longest = longest.max(current);
        }
        longest
    }

    /// The number of hits in each aligned block of 100.
    fn block_counts(outcomes: &[bool]) -> Vec<usize> {
        outcomes
            .chunks(100)
            .map(|block| block.iter().filter(|&&hit| hit).count())
            .collect()
    }

    #[test]
    fn random_failures_match_the_ratio() {
        // Several seeds and ratios, so a probability that is off (a ppm/ratio mix-up, a
        // comparison the wrong way round, a skewed uniform) cannot hide behind one lucky case.
        for (seed, ratio) in [
            ("1", 0.01),
            ("2", 0.07),
            ("3", 0.1),
            ("4", 0.3),
            ("5", 0.5),
            ("6", 0.9),
        ] {
            let ratio_text = ratio.to_string();
            let f = faults(&[
                "--fault-mode",
                "random",
                "--seed",
                seed,
                "--error-ratio",
                &ratio_text,
            ]);
            let failures = outcomes(20_000, |n| f.should_fail(n));
            let hits = failures.iter().filter(|&&hit| hit).count();
            assert_binomial(hits, 20_000, ratio, &format!("seed {seed} ratio {ratio}"));
        }
        let always = faults(&["--fault-mode", "random", "--error-ratio", "1"]);
        assert!((0..20_000).all(|n| always.should_fail(n)));
        let never = faults(&["--fault-mode", "random", "--error-ratio", "0"]);
        assert!(!(0..20_000).any(|n| never.should_fail(n)));
    }

    #[test]
    fn random_failures_bunch_up_as_an_even_spread_never_does() {
        let args = ["--seed", "42", "--error-ratio", "0.1", "--fault-mode"];
        let random_faults = faults(&[&args[..], &["random"]].concat());
        let even_faults = faults(&[&args[..], &["even"]].concat());
        let random = outcomes(20_000, |n| random_faults.should_fail(n));
        let even = outcomes(20_000, |n| even_faults.should_fail(n));

        // An even spread at 0.1 puts exactly 10 failures in every aligned block of 100 and
        // never two in a row; the same checks on it show they tell the two apart.
        let even_blocks = block_counts(&even);
        assert!(
            even_blocks.iter().all(|&count| count == 10),
            "{even_blocks:?}"
        );
        assert_eq!(longest_run(&even), 1);

        // Random failures do what an even spread cannot: blocks far from 10 and runs of
        // failures. Falling back to the even pattern, or drawing the same value for
        // neighbouring indexes, fails here.
        let blocks = block_counts(&random);
        assert!(blocks.iter().any(|&count| count <= 5), "{blocks:?}");
        assert!(blocks.iter().any(|&count| count >= 15), "{blocks:?}");
        assert!(longest_run(&random) >= 3, "no run of 3 failures in 20,000");
        // The block counts vary as Binomial(100, 0.1) does (variance 9): a generator with
        // correlated neighbours would make them vary much more or much less.
        let mean = blocks.iter().sum::<usize>() as f64 / blocks.len() as f64;
        let variance = blocks
            .iter()
            .map(|&count| (count as f64 - mean).powi(2))
            .sum::<f64>()
            / (blocks.len() - 1) as f64;
        assert!(
            (5.4..=12.6).contains(&variance),
            "block variance {variance}"
        );
    }

    /// Every fault's share at one half: the most draws to compare.
    const EVERY_SHARE_HALF: &[&str] = &[
        "--error-ratio",
        "0.5",
        "--background-error-ratio",
        "0.5",
        "--slow-ratio",
        "0.5",
    ];

    #[test]
    fn the_same_seed_gives_the_same_outcomes() {
        let flags = |seed: &'static str| {
            let mut args = vec![
                "--fault-mode",
                "random",
                "--seed",
                seed,
                "--jitter-ms",
                "20",
            ];
            args.extend_from_slice(EVERY_SHARE_HALF);
            faults(&args)
        };
        let everything = |f: &Faults| -> Vec<(bool, bool, bool, Duration)> {
            (0..20_000)
                .map(|n| {
                    (
                        f.should_fail(n),
                        f.is_slow(n),
                        f.background_fails(n + 1),
                        f.jitter(n + 1),
                    )
                })
                .collect()
        };
        let first = everything(&flags("42"));
        assert_eq!(first, everything(&flags("42")));

        // Another seed gives another sequence: about half the failure outcomes disagree.
        // Catches a seed that is parsed but never reaches the draws.
        let other = everything(&flags("43"));
        let differ = first.iter().zip(&other).filter(|(a, b)| a.0 != b.0).count();
        assert_binomial(
            differ,
            20_000,
            0.5,
            "outcomes differing between seeds 42 and 43",
        );
    }

    #[test]
    fn runs_without_a_seed_differ() {
        // Two servers started in the same millisecond in the same process must still differ.
        let seeds: Vec<u64> = (0..100)
            .map(|_| Faults::new(&DemoAppArgs::default()).seed)
            .collect();
        let mut distinct = seeds.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), seeds.len(), "{seeds:?}");
    }

    #[test]
    fn each_fault_draws_independently() {
        // With every share at one half, each pair of faults coincides on about a quarter of
        // the requests; faults sharing a random stream would coincide on half.
        let mut args = vec!["--fault-mode", "random", "--seed", "9"];
        args.extend_from_slice(EVERY_SHARE_HALF);
        let f = faults(&args);
        let both = |a: &dyn Fn(u64) -> bool, b: &dyn Fn(u64) -> bool| {
            (0..20_000).filter(|&n| a(n) && b(n)).count()
        };
        let fail = |n| f.should_fail(n);
        let slow = |n| f.is_slow(n);
        let background = |n| f.background_fails(n);
        assert_binomial(both(&fail, &slow), 20_000, 0.25, "failing and slow");
        assert_binomial(both(&fail, &background), 20_000, 0.25, "failing twice");
        assert_binomial(
            both(&slow, &background),
            20_000,
            0.25,
            "slow and background",
        );
    }

    #[test]
    fn slow_ratio_picks_that_share_of_requests() {
        let random = faults(&[
            "--fault-mode",
            "random",
            "--seed",
            "7",
            "--slow-ratio",
            "0.07",
        ]);
        let slow = outcomes(20_000, |n| random.is_slow(n));
        assert_binomial(
            slow.iter().filter(|&&hit| hit).count(),
            20_000,
            0.07,
            "random slow",
        );
        assert!(longest_run(&slow) >= 2, "random slowness never bunches up");

        let even = faults(&["--fault-mode", "even", "--slow-ratio", "0.07"]);
        assert_eq!((0..1000).filter(|&n| even.is_slow(n)).count(), 70);
        assert_eq!((0..20_000).filter(|&n| even.is_slow(n)).count(), 1400);

        // The default keeps the old behaviour, latency on every request, in both modes.
        for mode in ["random", "even"] {
            let every = faults(&["--fault-mode", mode]);
            assert!((0..20_000).all(|n| every.is_slow(n)), "{mode}");
            let none = faults(&["--fault-mode", mode, "--slow-ratio", "0"]);
            assert!(!(0..20_000).any(|n| none.is_slow(n)), "{mode}");
        }
    }

    #[test]
    fn background_errors_are_random_or_exact() {
        let random = faults(&[
            "--fault-mode",
            "random",
            "--seed",
            "11",
            "--background-error-ratio",
            "0.01",
        ]);
        let hits = (1..=20_000).filter(|&n| random.background_fails(n)).count();
        assert_binomial(hits, 20_000, 0.01, "random background");

        // The even pattern is the one the demo app always had, by request number from 1.
        let even = faults(&["--fault-mode", "even", "--background-error-ratio", "0.01"]);
        let failing: Vec<u64> = (1..=300).filter(|&n| even.background_fails(n)).collect();
        assert_eq!(failing, [99, 199, 299]);
    }

    #[test]
    fn random_jitter_is_uniform_up_to_the_limit() {
        let f = faults(&["--fault-mode", "random", "--seed", "3", "--jitter-ms", "20"]);
        let micros: Vec<u128> = (1..=20_000).map(|n| f.jitter(n).as_micros()).collect();
        let limit = 20_000;
        assert!(micros.iter().all(|&us| us <= limit));
        // Both ends are reached, so the range is 0..=20 ms rather than a slice of it.
        assert!(micros.iter().any(|&us| us < 200));
        assert!(micros.iter().any(|&us| us > limit - 200));
        // Uniform on 0..=20,000 µs: mean 10,000 µs, standard deviation 5,774 µs, so the
        // mean of 20,000 draws is within about 41 µs · 5 of it.
        let mean = micros.iter().sum::<u128>() as f64 / micros.len() as f64;
        assert!((mean - 10_000.0).abs() < 205.0, "mean jitter {mean} µs");
        let below_quarter = micros.iter().filter(|&&us| us < limit / 4).count();
        assert_binomial(below_quarter, 20_000, 0.25, "jitter below 5 ms");

        let none = faults(&["--fault-mode", "random", "--seed", "3"]);
        assert!((1..=1000).all(|n| none.jitter(n).is_zero()));
    }

    #[test]
    fn even_jitter_is_the_old_fixed_pattern() {
        // The formula the demo app used before fault modes existed, written out again so a
        // change to the even mode's jitter cannot pass unnoticed.
        fn old(request_number: u64, jitter_ms: u64) -> Duration {
            let mut z = request_number.wrapping_add(0x9e37_79b9_7f4a_7c15);
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            Duration::from_micros(z % (jitter_ms * 1000 + 1))
        }
        for seed in ["1", "2"] {
            let f = faults(&["--fault-mode", "even", "--seed", seed, "--jitter-ms", "20"]);
            assert!((1..=1000).all(|n| f.jitter(n) == old(n, 20)));
        }
    }
}
