//! SPF record syntax (RFC 7208 §4.5, §4.6, §5, §6): which TXT record is the
//! SPF record, and each term of it. Terms are handed out as spans into the
//! record so that the evaluator can keep the record while it resolves.

use super::macros;

/// A directive's qualifier (RFC 7208 §4.6.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Qualifier {
    /// `+` (the default).
    Pass,
    /// `-`.
    Fail,
    /// `~`.
    SoftFail,
    /// `?`.
    Neutral,
}

/// A span `[start, end)` of the record.
pub type Span = (usize, usize);

/// A mechanism (RFC 7208 §5) with its arguments as spans of the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Mechanism {
    /// `all`.
    All,
    /// `include:<domain-spec>`.
    Include(Span),
    /// `a[:<domain-spec>][/v4][//v6]`.
    A {
        /// The domain-spec, when given.
        domain: Option<Span>,
        /// IPv4 prefix length.
        v4: u8,
        /// IPv6 prefix length.
        v6: u8,
    },
    /// `mx[:<domain-spec>][/v4][//v6]`.
    Mx {
        /// The domain-spec, when given.
        domain: Option<Span>,
        /// IPv4 prefix length.
        v4: u8,
        /// IPv6 prefix length.
        v6: u8,
    },
    /// `ptr[:<domain-spec>]`.
    Ptr(Option<Span>),
    /// `ip4:<network>[/len]`, the address IPv4-mapped.
    Ip4 {
        /// The network, as an IPv4-mapped IPv6 address.
        net: [u8; 16],
        /// Prefix length (0..=32).
        len: u8,
    },
    /// `ip6:<network>[/len]`.
    Ip6 {
        /// The network.
        net: [u8; 16],
        /// Prefix length (0..=128).
        len: u8,
    },
    /// `exists:<domain-spec>`.
    Exists(Span),
}

/// One term of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Term {
    /// A qualified mechanism.
    Directive(Qualifier, Mechanism),
    /// `redirect=<domain-spec>`.
    Redirect(Span),
    /// `exp=<domain-spec>`.
    Exp(Span),
    /// Any other `name=value` modifier: ignored (§6).
    Unknown,
}

/// Why a record is not usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Syntax {
    /// A term that is not a mechanism or modifier, or with bad arguments.
    BadTerm,
    /// `redirect` or `exp` given twice (§6).
    Duplicate,
}

/// Whether a TXT record is an SPF record: `v=spf1` then a space or the end
/// (§4.5, case-insensitive).
pub fn is_spf(txt: &[u8]) -> bool {
    match txt.get(..6) {
        Some(v) if v.eq_ignore_ascii_case(b"v=spf1") => matches!(txt.get(6), None | Some(b' ')),
        _ => false,
    }
}

/// The terms of `record` (which [`is_spf`]), as spans, skipping the version.
pub fn terms(record: &[u8]) -> impl Iterator<Item = Span> + '_ {
    terms_from(record, 6)
}

/// The terms of `record` from octet `from` on (at least past the version).
pub fn terms_from(record: &[u8], from: usize) -> impl Iterator<Item = Span> + '_ {
    let mut at = from.max(6).min(record.len());
    core::iter::from_fn(move || {
        while record.get(at) == Some(&b' ') {
            at += 1;
        }
        if at >= record.len() {
            return None;
        }
        let start = at;
        while at < record.len() && record[at] != b' ' {
            at += 1;
        }
        Some((start, at))
    })
}

/// The whole record's syntax (§4.6: any error makes the record
/// `permerror` before anything is evaluated); the `redirect` and `exp`
/// modifiers found.
pub fn check(record: &[u8]) -> Result<(Option<Span>, Option<Span>), Syntax> {
    let (mut redirect, mut exp) = (None, None);
    for span in terms(record) {
        match parse(record, span)? {
            Term::Redirect(s) if redirect.is_none() => redirect = Some(s),
            Term::Exp(s) if exp.is_none() => exp = Some(s),
            Term::Redirect(_) | Term::Exp(_) => return Err(Syntax::Duplicate),
            _ => {}
        }
    }
    Ok((redirect, exp))
}

