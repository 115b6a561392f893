//! Restoring a verified backup into a new database, checking it, and swapping it in.
//! The original database is never written to: a restore goes into a new database, and
//! the swap only renames (the original is kept under `<name>_before_restore_<stamp>`).

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use tokio_postgres::Client;
use tokio_postgres::types::Type;

use super::backup::{Verified, sha256_file, stderr_text};
use super::conn::{MAINTENANCE_DB, Target, quote_ident, tool};
use super::error::{DbError, RestoreStep, pg_detail};
use super::{DbConfig, TableName};
use crate::clock::db_stamp;

/// PostgreSQL's limit on identifiers, in bytes (NAMEDATALEN - 1).
pub const MAX_NAME_BYTES: usize = 63;

/// `base` + `suffix`, `base` cut (on a character boundary) so the whole fits 63 bytes.
pub fn fit_name(base: &str, suffix: &str) -> String {
    let room = MAX_NAME_BYTES.saturating_sub(suffix.len());
    let mut end = base.len().min(room);
    while !base.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{suffix}", &base[..end])
}

/// `text` as an SQL string literal (standard_conforming_strings, on since 9.1).
fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The database to run CREATE/ALTER/DROP DATABASE from: never the one being renamed.
fn maintenance_for(original: &str) -> &'static str {
    if original == MAINTENANCE_DB {
        "template1"
    } else {
        MAINTENANCE_DB
    }
}

/// The names one restore uses, both derived from its `stamp` (the restore operation's
/// start, ms) so that a watcher that died mid-restore can find them again
/// ([`recover_restore`]): the database restored into, and the name the original is kept
/// under once swapped out.
pub fn restore_names(original: &str, stamp: i64) -> (String, String) {
    (
        fit_name(original, &format!("_restore_{}", db_stamp(stamp))),
        fit_name(original, &format!("_before_restore_{}", db_stamp(stamp))),
    )
}

/// Restores the verified backup at `path` into a new database `<db>_restore_<stamp>`,
/// checks that every table the backup lists is there and that every configured check
/// passes, and returns the new database's name. On any failure the new database is
/// dropped; the original database is never touched.
pub async fn restore_into_new(
    cfg: &DbConfig,
    path: &Path,
    verified: &Verified,
    stamp: i64,
) -> Result<String, DbError> {
    let target = Target::from_config(cfg, "ripcord-restore")?;
    let original = target.url.database.clone();
    let fail = |step: RestoreStep, detail: String, cleanup: &str| DbError::Restore {
        step,
        detail,
        original: original.clone(),
        cleanup: cleanup.to_string(),
    };
    let nothing_created = "Nothing was created.";

    // The file must still be the one that was verified.
    let owned = path.to_path_buf();
    let actual = tokio::task::spawn_blocking(move || sha256_file(&owned))
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r)
        .map_err(|e| {
            fail(
                RestoreStep::PgRestore,
                format!("cannot read the backup file {}: {e}", path.display()),
                nothing_created,
            )
        })?;
    if actual.0 != verified.sha256 {
        return Err(DbError::ChecksumMismatch {
            path: path.to_path_buf(),
            expected: verified.sha256.clone(),
            actual: actual.0,
        });
    }

    let maint_db = maintenance_for(&original);
    let maint = target.connect(maint_db).await?;
    let new_db = restore_names(&original, stamp).0;
    let version_num: i32 = maint
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .map(|r| r.get(0))
        .map_err(|e| fail(RestoreStep::CreateDatabase, pg_detail(&e), nothing_created))?;

    // Same encoding and collation as the original, when it exists; template0 so that
    // nothing added to template1 gets in the way of the restore.
    let mut create = format!(
        "CREATE DATABASE {} TEMPLATE template0",
        quote_ident(&new_db)
    );
    let like = maint
        .query_opt(
            "SELECT pg_encoding_to_char(encoding), datcollate, datctype FROM pg_database WHERE datname = $1",
            &[&original],
        )
        .await
        .map_err(|e| fail(RestoreStep::CreateDatabase, pg_detail(&e), nothing_created))?;
    if let Some(row) = like {
        let (enc, collate, ctype): (String, String, String) = (row.get(0), row.get(1), row.get(2));
        create.push_str(&format!(
            " ENCODING {} LC_COLLATE {} LC_CTYPE {}",
            quote_literal(&enc),
            quote_literal(&collate),
            quote_literal(&ctype)
        ));
    }
    maint
        .batch_execute(&create)
        .await
        .map_err(|e| fail(RestoreStep::CreateDatabase, pg_detail(&e), nothing_created))?;

    let outcome = restore_and_check(cfg, &target, version_num, path, verified, &new_db).await;
    match outcome {
        Ok(()) => Ok(new_db),
        Err((step, detail)) => {
            let cleanup = match drop_database(&maint, &new_db, version_num).await {
                Ok(()) => format!("The half-restored database \"{new_db}\" was dropped."),
                Err(e) => format!(
                    "Dropping the half-restored database \"{new_db}\" failed too ({e}); drop it by hand: \
                     DROP DATABASE {};",
                    quote_ident(&new_db)
                ),
            };
            Err(fail(step, detail, &cleanup))
        }
    }
}

