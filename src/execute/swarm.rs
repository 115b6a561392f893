//! Runtime `swarm`: the release runs as a Docker Swarm service named
//! `[service.NAME.docker] name`. A deploy is a service update to the release's pinned
//! image id with its own env snapshot; a rollback is the engine's rollback to the
//! previous spec (or an update, when the previous spec is not the target).
//!
//! Swarm's own "update completed" or "rollback completed" is not proof: it has been seen
//! before any task of the old version existed, and a fast health check let an
//! OOM-killed version count as updated. So ripcord waits until the service's running
//! tasks all run the target image and `publish` answers the health check, and then runs
//! its own verification. Swarm lacks 5xx and latency triggers; the guard supplies them
//! through the proxy (or nginx, or Prometheus) in front of `publish`.
//!
//! The update is stop-first (the tasks may bind `publish` in the host's network, where
//! two cannot), so `publish` is closed for a moment: behind the built-in proxy,
//! `put_in_place` holds new requests meanwhile (`in_place.rs`).

use std::time::{Duration, Instant};

use super::container::short_id;
use super::{ExecError, Progress, ServiceExec, say};
use crate::config::duration;
use crate::docker::SwarmServiceSpec;
use crate::ledger::Release;

/// How often the service's tasks are read while waiting for convergence.
const POLL: Duration = Duration::from_millis(200);

