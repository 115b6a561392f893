//! The command line: parses arguments, runs one command, maps the outcome to the
//! documented exit codes (the `exit` module; the README's table lists them). Human
//! output is for people; `--json` output is a compatibility promise for scripts, and
//! under it a fatal error is one JSON object on stderr, nothing else.

mod ci_cmd;
mod db_cmd;
mod demo;
mod doctor;
mod drill;
mod follow;
mod guard_cmd;
mod output;
mod progress;
mod wait;

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand};

use crate::config::duration::parse as parse_duration;
use crate::config::{self, Config, LoadError};
use crate::ledger::Ledger;
use crate::watch::control::{self, Request};

#[derive(Parser, Debug)]
#[command(
    name = "ripcord",
    version,
    about = "Automatic, fast, verified rollbacks: deploy, guard, roll back, verify",
    long_about = None,
    propagate_version = true
)]
pub struct Cli {
    /// The config file [default: ./ripcord.toml]
    #[arg(long, global = true, env = "RIPCORD_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where the ledger, logs and control socket live
    #[arg(
        long,
        global = true,
        env = "RIPCORD_STATE_DIR",
        value_name = "DIR",
        default_value = ".ripcord"
    )]
    pub state_dir: PathBuf,
    /// Machine-readable output (a compatibility promise)
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// The whole loop on the embedded default, in a temporary directory: a bad release
    /// is rolled back by the guard with nobody involved
    Demo {
        /// The fault the bad release carries
        #[arg(long, value_enum, default_value = "errors")]
        scenario: demo::Scenario,
        /// How long the `healthy` and `edge` scenarios run (`90s`, `2m`, or whole seconds)
        #[arg(long, alias = "duration-secs", value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
        duration: Duration,
        /// Requests a second the demo's load generator sends through the proxy
        #[arg(long, value_name = "N", default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=2000))]
        rate: u64,
    },
    /// Deploy VERSION of SERVICE: start it in the idle slot, health-gate, switch, verify
    Deploy {
        service: String,
        #[arg(id = "release_version", value_name = "VERSION")]
        version: String,
        /// Deploy even a release marked bad (needs --reason)
        #[arg(long)]
        force: bool,
        /// The slot to deploy to (default: the idle one); with runtime `external`, the
        /// slot where the new version already runs
        #[arg(long, value_parser = ["blue", "green"])]
        slot: Option<String>,
        /// Why: kept in the ledger
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
        /// Runtime docker: deploy this image reference instead of IMAGE:VERSION; the
        /// ledger pins the image id it resolves to
        #[arg(long, value_name = "REF")]
        image: Option<String>,
        /// The release's argv ({port} and {version} are substituted); default: the
        /// recorded one, else the config's `command`
        #[arg(last = true, value_name = "ARGV")]
        argv: Vec<String>,
        /// After the deploy, wait until the bake is over and the guard has cleared the
        /// release: exit 0 if it is still active, 5 if it was rolled back, 6 if no
        /// verdict came in time (default: the bake period plus a minute; `90s`, `2m`,
        /// or whole seconds)
        #[arg(
            long,
            value_name = "DURATION",
            num_args = 0..=1,
            require_equals = true,
            value_parser = parse_duration
        )]
        wait: Option<Option<Duration>>,
    },
    /// Roll SERVICE back to the previous good release (or --to a given one), then verify
    Rollback {
        service: String,
        /// A version, or a release id written #ID
        #[arg(long, value_name = "RELEASE")]
        to: Option<String>,
        /// Why: kept in the ledger with the release rolled away from
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
        /// Roll back even across a contract migration (needs --reason)
        #[arg(long)]
        force: bool,
    },
    /// Rehearse SERVICE's rollback under live traffic: back to the previous release,
    /// verify, forward to the current one, verify; every step timed against
    /// `drill_budget`. Exit 0 passed (over budget: a warning), 1 failed (the current
    /// release restored), 3 refused, 4 the current release failed verification
    Drill {
        service: String,
        /// Print the plan and the last drill's timings; touch nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// Run SERVICE's verification checks now
    Verify { service: String },
    /// What runs, what ran before, what is happening
    Status {
        service: Option<String>,
        /// Redraw every --interval until Ctrl-C (JSON lines under --json)
        #[arg(long)]
        watch: bool,
        /// How often --watch redraws (`2s`, `500ms`, or whole seconds)
        #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_interval, requires = "watch")]
        interval: Duration,
    },
    /// Every release of SERVICE, newest first
    Releases { service: String },
    /// SERVICE's timeline from the ledger
    Events {
        service: String,
        /// How many of the newest events
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Keep printing new events as they are recorded, until Ctrl-C or until stdout is
        /// closed (one JSON object a line under --json)
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// Run the guard daemon: proxies, releases, control socket (foreground)
    Watch,
    /// Stop everything for SERVICE: no deploy, no rollback, automatic or manual
    Freeze {
        service: String,
        /// Why (e.g. "data corruption in orders"): kept in the ledger and the incident
        #[arg(long, value_name = "TEXT")]
        reason: String,
    },
    /// Allow deploys and rollbacks of SERVICE again
    Unfreeze {
        service: String,
        #[arg(long, value_name = "TEXT")]
        reason: String,
    },
    /// Acknowledge SERVICE's investigation: the guard will not roll it back for it
    Ack { service: String },
    /// Database backups and the emergency restore (PostgreSQL)
    Db {
        #[command(subcommand)]
        command: DbCommand,
    },
    /// Rollback readiness of SERVICE: the previous release, its image and env snapshot,
    /// the slot ports, the engine, the health URL; exit 1 when a rollback would fail
    Doctor { service: String },
    /// Where `ripcord watch` serves its web dashboard, and the token its actions need
    Dashboard {
        /// Print only the token (for scripts: `curl -H "Authorization: Bearer $(...)"`)
        #[arg(long)]
        token: bool,
    },
    /// The rollback runbook, generated from the config and the ledger (Markdown)
    Runbook {
        /// Only this service
        service: Option<String>,
        /// Write it to FILE instead of printing it
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Incidents: list, show one, write its report
    Incident {
        #[command(subcommand)]
        command: IncidentCommand,
    },
    /// Generate CI workflows for the config's services
    Ci {
        #[command(subcommand)]
        command: CiCommand,
    },
    /// Migrations: which changes make a rollback unsafe
    Migrations {
        #[command(subcommand)]
        command: MigrationsCommand,
    },
    /// Check the config file and report every problem
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Print the shell completion script for SHELL (e.g. `ripcord completions bash >
    /// ~/.local/share/bash-completion/completions/ripcord`)
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff): `ripcord man | man -l -`
    #[command(visible_alias = "manpage")]
    Man,
    /// Run the demo application (used by `ripcord demo`, tests and benchmarks)
    #[command(hide = true)]
    DemoApp(ripcord_demo_app::DemoAppArgs),
    /// Hold the proxies' listening sockets across watcher restarts (started by `watch`)
    #[command(hide = true)]
    KeepSockets {
        /// How long to hold them after the watcher died, waiting for the next one
        #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
        grace: std::time::Duration,
    },
}

#[derive(Subcommand, Debug)]
pub enum DbCommand {
    /// pg_dump (custom format) of SERVICE's database, checksummed and recorded
    Backup { service: String },
    /// SERVICE's backups, newest first
    Backups { service: String },
    /// Restore a backup into a new database, check it, swap it in (the old one is kept
    /// renamed), restart and verify the app. Shows what will be lost and asks first
    Restore {
        service: String,
        /// A backup id (see `db backups`) or its file; default: the newest that passes
        /// its integrity check
        #[arg(long, value_name = "ID|FILE")]
        backup: Option<String>,
        /// Consent without a prompt: the database's name
        #[arg(long, value_name = "DBNAME")]
        confirm: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum IncidentCommand {
    /// Every incident, newest first
    List {
        /// Only this service's
        #[arg(long)]
        service: Option<String>,
    },
    /// One incident with its timeline
    Show { id: i64 },
    /// Write the incident's Markdown report and SVG chart
    Report {
        id: i64,
        /// Where to write [default: STATE_DIR/reports]
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum MigrationsCommand {
    /// Check SQL, Alembic, Django and Rails migrations (files or directories): locks, data loss, what
    /// breaks the old code, each revision's phase and whether its downgrade is safe.
    /// Exit 1 when an error-severity finding remains
    Check {
        /// Files or directories (Alembic versions/, Django, Rails db/migrate, diesel,
        /// golang-migrate, Flyway, plain
        /// .sql); with --service, its [service.NAME.migrations] dir when left out
        #[arg(value_name = "PATH", required_unless_present = "service")]
        paths: Vec<PathBuf>,
        /// Take the settings (and the directory) from [service.NAME.migrations] in the
        /// config file; the flags below override them
        #[arg(long, value_name = "NAME")]
        service: Option<String>,
        /// text (default), json, or github (workflow annotations)
        #[arg(long, value_parser = ["text", "json", "github"], default_value = "text")]
        format: String,
        /// Which files are migrations: auto (default), alembic, django, rails or sql
        #[arg(long, value_name = "FORMAT", value_parser = ["auto", "alembic", "django", "rails", "sql"])]
        migration_format: Option<String>,
        /// The PostgreSQL major version the migrations run against [default: 15]
        #[arg(long, value_name = "N")]
        pg_version: Option<u32>,
        /// What a migration must set before a blocking lock: off, required (default), or
        /// a duration it may not exceed (5s, 500ms)
        #[arg(long, value_name = "EXPECT")]
        lock_timeout: Option<String>,
        /// The same for statement_timeout [default: off]
        #[arg(long, value_name = "EXPECT")]
        statement_timeout: Option<String>,
        /// Turn a rule off (repeatable)
        #[arg(long, value_name = "RULE")]
        disable: Vec<String>,
        /// Change a rule's severity: RULE=error|warning|info (repeatable)
        #[arg(long, value_name = "RULE=LEVEL")]
        severity: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum CiCommand {
    /// Write GitHub Actions workflows: a rollback started by hand (workflow_dispatch) and
    /// a deploy that fails its job when the guard rolls the release back
    Github {
        /// Where to write them
        #[arg(long, value_name = "DIR", default_value = ".github/workflows")]
        out: PathBuf,
        /// Run the jobs on a GitHub-hosted runner and reach the deploy host over SSH
        /// (secrets RIPCORD_SSH_KEY, RIPCORD_SSH_HOST, RIPCORD_SSH_KNOWN_HOSTS), instead
        /// of on a self-hosted runner on the deploy host
        #[arg(long)]
        ssh: bool,
        /// The self-hosted runner's label, besides `self-hosted` (repeatable)
        #[arg(
            long,
            value_name = "LABEL",
            default_value = "ripcord",
            conflicts_with = "ssh"
        )]
        runner_label: Vec<String>,
        /// The ripcord binary on the deploy host
        #[arg(long, value_name = "PATH", default_value = "ripcord")]
        host_ripcord: String,
        /// The config file on the deploy host [default: this config's absolute path]
        #[arg(long, value_name = "FILE")]
        host_config: Option<String>,
        /// The state directory on the deploy host [default: this state dir's absolute path]
        #[arg(long, value_name = "DIR")]
        host_state_dir: Option<String>,
        /// Write nothing; exit 1 when a file is missing or differs (for a CI check that
        /// the workflows follow the config)
        #[arg(long)]
        check: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Report every problem with its key path and line; exit 2 when there are any
    Check,
}

/// Every exit code the CLI uses; the README's table says the same.
pub mod exit {
    /// Done as asked.
    pub const OK: i32 = 0;
    /// A failure: the operation did not succeed, or ripcord could not do its part.
    pub const FAILURE: i32 = 1;
    /// A usage or config error: nothing was done.
    pub const USAGE: i32 = 2;
    /// Refused by a guard (frozen, a bad release, a contract migration, busy, no consent).
    pub const REFUSED: i32 = 3;
    /// Verification failed.
    pub const VERIFY_FAILED: i32 = 4;
    /// `deploy --wait`: the release was rolled back while we waited (by the guard, or by a
    /// person meanwhile: the reason says which).
    pub const ROLLED_BACK: i32 = 5;
    /// `deploy --wait`: no verdict in time; the release still serves, not yet cleared.
    pub const WAIT_TIMED_OUT: i32 = 6;
}

/// `status --interval`: a duration of at least 100ms (a redraw loop, never a busy one).
fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_millis(100) {
        return Err(format!("\"{s}\" is too short: at least 100ms"));
    }
    Ok(d)
}

/// A command's failure: what to print and the exit code.
#[derive(Debug)]
pub struct CliError {
    pub code: i32,
    pub message: String,
}

impl CliError {
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        CliError {
            code,
            message: message.into(),
        }
    }
}

impl<E: std::error::Error> From<E> for CliError {
    fn from(e: E) -> Self {
        CliError::new(1, e.to_string())
    }
}

/// Parses the process arguments and runs; returns the exit code.
pub fn main() -> i32 {
    // Before parsing succeeds, --json is looked for by hand (never in a release's argv
    // after `--`), so even a usage error is one JSON object for a script.
    let json_asked = std::env::args_os()
        .skip(1)
        .take_while(|a| a != "--")
        .any(|a| a == "--json");
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e, json_asked),
    };
    let json = cli.json;
    match cli.command {
        Command::DemoApp(args) => return ripcord_demo_app::run(args),
        Command::KeepSockets { grace } => {
            return crate::sockets::keeper::serve(&cli.state_dir, grace);
        }
        Command::Completions { shell } => {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut public_command(), "ripcord", &mut out);
            return write_stdout(&out, json);
        }
        Command::Man => {
            let mut out = Vec::new();
            if let Err(e) = clap_mangen::Man::new(Cli::command()).render(&mut out) {
                return fatal(&CliError::new(exit::FAILURE, e.to_string()), json);
            }
            return write_stdout(&out, json);
        }
        _ => {}
    }
    init_tracing(match cli.command {
        Command::Watch => "info",
        // The demo narrates itself; the in-process watcher's warnings would repeat it.
        Command::Demo { .. } => "error",
        // Under --json, stderr carries only the fatal error's JSON (RUST_LOG still works).
        _ if json => "off",
        _ => "warn",
    });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let e = CliError::new(
                exit::FAILURE,
                format!("cannot start the async runtime: {e}"),
            );
            return fatal(&e, json);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => fatal(&e, json),
    }
}

