//! Evaluation of a validated [`Table`] for one message, per recipient.
//!
//! The agents run in [`run_order`]: the events in the pipeline's order
//! (see [`AGENTS`]), and within an event the enabled agents by the
//! priority the table gives them (1 first), each agent one function. With
//! the built-in priorities: header firewall, hop count, inbound rewriting
//! of To/Cc, then per recipient the recipient filter, inbound rewriting,
//! transport rules, CMT and connector selection, then outbound rewriting.
//! Two agents share an event, transport rules and CMT (OnResolvedMessage):
//! the first of them to set a recipient's route keeps it. Inbound
//! rewriting applies only to mail coming in (non-originating sessions),
//! outbound only to mail going out (originating sessions). Header edits
//! and notes reach the [`Sink`] in the order the agents run.
//! Nothing here allocates: results go to a caller's [`Sink`] as they are
//! decided, addresses as [`Addr`] pieces (of the input or of the table),
//! header edits as spans of the original header block.

use super::super::addr::tls_name_matches;
use super::super::addr::{addr_matches, domain_of, is_addr_byte, is_subdomain, local_of};
use super::super::header;
use super::super::limits::MAX_AGENTS;
use super::fields::FieldList;
use super::filters::{recipient_check, sender_blocked, sender_check, RcptCheck, SenderCheck};
use super::index::{key_hash, net_key};
use super::table::*;
use regex_automata::dfa::Automaton;

/// Runs the table's patterns. [`Table`] implements it by loading the DFA
/// (and so validating its bytes) on every call, which needs nothing but
/// the table; the shell implements it with DFAs validated once per
/// installed table.
pub trait Patterns {
    /// Whether pattern `dfa` matches somewhere in `hay`.
    fn is_match(&self, dfa: u16, hay: &[u8]) -> bool;
}

impl Patterns for Table {
    fn is_match(&self, dfa: u16, hay: &[u8]) -> bool {
        self.dfa(dfa).is_some_and(|d| {
            matches!(
                d.try_search_fwd(&regex_automata::Input::new(hay)),
                Ok(Some(_))
            )
        })
    }
}

/// Who the session is, as attribution decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Attribution {
    /// The inbound connector ([`Table::inbound`] index), if any matched.
    pub inbound: Option<u16>,
    /// Whether the session is originating (an organization connector).
    pub originating: bool,
    /// Whether the connection filter refuses the client.
    pub blocked: bool,
}

/// Attributes a client (`ip` IPv4-mapped for IPv4) with an optional TLS
/// certificate name: the first inbound connector, in file order, whose
/// networks contain the address or whose TLS name fits the name
/// ([`tls_name_matches`]).
pub fn attribute(t: &Table, ip: &[u8; 16], tls_name: Option<&[u8]>) -> Attribution {
    let mut a = Attribution::default();
    // OnConnect, its enabled agents by priority.
    for s in run_order(t)
        .iter()
        .filter(|s| s.enabled && s.stage == Stage::OnConnect)
    {
        match s.agent {
            Agent::ConnectionFilter => a.blocked = connection_filter(t, ip),
            Agent::Attribution => {
                a.inbound = inbound_connector(t, ip, tls_name);
                a.originating = a
                    .inbound
                    .and_then(|i| t.inbound.get(usize::from(i)))
                    .is_some_and(|c| c.kind == InboundKind::Organization);
            }
            _ => {}
        }
    }
    a
}

/// The connection filter: whether the client is in a blocked network and
/// not in an allowed one (`allowed_networks` wins, as Exchange's IP Allow
/// list does).
fn connection_filter(t: &Table, ip: &[u8; 16]) -> bool {
    nets(t, t.blocked).any(|n| n.contains(ip)) && !allowed_network(t, ip)
}

/// Whether the client is in `allowed_networks`: exempt from the
/// connection filter's DNS block lists and rate limits, and from protocol
/// analysis.
pub fn allowed_network(t: &Table, ip: &[u8; 16]) -> bool {
    nets(t, t.allowed).any(|n| n.contains(ip))
}

/// Attribution: the first inbound connector, in file order, whose networks
/// contain the address or whose TLS name fits the certificate's name.
fn inbound_connector(t: &Table, ip: &[u8; 16], tls_name: Option<&[u8]>) -> Option<u16> {
    t.inbound
        .iter()
        .position(|c| {
            let by_ip = nets(t, c.nets).any(|n| n.contains(ip));
            let by_tls = match (c.tls_name, tls_name) {
                (Some(want), Some(got)) => tls_name_matches(t.str(want), got),
                _ => false,
            };
            by_ip || by_tls
        })
        .map(|i| i as u16)
}

/// A rule's actions.
fn actions<'t>(t: &'t Table, rule: &Rule) -> &'t [Action] {
    let start = usize::from(rule.actions.first);
    t.actions
        .get(start..start + usize::from(rule.actions.count))
        .unwrap_or(&[])
}

fn nets(t: &Table, s: Span) -> impl Iterator<Item = &Net> {
    let start = usize::from(s.first);
    t.nets
        .get(start..start + usize::from(s.count))
        .unwrap_or(&[])
        .iter()
}

/// Whether `domain` is one of the accepted domains.
pub fn is_accepted(t: &Table, domain: &[u8]) -> bool {
    t.list(t.accepted).any(|d| d.eq_ignore_ascii_case(domain))
}

/// The recipient filter (RCPT time): a recipient inside the accepted
/// domains is always taken; any other only from an originating session.
/// It applies even in a table that marks the agent disabled (the compiler
/// refuses that: it would make an open relay).
pub fn recipient_allowed(t: &Table, a: &Attribution, rcpt: &[u8]) -> bool {
    a.originating || is_accepted(t, domain_of(rcpt))
}

/// Where the octets of an address piece come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Piece {
    /// A range of the original octets (the address, or the header block
    /// for header edits).
    Orig(u32, u32),
    /// A string of the table.
    Table(Str),
    /// A range of the installed directory's octets (a primary address
    /// the directory rewrote to; see [`crate::engine::directory`]).
    Dir(u32, u32),
}

/// An address as a local part and a domain, each a [`Piece`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Addr {
    /// The local part.
    pub local: Piece,
    /// The domain (empty for `<>` or `postmaster`).
    pub domain: Piece,
}

impl Addr {
    /// The address `orig` unchanged.
    pub fn of(orig: &[u8]) -> Addr {
        Addr::in_span(orig, 0)
    }

    /// The address `addr` found at offset `base` of some original octets.
    fn in_span(addr: &[u8], base: u32) -> Addr {
        let len = addr.len() as u32;
        match addr.iter().rposition(|&b| b == b'@') {
            Some(i) => Addr {
                local: Piece::Orig(base, base + i as u32),
                domain: Piece::Orig(base + i as u32 + 1, base + len),
            },
            None => Addr {
                local: Piece::Orig(base, base + len),
                domain: Piece::Orig(base + len, base + len),
            },
        }
    }

    fn from_table(t: &Table, s: Str) -> Addr {
        let bytes = t.str(s);
        match bytes.iter().rposition(|&b| b == b'@') {
            Some(i) => Addr {
                local: Piece::Table(Str {
                    off: s.off,
                    len: i as u32,
                }),
                domain: Piece::Table(Str {
                    off: s.off + i as u32 + 1,
                    len: s.len - i as u32 - 1,
                }),
            },
            None => Addr {
                local: Piece::Table(s),
                domain: Piece::Table(Str {
                    off: s.off + s.len,
                    len: 0,
                }),
            },
        }
    }

    /// The octets of a piece, given the original octets, the table and the
    /// directory's octets (empty when none is installed).
    pub fn piece<'a>(p: Piece, orig: &'a [u8], t: &'a Table, dir: &'a [u8]) -> &'a [u8] {
        match p {
            Piece::Orig(a, b) => orig.get(a as usize..b as usize).unwrap_or(&[]),
            Piece::Table(s) => t.str(s),
            Piece::Dir(a, b) => dir.get(a as usize..b as usize).unwrap_or(&[]),
        }
    }
}

/// Why a recipient took its route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Override {
    /// A rule's `route_to`: this domain chooses connector and next hop.
    RouteTo(Str),
    /// A rule's `use_connector`.
    UseConnector,
    /// CMT: routed to the default accepted domain.
    Cmt(Str),
}

/// Why a recipient is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Refusal {
    /// Outside the accepted domains from an anonymous session: `554 5.7.1`.
    Relay,
    /// A rule's `reject` (code, enhanced status, text).
    Rule(u16, (u8, u16, u16), Str),
    /// Beyond the policy's `max_recipients`: `452 4.5.3`.
    TooManyRecipients,
    /// The recipient filter beyond the accepted domains (blocked, unknown,
    /// unverified): the reply is the check's.
    Filtered(RcptCheck),
}

/// The decision for one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Decision {
    /// Index of the original recipient; `None` for one added by a rule.
    pub original: Option<u16>,
    /// The final address (pieces of the original recipient or the table).
    pub addr: Addr,
    /// The send connector ([`Table::connectors`]); `None` when refused or
    /// when no connector matches (the message then cannot be relayed).
    pub connector: Option<u16>,
    /// The routing override, if any.
    pub route: Option<Override>,
    /// The rule that overrode, refused or rewrote, if any.
    pub rule: Option<u16>,
    /// The rule that added this recipient.
    pub added_by: Option<u16>,
    /// The refusal, if refused.
    pub refused: Option<Refusal>,
}

/// A change to the header block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Edit {
    /// Remove the field at `start..end` of the block (line ending included).
    Remove(u32, u32),
    /// Replace the field name at `start..end` by the string.
    Rename(u32, u32, Str),
    /// Append a field (name, value).
    Add(Str, Str),
    /// Replace the address at `start..end` of the block by `addr` (its
    /// `Orig` pieces are ranges of the header block).
    Address(u32, u32, Addr),
    /// Append a copy of the field at `start..end` of the block whose name's
    /// first `cut` octets are replaced by `prefix` (cross-premises
    /// promotion and demotion); `via`: only on the copy sent through that
    /// connector ([`Table::connectors`] index).
    Twin {
        /// Start of the field copied.
        start: u32,
        /// End of the field (line ending included).
        end: u32,
        /// Octets of the name's prefix replaced.
        cut: u32,
        /// The new prefix.
        prefix: Str,
        /// The connector whose copy alone gets it, if any.
        via: Option<u16>,
    },
    /// Append a field (name, value) only on the copy sent through this
    /// connector.
    AddVia(u16, Str, Str),
}

