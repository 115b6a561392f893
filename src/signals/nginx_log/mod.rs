//! The nginx access-log signal: follows the access log like `tail -F`, reads each line
//! with the service's compiled `log_format` (`nginx_conf::log_format`, re-exported here)
//! and sends the requests down a bounded channel.
//!
//! It only observes. It must never write to, truncate, rotate or lock the log; never stop
//! because of a line it cannot read (a malformed line is counted, sampled and skipped);
//! never panic on any input; and never hold more than a bounded amount of the log in
//! memory. `splitter.rs` cuts the bytes read into lines (an unfinished line is kept up to
//! [`MAX_LINE`]); `stats.rs` holds the counters `status` and `/metrics` read.

mod splitter;
mod stats;
#[cfg(test)]
mod tests;

use std::io::{self, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;

pub use crate::nginx_conf::log_format::{
    AccessRecord, AccessRef, COMBINED, Escape, FormatError, LogFormat, RECOMMENDED,
    attribution_warning,
};
pub use stats::{FollowSnapshot, FollowState, FollowStats};

use splitter::{LineSplitter, Piece, Skip};
use stats::lock;

/// Lines longer than this are counted as malformed and skipped, which bounds the memory a
/// follower holds for an unfinished line.
pub const MAX_LINE: usize = 64 * 1024;

/// How many bytes of a malformed line `status` shows.
const SAMPLE_BYTES: usize = 512;

/// Collects parsed records and counters for one chunk, then hands them on at once, so the
/// shared atomics and the channel are touched once per chunk rather than once per line.
struct Sink {
    format: LogFormat,
    batch: Vec<AccessRecord>,
    lines: u64,
    malformed: u64,
    bad_sample: Option<Vec<u8>>,
}

impl Sink {
    fn piece(&mut self, piece: Piece<'_>) {
        self.lines += 1;
        match piece {
            Piece::Line(line) => match self.format.parse_line(line) {
                Some(rec) => self.batch.push(rec),
                None => {
                    self.malformed += 1;
                    let sample = self.bad_sample.get_or_insert_with(Vec::new);
                    sample.clear();
                    sample.extend_from_slice(&line[..line.len().min(SAMPLE_BYTES)]);
                }
            },
            Piece::TooLong => {
                self.malformed += 1;
                self.bad_sample =
                    Some(format!("<a line longer than {MAX_LINE} bytes>").into_bytes());
            }
        }
    }

    /// Publishes the counters and sends the batch; `false` once the receiver is gone.
    async fn flush(&mut self, stats: &FollowStats, tx: &mpsc::Sender<Vec<AccessRecord>>) -> bool {
        stats
            .lines
            .fetch_add(std::mem::take(&mut self.lines), Ordering::Relaxed);
        stats
            .malformed
            .fetch_add(std::mem::take(&mut self.malformed), Ordering::Relaxed);
        if let Some(sample) = self.bad_sample.take() {
            *lock(&stats.last_malformed) = Some(String::from_utf8_lossy(&sample).into_owned());
        }
        if self.batch.is_empty() {
            return !tx.is_closed();
        }
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH_HINT));
        tx.send(batch).await.is_ok()
    }
}

const BATCH_HINT: usize = 1024;
const READ_CHUNK: usize = 256 * 1024;
/// Chunks read from one file before the follower looks at the path again, so a file that
/// grows faster than it is read cannot hide a rotation.
const CHUNKS_PER_POLL: usize = 64;

/// One open file being read.
struct Tail {
    file: tokio::fs::File,
    id: (u64, u64),
    pos: u64,
    lines: LineSplitter,
}

enum Drained {
    /// Read this many bytes; stopped at the end of the file or the chunk limit.
    Read(u64),
    Closed,
}

/// Follows an access log like `tail -F`. Build with [`Follower::new`], run with
/// [`Follower::run`].
#[derive(Debug, Clone)]
pub struct Follower {
    path: PathBuf,
    format: LogFormat,
    start_at_end: bool,
    poll: Duration,
    rotate_wait: Duration,
}

impl Follower {
    /// Defaults: start at the end, poll every 50 ms, keep reading a rotated file for 5 s.
    pub fn new(path: impl Into<PathBuf>, format: LogFormat) -> Follower {
        Follower {
            path: path.into(),
            format,
            start_at_end: true,
            poll: Duration::from_millis(50),
            rotate_wait: Duration::from_secs(5),
        }
    }

    /// Whether a file that exists when the follower starts is read from its end (only new
    /// requests) or its start. A file that appears later is always read from its start.
    pub fn start_at_end(mut self, at_end: bool) -> Follower {
        self.start_at_end = at_end;
        self
    }

    pub fn poll_interval(mut self, every: Duration) -> Follower {
        self.poll = every;
        self
    }

    /// How long a file renamed away is still read after the path names a new one: nginx
    /// writes to the old file until it is told to reopen its logs (`USR1`), which
    /// logrotate does only after creating the new file.
    pub fn rotate_wait(mut self, wait: Duration) -> Follower {
        self.rotate_wait = wait;
        self
    }

