//! The one IO edge of `migrate/`: reads the files and directories named on the command
//! line into [`SourceFile`]s for [`super::plan`]. Only the CLI calls it; the checker itself
//! never touches the disk.
//!
//! It picks `.sql`, `.py` and `.rb` files and diesel's `metadata.toml` (read by
//! [`super::plan`] as text like the rest), walks directories in sorted order, skips hidden
//! entries and `__pycache__`, and names the path in every error. It never follows a
//! symlinked directory (a link loop would never end). Bytes that are not UTF-8 are read
//! as U+FFFD (the checker reports them), never an error that would stop the other files
//! from being checked.

use std::path::{Path, PathBuf};

use super::SourceFile;

#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} does not exist")]
    Missing { path: PathBuf },
}

/// Reads every `.sql`, `.py` and `metadata.toml` file under `paths` (files are taken whatever their
/// extension, since the user named them).
pub fn read_paths(paths: &[PathBuf]) -> Result<Vec<SourceFile>, DiscoverError> {
    let mut out = Vec::new();
    for p in paths {
        let meta = std::fs::metadata(p).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                DiscoverError::Missing { path: p.clone() }
            } else {
                DiscoverError::Read {
                    path: p.clone(),
                    source: e,
                }
            }
        })?;
        if meta.is_dir() {
            walk(p, &mut out)?;
        } else {
            out.push(read(p)?);
        }
    }
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<SourceFile>) -> Result<(), DiscoverError> {
    let err = |e| DiscoverError::Read {
        path: dir.to_path_buf(),
        source: e,
    };
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(err)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(err)?;
    entries.sort();
    for path in entries {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with('.') || name == "__pycache__" {
            continue;
        }
        let meta = std::fs::symlink_metadata(&path).map_err(|e| DiscoverError::Read {
            path: path.clone(),
            source: e,
        })?;
        if meta.is_dir() {
            walk(&path, out)?;
        } else if name.ends_with(".sql")
            || name.ends_with(".py")
            || name.ends_with(".rb")
            || name == "metadata.toml"
        {
            out.push(read(&path)?);
        }
    }
    Ok(())
}

fn read(path: &Path) -> Result<SourceFile, DiscoverError> {
    let bytes = std::fs::read(path).map_err(|e| DiscoverError::Read {
        path: path.to_path_buf(),
        source: e,
    })?;
    // A file that is not UTF-8 is still checked: its bad bytes become U+FFFD, which
    // the checker reports with their line, and the other files are checked as usual.
    let text = match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    };
    Ok(SourceFile {
        path: path.to_string_lossy().into_owned(),
        text,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::migrate::{DownState, Layout, Settings, check, exit_code, plan};

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/migrations")
            .join(name)
    }

    #[test]
    fn diesel_metadata_is_read_with_the_migration_and_honoured() {
        let files = read_paths(&[fixture("diesel")]).unwrap();
        assert!(files.iter().any(|f| f.path.ends_with("/metadata.toml")));
        let migrations = plan(files);
        assert_eq!(migrations.len(), 1);
        assert_eq!(migrations[0].layout, Layout::Diesel);
        assert!(migrations[0].without_transaction);
        let report = check(&migrations, &Settings::default());
        let f = &report.files[0];
        assert!(f.upgrade.findings.is_empty(), "{:?}", f.upgrade.findings);
        assert!(
            f.downgrade.findings.is_empty(),
            "{:?}",
            f.downgrade.findings
        );
        assert_eq!(f.downgrade.state, DownState::Ok);
        assert_eq!(exit_code(&report), 0);
    }

    #[test]
    fn flyway_concurrently_alone_runs_outside_a_transaction() {
        let report = check(
            &plan(read_paths(&[fixture("flyway")]).unwrap()),
            &Settings::default(),
        );
        assert_eq!(report.files.len(), 1);
        let f = &report.files[0];
        assert_eq!(f.layout, Layout::Flyway);
        assert!(f.upgrade.findings.is_empty(), "{:?}", f.upgrade.findings);
        assert_eq!(f.downgrade.state, DownState::Ok);
        assert_eq!(exit_code(&report), 0);
    }
}
