//! Column types and defaults, reduced to what the lock rules need: whether a type change
//! is binary-coercible (catalog only), needs a scan, or rewrites the table; and whether a
//! default is constant, stable or volatile.
//!
//! The tables here are PostgreSQL facts; they must never guess towards "safe": a type
//! pair not listed is a rewrite, a function not listed is volatile.

use sqlparser::ast::{CastKind, Expr, FunctionArguments, Value};

/// Where a default value comes from and how PostgreSQL evaluates it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DefaultKind {
    /// `NULL`: the same as no default.
    Null,
    /// A literal or another immutable expression.
    Constant,
    /// A stable function such as `now()`: evaluated once, so no rewrite from PG 11.
    Stable(String),
    /// A volatile function (or one ripcord does not know, which PostgreSQL also treats
    /// as volatile unless declared otherwise): every row gets its own value.
    Volatile(String),
    /// A name the front end could not resolve (an imported Python name): most likely a
    /// constant, but it could be SQL that calls a volatile function.
    Unresolved(String),
}

/// A column type, normalised from SQL text or an SQLAlchemy type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ty {
    Varchar(Option<u64>),
    Text,
    Char(Option<u64>),
    /// precision, scale
    Numeric(Option<(u64, u64)>),
    SmallInt,
    Int,
    BigInt,
    Timestamp {
        tz: bool,
    },
    Varbit(Option<u64>),
    Cidr,
    Inet,
    Serial,
    /// Anything else, by its lowercase name.
    Other(String),
}

impl std::fmt::Display for Ty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ty::Varchar(Some(n)) => write!(f, "varchar({n})"),
            Ty::Varchar(None) => write!(f, "varchar"),
            Ty::Text => write!(f, "text"),
            Ty::Char(Some(n)) => write!(f, "char({n})"),
            Ty::Char(None) => write!(f, "char"),
            Ty::Numeric(Some((p, s))) => write!(f, "numeric({p},{s})"),
            Ty::Numeric(None) => write!(f, "numeric"),
            Ty::SmallInt => write!(f, "smallint"),
            Ty::Int => write!(f, "integer"),
            Ty::BigInt => write!(f, "bigint"),
            Ty::Timestamp { tz: true } => write!(f, "timestamptz"),
            Ty::Timestamp { tz: false } => write!(f, "timestamp"),
            Ty::Varbit(Some(n)) => write!(f, "varbit({n})"),
            Ty::Varbit(None) => write!(f, "varbit"),
            Ty::Cidr => write!(f, "cidr"),
            Ty::Inet => write!(f, "inet"),
            Ty::Serial => write!(f, "serial"),
            Ty::Other(s) => write!(f, "{s}"),
        }
    }
}

/// Parses a type as SQL spells it: `varchar(20)`, `character varying`, `numeric(10, 2)`,
/// `timestamp with time zone`, `int8` ...
pub(crate) fn parse_ty(text: &str) -> Ty {
    let lower = text.trim().to_ascii_lowercase();
    let (name, args) = match lower.find('(') {
        Some(i) => {
            let close = lower[i..].find(')').map(|j| i + j).unwrap_or(lower.len());
            let inner = &lower[(i + 1).min(close)..close];
            let rest = lower.get(close + 1..).unwrap_or("");
            (
                format!("{} {}", lower[..i].trim(), rest.trim()),
                inner.to_string(),
            )
        }
        None => (lower.clone(), String::new()),
    };
    let name = name.split_whitespace().collect::<Vec<_>>().join(" ");
    let nums: Vec<u64> = args
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let first = nums.first().copied();
    match name.as_str() {
        "varchar" | "character varying" | "string" | "unicode" => Ty::Varchar(first),
        "text" | "unicodetext" => Ty::Text,
        "char" | "character" | "bpchar" => Ty::Char(first),
        "numeric" | "decimal" => match nums.as_slice() {
            [p] => Ty::Numeric(Some((*p, 0))),
            [p, s, ..] => Ty::Numeric(Some((*p, *s))),
            _ => Ty::Numeric(None),
        },
        "smallint" | "int2" | "smallinteger" => Ty::SmallInt,
        "int" | "integer" | "int4" => Ty::Int,
        "bigint" | "int8" | "biginteger" => Ty::BigInt,
        "timestamp" | "timestamp without time zone" | "datetime" => Ty::Timestamp { tz: false },
        "timestamptz" | "timestamp with time zone" => Ty::Timestamp { tz: true },
        "varbit" | "bit varying" => Ty::Varbit(first),
        "cidr" => Ty::Cidr,
        "inet" => Ty::Inet,
        "serial" | "bigserial" | "smallserial" | "serial4" | "serial8" | "serial2" => Ty::Serial,
        _ => Ty::Other(name),
    }
}

