//! The compiled policy: fixed-size tables (heapless), serialised with
//! postcard into one blob. The rule file is checked and compiled on the
//! std side (`shell::rules`); everything here is plain data whose every
//! index was validated by [`Table::validate`], so evaluation cannot fail.
//!
//! Strings live in one pool ([`Table::strings`]) and are referenced by
//! [`Str`]; lists of strings ([`List`]) index [`Table::items`]. Regex
//! patterns are sparse DFAs (regex-automata) in [`Table::dfa_bytes`].

use super::super::dnsbl::Codes;
use super::super::limits::{
    MAX_ACTIONS, MAX_AGENTS, MAX_CONDITIONS, MAX_CONDSETS, MAX_CONNECTORS, MAX_DFAS, MAX_DFA_BYTES,
    MAX_DNS_LISTS, MAX_GROUPS, MAX_INBOUND, MAX_ITEMS, MAX_NETS, MAX_RENAMES, MAX_REWRITES,
    MAX_RULES, MAX_SPACES, MAX_STRING_BYTES,
};
use super::index::RuleIndex;
use heapless::Vec;
use serde::{Deserialize, Serialize};

/// Version of the blob layout; a blob of another version is refused (the
/// installer then recompiles the generation's source). 2: the Edge agents'
/// settings (recipient, sender and connection filters, protocol analysis).
/// 3: the cross-premises agents and connector settings, the content
/// filter and a connector's milters, authentication conditions.
/// 4: the rule index ([`RuleIndex`]).
pub const FORMAT: u16 = 4;

/// A string in [`Table::strings`]: offset and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Str {
    /// Offset in the pool.
    pub off: u32,
    /// Length in octets.
    pub len: u32,
}

/// A run of [`Table::items`] (strings): first index and count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct List {
    /// First item.
    pub first: u16,
    /// Number of items.
    pub count: u16,
}

/// A run of entries of some other table (conditions, actions, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Span {
    /// First index.
    pub first: u16,
    /// Number of entries.
    pub count: u16,
}

/// What an inbound connector's sessions are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum InboundKind {
    /// Originating: inside, trusted headers kept.
    Organization,
    /// Known but anonymous.
    Partner,
}

/// An inbound connector: attribution by client network or TLS name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Inbound {
    /// Its name.
    pub name: Str,
    /// Organization or partner.
    pub kind: InboundKind,
    /// Client networks ([`Table::nets`]).
    pub nets: Span,
    /// The name in the client's TLS certificate, if that attributes.
    pub tls_name: Option<Str>,
    /// The milters this connector's mail goes through, comma-separated
    /// (`None`: every configured one; empty: none).
    pub milters: Option<Str>,
}

/// An IP network; IPv4 is stored IPv4-mapped (`::ffff:a.b.c.d`, prefix + 96).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Net {
    /// Network address, 16 octets.
    pub addr: [u8; 16],
    /// Prefix length, 0..=128.
    pub prefix: u8,
}

impl Net {
    /// Whether `ip` (16 octets, IPv4-mapped for IPv4) is in this network.
    pub fn contains(&self, ip: &[u8; 16]) -> bool {
        let bits = usize::from(self.prefix.min(128));
        let (full, rest) = (bits / 8, bits % 8);
        if self.addr.get(..full) != ip.get(..full) {
            return false;
        }
        if rest == 0 {
            return true;
        }
        let mask = 0xffu8 << (8 - rest);
        match (self.addr.get(full), ip.get(full)) {
            (Some(a), Some(b)) => a & mask == b & mask,
            _ => true,
        }
    }
}

/// TLS policy of a send connector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum TlsPolicy {
    /// STARTTLS when offered.
    Opportunistic,
    /// Never send in clear text.
    Required,
    /// Required, and the certificate must match the host name.
    Verify,
}

/// A send connector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Connector {
    /// Its name.
    pub name: Str,
    /// Address spaces ([`Table::spaces`]).
    pub spaces: Span,
    /// Smart hosts (`host[:port]`); none: MX lookup.
    pub smart_hosts: List,
    /// TLS policy.
    pub tls: TlsPolicy,
    /// Cost; the lower wins a tie of specificity.
    pub cost: u32,
    /// `cross_premises = true`: the connector to Exchange Online or to
    /// on-premises; cross-premises demotion applies to the copy sent here.
    pub cross_premises: bool,
    /// `tls_certificate`: the name of the client certificate (declared in
    /// the appliance config's `[[tls.client]]`) presented at STARTTLS.
    pub tls_certificate: Option<Str>,
}

/// One address space of a send connector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Space {
    /// `*`: every domain.
    Any,
    /// `--`: the accepted domains.
    Accepted,
    /// `example.com`: exactly that domain.
    Domain(Str),
    /// `*.example.com`: any subdomain of it (not the domain itself).
    Subdomains(Str),
}

/// A group: a name and address patterns (`user@domain`, `*@domain`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Group {
    /// Its name.
    pub name: Str,
    /// Member patterns.
    pub members: List,
}

