//! Router `nginx`: ripcord owns exactly one `upstream NAME { ... }` block in a site file the
//! user owns, and moves traffic by rewriting the addresses on that block's `server` lines,
//! testing the configuration (`nginx -t`) and reloading nginx (`nginx -s reload`). This
//! replaces the runbook's `sed` over the site file.
//!
//! It must never change a byte of the file outside the addresses of the owned block's
//! `server` lines, never overwrite a hand edit of the block unless forced, never run a
//! shell string (commands are argv vectors), and never leave the site file in a state that
//! fails the test command: when the test or the reload fails, the previous file is put
//! back.
//!
//! [`read_upstream`] and [`render`] are pure (`upstream.rs`, on `nginx_conf`'s
//! tokenizer). [`switch`] and [`current`] (`switch.rs`) do the IO and block (commands run
//! through `std::process` with a timeout, `command.rs`); async callers use
//! `spawn_blocking`. `files.rs` writes atomically and locks the site; `state.rs` keeps the
//! fingerprint of the block ripcord last wrote, to tell a hand edit.

mod command;
mod files;
mod state;
mod switch;
#[cfg(test)]
mod tests;
mod upstream;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::nginx_conf::tokens::TokenError;

pub use command::display_argv;
pub use files::backup_path;
pub use switch::{current, switch, switch_with};
pub use upstream::{ServerLine, UpstreamBlock, read_upstream, render};

/// How long each of the test and reload commands may run before it is killed.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------
// Configuration and results
// ---------------------------------------------------------------------------------------

/// Where the owned block lives and how nginx is tested and reloaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteConfig {
    /// The site file. A symlink (`sites-enabled/app`) is followed: the file it points to
    /// is rewritten and the link stays a link.
    pub site: PathBuf,
    /// The name of the `upstream` block ripcord owns.
    pub upstream: String,
    /// Checks the whole configuration; default `["nginx", "-t"]`.
    pub test_command: Vec<String>,
    /// Makes nginx load the configuration; default `["nginx", "-s", "reload"]`.
    pub reload_command: Vec<String>,
    /// Where ripcord keeps the fingerprint of the block it last wrote, for example
    /// `STATE_DIR/nginx/SERVICE.json`.
    pub state_file: PathBuf,
    /// Each command is killed after this long and counts as failed.
    pub command_timeout: Duration,
}

impl SiteConfig {
    /// A config with the default commands and timeout.
    pub fn new(
        site: impl Into<PathBuf>,
        upstream: impl Into<String>,
        state_file: impl Into<PathBuf>,
    ) -> Self {
        SiteConfig {
            site: site.into(),
            upstream: upstream.into(),
            test_command: vec!["nginx".into(), "-t".into()],
            reload_command: vec!["nginx".into(), "-s".into(), "reload".into()],
            state_file: state_file.into(),
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
        }
    }
}

/// How the owned block routes to the slots. The layout belongs to the user's file; a
/// switch keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// The block lists only the active slot's server line.
    OneServer,
    /// The active slot's server plus the other slot marked `backup` (the runbook's layout).
    PrimaryBackup,
}

/// Where traffic should go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Switch {
    /// The address of the slot that takes traffic, as nginx writes it: `127.0.0.1:8001`.
    pub active: String,
    /// The `backup` server for [`Layout::PrimaryBackup`]. `None` there means "the slot
    /// traffic moves away from" (or the current backup when the active slot does not
    /// change). Ignored for [`Layout::OneServer`], which has no place for it.
    pub standby: Option<String>,
}

/// Options for [`switch_with`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SwitchOptions {
    /// Overwrite the block even though it was edited by hand since ripcord last wrote it,
    /// or the state file cannot be read.
    pub force: bool,
}

