//! The rollback guard's view of migrations: which migrations were applied between an
//! older release's schema head and today's, and whether any of them is a `contract` (the
//! old code cannot run on the schema it leaves). Pure: a checked report in, a verdict out.

use super::layout::{run_order, strip_extension, version, version_parts};
use super::{FileReport, Kind, Phase, Report};

/// What stands between today's schema and the release a rollback goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Between<'a> {
    /// Applied after the target's head, up to today's head, newest first.
    pub applied: Vec<&'a FileReport>,
}

impl Between<'_> {
    /// The contract migrations among them: a rollback over these breaks the old code.
    pub fn contracts(&self) -> Vec<&FileReport> {
        self.applied
            .iter()
            .copied()
            .filter(|f| f.phase == Phase::Contract)
            .collect()
    }
}

/// A migration's identity as a schema head: the Alembic revision, else the file's name
/// without directory and extensions (`003_add.up.sql` → `003_add`). [`is_head`] also
/// takes the version alone (`003`).
pub fn head_of(f: &FileReport) -> String {
    if let Some(r) = &f.revision {
        return r.clone();
    }
    let name = f.path.rsplit('/').next().unwrap_or(&f.path);
    // diesel keeps each migration in a directory: `2024-01-01-000000_x/up.sql`.
    let name = if name == "up.sql" {
        f.path.rsplit('/').nth(1).unwrap_or(name)
    } else {
        name
    };
    // Flyway versions hold dots (`V1.1__x.sql`), so only known extensions come off.
    strip_extension(name).to_string()
}

/// Whether `head`, as a runner or its history table prints it, names `f`: its
/// [`head_of`], or for the ordered layouts its version alone (`migrate version`, Flyway
/// and diesel print `10`, `1.1` or `20240101000000`, not the file's name).
pub fn is_head(f: &FileReport, head: &str) -> bool {
    if head_of(f) == head {
        return true;
    }
    // A Django migration is `APP.NAME`; `showmigrations` and most scripts print the name.
    if f.kind == Kind::Django {
        return f
            .revision
            .as_deref()
            .and_then(|r| r.split_once('.'))
            .is_some_and(|(_, name)| name == head);
    }
    if f.revision.is_some() {
        return false;
    }
    match (version(&head_of(f)), version_parts(head)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// The migrations applied after `target_head` up to `current_head`. Alembic follows
/// `down_revision` links (merges included); other layouts use their file order.
pub fn between<'a>(
    report: &'a Report,
    current_head: &str,
    target_head: &str,
) -> Result<Between<'a>, String> {
    if current_head == target_head {
        return Ok(Between {
            applied: Vec::new(),
        });
    }
    let find = |head: &str| report.files.iter().find(|f| is_head(f, head));
    let Some(current) = find(current_head) else {
        return Err(format!(
            "today's schema head `{current_head}` is not among the migrations checked"
        ));
    };
    if current.revision.is_some() {
        // Walk back from today's head to the target along down_revision links.
        let mut applied = Vec::new();
        let mut frontier = vec![current];
        let mut seen = std::collections::BTreeSet::new();
        let mut reached = false;
        while let Some(f) = frontier.pop() {
            let head = head_of(f);
            if is_head(f, target_head) {
                reached = true;
                continue;
            }
            if !seen.insert(head) {
                continue;
            }
            applied.push(f);
            for parent in f.down_revision.iter().flatten() {
                match find(parent) {
                    Some(p) => frontier.push(p),
                    None if parent == target_head
                        || (f.kind == Kind::Django
                            && parent
                                .split_once('.')
                                .is_some_and(|(_, n)| n == target_head)) =>
                    {
                        reached = true
                    }
                    None => {}
                }
            }
        }
        if !reached {
            return Err(format!(
                "`{target_head}` is not an ancestor of today's head `{current_head}`: the chain \
                 of down_revision links does not reach it"
            ));
        }
        return Ok(Between { applied });
    }
    // Ordered layouts: everything after the target, up to today's head, in the order
    // the planner runs them (versions compared as numbers: `9_x` before `10_x`).
    let mut files: Vec<&FileReport> = report.files.iter().collect();
    files.sort_by(|a, b| run_order(&a.path, &b.path));
    let pos = |head: &str| files.iter().position(|f| is_head(f, head));
    let (Some(cur), Some(tgt)) = (pos(current_head), pos(target_head)) else {
        return Err(format!(
            "the target's schema head `{target_head}` is not among the migrations checked"
        ));
    };
    if tgt > cur {
        return Err(format!(
            "the target's schema head `{target_head}` is newer than today's `{current_head}`"
        ));
    }
    let mut applied: Vec<&FileReport> = files[tgt + 1..=cur].to_vec();
    applied.reverse();
    Ok(Between { applied })
}

