//! Runs one fuzz target: a proptest runner with a fixed seed and a case count from the
//! environment, each case in its own thread with a deadline (a parser that loops forever
//! fails the target instead of hanging the binary), the inputs counted and printed.
//!
//! `RIPCORD_FUZZ_CASES` (default [`DEFAULT_CASES`]) is the number of inputs per target,
//! `RIPCORD_FUZZ_SEED` (a u64, default [`DEFAULT_SEED`]) the seed every target derives its
//! own from, `RIPCORD_FUZZ_DEADLINE_MS` (see [`deadline`]) the most one input may take, and
//! `RIPCORD_FUZZ_REPORT` a file each target appends one tab-separated line to (target,
//! inputs, seconds, failures) for `scripts/fuzz`'s table.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};

/// Inputs per target in CI: the whole binary stays well under a minute in a debug build
/// on two cores.
pub const DEFAULT_CASES: u32 = 1000;

/// "ripcord!" in ASCII.
pub const DEFAULT_SEED: u64 = 0x7269_7063_6f72_6421;

pub fn cases() -> u32 {
    env_number("RIPCORD_FUZZ_CASES").map_or(DEFAULT_CASES, |n| n.clamp(1, u32::MAX as u64) as u32)
}

pub fn seed() -> u64 {
    env_number("RIPCORD_FUZZ_SEED").unwrap_or(DEFAULT_SEED)
}

/// The most one input may take: `RIPCORD_FUZZ_DEADLINE_MS` (`scripts/fuzz` sets 2 s for
/// its optimised build), else 10 s: CI's test build compiles the C of tree-sitter's
/// parsers without optimisation, and their error recovery on 20 KB of mangled Ruby
/// takes about 3 s there.
pub fn deadline() -> Duration {
    Duration::from_millis(env_number("RIPCORD_FUZZ_DEADLINE_MS").unwrap_or(10_000))
}

fn env_number(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    match text.trim().parse() {
        Ok(n) => Some(n),
        Err(e) => panic!("{name}={text:?} is not a whole number: {e}"),
    }
}

/// The target's own seed: the run's seed mixed with its name, so that targets draw
/// different inputs and adding one does not change the others'.
fn target_seed(name: &str) -> [u8; 32] {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed();
    let mut out = [0u8; 32];
    for (i, chunk) in out.chunks_mut(8).enumerate() {
        for b in name.bytes().chain([i as u8]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        chunk.copy_from_slice(&h.to_le_bytes());
    }
    out
}

/// Runs `f` on its own thread and waits at most `limit`: `Err` says it panicked (with the
/// panic's message) or did not return in time. A thread that hangs is left behind; the
/// target fails, so the binary ends anyway.
pub fn within<T: Send + 'static>(
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    let (tx, rx) = mpsc::channel();
    let started = Instant::now();
    let handle = std::thread::Builder::new()
        .name("fuzz-case".into())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .map_err(|e| format!("cannot start a thread: {e}"))?;
    match rx.recv_timeout(limit) {
        Ok(v) => {
            let _ = handle.join();
            Ok(v)
        }
        Err(mpsc::RecvTimeoutError::Timeout) => Err(format!(
            "no answer within {} ms (a hang)",
            limit.as_millis()
        )),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            let why = match handle.join() {
                Err(payload) => payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "a panic without a message".to_string()),
                Ok(()) => "the thread ended without an answer".to_string(),
            };
            Err(format!(
                "panicked after {} ms: {why}",
                started.elapsed().as_millis()
            ))
        }
    }
}

/// Runs `property` on `cases()` inputs drawn from `strategy`, prints how many ran, and
/// panics with the smallest failing input (after shrinking) and the replay command.
pub fn run<S>(name: &str, strategy: S, property: impl Fn(S::Value) -> Result<(), String>)
where
    S: Strategy,
    S::Value: std::fmt::Debug,
{
    run_n(name, cases(), strategy, property);
}

/// [`run`] with a count of its own (for targets whose inputs cost a connection each).
pub fn run_n<S>(
    name: &str,
    cases: u32,
    strategy: S,
    property: impl Fn(S::Value) -> Result<(), String>,
) where
    S: Strategy,
    S::Value: std::fmt::Debug,
{
    let config = Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 512,
        // Each input is checked against a deadline of its own; proptest's total time
        // limit would only make the count depend on the machine.
        ..Config::default()
    };
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &target_seed(name));
    let mut runner = TestRunner::new_with_rng(config, rng);
    let ran = AtomicU64::new(0);
    let started = Instant::now();
    let result = runner.run(&strategy, |input| {
        ran.fetch_add(1, Ordering::Relaxed);
        property(input).map_err(TestCaseError::fail)
    });
    let secs = started.elapsed().as_secs_f64();
    let inputs = ran.load(Ordering::Relaxed);
    let failed = result.is_err();
    // Written to stderr directly, past the test harness's capture: CI's log shows the
    // count of every target, passing or not.
    let _ = writeln!(
        std::io::stderr(),
        "fuzz {name}: {inputs} inputs in {secs:.1} s, {} (seed {}, {} cases asked)",
        if failed { "FAILED" } else { "no failure" },
        seed(),
        cases,
    );
    report(name, inputs, secs, u32::from(failed));
    match result {
        Ok(()) => {}
        Err(TestError::Fail(why, input)) => panic!(
            "fuzz target {name} failed: {why}\nsmallest input: {}\nreplay: \
             RIPCORD_FUZZ_SEED={} RIPCORD_FUZZ_CASES={cases} cargo test --test fuzz {name}",
            shown(&input),
            seed()
        ),
        Err(TestError::Abort(why)) => panic!("fuzz target {name} aborted: {why}"),
    }
}

/// An input as Rust would write it, its middle left out past 4000 characters.
pub fn shown(input: &impl std::fmt::Debug) -> String {
    let full = format!("{input:?}");
    let chars: Vec<char> = full.chars().collect();
    if chars.len() <= 4000 {
        return full;
    }
    let head: String = chars[..2000].iter().collect();
    let tail: String = chars[chars.len() - 2000..].iter().collect();
    format!(
        "{head} ... ({} characters left out) ... {tail}",
        chars.len() - 4000
    )
}

fn report(name: &str, inputs: u64, secs: f64, failures: u32) {
    let Ok(path) = std::env::var("RIPCORD_FUZZ_REPORT") else {
        return;
    };
    let line = format!("{name}\t{inputs}\t{secs:.1}\t{failures}\n");
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        panic!("cannot append to RIPCORD_FUZZ_REPORT {path}: {e}");
    }
}

/// 1 + the number of `\n` in `text`: the highest line number a parser may name.
pub fn line_count(text: &str) -> usize {
    1 + text.bytes().filter(|&b| b == b'\n').count()
}
