//! `deploy --wait`: after the watcher reports a verified deploy, wait for the guard's
//! verdict, for CI pipelines. It reads the ledger (and, when no previous release is kept
//! warm, the watcher's live bake evidence); it never changes anything.
//!
//! The verdict is final when the bake is over: the watcher ends a bake (records
//! `bake_ended` for the warm previous release and stops it) only once the active
//! release is cleared by its guard's evidence, never on the timer alone. A rollback
//! marks the release `bad`. So: `bake_ended` while the release is still active is exit
//! 0; the release marked bad is exit 5; neither before the deadline is exit 6.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::progress::Spinner;
use super::{CliError, exit};
use crate::ledger::{Ledger, ReleaseStatus};
use crate::watch::control::{self, Request};

/// How often the ledger is read while waiting.
const POLL: Duration = Duration::from_millis(250);
/// Added to the bake period when no --wait duration is given: the guard may hold the
/// bake a while past it for want of evidence.
pub(super) const MARGIN: Duration = Duration::from_secs(60);
/// The bake period when the release's config snapshot does not say (the config default).
const DEFAULT_BAKE: Duration = Duration::from_secs(300);

/// How the wait ended.
#[derive(Debug, PartialEq)]
enum Verdict {
    /// The bake is over and the release still serves: the guard cleared it.
    Cleared,
    /// The release was rolled back (marked bad) while we waited.
    RolledBack { reason: Option<String> },
    /// Something else replaced it (another deploy): it is not active any more.
    Replaced { status: ReleaseStatus },
    /// No verdict before the deadline; the release still serves.
    TimedOut { why: Option<String> },
}

impl Verdict {
    fn exit(&self) -> i32 {
        match self {
            Verdict::Cleared => exit::OK,
            Verdict::RolledBack { .. } => exit::ROLLED_BACK,
            Verdict::Replaced { .. } => exit::FAILURE,
            Verdict::TimedOut { .. } => exit::WAIT_TIMED_OUT,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Verdict::Cleared => "cleared",
            Verdict::RolledBack { .. } => "rolled_back",
            Verdict::Replaced { .. } => "replaced",
            Verdict::TimedOut { .. } => "timed_out",
        }
    }
}

/// `ripcord deploy`: the deploy through the watcher, then (with --wait) its verdict.
pub(super) async fn deploy(
    state_dir: &Path,
    request: Request,
    wait: Option<Option<Duration>>,
    json: bool,
) -> Result<i32, CliError> {
    // Events recorded from here on belong to this deploy or come after it; a bake that
    // ends between the watcher's answer and our first read is still seen.
    let baseline = match wait {
        Some(_) => last_event_id(state_dir, &request),
        None => 0,
    };
    let doing = match &request {
        Request::Deploy {
            service, version, ..
        } => format!("deploying {service} {version}"),
        _ => "working".to_string(),
    };
    let (code, result, error) = super::call_watcher(state_dir, &request, doing, json).await?;
    let Some(limit) = wait.filter(|_| code == exit::OK) else {
        super::print_operation(code, &result, error.as_deref(), None, json);
        return Ok(code);
    };
    if !json {
        super::output::outcome(&result);
    }
    let started = Instant::now();
    let verdict = wait_for_verdict(state_dir, &result, baseline, limit, json).await?;
    let code = verdict.0.exit();
    let waited_ms = started.elapsed().as_millis() as u64;
    let version = result["active"]["version"].as_str().unwrap_or("?");
    let service = result["service"].as_str().unwrap_or("?");
    let secs = waited_ms as f64 / 1000.0;
    // The verdict in words: the line people read, and `error` for scripts when not 0.
    let said = match &verdict.0 {
        Verdict::Cleared => format!(
            "{service} {version} is still active and cleared by the guard: the bake is over (waited {secs:.1} s)"
        ),
        Verdict::RolledBack { reason } => format!(
            "{service} {version} was rolled back while we waited: {}",
            reason.as_deref().unwrap_or("no reason recorded")
        ),
        Verdict::Replaced { status } => format!(
            "{service} {version} is no longer active (it is {}): another operation replaced it",
            status.as_str()
        ),
        Verdict::TimedOut { why } => format!(
            "{service} {version}: no verdict within {} ({}); it still serves",
            humantime::format_duration(verdict.1),
            why.as_deref().unwrap_or("the guard has not cleared it yet")
        ),
    };
    if json {
        let (reason, status, why) = match &verdict.0 {
            Verdict::RolledBack { reason } => (reason.clone(), None, None),
            Verdict::Replaced { status } => (None, Some(status.as_str()), None),
            Verdict::TimedOut { why } => (None, None, why.clone()),
            Verdict::Cleared => (None, None, None),
        };
        let wait = json!({
            "verdict": verdict.0.name(),
            "exit": code,
            "release": result["active"]["release"],
            "version": version,
            "waited_ms": waited_ms,
            "limit_ms": verdict.1.as_millis() as u64,
            "reason": reason,
            "status": status,
            "hold": why,
        });
        let error = (code != exit::OK).then_some(said.as_str());
        super::print_operation(code, &result, error, Some(wait), json);
    } else if code == exit::OK {
        println!("✓ {said}");
    } else {
        eprintln!("✗ {said} (exit {code})");
    }
    Ok(code)
}

