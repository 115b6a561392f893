//! The upstream reader and renderer on known texts, the state file, commands, and
//! switches with `true` as the test and reload commands (real nginx is in
//! tests/nginx.rs).

use std::fs;
use std::path::Path;
use std::time::Duration;

use super::command::run_command;
use super::state::{State, parse_state, render_state};
use super::upstream::{fnv1a64, validate_switch};
use super::*;

const RUNBOOK: &str = "\
# managed by hand, except the upstream block
upstream app {
    server 127.0.0.1:8000;
    server 127.0.0.1:8001 backup;
    keepalive 16;
}

server {
    listen 80;
    server_name example.com;
    location / {
        proxy_pass http://app;
    }
}
";

const ONE: &str = "\
upstream app {
\tserver 127.0.0.1:8000 max_fails=3 fail_timeout=10s;   # blue
\tkeepalive 8;
}
";

fn sw(active: &str, standby: Option<&str>) -> Switch {
    Switch {
        active: active.into(),
        standby: standby.map(Into::into),
    }
}

fn read(text: &str) -> UpstreamBlock {
    read_upstream(text, "app").unwrap_or_else(|e| panic!("read failed: {e}"))
}

fn parse_err(text: &str) -> ParseError {
    match read_upstream(text, "app") {
        Err(SiteError::Parse { error, .. }) => error,
        other => panic!("expected a parse error, got {other:?}"),
    }
}

/// Lines of `a` and `b` that differ (same line count asserted).
fn changed_lines(a: &str, b: &str) -> Vec<(usize, String, String)> {
    let (la, lb): (Vec<&str>, Vec<&str>) = (a.split('\n').collect(), b.split('\n').collect());
    assert_eq!(la.len(), lb.len(), "line count changed");
    la.iter()
        .zip(&lb)
        .enumerate()
        .filter(|(_, (x, y))| x != y)
        .map(|(i, (x, y))| (i + 1, x.to_string(), y.to_string()))
        .collect()
}

#[test]
fn reads_runbook_layout() {
    let b = read(RUNBOOK);
    assert_eq!(b.layout, Layout::PrimaryBackup);
    assert_eq!(b.line, 2);
    assert_eq!(b.servers.len(), 2);
    assert_eq!(b.servers[0].address, "127.0.0.1:8000");
    assert_eq!(b.servers[0].line, 3);
    assert_eq!(b.servers[1].params, vec!["backup"]);
    assert_eq!(&RUNBOOK[b.span.clone()][..12], "upstream app");
    assert!(RUNBOOK[b.span.clone()].ends_with('}'));
    assert_eq!(
        &RUNBOOK[b.servers[1].span.clone()],
        "server 127.0.0.1:8001 backup;"
    );
    assert_eq!(b.to_switch(), sw("127.0.0.1:8000", Some("127.0.0.1:8001")));
    assert_eq!(
        b.servers_display(),
        "server 127.0.0.1:8000; server 127.0.0.1:8001 backup;"
    );
}

#[test]
fn round_trips_byte_for_byte() {
    for text in [
        RUNBOOK,
        ONE,
        &RUNBOOK.replace('\n', "\r\n"),
        &ONE.replace('\n', "\r\n"),
    ] {
        let b = read(text);
        assert_eq!(render(text, &b, &b.to_switch()), text);
        // Without a standby, PrimaryBackup keeps its backup when the active is unchanged.
        assert_eq!(render(text, &b, &sw(&b.primary().address, None)), text);
    }
}

