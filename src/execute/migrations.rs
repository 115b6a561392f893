//! The migration guard inside deploys and rollbacks: each release records the schema
//! head it was deployed at (from `head_command`, or the `alembic_version` table over
//! `[service.NAME.database]`); a rollback across a `contract` migration is refused; a
//! deploy that ships a contract together with the expand it needs is warned about or
//! refused (`on_contract`), and may take a database backup first
//! (`backup_before_migrations`).

use super::{ExecError, Progress, RollbackRequest, ServiceExec, say};
use crate::config::OnContract;
use crate::ledger::Release;
use crate::migrate::{self, Phase, Report};

/// What a deploy ships: the migrations beyond the active release's head.
pub struct Shipped {
    pub files: Vec<String>,
    pub expands: Vec<String>,
    pub contracts: Vec<String>,
    /// Whether they are applied already (today's head is past the active one's).
    pub applied: bool,
}

impl ServiceExec {
    /// Today's schema head: the command's first word (`alembic current` prints
    /// `003 (head)`), or the head table read over the database.
    pub(super) async fn read_migration_head(&self, progress: &Progress) -> Option<String> {
        let m = self.cfg.migrations.as_ref()?;
        let Some(cmd) = &m.head_command else {
            let dbc = match super::restore::db_config(&self.cfg, &self.state_dir) {
                Ok(d) => d,
                Err(e) => {
                    say(progress, format!("{e}: no migration head recorded"));
                    return None;
                }
            };
            return match crate::db::schema_head(&dbc, &m.head_table).await {
                Ok(Some(h)) => Some(h),
                Ok(None) => {
                    say(
                        progress,
                        format!(
                            "{} is empty or missing: no migration head recorded",
                            m.head_table
                        ),
                    );
                    None
                }
                Err(e) => {
                    say(progress, format!("{e}: no migration head recorded"));
                    None
                }
            };
        };
        let out = tokio::process::Command::new(&cmd[0])
            .args(&cmd[1..])
            .current_dir(m.dir.parent().unwrap_or(&m.dir))
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(std::time::Duration::from_secs(30), out).await;
        match out {
            Ok(Ok(o)) if o.status.success() => {
                let text = String::from_utf8_lossy(&o.stdout);
                let head = text.split_whitespace().next().map(str::to_string);
                if head.is_none() {
                    say(
                        progress,
                        "the migration head command printed nothing: no head recorded".into(),
                    );
                }
                head
            }
            Ok(Ok(o)) => {
                say(
                    progress,
                    format!(
                        "`{}` failed ({}): no migration head recorded",
                        cmd.join(" "),
                        o.status
                    ),
                );
                None
            }
            Ok(Err(e)) => {
                say(
                    progress,
                    format!(
                        "cannot run `{}`: {e}: no migration head recorded",
                        cmd.join(" ")
                    ),
                );
                None
            }
            Err(_) => {
                say(
                    progress,
                    format!(
                        "`{}` took over 30 s: no migration head recorded",
                        cmd.join(" ")
                    ),
                );
                None
            }
        }
    }

    /// A release that migrates the schema as it starts has moved the head by the time
    /// it is healthy: the head it runs on is read again and kept.
    pub(super) async fn record_head_after_start(&self, release: &Release, progress: &Progress) {
        if self.cfg.migrations.is_none() {
            return;
        }
        let Some(now) = self.read_migration_head(progress).await else {
            return;
        };
        if release.migration_head.as_deref() != Some(now.as_str()) {
            if let Err(e) = self.ledger().set_migration_head(release.id, &now) {
                tracing::error!(error = %e, "cannot record the migration head");
            }
            say(
                progress,
                format!("{} runs on schema head {now}", release.version),
            );
        }
    }

    fn migration_report(&self) -> Result<Report, String> {
        let m = self
            .cfg
            .migrations
            .as_ref()
            .ok_or_else(|| "no migrations configured".to_string())?;
        let files = migrate::discover::read_paths(std::slice::from_ref(&m.dir))
            .map_err(|e| e.to_string())?;
        let settings = migrate::Settings {
            pg_version: m.pg_version,
            ..Default::default()
        };
        Ok(migrate::check(&migrate::plan(files), &settings))
    }

    /// The migrations a deploy ships: those after the active release's head up to the
    /// directory's head. `None` when that cannot be told (no heads recorded, a head not
    /// among the files, several directory heads).
    pub(super) fn shipped_migrations(
        &self,
        active: Option<&Release>,
        today: Option<&str>,
    ) -> Option<Shipped> {
        let active_head = active?.migration_head.as_deref()?;
        let report = self.migration_report().ok()?;
        let dir_head = directory_head(&report)?;
        let between = migrate::guard::between(&report, &dir_head, active_head).ok()?;
        let name = |f: &&migrate::FileReport| f.path.clone();
        Some(Shipped {
            files: between.applied.iter().map(name).collect(),
            expands: between
                .applied
                .iter()
                .filter(|f| f.phase == Phase::Expand)
                .map(name)
                .collect(),
            contracts: between
                .applied
                .iter()
                .filter(|f| f.phase == Phase::Contract)
                .map(name)
                .collect(),
            applied: today.is_some_and(|t| t != active_head),
        })
    }

