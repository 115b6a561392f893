//! `ripcord.toml` → a typed [`Config`].
//!
//! Loading has two stages: `reader` walks the TOML document and reads every key into
//! typed values, collecting each unknown key and wrong type with its key path and line;
//! `validate` then checks what only makes sense across keys (missing slots, port clashes,
//! a runtime/router pair this build cannot run). Both stages collect every problem before
//! failing, so `ripcord config check` can print them all at once.
//!
//! This module never starts anything: it only describes. The daemon and the executors
//! turn a [`ServiceConfig`] into running parts.

pub mod duration;
mod reader;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use reader::{Reader, Spanned, Table};

/// Where the config is looked for when neither `--config` nor `RIPCORD_CONFIG` is given.
pub const DEFAULT_PATH: &str = "ripcord.toml";

/// The whole configuration: one entry per service.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    #[serde(skip)]
    pub path: PathBuf,
    pub services: BTreeMap<String, ServiceConfig>,
    /// `[watch] metrics_listen`: where `ripcord watch` serves its own `/metrics`
    /// (a loopback address), if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// `[watch] dashboard_listen`: where `ripcord watch` serves its web dashboard, or
    /// `None` when it is `"off"`.
    pub dashboard: Option<DashboardListen>,
}

/// Where the dashboard listens when the config says nothing.
pub const DEFAULT_DASHBOARD: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9470);

/// The dashboard's address, and whether a person chose it: a default address that is
/// taken (another watcher on this host) only costs the dashboard, never the watcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DashboardListen {
    pub addr: SocketAddr,
    pub explicit: bool,
}

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

/// The guard's trigger rules for one service; `None` means the rule is off. Defaults are
/// the runbook's.
#[derive(Debug, Clone, Serialize)]
pub struct Triggers {
    pub error_rate: Option<ErrorRateRule>,
    pub latency_p95: Option<LatencyRule>,
    /// Any OOM kill of the release rolls it back.
    pub oom_kills: bool,
    /// An unexpected exit of the active release rolls it back.
    pub crash: bool,
    pub cpu: Option<CpuRule>,
    pub health: Option<HealthRule>,
}

impl Default for Triggers {
    fn default() -> Self {
        Triggers {
            error_rate: Some(ErrorRateRule::default()),
            latency_p95: Some(LatencyRule::default()),
            oom_kills: true,
            crash: true,
            cpu: Some(CpuRule::default()),
            health: Some(HealthRule::default()),
        }
    }
}

/// The default false-alarm budget of the rate rules: at most one false rollback per this
/// many requests of a release at the edge of the healthy zone (0.8 × the threshold).
pub const DEFAULT_REQUESTS_PER_FALSE_ALARM: f64 = 1e8;

/// A 5xx ratio at or above `above` is a failing release: a sequential test on the
/// per-request stream (docs/guard-statistics.md) decides, with at most one false alarm
/// per `requests_per_false_alarm` requests of a healthy release (≤ 0.8 × `above`).
/// `window` is the span of the ratio people read beside it (status, charts) and the
/// time the runbook gives a sustained failure just over the threshold.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ErrorRateRule {
    pub above: f64,
    #[serde(rename = "window_secs", serialize_with = "duration::as_secs")]
    pub window: Duration,
    pub requests_per_false_alarm: f64,
}

impl Default for ErrorRateRule {
    fn default() -> Self {
        ErrorRateRule {
            above: 0.10,
            window: Duration::from_secs(120),
            requests_per_false_alarm: DEFAULT_REQUESTS_PER_FALSE_ALARM,
        }
    }
}

/// p95 above `factor` × the previous release's healthy p95, and above `floor`: more
/// than 5% of requests slower than that limit, judged by the same sequential test as
/// the 5xx ratio.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LatencyRule {
    pub factor: f64,
    #[serde(rename = "window_secs", serialize_with = "duration::as_secs")]
    pub window: Duration,
    #[serde(rename = "floor_ms", serialize_with = "duration::as_millis")]
    pub floor: Duration,
    pub requests_per_false_alarm: f64,
}

impl Default for LatencyRule {
    fn default() -> Self {
        LatencyRule {
            factor: 5.0,
            window: Duration::from_secs(120),
            floor: Duration::from_millis(25),
            requests_per_false_alarm: DEFAULT_REQUESTS_PER_FALSE_ALARM,
        }
    }
}

/// CPU above `above` of one core for `for`: investigate (or roll back at once).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CpuRule {
    pub above: f64,
    /// `for`: how long the mean share must stay above.
    #[serde(rename = "for_secs", serialize_with = "duration::as_secs")]
    pub for_: Duration,
    /// `action = "investigate"` (the default) or `"rollback"`.
    pub investigate: bool,
}

impl Default for CpuRule {
    fn default() -> Self {
        CpuRule {
            above: 0.95,
            for_: Duration::from_secs(300),
            investigate: true,
        }
    }
}

/// Consecutive failed health probes of the active release.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthRule {
    pub consecutive_failures: u32,
    #[serde(rename = "interval_secs", serialize_with = "duration::as_secs")]
    pub interval: Duration,
    #[serde(rename = "timeout_secs", serialize_with = "duration::as_secs")]
    pub timeout: Duration,
}

impl Default for HealthRule {
    fn default() -> Self {
        HealthRule {
            consecutive_failures: 3,
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
        }
    }
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
            (Router::None, _, _) => {
                format!("the container published on {} (no router)", self.slots.blue)
            }
            _ => "an unconfigured router".to_string(),
        }
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