/// What changing a column from one type to another costs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    /// Binary-coercible: catalog only (a brief ACCESS EXCLUSIVE lock, no scan).
    Free,
    /// A full table rewrite under ACCESS EXCLUSIVE (or a scan to check the values).
    Rewrite { narrowing: bool },
    /// The current type is unknown; the text says what would make it free. `widening`:
    /// the new type is one a column is usually widened to (text, varchar, numeric), so
    /// the change is free if the column is of the same family with a smaller limit.
    Unknown { hint: String, widening: bool },
}

/// Classifies `ALTER COLUMN ... TYPE to` given the current type, if known.
pub(crate) fn type_change(from: Option<&Ty>, to: &Ty, using: bool) -> Change {
    if using {
        return Change::Rewrite { narrowing: true };
    }
    let Some(from) = from else {
        let hint = match to {
            Ty::Text | Ty::Varchar(None) => "free if the column is varchar or text today",
            Ty::Varchar(Some(_)) => {
                "free only if the column is varchar with a limit at most this one today"
            }
            Ty::Numeric(_) => {
                "free only if the column is numeric with less precision and the same scale today"
            }
            _ => "a rewrite unless the cast is binary-coercible",
        };
        let widening = matches!(to, Ty::Text | Ty::Varchar(_) | Ty::Numeric(_));
        return Change::Unknown {
            hint: hint.to_string(),
            widening,
        };
    };
    use Ty::*;
    let free = match (from, to) {
        (a, b) if a == b => true,
        (Varchar(_), Varchar(None)) | (Varchar(_), Text) | (Text, Varchar(None)) => true,
        (Varchar(Some(a)), Varchar(Some(b))) => b >= a,
        (Numeric(_), Numeric(None)) => true,
        (Numeric(Some((p1, s1))), Numeric(Some((p2, s2)))) => s1 == s2 && p2 >= p1,
        (Varbit(_), Varbit(None)) => true,
        (Varbit(Some(a)), Varbit(Some(b))) => b >= a,
        (Cidr, Inet) => true,
        _ => false,
    };
    if free {
        return Change::Free;
    }
    let narrowing = match (from, to) {
        (Varchar(_) | Text, Varchar(Some(_))) => true,
        (Varchar(Some(_)), Char(Some(_))) | (Text, Char(Some(_))) => true,
        (Numeric(_), Numeric(Some(_))) => true,
        (BigInt, Int | SmallInt) | (Int, SmallInt) => true,
        (Int | BigInt | SmallInt, Int | BigInt | SmallInt) => false,
        (Varchar(_) | Text, Varchar(None) | Text) => false,
        (Timestamp { .. }, Timestamp { .. }) => false,
        // Any other cast can fail on some value.
        _ => true,
    };
    Change::Rewrite { narrowing }
}

/// Whether an `ALTER COLUMN ... TYPE to USING expr` costs what the plain type change
/// costs: `expr` is the column itself or the column cast to the new type (`c::text`,
/// `CAST(c AS text)`). PostgreSQL coerces the column to the new type either way and
/// decides on the rewrite from the expression it gets (binary-coercible casts and
/// widening length changes reduce to the column itself), so such a `USING` changes
/// nothing. Anything else, including a cast to another type, counts as a rewrite.
///
/// `column` is the column's name as PostgreSQL stores it (folded to lowercase unless
/// quoted); `to_text` is how the statement spells the new type, when known: it must match the
/// cast's spelling where [`Ty`] does not keep the whole type (precision, unknown types).
pub(crate) fn using_is_plain(expr: &Expr, column: &str, to: &Ty, to_text: Option<&str>) -> bool {
    let mut e = strip_parens(expr);
    if let Expr::Cast {
        kind: CastKind::Cast | CastKind::DoubleColon,
        expr,
        data_type,
        format: None,
    } = e
    {
        let cast = data_type.to_string();
        let same = match to {
            // The Ty of these keeps the whole type, so the spellings may differ.
            Ty::Varchar(_)
            | Ty::Text
            | Ty::Char(Some(_))
            | Ty::Numeric(_)
            | Ty::SmallInt
            | Ty::Int
            | Ty::BigInt
            | Ty::Varbit(_)
            | Ty::Cidr
            | Ty::Inet => parse_ty(&cast) == *to,
            _ => to_text.is_some_and(|t| spelling(t) == spelling(&cast)),
        };
        if !same {
            return false;
        }
        e = strip_parens(expr);
    }
    match e {
        // PostgreSQL folds an unquoted name to lowercase.
        Expr::Identifier(id) if id.quote_style.is_some() => id.value == column,
        Expr::Identifier(id) => id.value.to_ascii_lowercase() == column,
        _ => false,
    }
}