async fn restore_and_check(
    cfg: &DbConfig,
    target: &Target,
    version_num: i32,
    path: &Path,
    verified: &Verified,
    new_db: &str,
) -> Result<(), (RestoreStep, String)> {
    let program = tool(cfg.pg_bin_dir.as_deref(), Some(version_num), "pg_restore");
    let out = target
        .command(&program)
        .arg("--exit-on-error")
        .arg("--no-owner")
        .arg(format!(
            "--dbname={}",
            target.url.with_database(new_db).as_string()
        ))
        .arg(path)
        .output()
        .await
        .map_err(|e| {
            (
                RestoreStep::PgRestore,
                format!("cannot run {}: {e}", program.display()),
            )
        })?;
    if !out.status.success() {
        return Err((
            RestoreStep::PgRestore,
            clip(&stderr_text(&out.stderr, out.status), 2000),
        ));
    }

    let client = target
        .connect(new_db)
        .await
        .map_err(|e| (RestoreStep::TablesPresent, e.to_string()))?;
    let result = check_restored(&client, cfg, verified).await;
    drop(client);
    result
}

async fn check_restored(
    client: &Client,
    cfg: &DbConfig,
    verified: &Verified,
) -> Result<(), (RestoreStep, String)> {
    let rows = client
        .query(
            "SELECT schemaname::text, tablename::text FROM pg_tables",
            &[],
        )
        .await
        .map_err(|e| (RestoreStep::TablesPresent, pg_detail(&e)))?;
    let present: BTreeSet<TableName> = rows
        .iter()
        .map(|r| TableName {
            schema: r.get(0),
            name: r.get(1),
        })
        .collect();
    let missing: Vec<String> = verified
        .tables
        .iter()
        .filter(|t| !present.contains(t))
        .map(|t| format!("{}.{}", t.schema, t.name))
        .collect();
    if !missing.is_empty() {
        return Err((
            RestoreStep::TablesPresent,
            format!(
                "{} of the {} tables in the backup are missing after pg_restore: {}",
                missing.len(),
                verified.tables.len(),
                clip(&missing.join(", "), 1000)
            ),
        ));
    }

    // Checks only read, and none runs forever.
    client
        .batch_execute("SET default_transaction_read_only = on; SET statement_timeout = '120s'")
        .await
        .map_err(|e| (RestoreStep::Check, pg_detail(&e)))?;
    for (i, sql) in cfg.checks.iter().enumerate() {
        let which = format!(
            "check {} of {} ({})",
            i + 1,
            cfg.checks.len(),
            clip(sql.trim(), 200)
        );
        let rows = client.query(sql.as_str(), &[]).await.map_err(|e| {
            (
                RestoreStep::Check,
                format!("{which} failed: {}", pg_detail(&e)),
            )
        })?;
        if rows.is_empty() {
            return Err((RestoreStep::Check, format!("{which} returned no rows")));
        }
        let first_is_bool = rows[0]
            .columns()
            .first()
            .is_some_and(|c| *c.type_() == Type::BOOL);
        if first_is_bool
            && !rows
                .iter()
                .any(|r| r.get::<_, Option<bool>>(0) == Some(true))
        {
            return Err((
                RestoreStep::Check,
                format!("{which} returned no row with a true first column"),
            ));
        }
    }
    Ok(())
}

/// Drops `db` (ours, just created), ending any session still on it.
async fn drop_database(maint: &Client, db: &str, version_num: i32) -> Result<(), String> {
    let force = if version_num >= 130_000 {
        " WITH (FORCE)"
    } else {
        ""
    };
    let sql = format!("DROP DATABASE IF EXISTS {}{force}", quote_ident(db));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let _ = terminate(maint, &[db]).await;
        match maint.batch_execute(&sql).await {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() < deadline && is_in_use(&e) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(pg_detail(&e)),
        }
    }
}

fn is_in_use(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&tokio_postgres::error::SqlState::OBJECT_IN_USE)
}

