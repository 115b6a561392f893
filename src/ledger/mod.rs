//! The release ledger: an embedded SQLite database (WAL) under the state dir that always
//! knows what runs, what ran before, and what happened when.
//!
//! Tables: `releases` (every version of every service, how to run it, its config
//! snapshot and status), `operations` (deploys and rollbacks as persisted state machines:
//! one step per row change), `events` (the timeline, millisecond timestamps), `leases`
//! (at most one operation per service across processes) and `slots` (what runs in each
//! blue-green slot, so a restarted watcher can reconcile).
//!
//! Every multi-row change is one transaction, so a crash never leaves half a change.
//! This module never starts or stops anything; it only records.

mod backups;
mod drills;
mod guard;
mod person;
mod schema;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde::{Deserialize, Serialize};

use crate::clock::now_ms;
use crate::config::Slot;
use crate::config::redact::{scrub, scrub_json};
pub use backups::{BackupRecord, NewBackup};
pub use drills::{DrillRecord, DrillStep, NewDrill};

pub use guard::{Incident, IncidentUpdate, ServiceState};
pub use person::{Frozen, Unfrozen};
pub use schema::CURRENT as SCHEMA_VERSION;

/// The ledger's file name inside the state dir.
pub const FILE_NAME: &str = "ledger.db";

/// The lease a watcher holds for as long as it runs (one per state dir); a restore with
/// no watcher holds it too, so that no watcher starts the app meanwhile.
pub const WATCHER_LEASE: &str = "@watcher";

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger {}: {source}", path.display())]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("cannot create the ledger {}: {source}", path.display())]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("ledger: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error(
        "the ledger has schema version {found} but this ripcord knows only up to {known}: \
         it was written by a newer ripcord; use that version"
    )]
    TooNew { found: i64, known: i64 },
    #[error(
        "service `{service}` is busy: {holder} holds its lease since {since}; \
         wait for it to finish (see `ripcord status {service}`)"
    )]
    Busy {
        service: String,
        holder: String,
        since: String,
    },
    #[error("ledger: corrupt {what}: {detail}")]
    Corrupt { what: &'static str, detail: String },
}

/// Where a release stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReleaseStatus {
    /// Recorded; being deployed, not serving yet.
    Pending,
    /// Serving traffic.
    Active,
    /// The release that served before the active one: the first rollback target.
    Previous,
    /// Rolled away from, or never became healthy; not redeployed without `--force`.
    Bad,
    /// Served once and is no longer the previous one.
    Retired,
}

impl ReleaseStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ReleaseStatus::Pending => "pending",
            ReleaseStatus::Active => "active",
            ReleaseStatus::Previous => "previous",
            ReleaseStatus::Bad => "bad",
            ReleaseStatus::Retired => "retired",
        }
    }

    fn parse(s: &str) -> Result<Self, LedgerError> {
        Ok(match s {
            "pending" => ReleaseStatus::Pending,
            "active" => ReleaseStatus::Active,
            "previous" => ReleaseStatus::Previous,
            "bad" => ReleaseStatus::Bad,
            "retired" => ReleaseStatus::Retired,
            other => {
                return Err(LedgerError::Corrupt {
                    what: "release status",
                    detail: other.to_string(),
                });
            }
        })
    }
}

/// How a release runs: everything needed to start it again, cold, months later.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseSpec {
    /// The argv template; `{port}` and `{version}` are substituted at start.
    pub argv: Vec<String>,
    /// The working directory the release was deployed from.
    pub cwd: Option<PathBuf>,
    /// Runtime `docker`: the image pinned at deploy time and how its container runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageRelease>,
    /// Runtime `process`: the release's environment (`env` and `env_file` at deploy
    /// time) snapshotted under the state dir (owner-only); never printed. A release
    /// recorded before snapshots existed has none and runs with today's `env`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_snapshot: Option<PathBuf>,
    /// The names (never the values) of the snapshot's variables.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env_keys: Vec<String>,
    /// Runtime `process`: the directory holding the release's copies of its
    /// `config_files` (owner-only), named by their content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_files: Option<PathBuf>,
    /// Runtime `kubernetes`: the pod template this release applies, and the copies of
    /// the ConfigMaps and Secrets it reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubeRelease>,
}

