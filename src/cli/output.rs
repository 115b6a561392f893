//! What the read commands print: aligned tables for people, stable JSON for scripts.
//! Status is built from the ledger (so it works without a watcher) plus, when a watcher
//! answers, its live facts.

use std::path::Path;

use serde::Serialize;
use serde_json::{Value, json};

use super::CliError;
use crate::clock::{format_utc, now_ms};
use crate::ledger::{Ledger, ReleaseStatus};
use crate::watch::control::{self, Request};

pub(crate) fn print_json<T: Serialize + ?Sized>(value: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("output serializes")
    );
}

/// Prints rows as columns padded to the widest cell.
fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row.clone());
    }
}

pub(crate) fn releases(ledger: &Ledger, service: &str, json: bool) -> Result<i32, CliError> {
    let releases = ledger.releases(service)?;
    if json {
        print_json(&releases);
        return Ok(0);
    }
    if releases.is_empty() {
        println!("{service} has no releases yet");
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = releases
        .iter()
        .map(|r| {
            vec![
                format!("#{}", r.id),
                r.version.clone(),
                r.status.as_str().to_string(),
                format_utc(r.created_at_ms),
                r.activated_at_ms
                    .map(format_utc)
                    .unwrap_or_else(|| "-".into()),
                r.status_reason.clone().unwrap_or_default(),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "VERSION",
            "STATUS",
            "CREATED",
            "LAST ACTIVATED",
            "REASON",
        ],
        &rows,
    );
    Ok(0)
}

pub(crate) fn events(
    ledger: &Ledger,
    service: &str,
    limit: usize,
    json: bool,
) -> Result<i32, CliError> {
    let events = ledger.events(service, limit)?;
    if json {
        print_json(&events);
        return Ok(0);
    }
    for e in &events {
        println!("{}", event_line(e));
    }
    if events.is_empty() {
        println!("{service} has no events yet");
    }
    Ok(0)
}

/// One event as people read it.
pub(crate) fn event_line(e: &crate::ledger::Event) -> String {
    format!("{}  {:<18} {}", format_utc(e.ts_ms), e.kind, e.message)
}

/// The one-line summary of a finished deploy or rollback.
pub(crate) fn outcome(result: &Value) {
    let service = result["service"].as_str().unwrap_or("?");
    let version = result["active"]["version"].as_str().unwrap_or("?");
    let slot = result["active"]["slot"].as_str().unwrap_or("?");
    let switch_ms = result["switch_ms"].as_u64().unwrap_or(0);
    let verify_ms = result["verify"]["elapsed_ms"].as_u64().unwrap_or(0);
    if let Some(gap) = result["downtime_ms"].as_u64() {
        // Router `none`: one container replaced in place, with an honest gap.
        let what = if result["kind"] == "rollback" {
            "rolled back to"
        } else {
            "replaced by"
        };
        println!(
            "✓ {service} {what} {version} (container replaced: {gap} ms without an answer; verified in {verify_ms} ms)"
        );
        return;
    }
    match result["kind"].as_str() {
        Some("rollback") => {
            let how = if result["warm"].as_bool() == Some(true) {
                "warm: a traffic switch"
            } else {
                "cold: started, health-checked"
            };
            let from = result["from"]["version"].as_str();
            println!(
                "✓ {service} rolled back to {version} in slot {slot} ({how}; traffic back after {switch_ms} ms, verified in {verify_ms} ms){}",
                from.map(|f| format!("; {f} is marked bad"))
                    .unwrap_or_default()
            );
        }
        _ => println!(
            "✓ {service} {version} is serving from slot {slot} (traffic switched after {switch_ms} ms, verified in {verify_ms} ms)"
        ),
    }
}

/// One service's status: the JSON shape `status --json` promises.
pub(crate) fn service_status(
    ledger: &Ledger,
    service: &str,
    kube: Option<&crate::config::KubernetesConfig>,
    live: Option<&Value>,
) -> Result<Value, CliError> {
    let active = ledger.active_release(service)?;
    let operation = ledger.running_operation(service)?;
    let slots = ledger.slots(service)?;
    let watcher = ledger.lease_holder("@watcher")?;
    let active_slot = active
        .as_ref()
        .and_then(|a| slots.iter().find(|s| s.release_id == Some(a.id)))
        .map(|s| s.slot);
    // A warm slot past its bake time is still warm while the guard holds the bake (the
    // active release is not cleared yet): it stays until the watcher stops it.
    let warm = slots
        .iter()
        .find(|s| Some(s.slot) != active_slot && s.warm_until_ms.is_some() && watcher.is_some());
    let previous = ledger.previous_good(service)?;
    let guard = ledger.service_state(service)?;
    let last_drill = ledger.last_drill(service)?;
    let investigating = guard.investigating_release.is_some() && guard.acked_at_ms.is_none();
    let state = match (&operation, warm) {
        // A restore freezes the service while it runs: it says what is going on.
        (Some(op), _) if op.kind == "restore" => "restoring",
        _ if guard.frozen_reason.is_some() => "frozen",
        (Some(op), _) if op.kind == "rollback" => "rolling_back",
        (Some(op), _) if op.kind == "drill" => "drilling",
        (Some(_), _) => "deploying",
        _ if investigating => "investigating",
        (None, Some(w))
            if previous
                .as_ref()
                .is_some_and(|p| Some(p.id) == w.release_id)
                && previous
                    .as_ref()
                    .is_some_and(|p| p.status == ReleaseStatus::Previous) =>
        {
            "baking"
        }
        _ => "steady",
    };
    Ok(json!({
        "service": service,
        "state": state,
        "active": active.as_ref().map(|a| json!({
            "release": a.id,
            "version": a.version,
            "slot": active_slot,
            "since_ms": a.activated_at_ms,
            "kubernetes": a.spec.kubernetes.as_ref().map(kube_release_json),
        })),
        "previous": previous.as_ref().map(|p| {
            let warm = slots.iter().find(|s| s.release_id == Some(p.id) && watcher.is_some());
            json!({
                "release": p.id,
                "version": p.version,
                "status": p.status,
                "warm": warm.is_some(),
                "warm_until_ms": warm.and_then(|w| w.warm_until_ms),
                "kubernetes": p.spec.kubernetes.as_ref().map(kube_release_json),
            })
        }),
        "operation": operation.as_ref().map(|o| json!({
            "id": o.id, "kind": o.kind, "step": o.step, "started_at_ms": o.started_at_ms,
        })),
        "frozen": guard.frozen_reason.as_ref().map(|r| json!({ "reason": r, "since_ms": guard.frozen_at_ms })),
        "investigation": guard.investigating_release.map(|r| json!({
            "release": r,
            "since_ms": guard.investigating_since_ms,
            "deadline_ms": guard.investigating_deadline_ms,
            "acknowledged": guard.acked_at_ms.is_some(),
        })),
        "watcher": { "running": watcher.is_some(), "holder": watcher },
        "last_drill": last_drill.as_ref().map(drill_json),
        "kubernetes": kube.map(|k| json!({
            "namespace": k.namespace,
            "deployment": k.deployment,
            "container": k.container,
            "address": k.address.to_string(),
        })),
        "live": live,
    }))
}

/// A Kubernetes release as `status --json` shows it: the image its template runs (a
/// digest once pinned), the image as given, and its config copies.
fn kube_release_json(k: &crate::ledger::KubeRelease) -> Value {
    json!({
        "image": k.image,
        "reference": k.reference,
        "copies": k.copies.iter().map(|c| json!({
            "kind": c.kind, "source": c.source, "copy": c.copy,
        })).collect::<Vec<_>>(),
    })
}

/// A drill as `status --json`, `drill --json` and the dashboard's API show it.
pub(crate) fn drill_json(d: &crate::ledger::DrillRecord) -> Value {
    json!({
        "id": d.id,
        "outcome": d.outcome,
        "passed": d.passed(),
        "started_at_ms": d.started_at_ms,
        "finished_at_ms": d.finished_at_ms,
        "total_ms": d.total_ms,
        "budget_ms": d.budget_ms,
        "within_budget": d.within_budget(),
        "steps": d.steps,
        "error": d.error,
    })
}

/// The one line a drill gets: `passed at T: 812 ms of a 60000 ms budget`.
pub(crate) fn drill_line(d: &Value) -> String {
    let budget = if d["within_budget"] == true {
        "within"
    } else {
        "OVER"
    };
    format!(
        "{} at {}: {} ms, {budget} its {} ms budget",
        d["outcome"].as_str().unwrap_or("?"),
        d["finished_at_ms"]
            .as_i64()
            .map(format_utc)
            .unwrap_or_default(),
        d["total_ms"],
        d["budget_ms"]
    )
}

pub(crate) async fn status(
    config: Option<&Path>,
    state_dir: &Path,
    service: Option<&str>,
    json: bool,
) -> Result<i32, CliError> {
    let out = status_values(config, state_dir, service).await?;
    if json {
        match service {
            Some(_) => print_json(&out[0]),
            None => print_json(&out),
        }
        return Ok(0);
    }
    print_statuses(&out);
    Ok(0)
}

/// Every asked-for service's status (the shape `status --json` promises).
pub(crate) async fn status_values(
    config: Option<&Path>,
    state_dir: &Path,
    service: Option<&str>,
) -> Result<Vec<Value>, CliError> {
    let ledger = super::open_ledger(state_dir)?;
    let names: Vec<String> = match service {
        Some(s) => vec![s.to_string()],
        None => super::service_names(config, &ledger)?,
    };
    // The config, when it loads, says where a Kubernetes service's Deployment is.
    let cfg = super::load_config(config).ok();
    let mut out = Vec::new();
    for name in &names {
        let kube = cfg
            .as_ref()
            .and_then(|c| c.service(name))
            .and_then(|s| s.kubernetes.as_ref());
        let live = match control::call(
            state_dir,
            &Request::Live {
                service: name.clone(),
            },
            |_| {},
        )
        .await
        {
            Ok((0, v, _)) => Some(v),
            _ => None,
        };
        out.push(service_status(&ledger, name, kube, live.as_ref())?);
    }
    Ok(out)
}

pub(crate) fn print_statuses(out: &[Value]) {
    if out.is_empty() {
        println!("no services yet: deploy one with `ripcord deploy SERVICE VERSION`");
    }
    for s in out {
        print_status(s);
    }
}

fn print_status(s: &Value) {
    let name = s["service"].as_str().unwrap_or("?");
    let state = s["state"].as_str().unwrap_or("?");
    println!("{name}: {state}");
    match s["active"].as_object() {
        Some(a) => println!(
            "  active    {} (#{}) {} since {}",
            a["version"].as_str().unwrap_or("?"),
            a["release"],
            match s["kubernetes"].is_object() {
                // One Deployment, no slots.
                true => "applied".to_string(),
                false => format!("in slot {}", a["slot"].as_str().unwrap_or("-")),
            },
            a["since_ms"].as_i64().map(format_utc).unwrap_or_default()
        ),
        None => println!("  active    none"),
    }
    if let Some(k) = s["kubernetes"].as_object() {
        println!(
            "  runs as   Deployment {}/{} (container {}), answering at {}",
            k["namespace"].as_str().unwrap_or("?"),
            k["deployment"].as_str().unwrap_or("?"),
            k["container"].as_str().unwrap_or("?"),
            k["address"].as_str().unwrap_or("?")
        );
    }
    for (which, r) in [("active", &s["active"]), ("previous", &s["previous"])] {
        if let Some(k) = r["kubernetes"].as_object() {
            let copies: Vec<&str> = k["copies"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c["copy"].as_str())
                .collect();
            println!(
                "  template  {which} {}: image {}, config copies: {}",
                r["version"].as_str().unwrap_or("?"),
                k["image"].as_str().unwrap_or("?"),
                if copies.is_empty() {
                    "none".to_string()
                } else {
                    copies.join(", ")
                }
            );
        }
    }
    if let Some(p) = s["previous"].as_object() {
        let warm = match p["warm_until_ms"].as_i64() {
            Some(t) => format!("warm until {}", format_utc(t)),
            None if p["warm"].as_bool() == Some(true) => "warm".to_string(),
            None if s["kubernetes"].is_object() => {
                "a rollback applies its pod template again".to_string()
            }
            None => "cold: a rollback starts it first".to_string(),
        };
        println!(
            "  previous  {} (#{}), {warm}",
            p["version"].as_str().unwrap_or("?"),
            p["release"]
        );
        let bake = &s["live"]["guard"]["bake"];
        if p["warm"] == true && bake["state"] == "hold" {
            let past = p["warm_until_ms"].as_i64().is_some_and(|t| t <= now_ms());
            println!(
                "  bake      {} until the active release is cleared: {}",
                if past {
                    "held past its time"
                } else {
                    "goes on"
                },
                bake["why"].as_str().unwrap_or("?")
            );
        }
    }
    if let Some(op) = s["operation"].as_object() {
        println!(
            "  running   {} #{} at step {}",
            op["kind"].as_str().unwrap_or("?"),
            op["id"],
            op["step"].as_str().unwrap_or("?")
        );
    }
    if let Some(f) = s["frozen"].as_object() {
        println!(
            "  FROZEN    {} (since {}): `ripcord unfreeze {name} --reason TEXT` to allow changes",
            f["reason"].as_str().unwrap_or("?"),
            f["since_ms"].as_i64().map(format_utc).unwrap_or_default()
        );
    }
    if let Some(i) = s["investigation"].as_object() {
        let acked = i["acknowledged"].as_bool() == Some(true);
        println!(
            "  investigating release #{}: {}",
            i["release"],
            if acked {
                "acknowledged, no automatic rollback".to_string()
            } else {
                format!(
                    "rolled back at {} unless `ripcord ack {name}`",
                    i["deadline_ms"]
                        .as_i64()
                        .map(format_utc)
                        .unwrap_or_default()
                )
            }
        );
    }
    for slot in s["live"]["slots"].as_array().into_iter().flatten() {
        if let Some(c) = slot["container"].as_object() {
            println!(
                "  container {} {} ({}) in slot {}{}",
                c["name"].as_str().unwrap_or("?"),
                slot["version"].as_str().unwrap_or("?"),
                c["id"]
                    .as_str()
                    .map(|i| &i[..i.len().min(12)])
                    .unwrap_or("?"),
                slot["slot"].as_str().unwrap_or("?"),
                if slot["running"].as_bool() == Some(false) {
                    ", exited"
                } else {
                    ""
                }
            );
        }
    }
    if let Some(rules) = s["live"]["guard"]["rules"].as_object() {
        for (rule, verdict) in rules {
            println!("  guard     {rule:<12} {}", verdict.as_str().unwrap_or("?"));
        }
    }
    let warm = &s["live"]["guard"]["warm_probe"];
    if let Some(detail) = warm["detail"].as_str() {
        println!(
            "  warm      {} rollback target: {detail}",
            if warm["ok"] == true { "✓" } else { "✗" }
        );
    }
    match s["last_drill"].as_object() {
        Some(_) => println!("  drill     {}", drill_line(&s["last_drill"])),
        None => println!("  drill     never: `ripcord drill {name}` rehearses the rollback"),
    }
    match s["watcher"]["holder"].as_str() {
        Some(h) => println!("  watcher   {h}"),
        None => println!("  watcher   not running: start `ripcord watch`"),
    }
    if let Some(p) = s["live"]["proxy"].as_object() {
        println!(
            "  proxy     {} served {} requests ({} upstream errors)",
            p["listen"].as_str().unwrap_or("?"),
            p["requests"],
            p["upstream_errors"]
        );
    }
    if let Some(a) = s["live"]["access_log"].as_object() {
        println!("  access log {}", access_log_line(a));
    }
}

/// `PATH: N lines, M malformed, K unattributed` (and the dropped, when any were).
fn access_log_line(a: &serde_json::Map<String, Value>) -> String {
    let n = |key: &str| a.get(key).and_then(Value::as_u64).unwrap_or(0);
    let mut line = format!(
        "{}: {} lines, {} malformed, {} unattributed",
        a.get("path").and_then(Value::as_str).unwrap_or("?"),
        n("lines"),
        n("malformed"),
        n("unattributed")
    );
    if n("dropped") > 0 {
        line.push_str(&format!(
            ", {} dropped (the guard fell behind)",
            n("dropped")
        ));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A running restore says so, though it froze the service; once it is over the
    /// freeze it left (if any) shows.
    #[test]
    fn a_running_restore_is_restoring_not_just_frozen() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = Ledger::open(dir.path()).unwrap();
        let op = l
            .begin_operation(
                "web",
                crate::ledger::OperationKind::Restore,
                None,
                None,
                Some("database restore from backup #1"),
            )
            .unwrap();
        l.freeze("web", "database restore from backup #1 in progress", None)
            .unwrap();
        let s = service_status(&l, "web", None, None).unwrap();
        assert_eq!(s["state"], "restoring", "{s}");
        l.finish_operation(op, "interrupted", Some("killed"))
            .unwrap();
        let s = service_status(&l, "web", None, None).unwrap();
        assert_eq!(s["state"], "frozen", "{s}");
    }

    #[test]
    fn the_access_log_line_counts_what_was_not_used() {
        let live = json!({
            "path": "/var/log/nginx/app.log", "lines": 120, "malformed": 2,
            "unattributed": 5, "dropped": 0,
        });
        assert_eq!(
            access_log_line(live.as_object().unwrap()),
            "/var/log/nginx/app.log: 120 lines, 2 malformed, 5 unattributed"
        );
        let live = json!({ "path": "/l", "lines": 9, "dropped": 3 });
        assert_eq!(
            access_log_line(live.as_object().unwrap()),
            "/l: 9 lines, 0 malformed, 0 unattributed, 3 dropped (the guard fell behind)"
        );
    }
}
