//! The Django front end: parses a migration (`APP/migrations/0003_name.py`) with
//! tree-sitter and lowers its `operations = [...]` to [`Op`]s, both directions: the
//! upgrade is the operations in order, the downgrade what Django runs to reverse them
//! (in reverse order: `AddField` drops the column again, `RunSQL` runs `reverse_sql`,
//! `RunPython` its reverse function; either without a reverse is irreversible).
//!
//! Tables are named as Django names them by default, `APP_MODEL` (a model with its own
//! `db_table` is not seen). A migration is identified as `APP.NAME` and its parents are
//! its `dependencies`, so the rollback guard walks Django's graph as it walks Alembic's.
//! It never runs the Python: an operation it does not know, or SQL built at run time,
//! is an unknown finding with its line, never silence.

use std::collections::HashMap;

use tree_sitter::Node;

use super::model::{Action, AddColumn, ConKind, DefaultKind, Lowered, Op, parse_allow};
use super::pyconst::{eval, string_value};
use super::pyparse::{NotParsed, parse};
use super::sql;
use super::syntax::{children, comments, first_error, line, text};
use super::types::{Ty, parse_ty};

/// A Django migration, lowered.
#[derive(Debug, Default)]
pub(crate) struct DjangoFile {
    /// `APP.NAME`.
    pub revision: Option<String>,
    /// The `dependencies`, as `APP.NAME`.
    pub down_revision: Option<Vec<String>>,
    pub up: Lowered,
    pub down: Lowered,
}

/// `(app, name)` from a path `.../APP/migrations/NAME.py`.
pub(crate) fn identity(path: &str) -> Option<(String, String)> {
    let parts: Vec<&str> = path.split(['/', '\\']).collect();
    let n = parts.len();
    if n < 3 || parts[n - 2] != "migrations" {
        return None;
    }
    let name = parts[n - 1].strip_suffix(".py")?;
    Some((parts[n - 3].to_string(), name.to_string()))
}

/// Whether a file is a Django migration: under a `migrations/` directory, with a
/// `Migration` class.
pub(crate) fn is_migration(path: &str, text: &str) -> bool {
    identity(path).is_some_and(|(_, name)| name != "__init__") && text.contains("class Migration")
}

/// The revision and its parents only (used by the layout to order migrations).
pub(crate) fn revision_info(path: &str, text: &str) -> (Option<String>, Vec<String>) {
    let Some((app, name)) = identity(path) else {
        return (None, Vec::new());
    };
    let deps = parse(text)
        .ok()
        .and_then(|tree| {
            let root = tree.root_node();
            migration_body(text, root).map(|body| dependencies(text, body))
        })
        .unwrap_or_default();
    (Some(format!("{app}.{name}")), deps)
}

/// The body of `class Migration(...)`.
fn migration_body<'t>(src: &str, root: Node<'t>) -> Option<Node<'t>> {
    children(root)
        .into_iter()
        .filter(|c| c.kind() == "class_definition")
        .find(|c| {
            c.child_by_field_name("name")
                .is_some_and(|n| text(src, n) == "Migration")
        })
        .and_then(|c| c.child_by_field_name("body"))
}

/// The class-level `NAME = value` assignments of the body.
fn assignments<'t>(src: &str, body: Node<'t>) -> HashMap<String, Node<'t>> {
    let mut out = HashMap::new();
    for st in children(body) {
        if st.kind() != "expression_statement" {
            continue;
        }
        for a in children(st)
            .into_iter()
            .filter(|c| c.kind() == "assignment")
        {
            if let (Some(l), Some(r)) = (
                a.child_by_field_name("left"),
                a.child_by_field_name("right"),
            ) {
                out.insert(text(src, l).to_string(), r);
            }
        }
    }
    out
}

