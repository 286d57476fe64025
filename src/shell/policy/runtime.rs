//! The shell's side of the policy: runs the engine's pipeline on a message
//! and renders what it decided. `sluice trace` and the daemon both call
//! [`decide`], so a trace shows exactly what the daemon would do.

use crate::engine::header;
use crate::engine::policy::{
    self, Addr, Agent, Attribution, Decision, Edit, Note, Override, Patterns, Refusal, Sink, Stage,
    Table, TableError, Verdict, AGENTS,
};
use crate::engine::reply::Reason;
use mail_parser::MimeHeaders;
use regex_automata::dfa::Automaton;
use std::net::IpAddr;

/// The embedded default policy, used when the config names no rule file:
/// loopback clients are the organisation (they may relay), everything
/// leaves by MX lookup. So `sluice run` works on a fresh machine without
/// becoming an open relay: it listens on loopback only.
pub const DEFAULT_RULES: &str = r#"
version = 1
[[inbound]]
name = "loopback"
kind = "organization"
client_ips = ["127.0.0.0/8", "::1/128"]

[[connector]]
name = "internet"
address_spaces = ["*"]
"#;

/// An installed policy: the validated table and its patterns' DFAs, each
/// validated once here rather than on every match.
pub struct Policy {
    /// The compiled table.
    pub table: Box<Table>,
    dfas: Vec<regex_automata::dfa::sparse::DFA<Vec<u8>>>,
    /// Whether any rule looks at attachment names: if none does, messages
    /// are not MIME-parsed at all.
    pub needs_attachments: bool,
}

impl Policy {
    /// Validates `table` and loads its DFAs.
    pub fn new(table: Box<Table>) -> Result<Policy, TableError> {
        table.validate()?;
        let dfas = (0..table.dfas.len())
            .map(|i| {
                table
                    .dfa(i as u16)
                    .map(|d| d.to_owned())
                    .ok_or(TableError::BadPattern(i as u16))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let needs_attachments = table.enabled(Agent::TransportRules)
            && table
                .conditions
                .iter()
                .any(|c| matches!(c, policy::Condition::AttachmentMatches(_)));
        Ok(Policy {
            table,
            dfas,
            needs_attachments,
        })
    }
}

impl Patterns for Policy {
    fn is_match(&self, dfa: u16, hay: &[u8]) -> bool {
        self.dfas.get(usize::from(dfa)).is_some_and(|d| {
            matches!(
                d.try_search_fwd(&regex_automata::Input::new(hay)),
                Ok(Some(_))
            )
        })
    }
}

/// An IP address as the engine wants it: 16 octets, IPv4-mapped for IPv4.
pub fn ip16(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// Where a recipient goes next.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum NextHop {
    /// MX lookup of this domain.
    Mx(String),
    /// These smart hosts, in order.
    SmartHosts(Vec<String>),
    /// Nowhere (refused, or no connector matched).
    None,
}

/// One recipient's rendered decision.
#[derive(Debug, Clone)]
pub struct Recipient {
    /// The address as given (empty for an added recipient).
    pub original: String,
    /// The final address.
    pub final_addr: String,
    /// The send connector's name.
    pub connector: Option<String>,
    /// The next hop.
    pub next_hop: NextHop,
    /// "route_to", "use_connector" or "cmt".
    pub route: Option<&'static str>,
    /// The domain that chose connector and next hop, when overridden.
    pub override_domain: Option<String>,
    /// The rule that decided.
    pub rule: Option<String>,
    /// The rule that added this recipient.
    pub added_by: Option<String>,
    /// The refusal reply, e.g. "554 5.7.1 Relay access denied".
    pub rejected: Option<String>,
    /// Why, in words.
    pub reason: String,
}

/// A rendered header edit.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum HeaderEdit {
    /// Remove the field at this span of the message (name given for display).
    Remove {
        /// Start offset.
        start: usize,
        /// End offset (line ending included).
        end: usize,
        /// The field's name.
        name: String,
    },
    /// Rename the field name at this span.
    Rename {
        /// Start offset.
        start: usize,
        /// End of the name.
        end: usize,
        /// Old name.
        from: String,
        /// New name.
        to: String,
    },
    /// Put a complete field (e.g. our `Received:`, line ending included)
    /// at the top of the header block, where trace fields go.
    Prepend {
        /// The field's text.
        field: String,
    },
    /// Append a field.
    Add {
        /// Name.
        name: String,
        /// Value (may be empty).
        value: String,
    },
    /// Replace an address inside a field.
    Address {
        /// Start offset.
        start: usize,
        /// End offset.
        end: usize,
        /// The field's name.
        field: String,
        /// Old address.
        from: String,
        /// New address.
        to: String,
    },
}

/// Everything the pipeline decided for one message.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Accepted (routed or not), or refused and why.
    pub verdict: Verdict,
    /// The in-session reply when refused.
    pub reply: Option<String>,
    /// "Routed", "NoAction" or "Rejected".
    pub result: &'static str,
    /// Per recipient, original ones first, then added ones.
    pub recipients: Vec<Recipient>,
    /// The envelope sender after outbound rewriting.
    pub sender: String,
    /// Header edits, with the agent that made each.
    pub edits: Vec<(Agent, HeaderEdit)>,
    /// The rule execution log, one line per note.
    pub log: Vec<String>,
}

