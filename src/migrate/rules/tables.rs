//! The rules for tables and other whole objects: creating, dropping and renaming them,
//! emptying or rewriting their rows, partitions, Alembic's batch recreate.

use super::{Engine, Side, norm};
use crate::migrate::Phase;
use crate::migrate::model::Op;

impl Engine<'_> {
    /// Tables, schemas and other whole objects: creates, drops, renames, TRUNCATE and
    /// DML, partitions, Alembic's batch recreate.
    pub(super) fn table_action(&mut self, line: usize, op: &Op, pg: u32) {
        match op {
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
            Op::Dml { verb, table } if self.existing(table) => {
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
            Op::OrmWrite { call, model } => {
                let what = model
                    .as_ref()
                    .map(|m| format!("rows of model {m}"))
                    .unwrap_or_else(|| "rows".to_string());
                self.emit("backfill-in-migration", line, format!("{call} writes {what} through the ORM inside a schema migration: which rows change is known only at run time, the model is the application's code of today rather than the schema at this revision, and the rows stay locked until the migration commits"));
                self.mark(
                    Phase::Migrate,
                    line,
                    format!("rewrites {what} through the ORM"),
                );
            }
            Op::RenameTable { table, to } if self.existing(table) => {
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
            Op::BatchRecreate { table } if self.existing(table) => {
                self.lock_taken(line, &format!("batch_alter_table({table})"));
                self.emit("batch-recreate-table", line, format!("batch_alter_table({table}, recreate=\"always\") copies the whole table into a new one and drops the old: writes in between are lost or blocked"));
            }
            // The operations above whose condition does not hold (`action` hands this
            // method no others) change nothing.
            _ => {}
        }
    }
}
