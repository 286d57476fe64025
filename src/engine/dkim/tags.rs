//! DKIM tag lists (RFC 6376 §3.2): `tag=value; tag=value`, with folding
//! white space allowed around names, values and separators.

/// A tag list that breaks §3.2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum TagError {
    /// A tag-spec without `=`, or a name that is not ALPHA *(ALPHA/DIGIT/_).
    Syntax,
    /// A tag given twice.
    Duplicate,
}

/// One tag: its name, its value with surrounding white space trimmed, and
/// where the raw value lies in the list (for erasing `b=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tag<'a> {
    /// The tag name.
    pub name: &'a [u8],
    /// The value, trimmed (folding inside kept).
    pub value: &'a [u8],
    /// The raw value's span in the list: from after `=` to before `;`.
    pub raw: (usize, usize),
}

fn is_fws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|&b| !is_fws(b)).unwrap_or(v.len());
    let end = v.iter().rposition(|&b| !is_fws(b)).map_or(start, |e| e + 1);
    &v[start..end]
}

/// Iterates the tags of `list`; an error ends the iteration.
pub fn tags(list: &[u8]) -> impl Iterator<Item = Result<Tag<'_>, TagError>> + '_ {
    let mut at = 0;
    let mut failed = false;
    core::iter::from_fn(move || {
        while !failed && at < list.len() {
            let end = list[at..]
                .iter()
                .position(|&b| b == b';')
                .map_or(list.len(), |i| at + i);
            let spec = &list[at..end];
            let start = at;
            at = end + 1;
            if trim(spec).is_empty() {
                continue; // the empty spec after a final ';' (or between two)
            }
            let Some(eq) = spec.iter().position(|&b| b == b'=') else {
                failed = true;
                return Some(Err(TagError::Syntax));
            };
            let name = trim(&spec[..eq]);
            let ok = name.first().is_some_and(u8::is_ascii_alphabetic)
                && name.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'_');
            if !ok {
                failed = true;
                return Some(Err(TagError::Syntax));
            }
            return Some(Ok(Tag {
                name,
                value: trim(&spec[eq + 1..]),
                raw: (start + eq + 1, end),
            }));
        }
        None
    })
}

/// Checks that no tag repeats (§3.2) and every spec is well formed.
pub fn check(list: &[u8]) -> Result<(), TagError> {
    for (i, t) in tags(list).enumerate() {
        let t = t?;
        for u in tags(list).take(i) {
            if u?.name == t.name {
                return Err(TagError::Duplicate);
            }
        }
    }
    Ok(())
}

/// The value of tag `name`, if present.
pub fn get<'a>(list: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    tags(list)
        .filter_map(Result::ok)
        .find(|t| t.name == name)
        .map(|t| t.value)
}

/// `value` without any folding white space (base64 tags, §3.5).
pub fn squeeze<'o>(value: &[u8], out: &'o mut [u8]) -> Option<&'o [u8]> {
    let mut n = 0;
    for &b in value.iter().filter(|&&b| !is_fws(b)) {
        *out.get_mut(n)? = b;
        n += 1;
    }
    Some(&out[..n])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists() {
        let l = b" v=1; a = rsa-sha256 ;\r\n\tb=abc\r\n def;";
        let all: std::vec::Vec<_> = tags(l).map(|t| t.expect("ok")).collect();
        assert_eq!(all.len(), 3);
        assert_eq!((all[1].name, all[1].value), (&b"a"[..], &b"rsa-sha256"[..]));
        assert_eq!(all[2].value, b"abc\r\n def");
        assert_eq!(&l[all[2].raw.0..all[2].raw.1], b"abc\r\n def");
        assert_eq!(check(l), Ok(()));
        assert_eq!(check(b"a=1; a=2"), Err(TagError::Duplicate));
        assert_eq!(check(b"a=1; junk"), Err(TagError::Syntax));
        assert_eq!(check(b"1a=1"), Err(TagError::Syntax));
        assert_eq!(get(l, b"v"), Some(&b"1"[..]));
        let mut buf = [0u8; 16];
        assert_eq!(squeeze(b"ab c\r\n\td=", &mut buf), Some(&b"abcd="[..]));
    }
}
