//! The rules: walks the lowered operations of each direction with a model of the
//! transaction they run in (the runner's, explicit BEGIN/COMMIT, Alembic's
//! `autocommit_block()`), of the tables the migration created (exempt from lock rules)
//! and of what earlier migrations left behind (column types, indexes, validated NOT NULL
//! checks), and turns them into findings, the migration's phase and the downgrade's state.
//!
//! Pure and total: every operation is judged, an unknown one is reported as unknown, and
//! no rule may conclude "safe" from a fact it does not have.
//!
//! `catalog.rs` is every rule's fixed facts; `schema.rs` what earlier migrations left
//! behind; `lower.rs` turns a migration's files into operations; the engine here walks
//! them, one family of operations per file (`tables.rs`, `columns.rs`, `constraints.rs`,
//! `indexes.rs`, `transactions.rs`, which also knows how each runner wraps a file);
//! `suppressions.rs` applies settings and `ripcord:allow` comments last.

mod catalog;
mod columns;
mod constraints;
mod indexes;
mod lower;
mod schema;
mod suppressions;
mod tables;
mod transactions;

use std::collections::{HashMap, HashSet};

use crate::migrate::model::{Action, ConKind, Lowered, Op};
use crate::migrate::{
    DownReport, DownState, FileReport, Finding, Kind, Layout, Migration, Phase, PhaseReason, Risk,
    Settings, Severity, Timeout, UpReport,
};

pub use catalog::rule_ids;
pub(crate) use schema::Schema;

use catalog::{find_rule, meta_finding};
use lower::lower;
use suppressions::settle;

/// The unqualified, unquoted, lowercase name used to match objects.
fn norm(name: &str) -> String {
    let last = name.rsplit('.').next().unwrap_or(name);
    last.trim().trim_matches('"').to_ascii_lowercase()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Up,
    Down,
}

struct Raw {
    finding: Finding,
    anchor: Option<usize>,
}

/// What the upgrade created, so the downgrade's drops of it read as "data written since".
#[derive(Default, Clone)]
struct Created {
    tables: HashSet<String>,
    columns: HashSet<(String, String)>,
    indexes: HashSet<String>,
}

struct Engine<'a> {
    settings: &'a Settings,
    side: Side,
    kind: Kind,
    schema: &'a mut Schema,
    created: Created,
    from_up: Created,
    in_tx: bool,
    runner_tx: bool,
    runner_implicit: bool,
    runner_hint: &'static str,
    explicit: Vec<usize>,
    lock_timeout: bool,
    lock_timeout_local: bool,
    timeout_reported: bool,
    statement_timeout: bool,
    statement_timeout_local: bool,
    statement_reported: bool,
    /// Constraints added NOT VALID in the open transaction, with their kind.
    not_valid: HashMap<String, ConKind>,
    enum_values: Vec<String>,
    expanded: HashSet<String>,
    irreversible: Option<usize>,
    findings: Vec<Raw>,
    phases: Vec<(Phase, usize, String)>,
    anchor: Option<usize>,
}

