//! A service's sub-tables: `database`, `docker`, `kubernetes`, `nginx`, `migrations` and
//! `triggers`.

use std::path::PathBuf;
use std::time::Duration;

use super::duration::{DAY, HOUR, MIN_PROBE, SECOND};
use super::model::{
    DatabaseConfig, DockerConfig, KubernetesConfig, MigrationsConfig, NginxConfig, OnContract,
    ProxyLimits, ProxyTls, UpstreamProtocol,
};
use super::reader::{self, Reader, Table, parse_addr};
use super::triggers::{CpuRule, ErrorRateRule, HealthRule, LatencyRule, Triggers};
use crate::migrate;

/// How long an image pull may take by default: a large image over a slow link.
pub const DEFAULT_PULL_TIMEOUT: Duration = Duration::from_secs(300);

/// `[service.NAME.database]`: the PostgreSQL database, for backups and restore.
pub(super) fn read_database(r: &mut Reader<'_>, t: &Table<'_>) -> Option<DatabaseConfig> {
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

/// `[service.NAME.docker]`: how a release's container runs.
/// `[service.NAME.proxy]`: the built-in proxy's limits per client (what is not given
/// keeps its default) and its certificate, if it serves HTTPS.
pub(super) fn read_proxy(r: &mut Reader<'_>, t: &Table<'_>) -> (ProxyLimits, Option<ProxyTls>) {
    r.deny_unknown(
        t,
        &[
            "max_connections",
            "header_timeout",
            "response_timeout",
            "max_header_bytes",
            "max_uri_bytes",
            "websocket_drain",
            "upstream_protocol",
            "tls_cert",
            "tls_key",
        ],
    );
    let tls = read_proxy_tls(r, t);
    let d = ProxyLimits::default();
    let upstream_protocol = r.string(t, "upstream_protocol").and_then(|s| {
        match s.value.as_str() {
            "http1" => Some(UpstreamProtocol::Http1),
            "h2c" => Some(UpstreamProtocol::H2c),
            other => {
                r.error(
                    s.span,
                    &reader::join(&t.path, "upstream_protocol"),
                    format!("`{other}` is not a protocol ripcord speaks to releases: expected \"http1\" or \"h2c\""),
                );
                None
            }
        }
    });
    let size = |r: &mut Reader<'_>, key: &str, min: i64, default: usize| {
        r.integer(t, key, min, 1 << 30)
            .map_or(default, |v| v.value as usize)
    };
    let limits = ProxyLimits {
        max_connections: size(r, "max_connections", 1, d.max_connections),
        max_header_bytes: size(r, "max_header_bytes", 1024, d.max_header_bytes),
        max_uri_bytes: size(r, "max_uri_bytes", 256, d.max_uri_bytes),
        header_timeout: r
            .duration(t, "header_timeout", SECOND, HOUR)
            .unwrap_or(d.header_timeout),
        response_timeout: r
            .duration(t, "response_timeout", SECOND, DAY)
            .unwrap_or(d.response_timeout),
        websocket_drain: r
            .duration(t, "websocket_drain", Duration::ZERO, DAY)
            .unwrap_or(d.websocket_drain),
        upstream_protocol: upstream_protocol.unwrap_or(d.upstream_protocol),
    };
    (limits, tls)
}

/// `tls_cert` and `tls_key`, both or neither; each file is read now, so a missing or
/// empty one is an error at its key rather than at the proxy's start.
fn read_proxy_tls(r: &mut Reader<'_>, t: &Table<'_>) -> Option<ProxyTls> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let cert = r.string(t, "tls_cert");
    let key = r.string(t, "tls_key");
    let (cert, key) = match (cert, key) {
        (None, None) => return None,
        (Some(cert), Some(key)) => (cert, key),
        (Some(one), None) | (None, Some(one)) => {
            let (given, missing) = if t.inner.contains_key("tls_cert") {
                ("tls_cert", "tls_key")
            } else {
                ("tls_key", "tls_cert")
            };
            r.error(
                one.span,
                &reader::join(&t.path, given),
                format!("`{given}` goes with `{missing}`: give both (a PEM certificate and its private key)"),
            );
            return None;
        }
    };
    let tls = ProxyTls {
        cert: r.beside_config(&cert.value),
        key: r.beside_config(&key.value),
    };
    let certs = CertificateDer::pem_file_iter(&tls.cert)
        .map_err(|e| e.to_string())
        .and_then(|c| c.collect::<Result<Vec<_>, _>>().map_err(|e| e.to_string()));
    let cert_problem = match certs {
        Ok(c) if c.is_empty() => Some(format!("{} holds no PEM certificate", tls.cert.display())),
        Ok(_) => None,
        Err(e) => Some(format!("reading {}: {e}", tls.cert.display())),
    };
    if let Some(problem) = cert_problem {
        r.error(cert.span, &reader::join(&t.path, "tls_cert"), problem);
        return None;
    }
    if let Err(e) = PrivateKeyDer::from_pem_file(&tls.key) {
        r.error(
            key.span,
            &reader::join(&t.path, "tls_key"),
            format!("reading a PEM private key from {}: {e}", tls.key.display()),
        );
        return None;
    }
    Some(tls)
}

