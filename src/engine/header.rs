//! Zero-copy scanner for the header block of an RFC 5322 message.
//!
//! In the style of `httparse`: the caller supplies the slots, every [`Field`]
//! is a pair of slices of the input, incomplete input is `Ok(Status::Partial)`
//! (not an error) and a full slot array is [`Error::TooManyFields`]. Nothing
//! here allocates, and no input, however malformed, can make it panic.
//!
//! # Grammar accepted
//!
//! * A line ends with LF; a CR immediately before that LF belongs to the line
//!   ending (CRLF). A CR anywhere else is ordinary data.
//! * A field is a name line `name ":" value` plus every following
//!   continuation line (a line that starts with SP or HTAB).
//! * The header block ends with an empty line (CRLF CRLF or LF LF); the body
//!   starts right after it. When the caller says the input is `complete`, the
//!   end of input also ends the block (a message with no body and no blank
//!   line, with or without a final line ending).
//!
//! # Lenient behaviour (chosen, and tested)
//!
//! * **A line that is not a field line ends the header block, and the body
//!   starts at that line** (what Postfix's `cleanup` does with a non-header
//!   line). Such a line is: a line without a colon, a line whose name is empty
//!   or contains a byte outside `!`..=`~` (space inside the name, a control
//!   character, NUL, 8-bit), a CR not followed by LF at the start of a line,
//!   and a continuation line before any field. No field is lost or invented:
//!   the offending line and everything after it are body.
//! * SP/HTAB between the name and the colon (RFC 5322 obsolete syntax,
//!   `Subject : x`) is accepted and is not part of [`Field::name`].
//! * Values are raw bytes: NUL, 8-bit and lone CR bytes in a value are kept
//!   as they are; policy decides what to do with them.
//!
//! # Bounds
//!
//! [`scan`] looks at no more than [`MAX_HEADER_BLOCK`] bytes (plus one of
//! look-ahead) and fails with [`Error::TooLarge`] when the end of the header
//! block is not within them, so a caller that re-scans a growing buffer does
//! bounded work (a line without a colon that runs past the bound is therefore
//! `TooLarge` for [`scan`], where [`end_of_headers`] would call it body). [`fields`], [`find`], [`find_all`] and [`end_of_headers`]
//! take no such bound: give them the block that [`scan`] delimited.

use core::fmt;
use core::iter::FusedIterator;

use super::limits::MAX_HEADER_BLOCK;

/// One header field: name and raw value, both slices of the scanned input.
///
/// Zero-copy, so that the relay can match on and splice around the original bytes.
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Field<'a> {
    /// The field name, without any SP/HTAB before the colon; case is kept.
    pub name: &'a [u8],
    /// Raw value: after the colon, without the final line ending, folding kept.
    pub value: &'a [u8],
}

impl<'a> Field<'a> {
    /// An empty field, to initialise slot arrays (`[Field::EMPTY; 64]`).
    pub const EMPTY: Field<'static> = Field {
        name: &[],
        value: &[],
    };

    /// Whether this field's name is `name`, ignoring ASCII case (as RFC 5322 says).
    #[inline]
    #[must_use]
    pub fn name_eq(&self, name: &[u8]) -> bool {
        self.name.eq_ignore_ascii_case(name)
    }

    /// The value with leading and trailing SP, HTAB, CR and LF removed (folding inside kept).
    #[inline]
    #[must_use]
    pub fn trimmed_value(&self) -> &'a [u8] {
        trim(self.value)
    }
}

/// Outcome of a successful [`scan`]: how far it got.
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Status {
    /// The header block is complete; `body` is the offset where the body starts.
    Complete {
        /// Number of slots filled, in order of appearance.
        fields: usize,
        /// Offset of the first body byte (after the blank line, if any).
        body: usize,
    },
    /// More input is needed; the first `fields` slots hold final fields already.
    Partial {
        /// Number of slots filled with fields that more input cannot change.
        fields: usize,
    },
}

/// Why [`scan`] gave up; the slots may have been partly written.
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// Every slot was used and another field followed.
    TooManyFields,
    /// The header block does not end within [`MAX_HEADER_BLOCK`] bytes.
    TooLarge,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Error::TooManyFields => "too many header fields",
            Error::TooLarge => "header block too large",
        })
    }
}

/// [`unfold_into`] was given an output buffer shorter than the unfolded value.
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferTooSmall {
    /// Bytes the unfolded value needs.
    pub needed: usize,
}

impl fmt::Display for BufferTooSmall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "buffer too small for unfolded value ({} bytes)",
            self.needed
        )
    }
}

