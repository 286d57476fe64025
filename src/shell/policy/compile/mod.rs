//! The rule-file compiler behind `sluice rules check` / `apply`: the
//! operator's TOML rule file (`config/rules.toml` is the normative sample)
//! is parsed keeping spans, checked, and compiled into the engine's
//! fixed-size [`Table`], then encoded as the postcard blob the daemon
//! installs. Every error and warning names a 1-based line and column.
//!
//! Defaults of missing keys: `version` 1; no accepted domain, no default
//! domain; `[[inbound]] kind` "partner"; `[[connector]] tls`
//! "opportunistic", `cost` 10, no smart hosts (MX lookup); `[cmt] enabled`
//! false, `stamp_header` [`DEFAULT_STAMP`]; `[limits]` 30 hops, 36 MiB,
//! 200 recipients; no `[header_firewall]` section: trusted prefix
//! [`DEFAULT_TRUSTED_PREFIX`] (a section without `trusted_prefixes`: none);
//! `[[rule]] name` "Rule N" (N its place in the file),
//! `priority` after every explicit one in file order, `stop` false,
//! `enabled` true; `[[agent]]` every agent enabled at its default priority.
//!
//! Precedence per recipient, as the engine applies it with the built-in
//! agent priorities: a rule's `reject` > the first rule's `route_to` /
//! `use_connector` > CMT > address spaces. `[[agent]]` priorities order
//! the agents of one event; with CMT before the transport rules, CMT's
//! override stands (a rule's `reject` still wins).

use crate::engine::limits::{
    MAX_ACTIONS, MAX_AGENTS, MAX_CONDITIONS, MAX_CONDSETS, MAX_CONNECTORS, MAX_DFAS, MAX_DFA_BYTES,
    MAX_GROUPS, MAX_INBOUND, MAX_ITEMS, MAX_NETS, MAX_RECIPIENTS, MAX_RENAMES, MAX_REWRITES,
    MAX_RULES, MAX_SPACES, MAX_STRING_BYTES,
};
use crate::engine::policy::{
    Action, Agent, AgentSlot, Condition, Connector, Direction, Group, Inbound, InboundKind, List,
    Location, Net, Rewrite, Rule, Space, Span, Str, Table, TlsPolicy, AGENTS,
};
use regex_automata::dfa::{dense, StartKind};
use regex_automata::nfa::thompson;
use regex_automata::util::syntax;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::ops::Range;
use std::path::Path;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// The CMT stamp header when `[cmt] stamp_header` is not given (the name
/// Exchange's Centralized Mail Flow agent uses, seed 002).
pub const DEFAULT_STAMP: &str = "X-MS-Exchange-Organization-CentralizedMailFlowOverrideSet";

/// The header firewall's trusted prefix when the rule file has no
/// `[header_firewall]` section: fields named so are removed from
/// anonymous mail (as Exchange's edge does), so an Internet sender cannot
/// forge the CMT stamp, an SCL or an authentication verdict.
pub const DEFAULT_TRUSTED_PREFIX: &str = "X-MS-Exchange-Organization-";

/// A send connector's cost when `cost` is not given; the lower cost wins a
/// tie of address-space specificity.
pub const DEFAULT_COST: u32 = 10;

/// Size limits of one pattern's DFA while it is built (dense DFA and
/// determinization), so a pathological regex fails fast with an error.
const DFA_BUILD_LIMIT: usize = 1 << 20;

/// A sparse DFA above this size gets a warning (it eats the shared
/// `MAX_DFA_BYTES`); Unicode classes such as `\w` are the usual cause.
const DFA_WARN_SIZE: usize = 16 * 1024;

/// Stack of the compiler thread: the table is ~600 KiB and debug builds
/// copy it through the stack, which a 2 MiB test thread may not hold.
const COMPILER_STACK: usize = 32 << 20;

/// One error or warning: a 1-based line and column in the rule file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diag {
    /// Line, from 1.
    pub line: usize,
    /// Column in characters, from 1.
    pub col: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Diag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.line, self.col, self.message)
    }
}

/// A rule file that compiled: the validated table, the warnings (which do
/// not fail the check) and the blob to install.
#[derive(Debug)]
pub struct Compiled {
    /// The compiled policy (boxed: it is ~600 KiB).
    pub table: Box<Table>,
    /// Warnings, sorted by position.
    pub warnings: Vec<Diag>,
    /// `encode(&table)`: postcard with a CRC-32C.
    pub blob: Vec<u8>,
}

/// Parses, checks and compiles a rule file; on failure every error found,
/// sorted by position. The blob is verified to decode back to the table.
pub fn compile(text: &str) -> Result<Compiled, Vec<Diag>> {
    let o = run(text);
    match (o.errors.is_empty(), o.table) {
        (true, Some(table)) => Ok(Compiled {
            table,
            warnings: o.warnings,
            blob: o.blob,
        }),
        _ => Err(o.errors),
    }
}

/// Encodes a table as the blob the daemon and the serial upload carry:
/// postcard with a CRC-32C ([`crate::engine::policy::crc32`]).
pub fn encode(table: &Table) -> Vec<u8> {
    postcard::to_allocvec_crc32(table, crate::engine::policy::crc32()).unwrap_or_default()
}

/// `sluice rules check FILE`: prints the table sizes against their
/// capacities, the blob size and version, then every warning and error as
/// `FILE:LINE:COL: warning|error: ...`; returns the exit status (0: no error).
pub fn check_command(path: &Path) -> i32 {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{}: error: {e}", path.display());
            return 1;
        }
    };
    let o = run(&text);
    out!("{}", report(&path.display().to_string(), &o));
    i32::from(!o.errors.is_empty())
}

// ---- driver ----------------------------------------------------------------

/// Everything one compilation found, for `compile` and `check_command`.
struct Outcome {
    table: Option<Box<Table>>,
    blob: Vec<u8>,
    /// Entries each capacity-bound table needed (even beyond capacity).
    sizes: Option<[usize; NCAPS]>,
    errors: Vec<Diag>,
    warnings: Vec<Diag>,
}

/// Runs the compiler on a thread with a large stack (see [`COMPILER_STACK`]).
fn run(text: &str) -> Outcome {
    let spawned = std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("rules".into())
            .stack_size(COMPILER_STACK)
            .spawn_scoped(s, || run_here(text))
            .map(|h| h.join())
    });
    match spawned {
        Ok(Ok(o)) => o,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(e) => Outcome {
            table: None,
            blob: Vec::new(),
            sizes: None,
            errors: vec![Diag {
                line: 1,
                col: 1,
                message: format!("cannot start the compiler thread: {e}"),
            }],
            warnings: Vec::new(),
        },
    }
}

fn run_here(text: &str) -> Outcome {
    let mut cx = Cx::new(text);
    let root = match DeTable::parse(text) {
        Ok(r) => r,
        Err(e) => {
            let at = e.span().map_or(0, |s| s.start);
            cx.err(at, e.message().to_string());
            return cx.finish(None, Vec::new(), None);
        }
    };
    let model = parse_model(&mut cx, root.get_ref());
    check_model(&mut cx, &model);
    let mut b = Builder::new();
    emit(&mut cx, &mut b, &model, text);
    let sizes = b.sizes();
    for (i, c) in b.counters.iter().enumerate() {
        if let (Some(at), Some(info)) = (c.over, CAPS.get(i)) {
            cx.err(
                at,
                format!(
                    "too many {} ({} > {}, {})",
                    info.noun, c.need, info.max, info.konst
                ),
            );
        }
    }
    let table = b.t;
    let mut blob = Vec::new();
    if cx.errors.is_empty() {
        if let Err(e) = table.validate() {
            cx.err(
                0,
                format!("internal error: the compiled table is invalid ({e:?})"),
            );
        } else {
            blob = encode(&table);
            match Table::from_blob(&blob) {
                Ok(back) if back == *table => {}
                Ok(_) => cx.err(0, "internal error: the blob does not decode to the table"),
                Err(e) => cx.err(
                    0,
                    format!("internal error: the blob does not decode ({e:?})"),
                ),
            }
        }
    }
    cx.finish(Some(table), blob, Some(sizes))
}

/// The text `check_command` prints for one outcome.
fn report(file: &str, o: &Outcome) -> String {
    let mut out = String::new();
    if let Some(sizes) = &o.sizes {
        for (info, need) in CAPS.iter().zip(sizes.iter()) {
            let unit = if info.bytes { " bytes" } else { "" };
            out.push_str(&format!(
                "{:<12}{:>7} / {}{unit}\n",
                info.label, need, info.max
            ));
        }
    }
    match (&o.table, o.errors.is_empty()) {
        (Some(t), true) => out.push_str(&format!(
            "blob: {} bytes, version {:016X}\n",
            o.blob.len(),
            t.version
        )),
        _ => out.push_str(&format!(
            "not compiled: {} error{}\n",
            o.errors.len(),
            if o.errors.len() == 1 { "" } else { "s" }
        )),
    }
    let mut all: Vec<(&Diag, &str)> = o
        .errors
        .iter()
        .map(|d| (d, "error"))
        .chain(o.warnings.iter().map(|d| (d, "warning")))
        .collect();
    all.sort_by_key(|(d, _)| (d.line, d.col));
    for (d, kind) in all {
        out.push_str(&format!(
            "{file}:{}:{}: {kind}: {}\n",
            d.line, d.col, d.message
        ));
    }
    out
}

/// 64-bit FNV-1a of the rule file's text: the policy's version.
fn fnv1a64(text: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

// ---- diagnostics context ---------------------------------------------------

/// Compilation context: the text (for positions), errors and warnings as
/// byte offsets, and the DFAs built so far (by pattern).
struct Cx<'t> {
    text: &'t str,
    lines: Vec<usize>,
    errors: Vec<(usize, String)>,
    warnings: Vec<(usize, String)>,
    dfas: HashMap<String, Result<Vec<u8>, PatError>>,
}

#[derive(Clone)]
struct PatError {
    /// Byte offset of the problem in the pattern, when known.
    offset: Option<usize>,
    message: String,
}

impl<'t> Cx<'t> {
    fn new(text: &'t str) -> Self {
        let mut lines = vec![0];
        lines.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Cx {
            text,
            lines,
            errors: Vec::new(),
            warnings: Vec::new(),
            dfas: HashMap::new(),
        }
    }

    fn err(&mut self, at: usize, m: impl Into<String>) {
        self.errors.push((at, m.into()));
    }

    fn warn(&mut self, at: usize, m: impl Into<String>) {
        self.warnings.push((at, m.into()));
    }

    /// 1-based line and column (in characters) of byte offset `at`.
    fn line_col(&self, at: usize) -> (usize, usize) {
        let at = at.min(self.text.len());
        let line = self.lines.partition_point(|&s| s <= at).max(1);
        let start = self.lines.get(line - 1).copied().unwrap_or(0);
        let col = match self.text.get(start..at) {
            Some(s) => s.chars().count(),
            None => at - start,
        };
        (line, col + 1)
    }

    fn line_of(&self, at: usize) -> usize {
        self.line_col(at).0
    }

    fn diags(&self, v: &[(usize, String)]) -> Vec<Diag> {
        let mut out: Vec<Diag> = v
            .iter()
            .map(|(at, m)| {
                let (line, col) = self.line_col(*at);
                Diag {
                    line,
                    col,
                    message: m.clone(),
                }
            })
            .collect();
        out.sort_by_key(|d| (d.line, d.col));
        out.dedup();
        out
    }

    fn finish(
        self,
        table: Option<Box<Table>>,
        blob: Vec<u8>,
        sizes: Option<[usize; NCAPS]>,
    ) -> Outcome {
        Outcome {
            table,
            blob,
            sizes,
            errors: self.diags(&self.errors),
            warnings: self.diags(&self.warnings),
        }
    }

    /// Builds (or recalls) the sparse DFA of `pattern`.
    fn dfa(&mut self, pattern: &str) -> Result<Vec<u8>, PatError> {
        if let Some(r) = self.dfas.get(pattern) {
            return r.clone();
        }
        let r = build_dfa(pattern);
        self.dfas.insert(pattern.to_string(), r.clone());
        r
    }
}

// ---- TOML access -----------------------------------------------------------

type Val<'i> = Spanned<DeValue<'i>>;

/// A string value with the byte range of its TOML literal.
#[derive(Debug, Clone)]
struct S {
    v: String,
    span: Range<usize>,
}

impl S {
    fn at(&self) -> usize {
        self.span.start
    }
}

/// The known entries of one TOML table, in file order.
struct Fields<'a, 'i> {
    list: Vec<(&'a str, usize, &'a Val<'i>)>,
}

impl<'a, 'i> Fields<'a, 'i> {
    /// Collects `t`'s entries; a key not in `allowed` is an error at the key.
    fn new(cx: &mut Cx<'_>, t: &'a DeTable<'i>, allowed: &[&str], ctx: &str) -> Self {
        let mut list = Vec::new();
        for (k, v) in t.iter() {
            let name: &str = k.get_ref().as_ref();
            if allowed.contains(&name) {
                list.push((name, k.span().start, v));
            } else {
                cx.err(k.span().start, unknown_key(name, allowed, ctx));
            }
        }
        list.sort_by_key(|e| e.1);
        Fields { list }
    }

    fn get(&self, key: &str) -> Option<&'a Val<'i>> {
        self.list.iter().find(|e| e.0 == key).map(|e| e.2)
    }

    fn key_at(&self, key: &str) -> Option<usize> {
        self.list.iter().find(|e| e.0 == key).map(|e| e.1)
    }
}

pub(crate) fn unknown_key(name: &str, allowed: &[&str], ctx: &str) -> String {
    let near = allowed
        .iter()
        .map(|a| (edit_distance(name, a), *a))
        .min_by_key(|(d, _)| *d);
    match near {
        Some((d, a)) if d <= 2 && d < name.len() => {
            format!("unknown key \"{name}\" in {ctx} (did you mean \"{a}\"?)")
        }
        _ => format!(
            "unknown key \"{name}\" in {ctx} (expected one of: {})",
            allowed.join(", ")
        ),
    }
}

pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev.get(j).copied().unwrap_or(0) + usize::from(ca != *cb);
            let del = prev.get(j + 1).copied().unwrap_or(0) + 1;
            let ins = cur.get(j).copied().unwrap_or(0) + 1;
            cur.push(sub.min(del).min(ins));
        }
        prev = cur;
    }
    prev.last().copied().unwrap_or(0)
}

fn type_err(cx: &mut Cx<'_>, v: &Val<'_>, key: &str, want: &str) {
    cx.err(
        v.span().start,
        format!("\"{key}\" must be {want}, not a {}", v.get_ref().type_str()),
    );
}

fn get_str(cx: &mut Cx<'_>, v: &Val<'_>, key: &str) -> Option<S> {
    match v.get_ref() {
        DeValue::String(s) => Some(S {
            v: s.to_string(),
            span: v.span(),
        }),
        _ => {
            type_err(cx, v, key, "a string");
            None
        }
    }
}

/// A string or an array of strings.
fn get_strs(cx: &mut Cx<'_>, v: &Val<'_>, key: &str) -> Vec<S> {
    match v.get_ref() {
        DeValue::String(s) => vec![S {
            v: s.to_string(),
            span: v.span(),
        }],
        DeValue::Array(a) => {
            let mut out = Vec::new();
            for e in a.iter() {
                match e.get_ref() {
                    DeValue::String(s) => out.push(S {
                        v: s.to_string(),
                        span: e.span(),
                    }),
                    _ => type_err(cx, e, key, "a list of strings"),
                }
            }
            out
        }
        _ => {
            type_err(cx, v, key, "a string or a list of strings");
            Vec::new()
        }
    }
}

