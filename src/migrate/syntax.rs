//! Tree-sitter helpers shared by the readers of Python (Alembic, Django, constants) and
//! Ruby (Rails) migrations.

use tree_sitter::Node;

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
