//! The follower on real files: appends, rotation, truncation, partial and malformed
//! lines.

use std::io::Write;

use super::*;
use crate::nginx_conf::log_format::tests::{custom, custom_line};

struct Running {
    rx: mpsc::Receiver<Vec<AccessRecord>>,
    stats: Arc<FollowStats>,
    task: tokio::task::JoinHandle<()>,
}

/// Starts a follower and waits until it has looked at the path, so that what a test
/// writes next is new to it.
async fn follow(path: &std::path::Path, at_end: bool) -> Running {
    let (tx, rx) = mpsc::channel(16);
    let stats = Arc::new(FollowStats::default());
    let follower = Follower::new(path, custom())
        .start_at_end(at_end)
        .poll_interval(Duration::from_millis(10))
        .rotate_wait(Duration::from_millis(300));
    let task = tokio::spawn(follower.run(tx, stats.clone()));
    let deadline = Instant::now() + Duration::from_secs(5);
    while stats.snapshot().state == FollowState::Starting {
        assert!(
            Instant::now() < deadline,
            "the follower never looked at the path"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Running { rx, stats, task }
}

impl Running {
    /// The statuses of the next `n` records, failing after a deadline.
    async fn statuses(&mut self, n: usize) -> Vec<u16> {
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while out.len() < n {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(batch)) => out.extend(batch.iter().map(|r| r.status)),
                _ => panic!(
                    "got {out:?}, wanted {n} records; {:?}",
                    self.stats.snapshot()
                ),
            }
        }
        assert_eq!(out.len(), n, "more records than expected: {out:?}");
        out
    }

    /// Nothing more arrives for a few polls.
    async fn quiet(&mut self) {
        tokio::time::sleep(Duration::from_millis(80)).await;
        if let Ok(batch) = self.rx.try_recv() {
            panic!("unexpected records: {batch:?}");
        }
    }
}

fn lines(statuses: &[u16]) -> String {
    statuses
        .iter()
        .map(|&s| custom_line(s, "0.010", "0.009", "127.0.0.1:8001") + "\n")
        .collect()
}

fn append(path: &std::path::Path, text: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open for append");
    f.write_all(text.as_bytes()).expect("append");
}

#[tokio::test]
async fn follows_appends_from_the_end() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("access.log");
    append(&path, &lines(&[201, 202]));
    let mut run = follow(&path, true).await;
    append(&path, &lines(&[200, 404]));
    append(&path, &lines(&[500]));
    assert_eq!(run.statuses(3).await, vec![200, 404, 500]);
    run.quiet().await;
    let stats = run.stats.snapshot();
    assert_eq!((stats.lines, stats.malformed), (3, 0));
    assert_eq!(stats.bytes, lines(&[200, 404, 500]).len() as u64);
}

#[tokio::test]
async fn reads_from_the_start_when_asked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("access.log");
    append(&path, &lines(&[201, 202]));
    let mut run = follow(&path, false).await;
    assert_eq!(run.statuses(2).await, vec![201, 202]);
    run.quiet().await;
}

#[tokio::test]
async fn survives_rotation_by_rename() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("access.log");
    let rotated = dir.path().join("access.log.1");
    append(&path, "");
    let mut run = follow(&path, true).await;
    append(&path, &lines(&[200, 201]));
    assert_eq!(run.statuses(2).await, vec![200, 201]);
    std::fs::rename(&path, &rotated).expect("rename");
    // nginx keeps writing to the renamed file until it reopens its logs.
    append(&rotated, &lines(&[502]));
    append(&path, &lines(&[203, 204]));
    let mut got = run.statuses(3).await;
    got.sort_unstable();
    assert_eq!(got, vec![203, 204, 502]);
    append(&rotated, &lines(&[503]));
    append(&path, &lines(&[205]));
    let mut got = run.statuses(2).await;
    got.sort_unstable();
    assert_eq!(got, vec![205, 503]);
    run.quiet().await;
    assert_eq!(run.stats.snapshot().rotations, 1);
}

#[tokio::test]
async fn survives_copytruncate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("access.log");
    append(&path, "");
    let mut run = follow(&path, true).await;
    append(&path, &lines(&[200, 201, 202]));
    assert_eq!(run.statuses(3).await, vec![200, 201, 202]);
    std::fs::copy(&path, dir.path().join("access.log.1")).expect("copy");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open")
        .set_len(0)
        .expect("truncate");
    append(&path, &lines(&[503]));
    assert_eq!(run.statuses(1).await, vec![503]);
    append(&path, &lines(&[504]));
    assert_eq!(run.statuses(1).await, vec![504]);
    run.quiet().await;
    let stats = run.stats.snapshot();
    assert_eq!(
        (stats.truncations, stats.rotations, stats.malformed),
        (1, 0, 0)
    );
}

#[tokio::test]
async fn waits_for_a_file_that_does_not_exist_yet() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("later.log");
    let mut run = follow(&path, true).await;
    assert_eq!(run.stats.snapshot().state, FollowState::Waiting);
    // Everything in a file that appears later is new, so it is read from the start.
    append(&path, &lines(&[200, 500]));
    assert_eq!(run.statuses(2).await, vec![200, 500]);
    assert_eq!(run.stats.snapshot().state, FollowState::Following);
    append(&path, &lines(&[404]));
    assert_eq!(run.statuses(1).await, vec![404]);
}

#[tokio::test]
async fn keeps_a_partial_line_until_it_is_complete() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("access.log");
    // The follower joins in the middle of a line: its end is not a malformed line.
    append(&path, &lines(&[200])[..40]);
    let mut run = follow(&path, true).await;
    append(&path, &lines(&[200])[40..]);
    let text = lines(&[201, 502]);
    let cut = text.len() - 30;
    append(&path, &text[..cut]);
    assert_eq!(run.statuses(1).await, vec![201]);
    run.quiet().await;
    append(&path, &text[cut..]);
    assert_eq!(run.statuses(1).await, vec![502]);
    assert_eq!(run.stats.snapshot().malformed, 0);
}

#[tokio::test]
async fn counts_and_samples_malformed_lines() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("access.log");
    append(&path, "");
    let mut run = follow(&path, true).await;
    append(&path, &format!("not an access log line\n{}", lines(&[200])));
    assert_eq!(run.statuses(1).await, vec![200]);
    let stats = run.stats.snapshot();
    assert_eq!((stats.lines, stats.malformed), (2, 1));
    assert_eq!(
        stats.last_malformed.as_deref(),
        Some("not an access log line")
    );
    append(&path, &"x".repeat(MAX_LINE + 10));
    append(&path, &format!("\n{}", lines(&[201])));
    assert_eq!(run.statuses(1).await, vec![201]);
    let stats = run.stats.snapshot();
    assert_eq!((stats.lines, stats.malformed), (4, 2));
    assert!(
        stats
            .last_malformed
            .unwrap_or_default()
            .contains("longer than")
    );
}

#[tokio::test]
async fn stops_when_the_receiver_is_gone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = follow(&dir.path().join("never.log"), true).await;
    drop(run.rx);
    tokio::time::timeout(Duration::from_secs(2), run.task)
        .await
        .expect("the follower stops")
        .expect("the follower does not panic");
}
