//! Access-log ingest throughput on one thread (DESIGN.md target: > 1 M lines/s), each
//! case measured against a baseline over the same bytes in the same run: counting the
//! newlines, which any line-based reader must at least do. Prints a table.
//!
//! Timestamps are random per line (nothing repeats: each one is read afresh) except in the
//! "in order" cases, where they run in order, 100 lines to a second, as in a real log.
//!
//! `cargo bench --bench nginx_log` (NGINX_LOG_BENCH_LINES overrides the 2 M lines).

use std::hint::black_box;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ripcord::signals::nginx_log::{FollowStats, Follower, LogFormat};

const CUSTOM: &str = r#"$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent" rt=$request_time uct="$upstream_connect_time" urt="$upstream_response_time" ua="$upstream_addr""#;
const RUNS: usize = 5;
const FOLLOW_LINES: usize = 1_000_000;

/// xorshift64*: deterministic, so every run parses the same lines.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

const AGENTS: [&str; 4] = [
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
    "curl/8.5.0",
    "Prometheus/2.42.0",
];
const PATHS: [&str; 5] = [
    "/",
    "/api/v1/items?page=2&sort=desc",
    "/static/app.3f9a1c.js",
    "/health",
    "/api/v1/orders/918273/lines",
];
const REFERERS: [&str; 3] = [
    "-",
    "https://shop.example/",
    "https://shop.example/cart?x=1",
];
const METHODS: [&str; 4] = ["GET", "GET", "GET", "POST"];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Where the lines' timestamps come from.
#[derive(Clone, Copy)]
enum Times {
    /// A random second of a random day for every line: nothing repeats, so the timestamp
    /// is parsed afresh every time (the worst case).
    Random,
    /// In order, this many lines to a second, as nginx writes them.
    InOrder(u64),
}

fn line(rng: &mut Rng, custom: bool, times: Times, index: u64, out: &mut Vec<u8>) {
    let status = match rng.below(100) {
        0..=84 => 200,
        85..=89 => 304,
        90..=94 => 404,
        95..=96 => 500,
        97..=98 => 502,
        _ => 503,
    };
    let secs = match times {
        Times::Random => rng.below(86_400),
        Times::InOrder(per_second) => index / per_second % 86_400,
    };
    let ip = [rng.below(256), rng.below(256), rng.below(256)];
    let (day, month) = match times {
        Times::Random => (1 + rng.below(28), rng.below(12)),
        Times::InOrder(_) => (26, 10),
    };
    write!(
        out,
        r#"10.{}.{}.{} - - [{:02}/{}/2026:{:02}:{:02}:{:02} +0000] "{} {} HTTP/1.1" {status} {} "{}" "{}""#,
        ip[0],
        ip[1],
        ip[2],
        day,
        MONTHS[month as usize],
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        rng.pick(&METHODS),
        rng.pick(&PATHS),
        rng.below(200_000),
        rng.pick(&REFERERS),
        rng.pick(&AGENTS),
    )
    .expect("writing to a Vec");
    if custom {
        let ms = rng.below(2_000);
        let (urt, ua) = match rng.below(100) {
            // nginx could not reach an upstream.
            0..=1 => ("-".to_owned(), "-".to_owned()),
            // Retried on the other slot.
            2..=4 => (
                format!("0.{:03}, {}.{:03}", rng.below(1000), ms / 1000, ms % 1000),
                "127.0.0.1:8000, 127.0.0.1:8001".to_owned(),
            ),
            n => (
                format!("{}.{:03}", ms / 1000, ms % 1000),
                format!("127.0.0.1:800{}", n % 2),
            ),
        };
        let rt = ms + rng.below(5);
        write!(
            out,
            r#" rt={}.{:03} uct="0.000" urt="{urt}" ua="{ua}""#,
            rt / 1000,
            rt % 1000
        )
        .expect("writing to a Vec");
    }
    out.push(b'\n');
}

fn lines(n: usize, custom: bool, times: Times) -> Vec<u8> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut buf = Vec::with_capacity(n * if custom { 300 } else { 240 });
    for i in 0..n {
        line(&mut rng, custom, times, i as u64, &mut buf);
    }
    buf
}

/// Median wall time of `RUNS` runs of `f` (and the best, kept to show how noisy the
/// machine was), with the count `f` returns.
fn median(mut f: impl FnMut() -> usize) -> (Timing, usize) {
    let mut times = Vec::with_capacity(RUNS);
    let mut count = 0;
    for _ in 0..RUNS {
        let start = Instant::now();
        count = black_box(f());
        times.push(start.elapsed());
    }
    times.sort_unstable();
    (
        Timing {
            median: times[RUNS / 2],
            best: times[0],
        },
        count,
    )
}

#[derive(Clone, Copy)]
struct Timing {
    median: Duration,
    best: Duration,
}

