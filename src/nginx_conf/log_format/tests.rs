//! The compiled format on known lines, formats from nginx configs, and the laws: every
//! valid line reads back, no input panics. `custom` and `custom_line` are shared with the
//! follower's tests.

use proptest::prelude::*;

use super::time::parse_time_local;
use super::*;

pub(crate) const CUSTOM: &str = r#"$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent" rt=$request_time uct="$upstream_connect_time" urt="$upstream_response_time" ua="$upstream_addr""#;

/// 2026-11-26T13:22:12Z, as `date -u -d ... +%s` prints it.
const AT: i64 = 1_795_699_332_000;

pub(crate) fn custom() -> LogFormat {
    LogFormat::new(CUSTOM).expect("the custom format compiles")
}

fn rec(
    status: u16,
    rt: Option<u64>,
    urt: Option<u64>,
    addr: Option<&str>,
    at_ms: Option<i64>,
) -> AccessRecord {
    AccessRecord {
        status,
        request_time_us: rt,
        upstream_time_us: urt,
        upstream_addr: addr.map(str::to_owned),
        at_ms,
        method: None,
        path: None,
    }
}

#[track_caller]
fn check(format: &LogFormat, line: &str, expected: Option<AccessRecord>) {
    assert_eq!(format.parse_line(line.as_bytes()), expected, "line: {line}");
}

pub(crate) fn custom_line(status: u16, rt: &str, urt: &str, ua: &str) -> String {
    format!(
        r#"10.0.0.9 - - [26/Nov/2026:13:22:12 +0000] "GET /items HTTP/1.1" {status} 12 "-" "curl/8.5.0" rt={rt} uct="0.001" urt="{urt}" ua="{ua}""#
    )
}

#[test]
fn combined_compiles_and_names_its_variables() {
    let f = LogFormat::combined();
    assert_eq!(f.as_str(), COMBINED);
    assert!(f.has_variable("time_local"));
    assert!(f.has_variable("STATUS"));
    assert!(!f.has_variable("upstream_addr"));
    assert_eq!(f.escape(), Escape::Default);
    let recommended = LogFormat::new(RECOMMENDED).unwrap();
    assert!(recommended.has_variable("upstream_addr"));
}

#[test]
fn format_compile_errors() {
    assert_eq!(
        LogFormat::new("$remote_addr [$time_local]").unwrap_err(),
        FormatError::NoStatus
    );
    assert_eq!(
        LogFormat::new("$status $ x").unwrap_err(),
        FormatError::EmptyVariable { at: 8 }
    );
    assert_eq!(
        LogFormat::new("$status ${x").unwrap_err(),
        FormatError::UnclosedBrace { at: 8 }
    );
    assert_eq!(
        LogFormat::new("$status$request_time").unwrap_err(),
        FormatError::Adjacent {
            first: "status".into(),
            second: "request_time".into()
        }
    );
    // Two skipped variables side by side are skipped as one.
    let f = LogFormat::new("$remote_addr$remote_user $status").expect("compiles");
    check(&f, "1.2.3.4- 404", Some(rec(404, None, None, None, None)));
    // `${name}` is the same variable as `$name`.
    let f = LogFormat::new("s=${status}ms").expect("compiles");
    check(&f, "s=200ms", Some(rec(200, None, None, None, None)));
}

