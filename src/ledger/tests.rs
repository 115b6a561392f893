use super::*;

fn spec(v: &str) -> ReleaseSpec {
    ReleaseSpec {
        argv: vec!["app".into(), "--version".into(), v.into()],
        cwd: None,
        image: None,
        ..Default::default()
    }
}

fn open() -> (tempfile::TempDir, Ledger) {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path()).unwrap();
    (dir, ledger)
}

#[test]
fn fresh_ledger_is_at_current_schema_and_reopens() {
    let (dir, ledger) = open();
    assert_eq!(ledger.schema_version().unwrap(), SCHEMA_VERSION);
    drop(ledger);
    let again = Ledger::open(dir.path()).unwrap();
    assert_eq!(again.schema_version().unwrap(), SCHEMA_VERSION);
}

#[test]
fn newer_schema_is_refused() {
    let (dir, ledger) = open();
    ledger
        .conn
        .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
        .unwrap();
    drop(ledger);
    let err = Ledger::open(dir.path()).err().unwrap();
    assert!(matches!(err, LedgerError::TooNew { .. }), "{err}");
}

#[test]
fn deploys_and_rollback_move_statuses() {
    let (_dir, mut l) = open();
    let snap = serde_json::json!({});
    let v1 = l.record_release("web", "v1", &spec("v1"), &snap).unwrap();
    assert_eq!(v1.status, ReleaseStatus::Pending);
    l.promote("web", v1.id).unwrap();
    let v2 = l.record_release("web", "v2", &spec("v2"), &snap).unwrap();
    l.promote("web", v2.id).unwrap();
    assert_eq!(l.active_release("web").unwrap().unwrap().version, "v2");
    assert_eq!(l.previous_good("web").unwrap().unwrap().version, "v1");

    let v3 = l.record_release("web", "v3", &spec("v3"), &snap).unwrap();
    l.promote("web", v3.id).unwrap();
    assert_eq!(l.release(v1.id).unwrap().status, ReleaseStatus::Retired);
    assert_eq!(l.release(v2.id).unwrap().status, ReleaseStatus::Previous);

    l.rolled_back("web", Some(v3.id), v2.id, "5xx").unwrap();
    let v3 = l.release(v3.id).unwrap();
    assert_eq!(v3.status, ReleaseStatus::Bad);
    assert_eq!(v3.status_reason.as_deref(), Some("5xx"));
    assert_eq!(l.active_release("web").unwrap().unwrap().version, "v2");
    // The next rollback target is the newest good release that served: v1.
    assert_eq!(l.previous_good("web").unwrap().unwrap().version, "v1");
    let versions: Vec<_> = l
        .releases("web")
        .unwrap()
        .into_iter()
        .map(|r| r.version)
        .collect();
    assert_eq!(versions, ["v3", "v2", "v1"]);
}

#[test]
fn redeploying_a_version_reuses_its_row() {
    let (_dir, mut l) = open();
    let snap = serde_json::json!({"a": 1});
    let a = l.record_release("web", "v1", &spec("v1"), &snap).unwrap();
    let mut s = spec("v1");
    s.argv.push("--extra".into());
    let b = l.record_release("web", "v1", &s, &snap).unwrap();
    assert_eq!(a.id, b.id);
    assert_eq!(b.spec, s);
    assert_eq!(b.config_snapshot, snap);
}

#[test]
fn operations_are_a_state_machine_with_events() {
    let (_dir, mut l) = open();
    let v1 = l
        .record_release("web", "v1", &spec("v1"), &serde_json::json!({}))
        .unwrap();
    let op = l
        .begin_operation("web", OperationKind::Deploy, None, Some(v1.id), None)
        .unwrap();
    l.step(op, "health_wait", "waiting for health".into())
        .unwrap();
    assert_eq!(
        l.running_operation("web").unwrap().unwrap().step,
        "health_wait"
    );
    l.finish_operation(op, "succeeded", None).unwrap();
    assert!(l.running_operation("web").unwrap().is_none());
    let kinds: Vec<_> = l
        .events("web", 100)
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(kinds, ["deploy_started", "health_wait", "deploy_succeeded"]);
    let events = l.events("web", 100).unwrap();
    assert!(events.windows(2).all(|w| w[0].ts_ms <= w[1].ts_ms));
    assert_eq!(l.events("web", 1).unwrap()[0].kind, "deploy_succeeded");
}

