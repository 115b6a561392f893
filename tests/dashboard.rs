//! The dashboard in a real headless browser (Debian's `chromium`, driven over WebDriver
//! by `chromedriver`), against a real watcher with real releases under load: the
//! overview shows the active release; a failing release moves the chart and brings an
//! incident onto the page without a reload; the report opens with its chart; a rollback
//! without the token is refused, with it done. Plus the action API's guards over plain
//! HTTP: no token, a wrong token, another site.
//!
//! A missing `chromium` or `chromedriver` fails the test with what to install.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

/// `chromedriver` on a free loopback port, killed on drop.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    fn start() -> Driver {
        let port = free_port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start chromedriver ({e}): install Debian's `chromium` and \
                     `chromium-driver` (scripts/test does)"
                )
            });
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver never listened");
            std::thread::sleep(Duration::from_millis(50));
        }
        Driver { child, port }
    }

    async fn browser(&self) -> Client {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,1700"],
            }),
        );
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("a WebDriver session in headless chromium")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `script` in the page until it returns true (bounded).
async fn until(c: &Client, what: &str, max: Duration, script: &str) {
    let deadline = Instant::now() + max;
    loop {
        let v = c.execute(script, vec![]).await.unwrap_or(Value::Null);
        if v == Value::Bool(true) {
            return;
        }
        if Instant::now() > deadline {
            let text = c
                .execute("return document.body.innerText", vec![])
                .await
                .unwrap_or_default();
            panic!("{what}: not within {max:?}; the page says:\n{text}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn js(c: &Client, script: &str) -> Value {
    c.execute(script, vec![]).await.unwrap()
}

fn dashboard_project() -> (Project, u16) {
    let port = free_port();
    let p = Project::new(
        &format!("bake_secs = 2\n[watch]\ndashboard_listen = \"127.0.0.1:{port}\""),
        "",
    );
    (p, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dashboard_follows_an_incident_live_and_acts_only_with_the_token() {
    let driver = Driver::start();
    let (mut p, port) = dashboard_project();
    p.start_watcher();
    let base = format!("http://127.0.0.1:{port}");
    // v0, then v1: after the guard rolls a bad v2 back to v1, a person's rollback has
    // somewhere to go.
    assert_ok(&p.deploy("v0", &[]), "deploy v0");
    assert_ok(&p.deploy("v1", &[]), "deploy v1");
    let load = Load::start(p.url("/api/load"), 4, Duration::from_secs(120), 400_000);

    let c = driver.browser().await;
    c.goto(&format!("{base}/")).await.unwrap();
    until(
        &c,
        "the overview shows v1 active",
        Duration::from_secs(15),
        "const a = document.querySelector('[data-service=\"web\"] .active'); \
         return !!a && a.textContent.startsWith('v1 ');",
    )
    .await;
    let previous = js(
        &c,
        "return document.querySelector('[data-service=\"web\"] .previous').textContent",
    )
    .await;
    assert!(previous.as_str().unwrap().starts_with("v0 "), "{previous}");

    c.goto(&format!("{base}/services/web")).await.unwrap();
    until(
        &c,
        "the service page draws traffic",
        Duration::from_secs(15),
        "const ch = document.getElementById('chart'); \
         return !!ch && Number(ch.dataset.requests) > 0;",
    )
    .await;
    let page_id = js(&c, "return window.ripcordPageId").await;
    let incidents_before = js(
        &c,
        "return document.querySelectorAll('#incidents-list li[data-incident]').length",
    )
    .await;
    assert_eq!(incidents_before, json!(0));

    // Bad a second after it starts: its deploy-time verification passes, as in life.
    assert_ok(
        &p.deploy("v2", &["--error-ratio", "0.5", "--after-secs", "1"]),
        "deploy v2",
    );
    until(
        &c,
        // The guard switches within a second, so a second's ratio stays small: any 5xx
        // on the line is the chart moving.
        "the chart shows the 5xx and the incident appears",
        Duration::from_secs(40),
        "const ch = document.getElementById('chart'); \
         return Number(ch.dataset.maxRatio) > 0 \
           && document.querySelectorAll('#incidents-list li[data-incident]').length > 0 \
           && document.getElementById('active').textContent.startsWith('v1 ') \
           && document.querySelectorAll('#chart line[data-marker=\"switch\"]').length > 0 \
           && [...document.querySelectorAll('tr[data-release]')] \
                .some(r => r.textContent.includes('v2') && r.textContent.includes('bad'));",
    )
    .await;
    assert_eq!(
        js(&c, "return window.ripcordPageId").await,
        page_id,
        "the page must update in place, not reload"
    );
    let markers = js(
        &c,
        "return [...document.querySelectorAll('#chart line[data-marker]')].map(l => l.dataset.marker)",
    )
    .await;
    for m in ["deploy", "trigger", "switch"] {
        assert!(
            markers.as_array().unwrap().iter().any(|v| v == m),
            "no {m} marker on the chart: {markers}"
        );
    }
    let shot = c.screenshot().await.unwrap();
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    std::fs::write(&out, &shot).unwrap();
    assert!(shot.starts_with(b"\x89PNG"), "a PNG screenshot");

    // The report, with its chart.
    let incident = p.json(&["incident", "list"])[0]["id"].as_i64().unwrap();
    c.find(Locator::Css(&format!(
        "#incidents-list li[data-incident=\"{incident}\"] a"
    )))
    .await
    .unwrap()
    .click()
    .await
    .unwrap();
    until(
        &c,
        "the report opens",
        Duration::from_secs(15),
        &format!(
            "const r = document.querySelector('article.report[data-incident=\"{incident}\"]'); \
             return !!r && r.querySelector('h1') !== null \
               && r.querySelector('img[src=\"/incidents/{incident}/chart.svg\"]') !== null \
               && r.querySelector('table') !== null;"
        ),
    )
    .await;
    let img_ok = js(
        &c,
        "const i = document.querySelector('article.report img'); \
         return i.complete && i.naturalWidth > 0;",
    )
    .await;
    assert_eq!(img_ok, json!(true), "the chart image loads");

    // Rollback: refused without the token, done with it.
    c.goto(&format!("{base}/services/web")).await.unwrap();
    until(
        &c,
        "the actions are on the page",
        Duration::from_secs(15),
        "return !!document.querySelector('button[data-action=\"rollback\"]') \
           && document.getElementById('active').textContent.startsWith('v1 ');",
    )
    .await;
    c.find(Locator::Id("reason"))
        .await
        .unwrap()
        .send_keys("checking v0 from the browser")
        .await
        .unwrap();
    let rollback = Locator::Css("button[data-action=\"rollback\"]");
    c.find(rollback).await.unwrap().click().await.unwrap();
    until(
        &c,
        "a rollback without the token is refused",
        Duration::from_secs(15),
        "const r = document.getElementById('action-result'); \
         return r.className === 'error' && r.textContent.includes('refused');",
    )
    .await;
    assert_eq!(
        tokio::task::block_in_place(|| serving(&p)),
        "v1",
        "a refused rollback changes nothing"
    );

    let token = p.json(&["dashboard"])["token"]
        .as_str()
        .unwrap()
        .to_string();
    c.find(Locator::Id("token"))
        .await
        .unwrap()
        .send_keys(&token)
        .await
        .unwrap();
    c.find(rollback).await.unwrap().click().await.unwrap();
    until(
        &c,
        "a rollback with the token is done",
        Duration::from_secs(40),
        "const r = document.getElementById('action-result'); \
         return r.className === 'done' && r.textContent.includes('v0 is active');",
    )
    .await;
    assert_eq!(tokio::task::block_in_place(|| serving(&p)), "v0");
    let events = p.json(&["events", "web"]);
    let started = events
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|e| e["kind"] == "rollback_started")
        .cloned()
        .unwrap_or_default();
    assert!(
        started.to_string().contains("checking v0 from the browser"),
        "the person's reason is in the ledger: {started}"
    );
    load.stop();
    c.close().await.unwrap();
}

/// The action API over plain HTTP: what a script or another site could send.
#[test]
fn actions_need_the_token_and_the_same_site_while_reading_needs_neither() {
    let (mut p, port) = dashboard_project();
    p.start_watcher();
    assert_ok(&p.deploy("v1", &[]), "deploy v1");
    let base = format!("http://127.0.0.1:{port}");
    let token = p.json(&["dashboard"])["token"]
        .as_str()
        .unwrap()
        .to_string();

    let post = |path: &str, headers: &[(&str, &str)], body: &str| -> (u16, Value) {
        let mut args: Vec<String> = vec![
            "-s".into(),
            "-o".into(),
            "-".into(),
            "-w".into(),
            "\n%{http_code}".into(),
            "-X".into(),
            "POST".into(),
            "-H".into(),
            "Content-Type: application/json".into(),
            "--data".into(),
            body.into(),
        ];
        for (k, v) in headers {
            args.push("-H".into());
            args.push(format!("{k}: {v}"));
        }
        args.push(format!("{base}{path}"));
        let out = Command::new("curl").args(&args).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').unwrap();
        (
            code.parse().unwrap(),
            serde_json::from_str(body).unwrap_or(Value::Null),
        )
    };
    let bearer = format!("Bearer {token}");
    let freeze = r#"{"reason":"test"}"#;

    let (code, v) = post("/api/services/web/freeze", &[], freeze);
    assert_eq!(code, 401, "{v}");
    assert!(v["error"].as_str().unwrap().contains("token"), "{v}");
    let wrong = format!("Bearer {}", "0".repeat(64));
    assert_eq!(
        post(
            "/api/services/web/freeze",
            &[("Authorization", &wrong)],
            freeze
        )
        .0,
        401
    );
    // The right token, but from another site: refused (a browser sends these).
    let (code, v) = post(
        "/api/services/web/freeze",
        &[
            ("Authorization", &bearer),
            ("Origin", "http://evil.example"),
        ],
        freeze,
    );
    assert_eq!(code, 403, "{v}");
    assert_eq!(
        post(
            "/api/services/web/freeze",
            &[("Authorization", &bearer), ("Sec-Fetch-Site", "cross-site")],
            freeze
        )
        .0,
        403
    );
    assert_eq!(p.json(&["status", "web"])["frozen"], Value::Null);

    // No reason: refused, and nothing changes.
    let (code, v) = post(
        "/api/services/web/freeze",
        &[("Authorization", &bearer)],
        "{}",
    );
    assert_eq!(code, 400, "{v}");
    let (code, v) = post(
        "/api/services/web/freeze",
        &[("Authorization", &bearer), ("Origin", &base)],
        freeze,
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["result"]["changed"], true);
    // The same ledger write as `ripcord freeze`: a frozen service refuses a rollback.
    let out = p.run(&["rollback", "web", "--reason", "try"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("frozen"), "{}", stderr(&out));
    let (code, v) = post(
        "/api/services/web/unfreeze",
        &[("Authorization", &bearer)],
        r#"{"reason":"done testing"}"#,
    );
    assert_eq!(code, 200, "{v}");
    let (code, v) = post("/api/services/web/ack", &[("Authorization", &bearer)], "{}");
    assert_eq!(code, 409, "nothing to acknowledge: {v}");
    let (code, _) = post(
        "/api/services/nope/freeze",
        &[("Authorization", &bearer)],
        freeze,
    );
    assert_eq!(code, 404);

    // Reading needs no token.
    let (code, body) = get(&format!("{base}/api/overview"));
    assert_eq!(code, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["services"][0]["active"]["version"], "v1");
    let (code, body) = get(&format!("{base}/"));
    assert_eq!(code, 200);
    assert!(body.contains("/assets/app.js"), "{body}");
    // Everything the page loads comes from the watcher itself: no CDN.
    for attr in ["src=\"", "href=\""] {
        for part in body.split(attr).skip(1) {
            assert!(part.starts_with('/'), "{attr}{part}");
        }
    }
    let (code, js) = get(&format!("{base}/assets/app.js"));
    assert_eq!(code, 200);
    assert!(
        js.contains("EventSource"),
        "the live updates are in the script"
    );
}
