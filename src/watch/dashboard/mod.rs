//! The web dashboard `ripcord watch` serves (on `[watch] dashboard_listen`, loopback by
//! default): an overview of every service, a live page per service (Server-Sent Events,
//! one point a second over the last 15 minutes), the incidents with their reports, and
//! the actions a person takes (rollback, freeze, unfreeze, ack).
//!
//! Reading needs no token. Every action needs the bearer token of `dashboard.token` in
//! the state dir (see [`token`]), sent as `Authorization: Bearer …`: a header a browser
//! never adds on its own, so another site cannot forge an action (no cookie is involved,
//! and no CORS header ever allows a cross-origin caller); requests that a browser marks
//! as cross-site are refused as well. Actions run through the same code as the CLI:
//! rollbacks through [`ServiceExec::rollback`](crate::execute::ServiceExec::rollback),
//! like the control socket; freeze, unfreeze and ack through the ledger's person actions.
//!
//! The pages and their script are embedded in the binary: nothing is fetched from
//! anywhere but the watcher itself.

pub mod token;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use super::Service;
use super::guard::BakeEvidence;
use crate::clock::now_ms;
use crate::execute::{RollbackRequest, SharedLedger};
use crate::ledger::{Event, Incident, Ledger, LedgerError};

/// How far back the service page's chart reaches.
pub const CHART_SECS: i64 = 900;
/// How far back the overview's sparklines reach.
const SPARK_SECS: i64 = 120;
/// How often the live streams send.
const STREAM_EVERY: Duration = Duration::from_secs(1);
/// Points re-sent on every tick: a second's bucket may still grow a little after it
/// ends (records reach the guard within a tick), so the page replaces them by time.
const RESENT_POINTS: i64 = 3;

const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");
const PAGE: &str = include_str!("assets/page.html");

/// What the handlers share.
pub(super) struct Dashboard {
    pub services: Arc<BTreeMap<String, Service>>,
    pub ledger: SharedLedger,
    pub token: String,
}

type Shared = Arc<Dashboard>;

impl Dashboard {
    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Serves the dashboard until the watcher ends.
pub(super) async fn serve(listener: TcpListener, dashboard: Dashboard) {
    let app = router(Arc::new(dashboard));
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "the dashboard stopped serving");
    }
}

fn router(d: Shared) -> Router {
    Router::new()
        .route("/", get(|| async { page("overview", "") }))
        .route(
            "/services/{name}",
            get(|Path(name): Path<String>| async move { page("service", &name) }),
        )
        .route("/incidents", get(|| async { page("incidents", "") }))
        .route("/incidents/{id}", get(incident_page))
        .route("/incidents/{id}/chart.svg", get(incident_chart))
        .route(
            "/assets/app.js",
            get(|| async { asset(APP_JS, "text/javascript") }),
        )
        .route(
            "/assets/app.css",
            get(|| async { asset(APP_CSS, "text/css") }),
        )
        .route("/api/overview", get(api_overview))
        .route("/api/stream", get(overview_stream))
        .route("/api/incidents", get(api_incidents))
        .route("/api/services/{name}", get(api_service))
        .route("/api/services/{name}/stream", get(service_stream))
        .route("/api/services/{name}/{action}", post(action))
        .with_state(d)
}

/// The one HTML shell: the script renders the page named by `data-page`.
fn page(kind: &str, subject: &str) -> Response {
    let html = PAGE
        .replace("{{page}}", kind)
        .replace("{{subject}}", &escape(subject));
    ([(header::CACHE_CONTROL, "no-store")], Html(html)).into_response()
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// An error as the API answers it: a status and `{"error": "..."}`.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, axum::Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<LedgerError> for ApiError {
    fn from(e: LedgerError) -> Self {
        ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }
}

fn not_found(what: String) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, what)
}

fn service<'a>(d: &'a Dashboard, name: &str) -> Result<&'a Service, ApiError> {
    d.services.get(name).ok_or_else(|| {
        not_found(format!(
            "no service `{name}` in this watcher's config (it has: {})",
            d.services.keys().cloned().collect::<Vec<_>>().join(", ")
        ))
    })
}

// ---- reading ------------------------------------------------------------------------

