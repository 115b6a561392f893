//! The statements of a PL/pgSQL block (a `DO` body): the SQL in it is judged like a
//! script's own, through the control flow real migrations wrap it in (`IF NOT EXISTS
//! (SELECT ... information_schema ...) THEN`, `ELSIF`, `ELSE`, `CASE ... WHEN`, `FOR
//! ... LOOP`, labels), and `EXECUTE` of a string known from the text is read as SQL.
//!
//! `BEGIN` and `END` here open and close nested blocks, never transactions. What an
//! `EXCEPTION` handler does (only on an error) is skipped. Every branch of an `IF` is
//! judged, as any of them may run. It must never stay silent: `EXECUTE` of SQL built at
//! run time is a `dynamic-sql` finding.

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer};

use super::model::{Action, Op};
use super::sqltext::{Piece, after_first_word, first_word, offset_of};

/// Where the block's findings go: the SQL front end lowers the statements (the two
/// recurse, as a DO body holds SQL that may hold a DO block; the sink keeps the files
/// from importing each other).
pub(crate) trait Sink {
    fn push(&mut self, a: Action);
    /// Lowers one SQL statement.
    fn statement(&mut self, piece: &Piece);
    /// Lowers the SQL an `EXECUTE` runs, every statement at `line`; returns how many
    /// operations it found.
    fn execute(&mut self, sql: &str, line: usize) -> usize;
}

/// How many control-flow prefixes (`IF ... THEN FOR ... LOOP ...`) one statement may
/// carry before it is reported rather than opened.
const MAX_PREFIXES: usize = 32;

/// Lowers the statements of a block body (already split at its semicolons).
pub(crate) fn lower_block(pieces: Vec<Piece>, out: &mut dyn Sink) {
    // How many nested blocks are open, and the level whose handler is being skipped.
    let mut open = 0usize;
    let mut handler: Option<usize> = None;
    for piece in pieces {
        let Some(piece) = strip_prefixes(piece, &mut open, out) else {
            continue;
        };
        let first = first_word(&piece.text);
        match first.as_deref() {
            None => continue,
            // END closes a block (END IF, END LOOP and END CASE close statements whose
            // opening piece was already opened).
            Some("END") => {
                let rest = after_first_word(&piece.text).0;
                if matches!(first_word(rest).as_deref(), Some("IF" | "LOOP" | "CASE")) {
                    continue;
                }
                if handler == Some(open) {
                    handler = None;
                }
                open = open.saturating_sub(1);
                continue;
            }
            Some("EXCEPTION") => {
                handler.get_or_insert(open);
                continue;
            }
            _ => {}
        }
        if handler.is_none() {
            statement(&piece, out);
        }
    }
}

/// Peels what comes before the statement proper: nested `BEGIN`s (counted in `open`),
/// `<<label>>`, `IF/ELSIF/WHEN/CASE ... THEN`, `ELSE`, `FOR/WHILE/FOREACH ... LOOP`,
/// `LOOP`. `None` when nothing is left.
fn strip_prefixes(mut piece: Piece, open: &mut usize, out: &mut dyn Sink) -> Option<Piece> {
    for _ in 0..MAX_PREFIXES {
        let trimmed = piece.text.trim_start();
        if let Some(rest) = trimmed.strip_prefix("<<") {
            let end = rest.find(">>")?;
            piece = advance(&piece, piece.text.len() - rest.len() + end + 2);
            continue;
        }
        let first = first_word(&piece.text)?;
        let next = match first.as_str() {
            "BEGIN" => {
                *open += 1;
                Some(after_first(&piece))
            }
            "ELSE" | "LOOP" => Some(after_first(&piece)),
            "IF" | "ELSIF" | "ELSEIF" | "WHEN" | "CASE" => after_keyword(&piece, "THEN"),
            "FOR" | "WHILE" | "FOREACH" => after_keyword(&piece, "LOOP"),
            _ => return Some(piece),
        };
        match next {
            Some(p) => piece = p,
            None => {
                out.push(Action::new(
                    piece.line,
                    Op::Unknown {
                        rule: "unknown-statement",
                        why: format!(
                            "PL/pgSQL {first} without its {}: ripcord could not find the statement it guards",
                            if matches!(first.as_str(), "FOR" | "WHILE" | "FOREACH") {
                                "LOOP"
                            } else {
                                "THEN"
                            }
                        ),
                    },
                ));
                return None;
            }
        }
    }
    out.push(Action::new(
        piece.line,
        Op::Unknown {
            rule: "unknown-statement",
            why: "PL/pgSQL control flow nested too deep to analyse".into(),
        },
    ));
    None
}

