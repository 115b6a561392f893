//! Tree-sitter helpers shared by the readers of Python (Alembic, Django, constants) and
//! Ruby (Rails) migrations.

use std::ops::ControlFlow;

use tree_sitter::{Node, ParseOptions, ParseState, Parser, Tree};

/// The work tree-sitter may do on a file, in its progress reports (one per 100 parse
/// operations): a fixed allowance plus one per 5 bytes. Valid migrations take about 11
/// to 18 reports a KB and mangled ones up to 25, but tree-sitter-python's error
/// recovery is quadratic on some inputs (`:x :x :x ...` after a syntax error: 2 KB took
/// 1,640 reports and 0.4 s unoptimised, 4 KB 6,480 and 1.5 s): the budget keeps every
/// parse linear in the file's size, deterministically (no clock).
fn budget(len: usize) -> u64 {
    2_000 + len as u64 / 5
}

/// Why [`parse_bounded`] gave no tree.
pub(crate) enum Unparsed {
    /// The parser stopped at its budget, near this 1-based line.
    OverBudget { line: usize },
    /// tree-sitter gave no tree for another reason.
    Failed,
}

/// Parses `text` with `parser` within [`budget`].
pub(crate) fn parse_bounded(parser: &mut Parser, text: &str) -> Result<Tree, Unparsed> {
    let bytes = text.as_bytes();
    let allowed = budget(bytes.len());
    let mut reports = 0u64;
    let mut stopped_at: Option<usize> = None;
    let mut progress = |state: &ParseState| {
        reports += 1;
        if reports > allowed {
            stopped_at = Some(state.current_byte_offset());
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    };
    let tree = parser.parse_with_options(
        &mut |at, _| bytes.get(at..).unwrap_or_default(),
        None,
        Some(ParseOptions::new().progress_callback(&mut progress)),
    );
    match (tree, stopped_at) {
        (Some(tree), None) => Ok(tree),
        (_, Some(at)) => {
            let end = at.min(bytes.len());
            let line = 1 + bytes[..end].iter().filter(|&&b| b == b'\n').count();
            Err(Unparsed::OverBudget { line })
        }
        (None, None) => Err(Unparsed::Failed),
    }
}

impl Unparsed {
    /// The line to report and why, for a file in `language`.
    pub(crate) fn explain(&self, language: &str) -> (usize, String) {
        match self {
            Unparsed::OverBudget { line } => (
                *line,
                format!(
                    "the {language} parser gave up recovering from the syntax errors around \
                     here (its work is bounded by the file's size): this is not valid {language}"
                ),
            ),
            Unparsed::Failed => (1, format!("the {language} parser could not read this file")),
        }
    }
}

/// The 1-based line a node starts on.
pub(crate) fn line(n: Node<'_>) -> usize {
    n.start_position().row + 1
}

pub(crate) fn children<'t>(n: Node<'t>) -> Vec<Node<'t>> {
    let mut c = n.walk();
    n.named_children(&mut c).collect()
}

/// The source text of a node.
pub(crate) fn text<'s>(src: &'s str, n: Node<'_>) -> &'s str {
    src.get(n.byte_range()).unwrap_or("")
}

/// `#` comments with their lines, found by walking the tree without recursion.
pub(crate) fn comments(src: &str, root: Node<'_>) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut cursor = root.walk();
    loop {
        let n = cursor.node();
        if n.kind() == "comment" {
            out.push((line(n), text(src, n).trim_start_matches('#').to_string()));
        }
        if cursor.goto_first_child() {
            continue;
        }
        loop {
            if cursor.goto_next_sibling() {
                break;
            }
            if !cursor.goto_parent() {
                return out;
            }
        }
    }
}

/// The first node the parser could not read (an error or a missing token), walking
/// only into subtrees that hold one.
pub(crate) fn first_error(root: Node<'_>) -> Option<Node<'_>> {
    let mut cursor = root.walk();
    loop {
        let n = cursor.node();
        if n.is_error() || n.is_missing() {
            return Some(n);
        }
        if n.has_error() && cursor.goto_first_child() {
            continue;
        }
        loop {
            if cursor.goto_next_sibling() {
                break;
            }
            if !cursor.goto_parent() {
                return None;
            }
        }
    }
}
