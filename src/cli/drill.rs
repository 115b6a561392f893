//! `ripcord drill SERVICE`: the rollback path rehearsed through the watcher (back to the
//! previous release, verify, forward again, verify, every step timed against the
//! budget); `--dry-run` shows the plan and the last drill from the config and the ledger
//! alone, touching nothing.

use std::path::Path;

use serde_json::{Value, json};

use super::control::Request;
use super::output::{self, drill_json, drill_line};
use super::{CliError, call_watcher, load_config, open_ledger, unknown_service};
use crate::config::duration::unit_text;

pub(crate) async fn run(
    config: Option<&Path>,
    state_dir: &Path,
    service: &str,
    dry_run: bool,
    json: bool,
) -> Result<i32, CliError> {
    if dry_run {
        return plan(config, state_dir, service, json);
    }
    let request = Request::Drill {
        service: service.to_string(),
    };
    let (exit, result, error) =
        call_watcher(state_dir, &request, format!("drilling {service}"), json).await?;
    if json {
        output::print_json(&json!({
            "ok": exit == 0,
            "exit": exit,
            "result": result,
            "error": error,
        }));
        return Ok(exit);
    }
    if result["steps"].is_array() {
        print_steps(&result["steps"]);
    }
    let total = result["total_ms"].as_u64().unwrap_or(0);
    let budget = result["budget_ms"].as_u64().unwrap_or(0);
    match (exit, error) {
        (0, _) => {
            println!(
                "✓ {service} drill passed: {} → {} → {} in {total} ms (budget {budget} ms)",
                result["current"]["version"].as_str().unwrap_or("?"),
                result["previous"]["version"].as_str().unwrap_or("?"),
                result["current"]["version"].as_str().unwrap_or("?"),
            );
            if let Some(p) = result["proxied"].as_object() {
                println!(
                    "  through the proxy meanwhile: {} requests, {} failed",
                    p["requests"], p["failed"]
                );
            }
            if let Some(d) = result["downtime_ms"].as_u64() {
                println!(
                    "  {d} ms without an answer on the published address (router \"none\": \
                     two containers cannot publish one port; a real rollback has the same gap)"
                );
            }
            if result["within_budget"] == false {
                eprintln!(
                    "⚠ over budget: the drill took {total} ms, the budget is {budget} ms \
                     (`drill_budget`); the exit code stays 0, `doctor` warns until a drill \
                     is within it"
                );
            }
        }
        (_, Some(e)) => eprintln!("✗ {e}"),
        (_, None) => eprintln!("✗ the drill failed"),
    }
    Ok(exit)
}

fn print_steps(steps: &Value) {
    println!("  {:<8} {:<13} {:>8}", "leg", "step", "ms");
    for s in steps.as_array().into_iter().flatten() {
        println!(
            "  {:<8} {:<13} {:>8}{}",
            s["leg"].as_str().unwrap_or("?"),
            s["step"].as_str().unwrap_or("?"),
            s["ms"],
            if s["ok"] == false { "  ✗" } else { "" }
        );
    }
}

/// The plan, from the config and the ledger only.
fn plan(
    config: Option<&Path>,
    state_dir: &Path,
    service: &str,
    json: bool,
) -> Result<i32, CliError> {
    let cfg = load_config(config)?;
    let svc = cfg
        .service(service)
        .ok_or_else(|| unknown_service(&cfg, service))?;
    let ledger = open_ledger(state_dir)?;
    let current = ledger.active_release(service)?;
    let previous = ledger.previous_good(service)?;
    let watcher = ledger.lease_holder("@watcher")?;
    let warm = previous.as_ref().is_some_and(|p| {
        watcher.is_some()
            && ledger
                .slots(service)
                .is_ok_and(|s| s.iter().any(|s| s.release_id == Some(p.id)))
    });
    let last = ledger.last_drill(service)?.as_ref().map(drill_json);
    let in_place = svc.one_address();
    let frozen = ledger.service_state(service)?.frozen_reason;
    let blocker = match (&current, &previous) {
        _ if frozen.is_some() => Some(format!(
            "{service} is frozen ({}): a drill is refused",
            frozen.as_deref().unwrap_or("")
        )),
        (None, _) => Some(format!("{service} has no active release")),
        (_, None) => Some(format!("{service} has no previous release to go back to")),
        _ => None,
    };
    let v = json!({
        "dry_run": true,
        "service": service,
        "current": current.as_ref().map(|r| json!({ "release": r.id, "version": r.version })),
        "previous": previous.as_ref().map(|r| json!({ "release": r.id, "version": r.version, "warm": warm })),
        "in_place": in_place,
        "budget_ms": svc.drill_budget.as_millis() as u64,
        "can_run": blocker.is_none(),
        "blocker": blocker,
        "last_drill": last,
    });
    if json {
        output::print_json(&v);
    } else {
        let name = |r: &Option<crate::ledger::Release>| {
            r.as_ref()
                .map_or("?".to_string(), |r| format!("{} (#{})", r.version, r.id))
        };
        println!(
            "drill plan for {service} (dry run: nothing is touched), budget {}:",
            unit_text(svc.drill_budget)
        );
        if in_place {
            let how = if svc.runtime == crate::config::Runtime::Swarm {
                "a swarm service update"
            } else if svc.runtime == crate::config::Runtime::Kubernetes {
                "the release's pod template applied to the Deployment, rolled out"
            } else {
                "a container replace, with a gap on the published address"
            };
            println!(
                "  1. back to {}: put in place ({how}), verify",
                name(&previous)
            );
            println!(
                "  2. forward to {}: put in place again the same way, verify",
                name(&current)
            );
        } else {
            println!(
                "  1. back to {}: {}, health gate, switch traffic, verify",
                name(&previous),
                if warm {
                    "warm, no start"
                } else {
                    "start it in the idle slot"
                }
            );
            println!(
                "  2. forward to {}: it keeps running meanwhile; health gate, switch traffic, \
                 verify",
                name(&current)
            );
        }
        println!("  the ledger's release statuses do not change; the guard does not act meanwhile");
        if let Some(b) = &v["blocker"].as_str() {
            println!("  cannot run now: {b}");
        }
        match &v["last_drill"] {
            Value::Null => println!("last drill: never"),
            d => {
                println!("last drill: {}", drill_line(d));
                print_steps(&d["steps"]);
            }
        }
    }
    Ok(if blocker.is_none() { 0 } else { 1 })
}