fn get_bool(cx: &mut Cx<'_>, v: &Val<'_>, key: &str) -> Option<bool> {
    match v.get_ref() {
        DeValue::Boolean(b) => Some(*b),
        _ => {
            type_err(cx, v, key, "true or false");
            None
        }
    }
}

fn get_int(cx: &mut Cx<'_>, v: &Val<'_>, key: &str, lo: i64, hi: i64) -> Option<i64> {
    match v.get_ref() {
        DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
            Ok(n) if (lo..=hi).contains(&n) => Some(n),
            _ => {
                cx.err(
                    v.span().start,
                    format!("\"{key}\" = {i} is out of range ({lo} to {hi})"),
                );
                None
            }
        },
        _ => {
            type_err(cx, v, key, "an integer");
            None
        }
    }
}

fn get_table<'a, 'i>(cx: &mut Cx<'_>, v: &'a Val<'i>, key: &str) -> Option<&'a DeTable<'i>> {
    match v.get_ref() {
        DeValue::Table(t) => Some(t),
        _ => {
            type_err(cx, v, key, "a table");
            None
        }
    }
}

/// An array of tables (`[[key]]` or `key = [{...}, ...]`), each with the
/// position of its header or brace.
fn get_tables<'a, 'i>(cx: &mut Cx<'_>, v: &'a Val<'i>, key: &str) -> Vec<(&'a DeTable<'i>, usize)> {
    match v.get_ref() {
        DeValue::Array(a) => {
            let mut out = Vec::new();
            for e in a.iter() {
                match e.get_ref() {
                    DeValue::Table(t) => out.push((t, e.span().start)),
                    _ => type_err(cx, e, key, "a list of tables"),
                }
            }
            out
        }
        DeValue::Table(_) => {
            cx.err(
                v.span().start,
                format!("\"{key}\" must be an array of tables: write [[{key}]]"),
            );
            Vec::new()
        }
        _ => {
            type_err(cx, v, key, "an array of tables");
            Vec::new()
        }
    }
}

/// A table of string values (`{ "a" = "b", ... }`), in file order.
fn get_str_map(cx: &mut Cx<'_>, v: &Val<'_>, key: &str) -> Vec<(S, S)> {
    let Some(t) = get_table(cx, v, key) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (k, val) in t.iter() {
        let name = S {
            v: k.get_ref().to_string(),
            span: k.span(),
        };
        if let Some(s) = get_str(cx, val, &format!("{key}.{}", name.v)) {
            out.push((name, s));
        }
    }
    out.sort_by_key(|(k, _)| k.at());
    out
}

// ---- value syntax ----------------------------------------------------------

