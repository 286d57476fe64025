//! DNS for delivery: which hosts to try for a domain (MX, RFC 5321 §5.1) and
//! which addresses a host has (A/AAAA), with the static tables of `[dns]`.
//!
//! Messages are built and parsed with `simple-dns`; they travel over an
//! `async-net` UDP socket (one fresh socket, hence a fresh source port, per
//! query; a random id; the answer must match id and question) and over TCP
//! when the UDP answer is truncated (TC bit). Each query tries every server
//! in order, `attempts` rounds, `timeout` per try.
//!
//! Rules, in the order they apply:
//! * an address literal (`[192.0.2.1]`, `[IPv6:2001:db8::1]`, or a bare IP)
//!   is its own host and address;
//! * `static_mx` answers before DNS for its domains; a domain listed only in
//!   `static` is its own (implicit) MX: a name in `static` never reaches DNS;
//! * MX hosts come lowest preference first, equal preferences shuffled (a
//!   small xorshift seeded from the clock: load sharing, seed `001_…`);
//!   no MX at all means the domain itself (implicit MX, preference 0);
//!   a null MX (`.`, RFC 7505) is [`DnsError::NullMx`]: bounce at once;
//! * addresses: `static` first (its entries carry their port; port 0, written
//!   as a bare IP, means the caller's default port), then A and AAAA (IPv4
//!   first), following CNAME chains as the answer section gives them (and
//!   asking again for the target when the chain ends without data);
//! * domains are ASCII: a name with non-ASCII characters (an SMTPUTF8 domain
//!   not converted to A-labels by the sender) is [`DnsError::NoAddress`]
//!   (no IDNA conversion here); search domains of resolv.conf are not used
//!   (mail domains are fully qualified).

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_io::Timer;
use async_net::{TcpStream, UdpSocket};
use futures_lite::{future, AsyncReadExt, AsyncWriteExt};
use simple_dns::rdata::RData;
use simple_dns::{Name, Packet, PacketFlag, Question, CLASS, QCLASS, QTYPE, RCODE, TYPE};

use crate::shell::config::{Seg, ValueError};

mod cache;
pub use cache::{AUTH_CACHE_ENTRIES, AUTH_MAX_TTL, AUTH_NEGATIVE_TTL};

/// Where the system's name servers are listed.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";
/// Time to wait for one answer from one server (glibc's default).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Rounds over the server list (glibc's default).
pub const DEFAULT_ATTEMPTS: u32 = 2;
/// The port of a server written without one.
pub const DNS_PORT: u16 = 53;
/// Longest CNAME chain followed.
const MAX_CNAME_HOPS: usize = 8;
/// Largest UDP answer read (answers are ≤ 512 bytes without EDNS; be lenient).
const UDP_BUFFER: usize = 4096;

/// The `[dns]` table of the appliance config, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// Name servers, tried in order. Empty: no DNS at all (only the static
    /// tables answer; other names fail temporarily). `from_toml_with_resolv_conf` fills it
    /// from /etc/resolv.conf when `servers = []`.
    pub servers: Vec<SocketAddr>,
    /// Name → addresses with ports (port 0: the caller's default port).
    pub static_hosts: HashMap<String, Vec<SocketAddr>>,
    /// Domain → (preference, host) MX answers.
    pub static_mx: HashMap<String, Vec<(u16, String)>>,
    /// Wait for one answer from one server.
    pub timeout: Duration,
    /// Rounds over the server list (at least 1).
    pub attempts: u32,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            servers: Vec::new(),
            static_hosts: HashMap::new(),
            static_mx: HashMap::new(),
            timeout: DEFAULT_TIMEOUT,
            attempts: DEFAULT_ATTEMPTS,
        }
    }
}

impl DnsConfig {
    /// Parses the `[dns]` table of the appliance config (`None`: no table).
    /// Keys: `servers` ("ip" or "ip:port", IPv6 as "[::1]:53" or "::1";
    /// empty: the nameservers of `resolv_conf`, normally
    /// [`RESOLV_CONF`]), `static` (name → ["ip:port", ...]), `static_mx`
    /// (domain → [[pref, "host"], ...]), `timeout` (seconds) and `attempts`
    /// (default: resolv.conf's options, else 5 s and 2). An error names
    /// the value's key path, for its line and column.
    pub fn from_toml_with_resolv_conf(
        dns: Option<&toml::Value>,
        resolv_conf: &Path,
    ) -> Result<DnsConfig, ValueError> {
        let mut cfg = DnsConfig::default();
        let empty = toml::map::Map::new();
        let table = match dns {
            None => &empty,
            Some(toml::Value::Table(t)) => t,
            Some(_) => return Err(bad(&[], "dns: must be a table")),
        };
        let mut timeout = None;
        let mut attempts = None;
        for (key, value) in table {
            match key.as_str() {
                "servers" => cfg.servers = servers(value)?,
                "static" => cfg.static_hosts = static_hosts(value)?,
                "static_mx" => cfg.static_mx = static_mx(value)?,
                "timeout" => timeout = Some(dns_timeout(value)?),
                "attempts" => {
                    let n = value
                        .as_integer()
                        .and_then(|n| u32::try_from(n).ok())
                        .filter(|n| (1..=10).contains(n))
                        .ok_or_else(|| bad(&["attempts".into()], "dns.attempts: must be 1..=10"))?;
                    attempts = Some(n);
                }
                other => return Err(bad(&[other.into()], format!("dns: unknown key {other:?}"))),
            }
        }
        if cfg.servers.is_empty() {
            let rc = read_resolv_conf(resolv_conf);
            cfg.servers = rc.servers;
            timeout = timeout.or(rc.timeout);
            attempts = attempts.or(rc.attempts);
        }
        cfg.timeout = timeout.unwrap_or(DEFAULT_TIMEOUT);
        cfg.attempts = attempts.unwrap_or(DEFAULT_ATTEMPTS);
        Ok(cfg)
    }
}

/// An error at `[dns]`'s value under `path`.
fn bad(path: &[Seg], message: impl Into<String>) -> ValueError {
    let mut full = vec![Seg::from("dns")];
    full.extend_from_slice(path);
    ValueError {
        path: full,
        message: message.into(),
    }
}

/// `servers = ["ip", "ip:port", ...]`.
fn servers(value: &toml::Value) -> Result<Vec<SocketAddr>, ValueError> {
    let at = |i: usize| [Seg::from("servers"), Seg::Index(i)];
    let mut out = Vec::new();
    for (i, s) in array(value, &[Seg::from("servers")], "dns.servers")?
        .iter()
        .enumerate()
    {
        let s = s
            .as_str()
            .ok_or_else(|| bad(&at(i), format!("dns.servers[{i}]: must be a string")))?;
        let addr = parse_addr(s, DNS_PORT).ok_or_else(|| {
            bad(
                &at(i),
                format!("dns.servers[{i}]: bad address {s:?} (ip or ip:port)"),
            )
        })?;
        out.push(addr);
    }
    Ok(out)
}

/// `static = { name = ["ip:port", ...] }`.
fn static_hosts(value: &toml::Value) -> Result<HashMap<String, Vec<SocketAddr>>, ValueError> {
    let t = value
        .as_table()
        .ok_or_else(|| bad(&["static".into()], "dns.static: must be a table"))?;
    let mut out = HashMap::new();
    for (name, list) in t {
        let here = [Seg::from("static"), Seg::Key(name.clone())];
        let key =
            normalize(name).map_err(|_| bad(&here, format!("dns.static: bad name {name:?}")))?;
        let mut addrs = Vec::new();
        for (i, a) in array(list, &here, "dns.static")?.iter().enumerate() {
            let at = [here[0].clone(), here[1].clone(), Seg::Index(i)];
            let a = a
                .as_str()
                .ok_or_else(|| bad(&at, format!("dns.static.{name:?}[{i}]: must be a string")))?;
            let addr = parse_addr(a, 0).ok_or_else(|| {
                bad(
                    &at,
                    format!("dns.static.{name:?}[{i}]: bad address {a:?} (ip:port)"),
                )
            })?;
            addrs.push(addr);
        }
        out.insert(key, addrs);
    }
    Ok(out)
}

