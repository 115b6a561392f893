//! `ripcord db backup|backups|restore SERVICE`.
//!
//! A restore under pressure can only go one way: the backup is integrity-checked before
//! anything else, the data-loss window is shown, and consent is typed (the database's
//! name) or given with `--confirm DBNAME`; without it nothing changes (exit 3). The
//! restore itself runs in the watcher, which owns the app's runtime
//! (`execute/restore.rs`); with no watcher running it runs here, under the ledger's
//! locks, and leaves starting the app to the next watcher (`execute/restore_offline.rs`).

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use super::progress::Spinner;
use super::{CliError, load_config, output};
use crate::clock::{format_utc, now_ms};
use crate::config::ServiceConfig;
use crate::db;
use crate::execute::restore::{TakenBackup, db_config, record_restore_refused, take_backup};
use crate::execute::restore_offline::restore_without_watcher;
use crate::ledger::{BackupRecord, Ledger};
use crate::watch::control::{self, Request};

fn service<'a>(cfg: &'a crate::config::Config, name: &str) -> Result<&'a ServiceConfig, CliError> {
    cfg.service(name).ok_or_else(|| {
        CliError::new(
            2,
            format!(
                "no service `{name}` in {}: configured are {}",
                cfg.path.display(),
                cfg.services.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        )
    })
}

fn ledger(state_dir: &Path) -> Result<Ledger, CliError> {
    Ledger::open(state_dir).map_err(|e| CliError::new(1, e.to_string()))
}

fn exec_err(e: crate::execute::ExecError) -> CliError {
    CliError::new(e.exit_code(), e.to_string())
}

fn human_size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

/// Takes a backup, records it, applies retention (all in `execute::restore::take_backup`,
/// which the backup before a deploy's migrations goes through too).
pub(super) async fn backup(
    config: Option<&Path>,
    state_dir: &Path,
    name: &str,
    json: bool,
) -> Result<i32, CliError> {
    let cfg = load_config(config)?;
    let svc = service(&cfg, name)?;
    let dbc = db_config(svc, state_dir).map_err(exec_err)?;
    // A backup may be the first thing done with a state dir, before any watcher ran.
    crate::watch::ensure_state_dir(state_dir).map_err(|e| CliError::new(1, e.to_string()))?;
    let shared = std::sync::Arc::new(std::sync::Mutex::new(ledger(state_dir)?));
    if !json {
        eprintln!("  pg_dump of {} into {}", dbc.url, dbc.backup_dir.display());
    }
    let spinner = Spinner::start(format!("backing up {}", dbc.url), json);
    let TakenBackup {
        record: rec,
        removed,
    } = take_backup(&shared, name, &dbc)
        .await
        .map_err(|e| CliError::new(1, e))?;
    spinner.finish();
    if json {
        output::print_json(&serde_json::json!({ "backup": rec, "removed": removed }));
    } else {
        println!(
            "✓ backup #{} of {}: {} ({}, sha256 {}), PostgreSQL {}",
            rec.id,
            rec.database,
            rec.path,
            human_size(rec.size_bytes),
            &rec.sha256[..16.min(rec.sha256.len())],
            rec.server_version
        );
        for r in &removed {
            println!("  removed backup #{} (retention: keep {})", r.id, dbc.keep);
        }
    }
    Ok(0)
}

pub(super) fn backups(state_dir: &Path, name: &str, json: bool) -> Result<i32, CliError> {
    let ledger = ledger(state_dir)?;
    let list = ledger
        .backups(name)
        .map_err(|e| CliError::new(1, e.to_string()))?;
    if json {
        output::print_json(&list);
        return Ok(0);
    }
    if list.is_empty() {
        println!("{name} has no backups yet: ripcord db backup {name}");
        return Ok(0);
    }
    println!(
        "{:>4}  {:<24}  {:>10}  {:<10}  {:<9}  path",
        "id", "taken (UTC)", "size", "release", "verified"
    );
    for b in &list {
        let release = b
            .release_id
            .and_then(|id| ledger.release(id).ok())
            .map_or("-".to_string(), |r| r.version);
        let verified = match b.verified_ok {
            Some(true) => "ok",
            Some(false) => "FAILED",
            None => "not yet",
        };
        println!(
            "{:>4}  {:<24}  {:>10}  {:<10}  {:<9}  {}",
            b.id,
            format_utc(b.created_at_ms),
            human_size(b.size_bytes),
            release,
            verified,
            b.path
        );
    }
    Ok(0)
}

