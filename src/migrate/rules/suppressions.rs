//! Settings and suppressions, applied to a direction's findings last: rules turned off
//! or given another severity, `ripcord:allow` comments (which need a reason), and the
//! findings about the suppressions themselves.

use super::Raw;
use super::catalog::{find_rule, meta_finding};
use crate::migrate::model::{Lowered, VOUCHED};
use crate::migrate::{Finding, Settings, Suppressed};

/// Applies settings and suppressions; adds findings about the suppressions themselves.
pub(super) fn settle(
    raw: Vec<Raw>,
    l: &Lowered,
    settings: &Settings,
    path: Option<&str>,
) -> (Vec<Finding>, Vec<Suppressed>) {
    let mut findings = Vec::new();
    let mut suppressed = Vec::new();
    let mut meta = Vec::new();
    for allow in &l.allows {
        if allow.reason.is_none() {
            meta.push((
                "suppression-without-reason",
                allow.line,
                format!(
                    "ripcord:allow {} gives no reason: it is ignored until it says `because ...`",
                    allow.rules.join(", ")
                ),
            ));
        }
        for id in &allow.rules {
            if id != VOUCHED && find_rule(id).is_none() {
                meta.push((
                    "suppression-unknown-rule",
                    allow.line,
                    format!("ripcord:allow names unknown rule `{id}`"),
                ));
            }
        }
        if allow.rules.is_empty() {
            meta.push((
                "suppression-unknown-rule",
                allow.line,
                "ripcord:allow names no rule".to_string(),
            ));
        }
    }
    let all = raw
        .into_iter()
        .chain(meta.into_iter().map(|(id, line, message)| Raw {
            finding: meta_finding(id, line, message),
            anchor: None,
        }));
    for Raw {
        mut finding,
        anchor,
    } in all
    {
        if settings.disabled.contains(finding.rule) {
            continue;
        }
        if let Some(s) = settings.severity.get(finding.rule) {
            finding.severity = *s;
        }
        finding.path = path.map(str::to_string);
        let near = |l: usize| {
            l == finding.line
                || l + 1 == finding.line
                || anchor.is_some_and(|a| l == a || l + 1 == a)
        };
        let allow = l.allows.iter().find(|a| {
            // VOUCHED (a block the author vouched for, such as strong_migrations'
            // `safety_assured`) covers its own line only.
            a.reason.is_some()
                && ((near(a.line) && a.rules.iter().any(|r| r == finding.rule))
                    || (a.line == finding.line && a.rules.iter().any(|r| r == VOUCHED)))
        });
        let is_meta = finding.rule.starts_with("suppression-");
        match allow {
            Some(a) if !is_meta => suppressed.push(Suppressed {
                finding,
                reason: a.reason.clone().unwrap_or_default(),
            }),
            _ => findings.push(finding),
        }
    }
    findings.sort_by(|a, b| a.line.cmp(&b.line).then(a.rule.cmp(b.rule)));
    suppressed.sort_by_key(|a| a.finding.line);
    (findings, suppressed)
}
