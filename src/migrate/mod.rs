//! The migration checker: reads PostgreSQL `.sql` migrations, Alembic revision files,
//! Django and Rails migrations
//! and says, per file, which statements take blocking locks, lose data or break the code
//! that is running (or that a rollback would bring back), which phase the migration is in
//! (`expand`, `migrate`, `contract`) and whether its downgrade can be trusted. The
//! rollback guard reads the phases and the Alembic revision chain from the same report.
//!
//! The pipeline: [`plan`] pairs files into migrations by layout, `sql.rs` and `alembic.rs`
//! lower each script into a list of [`model::Op`]s with line numbers, `rules/` walks
//! those ops with a model of the transaction they run in and turns them into findings,
//! and `output.rs` renders the report.
//!
//! This module is pure: text in, findings out. It never reads the disk, the network or
//! the clock; `discover.rs` is the one IO edge and only the CLI uses it. It must never
//! panic on any input and never stay silent about a file: a statement it does not
//! understand becomes an `unknown` finding with its line.

mod alembic;
pub mod discover;
mod django;
pub mod guard;
mod layout;
mod model;
mod output;
mod plpgsql;
mod pyconst;
mod pyparse;
mod rails;
mod rules;
mod sql;
mod sqltext;
mod syntax;
mod types;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_django;
#[cfg(test)]
mod tests_inputs;
#[cfg(test)]
mod tests_rails;

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

pub use layout::plan;
pub use output::{exit_code, render_github, render_json, render_text};
pub use rules::rule_ids;

/// One file handed in by the caller (path as the user should see it, and its text):
/// a migration, or a runner's per-migration settings file (diesel's `metadata.toml`).
/// Bytes that were not UTF-8 are expected as U+FFFD (`String::from_utf8_lossy`); the
/// checker reports the line they are on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    pub path: String,
    pub text: String,
}

/// What a migration file is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Sql,
    Alembic,
    Django,
    Rails,
}

/// The convention a migration was recognised by; it decides how up and down pair and
/// whether the runner wraps the file in a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Layout {
    /// An Alembic revision (`versions/*.py`).
    Alembic,
    /// A Django migration (`APP/migrations/0001_x.py`).
    Django,
    /// A Rails migration (`db/migrate/20240101120000_x.rb`).
    Rails,
    /// diesel: `DIR/up.sql` + `DIR/down.sql`.
    Diesel,
    /// golang-migrate: `N_name.up.sql` + `N_name.down.sql`.
    GolangMigrate,
    /// Flyway: `V1__x.sql` + `U1__x.sql`.
    Flyway,
    /// One `.sql` file holding both directions behind `-- migrate:up` / `-- migrate:down`
    /// (dbmate) or `-- +goose Up` / `-- +goose Down` (goose) markers.
    Sections,
    /// A `.sql` file with no recognised convention: no downgrade can be found for it.
    Plain,
}

/// The text of one direction of a migration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    pub path: String,
    pub text: String,
    /// 1-based line in `path` where `text` starts (sections of one file start later).
    pub first_line: usize,
}

/// One migration: an upgrade and, when the layout has one, its downgrade.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    /// The path reported for the migration (the up file, or the Alembic revision).
    pub path: String,
    pub kind: Kind,
    pub layout: Layout,
    /// `None` for a down file whose up file was not among the inputs.
    pub up: Option<Script>,
    /// For Alembic the same file as `up` (its `downgrade()` is analysed separately).
    pub down: Option<Script>,
    /// The runner is told not to wrap this migration (both directions) in a
    /// transaction: diesel's `metadata.toml` next to `up.sql` with
    /// `run_in_transaction = false`. Always false for the other layouts.
    pub without_transaction: bool,
}

/// How bad a finding is; `error` findings make [`exit_code`] return 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Severity {
    Info,
    Warning,
    Error,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }

    /// Parses `error`, `warning` or `info` (for settings files).
    pub fn parse(s: &str) -> Option<Severity> {
        match s {
            "error" => Some(Severity::Error),
            "warning" => Some(Severity::Warning),
            "info" => Some(Severity::Info),
            _ => None,
        }
    }
}

/// What can go wrong when the statement runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Risk {
    /// A blocking lock or a table rewrite.
    Lock,
    DataLoss,
    /// The running code, or the code a rollback brings back, stops working.
    BreaksOldCode,
    /// The statement can fail outright.
    Fails,
    /// ripcord could not analyse it.
    Unknown,
}

/// The expand/contract phase of a migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Additive: the old code keeps working.
    Expand,
    /// Moves or backfills data.
    Migrate,
    /// Removes or tightens something the old code needs.
    Contract,
    /// Could not be analysed (the findings say where and why).
    Unknown,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Expand => "expand",
            Phase::Migrate => "migrate",
            Phase::Contract => "contract",
            Phase::Unknown => "unknown",
        }
    }
}

/// The verdict on a migration's downgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DownState {
    Ok,
    Missing,
    Empty,
    Fails,
    DataLoss,
    Unknown,
}

/// One problem, at one line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub rule: &'static str,
    pub severity: Severity,
    pub line: usize,
    pub risk: Vec<Risk>,
    pub message: String,
    pub fix: String,
    /// The path the line belongs to, when it is not the migration's path (a down file).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// A finding that a `ripcord:allow` comment accepted, kept so the acceptance is visible.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Suppressed {
    #[serde(flatten)]
    pub finding: Finding,
    pub reason: String,
}