/// Ends every other session on `dbs`; returns how many it signalled.
async fn terminate(maint: &Client, dbs: &[&str]) -> Result<u64, tokio_postgres::Error> {
    let dbs: Vec<String> = dbs.iter().map(|s| s.to_string()).collect();
    let rows = maint
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = ANY($1) AND pid <> pg_backend_pid()",
            &[&dbs],
        )
        .await?;
    Ok(rows.len() as u64)
}

/// Waits (up to `limit`) until no other session is on `dbs`.
async fn wait_no_sessions(maint: &Client, dbs: &[&str], limit: Duration) -> Result<(), String> {
    let dbs: Vec<String> = dbs.iter().map(|s| s.to_string()).collect();
    let deadline = Instant::now() + limit;
    loop {
        let n: i64 = maint
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = ANY($1) AND pid <> pg_backend_pid()",
                &[&dbs],
            )
            .await
            .map(|r| r.get(0))
            .map_err(|e| pg_detail(&e))?;
        if n == 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{n} session(s) are still connected after pg_terminate_backend (do they belong to another user? \
                 that needs superuser or pg_signal_backend)"
            ));
        }
        let _ = terminate(maint, &dbs.iter().map(String::as_str).collect::<Vec<_>>()).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Puts `new_db` in the place of the configured database: blocks new connections to
/// both, ends their sessions, and in one transaction renames the original to
/// `<db>_before_restore_<stamp>` and `new_db` to the original's name. Returns the name
/// the original database is kept under.
pub async fn swap(cfg: &DbConfig, new_db: &str, stamp: i64) -> Result<String, DbError> {
    let target = Target::from_config(cfg, "ripcord-restore")?;
    let original = target.url.database.clone();
    let maint_db = maintenance_for(&original);
    let swap_err = |detail: String, state: &str| DbError::Swap {
        original: original.clone(),
        new_db: new_db.to_string(),
        detail,
        state: state.to_string(),
    };
    let untouched = format!(
        "Nothing was renamed: \"{original}\" is still the live database. Fix the cause and swap again, \
         or drop \"{new_db}\" if you give up on it"
    );
    if new_db == original || new_db == maint_db {
        return Err(swap_err(
            format!(
                "\"{new_db}\" cannot be swapped in (it is the original or the maintenance database)"
            ),
            &untouched,
        ));
    }
    let maint = target.connect(maint_db).await?;
    let names = vec![original.clone(), new_db.to_string()];
    let existing = maint
        .query(
            "SELECT datname::text FROM pg_database WHERE datname = ANY($1)",
            &[&names],
        )
        .await
        .map_err(|e| swap_err(pg_detail(&e), &untouched))?;
    for name in &names {
        if !existing.iter().any(|r| r.get::<_, String>(0) == *name) {
            return Err(swap_err(
                format!("database \"{name}\" does not exist"),
                &untouched,
            ));
        }
    }
    let kept = restore_names(&original, stamp).1;
    let (q_orig, q_new, q_kept) = (
        quote_ident(&original),
        quote_ident(new_db),
        quote_ident(&kept),
    );

    let allow = |db: &str, on: bool| {
        format!(
            "ALTER DATABASE {} WITH ALLOW_CONNECTIONS {on}",
            quote_ident(db)
        )
    };
    let reopen = |a: &str, b: &str| format!("{}; {}", allow(a, true), allow(b, true));

    // No new sessions while we end the existing ones and rename.
    if let Err(e) = maint
        .batch_execute(&format!(
            "{}; {}",
            allow(&original, false),
            allow(new_db, false)
        ))
        .await
    {
        let _ = maint.batch_execute(&reopen(&original, new_db)).await;
        return Err(swap_err(pg_detail(&e), &untouched));
    }
    crate::failpoint::hit("db.connections_blocked");
    let renamed = async {
        let dbs = [original.as_str(), new_db];
        terminate(&maint, &dbs).await.map_err(|e| pg_detail(&e))?;
        wait_no_sessions(&maint, &dbs, Duration::from_secs(10)).await?;
        maint
            .batch_execute(&format!(
                "BEGIN; ALTER DATABASE {q_orig} RENAME TO {q_kept}; ALTER DATABASE {q_new} RENAME TO {q_orig}; COMMIT"
            ))
            .await
            .map_err(|e| pg_detail(&e))
    }
    .await;
    if let Err(detail) = renamed {
        // A failed statement leaves the transaction aborted; end it so that nothing is renamed.
        let _ = maint.batch_execute("ROLLBACK").await;
        let reopened = maint.batch_execute(&reopen(&original, new_db)).await;
        let state = match reopened {
            Ok(()) => untouched,
            Err(e) => format!(
                "Nothing was renamed, but connections to \"{original}\" may still be blocked ({}): run \
                 ALTER DATABASE {q_orig} WITH ALLOW_CONNECTIONS true;",
                pg_detail(&e)
            ),
        };
        return Err(swap_err(detail, &state));
    }
    crate::failpoint::hit("db.renamed");
    maint.batch_execute(&reopen(&original, &kept)).await.map_err(|e| {
        swap_err(
            format!("reopening connections failed: {}", pg_detail(&e)),
            &format!(
                "The swap is done (the restored data is now \"{original}\", the old database is \"{kept}\") \
                 but connections are still blocked: run ALTER DATABASE {q_orig} WITH ALLOW_CONNECTIONS true; \
                 ALTER DATABASE {q_kept} WITH ALLOW_CONNECTIONS true;"
            ),
        )
    })?;
    Ok(kept)
}

