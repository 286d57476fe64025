//! SPF macros (RFC 7208 §7): syntax and expansion into fixed buffers.

use heapless::Vec;

/// What the macro letters stand for during one check.
#[derive(Debug, Clone, Copy)]
pub struct Env<'a> {
    /// `s`: the sender, `local@domain` (`postmaster@helo` for `<>`).
    pub sender: &'a [u8],
    /// `l`: the sender's local part.
    pub local: &'a [u8],
    /// `o`: the sender's domain.
    pub sender_domain: &'a [u8],
    /// `d`: the domain whose record is being evaluated.
    pub domain: &'a [u8],
    /// `i`, `c`, `v`: the client address (IPv4-mapped for IPv4).
    pub ip: &'a [u8; 16],
    /// `h`: the HELO/EHLO name.
    pub helo: &'a [u8],
    /// `r`: this host's name (explanations only).
    pub receiver: &'a [u8],
    /// `t`: seconds since the epoch (explanations only).
    pub now: u64,
}

/// Why an expansion failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Error {
    /// Bad macro syntax, or a letter not allowed here (`permerror`).
    Syntax,
    /// The output buffer is full.
    TooLong,
}

/// Longest single macro value before transformation: an address of
/// 64 + 1 + 255 octets fits.
const MAX_VALUE: usize = 320;

/// The IPv4 address of an IPv4-mapped `ip`.
pub fn ipv4_of(ip: &[u8; 16]) -> Option<[u8; 4]> {
    (ip[..10] == [0; 10] && ip[10] == 0xff && ip[11] == 0xff)
        .then(|| [ip[12], ip[13], ip[14], ip[15]])
}

/// Whether `s` is a valid macro-string (`explain` also allows the letters
/// `c`, `r`, `t` and spaces, §7.1).
pub fn valid(s: &[u8], explain: bool) -> bool {
    let mut i = 0;
    while i < s.len() {
        let b = s[i];
        if b == b'%' {
            match macro_len(&s[i..], explain) {
                Some(n) => i += n,
                None => return false,
            }
            continue;
        }
        let literal = matches!(b, 0x21..=0x24 | 0x26..=0x7e) || (explain && b == b' ');
        if !literal {
            return false;
        }
        i += 1;
    }
    true
}

/// Whether `s` (a valid macro-string) ends with a `%{...}` macro-expand.
pub fn ends_with_macro(s: &[u8]) -> bool {
    let mut i = 0;
    let mut last_end = None;
    while i < s.len() {
        if s[i] == b'%' {
            let n = macro_len(&s[i..], false).unwrap_or(1);
            if s.get(i + 1) == Some(&b'{') {
                last_end = Some(i + n);
            }
            i += n;
        } else {
            i += 1;
        }
    }
    last_end == Some(s.len())
}

/// The length of the macro at the start of `s` (`%%`, `%_`, `%-` or
/// `%{...}`), or `None` when it is malformed.
fn macro_len(s: &[u8], explain: bool) -> Option<usize> {
    match s.get(1)? {
        b'%' | b'_' | b'-' => Some(2),
        b'{' => {
            let close = s.iter().position(|&b| b == b'}')?;
            parse_expand(&s[2..close], explain)?;
            Some(close + 1)
        }
        _ => None,
    }
}

/// A parsed `%{...}` body: letter, keep (0 = all), reverse, delimiters.
struct Expand<'a> {
    letter: u8,
    keep: usize,
    reverse: bool,
    delims: &'a [u8],
}

