//! `ripcord watch`: the daemon. It owns every service's proxy and release processes,
//! serves the control socket that `deploy`, `rollback` and `status` use, stops warm
//! releases when their bake time is over, and on start reconciles with the ledger (kills
//! what a crashed watcher left behind, brings each active release back up).
//!
//! At most one watcher runs per state dir (a ledger lease). On shutdown it stops
//! accepting, drains the proxies with a timeout, then stops the releases.

pub mod control;
pub mod dashboard;
pub mod guard;
pub mod metrics;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

use crate::clock::now_ms;
use crate::config;
use crate::config::Config;
use crate::execute::router::NginxRouter;
use crate::execute::{
    DeployRequest, ExecError, RollbackRequest, Router, ServiceExec, SharedLedger,
};
use crate::ledger::{Ledger, LedgerError, NewEvent, OperationKind};
use crate::proxy::{DRAIN_TIMEOUT, Proxy};
use control::{Reply, Request};

/// The pseudo-service whose lease marks the one watcher of a state dir.
use crate::ledger::WATCHER_LEASE;

/// The longest request line the control socket reads.
const MAX_REQUEST_BYTES: usize = 1 << 20;
/// How long a control-socket client gets to send its request line.
const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How often warm releases are checked for the end of their bake time.
const BAKE_TICK: Duration = Duration::from_millis(250);

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("cannot create state dir {}: {source}", path.display())]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("another watcher is running on state dir {}: {holder}", state_dir.display())]
    AlreadyRunning { state_dir: PathBuf, holder: String },
    #[error("cannot listen on the control socket {}: {source}", path.display())]
    Socket {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("service `{service}`: the nginx log_format: {reason}")]
    LogFormat { service: String, reason: String },
    #[error("cannot serve metrics on {addr} (watch.metrics_listen): {source}")]
    MetricsBind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot serve the dashboard on {addr} (watch.dashboard_listen): {source}")]
    DashboardBind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    DashboardToken(#[from] dashboard::token::TokenError),
    #[error(
        "service `{service}`: the proxy cannot serve HTTPS ([service.{service}.proxy]): {reason}"
    )]
    ProxyTls { service: String, reason: String },
    #[error(
        "service `{service}`: the proxy cannot listen on {addr}: {source}; is another program using it?"
    )]
    ProxyBind {
        service: String,
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// Why the bake of a service's active release may not end yet, from its guard's
/// evidence: `None` once enough requests cleared it.
fn bake_hold(view: &guard::SharedView) -> Option<String> {
    match &view.lock().unwrap_or_else(|p| p.into_inner()).bake {
        guard::BakeEvidence::Clear => None,
        guard::BakeEvidence::Hold(why) => Some(why.clone()),
        guard::BakeEvidence::Unknown => Some("the guard has not judged it yet".to_string()),
    }
}

struct Service {
    exec: Arc<ServiceExec>,
    view: guard::SharedView,
    /// The guard's per-second traffic of the last 15 minutes (charts, the dashboard).
    series: guard::SharedSeries,
    /// The built-in proxy's accept task (router `proxy`).
    proxy_task: Option<tokio::task::JoinHandle<()>>,
    /// Keeps the guard's record channel open when no proxy feeds it.
    _records: Option<mpsc::Sender<crate::proxy::RequestRecord>>,
    /// The nginx access-log follower's counters, when it runs.
    access_log: Option<Arc<crate::signals::nginx_log::FollowStats>>,
}

/// Creates the state dir owner-only if it does not exist.
pub fn ensure_state_dir(path: &Path) -> Result<(), WatchError> {
    use std::os::unix::fs::DirBuilderExt;
    if path.is_dir() {
        // Env snapshots and the ledger live here: say so when others can read it.
        if let Ok(meta) = std::fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(
                "state dir {} is readable by other users (mode {:o}): `chmod 700 {}`",
                path.display(),
                meta.permissions().mode() & 0o777,
                path.display()
            );
        }
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|source| WatchError::StateDir {
            path: path.to_path_buf(),
            source,
        })
}