/// The newest event id of the request's service, 0 when there is no ledger yet.
fn last_event_id(state_dir: &Path, request: &Request) -> i64 {
    let Request::Deploy { service, .. } = request else {
        return 0;
    };
    if !state_dir.join(crate::ledger::FILE_NAME).exists() {
        return 0;
    }
    Ledger::open(state_dir)
        .and_then(|l| l.last_event_id(service))
        .unwrap_or(0)
}

/// Polls the ledger until the verdict on the deployed release is final or `limit`
/// (default: its bake period plus [`MARGIN`]) has passed; returns it with the limit used.
async fn wait_for_verdict(
    state_dir: &Path,
    result: &Value,
    baseline: i64,
    limit: Option<Duration>,
    json: bool,
) -> Result<(Verdict, Duration), CliError> {
    let service = result["service"].as_str().unwrap_or_default().to_string();
    let Some(id) = result["active"]["release"].as_i64() else {
        return Err(CliError::new(
            exit::FAILURE,
            format!("the watcher's answer names no active release to wait for: {result}"),
        ));
    };
    let previous = result["from"]["release"].as_i64();
    let ledger = super::open_ledger(state_dir)?;
    let release = ledger.release(id)?;
    // The snapshot keeps `bake` in seconds, a fraction when it is not whole.
    let bake = release.config_snapshot["bake_secs"]
        .as_f64()
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .unwrap_or(DEFAULT_BAKE);
    let limit = limit.unwrap_or(bake + MARGIN);
    let deadline = Instant::now() + limit;
    // The previous release is kept warm unless the router has one address (router
    // `none`, swarm): then no `bake_ended` comes, and the guard's live evidence decides.
    let warm = match previous {
        Some(p) => {
            ledger
                .slots(&service)?
                .iter()
                .any(|s| s.release_id == Some(p) && s.warm_until_ms.is_some())
                || bake_ended(&ledger, &service, baseline, p)?
        }
        None => false,
    };
    let spinner = Spinner::start(
        format!(
            "waiting up to {} for the guard to clear {}",
            humantime::format_duration(limit),
            release.version
        ),
        json,
    );
    let mut shown = ledger.last_event_id(&service)?;
    let mut hold: Option<String> = None;
    loop {
        // Events first, then the release's status: a rollback after the bake ended
        // (a cold one) is still seen as a rollback.
        for e in ledger.events_after(&service, shown, 1000)? {
            spinner.line(&format!("  {}", super::output::event_line(&e)));
            shown = e.id;
        }
        let cleared = if warm {
            previous.is_some_and(|p| bake_ended(&ledger, &service, baseline, p).unwrap_or(false))
        } else {
            let bake = live_bake(state_dir, &service).await;
            hold = bake
                .as_ref()
                .and_then(|b| b["why"].as_str().map(String::from));
            bake.is_some_and(|b| b["state"] == "clear")
        };
        let now = ledger.release(id)?;
        match now.status {
            ReleaseStatus::Bad => {
                return Ok((
                    Verdict::RolledBack {
                        reason: now.status_reason,
                    },
                    limit,
                ));
            }
            ReleaseStatus::Active if cleared => return Ok((Verdict::Cleared, limit)),
            ReleaseStatus::Active => {}
            status => return Ok((Verdict::Replaced { status }, limit)),
        }
        if Instant::now() >= deadline {
            if warm {
                // Why the bake is held, when the watcher says.
                hold = live_bake(state_dir, &service)
                    .await
                    .and_then(|b| b["why"].as_str().map(String::from));
            }
            return Ok((Verdict::TimedOut { why: hold }, limit));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Whether the watcher ended the bake of `previous` (the guard cleared the release
/// that replaced it) since event `baseline`.
fn bake_ended(
    ledger: &Ledger,
    service: &str,
    baseline: i64,
    previous: i64,
) -> Result<bool, CliError> {
    let mut after = baseline;
    loop {
        let events = ledger.events_after(service, after, 1000)?;
        let Some(last) = events.last() else {
            return Ok(false);
        };
        after = last.id;
        if events
            .iter()
            .any(|e| e.kind == "bake_ended" && e.release_id == Some(previous))
        {
            return Ok(true);
        }
    }
}

/// The guard's bake evidence for the active release (`{"state": "clear"}`, or `hold`
/// with `why`), when a watcher answers.
async fn live_bake(state_dir: &Path, service: &str) -> Option<Value> {
    let request = Request::Live {
        service: service.to_string(),
    };
    match control::call(state_dir, &request, |_| {}).await {
        Ok((0, live, _)) => Some(live["guard"]["bake"].clone()),
        _ => None,
    }
}
