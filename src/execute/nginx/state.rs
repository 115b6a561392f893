//! The state file: the fingerprint of the block ripcord last wrote (and of a write in
//! progress), a small JSON object written atomically.

use std::fs;
use std::io;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::files::write_atomically;
use super::{SiteError, io_err, millis};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct State {
    pub(super) site: String,
    pub(super) upstream: String,
    /// The fingerprint of the block as ripcord last wrote it (and nginx accepted).
    pub(super) fingerprint: String,
    /// The block's server lines then, for the hand-edit message.
    pub(super) servers: String,
    /// The fingerprint of a write in progress.
    #[serde(default)]
    pub(super) pending: Option<String>,
}

/// The state file as stored: the [`State`] between a format version and the time it was
/// written (which is for people; reading ignores it).
#[derive(Serialize, Deserialize)]
struct Stored {
    version: u64,
    #[serde(flatten)]
    state: State,
    #[serde(skip_deserializing)]
    updated_unix_ms: u64,
}

pub(super) enum Loaded {
    Missing,
    Found(State),
    Bad(String),
}

const STATE_VERSION: u64 = 1;

pub(super) fn load_state(path: &Path) -> Result<Loaded, SiteError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Loaded::Missing),
        Err(e) if e.kind() == io::ErrorKind::InvalidData => {
            return Ok(Loaded::Bad("not UTF-8".into()));
        }
        Err(error) => {
            return Err(SiteError::Io {
                action: "read state file",
                path: path.to_path_buf(),
                error,
            });
        }
    };
    Ok(match parse_state(&text) {
        Ok(st) => Loaded::Found(st),
        Err(reason) => Loaded::Bad(reason),
    })
}

pub(super) fn parse_state(text: &str) -> Result<State, String> {
    let stored: Stored = serde_json::from_str(text).map_err(|e| e.to_string())?;
    if stored.version != STATE_VERSION {
        return Err(format!("`version` is not {STATE_VERSION}"));
    }
    Ok(stored.state)
}

pub(super) fn render_state(st: &State) -> String {
    let stored = Stored {
        version: STATE_VERSION,
        state: st.clone(),
        updated_unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(millis)
            .unwrap_or(0),
    };
    let mut text =
        serde_json::to_string_pretty(&stored).expect("strings and integers serialize to JSON");
    text.push('\n');
    text
}

pub(super) fn store_state(path: &Path, st: &State) -> Result<(), SiteError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(io_err("create state directory", dir))?;
    }
    write_atomically(path, render_state(st).as_bytes(), None)
}