/// Direction of an address rewrite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Direction {
    /// Envelope recipients and To/Cc, as mail comes in.
    Inbound,
    /// Envelope sender and From/Reply-To of originating mail.
    Outbound,
}

/// One rewrite: `from` (`user@domain` or `*@domain`) to `to` (same forms;
/// a `*` local part keeps the original local part).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Rewrite {
    /// Which way.
    pub direction: Direction,
    /// Pattern matched.
    pub from: Str,
    /// Replacement.
    pub to: Str,
}

/// Inside (an accepted domain / originating session) or outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Location {
    /// Inside the organisation.
    Inside,
    /// Outside it.
    Outside,
}

/// One condition of a transport rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Condition {
    /// The sender matches one of these address patterns.
    Sender(List),
    /// The sender's domain is one of these.
    SenderDomain(List),
    /// The sender is in this group ([`Table::groups`] index).
    SenderGroup(u16),
    /// The recipient matches one of these address patterns.
    Recipient(List),
    /// The recipient's domain is one of these.
    RecipientDomain(List),
    /// The recipient is in this group.
    RecipientGroup(u16),
    /// The sender is inside (originating session) or outside.
    SenderLocation(Location),
    /// The recipient's domain is accepted (inside) or not.
    RecipientLocation(Location),
    /// The header is present.
    HeaderPresent(Str),
    /// The header is absent.
    HeaderAbsent(Str),
    /// The header is present and a value matches the pattern ([`Table::dfas`]).
    HeaderMatches(Str, u16),
    /// The header is present and no value matches the pattern.
    HeaderNotMatches(Str, u16),
    /// The session came through this inbound connector.
    Inbound(u16),
    /// The client address is in one of these networks.
    ClientNetwork(Span),
    /// An attachment's file name matches the pattern.
    AttachmentMatches(u16),
    /// The session authenticated (SMTP AUTH) as one of these logins
    /// (case-insensitive; `*`: any login).
    AuthenticatedAs(List),
    /// A sender authentication method's result is one of a set (bits of
    /// [`AuthResult`]); never true for mail that was not checked.
    Auth(AuthMethod, u8),
}

/// A sender authentication method (rule conditions `spf`, `dkim`, `dmarc`,
/// `arc`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum AuthMethod {
    /// SPF (RFC 7208).
    Spf,
    /// DKIM (RFC 6376): `pass` when any signature verified.
    Dkim,
    /// DMARC (RFC 7489).
    Dmarc,
    /// ARC (RFC 8617).
    Arc,
}

/// A method's result (RFC 8601 names); its bit in a condition's set is
/// `1 << (self as u8)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum AuthResult {
    /// Nothing to check (no record, no signature).
    None,
    /// Verified.
    Pass,
    /// Refuted.
    Fail,
    /// SPF `softfail`.
    SoftFail,
    /// SPF `neutral` (or a DKIM signature not checked).
    Neutral,
    /// A transient error (DNS).
    TempError,
    /// A permanent error (broken records or signatures).
    PermError,
}

impl AuthResult {
    /// Every result, by name, for the rule file and the trace.
    pub const ALL: [(AuthResult, &'static str); 7] = [
        (AuthResult::None, "none"),
        (AuthResult::Pass, "pass"),
        (AuthResult::Fail, "fail"),
        (AuthResult::SoftFail, "softfail"),
        (AuthResult::Neutral, "neutral"),
        (AuthResult::TempError, "temperror"),
        (AuthResult::PermError, "permerror"),
    ];

    /// Its bit in a condition's set.
    pub const fn bit(self) -> u8 {
        1 << (self as u8)
    }

    /// Its name.
    pub fn name(self) -> &'static str {
        AuthResult::ALL
            .iter()
            .find(|r| r.0 == self)
            .map_or("none", |r| r.1)
    }
}

/// The sender authentication verdicts of one message, as the shell found
/// them (the rules' `spf`, `dkim`, `dmarc`, `arc` conditions read them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct AuthVerdicts {
    /// SPF.
    pub spf: AuthResult,
    /// DKIM, summed up over the signatures.
    pub dkim: AuthResult,
    /// DMARC.
    pub dmarc: AuthResult,
    /// ARC.
    pub arc: AuthResult,
    /// DMARC failed with `p=quarantine` (after `pct=`, and no trusted ARC
    /// sealer vouched for the message): `[authentication] quarantine`
    /// applies.
    pub quarantine: bool,
}

impl AuthVerdicts {
    /// The result of `m`.
    pub fn of(&self, m: AuthMethod) -> AuthResult {
        match m {
            AuthMethod::Spf => self.spf,
            AuthMethod::Dkim => self.dkim,
            AuthMethod::Dmarc => self.dmarc,
            AuthMethod::Arc => self.arc,
        }
    }
}

