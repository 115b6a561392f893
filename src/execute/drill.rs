//! A drill: the rollback path rehearsed on the live service, under its live traffic.
//! Back to the previous good release (a switch when it is warm, else a start in the
//! idle slot), verify; forward to the current release (still running in its slot),
//! verify. Every step is timed and the whole compared with `drill_budget`.
//!
//! Router `none` and runtime `swarm` have one address: there the drill puts the
//! previous release in place (a container replace, a swarm service update), verifies
//! it, and puts the current release back the same way, just as a rollback and the next
//! deploy would; the gap users see in between is measured, not hidden.
//!
//! Unlike a rollback, a drill changes no release's status (the current release stays
//! `active` in the ledger, nothing is marked bad) and opens no incident: while it runs,
//! [`ServiceExec::drilling`] tells the guard to leave the service alone, and
//! [`ServiceExec::in_drill`] keeps the requests made meanwhile out of its judgement. A
//! drill that fails on the way back puts traffic on the current release again and says
//! so.

use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::Instant;

use serde::Serialize;

use super::{
    ExecError, Progress, ROLLBACK_DRAIN, ReleaseRef, RollbackRequest, ServiceExec, release_ref, say,
};
use crate::clock::now_ms;
use crate::config::Slot;
use crate::ledger::{DrillStep, NewDrill, OperationKind, Release, ReleaseStatus};
use crate::verify::VerifyReport;

/// What a drill that ran reports (passed or not).
#[derive(Debug, Clone, Serialize)]
pub struct DrillOutcome {
    pub service: String,
    pub operation: i64,
    pub drill: i64,
    /// `passed`, `failed` (the current release was restored) or `verify_failed` (the
    /// current release failed its checks at the end).
    pub outcome: &'static str,
    pub current: ReleaseRef,
    pub previous: ReleaseRef,
    /// Whether the previous release was warm (a switch, no start).
    pub warm: bool,
    /// One address (router `none`, runtime `swarm`): each leg put its release in place.
    pub in_place: bool,
    /// Router `none`: how long nothing answered on the published address, both legs
    /// together (two containers cannot publish one port at once).
    pub downtime_ms: Option<u64>,
    /// What the built-in proxy saw while the drill ran, when it is the router.
    pub proxied: Option<Proxied>,
    pub total_ms: u64,
    pub budget_ms: u64,
    pub within_budget: bool,
    pub steps: Vec<DrillStep>,
    /// Whether traffic is on the current release at the end.
    pub on_current: bool,
    pub error: Option<String>,
    pub verify: Option<VerifyReport>,
}

impl DrillOutcome {
    /// The documented exit code: 0 passed (over budget too, with a warning), 1 failed
    /// with the current release restored, 4 the current release failed verification.
    pub fn exit_code(&self) -> i32 {
        match self.outcome {
            "passed" => 0,
            "verify_failed" => 4,
            _ => 1,
        }
    }
}

/// The built-in proxy's count of requests during a drill.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Proxied {
    pub requests: u64,
    /// Requests the proxy could not deliver (it answered 502 itself): what users lost.
    pub failed: u64,
}

/// Marks a drill's span as running for as long as it lives, and ends it when dropped.
struct Drilling<'a>(&'a Mutex<Option<(i64, i64)>>);

impl<'a> Drilling<'a> {
    fn start(span: &'a Mutex<Option<(i64, i64)>>) -> Self {
        *span.lock().unwrap_or_else(|p| p.into_inner()) = Some((now_ms(), i64::MAX));
        Drilling(span)
    }
}

impl Drop for Drilling<'_> {
    fn drop(&mut self) {
        if let Some((_, end)) = self.0.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            *end = now_ms();
        }
    }
}

/// What [`ServiceExec::drill_finish`] records.
struct Finish {
    stop: Option<Stop>,
    steps: Vec<DrillStep>,
    warm: bool,
    in_place: bool,
    downtime_ms: Option<u64>,
    proxied: Option<Proxied>,
}

/// How a leg ended early.
struct Stop {
    outcome: &'static str,
    error: String,
    verify: Option<VerifyReport>,
}

