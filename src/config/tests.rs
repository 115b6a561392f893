use std::time::Duration;

use super::*;

fn errors(src: &str) -> Vec<String> {
    match Config::parse(src, Path::new("ripcord.toml")) {
        Ok(_) => Vec::new(),
        Err(LoadError::Invalid { errors, .. }) => errors.iter().map(|e| e.to_string()).collect(),
        Err(e) => panic!("unexpected error {e}"),
    }
}

fn check(src: &str, expected: &[&str]) {
    let got = errors(src);
    assert_eq!(got, expected, "\nsource:\n{src}");
}

const GOOD: &str = r#"
[service.web]
listen = "127.0.0.1:8080"
slots = { blue = 8081, green = "127.0.0.1:8082" }
"#;

#[test]
fn minimal_service_gets_defaults() {
    let cfg = Config::parse(GOOD, Path::new("x.toml")).unwrap();
    let web = cfg.service("web").unwrap();
    assert_eq!(web.runtime, Runtime::Process);
    assert_eq!(web.router, Router::Proxy);
    assert_eq!(web.slots.blue, "127.0.0.1:8081".parse().unwrap());
    assert_eq!(web.slots.green, "127.0.0.1:8082".parse().unwrap());
    assert_eq!(web.health_path, "/health");
    assert_eq!(web.bake, Duration::from_secs(300));
    assert_eq!(web.start_timeout, Duration::from_secs(30));
    assert_eq!(web.health_url(Slot::Green), "http://127.0.0.1:8082/health");
}

#[test]
fn the_shipped_example_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/ripcord.toml");
    let cfg = Config::load(&path).unwrap_or_else(|e| match e {
        LoadError::Invalid { errors, .. } => panic!("{errors:#?}"),
        e => panic!("{e}"),
    });
    let web = cfg.service("web").unwrap();
    assert_eq!(web.verify.len(), 3);
    assert!(
        web.command
            .as_ref()
            .unwrap()
            .contains(&"{port}".to_string())
    );
    assert_eq!(web.env.get("RUST_LOG").map(String::as_str), Some("info"));
}

#[test]
fn every_problem_is_reported_with_its_line() {
    let src = r#"
[service.web]
listen = "127.0.0.1:8080"
slots = { blue = 8081, green = 8081 }
bake_sec = 10
health_path = 5

[service.api]
listen = "127.0.0.1:8080"
slots = { blue = 9001 }
"#;
    check(
        src,
        &[
            "ripcord.toml:4: service.web.slots: blue and green are both 127.0.0.1:8081: the slots need different ports",
            "ripcord.toml:5: service.web.bake_sec: unknown key (did you mean `bake`?); expected one of `runtime`, `router`, `listen`, `slots`, `health_path`, `start_timeout`, `bake`, `stop_timeout`, `command`, `env`, `verify`, `verify_deadline`, `triggers`, `investigate`, `memory_limit_mb`, `notify`, `integrity`, `prometheus`, `nginx`, `migrations`, `docker`, `database`",
            "ripcord.toml:6: service.web.health_path: expected a string, found an integer",
            "ripcord.toml:9: service.api.listen: port 8080 is already used by `service.web.listen`",
            "ripcord.toml:10: service.api.slots: missing slot `green`: blue-green needs both `blue` and `green`",
        ],
    );
}

#[test]
fn missing_slots_and_listen() {
    check(
        "[service.web]\nbake_secs = 1\n",
        &[
            "ripcord.toml:1: service.web.listen: missing: router \"proxy\" needs the address the proxy listens on, e.g. listen = \"127.0.0.1:8080\"",
            "ripcord.toml:1: service.web.slots: missing: blue-green needs two slots, e.g. slots = { blue = 8081, green = 8082 }",
        ],
    );
}