/// One action of a transport rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Action {
    /// Routing override: choose the connector and next hop by this domain.
    RouteTo(Str),
    /// Send through this connector.
    UseConnector(u16),
    /// Add a header field (name, value).
    AddHeader(Str, Str),
    /// Replace every field of that name by one with this value.
    SetHeader(Str, Str),
    /// Remove every field of that name.
    RemoveHeader(Str),
    /// Replace the recipient address.
    RewriteRecipient(Str),
    /// Add a recipient to the message.
    AddRecipient(Str),
    /// Refuse the recipient with this reply.
    Reject {
        /// Reply code (4xx or 5xx).
        code: u16,
        /// Enhanced status code.
        status: (u8, u16, u16),
        /// Text.
        text: Str,
    },
}

/// A transport rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Rule {
    /// Its name.
    pub name: Str,
    /// Priority; 1 runs first (rules are stored sorted by it).
    pub priority: u32,
    /// The conditions that must all hold ([`Table::condsets`] index).
    pub when: u16,
    /// Exception sets ([`Table::condsets`]); any one that holds vetoes.
    pub except: Span,
    /// Actions ([`Table::actions`]).
    pub actions: Span,
    /// Stop rule processing after this rule when it applied.
    pub stop: bool,
}

/// The built-in agents of the transport pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Agent {
    /// Refuses clients from blocked networks (OnConnect).
    ConnectionFilter,
    /// Attributes the session to an inbound connector (OnConnect).
    Attribution,
    /// Accepted domains; relay only for originating sessions (OnRcptCommand).
    RecipientFilter,
    /// Strips trusted headers from anonymous mail (OnEndOfHeaders).
    HeaderFirewall,
    /// Refuses mail over the hop limit (OnEndOfData).
    HopCount,
    /// Flat to location-specific recipient addresses, on mail from
    /// non-originating sessions (OnSubmittedMessage).
    InboundRewrite,
    /// Transport rules (OnResolvedMessage).
    TransportRules,
    /// Centralized mail flow stamp and override (OnResolvedMessage).
    Cmt,
    /// Chooses the send connector per recipient (OnRoutedMessage).
    ConnectorSelection,
    /// Location-specific to flat sender addresses (OnCategorizedMessage).
    OutboundRewrite,
    /// Blocked and blank senders (OnMailCommand, OnEndOfHeaders). Declared
    /// after the first agents so that compiled tables keep their encoding.
    SenderFilter,
    /// A per-client score from behaviour over recent sessions (OnConnect,
    /// then watching every later event of the session).
    ProtocolAnalysis,
    /// Copies the organisation headers to their cross-premises twins on
    /// the copy leaving by a `cross_premises` connector (OnRoutedMessage).
    CrossPremisesDemotion,
    /// Promotes cross-premises headers back to organisation headers on
    /// originating mail, strips them from anonymous mail (OnEndOfHeaders).
    CrossPremisesPromotion,
    /// The milters of the appliance config (OnEndOfData, after the hop
    /// count): their verdicts, header edits, body and envelope changes.
    ContentFilter,
    /// SPF, DKIM, DMARC and ARC verdicts of non-originating mail, the
    /// `Authentication-Results` field, DMARC's reject and quarantine
    /// (OnEndOfHeaders, as Exchange's Sender ID; the body checks at
    /// OnEndOfData).
    SenderAuthentication,
}

/// The events agents register on, in pipeline order (seed 003).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Stage {
    /// SMTP receive: connection.
    OnConnect,
    /// SMTP receive: RCPT TO.
    OnRcptCommand,
    /// SMTP receive: end of headers.
    OnEndOfHeaders,
    /// SMTP receive: end of data.
    OnEndOfData,
    /// Categorizer: submitted.
    OnSubmittedMessage,
    /// Categorizer: recipients resolved (routing overrides are set here).
    OnResolvedMessage,
    /// Categorizer: routed.
    OnRoutedMessage,
    /// Categorizer: categorized.
    OnCategorizedMessage,
    /// SMTP receive: the session ended (no built-in agent). In the
    /// pipeline it comes after [`Stage::OnEndOfData`] (see [`STAGES`]); it
    /// is declared after the categorizer events so that compiled tables
    /// keep their encoding.
    OnDisconnect,
    /// SMTP receive: MAIL FROM. In the pipeline it comes after
    /// [`Stage::OnConnect`]; declared last for the same reason.
    OnMailCommand,
}

/// The events in pipeline order, as `sluice pipeline` lists them: the SMTP
/// receive events, then the categorizer events (seed 003).
pub const STAGES: [Stage; 10] = [
    Stage::OnConnect,
    Stage::OnMailCommand,
    Stage::OnRcptCommand,
    Stage::OnEndOfHeaders,
    Stage::OnEndOfData,
    Stage::OnDisconnect,
    Stage::OnSubmittedMessage,
    Stage::OnResolvedMessage,
    Stage::OnRoutedMessage,
    Stage::OnCategorizedMessage,
];

