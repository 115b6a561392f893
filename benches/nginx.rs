//! nginx benchmark: (1) the built-in proxy against nginx in front of the same app, and
//! (2) first bad request → nginx serving the old slot again, with the guard reading
//! nginx's access log.
//!
//! Everything runs on loopback with the real binaries: Debian's nginx (started in a temp
//! dir, as the tests do), `ripcord watch` and `ripcord demo-app` (release build).
//! Run: `cargo bench --bench nginx`. Prints tables; figures are medians over the runs.

#[path = "../tests/nginx_fixture/mod.rs"]
mod nginx_fixture;

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use nginx_fixture::{Nginx, free_port};

const BIN: &str = env!("CARGO_BIN_EXE_ripcord");
const RUNS: usize = 3;
const SWITCH_RUNS: usize = 5;

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.0.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn app(port: u16, version: &str) -> Kill {
    app_with(port, version, &[])
}

/// The demo app with extra flags (a bad release for the baseline).
fn app_with(port: u16, version: &str, extra: &[&str]) -> Kill {
    let child = Command::new(BIN)
        .args([
            "demo-app",
            "--port",
            &port.to_string(),
            "--version",
            version,
        ])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_port(port);
    Kill(child)
}

fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "port {port} never opened");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ripcord(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .arg("--config")
        .arg(dir.join("ripcord.toml"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .args(args)
        .output()
        .unwrap()
}

fn watch(dir: &std::path::Path) -> Kill {
    let child = Command::new(BIN)
        .arg("--config")
        .arg(dir.join("ripcord.toml"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("watch")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !dir.join("state/ripcord.sock").exists() {
        assert!(Instant::now() < deadline, "the watcher never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    Kill(child)
}

fn ok(out: std::process::Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn argv(v: Vec<String>) -> String {
    format!(
        "[{}]",
        v.iter()
            .map(|a| format!("{a:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// C keep-alive connections each sending `per_conn` GETs; returns sorted latencies (µs)
/// and the wall time.
async fn load(port: u16, conns: usize, per_conn: usize) -> (Vec<u64>, Duration) {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        tasks.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap();
            stream.set_nodelay(true).unwrap();
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .unwrap();
            tokio::spawn(conn);
            let mut lat = Vec::with_capacity(per_conn);
            for _ in 0..per_conn {
                let req = hyper::Request::get("/api/bench")
                    .header("host", "bench")
                    .body(Empty::<Bytes>::new())
                    .unwrap();
                let t = Instant::now();
                let resp = send.send_request(req).await.unwrap();
                assert_eq!(resp.status(), 200);
                resp.into_body().collect().await.unwrap();
                lat.push(t.elapsed().as_micros() as u64);
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_unstable();
    (all, start.elapsed())
}

fn pct(sorted: &[u64], q: f64) -> u64 {
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn part1(rt: &tokio::runtime::Runtime) {
    let dir = tempfile::tempdir().unwrap();
    let (app_port, other, nginx_port, proxy_port) =
        (free_port(), free_port(), free_port(), free_port());
    let _app = app(app_port, "v1");
    // nginx as people run it in front of an app: upstream keep-alive on, no access log.
    let site = dir.path().join("site");
    std::fs::write(
        &site,
        format!(
            "upstream app {{\n    server 127.0.0.1:{app_port};\n    keepalive 64;\n}}\n\
             server {{\n    listen 127.0.0.1:{nginx_port};\n    access_log off;\n    location / {{\n        \
             proxy_pass http://app;\n        proxy_http_version 1.1;\n        proxy_set_header Connection \"\";\n    }}\n}}\n"
        ),
    )
    .unwrap();
    let _nginx = Nginx::start(
        &dir.path().join("nginx"),
        site.to_str().unwrap(),
        nginx_port,
    );
    // ripcord's proxy in front of the same app (runtime external: the app is ours).
    std::fs::write(
        dir.path().join("ripcord.toml"),
        format!(
            "[service.web]\nruntime = \"external\"\nlisten = \"127.0.0.1:{proxy_port}\"\nslots = {{ blue = {app_port}, green = {other} }}\n"
        ),
    )
    .unwrap();
    let _watch = watch(dir.path());
    ok(
        ripcord(dir.path(), &["deploy", "web", "v1", "--slot", "blue"]),
        "deploy",
    );

    println!("1. GET /api/bench, 32 keep-alive connections x 500 requests, median of {RUNS} runs");
    println!(
        "{:<16} {:>9} {:>9} {:>10} {:>12}",
        "path", "p50 µs", "p99 µs", "req/s", "vs nginx"
    );
    let mut rows = Vec::new();
    for (name, port) in [
        ("direct", app_port),
        ("nginx", nginx_port),
        ("ripcord proxy", proxy_port),
    ] {
        let (mut p50, mut p99, mut rps) = (vec![], vec![], vec![]);
        for _ in 0..RUNS {
            let (lat, wall) = rt.block_on(load(port, 32, 500));
            p50.push(pct(&lat, 0.5) as f64);
            p99.push(pct(&lat, 0.99) as f64);
            rps.push(lat.len() as f64 / wall.as_secs_f64());
        }
        rows.push((name, median(p50), median(p99), median(rps)));
    }
    let nginx = rows[1];
    for (name, p50, p99, rps) in &rows {
        println!(
            "{name:<16} {p50:>9.0} {p99:>9.0} {rps:>10.0} {:>12}",
            format!("p99 {:.2}x, {:.2}x req/s", p99 / nginx.2, rps / nginx.3)
        );
    }
}

fn part2() {
    let dir = tempfile::tempdir().unwrap();
    let (nginx_port, blue, green) = (free_port(), free_port(), free_port());
    let log = dir.path().join("access.log");
    let site = dir.path().join("site");
    std::fs::write(
        &site,
        format!(
            "log_format ripcord '$remote_addr - [$time_local] \"$request\" $status $body_bytes_sent '\n    \
             'rt=$request_time urt=\"$upstream_response_time\" ua=\"$upstream_addr\" ts=$msec';\n\
             upstream app {{\n    server 127.0.0.1:{blue};\n    server 127.0.0.1:{green} backup;\n}}\n\
             server {{\n    listen 127.0.0.1:{nginx_port};\n    access_log {} ripcord;\n    location / {{ proxy_pass http://app; }}\n}}\n",
            log.display()
        ),
    )
    .unwrap();
    let nginx = Nginx::start(
        &dir.path().join("nginx"),
        site.to_str().unwrap(),
        nginx_port,
    );
    std::fs::write(
        dir.path().join("ripcord.toml"),
        format!(
            r#"[service.web]
router = "nginx"
slots = {{ blue = {blue}, green = {green} }}
command = [{BIN:?}, "demo-app", "--port", "{{port}}", "--version", "{{version}}"]
[service.web.triggers]
error_rate = {{ above = 0.10, window = "30s" }}
[service.web.nginx]
site = {site:?}
upstream = "app"
access_log = {log:?}
conf = {site:?}
log_format = "ripcord"
test_command = {test}
reload_command = {reload}
"#,
            site = site.to_str().unwrap(),
            log = log.to_str().unwrap(),
            test = argv(nginx.test_command()),
            reload = argv(nginx.reload_command()),
        ),
    )
    .unwrap();
    let watcher = watch(dir.path());
    ok(ripcord(dir.path(), &["deploy", "web", "v1"]), "deploy v1");

    // ~200 requests a second through nginx, a new connection each (see README: nginx's
    // reload closes idle keep-alive connections of its old workers).
    let seen: Arc<Mutex<Vec<(Instant, u16, String)>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loader = {
        let (seen, stop) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(600);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
                let t = Instant::now();
                if let Ok((status, body)) = nginx_fixture::http_get(nginx_port, "/api/bench") {
                    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                    let version = v["version"].as_str().unwrap_or("?").to_string();
                    seen.lock().unwrap().push((t, status, version));
                }
                std::thread::sleep(Duration::from_millis(5).saturating_sub(t.elapsed()));
            }
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    println!(
        "\n2. first bad request -> nginx serving the old slot (guard on the access log), {SWITCH_RUNS} runs"
    );
    println!(
        "{:<5} {:>22} {:>16}",
        "run", "first 5xx -> old slot", "5xx seen"
    );
    let mut times = Vec::new();
    for run in 0..SWITCH_RUNS {
        let version = format!("bad{run}");
        let mark = seen.lock().unwrap().len();
        let out = ripcord(
            dir.path(),
            &[
                "deploy",
                "web",
                &version,
                "--",
                BIN,
                "demo-app",
                "--port",
                "{port}",
                "--version",
                "{version}",
                "--error-ratio",
                "1.0",
                "--after-secs",
                "2",
            ],
        );
        ok(out, "deploy bad");
        let deadline = Instant::now() + Duration::from_secs(60);
        let (ms, bad) = first_5xx_to_v1(&seen, mark, deadline);
        println!("{run:<5} {ms:>19.0} ms {bad:>16}");
        times.push(ms);
        // Let the rollback finish (verification) before the next bad deploy.
        std::thread::sleep(Duration::from_secs(3));
    }
    let ripcord_median = median(times);

    // The baseline, in the same run on the same nginx and load: the runbook's own
    // switch (its `sed` over the site file, `nginx -t`, `nginx -s reload`) fired by an
    // oracle the moment the load sees the first 5xx: detection for free, which no
    // person or cron job gets. What ripcord adds over it is its detection from the log.
    drop(watcher);
    let _v1 = app(blue, "v1");
    let upstream = |primary: u16, backup: u16| {
        format!(
            "upstream app {{\n    server 127.0.0.1:{primary};\n    server 127.0.0.1:{backup} backup;\n}}"
        )
    };
    let run_argv = |v: Vec<String>| {
        let out = Command::new(&v[0]).args(&v[1..]).output().unwrap();
        assert!(
            out.status.success(),
            "{v:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    println!(
        "\nbaseline: the runbook's sed + nginx -t + nginx -s reload, started at the first 5xx the load sees, {SWITCH_RUNS} runs"
    );
    println!(
        "{:<5} {:>22} {:>16}",
        "run", "first 5xx -> old slot", "5xx seen"
    );
    let mut base = Vec::new();
    for run in 0..SWITCH_RUNS {
        let version = format!("bad{run}");
        let _bad = app_with(
            green,
            &version,
            &["--error-ratio", "1.0", "--after-secs", "2"],
        );
        // The bad release takes the traffic, as a deploy by the runbook would.
        let text = std::fs::read_to_string(&site).unwrap();
        let i = text.find("upstream app {").unwrap();
        let j = i + text[i..].find('}').unwrap() + 1;
        let to_green = format!("{}{}{}", &text[..i], upstream(green, blue), &text[j..]);
        std::fs::write(&site, &to_green).unwrap();
        run_argv(nginx.test_command());
        run_argv(nginx.reload_command());
        let mark = seen.lock().unwrap().len();
        let deadline = Instant::now() + Duration::from_secs(60);
        // The oracle: at the first 5xx, the runbook's switch back.
        loop {
            if seen.lock().unwrap()[mark..]
                .iter()
                .any(|(_, st, _)| *st >= 500)
            {
                break;
            }
            assert!(Instant::now() < deadline, "the bad release never failed");
            std::thread::sleep(Duration::from_millis(1));
        }
        std::fs::write(
            &site,
            to_green.replace(&upstream(green, blue), &upstream(blue, green)),
        )
        .unwrap();
        run_argv(nginx.test_command());
        run_argv(nginx.reload_command());
        let (ms, bad) = first_5xx_to_v1(&seen, mark, deadline);
        println!("{run:<5} {ms:>19.0} ms {bad:>16}");
        base.push(ms);
        std::thread::sleep(Duration::from_millis(500));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = loader.join();
    let base_median = median(base);
    println!(
        "median first 5xx -> old slot: ripcord {ripcord_median:.0} ms (target < 1500 ms); \
         the runbook's switch fired by an oracle {base_median:.0} ms; ripcord / oracle = {:.2}",
        ripcord_median / base_median
    );
}

/// Waits until the load saw a 5xx after `mark` and then a 200 from v1; returns the time
/// between the two (ms) and the 5xx answers from the first one on.
fn first_5xx_to_v1(
    seen: &Mutex<Vec<(Instant, u16, String)>>,
    mark: usize,
    deadline: Instant,
) -> (f64, usize) {
    loop {
        {
            let s = seen.lock().unwrap();
            let tail = &s[mark..];
            if let Some(i) = tail.iter().position(|(_, st, _)| *st >= 500)
                && let Some(b) = tail[i..].iter().find(|(_, st, v)| *st == 200 && v == "v1")
            {
                let bad = tail[i..].iter().filter(|(_, st, _)| *st >= 500).count();
                return (b.0.duration_since(tail[i].0).as_secs_f64() * 1000.0, bad);
            }
        }
        assert!(Instant::now() < deadline, "nginx never served v1 again");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn main() {
    if std::env::args()
        .skip(1)
        .any(|a| a != "--bench" && !a.starts_with('-') && a != "nginx")
    {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "ripcord nginx bench: release build, loopback, nginx {}",
        nginx_version()
    );
    part1(&rt);
    part2();
}

fn nginx_version() -> String {
    Command::new(nginx_fixture::nginx_bin())
        .arg("-v")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_string())
        .unwrap_or_default()
}
