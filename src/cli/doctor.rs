//! `ripcord doctor SERVICE`: would a rollback work today? Each check is a ✓ or a ✗
//! with what to do. Exit 1 when any check that a rollback needs fails.
//!
//! It reads the config, the ledger and (runtime docker) the engine; it changes nothing
//! and needs no running watcher.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use super::{CliError, load_config, open_ledger};
use crate::clock::format_utc;
use crate::config::{Runtime, ServiceConfig, Slot};
use crate::execute::envfile;
use crate::ledger::{DrillRecord, Ledger, Release};

#[derive(Debug, Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
    /// What to do when it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
    /// A rollback fails today when a blocking check fails.
    pub blocking: bool,
}

fn pass(name: &str, detail: String) -> Check {
    Check {
        name: name.to_string(),
        ok: true,
        detail,
        fix: None,
        blocking: true,
    }
}

fn fail(name: &str, detail: String, fix: String) -> Check {
    Check {
        name: name.to_string(),
        ok: false,
        detail,
        fix: Some(fix),
        blocking: true,
    }
}

pub(super) async fn run(
    config: Option<&Path>,
    state_dir: &Path,
    service: &str,
    json: bool,
) -> Result<i32, CliError> {
    let cfg = load_config(config)?;
    let svc = cfg.service(service).ok_or_else(|| {
        CliError::new(
            2,
            format!(
                "no service `{service}` in {}: configured are {}",
                cfg.path.display(),
                cfg.services.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        )
    })?;
    let ledger = open_ledger(state_dir)?;
    let checks = checks(svc, &ledger).await;
    let ready = checks.iter().all(|c| c.ok || !c.blocking);
    if json {
        println!(
            "{}",
            serde_json::json!({ "service": service, "rollback_ready": ready, "checks": checks })
        );
    } else {
        println!("rollback readiness of {service}:");
        for c in &checks {
            let mark = if c.ok {
                "✓"
            } else if c.blocking {
                "✗"
            } else {
                "!"
            };
            println!("  {mark} {}: {}", c.name, c.detail);
            if let Some(fix) = &c.fix
                && !c.ok
            {
                println!("      → {fix}");
            }
        }
        if ready {
            println!("a rollback of {service} would work today");
        } else {
            println!("a rollback of {service} would FAIL today: fix the ✗ above");
        }
    }
    Ok(if ready { 0 } else { 1 })
}

async fn checks(svc: &ServiceConfig, ledger: &Ledger) -> Vec<Check> {
    let name = svc.name.as_str();
    let mut out = Vec::new();
    let state = ledger.service_state(name).ok();
    match state.as_ref().and_then(|s| s.frozen_reason.clone()) {
        Some(reason) => out.push(fail(
            "not frozen",
            format!("{name} is frozen ({reason}): no rollback runs"),
            format!("when the data is safe: ripcord unfreeze {name} --reason TEXT"),
        )),
        None => out.push(pass("not frozen", format!("{name} is not frozen"))),
    }
    let active = ledger.active_release(name).ok().flatten();
    let previous = ledger.previous_good(name).ok().flatten();
    match &active {
        Some(a) => out.push(pass("active release", format!("{} (#{})", a.version, a.id))),
        None => out.push(Check {
            blocking: false,
            ..fail(
                "active release",
                "none: nothing was deployed yet".to_string(),
                format!("ripcord deploy {name} VERSION"),
            )
        }),
    }
    let Some(prev) = previous else {
        out.push(fail(
            "previous good release",
            "none: the ledger has no earlier good release to go back to".to_string(),
            "deploy a second version; the one before it becomes the rollback target".to_string(),
        ));
        return out;
    };
    out.push(pass(
        "previous good release",
        format!("{} (#{})", prev.version, prev.id),
    ));
    // The migration guard: would the schema let the previous release's code run?
    if svc.migrations.is_some() {
        let judgement = crate::execute::migrations::rollback_judgement(svc, &prev, active.as_ref());
        out.push(match judgement.refusal() {
            Some(refusal) => fail(
                "schema",
                refusal,
                "roll forward with a fix, or restore the database to that schema first".to_string(),
            ),
            // Allowed, but not everything could be judged: say so rather than pass.
            None if !judgement.warnings.is_empty() => Check {
                blocking: false,
                ..fail(
                    "schema",
                    judgement.warnings.join("; "),
                    "deploy through ripcord with `[service.NAME.migrations]` set, so each \
                     release records its schema head"
                        .to_string(),
                )
            },
            None => pass(
                "schema",
                match judgement.crossed_list() {
                    c if c.is_empty() => {
                        "no migration ran since the previous release's head".to_string()
                    }
                    c => format!("no contract migration among those a rollback crosses: {c}"),
                },
            ),
        });
    }
    match svc.runtime {
        Runtime::Docker | Runtime::Swarm => docker_checks(svc, &prev, &mut out).await,
        Runtime::Process => {
            let argv0 = prev.spec.argv.first().cloned().unwrap_or_default();
            let found =
                Path::new(&argv0).is_absolute() && Path::new(&argv0).exists() || which(&argv0);
            out.push(if found {
                pass("program", format!("{argv0} exists"))
            } else {
                fail(
                    "program",
                    format!("`{argv0}` (how {} starts) is not found", prev.version),
                    "put the program back where the ledger recorded it".to_string(),
                )
            });
            out.push(match &prev.spec.env_snapshot {
                Some(path) => env_snapshot_check(&prev, path),
                None => Check {
                    blocking: false,
                    ..fail(
                        "env snapshot",
                        format!(
                            "{} was deployed before env snapshots: a cold rollback runs it with \
                             today's env",
                            prev.version
                        ),
                        "deploy it again to pin its env".to_string(),
                    )
                },
            });
            if let Some(dir) = &prev.spec.config_files {
                out.push(config_files_check(&prev, dir));
            }
        }
        Runtime::External => {}
        Runtime::Kubernetes => kube_checks(svc, &prev, &mut out).await,
    }
    // Slots: free, or held by this service.
    if !svc.one_address() {
        for slot in [Slot::Blue, Slot::Green] {
            out.push(slot_check(svc, ledger, slot));
        }
    }
    // The health URL of the active slot answers.
    let records = ledger.slots(name).unwrap_or_default();
    let active_slot = records
        .iter()
        .find(|r| r.release_id.is_some() && r.release_id == active.as_ref().map(|a| a.id))
        .map(|r| r.slot);
    if let Some(slot) = active_slot {
        let url = svc.health_url(slot);
        let http = crate::http::HttpClient::default();
        out.push(match http.get(&url, Duration::from_secs(2)).await {
            Ok(r) if (200..300).contains(&r.status) => {
                pass("health URL", format!("{url} answers {}", r.status))
            }
            Ok(r) => Check {
                blocking: false,
                ..fail(
                    "health URL",
                    format!("{url} answers {}", r.status),
                    "the active release is unhealthy: the guard should be rolling it back"
                        .to_string(),
                )
            },
            Err(e) => Check {
                blocking: false,
                ..fail(
                    "health URL",
                    format!("{url}: {e}"),
                    "is `ripcord watch` running? it keeps the active release up".to_string(),
                )
            },
        });
    }
    if active.is_some() {
        let last = ledger.last_drill(name).ok().flatten();
        out.push(drill_check(
            name,
            svc.drill_max_age,
            last.as_ref(),
            crate::clock::now_ms(),
        ));
    }
    out
}

/// The last drill: a warning (never blocking) when there is none, it is older than
/// `drill_max_age`, it failed, or it took longer than its budget.
fn drill_check(name: &str, max_age: Duration, last: Option<&DrillRecord>, now_ms: i64) -> Check {
    let warn = |detail: String, fix: String| Check {
        blocking: false,
        ..fail("last drill", detail, fix)
    };
    let run_one = format!("rehearse the rollback: ripcord drill {name}");
    let Some(d) = last else {
        return warn(
            format!("{name} was never drilled: its rollback path is untested"),
            run_one,
        );
    };
    let age = Duration::from_millis(now_ms.saturating_sub(d.finished_at_ms).max(0) as u64);
    let days = |d: Duration| d.as_secs() / 86_400;
    let when = format!("{} ({} days ago)", format_utc(d.finished_at_ms), days(age));
    if !d.passed() {
        return warn(
            format!(
                "the last drill {when} {}: {}",
                d.outcome.replace('_', " "),
                d.error.as_deref().unwrap_or("no reason recorded")
            ),
            format!("fix what it found, then {run_one}"),
        );
    }
    if !d.within_budget() {
        return warn(
            format!(
                "the last drill {when} took {} ms, over its {} ms budget",
                d.total_ms, d.budget_ms
            ),
            format!("see its slowest step (`ripcord drill {name} --dry-run`), then drill again"),
        );
    }
    if age > max_age {
        return warn(
            format!(
                "the last drill passed {when}: older than drill_max_age ({} days)",
                days(max_age)
            ),
            run_one,
        );
    }
    pass(
        "last drill",
        format!(
            "passed {when} in {} ms (budget {} ms)",
            d.total_ms, d.budget_ms
        ),
    )
}

/// Runtime kubernetes: the API answers, the Deployment is as ripcord left it (no
/// drift a rollback would refuse to overwrite), and the previous release's template and
/// its ConfigMap/Secret copies are all there.
async fn kube_checks(svc: &ServiceConfig, prev: &Release, out: &mut Vec<Check>) {
    let Some(kr) = &prev.spec.kubernetes else {
        out.push(fail(
            "pod template",
            format!("{} has no pod template in the ledger", prev.version),
            format!("deploy {} again through ripcord", prev.version),
        ));
        return;
    };
    out.push(pass(
        "pod template",
        format!(
            "{} has its pod template recorded ({}), with {} ConfigMap/Secret copies",
            prev.version,
            kr.image,
            kr.copies.len()
        ),
    ));
    let Some(k) = &svc.kubernetes else { return };
    let fix = "check the kubeconfig (`kubeconfig`, KUBECONFIG) and that the watcher's user is \
               bound to deploy/kubernetes/role.yaml"
        .to_string();
    let cluster = match crate::k8s::Cluster::connect(
        k.kubeconfig.as_deref(),
        k.context.as_deref(),
        &k.namespace,
    )
    .await
    {
        Ok(c) => c,
        Err(e) => return out.push(fail("kubernetes API", e.to_string(), fix)),
    };
    let d = match cluster.deployment(&k.deployment).await {
        Ok(d) => d,
        Err(e) => return out.push(fail("kubernetes API", e.to_string(), fix)),
    };
    out.push(pass(
        "kubernetes API",
        format!("Deployment {}/{} is readable", k.namespace, k.deployment),
    ));
    out.push(match crate::k8s::drifted(&d) {
        None => pass(
            "no drift",
            "the Deployment's pod template is the one ripcord applied".to_string(),
        ),
        Some(release) => fail(
            "no drift",
            format!(
                "Deployment {}/{} was changed outside ripcord since it applied release \
                 {release}: a rollback would refuse to overwrite it",
                k.namespace, k.deployment
            ),
            "make the change through ripcord, or roll back with --force --reason TEXT".to_string(),
        ),
    });
    // A restore whose watcher died left the Deployment at 0 with its note.
    let note = d
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(crate::k8s::ANNOTATION_RESTORE_REPLICAS));
    let replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    if let Some(n) = note
        && replicas == 0
    {
        out.push(fail(
            "replicas",
            format!(
                "Deployment {}/{} is at 0 replicas: a database restore scaled it down and did \
                 not finish ({n} to give back, noted as {})",
                k.namespace,
                k.deployment,
                crate::k8s::ANNOTATION_RESTORE_REPLICAS
            ),
            format!(
                "start the watcher (its reconcile gives the {n} replicas back), then run the \
                 restore again if it is still needed"
            ),
        ));
    }
    let mut gone = Vec::new();
    for c in &kr.copies {
        let there = match c.kind.as_str() {
            "Secret" => cluster.secret(&c.copy).await.map(|s| s.is_some()),
            _ => cluster.config_map(&c.copy).await.map(|s| s.is_some()),
        };
        match there {
            Ok(true) => {}
            Ok(false) => gone.push(format!("{} {}", c.kind, c.copy)),
            Err(e) => return out.push(fail("config copies", e.to_string(), fix)),
        }
    }
    out.push(if gone.is_empty() {
        pass(
            "config copies",
            format!(
                "{}'s {} ConfigMap/Secret copies are all there",
                prev.version,
                kr.copies.len()
            ),
        )
    } else {
        fail(
            "config copies",
            format!("{}'s copies are gone: {}", prev.version, gone.join(", ")),
            format!(
                "deploy {} again to snapshot today's config (its own is lost)",
                prev.version
            ),
        )
    });
}

