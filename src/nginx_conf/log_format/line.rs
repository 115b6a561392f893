//! Reading one access-log line with a compiled [`LogFormat`]: each variable ends at the
//! literal text that follows it, with a bounded backtrack, and the variables ripcord
//! needs are checked and converted as they are found.

use super::time::{parse_time_iso8601, parse_time_local};
use super::{LogFormat, Var};

/// How far a match may backtrack before a line is declared malformed. Backtracking is only
/// needed when a value contains its own delimiter (a raw `"` in a user agent under
/// `escape=none`); the budget keeps a hostile line from costing more than a few scans.
const BACKTRACK_BUDGET: u32 = 16;

/// One request from the access log, owned, as the access-log follower sends it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AccessRecord {
    pub status: u16,
    /// `$request_time`, the whole request as nginx saw it.
    pub request_time_us: Option<u64>,
    /// `$upstream_response_time` of the last upstream tried; `None` when nginx did not
    /// reach one (`-`).
    pub upstream_time_us: Option<u64>,
    /// `$upstream_addr` of the last upstream tried: what attributes a request to a release.
    pub upstream_addr: Option<String>,
    /// `$msec`, `$time_iso8601` or `$time_local` (the most precise one the format has), as
    /// milliseconds since the Unix epoch.
    pub at_ms: Option<i64>,
    /// From `$request`, only when the format was built [`LogFormat::with_request`].
    pub method: Option<String>,
    /// From `$request`, only when the format was built [`LogFormat::with_request`].
    pub path: Option<String>,
}

/// One request borrowed from the line it was parsed from; building it allocates nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AccessRef<'a> {
    pub status: u16,
    pub request_time_us: Option<u64>,
    pub upstream_time_us: Option<u64>,
    pub upstream_addr: Option<&'a str>,
    pub at_ms: Option<i64>,
    /// `$request` as logged; split only when [`AccessRef::method`] or
    /// [`AccessRef::path`] asks, so lines nobody asks about cost nothing more.
    pub request: Option<&'a [u8]>,
}

impl<'a> AccessRef<'a> {
    /// The method of `$request`; `None` for a client that sent no request line.
    pub fn method(&self) -> Option<&'a str> {
        self.request_parts().map(|(method, _)| method)
    }

    /// The path (with query) of `$request`.
    pub fn path(&self) -> Option<&'a str> {
        self.request_parts().map(|(_, path)| path)
    }

    fn request_parts(&self) -> Option<(&'a str, &'a str)> {
        let mut parts = self.request?.splitn(3, |&b| b == b' ');
        let word = |w: &'a [u8]| {
            Some(w)
                .filter(|w| !w.is_empty())
                .and_then(|w| std::str::from_utf8(w).ok())
        };
        Some((word(parts.next()?)?, word(parts.next()?)?))
    }

    /// An owned copy; the method and path only when `with_request` (two allocations).
    pub fn to_record(&self, with_request: bool) -> AccessRecord {
        let (method, path) = match with_request.then(|| self.request_parts()).flatten() {
            Some((method, path)) => (Some(method.into()), Some(path.into())),
            None => (None, None),
        };
        AccessRecord {
            status: self.status,
            request_time_us: self.request_time_us,
            upstream_time_us: self.upstream_time_us,
            upstream_addr: self.upstream_addr.map(str::to_owned),
            at_ms: self.at_ms,
            method,
            path,
        }
    }
}

/// What one match collected; the time variables are kept apart so the most precise wins.
#[derive(Default)]
struct Caps<'a> {
    rec: AccessRef<'a>,
    time_local: Option<i64>,
    time_iso: Option<i64>,
    msec: Option<i64>,
}

impl LogFormat {
    /// Parses one line (a trailing `\n` or `\r\n` is ignored). `None` means malformed.
    pub fn parse_line(&self, line: &[u8]) -> Option<AccessRecord> {
        Some(self.parse_ref(line)?.to_record(self.keep_request))
    }

    /// Parses one line without allocating. `None` means malformed.
    pub fn parse_ref<'a>(&self, line: &'a [u8]) -> Option<AccessRef<'a>> {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let rest = line.strip_prefix(&*self.prefix)?;
        let start = line.len() - rest.len();
        let mut caps = Caps::default();
        let mut budget = BACKTRACK_BUDGET;
        if !self.match_from(line, 0, start, &mut budget, &mut caps) {
            return None;
        }
        let mut rec = caps.rec;
        rec.at_ms = caps.msec.or(caps.time_iso).or(caps.time_local);
        Some(rec)
    }

    /// Matches fields `idx..` against `line[pos..]`. Each variable ends at the first
    /// occurrence of its delimiter; if the rest of the line then fails to match, the next
    /// occurrence is tried, within `budget`.
    fn match_from<'a>(
        &self,
        line: &'a [u8],
        idx: usize,
        pos: usize,
        budget: &mut u32,
        caps: &mut Caps<'a>,
    ) -> bool {
        let Some(field) = self.fields.get(idx) else {
            return pos == line.len();
        };
        if idx + 1 == self.fields.len() {
            // The last variable is anchored at the end of the line, so whatever it
            // contains (a user agent with raw quotes) cannot throw the match off.
            let Some(end) = line.len().checked_sub(field.delim.len()) else {
                return false;
            };
            if end < pos || !starts_with(&line[end..], &field.delim) {
                return false;
            }
            return capture(field.var, &line[pos..end], caps);
        }
        // Compilation guarantees every field but the last has a delimiter.
        let Some(&first) = field.delim.first() else {
            return false;
        };
        let mut from = pos;
        while let Some(found) = find_byte(first, line.get(from..).unwrap_or_default()) {
            let at = from + found;
            from = at + 1;
            if !starts_with(&line[at + 1..], &field.delim[1..])
                || (field.escapable && escaped(&line[pos..at]))
            {
                continue;
            }
            if capture(field.var, &line[pos..at], caps)
                && self.match_from(line, idx + 1, at + field.delim.len(), budget, caps)
            {
                return true;
            }
            if *budget == 0 {
                return false;
            }
            *budget -= 1;
        }
        false
    }
}

