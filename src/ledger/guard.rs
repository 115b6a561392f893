//! What the guard keeps in the ledger: each release's healthy p95 (the next release's
//! baseline), a service's frozen and investigating state, and incidents.

use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use super::{Ledger, LedgerError, NewEvent};
use crate::clock::now_ms;

/// A service's guard state. Frozen blocks every deploy and rollback, automatic or
/// manual, until unfrozen.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServiceState {
    pub frozen_reason: Option<String>,
    pub frozen_at_ms: Option<i64>,
    pub investigating_release: Option<i64>,
    pub investigating_since_ms: Option<i64>,
    pub investigating_deadline_ms: Option<i64>,
    pub acked_at_ms: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Incident {
    pub id: i64,
    pub service: String,
    pub release_id: Option<i64>,
    /// `open`, `resolved` (rolled back and verified), `failed` (the rollback failed:
    /// escalated), `frozen` (data corruption).
    pub status: String,
    pub rule: String,
    pub summary: String,
    pub opened_at_ms: i64,
    pub first_bad_at_ms: Option<i64>,
    pub switched_at_ms: Option<i64>,
    pub verified_at_ms: Option<i64>,
    pub closed_at_ms: Option<i64>,
    pub decision: Option<serde_json::Value>,
    pub impact: Option<serde_json::Value>,
    pub series: Option<serde_json::Value>,
}

/// Fields to set on an incident; `None` leaves a field as it is.
#[derive(Debug, Default)]
pub struct IncidentUpdate {
    pub status: Option<&'static str>,
    pub switched_at_ms: Option<i64>,
    pub verified_at_ms: Option<i64>,
    pub closed_at_ms: Option<i64>,
    pub impact: Option<serde_json::Value>,
    pub series: Option<serde_json::Value>,
}

const INCIDENT_COLS: &str = "id, service, release_id, status, rule, summary, opened_at_ms, \
     first_bad_at_ms, switched_at_ms, verified_at_ms, closed_at_ms, decision, impact, series";
/// The same columns without the series, which holds every request around an incident
/// (hundreds of kilobytes): lists never read it, only a report does.
const INCIDENT_LIST_COLS: &str = "id, service, release_id, status, rule, summary, opened_at_ms, \
     first_bad_at_ms, switched_at_ms, verified_at_ms, closed_at_ms, decision, impact, NULL";

fn row_to_incident(r: &rusqlite::Row<'_>) -> rusqlite::Result<Incident> {
    let json = |i: usize| -> rusqlite::Result<Option<serde_json::Value>> {
        let s: Option<String> = r.get(i)?;
        Ok(s.and_then(|s| serde_json::from_str(&s).ok()))
    };
    Ok(Incident {
        id: r.get(0)?,
        service: r.get(1)?,
        release_id: r.get(2)?,
        status: r.get(3)?,
        rule: r.get(4)?,
        summary: r.get(5)?,
        opened_at_ms: r.get(6)?,
        first_bad_at_ms: r.get(7)?,
        switched_at_ms: r.get(8)?,
        verified_at_ms: r.get(9)?,
        closed_at_ms: r.get(10)?,
        decision: json(11)?,
        impact: json(12)?,
        series: json(13)?,
    })
}

impl Ledger {
    pub fn set_healthy_p95(&mut self, release: i64, p95_us: u64) -> Result<(), LedgerError> {
        self.conn.execute(
            "UPDATE releases SET healthy_p95_us = ?2 WHERE id = ?1",
            params![release, p95_us as i64],
        )?;
        Ok(())
    }

    pub fn service_state(&self, service: &str) -> Result<ServiceState, LedgerError> {
        Ok(self
            .conn
            .query_row(
                "SELECT frozen_reason, frozen_at_ms, investigating_release, investigating_since_ms,
                        investigating_deadline_ms, acked_at_ms
                 FROM service_state WHERE service = ?1",
                [service],
                |r| {
                    Ok(ServiceState {
                        frozen_reason: r.get(0)?,
                        frozen_at_ms: r.get(1)?,
                        investigating_release: r.get(2)?,
                        investigating_since_ms: r.get(3)?,
                        investigating_deadline_ms: r.get(4)?,
                        acked_at_ms: r.get(5)?,
                    })
                },
            )
            .optional()?
            .unwrap_or_default())
    }

    fn ensure_state_row(&self, service: &str) -> Result<(), LedgerError> {
        self.conn.execute(
            "INSERT OR IGNORE INTO service_state (service) VALUES (?1)",
            [service],
        )?;
        Ok(())
    }