/// One problem found in the config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    /// The key path, e.g. `service.web.slots.blue`.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}: ", self.file.display())?,
            None => write!(f, "{}: ", self.file.display())?,
        }
        if self.key.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}

/// Why a config could not be loaded: it could not be read, or it has problems.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read config {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} has {} problem{}", path.display(), errors.len(), if errors.len() == 1 { "" } else { "s" })]
    Invalid {
        path: PathBuf,
        errors: Vec<ConfigError>,
    },
}

impl Config {
    /// Reads and validates the config file at `path`.
    pub fn load(path: &Path) -> Result<Config, LoadError> {
        let src = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&src, path)
    }

    /// Parses and validates config text; `path` is only used in messages.
    pub fn parse(src: &str, path: &Path) -> Result<Config, LoadError> {
        let invalid = |errors| LoadError::Invalid {
            path: path.to_path_buf(),
            errors,
        };
        let doc = match toml_edit::Document::parse(src) {
            Ok(doc) => doc,
            Err(e) => {
                let mut reader = Reader::new(src, path);
                let message = e.message().trim_end_matches('.').to_string();
                reader.error(e.span(), "", format!("invalid TOML: {message}"));
                return Err(invalid(reader.errors));
            }
        };
        let mut reader = Reader::new(src, path);
        let root = Table {
            inner: doc.as_table(),
            path: String::new(),
            span: None,
        };
        let raw = read_root(&mut reader, &root);
        validate::validate(&mut reader, &raw);
        if !reader.errors.is_empty() {
            let mut errors = reader.errors;
            errors.sort_by_key(|e| e.line.unwrap_or(0));
            return Err(invalid(errors));
        }
        let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        Ok(Config {
            path: path.to_path_buf(),
            metrics_listen: raw.metrics_listen.as_ref().map(|m| m.value),
            dashboard: match &raw.dashboard {
                None => Some(DashboardListen {
                    addr: DEFAULT_DASHBOARD,
                    explicit: false,
                }),
                Some(d) => d.value.map(|addr| DashboardListen {
                    addr,
                    explicit: true,
                }),
            },
            services: raw
                .services
                .into_iter()
                .filter_map(RawService::build)
                .map(|mut s| {
                    if let Some(m) = s.migrations.as_mut()
                        && m.dir.is_relative()
                    {
                        m.dir = base.join(&m.dir);
                    }
                    if let Some(f) = s.docker.as_mut().and_then(|d| d.env_file.as_mut())
                        && f.is_relative()
                    {
                        *f = base.join(&*f);
                    }
                    if let Some(d) = s.database.as_mut() {
                        for f in [d.password_file.as_mut(), d.backup_dir.as_mut()]
                            .into_iter()
                            .flatten()
                        {
                            if f.is_relative() {
                                *f = base.join(&*f);
                            }
                        }
                    }
                    (s.name.clone(), s)
                })
                .collect(),
        })
    }

    pub fn service(&self, name: &str) -> Option<&ServiceConfig> {
        self.services.get(name)
    }
}

/// What stage one read, before cross-key validation. Every field is optional: a missing
/// or mistyped key has already been reported.
pub(crate) struct RawConfig {
    pub(crate) services: Vec<RawService>,
    pub(crate) metrics_listen: Option<Spanned<SocketAddr>>,
    /// `Some(None)` is `"off"`.
    pub(crate) dashboard: Option<Spanned<Option<SocketAddr>>>,
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
    pub(crate) database: Option<DatabaseConfig>,
    pub(crate) migrations: Option<MigrationsConfig>,
    pub(crate) slots: Option<Spanned<(Option<SocketAddr>, Option<SocketAddr>)>>,
    pub(crate) health_path: Option<Spanned<String>>,
    pub(crate) start_timeout: Option<Duration>,
    pub(crate) bake: Option<Duration>,
    pub(crate) stop_timeout: Option<Duration>,
    pub(crate) command: Option<Vec<String>>,
    pub(crate) env: BTreeMap<String, String>,
    pub(crate) verify: Vec<Option<Check>>,
    pub(crate) verify_deadline: Option<Duration>,
    pub(crate) triggers: Option<Triggers>,
    pub(crate) investigate: Option<Duration>,
    pub(crate) memory_limit_mb: Option<u64>,
    pub(crate) webhooks: Vec<String>,
    pub(crate) webhooks_ca_file: Option<PathBuf>,
    pub(crate) integrity: Option<IntegrityCheck>,
    pub(crate) prometheus: Option<PrometheusConfig>,
}

impl RawService {
    /// The typed service; only called once both stages found no problem, so every
    /// required value is present.
    fn build(self) -> Option<ServiceConfig> {
        // Router `none` and runtime swarm have one address: both "slots" are it.
        let one_address = self.router == Some(Router::None) || self.runtime == Some(Runtime::Swarm);
        let (blue, green) = match (&self.slots, self.docker.as_ref().and_then(|d| d.publish)) {
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
            verify: self.verify.into_iter().collect::<Option<Vec<_>>>()?,
            verify_deadline: self.verify_deadline.unwrap_or(Duration::from_secs(30)),
            triggers: self.triggers?,
            investigate: self.investigate.unwrap_or(Duration::from_secs(300)),
            memory_limit_mb: self.memory_limit_mb,
            webhooks: self.webhooks,
            webhooks_ca_file: self.webhooks_ca_file,
            integrity: self.integrity,
            prometheus: self.prometheus,
        })
    }
}

