//! A thin, typed layer over the Docker Engine API (through `bollard`), with only
//! what ripcord needs: run/inspect/stop containers that carry ripcord labels,
//! watch their events, read their CPU use, resolve and build images, and (in
//! [`swarm`]) drive a single-node Swarm service.
//!
//! Every call goes to the engine named by `DOCKER_HOST` (or the local socket),
//! and the client API version is negotiated down to what the engine speaks.

mod build;
pub mod manifest;
mod ops;
pub mod registry;
pub mod swarm;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, ContainerSummaryStateEnum, EventMessage, HealthConfig, HostConfig,
    LocalNodeState, PortBinding, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptions, EventsOptions, InspectContainerOptions, ListContainersOptions,
    RemoveContainerOptions, RemoveImageOptions, RenameContainerOptions, StartContainerOptions,
    StatsOptions, StopContainerOptions,
};
use futures_util::{Stream, StreamExt};

pub use build::Healthcheck;
pub use swarm::{PublishMode, SwarmServiceSpec, TaskInfo};

/// Label that ties a container to a ripcord service.
pub const LABEL_SERVICE: &str = "ripcord.service";
/// Label that names the release a container runs.
pub const LABEL_RELEASE: &str = "ripcord.release";
/// Label that names the state dir of the ripcord that made a container: two projects
/// with a service of the same name on one engine never take each other's containers.
pub const LABEL_STATE_DIR: &str = "ripcord.state_dir";

/// Where bollard connects when `DOCKER_HOST` is unset.
const DEFAULT_HOST: &str = "unix:///var/run/docker.sock";

/// Errors from the engine layer.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// No engine answered (socket missing, connection refused, timed out).
    #[error("no Docker engine answered at {host}: {reason}")]
    Unreachable { host: String, reason: String },
    /// The named object (image, container, service) does not exist.
    #[error("{kind} not found: {reference}")]
    NotFound {
        kind: &'static str,
        reference: String,
    },
    /// The engine refused because of a conflict (name in use, image in use, ...).
    #[error("conflict during {op}: {message}")]
    Conflict { op: &'static str, message: String },
    /// Any other answer from the engine that is not a success.
    #[error("docker engine refused {op} (HTTP {status}): {message}")]
    Api {
        op: &'static str,
        status: u16,
        message: String,
    },
    /// A transport or decoding failure that is not "nobody answered".
    #[error("docker {op} failed: {source}")]
    Client {
        op: &'static str,
        #[source]
        source: BollardError,
    },
    /// The registry (through the engine) refused a pull or a digest lookup.
    #[error("cannot pull {reference}: {detail}")]
    Pull { reference: String, detail: String },
    /// The image build reported an error.
    #[error("image build failed: {0}")]
    Build(String),
    /// The caller's spec cannot be expressed to the engine.
    #[error("invalid spec: {0}")]
    InvalidSpec(String),
    /// Reading a local file failed.
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The engine answered, but without something it always should send.
    #[error("unexpected engine response to {op}: {detail}")]
    Unexpected { op: &'static str, detail: String },
    #[error(
        "pulling {reference} took longer than {after} (`pull_timeout` in [service.NAME.docker]); {progress}"
    )]
    PullTimeout {
        reference: String,
        after: String,
        progress: String,
    },
}

impl DockerError {
    /// True for [`DockerError::NotFound`].
    pub fn is_not_found(&self) -> bool {
        matches!(self, DockerError::NotFound { .. })
    }
}

/// A connected, version-negotiated engine client. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Engine {
    docker: Docker,
    host: String,
}

/// What the engine says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineInfo {
    /// Engine (server) version, e.g. `20.10.24+dfsg1`.
    pub version: String,
    /// The engine's own API version, e.g. `1.41`.
    pub api_version: String,
    /// The API version this client speaks after negotiation.
    pub client_api_version: String,
    /// True when this node is part of an active swarm.
    pub swarm_active: bool,
}