#[test]
fn unfinished_operations_are_interrupted() {
    let (_dir, mut l) = open();
    let op = l
        .begin_operation("web", OperationKind::Rollback, None, None, Some("manual"))
        .unwrap();
    l.step(op, "switching", "switching".into()).unwrap();
    let open = l.interrupt_unfinished().unwrap();
    assert_eq!(open.len(), 1);
    let op = l.operation(op).unwrap().unwrap();
    assert_eq!(op.outcome.as_deref(), Some("interrupted"));
    assert!(op.error.unwrap().contains("`switching`"));
}

#[test]
fn one_services_unfinished_operations_are_interrupted_and_the_others_left_open() {
    let (_dir, mut l) = open();
    let web = l
        .begin_operation("web", OperationKind::Restore, None, None, None)
        .unwrap();
    let api = l
        .begin_operation("api", OperationKind::Restore, None, None, None)
        .unwrap();
    let done = l.interrupt_unfinished_of("web").unwrap();
    assert_eq!(done.iter().map(|o| o.id).collect::<Vec<_>>(), [web]);
    assert_eq!(
        l.operation(web).unwrap().unwrap().outcome.as_deref(),
        Some("interrupted")
    );
    assert_eq!(l.operation(api).unwrap().unwrap().outcome, None);
}

#[test]
fn a_lease_is_exclusive_across_connections() {
    let (dir, mut a) = open();
    let mut b = Ledger::open(dir.path()).unwrap();
    let lease = a
        .acquire_lease(
            "web",
            "deploy web v2 (operation 1)",
            Duration::from_secs(60),
        )
        .unwrap();
    let err = b
        .acquire_lease("web", "rollback web", Duration::from_secs(60))
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("deploy web v2 (operation 1)"), "{msg}");
    assert!(matches!(err, LedgerError::Busy { .. }));
    // Another service is independent.
    b.acquire_lease("api", "deploy api", Duration::from_secs(60))
        .unwrap();
    a.release_lease(&lease).unwrap();
    b.acquire_lease("web", "rollback web", Duration::from_secs(60))
        .unwrap();
}

#[test]
fn a_lease_of_a_dead_process_or_expired_is_taken_over() {
    let (_dir, mut l) = open();
    l.acquire_lease("web", "old", Duration::from_secs(60))
        .unwrap();
    // Pretend the holder was a process that no longer exists.
    l.conn
        .execute("UPDATE leases SET pid = 999999999", [])
        .unwrap();
    assert_eq!(l.lease_holder("web").unwrap(), None);
    l.acquire_lease("web", "new", Duration::from_secs(60))
        .unwrap();
    assert_eq!(l.lease_holder("web").unwrap().as_deref(), Some("new"));
    l.conn
        .execute("UPDATE leases SET expires_at_ms = 0", [])
        .unwrap();
    l.acquire_lease("web", "newer", Duration::from_secs(60))
        .unwrap();
}

