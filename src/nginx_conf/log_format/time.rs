//! The time variables of an access log: `$time_local` and `$time_iso8601`, as
//! milliseconds since the Unix epoch.

/// Fixed-width decimal digits.
fn digits(value: &[u8]) -> Option<u32> {
    value.iter().try_fold(0u32, |n, &d| {
        d.is_ascii_digit().then(|| n * 10 + u32::from(d - b'0'))
    })
}

/// `$time_local`: `26/Nov/2026:13:22:12 +0000`.
pub(super) fn parse_time_local(v: &[u8]) -> Option<i64> {
    if v.len() != 26
        || v[2] != b'/'
        || v[6] != b'/'
        || v[11] != b':'
        || v[14] != b':'
        || v[17] != b':'
        || v[20] != b' '
    {
        return None;
    }
    // An array rather than a slice, so the match compiles to integer compares instead of
    // a `memcmp` call per month.
    let month = match [v[3], v[4], v[5]] {
        [b'J', b'a', b'n'] => 1,
        [b'F', b'e', b'b'] => 2,
        [b'M', b'a', b'r'] => 3,
        [b'A', b'p', b'r'] => 4,
        [b'M', b'a', b'y'] => 5,
        [b'J', b'u', b'n'] => 6,
        [b'J', b'u', b'l'] => 7,
        [b'A', b'u', b'g'] => 8,
        [b'S', b'e', b'p'] => 9,
        [b'O', b'c', b't'] => 10,
        [b'N', b'o', b'v'] => 11,
        [b'D', b'e', b'c'] => 12,
        _ => return None,
    };
    let offset = parse_offset(&v[21..])?;
    civil_ms(
        digits(&v[7..11])?,
        month,
        digits(&v[0..2])?,
        [
            digits(&v[12..14])?,
            digits(&v[15..17])?,
            digits(&v[18..20])?,
        ],
        0,
        offset,
    )
}

/// `$time_iso8601`: `2026-11-26T13:22:12+00:00`; a fraction and `Z` are accepted too.
pub(super) fn parse_time_iso8601(v: &[u8]) -> Option<i64> {
    if v.len() < 20
        || v[4] != b'-'
        || v[7] != b'-'
        || !matches!(v[10], b'T' | b' ')
        || v[13] != b':'
        || v[16] != b':'
    {
        return None;
    }
    let mut rest = &v[19..];
    let mut ms = 0;
    if let Some(frac) = rest.strip_prefix(b".") {
        let n = frac.iter().take_while(|b| b.is_ascii_digit()).count();
        if n == 0 {
            return None;
        }
        let mut scale = 100;
        for &d in frac[..n].iter().take(3) {
            ms += i64::from(d - b'0') * scale;
            scale /= 10;
        }
        rest = &frac[n..];
    }
    let offset = parse_offset(rest)?;
    civil_ms(
        digits(&v[0..4])?,
        digits(&v[5..7])?,
        digits(&v[8..10])?,
        [
            digits(&v[11..13])?,
            digits(&v[14..16])?,
            digits(&v[17..19])?,
        ],
        ms,
        offset,
    )
}

/// A UTC offset in seconds: `Z`, `+0530` or `+05:30`.
fn parse_offset(v: &[u8]) -> Option<i64> {
    let (sign, hh, mm) = match v {
        b"Z" => return Some(0),
        [s, h1, h2, m1, m2] | [s, h1, h2, b':', m1, m2] => (*s, [*h1, *h2], [*m1, *m2]),
        _ => return None,
    };
    let (hh, mm) = (digits(&hh)?, digits(&mm)?);
    if hh > 23 || mm > 59 {
        return None;
    }
    let secs = i64::from(hh * 3600 + mm * 60);
    match sign {
        b'+' => Some(secs),
        b'-' => Some(-secs),
        _ => None,
    }
}

/// A local civil time at `offset` seconds east of UTC, as milliseconds since the epoch.
fn civil_ms(year: u32, month: u32, day: u32, hms: [u32; 3], ms: i64, offset: i64) -> Option<i64> {
    let [h, m, s] = hms;
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    // 60 admits a leap second as the clock shows it.
    if h > 23 || m > 59 || s > 60 {
        return None;
    }
    let days = days_from_civil(i64::from(year), month, day);
    let secs = days * 86_400 + i64::from(h * 3600 + m * 60 + s) - offset;
    Some(secs * 1000 + ms)
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        2 if year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400)) => {
            29
        }
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 in the proleptic Gregorian calendar (Howard Hinnant's
/// `days_from_civil`): years are counted from March so the leap day falls last.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_from_march = i64::from((month + 9) % 12);
    let day_of_year = (153 * month_from_march + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}
