//! The rules: walks the lowered operations of each direction with a model of the
//! transaction they run in (the runner's, explicit BEGIN/COMMIT, Alembic's
//! `autocommit_block()`), of the tables the migration created (exempt from lock rules)
//! and of what earlier migrations left behind (column types, indexes, validated NOT NULL
//! checks), and turns them into findings, the migration's phase and the downgrade's state.
//!
//! Pure and total: every operation is judged, an unknown one is reported as unknown, and
//! no rule may conclude "safe" from a fact it does not have.

use std::collections::{BTreeSet, HashMap, HashSet};

use super::model::{Action, ConKind, DefaultKind, Lowered, Op};
use super::types::{Change, Ty, type_change};
use super::{
    DownReport, DownState, FileReport, Finding, Kind, Layout, Migration, Phase, PhaseReason, Risk,
    Settings, Severity, Suppressed, UpReport, alembic, sql,
};

use Risk::{BreaksOldCode as B, DataLoss as D, Fails as F, Lock as L, Unknown as U};
use Severity::{Error, Info, Warning};

/// A rule's fixed facts; the message is written where the rule fires.
pub(crate) struct Rule {
    pub id: &'static str,
    pub severity: Severity,
    pub risk: &'static [Risk],
    pub fix: &'static str,
}

const fn rule(
    id: &'static str,
    severity: Severity,
    risk: &'static [Risk],
    fix: &'static str,
) -> Rule {
    Rule {
        id,
        severity,
        risk,
        fix,
    }
}

/// Every rule, in the order of MIGRATION-RULES.md, then ripcord's own.
pub(crate) const RULES: &[Rule] = &[
    rule(
        "drop-column",
        Error,
        &[D, B],
        "stop using the column, ship that release, then drop it in a later migration",
    ),
    rule(
        "drop-table",
        Error,
        &[D, B],
        "stop using the table, ship that release, then drop it in a later migration",
    ),
    rule(
        "drop-schema",
        Error,
        &[D, B],
        "drop the objects inside explicitly, one reviewed statement each",
    ),
    rule(
        "drop-database",
        Error,
        &[D, B],
        "do not drop a database from a migration: back it up, check nothing connects to it, and drop it by hand",
    ),
    rule(
        "drop-cascade",
        Error,
        &[D],
        "drop the dependent objects explicitly instead of CASCADE",
    ),
    rule(
        "truncate",
        Error,
        &[D],
        "delete explicitly, per table, in a reviewed data migration",
    ),
    rule(
        "backfill-in-migration",
        Warning,
        &[D, L],
        "move the data change to a separate, batched backfill release",
    ),
    rule(
        "rename-column",
        Error,
        &[B],
        "add the new column, write both, backfill, switch reads, then drop the old one",
    ),
    rule(
        "rename-table",
        Error,
        &[B],
        "create the new table (or a view shim under the old name) and move over in phases",
    ),
    rule(
        "rename-schema",
        Error,
        &[B],
        "create the new schema and move objects over in phases",
    ),
    rule(
        "rename-type",
        Error,
        &[B],
        "add the new enum value (or type), backfill, and stop using the old one",
    ),
    rule(
        "change-column-type",
        Error,
        &[L, B],
        "add a column of the new type, write both, backfill in batches, then switch",
    ),
    rule(
        "add-not-null-column-without-default",
        Error,
        &[F, B],
        "add the column nullable (or with a constant default), backfill, then add the constraint",
    ),
    rule(
        "volatile-default",
        Error,
        &[L],
        "add the column without a default, SET DEFAULT in a second statement, then backfill in batches",
    ),
    rule(
        "stored-generated-column",
        Error,
        &[L],
        "add a plain column filled by a trigger, then backfill in batches",
    ),
    rule(
        "add-serial-column",
        Error,
        &[L],
        "create a new table with the column, or add a nullable column backed by a sequence default and backfill",
    ),
    rule(
        "set-not-null",
        Error,
        &[L, B],
        "ADD CONSTRAINT ... CHECK (col IS NOT NULL) NOT VALID, VALIDATE it in another transaction, then SET NOT NULL (PostgreSQL 12+ skips the scan)",
    ),
    rule(
        "drop-not-null",
        Warning,
        &[B],
        "update every reader to handle NULL before the release that allows it",
    ),
    rule(
        "add-foreign-key",
        Error,
        &[L],
        "ADD CONSTRAINT ... FOREIGN KEY ... NOT VALID, then VALIDATE CONSTRAINT in another transaction",
    ),
    rule(
        "add-check-constraint",
        Error,
        &[L],
        "ADD CONSTRAINT ... CHECK (...) NOT VALID, then VALIDATE CONSTRAINT in another transaction",
    ),
    rule(
        "validate-in-same-transaction",
        Error,
        &[L],
        "VALIDATE the constraint in a separate transaction or migration",
    ),
    rule(
        "add-unique-constraint",
        Error,
        &[L, F],
        "CREATE UNIQUE INDEX CONCURRENTLY, then ADD CONSTRAINT ... UNIQUE USING INDEX",
    ),
    rule(
        "add-primary-key",
        Error,
        &[L],
        "SET NOT NULL safely first, CREATE UNIQUE INDEX CONCURRENTLY, then ADD CONSTRAINT ... PRIMARY KEY USING INDEX",
    ),
    rule(
        "add-exclusion-constraint",
        Error,
        &[L],
        "there is no online way: schedule downtime, or enforce it in the application",
    ),
    rule(
        "create-index-without-concurrently",
        Error,
        &[L],
        "CREATE INDEX CONCURRENTLY, outside a transaction (Alembic: postgresql_concurrently=True inside autocommit_block())",
    ),
    rule(
        "drop-index-without-concurrently",
        Warning,
        &[L],
        "DROP INDEX CONCURRENTLY, outside a transaction",
    ),
    rule(
        "concurrently-in-transaction",
        Error,
        &[F],
        "run it outside a transaction: Alembic `with op.get_context().autocommit_block():`, or a non-transactional migration",
    ),
    rule(
        "reindex-without-concurrently",
        Error,
        &[L],
        "REINDEX ... CONCURRENTLY (PostgreSQL 12+), or pg_repack",
    ),
    rule(
        "partition-attach-detach",
        Warning,
        &[L],
        "add a CHECK matching the bound before ATTACH; DETACH ... CONCURRENTLY (PostgreSQL 14+) outside a transaction",
    ),
    rule(
        "vacuum-full-or-cluster",
        Error,
        &[L],
        "use pg_repack, or plain VACUUM outside the migration",
    ),
    rule(
        "missing-lock-timeout",
        Warning,
        &[L],
        "start with SET lock_timeout = '2s' (and a statement_timeout) so a blocked lock fails fast instead of queueing every query behind it",
    ),
    rule(
        "domain-with-constraint",
        Warning,
        &[L],
        "put a CHECK constraint (NOT VALID, then VALIDATE) on the column instead",
    ),
    rule(
        "enum-add-value-in-transaction",
        Error,
        &[F, B],
        "add the value in its own migration outside a transaction (autocommit_block) and use it from a later one",
    ),
    rule(
        "transaction-nesting",
        Error,
        &[F],
        "let the runner manage the transaction; for statements that need none use autocommit_block() or a non-transactional migration",
    ),
    rule(
        "not-idempotent",
        Warning,
        &[F],
        "use IF [NOT] EXISTS, so a retry after a failure outside a transaction can finish the job",
    ),
    rule(
        "downgrade-missing",
        Warning,
        &[F],
        "write a downgrade that restores what the upgrade changed, or declare it irreversible with `raise NotImplementedError(...)` / `-- ripcord:irreversible because ...`",
    ),
    rule(
        "downgrade-irreversible",
        Info,
        &[F],
        "plan the recovery: a rollback past this migration needs a restore or a roll forward",
    ),
    rule(
        "downgrade-empty",
        Warning,
        &[U],
        "write the downgrade, or declare the migration irreversible: an empty one hides that rollback will not restore the schema",
    ),
    rule(
        "downgrade-data-loss",
        Warning,
        &[D],
        "keep the data (rename or archive it) or accept the loss explicitly with a ripcord:allow reason",
    ),
    rule(
        "downgrade-fails",
        Error,
        &[F],
        "make the downgrade tolerate the data the new code wrote: nullable or with a default, or a backfill before the constraint",
    ),
    rule(
        "implicit-drop",
        Warning,
        &[D],
        "drop dependent indexes and constraints explicitly, after checking nothing needs them",
    ),
    rule(
        "orm-side-default",
        Error,
        &[F, B],
        "use server_default= so the database fills existing rows and inserts from other code",
    ),
    rule(
        "expand-and-contract",
        Warning,
        &[B],
        "ship the expand step (add) in one release and the contract step (drop) in a later one",
    ),
    rule(
        "batch-recreate-table",
        Error,
        &[L],
        "on PostgreSQL use plain op.* calls (batch mode recreate=\"auto\" alters in place)",
    ),
    rule(
        "unknown-statement",
        Warning,
        &[U],
        "review it by hand; if it is safe, say why with a ripcord:allow comment",
    ),
    rule(
        "parse-error",
        Warning,
        &[U],
        "fix the syntax error so the file can be analysed",
    ),
    rule(
        "suppression-without-reason",
        Error,
        &[U],
        "add `because <reason>` to the ripcord:allow comment",
    ),
    rule(
        "suppression-unknown-rule",
        Warning,
        &[U],
        "name the rule as its finding prints it (e.g. `drop-column`); `ripcord migrations check --disable RULE` with an unknown RULE lists every rule id",
    ),
];

