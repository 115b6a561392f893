//! Small facts about SQL text shared by the SQL front end and the PL/pgSQL reader: a
//! statement's piece of text with its line, its first word, and where a tokenizer
//! location falls in the text. A leaf: it imports nothing from the checker.

/// One statement's text and its first line.
pub(crate) struct Piece {
    pub text: String,
    pub line: usize,
}

/// The first word of a statement, upper-cased (`None` when it starts with no word).
pub(crate) fn first_word(text: &str) -> Option<String> {
    let t = text.trim_start();
    let end = t
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(t.len());
    (end > 0).then(|| t[..end].to_ascii_uppercase())
}

/// The text after the first word, and how many lines that skipped.
pub(crate) fn after_first_word(text: &str) -> (&str, usize) {
    let lead = text.len() - text.trim_start().len();
    let t = &text[lead..];
    let end = t
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(t.len());
    let rest = &t[end..];
    let rest_trimmed = rest.trim_start();
    let skipped = &text[..text.len() - rest_trimmed.len()];
    (rest_trimmed, skipped.matches('\n').count())
}

/// The byte offset of a tokenizer location (1-based line and character column).
pub(crate) fn offset_of(text: &str, loc: &sqlparser::tokenizer::Location) -> Option<usize> {
    let mut line = 1u64;
    let mut col = 1u64;
    for (i, c) in text.char_indices() {
        if line == loc.line && col == loc.column {
            return Some(i);
        }
        if c == '\n' {
            line += 1;
            col = 1;
        } else {
            col += 1;
        }
    }
    (line == loc.line && col == loc.column).then_some(text.len())
}