/// Collects the engine's output as it comes.
struct Collect<'a> {
    t: &'a Table,
    msg: &'a [u8],
    rcpts: &'a [&'a [u8]],
    sender: &'a [u8],
    decisions: Vec<Decision>,
    edits: Vec<(Agent, Edit)>,
    notes: Vec<(Agent, Note<'a>)>,
    final_sender: Option<Addr>,
}

impl<'a> Sink<'a> for Collect<'a> {
    fn decision(&mut self, _rcpt: u16, d: &Decision) {
        self.decisions.push(*d);
    }
    fn edit(&mut self, agent: Agent, e: Edit) {
        self.edits.push((agent, e));
    }
    fn note(&mut self, agent: Agent, n: Note<'a>) {
        self.notes.push((agent, n));
    }
    fn sender(&mut self, addr: &Addr) {
        self.final_sender = Some(*addr);
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn render_addr(a: &Addr, orig: &[u8], t: &Table) -> String {
    let local = Addr::piece(a.local, orig, t);
    let domain = Addr::piece(a.domain, orig, t);
    if domain.is_empty() {
        lossy(local)
    } else {
        format!("{}@{}", lossy(local), lossy(domain))
    }
}

/// File names of the message's attachments (MIME parts), via mail-parser.
pub fn attachment_names(msg: &[u8]) -> Vec<Vec<u8>> {
    let Some(m) = mail_parser::MessageParser::default().parse(msg) else {
        return Vec::new();
    };
    m.attachments()
        .filter_map(|p| p.attachment_name().map(|n| n.as_bytes().to_vec()))
        .collect()
}

/// The header block of `msg` (up to and including the blank line).
pub fn header_block(msg: &[u8]) -> &[u8] {
    let end = header::end_of_headers(msg, true).unwrap_or(msg.len());
    msg.get(..end).unwrap_or(msg)
}

/// Who sends to whom, from where: the envelope the pipeline decides on.
#[derive(Debug, Clone, Copy)]
pub struct Envelope<'a> {
    /// The session's attribution.
    pub attribution: Attribution,
    /// The client's address.
    pub client: IpAddr,
    /// The envelope sender (empty for `<>`).
    pub sender: &'a [u8],
    /// The recipients, in order.
    pub rcpts: &'a [&'a [u8]],
}

/// Runs the pipeline for `msg`, as the daemon does at the end of DATA, and
/// renders the outcome.
pub fn decide(p: &Policy, env: &Envelope<'_>, msg: &[u8]) -> Outcome {
    let names = if p.needs_attachments {
        attachment_names(msg)
    } else {
        Vec::new()
    };
    decide_with(p, env, msg, names, msg.len() as u64)
}

/// [`decide`] for a message too large to hold whole: `head` holds at least
/// its header block, `names` its attachment names, `size` its real size.
pub fn decide_with(
    p: &Policy,
    env: &Envelope<'_>,
    head: &[u8],
    names: Vec<Vec<u8>>,
    size: u64,
) -> Outcome {
    let (attribution, client, sender, rcpts, msg) =
        (env.attribution, env.client, env.sender, env.rcpts, head);
    let t: &Table = &p.table;
    let name_refs: Vec<&[u8]> = names.iter().map(|n| n.as_slice()).collect();
    let headers = header_block(msg);
    let m = policy::Message {
        attribution,
        client_ip: ip16(client),
        sender,
        headers,
        attachments: &name_refs,
        size,
    };
    let mut c = Collect {
        t,
        msg: headers,
        rcpts,
        sender,
        decisions: Vec::new(),
        edits: Vec::new(),
        notes: Vec::new(),
        final_sender: None,
    };
    let verdict = policy::evaluate_with(t, p, &m, rcpts, &mut c);
    render(&c, verdict)
}

fn rule_name(t: &Table, r: u16) -> String {
    t.rules
        .get(usize::from(r))
        .map(|r| lossy(t.str(r.name)))
        .unwrap_or_default()
}

fn connector_name(t: &Table, c: u16) -> String {
    t.connectors
        .get(usize::from(c))
        .map(|c| lossy(t.str(c.name)))
        .unwrap_or_default()
}

