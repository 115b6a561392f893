//! The database restore when no watcher runs (`ripcord db restore` run by a person
//! after the watcher was stopped, or after it crashed).
//!
//! It takes the ledger's locks itself, as a watcher would: the `@watcher` lease, so no
//! watcher starts (and starts the app) while names are swapped, and the service's
//! operation lease; a holder that is alive is named in the refusal. It stops what a
//! crashed watcher left running (a release process, recognised by pid *and* start
//! time), restores into a new database, checks it, swaps names (the old one is kept)
//! and lifts the freeze it set. It never starts the app: no watcher owns a process
//! started here, so the next `ripcord watch` starts the active release on the restored
//! database. Containers run without a watcher and only a watcher stops and restarts
//! them around a restore, so runtimes docker and swarm are refused here.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::restore::{
    RestoreOutcome, db_config, open_incident, record_restore_refused, recover_interrupted_restore,
    restore_freeze_reason, restore_reason,
};
use super::{ExecError, SharedLedger, process};
use crate::clock::now_ms;
use crate::config::{Runtime, ServiceConfig};
use crate::db;
use crate::ledger::{LedgerError, OperationKind, WATCHER_LEASE};

/// How long the offline restore's leases last at most (a dump of many GiB restores in
/// minutes; a crashed CLI's leases end with its pid anyway).
const LEASE_TTL: Duration = Duration::from_secs(6 * 3600);

/// Restores backup `backup_id` of `cfg`'s database with no watcher running (see the
/// module doc). `say` is told each step, for the person watching.
pub async fn restore_without_watcher(
    cfg: &ServiceConfig,
    state_dir: &Path,
    ledger: &SharedLedger,
    backup_id: i64,
    confirm: &str,
    say: &(dyn Fn(String) + Sync),
) -> Result<RestoreOutcome, ExecError> {
    let name = cfg.name.as_str();
    let lock = || ledger.lock().unwrap_or_else(|p| p.into_inner());
    if cfg.runtime == Runtime::Kubernetes {
        return Err(ExecError::Refused(format!(
            "no watcher runs, and {name}'s Deployment keeps its pods running without one: start \
             `ripcord watch` and restore again, so the watcher scales the Deployment to 0 and \
             back around the restore; nothing was changed"
        )));
    }
    if matches!(cfg.runtime, Runtime::Docker | Runtime::Swarm) {
        return Err(ExecError::Refused(format!(
            "no watcher runs, and {name}'s containers keep running without one: start `ripcord \
             watch` and restore again, so the watcher stops and restarts them around the restore; \
             nothing was changed"
        )));
    }
    let holder = format!(
        "`ripcord db restore {name}` (pid {}, no watcher)",
        std::process::id()
    );
    let busy = |what: &str, e: LedgerError| match e {
        LedgerError::Busy { holder, since, .. } => ExecError::Refused(format!(
            "refused, nothing changed: {what} is held by {holder} since {since}; wait for it to \
             finish (see `ripcord status {name}`)"
        )),
        e => ExecError::Ledger(e),
    };
    let watcher_lease = lock()
        .acquire_lease(WATCHER_LEASE, &holder, LEASE_TTL)
        .map_err(|e| busy("the state dir", e))?;
    // Bound first: a guard in the match's scrutinee would be held across the restore.
    let service_lease = lock().acquire_lease(name, &holder, LEASE_TTL);
    let result = match service_lease {
        Ok(lease) => {
            let r = restore_leased(cfg, state_dir, ledger, backup_id, confirm, say).await;
            if let Err(e) = lock().release_lease(&lease) {
                tracing::error!(service = name, error = %e, "cannot release the lease");
            }
            r
        }
        Err(e) => Err(busy(&format!("service `{name}`"), e)),
    };
    if let Err(e) = lock().release_lease(&watcher_lease) {
        tracing::error!(service = name, error = %e, "cannot release the watcher lease");
    }
    result
}

