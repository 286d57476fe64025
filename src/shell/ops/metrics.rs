//! The daemon's metrics registry: labelled counter families kept in fixed
//! arrays of atomics (no lock, no allocation on the hot path), and their
//! rendering in the Prometheus text exposition format 0.0.4, written by hand
//! (no exporter crate). A family's label values are fixed when the daemon
//! starts (listener and connector names come from the config); a value not
//! registered, or one past a family's capacity, counts in the `other` bucket.
//!
//! Only the registry and the format live here so far: wiring the counters
//! into the session, the relay and the spool, the `[metrics]` listener and
//! the STATS syslog line are still to do (see issue 15).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// Label values per family (listeners, connectors, agents, status classes):
/// a small appliance config has a handful; more than this share `other`.
pub const MAX_LABELS: usize = 32;

/// The label value counted when a value is unknown or the family is full.
pub const OTHER: &str = "other";

/// Whether a family only goes up (`counter`) or is a level (`gauge`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    /// Monotonic; the name ends in `_total`.
    Counter,
    /// A current level, set or moved both ways.
    Gauge,
}

/// One metric family with one label: fixed slots, the last being `other`.
pub struct Family {
    /// Metric name (Prometheus conventions, base units).
    name: &'static str,
    /// The `# HELP` text.
    help: &'static str,
    /// Counter or gauge.
    kind: Type,
    /// The label's name, e.g. `listener`.
    label: &'static str,
    /// The registered label values, fixed once at start.
    values: OnceLock<Vec<String>>,
    /// One cell per registered value, then the `other` cell.
    cells: [AtomicU64; MAX_LABELS + 1],
}

impl Family {
    /// A family with no label values registered yet.
    pub const fn new(
        name: &'static str,
        help: &'static str,
        kind: Type,
        label: &'static str,
    ) -> Self {
        Self {
            name,
            help,
            kind,
            label,
            values: OnceLock::new(),
            cells: [const { AtomicU64::new(0) }; MAX_LABELS + 1],
        }
    }

    /// Fixes the label values (first call wins); those past [`MAX_LABELS`]
    /// count under `other`.
    pub fn register<I: IntoIterator<Item = String>>(&self, values: I) {
        let v: Vec<String> = values.into_iter().take(MAX_LABELS).collect();
        let _ = self.values.set(v);
    }

    /// The cell for `value`, or the `other` cell.
    fn cell(&self, value: &str) -> &AtomicU64 {
        let i = self
            .values
            .get()
            .and_then(|v| v.iter().position(|x| x == value))
            .unwrap_or(MAX_LABELS);
        &self.cells[i]
    }

    /// Adds `n` to `value`'s cell.
    pub fn add(&self, value: &str, n: u64) {
        self.cell(value).fetch_add(n, Ordering::Relaxed);
    }

    /// Takes `n` from `value`'s cell (a gauge going down), never below 0.
    pub fn sub(&self, value: &str, n: u64) {
        let c = self.cell(value);
        let _ = c.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |x| {
            Some(x.saturating_sub(n))
        });
    }

    /// The current value of `value`'s cell.
    pub fn get(&self, value: &str) -> u64 {
        self.cell(value).load(Ordering::Relaxed)
    }

    /// Appends the family in exposition format: HELP, TYPE, then one line
    /// per registered value and `other` when it is non-zero.
    pub fn render(&self, out: &mut String) {
        let t = match self.kind {
            Type::Counter => "counter",
            Type::Gauge => "gauge",
        };
        let _ = writeln!(out, "# HELP {} {}", self.name, escape_help(self.help));
        let _ = writeln!(out, "# TYPE {} {t}", self.name);
        let values = self.values.get().map_or(&[][..], Vec::as_slice);
        for (v, c) in values.iter().zip(&self.cells) {
            self.line(out, v, c.load(Ordering::Relaxed));
        }
        let other = self.cells[MAX_LABELS].load(Ordering::Relaxed);
        if other > 0 || values.is_empty() {
            self.line(out, OTHER, other);
        }
    }

    /// One sample line.
    fn line(&self, out: &mut String, value: &str, n: u64) {
        let _ = writeln!(
            out,
            "{}{{{}=\"{}\"}} {n}",
            self.name,
            self.label,
            escape_label(value)
        );
    }
}

/// Escapes a label value: backslash, double quote and newline (format 0.0.4).
pub fn escape_label(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => o.push_str("\\\\"),
            '"' => o.push_str("\\\""),
            '\n' => o.push_str("\\n"),
            _ => o.push(c),
        }
    }
    o
}

/// Escapes HELP text: backslash and newline (format 0.0.4).
pub fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Sessions started, by listener address (admitted or refused with 421).
pub static SESSIONS_TOTAL: Family = Family::new(
    "sluice_sessions_total",
    "SMTP sessions started, by listener address.",
    Type::Counter,
    "listener",
);

/// Sessions running now, by listener address.
pub static SESSIONS_CURRENT: Family = Family::new(
    "sluice_sessions",
    "SMTP sessions running now, by listener address.",
    Type::Gauge,
    "listener",
);

/// Every family, in exposition order.
static FAMILIES: [&Family; 2] = [&SESSIONS_TOTAL, &SESSIONS_CURRENT];

