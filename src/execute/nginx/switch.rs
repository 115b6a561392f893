//! A switch: refuse a hand edit, write the new site file, test, reload, and put the
//! previous file back when either command fails.

use std::fs;
use std::time::Instant;

use super::command::{Outcome, display_argv, run_command};
use super::files::{backup_path, lock_site, read_text, write_atomically};
use super::state::{Loaded, State, load_state, store_state};
use super::upstream::{read_upstream, render, validate_switch};
use super::{
    CommandFailure, Restore, SiteConfig, SiteError, Stage, Switch, SwitchOptions, SwitchReport,
    io_err, millis,
};

/// What the owned block says now, so a restarted ripcord can reconcile its records with
/// the file.
pub fn current(cfg: &SiteConfig) -> Result<Switch, SiteError> {
    let text = read_text(&cfg.site)?;
    let block = read_upstream(&text, &cfg.upstream).map_err(SiteError::parse_in(&cfg.site))?;
    Ok(block.to_switch())
}

/// Points the owned block at `sw`, tests and reloads nginx; see [`switch_with`].
pub fn switch(cfg: &SiteConfig, sw: &Switch) -> Result<SwitchReport, SiteError> {
    switch_with(cfg, sw, SwitchOptions::default())
}

/// Points the owned block at `sw`: refuses a block edited by hand since ripcord's last
/// write (unless forced), writes the new file atomically and keeps the previous one as
/// [`backup_path`], runs the test command, then the reload command. When either fails
/// the previous file is put back (and after a failed reload, nginx is reloaded again, best
/// effort) and the error carries the command, its status and what it printed. The
/// fingerprint in the state file is updated only after success.
pub fn switch_with(
    cfg: &SiteConfig,
    sw: &Switch,
    opts: SwitchOptions,
) -> Result<SwitchReport, SiteError> {
    if cfg.test_command.is_empty() {
        return Err(SiteError::EmptyCommand { which: "test" });
    }
    if cfg.reload_command.is_empty() {
        return Err(SiteError::EmptyCommand { which: "reload" });
    }
    // Renaming over a symlink would replace the link with a plain file; rewrite the
    // file it points to instead.
    let site = fs::canonicalize(&cfg.site).map_err(io_err("resolve site file", &cfg.site))?;
    let _lock = lock_site(&site, cfg.command_timeout.saturating_mul(3))?;

    let meta = fs::metadata(&site).map_err(io_err("read site file", &site))?;
    let text = read_text(&site)?;
    let block = read_upstream(&text, &cfg.upstream).map_err(SiteError::parse_in(&site))?;
    validate_switch(&cfg.upstream, &block, sw)?;

    let site_key = site.to_string_lossy().into_owned();
    let mut forced = false;
    let mut state = match load_state(&cfg.state_file)? {
        Loaded::Found(st) if st.site == site_key && st.upstream == cfg.upstream => {
            let known = block.fingerprint == st.fingerprint
                || st.pending.as_deref() == Some(&block.fingerprint);
            if !known {
                if !opts.force {
                    return Err(SiteError::HandEdited {
                        path: site,
                        state: Box::new(cfg.state_file.clone()),
                        upstream: cfg.upstream.clone(),
                        line: block.line,
                        expected: st.servers,
                        found: block.servers_display(),
                    });
                }
                forced = true;
            }
            st
        }
        Loaded::Bad(reason) if !opts.force => {
            return Err(SiteError::BadState {
                path: cfg.state_file.clone(),
                reason,
            });
        }
        other => {
            forced = matches!(other, Loaded::Bad(_));
            // First use (or a state file about another site or upstream): trust the
            // block as it is and record it, so later hand edits are caught.
            let st = State {
                site: site_key.clone(),
                upstream: cfg.upstream.clone(),
                fingerprint: block.fingerprint.clone(),
                servers: block.servers_display(),
                pending: None,
            };
            store_state(&cfg.state_file, &st)?;
            st
        }
    };

    let new_text = render(&text, &block, sw);
    let new_block = read_upstream(&new_text, &cfg.upstream).map_err(SiteError::parse_in(&site))?;
    let changed = new_text != text;
    let backup = backup_path(&site);

    let write_start = Instant::now();
    if changed {
        // Recorded before the write so that a crash between the write and the final
        // state update is not later mistaken for a hand edit.
        state.pending = Some(new_block.fingerprint.clone());
        store_state(&cfg.state_file, &state)?;
        crate::failpoint::hit("nginx.pending_recorded");
        write_atomically(&backup, text.as_bytes(), Some(&meta))?;
        if let Err(e) = write_atomically(&site, new_text.as_bytes(), Some(&meta)) {
            // The rename may have happened before the failure (a failed directory
            // fsync); put the previous text back so the error means "nothing changed".
            let _ = write_atomically(&site, text.as_bytes(), Some(&meta));
            return Err(e);
        }
        crate::failpoint::hit("nginx.site_written");
    }
    let write_ms = millis(write_start.elapsed());

    let failure = |stage: Stage, outcome: &Outcome, restore: Restore| CommandFailure {
        stage,
        site: site.clone(),
        upstream: cfg.upstream.clone(),
        command: display_argv(match stage {
            Stage::Test => &cfg.test_command,
            Stage::Reload => &cfg.reload_command,
        }),
        status: outcome.status.clone(),
        output: outcome.output.clone(),
        restore,
        previous_passes: None,
        retry: None,
    };
    let restore = |state: &mut State| -> Restore {
        if !changed {
            return Restore::Unchanged;
        }
        let restored = match write_atomically(&site, text.as_bytes(), Some(&meta)) {
            Ok(()) => Restore::Restored,
            Err(e) => Restore::Failed {
                error: e.to_string(),
                backup: backup.clone(),
            },
        };
        if restored == Restore::Restored {
            state.pending = None;
            // The file is back to the recorded block; a stale `pending` is harmless.
            let _ = store_state(&cfg.state_file, state);
        }
        restored
    };

    let test = run_command(&cfg.test_command, cfg.command_timeout);
    let test_ms = millis(test.elapsed);
    if !test.status.success() {
        let restored = restore(&mut state);
        let mut f = failure(Stage::Test, &test, restored.clone());
        f.previous_passes = match restored {
            Restore::Restored => Some(
                run_command(&cfg.test_command, cfg.command_timeout)
                    .status
                    .success(),
            ),
            // Unchanged: nothing was written, so the message already says the
            // configuration failed as it was. Failed: the file on disk is unknown.
            Restore::Unchanged | Restore::Failed { .. } => None,
        };
        return Err(SiteError::Command(Box::new(f)));
    }

    let reload = run_command(&cfg.reload_command, cfg.command_timeout);
    let reload_ms = millis(reload.elapsed);
    if !reload.status.success() {
        let restored = restore(&mut state);
        let mut f = failure(Stage::Reload, &reload, restored.clone());
        if restored == Restore::Restored {
            // The first reload may have reached nginx before failing; reload again so
            // nginx runs the restored file.
            f.retry = Some(run_command(&cfg.reload_command, cfg.command_timeout).status);
        }
        return Err(SiteError::Command(Box::new(f)));
    }

    crate::failpoint::hit("nginx.reloaded");
    let done = State {
        site: site_key,
        upstream: cfg.upstream.clone(),
        fingerprint: new_block.fingerprint.clone(),
        servers: new_block.servers_display(),
        pending: None,
    };
    // Traffic has moved: failing the switch now would misreport it. The `pending`
    // fingerprint written before the file keeps the next switch from crying hand edit.
    let warning = store_state(&cfg.state_file, &done)
        .err()
        .map(|e| format!("the switch succeeded but the state was not updated: {e}"));

    Ok(SwitchReport {
        site,
        backup: changed.then_some(backup),
        changed,
        old_servers: block.servers.iter().map(ToString::to_string).collect(),
        new_servers: new_block.servers.iter().map(ToString::to_string).collect(),
        layout: block.layout,
        forced,
        write_ms,
        test_ms,
        reload_ms,
        warning,
    })
}
