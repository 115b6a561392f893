//! Tests for the input kinds real projects write beyond plain `op.*` calls and plain
//! SQL: Python values as `server_default`, type changes whose current type is unknown,
//! Alembic batch mode, raw SQL run from Python (static, assembled from constants, or
//! built at run time), ORM data migrations and PL/pgSQL `DO` blocks. Every migration here
//! was written for these tests.

use std::collections::BTreeSet;

use super::*;

fn report(path: &str, text: &str) -> FileReport {
    let files = vec![SourceFile {
        path: path.to_string(),
        text: text.to_string(),
    }];
    let mut r = check(&plan(files), &Settings::default());
    assert_eq!(r.files.len(), 1, "one migration for {path}");
    r.files.remove(0)
}

/// The upgrade's findings as (line, rule, severity), without `missing-lock-timeout`
/// (which nearly every example triggers and which has its own tests).
fn up(path: &str, text: &str) -> BTreeSet<(usize, &'static str, Severity)> {
    report(path, text)
        .upgrade
        .findings
        .iter()
        .filter(|f| f.rule != "missing-lock-timeout")
        .map(|f| (f.line, f.rule, f.severity))
        .collect()
}

/// An Alembic revision whose `upgrade()` body is `body` (indented by the caller) and
/// starts on line 8; the downgrade does nothing that is judged.
fn revision(body: &str) -> String {
    format!(
        "from alembic import op\nimport sqlalchemy as sa\nrevision = \"r1\"\ndown_revision = None\n\n\n\ndef upgrade():\n{body}\n\ndef downgrade():\n    raise NotImplementedError()\n"
    )
}

use Severity::{Error, Warning};

// ------------------------------------------------------------- false alarms (step 1)

#[test]
fn python_values_as_server_default_are_constants() {
    let header = "import enum\nfrom alembic import op\nimport sqlalchemy as sa\nfrom app.defaults import PLAN\n\n\nclass Status(enum.Enum):\n    active = \"active\"\n\nDEFAULT_PLAN = \"free\"\nLIMIT = 10\nUUID = sa.text(\"gen_random_uuid()\")\n\ndef now_sql():\n    return sa.text(\"clock_timestamp()\")\n\n";
    // (server_default expression, expected upgrade findings at line 1 of the body)
    let cases: &[(&str, &[(&str, Severity)])] = &[
        // An enum member and its value: evaluated once by Python, one literal.
        ("Status.active.value", &[]),
        ("Status.active.name", &[]),
        ("Status.active", &[]),
        // Module constants, a number and a Python call.
        ("DEFAULT_PLAN", &[]),
        ("LIMIT", &[]),
        ("str(LIMIT)", &[]),
        ("\"a\" + DEFAULT_PLAN", &[]),
        ("sa.literal(\"x\")", &[]),
        ("sa.text(\"'free'\")", &[]),
        ("sa.func.now()", &[]),
        // SQL that calls a volatile function, directly or through a name or a helper.
        (
            "sa.text(\"gen_random_uuid()\")",
            &[("volatile-default", Error)],
        ),
        ("UUID", &[("volatile-default", Error)]),
        ("now_sql()", &[("volatile-default", Error)]),
        ("sa.func.random()", &[("volatile-default", Error)]),
        // An imported name cannot be read: a warning that says so, not silence.
        ("PLAN", &[("volatile-default", Warning)]),
    ];
    for (expr, want) in cases {
        let body = format!(
            "    op.add_column(\"users\", sa.Column(\"c\", sa.Text(), nullable=False, server_default={expr}))"
        );
        let text = format!(
            "{header}def upgrade():\n{body}\n\ndef downgrade():\n    op.drop_column(\"users\", \"c\")\n"
        );
        let line = header.lines().count() + 2;
        let got = up("versions/r1_x.py", &text);
        let want: BTreeSet<_> = want.iter().map(|(r, s)| (line, *r, *s)).collect();
        assert_eq!(got, want, "server_default={expr}");
    }
}