pub(super) fn read_docker(
    r: &mut Reader<'_>,
    t: &Table<'_>,
    service: &str,
) -> Option<DockerConfig> {
    let before = r.errors.len();
    r.removed(
        t,
        "registry_password",
        "ripcord never reads a password from its config file (it is often committed): put it \
         in an environment variable of the watcher and name that with \
         registry_password_env = \"VAR\" (or `docker login` the registry)",
    );
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
            "registry_username",
            "registry_password_env",
            "pull_timeout",
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
    let pull_timeout = r.duration(t, "pull_timeout", SECOND, DAY);
    let registry_username = r.string(t, "registry_username");
    let registry_password_env = r.string(t, "registry_password_env");
    match (&registry_username, &registry_password_env) {
        (Some(_), None) | (None, Some(_)) => r.error(
            t.span.clone(),
            &reader::join(&t.path, "registry_username"),
            "registry_username and registry_password_env go together (the user, and the \
             environment variable holding its password); set both or neither"
                .to_string(),
        ),
        _ => {}
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
        registry_username: registry_username.map(|u| u.value),
        registry_password_env: registry_password_env.map(|e| e.value),
        pull_timeout: pull_timeout.unwrap_or(DEFAULT_PULL_TIMEOUT),
    })
}

/// `[service.NAME.kubernetes]`: the Deployment a release is applied to.
pub(super) fn read_kubernetes(r: &mut Reader<'_>, t: &Table<'_>) -> Option<KubernetesConfig> {
    let before = r.errors.len();
    r.deny_unknown(
        t,
        &[
            "namespace",
            "deployment",
            "container",
            "image",
            "address",
            "kubeconfig",
            "context",
            "keep_releases",
            "registry_digest",
        ],
    );
    let name = |r: &mut Reader<'_>, key: &str, example: &str| {
        let v = r.string(t, key);
        match &v {
            None if !t.inner.contains_key(key) => r.error(
                t.span.clone(),
                &reader::join(&t.path, key),
                format!("missing: e.g. {key} = \"{example}\""),
            ),
            Some(s) if !valid_kube_name(&s.value) => r.error(
                s.span.clone(),
                &reader::join(&t.path, key),
                format!(
                    "\"{}\" is not a Kubernetes name: lowercase letters, digits and `-`, \
                     starting and ending with a letter or digit, at most 63 characters",
                    s.value
                ),
            ),
            _ => {}
        }
        v.map(|s| s.value)
    };
    let namespace = name(r, "namespace", "default");
    let deployment = name(r, "deployment", "web");
    let container = name(r, "container", "web");
    let image = r.string(t, "image").map(|s| s.value);
    let address = r.string(t, "address");
    if address.is_none() && !t.inner.contains_key("address") {
        r.error(
            t.span.clone(),
            &reader::join(&t.path, "address"),
            "missing: where the Deployment answers from this host (its Service or ingress), \
             e.g. address = \"127.0.0.1:8000\""
                .to_string(),
        );
    }
    let address = address.and_then(|s| match parse_addr(&s.value) {
        Ok(a) => Some(a),
        Err(msg) => {
            r.error(s.span, &reader::join(&t.path, "address"), msg);
            None
        }
    });
    let kubeconfig = r.string(t, "kubeconfig").map(|s| PathBuf::from(s.value));
    let context = r.string(t, "context").map(|s| s.value);
    let keep_releases = r
        .integer(t, "keep_releases", 2, 1000)
        .map_or(10, |v| v.value as usize);
    let registry_digest = r.boolean(t, "registry_digest").unwrap_or(true);
    if r.errors.len() > before {
        return None;
    }
    Some(KubernetesConfig {
        namespace: namespace?,
        deployment: deployment?,
        container: container?,
        image,
        address: address?,
        kubeconfig,
        context,
        keep_releases,
        registry_digest,
    })
}

