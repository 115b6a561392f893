//! `pg_dump` into the backup directory, and checking a backup before it is used.

use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::conn::{Target, newest_tool, tool};
use super::error::{DbError, pg_detail};
use super::{DbConfig, TableName};
use crate::clock::{file_stamp, now_ms};

/// A backup written by [`backup`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupFile {
    pub path: PathBuf,
    /// Lower-case hex sha256 of the file.
    pub sha256: String,
    pub size_bytes: u64,
    /// `SHOW server_version` of the server dumped.
    pub server_version: String,
    pub database: String,
    pub label: String,
    pub created_at_ms: i64,
}

/// A backup whose checksum matched and that pg_restore read through.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verified {
    pub path: PathBuf,
    pub sha256: String,
    /// How many TABLE entries `pg_restore --list` shows.
    pub table_count: usize,
    /// Those tables.
    pub tables: Vec<TableName>,
}

const NOTHING_CHANGED: &str = "no backup was written and the database was not changed";

/// `pg_dump --format=custom` of the configured database into `cfg.backup_dir`, under a
/// temporary name first, then fsynced and renamed to `<dbname>-<UTC stamp>.dump`.
pub async fn backup(cfg: &DbConfig, label: &str) -> Result<BackupFile, DbError> {
    let target = Target::from_config(cfg, &format!("ripcord-backup {label}"))?;
    let database = target.url.database.clone();
    let client = target.connect(&database).await?;
    let row = client
        .query_one(
            "SELECT current_setting('server_version'), current_setting('server_version_num')::int",
            &[],
        )
        .await
        .map_err(|e| DbError::Query {
            what: "reading the server version".into(),
            detail: pg_detail(&e),
            unchanged: NOTHING_CHANGED.into(),
        })?;
    let server_version: String = row.get(0);
    let server_version_num: i32 = row.get(1);
    drop(client);

    let dir = cfg.backup_dir.clone();
    let io = |what: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| DbError::Io {
            what,
            path,
            source,
            unchanged: NOTHING_CHANGED,
        }
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(io("create the backup directory", &dir))?;

    let created_at_ms = now_ms();
    let name = format!(
        "{}-{}.dump",
        file_safe(&database),
        file_stamp(created_at_ms)
    );
    let final_path = dir.join(&name);
    let tmp_path = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    // Created here with mode 0600 so the dump is never readable by others, even briefly.
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp_path)
        .map_err(io("create the backup file", &tmp_path))?;

    let result = dump_and_publish(&target, cfg, server_version_num, &tmp_path, &final_path).await;
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp_path);
    }
    let (sha256, size_bytes) = result?;
    Ok(BackupFile {
        path: final_path,
        sha256,
        size_bytes,
        server_version,
        database,
        label: label.to_string(),
        created_at_ms,
    })
}

async fn dump_and_publish(
    target: &Target,
    cfg: &DbConfig,
    server_version_num: i32,
    tmp: &Path,
    final_path: &Path,
) -> Result<(String, u64), DbError> {
    let program = tool(
        cfg.pg_bin_dir.as_deref(),
        Some(server_version_num),
        "pg_dump",
    );
    let out = pg_dump_command(target, &program, tmp)
        .output()
        .await
        .map_err(|source| DbError::Spawn {
            program: program.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(DbError::DumpFailed {
            database: target.url.database.clone(),
            stderr: stderr_text(&out.stderr, out.status),
        });
    }
    let tmp_owned = tmp.to_path_buf();
    let (sha, size) = blocking(move || {
        std::fs::set_permissions(&tmp_owned, std::fs::Permissions::from_mode(0o600))?;
        std::fs::File::open(&tmp_owned)?.sync_all()?;
        sha256_file(&tmp_owned)
    })
    .await
    .map_err(|source| DbError::Io {
        what: "fsync and checksum the backup file",
        path: tmp.to_path_buf(),
        source,
        unchanged: NOTHING_CHANGED,
    })?;
    let (tmp_owned, final_owned) = (tmp.to_path_buf(), final_path.to_path_buf());
    blocking(move || {
        std::fs::rename(&tmp_owned, &final_owned)?;
        let dir = final_owned.parent().unwrap_or(Path::new("."));
        let synced = std::fs::File::open(dir).and_then(|d| d.sync_all());
        if synced.is_err() {
            // Not durable: take it back rather than report a backup that may vanish.
            let _ = std::fs::remove_file(&final_owned);
        }
        synced
    })
    .await
    .map_err(|source| DbError::Io {
        what: "move the finished backup into place",
        path: final_path.to_path_buf(),
        source,
        unchanged: NOTHING_CHANGED,
    })?;
    Ok((sha, size))
}

/// The `pg_dump` command: the URL (never holding a password) on the command line, the
/// password in PGPASSWORD.
pub fn pg_dump_command(target: &Target, program: &Path, file: &Path) -> tokio::process::Command {
    let mut c = target.command(program);
    c.arg("--format=custom")
        .arg(format!("--file={}", file.display()))
        .arg(format!("--dbname={}", target.url.as_string()));
    c
}

/// Checks `path` before it is restored: it exists, its sha256 is `expected_sha256`, and
/// pg_restore can read its table of contents and every data block.
pub async fn verify(path: &Path, expected_sha256: &str) -> Result<Verified, DbError> {
    let owned = path.to_path_buf();
    let (actual, _size) = match blocking(move || sha256_file(&owned)).await {
        Ok(v) => v,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(DbError::BackupMissing {
                path: path.to_path_buf(),
            });
        }
        Err(source) => {
            return Err(DbError::Io {
                what: "read the backup file",
                path: path.to_path_buf(),
                source,
                unchanged: "nothing was changed",
            });
        }
    };
    if !actual.eq_ignore_ascii_case(expected_sha256.trim()) {
        return Err(DbError::ChecksumMismatch {
            path: path.to_path_buf(),
            expected: expected_sha256.trim().to_ascii_lowercase(),
            actual,
        });
    }
    let program = newest_tool("pg_restore");
    let unreadable = |stderr: String| DbError::Unreadable {
        path: path.to_path_buf(),
        stderr,
    };
    // The table of contents: what the backup holds.
    let list = run_offline(
        &program,
        &[std::ffi::OsStr::new("--list"), path.as_os_str()],
    )
    .await?;
    let list = list.map_err(unreadable)?;
    let tables = parse_list(&list);
    // The table of contents sits at the start of the file, so --list alone passes on a
    // file cut short; writing the whole restore script to /dev/null reads every block.
    run_offline(
        &program,
        &[std::ffi::OsStr::new("--file=/dev/null"), path.as_os_str()],
    )
    .await?
    .map_err(unreadable)?;
    Ok(Verified {
        path: path.to_path_buf(),
        sha256: actual,
        table_count: tables.len(),
        tables,
    })
}

