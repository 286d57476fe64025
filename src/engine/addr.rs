//! Mail addresses: their grammar as the receiver takes them (a path in
//! `MAIL FROM:<...>` / `RCPT TO:<...>`, a mailbox `local@domain`, RFC 5321
//! §4.1.2) and their matching as the policy does it (address patterns
//! `local@domain` / `*@domain`, subdomains, TLS certificate names). The
//! SMTP receiver ([`super::smtp`]), the policy ([`super::policy`]) and
//! the shell all use these, so an address means the same everywhere. `no_std`,
//! no allocation: everything works on byte slices.

use super::limits::MAX_PATH;

// ---- grammar -----------------------------------------------------------

/// Parses `<path>` at the start of `s`: returns the address span (without
/// brackets and any source route) and the offset of the parameters.
/// `null_ok` allows `<>` (the reverse path of bounces). `None`: not a path.
pub fn parse_path(s: &[u8], null_ok: bool) -> Option<((usize, usize), usize)> {
    if s.first() != Some(&b'<') {
        return None;
    }
    // Find the closing '>' outside a quoted local part.
    let mut quoted = false;
    let mut escaped = false;
    let mut close = None;
    for (i, &b) in s.iter().enumerate().skip(1) {
        if escaped {
            escaped = false;
        } else if quoted && b == b'\\' {
            escaped = true;
        } else if b == b'"' {
            quoted = !quoted;
        } else if b == b'>' && !quoted {
            close = Some(i);
            break;
        }
    }
    let close = close?;
    let params = close + 1;
    if params < s.len() && s[params] != b' ' {
        return None;
    }
    let mut start = 1;
    let inner = &s[1..close];
    if inner.is_empty() {
        return if null_ok {
            Some(((1, 1), params))
        } else {
            None
        };
    }
    // A source route "@a,@b:" is accepted and ignored (RFC 5321 §4.1.2).
    if inner.first() == Some(&b'@') {
        let colon = inner.iter().position(|&b| b == b':')?;
        start += colon + 1;
    }
    let addr = &s[start..close];
    if addr.len() > MAX_PATH || !valid_mailbox(addr, !null_ok) {
        return None;
    }
    Some(((start, close), params))
}

/// Whether `a` is a mailbox the receiver would take in MAIL FROM
/// (`recipient` false; empty is the null sender) or RCPT TO (`recipient`
/// true; `postmaster` alone is allowed): the same check as the commands.
pub fn valid_address(a: &[u8], recipient: bool) -> bool {
    if a.is_empty() {
        return !recipient;
    }
    a.len() <= MAX_PATH && valid_mailbox(a, recipient)
}

/// Checks `local@domain` (or `postmaster` alone for recipients): no spaces
/// or controls outside a quoted local part, a non-empty domain.
fn valid_mailbox(a: &[u8], postmaster_ok: bool) -> bool {
    if postmaster_ok && a.eq_ignore_ascii_case(b"postmaster") {
        return true;
    }
    let Some(at) = a.iter().rposition(|&b| b == b'@') else {
        return false;
    };
    let (local, domain) = (&a[..at], &a[at + 1..]);
    if local.is_empty() || domain.is_empty() {
        return false;
    }
    let local_ok = if local.first() == Some(&b'"') {
        local.len() >= 2
            && local.last() == Some(&b'"')
            && !local.iter().any(|&b| b < 0x20 && b != b'\t')
    } else {
        local
            .iter()
            .all(|&b| b > 0x20 && b != 0x7f && !b"<>()[]\\,;:\"@".contains(&b))
    };
    let domain_ok = if domain.first() == Some(&b'[') {
        domain.last() == Some(&b']')
    } else {
        domain
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b >= 0x80)
            && !domain.starts_with(b".")
            && !domain.ends_with(b".")
            && !domain.windows(2).any(|w| w == b"..")
    };
    local_ok && domain_ok
}

// ---- matching ----------------------------------------------------------

/// The domain of an address (after the last `@`; empty without one).
pub fn domain_of(addr: &[u8]) -> &[u8] {
    match addr.iter().rposition(|&b| b == b'@') {
        Some(i) => addr.get(i + 1..).unwrap_or(&[]),
        None => &[],
    }
}

