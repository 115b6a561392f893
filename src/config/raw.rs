//! What stage one read, before cross-key validation, and the typed service it becomes
//! (with the defaults of what was left out) once nothing was found wrong.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::model::{
    Check, DatabaseConfig, DockerConfig, IntegrityCheck, KubernetesConfig, MigrationsConfig,
    NginxConfig, PrometheusConfig, ProxyLimits, ProxyTls, Router, Runtime, ServiceConfig, Slots,
};
use super::reader::Spanned;
use super::triggers::Triggers;

/// What stage one read, before cross-key validation. Every field is optional: a missing
/// or mistyped key has already been reported.
pub(crate) struct RawConfig {
    pub(crate) services: Vec<RawService>,
    pub(crate) metrics_listen: Option<Spanned<SocketAddr>>,
    /// `Some(None)` is `"off"`.
    pub(crate) dashboard: Option<Spanned<Option<SocketAddr>>>,
    /// `redact`, when given: replaces the default patterns.
    pub(crate) redact: Option<Vec<String>>,
    /// `[watch] socket_grace`; `Some(None)` is `"off"`.
    pub(crate) socket_grace: Option<Option<Duration>>,
}

pub(crate) struct RawService {
    pub(crate) name: String,
    pub(crate) path: String,
    pub(crate) span: Option<std::ops::Range<usize>>,
    pub(crate) runtime: Option<Runtime>,
    pub(crate) router: Option<Router>,
    pub(crate) listen: Option<Spanned<SocketAddr>>,
    pub(crate) nginx: Option<NginxConfig>,
    pub(crate) docker: Option<DockerConfig>,
    pub(crate) proxy_limits: Option<ProxyLimits>,
    pub(crate) proxy_tls: Option<ProxyTls>,
    pub(crate) kubernetes: Option<KubernetesConfig>,
    pub(crate) database: Option<DatabaseConfig>,
    pub(crate) migrations: Option<MigrationsConfig>,
    pub(crate) slots: Option<Spanned<(Option<SocketAddr>, Option<SocketAddr>)>>,
    pub(crate) health_path: Option<Spanned<String>>,
    pub(crate) start_timeout: Option<Duration>,
    pub(crate) bake: Option<Duration>,
    pub(crate) stop_timeout: Option<Duration>,
    pub(crate) command: Option<Vec<String>>,
    pub(crate) env: BTreeMap<String, String>,
    pub(crate) env_file: Option<PathBuf>,
    pub(crate) config_files: Vec<PathBuf>,
    pub(crate) verify: Vec<Option<Check>>,
    pub(crate) verify_deadline: Option<Duration>,
    pub(crate) triggers: Option<Triggers>,
    pub(crate) investigate: Option<Duration>,
    pub(crate) drill_budget: Option<Duration>,
    pub(crate) drill_max_age: Option<Duration>,
    pub(crate) memory_limit_mb: Option<u64>,
    pub(crate) webhooks: Vec<String>,
    pub(crate) webhooks_ca_file: Option<PathBuf>,
    pub(crate) integrity: Option<IntegrityCheck>,
    pub(crate) prometheus: Option<PrometheusConfig>,
}

impl RawService {
    /// The typed service; only called once both stages found no problem, so every
    /// required value is present.
    pub(super) fn build(self) -> Option<ServiceConfig> {
        // Router `none` and runtimes swarm and kubernetes have one address: both
        // "slots" are it.
        let one_address = self.router == Some(Router::None)
            || matches!(self.runtime, Some(Runtime::Swarm | Runtime::Kubernetes));
        let address = self
            .docker
            .as_ref()
            .and_then(|d| d.publish)
            .or(self.kubernetes.as_ref().map(|k| k.address));
        let (blue, green) = match (&self.slots, address) {
            (_, Some(publish)) if one_address => (Some(publish), Some(publish)),
            (slots, _) => slots.as_ref()?.value,
        };
        Some(ServiceConfig {
            name: self.name,
            runtime: self.runtime?,
            router: self.router?,
            listen: self.listen.map(|l| l.value),
            nginx: self.nginx,
            docker: self.docker,
            proxy_limits: self.proxy_limits.unwrap_or_default(),
            proxy_tls: self.proxy_tls,
            kubernetes: self.kubernetes,
            database: self.database,
            migrations: self.migrations,
            slots: Slots {
                blue: blue?,
                green: green?,
            },
            health_path: self
                .health_path
                .map(|p| p.value)
                .unwrap_or_else(|| "/health".to_string()),
            start_timeout: self.start_timeout.unwrap_or(Duration::from_secs(30)),
            bake: self.bake.unwrap_or(Duration::from_secs(300)),
            stop_timeout: self.stop_timeout.unwrap_or(Duration::from_secs(10)),
            command: self.command,
            env: self.env,
            env_file: self.env_file,
            config_files: self.config_files,
            verify: self.verify.into_iter().collect::<Option<Vec<_>>>()?,
            verify_deadline: self.verify_deadline.unwrap_or(Duration::from_secs(30)),
            triggers: self.triggers?,
            investigate: self.investigate.unwrap_or(Duration::from_secs(300)),
            drill_budget: self.drill_budget.unwrap_or(Duration::from_secs(60)),
            drill_max_age: self
                .drill_max_age
                .unwrap_or(Duration::from_secs(30 * 86_400)),
            memory_limit_mb: self.memory_limit_mb,
            webhooks: self.webhooks,
            webhooks_ca_file: self.webhooks_ca_file,
            integrity: self.integrity,
            prometheus: self.prometheus,
        })
    }
}