#[test]
fn a_widening_with_an_unknown_current_type_is_a_warning_and_an_unknown_phase() {
    let cases: &[(&str, Severity, Phase)] = &[
        // Free if the column is a shorter varchar today, a rewrite otherwise: a question.
        ("type_=sa.String(255)", Warning, Phase::Unknown),
        ("type_=sa.Text()", Warning, Phase::Unknown),
        ("type_=sa.Numeric(12, 2)", Warning, Phase::Unknown),
        // Not a type anything is widened to: a rewrite unless binary-coercible.
        ("type_=sa.BigInteger()", Error, Phase::Contract),
        // The current type is given: a widening is free and says nothing.
        (
            "existing_type=sa.String(100), type_=sa.String(255)",
            Error,
            Phase::Expand,
        ),
    ];
    for (args, severity, phase) in cases {
        let text = revision(&format!(
            "    op.alter_column(\"users\", \"email\", {args})"
        ));
        let r = report("versions/r1_x.py", &text);
        let got: Vec<_> = r
            .upgrade
            .findings
            .iter()
            .filter(|f| f.rule == "change-column-type")
            .map(|f| f.severity)
            .collect();
        if *phase == Phase::Expand {
            assert!(got.is_empty(), "{args}: {got:?}");
        } else {
            assert_eq!(got, vec![*severity], "{args}");
        }
        assert_eq!(r.phase, *phase, "{args}");
    }
    // The same in SQL.
    let r = report(
        "m.sql",
        "ALTER TABLE users ALTER COLUMN email TYPE varchar(255);",
    );
    let f: Vec<_> = r
        .upgrade
        .findings
        .iter()
        .filter(|f| f.rule == "change-column-type")
        .collect();
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].severity, Warning);
    // A setting still decides over the softer default.
    let settings = Settings {
        severity: [("change-column-type".to_string(), Error)]
            .into_iter()
            .collect(),
        ..Settings::default()
    };
    let files = vec![SourceFile {
        path: "m.sql".into(),
        text: "ALTER TABLE users ALTER COLUMN email TYPE text;".into(),
    }];
    let r = check(&plan(files), &settings);
    assert!(
        r.files[0]
            .upgrade
            .findings
            .iter()
            .any(|f| f.rule == "change-column-type" && f.severity == Error)
    );
}

// ------------------------------------------------------------- batch mode (step 2)

/// A revision in the style autogenerate writes for projects that also run on SQLite.
const BATCH: &str = r#""""orders: currency, customer required, reference unique

Revision ID: 7c1d
Revises: 7c1c
"""
from alembic import op
import sqlalchemy as sa

revision = "7c1d"
down_revision = "7c1c"


def upgrade():
    op.execute("SET lock_timeout = '3s'")
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.add_column(sa.Column("currency", sa.String(length=3), nullable=True))
        batch_op.add_column(sa.Column("channel", sa.String(length=10), nullable=False))
        batch_op.alter_column("customer_id", existing_type=sa.INTEGER(), nullable=False)
        batch_op.alter_column("total", existing_type=sa.Numeric(10, 2), type_=sa.Numeric(12, 2))
        batch_op.drop_column("legacy_total")
        batch_op.create_unique_constraint("uq_orders_reference", ["reference"])
        batch_op.drop_constraint("fk_orders_shop", type_="foreignkey")
        batch_op.create_foreign_key("fk_orders_customer", "customers", ["customer_id"], ["id"])
        batch_op.create_index(batch_op.f("ix_orders_currency"), ["currency"], unique=False)
        batch_op.alter_column("note", new_column_name="notes")
        batch_op.create_check_constraint("ck_orders_total", "total >= 0")

    with op.batch_alter_table(table_name="customers") as batch_op:
        batch_op.alter_column("email", existing_type=sa.String(100), type_=sa.String(50))


def downgrade():
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.drop_constraint("ck_orders_total", type_="check")
        batch_op.alter_column("notes", new_column_name="note")
        batch_op.drop_index(batch_op.f("ix_orders_currency"))
        batch_op.drop_constraint("fk_orders_customer", type_="foreignkey")
        batch_op.drop_constraint("uq_orders_reference", type_="unique")
        batch_op.add_column(sa.Column("legacy_total", sa.Numeric(10, 2), nullable=False))
        batch_op.alter_column("customer_id", existing_type=sa.INTEGER(), nullable=True)
        batch_op.drop_column("channel")
        batch_op.drop_column("currency")
"#;

#[test]
fn alembic_batch_mode_is_judged_like_op_calls() {
    let r = report("alembic/versions/7c1d_orders.py", BATCH);
    let got: BTreeSet<(usize, &str)> = r
        .upgrade
        .findings
        .iter()
        .map(|f| (f.line, f.rule))
        .collect();
    let want: BTreeSet<(usize, &str)> = [
        (17, "add-not-null-column-without-default"),
        (18, "set-not-null"),
        (20, "drop-column"),
        (20, "expand-and-contract"),
        (21, "add-unique-constraint"),
        (23, "add-foreign-key"),
        (24, "create-index-without-concurrently"),
        (25, "rename-column"),
        (25, "expand-and-contract"),
        (26, "add-check-constraint"),
        (29, "change-column-type"),
    ]
    .into_iter()
    .collect();
    assert_eq!(got, want);
    // As specific as for op.*: the table, the column and the name op.f() gives.
    let msg = |l: usize, rule: &str| {
        r.upgrade
            .findings
            .iter()
            .find(|f| f.line == l && f.rule == rule)
            .map(|f| f.message.clone())
            .unwrap_or_default()
    };
    assert!(
        msg(18, "set-not-null").contains("orders.customer_id"),
        "{}",
        msg(18, "set-not-null")
    );
    assert!(msg(20, "drop-column").contains("orders.legacy_total"));
    assert!(
        msg(24, "create-index-without-concurrently").contains("CREATE INDEX ix_orders_currency ")
            && msg(24, "create-index-without-concurrently").contains("on orders"),
        "{}",
        msg(24, "create-index-without-concurrently")
    );
    assert!(msg(25, "rename-column").contains("orders.note to notes"));
    // The table given by keyword, and a narrowing with its current type known.
    assert!(
        msg(29, "change-column-type").contains("customers.email from varchar(100) to varchar(50)"),
        "{}",
        msg(29, "change-column-type")
    );
    assert_eq!(r.phase, Phase::Contract);

    let down: BTreeSet<(usize, &str)> = r
        .downgrade
        .findings
        .iter()
        .map(|f| (f.line, f.rule))
        .filter(|(_, rule)| *rule != "missing-lock-timeout")
        .collect();
    let want_down: BTreeSet<(usize, &str)> = [
        (36, "drop-index-without-concurrently"),
        // The re-added NOT NULL column has no default: the downgrade fails on a table
        // with rows.
        (39, "downgrade-fails"),
        // What the upgrade added and the new code wrote is lost.
        (41, "downgrade-data-loss"),
        (42, "downgrade-data-loss"),
        (42, "implicit-drop"),
    ]
    .into_iter()
    .collect();
    assert_eq!(down, want_down);
    assert_eq!(r.downgrade.state, DownState::Fails);
}

// ------------------------------------------------------------- raw SQL from Python (step 3)

const RAW: &str = r#""""invoices: cents, paid_at; sessions purged

