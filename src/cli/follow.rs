//! The live read commands: `events --follow` and `status --watch`. Both read the
//! ledger (SQLite WAL: a reader sees each commit as it lands) on a bounded interval, so
//! they work without a watcher and never change anything. They stop cleanly on SIGINT
//! or SIGTERM, and when stdout is closed (a pipe whose reader went away).

use std::io::{IsTerminal, Write};
use std::os::fd::AsFd;
use std::path::Path;
use std::time::Duration;

use super::{CliError, exit, output};
use crate::clock::format_utc;
use crate::ledger::{Event, Ledger};

/// How often `events --follow` looks for new events.
const POLL: Duration = Duration::from_millis(250);
/// At most this many new events are read in one go (the rest on the next round).
const BATCH: usize = 1000;

/// Prints the newest `limit` events, then every new one as it is recorded. Under
/// `--json` each event is one JSON object on its own line.
pub(super) async fn events(
    ledger: &Ledger,
    service: &str,
    limit: usize,
    json: bool,
) -> Result<i32, CliError> {
    let recent = ledger.events(service, limit)?;
    // With --limit 0 nothing old is shown, and only what comes after now is followed.
    let mut last = match recent.last() {
        Some(e) => e.id,
        None => ledger.last_event_id(service)?,
    };
    if !print_events(&recent, json)? {
        return Ok(exit::OK);
    }
    let stop = super::shutdown_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return Ok(exit::OK),
            _ = tokio::time::sleep(POLL) => {}
        }
        if stdout_closed() {
            return Ok(exit::OK);
        }
        let new = ledger.events_after(service, last, BATCH)?;
        if let Some(e) = new.last() {
            last = e.id;
        }
        if !print_events(&new, json)? {
            return Ok(exit::OK);
        }
    }
}

/// Writes and flushes; `false` when stdout is closed (the follower should stop).
fn print_events(events: &[Event], json: bool) -> Result<bool, CliError> {
    if events.is_empty() {
        return Ok(true);
    }
    let mut text = String::new();
    for e in events {
        if json {
            text.push_str(&serde_json::to_string(e).expect("events serialize"));
        } else {
            text.push_str(&output::event_line(e));
        }
        text.push('\n');
    }
    write_out(text.as_bytes())
}

fn write_out(bytes: &[u8]) -> Result<bool, CliError> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(CliError::new(
            exit::FAILURE,
            format!("writing to stdout: {e}"),
        )),
    }
}

/// Whether the reader of stdout went away: a pipe reports an error condition on its
/// write end once its read end is closed, before anything is written.
fn stdout_closed() -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let stdout = std::io::stdout();
    let mut fds = [PollFd::new(stdout.as_fd(), PollFlags::POLLOUT)];
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(_) => fds[0]
            .revents()
            .is_some_and(|r| r.intersects(PollFlags::POLLERR | PollFlags::POLLHUP)),
        Err(_) => false,
    }
}

/// Redraws the status every `interval`: the screen is cleared on a terminal; otherwise
/// frames are separated by a line of dashes. Under `--json` each frame is one line.
pub(super) async fn status(
    config: Option<&Path>,
    state_dir: &Path,
    service: Option<&str>,
    interval: Duration,
    json: bool,
) -> Result<i32, CliError> {
    let terminal = std::io::stdout().is_terminal();
    let stop = super::shutdown_signal();
    tokio::pin!(stop);
    let mut first = true;
    loop {
        if stdout_closed() {
            return Ok(exit::OK);
        }
        let frame = output::status_values(config, state_dir, service).await?;
        let written = if json {
            let value = match service {
                Some(_) => frame.into_iter().next().unwrap_or_default(),
                None => serde_json::Value::Array(frame),
            };
            let mut line = serde_json::to_string(&value).expect("status serializes");
            line.push('\n');
            write_out(line.as_bytes())?
        } else {
            let head = format!(
                "{}ripcord status at {} (every {}; Ctrl-C stops)\n",
                match (terminal, first) {
                    // Clear the screen and go home.
                    (true, _) => "\x1b[2J\x1b[H",
                    (false, true) => "",
                    (false, false) => "---\n",
                },
                format_utc(crate::clock::now_ms()),
                humantime::format_duration(interval)
            );
            write_out(head.as_bytes())? && {
                output::print_statuses(&frame);
                true
            }
        };
        if !written {
            return Ok(exit::OK);
        }
        first = false;
        tokio::select! {
            _ = &mut stop => return Ok(exit::OK),
            _ = tokio::time::sleep(interval) => {}
        }
    }
}
