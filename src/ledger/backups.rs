//! Database backups in the ledger: where each dump is, its sha256 and size, the server
//! version, the release that was active, and whether it last passed verification.

use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use super::{Ledger, LedgerError};
use crate::clock::now_ms;

#[derive(Debug, Clone, Serialize)]
pub struct BackupRecord {
    pub id: i64,
    pub service: String,
    pub path: String,
    pub sha256: String,
    pub size_bytes: u64,
    pub server_version: String,
    pub database: String,
    pub release_id: Option<i64>,
    pub created_at_ms: i64,
    /// `None`: never checked since it was written (its checksum was computed then).
    pub verified_ok: Option<bool>,
    pub verified_at_ms: Option<i64>,
    pub deleted_at_ms: Option<i64>,
}

/// What a new backup row holds.
pub struct NewBackup<'a> {
    pub path: &'a str,
    pub sha256: &'a str,
    pub size_bytes: u64,
    pub server_version: &'a str,
    pub database: &'a str,
    pub release_id: Option<i64>,
    pub created_at_ms: i64,
}

const COLS: &str = "id, service, path, sha256, size_bytes, server_version, database, release_id, \
                    created_at_ms, verified_ok, verified_at_ms, deleted_at_ms";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<BackupRecord> {
    Ok(BackupRecord {
        id: r.get(0)?,
        service: r.get(1)?,
        path: r.get(2)?,
        sha256: r.get(3)?,
        size_bytes: r.get::<_, i64>(4)? as u64,
        server_version: r.get(5)?,
        database: r.get(6)?,
        release_id: r.get(7)?,
        created_at_ms: r.get(8)?,
        verified_ok: r.get(9)?,
        verified_at_ms: r.get(10)?,
        deleted_at_ms: r.get(11)?,
    })
}

impl Ledger {
    pub fn record_backup(
        &mut self,
        service: &str,
        b: &NewBackup<'_>,
    ) -> Result<BackupRecord, LedgerError> {
        let tx = self.write_tx()?;
        tx.execute(
            "INSERT INTO backups (service, path, sha256, size_bytes, server_version, database, release_id, created_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                service,
                b.path,
                b.sha256,
                b.size_bytes as i64,
                b.server_version,
                b.database,
                b.release_id,
                b.created_at_ms
            ],
        )?;
        let id = tx.last_insert_rowid();
        tx.commit()?;
        crate::failpoint::hit("backup.recorded");
        self.backup(id)?.ok_or_else(|| LedgerError::Corrupt {
            what: "backups",
            detail: format!("backup {id} vanished after its insert"),
        })
    }

    pub fn backup(&self, id: i64) -> Result<Option<BackupRecord>, LedgerError> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {COLS} FROM backups WHERE id = ?1"),
                [id],
                row,
            )
            .optional()?)
    }

    /// A service's backups that still exist, newest first.
    pub fn backups(&self, service: &str) -> Result<Vec<BackupRecord>, LedgerError> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {COLS} FROM backups WHERE service = ?1 AND deleted_at_ms IS NULL
             ORDER BY created_at_ms DESC, id DESC"
        ))?;
        let rows = stmt.query_map([service], row)?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    pub fn set_backup_verified(&mut self, id: i64, ok: bool) -> Result<(), LedgerError> {
        let tx = self.write_tx()?;
        tx.execute(
            "UPDATE backups SET verified_ok = ?2, verified_at_ms = ?3 WHERE id = ?1",
            params![id, ok, now_ms()],
        )?;
        tx.commit()?;
        crate::failpoint::hit("backup.verified");
        Ok(())
    }

    pub fn mark_backup_deleted(&mut self, id: i64) -> Result<(), LedgerError> {
        let tx = self.write_tx()?;
        tx.execute(
            "UPDATE backups SET deleted_at_ms = ?2 WHERE id = ?1",
            params![id, now_ms()],
        )?;
        tx.commit()?;
        Ok(())
    }
}
