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
        let files = m.format.keep(files);
        Ok(migrate::check(&migrate::plan(files), &m.settings()))
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
    /// it, unless forced with a reason. Whatever the verdict, the ledger records what the
    /// rollback crosses (`rollback_migrations`, or `migration_forced` when forced past a
    /// refusal) and what could not be judged (`migration_warning`), for `ripcord events`.
    pub(super) fn check_migrations(
        &self,
        req: &RollbackRequest,
        target: &Release,
        active: Option<&Release>,
        progress: &Progress,
    ) -> Result<(), ExecError> {
        if self.cfg.migrations.is_none() {
            return Ok(());
        }
        let judgement = rollback_judgement(&self.cfg, target, active);
        let crossed = judgement.crossed_list();
        match (judgement.refusal(), &req.reason) {
            (Some(refusal), Some(reason)) if req.force => {
                let crossed = if crossed.is_empty() {
                    String::new()
                } else {
                    format!("; it crossed {crossed}")
                };
                let msg = format!(
                    "rollback of {} to {} forced past the migration guard (reason: {reason}): {refusal}{crossed}",
                    self.name(),
                    target.version
                );
                tracing::warn!(service = %self.name(), "{msg}");
                say(progress, format!("! {msg}"));
                self.event(Some(target.id), None, "migration_forced", msg);
            }
            (Some(refusal), _) => return Err(ExecError::Refused(refusal)),
            (None, _) if !crossed.is_empty() => {
                let msg = format!(
                    "a rollback of {} to {} crosses {crossed}",
                    self.name(),
                    target.version
                );
                say(progress, msg.clone());
                self.event(Some(target.id), None, "rollback_migrations", msg);
            }
            (None, _) => {}
        }
        for w in &judgement.warnings {
            tracing::warn!(service = %self.name(), "{w}");
            say(progress, format!("! {w}"));
            self.event(Some(target.id), None, "migration_warning", w.clone());
        }
        Ok(())
    }
}

/// One migration a rollback crosses: applied after the target's head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crossed {
    pub path: String,
    pub phase: Phase,
    /// Where and why the phase was decided (`line 4: drops column users.email`).
    pub why: Option<String>,
}

/// What the migration guard finds between today's schema and the release a rollback
/// goes to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RollbackJudgement {
    /// The service and the target's version and schema head, for messages.
    service: String,
    target: String,
    target_head: String,
    /// The migrations applied since the target's head, newest first.
    pub crossed: Vec<Crossed>,
    /// Why the migrations in between cannot be told (the migrations cannot be read, a
    /// head is not among them): the rollback is refused unless forced.
    pub undecidable: Option<String>,
    /// What could not be judged (a release without a recorded head, a migration whose
    /// phase is unknown), one sentence each: the rollback is allowed, but nobody should
    /// take it for a checked one.
    pub warnings: Vec<String>,
}

impl RollbackJudgement {
    /// The contract migrations among those crossed.
    pub fn contracts(&self) -> Vec<&Crossed> {
        self.crossed
            .iter()
            .filter(|c| c.phase == Phase::Contract)
            .collect()
    }

    /// Why the rollback is refused (with what to do), if it is.
    pub fn refusal(&self) -> Option<String> {
        if let Some(why) = &self.undecidable {
            return Some(format!(
                "{} cannot tell which migrations a rollback to {} would undo ({why}); \
                 roll back anyway with --force --reason TEXT if you know the schema allows it",
                self.service, self.target
            ));
        }
        let contracts = self.contracts();
        if contracts.is_empty() {
            return None;
        }
        let list: Vec<String> = contracts.iter().map(|c| describe(c, false)).collect();
        Some(format!(
            "rolling {} back to {} would run its code on a schema it cannot use: since its head `{}` \
             these contract migrations ran: {}. Roll forward with a fix instead, or restore the database to \
             that schema first; to roll back anyway: --force --reason TEXT",
            self.service,
            self.target,
            self.target_head,
            list.join("; ")
        ))
    }

    /// `N migration(s) applied since its head `H`: a.py (contract, line 4: ...); b.py
    /// (expand)`, or empty when none is crossed.
    pub fn crossed_list(&self) -> String {
        if self.crossed.is_empty() {
            return String::new();
        }
        let list: Vec<String> = self.crossed.iter().map(|c| describe(c, true)).collect();
        format!(
            "{} migration(s) applied since its head `{}`: {}",
            self.crossed.len(),
            self.target_head,
            list.join("; ")
        )
    }
}

