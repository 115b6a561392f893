//! The guard's commands for people: freeze and unfreeze a service, acknowledge an
//! investigation, and read incidents. They write the ledger directly (a running
//! watcher picks the change up within a second), so they work with or without it.

use std::path::Path;

use serde_json::json;

use super::output::print_json;
use super::{CliError, open_ledger};
use crate::clock::format_utc;
use crate::ledger::{Incident, Ledger};

fn open_or_create(state_dir: &Path) -> Result<Ledger, CliError> {
    crate::watch::ensure_state_dir(state_dir).map_err(|e| CliError::new(1, e.to_string()))?;
    Ok(Ledger::open(state_dir)?)
}

pub(super) fn freeze(
    state_dir: &Path,
    service: &str,
    reason: &str,
    json: bool,
) -> Result<i32, CliError> {
    let mut ledger = open_or_create(state_dir)?;
    let done = ledger.freeze_by_person(service, reason)?;
    if json {
        print_json(&serde_json::to_value(&done).unwrap_or_default());
    } else if let Some(already) = &done.was {
        println!("{service} was already frozen ({already}); it stays frozen for: {reason}");
    } else {
        println!(
            "✓ {service} is frozen: no deploy and no rollback, automatic or manual, until \
             `ripcord unfreeze {service} --reason TEXT` (incident #{})",
            done.incident.unwrap_or_default()
        );
    }
    Ok(0)
}

pub(super) fn unfreeze(
    state_dir: &Path,
    service: &str,
    reason: &str,
    json: bool,
) -> Result<i32, CliError> {
    let mut ledger = open_ledger(state_dir)?;
    let done = ledger.unfreeze_by_person(service, reason)?;
    if json {
        print_json(&serde_json::to_value(&done).unwrap_or_default());
    } else if done.changed {
        println!("✓ {service} is unfrozen: deploys and rollbacks are allowed again");
    } else {
        println!("{service} was not frozen");
    }
    Ok(0)
}

pub(super) fn ack(state_dir: &Path, service: &str, json: bool) -> Result<i32, CliError> {
    let mut ledger = open_ledger(state_dir)?;
    match ledger.ack(service)? {
        Some(release) => {
            if json {
                print_json(
                    &json!({ "service": service, "acknowledged": true, "release": release }),
                );
            } else {
                println!(
                    "✓ acknowledged: the guard will not roll back release #{release} of {service} for this investigation"
                );
            }
            Ok(0)
        }
        None => Err(CliError::new(
            1,
            format!(
                "{service} has no investigation to acknowledge (see `ripcord status {service}`)"
            ),
        )),
    }
}

pub(super) fn incident_list(
    ledger: &Ledger,
    service: Option<&str>,
    json: bool,
) -> Result<i32, CliError> {
    let incidents = ledger.incidents(service)?;
    if json {
        print_json(&incidents.iter().map(brief).collect::<Vec<_>>());
        return Ok(0);
    }
    if incidents.is_empty() {
        println!("no incidents");
    }
    for i in &incidents {
        println!(
            "#{:<4} {:<10} {:<9} {:<16} {}  {}",
            i.id,
            i.service,
            i.status,
            i.rule,
            format_utc(i.opened_at_ms),
            i.summary
        );
    }
    Ok(0)
}

fn brief(i: &Incident) -> serde_json::Value {
    json!({
        "id": i.id, "service": i.service, "release_id": i.release_id, "status": i.status,
        "rule": i.rule, "summary": i.summary, "opened_at_ms": i.opened_at_ms,
        "first_bad_at_ms": i.first_bad_at_ms, "switched_at_ms": i.switched_at_ms,
        "verified_at_ms": i.verified_at_ms, "closed_at_ms": i.closed_at_ms, "impact": i.impact,
    })
}

fn get(ledger: &Ledger, id: i64) -> Result<Incident, CliError> {
    ledger.incident(id)?.ok_or_else(|| {
        CliError::new(
            1,
            format!("no incident #{id} (see `ripcord incident list`)"),
        )
    })
}

/// The incident's part of the service timeline.
fn timeline(ledger: &Ledger, i: &Incident) -> Result<Vec<crate::ledger::Event>, CliError> {
    let lead_in = i
        .first_bad_at_ms
        .unwrap_or(i.opened_at_ms)
        .min(i.opened_at_ms)
        - 60_000;
    // It starts at the deploy of the release it is about (within a day), as the report
    // does: that deploy is the first line a reader wants.
    let deployed = ledger
        .events_between(&i.service, i.opened_at_ms - 86_400_000, i.opened_at_ms)?
        .into_iter()
        .rev()
        .find(|e| {
            e.kind == "deploy_started" && e.release_id == i.release_id && i.release_id.is_some()
        })
        .map(|e| e.ts_ms);
    let from = deployed.map_or(lead_in, |d| d.min(lead_in));
    let to = i.closed_at_ms.or(i.verified_at_ms).unwrap_or(i64::MAX / 2) + 10_000;
    Ok(ledger.events_between(&i.service, from, to)?)
}

