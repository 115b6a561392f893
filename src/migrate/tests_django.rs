//! Tests for the Django front end: every operation the checker reads, in migrations
//! written for these tests, judged by the same rules as SQL and Alembic; both
//! directions (Django's reverse of each operation); `atomic = False`.

use std::collections::BTreeSet;

use super::*;

fn run(files: &[(&str, &str)]) -> Report {
    let files = files
        .iter()
        .map(|(p, t)| SourceFile {
            path: p.to_string(),
            text: t.to_string(),
        })
        .collect();
    check(&plan(files), &Settings::default())
}

fn rules(f: &[Finding]) -> BTreeSet<(usize, &'static str)> {
    f.iter()
        .filter(|f| f.rule != "missing-lock-timeout")
        .map(|f| (f.line, f.rule))
        .collect()
}

const INITIAL: &str = r#"from django.db import migrations, models


class Migration(migrations.Migration):

    initial = True

    dependencies = []

    operations = [
        migrations.CreateModel(
            name="Invoice",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False)),
                ("number", models.CharField(max_length=20)),
                ("memo", models.TextField(null=True)),
                ("total", models.DecimalField(max_digits=10, decimal_places=2)),
                ("paid", models.BooleanField(default=False)),
            ],
        ),
        migrations.CreateModel(
            name="Customer",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("email", models.EmailField(max_length=254, null=True)),
            ],
        ),
    ]
"#;

/// Everything a later migration does to the tables of the first.
const CHANGES: &str = r#"from django.db import migrations, models
import django.db.models.deletion


def copy_memo(apps, schema_editor):
    Invoice = apps.get_model("billing", "Invoice")
    for invoice in Invoice.objects.all():
        invoice.note = invoice.memo
        invoice.save()


class Migration(migrations.Migration):

    dependencies = [
        ("billing", "0001_initial"),
    ]

    operations = [
        migrations.AddField(
            model_name="invoice",
            name="note",
            field=models.TextField(null=True),
        ),
        migrations.AddField(
            model_name="invoice",
            name="customer",
            field=models.ForeignKey(null=True, on_delete=django.db.models.deletion.PROTECT, to="billing.customer"),
        ),
        migrations.AddField(
            model_name="invoice",
            name="currency",
            field=models.CharField(max_length=3, default="EUR"),
        ),
        migrations.RunPython(copy_memo, migrations.RunPython.noop),
        migrations.RemoveField(model_name="invoice", name="memo"),
        migrations.AlterField(
            model_name="customer",
            name="email",
            field=models.EmailField(max_length=254),
        ),
        migrations.AlterField(
            model_name="invoice",
            name="number",
            field=models.CharField(max_length=50),
        ),
        migrations.AlterField(
            model_name="invoice",
            name="total",
            field=models.DecimalField(max_digits=12, decimal_places=3),
        ),
        migrations.RenameField(model_name="invoice", old_name="paid", new_name="is_paid"),
        migrations.AddConstraint(
            model_name="invoice",
            constraint=models.UniqueConstraint(fields=["number"], name="invoice_number_uq"),
        ),
        migrations.AddConstraint(
            model_name="invoice",
            constraint=models.CheckConstraint(check=models.Q(total__gte=0), name="invoice_total_pos"),
        ),
        migrations.AddIndex(
            model_name="invoice",
            index=models.Index(fields=["-total"], name="invoice_total_idx"),
        ),
        migrations.RunSQL(
            sql=["UPDATE billing_invoice SET currency = 'EUR' WHERE currency = ''"],
            reverse_sql=migrations.RunSQL.noop,
        ),
        migrations.SeparateDatabaseAndState(
            database_operations=[
                migrations.RunSQL(
                    "ALTER TABLE billing_customer RENAME TO billing_client;",
                    reverse_sql="ALTER TABLE billing_client RENAME TO billing_customer;",
                ),
            ],
            state_operations=[
                migrations.RenameModel(old_name="Customer", new_name="Client"),
            ],
        ),
        migrations.AlterModelOptions(name="invoice", options={"ordering": ["number"]}),
    ]
"#;

