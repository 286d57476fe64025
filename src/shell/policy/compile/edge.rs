//! The Edge agents' sections of the rule file that this file owns:
//! `[connection_filter]` (networks, DNS block and allow lists, rate
//! limits) and `[protocol_analysis]`, parsed into [`EdgeM`] and emitted
//! into the engine's [`Table`].
//!
//! ```toml
//! [connection_filter]
//! blocked_networks = ["198.51.100.0/24"]
//! allowed_networks = ["192.0.2.0/24"]
//! block_lists = [
//!   { zone = "zen.example", codes = ["127.0.0.2", "127.0.0.4"],
//!     reply = "{client} is listed by {zone}" },
//!   { zone = "bits.example", mask = "0x04" },
//! ]
//! allow_lists = [{ zone = "wl.example" }]
//! rate_limits = { connections_per_minute = 60, messages_per_minute = 120 }
//!
//! [protocol_analysis]
//! enabled = true
//! threshold = 20
//! block_for = "1h"
//! ```

use super::cx::{get_bool, get_int, get_str, get_strs, get_table, get_tables, Cx, Fields, Val};
use super::emit::Builder;
use super::model::nets;
use super::syntax::domain;
use crate::engine::dnsbl::Codes;
use crate::engine::limits::{MAX_DNS_LISTS, MAX_DNS_NAME, MAX_LIST_CODES};
use crate::engine::policy::{DnsList, Net, RateLimits, Reputation};
use toml::de::DeValue;

/// A block list's reply text when `reply` is not given (Postfix's words).
pub(super) const DEFAULT_LIST_REPLY: &str =
    "Service unavailable; client [{client}] blocked using {zone}";

/// `[protocol_analysis] threshold` when not given.
pub(super) const DEFAULT_THRESHOLD: u32 = 20;

/// `[protocol_analysis] block_for` when not given, seconds (one hour).
pub(super) const DEFAULT_BLOCK_FOR: u32 = 3600;

/// Longest `block_for`: 30 days.
const MAX_BLOCK_FOR: u64 = 30 * 86_400;

/// Longest reply text: a reply line must stay under 512 octets with its
/// code, enhanced code and a 39-character IPv6 address.
const MAX_REPLY_TEXT: usize = 400;

/// A DNS list as the rule file gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ListM {
    /// The zone, lower case, no final dot.
    pub(super) zone: String,
    /// An allow list.
    pub(super) allow: bool,
    /// Which answers count.
    pub(super) codes: Codes,
    /// The reply text (block lists).
    pub(super) reply: String,
    /// Where the entry is.
    pub(super) at: usize,
}

/// The Edge sections' model.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(super) struct EdgeM {
    /// `allowed_networks`.
    pub(super) allowed: Vec<Net>,
    /// `block_lists` then `allow_lists`, each in file order.
    pub(super) lists: Vec<ListM>,
    /// `rate_limits`.
    pub(super) rate: RateLimits,
    /// `[protocol_analysis]`; off when the section is absent.
    pub(super) reputation: Reputation,
    /// `[authentication]`; off when the section is absent.
    pub(super) auth: AuthM,
}

/// `[authentication]` as given.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(super) struct AuthM {
    /// The section is present.
    pub(super) on: bool,
    /// `honor_reject` (default true).
    pub(super) honor_reject: bool,
    /// `quarantine = "route_to DOMAIN"`: the domain and its offset.
    pub(super) route: Option<(String, usize)>,
    /// `trusted_arc_sealers`: domains, and where the list is.
    pub(super) sealers: Vec<String>,
    pub(super) sealers_at: usize,
}

/// `[authentication]`: the section turns sender authentication on for
/// non-originating mail.
pub(super) fn parse_authentication(cx: &mut Cx<'_>, edge: &mut EdgeM, v: &Val<'_>) {
    let Some(t) = get_table(cx, v, "authentication") else {
        return;
    };
    let f = Fields::new(
        cx,
        t,
        &["honor_reject", "quarantine", "trusted_arc_sealers"],
        "[authentication]",
    );
    let a = &mut edge.auth;
    a.on = true;
    a.honor_reject = f
        .get("honor_reject")
        .and_then(|v| get_bool(cx, v, "honor_reject"))
        .unwrap_or(true);
    if let Some(s) = f
        .get("quarantine")
        .and_then(|v| get_str(cx, v, "quarantine"))
    {
        match s.v.strip_prefix("route_to ").map(str::trim) {
            _ if s.v == "stamp" => {}
            Some(d) => match domain(d) {
                Ok(d) => a.route = Some((d, s.at())),
                Err(e) => cx.err(s.at(), format!("quarantine = {:?}: {e}", s.v)),
            },
            None => cx.err(
                s.at(),
                format!("quarantine = {:?}: \"stamp\" or \"route_to DOMAIN\"", s.v),
            ),
        }
    }
    if let Some(v) = f.get("trusted_arc_sealers") {
        a.sealers_at = v.span().start;
        for s in get_strs(cx, v, "trusted_arc_sealers") {
            match domain(&s.v) {
                Ok(d) => a.sealers.push(d),
                Err(e) => cx.err(s.at(), e),
            }
        }
    }
}

