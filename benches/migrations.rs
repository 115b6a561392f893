//! The migration checker's benchmark: files per second over a large generated corpus,
//! in-process through the library and end to end through the binary, with squawk
//! (`pip install squawk-cli`) timed on the same `.sql` files when it is on PATH.
//!
//! The corpus is generated from a fixed seed into a temporary directory: PostgreSQL
//! migrations in the golang-migrate (`N_x.up.sql` / `N_x.down.sql`), Flyway (`V1__x.sql`,
//! some `U1__x.sql`) and diesel (`DIR/up.sql` + `DIR/down.sql`) layouts, and Alembic
//! revisions (`versions/<rev>_x.py`, one revision chain, files named by random revision
//! id as Alembic names them). Statements cover CREATE TABLE, ADD COLUMN with and without
//! defaults and NOT NULL, CREATE/DROP INDEX with and without CONCURRENTLY, constraints
//! with and without NOT VALID, VALIDATE, ALTER COLUMN TYPE, DROP COLUMN, renames, UPDATE
//! backfills, explicit transactions, enums, views, functions, DO blocks and seed INSERTs.
//!
//! Rows, each the median of RUNS runs after one warm-up run:
//! - library: `discover::read_paths` -> `plan` -> `check` (what the CLI does, minus JSON);
//! - CLI: `ripcord migrations check DIR --format json`, stdout to /dev/null (exit 0 or
//!   1 are both fine; anything else fails the bench);
//! - squawk: `squawk --reporter json 'DIR/**/*.sql'`. squawk reads SQL only, so it is
//!   compared with ripcord on the `.sql` part of the corpus; the Alembic files are
//!   ripcord's alone.
//!
//! Run: `cargo bench --bench migrations`. Environment: RIPCORD_BENCH_FILES (corpus size,
//! default 6000), RIPCORD_BENCH_RUNS (default 5), RIPCORD_BENCH_SEED, RIPCORD_BENCH_SQUAWK
//! (the squawk binary; default: `squawk` on PATH, through `pyenv which` for a pyenv shim).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use ripcord::migrate::{self, Settings, discover};

const BIN: &str = env!("CARGO_BIN_EXE_ripcord");

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

// ------------------------------------------------------------------ deterministic RNG

/// SplitMix64: small, seeded, the same sequence on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// True with probability `pct` percent.
    fn chance(&mut self, pct: u64) -> bool {
        self.next() % 100 < pct
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }

    fn hex(&mut self, len: usize) -> String {
        let mut s = format!("{:016x}", self.next());
        s.truncate(len);
        s
    }
}

// ------------------------------------------------------------------ corpus

const TABLES: &[&str] = &[
    "users",
    "accounts",
    "orders",
    "order_items",
    "invoices",
    "payments",
    "products",
    "inventory",
    "shipments",
    "addresses",
    "sessions",
    "audit_log",
    "events",
    "comments",
    "posts",
    "tags",
    "teams",
    "memberships",
    "projects",
    "tickets",
];

const COLUMNS: &[&str] = &[
    "email",
    "name",
    "status",
    "note",
    "total",
    "region",
    "tier",
    "score",
    "slug",
    "owner_id",
    "parent_id",
    "archived_at",
    "updated_at",
    "priority",
    "currency",
    "locale",
    "external_ref",
    "flags",
];

const TYPES: &[&str] = &[
    "text",
    "integer",
    "bigint",
    "boolean",
    "timestamptz",
    "varchar(64)",
    "numeric(12,2)",
    "jsonb",
    "uuid",
];

fn literal_for(ty: &str) -> &'static str {
    match ty {
        "integer" | "bigint" | "numeric(12,2)" => "0",
        "boolean" => "false",
        "timestamptz" => "'1970-01-01'",
        "jsonb" => "'{}'::jsonb",
        "uuid" => "'00000000-0000-0000-0000-000000000000'",
        _ => "''",
    }
}

/// One generated SQL statement and what undoes it (empty when nothing does).
struct Stmt {
    up: String,
    down: String,
}

fn stmt(up: String, down: impl Into<String>) -> Stmt {
    Stmt {
        up,
        down: down.into(),
    }
}