Revision ID: 91aa
Revises: 90ff
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy import text
from sqlalchemy.orm import Session

revision = "91aa"
down_revision = "90ff"

SCHEMA = "billing"
TABLE = f"{SCHEMA}.invoices"
ADD_PAID = sa.text("ALTER TABLE billing.invoices ADD COLUMN paid_at timestamptz")


def upgrade():
    op.execute("SET lock_timeout = '2s'")
    conn = op.get_bind()
    conn.execute(ADD_PAID)
    conn.execute(sa.text(f"ALTER TABLE {TABLE} ADD COLUMN amount_cents bigint"))
    rows = conn.execute(text("SELECT id, amount FROM billing.invoices")).fetchall()
    for row in rows:
        conn.execute(
            text("UPDATE billing.invoices SET amount_cents = :c WHERE id = :id"),
            {"c": int(row.amount * 100), "id": row.id},
        )
    bind = op.get_bind()
    bind.execute("DELETE FROM %s.sessions WHERE expired" % SCHEMA)
    op.execute("ALTER TABLE " + TABLE + " DROP COLUMN amount")
    op.execute("ALTER TABLE {}.invoices RENAME COLUMN ref TO reference".format(SCHEMA))
    for column in ("legacy_a", "legacy_b"):
        op.execute(f"ALTER TABLE {TABLE} DROP COLUMN {column}")
    for name in tenant_schemas(conn):
        op.execute(f"ALTER TABLE {name}.invoices ADD COLUMN note text")
    op.execute("ALTER TABLE billing.invoices ADD COLUMN %s text" % column_name())
    session = Session(bind=conn)
    for invoice in session.query(Invoice).filter(Invoice.currency.is_(None)):
        invoice.currency = "EUR"
    session.commit()


def downgrade():
    op.execute(sa.text("ALTER TABLE billing.invoices DROP COLUMN paid_at"))
"#;

#[test]
fn raw_sql_from_python_is_read_like_plain_sql() {
    let r = report("alembic/versions/91aa_invoices.py", RAW);
    let got: BTreeSet<(usize, &str)> = r
        .upgrade
        .findings
        .iter()
        .map(|f| (f.line, f.rule))
        .collect();
    let want: BTreeSet<(usize, &str)> = [
        // A row-by-row rewrite in a loop: an UPDATE of an existing table.
        (27, "backfill-in-migration"),
        // `%` formatting with a module constant.
        (31, "backfill-in-migration"),
        // `+` with a constant built from another (an f-string at module level).
        (32, "drop-column"),
        (32, "expand-and-contract"),
        // `.format()`.
        (33, "rename-column"),
        (33, "expand-and-contract"),
        // A loop over literals: each value read.
        (35, "drop-column"),
        (35, "expand-and-contract"),
        // A loop over what a function returns, and `%` with a call: unreadable, said so.
        (37, "dynamic-sql"),
        (38, "dynamic-sql"),
        // The ORM data migration: one finding at the session's first write.
        (42, "backfill-in-migration"),
    ]
    .into_iter()
    .collect();
    assert_eq!(got, want);
    let msgs: Vec<(usize, &str)> = r
        .upgrade
        .findings
        .iter()
        .map(|f| (f.line, f.message.as_str()))
        .collect();
    let msg = |l: usize, rule: &str| {
        r.upgrade
            .findings
            .iter()
            .filter(|f| f.line == l && f.rule == rule)
            .map(|f| f.message.clone())
            .collect::<Vec<_>>()
            .join(" | ")
    };
    assert!(
        msg(27, "backfill-in-migration").contains("UPDATE on existing table billing.invoices"),
        "{msgs:?}"
    );
    assert!(msg(31, "backfill-in-migration").contains("DELETE on existing table billing.sessions"));
    assert!(msg(32, "drop-column").contains("billing.invoices.amount"));
    assert!(msg(33, "rename-column").contains("ref to reference"));
    let loop_drops = msg(35, "drop-column");
    assert!(
        loop_drops.contains("legacy_a") && loop_drops.contains("legacy_b"),
        "{loop_drops}"
    );
    assert!(
        msg(37, "dynamic-sql").contains("op.execute()")
            && msg(37, "dynamic-sql").contains("{name}"),
        "{}",
        msg(37, "dynamic-sql")
    );
    assert!(
        msg(38, "dynamic-sql").contains("column_name()"),
        "{}",
        msg(38, "dynamic-sql")
    );
    assert!(
        msg(42, "backfill-in-migration").contains("session.commit()")
            && msg(42, "backfill-in-migration").contains("Invoice")
    );
    // The two ADD COLUMNs (one through a module-level sa.text, one through an f-string
    // of constants) are read: the downgrade's drop of paid_at is data written since.
    assert_eq!(r.downgrade.state, DownState::DataLoss);
    // Drops outrank the unreadable statements: the phase is contract, not unknown.
    assert_eq!(r.phase, Phase::Contract);
}