/// The first `needle` in `hay`. Most values are a few bytes long, where a plain loop beats
/// setting up memchr's vector search; long ones (a user agent) go to memchr.
#[inline]
fn find_byte(needle: u8, hay: &[u8]) -> Option<usize> {
    const SHORT: usize = 16;
    let (head, rest) = hay.split_at(hay.len().min(SHORT));
    match head.iter().position(|&b| b == needle) {
        Some(i) => Some(i),
        None => memchr::memchr(needle, rest).map(|i| i + SHORT),
    }
}

/// `hay.starts_with(prefix)` for the one-to-few byte delimiters of a format, where a
/// call to the C library's `memcmp` costs more than the comparison.
#[inline]
fn starts_with(hay: &[u8], prefix: &[u8]) -> bool {
    hay.len() >= prefix.len() && hay.iter().zip(prefix).all(|(a, b)| a == b)
}

/// Whether a delimiter right after `value` is escaped: an odd run of backslashes ends it.
fn escaped(value: &[u8]) -> bool {
    value.iter().rev().take_while(|&&b| b == b'\\').count() % 2 == 1
}

/// Stores one variable's value; `false` when the value cannot be what the variable logs,
/// which means the line was split in the wrong place or is malformed.
fn capture<'a>(var: Var, value: &'a [u8], caps: &mut Caps<'a>) -> bool {
    match var {
        Var::Other => true,
        Var::Status => match value {
            &[a, b, c] if a.is_ascii_digit() && b.is_ascii_digit() && c.is_ascii_digit() => {
                caps.rec.status =
                    u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0');
                true
            }
            _ => false,
        },
        Var::RequestTime => optional(value, parse_seconds_us, &mut caps.rec.request_time_us),
        Var::UpstreamResponseTime => optional(
            last_of_list(value),
            parse_seconds_us,
            &mut caps.rec.upstream_time_us,
        ),
        Var::UpstreamAddr => {
            let last = last_of_list(value);
            caps.rec.upstream_addr = match last {
                b"" | b"-" => None,
                addr => std::str::from_utf8(addr).ok(),
            };
            true
        }
        Var::TimeLocal => optional(value, parse_time_local, &mut caps.time_local),
        Var::TimeIso8601 => optional(value, parse_time_iso8601, &mut caps.time_iso),
        Var::Msec => optional(value, parse_msec, &mut caps.msec),
        Var::Request => {
            caps.rec.request = Some(value).filter(|v| *v != b"-");
            true
        }
    }
}

/// `-` is nginx's "no value"; anything else must parse.
fn optional<T>(value: &[u8], parse: fn(&[u8]) -> Option<T>, slot: &mut Option<T>) -> bool {
    if value == b"-" {
        *slot = None;
        return true;
    }
    *slot = parse(value);
    slot.is_some()
}

/// The last element of an upstream list. nginx joins the upstreams it tried with `, `, and
/// those of different upstream groups (after an internal redirect) with ` : `; a bare `:`
/// belongs to an address (`127.0.0.1:8001`, `[::1]:8001`, `unix:/run/app.sock`).
///
/// A plain backward loop: these values are a few dozen bytes at most.
fn last_of_list(value: &[u8]) -> &[u8] {
    for i in (0..value.len()).rev() {
        let separator = match value[i] {
            b',' => true,
            b':' => i > 0 && value[i - 1] == b' ' && value.get(i + 1) == Some(&b' '),
            _ => false,
        };
        if separator {
            return value[i + 1..].trim_ascii();
        }
    }
    value.trim_ascii()
}

/// Seconds with a fraction (`0.123`) as microseconds.
fn parse_seconds_us(value: &[u8]) -> Option<u64> {
    let (int, frac) = split_fraction(value)?;
    let mut us = int.checked_mul(1_000_000)?;
    let mut scale = 100_000;
    for &d in frac.iter().take(6) {
        us += u64::from(d - b'0') * scale;
        scale /= 10;
    }
    Some(us)
}

/// `$msec`: seconds since the epoch with a millisecond fraction.
fn parse_msec(value: &[u8]) -> Option<i64> {
    let (int, frac) = split_fraction(value)?;
    let mut ms = i64::try_from(int).ok()?.checked_mul(1000)?;
    let mut scale = 100;
    for &d in frac.iter().take(3) {
        ms += i64::from(d - b'0') * scale;
        scale /= 10;
    }
    Some(ms)
}

/// Splits `123.456` into the integer 123 and the checked digits `456`.
fn split_fraction(value: &[u8]) -> Option<(u64, &[u8])> {
    let (int, frac) = match memchr::memchr(b'.', value) {
        Some(dot) => (&value[..dot], &value[dot + 1..]),
        None => (value, &[][..]),
    };
    // Twelve integer digits is 30 000 years of seconds, and cannot overflow below.
    if int.is_empty() || int.len() > 12 || !int.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if !frac.iter().all(u8::is_ascii_digit) || (frac.is_empty() && value.len() != int.len()) {
        return None;
    }
    let int = int.iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
    Some((int, frac))
}
