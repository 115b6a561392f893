//! The per-service guard task: feeds request records and signal observations into the
//! active release's windows, evaluates the triggers every tick, asks `decide` what to do,
//! and acts through exactly the path a person uses (`ServiceExec::rollback`), with an
//! incident, events and notifications around it.
//!
//! It watches whatever release the proxy serves, from the deploy's switch through the
//! bake and after it. A rollback that fails escalates: the service is frozen and people
//! are told; it is never retried in a loop.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde_json::json;
use tokio::sync::mpsc;

use crate::clock::now_ms;
use crate::decide::{self, Action, Decision, Investigation};
use crate::execute::{ExecError, RollbackRequest, ServiceExec, SharedLedger};
use crate::guard::detector::{Detector, Spec};
use crate::guard::recent::Recent;
use crate::guard::requests::{self, RequestLog, Sample};
use crate::guard::triggers::{self, Finding, Rule, Verdict};
use crate::guard::window::Window;
use crate::ledger::{IncidentUpdate, Ledger, NewEvent};
use crate::notify::Notifier;
use crate::proxy::RequestRecord;
use crate::signals::Observation;

/// How often the triggers are evaluated.
pub const TICK: Duration = Duration::from_millis(100);
/// How often request records are drained while they come fast ([`BUSY_RECORDS`] or more
/// in one drain); otherwise once a [`TICK`].
pub const BUSY_DRAIN: Duration = Duration::from_millis(10);
/// Records in one drain that make the next one come after [`BUSY_DRAIN`].
pub const BUSY_RECORDS: u64 = 200;

/// When to drain the request records next, after a drain at `at` took `n` of them: soon
/// while they come fast, else at the next evaluation.
fn next_drain_at(
    at: tokio::time::Instant,
    n: u64,
    next_eval: tokio::time::Instant,
) -> tokio::time::Instant {
    if n >= BUSY_RECORDS {
        (at + BUSY_DRAIN).min(next_eval)
    } else {
        next_eval
    }
}
/// How long the request records behind incident reports are kept, and at most how many:
/// an incident keeps the minute before its first bad request, at any rate up to about
/// 1,000 requests a second.
const SERIES_MS: i64 = 900_000;
const SERIES_CAP: usize = 100_000;
/// How far before the first bad request and after the verification an incident keeps
/// the records.
const SERIES_LEAD_MS: i64 = 60_000;
const SERIES_TAIL_MS: i64 = 5_000;
/// How often the ledger's view (frozen, investigating, baseline) is refreshed.
const STATE_REFRESH_MS: i64 = 500;
/// How often a healthy release's p95 is saved as the next release's baseline.
const BASELINE_EVERY_MS: i64 = 5_000;
/// The fewest timed requests a p95 is saved from as a baseline.
const BASELINE_MIN_REQUESTS: u64 = 50;
/// How many of a release's latest requests are kept, to tell when a bad episode is over
/// and for the incident's "its own ratio" figure (the decision never reads them).
const RECENT: usize = 40;

/// Traffic the proxy saw for one release, since the watcher started.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ReleaseTraffic {
    pub requests: u64,
    pub status_5xx: u64,
    pub upstream_errors: u64,
}

/// What `status` can show about the guard: per-rule verdicts for the active release.
#[derive(Debug, Default, Clone, Serialize)]
pub struct GuardView {
    pub release_id: Option<i64>,
    /// Rule → `ok: ...`, `no data: ...` or `fired: ...`.
    pub rules: BTreeMap<String, String>,
    pub last_decision: Option<Decision>,
    pub traffic: BTreeMap<i64, ReleaseTraffic>,
    /// The last health probe of the slot keeping the previous release warm.
    pub warm_probe: Option<WarmProbe>,
    /// Whether the evidence lets the bake end (the previous release stop being warm).
    pub bake: BakeEvidence,
}

/// What the guard's evidence says about ending the bake of the active release.
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "why")]
pub enum BakeEvidence {
    /// The guard has not judged the active release yet.
    #[default]
    Unknown,
    /// Not yet: the previous release stays warm past `bake`, for this reason.
    Hold(String),
    /// Enough requests show the release below its thresholds: the bake may end.
    Clear,
}

/// Whether the warm rollback target answered its last health probe.
#[derive(Debug, Clone, Serialize)]
pub struct WarmProbe {
    pub release_id: i64,
    pub ok: bool,
    pub detail: String,
    pub at_ms: i64,
}

pub type SharedView = Arc<Mutex<GuardView>>;

/// The service's traffic, one bucket a second over the last 15 minutes: the dashboard's
/// live chart reads it (incident charts read the request log).
pub type SharedSeries = Arc<Mutex<Window>>;

pub fn new_series() -> SharedSeries {
    Arc::new(Mutex::new(Window::new(Duration::from_secs(CHART_SECS))))
}

/// How far back the per-second traffic for the dashboard reaches.
const CHART_SECS: u64 = 900;

/// A release's windows when its rule is off: the rules' default span.
const DEFAULT_WINDOW: Duration = Duration::from_secs(120);

/// Everything the guard tracks about one release while it serves.
struct Watch {
    /// The error rule's last `window`: the recent ratio shown beside the evidence.
    errors: Window,
    latency: Window,
    /// The sequential test of the 5xx ratio (when the rule is on).
    error_test: Option<Detector>,
    /// The sequential test of the share of slow requests, from when a baseline is known.
    slow_test: Option<Detector>,
    total: u64,
    failed: u64,
    first_bad_ms: Option<i64>,
    health_streak: u32,
    probes: u64,
    last_probe: String,
    cpu: VecDeque<(i64, f64)>,
    exit: Option<(String, bool, i64)>,
    last_baseline_ms: i64,
    /// The latest requests: when a bad episode is over, and the release's own ratio.
    recent: Recent,
    created_ms: i64,
}

