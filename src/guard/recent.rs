//! A release's latest requests, kept to tell when a bad episode is over and to report
//! the release's own 5xx ratio over them. The rollback decision never reads them (the
//! sequential detector does that); they only date and describe an incident.
//!
//! Pure data: no clock of its own, no IO.

use std::collections::VecDeque;

#[derive(Debug, Clone, Copy)]
struct Request {
    at_ms: i64,
    error: bool,
    slow: bool,
}

/// The last `cap` requests of one release, newest last.
#[derive(Debug, Clone)]
pub struct Recent {
    cap: usize,
    items: VecDeque<Request>,
}

impl Recent {
    pub fn new(cap: usize) -> Self {
        Recent {
            cap: cap.max(1),
            items: VecDeque::with_capacity(cap.max(1)),
        }
    }

    pub fn push(&mut self, at_ms: i64, error: bool, slow: bool) {
        if self.items.len() == self.cap {
            self.items.pop_front();
        }
        self.items.push_back(Request { at_ms, error, slow });
    }

    /// Whether the kept requests all came after `ms`: as many as are kept, none of them
    /// from before it.
    pub fn full_after(&self, ms: i64) -> bool {
        self.items.len() == self.cap && self.items.front().is_some_and(|r| r.at_ms > ms)
    }

    /// Whether any kept request came at `ms` or later.
    pub fn any_since(&self, ms: i64) -> bool {
        self.items.back().is_some_and(|r| r.at_ms >= ms)
    }

    /// Whether the requests since `since_ms` are clean: bad ones (5xx or slow) at most
    /// `limit` of them. None at all is clean: a quiet service holds no episode open.
    pub fn clean_since(&self, since_ms: i64, limit: f64) -> bool {
        let (bad, total) = self
            .items
            .iter()
            .filter(|r| r.at_ms >= since_ms)
            .fold((0usize, 0usize), |(b, n), r| {
                (b + usize::from(r.error || r.slow), n + 1)
            });
        bad as f64 <= limit * total as f64
    }

    /// The 5xx ratio over the kept requests, once at least half the capacity is there.
    pub fn error_ratio(&self) -> Option<f64> {
        (self.items.len() >= self.cap.div_ceil(2))
            .then(|| self.items.iter().filter(|r| r.error).count() as f64 / self.items.len() as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_latest_requests_are_kept() {
        let mut r = Recent::new(4);
        for i in 0..4 {
            r.push(i, true, false);
        }
        assert_eq!(r.error_ratio(), Some(1.0));
        for i in 4..6 {
            r.push(i, false, false);
        }
        // Two failures and two successes left of six pushed.
        assert_eq!(r.error_ratio(), Some(0.5));
    }

    #[test]
    fn a_ratio_needs_half_the_capacity() {
        let mut r = Recent::new(40);
        for i in 0..19 {
            r.push(i, true, false);
        }
        assert_eq!(r.error_ratio(), None);
        r.push(19, false, false);
        assert_eq!(r.error_ratio(), Some(19.0 / 20.0));
    }

    #[test]
    fn clean_counts_errors_and_slow_requests_inside_the_window_only() {
        let mut r = Recent::new(40);
        // Old failures, outside the window from 10_000 on.
        for i in 0..10 {
            r.push(i * 100, true, false);
        }
        for i in 0..20 {
            r.push(10_000 + i * 100, false, false);
        }
        assert!(r.clean_since(10_000, 0.05));
        assert!(!r.clean_since(0, 0.05), "the old failures count from 0");
        // One slow request in 21 is under 5%; two in 22 are not.
        r.push(12_000, false, true);
        assert!(r.clean_since(10_000, 0.05));
        r.push(12_100, false, true);
        assert!(!r.clean_since(10_000, 0.05));
        // Exactly at the limit is clean: 1 bad in 20 at 5%.
        let mut r = Recent::new(40);
        for i in 0..19 {
            r.push(i, false, false);
        }
        r.push(19, true, false);
        assert!(r.clean_since(0, 0.05));
        // Nothing inside the window is clean.
        assert!(Recent::new(40).clean_since(0, 0.05));
    }

    #[test]
    fn full_after_needs_a_whole_buffer_after_the_instant() {
        let mut r = Recent::new(3);
        assert!(!r.full_after(0) && !r.any_since(0));
        r.push(1_000, true, false);
        r.push(1_100, false, false);
        r.push(1_200, false, false);
        // The bad one at 1,000 is still among them.
        assert!(!r.full_after(1_000));
        assert!(r.full_after(999));
        r.push(1_300, false, false);
        assert!(r.full_after(1_000));
        assert!(r.any_since(1_300) && !r.any_since(1_301));
    }
}