const SERVICE_KEYS: &[&str] = &[
    "runtime",
    "router",
    "listen",
    "slots",
    "health_path",
    "start_timeout",
    "bake",
    "stop_timeout",
    "command",
    "env",
    "verify",
    "verify_deadline",
    "triggers",
    "investigate",
    "memory_limit_mb",
    "notify",
    "integrity",
    "prometheus",
    "nginx",
    "migrations",
    "docker",
    "database",
];

const CHECK_KEYS: &[&str] = &[
    "name",
    "http",
    "prometheus",
    "below",
    "above",
    "status",
    "body_contains",
    "json_field",
    "json_equals",
    "command",
    "exit_code",
    "timeout",
    "ca_file",
];

const DAY: Duration = Duration::from_secs(86_400);
const HOUR: Duration = Duration::from_secs(3600);
const SECOND: Duration = Duration::from_secs(1);
/// The shortest probe interval and probe or check timeout.
const MIN_PROBE: Duration = Duration::from_millis(100);

fn read_root(r: &mut Reader<'_>, root: &Table<'_>) -> RawConfig {
    r.deny_unknown(root, &["service", "watch"]);
    let mut metrics_listen = None;
    let mut dashboard = None;
    if let Some(w) = r.table(root, "watch") {
        r.deny_unknown(&w, &["metrics_listen", "dashboard_listen"]);
        if let Some(addr) = r.string(&w, "dashboard_listen") {
            if addr.value == "off" {
                dashboard = Some(Spanned {
                    value: None,
                    span: addr.span,
                });
            } else {
                match parse_addr(&addr.value) {
                    Ok(a) => {
                        dashboard = Some(Spanned {
                            value: Some(a),
                            span: addr.span,
                        })
                    }
                    Err(msg) => r.error(
                        addr.span,
                        "watch.dashboard_listen",
                        format!("{msg}, or \"off\""),
                    ),
                }
            }
        }
        if let Some(addr) = r.string(&w, "metrics_listen") {
            match parse_addr(&addr.value) {
                Ok(a) if a.ip().is_loopback() => {
                    metrics_listen = Some(Spanned {
                        value: a,
                        span: addr.span,
                    })
                }
                Ok(_) => r.error(
                    addr.span,
                    "watch.metrics_listen",
                    format!(
                        "\"{}\" is not a loopback address: ripcord's metrics are served on 127.0.0.1 or ::1 only",
                        addr.value
                    ),
                ),
                Err(msg) => r.error(addr.span, "watch.metrics_listen", msg),
            }
        }
    }
    let mut services = Vec::new();
    if let Some(table) = r.table(root, "service") {
        for (name, _) in table.inner.iter() {
            let Some(svc) = r.table(&table, name) else {
                continue;
            };
            services.push(read_service(r, name, &svc));
        }
    }
    RawConfig {
        services,
        metrics_listen,
        dashboard,
    }
}