impl Watch {
    fn new(exec: &ServiceExec) -> Self {
        let t = &exec.cfg.triggers;
        Watch {
            errors: Window::new(t.error_rate.as_ref().map_or(DEFAULT_WINDOW, |r| r.window)),
            latency: Window::new(t.latency_p95.as_ref().map_or(DEFAULT_WINDOW, |r| r.window)),
            error_test: t
                .error_rate
                .as_ref()
                .map(|r| Detector::new(Spec::new(r.above, r.requests_per_false_alarm))),
            slow_test: None,
            total: 0,
            failed: 0,
            first_bad_ms: None,
            health_streak: 0,
            probes: 0,
            last_probe: String::new(),
            cpu: VecDeque::new(),
            exit: None,
            last_baseline_ms: now_ms(),
            recent: Recent::new(RECENT),
            created_ms: now_ms(),
        }
    }

    fn bad(&mut self, at_ms: i64) {
        self.first_bad_ms.get_or_insert(at_ms);
    }
}

/// A metric rule's evaluations for one release.
struct MetricState {
    release_id: i64,
    /// Evaluations in a row that breached the bound.
    breaches: u32,
    /// The last evaluation, for people: `0.31 above 0.1`, `no data: empty result`.
    last: String,
    at_ms: i64,
}

/// The ledger's view of the service, refreshed now and then (never on the request path).
#[derive(Default)]
struct LedgerView {
    frozen: Option<String>,
    investigating: Option<Investigation>,
    has_rollback_target: bool,
    baseline_p95_us: Option<u64>,
    refreshed_ms: i64,
}

pub struct Guard {
    exec: Arc<ServiceExec>,
    ledger: SharedLedger,
    notifier: Notifier,
    view: SharedView,
    watches: HashMap<i64, Watch>,
    /// Shared with the tasks that finish rollbacks, so an incident's records go on past
    /// the decision to the switch, the verification and the recovery.
    series: Arc<Mutex<RequestLog>>,
    /// The service's traffic a second at a time, for the dashboard's live chart.
    chart: SharedSeries,
    active: Option<i64>,
    state: LedgerView,
    acting: Arc<AtomicBool>,
    /// Set when an automatic rollback found the service busy: decide again.
    retry: Arc<AtomicBool>,
    /// The integrity check's last failure, while it fails.
    integrity: Option<(String, i64)>,
    /// Each metric rule's state for the active release.
    metric_rules: BTreeMap<String, MetricState>,
    /// ripcord's own metrics.
    metrics: super::metrics::Metrics,
    /// Traffic per release, counted here and published to the view on each tick.
    traffic: BTreeMap<i64, ReleaseTraffic>,
    /// Releases the guard acted on (rolled back, investigated, froze).
    flagged: std::collections::HashSet<i64>,
    /// The last decision acted on, so an unchanged decision is not repeated.
    last_action: Option<Action>,
}

impl Guard {
    pub fn new(
        exec: Arc<ServiceExec>,
        ledger: SharedLedger,
        notifier: Notifier,
        view: SharedView,
        chart: SharedSeries,
        metrics: super::metrics::Metrics,
    ) -> Self {
        Guard {
            exec,
            ledger,
            notifier,
            view,
            watches: HashMap::new(),
            series: Arc::new(Mutex::new(RequestLog::new(SERIES_CAP, SERIES_MS))),
            chart,
            active: None,
            state: LedgerView::default(),
            acting: Arc::new(AtomicBool::new(false)),
            retry: Arc::new(AtomicBool::new(false)),
            flagged: Default::default(),
            integrity: None,
            metric_rules: BTreeMap::new(),
            traffic: BTreeMap::new(),
            metrics,
            last_action: None,
        }
    }

    fn name(&self) -> &str {
        &self.exec.cfg.name
    }

    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs until the proxy's record channel closes.
    ///
    /// Request records are drained in batches rather than awaited one by one: waking this
    /// task for every request cost the proxy a third of its single-connection throughput
    /// (measured by `cargo bench --bench proxy`). The triggers are evaluated every
    /// [`TICK`]. Under load the records are drained every [`BUSY_DRAIN`] in between:
    /// 100,000 requests a second drained once a tick took this thread a millisecond and
    /// more of a core every 100 ms, which the proxy's slowest 1% of requests paid for on a
    /// 2-core machine (`cargo bench --bench proxy_nginx`); smaller, more frequent batches
    /// spread it.
    pub async fn run(
        mut self,
        mut records: mpsc::Receiver<RequestRecord>,
        mut observations: mpsc::Receiver<Observation>,
    ) {
        // The first evaluation at once, then one every TICK.
        let mut next_eval = tokio::time::Instant::now();
        let mut next_drain = next_eval;
        loop {
            tokio::select! {
                obs = observations.recv() => {
                    if let Some(obs) = obs {
                        self.on_observation(obs);
                    }
                }
                () = tokio::time::sleep_until(next_drain) => {
                    let (mut oldest, mut n, mut errors) = (i64::MAX, 0u64, 0u64);
                    let closed = loop {
                        match records.try_recv() {
                            Ok(rec) => {
                                oldest = oldest.min(rec.at_ms);
                                n += 1;
                                errors += u64::from(rec.status >= 500);
                                self.on_request(rec);
                            }
                            Err(mpsc::error::TryRecvError::Empty) => break false,
                            Err(mpsc::error::TryRecvError::Disconnected) => break true,
                        }
                    };
                    let now = now_ms();
                    if n > 0 {
                        let name = &self.exec.cfg.name;
                        self.metrics.requests(name, n, errors);
                        self.metrics.signal_lag(name, "proxy", (now - oldest).max(0) as f64 / 1000.0);
                    }
                    let at = tokio::time::Instant::now();
                    if at >= next_eval {
                        self.evaluate(now);
                        // A tick missed (a stalled thread) is skipped, not made up.
                        while next_eval <= at {
                            next_eval += TICK;
                        }
                    }
                    if closed {
                        return;
                    }
                    next_drain = next_drain_at(at, n, next_eval);
                }
            }
        }
    }

