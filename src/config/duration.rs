//! Durations, in `ripcord.toml` and on the command line alike: `500ms`, `90s`, `2m`, `1h`
//! (humantime, `1m 30s` too) or a whole number of seconds.
//!
//! The config's duration keys lost their unit suffix when they learnt units:
//! `bake = "5m"` was `bake_secs = 300`. `KEYS` pairs each with its old name, which is
//! still read (a bare number keeps the old name's unit: `floor_ms = 25` and `floor = 25`
//! are both 25 ms).
//!
//! The JSON a config is serialized to (the snapshot the ledger keeps with a release,
//! which `releases --json` prints) keeps the old names and numbers: `as_secs`,
//! `as_millis`.

use std::time::Duration;

/// What a bare number means for one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Whole {
    Seconds,
    Millis,
}

impl Whole {
    pub(crate) fn of(self, n: u64) -> Duration {
        match self {
            Whole::Seconds => Duration::from_secs(n),
            Whole::Millis => Duration::from_millis(n),
        }
    }

    fn expected(self) -> &'static str {
        match self {
            Whole::Seconds => "expected e.g. 500ms, 90s, 2m, 1h, or whole seconds",
            Whole::Millis => "expected e.g. 500us, 25ms, 1s, or whole milliseconds",
        }
    }

    /// What a value of another type is told it should be.
    pub(crate) fn wanted(self) -> &'static str {
        match self {
            Whole::Seconds => "a duration such as \"90s\" or whole seconds",
            Whole::Millis => "a duration such as \"25ms\" or whole milliseconds",
        }
    }
}

/// A duration key of the config, the name it had before units, and what a bare number
/// means under either name.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Key {
    pub(crate) name: &'static str,
    pub(crate) old: &'static str,
    pub(crate) whole: Whole,
}

const fn key(name: &'static str, old: &'static str, whole: Whole) -> Key {
    Key { name, old, whole }
}

/// Every duration key, whichever table it is in.
pub(crate) const KEYS: &[Key] = &[
    key("start_timeout", "start_timeout_secs", Whole::Seconds),
    key("bake", "bake_secs", Whole::Seconds),
    key("stop_timeout", "stop_timeout_secs", Whole::Seconds),
    key("verify_deadline", "verify_deadline_secs", Whole::Seconds),
    key("investigate", "investigate_secs", Whole::Seconds),
    key("interval", "interval_secs", Whole::Seconds),
    key("timeout", "timeout_secs", Whole::Seconds),
    key("window", "window_secs", Whole::Seconds),
    key("for", "for_secs", Whole::Seconds),
    key("floor", "floor_ms", Whole::Millis),
    // Keys born with units have no old name.
    key("drill_budget", "", Whole::Seconds),
    key("drill_max_age", "", Whole::Seconds),
    key("pull_timeout", "", Whole::Seconds),
    key("socket_grace", "", Whole::Seconds),
    key("header_timeout", "", Whole::Seconds),
    key("response_timeout", "", Whole::Seconds),
    key("websocket_drain", "", Whole::Seconds),
];

/// Bounds the config's durations are checked against.
pub(crate) const SECOND: Duration = Duration::from_secs(1);
pub(crate) const HOUR: Duration = Duration::from_secs(3600);
pub(crate) const DAY: Duration = Duration::from_secs(86_400);
/// The shortest probe interval and probe or check timeout.
pub(crate) const MIN_PROBE: Duration = Duration::from_millis(100);

/// The duration key `name` (one of [`KEYS`]).
pub(crate) fn key_named(name: &str) -> Key {
    KEYS.iter()
        .find(|k| k.name == name)
        .copied()
        .unwrap_or_else(|| panic!("`{name}` is not a duration key"))
}

/// The current name of a duration key given by its old name (`bake_secs` → `bake`).
pub(crate) fn renamed(old: &str) -> Option<&'static str> {
    KEYS.iter()
        .find(|k| !k.old.is_empty() && k.old == old)
        .map(|k| k.name)
}

/// `90s`, `2m`, `500ms`, `1h 30m` (humantime) or whole seconds.
pub fn parse(s: &str) -> Result<Duration, String> {
    parse_as(s, Whole::Seconds)
}

/// Like [`parse`], with a bare number in `whole` units.
pub(crate) fn parse_as(s: &str, whole: Whole) -> Result<Duration, String> {
    let t = s.trim();
    let parsed = if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        t.parse().ok().map(|n| whole.of(n))
    } else {
        humantime::parse_duration(t).ok()
    };
    parsed.ok_or_else(|| format!("\"{s}\" is not a duration ({})", whole.expected()))
}

