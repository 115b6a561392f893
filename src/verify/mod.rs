//! Verification: the configured checks (HTTP status, body substring or JSON field;
//! a command's exit code) run after every deploy and rollback and by `ripcord verify`.
//! Each check has its own timeout and the set has one deadline. Checks only observe;
//! a command check runs an argv, never a shell string.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::{Check, CheckKind};
use crate::http::HttpClient;

/// The outcome of one check.
#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    pub name: String,
    pub ok: bool,
    /// What was seen, in a few words (`200`, `exit 1`, `timed out after 5s`).
    pub detail: String,
    pub elapsed_ms: u64,
}

/// The outcome of the whole set.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub ok: bool,
    pub checks: Vec<CheckResult>,
    pub elapsed_ms: u64,
}

impl VerifyReport {
    /// One line per check, ✓ or ✗, for people.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for c in &self.checks {
            let mark = if c.ok { "✓" } else { "✗" };
            out.push_str(&format!(
                "  {mark} {}  ({}, {} ms)\n",
                c.name, c.detail, c.elapsed_ms
            ));
        }
        if self.checks.is_empty() {
            out.push_str("  (no checks configured: add [[service.NAME.verify]] entries)\n");
        }
        out
    }

    pub fn failures(&self) -> Vec<&CheckResult> {
        self.checks.iter().filter(|c| !c.ok).collect()
    }
}

/// Runs `checks` in order within `deadline`; `version` replaces `{version}` in URLs,
/// expected values and arguments. A check not reached before the deadline fails.
pub async fn run(checks: &[Check], deadline: Duration, version: &str) -> VerifyReport {
    let start = Instant::now();
    let client = HttpClient::default();
    let mut results = Vec::new();
    for check in checks {
        let left = deadline.saturating_sub(start.elapsed());
        let timeout = check.timeout.min(left);
        let name = check.name.replace("{version}", version);
        let t0 = Instant::now();
        let (ok, detail) = if timeout.is_zero() {
            (false, format!("not run: the {deadline:?} deadline passed"))
        } else {
            match tokio::time::timeout(timeout, one(&client, &check.kind, version, timeout)).await {
                Ok(r) => r,
                Err(_) => (false, format!("timed out after {timeout:?}")),
            }
        };
        results.push(CheckResult {
            name,
            ok,
            detail,
            elapsed_ms: t0.elapsed().as_millis() as u64,
        });
    }
    VerifyReport {
        ok: results.iter().all(|r| r.ok),
        checks: results,
        elapsed_ms: start.elapsed().as_millis() as u64,
    }
}

/// The shared client, or (when the check names one) a client that also trusts the
/// check's CA file.
fn trusting(
    client: &HttpClient,
    ca_file: &Option<std::path::PathBuf>,
) -> Result<HttpClient, crate::http::HttpError> {
    match ca_file {
        Some(path) => HttpClient::with_ca_file(Some(path)),
        None => Ok(client.clone()),
    }
}

