//! Drills in the ledger (`ripcord drill`): each rehearsal of the rollback path, its
//! outcome, and every timed step against the service's budget.

use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::{Ledger, LedgerError};

/// One timed step of a drill: `leg` is `back` (to the previous release) or `forward`
/// (to the current one); `step` is `start`, `health_gate`, `switch` or `verify`, or at
/// one address (router `none`, runtime `swarm`) `put_in_place` (start and health gate
/// together, as the replace or the swarm update does them), `switch` and `verify`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrillStep {
    pub leg: String,
    pub step: String,
    pub ms: u64,
    pub ok: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct DrillRecord {
    pub id: i64,
    pub service: String,
    pub operation_id: Option<i64>,
    pub current_release: Option<i64>,
    pub previous_release: Option<i64>,
    /// `passed`, `failed` (the current release was restored) or `verify_failed` (the
    /// current release failed its checks at the end).
    pub outcome: String,
    pub started_at_ms: i64,
    pub finished_at_ms: i64,
    pub total_ms: u64,
    pub budget_ms: u64,
    pub steps: Vec<DrillStep>,
    pub error: Option<String>,
}

impl DrillRecord {
    pub fn passed(&self) -> bool {
        self.outcome == "passed"
    }

    pub fn within_budget(&self) -> bool {
        self.total_ms <= self.budget_ms
    }
}

/// What a finished drill writes.
pub struct NewDrill<'a> {
    pub operation_id: Option<i64>,
    pub current_release: Option<i64>,
    pub previous_release: Option<i64>,
    pub outcome: &'a str,
    pub started_at_ms: i64,
    pub finished_at_ms: i64,
    pub total_ms: u64,
    pub budget_ms: u64,
    pub steps: &'a [DrillStep],
    pub error: Option<&'a str>,
}

const COLS: &str = "id, service, operation_id, current_release, previous_release, outcome, \
                    started_at_ms, finished_at_ms, total_ms, budget_ms, steps, error";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DrillRecord> {
    let steps: String = r.get(10)?;
    Ok(DrillRecord {
        id: r.get(0)?,
        service: r.get(1)?,
        operation_id: r.get(2)?,
        current_release: r.get(3)?,
        previous_release: r.get(4)?,
        outcome: r.get(5)?,
        started_at_ms: r.get(6)?,
        finished_at_ms: r.get(7)?,
        total_ms: r.get::<_, i64>(8)? as u64,
        budget_ms: r.get::<_, i64>(9)? as u64,
        steps: serde_json::from_str(&steps).unwrap_or_default(),
        error: r.get(11)?,
    })
}

impl Ledger {
    pub fn record_drill(&mut self, service: &str, d: &NewDrill<'_>) -> Result<i64, LedgerError> {
        let steps = serde_json::to_string(d.steps).expect("steps serialize");
        let tx = self.write_tx()?;
        tx.execute(
            "INSERT INTO drills (service, operation_id, current_release, previous_release, outcome,
                                 started_at_ms, finished_at_ms, total_ms, budget_ms, steps, error)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![
                service,
                d.operation_id,
                d.current_release,
                d.previous_release,
                d.outcome,
                d.started_at_ms,
                d.finished_at_ms,
                d.total_ms as i64,
                d.budget_ms as i64,
                steps,
                d.error
            ],
        )?;
        let id = tx.last_insert_rowid();
        tx.commit()?;
        Ok(id)
    }

    /// The service's most recent drill.
    pub fn last_drill(&self, service: &str) -> Result<Option<DrillRecord>, LedgerError> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {COLS} FROM drills WHERE service = ?1 ORDER BY id DESC LIMIT 1"),
                [service],
                row,
            )
            .optional()?)
    }
}
