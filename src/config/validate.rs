//! Stage two of loading `ripcord.toml`: checks that need more than one key (missing
//! slots, port clashes within and across services). Like stage one it collects every
//! problem; it never reads the file system or the network.
//!
//! [`Config::warnings`] is apart from both stages: what is allowed but works less well
//! than it could. It may read the nginx config a `log_format` is named in.

use std::net::SocketAddr;

use super::reader::{Reader, Spanned, join};
use super::{Config, ConfigError, RawConfig, Router};

impl Config {
    /// What is valid but weaker than it could be, for `ripcord config check` and the
    /// watcher's start. Never a reason to refuse the config.
    ///
    /// An access log whose format has no `$upstream_addr` (nginx's `combined`, the
    /// default) cannot tie a request to the slot that answered it. A `log_format` that
    /// cannot be read or compiled gives no warning here: the watcher refuses to start
    /// with the reason.
    pub fn warnings(&self) -> Vec<ConfigError> {
        use crate::nginx_conf::log_format::{LogFormat, attribution_warning};
        let mut out = Vec::new();
        for (name, svc) in &self.services {
            let Some(n) = svc.nginx.as_ref().filter(|n| n.access_log.is_some()) else {
                continue;
            };
            let conf = n
                .conf
                .as_ref()
                .and_then(|path| std::fs::read_to_string(path).ok());
            let Ok(format) = LogFormat::from_setting(n.log_format.as_deref(), conf.as_deref())
            else {
                continue;
            };
            if let Some(message) = attribution_warning(&format) {
                out.push(ConfigError {
                    file: self.path.clone(),
                    line: None,
                    key: format!("service.{name}.nginx.log_format"),
                    message,
                });
            }
        }
        out
    }
}

pub(super) fn validate(r: &mut Reader<'_>, raw: &RawConfig) {
    if raw.services.is_empty() && r.errors.is_empty() {
        r.error(
            None,
            "service",
            "no services configured: add a `[service.NAME]` table (see examples/ripcord.toml)"
                .to_string(),
        );
    }
    // Every address a service binds or expects to own, to find clashes across services.
    let mut taken: Vec<(SocketAddr, String, Option<std::ops::Range<usize>>)> = Vec::new();
    if let Some(m) = &raw.metrics_listen {
        taken.push((m.value, "watch.metrics_listen".to_string(), m.span.clone()));
    }
    if let Some(Spanned {
        value: Some(addr),
        span,
    }) = &raw.dashboard
    {
        taken.push((*addr, "watch.dashboard_listen".to_string(), span.clone()));
    }
    for svc in &raw.services {
        let listen_key = join(&svc.path, "listen");
        if svc.router == Some(Router::Proxy)
            && svc.listen.is_none()
            && !r.errors.iter().any(|e| e.key == listen_key)
        {
            r.error(
                svc.span.clone(),
                &join(&svc.path, "listen"),
                "missing: router \"proxy\" needs the address the proxy listens on, e.g. \
                 listen = \"127.0.0.1:8080\""
                    .to_string(),
            );
        }
        match &svc.slots {
            // Image replace and swarm have one address instead of two slots.
            None if svc.router == Some(Router::None)
                || matches!(
                    svc.runtime,
                    Some(super::Runtime::Swarm | super::Runtime::Kubernetes)
                ) => {}
            None => {
                if !r
                    .errors
                    .iter()
                    .any(|e| e.key.starts_with(&join(&svc.path, "slots")))
                {
                    r.error(
                        svc.span.clone(),
                        &join(&svc.path, "slots"),
                        "missing: blue-green needs two slots, e.g. slots = { blue = 8081, green = 8082 }"
                            .to_string(),
                    );
                }
            }
            Some(slots) => {
                if let (Some(b), Some(g)) = slots.value
                    && b == g
                {
                    r.error(
                        slots.span.clone(),
                        &join(&svc.path, "slots"),
                        format!("blue and green are both {b}: the slots need different ports"),
                    );
                }
            }
        }
        let mut mine = Vec::new();
        if let Some(l) = &svc.listen {
            mine.push((l.value, join(&svc.path, "listen"), l.span.clone()));
        }
        if let Some(p) = svc.docker.as_ref().and_then(|d| d.publish)
            && (svc.router == Some(Router::None) || svc.runtime == Some(super::Runtime::Swarm))
        {
            mine.push((p, join(&svc.path, "docker.publish"), svc.span.clone()));
        }
        if let Some(k) = &svc.kubernetes {
            mine.push((
                k.address,
                join(&svc.path, "kubernetes.address"),
                svc.span.clone(),
            ));
        }
        if let Some(s) = &svc.slots {
            for (addr, key) in [(s.value.0, "blue"), (s.value.1, "green")] {
                if let Some(a) = addr {
                    mine.push((a, join(&svc.path, &format!("slots.{key}")), s.span.clone()));
                }
            }
        }
        let first_of_mine = taken.len();
        for (addr, key, span) in mine {
            let same_slots = |k: &str| k.starts_with(&join(&svc.path, "slots."));
            if let Some((_, other, _)) = taken.iter().enumerate().find_map(|(i, t)| {
                // Blue equal to green in one service was reported above.
                let reported = i >= first_of_mine && same_slots(&t.1) && same_slots(&key);
                (clash(t.0, addr) && !reported).then_some(t)
            }) {
                r.error(
                    span.clone(),
                    &key,
                    format!("port {} is already used by `{other}`", addr.port()),
                );
            }
            taken.push((addr, key, span));
        }
    }
}

/// Two addresses clash when they share a port and one could receive the other's traffic
/// (the same IP, or either is the unspecified address).
fn clash(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::Config;

    fn nginx_service(nginx_extra: &str) -> Config {
        let text = format!(
            "[service.web]\nruntime = \"external\"\nrouter = \"nginx\"\n\
             slots = {{ blue = 8000, green = 8001 }}\n\
             [service.web.nginx]\nsite = \"/etc/nginx/sites-available/app\"\n\
             upstream = \"app\"\n{nginx_extra}\n"
        );
        Config::parse(&text, Path::new("ripcord.toml")).unwrap()
    }

    #[test]
    fn an_access_log_without_upstream_addr_is_a_warning() {
        // No log_format: nginx's `combined`, which has no $upstream_addr.
        let cfg = nginx_service("access_log = \"/var/log/nginx/app.log\"");
        let warnings = cfg.warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert_eq!(warnings[0].key, "service.web.nginx.log_format");
        assert!(
            warnings[0].message.contains("$upstream_addr")
                && warnings[0].message.contains("log_format ripcord"),
            "{}",
            warnings[0]
        );
        let cfg = nginx_service(&format!(
            "access_log = \"/l\"\nlog_format = {:?}",
            crate::nginx_conf::log_format::RECOMMENDED
        ));
        assert!(cfg.warnings().is_empty());
        // No access log followed: nothing to attribute.
        assert!(nginx_service("").warnings().is_empty());
    }
}
