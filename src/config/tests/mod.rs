use std::time::Duration;

use super::*;

mod durations;

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
            "ripcord.toml:5: service.web.bake_sec: unknown key (did you mean `bake`?); expected one of `runtime`, `router`, `listen`, `slots`, `health_path`, `start_timeout`, `bake`, `stop_timeout`, `command`, `env`, `env_file`, `config_files`, `verify`, `verify_deadline`, `triggers`, `investigate`, `drill_budget`, `drill_max_age`, `memory_limit_mb`, `notify`, `integrity`, `prometheus`, `nginx`, `migrations`, `docker`, `database`, `proxy`, `kubernetes`",
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
runtime = "lambda"
"#;
    check(
        src,
        &[
            "ripcord.toml:3: service.web.listen: \"nowhere\" is not an address: expected \"host:port\" with an IP address, e.g. \"127.0.0.1:8080\"",
            "ripcord.toml:4: service.web.slots.blue: 0 is not a valid port (1-65535)",
            "ripcord.toml:4: service.web.slots.green: expected a port number or \"host:port\", found a boolean",
            "ripcord.toml:5: service.web.bake_secs: -1 is out of range: expected 0s to 24h",
            "ripcord.toml:6: service.web.command: expected an array of strings (an argument vector such as [\"/usr/bin/app\", \"--port\", \"{port}\"]; ripcord never runs a shell string), found a string",
            "ripcord.toml:7: service.web.runtime: unknown runtime \"lambda\"; expected \"process\", \"external\", \"docker\", \"swarm\" or \"kubernetes\"",
        ],
    );
}

