//! nginx's config tokenizer, following its own rules (`ngx_conf_read_token`) so that what
//! ripcord reads is what nginx reads: a `#` starts a comment only where a token could
//! start; quotes open only at the start of a token and must be followed by a separator;
//! `\` escapes the next character; `}` inside a word is part of it; `${` inside a word
//! does not open a block.

use std::ops::Range;

/// What a token is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Word,
    /// `;`, the end of a directive.
    Semicolon,
    /// `{`, the start of a block.
    Open,
    /// `}`, the end of a block.
    Close,
}

/// One token of an nginx config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub kind: Kind,
    /// The word as nginx sees it (quotes removed, escapes resolved); empty for
    /// punctuation.
    pub value: String,
    /// Bytes in the source, including quotes.
    pub span: Range<usize>,
    /// 1-based line the token starts on.
    pub line: usize,
}

/// Why a text is not a sequence of nginx tokens. Lines are 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("unterminated {quote} quote starting at line {line}")]
    UnterminatedQuote { line: usize, quote: char },
    /// A closing quote not followed by whitespace, `;`, `{` or `)`.
    #[error("unexpected `{ch}` at line {line}")]
    Unexpected { ch: char, line: usize },
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// Steps over the character after a `\`, whole, so spans stay on char boundaries.
fn skip_escaped(b: &[u8], mut i: usize, line: &mut usize) -> usize {
    // `i` points at the backslash.
    i += 1;
    if i < b.len() {
        if b[i] == b'\n' {
            *line += 1;
        }
        i += 1;
        while i < b.len() && (b[i] & 0b1100_0000) == 0b1000_0000 {
            i += 1;
        }
    }
    i.min(b.len())
}

/// Resolves escapes the way nginx does: `\"`, `\'`, `\\` drop the backslash, `\t` `\r`
/// `\n` become control characters, anything else keeps the backslash.
fn unescape(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.peek() {
            Some('"') | Some('\'') | Some('\\') => out.push(chars.next().unwrap_or('\\')),
            Some('t') => {
                chars.next();
                out.push('\t');
            }
            Some('r') => {
                chars.next();
                out.push('\r');
            }
            Some('n') => {
                chars.next();
                out.push('\n');
            }
            _ => out.push('\\'),
        }
    }
    out
}

/// The tokens of a whole config text, comments and whitespace left out.
pub fn tokenize(text: &str) -> Result<Vec<Token>, TokenError> {
    let b = text.as_bytes();
    let n = b.len();
    let mut tokens = Vec::new();
    let mut i = 0;
    let mut line = 1;
    while i < n {
        let c = b[i];
        match c {
            b'\n' => {
                line += 1;
                i += 1;
            }
            b' ' | b'\t' | b'\r' => i += 1,
            b'#' => {
                while i < n && b[i] != b'\n' {
                    i += 1;
                }
            }
            b';' | b'{' | b'}' => {
                let kind = match c {
                    b';' => Kind::Semicolon,
                    b'{' => Kind::Open,
                    _ => Kind::Close,
                };
                tokens.push(Token {
                    kind,
                    value: String::new(),
                    span: i..i + 1,
                    line,
                });
                i += 1;
            }
            b'"' | b'\'' => {
                let start = i;
                let start_line = line;
                i += 1;
                loop {
                    if i >= n {
                        return Err(TokenError::UnterminatedQuote {
                            line: start_line,
                            quote: char::from(c),
                        });
                    }
                    match b[i] {
                        b'\\' => i = skip_escaped(b, i, &mut line),
                        q if q == c => {
                            i += 1;
                            break;
                        }
                        b'\n' => {
                            line += 1;
                            i += 1;
                        }
                        _ => i += 1,
                    }
                }
                // nginx wants a separator after a closing quote (or `)` for `if`).
                if i < n && !(is_space(b[i]) || matches!(b[i], b';' | b'{' | b')')) {
                    let ch = text[i..].chars().next().unwrap_or('?');
                    return Err(TokenError::Unexpected { ch, line });
                }
                tokens.push(Token {
                    kind: Kind::Word,
                    value: unescape(&text[start + 1..i - 1]),
                    span: start..i,
                    line: start_line,
                });
            }
            _ => {
                let start = i;
                let start_line = line;
                let mut variable = false;
                match c {
                    b'\\' => i = skip_escaped(b, i, &mut line),
                    b'$' => {
                        variable = true;
                        i += 1;
                    }
                    _ => i += 1,
                }
                while i < n {
                    let ch = b[i];
                    if ch == b'{' && variable {
                        i += 1;
                        continue;
                    }
                    variable = false;
                    if ch == b'\\' {
                        i = skip_escaped(b, i, &mut line);
                        continue;
                    }
                    if ch == b'$' {
                        variable = true;
                        i += 1;
                        continue;
                    }
                    if is_space(ch) || ch == b';' || ch == b'{' {
                        break;
                    }
                    i += 1;
                }
                tokens.push(Token {
                    kind: Kind::Word,
                    value: unescape(&text[start..i]),
                    span: start..i,
                    line: start_line,
                });
            }
        }
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<(Kind, String, usize)> {
        tokenize(text)
            .unwrap_or_else(|e| panic!("{e}"))
            .into_iter()
            .map(|t| (t.kind, t.value, t.line))
            .collect()
    }

    fn w(value: &str, line: usize) -> (Kind, String, usize) {
        (Kind::Word, value.to_string(), line)
    }

    fn p(kind: Kind, line: usize) -> (Kind, String, usize) {
        (kind, String::new(), line)
    }

    #[test]
    fn words_quotes_escapes_and_comments() {
        assert_eq!(
            words("log_format main escape=json\n  '$a \"b\"' \"c\\\"d\\n\" # no\n  e\\ f;"),
            vec![
                w("log_format", 1),
                w("main", 1),
                w("escape=json", 1),
                w("$a \"b\"", 2),
                w("c\"d\n", 2),
                w("e\\ f", 3),
                p(Kind::Semicolon, 3),
            ]
        );
        // `}` inside a word and `${` are part of the word; `#` inside one is no comment.
        assert_eq!(
            words("set $x ${host}}a#b;\nserver {}"),
            vec![
                w("set", 1),
                w("$x", 1),
                w("${host}}a#b", 1),
                p(Kind::Semicolon, 1),
                w("server", 2),
                p(Kind::Open, 2),
                p(Kind::Close, 2),
            ]
        );
        let spans: Vec<_> = tokenize("a 'b c';")
            .unwrap_or_default()
            .into_iter()
            .map(|t| t.span)
            .collect();
        assert_eq!(spans, vec![0..1, 2..7, 7..8]);
    }

    #[test]
    fn errors_name_the_line() {
        assert_eq!(
            tokenize("a;\n'b\nc;").unwrap_err(),
            TokenError::UnterminatedQuote {
                line: 2,
                quote: '\''
            }
        );
        assert_eq!(
            tokenize("a;\n\"b\"c;").unwrap_err(),
            TokenError::Unexpected { ch: 'c', line: 2 }
        );
    }
}
