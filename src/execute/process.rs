//! Runtime `process`: a release is a child process started from an argument vector
//! (never a shell string) with `{port}` and `{version}` substituted, in its own process
//! group, its stdout and stderr appended to a log file under the state dir.
//!
//! Stopping sends SIGTERM to the whole group, waits, then SIGKILL. A process left behind
//! by a crashed watcher is recognised by its pid *and* its start time before it is
//! killed, so a recycled pid is never touched.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::sync::watch;

use crate::config::Slot;
use crate::os::cgroup::Cgroup;
use crate::os::{environ_var, start_ticks};

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("cannot open log file {}: {source}", path.display())]
    Log {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start `{program}`: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("the release has no command to run (an empty argv)")]
    NoCommand,
}

/// What to start.
#[derive(Debug, Clone)]
pub struct StartSpec {
    pub service: String,
    pub release_id: i64,
    pub version: String,
    pub slot: Slot,
    pub addr: SocketAddr,
    /// The argv template as recorded in the ledger.
    pub argv: Vec<String>,
    /// Where relative program paths are resolved and the process runs.
    pub cwd: Option<PathBuf>,
    pub env: BTreeMap<String, String>,
    pub log_path: PathBuf,
    /// The watcher's state dir, given to the release as `RIPCORD_STATE_DIR`: with
    /// `RIPCORD_SERVICE` it tells a later watcher the process is one of its own even
    /// when no slot records it ([`strays`]).
    pub state_dir: PathBuf,
    /// `memory_limit_mb`: a cgroup of its own with this limit, where the host allows.
    pub memory_limit_mb: Option<u64>,
}

/// A started release. Its exit is observed by a task; `exited()` reports it.
#[derive(Debug)]
pub struct RunningProcess {
    pub pid: u32,
    /// Start time in clock ticks since boot (from /proc), recorded for reconciliation.
    pub pid_start: Option<u64>,
    pub log_path: PathBuf,
    exit: watch::Receiver<Option<Exited>>,
    /// Set when ripcord asked it to stop: its exit is then no crash.
    stopping: AtomicBool,
    /// Set when ripcord killed it for exceeding the memory limit.
    oom_killed: AtomicBool,
    /// Set when the kernel killed it in its cgroup for running out of memory.
    kernel_oom: Arc<AtomicBool>,
    /// Who enforces `memory_limit_mb`, in words (`None`: no limit).
    pub memory_limit: Option<String>,
    /// Whether the kernel enforces it (a cgroup): ripcord's RSS watchdog then stands
    /// down, as RSS counts shared file pages the kernel charges elsewhere.
    pub kernel_limit: bool,
}

/// How a release's process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exited {
    /// A child of this watcher: its exit status.
    Status(ExitStatus),
    /// Adopted from an earlier watcher: not this watcher's child, so its status is not
    /// ours to read; only that it is gone.
    Gone,
}

impl std::fmt::Display for Exited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exited::Status(s) => s.fmt(f),
            Exited::Gone => f.write_str(
                "exit status unknown: it was adopted from an earlier watcher, so it is not this watcher's child",
            ),
        }
    }
}

/// How often an adopted process is checked for having exited.
const ADOPTED_POLL: Duration = Duration::from_millis(100);

/// `{port}` and `{version}` in every argument.
pub fn substitute(argv: &[String], port: u16, version: &str) -> Vec<String> {
    argv.iter()
        .map(|a| {
            a.replace("{port}", &port.to_string())
                .replace("{version}", version)
        })
        .collect()
}

/// `{config_files}` in every argument: the directory of the release's config file copies.
pub fn substitute_config_files(argv: &[String], dir: &Path) -> Vec<String> {
    let dir = dir.display().to_string();
    argv.iter()
        .map(|a| a.replace("{config_files}", &dir))
        .collect()
}