/// Scans the header block at the start of `input` into `slots`.
///
/// `complete` says `input` is the whole message, so its end also ends the block.
/// Fields land in `slots` in order. `Ok(Status::Partial)` means more input is
/// needed: call again with the grown buffer (the work per call is bounded by
/// [`MAX_HEADER_BLOCK`]). See the module docs for the lenient rules.
pub fn scan<'a>(input: &'a [u8], complete: bool, slots: &mut [Field<'a>]) -> Result<Status, Error> {
    // One byte of look-ahead past the bound decides whether a field that ends
    // exactly at the bound is followed by a continuation line.
    let window = input.get(..MAX_HEADER_BLOCK + 1).unwrap_or(input);
    let whole = window.len() == input.len();
    let complete = complete && whole;
    let mut free = slots.iter_mut();
    let mut filled = 0;
    let mut pos = 0;
    loop {
        match step(window, pos, complete) {
            Line::Field(field, next) => {
                let slot = free.next().ok_or(Error::TooManyFields)?;
                *slot = field;
                filled += 1;
                pos = next;
            }
            Line::End(body) if body > MAX_HEADER_BLOCK => return Err(Error::TooLarge),
            Line::End(body) => {
                return Ok(Status::Complete {
                    fields: filled,
                    body,
                })
            }
            Line::Partial if whole => return Ok(Status::Partial { fields: filled }),
            Line::Partial => return Err(Error::TooLarge),
        }
    }
}

/// Offset where the body starts, or `None` if more input is needed to know.
///
/// Same rules as [`scan`], without slots and without the size bound: with
/// `complete == false` the caller must bound the buffer itself.
#[must_use]
pub fn end_of_headers(input: &[u8], complete: bool) -> Option<usize> {
    let mut pos = 0;
    loop {
        match step(input, pos, complete) {
            Line::Field(_, next) => pos = next,
            Line::End(body) => return Some(body),
            Line::Partial => return None,
        }
    }
}

/// Iterates over the fields of a header block, in order, without slots.
///
/// `block` is taken as complete: its end ends the last field. Stops at the
/// blank line or at the first line that is not a field line.
#[inline]
#[must_use]
pub fn fields(block: &[u8]) -> Fields<'_> {
    Fields {
        block,
        pos: 0,
        done: false,
    }
}

/// Raw value of the first field named `name` (ASCII case ignored), if any.
///
/// The hot path of policy lookups: one pass, no slots, stops at the first match.
/// Agrees with the first match of [`fields`].
#[must_use]
pub fn find<'a>(block: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    find_all(block, name).next()
}

/// Iterates over the raw values of every field named `name` (ASCII case ignored).
///
/// For repeated fields such as `Received` (hop counting) or `X-*` stamps.
#[inline]
#[must_use]
pub fn find_all<'a, 'n>(block: &'a [u8], name: &'n [u8]) -> FindAll<'a, 'n> {
    FindAll {
        fields: fields(block),
        name,
    }
}

/// Removes leading and trailing SP, HTAB, CR and LF from `value`.
///
/// Raw values keep the space after the colon; most comparisons want it gone.
#[must_use]
pub fn trim(value: &[u8]) -> &[u8] {
    let mut v = value;
    while let [b' ' | b'\t' | b'\r' | b'\n', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t' | b'\r' | b'\n'] = v {
        v = rest;
    }
    v
}

/// Iterates over the bytes of `value` unfolded and trimmed, without a buffer.
///
/// Lets a matcher (a DFA) run over a folded value as if it were one line.
#[inline]
#[must_use]
pub fn unfolded(value: &[u8]) -> Unfolded<'_> {
    Unfolded { rest: trim(value) }
}

/// Writes `value` unfolded into `out` and returns the number of bytes written.
///
/// Unfolding removes each CRLF or LF that is followed by SP or HTAB (the WSP
/// stays, RFC 5322 §2.2.3), then leading and trailing SP, HTAB, CR and LF are
/// trimmed. On error `out` is left unchanged.
pub fn unfold_into(value: &[u8], out: &mut [u8]) -> Result<usize, BufferTooSmall> {
    let needed = unfolded(value).count();
    let dst = out.get_mut(..needed).ok_or(BufferTooSmall { needed })?;
    for (d, s) in dst.iter_mut().zip(unfolded(value)) {
        *d = s;
    }
    Ok(needed)
}

/// Iterator over the fields of a header block; see [`fields`].
#[derive(Debug, Clone)]
pub struct Fields<'a> {
    block: &'a [u8],
    pos: usize,
    done: bool,
}

impl Fields<'_> {
    /// Offset of the next line to read; once the iterator is exhausted, where the body starts.
    #[inline]
    #[must_use]
    pub fn offset(&self) -> usize {
        self.pos
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Field<'a>;

    #[inline]
    fn next(&mut self) -> Option<Field<'a>> {
        if self.done {
            return None;
        }
        match step(self.block, self.pos, true) {
            Line::Field(field, next) => {
                self.pos = next;
                Some(field)
            }
            Line::End(body) => {
                self.pos = body;
                self.done = true;
                None
            }
            // Unreachable with `complete == true`; ending is the safe answer.
            Line::Partial => {
                self.done = true;
                None
            }
        }
    }
}

impl FusedIterator for Fields<'_> {}

/// Iterator over the raw values of the fields with one name; see [`find_all`].
#[derive(Debug, Clone)]
pub struct FindAll<'a, 'n> {
    fields: Fields<'a>,
    name: &'n [u8],
}

impl<'a> Iterator for FindAll<'a, '_> {
    type Item = &'a [u8];

    #[inline]
    fn next(&mut self) -> Option<&'a [u8]> {
        let name = self.name;
        self.fields.find(|f| f.name_eq(name)).map(|f| f.value)
    }
}

