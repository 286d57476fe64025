//! The model: the rule file parsed into checked types with names resolved
//! (groups, inbound and send connectors by index), each item keeping the
//! byte offset its diagnostics point at.

use super::cx::{
    get_bool, get_int, get_str, get_str_map, get_strs, get_table, get_tables, type_err, Cx, Fields,
    Val, S,
};
use super::edge::{parse_authentication, parse_connection_filter, parse_protocol_analysis, EdgeM};
use super::filters::{
    parse_recipient_filter, parse_sender_filter, RecipientFilterM, SenderFilterM,
};
use super::syntax::{
    address, domain, header_name, header_value, network, reject, show_net, smart_host,
};
use super::{DEFAULT_COST, DEFAULT_STAMP, DEFAULT_TRUSTED_PREFIX};
use crate::engine::limits::{MAX_RECIPIENTS, MAX_RULES};
use crate::engine::policy::{AgentSlot, Direction, InboundKind, Location, Net, TlsPolicy, AGENTS};
use crate::shell::reply::OwnedReply;
use std::fmt;
use toml::de::{DeTable, DeValue};

/// A send connector's address space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum SpaceM {
    /// `*`: every domain.
    Any,
    /// `--`: the accepted domains.
    Accepted,
    /// `domain`: exactly this domain.
    Domain(String),
    /// `*.domain`: the subdomains of this domain.
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

/// A rule condition, with names resolved (groups and inbound connectors
/// by index, patterns checked to compile).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum CondM {
    /// `sender`: address patterns.
    Sender(Vec<String>),
    /// `sender_domain`: domains.
    SenderDomain(Vec<String>),
    /// `sender_group`: a group by index.
    SenderGroup(u16),
    /// `recipient`: address patterns.
    Recipient(Vec<String>),
    /// `recipient_domain`: domains.
    RecipientDomain(Vec<String>),
    /// `recipient_group`: a group by index.
    RecipientGroup(u16),
    /// `sender_location`.
    SenderLocation(Location),
    /// `recipient_location`.
    RecipientLocation(Location),
    /// `header` alone: the field is present.
    HeaderPresent(String),
    /// `header_absent`.
    HeaderAbsent(String),
    /// `header` with `header_value_matches`: field name, pattern.
    HeaderMatches(String, String),
    /// `header` with `header_value_not_matches`: field name, pattern.
    HeaderNotMatches(String, String),
    /// `inbound`: an inbound connector by index.
    Inbound(u16),
    /// `client_network`.
    ClientNetwork(Vec<Net>),
    /// `attachment_name_matches`: a pattern.
    AttachmentMatches(String),
    /// `spf`, `dkim`, `dmarc`, `arc`: the method and its results' bits.
    Auth(crate::engine::policy::AuthMethod, u8),
    /// `authenticated_as`: SMTP AUTH logins (`*`: any).
    AuthenticatedAs(Vec<String>),
}

impl CondM {
    /// Evaluation order inside a set: cheap tests first, patterns last.
    pub(super) fn cost(&self) -> u8 {
        match self {
            CondM::SenderLocation(_)
            | CondM::RecipientLocation(_)
            | CondM::Inbound(_)
            | CondM::AuthenticatedAs(_) => 0,
            CondM::ClientNetwork(_) => 1,
            CondM::Sender(_)
            | CondM::SenderDomain(_)
            | CondM::Recipient(_)
            | CondM::RecipientDomain(_) => 2,
            CondM::SenderGroup(_) | CondM::RecipientGroup(_) => 3,
            CondM::HeaderPresent(_) | CondM::HeaderAbsent(_) => 4,
            CondM::HeaderMatches(..) | CondM::HeaderNotMatches(..) => 5,
            CondM::AttachmentMatches(_) => 6,
            CondM::Auth(..) => 0,
        }
    }

