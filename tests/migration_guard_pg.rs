//! The migration guard end to end with a real PostgreSQL: each release's schema head is
//! read from a real `alembic_version` table (no head command), a rollback across a
//! contract migration is refused, a deploy that ships a contract with the expand it
//! needs is refused (`on_contract = "refuse"`) unless forced, a deploy whose
//! migrations have not run yet takes a database backup first, and what a rollback
//! crosses (forced or not, or could not judge) is recorded in the ledger's events.

mod common;
mod pg_fixture;

use common::{Project, assert_ok, serving, stderr};
use pg_fixture::{Postgres, start};

const E001: &str = r#"revision = "001"
down_revision = None
from alembic import op
import sqlalchemy as sa

def upgrade():
    op.add_column('users', sa.Column('status', sa.String(20), nullable=True))

def downgrade():
    op.drop_column('users', 'status')
"#;

const E002: &str = r#"revision = "002"
down_revision = "001"
from alembic import op
import sqlalchemy as sa

def upgrade():
    op.add_column('users', sa.Column('email_new', sa.String(200), nullable=True))

def downgrade():
    op.drop_column('users', 'email_new')
"#;

const C003: &str = r#"revision = "003"
down_revision = "002"
from alembic import op

def upgrade():
    op.drop_column('users', 'email')

def downgrade():
    pass
"#;

fn project(pg: &Postgres, db: &str, migrations_extra: &str, db_extra: &str) -> Project {
    let extra = format!("[service.web.migrations]\ndir = \"migrations\"\n{migrations_extra}");
    let tail = pg.service_table(db, db_extra);
    let p = Project::new(&extra, &tail);
    let versions = p.dir.path().join("migrations/versions");
    std::fs::create_dir_all(&versions).unwrap();
    for (name, text) in [
        ("001_status.py", E001),
        ("002_email_new.py", E002),
        ("003_drop_email.py", C003),
    ] {
        std::fs::write(versions.join(name), text).unwrap();
    }
    p
}

fn set_head(pg: &Postgres, db: &str, head: &str) {
    pg.sql(
        db,
        &format!("DELETE FROM alembic_version; INSERT INTO alembic_version VALUES ('{head}')"),
    );
}

fn make_db(pg: &Postgres, db: &str) {
    pg.sql("postgres", &format!("CREATE DATABASE {db}"));
    pg.sql(
        db,
        "CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY);
         CREATE TABLE users (id int PRIMARY KEY, email text);",
    );
}