#[test]
fn dynamic_sql_is_never_silent_and_names_its_call() {
    // (statement in upgrade(), the part the message must name)
    let cases: &[(&str, &str)] = &[
        (
            "    bind = op.get_bind()\n    bind.execute(f\"DELETE FROM {table_for(bind)}\")",
            "bind.execute()",
        ),
        (
            "    conn = op.get_bind()\n    conn.execute(sa.text(\"UPDATE t SET a = 1 WHERE \" + condition))",
            "`condition`",
        ),
        ("    op.execute(\"DROP TABLE %r\" % (\"t\",))", "conversion"),
        (
            "    op.execute(\"DROP TABLE {:>10}\".format(\"t\"))",
            "{:>10}",
        ),
        ("    op.execute(f\"DROP TABLE {'t'!r}\")", "!r"),
        ("    op.execute(build_statement())", "build_statement()"),
    ];
    for (body, part) in cases {
        let r = report("versions/r1_x.py", &revision(body));
        let f: Vec<_> = r
            .upgrade
            .findings
            .iter()
            .filter(|f| f.rule == "dynamic-sql")
            .collect();
        assert_eq!(f.len(), 1, "{body}: {:?}", r.upgrade.findings);
        assert!(f[0].message.contains(part), "{body}: {}", f[0].message);
        assert_eq!(r.phase, Phase::Unknown, "{body}");
    }
    // A name reassigned from something unreadable is no longer the old constant.
    let body = "    sql = \"SELECT 1\"\n    sql = make_sql()\n    op.execute(sql)";
    let r = report("versions/r1_x.py", &revision(body));
    assert!(
        r.upgrade.findings.iter().any(|f| f.rule == "dynamic-sql"),
        "{:?}",
        r.upgrade.findings
    );
}

// ------------------------------------------------------------- PL/pgSQL DO blocks (step 4)

/// A golang-migrate file rendered from a Go template, as operators of multi-tenant
/// services write them: every change guarded so a rerun is harmless.
const DO_BLOCKS: &str = r#"SET lock_timeout = '2s';

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM information_schema.columns
               WHERE table_schema = '{{ index .Options "Namespace" }}'
                 AND table_name = 'jobs' AND column_name = 'owner') THEN
        ALTER TABLE {{ index .Options "Namespace" }}.jobs RENAME COLUMN owner TO owner_id;
    ELSIF NOT EXISTS (SELECT 1 FROM information_schema.columns
               WHERE table_name = 'jobs' AND column_name = 'owner_id') THEN
        ALTER TABLE jobs ADD COLUMN owner_id bigint NOT NULL;
    ELSE
        RAISE NOTICE 'owner_id already there';
    END IF;
END
$$;

DO $migration$
DECLARE
    n integer;
BEGIN
    SELECT count(*) INTO n FROM jobs WHERE queue_id IS NULL;
    n := n + 1;
    PERFORM pg_sleep(0);
    IF NOT EXISTS (SELECT 1 FROM information_schema.table_constraints
                   WHERE constraint_name = 'jobs_pkey' AND table_name = 'jobs') THEN
        ALTER TABLE jobs ADD CONSTRAINT jobs_pkey PRIMARY KEY (id);
    END IF;
    <<fk>>
    BEGIN
        ALTER TABLE jobs ADD CONSTRAINT jobs_queue_fk FOREIGN KEY (queue_id) REFERENCES queues (id);
    EXCEPTION WHEN duplicate_object THEN
        ALTER TABLE jobs DROP COLUMN never_runs;
    END;
    CASE current_setting('server_version_num')::int >= 120000
        WHEN true THEN
            EXECUTE 'ALTER TABLE jobs ALTER COLUMN queue_id SET NOT NULL';
        ELSE
            EXECUTE format('ALTER TABLE %I DROP COLUMN %I', 'jobs', 'legacy');
    END CASE;
END $migration$;

DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT tablename FROM pg_tables WHERE schemaname = 'public' LOOP
        EXECUTE 'ALTER TABLE ' || quote_ident(r.tablename) || ' DROP COLUMN IF EXISTS tmp';
    END LOOP;
    WHILE false LOOP
        UPDATE jobs SET state = 'queued' WHERE state IS NULL;
    END LOOP;
END $$;
"#;

#[test]
fn plpgsql_do_blocks_are_read_through_their_control_flow() {
    let got = up("m/000042_jobs.up.sql", DO_BLOCKS);
    let rules: BTreeSet<(usize, &str)> = got.iter().map(|(l, r, _)| (*l, *r)).collect();
    let want: BTreeSet<(usize, &str)> = [
        // IF EXISTS (... information_schema ...) THEN rename, with template placeholders.
        (8, "rename-column"),
        // ELSIF ... THEN: every branch may run.
        (11, "add-not-null-column-without-default"),
        // After DECLARE, SELECT INTO, an assignment and PERFORM: the guarded primary key.
        (27, "add-primary-key"),
        // A labelled nested block: its statement counts, its handler does not.
        (31, "add-foreign-key"),
        // CASE ... WHEN ... THEN EXECUTE of a literal, ELSE EXECUTE of format() literals.
        (37, "set-not-null"),
        (39, "drop-column"),
        (39, "expand-and-contract"),
        // EXECUTE of SQL built from a loop variable: said, not skipped.
        (48, "dynamic-sql"),
        // The body of a WHILE loop.
        (51, "backfill-in-migration"),
    ]
    .into_iter()
    .collect();
    assert_eq!(rules, want);
    let r = report("m/000042_jobs.up.sql", DO_BLOCKS);
    let msg = |l: usize| {
        r.upgrade
            .findings
            .iter()
            .filter(|f| f.line == l)
            .map(|f| f.message.clone())
            .collect::<Vec<_>>()
            .join(" | ")
    };
    assert!(msg(8).contains("jobs.owner to owner_id"), "{}", msg(8));
    assert!(msg(27).contains("primary key on jobs"), "{}", msg(27));
    assert!(msg(39).contains("jobs.legacy"), "{}", msg(39));
    assert!(msg(48).contains("quote_ident"), "{}", msg(48));
    // Nothing in the file is unreadable except the one dynamic EXECUTE.
    assert!(
        r.upgrade
            .findings
            .iter()
            .all(|f| f.rule != "unknown-statement"),
        "{:?}",
        r.upgrade.findings
    );
}

#[test]
fn plpgsql_statements_that_change_nothing_are_not_findings() {
    // A DO block of only checks and notices is not "a DO block ripcord cannot read".
    let text = "DO $$\nDECLARE\n  n int;\nBEGIN\n  SELECT count(*) INTO n FROM jobs;\n  IF n > 0 THEN\n    RAISE NOTICE 'jobs: %', n;\n  END IF;\n  n := 0;\n  RETURN;\nEND $$;";
    let r = report("m.sql", text);
    assert!(r.upgrade.findings.is_empty(), "{:?}", r.upgrade.findings);
    assert_eq!(r.phase, Phase::Expand);
    // An IF whose THEN is missing is reported, not skipped.
    let r = report(
        "m.sql",
        "DO $$ BEGIN IF EXISTS (SELECT 1) ALTER TABLE jobs DROP COLUMN a; END IF; END $$;",
    );
    assert!(
        r.upgrade
            .findings
            .iter()
            .any(|f| f.rule == "unknown-statement" && f.message.contains("THEN")),
        "{:?}",
        r.upgrade.findings
    );
    // Dynamic EXECUTE through a variable.
    let r = report(
        "m.sql",
        "DO $$ DECLARE s text := 'DROP TABLE jobs'; BEGIN EXECUTE s; END $$;",
    );
    assert!(
        r.upgrade.findings.iter().any(|f| f.rule == "dynamic-sql"),
        "{:?}",
        r.upgrade.findings
    );
}

// ------------------------------------------------------------- timeout settings (step 5)

fn with(lock: Timeout, statement: Timeout) -> Settings {
    Settings {
        lock_timeout: lock,
        statement_timeout: statement,
        ..Settings::default()
    }
}

fn rules_with(settings: &Settings, path: &str, text: &str) -> Vec<(usize, &'static str)> {
    let files = vec![SourceFile {
        path: path.to_string(),
        text: text.to_string(),
    }];
    check(&plan(files), settings).files[0]
        .upgrade
        .findings
        .iter()
        .map(|f| (f.line, f.rule))
        .collect()
}

/// Rules that only fire under some settings: (rule, settings, bad, good).
pub(super) fn settings_cases() -> Vec<(&'static str, Settings, &'static str, &'static str)> {
    let both = with(Timeout::Required, Timeout::Required);
    let at_most = with(Timeout::AtMost(5000), Timeout::AtMost(60_000));
    vec![
        (
            "missing-statement-timeout",
            both.clone(),
            "SET lock_timeout = '2s';\nALTER TABLE users ALTER COLUMN email SET NOT NULL;",
            "SET lock_timeout = '2s';\nSET statement_timeout = '30s';\nALTER TABLE users ALTER COLUMN email SET NOT NULL;",
        ),
        (
            "timeout-above-limit",
            at_most,
            "SET lock_timeout = '10s';\nSET statement_timeout = '30s';\nALTER TABLE users DROP COLUMN x;",
            "SET lock_timeout = '5s';\nSET statement_timeout = '1min';\nALTER TABLE users DROP COLUMN x;",
        ),
    ]
}

