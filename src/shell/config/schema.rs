//! Where things are in the appliance config's text: the keys and sections
//! it may hold (an unknown one is an error at its key, with the nearest
//! known name), and the line and column of a key path, so that every error
//! reads `FILE:LINE:COL: message` as the rule-file compiler's do.

use super::{Seg, ValueError};
use crate::shell::policy::compile::{edit_distance, unknown_key, Diag};
use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// What a key holds, as far as key checking goes.
enum Shape {
    /// A value (or a table whose keys are names, not settings).
    Leaf,
    /// A table of these keys.
    Table(&'static [(&'static str, Shape)]),
    /// An array of tables of these keys (`[[listen]]`).
    Tables(&'static [(&'static str, Shape)]),
}

use Shape::{Leaf, Table, Tables};

/// `[[listen]]` keys.
const LISTEN: &[(&str, Shape)] = &[
    ("address", Leaf),
    ("starttls", Leaf),
    ("tls", Leaf),
    ("auth", Leaf),
];
/// `[auth]` keys (`sender_login` holds login names: not checked here).
const AUTH: &[(&str, Shape)] = &[
    ("passwd_file", Leaf),
    ("allow_plaintext", Leaf),
    ("concurrent_checks", Leaf),
    ("failure_delay", Leaf),
    ("max_failures", Leaf),
    ("lockout", Leaf),
    ("sender_login", Leaf),
];
/// `[[tls.client]]` keys.
const TLS_CLIENT: &[(&str, Shape)] = &[("name", Leaf), ("certificate", Leaf), ("key", Leaf)];
/// `[tls]` keys.
const TLS: &[(&str, Shape)] = &[
    ("certificate", Leaf),
    ("key", Leaf),
    ("ca", Leaf),
    ("client_ca", Leaf),
    ("client", Tables(TLS_CLIENT)),
];
/// `[limits]` keys.
const LIMITS: &[(&str, Shape)] = &[
    ("connections", Leaf),
    ("connections_per_ip", Leaf),
    ("command_timeout", Leaf),
    ("data_timeout", Leaf),
    ("bare_line_endings", Leaf),
    ("max_message_size", Leaf),
    ("max_recipients", Leaf),
    ("spool_reserve", Leaf),
];
/// `[queue]` keys.
const QUEUE: &[(&str, Shape)] = &[
    ("retry", Leaf),
    ("warn_after", Leaf),
    ("expire_after", Leaf),
    ("concurrency", Leaf),
    ("concurrency_per_destination", Leaf),
    ("connection_cache_time", Leaf),
    ("connection_cache_messages", Leaf),
    ("connection_cache_size", Leaf),
    ("hold", Leaf),
];
/// `[dns]` keys (`static` and `static_mx` hold names: not checked here).
const DNS: &[(&str, Shape)] = &[
    ("servers", Leaf),
    ("static", Leaf),
    ("static_mx", Leaf),
    ("timeout", Leaf),
    ("attempts", Leaf),
];
/// `[syslog]` keys.
const SYSLOG: &[(&str, Shape)] = &[("target", Leaf), ("facility", Leaf)];
/// `[upload]` keys.
const UPLOAD: &[(&str, Shape)] = &[("serial", Leaf), ("baud", Leaf)];
/// `[metrics]` keys.
/// `[[dkim]]` keys (one signing key each).
const DKIM: &[(&str, Shape)] = &[("domain", Leaf), ("selector", Leaf), ("key", Leaf)];
/// `[[milter]] macros` keys: the stages.
const MILTER_MACROS: &[(&str, Shape)] = &[
    ("connect", Leaf),
    ("helo", Leaf),
    ("mail", Leaf),
    ("rcpt", Leaf),
    ("data", Leaf),
    ("eoh", Leaf),
    ("eom", Leaf),
];
/// `[[milter]]` keys.
const MILTER: &[(&str, Shape)] = &[
    ("name", Leaf),
    ("address", Leaf),
    ("on_failure", Leaf),
    ("connect_timeout", Leaf),
    ("command_timeout", Leaf),
    ("eom_timeout", Leaf),
    ("protocol", Leaf),
    ("macros", Table(MILTER_MACROS)),
    ("originating", Leaf),
    ("pool", Leaf),
];
/// `[report]` keys.
const REPORT: &[(&str, Shape)] = &[("local_domains", Leaf), ("flush_interval", Leaf)];
const METRICS: &[(&str, Shape)] = &[("listen", Leaf), ("syslog_interval", Leaf)];
/// The top level: keys, then sections.
const ROOT: &[(&str, Shape)] = &[
    ("hostname", Leaf),
    ("rules", Leaf),
    ("state_dir", Leaf),
    ("spool_dir", Leaf),
    ("listen", Tables(LISTEN)),
    ("tls", Table(TLS)),
    ("limits", Table(LIMITS)),
    ("queue", Table(QUEUE)),
    ("dns", Table(DNS)),
    ("syslog", Table(SYSLOG)),
    ("upload", Table(UPLOAD)),
    ("metrics", Table(METRICS)),
    ("dkim", Tables(DKIM)),
    ("milter", Tables(MILTER)),
    ("report", Table(REPORT)),
    ("auth", Table(AUTH)),
];