/// Why the phase is what it is: the deciding statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PhaseReason {
    pub line: usize,
    pub why: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UpReport {
    pub findings: Vec<Finding>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub suppressed: Vec<Suppressed>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DownReport {
    pub state: DownState,
    /// The down file, when it is a separate file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    pub findings: Vec<Finding>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub suppressed: Vec<Suppressed>,
}

/// The report for one migration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileReport {
    pub path: String,
    pub kind: Kind,
    pub layout: Layout,
    pub phase: Phase,
    pub phase_reason: Option<PhaseReason>,
    /// Alembic `revision`, for the rollback guard's revision chain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// Alembic `down_revision` (several for a merge revision, none for the first).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub down_revision: Option<Vec<String>>,
    pub upgrade: UpReport,
    pub downgrade: DownReport,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub files: Vec<FileReport>,
}

/// What the caller configures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The PostgreSQL major version migrations run against: several lock facts depend on
    /// it (fast defaults from 11, REINDEX CONCURRENTLY from 12, DETACH CONCURRENTLY from 14).
    pub pg_version: u32,
    /// Rule ids that are turned off.
    pub disabled: BTreeSet<String>,
    /// Rule id to severity, overriding the default.
    pub severity: BTreeMap<String, Severity>,
    /// What a migration must set before it queues for a blocking lock.
    pub lock_timeout: Timeout,
    pub statement_timeout: Timeout,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            pg_version: 15,
            disabled: BTreeSet::new(),
            severity: BTreeMap::new(),
            lock_timeout: Timeout::Required,
            statement_timeout: Timeout::Off,
        }
    }
}

/// What a migration must set before a statement that queues for a blocking lock on an
/// existing table (`missing-lock-timeout`, `missing-statement-timeout`), and the most it
/// may set (`timeout-above-limit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Timeout {
    /// Not checked.
    Off,
    /// Must be set (to anything but 0).
    Required,
    /// Must be set, to at most this many milliseconds.
    AtMost(u64),
}

impl Timeout {
    /// Parses `off`, `required` or a duration (`5s`, `500ms`, `1min`; a bare number is
    /// milliseconds, as in PostgreSQL).
    pub fn parse(s: &str) -> Result<Timeout, String> {
        match s.trim() {
            "off" => Ok(Timeout::Off),
            "required" => Ok(Timeout::Required),
            other => match parse_pg_millis(other) {
                Some(0) => Err(format!(
                    "\"{s}\": a timeout of 0 turns it off; write \"off\" to stop checking it"
                )),
                Some(ms) => Ok(Timeout::AtMost(ms)),
                None => Err(format!(
                    "\"{s}\": expected \"off\", \"required\" or a duration such as \"5s\" or \"500ms\""
                )),
            },
        }
    }
}

/// A PostgreSQL time setting in milliseconds: `2000`, `'2s'`, `'500ms'`, `'1min'`,
/// `'1h'`, `'1d'`, `'250us'` (rounded down), with optional space before the unit.
pub(crate) fn parse_pg_millis(s: &str) -> Option<u64> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().ok()?;
    let per = match unit.trim() {
        "" | "ms" => 1.0,
        "us" => 0.001,
        "s" => 1000.0,
        "min" => 60_000.0,
        "h" => 3_600_000.0,
        "d" => 86_400_000.0,
        _ => return None,
    };
    let ms = n * per;
    (ms.is_finite() && (0.0..1e15).contains(&ms)).then_some(ms as u64)
}

/// Which migration files a project holds, when the layout alone should not decide: a
/// directory of `.py` files that are not Alembic revisions, say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// `.sql`, Alembic and Django `.py` files, each by its layout.
    Auto,
    Alembic,
    Django,
    Rails,
    Sql,
}

impl Format {
    pub fn parse(s: &str) -> Option<Format> {
        match s {
            "auto" => Some(Format::Auto),
            "alembic" => Some(Format::Alembic),
            "django" => Some(Format::Django),
            "rails" => Some(Format::Rails),
            "sql" => Some(Format::Sql),
            _ => None,
        }
    }

    /// Keeps the files this format reads (diesel's `metadata.toml` goes with SQL).
    pub fn keep(self, files: Vec<SourceFile>) -> Vec<SourceFile> {
        let py = |f: &SourceFile| f.path.ends_with(".py");
        match self {
            Format::Auto => files,
            Format::Alembic => files
                .into_iter()
                .filter(|f| py(f) && !django::is_migration(&f.path, &f.text))
                .collect(),
            Format::Django => files
                .into_iter()
                .filter(|f| django::is_migration(&f.path, &f.text))
                .collect(),
            Format::Rails => files
                .into_iter()
                .filter(|f| f.path.ends_with(".rb"))
                .collect(),
            Format::Sql => files
                .into_iter()
                .filter(|f| !py(f) && !f.path.ends_with(".rb"))
                .collect(),
        }
    }
}

/// Checks every migration, in the order given (use [`plan`]'s order: what earlier
/// migrations created, such as column types, indexes and validated checks, informs
/// the judgement of later ones).
pub fn check(migrations: &[Migration], settings: &Settings) -> Report {
    let mut schema = rules::Schema::default();
    let files = migrations
        .iter()
        .map(|m| rules::check_migration(m, settings, &mut schema))
        .collect();
    Report { files }
}
