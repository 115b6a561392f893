//! Listening sockets that outlive the watcher, so users do not notice when it dies.
//!
//! A listening socket lives as long as any process holds it. While the watcher is
//! gone, connections wait in the socket's backlog instead of being refused, and the
//! next watcher accepts them: a request meets a delay of the restart, not an error.
//! Two holders are understood:
//!
//! - **systemd socket activation** (`LISTEN_FDS`, the units in `deploy/systemd/`):
//!   systemd holds the sockets and hands them to every `ripcord watch` it starts.
//! - **the socket keeper** (`keeper.rs`), when systemd does not: a small process the
//!   first watcher starts (`ripcord keep-sockets`, hidden), which holds a copy of each
//!   proxy's listening socket and hands it to the next watcher over a unix socket in
//!   the state dir (`sockets.sock`, SCM_RIGHTS). A watcher that stops cleanly tells it
//!   to let go; one that dies leaves it holding them for a grace period, after which
//!   it lets go too (clients are then refused, as with no keeper).
//!
//! Pure plumbing: this module knows addresses and file descriptors, nothing of
//! services (a leaf; `watch` and `cli` use it).

pub mod keeper;
mod wire;

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use wire::Msg;

/// The keeper's unix socket, in the state dir.
pub const SOCKET_FILE: &str = "sockets.sock";
/// The keeper's log, in the state dir.
pub const LOG_FILE: &str = "sockets.log";

pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join(SOCKET_FILE)
}

/// Where a listening socket came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Handed over by systemd (socket activation).
    Systemd,
    /// Held across a watcher restart by the socket keeper.
    Keeper,
    /// Bound by this watcher.
    New,
}

impl Origin {
    pub fn describe(self) -> &'static str {
        match self {
            Origin::Systemd => "handed over by systemd (socket activation)",
            Origin::Keeper => "kept open across the watcher restart by the socket keeper",
            Origin::New => "bound by this watcher",
        }
    }
}

/// How the watcher wants its sockets kept.
#[derive(Debug, Clone)]
pub enum Keep {
    /// No keeper: the sockets die with this process (the demo, tests of one process).
    No,
    /// Start (or reuse) a keeper: this program, run with `--state-dir DIR keep-sockets`.
    Keeper { program: PathBuf, grace: Duration },
}

/// The watcher's listening sockets, and its link to the keeper (kept open for the
/// watcher's life: its end tells the keeper the watcher is gone).
pub struct Listeners {
    sockets: Vec<(SocketAddr, TcpListener, Origin)>,
    link: Option<UnixStream>,
    /// What could not be arranged with the keeper, for the watcher to warn about.
    pub warning: Option<String>,
}

impl std::fmt::Debug for Listeners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listeners")
            .field("sockets", &self.sockets.len())
            .field("keeper", &self.link.is_some())
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct BindError {
    pub addr: SocketAddr,
    #[source]
    pub source: io::Error,
}

impl Listeners {
    /// The listening socket for `addr` (once), non-blocking, with where it came from.
    pub fn take(&mut self, addr: SocketAddr) -> Option<(TcpListener, Origin)> {
        let i = self.sockets.iter().position(|(a, _, _)| *a == addr)?;
        let (_, l, origin) = self.sockets.swap_remove(i);
        Some((l, origin))
    }

    /// Whether a keeper holds the sockets for this watcher.
    pub fn kept(&self) -> bool {
        self.link.is_some()
    }

    /// A clean stop: the keeper lets go of the sockets (so clients are refused once the
    /// watcher's own copies close, rather than left waiting) and exits.
    pub fn release(&mut self) {
        if let Some(link) = self.link.take()
            && let Err(e) = wire::call(&link, &Msg::Bye, &[])
        {
            tracing::warn!(error = %e, "the socket keeper did not answer the goodbye");
        }
    }

    /// The link closed with no goodbye, as when the watcher is killed: the keeper keeps
    /// the sockets for its grace.
    #[cfg(test)]
    pub(crate) fn vanish(mut self) {
        self.link.take();
    }
}

/// A watcher that gives up with an error (not killed: it returns, its values dropped)
/// will not come back by itself, so the keeper lets go at once rather than hold clients
/// for its grace. A panic is left like a kill: a supervisor may restart the watcher.
impl Drop for Listeners {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            self.release();
        }
    }
}

