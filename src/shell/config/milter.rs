//! `[[milter]]`: the content filters sluice talks to through the milter
//! protocol (the `content_filter` agent), checked value by value with the
//! place of each error, as the other sections are.

use super::{parse_duration, Seg, ValueError};
use crate::engine::milter::{self, Stage};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// Pooled idle connections per milter at most (`pool`): a box runs a few
/// hundred sessions at most, and a milter handles each message in well
/// under a second, so 64 idle connections cover any burst.
pub(super) const MAX_POOL: usize = 64;

/// Where a milter listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MilterAddress {
    /// `inet:host:port` (`inet:[::1]:port` for IPv6).
    Inet(String, u16),
    /// `unix:/path`.
    Unix(PathBuf),
}

impl std::fmt::Display for MilterAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MilterAddress::Inet(h, p) if h.contains(':') => write!(f, "inet:[{h}]:{p}"),
            MilterAddress::Inet(h, p) => write!(f, "inet:{h}:{p}"),
            MilterAddress::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// What a session answers when a milter is down, slow or speaks garbage
/// (Postfix's `milter_default_action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// `451 4.7.1`: the client tries again later (the default).
    Tempfail,
    /// Go on as if this milter had accepted the message.
    Accept,
    /// `550 5.7.1`.
    Reject,
}

impl OnFailure {
    /// The name as written in the config.
    pub fn name(self) -> &'static str {
        match self {
            OnFailure::Tempfail => "tempfail",
            OnFailure::Accept => "accept",
            OnFailure::Reject => "reject",
        }
    }
}

/// The macro stages as the config names them, in protocol order.
pub const MACRO_STAGES: [(&str, Stage); 7] = [
    ("connect", Stage::Connect),
    ("helo", Stage::Helo),
    ("mail", Stage::Mail),
    ("rcpt", Stage::Rcpt),
    ("data", Stage::Data),
    ("eoh", Stage::EndOfHeaders),
    ("eom", Stage::EndOfMessage),
];

/// One checked `[[milter]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct MilterConfig {
    /// Its name (logs, counters, the REJECT line, rule-file references).
    pub name: String,
    /// Where it listens.
    pub address: MilterAddress,
    /// What happens when it fails.
    pub on_failure: OnFailure,
    /// Connecting (and negotiating) may take this long.
    pub connect_timeout: Duration,
    /// Each event's answer may take this long.
    pub command_timeout: Duration,
    /// The answer to end of message (the milter's scan) may take this long.
    pub eom_timeout: Duration,
    /// The protocol version offered (2 to 6).
    pub protocol: u32,
    /// Macro names per stage ([`MACRO_STAGES`] order): Postfix's defaults
    /// unless overridden.
    pub macros: Vec<Vec<String>>,
    /// Also filter mail from originating sessions (signing milters).
    pub originating: bool,
    /// Idle connections kept for the next message, at most.
    pub pool: usize,
}

/// `[[milter]]` as written.
#[derive(Deserialize)]
pub(super) struct RawMilter {
    name: String,
    address: String,
    on_failure: Option<String>,
    connect_timeout: Option<String>,
    command_timeout: Option<String>,
    eom_timeout: Option<String>,
    protocol: Option<u32>,
    macros: Option<BTreeMap<String, Vec<String>>>,
    originating: Option<bool>,
    pool: Option<usize>,
}

/// Checks every `[[milter]]`; names are unique.
pub(super) fn milters(raw: Option<Vec<RawMilter>>) -> Result<Vec<MilterConfig>, ValueError> {
    let mut out: Vec<MilterConfig> = Vec::new();
    for (i, m) in raw.into_iter().flatten().enumerate() {
        let c = one(i, m)?;
        if out.iter().any(|o| o.name == c.name) {
            return Err(at(
                i,
                "name",
                format!("milter {:?} is defined twice", c.name),
            ));
        }
        out.push(c);
    }
    Ok(out)
}

/// An error at `[[milter]]` number `i`, key `key`.
fn at(i: usize, key: &str, message: String) -> ValueError {
    ValueError {
        path: vec!["milter".into(), Seg::Index(i), key.into()],
        message,
    }
}