/// A random statement; `n` keeps generated names unique.
fn sql_statement(rng: &mut Rng, n: usize) -> Stmt {
    let t = rng.pick(TABLES);
    let c = rng.pick(COLUMNS);
    let ty = rng.pick(TYPES);
    let col = format!("{c}_{n}");
    match rng.below(30) {
        0..=2 => {
            let name = format!("{t}_{n}");
            let ine = if rng.chance(50) { "IF NOT EXISTS " } else { "" };
            stmt(
                format!(
                    "CREATE TABLE {ine}{name} (\n    id bigserial PRIMARY KEY,\n    {c} {ty} NOT NULL,\n    {t}_id bigint REFERENCES {t} (id),\n    created_at timestamptz NOT NULL DEFAULT now()\n);"
                ),
                format!("DROP TABLE IF EXISTS {name};"),
            )
        }
        3..=5 => stmt(
            format!("ALTER TABLE {t} ADD COLUMN {col} {ty};"),
            format!("ALTER TABLE {t} DROP COLUMN {col};"),
        ),
        6 => stmt(
            format!(
                "ALTER TABLE {t} ADD COLUMN IF NOT EXISTS {col} {ty} NOT NULL DEFAULT {};",
                literal_for(ty)
            ),
            format!("ALTER TABLE {t} DROP COLUMN IF EXISTS {col};"),
        ),
        7 => stmt(
            format!("ALTER TABLE {t} ADD COLUMN {col} {ty} NOT NULL;"),
            format!("ALTER TABLE {t} DROP COLUMN {col};"),
        ),
        8 => stmt(
            format!("ALTER TABLE {t} ADD COLUMN {col} uuid DEFAULT gen_random_uuid();"),
            format!("ALTER TABLE {t} DROP COLUMN {col};"),
        ),
        9..=11 => {
            let idx = format!("{t}_{c}_{n}_idx");
            let unique = if rng.chance(20) { "UNIQUE " } else { "" };
            let conc = rng.chance(50);
            let ine = if rng.chance(50) { "IF NOT EXISTS " } else { "" };
            let (cc, dc) = if conc {
                ("CONCURRENTLY ", "CONCURRENTLY ")
            } else {
                ("", "")
            };
            stmt(
                format!("CREATE {unique}INDEX {cc}{ine}{idx} ON {t} ({c});"),
                format!("DROP INDEX {dc}IF EXISTS {idx};"),
            )
        }
        12 => {
            let other = rng.pick(TABLES);
            let name = format!("{t}_{other}_{n}_fk");
            let nv = if rng.chance(50) { " NOT VALID" } else { "" };
            stmt(
                format!(
                    "ALTER TABLE {t} ADD CONSTRAINT {name} FOREIGN KEY ({other}_id) REFERENCES {other} (id){nv};"
                ),
                format!("ALTER TABLE {t} DROP CONSTRAINT {name};"),
            )
        }
        13 => {
            let name = format!("{t}_{c}_{n}_check");
            let nv = if rng.chance(50) { " NOT VALID" } else { "" };
            stmt(
                format!("ALTER TABLE {t} ADD CONSTRAINT {name} CHECK ({c} IS NOT NULL){nv};"),
                format!("ALTER TABLE {t} DROP CONSTRAINT IF EXISTS {name};"),
            )
        }
        14 => stmt(
            format!(
                "ALTER TABLE {t} VALIDATE CONSTRAINT {t}_{c}_{}_check;",
                n.saturating_sub(1)
            ),
            "",
        ),
        15 => {
            let to = rng.pick(&["bigint", "text", "varchar(255)", "numeric(14,2)"]);
            let using = if rng.chance(30) {
                format!(" USING {c}::{to}")
            } else {
                String::new()
            };
            stmt(
                format!("ALTER TABLE {t} ALTER COLUMN {c} TYPE {to}{using};"),
                format!("ALTER TABLE {t} ALTER COLUMN {c} TYPE {ty};"),
            )
        }
        16 => {
            let ie = if rng.chance(50) { "IF EXISTS " } else { "" };
            stmt(
                format!("ALTER TABLE {t} DROP COLUMN {ie}{col};"),
                format!("ALTER TABLE {t} ADD COLUMN {col} {ty};"),
            )
        }
        17 => stmt(
            format!("ALTER TABLE {t} RENAME COLUMN {c} TO {col};"),
            format!("ALTER TABLE {t} RENAME COLUMN {col} TO {c};"),
        ),
        18 => stmt(
            format!("ALTER TABLE {t} RENAME TO {t}_{n};"),
            format!("ALTER TABLE {t}_{n} RENAME TO {t};"),
        ),
        19..=20 => {
            let w = if rng.chance(50) {
                format!("\nWHERE id BETWEEN {} AND {}", n * 1000, n * 1000 + 999)
            } else {
                format!("\nWHERE {c} IS NULL")
            };
            stmt(format!("UPDATE {t}\nSET {c} = {}{w};", literal_for(ty)), "")
        }
        21 => stmt(
            format!("ALTER TABLE {t} ALTER COLUMN {c} SET NOT NULL;"),
            format!("ALTER TABLE {t} ALTER COLUMN {c} DROP NOT NULL;"),
        ),
        22 => stmt(
            format!("ALTER TABLE {t} ALTER COLUMN {c} DROP NOT NULL;"),
            format!("ALTER TABLE {t} ALTER COLUMN {c} SET NOT NULL;"),
        ),
        23 => stmt(
            format!(
                "ALTER TABLE {t} ALTER COLUMN {c} SET DEFAULT {};",
                literal_for(ty)
            ),
            format!("ALTER TABLE {t} ALTER COLUMN {c} DROP DEFAULT;"),
        ),
        24 => {
            let conc = if rng.chance(50) { "CONCURRENTLY " } else { "" };
            stmt(
                format!("DROP INDEX {conc}IF EXISTS {t}_{c}_{}_idx;", n / 2),
                format!(
                    "CREATE INDEX IF NOT EXISTS {t}_{c}_{}_idx ON {t} ({c});",
                    n / 2
                ),
            )
        }
        25 => {
            let name = format!("status_{n}");
            if rng.chance(50) {
                stmt(
                    format!("CREATE TYPE {name} AS ENUM ('new', 'active', 'closed');"),
                    format!("DROP TYPE {name};"),
                )
            } else {
                stmt(
                    format!("ALTER TYPE status_{} ADD VALUE 'archived';", n / 2),
                    "",
                )
            }
        }
        26 => {
            if rng.chance(50) {
                stmt(
                    format!(
                        "CREATE OR REPLACE VIEW active_{t}_{n} AS\n    SELECT id, {c}\n    FROM {t}\n    WHERE archived_at IS NULL;"
                    ),
                    format!("DROP VIEW IF EXISTS active_{t}_{n};"),
                )
            } else {
                stmt(
                    format!(
                        "CREATE OR REPLACE FUNCTION touch_{t}_{n}() RETURNS trigger AS $$\nBEGIN\n    NEW.updated_at := now(); -- keep; in sync\n    RETURN NEW;\nEND;\n$$ LANGUAGE plpgsql;"
                    ),
                    format!("DROP FUNCTION IF EXISTS touch_{t}_{n}();"),
                )
            }
        }
        27 => {
            // Seed data: mostly a few rows, sometimes a long list (bigger files).
            let rows = if rng.chance(5) { 200 } else { 1 + rng.below(5) };
            let mut s = format!("INSERT INTO {t} (id, {c}) VALUES\n");
            for i in 0..rows {
                let sep = if i + 1 == rows { ";" } else { "," };
                let _ = writeln!(s, "    ({}, {}){sep}", n * 1000 + i, literal_for(ty));
            }
            s.pop();
            stmt(
                s,
                format!(
                    "DELETE FROM {t} WHERE id BETWEEN {} AND {};",
                    n * 1000,
                    n * 1000 + rows
                ),
            )
        }
        28 => {
            if rng.chance(50) {
                stmt(
                    format!("DROP TABLE {t}_{};", n / 3),
                    format!("CREATE TABLE {t}_{} (id bigint);", n / 3),
                )
            } else {
                stmt(
                    format!(
                        "DO $$\nBEGIN\n    ALTER TABLE {t} ADD CONSTRAINT {t}_{n}_uq UNIQUE ({c});\nEXCEPTION WHEN duplicate_object THEN NULL;\nEND $$;"
                    ),
                    format!("ALTER TABLE {t} DROP CONSTRAINT IF EXISTS {t}_{n}_uq;"),
                )
            }
        }
        _ => stmt(
            format!("COMMENT ON COLUMN {t}.{c} IS 'set by migration {n}';"),
            format!("COMMENT ON COLUMN {t}.{c} IS NULL;"),
        ),
    }
}