/// Runs a pg_restore that needs no server; `Ok(Err(stderr))` when it fails.
async fn run_offline(
    program: &Path,
    args: &[&std::ffi::OsStr],
) -> Result<Result<String, String>, DbError> {
    let out = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|source| DbError::Spawn {
            program: program.to_path_buf(),
            source,
        })?;
    if out.status.success() {
        Ok(Ok(String::from_utf8_lossy(&out.stdout).into_owned()))
    } else {
        Ok(Err(stderr_text(&out.stderr, out.status)))
    }
}

/// The TABLE entries of `pg_restore --list` output, lines like
/// `215; 1259 16386 TABLE public items postgres`.
pub fn parse_list(list: &str) -> Vec<TableName> {
    let mut tables: Vec<TableName> = list
        .lines()
        .filter(|l| !l.starts_with(';'))
        .filter_map(|l| {
            let (_, rest) = l.split_once("; ")?;
            let mut words = rest.split(' ');
            let (tableoid, _oid, kind) = (words.next()?, words.next()?, words.next()?);
            if kind != "TABLE" {
                return None;
            }
            let rest: Vec<&str> = words.collect();
            // `TABLE DATA` entries (catalog oid 0) carry another word before the schema.
            if tableoid == "0" && rest.first().is_some_and(|w| *w == "DATA") {
                return None;
            }
            // schema, name (which may hold spaces), owner (may be empty).
            match rest.as_slice() {
                [schema, name @ .., _owner] if !name.is_empty() => Some(TableName {
                    schema: schema.to_string(),
                    name: name.join(" "),
                }),
                [schema, name] => Some(TableName {
                    schema: schema.to_string(),
                    name: name.to_string(),
                }),
                _ => None,
            }
        })
        .collect();
    tables.sort();
    tables.dedup();
    tables
}

/// Lower-case hex sha256 and size of a file.
pub fn sha256_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        h.update(&buf[..n]);
    }
    Ok((to_hex(&h.finalize()), size))
}

fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 0xf) as usize] as char);
    }
    s
}

/// A child's stderr, trimmed, or its exit status when it printed nothing.
pub(crate) fn stderr_text(stderr: &[u8], status: std::process::ExitStatus) -> String {
    let s = String::from_utf8_lossy(stderr).trim().to_string();
    if s.is_empty() {
        format!("it exited with {status} and printed nothing")
    } else {
        s
    }
}

/// The database name made safe for a file name.
fn file_safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(std::io::Error::other)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_and_sha() {
        assert_eq!(to_hex(&[0x00, 0xab, 0x0f, 0xff]), "00ab0fff");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(
            sha256_file(&p).unwrap(),
            (
                "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad".to_string(),
                3
            )
        );
    }

    #[test]
    fn parses_pg_restore_list() {
        let list = ";\n; Archive created at 2026-01-01 00:00:00 UTC\n;     dbname: app\n;\n\
            215; 1259 16386 TABLE public items postgres\n\
            216; 1259 16390 TABLE public order lines app_owner\n\
            214; 1259 16385 SEQUENCE public items_id_seq postgres\n\
            3350; 0 16386 TABLE DATA public items postgres\n\
            3351; 0 0 SEQUENCE SET public items_id_seq postgres\n\
            3200; 2606 16392 CONSTRAINT public items items_pkey postgres\n\
            217; 1259 16400 TABLE billing invoices \n";
        let t = parse_list(list);
        let names: Vec<String> = t
            .iter()
            .map(|t| format!("{}.{}", t.schema, t.name))
            .collect();
        assert_eq!(
            names,
            vec!["billing.invoices", "public.items", "public.order lines"]
        );
        assert_eq!(file_safe("my db/x"), "my_db_x");
    }
}