impl ServiceExec {
    /// Whether a drill runs: the guard does not judge or act on the service meanwhile.
    pub fn drilling(&self) -> bool {
        self.drill_span
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|(_, end)| end == i64::MAX)
    }

    /// Whether something seen at `at_ms` happened during the running or the last drill:
    /// the drill's own switches and (router `none`, runtime `swarm`) its gaps are not the
    /// release's doing, so the guard does not judge them, even when it reads them late.
    pub fn in_drill(&self, at_ms: i64) -> bool {
        self.drill_span
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|(start, end)| (start..=end).contains(&at_ms))
    }

    /// The releases a drill goes back to and forward to again, or why it cannot run.
    pub fn plan_drill(&self) -> Result<(Release, Release), ExecError> {
        let ledger = self.ledger();
        let current = ledger.active_release(self.name())?.ok_or_else(|| {
            ExecError::Failed(format!(
                "{} has no active release to drill: deploy one first",
                self.name()
            ))
        })?;
        let previous = ledger.previous_good(self.name())?.ok_or_else(|| {
            ExecError::Failed(format!(
                "{} has no previous release to drill a rollback to: the ledger has no release \
                 that served before {}",
                self.name(),
                current.version
            ))
        })?;
        if previous.status == ReleaseStatus::Bad {
            return Err(ExecError::Refused(format!(
                "{} {} is marked bad: ripcord does not roll back to it, so it drills nothing",
                self.name(),
                previous.version
            )));
        }
        Ok((previous, current))
    }

    pub async fn drill(&self, progress: Progress) -> Result<DrillOutcome, ExecError> {
        let holder = format!(
            "`ripcord drill {}` (watcher pid {})",
            self.name(),
            std::process::id()
        );
        // Back (start, verify), then forward (a restart at worst, verify) or a restore.
        self.exclusive_for(holder, 2, async || {
            self.refuse_if_frozen("drill")?;
            let (previous, current) = self.plan_drill()?;
            let req = RollbackRequest {
                to: None,
                reason: None,
                force: false,
            };
            self.check_migrations(&req, &previous, Some(&current), &progress)?;
            let target = self.router.target();
            let Some(cur_slot) = target
                .as_ref()
                .filter(|t| t.release_id == current.id)
                .map(|t| t.slot)
            else {
                return Err(ExecError::Failed(format!(
                    "traffic is not on {} {} (the active release), so there is nothing to drill \
                     from: see `ripcord status {}`",
                    self.name(),
                    current.version,
                    self.name()
                )));
            };
            let _drilling = Drilling::start(&self.drill_span);
            self.drill_locked(&previous, &current, cur_slot, &progress)
                .await
        })
        .await
    }

    async fn drill_locked(
        &self,
        previous: &Release,
        current: &Release,
        cur_slot: Slot,
        progress: &Progress,
    ) -> Result<DrillOutcome, ExecError> {
        let start = Instant::now();
        let started_at_ms = now_ms();
        let op = self.ledger().begin_operation(
            self.name(),
            OperationKind::Drill,
            Some(current.id),
            Some(previous.id),
            Some("drill"),
        )?;
        self.event(
            Some(current.id),
            Some(op),
            "drill_started",
            format!(
                "drill: {} → {} → {}, budget {}",
                current.version,
                previous.version,
                current.version,
                crate::config::duration::unit_text(self.cfg.drill_budget)
            ),
        );
        let mut steps = Vec::new();
        let mut warm = false;
        let in_place = self.one_address();
        let back_slot = if in_place { cur_slot } else { cur_slot.other() };
        let mut started_back = false;
        let mut downtime = None;
        let counted = self.router.proxy().map(|p| {
            let c = p.counters();
            (
                c.requests.load(Ordering::Relaxed),
                c.upstream_errors.load(Ordering::Relaxed),
            )
        });
        let stop = if in_place {
            self.drill_in_place(
                op,
                previous,
                current,
                cur_slot,
                &mut steps,
                &mut downtime,
                progress,
            )
            .await
        } else {
            self.drill_two_slots(
                op,
                previous,
                current,
                cur_slot,
                &mut steps,
                &mut warm,
                &mut started_back,
                progress,
            )
            .await
        };
        // A previous release this drill started drains and stops; a warm one stays as
        // it was (the bake timer ends it).
        if started_back && self.slot_alive(back_slot, previous.id) {
            self.keep_warm(back_slot, ROLLBACK_DRAIN)?;
        }
        let proxied = self
            .router
            .proxy()
            .zip(counted)
            .map(|(p, (requests, failed))| {
                let c = p.counters();
                Proxied {
                    requests: c.requests.load(Ordering::Relaxed) - requests,
                    failed: c.upstream_errors.load(Ordering::Relaxed) - failed,
                }
            });
        self.drill_finish(
            op,
            started_at_ms,
            start,
            previous,
            current,
            cur_slot,
            back_slot,
            Finish {
                stop,
                steps,
                warm,
                in_place,
                downtime_ms: downtime,
                proxied,
            },
            progress,
        )
    }

    /// Back to the previous release in the idle slot and forward again; a way back that
    /// failed restores the current release.
    #[allow(clippy::too_many_arguments)]
    async fn drill_two_slots(
        &self,
        op: i64,
        previous: &Release,
        current: &Release,
        cur_slot: Slot,
        steps: &mut Vec<DrillStep>,
        warm: &mut bool,
        started_back: &mut bool,
        progress: &Progress,
    ) -> Option<Stop> {
        let back_slot = cur_slot.other();
        match self
            .drill_back(op, previous, back_slot, steps, warm, started_back, progress)
            .await
        {
            Ok(()) => self
                .drill_forward(op, current, cur_slot, steps, progress)
                .await
                .err(),
            Err(stop) => Some(
                self.drill_restore(op, current, cur_slot, stop, progress)
                    .await,
            ),
        }
    }

    /// Records the drill that ran (in the ledger and as events) and says how it went.
    #[allow(clippy::too_many_arguments)]
    fn drill_finish(
        &self,
        op: i64,
        started_at_ms: i64,
        start: Instant,
        previous: &Release,
        current: &Release,
        cur_slot: Slot,
        back_slot: Slot,
        finish: Finish,
        progress: &Progress,
    ) -> Result<DrillOutcome, ExecError> {
        let Finish {
            stop,
            steps,
            warm,
            in_place,
            downtime_ms,
            proxied,
        } = finish;
        let on_current = self
            .router
            .target()
            .is_some_and(|t| t.release_id == current.id);
        let total_ms = start.elapsed().as_millis() as u64;
        let budget_ms = self.cfg.drill_budget.as_millis() as u64;
        let (outcome, error, verify) = match stop {
            None => ("passed", None, None),
            Some(s) => (s.outcome, Some(s.error), s.verify),
        };
        let drill = self.ledger().record_drill(
            self.name(),
            &NewDrill {
                operation_id: Some(op),
                current_release: Some(current.id),
                previous_release: Some(previous.id),
                outcome,
                started_at_ms,
                finished_at_ms: now_ms(),
                total_ms,
                budget_ms,
                steps: &steps,
                error: error.as_deref(),
            },
        )?;
        let mut seen = Vec::new();
        if let Some(p) = proxied {
            seen.push(format!(
                "{} of {} requests through the proxy failed",
                p.failed, p.requests
            ));
        }
        if let Some(d) = downtime_ms {
            seen.push(format!("{d} ms without an answer on the published address"));
        }
        let seen = if seen.is_empty() {
            String::new()
        } else {
            format!("; {}", seen.join(", "))
        };
        let summary = match &error {
            None => format!(
                "drill passed in {total_ms} ms (budget {budget_ms} ms{}){seen}",
                if total_ms > budget_ms {
                    ": OVER BUDGET"
                } else {
                    ""
                }
            ),
            Some(e) => format!("drill failed after {total_ms} ms{seen}: {e}"),
        };
        self.event(
            Some(current.id),
            Some(op),
            "drill_finished",
            summary.clone(),
        );
        say(progress, summary);
        match &error {
            None => self.ledger().finish_operation(op, "succeeded", None)?,
            Some(e) => self.ledger().finish_operation(op, "failed", Some(e))?,
        }
        Ok(DrillOutcome {
            service: self.name().to_string(),
            operation: op,
            drill,
            outcome,
            current: release_ref(current, Some(cur_slot)),
            previous: release_ref(previous, Some(back_slot)),
            warm,
            in_place,
            downtime_ms,
            proxied,
            total_ms,
            budget_ms,
            within_budget: total_ms <= budget_ms,
            steps,
            on_current,
            error,
            verify,
        })
    }

    /// The way back: the previous release started (unless warm), health-gated, switched
    /// to and verified.
    #[allow(clippy::too_many_arguments)]
    async fn drill_back(
        &self,
        op: i64,
        previous: &Release,
        slot: Slot,
        steps: &mut Vec<DrillStep>,
        warm: &mut bool,
        started: &mut bool,
        progress: &Progress,
    ) -> Result<(), Stop> {
        let leg = "back";
        let failed = |error: String| Stop {
            outcome: "failed",
            error,
            verify: None,
        };
        let t = Instant::now();
        *warm = self.slot_alive(slot, previous.id) && self.probe(slot).await.is_ok();
        if *warm {
            say(
                progress,
                format!(
                    "back: {} is warm in slot {slot}: switching traffic",
                    previous.version
                ),
            );
            push(steps, leg, "start", 0, true);
            push(steps, leg, "health_gate", ms(t), true);
        } else {
            say(
                progress,
                format!("back: starting {} in slot {slot}", previous.version),
            );
            *started = true;
            match self.start_healthy_timed(op, previous, slot, progress).await {
                Ok((start_ms, health_ms)) => {
                    push(steps, leg, "start", start_ms, true);
                    push(steps, leg, "health_gate", health_ms, true);
                }
                Err(e) => {
                    push(steps, leg, "start", ms(t), false);
                    return Err(failed(e.to_string()));
                }
            }
        }
        let t = Instant::now();
        if let Err(e) = self.switch_to(op, previous, slot).await {
            push(steps, leg, "switch", ms(t), false);
            return Err(failed(e.to_string()));
        }
        push(steps, leg, "switch", ms(t), true);
        say(
            progress,
            format!("back: traffic is on {} (slot {slot})", previous.version),
        );
        let t = Instant::now();
        let report = self
            .verify_serving(op, previous, progress)
            .await
            .map_err(|e| failed(e.to_string()))?;
        push(steps, leg, "verify", ms(t), report.ok);
        if !report.ok {
            return Err(Stop {
                outcome: "failed",
                error: format!(
                    "{} {} (the previous release) failed verification: a real rollback to it \
                     would fail too",
                    self.name(),
                    previous.version
                ),
                verify: Some(report),
            });
        }
        Ok(())
    }

    /// The way forward: the current release (still running in its slot) health-gated,
    /// switched to and verified; restarted in its slot if it died meanwhile.
    async fn drill_forward(
        &self,
        op: i64,
        current: &Release,
        slot: Slot,
        steps: &mut Vec<DrillStep>,
        progress: &Progress,
    ) -> Result<(), Stop> {
        let leg = "forward";
        let t = Instant::now();
        if self.slot_alive(slot, current.id) && self.probe(slot).await.is_ok() {
            push(steps, leg, "start", 0, true);
            push(steps, leg, "health_gate", ms(t), true);
        } else {
            say(
                progress,
                format!(
                    "forward: {} no longer answers in slot {slot}: starting it again",
                    current.version
                ),
            );
            match self.start_healthy_timed(op, current, slot, progress).await {
                Ok((start_ms, health_ms)) => {
                    push(steps, leg, "start", start_ms, true);
                    push(steps, leg, "health_gate", health_ms, true);
                }
                Err(e) => {
                    push(steps, leg, "start", ms(t), false);
                    return Err(Stop {
                        outcome: "failed",
                        error: format!(
                            "{e}\nTRAFFIC IS STILL ON THE PREVIOUS RELEASE: deploy or roll \
                             back by hand"
                        ),
                        verify: None,
                    });
                }
            }
        }
        let t = Instant::now();
        if let Err(e) = self.switch_to(op, current, slot).await {
            push(steps, leg, "switch", ms(t), false);
            return Err(Stop {
                outcome: "failed",
                error: format!(
                    "{e}\nTRAFFIC IS STILL ON THE PREVIOUS RELEASE: deploy or roll back by hand"
                ),
                verify: None,
            });
        }
        push(steps, leg, "switch", ms(t), true);
        say(
            progress,
            format!("forward: traffic is on {} (slot {slot})", current.version),
        );
        let t = Instant::now();
        let report = self.verify_serving(op, current, progress).await;
        let report = report.map_err(|e| Stop {
            outcome: "verify_failed",
            error: e.to_string(),
            verify: None,
        })?;
        push(steps, leg, "verify", ms(t), report.ok);
        if !report.ok {
            return Err(Stop {
                outcome: "verify_failed",
                error: format!(
                    "{} {} (the current release) serves again but failed verification",
                    self.name(),
                    current.version
                ),
                verify: Some(report),
            });
        }
        Ok(())
    }

    /// After a failed way back: traffic to the current release again (it never stopped
    /// running), verified. The drill still failed; this says whether the service is fine.
    async fn drill_restore(
        &self,
        op: i64,
        current: &Release,
        slot: Slot,
        stop: Stop,
        progress: &Progress,
    ) -> Stop {
        let on_current = self
            .router
            .target()
            .is_some_and(|t| t.release_id == current.id && t.slot == slot);
        if !on_current && let Err(e) = self.switch_to(op, current, slot).await {
            return Stop {
                error: format!(
                    "{}; then switching back to {} failed too: {e}\nTRAFFIC IS STILL ON THE \
                     PREVIOUS RELEASE: deploy or roll back by hand",
                    stop.error, current.version
                ),
                ..stop
            };
        }
        let restored = match self.verify_serving(op, current, progress).await {
            Ok(r) if r.ok => format!("{} serves again and passed verification", current.version),
            Ok(_) => format!(
                "{} serves again but FAILED verification: look at it now",
                current.version
            ),
            Err(e) => format!("{} serves again; verifying it failed: {e}", current.version),
        };
        say(progress, format!("restored: {restored}"));
        Stop {
            error: format!("{}; restored: {restored}", stop.error),
            ..stop
        }
    }
}