/// Runs the watcher until `shutdown` resolves. `ready` is told once every service was
/// reconciled and the control socket accepts.
pub async fn run(
    config: Config,
    state_dir: &Path,
    keep: crate::sockets::Keep,
    shutdown: impl Future<Output = ()>,
    ready: Option<tokio::sync::oneshot::Sender<()>>,
) -> Result<(), WatchError> {
    ensure_state_dir(state_dir)?;
    let ledger: SharedLedger = Arc::new(Mutex::new(Ledger::open(state_dir)?));
    let (watcher_lease, interrupted) = {
        let mut l = ledger.lock().unwrap_or_else(|p| p.into_inner());
        let holder = format!("ripcord watch (pid {})", std::process::id());
        // Its lease lasts as long as the process: a dead watcher's pid frees it.
        let lease = l
            .acquire_lease(
                WATCHER_LEASE,
                &holder,
                Duration::from_secs(100 * 365 * 86_400),
            )
            .map_err(|e| match e {
                LedgerError::Busy { holder, .. } => WatchError::AlreadyRunning {
                    state_dir: state_dir.to_path_buf(),
                    holder,
                },
                e => e.into(),
            })?;
        let interrupted = l.interrupt_unfinished()?;
        for op in &interrupted {
            tracing::warn!(
                service = %op.service,
                operation = op.id,
                step = %op.step,
                "an earlier watcher stopped during this operation; it is marked interrupted"
            );
        }
        (lease, interrupted)
    };

    let socket = control::socket_path(state_dir);
    let _ = std::fs::remove_file(&socket);
    // Created owner-only: no moment in which another user could connect to it.
    let umask = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(&socket);
    nix::sys::stat::umask(umask);
    let listener = bound.map_err(|source| WatchError::Socket {
        path: socket.clone(),
        source,
    })?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600)).map_err(
        |source| WatchError::Socket {
            path: socket.clone(),
            source,
        },
    )?;

    let own_metrics = metrics::Metrics::default();
    if let Some(addr) = config.metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| WatchError::MetricsBind { addr, source })?;
        tokio::spawn(metrics::serve(listener, own_metrics.clone()));
    }
    // The proxies' listening sockets: from systemd, from the keeper that held them while
    // no watcher ran, or bound now (and handed to a keeper, so they outlive this process).
    let wanted: Vec<(String, std::net::SocketAddr)> = config
        .services
        .iter()
        .filter(|(_, c)| c.router == config::Router::Proxy)
        .filter_map(|(n, c)| c.listen.map(|a| (n.clone(), a)))
        .collect();
    let mut listeners = {
        let (dir, addrs) = (
            state_dir.to_path_buf(),
            wanted.iter().map(|(_, a)| *a).collect::<Vec<_>>(),
        );
        tokio::task::spawn_blocking(move || crate::sockets::obtain(&dir, &addrs, &keep))
            .await
            .expect("the socket hand-over does not panic")
            .map_err(|e| WatchError::ProxyBind {
                service: wanted
                    .iter()
                    .find(|(_, a)| *a == e.addr)
                    .map(|(n, _)| n.clone())
                    .unwrap_or_default(),
                addr: e.addr,
                source: e.source,
            })?
    };
    if let Some(w) = &listeners.warning {
        tracing::warn!("{w}");
    }
    // Where a release was active, requests that arrive before it is reconciled wait for
    // it (held by the proxy) instead of meeting "no active release yet".
    let mut holds: BTreeMap<String, crate::proxy::HoldGuard> = BTreeMap::new();
    let mut origins: BTreeMap<String, crate::sockets::Origin> = BTreeMap::new();
    let mut services: BTreeMap<String, Service> = BTreeMap::new();
    for (name, cfg) in &config.services {
        let (tx, rx) = mpsc::channel(65_536);
        // Request records come from the built-in proxy; with nginx they will come from
        // its access log. The sender is kept for the watcher's life either way: the
        // guard stops when its record channel closes.
        let (router, proxy_task, records_tx) = match (cfg.router, cfg.listen, &cfg.nginx) {
            (config::Router::Proxy, Some(listen), _) => {
                let (listener, origin) = listeners
                    .take(listen)
                    .expect("a socket was obtained for every proxy address");
                let bind_error = |source| WatchError::ProxyBind {
                    service: name.clone(),
                    addr: listen,
                    source,
                };
                // A certificate that cannot be used is the config's fault, not the port's.
                if let Some(tls) = &cfg.proxy_tls {
                    crate::proxy::check_tls(tls).map_err(|reason| WatchError::ProxyTls {
                        service: name.clone(),
                        reason,
                    })?;
                }
                let active = ledger
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .active_release(name)?;
                let limits = cfg.proxy_limits;
                let (proxy, task) = if active.is_some() {
                    let (proxy, task, hold) =
                        Proxy::serve_held(name, listener, Some(tx), limits, cfg.proxy_tls.as_ref())
                            .map_err(bind_error)?;
                    holds.insert(name.clone(), hold);
                    (proxy, task)
                } else {
                    Proxy::serve(name, listener, Some(tx), limits, cfg.proxy_tls.as_ref())
                        .map_err(bind_error)?
                };
                origins.insert(name.clone(), origin);
                (Router::Proxy(proxy), Some(task), None)
            }
            (config::Router::Nginx, _, Some(n)) => {
                let state_file = state_dir.join("nginx").join(format!("{name}.json"));
                let r = NginxRouter::new(n, cfg.slots, state_file);
                (Router::Nginx(Arc::new(r)), None, Some(tx))
            }
            // No request records without a proxy or an access log; the sender is kept
            // all the same, since the guard stops when its record channel closes.
            (config::Router::None, _, _) => (
                Router::Direct(Arc::new(arc_swap::ArcSwapOption::empty())),
                None,
                Some(tx),
            ),
            _ => unreachable!("config validation guarantees a proxy address or an nginx table"),
        };
        let exec = Arc::new(ServiceExec::new(
            cfg.clone(),
            router.clone(),
            ledger.clone(),
            state_dir,
        ));
        // With nginx, the requests come from its access log.
        let access_log = match (&cfg.nginx, &records_tx) {
            (Some(n), Some(tx)) if n.access_log.is_some() => {
                let stats = follow_access_log(name, n, exec.clone(), tx.clone())?;
                own_metrics.access_log(name, stats.clone());
                Some(stats)
            }
            _ => None,
        };
        // Signal sources feed the guard; the guard decides and acts through `exec`.
        let (obs_tx, obs_rx) = mpsc::channel(1024);
        if let Some(rule) = &cfg.triggers.health {
            tokio::spawn(crate::signals::probe::run(
                cfg.clone(),
                rule.clone(),
                router.clone(),
                exec.clone(),
                obs_tx.clone(),
            ));
        }
        if let Some(p) = &cfg.prometheus {
            for rule in &p.rules {
                tokio::spawn(crate::signals::prometheus::run(
                    p.url.clone(),
                    p.ca_file.clone(),
                    rule.clone(),
                    router.clone(),
                    obs_tx.clone(),
                ));
            }
        }
        if let Some(check) = &cfg.integrity {
            tokio::spawn(crate::signals::integrity::run(
                check.clone(),
                obs_tx.clone(),
            ));
        }
        if cfg.runtime == config::Runtime::Docker {
            tokio::spawn(crate::signals::docker::run(exec.clone(), obs_tx));
        } else if cfg.runtime == config::Runtime::Kubernetes {
            tokio::spawn(crate::signals::kubernetes::run(exec.clone(), obs_tx));
        } else {
            tokio::spawn(crate::signals::process::run(exec.clone(), obs_tx));
        }
        let view: guard::SharedView = Arc::default();
        let series = guard::new_series();
        let notifier = crate::notify::Notifier::start_with_ca_file(
            cfg.webhooks.clone(),
            cfg.webhooks_ca_file.clone(),
        );
        let g = guard::Guard::new(
            exec.clone(),
            ledger.clone(),
            notifier,
            view.clone(),
            series.clone(),
            own_metrics.clone(),
        );
        tokio::spawn(g.run(rx, obs_rx));
        services.insert(
            name.clone(),
            Service {
                exec,
                view,
                series,
                proxy_task,
                _records: records_tx,
                access_log,
            },
        );
    }

    for (name, svc) in &services {
        record(
            &ledger,
            name,
            "watcher_started",
            format!(
                "watcher started (pid {}); traffic through {}{}",
                std::process::id(),
                svc.exec.cfg.entry(),
                origins
                    .get(name)
                    .map(|o| format!(", its listening socket {}", o.describe()))
                    .unwrap_or_default()
            ),
        );
        // A restore the earlier watcher died in: the database first, then the app on it.
        for op in interrupted
            .iter()
            .filter(|op| op.service == *name && op.kind == OperationKind::Restore.as_str())
        {
            crate::execute::recover_interrupted_restore(&svc.exec.cfg, state_dir, &ledger, op)
                .await;
        }
        let reconciled = svc.exec.reconcile().await;
        // Held requests go on now, to the reconciled release (or get the proxy's 503).
        drop(holds.remove(name));
        match reconciled {
            Ok(Some(r)) => {
                tracing::info!(service = %name, version = %r.version, "active release serving again")
            }
            Ok(None) => tracing::info!(service = %name, "no active release yet"),
            Err(e) => {
                tracing::error!(service = %name, error = %e, "cannot bring the active release back up");
                record(
                    &ledger,
                    name,
                    "reconcile_failed",
                    format!("cannot bring the active release back up: {e}"),
                );
            }
        }
    }
    let services = Arc::new(services);
    if let Some(d) = config.dashboard {
        start_dashboard(d, state_dir, services.clone(), ledger.clone()).await?;
    }
    if let Some(ready) = ready {
        let _ = ready.send(());
    }

    let mut bake = tokio::time::interval(BAKE_TICK);
    bake.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    tokio::spawn(serve_client(stream, services.clone(), config.path.clone()));
                }
            }
            _ = bake.tick() => {
                for svc in services.values() {
                    let exec = svc.exec.clone();
                    let hold = bake_hold(&svc.view);
                    tokio::spawn(async move { exec.bake_tick(hold).await });
                }
            }
            _ = &mut shutdown => break,
        }
    }

    tracing::info!("shutting down: draining the proxies, then stopping releases");
    drop(listener);
    // A clean stop: the keeper lets go first, so once the proxies close their copies
    // new clients are refused, not left waiting for a watcher that is not coming.
    tokio::task::block_in_place(|| listeners.release());
    let _ = std::fs::remove_file(&socket);
    for svc in services.values() {
        if let Some(p) = svc.exec.router.proxy() {
            p.shutdown();
        }
    }
    for svc in services.values() {
        let _ = tokio::time::timeout(DRAIN_TIMEOUT + Duration::from_secs(1), async {
            while svc.proxy_task.as_ref().is_some_and(|t| !t.is_finished()) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
    }
    for (name, svc) in services.iter() {
        svc.exec.stop_all().await;
        record(
            &ledger,
            name,
            "watcher_stopped",
            "watcher stopped; releases stopped".into(),
        );
    }
    let mut l = ledger.lock().unwrap_or_else(|p| p.into_inner());
    l.release_lease(&watcher_lease)?;
    Ok(())
}

/// Serves the dashboard. A default address that is taken (another watcher on this
/// host has it) costs only the dashboard, with a warning; an address a person chose
/// must be free.
async fn start_dashboard(
    d: config::DashboardListen,
    state_dir: &Path,
    services: Arc<BTreeMap<String, Service>>,
    ledger: SharedLedger,
) -> Result<(), WatchError> {
    let token = dashboard::token::load_or_create(state_dir)?;
    let listener = match tokio::net::TcpListener::bind(d.addr).await {
        Ok(l) => l,
        Err(source) if d.explicit => {
            return Err(WatchError::DashboardBind {
                addr: d.addr,
                source,
            });
        }
        Err(e) => {
            tracing::warn!(
                addr = %d.addr,
                error = %e,
                "no dashboard: its default address is taken; set `[watch] dashboard_listen` \
                 to another address, or \"off\""
            );
            return Ok(());
        }
    };
    if !d.addr.ip().is_loopback() {
        tracing::warn!(
            addr = %d.addr,
            "the dashboard listens beyond this host: anyone who can reach it reads service \
             names, versions and incidents (actions still need the token)"
        );
    }
    tracing::info!(
        "dashboard on http://{} (actions need the token: `ripcord dashboard`)",
        d.addr
    );
    tokio::spawn(dashboard::serve(
        listener,
        dashboard::Dashboard {
            services,
            ledger,
            token,
        },
    ));
    Ok(())
}

/// How long handing one batch of access-log requests to the guard may wait for room in
/// its channel before the rest of the batch is dropped (and counted). The guard drains
/// its channel every `guard::TICK`, so this rides out a guard that is a few ticks behind
/// without stalling the follower for long when it stays behind.
const INGEST_WAIT: Duration = Duration::from_millis(500);

/// How access-log requests are tied to a release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attribution {
    /// By `$upstream_addr`: the release in the slot that answered.
    Upstream,
    /// The format has no `$upstream_addr` (nginx's `combined`): each request is counted
    /// against the release the router targets when the line is read. That is right for
    /// the one-server-per-upstream layout, but around the instant of a switch it can
    /// misattribute: nginx's old workers keep serving the old slot for a moment after a
    /// reload, and a line is read a little after it is written.
    Active,
}

