//! A migration's files turned into the operations the engine walks, both directions.

use super::transactions::sql_runner;
use crate::migrate::model::{Action, Lowered, Op};
use crate::migrate::{Kind, Migration, Script, Settings, alembic, django, rails, sql};

/// Lowers both directions of a migration.
pub(super) fn lower(
    m: &Migration,
    settings: &Settings,
) -> (Lowered, Lowered, Option<String>, Option<Vec<String>>) {
    match m.kind {
        Kind::Alembic => {
            let text = m.up.as_ref().map(|s| s.text.as_str()).unwrap_or("");
            let mut f = alembic::lower(text);
            if let Some(a) = not_utf8(text, 1) {
                f.up.actions.push(a);
                f.up.empty = false;
            }
            (f.up, f.down, f.revision, f.down_revision)
        }
        Kind::Rails => {
            let text = m.up.as_ref().map(|s| s.text.as_str()).unwrap_or("");
            let mut f = rails::lower(text);
            if let Some(a) = not_utf8(text, 1) {
                f.up.actions.push(a);
                f.up.empty = false;
            }
            (f.up, f.down, None, None)
        }
        Kind::Django => {
            let text = m.up.as_ref().map(|s| s.text.as_str()).unwrap_or("");
            let mut f = django::lower(&m.path, text);
            if let Some(a) = not_utf8(text, 1) {
                f.up.actions.push(a);
                f.up.empty = false;
            }
            (f.up, f.down, f.revision, f.down_revision)
        }
        Kind::Sql => {
            let one = |s: &Script| {
                let script = sql::lower(&s.text, s.first_line);
                let runner = sql_runner(m, &script, settings.pg_version);
                let mut actions = script.actions;
                actions.extend(not_utf8(&s.text, s.first_line));
                if script.irreversible {
                    actions.push(Action::new(s.first_line, Op::Irreversible));
                }
                Lowered {
                    empty: actions.is_empty(),
                    actions,
                    allows: script.allows,
                    runner_tx: runner.tx,
                    runner_implicit: runner.implicit,
                    runner_hint: runner.hint,
                    runner_findings: runner.findings,
                    missing: false,
                    line: s.first_line,
                }
            };
            let up = match &m.up {
                Some(s) => one(s),
                None => {
                    let mut l = Lowered::default();
                    l.actions.push(Action::new(
                        1,
                        Op::Unknown {
                            rule: "unknown-statement",
                            why: "a down migration without its up migration".into(),
                        },
                    ));
                    l
                }
            };
            let down = match &m.down {
                Some(s) => one(s),
                None => Lowered {
                    missing: true,
                    line: 1,
                    ..Lowered::default()
                },
            };
            (up, down, None, None)
        }
    }
}

/// The first line holding bytes that were not UTF-8, which [`crate::migrate::discover`] reads as
/// U+FFFD: neither PostgreSQL (from a UTF-8 client) nor Python takes them, so the file
/// cannot run as it is, though the rest of it is still checked.
fn not_utf8(text: &str, first_line: usize) -> Option<Action> {
    let at = text.find('\u{FFFD}')?;
    Some(Action::new(
        first_line + text[..at].matches('\n').count(),
        Op::Unknown {
            rule: "parse-error",
            why: "this line holds bytes that are not valid UTF-8 (read as U+FFFD): PostgreSQL and Python refuse them; the rest of the file was checked as read".into(),
        },
    ))
}