/// The reply for a refused recipient: code, enhanced status, text.
pub fn refusal(t: &Table, r: &Refusal) -> (u16, (u8, u16, u16), String) {
    match r {
        Refusal::Relay => reason(Reason::RelayDenied),
        Refusal::TooManyRecipients => reason(Reason::TooManyRecipients),
        Refusal::Rule(code, status, text) => (*code, *status, lossy(t.str(*text))),
    }
}

fn reason(r: Reason) -> (u16, (u8, u16, u16), String) {
    let rep = r.reply();
    (
        rep.code,
        rep.status.unwrap_or((5, 0, 0)),
        rep.text.to_string(),
    )
}

/// The in-session reply for a refused message, `None` when accepted: the
/// one mapping from the pipeline's verdicts to SMTP replies.
pub fn verdict_reply(t: &Table, v: &Verdict) -> Option<(u16, (u8, u16, u16), String)> {
    match v {
        Verdict::Accepted { .. } => None,
        Verdict::HopCount => Some(reason(Reason::HopCount)),
        Verdict::Blocked => Some(reason(Reason::AccessDenied)),
        Verdict::TooBig => Some(reason(Reason::TooBig)),
        Verdict::HeaderTooBig => Some(reason(Reason::HeaderTooBig)),
        Verdict::Refused(r) => Some(refusal(t, r)),
    }
}

fn reply_text((code, (a, b, c), text): (u16, (u8, u16, u16), String)) -> String {
    format!("{code} {a}.{b}.{c} {text}")
}

/// The event an agent is registered on.
pub fn stage_of(a: Agent) -> Stage {
    // Fixed per agent: the rule file changes priorities, never events.
    AGENTS
        .iter()
        .find(|x| x.0 == a)
        .map_or(Stage::OnEndOfData, |x| x.1)
}

/// The rule-file name of an agent.
pub fn agent_name(a: Agent) -> &'static str {
    AGENTS.iter().find(|x| x.0 == a).map_or("agent", |x| x.3)
}