/// `static_mx = { domain = [[preference, "host"], ...] }`.
fn static_mx(value: &toml::Value) -> Result<HashMap<String, Vec<(u16, String)>>, ValueError> {
    let t = value
        .as_table()
        .ok_or_else(|| bad(&["static_mx".into()], "dns.static_mx: must be a table"))?;
    let mut out = HashMap::new();
    for (domain, list) in t {
        let here = [Seg::from("static_mx"), Seg::Key(domain.clone())];
        let key = normalize(domain)
            .map_err(|_| bad(&here, format!("dns.static_mx: bad domain {domain:?}")))?;
        let mut mxs = Vec::new();
        for (i, entry) in array(list, &here, "dns.static_mx")?.iter().enumerate() {
            let at = [here[0].clone(), here[1].clone(), Seg::Index(i)];
            mxs.push(mx_entry(
                entry,
                &at,
                &format!("dns.static_mx.{domain:?}[{i}]"),
            )?);
        }
        out.insert(key, mxs);
    }
    Ok(out)
}

/// One `[preference, "host"]` of `static_mx` (`what` names it in messages).
fn mx_entry(entry: &toml::Value, at: &[Seg], what: &str) -> Result<(u16, String), ValueError> {
    let shape = || bad(at, format!("{what}: must be [preference, \"host\"]"));
    let pair = entry.as_array().ok_or_else(shape)?;
    let (pref, host) = match pair.as_slice() {
        [p, h] => (p.as_integer(), h.as_str()),
        _ => return Err(shape()),
    };
    let pref = u16::try_from(pref.ok_or_else(shape)?)
        .map_err(|_| bad(at, format!("{what}: preference must be 0..=65535")))?;
    let host = host.ok_or_else(shape)?;
    if host.trim() != "." && normalize(host).is_err() {
        return Err(bad(at, format!("{what}: bad host {host:?}")));
    }
    Ok((pref, host.to_string()))
}

/// `timeout`: seconds, more than 0 and at most 300.
fn dns_timeout(value: &toml::Value) -> Result<Duration, ValueError> {
    let at = [Seg::from("timeout")];
    let secs = match value {
        toml::Value::Integer(i) => *i as f64,
        toml::Value::Float(f) => *f,
        _ => return Err(bad(&at, "dns.timeout: must be a number of seconds")),
    };
    if !(secs > 0.0 && secs <= 300.0) {
        return Err(bad(
            &at,
            "dns.timeout: must be more than 0 and at most 300 seconds",
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// `v` as an array, or an error naming `what`.
fn array<'a>(
    v: &'a toml::Value,
    at: &[Seg],
    what: &str,
) -> Result<&'a Vec<toml::Value>, ValueError> {
    v.as_array()
        .ok_or_else(|| bad(at, format!("{what}: must be an array")))
}

/// What resolv.conf says (only what this resolver uses).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResolvConf {
    /// `nameserver` lines, port 53; glibc's 127.0.0.1 when there is none.
    pub servers: Vec<SocketAddr>,
    /// `options timeout:N`.
    pub timeout: Option<Duration>,
    /// `options attempts:N`.
    pub attempts: Option<u32>,
}

/// Reads resolv.conf; a missing or unreadable file is an empty one (the
/// local server, as glibc does).
pub fn read_resolv_conf(path: &Path) -> ResolvConf {
    parse_resolv_conf(&std::fs::read_to_string(path).unwrap_or_default())
}

/// Parses resolv.conf text: `nameserver` and `options timeout:/attempts:`.
pub fn parse_resolv_conf(text: &str) -> ResolvConf {
    let mut rc = ResolvConf::default();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or("");
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => {
                // Scoped IPv6 addresses (fe80::1%eth0) are skipped.
                if let Some(ip) = words.next().and_then(|w| w.parse::<IpAddr>().ok()) {
                    rc.servers.push(SocketAddr::new(ip, DNS_PORT));
                }
            }
            Some("options") => {
                for opt in words {
                    if let Some(n) = opt.strip_prefix("timeout:").and_then(|n| n.parse().ok()) {
                        rc.timeout = Some(Duration::from_secs(u64::clamp(n, 1, 30)));
                    } else if let Some(n) =
                        opt.strip_prefix("attempts:").and_then(|n| n.parse().ok())
                    {
                        rc.attempts = Some(u32::clamp(n, 1, 5));
                    }
                }
            }
            _ => {}
        }
    }
    if rc.servers.is_empty() {
        rc.servers
            .push(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), DNS_PORT));
    }
    rc
}

/// "ip", "ip:port", "[v6]", "[v6]:port"; `default_port` when none is given.
fn parse_addr(s: &str, default_port: u16) -> Option<SocketAddr> {
    let s = s.trim();
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Some(a);
    }
    let bare = s
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(s);
    bare.parse::<IpAddr>()
        .ok()
        .map(|ip| SocketAddr::new(ip, default_port))
}

/// One host to try for a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxHost {
    /// MX preference (0 for an implicit MX).
    pub pref: u16,
    /// Host name, lower case, without the final dot (or an address literal).
    pub host: String,
}

/// Why a lookup gave nothing to connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsError {
    /// The domain publishes a null MX (RFC 7505): it accepts no mail.
    NullMx,
    /// NXDOMAIN (or a name that cannot exist).
    NoSuchDomain,
    /// The name exists but has no address (or is not ASCII).
    NoAddress,
    /// SERVFAIL, REFUSED, timeouts, unreachable servers: try again later.
    Temporary(String),
}

impl DnsError {
    /// True when the message should wait and be retried.
    pub fn is_temporary(&self) -> bool {
        matches!(self, DnsError::Temporary(_))
    }

    /// The enhanced status code (RFC 3463 / RFC 7505) for a DSN or a log.
    pub fn status(&self) -> &'static str {
        match self {
            DnsError::NullMx => "5.1.10",
            DnsError::NoSuchDomain => "5.1.2",
            DnsError::NoAddress => "5.4.4",
            DnsError::Temporary(_) => "4.4.3",
        }
    }
}

impl fmt::Display for DnsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DnsError::NullMx => f.write_str("domain does not accept mail (null MX, RFC 7505)"),
            DnsError::NoSuchDomain => f.write_str("no such domain"),
            DnsError::NoAddress => f.write_str("host has no address"),
            DnsError::Temporary(why) => write!(f, "temporary DNS failure: {why}"),
        }
    }
}

impl std::error::Error for DnsError {}

/// Lower case, no final dot, ASCII, sane labels.
fn normalize(name: &str) -> Result<String, DnsError> {
    let name = name.trim();
    if !name.is_ascii() {
        // An SMTPUTF8 (U-label) domain: no IDNA conversion here.
        return Err(DnsError::NoAddress);
    }
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    let labels_ok = name
        .split('.')
        .all(|l| !l.is_empty() && l.len() <= 63 && !l.contains(['\\', ' ', '\t', '[', ']']));
    if name.is_empty() || name.len() > 253 || !labels_ok {
        return Err(DnsError::NoSuchDomain);
    }
    Ok(name)
}

/// An address literal: `[192.0.2.1]`, `[IPv6:2001:db8::1]` (RFC 5321 §4.1.3)
/// or a bare IP address.
fn address_literal(host: &str) -> Option<IpAddr> {
    let host = host.trim();
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        let inner = match inner.get(..5) {
            Some(tag) if tag.eq_ignore_ascii_case("ipv6:") => &inner[5..],
            _ => inner,
        };
        return inner.parse().ok();
    }
    host.parse().ok()
}

/// The data of one answer record that this resolver uses.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RecData {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    Cname(String),
    Mx(u16, String),
    /// A TXT record's strings joined (not UTF-8: dropped).
    Txt(Vec<u8>),
    Ptr(String),
    Other,
}

#[derive(Debug, Clone)]
struct Record {
    owner: String,
    data: RecData,
    /// Seconds the record may be cached.
    ttl: u32,
}

/// A parsed, matching answer.
#[derive(Debug, Clone)]
struct Response {
    rcode: RCODE,
    truncated: bool,
    answers: Vec<Record>,
}

fn name_string(n: &Name<'_>) -> String {
    n.to_string().to_ascii_lowercase()
}