/// Each event's place in [`STAGES`], by the enum's own order (its
/// encoding, not the pipeline's): worked out once, at compile time.
const STAGE_POSITIONS: [usize; STAGES.len()] = {
    let mut pos = [0; STAGES.len()];
    let mut i = 0;
    while i < STAGES.len() {
        pos[STAGES[i] as usize] = i;
        i += 1;
    }
    pos
};

/// Where event `st` comes in the pipeline ([`STAGES`]): a lookup, not a
/// search, as the pipeline order is sorted by it for every message.
pub fn stage_position(st: Stage) -> usize {
    STAGE_POSITIONS
        .get(st as usize)
        .copied()
        .unwrap_or(STAGES.len())
}

/// Every agent, its event, its default priority.
pub const AGENTS: [(Agent, Stage, u8, &str); MAX_AGENTS] = [
    (
        Agent::ConnectionFilter,
        Stage::OnConnect,
        1,
        "connection_filter",
    ),
    (Agent::Attribution, Stage::OnConnect, 2, "attribution"),
    (
        Agent::RecipientFilter,
        Stage::OnRcptCommand,
        1,
        "recipient_filter",
    ),
    (
        Agent::HeaderFirewall,
        Stage::OnEndOfHeaders,
        1,
        "header_firewall",
    ),
    (Agent::HopCount, Stage::OnEndOfData, 1, "hop_count"),
    (
        Agent::InboundRewrite,
        Stage::OnSubmittedMessage,
        1,
        "inbound_rewrite",
    ),
    (
        Agent::TransportRules,
        Stage::OnResolvedMessage,
        1,
        "transport_rules",
    ),
    (Agent::Cmt, Stage::OnResolvedMessage, 2, "cmt"),
    (
        Agent::ConnectorSelection,
        Stage::OnRoutedMessage,
        1,
        "connector_selection",
    ),
    (
        Agent::OutboundRewrite,
        Stage::OnCategorizedMessage,
        1,
        "outbound_rewrite",
    ),
    (
        Agent::SenderFilter,
        Stage::OnMailCommand,
        1,
        "sender_filter",
    ),
    (
        Agent::ProtocolAnalysis,
        Stage::OnConnect,
        3,
        "protocol_analysis",
    ),
    (
        Agent::CrossPremisesDemotion,
        Stage::OnRoutedMessage,
        2,
        "cross_premises_demotion",
    ),
    (
        Agent::CrossPremisesPromotion,
        Stage::OnEndOfHeaders,
        2,
        "cross_premises_promotion",
    ),
    (
        Agent::ContentFilter,
        Stage::OnEndOfData,
        2,
        "content_filter",
    ),
    (
        Agent::SenderAuthentication,
        Stage::OnEndOfHeaders,
        3,
        "sender_authentication",
    ),
];

/// The later events an agent also acts on, beyond its own in [`AGENTS`]
/// (seed 003 lists several events for some Edge agents). Its priority in
/// them is the one of its own event; `sluice pipeline` lists it under each.
pub const ALSO_ON: [(Agent, Stage); 8] = [
    (Agent::SenderAuthentication, Stage::OnEndOfData),
    (Agent::ConnectionFilter, Stage::OnMailCommand),
    (Agent::ConnectionFilter, Stage::OnRcptCommand),
    (Agent::SenderFilter, Stage::OnEndOfHeaders),
    (Agent::ProtocolAnalysis, Stage::OnRcptCommand),
    (Agent::ProtocolAnalysis, Stage::OnEndOfHeaders),
    (Agent::ProtocolAnalysis, Stage::OnEndOfData),
    (Agent::ProtocolAnalysis, Stage::OnDisconnect),
];

/// An agent's registration as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct AgentSlot {
    /// Which agent.
    pub agent: Agent,
    /// Its event (fixed per agent).
    pub stage: Stage,
    /// Priority within the event; 1 runs first.
    pub priority: u8,
    /// Disabled agents are listed but do nothing.
    pub enabled: bool,
}

/// Centralized mail flow settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Cmt {
    /// Whether CMT is on.
    pub enabled: bool,
    /// Bit i set: inbound connector i is listed in `from_inbound`.
    pub from_inbound: u32,
    /// The stamp header's name.
    pub stamp: Str,
}

/// The recipient filter's settings beyond the accepted domains
/// (`[recipient_filter]`). Patterns are those of
/// [`filter_matches`](crate::engine::addr::filter_matches).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct RecipientFilter {
    /// `valid`: recipients that exist (empty: this source is not used).
    pub valid: List,
    /// `blocked`: recipients refused `550 5.7.1`.
    pub blocked: List,
    /// `directory = true`: the installed directory is a source.
    pub directory: bool,
    /// `call_ahead`: the send connector whose next hop verifies.
    pub call_ahead: Option<u16>,
    /// `tarpit`, milliseconds: the delay of each RCPT reply once the
    /// session has had an unknown recipient (0: none).
    pub tarpit_ms: u32,
    /// `max_unknown`: unknown recipients a session may try; the next one
    /// gets `421 4.7.0` and the session closes (0: no limit of its own).
    pub max_unknown: u16,
    /// `call_ahead_timeout`, seconds: the whole probe at most.
    pub call_ahead_timeout: u16,
    /// `call_ahead_valid_ttl`, seconds: how long a 250 is remembered.
    pub valid_ttl: u32,
    /// `call_ahead_unknown_ttl`, seconds: how long a 550 is remembered.
    pub unknown_ttl: u32,
}

