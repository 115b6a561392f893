//! Cutting the bytes read from a log into lines, across reads.

use super::MAX_LINE;

/// A piece of input the splitter hands on.
pub(super) enum Piece<'a> {
    Line(&'a [u8]),
    /// A line longer than [`MAX_LINE`], already dropped.
    TooLong,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Skip {
    No,
    /// The rest of a line the follower joined in the middle of.
    Silently,
    /// The rest of an over-long line, reported once as [`Piece::TooLong`].
    AsTooLong,
}

/// Cuts a byte stream into lines, keeping an unfinished last line (up to [`MAX_LINE`])
/// until its newline arrives.
#[derive(Debug)]
pub(super) struct LineSplitter {
    partial: Vec<u8>,
    pub(super) skip: Skip,
}

impl LineSplitter {
    pub(super) fn new() -> LineSplitter {
        LineSplitter {
            partial: Vec::new(),
            skip: Skip::No,
        }
    }

    pub(super) fn feed(&mut self, mut chunk: &[u8], mut each: impl FnMut(Piece<'_>)) {
        if self.skip != Skip::No || !self.partial.is_empty() {
            let Some(nl) = memchr::memchr(b'\n', chunk) else {
                self.keep(chunk);
                return;
            };
            let head = &chunk[..nl];
            chunk = &chunk[nl + 1..];
            match self.skip {
                Skip::No if self.partial.len() + head.len() > MAX_LINE => each(Piece::TooLong),
                Skip::No => {
                    self.partial.extend_from_slice(head);
                    each(Piece::Line(&self.partial));
                }
                Skip::Silently => {}
                Skip::AsTooLong => each(Piece::TooLong),
            }
            self.partial.clear();
            self.skip = Skip::No;
        }
        let mut start = 0;
        for nl in memchr::memchr_iter(b'\n', chunk) {
            let line = &chunk[start..nl];
            each(if line.len() > MAX_LINE {
                Piece::TooLong
            } else {
                Piece::Line(line)
            });
            start = nl + 1;
        }
        self.keep(&chunk[start..]);
    }

    fn keep(&mut self, tail: &[u8]) {
        if tail.is_empty() || self.skip != Skip::No {
            return;
        }
        if self.partial.len() + tail.len() > MAX_LINE {
            self.partial = Vec::new();
            self.skip = Skip::AsTooLong;
        } else {
            self.partial.extend_from_slice(tail);
        }
    }

    /// The file is finished: an unterminated remainder is handed on as a last line.
    pub(super) fn finish(&mut self, mut each: impl FnMut(Piece<'_>)) {
        match self.skip {
            Skip::No if !self.partial.is_empty() => each(Piece::Line(&self.partial)),
            Skip::AsTooLong => each(Piece::TooLong),
            _ => {}
        }
        self.reset();
    }

    /// Drops whatever is held; `true` if that was part of a line.
    pub(super) fn reset(&mut self) -> bool {
        let dropped = !self.partial.is_empty() || self.skip == Skip::AsTooLong;
        self.partial.clear();
        self.skip = Skip::No;
        dropped
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn split_all(chunks: &[&[u8]]) -> (Vec<Vec<u8>>, usize) {
        let mut s = LineSplitter::new();
        let mut lines = Vec::new();
        let mut too_long = 0;
        for chunk in chunks {
            s.feed(chunk, |p| match p {
                Piece::Line(l) => lines.push(l.to_vec()),
                Piece::TooLong => too_long += 1,
            });
        }
        (lines, too_long)
    }

    #[test]
    fn splitter_keeps_partial_lines_and_drops_long_ones() {
        let (lines, long) = split_all(&[b"a\nb", b"c", b"d\n\ne"]);
        assert_eq!(lines, vec![b"a".to_vec(), b"bcd".to_vec(), Vec::new()]);
        assert_eq!(long, 0);
        let big = vec![b'x'; MAX_LINE];
        let (lines, long) = split_all(&[&big, b"y", &big, b"\nok\n"]);
        assert_eq!((lines, long), (vec![b"ok".to_vec()], 1));
        let mut whole = vec![b'x'; MAX_LINE + 1];
        whole.extend_from_slice(b"\nok\n");
        let (lines, long) = split_all(&[&whole]);
        assert_eq!((lines, long), (vec![b"ok".to_vec()], 1));
    }

    proptest! {
        #[test]
        fn any_chunking_gives_the_same_lines(
            text in prop::collection::vec(prop_oneof![Just(b'\n'), any::<u8>()], 0..400),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..10),
        ) {
            let mut at: Vec<usize> = cuts.iter().map(|c| c.index(text.len() + 1)).collect();
            at.push(0);
            at.push(text.len());
            at.sort_unstable();
            let chunks: Vec<&[u8]> = at.windows(2).map(|w| &text[w[0]..w[1]]).collect();
            prop_assert_eq!(split_all(&chunks), split_all(&[&text]));
        }
    }
}