/// A resolved local image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageInfo {
    /// Content id, `sha256:...`.
    pub id: String,
    pub repo_digests: Vec<String>,
    pub tags: Vec<String>,
}

/// An optional container health check (`HEALTHCHECK CMD ...`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    /// argv run inside the container (exec form, no shell).
    pub cmd: Vec<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub retries: u32,
    pub start_period: Duration,
}

/// What to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerSpec {
    pub name: String,
    /// An image id (`sha256:...`) or reference.
    pub image: String,
    pub env: Vec<(String, String)>,
    /// Overrides the image's CMD (arguments to its ENTRYPOINT).
    pub cmd: Option<Vec<String>>,
    /// TCP port inside the container.
    pub container_port: u16,
    /// Host address to publish on, normally `127.0.0.1`.
    pub host_ip: String,
    /// Host port; 0 lets the engine pick one.
    pub host_port: u16,
    /// Memory limit; swap is set to the same value so swap cannot hide an OOM.
    pub memory_limit_mb: Option<u64>,
    /// `no` | `on-failure[:N]` | `always` | `unless-stopped`.
    pub restart: Option<String>,
    /// Caller passes [`LABEL_SERVICE`] / [`LABEL_RELEASE`].
    pub labels: BTreeMap<String, String>,
    /// Run docker-init as PID 1 (forwards signals, reaps zombies).
    pub init: bool,
    /// Default timeout for `docker stop` on this container.
    pub stop_timeout_secs: Option<u64>,
    /// Optional health check.
    pub healthcheck: Option<HealthCheck>,
}

impl ContainerSpec {
    /// A spec with the given name, image and port mapping on 127.0.0.1, and
    /// everything else empty/off.
    pub fn new(name: &str, image: &str, container_port: u16, host_port: u16) -> Self {
        ContainerSpec {
            name: name.to_string(),
            image: image.to_string(),
            env: Vec::new(),
            cmd: None,
            container_port,
            host_ip: "127.0.0.1".to_string(),
            host_port,
            memory_limit_mb: None,
            restart: None,
            labels: BTreeMap::new(),
            init: false,
            stop_timeout_secs: None,
            healthcheck: None,
        }
    }
}

/// A container's state as the engine reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerState {
    pub id: String,
    /// Name without the leading `/`.
    pub name: String,
    pub running: bool,
    pub exit_code: Option<i64>,
    pub oom_killed: bool,
    pub restarting: bool,
    /// Host PID of the container's PID 1, when running.
    pub pid: Option<i64>,
    /// `starting` | `healthy` | `unhealthy` when a health check is configured.
    pub health: Option<String>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub restart_count: i64,
    pub labels: BTreeMap<String, String>,
    /// Image id (`sha256:...`) the container runs.
    pub image: String,
}

/// How [`Engine::stop_and_remove`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopOutcome {
    /// It was not running; it was removed.
    AlreadyExited,
    /// It exited within the timeout and was removed.
    Stopped,
    /// It had to be killed after the timeout, then was removed.
    Killed,
    /// It did not exist (any more).
    Gone,
}

/// A container carrying `ripcord.service=<service>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedContainer {
    pub id: String,
    pub name: String,
    pub release: Option<String>,
    /// The state dir of the ripcord that made it (`ripcord.state_dir`); none on a
    /// container made before that label existed.
    pub state_dir: Option<String>,
    pub running: bool,
}

/// What happened to a container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventKind {
    Oom,
    Die {
        exit_code: Option<i64>,
    },
    /// `healthy` | `unhealthy` | `starting`.
    Health(String),
    Start,
}

/// One container event of a watched service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerEvent {
    pub id: String,
    /// Container name when the engine reports it.
    pub name: Option<String>,
    pub release: Option<String>,
    pub kind: EventKind,
    /// Milliseconds since the Unix epoch.
    pub time_ms: i64,
}

/// True when the error means nobody is answering (as opposed to an answer we dislike).
fn is_unreachable(e: &BollardError) -> bool {
    match e {
        BollardError::SocketNotFoundError(_)
        | BollardError::RequestTimeoutError
        | BollardError::IOError { .. } => true,
        BollardError::HyperLegacyError { err } => err.is_connect(),
        _ => false,
    }
}

