//! Verification checks against a real Prometheus server (Debian's `prometheus`, started
//! here on a free loopback port, scraping itself). In CI it must run: a missing
//! `prometheus` binary fails the test with what to install.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts Prometheus scraping itself every second and waits (bounded) for `up == 1`.
fn start_prometheus() -> Prometheus {
    start_prometheus_on(free_port(), &[])
}

/// Starts Prometheus on `port`, scraping itself and `apps` (job `app`) every second.
fn start_prometheus_on(port: u16, apps: &[u16]) -> Prometheus {
    let bin = which("prometheus").unwrap_or_else(|| {
        panic!("the `prometheus` binary is missing: install it (`apt-get install -y prometheus`); .ci/run does")
    });
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    let mut yml = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: self\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
    );
    if !apps.is_empty() {
        let targets: Vec<String> = apps.iter().map(|p| format!("'127.0.0.1:{p}'")).collect();
        yml.push_str(&format!(
            "  - job_name: app\n    static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        ));
    }
    std::fs::write(&config, yml).unwrap();
    let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
    let child = Command::new(bin)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    let p = Prometheus {
        child,
        port,
        _dir: dir,
    };
    let url = format!("http://127.0.0.1:{port}/api/v1/query?query=up%7Bjob%3D%22self%22%7D");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = get(&url);
        if status == 200 && body.contains("\"value\"") && body.contains("\"1\"") {
            return p;
        }
        assert!(
            Instant::now() < deadline,
            "prometheus never scraped itself: {status} {body}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| std::path::Path::new(d).join(name))
        .find(|p| p.is_file())
}

#[test]
fn prometheus_checks_pass_fail_and_say_no_data() {
    let prom = start_prometheus();
    let dead = free_port();
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"[service.web]
listen = "127.0.0.1:{}"
slots = {{ blue = {}, green = {} }}

[service.web.prometheus]
url = "http://127.0.0.1:{}"

[[service.web.verify]]
name = "scrape is up"
prometheus = 'up{{job="self"}}'
above = 0.5

[[service.web.verify]]
name = "error rate low"
prometheus = "vector(0.005)"
below = 0.01

[[service.web.verify]]
name = "error rate high"
prometheus = "vector(0.5)"
below = 0.01

[[service.web.verify]]
name = "metric that does not exist"
prometheus = "no_such_metric_anywhere"
below = 1

[[service.web.verify]]
name = "not a number"
prometheus = "vector(0/0)"
below = 1
"#,
        free_port(),
        free_port(),
        free_port(),
        prom.port
    );
    std::fs::write(dir.path().join("ripcord.toml"), config).unwrap();
    let out = Command::new(BIN)
        .args(["--json", "verify", "web"])
        .current_dir(dir.path())
        .env_remove("RIPCORD_CONFIG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let results: Vec<(String, bool, String)> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_string(),
                c["ok"].as_bool().unwrap(),
                c["detail"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let by = |n: &str| results.iter().find(|r| r.0 == n).unwrap().clone();
    assert!(by("scrape is up").1, "{results:?}");
    assert!(by("error rate low").1, "{results:?}");
    let high = by("error rate high");
    assert!(!high.1 && high.2 == "0.5 is not below 0.01", "{high:?}");
    let empty = by("metric that does not exist");
    assert!(!empty.1 && empty.2 == "no data: empty result", "{empty:?}");
    let nan = by("not a number");
    assert!(!nan.1 && nan.2 == "no data: NaN", "{nan:?}");

    // An unreachable server is no data too, never a pass.
    std::fs::write(
        dir.path().join("ripcord.toml"),
        format!(
            "[service.web]\nlisten = \"127.0.0.1:{}\"\nslots = {{ blue = {}, green = {} }}\n[service.web.prometheus]\nurl = \"http://127.0.0.1:{dead}\"\n[[service.web.verify]]\nprometheus = \"vector(0)\"\nbelow = 1\n",
            free_port(),
            free_port(),
            free_port()
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["verify", "web"])
        .current_dir(dir.path())
        .env_remove("RIPCORD_CONFIG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    assert!(
        stdout(&out).contains("no data: unreachable"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn a_metric_rule_on_the_apps_own_metrics_rolls_back() {
    let prom_port = free_port();
    // The built-in 5xx rule is off: the app's own metrics, through Prometheus, decide.
    let extra = format!(
        r#"[service.web.triggers]
error_rate = {{ enabled = false }}

[service.web.prometheus]
url = "http://127.0.0.1:{prom_port}"

[[service.web.prometheus.rules]]
name = "app 5xx ratio"
query = 'sum(rate(demo_requests_total{{version="{{version}}",code="500"}}[5s])) / sum(rate(demo_requests_total{{version="{{version}}"}}[5s]))'
above = 0.1
consecutive = 2
interval_secs = 1"#
    );
    let mut p = Project::new(&extra, "");
    let _prom = start_prometheus_on(prom_port, &[p.blue, p.green]);
    p.start_watcher();
    assert_ok(&p.deploy("v1", &[]), "deploy v1");
    let load = Load::start(p.url("/api/load"), 2, Duration::from_secs(90), 500_000);
    // The guard labels a metric rule `metric:NAME` in its status; an absent label reads
    // as None here, never as a pass.
    let rule = |p: &Project| {
        let status = p.json(&["status", "web"]);
        let text = status["live"]["guard"]["rules"]["metric:app 5xx ratio"]
            .as_str()
            .map(str::to_string);
        (text, status)
    };
    // While v1 is healthy the rule evaluates v1's own metrics and finds them within
    // bounds: a number was read, not "no data", and the label is there.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (text, status) = rule(&p);
        if text
            .as_deref()
            .is_some_and(|t| t.starts_with("ok: app 5xx ratio: within bounds"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the metric rule never evaluated v1 within bounds: {status:#}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    // Several evaluations later it is still there and has not fired on v1.
    for _ in 0..6 {
        std::thread::sleep(Duration::from_millis(500));
        let (text, status) = rule(&p);
        let text = text.unwrap_or_else(|| panic!("the metric rule left the status: {status:#}"));
        assert!(
            !text.starts_with("fired"),
            "the rule fired on v1: {status:#}"
        );
    }
    assert_eq!(serving(&p), "v1");
    assert_eq!(p.json(&["incident", "list"]), serde_json::json!([]));

    assert_ok(
        &p.deploy("v2", &["--error-ratio", "0.5", "--after-secs", "1"]),
        "deploy v2",
    );
    eventually(
        "the metric rule rolls v2 back",
        Duration::from_secs(45),
        || serving(&p) == "v1",
    );
    load.stop();
    eventually("the incident is resolved", Duration::from_secs(10), || {
        p.json(&["incident", "list"])[0]["status"] == "resolved"
    });
    let list = p.json(&["incident", "list"]);
    assert_eq!(list[0]["rule"], "metric", "{list:#}");
    assert!(
        list[0]["summary"]
            .as_str()
            .unwrap()
            .contains("app 5xx ratio"),
        "{list:#}"
    );
}

/// Metric rules whose query has nothing to say (an empty result, NaN) are "no data":
/// reported in status, never a pass read as health and never a trigger.
#[test]
fn metric_rules_with_no_data_are_reported_and_never_fire() {
    let prom_port = free_port();
    let extra = format!(
        r#"[service.web.triggers]
error_rate = {{ enabled = false }}

[service.web.prometheus]
url = "http://127.0.0.1:{prom_port}"

[[service.web.prometheus.rules]]
name = "empty"
query = 'sum(rate(ripcord_test_no_such_metric_total[5s]))'
above = 0.1
consecutive = 1
interval_secs = 1

[[service.web.prometheus.rules]]
name = "nan"
query = 'vector(0) / vector(0)'
above = 0.1
consecutive = 1
interval_secs = 1"#
    );
    let mut p = Project::new(&extra, "");
    let _prom = start_prometheus_on(prom_port, &[p.blue, p.green]);
    p.start_watcher();
    assert_ok(&p.deploy("v1", &[]), "deploy v1");
    let rules = |p: &Project| p.json(&["status", "web"])["live"]["guard"]["rules"].clone();
    eventually(
        "both rules are evaluated and say no data",
        Duration::from_secs(30),
        || {
            let r = rules(&p);
            ["metric:empty", "metric:nan"].iter().all(|k| {
                r[*k]
                    .as_str()
                    .is_some_and(|t| t.starts_with("no data") && !t.contains("not evaluated"))
            })
        },
    );
    // Several evaluations later, still nothing fired and nobody acted.
    std::thread::sleep(Duration::from_secs(3));
    let r = rules(&p);
    for k in ["metric:empty", "metric:nan"] {
        assert!(r[k].as_str().unwrap().starts_with("no data"), "{r:#}");
    }
    assert_eq!(p.json(&["incident", "list"]), serde_json::json!([]));
    assert_eq!(serving(&p), "v1");
}

/// PromQL in a query string: everything but unreserved characters percent-encoded.
fn query_url(port: u16, promql: &str) -> String {
    let mut q = String::new();
    for b in promql.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            q.push(b as char);
        } else {
            q.push_str(&format!("%{b:02X}"));
        }
    }
    format!("http://127.0.0.1:{port}/api/v1/query?query={q}")
}

/// The one value of an instant query, if Prometheus has exactly one series for it.
fn query_one(port: u16, promql: &str) -> Option<f64> {
    let (status, body) = get(&query_url(port, promql));
    assert_eq!(status, 200, "{promql}: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let result = v["data"]["result"].as_array()?;
    if result.len() != 1 {
        return None;
    }
    result[0]["value"][1].as_str()?.parse().ok()
}

/// The value of one sample line in ripcord's own exposition.
fn exposed(text: &str, sample: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// ripcord's own `/metrics` (prometheus-client's OpenMetrics text) scraped by a real
/// Prometheus: the rollback the guard made and the proxy's request count arrive with
/// the names, labels and values ripcord exposes.
#[test]
fn prometheus_scrapes_ripcords_own_metrics() {
    let metrics_port = free_port();
    let prom_port = free_port();
    let mut p = Project::new(
        &format!("[watch]\nmetrics_listen = \"127.0.0.1:{metrics_port}\""),
        "",
    );
    p.start_watcher();
    let _prom = start_prometheus_on(prom_port, &[metrics_port]);
    eventually(
        "prometheus scrapes the watcher's /metrics",
        Duration::from_secs(30),
        || {
            query_one(
                prom_port,
                &format!("up{{job=\"app\",instance=\"127.0.0.1:{metrics_port}\"}}"),
            ) == Some(1.0)
        },
    );
    bad_v2_rolled_back_under_load(&p);

    let rollbacks = "ripcord_rollbacks_total{job=\"app\",service=\"web\",trigger=\"error_rate\",outcome=\"verified\"}";
    eventually(
        "prometheus has the one verified rollback",
        Duration::from_secs(30),
        || query_one(prom_port, rollbacks) == Some(1.0),
    );
    assert_eq!(
        query_one(
            prom_port,
            "ripcord_rollback_duration_seconds_count{job=\"app\",service=\"web\"}"
        ),
        Some(1.0)
    );
    // With the load stopped the request counter settles: Prometheus's latest value is
    // the one the endpoint serves (the guard's last batch may land a moment later).
    let mut last = (None, None);
    eventually(
        "prometheus's request count matches the endpoint's",
        Duration::from_secs(30),
        || {
            let (status, text) = get(&format!("http://127.0.0.1:{metrics_port}/metrics"));
            assert_eq!(status, 200);
            let here = exposed(&text, "ripcord_proxy_requests_total{service=\"web\"}");
            let there = query_one(
                prom_port,
                "ripcord_proxy_requests_total{job=\"app\",service=\"web\"}",
            );
            last = (here, there);
            here.is_some_and(|n| n > 0.0) && here == there
        },
    );
    let (requests, _) = last;
    let errors = query_one(
        prom_port,
        "ripcord_proxy_5xx_total{job=\"app\",service=\"web\"}",
    )
    .expect("the 5xx counter is scraped");
    assert!(
        errors > 0.0 && errors < requests.unwrap(),
        "v2 failed some requests, not all: {errors} of {requests:?}"
    );
}