#[test]
fn heads_come_from_the_alembic_version_table_and_guard_the_rollback() {
    let pg = start();
    make_db(&pg, "app");
    let mut p = project(&pg, "app", "", "backup_before_migrations = true");
    p.start_watcher();
    set_head(&pg, "app", "001");
    assert_ok(&p.deploy("v1", &[]), "deploy v1");
    // v2's migrations (002, 003) already ran: no backup can hold the schema before them.
    set_head(&pg, "app", "003");
    let out = p.deploy("v2", &[]);
    assert_ok(&out, "deploy v2");
    assert!(stderr(&out).contains("applied already"), "{}", stderr(&out));
    let releases = p.json(&["releases", "web"]);
    assert_eq!(releases[0]["migration_head"], "003", "{releases}");
    assert_eq!(releases[1]["migration_head"], "001", "{releases}");
    let out = p.run(&["rollback", "web"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("003_drop_email.py"),
        "{}",
        stderr(&out)
    );
    assert_eq!(serving(&p), "v2");
    // doctor knows it too, before anyone needs the rollback.
    let out = p.run(&["doctor", "web"]);
    assert_eq!(out.status.code(), Some(1), "{}", common::stdout(&out));
    assert!(
        common::stdout(&out).contains("✗ schema"),
        "{}",
        common::stdout(&out)
    );
}

#[test]
fn a_contract_shipped_with_its_expand_is_refused_and_a_backup_comes_first() {
    let pg = start();
    make_db(&pg, "shop");
    let mut p = project(
        &pg,
        "shop",
        "on_contract = \"refuse\"",
        "backup_before_migrations = true",
    );
    p.start_watcher();
    set_head(&pg, "shop", "001");
    assert_ok(&p.deploy("v1", &[]), "deploy v1");
    // v2 ships 002 (expand) and 003 (contract) together: the expand was never live.
    let out = p.deploy("v2", &[]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("003_drop_email.py") && err.contains("002_email_new.py"),
        "{err}"
    );
    assert!(err.contains("--force --reason"), "{err}");
    assert_eq!(serving(&p), "v1");
    assert!(
        p.json(&["db", "backups", "web"])
            .as_array()
            .unwrap()
            .is_empty(),
        "a refused deploy takes no backup"
    );
    // Forced, with a reason: the migrations have not run yet, so a backup comes first.
    let out = p.run(&[
        "deploy",
        "web",
        "v2",
        "--force",
        "--reason",
        "one-step migration accepted",
    ]);
    assert_ok(&out, "forced deploy v2");
    assert!(stderr(&out).contains("backup #1 taken"), "{}", stderr(&out));
    let backups = p.json(&["db", "backups", "web"]);
    assert_eq!(backups.as_array().unwrap().len(), 1, "{backups}");
    assert_eq!(backups[0]["verified_ok"], true);
    assert_eq!(serving(&p), "v2");
}

/// SQL built at run time: the checker cannot tell its phase.
const U004: &str = r#"revision = "004"
down_revision = "003"
from alembic import op

def upgrade():
    op.execute(build_sql())

def downgrade():
    pass
"#;

/// The events of `kind`, newest first.
fn events(p: &Project, kind: &str) -> Vec<String> {
    p.json(&["events", "web"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == kind)
        .map(|e| e["message"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn a_forced_rollback_records_what_it_crossed_and_an_unknown_phase_warns() {
    let pg = start();
    make_db(&pg, "crm");
    let mut p = project(&pg, "crm", "", "");
    std::fs::write(p.dir.path().join("migrations/versions/004_built.py"), U004).unwrap();
    p.start_watcher();
    set_head(&pg, "crm", "001");
    assert_ok(&p.deploy("v1", &[]), "deploy v1");
    set_head(&pg, "crm", "003");
    assert_ok(&p.deploy("v2", &[]), "deploy v2");
    set_head(&pg, "crm", "004");
    assert_ok(&p.deploy("v3", &[]), "deploy v3");

    // doctor says it cannot judge 004 (not blocking: the rollback is allowed).
    let out = p.run(&["doctor", "web"]);
    let text = common::stdout(&out);
    assert!(
        text.contains("schema") && text.contains("004_built.py could not be analysed"),
        "{text}"
    );

    // v3 -> v2 crosses only 004, whose phase is unknown: allowed, with a warning that
    // names it. Regression: it was allowed without a word.
    let out = p.run(&["rollback", "web", "--to", "v2"]);
    assert_ok(&out, "rollback to v2");
    let told = format!("{}{}", common::stdout(&out), common::stderr(&out));
    assert!(
        told.contains("004_built.py could not be analysed"),
        "the person is told: {told}"
    );
    assert_eq!(serving(&p), "v2");
    let warnings = events(&p, "migration_warning");
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("004_built.py could not be analysed")),
        "{warnings:?}"
    );
    let crossed = events(&p, "rollback_migrations");
    assert!(
        crossed.iter().any(|m| m.contains("004_built.py (unknown")),
        "{crossed:?}"
    );

    // v2 -> v1 crosses the contract 003: refused, then forced with a reason, and the
    // ledger says what was forced past. Regression: a forced rollback checked nothing.
    let out = p.run(&["rollback", "web", "--to", "v1"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(events(&p, "migration_forced").is_empty());
    let out = p.run(&[
        "rollback",
        "web",
        "--to",
        "v1",
        "--force",
        "--reason",
        "schema restored by hand",
    ]);
    assert_ok(&out, "forced rollback to v1");
    assert_eq!(serving(&p), "v1");
    let forced = events(&p, "migration_forced");
    assert_eq!(forced.len(), 1, "{forced:?}");
    assert!(
        forced[0].contains("schema restored by hand")
            && forced[0].contains("003_drop_email.py (contract")
            && forced[0].contains("002_email_new.py (expand"),
        "{forced:?}"
    );
}

/// A Django app's migrations: an expand, a backfill, then a contract.
const DJANGO: &[(&str, &str)] = &[
    (
        "0001_status",
        "from django.db import migrations, models\n\n\nclass Migration(migrations.Migration):\n    dependencies = []\n    operations = [\n        migrations.AddField(model_name=\"user\", name=\"status\", field=models.CharField(max_length=20, null=True)),\n    ]\n",
    ),
    (
        "0002_email_new",
        "from django.db import migrations, models\n\n\nclass Migration(migrations.Migration):\n    dependencies = [(\"accounts\", \"0001_status\")]\n    operations = [\n        migrations.AddField(model_name=\"user\", name=\"email_new\", field=models.TextField(null=True)),\n    ]\n",
    ),
    (
        "0003_drop_email",
        "from django.db import migrations\n\n\nclass Migration(migrations.Migration):\n    dependencies = [(\"accounts\", \"0002_email_new\")]\n    operations = [\n        migrations.RemoveField(model_name=\"user\", name=\"email\"),\n    ]\n",
    ),
];

/// Marks `names` (in order) as the applied migrations of app `accounts`.
fn set_django_applied(pg: &Postgres, db: &str, names: &[&str]) {
    let mut sql = String::from("DELETE FROM django_migrations;");
    for (i, n) in names.iter().enumerate() {
        sql.push_str(&format!(
            "INSERT INTO django_migrations (app, name, applied) VALUES ('accounts', '{n}', now() + interval '{i} seconds');"
        ));
    }
    pg.sql(db, &sql);
}

#[test]
fn a_django_head_comes_from_django_migrations_and_guards_the_rollback() {
    let pg = start();
    pg.sql("postgres", "CREATE DATABASE dj");
    pg.sql(
        "dj",
        "CREATE TABLE django_migrations (id serial PRIMARY KEY, app varchar(255) NOT NULL, name varchar(255) NOT NULL, applied timestamptz NOT NULL);
         CREATE TABLE accounts_user (id int PRIMARY KEY, email text);",
    );
    let extra = "[service.web.migrations]\ndir = \"shop\"\nhead_table = \"django_migrations\"\n"
        .to_string();
    let tail = pg.service_table("dj", "");
    let mut p = Project::new(&extra, &tail);
    let dir = p.dir.path().join("shop/accounts/migrations");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("__init__.py"), "").unwrap();
    for (name, text) in DJANGO {
        std::fs::write(dir.join(format!("{name}.py")), text).unwrap();
    }
    p.start_watcher();
    set_django_applied(&pg, "dj", &["0001_status"]);
    assert_ok(&p.deploy("v1", &[]), "deploy v1");
    set_django_applied(
        &pg,
        "dj",
        &["0001_status", "0002_email_new", "0003_drop_email"],
    );
    assert_ok(&p.deploy("v2", &[]), "deploy v2");
    let releases = p.json(&["releases", "web"]);
    assert_eq!(
        releases[0]["migration_head"], "accounts.0003_drop_email",
        "{releases}"
    );
    assert_eq!(
        releases[1]["migration_head"], "accounts.0001_status",
        "{releases}"
    );
    // Back to v1 crosses 0003, which drops a column v1 reads: refused.
    let out = p.run(&["rollback", "web"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("0003_drop_email.py"),
        "{}",
        stderr(&out)
    );
    assert_eq!(serving(&p), "v2");
}

#[test]
fn a_rails_head_comes_from_schema_migrations_and_guards_the_rollback() {
    let pg = start();
    pg.sql("postgres", "CREATE DATABASE rb");
    pg.sql(
        "rb",
        "CREATE TABLE schema_migrations (version varchar PRIMARY KEY);
         CREATE TABLE users (id int PRIMARY KEY, email text);",
    );
    let extra =
        "[service.web.migrations]\ndir = \"db/migrate\"\nhead_table = \"schema_migrations\"\n"
            .to_string();
    let tail = pg.service_table("rb", "");
    let mut p = Project::new(&extra, &tail);
    let dir = p.dir.path().join("db/migrate");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, body) in [
        (
            "20240101000000_add_status",
            "add_column :users, :status, :string",
        ),
        (
            "20240201000000_add_email_new",
            "add_column :users, :email_new, :text",
        ),
        (
            "20240301000000_drop_email",
            "remove_column :users, :email, :text",
        ),
    ] {
        std::fs::write(
            dir.join(format!("{name}.rb")),
            format!(
                "class M{} < ActiveRecord::Migration[7.1]\n  def change\n    {body}\n  end\nend\n",
                &name[..8]
            ),
        )
        .unwrap();
    }
    p.start_watcher();
    pg.sql(
        "rb",
        "INSERT INTO schema_migrations VALUES ('20240101000000')",
    );
    assert_ok(&p.deploy("v1", &[]), "deploy v1");
    pg.sql(
        "rb",
        "INSERT INTO schema_migrations VALUES ('20240201000000'), ('20240301000000')",
    );
    assert_ok(&p.deploy("v2", &[]), "deploy v2");
    let releases = p.json(&["releases", "web"]);
    assert_eq!(
        releases[0]["migration_head"], "20240301000000",
        "{releases}"
    );
    assert_eq!(
        releases[1]["migration_head"], "20240101000000",
        "{releases}"
    );
    let out = p.run(&["rollback", "web"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("20240301000000_drop_email.rb"),
        "{}",
        stderr(&out)
    );
    assert_eq!(serving(&p), "v2");
}