/// One service as the overview shows it: releases, state, each trigger's verdict.
fn summary(d: &Dashboard, name: &str, svc: &Service) -> Result<Value, LedgerError> {
    let (active, previous, state, running, open_incident, drill) = {
        let l = d.ledger();
        (
            l.active_release(name)?,
            l.previous_good(name)?,
            l.service_state(name)?,
            l.running_operation(name)?,
            l.open_incident_of(name)?,
            l.last_drill(name)?,
        )
    };
    let view = svc.view.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let target = svc.exec.router.target();
    let warm: Vec<Value> = svc
        .exec
        .slots()
        .into_iter()
        .filter(|(slot, sp)| target.as_ref().is_none_or(|t| t.slot != *slot) && sp.running())
        .map(|(slot, sp)| {
            json!({
                "slot": slot,
                "release": sp.release.id,
                "version": sp.release.version,
                "warm_until_ms": sp.warm_until_ms,
            })
        })
        .collect();
    // A restore freezes the service while it runs: it says what is going on.
    let (status, why) = if let Some(op) = running.as_ref().filter(|o| o.kind == "restore") {
        ("restoring", format!("operation #{}: {}", op.id, op.step))
    } else if let Some(r) = &state.frozen_reason {
        ("frozen", r.clone())
    } else if let Some(rel) = state.investigating_release {
        (
            "investigating",
            format!(
                "release #{rel} is being investigated{}",
                if state.acked_at_ms.is_some() {
                    " (acknowledged)"
                } else {
                    ""
                }
            ),
        )
    } else if let Some(op) = running.as_ref().filter(|o| o.kind == "rollback") {
        ("rolling back", format!("operation #{}: {}", op.id, op.step))
    } else if let Some(op) = running.as_ref().filter(|o| o.kind == "drill") {
        ("drilling", format!("operation #{}: {}", op.id, op.step))
    } else if let Some(op) = &running {
        ("deploying", format!("operation #{}: {}", op.id, op.step))
    } else if active.is_none() {
        ("idle", "nothing deployed yet".to_string())
    } else {
        match &view.bake {
            BakeEvidence::Clear => (
                "healthy",
                "the guard's evidence clears the active release".into(),
            ),
            BakeEvidence::Hold(why) => ("watching", why.clone()),
            BakeEvidence::Unknown => ("watching", "not judged yet".into()),
        }
    };
    let release = |r: &crate::ledger::Release| {
        json!({
            "id": r.id,
            "version": r.version,
            "status": r.status,
            "activated_at_ms": r.activated_at_ms,
            "migration_head": r.migration_head,
        })
    };
    Ok(json!({
        "name": name,
        "state": status,
        "why": why,
        "entry": svc.exec.cfg.entry(),
        "active": active.as_ref().map(release),
        "previous": previous.as_ref().map(release),
        "warm": warm,
        "rules": view.rules,
        "bake": view.bake,
        "open_incident": open_incident.as_ref().map(brief),
        "last_drill": drill.map(|d| {
            let mut j = json!(d);
            j["within_budget"] = json!(d.within_budget());
            j
        }),
    }))
}

/// The release history, newest first.
fn history(releases: &[crate::ledger::Release]) -> Value {
    releases
        .iter()
        .take(50)
        .map(|r| {
            json!({
                "id": r.id,
                "version": r.version,
                "status": r.status,
                "status_reason": r.status_reason,
                "created_at_ms": r.created_at_ms,
                "activated_at_ms": r.activated_at_ms,
                "migration_head": r.migration_head,
            })
        })
        .collect()
}

fn brief(i: &Incident) -> Value {
    json!({
        "id": i.id,
        "service": i.service,
        "status": i.status,
        "rule": i.rule,
        "summary": i.summary,
        "opened_at_ms": i.opened_at_ms,
        "first_bad_at_ms": i.first_bad_at_ms,
        "switched_at_ms": i.switched_at_ms,
        "verified_at_ms": i.verified_at_ms,
    })
}

/// The per-second points of the service's traffic since `from_ms`.
fn points(svc: &Service, from_ms: i64, to_ms: i64) -> Value {
    let pts = svc
        .series
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .points(from_ms, to_ms);
    json!(pts)
}

fn overview(d: &Dashboard) -> Result<Value, LedgerError> {
    let now = now_ms();
    let mut out = Vec::new();
    for (name, svc) in d.services.iter() {
        let mut s = summary(d, name, svc)?;
        s["spark"] = points(svc, now - SPARK_SECS * 1000, now);
        out.push(s);
    }
    Ok(json!({ "at_ms": now, "services": out }))
}

async fn api_overview(State(d): State<Shared>) -> Result<axum::Json<Value>, ApiError> {
    Ok(axum::Json(overview(&d)?))
}

/// Which events the chart marks, and as what.
fn marker(e: &Event) -> Option<&'static str> {
    Some(match e.kind.as_str() {
        "deploy_started" => "deploy",
        "trigger_fired" => "trigger",
        "traffic_switched" => "switch",
        "deploy_succeeded" | "rollback_succeeded" => "verified",
        "deploy_failed" | "rollback_failed" => "failed",
        "frozen" => "frozen",
        _ => return None,
    })
}

