//! A sliding time window of request outcomes for one release: per-second buckets, each
//! with a count, a 5xx count and a log-scale latency histogram, so the 5xx ratio, the
//! p95 and "how many were slower than X" come out of a window in O(buckets) with
//! bounded memory whatever the request rate.
//!
//! Pure data: no clock of its own (every call takes `now_ms`), no IO.

use std::collections::VecDeque;
use std::time::Duration;

/// Histogram bins: bin `i` holds latencies in [2^(i/4), 2^((i+1)/4)) µs, so a bin is
/// about 19% wide and 128 bins reach past an hour.
pub const BINS: usize = 128;

/// The width of one bucket of the window.
pub const BUCKET_MS: i64 = 1000;

#[derive(Debug, Clone)]
struct Bucket {
    start_ms: i64,
    requests: u64,
    errors: u64,
    hist: Box<[u32; BINS]>,
}

impl Bucket {
    fn new(start_ms: i64) -> Self {
        Bucket {
            start_ms,
            requests: 0,
            errors: 0,
            hist: Box::new([0; BINS]),
        }
    }
}

/// Summary of the requests inside a window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WindowStats {
    pub requests: u64,
    pub errors: u64,
    /// The 95th percentile latency in µs (the upper edge of its bin), if any requests.
    pub p95_us: Option<u64>,
    /// How much of the window actually has data: from the first sample to now.
    pub covered_ms: i64,
}

impl WindowStats {
    pub fn error_ratio(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.errors as f64 / self.requests as f64)
    }
}

#[derive(Debug, Clone)]
pub struct Window {
    span_ms: i64,
    buckets: VecDeque<Bucket>,
    first_ms: Option<i64>,
}

pub fn bin_of(latency_us: u64) -> usize {
    if latency_us <= 1 {
        return 0;
    }
    let bin = ((latency_us as f64).log2() * 4.0).floor() as usize;
    bin.min(BINS - 1)
}

/// The upper edge of a bin, in µs.
pub fn bin_upper_us(bin: usize) -> u64 {
    2f64.powf((bin + 1) as f64 / 4.0).ceil() as u64
}

impl Window {
    /// A window over the last `span` (at least one bucket).
    pub fn new(span: Duration) -> Self {
        Window {
            span_ms: (span.as_millis() as i64).max(BUCKET_MS),
            buckets: VecDeque::new(),
            first_ms: None,
        }
    }

    pub fn span_secs(&self) -> u64 {
        (self.span_ms / 1000) as u64
    }

    /// Adds one request; `at_ms` may be slightly out of order (buckets are found by time).
    pub fn add(&mut self, at_ms: i64, error: bool, latency_us: u64) {
        let start = at_ms - at_ms.rem_euclid(BUCKET_MS);
        self.first_ms = Some(self.first_ms.map_or(at_ms, |f| f.min(at_ms)));
        let idx = match self.buckets.iter().rposition(|b| b.start_ms <= start) {
            Some(i) if self.buckets[i].start_ms == start => i,
            Some(i) => {
                self.buckets.insert(i + 1, Bucket::new(start));
                i + 1
            }
            None => {
                self.buckets.push_front(Bucket::new(start));
                0
            }
        };
        let b = &mut self.buckets[idx];
        b.requests += 1;
        b.errors += u64::from(error);
        b.hist[bin_of(latency_us)] += 1;
        self.expire(at_ms);
    }

    fn expire(&mut self, now_ms: i64) {
        while let Some(front) = self.buckets.front() {
            if front.start_ms + BUCKET_MS <= now_ms - self.span_ms {
                self.buckets.pop_front();
            } else {
                break;
            }
        }
    }

    fn live(&self, now_ms: i64) -> impl Iterator<Item = &Bucket> {
        let from = now_ms - self.span_ms;
        self.buckets
            .iter()
            .filter(move |b| b.start_ms + BUCKET_MS > from && b.start_ms <= now_ms)
    }

    pub fn stats(&self, now_ms: i64) -> WindowStats {
        let mut hist = [0u64; BINS];
        let (mut requests, mut errors) = (0, 0);
        for b in self.live(now_ms) {
            requests += b.requests;
            errors += b.errors;
            for (h, c) in hist.iter_mut().zip(b.hist.iter()) {
                *h += u64::from(*c);
            }
        }
        WindowStats {
            requests,
            errors,
            p95_us: quantile(&hist, requests, 0.95),
            covered_ms: self
                .first_ms
                .map_or(0, |f| (now_ms - f).clamp(0, self.span_ms)),
        }
    }