/// The keys of `[connection_filter]`.
const FILTER_KEYS: &[&str] = &[
    "blocked_networks",
    "allowed_networks",
    "block_lists",
    "allow_lists",
    "rate_limits",
];

/// `[connection_filter]`: blocked networks into `blocked`, the rest into
/// `edge`.
pub(super) fn parse_connection_filter(
    cx: &mut Cx<'_>,
    blocked: &mut Vec<Net>,
    edge: &mut EdgeM,
    v: &Val<'_>,
) {
    let Some(t) = get_table(cx, v, "connection_filter") else {
        return;
    };
    let f = Fields::new(cx, t, FILTER_KEYS, "[connection_filter]");
    if let Some(v) = f.get("blocked_networks") {
        *blocked = nets(cx, v, "blocked_networks");
    }
    if let Some(v) = f.get("allowed_networks") {
        edge.allowed = nets(cx, v, "allowed_networks");
    }
    for (key, allow) in [("block_lists", false), ("allow_lists", true)] {
        if let Some(v) = f.get(key) {
            for (t, at) in get_tables(cx, v, key) {
                let f = Fields::new(cx, t, list_keys(allow), &format!("{key} entry"));
                if let Some(l) = parse_list(cx, &f, at, allow) {
                    add_list(cx, edge, l);
                }
            }
        }
    }
    if let Some(v) = f.get("rate_limits") {
        edge.rate = parse_rates(cx, v);
    }
}

/// The keys of a list entry: an allow list has no reply.
fn list_keys(allow: bool) -> &'static [&'static str] {
    if allow {
        &["zone", "codes", "mask"]
    } else {
        &["zone", "codes", "mask", "reply"]
    }
}

/// Adds a list, refusing a zone given twice and more than the capacity.
fn add_list(cx: &mut Cx<'_>, edge: &mut EdgeM, l: ListM) {
    if let Some(prev) = edge.lists.iter().find(|p| p.zone == l.zone) {
        let line = cx.line_of(prev.at);
        cx.err(
            l.at,
            format!(
                "DNS list \"{}\" is listed twice (first on line {line})",
                l.zone
            ),
        );
    } else if edge.lists.len() >= MAX_DNS_LISTS {
        cx.err(
            l.at,
            format!(
                "too many DNS lists ({} > {MAX_DNS_LISTS}, MAX_DNS_LISTS)",
                edge.lists.len() + 1
            ),
        );
    } else {
        edge.lists.push(l);
    }
}

/// One `{ zone, codes | mask, reply }`.
fn parse_list(cx: &mut Cx<'_>, f: &Fields<'_, '_>, at: usize, allow: bool) -> Option<ListM> {
    let Some(zv) = f.get("zone") else {
        cx.err(at, "a DNS list needs a zone (zone = \"list.example\")");
        return None;
    };
    let z = get_str(cx, zv, "zone")?;
    let zone = match domain(&z.v) {
        // An IPv6 query name takes 64 characters before the zone.
        Ok(d) if d.len() + 64 > MAX_DNS_NAME => {
            cx.err(
                z.at(),
                format!(
                    "zone \"{d}\" is too long for IPv6 queries (at most {} characters)",
                    MAX_DNS_NAME - 64
                ),
            );
            return None;
        }
        Ok(d) => d,
        Err(e) => {
            cx.err(z.at(), e);
            return None;
        }
    };
    let codes = parse_codes(cx, f)?;
    let reply = match f.get("reply") {
        Some(v) => {
            let s = get_str(cx, v, "reply")?;
            if let Err(e) = reply_text(&s.v) {
                cx.err(s.at(), e);
                return None;
            }
            s.v
        }
        None if allow => String::new(),
        None => DEFAULT_LIST_REPLY.to_string(),
    };
    Some(ListM {
        zone,
        allow,
        codes,
        reply,
        at,
    })
}

