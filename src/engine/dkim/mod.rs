//! DKIM (RFC 6376, RFC 8463) parsing and canonicalization, sans-IO and
//! without allocation: the signature field, key records, which header
//! fields a signature covers, and the canonical bytes to hash. The shell
//! fetches keys, hashes and checks signatures (with `ring`).

pub mod arc;
pub mod canon;
pub mod key;
pub mod signature;
pub mod tags;

use crate::engine::header;
use crate::engine::limits::MAX_DKIM_BASE64;
use base64::Engine as _;

/// Decodes a base64 tag value (folding white space allowed, §3.5) into
/// `out`; the decoded length, or `None` when it is not base64 or too long.
pub fn decode_base64(value: &[u8], out: &mut [u8]) -> Option<usize> {
    let mut buf = [0u8; MAX_DKIM_BASE64];
    let squeezed = tags::squeeze(value, &mut buf)?;
    base64::engine::general_purpose::STANDARD
        .decode_slice(squeezed, out)
        .ok()
}

/// The names of an `h=` list, trimmed, in order.
pub fn header_names(h: &[u8]) -> impl Iterator<Item = &[u8]> + '_ {
    h.split(|&b| b == b':').map(header::trim)
}

/// Calls `each` with the raw fields (`Name: value\r\n`) a signature covers,
/// in `h=` order (§5.4.2): each name takes the last instance not taken yet,
/// from the bottom up; a name with none left hashes nothing. `h` is the
/// raw `h=` value (of a DKIM-Signature or an ARC-Message-Signature).
pub fn signed_fields<'a>(block: &'a [u8], h: &[u8], mut each: impl FnMut(&'a [u8])) {
    for (k, name) in header_names(h).enumerate() {
        let before = header_names(h)
            .take(k)
            .filter(|n| n.eq_ignore_ascii_case(name))
            .count();
        let total = header::fields(block).filter(|f| f.name_eq(name)).count();
        let Some(pick) = total.checked_sub(before + 1) else {
            continue;
        };
        if let Some(raw) = raw_field(block, name, pick) {
            each(raw);
        }
    }
}

/// The raw bytes of the `nth` (from the top, 0-based) field named `name`.
pub fn raw_field<'a>(block: &'a [u8], name: &[u8], nth: usize) -> Option<&'a [u8]> {
    let mut it = header::fields(block);
    let mut seen = 0;
    loop {
        let start = it.offset();
        let f = it.next()?;
        if f.name_eq(name) {
            if seen == nth {
                return block.get(start..it.offset());
            }
            seen += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_taken_from_the_bottom_up() {
        let block = b"From: a@x\r\nX: 1\r\nSubject: s\r\nX: 2\r\n\r\n";
        let sig = signature::parse(
            b"v=1; a=rsa-sha256; d=x.example; s=s; h=x:from:x:x:to; bh=AA==; b=AA==",
        )
        .expect("sig");
        let mut got = std::vec::Vec::new();
        signed_fields(block, sig.headers, |f| {
            got.push(std::string::String::from_utf8_lossy(f).into_owned())
        });
        assert_eq!(got, ["X: 2\r\n", "From: a@x\r\n", "X: 1\r\n"]);
    }

    #[test]
    fn base64_with_folding() {
        let mut out = [0u8; 8];
        assert_eq!(decode_base64(b"aGVs\r\n bG8=", &mut out), Some(5));
        assert_eq!(&out[..5], b"hello");
        assert_eq!(decode_base64(b"aGVs*G8=", &mut out), None);
        assert_eq!(
            decode_base64(b"aGVsbG8gd29ybGQ=", &mut out),
            None,
            "too long for out"
        );
    }
}
