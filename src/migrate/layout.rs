//! Recognises migration layouts from paths and pairs each upgrade with its downgrade:
//! Alembic `versions/*.py`, diesel `DIR/up.sql` + `DIR/down.sql`, golang-migrate
//! `N_name.up.sql` / `N_name.down.sql`, Flyway `V1__x.sql` / `U1__x.sql`, dbmate and goose
//! files with up and down sections, and plain `.sql`. diesel's per-migration
//! `metadata.toml` (`run_in_transaction = false`) is read here too, from its text.
//!
//! Pure: it sees paths and text only; it never reads the disk. It orders migrations the
//! way they run (Alembic along the revision chain, the rest by version), because the
//! checker learns column types and indexes from earlier migrations.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap, HashSet};

use super::{Kind, Layout, Migration, Script, SourceFile, alembic, django, rails};

/// Pairs up/down files and recognises layouts.
pub fn plan(mut files: Vec<SourceFile>) -> Vec<Migration> {
    files.sort_by(|a, b| run_order(&a.path, &b.path));
    let mut sql = Vec::new();
    let mut py = Vec::new();
    let mut dj = Vec::new();
    let mut rb = Vec::new();
    // key -> (layout, up, down)
    let mut pairs: BTreeMap<String, (Layout, Option<SourceFile>, Option<SourceFile>)> =
        BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    // diesel's `DIR/metadata.toml`, by the same key as its up.sql and down.sql.
    let mut diesel_metadata: HashMap<String, String> = HashMap::new();
    for f in files {
        let (dir, base) = match f.path.rfind(['/', '\\']) {
            Some(i) => (f.path[..i].to_string(), f.path[i + 1..].to_string()),
            None => (String::new(), f.path.clone()),
        };
        let lower = base.to_ascii_lowercase();
        if lower.ends_with(".rb") {
            if rails::is_migration(&f.path, &f.text) {
                rb.push(f);
            }
            continue;
        }
        if lower.ends_with(".py") && django::is_migration(&f.path, &f.text) {
            dj.push(f);
            continue;
        }
        if lower.ends_with(".py") {
            let is_revision = f.text.contains("def upgrade")
                || (f.path.contains("versions/") && lower != "__init__.py");
            if is_revision && lower != "env.py" {
                py.push(f);
            }
            continue;
        }
        if lower == "metadata.toml" {
            diesel_metadata.insert(format!("{dir}/"), f.text);
            continue;
        }
        if !lower.ends_with(".sql") {
            continue;
        }
        let pair = if lower == "up.sql" || lower == "down.sql" {
            Some((Layout::Diesel, format!("{dir}/"), lower == "up.sql"))
        } else if let Some(stem) = lower.strip_suffix(".up.sql") {
            Some((Layout::GolangMigrate, format!("{dir}/{stem}"), true))
        } else if let Some(stem) = lower.strip_suffix(".down.sql") {
            Some((Layout::GolangMigrate, format!("{dir}/{stem}"), false))
        } else if let Some(version) = flyway_version(&base, 'V') {
            Some((Layout::Flyway, format!("{dir}/V{version}"), true))
        } else {
            flyway_version(&base, 'U')
                .map(|version| (Layout::Flyway, format!("{dir}/V{version}"), false))
        };
        match pair {
            Some((layout, key, is_up)) => {
                let entry = pairs.entry(key.clone()).or_insert_with(|| {
                    order.push(key.clone());
                    (layout, None, None)
                });
                let slot = if is_up { &mut entry.1 } else { &mut entry.2 };
                if slot.is_none() {
                    *slot = Some(f);
                } else {
                    // Two files for one slot (e.g. V1__a.sql and V1__b.sql): keep both by
                    // giving the second its own migration.
                    sql.push((f.path.clone(), single(f)));
                }
            }
            None => sql.push((f.path.clone(), single(f))),
        }
    }
    for key in order {
        let Some((layout, up, down)) = pairs.remove(&key) else {
            continue;
        };
        let path = up
            .as_ref()
            .or(down.as_ref())
            .map(|f| f.path.clone())
            .unwrap_or_default();
        let script = |f: SourceFile| Script {
            path: f.path,
            text: f.text,
            first_line: 1,
        };
        let without_transaction = layout == Layout::Diesel
            && diesel_metadata
                .get(&key)
                .is_some_and(|text| !diesel_run_in_transaction(text));
        sql.push((
            path.clone(),
            Migration {
                path,
                kind: Kind::Sql,
                layout,
                up: up.map(script),
                down: down.map(script),
                without_transaction,
            },
        ));
    }
    sql.sort_by(|a, b| run_order(&a.0, &b.0));
    let mut out: Vec<Migration> = sql.into_iter().map(|(_, m)| m).collect();
    out.extend(order_by_parents(py, Kind::Alembic, Layout::Alembic, |f| {
        let (rev, down) = alembic::revision_info(&f.text);
        (rev, down.unwrap_or_default())
    }));
    out.extend(order_by_parents(dj, Kind::Django, Layout::Django, |f| {
        django::revision_info(&f.path, &f.text)
    }));
    // Rails runs migrations by version (the timestamp in the name), as sorted above.
    out.extend(rb.into_iter().map(|f| Migration {
        path: f.path.clone(),
        kind: Kind::Rails,
        layout: Layout::Rails,
        up: Some(Script {
            path: f.path.clone(),
            text: f.text.clone(),
            first_line: 1,
        }),
        down: Some(Script {
            path: f.path,
            text: f.text,
            first_line: 1,
        }),
        without_transaction: false,
    }));
    out
}