#[test]
fn wrong_types_and_values() {
    let src = r#"
[service.web]
listen = "nowhere"
slots = { blue = 0, green = true }
bake_secs = -1
command = "app --port {port}"
runtime = "kubernetes"
"#;
    check(
        src,
        &[
            "ripcord.toml:3: service.web.listen: \"nowhere\" is not an address: expected \"host:port\" with an IP address, e.g. \"127.0.0.1:8080\"",
            "ripcord.toml:4: service.web.slots.blue: 0 is not a valid port (1-65535)",
            "ripcord.toml:4: service.web.slots.green: expected a port number or \"host:port\", found a boolean",
            "ripcord.toml:5: service.web.bake_secs: -1 is out of range: expected 0s to 24h",
            "ripcord.toml:6: service.web.command: expected an array of strings (an argument vector such as [\"/usr/bin/app\", \"--port\", \"{port}\"]; ripcord never runs a shell string), found a string",
            "ripcord.toml:7: service.web.runtime: runtime \"kubernetes\" is not available in this version of ripcord yet; use \"process\", \"external\", \"docker\" or \"swarm\"",
        ],
    );
}

#[test]
fn checks_are_validated() {
    let src = r#"
[service.web]
listen = "127.0.0.1:8080"
slots = { blue = 8081, green = 8082 }

[[service.web.verify]]
http = "http://127.0.0.1:8080/health"
command = ["true"]

[[service.web.verify]]
time_out = 3

[[service.web.verify]]
http = "ftp://example.invalid/"
json_field = "a"
"#;
    check(
        src,
        &[
            "ripcord.toml:6: service.web.verify[0]: a check has exactly one of `http`, `command` or `prometheus`",
            "ripcord.toml:11: service.web.verify[1].time_out: unknown key (did you mean `timeout`?); expected one of `name`, `http`, `prometheus`, `below`, `above`, `status`, `body_contains`, `json_field`, `json_equals`, `command`, `exit_code`, `timeout`, `ca_file`",
            "ripcord.toml:13: service.web.verify[2]: `json_field` and `json_equals` go together: give both or neither",
            "ripcord.toml:14: service.web.verify[2].http: expected an http:// or https:// URL, found \"ftp://example.invalid/\"",
        ],
    );
}

#[test]
fn syntax_errors_name_the_line() {
    let got = errors("[service.web]\nlisten = \n");
    assert_eq!(got.len(), 1);
    assert!(
        got[0].starts_with("ripcord.toml:2: invalid TOML"),
        "{got:?}"
    );
}

#[test]
fn unknown_top_level_key_and_bad_name() {
    check(
        "[services.web]\n",
        &[
            "ripcord.toml:1: services: unknown key (did you mean `service`?); expected one of `service`, `watch`",
        ],
    );
    let got =
        errors("[service.\"my web\"]\nlisten = \"127.0.0.1:1\"\nslots = { blue = 2, green = 3 }\n");
    assert_eq!(
        got,
        [
            "ripcord.toml:1: service.my web: a service name may hold only letters, digits, `-` and `_`, and starts with a letter"
        ]
    );
}

#[test]
fn no_services_is_an_error() {
    check(
        "",
        &[
            "ripcord.toml: service: no services configured: add a `[service.NAME]` table (see examples/ripcord.toml)",
        ],
    );
}

#[test]
fn triggers_default_to_the_runbook_and_can_be_tuned_or_turned_off() {
    let cfg = Config::parse(GOOD, Path::new("x.toml")).unwrap();
    let t = &cfg.service("web").unwrap().triggers;
    assert_eq!(t.error_rate.as_ref().unwrap().above, 0.10);
    assert_eq!(
        t.error_rate.as_ref().unwrap().window,
        Duration::from_secs(120)
    );
    assert_eq!(t.latency_p95.as_ref().unwrap().factor, 5.0);
    assert_eq!(t.cpu.as_ref().unwrap().for_, Duration::from_secs(300));
    assert!(t.cpu.as_ref().unwrap().investigate);
    assert_eq!(t.health.as_ref().unwrap().consecutive_failures, 3);
    assert!(t.oom_kills);

    let src = format!(
        "{GOOD}investigate_secs = 30\nmemory_limit_mb = 64\n[service.web.triggers]\n\
         error_rate = {{ above = 0.2, window_secs = 30, false_alarm = \"1 per 10^9 requests\" }}\nlatency_p95 = {{ enabled = false }}\n\
         cpu = {{ above = 1.5, for_secs = 10, action = \"rollback\" }}\noom_kills = false\n"
    );
    let cfg = Config::parse(&src, Path::new("x.toml")).unwrap();
    let web = cfg.service("web").unwrap();
    assert_eq!(web.investigate, Duration::from_secs(30));
    assert_eq!(web.memory_limit_mb, Some(64));
    let t = &web.triggers;
    assert_eq!(t.error_rate.as_ref().unwrap().above, 0.2);
    assert_eq!(t.error_rate.as_ref().unwrap().requests_per_false_alarm, 1e9);
    assert!(t.latency_p95.is_none());
    assert!(!t.cpu.as_ref().unwrap().investigate);
    assert!(!t.oom_kills);
}