/// One SQL migration's up and down text.
fn sql_migration(rng: &mut Rng, n: &mut usize) -> (String, String) {
    let mut up = String::new();
    let mut downs = Vec::new();
    if rng.chance(60) {
        let _ = writeln!(up, "-- migration {n}: generated for the ripcord benchmark");
    }
    if rng.chance(40) {
        up.push_str("SET lock_timeout = '2s';\n");
        if rng.chance(50) {
            up.push_str("SET statement_timeout = '30s';\n");
        }
    }
    let explicit_tx = rng.chance(15);
    if explicit_tx {
        up.push_str("BEGIN;\n");
    }
    let count = 1 + rng.below(8);
    for _ in 0..count {
        *n += 1;
        let s = sql_statement(rng, *n);
        up.push_str(&s.up);
        up.push('\n');
        if !s.down.is_empty() {
            downs.push(s.down);
        }
    }
    if explicit_tx {
        up.push_str("COMMIT;\n");
    }
    downs.reverse();
    let mut down = downs.join("\n");
    down.push('\n');
    (up, down)
}

/// One op call in an Alembic `upgrade()` and its inverse in `downgrade()` (or `None`).
fn alembic_op(rng: &mut Rng, n: usize) -> (String, Option<String>) {
    let t = rng.pick(TABLES);
    let c = rng.pick(COLUMNS);
    let col = format!("{c}_{n}");
    let sa_ty = rng.pick(&[
        "sa.Text()",
        "sa.Integer()",
        "sa.BigInteger()",
        "sa.Boolean()",
        "sa.String(64)",
        "sa.DateTime(timezone=True)",
    ]);
    match rng.below(16) {
        0..=2 => (
            format!("    op.add_column(\"{t}\", sa.Column(\"{col}\", {sa_ty}, nullable=True))"),
            Some(format!("    op.drop_column(\"{t}\", \"{col}\")")),
        ),
        3 => (
            format!(
                "    op.add_column(\"{t}\", sa.Column(\"{col}\", sa.Text(), nullable=False, server_default=\"none\"))"
            ),
            Some(format!("    op.drop_column(\"{t}\", \"{col}\")")),
        ),
        4 => (
            format!("    op.add_column(\"{t}\", sa.Column(\"{col}\", {sa_ty}, nullable=False))"),
            Some(format!("    op.drop_column(\"{t}\", \"{col}\")")),
        ),
        5 => (
            format!(
                "    op.create_table(\n        \"{t}_{n}\",\n        sa.Column(\"id\", sa.BigInteger(), primary_key=True),\n        sa.Column(\"{c}\", {sa_ty}, nullable=False),\n        sa.Column(\"created_at\", sa.DateTime(timezone=True), server_default=sa.text(\"now()\")),\n    )"
            ),
            Some(format!("    op.drop_table(\"{t}_{n}\")")),
        ),
        6 | 7 => {
            let idx = format!("ix_{t}_{c}_{n}");
            if rng.chance(50) {
                (
                    format!(
                        "    with op.get_context().autocommit_block():\n        op.create_index(\"{idx}\", \"{t}\", [\"{c}\"], postgresql_concurrently=True, if_not_exists=True)"
                    ),
                    Some(format!(
                        "    with op.get_context().autocommit_block():\n        op.drop_index(\"{idx}\", table_name=\"{t}\", postgresql_concurrently=True, if_exists=True)"
                    )),
                )
            } else {
                (
                    format!("    op.create_index(\"{idx}\", \"{t}\", [\"{c}\"])"),
                    Some(format!("    op.drop_index(\"{idx}\", table_name=\"{t}\")")),
                )
            }
        }
        8 => {
            let other = rng.pick(TABLES);
            let nv = if rng.chance(50) {
                ", postgresql_not_valid=True"
            } else {
                ""
            };
            (
                format!(
                    "    op.create_foreign_key(\"fk_{t}_{other}_{n}\", \"{t}\", \"{other}\", [\"{other}_id\"], [\"id\"]{nv})"
                ),
                Some(format!(
                    "    op.drop_constraint(\"fk_{t}_{other}_{n}\", \"{t}\", type_=\"foreignkey\")"
                )),
            )
        }
        9 => (
            format!(
                "    op.alter_column(\"{t}\", \"{c}\", existing_type=sa.Integer(), type_=sa.BigInteger())"
            ),
            Some(format!(
                "    op.alter_column(\"{t}\", \"{c}\", existing_type=sa.BigInteger(), type_=sa.Integer())"
            )),
        ),
        10 => (
            format!("    op.alter_column(\"{t}\", \"{c}\", nullable=False)"),
            Some(format!(
                "    op.alter_column(\"{t}\", \"{c}\", nullable=True)"
            )),
        ),
        11 => (
            format!("    op.drop_column(\"{t}\", \"{col}\")"),
            Some(format!(
                "    op.add_column(\"{t}\", sa.Column(\"{col}\", {sa_ty}, nullable=True))"
            )),
        ),
        12 => (
            format!(
                "    op.execute(\"UPDATE {t} SET {c} = NULL WHERE id < {}\")",
                n * 100
            ),
            None,
        ),
        13 => (
            format!("    op.alter_column(\"{t}\", \"{c}\", new_column_name=\"{col}\")"),
            Some(format!(
                "    op.alter_column(\"{t}\", \"{col}\", new_column_name=\"{c}\")"
            )),
        ),
        14 => (
            format!(
                "    op.create_check_constraint(\"ck_{t}_{n}\", \"{t}\", \"{c} IS NOT NULL\", postgresql_not_valid=True)"
            ),
            Some(format!(
                "    op.drop_constraint(\"ck_{t}_{n}\", \"{t}\", type_=\"check\")"
            )),
        ),
        _ => (
            format!(
                "    op.execute(\n        \"\"\"\n        ALTER TABLE {t}\n            ADD COLUMN IF NOT EXISTS {col} text\n        \"\"\"\n    )"
            ),
            Some(format!(
                "    op.execute(\"ALTER TABLE {t} DROP COLUMN {col}\")"
            )),
        ),
    }
}