/// The local part of an address (before the last `@`; all of it without one).
pub fn local_of(addr: &[u8]) -> &[u8] {
    match addr.iter().rposition(|&b| b == b'@') {
        Some(i) => addr.get(..i).unwrap_or(&[]),
        None => addr,
    }
}

/// Whether the address `local@domain` fits `pattern`: `local@domain` or
/// `*@domain`, ASCII case ignored; the domain must be equal (no subdomains).
pub fn addr_matches(pattern: &[u8], local: &[u8], domain: &[u8]) -> bool {
    let (pl, pd) = (local_of(pattern), domain_of(pattern));
    pd.eq_ignore_ascii_case(domain) && (pl == b"*" || pl.eq_ignore_ascii_case(local))
}

/// Whether `domain` is a strict subdomain of `parent` (`a.b.example`
/// and `b.example` of `example`, not `example` itself), case ignored.
pub fn is_subdomain(domain: &[u8], parent: &[u8]) -> bool {
    let n = domain.len();
    n > parent.len() + 1
        && domain
            .get(n - parent.len()..)
            .is_some_and(|s| s.eq_ignore_ascii_case(parent))
        && domain.get(n - parent.len() - 1) == Some(&b'.')
}

/// Whether the address `addr` fits a filter pattern of the recipient and
/// sender filters, ASCII case ignored: `local@domain` (that address),
/// `*@domain` or `domain` (every address at exactly that domain),
/// `*.domain` (every address at a strict subdomain of it). An address
/// without a domain (`postmaster`, `<>`) fits only an equal pattern.
pub fn filter_matches(pattern: &[u8], addr: &[u8]) -> bool {
    let domain = domain_of(addr);
    if let Some(parent) = pattern.strip_prefix(b"*.") {
        return is_subdomain(domain, parent);
    }
    if pattern.contains(&b'@') {
        if domain.is_empty() {
            return pattern.eq_ignore_ascii_case(addr);
        }
        return addr_matches(pattern, local_of(addr), domain);
    }
    !domain.is_empty() && pattern.eq_ignore_ascii_case(domain)
}

/// Whether a certificate name `name` fits a connector's
/// `tls_certificate_name` `pattern`, ignoring case: equal, or, for a
/// pattern `*.suffix`, exactly one left-most label (non-empty, no `*`)
/// followed by `.suffix` (RFC 6125 §6.4.3: `*.contoso.com` fits
/// `mail.contoso.com`, not `contoso.com` nor `a.b.contoso.com`).
pub fn tls_name_matches(pattern: &[u8], name: &[u8]) -> bool {
    if pattern.eq_ignore_ascii_case(name) {
        return true;
    }
    let Some(suffix) = pattern.strip_prefix(b"*") else {
        return false;
    };
    if suffix.first() != Some(&b'.') || name.len() <= suffix.len() {
        return false;
    }
    let (label, tail) = name.split_at(name.len() - suffix.len());
    tail.eq_ignore_ascii_case(suffix) && !label.iter().any(|&b| b == b'.' || b == b'*')
}

