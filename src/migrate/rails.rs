//! The Rails front end: parses a migration (`db/migrate/20240101120000_x.rb`) with
//! tree-sitter-ruby and lowers `change`, or `up` and `down`, to [`Op`]s. A `change`
//! method's downgrade is what Rails runs to reverse it (`add_column` removes the column,
//! `rename_column` renames back, `reversible` runs its `down` block); what Rails cannot
//! reverse (`execute`, `remove_column` without a type, `change_column`) is irreversible.
//! `disable_ddl_transaction!` runs the migration without a transaction; statements inside
//! `safety_assured { }` (strong_migrations) are accepted with that as the reason.
//!
//! Tables are the symbols or strings the calls name. The rollback guard orders Rails
//! migrations by their version, like the other ordered layouts. It never runs the Ruby:
//! a call it does not know, or SQL built at run time, is a finding with its line.

use std::collections::HashMap;

use tree_sitter::{Node, Parser};

use super::model::{Action, AddColumn, Allow, ConKind, DefaultKind, Lowered, Op};
use super::sql;
use super::syntax::{children, line, parse_bounded};
use super::types::{Ty, classify_default_text, parse_ty};

/// Whether a file is a Rails migration.
pub(crate) fn is_migration(path: &str, text: &str) -> bool {
    path.ends_with(".rb") && text.contains("ActiveRecord::Migration")
}

/// A Rails migration, lowered.
#[derive(Debug, Default)]
pub(crate) struct RailsFile {
    pub up: Lowered,
    pub down: Lowered,
}

/// What running a method, or one direction of `change`, does.
#[derive(Default)]
struct Side {
    actions: Vec<Action>,
    allows: Vec<Allow>,
}

struct Walker<'s> {
    src: &'s str,
    /// `heredoc_beginning` start byte -> its body text and first line.
    heredocs: HashMap<usize, (String, usize)>,
    up: Side,
    /// The reverse of a `change` method, in the order of its statements (reversed at
    /// the end); `None` outside `change`.
    down: Option<Side>,
    /// Inside `safety_assured { }`.
    assured: bool,
    orm_reported: bool,
    depth: usize,
}