fn alembic_revision(rng: &mut Rng, rev: &str, parent: Option<&str>, n: &mut usize) -> String {
    let down_rev = parent.map_or("None".to_string(), |p| format!("\"{p}\""));
    let mut s = format!(
        "\"\"\"generated revision {rev}\n\nRevision ID: {rev}\nRevises: {}\nCreate Date: 2024-01-01 00:00:00\n\n\"\"\"\nfrom alembic import op\nimport sqlalchemy as sa\n\n# revision identifiers, used by Alembic.\nrevision = \"{rev}\"\ndown_revision = {down_rev}\nbranch_labels = None\ndepends_on = None\n\n\ndef upgrade():\n",
        parent.unwrap_or("")
    );
    if rng.chance(40) {
        s.push_str("    op.execute(\"SET lock_timeout = '2s'\")\n");
    }
    let mut downs = Vec::new();
    for _ in 0..1 + rng.below(6) {
        *n += 1;
        let (up, down) = alembic_op(rng, *n);
        s.push_str(&up);
        s.push('\n');
        downs.extend(down);
    }
    s.push_str("\n\ndef downgrade():\n");
    if downs.is_empty() || rng.chance(10) {
        s.push_str("    pass\n");
    } else {
        downs.reverse();
        for d in downs {
            s.push_str(&d);
            s.push('\n');
        }
    }
    s
}

