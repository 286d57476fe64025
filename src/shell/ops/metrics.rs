//! The daemon's metrics registry: labelled counter families kept in fixed
//! arrays of atomics (no lock, no allocation on the hot path), and their
//! rendering in the Prometheus text exposition format 0.0.4, written by hand
//! (no exporter crate). A family's label values are registered when the
//! daemon starts (listener and connector names come from the config and the
//! policy, so they show as 0 from the first scrape); a value seen later
//! takes a free slot once (a connector of a newly installed policy, an
//! enhanced status code), and one past a family's capacity counts in the
//! `other` bucket.
//!
//! Levels that are cheaper to read than to keep (queue depth, spool size,
//! free space, the policy version) are not kept here: [`set_levels`] gives
//! the registry a function that reads them when a scrape, `sluice status`
//! or the STATS line asks ([`super::stats`]).

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
    /// The label values, one per slot, each set once (at start or when
    /// first seen) and never changed, so a reader needs no lock.
    values: [OnceLock<Box<str>>; MAX_LABELS],
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
            values: [const { OnceLock::new() }; MAX_LABELS],
            cells: [const { AtomicU64::new(0) }; MAX_LABELS + 1],
        }
    }

    /// Registers label values in order (so they are shown, as 0, before
    /// they are first counted); those past [`MAX_LABELS`] count under
    /// `other`.
    pub fn register<I: IntoIterator<Item = String>>(&self, values: I) {
        for v in values {
            let _ = self.cell(&v);
        }
    }

    /// The cell for `value`: its slot, a free slot it takes now (the one
    /// allocation, once per value; a racing taker of the same slot waits
    /// for that allocation only), or the `other` cell when all are taken
    /// (and for the value `other` itself, so it is never shown twice).
    fn cell(&self, value: &str) -> &AtomicU64 {
        if value == OTHER {
            return &self.cells[MAX_LABELS];
        }
        for (slot, cell) in self.values.iter().zip(&self.cells) {
            let v = match slot.get() {
                Some(v) => v,
                // Free: take it (a racing caller may take it first with
                // another value; then look on).
                None => slot.get_or_init(|| value.into()),
            };
            if &**v == value {
                return cell;
            }
        }
        &self.cells[MAX_LABELS]
    }

    /// The label values taken so far, with their counts.
    fn samples(&self) -> impl Iterator<Item = (&str, u64)> {
        self.values
            .iter()
            .zip(&self.cells)
            .map_while(|(v, c)| Some((&**v.get()?, c.load(Ordering::Relaxed))))
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

    /// The current value of `value`'s cell (0 for a value not seen yet;
    /// reading takes no slot).
    pub fn get(&self, value: &str) -> u64 {
        if value == OTHER {
            return self.cells[MAX_LABELS].load(Ordering::Relaxed);
        }
        self.samples()
            .find(|(v, _)| *v == value)
            .map_or(0, |(_, n)| n)
    }

    /// Appends the family in exposition format: HELP, TYPE, then one line
    /// per label value taken, and `other` when it is non-zero.
    pub fn render(&self, out: &mut String) {
        render_view(out, &self.view());
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

/// One metric with no label: a counter, or a gauge set from outside.
pub struct Scalar {
    /// Metric name (Prometheus conventions, base units).
    name: &'static str,
    /// The `# HELP` text.
    help: &'static str,
    /// The count.
    cell: AtomicU64,
}

impl Scalar {
    /// A counter at 0.
    pub const fn new(name: &'static str, help: &'static str) -> Self {
        Self {
            name,
            help,
            cell: AtomicU64::new(0),
        }
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.cell.fetch_add(n, Ordering::Relaxed);
    }

    /// The current count.
    pub fn get(&self) -> u64 {
        self.cell.load(Ordering::Relaxed)
    }
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

/// SMTP AUTH attempts by result: `success`, `failure` (535 and the
/// like), `lockout` (an address locked out, or refused while it is).
pub static AUTH_TOTAL: Family = Family::new(
    "sluice_auth_total",
    "SMTP AUTH attempts, by result.",
    Type::Counter,
    "result",
);

/// Messages accepted (spooled, 250 sent), by inbound connector.
pub static MESSAGES_RECEIVED: Family = Family::new(
    "sluice_messages_received_total",
    "Messages accepted and spooled, by inbound connector (none: not attributed).",
    Type::Counter,
    "connector",
);

/// Negative replies sent, by enhanced status code.
pub static REJECTED: Family = Family::new(
    "sluice_rejected_total",
    "Refusals sent to SMTP clients (4xx and 5xx replies), by enhanced status code.",
    Type::Counter,
    "status",
);

/// Recipients the next hop took, by send connector.
pub static DELIVERED: Family = Family::new(
    "sluice_recipients_delivered_total",
    "Recipients delivered to the next hop, by send connector (none: by MX).",
    Type::Counter,
    "connector",
);

/// Recipients deferred (to be retried), by send connector.
pub static DEFERRED: Family = Family::new(
    "sluice_recipients_deferred_total",
    "Delivery attempts deferred, per recipient, by send connector (none: by MX).",
    Type::Counter,
    "connector",
);

/// Recipients bounced (refused, or expired), by send connector.
pub static BOUNCED: Family = Family::new(
    "sluice_recipients_bounced_total",
    "Recipients bounced (refused by the next hop, or expired), by send connector (none: by MX).",
    Type::Counter,
    "connector",
);

/// TLS handshakes completed, inbound (STARTTLS) and outbound.
pub static TLS_HANDSHAKES: Family = Family::new(
    "sluice_tls_handshakes_total",
    "TLS handshakes completed, inbound (STARTTLS from clients) and outbound (to next hops).",
    Type::Counter,
    "direction",
);

/// TLS handshakes that failed or timed out, inbound and outbound.
pub static TLS_FAILURES: Family = Family::new(
    "sluice_tls_failures_total",
    "TLS handshakes that failed or timed out, inbound and outbound.",
    Type::Counter,
    "direction",
);

/// Outbound sessions a delivery used: new connections (`no`) and sessions
/// taken from the connection cache (`yes`).
pub static DELIVERY_CONNECTIONS: Family = Family::new(
    "sluice_delivery_connections_total",
    "Outbound sessions deliveries used: new connections (reused=no) and sessions kept open from an earlier delivery (reused=yes).",
    Type::Counter,
    "reused",
);

/// Questions sent to DNS servers.
pub static DNS_QUERIES: Scalar = Scalar::new(
    "sluice_dns_queries_total",
    "DNS questions asked of the servers (one per name and type, retries included).",
);

/// Questions no server answered.
pub static DNS_FAILURES: Scalar = Scalar::new(
    "sluice_dns_failures_total",
    "DNS questions that got no usable answer (timeouts, SERVFAIL, no server).",
);

/// Answers taken from a DNS cache (DNS lists, sender authentication).
pub static DNS_CACHE_HITS: Scalar = Scalar::new(
    "sluice_dns_cache_hits_total",
    "DNS lookups answered from a cache (DNS lists, sender authentication).",
);

/// Policies installed since start.
pub static POLICY_INSTALLS: Scalar = Scalar::new(
    "sluice_policy_installs_total",
    "Policies installed (upload, CLI, rollback) since the daemon started.",
);

/// Every labelled family, in exposition order.
static FAMILIES: [&Family; 8] = [
    &SESSIONS_TOTAL,
    &SESSIONS_CURRENT,
    &MESSAGES_RECEIVED,
    &REJECTED,
    &DELIVERED,
    &DEFERRED,
    &BOUNCED,
    &TLS_HANDSHAKES,
];

/// Every labelled family after [`FAMILIES`], and the counters.
static MORE: [&Family; 3] = [&TLS_FAILURES, &AUTH_TOTAL, &DELIVERY_CONNECTIONS];

/// Every unlabelled counter, in exposition order.
static SCALARS: [&Scalar; 4] = [
    &DNS_QUERIES,
    &DNS_FAILURES,
    &DNS_CACHE_HITS,
    &POLICY_INSTALLS,
];

/// A level read when asked (queue depth, spool size, policy version): a
/// gauge sample with at most one label.
#[derive(Debug, Clone, PartialEq)]
pub struct Level {
    /// Metric name.
    pub name: &'static str,
    /// The `# HELP` text.
    pub help: &'static str,
    /// Its label and value, if any.
    pub label: Option<(&'static str, String)>,
    /// The value.
    pub value: u64,
}

/// Reads the levels.
pub type LevelSource = Box<dyn Fn() -> Vec<Level> + Send + Sync>;

/// Where the levels come from (set once, by the daemon).
static LEVELS: OnceLock<LevelSource> = OnceLock::new();

/// Gives the registry the function that reads the levels (first call wins).
pub fn set_levels(f: LevelSource) {
    let _ = LEVELS.set(f);
}

/// One metric family as rendered: its samples, each with its label values.
pub struct View {
    /// Metric name.
    pub name: &'static str,
    /// The `# HELP` text.
    pub help: &'static str,
    /// Counter or gauge.
    pub kind: Type,
    /// Its label names (none, one or two).
    pub labels: Vec<&'static str>,
    /// Label values (as many as `labels`) and value, per sample.
    pub samples: Vec<(Vec<String>, u64)>,
}

/// Every metric, in exposition order: the families, the agents' counters,
/// syslog drops, the counters, then the levels.
pub fn views() -> Vec<View> {
    let mut out: Vec<View> = FAMILIES.iter().chain(&MORE).map(|f| f.view()).collect();
    out.push(agents_view());
    let (_, dropped) = super::log::stats();
    out.push(View {
        name: "sluice_syslog_dropped_total",
        help: "Syslog lines dropped (writer too slow or absent).",
        kind: Type::Counter,
        labels: Vec::new(),
        samples: vec![(Vec::new(), dropped)],
    });
    for c in SCALARS {
        out.push(View {
            name: c.name,
            help: c.help,
            kind: Type::Counter,
            labels: Vec::new(),
            samples: vec![(Vec::new(), c.get())],
        });
    }
    let levels = LEVELS.get().map(|f| f()).unwrap_or_default();
    for l in levels {
        let (labels, values) = match l.label {
            Some((n, v)) => (vec![n], vec![v]),
            None => (Vec::new(), Vec::new()),
        };
        match out.last_mut().filter(|v| v.name == l.name) {
            Some(v) => v.samples.push((values, l.value)),
            None => out.push(View {
                name: l.name,
                help: l.help,
                kind: Type::Gauge,
                labels,
                samples: vec![(values, l.value)],
            }),
        }
    }
    out
}

impl Family {
    /// The family as rendered: the taken label values, then `other` when
    /// it counted anything (or when nothing else is there).
    fn view(&self) -> View {
        let mut samples: Vec<(Vec<String>, u64)> = self
            .samples()
            .map(|(v, n)| (vec![v.to_string()], n))
            .collect();
        let other = self.cells[MAX_LABELS].load(Ordering::Relaxed);
        if other > 0 || samples.is_empty() {
            samples.push((vec![OTHER.to_string()], other));
        }
        View {
            name: self.name,
            help: self.help,
            kind: self.kind,
            labels: vec![self.label],
            samples,
        }
    }
}

/// The whole registry in exposition format 0.0.4 (the `/metrics` body).
pub fn render_all() -> String {
    let mut s = String::new();
    for v in views() {
        render_view(&mut s, &v);
    }
    s
}

/// Appends one family: HELP, TYPE, one line per sample.
fn render_view(s: &mut String, v: &View) {
    let t = match v.kind {
        Type::Counter => "counter",
        Type::Gauge => "gauge",
    };
    let _ = writeln!(s, "# HELP {} {}", v.name, escape_help(v.help));
    let _ = writeln!(s, "# TYPE {} {t}", v.name);
    for (values, n) in &v.samples {
        s.push_str(v.name);
        if !values.is_empty() {
            s.push('{');
            for (i, (l, x)) in v.labels.iter().zip(values).enumerate() {
                let sep = if i > 0 { "," } else { "" };
                let _ = write!(s, "{sep}{l}=\"{}\"", escape_label(x));
            }
            s.push('}');
        }
        let _ = writeln!(s, " {n}");
    }
}

/// The agents' counters ([`super::counters`], not duplicated here) as
/// `sluice_agent_actions_total{agent,action}`.
fn agents_view() -> View {
    use super::counters::{get, TALLIES};
    let mut samples = Vec::new();
    for (a, ..) in crate::engine::policy::AGENTS.iter() {
        let name = crate::shell::policy::render::agent_name(*a);
        for (t, action) in TALLIES {
            samples.push((vec![name.to_string(), action.to_string()], get(*a, t)));
        }
    }
    View {
        name: "sluice_agent_actions_total",
        help: "What each agent did, by agent and action.",
        kind: Type::Counter,
        labels: vec!["agent", "action"],
        samples,
    }
}

/// The registry as JSON for `sluice status --json`: metric name → its
/// value (no label), or label value → value (non-zero ones only, to keep
/// it short; two labels are joined with `/`).
pub fn snapshot() -> serde_json::Value {
    let mut m = serde_json::Map::new();
    for v in views() {
        if v.labels.is_empty() {
            let n = v.samples.first().map_or(0, |s| s.1);
            m.insert(v.name.into(), n.into());
            continue;
        }
        let mut row = serde_json::Map::new();
        for (values, n) in v.samples.into_iter().filter(|s| s.1 > 0) {
            row.insert(values.join("/"), n.into());
        }
        m.insert(v.name.into(), row.into());
    }
    m.into()
}

/// Counts the refusals in replies about to be sent (`out`, whole reply
/// lines): each last line of a 4xx or 5xx reply, by its enhanced status
/// code (`none` when it has none). Cheap: one pass over a few octets.
pub fn count_refusals(out: &[u8]) {
    for line in out.split(|&b| b == b'\n') {
        let refusal = line.len() >= 4
            && matches!(line[0], b'4' | b'5')
            && line[1..3].iter().all(u8::is_ascii_digit)
            && line[3] == b' ';
        if !refusal {
            continue;
        }
        let rest = &line[4..];
        let word = rest
            .split(|&b| b == b' ' || b == b'\r')
            .next()
            .unwrap_or(&[]);
        match std::str::from_utf8(word)
            .ok()
            .filter(|w| is_status(w, line[0]))
        {
            Some(w) => REJECTED.add(w, 1),
            None => REJECTED.add("none", 1),
        }
    }
}

/// Whether `w` is an enhanced status code (RFC 3463: class.subject.detail,
/// 1–3 digits each) of the reply's class.
fn is_status(w: &str, class: u8) -> bool {
    let mut parts = w.split('.');
    let ok = |p: Option<&str>| {
        p.is_some_and(|p| (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()))
    };
    w.as_bytes().first() == Some(&class)
        && ok(parts.next())
        && ok(parts.next())
        && ok(parts.next())
        && parts.next().is_none()
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
        F.add(OTHER, 1);
        F.sub("c0", 5);
        assert_eq!(F.get("c0"), 0);
        assert_eq!(F.get(OTHER), 4);
        assert_eq!(F.get("never seen"), 0);
        let mut s = String::new();
        F.render(&mut s);
        assert!(s.contains("# TYPE sluice_x gauge\n"));
        assert!(s.ends_with("sluice_x{connector=\"other\"} 4\n"));
        assert_eq!(s.matches("\"other\"").count(), 1);
    }

    #[test]
    fn refusals_are_counted_by_enhanced_status_code() {
        let before = |c: &str| REJECTED.get(c);
        let (a, b, n) = (before("5.1.1"), before("4.7.1"), before("none"));
        count_refusals(
            b"250-sluice\r\n250 SIZE 1\r\n550-5.1.1 no\r\n550 5.1.1 no such user\r\n\
              451 4.7.1 try later\r\n500 bad\r\n554 4.1.1 wrong class\r\n",
        );
        assert_eq!(
            REJECTED.get("5.1.1"),
            a + 1,
            "the last line of a reply only"
        );
        assert_eq!(REJECTED.get("4.7.1"), b + 1);
        assert_eq!(REJECTED.get("none"), n + 2);
    }

    #[test]
    fn a_value_seen_later_takes_a_free_slot() {
        static F: Family = Family::new("sluice_y_total", "y", Type::Counter, "connector");
        F.register(["a".to_string()]);
        F.add("b", 2);
        F.add("a", 1);
        let mut s = String::new();
        F.render(&mut s);
        assert!(
            s.ends_with("sluice_y_total{connector=\"a\"} 1\nsluice_y_total{connector=\"b\"} 2\n")
        );
    }

    #[test]
    fn scalars_render_without_labels_and_snapshot_has_them() {
        DNS_CACHE_HITS.add(1);
        let body = render_all();
        assert!(body.contains("# TYPE sluice_dns_cache_hits_total counter\n"));
        let line = body
            .lines()
            .find(|l| l.starts_with("sluice_dns_cache_hits_total "))
            .unwrap_or_default();
        assert!(line.split(' ').nth(1).and_then(|n| n.parse::<u64>().ok()) >= Some(1));
        assert!(snapshot()["sluice_dns_cache_hits_total"].as_u64() >= Some(1));
    }
}
