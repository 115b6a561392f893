//! nginx's `log_format`: finding one in an nginx config, compiling its format string into
//! a line parser, and the requests that parser reads from access-log lines.
//!
//! Pure, and it must never panic on any input. The parser allocates nothing per line on
//! the borrowed path ([`LogFormat::parse_ref`]) so that ingest stays above a million
//! lines a second on one core. Following the log file is the access-log signal's job
//! (`signals::nginx_log`).

mod declared;
mod line;
#[cfg(test)]
pub(crate) mod tests;
mod time;

use thiserror::Error;

pub use line::{AccessRecord, AccessRef};

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
        let declared = declared::log_formats(text)?;
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