#[derive(Default)]
struct Corpus {
    /// Files and bytes per layout, for the header.
    layouts: BTreeMap<&'static str, (usize, u64)>,
    sql_files: usize,
    sql_bytes: u64,
    py_files: usize,
    py_bytes: u64,
}

impl Corpus {
    fn write(&mut self, layout: &'static str, path: &Path, text: &str) {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("create corpus dir");
        }
        std::fs::write(path, text).expect("write corpus file");
        let e = self.layouts.entry(layout).or_default();
        e.0 += 1;
        e.1 += text.len() as u64;
        if layout == "alembic" {
            self.py_files += 1;
            self.py_bytes += text.len() as u64;
        } else {
            self.sql_files += 1;
            self.sql_bytes += text.len() as u64;
        }
    }

    fn files(&self) -> usize {
        self.sql_files + self.py_files
    }

    fn bytes(&self) -> u64 {
        self.sql_bytes + self.py_bytes
    }
}

/// Writes about `target` files under `root/sql` and `root/alembic/versions`.
fn generate(root: &Path, target: usize, seed: u64) -> Corpus {
    let mut rng = Rng(seed);
    let mut corpus = Corpus::default();
    let mut n = 0usize;
    let sql = root.join("sql");
    // Shares of the files: golang-migrate 1/3, Flyway 2/9, diesel 2/9, Alembic 2/9.
    let gm = target / 6; // two files each
    let diesel = target / 9; // two files each
    let alembic = target * 2 / 9;
    let flyway_v = target.saturating_sub(2 * gm + 2 * diesel + alembic) * 10 / 13;
    let flyway_u = target.saturating_sub(2 * gm + 2 * diesel + alembic + flyway_v);
    for i in 1..=gm {
        let (up, down) = sql_migration(&mut rng, &mut n);
        let base = sql.join("golang-migrate").join(format!("{i}_change_{i}"));
        corpus.write("golang-migrate", &base.with_extension("up.sql"), &up);
        corpus.write("golang-migrate", &base.with_extension("down.sql"), &down);
    }
    for i in 1..=flyway_v {
        let (up, down) = sql_migration(&mut rng, &mut n);
        let dir = sql.join("flyway");
        corpus.write("flyway", &dir.join(format!("V{i}__change_{i}.sql")), &up);
        // The last `flyway_u` migrations have undo files.
        if i + flyway_u > flyway_v {
            corpus.write("flyway", &dir.join(format!("U{i}__change_{i}.sql")), &down);
        }
    }
    for i in 1..=diesel {
        let (up, down) = sql_migration(&mut rng, &mut n);
        let dir = sql.join("diesel").join(format!(
            "2024-{:02}-{:02}-{:06}_change_{i}",
            1 + i / 300 % 12,
            1 + i / 10 % 28,
            i
        ));
        corpus.write("diesel", &dir.join("up.sql"), &up);
        corpus.write("diesel", &dir.join("down.sql"), &down);
    }
    let versions = root.join("alembic").join("versions");
    let mut parent: Option<String> = None;
    for i in 1..=alembic {
        let rev = rng.hex(12);
        let text = alembic_revision(&mut rng, &rev, parent.as_deref(), &mut n);
        corpus.write(
            "alembic",
            &versions.join(format!("{rev}_change_{i}.py")),
            &text,
        );
        parent = Some(rev);
    }
    corpus
}

