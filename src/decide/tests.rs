use super::*;
use proptest::prelude::*;

fn finding(rule: Rule) -> Finding {
    Finding {
        rule,
        release_id: 2,
        at_ms: 0,
        summary: format!("{} fired", rule.as_str()),
        values: serde_json::Value::Null,
    }
}

fn state() -> State {
    State {
        has_rollback_target: true,
        investigate_secs: 300,
        cpu_investigates: true,
        ..State::default()
    }
}

fn action(state: &State, rules: &[Rule], now: i64) -> Action {
    let f: Vec<Finding> = rules.iter().map(|r| finding(*r)).collect();
    decide(state, &f, now).action
}

fn rb(kind: RollbackKind) -> Action {
    Action::Rollback {
        kind,
        release_id: 2,
    }
}

#[test]
fn the_runbook_tree() {
    let s = state();
    let cases: &[(&[Rule], Action)] = &[
        (&[], Action::None),
        (&[Rule::Health], rb(RollbackKind::Automatic)),
        (&[Rule::ErrorRate], rb(RollbackKind::Immediate)),
        (&[Rule::Crash], rb(RollbackKind::CannotWait)),
        (&[Rule::OomKill], rb(RollbackKind::CannotWait)),
        (&[Rule::LatencyP95], rb(RollbackKind::CannotWait)),
        (&[Rule::Metric], rb(RollbackKind::CannotWait)),
        (
            &[Rule::Cpu],
            Action::Investigate {
                release_id: 2,
                deadline_ms: 300_000,
            },
        ),
        // The earlier branch wins when several fire.
        (
            &[Rule::ErrorRate, Rule::Health],
            rb(RollbackKind::Automatic),
        ),
        (
            &[Rule::LatencyP95, Rule::ErrorRate],
            rb(RollbackKind::Immediate),
        ),
        (&[Rule::Cpu, Rule::OomKill], rb(RollbackKind::CannotWait)),
        (&[Rule::Health, Rule::DataCorruption], Action::Freeze),
    ];
    for (rules, want) in cases {
        assert_eq!(&action(&s, rules, 0), want, "{rules:?}");
    }
}

#[test]
fn reasons_name_the_branch_and_the_values() {
    let d = decide(&state(), &[finding(Rule::ErrorRate)], 0);
    assert_eq!(d.reasons[0], "user-facing errors → immediate rollback");
    assert_eq!(d.reasons[1], "error_rate fired");
}

#[test]
fn frozen_and_busy_services_do_nothing() {
    let mut s = state();
    s.frozen = Some("db check failed".into());
    let d = decide(&s, &[finding(Rule::Health)], 0);
    assert_eq!(d.action, Action::None);
    assert!(d.reasons[0].contains("frozen (db check failed)"));
    assert_eq!(action(&s, &[Rule::DataCorruption], 0), Action::None);

    let mut s = state();
    s.acting = true;
    assert_eq!(action(&s, &[Rule::ErrorRate], 0), Action::None);
    // Data corruption freezes even during an operation.
    assert_eq!(action(&s, &[Rule::DataCorruption], 0), Action::Freeze);
}

#[test]
fn no_good_release_escalates_instead_of_rolling_back() {
    let mut s = state();
    s.has_rollback_target = false;
    assert_eq!(
        action(&s, &[Rule::ErrorRate], 0),
        Action::Escalate { release_id: 2 }
    );
}

#[test]
fn an_investigation_rolls_back_at_its_deadline_unless_acked() {
    let mut s = state();
    s.investigating = Some(Investigation {
        release_id: 2,
        since_ms: 0,
        deadline_ms: 300_000,
        acked: false,
    });
    assert_eq!(action(&s, &[Rule::Cpu], 299_999), Action::None);
    // The CPU dipping does not end it.
    assert_eq!(action(&s, &[], 100_000), Action::None);
    assert_eq!(action(&s, &[], 300_000), rb(RollbackKind::Standard));
    s.investigating.as_mut().unwrap().acked = true;
    assert_eq!(action(&s, &[Rule::Cpu], 900_000), Action::None);
    // An acknowledged CPU investigation does not hide a real outage.
    assert_eq!(
        action(&s, &[Rule::ErrorRate], 900_000),
        rb(RollbackKind::Immediate)
    );
}

#[test]
fn cpu_can_be_configured_to_roll_back_at_once() {
    let mut s = state();
    s.cpu_investigates = false;
    assert_eq!(action(&s, &[Rule::Cpu], 0), rb(RollbackKind::Standard));
}

fn any_rule() -> impl Strategy<Value = Rule> {
    prop_oneof![
        Just(Rule::ErrorRate),
        Just(Rule::LatencyP95),
        Just(Rule::OomKill),
        Just(Rule::Crash),
        Just(Rule::Cpu),
        Just(Rule::Health),
    ]
}

proptest! {
    /// The decision is a function of its inputs: asking twice gives the same answer.
    #[test]
    fn deterministic(rules in proptest::collection::vec(any_rule(), 0..4), now in 0i64..1_000_000) {
        let s = state();
        prop_assert_eq!(action(&s, &rules, now), action(&s, &rules, now));
    }

    /// Driving the watcher's loop with any sequence of findings, the state only moves
    /// forward: once an investigation opens it stays open until it rolls back, and once
    /// a rollback is decided nothing else is decided for that release (no flapping).
    #[test]
    fn never_flaps(steps in proptest::collection::vec(proptest::collection::vec(any_rule(), 0..3), 1..60)) {
        let mut s = state();
        s.investigate_secs = 10;
        let mut rolled_back = false;
        for (i, rules) in steps.iter().enumerate() {
            let now = i as i64 * 1000;
            let was_investigating = s.investigating.is_some();
            match action(&s, rules, now) {
                Action::Rollback { .. } => {
                    prop_assert!(!rolled_back, "a second rollback for the same release");
                    rolled_back = true;
                    // The watcher acts; the release is no longer the one watched.
                    s.acting = true;
                }
                Action::Investigate { release_id, deadline_ms } => {
                    prop_assert!(!was_investigating, "a second investigation opened");
                    s.investigating = Some(Investigation { release_id, since_ms: now, deadline_ms, acked: false });
                }
                Action::None => {
                    if was_investigating && !rolled_back {
                        prop_assert!(s.investigating.is_some());
                    }
                }
                other => prop_assert!(false, "unexpected {:?}", other),
            }
        }
    }
}