/// All rule ids, for settings validation.
pub fn rule_ids() -> Vec<&'static str> {
    RULES.iter().map(|r| r.id).collect()
}

fn find_rule(id: &str) -> Option<&'static Rule> {
    RULES.iter().find(|r| r.id == id)
}

/// What earlier migrations left behind, learned in run order.
#[derive(Debug, Default, Clone)]
pub(crate) struct Schema {
    columns: HashMap<(String, String), Ty>,
    /// Named indexes, looked up both ways so that a long history stays linear: by name
    /// (DROP INDEX) and by the table and column they cover (DROP COLUMN).
    indexes: Indexes,
    /// NOT VALID `CHECK (col IS NOT NULL)` constraints: name -> (table, column).
    not_null_checks: HashMap<String, (String, String)>,
    validated_not_null: HashSet<(String, String)>,
}

/// The named indexes earlier migrations created, all names normalised by [`norm`].
#[derive(Debug, Default, Clone)]
struct Indexes {
    /// index name -> (table, columns)
    by_name: HashMap<String, (String, Vec<String>)>,
    /// (table, column) -> the indexes that cover the column.
    by_column: HashMap<(String, String), BTreeSet<String>>,
}

impl Indexes {
    /// Records an index (replacing one of the same name).
    fn insert(&mut self, name: String, table: String, columns: Vec<String>) {
        self.remove(&name);
        for c in &columns {
            self.by_column
                .entry((table.clone(), c.clone()))
                .or_default()
                .insert(name.clone());
        }
        self.by_name.insert(name, (table, columns));
    }

    fn remove(&mut self, name: &str) {
        let Some((table, columns)) = self.by_name.remove(name) else {
            return;
        };
        for c in columns {
            let key = (table.clone(), c);
            if let Some(set) = self.by_column.get_mut(&key) {
                set.remove(name);
                if set.is_empty() {
                    self.by_column.remove(&key);
                }
            }
        }
    }