fn render(c: &Collect<'_>, verdict: Verdict) -> Outcome {
    let t = c.t;
    let mut recipients = Vec::new();
    for d in &c.decisions {
        let orig: &[u8] = d
            .original
            .and_then(|i| c.rcpts.get(usize::from(i)).copied())
            .unwrap_or(&[]);
        let final_addr = render_addr(&d.addr, orig, t);
        let final_domain = crate::engine::addr::domain_of(final_addr.as_bytes()).to_vec();
        let (route, override_domain) = match d.route {
            Some(Override::RouteTo(s)) => (Some("route_to"), Some(lossy(t.str(s)))),
            Some(Override::UseConnector) => (Some("use_connector"), None),
            Some(Override::Cmt(s)) => (Some("cmt"), Some(lossy(t.str(s)))),
            None => (None, None),
        };
        let conn = d.connector.and_then(|ci| t.connectors.get(usize::from(ci)));
        let next_hop = match (conn, &d.refused) {
            (_, Some(_)) | (None, _) => NextHop::None,
            (Some(cn), None) if cn.smart_hosts.count > 0 => {
                NextHop::SmartHosts(t.list(cn.smart_hosts).map(lossy).collect())
            }
            (Some(_), None) => NextHop::Mx(
                override_domain
                    .clone()
                    .unwrap_or_else(|| lossy(&final_domain)),
            ),
        };
        let connector = d.connector.map(|ci| connector_name(t, ci));
        let rule = d.rule.map(|r| rule_name(t, r));
        let rejected = d.refused.as_ref().map(|r| reply_text(refusal(t, r)));
        let reason = match (&d.refused, route, &connector) {
            (Some(Refusal::TooManyRecipients), _, _) => {
                "more recipients than the policy's max_recipients".to_string()
            }
            (Some(Refusal::Relay), _, _) => {
                "recipient outside the accepted domains from an anonymous session".to_string()
            }
            (Some(Refusal::Rule(..)), _, _) => {
                format!("refused by rule \"{}\"", rule.clone().unwrap_or_default())
            }
            (None, Some("route_to"), _) => format!(
                "routing override to {} by rule \"{}\"",
                override_domain.clone().unwrap_or_default(),
                rule.clone().unwrap_or_default()
            ),
            (None, Some("use_connector"), Some(cn)) => {
                format!(
                    "connector {cn} chosen by rule \"{}\"",
                    rule.clone().unwrap_or_default()
                )
            }
            (None, Some("cmt"), _) => format!(
                "centralized mail flow: routed to the default accepted domain {}",
                override_domain.clone().unwrap_or_default()
            ),
            (None, _, Some(cn)) => format!(
                "address space of connector {cn} matches {}",
                lossy(&final_domain)
            ),
            (None, _, None) => format!("no send connector matches {}", lossy(&final_domain)),
        };
        recipients.push(Recipient {
            original: lossy(orig),
            final_addr,
            connector,
            next_hop,
            route,
            override_domain,
            rule,
            added_by: d.added_by.map(|r| rule_name(t, r)),
            rejected,
            reason,
        });
    }
    let edits = c
        .edits
        .iter()
        .map(|(a, e)| (*a, render_edit(t, c.msg, e)))
        .collect();
    let addr_of = |i: u16| {
        recipients
            .get(usize::from(i))
            .map(|r| r.final_addr.clone())
            .unwrap_or_default()
    };
    let mut log = Vec::new();
    for (agent, note) in &c.notes {
        let rule = |r: u16| format!("Rule #{} ({})", r + 1, rule_name(t, r));
        let low = |b: &[u8]| lossy(b).to_ascii_lowercase();
        let text = match *note {
            Note::HeaderFound(r, n, v) => {
                format!("{}. Found header [{}: {}]", rule(r), low(n), lossy(v))
            }
            Note::HeaderNotFound(r, n) => {
                format!("{}. Header [{}] was not found.", rule(r), low(n))
            }
            Note::Attachment(n) => format!("Attachment [{}]", lossy(n)),
            Note::NoAttachment => "No attachment.".to_string(),
            Note::AttachmentFound(r, n) => {
                format!("{}. Found attachment [{}]", rule(r), lossy(n))
            }
            Note::HeaderValueExcluded(r, n, v) => format!(
                "{}. Header [{}: {}] is excluded by the rule's value pattern.",
                rule(r),
                low(n),
                lossy(v)
            ),
            Note::Applies(r, i) => {
                format!("{}. Recipient [{}]. Conditions hold.", rule(r), addr_of(i))
            }
            Note::Excepted(r, i) => format!(
                "{}. Recipient [{}]. An exception applies; rule skipped.",
                rule(r),
                addr_of(i)
            ),
            Note::Rerouted(r, i, d) => format!(
                "{}. Recipient [{}]. Rerouted to [{}] via [UseOverrideDomain].",
                rule(r),
                addr_of(i),
                lossy(d)
            ),
            Note::UseConnector(r, i, cn) => format!(
                "{}. Recipient [{}]. Routed via connector [{}] (criteria-based routing).",
                rule(r),
                addr_of(i),
                connector_name(t, cn)
            ),
            Note::Refused(r, i) => format!("{}. Recipient [{}]. Rejected.", rule(r), addr_of(i)),
            Note::RuleRewrote(r, i) => {
                format!("{}. Recipient rewritten to [{}].", rule(r), addr_of(i))
            }
            Note::Added(r, i) => format!("{}. Recipient [{}] added.", rule(r), addr_of(i)),
            Note::Stopped(r, i) => format!(
                "{}. Recipient [{}]. Stop: no further rules.",
                rule(r),
                addr_of(i)
            ),
            Note::RelayDenied(i) => format!(
                "Recipient [{}]. Outside the accepted domains; relay denied.",
                addr_of(i)
            ),
            Note::RecipientRewritten(i) => format!("Recipient rewritten to [{}].", addr_of(i)),
            Note::SenderRewritten => "Envelope sender rewritten.".to_string(),
            Note::FirewallRemoved(n) => {
                format!("Removed header [{}] from anonymous mail.", lossy(n))
            }
            Note::FirewallRenamed(a, b) => format!(
                "Renamed header [{}] to [{}] on anonymous mail.",
                lossy(a),
                lossy(b)
            ),
            Note::CmtStamped => format!("Stamped [{}].", lossy(t.str(t.cmt.stamp))),
            Note::CmtOverride(i) => format!(
                "Recipient [{}]. Routing override to the default accepted domain [{}].",
                addr_of(i),
                t.default_domain
                    .map(|d| lossy(t.str(d)))
                    .unwrap_or_default()
            ),
            Note::CmtAlreadyStamped(i) => format!(
                "Recipient [{}]. Message already stamped; no override.",
                addr_of(i)
            ),
            Note::RouteKept(r, i) => format!(
                "{}. Recipient [{}]. Already routed by centralized mail flow (cmt runs first); override not applied.",
                rule(r),
                addr_of(i)
            ),
            Note::HopCount(n, max) => format!("{n} Received: headers, over the limit of {max}."),
            Note::Blocked => {
                "The client's network is blocked by the connection filter.".to_string()
            }
            Note::Connector(i, Some(cn)) => format!(
                "Recipient [{}]. Connector [{}].",
                addr_of(i),
                connector_name(t, cn)
            ),
            Note::Connector(i, None) => {
                format!("Recipient [{}]. No send connector matches.", addr_of(i))
            }
        };
        log.push(format!(
            "{:?} {}: {text}",
            stage_of(*agent),
            agent_name(*agent)
        ));
    }
    let result = match verdict {
        Verdict::Accepted { routed: true } => "Routed",
        Verdict::Accepted { routed: false } => "NoAction",
        _ => "Rejected",
    };
    let reply = verdict_reply(t, &verdict).map(reply_text);
    log.push(format!("Message processing completed. Result: [{result}]."));
    let sender = match &c.final_sender {
        Some(a) => render_addr(a, c.sender, t),
        None => lossy(c.sender),
    };
    Outcome {
        verdict,
        reply,
        result,
        recipients,
        sender,
        edits,
        log,
    }
}