/// The piece from byte `at` on, with its line.
fn advance(piece: &Piece, at: usize) -> Piece {
    let at = at.min(piece.text.len());
    // The statement starts at its first word, not at the line break before it.
    let lead = piece.text[at..].len() - piece.text[at..].trim_start().len();
    let at = at + lead;
    Piece {
        text: piece.text[at..].to_string(),
        line: piece.line + piece.text[..at].matches('\n').count(),
    }
}

fn after_first(piece: &Piece) -> Piece {
    let (rest, skipped) = after_first_word(&piece.text);
    Piece {
        text: rest.to_string(),
        line: piece.line + skipped,
    }
}

fn tokens(text: &str) -> Vec<TokenWithSpan> {
    Tokenizer::new(&PostgreSqlDialect {}, text)
        .tokenize_with_location()
        .unwrap_or_default()
}

/// The piece after the first `keyword` outside parentheses (the condition of an `IF`
/// may hold a whole `SELECT`).
fn after_keyword(piece: &Piece, keyword: &str) -> Option<Piece> {
    let toks = tokens(&piece.text);
    let mut parens = 0usize;
    for t in &toks {
        match &t.token {
            Token::LParen => parens += 1,
            Token::RParen => parens = parens.saturating_sub(1),
            Token::Word(w) if parens == 0 && w.value.eq_ignore_ascii_case(keyword) => {
                let at = offset_of(&piece.text, &t.span.end)?;
                return Some(advance(piece, at));
            }
            _ => {}
        }
    }
    None
}

/// One statement of the block.
fn statement(piece: &Piece, out: &mut dyn Sink) {
    let inert = |out: &mut dyn Sink, what: &str| {
        out.push(Action::new(
            piece.line,
            Op::Inert {
                what: what.to_string(),
            },
        ))
    };
    let first = first_word(&piece.text).unwrap_or_default();
    let rest = after_first_word(&piece.text).0;
    // `var := expr` and `var = expr` assign a variable.
    let rest_t = rest.trim_start();
    if rest_t.starts_with(":=") || (rest_t.starts_with('=') && !rest_t.starts_with("=>")) {
        inert(out, "PL/pgSQL assignment");
        return;
    }
    match first.as_str() {
        "RAISE" | "RETURN" | "NULL" | "EXIT" | "CONTINUE" | "GET" | "ASSERT" | "OPEN" | "FETCH"
        | "CLOSE" | "MOVE" | "DECLARE" => inert(out, &format!("PL/pgSQL {first}")),
        // PERFORM runs a query and throws the rows away: judged as that SELECT.
        "PERFORM" => {
            let p = Piece {
                text: format!("SELECT {rest}"),
                line: piece.line,
            };
            out.statement(&p);
        }
        "EXECUTE" => execute(piece, rest, out),
        // `SELECT ... INTO var` fills a variable (in SQL it would create a table).
        "SELECT"
            if tokens(&piece.text).iter().any(
                |t| matches!(&t.token, Token::Word(w) if w.value.eq_ignore_ascii_case("INTO")),
            ) =>
        {
            inert(out, "SELECT INTO a PL/pgSQL variable");
        }
        _ => out.statement(piece),
    }
}

