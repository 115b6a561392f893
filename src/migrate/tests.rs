//! Tests for the checker: a bad and a good example per rule (table-driven), the Alembic
//! `op` forms, layouts, transactions, phases, downgrades, suppressions, the three output
//! formats (insta snapshots) and the never-panic property.

use std::collections::BTreeSet;

use proptest::prelude::*;

use super::*;

fn src(path: &str, text: &str) -> SourceFile {
    SourceFile {
        path: path.to_string(),
        text: text.to_string(),
    }
}

fn run_files(files: Vec<SourceFile>, settings: &Settings) -> Report {
    check(&plan(files), settings)
}

fn run(path: &str, text: &str) -> FileReport {
    let mut r = run_files(vec![src(path, text)], &Settings::default());
    assert_eq!(r.files.len(), 1, "one migration for {path}");
    r.files.remove(0)
}

/// Upgrade rule ids for a plain `.sql` file, without `missing-lock-timeout` (which
/// nearly every lock-taking example also triggers and which has its own case).
fn up_rules(text: &str) -> BTreeSet<&'static str> {
    run("m.sql", text)
        .upgrade
        .findings
        .iter()
        .map(|f| f.rule)
        .filter(|r| *r != "missing-lock-timeout")
        .collect()
}

/// The data-driven helper: the exact set of upgrade rules `input` triggers.
fn check_rules(input: &str, expected: &[&str]) {
    let got = up_rules(input);
    let want: BTreeSet<&str> = expected.iter().copied().collect();
    assert_eq!(got, want, "rules for:\n{input}");
}

/// (rule, bad example, good example), each from the rule's own description.
const CASES: &[(&str, &str, &str)] = &[
    (
        "drop-column",
        "ALTER TABLE users DROP COLUMN email;",
        "ALTER TABLE users ADD COLUMN nick text; ALTER TABLE users DROP COLUMN nick;",
    ),
    (
        "drop-table",
        "DROP TABLE users;",
        "CREATE TABLE scratch (id int); DROP TABLE scratch;",
    ),
    ("drop-schema", "DROP SCHEMA app;", "CREATE SCHEMA app;"),
    ("drop-database", "DROP DATABASE app;", "DROP SCHEMA app;"),
    (
        "drop-cascade",
        "DROP VIEW active_users CASCADE;",
        "DROP VIEW active_users;",
    ),
    (
        "truncate",
        "TRUNCATE users CASCADE;",
        "CREATE TABLE t (id int);",
    ),
    (
        "backfill-in-migration",
        "UPDATE users SET active = true;",
        "CREATE TABLE roles (id int); INSERT INTO roles VALUES (1);",
    ),
    (
        "rename-column",
        "ALTER TABLE users RENAME COLUMN name TO full_name;",
        "ALTER TABLE users ADD COLUMN full_name text;",
    ),
    (
        "rename-table",
        "ALTER TABLE users RENAME TO accounts;",
        "CREATE VIEW accounts AS SELECT * FROM users;",
    ),
    (
        "rename-schema",
        "ALTER SCHEMA app RENAME TO core;",
        "CREATE SCHEMA core;",
    ),
    (
        "rename-type",
        "ALTER TYPE mood RENAME VALUE 'sad' TO 'blue';",
        "ALTER TYPE mood ADD VALUE 'blue';",
    ),
    (
        "change-column-type",
        "ALTER TABLE users ALTER COLUMN age TYPE bigint;",
        "ALTER TABLE users ADD COLUMN age_big bigint;",
    ),
    (
        "add-not-null-column-without-default",
        "ALTER TABLE users ADD COLUMN tier text NOT NULL;",
        "ALTER TABLE users ADD COLUMN tier text NOT NULL DEFAULT 'free';",
    ),
    (
        "volatile-default",
        "ALTER TABLE users ADD COLUMN token uuid DEFAULT gen_random_uuid();",
        "ALTER TABLE users ADD COLUMN seen timestamptz DEFAULT now();",
    ),
    (
        "stored-generated-column",
        "ALTER TABLE users ADD COLUMN total int GENERATED ALWAYS AS (a + b) STORED;",
        "ALTER TABLE users ADD COLUMN total int;",
    ),
    (
        "add-serial-column",
        "ALTER TABLE users ADD COLUMN seq bigserial;",
        "CREATE TABLE events (id bigserial PRIMARY KEY);",
    ),
    (
        "set-not-null",
        "ALTER TABLE users ALTER COLUMN email SET NOT NULL;",
        "ALTER TABLE users ADD CONSTRAINT email_nn CHECK (email IS NOT NULL) NOT VALID;",
    ),
    (
        "drop-not-null",
        "ALTER TABLE users ALTER COLUMN email DROP NOT NULL;",
        "ALTER TABLE users ALTER COLUMN email SET DEFAULT '';",
    ),
    (
        "add-foreign-key",
        "ALTER TABLE orders ADD CONSTRAINT orders_user_fk FOREIGN KEY (user_id) REFERENCES users (id);",
        "ALTER TABLE orders ADD CONSTRAINT orders_user_fk FOREIGN KEY (user_id) REFERENCES users (id) NOT VALID;",
    ),
    (
        "add-check-constraint",
        "ALTER TABLE users ADD CONSTRAINT age_pos CHECK (age > 0);",
        "ALTER TABLE users ADD CONSTRAINT age_pos CHECK (age > 0) NOT VALID;",
    ),
    (
        "validate-in-same-transaction",
        "ALTER TABLE orders ADD CONSTRAINT fk FOREIGN KEY (user_id) REFERENCES users (id) NOT VALID;\nALTER TABLE orders VALIDATE CONSTRAINT fk;",
        "-- no-transaction\nBEGIN;\nALTER TABLE orders ADD CONSTRAINT fk FOREIGN KEY (user_id) REFERENCES users (id) NOT VALID;\nCOMMIT;\nBEGIN;\nALTER TABLE orders VALIDATE CONSTRAINT fk;\nCOMMIT;",
    ),
    (
        "add-unique-constraint",
        "ALTER TABLE users ADD CONSTRAINT email_uq UNIQUE (email);",
        "ALTER TABLE users ADD CONSTRAINT email_uq UNIQUE USING INDEX email_idx;",
    ),
    (
        "add-primary-key",
        "ALTER TABLE users ADD PRIMARY KEY (id);",
        "ALTER TABLE users ADD CONSTRAINT users_pk PRIMARY KEY USING INDEX users_id_idx;",
    ),
    (
        "add-exclusion-constraint",
        "ALTER TABLE rooms ADD CONSTRAINT no_overlap EXCLUDE USING gist (during WITH &&);",
        "CREATE TABLE rooms2 (during tsrange);",
    ),
    (
        "create-index-without-concurrently",
        "CREATE INDEX users_email_idx ON users (email);",
        "-- no-transaction\nCREATE INDEX CONCURRENTLY IF NOT EXISTS users_email_idx ON users (email);",
    ),
    (
        "drop-index-without-concurrently",
        "DROP INDEX users_email_idx;",
        "-- no-transaction\nDROP INDEX CONCURRENTLY IF EXISTS users_email_idx;",
    ),
    (
        "concurrently-in-transaction",
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS users_email_idx ON users (email);",
        "-- no-transaction\nCREATE INDEX CONCURRENTLY IF NOT EXISTS users_email_idx ON users (email);",
    ),
    (
        "reindex-without-concurrently",
        "-- no-transaction\nREINDEX INDEX users_email_idx;",
        "-- no-transaction\nREINDEX INDEX CONCURRENTLY users_email_idx;",
    ),
    (
        "partition-attach-detach",
        "ALTER TABLE metrics DETACH PARTITION metrics_2020;",
        "-- no-transaction\nALTER TABLE metrics DETACH PARTITION metrics_2020 CONCURRENTLY;",
    ),
    (
        "vacuum-full-or-cluster",
        "-- no-transaction\nVACUUM FULL users;",
        "-- no-transaction\nVACUUM users;",
    ),
    (
        "missing-lock-timeout",
        "ALTER TABLE users ADD COLUMN x int;",
        "SET lock_timeout = '2s';\nALTER TABLE users ADD COLUMN x int;",
    ),
    (
        "domain-with-constraint",
        "CREATE DOMAIN positive AS int CHECK (VALUE > 0);",
        "CREATE DOMAIN positive AS int;",
    ),
    (
        "enum-add-value-in-transaction",
        "ALTER TYPE mood ADD VALUE 'ok';\nCREATE TABLE t (m mood DEFAULT 'ok');",
        "ALTER TYPE mood ADD VALUE 'ok';",
    ),
    (
        "transaction-nesting",
        "BEGIN;\nALTER TABLE users ADD COLUMN x int;\nCOMMIT;",
        "ALTER TABLE users ADD COLUMN x int;",
    ),
    (
        "not-idempotent",
        "-- no-transaction\nCREATE INDEX CONCURRENTLY users_email_idx ON users (email);",
        "-- no-transaction\nCREATE INDEX CONCURRENTLY IF NOT EXISTS users_email_idx ON users (email);",
    ),
    ("unknown-statement", "FROBNICATE the database;", "SELECT 1;"),
    (
        "implicit-drop",
        "ALTER TABLE users DROP COLUMN email CASCADE;",
        "ALTER TABLE users DROP COLUMN email;",
    ),
    (
        "expand-and-contract",
        "ALTER TABLE users ADD COLUMN full_name text;\nALTER TABLE users DROP COLUMN name;",
        "ALTER TABLE users DROP COLUMN name;",
    ),
    ("parse-error", "SELECT 'never closed;", "SELECT 'closed';"),
    (
        "suppression-without-reason",
        "SET lock_timeout = '1s';\n-- ripcord:allow drop-column\nALTER TABLE users DROP COLUMN legacy;",
        "SET lock_timeout = '1s';\n-- ripcord:allow drop-column because nothing reads it since v41\nALTER TABLE users DROP COLUMN legacy;",
    ),
    (
        "suppression-unknown-rule",
        "SET lock_timeout = '1s';\n-- ripcord:allow drop-colum because nothing reads it since v41\nALTER TABLE users DROP COLUMN legacy;",
        "SET lock_timeout = '1s';\n-- ripcord:allow drop-column because nothing reads it since v41\nALTER TABLE users DROP COLUMN legacy;",
    ),
];

/// An up migration in golang-migrate's layout, for the downgrade cases.
const ADD_NICK: (&str, &str) = (
    "m/1_nick.up.sql",
    "SET lock_timeout = '1s';\nALTER TABLE users ADD COLUMN nick text;",
);

/// Rules a lone `m.sql` upgrade cannot show (downgrades, Alembic's Python): (rule, bad
/// files, good files), each file a (path, text); the findings of both directions count.
type FileCase = (
    &'static str,
    &'static [(&'static str, &'static str)],
    &'static [(&'static str, &'static str)],
);

