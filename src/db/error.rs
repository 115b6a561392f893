//! What can go wrong with a backup or a restore, said so a person under pressure knows
//! what failed, what stayed as it was, and what to do next.

use std::path::PathBuf;

use thiserror::Error;

/// The step of [`restore_into_new`](super::restore_into_new) that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestoreStep {
    /// Creating the empty database to restore into.
    CreateDatabase,
    /// `pg_restore` into the new database.
    PgRestore,
    /// Comparing the restored tables with the tables the backup lists.
    TablesPresent,
    /// One of the configured SQL checks.
    Check,
}

impl std::fmt::Display for RestoreStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RestoreStep::CreateDatabase => "1/4 create the new database",
            RestoreStep::PgRestore => "2/4 pg_restore into the new database",
            RestoreStep::TablesPresent => "3/4 check that every table in the backup was restored",
            RestoreStep::Check => "4/4 run the configured checks",
        })
    }
}

/// Everything the `db` module can fail with. No variant ever carries a password.
#[derive(Debug, Error)]
pub enum DbError {
    #[error(
        "the database URL contains a password; nothing was done. Remove it from the URL and put it in \
         the file named by `password_file` (first line) or in the PGPASSWORD environment variable"
    )]
    PasswordInUrl,

    #[error(
        "the database URL is not usable: {reason}; nothing was done. Expected \
         postgresql://user@host:port/dbname (optionally ?host=/socket/dir)"
    )]
    BadUrl { reason: String },

    #[error(
        "cannot read the password file {path}: {source}; nothing was done. Check that it exists and \
         is readable by this user, or set PGPASSWORD instead"
    )]
    PasswordFile {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error(
        "cannot connect to database \"{database}\": {detail}; nothing was changed. Check that the server \
         is up, the URL (host, port, user) and the password"
    )]
    Connect { database: String, detail: String },

    #[error("{what} failed: {detail}; {unchanged}")]
    Query {
        what: String,
        detail: String,
        unchanged: String,
    },

    #[error(
        "cannot {what} {path}: {source}; {unchanged}. Check that the path exists, has free space and is \
         writable by this user"
    )]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
        unchanged: &'static str,
    },

    #[error(
        "cannot run {program}: {source}; nothing was changed. Install PostgreSQL's client programs \
         (Debian: postgresql-client) or set `pg_bin_dir`"
    )]
    Spawn {
        program: PathBuf,
        source: std::io::Error,
    },

    #[error(
        "pg_dump of database \"{database}\" failed: {stderr}; no backup was written and the database was \
         not changed. Fix the cause above and run the backup again"
    )]
    DumpFailed { database: String, stderr: String },

    #[error(
        "the backup file {path} does not exist; nothing was changed. Pick another \
         backup, or check that the backup directory is mounted"
    )]
    BackupMissing { path: PathBuf },

    #[error(
        "the backup file {path} is damaged: its sha256 is {actual} but {expected} was recorded when it \
         was made (truncated or modified since); nothing was changed. Do not restore it: pick another backup"
    )]
    ChecksumMismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },

    #[error(
        "pg_restore cannot read the backup file {path}: {stderr}; nothing was changed. Do not restore it: \
         pick another backup"
    )]
    Unreadable { path: PathBuf, stderr: String },

    #[error(
        "restore stopped at step {step}: {detail}. {cleanup} The original database \"{original}\" was \
         not touched and is still in use. Fix the cause or pick another backup, then restore again"
    )]
    Restore {
        step: RestoreStep,
        detail: String,
        original: String,
        /// What happened to the half-restored database.
        cleanup: String,
    },

    #[error("swap of \"{new_db}\" into \"{original}\" failed: {detail}. {state}")]
    Swap {
        original: String,
        new_db: String,
        detail: String,
        /// Which database carries which name now, and what to do.
        state: String,
    },
}

/// The server's message for a `tokio_postgres` error (its `Display` alone says only
/// "db error"), with detail and hint when the server sent them.
pub(crate) fn pg_detail(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!("{} ({})", db.message(), db.code().code());
            if let Some(d) = db.detail() {
                s.push_str(&format!("; {d}"));
            }
            if let Some(h) = db.hint() {
                s.push_str(&format!("; hint: {h}"));
            }
            s
        }
        None => {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(inner) = src {
                s.push_str(&format!(": {inner}"));
                src = inner.source();
            }
            s
        }
    }
}