/// Starts following nginx's access log and turns each line into a request record for the
/// guard, attributed to a release by its upstream address (the slot it went to), or to
/// the active release when the format does not log one.
fn follow_access_log(
    service: &str,
    n: &config::NginxConfig,
    exec: Arc<ServiceExec>,
    records: mpsc::Sender<crate::proxy::RequestRecord>,
) -> Result<Arc<crate::signals::nginx_log::FollowStats>, WatchError> {
    use crate::signals::nginx_log::{Follower, LogFormat, attribution_warning};
    let err = |reason: String| WatchError::LogFormat {
        service: service.to_string(),
        reason,
    };
    let conf = match &n.conf {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| err(format!("cannot read {}: {e}", path.display())))?,
        ),
        None => None,
    };
    let format = LogFormat::from_setting(n.log_format.as_deref(), conf.as_deref())
        .map_err(|e| err(e.to_string()))?;
    let how = match attribution_warning(&format) {
        None => Attribution::Upstream,
        Some(warning) => {
            tracing::warn!(service = %service, "{warning}");
            Attribution::Active
        }
    };
    let path = n.access_log.clone().expect("checked by the caller");
    let stats = Arc::new(crate::signals::nginx_log::FollowStats::default());
    let (tx, mut rx) = mpsc::channel(64);
    tokio::spawn(
        Follower::new(path, format)
            .start_at_end(true)
            .run(tx, stats.clone()),
    );
    let ingest_stats = stats.clone();
    tokio::spawn(async move {
        while let Some(batch) = rx.recv().await {
            // Which release each slot address serves right now.
            let slots: Vec<(String, config::Slot, i64)> = exec
                .slots()
                .into_iter()
                .map(|(slot, sp)| (exec.cfg.slots.addr(slot).to_string(), slot, sp.release.id))
                .collect();
            let active = exec.router.target().map(|t| (t.slot, t.release_id));
            let batch = attribute(batch, how, &slots, active, &ingest_stats);
            if !hand_on(batch, &records, &ingest_stats, INGEST_WAIT).await {
                return;
            }
        }
    });
    Ok(stats)
}

