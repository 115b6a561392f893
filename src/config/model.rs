//! What a loaded config is: a service, its runtime and router, slots, sub-tables and
//! checks. The trigger rules are in `triggers.rs`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use super::duration;
use super::triggers::Triggers;
use crate::migrate;

/// How a version runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    /// ripcord spawns the release as a child process on a slot port.
    Process,
    /// Someone else runs the slots (the runbook's ports 8000/8001): ripcord health-checks
    /// and switches, and starts and stops nothing.
    External,
    /// A release is an image pinned by digest, run as a container through the Docker
    /// Engine API with its own env snapshot.
    Docker,
    /// A Docker Swarm service: a release is a service update to a pinned image with its
    /// env snapshot; a rollback is the engine's rollback (or an update) that ripcord
    /// verifies itself.
    Swarm,
    /// A Kubernetes Deployment: a release is its pod template with the image and every
    /// ConfigMap and Secret it reads snapshotted (immutable copies named by release); a
    /// rollback applies that template again, independent of ReplicaSet history.
    Kubernetes,
}

/// How traffic reaches the active release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Router {
    /// The built-in reverse proxy on `listen`.
    Proxy,
    /// The user's nginx: ripcord owns one upstream block in a site file.
    Nginx,
    /// No router: one container published on `[service.NAME.docker] publish`, replaced
    /// in place (image replace; a short downtime window, reported).
    None,
}

/// `[service.NAME.database]`: the PostgreSQL database behind a service, for
/// `ripcord db backup|backups|restore`.
#[derive(Debug, Clone, Serialize)]
pub struct DatabaseConfig {
    /// `postgresql://user@host:port/dbname`; never with a password in it.
    pub url: String,
    /// A file holding the password (first line); else PGPASSWORD, if set.
    pub password_file: Option<PathBuf>,
    /// Where dumps go; default `<state dir>/backups/<service>`.
    pub backup_dir: Option<PathBuf>,
    /// How many backups are kept (the newest verified one always is).
    pub keep: usize,
    /// SQL a restored database must pass before it replaces the live one.
    pub checks: Vec<String>,
    /// Where pg_dump and pg_restore are; default the server's own version's.
    pub pg_bin_dir: Option<PathBuf>,
    /// Take a backup before a deploy whose release moved the migration head.
    pub backup_before_migrations: bool,
}

/// `[service.NAME.docker]`: how a release's container runs (runtime `docker`).
#[derive(Debug, Clone, Serialize)]
pub struct DockerConfig {
    /// The repository deployed as `IMAGE:VERSION` (`deploy --image REF` overrides).
    pub image: Option<String>,
    /// The env file snapshotted at deploy time (relative to the config file).
    pub env_file: Option<PathBuf>,
    /// The port the app listens on inside the container.
    pub container_port: u16,
    /// Router `none`: the host address the one container is published on.
    pub publish: Option<SocketAddr>,
    pub memory_limit_mb: Option<u64>,
    /// Docker's restart policy: `no`, `on-failure[:N]`, `always` or `unless-stopped`.
    pub restart: String,
    /// The container name (blue-green adds `-blue` / `-green`).
    pub name: String,
    /// Replaces the image's command, when given.
    pub command: Option<Vec<String>>,
    /// Runtime swarm: `"host"` runs the tasks in the host's network (the app binds
    /// `publish` itself; nothing is published on other interfaces).
    pub network: Option<String>,
    /// The user ripcord logs in to the image's registry as, when the Docker config
    /// (`$DOCKER_CONFIG/config.json`, `~/.docker/config.json`) has no entry for it.
    pub registry_username: Option<String>,
    /// The environment variable that holds that user's password: the config file names
    /// where the secret is, never the secret itself (the file is often committed).
    pub registry_password_env: Option<String>,
    /// How long an image pull may take before the deploy or rollback gives up on it.
    pub pull_timeout: Duration,
}

/// `[service.NAME.kubernetes]`: the Deployment a release is applied to (runtime
/// `kubernetes`).
#[derive(Debug, Clone, Serialize)]
pub struct KubernetesConfig {
    pub namespace: String,
    pub deployment: String,
    /// The container of the pod template whose image a deploy sets.
    pub container: String,
    /// The repository deployed as `IMAGE:VERSION` (`deploy --image REF` overrides);
    /// default the container's image today, with its tag replaced by the version.
    pub image: Option<String>,
    /// Where the Deployment answers from the watcher's host (a Service, an ingress or
    /// a port-forward): the one address the health check, the proxy and verification
    /// reach.
    pub address: std::net::SocketAddr,
    /// A kubeconfig file; default `KUBECONFIG`, then `~/.kube/config`, then the
    /// in-cluster service account.
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context; default its current context.
    pub context: Option<String>,
    /// How many releases keep their ConfigMap and Secret copies (the newest ones, and
    /// always the active release and the previous good one).
    pub keep_releases: usize,
    /// Ask the image's registry for the digest of a tag at deploy (a manifest HEAD), so
    /// the release is pinned before it runs; default true. Off, or when the registry
    /// does not answer, the release is pinned once its pods report a digest.
    pub registry_digest: bool,
}