fn event_json(e: &Event) -> Value {
    json!({
        "id": e.id,
        "ts_ms": e.ts_ms,
        "kind": e.kind,
        "message": e.message,
        "release": e.release_id,
        "incident": e.incident_id,
        "marker": marker(e),
    })
}

async fn api_service(
    State(d): State<Shared>,
    Path(name): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    let svc = service(&d, &name)?;
    let now = now_ms();
    let mut v = summary(&d, &name, svc)?;
    let (releases, events, incidents) = {
        let l = d.ledger();
        (
            l.releases(&name)?,
            l.events(&name, 200)?,
            l.incidents(Some(&name))?,
        )
    };
    v["releases"] = history(&releases);
    v["events"] = events.iter().map(event_json).collect();
    v["incidents"] = incidents.iter().take(20).map(brief).collect();
    v["points"] = points(svc, now - CHART_SECS * 1000, now);
    v["chart_secs"] = json!(CHART_SECS);
    v["at_ms"] = json!(now);
    Ok(axum::Json(v))
}

async fn api_incidents(State(d): State<Shared>) -> Result<axum::Json<Value>, ApiError> {
    let all = d.ledger().incidents(None)?;
    Ok(axum::Json(json!({
        "incidents": all.iter().map(brief).collect::<Vec<_>>(),
    })))
}

/// Every second: the overview, whole (it is small).
async fn overview_stream(
    State(d): State<Shared>,
) -> Sse<impl futures_util::Stream<Item = Result<SseEvent, Infallible>>> {
    let stream = futures_util::stream::unfold(d, |d| async move {
        tokio::time::sleep(STREAM_EVERY).await;
        let data = match overview(&d) {
            Ok(v) => v,
            Err(e) => json!({ "error": e.to_string() }),
        };
        Some((
            Ok(SseEvent::default().event("overview").data(data.to_string())),
            d,
        ))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// Every second: the latest points, the summary, new events and the incident list.
async fn service_stream(
    State(d): State<Shared>,
    Path(name): Path<String>,
) -> Result<Sse<impl futures_util::Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    service(&d, &name)?;
    let last_event = d.ledger().events(&name, 1)?.last().map_or(0, |e| e.id);
    let stream =
        futures_util::stream::unfold((d, name, last_event), |(d, name, last)| async move {
            tokio::time::sleep(STREAM_EVERY).await;
            let (data, last) = match tick(&d, &name, last) {
                Ok(v) => v,
                Err(e) => (json!({ "error": e.to_string() }), last),
            };
            let event = SseEvent::default().event("tick").data(data.to_string());
            Some((Ok(event), (d, name, last)))
        });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

fn tick(d: &Dashboard, name: &str, last_event: i64) -> Result<(Value, i64), LedgerError> {
    let svc = &d.services[name];
    let now = now_ms();
    let mut v = summary(d, name, svc)?;
    let (events, incidents, releases) = {
        let l = d.ledger();
        (
            l.events_after(name, last_event, 500)?,
            l.incidents(Some(name))?,
            l.releases(name)?,
        )
    };
    let last = events.last().map_or(last_event, |e| e.id);
    v["points"] = points(svc, now - RESENT_POINTS * 1000, now);
    v["events"] = events.iter().map(event_json).collect();
    v["incidents"] = incidents.iter().take(20).map(brief).collect();
    v["releases"] = history(&releases);
    v["at_ms"] = json!(now);
    Ok((v, last))
}

// ---- incidents ----------------------------------------------------------------------

fn report_input(
    d: &Dashboard,
    id: i64,
) -> Result<(Incident, Vec<Event>, Vec<crate::ledger::Release>), ApiError> {
    let l = d.ledger();
    let i = l
        .incident(id)?
        .ok_or_else(|| not_found(format!("no incident #{id}")))?;
    let events = l.events(&i.service, 100_000)?;
    let releases = l.releases(&i.service)?;
    Ok((i, events, releases))
}

async fn incident_page(State(d): State<Shared>, Path(id): Path<i64>) -> Result<Response, ApiError> {
    let (i, events, releases) = report_input(&d, id)?;
    let input = crate::report::ReportInput {
        incident: &i,
        events: &events,
        releases: &releases,
    };
    let chart = crate::report::chart_svg(&input)
        .is_some()
        .then(|| format!("/incidents/{id}/chart.svg"));
    let md = crate::report::markdown(&input, chart.as_deref());
    let mut body = String::new();
    let parser = pulldown_cmark::Parser::new_ext(&md, pulldown_cmark::Options::ENABLE_TABLES);
    // Raw HTML in the Markdown (from an event's message, say) is shown as text.
    let parser = parser.map(|ev| match ev {
        pulldown_cmark::Event::Html(t) | pulldown_cmark::Event::InlineHtml(t) => {
            pulldown_cmark::Event::Text(t)
        }
        ev => ev,
    });
    pulldown_cmark::html::push_html(&mut body, parser);
    let html = PAGE
        .replace("{{page}}", "incident")
        .replace("{{subject}}", &id.to_string())
        .replace(
            "<main id=\"main\"></main>",
            &format!(
                "<main id=\"main\"><p class=\"crumbs\"><a href=\"/\">overview</a> › \
                 <a href=\"/services/{svc}\">{svc}</a> › <a href=\"/incidents\">incidents</a>\
                 </p><article class=\"report\" data-incident=\"{id}\">{body}</article></main>",
                svc = escape(&i.service)
            ),
        );
    Ok(([(header::CACHE_CONTROL, "no-store")], Html(html)).into_response())
}

async fn incident_chart(
    State(d): State<Shared>,
    Path(id): Path<i64>,
) -> Result<Response, ApiError> {
    let (i, events, releases) = report_input(&d, id)?;
    let svg = crate::report::chart_svg(&crate::report::ReportInput {
        incident: &i,
        events: &events,
        releases: &releases,
    })
    .ok_or_else(|| not_found(format!("incident #{id} has no series to chart")))?;
    Ok(([(header::CONTENT_TYPE, "image/svg+xml")], svg).into_response())
}

// ---- actions ------------------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
struct ActionBody {
    #[serde(default)]
    reason: Option<String>,
}

/// Refuses a request without the token, or one a browser says comes from another site.
fn authorize(d: &Dashboard, headers: &HeaderMap) -> Result<(), ApiError> {
    let cross_site = headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == "cross-site");
    let origin_mismatch = match (
        headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()),
        headers.get(header::HOST).and_then(|v| v.to_str().ok()),
    ) {
        (Some(origin), Some(host)) => origin.split_once("://").map(|(_, h)| h) != Some(host),
        _ => false,
    };
    if cross_site || origin_mismatch {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            "refused: the request comes from another site".into(),
        ));
    }
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        None => Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "refused: actions need the dashboard token (`ripcord dashboard` shows it)".into(),
        )),
        Some(t) if token::matches(&d.token, t) => Ok(()),
        Some(_) => Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "refused: that is not the dashboard token (`ripcord dashboard` shows it)".into(),
        )),
    }
}