    /// The indexes on `table.column`, sorted by name.
    fn on_column(&self, table: &str, column: &str) -> Vec<String> {
        self.by_column
            .get(&(table.to_string(), column.to_string()))
            .map(|set| set.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// The unqualified, unquoted, lowercase name used to match objects.
fn norm(name: &str) -> String {
    let last = name.rsplit('.').next().unwrap_or(name);
    last.trim().trim_matches('"').to_ascii_lowercase()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Up,
    Down,
}

struct Raw {
    finding: Finding,
    anchor: Option<usize>,
}

/// What the upgrade created, so the downgrade's drops of it read as "data written since".
#[derive(Default, Clone)]
struct Created {
    tables: HashSet<String>,
    columns: HashSet<(String, String)>,
    indexes: HashSet<String>,
}

struct Engine<'a> {
    settings: &'a Settings,
    side: Side,
    kind: Kind,
    schema: &'a mut Schema,
    created: Created,
    from_up: Created,
    in_tx: bool,
    runner_tx: bool,
    runner_implicit: bool,
    runner_hint: &'static str,
    explicit: Vec<usize>,
    lock_timeout: bool,
    lock_timeout_local: bool,
    timeout_reported: bool,
    /// Constraints added NOT VALID in the open transaction, with their kind.
    not_valid: HashMap<String, ConKind>,
    enum_values: Vec<String>,
    expanded: HashSet<String>,
    irreversible: Option<usize>,
    findings: Vec<Raw>,
    phases: Vec<(Phase, usize, String)>,
    anchor: Option<usize>,
}

impl Engine<'_> {
    fn emit(&mut self, id: &'static str, line: usize, message: String) {
        let Some(r) = find_rule(id) else {
            return;
        };
        self.findings.push(Raw {
            finding: Finding {
                rule: r.id,
                severity: r.severity,
                line,
                risk: r.risk.to_vec(),
                message,
                fix: r.fix.to_string(),
                path: None,
            },
            anchor: self.anchor,
        });
    }

    fn mark(&mut self, phase: Phase, line: usize, why: String) {
        if self.side == Side::Up {
            self.phases.push((phase, line, why));
        }
    }

    fn existing(&self, table: &str) -> bool {
        !self.created.tables.contains(&norm(table))
    }

    fn new_column(&self, table: &str, column: &str) -> bool {
        !self.existing(table) || self.created.columns.contains(&(norm(table), norm(column)))
    }

    /// A statement that queues for a lock on an existing table: without lock_timeout,
    /// it blocks every query that arrives after it while it waits.
    fn lock_taken(&mut self, line: usize, what: &str) {
        if !self.lock_timeout && !self.timeout_reported {
            self.timeout_reported = true;
            self.emit(
                "missing-lock-timeout",
                line,
                format!("{what} waits for a lock with no lock_timeout set: while it waits, every query on the table queues behind it"),
            );
        }
    }

    /// DDL outside a transaction is not undone when a later statement fails, so the
    /// retry runs it again: without IF [NOT] EXISTS that retry fails.
    fn idempotent(&mut self, line: usize, guarded: bool, what: &str, clause: &str) {
        if !self.in_tx && !guarded {
            self.emit(
                "not-idempotent",
                line,
                format!("{what} runs outside a transaction without {clause}: a retry fails"),
            );
        }
    }

    fn reset_tx_state(&mut self) {
        self.not_valid.clear();
        self.enum_values.clear();
        if self.lock_timeout_local {
            self.lock_timeout = false;
            self.lock_timeout_local = false;
        }
    }

    fn data_loss(&mut self, up_rule: &'static str, line: usize, up_msg: String, down_msg: String) {
        match self.side {
            Side::Up => self.emit(up_rule, line, up_msg),
            Side::Down => self.emit("downgrade-data-loss", line, down_msg),
        }
    }

    fn action(&mut self, a: &Action) {
        let line = a.line;
        self.anchor = a.anchor;
        if self.in_tx
            && !self.enum_values.is_empty()
            && !matches!(a.op, Op::EnumAddValue { .. })
            && let Some(v) = a.strings.iter().find(|s| self.enum_values.contains(s))
        {
            self.emit(
                "enum-add-value-in-transaction",
                line,
                format!("uses enum value '{v}' added earlier in the same transaction: PostgreSQL refuses with \"unsafe use of new value\""),
            );
        }
        let pg = self.settings.pg_version;
        match &a.op {
            Op::CreateTable {
                table,
                if_not_exists,
                columns,
            } => {
                self.created.tables.insert(norm(table));
                for (c, ty) in columns {
                    if let (Some(ty), Side::Up) = (ty, self.side) {
                        self.schema
                            .columns
                            .insert((norm(table), norm(c)), ty.clone());
                    }
                }
                self.idempotent(
                    line,
                    *if_not_exists,
                    &format!("CREATE TABLE {table}"),
                    "IF NOT EXISTS",
                );
                self.mark(Phase::Expand, line, format!("creates table {table}"));
            }
            Op::DropTable {
                table,
                if_exists,
                cascade,
            } => {
                self.idempotent(
                    line,
                    *if_exists,
                    &format!("DROP TABLE {table}"),
                    "IF EXISTS",
                );
                if self.existing(table) {
                    self.lock_taken(line, &format!("DROP TABLE {table}"));
                    let since = if self.from_up.tables.contains(&norm(table)) {
                        "rows written since the upgrade created it are lost"
                    } else {
                        "its rows are lost"
                    };
                    self.data_loss(
                        "drop-table",
                        line,
                        format!("drops table {table} and all its rows: code still using it breaks, and a rollback cannot bring the data back"),
                        format!("drops table {table}: {since}"),
                    );
                    self.mark(Phase::Contract, line, format!("drops table {table}"));
                }
                if *cascade {
                    self.emit("drop-cascade", line, format!("DROP TABLE {table} CASCADE also drops every view and foreign key that depends on it"));
                }
            }
            Op::DropSchema {
                what,
                name,
                if_exists,
                cascade,
            } => {
                self.idempotent(
                    line,
                    *if_exists,
                    &format!("DROP {} {name}", what.to_ascii_uppercase()),
                    "IF EXISTS",
                );
                let cascade = if *cascade {
                    " with everything in it (CASCADE)"
                } else {
                    ""
                };
                let rule = if *what == "database" {
                    "drop-database"
                } else {
                    "drop-schema"
                };
                self.data_loss(
                    rule,
                    line,
                    format!("drops {what} {name}{cascade}: its data is lost"),
                    format!("drops {what} {name}{cascade}: its data is lost"),
                );
                self.mark(Phase::Contract, line, format!("drops {what} {name}"));
            }
            Op::DropOther {
                what,
                name,
                if_exists,
                cascade,
            } => {
                self.idempotent(
                    line,
                    *if_exists,
                    &format!("DROP {} {name}", what.to_ascii_uppercase()),
                    "IF EXISTS",
                );
                if *cascade {
                    self.emit(
                        "drop-cascade",
                        line,
                        format!(
                            "DROP {} {name} CASCADE also drops everything that depends on it",
                            what.to_ascii_uppercase()
                        ),
                    );
                }
                self.mark(Phase::Contract, line, format!("drops {what} {name}"));
            }
            Op::Truncate { tables, cascade } => {
                let list = tables.join(", ");
                if tables.iter().any(|t| self.existing(t)) {
                    self.lock_taken(line, &format!("TRUNCATE {list}"));
                }
                let cascade = if *cascade {
                    ", and CASCADE empties every table that references them"
                } else {
                    ""
                };
                self.data_loss(
                    "truncate",
                    line,
                    format!("TRUNCATE {list} deletes every row under ACCESS EXCLUSIVE{cascade}"),
                    format!("TRUNCATE {list} deletes every row{cascade}"),
                );
                self.mark(Phase::Migrate, line, format!("truncates {list}"));
            }
            Op::Dml { verb, table } => {
                if self.existing(table) {
                    if self.side == Side::Down && *verb == "DELETE" {
                        self.emit(
                            "downgrade-data-loss",
                            line,
                            format!("DELETE FROM {table}: rows are removed"),
                        );
                    } else {
                        self.emit("backfill-in-migration", line, format!("{verb} on existing table {table} inside a schema migration: it holds row locks for the whole transaction and cannot be paused or batched"));
                    }
                    self.mark(
                        Phase::Migrate,
                        line,
                        format!("{} rows of {table}", verb.to_ascii_lowercase()),
                    );
                }
            }
            Op::RenameColumn { table, from, to } => {
                if self.existing(table) {
                    self.lock_taken(line, &format!("ALTER TABLE {table}"));
                    if self.side == Side::Up {
                        self.emit("rename-column", line, format!("renames {table}.{from} to {to}: the running code (and the code a rollback brings back) still uses {from}"));
                        if self.expanded.contains(&norm(table)) {
                            self.emit("expand-and-contract", line, format!("adds to {table} and renames {from} in the same migration: the old code has no release in between"));
                        }
                    }
                    self.mark(
                        Phase::Contract,
                        line,
                        format!("renames column {table}.{from}"),
                    );
                }
            }
            Op::RenameTable { table, to } => {
                if self.existing(table) {
                    self.lock_taken(line, &format!("ALTER TABLE {table}"));
                    if self.side == Side::Up {
                        self.emit(
                            "rename-table",
                            line,
                            format!(
                                "renames table {table} to {to}: the running code still uses {table}"
                            ),
                        );
                    }
                    self.mark(Phase::Contract, line, format!("renames table {table}"));
                }
            }
            Op::RenameSchema { name } => {
                if self.side == Side::Up {
                    self.emit(
                        "rename-schema",
                        line,
                        format!("renames schema {name}: code using qualified names breaks"),
                    );
                }
                self.mark(Phase::Contract, line, format!("renames schema {name}"));
            }
            Op::RenameType { name, detail } => {
                if self.side == Side::Up {
                    self.emit(
                        "rename-type",
                        line,
                        format!("type {name}: {detail}; code using the old name breaks"),
                    );
                }
                self.mark(Phase::Contract, line, format!("type {name}: {detail}"));
            }
            Op::AddColumn(add) => self.add_column(line, add, pg),
            Op::DropColumn {
                table,
                column,
                if_exists,
                cascade,
            } => {
                self.idempotent(
                    line,
                    *if_exists,
                    &format!("ALTER TABLE {table} DROP COLUMN {column}"),
                    "IF EXISTS",
                );
                if self.new_column(table, column) {
                    return;
                }
                self.lock_taken(line, &format!("ALTER TABLE {table}"));
                let since = if self.from_up.columns.contains(&(norm(table), norm(column))) {
                    "values written since the upgrade added it are lost"
                } else {
                    "its values are lost"
                };
                self.data_loss(
                    "drop-column",
                    line,
                    format!("drops column {table}.{column} and its data: code that still reads or writes it breaks, and a rollback cannot restore the values"),
                    format!("drops column {table}.{column}: {since}"),
                );
                let (t, c) = (norm(table), norm(column));
                let deps = self.schema.indexes.on_column(&t, &c);
                if !deps.is_empty() {
                    self.emit(
                        "implicit-drop",
                        line,
                        format!(
                            "dropping {table}.{column} also drops index {}",
                            deps.join(", ")
                        ),
                    );
                }
                if *cascade {
                    self.emit("implicit-drop", line, format!("DROP COLUMN {column} CASCADE also drops the views and constraints that depend on it"));
                }
                if self.side == Side::Up && self.expanded.contains(&t) {
                    self.emit("expand-and-contract", line, format!("adds to {table} and drops {column} in the same migration: the old code has no release in between"));
                }
                if self.side == Side::Up {
                    self.schema.columns.remove(&(t.clone(), c.clone()));
                    // PostgreSQL drops the indexes with the column.
                    for d in &deps {
                        self.schema.indexes.remove(d);
                    }
                }
                self.mark(
                    Phase::Contract,
                    line,
                    format!("drops column {table}.{column}"),
                );
            }
            Op::AlterType {
                table,
                column,
                to,
                from,
                using,
            } => {
                let key = (norm(table), norm(column));
                if self.new_column(table, column) {
                    if self.side == Side::Up {
                        self.schema.columns.insert(key, to.clone());
                    }
                    return;
                }
                let from = from
                    .clone()
                    .or_else(|| self.schema.columns.get(&key).cloned());
                self.lock_taken(line, &format!("ALTER TABLE {table}"));
                match type_change(from.as_ref(), to, *using) {
                    Change::Free => {
                        self.mark(
                            Phase::Expand,
                            line,
                            format!("widens {table}.{column} to {to}"),
                        );
                    }
                    Change::Unknown(hint) => {
                        self.emit("change-column-type", line, format!("changes {table}.{column} to {to}: {hint}; ripcord does not know its current type (give existing_type=, or let an earlier migration in the run create it)"));
                        self.mark(
                            Phase::Contract,
                            line,
                            format!("changes the type of {table}.{column}"),
                        );
                    }
                    Change::Rewrite { narrowing } => {
                        let from_s = from
                            .as_ref()
                            .map(|f| format!(" from {f}"))
                            .unwrap_or_default();
                        let how = if *using { " with USING" } else { "" };
                        self.emit("change-column-type", line, format!("changes {table}.{column}{from_s} to {to}{how}: rewrites the table (and its indexes) under ACCESS EXCLUSIVE, and the old code may not fit the new type"));
                        if narrowing && self.side == Side::Down {
                            self.emit("downgrade-fails", line, format!("changes {table}.{column} back to {to}: fails if the new code stored values that do not fit"));
                        }
                        self.mark(
                            Phase::Contract,
                            line,
                            format!("changes the type of {table}.{column}"),
                        );
                    }
                }
                if self.side == Side::Up {
                    self.schema.columns.insert(key, to.clone());
                }
            }
            Op::SetNotNull { table, column } => {
                if self.new_column(table, column) {
                    return;
                }
                self.lock_taken(line, &format!("ALTER TABLE {table}"));
                let proven = pg >= 12
                    && self
                        .schema
                        .validated_not_null
                        .contains(&(norm(table), norm(column)));
                match (self.side, proven) {
                    (Side::Up, false) => self.emit("set-not-null", line, format!("SET NOT NULL on {table}.{column} scans the whole table under ACCESS EXCLUSIVE, and old code that leaves it empty starts failing")),
                    (Side::Down, _) => self.emit("downgrade-fails", line, format!("sets {table}.{column} NOT NULL again: fails if the new code wrote NULLs (and scans the table under ACCESS EXCLUSIVE)")),
                    (Side::Up, true) => {}
                }
                self.mark(
                    Phase::Contract,
                    line,
                    format!("makes {table}.{column} NOT NULL"),
                );
            }
            Op::DropNotNull { table, column } => {
                if self.new_column(table, column) {
                    return;
                }
                self.lock_taken(line, &format!("ALTER TABLE {table}"));
                if self.side == Side::Up {
                    self.emit("drop-not-null", line, format!("DROP NOT NULL on {table}.{column}: code reading it (including the code a rollback brings back) may not expect NULL"));
                }
                self.mark(
                    Phase::Expand,
                    line,
                    format!("allows NULL in {table}.{column}"),
                );
            }
            Op::ChangeDefault { table } => {
                if self.existing(table) {
                    self.lock_taken(line, &format!("ALTER TABLE {table}"));
                }
            }
            Op::AddConstraint {
                table,
                name,
                kind,
                not_valid,
                using_index,
                not_null_column,
            } => {
                if !self.existing(table) {
                    return;
                }
                self.lock_taken(line, &format!("ALTER TABLE {table}"));
                let cname = name.clone().unwrap_or_else(|| "(unnamed)".into());
                if *not_valid {
                    if let Some(n) = name {
                        self.not_valid.insert(norm(n), kind.clone());
                        if let (Some(col), Side::Up) = (not_null_column, self.side) {
                            self.schema
                                .not_null_checks
                                .insert(norm(n), (norm(table), norm(col)));
                        }
                    }
                } else {
                    match kind {
                        ConKind::ForeignKey => self.emit("add-foreign-key", line, format!("adds foreign key {cname} on {table} without NOT VALID: checks every row while holding SHARE ROW EXCLUSIVE on both tables (writes blocked)")),
                        ConKind::Check => {
                            self.emit("add-check-constraint", line, format!("adds check {cname} on {table} without NOT VALID: scans every row under ACCESS EXCLUSIVE"));
                            if let (Some(col), Side::Up) = (not_null_column, self.side) {
                                self.schema.validated_not_null.insert((norm(table), norm(col)));
                            }
                        }
                        ConKind::Unique if !using_index => self.emit("add-unique-constraint", line, format!("adds unique constraint {cname} on {table}: builds the index under ACCESS EXCLUSIVE, and fails if duplicates exist")),
                        ConKind::PrimaryKey if !using_index => self.emit("add-primary-key", line, format!("adds a primary key on {table}: builds the index under ACCESS EXCLUSIVE (and scans for NULLs)")),
                        ConKind::Exclude => self.emit("add-exclusion-constraint", line, format!("adds exclusion constraint {cname} on {table}: builds its index under ACCESS EXCLUSIVE")),
                        _ => {}
                    }
                }
                self.mark(
                    Phase::Expand,
                    line,
                    format!("adds constraint {cname} on {table}"),
                );
            }
            Op::ValidateConstraint { table, name } => {
                if let (true, Some(kind)) = (self.in_tx, self.not_valid.get(&norm(name))) {
                    // The lock the ADD took stays until the transaction ends.
                    let held = match kind {
                        ConKind::ForeignKey => format!(
                            "the SHARE ROW EXCLUSIVE lock the ADD took on {table} and on the referenced table is"
                        ),
                        _ => "the ACCESS EXCLUSIVE lock from the ADD is".to_string(),
                    };
                    self.emit("validate-in-same-transaction", line, format!("validates {name} on {table} in the transaction that added it NOT VALID: {held} held through the whole validation scan"));
                }
                if let Some(key) = self.schema.not_null_checks.get(&norm(name)).cloned()
                    && self.side == Side::Up
                {
                    self.schema.validated_not_null.insert(key);
                }
            }
            Op::DropConstraint { table, name } => {
                if self.existing(table) {
                    self.lock_taken(line, &format!("ALTER TABLE {table}"));
                    self.mark(
                        Phase::Expand,
                        line,
                        format!("drops constraint {name} on {table}"),
                    );
                }
            }
            Op::CreateIndex {
                table,
                name,
                columns,
                concurrently,
                if_not_exists,
                ..
            } => {
                let label = name.clone().unwrap_or_else(|| format!("on {table}"));
                if let Some(n) = name {
                    self.created.indexes.insert(norm(n));
                    if self.side == Side::Up {
                        self.schema.indexes.insert(
                            norm(n),
                            norm(table),
                            columns.iter().map(|c| norm(c)).collect(),
                        );
                    }
                }
                if *concurrently && self.in_tx {
                    self.emit("concurrently-in-transaction", line, format!("CREATE INDEX CONCURRENTLY {label} inside a transaction: PostgreSQL refuses it{}", self.tx_hint()));
                }
                if !concurrently && self.existing(table) {
                    self.lock_taken(line, &format!("CREATE INDEX {label}"));
                    self.emit("create-index-without-concurrently", line, format!("CREATE INDEX {label} without CONCURRENTLY takes SHARE on {table}: writes are blocked for the whole build"));
                }
                if !self.in_tx && !if_not_exists {
                    self.emit("not-idempotent", line, format!("CREATE INDEX {label} runs outside a transaction without IF NOT EXISTS: after a failure the retry fails (and a failed CONCURRENTLY build leaves an INVALID index to drop first)"));
                }
                self.mark(Phase::Expand, line, format!("creates index {label}"));
            }
            Op::DropIndex {
                name,
                concurrently,
                if_exists,
            } => {
                if self.created.indexes.contains(&norm(name)) {
                    return;
                }
                if *concurrently && self.in_tx {
                    self.emit("concurrently-in-transaction", line, format!("DROP INDEX CONCURRENTLY {name} inside a transaction: PostgreSQL refuses it{}", self.tx_hint()));
                }
                if !concurrently {
                    self.lock_taken(line, &format!("DROP INDEX {name}"));
                    self.emit("drop-index-without-concurrently", line, format!("DROP INDEX {name} without CONCURRENTLY takes ACCESS EXCLUSIVE on its table"));
                }
                self.idempotent(line, *if_exists, &format!("DROP INDEX {name}"), "IF EXISTS");
                if self.side == Side::Up {
                    self.schema.indexes.remove(&norm(name));
                }
                self.mark(Phase::Expand, line, format!("drops index {name}"));
            }
            Op::Reindex {
                target,
                concurrently,
            } => {
                if *concurrently && self.in_tx {
                    self.emit("concurrently-in-transaction", line, format!("REINDEX CONCURRENTLY {target} inside a transaction: PostgreSQL refuses it{}", self.tx_hint()));
                }
                if !concurrently {
                    self.lock_taken(line, &format!("REINDEX {target}"));
                    let how = if pg >= 12 {
                        "use REINDEX CONCURRENTLY"
                    } else {
                        "before PostgreSQL 12 only pg_repack avoids it"
                    };
                    self.emit("reindex-without-concurrently", line, format!("REINDEX {target} without CONCURRENTLY blocks writes (and reads that use the index) for the whole rebuild; {how}"));
                }
            }
            Op::Partition {
                table,
                attach,
                concurrently,
            } => {
                if !self.existing(table) {
                    return;
                }
                if *attach {
                    self.lock_taken(line, &format!("ATTACH PARTITION on {table}"));
                    self.emit("partition-attach-detach", line, format!("ATTACH PARTITION on {table} scans the partition under ACCESS EXCLUSIVE unless a valid CHECK constraint matches the bound"));
                } else if !concurrently {
                    self.lock_taken(line, &format!("DETACH PARTITION on {table}"));
                    self.emit(
                        "partition-attach-detach",
                        line,
                        format!(
                            "DETACH PARTITION on {table} takes ACCESS EXCLUSIVE on the parent table"
                        ),
                    );
                } else if self.in_tx {
                    self.emit("concurrently-in-transaction", line, format!("DETACH PARTITION ... CONCURRENTLY on {table} inside a transaction: PostgreSQL refuses it{}", self.tx_hint()));
                } else if pg < 14 {
                    self.emit("partition-attach-detach", line, format!("DETACH PARTITION ... CONCURRENTLY needs PostgreSQL 14; the target is {pg}"));
                } else {
                    // Its second transaction queues for ACCESS EXCLUSIVE on the partition.
                    self.lock_taken(
                        line,
                        &format!("DETACH PARTITION ... CONCURRENTLY on {table}"),
                    );
                }
            }
            Op::Vacuum {
                table,
                full,
                cluster,
            } => {
                let what = if *cluster {
                    "CLUSTER"
                } else if *full {
                    "VACUUM FULL"
                } else {
                    "VACUUM"
                };
                if self.in_tx && !cluster {
                    self.emit(
                        "concurrently-in-transaction",
                        line,
                        format!(
                            "{what} cannot run inside a transaction block{}",
                            self.tx_hint()
                        ),
                    );
                }
                if *full || *cluster {
                    self.lock_taken(line, what);
                    self.emit("vacuum-full-or-cluster", line, format!("{what} {table} rewrites the table under ACCESS EXCLUSIVE: reads and writes wait for the whole rewrite"));
                }
            }
            Op::SetTimeout { lock, local } => {
                if *lock && (!local || self.in_tx) {
                    self.lock_timeout = true;
                    self.lock_timeout_local = *local;
                }
            }
            Op::CreateDomain {
                name,
                has_constraint,
            } => {
                if *has_constraint {
                    self.emit("domain-with-constraint", line, format!("domain {name} has a constraint: changing it later re-checks every column of the domain under lock, and the check is invisible on the tables"));
                }
            }
            Op::AlterDomainAddConstraint { name, not_valid } => {
                if !not_valid {
                    // The check takes SHARE on every table with a column of the domain.
                    self.lock_taken(line, &format!("ALTER DOMAIN {name}"));
                    self.emit("domain-with-constraint", line, format!("adds a constraint to domain {name}: scans every column of that domain in every table"));
                }
            }
            Op::EnumAddValue {
                name,
                value,
                if_not_exists,
            } => {
                self.idempotent(
                    line,
                    *if_not_exists,
                    &format!("ALTER TYPE {name} ADD VALUE '{value}'"),
                    "IF NOT EXISTS",
                );
                if self.in_tx {
                    if pg < 12 {
                        self.emit("enum-add-value-in-transaction", line, format!("ALTER TYPE {name} ADD VALUE '{value}' cannot run inside a transaction before PostgreSQL 12{}", self.tx_hint()));
                    }
                    self.enum_values.push(value.clone());
                }
                self.mark(
                    Phase::Expand,
                    line,
                    format!("adds value '{value}' to type {name}"),
                );
            }
            Op::Begin => {
                // In the implicit transaction of a query string, BEGIN makes it an
                // explicit one (the statements before it included), with no warning.
                let implicit = self.runner_implicit && self.explicit.is_empty();
                if self.in_tx && !implicit {
                    let whose = if self.explicit.is_empty() {
                        "the migration runner's transaction"
                    } else {
                        "an open BEGIN"
                    };
                    self.emit("transaction-nesting", line, format!("BEGIN inside {whose}: PostgreSQL only warns, and the next COMMIT ends the outer transaction early"));
                }
                // PostgreSQL ignores a BEGIN inside an open BEGIN: the next COMMIT ends
                // the one transaction there is.
                if self.explicit.is_empty() {
                    self.explicit.push(line);
                }
                self.in_tx = true;
            }
            Op::Commit | Op::Rollback => {
                let word = if matches!(a.op, Op::Commit) {
                    "COMMIT"
                } else {
                    "ROLLBACK"
                };
                if self.explicit.pop().is_none() {
                    if self.kind == Kind::Alembic {
                        self.emit("transaction-nesting", line, format!("{word} through op.execute ends Alembic's transaction; the driver opens a new one for the next statement, so CONCURRENTLY still fails after it"));
                    } else if self.in_tx && self.runner_implicit {
                        self.emit("transaction-nesting", line, format!("{word} ends the implicit transaction PostgreSQL runs this query string in (with a warning): what came before is committed alone, so a failure after it leaves the migration half applied"));
                    } else if self.in_tx {
                        self.emit("transaction-nesting", line, format!("{word} ends the migration runner's transaction: what follows runs without one, and a failure leaves the migration half applied"));
                    } else {
                        self.emit(
                            "transaction-nesting",
                            line,
                            format!("{word} without a BEGIN"),
                        );
                    }
                }
                self.reset_tx_state();
                // Alembic's driver starts a new transaction on the next statement, and
                // PostgreSQL a new implicit one for the rest of a query string.
                self.in_tx = (self.kind == Kind::Alembic || self.runner_implicit) && self.runner_tx;
            }
            Op::AutocommitStart => {
                self.reset_tx_state();
                self.in_tx = false;
            }
            Op::AutocommitEnd => {
                self.in_tx = self.runner_tx;
            }
            Op::BatchRecreate { table } => {
                if self.existing(table) {
                    self.lock_taken(line, &format!("batch_alter_table({table})"));
                    self.emit("batch-recreate-table", line, format!("batch_alter_table({table}, recreate=\"always\") copies the whole table into a new one and drops the old: writes in between are lost or blocked"));
                }
            }
            Op::CreateOther {
                what,
                name,
                if_not_exists,
            } => {
                self.idempotent(
                    line,
                    *if_not_exists,
                    &format!("CREATE {} {name}", what.to_ascii_uppercase()),
                    "IF NOT EXISTS",
                );
            }
            Op::Benign { .. } | Op::Inert { .. } => {}
            Op::Unknown { rule, why } => {
                self.emit(rule, line, why.clone());
                self.mark(Phase::Unknown, line, why.clone());
            }
            Op::Irreversible => {
                self.irreversible.get_or_insert(line);
            }
        }
    }

    fn tx_hint(&self) -> &'static str {
        if self.kind == Kind::Alembic {
            " (Alembic runs upgrade() in a transaction; wrap it in `with op.get_context().autocommit_block():`)"
        } else if self.explicit.is_empty() && !self.runner_hint.is_empty() {
            self.runner_hint
        } else if self.explicit.is_empty() {
            " (the migration runner wraps this file in a transaction; mark it non-transactional)"
        } else {
            " (an explicit BEGIN is open)"
        }
    }