#[test]
fn the_kubernetes_table() {
    let src = r#"
[service.web]
runtime = "kubernetes"
listen = "127.0.0.1:8080"

[service.web.kubernetes]
namespace = "shop"
deployment = "web"
container = "app"
address = "127.0.0.1:30080"
kubeconfig = "kube/config"
"#;
    let cfg = Config::parse(src, Path::new("/etc/ripcord/ripcord.toml")).unwrap();
    let web = cfg.service("web").unwrap();
    assert_eq!(web.runtime, Runtime::Kubernetes);
    assert!(web.one_address());
    let k = web.kubernetes.as_ref().unwrap();
    assert_eq!(
        (
            k.namespace.as_str(),
            k.deployment.as_str(),
            k.container.as_str()
        ),
        ("shop", "web", "app")
    );
    assert_eq!(k.keep_releases, 10);
    assert!(k.registry_digest, "a tag's digest is asked for by default");
    assert_eq!(
        k.kubeconfig.as_deref(),
        Some(Path::new("/etc/ripcord/kube/config"))
    );
    // The one address is the proxy's target.
    assert_eq!(web.slots.blue, "127.0.0.1:30080".parse().unwrap());
    assert_eq!(web.slots.green, web.slots.blue);
    check(
        r#"
[service.web]
runtime = "kubernetes"
listen = "127.0.0.1:8080"

[service.web.kubernetes]
namespace = "Shop_1"
container = "app"
address = "somewhere"
keep_releases = 1
replicas = 3
"#,
        &[
            "ripcord.toml:6: service.web.kubernetes.deployment: missing: e.g. deployment = \"web\"",
            "ripcord.toml:7: service.web.kubernetes.namespace: \"Shop_1\" is not a Kubernetes name: lowercase letters, digits and `-`, starting and ending with a letter or digit, at most 63 characters",
            "ripcord.toml:9: service.web.kubernetes.address: \"somewhere\" is not an address: expected \"host:port\" with an IP address, e.g. \"127.0.0.1:8080\"",
            "ripcord.toml:10: service.web.kubernetes.keep_releases: 1 is out of range: expected 2 to 1000",
            "ripcord.toml:11: service.web.kubernetes.replicas: unknown key; expected one of `namespace`, `deployment`, `container`, `image`, `address`, `kubeconfig`, `context`, `keep_releases`, `registry_digest`",
        ],
    );
    check(
        "[service.web]\nruntime = \"kubernetes\"\nlisten = \"127.0.0.1:8080\"\n",
        &[
            "ripcord.toml:1: service.web.kubernetes: missing: runtime \"kubernetes\" needs [service.NAME.kubernetes] with `namespace`, `deployment`, `container` and `address`",
        ],
    );
    check(
        "[service.web]\nlisten = \"127.0.0.1:8080\"\nslots = { blue = 8081, green = 8082 }\n\
         [service.web.kubernetes]\nnamespace = \"a\"\ndeployment = \"b\"\ncontainer = \"c\"\naddress = \"127.0.0.1:1\"\n",
        &[
            "ripcord.toml:1: service.web.kubernetes: [service.NAME.kubernetes] is for runtime = \"kubernetes\" only",
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

/// Regression (found by the fuzz target `config_toml`): toml_edit's recursion limit has
/// no span, and the error named neither a line nor a key.
#[test]
fn nesting_too_deep_names_the_deepest_line() {
    let dotted = format!("{GOOD}\n[service.web.{}]\n", vec!["a"; 300].join("."));
    let got = errors(&dotted);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].starts_with("ripcord.toml:6: invalid TOML: recursion limit"),
        "{got:?}"
    );
    // Arrays nested too deep get a place from toml_edit itself.
    let deep = format!("{GOOD}x = {}{}\n", "[".repeat(300), "]".repeat(300));
    let got = errors(&deep);
    assert!(
        got[0].starts_with("ripcord.toml:5: invalid TOML"),
        "{got:?}"
    );
}

#[test]
fn unknown_top_level_key_and_bad_name() {
    check(
        "[services.web]\n",
        &[
            "ripcord.toml:1: services: unknown key (did you mean `service`?); expected one of `service`, `watch`, `redact`",
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
fn proxy_limits_default_to_nginx_like_values_and_can_be_set() {
    let cfg = Config::parse(GOOD, Path::new("x.toml")).unwrap();
    assert_eq!(
        cfg.service("web").unwrap().proxy_limits,
        ProxyLimits::default()
    );
    let src = format!(
        "{GOOD}[service.web.proxy]\nmax_connections = 500\nheader_timeout = \"10s\"\nresponse_timeout = \"2m\"\nmax_header_bytes = 16384\nmax_uri_bytes = 2048\nwebsocket_drain = \"5m\"\nupstream_protocol = \"h2c\"\n"
    );
    let l = Config::parse(&src, Path::new("x.toml"))
        .unwrap()
        .service("web")
        .unwrap()
        .proxy_limits;
    assert_eq!(
        l,
        ProxyLimits {
            max_connections: 500,
            header_timeout: Duration::from_secs(10),
            response_timeout: Duration::from_secs(120),
            max_header_bytes: 16384,
            max_uri_bytes: 2048,
            websocket_drain: Duration::from_secs(300),
            upstream_protocol: crate::config::UpstreamProtocol::H2c,
        }
    );
    // What is not given keeps its default.
    let src = format!("{GOOD}[service.web.proxy]\nmax_connections = 3\n");
    let l = Config::parse(&src, Path::new("x.toml"))
        .unwrap()
        .service("web")
        .unwrap()
        .proxy_limits;
    assert_eq!(l.header_timeout, ProxyLimits::default().header_timeout);
    let problems = errors(&format!(
        "{GOOD}[service.web.proxy]\nmax_connections = 0\nheader_timeout = \"soon\"\nmax_uri = 1\n"
    ));
    assert_eq!(problems.len(), 3, "{problems:?}");
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("ripcord.toml:6: service.web.proxy.max_connections")),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("ripcord.toml:7: service.web.proxy.header_timeout")),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("service.web.proxy.max_uri")),
        "{problems:?}"
    );
    let problems = errors(&format!(
        "{GOOD}[service.web.proxy]\nwebsocket_drain = \"later\"\nupstream_protocol = \"h3\"\n"
    ));
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("ripcord.toml:6: service.web.proxy.websocket_drain")),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p
            .starts_with("ripcord.toml:7: service.web.proxy.upstream_protocol")
            && p.contains("`h3`")),
        "{problems:?}"
    );
}