    /// Freezes a service with the event that says why, atomically. Returns false when it
    /// already was frozen.
    pub fn freeze(
        &mut self,
        service: &str,
        reason: &str,
        incident: Option<i64>,
    ) -> Result<bool, LedgerError> {
        self.ensure_state_row(service)?;
        let tx = self.write_tx()?;
        let changed = tx.execute(
            "UPDATE service_state SET frozen_reason = ?2, frozen_at_ms = ?3
             WHERE service = ?1 AND frozen_reason IS NULL",
            params![service, crate::config::redact::scrub(reason), now_ms()],
        )?;
        if changed > 0 {
            super::insert_event(
                &tx,
                service,
                &NewEvent {
                    kind: "frozen",
                    message: format!(
                        "frozen: {reason}; no deploy or rollback until `ripcord unfreeze`"
                    ),
                    incident_id: incident,
                    ..Default::default()
                },
                now_ms(),
            )?;
        }
        tx.commit()?;
        if changed > 0 {
            crate::failpoint::hit("service.frozen");
        }
        Ok(changed > 0)
    }

    /// Returns false when the service was not frozen.
    pub fn unfreeze(&mut self, service: &str, reason: &str) -> Result<bool, LedgerError> {
        let tx = self.write_tx()?;
        let changed = tx.execute(
            "UPDATE service_state SET frozen_reason = NULL, frozen_at_ms = NULL
             WHERE service = ?1 AND frozen_reason IS NOT NULL",
            [service],
        )?;
        if changed > 0 {
            super::insert_event(
                &tx,
                service,
                &NewEvent {
                    kind: "unfrozen",
                    message: format!("unfrozen: {reason}"),
                    ..Default::default()
                },
                now_ms(),
            )?;
        }
        tx.commit()?;
        Ok(changed > 0)
    }

    /// Lifts a freeze only when it still has `expected` as its reason: a freeze someone
    /// set (or re-stated) since is left alone. Returns whether it was lifted.
    pub fn unfreeze_if(
        &mut self,
        service: &str,
        expected: &str,
        reason: &str,
    ) -> Result<bool, LedgerError> {
        let tx = self.write_tx()?;
        let changed = tx.execute(
            "UPDATE service_state SET frozen_reason = NULL, frozen_at_ms = NULL
             WHERE service = ?1 AND frozen_reason = ?2",
            params![service, expected],
        )?;
        if changed > 0 {
            super::insert_event(
                &tx,
                service,
                &NewEvent {
                    kind: "unfrozen",
                    message: format!("unfrozen: {reason}"),
                    ..Default::default()
                },
                now_ms(),
            )?;
        }
        tx.commit()?;
        if changed > 0 {
            crate::failpoint::hit("service.unfrozen");
        }
        Ok(changed > 0)
    }

    /// A person freezes a service that is frozen already (by a restore, or the guard):
    /// their reason replaces the old one, so whatever froze it first cannot lift it. It
    /// is unconditional: should that freeze have been lifted a moment ago, the person's
    /// freeze still stands.
    pub fn restate_freeze(
        &mut self,
        service: &str,
        reason: &str,
        by: &str,
        incident: Option<i64>,
    ) -> Result<(), LedgerError> {
        self.ensure_state_row(service)?;
        let tx = self.write_tx()?;
        tx.execute(
            "UPDATE service_state SET frozen_reason = ?2, frozen_at_ms = COALESCE(frozen_at_ms, ?3)
             WHERE service = ?1",
            params![service, crate::config::redact::scrub(reason), now_ms()],
        )?;
        super::insert_event(
            &tx,
            service,
            &NewEvent {
                kind: "frozen",
                message: format!("frozen again by {by}: {reason}"),
                incident_id: incident,
                ..Default::default()
            },
            now_ms(),
        )?;
        tx.commit()?;
        Ok(())
    }

    pub fn start_investigation(
        &mut self,
        service: &str,
        release: i64,
        since_ms: i64,
        deadline_ms: i64,
    ) -> Result<(), LedgerError> {
        self.ensure_state_row(service)?;
        self.conn.execute(
            "UPDATE service_state SET investigating_release = ?2, investigating_since_ms = ?3,
                    investigating_deadline_ms = ?4, acked_at_ms = NULL
             WHERE service = ?1",
            params![service, release, since_ms, deadline_ms],
        )?;
        Ok(())
    }

