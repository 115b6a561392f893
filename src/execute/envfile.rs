//! Env files and their per-release snapshots (runtimes `process` and `docker`).
//!
//! The runbook re-ran an old image with *today's* env file. ripcord copies a release's
//! environment (the config's `env` with the env file's variables over it) at deploy time
//! into the state dir (owner-only, written atomically) and a rollback starts the old
//! release with that copy. Values are secrets: they are never printed,
//! logged or put in the ledger; only the variable names are.

use std::io::Write;
use std::path::{Path, PathBuf};

/// One parse problem, with the file and line it is on.
#[derive(Debug, thiserror::Error)]
pub enum EnvFileError {
    #[error("cannot read the env file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Syntax {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("cannot write the env snapshot {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Docker's env-file format: `KEY=VALUE` per line, taken literally (no quotes, no
/// expansion); blank lines and lines starting with `#` are skipped; a bare `KEY` takes
/// the value from ripcord's own environment at snapshot time (and is left out when
/// unset), so the snapshot stands on its own later.
pub fn parse(text: &str, path: &Path) -> Result<Vec<(String, String)>, EnvFileError> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = match line.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (line.trim_end(), None),
        };
        if key.is_empty() || key.chars().any(char::is_whitespace) {
            // The line may be part of a secret (a PEM key's body): never echo it.
            return Err(EnvFileError::Syntax {
                path: path.to_path_buf(),
                line: i + 1,
                message: "not KEY=VALUE (the line is not shown: it may hold a secret)".to_string(),
            });
        }
        let value = match value {
            Some(v) => v.to_string(),
            None => match std::env::var(key) {
                Ok(v) if v.contains('\n') => {
                    return Err(EnvFileError::Syntax {
                        path: path.to_path_buf(),
                        line: i + 1,
                        message: format!(
                            "{key} comes from the environment and holds a line break, which an env \
                             file cannot carry; put it in a file the app reads instead"
                        ),
                    });
                }
                Ok(v) => v,
                Err(_) => continue,
            },
        };
        // A later line wins, as with `docker run --env-file`.
        out.retain(|(k, _)| k != key);
        out.push((key.to_string(), value));
    }
    Ok(out)
}

/// A short content digest of a snapshot (16 hex digits of its sha256), for its name.
pub fn digest(vars: &[(String, String)]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for (k, v) in vars {
        h.update(k.as_bytes());
        h.update([0]);
        h.update(v.as_bytes());
        h.update([0]);
    }
    h.finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Reads and parses an env file.
pub fn read(path: &Path) -> Result<Vec<(String, String)>, EnvFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| EnvFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, path)
}

/// Writes `vars` to `dest` atomically, owner-only (0600, in a 0700 directory).
pub fn write_snapshot(dest: &Path, vars: &[(String, String)]) -> Result<(), EnvFileError> {
    let err = |source| EnvFileError::Write {
        path: dest.to_path_buf(),
        source,
    };
    let dir = dest.parent().unwrap_or(Path::new("."));
    create_private_dir(dir).map_err(err)?;
    let mut body = String::from("# ripcord env snapshot: owner-only, never printed\n");
    for (k, v) in vars {
        body.push_str(k);
        body.push('=');
        body.push_str(v);
        body.push('\n');
    }
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        dest.file_name().and_then(|n| n.to_str()).unwrap_or("env"),
        std::process::id()
    ));
    let result = (|| {
        let mut f = open_private(&tmp)?;
        f.write_all(body.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, dest)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(err)
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

fn open_private(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_env_files_literally() {
        let text = "# comment\n\nA=1\n  B=two words\nC=\"quoted\"\nD=x=y\nA=3\n";
        let vars = parse(text, Path::new("app.env")).unwrap();
        assert_eq!(
            vars,
            vec![
                ("B".to_string(), "two words".to_string()),
                ("C".to_string(), "\"quoted\"".to_string()),
                ("D".to_string(), "x=y".to_string()),
                ("A".to_string(), "3".to_string()),
            ]
        );
    }

    #[test]
    fn a_bad_line_names_file_and_line() {
        let err = parse("A=1\nNOT A VAR\n", Path::new("/etc/app.env")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/etc/app.env:2: not KEY=VALUE (the line is not shown: it may hold a secret)"
        );
    }

    #[test]
    fn a_bare_key_takes_ripcords_environment() {
        // PATH is set in every test environment; an unset name is left out.
        let vars = parse("PATH\nRIPCORD_SURELY_UNSET_42\n", Path::new("e")).unwrap();
        assert_eq!(vars.len(), 1);
        assert_eq!(vars[0].0, "PATH");
    }

    #[test]
    fn snapshots_are_owner_only_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("env/web/v1.env");
        let vars = vec![("SECRET".to_string(), "hunter2".to_string())];
        write_snapshot(&dest, &vars).unwrap();
        let mode = std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dmode = std::fs::metadata(dest.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dmode, 0o700);
        assert_eq!(read(&dest).unwrap(), vars);
    }
}