#[test]
fn settings_cases_bad_fires_and_good_does_not() {
    for (rule, settings, bad, good) in settings_cases() {
        let fired = |t: &str| {
            rules_with(&settings, "m.sql", t)
                .iter()
                .any(|(_, r)| *r == rule)
        };
        assert!(fired(bad), "{rule}: bad did not fire:\n{bad}");
        assert!(!fired(good), "{rule}: good fired:\n{good}");
    }
}

#[test]
fn statement_timeout_is_checked_like_lock_timeout() {
    let both = with(Timeout::Required, Timeout::Required);
    let timeouts = |s: &Settings, t: &str| -> Vec<(usize, &'static str)> {
        rules_with(s, "m.sql", t)
            .into_iter()
            .filter(|(_, r)| r.starts_with("missing-") && r.ends_with("-timeout"))
            .collect()
    };
    // Reported once, at the first statement that queues for a blocking lock on an
    // existing table, not at an earlier harmless one or a table made in the migration.
    let text = "SELECT 1;\nCREATE TABLE fresh (id int);\nALTER TABLE fresh ADD COLUMN a int;\nALTER TABLE users ADD COLUMN b int;\nALTER TABLE users DROP COLUMN c;";
    assert_eq!(
        timeouts(&both, text),
        vec![
            (4, "missing-lock-timeout"),
            (4, "missing-statement-timeout")
        ]
    );
    // 0 and DEFAULT turn a timeout off again.
    let text =
        "SET lock_timeout = '2s';\nSET statement_timeout = 0;\nALTER TABLE users ADD COLUMN b int;";
    assert_eq!(
        timeouts(&both, text),
        vec![(3, "missing-statement-timeout")]
    );
    let text = "SET statement_timeout = '1s';\nSET lock_timeout TO DEFAULT;\nALTER TABLE users ADD COLUMN b int;";
    assert_eq!(timeouts(&both, text), vec![(3, "missing-lock-timeout")]);
    // SET LOCAL ends with the transaction it is in (an explicit one here).
    let text = "-- no-transaction\nBEGIN;\nSET LOCAL lock_timeout = '2s';\nSET LOCAL statement_timeout = '2s';\nCOMMIT;\nALTER TABLE users ADD COLUMN b int;";
    assert_eq!(
        timeouts(&both, text),
        vec![
            (6, "missing-lock-timeout"),
            (6, "missing-statement-timeout")
        ]
    );
    // Off: not checked (the default for statement_timeout).
    let off = with(Timeout::Off, Timeout::Off);
    assert!(timeouts(&off, "ALTER TABLE users ADD COLUMN b int;").is_empty());
    assert_eq!(
        timeouts(&Settings::default(), "ALTER TABLE users ADD COLUMN b int;"),
        vec![(1, "missing-lock-timeout")]
    );
    // From Alembic, through op.execute.
    let py = revision(
        "    op.execute(\"SET lock_timeout = '2s'\")\n    op.drop_column(\"users\", \"x\")",
    );
    assert_eq!(
        rules_with(&both, "versions/r1_x.py", &py)
            .into_iter()
            .filter(|(_, r)| r.ends_with("-timeout"))
            .collect::<Vec<_>>(),
        vec![(10, "missing-statement-timeout")]
    );
}

#[test]
fn timeout_values_are_read_as_postgresql_reads_them() {
    let limit = with(Timeout::AtMost(2000), Timeout::Off);
    let over = |v: &str| {
        rules_with(
            &limit,
            "m.sql",
            &format!("SET lock_timeout = {v};\nALTER TABLE users ADD COLUMN b int;"),
        )
        .iter()
        .any(|(_, r)| *r == "timeout-above-limit")
    };
    // A bare number is milliseconds; strings carry units.
    assert!(!over("2000"));
    assert!(over("2001"));
    assert!(!over("'2s'"));
    assert!(over("'3s'"));
    assert!(!over("'500ms'"));
    assert!(over("'1min'"));
    assert!(!over("'1.5s'"));
    assert_eq!(Timeout::parse("5s"), Ok(Timeout::AtMost(5000)));
    assert_eq!(Timeout::parse("1min"), Ok(Timeout::AtMost(60_000)));
    assert_eq!(Timeout::parse("750"), Ok(Timeout::AtMost(750)));
    assert!(Timeout::parse("0").is_err());
    assert!(Timeout::parse("5 parsecs").is_err());
}