#[test]
fn proxy_tls_takes_a_certificate_and_key_beside_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(dir.path().join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.path().join("key.pem"), signing_key.serialize_pem()).unwrap();
    let file = dir.path().join("ripcord.toml");
    let src =
        format!("{GOOD}[service.web.proxy]\ntls_cert = \"cert.pem\"\ntls_key = \"key.pem\"\n");
    let cfg = Config::parse(&src, &file).unwrap();
    assert_eq!(
        cfg.service("web").unwrap().proxy_tls,
        Some(crate::config::ProxyTls {
            cert: dir.path().join("cert.pem"),
            key: dir.path().join("key.pem"),
        })
    );
    assert_eq!(
        Config::parse(GOOD, &file)
            .unwrap()
            .service("web")
            .unwrap()
            .proxy_tls,
        None
    );
    // One without the other.
    let problems = errors(&format!(
        "{GOOD}[service.web.proxy]\ntls_cert = \"cert.pem\"\n"
    ));
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].starts_with("ripcord.toml:6: service.web.proxy.tls_cert")
            && problems[0].contains("tls_key"),
        "{problems:?}"
    );
    // Files that are not there, or hold no PEM certificate.
    std::fs::write(dir.path().join("empty.pem"), "").unwrap();
    let src =
        format!("{GOOD}[service.web.proxy]\ntls_cert = \"empty.pem\"\ntls_key = \"key.pem\"\n");
    let Err(LoadError::Invalid { errors, .. }) = Config::parse(&src, &file) else {
        panic!("an empty certificate file was taken");
    };
    let problems: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    assert!(
        problems.len() == 1
            && problems[0].contains(":6: service.web.proxy.tls_cert")
            && problems[0].contains("empty.pem holds no PEM certificate"),
        "{problems:?}"
    );
    let src =
        format!("{GOOD}[service.web.proxy]\ntls_cert = \"cert.pem\"\ntls_key = \"gone.pem\"\n");
    let Err(LoadError::Invalid { errors, .. }) = Config::parse(&src, &file) else {
        panic!("a missing key file was taken");
    };
    let problems: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    assert!(
        problems.len() == 1
            && problems[0].contains(":7: service.web.proxy.tls_key")
            && problems[0].contains("gone.pem"),
        "{problems:?}"
    );
}

#[test]
fn socket_grace_is_a_duration_or_off_with_a_default() {
    let cfg = Config::parse(GOOD, Path::new("x.toml")).unwrap();
    assert_eq!(cfg.socket_grace, Some(DEFAULT_SOCKET_GRACE));
    let cfg = Config::parse(
        &format!("[watch]\nsocket_grace = \"5m\"\n{GOOD}"),
        Path::new("x.toml"),
    )
    .unwrap();
    assert_eq!(cfg.socket_grace, Some(Duration::from_secs(300)));
    let cfg = Config::parse(
        &format!("[watch]\nsocket_grace = 30\n{GOOD}"),
        Path::new("x.toml"),
    )
    .unwrap();
    assert_eq!(cfg.socket_grace, Some(Duration::from_secs(30)));
    let cfg = Config::parse(
        &format!("[watch]\nsocket_grace = \"off\"\n{GOOD}"),
        Path::new("x.toml"),
    )
    .unwrap();
    assert_eq!(cfg.socket_grace, None);
    let problems = errors(&format!("[watch]\nsocket_grace = \"soon\"\n{GOOD}"));
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].starts_with("ripcord.toml:2: watch.socket_grace: "),
        "{problems:?}"
    );
    let problems = errors(&format!("[watch]\nsocket_grace = \"500ms\"\n{GOOD}"));
    assert!(problems[0].contains("out of range"), "{problems:?}");
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
            "ripcord.toml:4: service.web.router: router \"none\" (image replace) needs runtime = \"docker\" (or \"swarm\", \"kubernetes\"); use \"proxy\" or \"nginx\" for blue-green",
            "ripcord.toml:13: service.api.docker.restart: \"sometimes\" is not a restart policy; expected \"no\", \"on-failure[:N]\", \"always\" or \"unless-stopped\"",
            "ripcord.toml:14: service.api.docker.name: \"-bad\" is not a container name: letters, digits, `_`, `.` and `-`, starting with a letter or digit",
            "ripcord.toml:16: service.api.docker.container_port: 70000 is out of range: expected 1 to 65535",
        ],
    );
}

