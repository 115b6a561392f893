//! Executors: the only code that changes infrastructure. A [`ServiceExec`] owns one
//! service's blue-green slots (runtime `process`) and its proxy (router `proxy`), and
//! runs deploys and rollbacks as persisted state machines: every step is written to the
//! ledger before it runs, and the outcome after.
//!
//! One operation per service at a time: the ledger lease excludes other processes, an
//! async mutex excludes other tasks of this one. The slot table is behind a plain mutex
//! that is never held across an await, so status reads never wait on an operation.
//!
//! `deploy.rs` and `rollback.rs` are the two operations (`drill.rs` rehearses the
//! second and undoes it), `steps.rs` the steps they
//! share (start and health-gate a slot, switch, verify, keep warm, stop), `in_place.rs`
//! the one-address path of router `none` and runtimes `swarm` and `kubernetes`
//! (`kubernetes.rs`: snapshotted pod templates), `housekeeping.rs` what
//! the watcher asks between operations (bake timer, reconcile, shutdown), `snapshot.rs`
//! the redacted config kept with each release.

pub mod container;
mod deploy;
mod drill;
pub mod envfile;
mod housekeeping;
mod in_place;
mod kubernetes;
pub mod migrations;
pub mod nginx;
mod observed;
pub mod process;
pub mod replace;
pub mod restore;
pub mod restore_offline;
mod rollback;
pub mod router;
mod snapshot;
mod steps;
pub mod swarm;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;

use crate::clock::now_ms;
use crate::config::{ServiceConfig, Slot};
use crate::http::HttpClient;
use crate::ledger::{Ledger, LedgerError, NewEvent, Release, SlotRecord};
use crate::verify::VerifyReport;
pub use drill::DrillOutcome;
use process::RunningProcess;
pub use restore::recover_interrupted_restore;
pub use router::Router;

/// The ledger, shared by the tasks of one process. Never held across an await.
pub type SharedLedger = Arc<Mutex<Ledger>>;

/// Where an operation reports its progress for people (a CLI waiting on the socket).
pub type Progress = Option<mpsc::UnboundedSender<String>>;

/// How long an operation waits for the operation lock when no operation holds the
/// service's lease (the bake timer's tick holds it for a moment) before it is refused
/// as busy.
const HOUSEKEEPING_WAIT: Duration = Duration::from_secs(5);

/// How long a release rolled away from keeps serving the requests it already has.
pub const ROLLBACK_DRAIN: Duration = Duration::from_secs(5);

/// Why an operation did not succeed; each maps to a documented exit code.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// Refused by a guard (frozen, bad release, contract migration): exit 3.
    #[error("{0}")]
    Refused(String),
    /// Another operation holds the service: exit 3, and worth trying again later.
    #[error("{0}")]
    Busy(String),
    /// Verification failed: exit 4.
    #[error("{message}")]
    VerifyFailed {
        message: String,
        report: VerifyReport,
    },
    /// A usage problem (no command to run): exit 2.
    #[error("{0}")]
    Usage(String),
    /// Anything else: exit 1.
    #[error("{0}")]
    Failed(String),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

impl ExecError {
    pub fn exit_code(&self) -> i32 {
        match self {
            ExecError::Refused(_) | ExecError::Busy(_) => 3,
            ExecError::VerifyFailed { .. } => 4,
            ExecError::Usage(_) => 2,
            ExecError::Failed(_) => 1,
            ExecError::Ledger(LedgerError::Busy { .. }) => 3,
            ExecError::Ledger(_) => 1,
        }
    }
}

pub struct DeployRequest {
    pub version: String,
    /// The slot to deploy to; default the idle one. Runtime `external` runs each slot
    /// elsewhere, so this names where the new version already runs.
    pub slot: Option<Slot>,
    /// The argv for this release; else the recorded one, else the config's `command`.
    pub argv: Option<Vec<String>>,
    pub cwd: Option<PathBuf>,
    /// Runtime docker: the image reference (default `IMAGE:VERSION` from the config).
    pub image: Option<String>,
    pub force: bool,
    pub reason: Option<String>,
}

pub struct RollbackRequest {
    /// A version, or a release id as `#ID` or `ID`.
    pub to: Option<String>,
    pub reason: Option<String>,
    /// Roll back even across a contract migration (needs a reason).
    pub force: bool,
}

