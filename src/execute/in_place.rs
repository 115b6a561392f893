//! The one address of router `none` and runtime `swarm`: a release is put in place
//! there (a container replace, a swarm service update) rather than started beside the
//! other, and a deploy that fails verification is put back the same way.

use std::time::Instant;

use super::replace;
use super::{ExecError, Outcome, Progress, ServiceExec, release_ref};
use crate::clock::now_ms;
use crate::config::Runtime;
use crate::ledger::Release;

impl ServiceExec {
    /// Router `none`: a deploy (`rollback_reason` None) or a rollback replaces the one
    /// container. A deploy whose verification fails is replaced back by the release
    /// before it.
    pub(super) async fn replace_steps(
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
        let replaced = match self.put_in_place(op, release, suffix, progress).await {
            Ok(r) => r,
            Err(e) if rollback_reason.is_none() => {
                if let Err(le) = self.ledger().mark_bad(release.id, &e.to_string()) {
                    tracing::error!(error = %le, "cannot mark the release bad");
                }
                return Err(self
                    .undo_failed_rollout(op, release, from, e, progress)
                    .await);
            }
            Err(e) => return Err(e),
        };
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

    /// Runtime kubernetes: a rollout that failed (its progress deadline passed, its pods
    /// never became available) leaves the Deployment half on the new template, so the
    /// release before it is applied again, with its own config, and verified by its
    /// rollout. Other runtimes put nothing in place when that fails.
    async fn undo_failed_rollout(
        &self,
        op: i64,
        release: &Release,
        from: Option<&Release>,
        error: ExecError,
        progress: &Progress,
    ) -> ExecError {
        let (Runtime::Kubernetes, Some(from), ExecError::Failed(why)) =
            (self.cfg.runtime, from, &error)
        else {
            return error;
        };
        let reason = format!("the rollout failed: {why}");
        let back = match self.put_in_place(op, from, "rollback", progress).await {
            Ok(_) => match self.switch_to(op, from, replace::REPLACE_SLOT).await {
                Ok(_) => self
                    .ledger()
                    .rolled_back(self.name(), Some(release.id), from.id, &reason)
                    .map(|_| format!("; rolled back: {} runs again", from.version))
                    .unwrap_or_else(|e| format!("; {} runs again, but: {e}", from.version)),
                Err(e) => format!("; {} was applied again, but: {e}", from.version),
            },
            Err(e) => format!("; applying {} again failed too: {e}", from.version),
        };
        ExecError::Failed(format!("{why}{back}"))
    }

    /// Router `none` and runtimes `swarm` and `kubernetes` have one address: a release is
    /// put in place there rather than started beside the other.
    pub(super) fn one_address(&self) -> bool {
        self.cfg.one_address()
    }

    /// Puts `release` in place at the one address: a swarm service update, or a
    /// container replace (which returns how long nothing answered).
    pub(super) async fn put_in_place(
        &self,
        op: i64,
        release: &Release,
        suffix: &str,
        progress: &Progress,
    ) -> Result<Option<u64>, ExecError> {
        if self.cfg.runtime == Runtime::Swarm {
            // Swarm updates stop-first, so the one address is closed for a moment: behind
            // the built-in proxy new requests wait for the new task instead.
            let _hold = self.hold_traffic().await;
            self.swarm_apply(op, release, suffix == "rollback", progress)
                .await?;
            return Ok(None);
        }
        if self.cfg.runtime == Runtime::Kubernetes {
            // A rolling update: the old pods serve until new ones are available.
            self.kube_apply(op, release, progress).await?;
            return Ok(None);
        }
        let r = self.replace_with(op, release, suffix, progress).await?;
        Ok(Some(r.downtime_ms))
    }
}

impl ServiceExec {
    /// Behind the built-in proxy: holds new requests, and waits (at most `stop_timeout`)
    /// for the ones in flight to finish on what serves now. The hold ends when the guard
    /// is dropped.
    async fn hold_traffic(&self) -> Option<crate::proxy::HoldGuard> {
        let proxy = self.router.proxy()?;
        let hold = proxy.hold();
        let deadline = Instant::now() + self.cfg.stop_timeout;
        while proxy
            .counters()
            .in_flight
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
            && Instant::now() < deadline
        {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        Some(hold)
    }
}