/// Parses an answer; `Ok(None)` when it is not the answer to this query
/// (another id, not a response, another question).
fn parse_response(
    buf: &[u8],
    id: u16,
    qname: &str,
    qtype: TYPE,
) -> Result<Option<Response>, String> {
    // A truncated answer may not parse: look at the header first.
    if buf.len() >= 12 {
        let flags = u16::from_be_bytes([buf[2], buf[3]]);
        let is_response = flags & PacketFlag::RESPONSE.bits() != 0;
        let tc = flags & PacketFlag::TRUNCATION.bits() != 0;
        if u16::from_be_bytes([buf[0], buf[1]]) != id || !is_response {
            return Ok(None);
        }
        if tc {
            return Ok(Some(Response {
                rcode: RCODE::from(flags & 0x000f),
                truncated: true,
                answers: Vec::new(),
            }));
        }
    } else {
        return Ok(None);
    }
    let p = Packet::parse(buf).map_err(|e| format!("malformed answer: {e}"))?;
    let rcode = p.rcode();
    match p.questions.first() {
        Some(q) if name_string(&q.qname) == qname && q.qtype == QTYPE::TYPE(qtype) => {}
        // FORMERR and the like may come without the question.
        None if !matches!(rcode, RCODE::NoError | RCODE::NameError) => {}
        _ => return Ok(None),
    }
    let answers = p
        .answers
        .iter()
        .filter(|rr| rr.class == CLASS::IN)
        .map(|rr| Record {
            owner: name_string(&rr.name),
            ttl: rr.ttl,
            data: match &rr.rdata {
                RData::A(a) => RecData::A(Ipv4Addr::from(a.address)),
                RData::AAAA(a) => RecData::Aaaa(Ipv6Addr::from(a.address)),
                RData::CNAME(c) => RecData::Cname(name_string(&c.0)),
                RData::MX(m) => RecData::Mx(m.preference, name_string(&m.exchange)),
                RData::TXT(t) => String::try_from(t.clone())
                    .map_or(RecData::Other, |t| RecData::Txt(t.into_bytes())),
                RData::PTR(p) => RecData::Ptr(name_string(&p.0)),
                _ => RecData::Other,
            },
        })
        .collect();
    Ok(Some(Response {
        rcode,
        truncated: false,
        answers,
    }))
}

/// [`parse_response`] for the fuzz target (`shell::fuzz`): the query type
/// picked by `qtype`; what it found as (truncated, number of records).
pub(crate) fn fuzz_parse(
    buf: &[u8],
    id: u16,
    qname: &str,
    qtype: u8,
) -> Result<Option<(bool, usize)>, String> {
    let types = [
        TYPE::A,
        TYPE::AAAA,
        TYPE::MX,
        TYPE::TXT,
        TYPE::PTR,
        TYPE::CNAME,
    ];
    let t = types[usize::from(qtype) % types.len()];
    parse_response(buf, id, qname, t).map(|r| r.map(|r| (r.truncated, r.answers.len())))
}

fn build_query(id: u16, qname: &str, qtype: TYPE) -> Result<Vec<u8>, DnsError> {
    let name = Name::new(qname).map_err(|_| DnsError::NoSuchDomain)?;
    let mut p = Packet::new_query(id);
    p.set_flags(PacketFlag::RECURSION_DESIRED);
    p.questions.push(Question::new(
        name,
        QTYPE::TYPE(qtype),
        QCLASS::CLASS(CLASS::IN),
        false,
    ));
    p.build_bytes_vec()
        .map_err(|e| DnsError::Temporary(format!("building query: {e}")))
}

async fn with_timeout<T>(
    t: Duration,
    f: impl Future<Output = Result<T, String>>,
) -> Result<T, String> {
    future::or(f, async {
        Timer::after(t).await;
        Err(format!("no answer within {t:?}"))
    })
    .await
}

/// What sender authentication looks up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthType {
    /// TXT (SPF, DKIM keys, DMARC).
    Txt,
    /// A.
    A,
    /// AAAA.
    Aaaa,
    /// MX (the exchange names).
    Mx,
    /// PTR (the names of an address).
    Ptr,
}

impl AuthType {
    fn empty(self) -> AuthRecords {
        match self {
            AuthType::Txt => AuthRecords::Texts(Vec::new()),
            AuthType::A | AuthType::Aaaa => AuthRecords::Addresses(Vec::new()),
            AuthType::Mx | AuthType::Ptr => AuthRecords::Names(Vec::new()),
        }
    }
}

/// The records of `found` that a `kind` lookup answers with.
fn auth_records(kind: AuthType, found: Vec<RecData>) -> AuthRecords {
    let mut out = kind.empty();
    for r in found {
        match (&mut out, r) {
            (AuthRecords::Texts(v), RecData::Txt(t)) => v.push(t),
            (AuthRecords::Names(v), RecData::Mx(_, h) | RecData::Ptr(h)) => v.push(h),
            (AuthRecords::Addresses(v), RecData::A(a)) => v.push(IpAddr::V4(a)),
            (AuthRecords::Addresses(v), RecData::Aaaa(a)) => v.push(IpAddr::V6(a)),
            _ => {}
        }
    }
    out
}

/// The answer to an [`Resolver::auth_lookup`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthRecords {
    /// TXT records, each one's strings joined.
    Texts(Vec<Vec<u8>>),
    /// MX exchanges or PTR names.
    Names(Vec<String>),
    /// A or AAAA addresses.
    Addresses(Vec<IpAddr>),
}

/// How long "not listed" (NXDOMAIN, no A record) is cached, seconds: the
/// answer carries no TTL this resolver reads, and list providers publish
/// negative TTLs of a few minutes.
pub const LIST_NEGATIVE_TTL: u32 = 300;

/// Longest a DNS list answer is cached, whatever TTL the server gave: a
/// wrong "listed" answer must not stay until a restart.
pub const LIST_MAX_TTL: u32 = 86_400;

/// The answer to a DNS list query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListAnswer {
    /// The A records (empty: not listed).
    pub addrs: Vec<Ipv4Addr>,
    /// Seconds it may be cached.
    pub ttl: u32,
}

/// Resolves mail routes: static tables first, then DNS.
#[derive(Debug)]
pub struct Resolver {
    servers: Vec<SocketAddr>,
    static_hosts: HashMap<String, Vec<SocketAddr>>,
    static_mx: HashMap<String, Vec<(u16, String)>>,
    timeout: Duration,
    attempts: u32,
    rng: AtomicU64,
    /// Sender authentication's answers, kept for their TTL.
    auth_cache: cache::AuthCache,
}

impl Resolver {
    /// A resolver over a checked config (static table names are normalised).
    pub fn new(cfg: DnsConfig) -> Self {
        let norm = |k: String| normalize(&k).unwrap_or(k);
        let static_hosts = cfg
            .static_hosts
            .into_iter()
            .map(|(k, v)| (norm(k), v))
            .collect();
        let static_mx = cfg
            .static_mx
            .into_iter()
            .map(|(k, v)| (norm(k), v))
            .collect();
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let local = 0u8;
        let seed = nanos
            ^ ((&local as *const u8 as u64).rotate_left(32))
            ^ u64::from(std::process::id()).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        Resolver {
            servers: cfg.servers,
            static_hosts,
            static_mx,
            timeout: cfg.timeout,
            attempts: cfg.attempts.max(1),
            rng: AtomicU64::new(if seed == 0 {
                0x2545_f491_4f6c_dd1d
            } else {
                seed
            }),
            auth_cache: cache::AuthCache::default(),
        }
    }

    /// xorshift64*: query ids and the equal-preference shuffle.
    fn next_u64(&self) -> u64 {
        let step = |mut x: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let prev = self
            .rng
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |x| Some(step(x)))
            .unwrap_or_else(|x| x);
        step(prev).wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// The ordered list of hosts to try for a domain: MX by preference
    /// (equal ones shuffled), or the domain itself (implicit MX) when there
    /// is no MX. `Err(NullMx)` for a null MX, `Err(Temporary)` on
    /// SERVFAIL/timeouts, `Err(NoSuchDomain)` for NXDOMAIN.
    pub async fn mx_hosts(&self, domain: &str) -> Result<Vec<MxHost>, DnsError> {
        if address_literal(domain).is_some() {
            return Ok(vec![MxHost {
                pref: 0,
                host: domain.trim().to_string(),
            }]);
        }
        let name = normalize(domain)?;
        let records = if let Some(list) = self.static_mx.get(&name) {
            list.clone()
        } else if self.static_hosts.contains_key(&name) {
            Vec::new()
        } else {
            self.lookup(&name, TYPE::MX)
                .await?
                .into_iter()
                .filter_map(|d| match d {
                    RecData::Mx(p, h) => Some((p, h)),
                    _ => None,
                })
                .collect()
        };
        self.order_mx(&name, records)
    }