/// Finds the backup to restore: `--backup ID|FILE`, or the newest that passes
/// verification. Failed checks are recorded in the ledger.
async fn choose(
    ledger: &mut Ledger,
    name: &str,
    which: Option<&str>,
    json: bool,
) -> Result<BackupRecord, CliError> {
    let all = ledger
        .backups(name)
        .map_err(|e| CliError::new(1, e.to_string()))?;
    let candidates: Vec<BackupRecord> = match which {
        Some(w) => {
            let by_id = w.trim_start_matches('#').parse::<i64>().ok();
            let found = all.iter().find(|b| {
                Some(b.id) == by_id
                    || Path::new(&b.path) == Path::new(w)
                    || std::fs::canonicalize(w).ok() == Some(PathBuf::from(&b.path))
            });
            match found {
                Some(b) => vec![b.clone()],
                None => {
                    return Err(CliError::new(
                        2,
                        format!(
                            "`{w}` is not a backup ripcord recorded for {name}, so its checksum is unknown and \
                             ripcord will not restore it; see `ripcord db backups {name}`"
                        ),
                    ));
                }
            }
        }
        None => all,
    };
    if candidates.is_empty() {
        return Err(CliError::new(
            1,
            format!(
                "{name} has no backups: nothing to restore (take one with `ripcord db backup {name}`)"
            ),
        ));
    }
    let explicit = which.is_some();
    let newest = candidates[0].id;
    for b in candidates {
        if !json {
            eprintln!("  checking backup #{} ({})", b.id, b.path);
        }
        let spinner = Spinner::start(format!("checking backup #{}", b.id), json);
        let checked = db::verify(Path::new(&b.path), &b.sha256).await;
        spinner.finish();
        match checked {
            Ok(_) => {
                let _ = ledger.set_backup_verified(b.id, true);
                return Ok(b);
            }
            Err(e) => {
                let _ = ledger.set_backup_verified(b.id, false);
                if explicit {
                    let why = format!(
                        "backup #{} failed its integrity check, so nothing was stopped or changed: {e}",
                        b.id
                    );
                    record_restore_refused(
                        ledger,
                        name,
                        Some(b.id),
                        "integrity_check_failed",
                        &why,
                    );
                    return Err(CliError::new(3, why));
                }
                if !json {
                    eprintln!("  ✗ backup #{} failed its integrity check: {e}", b.id);
                }
            }
        }
    }
    let why =
        format!("no backup of {name} passes its integrity check: nothing was stopped or changed");
    // Every backup failed: the refusal names the newest, the one a restore would take.
    record_restore_refused(ledger, name, Some(newest), "integrity_check_failed", &why);
    Err(CliError::new(3, why))
}