#[test]
fn trigger_mistakes_are_reported() {
    let src = format!(
        "{GOOD}[service.web.triggers]\nerror_rate = {{ above = 10 }}\ncpu = {{ action = \"panic\" }}\nlatency = {{}}\n"
    );
    check(
        &src,
        &[
            "ripcord.toml:6: service.web.triggers.error_rate.above: 10 is out of range: expected 0.001 to 0.99",
            "ripcord.toml:7: service.web.triggers.cpu.action: unknown action \"panic\"; expected \"investigate\" or \"rollback\"",
            "ripcord.toml:8: service.web.triggers.latency: unknown key (did you mean `latency_p95`?); expected one of `error_rate`, `latency_p95`, `oom_kills`, `crash`, `cpu`, `health`",
        ],
    );
}

#[test]
fn the_false_alarm_budget_is_read_in_words_and_min_samples_is_gone() {
    let cfg = Config::parse(GOOD, Path::new("x.toml")).unwrap();
    let t = &cfg.service("web").unwrap().triggers;
    assert_eq!(t.error_rate.as_ref().unwrap().requests_per_false_alarm, 1e8);
    assert_eq!(
        t.latency_p95.as_ref().unwrap().requests_per_false_alarm,
        1e8
    );
    for (text, want) in [
        ("1 per 1e8 requests", 1e8),
        ("1 per 100_000_000 requests", 1e8),
        ("1 per 10^12 requests", 1e12),
        ("1  per  5000 requests", 5e3),
    ] {
        let src =
            format!("{GOOD}[service.web.triggers]\nlatency_p95 = {{ false_alarm = \"{text}\" }}\n");
        let cfg = Config::parse(&src, Path::new("x.toml")).unwrap();
        let t = &cfg.service("web").unwrap().triggers;
        assert_eq!(
            t.latency_p95.as_ref().unwrap().requests_per_false_alarm,
            want,
            "{text}"
        );
    }
    let src = format!(
        "{GOOD}[service.web.triggers]\nerror_rate = {{ false_alarm = \"1e-8\", min_samples = 20 }}\nlatency_p95 = {{ false_alarm = \"1 per 10 requests\" }}\n"
    );
    let got = errors(&src);
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(
        got.iter().any(|e| e.starts_with("ripcord.toml:6: service.web.triggers.error_rate.min_samples: is no longer used: the rule is a sequential test")),
        "{got:?}"
    );
    assert!(
        got.iter().any(|e| e.contains(
            "service.web.triggers.error_rate.false_alarm: \"1e-8\": expected \"1 per N requests\""
        )),
        "{got:?}"
    );
    assert!(
        got.iter().any(|e| e.contains("service.web.triggers.latency_p95.false_alarm: \"1 per 10 requests\": 1 per 10 requests is out of range")),
        "{got:?}"
    );
    assert!(!got.iter().any(|e| e.contains("unknown key")), "{got:?}");
}

#[test]
fn an_integrity_check_has_an_interval() {
    for interval in ["interval = \"10s\"", "interval = 10", "interval_secs = 10"] {
        let src = format!(
            "{GOOD}[service.web.integrity]\ncommand = [\"pg-check\", \"orders\"]\n{interval}\n"
        );
        let cfg = Config::parse(&src, Path::new("x.toml")).unwrap();
        let it = cfg.service("web").unwrap().integrity.clone().unwrap();
        assert_eq!(it.interval, Duration::from_secs(10), "{interval}");
        assert!(matches!(it.check.kind, CheckKind::Command { .. }));
    }
    let src = format!("{GOOD}[service.web.integrity]\nevery = 10\n");
    let got = errors(&src);
    assert!(
        got[0].contains("service.web.integrity.every: unknown key"),
        "{got:?}"
    );
}

