//! Checks (`[[service.NAME.verify]]`, `[service.NAME.integrity]`), and the other
//! tables that name a URL: `prometheus` with its metric rules, and `notify`.

use std::path::PathBuf;
use std::time::Duration;

use super::duration::{DAY, HOUR, MIN_PROBE, SECOND};
use super::model::{Check, CheckKind, IntegrityCheck, MetricRule, PrometheusConfig};
use super::reader::{self, Reader, Table};

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

/// Whether `url` is one the HTTP client can fetch.
fn is_http_url(url: &str) -> bool {
    url.starts_with("http://") || url.starts_with("https://")
}

/// `[[service.NAME.verify]]`: one check.
pub(super) fn read_check(r: &mut Reader<'_>, t: &Table<'_>) -> Option<Check> {
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

/// `[service.NAME.integrity]`: a check and how often it runs.
pub(super) fn read_integrity(r: &mut Reader<'_>, it: &Table<'_>) -> Option<IntegrityCheck> {
    let mut allowed = CHECK_KEYS.to_vec();
    allowed.push("interval");
    let interval = r
        .duration(it, "interval", SECOND, DAY)
        .unwrap_or(Duration::from_secs(30));
    read_check_allowing(r, it, &allowed).map(|check| IntegrityCheck { check, interval })
}

/// `[service.NAME.prometheus]`: the server and the metric rules.
pub(super) fn read_prometheus(r: &mut Reader<'_>, pt: &Table<'_>) -> Option<PrometheusConfig> {
    r.deny_unknown(pt, &["url", "rules", "ca_file"]);
    let url = match r.string(pt, "url") {
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
                "missing: the Prometheus server, e.g. url = \"http://127.0.0.1:9090\"".to_string(),
            );
            None
        }
    };
    let rules = r
        .tables(pt, "rules")
        .iter()
        .filter_map(|rt| read_metric_rule(r, rt))
        .collect();
    let ca_file = r.ca_file(pt);
    Some(PrometheusConfig {
        url: url?,
        ca_file,
        rules,
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

/// `[service.NAME.notify]`: the webhooks and the CA file they trust.
pub(super) fn read_notify(r: &mut Reader<'_>, n: &Table<'_>) -> (Vec<String>, Option<PathBuf>) {
    let mut webhooks = Vec::new();
    r.deny_unknown(n, &["webhooks", "ca_file"]);
    let ca_file = r.ca_file(n);
    if let Some(list) = r.argv(n, "webhooks") {
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
    (webhooks, ca_file)
}
