//! The service's latest requests, one record each, so that an incident can keep exactly
//! what users went through around it: the report's counts and its chart are worked out
//! from these records, never from buckets aligned to the wall clock.
//!
//! Pure data: no clock of its own, no IO. The decision never reads these records.

use std::collections::VecDeque;

use serde_json::{Value, json};

/// One request as the guard saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// When its response (or the proxy's error) was recorded.
    pub at_ms: i64,
    pub release_id: i64,
    /// A 5xx answer.
    pub error: bool,
    /// Time to the response head; `None` when the source had no timing.
    pub latency_us: Option<u64>,
}

/// The latest requests of a service, oldest first: at most `cap` of them and none older
/// than `keep_ms` before the newest, so memory stays bounded whatever the rate.
#[derive(Debug, Clone)]
pub struct RequestLog {
    cap: usize,
    keep_ms: i64,
    items: VecDeque<Kept>,
}

/// A [`Sample`] as the log keeps it: 24 bytes instead of 40, which is 2 MB less for a
/// full log of 100,000 requests (the watcher's RSS under load is a target).
#[derive(Debug, Clone, Copy)]
struct Kept {
    at_ms: i64,
    release_id: i64,
    /// [`NO_LATENCY`] when the source had no timing; longer than 71 minutes is kept as
    /// [`LONGEST`].
    latency_us: u32,
    error: bool,
}

const NO_LATENCY: u32 = u32::MAX;
const LONGEST: u32 = u32::MAX - 1;

impl From<Sample> for Kept {
    fn from(s: Sample) -> Kept {
        Kept {
            at_ms: s.at_ms,
            release_id: s.release_id,
            latency_us: s.latency_us.map_or(NO_LATENCY, |us| {
                u32::try_from(us).unwrap_or(LONGEST).min(LONGEST)
            }),
            error: s.error,
        }
    }
}

impl From<Kept> for Sample {
    fn from(k: Kept) -> Sample {
        Sample {
            at_ms: k.at_ms,
            release_id: k.release_id,
            error: k.error,
            latency_us: (k.latency_us != NO_LATENCY).then_some(u64::from(k.latency_us)),
        }
    }
}

impl RequestLog {
    pub fn new(cap: usize, keep_ms: i64) -> Self {
        RequestLog {
            cap: cap.max(1),
            keep_ms,
            items: VecDeque::new(),
        }
    }

    pub fn push(&mut self, s: Sample) {
        if self.items.len() == self.cap {
            self.items.pop_front();
        }
        if self.items.len() == self.items.capacity() {
            // Doubling, but never past the cap (100,000 would otherwise grow to 131,072).
            let room = self.cap - self.items.len();
            self.items
                .reserve_exact(self.items.len().clamp(1, room.max(1)));
        }
        self.items.push_back(Kept::from(s));
        let oldest = s.at_ms - self.keep_ms;
        while self.items.front().is_some_and(|f| f.at_ms < oldest) {
            self.items.pop_front();
        }
    }

    /// The requests recorded in `[from_ms, to_ms]`, in time order.
    pub fn between(&self, from_ms: i64, to_ms: i64) -> Vec<Sample> {
        let mut out: Vec<Sample> = self
            .items
            .iter()
            .filter(|s| (from_ms..=to_ms).contains(&s.at_ms))
            .map(|&k| Sample::from(k))
            .collect();
        // Records arrive nearly in order; a stable sort keeps ties as they came.
        out.sort_by_key(|s| s.at_ms);
        out
    }
}

/// The records as an incident stores them: `{"requests": {"t0_ms", "rows"}}`, each row
/// `[ms after t0, release id, 1 if a 5xx else 0, latency µs or null]`, which is about a
/// third of the size of one object per request.
pub fn to_json(samples: &[Sample]) -> Value {
    let t0 = samples.iter().map(|s| s.at_ms).min().unwrap_or(0);
    let rows: Vec<Value> = samples
        .iter()
        .map(|s| json!([s.at_ms - t0, s.release_id, u8::from(s.error), s.latency_us]))
        .collect();
    json!({ "requests": { "t0_ms": t0, "rows": rows } })
}

/// The records an incident stored with [`to_json`], in time order; `None` when the
/// value holds none (an older incident keeps per-second points instead).
pub fn from_json(v: &Value) -> Option<Vec<Sample>> {
    let requests = v.get("requests")?;
    let t0 = requests.get("t0_ms")?.as_i64()?;
    let mut out: Vec<Sample> = requests
        .get("rows")?
        .as_array()?
        .iter()
        .filter_map(|row| {
            let row = row.as_array()?;
            Some(Sample {
                at_ms: t0 + row.first()?.as_i64()?,
                release_id: row.get(1)?.as_i64()?,
                error: row.get(2)?.as_u64()? != 0,
                latency_us: row.get(3).and_then(Value::as_u64),
            })
        })
        .collect();
    out.sort_by_key(|s| s.at_ms);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(at_ms: i64, error: bool) -> Sample {
        Sample {
            at_ms,
            release_id: 2,
            error,
            latency_us: Some(1_500),
        }
    }

    #[test]
    fn the_log_keeps_the_newest_within_its_bounds() {
        let mut log = RequestLog::new(3, 10_000);
        for at in [1_000, 2_000, 3_000, 4_000] {
            log.push(s(at, false));
        }
        // The cap dropped the oldest.
        assert_eq!(log.between(0, 10_000).len(), 3);
        log.push(s(14_500, true));
        // Everything more than 10 s older than the newest is gone.
        assert_eq!(
            log.between(0, i64::MAX),
            vec![s(14_500, true)],
            "the age bound dropped the old ones"
        );
    }

    #[test]
    fn the_log_gives_back_what_it_was_given_in_its_smaller_form() {
        assert_eq!(std::mem::size_of::<Kept>(), 24);
        let mut log = RequestLog::new(10, 60_000);
        let mut given = vec![
            s(1_000, true),
            s(1_001, false),
            s(1_002, false),
            s(1_003, true),
        ];
        given[1].latency_us = None;
        given[2].latency_us = Some(0);
        given[3].release_id = i64::MAX;
        for g in &given {
            log.push(*g);
        }
        assert_eq!(log.between(0, 2_000), given);
        // Grown by doubling, but to the cap at most.
        let mut full = RequestLog::new(100_000, i64::MAX);
        for at in 0..150_000 {
            full.push(s(at, false));
        }
        assert!(full.items.capacity() < 110_000, "{}", full.items.capacity());
        // Past 71 minutes a latency is kept as the longest it can hold, not as none.
        log.push(Sample {
            latency_us: Some(10 * 3_600_000_000),
            ..s(1_004, false)
        });
        assert_eq!(
            log.between(1_004, 1_004)[0].latency_us,
            Some(u64::from(LONGEST))
        );
    }

    #[test]
    fn records_round_trip_through_json_in_time_order() {
        let mut samples = vec![s(5_000, true), s(4_998, false), s(5_001, false)];
        samples[2].latency_us = None;
        samples[1].release_id = 1;
        let back = from_json(&to_json(&samples)).unwrap();
        samples.sort_by_key(|s| s.at_ms);
        assert_eq!(back, samples);
        assert_eq!(from_json(&json!([{ "t_ms": 1 }])), None);
    }
}
