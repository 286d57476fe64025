//! The `DKIM-Signature` field (RFC 6376 §3.5), parsed and checked.

use super::tags::{self, TagError};

/// A signing algorithm (`a=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Algorithm {
    /// `rsa-sha256` (RFC 6376).
    RsaSha256,
    /// `ed25519-sha256` (RFC 8463).
    Ed25519Sha256,
    /// `rsa-sha1`: recognised, and reported as failing (RFC 8301 §3.1).
    RsaSha1,
}

impl Algorithm {
    /// Its name in `a=` and in `Authentication-Results`.
    pub const fn name(self) -> &'static str {
        match self {
            Algorithm::RsaSha256 => "rsa-sha256",
            Algorithm::Ed25519Sha256 => "ed25519-sha256",
            Algorithm::RsaSha1 => "rsa-sha1",
        }
    }
}

/// A canonicalization (`c=`, §3.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Canon {
    /// `simple`: the bytes as they are.
    Simple,
    /// `relaxed`: white space and header name case normalised.
    Relaxed,
}

/// Why a signature field is unusable (`permerror` in results).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum SigError {
    /// The tag list is malformed.
    Tags(TagError),
    /// A required tag is missing: its name.
    Missing(&'static str),
    /// `v=` is not `1`.
    Version,
    /// `a=` names an algorithm we do not know.
    Algorithm,
    /// `c=` is not `simple`/`relaxed` (or a pair of them).
    Canonicalization,
    /// `h=` does not list `From` (§5.4).
    FromNotSigned,
    /// `i=` is not in `d=` or below it (§3.5).
    Identity,
    /// `l=`, `t=` or `x=` is not a number, or `x=` is before `t=`.
    Number,
    /// `q=` does not offer `dns/txt`.
    Query,
    /// `d=` or `s=` is not a domain name or selector.
    Name,
}

/// A parsed signature: slices of the field's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signature<'a> {
    /// `a=`.
    pub algorithm: Algorithm,
    /// The header canonicalization.
    pub header_canon: Canon,
    /// The body canonicalization.
    pub body_canon: Canon,
    /// `d=`, the signing domain.
    pub domain: &'a [u8],
    /// `s=`, the selector.
    pub selector: &'a [u8],
    /// `h=`, colon-separated names (see [`Signature::signed_headers`]).
    pub headers: &'a [u8],
    /// `i=`, the agent or user identifier, if given.
    pub identity: Option<&'a [u8]>,
    /// `l=`, the body length hashed, if given.
    pub length: Option<u64>,
    /// `t=`, when it was signed.
    pub timestamp: Option<u64>,
    /// `x=`, when it expires.
    pub expiry: Option<u64>,
    /// `bh=`, base64 with folding white space.
    pub body_hash: &'a [u8],
    /// `b=`, base64 with folding white space.
    pub signature: &'a [u8],
}

impl<'a> Signature<'a> {
    /// The names in `h=`, trimmed, in order.
    pub fn signed_headers(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        super::header_names(self.headers)
    }

    /// Whether `x=` has passed at `now` (seconds since the epoch).
    pub fn expired(&self, now: u64) -> bool {
        self.expiry.is_some_and(|x| x < now)
    }
}

fn tags_trim(v: &[u8]) -> &[u8] {
    crate::engine::header::trim(v)
}

/// Parses and checks the value of a `DKIM-Signature` field.
pub fn parse(value: &[u8]) -> Result<Signature<'_>, SigError> {
    tags::check(value).map_err(SigError::Tags)?;
    let get = |n: &'static str| tags::get(value, n.as_bytes());
    let need = |n: &'static str| get(n).ok_or(SigError::Missing(n));
    if need("v")? != b"1" {
        return Err(SigError::Version);
    }
    let algorithm = match need("a")? {
        a if a.eq_ignore_ascii_case(b"rsa-sha256") => Algorithm::RsaSha256,
        a if a.eq_ignore_ascii_case(b"ed25519-sha256") => Algorithm::Ed25519Sha256,
        a if a.eq_ignore_ascii_case(b"rsa-sha1") => Algorithm::RsaSha1,
        _ => return Err(SigError::Algorithm),
    };
    let (header_canon, body_canon) = canon(get("c").unwrap_or(b"simple/simple"))?;
    let (domain, selector) = (need("d")?, need("s")?);
    if !is_domain(domain) || !is_domain(selector) {
        return Err(SigError::Name);
    }
    let headers = need("h")?;
    let sig = Signature {
        algorithm,
        header_canon,
        body_canon,
        domain,
        selector,
        headers,
        identity: get("i"),
        length: number(get("l"))?,
        timestamp: number(get("t"))?,
        expiry: number(get("x"))?,
        body_hash: need("bh")?,
        signature: need("b")?,
    };
    if !sig
        .signed_headers()
        .any(|h| h.eq_ignore_ascii_case(b"from"))
    {
        return Err(SigError::FromNotSigned);
    }
    if let Some(q) = get("q") {
        if !q
            .split(|&b| b == b':')
            .any(|m| tags_trim(m).eq_ignore_ascii_case(b"dns/txt"))
        {
            return Err(SigError::Query);
        }
    }
    if let (Some(t), Some(x)) = (sig.timestamp, sig.expiry) {
        if x < t {
            return Err(SigError::Number);
        }
    }
    if let Some(i) = sig.identity {
        let at = i
            .iter()
            .rposition(|&b| b == b'@')
            .ok_or(SigError::Identity)?;
        if !in_domain(&i[at + 1..], domain) {
            return Err(SigError::Identity);
        }
    }
    Ok(sig)
}