#[test]
fn switch_rewrites_only_the_server_lines() {
    let b = read(RUNBOOK);
    let out = render(RUNBOOK, &b, &sw("127.0.0.1:8001", Some("127.0.0.1:8000")));
    assert_eq!(
        changed_lines(RUNBOOK, &out),
        vec![
            (
                3,
                "    server 127.0.0.1:8000;".into(),
                "    server 127.0.0.1:8001;".into()
            ),
            (
                4,
                "    server 127.0.0.1:8001 backup;".into(),
                "    server 127.0.0.1:8000 backup;".into()
            ),
        ]
    );
    // A standby left out means "the slot traffic leaves".
    assert_eq!(render(RUNBOOK, &b, &sw("127.0.0.1:8001", None)), out);
    let back = read(&out);
    assert_eq!(render(&out, &back, &sw("127.0.0.1:8000", None)), RUNBOOK);
}

#[test]
fn one_server_keeps_params_tabs_and_comments() {
    let b = read(ONE);
    assert_eq!(b.layout, Layout::OneServer);
    assert_eq!(b.servers[0].params, vec!["max_fails=3", "fail_timeout=10s"]);
    let out = render(ONE, &b, &sw("127.0.0.1:8001", Some("127.0.0.1:8000")));
    assert_eq!(
        changed_lines(ONE, &out),
        vec![(
            2,
            "\tserver 127.0.0.1:8000 max_fails=3 fail_timeout=10s;   # blue".into(),
            "\tserver 127.0.0.1:8001 max_fails=3 fail_timeout=10s;   # blue".into()
        )]
    );
    assert_eq!(read(&out).to_switch(), sw("127.0.0.1:8001", None));
}

#[test]
fn crlf_file_stays_crlf() {
    let text = RUNBOOK.replace('\n', "\r\n");
    let out = render(&text, &read(&text), &sw("127.0.0.1:8001", None));
    assert_eq!(
        out,
        render(RUNBOOK, &read(RUNBOOK), &sw("127.0.0.1:8001", None)).replace('\n', "\r\n")
    );
    assert_eq!(read(&text).servers[1].line, 4);
}

#[test]
fn other_blocks_comments_and_strings_are_untouched() {
    let text = "\
# upstream app { server 10.0.0.1:1; }
upstream other {
    server 127.0.0.1:8000;
    server 127.0.0.1:8001 backup;
}
map $http_upgrade $conn { default upgrade; '' close; }
server {
    listen 80;
    set $x \"${host}}{\";
    location ~ \"^/a{2}$\" { return 200 '}{ \\' # not a comment'; }
    location / { if ($x) { return 204; } proxy_pass http://app; }
}
upstream app {
    # server 10.9.9.9:1 backup;
    zone app 64k;
    server \"127.0.0.1:8000\" weight=5;  server 127.0.0.1:8001 backup;
}
upstream app2 { server 127.0.0.1:8000; }
";
    let b = read(text);
    assert_eq!(b.line, 13);
    assert_eq!(b.servers.len(), 2);
    assert_eq!(b.servers[0].line, 16);
    assert_eq!(b.servers[0].address, "127.0.0.1:8000");
    assert_eq!(
        &text[b.servers[0].address_span.clone()],
        "\"127.0.0.1:8000\""
    );
    // Unchanged addresses keep their quotes; the changed one is written bare.
    assert_eq!(render(text, &b, &b.to_switch()), text);
    let out = render(text, &b, &sw("127.0.0.1:8001", None));
    assert_eq!(
        changed_lines(text, &out),
        vec![(
            16,
            "    server \"127.0.0.1:8000\" weight=5;  server 127.0.0.1:8001 backup;".into(),
            "    server 127.0.0.1:8001 weight=5;  server 127.0.0.1:8000 backup;".into()
        )]
    );
    let other = read_upstream(text, "other").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        other.to_switch(),
        sw("127.0.0.1:8000", Some("127.0.0.1:8001"))
    );
    let other_out = read_upstream(&out, "other").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(other_out, other);
}

#[test]
fn backup_listed_first() {
    let text = "upstream app {\n  server b:1 backup;\n  server a:1;\n}\n";
    let b = read(text);
    assert_eq!(b.to_switch(), sw("a:1", Some("b:1")));
    let out = render(text, &b, &sw("b:1", None));
    assert_eq!(
        out,
        "upstream app {\n  server a:1 backup;\n  server b:1;\n}\n"
    );
}