fn describe(c: &Crossed, with_phase: bool) -> String {
    match (with_phase, &c.why) {
        (true, Some(why)) => format!("{} ({}, {why})", c.path, c.phase.as_str()),
        (true, None) => format!("{} ({})", c.path, c.phase.as_str()),
        (false, Some(why)) => format!("{} ({why})", c.path),
        (false, None) => c.path.clone(),
    }
}

/// What the guard finds for a rollback of the service to `target`: the migrations
/// applied since its head, whether that refuses the rollback, and what could not be
/// judged. Reads the migrations directory only when both heads are known and differ.
pub fn rollback_judgement(
    cfg: &crate::config::ServiceConfig,
    target: &Release,
    active: Option<&Release>,
) -> RollbackJudgement {
    let Some(m) = &cfg.migrations else {
        return RollbackJudgement::default();
    };
    judge(
        cfg.name.as_str(),
        (&target.version, target.migration_head.as_deref()),
        active.map(|a| (a.version.as_str(), a.migration_head.as_deref())),
        || {
            let files = crate::migrate::discover::read_paths(std::slice::from_ref(&m.dir))
                .map_err(|e| format!("cannot read the migrations: {e}"))?;
            let files = m.format.keep(files);
            Ok(crate::migrate::check(
                &crate::migrate::plan(files),
                &m.settings(),
            ))
        },
    )
}

