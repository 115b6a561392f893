//! Router `nginx` end to end with real nginx: the runbook's setup (nginx in front of two
//! slots run by someone else, runtime `external`), and ripcord's own processes behind
//! nginx; deploy, rollback by hand and by the guard, zero failed requests in a switch.

mod common;
mod docker_fixture;
mod nginx_fixture;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{BIN, Load, assert_ok, eventually, get, stderr, stdout};
use nginx_fixture::{Nginx, free_port, primary_backup_site};

/// A demo app we run ourselves (runtime `external`: ripcord must not start it).
struct App(Child);

impl App {
    fn start(port: u16, version: &str, extra: &[&str]) -> App {
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
        eventually("the app answers", Duration::from_secs(10), || {
            get(&format!("http://127.0.0.1:{port}/health")).0 == 200
        });
        App(child)
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Setup {
    dir: tempfile::TempDir,
    nginx: Nginx,
    blue: u16,
    green: u16,
    watcher: Option<Child>,
}

impl Setup {
    /// nginx on a free port with the runbook's site file (primary blue, backup green),
    /// and a ripcord config for it with `runtime`.
    fn new(runtime: &str, extra: &str) -> Setup {
        Setup::with_nginx_extra(runtime, extra, "")
    }

    /// `nginx_extra` goes into `[service.web.nginx]`, with `ACCESS` and `SITE` standing
    /// for the access log's and the site file's paths; with `access_log` in it, the site
    /// logs requests: through a custom `log_format ripcord` it declares when
    /// `nginx_extra` sets `log_format`, else in nginx's default `combined`.
    fn with_nginx_extra(runtime: &str, extra: &str, nginx_extra: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let (port, blue, green) = (free_port(), free_port(), free_port());
        let site = dir.path().join("sites/app");
        std::fs::create_dir_all(site.parent().unwrap()).unwrap();
        let mut text = primary_backup_site(
            port,
            &format!("127.0.0.1:{blue}"),
            &format!("127.0.0.1:{green}"),
        );
        if nginx_extra.contains("access_log") {
            let log = dir.path().join("access.log");
            let (declare, name) = if nginx_extra.contains("log_format") {
                (
                    "log_format ripcord '$remote_addr - [$time_local] \"$request\" $status $body_bytes_sent '\n    \
                     'rt=$request_time urt=\"$upstream_response_time\" ua=\"$upstream_addr\" ts=$msec';\n",
                    " ripcord",
                )
            } else {
                ("", "")
            };
            text = format!(
                "{declare}{}",
                text.replace(
                    &format!("listen 127.0.0.1:{port};"),
                    &format!(
                        "listen 127.0.0.1:{port};\n    access_log {}{name};",
                        log.display()
                    ),
                )
            );
        }
        std::fs::write(&site, text).unwrap();
        let nginx = Nginx::start(&dir.path().join("nginx"), site.to_str().unwrap(), port);
        let argv = |v: Vec<String>| {
            format!(
                "[{}]",
                v.iter()
                    .map(|a| format!("{a:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let nginx_extra = nginx_extra
            .replace("ACCESS", dir.path().join("access.log").to_str().unwrap())
            .replace("SITE", site.to_str().unwrap());
        let config = format!(
            r#"[service.web]
runtime = "{runtime}"
router = "nginx"
slots = {{ blue = {blue}, green = {green} }}
start_timeout_secs = 10
command = [{BIN:?}, "demo-app", "--port", "{{port}}", "--version", "{{version}}"]
{extra}

[service.web.nginx]
site = {site:?}
upstream = "app"
{nginx_extra}
test_command = {test}
reload_command = {reload}

[[service.web.verify]]
http = "http://127.0.0.1:{port}/api/verify"
json_field = "version"
json_equals = "{{version}}"
"#,
            site = site.to_str().unwrap(),
            test = argv(nginx.test_command()),
            reload = argv(nginx.reload_command()),
        );
        std::fs::write(dir.path().join("ripcord.toml"), config).unwrap();
        Setup {
            dir,
            nginx,
            blue,
            green,
            watcher: None,
        }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--config")
            .arg(self.dir.path().join("ripcord.toml"))
            .arg("--state-dir")
            .arg(self.dir.path().join("state"))
            .args(args)
            .env_remove("RIPCORD_CONFIG")
            .env_remove("RIPCORD_STATE_DIR");
        c
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        self.cmd(args).output().unwrap()
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        serde_json::from_slice(&self.run(&all).stdout).unwrap()
    }

    fn start_watcher(&mut self) {
        self.start_watcher_for("web");
    }

    fn start_watcher_for(&mut self, service: &str) {
        let log = std::fs::File::create(self.dir.path().join("watcher.log")).unwrap();
        self.watcher = Some(
            self.cmd(&["watch"])
                .stdout(Stdio::null())
                .stderr(Stdio::from(log))
                .spawn()
                .unwrap(),
        );
        eventually("the watcher answers", Duration::from_secs(20), || {
            let out = self.run(&["--json", "status", service]);
            serde_json::from_slice::<serde_json::Value>(&out.stdout)
                .is_ok_and(|v| v["live"].is_object())
        });
    }

    fn serving(&self) -> String {
        let (status, body) = get(&format!("http://127.0.0.1:{}/health", self.nginx.port));
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["version"].as_str().unwrap().to_string()
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.nginx.port)
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        if let Some(mut w) = self.watcher.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(w.id().to_string())
                .status();
            for _ in 0..200 {
                if w.try_wait().ok().flatten().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}

/// Deploys a v2 of the demo app that passes its deploy checks, then fails half of its
/// API requests from three seconds after it starts.
fn deploy_v2_that_fails_half_after_3s(s: &Setup) {
    let out = s.run(&[
        "deploy",
        "web",
        "v2",
        "--",
        BIN,
        "demo-app",
        "--port",
        "{port}",
        "--version",
        "{version}",
        "--error-ratio",
        "0.5",
        "--after-secs",
        "3",
    ]);
    assert_ok(&out, "deploy v2");
}

#[test]
fn the_runbooks_setup_external_slots_behind_nginx() {
    let mut s = Setup::new("external", "");
    // Someone else runs both slots, as in the runbook (ports 8000 and 8001 there).
    let _v1 = App::start(s.blue, "v1", &[]);
    let _v2 = App::start(s.green, "v2", &[]);
    s.start_watcher();
    assert_ok(
        &s.run(&["deploy", "web", "v1", "--slot", "blue"]),
        "deploy v1",
    );
    assert_eq!(s.serving(), "v1");

    let load = Load::start_with(
        s.url("/api/load"),
        4,
        Duration::from_secs(60),
        200_000,
        false,
    );
    std::thread::sleep(Duration::from_millis(300));
    let out = s.run(&["deploy", "web", "v2", "--slot", "green"]);
    assert_ok(&out, "deploy v2");
    assert_eq!(s.serving(), "v2");
    let site = std::fs::read_to_string(s.dir.path().join("sites/app")).unwrap();
    assert!(
        site.contains(&format!(
            "server 127.0.0.1:{} max_fails=3 fail_timeout=10s;",
            s.green
        )) && site.contains(&format!("server 127.0.0.1:{} backup;", s.blue)),
        "{site}"
    );

    let out = s.run(&["rollback", "web", "--reason", "by hand"]);
    assert_ok(&out, "rollback");
    assert!(
        stdout(&out).contains("rolled back to v1"),
        "{}",
        stdout(&out)
    );
    assert_eq!(s.serving(), "v1");
    std::thread::sleep(Duration::from_millis(300));
    let report = load.stop();
    assert!(
        report.failures.is_empty(),
        "requests failed during the nginx switches: {:?}",
        report.failures
    );

    // ripcord started and stopped nothing: both apps still run.
    assert_eq!(get(&format!("http://127.0.0.1:{}/health", s.green)).0, 200);
    let status = s.json(&["status", "web"]);
    assert_eq!(status["active"]["version"], "v1", "{status:#}");
    assert!(
        status["live"]["router"]
            .as_str()
            .unwrap()
            .starts_with("nginx"),
        "{status:#}"
    );

    // An external slot that does not answer gets no traffic.
    drop(_v2);
    let out = s.run(&["deploy", "web", "v3", "--slot", "green"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("runtime \"external\" starts nothing"),
        "{}",
        stderr(&out)
    );
    assert_eq!(s.serving(), "v1");
}

/// The issue's "done when": the runbook's setup (nginx in front of two ports someone else
/// runs), ripcord pointed at the site file and the access log, and a bad release rolled
/// back through nginx with nobody involved, verified and recorded.
#[test]
fn the_runbooks_setup_with_its_access_log_rolls_back_a_bad_release_alone() {
    let nginx_extra = "access_log = \"ACCESS\"\nconf = \"SITE\"\nlog_format = \"ripcord\"";
    let mut s = Setup::with_nginx_extra("external", "", nginx_extra);
    // Someone else runs both slots; the new release turns bad four seconds after it
    // starts, after its deploy-time checks passed, as in life.
    let _v1 = App::start(s.blue, "v1", &[]);
    let _v2 = App::start(
        s.green,
        "v2",
        &["--error-ratio", "0.5", "--after-secs", "4"],
    );
    s.start_watcher();
    assert_ok(
        &s.run(&["deploy", "web", "v1", "--slot", "blue"]),
        "deploy v1",
    );
    let load = Load::start_with(
        s.url("/api/load"),
        4,
        Duration::from_secs(60),
        200_000,
        false,
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_ok(
        &s.run(&["deploy", "web", "v2", "--slot", "green"]),
        "deploy v2",
    );
    assert_eq!(s.serving(), "v2");
    eventually(
        "the guard rolls v2 back through nginx, reading only the access log",
        Duration::from_secs(40),
        || get(&s.url("/health")).1.contains("\"v1\""),
    );
    let report = load.stop();
    assert!(!report.failures.is_empty(), "v2 never failed a request");
    eventually(
        "the incident is resolved (verified)",
        Duration::from_secs(10),
        || s.json(&["incident", "list"])[0]["status"] == "resolved",
    );
    let list = s.json(&["incident", "list"]);
    assert_eq!(list[0]["rule"], "error_rate", "{list:#}");
    let show = s.json(&["incident", "show", &list[0]["id"].to_string()]);
    assert!(show["verified_at_ms"].as_i64().is_some(), "{show:#}");
    let releases = s.json(&["releases", "web"]);
    assert_eq!(releases[0]["version"], "v2");
    assert_eq!(releases[0]["status"], "bad", "{releases:#}");
    // ripcord stopped nothing: the bad release still runs for its owner to look at.
    assert_eq!(get(&format!("http://127.0.0.1:{}/health", s.green)).0, 200);
    let site = std::fs::read_to_string(s.dir.path().join("sites/app")).unwrap();
    assert!(
        site.contains(&format!("server 127.0.0.1:{} backup;", s.green)),
        "nginx's primary is v1's port again: {site}"
    );
}

#[test]
fn ripcords_processes_behind_nginx_and_the_guard_rolls_back() {
    let mut s = Setup::new("process", "");
    s.start_watcher();
    assert_ok(&s.run(&["deploy", "web", "v1"]), "deploy v1");
    assert_eq!(s.serving(), "v1");
    // Health checks probe the slots directly; the guard watches the active one.
    let out = s.run(&[
        "deploy",
        "web",
        "v2",
        "--",
        BIN,
        "demo-app",
        "--port",
        "{port}",
        "--version",
        "{version}",
        "--fail-health",
        "--after-secs",
        "4",
    ]);
    assert_ok(&out, "deploy v2");
    assert_eq!(s.serving(), "v2");
    eventually(
        "the guard rolls v2 back through nginx",
        Duration::from_secs(40),
        || get(&s.url("/health")).1.contains("\"v1\""),
    );
    let list = s.json(&["incident", "list"]);
    assert_eq!(list[0]["rule"], "health", "{list:#}");
    eventually("the incident is resolved", Duration::from_secs(10), || {
        s.json(&["incident", "list"])[0]["status"] == "resolved"
    });
    let releases = s.json(&["releases", "web"]);
    assert_eq!(releases[0]["status"], "bad");
}

#[test]
fn a_site_that_fails_nginx_t_keeps_traffic_where_it_was() {
    let mut s = Setup::new("process", "");
    s.start_watcher();
    assert_ok(&s.run(&["deploy", "web", "v1"]), "deploy v1");
    // The user breaks their own site file outside ripcord's block.
    let site = s.dir.path().join("sites/app");
    let mut text = std::fs::read_to_string(&site).unwrap();
    text.push_str("\nbogus_directive on;\n");
    std::fs::write(&site, &text).unwrap();
    let out = s.run(&["deploy", "web", "v2"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("stays where it was") && err.contains("bogus_directive"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&site).unwrap(),
        text,
        "the site file was not restored"
    );
    assert_eq!(s.serving(), "v1");
}

#[test]
fn the_access_log_with_a_custom_log_format_drives_a_rollback() {
    let nginx_extra = "access_log = \"ACCESS\"\nconf = \"SITE\"\nlog_format = \"ripcord\"";
    let mut s = Setup::with_nginx_extra("process", "", nginx_extra);
    s.start_watcher();
    assert_ok(&s.run(&["deploy", "web", "v1"]), "deploy v1");
    let load = Load::start_with(
        s.url("/api/load"),
        4,
        Duration::from_secs(60),
        200_000,
        false,
    );
    eventually(
        "the guard reads the access log",
        Duration::from_secs(20),
        || {
            s.json(&["status", "web"])["live"]["access_log"]["lines"]
                .as_u64()
                .unwrap_or(0)
                > 20
        },
    );
    // Rotate the log the way logrotate does (rename, then nginx reopens): the guard
    // must follow the new file and still see what v2 does.
    let log = s.dir.path().join("access.log");
    std::fs::rename(&log, s.dir.path().join("access.log.1")).unwrap();
    let mut reopen = s.nginx.base_args();
    reopen.extend(["-s".to_string(), "reopen".to_string()]);
    assert!(
        Command::new(&reopen[0])
            .args(&reopen[1..])
            .status()
            .unwrap()
            .success()
    );
    eventually("nginx writes the new log", Duration::from_secs(10), || {
        log.exists()
    });
    deploy_v2_that_fails_half_after_3s(&s);
    eventually(
        "the guard rolls v2 back on the access log's 5xx",
        Duration::from_secs(40),
        || get(&s.url("/health")).1.contains("\"v1\""),
    );
    load.stop();
    let list = s.json(&["incident", "list"]);
    assert_eq!(list[0]["rule"], "error_rate", "{list:#}");
    let rotations = s.json(&["status", "web"])["live"]["access_log"]["rotations"]
        .as_u64()
        .unwrap_or(0);
    assert!(rotations >= 1, "the follower did not notice the rotation");
    // A line nginx did not write is counted and skipped, never fatal.
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    std::io::Write::write_all(&mut f, b"this is not an access log line\n").unwrap();
    eventually(
        "the malformed line is counted",
        Duration::from_secs(10),
        || {
            s.json(&["status", "web"])["live"]["access_log"]["malformed"]
                .as_u64()
                .unwrap_or(0)
                >= 1
        },
    );
}

/// Regression: with nginx's default `combined` format, which has no `$upstream_addr`,
/// every request was skipped, so the guard saw no traffic and a bad release behind nginx
/// was never rolled back, silently.
#[test]
fn the_access_log_in_nginxs_combined_format_drives_a_rollback() {
    let mut s = Setup::with_nginx_extra("process", "", "access_log = \"ACCESS\"");
    let log = s.dir.path().join("access.log");
    s.start_watcher();
    assert_ok(&s.run(&["deploy", "web", "v1"]), "deploy v1");
    let load = Load::start_with(
        s.url("/api/load"),
        4,
        Duration::from_secs(60),
        200_000,
        false,
    );
    eventually(
        "the guard reads the combined access log",
        Duration::from_secs(20),
        || {
            s.json(&["status", "web"])["live"]["access_log"]["lines"]
                .as_u64()
                .unwrap_or(0)
                > 20
        },
    );
    let status = s.run(&["status", "web"]);
    let text = stdout(&status);
    assert!(
        text.contains(&format!("access log {}: ", log.display()))
            && text.contains(" malformed, ")
            && text.contains(" unattributed"),
        "{text}"
    );
    deploy_v2_that_fails_half_after_3s(&s);
    eventually(
        "the guard rolls v2 back on the combined log's 5xx",
        Duration::from_secs(40),
        || get(&s.url("/health")).1.contains("\"v1\""),
    );
    load.stop();
    let list = s.json(&["incident", "list"]);
    assert_eq!(list[0]["rule"], "error_rate", "{list:#}");
    // `combined` has no timings: the latency rule has no data (never "p95 0 ms, ok").
    let status = s.json(&["status", "web"]);
    let latency = status["live"]["guard"]["rules"]["latency_p95"]
        .as_str()
        .unwrap_or_default();
    assert!(latency.starts_with("no data"), "{status:#}");
    let access = &status["live"]["access_log"];
    assert!(
        access["unattributed"].is_u64() && access["dropped"] == 0,
        "{access:#}"
    );
    // The watcher said once, at start, why attribution is weaker than it could be.
    let watcher_log = std::fs::read_to_string(s.dir.path().join("watcher.log")).unwrap();
    assert_eq!(
        watcher_log.matches("has no $upstream_addr").count(),
        1,
        "{watcher_log}"
    );
}

#[test]
fn containers_behind_nginx_are_deployed_and_rolled_back() {
    let rt = docker_fixture::rt();
    let engine = docker_fixture::engine(&rt);
    let mut cleanup = docker_fixture::Cleanup::new();
    let svc = docker_fixture::unique("ng");
    cleanup.services.push(svc.clone());
    let repo = docker_fixture::unique("ripcord-test-ng");
    for v in ["v1", "v2"] {
        docker_fixture::build_image(
            &rt,
            &engine,
            &mut cleanup,
            &format!("{repo}:{v}"),
            &["--listen", "0.0.0.0:8080", "--version", v],
        );
    }
    let mut s = Setup::new(
        "docker",
        &format!(
            "[service.web.docker]\nimage = \"{repo}\"\ncontainer_port = 8080\nname = \"{svc}\""
        ),
    );
    // The containers carry the service's label; a unique container name keeps this
    // test's containers apart from any other's.
    let config = std::fs::read_to_string(s.dir.path().join("ripcord.toml")).unwrap();
    std::fs::write(
        s.dir.path().join("ripcord.toml"),
        config.replace("[service.web", &format!("[service.{svc}")),
    )
    .unwrap();
    s.start_watcher_for(&svc);
    assert_ok(&s.run(&["deploy", &svc, "v1"]), "deploy v1");
    assert_eq!(s.serving(), "v1");
    let load = Load::start_with(
        s.url("/api/load"),
        4,
        Duration::from_secs(60),
        200_000,
        false,
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_ok(&s.run(&["deploy", &svc, "v2"]), "deploy v2");
    assert_eq!(s.serving(), "v2");
    assert_eq!(
        docker_fixture::containers_of(&svc).len(),
        2,
        "v1 stays warm"
    );
    assert_ok(&s.run(&["rollback", &svc, "--reason", "test"]), "rollback");
    assert_eq!(s.serving(), "v1");
    let report = load.stop();
    assert!(
        report.failures.is_empty(),
        "no request lost across two switches through nginx: {:?}",
        &report.failures[..report.failures.len().min(5)]
    );
    drop(s);
    drop(cleanup);
}

/// Issue 15: a drill works with router nginx as with the built-in proxy: back to v1 and
/// forward to v2 through two validated reloads, under load, with no failed request.
#[test]
fn a_drill_behind_nginx_goes_back_and_forward_and_loses_no_request() {
    let mut s = Setup::new("process", "bake = \"5m\"\ndrill_budget = \"30s\"");
    s.start_watcher();
    assert_ok(&s.run(&["deploy", "web", "v1"]), "deploy v1");
    assert_ok(&s.run(&["deploy", "web", "v2"]), "deploy v2");
    assert_eq!(s.serving(), "v2");
    // A connection per request: nginx's reload closes its old workers' idle keep-alive
    // connections, which a client would see as a reset however the switch went.
    let load = common::Load::start_with(
        s.url("/api/load"),
        4,
        Duration::from_secs(60),
        1_000_000,
        false,
    );
    std::thread::sleep(Duration::from_millis(500));
    let out = s.run(&["--json", "drill", "web"]);
    std::thread::sleep(Duration::from_millis(1500));
    let report = load.stop();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", common::stderr(&out)));
    assert_eq!(out.status.code(), Some(0), "{v:#}");
    let r = &v["result"];
    assert_eq!(r["outcome"], "passed", "{v:#}");
    assert_eq!(r["in_place"], false, "{v:#}");
    assert!(
        r["proxied"].is_null(),
        "nginx, not the built-in proxy: {v:#}"
    );
    let steps: Vec<String> = r["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            format!(
                "{} {}",
                s["leg"].as_str().unwrap(),
                s["step"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        steps,
        [
            "back start",
            "back health_gate",
            "back switch",
            "back verify",
            "forward start",
            "forward health_gate",
            "forward switch",
            "forward verify"
        ],
        "{v:#}"
    );
    assert!(
        report.failures.is_empty(),
        "{} failed: {:?}",
        report.failures.len(),
        &report.failures[..report.failures.len().min(10)]
    );
    assert_eq!(
        report.ok_by_version.keys().cloned().collect::<Vec<_>>(),
        ["v1", "v2"],
        "nginx sent users to v1 during the drill and back to v2"
    );
    assert_eq!(s.serving(), "v2");
    let releases = s.json(&["releases", "web"]);
    assert_eq!(releases[0]["version"], "v2", "{releases:#}");
    assert_eq!(releases[0]["status"], "active", "{releases:#}");
}