    fn add_column(&mut self, line: usize, add: &super::model::AddColumn, pg: u32) {
        let (table, column) = (&add.table, &add.column);
        self.idempotent(
            line,
            add.if_not_exists,
            &format!("ALTER TABLE {table} ADD COLUMN {column}"),
            "IF NOT EXISTS",
        );
        let key = (norm(table), norm(column));
        if let (Some(ty), Side::Up) = (&add.ty, self.side) {
            self.schema.columns.insert(key.clone(), ty.clone());
        }
        if !self.existing(table) {
            return;
        }
        self.created.columns.insert(key);
        self.expanded.insert(norm(table));
        self.lock_taken(line, &format!("ALTER TABLE {table}"));
        let generated = add.identity_or_serial || add.stored_generated;
        let mut contract = false;
        if add.not_null && add.default.is_none() && !generated {
            contract = true;
            if add.orm_default_only {
                let msg = format!(
                    "column {table}.{column} is NOT NULL with only an ORM-side default=: the database has no default, so adding it fails on a non-empty table and inserts from other code fail"
                );
                match self.side {
                    Side::Up => self.emit("orm-side-default", line, msg),
                    Side::Down => self.emit("downgrade-fails", line, msg),
                }
            } else {
                match self.side {
                    Side::Up => self.emit("add-not-null-column-without-default", line, format!("adds NOT NULL column {table}.{column} without a default: fails if the table has rows, and the old code's inserts fail")),
                    Side::Down => self.emit("downgrade-fails", line, format!("re-adds {table}.{column} as NOT NULL without a default: fails once the table has rows")),
                }
            }
        }
        match &add.default {
            Some(DefaultKind::Volatile(f)) => self.emit("volatile-default", line, format!("adds {table}.{column} with volatile default {f}: every row gets its own value, so the table is rewritten under ACCESS EXCLUSIVE")),
            Some(DefaultKind::Stable(_) | DefaultKind::Constant) if pg < 11 => self.emit("volatile-default", line, format!("adds {table}.{column} with a default: before PostgreSQL 11 (the target is {pg}) any default rewrites the table under ACCESS EXCLUSIVE")),
            _ => {}
        }
        if add.stored_generated {
            self.emit("stored-generated-column", line, format!("adds stored generated column {table}.{column}: rewrites the table under ACCESS EXCLUSIVE"));
        }
        if add.identity_or_serial {
            self.emit("add-serial-column", line, format!("adds serial/identity column {table}.{column} to an existing table: fills every row, rewriting the table under ACCESS EXCLUSIVE"));
        }
        if let Some(r) = &add.references {
            self.emit("add-foreign-key", line, format!("adds {table}.{column} with a foreign key to {r}: takes SHARE ROW EXCLUSIVE on {r} too (writes blocked); add it NOT VALID separately"));
        }
        if add.unique {
            self.emit(
                "add-unique-constraint",
                line,
                format!("adds {table}.{column} UNIQUE: builds the index under ACCESS EXCLUSIVE"),
            );
        }
        if add.primary_key {
            self.emit(
                "add-primary-key",
                line,
                format!(
                    "adds {table}.{column} as PRIMARY KEY: builds the index under ACCESS EXCLUSIVE"
                ),
            );
        }
        if add.check {
            self.emit(
                "add-check-constraint",
                line,
                format!(
                    "adds {table}.{column} with a CHECK: scans the table under ACCESS EXCLUSIVE"
                ),
            );
        }
        if contract {
            self.mark(Phase::Contract, line, format!("adds NOT NULL column {table}.{column} without a default: the old code's inserts fail"));
        } else {
            self.mark(Phase::Expand, line, format!("adds column {table}.{column}"));
        }
    }