/// Starts a release and returns once the process exists (not once it is healthy).
pub fn start(spec: &StartSpec) -> Result<RunningProcess, ProcessError> {
    let argv = substitute(&spec.argv, spec.addr.port(), &spec.version);
    let Some(first) = argv.first() else {
        return Err(ProcessError::NoCommand);
    };
    let mut program = PathBuf::from(first);
    // A relative path with a slash means "relative to where the deploy ran", not to the
    // watcher's directory.
    if let Some(cwd) = &spec.cwd
        && program.is_relative()
        && argv[0].contains('/')
    {
        program = cwd.join(program);
    }
    if let Some(dir) = spec.log_path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| ProcessError::Log {
            path: spec.log_path.clone(),
            source,
        })?;
    }
    // Owner-only: an app's output may hold what its environment does.
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&spec.log_path)
        .map_err(|source| ProcessError::Log {
            path: spec.log_path.clone(),
            source,
        })?;
    let log_err = log.try_clone().map_err(|source| ProcessError::Log {
        path: spec.log_path.clone(),
        source,
    })?;
    let mut cmd = tokio::process::Command::new(&program);
    cmd.args(&argv[1..])
        .envs(&spec.env)
        .env("PORT", spec.addr.port().to_string())
        .env("RIPCORD_SERVICE", &spec.service)
        .env("RIPCORD_VERSION", &spec.version)
        .env("RIPCORD_SLOT", spec.slot.as_str())
        .env("RIPCORD_RELEASE_ID", spec.release_id.to_string())
        .env("RIPCORD_STATE_DIR", state_dir_id(&spec.state_dir))
        .env_remove("RIPCORD_FAILPOINT")
        .env_remove("RIPCORD_FAILPOINT_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log_err))
        // Its own group, so a stop reaches everything the release started, and a Ctrl-C
        // in the watcher's terminal does not kill releases behind its back.
        .process_group(0)
        .kill_on_drop(false);
    if let Some(cwd) = &spec.cwd {
        cmd.current_dir(cwd);
    }
    let mut child = cmd.spawn().map_err(|source| ProcessError::Spawn {
        program: program.display().to_string(),
        source,
    })?;
    let pid = child.id().expect("a just-spawned child has a pid");
    let (cgroup, memory_limit) = match spec.memory_limit_mb {
        None => (None, None),
        Some(mb) => {
            let name = format!("ripcord-{}-{}-{}", spec.service, spec.release_id, spec.slot);
            match Cgroup::create(&name, mb).and_then(|cg| {
                cg.add(pid).map_err(|e| e.to_string())?;
                Ok(cg)
            }) {
                Ok(cg) => {
                    let said = format!("{mb} MiB, enforced by {}", cg.describe());
                    (Some(cg), Some(said))
                }
                Err(why) => (
                    None,
                    Some(format!(
                        "{mb} MiB, enforced by ripcord's RSS watchdog (sampled every second): no kernel limit here ({why})"
                    )),
                ),
            }
        }
    };
    let cgroup_limited = cgroup.is_some();
    let (tx, rx) = watch::channel(None);
    let kernel_oom = Arc::new(AtomicBool::new(false));
    let oom = kernel_oom.clone();
    tokio::spawn(async move {
        if let Ok(status) = child.wait().await {
            // Read before the cgroup goes, and before the exit is seen.
            ended_in(cgroup.as_ref(), &oom);
            let _ = tx.send(Some(Exited::Status(status)));
        }
    });
    Ok(RunningProcess {
        pid,
        pid_start: start_ticks(pid as i64),
        log_path: spec.log_path.clone(),
        exit: rx,
        stopping: AtomicBool::new(false),
        oom_killed: AtomicBool::new(false),
        kernel_oom,
        kernel_limit: cgroup_limited,
        memory_limit,
    })
}

/// The state dir as releases carry it: absolute, so every watcher names it alike.
fn state_dir_id(dir: &Path) -> PathBuf {
    dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf())
}