impl ServiceExec {
    /// One address: the previous release put in place and verified, then the current
    /// one put back and verified; a way back that failed puts the current one back.
    #[allow(clippy::too_many_arguments)]
    async fn drill_in_place(
        &self,
        op: i64,
        previous: &Release,
        current: &Release,
        slot: Slot,
        steps: &mut Vec<DrillStep>,
        downtime: &mut Option<u64>,
        progress: &Progress,
    ) -> Option<Stop> {
        let back = self
            .in_place_leg(op, "back", previous, slot, steps, downtime, progress)
            .await;
        let Err(stop) = back else {
            return self
                .in_place_leg(op, "forward", current, slot, steps, downtime, progress)
                .await
                .err();
        };
        // The way back failed: a replace that could not start the previous release
        // started the current container again itself; anything else puts it back.
        let serving_current = self.slot_alive(slot, current.id)
            && !matches!(
                self.cfg.runtime,
                crate::config::Runtime::Swarm | crate::config::Runtime::Kubernetes
            )
            && self.probe(slot).await.is_ok();
        if !serving_current {
            say(
                progress,
                format!("restoring: putting {} back in place", current.version),
            );
            if let Err(e) = self.put_in_place(op, current, "next", progress).await {
                return Some(Stop {
                    error: format!(
                        "{}; then putting {} back failed too: {e}\nTHE SERVICE MAY STILL RUN \
                         THE PREVIOUS RELEASE: deploy or roll back by hand",
                        stop.error, current.version
                    ),
                    ..stop
                });
            }
        }
        Some(self.drill_restore(op, current, slot, stop, progress).await)
    }

