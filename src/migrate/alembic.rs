//! The Alembic front end: parses a revision file as Python with tree-sitter and lowers
//! `upgrade()` and `downgrade()` separately to [`Op`]s. It understands the `op.*`
//! calls, `batch_alter_table` blocks, `autocommit_block()`, `sa.Column(...)` arguments,
//! and raw SQL run through `op.execute`, `sa.text`, or `get_bind().execute`, whose
//! string is handed to the SQL front end so its statements are judged like a `.sql` file.
//!
//! It never runs the Python. What it cannot resolve statically (SQL built at run time,
//! an `op` method it does not know, a syntax error) becomes an unknown finding with the
//! line, so a revision is never reported as safe because it was not understood.

use std::collections::HashMap;

use tree_sitter::Node;

use super::pyparse::{NotParsed, parse};

use super::model::{
    Action, AddColumn, ConKind, DefaultKind, Lowered, Op, is_irreversible_marker, parse_allow,
};
use super::pyconst::{self, string_value};
use super::sql;
use super::syntax::{children, comments as collect_comments, first_error, line};
use super::types::{Ty, classify_default_text, parse_ty, using_text_is_plain};

/// A revision file, lowered.
#[derive(Debug, Default)]
pub(crate) struct AlembicFile {
    pub revision: Option<String>,
    /// `Some(vec![])` for the first revision (`down_revision = None`).
    pub down_revision: Option<Vec<String>>,
    pub up: Lowered,
    pub down: Lowered,
}

/// How deep helper functions are followed and blocks are entered.
const MAX_DEPTH: usize = 24;

/// The revision and its parents only (used by the layout to order revisions).
pub(crate) fn revision_info(text: &str) -> (Option<String>, Option<Vec<String>>) {
    let Ok(tree) = parse(text) else {
        return (None, None);
    };
    let cx = Module::new(text, tree.root_node());
    (cx.revision.clone(), cx.down_revision.clone())
}

/// Module-level facts: the revision ids, functions and string constants.
struct Module<'t> {
    src: &'t str,
    funcs: HashMap<String, Node<'t>>,
    consts: HashMap<String, String>,
    /// Module-level `NAME = sa.text("...")`: SQL for `execute`, not a Python string.
    sql_consts: HashMap<String, String>,
    /// Every module-level `NAME = expr`, for what a name stands for.
    values: HashMap<String, Node<'t>>,
    revision: Option<String>,
    down_revision: Option<Vec<String>>,
}

impl<'t> Module<'t> {
    fn new(src: &'t str, root: Node<'t>) -> Module<'t> {
        let mut m = Module {
            src,
            funcs: HashMap::new(),
            consts: HashMap::new(),
            sql_consts: HashMap::new(),
            values: HashMap::new(),
            revision: None,
            down_revision: None,
        };
        for st in children(root) {
            let def = if st.kind() == "decorated_definition" {
                st.child_by_field_name("definition")
            } else {
                Some(st)
            };
            if let Some(def) = def.filter(|d| d.kind() == "function_definition") {
                if let Some(name) = def.child_by_field_name("name") {
                    m.funcs.insert(m.text(name).to_string(), def);
                }
                continue;
            }
            if st.kind() != "expression_statement" {
                continue;
            }
            let Some(assign) = children(st).into_iter().find(|c| c.kind() == "assignment") else {
                continue;
            };
            let (Some(left), Some(right)) = (
                assign.child_by_field_name("left"),
                assign.child_by_field_name("right"),
            ) else {
                continue;
            };
            let name = m.text(left).to_string();
            m.values.insert(name.clone(), right);
            match name.as_str() {
                "revision" => m.revision = string_value(src, right).map(|s| s.0),
                "down_revision" => {
                    m.down_revision = match right.kind() {
                        "none" => Some(Vec::new()),
                        "tuple" | "list" => Some(
                            children(right)
                                .into_iter()
                                .filter_map(|c| string_value(src, c).map(|s| s.0))
                                .collect(),
                        ),
                        _ => string_value(src, right).map(|s| vec![s.0]),
                    }
                }
                _ => {
                    // A constant built from earlier ones (`TABLE = f"{SCHEMA}.jobs"`).
                    // `sa.text(...)` is SQL, not a Python string: only `execute` reads it.
                    let consts = &m.consts;
                    let lookup = |n: &str| consts.get(n).map(|s| (s.clone(), 0));
                    if let Ok((s, _)) = pyconst::eval(src, right, &lookup, 0) {
                        if is_sql_text(src, right) {
                            m.sql_consts.insert(name, s);
                        } else {
                            m.consts.insert(name, s);
                        }
                    }
                }
            }
        }
        if m.revision.is_none() {
            // The header Alembic writes: "Revision ID: abc" / "Revises: def".
            for l in src.lines().take(30) {
                if let Some(r) = l.trim().strip_prefix("Revision ID:") {
                    m.revision = Some(r.trim().to_string());
                }
                if m.down_revision.is_none()
                    && let Some(r) = l.trim().strip_prefix("Revises:")
                {
                    m.down_revision = Some(
                        r.split(',')
                            .map(|s| s.trim().to_string())
                            .filter(|s| !s.is_empty())
                            .collect(),
                    );
                }
            }
        }
        m
    }

    fn text(&self, n: Node<'_>) -> &'t str {
        self.src.get(n.byte_range()).unwrap_or("")
    }
}

