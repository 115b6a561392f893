//! The nginx access-log signal: compiles an nginx `log_format` into a line parser, and
//! follows the access log like `tail -F`, sending parsed requests down a bounded channel.
//!
//! It only observes. It must never write to, truncate, rotate or lock the log; never stop
//! because of a line it cannot read (a malformed line is counted, sampled and skipped);
//! never panic on any input; and never hold more than a bounded amount of the log in
//! memory. The parser allocates nothing per line on the borrowed path ([`LogFormat::parse_ref`])
//! so that ingest stays above a million lines a second on one core.

use std::io::{self, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;

/// nginx's predefined `combined` format, verbatim from `ngx_http_log_module`.
pub const COMBINED: &str = r#"$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent""#;

/// The `log_format` the README recommends: it logs `$upstream_addr`, which attributes each
/// request to the slot (so the release) that answered it.
pub const RECOMMENDED: &str = r#"$remote_addr - [$time_local] "$request" $status $body_bytes_sent rt=$request_time urt="$upstream_response_time" ua="$upstream_addr" ts=$msec"#;

/// Why requests read with `format` cannot be tied to the slot that answered them, as a
/// warning for people; `None` when the format logs `$upstream_addr`.
pub fn attribution_warning(format: &LogFormat) -> Option<String> {
    if format.has_variable("upstream_addr") {
        return None;
    }
    Some(
        "the access log's format has no $upstream_addr, so each request is counted against \
         the release active when ripcord reads it, and a request answered around a switch \
         can be counted against the wrong one; log with the README's `log_format ripcord` \
         (it has $upstream_addr) to attribute each request to the slot that answered it"
            .to_string(),
    )
}

/// Lines longer than this are counted as malformed and skipped, which bounds the memory a
/// follower holds for an unfinished line.
pub const MAX_LINE: usize = 64 * 1024;

/// How many bytes of a malformed line `status` shows.
const SAMPLE_BYTES: usize = 512;

/// How far a match may backtrack before a line is declared malformed. Backtracking is only
/// needed when a value contains its own delimiter (a raw `"` in a user agent under
/// `escape=none`); the budget keeps a hostile line from costing more than a few scans.
const BACKTRACK_BUDGET: u32 = 16;

/// Why a `log_format` could not be turned into a parser.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FormatError {
    #[error("the format has no $status, so requests cannot be classified")]
    NoStatus,
    #[error("`$` at byte {at} of the format is not followed by a variable name")]
    EmptyVariable { at: usize },
    #[error("`${{` at byte {at} of the format is not closed by `}}`")]
    UnclosedBrace { at: usize },
    #[error(
        "${first} and ${second} touch with no text between them, so a line cannot be split where one ends"
    )]
    Adjacent { first: String, second: String },
    #[error("line {line}: unterminated {quote} quote")]
    UnterminatedQuote { line: usize, quote: char },
    /// A closing quote not followed by whitespace, `;` or `{`, which nginx refuses too.
    #[error("line {line}: unexpected `{ch}` after a quoted string")]
    Unexpected { line: usize, ch: char },
    #[error("line {line}: log_format has no name")]
    MissingName { line: usize },
    #[error("line {line}: log_format `{name}` has no format string")]
    MissingFormat { line: usize, name: String },
    #[error("line {line}: log_format `{name}` is not closed by `;` before the end of the file")]
    Unterminated { line: usize, name: String },
    #[error(
        "line {line}: log_format `{name}` has an unknown escape `{value}` (expected default, json or none)"
    )]
    UnknownEscape {
        line: usize,
        name: String,
        value: String,
    },
    #[error("no log_format named `{name}` in the nginx config ({declared})")]
    NotFound { name: String, declared: String },
    // The inner error is part of the message rather than a `#[source]`, so that printing
    // the chain with `{:#}` does not repeat it.
    #[error("line {line}: log_format `{name}`: {error}")]
    InDirective {
        line: usize,
        name: String,
        error: Box<FormatError>,
    },
}

/// How nginx escaped variable values (`log_format NAME escape=...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Escape {
    /// `"`, `\` and non-printable bytes become `\xXX`.
    #[default]
    Default,
    /// JSON string escaping: `"` becomes `\"`.
    Json,
    /// Nothing is escaped, so a value may contain its own delimiter.
    None,
}

/// One request from the access log, owned, as sent by the [`Follower`].
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Var {
    Status,
    RequestTime,
    UpstreamResponseTime,
    UpstreamAddr,
    TimeLocal,
    TimeIso8601,
    Msec,
    Request,
    Other,
}

impl Var {
    fn from_name(name: &str) -> Var {
        // nginx looks variables up case-insensitively.
        const KNOWN: [(&str, Var); 8] = [
            ("status", Var::Status),
            ("request_time", Var::RequestTime),
            ("upstream_response_time", Var::UpstreamResponseTime),
            ("upstream_addr", Var::UpstreamAddr),
            ("time_local", Var::TimeLocal),
            ("time_iso8601", Var::TimeIso8601),
            ("msec", Var::Msec),
            ("request", Var::Request),
        ];
        KNOWN
            .iter()
            .find(|(known, _)| known.eq_ignore_ascii_case(name))
            .map_or(Var::Other, |&(_, var)| var)
    }
}

/// A variable and the literal text that follows it up to the next variable.
#[derive(Debug, Clone)]
struct Field {
    var: Var,
    name: Box<str>,
    delim: Box<[u8]>,
    /// Whether a `"` in `delim`'s first byte may be escaped by a backslash in the value.
    escapable: bool,
}

/// A compiled nginx `log_format`: the literal prefix, then each variable with the literal
/// that ends it.
#[derive(Debug, Clone)]
pub struct LogFormat {
    text: String,
    escape: Escape,
    prefix: Box<[u8]>,
    fields: Box<[Field]>,
    keep_request: bool,
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
    /// Compiles a format string as nginx would after joining its quoted parts, with the
    /// default escaping.
    pub fn new(format: &str) -> Result<LogFormat, FormatError> {
        LogFormat::with_escape(format, Escape::Default)
    }

    pub fn with_escape(format: &str, escape: Escape) -> Result<LogFormat, FormatError> {
        compile(format, escape)
    }

    /// nginx's predefined `combined` format.
    pub fn combined() -> LogFormat {
        match LogFormat::new(COMBINED) {
            Ok(format) => format,
            // The constant is compiled by a unit test; this arm only satisfies the type.
            Err(e) => unreachable!("the combined format does not compile: {e}"),
        }
    }

    /// Finds `log_format NAME [escape=...] '...' ...;` in the text of an nginx config and
    /// compiles it. `combined` is nginx's own unless the config declares it.
    ///
    /// `include`d files are not followed: pass the text of the file that declares the
    /// format.
    pub fn from_nginx_conf(text: &str, name: &str) -> Result<LogFormat, FormatError> {
        let declared = conf::log_formats(text)?;
        let Some(found) = declared.iter().find(|d| d.name == name) else {
            if name == "combined" {
                return Ok(LogFormat::combined());
            }
            let list = if declared.is_empty() {
                "it declares none".to_owned()
            } else {
                let names: Vec<String> = declared
                    .iter()
                    .map(|d| format!("`{}` at line {}", d.name, d.line))
                    .collect();
                format!("it declares {}", names.join(", "))
            };
            return Err(FormatError::NotFound {
                name: name.to_owned(),
                declared: list,
            });
        };
        LogFormat::with_escape(&found.format, found.escape).map_err(|error| {
            FormatError::InDirective {
                line: found.line,
                name: found.name.clone(),
                error: Box::new(error),
            }
        })
    }