impl ServiceExec {
    /// Makes the swarm service run `release`, and waits until it truly does.
    pub(super) async fn swarm_apply(
        &self,
        op: i64,
        release: &Release,
        rollback: bool,
        progress: &Progress,
    ) -> Result<(), ExecError> {
        let engine = self.engine().await?.clone();
        let failed = |e: crate::docker::DockerError| ExecError::Failed(e.to_string());
        let d = self.docker_cfg()?.clone();
        let name = self.container_name(None);
        let img = release.spec.image.as_ref().ok_or_else(|| {
            ExecError::Failed(format!(
                "{} {} has no pinned image in the ledger; deploy it again",
                self.name(),
                release.version
            ))
        })?;
        let env = self.release_env(release)?;
        let labels = self.release_labels(release);
        self.ensure_image(op, release).await?;
        // The digest when the release came from a registry: other nodes can pull it,
        // and it names exactly the pinned content. An id only resolves on this engine.
        let image = img.repo_digest.clone().unwrap_or_else(|| img.id.clone());
        let registry_auth = match &img.repo_digest {
            Some(digest) => super::container::registry_credentials(&d, digest)?,
            None => None,
        };
        let existing = engine.service_labels(&name).await.map_err(failed)?;
        if let Some(labels) = &existing
            && labels
                .get(super::container::LABEL_SERVICE)
                .map(String::as_str)
                != Some(self.name())
        {
            return Err(ExecError::Failed(format!(
                "a swarm service named `{name}` exists and is not {}'s (no `{}={}` label): ripcord \
                 never touches what it does not own; remove or rename it, or set `name` in \
                 [service.{}.docker]",
                self.name(),
                super::container::LABEL_SERVICE,
                self.name(),
                self.name()
            )));
        }
        let want = release.id.to_string();
        if existing.is_none() {
            let info = engine.describe().await.map_err(failed)?;
            if !info.swarm_active {
                return Err(ExecError::Failed(
                    "runtime \"swarm\" needs this engine to be a swarm manager (it is not in a swarm): \
                     `docker swarm init`, or use runtime \"docker\""
                        .to_string(),
                ));
            }
            self.ledger().step(
                op,
                "swarm_create",
                format!(
                    "creating swarm service {name} with {} ({})",
                    release.version,
                    short_id(&img.id)
                ),
            )?;
            let publish = self.cfg.slots.blue;
            let host_network = d.network.as_deref() == Some("host");
            engine
                .service_create(&SwarmServiceSpec {
                    name: name.clone(),
                    image: image.clone(),
                    env,
                    published_port: (!host_network)
                        .then_some((publish.port(), crate::docker::swarm::PublishMode::Ingress)),
                    target_port: img.container_port,
                    replicas: 1,
                    labels,
                    // ripcord decides about rollbacks; the engine only applies them.
                    update_failure_action: None,
                    monitor_secs: 5,
                    init: true,
                    stop_grace_secs: Some(duration::ceil_secs(self.cfg.stop_timeout)),
                    host_network,
                    registry_auth: registry_auth.clone(),
                })
                .await
                .map_err(failed)?;
        } else if rollback
            && existing
                .as_ref()
                .is_some_and(|l| !l.contains_key(crate::docker::swarm::LABEL_SCALED))
        {
            self.ledger().step(
                op,
                "swarm_rollback",
                format!("asking the engine to roll {name} back to its previous spec"),
            )?;
            say(
                progress,
                format!("swarm: rolling {name} back (engine rollback)"),
            );
            engine.service_rollback(&name).await.map_err(failed)?;
            // The previous spec may not be the target (a rollback further back): then
            // the target is set explicitly. Either way the result is checked.
            let deadline = Instant::now() + self.cfg.start_timeout;
            match self.swarm_converged(&name, None, deadline).await {
                Ok(running) if running == want => {}
                _ => {
                    self.ledger().step(
                        op,
                        "swarm_update",
                        format!(
                            "the previous spec is not {}: updating {name} to it",
                            release.version
                        ),
                    )?;
                    engine
                        .service_set(&name, &image, &env, &labels, registry_auth.as_ref())
                        .await
                        .map_err(failed)?;
                }
            }
        } else {
            self.ledger().step(
                op,
                "swarm_update",
                format!(
                    "updating swarm service {name} to {} ({})",
                    release.version,
                    short_id(&img.id)
                ),
            )?;
            engine
                .service_set(&name, &image, &env, &labels, registry_auth.as_ref())
                .await
                .map_err(failed)?;
        }
        say(
            progress,
            format!(
                "waiting for {name}'s tasks to run {} and {} to answer",
                release.version,
                self.cfg.health_url(self.cfg_slot())
            ),
        );
        let deadline = Instant::now() + self.cfg.start_timeout;
        let t0 = Instant::now();
        self.swarm_converged(&name, Some(&want), deadline)
            .await
            .map_err(|why| {
                ExecError::Failed(format!(
                    "{} {} did not take over swarm service {name}: {why}",
                    self.name(),
                    release.version
                ))
            })?;
        self.event(
            Some(release.id),
            Some(op),
            "healthy",
            format!(
                "swarm service {name} runs {} and answers its health check after {} ms",
                release.version,
                t0.elapsed().as_millis()
            ),
        );
        Ok(())
    }

    fn cfg_slot(&self) -> crate::config::Slot {
        crate::config::Slot::Blue
    }