fn dependencies(src: &str, body: Node<'_>) -> Vec<String> {
    let Some(list) = assignments(src, body).get("dependencies").copied() else {
        return Vec::new();
    };
    children(list)
        .into_iter()
        .filter(|t| t.kind() == "tuple")
        .filter_map(|t| {
            let parts = children(t);
            let app = string_value(src, *parts.first()?)?.0;
            let name = string_value(src, *parts.get(1)?)?.0;
            Some(format!("{app}.{name}"))
        })
        .collect()
}

/// Positional and keyword arguments of a call.
fn args<'n>(src: &str, call: Node<'n>) -> (Vec<Node<'n>>, HashMap<String, Node<'n>>) {
    let mut pos = Vec::new();
    let mut kw = HashMap::new();
    if let Some(list) = call.child_by_field_name("arguments") {
        for a in children(list) {
            if a.kind() == "keyword_argument" {
                if let (Some(k), Some(v)) = (
                    a.child_by_field_name("name"),
                    a.child_by_field_name("value"),
                ) {
                    kw.insert(text(src, k).to_string(), v);
                }
            } else if a.kind() != "comment" {
                pos.push(a);
            }
        }
    }
    (pos, kw)
}

/// The last segment of a call's function (`migrations.AddField` → `AddField`).
fn callee<'s>(src: &'s str, call: Node<'_>) -> &'s str {
    let f = call
        .child_by_field_name("function")
        .map(|f| text(src, f))
        .unwrap_or("");
    f.rsplit('.').next().unwrap_or(f)
}

/// Lowers a whole migration file.
pub(crate) fn lower(path: &str, src: &str) -> DjangoFile {
    let mut file = DjangoFile::default();
    let (app, name) = identity(path).unwrap_or_else(|| ("app".into(), "migration".into()));
    file.revision = Some(format!("{app}.{name}"));
    let unknown_both = |file: &mut DjangoFile, line: usize, why: String| {
        for (l, what) in [(&mut file.up, "upgrade"), (&mut file.down, "downgrade")] {
            l.line = 1;
            l.actions.push(Action::new(
                line,
                Op::Unknown {
                    rule: "parse-error",
                    why: format!("{why} (its {what} is not analysed)"),
                },
            ));
        }
    };
    let tree = match parse(src) {
        Ok(t) => t,
        Err(NotParsed { line, why }) => {
            unknown_both(&mut file, line, why);
            return file;
        }
    };
    let root = tree.root_node();
    let Some(body) = migration_body(src, root) else {
        unknown_both(&mut file, 1, "no `class Migration` found".into());
        return file;
    };
    file.down_revision = Some(dependencies(src, body));
    let vars = assignments(src, body);
    // `atomic = False`: Django runs the operations without a transaction.
    let atomic = vars.get("atomic").is_none_or(|v| v.kind() != "false");
    let funcs = children(root)
        .into_iter()
        .filter(|c| c.kind() == "function_definition")
        .filter_map(|f| Some((text(src, f.child_by_field_name("name")?).to_string(), f)))
        .collect();
    let mut l = Lowerer {
        src,
        app: app.to_ascii_lowercase(),
        funcs,
        up: Vec::new(),
        down: Vec::new(),
    };
    match vars.get("operations").copied() {
        Some(list) if matches!(list.kind(), "list" | "tuple") => {
            for op in children(list) {
                l.operation(op, 0);
            }
        }
        Some(other) => l.up.push(Action::new(
            line(other),
            Op::Unknown {
                rule: "unknown-statement",
                why: "operations is not a literal list: ripcord cannot tell what runs".into(),
            },
        )),
        None => {}
    }
    let def_line = line(body);
    file.up = Lowered {
        empty: l.up.is_empty(),
        actions: l.up,
        runner_tx: atomic,
        line: def_line,
        ..Lowered::default()
    };
    l.down.reverse();
    file.down = Lowered {
        empty: l.down.is_empty(),
        actions: l.down,
        runner_tx: atomic,
        line: def_line,
        ..Lowered::default()
    };
    // Suppressions: comments, for the direction their operation is in (both).
    for (at, comment) in comments(src, root) {
        if let Some(a) = parse_allow(&comment, at) {
            file.up.allows.push(a.clone());
            file.down.allows.push(a);
        }
    }
    if root.has_error() {
        let at = first_error(root).map(line).unwrap_or(1);
        file.up.actions.push(Action::new(
            at,
            Op::Unknown {
                rule: "parse-error",
                why: "python syntax error: ripcord could not read this part of the file".into(),
            },
        ));
        file.up.empty = false;
    }
    file
}