/// `codes = ["127.0.0.2", ...]` or `mask = "0x04"` (or an integer); both
/// absent: any answer in 127.0.0.0/8.
fn parse_codes(cx: &mut Cx<'_>, f: &Fields<'_, '_>) -> Option<Codes> {
    match (f.get("codes"), f.get("mask")) {
        (Some(_), Some(m)) => {
            cx.err(m.span().start, "give either codes or mask, not both");
            None
        }
        (Some(v), None) => {
            let mut addrs = [[0u8; 4]; MAX_LIST_CODES];
            let list = get_strs(cx, v, "codes");
            if list.len() > MAX_LIST_CODES {
                cx.err(
                    v.span().start,
                    format!(
                        "too many codes ({} > {MAX_LIST_CODES}, MAX_LIST_CODES)",
                        list.len()
                    ),
                );
                return None;
            }
            for (slot, s) in addrs.iter_mut().zip(&list) {
                match s.v.parse::<std::net::Ipv4Addr>() {
                    Ok(ip) if ip.octets()[0] == 127 => *slot = ip.octets(),
                    _ => {
                        cx.err(
                            s.at(),
                            format!("code \"{}\" must be an IPv4 address in 127.0.0.0/8", s.v),
                        );
                        return None;
                    }
                }
            }
            if list.is_empty() {
                cx.err(v.span().start, "codes is empty: no answer would count");
                return None;
            }
            Some(Codes::Listed {
                count: list.len() as u8,
                addrs,
            })
        }
        (None, Some(v)) => parse_mask(cx, v).map(Codes::Mask),
        (None, None) => Some(Codes::Any),
    }
}

/// `mask = "0x04"`, `"4"` or `4`: 1 to 255, matched against the answer's
/// last octet.
fn parse_mask(cx: &mut Cx<'_>, v: &Val<'_>) -> Option<u8> {
    let n = match v.get_ref() {
        DeValue::Integer(_) => get_int(cx, v, "mask", 1, 255)?,
        DeValue::String(s) => {
            let t = s.trim();
            let parsed = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
                Some(h) => i64::from_str_radix(h, 16).ok(),
                None => t.parse().ok(),
            };
            match parsed.filter(|n| (1..=255).contains(n)) {
                Some(n) => n,
                None => {
                    cx.err(
                        v.span().start,
                        format!("mask = {s:?}: expected 1 to 255, e.g. \"0x04\""),
                    );
                    return None;
                }
            }
        }
        _ => {
            super::cx::type_err(cx, v, "mask", "a number such as \"0x04\"");
            return None;
        }
    };
    u8::try_from(n).ok()
}

/// A reply text: printable ASCII, not too long, placeholders `{client}`
/// and `{zone}` only.
pub(super) fn reply_text(s: &str) -> Result<(), String> {
    if s.trim().is_empty() {
        return Err("reply is empty".into());
    }
    if s.len() > MAX_REPLY_TEXT {
        return Err(format!("reply is longer than {MAX_REPLY_TEXT} characters"));
    }
    if !s.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err("reply must be printable ASCII on one line".into());
    }
    let mut rest = s;
    while let Some(open) = rest.find('{') {
        let tail = &rest[open..];
        let close = tail.find('}').ok_or("reply has a \"{\" without \"}\"")?;
        let name = &tail[1..close];
        if name != "client" && name != "zone" {
            return Err(format!(
                "reply has an unknown placeholder {{{name}}} (known: {{client}}, {{zone}})"
            ));
        }
        rest = &tail[close + 1..];
    }
    Ok(())
}

/// `rate_limits = { connections_per_minute = N, messages_per_minute = N }`.
fn parse_rates(cx: &mut Cx<'_>, v: &Val<'_>) -> RateLimits {
    let mut r = RateLimits::default();
    let Some(t) = get_table(cx, v, "rate_limits") else {
        return r;
    };
    let f = Fields::new(
        cx,
        t,
        &["connections_per_minute", "messages_per_minute"],
        "rate_limits",
    );
    let max = 1_000_000;
    if let Some(v) = f.get("connections_per_minute") {
        r.connections_per_minute =
            get_int(cx, v, "connections_per_minute", 1, max).map_or(0, |n| n as u32);
    }
    if let Some(v) = f.get("messages_per_minute") {
        r.messages_per_minute =
            get_int(cx, v, "messages_per_minute", 1, max).map_or(0, |n| n as u32);
    }
    r
}