#[test]
fn a_lease_held_by_a_zombie_or_a_recycled_pid_is_taken_over() {
    let (_dir, mut l) = open();
    l.acquire_lease("web", "old", Duration::from_secs(60))
        .unwrap();
    let me = i64::from(std::process::id());
    let my_start = crate::os::start_ticks(me).unwrap() as i64;
    // The lease records the very process that took it.
    let recorded: Option<i64> = l
        .conn
        .query_row("SELECT pid_start FROM leases", [], |r| r.get(0))
        .unwrap();
    assert_eq!(recorded, Some(my_start));
    assert_eq!(l.lease_holder("web").unwrap().as_deref(), Some("old"));
    // The same pid, another process (the holder died and the kernel gave its pid to
    // another program): not the holder, whatever the clocks say.
    l.conn
        .execute("UPDATE leases SET pid_start = ?1", [my_start - 1])
        .unwrap();
    assert_eq!(
        l.lease_holder("web").unwrap(),
        None,
        "a recycled pid holds the lease"
    );
    // A lease from before pid_start was kept: a process that started after the lease
    // was taken is not its holder.
    l.conn
        .execute(
            "UPDATE leases SET pid_start = NULL, acquired_at_ms = ?1",
            [crate::clock::now_ms() - 86_400_000],
        )
        .unwrap();
    assert_eq!(
        l.lease_holder("web").unwrap(),
        None,
        "a recycled pid holds the lease"
    );

    // A killed process that nobody reaped yet (a zombie) holds nothing either.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let zombie = child.id();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while crate::os::start_ticks(i64::from(zombie)).is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "the child never exited"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        std::path::Path::new(&format!("/proc/{zombie}")).exists(),
        "the zombie is still in /proc"
    );
    l.conn
        .execute(
            "UPDATE leases SET pid = ?1, acquired_at_ms = ?2",
            rusqlite::params![zombie, crate::clock::now_ms()],
        )
        .unwrap();
    assert_eq!(
        l.lease_holder("web").unwrap(),
        None,
        "a zombie holds the lease"
    );
    l.acquire_lease("web", "new", Duration::from_secs(60))
        .unwrap();
    assert_eq!(l.lease_holder("web").unwrap().as_deref(), Some("new"));
    child.wait().unwrap();
}

#[test]
fn concurrent_writers_never_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    Ledger::open(dir.path()).unwrap();
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let path = dir.path().to_path_buf();
            std::thread::spawn(move || {
                let mut l = Ledger::open(&path).unwrap();
                for i in 0..50 {
                    l.event(
                        "web",
                        NewEvent {
                            kind: "note",
                            message: format!("{t}-{i}"),
                            ..Default::default()
                        },
                    )
                    .unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let l = Ledger::open(dir.path()).unwrap();
    assert_eq!(l.events("web", 1000).unwrap().len(), 200);
    let ok: String = l
        .conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
}

#[test]
fn slots_round_trip() {
    let (_dir, mut l) = open();
    let rec = SlotRecord {
        service: "web".into(),
        slot: Slot::Green,
        release_id: None,
        pid: Some(42),
        pid_start: Some(7),
        started_at_ms: Some(1),
        warm_until_ms: None,
        container: Some("abc123".into()),
    };
    l.set_slot(&rec).unwrap();
    let got = l.slots("web").unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].slot, Slot::Green);
    assert_eq!(got[0].pid_start, Some(7));
    l.clear_slot("web", Slot::Green).unwrap();
    assert!(l.slots("web").unwrap().is_empty());
}

/// Regression: a deferred transaction that read and then wrote failed at once with
/// SQLITE_BUSY while another process held the write lock, which failed an automatic
/// rollback during `ripcord demo`. Writes now wait for the lock.
#[test]
fn a_write_waits_for_another_process_holding_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let mut l = Ledger::open(dir.path()).unwrap();
    let op = l
        .begin_operation("web", OperationKind::Rollback, None, None, None)
        .unwrap();
    let path = dir.path().to_path_buf();
    let (locked_tx, locked_rx) = std::sync::mpsc::channel();
    let holder = std::thread::spawn(move || {
        let mut other = rusqlite::Connection::open(path.join(FILE_NAME)).unwrap();
        let tx = other
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .unwrap();
        locked_tx.send(()).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        tx.commit().unwrap();
    });
    locked_rx.recv().unwrap();
    l.step(op, "switching", "switching".into()).unwrap();
    l.finish_operation(op, "succeeded", None).unwrap();
    holder.join().unwrap();
    assert_eq!(
        l.operation(op).unwrap().unwrap().outcome.as_deref(),
        Some("succeeded")
    );
}

#[test]
fn many_processes_opening_a_new_ledger_at_once_all_succeed() {
    // A regression: the watcher creating the ledger while a CLI polls it got
    // "database is locked" from the switch to WAL.
    for _ in 0..40 {
        let dir = tempfile::tempdir().unwrap();
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let path = dir.path().to_path_buf();
                std::thread::spawn(move || Ledger::open(&path).map(|_| ()))
            })
            .collect();
        for h in handles {
            h.join().unwrap().unwrap();
        }
    }
}