/// Whether `b` can be part of an address in a header field (addresses
/// there are delimited by spaces, brackets, quotes and list separators).
#[inline]
pub fn is_addr_byte(b: u8) -> bool {
    !matches!(
        b,
        b' ' | b'\t'
            | b'\n'
            | b'\x0c'
            | b'\r'
            | b'<'
            | b'>'
            | b','
            | b';'
            | b':'
            | b'"'
            | b'('
            | b')'
            | b'['
            | b']'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_tls_name_fits_exactly_one_left_most_label() {
        let p = b"*.contoso.com";
        assert!(tls_name_matches(p, b"mail.contoso.com"));
        assert!(tls_name_matches(p, b"MAIL.Contoso.COM"));
        assert!(tls_name_matches(p, b"*.contoso.com"));
        assert!(!tls_name_matches(p, b"contoso.com"));
        assert!(!tls_name_matches(p, b".contoso.com"));
        assert!(!tls_name_matches(p, b"a.b.contoso.com"));
        assert!(!tls_name_matches(p, b"mailcontoso.com"));
        assert!(!tls_name_matches(p, b"mail.contoso.com.evil.org"));
        assert!(!tls_name_matches(p, b"x*.contoso.com"));
        assert!(tls_name_matches(b"mail.contoso.com", b"Mail.contoso.com"));
        assert!(!tls_name_matches(
            b"mail.contoso.com",
            b"x.mail.contoso.com"
        ));
        assert!(!tls_name_matches(b"*contoso.com", b"xcontoso.com"));
    }

    #[test]
    fn address_patterns() {
        assert!(addr_matches(
            b"*@sales.contoso.com",
            b"anyone",
            b"SALES.contoso.com"
        ));
        assert!(addr_matches(b"Jaap@contoso.com", b"jaap", b"contoso.com"));
        assert!(!addr_matches(
            b"jaap@contoso.com",
            b"jaap",
            b"eu.contoso.com"
        ));
        assert!(!addr_matches(b"*@contoso.com", b"x", b"sub.contoso.com"));
    }

    #[test]
    fn filter_patterns() {
        assert!(filter_matches(b"Jaap@contoso.com", b"jaap@CONTOSO.com"));
        assert!(!filter_matches(b"jaap@contoso.com", b"jan@contoso.com"));
        assert!(filter_matches(b"contoso.com", b"anyone@Contoso.com"));
        assert!(filter_matches(b"*@contoso.com", b"anyone@contoso.com"));
        assert!(!filter_matches(b"contoso.com", b"anyone@eu.contoso.com"));
        assert!(filter_matches(b"*.contoso.com", b"x@eu.contoso.com"));
        assert!(!filter_matches(b"*.contoso.com", b"x@contoso.com"));
        assert!(!filter_matches(b"contoso.com", b""));
        assert!(!filter_matches(b"*.contoso.com", b"postmaster"));
        assert!(!filter_matches(b"x.com", b"postmaster"));
    }

    #[test]
    fn subdomains_are_strict() {
        assert!(is_subdomain(b"a.Contoso.com", b"contoso.com"));
        assert!(is_subdomain(b"a.b.contoso.com", b"contoso.com"));
        assert!(!is_subdomain(b"contoso.com", b"contoso.com"));
        assert!(!is_subdomain(b"xcontoso.com", b"contoso.com"));
        assert!(!is_subdomain(b".contoso.com", b"contoso.com"));
    }

    #[test]
    fn paths_and_mailboxes() {
        assert_eq!(parse_path(b"<a@b> SIZE=1", false), Some(((1, 4), 5)));
        assert_eq!(parse_path(b"<@r1,@r2:a@b>", false), Some(((9, 12), 13)));
        assert_eq!(parse_path(b"<>", true), Some(((1, 1), 2)));
        assert!(parse_path(b"<>", false).is_none());
        assert!(parse_path(b"a@b", false).is_none());
        assert!(parse_path(b"<a@b>x", false).is_none());
        assert_eq!(parse_path(b"<\"a>b\"@c>", false), Some(((1, 8), 9)));
        assert!(valid_address(b"", false));
        assert!(!valid_address(b"", true));
        assert!(valid_address(b"Postmaster", true));
        assert!(!valid_address(b"postmaster", false));
        assert!(valid_address(b"a@[192.0.2.1]", true));
        assert!(!valid_address(b"a b@c", true));
        assert!(!valid_address(b"a@.c", true));
        assert!(!valid_address(b"a@c..d", true));
        assert_eq!(domain_of(b"a@b@c.d"), b"c.d");
        assert_eq!(local_of(b"a@b@c.d"), b"a@b");
        assert_eq!(local_of(b"postmaster"), b"postmaster");
        assert!(is_addr_byte(b'.') && !is_addr_byte(b'<'));
    }

    #[test]
    fn address_octets_stop_at_white_space_brackets_quotes_and_separators() {
        for b in 0..=255u8 {
            let delimiter = b.is_ascii_whitespace() || b"<>,;:\"()[]".contains(&b);
            assert_eq!(is_addr_byte(b), !delimiter, "octet {b:#04x}");
        }
    }
}