#[test]
fn block_inside_http_is_found() {
    let text = "events {}\nhttp {\n  upstream app { server 127.0.0.1:1; }\n}\n";
    assert_eq!(read(text).line, 3);
}

#[test]
fn errors_name_the_line() {
    assert_eq!(
        parse_err("upstream other { server a:1; }\n"),
        ParseError::NotFound { name: "app".into() }
    );
    assert_eq!(
        parse_err(
            "server {\n listen 80;\n}\n\nupstream app {\n server a:1;\n\nserver {\n listen 81;\n}\n"
        ),
        ParseError::UnterminatedBlock { line: 5 }
    );
    assert_eq!(
        parse_err("server {\n return 200 \"oops;\n}\n"),
        ParseError::UnterminatedQuote { line: 2 }
    );
    assert_eq!(
        parse_err("upstream app {\n server a:1;\n}\n}\n"),
        ParseError::Unexpected { ch: '}', line: 4 }
    );
    assert_eq!(
        parse_err("upstream app {\n server a:1\n}\n"),
        ParseError::UnterminatedDirective { line: 2 }
    );
    assert_eq!(
        parse_err("upstream app {\n server a:1;\n}\nlisten 80"),
        ParseError::UnterminatedDirective { line: 4 }
    );
    assert_eq!(
        parse_err("upstream app { server a:1; }\nupstream app { server b:1; }\n"),
        ParseError::Duplicate {
            name: "app".into(),
            first: 1,
            second: 2
        }
    );
    assert_eq!(
        parse_err("upstream app {\n  server;\n}\n"),
        ParseError::ServerWithoutAddress { line: 2 }
    );
    assert!(matches!(
        parse_err("upstream app {\n server a:1;\n server b:1;\n}\n"),
        ParseError::UnsupportedLayout { line: 1, .. }
    ));
    assert!(matches!(
        parse_err("upstream app { keepalive 2; }"),
        ParseError::UnsupportedLayout { .. }
    ));
    assert_eq!(
        parse_err("upstream app { server \"a:1\"x; }"),
        ParseError::Unexpected { ch: 'x', line: 1 }
    );
}

#[test]
fn error_messages_read_well() {
    let e = read_upstream("upstream other { server a:1; }", "app")
        .map_err(SiteError::parse_in(Path::new(
            "/etc/nginx/sites-available/app",
        )))
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "upstream `app` not found in /etc/nginx/sites-available/app"
    );
    let e = read_upstream("\n\nupstream app {\n server a:1;\n", "app").unwrap_err();
    assert_eq!(e.to_string(), "unterminated block starting at line 3");
    let f = CommandFailure {
        stage: Stage::Test,
        site: "/s/app".into(),
        upstream: "app".into(),
        command: "nginx -t".into(),
        status: CommandStatus::Exit(1),
        output: "nginx: [emerg] boom".into(),
        restore: Restore::Restored,
        previous_passes: Some(true),
        retry: None,
    };
    assert_eq!(
        f.to_string(),
        "`nginx -t` failed (exit status 1) after switching upstream `app` in /s/app; the previous file was put back: nginx: [emerg] boom"
    );
}

#[test]
fn fingerprint_ignores_formatting_but_not_content() {
    let a = read("upstream app {\n  server a:1;\n  keepalive 2;\n}\n").fingerprint;
    let reformatted = read("upstream app { # hi\r\n\tserver   a:1 ;keepalive 2;}").fingerprint;
    let edited = read("upstream app {\n  server a:2;\n  keepalive 2;\n}\n").fingerprint;
    let quoted = read("upstream app {\n  server \"a:1\";\n  keepalive \"2\";\n}\n").fingerprint;
    assert_eq!(a, reformatted);
    assert_eq!(a, quoted);
    assert_ne!(a, edited);
    assert!(a.starts_with("fnv1a64:"));
    // Pinned so a change to the digest (which would flag every user's block as hand
    // edited after an upgrade) is deliberate.
    assert_eq!(fnv1a64(&[b"a"]), 0xaf63_dc4c_8601_ec8c);
}

