//! Import directions: every `crate::…` and `super::…` path in `src/` that reaches into
//! another top-level module must be an arrow the table in ARCHITECTURE.md ("Import
//! directions") allows, and the files inside one module must not import each other in
//! a circle (test code aside). The table is read from ARCHITECTURE.md itself, so the document and the
//! check cannot drift apart.
//!
//! The scanner is a small Rust lexer: comments, strings (raw ones too) and character
//! literals are skipped; `use crate::{a, b::{c, d}}` groups, `super::super::` chains,
//! inline `mod x { … }` blocks and fully qualified paths in code all count.
//!
//! `RIPCORD_ARROWS_SRC=/some/checkout/src cargo test --test arrows` checks another tree
//! (an older commit, say) against this table.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Ident(String),
    Punct(&'static str),
    Other,
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    line: usize,
}

/// Rust source → identifiers and the punctuation paths are made of, with lines.
fn lex(src: &str) -> Vec<Token> {
    let s: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let mut line = 1;
    let at = |i: usize| s.get(i).copied().unwrap_or('\0');
    while i < s.len() {
        let c = s[i];
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if c == '/' && at(i + 1) == '/' {
            while i < s.len() && s[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && at(i + 1) == '*' {
            // Block comments nest in Rust.
            let mut depth = 0;
            while i < s.len() {
                if s[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if s[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    if s[i] == '\n' {
                        line += 1;
                    }
                    i += 1;
                }
            }
        } else if c == '"' {
            let start = line;
            i = skip_string(&s, i + 1, &mut line);
            out.push(Token {
                tok: Tok::Other,
                line: start,
            });
        } else if c == '\'' {
            // A character literal ('x', '\n', '\u{1F600}') or a lifetime ('a).
            if at(i + 1) == '\\' {
                // Past the quote, the backslash and the escaped character.
                i += 3;
                while i < s.len() && s[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if at(i + 2) == '\'' {
                i += 3;
            } else {
                i += 1;
                while i < s.len() && (s[i].is_alphanumeric() || s[i] == '_') {
                    i += 1;
                }
            }
            out.push(Token {
                tok: Tok::Other,
                line,
            });
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < s.len() && (s[i].is_alphanumeric() || s[i] == '_') {
                i += 1;
            }
            let word: String = s[start..i].iter().collect();
            let next = at(i);
            if matches!(word.as_str(), "r" | "br" | "cr") && (next == '#' || next == '"') {
                if next == '#' && (at(i + 1).is_alphabetic() || at(i + 1) == '_') {
                    // A raw identifier: r#type.
                    let s2 = i + 1;
                    i += 1;
                    while i < s.len() && (s[i].is_alphanumeric() || s[i] == '_') {
                        i += 1;
                    }
                    out.push(Token {
                        tok: Tok::Ident(s[s2..i].iter().collect()),
                        line,
                    });
                    continue;
                }
                // A raw string: r"…", r#"…"#, with as many hashes as it opened with.
                let mut hashes = 0;
                while at(i) == '#' {
                    hashes += 1;
                    i += 1;
                }
                i += 1; // the opening quote
                let start_line = line;
                loop {
                    if i >= s.len() {
                        break;
                    }
                    if s[i] == '"' && (1..=hashes).all(|k| at(i + k) == '#') {
                        i += 1 + hashes;
                        break;
                    }
                    if s[i] == '\n' {
                        line += 1;
                    }
                    i += 1;
                }
                out.push(Token {
                    tok: Tok::Other,
                    line: start_line,
                });
            } else if matches!(word.as_str(), "b" | "c") && next == '"' {
                let start_line = line;
                i = skip_string(&s, i + 1, &mut line);
                out.push(Token {
                    tok: Tok::Other,
                    line: start_line,
                });
            } else if word == "b" && next == '\'' {
                i += 1;
                if at(i) == '\\' {
                    i += 1;
                }
                i += 1;
                while i < s.len() && s[i] != '\'' {
                    i += 1;
                }
                i += 1;
                out.push(Token {
                    tok: Tok::Other,
                    line,
                });
            } else {
                out.push(Token {
                    tok: Tok::Ident(word),
                    line,
                });
            }
        } else if c.is_ascii_digit() {
            while i < s.len() && (s[i].is_alphanumeric() || s[i] == '_') {
                i += 1;
            }
            out.push(Token {
                tok: Tok::Other,
                line,
            });
        } else if c == ':' && at(i + 1) == ':' {
            out.push(Token {
                tok: Tok::Punct("::"),
                line,
            });
            i += 2;
        } else {
            let p = match c {
                '{' => "{",
                '}' => "}",
                ',' => ",",
                '*' => "*",
                ';' => ";",
                '$' => "$",
                _ => "",
            };
            out.push(Token {
                tok: if p.is_empty() {
                    Tok::Other
                } else {
                    Tok::Punct(p)
                },
                line,
            });
            i += 1;
        }
    }
    out
}

/// Skips a string body from just after its opening quote; returns the index after the
/// closing quote.
fn skip_string(s: &[char], mut i: usize, line: &mut usize) -> usize {
    while i < s.len() {
        match s[i] {
            '\\' => i += 2,
            '"' => return i + 1,
            '\n' => {
                *line += 1;
                i += 1;
            }
            _ => i += 1,
        }
    }
    i
}

fn ident(t: &[Token], i: usize) -> Option<&str> {
    match t.get(i).map(|t| &t.tok) {
        Some(Tok::Ident(s)) => Some(s),
        _ => None,
    }
}

fn punct(t: &[Token], i: usize, p: &str) -> bool {
    matches!(t.get(i).map(|t| &t.tok), Some(Tok::Punct(q)) if *q == p)
}

/// A path tree from `t[i]`: `a::b::C`, `a::{b, c::{d, e}}`, `a::*`. Returns every leaf
/// path (its segments, `self` dropped) and the index after the tree.
fn tree(t: &[Token], mut i: usize) -> (Vec<Vec<String>>, usize) {
    if punct(t, i, "{") {
        return group(t, i);
    }
    let mut segs = Vec::new();
    while let Some(word) = ident(t, i) {
        if word != "self" {
            segs.push(word.to_string());
        }
        i += 1;
        if !punct(t, i, "::") {
            break;
        }
        i += 1;
        if punct(t, i, "{") {
            let (subs, j) = group(t, i);
            let paths = subs
                .into_iter()
                .map(|s| segs.iter().cloned().chain(s).collect())
                .collect();
            return (paths, j);
        }
        if punct(t, i, "*") {
            i += 1;
            break;
        }
    }
    (vec![segs], i)
}

/// A `{ … }` group of path trees, `t[i]` being its `{`.
fn group(t: &[Token], mut i: usize) -> (Vec<Vec<String>>, usize) {
    i += 1;
    let mut out = Vec::new();
    while i < t.len() {
        if punct(t, i, "}") {
            return (out, i + 1);
        }
        if punct(t, i, ",") {
            i += 1;
            continue;
        }
        if ident(t, i) == Some("as") {
            // `x as y`: the alias is a new name, not a path.
            i += 2;
            continue;
        }
        let (paths, j) = tree(t, i);
        out.extend(paths);
        i = if j == i { i + 1 } else { j };
    }
    (out, i)
}

/// One path that names a module item.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Import {
    line: usize,
    /// From the crate root: `["execute", "process", "cpu_ticks"]`.
    path: Vec<String>,
    /// How it was written, for the message.
    written: String,
    /// In test code (`tests.rs`, or an inline `mod tests`/`mod …_tests`), which may
    /// reach sideways inside its module: the circle check skips it.
    in_test: bool,
}

/// Every crate-relative path in one file whose module is `module` (`["signals",
/// "probe"]` for `src/signals/probe.rs`), resolved from the crate root.
fn imports(src: &str, module: &[String]) -> Vec<Import> {
    let t = lex(src);
    let mut out = Vec::new();
    // Inline modules: (name, the brace depth outside its block).
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < t.len() {
        if punct(&t, i, "{") {
            depth += 1;
        } else if punct(&t, i, "}") {
            depth = depth.saturating_sub(1);
            if inline.last().is_some_and(|(_, d)| *d == depth) {
                inline.pop();
            }
        } else if ident(&t, i) == Some("mod")
            && let Some(name) = ident(&t, i + 1)
            && punct(&t, i + 2, "{")
        {
            inline.push((name.to_string(), depth));
        }
        let starts_path = i == 0 || !punct(&t, i - 1, "::");
        let word = ident(&t, i);
        if starts_path && matches!(word, Some("crate" | "super" | "self")) && punct(&t, i + 1, "::")
        {
            let line = t[i].line;
            let in_test = module.last().is_some_and(|m| m == "tests")
                || inline.iter().any(|(n, _)| n.ends_with("tests"));
            let here: Vec<String> = module
                .iter()
                .cloned()
                .chain(inline.iter().map(|(n, _)| n.clone()))
                .collect();
            let base = if word == Some("crate") {
                i += 2;
                Vec::new()
            } else {
                let mut base = here;
                if word == Some("self") {
                    i += 2;
                }
                while ident(&t, i) == Some("super") && punct(&t, i + 1, "::") {
                    base.pop();
                    i += 2;
                }
                base
            };
            let (paths, j) = tree(&t, i);
            let paths = if paths.is_empty() {
                vec![vec![]]
            } else {
                paths
            };
            for p in paths {
                let mut full = base.clone();
                full.extend(p);
                if full.is_empty() {
                    continue;
                }
                out.push(Import {
                    line,
                    written: full.join("::"),
                    path: full,
                    in_test,
                });
            }
            i = j.max(i + 1);
            continue;
        }
        i += 1;
    }
    out
}

/// The table under "## Import directions" in ARCHITECTURE.md: module → the top-level
/// modules it may import.
fn allowed_table(architecture: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut table = BTreeMap::new();
    let mut in_section = false;
    for line in architecture.lines() {
        if line.starts_with("## ") {
            in_section = line.trim() == "## Import directions";
            continue;
        }
        if !in_section || !line.starts_with('|') {
            continue;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let (Some(module), Some(may)) = (cells.get(1), cells.get(2)) else {
            continue;
        };
        let Some(module) = module.strip_prefix('`').and_then(|m| m.strip_suffix('`')) else {
            continue; // the header and the separator row
        };
        let names = may
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect();
        table.insert(module.to_string(), names);
    }
    table
}

/// A file's module path: `src/signals/probe.rs` → `["signals", "probe"]`,
/// `src/execute/mod.rs` → `["execute"]`, `src/lib.rs` → `[]`. `None` for the binary's
/// own files (`main.rs`, `bin/`), which are another crate.
fn module_of(src_dir: &Path, file: &Path) -> Option<Vec<String>> {
    let rel = file.strip_prefix(src_dir).ok()?.with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts == ["main"] || parts.first().is_some_and(|p| p == "bin") {
        return None;
    }
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    Some(parts)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// Every broken rule in the tree under `src_dir`, one line each.
fn check(src_dir: &Path, table: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let mut problems = Vec::new();
    let mut files = Vec::new();
    rust_files(src_dir, &mut files);
    let mut modules: BTreeSet<String> = BTreeSet::new();
    let mut parsed = Vec::new();
    for f in &files {
        let Some(module) = module_of(src_dir, f) else {
            continue;
        };
        if let Some(top) = module.first() {
            modules.insert(top.clone());
        }
        let text = std::fs::read_to_string(f).unwrap();
        parsed.push((f.clone(), module.clone(), imports(&text, &module)));
    }
    for m in &modules {
        if !table.contains_key(m) {
            problems.push(format!(
                "src/{m}: a top-level module missing from ARCHITECTURE.md's import directions: add a row saying what it may import"
            ));
        }
    }
    for m in table.keys() {
        if !modules.contains(m) {
            problems.push(format!(
                "ARCHITECTURE.md's import directions name `{m}`, which is not a module in src/"
            ));
        }
    }
    // Files inside one top-level module: file node → sibling nodes it imports.
    let mut inner: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for (file, module, imports) in &parsed {
        let rel = file
            .strip_prefix(src_dir.parent().unwrap())
            .unwrap()
            .display();
        let Some(from) = module.first() else {
            continue;
        };
        for imp in imports {
            let to = &imp.path[0];
            if to == from {
                if module.len() >= 2
                    && !imp.in_test
                    && imp.path.len() >= 2
                    && imp.path[1] != module[1]
                    && modules_in(src_dir, from).contains(&imp.path[1])
                {
                    inner
                        .entry(from.clone())
                        .or_default()
                        .entry(module[1].clone())
                        .or_default()
                        .insert(imp.path[1].clone());
                }
                continue;
            }
            if !modules.contains(to) {
                continue; // a crate-root item (a macro), not a module
            }
            let Some(may) = table.get(from) else {
                continue;
            };
            if may.contains(to) {
                continue;
            }
            let may: Vec<&str> = may.iter().map(String::as_str).collect();
            problems.push(format!(
                "{rel}:{}: {from} → {to} is against the import directions (`crate::{}`); {from} may import: {}",
                imp.line,
                imp.written,
                if may.is_empty() {
                    "nothing".to_string()
                } else {
                    may.join(", ")
                }
            ));
        }
    }
    for (top, graph) in &inner {
        if let Some(cycle) = find_cycle(graph) {
            problems.push(format!(
                "src/{top}/: an import circle between its files: {}",
                cycle.join(" → ")
            ));
        }
    }
    problems
}

/// The child modules of top-level module `top`: its files and folders.
fn modules_in(src_dir: &Path, top: &str) -> BTreeSet<String> {
    let Ok(entries) = std::fs::read_dir(src_dir.join(top)) else {
        return BTreeSet::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let p = e.path();
            if p.is_dir() {
                p.join("mod.rs")
                    .exists()
                    .then(|| e.file_name().to_string_lossy().into_owned())
            } else if p.extension().is_some_and(|x| x == "rs") && p.file_stem().unwrap() != "mod" {
                Some(p.file_stem().unwrap().to_string_lossy().into_owned())
            } else {
                None
            }
        })
        .collect()
}

/// A circle in a directed graph, as its nodes with the first repeated at the end.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|s| s == n) {
            let mut cycle = stack[at..].to_vec();
            cycle.push(n.to_string());
            return Some(cycle);
        }
        if done.contains(n) {
            return None;
        }
        stack.push(n.to_string());
        for next in graph.get(n).into_iter().flatten() {
            if let Some(c) = visit(next, graph, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for n in graph.keys() {
        if let Some(c) = visit(n, graph, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}

fn table() -> BTreeMap<String, BTreeSet<String>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let table = allowed_table(&text);
    assert!(
        table.len() > 10,
        "ARCHITECTURE.md has no \"## Import directions\" table (found {table:?})"
    );
    table
}

#[test]
fn imports_follow_the_directions_in_architecture_md() {
    let src = std::env::var_os("RIPCORD_ARROWS_SRC").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        PathBuf::from,
    );
    let problems = check(&src, &table());
    assert!(
        problems.is_empty(),
        "{} import(s) against the directions:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

fn paths(src: &str, module: &[&str]) -> Vec<(usize, String)> {
    let module: Vec<String> = module.iter().map(|s| s.to_string()).collect();
    imports(src, &module)
        .into_iter()
        .map(|i| (i.line, i.written))
        .collect()
}

#[test]
fn the_scanner_reads_groups_chains_and_qualified_paths() {
    let src = r#"
use crate::{clock::now_ms, execute::{Router, process::cpu_ticks as ticks}};
use super::Observation;
pub(crate) fn f() {
    let x = crate::ledger::holder_alive(1, None, 0);
}
mod tests {
    use super::super::schema::step;
    use super::*;
}
"#;
    assert_eq!(
        paths(src, &["signals", "probe"]),
        vec![
            (2, "clock::now_ms".to_string()),
            (2, "execute::Router".to_string()),
            (2, "execute::process::cpu_ticks".to_string()),
            (3, "signals::Observation".to_string()),
            (5, "ledger::holder_alive".to_string()),
            (8, "signals::schema::step".to_string()),
            (9, "signals::probe".to_string()),
        ]
    );
}

#[test]
fn the_scanner_skips_comments_strings_and_chars() {
    let src = r##"
// use crate::execute::ServiceExec;
/* use crate::execute::Router; /* nested */ crate::execute::x */
/// Calls [`crate::execute::ServiceExec::rollback`].
let a = "crate::execute::Router";
let b = r#"crate::execute::"Router"#;
let c = '"'; let d = b'"'; let e: &'static str = "";
let f = crate::os::rss_mb(1);
"##;
    assert_eq!(
        paths(src, &["signals"]),
        vec![(8, "os::rss_mb".to_string())]
    );
}

/// Regression: on main before issue 17, `signals/` and `ledger/` imported `execute/`
/// and `migrate/model.rs` and `migrate/types.rs` imported each other. These are those
/// files' imports, verbatim.
#[test]
fn the_old_upward_imports_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let files = [
        ("lib.rs", ""),
        ("execute/mod.rs", "use crate::signals::Targets;"),
        (
            "signals/probe.rs",
            "use super::Observation;\nuse crate::clock::now_ms;\nuse crate::execute::{Router, ServiceExec};\n",
        ),
        (
            "signals/process.rs",
            "use crate::execute::ServiceExec;\nuse crate::execute::process::{cpu_ticks, rss_mb, ticks_per_sec};\n",
        ),
        (
            "ledger/mod.rs",
            "fn f() {\n    let t = crate::execute::process::process_start_ticks(pid).map(|t| t as i64);\n}\n",
        ),
        ("migrate/mod.rs", "mod model;\nmod types;\n"),
        ("migrate/model.rs", "use super::types::Ty;\n"),
        (
            "migrate/types.rs",
            "use sqlparser::ast::Expr;\n\nuse super::model::DefaultKind;\n",
        ),
        ("clock.rs", ""),
        ("db/mod.rs", ""),
        ("db/backup.rs", "use super::conn::tool;\n"),
        (
            "db/conn.rs",
            "#[cfg(test)]\nmod tests {\n    use super::super::backup::pg_dump_command;\n}\n",
        ),
        ("os/mod.rs", ""),
    ];
    for (path, text) in files {
        let p = src.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    let table: BTreeMap<String, BTreeSet<String>> = table()
        .into_iter()
        .filter(|(m, _)| {
            [
                "clock", "db", "execute", "ledger", "migrate", "os", "signals",
            ]
            .contains(&m.as_str())
        })
        .collect();
    let problems: Vec<String> = check(&src, &table)
        .into_iter()
        .filter(|p| !p.starts_with("ARCHITECTURE.md"))
        .map(|p| p.split(" is against").next().unwrap().to_string())
        .collect();
    assert_eq!(
        problems,
        vec![
            "src/ledger/mod.rs:2: ledger → execute",
            "src/signals/probe.rs:3: signals → execute",
            "src/signals/probe.rs:3: signals → execute",
            "src/signals/process.rs:1: signals → execute",
            "src/signals/process.rs:2: signals → execute",
            "src/signals/process.rs:2: signals → execute",
            "src/signals/process.rs:2: signals → execute",
            "src/migrate/: an import circle between its files: model → types → model",
        ]
    );
}
