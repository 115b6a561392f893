//! `ripcord.toml` → a typed [`Config`].
//!
//! Loading has two stages: stage one walks the TOML document and reads every key into
//! typed values, collecting each unknown key and wrong type with its key path and line;
//! `validate` then checks what only makes sense across keys (missing slots, port clashes,
//! a runtime/router pair this build cannot run). Both stages collect every problem before
//! failing, so `ripcord config check` can print them all at once.
//!
//! The files: `model.rs` and `triggers.rs` are what a loaded config is (the trigger
//! rules with the runbook's defaults); `reader.rs` reads typed values with their spans
//! (`duration.rs`: durations with units); `read.rs` walks the root and each service,
//! `tables.rs` and `checks.rs` its sub-tables, into `raw.rs`, what stage one read,
//! which becomes the model once `validate.rs` found nothing.
//!
//! This module never starts anything: it only describes. The daemon and the executors
//! turn a [`ServiceConfig`] into running parts.

mod checks;
pub mod duration;
mod model;
mod raw;
mod read;
mod reader;
pub mod redact;
mod tables;
mod triggers;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

pub use model::{
    Check, CheckKind, DatabaseConfig, DockerConfig, IntegrityCheck, KubernetesConfig, MetricRule,
    MigrationsConfig, NginxConfig, OnContract, PrometheusConfig, ProxyLimits, ProxyTls, Router,
    Runtime, ServiceConfig, Slot, Slots, UpstreamProtocol,
};
pub(crate) use raw::{RawConfig, RawService};
use reader::{Reader, Table};
pub use triggers::{
    CpuRule, DEFAULT_REQUESTS_PER_FALSE_ALARM, ErrorRateRule, HealthRule, LatencyRule, Triggers,
};

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
    /// `redact`: the name patterns of secret env variables (see `redact.rs`).
    pub redact: redact::Redact,
    /// `[watch] socket_grace`: how long the proxies' listening sockets are kept open
    /// for the next watcher after one died (`None`: `"off"`, they die with it).
    pub socket_grace: Option<Duration>,
}

/// How long a dead watcher's listening sockets wait for the next one by default.
pub const DEFAULT_SOCKET_GRACE: Duration = Duration::from_secs(60);

/// Where the dashboard listens when the config says nothing.
pub const DEFAULT_DASHBOARD: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9470);

/// The dashboard's address, and whether a person chose it: a default address that is
/// taken (another watcher on this host) only costs the dashboard, never the watcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DashboardListen {
    pub addr: SocketAddr,
    pub explicit: bool,
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

/// The byte offset of the line where `[`, `{` and dotted keys nest deepest (brackets
/// carried across lines, dots counted per line), ignoring strings: only a place to point
/// at when the TOML parser names none.
fn deepest_nesting(src: &str) -> usize {
    let (mut depth, mut best, mut best_at, mut line_start) = (0usize, 0usize, 0usize, 0usize);
    let mut line_max = 0usize;
    let mut dots = 0usize;
    for (i, b) in src.bytes().enumerate() {
        match b {
            b'[' | b'{' => depth += 1,
            b']' | b'}' => depth = depth.saturating_sub(1),
            b'.' => dots += 1,
            b'\n' => {
                if line_max.max(depth) + dots > best {
                    (best, best_at) = (line_max.max(depth) + dots, line_start);
                }
                (line_start, line_max, dots) = (i + 1, depth, 0);
                continue;
            }
            _ => {}
        }
        line_max = line_max.max(depth);
    }
    if line_max.max(depth) + dots > best {
        best_at = line_start;
    }
    best_at
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
                // toml_edit gives its recursion limit no place: name the line that nests
                // deepest, which is where a person would look.
                match e.span() {
                    None if message.contains("recursion limit") => {
                        let at = deepest_nesting(src);
                        reader.error(
                            Some(at..at),
                            "",
                            format!(
                                "invalid TOML: {message}: keys, arrays or inline tables nest \
                                 too deeply (the deepest is on this line)"
                            ),
                        );
                    }
                    span => reader.error(span, "", format!("invalid TOML: {message}")),
                }
                return Err(invalid(reader.errors));
            }
        };
        let mut reader = Reader::new(src, path);
        let root = Table {
            inner: doc.as_table(),
            path: String::new(),
            span: None,
        };
        let raw = read::read_root(&mut reader, &root);
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
            socket_grace: raw.socket_grace.unwrap_or(Some(DEFAULT_SOCKET_GRACE)),
            redact: raw
                .redact
                .clone()
                .map_or_else(redact::Redact::default, |patterns| redact::Redact {
                    patterns,
                }),
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
                    if let Some(f) = s.env_file.as_mut()
                        && f.is_relative()
                    {
                        *f = base.join(&*f);
                    }
                    for f in s.config_files.iter_mut().filter(|f| f.is_relative()) {
                        *f = base.join(&*f);
                    }
                    if let Some(f) = s.docker.as_mut().and_then(|d| d.env_file.as_mut())
                        && f.is_relative()
                    {
                        *f = base.join(&*f);
                    }
                    if let Some(f) = s.kubernetes.as_mut().and_then(|k| k.kubeconfig.as_mut())
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

#[cfg(test)]
mod tests;