#[test]
fn combined_lines() {
    let f = LogFormat::combined();
    let at = Some(AT);
    check(
        &f,
        r#"127.0.0.1 - - [26/Nov/2026:13:22:12 +0000] "GET /api/items?id=7 HTTP/1.1" 200 512 "-" "curl/8.5.0""#,
        Some(rec(200, None, None, None, at)),
    );
    // The same instant written with a +05:30 offset, and a trailing newline.
    check(
        &f,
        "::1 - bob [26/Nov/2026:18:52:12 +0530] \"POST /login HTTP/2.0\" 503 0 \"https://x/\" \"ua\"\n",
        Some(rec(503, None, None, None, at)),
    );
    // nginx's default escaping of quotes, and backslash-escaped quotes (escape=json,
    // or another writer) in the referer and the user agent.
    check(
        &f,
        r#"1.2.3.4 - - [26/Nov/2026:13:22:12 +0000] "GET /a\x22b HTTP/1.1" 404 9 "x\"y\" z" "Mozilla/5.0 \x22quoted\x22 \"and\" this""#,
        Some(rec(404, None, None, None, at)),
    );
    // A client that sent no request line.
    check(
        &f,
        r#"1.2.3.4 - - [26/Nov/2026:13:22:12 +0000] "-" 400 0 "-" "-""#,
        Some(rec(400, None, None, None, at)),
    );
    // Malformed: truncated, bad status, bad month, missing bracket, empty, day 31 of
    // November, extra text after the format.
    for bad in [
        r#"127.0.0.1 - - [26/Nov/2026:13:22:12 +0000] "GET / HTTP/1.1" 200 512 "-" "#,
        r#"127.0.0.1 - - [26/Nov/2026:13:22:12 +0000] "GET / HTTP/1.1" 2x0 512 "-" "-""#,
        r#"127.0.0.1 - - [26/Foo/2026:13:22:12 +0000] "GET / HTTP/1.1" 200 512 "-" "-""#,
        r#"127.0.0.1 - - 26/Nov/2026:13:22:12 +0000] "GET / HTTP/1.1" 200 512 "-" "-""#,
        "",
        r#"127.0.0.1 - - [31/Nov/2026:13:22:12 +0000] "GET / HTTP/1.1" 200 512 "-" "-""#,
        r#"127.0.0.1 - - [26/Nov/2026:13:22:12 +0000] "GET / HTTP/1.1" 200 512 "-" "-" x"#,
    ] {
        check(&f, bad, None);
    }
}

#[test]
fn request_line_is_kept_only_when_asked() {
    let line =
        br#"1.2.3.4 - - [26/Nov/2026:13:22:12 +0000] "DELETE /items/7?x=1 HTTP/1.1" 204 0 "-" "-""#;
    let f = LogFormat::combined();
    let r = f.parse_ref(line).expect("parses");
    assert_eq!(
        (r.method(), r.path()),
        (Some("DELETE"), Some("/items/7?x=1"))
    );
    assert_eq!(f.parse_line(line).expect("parses").method, None);
    let f = LogFormat::combined().with_request(true);
    let r = f.parse_line(line).expect("parses");
    assert_eq!(r.method.as_deref(), Some("DELETE"));
    assert_eq!(r.path.as_deref(), Some("/items/7?x=1"));
}

#[test]
fn custom_lines() {
    let f = custom();
    let at = Some(AT);
    let cases: [(&str, &str, &str, Option<AccessRecord>); 10] = [
        (
            "0.123",
            "0.120",
            "127.0.0.1:8001",
            Some(rec(
                200,
                Some(123_000),
                Some(120_000),
                Some("127.0.0.1:8001"),
                at,
            )),
        ),
        // nginx never reached an upstream.
        ("0.000", "-", "-", Some(rec(200, Some(0), None, None, at))),
        // Retried: the last upstream answered.
        (
            "0.622",
            "0.500, 0.120",
            "127.0.0.1:8000, 127.0.0.1:8001",
            Some(rec(
                200,
                Some(622_000),
                Some(120_000),
                Some("127.0.0.1:8001"),
                at,
            )),
        ),
        // An internal redirect to another upstream group.
        (
            "0.060",
            "0.002 : 0.050",
            "127.0.0.1:8000 : 127.0.0.1:8001",
            Some(rec(
                200,
                Some(60_000),
                Some(50_000),
                Some("127.0.0.1:8001"),
                at,
            )),
        ),
        (
            "1.5",
            "1.499",
            "[::1]:8001",
            Some(rec(
                200,
                Some(1_500_000),
                Some(1_499_000),
                Some("[::1]:8001"),
                at,
            )),
        ),
        (
            "0.010",
            "0.004, 0.005",
            "[::1]:8000, [::1]:8001",
            Some(rec(200, Some(10_000), Some(5_000), Some("[::1]:8001"), at)),
        ),
        (
            "0.010",
            "0.005",
            "unix:/run/app.sock",
            Some(rec(
                200,
                Some(10_000),
                Some(5_000),
                Some("unix:/run/app.sock"),
                at,
            )),
        ),
        // The last try failed to connect.
        (
            "3.001",
            "3.000, -",
            "10.0.0.1:80, 10.0.0.2:80",
            Some(rec(200, Some(3_001_000), None, Some("10.0.0.2:80"), at)),
        ),
        ("abc", "0.1", "a:1", None),
        ("0.1", "0.1.2", "a:1", None),
    ];
    for (rt, urt, ua, expected) in cases {
        check(&f, &custom_line(200, rt, urt, ua), expected);
    }
    check(
        &f,
        &custom_line(502, "0.001", "-", "app"),
        Some(rec(502, Some(1_000), None, Some("app"), at)),
    );
}