fn render_edit(t: &Table, block: &[u8], e: &Edit) -> HeaderEdit {
    let span = |a: u32, b: u32| lossy(block.get(a as usize..b as usize).unwrap_or(&[]));
    match *e {
        Edit::Remove(s, e2) => {
            let text = block.get(s as usize..e2 as usize).unwrap_or(&[]);
            let name = text
                .iter()
                .position(|&b| b == b':')
                .map_or(text, |i| &text[..i]);
            HeaderEdit::Remove {
                start: s as usize,
                end: e2 as usize,
                name: lossy(header::trim(name)),
            }
        }
        Edit::Rename(s, e2, to) => HeaderEdit::Rename {
            start: s as usize,
            end: e2 as usize,
            from: span(s, e2),
            to: lossy(t.str(to)),
        },
        Edit::Add(n, v) => HeaderEdit::Add {
            name: lossy(t.str(n)),
            value: lossy(t.str(v)),
        },
        Edit::Address(s, e2, a) => {
            let field = header::fields(block)
                .find(|f| {
                    let fs = f.name.as_ptr() as usize - block.as_ptr() as usize;
                    let fe = f.value.as_ptr() as usize - block.as_ptr() as usize + f.value.len();
                    fs <= s as usize && (e2 as usize) <= fe
                })
                .map(|f| lossy(f.name))
                .unwrap_or_default();
            HeaderEdit::Address {
                start: s as usize,
                end: e2 as usize,
                field,
                from: span(s, e2),
                to: render_addr(&a, block, t),
            }
        }
    }
}

/// The message with `edits` applied: spans replaced or removed, added
/// fields placed at the end of the header block. The body is untouched.
pub fn splice(msg: &[u8], edits: &[&HeaderEdit]) -> Vec<u8> {
    let head_end = header::end_of_headers(msg, true).unwrap_or(msg.len());
    // Added fields go before the blank line that ends the headers.
    let insert_at = if msg
        .get(..head_end)
        .is_some_and(|h| h.ends_with(b"\r\n\r\n"))
    {
        head_end - 2
    } else if msg.get(..head_end).is_some_and(|h| h.ends_with(b"\n\n")) {
        head_end - 1
    } else {
        head_end
    };
    let mut spans: Vec<(usize, usize, Vec<u8>)> = Vec::new();
    let mut added = Vec::new();
    for e in edits {
        match e {
            HeaderEdit::Prepend { field } => spans.push((0, 0, field.as_bytes().to_vec())),
            HeaderEdit::Remove { start, end, .. } => spans.push((*start, *end, Vec::new())),
            HeaderEdit::Rename { start, end, to, .. }
            | HeaderEdit::Address { start, end, to, .. } => {
                spans.push((*start, *end, to.as_bytes().to_vec()))
            }
            HeaderEdit::Add { name, value } => {
                added.extend_from_slice(name.as_bytes());
                added.push(b':');
                if !value.is_empty() {
                    added.push(b' ');
                    added.extend_from_slice(value.as_bytes());
                }
                added.extend_from_slice(b"\r\n");
            }
        }
    }
    // Prepends (0..0) first, then spans in order.
    spans.sort_by_key(|s| (s.0, s.1));
    let mut out = Vec::with_capacity(msg.len() + added.len());
    let mut pos = 0;
    for (s, e, with) in spans {
        if s < pos || e > insert_at.max(s) && e > head_end {
            continue; // overlapping or outside the header block: skip
        }
        out.extend_from_slice(msg.get(pos..s).unwrap_or(&[]));
        out.extend_from_slice(&with);
        pos = e;
    }
    if pos <= insert_at {
        out.extend_from_slice(msg.get(pos..insert_at).unwrap_or(&[]));
        out.extend_from_slice(&added);
        out.extend_from_slice(msg.get(insert_at..).unwrap_or(&[]));
    } else {
        out.extend_from_slice(&added);
        out.extend_from_slice(msg.get(pos..).unwrap_or(&[]));
    }
    out
}

/// Collects the MIME part header lines (Content-Type, Content-Disposition
/// and their continuations) of a message streamed in pieces, so attachment
/// names can be found without holding the message whole.
#[derive(Debug, Default)]
pub struct MimeScan {
    line: Vec<u8>,
    long: bool,
    keep: bool,
    out: Vec<u8>,
}

/// Longest line looked at, and most octets of part headers kept.
const MIME_LINE: usize = 998;
const MIME_KEEP: usize = 256 * 1024;

