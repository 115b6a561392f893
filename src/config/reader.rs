//! Stage one of loading `ripcord.toml`: walk the parsed TOML document with its spans and
//! read typed values, collecting *every* problem (unknown key, wrong type, bad value)
//! with its key path and line instead of stopping at the first.
//!
//! This module only reads; it never decides whether a combination of values makes
//! sense (that is stage two, in `validate.rs`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml_edit::{Item, TableLike, Value};

use super::ConfigError;
use super::duration;

/// Collects errors while the document is read.
pub(crate) struct Reader<'a> {
    src: &'a str,
    file: PathBuf,
    pub(crate) errors: Vec<ConfigError>,
    /// Keys already reported as removed, which `deny_unknown` does not report again.
    removed: Vec<String>,
}

/// A table being read, with its key path and where it starts.
pub(crate) struct Table<'a> {
    pub(crate) inner: &'a dyn TableLike,
    pub(crate) path: String,
    pub(crate) span: Option<Range<usize>>,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(src: &'a str, file: &Path) -> Self {
        Reader {
            src,
            file: file.to_path_buf(),
            errors: Vec::new(),
            removed: Vec::new(),
        }
    }

    /// The 1-based line of a byte offset.
    pub(crate) fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.src.len());
        self.src.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    pub(crate) fn error(&mut self, span: Option<Range<usize>>, key: &str, message: String) {
        let line = span.map(|s| self.line_of(s.start));
        self.errors.push(ConfigError {
            file: self.file.clone(),
            line,
            key: key.to_string(),
            message,
        });
    }

    /// Reports keys of `table` that are not in `allowed`. The old name of an allowed
    /// duration key (`bake_secs` for `bake`) is allowed too, but never suggested.
    pub(crate) fn deny_unknown(&mut self, table: &Table<'_>, allowed: &[&str]) {
        for (key, _) in table.inner.iter() {
            let old_name = duration::renamed(key).is_some_and(|new| allowed.contains(&new));
            if !allowed.contains(&key)
                && !old_name
                && !self.removed.contains(&join(&table.path, key))
            {
                let span = key_span(table, key);
                let hint = closest(key, allowed)
                    .map(|c| format!(" (did you mean `{c}`?)"))
                    .unwrap_or_default();
                let expected = allowed
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ");
                self.error(
                    span,
                    &join(&table.path, key),
                    format!("unknown key{hint}; expected one of {expected}"),
                );
            }
        }
    }

    pub(crate) fn string(&mut self, table: &Table<'_>, key: &str) -> Option<Spanned<String>> {
        let item = table.inner.get(key)?;
        match item.as_str() {
            Some(s) => Some(Spanned::new(s.to_string(), item_span(table, key, item))),
            None => {
                self.wrong_type(table, key, item, "a string");
                None
            }
        }
    }

    /// `ca_file = "path"`: a PEM file of CA certificates to trust for the URL beside it,
    /// relative to the config's directory. An unreadable file, or one without a
    /// certificate, is reported here rather than at the first request.
    pub(crate) fn ca_file(&mut self, table: &Table<'_>) -> Option<PathBuf> {
        let s = self.string(table, "ca_file")?;
        let path = PathBuf::from(&s.value);
        let path = if path.is_relative() {
            self.file.parent().unwrap_or(Path::new("")).join(path)
        } else {
            path
        };
        if let Err(e) = crate::http::read_ca_file(&path) {
            self.error(s.span, &join(&table.path, "ca_file"), e.to_string());
            return None;
        }
        Some(path)
    }

    /// A path as given in the config: relative ones are from the config's directory.
    pub(crate) fn beside_config(&self, path: &str) -> PathBuf {
        let path = PathBuf::from(path);
        if path.is_relative() {
            self.file.parent().unwrap_or(Path::new("")).join(path)
        } else {
            path
        }
    }

    pub(crate) fn integer(
        &mut self,
        table: &Table<'_>,
        key: &str,
        min: i64,
        max: i64,
    ) -> Option<Spanned<i64>> {
        let item = table.inner.get(key)?;
        let span = item_span(table, key, item);
        match item.as_integer() {
            Some(n) if (min..=max).contains(&n) => Some(Spanned::new(n, span)),
            Some(n) => {
                self.error(
                    span,
                    &join(&table.path, key),
                    format!("{n} is out of range: expected {min} to {max}"),
                );
                None
            }
            None => {
                self.wrong_type(table, key, item, "an integer");
                None
            }
        }
    }

    /// A duration key (one of `duration::KEYS`) within `min..=max`: `key = "90s"` (units)
    /// or a whole number (seconds; milliseconds for `floor`), also under its old name
    /// (`bake_secs` for `bake`). Both names at once is an error that names both.
    pub(crate) fn duration(
        &mut self,
        table: &Table<'_>,
        key: &str,
        min: Duration,
        max: Duration,
    ) -> Option<Duration> {
        let k = duration::key_named(key);
        let old = (!k.old.is_empty())
            .then(|| table.inner.get(k.old))
            .flatten();
        let (name, item) = match (table.inner.get(key), old) {
            (None, None) => return None,
            (Some(item), None) => (k.name, item),
            (None, Some(item)) => (k.old, item),
            (Some(_), Some(_)) => {
                self.error(
                    key_span(table, k.old),
                    &join(&table.path, k.old),
                    format!(
                        "both `{}` and `{}` are given, and `{}` is the old name of `{}`: keep one",
                        k.name, k.old, k.old, k.name
                    ),
                );
                return None;
            }
        };
        let span = item_span(table, name, item);
        let path = join(&table.path, name);
        let (value, shown) = if let Some(n) = item.as_integer() {
            (u64::try_from(n).ok().map(|n| k.whole.of(n)), n.to_string())
        } else if let Some(s) = item.as_str() {
            match duration::parse_as(s, k.whole) {
                Ok(d) => (Some(d), format!("\"{s}\"")),
                Err(message) => {
                    self.error(span, &path, message);
                    return None;
                }
            }
        } else {
            self.wrong_type(table, name, item, k.whole.wanted());
            return None;
        };
        match value {
            Some(d) if (min..=max).contains(&d) => Some(d),
            _ => {
                self.error(
                    span,
                    &path,
                    format!(
                        "{shown} is out of range: expected {} to {}",
                        duration::unit_text(min),
                        duration::unit_text(max)
                    ),
                );
                None
            }
        }
    }

    pub(crate) fn boolean(&mut self, table: &Table<'_>, key: &str) -> Option<bool> {
        let item = table.inner.get(key)?;
        match item.as_bool() {
            Some(b) => Some(b),
            None => {
                self.wrong_type(table, key, item, "true or false");
                None
            }
        }
    }

    /// A key that ripcord no longer reads: an error that says why and what replaces it
    /// (rather than "unknown key", which would send the reader looking for a typo).
    pub(crate) fn removed(&mut self, table: &Table<'_>, key: &str, why: &str) {
        if table.inner.get(key).is_none() {
            return;
        }
        let path = join(&table.path, key);
        self.error(key_span(table, key), &path, why.to_string());
        self.removed.push(path);
    }

    /// A false-alarm budget: `"1 per 1e8 requests"` (also `1 per 100000000 requests`
    /// or `1 per 10^8 requests`), returned as the number of requests per false alarm.
    pub(crate) fn false_alarm(&mut self, table: &Table<'_>, key: &str) -> Option<f64> {
        let s = self.string(table, key)?;
        let words: Vec<&str> = s.value.split_whitespace().collect();
        let number = |w: &str| -> Option<f64> {
            let w = w.replace(['_', ','], "");
            match w.split_once('^') {
                Some((b, e)) => Some(b.parse::<f64>().ok()?.powf(e.parse::<f64>().ok()?)),
                None => w.parse::<f64>().ok(),
            }
        };
        let n = match words.as_slice() {
            ["1", "per", n, "requests" | "request"] => number(n),
            _ => None,
        };
        match n {
            Some(n) if (1e3..=1e15).contains(&n) => Some(n),
            Some(n) => {
                self.error(
                    s.span,
                    &join(&table.path, key),
                    format!(
                        "\"{}\": 1 per {n} requests is out of range: expected 1 per 1e3 to 1 per 1e15 requests",
                        s.value
                    ),
                );
                None
            }
            None => {
                self.error(
                    s.span,
                    &join(&table.path, key),
                    format!(
                        "\"{}\": expected \"1 per N requests\", such as \"1 per 1e8 requests\"",
                        s.value
                    ),
                );
                None
            }
        }
    }

    /// A number (integer or float) within `min..=max`.
    pub(crate) fn float(
        &mut self,
        table: &Table<'_>,
        key: &str,
        min: f64,
        max: f64,
    ) -> Option<f64> {
        let item = table.inner.get(key)?;
        let span = item_span(table, key, item);
        let value = item
            .as_float()
            .or_else(|| item.as_integer().map(|i| i as f64));
        match value {
            Some(v) if (min..=max).contains(&v) => Some(v),
            Some(v) => {
                self.error(
                    span,
                    &join(&table.path, key),
                    format!("{v} is out of range: expected {min} to {max}"),
                );
                None
            }
            None => {
                self.wrong_type(table, key, item, "a number");
                None
            }
        }
    }

    /// An array of strings (possibly empty), such as a list of rule ids.
    pub(crate) fn strings(&mut self, table: &Table<'_>, key: &str) -> Option<Spanned<Vec<String>>> {
        let item = table.inner.get(key)?;
        let span = item_span(table, key, item);
        let Some(array) = item.as_array() else {
            self.wrong_type(table, key, item, "an array of strings");
            return None;
        };
        let mut out = Vec::new();
        for (i, value) in array.iter().enumerate() {
            match value.as_str() {
                Some(s) => out.push(s.to_string()),
                None => {
                    self.error(
                        value.span().or(span.clone()),
                        &format!("{}[{i}]", join(&table.path, key)),
                        format!("expected a string, found {}", value.type_name()),
                    );
                    return None;
                }
            }
        }
        Some(Spanned::new(out, span))
    }

    /// An array of strings (an argv): never a single shell string.
    pub(crate) fn argv(&mut self, table: &Table<'_>, key: &str) -> Option<Spanned<Vec<String>>> {
        let item = table.inner.get(key)?;
        let span = item_span(table, key, item);
        let Some(array) = item.as_array() else {
            let hint = if item.is_str() {
                " (an argument vector such as [\"/usr/bin/app\", \"--port\", \"{port}\"]; \
                 ripcord never runs a shell string)"
            } else {
                ""
            };
            self.error(
                span,
                &join(&table.path, key),
                format!(
                    "expected an array of strings{hint}, found {}",
                    type_name(item)
                ),
            );
            return None;
        };
        let mut out = Vec::new();
        for (i, value) in array.iter().enumerate() {
            match value.as_str() {
                Some(s) => out.push(s.to_string()),
                None => {
                    self.error(
                        value.span().or(span.clone()),
                        &format!("{}[{i}]", join(&table.path, key)),
                        format!("expected a string, found {}", value.type_name()),
                    );
                    return None;
                }
            }
        }
        if out.is_empty() {
            self.error(
                span,
                &join(&table.path, key),
                "must not be empty: the first element is the program to run".to_string(),
            );
            return None;
        }
        Some(Spanned::new(out, span))
    }

    /// A sub-table (a `[a.b]` header or an inline table).
    pub(crate) fn table<'t>(&mut self, table: &Table<'t>, key: &str) -> Option<Table<'t>> {
        let item = table.inner.get(key)?;
        let span = item_span(table, key, item);
        match item.as_table_like() {
            Some(inner) => Some(Table {
                inner,
                path: join(&table.path, key),
                span,
            }),
            None => {
                self.wrong_type(table, key, item, "a table");
                None
            }
        }
    }

    /// An array of tables: `[[a.b]]` headers or an inline array of inline tables.
    pub(crate) fn tables<'t>(&mut self, table: &Table<'t>, key: &str) -> Vec<Table<'t>> {
        let Some(item) = table.inner.get(key) else {
            return Vec::new();
        };
        let base = join(&table.path, key);
        if let Some(aot) = item.as_array_of_tables() {
            return aot
                .iter()
                .enumerate()
                .map(|(i, t)| Table {
                    inner: t,
                    path: format!("{base}[{i}]"),
                    span: t.span(),
                })
                .collect();
        }
        if let Some(array) = item.as_array() {
            let mut out = Vec::new();
            for (i, value) in array.iter().enumerate() {
                match value.as_inline_table() {
                    Some(t) => out.push(Table {
                        inner: t,
                        path: format!("{base}[{i}]"),
                        span: value.span(),
                    }),
                    None => self.error(
                        value.span(),
                        &format!("{base}[{i}]"),
                        format!("expected a table, found {}", value.type_name()),
                    ),
                }
            }
            return out;
        }
        self.wrong_type(table, key, item, "an array of tables");
        Vec::new()
    }

    pub(crate) fn wrong_type(&mut self, table: &Table<'_>, key: &str, item: &Item, want: &str) {
        let span = item_span(table, key, item);
        self.error(
            span,
            &join(&table.path, key),
            format!("expected {want}, found {}", type_name(item)),
        );
    }
}

