//! Every rule's fixed facts (id, severity, risks, fix), in the order of
//! MIGRATION-RULES.md, then ripcord's own; the message is written where a rule fires.

use crate::migrate::{Finding, Risk, Severity};

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
        "CREATE INDEX CONCURRENTLY, outside a transaction (Alembic: postgresql_concurrently=True inside autocommit_block(); Django: AddIndexConcurrently in a migration with atomic = False; Rails: algorithm: :concurrently with disable_ddl_transaction!)",
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
        "missing-statement-timeout",
        Warning,
        &[L],
        "start with SET statement_timeout (and a lock_timeout) so a scan or rewrite under a lock fails instead of holding the table",
    ),
    rule(
        "timeout-above-limit",
        Warning,
        &[L],
        "lower the timeout to the limit in [service.NAME.migrations] (or raise the limit, if this migration needs longer)",
    ),
    rule(
        "dynamic-sql",
        Warning,
        &[U],
        "build the SQL from string literals or module constants ripcord can read, or review it by hand and say why it is safe with a ripcord:allow comment",
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

pub(super) fn find_rule(id: &str) -> Option<&'static Rule> {
    RULES.iter().find(|r| r.id == id)
}

/// A finding about the migration as a whole or about a suppression, from its rule.
pub(super) fn meta_finding(id: &'static str, line: usize, message: String) -> Finding {
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