/// Lowers a whole migration file.
pub(crate) fn lower(src: &str) -> RailsFile {
    let mut file = RailsFile::default();
    let failed = |file: &mut RailsFile, line: usize, why: &str| {
        for l in [&mut file.up, &mut file.down] {
            l.line = line;
            l.actions.push(Action::new(
                line,
                Op::Unknown {
                    rule: "parse-error",
                    why: why.to_string(),
                },
            ));
        }
    };
    let mut parser = Parser::new();
    if parser
        .set_language(&tree_sitter_ruby::LANGUAGE.into())
        .is_err()
    {
        failed(&mut file, 1, "the Ruby parser could not be started");
        return file;
    }
    let tree = match parse_bounded(&mut parser, src) {
        Ok(tree) => tree,
        Err(e) => {
            let (line, why) = e.explain("Ruby");
            failed(&mut file, line, &why);
            return file;
        }
    };
    let root = tree.root_node();
    let Some(class) = find(root, &|n| n.kind() == "class", 0) else {
        failed(&mut file, 1, "no migration class found");
        return file;
    };
    let body = class.child_by_field_name("body");
    let methods: Vec<Node<'_>> = body
        .map(children)
        .unwrap_or_default()
        .into_iter()
        .filter(|m| m.kind() == "method")
        .collect();
    let method = |name: &str| {
        methods.iter().copied().find(|m| {
            m.child_by_field_name("name")
                .is_some_and(|n| src.get(n.byte_range()) == Some(name))
        })
    };
    // `disable_ddl_transaction!` at class level.
    let tx = !body.map(children).unwrap_or_default().iter().any(|n| {
        src.get(n.byte_range())
            .is_some_and(|t| t.trim() == "disable_ddl_transaction!")
    });
    let mut heredocs = HashMap::new();
    let (mut begins, mut bodies) = (Vec::new(), Vec::new());
    collect(root, &mut |n| match n.kind() {
        "heredoc_beginning" => begins.push(n.start_byte()),
        "heredoc_body" => {
            let end = children(n)
                .into_iter()
                .find(|c| c.kind() == "heredoc_end")
                .map_or(n.end_byte(), |e| e.start_byte());
            let text = src.get(n.start_byte()..end).unwrap_or("").to_string();
            bodies.push((text, line(n)));
        }
        _ => {}
    });
    for (b, body) in begins.into_iter().zip(bodies) {
        heredocs.insert(b, body);
    }
    let new = |down: Option<Side>| Walker {
        src,
        heredocs: heredocs.clone(),
        up: Side::default(),
        down,
        assured: false,
        orm_reported: false,
        depth: 0,
    };
    let finish = |side: Side, at: usize, missing: bool| Lowered {
        empty: side.actions.is_empty() && !missing,
        actions: side.actions,
        allows: side.allows,
        runner_tx: tx,
        missing,
        line: at,
        ..Lowered::default()
    };
    if let Some(change) = method("change") {
        let mut w = new(Some(Side::default()));
        w.body(change);
        let mut down = w.down.take().unwrap_or_default();
        down.actions.reverse();
        file.up = finish(w.up, line(change), false);
        file.down = finish(down, line(change), false);
    } else {
        match method("up") {
            Some(up) => {
                let mut w = new(None);
                w.body(up);
                file.up = finish(w.up, line(up), false);
            }
            None => {
                file.up = finish(Side::default(), line(class), false);
                file.up.actions.push(Action::new(
                    line(class),
                    Op::Unknown {
                        rule: "parse-error",
                        why: "no change or up method found".into(),
                    },
                ));
                file.up.empty = false;
            }
        }
        match method("down") {
            Some(down) => {
                let mut w = new(None);
                w.body(down);
                file.down = finish(w.up, line(down), false);
            }
            None => file.down = finish(Side::default(), line(class), true),
        }
    }
    if root.has_error() {
        let at = find(root, &|n| n.is_error() || n.is_missing(), 0)
            .map(line)
            .unwrap_or(1);
        file.up.actions.push(Action::new(
            at,
            Op::Unknown {
                rule: "parse-error",
                why: "ruby syntax error: ripcord could not read this part of the file".into(),
            },
        ));
        file.up.empty = false;
    }
    file
}