/// `c=`: header and body canonicalization (the body defaults to simple).
fn canon(c: &[u8]) -> Result<(Canon, Canon), SigError> {
    let one = |s: &[u8]| match s {
        s if s.eq_ignore_ascii_case(b"simple") => Ok(Canon::Simple),
        s if s.eq_ignore_ascii_case(b"relaxed") => Ok(Canon::Relaxed),
        _ => Err(SigError::Canonicalization),
    };
    match c.iter().position(|&b| b == b'/') {
        Some(i) => Ok((one(&c[..i])?, one(&c[i + 1..])?)),
        None => Ok((one(c)?, Canon::Simple)),
    }
}

/// A decimal tag value (at most 19 digits: fits `u64`).
fn number(v: Option<&[u8]>) -> Result<Option<u64>, SigError> {
    let Some(v) = v else {
        return Ok(None);
    };
    crate::engine::decimal::parse_u64(v)
        .map(Some)
        .ok_or(SigError::Number)
}

/// Labels of letters, digits, `-` and `_` (selectors may hold `_`-less
/// dots too), none empty.
fn is_domain(d: &[u8]) -> bool {
    !d.is_empty()
        && d.len() <= crate::engine::limits::MAX_DNS_NAME
        && d.split(|&b| b == b'.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.iter()
                    .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
        })
}

/// Whether `name` is `domain` or below it (ASCII case ignored).
pub fn in_domain(name: &[u8], domain: &[u8]) -> bool {
    if name.len() < domain.len() || !name[name.len() - domain.len()..].eq_ignore_ascii_case(domain)
    {
        return false;
    }
    name.len() == domain.len() || name[name.len() - domain.len() - 1] == b'.'
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &[u8] = b" v=1; a=rsa-sha256; c=relaxed/simple; d=example.net; s=brisbane;\r\n\
        \th=from:to:subject; i=joe@football.example.net; t=1117574938; x=1118006938;\r\n\
        \tbh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=;\r\n\
        \tb=AuUoFEfDxTDkHlLXSZEpZj79LICEps6eda7W3deTVFOk4yAUoqOB\r\n\
        \t4nujc7YopdG5dWLSdNg6xNAZpOPr+kHxt1IrE+NahM6L/LbvaHut";

    #[test]
    fn a_good_signature() {
        let s = parse(GOOD).expect("parses");
        assert_eq!(s.algorithm, Algorithm::RsaSha256);
        assert_eq!(
            (s.header_canon, s.body_canon),
            (Canon::Relaxed, Canon::Simple)
        );
        assert_eq!(
            (s.domain, s.selector),
            (&b"example.net"[..], &b"brisbane"[..])
        );
        let h: std::vec::Vec<_> = s.signed_headers().collect();
        assert_eq!(h, [&b"from"[..], b"to", b"subject"]);
        assert_eq!(s.timestamp, Some(1_117_574_938));
        assert!(s.expired(1_118_006_939) && !s.expired(1_118_006_938));
    }

    #[test]
    fn broken_signatures() {
        let with = |from: &str, to: &str| {
            let g = std::string::String::from_utf8_lossy(GOOD).replace(from, to);
            parse(g.as_bytes()).map(|_| ())
        };
        assert_eq!(with("v=1", "v=2"), Err(SigError::Version));
        assert_eq!(with("rsa-sha256", "rsa-md5"), Err(SigError::Algorithm));
        assert_eq!(
            with("relaxed/simple", "loose"),
            Err(SigError::Canonicalization)
        );
        assert_eq!(with("from:to", "cc:to"), Err(SigError::FromNotSigned));
        assert_eq!(
            with("joe@football.example.net", "joe@example.org"),
            Err(SigError::Identity)
        );
        assert_eq!(with("t=1117574938", "t=11x"), Err(SigError::Number));
        assert_eq!(with("x=1118006938", "x=1"), Err(SigError::Number));
        assert_eq!(with(" s=brisbane;", ""), Err(SigError::Missing("s")));
        assert_eq!(with("d=example.net", "d=exa mple.net"), Err(SigError::Name));
        assert_eq!(
            with("v=1;", "v=1; v=1;"),
            Err(SigError::Tags(TagError::Duplicate))
        );
        assert_eq!(
            with("c=relaxed/simple;", "c=relaxed/simple; q=dns/txt;"),
            Ok(())
        );
        assert_eq!(
            with("c=relaxed/simple;", "c=relaxed/simple; q=http;"),
            Err(SigError::Query)
        );
    }
}
