//! Parses a Python migration with tree-sitter, after measuring its indentation the way
//! CPython's tokenizer does: a file Python itself refuses, or one whose indentation
//! would overflow tree-sitter's scanner (which aborts the process), is never handed to
//! the parser, and the parse itself is bounded by the file's size (`syntax.rs`).
//! Shared by every Python front end.

use tree_sitter::{Parser, Tree};

use super::syntax::parse_bounded;

/// The most indentation levels CPython accepts: its tokenizer refuses the 100th with
/// "too many levels of indentation".
const MAX_INDENT_LEVELS: usize = 99;

/// The most distinct indentation widths a file may have for tree-sitter. Its Python
/// scanner saves its stack of indentation widths in a 1024-byte buffer (2 bytes a
/// width, after up to 257 bytes of string delimiters) and aborts the whole process
/// when the stack does not fit. The stack only ever holds increasing widths, so no
/// more widths than the file has distinct ones; this bound keeps it well inside the
/// buffer whatever the parser's error recovery pushes.
const MAX_INDENT_WIDTHS: usize = 300;

/// Why a file was not handed to the parser.
pub(crate) struct NotParsed {
    pub line: usize,
    pub why: String,
}

pub(crate) fn parse(text: &str) -> Result<Tree, NotParsed> {
    if let Some(refused) = too_deep(text) {
        return Err(refused);
    }
    let not_started = || NotParsed {
        line: 1,
        why: "the Python parser could not be started".into(),
    };
    let mut parser = Parser::new();
    parser
        .set_language(&tree_sitter_python::LANGUAGE.into())
        .map_err(|_| not_started())?;
    parse_bounded(&mut parser, text).map_err(|e| {
        let (line, why) = e.explain("Python");
        NotParsed { line, why }
    })
}

/// Measures indentation before parsing, as CPython's tokenizer does: a stack of the
/// indentation widths of logical lines (blank lines, comment-only lines and lines
/// inside brackets or strings do not count), one level per width deeper than the one
/// before. Returns why the file is refused when it nests deeper than CPython allows, or
/// has more distinct indentation widths than tree-sitter can hold.
fn too_deep(text: &str) -> Option<NotParsed> {
    let mut stack: Vec<usize> = vec![0];
    let mut widths = std::collections::HashSet::new();
    // Open brackets and the open string (its quote character and whether it is
    // triple-quoted), carried from line to line.
    let mut brackets = 0usize;
    let mut string: Option<(char, bool)> = None;
    let mut continued = false;
    // The width a line of only whitespace and a backslash hands on to the next.
    let mut carry = 0usize;
    for (i, line) in text.split('\n').enumerate() {
        // The width tree-sitter's scanner computes: a space counts 1, a tab 8, a
        // carriage return or form feed starts again from 0.
        let mut width = std::mem::take(&mut carry);
        let mut body = "";
        for (at, c) in line.char_indices() {
            match c {
                ' ' => width += 1,
                '\t' => width += 8,
                '\r' | '\x0c' => width = 0,
                _ => {
                    body = &line[at..];
                    break;
                }
            }
        }
        if matches!(body, "\\" | "\\\r") {
            carry = width;
            continue;
        }
        if width > 0 {
            widths.insert(width);
        }
        if widths.len() > MAX_INDENT_WIDTHS {
            return Some(NotParsed {
                line: i + 1,
                why: format!(
                    "more than {MAX_INDENT_WIDTHS} different indentation widths: ripcord does not parse this file"
                ),
            });
        }
        let logical = brackets == 0 && string.is_none() && !continued;
        let blank = body.is_empty() || body.starts_with('#');
        if logical && !blank {
            while stack.last().is_some_and(|&top| top > width) {
                stack.pop();
            }
            if stack.last().is_some_and(|&top| top < width) {
                stack.push(width);
                if stack.len() - 1 > MAX_INDENT_LEVELS {
                    return Some(NotParsed {
                        line: i + 1,
                        why: format!(
                            "indentation nested more than {MAX_INDENT_LEVELS} levels deep: Python refuses the file (\"too many levels of indentation\") and ripcord does not parse it"
                        ),
                    });
                }
            }
        }
        continued = scan_line(body, &mut brackets, &mut string);
    }
    None
}

/// Follows brackets and strings through one line; returns whether the line ends in a
/// backslash continuation.
fn scan_line(line: &str, brackets: &mut usize, string: &mut Option<(char, bool)>) -> bool {
    let chars: Vec<char> = line.trim_end_matches('\r').chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match *string {
            Some((q, triple)) => {
                if c == '\\' {
                    if i + 1 == chars.len() {
                        return true;
                    }
                    i += 2;
                    continue;
                }
                if c == q {
                    if !triple {
                        *string = None;
                    } else if chars.get(i + 1) == Some(&q) && chars.get(i + 2) == Some(&q) {
                        *string = None;
                        i += 3;
                        continue;
                    }
                }
            }
            None => match c {
                '#' => return false,
                '\\' if i + 1 == chars.len() => return true,
                '(' | '[' | '{' => *brackets += 1,
                ')' | ']' | '}' => *brackets = brackets.saturating_sub(1),
                '\'' | '"' => {
                    let triple = chars.get(i + 1) == Some(&c) && chars.get(i + 2) == Some(&c);
                    *string = Some((c, triple));
                    if triple {
                        i += 3;
                        continue;
                    }
                }
                _ => {}
            },
        }
        i += 1;
    }
    // A one-line string ends with its line (or is an error the parser reports).
    if string.is_some_and(|(_, triple)| !triple) {
        *string = None;
    }
    false
}