/// Release processes of `service` started by a watcher of `state_dir` that are not in
/// `known` (pid and start time): what an operation started before it could record it in
/// a slot, when its watcher died in between. Only process-group leaders count (a
/// release's own children share its group and go with it).
pub fn strays(service: &str, state_dir: &Path, known: &[i64]) -> Vec<(i64, Option<u64>)> {
    let dir = state_dir_id(state_dir);
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i64>().ok()) else {
            continue;
        };
        if known.contains(&pid) || pid == std::process::id() as i64 {
            continue;
        }
        if environ_var(pid, "RIPCORD_SERVICE").as_deref() != Some(service)
            || environ_var(pid, "RIPCORD_STATE_DIR")
                .map(PathBuf::from)
                .as_ref()
                != Some(&dir)
        {
            continue;
        }
        let leader = nix::unistd::getpgid(Some(Pid::from_raw(pid as i32)))
            .is_ok_and(|g| g.as_raw() as i64 == pid);
        if leader {
            out.push((pid, start_ticks(pid)));
        }
    }
    out
}

/// Why a process left by an earlier watcher is not adopted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotAdopted {
    /// No process has that pid and start time any more.
    Gone,
    /// The pid and start time match, but its environment names another release.
    Stranger(String),
}

/// Takes over a release process an earlier watcher started (it kept running when that
/// watcher died), after checking it is who the ledger says: the same pid *and* start
/// time, and the service and release ripcord put in its environment when it started it.
/// Its exit is seen by polling, since it is not this watcher's child.
pub fn adopt(
    pid: i64,
    pid_start: Option<u64>,
    service: &str,
    release_id: i64,
    log_path: PathBuf,
) -> Result<RunningProcess, NotAdopted> {
    if pid <= 0 || pid_start.is_none() || start_ticks(pid) != pid_start {
        return Err(NotAdopted::Gone);
    }
    let env_service = environ_var(pid, "RIPCORD_SERVICE");
    let env_release = environ_var(pid, "RIPCORD_RELEASE_ID");
    if env_service.as_deref() != Some(service)
        || env_release.as_deref() != Some(release_id.to_string().as_str())
    {
        return Err(NotAdopted::Stranger(format!(
            "pid {pid} runs with RIPCORD_SERVICE={} RIPCORD_RELEASE_ID={}, not {service} release {release_id}",
            env_service.as_deref().unwrap_or("(unset)"),
            env_release.as_deref().unwrap_or("(unset)")
        )));
    }
    let (tx, rx) = watch::channel(None);
    let cgroup = Cgroup::of(pid as u32);
    let memory_limit = cgroup
        .as_ref()
        .map(|cg| format!("enforced by {}", cg.describe()));
    let kernel_oom = Arc::new(AtomicBool::new(false));
    let oom = kernel_oom.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(ADOPTED_POLL);
        loop {
            tick.tick().await;
            if start_ticks(pid) != pid_start {
                ended_in(cgroup.as_ref(), &oom);
                let _ = tx.send(Some(Exited::Gone));
                return;
            }
            if tx.is_closed() {
                return;
            }
        }
    });
    Ok(RunningProcess {
        pid: pid as u32,
        pid_start,
        log_path,
        exit: rx,
        stopping: AtomicBool::new(false),
        oom_killed: AtomicBool::new(false),
        kernel_oom,
        kernel_limit: memory_limit.is_some(),
        memory_limit,
    })
}

/// A release's process ended: whether the kernel killed it for memory, then its
/// cgroup is removed (quietly kept while something of its group still runs there).
fn ended_in(cgroup: Option<&Cgroup>, oom: &AtomicBool) {
    if let Some(cg) = cgroup {
        if cg.oom_kills() > 0 {
            oom.store(true, Ordering::Relaxed);
        }
        cg.remove();
    }
}

impl RunningProcess {
    /// How it ended, once the process has exited.
    pub fn exited(&self) -> Option<Exited> {
        *self.exit.borrow()
    }

    /// Waits for the process to exit.
    pub async fn wait(&self) -> Option<Exited> {
        let mut rx = self.exit.clone();
        rx.wait_for(|s| s.is_some()).await.ok().and_then(|s| *s)
    }