/// The whole registry in exposition format 0.0.4 (the `/metrics` body).
pub fn render_all() -> String {
    let mut s = String::new();
    for f in FAMILIES {
        f.render(&mut s);
    }
    render_agents(&mut s);
    let (_, dropped) = super::log::stats();
    s.push_str(
        "# HELP sluice_syslog_dropped_total Syslog lines dropped (writer too slow or absent).\n",
    );
    s.push_str("# TYPE sluice_syslog_dropped_total counter\n");
    let _ = writeln!(s, "sluice_syslog_dropped_total {dropped}");
    s
}

/// The agents' counters ([`super::counters`], not duplicated here) as
/// `sluice_agent_actions_total{agent,action}`.
fn render_agents(s: &mut String) {
    use super::counters::{get, TALLIES};
    s.push_str("# HELP sluice_agent_actions_total What each agent did, by agent and action.\n");
    s.push_str("# TYPE sluice_agent_actions_total counter\n");
    for (a, ..) in crate::engine::policy::AGENTS.iter() {
        let name = crate::shell::policy::render::agent_name(*a);
        for (t, action) in TALLIES {
            let _ = writeln!(
                s,
                "sluice_agent_actions_total{{agent=\"{}\",action=\"{action}\"}} {}",
                escape_label(name),
                get(*a, t)
            );
        }
    }
}

/// The registry as JSON for `sluice status --json`: family name → label
/// value → count (non-zero cells only, to keep it short).
pub fn snapshot() -> serde_json::Value {
    let mut m = serde_json::Map::new();
    for f in FAMILIES {
        let mut row = serde_json::Map::new();
        let values = f.values.get().map_or(&[][..], Vec::as_slice);
        for (v, c) in values.iter().zip(&f.cells) {
            let n = c.load(Ordering::Relaxed);
            if n > 0 {
                row.insert(v.clone(), n.into());
            }
        }
        let other = f.cells[MAX_LABELS].load(Ordering::Relaxed);
        if other > 0 {
            row.insert(OTHER.into(), other.into());
        }
        m.insert(f.name.into(), row.into());
    }
    m.into()
}

/// The longest request head read from a scraper; a longer one is dropped.
const MAX_REQUEST: usize = 8192;

/// How long a scraper may take to send its request head.
const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Serves `GET /metrics` on `l` until cancelled, one task per connection.
pub async fn serve(l: async_net::TcpListener, ex: std::sync::Arc<smol::Executor<'static>>) {
    loop {
        match l.accept().await {
            Ok((s, _)) => ex.spawn(answer(s)).detach(),
            Err(_) => {
                smol::Timer::after(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// Reads one request head (bounded, timed) and answers it: 200 with the
/// exposition for `GET /metrics`, 404 for anything else.
async fn answer(mut s: async_net::TcpStream) {
    use futures_lite::{AsyncReadExt, AsyncWriteExt, FutureExt};
    let read = async {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < MAX_REQUEST {
            let n = s.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Some(buf)
    };
    let timeout = async {
        smol::Timer::after(READ_TIMEOUT).await;
        None
    };
    let Some(head) = read.or(timeout).await else {
        return;
    };
    let first = head.split(|&b| b == b'\n').next().unwrap_or(&[]);
    let mut words = first.split(|&b| b == b' ');
    let ok = words.next() == Some(b"GET") && words.next() == Some(b"/metrics");
    let (status, ctype, body) = if ok {
        ("200 OK", "text/plain; version=0.0.4", render_all())
    } else {
        ("404 Not Found", "text/plain", "not found\n".to_string())
    };
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = s.write_all(resp.as_bytes()).await;
    let _ = s.flush().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape_label("x\ny"), "x\\ny");
        assert_eq!(escape_help("h\\i\nj"), "h\\\\i\\nj");
    }

    #[test]
    fn render_has_help_type_and_samples() {
        static F: Family = Family::new(
            "sluice_sessions_total",
            "Sessions accepted, by listener.",
            Type::Counter,
            "listener",
        );
        F.register(["mx".to_string(), "sub\"x".to_string()]);
        F.add("mx", 3);
        let mut s = String::new();
        F.render(&mut s);
        assert_eq!(
            s,
            "# HELP sluice_sessions_total Sessions accepted, by listener.\n\
             # TYPE sluice_sessions_total counter\n\
             sluice_sessions_total{listener=\"mx\"} 3\n\
             sluice_sessions_total{listener=\"sub\\\"x\"} 0\n"
        );
    }

    #[test]
    fn unknown_and_overflow_values_count_as_other() {
        static F: Family = Family::new("sluice_x", "x", Type::Gauge, "connector");
        F.register((0..MAX_LABELS + 5).map(|i| format!("c{i}")));
        F.add("c0", 1);
        F.add(&format!("c{}", MAX_LABELS + 1), 2);
        F.add("nobody", 1);
        F.sub("c0", 5);
        assert_eq!(F.get("c0"), 0);
        assert_eq!(F.get(OTHER), 3);
        let mut s = String::new();
        F.render(&mut s);
        assert!(s.contains("# TYPE sluice_x gauge\n"));
        assert!(s.ends_with("sluice_x{connector=\"other\"} 3\n"));
    }
}