impl FusedIterator for FindAll<'_, '_> {}

/// Iterator over the bytes of an unfolded value; see [`unfolded`].
#[derive(Debug, Clone)]
pub struct Unfolded<'a> {
    rest: &'a [u8],
}

impl Iterator for Unfolded<'_> {
    type Item = u8;

    #[inline]
    fn next(&mut self) -> Option<u8> {
        loop {
            let (&b, tail) = self.rest.split_first()?;
            match (b, tail) {
                (b'\r', [b'\n', after @ ..]) if starts_with_wsp(after) => self.rest = after,
                (b'\n', after) if starts_with_wsp(after) => self.rest = after,
                _ => {
                    self.rest = tail;
                    return Some(b);
                }
            }
        }
    }

    #[inline]
    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.rest.len() / 3, Some(self.rest.len()))
    }
}

impl FusedIterator for Unfolded<'_> {}

// ---------------------------------------------------------------------------
// The one line walker every entry point shares
// ---------------------------------------------------------------------------

/// What the line at `pos` turned out to be.
enum Line<'a> {
    /// A whole field, and the offset of the line after it.
    Field(Field<'a>, usize),
    /// The header block ends; the body starts at this offset.
    End(usize),
    /// The bytes so far do not decide.
    Partial,
}

#[inline]
fn starts_with_wsp(s: &[u8]) -> bool {
    matches!(s.first(), Some(b' ' | b'\t'))
}

/// Reads the field (or the end of the block) that starts at `pos`.
///
/// Each decision depends only on bytes already seen, so a decision taken on a
/// prefix of the input is the one taken on the whole input.
#[inline]
fn step(input: &[u8], pos: usize, complete: bool) -> Line<'_> {
    let Some(rest) = input.get(pos..) else {
        return Line::End(input.len());
    };
    let undecided = if complete {
        Line::End(pos)
    } else {
        Line::Partial
    };
    // The name: bytes `!`..=`~` up to the colon, optionally followed by WSP.
    let mut name_len = 0;
    let mut colon = None;
    let mut in_trailing_wsp = false;
    for (i, &b) in rest.iter().enumerate() {
        match b {
            b':' => {
                colon = Some(i);
                break;
            }
            b' ' | b'\t' if i > 0 => in_trailing_wsp = true,
            b'!'..=b'~' if !in_trailing_wsp => name_len = i + 1,
            // The blank line that ends the block.
            b'\n' if i == 0 => return Line::End(pos + 1),
            b'\r' if i == 0 => {
                return match rest.get(1) {
                    Some(b'\n') => Line::End(pos + 2),
                    Some(_) => Line::End(pos),
                    None => undecided,
                }
            }
            // Continuation before any field, space inside the name, control
            // or 8-bit byte, or end of line without a colon.
            _ => return Line::End(pos),
        }
    }
    let Some(colon) = colon else {
        return undecided;
    };
    if name_len == 0 {
        return Line::End(pos);
    }
    let (Some(name), Some(after_colon)) = (rest.get(..name_len), rest.get(colon + 1..)) else {
        return Line::End(pos);
    };
    // The value: to the end of the line, then over continuation lines.
    let mut scanned = 0;
    loop {
        let Some(tail) = after_colon.get(scanned..) else {
            return Line::End(pos);
        };
        let Some(lf) = memchr_lf(tail) else {
            if !complete {
                return Line::Partial;
            }
            let next = input.len();
            let field = Field {
                name,
                value: after_colon,
            };
            return Line::Field(field, next);
        };
        let line_end = scanned + lf;
        match after_colon.get(line_end + 1) {
            Some(b' ' | b'\t') => scanned = line_end + 1,
            None if !complete => return Line::Partial,
            _ => {
                let raw = after_colon.get(..line_end).unwrap_or(after_colon);
                let value = raw.strip_suffix(b"\r").unwrap_or(raw);
                let next = pos + colon + 1 + line_end + 1;
                return Line::Field(Field { name, value }, next);
            }
        }
    }
}

