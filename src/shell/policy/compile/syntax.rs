//! Value syntax: each kind of string the rule file holds (domain, address,
//! network, smart host, header name and value, reject reply, pattern),
//! checked and normalised, with the error message the operator sees.

use super::cx::PatError;
use crate::engine::policy::Net;
use crate::shell::reply::OwnedReply;
use regex_automata::dfa::{dense, StartKind};
use regex_automata::nfa::thompson;
use regex_automata::util::syntax;
use std::net::{IpAddr, Ipv6Addr};

/// Size limits of one pattern's DFA while it is built (dense DFA and
/// determinization), so a pathological regex fails fast with an error.
const DFA_BUILD_LIMIT: usize = 1 << 20;

/// A domain name, lowercased: labels of letters, digits, `-` and `_`
/// (non-ASCII letters allowed for internationalised names).
pub(super) fn domain(s: &str) -> Result<String, String> {
    let bad = |why: &str| Err(format!("bad domain \"{s}\": {why}"));
    if s.is_empty() {
        return bad("empty");
    }
    if s.len() > 253 {
        return bad("longer than 253 octets");
    }
    if s.ends_with('.') {
        return bad("no trailing dot, please");
    }
    for label in s.split('.') {
        if label.is_empty() {
            return bad("empty label");
        }
        if label.len() > 63 {
            return bad("a label is longer than 63 octets");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return bad("a label starts or ends with '-'");
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_alphanumeric() || *c == '-' || *c == '_'))
        {
            return bad(&format!("character {c:?} is not allowed"));
        }
    }
    Ok(s.to_ascii_lowercase())
}

/// An address pattern: `local@domain`, or `*@domain` when `star`; the
/// domain is lowercased.
pub(super) fn address(s: &str, star: bool) -> Result<String, String> {
    let want = if star {
        "expected local@domain or *@domain"
    } else {
        "expected an address local@domain"
    };
    let Some((local, dom)) = s.rsplit_once('@') else {
        return Err(format!("bad address \"{s}\": {want}"));
    };
    if local.is_empty() {
        return Err(format!("bad address \"{s}\": empty local part ({want})"));
    }
    if local == "*" && !star {
        return Err(format!("bad address \"{s}\": {want}"));
    }
    if local.len() > 64 {
        return Err(format!(
            "bad address \"{s}\": the local part is longer than 64 octets"
        ));
    }
    if let Some(c) = local
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || "<>@,;:()[]\\\"".contains(*c))
    {
        return Err(format!(
            "bad address \"{s}\": character {c:?} is not allowed in the local part"
        ));
    }
    if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return Err(format!(
            "bad address \"{s}\": misplaced '.' in the local part"
        ));
    }
    let d = domain(dom).map_err(|e| format!("bad address \"{s}\": {e}"))?;
    Ok(format!("{local}@{d}"))
}

/// A network `a.b.c.d/n`, `x::y/n` or a bare address; IPv4 is stored
/// IPv4-mapped. The flag says host bits were set (and were cleared).
pub(super) fn network(s: &str) -> Result<(Net, bool), String> {
    let bad = |why: &str| Err(format!("bad network \"{s}\": {why}"));
    let (a, p) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let Ok(ip) = a.trim().parse::<IpAddr>() else {
        return bad("expected an IPv4 or IPv6 address, e.g. 192.0.2.0/24 or 2001:db8::/32");
    };
    let (octets, max, base) = match ip {
        IpAddr::V4(v4) => (v4.to_ipv6_mapped().octets(), 32u8, 96u8),
        IpAddr::V6(v6) => (v6.octets(), 128u8, 0u8),
    };
    let prefix = match p {
        None => max,
        Some(p) => match p.trim().parse::<u8>() {
            Ok(n) if n <= max && p.trim().bytes().all(|b| b.is_ascii_digit()) => n,
            _ => return bad(&format!("the prefix length must be 0 to {max}")),
        },
    };
    let total = base + prefix;
    let mut addr = octets;
    for (i, b) in addr.iter_mut().enumerate() {
        let bit0 = i * 8;
        let keep = usize::from(total).saturating_sub(bit0).min(8);
        let mask = if keep == 0 { 0 } else { 0xffu8 << (8 - keep) };
        *b &= mask;
    }
    Ok((
        Net {
            addr,
            prefix: total,
        },
        addr != octets,
    ))
}

