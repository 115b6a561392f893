//! The guard's statistics, simulated: the real detector (`ripcord::guard::detector`) on
//! synthetic request streams, no IO, many seeds.
//!
//! - False rollbacks: a healthy release whose requests fail at random (each with
//!   probability p, independently) for RIPCORD_SIM_REQUESTS requests (default 10^8) at
//!   1, 10, 100 and 1000 req/s (Poisson arrivals); the detector starts over after each
//!   alarm, as a new release would. Beside each, the analytic bound.
//! - Detection: RIPCORD_SIM_RUNS runs (default 2,000) of a release that serves a random
//!   stretch at 1% background errors, then fails at p from then on: requests and
//!   seconds from the first bad request to the alarm, median and p99, with the
//!   information limit ln(10^8) / KL(p ‖ p0) beside them.
//! - The same for the p95 rule, on the stream of "slow" requests (threshold 5%).
//!
//! Run: `cargo bench --bench guard_sim`. It prints tables; the figures are counts over
//! the simulated requests (false alarms) and quantiles over the runs (detection).

use std::thread;

use ripcord::guard::detector::{DEFAULT_REQUESTS_PER_FALSE_ALARM, Detector, Spec};

const RATES: [f64; 4] = [1.0, 10.0, 100.0, 1000.0];

