//! The socket keeper: a small process that holds the proxies' listening sockets across
//! watcher restarts (`ripcord --state-dir DIR keep-sockets`, started by the watcher).
//!
//! It serves one watcher at a time on `sockets.sock`: `take` (send copies of what it
//! holds), `hold` (hold exactly these from now on), `bye` (let go and exit). The
//! watcher's connection stays open for its life; when it ends without a `bye` (the
//! watcher died) the keeper waits `grace` for the next watcher, then lets go and exits,
//! so a watcher that never comes back leaves clients refused rather than waiting.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::wire::{self, Msg};
use super::{LOG_FILE, poll_until, socket_path};

/// How a watcher's connection ended.
enum End {
    /// It said goodbye: exit.
    Bye,
    /// It went away (died): wait for the next one.
    Gone,
}

/// Runs the keeper until a watcher says goodbye, or none comes for `grace`. Returns the
/// exit code.
pub fn serve(state_dir: &Path, grace: Duration) -> i32 {
    let path = socket_path(state_dir);
    if UnixStream::connect(&path).is_ok() {
        eprintln!(
            "ripcord keep-sockets: a keeper already serves {}",
            path.display()
        );
        return 0;
    }
    let _ = std::fs::remove_file(&path);
    let listener = match bind_owner_only(&path) {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "ripcord keep-sockets: cannot listen on {}: {e}",
                path.display()
            );
            return 1;
        }
    };
    eprintln!(
        "ripcord keep-sockets (pid {}): holding listening sockets for the watcher of {}",
        std::process::id(),
        state_dir.display()
    );
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            match conn {
                Ok(c) => {
                    if tx.send(c).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    eprintln!("ripcord keep-sockets: accept failed: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    });
    let mut held: Vec<(SocketAddr, OwnedFd)> = Vec::new();
    // Until the first watcher connects, the keeper is as good as orphaned.
    let mut orphaned = Instant::now();
    loop {
        let wait = grace.saturating_sub(orphaned.elapsed());
        let conn = match rx.recv_timeout(wait) {
            Ok(c) => c,
            Err(_) => {
                eprintln!(
                    "ripcord keep-sockets: no watcher came back within {}s: letting go of {} socket(s)",
                    grace.as_secs(),
                    held.len()
                );
                break;
            }
        };
        match serve_watcher(&conn, &mut held) {
            End::Bye => break,
            End::Gone => {
                eprintln!(
                    "ripcord keep-sockets: the watcher went away; holding {} socket(s) for {}s",
                    held.len(),
                    grace.as_secs()
                );
                orphaned = Instant::now();
            }
        }
    }
    // The file goes first, so no new watcher connects to a keeper that is leaving.
    let _ = std::fs::remove_file(&path);
    drop(held);
    0
}

fn serve_watcher(conn: &UnixStream, held: &mut Vec<(SocketAddr, OwnedFd)>) -> End {
    loop {
        let (msg, fds) = match wire::recv(conn) {
            Ok(Some(m)) => m,
            Ok(None) => return End::Gone,
            Err(e) => {
                eprintln!("ripcord keep-sockets: {e}");
                let _ = wire::send(
                    conn,
                    &Msg::Error {
                        message: e.to_string(),
                    },
                    &[],
                );
                return End::Gone;
            }
        };
        let answer = match msg {
            Msg::Take => {
                let addrs = held.iter().map(|(a, _)| *a).collect();
                let fds: Vec<_> = held.iter().map(|(_, fd)| fd.as_fd()).collect();
                wire::send(conn, &Msg::Held { addrs }, &fds)
            }
            Msg::Hold { addrs } if addrs.len() == fds.len() => {
                *held = addrs.into_iter().zip(fds).collect();
                wire::send(conn, &Msg::Ok, &[])
            }
            Msg::Hold { addrs } => wire::send(
                conn,
                &Msg::Error {
                    message: format!("{} addresses came with {} sockets", addrs.len(), fds.len()),
                },
                &[],
            ),
            Msg::Bye => {
                let _ = wire::send(conn, &Msg::Ok, &[]);
                return End::Bye;
            }
            other => wire::send(
                conn,
                &Msg::Error {
                    message: format!("not a request: {other:?}"),
                },
                &[],
            ),
        };
        if answer.is_err() {
            return End::Gone;
        }
    }
}

/// Binds a unix socket no other user can connect to (created under a 0177 umask, then
/// 0600).
fn bind_owner_only(path: &Path) -> io::Result<UnixListener> {
    let umask = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(path);
    nix::sys::stat::umask(umask);
    let listener = bound?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Starts a keeper for `state_dir` (`program --state-dir DIR keep-sockets --grace S`) in
/// a process group of its own (a Ctrl-C meant for the watcher does not reach it), its
/// output appended to `sockets.log`, and connects to it.
pub fn spawn(state_dir: &Path, program: &Path, grace: Duration) -> io::Result<UnixStream> {
    let log_path: PathBuf = state_dir.join(LOG_FILE);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)?;
    std::fs::set_permissions(&log_path, std::fs::Permissions::from_mode(0o600))?;
    let grace_ms = grace.as_millis().to_string();
    // Absolute, so the keeper's log names it whatever directory it runs in.
    let dir = state_dir
        .canonicalize()
        .unwrap_or_else(|_| state_dir.to_path_buf());
    let mut child = Command::new(program)
        .arg("--state-dir")
        .arg(&dir)
        .arg("keep-sockets")
        .arg("--grace")
        .arg(format!("{grace_ms}ms"))
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .process_group(0)
        .spawn()?;
    let path = socket_path(state_dir);
    // Reaped by a thread, so a keeper that exits while this watcher runs leaves no
    // zombie; it outlives a watcher that dies.
    let pid = child.id();
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    poll_until(Duration::from_secs(5), || UnixStream::connect(&path).ok()).ok_or_else(|| {
        io::Error::other(format!(
            "the keeper (pid {pid}) did not listen on {} within 5 s; see {}",
            path.display(),
            log_path.display()
        ))
    })
}