/// A Kubernetes release, pinned: the Deployment's pod template pointing at the
/// release's own immutable ConfigMap and Secret copies, so a rollback months later
/// applies exactly what ran then, whatever today's ConfigMaps say and whatever
/// ReplicaSet history the cluster kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubeRelease {
    /// The image as given (`registry/app:v2`).
    pub reference: String,
    /// The image the template runs: `reference`, or `repo@sha256:...` once a digest is
    /// known (given in the reference, or reported by the release's pods).
    pub image: String,
    /// The pod template (`spec.template` of apps/v1 Deployment) as JSON.
    pub template: serde_json::Value,
    /// The copies this template points to instead of the originals.
    pub copies: Vec<KubeCopy>,
}

/// One ConfigMap or Secret copied for a release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubeCopy {
    /// `ConfigMap` or `Secret`.
    pub kind: String,
    /// The original's name (what the user edits).
    pub source: String,
    /// The release's immutable copy.
    pub copy: String,
}

/// A container release, pinned: the image id it resolved to, its env snapshot and its
/// run settings, so a rollback months later runs exactly what ran then.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRelease {
    /// What was deployed, as given (`registry/app:v2`).
    pub reference: String,
    /// The image id (`sha256:...`) the reference resolved to at deploy time: what runs.
    pub id: String,
    /// The registry digest (`app@sha256:...`), when the image came from a registry.
    pub repo_digest: Option<String>,
    /// The env file snapshot under the state dir (owner-only); never printed.
    pub env_snapshot: Option<PathBuf>,
    /// The names (never the values) of the snapshot's variables.
    pub env_keys: Vec<String>,
    /// The snapshot holds the release's whole env (`[service.NAME.env]` too), pinned at
    /// deploy; a release recorded before that runs today's `env` under its env file's.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub env_pinned: bool,
    pub container_port: u16,
    pub memory_limit_mb: Option<u64>,
    pub restart: String,
    pub command: Option<Vec<String>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Release {
    pub id: i64,
    pub service: String,
    pub version: String,
    pub spec: ReleaseSpec,
    pub config_snapshot: serde_json::Value,
    pub status: ReleaseStatus,
    pub status_reason: Option<String>,
    pub created_at_ms: i64,
    pub activated_at_ms: Option<i64>,
    /// The p95 latency this release showed while healthy: the next release's baseline.
    pub healthy_p95_us: Option<u64>,
    /// The schema head (migration revision) when this release was deployed.
    pub migration_head: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OperationKind {
    Deploy,
    Rollback,
    Drill,
    /// A database restore (`ripcord db restore`).
    Restore,
}

impl OperationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OperationKind::Deploy => "deploy",
            OperationKind::Rollback => "rollback",
            OperationKind::Drill => "drill",
            OperationKind::Restore => "restore",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Operation {
    pub id: i64,
    pub service: String,
    pub kind: String,
    pub step: String,
    /// `None` while running; then `succeeded`, `failed` or `interrupted`.
    pub outcome: Option<String>,
    pub from_release: Option<i64>,
    pub to_release: Option<i64>,
    pub reason: Option<String>,
    pub error: Option<String>,
    pub started_at_ms: i64,
    pub updated_at_ms: i64,
    pub finished_at_ms: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub id: i64,
    pub ts_ms: i64,
    pub service: String,
    pub release_id: Option<i64>,
    pub operation_id: Option<i64>,
    pub kind: String,
    pub message: String,
    pub data: Option<serde_json::Value>,
    pub incident_id: Option<i64>,
}

/// What one blue-green slot holds, as last recorded.
#[derive(Debug, Clone, Serialize)]
pub struct SlotRecord {
    pub service: String,
    pub slot: Slot,
    pub release_id: Option<i64>,
    pub pid: Option<i64>,
    /// The process start time (clock ticks since boot, from /proc) so a recycled pid is
    /// never mistaken for ours.
    pub pid_start: Option<u64>,
    pub started_at_ms: Option<i64>,
    /// A warm previous release is stopped once this passes.
    pub warm_until_ms: Option<i64>,
    /// The container id, for runtime `docker`.
    pub container: Option<String>,
}

/// A held lease; dropping it does not release it (call [`Ledger::release_lease`]), so a
/// crash leaves a lease that the next process sees is stale by its dead pid.
#[derive(Debug, Clone)]
pub struct Lease {
    pub service: String,
    pub token: String,
}

/// An event to append.
#[derive(Debug, Default)]
pub struct NewEvent<'a> {
    pub release_id: Option<i64>,
    pub operation_id: Option<i64>,
    pub kind: &'a str,
    pub message: String,
    pub data: Option<serde_json::Value>,
    pub incident_id: Option<i64>,
}

