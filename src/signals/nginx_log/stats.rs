//! What a follower counts, for `status`, `doctor` and `/metrics`.

use std::io;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

/// Counters a follower keeps for `status` and `/metrics`; shared with readers.
#[derive(Debug, Default)]
pub struct FollowStats {
    pub(super) lines: AtomicU64,
    pub(super) malformed: AtomicU64,
    pub(super) bytes: AtomicU64,
    pub(super) rotations: AtomicU64,
    pub(super) truncations: AtomicU64,
    pub(super) io_errors: AtomicU64,
    pub(super) unattributed: AtomicU64,
    pub(super) dropped: AtomicU64,
    pub(super) state: AtomicU8,
    pub(super) last_malformed: Mutex<Option<String>>,
    pub(super) last_error: Mutex<Option<String>>,
}

/// What a follower is doing, for `status` and `doctor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FollowState {
    /// It has not looked at the path yet.
    #[default]
    Starting,
    /// The path does not exist (yet), or could not be opened.
    Waiting,
    /// A file is open and being read.
    Following,
}

/// A copy of [`FollowStats`] at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FollowSnapshot {
    /// Complete lines read, malformed ones included.
    pub lines: u64,
    pub malformed: u64,
    pub bytes: u64,
    /// The path named a new file (rotation by rename, or delete and create).
    pub rotations: u64,
    /// The file shrank under the follower (copytruncate).
    pub truncations: u64,
    pub io_errors: u64,
    /// Requests read but tied to no release: the upstream address is no slot's (nginx
    /// answered itself, or another upstream did), or nothing was active yet.
    pub unattributed: u64,
    /// Requests read but never given to the guard because it stayed behind.
    pub dropped: u64,
    pub state: FollowState,
    /// The start of the last malformed line, lossily decoded.
    pub last_malformed: Option<String>,
    pub last_error: Option<String>,
}

impl FollowStats {
    pub fn snapshot(&self) -> FollowSnapshot {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        FollowSnapshot {
            lines: load(&self.lines),
            malformed: load(&self.malformed),
            bytes: load(&self.bytes),
            rotations: load(&self.rotations),
            truncations: load(&self.truncations),
            io_errors: load(&self.io_errors),
            unattributed: load(&self.unattributed),
            dropped: load(&self.dropped),
            state: match self.state.load(Ordering::Relaxed) {
                1 => FollowState::Waiting,
                2 => FollowState::Following,
                _ => FollowState::Starting,
            },
            last_malformed: lock(&self.last_malformed).clone(),
            last_error: lock(&self.last_error).clone(),
        }
    }

    /// Counts requests that could not be tied to a release (see
    /// [`FollowSnapshot::unattributed`]); the consumer of the records counts these.
    pub fn add_unattributed(&self, n: u64) {
        self.unattributed.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts requests the consumer gave up handing on (see [`FollowSnapshot::dropped`]);
    /// returns the total so far.
    pub fn add_dropped(&self, n: u64) -> u64 {
        self.dropped.fetch_add(n, Ordering::Relaxed) + n
    }

    pub(super) fn set_state(&self, state: FollowState) {
        let code = match state {
            FollowState::Starting => 0,
            FollowState::Waiting => 1,
            FollowState::Following => 2,
        };
        self.state.store(code, Ordering::Relaxed);
    }

    pub(super) fn error(&self, what: &str, err: &io::Error) {
        self.io_errors.fetch_add(1, Ordering::Relaxed);
        *lock(&self.last_error) = Some(format!("{what}: {err}"));
    }
}

/// A poisoned lock only means a reader panicked mid-copy; the sample is still usable.
pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