struct Lowerer<'s, 't> {
    src: &'s str,
    app: String,
    /// The module's functions, for what a `RunPython` runs.
    funcs: HashMap<String, Node<'t>>,
    up: Vec<Action>,
    /// In the order of the operations; reversed at the end.
    down: Vec<Action>,
}

impl Lowerer<'_, '_> {
    fn s(&self, n: Option<&Node<'_>>) -> String {
        n.map(|n| {
            string_value(self.src, *n)
                .map(|s| s.0)
                .unwrap_or_else(|| text(self.src, *n).to_string())
        })
        .unwrap_or_default()
    }

    fn table(&self, model: &str) -> String {
        format!("{}_{}", self.app, model.to_ascii_lowercase())
    }

    fn up(&mut self, at: usize, op: Op) {
        self.up.push(Action::new(at, op));
    }

    fn down(&mut self, at: usize, op: Op) {
        self.down.push(Action::new(at, op));
    }

    fn unknown(why: String) -> Op {
        Op::Unknown {
            rule: "unknown-statement",
            why,
        }
    }

    /// One entry of `operations`.
    fn operation(&mut self, op: Node<'_>, depth: usize) {
        let at = line(op);
        if op.kind() != "call" {
            self.up(
                at,
                Self::unknown(format!(
                    "operation `{}` is not a call ripcord reads",
                    short(text(self.src, op))
                )),
            );
            return;
        }
        let (pos, kw) = args(self.src, op);
        let arg = |i: usize, k: &str| kw.get(k).copied().or_else(|| pos.get(i).copied());
        let name = callee(self.src, op).to_string();
        match name.as_str() {
            "CreateModel" => {
                let table = self.table(&self.s(arg(0, "name").as_ref()));
                let mut columns = Vec::new();
                let mut not_null = Vec::new();
                if let Some(fields) = arg(1, "fields") {
                    for f in children(fields).into_iter().filter(|f| f.kind() == "tuple") {
                        let parts = children(f);
                        let (Some(n), Some(def)) = (parts.first(), parts.get(1)) else {
                            continue;
                        };
                        let col = self.field(&table, &self.s(Some(n)), *def);
                        if col.not_null {
                            not_null.push(col.column.clone());
                        }
                        columns.push((col.column, col.ty));
                    }
                }
                self.up(
                    at,
                    Op::CreateTable {
                        table: table.clone(),
                        if_not_exists: false,
                        columns,
                    },
                );
                self.up(
                    at,
                    Op::NotNullColumns {
                        table: table.clone(),
                        columns: not_null,
                    },
                );
                self.down(
                    at,
                    Op::DropTable {
                        table,
                        if_exists: false,
                        cascade: false,
                    },
                );
            }
            "DeleteModel" => {
                let table = self.table(&self.s(arg(0, "name").as_ref()));
                self.up(
                    at,
                    Op::DropTable {
                        table: table.clone(),
                        if_exists: false,
                        cascade: false,
                    },
                );
                self.down(at, Self::unknown(format!("re-creates table {table} as the earlier migrations defined it: ripcord does not know that definition, and its rows are gone")));
            }
            "RenameModel" | "AlterModelTable" => {
                let (from, to) = if name == "RenameModel" {
                    (
                        self.table(&self.s(arg(0, "old_name").as_ref())),
                        self.table(&self.s(arg(1, "new_name").as_ref())),
                    )
                } else {
                    (
                        self.table(&self.s(arg(0, "name").as_ref())),
                        self.s(arg(1, "table").as_ref()),
                    )
                };
                self.up(
                    at,
                    Op::RenameTable {
                        table: from.clone(),
                        to: to.clone(),
                    },
                );
                self.down(
                    at,
                    Op::RenameTable {
                        table: to,
                        to: from,
                    },
                );
            }
            "AddField" => {
                let table = self.table(&self.s(arg(0, "model_name").as_ref()));
                let column = self.s(arg(1, "name").as_ref());
                let Some(def) = arg(2, "field") else {
                    self.up(at, Self::unknown("AddField without a field".into()));
                    return;
                };
                let add = self.field(&table, &column, def);
                let index = add.references.is_some() || self.kw_true(def, "db_index");
                let col = add.column.clone();
                self.up(at, Op::AddColumn(Box::new(add)));
                if index {
                    // Django indexes a ForeignKey (and a db_index field) in the same
                    // migration, without CONCURRENTLY.
                    self.up(
                        at,
                        Op::CreateIndex {
                            table: table.clone(),
                            name: None,
                            columns: vec![col.clone()],
                            concurrently: false,
                            unique: false,
                            if_not_exists: false,
                        },
                    );
                }
                self.down(
                    at,
                    Op::DropColumn {
                        table,
                        column: col,
                        if_exists: false,
                        cascade: false,
                    },
                );
            }
            "RemoveField" => {
                let table = self.table(&self.s(arg(0, "model_name").as_ref()));
                let column = self.s(arg(1, "name").as_ref());
                self.up(
                    at,
                    Op::DropColumn {
                        table: table.clone(),
                        column: column.clone(),
                        if_exists: false,
                        cascade: false,
                    },
                );
                self.down(at, Self::unknown(format!("re-adds {table}.{column} as the earlier migrations defined it: ripcord does not know that definition, and its values are gone")));
            }
            "AlterField" => {
                let table = self.table(&self.s(arg(0, "model_name").as_ref()));
                let column = self.s(arg(1, "name").as_ref());
                let Some(def) = arg(2, "field") else {
                    self.up(at, Self::unknown("AlterField without a field".into()));
                    return;
                };
                let f = self.field(&table, &column, def);
                if let Some(to) = f.ty.clone() {
                    self.up(
                        at,
                        Op::AlterType {
                            table: table.clone(),
                            column: column.clone(),
                            to,
                            from: None,
                            using: false,
                        },
                    );
                }
                if f.not_null {
                    self.up(
                        at,
                        Op::RequireNotNull {
                            table: table.clone(),
                            column: column.clone(),
                        },
                    );
                } else {
                    self.up(
                        at,
                        Op::DropNotNull {
                            table: table.clone(),
                            column: column.clone(),
                        },
                    );
                }
                self.down(at, Self::unknown(format!("changes {table}.{column} back to the earlier migrations' definition: ripcord does not know it")));
            }
            "RenameField" => {
                let table = self.table(&self.s(arg(0, "model_name").as_ref()));
                let from = self.s(arg(1, "old_name").as_ref());
                let to = self.s(arg(2, "new_name").as_ref());
                self.up(
                    at,
                    Op::RenameColumn {
                        table: table.clone(),
                        from: from.clone(),
                        to: to.clone(),
                    },
                );
                self.down(
                    at,
                    Op::RenameColumn {
                        table,
                        from: to,
                        to: from,
                    },
                );
            }
            "AddIndex" | "AddIndexConcurrently" => {
                let table = self.table(&self.s(arg(0, "model_name").as_ref()));
                let index = arg(1, "index");
                let (iname, columns, unique) = match index.filter(|i| i.kind() == "call") {
                    Some(i) => {
                        let (_, ikw) = args(self.src, i);
                        let cols = ikw
                            .get("fields")
                            .map(|l| {
                                children(*l)
                                    .iter()
                                    .map(|c| self.s(Some(c)).trim_start_matches('-').to_string())
                                    .collect()
                            })
                            .unwrap_or_default();
                        (ikw.get("name").map(|n| self.s(Some(n))), cols, false)
                    }
                    None => (None, Vec::new(), false),
                };
                let concurrently = name == "AddIndexConcurrently";
                self.up(
                    at,
                    Op::CreateIndex {
                        table,
                        name: iname.clone(),
                        columns,
                        concurrently,
                        unique,
                        if_not_exists: false,
                    },
                );
                match iname {
                    Some(n) => self.down(
                        at,
                        Op::DropIndex {
                            name: n,
                            concurrently,
                            if_exists: false,
                        },
                    ),
                    None => self.down(
                        at,
                        Self::unknown("drops an index ripcord cannot name".into()),
                    ),
                }
            }
            "RemoveIndex" | "RemoveIndexConcurrently" => {
                let iname = self.s(arg(1, "name").as_ref());
                let concurrently = name == "RemoveIndexConcurrently";
                self.up(
                    at,
                    Op::DropIndex {
                        name: iname.clone(),
                        concurrently,
                        if_exists: false,
                    },
                );
                self.down(at, Self::unknown(format!("re-creates index {iname} as the earlier migrations defined it: ripcord does not know that definition")));
            }
            "AddConstraint" | "AddConstraintNotValid" => {
                let table = self.table(&self.s(arg(0, "model_name").as_ref()));
                let c = arg(1, "constraint").filter(|c| c.kind() == "call");
                let (kind, cname) = match c {
                    Some(c) => {
                        let (_, ckw) = args(self.src, c);
                        let kind = match callee(self.src, c) {
                            "CheckConstraint" => ConKind::Check,
                            "ExclusionConstraint" => ConKind::Exclude,
                            _ => ConKind::Unique,
                        };
                        (kind, ckw.get("name").map(|n| self.s(Some(n))))
                    }
                    None => (ConKind::Unique, None),
                };
                let not_valid = name == "AddConstraintNotValid";
                self.up(
                    at,
                    Op::AddConstraint {
                        table: table.clone(),
                        name: cname.clone(),
                        kind,
                        not_valid,
                        using_index: false,
                        not_null_column: None,
                    },
                );
                match cname {
                    Some(n) => self.down(at, Op::DropConstraint { table, name: n }),
                    None => self.down(
                        at,
                        Self::unknown("drops a constraint ripcord cannot name".into()),
                    ),
                }
            }
            "ValidateConstraint" => {
                let table = self.table(&self.s(arg(0, "model_name").as_ref()));
                let cname = self.s(arg(1, "name").as_ref());
                self.up(at, Op::ValidateConstraint { table, name: cname });
            }
            "RemoveConstraint" => {
                let table = self.table(&self.s(arg(0, "model_name").as_ref()));
                let cname = self.s(arg(1, "name").as_ref());
                self.up(
                    at,
                    Op::DropConstraint {
                        table: table.clone(),
                        name: cname.clone(),
                    },
                );
                self.down(at, Self::unknown(format!("re-adds constraint {cname} on {table} as the earlier migrations defined it: ripcord does not know that definition")));
            }
            "RunSQL" => {
                let forward = arg(0, "sql");
                let reverse = arg(1, "reverse_sql");
                if let Some(f) = forward {
                    self.sql(f, at, true);
                }
                match reverse {
                    None => self.down(at, Op::Irreversible),
                    Some(r) if text(self.src, r).ends_with(".noop") => {}
                    Some(r) => self.sql(r, at, false),
                }
            }
            "RunPython" => {
                let forward = arg(0, "code");
                let reverse = arg(1, "reverse_code");
                if let Some(f) = forward.filter(|f| !text(self.src, *f).ends_with(".noop")) {
                    let actions = self.python_code(f, at);
                    self.up.extend(actions);
                }
                match reverse {
                    None => self.down(at, Op::Irreversible),
                    Some(r) if text(self.src, r).ends_with(".noop") => {}
                    Some(r) => {
                        let actions = self.python_code(r, at);
                        self.down.extend(actions.into_iter().rev());
                    }
                }
            }
            "SeparateDatabaseAndState" => {
                // Only the database operations touch the database.
                if let Some(list) = arg(0, "database_operations") {
                    if depth < 8 {
                        for o in children(list) {
                            self.operation(o, depth + 1);
                        }
                    }
                } else {
                    self.up(
                        at,
                        Op::Inert {
                            what: "state-only operations".into(),
                        },
                    );
                }
            }
            "AlterModelOptions"
            | "AlterModelManagers"
            | "AlterModelTableComment"
            | "AlterOrderWithRespectTo" => {
                self.up(
                    at,
                    Op::Inert {
                        what: format!("{name} (Django state only)"),
                    },
                );
            }
            other => {
                self.up(
                    at,
                    Self::unknown(format!("ripcord does not analyse Django's {other}")),
                );
            }
        }
    }