const FILE_CASES: &[FileCase] = &[
    (
        "dynamic-sql",
        &[(
            "versions/a1_x.py",
            "from alembic import op\ndef upgrade():\n    for t in tables():\n        op.execute(f\"ALTER TABLE {t} ADD COLUMN note text\")\ndef downgrade():\n    pass\n",
        )],
        &[(
            "versions/a1_x.py",
            "from alembic import op\ndef upgrade():\n    for t in (\"a\", \"b\"):\n        op.execute(f\"ALTER TABLE {t} ADD COLUMN note text\")\ndef downgrade():\n    pass\n",
        )],
    ),
    (
        "downgrade-missing",
        &[ADD_NICK],
        &[
            ADD_NICK,
            (
                "m/1_nick.down.sql",
                "ALTER TABLE users RENAME COLUMN nick TO nick_old;",
            ),
        ],
    ),
    (
        "downgrade-irreversible",
        &[
            ADD_NICK,
            (
                "m/1_nick.down.sql",
                "-- ripcord:irreversible because nick is derived and rebuilt",
            ),
        ],
        &[
            ADD_NICK,
            (
                "m/1_nick.down.sql",
                "ALTER TABLE users RENAME COLUMN nick TO nick_old;",
            ),
        ],
    ),
    (
        "downgrade-empty",
        &[
            ADD_NICK,
            ("m/1_nick.down.sql", "-- nothing to undo\nSELECT 1;"),
        ],
        &[
            ADD_NICK,
            (
                "m/1_nick.down.sql",
                "ALTER TABLE users RENAME COLUMN nick TO nick_old;",
            ),
        ],
    ),
    (
        "downgrade-data-loss",
        &[
            ADD_NICK,
            ("m/1_nick.down.sql", "ALTER TABLE users DROP COLUMN nick;"),
        ],
        &[
            ADD_NICK,
            (
                "m/1_nick.down.sql",
                "ALTER TABLE users RENAME COLUMN nick TO nick_old;",
            ),
        ],
    ),
    (
        "downgrade-fails",
        &[
            (
                "m/2_tier.up.sql",
                "SET lock_timeout = '1s';\nALTER TABLE users DROP COLUMN tier;",
            ),
            (
                "m/2_tier.down.sql",
                "ALTER TABLE users ADD COLUMN tier text NOT NULL;",
            ),
        ],
        &[
            (
                "m/2_tier.up.sql",
                "SET lock_timeout = '1s';\nALTER TABLE users DROP COLUMN tier;",
            ),
            (
                "m/2_tier.down.sql",
                "ALTER TABLE users ADD COLUMN tier text NOT NULL DEFAULT 'free';",
            ),
        ],
    ),
    (
        "orm-side-default",
        &[(
            "versions/a1.py",
            "from alembic import op\nimport sqlalchemy as sa\ndef upgrade():\n    op.add_column('users', sa.Column('tier', sa.Text(), nullable=False, default='free'))\ndef downgrade():\n    op.drop_column('users', 'tier')\n",
        )],
        &[(
            "versions/a1.py",
            "from alembic import op\nimport sqlalchemy as sa\ndef upgrade():\n    op.add_column('users', sa.Column('tier', sa.Text(), nullable=False, server_default='free'))\ndef downgrade():\n    op.drop_column('users', 'tier')\n",
        )],
    ),
    (
        "batch-recreate-table",
        &[(
            "versions/a1.py",
            "from alembic import op\nimport sqlalchemy as sa\ndef upgrade():\n    with op.batch_alter_table('users', recreate='always') as b:\n        b.add_column(sa.Column('nick', sa.Text()))\ndef downgrade():\n    op.drop_column('users', 'nick')\n",
        )],
        &[(
            "versions/a1.py",
            "from alembic import op\nimport sqlalchemy as sa\ndef upgrade():\n    with op.batch_alter_table('users', recreate='auto') as b:\n        b.add_column(sa.Column('nick', sa.Text()))\ndef downgrade():\n    op.drop_column('users', 'nick')\n",
        )],
    ),
    (
        "parse-error",
        &[(
            "versions/a1.py",
            "from alembic import op\ndef upgrade():\n    op.drop_column('users', 'x'\ndef downgrade():\n    pass\n",
        )],
        &[(
            "versions/a1.py",
            "from alembic import op\ndef upgrade():\n    op.drop_column('users', 'x')\ndef downgrade():\n    pass\n",
        )],
    ),
];

#[test]
fn every_rule_case_bad_fires_and_good_does_not() {
    for (rule, bad, good) in CASES {
        let all = |text: &str| -> BTreeSet<&'static str> {
            run("m.sql", text)
                .upgrade
                .findings
                .iter()
                .map(|f| f.rule)
                .collect()
        };
        assert!(
            all(bad).contains(rule),
            "{rule}: bad example did not fire: {:?}\n{bad}",
            all(bad)
        );
        assert!(
            !all(good).contains(rule),
            "{rule}: good example fired: {:?}\n{good}",
            all(good)
        );
    }
}

#[test]
fn every_file_case_bad_fires_and_good_does_not() {
    for (rule, bad, good) in FILE_CASES {
        let all = |files: &[(&str, &str)]| -> BTreeSet<&'static str> {
            let files = files.iter().map(|(p, t)| src(p, t)).collect();
            run_files(files, &Settings::default())
                .files
                .iter()
                .flat_map(|f| f.upgrade.findings.iter().chain(&f.downgrade.findings))
                .map(|f| f.rule)
                .collect()
        };
        assert!(
            all(bad).contains(rule),
            "{rule}: bad example did not fire: {:?}\n{bad:?}",
            all(bad)
        );
        assert!(
            !all(good).contains(rule),
            "{rule}: good example fired: {:?}\n{good:?}",
            all(good)
        );
    }
}

#[test]
fn every_rule_has_a_bad_and_a_good_case() {
    for id in rule_ids() {
        assert!(
            CASES.iter().any(|c| c.0 == id)
                || FILE_CASES.iter().any(|c| c.0 == id)
                || super::tests_inputs::settings_cases()
                    .iter()
                    .any(|c| c.0 == id),
            "rule {id} has no test case"
        );
    }
}

/// `not-idempotent`: (bad, good) statements that run outside a transaction. The bad
/// ones are fine inside the runner's transaction, where a failure undoes them.
const NOT_IDEMPOTENT: &[(&str, &str)] = &[
    (
        "CREATE TABLE t (id int);",
        "CREATE TABLE IF NOT EXISTS t (id int);",
    ),
    (
        "CREATE INDEX CONCURRENTLY users_email_idx ON users (email);",
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS users_email_idx ON users (email);",
    ),
    (
        "DROP INDEX CONCURRENTLY users_email_idx;",
        "DROP INDEX CONCURRENTLY IF EXISTS users_email_idx;",
    ),
    (
        "ALTER TABLE users ADD COLUMN nick text;",
        "ALTER TABLE users ADD COLUMN IF NOT EXISTS nick text;",
    ),
    (
        "ALTER TABLE users DROP COLUMN nick;",
        "ALTER TABLE users DROP COLUMN IF EXISTS nick;",
    ),
    ("DROP TABLE legacy;", "DROP TABLE IF EXISTS legacy;"),
    (
        "CREATE SEQUENCE order_seq;",
        "CREATE SEQUENCE IF NOT EXISTS order_seq;",
    ),
    (
        "DROP SEQUENCE order_seq;",
        "DROP SEQUENCE IF EXISTS order_seq;",
    ),
    (
        "DROP VIEW active_users;",
        "DROP VIEW IF EXISTS active_users;",
    ),
    (
        "DROP FUNCTION touch_updated_at();",
        "DROP FUNCTION IF EXISTS touch_updated_at();",
    ),
    ("DROP TYPE mood;", "DROP TYPE IF EXISTS mood;"),
    ("CREATE SCHEMA app;", "CREATE SCHEMA IF NOT EXISTS app;"),
    ("DROP SCHEMA app;", "DROP SCHEMA IF EXISTS app;"),
    (
        "CREATE EXTENSION pg_trgm;",
        "CREATE EXTENSION IF NOT EXISTS pg_trgm;",
    ),
    (
        "ALTER TYPE mood ADD VALUE 'ok';",
        "ALTER TYPE mood ADD VALUE IF NOT EXISTS 'ok';",
    ),
];

#[test]
fn not_idempotent_ddl_outside_a_transaction() {
    let idempotency = |text: &str| -> Vec<(usize, String)> {
        run("m.sql", text)
            .upgrade
            .findings
            .iter()
            .filter(|f| f.rule == "not-idempotent")
            .map(|f| (f.line, f.message.clone()))
            .collect()
    };
    for (bad, good) in NOT_IDEMPOTENT {
        let outside = |s: &str| format!("-- no-transaction\nSET lock_timeout = '1s';\n{s}");
        let found = idempotency(&outside(bad));
        assert_eq!(
            found.len(),
            1,
            "bad example did not fire once: {found:?}\n{bad}"
        );
        assert_eq!(found[0].0, 3, "{bad}");
        assert!(found[0].1.contains("IF"), "{found:?}");
        assert_eq!(
            idempotency(&outside(good)),
            vec![],
            "good example fired:\n{good}"
        );
        // In the runner's transaction a failure undoes it, so a retry starts clean.
        assert_eq!(
            idempotency(bad),
            vec![],
            "fired inside a transaction:\n{bad}"
        );
    }
    // Alembic: only what runs in autocommit_block() is outside the transaction.
    let alembic = |body: &str| -> BTreeSet<(usize, &'static str)> {
        let text = format!(
            "from alembic import op\nimport sqlalchemy as sa\ndef upgrade():\n    op.execute(\"SET lock_timeout = '1s'\")\n{body}def downgrade():\n    pass\n"
        );
        run("versions/a1.py", &text)
            .upgrade
            .findings
            .iter()
            .filter(|f| f.rule == "not-idempotent")
            .map(|f| (f.line, f.rule))
            .collect()
    };
    let body = "    with op.get_context().autocommit_block():
        op.add_column('users', sa.Column('nick', sa.Text()))
        op.add_column('users', sa.Column('nick2', sa.Text()), if_not_exists=True)
        op.drop_column('users', 'old')
        op.drop_column('users', 'old2', if_exists=True)
        op.drop_table('legacy')
        op.drop_table('legacy2', if_exists=True)
    op.add_column('users', sa.Column('nick3', sa.Text()))
    op.drop_table('legacy3')
";
    assert_eq!(
        alembic(body),
        [
            (6, "not-idempotent"),
            (8, "not-idempotent"),
            (10, "not-idempotent")
        ]
        .into_iter()
        .collect()
    );
}

#[test]
fn rule_ids_are_kebab_case_and_unique() {
    let ids = rule_ids();
    let set: BTreeSet<_> = ids.iter().collect();
    assert_eq!(set.len(), ids.len());
    for id in ids {
        assert!(
            id.chars().all(|c| c.is_ascii_lowercase() || c == '-'),
            "{id}"
        );
    }
}