    fn finish(&mut self) {
        // In a runner's own transaction the runner's COMMIT ends an unmatched BEGIN; a
        // BEGIN in a query string or without a runner's transaction stays open.
        if let (Some(&begin), false) = (
            self.explicit.first(),
            self.runner_tx && !self.runner_implicit,
        ) {
            self.anchor = None;
            let what = if self.runner_implicit {
                "BEGIN without a matching COMMIT: the transaction is left open after the file, and whether it commits depends on what the runner sends next"
            } else {
                "BEGIN without a matching COMMIT: the transaction is never committed"
            };
            self.emit("transaction-nesting", begin, what.into());
        }
    }
}

/// How the runner runs one SQL script.
struct Runner {
    /// It runs in a transaction.
    tx: bool,
    /// That transaction is PostgreSQL's implicit one for a query string of several
    /// statements (see [`Lowered::runner_implicit`]).
    implicit: bool,
    /// Why a statement that refuses a transaction still gets one; empty for the
    /// general hint.
    hint: &'static str,
    /// Findings about the runner's choice.
    findings: Vec<(&'static str, usize, String)>,
}

impl Runner {
    /// The runner opens a transaction of its own before the file (when `tx`), or runs
    /// the file without one.
    fn wrapping(tx: bool, hint: &'static str) -> Runner {
        Runner {
            tx,
            implicit: false,
            hint,
            findings: Vec::new(),
        }
    }