/// The listening sockets for `wanted`: from systemd when it passed some, else from a
/// running keeper, else bound now. With [`Keep::Keeper`] (and no systemd) the keeper
/// is started when none runs and handed every socket, so they survive this process.
pub fn obtain(
    state_dir: &Path,
    wanted: &[SocketAddr],
    keep: &Keep,
) -> Result<Listeners, BindError> {
    let mut found: Vec<(SocketAddr, TcpListener, Origin)> = Vec::new();
    let from_systemd = systemd_listeners();
    let systemd = !from_systemd.is_empty();
    for l in from_systemd {
        if let Ok(addr) = l.local_addr() {
            found.push((addr, l, Origin::Systemd));
        }
    }
    let mut warning = None;
    let mut link = None;
    if let (false, Keep::Keeper { .. }) = (systemd, keep) {
        // No keeper answering is the normal first start.
        if let Ok(stream) = UnixStream::connect(socket_path(state_dir)) {
            match take_from(&stream) {
                Ok(kept) => {
                    for (addr, fd) in kept {
                        found.push((addr, TcpListener::from(fd), Origin::Keeper));
                    }
                    link = Some(stream);
                }
                Err(e) => warning = Some(format!("the socket keeper did not hand over: {e}")),
            }
        }
    }
    let mut sockets = Vec::new();
    for &addr in wanted {
        // Port 0 means "any free port": nothing held earlier can be it.
        let held = (addr.port() != 0)
            .then(|| found.iter().position(|(a, _, _)| *a == addr))
            .flatten();
        let (l, origin) = match held {
            Some(i) => {
                let (_, l, origin) = found.swap_remove(i);
                (l, origin)
            }
            None => (
                TcpListener::bind(addr).map_err(|source| BindError { addr, source })?,
                Origin::New,
            ),
        };
        l.set_nonblocking(true)
            .map_err(|source| BindError { addr, source })?;
        let actual = l
            .local_addr()
            .map_err(|source| BindError { addr, source })?;
        sockets.push((addr, l, origin, actual));
    }
    // What systemd or the keeper held that this config no longer listens on is dropped
    // here (and below, the keeper is told the new set).
    drop(found);
    let mut listeners = Listeners {
        sockets: Vec::new(),
        link: None,
        warning,
    };
    if let (false, Keep::Keeper { program, grace }) = (systemd, keep) {
        let result = match link {
            Some(l) => Ok(l),
            None if sockets.is_empty() => Err("no proxy listens".to_string()),
            None => keeper::spawn(state_dir, program, *grace).map_err(|e| e.to_string()),
        };
        match result {
            Ok(stream) => {
                let addrs: Vec<SocketAddr> = sockets.iter().map(|s| s.3).collect();
                let fds: Vec<_> = sockets.iter().map(|s| s.1.as_fd()).collect();
                match wire::call(&stream, &Msg::Hold { addrs }, &fds) {
                    Ok(_) if sockets.is_empty() => {
                        // Nothing to keep any more: the keeper may go.
                        let _ = wire::call(&stream, &Msg::Bye, &[]);
                    }
                    Ok(_) => listeners.link = Some(stream),
                    Err(e) => {
                        listeners.warning = Some(format!(
                            "the socket keeper did not take the sockets ({e}): they will not outlive this watcher"
                        ))
                    }
                }
            }
            Err(why) if !sockets.is_empty() => {
                listeners.warning = Some(format!(
                    "cannot start the socket keeper ({why}): the listening sockets will not outlive this watcher"
                ))
            }
            Err(_) => {}
        }
    }
    listeners.sockets = sockets.into_iter().map(|(a, l, o, _)| (a, l, o)).collect();
    Ok(listeners)
}

/// Asks a keeper for what it holds.
fn take_from(stream: &UnixStream) -> io::Result<Vec<(SocketAddr, OwnedFd)>> {
    let (reply, fds) = wire::call(stream, &Msg::Take, &[])?;
    let Msg::Held { addrs } = reply else {
        return Err(io::Error::other(format!("unexpected answer {reply:?}")));
    };
    if addrs.len() != fds.len() {
        return Err(io::Error::other(format!(
            "it named {} sockets and sent {}",
            addrs.len(),
            fds.len()
        )));
    }
    Ok(addrs.into_iter().zip(fds).collect())
}

/// The TCP listening sockets systemd passed (`LISTEN_FDS`, for this pid); the variables
/// are removed, so no release process started later sees them.
fn systemd_listeners() -> Vec<TcpListener> {
    let mut fds = listenfd::ListenFd::from_env();
    let mut out = Vec::new();
    for i in 0..fds.len() {
        match fds.take_tcp_listener(i) {
            Ok(Some(l)) => out.push(l),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(fd = i + 3, error = %e, "a socket from systemd is not a TCP listener: ignored")
            }
        }
    }
    out
}

/// Waits (at most `max`) until `f` is `Some`.
fn poll_until<T>(max: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + max;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests;