/// What an agent noticed: the structured trace records of the rule log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Note<'a> {
    /// Rule `rule` found header `name` with `value`.
    HeaderFound(u16, &'a [u8], &'a [u8]),
    /// Rule `rule`: header `name` was not found.
    HeaderNotFound(u16, &'a [u8]),
    /// An attachment name the shell extracted, noted once per message
    /// when a rule first looks at the attachments.
    Attachment(&'a [u8]),
    /// The message has no named attachment (noted like [`Note::Attachment`]).
    NoAttachment,
    /// Rule `rule`'s attachment condition matched attachment `name`.
    AttachmentFound(u16, &'a [u8]),
    /// Rule `rule`: header `name` has `value`, which its not-pattern excludes
    /// (or which its pattern does not match).
    HeaderValueExcluded(u16, &'a [u8], &'a [u8]),
    /// Rule `rule` applies to recipient `rcpt`.
    Applies(u16, u16),
    /// An exception of rule `rule` holds for recipient `rcpt`.
    Excepted(u16, u16),
    /// Rule `rule` rerouted recipient `rcpt` to `domain` (UseOverrideDomain).
    Rerouted(u16, u16, &'a [u8]),
    /// DMARC quarantine routed recipient `rcpt` to `domain`.
    Quarantined(u16, &'a [u8]),
    /// Rule `rule` sends recipient `rcpt` through connector `c`.
    UseConnector(u16, u16, u16),
    /// Rule `rule` refused recipient `rcpt`.
    Refused(u16, u16),
    /// Rule `rule` rewrote recipient `rcpt`.
    RuleRewrote(u16, u16),
    /// Rule `rule` added recipient `rcpt`.
    Added(u16, u16),
    /// Rule `rule` stopped rule processing for recipient `rcpt`.
    Stopped(u16, u16),
    /// Recipient `rcpt` is outside and the session is anonymous.
    RelayDenied(u16),
    /// The recipient filter's decision for recipient `rcpt` (accepted
    /// domain, or originating session).
    Recipient(u16, RcptCheck),
    /// The sender filter's decision.
    Sender(SenderNote<'a>),
    /// The address map rewrote recipient `rcpt` (inbound).
    RecipientRewritten(u16),
    /// Inbound rewriting changed recipient `rcpt` by the directory (a
    /// secondary address to its primary).
    RecipientRewrittenByDirectory(u16),
    /// The address map rewrote the envelope sender (outbound).
    SenderRewritten,
    /// The header firewall removed this field.
    FirewallRemoved(&'a [u8]),
    /// The header firewall renamed a field (from, to).
    FirewallRenamed(&'a [u8], &'a [u8]),
    /// CMT stamped the message.
    CmtStamped,
    /// CMT routed recipient `rcpt` to the default domain.
    CmtOverride(u16),
    /// The message carries the stamp: CMT leaves recipient `rcpt` alone.
    CmtAlreadyStamped(u16),
    /// Rule `rule` applies to recipient `rcpt`, whose route CMT (run
    /// before the rules) already set: its `route_to` / `use_connector`
    /// is not applied.
    RouteKept(u16, u16),
    /// The message has `hops` Received: fields, over `max`.
    HopCount(u32, u16),
    /// The client's address is in a blocked network.
    Blocked,
    /// Recipient `rcpt` leaves by connector `c` (or none matched).
    Connector(u16, Option<u16>),
    /// Cross-premises promotion: this cross-premises field was copied to
    /// its organisation twin (originating mail).
    Promoted(&'a [u8]),
    /// Cross-premises promotion overwrote (removed) this organisation field.
    OrganizationReplaced(&'a [u8]),
    /// A cross-premises field was removed from mail not attributed to an
    /// organization connector.
    CrossPremisesRemoved(&'a [u8]),
    /// Demotion: the copy through connector `c` carries the cross-premises
    /// twin of this organisation field.
    Demoted(u16, &'a [u8]),
    /// Demotion: the copy through connector `c` gets the originator header
    /// (the default accepted domain).
    OriginatorOrg(u16),
}

/// What the sender filter noted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum SenderNote<'a> {
    /// The envelope sender's check (at MAIL in a session).
    Envelope(SenderCheck),
    /// A `From:` address is blocked (refused or stamped).
    FromBlocked(&'a [u8], SenderCheck),
    /// An incoming copy of the stamp field was removed.
    StampRemoved,
    /// The message was stamped.
    Stamped,
}

/// Receives the results of [`evaluate`], in order. Notes borrow from the
/// table and the message (`'a`), so a sink may keep them as they are.
pub trait Sink<'a> {
    /// A recipient's decision (`rcpt` counts decisions from 0; notes use it).
    fn decision(&mut self, rcpt: u16, d: &Decision);
    /// A header edit made by `agent`.
    fn edit(&mut self, agent: Agent, e: Edit);
    /// A trace note from `agent`.
    fn note(&mut self, agent: Agent, n: Note<'a>);
    /// The envelope sender's final address (after outbound rewriting).
    fn sender(&mut self, addr: &Addr);
}

/// The message as the pipeline sees it.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    /// Attribution of the session.
    pub attribution: Attribution,
    /// Client address, IPv4-mapped for IPv4.
    pub client_ip: [u8; 16],
    /// Envelope sender (empty for `<>`).
    pub sender: &'a [u8],
    /// The header block as received.
    pub headers: &'a [u8],
    /// File names of the attachments (the shell extracts them).
    pub attachments: &'a [&'a [u8]],
    /// Size of the message in octets.
    pub size: u64,
    /// The installed recipient directory, if any: inbound rewriting maps
    /// its secondary addresses to their primary one (after the rule file's
    /// `[[rewrite]]` entries, which win).
    pub directory: Option<crate::engine::directory::View<'a>>,
    /// The recipient filter's RCPT-time answers, one per recipient (a
    /// trace asks the directory and call-ahead first). `None`: the
    /// recipients passed it at RCPT already (a session); only the
    /// accepted-domain check is repeated.
    pub rcpt_checks: Option<&'a [RcptCheck]>,
    /// The sender authentication verdicts; `None` when the message was not
    /// checked (originating mail, or the agent is off).
    pub auth: Option<AuthVerdicts>,
    /// The login the session authenticated as (SMTP AUTH); empty when it
    /// did not.
    pub login: &'a [u8],
}

impl Message<'_> {
    /// The directory's octets (empty when none is installed), for
    /// [`Addr::piece`].
    pub fn dir_bytes(&self) -> &[u8] {
        self.directory.map_or(&[][..], |d| d.bytes())
    }
}

/// The message-level outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Verdict {
    /// Accepted; `routed` when some recipient got an override.
    Accepted {
        /// Some recipient was overridden (result "Routed").
        routed: bool,
    },
    /// Too many hops: `554 5.4.14 Hop count exceeded - possible mail loop`.
    HopCount,
    /// The connection filter refuses the client: `554 5.7.1 Access denied`.
    Blocked,
    /// Larger than the policy's `max_message_size`: `552 5.3.4`.
    TooBig,
    /// A header block over the receiver's limit: `552 5.3.4`.
    HeaderTooBig,
    /// Every recipient was refused; the first refusal is the reply.
    Refused(Refusal),
    /// The sender filter refuses the message (blocked `From:`, or, in a
    /// trace, the envelope sender MAIL would have refused): `550 5.7.1`.
    Sender(SenderCheck),
}

const RULE_WORDS: usize = super::super::limits::MAX_RULES.div_ceil(32);

/// A fixed bitset over rules.
#[derive(Clone, Copy)]
struct RuleBits([u32; RULE_WORDS]);

impl RuleBits {
    /// No rule.
    const fn new() -> Self {
        RuleBits([0; RULE_WORDS])
    }

    /// Rules `0..n`: every rule of a table of `n`, as the linear
    /// evaluation takes them.
    fn upto(n: usize) -> Self {
        let mut b = RuleBits::new();
        for (i, w) in b.0.iter_mut().enumerate() {
            let lo = i * 32;
            *w = match n.saturating_sub(lo) {
                0 => 0,
                k if k >= 32 => u32::MAX,
                k => (1u32 << k) - 1,
            };
        }
        b
    }

    /// The words of `words` (the index's always candidates).
    fn from_words(words: &[u32]) -> Self {
        let mut b = RuleBits::new();
        for (w, x) in b.0.iter_mut().zip(words) {
            *w = *x;
        }
        b
    }

    /// Adds the rules listed (an index bucket).
    fn add_all(&mut self, rules: &[u16]) {
        for r in rules {
            self.set(usize::from(*r));
        }
    }

    /// The first rule at or after `i` in the set.
    fn next_from(&self, i: usize) -> Option<usize> {
        let mut w = i / 32;
        let mut word = self.0.get(w)? & (u32::MAX << (i % 32));
        loop {
            if word != 0 {
                return Some(w * 32 + word.trailing_zeros() as usize);
            }
            w += 1;
            word = *self.0.get(w)?;
        }
    }

    fn get(&self, i: usize) -> bool {
        self.0.get(i / 32).is_some_and(|w| w & (1 << (i % 32)) != 0)
    }
    fn set(&mut self, i: usize) {
        if let Some(w) = self.0.get_mut(i / 32) {
            *w |= 1 << (i % 32);
        }
    }
}

/// Words of the per-message filter of visible field names: 2,048 bits,
/// so that a header block of 20 distinct names leaves a header condition
/// about 1 % of false hits (each costs a scan of the block); 256 octets of
/// stack.
const SEEN_WORDS: usize = 32;

/// The filter's bit of a name hash is its top 11 bits (2,048 = 2^11).
const SEEN_SHIFT: u32 = 21;

/// Field visibility after the header firewall.
pub(super) fn firewall_view<'h>(t: &'h Table, m: &Message<'_>, name: &'h [u8]) -> Option<&'h [u8]> {
    // Cross-premises fields from anywhere but an organization connector
    // are stripped by promotion: rules never see them.
    if cross_premises_stripped(t, m, name) {
        return None;
    }
    if m.attribution.originating {
        return Some(name);
    }
    // The sender filter's stamp is ours alone: an incoming copy from
    // outside is never visible, whatever the agents' settings.
    if name.eq_ignore_ascii_case(SENDER_STAMP.as_bytes()) {
        return None;
    }
    if !t.enabled(Agent::HeaderFirewall) {
        return Some(name);
    }
    if t.list(t.trusted_prefixes).any(|p| starts_with_ci(name, p)) {
        return None;
    }
    for (from, to) in &t.renames {
        if t.str(*from).eq_ignore_ascii_case(name) {
            return Some(t.str(*to));
        }
    }
    Some(name)
}

/// Whether the session came through an inbound connector of kind
/// `organization` (not merely originating, as an authenticated client may
/// be): only such mail has its cross-premises headers promoted.
fn from_organization(t: &Table, m: &Message<'_>) -> bool {
    m.attribution
        .inbound
        .and_then(|i| t.inbound.get(usize::from(i)))
        .is_some_and(|c| c.kind == InboundKind::Organization)
}

/// Whether cross-premises promotion strips field `name`: a cross-premises
/// field of mail not from an organization connector, the agent enabled.
fn cross_premises_stripped(t: &Table, m: &Message<'_>, name: &[u8]) -> bool {
    let cp = t.str(t.cross_premises.cross_premises);
    !cp.is_empty()
        && starts_with_ci(name, cp)
        && t.enabled(Agent::CrossPremisesPromotion)
        && !from_organization(t, m)
}

/// Whether `suffix` (a name after the organisation or cross-premises
/// prefix) is one that is promoted and demoted: the list, or every one
/// when the list is empty; never the prefix alone.
fn cross_premises_listed(t: &Table, suffix: &[u8]) -> bool {
    let l = t.cross_premises.headers;
    !suffix.is_empty() && (l.count == 0 || t.list(l).any(|h| h.eq_ignore_ascii_case(suffix)))
}

/// The part of `name` after `prefix` (which it starts with).
fn suffix<'n>(name: &'n [u8], prefix: &[u8]) -> &'n [u8] {
    name.get(prefix.len()..).unwrap_or(&[])
}

/// Whether `s` begins with `prefix`, ASCII case ignored.
pub fn starts_with_ci(s: &[u8], prefix: &[u8]) -> bool {
    s.get(..prefix.len())
        .is_some_and(|h| h.eq_ignore_ascii_case(prefix))
}

/// Longest unfolded header value matched against a pattern; longer values
/// are matched on their raw (trimmed) octets.
const MATCH_BUFFER: usize = 1024;

fn dfa_matches<P: Patterns + ?Sized>(p: &P, dfa: u16, hay: &[u8]) -> bool {
    let mut buf = [0u8; MATCH_BUFFER];
    let hay = match header::unfold_into(hay, &mut buf) {
        Ok(n) => buf.get(..n).unwrap_or(&[]),
        Err(_) => header::trim(hay),
    };
    p.is_match(dfa, hay)
}

fn in_group(t: &Table, g: u16, local: &[u8], domain: &[u8]) -> bool {
    t.groups
        .get(usize::from(g))
        .is_some_and(|g| t.list(g.members).any(|p| addr_matches(p, local, domain)))
}

/// Per-recipient state the conditions look at.
struct Ctx<'a> {
    local: &'a [u8],
    domain: &'a [u8],
}

const COND_WORDS: usize = super::super::limits::MAX_CONDITIONS.div_ceil(32);

struct Eval<'a, 's, S: Sink<'a>, P: Patterns + ?Sized> {
    t: &'a Table,
    p: &'a P,
    m: &'a Message<'a>,
    /// The message's header fields, read once.
    fields: &'s FieldList<'a>,
    sink: &'s mut S,
    header_logged: RuleBits,
    /// Whether the attachment names have been noted.
    attachments_logged: bool,
    /// Conditions that do not depend on the recipient are evaluated once
    /// per message: `known` bit set, result in `value`.
    known: [u32; COND_WORDS],
    value: [u32; COND_WORDS],
    /// The sender filter stamped the message: rules see its field.
    sender_stamped: bool,
    /// Whether the rule index chooses the candidate rules (else every
    /// rule is evaluated, as [`evaluate_linear`] does).
    indexed: bool,
    /// The candidates for every recipient: the always candidates and the
    /// rules keyed by the sender's domain or the client's network
    /// (computed at the first recipient).
    msg_cand: Option<RuleBits>,
    /// The hashes of the field names the rules see, as a filter of
    /// `SEEN_WORDS` * 64 bits (computed when a header condition first asks).
    seen: [u64; SEEN_WORDS],
    /// Whether `seen` has been filled.
    seen_ready: bool,
}

