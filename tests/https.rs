//! Verification checks and Prometheus queries over https, through the real binary,
//! against a loopback TLS server whose certificate comes from a CA made in the test.

mod common;

#[path = "../src/http/test_server.rs"]
mod test_server;

use std::path::Path;
use std::process::{Command, Output};

use common::*;
use test_server::TlsServer;

/// A config for service `web` with `body` appended, in `dir`, beside the server's CA
/// as `ca.pem`.
fn project(dir: &Path, server: &TlsServer, body: &str) {
    std::fs::write(dir.join("ca.pem"), &server.ca_pem).unwrap();
    let config = format!(
        "[service.web]\nlisten = \"127.0.0.1:{}\"\nslots = {{ blue = {}, green = {} }}\n{body}",
        free_port(),
        free_port(),
        free_port()
    );
    std::fs::write(dir.join("ripcord.toml"), config).unwrap();
}

fn verify(dir: &Path) -> Output {
    Command::new(BIN)
        .args(["--json", "verify", "web"])
        .current_dir(dir)
        .env_remove("RIPCORD_CONFIG")
        .output()
        .unwrap()
}

/// Each check's name, whether it passed, and its detail.
fn results(out: &Output) -> Vec<(String, bool, String)> {
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {} {}", stdout(out), stderr(out)));
    v["checks"]
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
        .collect()
}

/// An http check of `/health`, one of `/moved` (a redirect to `/health`) and a
/// Prometheus check; `ca` is `ca_file = "ca.pem"` or nothing.
fn checks(server: &TlsServer, ca: &str) -> String {
    format!(
        r#"
[service.web.prometheus]
url = "{prom}"
{ca}

[[service.web.verify]]
name = "health"
http = "{health}"
body_contains = "ok"
{ca}

[[service.web.verify]]
name = "moved"
http = "{moved}"
status = 200
body_contains = "ok"
{ca}

[[service.web.verify]]
name = "up"
prometheus = "up"
above = 0.5
"#,
        prom = server.url(""),
        health = server.url("/health"),
        moved = server.url("/moved"),
    )
}

#[test]
fn checks_over_https_pass_with_the_ca_file_and_follow_a_redirect() {
    let server = TlsServer::start(&["127.0.0.1", "localhost"]);
    let dir = tempfile::tempdir().unwrap();
    project(
        dir.path(),
        &server,
        &checks(&server, "ca_file = \"ca.pem\""),
    );
    let out = verify(dir.path());
    let got = results(&out);
    assert_eq!(out.status.code(), Some(0), "{got:?} {}", stderr(&out));
    assert_eq!(
        got,
        vec![
            ("health".to_string(), true, "status 200".to_string()),
            // The 302 was followed to /health: without that, status 302 != 200.
            ("moved".to_string(), true, "status 200".to_string()),
            ("up".to_string(), true, "value 1".to_string()),
        ]
    );
}

#[test]
fn without_the_ca_file_the_certificate_is_not_trusted_and_the_url_is_named() {
    let server = TlsServer::start(&["127.0.0.1", "localhost"]);
    let dir = tempfile::tempdir().unwrap();
    project(dir.path(), &server, &checks(&server, ""));
    let out = verify(dir.path());
    let got = results(&out);
    assert_eq!(out.status.code(), Some(4), "{got:?}");
    let untrusted = |url: String| format!("the certificate of {url} is not trusted (");
    assert!(
        !got[0].1 && got[0].2.starts_with(&untrusted(server.url("/health"))),
        "{got:?}"
    );
    assert!(
        !got[1].1 && got[1].2.starts_with(&untrusted(server.url("/moved"))),
        "{got:?}"
    );
    assert!(
        !got[2].1
            && got[2].2.starts_with(&format!(
                "no data: unreachable: {}",
                untrusted(server.url("/api/v1/query"))
            )),
        "{got:?}"
    );
}

#[test]
fn a_certificate_for_another_host_is_refused_clearly() {
    let server = TlsServer::start(&["other.example"]);
    let dir = tempfile::tempdir().unwrap();
    project(
        dir.path(),
        &server,
        &format!(
            "[[service.web.verify]]\nname = \"health\"\nhttp = \"{}\"\nca_file = \"ca.pem\"\n",
            server.url("/health")
        ),
    );
    let out = verify(dir.path());
    let got = results(&out);
    assert_eq!(out.status.code(), Some(4), "{got:?}");
    assert!(
        got[0].2.starts_with(&format!(
            "the certificate of {} is not valid for this host",
            server.url("/health")
        )),
        "{got:?}"
    );
}

#[test]
fn an_unreadable_ca_file_is_a_config_error_naming_file_line_and_key() {
    let server = TlsServer::start(&["127.0.0.1"]);
    let dir = tempfile::tempdir().unwrap();
    project(
        dir.path(),
        &server,
        &format!(
            "[[service.web.verify]]\nhttp = \"{}\"\nca_file = \"nope.pem\"\n",
            server.url("/health")
        ),
    );
    let out = verify(dir.path());
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    let err = stderr(&out) + &stdout(&out);
    assert!(
        err.contains("ripcord.toml:6: service.web.verify[0].ca_file: CA file ")
            && err.contains("nope.pem: No such file"),
        "{err}"
    );
}
