//! The emergency database restore, run by the watcher (it owns the app's runtime):
//! check the backup again, freeze the service, stop the app, restore into a new
//! database, check it, swap names (the old database is kept, renamed), start the app,
//! verify. Any failure before the swap leaves the original database untouched and the
//! app restarted; the error says where it stopped. Every step is an event, attached to
//! the service's open (or frozen) incident when there is one.
//!
//! "Stop the app" is per runtime: the watcher's processes and containers are stopped; a
//! swarm service is scaled to 0 tasks; a Kubernetes Deployment is scaled to 0 replicas
//! (the number to give back noted on it, so it survives a crash) until the controller
//! reports no pod left, and scaled back afterwards, its rollout and address checked.
//!
//! Consent and the data-loss window are the CLI's job (`cli/db_cmd.rs`): by the time a
//! request gets here, a person typed the database's name or passed `--confirm`.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{ExecError, Progress, ServiceExec, say};
use crate::clock::now_ms;
use crate::config::Slot;
use crate::db::{self, DbConfig};
use crate::ledger::{NewEvent, OperationKind};

#[derive(Debug, Clone, Serialize)]
pub struct RestoreOutcome {
    pub service: String,
    pub backup: i64,
    pub database: String,
    /// The database as it was before the restore, kept under this name.
    pub kept_as: String,
    pub backup_created_at_ms: i64,
    /// How much time of writes the restore gave up: backup time until the restore.
    pub loss_window: String,
    /// The release started again afterwards, if any.
    pub app: Option<String>,
    pub total_ms: u64,
}

/// How a restore stopped an app that runs without the watcher's processes: the
/// replicas to give back.
#[derive(Debug, Clone, Copy)]
enum Scaled {
    Swarm(u64),
    Kube(i32),
}

impl ServiceExec {
    /// Restores backup `backup_id` (see the module doc).
    pub async fn restore(
        &self,
        backup_id: i64,
        confirm: &str,
        progress: Progress,
    ) -> Result<RestoreOutcome, ExecError> {
        let holder = format!(
            "`ripcord db restore {}` (watcher pid {})",
            self.name(),
            std::process::id()
        );
        self.exclusive(holder, async || {
            self.restore_locked(backup_id, confirm, &progress).await
        })
        .await
    }