#[test]
fn prometheus_checks_need_a_server_and_a_bound() {
    let src = format!(
        "{GOOD}[[service.web.verify]]\nprometheus = \"up\"\nabove = 0.5\n[[service.web.verify]]\nprometheus = \"up\"\n"
    );
    check(
        &src,
        &[
            "ripcord.toml:2: service.web.prometheus: missing: a prometheus check needs the server, e.g. [service.NAME.prometheus] url = \"http://127.0.0.1:9090\"",
            "ripcord.toml:9: service.web.verify[1]: a prometheus check needs `below = N` or `above = N` (or both)",
        ],
    );
    let src = format!(
        "{GOOD}[service.web.prometheus]\nurl = \"http://127.0.0.1:9090\"\n[[service.web.verify]]\nprometheus = \"up\"\nabove = 0.5\n"
    );
    let cfg = Config::parse(&src, Path::new("x.toml")).unwrap();
    match &cfg.service("web").unwrap().verify[0].kind {
        CheckKind::Prometheus { url, above, .. } => {
            assert_eq!(url.as_deref(), Some("http://127.0.0.1:9090"));
            assert_eq!(*above, Some(0.5));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn metric_rules_are_read_and_checked() {
    let src = format!(
        "{GOOD}[service.web.prometheus]\nurl = \"http://127.0.0.1:9090\"\n[[service.web.prometheus.rules]]\nname = \"5xx\"\nquery = \"x\"\nabove = 0.1\n[[service.web.prometheus.rules]]\nquery = \"y\"\n"
    );
    let got = errors(&src);
    assert_eq!(
        got,
        [
            "ripcord.toml:11: service.web.prometheus.rules[1]: a metric rule fires when its value is `above = N` or `below = N`: give one"
        ]
    );
    let src = format!(
        "{GOOD}[service.web.prometheus]\nurl = \"http://127.0.0.1:9090\"\n[[service.web.prometheus.rules]]\nquery = \"x\"\nbelow = 5\n"
    );
    let cfg = Config::parse(&src, Path::new("x.toml")).unwrap();
    let p = cfg.service("web").unwrap().prometheus.clone().unwrap();
    assert_eq!(p.rules[0].name, "x");
    assert_eq!(
        (p.rules[0].consecutive, p.rules[0].interval),
        (2, Duration::from_secs(10))
    );
    assert_eq!(p.rules[0].below, Some(5.0));
}

#[test]
fn metrics_listen_must_be_loopback_and_free() {
    let src = format!("[watch]\nmetrics_listen = \"0.0.0.0:9464\"\n{GOOD}");
    check(
        &src,
        &[
            "ripcord.toml:2: watch.metrics_listen: \"0.0.0.0:9464\" is not a loopback address: ripcord's metrics are served on 127.0.0.1 or ::1 only",
        ],
    );
    let src = format!("[watch]\nmetrics_listen = \"127.0.0.1:8080\"\n{GOOD}");
    check(
        &src,
        &[
            "ripcord.toml:5: service.web.listen: port 8080 is already used by `watch.metrics_listen`",
        ],
    );
    let src = format!("[watch]\nmetrics_listen = \"127.0.0.1:9464\"\n{GOOD}");
    let cfg = Config::parse(&src, Path::new("x.toml")).unwrap();
    assert_eq!(cfg.metrics_listen, Some("127.0.0.1:9464".parse().unwrap()));
}

#[test]
fn docker_blue_green_and_image_replace_load() {
    let src = r#"
[service.web]
runtime = "docker"
listen = "127.0.0.1:8080"
slots = { blue = 8081, green = 8082 }

[service.web.docker]
image = "registry.local/web"
env_file = "web.env"
container_port = 8000
memory_limit_mb = 256
restart = "on-failure:3"

[service.api]
runtime = "docker"
router = "none"

[service.api.docker]
container_port = 9000
publish = "127.0.0.1:9100"
name = "api-main"
"#;
    let cfg = Config::parse(src, Path::new("/etc/ripcord/ripcord.toml")).unwrap();
    let web = cfg.service("web").unwrap();
    let d = web.docker.as_ref().unwrap();
    assert_eq!(web.runtime, Runtime::Docker);
    assert_eq!(d.image.as_deref(), Some("registry.local/web"));
    assert_eq!(
        d.env_file.as_deref(),
        Some(Path::new("/etc/ripcord/web.env"))
    );
    assert_eq!(d.restart, "on-failure:3");
    assert_eq!(d.name, "web");
    let api = cfg.service("api").unwrap();
    assert_eq!(api.router, Router::None);
    // Image replace has one address: both "slots" are the published one.
    assert_eq!(api.slots.blue, "127.0.0.1:9100".parse().unwrap());
    assert_eq!(api.slots.green, api.slots.blue);
    let d = api.docker.as_ref().unwrap();
    assert_eq!((d.name.as_str(), d.restart.as_str()), ("api-main", "no"));
}

#[test]
fn docker_mistakes_are_reported_with_their_lines() {
    check(
        r#"
[service.web]
runtime = "process"
router = "none"
listen = "127.0.0.1:8080"
slots = { blue = 8081, green = 8082 }

[service.api]
runtime = "docker"
router = "none"

[service.api.docker]
restart = "sometimes"
name = "-bad"
publish = "127.0.0.1:8080"
container_port = 70000
"#,
        &[
            "ripcord.toml:4: service.web.router: router \"none\" (image replace) needs runtime = \"docker\"; use \"proxy\" or \"nginx\" for blue-green",
            "ripcord.toml:13: service.api.docker.restart: \"sometimes\" is not a restart policy; expected \"no\", \"on-failure[:N]\", \"always\" or \"unless-stopped\"",
            "ripcord.toml:14: service.api.docker.name: \"-bad\" is not a container name: letters, digits, `_`, `.` and `-`, starting with a letter or digit",
            "ripcord.toml:16: service.api.docker.container_port: 70000 is out of range: expected 1 to 65535",
        ],
    );
}

#[test]
fn the_docker_example_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/docker.toml");
    let cfg = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let shop = cfg.service("shop").unwrap();
    assert_eq!(shop.runtime, Runtime::Docker);
    assert!(
        shop.database
            .as_ref()
            .unwrap()
            .password_file
            .as_ref()
            .unwrap()
            .is_absolute()
    );
    let swarm = cfg.service("shop-swarm").unwrap();
    assert_eq!(swarm.runtime, Runtime::Swarm);
    assert_eq!(swarm.slots.blue, "127.0.0.1:9000".parse().unwrap());
}

/// A PEM file that parses as a certificate (rcgen's self-signed one).
fn pem_cert() -> String {
    rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
        .unwrap()
        .cert
        .pem()
}

#[test]
fn https_urls_and_ca_files_load_relative_to_the_config() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), pem_cert()).unwrap();
    let src = format!(
        "{GOOD}[service.web.prometheus]\nurl = \"https://prom.example:9090\"\nca_file = \"ca.pem\"\n\
         [service.web.notify]\nwebhooks = [\"https://hooks.example/x\"]\nca_file = \"ca.pem\"\n\
         [[service.web.verify]]\nhttp = \"https://127.0.0.1:8080/health\"\nca_file = \"ca.pem\"\n\
         [[service.web.verify]]\nprometheus = \"up\"\nabove = 0.5\n"
    );
    let cfg = Config::parse(&src, &dir.path().join("ripcord.toml")).unwrap();
    let web = cfg.service("web").unwrap();
    let ca = dir.path().join("ca.pem");
    assert_eq!(web.prometheus.as_ref().unwrap().ca_file.as_ref(), Some(&ca));
    assert_eq!(web.webhooks_ca_file.as_ref(), Some(&ca));
    match &web.verify[0].kind {
        CheckKind::Http { url, ca_file, .. } => {
            assert_eq!(url, "https://127.0.0.1:8080/health");
            assert_eq!(ca_file.as_ref(), Some(&ca));
        }
        other => panic!("{other:?}"),
    }
    // A prometheus check trusts what the server's table trusts.
    match &web.verify[1].kind {
        CheckKind::Prometheus { ca_file, .. } => assert_eq!(ca_file.as_ref(), Some(&ca)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_missing_or_non_pem_ca_file_is_reported_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("junk.pem"), "not a certificate\n").unwrap();
    let src = format!(
        "{GOOD}[[service.web.verify]]\nhttp = \"https://127.0.0.1:8080/\"\nca_file = \"nope.pem\"\n\
         [service.web.notify]\nwebhooks = [\"https://hooks.example/x\"]\nca_file = \"junk.pem\"\n\
         [[service.web.verify]]\ncommand = [\"true\"]\nca_file = \"junk.pem\"\n"
    );
    let file = dir.path().join("ripcord.toml");
    let got = match Config::parse(&src, &file) {
        Err(LoadError::Invalid { errors, .. }) => {
            errors.iter().map(|e| e.to_string()).collect::<Vec<_>>()
        }
        other => panic!("{other:?}"),
    };
    let f = file.display();
    let d = dir.path().display();
    assert_eq!(got.len(), 4, "{got:#?}");
    assert!(
        got[0].starts_with(&format!(
            "{f}:7: service.web.verify[0].ca_file: CA file {d}/nope.pem: No such file"
        )),
        "{got:#?}"
    );
    assert_eq!(
        got[1],
        format!(
            "{f}:10: service.web.notify.ca_file: CA file {d}/junk.pem: no PEM certificate in it (want -----BEGIN CERTIFICATE-----)"
        )
    );
    // A command check has no URL to trust a CA for.
    assert_eq!(
        got[2],
        format!(
            "{f}:11: service.web.verify[1].ca_file: `ca_file` goes with `http = \"https://...\"` (a prometheus check uses [service.NAME.prometheus] ca_file)"
        )
    );
    assert!(
        got[3].starts_with(&format!("{f}:13: service.web.verify[1].ca_file: CA file")),
        "{got:#?}"
    );
}