impl Engine {
    /// Connects with local defaults (`DOCKER_HOST` honoured: `unix://`, `tcp://`,
    /// `http://`) and negotiates the API version down to the engine's.
    pub async fn connect() -> Result<Engine, DockerError> {
        let env_host = std::env::var("DOCKER_HOST")
            .ok()
            .filter(|h| !h.trim().is_empty());
        Engine::connect_host(env_host.as_deref()).await
    }

    /// Connects to `host` (`unix:///path`, `tcp://h:p`, `http://h:p`), or to the
    /// local socket when `None`, and negotiates the API version.
    pub async fn connect_host(host: Option<&str>) -> Result<Engine, DockerError> {
        let host_name = host.unwrap_or(DEFAULT_HOST).to_string();
        let docker = match host {
            Some(h) => Docker::connect_with_host(h),
            None => Docker::connect_with_local_defaults(),
        };
        let unreachable = |e: BollardError| DockerError::Unreachable {
            host: host_name.clone(),
            reason: e.to_string(),
        };
        let docker = docker.map_err(unreachable)?;
        let docker = docker.negotiate_version().await.map_err(|e| {
            if is_unreachable(&e) {
                unreachable(e)
            } else {
                DockerError::Client {
                    op: "version negotiation",
                    source: e,
                }
            }
        })?;
        Ok(Engine {
            docker,
            host: host_name,
        })
    }

    /// The underlying bollard client, for calls this module does not wrap.
    pub fn client(&self) -> &Docker {
        &self.docker
    }

    /// The host/socket this engine was reached at.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Maps a bollard error: unreachable engine, 404 → NotFound(kind, reference),
    /// 409 → Conflict, other statuses → Api.
    fn err(
        &self,
        op: &'static str,
        kind: &'static str,
        reference: &str,
    ) -> impl FnOnce(BollardError) -> DockerError + use<> {
        let host = self.host.clone();
        let reference = reference.to_string();
        move |e| match e {
            BollardError::DockerResponseServerError {
                status_code: 404, ..
            } => DockerError::NotFound { kind, reference },
            BollardError::DockerResponseServerError {
                status_code: 409,
                message,
            } => DockerError::Conflict { op, message },
            BollardError::DockerResponseServerError {
                status_code,
                message,
            } => DockerError::Api {
                op,
                status: status_code,
                message,
            },
            e if is_unreachable(&e) => DockerError::Unreachable {
                host,
                reason: e.to_string(),
            },
            e => DockerError::Client { op, source: e },
        }
    }

    /// Engine version, API version and whether this node is in an active swarm.
    pub async fn describe(&self) -> Result<EngineInfo, DockerError> {
        let v = self
            .docker
            .version()
            .await
            .map_err(self.err("version", "engine", ""))?;
        let info = self
            .docker
            .info()
            .await
            .map_err(self.err("info", "engine", ""))?;
        let swarm_active = info
            .swarm
            .and_then(|s| s.local_node_state)
            .is_some_and(|s| s == LocalNodeState::ACTIVE);
        let cv = self.docker.client_version();
        Ok(EngineInfo {
            version: v.version.unwrap_or_default(),
            api_version: v.api_version.unwrap_or_default(),
            client_api_version: format!("{}.{}", cv.major_version, cv.minor_version),
            swarm_active,
        })
    }

    /// Resolves a local image reference (tag, id or digest) to its id.
    /// A missing image is [`DockerError::NotFound`].
    pub async fn resolve_image(&self, reference: &str) -> Result<ImageInfo, DockerError> {
        let img = self
            .docker
            .inspect_image(reference)
            .await
            .map_err(self.err("image inspect", "image", reference))?;
        let id = img.id.ok_or_else(|| DockerError::Unexpected {
            op: "image inspect",
            detail: format!("no Id for {reference}"),
        })?;
        Ok(ImageInfo {
            id,
            repo_digests: img.repo_digests.unwrap_or_default(),
            tags: img.repo_tags.unwrap_or_default(),
        })
    }