pub(super) async fn restore(
    config: Option<&Path>,
    state_dir: &Path,
    name: &str,
    which: Option<&str>,
    confirm: Option<&str>,
    json: bool,
) -> Result<i32, CliError> {
    let cfg = load_config(config)?;
    let svc = service(&cfg, name)?;
    let dbc = db_config(svc, state_dir).map_err(exec_err)?;
    let dbname = db::PgUrl::parse(&dbc.url)
        .map_err(|e| CliError::new(2, e.to_string()))?
        .database;
    let mut ledger = ledger(state_dir)?;
    let b = choose(&mut ledger, name, which, json).await?;
    let window = db::loss_window(b.created_at_ms, now_ms());
    let release = b
        .release_id
        .and_then(|id| ledger.release(id).ok())
        .map_or("unknown".to_string(), |r| r.version);
    let taken = format_utc(b.created_at_ms);
    let banner = format!(
        "restore {dbname} from backup #{} ({}, {}, release {release})\n\
         DATA WRITTEN SINCE {taken} WILL BE LOST from {dbname} ({window} of writes); \
         the current database is kept, renamed, until you drop it",
        b.id,
        b.path,
        human_size(b.size_bytes)
    );
    // Under --json the banner's facts are in the answer (or the refusal) instead.
    if !json {
        eprintln!("{banner}");
    }
    // Consent: the database's name, typed or given.
    let interactive = confirm.is_none() && !json && std::io::stdin().is_terminal();
    let given = match confirm {
        Some(c) => c.to_string(),
        None if interactive => {
            eprint!("type the database's name ({dbname}) to restore it: ");
            let _ = std::io::stderr().flush();
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .map_err(|e| CliError::new(1, e.to_string()))?;
            line.trim().to_string()
        }
        None => {
            let why = format!(
                "refused: a non-interactive restore needs --confirm {dbname} (the database's name); nothing was changed"
            );
            record_restore_refused(&mut ledger, name, Some(b.id), "no_consent", &why);
            return Err(CliError::new(3, why));
        }
    };
    if given != dbname {
        // The ledger keeps what was refused, not what was typed (it could be anything).
        record_restore_refused(
            &mut ledger,
            name,
            Some(b.id),
            "wrong_confirm",
            &format!(
                "refused: the name given is not the database's name ({dbname}); nothing was changed"
            ),
        );
        return Err(CliError::new(
            3,
            format!(
                "refused: `{given}` is not the database's name ({dbname}); nothing was changed"
            ),
        ));
    }
    let request = Request::Restore {
        service: name.to_string(),
        backup: b.id,
        confirm: given.clone(),
    };
    let spinner = Spinner::start(format!("restoring {dbname} from backup #{}", b.id), json);
    let answer = control::call(state_dir, &request, |msg| {
        for line in msg.lines() {
            spinner.line(&format!("  {line}"));
        }
        if let Some(last) = msg.lines().last() {
            spinner.set_message(last.to_string());
        }
    })
    .await;
    let mut offline = false;
    let (exit, result, error) = match answer {
        Ok(a) => a,
        // No watcher: the restore takes the ledger's locks and runs here; the app is
        // started by the next `ripcord watch`.
        Err(control::ClientError::NotRunning { .. }) => {
            offline = true;
            drop(ledger);
            let shared = std::sync::Arc::new(std::sync::Mutex::new(self::ledger(state_dir)?));
            let say = |msg: String| spinner.set_message(msg);
            let r = restore_without_watcher(svc, state_dir, &shared, b.id, &given, &say).await;
            match r {
                Ok(outcome) => (0, serde_json::to_value(&outcome).unwrap_or_default(), None),
                Err(e) => (e.exit_code(), serde_json::Value::Null, Some(e.to_string())),
            }
        }
        Err(e) => {
            spinner.finish();
            return Err(CliError::new(
                1,
                format!(
                    "{e}\nthe restore runs in the watcher, which stops and starts the app; nothing was changed"
                ),
            ));
        }
    };
    spinner.finish();
    if json {
        output::print_json(&serde_json::json!({
            "ok": exit == 0, "exit": exit, "result": result, "error": error,
            "watcher": !offline,
        }));
        return Ok(exit);
    }
    match error {
        Some(e) => {
            eprintln!("✗ {e}");
            Ok(exit)
        }
        None => {
            println!(
                "✓ {dbname} restored from backup #{} ({window} of writes given up); the database before is kept as {}; {}",
                b.id,
                result["kept_as"].as_str().unwrap_or("?"),
                match result["app"].as_str() {
                    Some(v) => format!("{v} runs again and passed verification"),
                    None if offline => "no watcher runs, so no app was started: `ripcord watch` \
                                        starts the active release on the restored database"
                        .to_string(),
                    None => "no release was running".to_string(),
                }
            );
            Ok(0)
        }
    }
}