/// A DNS-1123 label: what namespaces, containers and (here) Deployments are named by.
fn valid_kube_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Docker's rule for container names: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
fn valid_container_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// `[service.NAME.nginx]`: the site file and upstream block ripcord owns.
pub(super) fn read_nginx(r: &mut Reader<'_>, t: &Table<'_>) -> Option<NginxConfig> {
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

/// `[service.NAME.migrations]`; `has_database`: the service has a `[service.NAME.database]`
/// to read the head from when there is no `head_command`.
pub(super) fn read_migrations(
    r: &mut Reader<'_>,
    m: &Table<'_>,
    has_database: bool,
) -> Option<MigrationsConfig> {
    r.deny_unknown(
        m,
        &[
            "dir",
            "head_command",
            "head_table",
            "pg_version",
            "on_contract",
            "format",
            "disable",
            "severity",
            "lock_timeout",
            "statement_timeout",
        ],
    );
    let before = r.errors.len();
    let format = match r.string(m, "format") {
        None => migrate::Format::Auto,
        Some(v) => migrate::Format::parse(&v.value).unwrap_or_else(|| {
            r.error(
                v.span,
                &reader::join(&m.path, "format"),
                format!(
                    "\"{}\": expected \"auto\", \"alembic\", \"django\", \"rails\" or \"sql\"",
                    v.value
                ),
            );
            migrate::Format::Auto
        }),
    };
    let known = migrate::rule_ids();
    let unknown_rule =
        |rule: &str| format!("unknown rule `{rule}`; the rules are: {}", known.join(", "));
    let disable = match r.strings(m, "disable") {
        Some(list) => {
            for (i, rule) in list.value.iter().enumerate() {
                if !known.contains(&rule.as_str()) {
                    r.error(
                        list.span.clone(),
                        &format!("{}[{i}]", reader::join(&m.path, "disable")),
                        unknown_rule(rule),
                    );
                }
            }
            list.value
        }
        None => Vec::new(),
    };
    let mut severity = std::collections::BTreeMap::new();
    if let Some(t) = r.table(m, "severity") {
        let keys: Vec<String> = t.inner.iter().map(|(k, _)| k.to_string()).collect();
        for rule in keys {
            let Some(level) = r.string(&t, &rule) else {
                continue;
            };
            if !known.contains(&rule.as_str()) {
                r.error(
                    level.span.clone(),
                    &reader::join(&t.path, &rule),
                    unknown_rule(&rule),
                );
                continue;
            }
            match migrate::Severity::parse(&level.value) {
                Some(s) => {
                    severity.insert(rule, s);
                }
                None => r.error(
                    level.span,
                    &reader::join(&t.path, &rule),
                    format!(
                        "\"{}\": expected \"error\", \"warning\" or \"info\"",
                        level.value
                    ),
                ),
            }
        }
    }
    let timeout = |r: &mut Reader<'_>, key: &str, default: migrate::Timeout| match r.string(m, key)
    {
        None => default,
        Some(v) => migrate::Timeout::parse(&v.value).unwrap_or_else(|e| {
            r.error(v.span, &reader::join(&m.path, key), e);
            default
        }),
    };
    let lock_timeout = timeout(r, "lock_timeout", migrate::Timeout::Required);
    let statement_timeout = timeout(r, "statement_timeout", migrate::Timeout::Off);
    let settings_ok = r.errors.len() == before;
    let dir = r.string(m, "dir");
    let head = r.argv(m, "head_command");
    let head_table = r.string(m, "head_table");
    let pg_version = r
        .integer(m, "pg_version", 9, 99)
        .map_or(15, |v| v.value as u32);
    let on_contract = match r.string(m, "on_contract") {
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
    if head.is_none() && !has_database {
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
        format,
        disable,
        severity,
        lock_timeout,
        statement_timeout,
    })
    .filter(|_| settings_ok)
}

/// Why `min_samples` is refused: the sequential test needs no minimum.
const MIN_SAMPLES_GONE: &str = "is no longer used: the rule is a sequential test that needs no minimum \
     sample (a total failure is caught within a handful of requests, a healthy release \
     almost never); set `false_alarm = \"1 per 1e8 requests\"` to change how rare a false \
     rollback must be (docs/guard-statistics.md)";

/// `[service.NAME.triggers]`: each rule is a table; `enabled = false` turns it off and
/// a key left out keeps the runbook's default. Returns `None` when a key was wrong.
pub(super) fn read_triggers(r: &mut Reader<'_>, t: &Table<'_>) -> Option<Triggers> {
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
