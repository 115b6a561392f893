//! The SQL front end: splits a script into statements (quotes, dollar quotes and nested
//! comments respected), parses each with sqlparser's PostgreSQL dialect and lowers it to
//! [`Op`]s. Statements sqlparser does not know (REINDEX, CLUSTER, DROP INDEX CONCURRENTLY,
//! ALTER DOMAIN) are recognised from their tokens; DO blocks are opened and their
//! statements analysed one by one.
//!
//! Every statement yields at least one action: one that cannot be understood becomes
//! [`Op::Unknown`] with its line, never nothing.

use sqlparser::ast::{
    AlterColumnOperation, AlterTableOperation, AlterTypeOperation, CascadeOption, ColumnOption,
    ContextModifier, DetachPartitionMode, DropBehavior, Expr, ObjectName, ObjectType, Set,
    Statement, TableConstraint,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Token, Tokenizer};

use super::model::{
    Action, AddColumn, Allow, ConKind, DefaultKind, Op, is_irreversible_marker, parse_allow,
};
use super::sqltext::{Piece, offset_of};
use super::types::{classify_default, parse_ty, using_is_plain};

/// The statements of a script and what its comments say.
#[derive(Debug, Default)]
pub(crate) struct SqlScript {
    pub actions: Vec<Action>,
    pub allows: Vec<Allow>,
    /// A `-- no-transaction` (sqlx) or `transaction:false` (dbmate) marker, or goose's
    /// `+goose NO TRANSACTION`: the runner does not wrap this script.
    pub no_transaction: bool,
    pub irreversible: bool,
    /// How many statements the splitter found.
    pub statements: usize,
    /// The script's own statements (not those inside DO blocks), in order, as Flyway's
    /// PostgreSQL parser classifies them.
    pub top_level: Vec<TopStatement>,
}

/// One statement of the script itself, for runners that decide per statement whether
/// the file can run in a transaction (Flyway).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TopStatement {
    pub line: usize,
    /// Set when Flyway runs a file holding this statement without a transaction.
    pub non_transactional: Option<NonTransactional>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NonTransactional {
    /// The statement's leading keywords, e.g. `CREATE INDEX CONCURRENTLY`.
    pub what: String,
    /// Only when the target is older than PostgreSQL 12 (`ALTER TYPE ... ADD VALUE`).
    pub before_pg12_only: bool,
}

/// Flyway's PostgreSQL parser (`PostgreSQLParser.detectCanExecuteInTransaction`) marks
/// these statements non-transactional, by their leading keywords: CREATE/DROP
/// DATABASE, TABLESPACE or SUBSCRIPTION; ALTER SYSTEM; CREATE/DROP [UNIQUE] INDEX
/// CONCURRENTLY; REINDEX [VERBOSE] SCHEMA/DATABASE/SYSTEM; VACUUM; DISCARD ALL; and,
/// before PostgreSQL 12, ALTER TYPE ... ADD VALUE. Every other statement is
/// transactional for Flyway (REINDEX INDEX CONCURRENTLY among them).
fn flyway_non_transactional(words: &[String]) -> Option<NonTransactional> {
    let w = |i: usize| words.get(i).map(String::as_str).unwrap_or("");
    let always = |what: String| {
        Some(NonTransactional {
            what,
            before_pg12_only: false,
        })
    };
    match (w(0), w(1)) {
        ("CREATE" | "DROP", "DATABASE" | "TABLESPACE" | "SUBSCRIPTION") => {
            always(format!("{} {}", w(0), w(1)))
        }
        ("ALTER", "SYSTEM") => always("ALTER SYSTEM".into()),
        ("CREATE" | "DROP", "INDEX") if w(2) == "CONCURRENTLY" => {
            always(format!("{} INDEX CONCURRENTLY", w(0)))
        }
        ("CREATE" | "DROP", "UNIQUE") if w(2) == "INDEX" && w(3) == "CONCURRENTLY" => {
            always(format!("{} UNIQUE INDEX CONCURRENTLY", w(0)))
        }
        ("REINDEX", _) => {
            let at = if w(1) == "VERBOSE" { 2 } else { 1 };
            matches!(w(at), "SCHEMA" | "DATABASE" | "SYSTEM").then(|| NonTransactional {
                what: format!("REINDEX {}", w(at)),
                before_pg12_only: false,
            })
        }
        ("VACUUM", _) => always("VACUUM".into()),
        ("DISCARD", "ALL") => always("DISCARD ALL".into()),
        ("ALTER", "TYPE")
            if words
                .windows(2)
                .skip(2)
                .any(|p| p[0] == "ADD" && p[1] == "VALUE") =>
        {
            Some(NonTransactional {
                what: "ALTER TYPE ... ADD VALUE".into(),
                before_pg12_only: true,
            })
        }
        _ => None,
    }
}

/// How deep DO blocks are opened: a DO inside a DO is reported, not opened.
const MAX_DEPTH: usize = 2;

