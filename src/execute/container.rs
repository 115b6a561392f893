//! Runtime `docker`: a release is an image pinned by id plus its env snapshot and run
//! settings ([`ImageRelease`]); it runs as a container labelled `ripcord.service` and
//! `ripcord.release`. ripcord never touches a container without its service label.
//!
//! Blue-green puts `<name>-blue` and `<name>-green` on the slot ports behind the proxy
//! or nginx. Router `none` (image replace, `replace.rs`) keeps one container `<name>` on
//! the published address.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::envfile;
use super::{ExecError, Progress, ServiceExec, SlotProc, process, sanitize, say};
use crate::config::{DockerConfig, Slot, duration};
use crate::docker::registry::{self, Credentials};
use crate::docker::{ContainerSpec, Engine, ImageInfo};
use crate::ledger::{ImageRelease, Release};
use crate::os::describe_exit;

pub const LABEL_SERVICE: &str = "ripcord.service";
pub const LABEL_RELEASE: &str = "ripcord.release";
pub const LABEL_VERSION: &str = "ripcord.version";
pub const LABEL_SLOT: &str = "ripcord.slot";
pub use crate::docker::LABEL_STATE_DIR;

/// A container ripcord runs for one slot.
pub struct ContainerHandle {
    pub id: String,
    pub name: String,
    /// Set once ripcord asks it to stop: its exit is then not a crash.
    stopping: AtomicBool,
    /// How it ended, once the engine said so (an event or an inspect).
    exited: Mutex<Option<String>>,
    oom: AtomicBool,
}

impl ContainerHandle {
    pub fn new(id: String, name: String) -> Self {
        ContainerHandle {
            id,
            name,
            stopping: AtomicBool::new(false),
            exited: Mutex::new(None),
            oom: AtomicBool::new(false),
        }
    }