    /// Sorts MX records by preference, shuffles equal ones, drops
    /// duplicates; implicit MX when empty; null MX detection.
    fn order_mx(&self, domain: &str, records: Vec<(u16, String)>) -> Result<Vec<MxHost>, DnsError> {
        if records.is_empty() {
            return Ok(vec![MxHost {
                pref: 0,
                host: domain.to_string(),
            }]);
        }
        let mut hosts: Vec<MxHost> = Vec::with_capacity(records.len());
        let mut null = false;
        for (pref, host) in records {
            let h = host.trim();
            let h = h.strip_suffix('.').unwrap_or(h);
            if h.is_empty() {
                // "." — RFC 7505 says it is the only MX; if others are
                // published anyway, use them.
                null = true;
                continue;
            }
            let host = h.to_ascii_lowercase();
            match hosts.iter_mut().find(|m| m.host == host) {
                Some(m) => m.pref = m.pref.min(pref),
                None => hosts.push(MxHost { pref, host }),
            }
        }
        if hosts.is_empty() {
            return Err(if null {
                DnsError::NullMx
            } else {
                DnsError::NoAddress
            });
        }
        hosts.sort_by_key(|m| m.pref);
        let mut start = 0;
        while start < hosts.len() {
            let pref = hosts[start].pref;
            let end = start + hosts[start..].iter().take_while(|m| m.pref == pref).count();
            for i in (start + 1..end).rev() {
                let j = start + (self.next_u64() % (i - start + 1) as u64) as usize;
                hosts.swap(i, j);
            }
            start = end;
        }
        Ok(hosts)
    }

    /// Addresses of a host (static table first — a name listed there never
    /// reaches DNS — then A and AAAA, IPv4 first), each with a port (static
    /// entries carry theirs; else `default_port`).
    pub async fn addresses(
        &self,
        host: &str,
        default_port: u16,
    ) -> Result<Vec<SocketAddr>, DnsError> {
        if let Some(ip) = address_literal(host) {
            return Ok(vec![SocketAddr::new(ip, default_port)]);
        }
        let name = normalize(host)?;
        if let Some(list) = self.static_hosts.get(&name) {
            if list.is_empty() {
                return Err(DnsError::NoAddress);
            }
            return Ok(list
                .iter()
                .map(|a| {
                    let mut a = *a;
                    if a.port() == 0 {
                        a.set_port(default_port);
                    }
                    a
                })
                .collect());
        }
        let (v4, v6) =
            future::zip(self.lookup(&name, TYPE::A), self.lookup(&name, TYPE::AAAA)).await;
        let mut addrs: Vec<SocketAddr> = Vec::new();
        for d in v4.iter().chain(v6.iter()).flatten() {
            let ip: IpAddr = match d {
                RecData::A(a) => (*a).into(),
                RecData::Aaaa(a) => (*a).into(),
                _ => continue,
            };
            let sa = SocketAddr::new(ip, default_port);
            if !addrs.contains(&sa) {
                addrs.push(sa);
            }
        }
        if !addrs.is_empty() {
            return Ok(addrs);
        }
        match (v4, v6) {
            (Err(DnsError::NoSuchDomain), _) | (_, Err(DnsError::NoSuchDomain)) => {
                Err(DnsError::NoSuchDomain)
            }
            (Err(e @ DnsError::Temporary(_)), _) | (_, Err(e @ DnsError::Temporary(_))) => Err(e),
            _ => Err(DnsError::NoAddress),
        }
    }

    /// A DNS list query (RFC 5782): the A records of `name` with the
    /// smallest TTL among them. NXDOMAIN and an empty answer are "not
    /// listed": no addresses, with [`LIST_NEGATIVE_TTL`]. SERVFAIL,
    /// timeouts and unreachable servers are [`DnsError::Temporary`]; every
    /// try is bounded by `timeout`, so the whole lookup by `timeout` ×
    /// `attempts` × servers. Static tables are not consulted.
    pub async fn list_lookup(&self, name: &str) -> Result<ListAnswer, DnsError> {
        let name = normalize(name)?;
        let resp = self.query(&name, TYPE::A).await?;
        let mut answer = ListAnswer {
            addrs: Vec::new(),
            ttl: LIST_NEGATIVE_TTL,
        };
        if resp.rcode == RCODE::NameError {
            return Ok(answer);
        }
        let mut ttl = u32::MAX;
        for r in &resp.answers {
            if let RecData::A(a) = r.data {
                answer.addrs.push(a);
                ttl = ttl.min(r.ttl);
            }
        }
        if !answer.addrs.is_empty() {
            answer.ttl = ttl;
        }
        Ok(answer)
    }

    /// The records sender authentication asks for (SPF, DKIM keys, DMARC),
    /// following CNAMEs; static tables are not consulted. NXDOMAIN and no
    /// data are an empty answer; SERVFAIL and timeouts are
    /// [`DnsError::Temporary`]; a name no query can carry is empty.
    /// Answers are cached by TTL, empty ones for [`AUTH_NEGATIVE_TTL`];
    /// failures are not.
    pub async fn auth_lookup(&self, name: &str, kind: AuthType) -> Result<AuthRecords, DnsError> {
        let Ok(name) = normalize(name) else {
            return Ok(kind.empty());
        };
        if let Some(hit) = self.auth_cache.get(&name, kind, Instant::now()) {
            crate::shell::ops::metrics::DNS_CACHE_HITS.add(1);
            return Ok(hit);
        }
        let qtype = match kind {
            AuthType::Txt => TYPE::TXT,
            AuthType::A => TYPE::A,
            AuthType::Aaaa => TYPE::AAAA,
            AuthType::Mx => TYPE::MX,
            AuthType::Ptr => TYPE::PTR,
        };
        let (found, ttl) = match self.lookup_ttl(&name, qtype).await {
            Ok((found, _)) if found.is_empty() => (found, AUTH_NEGATIVE_TTL),
            Ok(found) => found,
            Err(DnsError::NoSuchDomain) => (Vec::new(), AUTH_NEGATIVE_TTL),
            Err(e) => return Err(e),
        };
        let out = auth_records(kind, found);
        self.auth_cache
            .put(&name, kind, out.clone(), ttl, Instant::now());
        Ok(out)
    }

    /// The records of `qtype` for `name`, following CNAMEs.
    async fn lookup(&self, name: &str, qtype: TYPE) -> Result<Vec<RecData>, DnsError> {
        self.lookup_ttl(name, qtype).await.map(|(found, _)| found)
    }
    /// The records of `qtype` for `name` and the smallest TTL among them,
    /// following CNAMEs (through the answer section, and by asking again
    /// when a chain ends there).
    async fn lookup_ttl(&self, name: &str, qtype: TYPE) -> Result<(Vec<RecData>, u32), DnsError> {
        let mut qname = name.to_string();
        let mut hops = 0;
        loop {
            let resp = self.query(&qname, qtype).await?;
            if resp.rcode == RCODE::NameError {
                return Err(DnsError::NoSuchDomain);
            }
            let mut target = qname.clone();
            loop {
                let records: Vec<&Record> = resp
                    .answers
                    .iter()
                    .filter(|r| r.owner == target)
                    .filter(|r| {
                        matches!(
                            (&r.data, qtype),
                            (RecData::A(_), TYPE::A)
                                | (RecData::Aaaa(_), TYPE::AAAA)
                                | (RecData::Mx(..), TYPE::MX)
                                | (RecData::Txt(_), TYPE::TXT)
                                | (RecData::Ptr(_), TYPE::PTR)
                        )
                    })
                    .collect();
                if !records.is_empty() {
                    let ttl = records.iter().map(|r| r.ttl).min().unwrap_or(0);
                    return Ok((records.into_iter().map(|r| r.data.clone()).collect(), ttl));
                }
                let next = resp.answers.iter().find_map(|r| match &r.data {
                    RecData::Cname(c) if r.owner == target => Some(c.clone()),
                    _ => None,
                });
                match next {
                    Some(c) if hops < MAX_CNAME_HOPS => {
                        hops += 1;
                        target = c;
                    }
                    Some(_) => {
                        return Err(DnsError::Temporary(format!(
                            "CNAME chain too long for {name}"
                        )))
                    }
                    None => break,
                }
            }
            if target == qname {
                return Ok((Vec::new(), 0));
            }
            // The chain ended without data: ask for its last name.
            qname = target;
        }
    }

