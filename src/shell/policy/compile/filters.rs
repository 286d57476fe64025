//! `[recipient_filter]` and `[sender_filter]`: the Edge protection
//! agents' settings, checked into the model (emitted by
//! [`emit_filters`](super::emit::emit_filters)).
//!
//! Patterns of `valid` / `blocked` (both sections): `user@domain` (that
//! address), `domain` or `*@domain` (every address at exactly that
//! domain), `*.domain` (every address at a strict subdomain), ASCII case
//! ignored; see [`crate::engine::addr::filter_matches`].

use super::cx::{get_bool, get_int, get_str, get_strs, get_table, type_err, Cx, Fields, Val};
use super::model::Model;
use super::syntax::{address, domain};
use crate::engine::limits::{MAX_CALL_AHEAD_TIMEOUT, MAX_ERRORS, MAX_TARPIT_MS};
use toml::de::DeValue;

/// `call_ahead_timeout` when not given, seconds.
pub(super) const DEFAULT_CALL_AHEAD_TIMEOUT: u16 = 10;
/// `call_ahead_valid_ttl` when not given, seconds (a day: people rarely
/// disappear within one).
pub(super) const DEFAULT_VALID_TTL: u32 = 24 * 3600;
/// `call_ahead_unknown_ttl` when not given, seconds (an hour: a new
/// mailbox becomes reachable soon after it is made).
pub(super) const DEFAULT_UNKNOWN_TTL: u32 = 3600;

/// `[recipient_filter]` as given.
#[derive(Debug, Default, Clone)]
pub(super) struct RecipientFilterM {
    /// `valid` patterns.
    pub(super) valid: Vec<String>,
    /// `blocked` patterns.
    pub(super) blocked: Vec<String>,
    /// `directory`.
    pub(super) directory: bool,
    /// `call_ahead`: a send connector by index.
    pub(super) call_ahead: Option<u16>,
    /// `tarpit`, milliseconds.
    pub(super) tarpit_ms: u32,
    /// `max_unknown` (0: none).
    pub(super) max_unknown: u16,
    /// `call_ahead_timeout`, seconds.
    pub(super) timeout: u16,
    /// `call_ahead_valid_ttl`, seconds.
    pub(super) valid_ttl: u32,
    /// `call_ahead_unknown_ttl`, seconds.
    pub(super) unknown_ttl: u32,
    /// Where the section is (for its strings).
    pub(super) at: usize,
}

/// `[sender_filter]` as given.
#[derive(Debug, Default, Clone)]
pub(super) struct SenderFilterM {
    /// `blocked` patterns.
    pub(super) blocked: Vec<String>,
    /// `action = "stamp"`.
    pub(super) stamp: bool,
    /// `blank_sender = "reject"`.
    pub(super) reject_blank: bool,
    /// Where the section is.
    pub(super) at: usize,
}

/// The keys of `[recipient_filter]`.
const RECIPIENT_KEYS: &[&str] = &[
    "valid",
    "blocked",
    "directory",
    "call_ahead",
    "tarpit",
    "max_unknown",
    "call_ahead_timeout",
    "call_ahead_valid_ttl",
    "call_ahead_unknown_ttl",
];

/// A filter pattern: `user@domain`, `*@domain`, `domain` or `*.domain`,
/// normalised (domain lowercased).
pub(super) fn filter_pattern(s: &str) -> Result<String, String> {
    let why = "expected user@domain, domain or *.domain";
    if let Some(parent) = s.strip_prefix("*.") {
        return domain(parent)
            .map(|d| format!("*.{d}"))
            .map_err(|e| format!("bad pattern \"{s}\": {e} ({why})"));
    }
    if s.contains('@') {
        return address(s, true).map_err(|e| format!("{e} ({why})"));
    }
    domain(s).map_err(|e| format!("bad pattern \"{s}\": {e} ({why})"))
}

/// A list of filter patterns; a pattern listed twice is a warning.
fn patterns(cx: &mut Cx<'_>, v: &Val<'_>, key: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in get_strs(cx, v, key) {
        match filter_pattern(&s.v) {
            Ok(p) if out.contains(&p) => cx.warn(s.at(), format!("\"{p}\" is listed twice")),
            Ok(p) => out.push(p),
            Err(e) => cx.err(s.at(), e),
        }
    }
    out
}

/// A duration such as "2s", "500ms", "5m", "1h", "2d" in milliseconds,
/// at most `max_ms`.
fn duration_ms(cx: &mut Cx<'_>, v: &Val<'_>, key: &str, max_ms: u64) -> Option<u64> {
    let DeValue::String(s) = v.get_ref() else {
        type_err(cx, v, key, "a duration such as \"2s\"");
        return None;
    };
    let ms = match s.trim().strip_suffix("ms") {
        Some(n) if !n.is_empty() && n.trim().bytes().all(|b| b.is_ascii_digit()) => {
            n.trim().parse::<u64>().ok()
        }
        Some(_) => None,
        None => {
            crate::shell::config::parse_duration(s).and_then(|d| u64::try_from(d.as_millis()).ok())
        }
    };
    match ms {
        Some(n) if n <= max_ms => Some(n),
        Some(_) => {
            cx.err(
                v.span().start,
                format!(
                    "{key} = {s:?} is longer than the most allowed ({} s)",
                    max_ms / 1000
                ),
            );
            None
        }
        None => {
            cx.err(
                v.span().start,
                format!("{key} = {s:?}: expected a duration such as \"500ms\", \"2s\", \"5m\", \"1h\", \"2d\""),
            );
            None
        }
    }
}