impl MimeScan {
    /// Feeds message octets in order.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let (piece, done) = match bytes.iter().position(|&b| b == b'\n') {
                Some(i) => (&bytes[..=i], true),
                None => (bytes, false),
            };
            bytes = &bytes[piece.len()..];
            if self.line.len() + piece.len() <= MIME_LINE {
                self.line.extend_from_slice(piece);
            } else {
                self.long = true;
            }
            if done {
                self.end_line();
            }
        }
    }

    fn end_line(&mut self) {
        let l = std::mem::take(&mut self.line);
        let long = std::mem::replace(&mut self.long, false);
        let cont = matches!(l.first(), Some(b' ' | b'\t'));
        let starts = |p: &[u8]| l.get(..p.len()).is_some_and(|h| h.eq_ignore_ascii_case(p));
        if !long && (starts(b"content-type:") || starts(b"content-disposition:")) {
            self.keep = true;
            if self.out.len() + l.len() + 16 <= MIME_KEEP {
                // Each kept field becomes a part of its own.
                self.out.extend_from_slice(b"--=sluice=\r\n");
                self.out.extend_from_slice(&l);
            }
        } else if cont && self.keep && !long {
            if self.out.len() + l.len() <= MIME_KEEP {
                self.out.extend_from_slice(&l);
            }
        } else {
            if self.keep {
                self.out.extend_from_slice(b"\r\nx\r\n");
            }
            self.keep = false;
        }
    }

    /// The attachment names found (decoded by mail-parser).
    pub fn names(mut self) -> Vec<Vec<u8>> {
        if !self.line.is_empty() {
            self.end_line();
        }
        if self.keep {
            self.out.extend_from_slice(b"\r\nx\r\n");
        }
        let mut m =
            b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"=sluice=\"\r\n\r\n"
                .to_vec();
        m.extend_from_slice(&self.out);
        m.extend_from_slice(b"--=sluice=--\r\n");
        attachment_names(&m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> (Policy, Vec<u8>) {
        let c = crate::shell::policy::compile::compile(include_str!("../../../config/rules.toml"))
            .expect("sample");
        let blob = c.blob.clone();
        (Policy::new(c.table).expect("policy"), blob)
    }

    /// Decodes on a big stack: the table passes through it by value.
    fn from_blob(blob: Vec<u8>) -> Policy {
        std::thread::Builder::new()
            .stack_size(32 << 20)
            .spawn(move || {
                Policy::new(Box::new(Table::from_blob(&blob).expect("blob"))).expect("policy")
            })
            .expect("thread")
            .join()
            .expect("join")
    }

    fn digest(o: &Outcome) -> String {
        format!(
            "{} {:?} {:?} {:?} {:?} {}",
            o.result,
            o.reply,
            o.recipients
                .iter()
                .map(|r| (
                    &r.final_addr,
                    &r.connector,
                    &r.next_hop,
                    r.route,
                    &r.rejected
                ))
                .collect::<Vec<_>>(),
            o.edits,
            o.log,
            o.sender
        )
    }

    #[test]
    fn the_log_names_the_attachments_a_rule_looks_at() {
        let (direct, _) = sample();
        let run = |peer: &str, msg: &[u8]| {
            let ip: IpAddr = peer.parse().expect("ip");
            let rc: [&[u8]; 1] = [b"user@contoso.com"];
            let env = Envelope {
                attribution: policy::attribute(&direct.table, &ip16(ip), None),
                client: ip,
                sender: b"a@example.org",
                rcpts: &rc,
            };
            decide(&direct, &env, msg).log
        };
        let r5 = "OnResolvedMessage transport_rules: Rule #5 (Refuse executables from outside). ";
        let log = run("192.0.2.1", MIME);
        // MIME's one attachment part: filename* (RFC 2231) wins over name
        let names: Vec<&str> = log
            .iter()
            .map(String::as_str)
            .filter(|l| l.contains("Attachment ["))
            .collect();
        assert_eq!(
            names,
            ["OnResolvedMessage transport_rules: Attachment [invoice one.SCR]"],
            "{log:#?}"
        );
        let found = format!("{r5}Found attachment [invoice one.SCR]");
        assert!(log.contains(&found), "{log:#?}");
        // no attachment at all
        let log = run("192.0.2.1", b"Subject: x\r\n\r\nb\r\n");
        assert!(
            log.iter()
                .any(|l| l == "OnResolvedMessage transport_rules: No attachment."),
            "{log:#?}"
        );
        // from inside, rule #5 stops at sender_location: no attachment lines
        let log = run("127.0.0.1", MIME);
        assert!(!log.iter().any(|l| l.contains("ttachment")), "{log:#?}");
    }

    #[test]
    fn the_blob_decides_exactly_like_the_compiled_table() {
        let (direct, blob) = sample();
        let decoded = from_blob(blob);
        assert_eq!(*decoded.table, *direct.table);
        let cases: [(&str, &str, &[&str], &[u8]); 5] = [
            ("127.0.0.1", "jaap@contoso.com", &["x@gmail.com", "b@secure.com", "c@contoso.com"], b"X-RoutethroughTM: On\r\nSubject: a\r\n\r\nb\r\n"),
            ("127.0.0.2", "user@contoso.com", &["x@gmail.com", "y@contoso.com"], b"Subject: cmt\r\n\r\nb\r\n"),
            ("192.0.2.1", "a@example.org", &["johnny@contoso.com", "x@gmail.com"], b"To: johnny@contoso.com\r\nX-MS-Exchange-Organization-SCL: 1\r\nX-Forefront-Antispam-Report: x\r\n\r\nb\r\n"),
            ("127.0.0.1", "ceo@contoso.com", &["x@fabrikam.com", "y@eu.fabrikam.com"], b"Subject: j\r\n\r\nb\r\n"),
            ("192.0.2.1", "a@example.org", &["user@contoso.com"], b"Content-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\nContent-Disposition: attachment; filename=a.exe\r\n\r\nx\r\n--B--\r\n"),
        ];
        for (peer, from, rcpts, msg) in cases {
            let ip: IpAddr = peer.parse().expect("ip");
            let rc: Vec<&[u8]> = rcpts.iter().map(|r| r.as_bytes()).collect();
            let a1 = policy::attribute(&direct.table, &ip16(ip), None);
            let a2 = policy::attribute(&decoded.table, &ip16(ip), None);
            assert_eq!(a1, a2);
            let o1 = decide(
                &direct,
                &Envelope {
                    attribution: a1,
                    client: ip,
                    sender: from.as_bytes(),
                    rcpts: &rc,
                },
                msg,
            );
            let o2 = decide(
                &decoded,
                &Envelope {
                    attribution: a2,
                    client: ip,
                    sender: from.as_bytes(),
                    rcpts: &rc,
                },
                msg,
            );
            assert_eq!(digest(&o1), digest(&o2));
            // And the engine's own pattern path (DFAs loaded per match) agrees too.
            let mut c = Collect {
                t: &direct.table,
                msg: header_block(msg),
                rcpts: &rc,
                sender: from.as_bytes(),
                decisions: Vec::new(),
                edits: Vec::new(),
                notes: Vec::new(),
                final_sender: None,
            };
            let names = attachment_names(msg);
            let refs: Vec<&[u8]> = names.iter().map(|n| n.as_slice()).collect();
            let m = policy::Message {
                attribution: a1,
                client_ip: ip16(ip),
                sender: from.as_bytes(),
                headers: header_block(msg),
                attachments: &refs,
                size: msg.len() as u64,
            };
            let v = policy::evaluate(&direct.table, &m, &rc, &mut c);
            assert_eq!(digest(&render(&c, v)), digest(&o1));
        }
    }

    fn outcome(rules: &str, peer: &str, from: &str, rcpts: &[&str], msg: &[u8]) -> Outcome {
        let c = crate::shell::policy::compile::compile(rules).expect("rules");
        let p = Policy::new(c.table).expect("policy");
        let ip: IpAddr = peer.parse().expect("ip");
        let rc: Vec<&[u8]> = rcpts.iter().map(|r| r.as_bytes()).collect();
        let env = Envelope {
            attribution: policy::attribute(&p.table, &ip16(ip), None),
            client: ip,
            sender: from.as_bytes(),
            rcpts: &rc,
        };
        decide(&p, &env, msg)
    }

    #[test]
    fn the_first_agent_of_resolved_message_to_route_a_recipient_keeps_it() {
        let sample = include_str!("../../../config/rules.toml");
        let swapped = format!("{sample}\n[[agent]]\nname = \"transport_rules\"\npriority = 3\n");
        let msg = b"X-RoutethroughTM: On\r\nSubject: a\r\n\r\nb\r\n";
        let rcpt = ["x@gmail.com"];
        let o = outcome(sample, "127.0.0.2", "a@contoso.com", &rcpt, msg);
        assert_eq!(o.recipients[0].route, Some("route_to"));
        assert!(o.edits.is_empty());
        let o = outcome(&swapped, "127.0.0.2", "a@contoso.com", &rcpt, msg);
        assert_eq!(o.recipients[0].route, Some("cmt"));
        assert_eq!(o.recipients[0].connector.as_deref(), Some("onprem"));
        assert_eq!(o.edits.len(), 1, "stamped");
        // A rule's reject still wins when CMT ran first, and a refused
        // recipient leaves no stamp.
        let reject = format!(
            "{swapped}\n[[rule]]\nname = \"No gmail\"\nif = {{ recipient_domain = [\"gmail.com\"] }}\nthen = {{ reject = \"550 5.7.1 No\" }}\n"
        );
        let o = outcome(
            &reject,
            "127.0.0.2",
            "a@contoso.com",
            &rcpt,
            b"Subject: a\r\n\r\nb\r\n",
        );
        assert_eq!(o.result, "Rejected");
        assert!(o.recipients[0].rejected.is_some() && o.recipients[0].route.is_none());
        assert!(o.edits.is_empty(), "{:?}", o.edits);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        #[test]
        fn the_pipeline_never_panics(
            headers in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..80), 0..12),
            rcpts in proptest::collection::vec("[a-z@.]{0,20}", 0..5),
            from in "[a-z@.]{0,20}",
            peer in prop_oneof![Just("127.0.0.1"), Just("127.0.0.2"), Just("192.0.2.1"), Just("::1")],
        ) {
            let (p, _) = sample();
            let mut msg = Vec::new();
            for (i, h) in headers.iter().enumerate() {
                let name: &[u8] = [&b"X-RoutethroughTM"[..], b"To", b"Received", b"X-MS-Exchange-Organization-Foo", b"X-OriginatorOrg"][i % 5];
                msg.extend_from_slice(name);
                msg.extend_from_slice(b": ");
                msg.extend_from_slice(h);
                msg.extend_from_slice(b"\r\n");
            }
            msg.extend_from_slice(b"\r\nbody\r\n");
            let ip: IpAddr = peer.parse().expect("ip");
            let rc: Vec<&[u8]> = rcpts.iter().map(|r| r.as_bytes()).collect();
            let a = policy::attribute(&p.table, &ip16(ip), None);
            let o = decide(&p, &Envelope { attribution: a, client: ip, sender: from.as_bytes(), rcpts: &rc }, &msg);
            let all: Vec<&HeaderEdit> = o.edits.iter().map(|(_, e)| e).collect();
            let spliced = splice(&msg, &all);
            prop_assert!(spliced.ends_with(b"\r\nbody\r\n"));
        }
    }

    const MIME: &[u8] = b"From: a@b.test\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"XX\"\r\n\r\n--XX\r\nContent-Type: text/plain\r\n\r\nhello\r\n--XX\r\nContent-Type: application/octet-stream;\r\n name=\"=?utf-8?q?r=C3=A9sum=C3=A9.exe?=\"\r\nContent-Disposition: attachment;\r\n\tfilename*=utf-8''invoice%20one.SCR\r\n\r\nAAAA\r\n--XX--\r\n";

    #[test]
    fn attachment_names_whole_and_streamed_agree() {
        let whole = attachment_names(MIME);
        assert!(!whole.is_empty());
        for split in [1, 7, 50, MIME.len()] {
            let mut s = MimeScan::default();
            for piece in MIME.chunks(split) {
                s.feed(piece);
            }
            let names = s.names();
            for n in &whole {
                assert!(
                    names.contains(n),
                    "{split}: {:?} not in {:?}",
                    String::from_utf8_lossy(n),
                    names
                );
            }
        }
    }

    #[test]
    fn a_prepended_field_goes_first_even_when_the_first_field_is_removed() {
        let msg = b"X-MS-Exchange-Organization-SCL: 1\r\nSubject: s\r\n\r\nbody\r\n";
        let edits = [
            HeaderEdit::Remove {
                start: 0,
                end: 35,
                name: "X-MS-Exchange-Organization-SCL".into(),
            },
            HeaderEdit::Prepend {
                field: "Received: from a by b; Sun, 22 Nov 2026 08:00:00 +0000\r\n".into(),
            },
        ];
        let refs: Vec<&HeaderEdit> = edits.iter().collect();
        assert_eq!(
            splice(msg, &refs),
            b"Received: from a by b; Sun, 22 Nov 2026 08:00:00 +0000\r\nSubject: s\r\n\r\nbody\r\n"
                .to_vec()
        );
    }

    #[test]
    fn splice_applies_edits_and_keeps_the_body() {
        let msg = b"A: 1\r\nX-Drop: 2\r\nTo: johnny@contoso.com\r\n\r\nbody\r\n";
        let edits = [
            HeaderEdit::Remove {
                start: 6,
                end: 17,
                name: "X-Drop".into(),
            },
            HeaderEdit::Address {
                start: 21,
                end: 39,
                field: "To".into(),
                from: "johnny@contoso.com".into(),
                to: "johnny@eu.contoso.com".into(),
            },
            HeaderEdit::Add {
                name: "X-Journaled".into(),
                value: "yes".into(),
            },
        ];
        let refs: Vec<&HeaderEdit> = edits.iter().collect();
        let out = splice(msg, &refs);
        assert_eq!(
            out,
            b"A: 1\r\nTo: johnny@eu.contoso.com\r\nX-Journaled: yes\r\n\r\nbody\r\n".to_vec()
        );
    }
}