    fn watch(&mut self, release: i64) -> &mut Watch {
        let exec = self.exec.clone();
        self.watches
            .entry(release)
            .or_insert_with(|| Watch::new(&exec))
    }

    fn on_request(&mut self, rec: RequestRecord) {
        let error = rec.status >= 500;
        self.chart
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .add(rec.at_ms, error, rec.latency_us);
        self.series
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Sample {
                at_ms: rec.at_ms,
                release_id: rec.release_id,
                error,
                latency_us: rec.timed.then_some(rec.latency_us),
            });
        let t = self.traffic.entry(rec.release_id).or_default();
        t.requests += 1;
        t.status_5xx += u64::from(error);
        t.upstream_errors += u64::from(rec.upstream_error);
        // A request slower than the latency rule's limit is a bad one too.
        let limit = self.slow_limit_us().filter(|_| rec.timed);
        let slow = limit.is_some_and(|limit| rec.latency_us >= limit);
        let latency_budget = self
            .exec
            .cfg
            .triggers
            .latency_p95
            .as_ref()
            .map(|r| r.requests_per_false_alarm);
        // A drill's requests are not the release's doing: its switches, and the gap of
        // a release put in place at one address, are the drill's.
        if self.exec.in_drill(rec.at_ms) {
            return;
        }
        let w = self.watch(rec.release_id);
        if slow {
            w.bad(rec.at_ms);
        }
        if let Some(t) = &mut w.error_test {
            t.observe(rec.at_ms, error);
        }
        // Requests count for the p95 rule once a limit exists: slower than it, or not.
        if let (Some(_), Some(budget)) = (limit, latency_budget) {
            w.slow_test
                .get_or_insert_with(|| Detector::new(Spec::new(triggers::SLOW_SHARE, budget)))
                .observe(rec.at_ms, slow);
        }
        w.errors.add(rec.at_ms, error, rec.latency_us);
        // Untimed requests (an access log without timings) say nothing about latency.
        if rec.timed {
            w.latency.add(rec.at_ms, error, rec.latency_us);
        }
        w.total += 1;
        w.recent.push(rec.at_ms, error, slow);
        if error {
            w.failed += 1;
            w.bad(rec.at_ms);
        }
    }

    /// The latency rule's limit for the active release, once a baseline is known.
    fn slow_limit_us(&self) -> Option<u64> {
        let rule = self.exec.cfg.triggers.latency_p95.as_ref()?;
        let baseline = self.state.baseline_p95_us?;
        Some(triggers::latency_limit_us(rule, baseline))
    }

    fn on_observation(&mut self, obs: Observation) {
        match obs {
            Observation::Health {
                release_id,
                ok,
                detail,
                at_ms,
            } => {
                if !ok && self.exec.in_drill(at_ms) {
                    return;
                }
                let w = self.watch(release_id);
                w.probes += 1;
                w.last_probe = detail;
                if ok {
                    w.health_streak = 0;
                } else {
                    w.health_streak += 1;
                    w.bad(at_ms);
                }
            }
            Observation::WarmHealth {
                release_id,
                ok,
                detail,
                at_ms,
            } => {
                let mut view = self.view.lock().unwrap_or_else(|p| p.into_inner());
                view.warm_probe = Some(WarmProbe {
                    release_id,
                    ok,
                    detail,
                    at_ms,
                });
            }
            Observation::Resources {
                release_id,
                slot,
                cpu_share,
                rss_mb,
                at_ms,
            } => {
                if let (Some(limit), Some(rss)) = (self.exec.cfg.memory_limit_mb, rss_mb)
                    && rss > limit as f64
                    && !self.exec.memory_by_kernel(slot)
                {
                    self.exec.kill_for_memory(slot, release_id);
                    // The guard killed it: the OOM kill is a fact now, not when the exit
                    // is noticed.
                    let w = self.watch(release_id);
                    if w.exit.is_none() {
                        w.exit = Some((format!("RSS {rss:.0} MiB over {limit} MiB"), true, at_ms));
                        w.bad(at_ms);
                    }
                }
                if let Some(share) = cpu_share {
                    let rule = self.exec.cfg.triggers.cpu.clone();
                    let keep_ms =
                        rule.as_ref().map_or(300_000, |c| c.for_.as_millis() as i64) + 5_000;
                    let w = self.watch(release_id);
                    // A sample over the CPU rule's limit is the first bad observation of a
                    // CPU incident (users may not see errors, but the host is saturated).
                    if rule.is_some_and(|c| share > c.above) {
                        w.bad(at_ms);
                    }
                    w.cpu.push_back((at_ms, share));
                    while w.cpu.front().is_some_and(|(t, _)| *t < at_ms - keep_ms) {
                        w.cpu.pop_front();
                    }
                }
            }
            Observation::Metric {
                rule,
                release_id,
                result,
                at_ms,
            } => {
                let Some(cfg) = self
                    .exec
                    .cfg
                    .prometheus
                    .as_ref()
                    .and_then(|p| p.rules.iter().find(|r| r.name == rule))
                else {
                    return;
                };
                let (breach, last) = match &result {
                    crate::prometheus::QueryResult::NoData { why } => {
                        (false, format!("no data: {why}"))
                    }
                    crate::prometheus::QueryResult::Values { values } => {
                        let bad = values.iter().find_map(|(series, v)| {
                            let s = if series.is_empty() {
                                String::new()
                            } else {
                                format!("{series} ")
                            };
                            match (cfg.above, cfg.below) {
                                (Some(a), _) if *v > a => Some(format!("{s}{v} above {a}")),
                                (_, Some(b)) if *v < b => Some(format!("{s}{v} below {b}")),
                                _ => None,
                            }
                        });
                        match bad {
                            Some(b) => (true, b),
                            None => (
                                false,
                                format!(
                                    "within bounds ({})",
                                    values
                                        .iter()
                                        .map(|(_, v)| v.to_string())
                                        .collect::<Vec<_>>()
                                        .join(", ")
                                ),
                            ),
                        }
                    }
                };
                let st = self.metric_rules.entry(rule).or_insert(MetricState {
                    release_id,
                    breaches: 0,
                    last: String::new(),
                    at_ms,
                });
                if st.release_id != release_id {
                    st.release_id = release_id;
                    st.breaches = 0;
                }
                // "No data" is never a breach, and it breaks a run of breaches.
                st.breaches = if breach { st.breaches + 1 } else { 0 };
                st.last = last;
                st.at_ms = at_ms;
                if breach {
                    self.watch(release_id).bad(at_ms);
                }
            }
            Observation::Integrity { ok, detail, at_ms } => {
                self.integrity = (!ok).then_some((detail, at_ms));
            }
            Observation::Exit {
                release_id,
                status,
                oom,
                at_ms,
                ..
            } => {
                let w = self.watch(release_id);
                w.exit = Some((status, oom, at_ms));
                w.bad(at_ms);
            }
        }
    }

    fn refresh_state(&mut self, now: i64) {
        if now - self.state.refreshed_ms < STATE_REFRESH_MS {
            return;
        }
        let name = self.name().to_string();
        let l = self.ledger();
        let st = l.service_state(&name).unwrap_or_default();
        let previous = l.previous_good(&name).ok().flatten();
        drop(l);
        // A freeze or unfreeze by a person (`ripcord freeze`) is told at once.
        if self.state.refreshed_ms > 0 && st.frozen_reason != self.state.frozen {
            match &st.frozen_reason {
                Some(why) => {
                    self.notifier
                        .send("freeze", &name, format!("FROZEN: {why}"), json!({}))
                }
                None => self
                    .notifier
                    .send("unfreeze", &name, "unfrozen".to_string(), json!({})),
            }
        }
        self.state = LedgerView {
            frozen: st.frozen_reason,
            investigating: match (
                st.investigating_release,
                st.investigating_since_ms,
                st.investigating_deadline_ms,
            ) {
                (Some(release_id), Some(since_ms), Some(deadline_ms)) => Some(Investigation {
                    release_id,
                    since_ms,
                    deadline_ms,
                    acked: st.acked_at_ms.is_some(),
                }),
                _ => None,
            },
            has_rollback_target: previous.is_some(),
            baseline_p95_us: previous.and_then(|p| p.healthy_p95_us),
            refreshed_ms: now,
        };
    }

    /// The rules' verdicts for the active release.
    /// Each is labelled by its rule, or `metric:NAME` for a metric rule.
    fn verdicts(&mut self, release: i64, now: i64) -> Vec<(String, Verdict)> {
        let triggers = self.exec.cfg.triggers.clone();
        let baseline = self.state.baseline_p95_us;
        let mut out = Vec::new();
        if let Some((detail, at)) = &self.integrity {
            out.push((
                Rule::DataCorruption.as_str().to_string(),
                Verdict::Fired(Finding {
                    rule: Rule::DataCorruption,
                    release_id: release,
                    at_ms: *at,
                    summary: format!("the integrity check failed: {detail}"),
                    values: json!({ "detail": detail }),
                }),
            ));
        }
        if let Some(p) = &self.exec.cfg.prometheus {
            for rule in &p.rules {
                let verdict = match self.metric_rules.get(&rule.name) {
                    None => Verdict::NoData(format!("{}: not evaluated yet", rule.name)),
                    Some(st) if st.release_id != release => Verdict::NoData(format!(
                        "{}: not evaluated for this release yet",
                        rule.name
                    )),
                    Some(st) if st.breaches >= rule.consecutive => Verdict::Fired(Finding {
                        rule: Rule::Metric,
                        release_id: release,
                        at_ms: st.at_ms,
                        summary: format!(
                            "metric rule `{}`: {} for {} evaluations in a row ({} s apart)",
                            rule.name,
                            st.last,
                            st.breaches,
                            crate::config::duration::secs_text(rule.interval)
                        ),
                        values: json!({ "rule": rule.name, "query": rule.query, "last": st.last, "breaches": st.breaches }),
                    }),
                    Some(st) if st.last.starts_with("no data") => {
                        Verdict::NoData(format!("{}: {}", rule.name, st.last))
                    }
                    Some(st) => Verdict::Ok(format!("{}: {}", rule.name, st.last)),
                };
                out.push((format!("metric:{}", rule.name), verdict));
            }
        }
        let w = self.watch(release);
        if let (Some(rule), Some(test)) = (&triggers.error_rate, &w.error_test) {
            out.push((
                Rule::ErrorRate.as_str().to_string(),
                triggers::error_rate(rule, test, &w.errors.stats(now), release, now),
            ));
        }
        if let Some(rule) = &triggers.latency_p95 {
            out.push((
                Rule::LatencyP95.as_str().to_string(),
                triggers::latency_p95(
                    rule,
                    w.slow_test.as_ref(),
                    &w.latency,
                    baseline,
                    release,
                    now,
                ),
            ));
        }
        if let Some(rule) = &triggers.health {
            out.push((
                Rule::Health.as_str().to_string(),
                triggers::health(rule, w.health_streak, w.probes, &w.last_probe, release, now),
            ));
        }
        if let Some(rule) = &triggers.cpu {
            let samples: Vec<(i64, f64)> = w.cpu.iter().copied().collect();
            out.push((
                Rule::Cpu.as_str().to_string(),
                triggers::cpu(rule, &samples, release, now),
            ));
        }
        if let Some((status, oom, at)) = &w.exit {
            let (rule, on, what) = if *oom {
                (
                    Rule::OomKill,
                    triggers.oom_kills,
                    "killed for exceeding its memory limit (an OOM kill)",
                )
            } else {
                (Rule::Crash, triggers.crash, "exited unexpectedly")
            };
            if on {
                out.push((
                    rule.as_str().to_string(),
                    Verdict::Fired(Finding {
                        rule,
                        release_id: release,
                        at_ms: *at,
                        summary: format!("the release's process {what} ({status})"),
                        values: json!({ "status": status, "oom": oom }),
                    }),
                ));
            }
        }
        out
    }

    fn evaluate(&mut self, now: i64) {
        let Some(target) = self.exec.router.target() else {
            return;
        };
        // A drill switches traffic on purpose and switches it back: its own switches are
        // neither a new release to judge nor a reason to act.
        if self.exec.drilling() {
            return;
        }
        let release = target.release_id;
        if self.active != Some(release) {
            // The release leaving is the next one's baseline: save its p95 if it was
            // healthy, so a deploy right after it still has one.
            if let Some(old) = self.active {
                self.store_baseline(old, now);
            }
            // A release (re)starts serving: its health, process and first-bad facts start
            // fresh; its request windows keep what they hold (they age out by time).
            self.active = Some(release);
            self.last_action = None;
            // What "previous good release" means just changed: read it now.
            self.state.refreshed_ms = 0;
            self.watches.retain(|id, _| *id == release);
            // A watch made in the last tick or so holds this activation's first requests
            // (they can arrive before the tick notices the switch): keep it. An older one
            // is left from an earlier time this release served: start it over.
            let stale = self
                .watches
                .get(&release)
                .is_some_and(|w| now - w.created_ms > 1_000);
            if stale {
                self.watches.remove(&release);
            }
        }
        if self.retry.swap(false, Ordering::Relaxed) {
            self.last_action = None;
        }
        self.refresh_state(now);
        let verdicts = self.verdicts(release, now);
        let findings: Vec<Finding> = verdicts
            .iter()
            .filter_map(|(_, v)| v.fired().cloned())
            .collect();
        self.save_baseline(release, &findings, now);
        self.end_bad_episode(release, &verdicts, now);
        let state = decide::State {
            frozen: self.state.frozen.clone(),
            investigating: self
                .state
                .investigating
                .clone()
                .filter(|i| i.release_id == release),
            acting: self.acting.load(Ordering::Relaxed),
            has_rollback_target: self.state.has_rollback_target,
            investigate: self.exec.cfg.investigate,
            cpu_investigates: self
                .exec
                .cfg
                .triggers
                .cpu
                .as_ref()
                .is_none_or(|c| c.investigate),
        };
        let decision = decide::decide(&state, &findings, now);
        let bake = self.bake_evidence(release, &findings);
        {
            let mut view = self.view.lock().unwrap_or_else(|p| p.into_inner());
            view.release_id = Some(release);
            // No warm slot any more (the bake ended): its last probe is history.
            let probe_every_ms = self
                .exec
                .cfg
                .triggers
                .health
                .as_ref()
                .map_or(5_000, |h| h.interval.as_millis() as i64);
            if view
                .warm_probe
                .as_ref()
                .is_some_and(|p| now - p.at_ms > 3 * probe_every_ms || p.release_id == release)
            {
                view.warm_probe = None;
            }
            // Published once per tick rather than locked for every request record.
            view.traffic.clone_from(&self.traffic);
            view.bake = bake;
            view.rules = verdicts
                .iter()
                .map(|(label, v)| {
                    let (state, text) = match v {
                        Verdict::Ok(s) => ("ok", format!("ok: {s}")),
                        Verdict::NoData(s) => ("no_data", format!("no data: {s}")),
                        Verdict::Fired(f) => ("fired", format!("fired: {}", f.summary)),
                    };
                    self.metrics
                        .trigger_state(&self.exec.cfg.name, label, state);
                    (label.clone(), text)
                })
                .collect();
            if decision.action != Action::None {
                view.last_decision = Some(decision.clone());
            }
        }
        if decision.action == Action::None || self.last_action.as_ref() == Some(&decision.action) {
            return;
        }
        self.last_action = Some(decision.action.clone());
        self.flagged.insert(release);
        self.act(decision, findings, release, now);
    }

    /// Whether the evidence lets the bake end: every rate rule has seen enough requests
    /// to show the release below its threshold (a one-sided 99% bound), nothing fired
    /// and no investigation is open. Rules that cannot judge at all (no baseline for
    /// the p95) do not hold it.
    fn bake_evidence(&mut self, release: i64, findings: &[Finding]) -> BakeEvidence {
        if let Some(f) = findings.first() {
            return BakeEvidence::Hold(format!("{} fired", f.rule.as_str()));
        }
        if let Some(i) = &self.state.investigating
            && i.release_id == release
            && !i.acked
        {
            return BakeEvidence::Hold(
                "an investigation is open: the release is kept until it is acknowledged or rolled back"
                    .to_string(),
            );
        }
        let has_baseline = self.state.baseline_p95_us.is_some();
        let latency_on = self.exec.cfg.triggers.latency_p95.is_some();
        let w = self.watch(release);
        let unclear = |t: &Detector, what: &str| {
            let (n, bad) = t.totals();
            format!(
                "{what}: {} of {} so far; not yet enough to show it below {:.1}% (99% upper bound {:.1}%)",
                triggers::thousands(bad),
                triggers::thousands(n),
                t.spec().threshold * 100.0,
                t.upper_bound() * 100.0
            )
        };
        if let Some(t) = &w.error_test
            && !t.cleared()
        {
            return BakeEvidence::Hold(if t.totals().0 == 0 {
                "5xx ratio: no requests since it began serving".to_string()
            } else {
                unclear(t, "5xx ratio")
            });
        }
        if latency_on && has_baseline {
            match &w.slow_test {
                None => {
                    return BakeEvidence::Hold(
                        "p95: no timed requests since the baseline was known".to_string(),
                    );
                }
                Some(t) if !t.cleared() => return BakeEvidence::Hold(unclear(t, "slow requests")),
                Some(_) => {}
            }
        }
        BakeEvidence::Clear
    }

    /// The first bad observation dates an incident, so it belongs to the episode that
    /// fired, not to the release's life: once nothing fires, the requests inside the
    /// error rule's window are clean (errors and slow ones under half its limit), the
    /// CPU is not over its limit and health checks pass, what was bad before is over. (A
    /// release with 1% background errors would otherwise date an incident from an
    /// unrelated error hours before it.) Rules without data do not hold an episode open:
    /// a quiet service seldom has enough requests for them.
    fn end_bad_episode(&mut self, release: i64, verdicts: &[(String, Verdict)], now: i64) {
        let fired = verdicts.iter().any(|(_, v)| v.fired().is_some());
        // An open investigation is one episode until it ends, however the CPU dips.
        let investigating = self
            .state
            .investigating
            .as_ref()
            .is_some_and(|i| i.release_id == release && !i.acked);
        if fired || investigating {
            return;
        }
        let rule = self
            .exec
            .cfg
            .triggers
            .error_rate
            .clone()
            .unwrap_or_default();
        let limit = rule.above / 2.0;
        let since = now - rule.window.as_millis() as i64;
        let cpu_rule = self.exec.cfg.triggers.cpu.clone();
        let w = self.watch(release);
        // Hot as the CPU rule judges it: on average over its span, so one scheduling dip
        // on a busy host does not end the episode (and re-date it at the next hot sample).
        let cpu_hot = cpu_rule.is_some_and(|c| {
            let from = now - c.for_.as_millis() as i64;
            let recent: Vec<f64> = w
                .cpu
                .iter()
                .filter(|(t, _)| *t >= from)
                .map(|(_, s)| *s)
                .collect();
            !recent.is_empty() && recent.iter().sum::<f64>() / recent.len() as f64 > c.above
        });
        // The episode's own requests judge it: just after its first bad request the
        // latest requests are mostly from before it and would call it over at once, and
        // the next bad one would re-date it, after the first bad request users saw.
        // Without requests for a whole window, a quiet service holds no episode open.
        let judged = w
            .first_bad_ms
            .is_none_or(|f| w.recent.full_after(f) || !w.recent.any_since(since));
        if judged && w.recent.clean_since(since, limit) && !cpu_hot && w.health_streak == 0 {
            w.first_bad_ms = None;
        }
    }

    /// Saves a healthy release's p95 now and then: the next release's baseline.
    fn save_baseline(&mut self, release: i64, findings: &[Finding], now: i64) {
        let w = self.watch(release);
        if !findings.is_empty() || now - w.last_baseline_ms < BASELINE_EVERY_MS {
            return;
        }
        self.store_baseline(release, now);
    }

    /// Saves `release`'s p95 as a healthy baseline when its window is big and clean enough.
    fn store_baseline(&mut self, release: i64, now: i64) {
        // A release the guard acted on is never anyone's baseline.
        if self.flagged.contains(&release) {
            return;
        }
        if self.exec.cfg.triggers.latency_p95.is_none() {
            return;
        }
        let Some(w) = self.watches.get_mut(&release) else {
            return;
        };
        w.last_baseline_ms = now;
        let stats = w.latency.stats(now);
        if stats.requests < BASELINE_MIN_REQUESTS
            || stats.errors > 0 && stats.error_ratio().unwrap_or(0.0) > 0.05
        {
            return;
        }
        if let Some(p95) = stats.p95_us
            && let Err(e) = self.ledger().set_healthy_p95(release, p95)
        {
            tracing::warn!(error = %e, "cannot save the baseline p95");
        }
    }

    fn event(
        &self,
        release: Option<i64>,
        incident: Option<i64>,
        kind: &str,
        message: String,
        data: Option<serde_json::Value>,
    ) {
        tracing::warn!(service = %self.name(), kind, "{message}");
        let r = self.ledger().event(
            self.name(),
            NewEvent {
                release_id: release,
                kind,
                message,
                data,
                incident_id: incident,
                ..Default::default()
            },
        );
        if let Err(e) = r {
            tracing::error!(error = %e, "cannot write event to the ledger");
        }
    }

    /// The open incident for this release, or a new one.
    fn incident(&self, release: i64, findings: &[Finding], decision: &Decision) -> Option<i64> {
        let name = self.name().to_string();
        if let Ok(Some(open)) = self.ledger().open_incident_of(&name)
            && open.release_id == Some(release)
        {
            return Some(open.id);
        }
        // The incident is named after the most specific cause among what fired (an OOM
        // kill explains the 5xx it caused), whichever branch of the tree acted.
        let cause = [
            Rule::DataCorruption,
            Rule::OomKill,
            Rule::Crash,
            Rule::Health,
            Rule::LatencyP95,
            Rule::Cpu,
            Rule::ErrorRate,
        ];
        let first = cause
            .iter()
            .find_map(|r| findings.iter().find(|f| f.rule == *r))
            .or(findings.first());
        let rule = first.map_or("decision", |f| f.rule.as_str());
        let summary = first.map_or_else(|| decision.reasons.join("; "), |f| f.summary.clone());
        let first_bad = self.watches.get(&release).and_then(|w| w.first_bad_ms);
        let decision_json = serde_json::to_value(decision).unwrap_or_default();
        match self.ledger().open_incident(
            &name,
            Some(release),
            rule,
            &summary,
            first_bad,
            &decision_json,
        ) {
            Ok(id) => Some(id),
            Err(e) => {
                tracing::error!(error = %e, "cannot open an incident");
                None
            }
        }
    }

    fn act(&mut self, decision: Decision, findings: Vec<Finding>, release: i64, now: i64) {
        let name = self.name().to_string();
        let incident = self.incident(release, &findings, &decision);
        for f in &findings {
            self.event(
                Some(release),
                incident,
                "trigger_fired",
                format!("{} fired: {}", f.rule.as_str(), f.summary),
                Some(json!({ "rule": f.rule, "values": f.values, "at_ms": f.at_ms })),
            );
            self.notifier.send(
                "trigger",
                &name,
                format!("{} fired: {}", f.rule.as_str(), f.summary),
                json!(f),
            );
        }
        let reasons = decision.reasons.join("; ");
        self.event(
            Some(release),
            incident,
            "decision",
            format!("decision: {}", reasons),
            Some(serde_json::to_value(&decision).unwrap_or_default()),
        );
        self.notifier.send(
            "decision",
            &name,
            reasons.clone(),
            serde_json::to_value(&decision).unwrap_or_default(),
        );
        match decision.action {
            Action::None => {}
            Action::Investigate {
                release_id,
                deadline_ms,
            } => {
                if let Err(e) =
                    self.ledger()
                        .start_investigation(&name, release_id, now, deadline_ms)
                {
                    tracing::error!(error = %e, "cannot record the investigation");
                }
                self.state.refreshed_ms = 0;
                self.notifier.send(
                    "investigate",
                    &name,
                    format!(
                        "investigating: {reasons}. Run `ripcord ack {name}` to keep the release; otherwise it is rolled back in {} s",
                        (deadline_ms - now) / 1000
                    ),
                    json!({ "release_id": release_id, "deadline_ms": deadline_ms }),
                );
            }
            Action::Freeze => {
                // Already frozen (a restore runs, say): the guard's reason replaces that
                // freeze's, so whatever froze it first cannot lift it when it ends.
                match self.ledger().freeze(&name, &reasons, incident) {
                    Ok(false) => {
                        if let Err(e) =
                            self.ledger()
                                .restate_freeze(&name, &reasons, "the guard", incident)
                        {
                            tracing::error!(error = %e, "cannot restate the freeze");
                        }
                    }
                    Ok(true) => {}
                    Err(e) => tracing::error!(error = %e, "cannot record the freeze"),
                }
                if let Some(id) = incident {
                    let _ = self.ledger().update_incident(
                        id,
                        IncidentUpdate {
                            status: Some("frozen"),
                            ..Default::default()
                        },
                    );
                }
                self.state.refreshed_ms = 0;
                self.notifier
                    .send("freeze", &name, format!("FROZEN: {reasons}"), json!({}));
            }
            Action::Escalate { release_id } => {
                self.notifier.send(
                    "escalate",
                    &name,
                    format!("needs a person: {reasons}"),
                    json!({ "release_id": release_id }),
                );
            }
            Action::Rollback { kind, release_id } => {
                self.acting.store(true, Ordering::Relaxed);
                let exec = self.exec.clone();
                let ledger = self.ledger.clone();
                let notifier = self.notifier.clone();
                let acting = self.acting.clone();
                let retry = self.retry.clone();
                let watch_stats = self.watches.get(&release_id).map(|w| WatchStats {
                    first_bad_ms: w.first_bad_ms,
                });
                let series = self.series.clone();
                // After an investigation the trigger fired when it opened, not at the
                // deadline that ended it.
                let detected_ms = self
                    .state
                    .investigating
                    .as_ref()
                    .filter(|i| i.release_id == release_id && !i.acked)
                    .map(|i| i.since_ms)
                    .into_iter()
                    .chain(findings.iter().map(|f| f.at_ms))
                    .min()
                    .unwrap_or(now);
                let metrics = self.metrics.clone();
                let trigger = findings.first().map_or("decision", |f| f.rule.as_str());
                tokio::spawn(async move {
                    let reason = format!("automatic ({kind:?}): {reasons}");
                    let started = std::time::Instant::now();
                    let name = exec.cfg.name.clone();
                    let result = exec
                        .rollback(
                            RollbackRequest {
                                force: false,
                                to: None,
                                reason: Some(reason),
                            },
                            None,
                        )
                        .await;
                    let ended = finish_rollback(
                        exec,
                        ledger,
                        notifier,
                        incident,
                        result,
                        watch_stats,
                        series,
                        detected_ms,
                    )
                    .await;
                    let secs = Some(started.elapsed().as_secs_f64());
                    match ended {
                        Ended::Verified => metrics.rollback(&name, trigger, "verified", secs),
                        Ended::Failed => metrics.rollback(&name, trigger, "failed", secs),
                        Ended::Busy => retry.store(true, Ordering::Relaxed),
                    }
                    acting.store(false, Ordering::Relaxed);
                });
            }
        }
    }
}

