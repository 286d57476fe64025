//! ARC (RFC 8617) header fields: ARC-Seal, ARC-Message-Signature and the
//! instance of ARC-Authentication-Results; the chain's structure check; the
//! fields an ARC-Seal signs. Signatures are checked by the shell.

use super::signature::{Algorithm, Canon};
use super::tags;
use crate::engine::header;

/// Most ARC sets a chain may carry (RFC 8617 §4.2.1: `i=` is 1 to 50).
pub const MAX_ARC_SETS: usize = 50;

/// The three field names of an ARC set.
pub const SEAL: &[u8] = b"ARC-Seal";
/// The message signature of a set.
pub const AMS: &[u8] = b"ARC-Message-Signature";
/// The authentication results of a set.
pub const AAR: &[u8] = b"ARC-Authentication-Results";

/// `cv=` of an ARC-Seal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ChainValidation {
    /// `none`: the first set.
    None,
    /// `pass`.
    Pass,
    /// `fail`: a sealer found the chain broken.
    Fail,
}

/// An ARC field that breaks RFC 8617's syntax.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ArcError {
    /// The tag list is malformed, or a required tag is missing or bad.
    Syntax,
    /// `i=` is missing or outside 1..=50.
    Instance,
    /// `a=` is not a known algorithm.
    Algorithm,
}

/// An ARC-Seal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seal<'a> {
    /// `i=`.
    pub instance: u8,
    /// `cv=`.
    pub cv: ChainValidation,
    /// `a=`.
    pub algorithm: Algorithm,
    /// `d=`.
    pub domain: &'a [u8],
    /// `s=`.
    pub selector: &'a [u8],
    /// `b=`, base64 with folding white space.
    pub signature: &'a [u8],
}

/// An ARC-Message-Signature (a DKIM signature with `i=` as its instance).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageSignature<'a> {
    /// `i=`.
    pub instance: u8,
    /// `a=`.
    pub algorithm: Algorithm,
    /// Header canonicalization.
    pub header_canon: Canon,
    /// Body canonicalization.
    pub body_canon: Canon,
    /// `d=`.
    pub domain: &'a [u8],
    /// `s=`.
    pub selector: &'a [u8],
    /// `h=`.
    pub headers: &'a [u8],
    /// `l=`.
    pub length: Option<u64>,
    /// `bh=`.
    pub body_hash: &'a [u8],
    /// `b=`.
    pub signature: &'a [u8],
}

fn instance(v: Option<&[u8]>) -> Result<u8, ArcError> {
    match v.and_then(crate::engine::decimal::parse_u64) {
        Some(n) if (1..=MAX_ARC_SETS as u64).contains(&n) => Ok(n as u8),
        _ => Err(ArcError::Instance),
    }
}

fn algorithm(v: Option<&[u8]>) -> Result<Algorithm, ArcError> {
    match v {
        Some(a) if a.eq_ignore_ascii_case(b"rsa-sha256") => Ok(Algorithm::RsaSha256),
        Some(a) if a.eq_ignore_ascii_case(b"ed25519-sha256") => Ok(Algorithm::Ed25519Sha256),
        _ => Err(ArcError::Algorithm),
    }
}

fn required<'a>(list: &'a [u8], name: &[u8]) -> Result<&'a [u8], ArcError> {
    tags::get(list, name)
        .filter(|v| !v.is_empty())
        .ok_or(ArcError::Syntax)
}

/// Parses an ARC-Seal value (§4.1.3).
pub fn parse_seal(value: &[u8]) -> Result<Seal<'_>, ArcError> {
    tags::check(value).map_err(|_| ArcError::Syntax)?;
    if tags::get(value, b"h").is_some() {
        return Err(ArcError::Syntax); // §4.1.3: a seal names no headers
    }
    let cv = match required(value, b"cv")? {
        v if v.eq_ignore_ascii_case(b"none") => ChainValidation::None,
        v if v.eq_ignore_ascii_case(b"pass") => ChainValidation::Pass,
        v if v.eq_ignore_ascii_case(b"fail") => ChainValidation::Fail,
        _ => return Err(ArcError::Syntax),
    };
    Ok(Seal {
        instance: instance(tags::get(value, b"i"))?,
        cv,
        algorithm: algorithm(tags::get(value, b"a"))?,
        domain: required(value, b"d")?,
        selector: required(value, b"s")?,
        signature: required(value, b"b")?,
    })
}