/// What a local name is bound to, as far as static reading can tell.
#[derive(Debug, Clone)]
enum Local {
    Str(String, usize),
    /// `op.get_bind()`, a connection.
    Bind,
    /// `sa.table("name", ...)` / `sa.Table("name", ...)`.
    Table(String),
    /// The `as` name of a `batch_alter_table` block.
    Batch(String),
    /// `sa.text("...")`: SQL that `execute` runs, not a Python string.
    Sql(String, usize),
    /// An ORM session (`Session(bind=...)`): what it writes is known only at run time.
    Session,
}

/// Lowers one function body into actions.
struct Walker<'m, 't> {
    m: &'m Module<'t>,
    locals: HashMap<String, Local>,
    out: Lowered,
    depth: usize,
    /// The model an ORM session last queried, and the sessions already reported.
    orm_model: Option<String>,
    orm_reported: std::collections::HashSet<String>,
}

/// Lowers a whole revision file.
pub(crate) fn lower(text: &str) -> AlembicFile {
    let mut file = AlembicFile::default();
    let tree = match parse(text) {
        Ok(tree) => tree,
        Err(NotParsed { line, why }) => {
            // Neither direction was read: both are unknown, neither is missing.
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
            return file;
        }
    };
    let root = tree.root_node();
    let m = Module::new(text, root);
    file.revision = m.revision.clone();
    file.down_revision = m.down_revision.clone();
    let allows = collect_comments(text, root);

    let up_def = m.funcs.get("upgrade").copied();
    let down_def = m.funcs.get("downgrade").copied();
    file.up = match up_def {
        Some(def) => lower_function(&m, def),
        None => {
            let mut l = Lowered {
                line: 1,
                ..Lowered::default()
            };
            l.actions.push(Action::new(
                1,
                Op::Unknown {
                    rule: "parse-error",
                    why: "no upgrade() function found".into(),
                },
            ));
            l
        }
    };
    file.down = match down_def {
        Some(def) => lower_function(&m, def),
        None => Lowered {
            missing: true,
            line: 1,
            ..Lowered::default()
        },
    };
    for (l, body) in &allows {
        let in_down = down_def.is_some_and(|d| range_has(d, *l));
        if let Some(allow) = parse_allow(body, *l) {
            if in_down {
                file.down.allows.push(allow);
            } else {
                file.up.allows.push(allow);
            }
        }
        if in_down && is_irreversible_marker(body) {
            file.down.actions.push(Action::new(*l, Op::Irreversible));
        }
    }
    if root.has_error() {
        let at = first_error(root).map(line).unwrap_or(1);
        let action = Action::new(
            at,
            Op::Unknown {
                rule: "parse-error",
                why: "python syntax error: ripcord could not read this part of the file".into(),
            },
        );
        if down_def.is_some_and(|d| range_has(d, at)) {
            file.down.actions.push(action);
            file.down.empty = false;
        } else {
            file.up.actions.push(action);
            file.up.empty = false;
        }
    }
    file
}

fn range_has(n: Node<'_>, l: usize) -> bool {
    (n.start_position().row + 1..=n.end_position().row + 1).contains(&l)
}

fn lower_function(m: &Module<'_>, def: Node<'_>) -> Lowered {
    let mut w = Walker {
        m,
        locals: HashMap::new(),
        out: Lowered {
            runner_tx: true,
            line: line(def),
            ..Lowered::default()
        },
        depth: 0,
        orm_model: None,
        orm_reported: Default::default(),
    };
    if let Some(body) = def.child_by_field_name("body") {
        w.block(body);
    }
    w.out.empty = w.out.actions.is_empty();
    w.out
}