/// A duration key, where it goes, and its lower bound: the value just below it and the
/// bound itself.
struct DurationKey {
    /// What goes between [`GOOD`] and the key: the key's table and what it needs.
    table: &'static str,
    path: &'static str,
    key: &'static str,
    old: &'static str,
    below_min: &'static str,
    min: &'static str,
    /// How the minimum is shown in the message.
    shown_min: &'static str,
    /// What a bare 90 is.
    whole: Duration,
    get: fn(&ServiceConfig) -> Duration,
}

const DURATION_KEYS: &[DurationKey] = {
    const S: Duration = Duration::from_secs(90);
    const MS: Duration = Duration::from_millis(90);
    fn health(s: &ServiceConfig) -> &HealthRule {
        s.triggers.health.as_ref().unwrap()
    }
    &[
        DurationKey {
            table: "",
            path: "service.web",
            key: "start_timeout",
            old: "start_timeout_secs",
            below_min: "\"999ms\"",
            min: "\"1s\"",
            shown_min: "1s",
            whole: S,
            get: |s| s.start_timeout,
        },
        DurationKey {
            table: "",
            path: "service.web",
            key: "bake",
            old: "bake_secs",
            below_min: "-1",
            min: "\"0s\"",
            shown_min: "0s",
            whole: S,
            get: |s| s.bake,
        },
        DurationKey {
            table: "",
            path: "service.web",
            key: "stop_timeout",
            old: "stop_timeout_secs",
            below_min: "0",
            min: "1",
            shown_min: "1s",
            whole: S,
            get: |s| s.stop_timeout,
        },
        DurationKey {
            table: "",
            path: "service.web",
            key: "verify_deadline",
            old: "verify_deadline_secs",
            below_min: "\"999ms\"",
            min: "\"1000ms\"",
            shown_min: "1s",
            whole: S,
            get: |s| s.verify_deadline,
        },
        DurationKey {
            table: "",
            path: "service.web",
            key: "investigate",
            old: "investigate_secs",
            below_min: "-1",
            min: "0",
            shown_min: "0s",
            whole: S,
            get: |s| s.investigate,
        },
        DurationKey {
            table: "[[service.web.verify]]\ncommand = [\"true\"]\n",
            path: "service.web.verify[0]",
            key: "timeout",
            old: "timeout_secs",
            below_min: "\"99ms\"",
            min: "\"100ms\"",
            shown_min: "100ms",
            whole: S,
            get: |s| s.verify[0].timeout,
        },
        DurationKey {
            table: "[service.web.integrity]\ncommand = [\"true\"]\n",
            path: "service.web.integrity",
            key: "interval",
            old: "interval_secs",
            below_min: "\"999ms\"",
            min: "\"1s\"",
            shown_min: "1s",
            whole: S,
            get: |s| s.integrity.as_ref().unwrap().interval,
        },
        DurationKey {
            table: "[service.web.prometheus]\nurl = \"http://127.0.0.1:9090\"\n\
                    [[service.web.prometheus.rules]]\nquery = \"up\"\nbelow = 1\n",
            path: "service.web.prometheus.rules[0]",
            key: "interval",
            old: "interval_secs",
            below_min: "\"999ms\"",
            min: "\"1s\"",
            shown_min: "1s",
            whole: S,
            get: |s| s.prometheus.as_ref().unwrap().rules[0].interval,
        },
        DurationKey {
            table: "[service.web.triggers.error_rate]\n",
            path: "service.web.triggers.error_rate",
            key: "window",
            old: "window_secs",
            below_min: "\"999ms\"",
            min: "\"1s\"",
            shown_min: "1s",
            whole: S,
            get: |s| s.triggers.error_rate.as_ref().unwrap().window,
        },
        DurationKey {
            table: "[service.web.triggers.latency_p95]\n",
            path: "service.web.triggers.latency_p95",
            key: "window",
            old: "window_secs",
            below_min: "\"999ms\"",
            min: "\"1s\"",
            shown_min: "1s",
            whole: S,
            get: |s| s.triggers.latency_p95.as_ref().unwrap().window,
        },
        DurationKey {
            table: "[service.web.triggers.latency_p95]\n",
            path: "service.web.triggers.latency_p95",
            key: "floor",
            old: "floor_ms",
            below_min: "-1",
            min: "\"0ms\"",
            shown_min: "0s",
            whole: MS,
            get: |s| s.triggers.latency_p95.as_ref().unwrap().floor,
        },
        DurationKey {
            table: "[service.web.triggers.cpu]\n",
            path: "service.web.triggers.cpu",
            key: "for",
            old: "for_secs",
            below_min: "\"999ms\"",
            min: "\"1s\"",
            shown_min: "1s",
            whole: S,
            get: |s| s.triggers.cpu.as_ref().unwrap().for_,
        },
        DurationKey {
            table: "[service.web.triggers.health]\n",
            path: "service.web.triggers.health",
            key: "interval",
            old: "interval_secs",
            below_min: "\"99ms\"",
            min: "\"100ms\"",
            shown_min: "100ms",
            whole: S,
            get: |s| health(s).interval,
        },
        DurationKey {
            table: "[service.web.triggers.health]\n",
            path: "service.web.triggers.health",
            key: "timeout",
            old: "timeout_secs",
            below_min: "\"99ms\"",
            min: "\"100ms\"",
            shown_min: "100ms",
            whole: S,
            get: |s| health(s).timeout,
        },
    ]
};

