//! `ripcord ci github`: writes (or, with `--check`, compares) the GitHub Actions
//! workflows that `report::github` renders from the config.

use std::path::{Path, PathBuf};

use serde_json::json;

use super::output::print_json;
use super::{CliError, exit};
use crate::report::github::{self, Options, Runner, ServiceFacts};

/// What `ci github` was asked for.
pub(super) struct GithubArgs<'a> {
    pub out: &'a Path,
    pub ssh: bool,
    pub runner_labels: Vec<String>,
    pub host_ripcord: String,
    pub host_config: Option<String>,
    pub host_state_dir: Option<String>,
    pub check: bool,
}

fn absolute(p: &Path) -> String {
    std::path::absolute(p)
        .unwrap_or_else(|_| p.to_path_buf())
        .display()
        .to_string()
}

pub(super) fn github(
    config: Option<&Path>,
    state_dir: &Path,
    args: GithubArgs<'_>,
    json: bool,
) -> Result<i32, CliError> {
    let cfg = super::load_config(config)?;
    if cfg.services.is_empty() {
        return Err(CliError::new(
            exit::USAGE,
            format!("{}: no services to write workflows for", cfg.path.display()),
        ));
    }
    let services: Vec<ServiceFacts> = cfg
        .services
        .iter()
        .map(|(name, s)| ServiceFacts {
            name: name.clone(),
            // The job outlives `deploy --wait`'s own default deadline.
            deploy_secs: (s.start_timeout + s.verify_deadline + s.bake + super::wait::MARGIN)
                .as_secs_f64()
                .ceil() as u64,
        })
        .collect();
    let opts = Options {
        runner: if args.ssh {
            Runner::Ssh
        } else {
            Runner::SelfHosted {
                labels: args.runner_labels,
            }
        },
        ripcord: args.host_ripcord,
        config: args.host_config.unwrap_or_else(|| absolute(&cfg.path)),
        state_dir: args.host_state_dir.unwrap_or_else(|| absolute(state_dir)),
        source: cfg.path.display().to_string(),
    };
    let mut files = Vec::new();
    let mut stale = Vec::new();
    for w in github::workflows(&services, &opts) {
        let path: PathBuf = args.out.join(w.file_name);
        let current = std::fs::read(&path).ok();
        let same = current.as_deref() == Some(w.yaml.as_bytes());
        let state = if same {
            "unchanged"
        } else if args.check {
            stale.push(path.display().to_string());
            if current.is_some() {
                "differs"
            } else {
                "missing"
            }
        } else {
            std::fs::create_dir_all(args.out)
                .and_then(|()| {
                    crate::report::write_atomic(args.out, w.file_name, w.yaml.as_bytes())
                })
                .map_err(|e| CliError::new(exit::FAILURE, format!("{}: {e}", path.display())))?;
            "written"
        };
        files.push(json!({ "path": path, "state": state }));
        if !json {
            let mark = match state {
                "unchanged" | "written" => "✓",
                _ => "✗",
            };
            println!("{mark} {} ({state})", path.display());
        }
    }
    if json {
        print_json(&json!({ "files": files, "ok": stale.is_empty() }));
    }
    if !stale.is_empty() {
        if !json {
            eprintln!(
                "the workflows do not follow {}: run `ripcord ci github` and commit the result",
                cfg.path.display()
            );
        }
        return Ok(exit::FAILURE);
    }
    if !json && !args.check && args.ssh {
        println!(
            "  set the repository secrets {}, {} and {} (see the files' headers)",
            github::SSH_SECRETS[0],
            github::SSH_SECRETS[1],
            github::SSH_SECRETS[2]
        );
    }
    Ok(exit::OK)
}
