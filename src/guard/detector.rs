//! The sequential detector behind the rate rules (5xx ratio, share of slow requests):
//! a bank of one-sided Bernoulli CUSUMs on the per-request stream, with a false-alarm
//! rate that holds however often the verdict is looked at, over a release's whole life.
//!
//! Each request is a Bernoulli trial: bad (a 5xx, or slower than the latency limit) or
//! not. A release is *healthy* while its bad share is at most `healthy` (0.8 × the
//! threshold by default) and *bad* from `threshold` on. Arm `j` of the bank tests
//! "healthy" against "bad share = p1_j" with the CUSUM
//!
//! ```text
//! S_j ← max(0, S_j + x),   x = ln(p1_j / p0) for a bad request, ln((1-p1_j)/(1-p0)) else
//! ```
//!
//! and fires when `S_j ≥ ln(K / α)`, where `K` is the number of arms and `α` the
//! false-alarm budget per request. The arms cover the bad zone from the threshold up to
//! a total failure, so a 100% failure is caught by the arm tuned to it within a handful
//! of requests and a failure just over the threshold by the arm tuned to that.
//!
//! The guarantee (docs/guard-statistics.md has the derivation): for a release whose
//! requests fail independently with any probability ≤ p0, the chance of a false alarm
//! within its first N requests is at most N·α, and the expected number of requests to
//! a false alarm is at least 1/α. The verdict depends only on the requests, never on how
//! often it is read: the state moves per request and an alarm latches.
//!
//! Pure: no clock (requests carry their own time), no IO.

use serde::Serialize;

pub use crate::config::DEFAULT_REQUESTS_PER_FALSE_ALARM;

/// The healthy zone's upper edge, as a share of the threshold.
pub const HEALTHY_SHARE_OF_THRESHOLD: f64 = 0.8;

/// The most an arm is tuned to: a total failure (1.0 itself would make one good
/// request infinite evidence of health).
const TOP_ARM: f64 = 0.99;

/// How many arms the bank has. More arms match each failure level more closely but
/// split the budget further (each costs ln(K) of evidence); six was the best trade in
/// the simulation benchmark (`cargo bench --bench guard_sim`).
const ARMS: usize = 6;

/// The statistical shape of a rule: where healthy ends, where bad begins, and how rare
/// a false alarm must be.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spec {
    /// A bad share at or above this is a failing release.
    pub threshold: f64,
    /// A bad share at or below this is healthy: the false-alarm guarantee holds here.
    pub healthy: f64,
    /// At most one false alarm per this many requests (1/α).
    pub requests_per_false_alarm: f64,
}

impl Spec {
    pub fn new(threshold: f64, requests_per_false_alarm: f64) -> Self {
        Spec {
            threshold,
            healthy: threshold * HEALTHY_SHARE_OF_THRESHOLD,
            requests_per_false_alarm,
        }
    }

    /// The tuning points of the arms, from the threshold up to a total failure, spaced
    /// evenly in log-odds.
    pub fn arm_points(&self) -> Vec<f64> {
        let lo = logit(self.threshold.clamp(1e-6, TOP_ARM));
        let hi = logit(TOP_ARM);
        if hi <= lo {
            return vec![TOP_ARM];
        }
        (0..ARMS)
            .map(|j| expit(lo + (hi - lo) * j as f64 / (ARMS - 1) as f64))
            .collect()
    }

    /// The evidence (a log-likelihood ratio, in nats) an arm needs to fire: ln(K/α).
    pub fn needed(&self) -> f64 {
        (self.arm_points().len() as f64 * self.requests_per_false_alarm).ln()
    }

    /// The information limit: the fewest requests any test with this false-alarm rate
    /// can need, on average, to tell a bad share `p` from the healthy edge:
    /// ln(1/α) / KL(p ‖ p0).
    pub fn information_limit(&self, p: f64) -> f64 {
        self.requests_per_false_alarm.ln() / kl(p, self.healthy)
    }