    /// The header a presence/pattern condition needs present.
    pub(super) fn needs_header(&self) -> Option<&str> {
        match self {
            CondM::HeaderPresent(h)
            | CondM::HeaderMatches(h, _)
            | CondM::HeaderNotMatches(h, _) => Some(h),
            _ => None,
        }
    }
}

/// A rule action, with connectors resolved by index.
#[derive(Debug, Clone)]
pub(super) enum ActM {
    /// `route_to`: a domain.
    RouteTo(String),
    /// `use_connector`: a send connector by index.
    UseConnector(u16),
    /// `add_header`: name, value.
    AddHeader(String, String),
    /// `set_header`: name, value.
    SetHeader(String, String),
    /// `remove_header`: a name.
    RemoveHeader(String),
    /// `rewrite_recipient`: the new address.
    RewriteRecipient(String),
    /// `add_recipient`: an address.
    AddRecipient(String),
    /// `reject`: the reply.
    Reject(OwnedReply),
}

/// A condition set: conditions that must all hold, each with its position.
pub(super) type CondSet = Vec<(CondM, usize)>;

/// A `[[rule]]`, with its positions for diagnostics.
pub(super) struct RuleM {
    /// `name`, or "Rule N".
    pub(super) name: String,
    /// Where the rule's diagnostics point (its name, else its header).
    pub(super) at: usize,
    /// `priority`, with its position.
    pub(super) priority: Option<(u32, usize)>,
    /// `stop`: no further rules for a recipient it applies to.
    pub(super) stop: bool,
    /// `enabled`: a disabled rule is checked but not compiled.
    pub(super) enabled: bool,
    /// `if`.
    pub(super) when: CondSet,
    /// Where `if` is (the rule's header without one).
    pub(super) when_at: usize,
    /// `except`: condition sets, each with its position.
    pub(super) except: Vec<(CondSet, usize)>,
    /// `then`, each action with its position.
    pub(super) actions: Vec<(ActM, usize)>,
    /// Whether `then` has any key (an action dropped for an error is not
    /// "no action").
    pub(super) has_then: bool,
}

/// A `[groups]` entry: a name and its address patterns.
pub(super) struct GroupM {
    /// The group's name (the key).
    pub(super) name: S,
    /// Its address patterns.
    pub(super) members: Vec<String>,
}

/// An `[[inbound]]` connector: how a session is attributed to it.
pub(super) struct InboundM {
    /// `name`.
    pub(super) name: S,
    /// `kind`: organization (inside) or partner.
    pub(super) kind: InboundKind,
    /// `client_ips`.
    pub(super) nets: Vec<Net>,
    /// `tls_certificate_name`, possibly `*.domain`.
    pub(super) tls: Option<String>,
    /// `milters`: the appliance config's milters this connector's mail
    /// goes through (`None`: every one).
    pub(super) milters: Option<Vec<String>>,
}

/// A `[[connector]]` (send connector): where mail for its address
/// spaces goes.
pub(super) struct ConnM {
    /// `name`.
    pub(super) name: S,
    /// `address_spaces`, each with its position.
    pub(super) spaces: Vec<(SpaceM, usize)>,
    /// `smart_hosts` (none: MX lookup).
    pub(super) smart_hosts: Vec<String>,
    /// `tls`.
    pub(super) tls: TlsPolicy,
    /// `cost`.
    pub(super) cost: u32,
    /// `cross_premises` and `tls_certificate`.
    pub(super) hybrid: super::hybrid::ConnHybrid,
}

/// One `[[rewrite]]` map entry.
pub(super) struct RewriteM {
    /// `direction`.
    pub(super) dir: Direction,
    /// The address (pattern) rewritten.
    pub(super) from: String,
    /// What it becomes.
    pub(super) to: String,
    /// Where the entry is.
    pub(super) at: usize,
}

/// `[limits]` as given; what is missing keeps the empty table's default.
#[derive(Default)]
pub(super) struct LimitsM {
    /// `max_hops`.
    pub(super) max_hops: Option<u16>,
    /// `max_message_size` in octets.
    pub(super) max_message_size: Option<u64>,
    /// `max_recipients`.
    pub(super) max_recipients: Option<u32>,
}

