//! What the watcher asks of a service between operations: the bake timer, reconcile
//! after a (re)start (orphans killed, the active release brought back), the memory
//! watchdog's kill, and shutdown.

use super::{ExecError, ServiceExec, SlotProc, process, replace};
use crate::clock::now_ms;
use crate::config::{Runtime, Slot};
use std::sync::Arc;
use std::time::Instant;

use crate::ledger::{OperationKind, Release, ReleaseStatus, SlotRecord};

impl ServiceExec {
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
            let (active_slot, adopted) =
                if matches!(self.cfg.runtime, Runtime::Swarm | Runtime::Kubernetes) {
                    // The swarm (or the cluster) keeps the service running without us: adopt
                    // it when it answers, else put the active release in place again.
                    let ok = self.probe(replace::REPLACE_SLOT).await.is_ok();
                    (Some(replace::REPLACE_SLOT), ok)
                } else if self.cfg.runtime == Runtime::Docker {
                    self.adopt_containers(active.as_ref()).await?
                } else if self.cfg.runtime == Runtime::Process {
                    self.adopt_processes(active.as_ref()).await?
                } else {
                    (self.stop_orphans(active.as_ref()).await?, false)
                };
            let Some(active) = active else {
                return Ok(None);
            };
            let slot = active_slot.unwrap_or(Slot::Blue);
            let why = if adopted && self.cfg.runtime == Runtime::Process {
                "watcher restart: route to the active release's running process"
            } else if adopted {
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

    /// Runtime `process`, after a restart: takes over the active release and a warm
    /// previous one where an earlier watcher left them running (checked to be who the
    /// ledger says: pid, start time and the release in their environment), so a watcher
    /// that died costs no cold start and keeps its rollback warm. Anything else in a slot
    /// (a release an unfinished operation was starting, or one that no longer is what
    /// the ledger says) is stopped. Returns the active release's slot, and whether it
    /// was adopted and answers its health check.
    async fn adopt_processes(
        &self,
        active: Option<&Release>,
    ) -> Result<(Option<Slot>, bool), ExecError> {
        let records = self.ledger().slots(self.name())?;
        let mut active_slot = None;
        let mut adopted_active = false;
        for rec in records {
            let is_active = rec.release_id.is_some() && rec.release_id == active.map(|a| a.id);
            if is_active {
                active_slot = Some(rec.slot);
            }
            // A slot that is neither active nor kept warm held a release an operation was
            // starting when the earlier watcher died: that operation is interrupted.
            let wanted = is_active || rec.warm_until_ms.is_some();
            if let (true, Some(pid), Some(rid)) = (wanted, rec.pid, rec.release_id) {
                let release = self.ledger().release(rid)?;
                let log = self.log_path(&release, rec.slot);
                match process::adopt(pid, rec.pid_start, self.name(), rid, log) {
                    Ok(proc) => {
                        let proc = Arc::new(proc);
                        self.set_slot(
                            rec.slot,
                            Some(SlotProc {
                                release: release.clone(),
                                proc: Some(proc.clone()),
                                container: None,
                                warm_until_ms: rec.warm_until_ms,
                            }),
                        )?;
                        let role = if is_active { "active" } else { "warm" };
                        self.event(
                            Some(rid),
                            None,
                            "process_adopted",
                            format!(
                                "{} ({role}) in slot {} (pid {pid}) kept running across the watcher restart: adopted",
                                release.version, rec.slot
                            ),
                        );
                        // A running process gets its full start timeout to answer before it
                        // is given up (one missed probe must not cost a restart).
                        let deadline = Instant::now() + self.cfg.start_timeout;
                        if is_active
                            && self
                                .wait_healthy(rec.slot, Some(&proc), None, deadline)
                                .await
                                .is_ok()
                        {
                            adopted_active = true;
                        }
                        continue;
                    }
                    Err(process::NotAdopted::Stranger(why)) => {
                        // Not ours to stop: only forgotten.
                        self.event(
                            Some(rid),
                            None,
                            "adopt_refused",
                            format!("slot {} is not adopted: {why}", rec.slot),
                        );
                        self.ledger().clear_slot(self.name(), rec.slot)?;
                        continue;
                    }
                    Err(process::NotAdopted::Gone) => {}
                }
            }
            self.stop_orphan(&rec).await?;
        }
        // Processes no slot records: started by an operation whose watcher died before
        // it wrote the slot down.
        let known: Vec<i64> = self
            .slots()
            .values()
            .filter_map(|sp| sp.proc.as_ref().map(|p| p.pid as i64))
            .collect();
        let (name, dir) = (self.name().to_string(), self.state_dir.clone());
        let strays = tokio::task::spawn_blocking(move || process::strays(&name, &dir, &known))
            .await
            .unwrap_or_default();
        for (pid, start) in strays {
            let killed = tokio::task::spawn_blocking(move || process::kill_orphan(pid, start))
                .await
                .unwrap_or(false);
            if killed {
                self.event(
                    None,
                    None,
                    "orphan_stopped",
                    format!(
                        "stopped pid {pid}, a release no slot records (its operation did not finish)"
                    ),
                );
            }
        }
        Ok((active_slot, adopted_active))
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
            self.stop_orphan(&rec).await?;
        }
        Ok(active_slot)
    }

    /// Stops the process a slot record names, if it still is that process, and clears
    /// the slot.
    async fn stop_orphan(&self, rec: &SlotRecord) -> Result<(), ExecError> {
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
        Ok(())
    }

    /// Whether the kernel enforces the memory limit of what runs in `slot` (a cgroup):
    /// the guard's RSS watchdog then leaves it to the kernel.
    pub fn memory_by_kernel(&self, slot: Slot) -> bool {
        self.slots()
            .get(&slot)
            .and_then(|sp| sp.proc.as_ref().map(|p| p.kernel_limit))
            .unwrap_or(false)
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
        if matches!(
            self.cfg.runtime,
            Runtime::Docker | Runtime::Swarm | Runtime::Kubernetes
        ) {
            return;
        }
        let slots: Vec<Slot> = self.slots().into_keys().collect();
        for slot in slots {
            self.stop_slot(slot, None).await;
        }
    }
}