/// `[protocol_analysis]`: the section turns it on (`enabled` defaults to
/// true in it).
pub(super) fn parse_protocol_analysis(cx: &mut Cx<'_>, edge: &mut EdgeM, v: &Val<'_>) {
    let Some(t) = get_table(cx, v, "protocol_analysis") else {
        return;
    };
    let f = Fields::new(
        cx,
        t,
        &["enabled", "threshold", "block_for"],
        "[protocol_analysis]",
    );
    let r = &mut edge.reputation;
    r.enabled = f
        .get("enabled")
        .and_then(|v| get_bool(cx, v, "enabled"))
        .unwrap_or(true);
    r.threshold = f
        .get("threshold")
        .and_then(|v| get_int(cx, v, "threshold", 1, 100_000))
        .map_or(DEFAULT_THRESHOLD, |n| n as u32);
    r.block_for = DEFAULT_BLOCK_FOR;
    if let Some(v) = f.get("block_for") {
        if let Some(s) = get_str(cx, v, "block_for") {
            match crate::shell::config::parse_duration(&s.v).map(|d| d.as_secs()) {
                Some(n) if (1..=MAX_BLOCK_FOR).contains(&n) => r.block_for = n as u32,
                _ => cx.err(
                    s.at(),
                    format!(
                        "block_for = {:?}: expected a duration from \"1s\" to \"30d\", e.g. \"1h\"",
                        s.v
                    ),
                ),
            }
        }
    }
}

/// Emits the Edge sections into the table.
pub(super) fn emit_edge(b: &mut Builder, edge: &EdgeM) {
    b.t.allowed = b.nets(&edge.allowed, 0);
    for l in &edge.lists {
        let list = DnsList {
            zone: b.s(&l.zone, l.at),
            allow: l.allow,
            codes: l.codes,
            reply: b.s(&l.reply, l.at),
        };
        // add_list kept the count within the capacity.
        let _ = b.t.dns_lists.push(list);
    }
    b.t.rate_limits = edge.rate;
    b.t.reputation = edge.reputation;
    let a = &edge.auth;
    b.t.authentication.enabled = a.on;
    b.t.authentication.honor_reject = !a.on || a.honor_reject;
    b.t.authentication.quarantine_route = a.route.as_ref().map(|(d, at)| b.s(d, *at));
    b.t.authentication.trusted_sealers = b.list(&a.sealers, a.sealers_at);
}

#[cfg(test)]
mod tests {
    use super::super::{compile, Diag};
    use super::reply_text;
    use crate::engine::dnsbl::Codes;
    use crate::engine::policy::{allowed_network, Table};

    fn table(text: &str) -> Box<Table> {
        match compile(text) {
            Ok(c) => {
                assert!(c.warnings.is_empty(), "{:?}", c.warnings);
                c.table
            }
            Err(e) => panic!("{e:#?}"),
        }
    }

    fn err(text: &str) -> Diag {
        match compile(text) {
            Ok(_) => panic!("expected an error for {text:?}"),
            Err(mut e) => e.remove(0),
        }
    }

    fn ip(s: &str) -> [u8; 16] {
        match s.parse::<std::net::IpAddr>().unwrap() {
            std::net::IpAddr::V4(v) => v.to_ipv6_mapped().octets(),
            std::net::IpAddr::V6(v) => v.octets(),
        }
    }

    #[test]
    fn every_key_compiles_into_the_table() {
        let t = table(concat!(
            "[connection_filter]\n",
            "allowed_networks = [\"192.0.2.0/24\"]\n",
            "block_lists = [\n",
            "  { zone = \"BL.test\", codes = [\"127.0.0.2\", \"127.0.0.4\"], reply = \"{client} in {zone}\" },\n",
            "  { zone = \"bits.test\", mask = \"0x04\" },\n",
            "]\n",
            "allow_lists = [{ zone = \"wl.test\" }]\n",
            "rate_limits = { connections_per_minute = 30, messages_per_minute = 60 }\n",
            "[protocol_analysis]\nthreshold = 7\nblock_for = \"2h\"\n",
        ));
        assert!(allowed_network(&t, &ip("192.0.2.9")));
        assert!(!allowed_network(&t, &ip("192.0.3.9")));
        assert_eq!(t.dns_lists.len(), 3);
        let l = t.dns_lists[0];
        assert_eq!(t.str(l.zone), b"bl.test");
        assert!(!l.allow);
        assert_eq!(t.str(l.reply), b"{client} in {zone}");
        assert!(matches!(l.codes, Codes::Listed { count: 2, addrs } if addrs[1] == [127, 0, 0, 4]));
        assert_eq!(t.dns_lists[1].codes, Codes::Mask(4));
        assert!(t
            .str(t.dns_lists[1].reply)
            .starts_with(b"Service unavailable"));
        assert!(t.dns_lists[2].allow);
        assert_eq!(t.dns_lists[2].codes, Codes::Any);
        assert_eq!(t.rate_limits.connections_per_minute, 30);
        assert_eq!(t.rate_limits.messages_per_minute, 60);
        assert!(t.reputation.enabled);
        assert_eq!(t.reputation.threshold, 7);
        assert_eq!(t.reputation.block_for, 7200);
    }