#[test]
fn a_registry_login_names_its_password_variable_and_never_holds_the_password() {
    let base = r#"
[service.api]
runtime = "docker"
router = "none"

[service.api.docker]
container_port = 8080
publish = "127.0.0.1:8080"
"#;
    let cfg = Config::parse(
        &format!("{base}registry_username = \"ci\"\nregistry_password_env = \"REG_PW\"\n"),
        Path::new("ripcord.toml"),
    )
    .unwrap();
    let d = cfg.service("api").unwrap().docker.clone().unwrap();
    assert_eq!(d.registry_username.as_deref(), Some("ci"));
    assert_eq!(d.registry_password_env.as_deref(), Some("REG_PW"));
    check(
        &format!("{base}registry_username = \"ci\"\nregistry_password = \"hunter2\"\n"),
        &[
            "ripcord.toml:6: service.api.docker.registry_username: registry_username and registry_password_env go together (the user, and the environment variable holding its password); set both or neither",
            "ripcord.toml:10: service.api.docker.registry_password: ripcord never reads a password from its config file (it is often committed): put it in an environment variable of the watcher and name that with registry_password_env = \"VAR\" (or `docker login` the registry)",
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

#[test]
fn a_process_env_file_is_relative_to_the_config_and_only_for_processes() {
    let src = format!("{GOOD}env_file = \"app.env\"\n");
    let cfg = Config::parse(&src, Path::new("/etc/ripcord/ripcord.toml")).unwrap();
    assert_eq!(
        cfg.service("web").unwrap().env_file.as_deref(),
        Some(Path::new("/etc/ripcord/app.env"))
    );
    let errs = errors(
        "[service.web]\nruntime = \"docker\"\nlisten = \"127.0.0.1:8080\"\nslots = { blue = 8081, green = 8082 }\nenv_file = \"app.env\"\n[service.web.docker]\ncontainer_port = 8000\n",
    );
    assert_eq!(
        errs,
        [
            "ripcord.toml:5: service.web.env_file: `env_file` here is for runtime \"process\"; containers take theirs from [service.NAME.docker] env_file"
        ]
    );
}

#[test]
fn redact_defaults_replaces_and_names_a_bad_pattern() {
    let cfg = Config::parse(GOOD, Path::new("x.toml")).unwrap();
    assert_eq!(cfg.redact, redact::Redact::default());
    let cfg = Config::parse(
        &format!("redact = [\"*_PIN\"]\n{GOOD}"),
        Path::new("x.toml"),
    )
    .unwrap();
    assert!(cfg.redact.matches("card_pin") && !cfg.redact.matches("API_KEY"));
    let cfg = Config::parse(&format!("redact = []\n{GOOD}"), Path::new("x.toml")).unwrap();
    assert!(!cfg.redact.matches("API_KEY"));
    check(
        &format!("redact = [\"*_KEY\", \"bad name\"]\n{GOOD}"),
        &[
            "ripcord.toml:1: redact[1]: \"bad name\" is not a name pattern: letters, digits, `_` and `*` (any run), e.g. \"*_TOKEN\"",
        ],
    );
}

#[test]
fn migration_settings_are_read_with_their_defaults() {
    let src = r#"
[service.web]
listen = "127.0.0.1:8080"
slots = { blue = 8081, green = 8082 }

[service.web.migrations]
dir = "alembic/versions"
head_command = ["alembic", "current"]
format = "alembic"
disable = ["backfill-in-migration"]
severity = { "missing-lock-timeout" = "error" }
lock_timeout = "5s"
statement_timeout = "required"
"#;
    let cfg = Config::parse(src, Path::new("x.toml")).unwrap();
    let m = cfg.service("web").unwrap().migrations.clone().unwrap();
    assert_eq!(m.format, crate::migrate::Format::Alembic);
    let s = m.settings();
    assert!(s.disabled.contains("backfill-in-migration"));
    assert_eq!(
        s.severity.get("missing-lock-timeout"),
        Some(&crate::migrate::Severity::Error)
    );
    assert_eq!(s.lock_timeout, crate::migrate::Timeout::AtMost(5000));
    assert_eq!(s.statement_timeout, crate::migrate::Timeout::Required);

    // Left out: every rule on, lock_timeout required, statement_timeout not checked.
    let plain = src
        .lines()
        .filter(|l| {
            !["format", "disable", "severity", "lock_", "statement_"]
                .iter()
                .any(|k| l.starts_with(k))
        })
        .collect::<Vec<_>>()
        .join("\n");
    let cfg = Config::parse(&plain, Path::new("x.toml")).unwrap();
    let m = cfg.service("web").unwrap().migrations.clone().unwrap();
    let s = m.settings();
    assert_eq!(m.format, crate::migrate::Format::Auto);
    assert!(s.disabled.is_empty() && s.severity.is_empty());
    assert_eq!(s.lock_timeout, crate::migrate::Timeout::Required);
    assert_eq!(s.statement_timeout, crate::migrate::Timeout::Off);
}

#[test]
fn bad_migration_settings_name_file_line_and_key() {
    let src = r#"
[service.web]
listen = "127.0.0.1:8080"
slots = { blue = 8081, green = 8082 }

[service.web.migrations]
dir = "migrations"
head_command = ["alembic", "current"]
format = "django-ish"
disable = ["drop-colum"]
severity = { "drop-column" = "fatal", "nope" = "error" }
lock_timeout = "soon"
statement_timeout = "0"
"#;
    let got = errors(src);
    let want_prefixes = [
        "ripcord.toml:9: service.web.migrations.format: \"django-ish\": expected \"auto\", \"alembic\", \"django\", \"rails\" or \"sql\"",
        "ripcord.toml:10: service.web.migrations.disable[0]: unknown rule `drop-colum`; the rules are: ",
        "ripcord.toml:11: service.web.migrations.severity.drop-column: \"fatal\": expected \"error\", \"warning\" or \"info\"",
        "ripcord.toml:11: service.web.migrations.severity.nope: unknown rule `nope`",
        "ripcord.toml:12: service.web.migrations.lock_timeout: \"soon\": expected \"off\", \"required\" or a duration",
        "ripcord.toml:13: service.web.migrations.statement_timeout: \"0\": a timeout of 0 turns it off",
    ];
    assert_eq!(got.len(), want_prefixes.len(), "{got:#?}");
    for (g, w) in got.iter().zip(want_prefixes) {
        assert!(g.starts_with(w), "{g}\n  does not start with\n{w}");
    }
}

#[test]
fn config_files_need_distinct_names_and_runtime_process() {
    check(
        "[service.web]\nlisten = \"127.0.0.1:8080\"\nslots = { blue = 8081, green = 8082 }\nconfig_files = [\"a/app.toml\", \"b/app.toml\"]\n\n[service.api]\nruntime = \"docker\"\nrouter = \"none\"\nconfig_files = [\"api.toml\"]\n\n[service.api.docker]\ncontainer_port = 9000\npublish = \"127.0.0.1:9100\"\n",
        &[
            "ripcord.toml:4: service.web.config_files: `b/app.toml`: each config file needs a file name of its own (a release's copies sit side by side in one directory)",
            "ripcord.toml:9: service.api.config_files: `config_files` is for runtime \"process\"; a container's files belong in its image",
        ],
    );
}