    /// Waits until every task the service wants running runs one release (`want`, a
    /// release id, when given: told by the task's `ripcord.release` label, since two
    /// releases may share an image and differ in env) and is running, and the health URL
    /// answers. Returns that release id.
    async fn swarm_converged(
        &self,
        name: &str,
        want: Option<&str>,
        deadline: Instant,
    ) -> Result<String, String> {
        let engine = self.engine().await.map_err(|e| e.to_string())?.clone();
        let mut last: String;
        loop {
            match engine.service_tasks(name).await {
                Ok(tasks) => {
                    let desired: Vec<_> = tasks
                        .iter()
                        .filter(|t| t.desired_state == "running")
                        .collect();
                    let images: Vec<&str> = desired
                        .iter()
                        .map(|t| t.release.as_deref().unwrap_or(""))
                        .collect();
                    let all_running =
                        !desired.is_empty() && desired.iter().all(|t| t.state == "running");
                    let one_image = images.windows(2).all(|w| w[0] == w[1]);
                    let on_target = want.is_none_or(|w| images.iter().all(|i| *i == w));
                    // A task of the wanted image that failed says why.
                    if let Some(t) = tasks.iter().find(|t| {
                        want.is_some_and(|w| t.release.as_deref() == Some(w))
                            && matches!(t.state.as_str(), "failed" | "rejected")
                    }) {
                        last = format!(
                            "a task failed ({}{})",
                            t.message.as_deref().unwrap_or(&t.state),
                            t.exit_code
                                .map(|c| format!(", exit code {c}"))
                                .unwrap_or_default()
                        );
                    } else {
                        last = format!(
                            "tasks: {}",
                            desired
                                .iter()
                                .map(|t| format!("{} {}", short_id(&t.image), t.state))
                                .collect::<Vec<_>>()
                                .join(", ")
                        );
                    }
                    if all_running && one_image && on_target {
                        match self.probe(self.cfg_slot()).await {
                            Ok(()) => return Ok(images[0].to_string()),
                            Err(e) => last = format!("tasks run, but {e}"),
                        }
                    }
                }
                Err(e) => last = e.to_string(),
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "not converged after {}s; last seen: {last}",
                    duration::secs_text(self.cfg.start_timeout)
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

impl ServiceExec {
    /// Stops every task of the service (scale to 0) and waits until none runs; returns
    /// the replica count to give back, `None` when there is no service yet.
    pub(super) async fn swarm_stop(&self) -> Result<Option<u64>, ExecError> {
        let engine = self.engine().await?.clone();
        let failed = |e: crate::docker::DockerError| ExecError::Failed(e.to_string());
        let name = self.container_name(None);
        let Some(labels) = engine.service_labels(&name).await.map_err(failed)? else {
            return Ok(None);
        };
        if labels
            .get(super::container::LABEL_SERVICE)
            .map(String::as_str)
            != Some(self.name())
        {
            return Err(ExecError::Failed(format!(
                "swarm service `{name}` is not {}'s (no `{}={}` label): ripcord will not stop \
                 what it does not own",
                self.name(),
                super::container::LABEL_SERVICE,
                self.name()
            )));
        }
        let replicas = engine
            .service_replicas(&name)
            .await
            .map_err(failed)?
            .unwrap_or(1)
            .max(1);
        engine.service_scale(&name, 0).await.map_err(failed)?;
        let wait = self.cfg.stop_timeout + Duration::from_secs(30);
        let deadline = Instant::now() + wait;
        loop {
            let left = match engine.service_tasks(&name).await {
                Ok(tasks) => tasks.iter().filter(|t| !task_ended(&t.state)).count(),
                Err(e) => {
                    self.give_back(&name, replicas).await;
                    return Err(failed(e));
                }
            };
            if left == 0 {
                return Ok(Some(replicas));
            }
            if Instant::now() >= deadline {
                self.give_back(&name, replicas).await;
                return Err(ExecError::Failed(format!(
                    "swarm service {name} still had {left} task(s) not ended {}s after it \
                     was scaled to 0; its {replicas} replica(s) were given back",
                    duration::secs_text(wait)
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Best effort: a stop that failed leaves the service as it found it.
    async fn give_back(&self, name: &str, replicas: u64) {
        if let Ok(engine) = self.engine().await
            && let Err(e) = engine.service_scale(name, replicas).await
        {
            tracing::warn!(service = %self.name(), "could not scale {name} back to {replicas}: {e}");
        }
    }

    /// Gives the service its replicas back (after a restore).
    pub(super) async fn swarm_scale_back(&self, replicas: u64) -> Result<(), ExecError> {
        let engine = self.engine().await?.clone();
        engine
            .service_scale(&self.container_name(None), replicas.max(1))
            .await
            .map_err(|e| ExecError::Failed(e.to_string()))
    }
}

/// A task in one of these states holds no container any more (Swarm's terminal states).
fn task_ended(state: &str) -> bool {
    matches!(
        state,
        "complete" | "shutdown" | "failed" | "rejected" | "orphaned" | "remove"
    )
}