async fn one(
    client: &HttpClient,
    kind: &CheckKind,
    version: &str,
    timeout: Duration,
) -> (bool, String) {
    match kind {
        CheckKind::Http {
            url,
            status,
            body_contains,
            json_field,
            json_equals,
            ca_file,
        } => {
            let url = url.replace("{version}", version);
            let client = match trusting(client, ca_file) {
                Ok(c) => c,
                Err(e) => return (false, e.to_string()),
            };
            let resp = match client.get(&url, timeout).await {
                Ok(r) => r,
                Err(e) => return (false, e.to_string()),
            };
            let status_ok = match status {
                Some(s) => resp.status == *s,
                None => (200..300).contains(&resp.status),
            };
            if !status_ok {
                let want = status.map_or("2xx".to_string(), |s| s.to_string());
                return (false, format!("status {} (want {want})", resp.status));
            }
            let body = String::from_utf8_lossy(&resp.body);
            if let Some(needle) = body_contains {
                let needle = needle.replace("{version}", version);
                if !body.contains(&needle) {
                    return (
                        false,
                        format!("status {}, body lacks {needle:?}", resp.status),
                    );
                }
            }
            if let (Some(field), Some(want)) = (json_field, json_equals) {
                let want = want.replace("{version}", version);
                let got = serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| json_path(&v, field));
                match got {
                    Some(g) if g == want => {}
                    Some(g) => return (false, format!("{field} is {g:?}, want {want:?}")),
                    None => return (false, format!("no JSON field {field} in the body")),
                }
            }
            (true, format!("status {}", resp.status))
        }
        CheckKind::Prometheus {
            query,
            below,
            above,
            url,
            ca_file,
        } => {
            let Some(base) = url else {
                return (false, "no Prometheus server configured".to_string());
            };
            let client = match trusting(client, ca_file) {
                Ok(c) => c,
                Err(e) => return (false, format!("no data: {e}")),
            };
            let query = query.replace("{version}", version);
            match crate::prometheus::query(&client, base, &query, timeout).await {
                crate::prometheus::QueryResult::NoData { why } => {
                    (false, format!("no data: {why}"))
                }
                crate::prometheus::QueryResult::Values { values } => {
                    for (series, v) in &values {
                        let name = if series.is_empty() {
                            String::new()
                        } else {
                            format!("{series} ")
                        };
                        if let Some(b) = below
                            && *v >= *b
                        {
                            return (false, format!("{name}{v} is not below {b}"));
                        }
                        if let Some(a) = above
                            && *v <= *a
                        {
                            return (false, format!("{name}{v} is not above {a}"));
                        }
                    }
                    let shown: Vec<String> = values.iter().map(|(_, v)| v.to_string()).collect();
                    (true, format!("value {}", shown.join(", ")))
                }
            }
        }
        CheckKind::Command { argv, exit_code } => {
            let argv: Vec<String> = argv
                .iter()
                .map(|a| a.replace("{version}", version))
                .collect();
            let mut cmd = tokio::process::Command::new(&argv[0]);
            cmd.args(&argv[1..])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .kill_on_drop(true);
            match cmd.output().await {
                Ok(out) => {
                    let code = out.status.code();
                    let ok = code == Some(*exit_code);
                    let mut detail = match code {
                        Some(c) => format!("exit {c}"),
                        None => "killed by a signal".to_string(),
                    };
                    if !ok {
                        let err = String::from_utf8_lossy(&out.stderr);
                        if let Some(last) = err.lines().rev().find(|l| !l.trim().is_empty()) {
                            detail.push_str(&format!(": {}", last.trim()));
                        }
                    }
                    (ok, detail)
                }
                Err(e) => (false, format!("cannot run `{}`: {e}", argv[0])),
            }
        }
    }
}

/// A dotted path into JSON (`a.b.0.c`), rendered as a string for comparison.
fn json_path(v: &serde_json::Value, path: &str) -> Option<String> {
    let mut cur = v;
    for part in path.split('.') {
        cur = match cur {
            serde_json::Value::Object(m) => m.get(part)?,
            serde_json::Value::Array(a) => a.get(part.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(match cur {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(argv: &[&str], exit_code: i32) -> Check {
        Check {
            name: argv.join(" "),
            kind: CheckKind::Command {
                argv: argv.iter().map(|s| s.to_string()).collect(),
                exit_code,
            },
            timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn json_paths() {
        let v = serde_json::json!({"a": {"b": [1, {"c": "x"}]}, "n": 3, "t": true});
        assert_eq!(json_path(&v, "a.b.1.c").as_deref(), Some("x"));
        assert_eq!(json_path(&v, "n").as_deref(), Some("3"));
        assert_eq!(json_path(&v, "t").as_deref(), Some("true"));
        assert_eq!(json_path(&v, "a.z"), None);
    }

    #[tokio::test]
    async fn command_checks_compare_exit_codes() {
        let r = run(
            &[
                cmd(&["true"], 0),
                cmd(&["false"], 1),
                cmd(&["sh", "-c", "echo boom >&2; exit 2"], 0),
            ],
            Duration::from_secs(10),
            "v1",
        )
        .await;
        assert!(!r.ok);
        let oks: Vec<bool> = r.checks.iter().map(|c| c.ok).collect();
        assert_eq!(oks, [true, true, false]);
        assert_eq!(r.checks[2].detail, "exit 2: boom");
        assert!(r.render().contains("✗ sh -c echo boom >&2; exit 2"));
    }

    #[tokio::test]
    async fn the_deadline_bounds_the_set() {
        let mut slow = cmd(&["sleep", "5"], 0);
        slow.timeout = Duration::from_secs(60);
        let r = run(&[slow, cmd(&["true"], 0)], Duration::from_millis(300), "v1").await;
        assert!(!r.ok);
        assert!(
            r.checks[0].detail.starts_with("timed out"),
            "{:?}",
            r.checks[0]
        );
        assert!(
            r.checks[1].detail.starts_with("not run"),
            "{:?}",
            r.checks[1]
        );
        assert!(r.elapsed_ms < 2000);
    }

    #[tokio::test]
    async fn http_check_against_nothing_fails_clearly() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let check = Check {
            name: "health".into(),
            kind: CheckKind::Http {
                url: format!("http://127.0.0.1:{port}/health"),
                status: None,
                body_contains: None,
                json_field: None,
                json_equals: None,
                ca_file: None,
            },
            timeout: Duration::from_secs(2),
        };
        let r = run(&[check], Duration::from_secs(5), "v1").await;
        assert!(!r.ok);
        assert!(r.checks[0].detail.contains("onnect"), "{:?}", r.checks[0]);
    }
}