impl DurationKey {
    /// The config with `lines` in the key's table, and the line the first of them is on.
    fn source(&self, lines: &str) -> (String, usize) {
        let before = format!("{GOOD}{}", self.table);
        let line = before.matches('\n').count() + 1;
        (format!("{before}{lines}\n"), line)
    }

    /// The value the key has with `lines` in its table.
    fn value(&self, lines: &str) -> Duration {
        let (src, _) = self.source(lines);
        let cfg = Config::parse(&src, Path::new("x.toml"))
            .unwrap_or_else(|e| panic!("{lines}: {e}: {:?}", errors(&src)));
        (self.get)(cfg.service("web").unwrap())
    }

    /// The problems with `lines` in the key's table, and the line they start on.
    fn problems(&self, lines: &str) -> (Vec<String>, usize) {
        let (src, line) = self.source(lines);
        (errors(&src), line)
    }
}

#[test]
fn every_duration_takes_units_or_whole_numbers_under_either_name() {
    for k in DURATION_KEYS {
        let (key, old) = (k.key, k.old);
        assert_eq!(
            k.value(&format!("{key} = \"2m\"")),
            Duration::from_secs(120),
            "{key}"
        );
        assert_eq!(
            k.value(&format!("{key} = \"1m 30s\"")),
            Duration::from_secs(90)
        );
        // A whole number: seconds, or milliseconds for what was `_ms`.
        assert_eq!(k.value(&format!("{key} = 90")), k.whole, "{key}");
        assert_eq!(k.value(&format!("{old} = 90")), k.whole, "{old}");
        assert_eq!(k.value(&format!("{key} = \"90\"")), k.whole, "{key}");
        assert_eq!(
            k.value(&format!("{old} = \"2m\"")),
            Duration::from_secs(120),
            "{old}"
        );
    }
}

