//! The rules for columns: adding (with its defaults, generated values and inline
//! constraints), dropping, renaming, changing the type, NOT NULL and defaults.

use super::{Engine, Side, norm};
use crate::migrate::model::{AddColumn, DefaultKind, Op};
use crate::migrate::types::{Change, type_change};
use crate::migrate::{Phase, Severity};

impl Engine<'_> {
    /// Columns: renames, drops, type changes, NOT NULL and defaults (ADD COLUMN is
    /// [`Engine::add_column`]).
    pub(super) fn column_action(&mut self, line: usize, op: &Op, pg: u32) {
        match op {
            Op::RenameColumn { table, from, to } if self.existing(table) => {
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
                    Change::Unknown { hint, widening } => {
                        let message = format!(
                            "changes {table}.{column} to {to}: {hint}; ripcord does not know its current type (give existing_type=, or let an earlier migration in the run create it)"
                        );
                        if widening {
                            // Usually a widening (free, catalog only), and a rewrite only
                            // if the column is of another family or longer today: a
                            // question for the reviewer, not a verdict, so a warning and
                            // an unknown phase rather than an error and a contract.
                            self.emit_as("change-column-type", Severity::Warning, line, message);
                            self.mark(
                                Phase::Unknown,
                                line,
                                format!("changes the type of {table}.{column} (its current type is unknown)"),
                            );
                        } else {
                            self.emit("change-column-type", line, message);
                            self.mark(
                                Phase::Contract,
                                line,
                                format!("changes the type of {table}.{column}"),
                            );
                        }
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
                if self.side == Side::Up {
                    self.schema.not_null.insert((norm(table), norm(column)));
                }
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
            Op::NotNullColumns { table, columns } if self.side == Side::Up => {
                for c in columns {
                    self.schema.not_null.insert((norm(table), norm(c)));
                }
            }
            Op::RequireNotNull { table, column } => {
                if self.schema.not_null.contains(&(norm(table), norm(column))) {
                    return;
                }
                self.column_action(
                    line,
                    &Op::SetNotNull {
                        table: table.clone(),
                        column: column.clone(),
                    },
                    pg,
                );
            }
            Op::DropNotNull { table, column } => {
                if self.side == Side::Up {
                    self.schema.not_null.remove(&(norm(table), norm(column)));
                }
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
            Op::ChangeDefault { table } if self.existing(table) => {
                self.lock_taken(line, &format!("ALTER TABLE {table}"));
            }
            // The operations above whose condition does not hold (`action` hands this
            // method no others) change nothing.
            _ => {}
        }
    }

    pub(super) fn add_column(&mut self, line: usize, add: &AddColumn, pg: u32) {
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
        if self.side == Side::Up && add.not_null {
            self.schema.not_null.insert(key.clone());
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
        if add.not_null && add.default.is_some() && add.orm_default_only && self.side == Side::Up {
            // Django: the default fills the existing rows, then is dropped from the column.
            contract = true;
            self.emit("orm-side-default", line, format!("column {table}.{column} is NOT NULL with a default only the ORM keeps: the existing rows are filled, then the database default is dropped, so inserts from the old code (which does not set the column) fail"));
        }
        match &add.default {
            Some(DefaultKind::Volatile(f)) => self.emit("volatile-default", line, format!("adds {table}.{column} with volatile default {f}: every row gets its own value, so the table is rewritten under ACCESS EXCLUSIVE")),
            Some(DefaultKind::Unresolved(f)) => self.emit_as("volatile-default", Severity::Warning, line, format!("adds {table}.{column} with default {f}, a name ripcord cannot resolve: a Python value is one constant (no rewrite), but SQL calling a volatile function rewrites the table under ACCESS EXCLUSIVE")),
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
}