impl Engine<'_> {
    fn emit(&mut self, id: &'static str, line: usize, message: String) {
        let Some(r) = find_rule(id) else {
            return;
        };
        self.findings.push(Raw {
            finding: Finding {
                rule: r.id,
                severity: r.severity,
                line,
                risk: r.risk.to_vec(),
                message,
                fix: r.fix.to_string(),
                path: None,
            },
            anchor: self.anchor,
        });
    }

    /// [`Engine::emit`] with a severity other than the rule's default, for a case of the
    /// rule that is less certain (settings still override it).
    fn emit_as(&mut self, id: &'static str, severity: Severity, line: usize, message: String) {
        let before = self.findings.len();
        self.emit(id, line, message);
        if let Some(added) = self.findings.get_mut(before) {
            added.finding.severity = severity;
        }
    }

    fn mark(&mut self, phase: Phase, line: usize, why: String) {
        if self.side == Side::Up {
            self.phases.push((phase, line, why));
        }
    }

    fn existing(&self, table: &str) -> bool {
        !self.created.tables.contains(&norm(table))
    }

    fn new_column(&self, table: &str, column: &str) -> bool {
        !self.existing(table) || self.created.columns.contains(&(norm(table), norm(column)))
    }

    /// A statement that queues for a lock on an existing table: without lock_timeout,
    /// it blocks every query that arrives after it while it waits.
    fn lock_taken(&mut self, line: usize, what: &str) {
        if self.settings.lock_timeout != Timeout::Off
            && !self.lock_timeout
            && !self.timeout_reported
        {
            self.timeout_reported = true;
            self.emit(
                "missing-lock-timeout",
                line,
                format!("{what} waits for a lock with no lock_timeout set: while it waits, every query on the table queues behind it"),
            );
        }
        if self.settings.statement_timeout != Timeout::Off
            && !self.statement_timeout
            && !self.statement_reported
        {
            self.statement_reported = true;
            self.emit(
                "missing-statement-timeout",
                line,
                format!("{what} takes a lock with no statement_timeout set: a scan or rewrite under that lock holds it (and every query queued behind it) for as long as the table takes"),
            );
        }
    }

    /// DDL outside a transaction is not undone when a later statement fails, so the
    /// retry runs it again: without IF [NOT] EXISTS that retry fails.
    fn idempotent(&mut self, line: usize, guarded: bool, what: &str, clause: &str) {
        if !self.in_tx && !guarded {
            self.emit(
                "not-idempotent",
                line,
                format!("{what} runs outside a transaction without {clause}: a retry fails"),
            );
        }
    }

    fn data_loss(&mut self, up_rule: &'static str, line: usize, up_msg: String, down_msg: String) {
        match self.side {
            Side::Up => self.emit(up_rule, line, up_msg),
            Side::Down => self.emit("downgrade-data-loss", line, down_msg),
        }
    }

    /// Judges one operation, handing it to the file of its family.
    fn action(&mut self, a: &Action) {
        let line = a.line;
        self.anchor = a.anchor;
        self.new_enum_value_used(a);
        let pg = self.settings.pg_version;
        match &a.op {
            Op::CreateTable { .. }
            | Op::DropTable { .. }
            | Op::DropSchema { .. }
            | Op::DropOther { .. }
            | Op::CreateOther { .. }
            | Op::Truncate { .. }
            | Op::Dml { .. }
            | Op::OrmWrite { .. }
            | Op::RenameTable { .. }
            | Op::RenameSchema { .. }
            | Op::RenameType { .. }
            | Op::Partition { .. }
            | Op::BatchRecreate { .. } => self.table_action(line, &a.op, pg),
            Op::AddColumn(add) => self.add_column(line, add, pg),
            Op::RenameColumn { .. }
            | Op::DropColumn { .. }
            | Op::AlterType { .. }
            | Op::SetNotNull { .. }
            | Op::RequireNotNull { .. }
            | Op::NotNullColumns { .. }
            | Op::DropNotNull { .. }
            | Op::ChangeDefault { .. } => self.column_action(line, &a.op, pg),
            Op::AddConstraint { .. }
            | Op::ValidateConstraint { .. }
            | Op::DropConstraint { .. }
            | Op::CreateDomain { .. }
            | Op::AlterDomainAddConstraint { .. } => self.constraint_action(line, &a.op),
            Op::CreateIndex { .. }
            | Op::DropIndex { .. }
            | Op::Reindex { .. }
            | Op::Vacuum { .. } => self.index_action(line, &a.op, pg),
            Op::SetTimeout { .. }
            | Op::Begin
            | Op::Commit
            | Op::Rollback
            | Op::AutocommitStart
            | Op::AutocommitEnd
            | Op::EnumAddValue { .. } => self.transaction_action(line, &a.op, pg),
            Op::Benign { .. } | Op::Inert { .. } => {}
            Op::Unknown { rule, why } => {
                self.emit(rule, line, why.clone());
                self.mark(Phase::Unknown, line, why.clone());
            }
            Op::Irreversible => {
                self.irreversible.get_or_insert(line);
            }
        }
    }
}

struct Evaluated {
    findings: Vec<Raw>,
    phases: Vec<(Phase, usize, String)>,
    created: Created,
    irreversible: Option<usize>,
}

fn evaluate(
    l: &Lowered,
    side: Side,
    kind: Kind,
    settings: &Settings,
    schema: &mut Schema,
    from_up: Created,
) -> Evaluated {
    let mut e = Engine {
        settings,
        side,
        kind,
        schema,
        created: Created::default(),
        from_up,
        in_tx: l.runner_tx,
        runner_tx: l.runner_tx,
        runner_implicit: l.runner_implicit,
        runner_hint: l.runner_hint,
        explicit: Vec::new(),
        lock_timeout: false,
        lock_timeout_local: false,
        timeout_reported: false,
        statement_timeout: false,
        statement_timeout_local: false,
        statement_reported: false,
        not_valid: HashMap::new(),
        enum_values: Vec::new(),
        expanded: HashSet::new(),
        irreversible: None,
        findings: Vec::new(),
        phases: Vec::new(),
        anchor: None,
    };
    for (id, line, message) in &l.runner_findings {
        e.emit(id, *line, message.clone());
    }
    for a in &l.actions {
        e.action(a);
    }
    e.finish();
    Evaluated {
        findings: e.findings,
        phases: e.phases,
        created: e.created,
        irreversible: e.irreversible,
    }
}

