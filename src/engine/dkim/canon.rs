//! DKIM canonicalization (RFC 6376 §3.4), streaming into a sink (a hash):
//! header fields one at a time, the body in chunks of any size.

use super::signature::Canon;
use super::tags;

fn is_wsp(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Canonicalizes one raw header field (`Name: value\r\n`, folding kept)
/// into `out`. `erase_b`: the `DKIM-Signature` being verified, whose `b=`
/// value is hashed as empty (§3.5); `last`: that same field, hashed
/// without its final CRLF (§3.7).
pub fn header(field: &[u8], c: Canon, erase_b: bool, last: bool, out: &mut impl FnMut(&[u8])) {
    let field = if last {
        field.strip_suffix(b"\r\n").unwrap_or(field)
    } else {
        field
    };
    let Some(colon) = field.iter().position(|&b| b == b':') else {
        return;
    };
    // The `b=` value's span in the field, to skip.
    let skip = if erase_b {
        b_value(&field[colon + 1..]).map(|(s, e)| (s + colon + 1, e + colon + 1))
    } else {
        None
    };
    let parts = |f: &mut dyn FnMut(&[u8])| match skip {
        Some((s, e)) => {
            f(&field[colon + 1..s]);
            f(&field[e..]);
        }
        None => f(&field[colon + 1..]),
    };
    match c {
        Canon::Simple => {
            out(&field[..colon + 1]);
            parts(&mut |p| out(p));
        }
        Canon::Relaxed => {
            let name = crate::engine::header::trim(&field[..colon]);
            for &b in name {
                out(&[b.to_ascii_lowercase()]);
            }
            out(b":");
            let mut r = Relaxed::default();
            parts(&mut |p| r.value(p, out));
            if !last {
                out(b"\r\n");
            }
        }
    }
}

/// The raw span of the `b=` value in a DKIM-Signature value.
fn b_value(value: &[u8]) -> Option<(usize, usize)> {
    tags::tags(value)
        .filter_map(Result::ok)
        .find(|t| t.name == b"b")
        .map(|t| t.raw)
}

/// A relaxed header value: unfolded, white space runs as one space, none
/// at either end.
#[derive(Default)]
struct Relaxed {
    started: bool,
    space: bool,
}

impl Relaxed {
    fn value(&mut self, v: &[u8], out: &mut impl FnMut(&[u8])) {
        for &b in v {
            if is_wsp(b) || b == b'\r' || b == b'\n' {
                self.space = self.started;
                continue;
            }
            if self.space {
                out(b" ");
                self.space = false;
            }
            self.started = true;
            out(&[b]);
        }
    }
}

/// The body canonicalizer: feed chunks, then [`Body::finish`].
#[derive(Debug, Clone)]
pub struct Body {
    c: Canon,
    /// `l=`: octets of canonical body still to hash.
    left: Option<u64>,
    /// CRLFs held back: trailing empty lines are dropped (§3.4.3, §3.4.4).
    crlfs: u64,
    /// A CR held back until the next octet says whether a CRLF ends a line.
    cr: bool,
    /// Relaxed: white space held back (a run becomes one SP, none at a
    /// line's end).
    space: bool,
    /// The current line has content.
    line: bool,
    /// Any content was hashed.
    any: bool,
    /// Octets of canonical body produced (all of it, beyond `l=` too).
    total: u64,
}

impl Body {
    /// A canonicalizer for `c`, hashing at most `limit` octets (`l=`).
    pub fn new(c: Canon, limit: Option<u64>) -> Self {
        Body {
            c,
            left: limit,
            crlfs: 0,
            cr: false,
            space: false,
            line: false,
            any: false,
            total: 0,
        }
    }

    /// Octets of canonical body so far (compare with `l=`: a longer body
    /// means content was appended after signing).
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Canonicalizes `chunk` into `out`. Octets that need no rewriting
    /// (all but CR, and SP/HTAB when relaxed) go out as whole runs, so the
    /// hash is fed slices rather than single octets.
    pub fn feed(&mut self, chunk: &[u8], out: &mut impl FnMut(&[u8])) {
        let mut i = 0;
        while let Some(&b) = chunk.get(i) {
            if self.cr {
                self.cr = false;
                if b == b'\n' {
                    self.end_line();
                    i += 1;
                    continue;
                }
                self.content(b'\r', out);
            }
            match b {
                b'\r' => self.cr = true,
                b' ' | b'\t' if self.c == Canon::Relaxed => self.space = true,
                _ => {
                    let rest = &chunk[i..];
                    let len = match self.c {
                        Canon::Relaxed => memchr::memchr3(b'\r', b' ', b'\t', rest),
                        Canon::Simple => memchr::memchr(b'\r', rest),
                    }
                    .unwrap_or(rest.len());
                    self.run(&rest[..len], out);
                    i += len;
                    continue;
                }
            }
            i += 1;
        }
    }

    /// Ends the body: the final CRLF (simple: always; relaxed: unless the
    /// body is empty).
    pub fn finish(mut self, out: &mut impl FnMut(&[u8])) {
        if self.cr {
            self.cr = false;
            self.content(b'\r', out);
        }
        if self.c == Canon::Simple || self.any {
            self.emit(b"\r\n", out);
        }
    }

    fn end_line(&mut self) {
        self.space = false;
        self.line = false;
        self.crlfs += 1;
    }

    /// One octet of line content.
    fn content(&mut self, b: u8, out: &mut impl FnMut(&[u8])) {
        self.run(&[b], out);
    }

    /// Line content that is hashed as it is (not empty): the CRLFs and the
    /// white space held back first.
    fn run(&mut self, bytes: &[u8], out: &mut impl FnMut(&[u8])) {
        while self.crlfs > 0 {
            self.crlfs -= 1;
            self.emit(b"\r\n", out);
        }
        if self.space {
            // Relaxed: a run of white space inside a line (or at its start)
            // is one SP.
            self.space = false;
            self.emit(b" ", out);
        }
        self.line = true;
        self.any = true;
        self.emit(bytes, out);
    }

    fn emit(&mut self, bytes: &[u8], out: &mut impl FnMut(&[u8])) {
        self.total += bytes.len() as u64;
        let take = match self.left {
            Some(left) => {
                let n = (bytes.len() as u64).min(left);
                self.left = Some(left - n);
                n as usize
            }
            None => bytes.len(),
        };
        if take > 0 {
            out(&bytes[..take]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec as StdVec;

    fn body(c: Canon, input: &[u8], limit: Option<u64>, split: usize) -> StdVec<u8> {
        let mut out = StdVec::new();
        let mut b = Body::new(c, limit);
        for chunk in input.chunks(split.max(1)) {
            b.feed(chunk, &mut |x: &[u8]| out.extend_from_slice(x));
        }
        b.finish(&mut |x: &[u8]| out.extend_from_slice(x));
        out
    }

    fn head(c: Canon, f: &[u8], erase: bool, last: bool) -> StdVec<u8> {
        let mut out = StdVec::new();
        header(f, c, erase, last, &mut |x: &[u8]| out.extend_from_slice(x));
        out
    }

    /// RFC 6376 §3.4.5's example.
    #[test]
    fn the_rfc_example() {
        let h1 = b"A: X\r\n";
        let h2 = b"B : Y\t\r\n\tZ  \r\n";
        assert_eq!(head(Canon::Relaxed, h1, false, false), b"a:X\r\n");
        assert_eq!(head(Canon::Relaxed, h2, false, false), b"b:Y Z\r\n");
        assert_eq!(head(Canon::Simple, h2, false, false), h2);
        let b = b" C \r\nD \t E\r\n\r\n\r\n";
        for split in [1, 2, 3, 100] {
            assert_eq!(body(Canon::Relaxed, b, None, split), b" C\r\nD E\r\n");
            assert_eq!(body(Canon::Simple, b, None, split), b" C \r\nD \t E\r\n");
        }
    }

    #[test]
    fn empty_bodies_and_missing_final_crlf() {
        assert_eq!(body(Canon::Simple, b"", None, 10), b"\r\n");
        assert_eq!(body(Canon::Simple, b"\r\n\r\n", None, 10), b"\r\n");
        assert_eq!(body(Canon::Relaxed, b"", None, 10), b"");
        assert_eq!(body(Canon::Relaxed, b" \r\n\t\r\n", None, 10), b"");
        assert_eq!(body(Canon::Simple, b"abc", None, 10), b"abc\r\n");
        assert_eq!(body(Canon::Relaxed, b"abc  ", None, 10), b"abc\r\n");
        assert_eq!(body(Canon::Simple, b"a\rb\r\n", None, 1), b"a\rb\r\n");
    }

    #[test]
    fn the_length_limit_cuts_the_hashed_octets() {
        assert_eq!(
            body(Canon::Simple, b"hello\r\nworld\r\n", Some(7), 3),
            b"hello\r\n"
        );
        let mut b = Body::new(Canon::Simple, Some(3));
        b.feed(b"hello\r\n", &mut |_: &[u8]| {});
        assert_eq!(b.total(), 5);
    }

    #[test]
    fn the_signature_field_is_hashed_without_b_and_final_crlf() {
        let f = b"DKIM-Signature: v=1; a=rsa-sha256; bh=xyz=;\r\n b=abc\r\n def; d=x.example\r\n";
        assert_eq!(
            head(Canon::Relaxed, f, true, true),
            b"dkim-signature:v=1; a=rsa-sha256; bh=xyz=; b=; d=x.example"
        );
        assert_eq!(
            head(Canon::Simple, f, true, true),
            b"DKIM-Signature: v=1; a=rsa-sha256; bh=xyz=;\r\n b=; d=x.example"
        );
    }

    proptest::proptest! {
        /// Runs hashed whole give what one octet at a time gives (the
        /// octet-wise path is the plain reading of §3.4.3 and §3.4.4),
        /// whatever the chunking, with and without `l=`.
        #[test]
        fn runs_hash_as_octets_do(
            input in proptest::collection::vec(proptest::sample::select(
                &b"ab \t\r\n\r\n"[..]), 0..200),
            split in 1usize..40,
            limit in proptest::option::of(0u64..150),
        ) {
            for c in [Canon::Relaxed, Canon::Simple] {
                proptest::prop_assert_eq!(body(c, &input, limit, split), body(c, &input, limit, 1));
                proptest::prop_assert_eq!(body(c, &input, limit, input.len().max(1)), body(c, &input, limit, 1));
            }
        }
    }
}