fn env_or(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// xoshiro256**, seeded by splitmix64: fast, and the same stream for the same seed.
struct Rng([u64; 4]);

impl Rng {
    fn new(seed: u64) -> Self {
        let mut z = seed;
        let mut next = || {
            z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            x ^ (x >> 31)
        };
        Rng([next(), next(), next(), next()])
    }

    fn u64(&mut self) -> u64 {
        let s = &mut self.0;
        let out = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        out
    }

    /// Uniform in [0, 1).
    fn f64(&mut self) -> f64 {
        (self.u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A Bernoulli draw, compared in integers (one multiply less per request).
    fn chance(&mut self, below: u64) -> bool {
        self.u64() < below
    }

    /// The gap to the next Poisson arrival at `rate` per second, in ms.
    fn gap_ms(&mut self, rate: f64) -> f64 {
        -(1.0 - self.f64()).ln() * 1000.0 / rate
    }
}

fn below(p: f64) -> u64 {
    if p >= 1.0 {
        u64::MAX
    } else {
        (p * 2f64.powi(64)) as u64
    }
}

/// False alarms of a healthy release at `p` over `requests` requests at `rate`.
fn false_alarms(spec: Spec, p: f64, rate: f64, requests: u64, seed: u64) -> u64 {
    let mut rng = Rng::new(seed);
    let mut d = Detector::new(spec);
    let (mut t, mut alarms) = (0.0f64, 0);
    let cut = below(p);
    for _ in 0..requests {
        t += rng.gap_ms(rate);
        d.observe(t as i64, rng.chance(cut));
        if d.alarm().is_some() {
            alarms += 1;
            d = Detector::new(spec);
        }
    }
    alarms
}

/// One detection run: requests and seconds from the first bad request to the alarm, or
/// None when nothing fired within a million bad-phase requests.
fn detect(spec: Spec, p: f64, background: f64, rate: f64, seed: u64) -> Option<(f64, f64)> {
    let mut rng = Rng::new(seed);
    let mut d = Detector::new(spec);
    let mut t = 0.0f64;
    // A healthy stretch first, of random length, so the detector is in its steady state.
    let warm = 200 + rng.u64() % 5_000;
    let bg = below(background);
    for _ in 0..warm {
        t += rng.gap_ms(rate);
        d.observe(t as i64, rng.chance(bg));
        if d.alarm().is_some() {
            // A false alarm before the failure: start the release over.
            d = Detector::new(spec);
        }
    }
    let cut = below(p);
    let mut first: Option<(u64, f64)> = None;
    for i in 0..1_000_000u64 {
        t += rng.gap_ms(rate);
        let bad = rng.chance(cut);
        if bad && first.is_none() {
            first = Some((i, t));
        }
        d.observe(t as i64, bad);
        if d.alarm().is_some() {
            let (i0, t0) = first.unwrap_or((i, t));
            return Some(((i - i0 + 1) as f64, (t - t0) / 1000.0));
        }
    }
    None
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((sorted.len() as f64) * q).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

/// Runs `f(i)` for `i` in `0..n` on every core and gathers the results in order.
fn par<T: Send>(n: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let cores = thread::available_parallelism().map_or(1, |c| c.get());
    let f = &f;
    let chunks: Vec<Vec<T>> = thread::scope(|s| {
        let handles: Vec<_> = (0..cores)
            .map(|c| s.spawn(move || (c..n).step_by(cores).map(f).collect::<Vec<T>>()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // Undo the striping.
    let mut out: Vec<Option<T>> = (0..n).map(|_| None).collect();
    for (c, chunk) in chunks.into_iter().enumerate() {
        for (k, v) in chunk.into_iter().enumerate() {
            out[c + k * cores] = Some(v);
        }
    }
    out.into_iter().map(|v| v.unwrap()).collect()
}

fn pct(p: f64) -> String {
    format!("{:.1}%", p * 100.0)
}

fn false_alarm_table(name: &str, spec: Spec, ps: &[f64], requests: u64) {
    println!();
    println!(
        "{name}: false rollbacks of a healthy release, per 10^8 requests ({} simulated per cell; healthy zone ≤ {}, threshold {})",
        requests,
        pct(spec.healthy),
        pct(spec.threshold)
    );
    print!("{:<8}", "p");
    for r in RATES {
        print!(" {:>12}", format!("{r} req/s"));
    }
    println!(" {:>16}", "bound per 1e8");
    let cells: Vec<(f64, f64)> = ps
        .iter()
        .flat_map(|&p| RATES.iter().map(move |&r| (p, r)))
        .collect();
    let counts = par(cells.len(), |i| {
        let (p, r) = cells[i];
        false_alarms(spec, p, r, requests, 0xfa15e + i as u64)
    });
    for (pi, &p) in ps.iter().enumerate() {
        print!("{:<8}", pct(p));
        for ri in 0..RATES.len() {
            let n = counts[pi * RATES.len() + ri];
            print!(" {:>12.1}", n as f64 * 1e8 / requests as f64);
        }
        let bound = if p <= spec.healthy {
            format!("≤ {:.2e}", spec.false_alarm_bound(p) * 1e8)
        } else {
            "(none: not healthy)".to_string()
        };
        println!(" {bound:>16}");
    }
}

fn detection_table(name: &str, spec: Spec, ps: &[f64], runs: usize) {
    println!();
    println!(
        "{name}: first bad request → alarm, {runs} runs per cell (1% background before the failure); median / p99"
    );
    println!(
        "{:<8} {:>10} {:>7} {:>20} {:>20} {:>20} {:>20}",
        "p", "limit req", "misses", "1 req/s", "10 req/s", "100 req/s", "1000 req/s"
    );
    for &p in ps {
        let mut line = format!("{:<8} {:>10.0}", pct(p), spec.information_limit(p));
        let mut cells = String::new();
        let mut misses = 0;
        for (ri, &rate) in RATES.iter().enumerate() {
            let got = par(runs, |i| {
                detect(
                    spec,
                    p,
                    0.01,
                    rate,
                    (p * 1e6) as u64 * 1_000_003 + ri as u64 * 7_919 + i as u64,
                )
            });
            misses += got.iter().filter(|g| g.is_none()).count();
            let mut reqs: Vec<f64> = got.iter().flatten().map(|g| g.0).collect();
            let mut secs: Vec<f64> = got.iter().flatten().map(|g| g.1).collect();
            reqs.sort_by(f64::total_cmp);
            secs.sort_by(f64::total_cmp);
            cells.push_str(&format!(
                " {:>20}",
                format!(
                    "{:.0}/{:.0} r {}/{} s",
                    quantile(&reqs, 0.5),
                    quantile(&reqs, 0.99),
                    short(quantile(&secs, 0.5)),
                    short(quantile(&secs, 0.99))
                )
            ));
        }
        line.push_str(&format!(" {misses:>7}"));
        println!("{line}{cells}");
    }
}

fn short(secs: f64) -> String {
    if secs < 10.0 {
        format!("{secs:.2}")
    } else {
        format!("{secs:.0}")
    }
}

fn main() {
    if std::env::args()
        .skip(1)
        .any(|a| a != "--bench" && !a.starts_with('-') && a != "guard_sim")
    {
        return;
    }
    let requests = env_or("RIPCORD_SIM_REQUESTS", 1e8) as u64;
    let runs = env_or("RIPCORD_SIM_RUNS", 2_000.0) as usize;
    let budget = DEFAULT_REQUESTS_PER_FALSE_ALARM;
    let er = Spec::new(0.10, budget);
    let lat = Spec::new(0.05, budget);
    println!(
        "ripcord guard simulation: the real detector, {} arms tuned to {}; evidence needed ln(K·10^8) = {:.2}",
        er.arm_points().len(),
        er.arm_points()
            .iter()
            .map(|p| pct(*p))
            .collect::<Vec<_>>()
            .join(", "),
        er.needed()
    );
    let t0 = std::time::Instant::now();
    detection_table(
        "5xx ratio (threshold 10%)",
        er,
        &[0.10, 0.12, 0.20, 0.30, 0.50, 1.0],
        runs,
    );
    detection_table(
        "p95 rule: share of slow requests (threshold 5%)",
        lat,
        &[0.05, 0.07, 0.20, 1.0],
        runs,
    );
    false_alarm_table(
        "5xx ratio (threshold 10%)",
        er,
        &[0.01, 0.05, 0.08, 0.095],
        requests,
    );
    false_alarm_table(
        "p95 rule: share of slow requests (threshold 5%)",
        lat,
        &[0.03, 0.04],
        requests,
    );
    println!();
    println!(
        "targets: 0 false rollbacks per 10^8 at p ≤ 8% (slow share ≤ 4%); 100% within 15 requests; 30% within 1.5 s at 100 req/s; 12% within 60 s at 100 req/s (median); 100% at 1 req/s within 20 s"
    );
    println!("took {:.0} s", t0.elapsed().as_secs_f64());
}