#[test]
fn switch_validation() {
    let b = read(RUNBOOK);
    assert!(validate_switch("app", &b, &sw("127.0.0.1:8001", None)).is_ok());
    assert!(validate_switch("app", &b, &sw("unix:/run/app.sock", None)).is_ok());
    assert!(validate_switch("app", &b, &sw("[::1]:8001", None)).is_ok());
    for bad in ["", "a b", "a;", "a}", "a#", "$x", "\"a\""] {
        let e = validate_switch("app", &b, &sw(bad, Some("x:1"))).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("invalid switch for upstream `app`"),
            "{e}"
        );
    }
    let e = validate_switch("app", &b, &sw("x:1", Some("x:1"))).unwrap_err();
    assert!(
        e.to_string()
            .contains("both the active server and the backup"),
        "{e}"
    );
    // Switching to the current backup without a standby swaps, which is fine.
    assert!(validate_switch("app", &b, &sw("127.0.0.1:8001", None)).is_ok());
}

#[test]
fn state_round_trips() {
    let st = State {
        site: "/etc/nginx/sites-available/a \"b\"\\c".into(),
        upstream: "app".into(),
        fingerprint: "fnv1a64:0011".into(),
        servers: "server a:1;\tserver b:1 backup;".into(),
        pending: Some("fnv1a64:22".into()),
    };
    assert_eq!(parse_state(&render_state(&st)), Ok(st.clone()));
    let none = State {
        pending: None,
        ..st
    };
    assert_eq!(parse_state(&render_state(&none)), Ok(none));
    assert!(parse_state("{}").is_err());
    assert!(parse_state("not json").is_err());
    assert!(parse_state("{\"version\": 2}").is_err());
}

#[test]
fn argv_display_quotes_only_when_needed() {
    let argv: Vec<String> = ["nginx", "-g", "daemon off;", "it's"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(display_argv(&argv), r"nginx -g 'daemon off;' 'it'\''s'");
}

#[test]
fn commands_report_status_output_and_timeouts() {
    let argv = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        run_command(&argv(&["true"]), Duration::from_secs(5)).status,
        CommandStatus::Success
    );
    let ls = run_command(
        &argv(&["ls", "/nonexistent-ripcord"]),
        Duration::from_secs(5),
    );
    assert_eq!(ls.status, CommandStatus::Exit(2));
    assert!(ls.output.contains("nonexistent-ripcord"), "{}", ls.output);
    let slow = run_command(&argv(&["sleep", "5"]), Duration::from_millis(200));
    assert_eq!(
        slow.status,
        CommandStatus::TimedOut(Duration::from_millis(200))
    );
    assert!(slow.elapsed < Duration::from_secs(2));
    let missing = run_command(
        &argv(&["/nonexistent/ripcord-nginx"]),
        Duration::from_secs(5),
    );
    assert!(matches!(missing.status, CommandStatus::NotStarted(_)));
}

/// A site and config whose test and reload commands are `true`, for the state logic.
fn io_world(text: &str) -> (tempfile::TempDir, SiteConfig) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let site = dir.path().join("app");
    fs::write(&site, text).unwrap_or_else(|e| panic!("{e}"));
    let cfg = SiteConfig {
        test_command: vec!["true".into()],
        reload_command: vec!["true".into()],
        ..SiteConfig::new(&site, "app", dir.path().join("state/app.json"))
    };
    (dir, cfg)
}