/// Parses an ARC-Message-Signature value (§4.1.2).
pub fn parse_ams(value: &[u8]) -> Result<MessageSignature<'_>, ArcError> {
    tags::check(value).map_err(|_| ArcError::Syntax)?;
    let c = tags::get(value, b"c").unwrap_or(b"simple/simple");
    let one = |s: &[u8]| {
        if s.eq_ignore_ascii_case(b"relaxed") {
            Ok(Canon::Relaxed)
        } else if s.eq_ignore_ascii_case(b"simple") {
            Ok(Canon::Simple)
        } else {
            Err(ArcError::Syntax)
        }
    };
    let (hc, bc) = match c.iter().position(|&b| b == b'/') {
        Some(i) => (one(&c[..i])?, one(&c[i + 1..])?),
        None => (one(c)?, Canon::Simple),
    };
    let length = match tags::get(value, b"l") {
        Some(l) => Some(crate::engine::decimal::parse_u64(l).ok_or(ArcError::Syntax)?),
        None => None,
    };
    let headers = required(value, b"h")?;
    let seals = super::header_names(headers).any(|n| n.eq_ignore_ascii_case(SEAL));
    if seals {
        return Err(ArcError::Syntax); // §4.1.2: ARC-Seal is never signed here
    }
    Ok(MessageSignature {
        instance: instance(tags::get(value, b"i"))?,
        algorithm: algorithm(tags::get(value, b"a"))?,
        header_canon: hc,
        body_canon: bc,
        domain: required(value, b"d")?,
        selector: required(value, b"s")?,
        headers,
        length,
        body_hash: required(value, b"bh")?,
        signature: required(value, b"b")?,
    })
}

/// The instance of an ARC-Authentication-Results value: its leading
/// `i=N;` (§4.1.1).
pub fn aar_instance(value: &[u8]) -> Result<u8, ArcError> {
    let v = header::trim(value);
    let semi = v
        .iter()
        .position(|&b| b == b';')
        .ok_or(ArcError::Instance)?;
    let first = header::trim(&v[..semi]);
    match first.strip_prefix(b"i=") {
        Some(n) => instance(Some(header::trim(n))),
        None => Err(ArcError::Instance),
    }
}

/// Why a chain is structurally broken (§5.2 steps 2-3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ChainError {
    /// A field does not parse.
    Syntax,
    /// Instances are not exactly 1..=N with one field of each kind.
    Structure,
    /// The newest seal says `cv=fail`, or a seal's `cv=` is wrong for its
    /// place (`none` only at 1).
    Validation,
}

/// Checks the chain in header `block`: the number of sets N (0: no ARC
/// fields at all).
pub fn chain(block: &[u8]) -> Result<usize, ChainError> {
    let mut counts = [[0u8; 3]; MAX_ARC_SETS + 1];
    let mut n = 0usize;
    for f in header::fields(block) {
        let (kind, i) = if f.name_eq(SEAL) {
            let s = parse_seal(f.value).map_err(|_| ChainError::Syntax)?;
            let ok = (s.instance == 1) == (s.cv == ChainValidation::None);
            if s.cv == ChainValidation::Fail || !ok {
                return Err(ChainError::Validation);
            }
            (0, s.instance)
        } else if f.name_eq(AMS) {
            (
                1,
                parse_ams(f.value).map_err(|_| ChainError::Syntax)?.instance,
            )
        } else if f.name_eq(AAR) {
            (2, aar_instance(f.value).map_err(|_| ChainError::Syntax)?)
        } else {
            continue;
        };
        let i = usize::from(i);
        counts[i][kind] = counts[i][kind].saturating_add(1);
        n = n.max(i);
    }
    let whole = counts[1..=n].iter().all(|c| *c == [1, 1, 1]);
    if !whole {
        return Err(ChainError::Structure);
    }
    Ok(n)
}

/// The raw field (`Name: value\r\n`) named `name` with instance `i`.
pub fn set_field<'a>(block: &'a [u8], name: &[u8], i: u8) -> Option<&'a [u8]> {
    let total = header::find_all(block, name).count();
    (0..total)
        .filter_map(|nth| super::raw_field(block, name, nth))
        .find(|raw| {
            let value = raw
                .iter()
                .position(|&b| b == b':')
                .map_or(&raw[..0], |c| &raw[c + 1..]);
            let got = if name.eq_ignore_ascii_case(AAR) {
                aar_instance(value).ok()
            } else {
                tags::get(value, b"i").and_then(|v| instance(Some(v)).ok())
            };
            got == Some(i)
        })
}

