//! `log_format` directives found in the text of an nginx config, read with nginx's own
//! tokenizer (`nginx_conf::tokens`).

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