#[test]
fn format_keeps_the_files_it_names() {
    let files = || {
        [
            "a/versions/1_x.py",
            "m/1_x.up.sql",
            "m/metadata.toml",
            "shop/orders/migrations/0001_x.py",
            "db/migrate/20240101000000_x.rb",
        ]
        .iter()
        .map(|p| SourceFile {
            path: p.to_string(),
            text: if p.contains("orders") {
                "class Migration(migrations.Migration):\n".to_string()
            } else {
                String::new()
            },
        })
        .collect::<Vec<_>>()
    };
    let paths = |f: Format| {
        f.keep(files())
            .into_iter()
            .map(|s| s.path)
            .collect::<Vec<_>>()
    };
    assert_eq!(paths(Format::Auto).len(), 5);
    assert_eq!(paths(Format::Alembic), vec!["a/versions/1_x.py"]);
    assert_eq!(
        paths(Format::Django),
        vec!["shop/orders/migrations/0001_x.py"]
    );
    assert_eq!(paths(Format::Rails), vec!["db/migrate/20240101000000_x.rb"]);
    assert_eq!(paths(Format::Sql), vec!["m/1_x.up.sql", "m/metadata.toml"]);
}

/// Regression (found by the fuzz target `migrations`): after a syntax error,
/// tree-sitter-python's error recovery was quadratic on a run of `:x` tokens (5 KB took
/// over 10 s unoptimised, and the rollback guard runs this checker). The
/// parse's work is bounded by the file's size: the file is a parse error at the line
/// where the parser gave up, and a large valid file still parses.
#[test]
fn a_parse_whose_error_recovery_runs_away_is_stopped_at_its_line() {
    // Ruby mangled into an Alembic revision, as the fuzzer left it.
    let text = format!(
        "revision = 'a'\ndown_revision = None\n\n\nclass AddNote < A=ctiveRecord::Midd_column \
         :id_column :items, :nottems, :not]    add_column :items, {}\n",
        ":not ".repeat(1000)
    );
    let r = report("alembic/versions/001_x.py", &text);
    let errors: Vec<(usize, &str)> = r
        .upgrade
        .findings
        .iter()
        .filter(|f| f.rule == "parse-error")
        .map(|f| (f.line, f.message.as_str()))
        .collect();
    assert!(
        errors
            .iter()
            .any(|(line, why)| *line == 5 && why.contains("gave up")),
        "{errors:?}"
    );
    let big: String = (0..400)
        .map(|i| format!("    op.add_column('t{i}', sa.Column('c', sa.Text(), nullable=True))\n"))
        .collect();
    let r = report("alembic/versions/002_x.py", &revision(&big));
    assert!(
        r.upgrade.findings.iter().all(|f| f.rule != "parse-error"),
        "{:?}",
        r.upgrade.findings.iter().find(|f| f.rule == "parse-error")
    );
    let rb: String = (0..400)
        .map(|i| format!("    add_column :items, :c{i}, :text\n"))
        .collect();
    let rb =
        format!("class AddMany < ActiveRecord::Migration[7.1]\n  def change\n{rb}  end\nend\n");
    let r = report("db/migrate/20240101000000_add_many.rb", &rb);
    assert!(
        r.upgrade.findings.iter().all(|f| f.rule != "parse-error"),
        "{:?}",
        r.upgrade.findings.iter().find(|f| f.rule == "parse-error")
    );
}

// ------------------------------------------------------------- never panic (all steps)

mod never_panics {
    use proptest::prelude::*;

    use super::super::*;

    fn one(path: &str, text: &str) -> Report {
        check(
            &plan(vec![SourceFile {
                path: path.to_string(),
                text: text.to_string(),
            }]),
            &Settings::default(),
        )
    }