fn read_service(r: &mut Reader<'_>, name: &str, t: &Table<'_>) -> RawService {
    r.deny_unknown(t, SERVICE_KEYS);
    if !valid_name(name) {
        r.error(
            t.span.clone(),
            &t.path,
            "a service name may hold only letters, digits, `-` and `_`, and starts with a letter"
                .to_string(),
        );
    }
    let runtime = r.string(t, "runtime").and_then(|s| match s.value.as_str() {
        "process" => Some(Runtime::Process),
        "external" => Some(Runtime::External),
        "docker" => Some(Runtime::Docker),
        "swarm" => Some(Runtime::Swarm),
        "kubernetes" => {
            r.error(
                s.span,
                &reader::join(&t.path, "runtime"),
                format!(
                    "runtime \"{}\" is not available in this version of ripcord yet; use \"process\", \"external\", \"docker\" or \"swarm\"",
                    s.value
                ),
            );
            None
        }
        other => {
            r.error(
                s.span,
                &reader::join(&t.path, "runtime"),
                format!(
                    "unknown runtime \"{other}\"; expected \"process\", \"external\", \"docker\" or \"swarm\""
                ),
            );
            None
        }
    });
    let runtime = runtime.or_else(|| {
        // The embedded default: ripcord runs the app itself.
        (!t.inner.contains_key("runtime")).then_some(Runtime::Process)
    });
    let router = match r.string(t, "router") {
        Some(s) if s.value == "proxy" => Some(Router::Proxy),
        Some(s) if s.value == "nginx" => Some(Router::Nginx),
        Some(s) if s.value == "none" => {
            if !matches!(runtime, Some(Runtime::Docker | Runtime::Swarm)) {
                r.error(
                    s.span,
                    &reader::join(&t.path, "router"),
                    "router \"none\" (image replace) needs runtime = \"docker\"; use \"proxy\" or \"nginx\" for blue-green"
                        .to_string(),
                );
                None
            } else {
                Some(Router::None)
            }
        }
        Some(s) => {
            r.error(
                s.span,
                &reader::join(&t.path, "router"),
                format!(
                    "unknown router \"{}\"; expected \"proxy\", \"nginx\" or \"none\"",
                    s.value
                ),
            );
            None
        }
        None if !t.inner.contains_key("router") => Some(Router::Proxy),
        None => None,
    };
    let listen = r
        .string(t, "listen")
        .and_then(|s| match parse_addr(&s.value) {
            Ok(addr) => Some(Spanned {
                value: addr,
                span: s.span,
            }),
            Err(msg) => {
                r.error(s.span, &reader::join(&t.path, "listen"), msg);
                None
            }
        });
    let slots = read_slots(r, t);
    let nginx = r.table(t, "nginx").and_then(|n| read_nginx(r, &n));
    let docker = r.table(t, "docker").and_then(|d| read_docker(r, &d, name));
    let database = r.table(t, "database").and_then(|d| read_database(r, &d));
    if matches!(runtime, Some(Runtime::Docker | Runtime::Swarm)) && !t.inner.contains_key("docker")
    {
        r.error(
            t.span.clone(),
            &reader::join(&t.path, "docker"),
            "missing: runtimes \"docker\" and \"swarm\" need [service.NAME.docker] with at least `container_port`"
                .to_string(),
        );
    }
    if runtime == Some(Runtime::Swarm) && docker.as_ref().is_some_and(|d| d.publish.is_none()) {
        r.error(
            t.span.clone(),
            &reader::join(&t.path, "docker.publish"),
            "missing: runtime \"swarm\" needs the address the service answers on, e.g. publish = \"127.0.0.1:8000\""
                .to_string(),
        );
    }
    if runtime == Some(Runtime::Docker)
        && let Some(d) = &docker
        && d.network.is_some()
    {
        r.error(
            t.span.clone(),
            &reader::join(&t.path, "docker.network"),
            "`network` is for runtime \"swarm\" only".to_string(),
        );
    }
    if router == Some(Router::None)
        && runtime != Some(Runtime::Swarm)
        && docker.as_ref().is_some_and(|d| d.publish.is_none())
    {
        r.error(
            t.span.clone(),
            &reader::join(&t.path, "docker.publish"),
            "missing: router \"none\" needs the host address its one container is published on, e.g. publish = \"127.0.0.1:8000\""
                .to_string(),
        );
    }
    let migrations = r.table(t, "migrations").and_then(|m| {
        r.deny_unknown(
            &m,
            &["dir", "head_command", "head_table", "pg_version", "on_contract"],
        );
        let dir = r.string(&m, "dir");
        let head = r.argv(&m, "head_command");
        let head_table = r.string(&m, "head_table");
        let pg_version = r.integer(&m, "pg_version", 9, 99).map_or(15, |v| v.value as u32);
        let on_contract = match r.string(&m, "on_contract") {
            None => Some(OnContract::Warn),
            Some(v) if v.value == "warn" => Some(OnContract::Warn),
            Some(v) if v.value == "refuse" => Some(OnContract::Refuse),
            Some(v) => {
                r.error(
                    v.span,
                    &reader::join(&m.path, "on_contract"),
                    format!("\"{}\": expected \"warn\" or \"refuse\"", v.value),
                );
                None
            }
        };
        if dir.is_none() {
            r.error(
                m.span.clone(),
                &reader::join(&m.path, "dir"),
                "missing: the migrations directory, e.g. dir = \"migrations\"".to_string(),
            );
            return None;
        }
        if head.is_none() && !t.inner.contains_key("database") {
            r.error(
                m.span.clone(),
                &reader::join(&m.path, "head_command"),
                "missing: how to read today's schema head: `head_command` (an argv that prints it), \
                 or a [service.NAME.database] whose `alembic_version` table ripcord reads"
                    .to_string(),
            );
            return None;
        }
        Some(MigrationsConfig {
            dir: PathBuf::from(dir?.value),
            head_command: head.map(|h| h.value),
            head_table: head_table.map_or_else(|| "alembic_version".to_string(), |h| h.value),
            pg_version,
            on_contract: on_contract?,
        })
    });
    if router == Some(Router::Nginx) && !t.inner.contains_key("nginx") {
        r.error(
            t.span.clone(),
            &reader::join(&t.path, "nginx"),
            "missing: router \"nginx\" needs [service.NAME.nginx] with `site` and `upstream`"
                .to_string(),
        );
    }
    let health_path = r.string(t, "health_path");
    if let Some(p) = &health_path
        && !p.value.starts_with('/')
    {
        r.error(
            p.span.clone(),
            &reader::join(&t.path, "health_path"),
            format!("must start with `/`, e.g. \"/{}\"", p.value),
        );
    }
    let start_timeout = r.duration(t, "start_timeout", SECOND, DAY);
    let bake = r.duration(t, "bake", Duration::ZERO, DAY);
    let stop_timeout = r.duration(t, "stop_timeout", SECOND, DAY);
    let verify_deadline = r.duration(t, "verify_deadline", SECOND, DAY);
    let investigate = r.duration(t, "investigate", Duration::ZERO, DAY);
    let memory_limit_mb = r
        .integer(t, "memory_limit_mb", 1, 1 << 30)
        .map(|v| v.value as u64);
    let triggers = read_triggers(r, t);
    let prometheus = r.table(t, "prometheus").and_then(|pt| {
        r.deny_unknown(&pt, &["url", "rules", "ca_file"]);
        let url = match r.string(&pt, "url") {
            Some(url) if is_http_url(&url.value) => Some(url.value),
            Some(url) => {
                r.error(
                    url.span,
                    &reader::join(&pt.path, "url"),
                    format!("\"{}\" is not an http:// or https:// URL", url.value),
                );
                None
            }
            None => {
                r.error(
                    pt.span.clone(),
                    &reader::join(&pt.path, "url"),
                    "missing: the Prometheus server, e.g. url = \"http://127.0.0.1:9090\""
                        .to_string(),
                );
                None
            }
        };
        let rules = r
            .tables(&pt, "rules")
            .iter()
            .filter_map(|rt| read_metric_rule(r, rt))
            .collect();
        let ca_file = r.ca_file(&pt);
        Some(PrometheusConfig {
            url: url?,
            ca_file,
            rules,
        })
    });
    let prometheus_url = prometheus.as_ref().map(|p| p.url.clone());
    let prometheus_ca_file = prometheus.as_ref().and_then(|p| p.ca_file.clone());
    let mut integrity = r.table(t, "integrity").and_then(|it| {
        let mut allowed = CHECK_KEYS.to_vec();
        allowed.push("interval");
        let interval = r
            .duration(&it, "interval", SECOND, DAY)
            .unwrap_or(Duration::from_secs(30));
        read_check_allowing(r, &it, &allowed).map(|check| IntegrityCheck { check, interval })
    });
    let mut webhooks = Vec::new();
    let mut webhooks_ca_file = None;
    if let Some(n) = r.table(t, "notify") {
        r.deny_unknown(&n, &["webhooks", "ca_file"]);
        webhooks_ca_file = r.ca_file(&n);
        if let Some(list) = r.argv(&n, "webhooks") {
            for url in list.value {
                if is_http_url(&url) {
                    webhooks.push(url);
                } else {
                    r.error(
                        list.span.clone(),
                        &reader::join(&n.path, "webhooks"),
                        format!("\"{url}\" is not an http:// or https:// URL"),
                    );
                }
            }
        }
    }
    let command = r.argv(t, "command").map(|a| a.value);
    let mut env = BTreeMap::new();
    if let Some(e) = r.table(t, "env") {
        for (key, _) in e.inner.iter() {
            if let Some(v) = r.string(&e, key) {
                env.insert(key.to_string(), v.value);
            }
        }
    }
    let mut verify: Vec<Option<Check>> = r
        .tables(t, "verify")
        .iter()
        .map(|c| read_check(r, c))
        .collect();
    // Prometheus checks query the service's server.
    let mut needs_url = false;
    let mut checks: Vec<&mut Check> = verify.iter_mut().flatten().collect();
    if let Some(i) = integrity.as_mut() {
        checks.push(&mut i.check);
    }
    for c in checks {
        if let CheckKind::Prometheus { url, ca_file, .. } = &mut c.kind {
            url.clone_from(&prometheus_url);
            ca_file.clone_from(&prometheus_ca_file);
            needs_url |= url.is_none();
        }
    }
    if needs_url && !t.inner.contains_key("prometheus") {
        r.error(
            t.span.clone(),
            &reader::join(&t.path, "prometheus"),
            "missing: a prometheus check needs the server, e.g. [service.NAME.prometheus] url = \"http://127.0.0.1:9090\""
                .to_string(),
        );
    }
    RawService {
        name: name.to_string(),
        path: t.path.clone(),
        span: t.span.clone(),
        runtime,
        router,
        listen,
        nginx,
        docker,
        database,
        migrations,
        slots,
        health_path,
        start_timeout,
        bake,
        stop_timeout,
        command,
        env,
        verify,
        verify_deadline,
        triggers,
        investigate,
        memory_limit_mb,
        webhooks,
        webhooks_ca_file,
        integrity,
        prometheus,
    }
}

