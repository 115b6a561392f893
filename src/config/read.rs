//! Stage one's walk: the root (`[watch]`, `[service.*]`) and each service's own keys;
//! its sub-tables are read by `tables.rs` and `checks.rs`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use super::checks::{read_check, read_integrity, read_notify, read_prometheus};
use super::duration::{DAY, SECOND};
use super::model::{Check, CheckKind, Router, Runtime};
use super::raw::{RawConfig, RawService};
use super::reader::{self, Reader, Spanned, Table, parse_addr};
use super::tables::{
    read_database, read_docker, read_kubernetes, read_migrations, read_nginx, read_proxy,
    read_triggers,
};

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
    "env_file",
    "config_files",
    "verify",
    "verify_deadline",
    "triggers",
    "investigate",
    "drill_budget",
    "drill_max_age",
    "memory_limit_mb",
    "notify",
    "integrity",
    "prometheus",
    "nginx",
    "migrations",
    "docker",
    "database",
    "proxy",
    "kubernetes",
];

pub(super) fn read_root(r: &mut Reader<'_>, root: &Table<'_>) -> RawConfig {
    r.deny_unknown(root, &["service", "watch", "redact"]);
    let redact = read_redact(r, root);
    let mut metrics_listen = None;
    let mut dashboard = None;
    let mut socket_grace = None;
    if let Some(w) = r.table(root, "watch") {
        r.deny_unknown(&w, &["metrics_listen", "dashboard_listen", "socket_grace"]);
        socket_grace = if w.inner.get("socket_grace").and_then(|i| i.as_str()) == Some("off") {
            Some(None)
        } else {
            r.duration(&w, "socket_grace", SECOND, DAY).map(Some)
        };
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
        redact,
        socket_grace,
    }
}