/// What a successful switch did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwitchReport {
    /// The file that was rewritten (symlinks resolved).
    pub site: PathBuf,
    /// The previous version of the file, when it was rewritten.
    pub backup: Option<PathBuf>,
    /// False when the block already said this; the test and reload still ran, because a
    /// crash between an earlier write and its reload leaves nginx serving the old slot.
    pub changed: bool,
    pub old_servers: Vec<String>,
    pub new_servers: Vec<String>,
    pub layout: Layout,
    /// True when a hand edit (or an unreadable state file) was overwritten by force.
    pub forced: bool,
    pub write_ms: u64,
    pub test_ms: u64,
    pub reload_ms: u64,
    /// Something that did not stop the switch but an operator should know, such as a
    /// state file that could not be updated.
    pub warning: Option<String>,
}

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

/// Why the site text could not be read as ripcord needs it. Lines are 1-based.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("upstream `{name}` not found")]
    NotFound { name: String },
    #[error("upstream `{name}` is defined twice, at lines {first} and {second}")]
    Duplicate {
        name: String,
        first: usize,
        second: usize,
    },
    #[error("unterminated block starting at line {line}")]
    UnterminatedBlock { line: usize },
    #[error("unterminated quoted string starting at line {line}")]
    UnterminatedQuote { line: usize },
    #[error("directive starting at line {line} has no terminating `;`")]
    UnterminatedDirective { line: usize },
    #[error("unexpected `{ch}` at line {line}")]
    Unexpected { ch: char, line: usize },
    #[error("`server` at line {line} has no address")]
    ServerWithoutAddress { line: usize },
    #[error(
        "upstream `{name}` at line {line} has {detail}; ripcord can own one `server`, or one `server` plus one `server ... backup`"
    )]
    UnsupportedLayout {
        name: String,
        line: usize,
        detail: String,
    },
}

impl ParseError {
    /// The line the error points at, when there is one.
    pub fn line(&self) -> Option<usize> {
        match self {
            ParseError::NotFound { .. } => None,
            ParseError::Duplicate { second, .. } => Some(*second),
            ParseError::UnterminatedBlock { line }
            | ParseError::UnterminatedQuote { line }
            | ParseError::UnterminatedDirective { line }
            | ParseError::Unexpected { line, .. }
            | ParseError::ServerWithoutAddress { line }
            | ParseError::UnsupportedLayout { line, .. } => Some(*line),
        }
    }
}

/// Which command failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Test,
    Reload,
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandStatus {
    Success,
    Exit(i32),
    Signal(i32),
    TimedOut(Duration),
    NotStarted(String),
}

impl CommandStatus {
    pub fn success(&self) -> bool {
        matches!(self, CommandStatus::Success)
    }
}

impl fmt::Display for CommandStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommandStatus::Success => f.write_str("exit status 0"),
            CommandStatus::Exit(code) => write!(f, "exit status {code}"),
            CommandStatus::Signal(sig) => write!(f, "killed by signal {sig}"),
            CommandStatus::TimedOut(after) => write!(f, "timed out after {after:?} and was killed"),
            CommandStatus::NotStarted(error) => write!(f, "could not start: {error}"),
        }
    }
}

/// What became of the site file after a failed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restore {
    /// The switch did not need to change the file, so there was nothing to put back.
    Unchanged,
    /// The previous file was put back.
    Restored,
    /// Putting the previous file back failed; the previous version is kept at `backup`.
    Failed { error: String, backup: PathBuf },
}

/// A test or reload command that failed during a switch, with what it printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandFailure {
    pub stage: Stage,
    pub site: PathBuf,
    pub upstream: String,
    /// The argv joined for display; it was never run through a shell.
    pub command: String,
    pub status: CommandStatus,
    /// stderr then stdout, trimmed.
    pub output: String,
    pub restore: Restore,
    /// After a failed test and a restore: whether the previous file passes the test. A
    /// previous file that fails too means the configuration was broken before the switch.
    pub previous_passes: Option<bool>,
    /// After a failed reload and a restore: how the best-effort second reload ended.
    pub retry: Option<CommandStatus>,
}