    /// Whether ripcord asked it to stop (so an exit is expected).
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// Whether it was killed for exceeding its memory limit: by ripcord's watchdog, or
    /// by the kernel in its cgroup.
    pub fn oom_killed(&self) -> bool {
        self.oom_killed.load(Ordering::Relaxed) || self.kernel_oom.load(Ordering::Relaxed)
    }

    /// Kills the group at once for exceeding the memory limit (an OOM kill).
    pub fn kill_for_memory(&self) {
        if self.exited().is_none() && !self.oom_killed.swap(true, Ordering::Relaxed) {
            let _ = killpg(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
        }
    }

    /// SIGTERM to the group; SIGKILL after `timeout`. Returns how it ended.
    pub async fn stop(&self, timeout: Duration) -> StopOutcome {
        self.stopping.store(true, Ordering::Relaxed);
        if self.exited().is_some() {
            return StopOutcome::AlreadyExited;
        }
        let group = Pid::from_raw(self.pid as i32);
        let _ = killpg(group, Signal::SIGTERM);
        if tokio::time::timeout(timeout, self.wait()).await.is_ok() {
            return StopOutcome::Terminated;
        }
        let _ = killpg(group, Signal::SIGKILL);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.wait()).await;
        StopOutcome::Killed
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopOutcome {
    AlreadyExited,
    Terminated,
    Killed,
    /// Not a process ripcord runs (runtime `external`).
    NotOurs,
}

/// Kills a process group left behind by an earlier watcher, if `pid` still is that
/// process (same start time). Returns whether something was killed.
pub fn kill_orphan(pid: i64, pid_start: Option<u64>) -> bool {
    if pid <= 0 || start_ticks(pid).is_none() || start_ticks(pid) != pid_start {
        return false;
    }
    let group = Pid::from_raw(pid as i32);
    let _ = killpg(group, Signal::SIGTERM);
    for _ in 0..50 {
        if start_ticks(pid) != pid_start {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = killpg(group, Signal::SIGKILL);
    true
}

/// The last `n` lines of a log file (reads only its tail).
pub fn tail_lines(path: &Path, n: usize) -> Vec<String> {
    let Ok(mut file) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(16 * 1024)));
    let lines: Vec<String> = BufReader::new(file).lines().map_while(Result::ok).collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(dir: &Path, argv: &[&str]) -> StartSpec {
        StartSpec {
            service: "web".into(),
            release_id: 1,
            version: "v1".into(),
            slot: Slot::Blue,
            addr: "127.0.0.1:9".parse().unwrap(),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            cwd: None,
            env: BTreeMap::from([("EXTRA".to_string(), "yes".to_string())]),
            log_path: dir.join("logs/web/v1.log"),
            state_dir: dir.to_path_buf(),
            memory_limit_mb: None,
        }
    }

    #[test]
    fn substitutes_the_config_files_directory_per_argument() {
        let argv: Vec<String> = vec![
            "app".into(),
            "--config={config_files}/app.toml".into(),
            "{port}".into(),
        ];
        assert_eq!(
            substitute_config_files(&argv, Path::new("/s/files/web/v1-ab")),
            ["app", "--config=/s/files/web/v1-ab/app.toml", "{port}"]
        );
    }

    #[test]
    fn substitutes_port_and_version_per_argument() {
        let argv = vec![
            "app".into(),
            "--listen=127.0.0.1:{port}".into(),
            "{version}".into(),
        ];
        assert_eq!(
            substitute(&argv, 8081, "v2"),
            ["app", "--listen=127.0.0.1:8081", "v2"]
        );
        // A shell metacharacter stays one literal argument.
        let argv = vec!["echo".into(), "$(rm -rf /); {version}".into()];
        assert_eq!(substitute(&argv, 1, "x")[1], "$(rm -rf /); x");
    }

    #[tokio::test]
    async fn output_goes_to_the_log_and_exit_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        let s = spec(
            dir.path(),
            &[
                "sh",
                "-c",
                "echo out $PORT $RIPCORD_VERSION $EXTRA; echo err >&2; exit 3",
                "{port}",
            ],
        );
        let p = start(&s).unwrap();
        let Some(Exited::Status(status)) = p.wait().await else {
            panic!("a child's exit has its status");
        };
        assert_eq!(status.code(), Some(3));
        assert_eq!(tail_lines(&s.log_path, 10), ["out 9 v1 yes", "err"]);
        assert_eq!(
            p.stop(Duration::from_secs(1)).await,
            StopOutcome::AlreadyExited
        );
    }

    #[tokio::test]
    async fn stop_terminates_then_kills_the_group() {
        let dir = tempfile::tempdir().unwrap();
        let p = start(&spec(dir.path(), &["sleep", "30"])).unwrap();
        assert!(p.pid_start.is_some());
        assert_eq!(
            p.stop(Duration::from_secs(5)).await,
            StopOutcome::Terminated
        );
        // A process that ignores SIGTERM is killed after the timeout.
        let p = start(&spec(
            dir.path(),
            &["sh", "-c", "trap '' TERM; sleep 30 & wait"],
        ))
        .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            p.stop(Duration::from_millis(300)).await,
            StopOutcome::Killed
        );
        assert!(p.exited().is_some());
    }