#[test]
fn tables_created_in_the_same_migration_are_exempt_from_lock_rules() {
    check_rules(
        "CREATE TABLE t (id int);\nCREATE INDEX t_idx ON t (id);\nALTER TABLE t ADD COLUMN c int NOT NULL;\nALTER TABLE t ADD CONSTRAINT fk FOREIGN KEY (id) REFERENCES users (id);\nALTER TABLE t ALTER COLUMN c SET NOT NULL;",
        &[],
    );
}

#[test]
fn binary_coercible_type_changes_are_not_rewrites() {
    let create = src(
        "migrations/1_create.up.sql",
        "CREATE TABLE items (name varchar(10), note varchar(50), price numeric(10,2), qty int, addr cidr);",
    );
    let cases = [
        (
            "ALTER TABLE items ALTER COLUMN name TYPE varchar(20);",
            false,
        ),
        ("ALTER TABLE items ALTER COLUMN name TYPE text;", false),
        ("ALTER TABLE items ALTER COLUMN note TYPE varchar;", false),
        (
            "ALTER TABLE items ALTER COLUMN price TYPE numeric(12,2);",
            false,
        ),
        ("ALTER TABLE items ALTER COLUMN price TYPE numeric;", false),
        ("ALTER TABLE items ALTER COLUMN addr TYPE inet;", false),
        ("ALTER TABLE items ALTER COLUMN name TYPE varchar(5);", true),
        (
            "ALTER TABLE items ALTER COLUMN price TYPE numeric(12,3);",
            true,
        ),
        ("ALTER TABLE items ALTER COLUMN qty TYPE bigint;", true),
        (
            "ALTER TABLE items ALTER COLUMN name TYPE varchar(20) USING name::varchar;",
            true,
        ),
        // A USING that is the column cast to the new type is the plain type change.
        (
            "ALTER TABLE items ALTER COLUMN name TYPE text USING name::text;",
            false,
        ),
        (
            "ALTER TABLE items ALTER COLUMN name TYPE text USING CAST(name AS text);",
            false,
        ),
        (
            "ALTER TABLE items ALTER COLUMN name TYPE varchar(20) USING (name)::varchar(20);",
            false,
        ),
        (
            "ALTER TABLE items ALTER COLUMN name TYPE text USING name;",
            false,
        ),
        (
            "ALTER TABLE items ALTER COLUMN name TYPE varchar(5) USING name::varchar(5);",
            true,
        ),
        (
            "ALTER TABLE items ALTER COLUMN qty TYPE bigint USING qty::bigint;",
            true,
        ),
        (
            "ALTER TABLE items ALTER COLUMN name TYPE text USING note::text;",
            true,
        ),
        (
            "ALTER TABLE items ALTER COLUMN name TYPE text USING name || '';",
            true,
        ),
        (
            "ALTER TABLE items ALTER COLUMN name TYPE text USING \"Name\"::text;",
            true,
        ),
    ];
    for (stmt, rewrite) in cases {
        let r = run_files(
            vec![create.clone(), src("migrations/2_alter.up.sql", stmt)],
            &Settings::default(),
        );
        let fired = r.files[1]
            .upgrade
            .findings
            .iter()
            .any(|f| f.rule == "change-column-type");
        assert_eq!(fired, rewrite, "{stmt}");
        assert_eq!(
            r.files[1].phase,
            if rewrite {
                Phase::Contract
            } else {
                Phase::Expand
            },
            "{stmt}"
        );
    }
}

#[test]
fn alembic_postgresql_using_a_cast_of_the_column_is_the_plain_type_change() {
    let alter = |using: &str| {
        let text = format!(
            "from alembic import op\nimport sqlalchemy as sa\ndef upgrade():\n    op.execute(\"SET lock_timeout = '2s'\")\n    op.alter_column(\"users\", \"email\", existing_type=sa.String(50), type_=sa.Text(){using})\ndef downgrade():\n    pass\n"
        );
        run("versions/u1.py", &text)
            .upgrade
            .findings
            .iter()
            .any(|f| f.rule == "change-column-type")
    };
    assert!(!alter(""));
    assert!(!alter(", postgresql_using=\"email::text\""));
    assert!(alter(", postgresql_using=\"lower(email)\""));
    assert!(alter(", postgresql_using=\"email::varchar(10)\""));
}

#[test]
fn statements_that_queue_for_a_blocking_lock_want_a_lock_timeout() {
    let warns = |text: &str| {
        run("m.sql", text)
            .upgrade
            .findings
            .iter()
            .any(|f| f.rule == "missing-lock-timeout")
    };
    for stmt in [
        "TRUNCATE users;",
        "ALTER DOMAIN positive ADD CONSTRAINT p CHECK (VALUE > 0);",
        "-- no-transaction\nALTER TABLE metrics DETACH PARTITION metrics_2020 CONCURRENTLY;",
    ] {
        assert!(warns(stmt), "{stmt}");
        assert!(
            !warns(
                &stmt
                    .replace("TRUNCATE", "SET lock_timeout = '2s';\nTRUNCATE")
                    .replace("ALTER", "SET lock_timeout = '2s';\nALTER")
            ),
            "{stmt} with a lock_timeout"
        );
    }
    // No validation, no lock on the tables; a table of this migration has no queue.
    assert!(!warns(
        "ALTER DOMAIN positive ADD CONSTRAINT p CHECK (VALUE > 0) NOT VALID;"
    ));
    assert!(!warns("CREATE TABLE scratch (id int);\nTRUNCATE scratch;"));
}

#[test]
fn validate_in_the_same_transaction_names_the_lock_the_add_took() {
    let message = |add: &str| {
        run(
            "m.sql",
            &format!("SET lock_timeout = '2s';\n{add} NOT VALID;\nALTER TABLE orders VALIDATE CONSTRAINT c;"),
        )
        .upgrade
        .findings
        .into_iter()
        .find(|f| f.rule == "validate-in-same-transaction")
        .map(|f| f.message)
        .unwrap_or_default()
    };
    let fk =
        message("ALTER TABLE orders ADD CONSTRAINT c FOREIGN KEY (user_id) REFERENCES users (id)");
    assert!(fk.contains("SHARE ROW EXCLUSIVE"), "{fk}");
    assert!(!fk.contains("ACCESS EXCLUSIVE"), "{fk}");
    let check = message("ALTER TABLE orders ADD CONSTRAINT c CHECK (qty > 0)");
    assert!(check.contains("ACCESS EXCLUSIVE"), "{check}");
}

#[test]
fn pg_version_decides_whether_a_constant_default_rewrites() {
    let stmt = "ALTER TABLE users ADD COLUMN plan text NOT NULL DEFAULT 'free';";
    let mut s = Settings::default();
    let rules = |s: &Settings| -> Vec<&'static str> {
        run_files(vec![src("m.sql", stmt)], s).files[0]
            .upgrade
            .findings
            .iter()
            .map(|f| f.rule)
            .collect()
    };
    assert!(!rules(&s).contains(&"volatile-default"));
    s.pg_version = 10;
    assert!(rules(&s).contains(&"volatile-default"));
}

#[test]
fn set_not_null_after_a_validated_check_is_safe_from_pg12() {
    let files = || {
        vec![
            src(
                "m/1_a.up.sql",
                "SET lock_timeout = '1s';\nALTER TABLE users ADD CONSTRAINT email_nn CHECK (email IS NOT NULL) NOT VALID;",
            ),
            src(
                "m/2_b.up.sql",
                "ALTER TABLE users VALIDATE CONSTRAINT email_nn;",
            ),
            src(
                "m/3_c.up.sql",
                "SET lock_timeout = '1s';\nALTER TABLE users ALTER COLUMN email SET NOT NULL;",
            ),
        ]
    };
    let r = run_files(files(), &Settings::default());
    assert!(
        r.files[2]
            .upgrade
            .findings
            .iter()
            .all(|f| f.rule != "set-not-null")
    );
    let old = Settings {
        pg_version: 11,
        ..Settings::default()
    };
    let r = run_files(files(), &old);
    assert!(
        r.files[2]
            .upgrade
            .findings
            .iter()
            .any(|f| f.rule == "set-not-null")
    );
}

#[test]
fn enum_add_value_in_a_transaction_fails_before_pg12() {
    let old = Settings {
        pg_version: 11,
        ..Settings::default()
    };
    let r = run_files(vec![src("m.sql", "ALTER TYPE mood ADD VALUE 'ok';")], &old);
    assert!(
        r.files[0]
            .upgrade
            .findings
            .iter()
            .any(|f| f.rule == "enum-add-value-in-transaction")
    );
}

#[test]
fn settings_turn_rules_off_and_change_severity() {
    let mut s = Settings::default();
    s.disabled.insert("missing-lock-timeout".into());
    s.severity.insert("drop-column".into(), Severity::Warning);
    let r = run_files(
        vec![src("m.sql", "ALTER TABLE users DROP COLUMN email;")],
        &s,
    );
    let f = &r.files[0].upgrade.findings;
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].severity, Severity::Warning);
    assert_eq!(exit_code(&r), 0);
}

#[test]
fn statements_sqlparser_cannot_parse_are_recognised_or_reported() {
    check_rules("REINDEX TABLE users;", &["reindex-without-concurrently"]);
    check_rules(
        "CLUSTER users USING users_pkey;",
        &["vacuum-full-or-cluster"],
    );
    check_rules(
        "ALTER DOMAIN positive ADD CONSTRAINT p CHECK (VALUE > 0);",
        &["domain-with-constraint"],
    );
    let r = run("m.sql", "SELECT 1;\n\nFROBNICATE\n  everything;\n");
    let f = &r.upgrade.findings;
    assert_eq!(f.len(), 1);
    assert_eq!((f[0].rule, f[0].line), ("unknown-statement", 3));
    assert_eq!(r.phase, Phase::Unknown);
}

#[test]
fn do_blocks_are_opened() {
    let text = "DO $$\nBEGIN\n  ALTER TABLE users ADD CONSTRAINT age_pos CHECK (age > 0);\nEXCEPTION WHEN duplicate_object THEN NULL;\nEND $$;";
    let r = run("m.sql", text);
    let f: Vec<_> = r
        .upgrade
        .findings
        .iter()
        .map(|f| (f.rule, f.line))
        .collect();
    assert!(f.contains(&("add-check-constraint", 3)), "{f:?}");
}

#[test]
fn placeholders_and_comments_do_not_break_parsing() {
    let text = "-- a comment; with a semicolon\n/* block /* nested */ ; */\nALTER TABLE ${schema}.users ADD COLUMN note text DEFAULT 'a;b';\nCREATE FUNCTION f() RETURNS int AS $body$ SELECT 1; $body$ LANGUAGE sql;";
    check_rules(text, &[]);
    let pieces = sql::split_for_test(text);
    assert_eq!(pieces.len(), 2);
    assert_eq!(pieces[0].0, 3);
}

// ---------------------------------------------------------------- transactions