/// A network as the operator writes it (IPv4 unmapped), for messages.
pub(super) fn show_net(n: &Net) -> String {
    let ip = Ipv6Addr::from(n.addr);
    match ip.to_ipv4_mapped() {
        Some(v4) if n.prefix >= 96 => format!("{v4}/{}", n.prefix - 96),
        _ => format!("{ip}/{}", n.prefix),
    }
}

/// A smart host: `host`, `host:port`, `[v6]` or `[v6]:port`.
pub(super) fn smart_host(s: &str) -> Result<String, String> {
    let bad = |why: &str| Err(format!("bad smart host \"{s}\": {why}"));
    let port_ok = |p: &str| {
        !p.is_empty()
            && p.bytes().all(|b| b.is_ascii_digit())
            && p.parse::<u16>().is_ok_and(|n| n > 0)
    };
    if let Some(rest) = s.strip_prefix('[') {
        let Some((ip, after)) = rest.split_once(']') else {
            return bad("missing ']'");
        };
        if ip.parse::<Ipv6Addr>().is_err() {
            return bad("expected an IPv6 address in brackets");
        }
        return match after {
            "" => Ok(s.to_string()),
            a => match a.strip_prefix(':') {
                Some(p) if port_ok(p) => Ok(s.to_string()),
                _ => bad("expected [address]:port with a port of 1 to 65535"),
            },
        };
    }
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (s, None),
    };
    if host.contains(':') {
        return bad("write an IPv6 address in brackets, e.g. [2001:db8::1]:25");
    }
    if let Some(p) = port {
        if !port_ok(p) {
            return bad("the port must be 1 to 65535");
        }
    }
    if host.parse::<std::net::Ipv4Addr>().is_err() {
        domain(host).map_err(|e| format!("bad smart host \"{s}\": {e}"))?;
    }
    Ok(s.to_ascii_lowercase())
}

/// A header field name (RFC 5322: printable ASCII but ':').
pub(super) fn header_name(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("empty header name".into());
    }
    if s.len() > 200 {
        return Err(format!("header name \"{s}\" is too long"));
    }
    match s.bytes().find(|b| !(33..=126).contains(b) || *b == b':') {
        Some(_) => Err(format!(
            "bad header name \"{s}\": printable ASCII without ':' or spaces"
        )),
        None => Ok(s.to_string()),
    }
}

/// A header field value: one line (no CR, LF or other control but tab).
pub(super) fn header_value(s: &str) -> Result<String, String> {
    match s.chars().find(|c| c.is_control() && *c != '\t') {
        Some(c) => Err(format!(
            "bad header value {s:?}: control character {c:?} (a value is one line)"
        )),
        None => Ok(s.to_string()),
    }
}

/// `reject`: "4xx|5xx X.Y.Z text", the class X equal to the code's first
/// digit; the reply always has its enhanced status.
pub(super) fn reject(s: &str) -> Result<OwnedReply, String> {
    let want = "expected \"4xx|5xx X.Y.Z text\", e.g. \"550 5.7.1 Refused by policy\"";
    let bad = |why: &str| Err(format!("bad reject \"{s}\": {why}; {want}"));
    let t = s.trim();
    let (code, rest) = t.split_once(' ').unwrap_or((t, ""));
    let rest = rest.trim_start();
    let (status, text) = rest.split_once(' ').unwrap_or((rest, ""));
    let text = text.trim();
    let cb = code.as_bytes();
    let code_ok = cb.len() == 3
        && matches!(cb.first(), Some(b'4' | b'5'))
        && matches!(cb.get(1), Some(b'0'..=b'5'))
        && matches!(cb.get(2), Some(b'0'..=b'9'));
    if !code_ok {
        return bad("the reply code must be 4xx or 5xx");
    }
    let n: u16 = code.parse().unwrap_or(0);
    let sp: Vec<&str> = status.split('.').collect();
    let num = |t: &str| -> Option<u16> {
        if (1..=3).contains(&t.len()) && t.bytes().all(|b| b.is_ascii_digit()) {
            t.parse().ok()
        } else {
            None
        }
    };
    let (class, subject, detail) = match sp.as_slice() {
        [c, a, b] => match (num(c), num(a), num(b)) {
            (Some(c), Some(a), Some(b)) if c < 10 => (c as u8, a, b),
            _ => return bad("the enhanced status code must be X.Y.Z"),
        },
        _ => return bad("the enhanced status code must be X.Y.Z"),
    };
    if u16::from(class) != n / 100 {
        return bad(&format!(
            "the class of {status} does not match the reply code {code}"
        ));
    }
    if text.is_empty() {
        return bad("the text is missing");
    }
    if let Some(c) = text.chars().find(|c| !(' '..='~').contains(c)) {
        return bad(&format!(
            "character {c:?} in the text (printable ASCII only)"
        ));
    }
    if text.len() > 400 {
        return bad("the text is longer than 400 octets");
    }
    Ok(OwnedReply::new(n, Some((class, subject, detail)), text))
}

