//! A rollback: to the previous good release (or the one asked for), refused for a bad
//! one or across a contract migration; a switch when the target is still warm, a start
//! in the other slot when it is not, then verification.

use std::time::Instant;

use super::{
    ExecError, Outcome, Progress, ROLLBACK_DRAIN, RollbackRequest, ServiceExec, find_release,
    release_ref, say,
};
use crate::clock::now_ms;
use crate::config::Slot;
use crate::ledger::{OperationKind, Release, ReleaseStatus};

impl ServiceExec {
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
            if self.cfg.runtime == crate::config::Runtime::Kubernetes {
                self.kube_refuse_drift("roll back", req.force, req.reason.as_deref())
                    .await?;
            }
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
}