    /// What a `RunPython` function does: the SQL its `schema_editor.execute(...)` or
    /// `cursor.execute(...)` calls run (read as SQL, at their own lines), and, when it
    /// writes through models (or ripcord cannot see into it), a data migration naming
    /// the model it gets with `apps.get_model`.
    fn python_code(&self, code: Node<'_>, at: usize) -> Vec<Action> {
        let name = text(self.src, code).to_string();
        let orm = |model: Option<String>| {
            Action::new(
                at,
                Op::OrmWrite {
                    call: format!("RunPython({name})"),
                    model,
                },
            )
        };
        let Some(def) = self.funcs.get(&name).copied() else {
            return vec![orm(None)];
        };
        let mut out = Vec::new();
        let mut model = None;
        let mut writes = false;
        let none = |_: &str| None;
        let mut calls = Vec::new();
        let mut cursor = def.walk();
        loop {
            let n = cursor.node();
            if n.kind() == "call" {
                calls.push(n);
            }
            if cursor.goto_first_child() {
                continue;
            }
            let mut done = false;
            loop {
                if cursor.node() == def {
                    done = true;
                    break;
                }
                if cursor.goto_next_sibling() {
                    break;
                }
                if !cursor.goto_parent() {
                    done = true;
                    break;
                }
            }
            if done {
                break;
            }
        }
        for n in calls {
            let method = n
                .child_by_field_name("function")
                .filter(|f| f.kind() == "attribute")
                .and_then(|f| f.child_by_field_name("attribute"))
                .map(|a| text(self.src, a))
                .unwrap_or("");
            let (pos, _) = args(self.src, n);
            match method {
                "execute" => match pos.first().map(|a| eval(self.src, *a, &none, 0)) {
                    Some(Ok((sql_text, first))) => {
                        for mut a in sql::lower(&sql_text, first).actions {
                            a.anchor = Some(at);
                            out.push(a);
                        }
                    }
                    Some(Err(part)) => out.push(Action::new(
                        line(n),
                        Op::Unknown {
                            rule: "dynamic-sql",
                            why: format!("RunPython({name}) runs SQL built at run time from {part}: ripcord cannot read which statement it is"),
                        },
                    )),
                    None => {}
                },
                "get_model" => {
                    if let Some(m) = pos.get(1).and_then(|m| string_value(self.src, *m)) {
                        model.get_or_insert(m.0);
                    }
                }
                "save" | "update" | "bulk_update" | "bulk_create" | "create" | "delete"
                | "get_or_create" | "update_or_create" => writes = true,
                _ => {}
            }
        }
        if writes || out.is_empty() {
            out.insert(0, orm(model));
        }
        out
    }

