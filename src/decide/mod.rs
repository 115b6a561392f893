//! The runbook's decision tree, as a pure function: `(state, findings, now) -> Decision`.
//!
//! health-check failure → automatic rollback; user-facing errors → immediate rollback;
//! can it wait? no → rollback; data corruption → stop everything (freeze); otherwise
//! (CPU) → investigate, then a standard rollback unless a person acknowledges.
//!
//! No IO, no tokio, no clock: time comes in as `now_ms`, so every decision is
//! reproducible in a test. Every decision carries its reasons.

use std::time::Duration;

use serde::Serialize;

use crate::config::duration::secs_text;
use crate::guard::triggers::{Finding, Rule};

/// What the decision needs to know about the service.
#[derive(Debug, Clone, Default)]
pub struct State {
    /// Frozen, with the reason: no automatic (or manual) deploy or rollback.
    pub frozen: Option<String>,
    pub investigating: Option<Investigation>,
    /// A deploy or rollback is running: nothing new starts.
    pub acting: bool,
    /// Whether a good release exists to roll back to.
    pub has_rollback_target: bool,
    /// How long an investigation waits for `ripcord ack`.
    pub investigate: Duration,
    /// The CPU rule investigates (true) or rolls back at once (false).
    pub cpu_investigates: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Investigation {
    pub release_id: i64,
    pub since_ms: i64,
    pub deadline_ms: i64,
    pub acked: bool,
}

/// How urgent a rollback is, by the branch of the tree that chose it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RollbackKind {
    /// Health checks failed.
    Automatic,
    /// Users see errors.
    Immediate,
    /// It cannot wait (OOM, crash, latency).
    CannotWait,
    /// After an investigation nobody acknowledged.
    Standard,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "action")]
pub enum Action {
    None,
    Rollback {
        kind: RollbackKind,
        release_id: i64,
    },
    Investigate {
        release_id: i64,
        deadline_ms: i64,
    },
    Freeze,
    /// A rollback is called for but there is nothing good to go back to: tell people.
    Escalate {
        release_id: i64,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    pub action: Action,
    /// Which branch, which rule, which values, which window: one sentence each.
    pub reasons: Vec<String>,
}

impl Decision {
    fn none(reason: impl Into<String>) -> Self {
        Decision {
            action: Action::None,
            reasons: vec![reason.into()],
        }
    }
}

pub fn decide(state: &State, findings: &[Finding], now_ms: i64) -> Decision {
    let with = |rule: Rule| findings.iter().find(|f| f.rule == rule);
    if let Some(f) = with(Rule::DataCorruption) {
        if let Some(why) = &state.frozen {
            return Decision::none(format!("already frozen ({why})"));
        }
        return Decision {
            action: Action::Freeze,
            reasons: vec![
                "data corruption → stop everything: freeze deploys and rollbacks".to_string(),
                f.summary.clone(),
            ],
        };
    }
    if let Some(why) = &state.frozen {
        return Decision::none(format!("frozen ({why}): no automatic action"));
    }
    if state.acting {
        return Decision::none("an operation is under way");
    }
    let rollback = |kind: RollbackKind, branch: &str, f: &Finding| {
        if !state.has_rollback_target {
            return Decision {
                action: Action::Escalate {
                    release_id: f.release_id,
                },
                reasons: vec![
                    format!("{branch}, but there is no good release to roll back to: escalate"),
                    f.summary.clone(),
                ],
            };
        }
        Decision {
            action: Action::Rollback {
                kind,
                release_id: f.release_id,
            },
            reasons: vec![branch.to_string(), f.summary.clone()],
        }
    };
    if let Some(f) = with(Rule::Health) {
        return rollback(
            RollbackKind::Automatic,
            "health-check failure → automatic rollback",
            f,
        );
    }
    if let Some(f) = with(Rule::ErrorRate) {
        return rollback(
            RollbackKind::Immediate,
            "user-facing errors → immediate rollback",
            f,
        );
    }
    for rule in [Rule::Crash, Rule::OomKill, Rule::LatencyP95, Rule::Metric] {
        if let Some(f) = with(rule) {
            let branch = format!("{} → cannot wait → rollback", rule.as_str());
            return rollback(RollbackKind::CannotWait, &branch, f);
        }
    }
    // An investigation, once opened, runs to an acknowledgement or its deadline: it
    // does not close because the CPU dipped for a moment (no flapping).
    if let Some(inv) = &state.investigating {
        if inv.acked {
            return Decision::none(format!(
                "investigation of release #{} acknowledged by a person: no automatic rollback",
                inv.release_id
            ));
        }
        if now_ms >= inv.deadline_ms {
            let f = Finding {
                rule: Rule::Cpu,
                release_id: inv.release_id,
                // The trigger fired when the investigation opened: that is what the
                // incident's times count from, not the deadline.
                at_ms: inv.since_ms,
                summary: format!(
                    "nobody acknowledged within {} s (`ripcord ack`)",
                    (inv.deadline_ms - inv.since_ms) / 1000
                ),
                values: serde_json::json!({ "since_ms": inv.since_ms, "deadline_ms": inv.deadline_ms }),
            };
            return rollback(
                RollbackKind::Standard,
                "investigation not acknowledged → standard rollback",
                &f,
            );
        }
        return Decision::none(format!(
            "investigating release #{}: rollback in {} s unless acknowledged",
            inv.release_id,
            (inv.deadline_ms - now_ms + 999) / 1000
        ));
    }
    if let Some(f) = with(Rule::Cpu) {
        if !state.cpu_investigates {
            return rollback(RollbackKind::Standard, "cpu → rollback (configured)", f);
        }
        return Decision {
            action: Action::Investigate {
                release_id: f.release_id,
                deadline_ms: now_ms + state.investigate.as_millis() as i64,
            },
            reasons: vec![
                format!(
                    "cpu → investigate: notify, roll back in {} s unless a person runs `ripcord ack`",
                    secs_text(state.investigate)
                ),
                f.summary.clone(),
            ],
        };
    }
    Decision::none("no trigger fired")
}

#[cfg(test)]
mod tests;