/// What a finished operation reports.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub service: String,
    pub operation: i64,
    pub kind: &'static str,
    pub active: ReleaseRef,
    pub from: Option<ReleaseRef>,
    /// Whether a rollback found its target warm (a traffic switch only).
    pub warm: Option<bool>,
    /// From the start of the operation until traffic was on the new release.
    pub switch_ms: u64,
    /// When traffic went to the new release, and when verification passed.
    pub switched_at_ms: i64,
    pub verified_at_ms: i64,
    pub total_ms: u64,
    /// Router `none`: how long users had no answer while the container was replaced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub downtime_ms: Option<u64>,
    pub verify: VerifyReport,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReleaseRef {
    pub release: i64,
    pub version: String,
    pub slot: Option<Slot>,
}

/// A release running in a slot.
#[derive(Clone)]
pub struct SlotProc {
    pub release: Release,
    /// The process, when ripcord runs it (runtime `process`); `None` for `external`.
    pub proc: Option<Arc<RunningProcess>>,
    /// The container, for runtime `docker`.
    pub container: Option<Arc<container::ContainerHandle>>,
    /// Set on a release that no longer gets traffic: it is stopped once this passes.
    pub warm_until_ms: Option<i64>,
}

impl SlotProc {
    /// Whether it still runs as far as ripcord can tell (an external slot always does).
    pub fn running(&self) -> bool {
        match (&self.proc, &self.container) {
            (Some(p), _) => p.exited().is_none(),
            (None, Some(c)) => c.exited().is_none(),
            (None, None) => true,
        }
    }
}

pub struct ServiceExec {
    pub cfg: ServiceConfig,
    pub router: Router,
    ledger: SharedLedger,
    state_dir: PathBuf,
    slots: Mutex<BTreeMap<Slot, SlotProc>>,
    op: tokio::sync::Mutex<()>,
    http: HttpClient,
    /// The Docker engine, connected on first use (runtime `docker`).
    engine: tokio::sync::OnceCell<crate::docker::Engine>,
    /// The Kubernetes API, connected on first use (runtime `kubernetes`).
    cluster: tokio::sync::OnceCell<crate::k8s::Cluster>,
    /// Warm releases whose bake was held by the guard's evidence: good rollback targets,
    /// each told once.
    bake_held: Mutex<std::collections::HashSet<i64>>,
    /// The span of the running or last drill (`drill.rs`), in ms since the epoch; the
    /// end is `i64::MAX` while it runs. The guard leaves the service alone meanwhile and
    /// judges none of the requests made in it.
    drill_span: Mutex<Option<(i64, i64)>>,
}

