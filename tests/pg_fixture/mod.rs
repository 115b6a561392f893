//! A private PostgreSQL server for tests: initdb and postgres in a temp dir (run as the
//! `postgres` user when we are root), TCP on a free 127.0.0.1 port with scram passwords,
//! the unix socket with trust for the fixture's own psql. Needs PostgreSQL's server
//! binaries (Debian's `postgresql`); fails, never skips, without them.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ripcord::db::DbConfig;

pub const PASSWORD: &str = "Xq7-secret-pw-9Z";

pub fn pg_bin() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    dirs.sort();
    dirs.into_iter()
        .rev()
        .find(|d| d.join("postgres").exists())
        .unwrap_or_else(|| {
            panic!("PostgreSQL's server is not installed (no /usr/lib/postgresql/*/bin/postgres): `apt-get install -y postgresql`")
        })
}

pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// A command run as the `postgres` user when we are root (the server refuses root).
pub fn as_pg(bin: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin);
        c
    } else {
        Command::new(bin)
    }
}

pub struct Postgres {
    child: Child,
    pub port: u16,
    pub bin: PathBuf,
    pub dir: tempfile::TempDir,
    /// Holds the password file and the backups (owned by us, not by postgres).
    pub work: tempfile::TempDir,
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // Signal the postmaster itself: the child we hold may be `runuser`, which does
        // not pass SIGINT on, and a postmaster left running outlives its deleted dir.
        let postmaster = std::fs::read_to_string(self.dir.path().join("data/postmaster.pid"))
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

pub fn start() -> Postgres {
    let bin = pg_bin();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let pwfile = dir.path().join("pw");
    std::fs::write(&pwfile, format!("{PASSWORD}\n")).unwrap();
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
        .args(["-D", data.to_str().unwrap(), "-U", "postgres"])
        .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
        .arg(format!("--pwfile={}", pwfile.display()))
        .args(["-E", "UTF8"])
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
        dir,
        work: tempfile::tempdir().unwrap(),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !pg
        .psql("postgres", "SELECT 1")
        .is_ok_and(|o| o.trim() == "1")
    {
        assert!(
            Instant::now() < deadline,
            "postgres never accepted connections"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::fs::write(pg.work.path().join("pw"), format!("{PASSWORD}\n")).unwrap();
    pg
}

impl Postgres {
    /// psql over the unix socket (trust), as the `postgres` role.
    pub fn psql(&self, db: &str, script: &str) -> Result<String, String> {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", self.dir.path().to_str().unwrap(), "-U", "postgres"])
            .args(["-p", &self.port.to_string(), "-d", db, "-c", script])
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    pub fn sql(&self, db: &str, script: &str) -> String {
        self.psql(db, script)
            .unwrap_or_else(|e| panic!("{script}: {e}"))
    }

    pub fn databases(&self) -> Vec<String> {
        self.sql("postgres", "SELECT datname FROM pg_database ORDER BY 1")
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// The module's config for database `db`, over TCP with the password in a file.
    pub fn config(&self, db: &str, checks: &[&str]) -> DbConfig {
        DbConfig {
            url: format!("postgresql://postgres@127.0.0.1:{}/{db}", self.port),
            password_file: Some(self.work.path().join("pw")),
            backup_dir: self.work.path().join("backups/nested"),
            keep: 3,
            checks: checks.iter().map(|s| s.to_string()).collect(),
            pg_bin_dir: None,
        }
    }

    /// The `[service.web.database]` table for database `db` on this server (over TCP, the
    /// password from its file, backups under the project's `backups`); `extra` adds lines.
    pub fn service_table(&self, db: &str, extra: &str) -> String {
        format!(
            "\n[service.web.database]\nurl = \"postgresql://postgres@127.0.0.1:{}/{db}\"\npassword_file = \"{}\"\nbackup_dir = \"backups\"\n{extra}",
            self.port,
            self.work.path().join("pw").display()
        )
    }

    /// The ids in `db`'s `items` (made by [`Postgres::create_app`]), in order: `1,2,3`.
    pub fn items(&self, db: &str) -> String {
        self.sql(
            db,
            "SELECT string_agg(id::text, ',' ORDER BY id) FROM items",
        )
    }

    pub fn create_app(&self, db: &str) {
        self.sql("postgres", &format!("CREATE DATABASE {db}"));
        self.sql(
            db,
            "CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL);
             CREATE SCHEMA billing;
             CREATE TABLE billing.\"Invoice Lines\" (id serial PRIMARY KEY, amount numeric);
             INSERT INTO items VALUES (1, 'one'), (2, 'two'), (3, 'three');
             INSERT INTO billing.\"Invoice Lines\" (amount) VALUES (9.5);",
        );
    }
}

/// A directory for `pg_bin_dir` whose `pg_dump` succeeds but writes a file that is not a
/// dump, so the backup is recorded and then fails to read back (`verified_ok` false).
pub fn broken_pg_dump_dir(parent: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = parent.join("broken-pg-bin");
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("pg_dump");
    std::fs::write(
        &script,
        "#!/bin/sh\n\
         for a in \"$@\"; do\n\
         case \"$a\" in --file=*) printf 'PGDMP this is not a dump\\n' > \"${a#--file=}\" ;; esac\n\
         done\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}