impl<'a, S: Sink<'a>, P: Patterns + ?Sized> Eval<'a, '_, S, P> {
    fn condset(&mut self, rule: u16, set: u16, c: &Ctx<'_>) -> bool {
        let Some(span) = self.t.condsets.get(usize::from(set)).copied() else {
            return false;
        };
        let start = usize::from(span.first);
        let n = usize::from(span.count);
        (start..start + n).all(|i| match self.t.conditions.get(i).copied() {
            Some(cond) => self.cached(i, rule, cond, c),
            None => false,
        })
    }

    fn cached(&mut self, i: usize, rule: u16, cond: Condition, c: &Ctx<'_>) -> bool {
        let per_recipient = matches!(
            cond,
            Condition::Recipient(_)
                | Condition::RecipientDomain(_)
                | Condition::RecipientGroup(_)
                | Condition::RecipientLocation(_)
        );
        if per_recipient {
            return self.condition(i, rule, cond, c);
        }
        if let Some(r) = self.known(i) {
            return r;
        }
        let r = self.condition(i, rule, cond, c);
        self.remember(i, r);
        r
    }

    /// The result of message-wide condition `i`, if it was decided.
    fn known(&self, i: usize) -> Option<bool> {
        let (w, bit) = (i / 32, 1u32 << (i % 32));
        self.known
            .get(w)
            .is_some_and(|k| k & bit != 0)
            .then(|| self.value.get(w).is_some_and(|v| v & bit != 0))
    }

    /// Notes the result of message-wide condition `i`.
    fn remember(&mut self, i: usize, r: bool) {
        let (w, bit) = (i / 32, 1u32 << (i % 32));
        if let (Some(k), Some(v)) = (self.known.get_mut(w), self.value.get_mut(w)) {
            *k |= bit;
            if r {
                *v |= bit;
            }
        }
    }

    /// Condition `i` (`cond`) of rule `rule` for the recipient of `c`,
    /// noting in the rule log what header and attachment conditions found.
    fn condition(&mut self, i: usize, rule: u16, cond: Condition, c: &Ctx<'_>) -> bool {
        let t = self.t;
        let m = self.m;
        let (sl, sd) = (|| local_of(m.sender), || domain_of(m.sender));
        match cond {
            Condition::Sender(l) => t.list(l).any(|p| addr_matches(p, sl(), sd())),
            Condition::SenderDomain(l) => t.list(l).any(|d| d.eq_ignore_ascii_case(sd())),
            Condition::SenderGroup(g) => in_group(t, g, sl(), sd()),
            Condition::Recipient(l) => t.list(l).any(|p| addr_matches(p, c.local, c.domain)),
            Condition::RecipientDomain(l) => t.list(l).any(|d| d.eq_ignore_ascii_case(c.domain)),
            Condition::RecipientGroup(g) => in_group(t, g, c.local, c.domain),
            Condition::SenderLocation(loc) => {
                (loc == Location::Inside) == m.attribution.originating
            }
            Condition::RecipientLocation(loc) => {
                (loc == Location::Inside) == is_accepted(t, c.domain)
            }
            Condition::HeaderPresent(name) => {
                let name = t.str(name);
                let found = match self.maybe_seen(i) {
                    true => self.visible(name).next(),
                    false => None,
                };
                self.log_header(rule, name, found, None);
                found.is_some()
            }
            Condition::HeaderAbsent(name) => {
                !self.maybe_seen(i) || self.visible(t.str(name)).next().is_none()
            }
            Condition::HeaderMatches(name, dfa) | Condition::HeaderNotMatches(name, dfa) => {
                let want = matches!(cond, Condition::HeaderMatches(..));
                let name = t.str(name);
                let mut first = None;
                let mut any_match = false;
                let vals = self.maybe_seen(i).then(|| self.visible(name));
                for v in vals.into_iter().flatten() {
                    first.get_or_insert(v);
                    if dfa_matches(self.p, dfa, v) {
                        any_match = true;
                        first = Some(v);
                        break;
                    }
                }
                let holds = first.is_some() && any_match == want;
                self.log_header(rule, name, first, Some(holds));
                holds
            }
            Condition::Inbound(i) => m.attribution.inbound == Some(i),
            Condition::AuthenticatedAs(l) => {
                !m.login.is_empty()
                    && t.list(l)
                        .any(|n| n == b"*" || n.eq_ignore_ascii_case(m.login))
            }
            Condition::ClientNetwork(span) => nets(t, span).any(|n| n.contains(&m.client_ip)),
            Condition::AttachmentMatches(dfa) => {
                self.log_attachments();
                let found = m.attachments.iter().find(|a| dfa_matches(self.p, dfa, a));
                if let Some(a) = found {
                    self.sink
                        .note(Agent::TransportRules, Note::AttachmentFound(rule, a));
                }
                found.is_some()
            }
            Condition::Auth(method, set) => m.auth.is_some_and(|a| a.of(method).bit() & set != 0),
        }
    }

    /// Whether a field named as header condition `i` asks may be visible:
    /// false only when the index's hash of the name is not among those of
    /// the fields the rules see (then [`Self::visible`] yields nothing).
    #[inline]
    fn maybe_seen(&mut self, i: usize) -> bool {
        if !self.indexed {
            return true;
        }
        let Some(h) = self.t.index.names.get(i).copied() else {
            return true;
        };
        if !self.seen_ready {
            self.seen = self.seen_names();
            self.seen_ready = true;
        }
        let bit = (h >> SEEN_SHIFT) as usize;
        self.seen
            .get(bit / 64)
            .is_none_or(|w| w & (1 << (bit % 64)) != 0)
    }

    /// The filter of the hashes of the field names the rules see: the
    /// fields the header firewall leaves visible (by their visible name),
    /// and the sender filter's stamp when it stamped the message.
    #[cold]
    fn seen_names(&self) -> [u64; SEEN_WORDS] {
        let t = self.t;
        let mut seen = [0u64; SEEN_WORDS];
        let mut add = |name: &[u8]| {
            let bit = (key_hash(name) >> SEEN_SHIFT) as usize;
            if let Some(w) = seen.get_mut(bit / 64) {
                *w |= 1 << (bit % 64);
            }
        };
        for name in self.fields.iter().filter_map(|s| s.view) {
            add(name);
        }
        if self.sender_stamped {
            add(t.str(t.sender_filter.stamp_name));
        }
        seen
    }

    /// The values of the fields named `name` the rules see: those the
    /// header firewall leaves visible, and the sender filter's stamp when
    /// it stamped the message.
    fn visible(&self, name: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + '_ {
        let t = self.t;
        let sf = &t.sender_filter;
        let stamp = (self.sender_stamped && name.eq_ignore_ascii_case(t.str(sf.stamp_name)))
            .then(|| t.str(sf.stamp_value));
        self.fields.values(name).chain(stamp)
    }