    #[test]
    fn defaults_without_the_sections() {
        let t = table("");
        assert!(t.dns_lists.is_empty());
        assert_eq!(t.rate_limits.connections_per_minute, 0);
        assert!(!t.reputation.enabled);
        let t = table("[protocol_analysis]\n");
        assert!(t.reputation.enabled);
        assert_eq!((t.reputation.threshold, t.reputation.block_for), (20, 3600));
        let t = table("[protocol_analysis]\nenabled = false\n");
        assert!(!t.reputation.enabled);
    }

    #[test]
    fn allowed_networks_win_over_blocked_ones() {
        let t = table(concat!(
            "[connection_filter]\nblocked_networks = [\"10.0.0.0/8\"]\n",
            "allowed_networks = [\"10.1.0.0/16\"]\n",
        ));
        let blocked = |s: &str| crate::engine::policy::attribute(&t, &ip(s), None).blocked;
        assert!(blocked("10.2.0.1"));
        assert!(!blocked("10.1.0.1"));
    }

    #[test]
    fn errors_at_line_and_column() {
        // (text, where the error points: the first occurrence of this, message)
        let cases: &[(&str, &str, &str)] = &[
            ("[connection_filter]\nblock_list = []\n", "block_list", "did you mean \"block_lists\""),
            ("[connection_filter]\nblock_lists = [{ zone = \"bl.test\", cods = [] }]\n", "cods", "unknown key \"cods\""),
            ("[connection_filter]\nblock_lists = [{ codes = [\"127.0.0.2\"] }]\n", "{ codes", "needs a zone"),
            ("[connection_filter]\nblock_lists = [{ zone = \"bad zone\" }]\n", "\"bad zone", "bad zone"),
            ("[connection_filter]\nblock_lists = [{ zone = \"bl.test\", codes = [\"10.0.0.2\"] }]\n", "\"10.0", "127.0.0.0/8"),
            ("[connection_filter]\nblock_lists = [{ zone = \"bl.test\", mask = \"0x100\" }]\n", "\"0x100", "1 to 255"),
            ("[connection_filter]\nblock_lists = [{ zone = \"bl.test\", mask = 4, codes = [\"127.0.0.2\"] }]\n", "4,", "not both"),
            ("[connection_filter]\nblock_lists = [{ zone = \"bl.test\", reply = \"{ip}\" }]\n", "\"{ip}", "unknown placeholder"),
            ("[connection_filter]\nallow_lists = [{ zone = \"wl.test\", reply = \"x\" }]\n", "reply", "unknown key \"reply\""),
            ("[connection_filter]\nblock_lists = [{ zone = \"a.test\" }, { zone = \"a.test\" }]\n", "{ zone = \"a.test\" }]", "listed twice"),
            ("[connection_filter]\nrate_limits = { connections_per_minute = 0 }\n", "0 }", "out of range"),
            ("[connection_filter]\nrate_limits = { messages = 3 }\n", "messages", "unknown key \"messages\""),
            ("[protocol_analysis]\nblock_for = \"forever\"\n", "\"forever", "block_for"),
            ("[protocol_analysis]\nthreshold = 0\n", "0", "out of range"),
            ("[protocol_analysis]\nenable = true\n", "enable", "did you mean \"enabled\""),
        ];
        for (text, needle, want) in cases {
            let at = text.find(needle).unwrap();
            let line = text[..at].matches('\n').count() + 1;
            let col = at - text[..at].rfind('\n').map_or(0, |i| i + 1) + 1;
            let d = err(text);
            assert!(
                d.line == line && d.col == col && d.message.contains(want),
                "{text:?}: want {line}:{col} {want:?}, got {d:?}"
            );
        }
    }

    #[test]
    fn too_many_lists_names_the_capacity() {
        let mut text = String::from("[connection_filter]\nblock_lists = [\n");
        for i in 0..9 {
            text.push_str(&format!("{{ zone = \"z{i}.test\" }},\n"));
        }
        text.push_str("]\n");
        assert!(err(&text).message.contains("MAX_DNS_LISTS"));
    }

    #[test]
    fn reply_placeholders() {
        assert!(reply_text("{client} listed by {zone}").is_ok());
        assert!(reply_text("no placeholder").is_ok());
        assert!(reply_text("{ip} listed").is_err());
        assert!(reply_text("open { only").is_err());
        assert!(reply_text("tab\there").is_err());
        assert!(reply_text("").is_err());
    }
}