    /// Acknowledges the open investigation. Returns the release it was about, or `None`
    /// when nothing was being investigated.
    pub fn ack(&mut self, service: &str) -> Result<Option<i64>, LedgerError> {
        let state = self.service_state(service)?;
        let Some(release) = state.investigating_release else {
            return Ok(None);
        };
        self.conn.execute(
            "UPDATE service_state SET acked_at_ms = ?2 WHERE service = ?1",
            params![service, now_ms()],
        )?;
        self.event(
            service,
            NewEvent {
                release_id: Some(release),
                kind: "acknowledged",
                message: "investigation acknowledged by a person: no automatic rollback for it"
                    .into(),
                ..Default::default()
            },
        )?;
        Ok(Some(release))
    }

    pub fn end_investigation(&mut self, service: &str) -> Result<(), LedgerError> {
        self.conn.execute(
            "UPDATE service_state SET investigating_release = NULL, investigating_since_ms = NULL,
                    investigating_deadline_ms = NULL, acked_at_ms = NULL
             WHERE service = ?1",
            [service],
        )?;
        Ok(())
    }

    pub fn open_incident(
        &mut self,
        service: &str,
        release: Option<i64>,
        rule: &str,
        summary: &str,
        first_bad_at_ms: Option<i64>,
        decision: &serde_json::Value,
    ) -> Result<i64, LedgerError> {
        let now = now_ms();
        let tx = self.write_tx()?;
        tx.execute(
            "INSERT INTO incidents (service, release_id, status, rule, summary, opened_at_ms, first_bad_at_ms, decision)
             VALUES (?1, ?2, 'open', ?3, ?4, ?5, ?6, ?7)",
            params![
                service,
                release,
                rule,
                crate::config::redact::scrub(summary),
                now,
                first_bad_at_ms,
                {
                    let mut d = decision.clone();
                    crate::config::redact::scrub_json(&mut d);
                    d.to_string()
                }
            ],
        )?;
        let id = tx.last_insert_rowid();
        super::insert_event(
            &tx,
            service,
            &NewEvent {
                release_id: release,
                kind: "incident_opened",
                message: format!("incident #{id} opened: {summary}"),
                incident_id: Some(id),
                ..Default::default()
            },
            now,
        )?;
        tx.commit()?;
        Ok(id)
    }

    pub fn update_incident(&mut self, id: i64, u: IncidentUpdate) -> Result<(), LedgerError> {
        self.conn.execute(
            "UPDATE incidents SET
                status = COALESCE(?2, status),
                switched_at_ms = COALESCE(?3, switched_at_ms),
                verified_at_ms = COALESCE(?4, verified_at_ms),
                closed_at_ms = COALESCE(?5, closed_at_ms),
                impact = COALESCE(?6, impact),
                series = COALESCE(?7, series)
             WHERE id = ?1",
            params![
                id,
                u.status,
                u.switched_at_ms,
                u.verified_at_ms,
                u.closed_at_ms,
                u.impact.map(|v| v.to_string()),
                u.series.map(|v| v.to_string())
            ],
        )?;
        Ok(())
    }