// ------------------------------------------------------------------ measuring

/// CPU seconds (user + system) of this process and of its waited-for children.
fn cpu_seconds() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the `(comm)`: state is field 3; utime 14, stime 15, cutime 16, cstime 17.
    let rest = stat.rsplit_once(')').map_or("", |r| r.1);
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    let get = |field: usize| f.get(field - 3).copied().unwrap_or(0.0);
    // USER_HZ is 100 on Linux.
    ((get(14) + get(15)) / 100.0, (get(16) + get(17)) / 100.0)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

struct Row {
    tool: String,
    input: &'static str,
    files: usize,
    bytes: u64,
    secs: Vec<f64>,
    cpu: Vec<f64>,
    note: String,
}

impl Row {
    fn print(&mut self) {
        let s = median(&mut self.secs);
        let cpu = median(&mut self.cpu);
        let mb = self.bytes as f64 / 1e6;
        println!(
            "| {} | {} | {} | {:.2} | {:.3} | {:.0} | {:.2} | {:.2} | {} |",
            self.tool,
            self.input,
            self.files,
            mb,
            s,
            self.files as f64 / s,
            mb / s,
            cpu,
            self.note
        );
    }
}

/// Library stages, in seconds: read, plan, check, render_json; and the report's counts.
fn library_once(dirs: &[PathBuf]) -> ([f64; 4], usize, usize, BTreeMap<&'static str, usize>) {
    let t0 = Instant::now();
    let files = discover::read_paths(dirs).expect("read corpus");
    let t1 = Instant::now();
    let planned = migrate::plan(files);
    let t2 = Instant::now();
    let report = migrate::check(&planned, &Settings::default());
    let t3 = Instant::now();
    let json = migrate::render_json(&report);
    let t4 = Instant::now();
    std::hint::black_box(&json);
    let mut rules = BTreeMap::new();
    let mut findings = 0;
    for f in &report.files {
        for x in f.upgrade.findings.iter().chain(&f.downgrade.findings) {
            *rules.entry(x.rule).or_insert(0) += 1;
            findings += 1;
        }
    }
    let secs = |a: Instant, b: Instant| (b - a).as_secs_f64();
    (
        [secs(t0, t1), secs(t1, t2), secs(t2, t3), secs(t3, t4)],
        report.files.len(),
        findings,
        rules,
    )
}