/// What [`recover_restore`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovered {
    /// The names were never swapped: the original is the live database, open to
    /// connections; the half-restored copy (if it was created) is dropped.
    NotSwapped { dropped: Option<String> },
    /// The swap was committed: the live database holds the backup's data, the one
    /// before is kept under `kept`; both are open to connections.
    Swapped { kept: String },
}

/// Puts the database right after a restore whose process died (stamp: the restore
/// operation's start). The rename is one transaction, so either both names moved or
/// none did; what can be left is connections blocked on either database and the
/// half-restored copy, which this drops (it is only ever ripcord's).
pub async fn recover_restore(cfg: &DbConfig, stamp: i64) -> Result<Recovered, DbError> {
    let target = Target::from_config(cfg, "ripcord-restore")?;
    let original = target.url.database.clone();
    let (new_db, kept) = restore_names(&original, stamp);
    let fail = |detail: String| DbError::Swap {
        original: original.clone(),
        new_db: new_db.clone(),
        detail,
        state: format!(
            "A restore of \"{original}\" was interrupted and could not be put right: check which of              \"{original}\", \"{new_db}\" and \"{kept}\" exist and that \"{original}\" allows              connections (ALTER DATABASE ... WITH ALLOW_CONNECTIONS true)"
        ),
    };
    let maint = target.connect(maintenance_for(&original)).await?;
    let version_num: i32 = maint
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .map(|r| r.get(0))
        .map_err(|e| fail(pg_detail(&e)))?;
    let names = vec![original.clone(), new_db.clone(), kept.clone()];
    let existing: Vec<String> = maint
        .query(
            "SELECT datname::text FROM pg_database WHERE datname = ANY($1)",
            &[&names],
        )
        .await
        .map_err(|e| fail(pg_detail(&e)))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let exists = |n: &String| existing.contains(n);
    let allow = |db: &str| {
        format!(
            "ALTER DATABASE {} WITH ALLOW_CONNECTIONS true",
            quote_ident(db)
        )
    };
    if exists(&kept) {
        maint
            .batch_execute(&format!("{}; {}", allow(&original), allow(&kept)))
            .await
            .map_err(|e| fail(pg_detail(&e)))?;
        return Ok(Recovered::Swapped { kept });
    }
    if exists(&original) {
        maint
            .batch_execute(&allow(&original))
            .await
            .map_err(|e| fail(pg_detail(&e)))?;
    }
    let dropped = if exists(&new_db) {
        drop_database(&maint, &new_db, version_num)
            .await
            .map_err(fail)?;
        Some(new_db.clone())
    } else {
        None
    };
    Ok(Recovered::NotSwapped { dropped })
}

fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_63_bytes() {
        assert_eq!(
            fit_name("app", "_restore_20260101_000000_000"),
            "app_restore_20260101_000000_000"
        );
        let long = "a".repeat(80);
        let n = fit_name(&long, "_before_restore_20260101_000000_000");
        assert_eq!(n.len(), 63);
        assert!(n.ends_with("_before_restore_20260101_000000_000"));
        // Never cuts a character in half.
        let wide = "é".repeat(40);
        let n = fit_name(&wide, "_restore_20260101_000000_000");
        assert!(n.len() <= 63);
        assert!(n.starts_with("éé"));
    }

    #[test]
    fn literals_and_clip() {
        assert_eq!(quote_literal("en_US.UTF-8"), "'en_US.UTF-8'");
        assert_eq!(quote_literal("a'b"), "'a''b'");
        assert_eq!(clip("abcdef", 3), "abc…");
        assert_eq!(clip("ééé", 3), "é…");
        assert_eq!(maintenance_for("postgres"), "template1");
        assert_eq!(maintenance_for("app"), "postgres");
    }
}
