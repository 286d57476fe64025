//! Emission of the checked model into the engine's fixed-size [`Table`],
//! counting what each capacity-bound table needs so an overflow is an
//! error naming the capacity, never a panic.

use super::cx::Cx;
use super::fnv1a64;
use super::model::{ActM, CondM, CondSet, ConnM, InboundM, Model, RewriteM, RuleM, SpaceM};
use crate::engine::limits::{
    MAX_ACTIONS, MAX_AGENTS, MAX_CONDITIONS, MAX_CONDSETS, MAX_CONNECTORS, MAX_DFAS, MAX_DFA_BYTES,
    MAX_GROUPS, MAX_INBOUND, MAX_INDEX_ENTRIES, MAX_ITEMS, MAX_NETS, MAX_RENAMES, MAX_REWRITES,
    MAX_RULES, MAX_SPACES, MAX_STRING_BYTES,
};
use crate::engine::policy::{
    run_key, Action, Condition, Connector, Direction, Group, Inbound, List, Net, RecipientFilter,
    Rewrite, Rule, SenderFilter, Space, Span, Str, Table, SENDER_STAMP, SENDER_STAMP_VALUE,
};
use std::collections::HashMap;

/// A sparse DFA above this size gets a warning (it eats the shared
/// `MAX_DFA_BYTES`); Unicode classes such as `\w` are the usual cause.
const DFA_WARN_SIZE: usize = 16 * 1024;

/// How many capacity-bound tables there are.
pub(super) const NCAPS: usize = 17;

/// A capacity-bound table of [`Table`], the index into [`CAPS`].
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
    Index,
}

/// How a capacity is reported: label, noun, constant, size.
pub(super) struct CapInfo {
    /// The row label in `rules check`'s table.
    pub(super) label: &'static str,
    /// What is counted, in the error.
    pub(super) noun: &'static str,
    /// The engine constant bounding it.
    pub(super) konst: &'static str,
    /// The capacity.
    pub(super) max: usize,
    /// Counted in bytes (else entries).
    pub(super) bytes: bool,
}

/// A [`CapInfo`] counted in entries.
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
pub(super) const CAPS: [CapInfo; NCAPS] = [
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
    cap(
        "index",
        "rule index entries",
        "MAX_INDEX_ENTRIES",
        MAX_INDEX_ENTRIES,
    ),
];

/// What one capacity-bound table needed.
#[derive(Default, Clone, Copy)]
pub(super) struct Counter {
    /// Entries (or bytes) needed, also beyond capacity.
    pub(super) need: usize,
    /// Where the capacity was first exceeded.
    pub(super) over: Option<usize>,
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

/// The table being filled, with the counters and the indexes that
/// store identical strings, lists and patterns once.
pub(super) struct Builder {
    /// The table being filled.
    pub(super) t: Box<Table>,
    /// What each capacity-bound table needed, in [`Cap`] order.
    pub(super) counters: [Counter; NCAPS],
    /// Strings already in the pool.
    strs: HashMap<String, Str>,
    /// Lists already in `items`, by their strings.
    lists: HashMap<Vec<(u32, u32)>, List>,
    /// Patterns already placed, by text.
    dfa_index: HashMap<String, u16>,
    /// The condition set with no condition, once placed (rules share it).
    empty_set: Option<u16>,
    /// Where each rule of the table is in the file, by rule number.
    pub(super) rule_at: Vec<usize>,
}

impl Builder {
    /// An empty table.
    pub(super) fn new() -> Self {
        Builder {
            t: Box::default(),
            counters: [Counter::default(); NCAPS],
            strs: HashMap::new(),
            lists: HashMap::new(),
            dfa_index: HashMap::new(),
            empty_set: None,
            rule_at: Vec::new(),
        }
    }

    /// What each capacity-bound table needed, in [`Cap`] order.
    pub(super) fn sizes(&self) -> [usize; NCAPS] {
        let mut s = [0; NCAPS];
        for (o, c) in s.iter_mut().zip(self.counters.iter()) {
            *o = c.need;
        }
        s
    }

