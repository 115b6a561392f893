//! The owned `upstream` block, read and rewritten without IO: where it is, its `server`
//! lines and their layout, a fingerprint to tell a hand edit, and the new text of a switch
//! that changes only the addresses.

use std::fmt;
use std::ops::Range;

use super::{Layout, ParseError, SiteError, Switch};
use crate::nginx_conf::tokens::{Kind, Token, tokenize};

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

/// FNV-1a, 64 bit: deterministic across builds and platforms, unlike std's hasher, so a
/// fingerprint written by one ripcord is understood by the next.
pub(super) fn fnv1a64(parts: &[&[u8]]) -> u64 {
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

pub(super) fn validate_switch(
    upstream: &str,
    block: &UpstreamBlock,
    sw: &Switch,
) -> Result<(), SiteError> {
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
