//! The one place wall-clock time comes from, and how it is printed. Code that decides
//! takes time as an argument instead of calling this, so tests control it.

use std::time::{SystemTime, UNIX_EPOCH};

use jiff::Timestamp;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `YYYY-MM-DD HH:MM:SS.mmm UTC` for a millisecond timestamp.
pub fn format_utc(ms: i64) -> String {
    utc(ms, "%Y-%m-%d %H:%M:%S%.3f UTC")
}

/// `YYYYMMDDTHHMMSSmmmZ` (UTC), for file names (backups).
pub fn file_stamp(ms: i64) -> String {
    utc(ms, "%Y%m%dT%H%M%S%3fZ")
}

/// `YYYYMMDD_HHMMSS_mmm` (UTC), for database names: lower case, so the name needs no
/// quotes when a person types it.
pub fn db_stamp(ms: i64) -> String {
    utc(ms, "%Y%m%d_%H%M%S_%3f")
}

/// A millisecond timestamp in UTC, `strftime`-style. Outside the years -9999 to 9999
/// (no clock reads that) the milliseconds are printed as they are.
fn utc(ms: i64, format: &str) -> String {
    match Timestamp::from_millisecond(ms) {
        Ok(t) => t.strftime(format).to_string(),
        Err(_) => format!("{ms} ms after the epoch"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps() {
        assert_eq!(file_stamp(0), "19700101T000000000Z");
        assert_eq!(file_stamp(951_782_400_123), "20000229T000000123Z");
        assert_eq!(file_stamp(1_795_000_000_007), "20261118T110640007Z");
        assert_eq!(db_stamp(1_795_000_000_007), "20261118_110640_007");
    }

    #[test]
    fn formats_known_instants() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00.000 UTC");
        assert_eq!(format_utc(951_782_400_123), "2000-02-29 00:00:00.123 UTC");
        assert_eq!(format_utc(1_795_000_000_000), "2026-11-18 11:06:40.000 UTC");
        assert_eq!(format_utc(-1), "1969-12-31 23:59:59.999 UTC");
        assert_eq!(
            format_utc(-61_000_000_000_000),
            "0036-12-26 11:33:20.000 UTC"
        );
    }
}