/// Lowers a whole script. `first_line` is the line of `text`'s first character.
pub(crate) fn lower(text: &str, first_line: usize) -> SqlScript {
    let mut out = SqlScript::default();
    lower_into(text, first_line, 0, &mut out);
    out
}

fn lower_into(text: &str, first_line: usize, depth: usize, out: &mut SqlScript) {
    let Split {
        pieces,
        comments,
        unterminated,
    } = split(text, first_line);
    for (line, body) in &comments {
        if let Some(allow) = parse_allow(body, *line) {
            out.allows.push(allow);
        }
        let lower = body.to_ascii_lowercase();
        if lower.contains("no-transaction")
            || lower.contains("transaction:false")
            || lower.contains("+goose no transaction")
        {
            out.no_transaction = true;
        }
        if is_irreversible_marker(body) {
            out.irreversible = true;
        }
    }
    out.statements += pieces.len();
    if depth == 0 {
        for piece in pieces {
            lower_piece(&piece, depth, out);
        }
    } else {
        super::plpgsql::lower_block(pieces, &mut DoSink { out, depth });
    }
    if let Some(u) = unterminated {
        let cut = match u.statement_line {
            Some(l) if l < u.line => format!("the statement from line {l} on"),
            _ => "what follows".to_string(),
        };
        out.actions.push(Action::new(
            u.line,
            Op::Unknown {
                rule: "parse-error",
                why: format!(
                    "unterminated {} opened on this line: PostgreSQL refuses the script, and ripcord could not analyse {cut}",
                    u.what
                ),
            },
        ));
    }
}

/// Where the PL/pgSQL reader hands what it finds in a DO body: its statements are
/// lowered as SQL at the body's depth.
struct DoSink<'a> {
    out: &'a mut SqlScript,
    depth: usize,
}

impl super::plpgsql::Sink for DoSink<'_> {
    fn push(&mut self, a: Action) {
        self.out.actions.push(a);
    }

    fn statement(&mut self, piece: &Piece) {
        lower_piece(piece, self.depth, self.out);
    }

    fn execute(&mut self, sql: &str, line: usize) -> usize {
        let before = self.out.actions.len();
        for p in split(sql, line).pieces {
            // The string's own lines are not the file's: keep the EXECUTE's.
            let p = Piece { text: p.text, line };
            lower_piece(&p, self.depth, self.out);
        }
        self.out.actions.len() - before
    }
}

fn lower_piece(piece: &Piece, depth: usize, out: &mut SqlScript) {
    let text = replace_placeholders(&piece.text);
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, &text)
        .tokenize_with_location()
        .unwrap_or_default();
    let words: Vec<String> = tokens
        .iter()
        .filter_map(|t| match &t.token {
            Token::Word(w) => Some(w.value.to_ascii_uppercase()),
            _ => None,
        })
        .collect();
    let strings: Vec<String> = tokens
        .iter()
        .filter_map(|t| match &t.token {
            Token::SingleQuotedString(s) => Some(s.clone()),
            _ => None,
        })
        .collect();
    if depth == 0 {
        out.top_level.push(TopStatement {
            line: piece.line,
            non_transactional: flyway_non_transactional(&words),
        });
    }
    let push = |out: &mut SqlScript, op: Op| {
        out.actions.push(Action {
            line: piece.line,
            anchor: None,
            op,
            strings: strings.clone(),
        });
    };
    if piece.text.trim_start().starts_with('\\') {
        push(
            out,
            Op::Unknown {
                rule: "unknown-statement",
                why: "psql meta-command: ripcord analyses SQL only".into(),
            },
        );
        return;
    }
    if words.first().map(String::as_str) == Some("DO") {
        lower_do(piece, &tokens, depth, out);
        return;
    }
    let parsed = Parser::new(&PostgreSqlDialect {})
        .try_with_sql(&text)
        .and_then(|mut p| p.parse_statements());
    match parsed {
        Ok(statements) => {
            for st in &statements {
                for op in lower_statement(st, &words) {
                    push(out, op);
                }
            }
        }
        Err(e) => match fallback(&tokens, &words) {
            Some(op) => push(out, op),
            None => {
                let message = e.to_string();
                let message = message
                    .strip_prefix("sql parser error: ")
                    .unwrap_or(&message);
                let message = message.split(" at Line: ").next().unwrap_or(message);
                let head: String = words.iter().take(3).cloned().collect::<Vec<_>>().join(" ");
                push(
                    out,
                    Op::Unknown {
                        rule: "unknown-statement",
                        why: format!(
                            "could not parse this statement ({}): {}",
                            if head.is_empty() {
                                "no keywords"
                            } else {
                                &head
                            },
                            message.to_ascii_lowercase()
                        ),
                    },
                );
            }
        },
    }
}