/// Turns access-log requests into the guard's request records. `slots` is each slot's
/// address with the release it serves; `active` the slot and release the router targets.
/// Requests no release can be tied to are counted as unattributed in `stats`.
fn attribute(
    batch: Vec<crate::signals::nginx_log::AccessRecord>,
    how: Attribution,
    slots: &[(String, config::Slot, i64)],
    active: Option<(config::Slot, i64)>,
    stats: &crate::signals::nginx_log::FollowStats,
) -> Vec<crate::proxy::RequestRecord> {
    let total = batch.len();
    let out: Vec<crate::proxy::RequestRecord> = batch
        .into_iter()
        .filter_map(|rec| {
            let (slot, release_id) = match how {
                Attribution::Active => active?,
                Attribution::Upstream => {
                    let addr = rec.upstream_addr.as_deref()?;
                    let (_, slot, release) = slots.iter().find(|(a, _, _)| a == addr)?;
                    (*slot, *release)
                }
            };
            Some(crate::proxy::RequestRecord {
                slot,
                release_id,
                status: rec.status,
                latency_us: rec.upstream_time_us.or(rec.request_time_us).unwrap_or(0),
                timed: rec.upstream_time_us.or(rec.request_time_us).is_some(),
                upstream_error: rec.status == 502 || rec.status == 504,
                at_ms: rec.at_ms.unwrap_or_else(now_ms),
            })
        })
        .collect();
    stats.add_unattributed((total - out.len()) as u64);
    out
}