    pub fn incident(&self, id: i64) -> Result<Option<Incident>, LedgerError> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {INCIDENT_COLS} FROM incidents WHERE id = ?1"),
                [id],
                row_to_incident,
            )
            .optional()?)
    }

    /// Incidents, newest first; all services when `service` is `None`. Without their
    /// series (`series` is `None`): read one with [`Ledger::incident`] for its report.
    pub fn incidents(&self, service: Option<&str>) -> Result<Vec<Incident>, LedgerError> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {INCIDENT_LIST_COLS} FROM incidents WHERE ?1 IS NULL OR service = ?1 ORDER BY id DESC"
        ))?;
        let rows = stmt.query_map([service], row_to_incident)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The open incident of a service, if any.
    pub fn open_incident_of(&self, service: &str) -> Result<Option<Incident>, LedgerError> {
        Ok(self
            .incidents(Some(service))?
            .into_iter()
            .find(|i| i.status == "open"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_freeze_restated_by_a_person_outlives_the_one_it_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = Ledger::open(dir.path()).unwrap();
        assert!(l.freeze("web", "restore in progress", None).unwrap());
        // Lifted by its owner while still its own.
        assert!(l.unfreeze_if("web", "restore in progress", "done").unwrap());
        assert!(l.freeze("web", "restore in progress", None).unwrap());
        // A person freezes it too, meanwhile: the restore's end leaves it frozen.
        l.restate_freeze("web", "a person: orders look wrong", "a person", None)
            .unwrap();
        assert!(!l.unfreeze_if("web", "restore in progress", "done").unwrap());
        assert_eq!(
            l.service_state("web").unwrap().frozen_reason.as_deref(),
            Some("a person: orders look wrong")
        );
    }

    #[test]
    fn freeze_unfreeze_and_investigations() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = Ledger::open(dir.path()).unwrap();
        assert!(l.service_state("web").unwrap().frozen_reason.is_none());
        assert!(l.freeze("web", "db corrupt", None).unwrap());
        assert!(!l.freeze("web", "again", None).unwrap());
        assert_eq!(
            l.service_state("web").unwrap().frozen_reason.as_deref(),
            Some("db corrupt")
        );
        assert!(l.unfreeze("web", "fixed").unwrap());
        assert!(!l.unfreeze("web", "fixed").unwrap());
        let kinds: Vec<String> = l
            .events("web", 10)
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(kinds, ["frozen", "unfrozen"]);

        assert_eq!(l.ack("web").unwrap(), None);
        l.start_investigation("web", 3, 10, 20).unwrap();
        assert_eq!(l.ack("web").unwrap(), Some(3));
        let st = l.service_state("web").unwrap();
        assert_eq!(st.investigating_deadline_ms, Some(20));
        assert!(st.acked_at_ms.is_some());
        l.end_investigation("web").unwrap();
        assert!(
            l.service_state("web")
                .unwrap()
                .investigating_release
                .is_none()
        );
    }

    #[test]
    fn incidents_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = Ledger::open(dir.path()).unwrap();
        let id = l
            .open_incident(
                "web",
                None,
                "error_rate",
                "5xx 30%",
                Some(5),
                &serde_json::json!({"a": 1}),
            )
            .unwrap();
        assert_eq!(l.open_incident_of("web").unwrap().unwrap().id, id);
        l.update_incident(
            id,
            IncidentUpdate {
                status: Some("resolved"),
                switched_at_ms: Some(7),
                impact: Some(serde_json::json!({"failed": 3})),
                series: Some(serde_json::json!({"requests": {"t0_ms": 1, "rows": []}})),
                ..Default::default()
            },
        )
        .unwrap();
        let i = l.incident(id).unwrap().unwrap();
        assert_eq!(i.series.unwrap()["requests"]["t0_ms"], 1);
        // A list leaves the (large) series out.
        assert_eq!(l.incidents(None).unwrap()[0].series, None);
        assert_eq!(i.status, "resolved");
        assert_eq!(i.switched_at_ms, Some(7));
        assert_eq!(i.first_bad_at_ms, Some(5));
        assert_eq!(i.impact.unwrap()["failed"], 3);
        assert!(l.open_incident_of("web").unwrap().is_none());
        assert_eq!(l.incidents(None).unwrap().len(), 1);
        assert!(l.incidents(Some("api")).unwrap().is_empty());
        assert_eq!(l.events("web", 5).unwrap()[0].incident_id, Some(id));
    }

    #[test]
    fn a_v1_ledger_is_upgraded_in_place() {
        let dir = tempfile::tempdir().unwrap();
        {
            // Build a v1 ledger by hand, with a release in it.
            let mut conn =
                rusqlite::Connection::open(dir.path().join(super::super::FILE_NAME)).unwrap();
            let tx = conn.transaction().unwrap();
            tx.execute_batch(super::super::schema::step(0)).unwrap();
            tx.pragma_update(None, "user_version", 1).unwrap();
            tx.execute(
                "INSERT INTO releases (service, version, spec, config_snapshot, status, created_at_ms)
                 VALUES ('web', 'v1', '{\"argv\":[\"x\"],\"cwd\":null}', '{}', 'active', 1)",
                [],
            )
            .unwrap();
            tx.commit().unwrap();
        }
        let mut l = Ledger::open(dir.path()).unwrap();
        assert_eq!(l.schema_version().unwrap(), super::super::SCHEMA_VERSION);
        let r = l.find_release("web", "v1").unwrap().unwrap();
        assert_eq!(r.healthy_p95_us, None);
        l.set_healthy_p95(r.id, 1234).unwrap();
        assert_eq!(l.release(r.id).unwrap().healthy_p95_us, Some(1234));
    }
}