/// `EXECUTE string [INTO ...] [USING ...]`: the SQL is read when the string is a literal,
/// a concatenation of literals, or `format()` of literals; otherwise `dynamic-sql`.
fn execute(piece: &Piece, rest: &str, out: &mut dyn Sink) {
    let toks: Vec<Token> = tokens(rest)
        .into_iter()
        .map(|t| t.token)
        .filter(|t| !matches!(t, Token::Whitespace(_)))
        .collect();
    // The expression ends at INTO or USING outside parentheses.
    let mut parens = 0usize;
    let end = toks
        .iter()
        .position(|t| match t {
            Token::LParen => {
                parens += 1;
                false
            }
            Token::RParen => {
                parens = parens.saturating_sub(1);
                false
            }
            Token::Word(w) => {
                parens == 0
                    && (w.value.eq_ignore_ascii_case("INTO")
                        || w.value.eq_ignore_ascii_case("USING"))
            }
            Token::SemiColon | Token::EOF => true,
            _ => false,
        })
        .unwrap_or(toks.len());
    let expr = &toks[..end];
    match static_sql(expr) {
        Ok(sql) => {
            if out.execute(&sql, piece.line) == 0 {
                out.push(Action::new(
                    piece.line,
                    Op::Inert {
                        what: "EXECUTE of an empty string".into(),
                    },
                ));
            }
        }
        Err(part) => out.push(Action::new(
            piece.line,
            Op::Unknown {
                rule: "dynamic-sql",
                why: format!(
                    "EXECUTE runs SQL built at run time ({part}): ripcord cannot read which statement it is"
                ),
            },
        )),
    }
}

fn literal(t: &Token) -> Option<String> {
    match t {
        Token::SingleQuotedString(s) | Token::EscapedStringLiteral(s) => Some(s.clone()),
        Token::DollarQuotedString(d) => Some(d.value.clone()),
        _ => None,
    }
}

/// The SQL an `EXECUTE` expression evaluates to, if it is made of literals only.
fn static_sql(expr: &[Token]) -> Result<String, String> {
    let shown = || {
        let s: String = expr
            .iter()
            .map(|t| t.to_string())
            .collect::<Vec<_>>()
            .join(" ");
        let s: String = s.chars().take(60).collect();
        format!("`{s}`")
    };
    // 'a' || 'b' || ...
    let mut out = String::new();
    let mut want_literal = true;
    let mut concat = true;
    for t in expr {
        match (want_literal, t) {
            (true, t) if literal(t).is_some() => {
                out.push_str(&literal(t).unwrap_or_default());
                want_literal = false;
            }
            (false, Token::StringConcat) => want_literal = true,
            _ => {
                concat = false;
                break;
            }
        }
    }
    if concat && !expr.is_empty() && !want_literal {
        return Ok(out);
    }
    // format('... %I ... %s ... %L', 'a', 'b', ...)
    if let [Token::Word(w), Token::LParen, inner @ .., Token::RParen] = expr
        && w.value.eq_ignore_ascii_case("format")
    {
        let mut args = Vec::new();
        for (i, t) in inner.iter().enumerate() {
            if i % 2 == 1 {
                if *t != Token::Comma {
                    return Err(shown());
                }
            } else {
                args.push(literal(t).ok_or_else(shown)?);
            }
        }
        let Some((fmt, values)) = args.split_first() else {
            return Err(shown());
        };
        return pg_format(fmt, values).ok_or_else(shown);
    }
    Err(shown())
}

/// PostgreSQL's `format()` for `%s`, `%I`, `%L` and `%%`.
fn pg_format(fmt: &str, values: &[String]) -> Option<String> {
    let mut out = String::new();
    let mut next = values.iter();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next()? {
            '%' => out.push('%'),
            's' | 'I' => out.push_str(next.next()?),
            'L' => {
                out.push('\'');
                out.push_str(&next.next()?.replace('\'', "''"));
                out.push('\'');
            }
            _ => return None,
        }
    }
    Some(out)
}