struct Row {
    case: String,
    lines: usize,
    bytes: usize,
    time: Timing,
    baseline: Timing,
}

fn print(rows: &[Row]) {
    println!(
        "{:<54} {:>11} {:>8} {:>7} {:>10} {:>13}",
        "case", "lines/s", "ns/line", "MB/s", "x baseline", "best lines/s"
    );
    for r in rows {
        let secs = r.time.median.as_secs_f64();
        println!(
            "{:<54} {:>11.0} {:>8.1} {:>7.0} {:>10.1} {:>13.0}",
            r.case,
            r.lines as f64 / secs,
            secs * 1e9 / r.lines as f64,
            r.bytes as f64 / secs / 1e6,
            secs / r.baseline.median.as_secs_f64(),
            r.lines as f64 / r.time.best.as_secs_f64(),
        );
    }
}

fn parse_cases(
    name: &str,
    format: &LogFormat,
    custom: bool,
    times: Times,
    n: usize,
    rows: &mut Vec<Row>,
) {
    let buf = lines(n, custom, times);
    let (baseline, count) = median(|| memchr::memchr_iter(b'\n', &buf).count());
    assert_eq!(count, n);
    let mut row = |case: &str, time: Timing| {
        rows.push(Row {
            case: format!("{name}: {case}"),
            lines: n,
            bytes: buf.len(),
            time,
            baseline,
        });
    };
    row("baseline, memchr newline count", baseline);
    let (time, count) = median(|| buf.iter().filter(|&&b| b == b'\n').count());
    assert_eq!(count, n);
    row("byte loop newline count", time);
    let (time, ok) = median(|| {
        let mut ok = 0;
        let mut start = 0;
        for nl in memchr::memchr_iter(b'\n', &buf) {
            if let Some(r) = format.parse_ref(&buf[start..nl]) {
                ok += usize::from(black_box(r).status >= 500);
                ok += 1;
            }
            start = nl + 1;
        }
        ok
    });
    assert!(ok >= n, "every generated line parses");
    row("parse_ref (borrowed, no allocation)", time);
    let (time, ok) = median(|| {
        let mut ok = 0;
        let mut start = 0;
        for nl in memchr::memchr_iter(b'\n', &buf) {
            if let Some(r) = format.parse_line(&buf[start..nl]) {
                ok += usize::from(black_box(r).upstream_addr.is_some());
                ok += 1;
            }
            start = nl + 1;
        }
        ok
    });
    assert!(ok >= n, "every generated line parses");
    row("parse_line (owned AccessRecord)", time);
}

fn follower_case(rows: &mut Vec<Row>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("access.log");
    let buf = lines(FOLLOW_LINES, true, Times::Random);
    std::fs::write(&path, &buf).expect("write the log");
    let (baseline, count) = median(|| {
        let bytes = std::fs::read(&path).expect("read the log");
        memchr::memchr_iter(b'\n', &bytes).count()
    });
    assert_eq!(count, FOLLOW_LINES);
    rows.push(Row {
        case: "follower: baseline, fs::read + newline count".into(),
        lines: FOLLOW_LINES,
        bytes: buf.len(),
        time: baseline,
        baseline,
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime");
    let (time, count) = median(|| {
        runtime.block_on(async {
            let (tx, mut rx) = tokio::sync::mpsc::channel(64);
            let stats = Arc::new(FollowStats::default());
            let follower =
                Follower::new(&path, LogFormat::new(CUSTOM).expect("compiles")).start_at_end(false);
            let task = tokio::spawn(follower.run(tx, stats));
            let mut got = 0;
            while got < FOLLOW_LINES {
                got += rx.recv().await.expect("the follower runs").len();
            }
            drop(rx);
            task.await.expect("the follower stops");
            got
        })
    });
    assert_eq!(count, FOLLOW_LINES);
    rows.push(Row {
        case: "follower: end to end, custom format".into(),
        lines: FOLLOW_LINES,
        bytes: buf.len(),
        time,
        baseline,
    });
}

fn main() {
    let n = std::env::var("NGINX_LOG_BENCH_LINES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000_000);
    println!(
        "nginx access-log ingest, one thread, {n} generated lines per case, median of {RUNS} runs"
    );
    let mut rows = Vec::new();
    parse_cases(
        "combined",
        &LogFormat::combined(),
        false,
        Times::Random,
        n,
        &mut rows,
    );
    let custom = LogFormat::new(CUSTOM).expect("the custom format compiles");
    parse_cases("custom", &custom, true, Times::Random, n, &mut rows);
    parse_cases(
        "custom, in order",
        &custom,
        true,
        Times::InOrder(100),
        n,
        &mut rows,
    );
    follower_case(&mut rows);
    print(&rows);
}