/// Compiles one pattern to a sparse DFA (bytes in native endianness).
pub(super) fn build_dfa(pattern: &str) -> Result<Vec<u8>, PatError> {
    let built = dense::Builder::new()
        .configure(
            dense::Config::new()
                .start_kind(StartKind::Both)
                .dfa_size_limit(Some(DFA_BUILD_LIMIT))
                .determinize_size_limit(Some(DFA_BUILD_LIMIT)),
        )
        .syntax(syntax::Config::new())
        .thompson(thompson::Config::new().nfa_size_limit(Some(DFA_BUILD_LIMIT)))
        .build(pattern);
    let dfa = built.map_err(|e| pat_error(pattern, &e))?;
    let sparse = dfa.to_sparse().map_err(|e| PatError {
        offset: None,
        message: format!("pattern {pattern:?}: {e}"),
    })?;
    let bytes = sparse.to_bytes_native_endian();
    if regex_automata::dfa::sparse::DFA::from_bytes(&bytes).is_err() {
        return Err(PatError {
            offset: None,
            message: format!("pattern {pattern:?}: its DFA does not load back"),
        });
    }
    Ok(bytes)
}

/// The regex crate's error as one operator-facing message, with the
/// offset in the pattern when the parser names one.
fn pat_error(pattern: &str, e: &(dyn std::error::Error + 'static)) -> PatError {
    let mut deepest: &dyn std::error::Error = e;
    while let Some(s) = deepest.source() {
        deepest = s;
    }
    let top = e.to_string();
    let text = deepest.to_string();
    if top.contains("Unicode word boundar") {
        return PatError {
            offset: pattern.find("\\b").or_else(|| pattern.find("\\B")),
            message: format!(
                "pattern {pattern:?}: a Unicode word boundary (\\b) cannot be compiled to a DFA; \
                 write (?-u:\\b) for an ASCII word boundary"
            ),
        };
    }
    if top.contains("size limit") || text.contains("size limit") || text.contains("exceeded") {
        return PatError {
            offset: None,
            message: format!(
                "pattern {pattern:?} is too complex: its DFA exceeds {} KiB \
                 (large counted repetitions and Unicode classes grow it; try (?-u) ASCII classes)",
                DFA_BUILD_LIMIT / 1024
            ),
        };
    }
    if text.starts_with("regex parse error") {
        let lines: Vec<&str> = text.lines().collect();
        let msg = lines
            .iter()
            .rev()
            .find_map(|l| l.strip_prefix("error: "))
            .unwrap_or("invalid pattern");
        let offset = if pattern.contains('\n') {
            None
        } else {
            lines
                .iter()
                .find_map(|l| {
                    let t = l.strip_prefix("    ")?;
                    let t = t.trim_end();
                    (t.ends_with('^') && t.trim_start().chars().all(|c| c == '^'))
                        .then(|| t.chars().take_while(|c| *c == ' ').count())
                })
                .map(|chars| {
                    pattern
                        .char_indices()
                        .nth(chars)
                        .map_or(pattern.len(), |(i, _)| i)
                })
        };
        return PatError {
            offset,
            message: format!("bad pattern {pattern:?}: {msg}"),
        };
    }
    PatError {
        offset: None,
        message: format!("bad pattern {pattern:?}: {top}: {text}"),
    }
}
