//! What the targets are fed: real valid inputs (fixtures, the README's and examples'
//! files) mutated a few times each (bytes inserted, deleted, flipped, ranges duplicated,
//! spliced from another seed, interesting tokens dropped in: huge numbers, deep nesting,
//! unicode, NUL, CRLF), token soups of the format's own words, and plain random bytes.

use proptest::collection::vec;
use proptest::prelude::*;
use std::sync::Arc;

/// Tokens that break parsers in every format.
pub const GENERIC: &[&str] = &[
    "\0",
    "\r\n",
    "\n",
    "\r",
    "\t",
    " ",
    "\"",
    "'",
    "\\",
    "`",
    "#",
    ";",
    "=",
    ":",
    ",",
    "{",
    "}",
    "[",
    "]",
    "(",
    ")",
    "$",
    "${",
    "%",
    "-",
    "99999999999999999999999999999999",
    "-9223372036854775809",
    "18446744073709551616",
    "1e308",
    "1e999",
    "NaN",
    "-0",
    "0x",
    "é",
    "🚀",
    "\u{202e}",
    "\u{feff}",
    "\u{fffd}",
    "\u{7f}",
    "\u{85}",
    "\u{2028}",
    "ÿ",
];

#[derive(Debug, Clone)]
pub enum Mutation {
    /// Insert a dictionary token (the format's own, or a generic one) at a position.
    Token(usize, usize),
    /// Insert random bytes.
    Bytes(usize, Vec<u8>),
    /// Delete up to `len` bytes.
    Delete(usize, usize),
    /// Flip one bit of one byte.
    Flip(usize, u8),
    /// Copy a range to another position.
    Duplicate(usize, usize, usize),
    /// Splice in a range of another seed.
    Splice(usize, usize, usize, usize),
    /// Repeat a short range many times in place (deep nesting, long runs).
    Repeat(usize, usize, usize),
    /// Cut the input short.
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<usize>(), any::<usize>()).prop_map(|(at, t)| Mutation::Token(at, t)),
        2 => (any::<usize>(), vec(any::<u8>(), 1..8)).prop_map(|(at, b)| Mutation::Bytes(at, b)),
        2 => (any::<usize>(), 1usize..64).prop_map(|(at, n)| Mutation::Delete(at, n)),
        2 => (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip(at, bit)),
        1 => (any::<usize>(), 1usize..64, any::<usize>())
            .prop_map(|(from, n, to)| Mutation::Duplicate(from, n, to)),
        1 => (any::<usize>(), any::<usize>(), 1usize..200, any::<usize>())
            .prop_map(|(seed, from, n, to)| Mutation::Splice(seed, from, n, to)),
        1 => (any::<usize>(), 1usize..8, 2usize..3000)
            .prop_map(|(at, n, times)| Mutation::Repeat(at, n, times)),
        1 => any::<usize>().prop_map(Mutation::Truncate),
    ]
}

/// The most bytes a mutated input grows to, so one input stays a parse, not a load test.
const MAX_LEN: usize = 256 * 1024;

pub fn apply(seed: &[u8], muts: &[Mutation], dict: &[&str], seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut b = seed.to_vec();
    let pos = |at: usize, b: &Vec<u8>| at % (b.len() + 1);
    for m in muts {
        match m {
            Mutation::Token(at, t) => {
                let all = dict.len() + GENERIC.len();
                let t = t % all;
                let tok = if t < dict.len() {
                    dict[t]
                } else {
                    GENERIC[t - dict.len()]
                };
                let at = pos(*at, &b);
                b.splice(at..at, tok.bytes());
            }
            Mutation::Bytes(at, bytes) => {
                let at = pos(*at, &b);
                b.splice(at..at, bytes.iter().copied());
            }
            Mutation::Delete(at, n) => {
                let at = pos(*at, &b);
                let end = (at + n).min(b.len());
                b.drain(at..end);
            }
            Mutation::Flip(at, bit) => {
                if !b.is_empty() {
                    let at = at % b.len();
                    b[at] ^= 1 << bit;
                }
            }
            Mutation::Duplicate(from, n, to) => {
                let from = pos(*from, &b);
                let end = (from + n).min(b.len());
                let piece = b[from..end].to_vec();
                let to = pos(*to, &b);
                b.splice(to..to, piece);
            }
            Mutation::Splice(seed, from, n, to) => {
                let other = &seeds[seed % seeds.len()];
                let from = from % (other.len() + 1);
                let end = (from + n).min(other.len());
                let to = pos(*to, &b);
                b.splice(to..to, other[from..end].iter().copied());
            }
            Mutation::Repeat(at, n, times) => {
                let at = pos(*at, &b);
                let end = (at + n).min(b.len());
                let piece = b[at..end].to_vec();
                let times = (*times).min(MAX_LEN / piece.len().max(1));
                let repeated: Vec<u8> = piece.repeat(times);
                b.splice(at..end, repeated);
            }
            Mutation::Truncate(at) => {
                let at = pos(*at, &b);
                b.truncate(at);
            }
        }
        b.truncate(MAX_LEN);
    }
    b
}

/// Mutated seeds, token soups and random bytes, as bytes.
pub fn bytes(seeds: Vec<Vec<u8>>, dict: &'static [&'static str]) -> BoxedStrategy<Vec<u8>> {
    assert!(!seeds.is_empty(), "a target needs at least one seed");
    let seeds = Arc::new(seeds);
    let n = seeds.len();
    let for_mutation = seeds.clone();
    let mutated = (0..n, vec(mutation(), 0..10))
        .prop_map(move |(i, muts)| apply(&for_mutation[i], &muts, dict, &for_mutation));
    let all = dict.len() + GENERIC.len();
    let soup = vec((0..all, 0usize..4), 0..80).prop_map(move |toks| {
        let mut out = Vec::new();
        for (t, sep) in toks {
            let tok = if t < dict.len() {
                dict[t]
            } else {
                GENERIC[t - dict.len()]
            };
            out.extend_from_slice(tok.as_bytes());
            out.extend_from_slice([" ", "", "\n", "\t"][sep].as_bytes());
        }
        out
    });
    let seeds_whole = (0..n).prop_map(move |i| seeds[i].clone());
    prop_oneof![
        12 => mutated,
        3 => soup,
        2 => vec(any::<u8>(), 0..512),
        1 => seeds_whole,
    ]
    .boxed()
}

/// [`bytes`] as text, with invalid UTF-8 replaced (what `from_utf8_lossy` readers see).
pub fn text(seeds: Vec<String>, dict: &'static [&'static str]) -> BoxedStrategy<String> {
    bytes(seeds.into_iter().map(String::into_bytes).collect(), dict)
        .prop_map(|b| String::from_utf8_lossy(&b).into_owned())
        .boxed()
}

/// The fenced code blocks of `markdown` in `lang` (```toml, ```nginx, ...).
pub fn fenced(markdown: &str, lang: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        let fence = line.trim_start().strip_prefix("```");
        match (&mut current, fence) {
            (None, Some(tag)) if tag.trim() == lang => current = Some(String::new()),
            (Some(_), Some(_)) => out.extend(current.take()),
            (Some(block), None) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    out
}
