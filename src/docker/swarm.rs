//! Single-node Swarm helpers: init/leave a local swarm, create a replicated
//! service, change its image, let the engine roll it back, list its tasks.
//!
//! Publishing: the Swarm API has no host-IP field for published ports, so a
//! service port is published on all interfaces whichever mode is used
//! (`ingress` or `host`). Callers that must stay on loopback leave
//! [`SwarmServiceSpec::published_port`] as `None`.

use std::collections::{BTreeMap, HashMap};

use bollard::models::{
    EndpointPortConfig, EndpointPortConfigProtocolEnum, EndpointPortConfigPublishModeEnum,
    EndpointSpec, LocalNodeState, NetworkAttachmentConfig, ServiceSpec, ServiceSpecMode,
    ServiceSpecModeReplicated, ServiceSpecUpdateConfig, ServiceSpecUpdateConfigFailureActionEnum,
    ServiceSpecUpdateConfigOrderEnum, SwarmInitRequest, TaskSpec, TaskSpecContainerSpec,
};
use bollard::query_parameters::{
    InspectServiceOptions, LeaveSwarmOptions, ListTasksOptions, UpdateServiceOptions,
};

use super::{DockerError, Engine};

/// A service label ripcord sets when it changes only the replica count (a restore stops
/// and restarts the service that way). The engine keeps that scale as the previous spec,
/// so its own rollback would then only change the replicas: a rollback goes by an
/// explicit update instead. The next release's update removes the label.
pub const LABEL_SCALED: &str = "ripcord.scaled";

/// How a swarm service publishes its port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PublishMode {
    /// Routing mesh: every node listens on the port (all interfaces).
    Ingress,
    /// Only nodes running a task listen, bound directly by the task (all interfaces).
    Host,
}

/// A replicated swarm service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SwarmServiceSpec {
    pub name: String,
    pub image: String,
    pub env: Vec<(String, String)>,
    /// Host port and mode; `None` publishes nothing.
    pub published_port: Option<(u16, PublishMode)>,
    pub target_port: u16,
    pub replicas: u64,
    /// Service labels (also set on the task containers).
    pub labels: BTreeMap<String, String>,
    /// `continue` | `pause` | `rollback`.
    pub update_failure_action: Option<String>,
    /// How long a new task is watched for failure after an update.
    pub monitor_secs: u64,
    /// Run docker-init as the tasks' PID 1 (so SIGTERM stops the app at once).
    pub init: bool,
    /// SIGTERM-to-SIGKILL grace period for tasks; `None` keeps the engine's 10 s.
    pub stop_grace_secs: Option<u64>,
    /// Run the tasks in the host's network namespace (the app binds its own address,
    /// e.g. a loopback one, and nothing is published).
    pub host_network: bool,
    /// The registry login the engine hands to the nodes that pull the image (a private
    /// registry: without it, only a node that already has the image can run a task).
    pub registry_auth: Option<super::registry::Credentials>,
}

/// One task of a service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskInfo {
    pub id: String,
    pub image: String,
    /// Observed state: `running`, `failed`, `shutdown`, ...
    pub state: String,
    /// What the orchestrator wants: `running`, `shutdown`, ...
    pub desired_state: String,
    pub container_id: Option<String>,
    pub slot: Option<i64>,
    pub exit_code: Option<i64>,
    pub message: Option<String>,
    /// The task's `ripcord.release` label (which release it runs).
    pub release: Option<String>,
}

impl Engine {
    /// Makes this engine a single-node swarm manager advertising 127.0.0.1,
    /// unless it already is in a swarm. True when this call created it.
    pub async fn swarm_init_local(&self) -> Result<bool, DockerError> {
        if self.describe().await?.swarm_active {
            return Ok(false);
        }
        let info = self
            .docker
            .info()
            .await
            .map_err(self.err("info", "engine", ""))?;
        let state = info.swarm.and_then(|s| s.local_node_state);
        if matches!(
            state,
            Some(LocalNodeState::PENDING | LocalNodeState::LOCKED | LocalNodeState::ERROR)
        ) {
            return Err(DockerError::Unexpected {
                op: "swarm init",
                detail: format!("node is in swarm state {state:?}"),
            });
        }
        self.docker
            .init_swarm(SwarmInitRequest {
                listen_addr: Some("127.0.0.1:2377".to_string()),
                advertise_addr: Some("127.0.0.1".to_string()),
                ..Default::default()
            })
            .await
            .map_err(self.err("swarm init", "swarm", ""))?;
        Ok(true)
    }