    /// Follows the path, sending a batch of records per chunk read, until the receiver is
    /// dropped. IO errors are counted in `stats` and retried at the next poll; nothing
    /// about the file makes it return.
    pub async fn run(self, tx: mpsc::Sender<Vec<AccessRecord>>, stats: Arc<FollowStats>) {
        let mut sink = Sink {
            format: self.format.clone(),
            batch: Vec::with_capacity(BATCH_HINT),
            lines: 0,
            malformed: 0,
            bad_sample: None,
        };
        let mut buf = vec![0u8; READ_CHUNK];
        let mut current: Option<Tail> = None;
        let mut retired: Vec<(Tail, Instant)> = Vec::new();
        let mut seek_end = self.start_at_end;
        loop {
            if tx.is_closed() {
                return;
            }
            let mut progressed = false;

            let mut i = 0;
            while i < retired.len() {
                let expired = retired[i].1 <= Instant::now();
                // An expired file is read to its end one last time before it is dropped.
                let limit = if expired { usize::MAX } else { CHUNKS_PER_POLL };
                match drain(&mut retired[i].0, &mut buf, limit, &mut sink, &stats, &tx).await {
                    Ok(Drained::Closed) => return,
                    Ok(Drained::Read(n)) => progressed |= n > 0,
                    Err(e) => stats.error("reading a rotated log", &e),
                }
                if expired {
                    let (mut old, _) = retired.swap_remove(i);
                    old.lines.finish(|p| sink.piece(p));
                    if !sink.flush(&stats, &tx).await {
                        return;
                    }
                } else {
                    i += 1;
                }
            }

            match current.as_mut() {
                None => match open(&self.path, seek_end).await {
                    Ok(tail) => {
                        current = Some(tail);
                        seek_end = false;
                        progressed = true;
                        stats.set_state(FollowState::Following);
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        seek_end = false;
                        stats.set_state(FollowState::Waiting);
                    }
                    Err(e) => {
                        stats.error(&format!("opening {}", self.path.display()), &e);
                        stats.set_state(FollowState::Waiting);
                    }
                },
                Some(tail) => {
                    match drain(tail, &mut buf, CHUNKS_PER_POLL, &mut sink, &stats, &tx).await {
                        Ok(Drained::Closed) => return,
                        Ok(Drained::Read(n)) => progressed |= n > 0,
                        Err(e) => stats.error(&format!("reading {}", self.path.display()), &e),
                    }
                    match tokio::fs::metadata(&self.path).await {
                        Ok(meta) if (meta.dev(), meta.ino()) != tail.id => {
                            // Renamed away and replaced: keep reading the old file for a
                            // while, and read the new one from its start.
                            stats.rotations.fetch_add(1, Ordering::Relaxed);
                            if let Some(old) = current.take() {
                                retired.push((old, Instant::now() + self.rotate_wait));
                            }
                            progressed = true;
                        }
                        Ok(meta) if meta.len() < tail.pos => {
                            // Copied and truncated in place. Lines written between the
                            // copy and the truncation are lost to every reader; if the
                            // file grows past the old offset before this poll sees it,
                            // the shrink is invisible (as it is to `tail -F`).
                            stats.truncations.fetch_add(1, Ordering::Relaxed);
                            if tail.lines.reset() {
                                sink.malformed += 1;
                                sink.lines += 1;
                            }
                            match tail.file.seek(SeekFrom::Start(0)).await {
                                Ok(_) => tail.pos = 0,
                                Err(e) => {
                                    stats.error("seeking a truncated log", &e);
                                    current = None;
                                }
                            }
                            progressed = true;
                        }
                        // Gone (renamed, not yet replaced): the open file is still the
                        // one nginx writes to until it reopens its logs.
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => stats.error(&format!("checking {}", self.path.display()), &e),
                    }
                }
            }
            if !sink.flush(&stats, &tx).await {
                return;
            }
            if !progressed {
                tokio::time::sleep(self.poll).await;
            }
        }
    }
}

/// Follows `path` with the default poll interval and rotation wait; see [`Follower`].
pub async fn run(
    path: impl Into<PathBuf>,
    format: LogFormat,
    start_at_end: bool,
    tx: mpsc::Sender<Vec<AccessRecord>>,
    stats: Arc<FollowStats>,
) {
    Follower::new(path, format)
        .start_at_end(start_at_end)
        .run(tx, stats)
        .await;
}

async fn open(path: &std::path::Path, at_end: bool) -> io::Result<Tail> {
    let file = tokio::fs::File::open(path).await?;
    // The identity comes from the open descriptor, not the path, which may already name
    // another file.
    let meta = file.metadata().await?;
    let mut tail = Tail {
        file,
        id: (meta.dev(), meta.ino()),
        pos: 0,
        lines: LineSplitter::new(),
    };
    if at_end && meta.len() > 0 {
        // Joining in the middle of a line would report its end as a malformed line.
        tail.file.seek(SeekFrom::Start(meta.len() - 1)).await?;
        let mut last = [0u8; 1];
        tail.file.read_exact(&mut last).await?;
        if last[0] != b'\n' {
            tail.lines.skip = Skip::Silently;
        }
        tail.pos = meta.len();
    }
    Ok(tail)
}

/// Reads up to `max_chunks` chunks (stopping at the end of the file), parsing and sending
/// as it goes.
async fn drain(
    tail: &mut Tail,
    buf: &mut [u8],
    max_chunks: usize,
    sink: &mut Sink,
    stats: &FollowStats,
    tx: &mpsc::Sender<Vec<AccessRecord>>,
) -> io::Result<Drained> {
    let mut total = 0u64;
    for _ in 0..max_chunks {
        let n = tail.file.read(buf).await?;
        if n == 0 {
            break;
        }
        let n64 = n as u64;
        tail.pos += n64;
        total += n64;
        stats.bytes.fetch_add(n64, Ordering::Relaxed);
        tail.lines.feed(&buf[..n], |p| sink.piece(p));
        if !sink.flush(stats, tx).await {
            return Ok(Drained::Closed);
        }
    }
    Ok(Drained::Read(total))
}