    async fn restore_locked(
        &self,
        backup_id: i64,
        confirm: &str,
        progress: &Progress,
    ) -> Result<RestoreOutcome, ExecError> {
        let start = std::time::Instant::now();
        let cfg = db_config(&self.cfg, &self.state_dir)?;
        let rec = self.ledger().backup(backup_id)?.ok_or_else(|| {
            ExecError::Usage(format!(
                "{} has no backup #{backup_id}: see `ripcord db backups {}`",
                self.name(),
                self.name()
            ))
        })?;
        if rec.service != self.name() {
            return Err(ExecError::Usage(format!(
                "backup #{backup_id} belongs to {}, not {}",
                rec.service,
                self.name()
            )));
        }
        // The database the person agreed to, the one this watcher would restore into, and
        // the one the dump came from must all be the same.
        let database = db::PgUrl::parse(&cfg.url)
            .map(|u| u.database)
            .map_err(|e| ExecError::Usage(e.to_string()))?;
        if confirm != database || rec.database != database {
            let why = format!(
                "refused, nothing changed: consent was given for `{confirm}`, this watcher's config \
                 restores into `{database}`, and backup #{backup_id} is of `{}`; they must all be the \
                 same database (restart the watcher after changing [service.{}.database] url)",
                rec.database,
                self.name()
            );
            record_restore_refused(
                &mut self.ledger(),
                self.name(),
                Some(backup_id),
                "database_mismatch",
                &why,
            );
            return Err(ExecError::Refused(why));
        }
        let path = PathBuf::from(&rec.path);
        say(
            progress,
            format!("checking backup #{backup_id} (sha256, and that pg_restore reads all of it)"),
        );
        let verified = match db::verify(&path, &rec.sha256).await {
            Ok(v) => {
                self.ledger().set_backup_verified(backup_id, true)?;
                v
            }
            Err(e) => {
                self.ledger().set_backup_verified(backup_id, false)?;
                let why = format!(
                    "backup #{backup_id} failed its integrity check, so nothing was stopped or changed: {e}"
                );
                record_restore_refused(
                    &mut self.ledger(),
                    self.name(),
                    Some(backup_id),
                    "integrity_check_failed",
                    &why,
                );
                return Err(ExecError::Refused(why));
            }
        };
        let incident = open_incident(&self.ledger(), self.name())?;
        let window = db::loss_window(rec.created_at_ms, now_ms());
        let active = self.ledger().active_release(self.name())?;
        let active_id = active.as_ref().map(|a| a.id);
        // One operation from here on: a watcher that dies in it is found by the next,
        // which puts the database right (`recover_restore`). Its start names the
        // databases it creates.
        let op = self.ledger().begin_operation_told(
            self.name(),
            OperationKind::Restore,
            active_id,
            active_id,
            Some(&restore_reason(backup_id)),
            Some(format!(
                "restoring {database} from backup #{backup_id} ({}): data written in the {window} since then \
                 leaves the live database; the current database is kept, renamed",
                crate::clock::format_utc(rec.created_at_ms)
            )),
            incident,
        )?;
        let stamp = self
            .ledger()
            .operation(op)?
            .map_or_else(now_ms, |o| o.started_at_ms);
        let freeze_reason = restore_freeze_reason(&restore_reason(backup_id));
        let run = async {
            let we_froze = self
                .ledger()
                .freeze(self.name(), &freeze_reason, incident)?;
            // Only the restore's own freeze is lifted at the end: one a person set (or
            // re-stated) meanwhile stays.
            let ours = we_froze.then_some(freeze_reason.as_str());
            let step = |kind: &str, message: String| self.restore_step(op, incident, kind, message);

            // Stop the app: nothing may write into the database while names are swapped.
            let active_slot = self
                .slots()
                .iter()
                .find(|(_, sp)| Some(sp.release.id) == active_id)
                .map(|(s, _)| *s);
            say(progress, "stopping the app".to_string());
            let stopped: Vec<Slot> = self.slots().into_keys().collect();
            for slot in &stopped {
                self.stop_slot(*slot, None).await;
            }
            self.router.clear();
            let abort = async |scaled: Option<Scaled>, why: String| {
                self.abort_restore(op, incident, ours, active_slot, scaled, &why, progress)
                    .await
            };
            // A swarm keeps its tasks running without us: scale the service to 0; a
            // Deployment likewise.
            let scaled = match self.cfg.runtime {
                crate::config::Runtime::Swarm => {
                    self.swarm_stop().await.map(|r| r.map(Scaled::Swarm))
                }
                crate::config::Runtime::Kubernetes => self
                    .kube_scale_down(progress)
                    .await
                    .map(|n| Some(Scaled::Kube(n))),
                _ => Ok(None),
            };
            let scaled = match scaled {
                Ok(s) => s,
                Err(e) => return Err(abort(None, e.to_string()).await),
            };
            step(
                "app_stopped",
                match (scaled, stopped.len()) {
                    (Some(Scaled::Swarm(n)), _) => {
                        format!("swarm service scaled from {n} task(s) to 0 for the restore")
                    }
                    (Some(Scaled::Kube(n)), _) => format!(
                        "Deployment {} scaled from {n} replica(s) to 0 for the restore, and the \
                         controller reports no pod left; the {n} to give back are noted on it ({})",
                        self.cfg
                            .kubernetes
                            .as_ref()
                            .map(|k| format!("{}/{}", k.namespace, k.deployment))
                            .unwrap_or_default(),
                        crate::k8s::ANNOTATION_RESTORE_REPLICAS
                    ),
                    (None, 0) if self.cfg.runtime == crate::config::Runtime::External => {
                        "runtime external: ripcord runs nothing to stop; the swap ends the app's \
                         database sessions"
                            .to_string()
                    }
                    (None, 0) => "no release of this service was running".to_string(),
                    (None, n) => format!("stopped {n} release(s) for the restore"),
                },
            );

            // Restore into a new database and check it; the original is untouched so far.
            say(
                progress,
                format!("restoring into a new database beside {database}"),
            );
            let new_db = match db::restore_into_new(&cfg, &path, &verified, stamp).await {
                Ok(n) => n,
                Err(e) => return Err(abort(scaled, e.to_string()).await),
            };
            step(
                "restore_checked",
                format!(
                    "backup #{backup_id} restored into {new_db}: {} table(s) present, {} check(s) passed",
                    verified.table_count,
                    cfg.checks.len()
                ),
            );
            say(progress, format!("swapping {new_db} in as {database}"));
            let kept = match db::swap(&cfg, &new_db, stamp).await {
                Ok(k) => k,
                Err(e) => return Err(abort(scaled, e.to_string()).await),
            };
            step(
                "database_swapped",
                format!(
                    "the restored database is now {database}; the one before is kept as {kept}"
                ),
            );

            // The app back, and verified.
            let app = match self
                .restart_after_restore(op, active_slot, scaled, progress)
                .await
            {
                Ok(app) => app,
                Err(e) => {
                    step(
                        "restore_failed",
                        format!("the database was restored, but the app did not come back: {e}; {} stays frozen", self.name()),
                    );
                    return Err(e);
                }
            };
            if let Some(reason) = ours {
                self.ledger().unfreeze_if(
                    self.name(),
                    reason,
                    &format!("database restored from backup #{backup_id} and the app verified"),
                )?;
            }
            step(
                "restore_finished",
                format!(
                    "restore from backup #{backup_id} finished in {} ms; {database} lost the writes of the {window} before it",
                    start.elapsed().as_millis()
                ),
            );
            Ok(RestoreOutcome {
                service: self.name().to_string(),
                backup: backup_id,
                database: database.clone(),
                kept_as: kept,
                backup_created_at_ms: rec.created_at_ms,
                loss_window: window.clone(),
                app,
                total_ms: start.elapsed().as_millis() as u64,
            })
        }
        .await;
        self.finish(op, run)
    }