/// Calls `each` with the canonical octets an ARC-Seal of instance `i`
/// signs (§5.1.1): every set from 1 to `i`, each as AAR, AMS, AS, relaxed,
/// the seal of `i` with its `b=` erased and no final CRLF.
pub fn seal_input(block: &[u8], i: u8, each: &mut impl FnMut(&[u8])) -> Option<()> {
    for k in 1..=i {
        for name in [AAR, AMS, SEAL] {
            let raw = set_field(block, name, k)?;
            let last = k == i && name == SEAL;
            super::canon::header(raw, Canon::Relaxed, last, last, each);
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BLOCK: &[u8] = b"ARC-Seal: i=2; cv=pass; a=rsa-sha256; d=fwd.example; s=s; b=QUJD\r\n\
ARC-Message-Signature: i=2; a=rsa-sha256; c=relaxed/relaxed; d=fwd.example; s=s;\r\n h=from:to; bh=QUJD; b=QUJD\r\n\
ARC-Authentication-Results: i=2; fwd.example; arc=pass\r\n\
ARC-Seal: i=1; cv=none; a=rsa-sha256; d=list.example; s=s; b=QUJD\r\n\
ARC-Message-Signature: i=1; a=rsa-sha256; c=relaxed/relaxed; d=list.example; s=s;\r\n h=from; bh=QUJD; b=QUJD\r\n\
ARC-Authentication-Results: i=1; list.example; dkim=pass\r\n\
From: a@example.com\r\n\r\n";

    #[test]
    fn fields_parse() {
        let s = parse_seal(b"i=1; cv=none; a=rsa-sha256; d=x.example; s=sel; t=1; b=QUJD")
            .expect("seal");
        assert_eq!((s.instance, s.cv), (1, ChainValidation::None));
        assert_eq!(
            parse_seal(b"i=51; cv=none; a=rsa-sha256; d=x; s=s; b=QUJD"),
            Err(ArcError::Instance)
        );
        assert_eq!(
            parse_seal(b"i=1; cv=none; a=rsa-sha1; d=x; s=s; b=QUJD"),
            Err(ArcError::Algorithm)
        );
        assert_eq!(
            parse_seal(b"i=1; cv=none; a=rsa-sha256; d=x; s=s; h=from; b=QUJD"),
            Err(ArcError::Syntax)
        );
        let m =
            parse_ams(b"i=3; a=ed25519-sha256; c=relaxed; d=x; s=s; h=from : to; bh=QUJD; b=QUJD")
                .expect("ams");
        assert_eq!(
            (m.instance, m.header_canon, m.body_canon),
            (3, Canon::Relaxed, Canon::Simple)
        );
        assert_eq!(
            parse_ams(b"i=1; a=rsa-sha256; d=x; s=s; h=from:arc-seal; bh=QUJD; b=QUJD"),
            Err(ArcError::Syntax)
        );
        assert_eq!(aar_instance(b" i=4; mx.example; spf=pass"), Ok(4));
        assert_eq!(
            aar_instance(b"mx.example; spf=pass"),
            Err(ArcError::Instance)
        );
    }

    #[test]
    fn chains() {
        assert_eq!(chain(BLOCK), Ok(2));
        assert_eq!(chain(b"From: a@example.com\r\n\r\n"), Ok(0));
        let s = std::string::String::from_utf8_lossy(BLOCK);
        let missing = s.replace(
            "ARC-Authentication-Results: i=1; list.example; dkim=pass\r\n",
            "",
        );
        assert_eq!(chain(missing.as_bytes()), Err(ChainError::Structure));
        let failed = s.replace("i=2; cv=pass", "i=2; cv=fail");
        assert_eq!(chain(failed.as_bytes()), Err(ChainError::Validation));
        let wrong = s.replace("i=1; cv=none", "i=1; cv=pass");
        assert_eq!(chain(wrong.as_bytes()), Err(ChainError::Validation));
        assert!(
            set_field(BLOCK, AMS, 1).is_some_and(|f| f.starts_with(b"ARC-Message-Signature: i=1"))
        );
        let mut out = std::vec::Vec::new();
        seal_input(BLOCK, 1, &mut |b: &[u8]| out.extend_from_slice(b)).expect("set 1");
        let text = std::string::String::from_utf8_lossy(&out).into_owned();
        assert!(text.starts_with(
            "arc-authentication-results:i=1; list.example; dkim=pass\r\narc-message-signature:i=1;"
        ));
        assert!(
            text.ends_with("arc-seal:i=1; cv=none; a=rsa-sha256; d=list.example; s=s; b="),
            "{text}"
        );
    }
}
