//! The time variables of an access log, `$time_local` and `$time_iso8601`, as
//! milliseconds since the Unix epoch. jiff reads them; the calendar is its business.
//!
//! nginx writes one timestamp for all the requests of a second, so most lines carry the
//! value of the line before: each thread remembers the last value it read and what it
//! meant, and a repeat costs a comparison instead of a parse.

use std::cell::Cell;
use std::thread::LocalKey;

use jiff::fmt::strtime;
use jiff::fmt::temporal::DateTimeParser;

/// How nginx writes `$time_local`: `26/Nov/2026:13:22:12 +0000`.
const TIME_LOCAL: &str = "%d/%b/%Y:%H:%M:%S %z";

/// `$time_local`.
pub(super) fn parse_time_local(v: &[u8]) -> Option<i64> {
    cached(&LAST_LOCAL, v, |v| {
        let at = strtime::parse(TIME_LOCAL, v).ok()?;
        Some(at.to_timestamp().ok()?.as_millisecond())
    })
}

/// `$time_iso8601`: `2026-11-26T13:22:12+00:00`; a fraction, `Z` and `+0000` are
/// accepted too (ISO 8601 as jiff reads it).
pub(super) fn parse_time_iso8601(v: &[u8]) -> Option<i64> {
    static PARSER: DateTimeParser = DateTimeParser::new();
    cached(&LAST_ISO, v, |v| {
        Some(PARSER.parse_timestamp(v).ok()?.as_millisecond())
    })
}

/// Longer values (a fraction down to the nanosecond) are parsed every time.
const KEY: usize = 40;

/// One value and what it meant.
#[derive(Clone, Copy)]
struct Last {
    len: usize,
    key: [u8; KEY],
    at: Option<i64>,
}

thread_local! {
    // Both start out holding the empty value, which reads as no time, as parsing it would.
    static LAST_LOCAL: Cell<Last> = const { Cell::new(Last { len: 0, key: [0; KEY], at: None }) };
    static LAST_ISO: Cell<Last> = const { Cell::new(Last { len: 0, key: [0; KEY], at: None }) };
}

fn cached(
    last: &'static LocalKey<Cell<Last>>,
    v: &[u8],
    parse: impl FnOnce(&[u8]) -> Option<i64>,
) -> Option<i64> {
    if v.len() > KEY {
        return parse(v);
    }
    last.with(|cell| {
        let seen = cell.get();
        if seen.key[..seen.len] == *v {
            return seen.at;
        }
        let at = parse(v);
        let mut key = [0; KEY];
        key[..v.len()].copy_from_slice(v);
        cell.set(Last {
            len: v.len(),
            key,
            at,
        });
        at
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_answers_what_a_parse_would() {
        let a = "26/Nov/2026:13:22:12 +0000";
        let b = "26/Nov/2026:13:22:13 +0000";
        let fresh = |v: &str| {
            let at = strtime::parse(TIME_LOCAL, v).ok()?;
            Some(at.to_timestamp().ok()?.as_millisecond())
        };
        for v in [
            "",
            a,
            a,
            b,
            a,
            "31/Nov/2026:13:22:12 +0000",
            "31/Nov/2026:13:22:12 +0000",
            b,
        ] {
            assert_eq!(parse_time_local(v.as_bytes()), fresh(v), "{v}");
        }
        assert_eq!(parse_time_local(b"").or(parse_time_iso8601(b"")), None);
        // Longer than the cache holds: parsed every time.
        let long = "2026-11-26T13:22:12.123456789+00:00[Etc/UTC]";
        assert!(long.len() > KEY);
        assert_eq!(parse_time_iso8601(long.as_bytes()), Some(1_795_699_332_123));
        assert_eq!(parse_time_iso8601(long.as_bytes()), Some(1_795_699_332_123));
    }
}