#[test]
fn golang_migrate_single_statement_files_run_outside_a_transaction() {
    let one = run(
        "m/1_idx.up.sql",
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS i ON users (email);",
    );
    assert!(
        one.upgrade
            .findings
            .iter()
            .all(|f| f.rule != "concurrently-in-transaction")
    );
    let two = run(
        "m/1_idx.up.sql",
        "SET lock_timeout = '1s';\nCREATE INDEX CONCURRENTLY IF NOT EXISTS i ON users (email);",
    );
    assert!(
        two.upgrade
            .findings
            .iter()
            .any(|f| f.rule == "concurrently-in-transaction")
    );
}

#[test]
fn explicit_begin_without_commit_is_reported() {
    let r = run("m.sql", "-- no-transaction\nBEGIN;\nSELECT 1;");
    assert!(
        r.upgrade
            .findings
            .iter()
            .any(|f| f.rule == "transaction-nesting" && f.line == 2)
    );
}

#[test]
fn commit_inside_a_runner_transaction_is_reported() {
    check_rules("SELECT 1;\nCOMMIT;", &["transaction-nesting"]);
}

// ---------------------------------------------------------------- alembic

const ALEMBIC_ALL: &str = r#""""every op form

Revision ID: b2
Revises: a1
"""
from alembic import op
import sqlalchemy as sa

revision = "b2"
down_revision = "a1"

ADD_FLAG = "ALTER TABLE users ADD COLUMN flag boolean"


def _helper():
    op.drop_column("users", "legacy")


def upgrade():
    op.execute("SET lock_timeout = '2s'")
    op.create_table("events", sa.Column("id", sa.Integer(), primary_key=True))
    op.create_index("events_id_idx", "events", ["id"])
    op.add_column("users", sa.Column("tier", sa.String(20), nullable=False))
    op.add_column("users", sa.Column("plan", sa.Text(), nullable=False, server_default="free"))
    op.add_column("users", sa.Column("token", sa.Text(), server_default=sa.text("gen_random_uuid()")))
    op.add_column("users", sa.Column("kind", sa.Text(), nullable=False, default="a"))
    op.alter_column("users", "name", new_column_name="full_name")
    op.alter_column("users", "email", existing_type=sa.String(50), type_=sa.String(100))
    op.alter_column("users", "age", existing_type=sa.Integer(), type_=sa.BigInteger())
    op.alter_column("users", "bio", nullable=False)
    op.create_foreign_key("orders_user_fk", "orders", "users", ["user_id"], ["id"])
    op.create_check_constraint("age_pos", "users", "age > 0", postgresql_not_valid=True)
    op.create_unique_constraint("email_uq", "users", ["email"])
    op.create_index("users_email_idx", "users", ["email"])
    op.create_index("users_name_idx", "users", ["name"], postgresql_concurrently=True)
    with op.get_context().autocommit_block():
        op.create_index("users_bio_idx", "users", ["bio"], postgresql_concurrently=True, if_not_exists=True)
    with op.batch_alter_table("accounts") as batch_op:
        batch_op.add_column(sa.Column("region", sa.Text(), nullable=False))
        batch_op.drop_column("old")
    op.execute(sa.text("UPDATE users SET tier = 'free'"))
    op.get_bind().execute(sa.text("""
        ALTER TABLE users
          RENAME TO accounts_old
    """))
    conn = op.get_bind()
    conn.execute(sa.text(f"DELETE FROM {table}"))
    op.execute(ADD_FLAG)
    _helper()
    op.rename_table("things", "items")
    op.drop_table("ghosts")
    op.frobnicate("x")
    if op.get_bind().dialect.name == "sqlite":
        op.execute("VACUUM")
    else:
        op.execute("VACUUM FULL users")


def downgrade():
    op.drop_column("users", "tier")
    op.add_column("users", sa.Column("name", sa.Text(), nullable=False))
"#;

#[test]
fn alembic_every_op_form() {
    let r = run("alembic/versions/b2_all.py", ALEMBIC_ALL);
    assert_eq!(r.kind, Kind::Alembic);
    assert_eq!(r.revision.as_deref(), Some("b2"));
    assert_eq!(r.down_revision, Some(vec!["a1".to_string()]));
    let got: BTreeSet<(usize, &str)> = r
        .upgrade
        .findings
        .iter()
        .map(|f| (f.line, f.rule))
        .collect();
    let want: BTreeSet<(usize, &str)> = [
        (16, "drop-column"),
        (16, "expand-and-contract"),
        (23, "add-not-null-column-without-default"),
        (25, "volatile-default"),
        (26, "orm-side-default"),
        (27, "rename-column"),
        (27, "expand-and-contract"),
        (29, "change-column-type"),
        (30, "set-not-null"),
        (31, "add-foreign-key"),
        (33, "add-unique-constraint"),
        (34, "create-index-without-concurrently"),
        (35, "concurrently-in-transaction"),
        (39, "add-not-null-column-without-default"),
        (40, "drop-column"),
        (40, "expand-and-contract"),
        (41, "backfill-in-migration"),
        // The SQL inside the triple-quoted string: the line of the statement itself.
        (43, "rename-table"),
        (47, "dynamic-sql"),
        (50, "rename-table"),
        (51, "drop-table"),
        (52, "unknown-statement"),
        // Only the PostgreSQL branch of the dialect `if` is analysed.
        (56, "vacuum-full-or-cluster"),
        (56, "concurrently-in-transaction"),
    ]
    .into_iter()
    .collect();
    let missing: Vec<_> = want.difference(&got).collect();
    let extra: Vec<_> = got.difference(&want).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}\nextra {extra:?}"
    );
    // The VARCHAR widening (line 28) is binary-coercible and the autocommit block's
    // CONCURRENTLY index (line 37) runs outside the transaction: neither is reported.
    assert_eq!(r.phase, Phase::Contract);
    // Downgrade: drops what the upgrade added (data loss) and re-adds a NOT NULL
    // column without a default (fails).
    assert_eq!(r.downgrade.state, DownState::Fails);
    let down: Vec<_> = r
        .downgrade
        .findings
        .iter()
        .map(|f| (f.line, f.rule))
        .collect();
    assert!(down.contains(&(60, "downgrade-data-loss")), "{down:?}");
    assert!(down.contains(&(61, "downgrade-fails")), "{down:?}");
}

#[test]
fn alembic_not_valid_then_validate_across_autocommit_block() {
    let text = r#"
from alembic import op
revision = "c3"
down_revision = None

def upgrade():
    op.execute("SET lock_timeout = '2s'")
    op.create_foreign_key("fk", "orders", "users", ["user_id"], ["id"], postgresql_not_valid=True)
    with op.get_context().autocommit_block():
        op.execute("ALTER TABLE orders VALIDATE CONSTRAINT fk")

def downgrade():
    op.drop_constraint("fk", "orders")
"#;
    let r = run("versions/c3.py", text);
    assert!(r.upgrade.findings.is_empty(), "{:?}", r.upgrade.findings);
    assert_eq!(r.down_revision, Some(vec![]));
    assert_eq!(r.downgrade.state, DownState::Ok);
    let same_tx = text.replace(
        "    with op.get_context().autocommit_block():\n        op.execute",
        "    op.execute",
    );
    let r = run("versions/c3.py", &same_tx);
    assert!(
        r.upgrade
            .findings
            .iter()
            .any(|f| f.rule == "validate-in-same-transaction")
    );
}

#[test]
fn alembic_batch_recreate_and_execute_commit() {
    let text = r#"
from alembic import op
def upgrade():
    with op.batch_alter_table("users", recreate="always") as b:
        b.alter_column("name", nullable=True)
    op.execute("COMMIT")
    op.create_index("i", "users", ["x"], postgresql_concurrently=True, if_not_exists=True)
def downgrade():
    pass
"#;
    let r = run("versions/d4.py", text);
    let rules: Vec<_> = r.upgrade.findings.iter().map(|f| f.rule).collect();
    assert!(rules.contains(&"batch-recreate-table"), "{rules:?}");
    assert!(rules.contains(&"drop-not-null"), "{rules:?}");
    assert!(rules.contains(&"transaction-nesting"), "{rules:?}");
    // The driver reopens a transaction after COMMIT, so CONCURRENTLY still fails.
    assert!(rules.contains(&"concurrently-in-transaction"), "{rules:?}");
    assert_eq!(r.downgrade.state, DownState::Empty);
}

#[test]
fn alembic_syntax_error_is_an_unknown_finding_with_its_line() {
    let text = "from alembic import op\n\ndef upgrade():\n    op.drop_column('users', 'x'\n\ndef downgrade():\n    pass\n";
    let r = run("versions/e5.py", text);
    assert!(
        r.upgrade.findings.iter().any(|f| f.rule == "parse-error"),
        "{:?}",
        r.upgrade.findings
    );
}

#[test]
fn alembic_downgrade_states() {
    let base = "from alembic import op\nimport sqlalchemy as sa\ndef upgrade():\n    op.add_column('users', sa.Column('x', sa.Text()))\n";
    let missing = run("versions/a.py", base);
    assert_eq!(missing.downgrade.state, DownState::Missing);
    assert!(
        missing
            .downgrade
            .findings
            .iter()
            .any(|f| f.rule == "downgrade-missing")
    );
    let empty = run(
        "versions/a.py",
        &format!("{base}def downgrade():\n    pass\n"),
    );
    assert_eq!(empty.downgrade.state, DownState::Empty);
    let loss = run(
        "versions/a.py",
        &format!("{base}def downgrade():\n    op.drop_column('users', 'x')\n"),
    );
    assert_eq!(loss.downgrade.state, DownState::DataLoss);
    assert_eq!(loss.phase, Phase::Expand);
    let irreversible = run(
        "versions/a.py",
        &format!("{base}def downgrade():\n    raise NotImplementedError('one way')\n"),
    );
    assert_eq!(irreversible.downgrade.state, DownState::Missing);
    assert!(
        irreversible
            .downgrade
            .findings
            .iter()
            .any(|f| f.rule == "downgrade-irreversible")
    );
    let ok = run(
        "versions/a.py",
        "from alembic import op\ndef upgrade():\n    op.create_table('t')\ndef downgrade():\n    op.drop_table('t')\n",
    );
    // Dropping the table the upgrade created still loses rows written since.
    assert_eq!(ok.downgrade.state, DownState::DataLoss);
    let unknown = run(
        "versions/a.py",
        &format!("{base}def downgrade():\n    op.execute(build_sql())\n"),
    );
    assert_eq!(unknown.downgrade.state, DownState::Unknown);
}

#[test]
fn a_downgrade_of_only_statements_that_change_nothing_is_empty() {
    // Regression: `SELECT 1;` or `SET ...;` in a down file was judged `ok`, though a
    // rollback through it leaves the upgrade's schema in place.
    let up = src(
        "m/1_nick.up.sql",
        "SET lock_timeout = '1s';\nALTER TABLE users ADD COLUMN nick text;",
    );
    let state = |down: &str| {
        let r = run_files(
            vec![up.clone(), src("m/1_nick.down.sql", down)],
            &Settings::default(),
        );
        (r.files[0].downgrade.state, rules_of_down(&r.files[0]))
    };
    for down in [
        "SELECT 1;",
        "-- nothing to undo\nSET search_path = app;\nSELECT 1;",
        "BEGIN;\nSET lock_timeout = '1s';\nSELECT 1 AS done;\nCOMMIT;",
        "ANALYZE users;",
    ] {
        assert_eq!(
            state(down),
            (DownState::Empty, vec![("downgrade-empty", 1)]),
            "{down}"
        );
    }
    // A SELECT that calls a function may undo something: not judged empty.
    assert_eq!(state("SELECT undo_nick();").0, DownState::Ok);
    assert_eq!(
        state("ALTER TABLE users DROP COLUMN nick;").0,
        DownState::DataLoss
    );
    // When the upgrade leaves nothing to undo either, its downgrade is not empty.
    for up in [
        "SELECT 1;",
        "ALTER TABLE users VALIDATE CONSTRAINT users_email_nn;",
        "-- no-transaction\nREINDEX INDEX CONCURRENTLY users_email_idx;",
    ] {
        let r = run_files(
            vec![src("m/2_x.up.sql", up), src("m/2_x.down.sql", "SELECT 1;")],
            &Settings::default(),
        );
        assert_eq!(r.files[0].downgrade.state, DownState::Ok, "{up}");
    }

    // Alembic: a docstring, logging, `pass`, a bind and a SELECT undo nothing either.
    let base = "from alembic import op\nimport logging\nimport sqlalchemy as sa\nlog = logging.getLogger(__name__)\ndef upgrade():\n    op.add_column('users', sa.Column('x', sa.Text()))\n";
    for body in [
        "    \"\"\"Nothing to undo.\"\"\"\n    log.info('downgrade skipped')\n    print('skipped')\n    pass\n",
        "    conn = op.get_bind()\n    op.execute('SELECT 1')\n    op.execute(sa.text('SET search_path = app'))\n",
    ] {
        let r = run("versions/a.py", &format!("{base}def downgrade():\n{body}"));
        assert_eq!(r.downgrade.state, DownState::Empty, "{body}");
        assert_eq!(rules_of_down(&r), vec![("downgrade-empty", 7)], "{body}");
    }
}

fn rules_of_down(f: &FileReport) -> Vec<(&'static str, usize)> {
    f.downgrade
        .findings
        .iter()
        .map(|x| (x.rule, x.line))
        .collect()
}

const ALEMBIC_MORE: &str = r#"from alembic import op
import sqlalchemy as sa
revision = "g7"
down_revision = "b2"

def upgrade():
    op.execute("SET lock_timeout = '2s'")
    op.drop_index("users_email_idx", table_name="users")
    op.create_primary_key("accounts_pk", "accounts", ["id"])
    op.create_exclude_constraint("no_overlap", "rooms", ("during", "&&"), using="gist")
    roles = sa.table("roles", sa.column("id", sa.Integer))
    op.bulk_insert(roles, [{"id": 1}, {"id": 2}])
    op.create_sequence("order_seq")
    with op.get_context().autocommit_block():
        op.create_sequence("invoice_seq")
        op.create_sequence("receipt_seq", if_not_exists=True)
        op.drop_sequence("old_seq")
        op.drop_sequence("older_seq", if_exists=True)
        op.drop_index("users_nick_idx", postgresql_concurrently=True, if_exists=True)
    op.get_bind().exec_driver_sql("ALTER TABLE users RENAME COLUMN a TO b")
    conn = op.get_bind()
    conn.exec_driver_sql("UPDATE users SET c = 1")
    op.execute(
        sa.text("UPDATE users SET tier = :tier WHERE tier IS NULL").bindparams(tier="free")
    )

def downgrade():
    op.drop_constraint("accounts_pk", "accounts")
"#;

#[test]
fn alembic_more_op_forms() {
    let r = run("alembic/versions/g7_more.py", ALEMBIC_MORE);
    let got: BTreeSet<(usize, &str)> = r
        .upgrade
        .findings
        .iter()
        .map(|f| (f.line, f.rule))
        .collect();
    let want: BTreeSet<(usize, &str)> = [
        (8, "drop-index-without-concurrently"),
        (9, "add-primary-key"),
        (10, "add-exclusion-constraint"),
        (12, "backfill-in-migration"),
        // In the transaction a sequence needs no IF NOT EXISTS; in the autocommit block
        // it does, and so does a drop.
        (15, "not-idempotent"),
        (17, "not-idempotent"),
        (20, "rename-column"),
        (22, "backfill-in-migration"),
        // The SQL inside sa.text(...).bindparams(...) is parsed, not reported unknown.
        (24, "backfill-in-migration"),
    ]
    .into_iter()
    .collect();
    let missing: Vec<_> = want.difference(&got).collect();
    let extra: Vec<_> = got.difference(&want).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}\nextra {extra:?}"
    );
    // Dropping a sequence old code may use, and renaming a column, contract.
    assert_eq!(r.phase, Phase::Contract);
    assert_eq!(r.downgrade.state, DownState::Ok);
}

// ---------------------------------------------------------------- phases

#[test]
fn phases() {
    assert_eq!(
        run("m.sql", "ALTER TABLE users ADD COLUMN x int;").phase,
        Phase::Expand
    );
    assert_eq!(
        run("m.sql", "UPDATE users SET x = 1;").phase,
        Phase::Migrate
    );
    assert_eq!(
        run("m.sql", "ALTER TABLE users DROP COLUMN x;").phase,
        Phase::Contract
    );
    assert_eq!(run("m.sql", "FROBNICATE;").phase, Phase::Unknown);
    let r = run(
        "m.sql",
        "ALTER TABLE users ADD COLUMN x int;\nALTER TABLE users DROP COLUMN y;",
    );
    assert_eq!(r.phase, Phase::Contract);
    assert_eq!(r.phase_reason.map(|p| p.line), Some(2));
}

// ---------------------------------------------------------------- layouts

#[test]
fn layouts_pair_up_and_down() {
    let files = vec![
        src(
            "diesel/2024-01-01-000000_add/up.sql",
            "ALTER TABLE users ADD COLUMN x int;",
        ),
        src(
            "diesel/2024-01-01-000000_add/down.sql",
            "ALTER TABLE users DROP COLUMN x;",
        ),
        src("gm/10_b.up.sql", "SELECT 1;"),
        src("gm/9_a.up.sql", "ALTER TABLE users ADD COLUMN y int;"),
        src("gm/9_a.down.sql", ""),
        src("fw/V1_1__init.sql", "CREATE TABLE t (id int);"),
        src("fw/U1_1__init.sql", "DROP TABLE t;"),
        src("plain/001.sql", "CREATE TABLE p (id int);"),
        src(
            "dbmate/20240101_x.sql",
            "-- migrate:up\nALTER TABLE users ADD COLUMN z int NOT NULL;\n\n-- migrate:down\nALTER TABLE users DROP COLUMN z;\n",
        ),
        src(
            "alembic/versions/2.py",
            "revision = '2'\ndown_revision = '1'\ndef upgrade():\n    pass\ndef downgrade():\n    pass\n",
        ),
        src(
            "alembic/versions/1.py",
            "revision = '1'\ndown_revision = None\ndef upgrade():\n    pass\ndef downgrade():\n    pass\n",
        ),
        src("alembic/env.py", "def run_migrations_online(): pass\n"),
        src("README.md", "not a migration"),
    ];
    let plan = plan(files);
    let got: Vec<(&str, Layout, bool)> = plan
        .iter()
        .map(|m| (m.path.as_str(), m.layout, m.down.is_some()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("dbmate/20240101_x.sql", Layout::Sections, true),
            ("diesel/2024-01-01-000000_add/up.sql", Layout::Diesel, true),
            ("fw/V1_1__init.sql", Layout::Flyway, true),
            ("gm/9_a.up.sql", Layout::GolangMigrate, true),
            ("gm/10_b.up.sql", Layout::GolangMigrate, false),
            ("plain/001.sql", Layout::Plain, false),
            ("alembic/versions/1.py", Layout::Alembic, true),
            ("alembic/versions/2.py", Layout::Alembic, true),
        ]
    );
    let report = check(&plan, &Settings::default());
    let state = |p: &str| {
        report
            .files
            .iter()
            .find(|f| f.path == p)
            .map(|f| f.downgrade.state)
    };
    assert_eq!(
        state("diesel/2024-01-01-000000_add/up.sql"),
        Some(DownState::DataLoss)
    );
    assert_eq!(state("gm/9_a.up.sql"), Some(DownState::Empty));
    assert_eq!(state("fw/V1_1__init.sql"), Some(DownState::DataLoss));
    assert_eq!(state("plain/001.sql"), Some(DownState::Missing));
    let dbmate = report
        .files
        .iter()
        .find(|f| f.path.starts_with("dbmate"))
        .unwrap();
    assert_eq!(
        dbmate
            .upgrade
            .findings
            .iter()
            .find(|f| f.rule == "add-not-null-column-without-default")
            .map(|f| f.line),
        Some(2)
    );
    assert_eq!(
        dbmate
            .downgrade
            .findings
            .iter()
            .find(|f| f.rule == "downgrade-data-loss")
            .map(|f| f.line),
        Some(5)
    );
    let diesel = report
        .files
        .iter()
        .find(|f| f.path.starts_with("diesel"))
        .unwrap();
    assert_eq!(
        diesel.downgrade.path.as_deref(),
        Some("diesel/2024-01-01-000000_add/down.sql")
    );
}

#[test]
fn orphan_down_file_is_not_silent() {
    let r = run("gm/3_c.down.sql", "DROP TABLE t;");
    assert!(
        r.upgrade
            .findings
            .iter()
            .any(|f| f.rule == "unknown-statement")
    );
}

// ---------------------------------------------------------------- suppressions

#[test]
fn suppressions_need_a_reason() {
    let with = run(
        "m.sql",
        "SET lock_timeout = '1s';\n-- ripcord:allow drop-column because the column was unused since v41\nALTER TABLE users DROP COLUMN legacy;",
    );
    assert!(
        with.upgrade.findings.is_empty(),
        "{:?}",
        with.upgrade.findings
    );
    assert_eq!(with.upgrade.suppressed.len(), 1);
    assert_eq!(
        with.upgrade.suppressed[0].reason,
        "the column was unused since v41"
    );

    let same_line = run(
        "m.sql",
        "SET lock_timeout = '1s';\nALTER TABLE users DROP COLUMN legacy; -- ripcord:allow drop-column because unused",
    );
    assert!(
        same_line.upgrade.findings.is_empty(),
        "{:?}",
        same_line.upgrade.findings
    );

    let without = run(
        "m.sql",
        "SET lock_timeout = '1s';\n-- ripcord:allow drop-column\nALTER TABLE users DROP COLUMN legacy;",
    );
    let rules: Vec<_> = without
        .upgrade
        .findings
        .iter()
        .map(|f| (f.line, f.rule))
        .collect();
    assert_eq!(
        rules,
        vec![(2, "suppression-without-reason"), (3, "drop-column")]
    );

    let unknown = run(
        "m.sql",
        "-- ripcord:allow no-such-rule because reasons\nSELECT 1;",
    );
    assert!(
        unknown
            .upgrade
            .findings
            .iter()
            .any(|f| f.rule == "suppression-unknown-rule")
    );
}

#[test]
fn python_suppressions_cover_the_call_and_sql_inside_it() {
    let text = r#"from alembic import op
def upgrade():
    op.execute("SET lock_timeout = '1s'")
    # ripcord: allow drop-column because nothing reads it since release 41
    op.drop_column("users", "legacy")
    # ripcord: allow create-index-without-concurrently because the table has 10 rows
    op.execute("""
        CREATE INDEX small_idx ON users (x)
    """)
    op.drop_column("users", "other")  # ripcord: allow drop-column
def downgrade():
    pass
"#;
    let r = run("versions/f.py", text);
    let rules: Vec<_> = r
        .upgrade
        .findings
        .iter()
        .map(|f| (f.line, f.rule))
        .collect();
    assert_eq!(
        rules,
        vec![(10, "drop-column"), (10, "suppression-without-reason")]
    );
    assert_eq!(r.upgrade.suppressed.len(), 2);
}

// ---------------------------------------------------------------- output

fn sample_report() -> Report {
    let files = vec![
        src(
            "migrations/2024-05-01_add_tier/up.sql",
            "ALTER TABLE users ADD COLUMN tier text NOT NULL;\nCREATE INDEX users_tier_idx ON users (tier);\n",
        ),
        src(
            "migrations/2024-05-01_add_tier/down.sql",
            "ALTER TABLE users DROP COLUMN tier;\n",
        ),
        src(
            "alembic/versions/a1_drop_legacy.py",
            "\"\"\"drop legacy\n\"\"\"\nfrom alembic import op\nimport sqlalchemy as sa\n\nrevision = \"a1\"\ndown_revision = None\n\n\ndef upgrade():\n    op.execute(\"SET lock_timeout = '2s'\")\n    op.drop_column(\"users\", \"legacy\")\n\n\ndef downgrade():\n    op.add_column(\"users\", sa.Column(\"legacy\", sa.Text(), nullable=False))\n",
        ),
    ];
    run_files(files, &Settings::default())
}

#[test]
fn snapshot_text() {
    insta::assert_snapshot!("text", render_text(&sample_report()));
}

#[test]
fn snapshot_json() {
    let json = serde_json::to_string_pretty(&render_json(&sample_report())).unwrap_or_default();
    insta::assert_snapshot!("json", json);
}

#[test]
fn snapshot_github() {
    insta::assert_snapshot!("github", render_github(&sample_report()));
}

#[test]
fn json_shape_is_the_promised_one() {
    let v = render_json(&sample_report());
    let f = &v["files"][0];
    for key in ["path", "kind", "phase", "upgrade", "downgrade"] {
        assert!(f.get(key).is_some(), "{key}");
    }
    assert!(f["downgrade"]["state"].is_string());
    let finding = &f["upgrade"]["findings"][0];
    for key in ["rule", "severity", "line", "risk", "message", "fix"] {
        assert!(finding.get(key).is_some(), "{key}");
    }
    assert_eq!(v["files"][1]["revision"], "a1");
    assert_eq!(exit_code(&sample_report()), 1);
    assert_eq!(exit_code(&Report { files: vec![] }), 0);
}

#[test]
fn discover_reads_sql_and_py_and_names_missing_paths() {
    let dir = tempfile::tempdir().expect("tempdir");
    let versions = dir.path().join("versions");
    std::fs::create_dir_all(&versions).expect("mkdir");
    std::fs::write(versions.join("a.py"), "def upgrade():\n    pass\n").expect("write");
    std::fs::write(dir.path().join("1.sql"), "SELECT 1;").expect("write");
    std::fs::write(dir.path().join("notes.txt"), "x").expect("write");
    let files = discover::read_paths(&[dir.path().to_path_buf()]).expect("read");
    assert_eq!(files.len(), 2);
    let missing = dir.path().join("nope");
    let err = discover::read_paths(std::slice::from_ref(&missing)).expect_err("missing");
    assert!(err.to_string().contains(&missing.display().to_string()));
}

// ---------------------------------------------------------------- never panics

fn sql_fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("ALTER TABLE users ADD COLUMN c int NOT NULL DEFAULT random();".to_string()),
        Just("CREATE INDEX CONCURRENTLY i ON t (c);".to_string()),
        Just("BEGIN;".to_string()),
        Just("COMMIT;".to_string()),
        Just("DO $$ BEGIN ".to_string()),
        Just("$$;".to_string()),
        Just("'".to_string()),
        Just("/*".to_string()),
        Just("-- ripcord:allow ".to_string()),
        Just("E'\\'".to_string()),
        Just("$a$".to_string()),
        Just("\n".to_string()),
        "[ -~]{0,20}",
    ]
}

fn py_fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("def upgrade():\n".to_string()),
        Just("def downgrade():\n".to_string()),
        Just("    op.add_column('t', sa.Column('c', sa.Text(), nullable=False))\n".to_string()),
        Just("    with op.batch_alter_table('t') as b:\n".to_string()),
        Just("        b.drop_column('c')\n".to_string()),
        Just("    op.execute(\"\"\"".to_string()),
        Just("\"\"\")\n".to_string()),
        Just("    with op.get_context().autocommit_block():\n".to_string()),
        Just("    # ripcord: allow drop-column\n".to_string()),
        Just("(".to_string()),
        "[ -~\n]{0,20}",
    ]
}

proptest! {
    #[test]
    fn check_never_panics_on_arbitrary_text(text in "\\PC*") {
        for path in ["x.sql", "versions/x.py", "d/up.sql", "1_a.down.sql"] {
            let r = run_files(vec![src(path, &text)], &Settings::default());
            let _ = render_text(&r);
            let _ = render_json(&r);
            let _ = render_github(&r);
        }
    }

    #[test]
    fn check_never_panics_on_sql_like_text(parts in proptest::collection::vec(sql_fragment(), 0..30)) {
        let text = parts.concat();
        let r = run_files(vec![src("x.sql", &text)], &Settings::default());
        // Never silent: a file with a statement produces a finding or an understood op.
        prop_assert_eq!(r.files.len(), 1);
    }

    #[test]
    fn check_never_panics_on_python_like_text(parts in proptest::collection::vec(py_fragment(), 0..30)) {
        let text = parts.concat();
        let r = run_files(vec![src("versions/x.py", &format!("def upgrade():\n{text}"))], &Settings::default());
        prop_assert_eq!(r.files.len(), 1);
    }
}

#[test]
fn deeply_nested_input_does_not_overflow_the_stack() {
    let deep = format!("{}1{}", "(".repeat(20_000), ")".repeat(20_000));
    let _ = run("x.sql", &format!("SELECT {deep};"));
    let _ = run(
        "versions/x.py",
        &format!("def upgrade():\n    op.execute({deep})\n    x = {deep}\n"),
    );
    let nested_text = format!(
        "{}'SELECT 1'{}",
        "sa.text(".repeat(2_000),
        ")".repeat(2_000)
    );
    let _ = run(
        "versions/y.py",
        &format!("def upgrade():\n    op.execute({nested_text})\n"),
    );
}

#[test]
fn alembic_typed_header_of_the_current_template() {
    let text = r#""""add x