/// Parses the text between `%{` and `}`.
fn parse_expand(body: &[u8], explain: bool) -> Option<Expand<'_>> {
    let (&letter, rest) = body.split_first()?;
    let lower = letter.to_ascii_lowercase();
    let allowed = matches!(lower, b's' | b'l' | b'o' | b'd' | b'i' | b'p' | b'h' | b'v')
        || (explain && matches!(lower, b'c' | b'r' | b't'));
    if !allowed {
        return None;
    }
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let keep = if digits == 0 {
        0
    } else {
        let n = rest[..digits].iter().try_fold(0usize, |a, &d| {
            a.checked_mul(10)?.checked_add(usize::from(d - b'0'))
        })?;
        if n == 0 {
            return None; // "%{d0}": a part count must be at least one
        }
        n.min(128)
    };
    let mut rest = &rest[digits..];
    let reverse = matches!(rest.first(), Some(b'r' | b'R'));
    if reverse {
        rest = &rest[1..];
    }
    if !rest.iter().all(|b| b".-+,/_=".contains(b)) {
        return None;
    }
    Some(Expand {
        letter,
        keep,
        reverse,
        delims: rest,
    })
}

/// Expands macro-string `s` into `out` (cleared first).
pub fn expand<const N: usize>(
    s: &[u8],
    env: &Env<'_>,
    explain: bool,
    out: &mut Vec<u8, N>,
) -> Result<(), Error> {
    out.clear();
    let mut i = 0;
    while i < s.len() {
        if s[i] != b'%' {
            out.push(s[i]).map_err(|_| Error::TooLong)?;
            i += 1;
            continue;
        }
        let n = macro_len(&s[i..], explain).ok_or(Error::Syntax)?;
        match s[i + 1] {
            b'%' => push(out, b"%")?,
            b'_' => push(out, b" ")?,
            b'-' => push(out, b"%20")?,
            _ => {
                let m = parse_expand(&s[i + 2..i + n - 1], explain).ok_or(Error::Syntax)?;
                expand_one(&m, env, out)?;
            }
        }
        i += n;
    }
    Ok(())
}

/// Expands a domain-spec into `out`; a result over 253 octets loses its
/// leftmost labels until it fits (§7.3).
pub fn expand_domain<const N: usize>(
    s: &[u8],
    env: &Env<'_>,
    out: &mut Vec<u8, N>,
) -> Result<(), Error> {
    let mut wide: Vec<u8, 1024> = Vec::new();
    expand(s, env, false, &mut wide)?;
    let mut start = 0;
    while wide.len() - start > crate::engine::limits::MAX_DNS_NAME {
        match wide[start..].iter().position(|&b| b == b'.') {
            Some(d) => start += d + 1,
            None => return Err(Error::TooLong),
        }
    }
    out.clear();
    out.extend_from_slice(&wide[start..])
        .map_err(|_| Error::TooLong)
}

fn push<const N: usize>(out: &mut Vec<u8, N>, b: &[u8]) -> Result<(), Error> {
    out.extend_from_slice(b).map_err(|_| Error::TooLong)
}

/// One `%{...}`: its value, split, reversed, cut to the rightmost parts,
/// joined with dots, URL-escaped for an upper-case letter.
fn expand_one<const N: usize>(
    m: &Expand<'_>,
    env: &Env<'_>,
    out: &mut Vec<u8, N>,
) -> Result<(), Error> {
    let mut value: Vec<u8, MAX_VALUE> = Vec::new();
    letter_value(m.letter.to_ascii_lowercase(), env, &mut value)?;
    let delims: &[u8] = if m.delims.is_empty() { b"." } else { m.delims };
    let parts = || value.split(|b| delims.contains(b));
    let total = parts().count();
    let keep = if m.keep == 0 {
        total
    } else {
        m.keep.min(total)
    };
    let escape = m.letter.is_ascii_uppercase();
    let mut first = true;
    for k in 0..keep {
        // Non-reversed: the last `keep` parts in order; reversed: parts
        // keep-1 down to 0 (the rightmost of the reversed list).
        let idx = if m.reverse {
            keep - 1 - k
        } else {
            total - keep + k
        };
        let part = parts().nth(idx).unwrap_or(&[]);
        if !first {
            push(out, b".")?;
        }
        first = false;
        if escape {
            url_escape(part, out)?;
        } else {
            push(out, part)?;
        }
    }
    Ok(())
}