    /// The attachment names, once per message, before the first rule's
    /// attachment condition is decided.
    fn log_attachments(&mut self) {
        if self.attachments_logged {
            return;
        }
        self.attachments_logged = true;
        let m = self.m;
        if m.attachments.is_empty() {
            self.sink.note(Agent::TransportRules, Note::NoAttachment);
        }
        for a in m.attachments {
            self.sink.note(Agent::TransportRules, Note::Attachment(a));
        }
    }

    /// The seed's "Found header [name: value]" / "was not found" lines, once per rule.
    fn log_header(
        &mut self,
        rule: u16,
        name: &'a [u8],
        value: Option<&'a [u8]>,
        holds: Option<bool>,
    ) {
        if self.header_logged.get(usize::from(rule)) {
            return;
        }
        self.header_logged.set(usize::from(rule));
        let agent = Agent::TransportRules;
        match (value, holds) {
            (None, _) => self.sink.note(agent, Note::HeaderNotFound(rule, name)),
            (Some(v), Some(false)) => self.sink.note(
                agent,
                Note::HeaderValueExcluded(rule, name, header::trim(v)),
            ),
            (Some(v), _) => self
                .sink
                .note(agent, Note::HeaderFound(rule, name, header::trim(v))),
        }
    }
}

/// The best send connector for `domain`: an exact domain beats `--` (an
/// accepted domain), which beats the longest `*.suffix`, which beats `*`;
/// the lower cost breaks a tie, then file order. So a connector that names
/// an accepted domain takes it from the `--` connector whatever the costs.
pub fn select_connector(t: &Table, domain: &[u8]) -> Option<u16> {
    let mut best: Option<(u32, u32, u16)> = None;
    for (ci, c) in t.connectors.iter().enumerate() {
        let start = usize::from(c.spaces.first);
        for sp in t
            .spaces
            .get(start..start + usize::from(c.spaces.count))
            .unwrap_or(&[])
        {
            let score = match *sp {
                Space::Domain(d) if t.str(d).eq_ignore_ascii_case(domain) => 4000,
                Space::Accepted if is_accepted(t, domain) => 3000,
                Space::Subdomains(d) if is_subdomain(domain, t.str(d)) => {
                    1000 + t.str(d).len() as u32
                }
                Space::Any => 1,
                _ => continue,
            };
            let better = match best {
                None => true,
                Some((s, cost, _)) => score > s || (score == s && c.cost < cost),
            };
            if better {
                best = Some((score, c.cost, ci as u16));
            }
        }
    }
    best.map(|(_, _, c)| c)
}

/// Applies the rewrite map of `dir` to `local@domain`: the new address,
/// whose `Orig` pieces are ranges of `orig` starting at `base`, and
/// whether the directory (not a `[[rewrite]]` entry) made it. Inbound, the
/// directory `directory` maps a secondary address to its primary when no
/// entry of the rule file matched.
fn rewrite(
    t: &Table,
    directory: Option<crate::engine::directory::View<'_>>,
    dir: Direction,
    addr: &[u8],
    base: u32,
) -> Option<(Addr, bool)> {
    let (local, domain) = (local_of(addr), domain_of(addr));
    let r = t.rewrites.iter().find(|r| {
        r.direction == dir && addr_matches(t.str(r.from), local, domain) && !domain.is_empty()
    });
    let Some(r) = r else {
        let hit = directory
            .filter(|_| dir == Direction::Inbound)?
            .lookup(addr)?;
        let p = hit.primary?;
        let (off, end) = hit.span;
        let at = off + p.iter().rposition(|&b| b == b'@')? as u32;
        let to = Addr {
            local: Piece::Dir(off, at),
            domain: Piece::Dir(at + 1, end),
        };
        return Some((to, true));
    };
    let mut to = Addr::from_table(t, r.to);
    if local_of(t.str(r.to)) == b"*" {
        to.local = Piece::Orig(base, base + local.len() as u32);
    }
    Some((to, false))
}

/// Number of `Received:` fields.
fn hops(fields: &FieldList<'_>) -> u32 {
    fields.fields().filter(|f| f.name_eq(b"Received")).count() as u32
}