#[test]
fn django_operations_are_judged_like_sql() {
    let r = run(&[
        ("proj/billing/migrations/0002_changes.py", CHANGES),
        ("proj/billing/migrations/0001_initial.py", INITIAL),
        ("proj/billing/migrations/__init__.py", ""),
    ]);
    assert_eq!(r.files.len(), 2, "__init__.py is no migration");
    let (first, second) = (&r.files[0], &r.files[1]);
    assert_eq!(first.kind, Kind::Django);
    assert_eq!(first.revision.as_deref(), Some("billing.0001_initial"));
    assert_eq!(
        second.down_revision,
        Some(vec!["billing.0001_initial".to_string()])
    );
    // Creating tables is an expand, and its reverse loses what was written since.
    assert_eq!(first.phase, Phase::Expand);
    assert!(
        rules(&first.upgrade.findings).is_empty(),
        "{:?}",
        first.upgrade.findings
    );
    assert_eq!(first.downgrade.state, DownState::DataLoss);

    let want: BTreeSet<(usize, &str)> = [
        // A ForeignKey: the constraint without NOT VALID and Django's index on it.
        (24, "add-foreign-key"),
        (24, "create-index-without-concurrently"),
        // A NOT NULL field whose default Django drops after filling the rows.
        (29, "orm-side-default"),
        // RunPython rewrites rows.
        (34, "backfill-in-migration"),
        (35, "drop-column"),
        (35, "expand-and-contract"),
        // null=True -> NOT NULL: SET NOT NULL; the other AlterFields are a widening
        // (varchar 20 -> 50, known from 0001) and a numeric scale change (a rewrite).
        (36, "set-not-null"),
        (46, "change-column-type"),
        (51, "rename-column"),
        (51, "expand-and-contract"),
        (52, "add-unique-constraint"),
        (56, "add-check-constraint"),
        (60, "create-index-without-concurrently"),
        (65, "backfill-in-migration"),
        // SeparateDatabaseAndState: only the database side counts.
        (71, "rename-table"),
    ]
    .into_iter()
    .collect();
    assert_eq!(rules(&second.upgrade.findings), want);
    let msg = |l: usize, rule: &str| {
        second
            .upgrade
            .findings
            .iter()
            .find(|f| f.line == l && f.rule == rule)
            .map(|f| f.message.clone())
            .unwrap_or_default()
    };
    assert!(
        msg(35, "drop-column").contains("billing_invoice.memo"),
        "{}",
        msg(35, "drop-column")
    );
    assert!(msg(36, "set-not-null").contains("billing_customer.email"));
    assert!(
        msg(46, "change-column-type").contains("from numeric(10,2) to numeric(12,3)"),
        "{}",
        msg(46, "change-column-type")
    );
    assert!(msg(51, "rename-column").contains("paid to is_paid"));
    assert_eq!(second.phase, Phase::Contract);

    let down = rules(&second.downgrade.findings);
    let want_down: BTreeSet<(usize, &str)> = [
        // Reversed in reverse order: the RunSQL reverse, the constraint and index
        // dropped, the fields dropped again (what was written since is lost), and the
        // definitions ripcord cannot know said so.
        (19, "downgrade-data-loss"),
        (24, "downgrade-data-loss"),
        (29, "downgrade-data-loss"),
        (35, "unknown-statement"),
        (36, "unknown-statement"),
        (41, "unknown-statement"),
        (46, "unknown-statement"),
        (60, "drop-index-without-concurrently"),
    ]
    .into_iter()
    .collect();
    assert_eq!(down, want_down);
    assert_eq!(second.downgrade.state, DownState::DataLoss);
}

#[test]
fn django_known_not_null_columns_are_not_set_again() {
    // 0001 made `number` NOT NULL: an AlterField that only lengthens it is no SET NOT NULL.
    let alter = "from django.db import migrations, models\n\n\nclass Migration(migrations.Migration):\n    dependencies = [(\"billing\", \"0001_initial\")]\n    operations = [\n        migrations.AlterField(model_name=\"invoice\", name=\"number\", field=models.CharField(max_length=30)),\n    ]\n";
    let r = run(&[
        ("b/billing/migrations/0001_initial.py", INITIAL),
        ("b/billing/migrations/0002_alter.py", alter),
    ]);
    assert!(
        rules(&r.files[1].upgrade.findings).is_empty(),
        "{:?}",
        r.files[1].upgrade.findings
    );
    assert_eq!(r.files[1].phase, Phase::Expand);
    // Alone (0001 not in the run), ripcord does not know: it says SET NOT NULL may run.
    let r = run(&[("b/billing/migrations/0002_alter.py", alter)]);
    let got = rules(&r.files[0].upgrade.findings);
    assert!(got.contains(&(7, "set-not-null")), "{got:?}");
}