/// The value of a macro letter.
fn letter_value<const N: usize>(
    letter: u8,
    env: &Env<'_>,
    v: &mut Vec<u8, N>,
) -> Result<(), Error> {
    match letter {
        b's' => push(v, env.sender),
        b'l' => push(v, env.local),
        b'o' => push(v, env.sender_domain),
        b'd' => push(v, env.domain),
        b'h' => push(v, env.helo),
        // `p` would need a validated PTR lookup; RFC 7208 §7.3 advises
        // against its use, and "unknown" is its defined fallback.
        b'p' => push(v, b"unknown"),
        b'r' if env.receiver.is_empty() => push(v, b"unknown"),
        b'r' => push(v, env.receiver),
        b'v' => push(
            v,
            if ipv4_of(env.ip).is_some() {
                b"in-addr"
            } else {
                b"ip6"
            },
        ),
        b'i' => dotted_ip(env.ip, v),
        b'c' => readable_ip(env.ip, v),
        b't' => {
            let mut b = [0u8; 20];
            push(v, crate::engine::decimal::fmt_u64(env.now, &mut b))
        }
        _ => Err(Error::Syntax),
    }
}

/// `i`: dotted decimal for IPv4, dotted nibbles for IPv6 (§7.3).
fn dotted_ip<const N: usize>(ip: &[u8; 16], v: &mut Vec<u8, N>) -> Result<(), Error> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    if let Some(v4) = ipv4_of(ip) {
        return readable_v4(v4, v);
    }
    for (k, byte) in ip.iter().enumerate() {
        if k > 0 {
            push(v, b".")?;
        }
        push(
            v,
            &[
                HEX[usize::from(byte >> 4)],
                b'.',
                HEX[usize::from(byte & 15)],
            ],
        )?;
    }
    Ok(())
}

fn readable_v4<const N: usize>(a: [u8; 4], v: &mut Vec<u8, N>) -> Result<(), Error> {
    for (k, octet) in a.iter().enumerate() {
        if k > 0 {
            push(v, b".")?;
        }
        let mut b = [0u8; 20];
        push(
            v,
            crate::engine::decimal::fmt_u64(u64::from(*octet), &mut b),
        )?;
    }
    Ok(())
}

/// `c`: the address as people write it (RFC 5952 for IPv6).
fn readable_ip<const N: usize>(ip: &[u8; 16], v: &mut Vec<u8, N>) -> Result<(), Error> {
    if let Some(v4) = ipv4_of(ip) {
        return readable_v4(v4, v);
    }
    let mut s: heapless::String<48> = heapless::String::new();
    core::fmt::Write::write_fmt(&mut s, format_args!("{}", core::net::Ipv6Addr::from(*ip)))
        .map_err(|_| Error::TooLong)?;
    push(v, s.as_bytes())
}