fn find<'t>(n: Node<'t>, pred: &dyn Fn(Node<'t>) -> bool, depth: usize) -> Option<Node<'t>> {
    if pred(n) {
        return Some(n);
    }
    if depth > 200 {
        return None;
    }
    children(n)
        .into_iter()
        .find_map(|c| find(c, pred, depth + 1))
}

fn collect<'t>(n: Node<'t>, f: &mut dyn FnMut(Node<'t>)) {
    let mut cursor = n.walk();
    loop {
        f(cursor.node());
        if cursor.goto_first_child() {
            continue;
        }
        loop {
            if cursor.goto_next_sibling() {
                break;
            }
            if !cursor.goto_parent() {
                return;
            }
        }
    }
}

/// Rails' statement helpers that change nothing in the schema.
const HARMLESS: &[&str] = &["say", "say_with_time", "puts", "reset_column_information"];

/// ActiveRecord calls that write rows.
const ROW_WRITES: &[&str] = &[
    "update_all",
    "delete_all",
    "destroy_all",
    "update_column",
    "update_columns",
    "update!",
    "save!",
    "insert_all",
    "upsert_all",
    "find_each",
    "in_batches",
];

impl Walker<'_> {
    fn text(&self, n: Node<'_>) -> &str {
        self.src.get(n.byte_range()).unwrap_or("")
    }

    /// A symbol, string or constant as a name: `:users` → `users`.
    fn name(&self, n: Option<Node<'_>>) -> String {
        let Some(n) = n else {
            return String::new();
        };
        let t = self.text(n);
        match n.kind() {
            "simple_symbol" => t.trim_start_matches(':').to_string(),
            "string" => children(n)
                .into_iter()
                .filter(|c| c.kind() == "string_content")
                .map(|c| self.text(c).to_string())
                .collect(),
            _ => t.to_string(),
        }
    }

    fn body(&mut self, container: Node<'_>) {
        if self.depth > 32 {
            return;
        }
        self.depth += 1;
        let stmts = match container.child_by_field_name("body") {
            Some(b) => children(b),
            None => Vec::new(),
        };
        for st in stmts {
            self.statement(st);
        }
        self.depth -= 1;
    }

    fn push(&mut self, at: usize, up: Op, down: Option<Op>) {
        if self.assured {
            self.up.allows.push(assured(at));
        }
        self.up.actions.push(Action::new(at, up));
        if let (Some(d), Some(op)) = (self.down.as_mut(), down) {
            if self.assured {
                d.allows.push(assured(at));
            }
            d.actions.push(Action::new(at, op));
        }
    }

    fn statement(&mut self, st: Node<'_>) {
        match st.kind() {
            "call" | "identifier" => self.call(st),
            "comment" => {
                let at = line(st);
                if let Some(a) =
                    super::model::parse_allow(self.text(st).trim_start_matches('#'), at)
                {
                    self.up.allows.push(a.clone());
                    if let Some(d) = self.down.as_mut() {
                        d.allows.push(a);
                    }
                }
            }
            "if" | "unless" | "begin" => {
                for c in children(st) {
                    if matches!(c.kind(), "then" | "else" | "body_statement") {
                        for s in children(c) {
                            self.statement(s);
                        }
                    }
                }
            }
            _ => {
                // Assignments and expressions: a row write anywhere in them counts.
                let mut writes = false;
                collect(st, &mut |n| {
                    if n.kind() == "call"
                        && n.child_by_field_name("method")
                            .is_some_and(|m| ROW_WRITES.contains(&self.text(m)))
                    {
                        writes = true;
                    }
                });
                if writes {
                    self.row_write(
                        line(st),
                        self.text(st)
                            .lines()
                            .next()
                            .unwrap_or("")
                            .trim()
                            .to_string(),
                    );
                }
            }
        }
    }

    fn row_write(&mut self, at: usize, what: String) {
        if !self.orm_reported {
            self.orm_reported = true;
            let what: String = what.chars().take(60).collect();
            self.push(
                at,
                Op::OrmWrite {
                    call: format!("`{what}`"),
                    model: None,
                },
                Some(Op::Irreversible),
            );
        }
    }

    fn call(&mut self, call: Node<'_>) {
        let at = line(call);
        let (method, receiver) = if call.kind() == "identifier" {
            (self.text(call).to_string(), None)
        } else {
            (
                call.child_by_field_name("method")
                    .map(|m| self.text(m).to_string())
                    .unwrap_or_default(),
                call.child_by_field_name("receiver"),
            )
        };
        let mut pos = Vec::new();
        let mut kw: HashMap<String, Node<'_>> = HashMap::new();
        if let Some(list) = call.child_by_field_name("arguments") {
            for a in children(list) {
                if a.kind() == "pair" {
                    if let (Some(k), Some(v)) =
                        (a.child_by_field_name("key"), a.child_by_field_name("value"))
                    {
                        kw.insert(
                            self.text(k)
                                .trim_end_matches(':')
                                .trim_start_matches(':')
                                .to_string(),
                            v,
                        );
                    }
                } else {
                    pos.push(a);
                }
            }
        }
        let block = call.child_by_field_name("block");
        let sym = |w: &Self, k: &str| {
            kw.get(k)
                .map(|v| w.text(*v).trim_start_matches(':').to_string())
        };
        let src = self.src;
        let flag = |k: &str| {
            kw.get(k)
                .map(|v| src.get(v.byte_range()).unwrap_or("").to_string())
        };
        if receiver.is_some() {
            // A call on an object: a model's row write (`User.where(...).update_all`),
            // or something that changes no schema (`User.reset_column_information`).
            if ROW_WRITES.contains(&method.as_str()) {
                self.row_write(
                    at,
                    self.text(call)
                        .lines()
                        .next()
                        .unwrap_or("")
                        .trim()
                        .to_string(),
                );
            }
            return;
        }
        match method.as_str() {
            "add_column" => {
                let table = self.name(pos.first().copied());
                let column = self.name(pos.get(1).copied());
                let ty = pos
                    .get(2)
                    .map(|t| rails_type(&self.name(Some(*t)), &kw, self));
                let mut add = AddColumn {
                    table: table.clone(),
                    column: column.clone(),
                    ty,
                    ..AddColumn::default()
                };
                add.not_null = flag("null").as_deref() == Some("false");
                add.default = kw.get("default").and_then(|d| self.default(*d));
                add.if_not_exists = flag("if_not_exists").as_deref() == Some("true");
                self.push(
                    at,
                    Op::AddColumn(Box::new(add)),
                    Some(Op::DropColumn {
                        table,
                        column,
                        if_exists: false,
                        cascade: false,
                    }),
                );
            }
            "remove_column" => {
                let table = self.name(pos.first().copied());
                let column = self.name(pos.get(1).copied());
                // Reversible only with its type: Rails re-adds it as given.
                let down = pos.get(2).map(|t| {
                    let mut add = AddColumn {
                        table: table.clone(),
                        column: column.clone(),
                        ty: Some(rails_type(&self.name(Some(*t)), &kw, self)),
                        ..AddColumn::default()
                    };
                    add.not_null = flag("null").as_deref() == Some("false");
                    add.default = kw.get("default").and_then(|d| self.default(*d));
                    Op::AddColumn(Box::new(add))
                });
                let if_exists = flag("if_exists").as_deref() == Some("true");
                self.push(
                    at,
                    Op::DropColumn {
                        table,
                        column,
                        if_exists,
                        cascade: false,
                    },
                    Some(down.unwrap_or(Op::Irreversible)),
                );
            }
            "rename_column" => {
                let table = self.name(pos.first().copied());
                let from = self.name(pos.get(1).copied());
                let to = self.name(pos.get(2).copied());
                self.push(
                    at,
                    Op::RenameColumn {
                        table: table.clone(),
                        from: from.clone(),
                        to: to.clone(),
                    },
                    Some(Op::RenameColumn {
                        table,
                        from: to,
                        to: from,
                    }),
                );
            }
            "rename_table" => {
                let from = self.name(pos.first().copied());
                let to = self.name(pos.get(1).copied());
                self.push(
                    at,
                    Op::RenameTable {
                        table: from.clone(),
                        to: to.clone(),
                    },
                    Some(Op::RenameTable {
                        table: to,
                        to: from,
                    }),
                );
            }
            "change_column_null" => {
                let table = self.name(pos.first().copied());
                let column = self.name(pos.get(1).copied());
                let allow = pos.get(2).map(|v| self.text(*v) != "false").unwrap_or(true);
                let (up, down) = if allow {
                    (
                        Op::DropNotNull {
                            table: table.clone(),
                            column: column.clone(),
                        },
                        Op::SetNotNull { table, column },
                    )
                } else {
                    (
                        Op::SetNotNull {
                            table: table.clone(),
                            column: column.clone(),
                        },
                        Op::DropNotNull { table, column },
                    )
                };
                self.push(at, up, Some(down));
            }
            "change_column" => {
                let table = self.name(pos.first().copied());
                let column = self.name(pos.get(1).copied());
                let to = rails_type(&self.name(pos.get(2).copied()), &kw, self);
                self.push(
                    at,
                    Op::AlterType {
                        table,
                        column,
                        to,
                        from: None,
                        using: false,
                    },
                    Some(Op::Irreversible),
                );
            }
            "change_column_default" => {
                let table = self.name(pos.first().copied());
                self.push(
                    at,
                    Op::ChangeDefault {
                        table: table.clone(),
                    },
                    Some(Op::ChangeDefault { table }),
                );
            }
            "add_index" => {
                let table = self.name(pos.first().copied());
                let columns = match pos.get(1) {
                    Some(a) if a.kind() == "array" => children(*a)
                        .into_iter()
                        .map(|c| self.name(Some(c)))
                        .collect(),
                    Some(c) => vec![self.name(Some(*c))],
                    None => Vec::new(),
                };
                let name = sym(self, "name")
                    .map(|n| n.trim_matches('"').to_string())
                    .or_else(|| Some(format!("index_{table}_on_{}", columns.join("_and_"))));
                let concurrently = sym(self, "algorithm").as_deref() == Some("concurrently");
                let unique = flag("unique").as_deref() == Some("true");
                let down = Op::DropIndex {
                    name: name.clone().unwrap_or_default(),
                    concurrently,
                    if_exists: false,
                };
                self.push(
                    at,
                    Op::CreateIndex {
                        table,
                        name,
                        columns,
                        concurrently,
                        unique,
                        if_not_exists: flag("if_not_exists").as_deref() == Some("true"),
                    },
                    Some(down),
                );
            }
            "remove_index" => {
                let table = self.name(pos.first().copied());
                let columns: Vec<String> = match kw.get("column").or(pos.get(1)) {
                    Some(a) if a.kind() == "array" => children(*a)
                        .into_iter()
                        .map(|c| self.name(Some(c)))
                        .collect(),
                    Some(c) => vec![self.name(Some(*c))],
                    None => Vec::new(),
                };
                let name = sym(self, "name")
                    .map(|n| n.trim_matches('"').to_string())
                    .unwrap_or_else(|| format!("index_{table}_on_{}", columns.join("_and_")));
                let concurrently = sym(self, "algorithm").as_deref() == Some("concurrently");
                self.push(
                    at,
                    Op::DropIndex {
                        name: name.clone(),
                        concurrently,
                        if_exists: flag("if_exists").as_deref() == Some("true"),
                    },
                    Some(Op::CreateIndex {
                        table,
                        name: Some(name),
                        columns,
                        concurrently,
                        unique: false,
                        if_not_exists: false,
                    }),
                );
            }
            "add_foreign_key" | "add_check_constraint" => {
                let table = self.name(pos.first().copied());
                let given = sym(self, "name").map(|n| n.trim_matches('"').to_string());
                let (kind, name) = if method == "add_foreign_key" {
                    let to = self.name(pos.get(1).copied());
                    (
                        ConKind::ForeignKey,
                        given.unwrap_or_else(|| format!("fk_rails_{table}_{to}")),
                    )
                } else {
                    (ConKind::Check, given.unwrap_or_default())
                };
                let not_valid = flag("validate").as_deref() == Some("false");
                self.push(
                    at,
                    Op::AddConstraint {
                        table: table.clone(),
                        name: Some(name.clone()),
                        kind,
                        not_valid,
                        using_index: false,
                        not_null_column: None,
                    },
                    Some(Op::DropConstraint { table, name }),
                );
            }
            "validate_foreign_key" | "validate_check_constraint" => {
                let table = self.name(pos.first().copied());
                let name = sym(self, "name").unwrap_or_else(|| self.name(pos.get(1).copied()));
                self.push(at, Op::ValidateConstraint { table, name }, None);
            }
            "remove_foreign_key" | "remove_check_constraint" => {
                let table = self.name(pos.first().copied());
                let name = sym(self, "name").unwrap_or_else(|| self.name(pos.get(1).copied()));
                self.push(at, Op::DropConstraint { table, name }, Some(Op::Unknown { rule: "unknown-statement", why: format!("re-adds the constraint {method} removed: ripcord does not read its definition") }));
            }
            "add_reference" | "add_belongs_to" => {
                let table = self.name(pos.first().copied());
                let column = format!("{}_id", self.name(pos.get(1).copied()));
                let mut add = AddColumn {
                    table: table.clone(),
                    column: column.clone(),
                    ty: Some(Ty::BigInt),
                    ..AddColumn::default()
                };
                add.not_null = flag("null").as_deref() == Some("false");
                let fk = kw
                    .get("foreign_key")
                    .map(|v| self.text(*v).to_string())
                    .filter(|v| v != "false");
                // `foreign_key: { validate: false }` adds the constraint NOT VALID,
                // as its own statement.
                let not_valid_fk = fk.as_deref().is_some_and(|v| v.contains("validate: false"));
                if fk.is_some() && !not_valid_fk {
                    add.references = Some(self.name(pos.get(1).copied()));
                }
                self.push(
                    at,
                    Op::AddColumn(Box::new(add)),
                    Some(Op::DropColumn {
                        table: table.clone(),
                        column: column.clone(),
                        if_exists: false,
                        cascade: false,
                    }),
                );
                if not_valid_fk {
                    self.push(
                        at,
                        Op::AddConstraint {
                            table: table.clone(),
                            name: None,
                            kind: ConKind::ForeignKey,
                            not_valid: true,
                            using_index: false,
                            not_null_column: None,
                        },
                        None,
                    );
                }
                // Rails indexes a reference unless `index: false`.
                if flag("index").as_deref() != Some("false") {
                    let concurrently = self.text(call).contains("algorithm: :concurrently");
                    self.push(
                        at,
                        Op::CreateIndex {
                            table,
                            name: None,
                            columns: vec![column],
                            concurrently,
                            unique: false,
                            if_not_exists: false,
                        },
                        None,
                    );
                }
            }
            "create_table" => {
                let table = self.name(pos.first().copied());
                self.push(
                    at,
                    Op::CreateTable {
                        table: table.clone(),
                        if_not_exists: false,
                        columns: Vec::new(),
                    },
                    Some(Op::DropTable {
                        table,
                        if_exists: false,
                        cascade: false,
                    }),
                );
            }
            "drop_table" => {
                let table = self.name(pos.first().copied());
                // With a block Rails can re-create it; ripcord does not read the block.
                self.push(
                    at,
                    Op::DropTable {
                        table: table.clone(),
                        if_exists: flag("if_exists").as_deref() == Some("true"),
                        cascade: false,
                    },
                    Some(Op::Unknown {
                        rule: "unknown-statement",
                        why: format!("re-creates table {table}: its rows are gone"),
                    }),
                );
            }
            "execute" => {
                let sql = pos.first().and_then(|a| self.sql_text(*a));
                match sql {
                    Some((text, first)) => {
                        let script = sql::lower(&text, first);
                        let anchor = at;
                        for mut a in script.actions {
                            a.anchor = Some(anchor);
                            if self.assured {
                                self.up.allows.push(assured(a.line));
                            }
                            self.up.actions.push(a);
                        }
                        self.up.allows.extend(script.allows);
                        if let Some(d) = self.down.as_mut() {
                            d.actions.push(Action::new(at, Op::Irreversible));
                        }
                    }
                    None => self.push(at, Op::Unknown { rule: "dynamic-sql", why: "execute runs SQL built at run time (interpolation or a variable): ripcord cannot read which statement it is".into() }, Some(Op::Irreversible)),
                }
            }
            "safety_assured" => {
                let before = self.assured;
                self.assured = true;
                if let Some(b) = block {
                    self.body(b);
                }
                self.assured = before;
            }
            "reversible" => {
                // `dir.up { ... }` runs on the way up, `dir.down { ... }` on the way down.
                let Some(b) = block else { return };
                let inner = b
                    .child_by_field_name("body")
                    .map(children)
                    .unwrap_or_default();
                for st in inner {
                    let m = st
                        .child_by_field_name("method")
                        .map(|m| self.text(m).to_string());
                    let Some(blk) = st.child_by_field_name("block") else {
                        continue;
                    };
                    let saved_down = self.down.take();
                    match m.as_deref() {
                        Some("up") => {
                            self.body(blk);
                            self.down = saved_down;
                        }
                        Some("down") => {
                            let up = std::mem::take(&mut self.up);
                            self.body(blk);
                            let got = std::mem::replace(&mut self.up, up);
                            self.down = saved_down;
                            if let Some(d) = self.down.as_mut() {
                                // Kept in order when the downgrade is reversed.
                                d.actions.extend(got.actions.into_iter().rev());
                                d.allows.extend(got.allows);
                            }
                        }
                        _ => self.down = saved_down,
                    }
                }
            }
            "disable_ddl_transaction!" => {}
            // `raise ActiveRecord::IrreversibleMigration` declares the direction
            // irreversible; another raise stops the migration there.
            "raise" if self.text(call).contains("IrreversibleMigration") => {
                self.push(at, Op::Irreversible, None);
            }
            m if HARMLESS.contains(&m) => {
                if let Some(b) = block {
                    self.body(b);
                }
            }
            m if ROW_WRITES.contains(&m) => self.row_write(at, self.text(call).to_string()),
            other => self.push(
                at,
                Op::Unknown {
                    rule: "unknown-statement",
                    why: format!("ripcord does not analyse the Rails call {other}"),
                },
                Some(Op::Irreversible),
            ),
        }
    }

    /// A string (or heredoc) without interpolation: its text and first line.
    fn sql_text(&self, n: Node<'_>) -> Option<(String, usize)> {
        match n.kind() {
            "string" => {
                if children(n).iter().any(|c| c.kind() == "interpolation") {
                    return None;
                }
                Some((self.name(Some(n)), line(n)))
            }
            "heredoc_beginning" => {
                let (text, l) = self.heredocs.get(&n.start_byte())?.clone();
                (!text.contains("#{")).then_some((text, l))
            }
            _ => None,
        }
    }

    fn default(&self, d: Node<'_>) -> Option<DefaultKind> {
        match d.kind() {
            "nil" => None,
            // `default: -> { "now()" }`: SQL.
            "lambda" => {
                let mut s = None;
                collect(d, &mut |n| {
                    if n.kind() == "string" && s.is_none() {
                        s = Some(self.name(Some(n)));
                    }
                });
                Some(
                    s.map_or(DefaultKind::Volatile(format!("`{}`", self.text(d))), |s| {
                        classify_default_text(&s)
                    }),
                )
            }
            _ => Some(DefaultKind::Constant),
        }
    }
}

fn assured(line: usize) -> Allow {
    Allow {
        line,
        // Every rule: strong_migrations' author vouched for the whole block.
        rules: vec![super::model::VOUCHED.to_string()],
        reason: Some("safety_assured (strong_migrations)".into()),
    }
}

/// A Rails column type with its `limit:`, `precision:` and `scale:`.
fn rails_type(name: &str, kw: &HashMap<String, Node<'_>>, w: &Walker<'_>) -> Ty {
    let num = |k: &str| kw.get(k).and_then(|v| w.text(*v).parse::<u64>().ok());
    match name {
        "string" => Ty::Varchar(num("limit")),
        "text" => Ty::Text,
        "integer" => match num("limit") {
            Some(8) => Ty::BigInt,
            Some(2) => Ty::SmallInt,
            _ => Ty::Int,
        },
        "bigint" => Ty::BigInt,
        "decimal" => match (num("precision"), num("scale")) {
            (Some(p), s) => Ty::Numeric(Some((p, s.unwrap_or(0)))),
            _ => Ty::Numeric(None),
        },
        "datetime" | "timestamp" => Ty::Timestamp { tz: false },
        "timestamptz" => Ty::Timestamp { tz: true },
        other => parse_ty(other),
    }
}