/// Hands records to the guard, waiting up to `wait` in all for room in its channel; what
/// is left when the wait runs out is dropped and counted in `stats`. `false` once the
/// guard is gone.
async fn hand_on(
    batch: Vec<crate::proxy::RequestRecord>,
    records: &mpsc::Sender<crate::proxy::RequestRecord>,
    stats: &crate::signals::nginx_log::FollowStats,
    wait: Duration,
) -> bool {
    use tokio::sync::mpsc::error::TrySendError;
    let deadline = tokio::time::Instant::now() + wait;
    let total = batch.len();
    for (i, record) in batch.into_iter().enumerate() {
        let record = match records.try_send(record) {
            Ok(()) => continue,
            Err(TrySendError::Closed(_)) => return false,
            Err(TrySendError::Full(record)) => record,
        };
        match tokio::time::timeout_at(deadline, records.send(record)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return false,
            Err(_) => {
                let dropped = (total - i) as u64;
                // Once: the count in `status` and `/metrics` says how many since.
                if stats.add_dropped(dropped) == dropped {
                    tracing::warn!(
                        dropped,
                        "the guard fell behind the access log: requests were dropped, \
                         and its windows miss them"
                    );
                }
                return true;
            }
        }
    }
    true
}

fn record(ledger: &SharedLedger, service: &str, kind: &str, message: String) {
    let mut l = ledger.lock().unwrap_or_else(|p| p.into_inner());
    if let Err(e) = l.event(
        service,
        NewEvent {
            kind,
            message,
            ..Default::default()
        },
    ) {
        tracing::error!(error = %e, "cannot write event to the ledger");
    }
}