async fn action(
    State(d): State<Shared>,
    Path((name, action)): Path<(String, String)>,
    headers: HeaderMap,
    body: Option<axum::Json<ActionBody>>,
) -> Result<axum::Json<Value>, ApiError> {
    authorize(&d, &headers)?;
    let svc = service(&d, &name)?;
    let reason = body
        .and_then(|b| b.0.reason)
        .map(|r| r.trim().to_string())
        .filter(|r| !r.is_empty());
    let need_reason = |what: &str| {
        reason.clone().ok_or_else(|| {
            ApiError(
                StatusCode::BAD_REQUEST,
                format!("{what} needs a reason: say why, for the ledger and the incident"),
            )
        })
    };
    let result = match action.as_str() {
        "rollback" => {
            let reason = need_reason("a rollback")?;
            let exec = svc.exec.clone();
            let req = RollbackRequest {
                to: None,
                reason: Some(format!("{reason} (from the dashboard)")),
                force: false,
            };
            // Its own task, as from the control socket: a closed page does not cancel a
            // rollback halfway.
            let outcome = tokio::spawn(async move { exec.rollback(req, None).await })
                .await
                .map_err(|e| {
                    ApiError(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("the rollback task failed: {e}"),
                    )
                })?
                .map_err(|e| ApiError(StatusCode::CONFLICT, e.to_string()))?;
            serde_json::to_value(outcome).unwrap_or_default()
        }
        "freeze" => {
            let reason = need_reason("a freeze")?;
            serde_json::to_value(d.ledger().freeze_by_person(&name, &reason)?).unwrap_or_default()
        }
        "unfreeze" => {
            let reason = need_reason("an unfreeze")?;
            serde_json::to_value(d.ledger().unfreeze_by_person(&name, &reason)?).unwrap_or_default()
        }
        "ack" => match d.ledger().ack(&name)? {
            Some(release) => json!({ "service": name, "acknowledged": true, "release": release }),
            None => {
                return Err(ApiError(
                    StatusCode::CONFLICT,
                    format!("{name} has no investigation to acknowledge"),
                ));
            }
        },
        other => {
            return Err(not_found(format!(
                "no action `{other}`: rollback, freeze, unfreeze or ack"
            )));
        }
    };
    Ok(axum::Json(
        json!({ "ok": true, "action": action, "result": result }),
    ))
}

/// HTML-escapes text put into a page.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}