/// Position of the first LF in `hay`, a word at a time (safe SWAR).
#[inline]
fn memchr_lf(hay: &[u8]) -> Option<usize> {
    const W: usize = core::mem::size_of::<usize>();
    const LO: usize = usize::MAX / 255;
    const HI: usize = LO << 7;
    const LF: usize = LO * (b'\n' as usize);
    let mut chunks = hay.chunks_exact(W);
    let mut base = 0;
    for chunk in &mut chunks {
        if let Ok(bytes) = <[u8; W]>::try_from(chunk) {
            let x = usize::from_ne_bytes(bytes) ^ LF;
            // Non-zero exactly when some byte of `x` is zero, i.e. an LF.
            if x.wrapping_sub(LO) & !x & HI != 0 {
                return chunk.iter().position(|&b| b == b'\n').map(|i| base + i);
            }
        }
        base += W;
    }
    chunks
        .remainder()
        .iter()
        .position(|&b| b == b'\n')
        .map(|i| base + i)
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;

    use proptest::prelude::*;
    use std::string::{String, ToString};
    use std::vec;
    use std::vec::Vec;

    const SLOTS: usize = 64;

    /// Scans `input` with plenty of slots and returns the status and the fields.
    fn scan_vec(input: &[u8], complete: bool) -> (Result<Status, Error>, Vec<Field<'_>>) {
        let mut slots = [Field::EMPTY; SLOTS];
        let res = scan(input, complete, &mut slots);
        let n = match res {
            Ok(Status::Complete { fields, .. } | Status::Partial { fields }) => fields,
            Err(_) => 0,
        };
        (res, slots[..n].to_vec())
    }

    /// Every invariant that ties the entry points together, on one input.
    fn check_consistency(input: &[u8]) {
        let (full, full_fields) = scan_vec(input, true);
        let iter: Vec<Field<'_>> = fields(input).collect();
        let body = end_of_headers(input, true);
        match full {
            Ok(Status::Complete { fields: n, body: b }) => {
                assert_eq!(n, full_fields.len());
                assert_eq!(iter, full_fields, "fields() vs scan()");
                assert_eq!(body, Some(b), "end_of_headers vs scan");
                let mut it = fields(input);
                it.by_ref().for_each(drop);
                assert_eq!(it.offset(), b, "Fields::offset at the end");
                assert!(b <= input.len());
            }
            Ok(Status::Partial { .. }) => panic!("complete scan gave Partial"),
            Err(Error::TooManyFields) => assert!(iter.len() > SLOTS),
            Err(Error::TooLarge) => assert!(input.len() > MAX_HEADER_BLOCK),
        }
        // find agrees with the first fields() match, for every name present.
        for f in &iter {
            let first = iter.iter().find(|g| g.name_eq(f.name)).map(|g| g.value);
            assert_eq!(find(input, f.name), first);
            let all: Vec<&[u8]> = find_all(input, f.name).collect();
            let want: Vec<&[u8]> = iter
                .iter()
                .filter(|g| g.name_eq(f.name))
                .map(|g| g.value)
                .collect();
            assert_eq!(all, want);
        }
        // Prefix consistency: a prefix either needs more input or decides
        // exactly what the whole input decides.
        if input.len() <= 4096 {
            for cut in 0..=input.len() {
                let prefix = &input[..cut];
                let (res, got) = scan_vec(prefix, false);
                match res {
                    Ok(Status::Partial { fields: n }) => {
                        assert!(n <= full_fields.len(), "cut {cut}");
                        assert_eq!(got[..], full_fields[..n], "cut {cut}");
                        assert_eq!(end_of_headers(prefix, false), None, "cut {cut}");
                    }
                    Ok(complete) => {
                        assert_eq!(Ok(complete), full, "cut {cut}");
                        assert_eq!(got, full_fields, "cut {cut}");
                    }
                    Err(e) => assert_eq!(Err(e), full, "cut {cut}"),
                }
            }
        }
    }

    /// Asserts a complete scan of `input` gives `body` and `expected`, plus all invariants.
    fn check_complete(input: &[u8], body: usize, expected: &[(&[u8], &[u8])]) {
        let (res, got) = scan_vec(input, true);
        assert_eq!(
            res,
            Ok(Status::Complete {
                fields: expected.len(),
                body
            }),
            "input {:?}",
            String::from_utf8_lossy(input)
        );
        let got: Vec<(&[u8], &[u8])> = got.iter().map(|f| (f.name, f.value)).collect();
        assert_eq!(got, expected);
        check_consistency(input);
    }

    /// One line per case: `complete!(test, input => body, [(name, value), ...])`.
    macro_rules! complete {
        ($test:ident, $input:expr => $body:expr, [$(($n:expr, $v:expr)),* $(,)?]) => {
            #[test]
            fn $test() {
                check_complete(&$input[..], $body, &[$((&$n[..], &$v[..])),*]);
            }
        };
    }

    /// One line per case: `partial!(test, input => fields_already_final)`.
    macro_rules! partial {
        ($test:ident, $input:expr => $n:expr) => {
            #[test]
            fn $test() {
                let (res, _) = scan_vec(&$input[..], false);
                assert_eq!(res, Ok(Status::Partial { fields: $n }));
                assert_eq!(end_of_headers(&$input[..], false), None);
            }
        };
    }

    // ---------------------------------------------------------------------
    // Simple blocks
    // ---------------------------------------------------------------------

    complete!(simple, b"From: a@b\r\nTo: c@d\r\n\r\nbody" => 22, [(b"From", b" a@b"), (b"To", b" c@d")]);
    complete!(simple_no_space, b"Subject:x\r\n\r\n" => 13, [(b"Subject", b"x")]);
    complete!(empty_value, b"X-Empty:\r\nA: b\r\n\r\n" => 18, [(b"X-Empty", b""), (b"A", b" b")]);
    complete!(name_keeps_case, b"MiXeD-CaSe: v\n\n" => 15, [(b"MiXeD-CaSe", b" v")]);
    complete!(colon_in_value, b"Date: Mon, 1 Jan 2024 10:00:00 +0000\r\n\r\n" => 40, [(b"Date", b" Mon, 1 Jan 2024 10:00:00 +0000")]);
    complete!(body_only_blank, b"A: b\r\n\r\n" => 8, [(b"A", b" b")]);

    // ---------------------------------------------------------------------
    // Folding
    // ---------------------------------------------------------------------

    complete!(folded_sp, b"Subject: a\r\n b\r\n\r\nx" => 18, [(b"Subject", b" a\r\n b")]);
    complete!(folded_tab, b"Subject: a\r\n\tb\r\n\r\n" => 18, [(b"Subject", b" a\r\n\tb")]);
    complete!(folded_many, b"Received: from a\r\n by b\r\n\twith c\r\n  ; d\r\nX: y\r\n\r\n" => 49, [(b"Received", b" from a\r\n by b\r\n\twith c\r\n  ; d"), (b"X", b" y")]);
    complete!(folded_value_starts_next_line, b"To:\r\n a@b\r\n\r\n" => 13, [(b"To", b"\r\n a@b")]);
    complete!(folded_wsp_only_line, b"A: x\r\n \r\n\r\n" => 11, [(b"A", b" x\r\n ")]);

    // ---------------------------------------------------------------------
    // Line endings: LF only, mixed, lone CR
    // ---------------------------------------------------------------------

    complete!(lf_only, b"From: a\nTo: b\n c\n\nbody" => 18, [(b"From", b" a"), (b"To", b" b\n c")]);
    complete!(mixed_endings, b"A: 1\r\nB: 2\nC: 3\r\n\t4\n\r\nbody" => 22, [(b"A", b" 1"), (b"B", b" 2"), (b"C", b" 3\r\n\t4")]);
    complete!(mixed_blank_lf_after_crlf, b"A: 1\r\n\nbody" => 7, [(b"A", b" 1")]);
    complete!(lone_cr_in_value, b"A: x\ry\r\n\r\n" => 10, [(b"A", b" x\ry")]);
    complete!(cr_cr_lf_keeps_one_cr, b"A: x\r\r\n\r\n" => 9, [(b"A", b" x\r")]);
    complete!(lone_cr_line_is_body, b"A: 1\r\n\rB: 2\r\n\r\n" => 6, [(b"A", b" 1")]);

    // ---------------------------------------------------------------------
    // End of headers: no body, no blank line, empty input, blank first
    // ---------------------------------------------------------------------

    complete!(no_body_after_blank, b"A: 1\r\n\r\n" => 8, [(b"A", b" 1")]);
    complete!(no_blank_line, b"A: 1\r\nB: 2\r\n" => 12, [(b"A", b" 1"), (b"B", b" 2")]);
    complete!(no_final_line_ending, b"A: 1\r\nB: 2" => 10, [(b"A", b" 1"), (b"B", b" 2")]);
    complete!(no_final_ending_folded, b"A: 1\r\n 2" => 8, [(b"A", b" 1\r\n 2")]);
    complete!(empty_input, b"" => 0, []);
    complete!(blank_first_crlf, b"\r\nbody: not a header\r\n" => 2, []);
    complete!(blank_first_lf, b"\nbody" => 1, []);
    complete!(lone_cr_at_end, b"A: 1\r\n\r" => 6, [(b"A", b" 1")]);

    partial!(partial_empty, b"" => 0);
    partial!(partial_mid_name, b"Subj" => 0);
    partial!(partial_name_wsp, b"Subject " => 0);
    partial!(partial_mid_value, b"Subject: hel" => 0);
    partial!(partial_before_peek, b"Subject: hello\r\n" => 0);
    partial!(partial_after_cr, b"Subject: hello\r" => 0);
    partial!(partial_second_field, b"A: 1\r\nB: 2\r\n" => 1);
    partial!(partial_blank_cr, b"A: 1\r\n\r" => 1);
    partial!(partial_in_fold, b"A: 1\r\n 2" => 0);

    #[test]
    fn partial_then_complete() {
        let msg = b"A: 1\r\nB: 2\r\n\r\nbody";
        let mut slots = [Field::EMPTY; 4];
        assert_eq!(
            scan(&msg[..9], false, &mut slots),
            Ok(Status::Partial { fields: 1 })
        );
        assert_eq!(
            slots[0],
            Field {
                name: b"A",
                value: b" 1"
            }
        );
        assert_eq!(
            scan(msg, false, &mut slots),
            Ok(Status::Complete {
                fields: 2,
                body: 14
            })
        );
        assert_eq!(end_of_headers(msg, false), Some(14));
        assert_eq!(&msg[14..], b"body");
    }

    // ---------------------------------------------------------------------
    // Malformed lines: they end the block; the body starts at that line
    // ---------------------------------------------------------------------

    complete!(no_colon_ends_block, b"A: 1\r\nnot a header\r\nB: 2\r\n\r\n" => 6, [(b"A", b" 1")]);
    complete!(no_colon_no_space, b"A: 1\r\nGarbage\r\nB: 2\r\n" => 6, [(b"A", b" 1")]);
    complete!(no_colon_at_end, b"A: 1\r\nGarbage" => 6, [(b"A", b" 1")]);
    complete!(space_in_name, b"A: 1\r\nBad Name: x\r\n\r\n" => 6, [(b"A", b" 1")]);
    complete!(empty_name, b": x\r\nA: 1\r\n\r\n" => 0, []);
    complete!(continuation_with_colon, b"A: 1\r\n\t: x\r\n" => 12, [(b"A", b" 1\r\n\t: x")]);
    complete!(control_in_name, b"A: 1\r\nB\x01C: 2\r\n\r\n" => 6, [(b"A", b" 1")]);
    complete!(high_bit_in_name, b"A: 1\r\nB\xc3\xa9: 2\r\n\r\n" => 6, [(b"A", b" 1")]);
    complete!(continuation_first, b" folded: x\r\nA: 1\r\n\r\n" => 0, []);
    complete!(tab_continuation_first, b"\tA: 1\r\n\r\n" => 0, []);
    complete!(mbox_from_line, b"From alice@example Mon Jan 1\r\nA: 1\r\n" => 0, []);

    partial!(partial_malformed_undecided, b"A: 1\r\nGarbage" => 1);

    #[test]
    fn malformed_decided_without_line_ending() {
        // A space followed by a name byte decides "not a field" at once.
        let (res, _) = scan_vec(b"A: 1\r\nBad Name", false);
        assert_eq!(res, Ok(Status::Complete { fields: 1, body: 6 }));
    }

    // ---------------------------------------------------------------------
    // NUL bytes
    // ---------------------------------------------------------------------

    complete!(nul_in_value_kept, b"A: x\0y\r\n\r\n" => 10, [(b"A", b" x\0y")]);
    complete!(nul_in_name_ends_block, b"A: 1\r\nB\0: 2\r\n\r\n" => 6, [(b"A", b" 1")]);
    complete!(nul_line_start, b"\0A: 1\r\n\r\n" => 0, []);
    complete!(nul_after_fold, b"A: 1\r\n \0\r\n\r\n" => 12, [(b"A", b" 1\r\n \0")]);

    // ---------------------------------------------------------------------
    // Names: trailing whitespace before the colon
    // ---------------------------------------------------------------------

    complete!(name_trailing_sp, b"Subject : hi\r\n\r\n" => 16, [(b"Subject", b" hi")]);
    complete!(name_trailing_tabs, b"Subject\t \t: hi\r\n\r\n" => 18, [(b"Subject", b" hi")]);

    #[test]
    fn find_name_with_trailing_wsp() {
        assert_eq!(
            find(b"Subject \t: hi\r\n\r\n", b"subject"),
            Some(&b" hi"[..])
        );
    }

    // ---------------------------------------------------------------------
    // Limits: TooManyFields, TooLarge
    // ---------------------------------------------------------------------

    #[test]
    fn too_many_fields() {
        let input = b"A: 1\r\nB: 2\r\nC: 3\r\n\r\n";
        let mut two = [Field::EMPTY; 2];
        assert_eq!(scan(input, true, &mut two), Err(Error::TooManyFields));
        let mut three = [Field::EMPTY; 3];
        assert_eq!(
            scan(input, true, &mut three),
            Ok(Status::Complete {
                fields: 3,
                body: 20
            })
        );
        let mut none: [Field<'_>; 0] = [];
        assert_eq!(
            scan(b"\r\n", true, &mut none),
            Ok(Status::Complete { fields: 0, body: 2 })
        );
        assert_eq!(scan(input, true, &mut none), Err(Error::TooManyFields));
    }

    /// A block of `n` bytes ending with CRLF CRLF: one long field folded with HTAB.
    fn block_of(n: usize) -> Vec<u8> {
        let mut v = b"X-Long: ".to_vec();
        while v.len() < n - 4 {
            if v.len() % 72 == 70 && v.len() + 3 < n - 4 {
                v.extend_from_slice(b"\r\n\t");
            } else {
                v.push(b'a');
            }
        }
        v.extend_from_slice(b"\r\n\r\n");
        assert_eq!(v.len(), n);
        v
    }

    #[test]
    fn largest_block_is_accepted() {
        let mut input = block_of(MAX_HEADER_BLOCK);
        input.extend_from_slice(b"body");
        let mut slots = [Field::EMPTY; 2];
        assert_eq!(
            scan(&input, false, &mut slots),
            Ok(Status::Complete {
                fields: 1,
                body: MAX_HEADER_BLOCK
            })
        );
    }

    #[test]
    fn too_large() {
        let mut input = block_of(MAX_HEADER_BLOCK + 1);
        assert_eq!(
            scan(&input, true, &mut [Field::EMPTY; 2]),
            Err(Error::TooLarge)
        );
        assert_eq!(
            scan(&input, false, &mut [Field::EMPTY; 2]),
            Err(Error::TooLarge)
        );
        input.extend_from_slice(b"body");
        assert_eq!(
            scan(&input, false, &mut [Field::EMPTY; 2]),
            Err(Error::TooLarge)
        );
        // Without a blank line and without an end in sight.
        let endless = vec![b'a'; 3 * MAX_HEADER_BLOCK];
        assert_eq!(
            scan(&endless, false, &mut [Field::EMPTY; 2]),
            Err(Error::TooLarge)
        );
        // The other entry points are unbounded but still answer.
        assert_eq!(end_of_headers(&input, true), Some(MAX_HEADER_BLOCK + 1));
        assert!(find(&input, b"x-long").is_some());
    }

    #[test]
    fn no_blank_line_at_the_bound() {
        let mut input = block_of(MAX_HEADER_BLOCK);
        input.truncate(MAX_HEADER_BLOCK - 2);
        assert_eq!(
            scan(&input, true, &mut [Field::EMPTY; 2]),
            Ok(Status::Complete {
                fields: 1,
                body: MAX_HEADER_BLOCK - 2
            })
        );
        input.extend_from_slice(b"Y: 12");
        assert_eq!(
            scan(&input, true, &mut [Field::EMPTY; 2]),
            Err(Error::TooLarge)
        );
    }

    #[test]
    fn malformed_line_right_at_the_bound() {
        // The field's LF is the last byte within the bound.
        let mut input = block_of(MAX_HEADER_BLOCK + 2);
        input.truncate(MAX_HEADER_BLOCK);
        let mut slots = [Field::EMPTY; 2];
        // A first byte that decides alone: the body starts exactly at the bound.
        let mut binary = input.clone();
        binary.extend_from_slice(b"\x01binary\r\n");
        assert_eq!(
            scan(&binary, false, &mut slots),
            Ok(Status::Complete {
                fields: 1,
                body: MAX_HEADER_BLOCK
            })
        );
        // A line without a colon is only known at its end, past the bound.
        input.extend_from_slice(b"no-colon-here\r\n");
        assert_eq!(scan(&input, false, &mut slots), Err(Error::TooLarge));
        assert_eq!(end_of_headers(&input, false), Some(MAX_HEADER_BLOCK));
    }

    #[test]
    fn error_display() {
        for e in [Error::TooManyFields, Error::TooLarge] {
            assert!(!e.to_string().is_empty());
        }
        assert!(BufferTooSmall { needed: 3 }.to_string().contains('3'));
    }

    // ---------------------------------------------------------------------
    // Lookups: find, find_all, name_eq
    // ---------------------------------------------------------------------

    const MSG: &[u8] = b"Received: from a\r\n\tby b\r\nX-Foobar: long\r\nx-foo: short\r\n\
        Received: from c\r\nSubject: s\r\n\r\nX-Body: not a header\r\n";

    #[test]
    fn find_case_insensitive() {
        assert_eq!(find(MSG, b"SUBJECT"), Some(&b" s"[..]));
        assert_eq!(find(MSG, b"subject"), Some(&b" s"[..]));
        assert_eq!(find(MSG, b"received"), Some(&b" from a\r\n\tby b"[..]));
    }

    #[test]
    fn find_prefix_names() {
        assert_eq!(find(MSG, b"X-Foo"), Some(&b" short"[..]));
        assert_eq!(find(MSG, b"X-Foobar"), Some(&b" long"[..]));
        assert_eq!(find(MSG, b"X-Fo"), None);
        assert_eq!(find(MSG, b"X-Foobarz"), None);
        assert_eq!(find(MSG, b""), None);
    }

    #[test]
    fn find_stops_at_body() {
        assert_eq!(find(MSG, b"X-Body"), None);
        assert_eq!(find(b"A: 1\r\nbad line\r\nB: 2\r\n", b"B"), None);
    }

    #[test]
    fn find_all_in_order() {
        let all: Vec<&[u8]> = find_all(MSG, b"RECEIVED").collect();
        assert_eq!(all, [&b" from a\r\n\tby b"[..], &b" from c"[..]]);
        assert_eq!(find_all(MSG, b"X-Missing").count(), 0);
    }

    #[test]
    fn name_eq_and_trim() {
        let f = Field {
            name: b"Content-Type",
            value: b" \ttext/plain \r\n ",
        };
        assert!(f.name_eq(b"content-type"));
        assert!(!f.name_eq(b"content-typ"));
        assert!(!f.name_eq(b"content-types"));
        assert_eq!(f.trimmed_value(), b"text/plain");
        assert_eq!(trim(b"  "), b"");
    }

    #[test]
    fn fields_offset_is_body() {
        let mut it = fields(MSG);
        assert_eq!(it.by_ref().count(), 5);
        assert_eq!(&MSG[it.offset()..], b"X-Body: not a header\r\n");
        assert_eq!(it.next(), None);
    }

    // ---------------------------------------------------------------------
    // Unfolding
    // ---------------------------------------------------------------------

    /// One line per case: `unfold!(test, raw => unfolded)`.
    macro_rules! unfold {
        ($test:ident, $raw:expr => $want:expr) => {
            #[test]
            fn $test() {
                let mut out = [0u8; 128];
                let n = unfold_into(&$raw[..], &mut out).unwrap();
                assert_eq!(&out[..n], &$want[..]);
                assert_eq!(unfolded(&$raw[..]).collect::<Vec<u8>>(), &$want[..]);
            }
        };
    }

    unfold!(unfold_plain, b" hello" => b"hello");
    unfold!(unfold_crlf_sp, b" a\r\n b" => b"a b");
    unfold!(unfold_crlf_tab, b" a\r\n\tb" => b"a\tb");
    unfold!(unfold_lf, b" a\n b\n\tc" => b"a b\tc");
    unfold!(unfold_many_wsp, b" a\r\n   b " => b"a   b");
    unfold!(unfold_leading_fold, b"\r\n  a@b" => b"a@b");
    unfold!(unfold_trailing_fold, b" a\r\n " => b"a");
    unfold!(unfold_break_without_wsp_kept, b" a\r\nb" => b"a\r\nb");
    unfold!(unfold_lone_cr_kept, b" a\rb" => b"a\rb");
    unfold!(unfold_empty, b"" => b"");
    unfold!(unfold_only_wsp, b" \t\r\n " => b"");

    #[test]
    fn unfold_buffer_too_small_leaves_out_unchanged() {
        let mut out = [b'#'; 4];
        assert_eq!(
            unfold_into(b" abcde", &mut out),
            Err(BufferTooSmall { needed: 5 })
        );
        assert_eq!(out, [b'#'; 4]);
        assert_eq!(unfold_into(b" ab\r\n cd", &mut [0u8; 5]), Ok(5));
    }

    // ---------------------------------------------------------------------
    // The SWAR LF search
    // ---------------------------------------------------------------------

    #[test]
    fn memchr_lf_every_position() {
        for len in 0..40 {
            for at in 0..=len {
                let mut v = vec![b'\n' ^ 0x80; len];
                if at < len {
                    v[at] = b'\n';
                }
                let want = v.iter().position(|&b| b == b'\n');
                assert_eq!(memchr_lf(&v), want, "len {len} at {at}");
                v.iter_mut().for_each(|b| *b = 0x0b);
                if at < len {
                    v[at] = b'\n';
                }
                assert_eq!(memchr_lf(&v), want, "len {len} at {at}");
            }
        }
    }

    // ---------------------------------------------------------------------
    // Properties
    // ---------------------------------------------------------------------

    const TOKENS: &[&[u8]] = &[
        b"From",
        b"X-Foo",
        b"X-Foobar",
        b"x-foo",
        b"Received",
        b":",
        b": ",
        b" ",
        b"\t",
        b"\r\n",
        b"\n",
        b"\r",
        b"a",
        b"value",
        b"\0",
        b"\xc3\xa9",
        b"\r\n\r\n",
        b"\r\n ",
        b"\n\t",
    ];

    fn header_like() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(prop::sample::select(TOKENS), 0..40).prop_map(|parts| parts.concat())
    }

    fn any_bytes() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(any::<u8>(), 0..300)
    }

    fn exercise(input: &[u8], name: &[u8]) {
        let mut slots = [Field::EMPTY; 4];
        let _ = scan(input, true, &mut slots);
        let _ = scan(input, false, &mut slots);
        let _ = end_of_headers(input, false);
        let _ = find(input, name);
        for f in fields(input) {
            let mut out = [0u8; 64];
            let _ = unfold_into(f.value, &mut out);
        }
        let mut out = [0u8; 512];
        let n = unfold_into(input, &mut out).expect("output is large enough");
        assert!(n <= input.len());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(input in any_bytes(), name in any_bytes()) {
            exercise(&input, &name);
        }

        #[test]
        fn header_like_never_panics(input in header_like(), name in header_like()) {
            exercise(&input, &name);
        }

        #[test]
        fn arbitrary_bytes_are_consistent(input in any_bytes()) {
            check_consistency(&input);
        }

        #[test]
        fn header_like_is_consistent(input in header_like()) {
            check_consistency(&input);
        }

        #[test]
        fn few_slots_fill_or_fail(input in header_like(), k in 0usize..4) {
            let all: Vec<Field<'_>> = fields(&input).collect();
            let mut slots = [Field::EMPTY; 4];
            let res = scan(&input, true, &mut slots[..k]);
            if all.len() <= k {
                let body = end_of_headers(&input, true).expect("complete input decides");
                prop_assert_eq!(res, Ok(Status::Complete { fields: all.len(), body }));
                prop_assert_eq!(&slots[..all.len()], &all[..]);
            } else {
                prop_assert_eq!(res, Err(Error::TooManyFields));
                prop_assert_eq!(&slots[..k], &all[..k]);
            }
        }

        #[test]
        fn find_agrees_with_fields(input in header_like(), name in prop::sample::select(TOKENS)) {
            let first = fields(&input).find(|f| f.name_eq(name)).map(|f| f.value);
            prop_assert_eq!(find(&input, name), first);
        }

        #[test]
        fn unfolded_has_no_fold(input in header_like()) {
            for f in fields(&input) {
                let mut out = [0u8; 1024];
                let n = unfold_into(f.value, &mut out).expect("large enough");
                let u = &out[..n];
                prop_assert!(!u.windows(2).any(|w| w[0] == b'\n' && (w[1] == b' ' || w[1] == b'\t')));
                prop_assert_eq!(trim(u), u);
            }
        }
    }
}