#[test]
fn django_irreversible_non_atomic_and_unknown_operations() {
    let text = r#"from django.db import migrations
from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import models


class Migration(migrations.Migration):
    atomic = False

    dependencies = [("shop", "0007_x")]

    operations = [
        AddIndexConcurrently("order", models.Index(fields=["created"], name="order_created_idx")),
        migrations.RunSQL("DELETE FROM shop_order WHERE test"),
        migrations.RunPython(purge),
        migrations.AlterUniqueTogether(name="order", unique_together={("a", "b")}),
        migrations.RunSQL(build_sql()),
    ]
"#;
    let r = run(&[("x/shop/migrations/0008_y.py", text)]);
    let f = &r.files[0];
    let up = rules(&f.upgrade.findings);
    // CONCURRENTLY runs outside a transaction (atomic = False): not refused, but a
    // retry after a failure meets the index it left (Django writes no IF NOT EXISTS).
    let at_12: Vec<_> = up
        .iter()
        .filter(|(l, _)| *l == 12)
        .map(|(_, r)| *r)
        .collect();
    assert_eq!(at_12, ["not-idempotent"], "{up:?}");
    assert!(up.contains(&(13, "backfill-in-migration")), "{up:?}");
    assert!(up.contains(&(14, "backfill-in-migration")), "{up:?}");
    assert!(up.contains(&(15, "unknown-statement")), "{up:?}");
    assert!(up.contains(&(16, "dynamic-sql")), "{up:?}");
    // RunSQL and RunPython without a reverse: Django refuses to migrate backwards.
    assert_eq!(f.downgrade.state, DownState::Missing);
    assert!(
        f.downgrade
            .findings
            .iter()
            .any(|x| x.rule == "downgrade-irreversible")
    );

    // The same index in an atomic migration fails: CONCURRENTLY in a transaction.
    let atomic = text.replace("    atomic = False\n", "\n");
    let r = run(&[("x/shop/migrations/0008_y.py", &atomic)]);
    let f = &r.files[0].upgrade.findings;
    let c = f
        .iter()
        .find(|x| x.rule == "concurrently-in-transaction")
        .expect("concurrently-in-transaction");
    assert!(c.message.contains("atomic = False"), "{}", c.message);
}

#[test]
fn django_run_python_is_read_into() {
    let text = r#"from django.db import migrations


def drop_legacy(apps, schema_editor):
    schema_editor.execute("ALTER TABLE shop_order DROP COLUMN legacy")


def backfill(apps, schema_editor):
    Order = apps.get_model("shop", "Order")
    Order.objects.filter(state="").update(state="new")


def per_tenant(apps, schema_editor):
    for tenant in tenants():
        schema_editor.execute(f"ALTER TABLE {tenant}.shop_order ADD COLUMN x int")


class Migration(migrations.Migration):
    dependencies = [("shop", "0007_x")]
    operations = [
        migrations.RunPython(drop_legacy, migrations.RunPython.noop),
        migrations.RunPython(backfill, migrations.RunPython.noop),
        migrations.RunPython(per_tenant, migrations.RunPython.noop),
        migrations.RunPython(imported.helper, migrations.RunPython.noop),
    ]
"#;
    let r = run(&[("x/shop/migrations/0008_y.py", text)]);
    let f = &r.files[0].upgrade.findings;
    let got = rules(f);
    // SQL run through schema_editor.execute: read at its own line, no ORM finding.
    assert!(got.contains(&(5, "drop-column")), "{got:?}");
    assert!(!got.contains(&(21, "backfill-in-migration")), "{got:?}");
    // A model write names the model apps.get_model returned.
    let orm = f
        .iter()
        .find(|x| x.line == 22 && x.rule == "backfill-in-migration")
        .expect("backfill");
    assert!(
        orm.message.contains("RunPython(backfill)") && orm.message.contains("model Order"),
        "{}",
        orm.message
    );
    // SQL built per tenant at run time is said to be unreadable.
    assert!(got.contains(&(15, "dynamic-sql")), "{got:?}");
    // A function from elsewhere: a data migration ripcord cannot see into.
    assert!(got.contains(&(24, "backfill-in-migration")), "{got:?}");
}

#[test]
fn django_renamed_models_and_tables_are_table_renames_both_ways() {
    let renames = "from django.db import migrations\n\n\nclass Migration(migrations.Migration):\n    dependencies = [(\"billing\", \"0001_initial\")]\n    operations = [\n        migrations.RenameModel(old_name=\"Customer\", new_name=\"Client\"),\n        migrations.AlterModelTable(name=\"invoice\", table=\"invoices\"),\n    ]\n";
    let r = run(&[
        ("b/billing/migrations/0001_initial.py", INITIAL),
        ("b/billing/migrations/0002_renames.py", renames),
    ]);
    let f = &r.files[1];
    let got = rules(&f.upgrade.findings);
    assert_eq!(
        got,
        [(7, "rename-table"), (8, "rename-table")].into(),
        "{:?}",
        f.upgrade.findings
    );
    let text: Vec<&str> = f
        .upgrade
        .findings
        .iter()
        .filter(|x| x.rule == "rename-table")
        .map(|x| x.message.as_str())
        .collect();
    assert!(
        text[0].contains("billing_customer to billing_client")
            && text[1].contains("billing_invoice to invoices"),
        "{text:?}"
    );
    assert_eq!(f.phase, Phase::Contract);
}
