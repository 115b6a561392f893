//! The one place wall-clock time comes from, and how it is printed. Code that decides
//! takes time as an argument instead of calling this, so tests control it.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `YYYY-MM-DD HH:MM:SS.mmm UTC` for a millisecond timestamp.
pub fn format_utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{millis:03} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn parts(ms: i64) -> (i64, u32, u32, i64, i64, i64, i64) {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    (y, m, d, rem / 3600, rem % 3600 / 60, rem % 60, millis)
}

/// `YYYYMMDDTHHMMSSmmmZ` (UTC), for file names (backups).
pub fn file_stamp(ms: i64) -> String {
    let (y, m, d, h, mi, s, ml) = parts(ms);
    format!("{y:04}{m:02}{d:02}T{h:02}{mi:02}{s:02}{ml:03}Z")
}

/// `YYYYMMDD_HHMMSS_mmm` (UTC), for database names: lower case, so the name needs no
/// quotes when a person types it.
pub fn db_stamp(ms: i64) -> String {
    let (y, m, d, h, mi, s, ml) = parts(ms);
    format!("{y:04}{m:02}{d:02}_{h:02}{mi:02}{s:02}_{ml:03}")
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
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
    }
}