async fn serve_client(
    stream: UnixStream,
    services: Arc<BTreeMap<String, Service>>,
    config_path: PathBuf,
) {
    let (read, mut write) = stream.into_split();
    let done = |exit: i32, result: serde_json::Value, error: Option<String>| Reply::Done {
        exit,
        result,
        error,
    };
    // One request line, bounded in size and time: a client of the socket cannot make
    // the watcher buffer without end or hold a task forever.
    let mut raw = Vec::new();
    let mut reader = BufReader::new(read.take(MAX_REQUEST_BYTES as u64 + 1));
    let read_line = reader.read_until(b'\n', &mut raw);
    let bad = match tokio::time::timeout(REQUEST_READ_TIMEOUT, read_line).await {
        Err(_) => Some(format!(
            "bad request: no complete line within {}s",
            REQUEST_READ_TIMEOUT.as_secs()
        )),
        Ok(Err(_)) | Ok(Ok(0)) => return,
        Ok(Ok(_)) if raw.len() > MAX_REQUEST_BYTES => Some(format!(
            "bad request: a line longer than {MAX_REQUEST_BYTES} bytes"
        )),
        Ok(Ok(_)) => None,
    };
    let line = match (bad, String::from_utf8(raw)) {
        (Some(why), _) => Err(why),
        (None, Err(e)) => Err(format!(
            "bad request: not UTF-8 (byte {} is invalid)",
            e.utf8_error().valid_up_to()
        )),
        (None, Ok(mut line)) => {
            // As `lines()` reads it: without the newline (and a CR before it).
            if line.ends_with('\n') {
                line.pop();
                if line.ends_with('\r') {
                    line.pop();
                }
            }
            Ok(line)
        }
    };
    let line = match line {
        Ok(l) => l,
        Err(why) => {
            let _ = send(&mut write, &done(2, serde_json::Value::Null, Some(why))).await;
            return;
        }
    };
    let request = match serde_json::from_str::<Request>(&line) {
        Ok(r) => r,
        Err(e) => {
            let _ = send(
                &mut write,
                &done(
                    2,
                    serde_json::Value::Null,
                    Some(format!("bad request: {e}")),
                ),
            )
            .await;
            return;
        }
    };
    let service_name = match &request {
        Request::Deploy { service, .. }
        | Request::Rollback { service, .. }
        | Request::Drill { service }
        | Request::Restore { service, .. }
        | Request::Live { service } => Some(service.clone()),
        Request::Ping => None,
    };
    let svc = match &service_name {
        Some(name) => match services.get(name) {
            Some(s) => Some(s),
            None => {
                let known: Vec<&str> = services.keys().map(String::as_str).collect();
                let msg = format!(
                    "service `{name}` is not in the watcher's config {} (it has: {}); \
                     restart the watcher after changing the config",
                    config_path.display(),
                    known.join(", ")
                );
                let _ = send(&mut write, &done(2, serde_json::Value::Null, Some(msg))).await;
                return;
            }
        },
        None => None,
    };
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    // A drill that ran answers with its outcome, failed or not, and its own exit code.
    let drill = matches!(request, Request::Drill { .. });
    // Operations run in their own task: a client that goes away does not cancel a
    // rollback halfway.
    let op: tokio::task::JoinHandle<Result<serde_json::Value, ExecError>> = match (request, svc) {
        (Request::Ping, _) => {
            let _ = send(
                &mut write,
                &done(0, serde_json::json!({ "pid": std::process::id() }), None),
            )
            .await;
            return;
        }
        (Request::Live { .. }, Some(svc)) => {
            let live = live(svc);
            let _ = send(&mut write, &done(0, live, None)).await;
            return;
        }
        (
            Request::Deploy {
                version,
                argv,
                cwd,
                image,
                force,
                reason,
                slot,
                ..
            },
            Some(svc),
        ) => {
            let exec = svc.exec.clone();
            tokio::spawn(async move {
                let req = DeployRequest {
                    slot,
                    version,
                    argv,
                    cwd,
                    image,
                    force,
                    reason,
                };
                exec.deploy(req, Some(tx))
                    .await
                    .map(|o| serde_json::to_value(o).unwrap_or_default())
            })
        }
        (
            Request::Rollback {
                to, reason, force, ..
            },
            Some(svc),
        ) => {
            let exec = svc.exec.clone();
            tokio::spawn(async move {
                exec.rollback(RollbackRequest { to, reason, force }, Some(tx))
                    .await
                    .map(|o| serde_json::to_value(o).unwrap_or_default())
            })
        }
        (Request::Drill { .. }, Some(svc)) => {
            let exec = svc.exec.clone();
            tokio::spawn(async move {
                exec.drill(Some(tx)).await.map(|o| {
                    let mut v = serde_json::to_value(&o).unwrap_or_default();
                    v["exit"] = o.exit_code().into();
                    v
                })
            })
        }
        (
            Request::Restore {
                backup, confirm, ..
            },
            Some(svc),
        ) => {
            let exec = svc.exec.clone();
            tokio::spawn(async move {
                exec.restore(backup, &confirm, Some(tx))
                    .await
                    .map(|o| serde_json::to_value(o).unwrap_or_default())
            })
        }
        _ => return,
    };
    while let Some(message) = rx.recv().await {
        let _ = send(&mut write, &Reply::Progress { message }).await;
    }
    let reply = match op.await {
        Ok(Ok(result)) if drill => {
            let exit = result["exit"].as_i64().unwrap_or(1) as i32;
            let error = result["error"].as_str().map(str::to_string);
            done(exit, result, error)
        }
        Ok(Ok(result)) => done(0, result, None),
        Ok(Err(e)) => {
            let result = match &e {
                ExecError::VerifyFailed { report, .. } => serde_json::json!({ "verify": report }),
                _ => serde_json::Value::Null,
            };
            done(e.exit_code(), result, Some(e.to_string()))
        }
        Err(e) => done(
            1,
            serde_json::Value::Null,
            Some(format!("the operation task failed: {e}")),
        ),
    };
    let _ = send(&mut write, &reply).await;
}

