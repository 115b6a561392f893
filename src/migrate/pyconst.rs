//! Python string values a migration file builds from what is written in it: literals,
//! f-strings, `+`, `%` and `.format()` whose every part is a literal or a constant the
//! caller can resolve. The Alembic front end hands the result to the SQL front end.
//!
//! It never runs Python and never guesses: a part known only at run time (a loop
//! variable, a function's result, a format spec) is an error naming that part.

use tree_sitter::Node;

use super::syntax::{children, line, text};

/// Resolves a name to a string value and the line it was written on (0: unknown).
pub(crate) type Lookup<'a> = &'a dyn Fn(&str) -> Option<(String, usize)>;

/// How deep expressions are followed (`a + b + c ...` nests to the left).
const MAX_DEPTH: usize = 64;

fn shown(src: &str, n: Node<'_>) -> String {
    let t = text(src, n);
    let one: String = t.split_whitespace().collect::<Vec<_>>().join(" ");
    if one.chars().count() > 40 {
        format!("`{}...`", one.chars().take(40).collect::<String>())
    } else {
        format!("`{one}`")
    }
}

/// A Python string literal's value and the line its content starts on; `None` for
/// anything else, including f-strings with placeholders.
pub(crate) fn string_value(src: &str, n: Node<'_>) -> Option<(String, usize)> {
    // Parentheses are peeled in a loop: recursion would let `((((...` exhaust the stack.
    let mut n = n;
    while n.kind() == "parenthesized_expression" {
        n = n.named_child(0)?;
    }
    match n.kind() {
        "string" => {
            let kids = children(n);
            if kids.iter().any(|k| k.kind() == "interpolation") {
                return None;
            }
            let start = kids.iter().find(|k| k.kind() == "string_start")?;
            let end = kids.iter().rev().find(|k| k.kind() == "string_end")?;
            let prefix = src.get(start.byte_range())?.to_ascii_lowercase();
            let raw = src.get(start.end_byte()..end.start_byte())?;
            let mut value = if prefix.contains('r') {
                raw.to_string()
            } else {
                unescape(raw)
            };
            if prefix.contains('f') {
                value = value.replace("{{", "{").replace("}}", "}");
            }
            Some((value, line(n)))
        }
        "concatenated_string" => {
            let mut out = String::new();
            for k in children(n) {
                out.push_str(&string_value(src, k)?.0);
            }
            Some((out, line(n)))
        }
        _ => None,
    }
}

