//! The dashboard's bearer token: 32 random bytes in hex, in `dashboard.token` in the
//! state dir, owner-only (0600). Reading the dashboard needs no token; every action
//! does. `ripcord dashboard` shows it.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use subtle::ConstantTimeEq;

/// The token file's name inside the state dir.
pub const FILE: &str = "dashboard.token";

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read the dashboard token {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write the dashboard token {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the dashboard token {} can be read by others (mode {mode:o}): run `chmod 600 {}`, or \
         delete it for a new one",
        path.display(),
        path.display()
    )]
    Exposed { path: PathBuf, mode: u32 },
    #[error("the dashboard token {} is not 64 hex digits: delete it for a new one", path.display())]
    Malformed { path: PathBuf },
    #[error("no randomness for the dashboard token: {0}")]
    Random(String),
}

/// The token, created on first use. Creation is race-free: the new token is written
/// to a private temporary file and linked into place only if no token exists yet, so
/// two processes starting at once end up with the same one.
pub fn load_or_create(state_dir: &Path) -> Result<String, TokenError> {
    let path = path(state_dir);
    match read(&path) {
        Err(TokenError::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
        other => return other,
    }
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| TokenError::Random(e.to_string()))?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let tmp = state_dir.join(format!(".{FILE}.{}", std::process::id()));
    let write_err = |source| TokenError::Write {
        path: path.clone(),
        source,
    };
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(write_err)?;
    let written = f
        .write_all(format!("{token}\n").as_bytes())
        .and_then(|()| f.sync_all());
    let linked = written.and_then(|()| fs::hard_link(&tmp, &path));
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(token),
        // Someone else made one first: theirs is the token.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read(&path),
        Err(e) => Err(write_err(e)),
    }
}

fn read(path: &Path) -> Result<String, TokenError> {
    let read_err = |source| TokenError::Read {
        path: path.to_path_buf(),
        source,
    };
    let meta = fs::metadata(path).map_err(read_err)?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(TokenError::Exposed {
            path: path.to_path_buf(),
            mode,
        });
    }
    let text = fs::read_to_string(path).map_err(read_err)?;
    let token = text.trim();
    if token.len() != 64 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(TokenError::Malformed {
            path: path.to_path_buf(),
        });
    }
    Ok(token.to_string())
}

/// Whether `given` is the token, compared in constant time (the length aside, which is
/// public: every token is 64 characters).
pub fn matches(token: &str, given: &str) -> bool {
    token.as_bytes().ct_eq(given.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_owner_only_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create(dir.path()).unwrap();
        let b = load_or_create(dir.path()).unwrap();
        assert_eq!(
            a, b,
            "a second call must read the first token, not make a new one"
        );
        assert_eq!(a.len(), 64);
        let mode = fs::metadata(path(dir.path())).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [std::ffi::OsString::from(FILE)]);
        let other = tempfile::tempdir().unwrap();
        assert_ne!(
            a,
            load_or_create(other.path()).unwrap(),
            "tokens are random"
        );
    }

    #[test]
    fn a_token_others_can_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        load_or_create(dir.path()).unwrap();
        fs::set_permissions(path(dir.path()), fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_or_create(dir.path()).unwrap_err().to_string();
        assert!(err.contains("can be read by others (mode 644)"), "{err}");
    }

    #[test]
    fn only_the_exact_token_matches() {
        let t = "ab".repeat(32);
        assert!(matches(&t, &t));
        assert!(!matches(&t, &"ab".repeat(31)));
        assert!(!matches(&t, &format!("{}ac", "ab".repeat(31))));
        assert!(!matches(&t, ""));
    }
}
