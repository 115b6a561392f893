//! The migration checker's lock claims against a real PostgreSQL: each statement runs in
//! an open transaction and the test reads the lock modes from `pg_locks` and whether the
//! table was rewritten (its relfilenode changed), then checks the checker said the same.
//! A wrong claim fails here. Needs PostgreSQL's server binaries (Debian's `postgresql`);
//! fails, never skips, without them. See docs/migration-lock-claims.md.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ripcord::migrate::{Settings, SourceFile, check, plan};

fn pg_bin() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    dirs.sort();
    dirs.into_iter()
        .rev()
        .find(|d| d.join("postgres").exists())
        .unwrap_or_else(|| {
            panic!("PostgreSQL's server is not installed (no /usr/lib/postgresql/*/bin/postgres): `apt-get install -y postgresql`; .ci/run does")
        })
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// A command run as the `postgres` user when we are root (the server refuses root).
fn as_pg(bin: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin);
        c
    } else {
        Command::new(bin)
    }
}

struct Postgres {
    child: Child,
    port: u16,
    bin: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // Signal the postmaster itself: the child we hold may be `runuser`, which does
        // not pass SIGINT on, and a postmaster left running outlives its deleted dir.
        let postmaster = std::fs::read_to_string(self._dir.path().join("data/postmaster.pid"))
            .ok()
            .and_then(|s| s.lines().next().and_then(|l| l.trim().parse::<u32>().ok()));
        let pid = postmaster.unwrap_or(self.child.id());
        let _ = Command::new("kill")
            .arg("-INT")
            .arg(pid.to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
            let _ = self.child.try_wait();
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start() -> Postgres {
    let bin = pg_bin();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    if is_root() {
        assert!(
            Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap()
                .success()
        );
    }
    let out = as_pg(&bin.join("initdb"))
        .args([
            "-D",
            data.to_str().unwrap(),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "initdb: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = as_pg(&bin.join("postgres"))
        .args(["-D", data.to_str().unwrap(), "-p", &port.to_string()])
        .args([
            "-c",
            "listen_addresses=127.0.0.1",
            "-k",
            dir.path().to_str().unwrap(),
        ])
        .args(["-c", "fsync=off"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pg = Postgres {
        child,
        port,
        bin,
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !pg.psql("SELECT 1").is_ok_and(|o| o.trim() == "1") {
        assert!(
            Instant::now() < deadline,
            "postgres never accepted connections"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    pg
}

impl Postgres {
    fn psql(&self, script: &str) -> Result<String, String> {
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-X",
                "-A",
                "-t",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
            ])
            .args(["-p", &self.port.to_string(), "-d", "postgres", "-c", script])
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Runs `statement` in a transaction on a fresh `t` (and `u`); returns the locks it
    /// holds on them (`t:AccessExclusiveLock`, ...) and whether `t` was rewritten.
    fn observe(&self, setup: &str, statement: &str) -> (Vec<String>, bool) {
        let script = format!(
            "DROP TABLE IF EXISTS t, u CASCADE;
             {SCHEMA}
             INSERT INTO u SELECT g FROM generate_series(1, 100) g;
             INSERT INTO t SELECT g, g, 'x', 1 FROM generate_series(1, 100) g;
             {setup}
             BEGIN;
             CREATE TEMP TABLE before_node AS SELECT pg_relation_filenode('t') AS n;
             {statement};
             SELECT 'lock ' || c.relname || ':' || l.mode FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
               WHERE l.pid = pg_backend_pid() AND c.relname IN ('t', 'u') ORDER BY 1;
             SELECT 'rewrite ' || (pg_relation_filenode('t') <> (SELECT n FROM before_node));
             ROLLBACK;"
        );
        let out = self
            .psql(&script)
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
        let mut locks: Vec<String> = out
            .lines()
            .filter_map(|l| l.strip_prefix("lock "))
            .map(str::to_string)
            .collect();
        locks.dedup();
        let rewrite = out.lines().any(|l| l == "rewrite true");
        (locks, rewrite)
    }
}

/// The rule ids the checker reports for `statement` in a migration that follows one
/// creating the same tables, so the checker knows the columns' types as PostgreSQL does.
fn rules(setup: &str, statement: &str) -> Vec<String> {
    let files = vec![
        SourceFile {
            path: "m/001_tables.up.sql".into(),
            text: format!("{SCHEMA}\n{setup}\n"),
        },
        SourceFile {
            path: "m/002_change.up.sql".into(),
            text: format!("SET lock_timeout = '2s';\n{statement};\n"),
        },
    ];
    let report = check(&plan(files), &Settings::default());
    let change = report
        .files
        .iter()
        .find(|f| f.path.contains("002"))
        .expect("the second migration");
    change
        .upgrade
        .findings
        .iter()
        .map(|f| f.rule.to_string())
        .collect()
}

const SCHEMA: &str = "CREATE TABLE u (id int PRIMARY KEY);
CREATE TABLE t (id int PRIMARY KEY, a int, c varchar(10), n numeric(10,2));";

/// (setup, statement, locks on t/u, rewrite, a rule the checker must report, rules it
/// must not report)
type Case<'a> = (
    &'a str,
    &'a str,
    &'a [&'a str],
    bool,
    Option<&'a str>,
    &'a [&'a str],
);

#[test]
fn the_checkers_lock_claims_match_postgres() {
    let pg = start();
    let fk = "ALTER TABLE t ADD CONSTRAINT f FOREIGN KEY (a) REFERENCES u (id) NOT VALID;";
    let cases: &[Case] = &[
        (
            "",
            "ALTER TABLE t ADD COLUMN x int",
            &["t:AccessExclusiveLock"],
            false,
            None,
            &["volatile-default"],
        ),
        (
            "",
            "ALTER TABLE t ADD COLUMN x int NOT NULL DEFAULT 0",
            &["t:AccessExclusiveLock"],
            false,
            None,
            &["volatile-default", "add-not-null-column-without-default"],
        ),
        (
            "",
            "ALTER TABLE t ADD COLUMN x timestamptz DEFAULT now()",
            &["t:AccessExclusiveLock"],
            false,
            None,
            &["volatile-default"],
        ),
        (
            "",
            "ALTER TABLE t ADD COLUMN x uuid DEFAULT gen_random_uuid()",
            &["t:AccessExclusiveLock"],
            true,
            Some("volatile-default"),
            &[],
        ),
        (
            "",
            "ALTER TABLE t ALTER COLUMN a TYPE bigint",
            &["t:AccessExclusiveLock"],
            true,
            Some("change-column-type"),
            &[],
        ),
        (
            "",
            "ALTER TABLE t ALTER COLUMN c TYPE varchar(20)",
            &["t:AccessExclusiveLock"],
            false,
            None,
            &["change-column-type"],
        ),
        (
            "",
            "ALTER TABLE t ALTER COLUMN n TYPE numeric(12,2)",
            &["t:AccessExclusiveLock"],
            false,
            None,
            &["change-column-type"],
        ),
        (
            "",
            "CREATE INDEX i ON t (a)",
            &["t:ShareLock"],
            false,
            Some("create-index-without-concurrently"),
            &[],
        ),
        (
            "",
            fk.trim_end_matches(';'),
            &["t:ShareRowExclusiveLock", "u:ShareRowExclusiveLock"],
            false,
            None,
            &["add-foreign-key"],
        ),
        (
            fk,
            "ALTER TABLE t VALIDATE CONSTRAINT f",
            &["t:ShareUpdateExclusiveLock"],
            false,
            None,
            &[],
        ),
        (
            "",
            "ALTER TABLE t ALTER COLUMN a SET NOT NULL",
            &["t:AccessExclusiveLock"],
            false,
            Some("set-not-null"),
            &[],
        ),
    ];
    for (setup, statement, locks, rewrite, must, must_not) in cases {
        let (seen, rewritten) = pg.observe(setup, statement);
        // The strongest lock is what blocks traffic; weaker ones taken on the way also show.
        for want in *locks {
            assert!(
                seen.iter().any(|s| s == want),
                "{statement}: expected {want}, postgres holds {seen:?}"
            );
        }
        assert_eq!(rewritten, *rewrite, "{statement}: rewrite");
        let reported = rules(setup, statement);
        if let Some(rule) = must {
            assert!(
                reported.iter().any(|r| r == rule),
                "{statement}: the checker should report {rule}, it said {reported:?}"
            );
        }
        for rule in *must_not {
            assert!(
                !reported.iter().any(|r| r == rule),
                "{statement}: the checker wrongly reports {rule}"
            );
        }
    }
}