#[test]
fn short_and_long_units_are_read() {
    let health = &DURATION_KEYS[DURATION_KEYS.len() - 2];
    let bake = &DURATION_KEYS[1];
    assert_eq!((health.key, bake.key), ("interval", "bake"));
    for (text, want) in [
        ("500ms", Duration::from_millis(500)),
        ("90s", Duration::from_secs(90)),
        ("2m", Duration::from_secs(120)),
        ("1h", Duration::from_secs(3600)),
        ("1.5s", Duration::from_millis(1500)),
    ] {
        assert_eq!(health.value(&format!("interval = \"{text}\"")), want);
        assert_eq!(bake.value(&format!("bake = \"{text}\"")), want);
    }
}

#[test]
fn a_duration_at_its_minimum_is_taken_and_just_below_it_refused() {
    for k in DURATION_KEYS {
        let key = k.key;
        k.value(&format!("{key} = {}", k.min));
        let (got, line) = k.problems(&format!("{key} = {}", k.below_min));
        assert_eq!(got.len(), 1, "{got:?}");
        let want = format!(
            "ripcord.toml:{line}: {}.{key}: {} is out of range: expected {} to",
            k.path, k.below_min, k.shown_min
        );
        assert!(got[0].starts_with(&want), "{got:?}\nwant {want}");
    }
}