pub(crate) fn unescape(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('\n') => {
                // A line continuation: keep the line count right for SQL line numbers.
                out.push('\n');
            }
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

/// The string `n` evaluates to when every part of it is known from the file, with the
/// line it starts on; otherwise what is known only at run time ("an f-string with
/// `{table}`"), for the finding's message.
pub(crate) fn eval(
    src: &str,
    n: Node<'_>,
    lookup: Lookup<'_>,
    depth: usize,
) -> Result<(String, usize), String> {
    if let Some(s) = string_value(src, n) {
        return Ok(s);
    }
    if depth > MAX_DEPTH {
        return Err("an expression nested too deep".into());
    }
    let at = line(n);
    match n.kind() {
        "parenthesized_expression" => match n.named_child(0) {
            Some(inner) => eval(src, inner, lookup, depth + 1),
            None => Err(shown(src, n)),
        },
        "integer" => Ok((text(src, n).to_string(), at)),
        "identifier" => {
            let name = text(src, n);
            lookup(name)
                .map(|(s, l)| (s, if l == 0 { at } else { l }))
                .ok_or_else(|| format!("`{name}`, whose value is known only at run time"))
        }
        "string" => fstring(src, n, lookup, depth).map(|s| (s, at)),
        "concatenated_string" => {
            let mut out = String::new();
            for k in children(n) {
                out.push_str(&eval(src, k, lookup, depth + 1)?.0);
            }
            Ok((out, at))
        }
        "binary_operator" => {
            let (Some(l), Some(op), Some(r)) = (
                n.child_by_field_name("left"),
                n.child_by_field_name("operator"),
                n.child_by_field_name("right"),
            ) else {
                return Err(shown(src, n));
            };
            match text(src, op) {
                "+" => {
                    let (a, l_line) = eval(src, l, lookup, depth + 1)?;
                    let (b, _) = eval(src, r, lookup, depth + 1)?;
                    Ok((a + &b, l_line))
                }
                "%" => {
                    let (fmt, l_line) = eval(src, l, lookup, depth + 1)?;
                    let args = match r.kind() {
                        "tuple" => children(r)
                            .into_iter()
                            .map(|a| eval(src, a, lookup, depth + 1).map(|v| v.0))
                            .collect::<Result<Vec<_>, _>>()?,
                        _ => vec![eval(src, r, lookup, depth + 1)?.0],
                    };
                    percent(&fmt, &args).map(|s| (s, l_line))
                }
                _ => Err(shown(src, n)),
            }
        }
        "call" => {
            let Some(func) = n.child_by_field_name("function") else {
                return Err(shown(src, n));
            };
            let fname = text(src, func);
            let args: Vec<Node<'_>> = n
                .child_by_field_name("arguments")
                .map(children)
                .unwrap_or_default()
                .into_iter()
                .filter(|a| a.kind() != "comment")
                .collect();
            if func.kind() == "attribute"
                && let (Some(obj), Some(attr)) = (
                    func.child_by_field_name("object"),
                    func.child_by_field_name("attribute"),
                )
                && text(src, attr) == "format"
            {
                let (fmt, l_line) = eval(src, obj, lookup, depth + 1)?;
                let mut pos = Vec::new();
                let mut kw = Vec::new();
                for a in args {
                    if a.kind() == "keyword_argument" {
                        let (Some(k), Some(v)) = (
                            a.child_by_field_name("name"),
                            a.child_by_field_name("value"),
                        ) else {
                            return Err(shown(src, a));
                        };
                        kw.push((text(src, k).to_string(), eval(src, v, lookup, depth + 1)?.0));
                    } else {
                        pos.push(eval(src, a, lookup, depth + 1)?.0);
                    }
                }
                return format(&fmt, &pos, &kw).map(|s| (s, l_line));
            }
            let last = fname.rsplit('.').next().unwrap_or(fname);
            if matches!(last, "text" | "dedent" | "inline_literal")
                && let [only] = args.as_slice()
                && only.kind() != "keyword_argument"
            {
                return eval(src, *only, lookup, depth + 1);
            }
            Err(format!(
                "{}, a call ripcord does not evaluate",
                shown(src, n)
            ))
        }
        _ => Err(shown(src, n)),
    }
}

/// An f-string whose placeholders are all plain names or literals that resolve.
fn fstring(src: &str, n: Node<'_>, lookup: Lookup<'_>, depth: usize) -> Result<String, String> {
    let kids = children(n);
    let (Some(start), Some(end)) = (
        kids.iter().find(|k| k.kind() == "string_start"),
        kids.iter().rev().find(|k| k.kind() == "string_end"),
    ) else {
        return Err(shown(src, n));
    };
    let raw_prefix = text(src, *start).to_ascii_lowercase().contains('r');
    let literal = |from: usize, to: usize| -> String {
        let raw = src.get(from..to).unwrap_or("");
        let v = if raw_prefix {
            raw.to_string()
        } else {
            unescape(raw)
        };
        v.replace("{{", "{").replace("}}", "}")
    };
    let mut out = String::new();
    let mut at = start.end_byte();
    for k in kids.iter().filter(|k| k.kind() == "interpolation") {
        out.push_str(&literal(at, k.start_byte()));
        let inner = text(src, *k);
        let bad = || format!("an f-string with `{inner}`, known only at run time");
        if k.child_by_field_name("type_conversion").is_some()
            || k.child_by_field_name("format_specifier").is_some()
        {
            return Err(bad());
        }
        let expr = k.child_by_field_name("expression").ok_or_else(bad)?;
        out.push_str(&eval(src, expr, lookup, depth + 1).map_err(|_| bad())?.0);
        at = k.end_byte();
    }
    out.push_str(&literal(at, end.start_byte()));
    Ok(out)
}

/// `fmt % args` for `%s` and `%d` (and `%%`), the forms SQL is built with.
fn percent(fmt: &str, args: &[String]) -> Result<String, String> {
    let mut out = String::new();
    let mut next = args.iter();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('%') => out.push('%'),
            Some('s' | 'd') => match next.next() {
                Some(v) => out.push_str(v),
                None => return Err("`%` formatting with too few values".into()),
            },
            _ => return Err("`%` formatting with a conversion ripcord does not read".into()),
        }
    }
    if next.next().is_some() {
        return Err("`%` formatting with too many values".into());
    }
    Ok(out)
}

/// `fmt.format(*pos, **kw)` for `{}`, `{0}` and `{name}` (and `{{`, `}}`).
fn format(fmt: &str, pos: &[String], kw: &[(String, String)]) -> Result<String, String> {
    let mut out = String::new();
    let mut auto = 0usize;
    let mut rest = fmt;
    while let Some(i) = rest.find(['{', '}']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if tail.starts_with("{{") || tail.starts_with("}}") {
            out.push_str(&tail[..1]);
            rest = &tail[2..];
            continue;
        }
        if tail.starts_with('}') {
            return Err("`.format()` with a stray `}`".into());
        }
        let Some(close) = tail.find('}') else {
            return Err("`.format()` with an unclosed `{`".into());
        };
        let field = &tail[1..close];
        let value = if field.is_empty() {
            auto += 1;
            pos.get(auto - 1)
        } else if let Ok(i) = field.parse::<usize>() {
            pos.get(i)
        } else if field.chars().all(|c| c.is_alphanumeric() || c == '_') {
            kw.iter().find(|(k, _)| k == field).map(|(_, v)| v)
        } else {
            return Err(format!(
                "`.format()` with `{{{field}}}`, which ripcord does not read"
            ));
        };
        match value {
            Some(v) => out.push_str(v),
            None => return Err(format!("`.format()` with no value for `{{{field}}}`")),
        }
        rest = &tail[close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_and_format() {
        assert_eq!(
            percent("DROP %s; 100%%", &["t".into()]).unwrap(),
            "DROP t; 100%"
        );
        assert!(percent("%r", &["t".into()]).is_err());
        assert!(percent("%s %s", &["t".into()]).is_err());
        assert_eq!(
            format(
                "{} {0} {name} {{x}}",
                &["a".into()],
                &[("name".into(), "n".into())]
            )
            .unwrap(),
            "a a n {x}"
        );
        assert!(format("{:>10}", &["a".into()], &[]).is_err());
        assert!(format("{missing}", &[], &[]).is_err());
    }
}