impl<'t> Walker<'_, 't> {
    fn text(&self, n: Node<'_>) -> &'t str {
        self.m.text(n)
    }

    fn push(&mut self, n: Node<'_>, op: Op) {
        self.out.actions.push(Action::new(line(n), op));
    }

    fn block(&mut self, block: Node<'_>) {
        if self.depth > MAX_DEPTH {
            self.push(
                block,
                Op::Unknown {
                    rule: "unknown-statement",
                    why: "nesting too deep to analyse".into(),
                },
            );
            return;
        }
        self.depth += 1;
        for st in children(block) {
            self.statement(st);
        }
        self.depth -= 1;
    }

    fn statement(&mut self, st: Node<'_>) {
        match st.kind() {
            "expression_statement" => {
                for e in children(st) {
                    self.expression(e);
                }
            }
            "with_statement" => self.with(st),
            "if_statement" => self.if_statement(st),
            "for_statement" => self.for_statement(st),
            "while_statement" => {
                if let Some(b) = st.child_by_field_name("body") {
                    self.block(b);
                }
                if let Some(alt) = st.child_by_field_name("alternative") {
                    self.block_of(alt);
                }
            }
            "try_statement" => {
                for c in children(st) {
                    match c.kind() {
                        "block" => self.block(c),
                        _ => self.block_of(c),
                    }
                }
            }
            "raise_statement"
                if self.text(st).contains("NotImplementedError") || self.out.actions.is_empty() =>
            {
                self.push(st, Op::Irreversible);
            }
            "pass_statement"
            | "comment"
            | "return_statement"
            | "import_statement"
            | "import_from_statement"
            | "global_statement"
            | "nonlocal_statement" => {}
            "function_definition" | "class_definition" | "decorated_definition" => {}
            "ERROR" => {}
            _ => {}
        }
    }

    /// A `for` loop: what it iterates over is read (`conn.execute(...)` there runs too),
    /// and a loop over literal strings (`for table in ("a", "b"):`) is followed once per
    /// value, so SQL built from the loop variable is read for each. Any other loop is
    /// followed once with the variable unknown.
    fn for_statement(&mut self, st: Node<'_>) {
        let (left, right, body) = (
            st.child_by_field_name("left"),
            st.child_by_field_name("right"),
            st.child_by_field_name("body"),
        );
        if let Some(r) = right {
            self.expression(r);
        }
        let values: Option<Vec<(String, usize)>> = right
            .filter(|r| matches!(r.kind(), "list" | "tuple"))
            .filter(|_| left.is_some_and(|l| l.kind() == "identifier"))
            .and_then(|r| {
                let items = children(r);
                (items.len() <= MAX_UNROLL)
                    .then(|| items.iter().map(|i| self.sql_of(*i, 0).ok()).collect())
                    .flatten()
            });
        let name = left.map(|l| self.text(l).to_string()).unwrap_or_default();
        match (values, body) {
            (Some(values), Some(b)) => {
                for (v, l) in values {
                    self.locals.insert(name.clone(), Local::Str(v, l));
                    self.block(b);
                }
                self.locals.remove(&name);
            }
            (None, Some(b)) => {
                self.locals.remove(&name);
                self.block(b);
            }
            _ => {}
        }
        if let Some(alt) = st.child_by_field_name("alternative") {
            self.block_of(alt);
        }
    }

    /// Enters the block of an `else`/`elif`/`except`/`finally` clause.
    fn block_of(&mut self, clause: Node<'_>) {
        if let Some(b) = clause
            .child_by_field_name("body")
            .or_else(|| clause.child_by_field_name("consequence"))
            .or_else(|| children(clause).into_iter().find(|c| c.kind() == "block"))
        {
            self.block(b);
        }
    }

    fn if_statement(&mut self, st: Node<'_>) {
        let cond = st
            .child_by_field_name("condition")
            .map(|c| self.text(c).to_ascii_lowercase())
            .unwrap_or_default();
        // Dialect branches: follow the PostgreSQL one, so SQLite-only statements in the
        // other branch are not reported.
        let mentions_pg = cond.contains("postgres");
        let other_dialect = ["sqlite", "mysql", "mssql", "oracle", "mariadb"]
            .iter()
            .any(|d| cond.contains(d));
        let eq = cond.contains("==") || cond.contains(" in ") || cond.contains("startswith");
        let (take_then, take_else) = if mentions_pg && eq && !cond.contains("!=") {
            (true, false)
        } else if (mentions_pg && cond.contains("!=")) || (other_dialect && eq && !mentions_pg) {
            (false, true)
        } else {
            (true, true)
        };
        if take_then && let Some(b) = st.child_by_field_name("consequence") {
            self.block(b);
        }
        if take_else {
            for alt in children(st)
                .into_iter()
                .filter(|c| matches!(c.kind(), "elif_clause" | "else_clause"))
            {
                self.block_of(alt);
            }
        }
    }

    fn with(&mut self, st: Node<'_>) {
        let body = st.child_by_field_name("body");
        let mut autocommit = false;
        for clause in children(st)
            .into_iter()
            .filter(|c| c.kind() == "with_clause")
        {
            for item in children(clause) {
                let Some(value) = item.child_by_field_name("value") else {
                    continue;
                };
                let (call, alias) = if value.kind() == "as_pattern" {
                    let kids = children(value);
                    let alias = value
                        .child_by_field_name("alias")
                        .or_else(|| kids.last().copied())
                        .map(|a| self.text(a).to_string());
                    (kids.first().copied(), alias)
                } else {
                    (Some(value), None)
                };
                let Some(call) = call.filter(|c| c.kind() == "call") else {
                    continue;
                };
                let fname = call
                    .child_by_field_name("function")
                    .map(|f| self.text(f))
                    .unwrap_or("");
                if fname.ends_with("autocommit_block") {
                    autocommit = true;
                } else if is_session(self.m.src, call) {
                    if let Some(a) = alias {
                        self.locals.insert(a, Local::Session);
                    }
                } else if fname.ends_with("batch_alter_table") {
                    let (pos, kw) = self.args(call);
                    let table = pos
                        .first()
                        .or_else(|| kw.get("table_name"))
                        .map(|n| self.name_of(*n))
                        .unwrap_or_default();
                    if let Some(recreate) = kw.get("recreate")
                        && self.text(*recreate).contains("always")
                    {
                        self.push(
                            call,
                            Op::BatchRecreate {
                                table: table.clone(),
                            },
                        );
                    }
                    if let Some(a) = alias {
                        self.locals.insert(a, Local::Batch(table));
                    }
                } else if fname.ends_with("begin_transaction") || fname.ends_with("begin") {
                    // `with op.get_context().begin_transaction():` keeps the migration's
                    // transaction; nothing to model.
                }
            }
        }
        if autocommit {
            self.push(st, Op::AutocommitStart);
        }
        if let Some(b) = body {
            self.block(b);
        }
        if autocommit {
            let end_line = st.end_position().row + 1;
            self.out
                .actions
                .push(Action::new(end_line, Op::AutocommitEnd));
        }
    }

    fn expression(&mut self, e: Node<'_>) {
        match e.kind() {
            "call" => self.call(e),
            "assignment" | "augmented_assignment" => {
                let right = e.child_by_field_name("right");
                if let (Some(left), Some(right)) = (e.child_by_field_name("left"), right) {
                    let name = self.text(left).to_string();
                    let rt = self.text(right);
                    // A reassignment forgets what the name held before.
                    self.locals.remove(&name);
                    if let Ok((s, l)) = self.sql_of(right, 0) {
                        let local = if is_sql_text(self.m.src, right) {
                            Local::Sql(s, l)
                        } else {
                            Local::Str(s, l)
                        };
                        self.locals.insert(name, local);
                    } else if rt.contains("get_bind") || rt.ends_with(".connection") {
                        self.locals.insert(name, Local::Bind);
                    } else if is_session(self.m.src, right) {
                        self.locals.insert(name, Local::Session);
                    } else if right.kind() == "call"
                        && (rt.starts_with("sa.table(")
                            || rt.starts_with("sa.Table(")
                            || rt.starts_with("table(")
                            || rt.starts_with("Table(")
                            || rt.starts_with("sqlalchemy.table("))
                    {
                        let (pos, _) = self.args(right);
                        if let Some(t) = pos.first() {
                            let t = self.name_of(*t);
                            self.locals.insert(name, Local::Table(t));
                        }
                    }
                }
                if let Some(r) = right {
                    self.expression(r);
                }
            }
            "await" | "parenthesized_expression" if self.depth <= MAX_DEPTH => {
                self.depth += 1;
                for c in children(e) {
                    self.expression(c);
                }
                self.depth -= 1;
            }
            _ => {}
        }
    }

    /// Positional and keyword arguments of a call.
    fn args<'n>(&self, call: Node<'n>) -> (Vec<Node<'n>>, HashMap<String, Node<'n>>) {
        let mut pos = Vec::new();
        let mut kw = HashMap::new();
        if let Some(list) = call.child_by_field_name("arguments") {
            for a in children(list) {
                if a.kind() == "keyword_argument" {
                    if let (Some(k), Some(v)) = (
                        a.child_by_field_name("name"),
                        a.child_by_field_name("value"),
                    ) {
                        kw.insert(self.text(k).to_string(), v);
                    }
                } else if a.kind() != "comment" {
                    pos.push(a);
                }
            }
        }
        (pos, kw)
    }

    /// A string argument's value, through local and module constants.
    fn str_of(&self, n: Node<'_>) -> Option<(String, usize)> {
        if let Some(s) = string_value(self.m.src, n) {
            return Some(s);
        }
        if n.kind() == "identifier" {
            let name = self.text(n);
            return match self.locals.get(name) {
                Some(Local::Str(s, l)) => Some((s.clone(), *l)),
                _ => self.m.consts.get(name).map(|s| (s.clone(), line(n))),
            };
        }
        None
    }

    /// A name argument: its string value, or the expression as written.
    fn name_of(&self, n: Node<'_>) -> String {
        // `op.f("ix_name")` and `batch_op.f("ix_name")` mark a name as final (not to be
        // run through the naming convention): the name is the string.
        if n.kind() == "call"
            && let Some(f) = n.child_by_field_name("function")
            && f.kind() == "attribute"
            && f.child_by_field_name("attribute")
                .is_some_and(|a| self.text(a) == "f")
            && f.child_by_field_name("object").is_some_and(|o| {
                let o = self.text(o);
                o == "op" || matches!(self.locals.get(o), Some(Local::Batch(_)))
            })
            && let Some(first) = self.args(n).0.first()
            && let Some((s, _)) = self.str_of(*first)
        {
            return s;
        }
        self.str_of(n)
            .map(|s| s.0)
            .unwrap_or_else(|| self.text(n).to_string())
    }

    fn truthy(&self, n: Option<&Node<'_>>) -> bool {
        n.is_some_and(|n| n.kind() == "true")
    }

    fn call(&mut self, call: Node<'_>) {
        let Some(func) = call.child_by_field_name("function") else {
            return;
        };
        match func.kind() {
            "identifier" => {
                let name = self.text(func);
                if let Some(def) = self.m.funcs.get(name).copied() {
                    // A helper defined in the revision: its operations count as if
                    // written inline.
                    if self.depth < MAX_DEPTH
                        && let Some(body) = def.child_by_field_name("body")
                    {
                        self.block(body);
                    }
                }
            }
            "attribute" => {
                let (Some(obj), Some(attr)) = (
                    func.child_by_field_name("object"),
                    func.child_by_field_name("attribute"),
                ) else {
                    return;
                };
                let attr = self.text(attr).to_string();
                let obj_text = self.text(obj);
                if obj_text == "op" {
                    self.op_call(call, &attr, None);
                } else if let Some(Local::Batch(table)) = self.locals.get(obj_text).cloned() {
                    self.op_call(call, &attr, Some(table));
                } else if attr == "execute" || attr == "exec_driver_sql" {
                    self.execute(call);
                } else if let Some(session) = root_name(self.m.src, obj)
                    .filter(|r| matches!(self.locals.get(r.as_str()), Some(Local::Session)))
                {
                    self.orm_call(call, obj, &session, &attr);
                } else if attr == "create"
                    && (obj_text.contains("Enum") || obj_text.contains("ENUM"))
                {
                    self.push(
                        call,
                        Op::Benign {
                            what: "CREATE TYPE".into(),
                        },
                    );
                } else if attr == "drop" && (obj_text.contains("Enum") || obj_text.contains("ENUM"))
                {
                    self.push(
                        call,
                        Op::DropOther {
                            what: "type".into(),
                            name: obj_text.chars().take(40).collect(),
                            // `checkfirst=True` skips a missing type; its default differs
                            // between `sa.Enum` and `postgresql.ENUM`, so only the explicit
                            // one counts.
                            if_exists: self.text(call).contains("checkfirst=True"),
                            cascade: false,
                        },
                    );
                } else if obj.kind() == "call" && self.depth < MAX_DEPTH {
                    // `conn.execute(...).fetchall()`: the call the result comes from.
                    self.depth += 1;
                    self.call(obj);
                    self.depth -= 1;
                }
            }
            _ => {}
        }
    }

    /// A call on an ORM session: `query(Model)` names the model being read; the first
    /// write (`add`, `merge`, `delete`, `update`, `bulk_*`, `flush`, `commit`) of each
    /// session is an [`Op::OrmWrite`].
    fn orm_call(&mut self, call: Node<'_>, obj: Node<'_>, session: &str, attr: &str) {
        if obj.kind() == "call" && self.depth < MAX_DEPTH {
            self.depth += 1;
            self.call(obj);
            self.depth -= 1;
        }
        if attr == "query" {
            let (pos, _) = self.args(call);
            if let Some(m) = pos.first() {
                self.orm_model = Some(self.text(*m).to_string());
            }
            return;
        }
        let writes = matches!(
            attr,
            "add"
                | "add_all"
                | "merge"
                | "delete"
                | "update"
                | "bulk_update_mappings"
                | "bulk_insert_mappings"
                | "bulk_save_objects"
                | "flush"
                | "commit"
        );
        if writes && self.orm_reported.insert(session.to_string()) {
            let model = self.orm_model.clone();
            self.push(
                call,
                Op::OrmWrite {
                    call: format!("{session}.{attr}()"),
                    model,
                },
            );
        }
    }

    /// `op.execute(...)`, `bind.execute(...)`, `op.get_bind().execute(...)`.
    fn execute(&mut self, call: Node<'_>) {
        let (pos, _) = self.args(call);
        let Some(arg) = pos.first().copied() else {
            return;
        };
        if let Some(op) = self.core_dml(arg) {
            self.push(call, op);
            return;
        }
        match self.sql_of(arg, 0) {
            Ok((text, first_line)) => {
                let script = sql::lower(&text, first_line);
                if script.actions.is_empty() {
                    self.push(
                        call,
                        Op::Inert {
                            what: "empty SQL".into(),
                        },
                    );
                }
                for mut a in script.actions {
                    a.anchor = Some(line(call));
                    self.out.actions.push(a);
                }
                self.out.allows.extend(script.allows);
            }
            Err(part) => {
                let who = call
                    .child_by_field_name("function")
                    .map(|f| self.text(f))
                    .unwrap_or("execute");
                self.push(
                    call,
                    Op::Unknown {
                        rule: "dynamic-sql",
                        why: format!(
                            "{who}() runs SQL built at run time from {part}: ripcord cannot read which statement it is"
                        ),
                    },
                );
            }
        }
    }

    /// The SQL text an execute argument holds (literals, constants, and f-strings, `+`,
    /// `%` and `.format()` built from them), or what in it is known only at run time.
    fn sql_of(&self, arg: Node<'_>, depth: usize) -> Result<(String, usize), String> {
        // `sa.text("...").bindparams(...)` (or `.columns(...)`, `.execution_options(...)`)
        // runs the text's SQL with values bound.
        if arg.kind() == "call"
            && let Some(f) = arg
                .child_by_field_name("function")
                .filter(|f| f.kind() == "attribute")
            && let (Some(obj), Some(attr)) = (
                f.child_by_field_name("object"),
                f.child_by_field_name("attribute"),
            )
            && matches!(
                self.text(attr),
                "bindparams" | "columns" | "execution_options"
            )
            && depth < MAX_DEPTH
        {
            return self.sql_of(obj, depth + 1);
        }
        let lookup = |name: &str| match self.locals.get(name) {
            Some(Local::Str(s, l) | Local::Sql(s, l)) => Some((s.clone(), *l)),
            Some(_) => None,
            None => self
                .m
                .consts
                .get(name)
                .or_else(|| self.m.sql_consts.get(name))
                .map(|s| (s.clone(), 0)),
        };
        pyconst::eval(self.m.src, arg, &lookup, 0)
    }

    /// SQLAlchemy Core statements: `t.update()...`, `sa.delete(t)`, `t.insert()`.
    fn core_dml(&self, arg: Node<'_>) -> Option<Op> {
        let mut n = arg;
        for _ in 0..16 {
            if n.kind() != "call" {
                return None;
            }
            let func = n.child_by_field_name("function")?;
            if func.kind() == "attribute" {
                let obj = func.child_by_field_name("object")?;
                let attr = self.text(func.child_by_field_name("attribute")?);
                let verb = match attr {
                    "update" => Some("UPDATE"),
                    "insert" => Some("INSERT"),
                    "delete" => Some("DELETE"),
                    _ => None,
                };
                if let Some(verb) = verb {
                    let table = match obj.kind() {
                        "identifier" => match self.locals.get(self.text(obj)) {
                            Some(Local::Table(t)) => t.clone(),
                            _ => self.text(obj).to_string(),
                        },
                        _ => {
                            // `sa.update(t)` style: the table is the first argument.
                            if obj.kind() == "identifier" || self.text(obj) == "sa" {
                                let (pos, _) = self.args(n);
                                pos.first().map(|p| self.table_name(*p))?
                            } else {
                                self.text(obj).to_string()
                            }
                        }
                    };
                    return Some(Op::Dml { verb, table });
                }
                n = obj;
            } else {
                return None;
            }
        }
        None
    }

    fn table_name(&self, n: Node<'_>) -> String {
        match self.locals.get(self.text(n)) {
            Some(Local::Table(t)) => t.clone(),
            _ => self.name_of(n),
        }
    }

    fn op_call(&mut self, call: Node<'_>, method: &str, batch: Option<String>) {
        let (pos, kw) = self.args(call);
        // Batch operations omit the table argument; `shift` maps a position in the
        // `op.*` signature to the batch one.
        let b = batch.is_some();
        let arg = |i: usize, table_at: usize| -> Option<Node<'_>> {
            if b {
                if i == table_at {
                    None
                } else if i > table_at {
                    pos.get(i - 1).copied()
                } else {
                    pos.get(i).copied()
                }
            } else {
                pos.get(i).copied()
            }
        };
        let table_of = |w: &Self, table_at: usize| -> String {
            match &batch {
                Some(t) => t.clone(),
                None => pos
                    .get(table_at)
                    .map(|n| w.table_name(*n))
                    .or_else(|| kw.get("table_name").map(|n| w.table_name(*n)))
                    .unwrap_or_else(|| "?".into()),
            }
        };
        let kw_true = |k: &str| self.truthy(kw.get(k));
        let op = match method {
            "add_column" => {
                let table = table_of(self, 0);
                match arg(1, 0) {
                    Some(col) => {
                        let mut add = self.column(col);
                        add.table = table;
                        add.if_not_exists = kw_true("if_not_exists");
                        Op::AddColumn(Box::new(add))
                    }
                    None => unknown_op(method),
                }
            }
            "drop_column" => Op::DropColumn {
                table: table_of(self, 0),
                column: arg(1, 0).map(|n| self.name_of(n)).unwrap_or_default(),
                if_exists: kw_true("if_exists"),
                cascade: false,
            },
            "alter_column" => {
                let table = table_of(self, 0);
                let column = arg(1, 0).map(|n| self.name_of(n)).unwrap_or_default();
                let mut ops = Vec::new();
                if let Some(t) = kw.get("type_") {
                    let to = self.sa_type(*t);
                    // `postgresql_using="c::text"` is the plain type change, judged as one.
                    let using = kw.get("postgresql_using").is_some_and(|u| {
                        !self
                            .str_of(*u)
                            .is_some_and(|(s, _)| using_text_is_plain(&s, &column, &to))
                    });
                    ops.push(Op::AlterType {
                        table: table.clone(),
                        column: column.clone(),
                        to,
                        from: kw.get("existing_type").map(|t| self.sa_type(*t)),
                        using,
                    });
                }
                match kw.get("nullable").map(|n| n.kind()) {
                    Some("false") => ops.push(Op::SetNotNull {
                        table: table.clone(),
                        column: column.clone(),
                    }),
                    Some("true") => ops.push(Op::DropNotNull {
                        table: table.clone(),
                        column: column.clone(),
                    }),
                    _ => {}
                }
                if kw.contains_key("server_default") {
                    ops.push(Op::ChangeDefault {
                        table: table.clone(),
                    });
                }
                if let Some(n) = kw.get("new_column_name") {
                    ops.push(Op::RenameColumn {
                        table: table.clone(),
                        from: column.clone(),
                        to: self.name_of(*n),
                    });
                }
                if ops.is_empty() {
                    ops.push(Op::Benign {
                        what: "alter_column".into(),
                    });
                }
                for op in ops {
                    self.push(call, op);
                }
                return;
            }
            "create_table" => {
                let columns = pos
                    .iter()
                    .skip(1)
                    .filter(|n| self.is_column(**n))
                    .map(|n| {
                        let c = self.column(*n);
                        (c.column, c.ty)
                    })
                    .collect();
                Op::CreateTable {
                    table: pos.first().map(|n| self.name_of(*n)).unwrap_or_default(),
                    if_not_exists: kw_true("if_not_exists"),
                    columns,
                }
            }
            "drop_table" => Op::DropTable {
                table: pos.first().map(|n| self.name_of(*n)).unwrap_or_default(),
                if_exists: kw_true("if_exists"),
                cascade: false,
            },
            "rename_table" => Op::RenameTable {
                table: pos.first().map(|n| self.name_of(*n)).unwrap_or_default(),
                to: pos.get(1).map(|n| self.name_of(*n)).unwrap_or_default(),
            },
            "create_index" => {
                let cols = arg(2, 1)
                    .map(|n| {
                        if n.kind() == "list" || n.kind() == "tuple" {
                            children(n).into_iter().map(|c| self.name_of(c)).collect()
                        } else {
                            vec![self.name_of(n)]
                        }
                    })
                    .unwrap_or_default();
                Op::CreateIndex {
                    table: table_of(self, 1),
                    name: pos.first().map(|n| self.name_of(*n)),
                    columns: cols,
                    concurrently: kw_true("postgresql_concurrently"),
                    unique: kw_true("unique"),
                    if_not_exists: kw_true("if_not_exists"),
                }
            }
            "drop_index" => Op::DropIndex {
                name: pos.first().map(|n| self.name_of(*n)).unwrap_or_default(),
                concurrently: kw_true("postgresql_concurrently"),
                if_exists: kw_true("if_exists"),
            },
            "create_unique_constraint"
            | "create_primary_key"
            | "create_foreign_key"
            | "create_check_constraint"
            | "create_exclude_constraint" => {
                let kind = match method {
                    "create_unique_constraint" => ConKind::Unique,
                    "create_primary_key" => ConKind::PrimaryKey,
                    "create_foreign_key" => ConKind::ForeignKey,
                    "create_check_constraint" => ConKind::Check,
                    _ => ConKind::Exclude,
                };
                let not_null_column = if kind == ConKind::Check {
                    arg(2, 1).and_then(|c| self.str_of(c)).and_then(|(s, _)| {
                        let lower = s.to_ascii_lowercase();
                        let col = lower.strip_suffix("is not null")?.trim();
                        (!col.contains(' ')).then(|| col.trim_matches('"').to_string())
                    })
                } else {
                    None
                };
                Op::AddConstraint {
                    table: table_of(self, 1),
                    name: pos.first().map(|n| self.name_of(*n)),
                    kind,
                    not_valid: kw_true("postgresql_not_valid"),
                    using_index: false,
                    not_null_column,
                }
            }
            "drop_constraint" => Op::DropConstraint {
                table: table_of(self, 1),
                name: pos.first().map(|n| self.name_of(*n)).unwrap_or_default(),
            },
            "execute" => {
                self.execute(call);
                return;
            }
            "bulk_insert" => Op::Dml {
                verb: "INSERT",
                table: pos.first().map(|n| self.table_name(*n)).unwrap_or_default(),
            },
            "create_table_comment" | "drop_table_comment" => Op::Benign {
                what: format!("op.{method}"),
            },
            "get_bind" | "get_context" | "inline_literal" | "f" => Op::Inert {
                what: format!("op.{method}"),
            },
            "create_sequence" => Op::CreateOther {
                what: "sequence",
                name: pos.first().map(|n| self.name_of(*n)).unwrap_or_default(),
                if_not_exists: kw_true("if_not_exists"),
            },
            "drop_sequence" => Op::DropOther {
                what: "sequence".into(),
                name: pos.first().map(|n| self.name_of(*n)).unwrap_or_default(),
                if_exists: kw_true("if_exists"),
                cascade: false,
            },
            _ => unknown_op(method),
        };
        self.push(call, op);
    }

    fn is_column(&self, n: Node<'_>) -> bool {
        n.kind() == "call"
            && n.child_by_field_name("function")
                .is_some_and(|f| self.text(f).ends_with("Column"))
    }

    /// Reads `sa.Column(name, type, *constraints, nullable=, server_default=, ...)`.
    fn column(&self, col: Node<'_>) -> AddColumn {
        let mut add = AddColumn::default();
        if !self.is_column(col) {
            add.column = self.text(col).chars().take(40).collect();
            return add;
        }
        let (pos, kw) = self.args(col);
        add.column = pos.first().map(|n| self.name_of(*n)).unwrap_or_default();
        for p in pos.iter().skip(1) {
            let t = self.text(*p);
            let head = t.split('(').next().unwrap_or("");
            if head.ends_with("ForeignKey") {
                let (fk_pos, _) = self.args(*p);
                add.references = Some(
                    fk_pos
                        .first()
                        .map(|n| self.name_of(*n))
                        .unwrap_or_else(|| t.to_string()),
                );
            } else if head.ends_with("Identity") || head.ends_with("Sequence") {
                add.identity_or_serial = true;
            } else if head.ends_with("Computed") {
                let (_, ckw) = self.args(*p);
                // Computed columns are STORED unless persisted=False (PostgreSQL 18
                // virtual columns).
                add.stored_generated = ckw.get("persisted").is_none_or(|v| v.kind() != "false");
            } else if head.ends_with("CheckConstraint") {
                add.check = true;
            } else if add.ty.is_none() {
                add.ty = Some(self.sa_type(*p));
            }
        }
        if let Some(t) = kw.get("type_") {
            add.ty = Some(self.sa_type(*t));
        }
        add.primary_key = self.truthy(kw.get("primary_key"));
        add.unique = self.truthy(kw.get("unique"));
        add.not_null = match kw.get("nullable").map(|n| n.kind()) {
            Some("false") => true,
            Some("true") => false,
            _ => add.primary_key,
        };
        if add.primary_key && kw.get("autoincrement").is_none_or(|n| n.kind() != "false") {
            let integer = matches!(add.ty, Some(Ty::Int | Ty::BigInt | Ty::SmallInt));
            add.identity_or_serial |= integer;
        }
        match kw.get("server_default") {
            Some(sd) if sd.kind() != "none" => {
                add.default = Some(self.server_default(*sd)).filter(|k| *k != DefaultKind::Null);
            }
            _ => {
                add.orm_default_only = kw.contains_key("default");
            }
        }
        add
    }

    /// How PostgreSQL evaluates a `server_default=`. SQLAlchemy takes a Python string
    /// (rendered as a quoted literal) or an SQL construct (`sa.text`, `sa.func.*`,
    /// `sa.literal_column`). Any other Python expression, such as an enum member or a
    /// constant, is evaluated once when the migration runs and ends up as one literal for
    /// every row: a constant, however it is spelled.
    fn server_default(&self, n: Node<'_>) -> DefaultKind {
        self.server_default_at(n, 0)
    }

    fn server_default_at(&self, n: Node<'_>, depth: usize) -> DefaultKind {
        let text = self.text(n);
        let shown = || format!("`{}`", text.chars().take(40).collect::<String>());
        if self.str_of(n).is_some() {
            return DefaultKind::Constant;
        }
        if depth > 8 {
            return DefaultKind::Volatile(shown());
        }
        match n.kind() {
            "parenthesized_expression" => match n.named_child(0) {
                Some(inner) => self.server_default_at(inner, depth + 1),
                None => DefaultKind::Volatile(shown()),
            },
            "integer" | "float" | "true" | "false" | "unary_operator" => DefaultKind::Constant,
            "none" => DefaultKind::Null,
            "call" => {
                let fname = n
                    .child_by_field_name("function")
                    .map(|f| self.text(f))
                    .unwrap_or("");
                let (pos, _) = self.args(n);
                let last = fname.rsplit('.').next().unwrap_or(fname);
                if matches!(last, "text" | "literal_column") {
                    return match pos.first().and_then(|p| self.str_of(*p)) {
                        Some((s, _)) => classify_default_text(&s),
                        None => DefaultKind::Volatile(shown()),
                    };
                }
                if let Some(f) = fname
                    .strip_prefix("sa.func.")
                    .or_else(|| fname.strip_prefix("sqlalchemy.func."))
                    .or_else(|| fname.strip_prefix("func."))
                {
                    return classify_default_text(&format!("{f}()"));
                }
                if matches!(last, "literal" | "true" | "false" | "true_" | "false_") {
                    return DefaultKind::Constant;
                }
                if matches!(last, "null") {
                    return DefaultKind::Null;
                }
                // Another SQLAlchemy construct is SQL ripcord does not read.
                if fname.starts_with("sa.") || fname.starts_with("sqlalchemy.") {
                    return DefaultKind::Volatile(shown());
                }
                // A helper in the revision may return an SQL construct: follow its
                // return value.
                if let Some(def) = self.m.funcs.get(fname).copied() {
                    return match returned(def) {
                        Some(r) => self.server_default_at(r, depth + 1),
                        None => DefaultKind::Volatile(shown()),
                    };
                }
                // A Python call (`str(3)`, `Status.ACTIVE.value.lower()`): one value.
                DefaultKind::Constant
            }
            "attribute" => {
                // `Status.ACTIVE`, `Status.ACTIVE.value`, `Defaults.PLAN`: a Python value.
                // SQLAlchemy's own attributes (`sa.func.now`) are SQL.
                if text.starts_with("sa.")
                    || text.starts_with("sqlalchemy.")
                    || text.starts_with("func.")
                {
                    DefaultKind::Volatile(shown())
                } else {
                    DefaultKind::Constant
                }
            }
            "identifier" if matches!(self.locals.get(text), Some(Local::Sql(..))) => {
                match self.locals.get(text) {
                    Some(Local::Sql(s, _)) => classify_default_text(s),
                    _ => DefaultKind::Volatile(shown()),
                }
            }
            "identifier" => match self.m.values.get(text).copied() {
                Some(v) => self.server_default_at(v, depth + 1),
                None => DefaultKind::Unresolved(shown()),
            },
            "binary_operator" | "string" | "concatenated_string" => DefaultKind::Constant,
            _ => DefaultKind::Volatile(shown()),
        }
    }

    /// An SQLAlchemy type expression as a [`Ty`].
    fn sa_type(&self, n: Node<'_>) -> Ty {
        let (head, args) = if n.kind() == "call" {
            let f = n
                .child_by_field_name("function")
                .map(|f| self.text(f))
                .unwrap_or("");
            (f, Some(self.args(n)))
        } else {
            (self.text(n), None)
        };
        let name = head.rsplit('.').next().unwrap_or(head).to_ascii_lowercase();
        let mut nums: Vec<String> = Vec::new();
        let mut tz = false;
        if let Some((pos, kw)) = args {
            for p in pos {
                if p.kind() == "integer" {
                    nums.push(self.text(p).to_string());
                }
            }
            for k in ["length", "precision", "scale"] {
                if let Some(v) = kw.get(k) {
                    nums.push(self.text(*v).to_string());
                }
            }
            tz = self.truthy(kw.get("timezone"));
        }
        let name = match name.as_str() {
            "string" | "unicode" | "nvarchar" => "varchar".to_string(),
            "datetime" | "timestamp" if tz => "timestamptz".to_string(),
            "integer" => "integer".to_string(),
            other => other.to_string(),
        };
        if nums.is_empty() {
            parse_ty(&name)
        } else {
            parse_ty(&format!("{name}({})", nums.join(",")))
        }
    }
}