/// The command line without its hidden subcommands, which clap_complete would offer.
fn public_command() -> clap::Command {
    let full = Cli::command();
    clap::Command::new("ripcord")
        .version(env!("CARGO_PKG_VERSION"))
        .propagate_version(true)
        .subcommand_required(true)
        .args(full.get_arguments().cloned())
        .subcommands(full.get_subcommands().filter(|c| !c.is_hide_set()).cloned())
}

/// Prints a fatal error (one JSON object under --json) and returns its exit code.
fn fatal(e: &CliError, json: bool) -> i32 {
    let message = config::redact::scrub(&e.message);
    if json {
        eprintln!(
            "{}",
            serde_json::json!({ "error": message, "exit": e.code })
        );
    } else {
        eprintln!("error: {message}");
    }
    e.code
}

/// Help and version go to stdout (exit 0); a usage error exits 2, as one JSON object
/// under --json.
fn usage_error(e: clap::Error, json: bool) -> i32 {
    if !e.use_stderr() {
        let _ = e.print();
        return exit::OK;
    }
    if !json {
        let _ = e.print();
        return exit::USAGE;
    }
    let text = e.render().to_string();
    let message = text.trim().strip_prefix("error: ").unwrap_or(text.trim());
    eprintln!(
        "{}",
        serde_json::json!({ "error": message, "exit": exit::USAGE, "kind": "usage" })
    );
    exit::USAGE
}