Revision ID: 3f2a
Revises: 1b9c
Create Date: 2024-05-01
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa

revision: str = "3f2a"
down_revision: Union[str, None] = "1b9c"
branch_labels: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    # ### commands auto generated by Alembic - please adjust! ###
    op.add_column("users", sa.Column("x", sa.Integer(), nullable=True))
    # ### end Alembic commands ###


def downgrade() -> None:
    op.drop_column("users", "x")
"#;
    let r = run("alembic/versions/3f2a_add_x.py", text);
    assert_eq!(r.revision.as_deref(), Some("3f2a"));
    assert_eq!(r.down_revision, Some(vec!["1b9c".to_string()]));
    assert_eq!(r.phase, Phase::Expand);
    assert_eq!(r.downgrade.state, DownState::DataLoss);
    let merge = run(
        "versions/m.py",
        "revision = 'm'\ndown_revision = ('a', 'b')\ndef upgrade():\n    pass\ndef downgrade():\n    pass\n",
    );
    assert_eq!(
        merge.down_revision,
        Some(vec!["a".to_string(), "b".to_string()])
    );
    assert_eq!(merge.downgrade.state, DownState::Ok);
}

// ---------------------------------------------------------------- schema memory

fn rules_of(f: &FileReport) -> Vec<(&'static str, usize)> {
    f.upgrade
        .findings
        .iter()
        .map(|x| (x.rule, x.line))
        .collect()
}