    /// An upper bound on the false alarms per request for a release whose bad share is
    /// `p` ≤ p0: Σ_j exp(−θ_j·h), with θ_j ≥ 1 the root of E_p[exp(θ·x_j)] = 1 (at
    /// p = p0 every θ_j is 1 and the sum is α).
    pub fn false_alarm_bound(&self, p: f64) -> f64 {
        let h = self.needed();
        self.arm_points()
            .into_iter()
            .map(|p1| {
                let (up, down) = increments(p1, self.healthy);
                (-tilt_root(p, up, down) * h).exp()
            })
            .sum()
    }
}

fn logit(p: f64) -> f64 {
    (p / (1.0 - p)).ln()
}

fn expit(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// KL(p ‖ q) for Bernoulli distributions, in nats.
pub fn kl(p: f64, q: f64) -> f64 {
    let term = |a: f64, b: f64| if a <= 0.0 { 0.0 } else { a * (a / b).ln() };
    term(p, q) + term(1.0 - p, 1.0 - q)
}

/// An arm's evidence for a bad request and for a good one.
fn increments(p1: f64, p0: f64) -> (f64, f64) {
    ((p1 / p0).ln(), ((1.0 - p1) / (1.0 - p0)).ln())
}

/// The θ ≥ 1 with p·e^{θ·up} + (1−p)·e^{θ·down} = 1 (a bisection; p ≤ p0 assumed).
fn tilt_root(p: f64, up: f64, down: f64) -> f64 {
    let f = |t: f64| p * (t * up).exp() + (1.0 - p) * (t * down).exp() - 1.0;
    if p <= 0.0 {
        return f64::INFINITY;
    }
    let (mut lo, mut hi) = (1.0, 2.0);
    while f(hi) < 0.0 && hi < 1e6 {
        lo = hi;
        hi *= 2.0;
    }
    for _ in 0..100 {
        let mid = (lo + hi) / 2.0;
        if f(mid) < 0.0 {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    lo
}

/// One CUSUM of the bank, with the stretch of requests its evidence comes from.
#[derive(Debug, Clone)]
struct Arm {
    p1: f64,
    up: f64,
    down: f64,
    /// The evidence, in nats: the log-likelihood ratio of the current stretch.
    s: f64,
    /// The stretch since the statistic last left zero: its requests, its bad ones and
    /// when it began (the CUSUM's estimate of when the change happened).
    n: u64,
    k: u64,
    since_ms: i64,
}

/// What made the detector fire, for people: the arm, its evidence and the stretch.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alarm {
    /// The bad share the firing arm is tuned to.
    pub tuned_to: f64,
    pub evidence: f64,
    pub needed: f64,
    /// The stretch of requests behind the evidence: how many, how many bad, since when.
    pub stretch_requests: u64,
    pub stretch_bad: u64,
    pub stretch_since_ms: i64,
    /// The request that crossed: its time and its number since the detector started.
    pub at_ms: i64,
    pub request: u64,
    /// Everything since the detector started, at the crossing.
    pub total: u64,
    pub total_bad: u64,
}

/// The strongest evidence so far, for `status` while nothing fires.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evidence {
    pub evidence: f64,
    pub needed: f64,
    pub tuned_to: f64,
    pub stretch_requests: u64,
    pub stretch_bad: u64,
}

#[derive(Debug, Clone)]
pub struct Detector {
    spec: Spec,
    needed: f64,
    arms: Vec<Arm>,
    total: u64,
    bad: u64,
    alarm: Option<Alarm>,
}

impl Detector {
    pub fn new(spec: Spec) -> Self {
        let arms = spec
            .arm_points()
            .into_iter()
            .map(|p1| {
                let (up, down) = increments(p1, spec.healthy);
                Arm {
                    p1,
                    up,
                    down,
                    s: 0.0,
                    n: 0,
                    k: 0,
                    since_ms: 0,
                }
            })
            .collect();
        Detector {
            needed: spec.needed(),
            spec,
            arms,
            total: 0,
            bad: 0,
            alarm: None,
        }
    }

    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    /// Takes one request. Once the detector has fired it stays fired (the release is
    /// bad), and further requests only count in the totals.
    pub fn observe(&mut self, at_ms: i64, bad: bool) {
        self.total += 1;
        self.bad += u64::from(bad);
        if self.alarm.is_some() {
            return;
        }
        for arm in self.arms.iter_mut() {
            let next = arm.s + if bad { arm.up } else { arm.down };
            if next <= 0.0 {
                arm.s = 0.0;
                arm.n = 0;
                arm.k = 0;
                continue;
            }
            if arm.n == 0 {
                arm.since_ms = at_ms;
            }
            arm.s = next;
            arm.n += 1;
            arm.k += u64::from(bad);
        }
        // The arm with the most evidence speaks for the alarm when several cross at once.
        let best = self
            .arms
            .iter()
            .filter(|a| a.s >= self.needed)
            .max_by(|a, b| a.s.total_cmp(&b.s));
        if let Some(arm) = best {
            self.alarm = Some(Alarm {
                tuned_to: arm.p1,
                evidence: arm.s,
                needed: self.needed,
                stretch_requests: arm.n,
                stretch_bad: arm.k,
                stretch_since_ms: arm.since_ms,
                at_ms,
                request: self.total,
                total: self.total,
                total_bad: self.bad,
            });
        }
    }

    pub fn alarm(&self) -> Option<&Alarm> {
        self.alarm.as_ref()
    }

    /// Requests and bad ones since the detector started.
    pub fn totals(&self) -> (u64, u64) {
        (self.total, self.bad)
    }

    /// The arm with the most evidence right now.
    pub fn evidence(&self) -> Evidence {
        let best = self
            .arms
            .iter()
            .max_by(|a, b| a.s.total_cmp(&b.s))
            .expect("a bank has arms");
        Evidence {
            evidence: best.s,
            needed: self.needed,
            tuned_to: best.p1,
            stretch_requests: best.n,
            stretch_bad: best.k,
        }
    }

    /// Whether the requests so far show, with 99% confidence, a bad share below the
    /// threshold (a one-sided Wilson upper bound): enough to end a bake. Until then the
    /// previous release stays warm.
    pub fn cleared(&self) -> bool {
        self.alarm.is_none()
            && self.total > 0
            && wilson_upper(self.bad, self.total, Z_CLEAR) < self.spec.threshold
    }

    /// The one-sided 99% upper bound on the bad share so far.
    pub fn upper_bound(&self) -> f64 {
        wilson_upper(self.bad, self.total, Z_CLEAR)
    }
}

/// z for a one-sided 99% bound.
const Z_CLEAR: f64 = 2.326;

/// The Wilson score interval's upper bound for `k` successes in `n` trials.
pub fn wilson_upper(k: u64, n: u64, z: f64) -> f64 {
    if n == 0 {
        return 1.0;
    }
    let n_f = n as f64;
    let p = k as f64 / n_f;
    let z2 = z * z;
    let centre = p + z2 / (2.0 * n_f);
    let spread = z * (p * (1.0 - p) / n_f + z2 / (4.0 * n_f * n_f)).sqrt();
    ((centre + spread) / (1.0 + z2 / n_f)).min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// splitmix64: a seeded stream of uniforms in [0, 1).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> f64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    fn spec() -> Spec {
        Spec::new(0.10, 1e8)
    }

    /// Feeds `n` requests failing at random with probability `p`, 10 ms apart; returns
    /// the request number (from 1, counted from this call) at which the alarm fired.
    fn feed(d: &mut Detector, rng: &mut Rng, p: f64, n: u64, t0: i64) -> Option<u64> {
        let before = d.totals().0;
        for i in 0..n {
            d.observe(t0 + i as i64 * 10, rng.next() < p);
            if let Some(a) = d.alarm() {
                return Some(a.request - before);
            }
        }
        None
    }

    #[test]
    fn the_numbers_in_the_docs() {
        let s = spec();
        assert!((s.healthy - 0.08).abs() < 1e-12);
        // ln(10^8) / KL(p || 0.08): the issue's 7, 90 and 1,930 requests.
        assert!((7.0..7.6).contains(&s.information_limit(1.0)));
        assert!((88.0..92.0).contains(&s.information_limit(0.30)));
        assert!((1900.0..1960.0).contains(&s.information_limit(0.12)));
        let arms = s.arm_points();
        assert_eq!(arms.len(), ARMS);
        assert!((arms[0] - 0.10).abs() < 1e-9, "{arms:?}");
        assert!((arms[ARMS - 1] - TOP_ARM).abs() < 1e-9, "{arms:?}");
        assert!(arms.windows(2).all(|w| w[0] < w[1]), "{arms:?}");
        assert!((s.needed() - (ARMS as f64 * 1e8).ln()).abs() < 1e-9);
    }

    #[test]
    fn the_analytic_bound_is_alpha_at_the_healthy_edge_and_falls_below_it() {
        let s = spec();
        let at_edge = s.false_alarm_bound(s.healthy);
        assert!((at_edge * 1e8 - 1.0).abs() < 1e-6, "{at_edge}");
        let mut last = at_edge;
        for p in [0.07, 0.05, 0.02, 0.01] {
            let b = s.false_alarm_bound(p);
            assert!(b < last, "bound at {p} is {b}, not below {last}");
            last = b;
        }
        assert!(s.false_alarm_bound(0.05) * 1e8 < 1e-2);
    }

    #[test]
    fn a_total_failure_is_caught_within_a_handful_of_requests() {
        for seed in 1..=20 {
            let mut rng = Rng(seed);
            let mut d = Detector::new(spec());
            assert_eq!(feed(&mut d, &mut rng, 0.01, 5_000, 0), None, "seed {seed}");
            let n = feed(&mut d, &mut rng, 1.0, 100, 50_000).expect("fires");
            // ln(6·10^8) / ln(0.99 / 0.08) = 8.06: the ninth bad request crosses.
            assert_eq!(n, 9, "seed {seed}");
            let a = d.alarm().unwrap();
            assert_eq!(a.stretch_bad, a.stretch_requests, "{a:?}");
            assert!(a.stretch_requests <= 10, "{a:?}");
            assert!((a.tuned_to - TOP_ARM).abs() < 1e-9, "{a:?}");
            assert!(a.evidence >= a.needed);
        }
    }

    #[test]
    fn at_one_request_a_second_a_total_failure_needs_no_sample_minimum() {
        let mut d = Detector::new(spec());
        for i in 0..9 {
            assert!(d.alarm().is_none(), "fired after {i} requests");
            d.observe(i * 1000, true);
        }
        let a = d.alarm().expect("nine failures in nine seconds fire");
        assert_eq!(a.at_ms - a.stretch_since_ms, 8_000);
    }

    /// Either side of the line, on seeded random streams: a release at the healthy edge
    /// (8%) stays for a million requests; one just over the threshold (10.5%) and one at
    /// 12% are caught, the latter within the 60 s (6,000 requests at 100 req/s) target.
    #[test]
    fn either_side_of_the_threshold() {
        let mut caught_12 = vec![];
        for seed in 1..=8 {
            let mut rng = Rng(1000 + seed);
            let mut d = Detector::new(spec());
            assert_eq!(
                feed(&mut d, &mut rng, 0.08, 1_000_000, 0),
                None,
                "a healthy 8% release fired (seed {seed})"
            );
            let mut d = Detector::new(spec());
            assert!(
                feed(&mut d, &mut rng, 0.105, 200_000, 0).is_some(),
                "10.5% never fired (seed {seed})"
            );
            let mut d = Detector::new(spec());
            caught_12.push(feed(&mut d, &mut rng, 0.12, 100_000, 0).expect("12% fires"));
        }
        caught_12.sort();
        assert!(caught_12[caught_12.len() / 2] < 6_000, "{caught_12:?}");
    }

    /// With a budget small enough to see false alarms at all (1 per 10^4 requests), the
    /// measured rate at the healthy edge stays under the budget, and a release below the
    /// edge has far fewer.
    #[test]
    fn the_false_alarm_rate_stays_within_its_budget() {
        let s = Spec::new(0.10, 1e4);
        let count = |p: f64, seed: u64| {
            let mut rng = Rng(seed);
            let mut d = Detector::new(s);
            let mut alarms = 0;
            for i in 0..2_000_000i64 {
                d.observe(i, rng.next() < p);
                if d.alarm().is_some() {
                    alarms += 1;
                    d = Detector::new(s);
                }
            }
            alarms
        };
        let edge = count(0.08, 7);
        assert!(
            edge <= 200,
            "{edge} alarms in 2e6 requests at 8% (budget 200)"
        );
        let below = count(0.05, 8);
        assert!(below < edge / 4 + 1, "{below} at 5% vs {edge} at 8%");
        // And the budget buys something: at 12% it fires often.
        assert!(count(0.12, 9) > 100);
    }

    #[test]
    fn the_alarm_dates_the_change_not_the_release() {
        let mut rng = Rng(42);
        let mut d = Detector::new(spec());
        assert_eq!(feed(&mut d, &mut rng, 0.02, 20_000, 0), None);
        feed(&mut d, &mut rng, 0.5, 1_000, 1_000_000).expect("50% fires");
        let a = d.alarm().unwrap();
        // The stretch is the failure's, not the 20,000 healthy requests before it.
        assert!(a.stretch_since_ms >= 1_000_000 - 200, "{a:?}");
        assert!(a.stretch_requests < 200, "{a:?}");
        let ratio = a.stretch_bad as f64 / a.stretch_requests as f64;
        assert!(ratio > 0.3, "{a:?}");
        assert!(a.total > 20_000 && a.total_bad < a.total / 10, "{a:?}");
    }

    #[test]
    fn a_release_is_cleared_by_enough_clean_requests_only() {
        let mut d = Detector::new(spec());
        assert!(!d.cleared(), "no requests is no evidence");
        for i in 0..20 {
            d.observe(i, false);
        }
        assert!(!d.cleared(), "20 clean requests cannot show < 10% at 99%");
        for i in 20..100 {
            d.observe(i, false);
        }
        assert!(d.cleared(), "upper bound {}", d.upper_bound());
        // A release at 9% is close to the line: 500 requests do not clear it.
        let mut rng = Rng(3);
        let mut d = Detector::new(spec());
        for i in 0..500 {
            d.observe(i, rng.next() < 0.09);
        }
        assert!(!d.cleared(), "upper bound {}", d.upper_bound());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// The verdict depends only on the requests, never on how often it is read: a
        /// detector read after every request and one read at arbitrary moments agree at
        /// every read, and fire on the same request.
        #[test]
        fn looks_do_not_change_the_verdict(
            seed in 1u64..u64::MAX,
            p in 0.0f64..0.6,
            looks in proptest::collection::vec(1usize..400, 1..40),
        ) {
            let mut rng = Rng(seed);
            let stream: Vec<bool> = (0..4_000).map(|_| rng.next() < p).collect();
            let mut every = Detector::new(spec());
            let mut first_seen = None;
            let mut verdicts = Vec::with_capacity(stream.len());
            for (i, bad) in stream.iter().enumerate() {
                every.observe(i as i64, *bad);
                let fired = every.alarm().map(|a| a.request);
                if fired.is_some() && first_seen.is_none() {
                    first_seen = Some(i as u64 + 1);
                }
                verdicts.push(fired);
            }
            let mut sparse = Detector::new(spec());
            let mut i = 0usize;
            for step in looks.iter().cycle() {
                if i >= stream.len() {
                    break;
                }
                let end = (i + step).min(stream.len());
                for (k, bad) in stream[i..end].iter().enumerate() {
                    sparse.observe((i + k) as i64, *bad);
                }
                i = end;
                prop_assert_eq!(sparse.alarm().map(|a| a.request), verdicts[i - 1]);
            }
            prop_assert_eq!(sparse.alarm().map(|a| a.request), first_seen);
        }
    }
}
