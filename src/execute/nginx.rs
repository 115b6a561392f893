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
//! [`read_upstream`] and [`render`] are pure. [`switch`] and [`current`] do the IO and
//! block (commands run through `std::process` with a timeout); async callers use
//! `spawn_blocking`.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, Read, Write};
use std::ops::Range;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::nginx_conf::tokens::{Kind, Token, TokenError, tokenize};

/// How long each of the test and reload commands may run before it is killed.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// How much of a command's stdout and of its stderr is kept for the error message.
const OUTPUT_CAP: usize = 64 * 1024;

/// How long to wait for a command's pipes to close after it exited. A grandchild that
/// inherited them could hold them open forever; its output is not worth a hung switch.
const OUTPUT_GRACE: Duration = Duration::from_millis(500);

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

/// One `server` directive of the owned block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerLine {
    /// 1-based line of the `server` word.
    pub line: usize,
    /// Bytes from `server` to its `;`, inclusive.
    pub span: Range<usize>,
    /// The address as nginx reads it (quotes removed).
    pub address: String,
    /// Bytes of the address token as written, including any quotes.
    pub address_span: Range<usize>,
    /// Everything after the address: `weight=5`, `max_fails=3`, `backup`, ...
    pub params: Vec<String>,
    pub backup: bool,
}

impl fmt::Display for ServerLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "server {}", self.address)?;
        for p in &self.params {
            write!(f, " {p}")?;
        }
        f.write_str(";")
    }
}

/// The owned block as found in the site text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamBlock {
    pub name: String,
    /// 1-based line of the `upstream` word.
    pub line: usize,
    /// Bytes from `upstream` to the closing `}`, inclusive.
    pub span: Range<usize>,
    /// The block's `server` directives in file order.
    pub servers: Vec<ServerLine>,
    pub layout: Layout,
    /// A digest of the block's tokens (comments and whitespace excluded), so that
    /// reformatting is not mistaken for a hand edit but any change nginx would see is.
    pub fingerprint: String,
}

impl UpstreamBlock {
    /// The server that takes traffic: the one not marked `backup`.
    pub fn primary(&self) -> &ServerLine {
        &self.servers[self.primary_index()]
    }

    /// The `backup` server, in [`Layout::PrimaryBackup`].
    pub fn backup(&self) -> Option<&ServerLine> {
        self.backup_index().map(|i| &self.servers[i])
    }

    /// What the block says now.
    pub fn to_switch(&self) -> Switch {
        Switch {
            active: self.primary().address.clone(),
            standby: self.backup().map(|s| s.address.clone()),
        }
    }

    /// The server lines for people: `server 127.0.0.1:8000; server 127.0.0.1:8001 backup;`.
    pub fn servers_display(&self) -> String {
        let lines: Vec<String> = self.servers.iter().map(ToString::to_string).collect();
        lines.join(" ")
    }

    fn primary_index(&self) -> usize {
        self.servers.iter().position(|s| !s.backup).unwrap_or(0)
    }

