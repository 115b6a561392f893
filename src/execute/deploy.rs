//! A deploy: checked against the ledger (frozen, bad, already active, the migration
//! guard), its release pinned and recorded, started in the idle slot, switched to and
//! verified; a failed verification goes back to the warm previous release.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use super::snapshot::redacted_snapshot;
use super::{
    DeployRequest, ExecError, Outcome, Progress, ROLLBACK_DRAIN, ServiceExec, release_ref, say,
};
use super::{envfile, replace};
use crate::clock::now_ms;
use crate::config::{Runtime, Slot};
use crate::ledger::{OperationKind, Release, ReleaseSpec, ReleaseStatus};
use crate::proxy::Target;
use crate::verify::VerifyReport;

impl ServiceExec {
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
            let spec = self.plan_deploy(&req, &progress).await?;
            self.deploy_locked(req, spec, progress).await
        })
        .await
    }

    /// Checks a deploy against the ledger and pins what it runs: the argv, or for
    /// runtime docker the image id and env snapshot.
    async fn plan_deploy(
        &self,
        req: &DeployRequest,
        progress: &Progress,
    ) -> Result<ReleaseSpec, ExecError> {
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
                ..Default::default()
            });
        }
        if self.cfg.runtime == Runtime::Kubernetes {
            if req.argv.is_some() {
                return Err(ExecError::Usage(
                    "runtime kubernetes deploys images: pass --image REF (or set `image` in \
                     [service.NAME.kubernetes]), not an argv"
                        .into(),
                ));
            }
            self.kube_refuse_drift("deploy", req.force, req.reason.as_deref())
                .await?;
            let kubernetes = self
                .kube_snapshot(&req.version, req.image.as_deref(), progress)
                .await?;
            return Ok(ReleaseSpec {
                kubernetes: Some(kubernetes),
                ..Default::default()
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
            let image = self
                .pin_image(&req.version, req.image.as_deref(), progress)
                .await?;
            return Ok(ReleaseSpec {
                argv: Vec::new(),
                cwd: None,
                image: Some(image),
                ..Default::default()
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
        let (env_snapshot, env_keys) = self.snapshot_process_env(&req.version)?;
        let config_files = if self.cfg.config_files.is_empty() {
            None
        } else {
            let parent = self.state_dir.join("files").join(self.name());
            let prefix = super::sanitize(&req.version);
            Some(
                super::snapshot::snapshot_files(&self.cfg.config_files, &parent, &prefix)
                    .map_err(ExecError::Failed)?,
            )
        };
        Ok(ReleaseSpec {
            argv,
            cwd: req.cwd.clone(),
            image: None,
            env_snapshot: Some(env_snapshot),
            env_keys,
            config_files,
            kubernetes: None,
        })
    }

    /// Runtime process: the release's environment as it is now (`env`, with
    /// `env_file`'s variables over it) written to an owner-only snapshot named by its
    /// content, so a cold start months later runs with it rather than today's.
    fn snapshot_process_env(&self, version: &str) -> Result<(PathBuf, Vec<String>), ExecError> {
        self.snapshot_env(version, self.cfg.env_file.as_deref())
    }

    /// A release's whole environment (`env`, with `env_file`'s variables over it)
    /// written to an owner-only snapshot named by its content (a snapshot another
    /// release points at is never overwritten with other values); returns its path and
    /// the variable names. Shared by the process and Docker runtimes.
    pub(super) fn snapshot_env(
        &self,
        version: &str,
        env_file: Option<&std::path::Path>,
    ) -> Result<(PathBuf, Vec<String>), ExecError> {
        let mut vars: Vec<(String, String)> = self
            .cfg
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if let Some(path) = env_file {
            for (k, v) in envfile::read(path).map_err(|e| ExecError::Failed(e.to_string()))? {
                vars.retain(|(ek, _)| *ek != k);
                vars.push((k, v));
            }
        }
        if let Some((k, _)) = vars.iter().find(|(_, v)| v.contains('\n')) {
            return Err(ExecError::Failed(format!(
                "the env variable {k} of {} holds a line break, which an env snapshot cannot carry; \
                 put it in a file the app reads instead",
                self.name()
            )));
        }
        crate::config::redact::learn(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let dest = self.env_snapshot_path(version, &envfile::digest(&vars));
        envfile::write_snapshot(&dest, &vars).map_err(|e| ExecError::Failed(e.to_string()))?;
        Ok((dest, vars.into_iter().map(|(k, _)| k).collect()))
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
        // Nothing refused it: a Kubernetes release's config copies are made now.
        let mut spec = spec;
        if let Some(kr) = spec.kubernetes.as_mut() {
            self.kube_copy_config(kr, &progress).await?;
        }
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
}