/// Parses `host:port` where host is an IP address or `localhost`.
pub(crate) fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        if a.port() == 0 {
            return Err(format!("\"{s}\" has port 0; give a fixed port"));
        }
        return Ok(a);
    }
    if let Some(port) = s.strip_prefix("localhost:")
        && let Ok(p) = port.parse::<u16>()
        && p > 0
    {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), p));
    }
    Err(format!(
        "\"{s}\" is not an address: expected \"host:port\" with an IP address, e.g. \"127.0.0.1:8080\""
    ))
}

/// A value with the byte range it came from, so stage two can point at its line.
#[derive(Debug, Clone)]
pub(crate) struct Spanned<T> {
    pub(crate) value: T,
    pub(crate) span: Option<Range<usize>>,
}

impl<T> Spanned<T> {
    fn new(value: T, span: Option<Range<usize>>) -> Self {
        Spanned { value, span }
    }
}

pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn key_span(table: &Table<'_>, key: &str) -> Option<Range<usize>> {
    table
        .inner
        .key(key)
        .and_then(|k| k.span())
        .or(table.span.clone())
}

/// Where a value sits: its own span, else its key's, else the table's.
pub(crate) fn item_span(table: &Table<'_>, key: &str, item: &Item) -> Option<Range<usize>> {
    item.span().or_else(|| key_span(table, key))
}

fn type_name(item: &Item) -> &'static str {
    match item {
        Item::Value(v) => value_type_name(v),
        Item::Table(_) => "a table",
        Item::ArrayOfTables(_) => "an array of tables",
        Item::None => "nothing",
    }
}

fn value_type_name(value: &Value) -> &'static str {
    match value {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a datetime",
        Value::Array(_) => "an array",
        Value::InlineTable(_) => "a table",
    }
}

/// The allowed key closest to a misspelt one, when it is close enough to be a typo.
fn closest<'k>(key: &str, allowed: &[&'k str]) -> Option<&'k str> {
    allowed
        .iter()
        .map(|a| (strsim::levenshtein(key, a), *a))
        .filter(|(d, a)| *d <= 2.max(a.len() / 4) || a.starts_with(key) || key.starts_with(a))
        .min_by_key(|(d, _)| *d)
        .map(|(_, a)| a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_keys_only() {
        assert_eq!(
            closest("bake_sec", &["bake_secs", "listen"]),
            Some("bake_secs")
        );
        assert_eq!(closest("zzzzzz", &["bake_secs", "listen"]), None);
    }
}