async fn send(write: &mut tokio::net::unix::OwnedWriteHalf, reply: &Reply) -> std::io::Result<()> {
    // Errors and progress may quote an app's log or a check's output: no secret leaves.
    let mut value = serde_json::to_value(reply).expect("replies serialize");
    crate::config::redact::scrub_json(&mut value);
    let mut line = value.to_string();
    line.push('\n');
    write.write_all(line.as_bytes()).await
}

/// What only the watcher knows: processes, proxy counters, traffic per release.
fn live(svc: &Service) -> serde_json::Value {
    use std::sync::atomic::Ordering::Relaxed;
    let slots: Vec<serde_json::Value> = svc
        .exec
        .slots()
        .into_iter()
        .map(|(slot, sp)| {
            serde_json::json!({
                "slot": slot,
                "release": sp.release.id,
                "version": sp.release.version,
                "pid": sp.proc.as_ref().map(|p| p.pid),
                "container": sp.container.as_ref().map(|c| serde_json::json!({
                    "id": c.id, "name": c.name,
                })),
                "running": sp.running(),
                "warm_until_ms": sp.warm_until_ms,
                "log": sp.proc.as_ref().map(|p| p.log_path.clone()),
            })
        })
        .collect();
    let view = svc.view.lock().unwrap_or_else(|p| p.into_inner()).clone();
    serde_json::json!({
        "pid": std::process::id(),
        "at_ms": now_ms(),
        "router": svc.exec.cfg.entry(),
        "target": svc.exec.router.target().map(|t| serde_json::json!({
            "slot": t.slot, "release": t.release_id, "version": t.version, "addr": t.addr,
        })),
        "proxy": svc.exec.router.proxy().map(|p| {
            let c = p.counters();
            serde_json::json!({
                "listen": p.local_addr(),
                "requests": c.requests.load(Relaxed),
                "in_flight": c.in_flight.load(Relaxed),
                "upstream_errors": c.upstream_errors.load(Relaxed),
                "records_dropped": c.records_dropped.load(Relaxed),
            })
        }),
        "slots": slots,
        "access_log": svc.access_log.as_ref().map(|a| {
            let s = a.snapshot();
            serde_json::json!({
                "path": svc.exec.cfg.nginx.as_ref().and_then(|n| n.access_log.clone()),
                "lines": s.lines,
                "malformed": s.malformed,
                "unattributed": s.unattributed,
                "dropped": s.dropped,
                "rotations": s.rotations,
                "truncations": s.truncations,
                "state": format!("{:?}", s.state).to_lowercase(),
                "last_malformed": s.last_malformed,
                "last_error": s.last_error,
            })
        }),
        "traffic": view.traffic.iter().map(|(k, v)| (k.to_string(), v.clone())).collect::<BTreeMap<_, _>>(),
        "guard": {
            "release": view.release_id,
            "rules": view.rules,
            "warm_probe": view.warm_probe,
            "last_decision": view.last_decision,
            "bake": view.bake,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Slot;
    use crate::signals::nginx_log::{FollowStats, LogFormat};

    fn combined_line(status: u16) -> String {
        format!(
            "203.0.113.9 - - [10/Oct/2024:13:55:36 +0000] \"GET /api HTTP/1.1\" {status} 12 \"-\" \"curl/8\""
        )
    }

    /// Regression: with a format that has no `$upstream_addr` (nginx's `combined`) every
    /// request was skipped, so the guard never saw the 5xx of a bad release behind nginx.
    #[test]
    fn combined_format_requests_count_against_the_active_release() {
        let format = LogFormat::combined();
        let batch: Vec<_> = [200, 500, 502, 200, 503]
            .iter()
            .map(|s| format.parse_line(combined_line(*s).as_bytes()).unwrap())
            .collect();
        let stats = FollowStats::default();
        let slots = [("127.0.0.1:8001".to_string(), Slot::Green, 7)];
        let out = attribute(
            batch.clone(),
            Attribution::Active,
            &slots,
            Some((Slot::Green, 7)),
            &stats,
        );
        assert_eq!(out.len(), 5);
        assert!(
            out.iter()
                .all(|r| r.release_id == 7 && r.slot == Slot::Green)
        );
        let statuses: Vec<u16> = out.iter().map(|r| r.status).collect();
        assert_eq!(statuses, [200, 500, 502, 200, 503]);
        assert_eq!(out.iter().filter(|r| r.upstream_error).count(), 1);
        assert_eq!(stats.snapshot().unattributed, 0);
        // By upstream, the same lines are tied to nothing.
        let out = attribute(batch.clone(), Attribution::Upstream, &slots, None, &stats);
        assert!(out.is_empty());
        assert_eq!(stats.snapshot().unattributed, 5);
        // Nothing active yet: nothing to count them against.
        let out = attribute(batch, Attribution::Active, &slots, None, &stats);
        assert!(out.is_empty());
        assert_eq!(stats.snapshot().unattributed, 10);
    }

    #[test]
    fn requests_from_no_slot_are_counted_as_unattributed() {
        let format = LogFormat::new("$status ua=\"$upstream_addr\"").unwrap();
        let batch: Vec<_> = [
            "500 ua=\"127.0.0.1:8001\"",
            "200 ua=\"127.0.0.1:9999\"",
            "404 ua=\"-\"",
            "200 ua=\"127.0.0.1:8000\"",
        ]
        .iter()
        .map(|l| format.parse_line(l.as_bytes()).unwrap())
        .collect();
        let slots = [
            ("127.0.0.1:8000".to_string(), Slot::Blue, 1),
            ("127.0.0.1:8001".to_string(), Slot::Green, 2),
        ];
        let stats = FollowStats::default();
        let out = attribute(batch, Attribution::Upstream, &slots, None, &stats);
        let got: Vec<(i64, u16)> = out.iter().map(|r| (r.release_id, r.status)).collect();
        assert_eq!(got, [(2, 500), (1, 200)]);
        assert_eq!(stats.snapshot().unattributed, 2);
    }

    fn records(n: usize) -> Vec<crate::proxy::RequestRecord> {
        (0..n)
            .map(|i| crate::proxy::RequestRecord {
                slot: Slot::Blue,
                release_id: 1,
                status: 200,
                latency_us: i as u64,
                timed: true,
                upstream_error: false,
                at_ms: 0,
            })
            .collect()
    }

    /// Regression: a full guard channel ended the batch, and the rest was lost uncounted.
    #[tokio::test]
    async fn a_guard_that_stays_behind_loses_counted_records() {
        let (tx, _rx) = mpsc::channel(2);
        let stats = FollowStats::default();
        let wait = Duration::from_millis(50);
        let started = tokio::time::Instant::now();
        assert!(hand_on(records(5), &tx, &stats, wait).await);
        assert!(started.elapsed() >= wait);
        assert_eq!(stats.snapshot().dropped, 3);
    }

    #[tokio::test]
    async fn a_guard_briefly_behind_loses_nothing() {
        let (tx, mut rx) = mpsc::channel::<crate::proxy::RequestRecord>(2);
        let stats = FollowStats::default();
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            // Drains like the guard: everything waiting, once a tick.
            while got.len() < 5 {
                tokio::time::sleep(Duration::from_millis(20)).await;
                while let Ok(r) = rx.try_recv() {
                    got.push(r.latency_us);
                }
            }
            got
        });
        assert!(hand_on(records(5), &tx, &stats, INGEST_WAIT).await);
        assert_eq!(reader.await.unwrap(), [0, 1, 2, 3, 4]);
        assert_eq!(stats.snapshot().dropped, 0);
        drop(tx);
        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        assert!(!hand_on(records(1), &tx, &stats, INGEST_WAIT).await);
    }
}