    /// A string in the pool (identical strings are stored once).
    pub(super) fn s(&mut self, text: &str, at: usize) -> Str {
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
    pub(super) fn list(&mut self, xs: &[String], at: usize) -> List {
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

    /// Networks pushed as one run.
    pub(super) fn nets(&mut self, nets: &[Net], at: usize) -> Span {
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
    pub(super) fn dfa(&mut self, cx: &mut Cx<'_>, pattern: &str, at: usize) -> u16 {
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
    pub(super) fn conds(&mut self, cx: &mut Cx<'_>, set: &CondSet) -> Span {
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
                CondM::Auth(m, set) => Condition::Auth(*m, *set),
                CondM::AuthenticatedAs(l) => Condition::AuthenticatedAs(self.list(l, cat)),
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

    /// A condition set: the span of its conditions.
    fn condset(&mut self, span: Span, at: usize) -> u16 {
        put(
            &mut self.t.condsets,
            span,
            &mut self.counters[Cap::Condsets as usize],
            at,
        )
    }
}

/// Emits the model into `b`'s table, part by part in the table's order (the
/// string pool fills in that order); what does not fit is counted against
/// its capacity, see [`Cap`].
pub(super) fn emit(cx: &mut Cx<'_>, b: &mut Builder, m: &Model, text: &str) {
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
        emit_inbound(b, i);
    }
    b.t.blocked = b.nets(&m.blocked, 0);
    super::edge::emit_edge(b, &m.edge);
    for c in &m.connectors {
        emit_connector(b, c);
    }
    emit_rewrites(b, m);
    emit_cmt_and_firewall(b, m);
    super::hybrid::emit(b, m);
    let l = &mut b.t.limits;
    l.max_hops = m.limits.max_hops.unwrap_or(l.max_hops);
    l.max_message_size = m.limits.max_message_size.unwrap_or(l.max_message_size);
    l.max_recipients = m.limits.max_recipients.unwrap_or(l.max_recipients);
    emit_rules(cx, b, m);
    emit_filters(b, m);
    super::index::emit_index(b);
    // In run order, so that the engine takes the list as it is for every
    // message instead of sorting it (`run_order`).
    let mut agents = m.agents.clone();
    agents.sort_by_key(run_key);
    for a in &agents {
        put(
            &mut b.t.agents,
            *a,
            &mut b.counters[Cap::Agents as usize],
            0,
        );
    }
}

/// One inbound connector: name, networks, certificate name.
fn emit_inbound(b: &mut Builder, i: &InboundM) {
    let at = i.name.at();
    let name = b.s(&i.name.v, at);
    let nets = b.nets(&i.nets, at);
    let tls_name = i.tls.as_ref().map(|t| b.s(t, at));
    let milters = i.milters.as_ref().map(|l| b.s(&l.join(","), at));
    let ib = Inbound {
        name,
        kind: i.kind,
        nets,
        tls_name,
        milters,
    };
    put(
        &mut b.t.inbound,
        ib,
        &mut b.counters[Cap::Inbound as usize],
        at,
    );
}

/// One send connector, its address spaces first.
fn emit_connector(b: &mut Builder, c: &ConnM) {
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
        cross_premises: c.hybrid.cross_premises,
        tls_certificate: c.hybrid.tls_certificate.as_ref().map(|s| b.s(&s.v, s.at())),
    };
    put(
        &mut b.t.connectors,
        conn,
        &mut b.counters[Cap::Connectors as usize],
        at,
    );
}

/// The rewrite maps: inbound before outbound, exact addresses before
/// `*@domain`, then in file order.
fn emit_rewrites(b: &mut Builder, m: &Model) {
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
}

/// CMT (the inbound connectors as a bit mask) and the header firewall.
fn emit_cmt_and_firewall(b: &mut Builder, m: &Model) {
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
}

/// The enabled rules by priority (stable); a rule without one comes after
/// every explicit priority, in file order.
fn emit_rules(cx: &mut Cx<'_>, b: &mut Builder, m: &Model) {
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
        emit_rule(cx, b, r, priority);
    }
}

/// One rule: its `if` set (the empty set shared), its `except` sets,
/// contiguous in condsets, and its actions.
fn emit_rule(cx: &mut Cx<'_>, b: &mut Builder, r: &RuleM, priority: u32) {
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
    let actions = emit_actions(b, &r.actions);
    let rule = Rule {
        name,
        priority,
        when,
        except: Span {
            first: efirst as u16,
            count: spans.len() as u16,
        },
        actions,
        stop: r.stop,
    };
    put(
        &mut b.t.rules,
        rule,
        &mut b.counters[Cap::Rules as usize],
        r.at,
    );
    b.rule_at.push(r.at);
}

/// Counts `need` entries of the rule index against `MAX_INDEX_ENTRIES`,
/// over it first at `over` (the rule whose entries do not fit).
pub(super) fn count_index(b: &mut Builder, need: usize, over: Option<usize>) {
    let c = &mut b.counters[Cap::Index as usize];
    c.need = need;
    c.over = over;
}

/// A rule's actions, their strings placed first so the run is contiguous.
fn emit_actions(b: &mut Builder, actions: &[(ActM, usize)]) -> Span {
    let mut acts = Vec::new();
    for (a, at) in actions {
        let act = match a {
            ActM::RouteTo(d) => Action::RouteTo(b.s(d, *at)),
            ActM::UseConnector(c) => Action::UseConnector(*c),
            ActM::AddHeader(n, v) => Action::AddHeader(b.s(n, *at), b.s(v, *at)),
            ActM::SetHeader(n, v) => Action::SetHeader(b.s(n, *at), b.s(v, *at)),
            ActM::RemoveHeader(n) => Action::RemoveHeader(b.s(n, *at)),
            ActM::RewriteRecipient(x) => Action::RewriteRecipient(b.s(x, *at)),
            ActM::AddRecipient(x) => Action::AddRecipient(b.s(x, *at)),
            ActM::Reject(r) => Action::Reject {
                code: r.code,
                // `reject` always gives one; else the code's class
                status: r.status.unwrap_or(((r.code / 100) as u8, 0, 0)),
                text: b.s(&r.text, *at),
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
    Span {
        first: afirst as u16,
        count: acts.len() as u16,
    }
}

/// The recipient and sender filters: their pattern lists, settings and
/// the sender filter's stamp field.
pub(super) fn emit_filters(b: &mut Builder, m: &Model) {
    let r = &m.recipient_filter;
    let valid = b.list(&r.valid, r.at);
    let blocked = b.list(&r.blocked, r.at);
    b.t.recipient_filter = RecipientFilter {
        valid,
        blocked,
        directory: r.directory,
        call_ahead: r.call_ahead,
        tarpit_ms: r.tarpit_ms,
        max_unknown: r.max_unknown,
        call_ahead_timeout: r.timeout,
        valid_ttl: r.valid_ttl,
        unknown_ttl: r.unknown_ttl,
    };
    let s = &m.sender_filter;
    let blocked = b.list(&s.blocked, s.at);
    let stamp_name = b.s(SENDER_STAMP, s.at);
    let stamp_value = b.s(SENDER_STAMP_VALUE, s.at);
    b.t.sender_filter = SenderFilter {
        blocked,
        stamp: s.stamp,
        reject_blank: s.reject_blank,
        stamp_name,
        stamp_value,
    };
}
