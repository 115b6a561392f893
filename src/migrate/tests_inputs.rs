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
