//! What a person does to a service through the ledger: freeze, unfreeze, acknowledge.
//! The CLI (`ripcord freeze`, `unfreeze`, `ack`) and the dashboard's buttons both call
//! these, so the two can never disagree on what an action writes.

use serde::Serialize;
use serde_json::json;

use super::{IncidentUpdate, Ledger, LedgerError};

/// What `freeze_by_person` did.
#[derive(Debug, Clone, Serialize)]
pub struct Frozen {
    pub service: String,
    pub frozen: bool,
    /// False when the service already was frozen: the person's reason replaced the
    /// earlier one (`was`), and no new incident was opened.
    pub changed: bool,
    pub reason: String,
    pub was: Option<String>,
    /// The incident opened for the freeze (only when `changed`).
    pub incident: Option<i64>,
}

/// What `unfreeze_by_person` did.
#[derive(Debug, Clone, Serialize)]
pub struct Unfrozen {
    pub service: String,
    pub frozen: bool,
    /// False when the service was not frozen.
    pub changed: bool,
}

impl Ledger {
    /// A person freezes a service: no deploy and no rollback, automatic or manual,
    /// until someone unfreezes it. A freeze opens a `data_corruption` incident; on a
    /// service already frozen the person's reason is what stands from now on (a restore
    /// that froze it first will not lift it when it ends).
    pub fn freeze_by_person(&mut self, service: &str, reason: &str) -> Result<Frozen, LedgerError> {
        if let Some(already) = self.service_state(service)?.frozen_reason {
            self.restate_freeze(service, reason, "a person", None)?;
            return Ok(Frozen {
                service: service.into(),
                frozen: true,
                changed: false,
                reason: reason.into(),
                was: Some(already),
                incident: None,
            });
        }
        let incident = self.open_incident(
            service,
            self.active_release(service)?.map(|r| r.id),
            "data_corruption",
            &format!("frozen by a person: {reason}"),
            None,
            &json!({ "action": { "action": "freeze" }, "reasons": ["data corruption → stop everything (a person said so)", reason] }),
        )?;
        self.freeze(service, reason, Some(incident))?;
        self.update_incident(
            incident,
            IncidentUpdate {
                status: Some("frozen"),
                ..Default::default()
            },
        )?;
        Ok(Frozen {
            service: service.into(),
            frozen: true,
            changed: true,
            reason: reason.into(),
            was: None,
            incident: Some(incident),
        })
    }

    /// A person lifts a freeze; the incidents the freeze opened are closed.
    pub fn unfreeze_by_person(
        &mut self,
        service: &str,
        reason: &str,
    ) -> Result<Unfrozen, LedgerError> {
        let changed = self.unfreeze(service, reason)?;
        for i in self.incidents(Some(service))? {
            if i.status == "frozen" && i.closed_at_ms.is_none() {
                self.update_incident(
                    i.id,
                    IncidentUpdate {
                        closed_at_ms: Some(crate::clock::now_ms()),
                        ..Default::default()
                    },
                )?;
            }
        }
        Ok(Unfrozen {
            service: service.into(),
            frozen: false,
            changed,
        })
    }
}