/// [`rollback_judgement`] on the releases' versions and heads, with the migrations read
/// by `read`.
fn judge(
    service: &str,
    (target, target_head): (&str, Option<&str>),
    active: Option<(&str, Option<&str>)>,
    read: impl FnOnce() -> Result<Report, String>,
) -> RollbackJudgement {
    let mut j = RollbackJudgement {
        service: service.to_string(),
        target: target.to_string(),
        target_head: target_head.unwrap_or_default().to_string(),
        ..RollbackJudgement::default()
    };
    let not_judged = "so the migrations a rollback to it crosses were not judged";
    let current_head = match active {
        None => {
            j.warnings.push(format!(
                "{service} has no active release, so today's schema head is not known and the \
                 migrations a rollback to {target} crosses were not judged"
            ));
            None
        }
        Some((version, None)) => {
            j.warnings.push(format!(
                "{service}'s active release {version} has no recorded migration head, {not_judged} \
                 (is its head command or head table readable?)"
            ));
            None
        }
        Some((_, Some(h))) => Some(h),
    };
    if target_head.is_none() {
        j.warnings.push(format!(
            "{service} {target} has no recorded migration head (deployed before the migrations \
             config, or its head could not be read), {not_judged}"
        ));
    }
    let (Some(target_head), Some(current_head)) = (target_head, current_head) else {
        return j;
    };
    if target_head == current_head {
        return j;
    }
    let report = match read() {
        Ok(r) => r,
        Err(e) => {
            j.undecidable = Some(e);
            return j;
        }
    };
    let between = match crate::migrate::guard::between(&report, current_head, target_head) {
        Ok(b) => b,
        Err(e) => {
            j.undecidable = Some(e);
            return j;
        }
    };
    j.crossed = between
        .applied
        .iter()
        .map(|f| Crossed {
            path: f.path.clone(),
            phase: f.phase,
            why: f
                .phase_reason
                .as_ref()
                .map(|r| format!("line {}: {}", r.line, r.why)),
        })
        .collect();
    for c in j.crossed.iter().filter(|c| c.phase == Phase::Unknown) {
        let why = c
            .why
            .as_deref()
            .map(|w| format!(" ({w})"))
            .unwrap_or_default();
        j.warnings.push(format!(
            "{service}: {} could not be analysed{why}, so whether {target}'s code can run on \
             the schema it left is not known",
            c.path
        ));
    }
    j
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::migrate::{Settings, SourceFile, check, plan};

    fn revision(rev: &str, down: &str, up: &str) -> SourceFile {
        SourceFile {
            path: format!("versions/{rev}.py"),
            text: format!(
                "revision = \"{rev}\"\ndown_revision = {down}\nfrom alembic import op\nimport sqlalchemy as sa\n\ndef upgrade():\n    {up}\n\ndef downgrade():\n    pass\n"
            ),
        }
    }

    /// 001 expand, 002 unknown (SQL built at run time), 003 contract.
    fn report() -> Result<Report, String> {
        Ok(check(
            &plan(vec![
                revision(
                    "001",
                    "None",
                    "op.add_column('users', sa.Column('email_new', sa.Text()))",
                ),
                revision("002", "\"001\"", "op.execute(build_sql())"),
                revision("003", "\"002\"", "op.drop_column('users', 'email')"),
            ]),
            &Settings::default(),
        ))
    }

    fn unread() -> Result<Report, String> {
        panic!("the migrations are read only when both heads are known and differ")
    }

    #[test]
    fn the_crossed_migrations_are_listed_even_when_the_rollback_is_refused() {
        // Regression: the list was made only for a refusal, and a forced rollback
        // returned before anything was checked, so it recorded nothing it crossed.
        let j = judge(
            "web",
            ("v1", Some("001")),
            Some(("v3", Some("003"))),
            report,
        );
        let crossed: Vec<(&str, Phase)> = j
            .crossed
            .iter()
            .map(|c| (c.path.as_str(), c.phase))
            .collect();
        assert_eq!(
            crossed,
            [
                ("versions/003.py", Phase::Contract),
                ("versions/002.py", Phase::Unknown)
            ]
        );
        let refusal = j.refusal().expect("a contract in between refuses");
        assert!(
            refusal.contains("versions/003.py") && !refusal.contains("versions/002.py"),
            "{refusal}"
        );
        let list = j.crossed_list();
        assert!(
            list.starts_with("2 migration(s) applied since its head `001`: versions/003.py (contract, line 7: drops column users.email)"),
            "{list}"
        );
        assert!(list.contains("versions/002.py (unknown, line 7:"), "{list}");
    }

    #[test]
    fn an_unknown_phase_in_between_is_a_warning_not_a_refusal() {
        let j = judge(
            "web",
            ("v1", Some("001")),
            Some(("v2", Some("002"))),
            report,
        );
        assert_eq!(j.refusal(), None);
        assert_eq!(j.warnings.len(), 1, "{:?}", j.warnings);
        assert!(
            j.warnings[0].contains("versions/002.py could not be analysed")
                && j.warnings[0].contains("v1"),
            "{:?}",
            j.warnings
        );
        // The same head on both sides: nothing crossed, nothing read, nothing to warn.
        let j = judge(
            "web",
            ("v0", Some("001")),
            Some(("v1", Some("001"))),
            unread,
        );
        assert_eq!((j.refusal(), j.warnings.len()), (None, 0));
    }

    #[test]
    fn a_release_without_a_recorded_head_is_a_warning_naming_it() {
        // Regression: the rollback was allowed without a word about what went unchecked.
        let j = judge("web", ("v1", None), Some(("v2", Some("003"))), unread);
        assert_eq!(j.refusal(), None);
        assert_eq!(j.warnings.len(), 1, "{:?}", j.warnings);
        assert!(
            j.warnings[0].contains("web v1 has no recorded migration head"),
            "{:?}",
            j.warnings
        );
        let j = judge("web", ("v1", Some("001")), Some(("v2", None)), unread);
        assert_eq!(j.refusal(), None);
        assert!(
            j.warnings[0].contains("active release v2 has no recorded migration head"),
            "{:?}",
            j.warnings
        );
        let j = judge("web", ("v1", Some("001")), None, unread);
        assert!(
            j.warnings[0].contains("no active release"),
            "{:?}",
            j.warnings
        );
    }

    #[test]
    fn a_head_not_among_the_migrations_refuses() {
        let j = judge(
            "web",
            ("v1", Some("999")),
            Some(("v3", Some("003"))),
            report,
        );
        let refusal = j.refusal().expect("undecidable refuses");
        assert!(refusal.contains("--force --reason"), "{refusal}");
        let j = judge(
            "web",
            ("v1", Some("001")),
            Some(("v3", Some("003"))),
            || Err("cannot read the migrations: gone".into()),
        );
        assert!(j.refusal().unwrap().contains("gone"));
    }
}