pub struct Ledger {
    conn: Connection,
    path: PathBuf,
}

impl Ledger {
    /// Opens (creating if needed) the ledger in `state_dir` and upgrades its schema.
    pub fn open(state_dir: &Path) -> Result<Ledger, LedgerError> {
        let path = state_dir.join(FILE_NAME);
        let open_err = |source| LedgerError::Open {
            path: path.clone(),
            source,
        };
        // Owner-only from its first byte: it names releases, hosts and people's reasons.
        // SQLite gives its -wal and -shm files the same mode.
        {
            use std::os::unix::fs::OpenOptionsExt;
            match std::fs::OpenOptions::new()
                .create_new(true)
                .write(true)
                .mode(0o600)
                .open(&path)
            {
                Ok(_) => {}
                // An existing ledger keeps its mode (a reader may lack write access).
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(source) => {
                    return Err(LedgerError::Create {
                        path: path.clone(),
                        source,
                    });
                }
            }
        }
        let mut conn = Connection::open(&path).map_err(open_err)?;
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(open_err)?;
        // Switching a new file to WAL needs the file to itself, and SQLite answers BUSY at
        // once (no busy handler) while another process reads it: the watcher starting as
        // a CLI polls `status` (seen in CI). Bounded retries.
        let mut tries = 0;
        loop {
            match conn.pragma_update(None, "journal_mode", "WAL") {
                Ok(()) => break,
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if e.code == rusqlite::ErrorCode::DatabaseBusy && tries < 200 =>
                {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(25));
                }
                Err(e) => return Err(open_err(e)),
            }
        }
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(open_err)?;
        schema::upgrade(&mut conn)?;
        Ok(Ledger { conn, path })
    }

    /// A write transaction that takes the write lock at BEGIN, where the busy timeout
    /// applies. A deferred transaction that reads and then writes would instead fail at
    /// once with SQLITE_BUSY when another process holds the lock at that moment (seen:
    /// an automatic rollback failed while `ripcord demo` read the ledger).
    fn write_tx(&mut self) -> Result<rusqlite::Transaction<'_>, LedgerError> {
        Ok(self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn schema_version(&self) -> Result<i64, LedgerError> {
        Ok(self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))?)
    }

    /// SQLite's own consistency check of the whole file.
    pub fn integrity_ok(&self) -> Result<bool, LedgerError> {
        let verdict: String = self
            .conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
        Ok(verdict == "ok")
    }

    // ---- leases -------------------------------------------------------------------

    /// Takes the service's lease for one operation, or says who holds it. A lease whose
    /// holder process is gone, or which expired, is taken over.
    pub fn acquire_lease(
        &mut self,
        service: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Lease, LedgerError> {
        let now = now_ms();
        let pid = std::process::id() as i64;
        let token = format!("{pid}-{now}-{}", rand_suffix());
        let tx = self.write_tx()?;
        let existing: Option<(String, i64, Option<i64>, i64, i64)> = tx
            .query_row(
                "SELECT holder, pid, pid_start, acquired_at_ms, expires_at_ms FROM leases WHERE service = ?1",
                [service],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .optional()?;
        if let Some((holder, holder_pid, holder_start, acquired, expires)) = existing
            && expires > now
            && holder_alive(holder_pid, holder_start, acquired)
        {
            return Err(LedgerError::Busy {
                service: service.to_string(),
                holder,
                since: crate::clock::format_utc(acquired),
            });
        }
        tx.execute(
            "INSERT OR REPLACE INTO leases (service, holder, pid, pid_start, token, acquired_at_ms, expires_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                service,
                holder,
                pid,
                crate::os::start_ticks(pid).map(|t| t as i64),
                token,
                now,
                now + ttl.as_millis() as i64
            ],
        )?;
        tx.commit()?;
        Ok(Lease {
            service: service.to_string(),
            token,
        })
    }

    pub fn release_lease(&mut self, lease: &Lease) -> Result<(), LedgerError> {
        self.conn.execute(
            "DELETE FROM leases WHERE service = ?1 AND token = ?2",
            params![lease.service, lease.token],
        )?;
        Ok(())
    }

    /// Who holds the service's lease right now, if a live process does.
    pub fn lease_holder(&self, service: &str) -> Result<Option<String>, LedgerError> {
        let row: Option<(String, i64, Option<i64>, i64, i64)> = self
            .conn
            .query_row(
                "SELECT holder, pid, pid_start, acquired_at_ms, expires_at_ms FROM leases WHERE service = ?1",
                [service],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .optional()?;
        Ok(row.and_then(|(h, pid, start, acquired, exp)| {
            (exp > now_ms() && holder_alive(pid, start, acquired)).then_some(h)
        }))
    }

    // ---- releases -----------------------------------------------------------------

    /// Records a release, or refreshes the spec of an existing one with that version
    /// (a redeploy). Returns the release as stored.
    pub fn record_release(
        &mut self,
        service: &str,
        version: &str,
        spec: &ReleaseSpec,
        config_snapshot: &serde_json::Value,
    ) -> Result<Release, LedgerError> {
        let spec_json = serde_json::to_string(spec).expect("a spec always serializes");
        let snapshot = config_snapshot.to_string();
        let tx = self.write_tx()?;
        let existing: Option<i64> = tx
            .query_row(
                "SELECT id FROM releases WHERE service = ?1 AND version = ?2",
                params![service, version],
                |r| r.get(0),
            )
            .optional()?;
        let id = match existing {
            Some(id) => {
                tx.execute(
                    "UPDATE releases SET spec = ?2, config_snapshot = ?3 WHERE id = ?1",
                    params![id, spec_json, snapshot],
                )?;
                id
            }
            None => {
                tx.execute(
                    "INSERT INTO releases (service, version, spec, config_snapshot, status, created_at_ms)
                     VALUES (?1, ?2, ?3, ?4, 'pending', ?5)",
                    params![service, version, spec_json, snapshot, now_ms()],
                )?;
                tx.last_insert_rowid()
            }
        };
        tx.commit()?;
        self.release(id)
    }

    /// Replaces a release's spec (runtime kubernetes: the digest its pods reported,
    /// learnt after the rollout).
    pub fn set_release_spec(&mut self, id: i64, spec: &ReleaseSpec) -> Result<(), LedgerError> {
        let spec_json = serde_json::to_string(spec).expect("a spec always serializes");
        let tx = self.write_tx()?;
        tx.execute(
            "UPDATE releases SET spec = ?2 WHERE id = ?1",
            params![id, spec_json],
        )?;
        tx.commit()?;
        Ok(())
    }

    pub fn release(&self, id: i64) -> Result<Release, LedgerError> {
        self.conn.query_row(
            &format!("SELECT {RELEASE_COLS} FROM releases WHERE id = ?1"),
            [id],
            row_to_release,
        )?
    }

    pub fn find_release(
        &self,
        service: &str,
        version: &str,
    ) -> Result<Option<Release>, LedgerError> {
        self.conn
            .query_row(
                &format!("SELECT {RELEASE_COLS} FROM releases WHERE service = ?1 AND version = ?2"),
                params![service, version],
                row_to_release,
            )
            .optional()?
            .transpose()
    }

    /// All releases of a service, newest first.
    pub fn releases(&self, service: &str) -> Result<Vec<Release>, LedgerError> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {RELEASE_COLS} FROM releases WHERE service = ?1 ORDER BY id DESC"
        ))?;
        let rows = stmt.query_map([service], row_to_release)?;
        rows.map(|r| r?).collect()
    }

    pub fn active_release(&self, service: &str) -> Result<Option<Release>, LedgerError> {
        self.conn
            .query_row(
                &format!(
                    "SELECT {RELEASE_COLS} FROM releases WHERE service = ?1 AND status = 'active'"
                ),
                [service],
                row_to_release,
            )
            .optional()?
            .transpose()
    }

    /// The release a rollback goes back to by default: the `previous` one, else the most
    /// recently active release that is not bad.
    pub fn previous_good(&self, service: &str) -> Result<Option<Release>, LedgerError> {
        self.conn
            .query_row(
                &format!(
                    "SELECT {RELEASE_COLS} FROM releases
                     WHERE service = ?1 AND status IN ('previous', 'retired')
                       AND activated_at_ms IS NOT NULL
                     ORDER BY status = 'previous' DESC, activated_at_ms DESC LIMIT 1"
                ),
                [service],
                row_to_release,
            )
            .optional()?
            .transpose()
    }

    /// Makes `release` the active one after a deploy: the old active becomes previous,
    /// the old previous retires. One transaction.
    pub fn promote(&mut self, service: &str, release: i64) -> Result<(), LedgerError> {
        let now = now_ms();
        let tx = self.write_tx()?;
        tx.execute(
            "UPDATE releases SET status = 'retired' WHERE service = ?1 AND status = 'previous'",
            [service],
        )?;
        tx.execute(
            "UPDATE releases SET status = 'previous' WHERE service = ?1 AND status = 'active' AND id != ?2",
            params![service, release],
        )?;
        tx.execute(
            "UPDATE releases SET status = 'active', status_reason = NULL, activated_at_ms = ?2 WHERE id = ?1",
            params![release, now],
        )?;
        tx.commit()?;
        crate::failpoint::hit("release.promoted");
        Ok(())
    }

    /// Makes `target` active after a rollback and marks the release rolled away from bad
    /// with the reason. One transaction.
    pub fn rolled_back(
        &mut self,
        service: &str,
        from: Option<i64>,
        target: i64,
        reason: &str,
    ) -> Result<(), LedgerError> {
        let now = now_ms();
        let tx = self.write_tx()?;
        if let Some(from) = from {
            tx.execute(
                "UPDATE releases SET status = 'bad', status_reason = ?2 WHERE id = ?1",
                params![from, scrub(reason)],
            )?;
        }
        tx.execute(
            "UPDATE releases SET status = 'retired' WHERE service = ?1 AND status IN ('previous', 'active') AND id != ?2",
            params![service, target],
        )?;
        tx.execute(
            "UPDATE releases SET status = 'active', status_reason = NULL, activated_at_ms = ?2 WHERE id = ?1",
            params![target, now],
        )?;
        tx.commit()?;
        crate::failpoint::hit("release.rolled_back");
        Ok(())
    }

    pub fn set_migration_head(&mut self, release: i64, head: &str) -> Result<(), LedgerError> {
        self.conn.execute(
            "UPDATE releases SET migration_head = ?2 WHERE id = ?1",
            params![release, head],
        )?;
        Ok(())
    }

    pub fn mark_bad(&mut self, release: i64, reason: &str) -> Result<(), LedgerError> {
        self.conn.execute(
            "UPDATE releases SET status = 'bad', status_reason = ?2 WHERE id = ?1",
            params![release, scrub(reason)],
        )?;
        crate::failpoint::hit("release.marked_bad");
        Ok(())
    }

    // ---- operations ---------------------------------------------------------------

    pub fn begin_operation(
        &mut self,
        service: &str,
        kind: OperationKind,
        from: Option<i64>,
        to: Option<i64>,
        reason: Option<&str>,
    ) -> Result<i64, LedgerError> {
        self.begin_operation_told(service, kind, from, to, reason, None, None)
    }

    /// [`Ledger::begin_operation`], its `KIND_started` event saying `message` (else
    /// "KIND started") and attached to `incident_id`.
    #[allow(clippy::too_many_arguments)]
    pub fn begin_operation_told(
        &mut self,
        service: &str,
        kind: OperationKind,
        from: Option<i64>,
        to: Option<i64>,
        reason: Option<&str>,
        message: Option<String>,
        incident_id: Option<i64>,
    ) -> Result<i64, LedgerError> {
        let now = now_ms();
        let tx = self.write_tx()?;
        tx.execute(
            "INSERT INTO operations (service, kind, step, from_release, to_release, reason, started_at_ms, updated_at_ms)
             VALUES (?1, ?2, 'started', ?3, ?4, ?5, ?6, ?6)",
            params![service, kind.as_str(), from, to, reason.map(scrub), now],
        )?;
        let id = tx.last_insert_rowid();
        insert_event(
            &tx,
            service,
            &NewEvent {
                release_id: to,
                operation_id: Some(id),
                kind: &format!("{}_started", kind.as_str()),
                message: message.unwrap_or_else(|| format!("{} started", kind.as_str())),
                data: reason.map(|r| serde_json::json!({ "reason": r })),
                incident_id,
            },
            now,
        )?;
        tx.commit()?;
        crate::failpoint::hit(&format!("{}.begun", kind.as_str()));
        Ok(id)
    }

    /// Moves an operation to its next step, with the event that says so, atomically.
    pub fn step(&mut self, op: i64, step: &str, message: String) -> Result<(), LedgerError> {
        self.step_in_incident(op, step, message, None)
    }

    /// [`Ledger::step`], with the event attached to an incident.
    pub fn step_in_incident(
        &mut self,
        op: i64,
        step: &str,
        message: String,
        incident_id: Option<i64>,
    ) -> Result<(), LedgerError> {
        let now = now_ms();
        let tx = self.write_tx()?;
        let (service, to, kind): (String, Option<i64>, String) = tx.query_row(
            "SELECT service, to_release, kind FROM operations WHERE id = ?1",
            [op],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        tx.execute(
            "UPDATE operations SET step = ?2, updated_at_ms = ?3 WHERE id = ?1",
            params![op, step, now],
        )?;
        insert_event(
            &tx,
            &service,
            &NewEvent {
                release_id: to,
                operation_id: Some(op),
                kind: step,
                message,
                data: None,
                incident_id,
            },
            now,
        )?;
        tx.commit()?;
        crate::failpoint::hit(&format!("{kind}.{step}"));
        Ok(())
    }

    pub fn finish_operation(
        &mut self,
        op: i64,
        outcome: &str,
        error: Option<&str>,
    ) -> Result<(), LedgerError> {
        let now = now_ms();
        let tx = self.write_tx()?;
        let (service, kind, to): (String, String, Option<i64>) = tx.query_row(
            "SELECT service, kind, to_release FROM operations WHERE id = ?1",
            [op],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        crate::failpoint::hit(&format!("{kind}.finishing"));
        tx.execute(
            "UPDATE operations SET step = ?2, outcome = ?2, error = ?3, updated_at_ms = ?4, finished_at_ms = ?4 WHERE id = ?1",
            params![op, outcome, error.map(scrub), now],
        )?;
        let message = match error {
            Some(e) => format!("{kind} {outcome}: {e}"),
            None => format!("{kind} {outcome}"),
        };
        insert_event(
            &tx,
            &service,
            &NewEvent {
                release_id: to,
                operation_id: Some(op),
                kind: &format!("{kind}_{outcome}"),
                message,
                data: None,
                incident_id: None,
            },
            now,
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Marks every operation still running (a crashed process's) as interrupted.
    pub fn interrupt_unfinished(&mut self) -> Result<Vec<Operation>, LedgerError> {
        let open = self.operations_where("outcome IS NULL", [])?;
        self.interrupt(open)
    }

    /// [`Ledger::interrupt_unfinished`] for one service's operations only: the others'
    /// are left for whoever puts their service right (the next watcher).
    pub fn interrupt_unfinished_of(
        &mut self,
        service: &str,
    ) -> Result<Vec<Operation>, LedgerError> {
        let open = self.operations_where("outcome IS NULL AND service = ?1", [service])?;
        self.interrupt(open)
    }

    fn interrupt(&mut self, open: Vec<Operation>) -> Result<Vec<Operation>, LedgerError> {
        for op in &open {
            self.finish_operation(
                op.id,
                "interrupted",
                Some(&format!(
                    "the process running it stopped during step `{}`",
                    op.step
                )),
            )?;
        }
        Ok(open)
    }

    pub fn running_operation(&self, service: &str) -> Result<Option<Operation>, LedgerError> {
        Ok(self
            .operations_where("service = ?1 AND outcome IS NULL", [service])?
            .into_iter()
            .next())
    }

    pub fn operation(&self, id: i64) -> Result<Option<Operation>, LedgerError> {
        Ok(self.operations_where("id = ?1", [id])?.into_iter().next())
    }

    fn operations_where<P: rusqlite::Params>(
        &self,
        filter: &str,
        params: P,
    ) -> Result<Vec<Operation>, LedgerError> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT id, service, kind, step, outcome, from_release, to_release, reason, error,
                    started_at_ms, updated_at_ms, finished_at_ms
             FROM operations WHERE {filter} ORDER BY id DESC"
        ))?;
        let rows = stmt.query_map(params, |r| {
            Ok(Operation {
                id: r.get(0)?,
                service: r.get(1)?,
                kind: r.get(2)?,
                step: r.get(3)?,
                outcome: r.get(4)?,
                from_release: r.get(5)?,
                to_release: r.get(6)?,
                reason: r.get(7)?,
                error: r.get(8)?,
                started_at_ms: r.get(9)?,
                updated_at_ms: r.get(10)?,
                finished_at_ms: r.get(11)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    // ---- events -------------------------------------------------------------------

    pub fn event(&mut self, service: &str, event: NewEvent<'_>) -> Result<i64, LedgerError> {
        insert_event(&self.conn, service, &event, now_ms())
    }

    /// The service's timeline, oldest first; `limit` keeps the newest.
    pub fn events(&self, service: &str, limit: usize) -> Result<Vec<Event>, LedgerError> {
        self.events_where("service = ?1", params![service], limit)
    }

    /// The service's events newer than event `after_id`, oldest first (at most `limit`,
    /// the oldest of them, so a follower that reads again from the last one misses none).
    pub fn events_after(
        &self,
        service: &str,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<Event>, LedgerError> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT id FROM events WHERE service = ?1 AND id > ?2 ORDER BY id LIMIT {limit}"
        ))?;
        let last: Option<i64> = stmt
            .query_map(params![service, after_id], |r| r.get::<_, i64>(0))?
            .collect::<Result<Vec<_>, _>>()?
            .last()
            .copied();
        let Some(last) = last else {
            return Ok(Vec::new());
        };
        self.events_where(
            "service = ?1 AND id > ?2 AND id <= ?3",
            params![service, after_id, last],
            limit,
        )
    }

    /// The newest event id of the service (0 when it has none).
    pub fn last_event_id(&self, service: &str) -> Result<i64, LedgerError> {
        Ok(self.conn.query_row(
            "SELECT COALESCE(MAX(id), 0) FROM events WHERE service = ?1",
            params![service],
            |r| r.get(0),
        )?)
    }

    /// The service's events between two instants (inclusive), oldest first.
    pub fn events_between(
        &self,
        service: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<Event>, LedgerError> {
        self.events_where(
            "service = ?1 AND ts_ms BETWEEN ?2 AND ?3",
            params![service, from_ms, to_ms],
            100_000,
        )
    }

    fn events_where<P: rusqlite::Params>(
        &self,
        filter: &str,
        params: P,
        limit: usize,
    ) -> Result<Vec<Event>, LedgerError> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT id, ts_ms, service, release_id, operation_id, kind, message, data, incident_id
             FROM (SELECT * FROM events WHERE {filter} ORDER BY id DESC LIMIT {limit})
             ORDER BY id"
        ))?;
        let rows = stmt.query_map(params, |r| {
            let data: Option<String> = r.get(7)?;
            Ok(Event {
                id: r.get(0)?,
                ts_ms: r.get(1)?,
                service: r.get(2)?,
                release_id: r.get(3)?,
                operation_id: r.get(4)?,
                kind: r.get(5)?,
                message: r.get(6)?,
                data: data.and_then(|d| serde_json::from_str(&d).ok()),
                incident_id: r.get(8)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every service the ledger has heard of.
    pub fn services(&self) -> Result<Vec<String>, LedgerError> {
        let mut stmt = self
            .conn
            .prepare("SELECT service FROM releases UNION SELECT service FROM events ORDER BY 1")?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    // ---- slots --------------------------------------------------------------------

    pub fn set_slot(&mut self, rec: &SlotRecord) -> Result<(), LedgerError> {
        self.conn.execute(
            "INSERT OR REPLACE INTO slots (service, slot, release_id, pid, pid_start, started_at_ms, warm_until_ms, container)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                rec.service,
                rec.slot.as_str(),
                rec.release_id,
                rec.pid,
                rec.pid_start.map(|s| s as i64),
                rec.started_at_ms,
                rec.warm_until_ms,
                rec.container
            ],
        )?;
        crate::failpoint::hit("slot.set");
        Ok(())
    }

    pub fn clear_slot(&mut self, service: &str, slot: Slot) -> Result<(), LedgerError> {
        self.conn.execute(
            "DELETE FROM slots WHERE service = ?1 AND slot = ?2",
            params![service, slot.as_str()],
        )?;
        crate::failpoint::hit("slot.cleared");
        Ok(())
    }

    pub fn slots(&self, service: &str) -> Result<Vec<SlotRecord>, LedgerError> {
        let mut stmt = self.conn.prepare(
            "SELECT service, slot, release_id, pid, pid_start, started_at_ms, warm_until_ms, container
             FROM slots WHERE service = ?1 ORDER BY slot",
        )?;
        let rows = stmt.query_map([service], |r| {
            let slot: String = r.get(1)?;
            let pid_start: Option<i64> = r.get(4)?;
            Ok((
                slot,
                SlotRecord {
                    service: r.get(0)?,
                    slot: Slot::Blue,
                    release_id: r.get(2)?,
                    pid: r.get(3)?,
                    pid_start: pid_start.map(|s| s as u64),
                    started_at_ms: r.get(5)?,
                    warm_until_ms: r.get(6)?,
                    container: r.get(7)?,
                },
            ))
        })?;
        rows.map(|row| {
            let (slot, mut rec) = row?;
            rec.slot = Slot::parse(&slot).ok_or(LedgerError::Corrupt {
                what: "slot name",
                detail: slot,
            })?;
            Ok(rec)
        })
        .collect()
    }
}

const RELEASE_COLS: &str = "id, service, version, spec, config_snapshot, status, status_reason, created_at_ms, activated_at_ms, healthy_p95_us, migration_head";

fn row_to_release(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<Release, LedgerError>> {
    let spec: String = r.get(3)?;
    let snapshot: String = r.get(4)?;
    let status: String = r.get(5)?;
    let id: i64 = r.get(0)?;
    let service: String = r.get(1)?;
    let version: String = r.get(2)?;
    let status_reason: Option<String> = r.get(6)?;
    let created_at_ms: i64 = r.get(7)?;
    let activated_at_ms: Option<i64> = r.get(8)?;
    let healthy_p95_us: Option<i64> = r.get(9)?;
    let migration_head: Option<String> = r.get(10)?;
    Ok((|| {
        Ok(Release {
            id,
            service,
            version,
            spec: serde_json::from_str(&spec).map_err(|e| LedgerError::Corrupt {
                what: "release spec",
                detail: e.to_string(),
            })?,
            config_snapshot: serde_json::from_str(&snapshot).map_err(|e| LedgerError::Corrupt {
                what: "config snapshot",
                detail: e.to_string(),
            })?,
            status: ReleaseStatus::parse(&status)?,
            status_reason,
            created_at_ms,
            activated_at_ms,
            healthy_p95_us: healthy_p95_us.map(|v| v as u64),
            migration_head,
        })
    })())
}

fn insert_event(
    conn: &Connection,
    service: &str,
    e: &NewEvent<'_>,
    ts_ms: i64,
) -> Result<i64, LedgerError> {
    conn.execute(
        "INSERT INTO events (ts_ms, service, release_id, operation_id, kind, message, data, incident_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            ts_ms,
            service,
            e.release_id,
            e.operation_id,
            e.kind,
            scrub(&e.message),
            e.data.as_ref().map(|d| {
                let mut d = d.clone();
                scrub_json(&mut d);
                d.to_string()
            }),
            e.incident_id
        ],
    )?;
    Ok(conn.last_insert_rowid())
}

/// Whether the process that took a lease still runs: the pid exists, is not a zombie
/// (killed, not yet reaped), and is the same process: it started when the holder did
/// (`pid_start`, clock ticks since boot, exact). A pid the kernel has since handed to
/// another program started at another tick. Leases written before `pid_start` was kept
/// fall back to the wall clock: the process must have started before the lease was taken.
pub fn holder_alive(pid: i64, pid_start: Option<i64>, since_ms: i64) -> bool {
    if pid <= 0 {
        return false;
    }
    let Some(ticks) = crate::os::start_ticks(pid) else {
        return false;
    };
    if let Some(start) = pid_start {
        return ticks as i64 == start;
    }
    match crate::os::boot_time_ms() {
        // Boot time has whole seconds and ticks are 10 ms: a second of slack.
        Some(boot) => boot + (ticks * 1000 / crate::os::ticks_per_sec()) as i64 <= since_ms + 1_500,
        None => true,
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

#[cfg(test)]
mod tests;