/// Runs the categorizer agents for one message with recipients `rcpts`
/// (those the recipient filter let through at RCPT time, or all of them for
/// a trace). Cannot fail or panic on a validated table. Patterns run with
/// the table's own DFAs; see [`evaluate_with`] to supply validated ones.
pub fn evaluate<'a, S: Sink<'a>>(
    t: &'a Table,
    m: &'a Message<'a>,
    rcpts: &[&'a [u8]],
    sink: &mut S,
) -> Verdict {
    evaluate_with(t, t, m, rcpts, sink)
}

/// The pipeline's agents in the order they run: by event (the pipeline's
/// order, fixed per agent), then by priority within the event (1 first;
/// from the table, else the built-in one), a tie in the built-in order.
/// Disabled agents are listed, flagged; an agent the table does not list
/// runs at its built-in priority. `sluice pipeline` prints this order and
/// [`evaluate`] follows it.
pub fn run_order(t: &Table) -> [AgentSlot; MAX_AGENTS] {
    if let Some(listed) = listed_in_order(t) {
        return listed;
    }
    let mut order = AGENTS.map(|(agent, stage, priority, _)| {
        let (priority, enabled) = t
            .agent(agent)
            .map_or((priority, true), |s| (s.priority, s.enabled));
        AgentSlot {
            agent,
            stage,
            priority,
            enabled,
        }
    });
    order.sort_unstable_by_key(run_key);
    order
}

/// `t`'s agents as listed, when the list holds every agent once, at its
/// built-in event, in run order: as the compiler emits it, so that the
/// order is checked (16 slots) rather than sorted for every message.
fn listed_in_order(t: &Table) -> Option<[AgentSlot; MAX_AGENTS]> {
    let listed = <[AgentSlot; MAX_AGENTS]>::try_from(t.agents.as_slice()).ok()?;
    let mut each = 0u32;
    for s in &listed {
        // AGENTS is in the enum's order (a test checks it).
        let (_, stage, _, _) = AGENTS.get(s.agent as usize)?;
        if *stage != s.stage {
            return None;
        }
        each |= 1 << (s.agent as u32);
    }
    let all = each.count_ones() as usize == MAX_AGENTS;
    (all && listed.is_sorted_by_key(run_key)).then_some(listed)
}

/// An agent's place in the pipeline: its event, then its priority, then
/// the built-in order on a tie.
pub fn run_key(s: &AgentSlot) -> (usize, u8, Agent) {
    (stage_position(s.stage), s.priority, s.agent)
}

/// Where agent `a` runs in [`run_order`]: its position, for sorting what
/// agents did into the order they did it.
pub fn run_position(t: &Table, a: Agent) -> usize {
    run_order(t)
        .iter()
        .position(|s| s.agent == a)
        .unwrap_or(MAX_AGENTS)
}

/// Per-message state of the categorizer agents.
struct Run {
    /// Rules whose message-level actions apply.
    used: RuleBits,
    /// Whether the message arrived with the CMT stamp (visible after the
    /// header firewall).
    stamped: bool,
    /// The connectors some accepted recipient leaves by (bit per
    /// [`Table::connectors`] index; MAX_CONNECTORS is 64).
    via: u64,
}

impl<'a, S: Sink<'a>, P: Patterns + ?Sized> Eval<'a, '_, S, P> {
    /// OnMailCommand and OnEndOfHeaders: the sender filter, for mail from
    /// outside. An incoming copy of its stamp is removed; the envelope
    /// sender (MAIL refused it already in a session; a trace meets it
    /// here) and each `From:` address are checked; a blocked one refuses
    /// the message (`reject`) or stamps it (`stamp`).
    fn sender_filter(&mut self) -> Option<Verdict> {
        let (t, m) = (self.t, self.m);
        if m.attribution.originating {
            return None;
        }
        for f in self.fields.fields() {
            if f.name.eq_ignore_ascii_case(SENDER_STAMP.as_bytes()) {
                let (start, end) = field_span(m.headers, f.name, f.value);
                self.sink
                    .edit(Agent::SenderFilter, Edit::Remove(start, end));
                self.sink
                    .note(Agent::SenderFilter, Note::Sender(SenderNote::StampRemoved));
            }
        }
        let env = sender_check(t, &m.attribution, m.sender);
        self.sink
            .note(Agent::SenderFilter, Note::Sender(SenderNote::Envelope(env)));
        let mut stamp = env == SenderCheck::Stamp;
        if env.reason().is_some() {
            return Some(Verdict::Sender(env));
        }
        for f in self.fields.fields().filter(|f| f.name_eq(b"From")) {
            for addr in addresses(f.value) {
                let c = sender_blocked(t, addr);
                if c == SenderCheck::Pass {
                    continue;
                }
                self.sink.note(
                    Agent::SenderFilter,
                    Note::Sender(SenderNote::FromBlocked(addr, c)),
                );
                if c == SenderCheck::Blocked {
                    return Some(Verdict::Sender(c));
                }
                stamp = true;
            }
        }
        if stamp {
            let sf = &t.sender_filter;
            self.sink.edit(
                Agent::SenderFilter,
                Edit::Add(sf.stamp_name, sf.stamp_value),
            );
            self.sink
                .note(Agent::SenderFilter, Note::Sender(SenderNote::Stamped));
            self.sender_stamped = true;
        }
        None
    }

    /// OnEndOfHeaders: the header firewall strips trusted headers from
    /// anonymous mail and renames untrusted verdict headers.
    fn header_firewall(&mut self) {
        let (t, m) = (self.t, self.m);
        if m.attribution.originating {
            return;
        }
        for f in self.fields.fields() {
            let (start, end) = field_span(m.headers, f.name, f.value);
            if t.list(t.trusted_prefixes)
                .any(|p| starts_with_ci(f.name, p))
            {
                self.sink
                    .edit(Agent::HeaderFirewall, Edit::Remove(start, end));
                self.sink
                    .note(Agent::HeaderFirewall, Note::FirewallRemoved(f.name));
            } else if let Some((_, to)) = t
                .renames
                .iter()
                .find(|(from, _)| t.str(*from).eq_ignore_ascii_case(f.name))
            {
                self.sink.edit(
                    Agent::HeaderFirewall,
                    Edit::Rename(start, start + f.name.len() as u32, *to),
                );
                self.sink.note(
                    Agent::HeaderFirewall,
                    Note::FirewallRenamed(f.name, t.str(*to)),
                );
            }
        }
    }

    /// OnEndOfData: more `Received:` fields than `max_hops` refuses the message.
    fn hop_count(&mut self) -> Option<Verdict> {
        let n = hops(self.fields);
        let max = self.t.limits.max_hops;
        if n > u32::from(max) {
            self.sink.note(Agent::HopCount, Note::HopCount(n, max));
            return Some(Verdict::HopCount);
        }
        None
    }

    /// OnSubmittedMessage, message part: inbound rewriting of To/Cc, for
    /// mail coming in (non-originating sessions) only.
    fn inbound_rewrite_fields(&mut self) {
        if self.m.attribution.originating {
            return;
        }
        rewrite_fields(
            self.t,
            self.fields,
            self.m,
            Direction::Inbound,
            &[b"To", b"Cc"],
            Agent::InboundRewrite,
            &mut *self.sink,
        );
    }

    /// OnSubmittedMessage, per recipient: inbound rewriting of the envelope
    /// recipient, for mail coming in only.
    fn inbound_rewrite(&mut self, rcpt: u16, orig: &[u8], d: &mut Decision) {
        if self.m.attribution.originating {
            return;
        }
        if let Some((a, by_directory)) =
            rewrite(self.t, self.m.directory, Direction::Inbound, orig, 0)
        {
            d.addr = a;
            let n = if by_directory {
                Note::RecipientRewrittenByDirectory(rcpt)
            } else {
                Note::RecipientRewritten(rcpt)
            };
            self.sink.note(Agent::InboundRewrite, n);
        }
    }

    /// A DMARC quarantine with `quarantine = "route_to DOMAIN"`: the
    /// recipient goes by that domain, whatever the rules say after.
    fn quarantine_route(&mut self, rcpt: u16, d: &mut Decision) {
        let t = self.t;
        let quarantined = self.m.auth.is_some_and(|a| a.quarantine);
        if let (true, Some(dom), None) = (quarantined, t.authentication.quarantine_route, d.route) {
            d.route = Some(Override::RouteTo(dom));
            self.sink.note(
                Agent::SenderAuthentication,
                Note::Quarantined(rcpt, t.str(dom)),
            );
        }
    }

    /// OnResolvedMessage, per recipient: the transport rules, first by
    /// priority. A route set before (by a rule of higher priority, or by
    /// CMT when it runs first) is kept.
    fn transport_rules(&mut self, rcpt: u16, orig: &[u8], d: &mut Decision, run: &mut Run) {
        let t = self.t;
        let dir = self.m.dir_bytes();
        let mut cand = self.candidates(Addr::piece(d.addr.domain, orig, t, dir));
        let mut next = 0;
        while let Some(ri) = cand.next_from(next) {
            next = ri + 1;
            let Some(rule) = t.rules.get(ri) else {
                break;
            };
            let r = ri as u16;
            if self.absent_header_first(r, rule) {
                continue;
            }
            let ctx = Ctx {
                local: Addr::piece(d.addr.local, orig, t, dir),
                domain: Addr::piece(d.addr.domain, orig, t, dir),
            };
            if !self.condset(r, rule.when, &ctx) {
                continue;
            }
            let first = usize::from(rule.except.first);
            let excepted = (first..first + usize::from(rule.except.count))
                .any(|s| self.condset(r, s as u16, &ctx));
            if excepted {
                self.sink
                    .note(Agent::TransportRules, Note::Excepted(r, rcpt));
                continue;
            }
            self.sink
                .note(Agent::TransportRules, Note::Applies(r, rcpt));
            run.used.set(ri);
            if self.rule_actions(r, rule, rcpt, d) && self.indexed {
                // A rewritten recipient: the rules keyed by its new domain
                // become candidates too (the old ones stay: a superset).
                let domain = Addr::piece(d.addr.domain, orig, t, dir);
                cand.add_all(t.index.recipient.lookup(key_hash(domain)));
            }
            if rule.stop {
                self.sink
                    .note(Agent::TransportRules, Note::Stopped(r, rcpt));
                break;
            }
        }
    }

    /// With the index, whether rule `r`'s `if` set begins with a header
    /// condition (present, value matches or not) whose field the name
    /// filter knows is absent: the set fails there, after the condition
    /// noted `was not found` once per message, exactly as its evaluation
    /// would (a cached result notes nothing; neither does this twice).
    fn absent_header_first(&mut self, r: u16, rule: &Rule) -> bool {
        if !self.indexed {
            return false;
        }
        let t = self.t;
        let Some(span) = t.condsets.get(usize::from(rule.when)) else {
            return false;
        };
        let i = usize::from(span.first);
        let name = match (span.count, t.conditions.get(i)) {
            (
                1..,
                Some(
                    Condition::HeaderPresent(n)
                    | Condition::HeaderMatches(n, _)
                    | Condition::HeaderNotMatches(n, _),
                ),
            ) => *n,
            _ => return false,
        };
        if self.maybe_seen(i) {
            return false;
        }
        // As `cached` would: a condition decided before (another rule with
        // the same condition set) notes nothing again.
        match self.known(i) {
            // Not reached (an absent field decides these false); evaluate.
            Some(true) => return false,
            Some(false) => {}
            None => {
                self.log_header(r, t.str(name), None, None);
                self.remember(i, false);
            }
        }
        true
    }

    /// The rules to evaluate for a recipient at `domain`: every rule, or
    /// with the index the always candidates, the rules keyed by the
    /// sender's domain and those keyed by `domain`, in priority order.
    fn candidates(&mut self, domain: &[u8]) -> RuleBits {
        let t = self.t;
        if !self.indexed {
            return RuleBits::upto(t.rules.len());
        }
        let mut c = match self.msg_cand {
            Some(c) => c,
            None => {
                let mut c = RuleBits::from_words(&t.index.always);
                let sd = domain_of(self.m.sender);
                c.add_all(t.index.sender.lookup(key_hash(sd)));
                for long in [false, true] {
                    let ip = net_key(&self.m.client_ip, long);
                    c.add_all(t.index.client.lookup(key_hash(ip)));
                }
                self.msg_cand = Some(c);
                c
            }
        };
        c.add_all(t.index.recipient.lookup(key_hash(domain)));
        c
    }

    /// Rule `r`'s per-recipient actions for recipient `rcpt`: refusal,
    /// route, connector, rewrite (the first route and refusal stand);
    /// whether it rewrote the recipient.
    fn rule_actions(&mut self, r: u16, rule: &Rule, rcpt: u16, d: &mut Decision) -> bool {
        let t = self.t;
        let mut rewrote = false;
        for a in actions(t, rule) {
            match *a {
                Action::Reject { code, status, text } if d.refused.is_none() => {
                    d.refused = Some(Refusal::Rule(code, status, text));
                    d.rule = Some(r);
                    self.sink
                        .note(Agent::TransportRules, Note::Refused(r, rcpt));
                }
                Action::RouteTo(_) | Action::UseConnector(_)
                    if matches!(d.route, Some(Override::Cmt(_))) =>
                {
                    self.sink
                        .note(Agent::TransportRules, Note::RouteKept(r, rcpt));
                }
                Action::RouteTo(dom) if d.route.is_none() => {
                    d.route = Some(Override::RouteTo(dom));
                    d.rule.get_or_insert(r);
                    self.sink
                        .note(Agent::TransportRules, Note::Rerouted(r, rcpt, t.str(dom)));
                }
                Action::UseConnector(c) if d.route.is_none() => {
                    d.route = Some(Override::UseConnector);
                    d.connector = Some(c);
                    d.rule.get_or_insert(r);
                    self.sink
                        .note(Agent::TransportRules, Note::UseConnector(r, rcpt, c));
                }
                Action::RewriteRecipient(s) => {
                    d.addr = Addr::from_table(t, s);
                    rewrote = true;
                    self.sink
                        .note(Agent::TransportRules, Note::RuleRewrote(r, rcpt));
                }
                _ => {}
            }
        }
        rewrote
    }

    /// OnResolvedMessage, per recipient: CMT routes a recipient outside the
    /// accepted domains, of mail from a listed inbound connector, to the
    /// default accepted domain, unless a route is already set (by a rule,
    /// when the rules run first) or the message carries the stamp.
    fn cmt(&mut self, rcpt: u16, orig: &[u8], d: &mut Decision, run: &Run) {
        let t = self.t;
        if !t.cmt.enabled || d.route.is_some() {
            return;
        }
        let listed = self
            .m
            .attribution
            .inbound
            .is_some_and(|i| i < 32 && t.cmt.from_inbound & (1 << i) != 0);
        if !listed || is_accepted(t, Addr::piece(d.addr.domain, orig, t, self.m.dir_bytes())) {
            return;
        }
        if run.stamped {
            self.sink.note(Agent::Cmt, Note::CmtAlreadyStamped(rcpt));
        } else if let Some(dd) = t.default_domain {
            d.route = Some(Override::Cmt(dd));
            self.sink.note(Agent::Cmt, Note::CmtOverride(rcpt));
        }
    }

    /// OnRoutedMessage, per recipient: the send connector, by the override
    /// domain or the recipient's own, unless a rule named one.
    fn connector_selection(&mut self, rcpt: u16, orig: &[u8], d: &mut Decision, enabled: bool) {
        let t = self.t;
        if d.connector.is_none() {
            let by = match d.route {
                Some(Override::RouteTo(s)) | Some(Override::Cmt(s)) => t.str(s),
                _ => Addr::piece(d.addr.domain, orig, t, self.m.dir_bytes()),
            };
            d.connector = if enabled {
                select_connector(t, by)
            } else {
                None
            };
        }
        self.sink.note(
            Agent::ConnectorSelection,
            Note::Connector(rcpt, d.connector),
        );
    }

    /// OnResolvedMessage, message part: the header actions of the rules
    /// that applied, in rule order.
    fn rule_header_actions(&mut self, run: &Run) {
        let (t, m) = (self.t, self.m);
        let mut next = 0;
        while let Some(ri) = run.used.next_from(next) {
            next = ri + 1;
            let Some(rule) = t.rules.get(ri) else {
                break;
            };
            for a in actions(t, rule) {
                match *a {
                    Action::AddHeader(name, value) => self
                        .sink
                        .edit(Agent::TransportRules, Edit::Add(name, value)),
                    Action::SetHeader(name, value) => {
                        remove_all(self.fields, m.headers, t.str(name), &mut *self.sink);
                        self.sink
                            .edit(Agent::TransportRules, Edit::Add(name, value));
                    }
                    Action::RemoveHeader(name) => {
                        remove_all(self.fields, m.headers, t.str(name), &mut *self.sink)
                    }
                    _ => {}
                }
            }
        }
    }

    /// OnCategorizedMessage: outbound rewriting of the envelope sender,
    /// From and Reply-To of originating mail.
    fn outbound_rewrite(&mut self, sender: &mut Addr) {
        let (t, m) = (self.t, self.m);
        if !m.attribution.originating {
            return;
        }
        if let Some((a, _)) = rewrite(t, None, Direction::Outbound, m.sender, 0) {
            *sender = a;
            self.sink
                .note(Agent::OutboundRewrite, Note::SenderRewritten);
        }
        rewrite_fields(
            t,
            self.fields,
            m,
            Direction::Outbound,
            &[b"From", b"Reply-To"],
            Agent::OutboundRewrite,
            &mut *self.sink,
        );
    }
}

/// A client the connection filter blocks (the daemon refuses it before
/// its greeting; a trace shows it here), or a message over the limits the
/// receiver applies in session (a trace meets them here).
fn refused_before_agents<'a, S: Sink<'a>>(
    t: &Table,
    m: &Message<'_>,
    sink: &mut S,
) -> Option<Verdict> {
    if m.attribution.blocked {
        sink.note(Agent::ConnectionFilter, Note::Blocked);
        return Some(Verdict::Blocked);
    }
    if m.size > t.limits.max_message_size {
        return Some(Verdict::TooBig);
    }
    if m.headers.len() > super::super::limits::MAX_HEADER_BLOCK {
        return Some(Verdict::HeaderTooBig);
    }
    None
}

/// [`evaluate`] with the patterns run by `p`.
///
/// The agents run in [`run_order`]: events in the pipeline's order, and
/// within an event the enabled agents by priority. The message-level
/// agents of the SMTP events (header firewall, hop count, inbound
/// rewriting of To/Cc) run first; then, per recipient, the recipient filter
/// and the agents of the categorizer events; then what the categorizer
/// agents do to the message as a whole (the rules' header actions, the CMT
/// stamp, outbound rewriting), again in that order.
pub fn evaluate_with<'a, S: Sink<'a>, P: Patterns + ?Sized>(
    t: &'a Table,
    p: &'a P,
    m: &'a Message<'a>,
    rcpts: &[&'a [u8]],
    sink: &mut S,
) -> Verdict {
    run_agents(t, p, m, rcpts, sink, true)
}

/// [`evaluate_with`] without the rule index: every transport rule is
/// evaluated for every recipient, and header conditions always scan the
/// header block. The reference the indexed evaluation must equal (same
/// decisions, same sink calls in the same order); tests compare them.
pub fn evaluate_linear<'a, S: Sink<'a>, P: Patterns + ?Sized>(
    t: &'a Table,
    p: &'a P,
    m: &'a Message<'a>,
    rcpts: &[&'a [u8]],
    sink: &mut S,
) -> Verdict {
    run_agents(t, p, m, rcpts, sink, false)
}

/// The pipeline for [`evaluate_with`] (`indexed`) and [`evaluate_linear`].
fn run_agents<'a, S: Sink<'a>, P: Patterns + ?Sized>(
    t: &'a Table,
    p: &'a P,
    m: &'a Message<'a>,
    rcpts: &[&'a [u8]],
    sink: &mut S,
    indexed: bool,
) -> Verdict {
    if let Some(v) = refused_before_agents(t, m, sink) {
        return v;
    }
    let order = run_order(t);
    let fields = FieldList::new(t, m);
    let mut ev = Eval {
        t,
        p,
        m,
        fields: &fields,
        sink,
        header_logged: RuleBits::new(),
        attachments_logged: false,
        known: [0; COND_WORDS],
        value: [0; COND_WORDS],
        sender_stamped: false,
        indexed,
        msg_cand: None,
        seen: [0; SEEN_WORDS],
        seen_ready: false,
    };
    if let Some(v) = ev.receive_agents(&order) {
        return v;
    }
    let mut run = Run {
        used: RuleBits::new(),
        stamped: t.cmt.enabled && fields.values(t.str(t.cmt.stamp)).next().is_some(),
        via: 0,
    };
    let mut stamp = false;
    let mut routed = false;
    let mut first_refusal = None;
    let mut all_refused = !rcpts.is_empty();
    let mut n: u16 = 0;
    for (i, orig) in rcpts.iter().enumerate() {
        let rcpt = n;
        n = n.saturating_add(1);
        let d = ev.recipient(&order, i, orig, rcpt, &mut run);
        match d.refused {
            Some(r) => {
                first_refusal.get_or_insert(r);
            }
            None => {
                all_refused = false;
                stamp |= matches!(d.route, Some(Override::Cmt(_)));
                routed |= d.route.is_some();
                run.via |= connector_bit(d.connector);
            }
        }
        ev.sink.decision(rcpt, &d);
    }
    // Recipients added by rules (journaling): routed by address space only,
    // and only for a message that is accepted at all.
    let refused_whole = all_refused && first_refusal.is_some();
    if refused_whole {
        run.used = RuleBits::new();
    }
    ev.added_recipients(&mut run, n);
    // What the categorizer agents do to the message as a whole, in the
    // order they run (none of the rules' header actions for a message
    // refused whole: nothing of it is kept).
    let sender = ev.message_actions(&order, &run, stamp);
    ev.sink.sender(&sender);
    if all_refused {
        if let Some(r) = first_refusal {
            return Verdict::Refused(r);
        }
    }
    Verdict::Accepted { routed }
}

impl<'a, S: Sink<'a>, P: Patterns + ?Sized> Eval<'a, '_, S, P> {
    /// The message-level agents of the SMTP receive events and the
    /// message part of inbound rewriting (before any later agent's edits);
    /// a verdict when the hop count ends it.
    fn receive_agents(&mut self, order: &[AgentSlot]) -> Option<Verdict> {
        for s in order.iter().filter(|s| s.enabled) {
            match s.agent {
                Agent::SenderFilter => {
                    if let Some(v) = self.sender_filter() {
                        return Some(v);
                    }
                }
                Agent::HeaderFirewall => self.header_firewall(),
                Agent::CrossPremisesPromotion => self.cross_premises_promotion(),
                Agent::HopCount => {
                    if let Some(v) = self.hop_count() {
                        return Some(v);
                    }
                }
                Agent::InboundRewrite => self.inbound_rewrite_fields(),
                _ => {}
            }
        }
        None
    }

    /// The `i`th recipient `orig` (decision number `rcpt`): the recipient
    /// limit, the recipient filter (OnRcptCommand, never disabled), then
    /// the categorizer agents in `order`; a refused recipient goes no
    /// further and keeps no route or connector.
    fn recipient(
        &mut self,
        order: &[AgentSlot],
        i: usize,
        orig: &[u8],
        rcpt: u16,
        run: &mut Run,
    ) -> Decision {
        let t = self.t;
        let mut d = Decision {
            original: Some(i as u16),
            addr: Addr::of(orig),
            connector: None,
            route: None,
            rule: None,
            added_by: None,
            refused: None,
        };
        if i >= t.limits.max_recipients as usize {
            d.refused = Some(Refusal::TooManyRecipients);
            return d;
        }
        let check = match self.m.rcpt_checks {
            Some(checks) => checks
                .get(i)
                .copied()
                .unwrap_or_else(|| recipient_check(t, &self.m.attribution, orig, None, None)),
            None if recipient_allowed(t, &self.m.attribution, orig) => {
                RcptCheck::Accept(super::filters::Valid::Unchecked)
            }
            None => RcptCheck::Relay,
        };
        match check {
            RcptCheck::Relay => {
                self.sink
                    .note(Agent::RecipientFilter, Note::RelayDenied(rcpt));
                d.refused = Some(Refusal::Relay);
                return d;
            }
            RcptCheck::Accept(_) | RcptCheck::Ask(_) => {
                if self.m.rcpt_checks.is_some() {
                    self.sink
                        .note(Agent::RecipientFilter, Note::Recipient(rcpt, check));
                }
            }
            refused => {
                self.sink
                    .note(Agent::RecipientFilter, Note::Recipient(rcpt, refused));
                d.refused = Some(Refusal::Filtered(refused));
                return d;
            }
        }
        for s in order.iter() {
            if d.refused.is_some() {
                break;
            }
            match s.agent {
                Agent::InboundRewrite if s.enabled => self.inbound_rewrite(rcpt, orig, &mut d),
                Agent::SenderAuthentication if s.enabled => self.quarantine_route(rcpt, &mut d),
                Agent::TransportRules if s.enabled => self.transport_rules(rcpt, orig, &mut d, run),
                Agent::Cmt if s.enabled => self.cmt(rcpt, orig, &mut d, run),
                // Logged even when disabled: the recipient then has no connector.
                Agent::ConnectorSelection => {
                    self.connector_selection(rcpt, orig, &mut d, s.enabled)
                }
                _ => {}
            }
        }
        if d.refused.is_some() {
            d.route = None;
            d.connector = None;
        }
        d
    }

    /// Recipients added by the rules `run` used (journaling), numbered
    /// from `n`: routed by address space only.
    fn added_recipients(&mut self, run: &mut Run, mut n: u16) {
        let t = self.t;
        let mut next = 0;
        while let Some(ri) = run.used.next_from(next) {
            next = ri + 1;
            let Some(rule) = t.rules.get(ri) else {
                break;
            };
            for a in actions(t, rule) {
                if let Action::AddRecipient(s) = *a {
                    let rcpt = n;
                    n = n.saturating_add(1);
                    let addr = Addr::from_table(t, s);
                    let connector = select_connector(t, domain_of(t.str(s)));
                    run.via |= connector_bit(connector);
                    self.sink
                        .note(Agent::TransportRules, Note::Added(ri as u16, rcpt));
                    self.sink
                        .note(Agent::ConnectorSelection, Note::Connector(rcpt, connector));
                    self.sink.decision(
                        rcpt,
                        &Decision {
                            original: None,
                            addr,
                            connector,
                            route: None,
                            rule: None,
                            added_by: Some(ri as u16),
                            refused: None,
                        },
                    );
                }
            }
        }
    }

    /// What the categorizer agents do to the message as a whole, in the
    /// order they run: the rules' header actions, the CMT stamp (when
    /// `stamp`), outbound rewriting; the final sender.
    fn message_actions(&mut self, order: &[AgentSlot], run: &Run, stamp: bool) -> Addr {
        let t = self.t;
        let mut sender = Addr::of(self.m.sender);
        for s in order.iter().filter(|s| s.enabled) {
            match s.agent {
                Agent::TransportRules => self.rule_header_actions(run),
                Agent::Cmt if stamp => {
                    self.sink
                        .edit(Agent::Cmt, Edit::Add(t.cmt.stamp, Str { off: 0, len: 0 }));
                    self.sink.note(Agent::Cmt, Note::CmtStamped);
                }
                Agent::OutboundRewrite => self.outbound_rewrite(&mut sender),
                Agent::CrossPremisesDemotion => self.cross_premises_demotion(run),
                _ => {}
            }
        }
        sender
    }
}

/// The bit of connector `c` in [`Run::via`] (none for no connector).
fn connector_bit(c: Option<u16>) -> u64 {
    c.and_then(|c| 1u64.checked_shl(u32::from(c))).unwrap_or(0)
}

impl<'a, S: Sink<'a>, P: Patterns + ?Sized> Eval<'a, '_, S, P> {
    /// OnEndOfHeaders, after the header firewall: on mail from an
    /// organization connector each cross-premises field is copied to its
    /// organisation twin, which overwrites (removes) the organisation
    /// fields of that name; on any other mail the cross-premises fields
    /// are removed, as the firewall removes the organisation ones.
    fn cross_premises_promotion(&mut self) {
        let (t, m) = (self.t, self.m);
        let x = &t.cross_premises;
        let (org, cp) = (t.str(x.organization), t.str(x.cross_premises));
        if org.is_empty() || cp.is_empty() {
            return;
        }
        let promote = from_organization(t, m);
        let agent = Agent::CrossPremisesPromotion;
        for (i, f) in self.fields.fields().enumerate() {
            if !starts_with_ci(f.name, cp) {
                continue;
            }
            let (start, end) = field_span(m.headers, f.name, f.value);
            if !promote {
                self.sink.edit(agent, Edit::Remove(start, end));
                self.sink.note(agent, Note::CrossPremisesRemoved(f.name));
                continue;
            }
            let sfx = suffix(f.name, cp);
            if !cross_premises_listed(t, sfx) {
                continue;
            }
            // Overwrite once per name: the first cross-premises field of
            // that name removes the organisation fields of it.
            let first = !self.fields.fields().take(i).any(|g| {
                starts_with_ci(g.name, cp) && suffix(g.name, cp).eq_ignore_ascii_case(sfx)
            });
            if first {
                for g in self.fields.fields() {
                    if starts_with_ci(g.name, org) && suffix(g.name, org).eq_ignore_ascii_case(sfx)
                    {
                        let (s, e) = field_span(m.headers, g.name, g.value);
                        self.sink.edit(agent, Edit::Remove(s, e));
                        self.sink.note(agent, Note::OrganizationReplaced(g.name));
                    }
                }
            }
            let twin = Edit::Twin {
                start,
                end,
                cut: cp.len() as u32,
                prefix: x.organization,
                via: None,
            };
            self.sink.edit(agent, twin);
            self.sink.note(agent, Note::Promoted(f.name));
        }
    }

    /// Whether organisation field `name` leaves with the message and needs
    /// a cross-premises twin: the header firewall keeps it, and no
    /// cross-premises field of the same name leaves already (the one it
    /// was promoted from, or one the organisation sent).
    fn needs_twin(&self, name: &[u8], sfx: &[u8]) -> bool {
        let (t, m) = (self.t, self.m);
        let cp = t.str(t.cross_premises.cross_premises);
        if firewall_view(t, m, name).is_none() {
            return false;
        }
        let twin_leaves = self.fields.fields().any(|g| {
            starts_with_ci(g.name, cp)
                && suffix(g.name, cp).eq_ignore_ascii_case(sfx)
                && !cross_premises_stripped(t, m, g.name)
        });
        !twin_leaves
    }

    /// OnRoutedMessage, after connector selection: for each
    /// `cross_premises` connector some recipient leaves by, the copy sent
    /// through it carries each organisation field also as its
    /// cross-premises twin, and originating mail without the originator
    /// header gets it (the default accepted domain).
    fn cross_premises_demotion(&mut self, run: &Run) {
        let (t, m) = (self.t, self.m);
        let x = &t.cross_premises;
        let (org, cp) = (t.str(x.organization), t.str(x.cross_premises));
        if org.is_empty() || cp.is_empty() {
            return;
        }
        let agent = Agent::CrossPremisesDemotion;
        for (ci, c) in t.connectors.iter().enumerate() {
            let ci = ci as u16;
            if !c.cross_premises || run.via & connector_bit(Some(ci)) == 0 {
                continue;
            }
            for f in self.fields.fields() {
                let sfx = suffix(f.name, org);
                if !starts_with_ci(f.name, org)
                    || !cross_premises_listed(t, sfx)
                    || !self.needs_twin(f.name, sfx)
                {
                    continue;
                }
                let (start, end) = field_span(m.headers, f.name, f.value);
                let twin = Edit::Twin {
                    start,
                    end,
                    cut: org.len() as u32,
                    prefix: x.cross_premises,
                    via: Some(ci),
                };
                self.sink.edit(agent, twin);
                self.sink.note(agent, Note::Demoted(ci, f.name));
            }
            let has_originator = self.fields.values(t.str(x.originator)).next().is_some();
            if let (true, false, Some(dd)) =
                (m.attribution.originating, has_originator, t.default_domain)
            {
                self.sink.edit(agent, Edit::AddVia(ci, x.originator, dd));
                self.sink.note(agent, Note::OriginatorOrg(ci));
            }
        }
    }
}

/// The addresses in a header field's value: each run of address octets
/// around an `@` (as the rewriting of To/Cc finds them).
fn addresses(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut i = 0;
    core::iter::from_fn(move || {
        while i < v.len() {
            if v.get(i) != Some(&b'@') {
                i += 1;
                continue;
            }
            let mut s = i;
            while s > 0 && v.get(s - 1).is_some_and(|&b| is_addr_byte(b)) {
                s -= 1;
            }
            let mut e = i + 1;
            while v.get(e).is_some_and(|&b| is_addr_byte(b)) {
                e += 1;
            }
            i = e.max(i + 1);
            if let Some(a) = v.get(s..e) {
                return Some(a);
            }
        }
        None
    })
}

/// The span of a field in the block: from its name to after its line ending.
fn field_span(block: &[u8], name: &[u8], value: &[u8]) -> (u32, u32) {
    let base = block.as_ptr() as usize;
    let start = (name.as_ptr() as usize).saturating_sub(base);
    let mut end = (value.as_ptr() as usize).saturating_sub(base) + value.len();
    if block.get(end) == Some(&b'\r') {
        end += 1;
    }
    if block.get(end) == Some(&b'\n') {
        end += 1;
    }
    (start as u32, end.min(block.len()) as u32)
}

/// Removes the fields the rules see by `name` (a rule's set or remove).
fn remove_all<'a, S: Sink<'a>>(fields: &FieldList<'a>, block: &[u8], name: &[u8], sink: &mut S) {
    for f in fields.iter() {
        if f.view.is_some_and(|n| n.eq_ignore_ascii_case(name)) {
            let (s, e) = field_span(block, f.field.name, f.field.value);
            sink.edit(Agent::TransportRules, Edit::Remove(s, e));
        }
    }
}

/// Rewrites the addresses in fields `names` with the map of `dir`.
fn rewrite_fields<'a, S: Sink<'a>>(
    t: &'a Table,
    fields: &FieldList<'a>,
    m: &'a Message<'a>,
    dir: Direction,
    names: &[&[u8]],
    agent: Agent,
    sink: &mut S,
) {
    let base = m.headers.as_ptr() as usize;
    for f in fields.fields() {
        if !names.iter().any(|n| f.name_eq(n)) {
            continue;
        }
        let voff = (f.value.as_ptr() as usize).saturating_sub(base);
        let v = f.value;
        let mut i = 0;
        while i < v.len() {
            if v.get(i) != Some(&b'@') {
                i += 1;
                continue;
            }
            let mut s = i;
            while s > 0 && v.get(s - 1).is_some_and(|&b| is_addr_byte(b)) {
                s -= 1;
            }
            let mut e = i + 1;
            while v.get(e).is_some_and(|&b| is_addr_byte(b)) {
                e += 1;
            }
            if let Some(addr) = v.get(s..e) {
                let at = (voff + s) as u32;
                if let Some((a, _)) = rewrite(t, m.directory, dir, addr, at) {
                    sink.edit(agent, Edit::Address(at, (voff + e) as u32, a));
                }
            }
            i = e.max(i + 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Adds a string to the pool.
    fn s(t: &mut Table, v: &str) -> Str {
        let off = t.strings.len() as u32;
        t.strings.extend_from_slice(v.as_bytes()).expect("pool");
        Str {
            off,
            len: v.len() as u32,
        }
    }

    fn list(t: &mut Table, v: &[&str]) -> List {
        let first = t.items.len() as u16;
        for x in v {
            let st = s(t, x);
            t.items.push(st).expect("items");
        }
        List {
            first,
            count: v.len() as u16,
        }
    }

    fn connector(t: &mut Table, name: &str, spaces: &[Space], cost: u32) {
        let first = t.spaces.len() as u16;
        for sp in spaces {
            t.spaces.push(*sp).expect("spaces");
        }
        let name = s(t, name);
        t.connectors
            .push(Connector {
                name,
                spaces: Span {
                    first,
                    count: spaces.len() as u16,
                },
                smart_hosts: List::default(),
                tls: TlsPolicy::Opportunistic,
                cost,
                cross_premises: false,
                tls_certificate: None,
            })
            .expect("connectors");
    }

    fn table() -> Box<Table> {
        let mut t = Box::<Table>::default();
        t.accepted = list(&mut t, &["contoso.com", "eu.contoso.com"]);
        connector(&mut t, "internet", &[Space::Any], 10);
        let fab = s(&mut t, "fabrikam.com");
        connector(
            &mut t,
            "fabrikam",
            &[Space::Domain(fab), Space::Subdomains(fab)],
            10,
        );
        connector(&mut t, "onprem", &[Space::Accepted], 1);
        let cheap = s(&mut t, "fabrikam.com");
        connector(&mut t, "fabrikam-cheap", &[Space::Domain(cheap)], 5);
        t.validate().expect("valid");
        t
    }

    #[test]
    fn the_most_specific_address_space_wins_then_the_lower_cost() {
        let t = table();
        assert_eq!(select_connector(&t, b"example.org"), Some(0));
        assert_eq!(
            select_connector(&t, b"fabrikam.com"),
            Some(3),
            "exact, cost 5 beats cost 10"
        );
        assert_eq!(
            select_connector(&t, b"eu.FABRIKAM.com"),
            Some(1),
            "*.fabrikam.com"
        );
        assert_eq!(
            select_connector(&t, b"notfabrikam.com"),
            Some(0),
            "a suffix is not a subdomain"
        );
        assert_eq!(
            select_connector(&t, b"eu.contoso.com"),
            Some(2),
            "-- is all accepted domains"
        );
    }

    #[test]
    fn an_exact_accepted_domain_beats_double_dash_whatever_the_costs() {
        let mut t = table();
        let eu = s(&mut t, "eu.contoso.com");
        connector(&mut t, "eu-exact", &[Space::Domain(eu)], 1);
        let eu = s(&mut t, "eu.contoso.com");
        connector(&mut t, "eu-dear", &[Space::Domain(eu)], 50);
        t.validate().expect("valid");
        assert_eq!(
            select_connector(&t, b"eu.contoso.com"),
            Some(4),
            "same cost as --"
        );
        assert_eq!(select_connector(&t, b"contoso.com"), Some(2), "-- still");
        t.connectors[4].cost = 99;
        assert_eq!(
            select_connector(&t, b"eu.contoso.com"),
            Some(5),
            "cost 50 < 99"
        );
    }

    #[test]
    fn networks_match_by_prefix() {
        let mut a = [0u8; 16];
        a[10] = 0xff;
        a[11] = 0xff;
        a[12] = 10;
        let net = Net {
            addr: a,
            prefix: 96 + 8,
        };
        let mut ip = a;
        ip[15] = 7;
        ip[13] = 200;
        assert!(net.contains(&ip));
        ip[12] = 11;
        assert!(!net.contains(&ip));
        assert!(Net {
            addr: [0; 16],
            prefix: 0
        }
        .contains(&ip));
        let host = Net {
            addr: ip,
            prefix: 128,
        };
        assert!(host.contains(&ip));
        let mut other = ip;
        other[15] ^= 1;
        assert!(!host.contains(&other));
    }

    #[test]
    fn a_list_of_every_agent_in_run_order_is_taken_as_it_is() {
        for (i, a) in AGENTS.iter().enumerate() {
            assert_eq!(a.0 as usize, i, "AGENTS in the enum's order");
        }
        let mut t = table();
        let sorted = run_order(&t);
        t.agents.extend_from_slice(&sorted).expect("agents");
        assert_eq!(listed_in_order(&t), Some(sorted));
        assert_eq!(run_order(&t), sorted);
        // Not in order, an agent twice, or at another event: sorted afresh
        // from the built-in list, as before.
        t.agents.swap(0, 15);
        assert_eq!(listed_in_order(&t), None);
        assert_eq!(run_order(&t), sorted);
        t.agents.swap(0, 15);
        let mut twice = t.clone();
        twice.agents[1] = twice.agents[0];
        twice.agents[1].priority = 9;
        assert_eq!(listed_in_order(&twice), None);
        let mut moved = t.clone();
        moved.agents[15].stage = Stage::OnConnect;
        assert_eq!(listed_in_order(&moved), None);
        assert_eq!(run_order(&moved), sorted);
    }

    #[test]
    fn an_event_is_placed_where_the_pipeline_lists_it() {
        for (i, st) in STAGES.iter().enumerate() {
            assert_eq!(stage_position(*st), i, "{st:?}");
        }
    }

    #[test]
    fn agents_run_by_event_then_by_priority() {
        let mut t = table();
        let mut builtin: [Agent; MAX_AGENTS] = AGENTS.map(|a| a.0);
        // Sender filter (OnMailCommand) runs before the recipient filter,
        // protocol analysis last on OnConnect.
        builtin.sort_by_key(|a| {
            let (_, st, p, _) = AGENTS.iter().find(|x| x.0 == *a).expect("built in");
            (stage_position(*st), *p)
        });
        assert_eq!(builtin[2], Agent::ProtocolAnalysis);
        assert_eq!(builtin[3], Agent::SenderFilter);
        assert_eq!(
            run_order(&t).map(|s| s.agent),
            builtin,
            "no slots: built-in"
        );
        for (agent, stage, priority, _) in AGENTS {
            t.agents
                .push(AgentSlot {
                    agent,
                    stage,
                    priority,
                    enabled: true,
                })
                .expect("agents");
        }
        assert_eq!(run_order(&t).map(|s| s.agent), builtin);
        for s in t.agents.iter_mut() {
            match s.agent {
                Agent::TransportRules => s.priority = 3,
                // a priority never moves an agent to another event
                Agent::OutboundRewrite => s.priority = 0,
                Agent::Cmt => s.enabled = false,
                _ => {}
            }
        }
        let order = run_order(&t);
        let pos = |a| order.iter().position(|s| s.agent == a).expect("listed");
        assert!(pos(Agent::Cmt) < pos(Agent::TransportRules));
        assert!(pos(Agent::TransportRules) < pos(Agent::ConnectorSelection));
        assert_eq!(pos(Agent::OutboundRewrite), MAX_AGENTS - 1);
        assert!(
            !order[pos(Agent::Cmt)].enabled,
            "disabled agents are listed"
        );
        assert_eq!(run_position(&t, Agent::Cmt), pos(Agent::Cmt));
        // equal priorities: the built-in order
        t.agents
            .iter_mut()
            .filter(|s| s.agent == Agent::TransportRules)
            .for_each(|s| s.priority = 2);
        let order = run_order(&t);
        let pos = |a| order.iter().position(|s| s.agent == a).expect("listed");
        assert!(pos(Agent::TransportRules) < pos(Agent::Cmt));
    }

    #[test]
    fn the_recipient_filter_is_not_an_open_relay() {
        let t = table();
        let anon = Attribution::default();
        let org = Attribution {
            inbound: Some(0),
            originating: true,
            blocked: false,
        };
        assert!(recipient_allowed(&t, &anon, b"a@contoso.com"));
        assert!(!recipient_allowed(&t, &anon, b"a@gmail.com"));
        assert!(recipient_allowed(&t, &org, b"a@gmail.com"));
    }

    /// Keeps the header edits, by agent.
    struct Edits(heapless::Vec<(Agent, Edit), 16>);

    impl<'a> Sink<'a> for Edits {
        fn decision(&mut self, _rcpt: u16, _d: &Decision) {}
        fn edit(&mut self, agent: Agent, e: Edit) {
            self.0.push((agent, e)).expect("room");
        }
        fn note(&mut self, _agent: Agent, _n: Note<'a>) {}
        fn sender(&mut self, _addr: &Addr) {}
    }

    /// [`table`] with Exchange's prefix pair (the firewall's too), a default domain, connector
    /// 2 ("onprem", the accepted domains) cross-premises and one
    /// organization inbound connector.
    fn hybrid() -> Box<Table> {
        let mut t = table();
        t.cross_premises = CrossPremises {
            organization: s(&mut t, "X-MS-Exchange-Organization-"),
            cross_premises: s(&mut t, "X-MS-Exchange-CrossPremises-"),
            headers: List::default(),
            originator: s(&mut t, "X-OriginatorOrg"),
        };
        t.default_domain = Some(s(&mut t, "contoso.com"));
        t.trusted_prefixes = list(&mut t, &["X-MS-Exchange-Organization-"]);
        t.connectors[2].cross_premises = true;
        let name = s(&mut t, "exo");
        t.inbound
            .push(Inbound {
                name,
                kind: InboundKind::Organization,
                nets: Span::default(),
                tls_name: None,
                milters: None,
            })
            .expect("inbound");
        t.validate().expect("valid");
        t
    }

    fn edits_for(t: &Table, a: Attribution, rcpts: &[&[u8]], headers: &[u8]) -> Edits {
        let m = Message {
            attribution: a,
            client_ip: [0; 16],
            sender: b"a@contoso.com",
            headers,
            attachments: &[],
            size: headers.len() as u64,
            directory: None,
            rcpt_checks: None,
            auth: None,
            login: b"",
        };
        let mut e = Edits(heapless::Vec::new());
        evaluate(t, &m, rcpts, &mut e);
        e
    }

    /// A block of more fields than the evaluation keeps is read afresh
    /// each time, with the same answers: the firewall still finds the
    /// trusted field after the last kept one.
    #[test]
    fn a_block_of_more_fields_than_are_kept_is_read_all_the_same() {
        use super::super::super::limits::MAX_KEPT_FIELDS;
        use std::io::Write;
        let t = hybrid();
        for n in [
            MAX_KEPT_FIELDS - 2,
            MAX_KEPT_FIELDS - 1,
            MAX_KEPT_FIELDS,
            3 * MAX_KEPT_FIELDS,
        ] {
            let mut h = std::vec::Vec::new();
            for i in 0..n {
                write!(h, "X-Filler-{i}: v\r\n").expect("vec");
            }
            let start = h.len() as u32;
            h.extend_from_slice(b"X-MS-Exchange-Organization-SCL: 1\r\n");
            let end = h.len() as u32;
            h.extend_from_slice(b"Subject: s\r\n\r\n");
            let e = edits_for(&t, Attribution::default(), &[b"u@contoso.com"], &h);
            let removed: std::vec::Vec<_> =
                e.0.iter()
                    .filter(|(a, _)| *a == Agent::HeaderFirewall)
                    .map(|(_, e)| *e)
                    .collect();
            assert_eq!(removed, [Edit::Remove(start, end)], "{} fields", n + 2);
        }
    }

    #[test]
    fn demotion_edits_belong_to_the_cross_premises_connector_copy() {
        let t = hybrid();
        let org = Attribution {
            inbound: Some(0),
            originating: true,
            blocked: false,
        };
        let h = b"X-MS-Exchange-Organization-SCL: 1\r\nSubject: s\r\n\r\n";
        // To the Internet only: nothing.
        assert!(edits_for(&t, org, &[b"x@example.org"], h).0.is_empty());
        // Also inside (onprem, cross-premises): the twin and the
        // originator, both for connector 2 only.
        let e = edits_for(&t, org, &[b"x@example.org", b"u@contoso.com"], h);
        let got: heapless::Vec<_, 4> = e.0.iter().map(|(a, e)| (*a, *e)).collect();
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(matches!(
            got[0],
            (
                Agent::CrossPremisesDemotion,
                Edit::Twin {
                    start: 0,
                    cut: 27,
                    via: Some(2),
                    ..
                }
            )
        ));
        assert!(matches!(
            got[1],
            (Agent::CrossPremisesDemotion, Edit::AddVia(2, _, _))
        ));
        // Anonymous: the firewall keeps nothing to twin, and the
        // originator header is for originating mail only.
        let e = edits_for(&t, Attribution::default(), &[b"u@contoso.com"], h);
        assert!(
            e.0.iter().all(|(a, _)| *a != Agent::CrossPremisesDemotion),
            "{:?}",
            e.0
        );
    }
}