    fn plpgsql_fragment() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("DO $$ BEGIN ".to_string()),
            Just("IF NOT EXISTS (SELECT 1 FROM information_schema.columns) THEN ".to_string()),
            Just("ELSIF x THEN ".to_string()),
            Just("ELSE ".to_string()),
            Just("END IF; ".to_string()),
            Just("FOR r IN SELECT 1 LOOP ".to_string()),
            Just("END LOOP; ".to_string()),
            Just("EXECUTE format('ALTER TABLE %I DROP COLUMN %I', 't', 'c'); ".to_string()),
            Just("EXECUTE 'a' || x; ".to_string()),
            Just("<<lbl>> ".to_string()),
            Just("CASE WHEN ".to_string()),
            Just("ALTER TABLE t ADD PRIMARY KEY (id); ".to_string()),
            Just("{{ index .Options \"Namespace\" }}".to_string()),
            Just("END $$;".to_string()),
            Just("(".to_string()),
            "[ -~\n]{0,12}",
        ]
    }

    fn django_fragment() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("class Migration(migrations.Migration):\n".to_string()),
            Just("    dependencies = [(\"a\", \"0001_x\")]\n".to_string()),
            Just("    atomic = False\n".to_string()),
            Just("    operations = [\n".to_string()),
            Just("        migrations.AddField(model_name=\"m\", name=\"c\", field=models.CharField(max_length=3)),\n".to_string()),
            Just("        migrations.RunSQL([\"DROP TABLE t\", (\"X\", [1])], reverse_sql=f\"{x}\"),\n".to_string()),
            Just("        migrations.SeparateDatabaseAndState(database_operations=[\n".to_string()),
            Just("        migrations.AlterField(\"m\", \"c\", models.ForeignKey(to=\"x\")),\n".to_string()),
            Just("    ]\n".to_string()),
            Just("(".to_string()),
            "[ -~\n]{0,16}",
        ]
    }

    fn rails_fragment() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("class M < ActiveRecord::Migration[7.1]\n".to_string()),
            Just("  disable_ddl_transaction!\n".to_string()),
            Just("  def change\n".to_string()),
            Just("  def up\n".to_string()),
            Just(
                "    add_column :t, :c, :string, null: false, default: -> { \"now()\" }\n"
                    .to_string()
            ),
            Just("    execute <<~SQL\n      DROP TABLE t;\n    SQL\n".to_string()),
            Just("    execute \"x #{y}\"\n".to_string()),
            Just("    safety_assured { remove_column :t, :c }\n".to_string()),
            Just("    reversible do |dir|\n      dir.up { add_index :t, :c }\n".to_string()),
            Just("    User.in_batches.update_all(a: 1)\n".to_string()),
            Just("  end\n".to_string()),
            Just("end\n".to_string()),
            Just("<<~A\n".to_string()),
            "[ -~\n]{0,16}",
        ]
    }

    fn python_sql_fragment() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("    op.execute(f\"ALTER TABLE {T} DROP COLUMN {c!r}\")\n".to_string()),
            Just("    op.execute(\"DROP %s\" % (T, U))\n".to_string()),
            Just("    op.execute(\"{} {x} {{\".format(T, x=U))\n".to_string()),
            Just("    op.execute(\"A\" + T + (\"B\" + (T)))\n".to_string()),
            Just("    for c in (\"a\", \"b\"):\n".to_string()),
            Just("        op.execute(f\"ALTER TABLE t DROP COLUMN {c}\")\n".to_string()),
            Just("    s = Session(bind=op.get_bind())\n".to_string()),
            Just("    s.query(M).update({\"a\": 1})\n".to_string()),
            Just("T = \"t\"\n".to_string()),
            Just("U = f\"{T}.x\"\n".to_string()),
            "[ -~\n]{0,16}",
        ]
    }

    proptest! {
        #[test]
        fn plpgsql_blocks(parts in proptest::collection::vec(plpgsql_fragment(), 0..40)) {
            let r = one("x.sql", &parts.concat());
            prop_assert_eq!(r.files.len(), 1);
        }

        #[test]
        fn django_migrations(parts in proptest::collection::vec(django_fragment(), 0..30)) {
            let text = format!("from django.db import migrations, models\n{}", parts.concat());
            let r = one("app/migrations/0002_x.py", &text);
            prop_assert!(r.files.len() <= 1);
        }

        #[test]
        fn rails_migrations(parts in proptest::collection::vec(rails_fragment(), 0..30)) {
            let text = format!("class M < ActiveRecord::Migration[7.1]\n{}", parts.concat());
            let r = one("db/migrate/20240101000000_x.rb", &text);
            prop_assert_eq!(r.files.len(), 1);
        }

        #[test]
        fn python_built_sql(parts in proptest::collection::vec(python_sql_fragment(), 0..30)) {
            let text = format!("from alembic import op\ndef upgrade():\n{}", parts.concat());
            let r = one("versions/x.py", &text);
            prop_assert_eq!(r.files.len(), 1);
        }
    }

    #[test]
    fn deep_nesting_is_refused_not_crashed() {
        // Nested Ruby blocks and heredocs, nested PL/pgSQL IFs, nested Python strings.
        let ruby = format!(
            "class M < ActiveRecord::Migration[7.1]\n  def change\n{}{}  end\nend\n",
            "    safety_assured {\n".repeat(300),
            "    }\n".repeat(300)
        );
        let _ = one("db/migrate/20240101000000_x.rb", &ruby);
        let heredocs = format!(
            "class M < ActiveRecord::Migration[7.1]\n  def up\n    execute {}\n  end\nend\n",
            (0..200).map(|i| format!("<<~S{i}, ")).collect::<String>()
        );
        let _ = one("db/migrate/20240101000001_x.rb", &heredocs);
        let plpgsql = format!(
            "DO $$ BEGIN {} ALTER TABLE t DROP COLUMN c; END $$;",
            "IF x THEN ".repeat(500)
        );
        let r = one("x.sql", &plpgsql);
        assert!(
            r.files[0]
                .upgrade
                .findings
                .iter()
                .any(|f| f.rule == "unknown-statement")
        );
        let py = format!(
            "from alembic import op\ndef upgrade():\n    op.execute({}\"x\"{})\n",
            "(".repeat(200),
            ")".repeat(200)
        );
        let _ = one("versions/x.py", &py);
        let concat = format!(
            "from alembic import op\ndef upgrade():\n    op.execute(\"a\"{})\n",
            " + \"b\"".repeat(2000)
        );
        let _ = one("versions/x.py", &concat);
    }
}
