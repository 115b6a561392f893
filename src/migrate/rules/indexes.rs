//! The rules for indexes and the maintenance that rebuilds tables: CREATE and DROP INDEX
//! (CONCURRENTLY or not), REINDEX, VACUUM FULL and CLUSTER.

use super::{Engine, Side, norm};
use crate::migrate::Phase;
use crate::migrate::model::Op;

impl Engine<'_> {
    /// Indexes and the table maintenance that rebuilds them: CREATE and DROP INDEX,
    /// REINDEX, VACUUM and CLUSTER.
    pub(super) fn index_action(&mut self, line: usize, op: &Op, pg: u32) {
        match op {
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
            // `action` hands this method no other operations.
            _ => {}
        }
    }
}