fn read_database(r: &mut Reader<'_>, t: &Table<'_>) -> Option<DatabaseConfig> {
    let before = r.errors.len();
    r.deny_unknown(
        t,
        &[
            "url",
            "password_file",
            "backup_dir",
            "keep",
            "checks",
            "pg_bin_dir",
            "backup_before_migrations",
        ],
    );
    let url = r.string(t, "url");
    match &url {
        None if !t.inner.contains_key("url") => r.error(
            t.span.clone(),
            &reader::join(&t.path, "url"),
            "missing: the database, e.g. url = \"postgresql://app@127.0.0.1:5432/app\" (the password goes in password_file or PGPASSWORD)"
                .to_string(),
        ),
        Some(u) => {
            if let Err(e) = crate::db::PgUrl::parse(&u.value) {
                r.error(u.span.clone(), &reader::join(&t.path, "url"), e.to_string());
            }
        }
        None => {}
    }
    let password_file = r.string(t, "password_file").map(|s| PathBuf::from(s.value));
    let backup_dir = r.string(t, "backup_dir").map(|s| PathBuf::from(s.value));
    let keep = r
        .integer(t, "keep", 1, 10_000)
        .map_or(7, |v| v.value as usize);
    let checks = r.argv(t, "checks").map(|a| a.value).unwrap_or_default();
    let pg_bin_dir = r.string(t, "pg_bin_dir").map(|s| PathBuf::from(s.value));
    let backup_before_migrations = r.boolean(t, "backup_before_migrations").unwrap_or(false);
    if r.errors.len() > before {
        return None;
    }
    Some(DatabaseConfig {
        url: url?.value,
        password_file,
        backup_dir,
        keep,
        checks,
        pg_bin_dir,
        backup_before_migrations,
    })
}