    #[tokio::test]
    async fn a_missing_program_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = start(&spec(dir.path(), &["/nonexistent/app"])).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cannot start `/nonexistent/app`"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn orphans_are_killed_only_when_start_time_matches() {
        let dir = tempfile::tempdir().unwrap();
        let p = start(&spec(dir.path(), &["sleep", "30"])).unwrap();
        let pid = p.pid as i64;
        assert!(!kill_orphan(pid, p.pid_start.map(|s| s + 1)));
        assert!(p.exited().is_none());
        assert!(kill_orphan(pid, p.pid_start));
        assert!(p.wait().await.is_some());
    }

    #[tokio::test]
    async fn a_process_is_adopted_only_when_pid_start_time_and_release_all_match() {
        let dir = tempfile::tempdir().unwrap();
        let s = spec(dir.path(), &["sleep", "30"]);
        let p = start(&s).unwrap();
        let (pid, started) = (p.pid as i64, p.pid_start);
        let log = s.log_path.clone();
        // Until the child has exec'd, /proc shows the parent's environment (bounded wait).
        for _ in 0..250 {
            if environ_var(pid, "RIPCORD_SERVICE").is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // A recycled pid (another start time) is not ours.
        let other_start = started.map(|t| t + 1);
        assert_eq!(
            adopt(pid, other_start, &s.service, s.release_id, log.clone()).unwrap_err(),
            NotAdopted::Gone
        );
        // The right process, but the ledger says another release ran there.
        let err = adopt(pid, started, &s.service, s.release_id + 1, log.clone()).unwrap_err();
        let NotAdopted::Stranger(why) = err else {
            panic!("{err:?}");
        };
        assert!(
            why.contains(&format!("RIPCORD_RELEASE_ID={}", s.release_id)),
            "{why}"
        );
        let err = adopt(pid, started, "other", s.release_id, log.clone()).unwrap_err();
        assert!(matches!(err, NotAdopted::Stranger(_)), "{err:?}");

        let adopted = adopt(pid, started, &s.service, s.release_id, log).unwrap();
        assert!(adopted.exited().is_none());
        // Its end is seen though it is not the adopter's child, and a stop reaches it.
        let outcome = tokio::time::timeout(
            Duration::from_secs(10),
            adopted.stop(Duration::from_secs(5)),
        )
        .await
        .expect("the stop of an adopted process ends");
        assert_eq!(outcome, StopOutcome::Terminated);
        assert_eq!(adopted.exited(), Some(Exited::Gone));
        assert!(adopted.exited().unwrap().to_string().contains("adopted"));
        assert!(p.wait().await.is_some());
    }
}