#[cfg(test)]
mod tests {
    use super::super::{Settings, SourceFile, check, plan};
    use super::*;

    fn alembic(rev: &str, down: &str, up: &str) -> SourceFile {
        SourceFile {
            path: format!("versions/{rev}.py"),
            text: format!(
                "revision = \"{rev}\"\ndown_revision = {down}\nfrom alembic import op\nimport sqlalchemy as sa\n\ndef upgrade():\n    {up}\n\ndef downgrade():\n    pass\n"
            ),
        }
    }

    #[test]
    fn alembic_chains_and_contracts() {
        let files = vec![
            alembic(
                "001",
                "None",
                "op.add_column('users', sa.Column('email_new', sa.String(), nullable=True))",
            ),
            alembic(
                "002",
                "\"001\"",
                "op.execute(\"UPDATE users SET email_new = email\")",
            ),
            alembic("003", "\"002\"", "op.drop_column('users', 'email')"),
        ];
        let report = check(&plan(files), &Settings::default());
        let b = between(&report, "003", "001").unwrap();
        let heads: Vec<String> = b.applied.iter().map(|f| head_of(f)).collect();
        assert_eq!(heads, ["003", "002"]);
        assert_eq!(b.contracts().len(), 1);
        assert_eq!(head_of(b.contracts()[0]), "003");
        assert!(
            between(&report, "002", "001")
                .unwrap()
                .contracts()
                .is_empty()
        );
        assert!(between(&report, "003", "003").unwrap().applied.is_empty());
        assert!(between(&report, "003", "999").is_err());
        assert!(between(&report, "999", "001").is_err());
    }

    #[test]
    fn django_graphs_and_contracts() {
        let dj = |name: &str, deps: &str, ops: &str| SourceFile {
            path: format!("shop/orders/migrations/{name}.py"),
            text: format!(
                "from django.db import migrations, models\n\n\nclass Migration(migrations.Migration):\n    dependencies = [{deps}]\n    operations = [\n        {ops},\n    ]\n"
            ),
        };
        // Given out of order: the dependencies decide the order, not the file names.
        let files = vec![
            dj(
                "0003_drop_note",
                "(\"orders\", \"0002_backfill\"), (\"auth\", \"0012_alter_user\")",
                "migrations.RemoveField(model_name=\"order\", name=\"note\")",
            ),
            dj(
                "0001_initial",
                "",
                "migrations.AddField(model_name=\"order\", name=\"note2\", field=models.TextField(null=True))",
            ),
            dj(
                "0002_backfill",
                "(\"orders\", \"0001_initial\")",
                "migrations.RunPython(copy_notes, migrations.RunPython.noop)",
            ),
        ];
        let report = check(&plan(files), &Settings::default());
        let order: Vec<String> = report.files.iter().map(head_of).collect();
        assert_eq!(
            order,
            [
                "orders.0001_initial",
                "orders.0002_backfill",
                "orders.0003_drop_note"
            ]
        );
        // As the django_migrations table reads (APP.NAME) or as a name alone.
        for (current, target) in [
            ("orders.0003_drop_note", "orders.0001_initial"),
            ("0003_drop_note", "0001_initial"),
        ] {
            let b = between(&report, current, target).unwrap();
            let heads: Vec<String> = b.applied.iter().map(|f| head_of(f)).collect();
            assert_eq!(heads, ["orders.0003_drop_note", "orders.0002_backfill"]);
            assert_eq!(b.contracts().len(), 1, "{current} -> {target}");
        }
        // A rollback that stays after the contract crosses none.
        assert!(
            between(&report, "orders.0002_backfill", "orders.0001_initial")
                .unwrap()
                .contracts()
                .is_empty()
        );
        assert!(between(&report, "0003_drop_note", "0009_missing").is_err());
    }