fn read_docker(r: &mut Reader<'_>, t: &Table<'_>, service: &str) -> Option<DockerConfig> {
    let before = r.errors.len();
    r.deny_unknown(
        t,
        &[
            "image",
            "env_file",
            "container_port",
            "publish",
            "memory_limit_mb",
            "restart",
            "name",
            "command",
            "network",
        ],
    );
    let image = r.string(t, "image").map(|s| s.value);
    let env_file = r.string(t, "env_file").map(|s| PathBuf::from(s.value));
    let container_port = r.integer(t, "container_port", 1, 65535);
    if container_port.is_none() && !t.inner.contains_key("container_port") {
        r.error(
            t.span.clone(),
            &reader::join(&t.path, "container_port"),
            "missing: the port the app listens on inside the container, e.g. container_port = 8080"
                .to_string(),
        );
    }
    let publish = r
        .string(t, "publish")
        .and_then(|s| match parse_addr(&s.value) {
            Ok(a) => Some(a),
            Err(msg) => {
                r.error(s.span, &reader::join(&t.path, "publish"), msg);
                None
            }
        });
    let memory_limit_mb = r
        .integer(t, "memory_limit_mb", 6, 1 << 30)
        .map(|v| v.value as u64);
    let restart = r.string(t, "restart");
    if let Some(p) = &restart {
        let policy = p.value.split(':').next().unwrap_or("");
        let count_ok = match p.value.split_once(':') {
            Some(("on-failure", n)) => n.parse::<u32>().is_ok(),
            Some(_) => false,
            None => true,
        };
        if !["no", "on-failure", "always", "unless-stopped"].contains(&policy) || !count_ok {
            r.error(
                p.span.clone(),
                &reader::join(&t.path, "restart"),
                format!(
                    "\"{}\" is not a restart policy; expected \"no\", \"on-failure[:N]\", \"always\" or \"unless-stopped\"",
                    p.value
                ),
            );
        }
    }
    let name = r.string(t, "name");
    if let Some(n) = &name
        && !valid_container_name(&n.value)
    {
        r.error(
            n.span.clone(),
            &reader::join(&t.path, "name"),
            format!(
                "\"{}\" is not a container name: letters, digits, `_`, `.` and `-`, starting with a letter or digit",
                n.value
            ),
        );
    }
    let command = r.argv(t, "command").map(|a| a.value);
    let network = r.string(t, "network");
    if let Some(n) = &network
        && n.value != "host"
    {
        r.error(
            n.span.clone(),
            &reader::join(&t.path, "network"),
            format!(
                "\"{}\": only \"host\" is supported (leave it out for the ingress network)",
                n.value
            ),
        );
    }
    if r.errors.len() > before {
        return None;
    }
    Some(DockerConfig {
        image,
        env_file,
        container_port: container_port?.value as u16,
        publish,
        memory_limit_mb,
        restart: restart.map_or_else(|| "no".to_string(), |r| r.value),
        name: name.map_or_else(|| service.to_string(), |n| n.value),
        command,
        network: network.map(|n| n.value),
    })
}

/// Docker's rule for container names: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
fn valid_container_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

fn read_nginx(r: &mut Reader<'_>, t: &Table<'_>) -> Option<NginxConfig> {
    let before = r.errors.len();
    r.deny_unknown(
        t,
        &[
            "site",
            "upstream",
            "access_log",
            "test_command",
            "reload_command",
            "conf",
            "log_format",
        ],
    );
    let site = r.string(t, "site");
    let upstream = r.string(t, "upstream");
    let access_log = r.string(t, "access_log").map(|s| PathBuf::from(s.value));
    let test_command = r.argv(t, "test_command").map(|a| a.value);
    let reload_command = r.argv(t, "reload_command").map(|a| a.value);
    let conf = r.string(t, "conf").map(|s| PathBuf::from(s.value));
    let log_format = r.string(t, "log_format").map(|s| s.value);
    for (key, given) in [("site", site.is_some()), ("upstream", upstream.is_some())] {
        if !given && !r.errors.iter().any(|e| e.key == reader::join(&t.path, key)) {
            r.error(
                t.span.clone(),
                &reader::join(&t.path, key),
                match key {
                    "site" => "missing: the site file ripcord edits, e.g. site = \"/etc/nginx/sites-available/app\"",
                    _ => "missing: the name of the upstream block ripcord owns, e.g. upstream = \"app\"",
                }
                .to_string(),
            );
        }
    }
    if r.errors.len() > before {
        return None;
    }
    Some(NginxConfig {
        site: PathBuf::from(site?.value),
        upstream: upstream?.value,
        access_log,
        test_command: test_command.unwrap_or_else(|| vec!["nginx".into(), "-t".into()]),
        reload_command: reload_command
            .unwrap_or_else(|| vec!["nginx".into(), "-s".into(), "reload".into()]),
        conf,
        log_format,
    })
}

fn read_metric_rule(r: &mut Reader<'_>, t: &Table<'_>) -> Option<MetricRule> {
    let before = r.errors.len();
    r.deny_unknown(
        t,
        &["name", "query", "above", "below", "consecutive", "interval"],
    );
    let query = r.string(t, "query");
    let above = r.float(t, "above", f64::MIN, f64::MAX);
    let below = r.float(t, "below", f64::MIN, f64::MAX);
    let consecutive = r
        .integer(t, "consecutive", 1, 1000)
        .map_or(2, |v| v.value as u32);
    let interval = r
        .duration(t, "interval", SECOND, HOUR)
        .unwrap_or(Duration::from_secs(10));
    let name = r.string(t, "name").map(|n| n.value);
    let Some(query) = query else {
        r.error(
            t.span.clone(),
            &t.path,
            "a metric rule needs `query = \"PROMQL\"`".to_string(),
        );
        return None;
    };
    if above.is_none() && below.is_none() {
        r.error(
            t.span.clone(),
            &t.path,
            "a metric rule fires when its value is `above = N` or `below = N`: give one"
                .to_string(),
        );
    }
    (r.errors.len() == before).then(|| MetricRule {
        name: name.unwrap_or_else(|| query.value.clone()),
        query: query.value,
        above,
        below,
        consecutive,
        interval,
    })
}

