//! Running the test and reload commands: argv vectors, never a shell, with a timeout and
//! what they printed kept for the error.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use super::CommandStatus;

/// How much of a command's stdout and of its stderr is kept for the error message.
const OUTPUT_CAP: usize = 64 * 1024;

/// How long to wait for a command's pipes to close after it exited. A grandchild that
/// inherited them could hold them open forever; its output is not worth a hung switch.
const OUTPUT_GRACE: Duration = Duration::from_millis(500);

pub(super) struct Outcome {
    pub(super) status: CommandStatus,
    pub(super) output: String,
    pub(super) elapsed: Duration,
}

/// An argv joined for people to read (and paste); it is never given to a shell.
pub fn display_argv(argv: &[String]) -> String {
    let words: Vec<String> = argv
        .iter()
        .map(|a| {
            let plain = !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@+%".contains(c));
            if plain {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect();
    words.join(" ")
}

fn drain(mut pipe: impl Read + Send + 'static, tag: u8, tx: mpsc::Sender<(u8, Vec<u8>)>) {
    thread::spawn(move || {
        let mut kept = Vec::new();
        let mut buf = [0u8; 8192];
        // Keep reading past the cap so the child never blocks on a full pipe.
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            let room = OUTPUT_CAP.saturating_sub(kept.len());
            kept.extend_from_slice(&buf[..n.min(room)]);
        }
        let _ = tx.send((tag, kept));
    });
}

/// Runs `argv` (no shell), waits at most `timeout`, and returns how it ended with its
/// stderr and stdout.
pub(super) fn run_command(argv: &[String], timeout: Duration) -> Outcome {
    let start = Instant::now();
    let mut child = match Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            return Outcome {
                status: CommandStatus::NotStarted(e.to_string()),
                output: String::new(),
                elapsed: start.elapsed(),
            };
        }
    };
    let (tx, rx) = mpsc::channel();
    let mut pipes = 0;
    if let Some(out) = child.stdout.take() {
        drain(out, 1, tx.clone());
        pipes += 1;
    }
    if let Some(err) = child.stderr.take() {
        drain(err, 0, tx.clone());
        pipes += 1;
    }
    drop(tx);

    // Polling with a short, growing pause: `nginx -t` takes milliseconds and a rollback
    // should not wait longer than it must.
    let mut pause = Duration::from_millis(1);
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => {
                break match (st.code(), st.signal()) {
                    (Some(0), _) => CommandStatus::Success,
                    (Some(code), _) => CommandStatus::Exit(code),
                    (None, Some(sig)) => CommandStatus::Signal(sig),
                    (None, None) => CommandStatus::Exit(-1),
                };
            }
            Ok(None) => {}
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                break CommandStatus::NotStarted(format!("cannot wait for it: {e}"));
            }
        }
        let elapsed = start.elapsed();
        if elapsed >= timeout {
            let _ = child.kill();
            let _ = child.wait();
            break CommandStatus::TimedOut(timeout);
        }
        thread::sleep(pause.min(timeout - elapsed));
        pause = (pause * 2).min(Duration::from_millis(20));
    };
    let elapsed = start.elapsed();

    let mut streams: BTreeMap<u8, Vec<u8>> = BTreeMap::new();
    let grace = Instant::now() + OUTPUT_GRACE;
    for _ in 0..pipes {
        match rx.recv_timeout(grace.saturating_duration_since(Instant::now())) {
            Ok((tag, bytes)) => {
                streams.insert(tag, bytes);
            }
            Err(_) => break,
        }
    }
    // stderr (tag 0) first: that is where nginx explains itself.
    let output: Vec<String> = streams
        .values()
        .map(|b| String::from_utf8_lossy(b).trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    Outcome {
        status,
        output: output.join("\n"),
        elapsed,
    }
}