/// What diesel makes of a migration's `metadata.toml`: it deserialises the file into
/// `{ #[serde(default)] run_in_transaction: bool, .. }` and falls back to its default
/// (`true`) when that fails. So a key of the wrong type, or a file that is not TOML,
/// means a transaction; a valid file without the key means none (serde's default for
/// the field is `false`), as does `run_in_transaction = false`.
fn diesel_run_in_transaction(text: &str) -> bool {
    match toml_edit::Document::parse(text) {
        Ok(doc) => match doc.as_table().get("run_in_transaction") {
            None => false,
            Some(item) => item.as_bool().unwrap_or(true),
        },
        Err(_) => true,
    }
}

/// A plain `.sql` file, or one with dbmate/goose up and down sections.
fn single(f: SourceFile) -> Migration {
    if let Some((up, down)) = sections(&f) {
        return Migration {
            path: f.path.clone(),
            kind: Kind::Sql,
            layout: Layout::Sections,
            up: Some(up),
            down,
            without_transaction: false,
        };
    }
    Migration {
        path: f.path.clone(),
        kind: Kind::Sql,
        layout: Layout::Plain,
        up: Some(Script {
            path: f.path,
            text: f.text,
            first_line: 1,
        }),
        down: None,
        without_transaction: false,
    }
}

fn sections(f: &SourceFile) -> Option<(Script, Option<Script>)> {
    let marker = |l: &str, which: &str| {
        let t = l.trim().to_ascii_lowercase();
        t.starts_with(&format!("-- migrate:{which}"))
            || t.starts_with(&format!("-- +goose {which}"))
    };
    let lines: Vec<&str> = f.text.split('\n').collect();
    let up_at = lines.iter().position(|l| marker(l, "up"))?;
    let down_at = lines.iter().position(|l| marker(l, "down"));
    let take = |from: usize, to: usize| Script {
        path: f.path.clone(),
        text: lines[from..to].join("\n"),
        first_line: from + 1,
    };
    let up_end = match down_at {
        Some(d) if d > up_at => d,
        _ => lines.len(),
    };
    let up = take(up_at, up_end);
    let down = down_at.map(|d| {
        let end = if up_at > d { up_at } else { lines.len() };
        take(d, end)
    });
    Some((up, down))
}

/// `V1_2__name.sql` -> `1_2` (Flyway's version part), for the given prefix letter.
fn flyway_version(base: &str, prefix: char) -> Option<String> {
    let rest = base.strip_prefix(prefix)?;
    let (version, _) = rest.split_once("__")?;
    (!version.is_empty()
        && version
            .chars()
            .all(|c| c.is_ascii_digit() || c == '.' || c == '_'))
    .then(|| version.replace('_', "."))
}

/// Orders Alembic revisions (or Django migrations) parents first; those whose chain
/// cannot be read come last, in path order.
fn order_by_parents(
    files: Vec<SourceFile>,
    kind: Kind,
    layout: Layout,
    info: impl Fn(&SourceFile) -> (Option<String>, Vec<String>),
) -> Vec<Migration> {
    let infos: Vec<(SourceFile, Option<String>, Vec<String>)> = files
        .into_iter()
        .map(|f| {
            let (rev, down) = info(&f);
            (f, rev, down)
        })
        .collect();
    let known: HashSet<String> = infos.iter().filter_map(|i| i.1.clone()).collect();
    let mut done: HashSet<String> = HashSet::new();
    let mut emitted = vec![false; infos.len()];
    let mut order = Vec::new();
    loop {
        let mut progressed = false;
        for (i, (_, rev, parents)) in infos.iter().enumerate() {
            if emitted[i] || rev.is_none() {
                continue;
            }
            if parents
                .iter()
                .all(|p| done.contains(p) || !known.contains(p))
            {
                emitted[i] = true;
                if let Some(r) = rev {
                    done.insert(r.clone());
                }
                order.push(i);
                progressed = true;
            }
        }
        if !progressed {
            break;
        }
    }
    // Cycles and revisions without an id, in path order.
    order.extend((0..infos.len()).filter(|i| !emitted[*i]));
    let mut slots: HashMap<usize, SourceFile> = HashMap::new();
    for (i, (f, _, _)) in infos.into_iter().enumerate() {
        slots.insert(i, f);
    }
    order
        .into_iter()
        .filter_map(|i| slots.remove(&i))
        .map(|f| Migration {
            path: f.path.clone(),
            kind,
            layout,
            up: Some(Script {
                path: f.path.clone(),
                text: f.text.clone(),
                first_line: 1,
            }),
            down: Some(Script {
                path: f.path,
                text: f.text,
                first_line: 1,
            }),
            without_transaction: false,
        })
        .collect()
}