/// The bad release's facts when the guard decided to roll it back.
#[derive(Default)]
struct WatchStats {
    first_bad_ms: Option<i64>,
}

/// How an automatic rollback ended.
enum Ended {
    Verified,
    /// Failed and escalated (frozen, notified).
    Failed,
    /// The service was busy with another operation: decide again.
    Busy,
}

/// Records how an automatic rollback ended: the incident's times, impact and series;
/// on failure, escalation (freeze and notify) instead of another try.
#[allow(clippy::too_many_arguments)]
async fn finish_rollback(
    exec: Arc<ServiceExec>,
    ledger: SharedLedger,
    notifier: Notifier,
    incident: Option<i64>,
    result: Result<crate::execute::Outcome, ExecError>,
    stats: Option<WatchStats>,
    series: Arc<Mutex<RequestLog>>,
    detected_ms: i64,
) -> Ended {
    let name = exec.cfg.name.clone();
    let lock = || ledger.lock().unwrap_or_else(|p| p.into_inner());
    let WatchStats {
        first_bad_ms: first_bad,
    } = stats.unwrap_or_default();
    // The incident was opened with its first bad observation when the trigger fired. An
    // episode re-dated since (the CPU dipping under its limit while an investigation
    // waited) must not move it: a first bad observation is never after its trigger.
    let opened_with = incident
        .and_then(|id| lock().incident(id).ok().flatten())
        .and_then(|i| i.first_bad_at_ms);
    let first_bad = [first_bad, opened_with]
        .into_iter()
        .flatten()
        .filter(|f| *f <= detected_ms)
        .min();
    match result {
        Ok(outcome) => {
            let first = first_bad.unwrap_or(detected_ms);
            // The incident keeps every request around it; its counts are those of the
            // first bad request → switch window, as the report counts them.
            let chart = {
                let series = series.clone();
                move || {
                    let samples = series.lock().unwrap_or_else(|p| p.into_inner()).between(
                        first - SERIES_LEAD_MS,
                        outcome.verified_at_ms + SERIES_TAIL_MS,
                    );
                    requests::to_json(&samples)
                }
            };
            let samples = series.lock().unwrap_or_else(|p| p.into_inner()).between(
                first - SERIES_LEAD_MS,
                outcome.verified_at_ms + SERIES_TAIL_MS,
            );
            let counted =
                crate::report::chart::exposure(&samples, first, outcome.switched_at_ms, true);
            let points = requests::to_json(&samples);
            let impact = json!({
                "failed_requests": counted.errors,
                "total_requests": counted.requests,
                "requests_from_ms": counted.from_ms,
                "requests_to_ms": counted.to_ms,
                "bucket_ms": counted.bucket_ms,
                "first_bad_at_ms": first_bad,
                "detected_at_ms": detected_ms,
                "errors_seen_ms": outcome.switched_at_ms - first,
                "first_bad_to_trigger_ms": detected_ms - first,
                "first_bad_to_switch_ms": outcome.switched_at_ms - first,
                "first_bad_to_verified_ms": outcome.verified_at_ms - first,
                "peak_5xx_ratio": counted.peak_ratio,
                "peak_p95_ms": counted.peak_p95_ms,
            });
            if let Some(id) = incident {
                let _ = lock().update_incident(
                    id,
                    IncidentUpdate {
                        status: Some("resolved"),
                        switched_at_ms: Some(outcome.switched_at_ms),
                        verified_at_ms: Some(outcome.verified_at_ms),
                        closed_at_ms: Some(outcome.verified_at_ms),
                        impact: Some(impact.clone()),
                        series: Some(points.clone()),
                    },
                );
            }
            // The chart goes on a little past the verification: the recovery is what a
            // reader wants to see next to the switch.
            if let Some(id) = incident {
                let ledger = ledger.clone();
                tokio::spawn(async move {
                    for wait in [1_000, 4_000] {
                        tokio::time::sleep(Duration::from_millis(wait)).await;
                        let points = chart();
                        let _ = ledger
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .update_incident(
                                id,
                                IncidentUpdate {
                                    series: Some(points),
                                    ..Default::default()
                                },
                            );
                    }
                });
            }
            let _ = lock().end_investigation(&name);
            notifier.send(
                "rollback_done",
                &name,
                format!(
                    "rolled back to {} and verified; traffic was back {} ms after the first bad request",
                    outcome.active.version,
                    outcome.switched_at_ms - first
                ),
                json!({ "outcome": outcome, "impact": impact, "incident": incident }),
            );
            Ended::Verified
        }
        Err(e) => {
            let msg = format!("automatic rollback failed: {e}");
            // A busy service is not a failed rollback: the guard decides again shortly.
            if matches!(
                e,
                ExecError::Busy(_) | ExecError::Ledger(crate::ledger::LedgerError::Busy { .. })
            ) {
                tracing::warn!(service = %name, "{msg}; will decide again");
                return Ended::Busy;
            }
            let _ = lock().freeze(&name, &msg, incident);
            if let Some(id) = incident {
                let _ = lock().update_incident(
                    id,
                    IncidentUpdate {
                        status: Some("failed"),
                        closed_at_ms: Some(now_ms()),
                        ..Default::default()
                    },
                );
            }
            notifier.send(
                "rollback_failed",
                &name,
                format!("{msg}; the service is frozen until a person unfreezes it"),
                json!({ "incident": incident }),
            );
            Ended::Failed
        }
    }
}

#[cfg(test)]
mod drain_tests {
    use super::*;

    #[test]
    fn records_are_drained_soon_while_they_come_fast_and_once_a_tick_otherwise() {
        let at = tokio::time::Instant::now();
        let eval = at + Duration::from_millis(70);
        // Just below the busy mark: the next drain is the evaluation's.
        assert_eq!(next_drain_at(at, BUSY_RECORDS - 1, eval), eval);
        assert_eq!(next_drain_at(at, 0, eval), eval);
        // At it and above: BUSY_DRAIN later.
        assert_eq!(next_drain_at(at, BUSY_RECORDS, eval), at + BUSY_DRAIN);
        assert_eq!(next_drain_at(at, 100_000, eval), at + BUSY_DRAIN);
        // Never later than the evaluation.
        let soon = at + Duration::from_millis(3);
        assert_eq!(next_drain_at(at, 100_000, soon), soon);
    }
}