#[test]
fn variables_are_found_wherever_they_sit() {
    let f = LogFormat::new("$msec $upstream_addr $status $request_time").expect("compiles");
    check(
        &f,
        "1795699332.123 10.0.0.2:80 503 1.5",
        Some(rec(
            503,
            Some(1_500_000),
            None,
            Some("10.0.0.2:80"),
            Some(AT + 123),
        )),
    );
    let f = LogFormat::new("[$time_iso8601] $status").expect("compiles");
    check(
        &f,
        "[2026-11-26T18:52:12+05:30] 200",
        Some(rec(200, None, None, None, Some(AT))),
    );
    check(
        &f,
        "[2026-11-26T13:22:12Z] 200",
        Some(rec(200, None, None, None, Some(AT))),
    );
    check(
        &f,
        "[2026-11-26T13:22:12+0000] 200",
        Some(rec(200, None, None, None, Some(AT))),
    );
    check(&f, "[2026-13-26T13:22:12+00:00] 200", None);
    // `$msec` is the most precise clock, whichever comes first.
    let f = LogFormat::new("$msec [$time_local] $status").expect("compiles");
    check(
        &f,
        "1795699332.999 [26/Nov/2026:13:22:12 +0000] 200",
        Some(rec(200, None, None, None, Some(AT + 999))),
    );
}

#[test]
fn known_dates() {
    let at = |s: &str| parse_time_local(s.as_bytes());
    assert_eq!(at("01/Jan/1970:00:00:00 +0000"), Some(0));
    assert_eq!(at("31/Dec/1999:23:59:59 -0800"), Some(946_713_599_000));
    assert_eq!(at("29/Feb/2024:00:00:00 +0000"), Some(1_709_164_800_000));
    assert_eq!(at("29/Feb/2023:00:00:00 +0000"), None);
    assert_eq!(at("29/Feb/2000:00:00:00 +0000"), Some(951_782_400_000));
    assert_eq!(at("29/Feb/1900:00:00:00 +0000"), None);
    assert_eq!(at("31/Dec/1969:23:59:59 +0000"), Some(-1000));
}

#[test]
fn json_and_unescaped_formats() {
    let f = LogFormat::with_escape(
        r#"{"status":$status,"agent":"$http_user_agent","up":"$upstream_addr","rt":$request_time}"#,
        Escape::Json,
    )
    .expect("compiles");
    check(
        &f,
        r#"{"status":201,"agent":"a \"b\" c\\","up":"[::1]:8001","rt":0.004}"#,
        Some(rec(201, Some(4_000), None, Some("[::1]:8001"), None)),
    );
    // With escape=none a value may hold its own delimiter; the match backtracks.
    let f = LogFormat::with_escape(COMBINED, Escape::None).expect("compiles");
    check(
        &f,
        r#"1.2.3.4 - - [26/Nov/2026:13:22:12 +0000] "GET /a" b HTTP/1.1" 404 9 "x" "y""#,
        Some(rec(404, None, None, None, Some(AT))),
    );
}

