//! The Markdown report: its sections in order (the timeline and the impact table have
//! files of their own).

use std::fmt::Write as _;

use super::format::{count, duration, rollback_words, rule_words, symptom};
use super::impact::impact;
use super::timeline::timeline;
use super::{Facts, ReportInput};
use crate::clock::format_utc;

/// The Markdown report. `chart_file`, when given, is embedded as the chart's image
/// link (a path relative to the Markdown file).
pub fn markdown(input: &ReportInput<'_>, chart_file: Option<&str>) -> String {
    let facts = Facts::new(input);
    let mut out = String::new();
    title(&mut out, &facts);
    summary(&mut out, &facts);
    timeline(&mut out, &facts);
    impact(&mut out, &facts, chart_file);
    decision(&mut out, &facts);
    write_ups(&mut out, &facts);
    follow_ups(&mut out, &facts);
    out.push_str(
        "---\n\n_Drafted by ripcord from its ledger. Every number is as recorded; \
         \"unknown\" means the ledger holds no value for it._\n",
    );
    out
}

fn title(out: &mut String, f: &Facts<'_>) {
    let _ = writeln!(
        out,
        "# Incident #{}: {} — {} on {}\n",
        f.inc.id,
        f.inc.service,
        rule_words(&f.inc.rule),
        f.bad
    );
}

fn summary(out: &mut String, f: &Facts<'_>) {
    let inc = f.inc;
    let mut s = String::new();
    // Name the release as precisely as the input allows, without repeating an id as a
    // version.
    let known_version = inc.release_id.and_then(|id| f.version_of(Some(id)));
    let subject = match (known_version, inc.release_id) {
        (Some(v), Some(id)) => format!("Release **{v}** of **{}** (release #{id})", inc.service),
        (_, Some(id)) => format!("Release #{id} of **{}**", inc.service),
        (_, None) => format!("A release of **{}**", inc.service),
    };
    match f.first_bad_ms {
        Some(ms) => {
            let _ = write!(
                s,
                "{subject} went bad: the guard saw its first bad request at {}.",
                format_utc(ms)
            );
        }
        None => {
            let _ = write!(
                s,
                "{subject} went bad; its first bad request was not recorded, and the incident \
                 opened at {}.",
                format_utc(inc.opened_at_ms)
            );
        }
    }
    let _ = write!(
        s,
        " The `{}` rule ({}) fired: {}.",
        inc.rule,
        rule_words(&inc.rule),
        inc.summary.trim_end_matches('.')
    );
    s.push(' ');
    s.push_str(&action_sentence(f));
    if f.bad_marked_bad {
        let _ = write!(s, " {} is now marked **bad** in the ledger.", f.bad);
    }
    s.push(' ');
    s.push_str(&outcome_sentence(f));
    match f.errors_seen_ms() {
        Some(ms) if f.first_bad_ms.is_some() => {
            let _ = write!(
                s,
                " Users saw {} for **{}** (first bad request → traffic switched).",
                symptom(&inc.rule),
                duration(ms)
            );
        }
        // Without a first bad request the guard measures from detection, which is only
        // a lower bound on what users saw.
        Some(ms) => {
            let _ = write!(
                s,
                " Users saw {} for at least **{}** (detection → traffic switched).",
                symptom(&inc.rule),
                duration(ms)
            );
        }
        None => {
            let _ = write!(s, " How long users saw {} is unknown.", symptom(&inc.rule));
        }
    }
    if let Some(e) = f.exposure() {
        let _ = write!(
            s,
            " From {} to the {}, **{} of {}** requests failed.",
            f.exposure_start_words(),
            f.exposure_end_words(e),
            count(e.errors),
            count(e.requests)
        );
    }
    let _ = writeln!(out, "## Summary\n\n{s}\n");
}

fn action_sentence(f: &Facts<'_>) -> String {
    let inc = f.inc;
    let target = f.target.as_deref();
    let Some(action) = &f.action else {
        return "No decision was recorded.".to_string();
    };
    match action.name.as_str() {
        "rollback" => {
            let what = rollback_words(action.kind.as_deref());
            let to = target.map_or_else(String::new, |t| format!(" to **{t}**"));
            if inc.status == "failed" {
                format!("ripcord decided on {what}{to}, but the rollback failed.")
            } else if inc.switched_at_ms.is_some() {
                let to = target.map_or_else(
                    || " to the previous good release".to_string(),
                    |t| format!(" to **{t}**"),
                );
                format!("ripcord decided on {what} and rolled back{to}.")
            } else {
                format!("ripcord decided on {what}{to}; no traffic switch is recorded.")
            }
        }
        "investigate" => {
            let by = action.deadline_ms.map_or_else(
                || "after a deadline".to_string(),
                |ms| format!("at {}", format_utc(ms)),
            );
            let mut s = format!(
                "ripcord opened an investigation: it would roll back {by} unless a person ran \
                 `ripcord ack`."
            );
            if inc.switched_at_ms.is_some() {
                match target {
                    Some(t) => {
                        let _ = write!(s, " It rolled back to **{t}**.");
                    }
                    None => s.push_str(" It rolled back."),
                }
            }
            s
        }
        "freeze" => format!(
            "ripcord froze **{}**: no deploy or rollback, automatic or manual, until a person \
             runs `ripcord unfreeze`.",
            inc.service
        ),
        "escalate" => {
            "ripcord found no good release to roll back to and escalated to a person.".to_string()
        }
        "none" => "ripcord took no automatic action.".to_string(),
        other => format!("ripcord decided `{other}`."),
    }
}

