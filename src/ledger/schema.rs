//! The ledger's own schema migrations. The version lives in SQLite's `user_version`;
//! each step runs in one immediate transaction, so two processes opening an old ledger
//! at once upgrade it exactly once. Never edit a shipped step: add a new one.

use rusqlite::{Connection, TransactionBehavior};

use super::LedgerError;

/// Each entry upgrades the schema from version `index` to `index + 1`.
const STEPS: &[&str] = &[
    // v1: releases, operations, events, leases, slots.
    r#"
    CREATE TABLE releases (
        id               INTEGER PRIMARY KEY,
        service          TEXT NOT NULL,
        version          TEXT NOT NULL,
        spec             TEXT NOT NULL,
        config_snapshot  TEXT NOT NULL,
        status           TEXT NOT NULL
            CHECK (status IN ('pending', 'active', 'previous', 'bad', 'retired')),
        status_reason    TEXT,
        created_at_ms    INTEGER NOT NULL,
        activated_at_ms  INTEGER,
        UNIQUE (service, version)
    );
    CREATE INDEX releases_by_service ON releases (service, status);

    CREATE TABLE operations (
        id              INTEGER PRIMARY KEY,
        service         TEXT NOT NULL,
        kind            TEXT NOT NULL CHECK (kind IN ('deploy', 'rollback')),
        step            TEXT NOT NULL,
        outcome         TEXT CHECK (outcome IN ('succeeded', 'failed', 'interrupted')),
        from_release    INTEGER REFERENCES releases (id),
        to_release      INTEGER REFERENCES releases (id),
        reason          TEXT,
        error           TEXT,
        started_at_ms   INTEGER NOT NULL,
        updated_at_ms   INTEGER NOT NULL,
        finished_at_ms  INTEGER
    );
    CREATE INDEX operations_by_service ON operations (service, id);

    CREATE TABLE events (
        id            INTEGER PRIMARY KEY,
        ts_ms         INTEGER NOT NULL,
        service       TEXT NOT NULL,
        release_id    INTEGER,
        operation_id  INTEGER,
        kind          TEXT NOT NULL,
        message       TEXT NOT NULL,
        data          TEXT
    );
    CREATE INDEX events_by_service ON events (service, id);

    CREATE TABLE leases (
        service         TEXT PRIMARY KEY,
        holder          TEXT NOT NULL,
        pid             INTEGER NOT NULL,
        token           TEXT NOT NULL,
        acquired_at_ms  INTEGER NOT NULL,
        expires_at_ms   INTEGER NOT NULL
    );

    CREATE TABLE slots (
        service        TEXT NOT NULL,
        slot           TEXT NOT NULL CHECK (slot IN ('blue', 'green')),
        release_id     INTEGER REFERENCES releases (id),
        pid            INTEGER,
        pid_start      INTEGER,
        started_at_ms  INTEGER,
        warm_until_ms  INTEGER,
        PRIMARY KEY (service, slot)
    );
    "#,
    // v2: the guard: baselines, frozen/investigating state, incidents.
    r#"
    ALTER TABLE releases ADD COLUMN healthy_p95_us INTEGER;
    ALTER TABLE events ADD COLUMN incident_id INTEGER;

    CREATE TABLE service_state (
        service                    TEXT PRIMARY KEY,
        frozen_reason              TEXT,
        frozen_at_ms               INTEGER,
        investigating_release      INTEGER,
        investigating_since_ms     INTEGER,
        investigating_deadline_ms  INTEGER,
        acked_at_ms                INTEGER
    );

    CREATE TABLE incidents (
        id               INTEGER PRIMARY KEY,
        service          TEXT NOT NULL,
        release_id       INTEGER REFERENCES releases (id),
        status           TEXT NOT NULL
            CHECK (status IN ('open', 'resolved', 'failed', 'frozen')),
        rule             TEXT NOT NULL,
        summary          TEXT NOT NULL,
        opened_at_ms     INTEGER NOT NULL,
        first_bad_at_ms  INTEGER,
        switched_at_ms   INTEGER,
        verified_at_ms   INTEGER,
        closed_at_ms     INTEGER,
        decision         TEXT,
        impact           TEXT,
        series           TEXT
    );
    CREATE INDEX incidents_by_service ON incidents (service, id);
    "#,
    // v3: each release's schema head, for the migration rollback guard.
    r#"
    ALTER TABLE releases ADD COLUMN migration_head TEXT;
    "#,
    // v4: the container a slot runs (runtime docker).
    r#"
    ALTER TABLE slots ADD COLUMN container TEXT;
    "#,
    // v5: database backups (`ripcord db backup`).
    r#"
    CREATE TABLE backups (
        id              INTEGER PRIMARY KEY,
        service         TEXT NOT NULL,
        path            TEXT NOT NULL,
        sha256          TEXT NOT NULL,
        size_bytes      INTEGER NOT NULL,
        server_version  TEXT NOT NULL,
        database        TEXT NOT NULL,
        release_id      INTEGER REFERENCES releases (id),
        created_at_ms   INTEGER NOT NULL,
        verified_ok     INTEGER,
        verified_at_ms  INTEGER,
        deleted_at_ms   INTEGER
    );
    CREATE INDEX backups_by_service ON backups (service, id);
    "#,
    // v6: the lease holder's process start (clock ticks since boot), so a lease is held
    // only by the very process that took it, whatever the wall clock did since.
    r#"
    ALTER TABLE leases ADD COLUMN pid_start INTEGER;
    "#,
    // v7: drills (`ripcord drill`): the operations table takes kind 'drill' (SQLite
    // changes a CHECK only by rebuilding the table), and each drill's timed steps.
    r#"
    CREATE TABLE operations_v7 (
        id              INTEGER PRIMARY KEY,
        service         TEXT NOT NULL,
        kind            TEXT NOT NULL CHECK (kind IN ('deploy', 'rollback', 'drill')),
        step            TEXT NOT NULL,
        outcome         TEXT CHECK (outcome IN ('succeeded', 'failed', 'interrupted')),
        from_release    INTEGER REFERENCES releases (id),
        to_release      INTEGER REFERENCES releases (id),
        reason          TEXT,
        error           TEXT,
        started_at_ms   INTEGER NOT NULL,
        updated_at_ms   INTEGER NOT NULL,
        finished_at_ms  INTEGER
    );
    INSERT INTO operations_v7 SELECT id, service, kind, step, outcome, from_release,
        to_release, reason, error, started_at_ms, updated_at_ms, finished_at_ms
        FROM operations;
    DROP TABLE operations;
    ALTER TABLE operations_v7 RENAME TO operations;
    CREATE INDEX operations_by_service ON operations (service, id);

    CREATE TABLE drills (
        id              INTEGER PRIMARY KEY,
        service         TEXT NOT NULL,
        operation_id    INTEGER REFERENCES operations (id),
        current_release INTEGER REFERENCES releases (id),
        previous_release INTEGER REFERENCES releases (id),
        outcome         TEXT NOT NULL
            CHECK (outcome IN ('passed', 'failed', 'verify_failed')),
        started_at_ms   INTEGER NOT NULL,
        finished_at_ms  INTEGER NOT NULL,
        total_ms        INTEGER NOT NULL,
        budget_ms       INTEGER NOT NULL,
        steps           TEXT NOT NULL,
        error           TEXT
    );
    CREATE INDEX drills_by_service ON drills (service, id);
    "#,
    // v8: database restores are operations too (kind 'restore'), so a watcher that died
    // in one is found and its database put right by the next.
    r#"
    CREATE TABLE operations_v8 (
        id              INTEGER PRIMARY KEY,
        service         TEXT NOT NULL,
        kind            TEXT NOT NULL
            CHECK (kind IN ('deploy', 'rollback', 'drill', 'restore')),
        step            TEXT NOT NULL,
        outcome         TEXT CHECK (outcome IN ('succeeded', 'failed', 'interrupted')),
        from_release    INTEGER REFERENCES releases (id),
        to_release      INTEGER REFERENCES releases (id),
        reason          TEXT,
        error           TEXT,
        started_at_ms   INTEGER NOT NULL,
        updated_at_ms   INTEGER NOT NULL,
        finished_at_ms  INTEGER
    );
    INSERT INTO operations_v8 SELECT id, service, kind, step, outcome, from_release,
        to_release, reason, error, started_at_ms, updated_at_ms, finished_at_ms
        FROM operations;
    DROP TABLE operations;
    ALTER TABLE operations_v8 RENAME TO operations;
    CREATE INDEX operations_by_service ON operations (service, id);
    "#,
];

/// The SQL of one upgrade step (tests build old ledgers with it).
#[cfg(test)]
pub(super) fn step(index: usize) -> &'static str {
    STEPS[index]
}

/// The schema version this build writes.
pub const CURRENT: i64 = STEPS.len() as i64;

pub(super) fn upgrade(conn: &mut Connection) -> Result<(), LedgerError> {
    // Readers (every CLI command) must not take the write lock just to learn the schema
    // is current: check first, lock only to upgrade.
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version == CURRENT {
        return Ok(());
    }
    loop {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version > CURRENT {
            return Err(LedgerError::TooNew {
                found: version,
                known: CURRENT,
            });
        }
        if version == CURRENT {
            return Ok(());
        }
        tx.execute_batch(STEPS[version as usize])?;
        tx.pragma_update(None, "user_version", version + 1)?;
        tx.commit()?;
    }
}
