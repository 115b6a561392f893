//! Router `none` with runtime `docker`: the runbook's image-based rollback done right.
//!
//! One container `<name>` is published on `[service.NAME.docker] publish`. Replacing it
//! with a release: start `<name>-next` (a deploy) or `<name>-rollback` (a rollback) from
//! the release's pinned image *with that release's env snapshot* on a private loopback
//! port and health-gate it while the current container keeps serving; only then stop
//! the current one, start the release on the published address, health-gate again,
//! remove the old container and rename the new one `<name>`. Two containers cannot
//! publish one host port at once, so users see a gap between the stop and the second
//! health pass: it is measured and reported, never hidden.
//!
//! If the release never becomes healthy in the pre-flight, the current container is
//! untouched. If it fails on the published address, it is removed and the previous
//! container is started again. When the current container is not running any more (it
//! crashed: the usual reason for an automatic rollback) there is nothing to protect and
//! no port to share, so the pre-flight is skipped and the gap is only the start.

use std::sync::Arc;
use std::time::Instant;

use super::container::{ContainerHandle, never_healthy, short_id};
use super::{ExecError, Progress, ServiceExec, SlotProc, say};
use crate::config::Slot;
use crate::ledger::Release;

/// Image replace keeps its one container in this slot of the ledger.
pub const REPLACE_SLOT: Slot = Slot::Blue;

/// What a replace did, for the operation's outcome.
pub struct Replaced {
    /// How long users had no container answering: from the old one's stop until the
    /// new one passed its health check on the published address.
    pub downtime_ms: u64,
}