/// The sender filter's settings (`[sender_filter]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct SenderFilter {
    /// `blocked`: senders (envelope and `From:`), as filter patterns.
    pub blocked: List,
    /// `action = "stamp"`: a blocked sender's mail is stamped, not refused.
    pub stamp: bool,
    /// `blank_sender = "reject"`: `MAIL FROM:<>` is refused.
    pub reject_blank: bool,
    /// The stamp's field name ([`SENDER_STAMP`]).
    pub stamp_name: Str,
    /// The stamp's value ([`SENDER_STAMP_VALUE`]).
    pub stamp_value: Str,
}

/// The field the sender filter adds to a blocked sender's mail when its
/// action is `stamp`; rules act on it (`header = "X-Sluice-Sender-Filter"`).
/// An incoming copy from a non-originating session is never visible to the
/// rules and is removed by the sender filter.
pub const SENDER_STAMP: &str = "X-Sluice-Sender-Filter";

/// The value of [`SENDER_STAMP`].
pub const SENDER_STAMP_VALUE: &str = "blocked";

/// Message limits of the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct PolicyLimits {
    /// More `Received:` fields than this: `554 5.4.14`.
    pub max_hops: u16,
    /// Largest message, octets.
    pub max_message_size: u64,
    /// Recipients per message.
    pub max_recipients: u32,
}

/// A DNS list provider of the connection filter (`block_lists`,
/// `allow_lists`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct DnsList {
    /// The list's zone, e.g. `zen.spamhaus.org`.
    pub zone: Str,
    /// An allow list (a listed client skips the block lists) rather than a
    /// block list.
    pub allow: bool,
    /// Which answers count as listed.
    pub codes: Codes,
    /// A block list's reply text; `{client}` stands for the client's
    /// address, `{zone}` for the zone.
    pub reply: Str,
}

/// Per-client rate limits of the connection filter; 0 is no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct RateLimits {
    /// Connections per minute per client address (`421 4.7.0` beyond).
    pub connections_per_minute: u32,
    /// Messages (MAIL FROM) per minute per client address (`450 4.7.1`).
    pub messages_per_minute: u32,
}

/// `[protocol_analysis]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Reputation {
    /// Whether behaviour is scored (also off when the agent is disabled).
    pub enabled: bool,
    /// The score at which an address is blocked.
    pub threshold: u32,
    /// How long a blocked address is refused at connect, seconds.
    pub block_for: u32,
}

/// `[cross_premises]`: the header pair of cross-premises promotion and
/// demotion (Exchange's by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct CrossPremises {
    /// The organisation prefix, `X-MS-Exchange-Organization-`.
    pub organization: Str,
    /// The cross-premises prefix, `X-MS-Exchange-CrossPremises-`.
    pub cross_premises: Str,
    /// The names after the prefix that are demoted and promoted; empty:
    /// every one.
    pub headers: List,
    /// The originator header's name, `X-OriginatorOrg`.
    pub originator: Str,
}