    /// How many requests in the window took at least `threshold_us` (counted by bin).
    pub fn slower_than(&self, now_ms: i64, threshold_us: u64) -> u64 {
        // Bin b starts at 2^(b/4) µs: the first bin wholly above the threshold. The bin
        // that straddles it is left out, so the count errs low (a trigger errs quiet).
        let from_bin = if threshold_us <= 1 {
            0
        } else {
            (((threshold_us as f64).log2() * 4.0).ceil() as usize).min(BINS)
        };
        self.live(now_ms)
            .map(|b| {
                b.hist[from_bin..]
                    .iter()
                    .map(|&c| u64::from(c))
                    .sum::<u64>()
            })
            .sum()
    }
}

/// One bucket of a window, for charts: when, how many, how many failed, its p95.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Point {
    pub t_ms: i64,
    pub requests: u64,
    pub errors: u64,
    pub p95_ms: Option<f64>,
}

impl Window {
    /// The buckets between two instants, oldest first.
    pub fn points(&self, from_ms: i64, to_ms: i64) -> Vec<Point> {
        self.buckets
            .iter()
            .filter(|b| b.start_ms + BUCKET_MS > from_ms && b.start_ms <= to_ms)
            .map(|b| {
                let mut hist = [0u64; BINS];
                for (h, c) in hist.iter_mut().zip(b.hist.iter()) {
                    *h = u64::from(*c);
                }
                Point {
                    t_ms: b.start_ms,
                    requests: b.requests,
                    errors: b.errors,
                    p95_ms: quantile(&hist, b.requests, 0.95).map(|us| us as f64 / 1000.0),
                }
            })
            .collect()
    }
}

fn quantile(hist: &[u64; BINS], total: u64, q: f64) -> Option<u64> {
    if total == 0 {
        return None;
    }
    let rank = ((total as f64) * q).ceil() as u64;
    let mut seen = 0;
    for (bin, &c) in hist.iter().enumerate() {
        seen += c;
        if seen >= rank {
            return Some(bin_upper_us(bin));
        }
    }
    Some(bin_upper_us(BINS - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_are_monotonic_and_cover_their_values() {
        for us in [1u64, 2, 3, 10, 99, 1000, 12_345, 1_000_000, 60_000_000] {
            let b = bin_of(us);
            assert!(
                bin_upper_us(b) >= us,
                "{us} in bin {b} upper {}",
                bin_upper_us(b)
            );
            if b > 0 {
                assert!(bin_upper_us(b - 1) <= us.max(2), "{us}");
            }
        }
        assert!(bin_of(u64::MAX) == BINS - 1);
    }

    #[test]
    fn ratio_and_p95_over_the_window() {
        let mut w = Window::new(Duration::from_secs(10));
        for i in 0..100 {
            // 10% errors; latencies 1..=100 ms.
            w.add(1_000 + i * 10, i % 10 == 0, (i as u64 + 1) * 1000);
        }
        let s = w.stats(2_000);
        assert_eq!((s.requests, s.errors), (100, 10));
        let p95 = s.p95_us.unwrap();
        // The true p95 is 95 ms; a bin is ~19% wide.
        assert!((95_000..=115_000).contains(&p95), "{p95}");
        assert_eq!(w.slower_than(2_000, 200_000), 0);
        let slow = w.slower_than(2_000, 50_000);
        assert!((40..=60).contains(&slow), "{slow}");
    }

    #[test]
    fn old_buckets_fall_out() {
        let mut w = Window::new(Duration::from_secs(2));
        w.add(0, true, 10);
        w.add(500, true, 10);
        assert_eq!(w.stats(900).errors, 2);
        w.add(3_500, false, 10);
        let s = w.stats(3_600);
        assert_eq!((s.requests, s.errors), (1, 0));
        assert_eq!(w.stats(10_000).requests, 0);
        assert_eq!(w.stats(10_000).p95_us, None);
    }

    #[test]
    fn out_of_order_samples_land_in_their_bucket() {
        let mut w = Window::new(Duration::from_secs(60));
        w.add(5_000, false, 10);
        w.add(3_000, true, 10);
        w.add(4_000, false, 10);
        assert_eq!(w.stats(5_500).requests, 3);
        assert_eq!(w.stats(5_500).covered_ms, 2_500);
    }
}