    /// True when the image (id or reference) is present locally.
    pub async fn image_present(&self, id: &str) -> Result<bool, DockerError> {
        match self.resolve_image(id).await {
            Ok(_) => Ok(true),
            Err(DockerError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Creates and starts a container. When start fails, the created container
    /// is removed again and the start error returned.
    pub async fn run(&self, spec: &ContainerSpec) -> Result<String, DockerError> {
        let body = create_body(spec)?;
        let created = self
            .docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(spec.name.clone()),
                    ..Default::default()
                }),
                body,
            )
            .await
            .map_err(self.err("container create", "image", &spec.image))?;
        let id = created.id;
        if let Err(e) = self
            .docker
            .start_container(&id, None::<StartContainerOptions>)
            .await
        {
            let start_err = self.err("container start", "container", &id)(e);
            // Best effort: the start error is what the caller needs to see.
            let _ = self
                .docker
                .remove_container(
                    &id,
                    Some(RemoveContainerOptions {
                        force: true,
                        v: true,
                        ..Default::default()
                    }),
                )
                .await;
            return Err(start_err);
        }
        Ok(id)
    }

    /// Inspects a container; `None` when it does not exist.
    pub async fn state(&self, id_or_name: &str) -> Result<Option<ContainerState>, DockerError> {
        let c = match self
            .docker
            .inspect_container(id_or_name, None::<InspectContainerOptions>)
            .await
            .map_err(self.err("container inspect", "container", id_or_name))
        {
            Ok(c) => c,
            Err(DockerError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let st = c.state.unwrap_or_default();
        let running = st.running.unwrap_or(false);
        Ok(Some(ContainerState {
            id: c.id.unwrap_or_default(),
            name: c
                .name
                .map(|n| n.trim_start_matches('/').to_string())
                .unwrap_or_default(),
            running,
            exit_code: if running { None } else { st.exit_code },
            oom_killed: st.oom_killed.unwrap_or(false),
            restarting: st.restarting.unwrap_or(false),
            pid: st.pid.filter(|p| *p > 0),
            health: st
                .health
                .and_then(|h| h.status)
                .map(|s| s.to_string())
                .filter(|s| !s.is_empty() && s != "none"),
            started_at: st.started_at.filter(|s| !s.starts_with("0001-")),
            finished_at: st.finished_at.filter(|s| !s.starts_with("0001-")),
            restart_count: c.restart_count.unwrap_or(0),
            labels: c
                .config
                .and_then(|cfg| cfg.labels)
                .unwrap_or_default()
                .into_iter()
                .collect(),
            image: c.image.unwrap_or_default(),
        }))
    }

    /// Stops (SIGTERM, or the image's stop signal; SIGKILL after `timeout`) and
    /// removes a container.
    pub async fn stop_and_remove(
        &self,
        id: &str,
        timeout: Duration,
    ) -> Result<StopOutcome, DockerError> {
        let Some(before) = self.state(id).await? else {
            return Ok(StopOutcome::Gone);
        };
        let mut outcome = StopOutcome::AlreadyExited;
        if before.running || before.restarting {
            // Whole seconds is what the API takes; round up so we never kill early.
            let secs = timeout.as_millis().div_ceil(1000);
            let t = i32::try_from(secs).unwrap_or(i32::MAX);
            // bollard's request timeout (120 s default) must outlast the stop timeout.
            let docker = self
                .docker
                .clone()
                .with_timeout(Duration::from_secs(secs as u64 + 60));
            let started = Instant::now();
            match docker
                .stop_container(
                    id,
                    Some(StopContainerOptions {
                        t: Some(t),
                        signal: None,
                    }),
                )
                .await
                .map_err(self.err("container stop", "container", id))
            {
                Ok(()) => {}
                Err(DockerError::NotFound { .. }) => return Ok(StopOutcome::Gone),
                Err(e) => return Err(e),
            }
            let elapsed = started.elapsed();
            let after = self.state(id).await?;
            let killed = after.as_ref().and_then(|s| s.exit_code) == Some(137)
                && elapsed + Duration::from_millis(250) >= Duration::from_secs(secs as u64);
            outcome = if killed {
                StopOutcome::Killed
            } else {
                StopOutcome::Stopped
            };
        }
        match self
            .docker
            .remove_container(
                id,
                Some(RemoveContainerOptions {
                    force: true,
                    v: true,
                    ..Default::default()
                }),
            )
            .await
            .map_err(self.err("container remove", "container", id))
        {
            Ok(()) => Ok(outcome),
            // Removed meanwhile (auto-remove or a concurrent caller).
            Err(DockerError::NotFound { .. }) => Ok(outcome),
            Err(DockerError::Conflict { message, .. })
                if message.contains("already in progress") =>
            {
                Ok(outcome)
            }
            Err(e) => Err(e),
        }
    }

    /// Renames a container.
    pub async fn rename(&self, id: &str, new_name: &str) -> Result<(), DockerError> {
        self.docker
            .rename_container(
                id,
                RenameContainerOptions {
                    name: new_name.to_string(),
                },
            )
            .await
            .map_err(self.err("container rename", "container", id))
    }

    /// All containers (running or not) labelled `ripcord.service=<service>`.
    pub async fn owned(&self, service: &str) -> Result<Vec<OwnedContainer>, DockerError> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![format!("{LABEL_SERVICE}={service}")],
        )]);
        let list = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .map_err(self.err("container list", "containers", service))?;
        Ok(list
            .into_iter()
            .map(|c| {
                let labels = c.labels.unwrap_or_default();
                OwnedContainer {
                    id: c.id.unwrap_or_default(),
                    name: c
                        .names
                        .and_then(|n| n.into_iter().next())
                        .map(|n| n.trim_start_matches('/').to_string())
                        .unwrap_or_default(),
                    release: labels.get(LABEL_RELEASE).cloned(),
                    state_dir: labels.get(LABEL_STATE_DIR).cloned(),
                    running: matches!(
                        c.state,
                        Some(ContainerSummaryStateEnum::RUNNING)
                            | Some(ContainerSummaryStateEnum::RESTARTING)
                    ),
                }
            })
            .collect())
    }

    /// Live events (start, die, oom, health_status) of containers labelled
    /// `ripcord.service=<service>`, from now on. The stream ends when the
    /// engine closes the connection; an error item is yielded first if it broke.
    /// The request is sent on first poll.
    pub fn events(
        &self,
        service: &str,
    ) -> impl Stream<Item = Result<ContainerEvent, DockerError>> + Send + use<> {
        self.events_since(service, None)
    }

    /// Like [`Engine::events`], but first replays matching events since `since`
    /// (the engine keeps only a bounded backlog), then goes on live. Avoids
    /// the race between subscribing and acting.
    pub fn events_since(
        &self,
        service: &str,
        since: Option<std::time::SystemTime>,
    ) -> impl Stream<Item = Result<ContainerEvent, DockerError>> + Send + use<> {
        let since = since.map(|t| {
            let d = t
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or(Duration::ZERO);
            format!("{}.{:09}", d.as_secs(), d.subsec_nanos())
        });
        let filters = HashMap::from([
            ("type".to_string(), vec!["container".to_string()]),
            (
                "label".to_string(),
                vec![format!("{LABEL_SERVICE}={service}")],
            ),
            (
                "event".to_string(),
                ["die", "oom", "health_status", "start"]
                    .map(String::from)
                    .to_vec(),
            ),
        ]);
        let map_err = self.err("events", "events", service);
        let mut map_err = Some(map_err);
        // The events request carries no timeout beyond getting the response headers.
        self.docker
            .events(Some(EventsOptions {
                filters: Some(filters),
                since,
                until: None,
            }))
            .filter_map(move |item| {
                let out = match item {
                    Ok(msg) => parse_event(msg).map(Ok),
                    // Errors end the stream in practice; map the first one fully.
                    Err(e) => Some(Err(match map_err.take() {
                        Some(f) => f(e),
                        None => DockerError::Client {
                            op: "events",
                            source: e,
                        },
                    })),
                };
                std::future::ready(out)
            })
    }

    /// CPU use as a fraction of one core (1.0 = one core fully busy), from
    /// two consecutive samples of the engine's stats collector (1 s apart).
    /// Takes 1–2 s. `None` when the container is not running or the engine
    /// gave no usable sample.
    ///
    /// On engine 20.10 (API 1.41) a `one-shot` sample carries no precpu, and
    /// even a one-shot call waits for the collector's next 1 s tick, so two
    /// one-shot calls are no faster than this single non-one-shot call, whose
    /// answer holds both samples (`cpu_stats` and `precpu_stats`).
    pub async fn cpu_share(&self, id: &str) -> Result<Option<f64>, DockerError> {
        let mut stats = self.docker.stats(
            id,
            Some(StatsOptions {
                stream: false,
                one_shot: false,
            }),
        );
        let Some(first) = stats.next().await else {
            return Ok(None);
        };
        let s = first.map_err(self.err("container stats", "container", id))?;
        Ok(cpu_fraction(
            s.cpu_stats.as_ref(),
            s.precpu_stats.as_ref(),
            s.read.as_deref(),
            s.preread.as_deref(),
        ))
    }

    /// Builds `FROM scratch` + `COPY app /app` + `ENTRYPOINT ["/app"]` from a
    /// (static) binary, tags it, and returns the image id.
    pub async fn build_scratch_image(
        &self,
        tag: &str,
        binary: &std::path::Path,
    ) -> Result<String, DockerError> {
        build::build_scratch_image(self, tag, binary).await
    }

    /// Like [`Engine::build_scratch_image`], with a default `CMD` (the arguments
    /// `/app` gets) and image labels.
    pub async fn build_scratch_image_with(
        &self,
        tag: &str,
        binary: &std::path::Path,
        cmd: &[String],
        labels: &BTreeMap<String, String>,
    ) -> Result<String, DockerError> {
        build::build_scratch_image_with(self, tag, binary, cmd, labels, None).await
    }

    /// Like [`Engine::build_scratch_image_with`], with an exec-form `HEALTHCHECK`.
    pub async fn build_scratch_image_healthcheck(
        &self,
        tag: &str,
        binary: &std::path::Path,
        cmd: &[String],
        labels: &BTreeMap<String, String>,
        health: &Healthcheck,
    ) -> Result<String, DockerError> {
        build::build_scratch_image_with(self, tag, binary, cmd, labels, Some(health)).await
    }

    /// Removes an image by reference or id (not forced: fails with Conflict while
    /// a container uses it). A missing image is [`DockerError::NotFound`].
    pub async fn remove_image(&self, reference: &str) -> Result<(), DockerError> {
        self.docker
            .remove_image(
                reference,
                Some(RemoveImageOptions {
                    force: false,
                    noprune: false,
                    ..Default::default()
                }),
                None,
            )
            .await
            .map(|_| ())
            .map_err(self.err("image remove", "image", reference))
    }
}