/// The whole compiled policy. Build it with the shell's compiler, or
/// decode a blob with [`Table::from_blob`]; both validate it, after which
/// evaluation cannot fail or panic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Table {
    /// Layout version ([`FORMAT`]).
    pub format: u16,
    /// Hash of the rule file's text: the policy's version.
    pub version: u64,
    /// The string pool.
    pub strings: Vec<u8, MAX_STRING_BYTES>,
    /// Lists of strings.
    pub items: Vec<Str, MAX_ITEMS>,
    /// Accepted domains.
    pub accepted: List,
    /// The default accepted domain (CMT's override target).
    pub default_domain: Option<Str>,
    /// Groups.
    pub groups: Vec<Group, MAX_GROUPS>,
    /// Inbound connectors, in file order.
    pub inbound: Vec<Inbound, MAX_INBOUND>,
    /// Networks of inbound connectors, conditions and the connection filter.
    pub nets: Vec<Net, MAX_NETS>,
    /// Networks refused by the connection filter.
    pub blocked: Span,
    /// Send connectors, in file order.
    pub connectors: Vec<Connector, MAX_CONNECTORS>,
    /// Address spaces.
    pub spaces: Vec<Space, MAX_SPACES>,
    /// Rewrite maps (exact entries before `*@domain` ones per direction).
    pub rewrites: Vec<Rewrite, MAX_REWRITES>,
    /// CMT.
    pub cmt: Cmt,
    /// Header firewall: trusted name prefixes.
    pub trusted_prefixes: List,
    /// Header firewall: names renamed on anonymous mail (from, to).
    pub renames: Vec<(Str, Str), MAX_RENAMES>,
    /// Limits.
    pub limits: PolicyLimits,
    /// Transport rules, sorted by priority.
    pub rules: Vec<Rule, MAX_RULES>,
    /// Condition sets: runs of [`Table::conditions`].
    pub condsets: Vec<Span, MAX_CONDSETS>,
    /// Conditions.
    pub conditions: Vec<Condition, MAX_CONDITIONS>,
    /// Actions.
    pub actions: Vec<Action, MAX_ACTIONS>,
    /// Patterns: runs of [`Table::dfa_bytes`] holding sparse DFAs.
    pub dfas: Vec<(u32, u32), MAX_DFAS>,
    /// Serialised sparse DFAs (native endianness of the target).
    pub dfa_bytes: Vec<u8, MAX_DFA_BYTES>,
    /// The pipeline's agents.
    pub agents: Vec<AgentSlot, MAX_AGENTS>,
    /// The recipient filter beyond the accepted domains.
    pub recipient_filter: RecipientFilter,
    /// The sender filter.
    pub sender_filter: SenderFilter,
    /// Networks the connection filter always lets in: never blocked, never
    /// checked against DNS block lists or rate limits.
    pub allowed: Span,
    /// DNS block and allow lists, in file order.
    pub dns_lists: Vec<DnsList, MAX_DNS_LISTS>,
    /// Per-client rate limits.
    pub rate_limits: RateLimits,
    /// Protocol analysis.
    pub reputation: Reputation,
    /// Cross-premises header promotion and demotion.
    pub cross_premises: CrossPremises,
    /// `[authentication]`: sender authentication of non-originating mail.
    pub authentication: Authentication,
    /// The rule index: which rules can apply to a recipient.
    pub index: RuleIndex,
}

/// `[authentication]`: what the sender authentication agent does with
/// its verdicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Authentication {
    /// The section is present: non-originating mail is checked.
    pub enabled: bool,
    /// `honor_reject`: a DMARC `p=reject` failure gets `550 5.7.1`.
    pub honor_reject: bool,
    /// `quarantine = "route_to DOMAIN"`: a DMARC `p=quarantine` failure is
    /// routed by this domain; `None`: stamped.
    pub quarantine_route: Option<Str>,
    /// `trusted_arc_sealers`: a passing ARC chain sealed by one of these
    /// overrides a DMARC failure (forwarders, mailing lists).
    pub trusted_sealers: List,
}

/// Why a table or blob was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum TableError {
    /// The blob does not decode (truncated, corrupt, too large).
    Decode,
    /// The blob is intact (its CRC holds) but of another layout: made by
    /// another version of sluice.
    Layout,
    /// The blob is of another layout version.
    Format(u16),
    /// An index or span points outside its table.
    BadIndex,
    /// The rule index does not fit the rules ([`Table::index_ok`]).
    BadRuleIndex,
    /// A pattern is not a valid DFA for this target.
    BadPattern(u16),
}

impl Table {
    /// An empty policy: no accepted domain, no connector, no rule.
    pub const fn new() -> Self {
        Table {
            format: FORMAT,
            version: 0,
            strings: Vec::new(),
            items: Vec::new(),
            accepted: List { first: 0, count: 0 },
            default_domain: None,
            groups: Vec::new(),
            inbound: Vec::new(),
            nets: Vec::new(),
            blocked: Span { first: 0, count: 0 },
            connectors: Vec::new(),
            spaces: Vec::new(),
            rewrites: Vec::new(),
            cmt: Cmt {
                enabled: false,
                from_inbound: 0,
                stamp: Str { off: 0, len: 0 },
            },
            trusted_prefixes: List { first: 0, count: 0 },
            renames: Vec::new(),
            limits: PolicyLimits {
                max_hops: 30,
                max_message_size: 36 * 1024 * 1024,
                max_recipients: 200,
            },
            rules: Vec::new(),
            condsets: Vec::new(),
            conditions: Vec::new(),
            actions: Vec::new(),
            dfas: Vec::new(),
            dfa_bytes: Vec::new(),
            agents: Vec::new(),
            recipient_filter: RecipientFilter {
                valid: List { first: 0, count: 0 },
                blocked: List { first: 0, count: 0 },
                directory: false,
                call_ahead: None,
                tarpit_ms: 0,
                max_unknown: 0,
                call_ahead_timeout: 0,
                valid_ttl: 0,
                unknown_ttl: 0,
            },
            sender_filter: SenderFilter {
                blocked: List { first: 0, count: 0 },
                stamp: false,
                reject_blank: false,
                stamp_name: Str { off: 0, len: 0 },
                stamp_value: Str { off: 0, len: 0 },
            },
            allowed: Span { first: 0, count: 0 },
            dns_lists: Vec::new(),
            rate_limits: RateLimits {
                connections_per_minute: 0,
                messages_per_minute: 0,
            },
            reputation: Reputation {
                enabled: false,
                threshold: 0,
                block_for: 0,
            },
            cross_premises: CrossPremises {
                organization: Str { off: 0, len: 0 },
                cross_premises: Str { off: 0, len: 0 },
                headers: List { first: 0, count: 0 },
                originator: Str { off: 0, len: 0 },
            },
            authentication: Authentication {
                enabled: false,
                honor_reject: true,
                quarantine_route: None,
                trusted_sealers: List { first: 0, count: 0 },
            },
            index: RuleIndex::new(),
        }
    }