    /// Resolves ripcord's `log_format` setting: a format string when it contains a
    /// variable, otherwise the name of a format declared in `conf` (nginx's main config
    /// text), `combined` when neither is given.
    pub fn from_setting(
        setting: Option<&str>,
        conf: Option<&str>,
    ) -> Result<LogFormat, FormatError> {
        match setting {
            Some(text) if text.contains('$') => LogFormat::new(text),
            Some(name) => LogFormat::from_nginx_conf(conf.unwrap_or(""), name.trim()),
            None => Ok(LogFormat::combined()),
        }
    }

    /// Also keep the method and path of `$request` in [`AccessRecord`]s (two allocations
    /// per line, so off unless something needs them).
    pub fn with_request(mut self, keep: bool) -> LogFormat {
        self.keep_request = keep;
        self
    }

    /// The format string as nginx joined it.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn escape(&self) -> Escape {
        self.escape
    }

    /// Whether the format logs `$name` (without the `$`), e.g. to warn that requests
    /// cannot be attributed to a release without `upstream_addr`.
    pub fn has_variable(&self, name: &str) -> bool {
        self.fields
            .iter()
            .any(|f| f.name.eq_ignore_ascii_case(name))
    }

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

/// Fixed-width decimal digits.
fn digits(value: &[u8]) -> Option<u32> {
    value.iter().try_fold(0u32, |n, &d| {
        d.is_ascii_digit().then(|| n * 10 + u32::from(d - b'0'))
    })
}

/// `$time_local`: `26/Nov/2026:13:22:12 +0000`.
fn parse_time_local(v: &[u8]) -> Option<i64> {
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
fn parse_time_iso8601(v: &[u8]) -> Option<i64> {
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

/// Splits a format string into a literal prefix and variables with their delimiters.
fn compile(text: &str, escape: Escape) -> Result<LogFormat, FormatError> {
    enum Tok {
        Lit(Vec<u8>),
        Var(String),
    }
    let bytes = text.as_bytes();
    let mut toks: Vec<Tok> = Vec::new();
    let mut lit = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'$' {
            lit.push(bytes[i]);
            i += 1;
            continue;
        }
        let at = i;
        let (name, next) = if bytes.get(i + 1) == Some(&b'{') {
            let close =
                memchr::memchr(b'}', &bytes[i + 2..]).ok_or(FormatError::UnclosedBrace { at })?;
            (&text[i + 2..i + 2 + close], i + 3 + close)
        } else {
            let len = bytes[i + 1..]
                .iter()
                .take_while(|b| b.is_ascii_alphanumeric() || **b == b'_')
                .count();
            (&text[i + 1..i + 1 + len], i + 1 + len)
        };
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(FormatError::EmptyVariable { at });
        }
        if !lit.is_empty() {
            toks.push(Tok::Lit(std::mem::take(&mut lit)));
        }
        toks.push(Tok::Var(name.to_owned()));
        i = next;
    }
    if !lit.is_empty() {
        toks.push(Tok::Lit(lit));
    }

    let mut toks = toks.into_iter().peekable();
    let prefix = match toks.next_if(|t| matches!(t, Tok::Lit(_))) {
        Some(Tok::Lit(l)) => l,
        _ => Vec::new(),
    };
    let mut fields: Vec<Field> = Vec::new();
    while let Some(tok) = toks.next() {
        let Tok::Var(name) = tok else { continue };
        let var = Var::from_name(&name);
        let delim = match toks.next_if(|t| matches!(t, Tok::Lit(_))) {
            Some(Tok::Lit(l)) => l,
            _ => Vec::new(),
        };
        if let Some(prev) = fields.last_mut()
            && prev.delim.is_empty()
        {
            // Two variables with nothing between them: harmless when neither is needed
            // (they are skipped as one), fatal otherwise.
            if prev.var != Var::Other || var != Var::Other {
                return Err(FormatError::Adjacent {
                    first: prev.name.to_string(),
                    second: name,
                });
            }
            prev.name = format!("{}${}", prev.name, name).into();
            prev.escapable = escape != Escape::None && delim.first() == Some(&b'"');
            prev.delim = delim.into();
            continue;
        }
        fields.push(Field {
            var,
            escapable: escape != Escape::None && delim.first() == Some(&b'"'),
            name: name.into(),
            delim: delim.into(),
        });
    }
    if !fields.iter().any(|f| f.var == Var::Status) {
        return Err(FormatError::NoStatus);
    }
    Ok(LogFormat {
        text: text.to_owned(),
        escape,
        prefix: prefix.into(),
        fields: fields.into(),
        keep_request: false,
    })
}

/// `log_format` directives found with nginx's config tokenizer.
mod conf {
    use super::{Escape, FormatError};
    use crate::nginx_conf::tokens::{Kind, TokenError, tokenize};

    pub(super) struct Declared {
        pub name: String,
        pub line: usize,
        pub escape: Escape,
        pub format: String,
    }

    /// Every `log_format` in the text, in order.
    pub(super) fn log_formats(text: &str) -> Result<Vec<Declared>, FormatError> {
        let mut found = Vec::new();
        let mut words: Vec<(String, usize)> = Vec::new();
        let tokens = tokenize(text).map_err(|e| match e {
            TokenError::UnterminatedQuote { line, quote } => {
                FormatError::UnterminatedQuote { line, quote }
            }
            TokenError::Unexpected { ch, line } => FormatError::Unexpected { ch, line },
        })?;
        for tok in tokens {
            match tok.kind {
                Kind::Word => words.push((tok.value, tok.line)),
                Kind::Semicolon => {
                    if let Some(d) = directive(&words)? {
                        found.push(d);
                    }
                    words.clear();
                }
                // A block opens or closes: whatever words came before named a block, not
                // a `log_format`.
                Kind::Open | Kind::Close => words.clear(),
            }
        }
        if let Some((first, line)) = words.first()
            && first == "log_format"
        {
            return Err(FormatError::Unterminated {
                line: *line,
                name: words.get(1).map(|w| w.0.clone()).unwrap_or_default(),
            });
        }
        Ok(found)
    }

    fn directive(words: &[(String, usize)]) -> Result<Option<Declared>, FormatError> {
        let Some(((first, line), args)) = words.split_first() else {
            return Ok(None);
        };
        if first != "log_format" {
            return Ok(None);
        }
        let line = *line;
        let Some(((name, _), mut args)) = args.split_first() else {
            return Err(FormatError::MissingName { line });
        };
        let mut escape = Escape::Default;
        if let Some(((arg, _), rest)) = args.split_first()
            && let Some(value) = arg.strip_prefix("escape=")
        {
            escape = match value {
                "default" => Escape::Default,
                "json" => Escape::Json,
                "none" => Escape::None,
                _ => {
                    return Err(FormatError::UnknownEscape {
                        line,
                        name: name.clone(),
                        value: value.to_owned(),
                    });
                }
            };
            args = rest;
        }
        if args.is_empty() {
            return Err(FormatError::MissingFormat {
                line,
                name: name.clone(),
            });
        }
        Ok(Some(Declared {
            name: name.clone(),
            line,
            escape,
            // nginx joins the parts with nothing between them.
            format: args.iter().map(|(a, _)| a.as_str()).collect(),
        }))
    }
}

