//! The site file on disk: read as UTF-8, written atomically with its mode and owner
//! kept, and locked for the length of a switch.

use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use super::{SiteError, io_err};

/// The hidden file beside `site` that holds ripcord's work: `.NAME.ripcord-SUFFIX`. The
/// leading dot matters: nginx's `include sites-enabled/*` globs skip dot files, so a
/// backup or temp file next to a site that lives in an included directory is never read
/// by nginx as a second copy of the site (it would fail with "duplicate upstream").
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.ripcord-{suffix}"))
}

/// Where [`switch`] keeps the previous version of the (resolved) site file.
pub fn backup_path(site: &Path) -> PathBuf {
    sibling(site, "prev")
}

pub(super) fn read_text(path: &Path) -> Result<String, SiteError> {
    let bytes = fs::read(path).map_err(io_err("read site file", path))?;
    String::from_utf8(bytes).map_err(|e| SiteError::NotUtf8 {
        path: path.to_path_buf(),
        offset: e.utf8_error().valid_up_to(),
    })
}

/// Writes `bytes` to `path` so that a reader sees the old file or the new one, never a
/// mix: a temp file beside it, fsynced, renamed over, and the directory fsynced so the
/// rename survives a crash. The new file gets `like`'s mode and owner.
pub(super) fn write_atomically(
    path: &Path,
    bytes: &[u8],
    like: Option<&Metadata>,
) -> Result<(), SiteError> {
    let tmp = sibling(path, "tmp");
    let result = (|| -> io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        if let Some(meta) = like {
            f.set_permissions(meta.permissions())?;
            let own = f.metadata()?;
            if own.uid() != meta.uid() || own.gid() != meta.gid() {
                std::os::unix::fs::fchown(&f, Some(meta.uid()), Some(meta.gid()))?;
            }
        }
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            File::open(if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            })?
            .sync_all()?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(io_err("write", path))
}

/// Held for the whole switch so two ripcords owning different upstreams of one site file
/// do not read-modify-write it over each other.
pub(super) struct SiteLock {
    _file: File,
}

pub(super) fn lock_site(site: &Path, wait: Duration) -> Result<SiteLock, SiteError> {
    let lock = sibling(site, "lock");
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock)
        .map_err(io_err("open lock file", &lock))?;
    let start = Instant::now();
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(SiteLock { _file: file }),
            Err(fs::TryLockError::WouldBlock) => {}
            Err(fs::TryLockError::Error(error)) => {
                return Err(SiteError::Io {
                    action: "lock",
                    path: lock,
                    error,
                });
            }
        }
        if start.elapsed() >= wait {
            return Err(SiteError::Locked {
                path: site.to_path_buf(),
                lock,
                waited: start.elapsed(),
            });
        }
        thread::sleep(Duration::from_millis(20));
    }
}
