//! Executors: the only code that changes infrastructure. A [`ServiceExec`] owns one
//! service's blue-green slots (runtime `process`) and its proxy (router `proxy`), and
//! runs deploys and rollbacks as persisted state machines: every step is written to the
//! ledger before it runs, and the outcome after.
//!
//! One operation per service at a time: the ledger lease excludes other processes, an
//! async mutex excludes other tasks of this one. The slot table is behind a plain mutex
//! that is never held across an await, so status reads never wait on an operation.

pub mod container;
pub mod envfile;
pub mod migrations;
pub mod nginx;
mod observed;
pub mod process;
pub mod replace;
pub mod restore;
pub mod router;
pub mod swarm;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::mpsc;

use crate::clock::now_ms;
use crate::config::{Runtime, ServiceConfig, Slot};
use crate::http::HttpClient;
use crate::ledger::{
    Ledger, LedgerError, NewEvent, OperationKind, Release, ReleaseSpec, ReleaseStatus, SlotRecord,
};
use crate::proxy::Target;
use crate::verify::{self, VerifyReport};
use process::{RunningProcess, StartSpec};
pub use router::Router;

/// The ledger, shared by the tasks of one process. Never held across an await.
pub type SharedLedger = Arc<Mutex<Ledger>>;

/// Where an operation reports its progress for people (a CLI waiting on the socket).
pub type Progress = Option<mpsc::UnboundedSender<String>>;

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
    /// Warm releases whose bake was held by the guard's evidence: good rollback targets,
    /// each told once.
    bake_held: Mutex<std::collections::HashSet<i64>>,
}