    pub fn exited(&self) -> Option<String> {
        self.exited
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    pub fn oom_killed(&self) -> bool {
        self.oom.load(Ordering::SeqCst)
    }

    /// Records that it ended (from an engine event or an inspect); the first word wins.
    pub fn mark_exited(&self, how: String, oom: bool) {
        if oom {
            self.oom.store(true, Ordering::SeqCst);
        }
        let mut e = self.exited.lock().unwrap_or_else(|p| p.into_inner());
        if e.is_none() {
            *e = Some(how);
        }
    }

    pub fn mark_stopping(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// It was started again after a stop (a failed replace put it back).
    pub fn clear_stopping(&self) {
        self.stopping.store(false, Ordering::SeqCst);
    }
}

impl ServiceExec {
    pub(super) fn docker_cfg(&self) -> Result<&DockerConfig, ExecError> {
        self.cfg.docker.as_ref().ok_or_else(|| {
            ExecError::Usage(format!(
                "{} has runtime \"docker\" but no [service.{}.docker] table",
                self.name(),
                self.name()
            ))
        })
    }

    /// The engine, connected (and its API version negotiated) on first use.
    pub async fn engine(&self) -> Result<&Engine, ExecError> {
        self.engine
            .get_or_try_init(|| async {
                Engine::connect()
                    .await
                    .map_err(|e| ExecError::Failed(e.to_string()))
            })
            .await
    }

    /// Pins a docker release: resolves the image reference to its id, and snapshots the
    /// env file under the state dir.
    pub(super) async fn pin_image(
        &self,
        version: &str,
        image: Option<&str>,
        progress: &Progress,
    ) -> Result<ImageRelease, ExecError> {
        let d = self.docker_cfg()?.clone();
        let reference = match (image, &d.image) {
            (Some(r), _) => r.to_string(),
            (None, Some(repo)) => format!("{repo}:{version}"),
            (None, None) => {
                return Err(ExecError::Usage(format!(
                    "no image for {} {version}: pass --image REF or set `image` in [service.{}.docker]",
                    self.name(),
                    self.name()
                )));
            }
        };
        let engine = self.engine().await?;
        let cannot = |e: crate::docker::DockerError| {
            ExecError::Failed(format!("cannot deploy {} {version}: {e}", self.name()))
        };
        let info: ImageInfo = match engine.resolve_image(&reference).await {
            Ok(info) => info,
            Err(e) if e.is_not_found() => {
                // Not on this engine: the registry has it, or nobody does.
                let creds = registry_credentials(&d, &reference)?;
                say(
                    progress,
                    format!("{reference} is not on this engine: pulling it"),
                );
                let mut told = |m: String| say(progress, m);
                engine
                    .pull(&reference, creds.as_ref(), d.pull_timeout, &mut told)
                    .await
                    .map_err(|e| ExecError::Failed(pull_failed(self.name(), version, &e, &d)))?;
                engine.resolve_image(&reference).await.map_err(cannot)?
            }
            Err(e) => return Err(cannot(e)),
        };
        // The release's whole env, pinned: `[service.NAME.env]` with the env file's
        // variables over it, so a cold rollback runs neither today's file nor today's table.
        let (dest, env_keys) = self.snapshot_env(version, d.env_file.as_deref())?;
        let env_snapshot = Some(dest);
        // What a later rollback pulls when this id was pruned from the engine.
        let repo_digest = registry::digest_for(&reference, &info.repo_digests);
        Ok(ImageRelease {
            reference,
            id: info.id,
            repo_digest,
            env_snapshot,
            env_keys,
            env_pinned: true,
            container_port: d.container_port,
            memory_limit_mb: d.memory_limit_mb.or(self.cfg.memory_limit_mb),
            restart: d.restart.clone(),
            command: d.command.clone(),
        })
    }

    /// Makes sure the engine has `release`'s pinned image before it runs: when the id
    /// is gone (pruned, another host), the pinned `name@sha256:…` is pulled again and
    /// must come back as the same id. Anything else would be a different release.
    pub(super) async fn ensure_image(&self, op: i64, release: &Release) -> Result<(), ExecError> {
        let Some(img) = release.spec.image.as_ref() else {
            return Ok(());
        };
        let engine = self.engine().await?;
        let present = engine
            .image_present(&img.id)
            .await
            .map_err(|e| ExecError::Failed(e.to_string()))?;
        if present {
            return Ok(());
        }
        let Some(digest) = &img.repo_digest else {
            return Err(ExecError::Failed(format!(
                "the image of {} {} ({}, {}) is not on this engine and its release has no \
                 registry digest to pull it by (it was built or loaded here): rebuild or `docker \
                 load` the exact image; a different build is not the same release",
                self.name(),
                release.version,
                img.reference,
                short_id(&img.id)
            )));
        };
        self.ledger().step(
            op,
            "pulling",
            format!(
                "{} ({}) is not on this engine: pulling {digest}",
                release.version,
                short_id(&img.id)
            ),
        )?;
        let d = self.docker_cfg()?.clone();
        let creds = registry_credentials(&d, digest)?;
        let mut told = |m: String| {
            if let Err(e) = self.ledger().step(op, "pulling", m) {
                tracing::warn!(error = %e, "cannot record the pull's progress");
            }
        };
        engine
            .pull(digest, creds.as_ref(), d.pull_timeout, &mut told)
            .await
            .map_err(|e| ExecError::Failed(pull_failed(self.name(), &release.version, &e, &d)))?;
        let pulled = engine
            .resolve_image(digest)
            .await
            .map_err(|e| ExecError::Failed(e.to_string()))?;
        if pulled.id != img.id {
            return Err(ExecError::Failed(format!(
                "pulled {digest} for {} {}, and it is image {}, not the pinned {}: the registry \
                 serves other content under that digest's name (a different platform?); ripcord \
                 will not run it as this release",
                self.name(),
                release.version,
                short_id(&pulled.id),
                short_id(&img.id)
            )));
        }
        self.event(
            Some(release.id),
            Some(op),
            "image_pulled",
            format!(
                "pulled {digest} again: image {} as pinned",
                short_id(&img.id)
            ),
        );
        Ok(())
    }

    pub(super) fn env_snapshot_path(&self, version: &str, digest: &str) -> PathBuf {
        self.state_dir
            .join("env")
            .join(self.name())
            .join(format!("{}-{digest}.env", sanitize(version)))
    }

    /// The container name for a slot (blue-green) or the service's one container.
    pub(super) fn container_name(&self, slot: Option<Slot>) -> String {
        let base = self
            .cfg
            .docker
            .as_ref()
            .map_or_else(|| self.name().to_string(), |d| d.name.clone());
        match slot {
            Some(s) => format!("{base}-{s}"),
            None => base,
        }
    }

    /// The container spec of `release`, published on `host` (an address on this host).
    pub(super) fn container_spec(
        &self,
        release: &Release,
        name: String,
        host: std::net::SocketAddr,
        slot: Option<Slot>,
    ) -> Result<ContainerSpec, ExecError> {
        let img = release.spec.image.as_ref().ok_or_else(|| {
            ExecError::Failed(format!(
                "{} {} has no pinned image in the ledger (deployed before runtime \"docker\"); deploy it again",
                self.name(),
                release.version
            ))
        })?;
        let env = self.release_env(release)?;
        let mut labels = self.release_labels(release);
        if let Some(s) = slot {
            labels.insert(LABEL_SLOT.to_string(), s.to_string());
        }
        Ok(ContainerSpec {
            name,
            image: img.id.clone(),
            env,
            cmd: img.command.clone(),
            container_port: img.container_port,
            host_ip: host.ip().to_string(),
            host_port: host.port(),
            memory_limit_mb: img.memory_limit_mb,
            restart: Some(img.restart.clone()),
            labels,
            init: true,
            stop_timeout_secs: Some(duration::ceil_secs(self.cfg.stop_timeout)),
            // ripcord probes the health URL itself; an image's own HEALTHCHECK still
            // reports through the engine's health_status events.
            healthcheck: None,
        })
    }

    /// The release's own env snapshot; for a release recorded before snapshots held the
    /// whole env, the service's `env` today with its snapshot over it.
    pub(super) fn release_env(
        &self,
        release: &Release,
    ) -> Result<Vec<(String, String)>, ExecError> {
        if let Some(img) = release.spec.image.as_ref()
            && img.env_pinned
            && let Some(path) = &img.env_snapshot
        {
            return read_snapshot(path, release);
        }
        let mut env: Vec<(String, String)> = self
            .cfg
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if let Some(path) = release
            .spec
            .image
            .as_ref()
            .and_then(|i| i.env_snapshot.as_ref())
        {
            for (k, v) in read_snapshot(path, release)? {
                env.retain(|(ek, _)| *ek != k);
                env.push((k, v));
            }
        }
        Ok(env)
    }

    /// The labels that make a container (or swarm task) ours, and say what it runs.
    pub(super) fn release_labels(&self, release: &Release) -> BTreeMap<String, String> {
        let mut labels = BTreeMap::new();
        labels.insert(LABEL_SERVICE.to_string(), self.name().to_string());
        labels.insert(LABEL_RELEASE.to_string(), release.id.to_string());
        labels.insert(LABEL_VERSION.to_string(), release.version.clone());
        labels.insert(LABEL_STATE_DIR.to_string(), self.state_dir_label());
        labels
    }

    /// This ripcord's state dir as its containers are labelled with it.
    pub(super) fn state_dir_label(&self) -> String {
        std::fs::canonicalize(&self.state_dir)
            .unwrap_or_else(|_| self.state_dir.clone())
            .display()
            .to_string()
    }

    /// Whether a container's labels say it is this service's, made by this ripcord (or
    /// by one from before the state-dir label, which could only be this one's).
    pub(super) fn owns(&self, labels: &BTreeMap<String, String>) -> bool {
        labels.get(LABEL_SERVICE).map(String::as_str) == Some(self.name())
            && labels
                .get(LABEL_STATE_DIR)
                .is_none_or(|d| *d == self.state_dir_label())
    }

    /// Removes a container of this service that is in the way of `name` (left by a crash
    /// or an earlier watcher). One without our service label is never touched.
    pub(super) async fn clear_name(&self, name: &str) -> Result<(), ExecError> {
        let engine = self.engine().await?;
        let state = engine
            .state(name)
            .await
            .map_err(|e| ExecError::Failed(e.to_string()))?;
        let Some(state) = state else {
            return Ok(());
        };
        if !self.owns(&state.labels) {
            return Err(ExecError::Failed(format!(
                "a container named `{name}` exists and is not {}'s (no `{LABEL_SERVICE}={}` label, \
                 or another state dir's `{LABEL_STATE_DIR}`): ripcord never touches containers it \
                 does not own; rename or remove it, or set `name` in [service.{}.docker]",
                self.name(),
                self.name(),
                self.name()
            )));
        }
        engine
            .stop_and_remove(name, self.cfg.stop_timeout)
            .await
            .map_err(|e| ExecError::Failed(e.to_string()))?;
        Ok(())
    }

    /// Whether a container still runs, asking the engine (`None`: it runs; `Some(how)`
    /// it ended or is gone).
    pub(super) async fn container_ended(&self, handle: &ContainerHandle) -> Option<String> {
        if let Some(how) = handle.exited() {
            return Some(how);
        }
        let engine = self.engine().await.ok()?;
        match engine.state(&handle.id).await {
            Ok(Some(s)) if s.running && !s.restarting => None,
            Ok(Some(s)) if s.restarting => Some(format!(
                "it is restarting after {} (restart policy)",
                describe_exit(s.exit_code, s.oom_killed)
            )),
            Ok(Some(s)) => {
                let how = describe_exit(s.exit_code, s.oom_killed);
                handle.mark_exited(how.clone(), s.oom_killed);
                Some(how)
            }
            Ok(None) => {
                let how = "the container is gone".to_string();
                handle.mark_exited(how.clone(), false);
                Some(how)
            }
            // An engine hiccup is not an exit.
            Err(_) => None,
        }
    }
}

impl ServiceExec {
    /// Blue-green: starts `release` as `<name>-<slot>` on the slot's port and waits until
    /// it is healthy; on failure the container is removed and the error carries its last
    /// log lines.
    pub(super) async fn start_container(
        &self,
        op: i64,
        release: &Release,
        slot: Slot,
        progress: &Progress,
    ) -> Result<(), ExecError> {
        let addr = self.cfg.slots.addr(slot);
        let name = self.container_name(Some(slot));
        self.clear_name(&name).await?;
        if let Err(e) = std::net::TcpListener::bind(addr) {
            return Err(ExecError::Failed(format!(
                "slot {slot} ({addr}) is not free: {e}; another program holds the port, stop it \
                 or change `slots` in the config"
            )));
        }
        self.ensure_image(op, release).await?;
        let spec = self.container_spec(release, name.clone(), addr, Some(slot))?;
        self.ledger().step(
            op,
            "starting",
            format!(
                "starting {} ({}) as container {name} on {addr}",
                release.version,
                short_id(&spec.image)
            ),
        )?;
        let engine = self.engine().await?;
        let id = engine
            .run(&spec)
            .await
            .map_err(|e| ExecError::Failed(format!("cannot start container {name}: {e}")))?;
        // Running, not yet recorded in a slot: the next watcher removes it as a
        // container of this service and state dir that no slot records.
        crate::failpoint::hit("container.started");
        let handle = Arc::new(ContainerHandle::new(id, name.clone()));
        self.set_slot(
            slot,
            Some(SlotProc {
                release: release.clone(),
                proc: None,
                container: Some(handle.clone()),
                warm_until_ms: None,
            }),
        )?;
        self.ledger().step(
            op,
            "health_wait",
            format!(
                "waiting up to {}s for {} to answer {}",
                duration::secs_text(self.cfg.start_timeout),
                release.version,
                self.cfg.health_url(slot)
            ),
        )?;
        say(
            progress,
            format!(
                "waiting for {} (container {name}) to become healthy",
                release.version
            ),
        );
        let deadline = Instant::now() + self.cfg.start_timeout;
        let t0 = Instant::now();
        match self.wait_healthy(slot, None, Some(&handle), deadline).await {
            Ok(()) => {
                self.event(
                    Some(release.id),
                    Some(op),
                    "healthy",
                    format!(
                        "{} is healthy in slot {slot} (container {name}) after {} ms",
                        release.version,
                        t0.elapsed().as_millis()
                    ),
                );
                Ok(())
            }
            Err(why) => {
                let tail = engine.logs_tail(&handle.id, 10).await.unwrap_or_default();
                self.stop_slot(slot, Some(op)).await;
                Err(ExecError::Failed(never_healthy(
                    self.name(),
                    release,
                    &name,
                    &why,
                    &tail,
                )))
            }
        }
    }

    /// After a watcher (re)start: a container recorded in a slot that still runs the
    /// release the ledger says is adopted as it is (no restart); any other container of
    /// this service is removed. Returns the active release's slot, and whether its
    /// container was adopted and answers its health check.
    pub(super) async fn adopt_containers(
        &self,
        active: Option<&Release>,
    ) -> Result<(Option<Slot>, bool), ExecError> {
        let engine = self.engine().await?;
        let failed = |e: crate::docker::DockerError| ExecError::Failed(e.to_string());
        let records = self.ledger().slots(self.name())?;
        let mut active_slot = None;
        let mut adopted_active = false;
        let mut kept: Vec<String> = Vec::new();
        for rec in records {
            let is_active = rec.release_id.is_some() && rec.release_id == active.map(|a| a.id);
            if is_active {
                active_slot = Some(rec.slot);
            }
            let (Some(id), Some(rid)) = (&rec.container, rec.release_id) else {
                self.ledger().clear_slot(self.name(), rec.slot)?;
                continue;
            };
            let state = engine.state(id).await.map_err(failed)?;
            let ours = state.as_ref().is_some_and(|s| {
                s.running
                    && self.owns(&s.labels)
                    && s.labels.get(LABEL_RELEASE) == Some(&rid.to_string())
            });
            if !ours {
                self.ledger().clear_slot(self.name(), rec.slot)?;
                continue;
            }
            let release = self.ledger().release(rid)?;
            let name = self.container_name(Some(rec.slot));
            let handle = Arc::new(ContainerHandle::new(id.clone(), name.clone()));
            self.set_slot(
                rec.slot,
                Some(SlotProc {
                    release: release.clone(),
                    proc: None,
                    container: Some(handle.clone()),
                    warm_until_ms: rec.warm_until_ms,
                }),
            )?;
            self.event(
                Some(rid),
                None,
                "container_adopted",
                format!(
                    "{} in slot {} (container {name}) kept running across the watcher restart: adopted",
                    release.version, rec.slot
                ),
            );
            // A running container gets its full start timeout to answer before it is
            // given up (one missed probe must not cost a restart).
            let deadline = Instant::now() + self.cfg.start_timeout;
            if is_active
                && self
                    .wait_healthy(rec.slot, None, Some(&handle), deadline)
                    .await
                    .is_ok()
            {
                adopted_active = true;
            }
            kept.push(id.clone());
        }
        let mine = self.state_dir_label();
        for c in engine.owned(self.name()).await.map_err(failed)? {
            // Another project's service of the same name is not ours to remove.
            if kept.contains(&c.id) || c.state_dir.as_ref().is_some_and(|d| *d != mine) {
                continue;
            }
            engine
                .stop_and_remove(&c.id, self.cfg.stop_timeout)
                .await
                .map_err(failed)?;
            self.event(
                c.release.as_deref().and_then(|r| r.parse().ok()),
                None,
                "orphan_stopped",
                format!(
                    "removed container {} that no slot records (left by an interrupted operation)",
                    c.name
                ),
            );
        }
        Ok((active_slot, adopted_active))
    }

    /// Stops and removes one of our containers.
    pub(super) async fn stop_container(&self, c: &ContainerHandle) -> process::StopOutcome {
        c.mark_stopping();
        let Ok(engine) = self.engine().await else {
            return process::StopOutcome::NotOurs;
        };
        match engine.stop_and_remove(&c.id, self.cfg.stop_timeout).await {
            Ok(crate::docker::StopOutcome::Stopped) => process::StopOutcome::Terminated,
            Ok(crate::docker::StopOutcome::Killed) => process::StopOutcome::Killed,
            Ok(_) => process::StopOutcome::AlreadyExited,
            Err(e) => {
                tracing::error!(service = %self.name(), container = %c.name, error = %e, "cannot stop the container");
                process::StopOutcome::NotOurs
            }
        }
    }
}

/// The error of a container that never became healthy, with its last log lines.
pub(super) fn never_healthy(
    service: &str,
    release: &Release,
    name: &str,
    why: &str,
    tail: &[String],
) -> String {
    let mut msg = format!(
        "{service} {} never became healthy, so it got no traffic: {why}",
        release.version
    );
    if tail.is_empty() {
        msg.push_str(&format!("\n(container {name} logged nothing)"));
    } else {
        msg.push_str(&format!("\nlast lines of container {name}'s log:"));
        for line in tail {
            msg.push_str(&format!("\n  | {line}"));
        }
    }
    msg
}

/// The login for `reference`'s registry: the Docker config's (what `docker login`
/// stored), else the service's `registry_username` with the password from the
/// environment variable `registry_password_env` names; `None` pulls anonymously.
pub fn registry_credentials(
    d: &DockerConfig,
    reference: &str,
) -> Result<Option<Credentials>, ExecError> {
    let server = registry::registry_of(reference);
    if let Some(c) = registry::docker_config_credentials(&server) {
        return Ok(Some(c));
    }
    let (Some(username), Some(var)) = (&d.registry_username, &d.registry_password_env) else {
        return Ok(None);
    };
    match std::env::var(var) {
        Ok(password) if !password.is_empty() => Ok(Some(Credentials {
            username: username.clone(),
            password,
            server,
        })),
        _ => Err(ExecError::Failed(format!(
            "registry_password_env names {var}, and {var} is not set (or empty) in the \
             environment of the watcher: export it before `ripcord watch` starts"
        ))),
    }
}

/// A failed pull, with what to do about it.
fn pull_failed(
    service: &str,
    version: &str,
    e: &crate::docker::DockerError,
    d: &DockerConfig,
) -> String {
    if matches!(e, crate::docker::DockerError::PullTimeout { .. }) {
        return format!(
            "cannot get the image of {service} {version} (not on this engine): {e}: the registry \
             is slow or does not answer; raise pull_timeout, or build / load the image on this \
             engine"
        );
    }
    let login = if d.registry_username.is_some() {
        "check registry_username and the password in registry_password_env"
    } else {
        "if the registry needs a login, `docker login` it (for the user the watcher runs as, \
         or DOCKER_CONFIG) or set registry_username and registry_password_env in the docker table"
    };
    format!(
        "cannot get the image of {service} {version} (not on this engine): {e}; {login}, or \
         build / load the image on this engine"
    )
}

/// `sha256:0123456789ab…` shortened to `0123456789ab` for people.
pub fn short_id(id: &str) -> &str {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    &hex[..hex.len().min(12)]
}

pub(super) fn read_snapshot(
    path: &Path,
    release: &Release,
) -> Result<Vec<(String, String)>, ExecError> {
    envfile::read(path).map_err(|e| {
        ExecError::Failed(format!(
            "the env snapshot of {} is missing or unreadable ({e}): ripcord will not start it with \
             today's env file instead; `ripcord doctor {}` checks every release's snapshot",
            release.version, release.service
        ))
    })
}
