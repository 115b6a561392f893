//! The steps deploys and rollbacks share: start a release in a slot and wait until it
//! is healthy (or adopt an external one), switch the router, verify, keep the previous
//! release warm, stop a slot.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::process::{self, RunningProcess, StartSpec};
use super::{ExecError, Progress, ServiceExec, SlotProc, container, sanitize, say};
use crate::clock::now_ms;
use crate::config::{Runtime, Slot};
use crate::ledger::{LedgerError, Release};
use crate::proxy::Target;
use crate::verify::{self, VerifyReport};

impl ServiceExec {
    /// Runs the configured checks against `release`, once the router's switch has surely
    /// taken effect; the step and the outcome go to the ledger and the progress.
    pub(super) async fn verify_serving(
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

    /// Starts `release` in `slot` (stopping whatever was there) and waits until it is
    /// healthy. On failure the new process is stopped and the error carries its last
    /// log lines.
    pub(super) async fn start_healthy(
        &self,
        op: i64,
        release: &Release,
        slot: Slot,
        progress: &Progress,
    ) -> Result<(), ExecError> {
        self.start_healthy_timed(op, release, slot, progress)
            .await
            .map(|_| ())
    }

    /// [`Self::start_healthy`], timed: `(start, health gate)` in ms. The process runtime
    /// splits the two at the spawn; runtime `external` only has a health gate; runtime
    /// `docker` counts its own health wait in the start.
    pub(super) async fn start_healthy_timed(
        &self,
        op: i64,
        release: &Release,
        slot: Slot,
        progress: &Progress,
    ) -> Result<(u64, u64), ExecError> {
        let t_start = Instant::now();
        let ms = |t: Instant| t.elapsed().as_millis() as u64;
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
            let t = Instant::now();
            self.adopt_external(op, release, slot, progress).await?;
            return Ok((ms(t_start).saturating_sub(ms(t)), ms(t)));
        }
        if self.cfg.runtime == Runtime::Docker {
            self.start_container(op, release, slot, progress).await?;
            return Ok((ms(t_start), 0));
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
            argv: self.release_argv(release),
            cwd: release.spec.cwd.clone(),
            env: self.process_env(release)?,
            log_path: log_path.clone(),
            state_dir: self.state_dir.clone(),
            memory_limit_mb: self.cfg.memory_limit_mb,
        };
        let proc = Arc::new(process::start(&spec).map_err(|e| ExecError::Failed(e.to_string()))?);
        // Started, not yet recorded in a slot: the next watcher finds it by its
        // environment (`process::strays`).
        crate::failpoint::hit("process.spawned");
        if let Some(limit) = &proc.memory_limit {
            self.event(
                Some(release.id),
                Some(op),
                "memory_limit",
                format!("{} in slot {slot}: memory limit {limit}", release.version),
            );
        }
        self.set_slot(
            slot,
            Some(SlotProc {
                release: release.clone(),
                proc: Some(proc.clone()),
                container: None,
                warm_until_ms: None,
            }),
        )?;
        let start_ms = ms(t_start);
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
                Ok((start_ms, ms(t0)))
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

    pub(super) async fn wait_healthy(
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
    pub(super) async fn wait_healthy_at(
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

    pub(super) async fn probe_url(&self, url: &str) -> Result<(), String> {
        match self.http.get(url, Duration::from_secs(1)).await {
            Ok(r) if (200..300).contains(&r.status) => Ok(()),
            Ok(r) => Err(format!("{url} answered {}", r.status)),
            Err(e) => Err(format!("{url}: {e}")),
        }
    }

    /// Points the router at `release` in `slot`; returns the target it replaced. A
    /// router that refuses (nginx -t fails) leaves traffic where it was.
    pub(super) async fn switch_to(
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

    pub(super) fn keep_warm(&self, slot: Slot, how_long: Duration) -> Result<(), LedgerError> {
        let Some(mut sp) = self.slots().remove(&slot) else {
            return Ok(());
        };
        sp.warm_until_ms = Some(now_ms() + how_long.as_millis() as i64);
        self.set_slot(slot, Some(sp))
    }

    pub(super) fn clear_warm(&self, slot: Slot) {
        if let Some(mut sp) = self.slots().remove(&slot) {
            sp.warm_until_ms = None;
            let _ = self.set_slot(slot, Some(sp));
        }
    }

    pub(super) fn slot_alive(&self, slot: Slot, release: i64) -> bool {
        self.slots()
            .get(&slot)
            .is_some_and(|sp| sp.release.id == release && sp.running())
    }

    /// Stops what runs in `slot` and forgets it.
    pub(super) async fn stop_slot(&self, slot: Slot, op: Option<i64>) {
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
            process::StopOutcome::NotOurs if self.cfg.runtime == Runtime::Kubernetes => {
                "no longer routed to (its Deployment runs it)"
            }
            process::StopOutcome::NotOurs => "left running (runtime external)",
        };
        self.event(
            Some(sp.release.id),
            op,
            "release_stopped",
            format!("{} in slot {slot} {how}", sp.release.version),
        );
    }

    /// The environment a process release runs with: its own snapshot from deploy time;
    /// today's `env` only for a release recorded before snapshots existed. With config
    /// files, `RIPCORD_CONFIG_FILES` names the directory of the release's copies.
    fn process_env(
        &self,
        release: &Release,
    ) -> Result<std::collections::BTreeMap<String, String>, ExecError> {
        let mut env: std::collections::BTreeMap<String, String> = match &release.spec.env_snapshot {
            Some(path) => container::read_snapshot(path, release)?
                .into_iter()
                .collect(),
            None => self.cfg.env.clone(),
        };
        if let Some(dir) = &release.spec.config_files {
            if !dir.is_dir() {
                return Err(ExecError::Failed(format!(
                    "{} {}'s copies of its config files are gone ({}): it cannot run with them; \
                     deploy it again to copy today's",
                    self.name(),
                    release.version,
                    dir.display()
                )));
            }
            env.insert(
                "RIPCORD_CONFIG_FILES".to_string(),
                dir.display().to_string(),
            );
        }
        Ok(env)
    }

    /// A process release's argv, `{config_files}` replaced by the directory of its
    /// copies (`{port}` and `{version}` are replaced at start).
    fn release_argv(&self, release: &Release) -> Vec<String> {
        match &release.spec.config_files {
            Some(dir) => process::substitute_config_files(&release.spec.argv, dir),
            None => release.spec.argv.clone(),
        }
    }

    pub(super) fn log_path(&self, release: &Release, slot: Slot) -> PathBuf {
        self.state_dir
            .join("logs")
            .join(self.name())
            .join(format!("{}-{slot}.log", sanitize(&release.version)))
    }
}