fn messages(f: &FileReport, rule: &str) -> Vec<String> {
    f.upgrade
        .findings
        .iter()
        .filter(|x| x.rule == rule)
        .map(|x| x.message.clone())
        .collect()
}

#[test]
fn dropping_a_column_names_exactly_the_indexes_on_it() {
    // The schema remembers indexes per table and column: the drop names the indexes of
    // that table on that column (however the names were spelled), not those of another
    // table, not a dropped index, and not an index that went away with an earlier drop.
    let files = vec![
        src(
            "m/1_idx.up.sql",
            "-- no-transaction\nCREATE INDEX CONCURRENTLY IF NOT EXISTS users_email_idx ON users (\"Email\");\nCREATE INDEX CONCURRENTLY IF NOT EXISTS users_name_email_idx ON public.users (name, email);\nCREATE INDEX CONCURRENTLY IF NOT EXISTS orders_email_idx ON orders (email);\nCREATE INDEX CONCURRENTLY IF NOT EXISTS users_gone_idx ON users (email);\nCREATE INDEX CONCURRENTLY IF NOT EXISTS users_name_idx ON users (name);",
        ),
        src(
            "m/2_gone.up.sql",
            "DROP INDEX CONCURRENTLY IF EXISTS users_gone_idx;",
        ),
        src(
            "m/3_drop.up.sql",
            "SET lock_timeout = '1s';\nALTER TABLE users DROP COLUMN email;",
        ),
        src(
            "m/4_readd.up.sql",
            "SET lock_timeout = '1s';\nALTER TABLE users ADD COLUMN email text;",
        ),
        src(
            "m/5_drop_again.up.sql",
            "SET lock_timeout = '1s';\nALTER TABLE users DROP COLUMN email;",
        ),
        src(
            "m/6_drop_name.up.sql",
            "SET lock_timeout = '1s';\nALTER TABLE users DROP COLUMN name;",
        ),
    ];
    let r = run_files(files, &Settings::default());
    assert_eq!(
        messages(&r.files[2], "implicit-drop"),
        vec!["dropping users.email also drops index users_email_idx, users_name_email_idx"]
    );
    assert_eq!(messages(&r.files[4], "implicit-drop"), Vec::<String>::new());
    // users_name_email_idx went with email; users_name_idx is still there.
    assert_eq!(
        messages(&r.files[5], "implicit-drop"),
        vec!["dropping users.name also drops index users_name_idx"]
    );
}

