//! The checker's model of a golang-migrate file's transaction, against a real
//! PostgreSQL: golang-migrate sends the whole file as one query string (`psql -c` does
//! the same), whose statements PostgreSQL runs as one implicit transaction. A BEGIN in
//! it turns that into an explicit transaction without a word, a BEGIN inside that one
//! draws "there is already a transaction in progress", and after a COMMIT the rest of
//! the string is a new implicit transaction, which CONCURRENTLY still refuses.

mod pg_fixture;

use std::process::Command;

use ripcord::migrate::{Settings, SourceFile, check, plan};

/// Sends `script` as one query string; returns (success, stderr).
fn query_string(pg: &pg_fixture::Postgres, db: &str, script: &str) -> (bool, String) {
    let out = Command::new(pg.bin.join("psql"))
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1"])
        .args(["-h", pg.dir.path().to_str().unwrap(), "-U", "postgres"])
        .args(["-p", &pg.port.to_string(), "-d", db, "-c", script])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The checker's transaction-nesting and concurrently-in-transaction findings (rule,
/// line) for `script` as a golang-migrate up file.
fn checker(script: &str) -> Vec<(&'static str, usize)> {
    let files = vec![
        SourceFile {
            path: "m/1_x.up.sql".into(),
            text: script.into(),
        },
        SourceFile {
            path: "m/1_x.down.sql".into(),
            text: "SELECT 1;".into(),
        },
    ];
    let report = check(&plan(files), &Settings::default());
    report.files[0]
        .upgrade
        .findings
        .iter()
        .filter(|f| f.rule == "transaction-nesting" || f.rule == "concurrently-in-transaction")
        .map(|f| (f.rule, f.line))
        .collect()
}

#[test]
fn golang_migrate_transactions_match_postgres() {
    let pg = pg_fixture::start();
    pg.sql("postgres", "CREATE DATABASE app");
    pg.sql("app", "CREATE TABLE users (id int, a int, b int)");

    // A file wrapped in BEGIN ... COMMIT: no warning, no error, and no finding.
    let wrapped =
        "BEGIN;\nSET LOCAL lock_timeout = '2s';\nALTER TABLE users ADD COLUMN c int;\nCOMMIT;";
    let (ok, stderr) = query_string(&pg, "app", wrapped);
    assert!(ok && !stderr.contains("WARNING"), "{stderr}");
    assert_eq!(checker(wrapped), vec![]);

    // A BEGIN inside that explicit transaction: PostgreSQL warns, the checker reports.
    let nested = "BEGIN;\nALTER TABLE users ADD COLUMN d int;\nBEGIN;\nALTER TABLE users ADD COLUMN e int;\nCOMMIT;";
    let (ok, stderr) = query_string(&pg, "app", nested);
    assert!(
        ok && stderr.contains("there is already a transaction in progress"),
        "{stderr}"
    );
    assert_eq!(checker(nested), vec![("transaction-nesting", 3)]);

    // After the COMMIT the rest of the string is an implicit transaction again.
    let after = "BEGIN;\nALTER TABLE users ADD COLUMN f int;\nCOMMIT;\nCREATE INDEX CONCURRENTLY IF NOT EXISTS users_a ON users (a);";
    let (ok, stderr) = query_string(&pg, "app", after);
    assert!(
        !ok && stderr.contains("cannot run inside a transaction block"),
        "{stderr}"
    );
    assert_eq!(checker(after), vec![("concurrently-in-transaction", 4)]);

    // And inside the explicit one it fails too.
    let inside = "BEGIN;\nCREATE INDEX CONCURRENTLY IF NOT EXISTS users_b ON users (b);\nCOMMIT;";
    let (ok, stderr) = query_string(&pg, "app", inside);
    assert!(
        !ok && stderr.contains("cannot run inside a transaction block"),
        "{stderr}"
    );
    assert_eq!(checker(inside), vec![("concurrently-in-transaction", 2)]);

    // A DO body's own BEGIN ... END blocks are no transactions.
    let do_body = "SET lock_timeout = '2s';\nDO $$\nBEGIN\n  BEGIN\n    ALTER TABLE users ADD COLUMN g int;\n  EXCEPTION WHEN duplicate_column THEN NULL;\n  END;\nEND $$;";
    let (ok, stderr) = query_string(&pg, "app", do_body);
    assert!(ok && !stderr.contains("WARNING"), "{stderr}");
    assert_eq!(checker(do_body), vec![]);
}