#[test]
fn events_after_reads_the_oldest_new_ones_first_so_a_follower_misses_none() {
    let (_dir, mut l) = open();
    assert_eq!(l.last_event_id("web").unwrap(), 0);
    let mut ids = Vec::new();
    for i in 0..5 {
        for service in ["web", "api"] {
            let id = l
                .event(
                    service,
                    NewEvent {
                        kind: "note",
                        message: format!("{service} {i}"),
                        ..Default::default()
                    },
                )
                .unwrap();
            if service == "web" {
                ids.push(id);
            }
        }
    }
    assert_eq!(l.last_event_id("web").unwrap(), ids[4]);
    let messages =
        |events: Vec<Event>| -> Vec<String> { events.into_iter().map(|e| e.message).collect() };
    // Newer than the second: in order, this service's only.
    assert_eq!(
        messages(l.events_after("web", ids[1], 100).unwrap()),
        ["web 2", "web 3", "web 4"]
    );
    // A small batch takes the oldest of the new ones (`events` keeps the newest).
    assert_eq!(
        messages(l.events_after("web", ids[0], 2).unwrap()),
        ["web 1", "web 2"]
    );
    assert!(l.events_after("web", ids[4], 100).unwrap().is_empty());
    assert!(l.events_after("nothing", 0, 100).unwrap().is_empty());
}

#[test]
fn a_v6_ledger_keeps_its_operations_and_takes_drills() {
    let dir = tempfile::tempdir().unwrap();
    {
        // A v6 ledger by hand, with a release and a finished rollback in it.
        let mut conn = rusqlite::Connection::open(dir.path().join(FILE_NAME)).unwrap();
        let tx = conn.transaction().unwrap();
        for i in 0..6 {
            tx.execute_batch(schema::step(i)).unwrap();
        }
        tx.pragma_update(None, "user_version", 6).unwrap();
        tx.execute(
            "INSERT INTO releases (service, version, spec, config_snapshot, status, created_at_ms)
             VALUES ('web', 'v1', '{\"argv\":[\"x\"],\"cwd\":null}', '{}', 'active', 1)",
            [],
        )
        .unwrap();
        tx.execute(
            "INSERT INTO operations (service, kind, step, outcome, to_release, reason,
                                     started_at_ms, updated_at_ms, finished_at_ms)
             VALUES ('web', 'rollback', 'done', 'succeeded', 1, '5xx', 10, 20, 20)",
            [],
        )
        .unwrap();
        tx.commit().unwrap();
    }
    let mut l = Ledger::open(dir.path()).unwrap();
    assert_eq!(l.schema_version().unwrap(), SCHEMA_VERSION);
    let old = l.operation(1).unwrap().unwrap();
    assert_eq!(
        (
            old.kind.as_str(),
            old.outcome.as_deref(),
            old.reason.as_deref()
        ),
        ("rollback", Some("succeeded"), Some("5xx"))
    );
    let op = l
        .begin_operation("web", OperationKind::Drill, Some(1), Some(1), Some("drill"))
        .unwrap();
    assert_eq!(l.operation(op).unwrap().unwrap().kind, "drill");
    assert!(l.last_drill("web").unwrap().is_none());
    let steps = [DrillStep {
        leg: "back".into(),
        step: "switch".into(),
        ms: 2,
        ok: true,
    }];
    l.record_drill(
        "web",
        &NewDrill {
            operation_id: Some(op),
            current_release: Some(1),
            previous_release: Some(1),
            outcome: "passed",
            started_at_ms: 100,
            finished_at_ms: 150,
            total_ms: 50,
            budget_ms: 60_000,
            steps: &steps,
            error: None,
        },
    )
    .unwrap();
    let d = l.last_drill("web").unwrap().unwrap();
    assert!(d.passed() && d.within_budget());
    assert_eq!(d.steps, steps);
    assert!(l.last_drill("api").unwrap().is_none());
}