/// `${name}` (Flyway) and `{{ name }}` (templates) become identifiers, so a statement
/// with a placeholder can still be parsed; lines are kept because a placeholder that
/// spans lines is left alone.
fn replace_placeholders(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    loop {
        let dollar = rest.find("${");
        let brace = rest.find("{{");
        let (at, close) = match (dollar, brace) {
            (Some(d), Some(b)) if b < d => (b, "}}"),
            (Some(d), _) => (d, "}"),
            (None, Some(b)) => (b, "}}"),
            (None, None) => break,
        };
        out.push_str(&rest[..at]);
        let after = &rest[at..];
        match after.find(close) {
            Some(end) if !after[..end].contains('\n') => {
                out.push_str("placeholder");
                rest = &after[end + close.len()..];
            }
            _ => {
                out.push_str(&after[..1]);
                rest = &after[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Opens a DO block: the statements between its BEGIN and END are analysed as if they
/// stood alone (the usual DO block guards one DDL statement with an exception handler;
/// the handlers are skipped). Procedural statements in it become unknown findings.
fn lower_do(
    piece: &Piece,
    tokens: &[sqlparser::tokenizer::TokenWithSpan],
    depth: usize,
    out: &mut SqlScript,
) {
    let body = tokens.iter().find_map(|t| match &t.token {
        Token::DollarQuotedString(d) => Some((d.value.clone(), t.span.start.line as usize)),
        Token::SingleQuotedString(s) => Some((s.clone(), t.span.start.line as usize)),
        _ => None,
    });
    let unknown = |out: &mut SqlScript, why: &str| {
        out.actions.push(Action::new(
            piece.line,
            Op::Unknown {
                rule: "unknown-statement",
                why: why.to_string(),
            },
        ))
    };
    let Some((body, rel_line)) = body else {
        unknown(out, "DO block without a body ripcord can read");
        return;
    };
    if depth >= MAX_DEPTH {
        unknown(out, "nested DO block is not analysed");
        return;
    }
    let body_line = piece.line + rel_line.saturating_sub(1);
    let body_tokens = Tokenizer::new(&PostgreSqlDialect {}, &body)
        .tokenize_with_location()
        .unwrap_or_default();
    let word_at = |kw: &str| {
        body_tokens
            .iter()
            .position(|t| matches!(&t.token, Token::Word(w) if w.value.eq_ignore_ascii_case(kw)))
    };
    let begin = word_at("BEGIN");
    let end = body_tokens
        .iter()
        .rposition(|t| matches!(&t.token, Token::Word(w) if w.value.eq_ignore_ascii_case("END")));
    let (Some(b), Some(stop)) = (begin, end) else {
        unknown(out, "DO block: could not find its BEGIN ... END");
        return;
    };
    if stop <= b + 1 {
        unknown(out, "DO block with an empty body");
        return;
    }
    let (Some(from), Some(to)) = (
        offset_of(&body, &body_tokens[b + 1].span.start),
        offset_of(&body, &body_tokens[stop].span.start),
    ) else {
        unknown(out, "DO block: could not locate its statements");
        return;
    };
    let inner = body.get(from..to).unwrap_or("");
    let inner_line = body_line + body_tokens[b + 1].span.start.line.saturating_sub(1) as usize;
    let before = out.actions.len();
    lower_into(inner, inner_line, depth + 1, out);
    if out.actions.len() == before {
        unknown(out, "DO block: no statement found in its body");
    }
}

/// A script cut into statements.
struct Split {
    pieces: Vec<Piece>,
    /// Comments with their lines.
    comments: Vec<(usize, String)>,
    /// A comment, string, quoted identifier or dollar quote still open at the end of the
    /// text: the line it opened on, what it is, and the line of the statement it cut
    /// off (that statement is left out of `pieces`).
    unterminated: Option<Unterminated>,
}

struct Unterminated {
    line: usize,
    what: &'static str,
    statement_line: Option<usize>,
}

/// Splits a script into statements and collects its comments with their lines.
fn split(text: &str, first_line: usize) -> Split {
    #[derive(PartialEq)]
    enum St {
        Normal,
        Single { backslash: bool },
        Double,
        Line,
        Block(usize),
        Dollar(String),
    }
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut pieces = Vec::new();
    let mut comments = Vec::new();
    let mut st = St::Normal;
    let mut line = first_line;
    let mut start: Option<(usize, usize)> = None;
    let mut comment_start = (0usize, 0usize);
    // The line the open quote or dollar quote started on.
    let mut quote_line = 0usize;
    let mut i = 0;
    let at = |k: usize| chars.get(k).map(|c| c.1);
    let byte = |k: usize| chars.get(k).map(|c| c.0).unwrap_or(text.len());
    while i < chars.len() {
        let c = chars[i].1;
        let next = at(i + 1);
        match &st {
            St::Normal => {
                if c == '-' && next == Some('-') {
                    st = St::Line;
                    comment_start = (byte(i + 2), line);
                    i += 2;
                    continue;
                }
                if c == '/' && next == Some('*') {
                    st = St::Block(1);
                    comment_start = (byte(i + 2), line);
                    i += 2;
                    continue;
                }
                if c == ';' {
                    if let Some((s, l)) = start.take() {
                        pieces.push(Piece {
                            text: text[s..byte(i)].to_string(),
                            line: l,
                        });
                    }
                    i += 1;
                    continue;
                }
                if !c.is_whitespace() && start.is_none() {
                    start = Some((byte(i), line));
                }
                if c == '\'' {
                    let prev = if i > 0 { at(i - 1) } else { None };
                    let prev2 = if i > 1 { at(i - 2) } else { None };
                    let escape = matches!(prev, Some('e' | 'E'))
                        && !prev2.is_some_and(|p| p.is_alphanumeric() || p == '_');
                    st = St::Single { backslash: escape };
                    quote_line = line;
                } else if c == '"' {
                    st = St::Double;
                    quote_line = line;
                } else if c == '$' {
                    let prev_ident =
                        i > 0 && at(i - 1).is_some_and(|p| p.is_alphanumeric() || p == '_');
                    if !prev_ident {
                        let mut j = i + 1;
                        while at(j).is_some_and(|p| p.is_alphanumeric() || p == '_') {
                            j += 1;
                        }
                        let tag: String = chars[i + 1..j.min(chars.len())]
                            .iter()
                            .map(|c| c.1)
                            .collect();
                        if at(j) == Some('$') && !tag.starts_with(|p: char| p.is_ascii_digit()) {
                            st = St::Dollar(tag);
                            quote_line = line;
                            i = j + 1;
                            continue;
                        }
                    }
                }
            }
            St::Single { backslash } => {
                if *backslash && c == '\\' {
                    if next == Some('\n') {
                        line += 1;
                    }
                    i += 2;
                    continue;
                }
                if c == '\'' {
                    if next == Some('\'') {
                        i += 2;
                        continue;
                    }
                    st = St::Normal;
                }
            }
            St::Double => {
                if c == '"' {
                    st = St::Normal;
                }
            }
            St::Line => {
                if c == '\n' {
                    comments.push((comment_start.1, text[comment_start.0..byte(i)].to_string()));
                    st = St::Normal;
                }
            }
            St::Block(depth) => {
                let depth = *depth;
                if c == '*' && next == Some('/') {
                    if depth == 1 {
                        comments
                            .push((comment_start.1, text[comment_start.0..byte(i)].to_string()));
                        st = St::Normal;
                    } else {
                        st = St::Block(depth - 1);
                    }
                    i += 2;
                    continue;
                }
                if c == '/' && next == Some('*') {
                    st = St::Block(depth + 1);
                    i += 2;
                    continue;
                }
            }
            St::Dollar(tag) => {
                if c == '$' {
                    let close: String = format!("{tag}$");
                    let ahead: String = chars
                        [i + 1..(i + 1 + close.chars().count()).min(chars.len())]
                        .iter()
                        .map(|c| c.1)
                        .collect();
                    if ahead == close {
                        i += 1 + close.chars().count();
                        st = St::Normal;
                        continue;
                    }
                }
            }
        }
        if c == '\n' {
            line += 1;
        }
        i += 1;
    }
    let open = match st {
        St::Normal => None,
        St::Line => {
            comments.push((
                comment_start.1,
                text[comment_start.0.min(text.len())..].to_string(),
            ));
            None
        }
        St::Block(_) => Some((comment_start.1, "/* comment")),
        St::Single { .. } => Some((quote_line, "string literal")),
        St::Double => Some((quote_line, "quoted identifier")),
        St::Dollar(_) => Some((quote_line, "dollar quote")),
    };
    // PostgreSQL refuses a statement whose comment or quote never closes, so the
    // statement it cut off is reported as such rather than analysed.
    let unterminated = open.map(|(line, what)| Unterminated {
        line,
        what,
        statement_line: start.take().map(|(_, l)| l),
    });
    if let Some((s, l)) = start {
        let rest = &text[s..];
        if !rest.trim().is_empty() {
            pieces.push(Piece {
                text: rest.to_string(),
                line: l,
            });
        }
    }
    Split {
        pieces,
        comments,
        unterminated,
    }
}

fn name(o: &ObjectName) -> String {
    o.to_string()
}

fn ident_list(idents: &[sqlparser::ast::Ident]) -> Vec<String> {
    idents.iter().map(|i| i.value.clone()).collect()
}

/// The table a DML statement writes, from its tokens: INSERT INTO t, UPDATE [ONLY] t,
/// DELETE FROM [ONLY] t, MERGE INTO t.
/// The table a DML statement writes, schema-qualified as written (`billing.invoices`),
/// read from the statement's canonical text.
fn dml_table(st: &Statement) -> String {
    let text = st.to_string();
    text.split_whitespace()
        .find(|w| {
            !matches!(
                w.to_ascii_uppercase().as_str(),
                "INSERT" | "INTO" | "UPDATE" | "DELETE" | "FROM" | "ONLY" | "MERGE" | "WITH"
            )
        })
        .map(|w| {
            let w = w
                .split('(')
                .next()
                .unwrap_or(w)
                .trim_end_matches([',', ';']);
            w.to_ascii_lowercase()
        })
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| "?".into())
}

/// A timeout setting's value in milliseconds, as PostgreSQL reads it: a bare number is
/// milliseconds, a string may carry a unit (`'2s'`, `'500ms'`, `'1min'`), and `DEFAULT`
/// (or `0`) turns the timeout off.
fn timeout_millis(v: &Expr) -> Option<u64> {
    let text = match v {
        Expr::Value(v) => match &v.value {
            sqlparser::ast::Value::Number(n, _) => n.to_string(),
            sqlparser::ast::Value::SingleQuotedString(s) => s.clone(),
            _ => return None,
        },
        Expr::Identifier(id) if id.value.eq_ignore_ascii_case("default") => return Some(0),
        _ => return None,
    };
    crate::migrate::parse_pg_millis(&text)
}

fn lower_statement(st: &Statement, words: &[String]) -> Vec<Op> {
    let benign = |what: &str| vec![Op::Benign { what: what.into() }];
    let inert = |what: &str| vec![Op::Inert { what: what.into() }];
    match st {
        Statement::CreateTable(ct) => vec![Op::CreateTable {
            table: name(&ct.name),
            if_not_exists: ct.if_not_exists,
            columns: ct
                .columns
                .iter()
                .map(|c| {
                    (
                        c.name.value.clone(),
                        Some(parse_ty(&c.data_type.to_string())),
                    )
                })
                .collect(),
        }],
        Statement::AlterTable(at) => {
            let table = name(&at.name);
            at.operations
                .iter()
                .map(|op| lower_alter(&table, op))
                .collect()
        }
        Statement::CreateIndex(ci) => vec![Op::CreateIndex {
            table: name(&ci.table_name),
            name: ci.name.as_ref().map(name),
            columns: ci
                .columns
                .iter()
                .map(|c| c.column.expr.to_string())
                .collect(),
            concurrently: ci.concurrently,
            unique: ci.unique,
            if_not_exists: ci.if_not_exists,
        }],
        Statement::Drop {
            object_type,
            if_exists,
            names,
            cascade,
            ..
        } => names
            .iter()
            .map(|n| match object_type {
                ObjectType::Table => Op::DropTable {
                    table: name(n),
                    if_exists: *if_exists,
                    cascade: *cascade,
                },
                ObjectType::Index => Op::DropIndex {
                    name: name(n),
                    concurrently: false,
                    if_exists: *if_exists,
                },
                ObjectType::Schema => Op::DropSchema {
                    what: "schema",
                    name: name(n),
                    if_exists: *if_exists,
                    cascade: *cascade,
                },
                ObjectType::Database => Op::DropSchema {
                    what: "database",
                    name: name(n),
                    if_exists: *if_exists,
                    cascade: *cascade,
                },
                other => Op::DropOther {
                    what: other.to_string().to_ascii_lowercase(),
                    name: name(n),
                    if_exists: *if_exists,
                    cascade: *cascade,
                },
            })
            .collect(),
        Statement::Truncate(t) => vec![Op::Truncate {
            tables: t.table_names.iter().map(|t| name(&t.name)).collect(),
            cascade: matches!(t.cascade, Some(CascadeOption::Cascade)),
        }],
        Statement::Insert(_) => vec![Op::Dml {
            verb: "INSERT",
            table: dml_table(st),
        }],
        Statement::Update(_) => vec![Op::Dml {
            verb: "UPDATE",
            table: dml_table(st),
        }],
        Statement::Delete(_) => vec![Op::Dml {
            verb: "DELETE",
            table: dml_table(st),
        }],
        Statement::Merge(_) => vec![Op::Dml {
            verb: "MERGE",
            table: dml_table(st),
        }],
        Statement::StartTransaction { .. } => vec![Op::Begin],
        Statement::Commit { .. } => vec![Op::Commit],
        Statement::Rollback {
            savepoint: None, ..
        } => vec![Op::Rollback],
        Statement::Set(Set::SingleAssignment {
            scope,
            variable,
            values,
            ..
        }) => {
            let var = variable.to_string().to_ascii_lowercase();
            let local = matches!(scope, Some(ContextModifier::Local));
            let millis = match values.as_slice() {
                [v] => timeout_millis(v),
                _ => None,
            };
            match var.as_str() {
                "lock_timeout" => vec![Op::SetTimeout {
                    lock: true,
                    local,
                    millis,
                }],
                "statement_timeout" => vec![Op::SetTimeout {
                    lock: false,
                    local,
                    millis,
                }],
                _ => inert("SET"),
            }
        }
        Statement::Vacuum(v) => vec![Op::Vacuum {
            table: v.table_name.as_ref().map(name).unwrap_or_default(),
            full: v.full,
            cluster: false,
        }],
        Statement::CreateDomain(d) => vec![Op::CreateDomain {
            name: name(&d.name),
            has_constraint: !d.constraints.is_empty(),
        }],
        Statement::AlterType(at) => match &at.operation {
            AlterTypeOperation::AddValue(v) => vec![Op::EnumAddValue {
                name: name(&at.name),
                value: v.value.value.clone(),
                if_not_exists: v.if_not_exists,
            }],
            AlterTypeOperation::RenameValue(v) => vec![Op::RenameType {
                name: name(&at.name),
                detail: format!("renames enum value '{}' to '{}'", v.from.value, v.to.value),
            }],
            AlterTypeOperation::Rename(r) => vec![Op::RenameType {
                name: name(&at.name),
                detail: format!("renames the type to {}", r.new_name.value),
            }],
        },
        Statement::AlterSchema(s) => {
            if s.operations
                .iter()
                .any(|o| o.to_string().starts_with("RENAME"))
            {
                vec![Op::RenameSchema {
                    name: name(&s.name),
                }]
            } else {
                benign("ALTER SCHEMA")
            }
        }
        Statement::RenameTable(v) => v
            .iter()
            .map(|r| Op::RenameTable {
                table: name(&r.old_name),
                to: name(&r.new_name),
            })
            .collect(),
        Statement::DropFunction(_)
        | Statement::DropTrigger(_)
        | Statement::DropDomain(_)
        | Statement::DropPolicy(_) => {
            // `DROP <what> [IF EXISTS] <name> ...`, from the tokens.
            let word = |i: usize| words.get(i).cloned().unwrap_or_default();
            let if_exists = word(2) == "IF" && word(3) == "EXISTS";
            vec![Op::DropOther {
                what: word(1).to_ascii_lowercase(),
                name: word(if if_exists { 4 } else { 2 }).to_ascii_lowercase(),
                if_exists,
                cascade: words.iter().any(|w| w == "CASCADE"),
            }]
        }
        Statement::CreateSequence {
            if_not_exists,
            name: n,
            ..
        } => vec![Op::CreateOther {
            what: "sequence",
            name: name(n),
            if_not_exists: *if_not_exists,
        }],
        Statement::CreateSchema {
            schema_name,
            if_not_exists,
            ..
        } => vec![Op::CreateOther {
            what: "schema",
            name: schema_name.to_string(),
            if_not_exists: *if_not_exists,
        }],
        Statement::CreateExtension(e) => vec![Op::CreateOther {
            what: "extension",
            name: e.name.value.clone(),
            if_not_exists: e.if_not_exists,
        }],
        // A SELECT that calls no function (and selects INTO no table) reads at most; one
        // that calls a function may do anything the function does.
        Statement::Query(q) => {
            let text = q.to_string();
            if text.contains('(') || words.iter().any(|w| w == "INTO") {
                benign("SELECT")
            } else {
                inert("SELECT")
            }
        }
        Statement::Analyze(_) => inert("ANALYZE"),
        Statement::CreateView(_)
        | Statement::CreateFunction(_)
        | Statement::CreateTrigger(_)
        | Statement::CreateType { .. }
        | Statement::CreateRole(_)
        | Statement::CreatePolicy(_)
        | Statement::AlterPolicy(_)
        | Statement::AlterIndex { .. }
        | Statement::AlterView(_)
        | Statement::AlterRole { .. }
        | Statement::AlterFunction(_)
        | Statement::Comment { .. }
        | Statement::Grant(_)
        | Statement::Revoke(_)
        | Statement::Savepoint { .. }
        | Statement::ReleaseSavepoint { .. }
        | Statement::Rollback { .. }
        | Statement::RefreshMaterializedView(_)
        | Statement::Call(_)
        | Statement::Copy { .. }
        | Statement::DropExtension(_)
        | Statement::AlterDefaultPrivileges(_) => {
            benign(&words.iter().take(2).cloned().collect::<Vec<_>>().join(" "))
        }
        Statement::Lock(_) => benign("LOCK"),
        _ => vec![Op::Unknown {
            rule: "unknown-statement",
            why: format!(
                "ripcord does not analyse `{}` statements",
                words.iter().take(2).cloned().collect::<Vec<_>>().join(" ")
            ),
        }],
    }
}

fn not_null_column(expr: &Expr) -> Option<String> {
    match expr {
        Expr::IsNotNull(inner) => match inner.as_ref() {
            Expr::Identifier(id) => Some(id.value.clone()),
            Expr::CompoundIdentifier(ids) => ids.last().map(|i| i.value.clone()),
            _ => None,
        },
        Expr::Nested(inner) => not_null_column(inner),
        _ => None,
    }
}

fn lower_constraint(table: &str, c: &TableConstraint, not_valid: bool) -> Op {
    let add = |name: Option<String>, kind: ConKind, using_index: bool, nn: Option<String>| {
        Op::AddConstraint {
            table: table.to_string(),
            name,
            kind,
            not_valid,
            using_index,
            not_null_column: nn,
        }
    };
    let n = |i: &Option<sqlparser::ast::Ident>| i.as_ref().map(|i| i.value.clone());
    match c {
        TableConstraint::ForeignKey(fk) => add(n(&fk.name), ConKind::ForeignKey, false, None),
        TableConstraint::Check(ch) => add(
            n(&ch.name),
            ConKind::Check,
            false,
            not_null_column(&ch.expr),
        ),
        TableConstraint::Unique(u) => add(n(&u.name), ConKind::Unique, false, None),
        TableConstraint::PrimaryKey(p) => add(n(&p.name), ConKind::PrimaryKey, false, None),
        TableConstraint::PrimaryKeyUsingIndex(u) => {
            add(n(&u.name), ConKind::PrimaryKey, true, None)
        }
        TableConstraint::UniqueUsingIndex(u) => add(n(&u.name), ConKind::Unique, true, None),
        TableConstraint::Exclude(_) => add(None, ConKind::Exclude, false, None),
        _ => Op::Benign {
            what: "ADD CONSTRAINT".into(),
        },
    }
}

fn lower_alter(table: &str, op: &AlterTableOperation) -> Op {
    let t = table.to_string();
    match op {
        AlterTableOperation::AddConstraint {
            constraint,
            not_valid,
        } => lower_constraint(table, constraint, *not_valid),
        AlterTableOperation::AddColumn {
            if_not_exists,
            column_def,
            ..
        } => {
            let ty = parse_ty(&column_def.data_type.to_string());
            let mut add = AddColumn {
                table: t,
                column: column_def.name.value.clone(),
                identity_or_serial: ty == super::types::Ty::Serial,
                ty: Some(ty),
                if_not_exists: *if_not_exists,
                ..AddColumn::default()
            };
            for o in &column_def.options {
                match &o.option {
                    ColumnOption::NotNull => add.not_null = true,
                    ColumnOption::Default(e) => {
                        let kind = classify_default(e);
                        add.default = (kind != DefaultKind::Null).then_some(kind);
                    }
                    ColumnOption::Generated {
                        generation_expr,
                        generation_expr_mode,
                        ..
                    } => {
                        if generation_expr.is_some() {
                            add.stored_generated = !matches!(
                                generation_expr_mode,
                                Some(sqlparser::ast::GeneratedExpressionMode::Virtual)
                            );
                        } else {
                            add.identity_or_serial = true;
                        }
                    }
                    ColumnOption::Identity(_) => add.identity_or_serial = true,
                    ColumnOption::PrimaryKey(_) => add.primary_key = true,
                    ColumnOption::Unique(_) => add.unique = true,
                    ColumnOption::ForeignKey(fk) => add.references = Some(name(&fk.foreign_table)),
                    ColumnOption::Check(_) => add.check = true,
                    _ => {}
                }
            }
            Op::AddColumn(Box::new(add))
        }
        AlterTableOperation::DropColumn {
            column_names,
            if_exists,
            drop_behavior,
            ..
        } => {
            // Several columns in one statement: one action per column would repeat the
            // line; the first names them all.
            Op::DropColumn {
                table: t,
                column: ident_list(column_names).join(", "),
                if_exists: *if_exists,
                cascade: matches!(drop_behavior, Some(DropBehavior::Cascade)),
            }
        }
        AlterTableOperation::RenameColumn {
            old_column_name,
            new_column_name,
        } => Op::RenameColumn {
            table: t,
            from: old_column_name.value.clone(),
            to: new_column_name.value.clone(),
        },
        AlterTableOperation::RenameTable { table_name } => Op::RenameTable {
            table: t,
            to: table_name.to_string().trim_start_matches("TO ").to_string(),
        },
        AlterTableOperation::AlterColumn { column_name, op } => {
            let column = column_name.value.clone();
            match op {
                AlterColumnOperation::SetNotNull => Op::SetNotNull { table: t, column },
                AlterColumnOperation::DropNotNull => Op::DropNotNull { table: t, column },
                AlterColumnOperation::SetDefault { .. } | AlterColumnOperation::DropDefault => {
                    Op::ChangeDefault { table: t }
                }
                AlterColumnOperation::SetDataType {
                    data_type, using, ..
                } => {
                    let text = data_type.to_string();
                    let stored = if column_name.quote_style.is_some() {
                        column.clone()
                    } else {
                        column.to_ascii_lowercase()
                    };
                    let to = parse_ty(&text);
                    // `USING c::newtype` is the plain type change, judged as one.
                    let using = using
                        .as_ref()
                        .is_some_and(|u| !using_is_plain(u, &stored, &to, Some(&text)));
                    Op::AlterType {
                        table: t,
                        column,
                        to,
                        from: None,
                        using,
                    }
                }
                AlterColumnOperation::AddGenerated { .. } => Op::Benign {
                    what: "ADD GENERATED AS IDENTITY".into(),
                },
                _ => Op::Benign {
                    what: "ALTER COLUMN".into(),
                },
            }
        }
        AlterTableOperation::ValidateConstraint { name } => Op::ValidateConstraint {
            table: t,
            name: name.value.clone(),
        },
        AlterTableOperation::DropConstraint { name, .. } => Op::DropConstraint {
            table: t,
            name: name.value.clone(),
        },
        AlterTableOperation::DropPrimaryKey { .. } => Op::DropConstraint {
            table: t,
            name: "primary key".into(),
        },
        AlterTableOperation::DropForeignKey { name, .. } => Op::DropConstraint {
            table: t,
            name: name.value.clone(),
        },
        AlterTableOperation::AttachPartition { .. }
        | AlterTableOperation::AttachPartitionOf { .. } => Op::Partition {
            table: t,
            attach: true,
            concurrently: false,
        },
        AlterTableOperation::DetachPartition { .. } => Op::Partition {
            table: t,
            attach: false,
            concurrently: false,
        },
        AlterTableOperation::DetachPartitionOf { mode, .. } => Op::Partition {
            table: t,
            attach: false,
            concurrently: matches!(mode, Some(DetachPartitionMode::Concurrently)),
        },
        AlterTableOperation::OwnerTo { .. }
        | AlterTableOperation::EnableRowLevelSecurity
        | AlterTableOperation::DisableRowLevelSecurity
        | AlterTableOperation::ForceRowLevelSecurity
        | AlterTableOperation::NoForceRowLevelSecurity
        | AlterTableOperation::EnableTrigger { .. }
        | AlterTableOperation::DisableTrigger { .. }
        | AlterTableOperation::EnableAlwaysTrigger { .. }
        | AlterTableOperation::EnableReplicaTrigger { .. }
        | AlterTableOperation::ReplicaIdentity { .. }
        | AlterTableOperation::SetOptionsParens { .. }
        | AlterTableOperation::ResetOptions { .. }
        | AlterTableOperation::RenameConstraint { .. } => Op::Benign {
            what: "ALTER TABLE".into(),
        },
        other => Op::Unknown {
            rule: "unknown-statement",
            why: format!(
                "ripcord does not analyse `ALTER TABLE ... {}`",
                first_words(&other.to_string())
            ),
        },
    }
}

fn first_words(s: &str) -> String {
    s.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// Recognises statements sqlparser cannot parse, from their tokens.
fn fallback(tokens: &[sqlparser::tokenizer::TokenWithSpan], words: &[String]) -> Option<Op> {
    let w = |i: usize| words.get(i).map(String::as_str).unwrap_or("");
    let has = |kw: &str| words.iter().any(|x| x == kw);
    // Names as written, schema-qualified ones joined back with their dots.
    let mut names: Vec<String> = Vec::new();
    let mut joining = false;
    for t in tokens {
        match &t.token {
            Token::Word(word) => {
                if joining {
                    if let Some(last) = names.last_mut() {
                        last.push('.');
                        last.push_str(&word.value);
                    }
                    joining = false;
                } else {
                    names.push(word.value.clone());
                }
            }
            Token::Period => joining = true,
            Token::Whitespace(_) => {}
            _ => joining = false,
        }
    }
    let keywords = [
        "DROP",
        "INDEX",
        "CONCURRENTLY",
        "IF",
        "EXISTS",
        "CASCADE",
        "RESTRICT",
        "REINDEX",
        "TABLE",
        "SCHEMA",
        "DATABASE",
        "SYSTEM",
        "VERBOSE",
        "CLUSTER",
        "USING",
        "ON",
        "ONLY",
        "CREATE",
        "UNIQUE",
        "NOT",
    ];
    let plain: Vec<&String> = names
        .iter()
        .filter(|n| !keywords.contains(&n.to_ascii_uppercase().as_str()))
        .collect();
    match (w(0), w(1)) {
        ("REINDEX", _) => Some(Op::Reindex {
            target: plain.first().map(|s| s.to_string()).unwrap_or_default(),
            concurrently: has("CONCURRENTLY"),
        }),
        ("CLUSTER", _) => Some(Op::Vacuum {
            table: plain.first().map(|s| s.to_string()).unwrap_or_default(),
            full: false,
            cluster: true,
        }),
        ("DROP", "INDEX") => Some(Op::DropIndex {
            name: plain
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            concurrently: w(2) == "CONCURRENTLY",
            if_exists: has("EXISTS"),
        }),
        ("ALTER", "DOMAIN") if has("ADD") => Some(Op::AlterDomainAddConstraint {
            name: names.get(2).cloned().unwrap_or_default(),
            not_valid: words.ends_with(&["NOT".to_string(), "VALID".to_string()]),
        }),
        ("CREATE", "INDEX") | ("CREATE", "UNIQUE") if has("ON") => {
            let on = names.iter().position(|n| n.eq_ignore_ascii_case("ON"))?;
            let mut table_at = on + 1;
            if names
                .get(table_at)
                .is_some_and(|n| n.eq_ignore_ascii_case("ONLY"))
            {
                table_at += 1;
            }
            let name = names[..on]
                .iter()
                .rev()
                .find(|n| !keywords.contains(&n.to_ascii_uppercase().as_str()))
                .cloned();
            Some(Op::CreateIndex {
                table: names.get(table_at).cloned().unwrap_or_default(),
                name,
                columns: Vec::new(),
                concurrently: has("CONCURRENTLY"),
                unique: w(1) == "UNIQUE",
                if_not_exists: has("EXISTS"),
            })
        }
        _ => None,
    }
}

#[cfg(test)]
pub(crate) fn split_for_test(text: &str) -> Vec<(usize, String)> {
    split(text, 1)
        .pieces
        .into_iter()
        .map(|p| (p.line, p.text))
        .collect()
}
