//! Tests for the Rails front end: `change` (with Rails' own reverse) and `up`/`down`,
//! the schema statements strong_migrations checks, `disable_ddl_transaction!`,
//! `safety_assured`, `execute` of SQL (strings and heredocs) and model writes, in
//! migrations written for these tests.

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
        .filter(|f| !matches!(f.rule, "missing-lock-timeout" | "not-idempotent"))
        .map(|f| (f.line, f.rule))
        .collect()
}

const EXPAND: &str = r#"class AddStatusToOrders < ActiveRecord::Migration[7.1]
  disable_ddl_transaction!

  def change
    add_column :orders, :status, :string, limit: 20
    add_column :orders, :priority, :integer, null: false
    add_column :orders, :placed_at, :datetime, default: -> { "clock_timestamp()" }
    add_index :orders, :status, algorithm: :concurrently
    add_index :orders, [:customer_id, :placed_at]
    add_reference :orders, :shop, foreign_key: { validate: false }, index: { algorithm: :concurrently }
    add_foreign_key :orders, :customers, validate: false
    add_foreign_key :orders, :warehouses
    rename_column :orders, :note, :notes
    change_column_null :orders, :customer_id, false
  end
end
"#;

const CONTRACT: &str = r#"class BackfillAndContract < ActiveRecord::Migration[7.1]
  def up
    validate_foreign_key :orders, :customers
    Order.where(status: nil).in_batches.update_all(status: "new")
    execute <<~SQL
      ALTER TABLE orders ALTER COLUMN status SET NOT NULL;
    SQL
    safety_assured { remove_column :orders, :legacy_total }
    remove_column :orders, :old_flag, :boolean
    execute "UPDATE orders SET priority = 0 WHERE priority IS NULL"
    execute "DROP TABLE #{table_name}_old"
    frobnicate :orders
  end

  def down
    add_column :orders, :old_flag, :boolean
    raise ActiveRecord::IrreversibleMigration
  end
end
"#;

#[test]
fn rails_migrations_are_judged_like_sql() {
    let r = run(&[
        (
            "app/db/migrate/20240302090000_backfill_and_contract.rb",
            CONTRACT,
        ),
        (
            "app/db/migrate/20240301101500_add_status_to_orders.rb",
            EXPAND,
        ),
        ("app/db/seeds.rb", "User.create!(name: \"admin\")\n"),
    ]);
    assert_eq!(r.files.len(), 2, "seeds.rb is no migration");
    let (expand, contract) = (&r.files[0], &r.files[1]);
    assert_eq!(expand.kind, Kind::Rails);
    assert!(
        expand
            .path
            .ends_with("20240301101500_add_status_to_orders.rb")
    );

    let want: BTreeSet<(usize, &str)> = [
        (6, "add-not-null-column-without-default"),
        // A lambda default is SQL: clock_timestamp() is volatile.
        (7, "volatile-default"),
        // CONCURRENTLY outside a transaction (disable_ddl_transaction!) is fine; the
        // plain one is not.
        (9, "create-index-without-concurrently"),
        // validate: false is NOT VALID; a plain add_foreign_key scans under lock.
        (12, "add-foreign-key"),
        (13, "rename-column"),
        (13, "expand-and-contract"),
        (14, "set-not-null"),
    ]
    .into_iter()
    .collect();
    assert_eq!(rules(&expand.upgrade.findings), want);
    assert_eq!(expand.phase, Phase::Contract);
    // change's reverse: columns dropped again, indexes dropped, renamed back.
    let down = rules(&expand.downgrade.findings);
    for (l, rule) in [
        (5, "downgrade-data-loss"),
        (6, "downgrade-data-loss"),
        (9, "drop-index-without-concurrently"),
        (10, "downgrade-data-loss"),
    ] {
        assert!(down.contains(&(l, rule)), "{l} {rule}: {down:?}");
    }
    // The concurrent index is dropped concurrently on the way back too.
    assert!(
        !down.contains(&(8, "drop-index-without-concurrently")),
        "{down:?}"
    );

    let want: BTreeSet<(usize, &str)> = [
        (4, "backfill-in-migration"),
        // The heredoc's SQL, at its own line.
        (6, "set-not-null"),
        (9, "drop-column"),
        (10, "backfill-in-migration"),
        (11, "dynamic-sql"),
        (12, "unknown-statement"),
    ]
    .into_iter()
    .collect();
    assert_eq!(rules(&contract.upgrade.findings), want);
    // safety_assured: accepted, and kept visible with its reason.
    let s: Vec<_> = contract
        .upgrade
        .suppressed
        .iter()
        .map(|s| (s.finding.line, s.finding.rule, s.reason.as_str()))
        .collect();
    assert!(
        s.contains(&(8, "drop-column", "safety_assured (strong_migrations)")),
        "{s:?}"
    );
    assert_eq!(contract.downgrade.state, DownState::Missing);
    assert!(
        contract
            .downgrade
            .findings
            .iter()
            .any(|f| f.rule == "downgrade-irreversible")
    );
}

#[test]
fn rails_reversible_and_irreversible_change() {
    let text = r#"class Mixed < ActiveRecord::Migration[7.0]
  def change
    reversible do |dir|
      dir.up { execute "ALTER TABLE users ADD CONSTRAINT age_pos CHECK (age > 0) NOT VALID" }
      dir.down { execute "ALTER TABLE users DROP CONSTRAINT age_pos" }
    end
    remove_column :users, :nickname
  end
end
"#;
    let r = run(&[("db/migrate/20240101000000_mixed.rb", text)]);
    let f = &r.files[0];
    assert_eq!(
        rules(&f.upgrade.findings),
        [(7, "drop-column")].into_iter().collect()
    );
    // remove_column without a type cannot be reversed by Rails.
    assert_eq!(f.downgrade.state, DownState::Missing);
    // With the type it can: the downgrade re-adds the column (its values are gone).
    let typed = text.replace(":users, :nickname", ":users, :nickname, :string");
    let r = run(&[("db/migrate/20240101000000_mixed.rb", &typed)]);
    assert_ne!(r.files[0].downgrade.state, DownState::Missing);
    // Outside disable_ddl_transaction!, a concurrent index fails in the transaction.
    let idx = "class I < ActiveRecord::Migration[7.1]\n  def change\n    add_index :users, :email, algorithm: :concurrently\n  end\nend\n";
    let r = run(&[("db/migrate/20240101000001_i.rb", idx)]);
    let c = r.files[0]
        .upgrade
        .findings
        .iter()
        .find(|f| f.rule == "concurrently-in-transaction")
        .expect("concurrently-in-transaction");
    assert!(
        c.message.contains("disable_ddl_transaction!"),
        "{}",
        c.message
    );
}

#[test]
fn rails_rollback_guard_uses_versions() {
    let r = run(&[
        ("db/migrate/20240301101500_add_status_to_orders.rb", EXPAND),
        (
            "db/migrate/20240302090000_backfill_and_contract.rb",
            CONTRACT,
        ),
    ]);
    // schema_migrations holds versions: the head is the newest one.
    let b = guard::between(&r, "20240302090000", "20240301101500").unwrap();
    assert_eq!(b.applied.len(), 1);
    assert_eq!(b.contracts().len(), 1);
    assert!(guard::between(&r, "20240301101500", "20240302090000").is_err());
}