impl ServiceExec {
    /// Replaces the service's container with `release` (see the module doc).
    pub(super) async fn replace_with(
        &self,
        op: i64,
        release: &Release,
        suffix: &str,
        progress: &Progress,
    ) -> Result<Replaced, ExecError> {
        let engine = self.engine().await?.clone();
        let name = self.container_name(None);
        let next_name = format!("{name}-{suffix}");
        let timeout = self.cfg.stop_timeout;
        let failed = |e: crate::docker::DockerError| ExecError::Failed(e.to_string());

        // What runs now, and whether it still answers for anything.
        let mut current = self.slots().get(&REPLACE_SLOT).cloned();
        let current_id = match current.as_ref().and_then(|c| c.container.clone()) {
            Some(c) => Some(c.id.clone()),
            // Not in the slots (an interrupted operation): the engine knows it by name.
            None => engine
                .state(&name)
                .await
                .map_err(failed)?
                .filter(|s| self.owns(&s.labels))
                .map(|_| name.clone()),
        };
        // A replace whose final rename failed left the serving container under its
        // temporary name: it gets its name back first, so clearing a stale temporary
        // name below can never remove what serves.
        if let Some(cur) = &current_id
            && let Some(st) = engine.state(cur).await.map_err(failed)?
            && st.name != name
        {
            if engine.state(&name).await.map_err(failed)?.is_some() {
                if st.name == next_name {
                    return Err(ExecError::Failed(format!(
                        "{} serves as `{next_name}` and another container holds `{name}`: \
                         remove that one (`docker rm {name}`) and try again; nothing was touched",
                        self.name()
                    )));
                }
            } else {
                engine.rename(&st.id, &name).await.map_err(failed)?;
                self.event(
                    None,
                    Some(op),
                    "renamed",
                    format!(
                        "{} had been left as `{}`: renamed `{name}`",
                        short_id(&st.id),
                        st.name
                    ),
                );
                if let Some(mut slot) = current.clone()
                    && slot.container.is_some()
                {
                    slot.container =
                        Some(Arc::new(ContainerHandle::new(st.id.clone(), name.clone())));
                    self.set_slot(REPLACE_SLOT, Some(slot.clone()))?;
                    current = Some(slot);
                }
            }
        }
        let current_running = match &current_id {
            Some(id) => engine
                .state(id)
                .await
                .map_err(failed)?
                .is_some_and(|s| s.running && !s.restarting),
            None => false,
        };

        // 1. Pre-flight on a private port while the current container serves. When
        //    nothing serves any more (it crashed), there is nothing to protect: the
        //    release goes straight to the published address.
        // A `-next` left by an interrupted operation is ours and goes first, before
        // anything is stopped (a failure here leaves the current container serving).
        self.clear_name(&next_name).await?;
        // A pruned image is pulled by its digest now, before anything is stopped.
        self.ensure_image(op, release).await?;
        if current_running {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(|e| {
                    ExecError::Failed(format!("no free loopback port for the pre-flight: {e}"))
                })?
                .port();
            let private = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            let spec = self.container_spec(release, next_name.clone(), private, None)?;
            self.ledger().step(
                op,
                "preflight",
                format!(
                    "starting {} ({}) as {next_name} on {private} to health-check it before touching {name}",
                    release.version,
                    short_id(&spec.image)
                ),
            )?;
            say(
                progress,
                format!(
                    "pre-flight: {} as {next_name} on {private}, while {name} keeps serving",
                    release.version
                ),
            );
            let id = engine.run(&spec).await.map_err(|e| {
                ExecError::Failed(format!(
                    "cannot start {next_name}: {e}; {name} was not touched"
                ))
            })?;
            let pre = ContainerHandle::new(id, next_name.clone());
            let url = format!("http://{private}{}", self.cfg.health_path);
            let deadline = Instant::now() + self.cfg.start_timeout;
            if let Err(why) = self.wait_healthy_at(&url, None, Some(&pre), deadline).await {
                let tail = engine.logs_tail(&pre.id, 10).await.unwrap_or_default();
                pre.mark_stopping();
                let _ = engine.stop_and_remove(&pre.id, timeout).await;
                let msg = never_healthy(self.name(), release, &next_name, &why, &tail);
                return Err(ExecError::Failed(format!(
                    "{msg}\n{name} was not touched: it still runs what it ran"
                )));
            }
            pre.mark_stopping();
            engine
                .stop_and_remove(&pre.id, timeout)
                .await
                .map_err(failed)?;
            self.event(
                Some(release.id),
                Some(op),
                "preflight_healthy",
                format!("{} passed its pre-flight health check", release.version),
            );
        } else {
            self.event(
                Some(release.id),
                Some(op),
                "preflight_skipped",
                format!(
                    "{name} is not running, so {} starts on the published address at once",
                    release.version
                ),
            );
        }

        // 2. Stop the current container (kept until the new one is proven).
        let down_at = Instant::now();
        if let Some(cur) = &current_id {
            if let Some(h) = current.as_ref().and_then(|c| c.container.as_ref()) {
                h.mark_stopping();
            }
            self.ledger().step(
                op,
                "stopping",
                format!("stopping {name} to free {}", self.cfg.slots.blue),
            )?;
            if let Err(e) = engine.stop(cur, timeout).await {
                if let Some(h) = current.as_ref().and_then(|c| c.container.as_ref()) {
                    h.clear_stopping();
                }
                return Err(ExecError::Failed(format!(
                    "cannot stop {name} to make room: {e}; it keeps running what it ran"
                )));
            }
        }

        // 3. The release on the published address.
        let publish = self.cfg.slots.addr(REPLACE_SLOT);
        let spec = self.container_spec(release, next_name.clone(), publish, None)?;
        self.ledger().step(
            op,
            "starting",
            format!("starting {} as {next_name} on {publish}", release.version),
        )?;
        let started = engine.run(&spec).await;
        let outcome = match started {
            Ok(id) => {
                let h = ContainerHandle::new(id, next_name.clone());
                let deadline = Instant::now() + self.cfg.start_timeout;
                match self
                    .wait_healthy_at(&self.cfg.health_url(REPLACE_SLOT), None, Some(&h), deadline)
                    .await
                {
                    Ok(()) => Ok(h),
                    Err(why) => {
                        let tail = engine.logs_tail(&h.id, 10).await.unwrap_or_default();
                        h.mark_stopping();
                        let _ = engine.stop_and_remove(&h.id, timeout).await;
                        Err(never_healthy(self.name(), release, &next_name, &why, &tail))
                    }
                }
            }
            Err(e) => Err(format!("cannot start {next_name} on {publish}: {e}")),
        };
        let handle = match outcome {
            Ok(h) => h,
            Err(msg) => {
                // Put the previous container back as it was.
                let back = match &current_id {
                    Some(cur) if current_running => match engine.start(cur).await {
                        Ok(()) => format!("{name} was started again"),
                        Err(e) => format!("starting {name} again failed too: {e}"),
                    },
                    Some(_) => format!("{name} had already stopped; it is left stopped"),
                    None => "there was no previous container to start again".to_string(),
                };
                if let Some(h) = current.as_ref().and_then(|c| c.container.as_ref()) {
                    h.clear_stopping();
                }
                return Err(ExecError::Failed(format!(
                    "{msg}\n{back} after a gap of {} ms",
                    down_at.elapsed().as_millis()
                )));
            }
        };
        let downtime_ms = down_at.elapsed().as_millis() as u64;

        // 4. It serves: record it at once, so the guard watches it whatever happens next.
        //    Then the old container goes and the new one takes the name; a failure there
        //    is reported, not fatal (the new release serves either way).
        let id = handle.id.clone();
        let record = |container_name: &str| {
            self.set_slot(
                REPLACE_SLOT,
                Some(SlotProc {
                    release: release.clone(),
                    proc: None,
                    container: Some(Arc::new(ContainerHandle::new(
                        id.clone(),
                        container_name.to_string(),
                    ))),
                    warm_until_ms: None,
                }),
            )
        };
        record(&next_name)?;
        if let Some(cur) = &current_id
            && let Err(e) = engine.stop_and_remove(cur, timeout).await
        {
            self.event(
                Some(release.id),
                Some(op),
                "cleanup_failed",
                format!(
                    "the replaced container {name} could not be removed: {e}; remove it by hand"
                ),
            );
        }
        match engine.rename(&id, &name).await {
            Ok(()) => record(&name)?,
            Err(e) => self.event(
                Some(release.id),
                Some(op),
                "cleanup_failed",
                format!("{next_name} serves but could not be renamed {name}: {e}"),
            ),
        }
        self.event(
            Some(release.id),
            Some(op),
            "downtime",
            format!(
                "{name} answered nothing for {downtime_ms} ms while it was replaced: two containers \
                 cannot publish {publish} at once (router \"none\"); put the built-in proxy or nginx \
                 in front for a switch without a gap"
            ),
        );
        say(
            progress,
            format!(
                "{} replaced {name}: {downtime_ms} ms without an answer on {publish} (router \"none\")",
                release.version
            ),
        );
        Ok(Replaced { downtime_ms })
    }
}