/// One `[[milter]]`, defaults filled in (Postfix's: 30s to connect, 30s a
/// command, 5 minutes for the content).
fn one(i: usize, m: RawMilter) -> Result<MilterConfig, ValueError> {
    if m.name.is_empty()
        || !m
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(at(
            i,
            "name",
            format!("milter name {:?}: letters, digits, - and _ only", m.name),
        ));
    }
    let address = address(&m.address).map_err(|e| at(i, "address", e))?;
    let on_failure = match m.on_failure.as_deref() {
        None | Some("tempfail") => OnFailure::Tempfail,
        Some("accept") => OnFailure::Accept,
        Some("reject") => OnFailure::Reject,
        Some(o) => {
            return Err(at(
                i,
                "on_failure",
                format!("on_failure = {o:?}: expected \"tempfail\", \"accept\" or \"reject\""),
            ))
        }
    };
    let time = |v: Option<String>, key: &str, d: u64| -> Result<Duration, ValueError> {
        match v {
            None => Ok(Duration::from_secs(d)),
            Some(s) => parse_duration(&s).filter(|d| !d.is_zero()).ok_or_else(|| {
                at(
                    i,
                    key,
                    format!("{key} = {s:?}: expected e.g. \"30s\", \"5m\""),
                )
            }),
        }
    };
    let protocol = m.protocol.unwrap_or(milter::VERSION);
    if !(milter::OLDEST_VERSION..=milter::VERSION).contains(&protocol) {
        return Err(at(
            i,
            "protocol",
            format!("protocol = {protocol}: sluice speaks milter versions 2 to 6"),
        ));
    }
    let pool = m.pool.unwrap_or(8);
    if pool > MAX_POOL {
        return Err(at(i, "pool", format!("pool = {pool}: at most {MAX_POOL}")));
    }
    Ok(MilterConfig {
        name: m.name,
        address,
        on_failure,
        connect_timeout: time(m.connect_timeout, "connect_timeout", 30)?,
        command_timeout: time(m.command_timeout, "command_timeout", 30)?,
        eom_timeout: time(m.eom_timeout, "eom_timeout", 300)?,
        protocol,
        macros: macros(i, m.macros)?,
        originating: m.originating.unwrap_or(false),
        pool,
    })
}

/// The macro lists per stage: Postfix's defaults, each stage replaceable.
fn macros(
    i: usize,
    raw: Option<BTreeMap<String, Vec<String>>>,
) -> Result<Vec<Vec<String>>, ValueError> {
    let mut out: Vec<Vec<String>> = MACRO_STAGES
        .iter()
        .map(|(_, st)| {
            milter::default_macros(*st)
                .iter()
                .map(|s| s.to_string())
                .collect()
        })
        .collect();
    for (k, names) in raw.into_iter().flatten() {
        let Some(pos) = MACRO_STAGES.iter().position(|(n, _)| *n == k) else {
            return Err(ValueError {
                path: vec![
                    "milter".into(),
                    Seg::Index(i),
                    "macros".into(),
                    k.as_str().into(),
                ],
                message: format!(
                    "unknown macro stage {k:?} (expected connect, helo, mail, rcpt, data, eoh, eom)"
                ),
            });
        };
        out[pos] = names;
    }
    Ok(out)
}

/// `inet:host:port`, `inet:[v6]:port` or `unix:/path`.
fn address(a: &str) -> Result<MilterAddress, String> {
    if let Some(p) = a.strip_prefix("unix:") {
        if p.is_empty() {
            return Err(format!("milter address {a:?}: unix: needs a path"));
        }
        return Ok(MilterAddress::Unix(PathBuf::from(p)));
    }
    let bad = || format!("milter address {a:?}: expected \"inet:host:port\" or \"unix:/path\"");
    let rest = a.strip_prefix("inet:").ok_or_else(bad)?;
    let (host, port) = match rest.strip_prefix('[') {
        Some(r) => {
            let (h, p) = r.split_once("]:").ok_or_else(bad)?;
            (h, p)
        }
        None => rest.rsplit_once(':').ok_or_else(bad)?,
    };
    let port: u16 = port.parse().ok().filter(|p| *p > 0).ok_or_else(bad)?;
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(bad());
    }
    Ok(MilterAddress::Inet(host.to_string(), port))
}

/// `[[milter]]` for the effective config.
pub(super) fn effective(m: &MilterConfig) -> toml::Table {
    use toml::Value;
    let mut t = toml::Table::new();
    let s = |v: &str| Value::String(v.to_string());
    let secs = |d: Duration| Value::String(format!("{}s", d.as_secs()));
    t.insert("name".into(), s(&m.name));
    t.insert("address".into(), s(&m.address.to_string()));
    t.insert("on_failure".into(), s(m.on_failure.name()));
    t.insert("connect_timeout".into(), secs(m.connect_timeout));
    t.insert("command_timeout".into(), secs(m.command_timeout));
    t.insert("eom_timeout".into(), secs(m.eom_timeout));
    t.insert("protocol".into(), Value::Integer(i64::from(m.protocol)));
    let mut macros = toml::Table::new();
    for ((name, _), list) in MACRO_STAGES.iter().zip(&m.macros) {
        macros.insert(
            (*name).into(),
            Value::Array(list.iter().map(|x| s(x)).collect()),
        );
    }
    t.insert("macros".into(), Value::Table(macros));
    t.insert("originating".into(), Value::Boolean(m.originating));
    t.insert(
        "pool".into(),
        Value::Integer(i64::try_from(m.pool).unwrap_or(0)),
    );
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse() {
        assert_eq!(
            address("inet:127.0.0.1:8891"),
            Ok(MilterAddress::Inet("127.0.0.1".into(), 8891))
        );
        assert_eq!(
            address("inet:[::1]:11332"),
            Ok(MilterAddress::Inet("::1".into(), 11332))
        );
        assert_eq!(
            address("unix:/run/milter.sock"),
            Ok(MilterAddress::Unix("/run/milter.sock".into()))
        );
        for bad in [
            "127.0.0.1:1",
            "inet:host",
            "inet:host:0",
            "unix:",
            "inet::25",
        ] {
            assert!(address(bad).is_err(), "{bad}");
        }
        let m = address("inet:[::1]:11332").expect("ok");
        assert_eq!(m.to_string(), "inet:[::1]:11332");
    }
}
