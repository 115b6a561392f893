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
    let bin = which("prometheus").unwrap_or_else(|| {
        panic!("the `prometheus` binary is missing: install it (`apt-get install -y prometheus`); .ci/run does")
    });
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: self\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
        ),
    )
    .unwrap();
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
    let url = format!("http://127.0.0.1:{port}/api/v1/query?query=up");
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