/// The order migration files run in: by directory, then by the version in the name
/// as numbers (`9_x` before `10_x`, Flyway's `V1__x` before `V1.1__y`; names without a
/// version after those with one), then by [`natural`] order of the name.
pub(crate) fn run_order(a: &str, b: &str) -> Ordering {
    let split = |p: &str| match p.rfind(['/', '\\']) {
        Some(i) => (p[..i].to_string(), p[i + 1..].to_string()),
        None => (String::new(), p.to_string()),
    };
    let ((dir_a, base_a), (dir_b, base_b)) = (split(a), split(b));
    let version = |base: &str| version(strip_extension(base));
    natural(&dir_a, &dir_b)
        .then_with(|| match (version(&base_a), version(&base_b)) {
            (Some(x), Some(y)) => compare_versions(&x, &y),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => Ordering::Equal,
        })
        .then_with(|| natural(&base_a, &base_b))
}

/// A file name without `.up.sql`, `.down.sql`, `.sql` or `.py` (other dots stay:
/// Flyway versions hold them).
pub(crate) fn strip_extension(name: &str) -> &str {
    let lower = name.to_ascii_lowercase();
    for ext in [".up.sql", ".down.sql", ".sql", ".py"] {
        if lower.ends_with(ext) {
            return &name[..name.len() - ext.len()];
        }
    }
    name.split('.').next().unwrap_or(name)
}

/// The version in a migration's name (without extension), as the runners read it:
/// Flyway's `V1_1__x` / `U1.1__x` → [1, 1], golang-migrate's and goose's `0010_x` →
/// [10], diesel's `2024-01-01-000000_x` → [20240101000000]. `None` when there is none.
pub(crate) fn version(name: &str) -> Option<Vec<String>> {
    let flyway = name
        .strip_prefix(['V', 'v', 'U', 'u'])
        .and_then(|rest| rest.split_once("__"))
        .map(|(v, _)| v.replace('_', "."));
    let v = match flyway {
        Some(v) => v,
        None => name.split('_').next()?.replace('-', ""),
    };
    version_parts(&v)
}

/// `1.01` → ["1", "1"]: dot-separated numbers without leading zeros, and without
/// trailing zero parts (Flyway compares `1.0` equal to `1`); `None` unless every part
/// is a number.
pub(crate) fn version_parts(v: &str) -> Option<Vec<String>> {
    let mut parts: Vec<String> = v
        .split('.')
        .map(|p| {
            (!p.is_empty() && p.chars().all(|c| c.is_ascii_digit())).then(|| {
                let t = p.trim_start_matches('0');
                if t.is_empty() { "0" } else { t }.to_string()
            })
        })
        .collect::<Option<_>>()?;
    while parts.len() > 1 && parts.last().is_some_and(|p| p == "0") {
        parts.pop();
    }
    Some(parts)
}

/// Compares two [`version_parts`] part by part as numbers; a prefix comes first.
fn compare_versions(a: &[String], b: &[String]) -> Ordering {
    for (x, y) in a.iter().zip(b) {
        let ord = x.len().cmp(&y.len()).then_with(|| x.cmp(y));
        if ord != Ordering::Equal {
            return ord;
        }
    }
    a.len().cmp(&b.len())
}

/// Compares paths with digit runs as numbers, so `10_x` sorts after `9_x`.
pub(crate) fn natural(a: &str, b: &str) -> Ordering {
    let mut a = a.chars().peekable();
    let mut b = b.chars().peekable();
    loop {
        match (a.peek().copied(), b.peek().copied()) {
            (None, None) => return Ordering::Equal,
            (None, _) => return Ordering::Less,
            (_, None) => return Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let mut na = String::new();
                while let Some(c) = a.peek().copied().filter(char::is_ascii_digit) {
                    na.push(c);
                    a.next();
                }
                let mut nb = String::new();
                while let Some(c) = b.peek().copied().filter(char::is_ascii_digit) {
                    nb.push(c);
                    b.next();
                }
                let ta = na.trim_start_matches('0');
                let tb = nb.trim_start_matches('0');
                let ord = ta.len().cmp(&tb.len()).then_with(|| ta.cmp(tb));
                if ord != Ordering::Equal {
                    return ord;
                }
            }
            (Some(x), Some(y)) => {
                if x != y {
                    return x.cmp(&y);
                }
                a.next();
                b.next();
            }
        }
    }
}
