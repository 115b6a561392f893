//! The transaction a statement runs in: the runner's (how each layout's runner wraps a
//! file), explicit BEGIN/COMMIT, Alembic's `autocommit_block()`, and the rules that
//! depend on it: nesting, lock_timeout, enum values added in a transaction.

use super::Engine;
use crate::migrate::model::{Action, Op};
use crate::migrate::{Kind, Layout, Migration, Phase, Timeout, sql};

impl Engine<'_> {
    /// A statement that uses an enum value added earlier in the same transaction, which
    /// PostgreSQL refuses.
    pub(super) fn new_enum_value_used(&mut self, a: &Action) {
        if self.in_tx
            && !self.enum_values.is_empty()
            && !matches!(a.op, Op::EnumAddValue { .. })
            && let Some(v) = a.strings.iter().find(|s| self.enum_values.contains(s))
        {
            self.emit(
                "enum-add-value-in-transaction",
                a.line,
                format!("uses enum value '{v}' added earlier in the same transaction: PostgreSQL refuses with \"unsafe use of new value\""),
            );
        }
    }

    /// Transaction control (BEGIN, COMMIT, ROLLBACK, Alembic's autocommit block),
    /// lock_timeout, and enum values, which a transaction may not use once added.
    pub(super) fn transaction_action(&mut self, line: usize, op: &Op, pg: u32) {
        match op {
            Op::SetTimeout {
                lock,
                local,
                millis,
            } if !local || self.in_tx => {
                let (name, expect) = if *lock {
                    ("lock_timeout", self.settings.lock_timeout)
                } else {
                    ("statement_timeout", self.settings.statement_timeout)
                };
                if let (Timeout::AtMost(max), Some(ms)) = (expect, millis)
                    && *ms > max
                {
                    self.emit("timeout-above-limit", line, format!("sets {name} to {ms}ms, above the {max}ms the settings allow: a statement that queues or runs that long holds every query on its table behind it"));
                }
                // 0 (or DEFAULT) turns the timeout off again.
                let on = *millis != Some(0);
                if *lock {
                    self.lock_timeout = on;
                    self.lock_timeout_local = *local;
                } else {
                    self.statement_timeout = on;
                    self.statement_timeout_local = *local;
                }
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
                let word = if matches!(op, Op::Commit) {
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
            // The operations above whose condition does not hold (`action` hands this
            // method no others) change nothing.
            _ => {}
        }
    }

    pub(super) fn reset_tx_state(&mut self) {
        self.not_valid.clear();
        self.enum_values.clear();
        if self.lock_timeout_local {
            self.lock_timeout = false;
            self.lock_timeout_local = false;
        }
        if self.statement_timeout_local {
            self.statement_timeout = false;
            self.statement_timeout_local = false;
        }
    }

    /// At the end of the file: a BEGIN left open.
    pub(super) fn finish(&mut self) {
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

    pub(super) fn tx_hint(&self) -> &'static str {
        if self.kind == Kind::Alembic {
            " (Alembic runs upgrade() in a transaction; wrap it in `with op.get_context().autocommit_block():`)"
        } else if self.kind == Kind::Django {
            " (Django runs a migration in a transaction; set `atomic = False` on it)"
        } else if self.kind == Kind::Rails {
            " (Rails runs a migration in a transaction; add `disable_ddl_transaction!` to the class)"
        } else if self.explicit.is_empty() && !self.runner_hint.is_empty() {
            self.runner_hint
        } else if self.explicit.is_empty() {
            " (the migration runner wraps this file in a transaction; mark it non-transactional)"
        } else {
            " (an explicit BEGIN is open)"
        }
    }
}

/// How the runner runs one SQL script.
pub(super) struct Runner {
    /// It runs in a transaction.
    pub(super) tx: bool,
    /// That transaction is PostgreSQL's implicit one for a query string of several
    /// statements (see [`Lowered::runner_implicit`]).
    pub(super) implicit: bool,
    /// Why a statement that refuses a transaction still gets one; empty for the
    /// general hint.
    pub(super) hint: &'static str,
    /// Findings about the runner's choice.
    pub(super) findings: Vec<(&'static str, usize, String)>,
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
pub(super) fn sql_runner(m: &Migration, script: &sql::SqlScript, pg: u32) -> Runner {
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