/// `[service.NAME.migrations]`: the migrations directory and how to read today's schema
/// head: a command that prints it (e.g. `["alembic", "current"]`), or else the
/// `alembic_version` table read over `[service.NAME.database]`. Each release records its
/// head; a rollback across a `contract` migration is refused.
#[derive(Debug, Clone, Serialize)]
pub struct MigrationsConfig {
    /// Relative to the config file's directory when not absolute.
    pub dir: PathBuf,
    pub head_command: Option<Vec<String>>,
    /// The table holding the head when there is no `head_command`.
    pub head_table: String,
    pub pg_version: u32,
    /// What a deploy does when its release ships a contract migration together with
    /// the expand it depends on (the expand was never live in an earlier release).
    pub on_contract: OnContract,
    /// Which files in `dir` are migrations (`format`).
    pub format: migrate::Format,
    /// Rules turned off (`disable`) and severities changed (`severity`).
    pub disable: Vec<String>,
    pub severity: BTreeMap<String, migrate::Severity>,
    /// What a migration must set before it takes a blocking lock.
    pub lock_timeout: migrate::Timeout,
    pub statement_timeout: migrate::Timeout,
}

impl MigrationsConfig {
    /// The checker's settings these keys give (the CLI's flags override them).
    pub fn settings(&self) -> migrate::Settings {
        migrate::Settings {
            pg_version: self.pg_version,
            disabled: self.disable.iter().cloned().collect(),
            severity: self.severity.clone(),
            lock_timeout: self.lock_timeout,
            statement_timeout: self.statement_timeout,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnContract {
    Warn,
    Refuse,
}

/// `[service.NAME.nginx]`: the site file and upstream block ripcord owns, and how to test
/// and reload nginx (argv, never a shell string).
#[derive(Debug, Clone, Serialize)]
pub struct NginxConfig {
    pub site: PathBuf,
    pub upstream: String,
    pub access_log: Option<PathBuf>,
    pub test_command: Vec<String>,
    pub reload_command: Vec<String>,
    /// The main nginx.conf, to read a named `log_format` from.
    pub conf: Option<PathBuf>,
    /// A `log_format` string, or the name of one declared in `conf`.
    pub log_format: Option<String>,
}

/// One of the two blue-green slots.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    Blue,
    Green,
}

impl Slot {
    pub fn other(self) -> Slot {
        match self {
            Slot::Blue => Slot::Green,
            Slot::Green => Slot::Blue,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Slot::Blue => "blue",
            Slot::Green => "green",
        }
    }

    pub fn parse(s: &str) -> Option<Slot> {
        match s {
            "blue" => Some(Slot::Blue),
            "green" => Some(Slot::Green),
            _ => None,
        }
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The two slot addresses of a blue-green service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Slots {
    pub blue: SocketAddr,
    pub green: SocketAddr,
}

impl Slots {
    pub fn addr(&self, slot: Slot) -> SocketAddr {
        match slot {
            Slot::Blue => self.blue,
            Slot::Green => self.green,
        }
    }
}

/// One service: a thing users reach, with its runtime, router and checks.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceConfig {
    pub name: String,
    pub runtime: Runtime,
    pub router: Router,
    /// Where the built-in proxy listens (router `proxy` only).
    pub listen: Option<SocketAddr>,
    /// The nginx site and upstream (router `nginx` only).
    pub nginx: Option<NginxConfig>,
    /// How containers run (runtime `docker` only).
    pub docker: Option<DockerConfig>,
    /// The built-in proxy's limits per client (router `proxy`).
    #[serde(skip)]
    pub proxy_limits: ProxyLimits,
    /// The built-in proxy's certificate, when it serves HTTPS (router `proxy`).
    #[serde(skip)]
    pub proxy_tls: Option<ProxyTls>,
    /// The Deployment (runtime `kubernetes` only).
    pub kubernetes: Option<KubernetesConfig>,
    /// The service's PostgreSQL database (backups and restore).
    pub database: Option<DatabaseConfig>,
    /// Where the migrations live and how to read the schema head (the rollback guard).
    pub migrations: Option<MigrationsConfig>,
    pub slots: Slots,
    /// The path probed on a slot to decide whether a release is healthy.
    pub health_path: String,
    /// `start_timeout`: how long a new release may take to become healthy before the
    /// deploy fails.
    #[serde(rename = "start_timeout_secs", serialize_with = "duration::as_secs")]
    pub start_timeout: Duration,
    /// `bake`: how long the previous release stays warm after a deploy.
    #[serde(rename = "bake_secs", serialize_with = "duration::as_secs")]
    pub bake: Duration,
    /// `stop_timeout`: how long a stopping release gets between SIGTERM and SIGKILL.
    #[serde(rename = "stop_timeout_secs", serialize_with = "duration::as_secs")]
    pub stop_timeout: Duration,
    /// The default argv of a release; `{port}` and `{version}` are substituted.
    pub command: Option<Vec<String>>,
    /// Extra environment for every release of this service.
    pub env: BTreeMap<String, String>,
    /// Runtime `process`: an env file (Docker's format) read at deploy time and
    /// snapshotted with `env` per release (relative to the config file).
    pub env_file: Option<PathBuf>,
    /// Runtime `process`: files the app reads its configuration from, copied per release
    /// at deploy time; a release runs with its own copies, found at `{config_files}` in
    /// its argv and `RIPCORD_CONFIG_FILES` in its env (relative to the config file).
    pub config_files: Vec<PathBuf>,
    pub verify: Vec<Check>,
    /// `verify_deadline`: the deadline for the whole set of verification checks.
    #[serde(rename = "verify_deadline_secs", serialize_with = "duration::as_secs")]
    pub verify_deadline: Duration,
    /// What the guard watches for, and when it acts.
    pub triggers: Triggers,
    /// `investigate`: how long an investigation waits for `ripcord ack` before it rolls
    /// back.
    #[serde(rename = "investigate_secs", serialize_with = "duration::as_secs")]
    pub investigate: Duration,
    /// `drill_budget`: how long a whole `ripcord drill` (back and forward, verified) may
    /// take.
    #[serde(rename = "drill_budget_secs", serialize_with = "duration::as_secs")]
    pub drill_budget: Duration,
    /// `drill_max_age`: `doctor` warns when the last drill is older than this.
    #[serde(rename = "drill_max_age_secs", serialize_with = "duration::as_secs")]
    pub drill_max_age: Duration,
    /// A release using more resident memory than this is killed (counted as an OOM kill).
    pub memory_limit_mb: Option<u64>,
    /// Webhooks told of triggers, decisions, rollbacks, freezes and investigations.
    pub webhooks: Vec<String>,
    /// CA certificates (PEM) to trust for the webhooks beside the system's roots
    /// (`[service.NAME.notify] ca_file`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhooks_ca_file: Option<PathBuf>,
    /// A data-integrity check run on an interval; its failure freezes the service.
    pub integrity: Option<IntegrityCheck>,
    /// The Prometheus server for checks and metric rules, and the rules.
    pub prometheus: Option<PrometheusConfig>,
}

/// `[service.NAME.prometheus]`.
#[derive(Debug, Clone, Serialize)]
pub struct PrometheusConfig {
    pub url: String,
    /// CA certificates (PEM) to trust for `url` beside the system's roots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    pub rules: Vec<MetricRule>,
}

/// `[[service.NAME.prometheus.rules]]`: a PromQL trigger computed from the user's own
/// metrics; `{version}` in the query is the active release's version.
#[derive(Debug, Clone, Serialize)]
pub struct MetricRule {
    pub name: String,
    pub query: String,
    pub above: Option<f64>,
    pub below: Option<f64>,
    /// How many evaluations in a row must breach before it fires.
    pub consecutive: u32,
    /// How often the query is evaluated.
    #[serde(rename = "interval_secs", serialize_with = "duration::as_secs")]
    pub interval: Duration,
}

/// `[service.NAME.integrity]`: a check (HTTP or command) and how often it runs.
#[derive(Debug, Clone, Serialize)]
pub struct IntegrityCheck {
    pub check: Check,
    #[serde(rename = "interval_secs", serialize_with = "duration::as_secs")]
    pub interval: Duration,
}

impl ServiceConfig {
    /// Where users reach the service, for people: `the built-in proxy on ADDR` or
    /// `nginx (upstream NAME in SITE)`.
    pub fn entry(&self) -> String {
        match (&self.router, self.listen, &self.nginx) {
            (Router::Proxy, Some(l), _) => format!("the built-in proxy on {l}"),
            (Router::Nginx, _, Some(n)) => {
                format!("nginx (upstream `{}` in {})", n.upstream, n.site.display())
            }
            (Router::None, _, _) if self.runtime == Runtime::Kubernetes => {
                format!("the Deployment's address {} (no router)", self.slots.blue)
            }
            (Router::None, _, _) => {
                format!("the container published on {} (no router)", self.slots.blue)
            }
            _ => "an unconfigured router".to_string(),
        }
    }

    /// Router `none` and runtimes `swarm` and `kubernetes` have one address, where a
    /// release is put in place rather than started beside the other.
    pub fn one_address(&self) -> bool {
        self.router == Router::None || matches!(self.runtime, Runtime::Swarm | Runtime::Kubernetes)
    }

    /// The URL a health probe of `slot` requests.
    pub fn health_url(&self, slot: Slot) -> String {
        format!("http://{}{}", self.slots.addr(slot), self.health_path)
    }
}

/// One verification check.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub kind: CheckKind,
    #[serde(rename = "timeout_secs", serialize_with = "duration::as_secs")]
    pub timeout: Duration,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum CheckKind {
    Http {
        url: String,
        /// The expected status; any 2xx when not given.
        status: Option<u16>,
        body_contains: Option<String>,
        /// A JSON field (dotted path) that must equal `json_equals`.
        json_field: Option<String>,
        json_equals: Option<String>,
        /// CA certificates (PEM) to trust for `url` beside the system's roots.
        #[serde(skip_serializing_if = "Option::is_none")]
        ca_file: Option<PathBuf>,
    },
    Command {
        argv: Vec<String>,
        exit_code: i32,
    },
    /// A PromQL instant query whose every value must be below and/or above a bound.
    /// Empty, NaN or unreachable is "no data": a failed check, never a pass.
    Prometheus {
        query: String,
        below: Option<f64>,
        above: Option<f64>,
        /// The server, from `[service.NAME.prometheus] url`.
        url: Option<String>,
        /// From `[service.NAME.prometheus] ca_file`.
        #[serde(skip_serializing_if = "Option::is_none")]
        ca_file: Option<PathBuf>,
    },
}

/// `[service.NAME.proxy]`: what one client may take of the built-in proxy, so that a slow or oversized one cannot starve
/// the others. The defaults follow nginx's where it has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyLimits {
    /// Open client connections at most; more wait in the listen backlog until one
    /// closes (nginx: `worker_connections`).
    pub max_connections: usize,
    /// A request's head (request line and headers) must arrive within this, and a
    /// keep-alive connection idle for this long is closed: a client that trickles its
    /// headers (slowloris) loses its connection (nginx: `client_header_timeout`).
    pub header_timeout: Duration,
    /// The release must send its response head within this, else the client gets a
    /// 504 and the guard a failed request (nginx: `proxy_read_timeout`).
    pub response_timeout: Duration,
    /// The request line and headers, in bytes: more is a 431 (nginx answers 494 past
    /// `large_client_header_buffers`).
    pub max_header_bytes: usize,
    /// The request target, in bytes: longer is a 414 (nginx: a buffer of 8k).
    pub max_uri_bytes: usize,
    /// After a switch, how long WebSockets (and other upgraded connections) opened on the
    /// release switched away from may go on there; then they are closed. New ones go to
    /// the new release at once.
    pub websocket_drain: Duration,
    /// How the proxy speaks to the releases: HTTP/1.1, or HTTP/2 without TLS (`h2c`, for
    /// gRPC backends).
    pub upstream_protocol: UpstreamProtocol,
}

/// `[service.NAME.proxy] tls_cert` and `tls_key`: the proxy serves HTTPS with this
/// certificate, offering HTTP/2 and HTTP/1.1 by ALPN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyTls {
    /// PEM: the certificate, then its chain.
    pub cert: PathBuf,
    /// PEM: the certificate's private key.
    pub key: PathBuf,
}

/// `[service.NAME.proxy] upstream_protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpstreamProtocol {
    #[default]
    Http1,
    H2c,
}

impl Default for ProxyLimits {
    fn default() -> Self {
        ProxyLimits {
            max_connections: 10_000,
            header_timeout: Duration::from_secs(60),
            response_timeout: Duration::from_secs(60),
            max_header_bytes: 32 * 1024,
            max_uri_bytes: 8 * 1024,
            websocket_drain: Duration::from_secs(30),
            upstream_protocol: UpstreamProtocol::Http1,
        }
    }
}