/// `[service.NAME.triggers]`: each rule is a table; `enabled = false` turns it off and
/// a key left out keeps the runbook's default. Returns `None` when a key was wrong.
/// Why `min_samples` is refused: the sequential test needs no minimum.
const MIN_SAMPLES_GONE: &str = "is no longer used: the rule is a sequential test that needs no minimum \
     sample (a total failure is caught within a handful of requests, a healthy release \
     almost never); set `false_alarm = \"1 per 1e8 requests\"` to change how rare a false \
     rollback must be (docs/guard-statistics.md)";

fn read_triggers(r: &mut Reader<'_>, t: &Table<'_>) -> Option<Triggers> {
    let mut out = Triggers::default();
    let Some(tt) = r.table(t, "triggers") else {
        return (!t.inner.contains_key("triggers")).then_some(out);
    };
    let before = r.errors.len();
    r.deny_unknown(
        &tt,
        &[
            "error_rate",
            "latency_p95",
            "oom_kills",
            "crash",
            "cpu",
            "health",
        ],
    );
    let enabled = |r: &mut Reader<'_>, rt: &Table<'_>| r.boolean(rt, "enabled").unwrap_or(true);
    if let Some(rt) = r.table(&tt, "error_rate") {
        r.removed(&rt, "min_samples", MIN_SAMPLES_GONE);
        r.deny_unknown(&rt, &["enabled", "above", "window", "false_alarm"]);
        let d = ErrorRateRule::default();
        let rule = ErrorRateRule {
            // Strictly inside (0, 1): the healthy zone is 0.8 × `above`, and a test of
            // "above 100%" could never fire.
            above: r.float(&rt, "above", 0.001, 0.99).unwrap_or(d.above),
            window: r.duration(&rt, "window", SECOND, DAY).unwrap_or(d.window),
            requests_per_false_alarm: r
                .false_alarm(&rt, "false_alarm")
                .unwrap_or(d.requests_per_false_alarm),
        };

        out.error_rate = enabled(r, &rt).then_some(rule);
    }
    if let Some(rt) = r.table(&tt, "latency_p95") {
        r.removed(&rt, "min_samples", MIN_SAMPLES_GONE);
        r.deny_unknown(
            &rt,
            &["enabled", "factor", "window", "floor", "false_alarm"],
        );
        let d = LatencyRule::default();
        let rule = LatencyRule {
            factor: r.float(&rt, "factor", 1.0, 1000.0).unwrap_or(d.factor),
            window: r.duration(&rt, "window", SECOND, DAY).unwrap_or(d.window),
            floor: r
                .duration(&rt, "floor", Duration::ZERO, HOUR)
                .unwrap_or(d.floor),
            requests_per_false_alarm: r
                .false_alarm(&rt, "false_alarm")
                .unwrap_or(d.requests_per_false_alarm),
        };
        out.latency_p95 = enabled(r, &rt).then_some(rule);
    }
    if let Some(b) = r.boolean(&tt, "oom_kills") {
        out.oom_kills = b;
    }
    if let Some(b) = r.boolean(&tt, "crash") {
        out.crash = b;
    }
    if let Some(rt) = r.table(&tt, "cpu") {
        r.deny_unknown(&rt, &["enabled", "above", "for", "action"]);
        let d = CpuRule::default();
        let investigate = match r.string(&rt, "action") {
            None => true,
            Some(a) if a.value == "investigate" => true,
            Some(a) if a.value == "rollback" => false,
            Some(a) => {
                r.error(
                    a.span,
                    &reader::join(&rt.path, "action"),
                    format!(
                        "unknown action \"{}\"; expected \"investigate\" or \"rollback\"",
                        a.value
                    ),
                );
                true
            }
        };
        let rule = CpuRule {
            above: r.float(&rt, "above", 0.0, 1024.0).unwrap_or(d.above),
            for_: r.duration(&rt, "for", SECOND, DAY).unwrap_or(d.for_),
            investigate,
        };
        out.cpu = enabled(r, &rt).then_some(rule);
    }
    if let Some(rt) = r.table(&tt, "health") {
        r.deny_unknown(
            &rt,
            &["enabled", "consecutive_failures", "interval", "timeout"],
        );
        let d = HealthRule::default();
        let rule = HealthRule {
            consecutive_failures: r
                .integer(&rt, "consecutive_failures", 1, 1000)
                .map_or(d.consecutive_failures, |v| v.value as u32),
            interval: r
                .duration(&rt, "interval", MIN_PROBE, HOUR)
                .unwrap_or(d.interval),
            timeout: r
                .duration(&rt, "timeout", MIN_PROBE, HOUR)
                .unwrap_or(d.timeout),
        };
        out.health = enabled(r, &rt).then_some(rule);
    }
    (r.errors.len() == before).then_some(out)
}