/// `redact = ["*_KEY", ...]`: an empty list turns redaction off; a pattern holds
/// letters, digits, `_` and `*` only.
fn read_redact(r: &mut Reader<'_>, root: &Table<'_>) -> Option<Vec<String>> {
    let item = root.inner.get("redact")?;
    if item.as_array().is_some_and(|a| a.is_empty()) {
        return Some(Vec::new());
    }
    let patterns = r.argv(root, "redact")?;
    let mut ok = true;
    for (i, p) in patterns.value.iter().enumerate() {
        if !super::redact::valid_pattern(p) {
            ok = false;
            r.error(
                patterns.span.clone(),
                &format!("redact[{i}]"),
                format!(
                    "\"{p}\" is not a name pattern: letters, digits, `_` and `*` (any run), e.g. \"*_TOKEN\""
                ),
            );
        }
    }
    ok.then_some(patterns.value)
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
        "kubernetes" => Some(Runtime::Kubernetes),
        other => {
            r.error(
                s.span,
                &reader::join(&t.path, "runtime"),
                format!(
                    "unknown runtime \"{other}\"; expected \"process\", \"external\", \"docker\", \"swarm\" or \"kubernetes\""
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
            if !matches!(
                runtime,
                Some(Runtime::Docker | Runtime::Swarm | Runtime::Kubernetes)
            ) {
                r.error(
                    s.span,
                    &reader::join(&t.path, "router"),
                    "router \"none\" (image replace) needs runtime = \"docker\" (or \"swarm\", \"kubernetes\"); use \"proxy\" or \"nginx\" for blue-green"
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
    let (proxy_limits, proxy_tls) = match r.table(t, "proxy").map(|p| read_proxy(r, &p)) {
        Some((limits, tls)) => (Some(limits), tls),
        None => (None, None),
    };
    let database = r.table(t, "database").and_then(|d| read_database(r, &d));
    let kubernetes = r
        .table(t, "kubernetes")
        .and_then(|k| read_kubernetes(r, &k));
    if runtime == Some(Runtime::Kubernetes) && !t.inner.contains_key("kubernetes") {
        r.error(
            t.span.clone(),
            &reader::join(&t.path, "kubernetes"),
            "missing: runtime \"kubernetes\" needs [service.NAME.kubernetes] with `namespace`, \
             `deployment`, `container` and `address`"
                .to_string(),
        );
    }
    if runtime.is_some()
        && runtime != Some(Runtime::Kubernetes)
        && t.inner.contains_key("kubernetes")
    {
        r.error(
            t.span.clone(),
            &reader::join(&t.path, "kubernetes"),
            "[service.NAME.kubernetes] is for runtime = \"kubernetes\" only".to_string(),
        );
    }
    if runtime == Some(Runtime::Kubernetes) && t.inner.contains_key("docker") {
        r.error(
            t.span.clone(),
            &reader::join(&t.path, "docker"),
            "runtime \"kubernetes\" takes its image and address from [service.NAME.kubernetes], \
             not [service.NAME.docker]"
                .to_string(),
        );
    }
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
    let migrations = r
        .table(t, "migrations")
        .and_then(|m| read_migrations(r, &m, t.inner.contains_key("database")));
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
    let drill_budget = r.duration(t, "drill_budget", SECOND, DAY);
    let drill_max_age = r.duration(t, "drill_max_age", DAY, 3650 * DAY);
    let memory_limit_mb = r
        .integer(t, "memory_limit_mb", 1, 1 << 30)
        .map(|v| v.value as u64);
    let triggers = read_triggers(r, t);
    let prometheus = r
        .table(t, "prometheus")
        .and_then(|pt| read_prometheus(r, &pt));
    let prometheus_url = prometheus.as_ref().map(|p| p.url.clone());
    let prometheus_ca_file = prometheus.as_ref().and_then(|p| p.ca_file.clone());
    let mut integrity = r
        .table(t, "integrity")
        .and_then(|it| read_integrity(r, &it));
    let (webhooks, webhooks_ca_file) = r
        .table(t, "notify")
        .map(|n| read_notify(r, &n))
        .unwrap_or_default();
    let command = r.argv(t, "command").map(|a| a.value);
    let mut env = BTreeMap::new();
    if let Some(e) = r.table(t, "env") {
        for (key, _) in e.inner.iter() {
            if let Some(v) = r.string(&e, key) {
                env.insert(key.to_string(), v.value);
            }
        }
    }
    let config_files = r
        .argv(t, "config_files")
        .and_then(|f| {
            let key = reader::join(&t.path, "config_files");
            if !matches!(runtime, Some(Runtime::Process) | None) {
                r.error(
                    f.span,
                    &key,
                    "`config_files` is for runtime \"process\"; a container's files belong in its image"
                        .to_string(),
                );
                return None;
            }
            let mut names = std::collections::BTreeSet::new();
            for file in &f.value {
                let name = std::path::Path::new(file).file_name();
                if !name.is_some_and(|n| names.insert(n.to_os_string())) {
                    r.error(
                        f.span.clone(),
                        &key,
                        format!(
                            "`{file}`: each config file needs a file name of its own (a release's \
                             copies sit side by side in one directory)"
                        ),
                    );
                    return None;
                }
            }
            Some(f.value.into_iter().map(PathBuf::from).collect())
        })
        .unwrap_or_default();
    let env_file = r.string(t, "env_file").and_then(|f| {
        if matches!(runtime, Some(Runtime::Process) | None) {
            return Some(PathBuf::from(f.value));
        }
        r.error(
            f.span,
            &reader::join(&t.path, "env_file"),
            "`env_file` here is for runtime \"process\"; containers take theirs from [service.NAME.docker] env_file"
                .to_string(),
        );
        None
    });
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
        proxy_limits,
        proxy_tls,
        kubernetes,
        database,
        migrations,
        slots,
        health_path,
        start_timeout,
        bake,
        stop_timeout,
        command,
        env,
        env_file,
        config_files,
        verify,
        verify_deadline,
        triggers,
        investigate,
        drill_budget,
        drill_max_age,
        memory_limit_mb,
        webhooks,
        webhooks_ca_file,
        integrity,
        prometheus,
    }
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

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}