    /// Before the swap: the original database was not changed; start the app again and
    /// lift the freeze this restore set (`ours`: its reason), unless someone re-stated it.
    #[allow(clippy::too_many_arguments)]
    async fn abort_restore(
        &self,
        op: i64,
        incident: Option<i64>,
        ours: Option<&str>,
        active_slot: Option<Slot>,
        scaled: Option<Scaled>,
        why: &str,
        progress: &Progress,
    ) -> ExecError {
        let app = match self
            .restart_after_restore(op, active_slot, scaled, progress)
            .await
        {
            Ok(Some(v)) => format!("{v} was started again"),
            Ok(None) => "no release was running before, so none was started".to_string(),
            Err(e) => format!("starting the app again failed: {e}"),
        };
        self.restore_step(
            op,
            incident,
            "restore_failed",
            format!(
                "restore stopped before the swap: {why}; the original database is untouched; {app}"
            ),
        );
        if let Some(reason) = ours
            && let Err(e) = self.ledger().unfreeze_if(
                self.name(),
                reason,
                "the restore stopped before changing anything",
            )
        {
            tracing::error!(error = %e, "cannot lift the restore's freeze");
        }
        ExecError::Failed(format!("{why}\nthe original database is untouched; {app}"))
    }

    /// Starts the active release again in its slot, switches traffic to it, verifies;
    /// steps of the restore operation `op`.
    async fn restart_after_restore(
        &self,
        op: i64,
        slot: Option<Slot>,
        scaled: Option<Scaled>,
        progress: &Progress,
    ) -> Result<Option<String>, ExecError> {
        if let Some(Scaled::Swarm(n)) = scaled {
            self.swarm_scale_back(n).await?;
        }
        let Some(active) = self.ledger().active_release(self.name())? else {
            if let Some(Scaled::Kube(n)) = scaled {
                self.kube_scale_back(op, n, progress).await?;
            }
            return Ok(None);
        };
        let slot = slot.unwrap_or(Slot::Blue);
        if let Some(Scaled::Kube(n)) = scaled {
            // The Deployment kept its template: its replicas come back from it (a
            // template someone changed meanwhile is not overwritten here).
            self.kube_scale_back(op, n, progress).await?;
        } else if self.cfg.runtime == crate::config::Runtime::Kubernetes {
            // Never scaled down (the restore stopped before): its pods kept running, and
            // its template is left as it is.
        } else if self.one_address() {
            self.put_in_place(op, &active, "next", progress).await?;
        } else {
            self.start_healthy(op, &active, slot, progress).await?;
        }
        self.switch_to(op, &active, slot).await?;
        let report = self.verify_serving(op, &active, progress).await?;
        if !report.ok {
            return Err(ExecError::VerifyFailed {
                message: format!(
                    "{} {} runs again on the restored database, but verification failed",
                    self.name(),
                    active.version
                ),
                report,
            });
        }
        Ok(Some(active.version.clone()))
    }