    fn backup_index(&self) -> Option<usize> {
        match self.layout {
            Layout::OneServer => None,
            Layout::PrimaryBackup => self.servers.iter().position(|s| s.backup),
        }
    }
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

// ---------------------------------------------------------------------------------------
// Reading and rendering (pure)
// ---------------------------------------------------------------------------------------

/// FNV-1a, 64 bit: deterministic across builds and platforms, unlike std's hasher, so a
/// fingerprint written by one ripcord is understood by the next.
fn fnv1a64(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &byte in *part {
            h ^= u64::from(byte);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

fn fingerprint(tokens: &[Token]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for t in tokens {
        let tag: &[u8] = match t.kind {
            Kind::Word => b"w",
            Kind::Semicolon => b";",
            Kind::Open => b"{",
            Kind::Close => b"}",
        };
        // Folding the running hash in keeps token boundaries significant: `a b` and
        // `"a b"` differ.
        h = fnv1a64(&[&h.to_le_bytes(), tag, t.value.as_bytes(), &[0]]);
    }
    format!("fnv1a64:{h:016x}")
}

struct Frame {
    line: usize,
    /// Index of the `upstream` word when this frame is the owned block.
    target_start: Option<usize>,
}

/// Finds the `upstream NAME { ... }` block in `text`: its span, its `server` lines and the
/// layout they form. `text` is a whole site file (or a whole nginx.conf); the block may sit
/// at any depth.
pub fn read_upstream(text: &str, name: &str) -> Result<UpstreamBlock, SiteError> {
    read_block(text, name).map_err(|error| SiteError::Parse { path: None, error })
}

fn read_block(text: &str, name: &str) -> Result<UpstreamBlock, ParseError> {
    let tokens = tokenize(text)?;
    let mut stack: Vec<Frame> = Vec::new();
    let mut args: Vec<usize> = Vec::new();
    let mut found: Option<UpstreamBlock> = None;
    // Depth of the owned block's body while inside it.
    let mut target_depth: Option<usize> = None;
    let mut servers: Vec<ServerLine> = Vec::new();

    for (idx, tok) in tokens.iter().enumerate() {
        match tok.kind {
            Kind::Word => args.push(idx),
            Kind::Semicolon => {
                let Some(&first) = args.first() else {
                    return Err(ParseError::Unexpected {
                        ch: ';',
                        line: tok.line,
                    });
                };
                if target_depth == Some(stack.len()) && tokens[first].value == "server" {
                    let w = &tokens[first];
                    let Some(&addr) = args.get(1) else {
                        return Err(ParseError::ServerWithoutAddress { line: w.line });
                    };
                    let params: Vec<String> =
                        args[2..].iter().map(|&a| tokens[a].value.clone()).collect();
                    servers.push(ServerLine {
                        line: w.line,
                        span: w.span.start..tok.span.end,
                        address: tokens[addr].value.clone(),
                        address_span: tokens[addr].span.clone(),
                        backup: params.iter().any(|p| p == "backup"),
                        params,
                    });
                }
                args.clear();
            }
            Kind::Open => {
                let Some(&first) = args.first() else {
                    return Err(ParseError::Unexpected {
                        ch: '{',
                        line: tok.line,
                    });
                };
                let is_target = args.len() == 2
                    && tokens[first].value == "upstream"
                    && tokens[args[1]].value == name;
                if is_target {
                    if let Some(prev) = &found {
                        return Err(ParseError::Duplicate {
                            name: name.to_string(),
                            first: prev.line,
                            second: tokens[first].line,
                        });
                    }
                    if target_depth.is_none() {
                        target_depth = Some(stack.len() + 1);
                        servers.clear();
                    }
                }
                stack.push(Frame {
                    line: tokens[first].line,
                    target_start: is_target.then_some(first),
                });
                args.clear();
            }
            Kind::Close => {
                if let Some(&first) = args.first() {
                    return Err(ParseError::UnterminatedDirective {
                        line: tokens[first].line,
                    });
                }
                let Some(frame) = stack.pop() else {
                    return Err(ParseError::Unexpected {
                        ch: '}',
                        line: tok.line,
                    });
                };
                if let Some(start) = frame.target_start {
                    target_depth = None;
                    let w = &tokens[start];
                    found = Some(UpstreamBlock {
                        name: name.to_string(),
                        line: w.line,
                        span: w.span.start..tok.span.end,
                        layout: layout_of(name, w.line, &servers)?,
                        servers: std::mem::take(&mut servers),
                        fingerprint: fingerprint(&tokens[start..=idx]),
                    });
                }
            }
        }
    }
    if let Some(&first) = args.first() {
        return Err(ParseError::UnterminatedDirective {
            line: tokens[first].line,
        });
    }
    if let Some(frame) = stack.last() {
        return Err(ParseError::UnterminatedBlock { line: frame.line });
    }
    found.ok_or_else(|| ParseError::NotFound {
        name: name.to_string(),
    })
}

fn layout_of(name: &str, line: usize, servers: &[ServerLine]) -> Result<Layout, ParseError> {
    let backups = servers.iter().filter(|s| s.backup).count();
    let detail = match (servers.len(), backups) {
        (1, 0) => return Ok(Layout::OneServer),
        (2, 1) => return Ok(Layout::PrimaryBackup),
        (0, _) => "no `server` lines".to_string(),
        (1, _) => "only a `backup` server".to_string(),
        (count, 0) => format!("{count} servers and none marked `backup`"),
        (count, b) => format!("{count} servers, {b} marked `backup`"),
    };
    Err(ParseError::UnsupportedLayout {
        name: name.to_string(),
        line,
        detail,
    })
}

/// The new site text: `text` with only the addresses on the owned block's `server` lines
/// changed. Parameters, comments, indentation, line endings and every other byte stay as
/// they are; an address that does not change keeps its original spelling (quotes too).
///
/// `block` must come from [`read_upstream`] on this same `text`, and the addresses must be
/// valid nginx words ([`switch`] checks this before rendering).
pub fn render(text: &str, block: &UpstreamBlock, sw: &Switch) -> String {
    let primary = block.primary();
    let mut edits: Vec<(Range<usize>, &str)> = Vec::new();
    if primary.address != sw.active {
        edits.push((primary.address_span.clone(), &sw.active));
    }
    if let Some(backup) = block.backup() {
        let standby: &str = match &sw.standby {
            Some(s) => s,
            None if sw.active != primary.address => &primary.address,
            None => &backup.address,
        };
        if backup.address != standby {
            edits.push((backup.address_span.clone(), standby));
        }
    }
    edits.sort_by_key(|(span, _)| span.start);
    let mut out = String::with_capacity(text.len() + 16);
    let mut at = 0;
    for (span, with) in edits {
        out.push_str(&text[at..span.start]);
        out.push_str(with);
        at = span.end;
    }
    out.push_str(&text[at..]);
    out
}

/// Checks that `address` can be written as one bare nginx word.
fn check_address(address: &str) -> Result<(), String> {
    if address.is_empty() {
        return Err("the address is empty".to_string());
    }
    if let Some(c) = address.chars().find(|c| {
        c.is_whitespace()
            || c.is_control()
            || matches!(c, ';' | '{' | '}' | '#' | '"' | '\'' | '\\' | '$')
    }) {
        return Err(format!(
            "address `{address}` contains {c:?}, which nginx would not read as part of an address"
        ));
    }
    Ok(())
}

fn validate_switch(upstream: &str, block: &UpstreamBlock, sw: &Switch) -> Result<(), SiteError> {
    let invalid = |reason: String| SiteError::InvalidSwitch {
        upstream: upstream.to_string(),
        reason,
    };
    check_address(&sw.active).map_err(invalid)?;
    if let Some(standby) = &sw.standby {
        check_address(standby).map_err(invalid)?;
    }
    if block.layout == Layout::PrimaryBackup {
        let standby = sw.standby.as_deref().unwrap_or_else(|| {
            let primary = &block.primary().address;
            if *primary != sw.active {
                primary
            } else {
                block
                    .backup()
                    .map(|b| b.address.as_str())
                    .unwrap_or_default()
            }
        });
        if standby == sw.active {
            return Err(invalid(format!(
                "`{}` would be both the active server and the backup",
                sw.active
            )));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// IO
// ---------------------------------------------------------------------------------------

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

fn read_text(path: &Path) -> Result<String, SiteError> {
    let bytes = fs::read(path).map_err(io_err("read site file", path))?;
    String::from_utf8(bytes).map_err(|e| SiteError::NotUtf8 {
        path: path.to_path_buf(),
        offset: e.utf8_error().valid_up_to(),
    })
}

/// Writes `bytes` to `path` so that a reader sees the old file or the new one, never a
/// mix: a temp file beside it, fsynced, renamed over, and the directory fsynced so the
/// rename survives a crash. The new file gets `like`'s mode and owner.
fn write_atomically(path: &Path, bytes: &[u8], like: Option<&Metadata>) -> Result<(), SiteError> {
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
struct SiteLock {
    _file: File,
}

fn lock_site(site: &Path, wait: Duration) -> Result<SiteLock, SiteError> {
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

/// What the owned block says now, so a restarted ripcord can reconcile its records with
/// the file.
pub fn current(cfg: &SiteConfig) -> Result<Switch, SiteError> {
    let text = read_text(&cfg.site)?;
    let block = read_upstream(&text, &cfg.upstream).map_err(SiteError::parse_in(&cfg.site))?;
    Ok(block.to_switch())
}

/// Points the owned block at `sw`, tests and reloads nginx; see [`switch_with`].
pub fn switch(cfg: &SiteConfig, sw: &Switch) -> Result<SwitchReport, SiteError> {
    switch_with(cfg, sw, SwitchOptions::default())
}

/// Points the owned block at `sw`: refuses a block edited by hand since ripcord's last
/// write (unless forced), writes the new file atomically and keeps the previous one as
/// [`backup_path`], runs the test command, then the reload command. When either fails
/// the previous file is put back (and after a failed reload, nginx is reloaded again, best
/// effort) and the error carries the command, its status and what it printed. The
/// fingerprint in the state file is updated only after success.
pub fn switch_with(
    cfg: &SiteConfig,
    sw: &Switch,
    opts: SwitchOptions,
) -> Result<SwitchReport, SiteError> {
    if cfg.test_command.is_empty() {
        return Err(SiteError::EmptyCommand { which: "test" });
    }
    if cfg.reload_command.is_empty() {
        return Err(SiteError::EmptyCommand { which: "reload" });
    }
    // Renaming over a symlink would replace the link with a plain file; rewrite the
    // file it points to instead.
    let site = fs::canonicalize(&cfg.site).map_err(io_err("resolve site file", &cfg.site))?;
    let _lock = lock_site(&site, cfg.command_timeout.saturating_mul(3))?;

    let meta = fs::metadata(&site).map_err(io_err("read site file", &site))?;
    let text = read_text(&site)?;
    let block = read_upstream(&text, &cfg.upstream).map_err(SiteError::parse_in(&site))?;
    validate_switch(&cfg.upstream, &block, sw)?;

    let site_key = site.to_string_lossy().into_owned();
    let mut forced = false;
    let mut state = match load_state(&cfg.state_file)? {
        Loaded::Found(st) if st.site == site_key && st.upstream == cfg.upstream => {
            let known = block.fingerprint == st.fingerprint
                || st.pending.as_deref() == Some(&block.fingerprint);
            if !known {
                if !opts.force {
                    return Err(SiteError::HandEdited {
                        path: site,
                        state: Box::new(cfg.state_file.clone()),
                        upstream: cfg.upstream.clone(),
                        line: block.line,
                        expected: st.servers,
                        found: block.servers_display(),
                    });
                }
                forced = true;
            }
            st
        }
        Loaded::Bad(reason) if !opts.force => {
            return Err(SiteError::BadState {
                path: cfg.state_file.clone(),
                reason,
            });
        }
        other => {
            forced = matches!(other, Loaded::Bad(_));
            // First use (or a state file about another site or upstream): trust the
            // block as it is and record it, so later hand edits are caught.
            let st = State {
                site: site_key.clone(),
                upstream: cfg.upstream.clone(),
                fingerprint: block.fingerprint.clone(),
                servers: block.servers_display(),
                pending: None,
            };
            store_state(&cfg.state_file, &st)?;
            st
        }
    };

    let new_text = render(&text, &block, sw);
    let new_block = read_upstream(&new_text, &cfg.upstream).map_err(SiteError::parse_in(&site))?;
    let changed = new_text != text;
    let backup = backup_path(&site);

    let write_start = Instant::now();
    if changed {
        // Recorded before the write so that a crash between the write and the final
        // state update is not later mistaken for a hand edit.
        state.pending = Some(new_block.fingerprint.clone());
        store_state(&cfg.state_file, &state)?;
        write_atomically(&backup, text.as_bytes(), Some(&meta))?;
        if let Err(e) = write_atomically(&site, new_text.as_bytes(), Some(&meta)) {
            // The rename may have happened before the failure (a failed directory
            // fsync); put the previous text back so the error means "nothing changed".
            let _ = write_atomically(&site, text.as_bytes(), Some(&meta));
            return Err(e);
        }
    }
    let write_ms = millis(write_start.elapsed());

    let failure = |stage: Stage, outcome: &Outcome, restore: Restore| CommandFailure {
        stage,
        site: site.clone(),
        upstream: cfg.upstream.clone(),
        command: display_argv(match stage {
            Stage::Test => &cfg.test_command,
            Stage::Reload => &cfg.reload_command,
        }),
        status: outcome.status.clone(),
        output: outcome.output.clone(),
        restore,
        previous_passes: None,
        retry: None,
    };
    let restore = |state: &mut State| -> Restore {
        if !changed {
            return Restore::Unchanged;
        }
        let restored = match write_atomically(&site, text.as_bytes(), Some(&meta)) {
            Ok(()) => Restore::Restored,
            Err(e) => Restore::Failed {
                error: e.to_string(),
                backup: backup.clone(),
            },
        };
        if restored == Restore::Restored {
            state.pending = None;
            // The file is back to the recorded block; a stale `pending` is harmless.
            let _ = store_state(&cfg.state_file, state);
        }
        restored
    };

    let test = run_command(&cfg.test_command, cfg.command_timeout);
    let test_ms = millis(test.elapsed);
    if !test.status.success() {
        let restored = restore(&mut state);
        let mut f = failure(Stage::Test, &test, restored.clone());
        f.previous_passes = match restored {
            Restore::Restored => Some(
                run_command(&cfg.test_command, cfg.command_timeout)
                    .status
                    .success(),
            ),
            // Unchanged: nothing was written, so the message already says the
            // configuration failed as it was. Failed: the file on disk is unknown.
            Restore::Unchanged | Restore::Failed { .. } => None,
        };
        return Err(SiteError::Command(Box::new(f)));
    }

    let reload = run_command(&cfg.reload_command, cfg.command_timeout);
    let reload_ms = millis(reload.elapsed);
    if !reload.status.success() {
        let restored = restore(&mut state);
        let mut f = failure(Stage::Reload, &reload, restored.clone());
        if restored == Restore::Restored {
            // The first reload may have reached nginx before failing; reload again so
            // nginx runs the restored file.
            f.retry = Some(run_command(&cfg.reload_command, cfg.command_timeout).status);
        }
        return Err(SiteError::Command(Box::new(f)));
    }

    let done = State {
        site: site_key,
        upstream: cfg.upstream.clone(),
        fingerprint: new_block.fingerprint.clone(),
        servers: new_block.servers_display(),
        pending: None,
    };
    // Traffic has moved: failing the switch now would misreport it. The `pending`
    // fingerprint written before the file keeps the next switch from crying hand edit.
    let warning = store_state(&cfg.state_file, &done)
        .err()
        .map(|e| format!("the switch succeeded but the state was not updated: {e}"));

    Ok(SwitchReport {
        site,
        backup: changed.then_some(backup),
        changed,
        old_servers: block.servers.iter().map(ToString::to_string).collect(),
        new_servers: new_block.servers.iter().map(ToString::to_string).collect(),
        layout: block.layout,
        forced,
        write_ms,
        test_ms,
        reload_ms,
        warning,
    })
}

// ---------------------------------------------------------------------------------------
// State file: a small flat JSON object, written atomically.
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct State {
    site: String,
    upstream: String,
    /// The fingerprint of the block as ripcord last wrote it (and nginx accepted).
    fingerprint: String,
    /// The block's server lines then, for the hand-edit message.
    servers: String,
    /// The fingerprint of a write in progress.
    #[serde(default)]
    pending: Option<String>,
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

enum Loaded {
    Missing,
    Found(State),
    Bad(String),
}

const STATE_VERSION: u64 = 1;

fn load_state(path: &Path) -> Result<Loaded, SiteError> {
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

fn parse_state(text: &str) -> Result<State, String> {
    let stored: Stored = serde_json::from_str(text).map_err(|e| e.to_string())?;
    if stored.version != STATE_VERSION {
        return Err(format!("`version` is not {STATE_VERSION}"));
    }
    Ok(stored.state)
}

fn render_state(st: &State) -> String {
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

fn store_state(path: &Path, st: &State) -> Result<(), SiteError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(io_err("create state directory", dir))?;
    }
    write_atomically(path, render_state(st).as_bytes(), None)
}

// ---------------------------------------------------------------------------------------
// Running commands
// ---------------------------------------------------------------------------------------

struct Outcome {
    status: CommandStatus,
    output: String,
    elapsed: Duration,
}

/// An argv joined for people to read (and paste); it is never given to a shell.
pub fn display_argv(argv: &[String]) -> String {
    let words: Vec<String> = argv
        .iter()
        .map(|a| {
            let plain = !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@+%".contains(c));
            if plain {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect();
    words.join(" ")
}

fn drain(mut pipe: impl Read + Send + 'static, tag: u8, tx: mpsc::Sender<(u8, Vec<u8>)>) {
    thread::spawn(move || {
        let mut kept = Vec::new();
        let mut buf = [0u8; 8192];
        // Keep reading past the cap so the child never blocks on a full pipe.
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            let room = OUTPUT_CAP.saturating_sub(kept.len());
            kept.extend_from_slice(&buf[..n.min(room)]);
        }
        let _ = tx.send((tag, kept));
    });
}

/// Runs `argv` (no shell), waits at most `timeout`, and returns how it ended with its
/// stderr and stdout.
fn run_command(argv: &[String], timeout: Duration) -> Outcome {
    let start = Instant::now();
    let mut child = match Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            return Outcome {
                status: CommandStatus::NotStarted(e.to_string()),
                output: String::new(),
                elapsed: start.elapsed(),
            };
        }
    };
    let (tx, rx) = mpsc::channel();
    let mut pipes = 0;
    if let Some(out) = child.stdout.take() {
        drain(out, 1, tx.clone());
        pipes += 1;
    }
    if let Some(err) = child.stderr.take() {
        drain(err, 0, tx.clone());
        pipes += 1;
    }
    drop(tx);

    // Polling with a short, growing pause: `nginx -t` takes milliseconds and a rollback
    // should not wait longer than it must.
    let mut pause = Duration::from_millis(1);
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => {
                break match (st.code(), st.signal()) {
                    (Some(0), _) => CommandStatus::Success,
                    (Some(code), _) => CommandStatus::Exit(code),
                    (None, Some(sig)) => CommandStatus::Signal(sig),
                    (None, None) => CommandStatus::Exit(-1),
                };
            }
            Ok(None) => {}
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                break CommandStatus::NotStarted(format!("cannot wait for it: {e}"));
            }
        }
        let elapsed = start.elapsed();
        if elapsed >= timeout {
            let _ = child.kill();
            let _ = child.wait();
            break CommandStatus::TimedOut(timeout);
        }
        thread::sleep(pause.min(timeout - elapsed));
        pause = (pause * 2).min(Duration::from_millis(20));
    };
    let elapsed = start.elapsed();

    let mut streams: BTreeMap<u8, Vec<u8>> = BTreeMap::new();
    let grace = Instant::now() + OUTPUT_GRACE;
    for _ in 0..pipes {
        match rx.recv_timeout(grace.saturating_duration_since(Instant::now())) {
            Ok((tag, bytes)) => {
                streams.insert(tag, bytes);
            }
            Err(_) => break,
        }
    }
    // stderr (tag 0) first: that is where nginx explains itself.
    let output: Vec<String> = streams
        .values()
        .map(|b| String::from_utf8_lossy(b).trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    Outcome {
        status,
        output: output.join("\n"),
        elapsed,
    }
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    const RUNBOOK: &str = "\
# managed by hand, except the upstream block
upstream app {
    server 127.0.0.1:8000;
    server 127.0.0.1:8001 backup;
    keepalive 16;
}

server {
    listen 80;
    server_name example.com;
    location / {
        proxy_pass http://app;
    }
}
";

    const ONE: &str = "\
upstream app {
\tserver 127.0.0.1:8000 max_fails=3 fail_timeout=10s;   # blue
\tkeepalive 8;
}
";

    fn sw(active: &str, standby: Option<&str>) -> Switch {
        Switch {
            active: active.into(),
            standby: standby.map(Into::into),
        }
    }

    fn read(text: &str) -> UpstreamBlock {
        read_upstream(text, "app").unwrap_or_else(|e| panic!("read failed: {e}"))
    }

    fn parse_err(text: &str) -> ParseError {
        match read_upstream(text, "app") {
            Err(SiteError::Parse { error, .. }) => error,
            other => panic!("expected a parse error, got {other:?}"),
        }
    }

    /// Lines of `a` and `b` that differ (same line count asserted).
    fn changed_lines(a: &str, b: &str) -> Vec<(usize, String, String)> {
        let (la, lb): (Vec<&str>, Vec<&str>) = (a.split('\n').collect(), b.split('\n').collect());
        assert_eq!(la.len(), lb.len(), "line count changed");
        la.iter()
            .zip(&lb)
            .enumerate()
            .filter(|(_, (x, y))| x != y)
            .map(|(i, (x, y))| (i + 1, x.to_string(), y.to_string()))
            .collect()
    }

    #[test]
    fn reads_runbook_layout() {
        let b = read(RUNBOOK);
        assert_eq!(b.layout, Layout::PrimaryBackup);
        assert_eq!(b.line, 2);
        assert_eq!(b.servers.len(), 2);
        assert_eq!(b.servers[0].address, "127.0.0.1:8000");
        assert_eq!(b.servers[0].line, 3);
        assert_eq!(b.servers[1].params, vec!["backup"]);
        assert_eq!(&RUNBOOK[b.span.clone()][..12], "upstream app");
        assert!(RUNBOOK[b.span.clone()].ends_with('}'));
        assert_eq!(
            &RUNBOOK[b.servers[1].span.clone()],
            "server 127.0.0.1:8001 backup;"
        );
        assert_eq!(b.to_switch(), sw("127.0.0.1:8000", Some("127.0.0.1:8001")));
        assert_eq!(
            b.servers_display(),
            "server 127.0.0.1:8000; server 127.0.0.1:8001 backup;"
        );
    }

    #[test]
    fn round_trips_byte_for_byte() {
        for text in [
            RUNBOOK,
            ONE,
            &RUNBOOK.replace('\n', "\r\n"),
            &ONE.replace('\n', "\r\n"),
        ] {
            let b = read(text);
            assert_eq!(render(text, &b, &b.to_switch()), text);
            // Without a standby, PrimaryBackup keeps its backup when the active is unchanged.
            assert_eq!(render(text, &b, &sw(&b.primary().address, None)), text);
        }
    }

    #[test]
    fn switch_rewrites_only_the_server_lines() {
        let b = read(RUNBOOK);
        let out = render(RUNBOOK, &b, &sw("127.0.0.1:8001", Some("127.0.0.1:8000")));
        assert_eq!(
            changed_lines(RUNBOOK, &out),
            vec![
                (
                    3,
                    "    server 127.0.0.1:8000;".into(),
                    "    server 127.0.0.1:8001;".into()
                ),
                (
                    4,
                    "    server 127.0.0.1:8001 backup;".into(),
                    "    server 127.0.0.1:8000 backup;".into()
                ),
            ]
        );
        // A standby left out means "the slot traffic leaves".
        assert_eq!(render(RUNBOOK, &b, &sw("127.0.0.1:8001", None)), out);
        let back = read(&out);
        assert_eq!(render(&out, &back, &sw("127.0.0.1:8000", None)), RUNBOOK);
    }

    #[test]
    fn one_server_keeps_params_tabs_and_comments() {
        let b = read(ONE);
        assert_eq!(b.layout, Layout::OneServer);
        assert_eq!(b.servers[0].params, vec!["max_fails=3", "fail_timeout=10s"]);
        let out = render(ONE, &b, &sw("127.0.0.1:8001", Some("127.0.0.1:8000")));
        assert_eq!(
            changed_lines(ONE, &out),
            vec![(
                2,
                "\tserver 127.0.0.1:8000 max_fails=3 fail_timeout=10s;   # blue".into(),
                "\tserver 127.0.0.1:8001 max_fails=3 fail_timeout=10s;   # blue".into()
            )]
        );
        assert_eq!(read(&out).to_switch(), sw("127.0.0.1:8001", None));
    }

    #[test]
    fn crlf_file_stays_crlf() {
        let text = RUNBOOK.replace('\n', "\r\n");
        let out = render(&text, &read(&text), &sw("127.0.0.1:8001", None));
        assert_eq!(
            out,
            render(RUNBOOK, &read(RUNBOOK), &sw("127.0.0.1:8001", None)).replace('\n', "\r\n")
        );
        assert_eq!(read(&text).servers[1].line, 4);
    }

    #[test]
    fn other_blocks_comments_and_strings_are_untouched() {
        let text = "\
# upstream app { server 10.0.0.1:1; }
upstream other {
    server 127.0.0.1:8000;
    server 127.0.0.1:8001 backup;
}
map $http_upgrade $conn { default upgrade; '' close; }
server {
    listen 80;
    set $x \"${host}}{\";
    location ~ \"^/a{2}$\" { return 200 '}{ \\' # not a comment'; }
    location / { if ($x) { return 204; } proxy_pass http://app; }
}
upstream app {
    # server 10.9.9.9:1 backup;
    zone app 64k;
    server \"127.0.0.1:8000\" weight=5;  server 127.0.0.1:8001 backup;
}
upstream app2 { server 127.0.0.1:8000; }
";
        let b = read(text);
        assert_eq!(b.line, 13);
        assert_eq!(b.servers.len(), 2);
        assert_eq!(b.servers[0].line, 16);
        assert_eq!(b.servers[0].address, "127.0.0.1:8000");
        assert_eq!(
            &text[b.servers[0].address_span.clone()],
            "\"127.0.0.1:8000\""
        );
        // Unchanged addresses keep their quotes; the changed one is written bare.
        assert_eq!(render(text, &b, &b.to_switch()), text);
        let out = render(text, &b, &sw("127.0.0.1:8001", None));
        assert_eq!(
            changed_lines(text, &out),
            vec![(
                16,
                "    server \"127.0.0.1:8000\" weight=5;  server 127.0.0.1:8001 backup;".into(),
                "    server 127.0.0.1:8001 weight=5;  server 127.0.0.1:8000 backup;".into()
            )]
        );
        let other = read_upstream(text, "other").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            other.to_switch(),
            sw("127.0.0.1:8000", Some("127.0.0.1:8001"))
        );
        let other_out = read_upstream(&out, "other").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(other_out, other);
    }

    #[test]
    fn backup_listed_first() {
        let text = "upstream app {\n  server b:1 backup;\n  server a:1;\n}\n";
        let b = read(text);
        assert_eq!(b.to_switch(), sw("a:1", Some("b:1")));
        let out = render(text, &b, &sw("b:1", None));
        assert_eq!(
            out,
            "upstream app {\n  server a:1 backup;\n  server b:1;\n}\n"
        );
    }

    #[test]
    fn block_inside_http_is_found() {
        let text = "events {}\nhttp {\n  upstream app { server 127.0.0.1:1; }\n}\n";
        assert_eq!(read(text).line, 3);
    }

    #[test]
    fn errors_name_the_line() {
        assert_eq!(
            parse_err("upstream other { server a:1; }\n"),
            ParseError::NotFound { name: "app".into() }
        );
        assert_eq!(
            parse_err(
                "server {\n listen 80;\n}\n\nupstream app {\n server a:1;\n\nserver {\n listen 81;\n}\n"
            ),
            ParseError::UnterminatedBlock { line: 5 }
        );
        assert_eq!(
            parse_err("server {\n return 200 \"oops;\n}\n"),
            ParseError::UnterminatedQuote { line: 2 }
        );
        assert_eq!(
            parse_err("upstream app {\n server a:1;\n}\n}\n"),
            ParseError::Unexpected { ch: '}', line: 4 }
        );
        assert_eq!(
            parse_err("upstream app {\n server a:1\n}\n"),
            ParseError::UnterminatedDirective { line: 2 }
        );
        assert_eq!(
            parse_err("upstream app {\n server a:1;\n}\nlisten 80"),
            ParseError::UnterminatedDirective { line: 4 }
        );
        assert_eq!(
            parse_err("upstream app { server a:1; }\nupstream app { server b:1; }\n"),
            ParseError::Duplicate {
                name: "app".into(),
                first: 1,
                second: 2
            }
        );
        assert_eq!(
            parse_err("upstream app {\n  server;\n}\n"),
            ParseError::ServerWithoutAddress { line: 2 }
        );
        assert!(matches!(
            parse_err("upstream app {\n server a:1;\n server b:1;\n}\n"),
            ParseError::UnsupportedLayout { line: 1, .. }
        ));
        assert!(matches!(
            parse_err("upstream app { keepalive 2; }"),
            ParseError::UnsupportedLayout { .. }
        ));
        assert_eq!(
            parse_err("upstream app { server \"a:1\"x; }"),
            ParseError::Unexpected { ch: 'x', line: 1 }
        );
    }

    #[test]
    fn error_messages_read_well() {
        let e = read_upstream("upstream other { server a:1; }", "app")
            .map_err(SiteError::parse_in(Path::new(
                "/etc/nginx/sites-available/app",
            )))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "upstream `app` not found in /etc/nginx/sites-available/app"
        );
        let e = read_upstream("\n\nupstream app {\n server a:1;\n", "app").unwrap_err();
        assert_eq!(e.to_string(), "unterminated block starting at line 3");
        let f = CommandFailure {
            stage: Stage::Test,
            site: "/s/app".into(),
            upstream: "app".into(),
            command: "nginx -t".into(),
            status: CommandStatus::Exit(1),
            output: "nginx: [emerg] boom".into(),
            restore: Restore::Restored,
            previous_passes: Some(true),
            retry: None,
        };
        assert_eq!(
            f.to_string(),
            "`nginx -t` failed (exit status 1) after switching upstream `app` in /s/app; the previous file was put back: nginx: [emerg] boom"
        );
    }

    #[test]
    fn fingerprint_ignores_formatting_but_not_content() {
        let a = read("upstream app {\n  server a:1;\n  keepalive 2;\n}\n").fingerprint;
        let reformatted = read("upstream app { # hi\r\n\tserver   a:1 ;keepalive 2;}").fingerprint;
        let edited = read("upstream app {\n  server a:2;\n  keepalive 2;\n}\n").fingerprint;
        let quoted = read("upstream app {\n  server \"a:1\";\n  keepalive \"2\";\n}\n").fingerprint;
        assert_eq!(a, reformatted);
        assert_eq!(a, quoted);
        assert_ne!(a, edited);
        assert!(a.starts_with("fnv1a64:"));
        // Pinned so a change to the digest (which would flag every user's block as hand
        // edited after an upgrade) is deliberate.
        assert_eq!(fnv1a64(&[b"a"]), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn switch_validation() {
        let b = read(RUNBOOK);
        assert!(validate_switch("app", &b, &sw("127.0.0.1:8001", None)).is_ok());
        assert!(validate_switch("app", &b, &sw("unix:/run/app.sock", None)).is_ok());
        assert!(validate_switch("app", &b, &sw("[::1]:8001", None)).is_ok());
        for bad in ["", "a b", "a;", "a}", "a#", "$x", "\"a\""] {
            let e = validate_switch("app", &b, &sw(bad, Some("x:1"))).unwrap_err();
            assert!(
                e.to_string()
                    .starts_with("invalid switch for upstream `app`"),
                "{e}"
            );
        }
        let e = validate_switch("app", &b, &sw("x:1", Some("x:1"))).unwrap_err();
        assert!(
            e.to_string()
                .contains("both the active server and the backup"),
            "{e}"
        );
        // Switching to the current backup without a standby swaps, which is fine.
        assert!(validate_switch("app", &b, &sw("127.0.0.1:8001", None)).is_ok());
    }

    #[test]
    fn state_round_trips() {
        let st = State {
            site: "/etc/nginx/sites-available/a \"b\"\\c".into(),
            upstream: "app".into(),
            fingerprint: "fnv1a64:0011".into(),
            servers: "server a:1;\tserver b:1 backup;".into(),
            pending: Some("fnv1a64:22".into()),
        };
        assert_eq!(parse_state(&render_state(&st)), Ok(st.clone()));
        let none = State {
            pending: None,
            ..st
        };
        assert_eq!(parse_state(&render_state(&none)), Ok(none));
        assert!(parse_state("{}").is_err());
        assert!(parse_state("not json").is_err());
        assert!(parse_state("{\"version\": 2}").is_err());
    }

    #[test]
    fn argv_display_quotes_only_when_needed() {
        let argv: Vec<String> = ["nginx", "-g", "daemon off;", "it's"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(display_argv(&argv), r"nginx -g 'daemon off;' 'it'\''s'");
    }

    #[test]
    fn commands_report_status_output_and_timeouts() {
        let argv = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            run_command(&argv(&["true"]), Duration::from_secs(5)).status,
            CommandStatus::Success
        );
        let ls = run_command(
            &argv(&["ls", "/nonexistent-ripcord"]),
            Duration::from_secs(5),
        );
        assert_eq!(ls.status, CommandStatus::Exit(2));
        assert!(ls.output.contains("nonexistent-ripcord"), "{}", ls.output);
        let slow = run_command(&argv(&["sleep", "5"]), Duration::from_millis(200));
        assert_eq!(
            slow.status,
            CommandStatus::TimedOut(Duration::from_millis(200))
        );
        assert!(slow.elapsed < Duration::from_secs(2));
        let missing = run_command(
            &argv(&["/nonexistent/ripcord-nginx"]),
            Duration::from_secs(5),
        );
        assert!(matches!(missing.status, CommandStatus::NotStarted(_)));
    }

    /// A site and config whose test and reload commands are `true`, for the state logic.
    fn io_world(text: &str) -> (tempfile::TempDir, SiteConfig) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let site = dir.path().join("app");
        fs::write(&site, text).unwrap_or_else(|e| panic!("{e}"));
        let cfg = SiteConfig {
            test_command: vec!["true".into()],
            reload_command: vec!["true".into()],
            ..SiteConfig::new(&site, "app", dir.path().join("state/app.json"))
        };
        (dir, cfg)
    }

    #[test]
    fn first_use_records_and_a_later_edit_is_refused() {
        let (_dir, cfg) = io_world(RUNBOOK);
        let r = switch(&cfg, &sw("127.0.0.1:8001", None)).unwrap_or_else(|e| panic!("{e}"));
        assert!(r.changed && !r.forced);
        let st = parse_state(&fs::read_to_string(&cfg.state_file).unwrap_or_default())
            .unwrap_or_else(|e| panic!("{e}"));
        let text = fs::read_to_string(&cfg.site).unwrap_or_default();
        assert_eq!(st.fingerprint, read(&text).fingerprint);
        assert_eq!(st.pending, None);
        assert_eq!(
            current(&cfg).unwrap_or_else(|e| panic!("{e}")),
            sw("127.0.0.1:8001", Some("127.0.0.1:8000"))
        );

        fs::write(&cfg.site, text.replace("keepalive 16", "keepalive 32")).unwrap_or_default();
        let e = switch(&cfg, &sw("127.0.0.1:8000", None)).unwrap_err();
        assert!(matches!(e, SiteError::HandEdited { line: 2, .. }), "{e}");
    }

    #[test]
    fn a_write_interrupted_before_its_state_update_is_not_a_hand_edit() {
        let (_dir, cfg) = io_world(RUNBOOK);
        switch(&cfg, &sw("127.0.0.1:8000", None)).unwrap_or_else(|e| panic!("{e}"));
        // What a crash right after the rename leaves: the new block on disk, the state
        // still recording the old block with the new one pending.
        let new_text = render(RUNBOOK, &read(RUNBOOK), &sw("127.0.0.1:8001", None));
        let mut st = parse_state(&fs::read_to_string(&cfg.state_file).unwrap_or_default())
            .unwrap_or_else(|e| panic!("{e}"));
        st.pending = Some(read(&new_text).fingerprint);
        fs::write(&cfg.state_file, render_state(&st)).unwrap_or_default();
        fs::write(&cfg.site, &new_text).unwrap_or_default();
        let r = switch(&cfg, &sw("127.0.0.1:8001", None)).unwrap_or_else(|e| panic!("{e}"));
        assert!(!r.changed && !r.forced);
    }

    #[test]
    fn unreadable_state_needs_force() {
        let (_dir, cfg) = io_world(RUNBOOK);
        fs::create_dir_all(cfg.state_file.parent().unwrap_or(Path::new("."))).unwrap_or_default();
        fs::write(&cfg.state_file, "{ not json").unwrap_or_default();
        let e = switch(&cfg, &sw("127.0.0.1:8001", None)).unwrap_err();
        assert!(matches!(e, SiteError::BadState { .. }), "{e}");
        assert_eq!(fs::read_to_string(&cfg.site).unwrap_or_default(), RUNBOOK);
        let r = switch_with(
            &cfg,
            &sw("127.0.0.1:8001", None),
            SwitchOptions { force: true },
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(r.forced);
        assert!(switch(&cfg, &sw("127.0.0.1:8000", None)).is_ok());
    }

    #[test]
    fn mode_is_kept_and_a_missing_site_is_named() {
        use std::os::unix::fs::PermissionsExt;
        let (_dir, cfg) = io_world(RUNBOOK);
        fs::set_permissions(&cfg.site, fs::Permissions::from_mode(0o640)).unwrap_or_default();
        switch(&cfg, &sw("127.0.0.1:8001", None)).unwrap_or_else(|e| panic!("{e}"));
        let mode = |p: &Path| {
            fs::metadata(p)
                .map(|m| m.permissions().mode() & 0o777)
                .unwrap_or(0)
        };
        assert_eq!(mode(&cfg.site), 0o640);
        assert_eq!(mode(&backup_path(&cfg.site)), 0o640);
        let missing = SiteConfig {
            site: cfg.site.with_file_name("nope"),
            ..cfg
        };
        let e = switch(&missing, &sw("127.0.0.1:8001", None)).unwrap_err();
        assert!(
            e.to_string().starts_with("cannot resolve site file "),
            "{e}"
        );
        assert!(e.to_string().contains("nope"), "{e}");
    }

    #[test]
    fn lone_escapes_and_multibyte_text_do_not_panic() {
        for text in [
            "upstream app { server a:1; } # é\\",
            "server { return 200 \\é; }",
            "\\",
            "é\\é",
            "\"\\",
        ] {
            let _ = read_upstream(text, "app");
        }
    }
}