/// Runs a command with stdout to /dev/null; wall seconds, children CPU seconds, exit code.
fn time_command(cmd: &mut Command) -> (f64, f64, Option<i32>, String) {
    let (_, c0) = cpu_seconds();
    let t = Instant::now();
    let out = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    let wall = t.elapsed().as_secs_f64();
    let (_, c1) = cpu_seconds();
    (
        wall,
        c1 - c0,
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The squawk binary: RIPCORD_BENCH_SQUAWK, or `squawk` on PATH (a pyenv shim is
/// resolved to the real binary so its start-up is not measured).
fn find_squawk() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("RIPCORD_BENCH_SQUAWK") {
        return Some(PathBuf::from(p));
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("squawk"))
            .find(|p| p.is_file())
    })?;
    let is_script = std::fs::read(&on_path)
        .map(|b| b.starts_with(b"#!"))
        .unwrap_or(false);
    if is_script
        && let Ok(out) = Command::new("pyenv").args(["which", "squawk"]).output()
        && out.status.success()
    {
        let real = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if real.is_file() {
            return Some(real);
        }
    }
    Some(on_path)
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument that is not ours skips the run.
    if std::env::args()
        .skip(1)
        .any(|a| a != "--bench" && !a.starts_with('-') && a != "migrations")
    {
        return;
    }
    let target = env_or("RIPCORD_BENCH_FILES", 6000) as usize;
    let runs = env_or("RIPCORD_BENCH_RUNS", 5).max(1) as usize;
    let seed = env_or("RIPCORD_BENCH_SEED", 0x5eed_2024);
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());

    let tmp = tempfile::Builder::new()
        .prefix("ripcord-bench-migrations-")
        .tempdir()
        .expect("temp dir");
    let root = tmp.path();
    let t = Instant::now();
    let corpus = generate(root, target, seed);
    let gen_secs = t.elapsed().as_secs_f64();

    println!(
        "ripcord migration checker benchmark: {} files ({:.2} MB) generated with seed {seed:#x} in {gen_secs:.1} s; median of {runs} runs after a warm-up; {cores} cores, {} build",
        corpus.files(),
        corpus.bytes() as f64 / 1e6,
        if cfg!(debug_assertions) {
            "DEBUG (figures mean nothing)"
        } else {
            "release"
        }
    );
    let layouts: Vec<String> = corpus
        .layouts
        .iter()
        .map(|(k, (f, b))| format!("{k} {f} files / {:.2} MB", *b as f64 / 1e6))
        .collect();
    println!("corpus: {}", layouts.join(", "));
    println!();

    let all = vec![root.to_path_buf()];
    let sql_only = vec![root.join("sql")];
    let mut rows = Vec::new();
    let mut stages: [Vec<f64>; 4] = Default::default();
    let mut counts = Vec::new();

    // Library, in-process.
    for (dirs, input, files, bytes) in [
        (&all, "all (.sql + .py)", corpus.files(), corpus.bytes()),
        (&sql_only, ".sql only", corpus.sql_files, corpus.sql_bytes),
    ] {
        let first = library_once(dirs);
        let (migrations, findings) = (first.1, first.2);
        counts.push((input, migrations, findings, first.3));
        let (mut secs, mut cpu) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            let (c0, _) = cpu_seconds();
            let (s, ..) = library_once(dirs);
            let (c1, _) = cpu_seconds();
            secs.push(s[0] + s[1] + s[2]);
            cpu.push(c1 - c0);
            if input.starts_with("all") {
                for (v, x) in stages.iter_mut().zip(s) {
                    v.push(x);
                }
            }
        }
        rows.push(Row {
            tool: "ripcord library (read+plan+check)".into(),
            input,
            files,
            bytes,
            secs,
            cpu,
            note: format!("{migrations} migrations, {findings} findings"),
        });
    }

    // The binary, end to end.
    for (dir, input, files, bytes) in [
        (
            root.to_path_buf(),
            "all (.sql + .py)",
            corpus.files(),
            corpus.bytes(),
        ),
        (
            root.join("sql"),
            ".sql only",
            corpus.sql_files,
            corpus.sql_bytes,
        ),
    ] {
        let cmd = || {
            let mut c = Command::new(BIN);
            c.args(["migrations", "check"])
                .arg(&dir)
                .args(["--format", "json"]);
            c
        };
        // Warm-up, and a check that the JSON is whole and agrees with the library.
        let out = cmd().output().expect("run ripcord");
        let code = out.status.code();
        if !matches!(code, Some(0 | 1)) {
            eprintln!(
                "ripcord migrations check {} exited {code:?}:\n{}",
                dir.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            std::process::exit(1);
        }
        let json: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("ripcord printed JSON");
        let cli_migrations = json["files"].as_array().map_or(0, Vec::len);
        let (mut secs, mut cpu) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            let (s, c, code2, err) = time_command(&mut cmd());
            if code2 != code {
                eprintln!("ripcord exit code changed from {code:?} to {code2:?}:\n{err}");
                std::process::exit(1);
            }
            secs.push(s);
            cpu.push(c);
        }
        rows.push(Row {
            tool: "ripcord CLI `--format json`".into(),
            input,
            files,
            bytes,
            secs,
            cpu,
            note: format!(
                "exit {}, {cli_migrations} migrations, {:.1} MB of JSON",
                code.unwrap_or(-1),
                out.stdout.len() as f64 / 1e6
            ),
        });
    }

    // squawk, on the same .sql files.
    let squawk = find_squawk();
    let squawk_line = match &squawk {
        None => "squawk: not measured (no `squawk` on PATH; `pip install squawk-cli` to compare)"
            .to_string(),
        Some(bin) => {
            let version = Command::new(bin)
                .arg("--version")
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_default();
            let pattern = format!("{}/**/*.sql", root.join("sql").display());
            let cmd = || {
                let mut c = Command::new(bin);
                c.args(["--reporter", "json"]).arg(&pattern);
                c
            };
            match cmd().output() {
                Err(e) => format!("squawk: not measured ({} failed: {e})", bin.display()),
                Ok(out) if !matches!(out.status.code(), Some(0 | 1)) => format!(
                    "squawk: not measured ({} exited {:?}: {})",
                    bin.display(),
                    out.status.code(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
                Ok(out) => {
                    let issues: Vec<serde_json::Value> =
                        serde_json::from_slice(&out.stdout).unwrap_or_default();
                    let mut by_rule: BTreeMap<String, usize> = BTreeMap::new();
                    for i in &issues {
                        let r = i["rule_name"].as_str().unwrap_or("?").to_string();
                        *by_rule.entry(r).or_default() += 1;
                    }
                    let files_with: std::collections::BTreeSet<&str> =
                        issues.iter().filter_map(|i| i["file"].as_str()).collect();
                    let (mut secs, mut cpu) = (Vec::new(), Vec::new());
                    for _ in 0..runs {
                        let (s, c, _, _) = time_command(&mut cmd());
                        secs.push(s);
                        cpu.push(c);
                    }
                    rows.push(Row {
                        tool: format!("{version} `--reporter json`"),
                        input: ".sql only",
                        files: corpus.sql_files,
                        bytes: corpus.sql_bytes,
                        secs,
                        cpu,
                        note: format!(
                            "exit {}, {} issues in {} files",
                            out.status.code().unwrap_or(-1),
                            issues.len(),
                            files_with.len()
                        ),
                    });
                    let mut top: Vec<_> = by_rule.into_iter().collect();
                    top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
                    let top: Vec<String> = top.iter().map(|(r, n)| format!("{r} {n}")).collect();
                    format!(
                        "squawk ({}) issues on the .sql files by rule: {}",
                        bin.display(),
                        top.join(", ")
                    )
                }
            }
        }
    };

    println!("| tool | input | files | MB | median s | files/s | MB/s | CPU s | note |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|---|");
    for r in &mut rows {
        r.print();
    }
    println!();
    println!("{squawk_line}");
    let names = ["read", "plan", "check", "render_json"];
    let parts: Vec<String> = names
        .iter()
        .zip(stages.iter_mut())
        .map(|(n, v)| format!("{n} {:.1} ms", median(v) * 1e3))
        .collect();
    println!(
        "library stages on all files (median): {} (render_json is not in the library row; the CLI does it)",
        parts.join(", ")
    );
    for (input, migrations, findings, rules) in counts {
        let mut top: Vec<_> = rules.into_iter().collect();
        top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let top: Vec<String> = top.iter().map(|(r, n)| format!("{r} {n}")).collect();
        println!(
            "ripcord findings on {input}: {migrations} migrations, {findings} findings: {}",
            top.join(", ")
        );
    }
    println!(
        "CPU s: user+system CPU of the run (this process for the library, the child for CLI and squawk); CPU above wall time means more than one thread. squawk reads SQL only: it sees the .sql part of the corpus, not the Alembic revisions."
    );
}