    /// One leg at one address: `release` put in place (started and health-gated by the
    /// engine or the replace, so one step), traffic recorded on it, verified.
    #[allow(clippy::too_many_arguments)]
    async fn in_place_leg(
        &self,
        op: i64,
        leg: &str,
        release: &Release,
        slot: Slot,
        steps: &mut Vec<DrillStep>,
        downtime: &mut Option<u64>,
        progress: &Progress,
    ) -> Result<(), Stop> {
        let back = leg == "back";
        let stranded = |error: String| Stop {
            outcome: "failed",
            error: if back {
                error
            } else {
                format!(
                    "{error}\nTHE SERVICE MAY STILL RUN THE PREVIOUS RELEASE: deploy or roll \
                     back by hand"
                )
            },
            verify: None,
        };
        say(
            progress,
            format!("{leg}: putting {} in place", release.version),
        );
        let t = Instant::now();
        let suffix = if back { "rollback" } else { "next" };
        match self.put_in_place(op, release, suffix, progress).await {
            Ok(gap) => {
                push(steps, leg, "put_in_place", ms(t), true);
                if let Some(gap) = gap {
                    *downtime = Some(downtime.unwrap_or(0) + gap);
                }
            }
            Err(e) => {
                push(steps, leg, "put_in_place", ms(t), false);
                return Err(stranded(e.to_string()));
            }
        }
        let t = Instant::now();
        if let Err(e) = self.switch_to(op, release, slot).await {
            push(steps, leg, "switch", ms(t), false);
            return Err(stranded(e.to_string()));
        }
        push(steps, leg, "switch", ms(t), true);
        say(progress, format!("{leg}: {} serves", release.version));
        let t = Instant::now();
        let outcome = if back { "failed" } else { "verify_failed" };
        let report = self
            .verify_serving(op, release, progress)
            .await
            .map_err(|e| Stop {
                outcome,
                error: e.to_string(),
                verify: None,
            })?;
        push(steps, leg, "verify", ms(t), report.ok);
        if !report.ok {
            let which = if back {
                "the previous release) failed verification: a real rollback to it would fail too"
            } else {
                "the current release) serves again but failed verification"
            };
            return Err(Stop {
                outcome,
                error: format!("{} {} ({which}", self.name(), release.version),
                verify: Some(report),
            });
        }
        Ok(())
    }
}

fn ms(t: Instant) -> u64 {
    t.elapsed().as_millis() as u64
}

fn push(steps: &mut Vec<DrillStep>, leg: &str, step: &str, ms: u64, ok: bool) {
    steps.push(DrillStep {
        leg: leg.to_string(),
        step: step.to_string(),
        ms,
        ok,
    });
}