fn read_slots(
    r: &mut Reader<'_>,
    t: &Table<'_>,
) -> Option<Spanned<(Option<SocketAddr>, Option<SocketAddr>)>> {
    let slots = r.table(t, "slots")?;
    r.deny_unknown(&slots, &["blue", "green"]);
    let one = |r: &mut Reader<'_>, key: &str| -> Option<SocketAddr> {
        let Some(item) = slots.inner.get(key) else {
            r.error(
                slots.span.clone(),
                &slots.path,
                format!("missing slot `{key}`: blue-green needs both `blue` and `green`"),
            );
            return None;
        };
        let span = reader::item_span(&slots, key, item);
        let key_path = reader::join(&slots.path, key);
        if let Some(port) = item.as_integer() {
            return match u16::try_from(port) {
                Ok(p) if p > 0 => Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), p)),
                _ => {
                    r.error(
                        span,
                        &key_path,
                        format!("{port} is not a valid port (1-65535)"),
                    );
                    None
                }
            };
        }
        if let Some(s) = item.as_str() {
            return match parse_addr(s) {
                Ok(a) => Some(a),
                Err(msg) => {
                    r.error(span, &key_path, msg);
                    None
                }
            };
        }
        r.wrong_type(&slots, key, item, "a port number or \"host:port\"");
        None
    };
    let blue = one(r, "blue");
    let green = one(r, "green");
    Some(Spanned {
        value: (blue, green),
        span: slots.span.clone(),
    })
}

/// Whether `url` is one the HTTP client can fetch.
fn is_http_url(url: &str) -> bool {
    url.starts_with("http://") || url.starts_with("https://")
}

fn read_check(r: &mut Reader<'_>, t: &Table<'_>) -> Option<Check> {
    read_check_allowing(r, t, CHECK_KEYS)
}

/// A check whose table may also hold `allowed` keys beyond the check's own.
fn read_check_allowing(r: &mut Reader<'_>, t: &Table<'_>, allowed: &[&str]) -> Option<Check> {
    let before = r.errors.len();
    r.deny_unknown(t, allowed);
    let http = r.string(t, "http");
    let command = r.argv(t, "command");
    let status = r.integer(t, "status", 100, 599).map(|s| s.value as u16);
    let body_contains = r.string(t, "body_contains").map(|s| s.value);
    let json_field = r.string(t, "json_field").map(|s| s.value);
    let json_equals = r.string(t, "json_equals").map(|s| s.value);
    let exit_code = r
        .integer(t, "exit_code", 0, 255)
        .map(|s| s.value as i32)
        .unwrap_or(0);
    let timeout = r
        .duration(t, "timeout", MIN_PROBE, HOUR)
        .unwrap_or(Duration::from_secs(5));
    let name = r.string(t, "name").map(|s| s.value);
    if json_field.is_some() != json_equals.is_some() {
        r.error(
            t.span.clone(),
            &t.path,
            "`json_field` and `json_equals` go together: give both or neither".to_string(),
        );
    }
    let prometheus = r.string(t, "prometheus");
    let below = r.float(t, "below", f64::MIN, f64::MAX);
    let above = r.float(t, "above", f64::MIN, f64::MAX);
    let given = [http.is_some(), command.is_some(), prometheus.is_some()]
        .iter()
        .filter(|g| **g)
        .count();
    if given > 1 {
        r.error(
            t.span.clone(),
            &t.path,
            "a check has exactly one of `http`, `command` or `prometheus`".to_string(),
        );
        return None;
    }
    let ca_file = r.ca_file(t);
    if t.inner.contains_key("ca_file") && http.is_none() {
        r.error(
            t.span.clone(),
            &reader::join(&t.path, "ca_file"),
            "`ca_file` goes with `http = \"https://...\"` (a prometheus check uses [service.NAME.prometheus] ca_file)".to_string(),
        );
    }
    let kind = if let Some(url) = http {
        if !is_http_url(&url.value) {
            r.error(
                url.span,
                &reader::join(&t.path, "http"),
                format!(
                    "expected an http:// or https:// URL, found \"{}\"",
                    url.value
                ),
            );
        }
        CheckKind::Http {
            url: url.value,
            status,
            body_contains,
            json_field,
            json_equals,
            ca_file,
        }
    } else if let Some(argv) = command {
        CheckKind::Command {
            argv: argv.value,
            exit_code,
        }
    } else if let Some(q) = prometheus {
        if below.is_none() && above.is_none() {
            r.error(
                q.span.clone(),
                &t.path,
                "a prometheus check needs `below = N` or `above = N` (or both)".to_string(),
            );
        }
        CheckKind::Prometheus {
            query: q.value,
            below,
            above,
            url: None,
            ca_file: None,
        }
    } else {
        if r.errors.len() == before {
            r.error(
                t.span.clone(),
                &t.path,
                "a check needs `http = \"URL\"`, `command = [\"argv\", ...]` or `prometheus = \"QUERY\"`"
                    .to_string(),
            );
        }
        return None;
    };
    if r.errors.len() > before {
        return None;
    }
    let name = name.unwrap_or_else(|| match &kind {
        CheckKind::Http { url, .. } => format!("GET {url}"),
        CheckKind::Command { argv, .. } => argv.join(" "),
        CheckKind::Prometheus { query, .. } => format!("prometheus: {query}"),
    });
    Some(Check {
        name,
        kind,
        timeout,
    })
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Parses `host:port` where host is an IP address or `localhost`.
fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        if a.port() == 0 {
            return Err(format!("\"{s}\" has port 0; give a fixed port"));
        }
        return Ok(a);
    }
    if let Some(port) = s.strip_prefix("localhost:")
        && let Ok(p) = port.parse::<u16>()
        && p > 0
    {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), p));
    }
    Err(format!(
        "\"{s}\" is not an address: expected \"host:port\" with an IP address, e.g. \"127.0.0.1:8080\""
    ))
}

#[cfg(test)]
mod tests;