    /// Before a deploy: a contract shipped together with expands (so the expand was
    /// never live in an earlier release) is warned about or refused; a release that
    /// ships migrations not yet applied gets a database backup first when configured.
    /// Returns the backup taken, if any.
    pub(super) async fn deploy_migration_checks(
        &self,
        active: Option<&Release>,
        today: Option<&str>,
        version: &str,
        force: bool,
        progress: &Progress,
    ) -> Result<Option<i64>, ExecError> {
        let Some(m) = &self.cfg.migrations else {
            return Ok(None);
        };
        let Some(shipped) = self.shipped_migrations(active, today) else {
            return Ok(None);
        };
        if shipped.files.is_empty() {
            return Ok(None);
        }
        say(
            progress,
            format!(
                "{version} ships {} migration(s) beyond {}'s head: {}",
                shipped.files.len(),
                active.map_or("the active release", |a| a.version.as_str()),
                shipped.files.join(", ")
            ),
        );
        if !shipped.contracts.is_empty() && !shipped.expands.is_empty() {
            let msg = format!(
                "{version} ships contract migration(s) {} together with expand migration(s) {}: the \
                 expand was never live in an earlier release, so once the contract runs, a rollback to \
                 {} is refused (its code cannot run on that schema). Ship the expand in one release and \
                 the contract in a later one",
                shipped.contracts.join(", "),
                shipped.expands.join(", "),
                active.map_or("the previous release", |a| a.version.as_str())
            );
            match m.on_contract {
                OnContract::Refuse if !force => {
                    return Err(ExecError::Refused(format!(
                        "{msg}; to deploy anyway: --force --reason TEXT (on_contract = \"refuse\")"
                    )));
                }
                _ => {
                    say(progress, format!("warning: {msg}"));
                    self.event(active.map(|a| a.id), None, "migration_warning", msg);
                }
            }
        }
        let wants_backup = self
            .cfg
            .database
            .as_ref()
            .is_some_and(|d| d.backup_before_migrations);
        if !wants_backup {
            return Ok(None);
        }
        if shipped.applied {
            say(
                progress,
                "the migrations are applied already: a backup now would not hold the schema before \
                 them, so none is taken"
                    .to_string(),
            );
            return Ok(None);
        }
        say(progress, "backup before the migrations run".to_string());
        let dbc = super::restore::db_config(&self.cfg, &self.state_dir)?;
        let rec = super::restore::backup_and_record(&self.ledger, self.name(), &dbc)
            .await
            .map_err(|e| {
                ExecError::Failed(format!(
                    "the backup before {version}'s migrations failed, so it was not deployed: {e}"
                ))
            })?;
        say(progress, format!("backup #{} taken ({})", rec.id, rec.path));
        Ok(Some(rec.id))
    }

    /// A rollback onto a schema the old code cannot run on is refused: the migrations
    /// applied since the target's head are checked, and any `contract` among them stops
    /// it, unless forced with a reason.
    pub(super) fn check_migrations(
        &self,
        req: &RollbackRequest,
        target: &Release,
        active: Option<&Release>,
    ) -> Result<(), ExecError> {
        if req.force && req.reason.is_some() {
            return Ok(());
        }
        rollback_verdict(&self.cfg, target, active)
    }
}

/// Whether the schema lets `target`'s code run again: the migrations applied since its
/// head are checked, and any `contract` among them refuses the rollback (with what to do).
/// Used by rollbacks (unless forced) and by `ripcord doctor`.
pub fn rollback_verdict(
    cfg: &crate::config::ServiceConfig,
    target: &Release,
    active: Option<&Release>,
) -> Result<(), ExecError> {
    let Some(m) = &cfg.migrations else {
        return Ok(());
    };
    let (Some(target_head), Some(current_head)) = (
        target.migration_head.as_deref(),
        active.and_then(|a| a.migration_head.as_deref()),
    ) else {
        return Ok(());
    };
    if target_head == current_head {
        return Ok(());
    }
    let files =
        crate::migrate::discover::read_paths(std::slice::from_ref(&m.dir)).map_err(|e| {
            ExecError::Refused(format!(
                "cannot read the migrations to judge this rollback: {e}"
            ))
        })?;
    let settings = crate::migrate::Settings {
        pg_version: m.pg_version,
        ..Default::default()
    };
    let report = crate::migrate::check(&crate::migrate::plan(files), &settings);
    let between =
        crate::migrate::guard::between(&report, current_head, target_head).map_err(|e| {
            ExecError::Refused(format!(
                "{} cannot tell which migrations a rollback to {} would undo ({e}); \
             roll back anyway with --force --reason TEXT if you know the schema allows it",
                cfg.name.as_str(),
                target.version
            ))
        })?;
    let contracts = between.contracts();
    if contracts.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = contracts
        .iter()
        .map(|f| {
            let why = f
                .phase_reason
                .as_ref()
                .map(|r| format!(" (line {}: {})", r.line, r.why))
                .unwrap_or_default();
            format!("{}{why}", f.path)
        })
        .collect();
    Err(ExecError::Refused(format!(
        "rolling {} back to {} would run its code on a schema it cannot use: since its head `{target_head}` \
         these contract migrations ran: {}. Roll forward with a fix instead, or restore the database to \
         that schema first; to roll back anyway: --force --reason TEXT",
        cfg.name.as_str(),
        target.version,
        list.join("; ")
    )))
}

/// The directory's newest migration: for Alembic, the one revision no other revision
/// names as its `down_revision` (none when there are several); else the last file.
fn directory_head(report: &Report) -> Option<String> {
    let alembic: Vec<&migrate::FileReport> = report
        .files
        .iter()
        .filter(|f| f.revision.is_some())
        .collect();
    if alembic.is_empty() {
        return report.files.last().map(migrate::guard::head_of);
    }
    let parents: std::collections::BTreeSet<&str> = alembic
        .iter()
        .flat_map(|f| f.down_revision.iter().flatten())
        .map(String::as_str)
        .collect();
    let heads: Vec<&&migrate::FileReport> = alembic
        .iter()
        .filter(|f| f.revision.as_deref().is_some_and(|r| !parents.contains(r)))
        .collect();
    match heads.as_slice() {
        [one] => Some(migrate::guard::head_of(one)),
        _ => None,
    }
}
