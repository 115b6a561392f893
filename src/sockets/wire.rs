//! The keeper's protocol: one JSON object per line over a unix stream socket, file
//! descriptors riding along as SCM_RIGHTS with the line they belong to. Strictly
//! request and answer, so lines never interleave.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, recvmsg, sendmsg,
};
use serde::{Deserialize, Serialize};

/// At most this many sockets in one message.
pub const MAX_FDS: usize = 64;
/// A longer line is refused (a keeper's messages are a few hundred bytes).
const MAX_LINE: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Msg {
    /// Watcher → keeper: send me what you hold (a copy; you keep yours).
    Take,
    /// Watcher → keeper: hold these (the descriptors ride along), and only these.
    Hold { addrs: Vec<SocketAddr> },
    /// Watcher → keeper: a clean stop; let go and exit.
    Bye,
    /// Keeper → watcher: what it holds (the descriptors ride along, in this order).
    Held { addrs: Vec<SocketAddr> },
    /// Keeper → watcher: done.
    Ok,
    /// Keeper → watcher: refused, and why.
    Error { message: String },
}

/// Sends one message with `fds` attached.
pub fn send(stream: &UnixStream, msg: &Msg, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::other(format!(
            "{} sockets is more than the {MAX_FDS} one message carries",
            fds.len()
        )));
    }
    let mut line = serde_json::to_vec(msg).map_err(io::Error::other)?;
    line.push(b'\n');
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other(
            "the descriptors do not fit the control buffer",
        ));
    }
    // The descriptors go with the first byte; the rest of a long line follows plainly.
    let mut sent = sendmsg(
        stream,
        &[IoSlice::new(&line)],
        &mut control,
        SendFlags::NOSIGNAL,
    )?;
    while sent < line.len() {
        let n = sendmsg(
            stream,
            &[IoSlice::new(&line[sent..])],
            &mut SendAncillaryBuffer::default(),
            SendFlags::NOSIGNAL,
        )?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        sent += n;
    }
    Ok(())
}

/// Receives one message and the descriptors that came with it (close-on-exec, so no
/// release process started later inherits them). `None` at a clean end of stream.
pub fn recv(stream: &UnixStream) -> io::Result<Option<(Msg, Vec<OwnedFd>)>> {
    let mut line = Vec::new();
    let mut fds = Vec::new();
    loop {
        let mut chunk = [0u8; 4096];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let got = recvmsg(
            stream,
            &mut [IoSliceMut::new(&mut chunk)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )?;
        for m in control.drain() {
            if let RecvAncillaryMessage::ScmRights(received) = m {
                fds.extend(received);
            }
        }
        if got.bytes == 0 {
            if line.is_empty() {
                return Ok(None);
            }
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the stream ended inside a message",
            ));
        }
        line.extend_from_slice(&chunk[..got.bytes]);
        if line.last() == Some(&b'\n') {
            break;
        }
        if line.len() > MAX_LINE {
            return Err(io::Error::other(format!(
                "a message longer than {MAX_LINE} bytes"
            )));
        }
    }
    let msg = serde_json::from_slice(&line).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("not a keeper message ({e})"),
        )
    })?;
    Ok(Some((msg, fds)))
}

/// Sends a request and waits for its answer; an `Error` answer is an error.
pub fn call(
    stream: &UnixStream,
    msg: &Msg,
    fds: &[BorrowedFd<'_>],
) -> io::Result<(Msg, Vec<OwnedFd>)> {
    stream.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    send(stream, msg, fds)?;
    match recv(stream)? {
        None => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the keeper closed the connection",
        )),
        Some((Msg::Error { message }, _)) => Err(io::Error::other(message)),
        Some(answer) => Ok(answer),
    }
}