#[test]
fn a_duration_that_is_not_one_names_file_line_and_key() {
    for k in DURATION_KEYS {
        let (key, old) = (k.key, k.old);
        let unit = if k.whole == Duration::from_millis(90) {
            "expected e.g. 500us, 25ms, 1s, or whole milliseconds"
        } else {
            "expected e.g. 500ms, 90s, 2m, 1h, or whole seconds"
        };
        let (got, line) = k.problems(&format!("{key} = \"5 parsecs\""));
        assert_eq!(
            got,
            [format!(
                "ripcord.toml:{line}: {}.{key}: \"5 parsecs\" is not a duration ({unit})",
                k.path
            )]
        );
        let (got, line) = k.problems(&format!("{old} = \"soon\""));
        assert_eq!(
            got,
            [format!(
                "ripcord.toml:{line}: {}.{old}: \"soon\" is not a duration ({unit})",
                k.path
            )]
        );
        let (got, _) = k.problems(&format!("{key} = true"));
        assert!(
            got[0].ends_with(", found a boolean") && got[0].contains("expected a duration"),
            "{got:?}"
        );
    }
}

#[test]
fn a_duration_under_both_names_is_refused_naming_both() {
    for k in DURATION_KEYS {
        let (key, old) = (k.key, k.old);
        let (got, line) = k.problems(&format!("{key} = \"2m\"\n{old} = 120"));
        assert_eq!(
            got,
            [format!(
                "ripcord.toml:{}: {}.{old}: both `{key}` and `{old}` are given, and `{old}` is the old name of `{key}`: keep one",
                line + 1,
                k.path
            )]
        );
    }
}

#[test]
fn old_duration_names_are_never_suggested() {
    let got = errors(&format!("{GOOD}bake_time = 3\n"));
    assert!(
        got[0].contains("unknown key (did you mean `bake`?)") && !got[0].contains("bake_secs"),
        "{got:?}"
    );
    let got = errors(&format!(
        "{GOOD}[service.web.triggers]\ncpu = {{ fr = \"1m\" }}\n"
    ));
    assert!(
        got[0].contains("service.web.triggers.cpu.fr: unknown key (did you mean `for`?)"),
        "{got:?}"
    );
    // An old name is known only where its new name is.
    let got = errors(&format!("{GOOD}window_secs = 3\n"));
    assert!(
        got[0].contains("service.web.window_secs: unknown key"),
        "{got:?}"
    );
}

#[test]
fn the_snapshot_keeps_the_old_names_in_seconds() {
    let src = format!(
        "{GOOD}bake = \"5m\"\nstart_timeout = \"1500ms\"\n[service.web.triggers]\nlatency_p95 = {{ floor = \"25ms\" }}\n"
    );
    let cfg = Config::parse(&src, Path::new("x.toml")).unwrap();
    let json = serde_json::to_value(cfg.service("web").unwrap()).unwrap();
    assert_eq!(json["bake_secs"], 300);
    assert_eq!(json["start_timeout_secs"], 1.5);
    assert_eq!(json["triggers"]["latency_p95"]["floor_ms"], 25);
    assert_eq!(json["triggers"]["health"]["interval_secs"], 5);
}