async fn restore_leased(
    cfg: &ServiceConfig,
    state_dir: &Path,
    ledger: &SharedLedger,
    backup_id: i64,
    confirm: &str,
    say: &(dyn Fn(String) + Sync),
) -> Result<RestoreOutcome, ExecError> {
    let start = std::time::Instant::now();
    let name = cfg.name.as_str();
    let lock = || ledger.lock().unwrap_or_else(|p| p.into_inner());
    // Holding the watcher lease, any operation of this service still open is a dead
    // process's; a restore among them is put right first, as a starting watcher would.
    // Other services' are left open, for the next watcher to find and put right.
    let interrupted = lock().interrupt_unfinished_of(name)?;
    for op in interrupted
        .iter()
        .filter(|op| op.kind == OperationKind::Restore.as_str())
    {
        recover_interrupted_restore(cfg, state_dir, ledger, op).await;
    }
    let dbc = db_config(cfg, state_dir)?;
    let rec = lock()
        .backup(backup_id)?
        .filter(|r| r.service == name)
        .ok_or_else(|| {
            ExecError::Usage(format!(
                "{name} has no backup #{backup_id}: see `ripcord db backups {name}`"
            ))
        })?;
    let database = db::PgUrl::parse(&dbc.url)
        .map(|u| u.database)
        .map_err(|e| ExecError::Usage(e.to_string()))?;
    if confirm != database || rec.database != database {
        let why = format!(
            "refused, nothing changed: consent was given for `{confirm}`, the config restores into \
             `{database}`, and backup #{backup_id} is of `{}`; they must all be the same database",
            rec.database
        );
        record_restore_refused(
            &mut lock(),
            name,
            Some(backup_id),
            "database_mismatch",
            &why,
        );
        return Err(ExecError::Refused(why));
    }
    let path = PathBuf::from(&rec.path);
    say(format!(
        "checking backup #{backup_id} (sha256, and that pg_restore reads all of it)"
    ));
    let verified = match db::verify(&path, &rec.sha256).await {
        Ok(v) => {
            lock().set_backup_verified(backup_id, true)?;
            v
        }
        Err(e) => {
            lock().set_backup_verified(backup_id, false)?;
            let why = format!(
                "backup #{backup_id} failed its integrity check, so nothing was stopped or changed: {e}"
            );
            record_restore_refused(
                &mut lock(),
                name,
                Some(backup_id),
                "integrity_check_failed",
                &why,
            );
            return Err(ExecError::Refused(why));
        }
    };
    let incident = open_incident(&lock(), name)?;
    let window = db::loss_window(rec.created_at_ms, now_ms());
    let reason = restore_reason(backup_id);
    let op = lock().begin_operation_told(
        name,
        OperationKind::Restore,
        None,
        None,
        Some(&reason),
        Some(format!(
            "restoring {database} from backup #{backup_id} ({}) with no watcher running: data \
             written in the {window} since then leaves the live database; the current database is \
             kept, renamed",
            crate::clock::format_utc(rec.created_at_ms)
        )),
        incident,
    )?;
    let stamp = lock()
        .operation(op)?
        .map_or_else(now_ms, |o| o.started_at_ms);
    let freeze_reason = restore_freeze_reason(&reason);
    let run = async {
        let we_froze = lock().freeze(name, &freeze_reason, incident)?;
        let ours = we_froze.then_some(freeze_reason.as_str());
        let step = |kind: &str, message: String| {
            tracing::info!(service = name, kind, "{message}");
            if let Err(e) = lock().step_in_incident(op, kind, message, incident) {
                tracing::error!(service = name, error = %e, "cannot write event to the ledger");
            }
        };
        say("stopping what a stopped watcher left running".to_string());
        let stopped = stop_left_behind(ledger, name).await?;
        step(
            "app_stopped",
            match (cfg.runtime, stopped) {
                (Runtime::External, _) => "runtime external: ripcord runs nothing to stop; the swap \
                                           ends the app's database sessions"
                    .to_string(),
                (_, 0) => "no watcher runs, so no release of this service was running".to_string(),
                (_, n) => format!("stopped {n} release process(es) an earlier watcher left running"),
            },
        );
        let lift = |why: &str| {
            if let Some(reason) = ours
                && let Err(e) = lock().unfreeze_if(name, reason, why)
            {
                tracing::error!(service = name, error = %e, "cannot lift the restore's freeze");
            }
        };
        say(format!("restoring into a new database beside {database}"));
        let swapped = async {
            let new_db = db::restore_into_new(&dbc, &path, &verified, stamp).await?;
            step(
                "restore_checked",
                format!(
                    "backup #{backup_id} restored into {new_db}: {} table(s) present, {} check(s) passed",
                    verified.table_count,
                    dbc.checks.len()
                ),
            );
            say(format!("swapping {new_db} in as {database}"));
            db::swap(&dbc, &new_db, stamp).await
        }
        .await;
        let kept = match swapped {
            Ok(k) => k,
            Err(e) => {
                step(
                    "restore_failed",
                    format!("restore stopped before the swap: {e}; the original database is untouched"),
                );
                lift("the restore stopped before changing anything");
                return Err(ExecError::Failed(format!(
                    "{e}\nthe original database is untouched; no app was started (no watcher runs)"
                )));
            }
        };
        step(
            "database_swapped",
            format!("the restored database is now {database}; the one before is kept as {kept}"),
        );
        lift(&format!(
            "database restored from backup #{backup_id}; no watcher runs to start the app"
        ));
        step(
            "restore_finished",
            format!(
                "restore from backup #{backup_id} finished in {} ms with no watcher running; {database} \
                 lost the writes of the {window} before it; `ripcord watch` starts the active release",
                start.elapsed().as_millis()
            ),
        );
        Ok(kept)
    }
    .await;
    let outcome = match &run {
        Ok(_) => lock().finish_operation(op, "succeeded", None),
        Err(e) => lock().finish_operation(op, "failed", Some(&e.to_string())),
    };
    if let Err(e) = outcome {
        tracing::error!(service = name, error = %e, "cannot close the restore operation");
    }
    let kept = run?;
    Ok(RestoreOutcome {
        service: name.to_string(),
        backup: backup_id,
        database,
        kept_as: kept,
        backup_created_at_ms: rec.created_at_ms,
        loss_window: window,
        app: None,
        total_ms: start.elapsed().as_millis() as u64,
    })
}

/// Stops the release processes the ledger says still run (a crashed watcher's), each
/// only if its pid and start time are the recorded ones, and clears their slots.
async fn stop_left_behind(ledger: &SharedLedger, name: &str) -> Result<usize, ExecError> {
    let lock = || ledger.lock().unwrap_or_else(|p| p.into_inner());
    let records = lock().slots(name)?;
    let mut stopped = 0;
    for rec in records {
        if let Some(pid) = rec.pid {
            let start = rec.pid_start;
            let killed = tokio::task::spawn_blocking(move || process::kill_orphan(pid, start))
                .await
                .unwrap_or(false);
            stopped += usize::from(killed);
        }
        lock().clear_slot(name, rec.slot)?;
    }
    Ok(stopped)
}