/// A duration in the short form a config takes: `5m`, `30s`, `500ms`, `24h` (the
/// largest unit it is a whole number of).
pub fn unit_text(d: Duration) -> String {
    let ms = d.as_millis();
    if !whole_millis(d) {
        return humantime::format_duration(d).to_string();
    }
    if ms == 0 {
        return "0s".to_string();
    }
    for (unit, per) in [("h", 3_600_000), ("m", 60_000), ("s", 1000)] {
        if ms.is_multiple_of(per) {
            return format!("{}{unit}", ms / per);
        }
    }
    format!("{ms}ms")
}

fn whole_millis(d: Duration) -> bool {
    d.subsec_nanos().is_multiple_of(1_000_000)
}

/// A duration as a number of seconds, for prose ("warm for 300 s"): `300`, `0.5`.
pub fn secs_text(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        d.as_secs().to_string()
    } else {
        d.as_secs_f64().to_string()
    }
}

/// A duration as a number of milliseconds, for prose ("above 25 ms"): `25`, `0.5`.
pub fn millis_text(d: Duration) -> String {
    if whole_millis(d) {
        d.as_millis().to_string()
    } else {
        (d.as_secs_f64() * 1000.0).to_string()
    }
}

/// Whole seconds, rounded up: for the APIs that take seconds (Docker's stop timeout),
/// which must not get less than the config gives.
pub fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// A duration as a JSON number of seconds: an integer when it is whole seconds.
pub fn secs_json(d: Duration) -> serde_json::Value {
    if d.subsec_nanos() == 0 {
        d.as_secs().into()
    } else {
        d.as_secs_f64().into()
    }
}

/// Serializes a duration as seconds (an integer when whole), as `*_secs` keys were.
pub(crate) fn as_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    if d.subsec_nanos() == 0 {
        s.serialize_u64(d.as_secs())
    } else {
        s.serialize_f64(d.as_secs_f64())
    }
}

/// Serializes a duration as milliseconds (an integer when whole), as `*_ms` keys were.
pub(crate) fn as_millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    if whole_millis(*d) {
        s.serialize_u64(d.as_millis() as u64)
    } else {
        s.serialize_f64(d.as_secs_f64() * 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_or_whole_numbers() {
        let check = |input: &str, expected: Option<Duration>| {
            assert_eq!(parse(input).ok(), expected, "{input}");
        };
        check("90", Some(Duration::from_secs(90)));
        check(" 90 ", Some(Duration::from_secs(90)));
        check("90s", Some(Duration::from_secs(90)));
        check("2m", Some(Duration::from_secs(120)));
        check("1h", Some(Duration::from_secs(3600)));
        check("500ms", Some(Duration::from_millis(500)));
        check("1m 30s", Some(Duration::from_secs(90)));
        check("", None);
        check("-1", None);
        check("-5s", None);
        check("1.5", None);
        check("1.5s", Some(Duration::from_millis(1500)));
        check("soon", None);
        check("5 parsecs", None);
        check("99999999999999999999999", None);
        assert_eq!(parse_as("25", Whole::Millis), Ok(Duration::from_millis(25)));
        assert_eq!(
            parse("5 parsecs").unwrap_err(),
            "\"5 parsecs\" is not a duration (expected e.g. 500ms, 90s, 2m, 1h, or whole seconds)"
        );
    }

    #[test]
    fn shown_in_the_largest_whole_unit() {
        for (d, text) in [
            (Duration::ZERO, "0s"),
            (Duration::from_secs(300), "5m"),
            (Duration::from_secs(86_400), "24h"),
            (Duration::from_secs(90), "90s"),
            (Duration::from_millis(1500), "1500ms"),
            (Duration::from_micros(1500), "1ms 500us"),
        ] {
            assert_eq!(unit_text(d), text);
            assert_eq!(parse(&unit_text(d)), Ok(d));
        }
        assert_eq!(ceil_secs(Duration::from_millis(1001)), 2);
        assert_eq!(ceil_secs(Duration::from_secs(10)), 10);
        assert_eq!(secs_text(Duration::from_secs(300)), "300");
        assert_eq!(secs_text(Duration::from_millis(1500)), "1.5");
        assert_eq!(millis_text(Duration::from_millis(25)), "25");
        assert_eq!(millis_text(Duration::from_micros(500)), "0.5");
        assert_eq!(secs_json(Duration::from_secs(2)), serde_json::json!(2));
        assert_eq!(
            secs_json(Duration::from_millis(500)),
            serde_json::json!(0.5)
        );
    }

    #[test]
    fn every_key_has_its_old_name() {
        assert_eq!(renamed("bake_secs"), Some("bake"));
        assert_eq!(renamed("floor_ms"), Some("floor"));
        assert_eq!(renamed("bake"), None);
        assert_eq!(key_named("floor").whole, Whole::Millis);
    }
}