/// Counters a follower keeps for `status` and `/metrics`; shared with readers.
#[derive(Debug, Default)]
pub struct FollowStats {
    lines: AtomicU64,
    malformed: AtomicU64,
    bytes: AtomicU64,
    rotations: AtomicU64,
    truncations: AtomicU64,
    io_errors: AtomicU64,
    unattributed: AtomicU64,
    dropped: AtomicU64,
    state: AtomicU8,
    last_malformed: Mutex<Option<String>>,
    last_error: Mutex<Option<String>>,
}

/// What a follower is doing, for `status` and `doctor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FollowState {
    /// It has not looked at the path yet.
    #[default]
    Starting,
    /// The path does not exist (yet), or could not be opened.
    Waiting,
    /// A file is open and being read.
    Following,
}

/// A copy of [`FollowStats`] at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FollowSnapshot {
    /// Complete lines read, malformed ones included.
    pub lines: u64,
    pub malformed: u64,
    pub bytes: u64,
    /// The path named a new file (rotation by rename, or delete and create).
    pub rotations: u64,
    /// The file shrank under the follower (copytruncate).
    pub truncations: u64,
    pub io_errors: u64,
    /// Requests read but tied to no release: the upstream address is no slot's (nginx
    /// answered itself, or another upstream did), or nothing was active yet.
    pub unattributed: u64,
    /// Requests read but never given to the guard because it stayed behind.
    pub dropped: u64,
    pub state: FollowState,
    /// The start of the last malformed line, lossily decoded.
    pub last_malformed: Option<String>,
    pub last_error: Option<String>,
}

impl FollowStats {
    pub fn snapshot(&self) -> FollowSnapshot {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        FollowSnapshot {
            lines: load(&self.lines),
            malformed: load(&self.malformed),
            bytes: load(&self.bytes),
            rotations: load(&self.rotations),
            truncations: load(&self.truncations),
            io_errors: load(&self.io_errors),
            unattributed: load(&self.unattributed),
            dropped: load(&self.dropped),
            state: match self.state.load(Ordering::Relaxed) {
                1 => FollowState::Waiting,
                2 => FollowState::Following,
                _ => FollowState::Starting,
            },
            last_malformed: lock(&self.last_malformed).clone(),
            last_error: lock(&self.last_error).clone(),
        }
    }