    #[test]
    fn ordered_layouts_use_file_order() {
        let sql = |path: &str, text: &str| SourceFile {
            path: path.into(),
            text: text.into(),
        };
        let files = vec![
            sql("m/001_add.up.sql", "ALTER TABLE t ADD COLUMN c int;"),
            sql("m/001_add.down.sql", "ALTER TABLE t DROP COLUMN c;"),
            sql("m/002_drop.up.sql", "ALTER TABLE t DROP COLUMN old;"),
            sql("m/002_drop.down.sql", "ALTER TABLE t ADD COLUMN old int;"),
        ];
        let report = check(&plan(files), &Settings::default());
        let b = between(&report, "002_drop", "001_add").unwrap();
        assert_eq!(b.applied.len(), 1);
        assert_eq!(b.contracts().len(), 1);
        assert!(between(&report, "001_add", "002_drop").is_err());
    }

    fn sql(path: &str, text: &str) -> SourceFile {
        SourceFile {
            path: path.into(),
            text: text.into(),
        }
    }

    const ADD: &str = "SET lock_timeout = '2s';\nALTER TABLE t ADD COLUMN IF NOT EXISTS c int;";
    const DROP: &str = "SET lock_timeout = '2s';\nALTER TABLE t DROP COLUMN old;";

    #[test]
    fn unpadded_versions_are_ordered_as_numbers() {
        // Regression: sorted as strings, `10_x` came before `8_x` and `9_x`, so the
        // contract in 9 went unseen when rolling back from 10 to 8.
        let files = vec![
            sql("m/8_a.up.sql", ADD),
            sql("m/8_a.down.sql", "SELECT 1;"),
            sql("m/9_drop.up.sql", DROP),
            sql("m/9_drop.down.sql", "SELECT 1;"),
            sql("m/10_b.up.sql", ADD),
            sql("m/10_b.down.sql", "SELECT 1;"),
        ];
        let report = check(&plan(files), &Settings::default());
        let b = between(&report, "10_b", "8_a").unwrap();
        let heads: Vec<String> = b.applied.iter().map(|f| head_of(f)).collect();
        assert_eq!(heads, ["10_b", "9_drop"]);
        assert_eq!(b.contracts().len(), 1);
        assert_eq!(head_of(b.contracts()[0]), "9_drop");
        // Flyway: V2 before V10.
        let files = vec![
            sql("m/V2__a.sql", ADD),
            sql("m/V9__drop.sql", DROP),
            sql("m/V10__b.sql", ADD),
        ];
        let report = check(&plan(files), &Settings::default());
        let b = between(&report, "V10__b", "V2__a").unwrap();
        assert_eq!(b.contracts().len(), 1);
    }

    #[test]
    fn a_head_printed_as_the_version_alone_matches() {
        // `migrate version`, Flyway and diesel print the version, not the file's name.
        let files = vec![
            sql("m/0008_a.up.sql", ADD),
            sql("m/0009_drop.up.sql", DROP),
            sql("m/0010_b.up.sql", ADD),
        ];
        let report = check(&plan(files), &Settings::default());
        let b = between(&report, "10", "8").unwrap();
        assert_eq!(b.applied.len(), 2);
        assert_eq!(b.contracts().len(), 1);
        assert_eq!(between(&report, "0010_b", "8").unwrap().applied.len(), 2);
        assert!(between(&report, "10", "0010_b").unwrap().applied.is_empty());
        assert!(between(&report, "11", "8").is_err());

        let files = vec![
            sql("m/V1__a.sql", ADD),
            sql("m/V1.1__drop.sql", DROP),
            sql("m/V2__b.sql", ADD),
        ];
        let report = check(&plan(files), &Settings::default());
        let b = between(&report, "2", "1").unwrap();
        assert_eq!(b.applied.len(), 2);
        assert_eq!(b.contracts().len(), 1);
        assert!(
            between(&report, "2.0", "1.1")
                .unwrap()
                .contracts()
                .is_empty()
        );

        let files = vec![
            sql("migrations/2024-01-01-000000_a/up.sql", ADD),
            sql("migrations/2024-02-01-000000_drop/up.sql", DROP),
        ];
        let report = check(&plan(files), &Settings::default());
        let b = between(&report, "20240201000000", "20240101000000").unwrap();
        assert_eq!(b.contracts().len(), 1);
        // A revision id is matched only as it is.
        let report = check(
            &plan(vec![
                alembic("001", "None", "pass"),
                alembic("002", "\"001\"", "pass"),
            ]),
            &Settings::default(),
        );
        assert!(between(&report, "2", "001").is_err());
    }
}
