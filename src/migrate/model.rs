//! The intermediate form both front ends lower to: a list of schema operations with their
//! lines, the transaction markers between them, and the suppression comments of the
//! script. The rules only ever see this form, so SQL and Alembic are judged alike.
//!
//! Nothing here decides whether an operation is safe.

// The column types and default kinds belong to `types.rs`, which imports nothing from
// here: the model depends on them, never the other way round.
pub(crate) use super::types::DefaultKind;
use super::types::Ty;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ConKind {
    ForeignKey,
    Check,
    Unique,
    PrimaryKey,
    Exclude,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct AddColumn {
    pub table: String,
    pub column: String,
    pub ty: Option<Ty>,
    pub if_not_exists: bool,
    pub not_null: bool,
    pub default: Option<DefaultKind>,
    /// Alembic `default=` (client side) on a column without `server_default=`; Django's
    /// `default=` (with `default` set: it fills the rows, then the column keeps none).
    pub orm_default_only: bool,
    pub stored_generated: bool,
    pub identity_or_serial: bool,
    pub references: Option<String>,
    pub unique: bool,
    pub primary_key: bool,
    pub check: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Op {
    CreateTable {
        table: String,
        if_not_exists: bool,
        columns: Vec<(String, Option<Ty>)>,
    },
    DropTable {
        table: String,
        if_exists: bool,
        cascade: bool,
    },
    /// DROP SCHEMA / DROP DATABASE.
    DropSchema {
        what: &'static str,
        name: String,
        if_exists: bool,
        cascade: bool,
    },
    /// DROP VIEW / TYPE / SEQUENCE / FUNCTION ...: objects old code may use.
    DropOther {
        what: String,
        name: String,
        if_exists: bool,
        cascade: bool,
    },
    /// CREATE SEQUENCE / SCHEMA / EXTENSION: additive and harmless to running code, so
    /// judged like [`Op::Benign`] except that a retry needs IF NOT EXISTS.
    CreateOther {
        what: &'static str,
        name: String,
        if_not_exists: bool,
    },
    Truncate {
        tables: Vec<String>,
        cascade: bool,
    },
    Dml {
        verb: &'static str,
        table: String,
    },
    /// Rows read and rewritten through an ORM session (SQLAlchemy `Session`): what
    /// changes is known only at run time. `model` is the class last queried, if any.
    OrmWrite {
        call: String,
        model: Option<String>,
    },
    RenameColumn {
        table: String,
        from: String,
        to: String,
    },
    RenameTable {
        table: String,
        to: String,
    },
    RenameSchema {
        name: String,
    },
    /// A type rename or an enum value rename.
    RenameType {
        name: String,
        detail: String,
    },
    AddColumn(Box<AddColumn>),
    DropColumn {
        table: String,
        column: String,
        if_exists: bool,
        cascade: bool,
    },
    AlterType {
        table: String,
        column: String,
        to: Ty,
        from: Option<Ty>,
        using: bool,
    },
    SetNotNull {
        table: String,
        column: String,
    },
    /// A full column definition that says NOT NULL (Django's `AlterField`): a SET NOT
    /// NULL unless an earlier migration made the column NOT NULL already.
    RequireNotNull {
        table: String,
        column: String,
    },
    /// Columns a new table defines NOT NULL (Django's `CreateModel`), for later
    /// [`Op::RequireNotNull`]s.
    NotNullColumns {
        table: String,
        columns: Vec<String>,
    },
    DropNotNull {
        table: String,
        column: String,
    },
    /// SET DEFAULT / DROP DEFAULT: catalog only.
    ChangeDefault {
        table: String,
    },
    AddConstraint {
        table: String,
        name: Option<String>,
        kind: ConKind,
        not_valid: bool,
        using_index: bool,
        /// For `CHECK (col IS NOT NULL)`: the column it proves non-null.
        not_null_column: Option<String>,
    },
    ValidateConstraint {
        table: String,
        name: String,
    },
    DropConstraint {
        table: String,
        name: String,
    },
    CreateIndex {
        table: String,
        name: Option<String>,
        columns: Vec<String>,
        concurrently: bool,
        unique: bool,
        if_not_exists: bool,
    },
    DropIndex {
        name: String,
        concurrently: bool,
        if_exists: bool,
    },
    Reindex {
        target: String,
        concurrently: bool,
    },
    Partition {
        table: String,
        attach: bool,
        concurrently: bool,
    },
    /// VACUUM (FULL or not) and CLUSTER.
    Vacuum {
        table: String,
        full: bool,
        cluster: bool,
    },
    /// `SET [LOCAL] lock_timeout|statement_timeout`. `millis`: the value in
    /// milliseconds (`Some(0)`: the timeout is turned off, as `DEFAULT` does on a server
    /// with no default), `None` when it is not a literal ripcord reads.
    SetTimeout {
        lock: bool,
        local: bool,
        millis: Option<u64>,
    },
    CreateDomain {
        name: String,
        has_constraint: bool,
    },
    AlterDomainAddConstraint {
        name: String,
        not_valid: bool,
    },
    EnumAddValue {
        name: String,
        value: String,
        if_not_exists: bool,
    },
    Begin,
    Commit,
    Rollback,
    /// Alembic `autocommit_block()`: commits what came before, runs outside a transaction.
    AutocommitStart,
    AutocommitEnd,
    /// `batch_alter_table(..., recreate="always")`: copies the table.
    BatchRecreate {
        table: String,
    },
    /// Understood and harmless to running code: CREATE VIEW, COMMENT, GRANT, ...
    Benign {
        what: String,
    },
    /// Understood and changes nothing in the schema or the data: a SELECT that calls no
    /// function, SET, ANALYZE, `op.get_bind()`. A downgrade of only these undoes nothing.
    Inert {
        what: String,
    },
    /// Not understood: becomes an `unknown` finding.
    Unknown {
        rule: &'static str,
        why: String,
    },
    /// The downgrade declares itself irreversible (`raise NotImplementedError`).
    Irreversible,
}

/// One operation at one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Action {
    pub line: usize,
    /// A second line a suppression may sit on (the `op.execute(` call for SQL inside it).
    pub anchor: Option<usize>,
    pub op: Op,
    /// String literals the statement uses (to spot a new enum value used too early).
    pub strings: Vec<String>,
}

impl Action {
    pub(crate) fn new(line: usize, op: Op) -> Action {
        Action {
            line,
            anchor: None,
            op,
            strings: Vec::new(),
        }
    }
}

/// The rule id of an allow that covers every rule on its line: a block whose author
/// vouched for it in the migration's own language (strong_migrations'
/// `safety_assured`). It holds a space, so no `ripcord:allow` comment can name it (their
/// ids are split on whitespace).
pub(crate) const VOUCHED: &str = "every rule (vouched for)";

/// A `ripcord:allow` comment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Allow {
    pub line: usize,
    pub rules: Vec<String>,
    /// `None` when the comment gives no `because ...`.
    pub reason: Option<String>,
}

