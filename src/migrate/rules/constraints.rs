//! The rules for constraints: which ones scan or lock a table when added, NOT VALID and
//! the VALIDATE that must come in a later transaction, and the constraints of domains.

use super::{Engine, Side, norm};
use crate::migrate::Phase;
use crate::migrate::model::{ConKind, Op};

impl Engine<'_> {
    /// Constraints, NOT VALID and its VALIDATE, and the constraints of domains.
    pub(super) fn constraint_action(&mut self, line: usize, op: &Op) {
        match op {
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
            Op::DropConstraint { table, name } if self.existing(table) => {
                self.lock_taken(line, &format!("ALTER TABLE {table}"));
                self.mark(
                    Phase::Expand,
                    line,
                    format!("drops constraint {name} on {table}"),
                );
            }
            Op::CreateDomain {
                name,
                has_constraint,
            } if *has_constraint => {
                self.emit("domain-with-constraint", line, format!("domain {name} has a constraint: changing it later re-checks every column of the domain under lock, and the check is invisible on the tables"));
            }
            Op::AlterDomainAddConstraint { name, not_valid } if !not_valid => {
                // The check takes SHARE on every table with a column of the domain.
                self.lock_taken(line, &format!("ALTER DOMAIN {name}"));
                self.emit("domain-with-constraint", line, format!("adds a constraint to domain {name}: scans every column of that domain in every table"));
            }
            // The operations above whose condition does not hold (`action` hands this
            // method no others) change nothing.
            _ => {}
        }
    }
}