    /// The whole file as one query string: several statements in it are one implicit
    /// transaction, a lone one runs on its own.
    fn query_string(several: bool, hint: &'static str) -> Runner {
        Runner {
            tx: several,
            implicit: several,
            hint,
            findings: Vec::new(),
        }
    }
}

/// How the runner of `m`'s layout runs an SQL script.
fn sql_runner(m: &Migration, script: &sql::SqlScript, pg: u32) -> Runner {
    if script.no_transaction {
        return Runner::wrapping(false, "");
    }
    let several = script.statements > 1;
    match m.layout {
        // golang-migrate's postgres driver sends the file as one query string.
        Layout::GolangMigrate => Runner::query_string(
            several,
            " (golang-migrate sends the whole file as one query string, which PostgreSQL runs as one implicit transaction: put the statement in a migration of its own)",
        ),
        // diesel runs a migration with one batch_execute, so without its transaction it
        // is in golang-migrate's position.
        Layout::Diesel if m.without_transaction => Runner::query_string(
            several,
            " (diesel sends the whole file as one query string, which PostgreSQL runs as one implicit transaction even with run_in_transaction = false: put the statement in a migration of its own)",
        ),
        // diesel opens its transaction with a BEGIN of its own before the file.
        Layout::Diesel => Runner::wrapping(
            true,
            " (diesel runs each migration in a transaction: set `run_in_transaction = false` in the migration's metadata.toml)",
        ),
        // Flyway runs a script without a transaction when one of its statements is one
        // it knows cannot run in one; mixing both kinds is refused unless `mixed` is set,
        // and then the whole script runs without a transaction.
        Layout::Flyway => {
            let non_tx = |t: &&sql::TopStatement| {
                t.non_transactional
                    .as_ref()
                    .is_some_and(|n| !n.before_pg12_only || pg < 12)
            };
            // Flyway's transaction is a JDBC one (autocommit off), opened before the file.
            let Some(first) = script.top_level.iter().find(non_tx) else {
                return Runner::wrapping(
                    true,
                    " (Flyway runs this file in a transaction: it does not take this statement for a non-transactional one; set executeInTransaction=false in the script's .sql.conf)",
                );
            };
            let mut findings = Vec::new();
            if let Some(tx) = script.top_level.iter().find(|t| !non_tx(t)) {
                let what = first
                    .non_transactional
                    .as_ref()
                    .map(|n| n.what.as_str())
                    .unwrap_or("");
                findings.push((
                    "transaction-nesting",
                    first.line,
                    format!(
                        "{what} cannot run in a transaction, and this Flyway migration also holds a transactional statement (line {}): Flyway refuses a migration that mixes both unless `mixed` is enabled, and then runs all of it without a transaction, so a failure leaves it half applied; give {what} a migration of its own",
                        tx.line
                    ),
                ));
            }
            Runner {
                findings,
                ..Runner::wrapping(false, "")
            }
        }
        // dbmate and goose open a transaction (database/sql's BeginTx) before the file.
        _ => Runner::wrapping(true, ""),
    }
}

/// Lowers both directions of a migration.
fn lower(
    m: &Migration,
    settings: &Settings,
) -> (Lowered, Lowered, Option<String>, Option<Vec<String>>) {
    match m.kind {
        Kind::Alembic => {
            let text = m.up.as_ref().map(|s| s.text.as_str()).unwrap_or("");
            let mut f = alembic::lower(text);
            if let Some(a) = not_utf8(text, 1) {
                f.up.actions.push(a);
                f.up.empty = false;
            }
            (f.up, f.down, f.revision, f.down_revision)
        }
        Kind::Sql => {
            let one = |s: &super::Script| {
                let script = sql::lower(&s.text, s.first_line);
                let runner = sql_runner(m, &script, settings.pg_version);
                let mut actions = script.actions;
                actions.extend(not_utf8(&s.text, s.first_line));
                if script.irreversible {
                    actions.push(super::model::Action::new(s.first_line, Op::Irreversible));
                }
                Lowered {
                    empty: actions.is_empty(),
                    actions,
                    allows: script.allows,
                    runner_tx: runner.tx,
                    runner_implicit: runner.implicit,
                    runner_hint: runner.hint,
                    runner_findings: runner.findings,
                    missing: false,
                    line: s.first_line,
                }
            };
            let up = match &m.up {
                Some(s) => one(s),
                None => {
                    let mut l = Lowered::default();
                    l.actions.push(super::model::Action::new(
                        1,
                        Op::Unknown {
                            rule: "unknown-statement",
                            why: "a down migration without its up migration".into(),
                        },
                    ));
                    l
                }
            };
            let down = match &m.down {
                Some(s) => one(s),
                None => Lowered {
                    missing: true,
                    line: 1,
                    ..Lowered::default()
                },
            };
            (up, down, None, None)
        }
    }
}

/// The first line holding bytes that were not UTF-8, which [`super::discover`] reads as
/// U+FFFD: neither PostgreSQL (from a UTF-8 client) nor Python takes them, so the file
/// cannot run as it is, though the rest of it is still checked.
fn not_utf8(text: &str, first_line: usize) -> Option<super::model::Action> {
    let at = text.find('\u{FFFD}')?;
    Some(super::model::Action::new(
        first_line + text[..at].matches('\n').count(),
        Op::Unknown {
            rule: "parse-error",
            why: "this line holds bytes that are not valid UTF-8 (read as U+FFFD): PostgreSQL and Python refuse them; the rest of the file was checked as read".into(),
        },
    ))
}

struct Evaluated {
    findings: Vec<Raw>,
    phases: Vec<(Phase, usize, String)>,
    created: Created,
    irreversible: Option<usize>,
}

fn evaluate(
    l: &Lowered,
    side: Side,
    kind: Kind,
    settings: &Settings,
    schema: &mut Schema,
    from_up: Created,
) -> Evaluated {
    let mut e = Engine {
        settings,
        side,
        kind,
        schema,
        created: Created::default(),
        from_up,
        in_tx: l.runner_tx,
        runner_tx: l.runner_tx,
        runner_implicit: l.runner_implicit,
        runner_hint: l.runner_hint,
        explicit: Vec::new(),
        lock_timeout: false,
        lock_timeout_local: false,
        timeout_reported: false,
        not_valid: HashMap::new(),
        enum_values: Vec::new(),
        expanded: HashSet::new(),
        irreversible: None,
        findings: Vec::new(),
        phases: Vec::new(),
        anchor: None,
    };
    for (id, line, message) in &l.runner_findings {
        e.emit(id, *line, message.clone());
    }
    for a in &l.actions {
        e.action(a);
    }
    e.finish();
    Evaluated {
        findings: e.findings,
        phases: e.phases,
        created: e.created,
        irreversible: e.irreversible,
    }
}

fn phase_of(marks: &[(Phase, usize, String)]) -> (Phase, Option<PhaseReason>) {
    for p in [
        Phase::Contract,
        Phase::Unknown,
        Phase::Migrate,
        Phase::Expand,
    ] {
        if let Some((_, line, why)) = marks.iter().find(|m| m.0 == p) {
            return (
                p,
                Some(PhaseReason {
                    line: *line,
                    why: why.clone(),
                }),
            );
        }
    }
    (Phase::Expand, None)
}

/// Applies settings and suppressions; adds findings about the suppressions themselves.
fn settle(
    raw: Vec<Raw>,
    l: &Lowered,
    settings: &Settings,
    path: Option<&str>,
) -> (Vec<Finding>, Vec<Suppressed>) {
    let mut findings = Vec::new();
    let mut suppressed = Vec::new();
    let mut meta = Vec::new();
    for allow in &l.allows {
        if allow.reason.is_none() {
            meta.push((
                "suppression-without-reason",
                allow.line,
                format!(
                    "ripcord:allow {} gives no reason: it is ignored until it says `because ...`",
                    allow.rules.join(", ")
                ),
            ));
        }
        for id in &allow.rules {
            if find_rule(id).is_none() {
                meta.push((
                    "suppression-unknown-rule",
                    allow.line,
                    format!("ripcord:allow names unknown rule `{id}`"),
                ));
            }
        }
        if allow.rules.is_empty() {
            meta.push((
                "suppression-unknown-rule",
                allow.line,
                "ripcord:allow names no rule".to_string(),
            ));
        }
    }
    let all = raw
        .into_iter()
        .chain(meta.into_iter().map(|(id, line, message)| Raw {
            finding: meta_finding(id, line, message),
            anchor: None,
        }));
    for Raw {
        mut finding,
        anchor,
    } in all
    {
        if settings.disabled.contains(finding.rule) {
            continue;
        }
        if let Some(s) = settings.severity.get(finding.rule) {
            finding.severity = *s;
        }
        finding.path = path.map(str::to_string);
        let near = |l: usize| {
            l == finding.line
                || l + 1 == finding.line
                || anchor.is_some_and(|a| l == a || l + 1 == a)
        };
        let allow = l.allows.iter().find(|a| {
            a.reason.is_some() && near(a.line) && a.rules.iter().any(|r| r == finding.rule)
        });
        let is_meta = finding.rule.starts_with("suppression-");
        match allow {
            Some(a) if !is_meta => suppressed.push(Suppressed {
                finding,
                reason: a.reason.clone().unwrap_or_default(),
            }),
            _ => findings.push(finding),
        }
    }
    findings.sort_by(|a, b| a.line.cmp(&b.line).then(a.rule.cmp(b.rule)));
    suppressed.sort_by_key(|a| a.finding.line);
    (findings, suppressed)
}

pub(crate) fn check_migration(
    m: &Migration,
    settings: &Settings,
    schema: &mut Schema,
) -> FileReport {
    let (up_l, down_l, revision, down_revision) = lower(m, settings);
    let up = evaluate(
        &up_l,
        Side::Up,
        m.kind,
        settings,
        schema,
        Created::default(),
    );
    // The downgrade is judged against the schema the upgrade left. The engine only
    // records schema facts on the upgrade side, so later migrations never see the
    // downgrade (and no per-migration copy of the schema is needed).
    let down = evaluate(
        &down_l,
        Side::Down,
        m.kind,
        settings,
        schema,
        up.created.clone(),
    );
    let (phase, phase_reason) = phase_of(&up.phases);

    // What a downgrade would have to undo: not harmless additions, and not VALIDATE,
    // VACUUM or REINDEX, which leave nothing the old code could trip on.
    let up_did_something = up_l.actions.iter().any(|a| {
        !undoes_nothing(&a.op)
            && !matches!(
                a.op,
                Op::Benign { .. }
                    | Op::CreateOther { .. }
                    | Op::ValidateConstraint { .. }
                    | Op::Vacuum { .. }
                    | Op::Reindex { .. }
            )
    });
    // A downgrade of only SELECT 1, SET and transaction markers undoes nothing.
    let down_empty = down_l.empty || down_l.actions.iter().all(|a| undoes_nothing(&a.op));
    let mut down_raw = down.findings;
    let state = if down_l.missing {
        if up_did_something {
            down_raw.push(Raw {
                finding: meta_finding("downgrade-missing", down_l.line.max(1), match m.layout {
                    Layout::Alembic => "no downgrade() function: a rollback of this revision cannot run".to_string(),
                    Layout::Plain => "no down migration: this file has no convention ripcord knows for one (use a paired layout or dbmate/goose sections)".to_string(),
                    _ => "no down migration file next to this one: a rollback cannot run".to_string(),
                }),
                anchor: None,
            });
        }
        DownState::Missing
    } else if let Some(line) = down.irreversible {
        down_raw.push(Raw {
            finding: meta_finding(
                "downgrade-irreversible",
                line,
                "the downgrade declares the migration irreversible".to_string(),
            ),
            anchor: None,
        });
        DownState::Missing
    } else if down_empty && up_did_something {
        down_raw.push(Raw {
            finding: meta_finding("downgrade-empty", down_l.line.max(1), format!("the downgrade does nothing{} while the upgrade changes the schema: a rollback would leave the new schema in place", if down_l.empty { "" } else { " (it only runs statements that change nothing, such as SELECT or SET)" })),
            anchor: None,
        });
        DownState::Empty
    } else {
        // How the downgrade runs (a lock wait, a retry after a failure) is not what
        // it does to the schema: those findings do not decide its state.
        let has = |r: Risk| {
            down_raw.iter().any(|f| {
                f.finding.risk.contains(&r)
                    && !matches!(f.finding.rule, "missing-lock-timeout" | "not-idempotent")
            })
        };
        if has(Risk::Fails) {
            DownState::Fails
        } else if has(Risk::DataLoss) {
            DownState::DataLoss
        } else if has(Risk::Unknown) {
            DownState::Unknown
        } else {
            DownState::Ok
        }
    };

    let down_path = m
        .down
        .as_ref()
        .filter(|d| d.path != m.path)
        .map(|d| d.path.clone());
    let (up_findings, up_suppressed) = settle(up.findings, &up_l, settings, None);
    let (down_findings, down_suppressed) =
        settle(down_raw, &down_l, settings, down_path.as_deref());
    FileReport {
        path: m.path.clone(),
        kind: m.kind,
        layout: m.layout,
        phase,
        phase_reason,
        revision,
        down_revision,
        upgrade: UpReport {
            findings: up_findings,
            suppressed: up_suppressed,
        },
        downgrade: DownReport {
            state,
            path: down_path,
            findings: down_findings,
            suppressed: down_suppressed,
        },
    }
}

/// Whether an operation leaves the schema and the data as they were.
fn undoes_nothing(op: &Op) -> bool {
    matches!(
        op,
        Op::Inert { .. }
            | Op::SetTimeout { .. }
            | Op::Begin
            | Op::Commit
            | Op::Rollback
            | Op::AutocommitStart
            | Op::AutocommitEnd
    )
}

fn meta_finding(id: &'static str, line: usize, message: String) -> Finding {
    let r = find_rule(id).unwrap_or(&RULES[0]);
    Finding {
        rule: r.id,
        severity: r.severity,
        line,
        risk: r.risk.to_vec(),
        message,
        fix: r.fix.to_string(),
        path: None,
    }
}
