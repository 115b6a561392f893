//! Which environment values are secrets, and taking them out of text.
//!
//! `redact` at the root of `ripcord.toml` lists name patterns (`*` is any run of
//! characters, matched without regard to case); the values of variables whose names
//! match, in a service's `env`, its env files and every release's env snapshot, are
//! secrets. Everything ripcord writes for people (events and operation errors in the
//! ledger, the watcher's log, webhooks, the control socket's answers, the CLI's errors)
//! goes through [`scrub`], which puts `<redacted>` where a known secret value stood.
//!
//! The set of known values is process-wide, because the text comes from everywhere
//! (an app's log tail in an error, a check's output, a person's reason) and reaches
//! people by many roads; it is filled by whoever reads env values (`execute/`) and is
//! never printed itself. It must never hold a value shorter than [`MIN_SECRET_LEN`]:
//! scrubbing `1` or `on` would garble every message.

use std::borrow::Cow;
use std::sync::RwLock;

/// The patterns when the config names none.
pub const DEFAULT_PATTERNS: &[&str] =
    &["*_KEY", "*_SECRET", "*_TOKEN", "*PASSWORD*", "DATABASE_URL"];

/// What a secret value is replaced with.
pub const REDACTED: &str = "<redacted>";

/// Values shorter than this are not scrubbed from text (they are still never shown as
/// a variable's value).
pub const MIN_SECRET_LEN: usize = 4;

/// The name patterns of secret variables.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Redact {
    pub patterns: Vec<String>,
}

impl Default for Redact {
    fn default() -> Self {
        Redact {
            patterns: DEFAULT_PATTERNS.iter().map(|p| p.to_string()).collect(),
        }
    }
}

impl Redact {
    /// Whether a variable of this name holds a secret.
    pub fn matches(&self, name: &str) -> bool {
        let name = name.to_ascii_uppercase();
        self.patterns
            .iter()
            .any(|p| glob(&p.to_ascii_uppercase(), &name))
    }

    /// `value`, or `<redacted>` when `name` is a secret's.
    pub fn show<'a>(&self, name: &str, value: &'a str) -> &'a str {
        if self.matches(name) { REDACTED } else { value }
    }
}

/// Whether a pattern is well formed: letters, digits, `_` and `*`, not empty.
pub fn valid_pattern(p: &str) -> bool {
    !p.is_empty()
        && p.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '*')
}

/// `*` matches any run of characters (none included); everything else itself.
fn glob(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || !name.ends_with(last) || name.len() < first.len() + last.len() {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

struct Known {
    redact: Redact,
    /// Longest first, so a secret that contains another is replaced whole.
    values: Vec<String>,
}

static KNOWN: RwLock<Option<Known>> = RwLock::new(None);

/// Sets the patterns this process judges names by (from the config).
pub fn configure(redact: &Redact) {
    let mut k = KNOWN.write().unwrap_or_else(|p| p.into_inner());
    match k.as_mut() {
        Some(k) => k.redact = redact.clone(),
        None => {
            *k = Some(Known {
                redact: redact.clone(),
                values: Vec::new(),
            })
        }
    }
}

/// Whether a variable of this name holds a secret, by the configured patterns (the
/// defaults before [`configure`]).
pub fn is_secret(name: &str) -> bool {
    let guard = KNOWN.read().unwrap_or_else(|p| p.into_inner());
    match guard.as_ref() {
        Some(k) => k.redact.matches(name),
        None => Redact::default().matches(name),
    }
}

/// Remembers the values of the secret variables among `vars`, to scrub them from text.
pub fn learn<'a>(vars: impl IntoIterator<Item = (&'a str, &'a str)>) {
    let mut guard = KNOWN.write().unwrap_or_else(|p| p.into_inner());
    let k = guard.get_or_insert_with(|| Known {
        redact: Redact::default(),
        values: Vec::new(),
    });
    for (name, value) in vars {
        if value.len() >= MIN_SECRET_LEN
            && k.redact.matches(name)
            && !k.values.iter().any(|v| v == value)
        {
            k.values.push(value.to_string());
        }
    }
    k.values.sort_by_key(|v| std::cmp::Reverse(v.len()));
}

/// `text` with every known secret value replaced by `<redacted>`.
pub fn scrub(text: &str) -> Cow<'_, str> {
    let guard = KNOWN.read().unwrap_or_else(|p| p.into_inner());
    let Some(k) = guard.as_ref() else {
        return Cow::Borrowed(text);
    };
    let mut out = Cow::Borrowed(text);
    for v in &k.values {
        if out.contains(v.as_str()) {
            out = Cow::Owned(out.replace(v.as_str(), REDACTED));
        }
    }
    out
}

/// Scrubs every string inside a JSON value.
pub fn scrub_json(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::String(s) => {
            if let Cow::Owned(clean) = scrub(s) {
                *s = clean;
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(scrub_json),
        serde_json::Value::Object(map) => map.values_mut().for_each(scrub_json),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_patterns_match_the_usual_secret_names() {
        let r = Redact::default();
        for name in [
            "API_KEY",
            "stripe_secret",
            "GITHUB_TOKEN",
            "PGPASSWORD",
            "DB_PASSWORD_FILE",
            "DATABASE_URL",
        ] {
            assert!(r.matches(name), "{name}");
        }
        for name in [
            "KEYBOARD",
            "RUST_LOG",
            "PORT",
            "TOKENS_PER_SECOND",
            "DATABASE_URL2",
        ] {
            assert!(!r.matches(name), "{name}");
        }
    }

    #[test]
    fn globs_match_anywhere_a_star_says() {
        assert!(glob("A*B*C", "AXXBYYC"));
        assert!(glob("A*B*C", "ABC"));
        assert!(!glob("A*B*C", "AC"));
        assert!(!glob("*AB*BA", "ABA"));
        assert!(glob("*", ""));
        assert!(glob("X", "X") && !glob("X", "XY"));
    }

    #[test]
    fn learned_secrets_are_scrubbed_and_short_or_public_ones_are_not() {
        learn([
            ("TEST_SCRUB_API_KEY", "s3cret-scrub-value"),
            ("TEST_SCRUB_SHORT_TOKEN", "on"),
            ("TEST_SCRUB_LOG", "public-scrub-value"),
        ]);
        assert_eq!(
            scrub("boot: key=s3cret-scrub-value, log public-scrub-value, on"),
            "boot: key=<redacted>, log public-scrub-value, on"
        );
        let mut v = serde_json::json!({"a": ["x s3cret-scrub-value"], "b": 1});
        scrub_json(&mut v);
        assert_eq!(v, serde_json::json!({"a": ["x <redacted>"], "b": 1}));
    }
}