/// Translates a [`ContainerSpec`] into the engine's create body.
fn create_body(spec: &ContainerSpec) -> Result<ContainerCreateBody, DockerError> {
    if spec.name.is_empty() {
        return Err(DockerError::InvalidSpec("container name is empty".into()));
    }
    if spec.container_port == 0 {
        return Err(DockerError::InvalidSpec("container port is 0".into()));
    }
    let port_key = format!("{}/tcp", spec.container_port);
    let binding = PortBinding {
        host_ip: Some(spec.host_ip.clone()),
        host_port: Some(if spec.host_port == 0 {
            String::new()
        } else {
            spec.host_port.to_string()
        }),
    };
    let memory = match spec.memory_limit_mb {
        Some(mb) => Some(
            mb.checked_mul(1024 * 1024)
                .and_then(|b| i64::try_from(b).ok())
                .ok_or_else(|| DockerError::InvalidSpec(format!("memory limit {mb} MB")))?,
        ),
        None => None,
    };
    let restart_policy = spec.restart.as_deref().map(parse_restart).transpose()?;
    let healthcheck = match &spec.healthcheck {
        None => None,
        Some(h) => {
            if h.cmd.is_empty() {
                return Err(DockerError::InvalidSpec("empty health check".into()));
            }
            let ns = |d: Duration| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
            let mut test = vec!["CMD".to_string()];
            test.extend(h.cmd.iter().cloned());
            Some(HealthConfig {
                test: Some(test),
                interval: Some(ns(h.interval)),
                timeout: Some(ns(h.timeout)),
                retries: Some(i64::from(h.retries)),
                start_period: Some(ns(h.start_period)),
                start_interval: None,
            })
        }
    };
    let stop_timeout = match spec.stop_timeout_secs {
        Some(s) => Some(
            i64::try_from(s).map_err(|_| DockerError::InvalidSpec(format!("stop timeout {s}")))?,
        ),
        None => None,
    };
    Ok(ContainerCreateBody {
        image: Some(spec.image.clone()),
        env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        cmd: spec.cmd.clone(),
        exposed_ports: Some(vec![port_key.clone()]),
        labels: Some(
            spec.labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        stop_timeout,
        healthcheck,
        host_config: Some(HostConfig {
            port_bindings: Some(HashMap::from([(port_key, Some(vec![binding]))])),
            memory,
            memory_swap: memory,
            restart_policy,
            init: Some(spec.init),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// `no` | `on-failure[:N]` | `always` | `unless-stopped`.
fn parse_restart(s: &str) -> Result<RestartPolicy, DockerError> {
    let (name, count) = match s.split_once(':') {
        Some((n, c)) => (n, Some(c)),
        None => (s, None),
    };
    let name = match name {
        "" | "no" => RestartPolicyNameEnum::NO,
        "always" => RestartPolicyNameEnum::ALWAYS,
        "unless-stopped" => RestartPolicyNameEnum::UNLESS_STOPPED,
        "on-failure" => RestartPolicyNameEnum::ON_FAILURE,
        other => {
            return Err(DockerError::InvalidSpec(format!(
                "restart policy {other:?} (want no|on-failure[:N]|always|unless-stopped)"
            )));
        }
    };
    let maximum_retry_count = match count {
        None => None,
        Some(_) if name != RestartPolicyNameEnum::ON_FAILURE => {
            return Err(DockerError::InvalidSpec(format!(
                "restart policy {s:?}: only on-failure takes a count"
            )));
        }
        Some(c) => Some(
            c.parse::<i64>()
                .ok()
                .filter(|n| *n >= 0)
                .ok_or_else(|| DockerError::InvalidSpec(format!("restart count in {s:?}")))?,
        ),
    };
    Ok(RestartPolicy {
        name: Some(name),
        maximum_retry_count,
    })
}

/// Turns an engine event into a [`ContainerEvent`]; `None` for kinds we ignore.
fn parse_event(msg: EventMessage) -> Option<ContainerEvent> {
    let action = msg.action?;
    let actor = msg.actor.unwrap_or_default();
    let attrs = actor.attributes.unwrap_or_default();
    let kind = if action == "oom" {
        EventKind::Oom
    } else if action == "die" {
        EventKind::Die {
            exit_code: attrs.get("exitCode").and_then(|c| c.parse().ok()),
        }
    } else if action == "start" {
        EventKind::Start
    } else if let Some(status) = action.strip_prefix("health_status") {
        EventKind::Health(status.trim_start_matches(':').trim().to_string())
    } else {
        return None;
    };
    let time_ms = match (msg.time_nano, msg.time) {
        (Some(ns), _) if ns > 0 => ns / 1_000_000,
        (_, Some(s)) => s.saturating_mul(1000),
        _ => 0,
    };
    Some(ContainerEvent {
        id: actor.id.unwrap_or_default(),
        name: attrs.get("name").cloned(),
        release: attrs.get(LABEL_RELEASE).cloned(),
        kind,
        time_ms,
    })
}

/// Fraction of one core from two cumulative CPU samples.
///
/// Uses the docker CLI formula (container delta / host delta × online CPUs),
/// and falls back to container delta / wall-clock delta when the host counter
/// is missing.
fn cpu_fraction(
    cpu: Option<&bollard::models::ContainerCpuStats>,
    pre: Option<&bollard::models::ContainerCpuStats>,
    read: Option<&str>,
    preread: Option<&str>,
) -> Option<f64> {
    let cpu = cpu?;
    let pre = pre?;
    let total = cpu.cpu_usage.as_ref()?.total_usage?;
    let pre_total = pre.cpu_usage.as_ref()?.total_usage?;
    if pre_total == 0 || total < pre_total {
        return None;
    }
    let delta = (total - pre_total) as f64;
    if let (Some(sys), Some(pre_sys)) = (cpu.system_cpu_usage, pre.system_cpu_usage)
        && sys > pre_sys
        && pre_sys > 0
    {
        let cpus = cpu
            .online_cpus
            .filter(|n| *n > 0)
            .map(f64::from)
            .or_else(|| {
                cpu.cpu_usage
                    .as_ref()
                    .and_then(|u| u.percpu_usage.as_ref())
                    .map(|v| v.len() as f64)
            })
            .unwrap_or(1.0);
        return Some(delta / (sys - pre_sys) as f64 * cpus);
    }
    let wall_ns = rfc3339_nanos(read?)? - rfc3339_nanos(preread?)?;
    (wall_ns > 0).then(|| delta / wall_ns as f64)
}

/// Nanoseconds since the epoch for an RFC 3339 time as the engine writes it
/// (`2024-01-02T03:04:05.123456789Z`).
fn rfc3339_nanos(s: &str) -> Option<i128> {
    s.parse::<jiff::Timestamp>()
        .ok()
        .map(jiff::Timestamp::as_nanosecond)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_policies() {
        assert_eq!(
            parse_restart("on-failure:3")
                .ok()
                .and_then(|p| p.maximum_retry_count),
            Some(3)
        );
        assert_eq!(
            parse_restart("always").ok().and_then(|p| p.name),
            Some(RestartPolicyNameEnum::ALWAYS)
        );
        assert!(parse_restart("sometimes").is_err());
        assert!(parse_restart("always:2").is_err());
        assert!(parse_restart("on-failure:x").is_err());
    }

    #[test]
    fn rfc3339() {
        assert_eq!(rfc3339_nanos("1970-01-01T00:00:01.5Z"), Some(1_500_000_000));
        let a = rfc3339_nanos("2024-02-29T23:59:59.999999999Z");
        let b = rfc3339_nanos("2024-03-01T00:00:00Z");
        assert_eq!(b.zip(a).map(|(b, a)| b - a), Some(1));
        // The engine's zero time: the first sample's `preread`.
        assert_eq!(
            rfc3339_nanos("0001-01-01T00:00:00Z"),
            Some(-62_135_596_800_000_000_000)
        );
        assert_eq!(rfc3339_nanos("yesterday"), None);
    }

    #[test]
    fn health_event_parses() {
        let msg = EventMessage {
            action: Some("health_status: unhealthy".into()),
            actor: Some(bollard::models::EventActor {
                id: Some("abc".into()),
                attributes: Some(HashMap::from([(LABEL_RELEASE.into(), "r1".into())])),
            }),
            time_nano: Some(2_000_000_000),
            ..Default::default()
        };
        let ev = parse_event(msg);
        assert_eq!(
            ev.map(|e| (e.kind, e.release, e.time_ms)),
            Some((
                EventKind::Health("unhealthy".into()),
                Some("r1".into()),
                2000
            ))
        );
    }
}