    /// Leaves the swarm (forced, also for the last manager).
    pub async fn swarm_leave(&self) -> Result<(), DockerError> {
        match self
            .docker
            .leave_swarm(Some(LeaveSwarmOptions { force: true }))
            .await
            .map_err(self.err("swarm leave", "swarm", ""))
        {
            Ok(()) => Ok(()),
            // 503: "This node is not part of a swarm".
            Err(DockerError::Api { status: 503, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Creates a replicated service; returns its id.
    pub async fn service_create(&self, spec: &SwarmServiceSpec) -> Result<String, DockerError> {
        let failure_action = match spec.update_failure_action.as_deref() {
            None => None,
            Some("continue") => Some(ServiceSpecUpdateConfigFailureActionEnum::CONTINUE),
            Some("pause") => Some(ServiceSpecUpdateConfigFailureActionEnum::PAUSE),
            Some("rollback") => Some(ServiceSpecUpdateConfigFailureActionEnum::ROLLBACK),
            Some(other) => {
                return Err(DockerError::InvalidSpec(format!(
                    "update failure action {other:?} (want continue|pause|rollback)"
                )));
            }
        };
        let replicas = i64::try_from(spec.replicas)
            .map_err(|_| DockerError::InvalidSpec(format!("replicas {}", spec.replicas)))?;
        let monitor_ns = i64::try_from(spec.monitor_secs)
            .ok()
            .and_then(|s| s.checked_mul(1_000_000_000))
            .ok_or_else(|| DockerError::InvalidSpec(format!("monitor {}s", spec.monitor_secs)))?;
        let grace_ns = match spec.stop_grace_secs {
            None => None,
            Some(s) => Some(
                i64::try_from(s)
                    .ok()
                    .and_then(|s| s.checked_mul(1_000_000_000))
                    .ok_or_else(|| DockerError::InvalidSpec(format!("stop grace {s}s")))?,
            ),
        };
        let labels: HashMap<String, String> = spec
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let ports = spec.published_port.map(|(port, mode)| {
            vec![EndpointPortConfig {
                protocol: Some(EndpointPortConfigProtocolEnum::TCP),
                target_port: Some(i64::from(spec.target_port)),
                published_port: Some(i64::from(port)),
                publish_mode: Some(match mode {
                    PublishMode::Ingress => EndpointPortConfigPublishModeEnum::INGRESS,
                    PublishMode::Host => EndpointPortConfigPublishModeEnum::HOST,
                }),
                ..Default::default()
            }]
        });
        let service = ServiceSpec {
            name: Some(spec.name.clone()),
            labels: Some(labels.clone()),
            task_template: Some(TaskSpec {
                container_spec: Some(TaskSpecContainerSpec {
                    image: Some(spec.image.clone()),
                    labels: Some(labels),
                    env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
                    init: Some(spec.init),
                    stop_grace_period: grace_ns,
                    ..Default::default()
                }),
                networks: spec.host_network.then(|| {
                    vec![NetworkAttachmentConfig {
                        target: Some("host".to_string()),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            }),
            mode: Some(ServiceSpecMode {
                replicated: Some(ServiceSpecModeReplicated {
                    replicas: Some(replicas),
                }),
                ..Default::default()
            }),
            update_config: Some(ServiceSpecUpdateConfig {
                parallelism: Some(1),
                failure_action,
                monitor: Some(monitor_ns),
                order: Some(ServiceSpecUpdateConfigOrderEnum::STOP_FIRST),
                ..Default::default()
            }),
            endpoint_spec: ports.map(|p| EndpointSpec {
                ports: Some(p),
                ..Default::default()
            }),
            ..Default::default()
        };
        let created = self
            .docker
            .create_service(service, spec.registry_auth.as_ref().map(|c| c.to_bollard()))
            .await
            .map_err(self.err("service create", "image", &spec.image))?;
        created.id.ok_or_else(|| DockerError::Unexpected {
            op: "service create",
            detail: "no ID in response".to_string(),
        })
    }

    /// Reads the current spec and version, swaps the task image, updates.
    pub async fn service_update_image(&self, name: &str, image: &str) -> Result<(), DockerError> {
        let (mut spec, version) = self.service_spec(name).await?;
        let template = spec.task_template.get_or_insert_with(Default::default);
        let container = template.container_spec.get_or_insert_with(Default::default);
        container.image = Some(image.to_string());
        self.docker
            .update_service(
                name,
                spec,
                UpdateServiceOptions {
                    version,
                    ..Default::default()
                },
                None,
            )
            .await
            .map(|_| ())
            .map_err(self.err("service update", "service", name))
    }

    /// Sets the task image, environment and labels in one update (a release: its image
    /// and its own env snapshot).
    pub async fn service_set(
        &self,
        name: &str,
        image: &str,
        env: &[(String, String)],
        labels: &BTreeMap<String, String>,
        registry_auth: Option<&super::registry::Credentials>,
    ) -> Result<(), DockerError> {
        let (mut spec, version) = self.service_spec(name).await?;
        let template = spec.task_template.get_or_insert_with(Default::default);
        let container = template.container_spec.get_or_insert_with(Default::default);
        container.image = Some(image.to_string());
        container.env = Some(env.iter().map(|(k, v)| format!("{k}={v}")).collect());
        let mut l = container.labels.clone().unwrap_or_default();
        l.extend(labels.iter().map(|(k, v)| (k.clone(), v.clone())));
        container.labels = Some(l.clone());
        let mut sl = spec.labels.clone().unwrap_or_default();
        sl.extend(labels.iter().map(|(k, v)| (k.clone(), v.clone())));
        sl.remove(LABEL_SCALED);
        spec.labels = Some(sl);
        // A release with no task never runs: a service left at 0 replicas (a restore
        // that could not give them back) gets one in the same update.
        if let Some(r) = spec.mode.as_mut().and_then(|m| m.replicated.as_mut())
            && r.replicas == Some(0)
        {
            r.replicas = Some(1);
        }
        self.docker
            .update_service(
                name,
                spec,
                UpdateServiceOptions {
                    version,
                    ..Default::default()
                },
                registry_auth.map(|c| c.to_bollard()),
            )
            .await
            .map(|_| ())
            .map_err(self.err("service update", "service", name))
    }

    /// The service's labels, or `None` when no service has that name.
    pub async fn service_labels(
        &self,
        name: &str,
    ) -> Result<Option<BTreeMap<String, String>>, DockerError> {
        match self.service_spec(name).await {
            Ok((spec, _)) => Ok(Some(spec.labels.unwrap_or_default().into_iter().collect())),
            Err(DockerError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The service's replica count (replicated mode).
    pub async fn service_replicas(&self, name: &str) -> Result<Option<u64>, DockerError> {
        let (spec, _) = self.service_spec(name).await?;
        Ok(spec
            .mode
            .and_then(|m| m.replicated)
            .and_then(|r| r.replicas)
            .and_then(|n| u64::try_from(n).ok()))
    }

    /// Sets the service's replica count (0 stops every task; the spec stays).
    pub async fn service_scale(&self, name: &str, replicas: u64) -> Result<(), DockerError> {
        let (mut spec, version) = self.service_spec(name).await?;
        let n = i64::try_from(replicas)
            .map_err(|_| DockerError::InvalidSpec(format!("replicas {replicas}")))?;
        spec.mode = Some(ServiceSpecMode {
            replicated: Some(ServiceSpecModeReplicated { replicas: Some(n) }),
            ..Default::default()
        });
        spec.labels
            .get_or_insert_with(Default::default)
            .insert(LABEL_SCALED.to_string(), "true".to_string());
        self.docker
            .update_service(
                name,
                spec,
                UpdateServiceOptions {
                    version,
                    ..Default::default()
                },
                None,
            )
            .await
            .map(|_| ())
            .map_err(self.err("service scale", "service", name))
    }

    /// The engine's own rollback to the service's PreviousSpec
    /// (`POST /services/{id}/update?rollback=previous`).
    pub async fn service_rollback(&self, name: &str) -> Result<(), DockerError> {
        let (spec, version) = self.service_spec(name).await?;
        self.docker
            .update_service(
                name,
                spec,
                UpdateServiceOptions {
                    version,
                    rollback: Some("previous".to_string()),
                    ..Default::default()
                },
                None,
            )
            .await
            .map(|_| ())
            .map_err(self.err("service rollback", "service", name))
    }

    /// The service's current image (as stored in its spec, may carry `@sha256:`).
    pub async fn service_image(&self, name: &str) -> Result<Option<String>, DockerError> {
        let (spec, _) = self.service_spec(name).await?;
        Ok(spec
            .task_template
            .and_then(|t| t.container_spec)
            .and_then(|c| c.image))
    }

    /// Update status of the service: `updating`, `completed`, `paused`,
    /// `rollback_started`, `rollback_completed`, ... (None before any update).
    pub async fn service_update_state(&self, name: &str) -> Result<Option<String>, DockerError> {
        let svc = self
            .docker
            .inspect_service(name, None::<InspectServiceOptions>)
            .await
            .map_err(self.err("service inspect", "service", name))?;
        Ok(svc
            .update_status
            .and_then(|u| u.state)
            .map(|s| s.to_string())
            .filter(|s| !s.is_empty()))
    }

    async fn service_spec(&self, name: &str) -> Result<(ServiceSpec, i32), DockerError> {
        let svc = self
            .docker
            .inspect_service(name, None::<InspectServiceOptions>)
            .await
            .map_err(self.err("service inspect", "service", name))?;
        let version = svc
            .version
            .and_then(|v| v.index)
            .and_then(|i| i32::try_from(i).ok())
            .ok_or_else(|| DockerError::Unexpected {
                op: "service inspect",
                detail: format!("no usable Version.Index for {name}"),
            })?;
        let spec = svc.spec.ok_or_else(|| DockerError::Unexpected {
            op: "service inspect",
            detail: format!("no Spec for {name}"),
        })?;
        Ok((spec, version))
    }

    /// All tasks of the service (current and historic), newest slot order not guaranteed.
    pub async fn service_tasks(&self, name: &str) -> Result<Vec<TaskInfo>, DockerError> {
        let filters = HashMap::from([("service".to_string(), vec![name.to_string()])]);
        let tasks = self
            .docker
            .list_tasks(Some(ListTasksOptions {
                filters: Some(filters),
            }))
            .await
            .map_err(self.err("task list", "service", name))?;
        Ok(tasks
            .into_iter()
            .map(|t| {
                let status = t.status.unwrap_or_default();
                let cs = status.container_status.unwrap_or_default();
                let cspec = t.spec.and_then(|s| s.container_spec);
                TaskInfo {
                    id: t.id.unwrap_or_default(),
                    release: cspec
                        .as_ref()
                        .and_then(|c| c.labels.as_ref())
                        .and_then(|l| l.get(super::LABEL_RELEASE).cloned()),
                    image: cspec.and_then(|c| c.image).unwrap_or_default(),
                    state: status.state.map(|s| s.to_string()).unwrap_or_default(),
                    desired_state: t.desired_state.map(|s| s.to_string()).unwrap_or_default(),
                    container_id: cs.container_id.filter(|c| !c.is_empty()),
                    slot: t.slot,
                    exit_code: cs.exit_code,
                    message: status.message.filter(|m| !m.is_empty()),
                }
            })
            .collect())
    }

    /// Removes the service (its tasks' containers go with it).
    pub async fn service_remove(&self, name: &str) -> Result<(), DockerError> {
        self.docker
            .delete_service(name)
            .await
            .map_err(self.err("service remove", "service", name))
    }
}
