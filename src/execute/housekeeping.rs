//! What the watcher asks of a service between operations: the bake timer, reconcile
//! after a (re)start (orphans killed, the active release brought back), the memory
//! watchdog's kill, and shutdown.

use super::{ExecError, ServiceExec, SlotProc, process, replace};
use crate::clock::now_ms;
use crate::config::{Runtime, Slot};
use crate::ledger::{OperationKind, Release, ReleaseStatus};

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