const CONF: &str = r#"user www-data;
# log_format main '$nothing';
http {
    log_format main '$remote_addr - $remote_user [$time_local] "$request" '
                    '$status $body_bytes_sent "$http_referer" '   # why: the agent
                    "\"$http_user_agent\" rt=$request_time uct=\"$upstream_connect_time\""
                    ' urt="$upstream_response_time" ua="$upstream_addr"';
    log_format json escape=json
        '{"s":$status,"a":"$upstream_addr"}';
    access_log /var/log/nginx/access.log main;
    server {
        location / { return 200 "x;#{}'"; }
        set $x ${host}a;
    }
}
"#;

#[test]
fn formats_from_an_nginx_conf() {
    let f = LogFormat::from_nginx_conf(CONF, "main").expect("main is declared");
    assert_eq!(f.as_str(), CUSTOM);
    check(
        &f,
        &custom_line(500, "0.2", "0.1", "127.0.0.1:8001"),
        Some(rec(
            500,
            Some(200_000),
            Some(100_000),
            Some("127.0.0.1:8001"),
            Some(AT),
        )),
    );
    let f = LogFormat::from_nginx_conf(CONF, "json").expect("json is declared");
    assert_eq!(f.escape(), Escape::Json);
    check(
        &f,
        r#"{"s":200,"a":"10.0.0.1:80"}"#,
        Some(rec(200, None, None, Some("10.0.0.1:80"), None)),
    );
    let f = LogFormat::from_nginx_conf(CONF, "combined").expect("nginx predefines it");
    assert_eq!(f.as_str(), COMBINED);
    let err = LogFormat::from_nginx_conf(CONF, "timed").unwrap_err();
    assert_eq!(
        err.to_string(),
        "no log_format named `timed` in the nginx config (it declares `main` at line 4, `json` at line 8)"
    );
}

#[test]
fn conf_errors_name_the_line() {
    let cases = [
        (
            "http {\n    log_format ;\n}\n",
            FormatError::MissingName { line: 2 },
        ),
        (
            "http {\n  # it's a comment\n  log_format main '$status\n    $x;\n}\n",
            FormatError::UnterminatedQuote {
                line: 3,
                quote: '\'',
            },
        ),
        (
            "\n\nlog_format main \"$status;\n",
            FormatError::UnterminatedQuote {
                line: 3,
                quote: '"',
            },
        ),
        (
            "log_format main;\n",
            FormatError::MissingFormat {
                line: 1,
                name: "main".into(),
            },
        ),
        (
            "http {\n\nlog_format main\n  '$status'\n",
            FormatError::Unterminated {
                line: 3,
                name: "main".into(),
            },
        ),
        (
            "log_format main escape=xml '$status';",
            FormatError::UnknownEscape {
                line: 1,
                name: "main".into(),
                value: "xml".into(),
            },
        ),
        (
            "events {}\nhttp {\n  log_format main '$remote_addr';\n}",
            FormatError::InDirective {
                line: 3,
                name: "main".into(),
                error: Box::new(FormatError::NoStatus),
            },
        ),
    ];
    for (text, expected) in cases {
        assert_eq!(
            LogFormat::from_nginx_conf(text, "main").unwrap_err(),
            expected,
            "{text}"
        );
    }
    assert_eq!(
        FormatError::InDirective {
            line: 3,
            name: "main".into(),
            error: Box::new(FormatError::NoStatus),
        }
        .to_string(),
        "line 3: log_format `main`: the format has no $status, so requests cannot be classified"
    );
}

#[test]
fn setting_is_a_format_or_a_name() {
    let f = LogFormat::from_setting(Some("$status $request_time"), None).expect("a format");
    assert_eq!(f.as_str(), "$status $request_time");
    let f = LogFormat::from_setting(Some("main"), Some(CONF)).expect("a name");
    assert_eq!(f.as_str(), CUSTOM);
    let f = LogFormat::from_setting(None, None).expect("the default");
    assert_eq!(f.as_str(), COMBINED);
    assert!(matches!(
        LogFormat::from_setting(Some("main"), None),
        Err(FormatError::NotFound { .. })
    ));
}

// ---- laws ----