    fn kw_true(&self, call: Node<'_>, key: &str) -> bool {
        call.kind() == "call"
            && args(self.src, call)
                .1
                .get(key)
                .is_some_and(|v| v.kind() == "true")
    }

    /// A RunSQL argument: a string, a list of strings (or of (sql, params) tuples).
    fn sql(&mut self, n: Node<'_>, at: usize, up: bool) {
        let items: Vec<Node<'_>> = if matches!(n.kind(), "list" | "tuple") {
            children(n)
                .into_iter()
                .map(|c| {
                    if c.kind() == "tuple" {
                        c.named_child(0).unwrap_or(c)
                    } else {
                        c
                    }
                })
                .collect()
        } else {
            vec![n]
        };
        for item in items {
            let none = |_: &str| None;
            let mut actions = match eval(self.src, item, &none, 0) {
                Ok((text, first)) => {
                    let script = sql::lower(&text, first);
                    if script.actions.is_empty() {
                        vec![Action::new(
                            at,
                            Op::Inert {
                                what: "empty SQL".into(),
                            },
                        )]
                    } else {
                        script.actions
                    }
                }
                Err(part) => vec![Action::new(
                    line(item),
                    Op::Unknown {
                        rule: "dynamic-sql",
                        why: format!(
                            "RunSQL runs SQL built at run time from {part}: ripcord cannot read which statement it is"
                        ),
                    },
                )],
            };
            for a in &mut actions {
                a.anchor = Some(at);
            }
            if up {
                self.up.extend(actions);
            } else {
                // Kept in order within the one operation when the list is reversed.
                self.down.extend(actions.into_iter().rev());
            }
        }
    }

    /// A model field: its column, type, nullability, default and references.
    fn field(&self, table: &str, column: &str, def: Node<'_>) -> AddColumn {
        let mut add = AddColumn {
            table: table.to_string(),
            column: column.to_string(),
            ..AddColumn::default()
        };
        if def.kind() != "call" {
            return add;
        }
        let (pos, kw) = args(self.src, def);
        let kind = callee(self.src, def);
        let num = |k: &str| {
            kw.get(k)
                .and_then(|v| text(self.src, *v).parse::<u64>().ok())
        };
        add.ty = Some(match kind {
            "CharField" | "SlugField" | "EmailField" | "URLField" => {
                Ty::Varchar(num("max_length").or(match kind {
                    "SlugField" => Some(50),
                    "EmailField" => Some(254),
                    "URLField" => Some(200),
                    _ => None,
                }))
            }
            "TextField" => Ty::Text,
            "IntegerField" | "PositiveIntegerField" => Ty::Int,
            "SmallIntegerField" | "PositiveSmallIntegerField" => Ty::SmallInt,
            "BigIntegerField" | "PositiveBigIntegerField" => Ty::BigInt,
            "DecimalField" => match (num("max_digits"), num("decimal_places")) {
                (Some(p), Some(s)) => Ty::Numeric(Some((p, s))),
                _ => Ty::Numeric(None),
            },
            "DateTimeField" => Ty::Timestamp { tz: true },
            "AutoField" | "BigAutoField" | "SmallAutoField" => {
                add.identity_or_serial = true;
                Ty::Serial
            }
            "ForeignKey" | "OneToOneField" => {
                add.references = Some(self.s(pos.first().or(kw.get("to"))));
                add.unique = kind == "OneToOneField";
                Ty::BigInt
            }
            other => parse_ty(&other.trim_end_matches("Field").to_ascii_lowercase()),
        });
        let truthy = |k: &str| kw.get(k).is_some_and(|v| v.kind() == "true");
        add.primary_key = truthy("primary_key");
        add.unique |= truthy("unique") || add.primary_key;
        // Django's fields are NOT NULL unless `null=True`.
        add.not_null = !truthy("null");
        if let Some(d) = kw.get("db_default") {
            // A database default (Django 5): a Python value is a constant; Now() is
            // stable; any other expression may be volatile.
            add.default = Some(match d.kind() {
                "call" => match callee(self.src, *d) {
                    "Now" => DefaultKind::Stable("now()".into()),
                    "Value" => DefaultKind::Constant,
                    _ => DefaultKind::Volatile(format!("`{}`", short(text(self.src, *d)))),
                },
                _ => DefaultKind::Constant,
            });
        } else if kw.contains_key("default") && add.not_null {
            // Django fills existing rows with the default and then drops it from the
            // column: code that does not set the field (the old code) gets NOT NULL
            // violations.
            add.orm_default_only = true;
            add.default = Some(DefaultKind::Constant);
        }
        add
    }
}

fn short(s: &str) -> String {
    let one: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    one.chars().take(40).collect()
}