/// `[recipient_filter]`: valid and blocked recipients, the directory,
/// call-ahead through a named send connector, tarpit and harvest limit.
pub(super) fn parse_recipient_filter(cx: &mut Cx<'_>, m: &mut Model, v: &Val<'_>) {
    let Some(t) = get_table(cx, v, "recipient_filter") else {
        return;
    };
    let f = Fields::new(cx, t, RECIPIENT_KEYS, "[recipient_filter]");
    let mut r = RecipientFilterM {
        timeout: DEFAULT_CALL_AHEAD_TIMEOUT,
        valid_ttl: DEFAULT_VALID_TTL,
        unknown_ttl: DEFAULT_UNKNOWN_TTL,
        at: v.span().start,
        ..RecipientFilterM::default()
    };
    if let Some(v) = f.get("valid") {
        r.valid = patterns(cx, v, "valid");
    }
    if let Some(v) = f.get("blocked") {
        r.blocked = patterns(cx, v, "blocked");
    }
    if let Some(b) = f
        .get("directory")
        .and_then(|v| get_bool(cx, v, "directory"))
    {
        r.directory = b;
    }
    call_ahead(cx, m, &f, &mut r);
    if let Some(ms) = f
        .get("tarpit")
        .and_then(|v| duration_ms(cx, v, "tarpit", u64::from(MAX_TARPIT_MS)))
    {
        r.tarpit_ms = ms as u32;
    }
    if let Some(n) = f
        .get("max_unknown")
        // Below the session's error limit: each unknown recipient is a 5xx
        // error, and at MAX_ERRORS the receiver closes first.
        .and_then(|v| get_int(cx, v, "max_unknown", 0, i64::from(MAX_ERRORS) - 1))
    {
        r.max_unknown = n as u16;
    }
    m.recipient_filter = r;
}

/// `call_ahead` (a connector of the rule file) and its timeout and cache
/// TTLs; the latter only warn without it.
fn call_ahead(cx: &mut Cx<'_>, m: &Model, f: &Fields<'_, '_>, r: &mut RecipientFilterM) {
    if let Some(s) = f
        .get("call_ahead")
        .and_then(|v| get_str(cx, v, "call_ahead"))
    {
        match m.connectors.iter().position(|c| c.name.v == s.v) {
            // Without smart hosts the probe would follow the accepted
            // domain's MX, which is usually this box: it would ask itself.
            Some(i) if m.connectors[i].smart_hosts.is_empty() => cx.err(
                s.at(),
                format!(
                    "call_ahead: connector {:?} has no smart_hosts; call-ahead asks a connector's smart hosts (an accepted domain's MX is usually this relay)",
                    s.v
                ),
            ),
            Some(i) => r.call_ahead = Some(i as u16),
            None => cx.err(
                s.at(),
                super::model::unknown_name(
                    "connector",
                    &s.v,
                    m.connectors.iter().map(|c| &c.name.v),
                ),
            ),
        }
    }
    let secs = |ms: u64| (ms / 1000) as u32;
    if let Some(ms) = f.get("call_ahead_timeout").and_then(|v| {
        duration_ms(
            cx,
            v,
            "call_ahead_timeout",
            u64::from(MAX_CALL_AHEAD_TIMEOUT) * 1000,
        )
    }) {
        r.timeout = secs(ms).max(1) as u16;
    }
    let year = 366 * 86_400 * 1000;
    if let Some(ms) = f
        .get("call_ahead_valid_ttl")
        .and_then(|v| duration_ms(cx, v, "call_ahead_valid_ttl", year))
    {
        r.valid_ttl = secs(ms);
    }
    if let Some(ms) = f
        .get("call_ahead_unknown_ttl")
        .and_then(|v| duration_ms(cx, v, "call_ahead_unknown_ttl", year))
    {
        r.unknown_ttl = secs(ms);
    }
    if r.call_ahead.is_none() {
        for k in [
            "call_ahead_timeout",
            "call_ahead_valid_ttl",
            "call_ahead_unknown_ttl",
        ] {
            if let Some(at) = f.key_at(k) {
                cx.warn(at, format!("{k} has no effect without call_ahead"));
            }
        }
    }
}

/// `[sender_filter]`: blocked senders, the action, blank senders.
pub(super) fn parse_sender_filter(cx: &mut Cx<'_>, m: &mut Model, v: &Val<'_>) {
    let Some(t) = get_table(cx, v, "sender_filter") else {
        return;
    };
    let f = Fields::new(
        cx,
        t,
        &["blocked", "action", "blank_sender"],
        "[sender_filter]",
    );
    let mut s = SenderFilterM {
        at: v.span().start,
        ..SenderFilterM::default()
    };
    if let Some(v) = f.get("blocked") {
        s.blocked = patterns(cx, v, "blocked");
    }
    if let Some(a) = f.get("action").and_then(|v| get_str(cx, v, "action")) {
        match a.v.as_str() {
            "reject" => s.stamp = false,
            "stamp" => s.stamp = true,
            o => cx.err(
                a.at(),
                format!("bad action \"{o}\": expected \"reject\" or \"stamp\""),
            ),
        }
    }
    if let Some(b) = f
        .get("blank_sender")
        .and_then(|v| get_str(cx, v, "blank_sender"))
    {
        match b.v.as_str() {
            "accept" => s.reject_blank = false,
            "reject" => s.reject_blank = true,
            o => cx.err(
                b.at(),
                format!("bad blank_sender \"{o}\": expected \"accept\" or \"reject\""),
            ),
        }
    }
    m.sender_filter = s;
}
