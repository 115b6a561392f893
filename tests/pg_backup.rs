//! Backups, verification, restore and swap against a real PostgreSQL started in a temp
//! dir. TCP connections need a password (scram-sha-256), so every call of the module
//! proves the password from `password_file` reached tokio-postgres, pg_dump and
//! pg_restore; the fixture's own psql uses the unix socket (trust). Needs PostgreSQL's
//! server binaries (Debian's `postgresql`); fails, never skips, without them.

mod pg_fixture;

use ripcord::clock::now_ms;
use ripcord::db::{self, DbConfig, DbError, RestoreStep};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use pg_fixture::{PASSWORD, broken_pg_dump_dir, start};
use ripcord::execute::restore::backup_and_record;
use ripcord::ledger::Ledger;

/// Watches every process's command line while it runs; returns the command lines that
/// held the password and how many pg_dump/pg_restore command lines it saw.
fn watch_cmdlines(stop: Arc<AtomicBool>) -> std::thread::JoinHandle<(Vec<String>, usize)> {
    std::thread::spawn(move || {
        let mut leaks = Vec::new();
        let mut seen = 0;
        while !stop.load(Ordering::Relaxed) {
            for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
                if let Ok(raw) = std::fs::read(entry.path().join("cmdline")) {
                    let line = String::from_utf8_lossy(&raw).replace('\0', " ");
                    if line.contains("pg_dump") || line.contains("pg_restore") {
                        seen += 1;
                    }
                    if line.contains(PASSWORD) {
                        leaks.push(line);
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        (leaks, seen)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_verify_restore_and_swap() {
    let pg = start();
    pg.create_app("app");
    let cfg = pg.config(
        "app",
        &[
            "SELECT count(*) = 3 FROM items",
            "SELECT name FROM items WHERE id = 1",
        ],
    );

    // ALTER DATABASE ... RENAME is allowed in a transaction block and is rolled back.
    pg.sql("postgres", "CREATE DATABASE txcheck");
    pg.sql(
        "postgres",
        "BEGIN; ALTER DATABASE txcheck RENAME TO txcheck2; ROLLBACK;",
    );
    let dbs = pg.databases();
    assert!(dbs.contains(&"txcheck".to_string()) && !dbs.contains(&"txcheck2".to_string()));

    // Backup, watching for the password on any command line meanwhile.
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_cmdlines(stop.clone());
    let b = db::backup(&cfg, "shop").await.unwrap();
    stop.store(true, Ordering::Relaxed);
    let (leaks, seen) = watcher.join().unwrap();
    assert!(leaks.is_empty(), "password on a command line: {leaks:?}");
    eprintln!("command lines of pg_dump observed while backing up: {seen}");

    assert_eq!(b.database, "app");
    assert_eq!(b.label, "shop");
    assert!(b.server_version.starts_with(|c: char| c.is_ascii_digit()));
    let name = b.path.file_name().unwrap().to_str().unwrap().to_string();
    assert!(
        name.starts_with("app-")
            && name.ends_with("Z.dump")
            && name.len() == "app-20260101T000000000Z.dump".len(),
        "{name}"
    );
    let meta = std::fs::metadata(&b.path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(meta.len(), b.size_bytes);
    let dir_mode = std::fs::metadata(&cfg.backup_dir)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(dir_mode & 0o777, 0o700);
    // Only the finished file is left in the directory.
    assert_eq!(std::fs::read_dir(&cfg.backup_dir).unwrap().count(), 1);

    let v = db::verify(&b.path, &b.sha256).await.unwrap();
    assert_eq!(v.table_count, 2, "{v:?}");
    let names: Vec<String> = v
        .tables
        .iter()
        .map(|t| format!("{}.{}", t.schema, t.name))
        .collect();
    assert_eq!(names, vec!["billing.Invoice Lines", "public.items"]);

    // Changes after the backup, and a session left open on the live database.
    pg.sql(
        "app",
        "UPDATE items SET name = 'changed' WHERE id = 1; DELETE FROM items WHERE id = 3; INSERT INTO items VALUES (4, 'four');",
    );
    let (live, conn) = tokio_postgres::connect(
        &format!(
            "host={} port={} user=postgres dbname=app",
            pg.dir.path().display(),
            pg.port
        ),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    let conn_task = tokio::spawn(conn);
    live.simple_query("SELECT 1").await.unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_cmdlines(stop.clone());
    let new_db = db::restore_into_new(&cfg, &b.path, &v, now_ms())
        .await
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    let (leaks, seen) = watcher.join().unwrap();
    assert!(leaks.is_empty(), "password on a command line: {leaks:?}");
    eprintln!("command lines of pg_restore observed while restoring: {seen}");
    assert!(new_db.starts_with("app_restore_"), "{new_db}");
    // The original is untouched by the restore.
    assert_eq!(
        pg.sql(
            "app",
            "SELECT string_agg(id || name, ',' ORDER BY id) FROM items"
        ),
        "1changed,2two,4four"
    );

    let kept = db::swap(&cfg, &new_db, now_ms()).await.unwrap();
    assert!(kept.starts_with("app_before_restore_"), "{kept}");
    assert_eq!(
        pg.sql(
            "app",
            "SELECT string_agg(id || name, ',' ORDER BY id) FROM items"
        ),
        "1one,2two,3three"
    );
    assert_eq!(
        pg.sql("app", "SELECT amount FROM billing.\"Invoice Lines\""),
        "9.5"
    );
    assert_eq!(
        pg.sql(
            &kept,
            "SELECT string_agg(id || name, ',' ORDER BY id) FROM items"
        ),
        "1changed,2two,4four"
    );
    let dbs = pg.databases();
    assert!(!dbs.contains(&new_db), "{dbs:?}");
    // The session on the old database was ended.
    assert!(live.simple_query("SELECT 1").await.is_err());
    let _ = conn_task.await;
    // Both databases take connections again.
    assert_eq!(
        pg.sql("postgres", "SELECT string_agg(datname || ':' || datallowconn, ',' ORDER BY datname) FROM pg_database WHERE datname LIKE 'app%'"),
        format!("app:true,{kept}:true")
    );

    // Swapping a database that does not exist renames nothing.
    let e = db::swap(&cfg, "nope", now_ms()).await.unwrap_err();
    assert!(matches!(e, DbError::Swap { .. }), "{e}");
    assert!(e.to_string().contains("Nothing was renamed"), "{e}");
    assert!(pg.databases().contains(&"app".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_backups_and_failed_checks_change_nothing() {
    let pg = start();
    pg.create_app("shop");
    // Enough data that the table of contents is a small part of the dump.
    pg.sql(
        "shop",
        "CREATE TABLE bulk AS SELECT g AS id, md5(g::text) AS h FROM generate_series(1, 50000) g",
    );
    let cfg = pg.config("shop", &["SELECT count(*) > 100 FROM items"]);
    let b = db::backup(&cfg, "shop").await.unwrap();
    let v = db::verify(&b.path, &b.sha256).await.unwrap();

    // Cut in half: the recorded checksum no longer matches.
    let bytes = std::fs::read(&b.path).unwrap();
    let cut = pg.work.path().join("cut.dump");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = db::verify(&cut, &b.sha256).await.unwrap_err();
    assert!(matches!(e, DbError::ChecksumMismatch { .. }), "{e}");
    eprintln!("truncated: {e}");

    // Cut in half with its checksum recomputed: pg_restore must still refuse it.
    let (cut_sha, _) = sha256_of(&cut);
    let e = db::verify(&cut, &cut_sha).await.unwrap_err();
    eprintln!("truncated, checksum recomputed: {e}");
    assert!(matches!(e, DbError::Unreadable { .. }), "{e}");
    // --list reads only the table of contents at the start of the file, so it does not
    // notice the missing half; verify reads every block and does.
    let list = Command::new(pg.bin.join("pg_restore"))
        .arg("--list")
        .arg(&cut)
        .output()
        .unwrap();
    assert!(
        list.status.success(),
        "{}",
        String::from_utf8_lossy(&list.stderr)
    );
    assert!(String::from_utf8_lossy(&list.stdout).contains("TABLE public bulk"));

    // Garbage with a correct checksum: pg_restore's own complaint comes back.
    let junk = pg.work.path().join("junk.dump");
    std::fs::write(&junk, b"this is not a PostgreSQL archive\n".repeat(100)).unwrap();
    let (junk_sha, _) = sha256_of(&junk);
    match db::verify(&junk, &junk_sha).await.unwrap_err() {
        DbError::Unreadable { stderr, .. } => {
            eprintln!("garbage: {stderr}");
            assert!(stderr.contains("pg_restore"), "{stderr}");
            assert_eq!(stderr, stderr.trim());
        }
        e => panic!("expected Unreadable, got {e}"),
    }

    let e = db::verify(&pg.work.path().join("gone.dump"), &b.sha256)
        .await
        .unwrap_err();
    assert!(matches!(e, DbError::BackupMissing { .. }), "{e}");

    // A check that fails: the new database is dropped, the original left as it was.
    pg.sql("shop", "UPDATE items SET name = 'live' WHERE id = 2");
    let before = pg.databases();
    let e = db::restore_into_new(&cfg, &b.path, &v, now_ms())
        .await
        .unwrap_err();
    eprintln!("failed check: {e}");
    match &e {
        DbError::Restore { step, cleanup, .. } => {
            assert_eq!(*step, RestoreStep::Check);
            assert!(cleanup.contains("was dropped"), "{cleanup}");
        }
        e => panic!("expected a Restore error, got {e}"),
    }
    assert!(e.to_string().contains("was not touched"));
    assert_eq!(pg.databases(), before);
    assert_eq!(
        pg.sql(
            "shop",
            "SELECT string_agg(id || name, ',' ORDER BY id) FROM items"
        ),
        "1one,2live,3three"
    );

    // A check with an SQL error, and a check returning no rows: same.
    for check in ["SELECT no_such_column FROM items", "SELECT 1 WHERE false"] {
        let cfg = pg.config("shop", &[check]);
        let e = db::restore_into_new(&cfg, &b.path, &v, now_ms())
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                DbError::Restore {
                    step: RestoreStep::Check,
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(pg.databases(), before);
    }

    // A table in the backup that pg_restore did not create (as if the listing and the
    // data disagreed): the table check catches it.
    let mut v_more = v.clone();
    v_more.tables.push(db::TableName {
        schema: "public".into(),
        name: "ghost".into(),
    });
    let cfg_ok = pg.config("shop", &[]);
    let e = db::restore_into_new(&cfg_ok, &b.path, &v_more, now_ms())
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            DbError::Restore {
                step: RestoreStep::TablesPresent,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("public.ghost"), "{e}");
    assert_eq!(pg.databases(), before);

    // Wrong password: a connect error that does not echo it; a password in the URL is refused.
    let bad_pw = pg.work.path().join("bad-pw");
    std::fs::write(&bad_pw, "not-the-password\n").unwrap();
    let mut cfg_bad = pg.config("shop", &[]);
    cfg_bad.password_file = Some(bad_pw);
    let e = db::backup(&cfg_bad, "shop").await.unwrap_err();
    assert!(matches!(e, DbError::Connect { .. }), "{e}");
    assert!(!e.to_string().contains("not-the-password"), "{e}");
    eprintln!("wrong password: {e}");
    let mut cfg_url = pg.config("shop", &[]);
    cfg_url.url = format!(
        "postgresql://postgres:{PASSWORD}@127.0.0.1:{}/shop",
        pg.port
    );
    let e = db::backup(&cfg_url, "shop").await.unwrap_err();
    assert!(matches!(e, DbError::PasswordInUrl));
    assert!(!e.to_string().contains(PASSWORD));

    // Over the unix socket (?host=), trust auth, no password at all.
    let sock = DbConfig {
        url: format!(
            "postgresql://postgres@/shop?host={}&port={}",
            pg.dir.path().display(),
            pg.port
        ),
        password_file: None,
        ..pg.config("shop", &[])
    };
    let b2 = db::backup(&sock, "shop").await.unwrap();
    assert!(db::verify(&b2.path, &b2.sha256).await.is_ok());
}

/// Regression: retention ran only in `ripcord db backup`, so the backups taken before a
/// deploy with migrations (`backup_and_record`) piled up past `keep`. Every backup now
/// applies it, and a run of backups that do not read back never removes the good one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_backup_applies_retention_and_keeps_the_newest_good_one() {
    let pg = start();
    pg.create_app("app");
    let mut cfg = pg.config("app", &[]);
    cfg.keep = 1;
    let state = tempfile::tempdir().unwrap();
    let ledger = Arc::new(std::sync::Mutex::new(Ledger::open(state.path()).unwrap()));

    let first = backup_and_record(&ledger, "web", &cfg).await.unwrap();
    let second = backup_and_record(&ledger, "web", &cfg).await.unwrap();
    assert!(
        !Path::new(&first.path).exists(),
        "keep = 1: the older file is gone"
    );
    assert!(Path::new(&second.path).exists());
    {
        let l = ledger.lock().unwrap();
        let ids: Vec<i64> = l.backups("web").unwrap().iter().map(|b| b.id).collect();
        assert_eq!(ids, vec![second.id]);
        let gone = l.backup(first.id).unwrap().unwrap();
        assert!(
            gone.deleted_at_ms.is_some(),
            "the ledger row is marked: {gone:?}"
        );
        let events = l.events("web", 10).unwrap();
        let last = events.iter().rfind(|e| e.kind == "db_backup").unwrap();
        assert!(
            last.message.contains(&format!("removed #{}", first.id)),
            "{}",
            last.message
        );
    }

    // Two backups that do not read back: the newest of them is kept (keep = 1), the
    // older one removed, and the good one stays.
    cfg.pg_bin_dir = Some(broken_pg_dump_dir(state.path()));
    let e = backup_and_record(&ledger, "web", &cfg).await.unwrap_err();
    assert!(e.contains("does not read back"), "{e}");
    let e = backup_and_record(&ledger, "web", &cfg).await.unwrap_err();
    assert!(e.contains("does not read back"), "{e}");
    let left = ledger.lock().unwrap().backups("web").unwrap();
    assert_eq!(left.len(), 2, "{left:?}");
    assert_eq!(left[0].verified_ok, Some(false), "{left:?}");
    assert_eq!(left[1].id, second.id, "{left:?}");
    assert!(
        Path::new(&second.path).exists(),
        "the only good backup stays"
    );
    assert!(
        db::verify(Path::new(&second.path), &second.sha256)
            .await
            .is_ok()
    );
}

fn sha256_of(path: &Path) -> (String, u64) {
    db::sha256_file(path).unwrap()
}

/// A watcher that died in a restore leaves, before the swap, connections blocked and a
/// half-restored copy, and after it, both databases blocked: made here by hand, as the
/// restore's own statements leave them, then put right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_restore_is_put_right_on_either_side_of_the_swap() {
    let pg = start();
    pg.create_app("app");
    let cfg = pg.config("app", &[]);
    let allows = |d: &str| {
        pg.sql(
            "postgres",
            &format!("SELECT datallowconn FROM pg_database WHERE datname = '{d}'"),
        )
    };
    let items = |d: &str| pg.items(d);

    // Before the swap: the copy is being restored, and new sessions are refused.
    let stamp = now_ms();
    let (new_db, kept) = db::restore_names("app", stamp);
    pg.sql("postgres", &format!("CREATE DATABASE {new_db}"));
    pg.sql(
        "postgres",
        &format!(
            "ALTER DATABASE app WITH ALLOW_CONNECTIONS false; ALTER DATABASE {new_db} WITH ALLOW_CONNECTIONS false"
        ),
    );
    assert_eq!(allows("app"), "f");
    let r = db::recover_restore(&cfg, stamp).await.unwrap();
    assert_eq!(
        r,
        db::Recovered::NotSwapped {
            dropped: Some(new_db.clone())
        }
    );
    assert!(!pg.databases().contains(&new_db), "{:?}", pg.databases());
    assert!(!pg.databases().contains(&kept));
    assert_eq!(allows("app"), "t");
    assert_eq!(items("app"), "1,2,3", "the original is untouched");
    // Nothing left to do: a second recovery changes nothing.
    let r = db::recover_restore(&cfg, stamp).await.unwrap();
    assert_eq!(r, db::Recovered::NotSwapped { dropped: None });

    // After the swap (one transaction), before connections were allowed again.
    let stamp = stamp + 1_000;
    let (new_db, kept) = db::restore_names("app", stamp);
    pg.sql(
        "postgres",
        &format!("CREATE DATABASE {new_db} TEMPLATE app"),
    );
    pg.sql(&new_db, "DELETE FROM items WHERE id = 3");
    pg.sql(
        "postgres",
        &format!(
            "ALTER DATABASE app WITH ALLOW_CONNECTIONS false; ALTER DATABASE {new_db} WITH ALLOW_CONNECTIONS false; \
             ALTER DATABASE app RENAME TO {kept}; ALTER DATABASE {new_db} RENAME TO app"
        ),
    );
    let r = db::recover_restore(&cfg, stamp).await.unwrap();
    assert_eq!(r, db::Recovered::Swapped { kept: kept.clone() });
    assert_eq!(allows("app"), "t");
    assert_eq!(allows(&kept), "t");
    assert_eq!(items("app"), "1,2", "the restored data stays live");
    assert_eq!(items(&kept), "1,2,3", "the one before is kept");
}
