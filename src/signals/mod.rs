//! Signal sources: tasks that only observe and send [`Observation`]s down a bounded
//! channel to the guard. A source never decides and never changes anything; it stops
//! when its channel closes or it is told to.
//!
//! The built-in proxy is a source too: its per-request records arrive on their own
//! channel (see `proxy::RequestRecord`).
//!
//! A source reads a service through the narrow traits below ([`Targets`],
//! [`SlotSource`], [`Containers`]), which `execute/` implements: observation never
//! names action, so the import arrows point one way (see ARCHITECTURE.md).

pub mod docker;
pub mod integrity;
pub mod kubernetes;
pub mod nginx_log;
pub mod probe;
pub mod process;
pub mod prometheus;

use std::future::Future;

use serde::Serialize;

use crate::config::Slot;
use crate::docker::Engine;

/// The release new requests go to, at the moment it was asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Serving {
    pub release_id: i64,
    pub slot: Slot,
    pub version: String,
}

/// Where a source learns which release serves right now (the watcher passes the
/// service's router).
pub trait Targets: Send + Sync + 'static {
    fn serving(&self) -> Option<Serving>;
}

/// A copy of what runs in one slot, taken when [`SlotSource::slots`] was called.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotView {
    pub slot: Slot,
    pub release_id: i64,
    /// Whether it still runs as far as ripcord can tell (an external slot always does).
    pub running: bool,
    pub unit: Unit,
}

/// What a slot's release runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unit {
    /// Runtime `external`: someone else runs it; there is nothing of ours to watch.
    External,
    /// A process ripcord started (runtime `process`).
    Process {
        pid: u32,
        /// How it exited, once it has.
        exited: Option<String>,
        /// ripcord asked it to stop: its exit is then not a crash.
        stopping: bool,
        /// ripcord killed it for exceeding `memory_limit_mb`.
        oom_killed: bool,
    },
    /// A container ripcord started (runtime `docker`).
    Container {
        id: String,
        exited: Option<String>,
        stopping: bool,
    },
}

/// What runs in a service's slots, read only (the watcher passes its `ServiceExec`).
pub trait SlotSource: Send + Sync + 'static {
    /// The service's name, for logs.
    fn service(&self) -> &str;
    /// What runs in each slot right now, in slot order.
    fn slots(&self) -> Vec<SlotView>;
}

/// A service whose slots run containers: the engine to observe them with, and where a
/// container's unrequested exit is noted so `status` and the next operation see it.
pub trait Containers: SlotSource {
    /// The engine, connected on first use; the error says why it is not there.
    fn engine(&self) -> impl Future<Output = Result<Engine, String>> + Send;
    /// Notes that a slot's container exited on its own, as the engine told it.
    fn mark_exited(&self, container_id: &str, how: String, oom: bool);
}

/// A container of a release's pod that terminated (runtime kubernetes), as the API
/// server's pod status says: the container's current state or its last one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodTermination {
    pub release_id: i64,
    /// Pod, container and restart count: the same termination read twice is one.
    pub key: String,
    pub pod: String,
    /// Kubernetes' reason, e.g. `OOMKilled`, `Error`.
    pub reason: String,
    pub exit_code: i32,
    pub restart_count: i32,
}

/// A service whose release runs as a Deployment's pods: their terminations, read from
/// the API (the watcher passes its `ServiceExec`).
pub trait Pods: SlotSource {
    /// The terminations of the active release's pods' containers that the API reports
    /// now; the error says why they could not be read.
    fn terminations(&self) -> impl Future<Output = Result<Vec<PodTermination>, String>> + Send;
}

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