/// A domain name, lowercased: labels of letters, digits, `-` and `_`
/// (non-ASCII letters allowed for internationalised names).
fn domain(s: &str) -> Result<String, String> {
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
fn address(s: &str, star: bool) -> Result<String, String> {
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
fn network(s: &str) -> Result<(Net, bool), String> {
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

fn show_net(n: &Net) -> String {
    let ip = Ipv6Addr::from(n.addr);
    match ip.to_ipv4_mapped() {
        Some(v4) if n.prefix >= 96 => format!("{v4}/{}", n.prefix - 96),
        _ => format!("{ip}/{}", n.prefix),
    }
}

/// A smart host: `host`, `host:port`, `[v6]` or `[v6]:port`.
fn smart_host(s: &str) -> Result<String, String> {
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
fn header_name(s: &str) -> Result<String, String> {
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
fn header_value(s: &str) -> Result<String, String> {
    match s.chars().find(|c| c.is_control() && *c != '\t') {
        Some(c) => Err(format!(
            "bad header value {s:?}: control character {c:?} (a value is one line)"
        )),
        None => Ok(s.to_string()),
    }
}

/// A reply: code, enhanced status code, text.
type Reply = (u16, (u8, u16, u16), String);

/// `reject`: "4xx|5xx X.Y.Z text", the class X equal to the code's first digit.
fn reject(s: &str) -> Result<Reply, String> {
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
    Ok((n, (class, subject, detail), text.to_string()))
}

/// Compiles one pattern to a sparse DFA (bytes in native endianness).
fn build_dfa(pattern: &str) -> Result<Vec<u8>, PatError> {
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

// ---- the model: the rule file, checked, names resolved ---------------------

#[derive(Debug, Clone, PartialEq, Eq)]
enum SpaceM {
    Any,
    Accepted,
    Domain(String),
    Subdomains(String),
}

impl fmt::Display for SpaceM {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpaceM::Any => f.write_str("*"),
            SpaceM::Accepted => f.write_str("--"),
            SpaceM::Domain(d) => f.write_str(d),
            SpaceM::Subdomains(d) => write!(f, "*.{d}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum CondM {
    Sender(Vec<String>),
    SenderDomain(Vec<String>),
    SenderGroup(u16),
    Recipient(Vec<String>),
    RecipientDomain(Vec<String>),
    RecipientGroup(u16),
    SenderLocation(Location),
    RecipientLocation(Location),
    HeaderPresent(String),
    HeaderAbsent(String),
    HeaderMatches(String, String),
    HeaderNotMatches(String, String),
    Inbound(u16),
    ClientNetwork(Vec<Net>),
    AttachmentMatches(String),
}

impl CondM {
    /// Evaluation order inside a set: cheap tests first, patterns last.
    fn cost(&self) -> u8 {
        match self {
            CondM::SenderLocation(_) | CondM::RecipientLocation(_) | CondM::Inbound(_) => 0,
            CondM::ClientNetwork(_) => 1,
            CondM::Sender(_)
            | CondM::SenderDomain(_)
            | CondM::Recipient(_)
            | CondM::RecipientDomain(_) => 2,
            CondM::SenderGroup(_) | CondM::RecipientGroup(_) => 3,
            CondM::HeaderPresent(_) | CondM::HeaderAbsent(_) => 4,
            CondM::HeaderMatches(..) | CondM::HeaderNotMatches(..) => 5,
            CondM::AttachmentMatches(_) => 6,
        }
    }

    /// The header a presence/pattern condition needs present.
    fn needs_header(&self) -> Option<&str> {
        match self {
            CondM::HeaderPresent(h)
            | CondM::HeaderMatches(h, _)
            | CondM::HeaderNotMatches(h, _) => Some(h),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
enum ActM {
    RouteTo(String),
    UseConnector(u16),
    AddHeader(String, String),
    SetHeader(String, String),
    RemoveHeader(String),
    RewriteRecipient(String),
    AddRecipient(String),
    Reject(u16, (u8, u16, u16), String),
}

type CondSet = Vec<(CondM, usize)>;

struct RuleM {
    name: String,
    at: usize,
    priority: Option<(u32, usize)>,
    stop: bool,
    enabled: bool,
    when: CondSet,
    when_at: usize,
    except: Vec<(CondSet, usize)>,
    actions: Vec<(ActM, usize)>,
    /// Whether `then` has any key (an action dropped for an error is not
    /// "no action").
    has_then: bool,
}

struct GroupM {
    name: S,
    members: Vec<String>,
}

struct InboundM {
    name: S,
    kind: InboundKind,
    nets: Vec<Net>,
    tls: Option<String>,
}

struct ConnM {
    name: S,
    spaces: Vec<(SpaceM, usize)>,
    smart_hosts: Vec<String>,
    tls: TlsPolicy,
    cost: u32,
}

struct RewriteM {
    dir: Direction,
    from: String,
    to: String,
    at: usize,
}

/// `[limits]` as given; what is missing keeps the empty table's default.
#[derive(Default)]
struct LimitsM {
    max_hops: Option<u16>,
    max_message_size: Option<u64>,
    max_recipients: Option<u32>,
}

struct Model {
    accepted: Vec<String>,
    default_domain: Option<String>,
    default_at: usize,
    groups: Vec<GroupM>,
    inbound: Vec<InboundM>,
    connectors: Vec<ConnM>,
    rewrites: Vec<RewriteM>,
    cmt_enabled: bool,
    cmt_from: Vec<u16>,
    /// Where each `from_inbound` entry is (beside `cmt_from`).
    cmt_from_at: Vec<usize>,
    cmt_stamp: String,
    trusted: Vec<String>,
    renames: Vec<(String, String, usize)>,
    limits: LimitsM,
    blocked: Vec<Net>,
    rules: Vec<RuleM>,
    agents: Vec<AgentSlot>,
    /// Groups named by some rule (disabled ones included).
    group_used: Vec<bool>,
    /// Connectors named by some rule's `use_connector`.
    conn_named: Vec<bool>,
}

const TOP_KEYS: &[&str] = &[
    "version",
    "domains",
    "groups",
    "inbound",
    "connector",
    "rewrite",
    "cmt",
    "header_firewall",
    "connection_filter",
    "limits",
    "agent",
    "rule",
];

const COND_KEYS: &[&str] = &[
    "sender",
    "sender_domain",
    "sender_group",
    "recipient",
    "recipient_domain",
    "recipient_group",
    "sender_location",
    "recipient_location",
    "header",
    "header_absent",
    "header_value_matches",
    "header_value_not_matches",
    "inbound",
    "client_network",
    "attachment_name_matches",
];

const ACTION_KEYS: &[&str] = &[
    "route_to",
    "use_connector",
    "add_header",
    "set_header",
    "remove_header",
    "rewrite_recipient",
    "add_recipient",
    "reject",
];

fn parse_model(cx: &mut Cx<'_>, root: &DeTable<'_>) -> Model {
    let top = Fields::new(cx, root, TOP_KEYS, "the rule file");
    let mut m = Model {
        accepted: Vec::new(),
        default_domain: None,
        default_at: 0,
        groups: Vec::new(),
        inbound: Vec::new(),
        connectors: Vec::new(),
        rewrites: Vec::new(),
        cmt_enabled: false,
        cmt_from: Vec::new(),
        cmt_from_at: Vec::new(),
        cmt_stamp: DEFAULT_STAMP.to_string(),
        trusted: Vec::new(),
        renames: Vec::new(),
        limits: LimitsM::default(),
        blocked: Vec::new(),
        rules: Vec::new(),
        agents: AGENTS
            .iter()
            .map(|(agent, stage, priority, _)| AgentSlot {
                agent: *agent,
                stage: *stage,
                priority: *priority,
                enabled: true,
            })
            .collect(),
        group_used: Vec::new(),
        conn_named: Vec::new(),
    };
    if let Some(v) = top.get("version") {
        if let Some(n) = get_int(cx, v, "version", i64::MIN, i64::MAX) {
            if n != 1 {
                cx.err(
                    v.span().start,
                    format!("version = {n}: this sluice reads rule files of version 1"),
                );
            }
        }
    }
    if let Some(v) = top.get("domains") {
        parse_domains(cx, &mut m, v);
    }
    if let Some(v) = top.get("groups") {
        parse_groups(cx, &mut m, v);
    }
    if let Some(v) = top.get("inbound") {
        parse_inbound(cx, &mut m, v);
    }
    if let Some(v) = top.get("connector") {
        parse_connectors(cx, &mut m, v);
    }
    if let Some(v) = top.get("rewrite") {
        parse_rewrites(cx, &mut m, v);
    }
    if let Some(v) = top.get("cmt") {
        parse_cmt(cx, &mut m, v);
    }
    match top.get("header_firewall") {
        Some(v) => parse_firewall(cx, &mut m, v),
        // No section: Exchange's edge behaviour, anonymous mail loses the
        // organisation's own headers (an explicit section says exactly
        // what is stripped, possibly nothing).
        None => m.trusted.push(DEFAULT_TRUSTED_PREFIX.to_string()),
    }
    if let Some(v) = top.get("connection_filter") {
        if let Some(t) = get_table(cx, v, "connection_filter") {
            let f = Fields::new(cx, t, &["blocked_networks"], "[connection_filter]");
            if let Some(v) = f.get("blocked_networks") {
                m.blocked = nets(cx, v, "blocked_networks");
            }
        }
    }
    if let Some(v) = top.get("limits") {
        parse_limits(cx, &mut m, v);
    }
    if let Some(v) = top.get("agent") {
        parse_agents(cx, &mut m, v);
    }
    m.group_used = vec![false; m.groups.len()];
    m.conn_named = vec![false; m.connectors.len()];
    if let Some(v) = top.get("rule") {
        for (i, (t, at)) in get_tables(cx, v, "rule").into_iter().enumerate() {
            if let Some(r) = parse_rule(cx, &mut m, t, at, i + 1) {
                m.rules.push(r);
            }
        }
    }
    m
}

fn parse_domains(cx: &mut Cx<'_>, m: &mut Model, v: &Val<'_>) {
    let Some(t) = get_table(cx, v, "domains") else {
        return;
    };
    let f = Fields::new(cx, t, &["accepted", "default"], "[domains]");
    if let Some(v) = f.get("accepted") {
        for s in get_strs(cx, v, "accepted") {
            match domain(&s.v) {
                Ok(d) if m.accepted.contains(&d) => {
                    cx.warn(s.at(), format!("accepted domain \"{d}\" is listed twice"))
                }
                Ok(d) => m.accepted.push(d),
                Err(e) => cx.err(s.at(), e),
            }
        }
    }
    if let Some(v) = f.get("default") {
        if let Some(s) = get_str(cx, v, "default") {
            match domain(&s.v) {
                Ok(d) if m.accepted.contains(&d) => {
                    m.default_domain = Some(d);
                    m.default_at = s.at();
                }
                Ok(d) => cx.err(
                    s.at(),
                    format!("default domain \"{d}\" is not among the accepted domains"),
                ),
                Err(e) => cx.err(s.at(), e),
            }
        }
    }
}

fn parse_groups(cx: &mut Cx<'_>, m: &mut Model, v: &Val<'_>) {
    let Some(t) = get_table(cx, v, "groups") else {
        return;
    };
    let mut groups: Vec<GroupM> = Vec::new();
    for (k, val) in t.iter() {
        let name = S {
            v: k.get_ref().to_string(),
            span: k.span(),
        };
        if name.v.trim().is_empty() {
            cx.err(name.at(), "a group needs a name");
            continue;
        }
        let mut members = Vec::new();
        for s in get_strs(cx, val, &name.v) {
            match address(&s.v, true) {
                Ok(a) => members.push(a),
                Err(e) => cx.err(s.at(), e),
            }
        }
        groups.push(GroupM { name, members });
    }
    groups.sort_by_key(|g| g.name.at());
    m.groups = groups;
}

fn parse_inbound(cx: &mut Cx<'_>, m: &mut Model, v: &Val<'_>) {
    for (nth, (t, at)) in get_tables(cx, v, "inbound").into_iter().enumerate() {
        let f = Fields::new(
            cx,
            t,
            &["name", "kind", "client_ips", "tls_certificate_name"],
            "[[inbound]]",
        );
        let default = format!("Inbound {}", nth + 1);
        let Some(name) = name_or(cx, &f, at, "[[inbound]]", Some(default)) else {
            continue;
        };
        if let Some(prev) = m.inbound.iter().find(|i| i.name.v == name.v) {
            let line = cx.line_of(prev.name.at());
            cx.err(
                name.at(),
                format!(
                    "duplicate inbound connector name \"{}\" (first on line {line})",
                    name.v
                ),
            );
            continue;
        }
        let kind = match f.get("kind").and_then(|v| get_str(cx, v, "kind")) {
            None => InboundKind::Partner,
            Some(s) => match s.v.as_str() {
                "organization" => InboundKind::Organization,
                "partner" => InboundKind::Partner,
                _ => {
                    cx.err(
                        s.at(),
                        format!(
                            "bad kind \"{}\": expected \"organization\" or \"partner\"",
                            s.v
                        ),
                    );
                    InboundKind::Partner
                }
            },
        };
        let nets = f
            .get("client_ips")
            .map(|v| nets(cx, v, "client_ips"))
            .unwrap_or_default();
        let tls = match f
            .get("tls_certificate_name")
            .and_then(|v| get_str(cx, v, "tls_certificate_name"))
        {
            None => None,
            Some(s) => {
                let (star, rest) = match s.v.strip_prefix("*.") {
                    Some(r) => ("*.", r),
                    None => ("", s.v.as_str()),
                };
                match domain(rest) {
                    Ok(d) => Some(format!("{star}{d}")),
                    Err(e) => {
                        cx.err(s.at(), format!("tls_certificate_name: {e}"));
                        None
                    }
                }
            }
        };
        if nets.is_empty() && tls.is_none() {
            cx.warn(
                at,
                format!(
                    "inbound connector \"{}\" attributes no session: it has neither client_ips nor tls_certificate_name",
                    name.v
                ),
            );
        }
        m.inbound.push(InboundM {
            name,
            kind,
            nets,
            tls,
        });
    }
}

fn name_of(cx: &mut Cx<'_>, f: &Fields<'_, '_>, at: usize, ctx: &str) -> Option<S> {
    name_or(cx, f, at, ctx, None)
}

/// The `name` key, or `default` (at the table's position) when it is
/// missing; without a default a missing name is an error.
fn name_or(
    cx: &mut Cx<'_>,
    f: &Fields<'_, '_>,
    at: usize,
    ctx: &str,
    default: Option<String>,
) -> Option<S> {
    match f.get("name") {
        None => match default {
            Some(v) => Some(S { v, span: at..at }),
            None => {
                cx.err(at, format!("{ctx} needs a name"));
                None
            }
        },
        Some(v) => {
            let s = get_str(cx, v, "name")?;
            if s.v.trim().is_empty() || s.v.chars().any(char::is_control) {
                cx.err(
                    s.at(),
                    format!("{ctx}: the name must be non-empty, on one line"),
                );
                return None;
            }
            Some(s)
        }
    }
}

/// A CIDR or a list of them.
fn nets(cx: &mut Cx<'_>, v: &Val<'_>, key: &str) -> Vec<Net> {
    let mut out = Vec::new();
    for s in get_strs(cx, v, key) {
        match network(&s.v) {
            Ok((n, host_bits)) => {
                if host_bits {
                    cx.warn(
                        s.at(),
                        format!(
                            "\"{}\" has host bits set; the network is {}",
                            s.v,
                            show_net(&n)
                        ),
                    );
                }
                out.push(n);
            }
            Err(e) => cx.err(s.at(), e),
        }
    }
    out
}

fn parse_connectors(cx: &mut Cx<'_>, m: &mut Model, v: &Val<'_>) {
    for (nth, (t, at)) in get_tables(cx, v, "connector").into_iter().enumerate() {
        let f = Fields::new(
            cx,
            t,
            &["name", "address_spaces", "smart_hosts", "tls", "cost"],
            "[[connector]]",
        );
        let default = format!("Connector {}", nth + 1);
        let Some(name) = name_or(cx, &f, at, "[[connector]]", Some(default)) else {
            continue;
        };
        if let Some(prev) = m.connectors.iter().find(|c| c.name.v == name.v) {
            let line = cx.line_of(prev.name.at());
            cx.err(
                name.at(),
                format!(
                    "duplicate connector name \"{}\" (first on line {line})",
                    name.v
                ),
            );
            continue;
        }
        let mut spaces: Vec<(SpaceM, usize)> = Vec::new();
        if let Some(v) = f.get("address_spaces") {
            for s in get_strs(cx, v, "address_spaces") {
                let sp = match s.v.as_str() {
                    "*" => Ok(SpaceM::Any),
                    "--" => Ok(SpaceM::Accepted),
                    o => match o.strip_prefix("*.") {
                        Some(d) => domain(d).map(SpaceM::Subdomains),
                        None => domain(o).map(SpaceM::Domain),
                    },
                };
                match sp {
                    Ok(sp) if spaces.iter().any(|(x, _)| *x == sp) => cx.warn(
                        s.at(),
                        format!("address space \"{sp}\" is listed twice"),
                    ),
                    Ok(sp) => spaces.push((sp, s.at())),
                    Err(e) => cx.err(
                        s.at(),
                        format!(
                            "bad address space \"{}\": expected \"*\", \"--\", \"domain\" or \"*.domain\" ({e})",
                            s.v
                        ),
                    ),
                }
            }
        }
        let mut smart_hosts = Vec::new();
        if let Some(v) = f.get("smart_hosts") {
            for s in get_strs(cx, v, "smart_hosts") {
                match smart_host(&s.v) {
                    Ok(h) => smart_hosts.push(h),
                    Err(e) => cx.err(s.at(), e),
                }
            }
        }
        let tls = match f.get("tls").and_then(|v| get_str(cx, v, "tls")) {
            None => TlsPolicy::Opportunistic,
            Some(s) => match s.v.as_str() {
                "opportunistic" => TlsPolicy::Opportunistic,
                "required" => TlsPolicy::Required,
                "verify" => TlsPolicy::Verify,
                _ => {
                    cx.err(
                        s.at(),
                        format!(
                            "bad TLS policy \"{}\": expected \"opportunistic\", \"required\" or \"verify\"",
                            s.v
                        ),
                    );
                    TlsPolicy::Opportunistic
                }
            },
        };
        let cost = f
            .get("cost")
            .and_then(|v| get_int(cx, v, "cost", 0, i64::from(u32::MAX)))
            .map_or(DEFAULT_COST, |n| n as u32);
        m.connectors.push(ConnM {
            name,
            spaces,
            smart_hosts,
            tls,
            cost,
        });
    }
}

fn parse_rewrites(cx: &mut Cx<'_>, m: &mut Model, v: &Val<'_>) {
    for (t, _) in get_tables(cx, v, "rewrite") {
        let f = Fields::new(cx, t, &["direction", "map"], "[[rewrite]]");
        let dir = match f.get("direction").and_then(|v| get_str(cx, v, "direction")) {
            // No direction: inbound (seed 001's rewrite of what comes in).
            None if f.get("direction").is_none() => Some(Direction::Inbound),
            None => None,
            Some(s) => match s.v.as_str() {
                "inbound" => Some(Direction::Inbound),
                "outbound" => Some(Direction::Outbound),
                _ => {
                    cx.err(
                        s.at(),
                        format!(
                            "bad direction \"{}\": expected \"inbound\" or \"outbound\"",
                            s.v
                        ),
                    );
                    None
                }
            },
        };
        let entries = f
            .get("map")
            .map(|v| get_str_map(cx, v, "map"))
            .unwrap_or_default();
        for (from, to) in entries {
            let a = address(&from.v, true)
                .map_err(|e| cx.err(from.at(), e))
                .ok();
            let b = address(&to.v, true).map_err(|e| cx.err(to.at(), e)).ok();
            let (Some(a), Some(b), Some(dir)) = (a, b, dir) else {
                continue;
            };
            if a == b {
                cx.warn(from.at(), format!("\"{a}\" is rewritten to itself"));
                continue;
            }
            if let Some(prev) = m.rewrites.iter().find(|r| r.dir == dir && r.from == a) {
                let line = cx.line_of(prev.at);
                cx.warn(
                    from.at(),
                    format!(
                        "\"{a}\" is already rewritten on line {line}; this entry is never used"
                    ),
                );
                continue;
            }
            m.rewrites.push(RewriteM {
                dir,
                from: a,
                to: b,
                at: from.at(),
            });
        }
    }
}

fn parse_cmt(cx: &mut Cx<'_>, m: &mut Model, v: &Val<'_>) {
    let Some(t) = get_table(cx, v, "cmt") else {
        return;
    };
    let f = Fields::new(cx, t, &["enabled", "from_inbound", "stamp_header"], "[cmt]");
    m.cmt_enabled = f
        .get("enabled")
        .and_then(|v| get_bool(cx, v, "enabled"))
        .unwrap_or(false);
    if let Some(v) = f.get("from_inbound") {
        for s in get_strs(cx, v, "from_inbound") {
            match m.inbound.iter().position(|i| i.name.v == s.v) {
                Some(i) => {
                    m.cmt_from.push(i as u16);
                    m.cmt_from_at.push(s.at());
                }
                None => cx.err(
                    s.at(),
                    unknown_name(
                        "inbound connector",
                        &s.v,
                        m.inbound.iter().map(|i| &i.name.v),
                    ),
                ),
            }
        }
    }
    if let Some(s) = f
        .get("stamp_header")
        .and_then(|v| get_str(cx, v, "stamp_header"))
    {
        match header_name(&s.v) {
            Ok(h) => m.cmt_stamp = h,
            Err(e) => cx.err(s.at(), e),
        }
    }
    let at = v.span().start;
    if m.cmt_enabled {
        if m.default_domain.is_none() {
            cx.err(
                f.key_at("enabled").unwrap_or(at),
                "CMT needs [domains] default: the accepted domain it routes to",
            );
        }
        if m.cmt_from.is_empty() {
            cx.warn(
                f.key_at("enabled").unwrap_or(at),
                "CMT is enabled but from_inbound names no inbound connector: it never applies",
            );
        }
    } else if f.get("enabled").is_none() && !m.cmt_from.is_empty() {
        cx.warn(
            at,
            "[cmt] lists from_inbound but is not enabled (enabled defaults to false)",
        );
    }
}

fn unknown_name<'a>(what: &str, name: &str, known: impl Iterator<Item = &'a String>) -> String {
    let known: Vec<String> = known.map(|k| format!("\"{k}\"")).collect();
    if known.is_empty() {
        format!("unknown {what} \"{name}\" (none is defined)")
    } else {
        format!("unknown {what} \"{name}\" (known: {})", known.join(", "))
    }
}

fn parse_firewall(cx: &mut Cx<'_>, m: &mut Model, v: &Val<'_>) {
    let Some(t) = get_table(cx, v, "header_firewall") else {
        return;
    };
    let f = Fields::new(
        cx,
        t,
        &["trusted_prefixes", "rename_untrusted"],
        "[header_firewall]",
    );
    if let Some(v) = f.get("trusted_prefixes") {
        for s in get_strs(cx, v, "trusted_prefixes") {
            match header_name(&s.v) {
                Ok(h) => m.trusted.push(h),
                Err(e) => cx.err(s.at(), e),
            }
        }
    }
    if let Some(v) = f.get("rename_untrusted") {
        for (from, to) in get_str_map(cx, v, "rename_untrusted") {
            let a = header_name(&from.v).map_err(|e| cx.err(from.at(), e)).ok();
            let b = header_name(&to.v).map_err(|e| cx.err(to.at(), e)).ok();
            if let (Some(a), Some(b)) = (a, b) {
                if a.eq_ignore_ascii_case(&b) {
                    cx.warn(from.at(), format!("\"{a}\" is renamed to itself"));
                }
                m.renames.push((a, b, from.at()));
            }
        }
    }
}

fn parse_limits(cx: &mut Cx<'_>, m: &mut Model, v: &Val<'_>) {
    let Some(t) = get_table(cx, v, "limits") else {
        return;
    };
    let f = Fields::new(
        cx,
        t,
        &["max_hops", "max_message_size", "max_recipients"],
        "[limits]",
    );
    if let Some(n) = f
        .get("max_hops")
        .and_then(|v| get_int(cx, v, "max_hops", 1, i64::from(u16::MAX)))
    {
        m.limits.max_hops = Some(n as u16);
    }
    if let Some(v) = f.get("max_message_size") {
        let size = match v.get_ref() {
            DeValue::Integer(_) => {
                get_int(cx, v, "max_message_size", 1, i64::MAX).map(|n| n as u64)
            }
            DeValue::String(s) => match crate::shell::config::parse_size(s) {
                Some(n) if n > 0 => Some(n),
                _ => {
                    cx.err(
                        v.span().start,
                        format!(
                            "max_message_size = {s:?}: expected e.g. \"36 MiB\", \"512 KiB\", \"1000\""
                        ),
                    );
                    None
                }
            },
            _ => {
                type_err(cx, v, "max_message_size", "a size such as \"36 MiB\"");
                None
            }
        };
        if let Some(n) = size {
            m.limits.max_message_size = Some(n);
        }
    }
    if let Some(n) = f
        .get("max_recipients")
        .and_then(|v| get_int(cx, v, "max_recipients", 1, i64::from(MAX_RECIPIENTS)))
    {
        m.limits.max_recipients = Some(n as u32);
    }
}

fn parse_agents(cx: &mut Cx<'_>, m: &mut Model, v: &Val<'_>) {
    let mut seen: Vec<(usize, usize)> = Vec::new();
    for (t, at) in get_tables(cx, v, "agent") {
        let f = Fields::new(cx, t, &["name", "enabled", "priority"], "[[agent]]");
        let Some(name) = name_of(cx, &f, at, "[[agent]]") else {
            continue;
        };
        let Some(i) = AGENTS.iter().position(|a| a.3 == name.v) else {
            let names: Vec<&str> = AGENTS.iter().map(|a| a.3).collect();
            cx.err(
                name.at(),
                format!(
                    "unknown agent \"{}\" (agents: {})",
                    name.v,
                    names.join(", ")
                ),
            );
            continue;
        };
        if let Some((_, prev)) = seen.iter().find(|(j, _)| *j == i) {
            let line = cx.line_of(*prev);
            cx.err(
                name.at(),
                format!(
                    "agent \"{}\" is configured twice (first on line {line})",
                    name.v
                ),
            );
            continue;
        }
        seen.push((i, name.at()));
        let enabled = f.get("enabled").and_then(|v| get_bool(cx, v, "enabled"));
        if enabled == Some(false) && AGENTS.get(i).is_some_and(|a| a.0 == Agent::RecipientFilter) {
            let at = f.get("enabled").map_or(name.at(), |v| v.span().start);
            cx.err(
                at,
                "agent \"recipient_filter\" cannot be disabled: that would make an open relay \
                 (any client could relay to any domain)",
            );
            continue;
        }
        let priority = f
            .get("priority")
            .and_then(|v| get_int(cx, v, "priority", 1, i64::from(u8::MAX)));
        if let Some(slot) = m.agents.get_mut(i) {
            if let Some(e) = enabled {
                slot.enabled = e;
            }
            if let Some(p) = priority {
                slot.priority = p as u8;
            }
        }
    }
    for (i, a) in m.agents.iter().enumerate() {
        for b in m.agents.iter().skip(i + 1) {
            if a.stage == b.stage && a.priority == b.priority {
                let (an, bn) = (agent_name(a), agent_name(b));
                let at = seen
                    .iter()
                    .find(|(j, _)| {
                        AGENTS
                            .get(*j)
                            .is_some_and(|x| x.0 == b.agent || x.0 == a.agent)
                    })
                    .map_or(v.span().start, |(_, at)| *at);
                cx.warn(
                    at,
                    format!(
                        "agents \"{an}\" and \"{bn}\" have the same priority {} on {:?}; their order is the built-in one",
                        a.priority, a.stage
                    ),
                );
            }
        }
    }
}

fn agent_name(a: &AgentSlot) -> &'static str {
    AGENTS.iter().find(|x| x.0 == a.agent).map_or("?", |x| x.3)
}

fn parse_rule(
    cx: &mut Cx<'_>,
    m: &mut Model,
    t: &DeTable<'_>,
    at: usize,
    nth: usize,
) -> Option<RuleM> {
    let f = Fields::new(
        cx,
        t,
        &[
            "name", "priority", "if", "except", "then", "stop", "enabled",
        ],
        "[[rule]]",
    );
    let name = match f.get("name") {
        None => S {
            v: format!("Rule {nth}"),
            span: at..at,
        },
        Some(_) => name_of(cx, &f, at, "[[rule]]")?,
    };
    if let Some(prev) = m.rules.iter().find(|r| r.name == name.v) {
        let line = cx.line_of(prev.at);
        cx.err(
            name.at(),
            format!("duplicate rule name \"{}\" (first on line {line})", name.v),
        );
    }
    let priority = f.get("priority").and_then(|v| {
        get_int(
            cx,
            v,
            "priority",
            1,
            i64::from(u32::MAX) - i64::from(MAX_RULES as u32),
        )
        .map(|n| (n as u32, v.span().start))
    });
    let stop = f
        .get("stop")
        .and_then(|v| get_bool(cx, v, "stop"))
        .unwrap_or(false);
    let enabled = f
        .get("enabled")
        .and_then(|v| get_bool(cx, v, "enabled"))
        .unwrap_or(true);
    let (when, when_at) = match f.get("if") {
        Some(v) => match get_table(cx, v, "if") {
            Some(t) => (parse_conds(cx, m, t, "the rule's if"), v.span().start),
            None => (Vec::new(), v.span().start),
        },
        None => (Vec::new(), at),
    };
    let mut except = Vec::new();
    if let Some(v) = f.get("except") {
        match v.get_ref() {
            DeValue::Table(_) => cx.err(
                v.span().start,
                "\"except\" is a list of condition sets: write except = [{ ... }]",
            ),
            _ => {
                for (t, eat) in get_tables(cx, v, "except") {
                    except.push((parse_conds(cx, m, t, "the rule's except"), eat));
                }
            }
        }
    }
    let has_then = f
        .get("then")
        .is_some_and(|v| !matches!(v.get_ref(), DeValue::Table(t) if t.is_empty()));
    let actions = match f.get("then") {
        Some(v) => get_table(cx, v, "then")
            .map(|t| parse_actions(cx, m, t))
            .unwrap_or_default(),
        None => Vec::new(),
    };
    Some(RuleM {
        name: name.v,
        at: if f.get("name").is_some() {
            name.span.start
        } else {
            at
        },
        priority,
        stop,
        enabled,
        when,
        when_at,
        except,
        actions,
        has_then,
    })
}

fn pattern(cx: &mut Cx<'_>, s: &S) -> Option<String> {
    match cx.dfa(&s.v) {
        Ok(_) => Some(s.v.clone()),
        Err(e) => {
            let at = match e.offset {
                Some(off) => pattern_offset(cx.text, s, off),
                None => s.at(),
            };
            cx.err(at, e.message);
            None
        }
    }
}

/// Where byte `off` of a pattern is in the file: exact when the literal
/// holds the pattern verbatim (a '...' string or one without escapes).
fn pattern_offset(text: &str, s: &S, off: usize) -> usize {
    let raw = text.get(s.span.clone()).unwrap_or("");
    let q = raw.chars().next().map_or(0, char::len_utf8);
    let verbatim = raw.len() >= 2 * q
        && !raw.starts_with("'''")
        && !raw.starts_with("\"\"\"")
        && raw.get(q..raw.len() - q) == Some(s.v.as_str());
    if verbatim {
        s.span.start + q + off
    } else {
        s.at()
    }
}

fn parse_conds(cx: &mut Cx<'_>, m: &mut Model, t: &DeTable<'_>, ctx: &str) -> CondSet {
    let f = Fields::new(cx, t, COND_KEYS, ctx);
    let mut out: CondSet = Vec::new();
    let mut header: Option<(String, usize)> = None;
    let mut value_conds: Vec<(bool, String, usize)> = Vec::new();
    for &(key, kat, v) in &f.list {
        let vat = v.span().start;
        match key {
            "sender" | "recipient" => {
                let mut list = Vec::new();
                for s in get_strs(cx, v, key) {
                    match address(&s.v, true) {
                        Ok(a) => list.push(a),
                        Err(e) => cx.err(s.at(), e),
                    }
                }
                let c = if key == "sender" {
                    CondM::Sender(list)
                } else {
                    CondM::Recipient(list)
                };
                out.push((c, vat));
            }
            "sender_domain" | "recipient_domain" => {
                let mut list = Vec::new();
                for s in get_strs(cx, v, key) {
                    match domain(&s.v) {
                        Ok(d) => list.push(d),
                        Err(e) => cx.err(s.at(), e),
                    }
                }
                let c = if key == "sender_domain" {
                    CondM::SenderDomain(list)
                } else {
                    CondM::RecipientDomain(list)
                };
                out.push((c, vat));
            }
            "sender_group" | "recipient_group" => {
                let Some(s) = get_str(cx, v, key) else {
                    continue;
                };
                match m.groups.iter().position(|g| g.name.v == s.v) {
                    Some(i) => {
                        if let Some(u) = m.group_used.get_mut(i) {
                            *u = true;
                        }
                        let c = if key == "sender_group" {
                            CondM::SenderGroup(i as u16)
                        } else {
                            CondM::RecipientGroup(i as u16)
                        };
                        out.push((c, vat));
                    }
                    None => cx.err(
                        s.at(),
                        unknown_name("group", &s.v, m.groups.iter().map(|g| &g.name.v)),
                    ),
                }
            }
            "sender_location" | "recipient_location" => {
                let Some(s) = get_str(cx, v, key) else {
                    continue;
                };
                let loc = match s.v.as_str() {
                    "inside" => Location::Inside,
                    "outside" => Location::Outside,
                    _ => {
                        cx.err(
                            s.at(),
                            format!("bad {key} \"{}\": expected \"inside\" or \"outside\"", s.v),
                        );
                        continue;
                    }
                };
                let c = if key == "sender_location" {
                    CondM::SenderLocation(loc)
                } else {
                    CondM::RecipientLocation(loc)
                };
                out.push((c, vat));
            }
            "header" | "header_absent" => {
                let Some(s) = get_str(cx, v, key) else {
                    continue;
                };
                match header_name(&s.v) {
                    Ok(h) if key == "header" => header = Some((h, vat)),
                    Ok(h) => out.push((CondM::HeaderAbsent(h), vat)),
                    Err(e) => cx.err(s.at(), e),
                }
            }
            "header_value_matches" | "header_value_not_matches" => {
                if f.get("header").is_none() {
                    cx.err(
                        kat,
                        format!("\"{key}\" needs \"header\": the field whose values are matched"),
                    );
                }
                if let Some(p) = get_str(cx, v, key).and_then(|s| pattern(cx, &s)) {
                    value_conds.push((key == "header_value_matches", p, vat));
                }
            }
            "inbound" => {
                let Some(s) = get_str(cx, v, key) else {
                    continue;
                };
                match m.inbound.iter().position(|i| i.name.v == s.v) {
                    Some(i) => out.push((CondM::Inbound(i as u16), vat)),
                    None => cx.err(
                        s.at(),
                        unknown_name(
                            "inbound connector",
                            &s.v,
                            m.inbound.iter().map(|i| &i.name.v),
                        ),
                    ),
                }
            }
            "client_network" => {
                let list = nets(cx, v, key);
                out.push((CondM::ClientNetwork(list), vat));
            }
            "attachment_name_matches" => {
                if let Some(p) = get_str(cx, v, key).and_then(|s| pattern(cx, &s)) {
                    out.push((CondM::AttachmentMatches(p), vat));
                }
            }
            _ => {}
        }
    }
    if let Some((h, hat)) = header {
        if value_conds.is_empty() {
            out.push((CondM::HeaderPresent(h), hat));
        } else {
            for (matches, p, at) in value_conds {
                let c = if matches {
                    CondM::HeaderMatches(h.clone(), p)
                } else {
                    CondM::HeaderNotMatches(h.clone(), p)
                };
                out.push((c, at));
            }
        }
    }
    out
}

fn parse_actions(cx: &mut Cx<'_>, m: &mut Model, t: &DeTable<'_>) -> Vec<(ActM, usize)> {
    let f = Fields::new(cx, t, ACTION_KEYS, "the rule's then");
    let mut out = Vec::new();
    for &(key, _, v) in &f.list {
        let vat = v.span().start;
        match key {
            "route_to" => {
                if let Some(s) = get_str(cx, v, key) {
                    match domain(&s.v) {
                        Ok(d) => out.push((ActM::RouteTo(d), vat)),
                        Err(e) => cx.err(s.at(), format!("route_to: {e}")),
                    }
                }
            }
            "use_connector" => {
                if let Some(s) = get_str(cx, v, key) {
                    match m.connectors.iter().position(|c| c.name.v == s.v) {
                        Some(i) => {
                            if let Some(n) = m.conn_named.get_mut(i) {
                                *n = true;
                            }
                            out.push((ActM::UseConnector(i as u16), vat));
                        }
                        None => cx.err(
                            s.at(),
                            unknown_name("connector", &s.v, m.connectors.iter().map(|c| &c.name.v)),
                        ),
                    }
                }
            }
            "add_header" | "set_header" => {
                for (name, value) in get_str_map(cx, v, key) {
                    let n = header_name(&name.v).map_err(|e| cx.err(name.at(), e)).ok();
                    let val = header_value(&value.v)
                        .map_err(|e| cx.err(value.at(), e))
                        .ok();
                    if let (Some(n), Some(val)) = (n, val) {
                        let a = if key == "add_header" {
                            ActM::AddHeader(n, val)
                        } else {
                            ActM::SetHeader(n, val)
                        };
                        out.push((a, name.at()));
                    }
                }
            }
            "remove_header" => {
                for s in get_strs(cx, v, key) {
                    match header_name(&s.v) {
                        Ok(h) => out.push((ActM::RemoveHeader(h), s.at())),
                        Err(e) => cx.err(s.at(), e),
                    }
                }
            }
            "rewrite_recipient" => {
                if let Some(s) = get_str(cx, v, key) {
                    match address(&s.v, false) {
                        Ok(a) => out.push((ActM::RewriteRecipient(a), vat)),
                        Err(e) => cx.err(s.at(), e),
                    }
                }
            }
            "add_recipient" => {
                for s in get_strs(cx, v, key) {
                    match address(&s.v, false) {
                        Ok(a) => out.push((ActM::AddRecipient(a), s.at())),
                        Err(e) => cx.err(s.at(), e),
                    }
                }
            }
            "reject" => {
                if let Some(s) = get_str(cx, v, key) {
                    match reject(&s.v) {
                        Ok((code, status, text)) => {
                            out.push((ActM::Reject(code, status, text), vat))
                        }
                        Err(e) => cx.err(s.at(), e),
                    }
                }
            }
            _ => {}
        }
    }
    if f.get("route_to").is_some() && f.get("use_connector").is_some() {
        if let Some(at) = f.key_at("use_connector") {
            cx.err(
                at,
                "route_to and use_connector exclude each other: a rule overrides routing one way",
            );
        }
    }
    out
}

// ---- whole-file checks (warnings) ------------------------------------------

fn check_model(cx: &mut Cx<'_>, m: &Model) {
    let accepted: HashSet<&str> = m.accepted.iter().map(String::as_str).collect();
    // groups never used
    for (g, used) in m.groups.iter().zip(m.group_used.iter()) {
        if !used {
            cx.warn(
                g.name.at(),
                format!("group \"{}\" is not used by any rule", g.name.v),
            );
        }
    }
    // rules that can never match, duplicate priorities, no action
    let mut prios: HashMap<u32, &str> = HashMap::new();
    for r in m.rules.iter().filter(|r| r.enabled) {
        if let Some(why) = never_matches(m, &accepted, &r.when) {
            cx.warn(
                r.when_at,
                format!("rule \"{}\" can never match: {why}", r.name),
            );
        }
        for (set, at) in &r.except {
            if set.is_empty() {
                cx.warn(
                    *at,
                    format!(
                        "rule \"{}\" never applies: this except set is empty, so it always vetoes",
                        r.name
                    ),
                );
            } else if set.iter().all(|(c, _)| r.when.iter().any(|(w, _)| w == c)) {
                cx.warn(
                    *at,
                    format!(
                        "rule \"{}\" never applies: this except set holds whenever its if does",
                        r.name
                    ),
                );
            }
        }
        if !r.has_then && !r.stop {
            cx.warn(r.at, format!("rule \"{}\" has no action", r.name));
        }
        let has = |f: fn(&ActM) -> bool| r.actions.iter().any(|(a, _)| f(a));
        if has(|a| matches!(a, ActM::Reject(..)))
            && has(|a| matches!(a, ActM::RouteTo(_) | ActM::UseConnector(_)))
        {
            cx.warn(
                r.at,
                format!(
                    "rule \"{}\" both rejects and routes: the reject wins, the routing is never used",
                    r.name
                ),
            );
        }
        if let Some((p, pat)) = r.priority {
            if let Some(first) = prios.get(&p) {
                cx.warn(
                    pat,
                    format!(
                        "rules \"{first}\" and \"{}\" have the same priority {p}; file order decides",
                        r.name
                    ),
                );
            } else {
                prios.insert(p, &r.name);
            }
        }
        for (a, at) in &r.actions {
            if let ActM::RouteTo(d) = a {
                let covered = m
                    .connectors
                    .iter()
                    .any(|c| c.spaces.iter().any(|(s, _)| covers(s, d, &accepted)));
                if !covered {
                    cx.warn(
                        *at,
                        format!("route_to \"{d}\": no connector's address space covers it, so it has no route"),
                    );
                }
            }
        }
    }
    cmt_from_anonymous(cx, m);
    // connectors
    for (ci, c) in m.connectors.iter().enumerate() {
        let named = m.conn_named.get(ci).copied().unwrap_or(false);
        if c.spaces.is_empty() {
            if !named {
                cx.warn(
                    c.name.at(),
                    format!(
                        "connector \"{}\" is never used: it has no address space and no rule's use_connector names it",
                        c.name.v
                    ),
                );
            }
            continue;
        }
        for (s, sat) in &c.spaces {
            if let Some(d) = m
                .connectors
                .iter()
                .take(ci)
                .find(|d| d.cost == c.cost && d.spaces.iter().any(|(x, _)| x == s))
            {
                cx.warn(
                    *sat,
                    format!(
                        "connectors \"{}\" and \"{}\" both have address space \"{s}\" and cost {}: \"{}\" (first in the file) is chosen",
                        d.name.v, c.name.v, c.cost, d.name.v
                    ),
                );
            }
        }
        let beaten_by = |s: &SpaceM| {
            m.connectors.iter().enumerate().find(|(di, d)| {
                *di != ci
                    && (d.cost < c.cost || (d.cost == c.cost && *di < ci))
                    && d.spaces.iter().any(|(x, _)| x == s)
            })
        };
        if !named && c.spaces.iter().all(|(s, _)| beaten_by(s).is_some()) {
            let mut by: Vec<String> = Vec::new();
            for (s, _) in &c.spaces {
                if let Some((_, d)) = beaten_by(s) {
                    let n = format!("\"{}\"", d.name.v);
                    if !by.contains(&n) {
                        by.push(n);
                    }
                }
            }
            cx.warn(
                c.name.at(),
                format!(
                    "connector \"{}\" is never chosen: each of its address spaces is also on {} with a lower cost (or earlier in the file)",
                    c.name.v,
                    by.join(", ")
                ),
            );
        } else if !named
            && m.accepted.is_empty()
            && c.spaces.iter().all(|(s, _)| *s == SpaceM::Accepted)
        {
            cx.warn(
                c.name.at(),
                format!(
                    "connector \"{}\" is never used: its address space \"--\" means the accepted domains, and there are none",
                    c.name.v
                ),
            );
        }
    }
}

/// CMT from a connector whose sessions are anonymous (kind not
/// `organization`): the header firewall strips the stamp from its mail
/// when a trusted prefix covers the stamp header, so CMT never sees a
/// message from it as stamped and re-stamps and re-routes it on every
/// pass. Only when every agent involved runs: attribution (else no
/// session has a connector), the header firewall and CMT.
fn cmt_from_anonymous(cx: &mut Cx<'_>, m: &Model) {
    let runs = |a: Agent| m.agents.iter().any(|s| s.agent == a && s.enabled);
    if !m.cmt_enabled
        || !runs(Agent::Cmt)
        || !runs(Agent::HeaderFirewall)
        || !runs(Agent::Attribution)
    {
        return;
    }
    let stamp = m.cmt_stamp.as_bytes();
    let Some(prefix) = m
        .trusted
        .iter()
        .find(|p| crate::engine::policy::starts_with_ci(stamp, p.as_bytes()))
    else {
        return;
    };
    for (i, at) in m.cmt_from.iter().zip(m.cmt_from_at.iter()) {
        let Some(c) = m.inbound.get(usize::from(*i)) else {
            continue;
        };
        if c.kind == InboundKind::Organization {
            continue;
        }
        cx.warn(
            *at,
            format!(
                "[cmt] from_inbound \"{}\" is not an organization connector: its mail is anonymous, \
                 so the header firewall strips the stamp \"{}\" (trusted prefix \"{prefix}\") and a \
                 message from it is stamped and re-routed again on every pass",
                c.name.v, m.cmt_stamp
            ),
        );
    }
}

/// Whether space `s` matches `domain`.
fn covers(s: &SpaceM, domain: &str, accepted: &HashSet<&str>) -> bool {
    match s {
        SpaceM::Any => true,
        SpaceM::Accepted => accepted.contains(domain),
        SpaceM::Domain(d) => d == domain,
        SpaceM::Subdomains(d) => domain
            .strip_suffix(d.as_str())
            .is_some_and(|p| p.len() > 1 && p.ends_with('.')),
    }
}

/// Why a condition set can never hold, if it is contradictory.
fn never_matches(m: &Model, accepted: &HashSet<&str>, set: &CondSet) -> Option<String> {
    let conds: Vec<&CondM> = set.iter().map(|(c, _)| c).collect();
    for c in &conds {
        match c {
            CondM::Sender(l)
            | CondM::Recipient(l)
            | CondM::SenderDomain(l)
            | CondM::RecipientDomain(l)
                if l.is_empty() =>
            {
                return Some("a condition has an empty list".into());
            }
            CondM::ClientNetwork(l) if l.is_empty() => {
                return Some("client_network is an empty list".into());
            }
            _ => {}
        }
    }
    let sender_loc = conds.iter().find_map(|c| match c {
        CondM::SenderLocation(l) => Some(*l),
        _ => None,
    });
    let rcpt_loc = conds.iter().find_map(|c| match c {
        CondM::RecipientLocation(l) => Some(*l),
        _ => None,
    });
    if let Some(loc) = sender_loc {
        for c in &conds {
            if let CondM::Inbound(i) = c {
                if let Some(ib) = m.inbound.get(usize::from(*i)) {
                    let inside = ib.kind == InboundKind::Organization;
                    if inside != (loc == Location::Inside) {
                        return Some(format!(
                            "inbound \"{}\" is {} connector, so its sender is always {}",
                            ib.name.v,
                            if inside {
                                "an organization"
                            } else {
                                "a partner"
                            },
                            if inside { "inside" } else { "outside" }
                        ));
                    }
                }
            }
        }
    }
    if let Some(loc) = rcpt_loc {
        let want_inside = loc == Location::Inside;
        for c in &conds {
            let (what, domains): (&str, Vec<&str>) = match c {
                CondM::RecipientDomain(l) => {
                    ("recipient_domain", l.iter().map(String::as_str).collect())
                }
                CondM::Recipient(l) => ("recipient", l.iter().map(|a| dom_of(a)).collect()),
                CondM::RecipientGroup(g) => match m.groups.get(usize::from(*g)) {
                    Some(g) if !g.members.is_empty() => (
                        "recipient_group",
                        g.members.iter().map(|a| dom_of(a)).collect(),
                    ),
                    _ => continue,
                },
                _ => continue,
            };
            if !domains.is_empty() && domains.iter().all(|d| accepted.contains(d) != want_inside) {
                return Some(if want_inside {
                    format!("recipient_location = \"inside\" but no domain of {what} is accepted")
                } else {
                    format!(
                        "recipient_location = \"outside\" but every domain of {what} is accepted"
                    )
                });
            }
        }
    }
    for c in &conds {
        if let CondM::HeaderAbsent(h) = c {
            if conds
                .iter()
                .any(|o| o.needs_header().is_some_and(|x| x.eq_ignore_ascii_case(h)))
            {
                return Some(format!("header \"{h}\" must be both present and absent"));
            }
        }
        if let CondM::HeaderMatches(h, p) = c {
            if conds.iter().any(|o| {
                matches!(o, CondM::HeaderNotMatches(h2, p2) if h2.eq_ignore_ascii_case(h) && p2 == p)
            }) {
                return Some(format!(
                    "header \"{h}\" must both match and not match the same pattern"
                ));
            }
        }
    }
    None
}

fn dom_of(addr: &str) -> &str {
    addr.rsplit_once('@').map_or("", |(_, d)| d)
}

// ---- emission into the fixed-size table ------------------------------------

const NCAPS: usize = 16;

#[derive(Clone, Copy)]
enum Cap {
    Rules,
    Condsets,
    Conditions,
    Actions,
    Groups,
    Inbound,
    Connectors,
    Spaces,
    Nets,
    Rewrites,
    Renames,
    Items,
    Strings,
    Dfas,
    DfaBytes,
    Agents,
}

struct CapInfo {
    label: &'static str,
    noun: &'static str,
    konst: &'static str,
    max: usize,
    bytes: bool,
}

const fn cap(label: &'static str, noun: &'static str, konst: &'static str, max: usize) -> CapInfo {
    CapInfo {
        label,
        noun,
        konst,
        max,
        bytes: false,
    }
}

/// Every capacity-bound table, in [`Cap`] order.
const CAPS: [CapInfo; NCAPS] = [
    cap("rules", "rules", "MAX_RULES", MAX_RULES),
    cap("condsets", "condition sets", "MAX_CONDSETS", MAX_CONDSETS),
    cap("conditions", "conditions", "MAX_CONDITIONS", MAX_CONDITIONS),
    cap("actions", "actions", "MAX_ACTIONS", MAX_ACTIONS),
    cap("groups", "groups", "MAX_GROUPS", MAX_GROUPS),
    cap("inbound", "inbound connectors", "MAX_INBOUND", MAX_INBOUND),
    cap(
        "connectors",
        "send connectors",
        "MAX_CONNECTORS",
        MAX_CONNECTORS,
    ),
    cap("spaces", "address spaces", "MAX_SPACES", MAX_SPACES),
    cap("nets", "networks", "MAX_NETS", MAX_NETS),
    cap("rewrites", "rewrite entries", "MAX_REWRITES", MAX_REWRITES),
    cap("renames", "header renames", "MAX_RENAMES", MAX_RENAMES),
    cap("items", "list items", "MAX_ITEMS", MAX_ITEMS),
    CapInfo {
        bytes: true,
        ..cap(
            "strings",
            "string bytes",
            "MAX_STRING_BYTES",
            MAX_STRING_BYTES,
        )
    },
    cap("dfas", "patterns", "MAX_DFAS", MAX_DFAS),
    CapInfo {
        bytes: true,
        ..cap("dfa bytes", "DFA bytes", "MAX_DFA_BYTES", MAX_DFA_BYTES)
    },
    cap("agents", "agents", "MAX_AGENTS", MAX_AGENTS),
];

#[derive(Default, Clone, Copy)]
struct Counter {
    need: usize,
    /// Where the capacity was first exceeded.
    over: Option<usize>,
}

/// Pushes `x` counting against its capacity; the index (0 when full).
fn put<T, const N: usize>(v: &mut heapless::Vec<T, N>, x: T, c: &mut Counter, at: usize) -> u16 {
    c.need += 1;
    let i = v.len();
    if v.push(x).is_err() {
        c.over.get_or_insert(at);
        return 0;
    }
    i as u16
}

struct Builder {
    t: Box<Table>,
    counters: [Counter; NCAPS],
    strs: HashMap<String, Str>,
    lists: HashMap<Vec<(u32, u32)>, List>,
    dfa_index: HashMap<String, u16>,
    empty_set: Option<u16>,
}

impl Builder {
    fn new() -> Self {
        Builder {
            t: Box::default(),
            counters: [Counter::default(); NCAPS],
            strs: HashMap::new(),
            lists: HashMap::new(),
            dfa_index: HashMap::new(),
            empty_set: None,
        }
    }

    fn sizes(&self) -> [usize; NCAPS] {
        let mut s = [0; NCAPS];
        for (o, c) in s.iter_mut().zip(self.counters.iter()) {
            *o = c.need;
        }
        s
    }

    /// A string in the pool (identical strings are stored once).
    fn s(&mut self, text: &str, at: usize) -> Str {
        if text.is_empty() {
            return Str::default();
        }
        if let Some(s) = self.strs.get(text) {
            return *s;
        }
        let off = self.t.strings.len();
        let c = &mut self.counters[Cap::Strings as usize];
        c.need += text.len();
        if self.t.strings.extend_from_slice(text.as_bytes()).is_err() {
            c.over.get_or_insert(at);
            return Str::default();
        }
        let s = Str {
            off: off as u32,
            len: text.len() as u32,
        };
        self.strs.insert(text.to_string(), s);
        s
    }

    /// A list of strings in `items` (identical lists are stored once).
    fn list(&mut self, xs: &[String], at: usize) -> List {
        if xs.is_empty() {
            return List::default();
        }
        let strs: Vec<Str> = xs.iter().map(|x| self.s(x, at)).collect();
        let key: Vec<(u32, u32)> = strs.iter().map(|s| (s.off, s.len)).collect();
        if let Some(l) = self.lists.get(&key) {
            return *l;
        }
        let first = self.t.items.len();
        for s in &strs {
            put(
                &mut self.t.items,
                *s,
                &mut self.counters[Cap::Items as usize],
                at,
            );
        }
        let l = List {
            first: first as u16,
            count: strs.len() as u16,
        };
        self.lists.insert(key, l);
        l
    }

    fn nets(&mut self, nets: &[Net], at: usize) -> Span {
        let first = self.t.nets.len();
        for n in nets {
            put(
                &mut self.t.nets,
                *n,
                &mut self.counters[Cap::Nets as usize],
                at,
            );
        }
        Span {
            first: first as u16,
            count: nets.len() as u16,
        }
    }

    /// The DFA of `pattern` (built by [`Cx::dfa`]), 4-byte aligned.
    fn dfa(&mut self, cx: &mut Cx<'_>, pattern: &str, at: usize) -> u16 {
        if let Some(i) = self.dfa_index.get(pattern) {
            return *i;
        }
        let Ok(bytes) = cx.dfa(pattern) else {
            return 0;
        };
        if bytes.len() > DFA_WARN_SIZE {
            cx.warn(
                at,
                format!(
                    "pattern {pattern:?} compiles to a large DFA ({} bytes); (?-u) ASCII classes such as (?-u:\\w) are much smaller",
                    bytes.len()
                ),
            );
        }
        let pad = (4 - self.t.dfa_bytes.len() % 4) % 4;
        let c = &mut self.counters[Cap::DfaBytes as usize];
        c.need += pad + bytes.len();
        let ok = self
            .t
            .dfa_bytes
            .resize(self.t.dfa_bytes.len() + pad, 0)
            .is_ok()
            && self.t.dfa_bytes.extend_from_slice(&bytes).is_ok();
        if !ok {
            c.over.get_or_insert(at);
        }
        let off = self.t.dfa_bytes.len().saturating_sub(bytes.len());
        let i = put(
            &mut self.t.dfas,
            (off as u32, bytes.len() as u32),
            &mut self.counters[Cap::Dfas as usize],
            at,
        );
        self.dfa_index.insert(pattern.to_string(), i);
        i
    }

    /// Pushes the conditions of `set` (cheap ones first): their run.
    fn conds(&mut self, cx: &mut Cx<'_>, set: &CondSet) -> Span {
        let mut sorted: Vec<&(CondM, usize)> = set.iter().collect();
        sorted.sort_by_key(|(c, _)| c.cost());
        let mut conds = Vec::new();
        for (c, cat) in sorted {
            let cat = *cat;
            let cond = match c {
                CondM::Sender(l) => Condition::Sender(self.list(l, cat)),
                CondM::SenderDomain(l) => Condition::SenderDomain(self.list(l, cat)),
                CondM::SenderGroup(g) => Condition::SenderGroup(*g),
                CondM::Recipient(l) => Condition::Recipient(self.list(l, cat)),
                CondM::RecipientDomain(l) => Condition::RecipientDomain(self.list(l, cat)),
                CondM::RecipientGroup(g) => Condition::RecipientGroup(*g),
                CondM::SenderLocation(l) => Condition::SenderLocation(*l),
                CondM::RecipientLocation(l) => Condition::RecipientLocation(*l),
                CondM::HeaderPresent(h) => Condition::HeaderPresent(self.s(h, cat)),
                CondM::HeaderAbsent(h) => Condition::HeaderAbsent(self.s(h, cat)),
                CondM::HeaderMatches(h, p) => {
                    Condition::HeaderMatches(self.s(h, cat), self.dfa(cx, p, cat))
                }
                CondM::HeaderNotMatches(h, p) => {
                    Condition::HeaderNotMatches(self.s(h, cat), self.dfa(cx, p, cat))
                }
                CondM::Inbound(i) => Condition::Inbound(*i),
                CondM::ClientNetwork(n) => Condition::ClientNetwork(self.nets(n, cat)),
                CondM::AttachmentMatches(p) => Condition::AttachmentMatches(self.dfa(cx, p, cat)),
            };
            conds.push((cond, cat));
        }
        // strings, lists, networks and DFAs are placed above, so the
        // conditions of the set are contiguous
        let first = self.t.conditions.len();
        for (cond, cat) in &conds {
            put(
                &mut self.t.conditions,
                *cond,
                &mut self.counters[Cap::Conditions as usize],
                *cat,
            );
        }
        Span {
            first: first as u16,
            count: conds.len() as u16,
        }
    }

    fn condset(&mut self, span: Span, at: usize) -> u16 {
        put(
            &mut self.t.condsets,
            span,
            &mut self.counters[Cap::Condsets as usize],
            at,
        )
    }
}

fn emit(cx: &mut Cx<'_>, b: &mut Builder, m: &Model, text: &str) {
    b.t.version = fnv1a64(text);
    b.t.accepted = b.list(&m.accepted, 0);
    b.t.default_domain = m.default_domain.as_ref().map(|d| b.s(d, m.default_at));
    for g in &m.groups {
        let name = b.s(&g.name.v, g.name.at());
        let members = b.list(&g.members, g.name.at());
        put(
            &mut b.t.groups,
            Group { name, members },
            &mut b.counters[Cap::Groups as usize],
            g.name.at(),
        );
    }
    for i in &m.inbound {
        let at = i.name.at();
        let name = b.s(&i.name.v, at);
        let nets = b.nets(&i.nets, at);
        let tls_name = i.tls.as_ref().map(|t| b.s(t, at));
        let ib = Inbound {
            name,
            kind: i.kind,
            nets,
            tls_name,
        };
        put(
            &mut b.t.inbound,
            ib,
            &mut b.counters[Cap::Inbound as usize],
            at,
        );
    }
    b.t.blocked = b.nets(&m.blocked, 0);
    for c in &m.connectors {
        let at = c.name.at();
        let name = b.s(&c.name.v, at);
        let smart_hosts = b.list(&c.smart_hosts, at);
        let first = b.t.spaces.len();
        for (s, sat) in &c.spaces {
            let sp = match s {
                SpaceM::Any => Space::Any,
                SpaceM::Accepted => Space::Accepted,
                SpaceM::Domain(d) => Space::Domain(b.s(d, *sat)),
                SpaceM::Subdomains(d) => Space::Subdomains(b.s(d, *sat)),
            };
            put(
                &mut b.t.spaces,
                sp,
                &mut b.counters[Cap::Spaces as usize],
                *sat,
            );
        }
        let conn = Connector {
            name,
            spaces: Span {
                first: first as u16,
                count: c.spaces.len() as u16,
            },
            smart_hosts,
            tls: c.tls,
            cost: c.cost,
        };
        put(
            &mut b.t.connectors,
            conn,
            &mut b.counters[Cap::Connectors as usize],
            at,
        );
    }
    let mut rw: Vec<&RewriteM> = m.rewrites.iter().collect();
    rw.sort_by_key(|r| (r.dir == Direction::Outbound, r.from.starts_with("*@"), r.at));
    for r in rw {
        let from = b.s(&r.from, r.at);
        let to = b.s(&r.to, r.at);
        let e = Rewrite {
            direction: r.dir,
            from,
            to,
        };
        put(
            &mut b.t.rewrites,
            e,
            &mut b.counters[Cap::Rewrites as usize],
            r.at,
        );
    }
    b.t.cmt.enabled = m.cmt_enabled;
    b.t.cmt.from_inbound = m
        .cmt_from
        .iter()
        .filter(|i| **i < 32)
        .fold(0u32, |mask, i| mask | (1u32 << i));
    b.t.cmt.stamp = b.s(&m.cmt_stamp, 0);
    b.t.trusted_prefixes = b.list(&m.trusted, 0);
    for (from, to, at) in &m.renames {
        let pair = (b.s(from, *at), b.s(to, *at));
        put(
            &mut b.t.renames,
            pair,
            &mut b.counters[Cap::Renames as usize],
            *at,
        );
    }
    let l = &mut b.t.limits;
    l.max_hops = m.limits.max_hops.unwrap_or(l.max_hops);
    l.max_message_size = m.limits.max_message_size.unwrap_or(l.max_message_size);
    l.max_recipients = m.limits.max_recipients.unwrap_or(l.max_recipients);
    // rules: enabled ones, by priority (stable); no priority: after, in file order
    let mut rules: Vec<&RuleM> = m.rules.iter().filter(|r| r.enabled).collect();
    rules.sort_by_key(|r| r.priority.map_or((1, 0), |(p, _)| (0, p)));
    let max_explicit = m
        .rules
        .iter()
        .filter_map(|r| r.priority.map(|p| p.0))
        .max()
        .unwrap_or(0);
    let mut next = max_explicit;
    for r in rules {
        let priority = match r.priority {
            Some((p, _)) => p,
            None => {
                next = next.saturating_add(1);
                next
            }
        };
        let name = b.s(&r.name, r.at);
        let when = match (r.when.is_empty(), b.empty_set) {
            (true, Some(i)) => i,
            (empty, _) => {
                let span = b.conds(cx, &r.when);
                let i = b.condset(span, r.when_at);
                if empty {
                    b.empty_set = Some(i);
                }
                i
            }
        };
        // the except sets are contiguous in condsets: their conditions
        // first, then their spans together
        let spans: Vec<(Span, usize)> = r
            .except
            .iter()
            .map(|(set, at)| (b.conds(cx, set), *at))
            .collect();
        let efirst = b.t.condsets.len();
        for (sp, at) in &spans {
            b.condset(*sp, *at);
        }
        let mut acts = Vec::new();
        for (a, at) in &r.actions {
            let act = match a {
                ActM::RouteTo(d) => Action::RouteTo(b.s(d, *at)),
                ActM::UseConnector(c) => Action::UseConnector(*c),
                ActM::AddHeader(n, v) => Action::AddHeader(b.s(n, *at), b.s(v, *at)),
                ActM::SetHeader(n, v) => Action::SetHeader(b.s(n, *at), b.s(v, *at)),
                ActM::RemoveHeader(n) => Action::RemoveHeader(b.s(n, *at)),
                ActM::RewriteRecipient(x) => Action::RewriteRecipient(b.s(x, *at)),
                ActM::AddRecipient(x) => Action::AddRecipient(b.s(x, *at)),
                ActM::Reject(code, status, text) => Action::Reject {
                    code: *code,
                    status: *status,
                    text: b.s(text, *at),
                },
            };
            acts.push((act, *at));
        }
        let afirst = b.t.actions.len();
        for (a, at) in &acts {
            put(
                &mut b.t.actions,
                *a,
                &mut b.counters[Cap::Actions as usize],
                *at,
            );
        }
        let rule = Rule {
            name,
            priority,
            when,
            except: Span {
                first: efirst as u16,
                count: spans.len() as u16,
            },
            actions: Span {
                first: afirst as u16,
                count: acts.len() as u16,
            },
            stop: r.stop,
        };
        put(
            &mut b.t.rules,
            rule,
            &mut b.counters[Cap::Rules as usize],
            r.at,
        );
    }
    for a in &m.agents {
        put(
            &mut b.t.agents,
            *a,
            &mut b.counters[Cap::Agents as usize],
            0,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::policy::{Agent, Stage};
    use regex_automata::dfa::Automaton;

    const SAMPLE: &str = include_str!("../../../../config/rules.toml");

    fn ok(text: &str) -> Compiled {
        match compile(text) {
            Ok(c) => c,
            Err(e) => panic!("expected to compile, got {e:#?}"),
        }
    }

    fn errs(text: &str) -> Vec<Diag> {
        match compile(text) {
            Ok(c) => panic!("expected errors, compiled with warnings {:?}", c.warnings),
            Err(e) => e,
        }
    }

    fn warnings(text: &str) -> Vec<String> {
        ok(text).warnings.into_iter().map(|d| d.message).collect()
    }

    fn s(t: &Table, x: Str) -> &str {
        std::str::from_utf8(t.str(x)).unwrap()
    }

    fn list(t: &Table, l: List) -> Vec<String> {
        t.list(l)
            .map(|b| String::from_utf8(b.to_vec()).unwrap())
            .collect()
    }

    fn dfa_matches(t: &Table, i: u16, hay: &str) -> bool {
        let d = t.dfa(i).expect("dfa loads");
        matches!(
            d.try_search_fwd(&regex_automata::Input::new(hay)),
            Ok(Some(_))
        )
    }

    // ---- the normative sample ----------------------------------------------

    #[test]
    fn the_normative_sample_compiles_without_warnings() {
        assert_eq!(SAMPLE, include_str!("../../../../config/rules.toml"));
        let c = ok(SAMPLE);
        assert!(c.warnings.is_empty(), "{:#?}", c.warnings);
        let t = &c.table;
        let names: Vec<&str> = t.rules.iter().map(|r| s(t, r.name)).collect();
        assert_eq!(
            names,
            [
                "Route via Trend",
                "Sales via Trend",
                "Cloud to cloud via on-premises",
                "Journal executives",
                "Refuse executables from outside"
            ]
        );
        let prios: Vec<u32> = t.rules.iter().map(|r| r.priority).collect();
        assert_eq!(prios, [1, 2, 3, 4, 5]);
        assert!(t.rules[4].stop && !t.rules[0].stop);
        assert_eq!(
            list(t, t.accepted),
            ["contoso.com", "eu.contoso.com", "us.contoso.com"]
        );
        assert_eq!(t.default_domain.map(|d| s(t, d)), Some("contoso.com"));
    }

    #[test]
    fn the_sample_connectors_and_spaces() {
        let c = ok(SAMPLE);
        let t = &c.table;
        let names: Vec<&str> = t.connectors.iter().map(|c| s(t, c.name)).collect();
        assert_eq!(
            names,
            ["internet", "trend", "fabrikam", "onprem", "journal"]
        );
        let spaces = |i: usize| -> Vec<Space> {
            let sp = t.connectors[i].spaces;
            t.spaces[usize::from(sp.first)..][..usize::from(sp.count)].to_vec()
        };
        assert_eq!(spaces(0), [Space::Any]);
        match spaces(2).as_slice() {
            [Space::Domain(a), Space::Subdomains(b)] => {
                assert_eq!((s(t, *a), s(t, *b)), ("fabrikam.com", "fabrikam.com"));
            }
            o => panic!("fabrikam spaces {o:?}"),
        }
        assert_eq!(spaces(3), [Space::Accepted]);
        assert_eq!(t.connectors[3].cost, 1);
        assert_eq!(t.connectors[0].cost, DEFAULT_COST);
        assert_eq!(t.connectors[1].tls, TlsPolicy::Required);
        assert_eq!(t.connectors[2].tls, TlsPolicy::Verify);
        assert_eq!(t.connectors[0].tls, TlsPolicy::Opportunistic);
        assert_eq!(
            list(t, t.connectors[2].smart_hosts),
            ["mx1.fabrikam.example", "mx2.fabrikam.example:2525"]
        );
        assert!(list(t, t.connectors[0].smart_hosts).is_empty());
    }

    #[test]
    fn the_sample_inbound_cmt_firewall_limits() {
        let c = ok(SAMPLE);
        let t = &c.table;
        let names: Vec<&str> = t.inbound.iter().map(|i| s(t, i.name)).collect();
        assert_eq!(
            names,
            ["exchange-online", "exchange-onprem", "partner-fabrikam"]
        );
        assert_eq!(t.inbound[0].kind, InboundKind::Organization);
        assert_eq!(t.inbound[2].kind, InboundKind::Partner);
        assert_eq!(
            t.inbound[0].tls_name.map(|n| s(t, n)),
            Some("mail.protection.outlook.com")
        );
        // 127.0.0.2/32 as ::ffff:127.0.0.2/128
        let n = t.nets[usize::from(t.inbound[0].nets.first)];
        assert_eq!(n.prefix, 128);
        assert_eq!(
            n.addr,
            Ipv6Addr::from([0, 0, 0, 0, 0, 0xffff, 0x7f00, 2]).octets()
        );
        let onprem = t.inbound[1].nets;
        assert_eq!(onprem.count, 2);
        assert_eq!(
            t.nets[usize::from(onprem.first) + 1].addr,
            Ipv6Addr::LOCALHOST.octets()
        );
        assert!(t.cmt.enabled);
        assert_eq!(t.cmt.from_inbound, 0b1, "exchange-online is inbound 0");
        assert_eq!(s(t, t.cmt.stamp), DEFAULT_STAMP);
        assert_eq!(list(t, t.trusted_prefixes), ["X-MS-Exchange-Organization-"]);
        assert_eq!(t.renames.len(), 1);
        assert_eq!(
            s(t, t.renames[0].1),
            "X-Forefront-Antispam-Report-Untrusted"
        );
        assert_eq!(t.limits.max_hops, 30);
        assert_eq!(t.limits.max_message_size, 36 * 1024 * 1024);
        assert_eq!(t.limits.max_recipients, 200);
        assert_eq!(t.agents.len(), MAX_AGENTS);
        assert!(t.agents.iter().all(|a| a.enabled));
    }

    #[test]
    fn the_sample_rewrites_exact_before_wildcard() {
        let c = ok(SAMPLE);
        let t = &c.table;
        let rw: Vec<(Direction, &str, &str)> = t
            .rewrites
            .iter()
            .map(|r| (r.direction, s(t, r.from), s(t, r.to)))
            .collect();
        assert_eq!(
            rw,
            [
                (
                    Direction::Inbound,
                    "johnny@contoso.com",
                    "johnny@eu.contoso.com"
                ),
                (
                    Direction::Inbound,
                    "willie@contoso.com",
                    "willie@us.contoso.com"
                ),
                (Direction::Outbound, "*@eu.contoso.com", "*@contoso.com"),
                (Direction::Outbound, "*@us.contoso.com", "*@contoso.com"),
            ]
        );
    }

    #[test]
    fn the_sample_rules_conditions_and_patterns() {
        let c = ok(SAMPLE);
        let t = &c.table;
        assert_eq!(
            t.dfas.len(),
            3,
            "two header patterns and one attachment pattern"
        );
        let conds = |set: u16| -> Vec<Condition> {
            let sp = t.condsets[usize::from(set)];
            t.conditions[usize::from(sp.first)..][..usize::from(sp.count)].to_vec()
        };
        let acts = |r: &Rule| -> Vec<Action> {
            t.actions[usize::from(r.actions.first)..][..usize::from(r.actions.count)].to_vec()
        };
        // rule 1: header X-RoutethroughTM not matching ^public$, except secure domains
        let r = &t.rules[0];
        let [Condition::HeaderNotMatches(h, d)] = conds(r.when)[..] else {
            panic!("{:?}", conds(r.when))
        };
        assert_eq!(s(t, h), "X-RoutethroughTM");
        assert!(dfa_matches(t, d, "PUBLIC") && dfa_matches(t, d, "public"));
        assert!(!dfa_matches(t, d, "On") && !dfa_matches(t, d, "not public"));
        assert_eq!(r.except.count, 1);
        let [Condition::RecipientDomain(l)] = conds(r.except.first)[..] else {
            panic!()
        };
        assert_eq!(list(t, l), ["secure.com", "secure.eu"]);
        let [Action::RouteTo(d)] = acts(r)[..] else {
            panic!()
        };
        assert_eq!(s(t, d), "trend.local");
        // rule 2: group and location (location first: it is cheaper)
        let r = &t.rules[1];
        assert_eq!(
            conds(r.when),
            [
                Condition::RecipientLocation(Location::Outside),
                Condition::SenderGroup(0)
            ]
        );
        assert_eq!(s(t, t.groups[0].name), "TrendUsers");
        assert_eq!(
            list(t, t.groups[0].members),
            ["jaap@contoso.com", "*@sales.contoso.com"]
        );
        // rule 3: inbound, use_connector onprem, except X-OriginatorOrg
        let r = &t.rules[2];
        assert_eq!(
            conds(r.when),
            [
                Condition::Inbound(0),
                Condition::RecipientLocation(Location::Inside)
            ]
        );
        assert_eq!(acts(r), [Action::UseConnector(3)]);
        let [Condition::HeaderMatches(h, d)] = conds(r.except.first)[..] else {
            panic!()
        };
        assert_eq!(s(t, h), "X-OriginatorOrg");
        assert!(dfa_matches(t, d, "contoso.com") && dfa_matches(t, d, "EU.Contoso.com"));
        assert!(!dfa_matches(t, d, "fabrikam.com") && !dfa_matches(t, d, "xcontoso.com"));
        // rule 4: add a recipient and a header
        let r = &t.rules[3];
        match acts(r)[..] {
            [Action::AddRecipient(a), Action::AddHeader(n, v)] => {
                assert_eq!(s(t, a), "journal@journaling.contoso.com");
                assert_eq!((s(t, n), s(t, v)), ("X-Journaled", "yes"));
            }
            ref o => panic!("{o:?}"),
        }
        // rule 5: attachment pattern and reject
        let r = &t.rules[4];
        let [Condition::SenderLocation(Location::Outside), Condition::AttachmentMatches(d)] =
            conds(r.when)[..]
        else {
            panic!("{:?}", conds(r.when))
        };
        assert!(dfa_matches(t, d, "invoice.EXE") && dfa_matches(t, d, "a.js"));
        assert!(!dfa_matches(t, d, "a.exe.txt") && !dfa_matches(t, d, "report.pdf"));
        match acts(r)[..] {
            [Action::Reject { code, status, text }] => {
                assert_eq!((code, status), (550, (5, 7, 1)));
                assert_eq!(s(t, text), "Executable attachments are refused");
            }
            ref o => panic!("{o:?}"),
        }
    }

    #[test]
    fn the_version_is_a_hash_of_the_text() {
        let a = ok(SAMPLE);
        let b = ok(SAMPLE);
        assert_eq!(a.table.version, b.table.version);
        assert_eq!(a.blob, b.blob);
        assert_eq!(a.table.version, fnv1a64(SAMPLE));
        let c = ok(&format!("{SAMPLE}\n# a comment\n"));
        assert_ne!(a.table.version, c.table.version);
        assert_eq!(fnv1a64(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64("a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn the_blob_round_trips() {
        let c = ok(SAMPLE);
        assert_eq!(c.blob, encode(&c.table));
        // from_blob returns the ~600 KiB table by value: a big stack
        std::thread::Builder::new()
            .stack_size(COMPILER_STACK)
            .spawn(move || {
                let back = Table::from_blob(&c.blob).expect("decodes");
                assert!(back == *c.table);
                let mut bad = c.blob.clone();
                let mid = bad.len() / 2;
                bad[mid] ^= 0x40;
                assert!(Table::from_blob(&bad).is_err());
            })
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn the_check_report_of_the_sample() {
        let o = run(SAMPLE);
        let out = report("rules.toml", &o);
        assert!(out.contains("rules             5 / 1024\n"), "{out}");
        assert!(out.contains("connectors        5 / 64\n"), "{out}");
        assert!(out.contains("dfas              3 / 256\n"), "{out}");
        assert!(out.contains(" / 65536 bytes\n"), "{out}");
        assert!(out.contains(&format!(
            "blob: {} bytes, version {:016X}\n",
            o.blob.len(),
            fnv1a64(SAMPLE)
        )));
        assert!(!out.contains("error") && !out.contains("warning"), "{out}");
        println!("{out}");
    }

    #[test]
    fn the_check_command_exit_status() {
        let dir = std::env::temp_dir().join(format!("sluice-rules-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.toml");
        std::fs::write(&good, SAMPLE).unwrap();
        assert_eq!(check_command(&good), 0);
        let bad = dir.join("bad.toml");
        std::fs::write(&bad, "[[rule]]\nprority = 1\n").unwrap();
        assert_eq!(check_command(&bad), 1);
        assert_eq!(check_command(&dir.join("missing.toml")), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    // ---- minimal files and defaults ----------------------------------------

    #[test]
    fn a_file_with_only_domains_is_valid() {
        let c = ok("[domains]\naccepted = [\"example.com\"]\n");
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        assert_eq!(list(&c.table, c.table.accepted), ["example.com"]);
        assert!(c.table.rules.is_empty() && c.table.connectors.is_empty());
        assert!(!c.table.cmt.enabled);
        let c = ok("[domains]\n");
        assert!(c.warnings.is_empty());
        let c = ok("");
        assert!(c.warnings.is_empty());
        assert_eq!(c.table.agents.len(), MAX_AGENTS);
    }

    #[test]
    fn domains_are_lowercased_and_ipv6_networks_kept() {
        let c = ok(concat!(
            "[domains]\naccepted = [\"Example.COM\"]\ndefault = \"example.com\"\n",
            "[connection_filter]\nblocked_networks = [\"2001:db8::/32\", \"198.51.100.0/24\"]\n",
        ));
        let t = &c.table;
        assert_eq!(list(t, t.accepted), ["example.com"]);
        assert_eq!(t.blocked.count, 2);
        let n = t.nets[usize::from(t.blocked.first)];
        assert_eq!(n.prefix, 32);
        assert_eq!(&n.addr[..4], &[0x20, 0x01, 0x0d, 0xb8]);
        let v4 = t.nets[usize::from(t.blocked.first) + 1];
        assert_eq!(v4.prefix, 96 + 24);
        assert!(v4.contains(
            &std::net::Ipv4Addr::new(198, 51, 100, 7)
                .to_ipv6_mapped()
                .octets()
        ));
        assert!(!v4.contains(
            &std::net::Ipv4Addr::new(198, 51, 101, 7)
                .to_ipv6_mapped()
                .octets()
        ));
    }

    #[test]
    fn rule_order_priorities_and_disabled_rules() {
        let c = ok(concat!(
            "[[rule]]\nname = \"c\"\nthen = { add_header = { X-A = \"1\" } }\n",
            "[[rule]]\nname = \"b\"\npriority = 7\nthen = { add_header = { X-A = \"1\" } }\n",
            "[[rule]]\nname = \"off\"\npriority = 1\nenabled = false\nthen = { add_header = { X-A = \"1\" } }\n",
            "[[rule]]\nname = \"a\"\npriority = 2\nthen = { add_header = { X-A = \"1\" } }\n",
            "[[rule]]\nname = \"d\"\nthen = { add_header = { X-A = \"1\" } }\n",
        ));
        let t = &c.table;
        let order: Vec<(&str, u32)> = t.rules.iter().map(|r| (s(t, r.name), r.priority)).collect();
        assert_eq!(order, [("a", 2), ("b", 7), ("c", 8), ("d", 9)]);
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        // the rules without conditions share one empty condition set
        assert_eq!(t.condsets.len(), 1);
        // identical strings are stored once
        assert_eq!(t.strings.windows(3).filter(|w| w == b"X-A").count(), 1);
    }

    #[test]
    fn without_a_header_firewall_section_organization_headers_are_trusted_only() {
        let c = ok("[domains]\naccepted = [\"a.test\"]\n");
        let t = &c.table;
        assert_eq!(list(t, t.trusted_prefixes), [DEFAULT_TRUSTED_PREFIX]);
        assert!(t.renames.is_empty());
        // an explicit section keeps its own meaning: no prefixes, nothing stripped
        let c = ok("[header_firewall]\nrename_untrusted = { \"X-A\" = \"X-B\" }\n");
        let t = &c.table;
        assert!(list(t, t.trusted_prefixes).is_empty());
        assert_eq!(t.renames.len(), 1);
    }

    #[test]
    fn agents_can_be_disabled_and_reprioritised() {
        let c = ok("[[agent]]\nname = \"cmt\"\nenabled = false\n[[agent]]\nname = \"hop_count\"\npriority = 5\n");
        let t = &c.table;
        assert_eq!(t.agents.len(), MAX_AGENTS);
        assert!(!t.enabled(Agent::Cmt));
        assert!(t.enabled(Agent::TransportRules));
        assert_eq!(
            t.agent(Agent::HopCount).map(|a| (a.priority, a.stage)),
            Some((5, Stage::OnEndOfData))
        );
        let order: Vec<Agent> = t.agents.iter().map(|a| a.agent).collect();
        let want: Vec<Agent> = AGENTS.iter().map(|a| a.0).collect();
        assert_eq!(order, want);
    }

    #[test]
    fn limits_and_rewrite_order() {
        let c = ok(concat!(
            "[limits]\nmax_hops = 12\nmax_message_size = \"1 MiB\"\nmax_recipients = 50\n",
            "[[rewrite]]\ndirection = \"outbound\"\nmap = { \"*@b.com\" = \"*@a.com\", \"z@b.com\" = \"zed@a.com\" }\n",
            "[[rewrite]]\ndirection = \"inbound\"\nmap = { \"*@a.com\" = \"*@b.com\" }\n",
            "[[rewrite]]\ndirection = \"inbound\"\nmap = { \"ann@a.com\" = \"*@c.com\" }\n",
        ));
        let t = &c.table;
        assert_eq!(
            (
                t.limits.max_hops,
                t.limits.max_message_size,
                t.limits.max_recipients
            ),
            (12, 1 << 20, 50)
        );
        let froms: Vec<&str> = t.rewrites.iter().map(|r| s(t, r.from)).collect();
        assert_eq!(froms, ["ann@a.com", "*@a.com", "z@b.com", "*@b.com"]);
        let c = ok("[limits]\nmax_message_size = 1000\n");
        assert_eq!(c.table.limits.max_message_size, 1000);
        assert_eq!(c.table.limits.max_hops, 30);
    }

    #[test]
    fn disabled_rules_are_checked_but_not_compiled_or_warned_about() {
        let text = "[[rule]]\nenabled = false\nif = { sender_domain = [] }\n";
        let c = ok(text);
        assert!(
            c.table.rules.is_empty() && c.warnings.is_empty(),
            "{:?}",
            c.warnings
        );
        let e = errs("[[rule]]\nenabled = false\nthen = { reject = \"nope\" }\n");
        assert_eq!((e[0].line, e[0].col), (3, 19));
    }

    // ---- errors: line and column -------------------------------------------

    #[test]
    fn errors_name_line_and_column() {
        let r = "[[rule]]\nname = \"r\"\n";
        let cases: &[(&str, usize, usize, &str)] = &[
            // TOML syntax
            ("[domains]\naccepted = [\"a.com\"\n", 2, 20, "unclosed array"),
            ("version = 1\nversion = 2\n", 2, 1, "duplicate key"),
            ("x = \"abc\n", 1, 9, "string"),
            // unknown keys, with a suggestion
            ("[[rule]]\nprority = 1\n", 2, 1, "did you mean \"priority\""),
            ("[domains]\naccepted = []\nfoo = 1\n", 3, 1, "unknown key \"foo\" in [domains]"),
            ("[[rule]]\nif = { sender_lcation = \"inside\" }\n", 2, 8, "did you mean \"sender_location\""),
            // types
            ("[[connector]]\nname = \"x\"\ncost = \"cheap\"\n", 3, 8, "\"cost\" must be an integer"),
            ("[connector]\nname = \"x\"\n", 1, 1, "write [[connector]]"),
            ("version = 2\n", 1, 11, "version 1"),
            // references
            (
                "[[connector]]\nname = \"a\"\naddress_spaces = [\"*\"]\n[[rule]]\nthen = { use_connector = \"b\" }\n",
                5,
                26,
                "unknown connector \"b\" (known: \"a\")",
            ),
            ("[[rule]]\nif = { sender_group = \"Nobody\" }\n", 2, 23, "unknown group \"Nobody\""),
            ("[[rule]]\nif = { inbound = \"x\" }\n", 2, 18, "unknown inbound connector"),
            ("[cmt]\nfrom_inbound = [\"ghost\"]\n", 2, 17, "unknown inbound connector \"ghost\""),
            // duplicates
            (
                "[[connector]]\nname = \"a\"\naddress_spaces = [\"*\"]\n[[connector]]\nname = \"a\"\naddress_spaces = [\"x.com\"]\n",
                5,
                8,
                "duplicate connector name \"a\" (first on line 2)",
            ),
            ("[[inbound]]\nname = \"i\"\nclient_ips = \"10.0.0.0/8\"\n[[inbound]]\nname = \"i\"\n", 5, 8, "duplicate inbound"),
            // values
            ("[[inbound]]\nname = \"i\"\nclient_ips = [\"10.0.0.0/8\", \"10.1.2.0/33\"]\n", 3, 29, "bad network \"10.1.2.0/33\""),
            ("[[inbound]]\nname = \"i\"\nclient_ips = \"10.0.0.300\"\n", 3, 14, "bad network"),
            ("[[connector]]\nname = \"c\"\naddress_spaces = [\"*.\"]\n", 3, 19, "bad address space"),
            ("[[connector]]\nname = \"c\"\naddress_spaces = [\"a b.com\"]\n", 3, 19, "bad address space"),
            ("[[connector]]\nname = \"c\"\naddress_spaces = [\"*\"]\ntls = \"maybe\"\n", 4, 7, "bad TLS policy"),
            ("[[connector]]\nname = \"c\"\naddress_spaces = [\"*\"]\nsmart_hosts = [\"h.example:0\"]\n", 4, 16, "bad smart host"),
            ("[groups]\nG = [\"nobody\"]\n", 2, 6, "bad address \"nobody\""),
            ("[groups]\nG = [\"a@b@\"]\n", 2, 6, "bad address"),
            ("[domains]\naccepted = [\"a..com\"]\n", 2, 13, "bad domain \"a..com\": empty label"),
            ("[domains]\naccepted = [\"a.com\"]\ndefault = \"b.com\"\n", 3, 11, "not among the accepted"),
            (
                "[[rule]]\nthen = { reject = \"550 4.7.1 No\" }\n",
                2,
                19,
                "the class of 4.7.1 does not match the reply code 550",
            ),
            ("[[rule]]\nthen = { reject = \"250 2.0.0 Fine\" }\n", 2, 19, "4xx or 5xx"),
            ("[[rule]]\nthen = { reject = \"550 5.7.1\" }\n", 2, 19, "text is missing"),
            ("[[rule]]\nthen = { reject = \"550 5.7 No\" }\n", 2, 19, "X.Y.Z"),
            // patterns: the column of the problem inside a literal string
            ("[[rule]]\nif = { header = \"X\", header_value_matches = '(abc' }\n", 2, 46, "unclosed group"),
            ("[[rule]]\nif = { attachment_name_matches = 'a\\p{Nope}' }\n", 2, 36, "Unicode property not found"),
            ("[[rule]]\nif = { attachment_name_matches = '\\bexe\\b' }\n", 2, 35, "(?-u:\\b)"),
            ("[[rule]]\nif = { header_value_matches = 'x' }\n", 2, 8, "needs \"header\""),
            (
                "[[rule]]\nif = { header = \"X\", header_value_matches = '(?i)[a-z]{1,30}x[a-z]{20}' }\n",
                2,
                45,
                "too complex",
            ),
            // rule shape
            ("[[rule]]\nexcept = { header = \"X\" }\n", 2, 10, "except = [{"),
            (
                "[[connector]]\nname = \"a\"\n[[rule]]\nthen = { route_to = \"x.com\", use_connector = \"a\" }\n",
                4,
                30,
                "exclude each other",
            ),
            ("[[rule]]\nthen = { add_header = { \"X-A\" = \"a\\r\\nBcc: x@y.com\" } }\n", 2, 33, "control character"),
            ("[[rule]]\nthen = { remove_header = \"Bad Name\" }\n", 2, 26, "bad header name"),
            ("[[rule]]\nname = \"r\"\n[[rule]]\nname = \"r\"\n", 4, 8, "duplicate rule name"),
            ("[[rule]]\npriority = 0\n", 2, 12, "out of range"),
            // CMT and agents
            ("[cmt]\nenabled = true\n", 2, 1, "CMT needs [domains] default"),
            ("[[agent]]\nname = \"spam_filter\"\n", 2, 8, "unknown agent"),
            ("[limits]\nmax_message_size = \"lots\"\n", 2, 20, "max_message_size"),
            ("[limits]\nmax_recipients = 5000\n", 2, 18, "out of range"),
        ];
        let _ = r;
        for (text, line, col, want) in cases {
            let e = errs(text);
            assert!(
                e.iter()
                    .any(|d| d.line == *line && d.col == *col && d.message.contains(want)),
                "{text:?}: want {line}:{col} {want:?}, got {e:#?}"
            );
        }
    }

    #[test]
    fn every_error_of_a_file_is_reported() {
        let e = errs(
            "[domains]\naccepted = [\"a..b\", \"ok.com\", \"-x.com\"]\n[[rule]]\nprority = 1\n",
        );
        assert_eq!(e.len(), 3, "{e:#?}");
        assert!(e
            .windows(2)
            .all(|w| (w[0].line, w[0].col) <= (w[1].line, w[1].col)));
    }

    // ---- warnings ----------------------------------------------------------

    const BASE: &str = concat!(
        "[domains]\naccepted = [\"contoso.com\"]\ndefault = \"contoso.com\"\n",
        "[[inbound]]\nname = \"org\"\nkind = \"organization\"\nclient_ips = \"10.0.0.0/8\"\n",
        "[[inbound]]\nname = \"partner\"\nclient_ips = \"192.0.2.0/24\"\n",
        "[[connector]]\nname = \"internet\"\naddress_spaces = [\"*\"]\n",
    );

    fn warns_with(extra: &str) -> Vec<String> {
        warnings(&format!("{BASE}{extra}"))
    }

    fn has(ws: &[String], want: &str) -> bool {
        ws.iter().any(|w| w.contains(want))
    }

    #[test]
    fn the_base_has_no_warning() {
        assert!(warns_with("").is_empty(), "{:?}", warns_with(""));
    }

    #[test]
    fn rules_that_can_never_match() {
        let cases = [
            ("if = { inbound = \"partner\", sender_location = \"inside\" }", "a partner connector"),
            ("if = { inbound = \"org\", sender_location = \"outside\" }", "an organization connector"),
            (
                "if = { recipient_location = \"inside\", recipient_domain = [\"gmail.com\", \"x.org\"] }",
                "no domain of recipient_domain is accepted",
            ),
            (
                "if = { recipient_location = \"outside\", recipient = \"a@contoso.com\" }",
                "every domain of recipient is accepted",
            ),
            ("if = { header = \"X-A\", header_absent = \"x-a\" }", "both present and absent"),
            (
                "if = { header = \"X-A\", header_value_matches = 'a', header_value_not_matches = 'a' }",
                "both match and not match",
            ),
            ("if = { sender_domain = [] }", "empty list"),
            ("except = [{}]", "except set is empty"),
            (
                "if = { header = \"X-A\", sender_location = \"inside\" }\nexcept = [{ sender_location = \"inside\" }]",
                "holds whenever its if does",
            ),
        ];
        for (cond, want) in cases {
            let ws = warns_with(&format!(
                "[[rule]]\nname = \"r\"\n{cond}\nthen = {{ add_header = {{ X-B = \"1\" }} }}\n"
            ));
            assert!(has(&ws, want), "{cond}: want {want:?}, got {ws:?}");
        }
        // and the plausible ones do not warn
        for cond in [
            "if = { inbound = \"org\", sender_location = \"inside\" }",
            "if = { recipient_location = \"inside\", recipient_domain = [\"gmail.com\", \"contoso.com\"] }",
            "if = { header = \"X-A\", header_absent = \"X-B\" }",
            "except = [{ header = \"X-A\" }]",
        ] {
            let ws = warns_with(&format!(
                "[[rule]]\nname = \"r\"\n{cond}\nthen = {{ add_header = {{ X-B = \"1\" }} }}\n"
            ));
            assert!(ws.is_empty(), "{cond}: {ws:?}");
        }
    }

    #[test]
    fn unused_groups_and_unreached_connectors() {
        let ws = warns_with("[groups]\nLonely = [\"a@contoso.com\"]\n");
        assert!(has(&ws, "group \"Lonely\" is not used"), "{ws:?}");
        let ws = warns_with("[[connector]]\nname = \"spare\"\nsmart_hosts = [\"relay.example\"]\n");
        assert!(has(&ws, "connector \"spare\" is never used"), "{ws:?}");
        // named by use_connector: reached
        let ws = warns_with(concat!(
            "[[connector]]\nname = \"spare\"\nsmart_hosts = [\"relay.example\"]\n",
            "[[rule]]\nthen = { use_connector = \"spare\" }\n"
        ));
        assert!(ws.is_empty(), "{ws:?}");
        // the same space at a higher cost: never chosen
        let ws = warns_with(concat!(
            "[[connector]]\nname = \"cheap\"\naddress_spaces = [\"x.com\"]\ncost = 1\n",
            "[[connector]]\nname = \"dear\"\naddress_spaces = [\"x.com\"]\ncost = 5\n",
        ));
        assert!(has(&ws, "connector \"dear\" is never chosen"), "{ws:?}");
        assert!(!has(&ws, "\"cheap\" is never"), "{ws:?}");
        // an accepted domain named exactly beats "--", whatever the costs
        let ws = warns_with(concat!(
            "[[connector]]\nname = \"org\"\naddress_spaces = [\"--\"]\ncost = 1\n",
            "[[connector]]\nname = \"dear\"\naddress_spaces = [\"contoso.com\"]\n",
        ));
        assert!(!has(&ws, "never chosen"), "{ws:?}");
        // the same space and cost: a tie
        let ws = warns_with(concat!(
            "[[connector]]\nname = \"a\"\naddress_spaces = [\"x.com\", \"y.com\"]\n",
            "[[connector]]\nname = \"b\"\naddress_spaces = [\"x.com\"]\n",
        ));
        assert!(
            has(
                &ws,
                "connectors \"a\" and \"b\" both have address space \"x.com\" and cost 10"
            ),
            "{ws:?}"
        );
    }

    #[test]
    fn other_warnings() {
        let rule = "then = { add_header = { X-B = \"1\" } }\n";
        let ws = warns_with(&format!(
            "[[rule]]\nname = \"a\"\npriority = 3\n{rule}[[rule]]\nname = \"b\"\npriority = 3\n{rule}"
        ));
        assert!(
            has(&ws, "rules \"a\" and \"b\" have the same priority 3"),
            "{ws:?}"
        );
        let ws = warns_with("[[rule]]\nname = \"idle\"\nif = { header = \"X\" }\n");
        assert!(has(&ws, "has no action"), "{ws:?}");
        let ws = warns_with("[[inbound]]\nname = \"nobody\"\n");
        assert!(has(&ws, "attributes no session"), "{ws:?}");
        let ws = warns_with("[connection_filter]\nblocked_networks = \"10.1.2.3/8\"\n");
        assert!(has(&ws, "the network is 10.0.0.0/8"), "{ws:?}");
        let ws = warns_with("[cmt]\nenabled = true\n");
        assert!(has(&ws, "never applies"), "{ws:?}");
        let ws = warns_with("[cmt]\nfrom_inbound = [\"org\"]\n");
        assert!(has(&ws, "not enabled"), "{ws:?}");
        let ws = warns_with("[[rewrite]]\ndirection = \"inbound\"\nmap = { \"a@contoso.com\" = \"a@contoso.com\" }\n");
        assert!(has(&ws, "rewritten to itself"), "{ws:?}");
        let ws = warns_with("[[agent]]\nname = \"cmt\"\npriority = 1\n");
        assert!(has(&ws, "same priority 1"), "{ws:?}");
        let ws = warnings("[[rule]]\nthen = { route_to = \"nowhere.example\" }\n");
        assert!(has(&ws, "no connector's address space covers it"), "{ws:?}");
        let ws = warns_with("[[rule]]\nif = { header = \"X\", header_value_matches = '(?i)\\w+@\\w+' }\nthen = { add_header = { X-B = \"1\" } }\n");
        assert!(has(&ws, "large DFA"), "{ws:?}");
    }

    #[test]
    fn cmt_from_an_anonymous_connector_warns_when_the_firewall_strips_the_stamp() {
        let want = "[cmt] from_inbound \"partner\" is not an organization connector: its mail is \
                    anonymous, so the header firewall strips the stamp \
                    \"X-MS-Exchange-Organization-CentralizedMailFlowOverrideSet\" (trusted prefix \
                    \"X-MS-Exchange-Organization-\") and a message from it is stamped and \
                    re-routed again on every pass";
        let cmt = "[cmt]\nenabled = true\nfrom_inbound = [\"org\", \"partner\"]\n";
        // the default firewall (no section): warned, on the name in from_inbound
        let c = ok(&format!("{BASE}{cmt}"));
        let w: Vec<&Diag> = c.warnings.iter().filter(|d| d.message == want).collect();
        assert_eq!(w.len(), 1, "{:?}", c.warnings);
        assert_eq!((w[0].line, w[0].col), (16, 24), "{:?}", w[0]);
        assert_eq!(
            c.warnings.len(),
            1,
            "only partner, not org: {:?}",
            c.warnings
        );
        // an explicit prefix covering the stamp, in another case: warned
        let ws = warns_with(&format!(
            "{cmt}[header_firewall]\ntrusted_prefixes = [\"x-ms-exchange-\"]\n"
        ));
        assert!(
            has(&ws, "from_inbound \"partner\" is not an organization"),
            "{ws:?}"
        );
        // the stamp survives: no warning
        for extra in [
            // a section without trusted_prefixes strips nothing
            "[header_firewall]\nrename_untrusted = { \"X-A\" = \"X-B\" }\n",
            // a prefix that does not cover the stamp
            "[header_firewall]\ntrusted_prefixes = [\"X-Other-\"]\n",
            // a stamp header outside the trusted prefix
            "[header_firewall]\ntrusted_prefixes = [\"X-MS-Exchange-Organization-\"]\n",
            // the firewall disabled
            "[[agent]]\nname = \"header_firewall\"\nenabled = false\n",
            // CMT disabled as an agent
            "[[agent]]\nname = \"cmt\"\nenabled = false\n",
        ] {
            let text = if extra.contains("X-MS-Exchange-Organization-\"]") {
                format!("{BASE}{}stamp_header = \"X-Cmt-Stamp\"\n{extra}", cmt)
            } else {
                format!("{BASE}{cmt}{extra}")
            };
            let ws = warnings(&text);
            assert!(
                !has(&ws, "is not an organization connector"),
                "{extra}: {ws:?}"
            );
        }
        // CMT not enabled, or only organization connectors: no warning
        let ws = warns_with("[cmt]\nenabled = false\nfrom_inbound = [\"partner\"]\n");
        assert!(!has(&ws, "is not an organization connector"), "{ws:?}");
        let ws = warns_with("[cmt]\nenabled = true\nfrom_inbound = [\"org\"]\n");
        assert!(ws.is_empty(), "{ws:?}");
    }

    // ---- capacities --------------------------------------------------------

    #[test]
    fn too_many_rules_names_the_capacity() {
        let mut text = String::new();
        for i in 0..=MAX_RULES {
            text.push_str(&format!(
                "[[rule]]\nname = \"r{i}\"\nthen = {{ add_header = {{ X-N = \"{i}\" }} }}\n"
            ));
        }
        let e = errs(&text);
        assert_eq!(e.len(), 1, "{e:#?}");
        assert_eq!(e[0].message, "too many rules (1025 > 1024, MAX_RULES)");
        assert_eq!(e[0].line, 3 * MAX_RULES + 2, "at the 1025th rule's name");
        // exactly at capacity compiles
        let at_cap: String = text
            .lines()
            .take(3 * MAX_RULES)
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(ok(&at_cap).table.rules.len(), MAX_RULES);
    }

    #[test]
    fn other_capacities_are_errors_not_panics() {
        let mut text = String::from("[groups]\n");
        for i in 0..=MAX_GROUPS {
            text.push_str(&format!("g{i} = \"a@b{i}.com\"\n"));
        }
        assert!(errs(&text).iter().any(|d| d.message.contains("MAX_GROUPS")));
        let mut text = String::new();
        for i in 0..=MAX_INBOUND {
            text.push_str(&format!(
                "[[inbound]]\nname = \"i{i}\"\nclient_ips = \"10.0.0.{i}\"\n"
            ));
        }
        assert!(errs(&text)
            .iter()
            .any(|d| d.message.contains("MAX_INBOUND")));
        let mut text = String::from("[domains]\naccepted = [\n");
        for i in 0..=MAX_ITEMS {
            text.push_str(&format!("\"d{i}.example\",\n"));
        }
        text.push_str("]\n");
        let e = errs(&text);
        assert!(
            e.iter().any(|d| d
                .message
                // one more than the domains: the default header firewall's
                // trusted prefix (no [header_firewall] section)
                .contains("too many list items (4098 > 4096, MAX_ITEMS)")),
            "{e:?}"
        );
        let long = "x".repeat(60);
        let mut text = String::from("[domains]\naccepted = [\n");
        for i in 0..1200 {
            text.push_str(&format!("\"{long}.d{i}.example\",\n"));
        }
        text.push_str("]\n");
        assert!(errs(&text)
            .iter()
            .any(|d| d.message.contains("MAX_STRING_BYTES")));
        let mut text = String::new();
        for i in 0..2 {
            text.push_str(&format!(
                "[[rule]]\nif = {{ header = \"X\", header_value_matches = '(?i)\\w+@\\w+\\.c{i}' }}\nthen = {{ add_header = {{ X-N = \"1\" }} }}\n"
            ));
        }
        let e = errs(&text);
        assert!(
            e.iter().any(|d| d.message.contains("MAX_DFA_BYTES")),
            "{e:?}"
        );
        let mut text = String::new();
        for i in 0..=MAX_DFAS {
            text.push_str(&format!(
                "[[rule]]\nif = {{ attachment_name_matches = '^x{i}$' }}\nthen = {{ reject = \"550 5.7.1 No\" }}\n"
            ));
        }
        let e = errs(&text);
        assert!(
            e.iter()
                .any(|d| d.message == "too many patterns (257 > 256, MAX_DFAS)"),
            "{e:?}"
        );
    }

    // ---- no panics ---------------------------------------------------------

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = format!("a = {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
        assert!(!errs(&deep).is_empty());
        let deep = format!("a = {}1{}\n", "{ b = ".repeat(50_000), " }".repeat(50_000));
        assert!(!errs(&deep).is_empty());
        let pat = format!(
            "[[rule]]\nif = {{ attachment_name_matches = '{}a{}' }}\n",
            "(".repeat(5000),
            ")".repeat(5000)
        );
        assert!(errs(&pat).iter().any(|d| d.message.contains("bad pattern")));
    }

    #[test]
    fn a_report_with_errors_and_warnings() {
        let text = "[domains]\naccepted = [\"a.com\"]\n[groups]\nG = \"x@a.com\"\n[[rule]]\nprority = 1\nthen = { reject = \"550 5.7.1 No\" }\n";
        let o = run(text);
        let out = report("f.toml", &o);
        assert!(out.contains("not compiled: 1 error\n"), "{out}");
        let tail: Vec<&str> = out.lines().skip(CAPS.len() + 1).collect();
        assert_eq!(
            tail,
            [
                "f.toml:4:1: warning: group \"G\" is not used by any rule",
                "f.toml:6:1: error: unknown key \"prority\" in [[rule]] (did you mean \"priority\"?)",
            ],
            "{out}"
        );
        println!("{out}");
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,300}") {
            let _ = compile(&text);
        }

        #[test]
        fn toml_shaped_text_never_panics(
            lines in proptest::collection::vec(
                "(\\[\\[?(rule|connector|inbound|agent|rewrite)\\]\\]?|[a-z_]{1,12} = (\"[ -~]{0,12}\"|[0-9]{1,3}|true|\\[\"[a-z*.@-]{0,10}\"\\]|\\{ [a-z_]{1,10} = \"[ -~]{0,8}\" \\}))",
                0..20,
            )
        ) {
            let _ = compile(&lines.join("\n"));
        }

        #[test]
        fn mutated_samples_never_panic(
            edits in proptest::collection::vec((0usize..4000, 0usize..6, "[ -~\n]{0,4}"), 1..4)
        ) {
            let mut text = SAMPLE.to_string();
            for (at, del, ins) in edits {
                let mut at = at % (text.len() + 1);
                while !text.is_char_boundary(at) {
                    at -= 1;
                }
                let mut end = (at + del).min(text.len());
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                text.replace_range(at..end, &ins);
            }
            match compile(&text) {
                Ok(c) => {
                    prop_assert!(c.table.validate().is_ok());
                    prop_assert_eq!(c.blob, encode(&c.table));
                }
                Err(e) => prop_assert!(!e.is_empty() && e.iter().all(|d| d.line >= 1 && d.col >= 1)),
            }
        }
    }
}