/// Writes generated text (completions, the man page); a closed pipe is not an error.
fn write_stdout(bytes: &[u8], json: bool) -> i32 {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => exit::OK,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => exit::OK,
        Err(e) => fatal(
            &CliError::new(exit::FAILURE, format!("writing to stdout: {e}")),
            json,
        ),
    }
}

/// The log's stderr, with every known secret value taken out (`config::redact`): the
/// formatter writes each event whole, so a value is never cut across two writes.
struct ScrubbedStderr;

impl std::io::Write for ScrubbedStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        std::io::stderr().write_all(config::redact::scrub(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| ScrubbedStderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

pub async fn run(cli: Cli) -> Result<i32, CliError> {
    let state_dir = cli.state_dir.clone();
    let json = cli.json;
    match cli.command {
        Command::Config {
            command: ConfigCommand::Check,
        } => config_check(cli.config.as_deref(), json),
        Command::Deploy {
            service,
            version,
            force,
            slot,
            reason,
            image,
            argv,
            wait,
        } => {
            let cwd = std::env::current_dir().ok();
            let request = Request::Deploy {
                service,
                version,
                slot: slot.as_deref().and_then(crate::config::Slot::parse),
                argv: (!argv.is_empty()).then_some(argv),
                cwd,
                image,
                force,
                reason,
            };
            wait::deploy(&state_dir, request, wait, json).await
        }
        Command::Rollback {
            service,
            to,
            reason,
            force,
        } => {
            if force && reason.is_none() {
                return Err(CliError::new(
                    2,
                    "--force needs --reason TEXT: the ledger keeps why",
                ));
            }
            operation(
                &state_dir,
                Request::Rollback {
                    service,
                    to,
                    reason,
                    force,
                },
                json,
            )
            .await
        }
        Command::Drill { service, dry_run } => {
            drill::run(cli.config.as_deref(), &state_dir, &service, dry_run, json).await
        }
        Command::Verify { service } => {
            verify(cli.config.as_deref(), &state_dir, &service, json).await
        }
        Command::Status {
            service,
            watch,
            interval,
        } => {
            if let Some(service) = &service {
                known_service(cli.config.as_deref(), &open_ledger(&state_dir)?, service)?;
            }
            if watch {
                follow::status(
                    cli.config.as_deref(),
                    &state_dir,
                    service.as_deref(),
                    interval,
                    json,
                )
                .await
            } else {
                output::status(cli.config.as_deref(), &state_dir, service.as_deref(), json).await
            }
        }
        Command::Freeze { service, reason } => {
            guard_cmd::freeze(&state_dir, &service, &reason, json)
        }
        Command::Unfreeze { service, reason } => {
            guard_cmd::unfreeze(&state_dir, &service, &reason, json)
        }
        Command::Ack { service } => guard_cmd::ack(&state_dir, &service, json),
        Command::Db { command } => match command {
            DbCommand::Backup { service } => {
                db_cmd::backup(cli.config.as_deref(), &state_dir, &service, json).await
            }
            DbCommand::Backups { service } => db_cmd::backups(&state_dir, &service, json),
            DbCommand::Restore {
                service,
                backup,
                confirm,
            } => {
                db_cmd::restore(
                    cli.config.as_deref(),
                    &state_dir,
                    &service,
                    backup.as_deref(),
                    confirm.as_deref(),
                    json,
                )
                .await
            }
        },
        Command::Doctor { service } => {
            doctor::run(cli.config.as_deref(), &state_dir, &service, json).await
        }
        Command::Dashboard { token } => {
            guard_cmd::dashboard(cli.config.as_deref(), &state_dir, token, json)
        }
        Command::Ci {
            command:
                CiCommand::Github {
                    out,
                    ssh,
                    runner_label,
                    host_ripcord,
                    host_config,
                    host_state_dir,
                    check,
                },
        } => ci_cmd::github(
            cli.config.as_deref(),
            &state_dir,
            ci_cmd::GithubArgs {
                out: &out,
                ssh,
                runner_labels: runner_label,
                host_ripcord,
                host_config,
                host_state_dir,
                check,
            },
            json,
        ),
        Command::Runbook { service, out } => guard_cmd::runbook(
            cli.config.as_deref(),
            &state_dir,
            service.as_deref(),
            out.as_deref(),
            json,
        ),
        Command::Incident { command } => {
            let ledger = open_ledger(&state_dir)?;
            match command {
                IncidentCommand::List { service } => {
                    guard_cmd::incident_list(&ledger, service.as_deref(), json)
                }
                IncidentCommand::Show { id } => guard_cmd::incident_show(&ledger, id, json),
                IncidentCommand::Report { id, out } => {
                    let out = out.unwrap_or_else(|| state_dir.join("reports"));
                    guard_cmd::incident_report(&ledger, id, &out, json)
                }
            }
        }
        Command::Migrations {
            command:
                MigrationsCommand::Check {
                    paths,
                    service,
                    format,
                    migration_format,
                    pg_version,
                    lock_timeout,
                    statement_timeout,
                    disable,
                    severity,
                },
        } => {
            let from_config = match &service {
                Some(name) => {
                    let cfg = load_config(cli.config.as_deref())?;
                    let svc = cfg.services.get(name.as_str()).ok_or_else(|| {
                        CliError::new(2, format!("no service `{name}` in the config"))
                    })?;
                    let m = svc.migrations.clone().ok_or_else(|| {
                        CliError::new(
                            2,
                            format!("service `{name}` has no [service.{name}.migrations]"),
                        )
                    })?;
                    Some(m)
                }
                None => None,
            };
            migrations_check(
                MigrationsArgs {
                    paths,
                    from_config,
                    migration_format,
                    pg_version,
                    lock_timeout,
                    statement_timeout,
                    disable,
                    severity,
                },
                if json { "json" } else { &format },
            )
        }
        Command::Releases { service } => {
            let ledger = open_ledger(&state_dir)?;
            known_service(cli.config.as_deref(), &ledger, &service)?;
            output::releases(&ledger, &service, json)
        }
        Command::Events {
            service,
            limit,
            follow,
        } => {
            let ledger = open_ledger(&state_dir)?;
            known_service(cli.config.as_deref(), &ledger, &service)?;
            if follow {
                follow::events(&ledger, &service, limit, json).await
            } else {
                output::events(&ledger, &service, limit, json)
            }
        }
        Command::Watch => watch(cli.config.as_deref(), &state_dir).await,
        Command::Demo {
            scenario,
            duration,
            rate,
        } => demo::run(scenario, duration, rate, json).await,
        Command::DemoApp(_)
        | Command::KeepSockets { .. }
        | Command::Completions { .. }
        | Command::Man => {
            unreachable!("handled before the runtime starts")
        }
    }
}

/// The config path: --config, RIPCORD_CONFIG, or ./ripcord.toml.
fn config_path(flag: Option<&Path>) -> PathBuf {
    flag.map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(config::DEFAULT_PATH))
}

pub(crate) fn load_config(flag: Option<&Path>) -> Result<Config, CliError> {
    let path = config_path(flag);
    if flag.is_none() && !path.exists() {
        return Err(CliError::new(
            2,
            format!(
                "no config: {} does not exist; pass --config FILE or set RIPCORD_CONFIG \
                 (a commented example is in examples/ripcord.toml)",
                path.display()
            ),
        ));
    }
    let config = Config::load(&path).map_err(|e| match e {
        LoadError::Invalid { ref errors, .. } => {
            let mut msg = e.to_string();
            for err in errors {
                msg.push_str(&format!("\n  {err}"));
            }
            msg.push_str("\n(run `ripcord config check` to see them again)");
            CliError::new(2, msg)
        }
        e @ LoadError::Read { .. } => CliError::new(2, e.to_string()),
    })?;
    config::redact::configure(&config.redact);
    Ok(config)
}

/// A read command names a service that neither the ledger nor the config knows (a typo,
/// most likely): exit 2 with the names it could have meant, rather than an empty answer.
fn known_service(config: Option<&Path>, ledger: &Ledger, service: &str) -> Result<(), CliError> {
    let known = service_names(config, ledger)?;
    if known.iter().any(|k| k == service) {
        return Ok(());
    }
    Err(CliError::new(
        2,
        if known.is_empty() {
            format!(
                "no service `{service}`: nothing was deployed with this state dir yet and the config names none"
            )
        } else {
            format!(
                "no service `{service}` in the ledger or the config; known: {}",
                known.join(", ")
            )
        },
    ))
}

/// Every service the ledger has heard of or the config (when it loads) names, sorted.
pub(crate) fn service_names(
    config: Option<&Path>,
    ledger: &Ledger,
) -> Result<Vec<String>, CliError> {
    let mut names = ledger.services()?;
    if let Ok(cfg) = load_config(config) {
        names.extend(cfg.services.keys().cloned());
    }
    names.sort();
    names.dedup();
    Ok(names)
}

fn open_ledger(state_dir: &Path) -> Result<Ledger, CliError> {
    if !state_dir.join(crate::ledger::FILE_NAME).exists() {
        return Err(CliError::new(
            1,
            format!(
                "no ledger in {}: nothing was deployed with this state dir yet (pass --state-dir DIR \
                 if it lives elsewhere)",
                state_dir.display()
            ),
        ));
    }
    Ledger::open(state_dir).map_err(|e| CliError::new(1, e.to_string()))
}

fn config_check(flag: Option<&Path>, json: bool) -> Result<i32, CliError> {
    let path = config_path(flag);
    match Config::load(&path) {
        Ok(cfg) => {
            // Warnings do not fail the check: the config works, but not as well as it could.
            let warnings = cfg.warnings();
            if json {
                output::print_json(&serde_json::json!({
                    "ok": true,
                    "file": path,
                    "services": cfg.services.keys().collect::<Vec<_>>(),
                    "warnings": warnings,
                }));
            } else {
                for w in &warnings {
                    println!("! {w}");
                }
                let names: Vec<&str> = cfg.services.keys().map(String::as_str).collect();
                println!(
                    "✓ {}: {} service{} ({})",
                    path.display(),
                    names.len(),
                    if names.len() == 1 { "" } else { "s" },
                    names.join(", ")
                );
            }
            Ok(0)
        }
        Err(LoadError::Invalid { errors, .. }) => {
            if json {
                output::print_json(&serde_json::json!({
                    "ok": false,
                    "file": path,
                    "errors": errors,
                }));
            } else {
                for e in &errors {
                    println!("✗ {e}");
                }
                println!(
                    "{} problem{} in {}",
                    errors.len(),
                    if errors.len() == 1 { "" } else { "s" },
                    path.display()
                );
            }
            Ok(2)
        }
        Err(e) => Err(CliError::new(2, e.to_string())),
    }
}

/// Sends a deploy or rollback to the watcher and shows its progress (a spinner on a
/// terminal); returns the watcher's `(exit, result, error)`.
async fn call_watcher(
    state_dir: &Path,
    request: &Request,
    doing: String,
    json: bool,
) -> Result<(i32, serde_json::Value, Option<String>), CliError> {
    let spinner = progress::Spinner::start(doing, json);
    let answer = control::call(state_dir, request, |msg| {
        for line in msg.lines() {
            spinner.line(&format!("  {line}"));
        }
        if let Some(last) = msg.lines().last() {
            spinner.set_message(last.to_string());
        }
    })
    .await?;
    spinner.finish();
    Ok(answer)
}

/// Sends a deploy or rollback to the watcher, shows its progress and its outcome.
async fn operation(state_dir: &Path, request: Request, json: bool) -> Result<i32, CliError> {
    let doing = match &request {
        Request::Rollback { service, .. } => format!("rolling {service} back"),
        _ => "working".to_string(),
    };
    let (exit, result, error) = call_watcher(state_dir, &request, doing, json).await?;
    print_operation(exit, &result, error.as_deref(), None, json);
    Ok(exit)
}

/// A finished operation: the JSON object scripts read (with `wait` when the CLI waited
/// for the guard's verdict), or the one-line outcome.
fn print_operation(
    exit: i32,
    result: &serde_json::Value,
    error: Option<&str>,
    wait: Option<serde_json::Value>,
    json: bool,
) {
    if json {
        let mut v = serde_json::json!({
            "ok": exit == 0,
            "exit": exit,
            "result": result,
            "error": error,
        });
        if let Some(wait) = wait {
            v["wait"] = wait;
        }
        output::print_json(&v);
        return;
    }
    match error {
        Some(e) => eprintln!("✗ {e}"),
        None => output::outcome(result),
    }
}

async fn verify(
    flag: Option<&Path>,
    state_dir: &Path,
    service: &str,
    json: bool,
) -> Result<i32, CliError> {
    let cfg = load_config(flag)?;
    let svc = cfg
        .service(service)
        .ok_or_else(|| unknown_service(&cfg, service))?;
    // `{version}` in a check means the version that should be serving.
    let version = Ledger::open(state_dir)
        .ok()
        .and_then(|l| l.active_release(service).ok().flatten())
        .map(|r| r.version)
        .unwrap_or_default();
    let report = crate::verify::run(&svc.verify, svc.verify_deadline, &version).await;
    if json {
        output::print_json(&report);
    } else {
        print!("{}", report.render());
        let failed = report.failures().len();
        if report.ok {
            println!(
                "✓ {service}: {} check{} passed",
                report.checks.len(),
                plural(report.checks.len())
            );
        } else {
            println!(
                "✗ {service}: {failed} of {} check{} failed",
                report.checks.len(),
                plural(report.checks.len())
            );
        }
    }
    Ok(if report.ok { 0 } else { 4 })
}

/// `migrations check`'s inputs: the config's `[service.NAME.migrations]`, if named, and
/// the flags that override it.
struct MigrationsArgs {
    paths: Vec<PathBuf>,
    from_config: Option<config::MigrationsConfig>,
    migration_format: Option<String>,
    pg_version: Option<u32>,
    lock_timeout: Option<String>,
    statement_timeout: Option<String>,
    disable: Vec<String>,
    severity: Vec<String>,
}

fn migrations_check(args: MigrationsArgs, format: &str) -> Result<i32, CliError> {
    use crate::migrate;
    let MigrationsArgs {
        mut paths,
        from_config,
        migration_format,
        pg_version,
        lock_timeout,
        statement_timeout,
        disable,
        severity,
    } = args;
    let mut settings = from_config
        .as_ref()
        .map(config::MigrationsConfig::settings)
        .unwrap_or_default();
    let mut files_format = from_config
        .as_ref()
        .map_or(migrate::Format::Auto, |m| m.format);
    if paths.is_empty()
        && let Some(m) = &from_config
    {
        paths.push(m.dir.clone());
    }
    if let Some(f) = migration_format.as_deref().and_then(migrate::Format::parse) {
        files_format = f;
    }
    if let Some(v) = pg_version {
        settings.pg_version = v;
    }
    for (flag, value, slot) in [
        ("--lock-timeout", lock_timeout, &mut settings.lock_timeout),
        (
            "--statement-timeout",
            statement_timeout,
            &mut settings.statement_timeout,
        ),
    ] {
        if let Some(v) = value {
            *slot =
                migrate::Timeout::parse(&v).map_err(|e| CliError::new(2, format!("{flag} {e}")))?;
        }
    }
    let disable = &disable;
    let severity = &severity;
    let known = migrate::rule_ids();
    let unknown = |rule: &str| {
        CliError::new(
            2,
            format!("unknown rule `{rule}`; the rules are: {}", known.join(", ")),
        )
    };
    for rule in disable {
        if !known.contains(&rule.as_str()) {
            return Err(unknown(rule));
        }
        settings.disabled.insert(rule.clone());
    }
    for pair in severity {
        let Some((rule, level)) = pair.split_once('=') else {
            return Err(CliError::new(
                2,
                format!("--severity {pair}: expected RULE=error|warning|info"),
            ));
        };
        if !known.contains(&rule) {
            return Err(unknown(rule));
        }
        let level = migrate::Severity::parse(level).ok_or_else(|| {
            CliError::new(
                2,
                format!("--severity {pair}: `{level}` is not error, warning or info"),
            )
        })?;
        settings.severity.insert(rule.to_string(), level);
    }
    let files = migrate::discover::read_paths(&paths)
        .map(|f| files_format.keep(f))
        .map_err(|e| CliError::new(2, e.to_string()))?;
    if files.is_empty() {
        return Err(CliError::new(
            2,
            "no .sql or .py migration files under the given paths".to_string(),
        ));
    }
    let report = migrate::check(&migrate::plan(files), &settings);
    match format {
        "json" => output::print_json(&migrate::render_json(&report)),
        "github" => print!("{}", migrate::render_github(&report)),
        _ => print!("{}", migrate::render_text(&report)),
    }
    Ok(migrate::exit_code(&report))
}

pub(crate) fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

pub(crate) fn unknown_service(cfg: &Config, service: &str) -> CliError {
    let known: Vec<&str> = cfg.services.keys().map(String::as_str).collect();
    CliError::new(
        2,
        format!(
            "no service `{service}` in {} (it has: {})",
            cfg.path.display(),
            known.join(", ")
        ),
    )
}

async fn watch(flag: Option<&Path>, state_dir: &Path) -> Result<i32, CliError> {
    let cfg = load_config(flag)?;
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let names: Vec<String> = cfg
        .services
        .values()
        .map(|s| format!("{} ({})", s.name, s.entry()))
        .collect();
    let state = state_dir.to_path_buf();
    tokio::spawn(async move {
        if ready_rx.await.is_ok() {
            eprintln!(
                "ripcord watch: guarding {} (state dir {}); Ctrl-C or SIGTERM stops it",
                names.join(", "),
                state.display()
            );
        }
    });
    // The proxies' listening sockets outlive this process (a keeper holds them), so a
    // watcher that dies costs users a delay, not errors.
    let keep = match (cfg.socket_grace, std::env::current_exe()) {
        (None, _) => crate::sockets::Keep::No,
        (Some(grace), Ok(program)) => crate::sockets::Keep::Keeper { program, grace },
        (Some(_), Err(e)) => {
            tracing::warn!(error = %e, "cannot find this program's path: no socket keeper");
            crate::sockets::Keep::No
        }
    };
    crate::watch::run(cfg, state_dir, keep, shutdown_signal(), Some(ready_tx))
        .await
        .map_err(|e| CliError::new(1, e.to_string()))?;
    Ok(0)
}

/// Resolves on SIGINT or SIGTERM.
pub(crate) async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
        public_command().debug_assert();
    }

    /// What people read before they put `--wait` in a pipeline: its exit codes.
    #[test]
    fn deploy_help_documents_wait_and_its_exit_codes() {
        let mut cmd = Cli::command();
        let deploy = cmd
            .find_subcommand_mut("deploy")
            .expect("deploy exists")
            .clone();
        let help = deploy.bin_name("ripcord deploy").render_long_help();
        insta::assert_snapshot!("deploy_help", help.to_string());
    }

    #[test]
    fn a_status_interval_is_a_duration_of_at_least_100ms() {
        assert_eq!(parse_interval("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_interval("2"), Ok(Duration::from_secs(2)));
        assert_eq!(
            parse_interval("0").unwrap_err(),
            "\"0\" is too short: at least 100ms"
        );
        assert!(
            parse_interval("soon")
                .unwrap_err()
                .contains("is not a duration")
        );
    }

    #[test]
    fn deploy_wait_takes_its_duration_only_after_an_equals_sign() {
        let parse = |args: &[&str]| match Cli::try_parse_from(args).map(|c| c.command) {
            Ok(Command::Deploy {
                wait,
                service,
                version,
                ..
            }) => Ok((wait, service, version)),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e.kind()),
        };
        let deploy = |wait| Ok((wait, "web".to_string(), "v2".to_string()));
        assert_eq!(parse(&["ripcord", "deploy", "web", "v2"]), deploy(None));
        assert_eq!(
            parse(&["ripcord", "deploy", "web", "v2", "--wait"]),
            deploy(Some(None))
        );
        // `--wait` before the positionals does not swallow the service's name.
        assert_eq!(
            parse(&["ripcord", "deploy", "--wait", "web", "v2"]),
            deploy(Some(None))
        );
        assert_eq!(
            parse(&["ripcord", "deploy", "web", "v2", "--wait=2m"]),
            deploy(Some(Some(Duration::from_secs(120))))
        );
        assert!(parse(&["ripcord", "deploy", "web", "v2", "--wait=later"]).is_err());
    }
}