    /// The octets of `s` (empty if out of range, which validation excludes).
    /// Inlined: a rule table of 1,024 rules asks for hundreds per message.
    #[inline]
    pub fn str(&self, s: Str) -> &[u8] {
        let start = s.off as usize;
        self.strings
            .get(start..start.saturating_add(s.len as usize))
            .unwrap_or(&[])
    }

    /// The strings of `l`.
    pub fn list(&self, l: List) -> impl Iterator<Item = &[u8]> + '_ {
        let start = usize::from(l.first);
        self.items
            .get(start..start + usize::from(l.count))
            .unwrap_or(&[])
            .iter()
            .map(move |s| self.str(*s))
    }

    /// Decodes and validates a blob made by the shell's rule compiler
    /// (`shell::policy::compile::encode`: postcard with a CRC-32C).
    pub fn from_blob(blob: &[u8]) -> Result<Self, TableError> {
        let t: Table = postcard::from_bytes_crc32(blob, crc32()).map_err(|_| {
            if intact(blob) {
                TableError::Layout
            } else {
                TableError::Decode
            }
        })?;
        if t.format != FORMAT {
            return Err(TableError::Format(t.format));
        }
        t.validate()?;
        Ok(t)
    }

    /// Checks every index, span and pattern, so evaluation cannot fail.
    pub fn validate(&self) -> Result<(), TableError> {
        if !(self.settings_ok() && self.rules_ok()) {
            return Err(TableError::BadIndex);
        }
        if !self.index_ok() {
            return Err(TableError::BadRuleIndex);
        }
        for i in 0..self.dfas.len() {
            if self.dfa(i as u16).is_none() {
                return Err(TableError::BadPattern(i as u16));
            }
        }
        Ok(())
    }

    /// A string reference lies inside the string pool.
    fn str_ok(&self, s: &Str) -> bool {
        (s.off as usize)
            .checked_add(s.len as usize)
            .is_some_and(|e| e <= self.strings.len())
    }

    /// A list reference lies inside the item pool.
    fn list_ok(&self, l: &List) -> bool {
        usize::from(l.first) + usize::from(l.count) <= self.items.len()
    }

    /// The domains, groups, connectors, rewrites and stamp point inside the
    /// table.
    fn settings_ok(&self) -> bool {
        let s_ok = |s: &Str| self.str_ok(s);
        self.items.iter().all(s_ok)
            && self.list_ok(&self.accepted)
            && self.default_domain.as_ref().is_none_or(s_ok)
            && self
                .groups
                .iter()
                .all(|g| s_ok(&g.name) && self.list_ok(&g.members))
            && self.inbound.iter().all(|i| {
                s_ok(&i.name)
                    && span_ok(&i.nets, self.nets.len())
                    && i.tls_name.as_ref().is_none_or(s_ok)
            })
            && span_ok(&self.blocked, self.nets.len())
            && span_ok(&self.allowed, self.nets.len())
            && self
                .dns_lists
                .iter()
                .all(|l| s_ok(&l.zone) && s_ok(&l.reply))
            && self.connectors.iter().all(|c| {
                s_ok(&c.name)
                    && span_ok(&c.spaces, self.spaces.len())
                    && self.list_ok(&c.smart_hosts)
                    && c.tls_certificate.as_ref().is_none_or(s_ok)
            })
            && self.spaces.iter().all(|sp| match sp {
                Space::Domain(s) | Space::Subdomains(s) => s_ok(s),
                Space::Any | Space::Accepted => true,
            })
            && self.rewrites.iter().all(|r| s_ok(&r.from) && s_ok(&r.to))
            && s_ok(&self.cmt.stamp)
            && self.list_ok(&self.trusted_prefixes)
            && self.renames.iter().all(|(a, b)| s_ok(a) && s_ok(b))
            && self.filters_ok()
            && self.cross_premises_ok()
            && self
                .authentication
                .quarantine_route
                .is_none_or(|r| self.str_ok(&r))
            && self.list_ok(&self.authentication.trusted_sealers)
    }

    /// The cross-premises prefixes, names and originator header point
    /// inside the table.
    fn cross_premises_ok(&self) -> bool {
        let x = &self.cross_premises;
        self.str_ok(&x.organization)
            && self.str_ok(&x.cross_premises)
            && self.list_ok(&x.headers)
            && self.str_ok(&x.originator)
    }

    /// The recipient and sender filters point inside the table.
    fn filters_ok(&self) -> bool {
        let (r, s) = (&self.recipient_filter, &self.sender_filter);
        self.list_ok(&r.valid)
            && self.list_ok(&r.blocked)
            && r.call_ahead
                .is_none_or(|c| usize::from(c) < self.connectors.len())
            && self.list_ok(&s.blocked)
            && self.str_ok(&s.stamp_name)
            && self.str_ok(&s.stamp_value)
    }

    /// The rules, their condition sets, conditions, actions and patterns
    /// point inside the table.
    fn rules_ok(&self) -> bool {
        self.rules.iter().all(|r| {
            self.str_ok(&r.name)
                && usize::from(r.when) < self.condsets.len()
                && span_ok(&r.except, self.condsets.len())
                && span_ok(&r.actions, self.actions.len())
        }) && self
            .condsets
            .iter()
            .all(|c| span_ok(c, self.conditions.len()))
            && self.conditions.iter().all(|c| self.condition_ok(c))
            && self.actions.iter().all(|a| self.action_ok(a))
            && self.dfas.iter().all(|(o, l)| {
                (*o as usize)
                    .checked_add(*l as usize)
                    .is_some_and(|e| e <= self.dfa_bytes.len())
            })
    }

    /// One condition's references point inside the table.
    fn condition_ok(&self, c: &Condition) -> bool {
        match c {
            Condition::Sender(l)
            | Condition::SenderDomain(l)
            | Condition::Recipient(l)
            | Condition::RecipientDomain(l)
            | Condition::AuthenticatedAs(l) => self.list_ok(l),
            Condition::SenderGroup(g) | Condition::RecipientGroup(g) => {
                usize::from(*g) < self.groups.len()
            }
            Condition::SenderLocation(_) | Condition::RecipientLocation(_) => true,
            Condition::HeaderPresent(s) | Condition::HeaderAbsent(s) => self.str_ok(s),
            Condition::HeaderMatches(s, d) | Condition::HeaderNotMatches(s, d) => {
                self.str_ok(s) && usize::from(*d) < self.dfas.len()
            }
            Condition::Inbound(i) => usize::from(*i) < self.inbound.len(),
            Condition::ClientNetwork(sp) => span_ok(sp, self.nets.len()),
            Condition::AttachmentMatches(d) => usize::from(*d) < self.dfas.len(),
            Condition::Auth(_, set) => *set != 0 && *set < 1 << AuthResult::ALL.len(),
        }
    }

    /// One action's references point inside the table.
    fn action_ok(&self, a: &Action) -> bool {
        match a {
            Action::RouteTo(s)
            | Action::RemoveHeader(s)
            | Action::RewriteRecipient(s)
            | Action::AddRecipient(s) => self.str_ok(s),
            Action::AddHeader(a, b) | Action::SetHeader(a, b) => self.str_ok(a) && self.str_ok(b),
            Action::UseConnector(c) => usize::from(*c) < self.connectors.len(),
            Action::Reject { text, .. } => self.str_ok(text),
        }
    }

    /// The DFA of pattern `i`, checked (regex-automata validates the bytes
    /// on each call: cheap for the small sparse DFAs of header rules).
    pub fn dfa(&self, i: u16) -> Option<regex_automata::dfa::sparse::DFA<&[u8]>> {
        let (off, len) = *self.dfas.get(usize::from(i))?;
        let bytes = self
            .dfa_bytes
            .get(off as usize..(off as usize).checked_add(len as usize)?)?;
        regex_automata::dfa::sparse::DFA::from_bytes(bytes)
            .ok()
            .map(|(d, _)| d)
    }

    /// The agent's registration, if present.
    pub fn agent(&self, a: Agent) -> Option<&AgentSlot> {
        self.agents.iter().find(|s| s.agent == a)
    }

    /// Whether agent `a` runs.
    pub fn enabled(&self, a: Agent) -> bool {
        self.agent(a).is_none_or(|s| s.enabled)
    }
}

impl Default for Table {
    fn default() -> Self {
        Table::new()
    }
}

/// The CRC of blobs (CRC-32C), shared by the shell's encoder.
pub fn crc32() -> crc::Digest<'static, u32> {
    static CASTAGNOLI: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);
    CASTAGNOLI.digest()
}

/// The blob's trailing CRC-32C (little-endian, as postcard appends it)
/// matches its payload: the blob is whole, whatever layout made it.
fn intact(blob: &[u8]) -> bool {
    let Some(split) = blob.len().checked_sub(4) else {
        return false;
    };
    let (payload, tail) = blob.split_at(split);
    let mut d = crc32();
    d.update(payload);
    <[u8; 4]>::try_from(tail).is_ok_and(|b| u32::from_le_bytes(b) == d.finalize())
}

/// A span of `count` entries from `first` lies inside a pool of `n`.
fn span_ok(sp: &Span, n: usize) -> bool {
    usize::from(sp.first) + usize::from(sp.count) <= n
}