impl ServiceExec {
    pub fn new(cfg: ServiceConfig, router: Router, ledger: SharedLedger, state_dir: &Path) -> Self {
        ServiceExec {
            cfg,
            router,
            ledger,
            state_dir: state_dir.to_path_buf(),
            slots: Mutex::new(BTreeMap::new()),
            op: tokio::sync::Mutex::new(()),
            http: HttpClient::default(),
            engine: tokio::sync::OnceCell::new(),
            bake_held: Mutex::default(),
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
        let Ok(_guard) = self.op.try_lock() else {
            let holder = self
                .ledger()
                .lease_holder(self.name())?
                .unwrap_or_else(|| "another operation of this watcher".to_string());
            return Err(ExecError::Busy(format!(
                "service `{}` is busy: {holder} is running; wait for it to finish (see `ripcord status {}`)",
                self.name(),
                self.name()
            )));
        };
        let ttl = self.cfg.start_timeout
            + self.cfg.verify_deadline
            + 2 * self.cfg.stop_timeout
            + Duration::from_secs(60);
        let lease = self.ledger().acquire_lease(self.name(), &holder, ttl)?;
        let result = f().await;
        if let Err(e) = self.ledger().release_lease(&lease) {
            tracing::error!(service = %self.name(), error = %e, "cannot release the lease");
        }
        result
    }

    // ---- deploy -------------------------------------------------------------------

    pub async fn deploy(
        &self,
        req: DeployRequest,
        progress: Progress,
    ) -> Result<Outcome, ExecError> {
        let holder = format!(
            "`ripcord deploy {} {}` (watcher pid {})",
            self.name(),
            req.version,
            std::process::id()
        );
        // Busy comes first: the answer to "can I deploy now?" is no, whatever else.
        self.exclusive(holder, async || {
            let spec = self.plan_deploy(&req).await?;
            self.deploy_locked(req, spec, progress).await
        })
        .await
    }

    /// Checks a deploy against the ledger and pins what it runs: the argv, or for
    /// runtime docker the image id and env snapshot.
    async fn plan_deploy(&self, req: &DeployRequest) -> Result<ReleaseSpec, ExecError> {
        self.refuse_if_frozen("deploy")?;
        let existing = self.ledger().find_release(self.name(), &req.version)?;
        if let Some(r) = &existing {
            if r.status == ReleaseStatus::Bad && !req.force {
                return Err(ExecError::Refused(format!(
                    "{} {} is marked bad ({}): deploying it again needs --force --reason TEXT",
                    self.name(),
                    r.version,
                    r.status_reason.as_deref().unwrap_or("no reason recorded")
                )));
            }
            if r.status == ReleaseStatus::Active {
                return Err(ExecError::Failed(format!(
                    "{} {} is already active: deploy a new version, or roll back with `ripcord rollback {}`",
                    self.name(),
                    r.version,
                    self.name()
                )));
            }
        }
        if req.force && req.reason.is_none() {
            return Err(ExecError::Usage(
                "--force needs --reason TEXT: the ledger keeps why".into(),
            ));
        }
        if self.cfg.runtime == Runtime::External {
            // Someone else runs the release; the ledger keeps what it was told.
            return Ok(ReleaseSpec {
                argv: req.argv.clone().unwrap_or_default(),
                cwd: req.cwd.clone(),
                image: None,
            });
        }
        if matches!(self.cfg.runtime, Runtime::Docker | Runtime::Swarm) {
            if req.argv.is_some() {
                return Err(ExecError::Usage(
                    "runtime docker deploys images: pass --image REF (or set `image`), not an argv; \
                     a different command goes in [service.NAME.docker] command"
                        .into(),
                ));
            }
            let image = self.pin_image(&req.version, req.image.as_deref()).await?;
            return Ok(ReleaseSpec {
                argv: Vec::new(),
                cwd: None,
                image: Some(image),
            });
        }
        if req.image.is_some() {
            return Err(ExecError::Usage(format!(
                "--image needs runtime = \"docker\"; {} runs {}",
                self.name(),
                match self.cfg.runtime {
                    Runtime::Process => "processes",
                    _ => "elsewhere",
                }
            )));
        }
        let argv = req
            .argv
            .clone()
            .or_else(|| existing.as_ref().map(|r| r.spec.argv.clone()))
            .or_else(|| self.cfg.command.clone())
            .ok_or_else(|| {
                ExecError::Usage(format!(
                    "no command for {} {}: pass it after `--` (ripcord deploy {} {} -- PROGRAM ARGS...) \
                     or set `command` in [service.{}]",
                    self.name(),
                    req.version,
                    self.name(),
                    req.version,
                    self.name()
                ))
            })?;
        Ok(ReleaseSpec {
            argv,
            cwd: req.cwd.clone(),
            image: None,
        })
    }

    async fn deploy_locked(
        &self,
        req: DeployRequest,
        spec: ReleaseSpec,
        progress: Progress,
    ) -> Result<Outcome, ExecError> {
        let start = Instant::now();
        // Refused before anything is read or recorded: no release, no backup and no
        // operation is left behind.
        let active_slot = self.router.target().map(|t| t.slot);
        let slot = req
            .slot
            .unwrap_or_else(|| active_slot.map_or(Slot::Blue, Slot::other));
        if !self.one_address() && Some(slot) == active_slot {
            return Err(ExecError::Usage(format!(
                "slot {slot} serves traffic now; deploy to the other slot ({})",
                slot.other()
            )));
        }
        let snapshot = redacted_snapshot(&self.cfg);
        // Today's schema head, before anything runs: what this release ships beyond the
        // active one's head is judged (and backed up for) before it starts.
        let head = self.read_migration_head(&progress).await;
        let active = self.ledger().active_release(self.name())?;
        self.deploy_migration_checks(
            active.as_ref(),
            head.as_deref(),
            &req.version,
            req.force,
            &progress,
        )
        .await?;
        let (release, from, op) = {
            let mut ledger = self.ledger();
            let release = ledger.record_release(self.name(), &req.version, &spec, &snapshot)?;
            if let Some(head) = &head {
                ledger.set_migration_head(release.id, head)?;
            }
            let release = ledger.release(release.id)?;
            let from = ledger.active_release(self.name())?;
            let op = ledger.begin_operation(
                self.name(),
                OperationKind::Deploy,
                from.as_ref().map(|r| r.id),
                Some(release.id),
                req.reason.as_deref(),
            )?;
            (release, from, op)
        };
        if self.one_address() {
            say(
                &progress,
                format!(
                    "deploying {} {} (image replace on {})",
                    self.name(),
                    release.version,
                    self.cfg.slots.blue
                ),
            );
            let result = self
                .deploy_steps(
                    op,
                    &release,
                    from.as_ref(),
                    replace::REPLACE_SLOT,
                    start,
                    &progress,
                )
                .await;
            return self.finish(op, result);
        }
        say(
            &progress,
            format!(
                "deploying {} {} to slot {slot}",
                self.name(),
                release.version
            ),
        );
        let result = self
            .deploy_steps(op, &release, from.as_ref(), slot, start, &progress)
            .await;
        self.finish(op, result)
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

    async fn deploy_steps(
        &self,
        op: i64,
        release: &Release,
        from: Option<&Release>,
        slot: Slot,
        start: Instant,
        progress: &Progress,
    ) -> Result<Outcome, ExecError> {
        if self.one_address() {
            return self
                .replace_steps(op, release, from, None, start, progress)
                .await;
        }
        self.start_healthy(op, release, slot, progress)
            .await
            .inspect_err(|e| {
                if let Err(le) = self.ledger().mark_bad(release.id, &e.to_string()) {
                    tracing::error!(error = %le, "cannot mark the release bad");
                }
            })?;
        self.record_head_after_start(release, progress).await;
        let old = match self.switch_to(op, release, slot).await {
            Ok(old) => old,
            Err(e) => {
                // The router kept traffic where it was; the new release never served.
                self.stop_slot(slot, Some(op)).await;
                return Err(e);
            }
        };
        let switched_at_ms = now_ms();
        self.ledger().promote(self.name(), release.id)?;
        let switch_ms = start.elapsed().as_millis() as u64;
        say(
            progress,
            format!(
                "traffic is on {} (slot {slot}) after {switch_ms} ms",
                release.version
            ),
        );
        // The previous release stays warm for the bake period: a rollback is a switch.
        if let Some(old) = &old {
            self.keep_warm(old.slot, self.cfg.bake)?;
        }
        let report = self.verify_serving(op, release, progress).await?;
        if !report.ok {
            return Err(self
                .verify_failed_after_deploy(release, from, old, report)
                .await);
        }
        Ok(Outcome {
            service: self.name().to_string(),
            operation: op,
            kind: "deploy",
            active: release_ref(release, Some(slot)),
            from: from.map(|f| release_ref(f, old.as_ref().map(|o| o.slot))),
            warm: None,
            switch_ms,
            switched_at_ms,
            verified_at_ms: now_ms(),
            total_ms: start.elapsed().as_millis() as u64,
            downtime_ms: None,
            verify: report,
        })
    }

    /// A deploy whose verification failed goes back to the release before it, when that
    /// one is still warm; the new release is marked bad either way.
    async fn verify_failed_after_deploy(
        &self,
        release: &Release,
        from: Option<&Release>,
        old: Option<Arc<Target>>,
        report: VerifyReport,
    ) -> ExecError {
        let reason = format!(
            "verification failed: {}",
            report
                .failures()
                .iter()
                .map(|c| format!("{} ({})", c.name, c.detail))
                .collect::<Vec<_>>()
                .join("; ")
        );
        let back = match (from, old) {
            (Some(from), Some(old)) if self.slot_alive(old.slot, from.id) => {
                if let Err(e) = self.router.switch((*old).clone()).await {
                    let _ = self.ledger().mark_bad(release.id, &reason);
                    return ExecError::Failed(format!(
                        "{} {}: {reason}; switching back to {} failed too: {e}",
                        self.name(),
                        release.version,
                        from.version
                    ));
                }
                let new_slot = old.slot.other();
                let result =
                    self.ledger()
                        .rolled_back(self.name(), Some(release.id), from.id, &reason);
                if let Err(e) = result {
                    return e.into();
                }
                self.clear_warm(old.slot);
                // Requests in flight on the new release finish there: it is stopped
                // after the drain, as a rollback's previous release is.
                if let Err(e) = self.keep_warm(new_slot, ROLLBACK_DRAIN) {
                    return e.into();
                }
                format!("; traffic is back on {}", from.version)
            }
            _ => {
                let _ = self.ledger().mark_bad(release.id, &reason);
                "; there is no warm previous release to go back to, so it keeps serving".to_string()
            }
        };
        ExecError::VerifyFailed {
            message: format!("{} {}: {reason}{back}", self.name(), release.version),
            report,
        }
    }

    // ---- rollback -----------------------------------------------------------------

    pub async fn rollback(
        &self,
        req: RollbackRequest,
        progress: Progress,
    ) -> Result<Outcome, ExecError> {
        let holder = format!(
            "`ripcord rollback {}` (watcher pid {})",
            self.name(),
            std::process::id()
        );
        let reason = req
            .reason
            .clone()
            .unwrap_or_else(|| "manual rollback".to_string());
        self.exclusive(holder, async || {
            let (target, active) = self.plan_rollback(&req, &progress)?;
            self.rollback_locked(target, active, reason, progress).await
        })
        .await
    }

    /// Finds the release a rollback goes to, and the one it leaves.
    fn plan_rollback(
        &self,
        req: &RollbackRequest,
        progress: &Progress,
    ) -> Result<(Release, Option<Release>), ExecError> {
        self.refuse_if_frozen("roll back")?;
        let (target, active) = {
            let ledger = self.ledger();
            let active = ledger.active_release(self.name())?;
            let target = match &req.to {
                Some(to) => find_release(&ledger, self.name(), to)?,
                None => ledger.previous_good(self.name())?.ok_or_else(|| {
                    ExecError::Failed(format!(
                        "no previous release of {} to roll back to: the ledger has no release that served before {}",
                        self.name(),
                        active.as_ref().map_or("now".to_string(), |a| a.version.clone())
                    ))
                })?,
            };
            (target, active)
        };
        if target.status == ReleaseStatus::Bad {
            return Err(ExecError::Refused(format!(
                "{} {} is marked bad ({}): ripcord does not roll back to a bad release",
                self.name(),
                target.version,
                target
                    .status_reason
                    .as_deref()
                    .unwrap_or("no reason recorded")
            )));
        }
        if active.as_ref().is_some_and(|a| a.id == target.id) {
            return Err(ExecError::Failed(format!(
                "{} {} is already active",
                self.name(),
                target.version
            )));
        }
        self.check_migrations(req, &target, active.as_ref(), progress)?;
        Ok((target, active))
    }

    async fn rollback_locked(
        &self,
        target: Release,
        from: Option<Release>,
        reason: String,
        progress: Progress,
    ) -> Result<Outcome, ExecError> {
        let start = Instant::now();
        let op = self.ledger().begin_operation(
            self.name(),
            OperationKind::Rollback,
            from.as_ref().map(|r| r.id),
            Some(target.id),
            Some(&reason),
        )?;
        let result = self
            .rollback_steps(op, &target, from.as_ref(), &reason, start, &progress)
            .await;
        self.finish(op, result)
    }

    async fn rollback_steps(
        &self,
        op: i64,
        target: &Release,
        from: Option<&Release>,
        reason: &str,
        start: Instant,
        progress: &Progress,
    ) -> Result<Outcome, ExecError> {
        if self.one_address() {
            return self
                .replace_steps(op, target, from, Some(reason), start, progress)
                .await;
        }
        let warm_slot = self
            .slots()
            .iter()
            .find(|(_, sp)| sp.release.id == target.id && sp.running())
            .map(|(slot, _)| *slot);
        let warm = match warm_slot {
            Some(slot) => self.probe(slot).await.is_ok(),
            None => false,
        };
        let slot = match (warm, warm_slot) {
            (true, Some(slot)) => {
                say(
                    progress,
                    format!(
                        "{} is warm in slot {slot}: switching traffic",
                        target.version
                    ),
                );
                slot
            }
            _ => {
                let slot = self.router.target().map_or(Slot::Blue, |t| t.slot.other());
                say(
                    progress,
                    format!(
                        "{} is not running: starting it in slot {slot}",
                        target.version
                    ),
                );
                self.start_healthy(op, target, slot, progress).await?;
                slot
            }
        };
        let old = self.switch_to(op, target, slot).await?;
        let switched_at_ms = now_ms();
        self.ledger()
            .rolled_back(self.name(), from.map(|f| f.id), target.id, reason)?;
        let switch_ms = start.elapsed().as_millis() as u64;
        self.clear_warm(slot);
        say(
            progress,
            format!(
                "traffic is on {} (slot {slot}) after {switch_ms} ms",
                target.version
            ),
        );
        // The release rolled away from finishes what it has in flight, then stops.
        if let Some(old) = &old {
            self.keep_warm(old.slot, ROLLBACK_DRAIN)?;
        }
        let report = self.verify_serving(op, target, progress).await?;
        if !report.ok {
            return Err(ExecError::VerifyFailed {
                message: format!(
                    "{} rolled back to {}, but verification failed",
                    self.name(),
                    target.version
                ),
                report,
            });
        }
        Ok(Outcome {
            service: self.name().to_string(),
            operation: op,
            kind: "rollback",
            active: release_ref(target, Some(slot)),
            from: from.map(|f| release_ref(f, old.as_ref().map(|o| o.slot))),
            warm: Some(warm),
            switch_ms,
            switched_at_ms,
            verified_at_ms: now_ms(),
            total_ms: start.elapsed().as_millis() as u64,
            downtime_ms: None,
            verify: report,
        })
    }

    /// Router `none`: a deploy (`rollback_reason` None) or a rollback replaces the one
    /// container. A deploy whose verification fails is replaced back by the release
    /// before it.
    async fn replace_steps(
        &self,
        op: i64,
        release: &Release,
        from: Option<&Release>,
        rollback_reason: Option<&str>,
        start: Instant,
        progress: &Progress,
    ) -> Result<Outcome, ExecError> {
        let slot = replace::REPLACE_SLOT;
        let suffix = if rollback_reason.is_some() {
            "rollback"
        } else {
            "next"
        };
        let replaced = self
            .put_in_place(op, release, suffix, progress)
            .await
            .inspect_err(|e| {
                if rollback_reason.is_none()
                    && let Err(le) = self.ledger().mark_bad(release.id, &e.to_string())
                {
                    tracing::error!(error = %le, "cannot mark the release bad");
                }
            })?;
        if rollback_reason.is_none() {
            self.record_head_after_start(release, progress).await;
        }
        self.switch_to(op, release, slot).await?;
        let switched_at_ms = now_ms();
        match rollback_reason {
            Some(reason) => {
                self.ledger()
                    .rolled_back(self.name(), from.map(|f| f.id), release.id, reason)?;
            }
            None => self.ledger().promote(self.name(), release.id)?,
        }
        let switch_ms = start.elapsed().as_millis() as u64;
        let report = self.verify_serving(op, release, progress).await?;
        if !report.ok {
            let reason = format!(
                "verification failed: {}",
                report
                    .failures()
                    .iter()
                    .map(|c| format!("{} ({})", c.name, c.detail))
                    .collect::<Vec<_>>()
                    .join("; ")
            );
            let back = match (rollback_reason, from) {
                (None, Some(from)) => {
                    match self.put_in_place(op, from, "rollback", progress).await {
                        Ok(_) => {
                            self.switch_to(op, from, slot).await?;
                            self.ledger().rolled_back(
                                self.name(),
                                Some(release.id),
                                from.id,
                                &reason,
                            )?;
                            format!("; {} runs again", from.version)
                        }
                        Err(e) => {
                            self.ledger().mark_bad(release.id, &reason)?;
                            format!("; putting {} back failed too: {e}", from.version)
                        }
                    }
                }
                (None, None) => {
                    self.ledger().mark_bad(release.id, &reason)?;
                    "; there is no earlier release to put back, so it keeps running".to_string()
                }
                (Some(_), _) => String::new(),
            };
            return Err(ExecError::VerifyFailed {
                message: format!("{} {}: {reason}{back}", self.name(), release.version),
                report,
            });
        }
        Ok(Outcome {
            service: self.name().to_string(),
            operation: op,
            kind: if rollback_reason.is_some() {
                "rollback"
            } else {
                "deploy"
            },
            active: release_ref(release, Some(slot)),
            from: from.map(|f| release_ref(f, Some(slot))),
            warm: rollback_reason.map(|_| false),
            switch_ms,
            switched_at_ms,
            verified_at_ms: now_ms(),
            total_ms: start.elapsed().as_millis() as u64,
            downtime_ms: replaced,
            verify: report,
        })
    }

    /// Router `none` and runtime `swarm` have one address: a release is put in place
    /// there rather than started beside the other.
    fn one_address(&self) -> bool {
        self.cfg.router == crate::config::Router::None || self.cfg.runtime == Runtime::Swarm
    }

    /// Puts `release` in place at the one address: a swarm service update, or a
    /// container replace (which returns how long nothing answered).
    async fn put_in_place(
        &self,
        op: i64,
        release: &Release,
        suffix: &str,
        progress: &Progress,
    ) -> Result<Option<u64>, ExecError> {
        if self.cfg.runtime == Runtime::Swarm {
            self.swarm_apply(op, release, suffix == "rollback", progress)
                .await?;
            return Ok(None);
        }
        let r = self.replace_with(op, release, suffix, progress).await?;
        Ok(Some(r.downtime_ms))
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

    /// Runs the configured checks against `release`, once the router's switch has surely
    /// taken effect; the step and the outcome go to the ledger and the progress.
    async fn verify_serving(
        &self,
        op: i64,
        release: &Release,
        progress: &Progress,
    ) -> Result<VerifyReport, ExecError> {
        self.router.settle().await;
        self.ledger()
            .step(op, "verifying", format!("verifying {}", release.version))?;
        let report =
            verify::run(&self.cfg.verify, self.cfg.verify_deadline, &release.version).await;
        say(
            progress,
            format!("verification:\n{}", report.render().trim_end()),
        );
        Ok(report)
    }

    // ---- steps shared by deploy and rollback --------------------------------------

    /// Starts `release` in `slot` (stopping whatever was there) and waits until it is
    /// healthy. On failure the new process is stopped and the error carries its last
    /// log lines.
    async fn start_healthy(
        &self,
        op: i64,
        release: &Release,
        slot: Slot,
        progress: &Progress,
    ) -> Result<(), ExecError> {
        if self.slots().contains_key(&slot) {
            self.ledger().step(
                op,
                "freeing_slot",
                format!("stopping what runs in slot {slot} to make room"),
            )?;
            self.stop_slot(slot, Some(op)).await;
        }
        let addr = self.cfg.slots.addr(slot);
        if self.cfg.runtime == Runtime::External {
            return self.adopt_external(op, release, slot, progress).await;
        }
        if self.cfg.runtime == Runtime::Docker {
            return self.start_container(op, release, slot, progress).await;
        }
        if let Err(e) = std::net::TcpListener::bind(addr) {
            return Err(ExecError::Failed(format!(
                "slot {slot} ({addr}) is not free: {e}; another program holds the port, stop it \
                 or change `slots` in the config"
            )));
        }
        self.ledger().step(
            op,
            "starting",
            format!("starting {} in slot {slot} ({addr})", release.version),
        )?;
        let log_path = self.log_path(release, slot);
        let spec = StartSpec {
            service: self.name().to_string(),
            release_id: release.id,
            version: release.version.clone(),
            slot,
            addr,
            argv: release.spec.argv.clone(),
            cwd: release.spec.cwd.clone(),
            env: self.cfg.env.clone(),
            log_path: log_path.clone(),
        };
        let proc = Arc::new(process::start(&spec).map_err(|e| ExecError::Failed(e.to_string()))?);
        self.set_slot(
            slot,
            Some(SlotProc {
                release: release.clone(),
                proc: Some(proc.clone()),
                container: None,
                warm_until_ms: None,
            }),
        )?;
        self.ledger().step(
            op,
            "health_wait",
            format!(
                "waiting up to {}s for {} to answer {}",
                crate::config::duration::secs_text(self.cfg.start_timeout),
                release.version,
                self.cfg.health_url(slot)
            ),
        )?;
        say(
            progress,
            format!("waiting for {} to become healthy", release.version),
        );
        let deadline = Instant::now() + self.cfg.start_timeout;
        let t0 = Instant::now();
        match self.wait_healthy(slot, Some(&proc), None, deadline).await {
            Ok(()) => {
                self.event(
                    Some(release.id),
                    Some(op),
                    "healthy",
                    format!(
                        "{} is healthy in slot {slot} after {} ms",
                        release.version,
                        t0.elapsed().as_millis()
                    ),
                );
                Ok(())
            }
            Err(why) => {
                self.stop_slot(slot, Some(op)).await;
                let tail = process::tail_lines(&log_path, 10);
                let mut msg = format!(
                    "{} {} never became healthy, so it got no traffic: {why}",
                    self.name(),
                    release.version
                );
                if tail.is_empty() {
                    msg.push_str(&format!("\n(its log {} is empty)", log_path.display()));
                } else {
                    msg.push_str(&format!("\nlast lines of {}:", log_path.display()));
                    for line in tail {
                        msg.push_str(&format!("\n  | {line}"));
                    }
                }
                Err(ExecError::Failed(msg))
            }
        }
    }

    /// Runtime `external`: the release already runs in `slot` (someone else started
    /// it); ripcord only health-gates it and records it there.
    async fn adopt_external(
        &self,
        op: i64,
        release: &Release,
        slot: Slot,
        progress: &Progress,
    ) -> Result<(), ExecError> {
        self.ledger().step(
            op,
            "health_wait",
            format!(
                "waiting up to {}s for {} in slot {slot} (run by someone else) to answer {}",
                crate::config::duration::secs_text(self.cfg.start_timeout),
                release.version,
                self.cfg.health_url(slot)
            ),
        )?;
        say(
            progress,
            format!(
                "checking {} in slot {slot} (runtime external)",
                release.version
            ),
        );
        let deadline = Instant::now() + self.cfg.start_timeout;
        self.wait_healthy(slot, None, None, deadline)
            .await
            .map_err(|why| {
                ExecError::Failed(format!(
                    "{} {} in slot {slot} ({}) is not healthy, so it gets no traffic: {why}; \
                     runtime \"external\" starts nothing: start it there first",
                    self.name(),
                    release.version,
                    self.cfg.slots.addr(slot)
                ))
            })?;
        self.set_slot(
            slot,
            Some(SlotProc {
                release: release.clone(),
                proc: None,
                container: None,
                warm_until_ms: None,
            }),
        )?;
        self.event(
            Some(release.id),
            Some(op),
            "healthy",
            format!("{} is healthy in slot {slot}", release.version),
        );
        Ok(())
    }

    async fn wait_healthy(
        &self,
        slot: Slot,
        proc: Option<&RunningProcess>,
        container: Option<&container::ContainerHandle>,
        deadline: Instant,
    ) -> Result<(), String> {
        self.wait_healthy_at(&self.cfg.health_url(slot), proc, container, deadline)
            .await
    }

    /// Probes `url` until it answers 2xx, the release exits, or the deadline passes.
    async fn wait_healthy_at(
        &self,
        url: &str,
        proc: Option<&RunningProcess>,
        container: Option<&container::ContainerHandle>,
        deadline: Instant,
    ) -> Result<(), String> {
        let exited = async || match (proc, container) {
            (Some(p), _) => p.exited().map(|s| s.to_string()),
            (None, Some(c)) => self.container_ended(c).await,
            (None, None) => None,
        };
        loop {
            if let Some(status) = exited().await {
                return Err(format!("it exited ({status}) before it became healthy"));
            }
            match self.probe_url(url).await {
                Ok(()) => {
                    // A foreign listener could answer on a port we failed to bind:
                    // healthy only counts while our process is alive.
                    if let Some(status) = exited().await {
                        return Err(format!("it exited ({status}) before it became healthy"));
                    }
                    return Ok(());
                }
                Err(last) if Instant::now() >= deadline => {
                    return Err(format!(
                        "not healthy after {}s; last probe: {last}",
                        crate::config::duration::secs_text(self.cfg.start_timeout)
                    ));
                }
                Err(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// One health probe of a slot.
    pub async fn probe(&self, slot: Slot) -> Result<(), String> {
        self.probe_url(&self.cfg.health_url(slot)).await
    }

    async fn probe_url(&self, url: &str) -> Result<(), String> {
        match self.http.get(url, Duration::from_secs(1)).await {
            Ok(r) if (200..300).contains(&r.status) => Ok(()),
            Ok(r) => Err(format!("{url} answered {}", r.status)),
            Err(e) => Err(format!("{url}: {e}")),
        }
    }

    /// Points the router at `release` in `slot`; returns the target it replaced. A
    /// router that refuses (nginx -t fails) leaves traffic where it was.
    async fn switch_to(
        &self,
        op: i64,
        release: &Release,
        slot: Slot,
    ) -> Result<Option<Arc<Target>>, ExecError> {
        self.ledger().step(
            op,
            "switching",
            format!("switching traffic to {} in slot {slot}", release.version),
        )?;
        let old = self
            .router
            .switch(Target {
                slot,
                addr: self.cfg.slots.addr(slot),
                release_id: release.id,
                version: release.version.clone(),
            })
            .await
            .map_err(|e| {
                ExecError::Failed(format!(
                    "{}: traffic could not be switched to {} in slot {slot}, so it stays where it was: {e}",
                    self.name(),
                    release.version
                ))
            })?;
        self.event(
            Some(release.id),
            Some(op),
            "traffic_switched",
            format!(
                "traffic switched to {} in slot {slot}{}",
                release.version,
                old.as_ref()
                    .map(|o| format!(" (from {} in slot {})", o.version, o.slot))
                    .unwrap_or_default()
            ),
        );
        Ok(old.filter(|o| o.slot != slot))
    }

    fn keep_warm(&self, slot: Slot, how_long: Duration) -> Result<(), LedgerError> {
        let Some(mut sp) = self.slots().remove(&slot) else {
            return Ok(());
        };
        sp.warm_until_ms = Some(now_ms() + how_long.as_millis() as i64);
        self.set_slot(slot, Some(sp))
    }

    fn clear_warm(&self, slot: Slot) {
        if let Some(mut sp) = self.slots().remove(&slot) {
            sp.warm_until_ms = None;
            let _ = self.set_slot(slot, Some(sp));
        }
    }

    fn slot_alive(&self, slot: Slot, release: i64) -> bool {
        self.slots()
            .get(&slot)
            .is_some_and(|sp| sp.release.id == release && sp.running())
    }

    /// Stops what runs in `slot` and forgets it.
    async fn stop_slot(&self, slot: Slot, op: Option<i64>) {
        let Some(sp) = self.slots().remove(&slot) else {
            return;
        };
        let outcome = match (&sp.proc, &sp.container) {
            (Some(proc), _) => proc.stop(self.cfg.stop_timeout).await,
            (None, Some(c)) => self.stop_container(c).await,
            // Someone else runs it: ripcord only stops routing to it.
            (None, None) => process::StopOutcome::NotOurs,
        };
        if let Err(e) = self.set_slot(slot, None) {
            tracing::error!(error = %e, "cannot clear the slot in the ledger");
        }
        let how = match outcome {
            process::StopOutcome::AlreadyExited => "had already exited",
            process::StopOutcome::Terminated => "stopped",
            process::StopOutcome::Killed => "killed after the stop timeout",
            process::StopOutcome::NotOurs => "left running (runtime external)",
        };
        self.event(
            Some(sp.release.id),
            op,
            "release_stopped",
            format!("{} in slot {slot} {how}", sp.release.version),
        );
    }

    fn log_path(&self, release: &Release, slot: Slot) -> PathBuf {
        self.state_dir
            .join("logs")
            .join(self.name())
            .join(format!("{}-{slot}.log", sanitize(&release.version)))
    }

    // ---- the watcher's housekeeping -----------------------------------------------

    /// Stops warm releases whose bake (or drain) time is over. Skipped while an
    /// operation runs: it will decide what to keep.
    ///
    /// The bake ends on evidence, not only on its timer: while `hold` says why the
    /// active release is not yet cleared by its guard, a warm release that is still a
    /// good rollback target stays warm (a release marked bad, draining after a
    /// rollback, is stopped all the same). The hold is recorded once, as an event.
    pub async fn bake_tick(&self, hold: Option<String>) {
        let Ok(_guard) = self.op.try_lock() else {
            return;
        };
        let now = now_ms();
        let active = self.router.target().map(|t| t.slot);
        let warm: Vec<(Slot, SlotProc)> = self
            .slots()
            .into_iter()
            .filter(|(slot, _)| Some(*slot) != active)
            .collect();
        // A release found to be a good rollback target when first held stays one while it
        // stays warm (only an active release is marked bad), so the ledger is read once
        // per held release, not on every tick. One that is no longer warm (it became
        // active again, or stopped) is forgotten, and judged afresh next time.
        // The lock is never held across an await (the stops below).
        let expired = {
            let mut held = self.bake_held.lock().unwrap_or_else(|p| p.into_inner());
            held.retain(|id| warm.iter().any(|(_, sp)| sp.release.id == *id));
            let mut expired: Vec<(Slot, SlotProc)> = warm
                .into_iter()
                .filter(|(_, sp)| sp.warm_until_ms.is_some_and(|t| t <= now))
                .collect();
            if let Some(why) = hold {
                expired.retain(|(_, sp)| {
                    let r = &sp.release;
                    if held.contains(&r.id) {
                        return false;
                    }
                    let bad = self
                        .ledger()
                        .release(r.id)
                        .is_ok_and(|r| r.status == ReleaseStatus::Bad);
                    if !bad {
                        held.insert(r.id);
                        self.event(
                            Some(r.id),
                            None,
                            "bake_extended",
                            format!(
                                "{} stays warm past its bake: the active release is not cleared yet ({why})",
                                r.version
                            ),
                        );
                    }
                    bad
                });
            }
            expired
        };
        for (slot, sp) in expired {
            self.event(
                Some(sp.release.id),
                None,
                "bake_ended",
                format!(
                    "{} in slot {slot} is no longer kept warm: stopping it",
                    sp.release.version
                ),
            );
            self.stop_slot(slot, None).await;
        }
    }

    /// After a watcher (re)start: kill what an earlier watcher left running, then bring
    /// the active release back up in its slot and point the proxy at it.
    pub async fn reconcile(&self) -> Result<Option<Release>, ExecError> {
        let holder = format!("watcher reconcile (pid {})", std::process::id());
        self.exclusive(holder, async || {
            let active = self.ledger().active_release(self.name())?;
            let (active_slot, adopted) = if self.cfg.runtime == Runtime::Swarm {
                // The swarm keeps the service running without us: adopt it when it
                // answers, else put the active release in place again.
                let ok = self.probe(replace::REPLACE_SLOT).await.is_ok();
                (Some(replace::REPLACE_SLOT), ok)
            } else if self.cfg.runtime == Runtime::Docker {
                self.adopt_containers(active.as_ref()).await?
            } else {
                (self.stop_orphans(active.as_ref()).await?, false)
            };
            let Some(active) = active else {
                return Ok(None);
            };
            let slot = active_slot.unwrap_or(Slot::Blue);
            let why = if adopted {
                "watcher restart: route to the active release's running container"
            } else {
                "watcher restart: bring the active release back up"
            };
            let op = self.ledger().begin_operation(
                self.name(),
                OperationKind::Deploy,
                Some(active.id),
                Some(active.id),
                Some(why),
            )?;
            // A failed switch is recorded as a failed operation too, not left open.
            let result = async {
                if !adopted && self.one_address() {
                    self.put_in_place(op, &active, "next", &None).await?;
                } else if !adopted {
                    self.start_healthy(op, &active, slot, &None).await?;
                }
                self.switch_to(op, &active, slot).await?;
                Ok(Some(active.clone()))
            }
            .await;
            self.finish(op, result)
        })
        .await
    }

    /// Kills what an earlier watcher's processes left running; returns the slot the
    /// active release was in.
    async fn stop_orphans(&self, active: Option<&Release>) -> Result<Option<Slot>, ExecError> {
        let records = self.ledger().slots(self.name())?;
        let mut active_slot = None;
        for rec in records {
            if rec.release_id.is_some() && rec.release_id == active.map(|a| a.id) {
                active_slot = Some(rec.slot);
            }
            if let Some(pid) = rec.pid {
                let start = rec.pid_start;
                let killed = tokio::task::spawn_blocking(move || process::kill_orphan(pid, start))
                    .await
                    .unwrap_or(false);
                if killed {
                    self.event(
                        rec.release_id,
                        None,
                        "orphan_stopped",
                        format!(
                            "stopped pid {pid} in slot {} left by an earlier watcher",
                            rec.slot
                        ),
                    );
                }
            }
            self.ledger().clear_slot(self.name(), rec.slot)?;
        }
        Ok(active_slot)
    }

    /// Kills a release that exceeds the service's memory limit (the guard's watchdog):
    /// counted as an OOM kill.
    pub fn kill_for_memory(&self, slot: Slot, release: i64) {
        let Some(sp) = self.slots().remove(&slot) else {
            return;
        };
        let Some(proc) = &sp.proc else {
            return;
        };
        if sp.release.id != release || proc.oom_killed() {
            return;
        }
        proc.kill_for_memory();
        self.event(
            Some(release),
            None,
            "oom_killed",
            format!(
                "{} in slot {slot} exceeded memory_limit_mb = {}: killed",
                sp.release.version,
                self.cfg.memory_limit_mb.unwrap_or(0)
            ),
        );
    }

    /// Stops every release of this service (watcher shutdown). Containers keep running:
    /// they do not need the watcher, and the next one adopts them.
    pub async fn stop_all(&self) {
        if matches!(self.cfg.runtime, Runtime::Docker | Runtime::Swarm) {
            return;
        }
        let slots: Vec<Slot> = self.slots().into_keys().collect();
        for slot in slots {
            self.stop_slot(slot, None).await;
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

/// The service's config as the ledger keeps it with a release, with what may be secret
/// taken out, since `releases --json` prints the snapshot: `env` values and webhook URLs
/// become a digest (a change still shows, the value never does), and any other URL
/// loses its user, password and query.
fn redacted_snapshot(cfg: &crate::config::ServiceConfig) -> serde_json::Value {
    let mut snapshot = serde_json::to_value(cfg).unwrap_or_default();
    if let Some(env) = snapshot.get_mut("env").and_then(|e| e.as_object_mut()) {
        for value in env.values_mut() {
            *value = digest_of(value);
        }
    }
    if let Some(hooks) = snapshot.get_mut("webhooks").and_then(|e| e.as_array_mut()) {
        for value in hooks.iter_mut() {
            *value = digest_of(value);
        }
    }
    strip_url_secrets(&mut snapshot);
    snapshot
}

fn digest_of(value: &serde_json::Value) -> serde_json::Value {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(value.as_str().unwrap_or_default().as_bytes());
    let short: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
    serde_json::Value::String(format!("<redacted sha256:{short}>"))
}

/// Every `http(s)://user:password@host/path?query` in the value loses its user,
/// password and query.
fn strip_url_secrets(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::String(s) if s.starts_with("http://") || s.starts_with("https://") => {
            let (scheme, rest) = s.split_once("://").unwrap_or_default();
            let (authority, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            let user = if authority.contains('@') {
                "<redacted>@"
            } else {
                ""
            };
            let path = tail
                .split_once('?')
                .map_or(tail.to_string(), |(p, _)| format!("{p}?<redacted>"));
            *s = format!("{scheme}://{user}{host}{path}");
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(strip_url_secrets),
        serde_json::Value::Object(map) => map.values_mut().for_each(strip_url_secrets),
        _ => {}
    }
}

#[cfg(test)]
mod snapshot_tests {
    #[test]
    fn secrets_never_reach_the_ledger_snapshot() {
        let cfg = crate::config::Config::parse(
            "[service.web]\nlisten = \"127.0.0.1:18080\"\nslots = { blue = 18081, green = 18082 }\n\
             command = [\"app\", \"{port}\"]\n\
             [[service.web.verify]]\nname = \"api\"\nhttp = \"http://user:s3cret-pw@127.0.0.1:18080/api?token=s3cret-q\"\n\
             [service.web.notify]\nwebhooks = [\"http://127.0.0.1:9000/hooks/T0/s3cret-hook\"]\n\
             [service.web.env]\nAPI_TOKEN = \"s3cret-value\"\n",
            std::path::Path::new("ripcord.toml"),
        )
        .unwrap();
        let snap = super::redacted_snapshot(&cfg.services["web"]);
        let text = snap.to_string();
        assert!(!text.contains("s3cret"), "{text}");
        assert!(
            text.contains("http://<redacted>@127.0.0.1:18080/api?<redacted>"),
            "{text}"
        );
        assert!(
            snap["env"]["API_TOKEN"]
                .as_str()
                .unwrap()
                .starts_with("<redacted sha256:"),
            "{text}"
        );
    }
}