#[test]
fn many_drops_over_many_indexes_stay_correct() {
    // The shape of the benchmark that was quadratic: every migration indexes one table
    // and drops a column of it. Each drop must name only the index on its own column.
    let mut files = Vec::new();
    for i in 0..300 {
        files.push(src(
            &format!("m/{i}_x.up.sql"),
            &format!(
                "CREATE INDEX CONCURRENTLY IF NOT EXISTS i{i} ON t{} (c{i}); ALTER TABLE t{} DROP COLUMN d{i};",
                i % 7,
                i % 7
            ),
        ));
    }
    files.push(src(
        "m/1000_last.up.sql",
        "SET lock_timeout = '1s';\nALTER TABLE t3 DROP COLUMN c10;",
    ));
    let r = run_files(files, &Settings::default());
    assert_eq!(r.files.len(), 301);
    assert!(
        r.files[..300]
            .iter()
            .all(|f| messages(f, "implicit-drop").is_empty())
    );
    assert_eq!(
        messages(&r.files[300], "implicit-drop"),
        vec!["dropping t3.c10 also drops index i10"]
    );
}

// ---------------------------------------------------------------- runners

#[test]
fn flyway_runs_a_migration_with_a_non_transactional_statement_outside_a_transaction() {
    let r = run_files(
        vec![
            src(
                "db/V1__idx.sql",
                "CREATE INDEX CONCURRENTLY IF NOT EXISTS users_email_idx ON users (email);",
            ),
            src(
                "db/U1__idx.sql",
                "DROP INDEX CONCURRENTLY IF EXISTS users_email_idx;",
            ),
            src("db/V2__vacuum.sql", "VACUUM users;"),
            src(
                "db/V3__unique.sql",
                "CREATE UNIQUE INDEX CONCURRENTLY users_nick_idx ON users (nick);",
            ),
        ],
        &Settings::default(),
    );
    assert_eq!(rules_of(&r.files[0]), vec![]);
    assert_eq!(r.files[0].downgrade.state, DownState::Ok);
    assert!(r.files[0].downgrade.findings.is_empty());
    assert_eq!(rules_of(&r.files[1]), vec![]);
    // Outside a transaction, a failed build is not rolled back.
    assert_eq!(rules_of(&r.files[2]), vec![("not-idempotent", 1)]);
}

#[test]
fn flyway_mixing_both_kinds_of_statement_is_reported_as_such() {
    let r = run_files(
        vec![src(
            "db/V1__mixed.sql",
            "SET lock_timeout = '2s';\nCREATE INDEX CONCURRENTLY IF NOT EXISTS users_email_idx ON users (email);",
        )],
        &Settings::default(),
    );
    let f = &r.files[0];
    assert_eq!(rules_of(f), vec![("transaction-nesting", 2)]);
    let msg = &messages(f, "transaction-nesting")[0];
    assert!(msg.contains("Flyway") && msg.contains("mixed"), "{msg}");
}

#[test]
fn flyway_keeps_a_transaction_for_what_it_does_not_detect() {
    // Flyway detects REINDEX SCHEMA/DATABASE/SYSTEM, not REINDEX INDEX CONCURRENTLY: it
    // runs that file in a transaction, where PostgreSQL refuses it.
    let r = run_files(
        vec![src(
            "db/V1__reindex.sql",
            "REINDEX INDEX CONCURRENTLY users_email_idx;",
        )],
        &Settings::default(),
    );
    assert_eq!(
        rules_of(&r.files[0]),
        vec![("concurrently-in-transaction", 1)]
    );
    // ALTER TYPE ... ADD VALUE is non-transactional for Flyway only before PostgreSQL 12.
    let old = Settings {
        pg_version: 11,
        ..Settings::default()
    };
    let r = run_files(
        vec![src("db/V1__enum.sql", "ALTER TYPE mood ADD VALUE 'ok';")],
        &old,
    );
    // Outside a transaction, only IF NOT EXISTS lets a retry pass the value it added.
    assert_eq!(rules_of(&r.files[0]), vec![("not-idempotent", 1)]);
}

fn diesel_files(metadata: Option<&str>) -> Vec<SourceFile> {
    let mut files = vec![
        src(
            "migrations/2024-01-01-000000_idx/up.sql",
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS users_email_idx ON users (email);",
        ),
        src(
            "migrations/2024-01-01-000000_idx/down.sql",
            "DROP INDEX CONCURRENTLY IF EXISTS users_email_idx;",
        ),
    ];
    if let Some(m) = metadata {
        files.push(src("migrations/2024-01-01-000000_idx/metadata.toml", m));
    }
    files
}

#[test]
fn diesel_metadata_run_in_transaction_false_is_honoured() {
    let r = run_files(
        diesel_files(Some("run_in_transaction = false\n")),
        &Settings::default(),
    );
    assert_eq!(r.files.len(), 1, "metadata.toml is not a migration");
    let f = &r.files[0];
    assert_eq!(rules_of(f), vec![]);
    assert!(
        f.downgrade.findings.is_empty(),
        "{:?}",
        f.downgrade.findings
    );
    assert_eq!(f.downgrade.state, DownState::Ok);

    // diesel reads a valid file without the key as `false` too (serde's default for
    // the field), and only falls back to a transaction when the file does not parse.
    let r = run_files(diesel_files(Some("# no settings\n")), &Settings::default());
    assert_eq!(rules_of(&r.files[0]), vec![]);

    // Without it (or with it true, or unreadable, as diesel reads it) both run in one.
    for metadata in [
        None,
        Some("run_in_transaction = true\n"),
        Some("run_in_transaction = \"false\"\n"),
        Some("not toml at all ["),
    ] {
        let r = run_files(diesel_files(metadata), &Settings::default());
        let f = &r.files[0];
        assert_eq!(
            rules_of(f),
            vec![("concurrently-in-transaction", 1)],
            "{metadata:?}"
        );
        assert_eq!(f.downgrade.state, DownState::Fails, "{metadata:?}");
    }
}

#[test]
fn diesel_without_a_transaction_still_sends_one_query_string() {
    // diesel runs up.sql with one batch_execute: several statements in one query string
    // are an implicit transaction, which CONCURRENTLY refuses.
    let mut files = diesel_files(Some("run_in_transaction = false\n"));
    files[0].text = "SET lock_timeout = '2s';\nCREATE INDEX CONCURRENTLY IF NOT EXISTS users_email_idx ON users (email);".into();
    let r = run_files(files, &Settings::default());
    let msgs = messages(&r.files[0], "concurrently-in-transaction");
    assert_eq!(msgs.len(), 1);
    assert!(msgs[0].contains("one query string"), "{}", msgs[0]);
}

#[test]
fn no_transaction_marker_still_works_for_diesel() {
    let mut files = diesel_files(None);
    for f in &mut files {
        f.text = format!("-- no-transaction\n{}", f.text);
    }
    let r = run_files(files, &Settings::default());
    assert_eq!(rules_of(&r.files[0]), vec![]);
    assert_eq!(r.files[0].downgrade.state, DownState::Ok);
}

#[test]
fn drop_database_has_its_own_rule() {
    check_rules("DROP DATABASE app;", &["drop-database"]);
    check_rules("DROP SCHEMA app;", &["drop-schema"]);
    let r = run("m.sql", "DROP DATABASE app;");
    assert_eq!(r.phase, Phase::Contract);
}

// ---------------------------------------------------------------- audit regressions

/// A revision whose upgrade nests `depth` `if` blocks, each indented one space more,
/// with a string literal at the bottom (the shape that aborted tree-sitter's scanner).
fn nested_ifs(depth: usize) -> String {
    let mut text = String::from("revision = \"r1\"\ndown_revision = None\n\ndef upgrade():\n");
    for level in 1..=depth {
        text.push_str(&" ".repeat(level));
        text.push_str("if x:\n");
    }
    text.push_str(&" ".repeat(depth + 1));
    text.push_str("y = 's'\n\ndef downgrade():\n    pass\n");
    text
}

#[test]
fn python_nested_600_levels_is_a_parse_error_not_an_abort() {
    // Regression: tree-sitter's Python scanner failed `length <= 1024` and aborted the
    // process on ~510 nested blocks.
    let r = run("versions/r1.py", &nested_ifs(600));
    let f = &r.upgrade.findings;
    assert_eq!(f.len(), 1, "{f:?}");
    // The 100th level (CPython's "too many levels of indentation") is on line 104.
    assert_eq!((f[0].rule, f[0].line), ("parse-error", 104));
    assert_eq!(f[0].risk, vec![Risk::Unknown]);
    assert!(f[0].message.contains("too many levels"), "{}", f[0].message);
    assert_eq!(r.phase, Phase::Unknown);
    assert_eq!(r.downgrade.state, DownState::Unknown);
}

#[test]
fn python_nested_as_deep_as_cpython_allows_is_parsed() {
    // upgrade()'s body and 98 blocks in it: 99 levels, CPython's most.
    let r = run("versions/r1.py", &nested_ifs(98));
    assert!(
        r.upgrade.findings.iter().all(|f| f.rule != "parse-error"),
        "{:?}",
        r.upgrade.findings
    );
    assert_eq!(r.revision.as_deref(), Some("r1"));
    // Lines inside brackets and strings are not indentation levels.
    let mut bracketed = String::from("def upgrade():\n    op.execute(\n");
    for level in 1..=200 {
        bracketed.push_str(&" ".repeat(level + 4));
        bracketed.push_str("\"x\"\n");
    }
    bracketed.push_str("    )\n");
    let r = run("versions/b.py", &bracketed);
    assert!(
        r.upgrade.findings.iter().all(|f| f.rule != "parse-error"),
        "{:?}",
        r.upgrade.findings
    );
}

#[test]
fn python_with_more_indentation_widths_than_tree_sitter_holds_is_not_parsed() {
    // The scanner's stack holds only increasing widths, so bounding the distinct widths
    // bounds it whatever error recovery does.
    let mut text = String::from("def upgrade():\n    op.execute(\"\"\"\n");
    for w in 1..=400 {
        text.push_str(&" ".repeat(w));
        text.push_str("x\n");
    }
    text.push_str("\"\"\")\n");
    let r = run("versions/w.py", &text);
    assert!(
        r.upgrade
            .findings
            .iter()
            .any(|f| f.rule == "parse-error" && f.message.contains("indentation widths")),
        "{:?}",
        r.upgrade.findings
    );
}

