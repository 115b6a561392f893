//! Response deadlines without a timer per request.
//!
//! `tokio::time::timeout` around every proxied request registers a timer entry and
//! removes it again, about 1.2 µs a request on the 2-core reference machine, which is
//! most of what the proxy spent beyond nginx. A proxy worker instead keeps its requests'
//! deadlines in a table of its own (a worker is one thread and its tasks never move),
//! and one task per worker looks at the table every [`TICK`], waking the requests past
//! their deadline. A request then costs a slot in the table and nothing else; a response
//! timeout fires between `response_timeout` and `response_timeout + TICK` late.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// How often a worker looks for requests past their deadline.
pub(crate) const TICK: Duration = Duration::from_millis(100);

struct Entry {
    at: Instant,
    waker: Option<Waker>,
    expired: bool,
}

#[derive(Default)]
struct Table {
    entries: Vec<Option<Entry>>,
    free: Vec<usize>,
    live: usize,
    sweeping: bool,
}

thread_local! {
    static TABLE: RefCell<Table> = RefCell::new(Table::default());
}

/// A request's deadline, on the worker thread it was made on: ready once it has passed.
/// Must be made, polled and dropped on that thread, inside its runtime (a proxy
/// worker's tasks never leave it).
pub(crate) struct Deadline {
    key: usize,
    /// The address of the table it is in: the thread's own, checked on every use (a
    /// thread id costs more to get).
    table: usize,
}

/// This thread's table's address.
fn table_of(t: &RefCell<Table>) -> usize {
    std::ptr::from_ref(t) as usize
}

impl Deadline {
    /// A deadline `after` from `start`.
    pub(crate) fn new(start: Instant, after: Duration) -> Deadline {
        let at = start
            .checked_add(after)
            .unwrap_or(start + Duration::from_secs(86_400));
        let (key, table, start_sweeper) = TABLE.with(|cell| {
            let mut t = cell.borrow_mut();
            let entry = Some(Entry {
                at,
                waker: None,
                expired: false,
            });
            let key = match t.free.pop() {
                Some(key) => {
                    t.entries[key] = entry;
                    key
                }
                None => {
                    t.entries.push(entry);
                    t.entries.len() - 1
                }
            };
            t.live += 1;
            let start_sweeper = !t.sweeping;
            t.sweeping = true;
            (key, table_of(cell), start_sweeper)
        });
        if start_sweeper {
            tokio::spawn(sweep());
        }
        Deadline { key, table }
    }
}

impl Future for Deadline {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        TABLE.with(|cell| {
            assert_eq!(
                table_of(cell),
                self.table,
                "a deadline left its worker thread"
            );
            let mut t = cell.borrow_mut();
            let Some(Some(entry)) = t.entries.get_mut(self.key) else {
                return Poll::Ready(());
            };
            if entry.expired {
                return Poll::Ready(());
            }
            match &mut entry.waker {
                Some(waker) if waker.will_wake(cx.waker()) => {}
                slot => *slot = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
    }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        let _ = TABLE.try_with(|cell| {
            if table_of(cell) != self.table {
                // Never so for the proxy; a slot left behind is only memory.
                return;
            }
            let mut t = cell.borrow_mut();
            if let Some(slot) = t.entries.get_mut(self.key)
                && slot.take().is_some()
            {
                t.free.push(self.key);
                t.live -= 1;
            }
        });
    }
}

/// The worker's sweeper: wakes the requests past their deadline every [`TICK`], and
/// ends when the table is empty (the next deadline starts it again).
async fn sweep() {
    loop {
        tokio::time::sleep(TICK).await;
        let now = Instant::now();
        let (wake, done) = TABLE.with(|t| {
            let mut t = t.borrow_mut();
            let mut wake = Vec::new();
            for entry in t.entries.iter_mut().flatten() {
                if !entry.expired && entry.at <= now {
                    entry.expired = true;
                    wake.extend(entry.waker.take());
                }
            }
            let done = t.live == 0;
            if done {
                t.sweeping = false;
                // Let a burst's table go.
                if t.entries.len() > 1024 {
                    *t = Table::default();
                }
            }
            (wake, done)
        });
        for waker in wake {
            waker.wake();
        }
        if done {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_deadline_fires_after_its_time_and_not_before() {
        let start = Instant::now();
        let fired = tokio::time::timeout(
            Duration::from_secs(5),
            Deadline::new(start, Duration::from_millis(250)),
        )
        .await;
        assert!(fired.is_ok(), "the deadline never fired");
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(250), "fired early: {took:?}");
        // One tick late at most, with room for a busy machine.
        assert!(
            took < Duration::from_millis(250) + TICK + Duration::from_secs(2),
            "{took:?}"
        );
    }

    #[tokio::test]
    async fn a_deadline_dropped_before_its_time_never_fires_and_frees_its_slot() {
        let start = Instant::now();
        let far = Deadline::new(start, Duration::from_secs(3600));
        let near = Deadline::new(start, Duration::from_millis(50));
        tokio::select! {
            _ = far => panic!("an hour's deadline fired"),
            _ = near => {}
        }
        // Both are dropped now: the table has nothing live, and the sweeper stops.
        TABLE.with(|t| assert_eq!(t.borrow().live, 0));
        tokio::time::sleep(TICK * 3).await;
        TABLE.with(|t| {
            assert!(
                !t.borrow().sweeping,
                "the sweeper goes on with nothing to do"
            )
        });
        // A new deadline starts it again.
        let again = tokio::time::timeout(
            Duration::from_secs(5),
            Deadline::new(Instant::now(), Duration::from_millis(10)),
        )
        .await;
        assert!(again.is_ok());
    }
}