/// Tells `config::redact` the secret values this service's releases may see: today's
/// `env` and env files, and every release's snapshot (an old release's secrets can
/// reach a log tail or an error after a rollback). Unreadable files are skipped here:
/// the deploy or start that needs one reports it.
fn learn_secrets(cfg: &ServiceConfig, ledger: &SharedLedger) {
    use crate::config::redact;
    redact::learn(cfg.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let mut files: Vec<std::path::PathBuf> = cfg
        .env_file
        .iter()
        .chain(cfg.docker.as_ref().and_then(|d| d.env_file.as_ref()))
        .cloned()
        .collect();
    let releases = ledger
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .releases(&cfg.name)
        .unwrap_or_default();
    for r in releases {
        files.extend(r.spec.env_snapshot.clone());
        files.extend(r.spec.image.and_then(|i| i.env_snapshot));
    }
    for f in files {
        if let Ok(vars) = envfile::read(&f) {
            redact::learn(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        }
    }
}

impl ServiceExec {
    pub fn new(cfg: ServiceConfig, router: Router, ledger: SharedLedger, state_dir: &Path) -> Self {
        learn_secrets(&cfg, &ledger);
        ServiceExec {
            cfg,
            router,
            ledger,
            state_dir: state_dir.to_path_buf(),
            slots: Mutex::new(BTreeMap::new()),
            op: tokio::sync::Mutex::new(()),
            http: HttpClient::default(),
            engine: tokio::sync::OnceCell::new(),
            cluster: tokio::sync::OnceCell::new(),
            bake_held: Mutex::default(),
            drill_span: Mutex::default(),
        }
    }

    fn name(&self) -> &str {
        &self.cfg.name
    }

    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A copy of what runs in each slot right now.
    pub fn slots(&self) -> BTreeMap<Slot, SlotProc> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_slot(&self, slot: Slot, sp: Option<SlotProc>) -> Result<(), LedgerError> {
        {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            match &sp {
                Some(sp) => slots.insert(slot, sp.clone()),
                None => slots.remove(&slot),
            };
        }
        let mut ledger = self.ledger();
        match sp {
            Some(sp) => ledger.set_slot(&SlotRecord {
                service: self.name().to_string(),
                slot,
                release_id: Some(sp.release.id),
                pid: sp.proc.as_ref().map(|p| p.pid as i64),
                pid_start: sp.proc.as_ref().and_then(|p| p.pid_start),
                started_at_ms: Some(now_ms()),
                warm_until_ms: sp.warm_until_ms,
                container: sp.container.as_ref().map(|c| c.id.clone()),
            }),
            None => ledger.clear_slot(self.name(), slot),
        }
    }

    fn event(&self, release: Option<i64>, op: Option<i64>, kind: &str, message: String) {
        tracing::info!(service = %self.name(), kind, "{message}");
        let result = self.ledger().event(
            self.name(),
            NewEvent {
                release_id: release,
                operation_id: op,
                kind,
                message,
                data: None,
                incident_id: None,
            },
        );
        if let Err(e) = result {
            tracing::error!(service = %self.name(), error = %e, "cannot write event to the ledger");
        }
    }

    /// Runs `f` holding this service's lease and operation lock.
    async fn exclusive<T, F>(&self, holder: String, f: F) -> Result<T, ExecError>
    where
        F: AsyncFnOnce() -> Result<T, ExecError>,
    {
        self.exclusive_for(holder, 1, f).await
    }

    /// [`Self::exclusive`] for an operation that may start and verify up to `rounds`
    /// times (a drill: back, then forward or a restore): the lease lasts that long.
    async fn exclusive_for<T, F>(&self, holder: String, rounds: u32, f: F) -> Result<T, ExecError>
    where
        F: AsyncFnOnce() -> Result<T, ExecError>,
    {
        let busy = |holder: &str| {
            ExecError::Busy(format!(
                "service `{}` is busy: {holder} is running; wait for it to finish (see `ripcord status {}`)",
                self.name(),
                self.name()
            ))
        };
        let locked = self.op.try_lock().ok();
        let _guard = match locked {
            Some(guard) => guard,
            None => match self.lease_holder()? {
                Some(holder) => return Err(busy(&holder)),
                // No operation holds the lease: the bake timer's tick (or an operation
                // just starting or ending) has the lock for a moment. Wait it out rather
                // than refuse a person's command over it.
                None => match tokio::time::timeout(HOUSEKEEPING_WAIT, self.op.lock()).await {
                    Ok(guard) => guard,
                    Err(_) => return Err(busy("another operation of this watcher")),
                },
            },
        };
        let ttl = rounds * (self.cfg.start_timeout + self.cfg.verify_deadline)
            + 2 * self.cfg.stop_timeout
            + Duration::from_secs(60);
        let lease = self.ledger().acquire_lease(self.name(), &holder, ttl)?;
        let result = f().await;
        if let Err(e) = self.ledger().release_lease(&lease) {
            tracing::error!(service = %self.name(), error = %e, "cannot release the lease");
        }
        result
    }

    /// Who holds this service's lease, read without keeping the ledger locked.
    fn lease_holder(&self) -> Result<Option<String>, LedgerError> {
        self.ledger().lease_holder(self.name())
    }

    /// Records how an operation ended and passes its result on.
    fn finish<T>(&self, op: i64, result: Result<T, ExecError>) -> Result<T, ExecError> {
        match &result {
            Ok(_) => self.ledger().finish_operation(op, "succeeded", None)?,
            Err(e) => self
                .ledger()
                .finish_operation(op, "failed", Some(&e.to_string()))?,
        }
        result
    }

    /// Frozen means no deploy and no rollback, automatic or manual.
    fn refuse_if_frozen(&self, what: &str) -> Result<(), ExecError> {
        let state = self.ledger().service_state(self.name())?;
        match state.frozen_reason {
            Some(reason) => Err(ExecError::Refused(format!(
                "{} is frozen ({reason}): ripcord will not {what} it until \
                 `ripcord unfreeze {} --reason TEXT`",
                self.name(),
                self.name()
            ))),
            None => Ok(()),
        }
    }
}

fn say(progress: &Progress, message: String) {
    if let Some(tx) = progress {
        let _ = tx.send(message);
    }
}

fn release_ref(r: &Release, slot: Option<Slot>) -> ReleaseRef {
    ReleaseRef {
        release: r.id,
        version: r.version.clone(),
        slot,
    }
}

/// Finds a release by version, or by id written `#ID`.
pub fn find_release(ledger: &Ledger, service: &str, to: &str) -> Result<Release, ExecError> {
    if let Some(r) = ledger.find_release(service, to)? {
        return Ok(r);
    }
    if let Some(id) = to.strip_prefix('#').and_then(|s| s.parse::<i64>().ok())
        && let Ok(r) = ledger.release(id)
        && r.service == service
    {
        return Ok(r);
    }
    Err(ExecError::Failed(format!(
        "{service} has no release `{to}`: see `ripcord releases {service}`"
    )))
}

/// A version made safe to use in a file name.
pub(crate) fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}