/// The whole rule file, checked, names resolved: what [`emit`](super::emit::emit)
/// turns into the table and [`check_model`](super::checks::check_model) warns about.
pub(super) struct Model {
    /// `[domains] accepted`.
    pub(super) accepted: Vec<String>,
    /// `[domains] default`.
    pub(super) default_domain: Option<String>,
    /// Where `default` is.
    pub(super) default_at: usize,
    /// `[groups]`.
    pub(super) groups: Vec<GroupM>,
    /// `[[inbound]]`.
    pub(super) inbound: Vec<InboundM>,
    /// `[[connector]]`.
    pub(super) connectors: Vec<ConnM>,
    /// `[[rewrite]]` entries.
    pub(super) rewrites: Vec<RewriteM>,
    /// `[cmt] enabled`.
    pub(super) cmt_enabled: bool,
    /// `[cmt] from_inbound`, as inbound connector indexes.
    pub(super) cmt_from: Vec<u16>,
    /// Where each `from_inbound` entry is (beside `cmt_from`).
    pub(super) cmt_from_at: Vec<usize>,
    /// `[cmt] stamp_header`.
    pub(super) cmt_stamp: String,
    /// `[header_firewall] trusted_prefixes`.
    pub(super) trusted: Vec<String>,
    /// `[header_firewall] rename_untrusted`: from, to, position.
    pub(super) renames: Vec<(String, String, usize)>,
    /// `[limits]`.
    pub(super) limits: LimitsM,
    /// `[connection_filter] blocked_networks`.
    pub(super) blocked: Vec<Net>,
    /// `[recipient_filter]`.
    pub(super) recipient_filter: RecipientFilterM,
    /// `[sender_filter]`.
    pub(super) sender_filter: SenderFilterM,
    /// The rest of `[connection_filter]`, and `[protocol_analysis]`.
    pub(super) edge: EdgeM,
    /// `[[rule]]`, in file order.
    pub(super) rules: Vec<RuleM>,
    /// The agents, as `[[agent]]` left them.
    pub(super) agents: Vec<AgentSlot>,
    /// Groups named by some rule (disabled ones included).
    pub(super) group_used: Vec<bool>,
    /// Connectors named by some rule's `use_connector`.
    pub(super) conn_named: Vec<bool>,
    /// `[cross_premises]`.
    pub(super) cross_premises: super::hybrid::CrossPremisesM,
}

/// The keys of the rule file's top level.
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
    "recipient_filter",
    "sender_filter",
    "protocol_analysis",
    "authentication",
    "limits",
    "agent",
    "rule",
    "cross_premises",
];

/// The keys of a condition set (`if`, `except`).
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
    "spf",
    "dkim",
    "dmarc",
    "arc",
    "authenticated_as",
];

/// The keys of a rule's `then`.
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

impl Model {
    /// The model of an empty rule file: every default, every agent enabled
    /// at its built-in priority.
    fn empty() -> Self {
        Model {
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
            recipient_filter: RecipientFilterM::default(),
            sender_filter: SenderFilterM::default(),
            edge: EdgeM::default(),
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
            cross_premises: Default::default(),
        }
    }
}