/// Percent-encodes all but the unreserved characters (RFC 3986).
fn url_escape<const N: usize>(part: &[u8], out: &mut Vec<u8, N>) -> Result<(), Error> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in part {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            push(out, &[b])?;
        } else {
            push(
                out,
                &[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]],
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(ip: [u8; 16]) -> Env<'static> {
        Env {
            sender: b"strong-bad@email.example.com",
            local: b"strong-bad",
            sender_domain: b"email.example.com",
            domain: b"email.example.com",
            ip: std::boxed::Box::leak(std::boxed::Box::new(ip)),
            helo: b"mx.example.org",
            receiver: b"mx.ours.example",
            now: 1_700_000_000,
        }
    }

    fn v4() -> [u8; 16] {
        core::net::Ipv4Addr::new(192, 0, 2, 3)
            .to_ipv6_mapped()
            .octets()
    }

    fn x(s: &str, e: &Env<'_>) -> std::string::String {
        let mut out: Vec<u8, 1024> = Vec::new();
        expand(s.as_bytes(), e, true, &mut out).expect("expands");
        std::string::String::from_utf8(out.to_vec()).expect("utf8")
    }

    /// The examples of RFC 7208 §7.4.
    #[test]
    fn rfc_examples() {
        let e = env(v4());
        assert_eq!(x("%{s}", &e), "strong-bad@email.example.com");
        assert_eq!(x("%{o}", &e), "email.example.com");
        assert_eq!(x("%{d}", &e), "email.example.com");
        assert_eq!(x("%{d4}", &e), "email.example.com");
        assert_eq!(x("%{d3}", &e), "email.example.com");
        assert_eq!(x("%{d2}", &e), "example.com");
        assert_eq!(x("%{d1}", &e), "com");
        assert_eq!(x("%{dr}", &e), "com.example.email");
        assert_eq!(x("%{d2r}", &e), "example.email");
        assert_eq!(x("%{l}", &e), "strong-bad");
        assert_eq!(x("%{l-}", &e), "strong.bad");
        assert_eq!(x("%{lr}", &e), "strong-bad");
        assert_eq!(x("%{lr-}", &e), "bad.strong");
        assert_eq!(x("%{l1r-}", &e), "strong");
        assert_eq!(
            x("%{ir}.%{v}._spf.%{d2}", &e),
            "3.2.0.192.in-addr._spf.example.com"
        );
        assert_eq!(
            x("%{lr-}.lp._spf.%{d2}", &e),
            "bad.strong.lp._spf.example.com"
        );
        assert_eq!(
            x("%{lr-}.lp.%{ir}.%{v}._spf.%{d2}", &e),
            "bad.strong.lp.3.2.0.192.in-addr._spf.example.com"
        );
        assert_eq!(
            x("%{ir}.%{v}.%{l1r-}.lp._spf.%{d2}", &e),
            "3.2.0.192.in-addr.strong.lp._spf.example.com"
        );
        assert_eq!(
            x("%{d2}.trusted-domains.example.net", &e),
            "example.com.trusted-domains.example.net"
        );
        let v6: core::net::Ipv6Addr = "2001:db8::cb01".parse().expect("v6");
        let e6 = env(v6.octets());
        assert_eq!(
            x("%{ir}.%{v}._spf.%{d2}", &e6),
            "1.0.b.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6._spf.example.com"
        );
        assert_eq!(x("%{c}", &e6), "2001:db8::cb01");
        assert_eq!(x("%{c} %% %_ %-", &e), "192.0.2.3 %   %20");
        assert_eq!(x("%{S}", &e), "strong-bad%40email.example.com");
    }

    #[test]
    fn syntax() {
        assert!(valid(b"%{d}.example.com", false));
        assert!(!valid(b"%{c}.example.com", false), "c only in explanations");
        assert!(valid(b"%{c}", true));
        assert!(!valid(b"%{d0}", false));
        assert!(!valid(b"%{x}", false));
        assert!(!valid(b"%{d", false));
        assert!(!valid(b"100%", false));
        assert!(!valid(b"a b", false));
        assert!(ends_with_macro(b"x.%{d}"));
        assert!(!ends_with_macro(b"%{d}.x"));
    }

    #[test]
    fn long_domains_lose_left_labels() {
        let long = [b'a'; 200];
        let mut local = std::vec::Vec::from(&long[..60]);
        local.extend_from_slice(b".bbbb");
        let mut e = env(v4());
        e.local = std::boxed::Box::leak(local.into_boxed_slice());
        let mut out: Vec<u8, 253> = Vec::new();
        expand_domain(b"%{l}.%{l}.%{l}.%{l}.example.com", &e, &mut out).expect("fits");
        assert!(out.len() <= 253, "{}", out.len());
        assert!(out.ends_with(b".example.com"));
    }
}