    /// One question to the servers: UDP, TCP when truncated; every server
    /// in order, `attempts` rounds. NOERROR and NXDOMAIN answers are final.
    async fn query(&self, qname: &str, qtype: TYPE) -> Result<Response, DnsError> {
        use crate::shell::ops::metrics::{DNS_FAILURES, DNS_QUERIES};
        DNS_QUERIES.add(1);
        if self.servers.is_empty() {
            DNS_FAILURES.add(1);
            return Err(DnsError::Temporary(format!(
                "no DNS server configured to look up {qname} {qtype:?}"
            )));
        }
        let mut last = String::new();
        for _ in 0..self.attempts {
            for &server in &self.servers {
                let id = self.next_u64() as u16;
                let query = build_query(id, qname, qtype)?;
                match self.exchange(server, id, &query, qname, qtype).await {
                    Ok(r) if matches!(r.rcode, RCODE::NoError | RCODE::NameError) => return Ok(r),
                    Ok(r) => last = format!("{server}: {:?} for {qname} {qtype:?}", r.rcode),
                    Err(e) => last = format!("{server}: {e} for {qname} {qtype:?}"),
                }
            }
        }
        DNS_FAILURES.add(1);
        Err(DnsError::Temporary(last))
    }

    async fn exchange(
        &self,
        server: SocketAddr,
        id: u16,
        query: &[u8],
        qname: &str,
        qtype: TYPE,
    ) -> Result<Response, String> {
        let r = with_timeout(self.timeout, udp_exchange(server, id, query, qname, qtype)).await?;
        if !r.truncated {
            return Ok(r);
        }
        let r = with_timeout(self.timeout, tcp_exchange(server, id, query, qname, qtype)).await?;
        if r.truncated {
            return Err("truncated answer over TCP".into());
        }
        Ok(r)
    }
}