#[test]
fn first_use_records_and_a_later_edit_is_refused() {
    let (_dir, cfg) = io_world(RUNBOOK);
    let r = switch(&cfg, &sw("127.0.0.1:8001", None)).unwrap_or_else(|e| panic!("{e}"));
    assert!(r.changed && !r.forced);
    let st = parse_state(&fs::read_to_string(&cfg.state_file).unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}"));
    let text = fs::read_to_string(&cfg.site).unwrap_or_default();
    assert_eq!(st.fingerprint, read(&text).fingerprint);
    assert_eq!(st.pending, None);
    assert_eq!(
        current(&cfg).unwrap_or_else(|e| panic!("{e}")),
        sw("127.0.0.1:8001", Some("127.0.0.1:8000"))
    );

    fs::write(&cfg.site, text.replace("keepalive 16", "keepalive 32")).unwrap_or_default();
    let e = switch(&cfg, &sw("127.0.0.1:8000", None)).unwrap_err();
    assert!(matches!(e, SiteError::HandEdited { line: 2, .. }), "{e}");
}

#[test]
fn a_write_interrupted_before_its_state_update_is_not_a_hand_edit() {
    let (_dir, cfg) = io_world(RUNBOOK);
    switch(&cfg, &sw("127.0.0.1:8000", None)).unwrap_or_else(|e| panic!("{e}"));
    // What a crash right after the rename leaves: the new block on disk, the state
    // still recording the old block with the new one pending.
    let new_text = render(RUNBOOK, &read(RUNBOOK), &sw("127.0.0.1:8001", None));
    let mut st = parse_state(&fs::read_to_string(&cfg.state_file).unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}"));
    st.pending = Some(read(&new_text).fingerprint);
    fs::write(&cfg.state_file, render_state(&st)).unwrap_or_default();
    fs::write(&cfg.site, &new_text).unwrap_or_default();
    let r = switch(&cfg, &sw("127.0.0.1:8001", None)).unwrap_or_else(|e| panic!("{e}"));
    assert!(!r.changed && !r.forced);
}

#[test]
fn unreadable_state_needs_force() {
    let (_dir, cfg) = io_world(RUNBOOK);
    fs::create_dir_all(cfg.state_file.parent().unwrap_or(Path::new("."))).unwrap_or_default();
    fs::write(&cfg.state_file, "{ not json").unwrap_or_default();
    let e = switch(&cfg, &sw("127.0.0.1:8001", None)).unwrap_err();
    assert!(matches!(e, SiteError::BadState { .. }), "{e}");
    assert_eq!(fs::read_to_string(&cfg.site).unwrap_or_default(), RUNBOOK);
    let r = switch_with(
        &cfg,
        &sw("127.0.0.1:8001", None),
        SwitchOptions { force: true },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(r.forced);
    assert!(switch(&cfg, &sw("127.0.0.1:8000", None)).is_ok());
}

#[test]
fn mode_is_kept_and_a_missing_site_is_named() {
    use std::os::unix::fs::PermissionsExt;
    let (_dir, cfg) = io_world(RUNBOOK);
    fs::set_permissions(&cfg.site, fs::Permissions::from_mode(0o640)).unwrap_or_default();
    switch(&cfg, &sw("127.0.0.1:8001", None)).unwrap_or_else(|e| panic!("{e}"));
    let mode = |p: &Path| {
        fs::metadata(p)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0)
    };
    assert_eq!(mode(&cfg.site), 0o640);
    assert_eq!(mode(&backup_path(&cfg.site)), 0o640);
    let missing = SiteConfig {
        site: cfg.site.with_file_name("nope"),
        ..cfg
    };
    let e = switch(&missing, &sw("127.0.0.1:8001", None)).unwrap_err();
    assert!(
        e.to_string().starts_with("cannot resolve site file "),
        "{e}"
    );
    assert!(e.to_string().contains("nope"), "{e}");
}

#[test]
fn lone_escapes_and_multibyte_text_do_not_panic() {
    for text in [
        "upstream app { server a:1; } # é\\",
        "server { return 200 \\é; }",
        "\\",
        "é\\é",
        "\"\\",
    ] {
        let _ = read_upstream(text, "app");
    }
}
