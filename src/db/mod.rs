//! PostgreSQL backups (`pg_dump` custom format, checksummed) and a safe restore: a
//! verified backup is restored into a new database, checked, and only then swapped in by
//! renaming; the original database is kept under `<name>_before_restore_<stamp>`.
//!
//! Passwords never go on a command line, into a URL or into an error: they come from
//! `password_file` or PGPASSWORD and reach child programs through PGPASSWORD only.
//! Programs are run with argument vectors, never through a shell.

mod backup;
mod conn;
mod error;
mod head;
mod restore;
mod retention;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use backup::{BackupFile, Verified, backup, parse_list, pg_dump_command, sha256_file, verify};
pub use conn::{PgUrl, Target, quote_ident};
pub use error::{DbError, RestoreStep};
pub use head::schema_head;
pub use restore::{
    MAX_NAME_BYTES, Recovered, fit_name, recover_restore, restore_into_new, restore_names, swap,
};
pub use retention::{BackupMeta, loss_window, retention};

/// Where a service's database is and how its backups are kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbConfig {
    /// `postgresql://user@host:port/dbname`, optionally `?host=/socket/dir`; no password.
    pub url: String,
    /// A file whose first line is the password; else PGPASSWORD is used when set.
    pub password_file: Option<PathBuf>,
    /// Created with mode 0700 when missing; dumps are written with mode 0600.
    pub backup_dir: PathBuf,
    /// How many backups to keep (at least one is always kept).
    pub keep: usize,
    /// SQL run on a restored database before it is swapped in; each must return a row,
    /// and when its first column is boolean, a row where it is true.
    pub checks: Vec<String>,
    /// The directory of pg_dump and pg_restore; when unset, the Debian directory of the
    /// server's major version (/usr/lib/postgresql/N/bin) when present, else PATH.
    #[serde(default)]
    pub pg_bin_dir: Option<PathBuf>,
}

/// A table, as `pg_restore --list` and `pg_tables` name it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TableName {
    pub schema: String,
    pub name: String,
}