pub(super) fn incident_show(ledger: &Ledger, id: i64, json: bool) -> Result<i32, CliError> {
    let i = get(ledger, id)?;
    let events = timeline(ledger, &i)?;
    if json {
        let mut v = brief(&i);
        v["decision"] = i.decision.clone().unwrap_or_default();
        v["timeline"] = serde_json::to_value(&events).unwrap_or_default();
        print_json(&v);
        return Ok(0);
    }
    println!(
        "incident #{} on {}: {} ({})",
        i.id, i.service, i.status, i.rule
    );
    println!("  {}", i.summary);
    if let Some(reasons) = i.decision.as_ref().and_then(|d| d["reasons"].as_array()) {
        for r in reasons {
            println!("  decision: {}", r.as_str().unwrap_or_default());
        }
    }
    if let Some(imp) = &i.impact {
        println!(
            "  impact: {} of {} requests failed; first bad → switch {} ms, → verified {} ms",
            imp["failed_requests"],
            imp["total_requests"],
            imp["first_bad_to_switch_ms"],
            imp["first_bad_to_verified_ms"]
        );
    }
    println!("timeline:");
    for e in &events {
        println!("  {}  {:<18} {}", format_utc(e.ts_ms), e.kind, e.message);
    }
    Ok(0)
}

pub(super) fn incident_report(
    ledger: &Ledger,
    id: i64,
    out: &Path,
    json: bool,
) -> Result<i32, CliError> {
    let i = get(ledger, id)?;
    let events = ledger.events(&i.service, 100_000)?;
    let releases = ledger.releases(&i.service)?;
    let path = crate::report::write(
        out,
        &crate::report::ReportInput {
            incident: &i,
            events: &events,
            releases: &releases,
        },
    )?;
    if json {
        print_json(&json!({ "incident": id, "report": path }));
    } else {
        println!("✓ wrote {}", path.display());
    }
    Ok(0)
}

/// `ripcord dashboard`: the dashboard's address (from the config) and its token (made
/// on first use, owner-only in the state dir).
pub(super) fn dashboard(
    config: Option<&Path>,
    state_dir: &Path,
    token_only: bool,
    json: bool,
) -> Result<i32, CliError> {
    use crate::watch::dashboard::token;
    crate::watch::ensure_state_dir(state_dir).map_err(|e| CliError::new(1, e.to_string()))?;
    let t = token::load_or_create(state_dir).map_err(|e| CliError::new(1, e.to_string()))?;
    if token_only && !json {
        println!("{t}");
        return Ok(0);
    }
    let cfg = super::load_config(config)?;
    let url = cfg.dashboard.map(|d| format!("http://{}/", d.addr));
    if json {
        print_json(&json!({
            "url": url,
            "token": t,
            "token_file": token::path(state_dir),
        }));
        return Ok(0);
    }
    match url {
        Some(u) => println!("dashboard: {u} (served by `ripcord watch`)"),
        None => println!("dashboard: off (`[watch] dashboard_listen = \"off\"`)"),
    }
    println!("token:     {t}");
    println!(
        "           (from {}; reading needs no token, every action does)",
        token::path(state_dir).display()
    );
    Ok(0)
}

pub(super) fn runbook(
    config: Option<&Path>,
    state_dir: &Path,
    service: Option<&str>,
    out: Option<&Path>,
    json: bool,
) -> Result<i32, CliError> {
    let cfg = super::load_config(config)?;
    let names: Vec<&String> = match service {
        Some(s) => vec![
            cfg.services
                .get_key_value(s)
                .map(|(k, _)| k)
                .ok_or_else(|| super::unknown_service(&cfg, s))?,
        ],
        None => cfg.services.keys().collect(),
    };
    // The ledger is optional: a runbook can be written before the first deploy.
    let ledger = state_dir
        .join(crate::ledger::FILE_NAME)
        .exists()
        .then(|| Ledger::open(state_dir).ok())
        .flatten();
    let mut facts_owned = Vec::new();
    for name in &names {
        let active = ledger
            .as_ref()
            .and_then(|l| l.active_release(name).ok().flatten());
        let previous = ledger
            .as_ref()
            .and_then(|l| l.previous_good(name).ok().flatten());
        let drill = ledger
            .as_ref()
            .and_then(|l| l.last_drill(name).ok().flatten());
        facts_owned.push((
            cfg.services.get(*name).expect("listed above"),
            active,
            previous,
            drill,
        ));
    }
    let facts: Vec<crate::report::runbook::ServiceFacts<'_>> = facts_owned
        .iter()
        .map(
            |(cfg, active, previous, drill)| crate::report::runbook::ServiceFacts {
                cfg,
                active: active.as_ref(),
                previous: previous.as_ref(),
                last_drill: drill.as_ref(),
            },
        )
        .collect();
    let md = crate::report::runbook::markdown(&facts, &cfg.path.display().to_string());
    match out {
        Some(path) => {
            let dir = path
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let name = path.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
                CliError::new(
                    super::exit::USAGE,
                    format!("{}: not a file name ripcord can write", path.display()),
                )
            })?;
            crate::report::write_atomic(dir, name, md.as_bytes()).map_err(|e| {
                CliError::new(super::exit::FAILURE, format!("{}: {e}", path.display()))
            })?;
            if json {
                print_json(&json!({ "runbook": path }));
            } else {
                println!("✓ wrote {}", path.display());
            }
        }
        None if json => print_json(&json!({ "markdown": md })),
        None => print!("{md}"),
    }
    Ok(0)
}