impl fmt::Display for CommandFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` failed ({}) ", self.command, self.status)?;
        match self.restore {
            Restore::Unchanged => write!(
                f,
                "for upstream `{}` in {}; the file already said this and was not changed",
                self.upstream,
                self.site.display()
            )?,
            _ => write!(
                f,
                "after switching upstream `{}` in {}",
                self.upstream,
                self.site.display()
            )?,
        }
        match &self.restore {
            Restore::Unchanged => {}
            Restore::Restored => f.write_str("; the previous file was put back")?,
            Restore::Failed { error, backup } => write!(
                f,
                "; putting the previous file back failed ({error}), it is kept at {}",
                backup.display()
            )?,
        }
        if self.previous_passes == Some(false) {
            f.write_str(
                ", and it fails the test too, so the configuration was broken before the switch",
            )?;
        }
        match &self.retry {
            Some(CommandStatus::Success) => f.write_str(", and the reload retried successfully")?,
            Some(status) => write!(f, ", and the retried reload failed too ({status})")?,
            None => {}
        }
        if self.output.is_empty() {
            f.write_str("; it printed nothing")
        } else {
            write!(f, ": {}", self.output)
        }
    }
}

/// Everything [`switch`] and friends can fail with.
#[derive(Debug, thiserror::Error)]
pub enum SiteError {
    #[error("{error}{}", in_file(.path.as_deref()))]
    Parse {
        path: Option<PathBuf>,
        error: ParseError,
    },
    #[error("cannot {action} {}: {error}", .path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        error: io::Error,
    },
    #[error("site file {} is not valid UTF-8 (first bad byte at offset {offset})", .path.display())]
    NotUtf8 { path: PathBuf, offset: usize },
    #[error("invalid switch for upstream `{upstream}`: {reason}")]
    InvalidSwitch { upstream: String, reason: String },
    #[error("the {which} command is empty")]
    EmptyCommand { which: &'static str },
    #[error(
        "upstream `{upstream}` at line {line} of {} was edited by hand since ripcord last wrote it (ripcord wrote `{expected}`, the file now has `{found}`); nothing was changed. Review the edit, then either put the block back as ripcord wrote it, or delete {} so ripcord adopts the block as it is now, and run the command again",
        .path.display(), .state.display()
    )]
    HandEdited {
        path: PathBuf,
        /// ripcord's record of what it last wrote (deleting it adopts the file as it is);
        /// boxed to keep the error small.
        state: Box<PathBuf>,
        upstream: String,
        line: usize,
        expected: String,
        found: String,
    },
    #[error("cannot use state file {}: {reason}; delete it (ripcord then adopts the upstream block as it is) and run the command again", .path.display())]
    BadState { path: PathBuf, reason: String },
    #[error(
        "site file {} is being switched by another ripcord (lock {} still held after {waited:?})",
        .path.display(), .lock.display()
    )]
    Locked {
        path: PathBuf,
        lock: PathBuf,
        waited: Duration,
    },
    #[error("{0}")]
    Command(Box<CommandFailure>),
}

fn in_file(path: Option<&Path>) -> String {
    path.map(|p| format!(" in {}", p.display()))
        .unwrap_or_default()
}

impl SiteError {
    fn parse_in(path: &Path) -> impl FnOnce(SiteError) -> SiteError + '_ {
        move |e| match e {
            SiteError::Parse { error, .. } => SiteError::Parse {
                path: Some(path.to_path_buf()),
                error,
            },
            other => other,
        }
    }
}

impl From<TokenError> for ParseError {
    fn from(e: TokenError) -> Self {
        match e {
            TokenError::UnterminatedQuote { line, .. } => ParseError::UnterminatedQuote { line },
            TokenError::Unexpected { ch, line } => ParseError::Unexpected { ch, line },
        }
    }
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> SiteError + 'a {
    move |error| SiteError::Io {
        action,
        path: path.to_path_buf(),
        error,
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
