use std::time::Duration;

use proptest::prelude::*;

use super::*;

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
        investigate: Duration::from_secs(300),
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
        Just(Rule::Metric),
    ]
}

/// One tick's findings: mostly quiet or CPU alone, so that investigations open and run
/// to their deadline (ten quiet ticks) often enough to be tested, and now and then
/// anything.
fn tick() -> impl Strategy<Value = Vec<Rule>> {
    prop_oneof![
        3 => Just(vec![]),
        2 => Just(vec![Rule::Cpu]),
        1 => proptest::collection::vec(any_rule(), 1..3),
    ]
}

/// The runbook's order, written out independently of `decide`: the first rule here that
/// fired chooses the branch (data corruption before anything else). Returns the action
/// and the rule that chose it.
fn expected(rules: &[Rule]) -> (Action, Option<Rule>) {
    let cpu = Action::Investigate {
        release_id: 2,
        deadline_ms: 300_000,
    };
    let order = [
        (Rule::DataCorruption, Action::Freeze),
        (Rule::Health, rb(RollbackKind::Automatic)),
        (Rule::ErrorRate, rb(RollbackKind::Immediate)),
        (Rule::Crash, rb(RollbackKind::CannotWait)),
        (Rule::OomKill, rb(RollbackKind::CannotWait)),
        (Rule::LatencyP95, rb(RollbackKind::CannotWait)),
        (Rule::Metric, rb(RollbackKind::CannotWait)),
        (Rule::Cpu, cpu),
    ];
    order
        .into_iter()
        .find(|(rule, _)| rules.contains(rule))
        .map_or((Action::None, None), |(rule, action)| (action, Some(rule)))
}

/// Every combination of rules that can fire together (all 256), in the runbook's order and
/// reversed, once and twice over: the decision is the runbook's earliest branch among them,
/// and its reasons quote that rule's finding, not whichever came first in the list
/// (findings arrive in no particular order).
#[test]
fn the_earliest_branch_wins_whatever_else_fired() {
    let all = [
        Rule::DataCorruption,
        Rule::Health,
        Rule::ErrorRate,
        Rule::Crash,
        Rule::OomKill,
        Rule::LatencyP95,
        Rule::Metric,
        Rule::Cpu,
    ];
    for mask in 0u32..1 << all.len() {
        let rules: Vec<Rule> = (0..all.len())
            .filter(|i| mask & (1 << i) != 0)
            .map(|i| all[i])
            .collect();
        let (want, chosen) = expected(&rules);
        let reversed: Vec<Rule> = rules.iter().rev().copied().collect();
        let twice: Vec<Rule> = reversed.iter().chain(&rules).copied().collect();
        for order in [&rules, &reversed, &twice] {
            let findings: Vec<Finding> = order.iter().map(|r| finding(*r)).collect();
            let d = decide(&state(), &findings, 0);
            assert_eq!(d.action, want, "{order:?}");
            if let Some(rule) = chosen {
                assert_eq!(
                    d.reasons[1],
                    format!("{} fired", rule.as_str()),
                    "{order:?}"
                );
            }
        }
    }
}

proptest! {
    /// Driving the watcher's loop with any sequence of findings, the state only moves
    /// forward: once an investigation opens it stays open until it rolls back at its
    /// deadline, once a rollback is decided nothing else is decided for that release (no
    /// flapping), and a finding is never ignored while nothing else is going on.
    #[test]
    fn never_flaps(steps in proptest::collection::vec(tick(), 1..60)) {
        let mut s = state();
        s.investigate = Duration::from_secs(10);
        let mut rolled_back = false;
        for (i, rules) in steps.iter().enumerate() {
            let now = i as i64 * 1000;
            let open = s.investigating.clone();
            let findings: Vec<Finding> = rules.iter().map(|r| finding(*r)).collect();
            let d = decide(&s, &findings, now);
            match d.action {
                Action::Rollback { kind, .. } => {
                    prop_assert!(!rolled_back, "a second rollback for the same release");
                    // Past an open investigation's deadline it is the standard rollback,
                    // unless a more urgent branch fired at the same time.
                    if let Some(inv) = &open {
                        let urgent = rules.iter().any(|r| *r != Rule::Cpu);
                        if now >= inv.deadline_ms && !urgent {
                            prop_assert_eq!(kind, RollbackKind::Standard, "{:?}", d);
                        }
                    }
                    rolled_back = true;
                    // The watcher acts; the release is no longer the one watched.
                    s.acting = true;
                }
                Action::Investigate { release_id, deadline_ms } => {
                    prop_assert!(open.is_none(), "a second investigation opened: {:?}", d);
                    prop_assert_eq!(deadline_ms, now + 10_000);
                    s.investigating = Some(Investigation { release_id, since_ms: now, deadline_ms, acked: false });
                }
                Action::None => {
                    if rolled_back {
                        prop_assert_eq!(&d.reasons[0], "an operation is under way");
                    } else if let Some(inv) = &open {
                        // An open, unacknowledged investigation waits for its deadline and
                        // no longer: a None at or past it means it never rolls back.
                        prop_assert!(
                            now < inv.deadline_ms,
                            "still waiting at {} ms, deadline {} ms: {:?}",
                            now,
                            inv.deadline_ms,
                            d
                        );
                        prop_assert!(
                            d.reasons[0].starts_with("investigating release #2"),
                            "{:?}",
                            d
                        );
                    } else {
                        prop_assert!(
                            rules.is_empty(),
                            "{:?} fired and nothing was decided: {:?}",
                            rules,
                            d
                        );
                    }
                }
                other => prop_assert!(false, "unexpected {:?}", other),
            }
        }
    }
}