fn deep_indentation() -> impl Strategy<Value = String> {
    (
        0usize..700,
        1usize..4,
        prop_oneof![Just(" "), Just("\t"), Just(" \t")],
        prop_oneof![
            Just("y = 's'"),
            Just("op.execute(\"\"\"\nSELECT 1\n\"\"\")"),
            Just("(((["),
            Just("\\"),
            Just("'''"),
        ],
    )
        .prop_map(|(depth, step, unit, bottom)| {
            let mut text = String::from("def upgrade():\n");
            for level in 1..=depth {
                text.push_str(&unit.repeat(level * step));
                text.push_str(if level % 7 == 0 {
                    "with x:\n"
                } else {
                    "if x:\n"
                });
            }
            text.push_str(&unit.repeat((depth + 1) * step));
            text.push_str(bottom);
            text.push('\n');
            text
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn check_never_panics_on_deep_indentation(text in deep_indentation()) {
        let r = run_files(vec![src("versions/x.py", &text)], &Settings::default());
        prop_assert_eq!(r.files.len(), 1);
    }
}

/// Ordered migrations `N_name.up.sql` with a down file each.
fn golang(files: &[(&str, &str)]) -> Report {
    let mut out = Vec::new();
    for (name, up) in files {
        out.push(src(&format!("m/{name}.up.sql"), up));
        out.push(src(&format!("m/{name}.down.sql"), "SELECT 1;"));
    }
    run_files(out, &Settings::default())
}

#[test]
fn golang_migrate_file_wrapped_in_begin_commit_is_not_nesting() {
    // PostgreSQL turns the implicit transaction of a multi-statement query string into
    // an explicit one at a BEGIN, with no warning (tests/migration_transactions_pg.rs).
    let text =
        "BEGIN;\nSET LOCAL lock_timeout = '2s';\nALTER TABLE users ADD COLUMN y int;\nCOMMIT;\n";
    let r = run_files(
        vec![
            src("m/1_a.up.sql", text),
            src(
                "m/1_a.down.sql",
                "BEGIN;\nSET LOCAL lock_timeout = '2s';\nALTER TABLE users DROP COLUMN IF EXISTS y;\nCOMMIT;\n",
            ),
        ],
        &Settings::default(),
    );
    let f = &r.files[0];
    assert_eq!(rules_of(f), vec![], "{:?}", f.upgrade.findings);
    assert!(
        f.downgrade
            .findings
            .iter()
            .all(|x| x.rule != "transaction-nesting"),
        "{:?}",
        f.downgrade.findings
    );
    assert_ne!(f.downgrade.state, DownState::Fails);
    // diesel without its transaction sends the file the same way.
    let mut files = diesel_files(Some("run_in_transaction = false\n"));
    files[0].text = text.into();
    let r = run_files(files, &Settings::default());
    assert_eq!(rules_of(&r.files[0]), vec![]);
}

#[test]
fn golang_migrate_begin_inside_an_explicit_begin_is_still_nesting() {
    let r = golang(&[(
        "1_a",
        "BEGIN;\nSET LOCAL lock_timeout = '2s';\nBEGIN;\nALTER TABLE users ADD COLUMN y int;\nCOMMIT;\n",
    )]);
    let msgs = messages(&r.files[0], "transaction-nesting");
    assert_eq!(rules_of(&r.files[0]), vec![("transaction-nesting", 3)]);
    assert!(msgs[0].contains("an open BEGIN"), "{msgs:?}");
    // CONCURRENTLY in the explicit transaction, and after its COMMIT (the rest of the
    // query string is a new implicit transaction), still fails.
    let r = golang(&[(
        "1_a",
        "BEGIN;\nCREATE INDEX CONCURRENTLY IF NOT EXISTS i ON users (a);\nCOMMIT;\nCREATE INDEX CONCURRENTLY IF NOT EXISTS j ON users (b);\n",
    )]);
    assert_eq!(
        rules_of(&r.files[0])
            .into_iter()
            .filter(|(rule, _)| *rule != "missing-lock-timeout")
            .collect::<Vec<_>>(),
        vec![
            ("concurrently-in-transaction", 2),
            ("concurrently-in-transaction", 4)
        ]
    );
    let msgs = messages(&r.files[0], "concurrently-in-transaction");
    assert!(msgs[0].contains("an explicit BEGIN is open"), "{msgs:?}");
    assert!(msgs[1].contains("golang-migrate"), "{msgs:?}");
    // A BEGIN never committed leaves the transaction open after the file.
    let r = golang(&[(
        "1_a",
        "BEGIN;\nALTER TABLE users ADD COLUMN IF NOT EXISTS y int;\n",
    )]);
    let msgs = messages(&r.files[0], "transaction-nesting");
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    assert!(msgs[0].contains("left open"), "{msgs:?}");
}

#[test]
fn runners_that_open_their_own_transaction_still_see_begin_as_nesting() {
    let text =
        "BEGIN;\nSET LOCAL lock_timeout = '2s';\nALTER TABLE users ADD COLUMN y int;\nCOMMIT;\n";
    // dbmate and goose (sections or a plain file), diesel and Flyway send BEGIN before
    // the file, so its BEGIN is inside a transaction block.
    for path in [
        "m.sql",
        "m/V1__a.sql",
        "migrations/2024-01-01-000000_a/up.sql",
    ] {
        let r = run(path, text);
        assert!(
            rules_of(&r).contains(&("transaction-nesting", 1)),
            "{path}: {:?}",
            r.upgrade.findings
        );
    }
}

#[test]
fn do_body_blocks_are_not_transactions() {
    // Regression: a nested BEGIN ... END; in a PL/pgSQL body read as a transaction.
    let text = "SET lock_timeout = '2s';\nDO $$\nDECLARE n int;\nBEGIN\n  SELECT count(*) INTO n FROM users;\n  BEGIN\n    ALTER TABLE users DROP COLUMN legacy;\n  END;\nEND $$;";
    let r = golang(&[("3_c", text)]);
    assert_eq!(
        rules_of(&r.files[0])
            .into_iter()
            .filter(|(rule, _)| *rule != "unknown-statement")
            .collect::<Vec<_>>(),
        vec![("drop-column", 7)],
        "{:?}",
        r.files[0].upgrade.findings
    );
    // A nested block's handler is skipped, and what follows the block is still read.
    let text = "SET lock_timeout = '2s';\nDO $$\nBEGIN\n  BEGIN\n    ALTER TABLE users ADD COLUMN y int;\n  EXCEPTION WHEN duplicate_column THEN NULL;\n  END;\n  ALTER TABLE users DROP COLUMN z;\nEND $$;";
    let r = golang(&[("2_b", text)]);
    assert_eq!(
        rules_of(&r.files[0]),
        vec![("drop-column", 8), ("expand-and-contract", 8)]
    );
    assert_eq!(r.files[0].phase, Phase::Contract);
}

#[test]
fn unterminated_comment_or_quote_is_reported_where_it_opened() {
    // Regression: the rest of the file disappeared and the migration read as an expand.
    let r = run("m.sql", "/* forgot\nALTER TABLE users DROP COLUMN x;\n");
    assert_eq!(rules_of(&r), vec![("parse-error", 1)]);
    assert_eq!(r.upgrade.findings[0].risk, vec![Risk::Unknown]);
    assert_eq!(r.phase, Phase::Unknown);
    let r = run(
        "m.sql",
        "SELECT 1;\nALTER TABLE users\n  ADD COLUMN note text DEFAULT 'oops;\nSELECT 2;\n",
    );
    assert_eq!(rules_of(&r), vec![("parse-error", 3)]);
    assert!(
        r.upgrade.findings[0]
            .message
            .contains("string literal opened on this line")
            && r.upgrade.findings[0].message.contains("from line 2"),
        "{}",
        r.upgrade.findings[0].message
    );
    for (text, what) in [
        (
            "SELECT 1;\nDO $$ BEGIN\nALTER TABLE users DROP COLUMN x;\n",
            "dollar quote",
        ),
        (
            "SELECT 1;\nALTER TABLE \"users DROP COLUMN x;\n",
            "quoted identifier",
        ),
        (
            "SELECT 1; /* a /* nested */\nDROP TABLE users;\n",
            "/* comment",
        ),
    ] {
        let r = run("m.sql", text);
        let f = &r.upgrade.findings;
        assert!(
            f.iter()
                .any(|f| f.rule == "parse-error" && f.message.contains(what)),
            "{text}: {f:?}"
        );
    }
}

#[test]
fn bytes_that_are_not_utf8_are_reported_and_the_other_files_checked() {
    // Regression: one such file made the whole run exit 2.
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("1_a.up.sql"),
        b"SET lock_timeout = '2s';\nALTER TABLE users ADD COLUMN y int; -- caf\xe9\n",
    )
    .expect("write");
    std::fs::write(
        dir.path().join("2_b.up.sql"),
        "SET lock_timeout = '2s';\nALTER TABLE users DROP COLUMN z;\n",
    )
    .expect("write");
    let files = discover::read_paths(&[dir.path().to_path_buf()]).expect("read");
    let r = check(&plan(files), &Settings::default());
    assert_eq!(r.files.len(), 2);
    assert_eq!(rules_of(&r.files[0]), vec![("parse-error", 2)]);
    assert!(r.files[0].upgrade.findings[0].message.contains("UTF-8"));
    assert_eq!(rules_of(&r.files[1]), vec![("drop-column", 2)]);
    // The same in a revision file.
    let r = run(
        "versions/a.py",
        "def upgrade():\n    op.execute(\"SELECT 1\")  # caf\u{FFFD}\n\ndef downgrade():\n    pass\n",
    );
    assert_eq!(rules_of(&r), vec![("parse-error", 2)]);
}

#[test]
fn suppression_unknown_rule_fix_names_no_missing_command() {
    // Regression: the fix pointed at a `ripcord migrations rules` that does not exist
    // (tests/migration_check_cli.rs runs the commands fix texts name).
    let r = run(
        "m.sql",
        "-- ripcord:allow no-such-rule because testing\nSELECT 1;\n",
    );
    let f = &r.upgrade.findings;
    assert_eq!(f[0].rule, "suppression-unknown-rule");
    assert!(!f[0].fix.contains("migrations rules"), "{}", f[0].fix);
}

/// Only a block the migration's own language vouches for (Rails' `safety_assured`)
/// covers every rule; a comment cannot: `ripcord:allow *` names an unknown rule and
/// suppresses nothing.
#[test]
fn a_comment_cannot_allow_every_rule() {
    for text in [
        "SET lock_timeout = '1s';\n-- ripcord:allow * because trust me\nALTER TABLE users DROP COLUMN legacy;",
        "SET lock_timeout = '1s';\nALTER TABLE users DROP COLUMN legacy; -- ripcord:allow * because trust me",
    ] {
        let got = up_rules(text);
        assert!(
            got.contains("drop-column") && got.contains("suppression-unknown-rule"),
            "{text}: {got:?}"
        );
    }
}