    /// Counts requests that could not be tied to a release (see
    /// [`FollowSnapshot::unattributed`]); the consumer of the records counts these.
    pub fn add_unattributed(&self, n: u64) {
        self.unattributed.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts requests the consumer gave up handing on (see [`FollowSnapshot::dropped`]);
    /// returns the total so far.
    pub fn add_dropped(&self, n: u64) -> u64 {
        self.dropped.fetch_add(n, Ordering::Relaxed) + n
    }

    fn set_state(&self, state: FollowState) {
        let code = match state {
            FollowState::Starting => 0,
            FollowState::Waiting => 1,
            FollowState::Following => 2,
        };
        self.state.store(code, Ordering::Relaxed);
    }

    fn error(&self, what: &str, err: &io::Error) {
        self.io_errors.fetch_add(1, Ordering::Relaxed);
        *lock(&self.last_error) = Some(format!("{what}: {err}"));
    }
}

/// A poisoned lock only means a reader panicked mid-copy; the sample is still usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A piece of input the splitter hands on.
enum Piece<'a> {
    Line(&'a [u8]),
    /// A line longer than [`MAX_LINE`], already dropped.
    TooLong,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Skip {
    No,
    /// The rest of a line the follower joined in the middle of.
    Silently,
    /// The rest of an over-long line, reported once as [`Piece::TooLong`].
    AsTooLong,
}

/// Cuts a byte stream into lines, keeping an unfinished last line (up to [`MAX_LINE`])
/// until its newline arrives.
#[derive(Debug)]
struct LineSplitter {
    partial: Vec<u8>,
    skip: Skip,
}

impl LineSplitter {
    fn new() -> LineSplitter {
        LineSplitter {
            partial: Vec::new(),
            skip: Skip::No,
        }
    }

    fn feed(&mut self, mut chunk: &[u8], mut each: impl FnMut(Piece<'_>)) {
        if self.skip != Skip::No || !self.partial.is_empty() {
            let Some(nl) = memchr::memchr(b'\n', chunk) else {
                self.keep(chunk);
                return;
            };
            let head = &chunk[..nl];
            chunk = &chunk[nl + 1..];
            match self.skip {
                Skip::No if self.partial.len() + head.len() > MAX_LINE => each(Piece::TooLong),
                Skip::No => {
                    self.partial.extend_from_slice(head);
                    each(Piece::Line(&self.partial));
                }
                Skip::Silently => {}
                Skip::AsTooLong => each(Piece::TooLong),
            }
            self.partial.clear();
            self.skip = Skip::No;
        }
        let mut start = 0;
        for nl in memchr::memchr_iter(b'\n', chunk) {
            let line = &chunk[start..nl];
            each(if line.len() > MAX_LINE {
                Piece::TooLong
            } else {
                Piece::Line(line)
            });
            start = nl + 1;
        }
        self.keep(&chunk[start..]);
    }

    fn keep(&mut self, tail: &[u8]) {
        if tail.is_empty() || self.skip != Skip::No {
            return;
        }
        if self.partial.len() + tail.len() > MAX_LINE {
            self.partial = Vec::new();
            self.skip = Skip::AsTooLong;
        } else {
            self.partial.extend_from_slice(tail);
        }
    }

    /// The file is finished: an unterminated remainder is handed on as a last line.
    fn finish(&mut self, mut each: impl FnMut(Piece<'_>)) {
        match self.skip {
            Skip::No if !self.partial.is_empty() => each(Piece::Line(&self.partial)),
            Skip::AsTooLong => each(Piece::TooLong),
            _ => {}
        }
        self.reset();
    }

    /// Drops whatever is held; `true` if that was part of a line.
    fn reset(&mut self) -> bool {
        let dropped = !self.partial.is_empty() || self.skip == Skip::AsTooLong;
        self.partial.clear();
        self.skip = Skip::No;
        dropped
    }
}

/// Collects parsed records and counters for one chunk, then hands them on at once, so the
/// shared atomics and the channel are touched once per chunk rather than once per line.
struct Sink {
    format: LogFormat,
    batch: Vec<AccessRecord>,
    lines: u64,
    malformed: u64,
    bad_sample: Option<Vec<u8>>,
}

impl Sink {
    fn piece(&mut self, piece: Piece<'_>) {
        self.lines += 1;
        match piece {
            Piece::Line(line) => match self.format.parse_line(line) {
                Some(rec) => self.batch.push(rec),
                None => {
                    self.malformed += 1;
                    let sample = self.bad_sample.get_or_insert_with(Vec::new);
                    sample.clear();
                    sample.extend_from_slice(&line[..line.len().min(SAMPLE_BYTES)]);
                }
            },
            Piece::TooLong => {
                self.malformed += 1;
                self.bad_sample =
                    Some(format!("<a line longer than {MAX_LINE} bytes>").into_bytes());
            }
        }
    }

    /// Publishes the counters and sends the batch; `false` once the receiver is gone.
    async fn flush(&mut self, stats: &FollowStats, tx: &mpsc::Sender<Vec<AccessRecord>>) -> bool {
        stats
            .lines
            .fetch_add(std::mem::take(&mut self.lines), Ordering::Relaxed);
        stats
            .malformed
            .fetch_add(std::mem::take(&mut self.malformed), Ordering::Relaxed);
        if let Some(sample) = self.bad_sample.take() {
            *lock(&stats.last_malformed) = Some(String::from_utf8_lossy(&sample).into_owned());
        }
        if self.batch.is_empty() {
            return !tx.is_closed();
        }
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH_HINT));
        tx.send(batch).await.is_ok()
    }
}

const BATCH_HINT: usize = 1024;
const READ_CHUNK: usize = 256 * 1024;
/// Chunks read from one file before the follower looks at the path again, so a file that
/// grows faster than it is read cannot hide a rotation.
const CHUNKS_PER_POLL: usize = 64;

/// One open file being read.
struct Tail {
    file: tokio::fs::File,
    id: (u64, u64),
    pos: u64,
    lines: LineSplitter,
}

enum Drained {
    /// Read this many bytes; stopped at the end of the file or the chunk limit.
    Read(u64),
    Closed,
}

/// Follows an access log like `tail -F`. Build with [`Follower::new`], run with
/// [`Follower::run`].
#[derive(Debug, Clone)]
pub struct Follower {
    path: PathBuf,
    format: LogFormat,
    start_at_end: bool,
    poll: Duration,
    rotate_wait: Duration,
}

impl Follower {
    /// Defaults: start at the end, poll every 50 ms, keep reading a rotated file for 5 s.
    pub fn new(path: impl Into<PathBuf>, format: LogFormat) -> Follower {
        Follower {
            path: path.into(),
            format,
            start_at_end: true,
            poll: Duration::from_millis(50),
            rotate_wait: Duration::from_secs(5),
        }
    }

    /// Whether a file that exists when the follower starts is read from its end (only new
    /// requests) or its start. A file that appears later is always read from its start.
    pub fn start_at_end(mut self, at_end: bool) -> Follower {
        self.start_at_end = at_end;
        self
    }

    pub fn poll_interval(mut self, every: Duration) -> Follower {
        self.poll = every;
        self
    }

    /// How long a file renamed away is still read after the path names a new one: nginx
    /// writes to the old file until it is told to reopen its logs (`USR1`), which
    /// logrotate does only after creating the new file.
    pub fn rotate_wait(mut self, wait: Duration) -> Follower {
        self.rotate_wait = wait;
        self
    }

    /// Follows the path, sending a batch of records per chunk read, until the receiver is
    /// dropped. IO errors are counted in `stats` and retried at the next poll; nothing
    /// about the file makes it return.
    pub async fn run(self, tx: mpsc::Sender<Vec<AccessRecord>>, stats: Arc<FollowStats>) {
        let mut sink = Sink {
            format: self.format.clone(),
            batch: Vec::with_capacity(BATCH_HINT),
            lines: 0,
            malformed: 0,
            bad_sample: None,
        };
        let mut buf = vec![0u8; READ_CHUNK];
        let mut current: Option<Tail> = None;
        let mut retired: Vec<(Tail, Instant)> = Vec::new();
        let mut seek_end = self.start_at_end;
        loop {
            if tx.is_closed() {
                return;
            }
            let mut progressed = false;

            let mut i = 0;
            while i < retired.len() {
                let expired = retired[i].1 <= Instant::now();
                // An expired file is read to its end one last time before it is dropped.
                let limit = if expired { usize::MAX } else { CHUNKS_PER_POLL };
                match drain(&mut retired[i].0, &mut buf, limit, &mut sink, &stats, &tx).await {
                    Ok(Drained::Closed) => return,
                    Ok(Drained::Read(n)) => progressed |= n > 0,
                    Err(e) => stats.error("reading a rotated log", &e),
                }
                if expired {
                    let (mut old, _) = retired.swap_remove(i);
                    old.lines.finish(|p| sink.piece(p));
                    if !sink.flush(&stats, &tx).await {
                        return;
                    }
                } else {
                    i += 1;
                }
            }

            match current.as_mut() {
                None => match open(&self.path, seek_end).await {
                    Ok(tail) => {
                        current = Some(tail);
                        seek_end = false;
                        progressed = true;
                        stats.set_state(FollowState::Following);
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        seek_end = false;
                        stats.set_state(FollowState::Waiting);
                    }
                    Err(e) => {
                        stats.error(&format!("opening {}", self.path.display()), &e);
                        stats.set_state(FollowState::Waiting);
                    }
                },
                Some(tail) => {
                    match drain(tail, &mut buf, CHUNKS_PER_POLL, &mut sink, &stats, &tx).await {
                        Ok(Drained::Closed) => return,
                        Ok(Drained::Read(n)) => progressed |= n > 0,
                        Err(e) => stats.error(&format!("reading {}", self.path.display()), &e),
                    }
                    match tokio::fs::metadata(&self.path).await {
                        Ok(meta) if (meta.dev(), meta.ino()) != tail.id => {
                            // Renamed away and replaced: keep reading the old file for a
                            // while, and read the new one from its start.
                            stats.rotations.fetch_add(1, Ordering::Relaxed);
                            if let Some(old) = current.take() {
                                retired.push((old, Instant::now() + self.rotate_wait));
                            }
                            progressed = true;
                        }
                        Ok(meta) if meta.len() < tail.pos => {
                            // Copied and truncated in place. Lines written between the
                            // copy and the truncation are lost to every reader; if the
                            // file grows past the old offset before this poll sees it,
                            // the shrink is invisible (as it is to `tail -F`).
                            stats.truncations.fetch_add(1, Ordering::Relaxed);
                            if tail.lines.reset() {
                                sink.malformed += 1;
                                sink.lines += 1;
                            }
                            match tail.file.seek(SeekFrom::Start(0)).await {
                                Ok(_) => tail.pos = 0,
                                Err(e) => {
                                    stats.error("seeking a truncated log", &e);
                                    current = None;
                                }
                            }
                            progressed = true;
                        }
                        // Gone (renamed, not yet replaced): the open file is still the
                        // one nginx writes to until it reopens its logs.
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => stats.error(&format!("checking {}", self.path.display()), &e),
                    }
                }
            }
            if !sink.flush(&stats, &tx).await {
                return;
            }
            if !progressed {
                tokio::time::sleep(self.poll).await;
            }
        }
    }
}

/// Follows `path` with the default poll interval and rotation wait; see [`Follower`].
pub async fn run(
    path: impl Into<PathBuf>,
    format: LogFormat,
    start_at_end: bool,
    tx: mpsc::Sender<Vec<AccessRecord>>,
    stats: Arc<FollowStats>,
) {
    Follower::new(path, format)
        .start_at_end(start_at_end)
        .run(tx, stats)
        .await;
}

async fn open(path: &std::path::Path, at_end: bool) -> io::Result<Tail> {
    let file = tokio::fs::File::open(path).await?;
    // The identity comes from the open descriptor, not the path, which may already name
    // another file.
    let meta = file.metadata().await?;
    let mut tail = Tail {
        file,
        id: (meta.dev(), meta.ino()),
        pos: 0,
        lines: LineSplitter::new(),
    };
    if at_end && meta.len() > 0 {
        // Joining in the middle of a line would report its end as a malformed line.
        tail.file.seek(SeekFrom::Start(meta.len() - 1)).await?;
        let mut last = [0u8; 1];
        tail.file.read_exact(&mut last).await?;
        if last[0] != b'\n' {
            tail.lines.skip = Skip::Silently;
        }
        tail.pos = meta.len();
    }
    Ok(tail)
}

/// Reads up to `max_chunks` chunks (stopping at the end of the file), parsing and sending
/// as it goes.
async fn drain(
    tail: &mut Tail,
    buf: &mut [u8],
    max_chunks: usize,
    sink: &mut Sink,
    stats: &FollowStats,
    tx: &mpsc::Sender<Vec<AccessRecord>>,
) -> io::Result<Drained> {
    let mut total = 0u64;
    for _ in 0..max_chunks {
        let n = tail.file.read(buf).await?;
        if n == 0 {
            break;
        }
        let n64 = n as u64;
        tail.pos += n64;
        total += n64;
        stats.bytes.fetch_add(n64, Ordering::Relaxed);
        tail.lines.feed(&buf[..n], |p| sink.piece(p));
        if !sink.flush(stats, tx).await {
            return Ok(Drained::Closed);
        }
    }
    Ok(Drained::Read(total))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use proptest::prelude::*;

    use super::*;

    const CUSTOM: &str = r#"$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent" rt=$request_time uct="$upstream_connect_time" urt="$upstream_response_time" ua="$upstream_addr""#;

    /// 2026-11-26T13:22:12Z, as `date -u -d ... +%s` prints it.
    const AT: i64 = 1_795_699_332_000;

    fn custom() -> LogFormat {
        LogFormat::new(CUSTOM).expect("the custom format compiles")
    }

    fn rec(
        status: u16,
        rt: Option<u64>,
        urt: Option<u64>,
        addr: Option<&str>,
        at_ms: Option<i64>,
    ) -> AccessRecord {
        AccessRecord {
            status,
            request_time_us: rt,
            upstream_time_us: urt,
            upstream_addr: addr.map(str::to_owned),
            at_ms,
            method: None,
            path: None,
        }
    }

    #[track_caller]
    fn check(format: &LogFormat, line: &str, expected: Option<AccessRecord>) {
        assert_eq!(format.parse_line(line.as_bytes()), expected, "line: {line}");
    }

    fn custom_line(status: u16, rt: &str, urt: &str, ua: &str) -> String {
        format!(
            r#"10.0.0.9 - - [26/Nov/2026:13:22:12 +0000] "GET /items HTTP/1.1" {status} 12 "-" "curl/8.5.0" rt={rt} uct="0.001" urt="{urt}" ua="{ua}""#
        )
    }

    #[test]
    fn combined_compiles_and_names_its_variables() {
        let f = LogFormat::combined();
        assert_eq!(f.as_str(), COMBINED);
        assert!(f.has_variable("time_local"));
        assert!(f.has_variable("STATUS"));
        assert!(!f.has_variable("upstream_addr"));
        assert_eq!(f.escape(), Escape::Default);
        let recommended = LogFormat::new(RECOMMENDED).unwrap();
        assert!(recommended.has_variable("upstream_addr"));
    }

    #[test]
    fn format_compile_errors() {
        assert_eq!(
            LogFormat::new("$remote_addr [$time_local]").unwrap_err(),
            FormatError::NoStatus
        );
        assert_eq!(
            LogFormat::new("$status $ x").unwrap_err(),
            FormatError::EmptyVariable { at: 8 }
        );
        assert_eq!(
            LogFormat::new("$status ${x").unwrap_err(),
            FormatError::UnclosedBrace { at: 8 }
        );
        assert_eq!(
            LogFormat::new("$status$request_time").unwrap_err(),
            FormatError::Adjacent {
                first: "status".into(),
                second: "request_time".into()
            }
        );
        // Two skipped variables side by side are skipped as one.
        let f = LogFormat::new("$remote_addr$remote_user $status").expect("compiles");
        check(&f, "1.2.3.4- 404", Some(rec(404, None, None, None, None)));
        // `${name}` is the same variable as `$name`.
        let f = LogFormat::new("s=${status}ms").expect("compiles");
        check(&f, "s=200ms", Some(rec(200, None, None, None, None)));
    }

    #[test]
    fn combined_lines() {
        let f = LogFormat::combined();
        let at = Some(AT);
        check(
            &f,
            r#"127.0.0.1 - - [26/Nov/2026:13:22:12 +0000] "GET /api/items?id=7 HTTP/1.1" 200 512 "-" "curl/8.5.0""#,
            Some(rec(200, None, None, None, at)),
        );
        // The same instant written with a +05:30 offset, and a trailing newline.
        check(
            &f,
            "::1 - bob [26/Nov/2026:18:52:12 +0530] \"POST /login HTTP/2.0\" 503 0 \"https://x/\" \"ua\"\n",
            Some(rec(503, None, None, None, at)),
        );
        // nginx's default escaping of quotes, and backslash-escaped quotes (escape=json,
        // or another writer) in the referer and the user agent.
        check(
            &f,
            r#"1.2.3.4 - - [26/Nov/2026:13:22:12 +0000] "GET /a\x22b HTTP/1.1" 404 9 "x\"y\" z" "Mozilla/5.0 \x22quoted\x22 \"and\" this""#,
            Some(rec(404, None, None, None, at)),
        );
        // A client that sent no request line.
        check(
            &f,
            r#"1.2.3.4 - - [26/Nov/2026:13:22:12 +0000] "-" 400 0 "-" "-""#,
            Some(rec(400, None, None, None, at)),
        );
        // Malformed: truncated, bad status, bad month, missing bracket, empty, day 31 of
        // November, extra text after the format.
        for bad in [
            r#"127.0.0.1 - - [26/Nov/2026:13:22:12 +0000] "GET / HTTP/1.1" 200 512 "-" "#,
            r#"127.0.0.1 - - [26/Nov/2026:13:22:12 +0000] "GET / HTTP/1.1" 2x0 512 "-" "-""#,
            r#"127.0.0.1 - - [26/Foo/2026:13:22:12 +0000] "GET / HTTP/1.1" 200 512 "-" "-""#,
            r#"127.0.0.1 - - 26/Nov/2026:13:22:12 +0000] "GET / HTTP/1.1" 200 512 "-" "-""#,
            "",
            r#"127.0.0.1 - - [31/Nov/2026:13:22:12 +0000] "GET / HTTP/1.1" 200 512 "-" "-""#,
            r#"127.0.0.1 - - [26/Nov/2026:13:22:12 +0000] "GET / HTTP/1.1" 200 512 "-" "-" x"#,
        ] {
            check(&f, bad, None);
        }
    }

    #[test]
    fn request_line_is_kept_only_when_asked() {
        let line = br#"1.2.3.4 - - [26/Nov/2026:13:22:12 +0000] "DELETE /items/7?x=1 HTTP/1.1" 204 0 "-" "-""#;
        let f = LogFormat::combined();
        let r = f.parse_ref(line).expect("parses");
        assert_eq!(
            (r.method(), r.path()),
            (Some("DELETE"), Some("/items/7?x=1"))
        );
        assert_eq!(f.parse_line(line).expect("parses").method, None);
        let f = LogFormat::combined().with_request(true);
        let r = f.parse_line(line).expect("parses");
        assert_eq!(r.method.as_deref(), Some("DELETE"));
        assert_eq!(r.path.as_deref(), Some("/items/7?x=1"));
    }

    #[test]
    fn custom_lines() {
        let f = custom();
        let at = Some(AT);
        let cases: [(&str, &str, &str, Option<AccessRecord>); 10] = [
            (
                "0.123",
                "0.120",
                "127.0.0.1:8001",
                Some(rec(
                    200,
                    Some(123_000),
                    Some(120_000),
                    Some("127.0.0.1:8001"),
                    at,
                )),
            ),
            // nginx never reached an upstream.
            ("0.000", "-", "-", Some(rec(200, Some(0), None, None, at))),
            // Retried: the last upstream answered.
            (
                "0.622",
                "0.500, 0.120",
                "127.0.0.1:8000, 127.0.0.1:8001",
                Some(rec(
                    200,
                    Some(622_000),
                    Some(120_000),
                    Some("127.0.0.1:8001"),
                    at,
                )),
            ),
            // An internal redirect to another upstream group.
            (
                "0.060",
                "0.002 : 0.050",
                "127.0.0.1:8000 : 127.0.0.1:8001",
                Some(rec(
                    200,
                    Some(60_000),
                    Some(50_000),
                    Some("127.0.0.1:8001"),
                    at,
                )),
            ),
            (
                "1.5",
                "1.499",
                "[::1]:8001",
                Some(rec(
                    200,
                    Some(1_500_000),
                    Some(1_499_000),
                    Some("[::1]:8001"),
                    at,
                )),
            ),
            (
                "0.010",
                "0.004, 0.005",
                "[::1]:8000, [::1]:8001",
                Some(rec(200, Some(10_000), Some(5_000), Some("[::1]:8001"), at)),
            ),
            (
                "0.010",
                "0.005",
                "unix:/run/app.sock",
                Some(rec(
                    200,
                    Some(10_000),
                    Some(5_000),
                    Some("unix:/run/app.sock"),
                    at,
                )),
            ),
            // The last try failed to connect.
            (
                "3.001",
                "3.000, -",
                "10.0.0.1:80, 10.0.0.2:80",
                Some(rec(200, Some(3_001_000), None, Some("10.0.0.2:80"), at)),
            ),
            ("abc", "0.1", "a:1", None),
            ("0.1", "0.1.2", "a:1", None),
        ];
        for (rt, urt, ua, expected) in cases {
            check(&f, &custom_line(200, rt, urt, ua), expected);
        }
        check(
            &f,
            &custom_line(502, "0.001", "-", "app"),
            Some(rec(502, Some(1_000), None, Some("app"), at)),
        );
    }

    #[test]
    fn variables_are_found_wherever_they_sit() {
        let f = LogFormat::new("$msec $upstream_addr $status $request_time").expect("compiles");
        check(
            &f,
            "1795699332.123 10.0.0.2:80 503 1.5",
            Some(rec(
                503,
                Some(1_500_000),
                None,
                Some("10.0.0.2:80"),
                Some(AT + 123),
            )),
        );
        let f = LogFormat::new("[$time_iso8601] $status").expect("compiles");
        check(
            &f,
            "[2026-11-26T18:52:12+05:30] 200",
            Some(rec(200, None, None, None, Some(AT))),
        );
        check(
            &f,
            "[2026-11-26T13:22:12Z] 200",
            Some(rec(200, None, None, None, Some(AT))),
        );
        check(
            &f,
            "[2026-11-26T13:22:12+0000] 200",
            Some(rec(200, None, None, None, Some(AT))),
        );
        check(&f, "[2026-13-26T13:22:12+00:00] 200", None);
        // `$msec` is the most precise clock, whichever comes first.
        let f = LogFormat::new("$msec [$time_local] $status").expect("compiles");
        check(
            &f,
            "1795699332.999 [26/Nov/2026:13:22:12 +0000] 200",
            Some(rec(200, None, None, None, Some(AT + 999))),
        );
    }

    #[test]
    fn known_dates() {
        let at = |s: &str| parse_time_local(s.as_bytes());
        assert_eq!(at("01/Jan/1970:00:00:00 +0000"), Some(0));
        assert_eq!(at("31/Dec/1999:23:59:59 -0800"), Some(946_713_599_000));
        assert_eq!(at("29/Feb/2024:00:00:00 +0000"), Some(1_709_164_800_000));
        assert_eq!(at("29/Feb/2023:00:00:00 +0000"), None);
        assert_eq!(at("29/Feb/2000:00:00:00 +0000"), Some(951_782_400_000));
        assert_eq!(at("29/Feb/1900:00:00:00 +0000"), None);
        assert_eq!(at("31/Dec/1969:23:59:59 +0000"), Some(-1000));
    }

    #[test]
    fn json_and_unescaped_formats() {
        let f = LogFormat::with_escape(
            r#"{"status":$status,"agent":"$http_user_agent","up":"$upstream_addr","rt":$request_time}"#,
            Escape::Json,
        )
        .expect("compiles");
        check(
            &f,
            r#"{"status":201,"agent":"a \"b\" c\\","up":"[::1]:8001","rt":0.004}"#,
            Some(rec(201, Some(4_000), None, Some("[::1]:8001"), None)),
        );
        // With escape=none a value may hold its own delimiter; the match backtracks.
        let f = LogFormat::with_escape(COMBINED, Escape::None).expect("compiles");
        check(
            &f,
            r#"1.2.3.4 - - [26/Nov/2026:13:22:12 +0000] "GET /a" b HTTP/1.1" 404 9 "x" "y""#,
            Some(rec(404, None, None, None, Some(AT))),
        );
    }

    const CONF: &str = r#"user www-data;
# log_format main '$nothing';
http {
    log_format main '$remote_addr - $remote_user [$time_local] "$request" '
                    '$status $body_bytes_sent "$http_referer" '   # why: the agent
                    "\"$http_user_agent\" rt=$request_time uct=\"$upstream_connect_time\""
                    ' urt="$upstream_response_time" ua="$upstream_addr"';
    log_format json escape=json
        '{"s":$status,"a":"$upstream_addr"}';
    access_log /var/log/nginx/access.log main;
    server {
        location / { return 200 "x;#{}'"; }
        set $x ${host}a;
    }
}
"#;

    #[test]
    fn formats_from_an_nginx_conf() {
        let f = LogFormat::from_nginx_conf(CONF, "main").expect("main is declared");
        assert_eq!(f.as_str(), CUSTOM);
        check(
            &f,
            &custom_line(500, "0.2", "0.1", "127.0.0.1:8001"),
            Some(rec(
                500,
                Some(200_000),
                Some(100_000),
                Some("127.0.0.1:8001"),
                Some(AT),
            )),
        );
        let f = LogFormat::from_nginx_conf(CONF, "json").expect("json is declared");
        assert_eq!(f.escape(), Escape::Json);
        check(
            &f,
            r#"{"s":200,"a":"10.0.0.1:80"}"#,
            Some(rec(200, None, None, Some("10.0.0.1:80"), None)),
        );
        let f = LogFormat::from_nginx_conf(CONF, "combined").expect("nginx predefines it");
        assert_eq!(f.as_str(), COMBINED);
        let err = LogFormat::from_nginx_conf(CONF, "timed").unwrap_err();
        assert_eq!(
            err.to_string(),
            "no log_format named `timed` in the nginx config (it declares `main` at line 4, `json` at line 8)"
        );
    }

    #[test]
    fn conf_errors_name_the_line() {
        let cases = [
            (
                "http {\n    log_format ;\n}\n",
                FormatError::MissingName { line: 2 },
            ),
            (
                "http {\n  # it's a comment\n  log_format main '$status\n    $x;\n}\n",
                FormatError::UnterminatedQuote {
                    line: 3,
                    quote: '\'',
                },
            ),
            (
                "\n\nlog_format main \"$status;\n",
                FormatError::UnterminatedQuote {
                    line: 3,
                    quote: '"',
                },
            ),
            (
                "log_format main;\n",
                FormatError::MissingFormat {
                    line: 1,
                    name: "main".into(),
                },
            ),
            (
                "http {\n\nlog_format main\n  '$status'\n",
                FormatError::Unterminated {
                    line: 3,
                    name: "main".into(),
                },
            ),
            (
                "log_format main escape=xml '$status';",
                FormatError::UnknownEscape {
                    line: 1,
                    name: "main".into(),
                    value: "xml".into(),
                },
            ),
            (
                "events {}\nhttp {\n  log_format main '$remote_addr';\n}",
                FormatError::InDirective {
                    line: 3,
                    name: "main".into(),
                    error: Box::new(FormatError::NoStatus),
                },
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(
                LogFormat::from_nginx_conf(text, "main").unwrap_err(),
                expected,
                "{text}"
            );
        }
        assert_eq!(
            FormatError::InDirective {
                line: 3,
                name: "main".into(),
                error: Box::new(FormatError::NoStatus),
            }
            .to_string(),
            "line 3: log_format `main`: the format has no $status, so requests cannot be classified"
        );
    }

    #[test]
    fn setting_is_a_format_or_a_name() {
        let f = LogFormat::from_setting(Some("$status $request_time"), None).expect("a format");
        assert_eq!(f.as_str(), "$status $request_time");
        let f = LogFormat::from_setting(Some("main"), Some(CONF)).expect("a name");
        assert_eq!(f.as_str(), CUSTOM);
        let f = LogFormat::from_setting(None, None).expect("the default");
        assert_eq!(f.as_str(), COMBINED);
        assert!(matches!(
            LogFormat::from_setting(Some("main"), None),
            Err(FormatError::NotFound { .. })
        ));
    }

    // ---- the line splitter ----

    fn split_all(chunks: &[&[u8]]) -> (Vec<Vec<u8>>, usize) {
        let mut s = LineSplitter::new();
        let mut lines = Vec::new();
        let mut too_long = 0;
        for chunk in chunks {
            s.feed(chunk, |p| match p {
                Piece::Line(l) => lines.push(l.to_vec()),
                Piece::TooLong => too_long += 1,
            });
        }
        (lines, too_long)
    }

    #[test]
    fn splitter_keeps_partial_lines_and_drops_long_ones() {
        let (lines, long) = split_all(&[b"a\nb", b"c", b"d\n\ne"]);
        assert_eq!(lines, vec![b"a".to_vec(), b"bcd".to_vec(), Vec::new()]);
        assert_eq!(long, 0);
        let big = vec![b'x'; MAX_LINE];
        let (lines, long) = split_all(&[&big, b"y", &big, b"\nok\n"]);
        assert_eq!((lines, long), (vec![b"ok".to_vec()], 1));
        let mut whole = vec![b'x'; MAX_LINE + 1];
        whole.extend_from_slice(b"\nok\n");
        let (lines, long) = split_all(&[&whole]);
        assert_eq!((lines, long), (vec![b"ok".to_vec()], 1));
    }

    // ---- the follower, on real files ----

    struct Running {
        rx: mpsc::Receiver<Vec<AccessRecord>>,
        stats: Arc<FollowStats>,
        task: tokio::task::JoinHandle<()>,
    }

    /// Starts a follower and waits until it has looked at the path, so that what a test
    /// writes next is new to it.
    async fn follow(path: &std::path::Path, at_end: bool) -> Running {
        let (tx, rx) = mpsc::channel(16);
        let stats = Arc::new(FollowStats::default());
        let follower = Follower::new(path, custom())
            .start_at_end(at_end)
            .poll_interval(Duration::from_millis(10))
            .rotate_wait(Duration::from_millis(300));
        let task = tokio::spawn(follower.run(tx, stats.clone()));
        let deadline = Instant::now() + Duration::from_secs(5);
        while stats.snapshot().state == FollowState::Starting {
            assert!(
                Instant::now() < deadline,
                "the follower never looked at the path"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Running { rx, stats, task }
    }

    impl Running {
        /// The statuses of the next `n` records, failing after a deadline.
        async fn statuses(&mut self, n: usize) -> Vec<u16> {
            let mut out = Vec::new();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while out.len() < n {
                match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                    Ok(Some(batch)) => out.extend(batch.iter().map(|r| r.status)),
                    _ => panic!(
                        "got {out:?}, wanted {n} records; {:?}",
                        self.stats.snapshot()
                    ),
                }
            }
            assert_eq!(out.len(), n, "more records than expected: {out:?}");
            out
        }

        /// Nothing more arrives for a few polls.
        async fn quiet(&mut self) {
            tokio::time::sleep(Duration::from_millis(80)).await;
            if let Ok(batch) = self.rx.try_recv() {
                panic!("unexpected records: {batch:?}");
            }
        }
    }

    fn lines(statuses: &[u16]) -> String {
        statuses
            .iter()
            .map(|&s| custom_line(s, "0.010", "0.009", "127.0.0.1:8001") + "\n")
            .collect()
    }

    fn append(path: &std::path::Path, text: &str) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("open for append");
        f.write_all(text.as_bytes()).expect("append");
    }

    #[tokio::test]
    async fn follows_appends_from_the_end() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("access.log");
        append(&path, &lines(&[201, 202]));
        let mut run = follow(&path, true).await;
        append(&path, &lines(&[200, 404]));
        append(&path, &lines(&[500]));
        assert_eq!(run.statuses(3).await, vec![200, 404, 500]);
        run.quiet().await;
        let stats = run.stats.snapshot();
        assert_eq!((stats.lines, stats.malformed), (3, 0));
        assert_eq!(stats.bytes, lines(&[200, 404, 500]).len() as u64);
    }

    #[tokio::test]
    async fn reads_from_the_start_when_asked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("access.log");
        append(&path, &lines(&[201, 202]));
        let mut run = follow(&path, false).await;
        assert_eq!(run.statuses(2).await, vec![201, 202]);
        run.quiet().await;
    }

    #[tokio::test]
    async fn survives_rotation_by_rename() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("access.log");
        let rotated = dir.path().join("access.log.1");
        append(&path, "");
        let mut run = follow(&path, true).await;
        append(&path, &lines(&[200, 201]));
        assert_eq!(run.statuses(2).await, vec![200, 201]);
        std::fs::rename(&path, &rotated).expect("rename");
        // nginx keeps writing to the renamed file until it reopens its logs.
        append(&rotated, &lines(&[502]));
        append(&path, &lines(&[203, 204]));
        let mut got = run.statuses(3).await;
        got.sort_unstable();
        assert_eq!(got, vec![203, 204, 502]);
        append(&rotated, &lines(&[503]));
        append(&path, &lines(&[205]));
        let mut got = run.statuses(2).await;
        got.sort_unstable();
        assert_eq!(got, vec![205, 503]);
        run.quiet().await;
        assert_eq!(run.stats.snapshot().rotations, 1);
    }