/// One direction of a migration, lowered.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Lowered {
    pub actions: Vec<Action>,
    pub allows: Vec<Allow>,
    /// True when the runner wraps the script in a transaction.
    pub runner_tx: bool,
    /// The runner's transaction is the implicit one PostgreSQL gives a query string of
    /// several statements (golang-migrate, diesel without its transaction): a BEGIN in
    /// it turns it into an explicit transaction, without a warning, and after a COMMIT
    /// the statements that follow get a new implicit one.
    pub runner_implicit: bool,
    /// Why a statement that refuses a transaction block still gets one here, when the
    /// runner has its own reason (appended to `concurrently-in-transaction` messages);
    /// empty for the general hint.
    pub runner_hint: &'static str,
    /// Findings about how the runner treats the whole script (rule, line, message).
    pub runner_findings: Vec<(&'static str, usize, String)>,
    /// The direction's body exists but holds no operation (`pass`, an empty file).
    pub empty: bool,
    /// The direction does not exist at all (no `downgrade()`).
    pub missing: bool,
    /// The line the direction starts at (the `def`), for findings about it as a whole.
    pub line: usize,
}

/// Parses a suppression comment body (the text after `--` or `#`).
///
/// Accepts `ripcord:allow` and `ripcord: allow`, then rule ids separated by commas or
/// spaces, then `because` and the reason.
pub(crate) fn parse_allow(comment: &str, line: usize) -> Option<Allow> {
    let lower = comment.to_ascii_lowercase();
    let at = lower.find("ripcord:")?;
    let rest = comment[at + "ripcord:".len()..].trim_start();
    let rest = rest
        .strip_prefix("allow")
        .or_else(|| rest.strip_prefix("ALLOW"))?;
    let (ids, reason) = match find_word(rest, "because") {
        Some(i) => {
            let reason = rest[i + "because".len()..].trim();
            (&rest[..i], (!reason.is_empty()).then(|| reason.to_string()))
        }
        None => (rest, None),
    };
    let rules = ids
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(|s| s.to_ascii_lowercase())
        .collect();
    Some(Allow {
        line,
        rules,
        reason,
    })
}

/// True when the comment declares the downgrade irreversible on purpose.
pub(crate) fn is_irreversible_marker(comment: &str) -> bool {
    comment
        .to_ascii_lowercase()
        .contains("ripcord:irreversible")
}

fn find_word(hay: &str, word: &str) -> Option<usize> {
    let lower = hay.to_ascii_lowercase();
    let mut from = 0;
    while let Some(i) = lower[from..].find(word) {
        let at = from + i;
        let before_ok = at == 0 || !lower.as_bytes()[at - 1].is_ascii_alphanumeric();
        let end = at + word.len();
        let after_ok = end >= lower.len() || !lower.as_bytes()[end].is_ascii_alphanumeric();
        if before_ok && after_ok {
            return Some(at);
        }
        from = end;
    }
    None
}