async fn docker_checks(svc: &ServiceConfig, prev: &Release, out: &mut Vec<Check>) {
    let engine = match crate::docker::Engine::connect().await {
        Ok(e) => {
            match e.describe().await {
                Ok(info) => out.push(pass(
                    "docker engine",
                    format!(
                        "engine {} answers (API {}, client speaks {})",
                        info.version, info.api_version, info.client_api_version
                    ),
                )),
                Err(err) => {
                    out.push(fail(
                        "docker engine",
                        err.to_string(),
                        "start the Docker daemon (systemctl start docker) or set DOCKER_HOST"
                            .into(),
                    ));
                    return;
                }
            }
            e
        }
        Err(err) => {
            out.push(fail(
                "docker engine",
                err.to_string(),
                "start the Docker daemon (systemctl start docker) or set DOCKER_HOST".into(),
            ));
            return;
        }
    };
    let Some(img) = &prev.spec.image else {
        out.push(fail(
            "image pinned",
            format!("{} has no pinned image in the ledger", prev.version),
            format!(
                "deploy {} again with runtime docker so the ledger pins it",
                prev.version
            ),
        ));
        return;
    };
    let short = crate::execute::container::short_id(&img.id);
    match engine.image_present(&img.id).await {
        Ok(true) => out.push(pass(
            "image present",
            format!("{} ({short}) is on this engine", img.reference),
        )),
        Ok(false) => match &img.repo_digest {
            // Gone from the engine: a rollback pulls the pinned digest, so what matters
            // is whether the registry still has it.
            Some(digest) => out.push(pullable(&engine, svc, digest, &img.id).await),
            None => out.push(fail(
                "image present",
                format!(
                    "{} was {} ({short}), no image with that id is on this engine, and it has no \
                     registry digest (it was built or loaded here)",
                    prev.version, img.reference
                ),
                "rebuild and `docker load` the exact image; a different build is not the same release"
                    .into(),
            )),
        },
        Err(e) => out.push(fail(
            "image present",
            e.to_string(),
            "check the engine".into(),
        )),
    }
    out.push(match &img.env_snapshot {
        None => pass(
            "env snapshot",
            format!("{} runs without an env file", prev.version),
        ),
        Some(path) => env_snapshot_check(prev, path),
    });
    let _ = svc;
}