/// [`using_is_plain`] for a `USING` given as SQL text (Alembic `postgresql_using=`).
pub(crate) fn using_text_is_plain(text: &str, column: &str, to: &Ty) -> bool {
    let dialect = sqlparser::dialect::PostgreSqlDialect {};
    sqlparser::parser::Parser::new(&dialect)
        .try_with_sql(text)
        .and_then(|mut p| p.parse_expr())
        .is_ok_and(|e| using_is_plain(&e, column, to, None))
}

fn strip_parens(mut e: &Expr) -> &Expr {
    while let Expr::Nested(inner) = e {
        e = inner;
    }
    e
}

/// A type's spelling, lowercase and without spaces, for comparing two spellings.
fn spelling(t: &str) -> String {
    t.chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_lowercase()
}

/// Functions PostgreSQL marks stable or immutable, so a default calling them is one value
/// for all rows. Anything else is treated as volatile, as PostgreSQL treats a function
/// declared without a volatility.
const NON_VOLATILE: &[&str] = &[
    "now",
    "current_timestamp",
    "current_date",
    "current_time",
    "localtimestamp",
    "localtime",
    "transaction_timestamp",
    "statement_timestamp",
    "current_user",
    "session_user",
    "current_schema",
    "lower",
    "upper",
    "coalesce",
    "to_jsonb",
    "jsonb_build_object",
    "json_build_object",
    "array",
    "make_interval",
    "timezone",
];

/// Classifies a default expression.
pub(crate) fn classify_default(expr: &Expr) -> DefaultKind {
    let mut worst = DefaultKind::Constant;
    walk_default(expr, &mut worst, 0);
    worst
}

fn bump(worst: &mut DefaultKind, next: DefaultKind) {
    let rank = |k: &DefaultKind| match k {
        DefaultKind::Null => 0,
        DefaultKind::Constant => 1,
        DefaultKind::Stable(_) => 2,
        DefaultKind::Volatile(_) | DefaultKind::Unresolved(_) => 3,
    };
    if rank(&next) > rank(worst) {
        *worst = next;
    }
}

fn walk_default(expr: &Expr, worst: &mut DefaultKind, depth: usize) {
    if depth > 64 {
        bump(
            worst,
            DefaultKind::Volatile("a deeply nested expression".into()),
        );
        return;
    }
    match expr {
        Expr::Value(v) if matches!(v.value, Value::Null) && depth == 0 => {
            *worst = DefaultKind::Null;
        }
        Expr::Value(_) | Expr::TypedString { .. } | Expr::Interval(_) => {}
        Expr::Cast { expr, .. } | Expr::Nested(expr) | Expr::UnaryOp { expr, .. } => {
            walk_default(expr, worst, depth + 1)
        }
        Expr::BinaryOp { left, right, .. } => {
            walk_default(left, worst, depth + 1);
            walk_default(right, worst, depth + 1);
        }
        Expr::Function(f) => {
            let name = f
                .name
                .0
                .last()
                .map(|p| p.to_string().trim_matches('"').to_ascii_lowercase())
                .unwrap_or_default();
            if NON_VOLATILE.contains(&name.as_str()) {
                bump(worst, DefaultKind::Stable(format!("{name}()")));
            } else {
                bump(worst, DefaultKind::Volatile(format!("{name}()")));
            }
            if let FunctionArguments::List(list) = &f.args {
                for arg in &list.args {
                    if let sqlparser::ast::FunctionArg::Unnamed(
                        sqlparser::ast::FunctionArgExpr::Expr(e),
                    ) = arg
                    {
                        walk_default(e, worst, depth + 1);
                    }
                }
            }
        }
        // CURRENT_TIMESTAMP and friends parse as identifiers without parentheses.
        Expr::Identifier(id) => {
            let name = id.value.to_ascii_lowercase();
            if NON_VOLATILE.contains(&name.as_str()) {
                bump(worst, DefaultKind::Stable(name));
            } else if name == "true" || name == "false" {
            } else {
                bump(worst, DefaultKind::Volatile(name));
            }
        }
        Expr::Array(a) => {
            for e in &a.elem {
                walk_default(e, worst, depth + 1);
            }
        }
        other => bump(
            worst,
            DefaultKind::Volatile(format!("`{}`", short(&other.to_string()))),
        ),
    }
}

fn short(s: &str) -> String {
    if s.chars().count() > 40 {
        let cut: String = s.chars().take(40).collect();
        format!("{cut}...")
    } else {
        s.to_string()
    }
}

/// Classifies a default given as SQL text (Alembic `server_default=sa.text("...")`).
pub(crate) fn classify_default_text(text: &str) -> DefaultKind {
    let dialect = sqlparser::dialect::PostgreSqlDialect {};
    let parsed = sqlparser::parser::Parser::new(&dialect)
        .try_with_sql(text)
        .and_then(|mut p| p.parse_expr());
    match parsed {
        Ok(e) => classify_default(&e),
        Err(_) => DefaultKind::Volatile(format!("`{}`", short(text))),
    }
}