/// How many values a `for` loop over literals is followed for.
const MAX_UNROLL: usize = 32;

/// Whether `n` is an SQL text construct (`sa.text(...)`, `literal_column(...)`,
/// `text(...).bindparams(...)`) rather than a Python string.
fn is_sql_text(src: &str, n: Node<'_>) -> bool {
    n.kind() == "call"
        && n.child_by_field_name("function").is_some_and(|f| {
            let name = src.get(f.byte_range()).unwrap_or("");
            let last = name.rsplit('.').next().unwrap_or(name);
            matches!(last, "text" | "literal_column" | "bindparams" | "columns")
        })
}

/// Whether `n` creates an ORM session: `Session(...)`, `orm.Session(...)`,
/// `sessionmaker(...)()`.
fn is_session(src: &str, n: Node<'_>) -> bool {
    if n.kind() != "call" {
        return false;
    }
    let Some(f) = n.child_by_field_name("function") else {
        return false;
    };
    let name = src.get(f.byte_range()).unwrap_or("");
    name.rsplit('.').next() == Some("Session")
        || (f.kind() == "call" && name.starts_with("sessionmaker"))
}

/// The name an attribute or call chain starts from (`session` in
/// `session.query(M).filter(...).update(...)`).
fn root_name(src: &str, n: Node<'_>) -> Option<String> {
    let mut n = n;
    for _ in 0..64 {
        n = match n.kind() {
            "identifier" => return src.get(n.byte_range()).map(str::to_string),
            "attribute" => n.child_by_field_name("object")?,
            "call" => n.child_by_field_name("function")?,
            "subscript" => n.child_by_field_name("value")?,
            _ => return None,
        };
    }
    None
}

/// The expression a function's first top-level `return` gives back.
fn returned(def: Node<'_>) -> Option<Node<'_>> {
    let body = def.child_by_field_name("body")?;
    children(body)
        .into_iter()
        .find(|st| st.kind() == "return_statement")
        .and_then(|r| r.named_child(0))
}

fn unknown_op(method: &str) -> Op {
    Op::Unknown {
        rule: "unknown-statement",
        why: format!("ripcord does not analyse op.{method}()"),
    }
}
