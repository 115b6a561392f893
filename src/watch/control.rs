//! The watcher's local control API: newline-delimited JSON over a unix socket in the
//! state dir (owner-only). A client sends one [`Request`] line; the watcher answers with
//! any number of [`Reply::Progress`] lines and exactly one [`Reply::Done`].

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// The socket's file name inside the state dir.
pub const SOCKET_NAME: &str = "ripcord.sock";

pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join(SOCKET_NAME)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Deploy {
        service: String,
        version: String,
        /// The slot to deploy to (default: the idle one).
        #[serde(default)]
        slot: Option<crate::config::Slot>,
        argv: Option<Vec<String>>,
        cwd: Option<PathBuf>,
        /// Runtime docker: the image reference to deploy (default `IMAGE:VERSION`).
        #[serde(default)]
        image: Option<String>,
        force: bool,
        reason: Option<String>,
    },
    Rollback {
        service: String,
        to: Option<String>,
        reason: Option<String>,
        /// Across a contract migration (needs a reason).
        #[serde(default)]
        force: bool,
    },
    /// Rehearse the rollback path: back to the previous release, verify, forward again,
    /// verify (`ripcord drill`). Its `Done` carries the drill's outcome even when it
    /// failed.
    Drill {
        service: String,
    },
    /// Restore a database backup (consent was given to the CLI).
    Restore {
        service: String,
        backup: i64,
        /// The database name the person confirmed: the watcher restores only into it.
        confirm: String,
    },
    /// Live facts only the watcher has (proxy counters, processes).
    Live {
        service: String,
    },
    Ping,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Progress {
        message: String,
    },
    Done {
        exit: i32,
        result: serde_json::Value,
        error: Option<String>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "no watcher is running for state dir {}: start `ripcord watch` (the built-in proxy and \
         the process runtime live in it), then try again",
        state_dir.display()
    )]
    NotRunning { state_dir: PathBuf },
    #[error("talking to the watcher at {}: {source}", socket.display())]
    Io {
        socket: PathBuf,
        source: std::io::Error,
    },
    #[error("the watcher at {} closed the connection without an answer", socket.display())]
    NoAnswer { socket: PathBuf },
}

/// Sends `request` and calls `on_progress` for each progress line; returns the final
/// `(exit, result, error)`.
pub async fn call(
    state_dir: &Path,
    request: &Request,
    mut on_progress: impl FnMut(&str),
) -> Result<(i32, serde_json::Value, Option<String>), ClientError> {
    let socket = socket_path(state_dir);
    let stream = match UnixStream::connect(&socket).await {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Err(ClientError::NotRunning {
                state_dir: state_dir.to_path_buf(),
            });
        }
        Err(source) => return Err(ClientError::Io { socket, source }),
    };
    let io_err = |source| ClientError::Io {
        socket: socket.clone(),
        source,
    };
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_string(request).expect("requests serialize");
    line.push('\n');
    write.write_all(line.as_bytes()).await.map_err(io_err)?;
    let mut lines = BufReader::new(read).lines();
    while let Some(line) = lines.next_line().await.map_err(io_err)? {
        match serde_json::from_str::<Reply>(&line) {
            Ok(Reply::Progress { message }) => on_progress(&message),
            Ok(Reply::Done {
                exit,
                result,
                error,
            }) => return Ok((exit, result, error)),
            Err(e) => {
                return Err(io_err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("unreadable answer {line:?}: {e}"),
                )));
            }
        }
    }
    Err(ClientError::NoAnswer { socket })
}