/// The text's positions: byte offsets to 1-based lines and columns.
pub(super) struct Text<'t> {
    text: &'t str,
    /// Byte offset where each line starts.
    lines: Vec<usize>,
}

impl<'t> Text<'t> {
    /// Indexes the line starts of `text`.
    pub(super) fn new(text: &'t str) -> Self {
        let mut lines = vec![0];
        lines.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Text { text, lines }
    }

    /// The diagnostic for `message` at byte offset `at` (column in characters).
    pub(super) fn diag(&self, at: usize, message: impl Into<String>) -> Diag {
        let at = at.min(self.text.len());
        let line = self.lines.partition_point(|&s| s <= at).max(1);
        let start = self.lines.get(line - 1).copied().unwrap_or(0);
        let col = match self.text.get(start..at) {
            Some(s) => s.chars().count(),
            None => at - start,
        };
        Diag {
            line,
            col: col + 1,
            message: message.into(),
        }
    }
}

/// Every key and section of `root` this version does not know, as errors
/// at the key, with the nearest known name when one is close.
pub(super) fn unknown_keys(text: &Text<'_>, root: &DeTable<'_>) -> Vec<Diag> {
    let mut out = Vec::new();
    check_table(text, root, ROOT, None, &mut out);
    out
}

/// Checks one table's keys against `known`; `section` names it (`None`:
/// the top level, where a table is a section).
fn check_table(
    text: &Text<'_>,
    t: &DeTable<'_>,
    known: &[(&str, Shape)],
    section: Option<&str>,
    out: &mut Vec<Diag>,
) {
    let names: Vec<&str> = known.iter().map(|(k, _)| *k).collect();
    for (k, v) in t.iter() {
        let name: &str = k.get_ref().as_ref();
        let at = k.span().start;
        match (known.iter().find(|(n, _)| *n == name), v.get_ref()) {
            (Some((_, Table(sub))), DeValue::Table(inner)) => {
                check_table(text, inner, sub, Some(name), out);
            }
            (Some((_, Tables(sub))), DeValue::Array(list)) => {
                for item in list.iter() {
                    if let DeValue::Table(inner) = item.get_ref() {
                        check_table(text, inner, sub, Some(name), out);
                    }
                }
            }
            (Some(_), _) => {}
            (None, v) if section.is_none() && is_table(v) => {
                out.push(text.diag(at, unknown_section(name)));
            }
            (None, _) => {
                let ctx = match section {
                    Some(s) => format!("[{s}]"),
                    None => "the top level".to_string(),
                };
                out.push(text.diag(at, unknown_key(name, &names, &ctx)));
            }
        }
    }
}

/// Whether `v` is written as a section: a table or an array of tables.
fn is_table(v: &DeValue<'_>) -> bool {
    match v {
        DeValue::Table(_) => true,
        DeValue::Array(a) => a
            .iter()
            .next()
            .is_some_and(|e| matches!(e.get_ref(), DeValue::Table(_))),
        _ => false,
    }
}

/// The message for an unknown section, with the nearest known one.
fn unknown_section(name: &str) -> String {
    let near = ROOT
        .iter()
        .filter(|(_, s)| !matches!(s, Leaf))
        .map(|(k, _)| (edit_distance(name, k), *k))
        .min_by_key(|(d, _)| *d);
    match near {
        Some((d, k)) if d <= 2 && d < name.len() => {
            format!("unknown section [{name}] (did you mean [{k}]?)")
        }
        _ => format!(
            "unknown section [{name}] (expected one of: listen, tls, limits, queue, dns, \
             syslog, upload, metrics, milter, report, dkim, auth)"
        ),
    }
}

/// The diagnostic for a bad value: at the value its path names, or at the
/// deepest part of the path that is in the file (the start when none is).
pub(super) fn locate(text: &Text<'_>, root: &DeTable<'_>, e: &ValueError) -> Diag {
    let mut at = 0;
    let mut here: Option<&Spanned<DeValue<'_>>> = None;
    for (i, seg) in e.path.iter().enumerate() {
        let next = match (i, seg, here) {
            (0, Seg::Key(k), _) => root
                .iter()
                .find(|(name, _)| AsRef::<str>::as_ref(name.get_ref()) == k.as_str())
                .map(|(_, v)| v),
            (_, Seg::Key(k), Some(v)) => v.get_ref().get(k.as_str()),
            (_, Seg::Index(n), Some(v)) => v.get_ref().get(*n),
            _ => None,
        };
        match next {
            Some(v) => {
                at = v.span().start;
                here = Some(v);
            }
            None => break,
        }
    }
    text.diag(at, e.message.clone())
}