/// The previous release's env snapshot reads back: a cold rollback starts it with it.
fn env_snapshot_check(prev: &Release, path: &Path) -> Check {
    match envfile::read(path) {
        Ok(vars) => pass(
            "env snapshot",
            format!(
                "{} holds {} variable(s) ({}); values not shown",
                path.display(),
                vars.len(),
                vars.iter()
                    .map(|(k, _)| k.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
        Err(e) => fail(
            "env snapshot",
            e.to_string(),
            format!(
                "the snapshot is how {} runs with its own config: restore it from a backup of the state dir",
                prev.version
            ),
        ),
    }
}

/// The rollback target's copies of its config files are still there.
fn config_files_check(prev: &Release, dir: &Path) -> Check {
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            let mut names: Vec<String> = entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            pass(
                "config files",
                format!("{} holds {}", dir.display(), names.join(", ")),
            )
        }
        Err(e) => fail(
            "config files",
            format!("{}: {e}", dir.display()),
            format!(
                "the copies are how {} runs with its own config files: restore them from a backup \
                 of the state dir",
                prev.version
            ),
        ),
    }
}

/// A slot port is fine when it is free, or when the ledger says this service runs there.
fn slot_check(svc: &ServiceConfig, ledger: &Ledger, slot: Slot) -> Check {
    let addr = svc.slots.addr(slot);
    let name = format!("slot {slot} port");
    if std::net::TcpListener::bind(addr).is_ok() {
        return pass(&name, format!("{addr} is free"));
    }
    let ours = ledger
        .slots(&svc.name)
        .unwrap_or_default()
        .iter()
        .any(|r| r.slot == slot && r.release_id.is_some());
    if ours {
        pass(&name, format!("{addr} is held by {}'s release", svc.name))
    } else {
        fail(
            &name,
            format!("{addr} is held by a program that is not {}'s", svc.name),
            format!(
                "stop what listens on {addr} (ss -ltnp 'sport = :{}'), or change `slots`",
                addr.port()
            ),
        )
    }
}

fn which(program: &str) -> bool {
    if program.is_empty() {
        return false;
    }
    if program.contains('/') {
        return Path::new(program).exists();
    }
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// Whether the registry still has `digest` (`name@sha256:…`), asked through the engine
/// without pulling: a rollback would pull it and check it is image `id`.
async fn pullable(
    engine: &crate::docker::Engine,
    svc: &ServiceConfig,
    digest: &str,
    id: &str,
) -> Check {
    let short = crate::execute::container::short_id(id);
    let Some(d) = svc.docker.as_ref() else {
        return fail(
            "image pullable",
            format!("{short} is not on this engine"),
            format!("add the [service.{}.docker] table", svc.name),
        );
    };
    let creds = match crate::execute::container::registry_credentials(d, digest) {
        Ok(c) => c,
        Err(e) => {
            return fail(
                "image pullable",
                e.to_string(),
                "set it, then run doctor again".into(),
            );
        }
    };
    let want = digest.split_once('@').map_or("", |(_, d)| d);
    match engine.registry_digest(digest, creds.as_ref()).await {
        Ok(got) if got == want => pass(
            "image pullable",
            format!(
                "{short} is not on this engine; the registry has {digest}, and a rollback pulls it"
            ),
        ),
        Ok(got) => fail(
            "image pullable",
            format!("the registry answers {got} for {digest}"),
            "the registry does not serve the pinned content: push the exact image again, or \
             load it on this engine"
                .into(),
        ),
        Err(e) => fail(
            "image pullable",
            format!("{short} is not on this engine, and {e}"),
            "push the exact image to the registry again (or `docker load` it here); if the \
             registry needs a login, `docker login` it or set registry_username and \
             registry_password_env"
                .into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{DrillStep, NewDrill};

    const DAY_MS: i64 = 86_400_000;

    fn drill(ledger: &mut Ledger, outcome: &str, finished_at_ms: i64, total_ms: u64) {
        let steps = [DrillStep {
            leg: "back".to_string(),
            step: "switch".to_string(),
            ms: 3,
            ok: true,
        }];
        ledger
            .record_drill(
                "web",
                &NewDrill {
                    operation_id: None,
                    current_release: None,
                    previous_release: None,
                    outcome,
                    started_at_ms: finished_at_ms - total_ms as i64,
                    finished_at_ms,
                    total_ms,
                    budget_ms: 60_000,
                    steps: &steps,
                    error: (outcome != "passed").then_some("v1 never became healthy"),
                },
            )
            .unwrap();
    }

    #[test]
    fn doctor_warns_about_a_missing_old_failed_or_slow_drill() {
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = Ledger::open(dir.path()).unwrap();
        let max_age = Duration::from_secs(30 * 86_400);
        let now = 100 * DAY_MS;
        let check =
            |l: &Ledger| drill_check("web", max_age, l.last_drill("web").unwrap().as_ref(), now);

        let c = check(&ledger);
        assert!(!c.ok && !c.blocking, "{c:?}");
        assert!(c.detail.contains("never drilled"), "{c:?}");

        drill(&mut ledger, "passed", now - 31 * DAY_MS, 900);
        let c = check(&ledger);
        assert!(!c.ok && !c.blocking, "{c:?}");
        assert!(
            c.detail.contains("older than drill_max_age (30 days)"),
            "{c:?}"
        );

        drill(&mut ledger, "failed", now - DAY_MS, 900);
        let c = check(&ledger);
        assert!(!c.ok && !c.blocking, "{c:?}");
        assert!(
            c.detail.contains("failed: v1 never became healthy"),
            "{c:?}"
        );

        drill(&mut ledger, "passed", now - DAY_MS, 61_000);
        let c = check(&ledger);
        assert!(!c.ok && !c.blocking, "{c:?}");
        assert!(c.detail.contains("over its 60000 ms budget"), "{c:?}");

        drill(&mut ledger, "passed", now - DAY_MS, 900);
        let c = check(&ledger);
        assert!(c.ok, "{c:?}");
        assert!(c.detail.contains("in 900 ms (budget 60000 ms)"), "{c:?}");
    }
}