/// Parses the whole rule file into the model, section by section; rules
/// come last, as they name groups, inbound and send connectors.
pub(super) fn parse_model(cx: &mut Cx<'_>, root: &DeTable<'_>) -> Model {
    let top = Fields::new(cx, root, TOP_KEYS, "the rule file");
    let mut m = Model::empty();
    if let Some(v) = top.get("version") {
        check_version(cx, v);
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
        parse_connection_filter(cx, &mut m.blocked, &mut m.edge, v);
    }
    if let Some(v) = top.get("protocol_analysis") {
        parse_protocol_analysis(cx, &mut m.edge, v);
    }
    if let Some(v) = top.get("authentication") {
        parse_authentication(cx, &mut m.edge, v);
    }
    if let Some(v) = top.get("recipient_filter") {
        parse_recipient_filter(cx, &mut m, v);
    }
    if let Some(v) = top.get("sender_filter") {
        parse_sender_filter(cx, &mut m, v);
    }
    if let Some(v) = top.get("limits") {
        parse_limits(cx, &mut m, v);
    }
    if let Some(v) = top.get("cross_premises") {
        super::hybrid::parse_cross_premises(cx, &mut m, v);
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

/// `version`: only 1 is read.
fn check_version(cx: &mut Cx<'_>, v: &Val<'_>) {
    if let Some(n) = get_int(cx, v, "version", i64::MIN, i64::MAX) {
        if n != 1 {
            cx.err(
                v.span().start,
                format!("version = {n}: this sluice reads rule files of version 1"),
            );
        }
    }
}

/// `[domains]`: the accepted domains and the default one among them.
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

/// `[groups]`: name = address pattern(s), in file order.
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

/// `[[inbound]]`: inbound connectors, by networks or certificate name.
fn parse_inbound(cx: &mut Cx<'_>, m: &mut Model, v: &Val<'_>) {
    for (nth, (t, at)) in get_tables(cx, v, "inbound").into_iter().enumerate() {
        let f = Fields::new(
            cx,
            t,
            &[
                "name",
                "kind",
                "client_ips",
                "tls_certificate_name",
                "milters",
            ],
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
        let tls = f
            .get("tls_certificate_name")
            .and_then(|v| get_str(cx, v, "tls_certificate_name"))
            .and_then(|s| certificate_name(cx, &s));
        if nets.is_empty() && tls.is_none() {
            cx.warn(
                at,
                format!(
                    "inbound connector \"{}\" attributes no session: it has neither client_ips nor tls_certificate_name",
                    name.v
                ),
            );
        }
        let milters = f.get("milters").map(|v| milter_names(cx, v));
        m.inbound.push(InboundM {
            name,
            kind,
            nets,
            tls,
            milters,
        });
    }
}

/// An inbound connector's `milters`: names of `[[milter]]` sections of the
/// appliance config (letters, digits, `-` and `_`).
fn milter_names(cx: &mut Cx<'_>, v: &Val<'_>) -> Vec<String> {
    let mut out = Vec::new();
    for s in get_strs(cx, v, "milters") {
        let ok = !s.v.is_empty()
            && s.v
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if ok {
            out.push(s.v.clone());
        } else {
            cx.err(
                s.at(),
                format!(
                    "milters: {:?} is not a milter name (letters, digits, - and _)",
                    s.v
                ),
            );
        }
    }
    out
}

/// An inbound connector's `tls_certificate_name`: a domain or `*.domain`,
/// lowercased.
fn certificate_name(cx: &mut Cx<'_>, s: &S) -> Option<String> {
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

/// The `name` key, required.
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
pub(super) fn nets(cx: &mut Cx<'_>, v: &Val<'_>, key: &str) -> Vec<Net> {
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

/// `[[connector]]`: send connectors.
fn parse_connectors(cx: &mut Cx<'_>, m: &mut Model, v: &Val<'_>) {
    for (nth, (t, at)) in get_tables(cx, v, "connector").into_iter().enumerate() {
        let keys = ["name", "address_spaces", "smart_hosts", "tls", "cost"];
        let keys: Vec<&str> = keys
            .into_iter()
            .chain(super::hybrid::CONNECTOR_KEYS)
            .collect();
        let f = Fields::new(cx, t, &keys, "[[connector]]");
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
        let spaces = f
            .get("address_spaces")
            .map(|v| address_spaces(cx, v))
            .unwrap_or_default();
        let mut smart_hosts = Vec::new();
        if let Some(v) = f.get("smart_hosts") {
            for s in get_strs(cx, v, "smart_hosts") {
                match smart_host(&s.v) {
                    Ok(h) => smart_hosts.push(h),
                    Err(e) => cx.err(s.at(), e),
                }
            }
        }
        let tls = tls_policy(cx, &f);
        let cost = f
            .get("cost")
            .and_then(|v| get_int(cx, v, "cost", 0, i64::from(u32::MAX)))
            .map_or(DEFAULT_COST, |n| n as u32);
        let hybrid = super::hybrid::parse_connector(cx, &f);
        m.connectors.push(ConnM {
            name,
            spaces,
            smart_hosts,
            tls,
            cost,
            hybrid,
        });
    }
}

/// A send connector's `address_spaces`, each with its position; a space
/// listed twice is a warning.
fn address_spaces(cx: &mut Cx<'_>, v: &Val<'_>) -> Vec<(SpaceM, usize)> {
    let mut spaces: Vec<(SpaceM, usize)> = Vec::new();
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
    spaces
}

/// A send connector's `tls`, opportunistic when missing or wrong.
fn tls_policy(cx: &mut Cx<'_>, f: &Fields<'_, '_>) -> TlsPolicy {
    match f.get("tls").and_then(|v| get_str(cx, v, "tls")) {
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
    }
}

/// `[[rewrite]]`: address rewriting maps, per direction; an entry
/// rewritten to itself or shadowed by an earlier one is a warning.
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

/// `[cmt]`: centralized mail flow, from the named inbound connectors.
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

/// The error for a name that is not defined, listing the defined ones.
pub(super) fn unknown_name<'a>(
    what: &str,
    name: &str,
    known: impl Iterator<Item = &'a String>,
) -> String {
    let known: Vec<String> = known.map(|k| format!("\"{k}\"")).collect();
    if known.is_empty() {
        format!("unknown {what} \"{name}\" (none is defined)")
    } else {
        format!("unknown {what} \"{name}\" (known: {})", known.join(", "))
    }
}

/// `[header_firewall]`: trusted prefixes and renames for anonymous mail.
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

/// `[limits]`: hops, message size (a number or "36 MiB"), recipients.
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

/// `[[agent]]`: agents enabled or disabled and reprioritised; a tie of
/// priorities on one event is a warning.
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
        // recipient_filter with enabled = false switches off what it does
        // beyond the accepted domains (valid, blocked, directory,
        // call-ahead, tarpit, harvest limit): the accepted-domain check
        // always runs, so disabling it never makes an open relay.
        let enabled = f.get("enabled").and_then(|v| get_bool(cx, v, "enabled"));
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

/// An agent's rule-file name.
fn agent_name(a: &AgentSlot) -> &'static str {
    AGENTS.iter().find(|x| x.0 == a.agent).map_or("?", |x| x.3)
}

/// One `[[rule]]` (the `nth` in the file, for its default name).
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
    let priority = f.get("priority").and_then(|v| rule_priority(cx, v));
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
    let except = f
        .get("except")
        .map(|v| parse_except(cx, m, v))
        .unwrap_or_default();
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

/// A rule's `priority`, with its position; room is left above it for the
/// rules without one, which come after every explicit priority.
fn rule_priority(cx: &mut Cx<'_>, v: &Val<'_>) -> Option<(u32, usize)> {
    get_int(
        cx,
        v,
        "priority",
        1,
        i64::from(u32::MAX) - i64::from(MAX_RULES as u32),
    )
    .map(|n| (n as u32, v.span().start))
}

/// A rule's `except`: a list of condition sets, each with its position.
fn parse_except(cx: &mut Cx<'_>, m: &mut Model, v: &Val<'_>) -> Vec<(CondSet, usize)> {
    let mut except = Vec::new();
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
    except
}

/// A pattern that compiles to a DFA, or `None` with the error placed at
/// the offending character when it can be.
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

/// One condition set (a rule's `if` or one of its `except` sets), in file
/// order; `header` with its value patterns comes last.
fn parse_conds(cx: &mut Cx<'_>, m: &mut Model, t: &DeTable<'_>, ctx: &str) -> CondSet {
    let f = Fields::new(cx, t, COND_KEYS, ctx);
    let mut out: CondSet = Vec::new();
    let mut hk = HeaderKeys::default();
    for &(key, kat, v) in &f.list {
        let vat = v.span().start;
        let c = match key {
            "sender" | "recipient" => Some(address_cond(cx, v, key)),
            "sender_domain" | "recipient_domain" => Some(domain_cond(cx, v, key)),
            "sender_group" | "recipient_group" => group_cond(cx, m, v, key),
            "sender_location" | "recipient_location" => location_cond(cx, v, key),
            "header" | "header_absent" => hk.name(cx, v, key),
            "header_value_matches" | "header_value_not_matches" => {
                if f.get("header").is_none() {
                    cx.err(
                        kat,
                        format!("\"{key}\" needs \"header\": the field whose values are matched"),
                    );
                }
                if let Some(p) = get_str(cx, v, key).and_then(|s| pattern(cx, &s)) {
                    hk.values.push((key == "header_value_matches", p, vat));
                }
                None
            }
            "inbound" => inbound_cond(cx, m, v, key),
            "client_network" => Some(CondM::ClientNetwork(nets(cx, v, key))),
            "attachment_name_matches" => get_str(cx, v, key)
                .and_then(|s| pattern(cx, &s))
                .map(CondM::AttachmentMatches),
            "spf" | "dkim" | "dmarc" | "arc" => auth_cond(cx, v, key),
            "authenticated_as" => Some(login_cond(cx, v, key)),
            _ => None,
        };
        if let Some(c) = c {
            out.push((c, vat));
        }
    }
    hk.finish(&mut out);
    out
}

/// `spf` / `dkim` / `dmarc` / `arc`: one result or a list of them (RFC 8601
/// names; each method allows the results it can have).
fn auth_cond(cx: &mut Cx<'_>, v: &Val<'_>, key: &str) -> Option<CondM> {
    use crate::engine::policy::{AuthMethod, AuthResult};
    let (method, allowed): (AuthMethod, &[&str]) = match key {
        "spf" => (
            AuthMethod::Spf,
            &[
                "none",
                "pass",
                "fail",
                "softfail",
                "neutral",
                "temperror",
                "permerror",
            ],
        ),
        "dkim" => (
            AuthMethod::Dkim,
            &["none", "pass", "fail", "neutral", "temperror", "permerror"],
        ),
        "dmarc" => (
            AuthMethod::Dmarc,
            &["none", "pass", "fail", "temperror", "permerror"],
        ),
        _ => (AuthMethod::Arc, &["none", "pass", "fail"]),
    };
    let mut set = 0u8;
    for s in get_strs(cx, v, key) {
        let want = s.v.to_ascii_lowercase();
        match AuthResult::ALL.iter().find(|r| r.1 == want) {
            Some((r, name)) if allowed.contains(name) => set |= r.bit(),
            _ => cx.err(
                s.at(),
                format!("{key} result {:?}: one of {}", s.v, allowed.join(", ")),
            ),
        }
    }
    (set != 0).then_some(CondM::Auth(method, set))
}

/// `authenticated_as`: SMTP AUTH logins, or `*` for any.
fn login_cond(cx: &mut Cx<'_>, v: &Val<'_>, key: &str) -> CondM {
    let mut list = Vec::new();
    for s in get_strs(cx, v, key) {
        if s.v.is_empty()
            || s.v.len() > 255
            || s.v.contains(|c: char| c.is_whitespace() || c == ':')
        {
            cx.err(
                s.at(),
                format!("{:?} is not a login name (or \"*\" for any)", s.v),
            );
        } else {
            list.push(s.v.clone());
        }
    }
    CondM::AuthenticatedAs(list)
}

/// `sender` / `recipient`: a list of address patterns.
fn address_cond(cx: &mut Cx<'_>, v: &Val<'_>, key: &str) -> CondM {
    let mut list = Vec::new();
    for s in get_strs(cx, v, key) {
        match address(&s.v, true) {
            Ok(a) => list.push(a),
            Err(e) => cx.err(s.at(), e),
        }
    }
    if key == "sender" {
        CondM::Sender(list)
    } else {
        CondM::Recipient(list)
    }
}

/// `sender_domain` / `recipient_domain`: a list of domains.
fn domain_cond(cx: &mut Cx<'_>, v: &Val<'_>, key: &str) -> CondM {
    let mut list = Vec::new();
    for s in get_strs(cx, v, key) {
        match domain(&s.v) {
            Ok(d) => list.push(d),
            Err(e) => cx.err(s.at(), e),
        }
    }
    if key == "sender_domain" {
        CondM::SenderDomain(list)
    } else {
        CondM::RecipientDomain(list)
    }
}

/// `sender_group` / `recipient_group`: a group by name, marked used.
fn group_cond(cx: &mut Cx<'_>, m: &mut Model, v: &Val<'_>, key: &str) -> Option<CondM> {
    let s = get_str(cx, v, key)?;
    match m.groups.iter().position(|g| g.name.v == s.v) {
        Some(i) => {
            if let Some(u) = m.group_used.get_mut(i) {
                *u = true;
            }
            Some(if key == "sender_group" {
                CondM::SenderGroup(i as u16)
            } else {
                CondM::RecipientGroup(i as u16)
            })
        }
        None => {
            cx.err(
                s.at(),
                unknown_name("group", &s.v, m.groups.iter().map(|g| &g.name.v)),
            );
            None
        }
    }
}

/// `sender_location` / `recipient_location`: "inside" or "outside".
fn location_cond(cx: &mut Cx<'_>, v: &Val<'_>, key: &str) -> Option<CondM> {
    let s = get_str(cx, v, key)?;
    let loc = match s.v.as_str() {
        "inside" => Location::Inside,
        "outside" => Location::Outside,
        _ => {
            cx.err(
                s.at(),
                format!("bad {key} \"{}\": expected \"inside\" or \"outside\"", s.v),
            );
            return None;
        }
    };
    Some(if key == "sender_location" {
        CondM::SenderLocation(loc)
    } else {
        CondM::RecipientLocation(loc)
    })
}

/// `inbound`: an inbound connector by name.
fn inbound_cond(cx: &mut Cx<'_>, m: &Model, v: &Val<'_>, key: &str) -> Option<CondM> {
    let s = get_str(cx, v, key)?;
    match m.inbound.iter().position(|i| i.name.v == s.v) {
        Some(i) => Some(CondM::Inbound(i as u16)),
        None => {
            cx.err(
                s.at(),
                unknown_name(
                    "inbound connector",
                    &s.v,
                    m.inbound.iter().map(|i| &i.name.v),
                ),
            );
            None
        }
    }
}

/// The `header` key of a condition set and the value patterns that go
/// with it, gathered while the set is read: together they make one
/// presence condition or one pattern condition per value key.
#[derive(Default)]
struct HeaderKeys {
    /// `header`: the field name, with its position.
    header: Option<(String, usize)>,
    /// `header_value_matches` (true) / `header_value_not_matches` (false).
    values: Vec<(bool, String, usize)>,
}

impl HeaderKeys {
    /// `header` (kept for [`finish`](Self::finish)) or `header_absent`
    /// (a condition of its own).
    fn name(&mut self, cx: &mut Cx<'_>, v: &Val<'_>, key: &str) -> Option<CondM> {
        let s = get_str(cx, v, key)?;
        match header_name(&s.v) {
            Ok(h) if key == "header" => {
                self.header = Some((h, v.span().start));
                None
            }
            Ok(h) => Some(CondM::HeaderAbsent(h)),
            Err(e) => {
                cx.err(s.at(), e);
                None
            }
        }
    }

    /// The conditions `header` makes: present, or matching each pattern.
    fn finish(self, out: &mut CondSet) {
        let Some((h, hat)) = self.header else {
            return;
        };
        if self.values.is_empty() {
            out.push((CondM::HeaderPresent(h), hat));
        } else {
            for (matches, p, at) in self.values {
                let c = if matches {
                    CondM::HeaderMatches(h.clone(), p)
                } else {
                    CondM::HeaderNotMatches(h.clone(), p)
                };
                out.push((c, at));
            }
        }
    }
}

/// A rule's `then`: its actions in file order, each with its position.
fn parse_actions(cx: &mut Cx<'_>, m: &mut Model, t: &DeTable<'_>) -> Vec<(ActM, usize)> {
    let f = Fields::new(cx, t, ACTION_KEYS, "the rule's then");
    let mut out = Vec::new();
    for &(key, _, v) in &f.list {
        let vat = v.span().start;
        match key {
            "route_to" => out.extend(route_to(cx, v, key).map(|a| (a, vat))),
            "use_connector" => out.extend(use_connector(cx, m, v, key).map(|a| (a, vat))),
            "add_header" | "set_header" => out.extend(header_actions(cx, v, key)),
            "remove_header" => {
                for s in get_strs(cx, v, key) {
                    match header_name(&s.v) {
                        Ok(h) => out.push((ActM::RemoveHeader(h), s.at())),
                        Err(e) => cx.err(s.at(), e),
                    }
                }
            }
            "rewrite_recipient" => out.extend(rewrite_recipient(cx, v, key).map(|a| (a, vat))),
            "add_recipient" => {
                for s in get_strs(cx, v, key) {
                    match address(&s.v, false) {
                        Ok(a) => out.push((ActM::AddRecipient(a), s.at())),
                        Err(e) => cx.err(s.at(), e),
                    }
                }
            }
            "reject" => out.extend(reject_action(cx, v, key).map(|a| (a, vat))),
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

/// `route_to`: the domain whose route the recipient takes.
fn route_to(cx: &mut Cx<'_>, v: &Val<'_>, key: &str) -> Option<ActM> {
    let s = get_str(cx, v, key)?;
    domain(&s.v)
        .map(ActM::RouteTo)
        .map_err(|e| cx.err(s.at(), format!("route_to: {e}")))
        .ok()
}

/// `use_connector`: a send connector by name, marked named.
fn use_connector(cx: &mut Cx<'_>, m: &mut Model, v: &Val<'_>, key: &str) -> Option<ActM> {
    let s = get_str(cx, v, key)?;
    match m.connectors.iter().position(|c| c.name.v == s.v) {
        Some(i) => {
            if let Some(n) = m.conn_named.get_mut(i) {
                *n = true;
            }
            Some(ActM::UseConnector(i as u16))
        }
        None => {
            cx.err(
                s.at(),
                unknown_name("connector", &s.v, m.connectors.iter().map(|c| &c.name.v)),
            );
            None
        }
    }
}

/// `add_header` / `set_header`: a table of field names and values, each
/// action at its name.
fn header_actions(cx: &mut Cx<'_>, v: &Val<'_>, key: &str) -> Vec<(ActM, usize)> {
    let mut out = Vec::new();
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
    out
}

/// `rewrite_recipient`: the address the recipient becomes.
fn rewrite_recipient(cx: &mut Cx<'_>, v: &Val<'_>, key: &str) -> Option<ActM> {
    let s = get_str(cx, v, key)?;
    address(&s.v, false)
        .map(ActM::RewriteRecipient)
        .map_err(|e| cx.err(s.at(), e))
        .ok()
}

/// `reject`: the reply the recipient is refused with.
fn reject_action(cx: &mut Cx<'_>, v: &Val<'_>, key: &str) -> Option<ActM> {
    let s = get_str(cx, v, key)?;
    reject(&s.v)
        .map(ActM::Reject)
        .map_err(|e| cx.err(s.at(), e))
        .ok()
}
