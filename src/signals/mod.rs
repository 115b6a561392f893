//! Signal sources: tasks that only observe and send [`Observation`]s down a bounded
//! channel to the guard. A source never decides and never changes anything; it stops
//! when its channel closes or it is told to.
//!
//! The built-in proxy is a source too: its per-request records arrive on their own
//! channel (see `proxy::RequestRecord`).

pub mod docker;
pub mod integrity;
pub mod nginx_log;
pub mod probe;
pub mod process;
pub mod prometheus;

use serde::Serialize;

use crate::config::Slot;

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Observation {
    /// One health probe of the active slot.
    Health {
        release_id: i64,
        ok: bool,
        detail: String,
        at_ms: i64,
    },
    /// A health probe of the slot that keeps the previous release warm: whether the
    /// rollback target would answer, for people (`status`); it triggers nothing.
    WarmHealth {
        release_id: i64,
        ok: bool,
        detail: String,
        at_ms: i64,
    },
    /// A resource sample of a release's process.
    Resources {
        release_id: i64,
        slot: Slot,
        /// CPU time over wall time since the last sample: 1.0 is one core.
        cpu_share: Option<f64>,
        rss_mb: Option<f64>,
        at_ms: i64,
    },
    /// One evaluation of a metric rule (a PromQL query).
    Metric {
        rule: String,
        release_id: i64,
        result: crate::prometheus::QueryResult,
        at_ms: i64,
    },
    /// One run of the configured data-integrity check.
    Integrity {
        ok: bool,
        detail: String,
        at_ms: i64,
    },
    /// A release's process exited without ripcord asking it to.
    Exit {
        release_id: i64,
        slot: Slot,
        status: String,
        /// ripcord killed it for exceeding `memory_limit_mb`.
        oom: bool,
        at_ms: i64,
    },
}