async fn udp_exchange(
    server: SocketAddr,
    id: u16,
    query: &[u8],
    qname: &str,
    qtype: TYPE,
) -> Result<Response, String> {
    let local: SocketAddr = match server {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let sock = UdpSocket::bind(local)
        .await
        .map_err(|e| format!("udp bind: {e}"))?;
    // Connected: the kernel drops datagrams from anyone but the server.
    sock.connect(server)
        .await
        .map_err(|e| format!("udp: {e}"))?;
    sock.send(query)
        .await
        .map_err(|e| format!("udp send: {e}"))?;
    let mut buf = vec![0u8; UDP_BUFFER];
    loop {
        let n = sock.recv(&mut buf).await.map_err(|e| format!("udp: {e}"))?;
        if let Some(r) = parse_response(&buf[..n], id, qname, qtype)? {
            return Ok(r);
        }
    }
}

async fn tcp_exchange(
    server: SocketAddr,
    id: u16,
    query: &[u8],
    qname: &str,
    qtype: TYPE,
) -> Result<Response, String> {
    let mut s = TcpStream::connect(server)
        .await
        .map_err(|e| format!("tcp: {e}"))?;
    let len = u16::try_from(query.len()).map_err(|_| "query too long".to_string())?;
    let mut msg = Vec::with_capacity(query.len() + 2);
    msg.extend_from_slice(&len.to_be_bytes());
    msg.extend_from_slice(query);
    s.write_all(&msg)
        .await
        .map_err(|e| format!("tcp send: {e}"))?;
    s.flush().await.map_err(|e| format!("tcp send: {e}"))?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len)
        .await
        .map_err(|e| format!("tcp: {e}"))?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut buf)
        .await
        .map_err(|e| format!("tcp: {e}"))?;
    parse_response(&buf, id, qname, qtype)?
        .ok_or_else(|| "tcp: answer does not match the query".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use simple_dns::rdata::{A, AAAA, CNAME, MX};
    use simple_dns::ResourceRecord;
    use std::io::{Read, Write};
    use std::sync::atomic::AtomicUsize;
    use std::sync::{Arc, Mutex};

    // ---- a fake DNS server on 127.0.0.1 (UDP and TCP, same port) ----

    #[derive(Clone)]
    enum Rd {
        A(Ipv4Addr),
        Aaaa(Ipv6Addr),
        Cname(&'static str),
        Mx(u16, &'static str),
    }

    #[derive(Clone)]
    struct Canned {
        rcode: RCODE,
        answers: Vec<(&'static str, Rd)>,
        /// Over UDP: answer with TC and no records; TCP gives the full answer.
        truncate_udp: bool,
        /// Ignore this many UDP queries first (a lost datagram).
        drop_first: usize,
    }

    fn ok(answers: Vec<(&'static str, Rd)>) -> Canned {
        Canned {
            rcode: RCODE::NoError,
            answers,
            truncate_udp: false,
            drop_first: 0,
        }
    }

    fn rcode(rcode: RCODE) -> Canned {
        Canned {
            rcode,
            ..ok(Vec::new())
        }
    }

    type Table = HashMap<(String, TYPE), Canned>;

    struct Fake {
        addr: SocketAddr,
        udp_queries: Arc<AtomicUsize>,
        tcp_queries: Arc<AtomicUsize>,
    }

    fn answer(query: &[u8], table: &Mutex<Table>, over_tcp: bool) -> Option<Vec<u8>> {
        let q = Packet::parse(query).ok()?;
        let question = q.questions.first()?.clone();
        let qtype = match question.qtype {
            QTYPE::TYPE(t) => t,
            _ => return None,
        };
        let key = (name_string(&question.qname), qtype);
        let mut reply = Packet::new_reply(q.id());
        reply.questions.push(question);
        let mut guard = table.lock().ok()?;
        let canned = match guard.get_mut(&key) {
            Some(c) => c,
            None => {
                *reply.rcode_mut() = RCODE::NameError;
                return reply.build_bytes_vec().ok();
            }
        };
        if !over_tcp && canned.drop_first > 0 {
            canned.drop_first -= 1;
            return None;
        }
        *reply.rcode_mut() = canned.rcode;
        if !over_tcp && canned.truncate_udp {
            reply.set_flags(PacketFlag::TRUNCATION);
            return reply.build_bytes_vec().ok();
        }
        for (owner, rd) in &canned.answers {
            let rdata = match rd {
                Rd::A(ip) => RData::A(A::from(*ip)),
                Rd::Aaaa(ip) => RData::AAAA(AAAA::from(*ip)),
                Rd::Cname(t) => RData::CNAME(CNAME(Name::new_unchecked(t))),
                Rd::Mx(p, h) => RData::MX(MX {
                    preference: *p,
                    exchange: Name::new_unchecked(h),
                }),
            };
            reply.answers.push(ResourceRecord::new(
                Name::new_unchecked(owner),
                CLASS::IN,
                60,
                rdata,
            ));
        }
        reply.build_bytes_vec().ok()
    }

    fn fake_server(entries: Vec<((&str, TYPE), Canned)>) -> Fake {
        let table: Table = entries
            .into_iter()
            .map(|((n, t), c)| ((n.to_string(), t), c))
            .collect();
        let table = Arc::new(Mutex::new(table));
        // Same port for UDP and TCP.
        let (udp, tcp) = loop {
            let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let port = udp.local_addr().unwrap().port();
            if let Ok(tcp) = std::net::TcpListener::bind(("127.0.0.1", port)) {
                break (udp, tcp);
            }
        };
        let addr = udp.local_addr().unwrap();
        let udp_queries = Arc::new(AtomicUsize::new(0));
        let tcp_queries = Arc::new(AtomicUsize::new(0));
        {
            let table = table.clone();
            let count = udp_queries.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok((n, peer)) = udp.recv_from(&mut buf) {
                    count.fetch_add(1, Ordering::SeqCst);
                    if let Some(r) = answer(&buf[..n], &table, false) {
                        let _ = udp.send_to(&r, peer);
                    }
                }
            });
        }
        {
            let count = tcp_queries.clone();
            std::thread::spawn(move || {
                for mut s in tcp.incoming().flatten() {
                    count.fetch_add(1, Ordering::SeqCst);
                    let mut len = [0u8; 2];
                    if s.read_exact(&mut len).is_err() {
                        continue;
                    }
                    let mut q = vec![0u8; usize::from(u16::from_be_bytes(len))];
                    if s.read_exact(&mut q).is_err() {
                        continue;
                    }
                    if let Some(r) = answer(&q, &table, true) {
                        let mut out = (r.len() as u16).to_be_bytes().to_vec();
                        out.extend_from_slice(&r);
                        let _ = s.write_all(&out);
                    }
                }
            });
        }
        Fake {
            addr,
            udp_queries,
            tcp_queries,
        }
    }

    fn resolver_for(servers: Vec<SocketAddr>) -> Resolver {
        Resolver::new(DnsConfig {
            servers,
            timeout: Duration::from_millis(300),
            attempts: 2,
            ..DnsConfig::default()
        })
    }

    fn hosts(v: &[MxHost]) -> Vec<(u16, &str)> {
        v.iter().map(|m| (m.pref, m.host.as_str())).collect()
    }

    // ---- ordering, shuffle, null and implicit MX (static tables) ----

    fn static_mx(domain: &str, list: &[(u16, &str)]) -> Resolver {
        let mut cfg = DnsConfig::default();
        cfg.static_mx.insert(
            domain.to_string(),
            list.iter().map(|(p, h)| (*p, h.to_string())).collect(),
        );
        Resolver::new(cfg)
    }

    #[test]
    fn mx_ordered_by_preference() {
        let r = static_mx(
            "example.test",
            &[
                (30, "c.example.test"),
                (10, "A.example.test."),
                (20, "b.example.test"),
            ],
        );
        let got = smol::block_on(r.mx_hosts("Example.Test.")).unwrap();
        assert_eq!(
            hosts(&got),
            vec![
                (10, "a.example.test"),
                (20, "b.example.test"),
                (30, "c.example.test")
            ]
        );
    }

    #[test]
    fn equal_preferences_are_shuffled() {
        let r = static_mx(
            "example.test",
            &[
                (20, "backup.example.test"),
                (10, "us.example.test"),
                (10, "eu.example.test"),
                (10, "ap.example.test"),
            ],
        );
        let mut first: HashMap<String, usize> = HashMap::new();
        for _ in 0..600 {
            let got = smol::block_on(r.mx_hosts("example.test")).unwrap();
            assert_eq!(got.len(), 4);
            assert_eq!(got[3].host, "backup.example.test");
            assert!(got[..3].iter().all(|m| m.pref == 10));
            *first.entry(got[0].host.clone()).or_default() += 1;
        }
        for h in ["us.example.test", "eu.example.test", "ap.example.test"] {
            let n = first.get(h).copied().unwrap_or(0);
            assert!(n > 100, "{h} first {n} times of 600: {first:?}");
        }
    }

    #[test]
    fn duplicate_mx_hosts_keep_lowest_preference() {
        let r = static_mx("d.test", &[(20, "x.test"), (10, "x.test"), (15, "y.test")]);
        let got = smol::block_on(r.mx_hosts("d.test")).unwrap();
        assert_eq!(hosts(&got), vec![(10, "x.test"), (15, "y.test")]);
    }

    #[test]
    fn null_mx_bounces() {
        let r = static_mx("nomail.test", &[(0, ".")]);
        assert_eq!(
            smol::block_on(r.mx_hosts("nomail.test")),
            Err(DnsError::NullMx)
        );
        assert_eq!(DnsError::NullMx.status(), "5.1.10");
        assert!(!DnsError::NullMx.is_temporary());
    }

    #[test]
    fn implicit_mx_from_static_host_and_empty_static_mx() {
        let mut cfg = DnsConfig::default();
        cfg.static_hosts.insert(
            "hes.trend.example".into(),
            vec!["127.0.0.1:2601".parse().unwrap()],
        );
        cfg.static_mx.insert("empty.test".into(), Vec::new());
        let r = Resolver::new(cfg);
        let got = smol::block_on(r.mx_hosts("HES.trend.example")).unwrap();
        assert_eq!(hosts(&got), vec![(0, "hes.trend.example")]);
        let got = smol::block_on(r.mx_hosts("empty.test")).unwrap();
        assert_eq!(hosts(&got), vec![(0, "empty.test")]);
    }

    #[test]
    fn address_literals_are_their_own_host() {
        let r = Resolver::new(DnsConfig::default());
        let got = smol::block_on(r.mx_hosts("[192.0.2.7]")).unwrap();
        assert_eq!(hosts(&got), vec![(0, "[192.0.2.7]")]);
        let a = smol::block_on(r.addresses("[192.0.2.7]", 25)).unwrap();
        assert_eq!(a, vec!["192.0.2.7:25".parse().unwrap()]);
        let a = smol::block_on(r.addresses("[IPv6:2001:db8::1]", 2525)).unwrap();
        assert_eq!(a, vec!["[2001:db8::1]:2525".parse().unwrap()]);
    }

    #[test]
    fn non_ascii_and_bad_names() {
        let r = Resolver::new(DnsConfig::default());
        assert_eq!(
            smol::block_on(r.mx_hosts("bücher.example")),
            Err(DnsError::NoAddress)
        );
        assert_eq!(
            smol::block_on(r.addresses("bücher.example", 25)),
            Err(DnsError::NoAddress)
        );
        assert_eq!(
            smol::block_on(r.mx_hosts("a..b")),
            Err(DnsError::NoSuchDomain)
        );
        // No servers and not in the tables: temporary, not a bounce.
        assert!(smol::block_on(r.mx_hosts("example.test"))
            .unwrap_err()
            .is_temporary());
    }

    #[test]
    fn futures_are_send_and_resolver_is_shared() {
        fn send<T: Send>(_: &T) {}
        fn sync<T: Send + Sync>() {}
        sync::<Resolver>();
        let r = Resolver::new(DnsConfig::default());
        send(&r.mx_hosts("example.test"));
        send(&r.addresses("example.test", 25));
    }

    // ---- static tables before DNS ----

    #[test]
    fn static_tables_answer_before_dns() {
        let fake = fake_server(vec![
            (
                ("relay.test", TYPE::A),
                ok(vec![("relay.test", Rd::A(Ipv4Addr::new(10, 9, 9, 9)))]),
            ),
            (
                ("routed.test", TYPE::MX),
                ok(vec![("routed.test", Rd::Mx(5, "dns-mx.test"))]),
            ),
        ]);
        let mut cfg = DnsConfig {
            servers: vec![fake.addr],
            timeout: Duration::from_millis(300),
            ..DnsConfig::default()
        };
        cfg.static_hosts.insert(
            "Relay.Test".into(),
            vec![
                "127.0.0.1:2602".parse().unwrap(),
                "10.1.1.1"
                    .parse::<IpAddr>()
                    .map(|ip| SocketAddr::new(ip, 0))
                    .unwrap(),
            ],
        );
        cfg.static_mx
            .insert("routed.test".into(), vec![(10, "relay.test".into())]);
        let r = Resolver::new(cfg);
        smol::block_on(async {
            let mx = r.mx_hosts("routed.test").await.unwrap();
            assert_eq!(hosts(&mx), vec![(10, "relay.test")]);
            let a = r.addresses("relay.test.", 25).await.unwrap();
            assert_eq!(
                a,
                vec![
                    "127.0.0.1:2602".parse().unwrap(),
                    "10.1.1.1:25".parse().unwrap()
                ]
            );
            let mx = r.mx_hosts("relay.test").await.unwrap();
            assert_eq!(hosts(&mx), vec![(0, "relay.test")]);
        });
        assert_eq!(
            fake.udp_queries.load(Ordering::SeqCst),
            0,
            "static names reached DNS"
        );
    }

    // ---- resolv.conf and [dns] parsing ----

    #[test]
    fn resolv_conf_parsing() {
        let dir = std::env::temp_dir().join(format!("sluice-dns-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("resolv.conf");
        std::fs::write(
            &path,
            "# generated\nsearch corp.example\nnameserver 192.0.2.53\n\
             nameserver 2001:db8::53 # v6\n; comment\nnameserver fe80::1%eth0\n\
             nameserver bogus\noptions ndots:2 timeout:3 attempts:4 rotate\n",
        )
        .unwrap();
        let rc = read_resolv_conf(&path);
        assert_eq!(
            rc.servers,
            vec![
                "192.0.2.53:53".parse().unwrap(),
                "[2001:db8::53]:53".parse().unwrap()
            ]
        );
        assert_eq!(rc.timeout, Some(Duration::from_secs(3)));
        assert_eq!(rc.attempts, Some(4));

        // [dns] servers = [] takes resolv.conf, its options included.
        let v: toml::Value = toml::from_str("servers = []").unwrap();
        let cfg = DnsConfig::from_toml_with_resolv_conf(Some(&v), &path).unwrap();
        assert_eq!(cfg.servers, rc.servers);
        assert_eq!((cfg.timeout, cfg.attempts), (Duration::from_secs(3), 4));

        // Missing file or no nameserver: the local server, as glibc does.
        let rc = read_resolv_conf(&dir.join("missing"));
        assert_eq!(rc.servers, vec!["127.0.0.1:53".parse().unwrap()]);
        assert_eq!(parse_resolv_conf("search x\n").servers.len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn dns_table_from_toml() {
        let text = r#"
servers = ["192.0.2.1", "192.0.2.2:5353", "[2001:db8::1]:53", "2001:db8::2"]
static = { "hes.trend.example" = ["127.0.0.1:2601"], "Exch1.Contoso.Internal." = ["127.0.0.1:2602", "[::1]:2603", "10.0.0.5"] }
static_mx = { "eu.contoso.com" = [[10, "relay-eu.contoso.example"], [20, "relay-us.contoso.example"]], "null.test" = [[0, "."]] }
timeout = 2
attempts = 3
"#;
        let v: toml::Value = toml::from_str(text).unwrap();
        let cfg =
            DnsConfig::from_toml_with_resolv_conf(Some(&v), Path::new("/nonexistent")).unwrap();
        assert_eq!(
            cfg.servers,
            vec![
                "192.0.2.1:53".parse().unwrap(),
                "192.0.2.2:5353".parse().unwrap(),
                "[2001:db8::1]:53".parse().unwrap(),
                "[2001:db8::2]:53".parse().unwrap(),
            ]
        );
        assert_eq!(cfg.static_hosts["exch1.contoso.internal"].len(), 3);
        assert_eq!(cfg.static_hosts["exch1.contoso.internal"][2].port(), 0);
        assert_eq!(
            cfg.static_mx["eu.contoso.com"],
            vec![
                (10, "relay-eu.contoso.example".into()),
                (20, "relay-us.contoso.example".into())
            ]
        );
        assert_eq!((cfg.timeout, cfg.attempts), (Duration::from_secs(2), 3));

        // The sample's table, and no table at all.
        let sample = r#"
servers = []
static = { "hes.trend.example" = ["127.0.0.1:2601"], "exch1.contoso.internal" = ["127.0.0.1:2602"] }
static_mx = { "eu.contoso.com" = [[10, "relay-eu.contoso.example"], [20, "relay-us.contoso.example"]] }
"#;
        let v: toml::Value = toml::from_str(sample).unwrap();
        let cfg =
            DnsConfig::from_toml_with_resolv_conf(Some(&v), Path::new("/nonexistent")).unwrap();
        assert_eq!(cfg.servers, vec!["127.0.0.1:53".parse().unwrap()]);
        assert_eq!(
            (cfg.timeout, cfg.attempts),
            (DEFAULT_TIMEOUT, DEFAULT_ATTEMPTS)
        );
        let cfg = DnsConfig::from_toml_with_resolv_conf(None, Path::new("/nonexistent")).unwrap();
        assert!(cfg.static_hosts.is_empty());

        for (bad, needle) in [
            (r#"servers = ["nope"]"#, "dns.servers[0]"),
            (r#"servers = "1.2.3.4""#, "dns.servers"),
            (r#"static = { "a.test" = ["a.test:25"] }"#, "bad address"),
            (
                r#"static_mx = { "a.test" = [[70000, "mx.test"]] }"#,
                "preference",
            ),
            (
                r#"static_mx = { "a.test" = [["mx.test", 10]] }"#,
                "[preference",
            ),
            (
                r#"static_mx = { "a.test" = [[10, "bad host"]] }"#,
                "bad host",
            ),
            ("attempts = 0", "dns.attempts"),
            ("timeout = -1", "dns.timeout"),
            ("srevers = []", "unknown key"),
        ] {
            let v: toml::Value = toml::from_str(bad).unwrap();
            let err = DnsConfig::from_toml_with_resolv_conf(Some(&v), Path::new("/nonexistent"))
                .unwrap_err();
            assert!(err.message.contains(needle), "{bad}: {err}");
        }
    }

    // ---- round trips against the fake server ----

    #[test]
    fn list_lookups_listed_not_listed_and_failing() {
        let fake = fake_server(vec![
            (
                ("2.0.0.127.bl.test", TYPE::A),
                ok(vec![
                    ("2.0.0.127.bl.test", Rd::A(Ipv4Addr::new(127, 0, 0, 2))),
                    ("2.0.0.127.bl.test", Rd::A(Ipv4Addr::new(127, 0, 0, 4))),
                ]),
            ),
            (("3.0.0.127.bl.test", TYPE::A), rcode(RCODE::ServerFailure)),
        ]);
        let r = resolver_for(vec![fake.addr]);
        let listed = future::block_on(r.list_lookup("2.0.0.127.bl.test")).unwrap();
        assert_eq!(
            listed.addrs,
            [Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 4)]
        );
        assert_eq!(listed.ttl, 60);
        // NXDOMAIN: not listed, cached for the negative TTL.
        let not = future::block_on(r.list_lookup("9.0.0.127.bl.test")).unwrap();
        assert!(not.addrs.is_empty());
        assert_eq!(not.ttl, LIST_NEGATIVE_TTL);
        // SERVFAIL: temporary, never "listed".
        let e = future::block_on(r.list_lookup("3.0.0.127.bl.test")).unwrap_err();
        assert!(e.is_temporary(), "{e:?}");
    }

    #[test]
    fn mx_a_aaaa_round_trip() {
        let fake = fake_server(vec![
            (
                ("example.test", TYPE::MX),
                ok(vec![
                    ("example.test", Rd::Mx(20, "mx2.example.test")),
                    ("example.test", Rd::Mx(10, "mx1.example.test")),
                ]),
            ),
            (
                ("mx1.example.test", TYPE::A),
                ok(vec![(
                    "mx1.example.test",
                    Rd::A(Ipv4Addr::new(127, 0, 0, 1)),
                )]),
            ),
            (
                ("mx1.example.test", TYPE::AAAA),
                ok(vec![("mx1.example.test", Rd::Aaaa(Ipv6Addr::LOCALHOST))]),
            ),
            (("v6only.example.test", TYPE::A), ok(Vec::new())),
            (
                ("v6only.example.test", TYPE::AAAA),
                ok(vec![("v6only.example.test", Rd::Aaaa(Ipv6Addr::LOCALHOST))]),
            ),
            (("noaddr.example.test", TYPE::A), ok(Vec::new())),
            (("noaddr.example.test", TYPE::AAAA), ok(Vec::new())),
            (("nomx.test", TYPE::MX), ok(Vec::new())),
            (
                ("null.test", TYPE::MX),
                ok(vec![("null.test", Rd::Mx(0, ""))]),
            ),
            (("broken.test", TYPE::MX), rcode(RCODE::ServerFailure)),
            (("refused.test", TYPE::MX), rcode(RCODE::Refused)),
        ]);
        let r = resolver_for(vec![fake.addr]);
        smol::block_on(async {
            let mx = r.mx_hosts("example.test").await.unwrap();
            assert_eq!(
                hosts(&mx),
                vec![(10, "mx1.example.test"), (20, "mx2.example.test")]
            );
            let a = r.addresses("mx1.example.test", 25).await.unwrap();
            assert_eq!(
                a,
                vec!["127.0.0.1:25".parse().unwrap(), "[::1]:25".parse().unwrap()]
            );
            let a = r.addresses("v6only.example.test", 2525).await.unwrap();
            assert_eq!(a, vec!["[::1]:2525".parse().unwrap()]);
            assert_eq!(
                r.addresses("noaddr.example.test", 25).await,
                Err(DnsError::NoAddress)
            );
            assert_eq!(
                r.addresses("missing.example.test", 25).await,
                Err(DnsError::NoSuchDomain)
            );
            // No MX: the domain itself (RFC 5321 §5.1).
            assert_eq!(
                hosts(&r.mx_hosts("nomx.test").await.unwrap()),
                vec![(0, "nomx.test")]
            );
            assert_eq!(r.mx_hosts("null.test").await, Err(DnsError::NullMx));
            assert_eq!(
                r.mx_hosts("missing.test").await,
                Err(DnsError::NoSuchDomain)
            );
            let e = r.mx_hosts("broken.test").await.unwrap_err();
            assert!(e.is_temporary(), "{e}");
            assert!(e.to_string().contains("ServerFailure"), "{e}");
            assert!(r.mx_hosts("refused.test").await.unwrap_err().is_temporary());
        });
        assert_eq!(fake.tcp_queries.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn cname_chains_are_followed() {
        let fake = fake_server(vec![
            (
                ("www.example.test", TYPE::A),
                ok(vec![
                    ("www.example.test", Rd::Cname("web.example.test")),
                    ("web.example.test", Rd::Cname("host.example.test")),
                    ("host.example.test", Rd::A(Ipv4Addr::new(127, 0, 0, 2))),
                ]),
            ),
            (
                ("www.example.test", TYPE::AAAA),
                ok(vec![("www.example.test", Rd::Cname("web.example.test"))]),
            ),
            // A chain that ends without data: asked again for its end.
            (
                ("alias.test", TYPE::A),
                ok(vec![("alias.test", Rd::Cname("target.test"))]),
            ),
            (
                ("alias.test", TYPE::AAAA),
                ok(vec![("alias.test", Rd::Cname("target.test"))]),
            ),
            (
                ("target.test", TYPE::A),
                ok(vec![("target.test", Rd::A(Ipv4Addr::new(127, 0, 0, 3)))]),
            ),
            (("target.test", TYPE::AAAA), ok(Vec::new())),
            // A loop.
            (
                ("loop.test", TYPE::A),
                ok(vec![("loop.test", Rd::Cname("loop.test"))]),
            ),
            (
                ("loop.test", TYPE::AAAA),
                ok(vec![("loop.test", Rd::Cname("loop.test"))]),
            ),
            // MX through a CNAME.
            (
                ("mxalias.test", TYPE::MX),
                ok(vec![
                    ("mxalias.test", Rd::Cname("mxreal.test")),
                    ("mxreal.test", Rd::Mx(5, "mail.mxreal.test")),
                ]),
            ),
        ]);
        let r = resolver_for(vec![fake.addr]);
        smol::block_on(async {
            let a = r.addresses("www.example.test", 25).await.unwrap();
            assert_eq!(a, vec!["127.0.0.2:25".parse().unwrap()]);
            let a = r.addresses("alias.test", 25).await.unwrap();
            assert_eq!(a, vec!["127.0.0.3:25".parse().unwrap()]);
            assert!(r
                .addresses("loop.test", 25)
                .await
                .unwrap_err()
                .is_temporary());
            let mx = r.mx_hosts("mxalias.test").await.unwrap();
            assert_eq!(hosts(&mx), vec![(5, "mail.mxreal.test")]);
        });
    }

    #[test]
    fn truncated_udp_answer_goes_over_tcp() {
        let mut big = Vec::new();
        for i in 0..40u16 {
            let h: &'static str = Box::leak(format!("mx{i:02}.bulk.test").into_boxed_str());
            big.push(("bulk.test", Rd::Mx(i / 4, h)));
        }
        let fake = fake_server(vec![(
            ("bulk.test", TYPE::MX),
            Canned {
                truncate_udp: true,
                ..ok(big)
            },
        )]);
        let r = resolver_for(vec![fake.addr]);
        let mx = smol::block_on(r.mx_hosts("bulk.test")).unwrap();
        assert_eq!(mx.len(), 40);
        assert!(mx.windows(2).all(|w| w[0].pref <= w[1].pref));
        assert_eq!(fake.udp_queries.load(Ordering::SeqCst), 1);
        assert_eq!(fake.tcp_queries.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn lost_datagrams_are_retried_and_dead_servers_skipped() {
        let fake = fake_server(vec![(
            ("slow.test", TYPE::MX),
            Canned {
                drop_first: 1,
                ..ok(vec![("slow.test", Rd::Mx(10, "mx.slow.test"))])
            },
        )]);
        // A closed port first: refused at once (ICMP), then the fake server.
        let dead = {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            s.local_addr().unwrap()
        };
        let r = resolver_for(vec![dead, fake.addr]);
        let mx = smol::block_on(r.mx_hosts("slow.test")).unwrap();
        assert_eq!(hosts(&mx), vec![(10, "mx.slow.test")]);
        assert_eq!(fake.udp_queries.load(Ordering::SeqCst), 2);

        // Nobody answers: temporary, after attempts × servers × timeout.
        let silent = fake_server(vec![(
            ("silent.test", TYPE::MX),
            Canned {
                drop_first: usize::MAX,
                ..ok(Vec::new())
            },
        )]);
        let r = Resolver::new(DnsConfig {
            servers: vec![silent.addr],
            timeout: Duration::from_millis(100),
            attempts: 3,
            ..DnsConfig::default()
        });
        let t0 = std::time::Instant::now();
        let e = smol::block_on(r.mx_hosts("silent.test")).unwrap_err();
        assert!(
            e.is_temporary() && e.to_string().contains("no answer"),
            "{e}"
        );
        assert!(t0.elapsed() >= Duration::from_millis(300));
        assert_eq!(silent.udp_queries.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn answers_to_other_questions_are_ignored() {
        let q = build_query(7, "a.test", TYPE::A).unwrap();
        // Our own query is not a response.
        assert!(parse_response(&q, 7, "a.test", TYPE::A).unwrap().is_none());
        let mut reply = Packet::new_reply(8);
        reply.questions.push(Question::new(
            Name::new_unchecked("a.test"),
            QTYPE::TYPE(TYPE::A),
            QCLASS::CLASS(CLASS::IN),
            false,
        ));
        let bytes = reply.build_bytes_vec().unwrap();
        assert!(parse_response(&bytes, 7, "a.test", TYPE::A)
            .unwrap()
            .is_none());
        assert!(parse_response(&bytes, 8, "b.test", TYPE::A)
            .unwrap()
            .is_none());
        assert!(parse_response(&bytes, 8, "a.test", TYPE::MX)
            .unwrap()
            .is_none());
        assert!(parse_response(&bytes, 8, "a.test", TYPE::A)
            .unwrap()
            .is_some());
        assert!(parse_response(&bytes[..5], 8, "a.test", TYPE::A)
            .unwrap()
            .is_none());
    }

    // ---- a real server: dnsmasq, when SLUICE_DNSMASQ names its binary ----

    struct Child(std::process::Child);
    impl Drop for Child {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// Starts dnsmasq on a free loopback port with `records` (its own
    /// arguments) and nothing else; returns its guard and port.
    fn spawn_dnsmasq(bin: &std::ffi::OsStr, records: &[&str]) -> (Child, u16) {
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let port_arg = format!("--port={port}");
        let fixed = [
            "--no-daemon",
            &port_arg,
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--no-resolv",
            "--no-hosts",
            "--conf-file=/dev/null",
            "--user=",
            "--pid-file=",
        ];
        let child = std::process::Command::new(bin)
            .args(fixed)
            .args(records)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        (Child(child), port)
    }

    #[test]
    fn through_dnsmasq() {
        let Some(bin) = std::env::var_os("SLUICE_DNSMASQ") else {
            eprintln!("SLUICE_DNSMASQ not set: dnsmasq test skipped");
            return;
        };
        let (mut guard, port) = spawn_dnsmasq(
            &bin,
            &[
                "--local=/test/",
                "--mx-host=example.test,mx1.example.test,10",
                "--mx-host=example.test,mx2.example.test,20",
                "--mx-host=example.test,mx3.example.test,20",
                "--host-record=mx1.example.test,127.0.0.1,::1",
                "--host-record=mx2.example.test,127.0.0.2",
                "--host-record=mx3.example.test,127.0.0.3",
                "--host-record=nomx.test,127.0.0.4",
                "--cname=www.example.test,mx1.example.test",
                "--mx-host=null.test,.,0",
            ],
        );
        let r = Resolver::new(DnsConfig {
            servers: vec![SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port)],
            timeout: Duration::from_millis(200),
            attempts: 1,
            ..DnsConfig::default()
        });
        smol::block_on(async {
            // Wait for dnsmasq to listen.
            let mut mx = Err(DnsError::Temporary(String::new()));
            for _ in 0..50 {
                mx = r.mx_hosts("example.test").await;
                if !matches!(mx, Err(DnsError::Temporary(_))) {
                    break;
                }
                assert!(
                    guard.0.try_wait().unwrap().is_none(),
                    "dnsmasq exited; run it by hand with the arguments above"
                );
                Timer::after(Duration::from_millis(100)).await;
            }
            let mx = mx.unwrap();
            assert_eq!(mx.len(), 3);
            assert_eq!(
                mx[0],
                MxHost {
                    pref: 10,
                    host: "mx1.example.test".into()
                }
            );
            assert!(mx[1..].iter().all(|m| m.pref == 20));
            let a = r.addresses("mx1.example.test", 25).await.unwrap();
            assert_eq!(
                a,
                vec!["127.0.0.1:25".parse().unwrap(), "[::1]:25".parse().unwrap()]
            );
            let a = r.addresses("www.example.test", 25).await.unwrap();
            assert!(a.contains(&"127.0.0.1:25".parse().unwrap()), "{a:?}");
            assert_eq!(
                hosts(&r.mx_hosts("nomx.test").await.unwrap()),
                vec![(0, "nomx.test")]
            );
            assert_eq!(
                r.addresses("nomx.test", 25).await.unwrap(),
                vec!["127.0.0.4:25".parse().unwrap()]
            );
            assert_eq!(
                r.mx_hosts("missing.test").await,
                Err(DnsError::NoSuchDomain)
            );
        });
    }
}