fn outcome_sentence(f: &Facts<'_>) -> String {
    let inc = f.inc;
    match inc.status.as_str() {
        "resolved" => {
            let back_on = f
                .target
                .as_deref()
                .map_or_else(String::new, |t| format!(" traffic is back on **{t}** and"));
            match inc.verified_at_ms {
                Some(ms) => format!(
                    "Outcome: **resolved**:{back_on} verification passed at {}.",
                    format_utc(ms)
                ),
                None => "Outcome: **resolved**.".to_string(),
            }
        }
        "failed" => "Outcome: **failed**: the rollback did not complete, so ripcord froze the \
                     service and escalated to a person."
            .to_string(),
        // After a freeze decision the sentence before already says what frozen means.
        "frozen" if f.action.as_ref().is_some_and(|a| a.name == "freeze") => {
            "Outcome: **frozen**.".to_string()
        }
        "frozen" => "Outcome: **frozen**: deploys and rollbacks stay blocked until a person runs \
                     `ripcord unfreeze`."
            .to_string(),
        "open" => "Outcome: **open**: the incident was still open when this report was drafted."
            .to_string(),
        other => format!("Outcome: **{other}**."),
    }
}

fn decision(out: &mut String, f: &Facts<'_>) {
    let _ = writeln!(out, "## Decision\n");
    let Some(action) = &f.action else {
        let _ = writeln!(out, "No decision was recorded.\n");
        return;
    };
    let what = match action.name.as_str() {
        "rollback" => {
            let words = rollback_words(action.kind.as_deref());
            // "an immediate rollback (...)" reads as a noun phrase; the action line wants
            // it without the article.
            words
                .strip_prefix("an ")
                .or_else(|| words.strip_prefix("a "))
                .unwrap_or(words)
                .to_string()
        }
        "investigate" => match action.deadline_ms {
            Some(ms) => format!(
                "investigate, then roll back at {} unless acknowledged",
                format_utc(ms)
            ),
            None => "investigate".to_string(),
        },
        "freeze" => "freeze the service".to_string(),
        "escalate" => "escalate to a person (nothing good to roll back to)".to_string(),
        "none" => "no action".to_string(),
        other => other.to_string(),
    };
    let _ = writeln!(out, "Action: **{what}**.\n");
    let reasons = f.reasons();
    if reasons.is_empty() {
        let _ = writeln!(out, "No reasons were recorded.\n");
        return;
    }
    let _ = writeln!(out, "Reasons:\n");
    for r in reasons {
        let _ = writeln!(out, "- {r}");
    }
    out.push('\n');
}

fn write_ups(out: &mut String, f: &Facts<'_>) {
    let due = format_utc(f.due_ms());
    let _ = writeln!(
        out,
        "## Root cause\n\n\
         _To be written by a person; due {due} (24 h after the incident opened)._\n\n\
         What in {bad} made it fail, and why that was not caught before it reached users:\n\n\
         - _(to be filled in)_\n",
        bad = f.bad
    );
    let _ = writeln!(
        out,
        "## Prevention\n\n\
         _To be written by a person; due {due} (24 h after the incident opened)._\n\n\
         What changes (to code, tests, checks or process) keep this from happening again:\n\n\
         - _(to be filled in)_\n"
    );
}

fn follow_ups(out: &mut String, f: &Facts<'_>) {
    let rule = &f.inc.rule;
    let words = rule_words(rule);
    let _ = writeln!(out, "## Follow-ups\n");
    let _ = writeln!(
        out,
        "- [ ] Fix forward: ship a fixed release; do not redeploy {} without \
         `--force --reason TEXT`.",
        f.bad
    );
    let _ = writeln!(
        out,
        "- [ ] Add tests that would have caught this ({words}) before release."
    );
    let _ = writeln!(
        out,
        "- [ ] Add monitoring for it, so the next occurrence is seen even before the `{rule}` \
         rule fires."
    );
    let _ = writeln!(
        out,
        "- [ ] Update the runbook (`ripcord runbook`) with what this incident taught.\n"
    );
}