/// Parses the term at `span` of `record`.
pub fn parse(record: &[u8], span: Span) -> Result<Term, Syntax> {
    let t = record.get(span.0..span.1).ok_or(Syntax::BadTerm)?;
    let name_end = t
        .iter()
        .position(|&b| !(b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')))
        .unwrap_or(t.len());
    if t.get(name_end) == Some(&b'=') {
        return modifier(t, name_end, span.0);
    }
    let (q, off) = match t.first() {
        Some(b'+') => (Qualifier::Pass, 1),
        Some(b'-') => (Qualifier::Fail, 1),
        Some(b'~') => (Qualifier::SoftFail, 1),
        Some(b'?') => (Qualifier::Neutral, 1),
        _ => (Qualifier::Pass, 0),
    };
    mechanism(t, off, span.0).map(|m| Term::Directive(q, m))
}

/// `name=value`: `redirect` and `exp` take a domain-spec; the name of any
/// other must start with a letter and its value be a macro-string.
fn modifier(t: &[u8], eq: usize, base: usize) -> Result<Term, Syntax> {
    let (name, value) = (&t[..eq], &t[eq + 1..]);
    let vspan = (base + eq + 1, base + t.len());
    if name.eq_ignore_ascii_case(b"redirect") || name.eq_ignore_ascii_case(b"exp") {
        if !domain_spec(value) {
            return Err(Syntax::BadTerm);
        }
        return Ok(if name.len() == 3 {
            Term::Exp(vspan)
        } else {
            Term::Redirect(vspan)
        });
    }
    let first_alpha = name.first().is_some_and(u8::is_ascii_alphabetic);
    if !first_alpha || !macros::valid(value, false) {
        return Err(Syntax::BadTerm);
    }
    Ok(Term::Unknown)
}

/// A mechanism after the qualifier at `off` of term `t` (at `base`).
fn mechanism(t: &[u8], off: usize, base: usize) -> Result<Mechanism, Syntax> {
    let rest = &t[off..];
    let name_end = rest
        .iter()
        .position(|&b| b == b':' || b == b'/')
        .unwrap_or(rest.len());
    let (name, args) = (&rest[..name_end], &rest[name_end..]);
    let arg_base = base + off + name_end;
    let lower = |n: &[u8]| name.eq_ignore_ascii_case(n);
    if lower(b"all") {
        return if args.is_empty() {
            Ok(Mechanism::All)
        } else {
            Err(Syntax::BadTerm)
        };
    }
    if lower(b"include") || lower(b"exists") {
        let span = required_domain(args, arg_base)?;
        return Ok(if lower(b"include") {
            Mechanism::Include(span)
        } else {
            Mechanism::Exists(span)
        });
    }
    if lower(b"a") || lower(b"mx") {
        let (domain, v4, v6) = domain_and_cidr(args, arg_base)?;
        return Ok(if lower(b"a") {
            Mechanism::A { domain, v4, v6 }
        } else {
            Mechanism::Mx { domain, v4, v6 }
        });
    }
    if lower(b"ptr") {
        return match args {
            [] => Ok(Mechanism::Ptr(None)),
            [b':', ..] => Ok(Mechanism::Ptr(Some(required_domain(args, arg_base)?))),
            _ => Err(Syntax::BadTerm),
        };
    }
    if lower(b"ip4") || lower(b"ip6") {
        return ip_network(args, lower(b"ip4"));
    }
    Err(Syntax::BadTerm)
}

/// `:<domain-spec>`, required.
fn required_domain(args: &[u8], base: usize) -> Result<Span, Syntax> {
    match args {
        [b':', spec @ ..] if domain_spec(spec) => Ok((base + 1, base + args.len())),
        _ => Err(Syntax::BadTerm),
    }
}

/// `[:<domain-spec>][/v4][//v6]` of `a` and `mx`.
fn domain_and_cidr(args: &[u8], base: usize) -> Result<(Option<Span>, u8, u8), Syntax> {
    let mut domain = None;
    let mut rest = args;
    if let [b':', tail @ ..] = args {
        // The domain-spec ends where a cidr suffix starts: the last '/'
        // that begins a valid dual-cidr-length.
        let end = cidr_start(tail).unwrap_or(tail.len());
        let spec = &tail[..end];
        if !domain_spec(spec) {
            return Err(Syntax::BadTerm);
        }
        domain = Some((base + 1, base + 1 + end));
        rest = &tail[end..];
    }
    let (v4, v6) = dual_cidr(rest).ok_or(Syntax::BadTerm)?;
    Ok((domain, v4, v6))
}

/// Where a trailing dual-cidr-length begins in `s`, if it has one.
fn cidr_start(s: &[u8]) -> Option<usize> {
    let first = s.iter().position(|&b| b == b'/')?;
    // A domain-spec never holds '/', so the cidr starts at the first.
    dual_cidr(&s[first..]).map(|_| first)
}

/// `[/v4][//v6]` (both optional); `None` when malformed or out of range.
fn dual_cidr(s: &[u8]) -> Option<(u8, u8)> {
    let (mut v4, mut v6) = (32u8, 128u8);
    let mut rest = s;
    if let [b'/', tail @ ..] = rest {
        if tail.first() != Some(&b'/') {
            let n = tail
                .iter()
                .position(|b| !b.is_ascii_digit())
                .unwrap_or(tail.len());
            v4 = cidr_len(&tail[..n], 32)?;
            rest = &tail[n..];
        }
    }
    if let [b'/', b'/', tail @ ..] = rest {
        v6 = cidr_len(tail, 128)?;
        rest = &[];
    }
    rest.is_empty().then_some((v4, v6))
}

/// A prefix length: digits without a leading zero (except "0"), at most
/// `max`.
fn cidr_len(d: &[u8], max: u8) -> Option<u8> {
    if d.is_empty() || d.len() > 3 || !d.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if d.len() > 1 && d[0] == b'0' {
        return None;
    }
    let n = d.iter().fold(0u16, |a, &b| a * 10 + u16::from(b - b'0'));
    (n <= u16::from(max)).then_some(n as u8)
}

/// `:<network>[/len]` of `ip4` or `ip6`.
fn ip_network(args: &[u8], v4: bool) -> Result<Mechanism, Syntax> {
    let [b':', body @ ..] = args else {
        return Err(Syntax::BadTerm);
    };
    let (addr, len) = match body.iter().position(|&b| b == b'/') {
        Some(i) => (&body[..i], Some(&body[i + 1..])),
        None => (body, None),
    };
    let text = core::str::from_utf8(addr).map_err(|_| Syntax::BadTerm)?;
    let max = if v4 { 32 } else { 128 };
    let len = match len {
        Some(d) => cidr_len(d, max).ok_or(Syntax::BadTerm)?,
        None => max,
    };
    if v4 {
        let a: core::net::Ipv4Addr = text.parse().map_err(|_| Syntax::BadTerm)?;
        Ok(Mechanism::Ip4 {
            net: a.to_ipv6_mapped().octets(),
            len,
        })
    } else {
        let a: core::net::Ipv6Addr = text.parse().map_err(|_| Syntax::BadTerm)?;
        Ok(Mechanism::Ip6 {
            net: a.octets(),
            len,
        })
    }
}

/// A domain-spec (§7.1): a valid macro-string that ends in a macro or in
/// `.toplabel` with an optional final dot.
pub fn domain_spec(spec: &[u8]) -> bool {
    if spec.is_empty() || !macros::valid(spec, false) {
        return false;
    }
    if spec.ends_with(b"}") && macros::ends_with_macro(spec) {
        return true;
    }
    let s = spec.strip_suffix(b".").unwrap_or(spec);
    match s.iter().rposition(|&b| b == b'.') {
        Some(dot) => toplabel(&s[dot + 1..]),
        None => false,
    }
}

/// `toplabel` (§7.1): alphanumerics with at least one letter, or with
/// inner hyphens.
fn toplabel(l: &[u8]) -> bool {
    let Some((&first, _)) = l.split_first() else {
        return false;
    };
    let last = l[l.len() - 1];
    if !l.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-') {
        return false;
    }
    if l.contains(&b'-') {
        first.is_ascii_alphanumeric() && last.is_ascii_alphanumeric()
    } else {
        l.iter().any(u8::is_ascii_alphabetic)
    }
}

/// Whether the IPv4-mapped or IPv6 address `ip` is in `net`/`len` (a
/// length over the address family's bits counts all of them).
pub fn in_network(ip: &[u8; 16], net: &[u8; 16], len: u8, v4: bool) -> bool {
    let (start, bits) = if v4 {
        (12, u32::from(len.min(32)))
    } else {
        (0, u32::from(len.min(128)))
    };
    let whole = (bits / 8) as usize;
    if ip[start..start + whole] != net[start..start + whole] {
        return false;
    }
    let rem = bits % 8;
    if rem == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rem);
    (ip[start + whole] & mask) == (net[start + whole] & mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(t: &str) -> Result<Term, Syntax> {
        let r = [b"v=spf1 ", t.as_bytes()].concat();
        let span = terms(&r).next().expect("a term");
        parse(&r, span)
    }

    #[test]
    fn version_and_terms() {
        assert!(is_spf(b"v=spf1"));
        assert!(is_spf(b"V=SPF1 -all"));
        assert!(!is_spf(b"v=spf10 -all"));
        assert!(!is_spf(b"spf2.0/pra -all"));
        let r = b"v=spf1  a   -all ";
        let spans: std::vec::Vec<_> = terms(r).collect();
        assert_eq!(spans, [(8, 9), (12, 16)]);
    }

    #[test]
    fn mechanisms_parse_with_their_cidrs() {
        assert_eq!(
            one("-all"),
            Ok(Term::Directive(Qualifier::Fail, Mechanism::All))
        );
        assert!(matches!(
            one("mx:example.com/24//64"),
            Ok(Term::Directive(
                Qualifier::Pass,
                Mechanism::Mx {
                    domain: Some(_),
                    v4: 24,
                    v6: 64
                }
            ))
        ));
        assert!(matches!(
            one("~a//48"),
            Ok(Term::Directive(
                Qualifier::SoftFail,
                Mechanism::A {
                    domain: None,
                    v4: 32,
                    v6: 48
                }
            ))
        ));
        assert!(matches!(
            one("ip4:192.0.2.0/24"),
            Ok(Term::Directive(_, Mechanism::Ip4 { len: 24, .. }))
        ));
        assert!(matches!(
            one("ip6:2001:db8::/32"),
            Ok(Term::Directive(_, Mechanism::Ip6 { len: 32, .. }))
        ));
        assert!(matches!(
            one("include:_spf.%{d}"),
            Ok(Term::Directive(_, Mechanism::Include(_)))
        ));
        assert!(matches!(
            one("exists:%{i}.x.example"),
            Ok(Term::Directive(_, Mechanism::Exists(_)))
        ));
        assert!(matches!(
            one("redirect=_spf.example.com"),
            Ok(Term::Redirect(_))
        ));
        assert!(matches!(one("foo=bar"), Ok(Term::Unknown)));
    }

    #[test]
    fn bad_terms_are_syntax_errors() {
        for t in [
            "allx",
            "all:x",
            "include",
            "include:",
            "include:foo",
            "ip4:192.0.2.1/33",
            "ip4:1.2.3",
            "ip4:192.0.2.01",
            "ip6:2001:db8::/129",
            "a/024",
            "a:example.com/",
            "mx//",
            "ptr:",
            "exists:%{z}.example.com",
            "foo:bar",
            "-redirect=x.example",
            "1x=y",
            "a:foo.123",
        ] {
            assert_eq!(one(t), Err(Syntax::BadTerm), "{t}");
        }
        assert_eq!(
            check(b"v=spf1 redirect=a.example redirect=b.example"),
            Err(Syntax::Duplicate)
        );
        assert_eq!(check(b"v=spf1 -all junk"), Err(Syntax::BadTerm));
    }

    #[test]
    fn networks() {
        let mapped = |a: [u8; 4]| core::net::Ipv4Addr::from(a).to_ipv6_mapped().octets();
        assert!(in_network(
            &mapped([192, 0, 2, 77]),
            &mapped([192, 0, 2, 0]),
            24,
            true
        ));
        assert!(!in_network(
            &mapped([192, 0, 3, 77]),
            &mapped([192, 0, 2, 0]),
            24,
            true
        ));
        assert!(in_network(
            &mapped([10, 1, 2, 3]),
            &mapped([192, 0, 2, 0]),
            0,
            true
        ));
        assert!(in_network(
            &mapped([192, 0, 2, 129]),
            &mapped([192, 0, 2, 128]),
            25,
            true
        ));
        assert!(!in_network(
            &mapped([192, 0, 2, 127]),
            &mapped([192, 0, 2, 128]),
            25,
            true
        ));
    }
}