/// `secs` as nginx writes it in `$time_local` at `offset_min` minutes east of UTC.
fn time_local(secs: i64, offset_min: i64) -> String {
    let offset = i32::try_from(offset_min * 60)
        .ok()
        .and_then(|s| jiff::tz::Offset::from_seconds(s).ok())
        .expect("a valid offset");
    let at = jiff::Timestamp::from_second(secs).expect("a valid time");
    at.to_zoned(jiff::tz::TimeZone::fixed(offset))
        .strftime("%d/%b/%Y:%H:%M:%S %z")
        .to_string()
}

fn addr() -> impl Strategy<Value = String> {
    prop_oneof![
        (any::<[u8; 4]>(), 1u16..)
            .prop_map(|(ip, port)| format!("{}.{}.{}.{}:{port}", ip[0], ip[1], ip[2], ip[3])),
        (any::<u16>(), 1u16..).prop_map(|(h, port)| format!("[::{h:x}]:{port}")),
        "[a-z]{1,8}".prop_map(|s| format!("unix:/run/{s}.sock")),
    ]
}

prop_compose! {
    fn valid_line()(
        status in 100u16..600,
        secs in 0i64..4_102_444_800,
        offset in -720i64..=840,
        rt_ms in 0u64..100_000,
        tries in prop::collection::vec((proptest::option::of(0u64..60_000), addr()), 1..4),
        agent in "[ -~]{0,40}",
        path in "/[!-~]{0,30}",
    ) -> (String, AccessRecord) {
        // nginx escapes `"` and `\` in values.
        let esc = |s: &str| s.replace('\\', "\\x5C").replace('"', "\\x22");
        let times: Vec<String> = tries
            .iter()
            .map(|(t, _)| t.map_or("-".to_owned(), |ms| format!("{}.{:03}", ms / 1000, ms % 1000)))
            .collect();
        let addrs: Vec<&str> = tries.iter().map(|(_, a)| a.as_str()).collect();
        let line = format!(
            r#"10.1.2.3 - - [{}] "GET {} HTTP/1.1" {status} 5 "-" "{}" rt={}.{:03} uct="0.000" urt="{}" ua="{}""#,
            time_local(secs, offset),
            esc(&path),
            esc(&agent),
            rt_ms / 1000,
            rt_ms % 1000,
            times.join(", "),
            addrs.join(", "),
        );
        let last = tries.last().expect("at least one try");
        let expected = rec(
            status,
            Some(rt_ms * 1000),
            last.0.map(|ms| ms * 1000),
            Some(&last.1),
            Some(secs * 1000),
        );
        (line, expected)
    }
}

fn formats() -> Vec<LogFormat> {
    let mut all = vec![LogFormat::combined(), custom()];
    for (text, escape) in [
        (COMBINED, Escape::None),
        (
            r#"{"s":$status,"a":"$upstream_addr","t":"$time_iso8601"}"#,
            Escape::Json,
        ),
        ("$msec $upstream_response_time $status", Escape::Default),
    ] {
        all.push(LogFormat::with_escape(text, escape).expect("compiles"));
    }
    all
}

proptest! {
    #[test]
    fn valid_lines_read_back((line, expected) in valid_line()) {
        prop_assert_eq!(custom().parse_line(line.as_bytes()), Some(expected));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        for f in formats() {
            let _ = f.parse_line(&bytes);
        }
    }

    #[test]
    fn mutated_lines_never_panic(
        (line, _) in valid_line(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), 0u8..3, any::<u8>()), 1..8),
    ) {
        let mut bytes = line.into_bytes();
        for (at, op, byte) in edits {
            let i = at.index(bytes.len() + 1);
            match op {
                0 => bytes.insert(i, byte),
                1 if i < bytes.len() => { bytes.remove(i); }
                _ if i < bytes.len() => bytes[i] = byte,
                _ => {}
            }
        }
        for f in formats() {
            let _ = f.parse_line(&bytes);
        }
    }

    #[test]
    fn format_text_never_panics(text in "[$ {}a-z_'\"\\\\#;\n]{0,80}", name in "[a-z]{0,5}") {
        let _ = LogFormat::new(&text);
        let _ = LogFormat::from_nginx_conf(&text, &name);
        let _ = LogFormat::from_nginx_conf(&format!("log_format {name} {text}"), &name);
    }
}