fn phase_of(marks: &[(Phase, usize, String)]) -> (Phase, Option<PhaseReason>) {
    for p in [
        Phase::Contract,
        Phase::Unknown,
        Phase::Migrate,
        Phase::Expand,
    ] {
        if let Some((_, line, why)) = marks.iter().find(|m| m.0 == p) {
            return (
                p,
                Some(PhaseReason {
                    line: *line,
                    why: why.clone(),
                }),
            );
        }
    }
    (Phase::Expand, None)
}

pub(crate) fn check_migration(
    m: &Migration,
    settings: &Settings,
    schema: &mut Schema,
) -> FileReport {
    let (up_l, down_l, revision, down_revision) = lower(m, settings);
    let up = evaluate(
        &up_l,
        Side::Up,
        m.kind,
        settings,
        schema,
        Created::default(),
    );
    // The downgrade is judged against the schema the upgrade left. The engine only
    // records schema facts on the upgrade side, so later migrations never see the
    // downgrade (and no per-migration copy of the schema is needed).
    let down = evaluate(
        &down_l,
        Side::Down,
        m.kind,
        settings,
        schema,
        up.created.clone(),
    );
    let (phase, phase_reason) = phase_of(&up.phases);

    // What a downgrade would have to undo: not harmless additions, and not VALIDATE,
    // VACUUM or REINDEX, which leave nothing the old code could trip on.
    let up_did_something = up_l.actions.iter().any(|a| {
        !undoes_nothing(&a.op)
            && !matches!(
                a.op,
                Op::Benign { .. }
                    | Op::CreateOther { .. }
                    | Op::ValidateConstraint { .. }
                    | Op::Vacuum { .. }
                    | Op::Reindex { .. }
            )
    });
    // A downgrade of only SELECT 1, SET and transaction markers undoes nothing.
    let down_empty = down_l.empty || down_l.actions.iter().all(|a| undoes_nothing(&a.op));
    let mut down_raw = down.findings;
    let state = if down_l.missing {
        if up_did_something {
            down_raw.push(Raw {
                finding: meta_finding("downgrade-missing", down_l.line.max(1), match m.layout {
                    Layout::Alembic => "no downgrade() function: a rollback of this revision cannot run".to_string(),
                    Layout::Django => "the migration cannot be reversed".to_string(),
                    Layout::Rails => "no down method (and no change): a rollback of this migration cannot run".to_string(),
                    Layout::Plain => "no down migration: this file has no convention ripcord knows for one (use a paired layout or dbmate/goose sections)".to_string(),
                    _ => "no down migration file next to this one: a rollback cannot run".to_string(),
                }),
                anchor: None,
            });
        }
        DownState::Missing
    } else if let Some(line) = down.irreversible {
        down_raw.push(Raw {
            finding: meta_finding(
                "downgrade-irreversible",
                line,
                "the downgrade declares the migration irreversible".to_string(),
            ),
            anchor: None,
        });
        DownState::Missing
    } else if down_empty && up_did_something {
        down_raw.push(Raw {
            finding: meta_finding("downgrade-empty", down_l.line.max(1), format!("the downgrade does nothing{} while the upgrade changes the schema: a rollback would leave the new schema in place", if down_l.empty { "" } else { " (it only runs statements that change nothing, such as SELECT or SET)" })),
            anchor: None,
        });
        DownState::Empty
    } else {
        // How the downgrade runs (a lock wait, a retry after a failure) is not what
        // it does to the schema: those findings do not decide its state.
        let has = |r: Risk| {
            down_raw.iter().any(|f| {
                f.finding.risk.contains(&r)
                    && !matches!(f.finding.rule, "missing-lock-timeout" | "not-idempotent")
            })
        };
        if has(Risk::Fails) {
            DownState::Fails
        } else if has(Risk::DataLoss) {
            DownState::DataLoss
        } else if has(Risk::Unknown) {
            DownState::Unknown
        } else {
            DownState::Ok
        }
    };

    let down_path = m
        .down
        .as_ref()
        .filter(|d| d.path != m.path)
        .map(|d| d.path.clone());
    let (up_findings, up_suppressed) = settle(up.findings, &up_l, settings, None);
    let (down_findings, down_suppressed) =
        settle(down_raw, &down_l, settings, down_path.as_deref());
    FileReport {
        path: m.path.clone(),
        kind: m.kind,
        layout: m.layout,
        phase,
        phase_reason,
        revision,
        down_revision,
        upgrade: UpReport {
            findings: up_findings,
            suppressed: up_suppressed,
        },
        downgrade: DownReport {
            state,
            path: down_path,
            findings: down_findings,
            suppressed: down_suppressed,
        },
    }
}

/// Whether an operation leaves the schema and the data as they were.
fn undoes_nothing(op: &Op) -> bool {
    matches!(
        op,
        Op::Inert { .. }
            | Op::NotNullColumns { .. }
            | Op::SetTimeout { .. }
            | Op::Begin
            | Op::Commit
            | Op::Rollback
            | Op::AutocommitStart
            | Op::AutocommitEnd
    )
}