    /// A step of restore operation `op`: its event, attached to the incident.
    fn restore_step(&self, op: i64, incident: Option<i64>, kind: &str, message: String) {
        tracing::info!(service = %self.name(), kind, "{message}");
        let result = self.ledger().step_in_incident(op, kind, message, incident);
        if let Err(e) = result {
            tracing::error!(service = %self.name(), error = %e, "cannot write event to the ledger");
        }
    }
}

/// A restore operation's reason, which names its backup.
pub fn restore_reason(backup_id: i64) -> String {
    format!("database restore from backup #{backup_id}")
}

/// The freeze a restore (operation reason `reason`) sets while it runs.
pub fn restore_freeze_reason(reason: &str) -> String {
    format!("{reason} in progress")
}

/// After the process running restore operation `op` died (the operation is marked
/// interrupted): puts the database right ([`db::recover_restore`]) and says what it
/// found, as a `restore_interrupted` event in the service's incident. Before the swap
/// nothing had changed: the half-restored copy is dropped and the restore's freeze
/// lifted. After it the live database holds the backup's data and the old one is kept;
/// the service stays frozen until a person has checked it. Errors are recorded, not
/// raised: a watcher starts anyway.
pub async fn recover_interrupted_restore(
    cfg: &crate::config::ServiceConfig,
    state_dir: &Path,
    ledger: &super::SharedLedger,
    op: &crate::ledger::Operation,
) {
    let name = cfg.name.as_str();
    let lock = || ledger.lock().unwrap_or_else(|p| p.into_inner());
    let reason = op.reason.clone().unwrap_or_default();
    let recovered = match db_config(cfg, state_dir) {
        Ok(dbc) => db::recover_restore(&dbc, op.started_at_ms)
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    let stopped = format!(
        "the process running the {reason} (operation #{}) stopped during step `{}`",
        op.id, op.step
    );
    let message = match recovered {
        Ok(db::Recovered::NotSwapped { dropped }) => {
            let freeze = restore_freeze_reason(&reason);
            let lifted = lock()
                .unfreeze_if(name, &freeze, "the interrupted restore had changed nothing")
                .unwrap_or(false);
            format!(
                "{stopped}, before the databases were swapped: the original is untouched and open to \
                 connections{}{}",
                dropped
                    .map(|d| format!("; the half-restored copy {d} was dropped"))
                    .unwrap_or_default(),
                if lifted {
                    "; the restore's freeze is lifted"
                } else {
                    ""
                }
            )
        }
        Ok(db::Recovered::Swapped { kept }) => format!(
            "{stopped}, after the databases were swapped: the live database holds the backup's data \
             and the one before is kept as {kept}; the active release is started on it, and {name} \
             stays frozen until a person has checked it (`ripcord unfreeze {name} --reason ...`)"
        ),
        Err(e) => format!(
            "{stopped}, and the database could not be checked: {e}; {name} stays frozen until a \
             person has put it right"
        ),
    };
    tracing::warn!(service = name, "{message}");
    let mut l = lock();
    let incident = open_incident(&l, name).ok().flatten();
    if let Err(e) = l.event(
        name,
        NewEvent {
            operation_id: Some(op.id),
            kind: "restore_interrupted",
            message,
            incident_id: incident,
            ..Default::default()
        },
    ) {
        tracing::error!(service = name, error = %e, "cannot write event to the ledger");
    }
}

/// The service's open (or frozen) incident, the one restore events are attached to.
pub fn open_incident(
    ledger: &crate::ledger::Ledger,
    service: &str,
) -> Result<Option<i64>, crate::ledger::LedgerError> {
    Ok(ledger
        .incidents(Some(service))?
        .into_iter()
        .find(|i| i.status == "open" || i.status == "frozen")
        .map(|i| i.id))
}

/// Records a refused restore as a `restore_refused` event, attached to the service's
/// open incident when there is one, so the incident report shows the attempt. `reason`
/// is a short code for scripts (`no_consent`, `wrong_confirm`, `integrity_check_failed`,
/// `database_mismatch`); `message` is what the person was told. The refusal stands
/// whatever happens here: a ledger that cannot be written is logged, not raised.
pub fn record_restore_refused(
    ledger: &mut crate::ledger::Ledger,
    service: &str,
    backup: Option<i64>,
    reason: &str,
    message: &str,
) {
    let incident = open_incident(ledger, service).unwrap_or_else(|e| {
        tracing::error!(service, error = %e, "cannot read the open incident from the ledger");
        None
    });
    let result = ledger.event(
        service,
        NewEvent {
            kind: "restore_refused",
            message: message.to_string(),
            data: Some(serde_json::json!({
                "reason": reason,
                "backup": backup,
                "incident": incident,
            })),
            incident_id: incident,
            ..Default::default()
        },
    );
    if let Err(e) = result {
        tracing::error!(service, error = %e, "cannot write the restore_refused event to the ledger");
    }
}

/// The db module's settings for a service: `[service.NAME.database]`, with the backup
/// directory defaulting to `<state dir>/backups/<service>`.
pub fn db_config(
    cfg: &crate::config::ServiceConfig,
    state_dir: &Path,
) -> Result<DbConfig, ExecError> {
    let d = cfg.database.as_ref().ok_or_else(|| {
        ExecError::Usage(format!(
            "{} has no database configured: add [service.{}.database] with `url`",
            cfg.name, cfg.name
        ))
    })?;
    Ok(DbConfig {
        url: d.url.clone(),
        password_file: d.password_file.clone(),
        backup_dir: d
            .backup_dir
            .clone()
            .unwrap_or_else(|| state_dir.join("backups").join(&cfg.name)),
        keep: d.keep,
        checks: d.checks.clone(),
        pg_bin_dir: d.pg_bin_dir.clone(),
    })
}

/// A backup just taken and recorded, and the older ones retention removed after it.
#[derive(Debug, Clone)]
pub struct TakenBackup {
    pub record: crate::ledger::BackupRecord,
    pub removed: Vec<crate::ledger::BackupRecord>,
}

/// [`take_backup`] for callers that need only the new backup's record (the backup
/// before a deploy's migrations); retention is applied all the same.
pub async fn backup_and_record(
    ledger: &super::SharedLedger,
    service: &str,
    dbc: &DbConfig,
) -> Result<crate::ledger::BackupRecord, String> {
    take_backup(ledger, service, dbc).await.map(|t| t.record)
}

/// Takes a backup (`pg_dump`), reads it back at once, records it with its checksum and
/// the active release, and applies retention (`keep`); an event says so. Every backup,
/// by hand or before a deploy, goes through here, so retention never depends on who
/// took it. A backup that does not read back is recorded as failed and returned as an
/// error; retention still runs then, because a run of failing backups must not pile up
/// on disk, and it never removes the newest good backup.
pub async fn take_backup(
    ledger: &super::SharedLedger,
    service: &str,
    dbc: &DbConfig,
) -> Result<TakenBackup, String> {
    let lock = || ledger.lock().unwrap_or_else(|p| p.into_inner());
    let file = db::backup(dbc, service).await.map_err(|e| e.to_string())?;
    let read_back = db::verify(&file.path, &file.sha256).await;
    let active = lock().active_release(service).map_err(|e| e.to_string())?;
    let path = file.path.display().to_string();
    let rec = lock()
        .record_backup(
            service,
            &crate::ledger::NewBackup {
                path: &path,
                sha256: &file.sha256,
                size_bytes: file.size_bytes,
                server_version: &file.server_version,
                database: &file.database,
                release_id: active.as_ref().map(|a| a.id),
                created_at_ms: file.created_at_ms,
            },
        )
        .map_err(|e| e.to_string())?;
    lock()
        .set_backup_verified(rec.id, read_back.is_ok())
        .map_err(|e| e.to_string())?;
    // The backup is taken and recorded: a retention failure is reported, not fatal.
    let removed = match apply_retention(&mut lock(), service, dbc.keep) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(service, error = %e, "retention after backup #{} failed", rec.id);
            Vec::new()
        }
    };
    let removed_ids: Vec<i64> = removed.iter().map(|b| b.id).collect();
    let _ = lock().event(
        service,
        NewEvent {
            release_id: active.as_ref().map(|a| a.id),
            kind: "db_backup",
            message: format!(
                "backup #{} of {}: {} ({} bytes){}{}",
                rec.id,
                rec.database,
                rec.path,
                rec.size_bytes,
                if read_back.is_ok() {
                    ""
                } else {
                    "; it does NOT read back"
                },
                if removed.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; retention (keep {}) removed {}",
                        dbc.keep,
                        removed_ids
                            .iter()
                            .map(|id| format!("#{id}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }
            ),
            data: Some(serde_json::json!({ "backup": rec.id, "removed": removed_ids })),
            ..Default::default()
        },
    );
    if let Err(e) = read_back {
        return Err(format!("backup #{} does not read back: {e}", rec.id));
    }
    let record = lock()
        .backup(rec.id)
        .map_err(|e| e.to_string())?
        .unwrap_or(rec);
    Ok(TakenBackup { record, removed })
}

/// Keeps the newest `keep` backups of `service` and the newest verified one; deletes the
/// rest, the file first and then the ledger row is marked. A file that cannot be deleted
/// stays recorded (the next backup tries again). Returns the backups removed.
pub fn apply_retention(
    ledger: &mut crate::ledger::Ledger,
    service: &str,
    keep: usize,
) -> Result<Vec<crate::ledger::BackupRecord>, crate::ledger::LedgerError> {
    let all = ledger.backups(service)?;
    let meta: Vec<db::BackupMeta> = all
        .iter()
        .map(|b| db::BackupMeta {
            id: b.id,
            created_at_ms: b.created_at_ms,
            verified_ok: b.verified_ok,
        })
        .collect();
    let doomed = db::retention(&meta, keep);
    let mut removed = Vec::new();
    for b in all.into_iter().filter(|b| doomed.contains(&b.id)) {
        match std::fs::remove_file(&b.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(
                    service,
                    backup = b.id,
                    "cannot remove {}: {e}; kept in the ledger",
                    b.path
                );
                continue;
            }
        }
        ledger.mark_backup_deleted(b.id)?;
        removed.push(b);
    }
    Ok(removed)
}