    #[tokio::test]
    async fn survives_copytruncate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("access.log");
        append(&path, "");
        let mut run = follow(&path, true).await;
        append(&path, &lines(&[200, 201, 202]));
        assert_eq!(run.statuses(3).await, vec![200, 201, 202]);
        std::fs::copy(&path, dir.path().join("access.log.1")).expect("copy");
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open")
            .set_len(0)
            .expect("truncate");
        append(&path, &lines(&[503]));
        assert_eq!(run.statuses(1).await, vec![503]);
        append(&path, &lines(&[504]));
        assert_eq!(run.statuses(1).await, vec![504]);
        run.quiet().await;
        let stats = run.stats.snapshot();
        assert_eq!(
            (stats.truncations, stats.rotations, stats.malformed),
            (1, 0, 0)
        );
    }

    #[tokio::test]
    async fn waits_for_a_file_that_does_not_exist_yet() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("later.log");
        let mut run = follow(&path, true).await;
        assert_eq!(run.stats.snapshot().state, FollowState::Waiting);
        // Everything in a file that appears later is new, so it is read from the start.
        append(&path, &lines(&[200, 500]));
        assert_eq!(run.statuses(2).await, vec![200, 500]);
        assert_eq!(run.stats.snapshot().state, FollowState::Following);
        append(&path, &lines(&[404]));
        assert_eq!(run.statuses(1).await, vec![404]);
    }

    #[tokio::test]
    async fn keeps_a_partial_line_until_it_is_complete() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("access.log");
        // The follower joins in the middle of a line: its end is not a malformed line.
        append(&path, &lines(&[200])[..40]);
        let mut run = follow(&path, true).await;
        append(&path, &lines(&[200])[40..]);
        let text = lines(&[201, 502]);
        let cut = text.len() - 30;
        append(&path, &text[..cut]);
        assert_eq!(run.statuses(1).await, vec![201]);
        run.quiet().await;
        append(&path, &text[cut..]);
        assert_eq!(run.statuses(1).await, vec![502]);
        assert_eq!(run.stats.snapshot().malformed, 0);
    }

    #[tokio::test]
    async fn counts_and_samples_malformed_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("access.log");
        append(&path, "");
        let mut run = follow(&path, true).await;
        append(&path, &format!("not an access log line\n{}", lines(&[200])));
        assert_eq!(run.statuses(1).await, vec![200]);
        let stats = run.stats.snapshot();
        assert_eq!((stats.lines, stats.malformed), (2, 1));
        assert_eq!(
            stats.last_malformed.as_deref(),
            Some("not an access log line")
        );
        append(&path, &"x".repeat(MAX_LINE + 10));
        append(&path, &format!("\n{}", lines(&[201])));
        assert_eq!(run.statuses(1).await, vec![201]);
        let stats = run.stats.snapshot();
        assert_eq!((stats.lines, stats.malformed), (4, 2));
        assert!(
            stats
                .last_malformed
                .unwrap_or_default()
                .contains("longer than")
        );
    }

    #[tokio::test]
    async fn stops_when_the_receiver_is_gone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let run = follow(&dir.path().join("never.log"), true).await;
        drop(run.rx);
        tokio::time::timeout(Duration::from_secs(2), run.task)
            .await
            .expect("the follower stops")
            .expect("the follower does not panic");
    }

    // ---- laws ----

    /// The inverse of `days_from_civil` (Hinnant's `civil_from_days`), to write times the
    /// parser must read back.
    fn civil_from_days(days: i64) -> (i64, u32, u32) {
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = u32::try_from(doy - (153 * mp + 2) / 5 + 1).expect("day fits");
        let month = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).expect("month fits");
        let year = yoe + era * 400 + i64::from(month <= 2);
        (year, month, day)
    }

    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];

    fn time_local(secs: i64, offset_min: i64) -> String {
        let local = secs + offset_min * 60;
        let (y, m, d) = civil_from_days(local.div_euclid(86_400));
        let t = local.rem_euclid(86_400);
        let sign = if offset_min < 0 { '-' } else { '+' };
        let off = offset_min.abs();
        format!(
            "{d:02}/{}/{y:04}:{:02}:{:02}:{:02} {sign}{:02}{:02}",
            MONTHS[m as usize - 1],
            t / 3600,
            t / 60 % 60,
            t % 60,
            off / 60,
            off % 60
        )
    }

    fn addr() -> impl Strategy<Value = String> {
        prop_oneof![
            (any::<[u8; 4]>(), 1u16..)
                .prop_map(|(ip, port)| format!("{}.{}.{}.{}:{port}", ip[0], ip[1], ip[2], ip[3])),
            (any::<u16>(), 1u16..).prop_map(|(h, port)| format!("[::{h:x}]:{port}")),
            "[a-z]{1,8}".prop_map(|s| format!("unix:/run/{s}.sock")),
        ]
    }

    prop_compose! {
        fn valid_line()(
            status in 100u16..600,
            secs in 0i64..4_102_444_800,
            offset in -720i64..=840,
            rt_ms in 0u64..100_000,
            tries in prop::collection::vec((proptest::option::of(0u64..60_000), addr()), 1..4),
            agent in "[ -~]{0,40}",
            path in "/[!-~]{0,30}",
        ) -> (String, AccessRecord) {
            // nginx escapes `"` and `\` in values.
            let esc = |s: &str| s.replace('\\', "\\x5C").replace('"', "\\x22");
            let times: Vec<String> = tries
                .iter()
                .map(|(t, _)| t.map_or("-".to_owned(), |ms| format!("{}.{:03}", ms / 1000, ms % 1000)))
                .collect();
            let addrs: Vec<&str> = tries.iter().map(|(_, a)| a.as_str()).collect();
            let line = format!(
                r#"10.1.2.3 - - [{}] "GET {} HTTP/1.1" {status} 5 "-" "{}" rt={}.{:03} uct="0.000" urt="{}" ua="{}""#,
                time_local(secs, offset),
                esc(&path),
                esc(&agent),
                rt_ms / 1000,
                rt_ms % 1000,
                times.join(", "),
                addrs.join(", "),
            );
            let last = tries.last().expect("at least one try");
            let expected = rec(
                status,
                Some(rt_ms * 1000),
                last.0.map(|ms| ms * 1000),
                Some(&last.1),
                Some(secs * 1000),
            );
            (line, expected)
        }
    }

    fn formats() -> Vec<LogFormat> {
        let mut all = vec![LogFormat::combined(), custom()];
        for (text, escape) in [
            (COMBINED, Escape::None),
            (
                r#"{"s":$status,"a":"$upstream_addr","t":"$time_iso8601"}"#,
                Escape::Json,
            ),
            ("$msec $upstream_response_time $status", Escape::Default),
        ] {
            all.push(LogFormat::with_escape(text, escape).expect("compiles"));
        }
        all
    }

    proptest! {
        #[test]
        fn valid_lines_read_back((line, expected) in valid_line()) {
            prop_assert_eq!(custom().parse_line(line.as_bytes()), Some(expected));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
            for f in formats() {
                let _ = f.parse_line(&bytes);
            }
        }

        #[test]
        fn mutated_lines_never_panic(
            (line, _) in valid_line(),
            edits in prop::collection::vec((any::<prop::sample::Index>(), 0u8..3, any::<u8>()), 1..8),
        ) {
            let mut bytes = line.into_bytes();
            for (at, op, byte) in edits {
                let i = at.index(bytes.len() + 1);
                match op {
                    0 => bytes.insert(i, byte),
                    1 if i < bytes.len() => { bytes.remove(i); }
                    _ if i < bytes.len() => bytes[i] = byte,
                    _ => {}
                }
            }
            for f in formats() {
                let _ = f.parse_line(&bytes);
            }
        }

        #[test]
        fn any_chunking_gives_the_same_lines(
            text in prop::collection::vec(prop_oneof![Just(b'\n'), any::<u8>()], 0..400),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..10),
        ) {
            let mut at: Vec<usize> = cuts.iter().map(|c| c.index(text.len() + 1)).collect();
            at.push(0);
            at.push(text.len());
            at.sort_unstable();
            let chunks: Vec<&[u8]> = at.windows(2).map(|w| &text[w[0]..w[1]]).collect();
            prop_assert_eq!(split_all(&chunks), split_all(&[&text]));
        }

        #[test]
        fn format_text_never_panics(text in "[$ {}a-z_'\"\\\\#;\n]{0,80}", name in "[a-z]{0,5}") {
            let _ = LogFormat::new(&text);
            let _ = LogFormat::from_nginx_conf(&text, &name);
            let _ = LogFormat::from_nginx_conf(&format!("log_format {name} {text}"), &name);
        }
    }
}
