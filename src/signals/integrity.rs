//! The configured data-integrity check, run on an interval. A failure is reported as an
//! observation; the decision tree turns it into a freeze.

use tokio::sync::mpsc;

use super::Observation;
use crate::clock::now_ms;
use crate::config::IntegrityCheck;

/// Runs the check until the channel closes.
pub async fn run(check: IntegrityCheck, tx: mpsc::Sender<Observation>) {
    let mut tick = tokio::time::interval(check.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let timeout = check.check.timeout;
        let report = crate::verify::run(std::slice::from_ref(&check.check), timeout, "").await;
        let result = report.checks.into_iter().next();
        let (ok, detail) = match result {
            Some(c) => (c.ok, format!("{}: {}", c.name, c.detail)),
            None => (false, "the integrity check did not run".to_string()),
        };
        let obs = Observation::Integrity {
            ok,
            detail,
            at_ms: now_ms(),
        };
        if tx.send(obs).await.is_err() {
            return;
        }
    }
}
