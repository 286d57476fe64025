//! Rendering what the engine's pipeline decided for one message: each
//! recipient's route or refusal ([`Recipient`], [`NextHop`]), the header
//! edits ([`HeaderEdit`]) the relay splices in on the way out, the rule
//! execution log, and the SMTP replies for refusals ([`verdict_reply`]).

use crate::engine::header;
use crate::engine::policy::{
    Addr, Agent, Decision, Edit, Note, Override, RcptCheck, Refusal, SenderCheck, SenderNote, Sink,
    Source, Stage, Table, Valid, Verdict, AGENTS,
};
use crate::engine::reply::Reason;
use crate::shell::reply::OwnedReply;
use std::fmt::{self, Write};

/// Where a recipient goes next and the header edits to splice in: the
/// policy renders straight into the spool's record types, which the
/// message keeps until it leaves.
pub use crate::shell::spool::{HeaderEdit, NextHop};

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

/// Collects the engine's output as it comes, for [`render`].
pub(super) struct Collect<'a> {
    /// The table the pipeline runs on.
    t: &'a Table,
    /// The directory's octets (empty when none): addresses it rewrote to.
    dir: &'a [u8],
    /// The message's header block (the edits' spans are in it).
    msg: &'a [u8],
    /// The envelope recipients, in order.
    rcpts: &'a [&'a [u8]],
    /// The envelope sender.
    sender: &'a [u8],
    /// Per recipient, original ones first, then added ones.
    decisions: Vec<Decision>,
    /// Header edits, with the agent that made each.
    edits: Vec<(Agent, Edit)>,
    /// The rule execution log's notes, with the agent that made each.
    notes: Vec<(Agent, Note<'a>)>,
    /// The envelope sender after rewriting, when rewritten.
    final_sender: Option<Addr>,
}

impl<'a> Collect<'a> {
    /// An empty collection for a message with header block `headers`.
    pub(super) fn new(
        t: &'a Table,
        dir: &'a [u8],
        headers: &'a [u8],
        rcpts: &'a [&'a [u8]],
        sender: &'a [u8],
    ) -> Self {
        Collect {
            t,
            dir,
            msg: headers,
            rcpts,
            sender,
            decisions: Vec::new(),
            edits: Vec::new(),
            notes: Vec::new(),
            final_sender: None,
        }
    }
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

/// Bytes as text, invalid UTF-8 replaced: for display and logs.
fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Room for a typical rule-log line, so that writing one allocates once.
const LOG_LINE_GUESS: usize = 128;

/// Bytes shown as [`lossy`] shows them, written where they are used.
struct Lossy<'b>(&'b [u8]);

impl fmt::Display for Lossy<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for chunk in self.0.utf8_chunks() {
            f.write_str(chunk.valid())?;
            if !chunk.invalid().is_empty() {
                f.write_char(char::REPLACEMENT_CHARACTER)?;
            }
        }
        Ok(())
    }
}

/// [`Lossy`], lower-cased (ASCII only): header names in the rule log.
struct Low<'b>(&'b [u8]);

impl fmt::Display for Low<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(Lower(f), "{}", Lossy(self.0))
    }
}

/// A writer that lower-cases (ASCII only) what it passes on.
struct Lower<'f, 'b>(&'f mut fmt::Formatter<'b>);

impl fmt::Write for Lower<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if !s.bytes().any(|b| b.is_ascii_uppercase()) {
            return self.0.write_str(s);
        }
        s.chars()
            .try_for_each(|c| self.0.write_char(c.to_ascii_lowercase()))
    }
}

/// `Rule #N (name)`, as the rule log names a rule.
struct RuleRef<'t>(&'t Table, u16);

impl fmt::Display for RuleRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let RuleRef(t, r) = *self;
        write!(
            f,
            "Rule #{} ({})",
            u32::from(r) + 1,
            Lossy(rule_name_octets(t, r))
        )
    }
}

/// An address the engine rewrote (its pieces in the original or the
/// table's strings) as `local@domain`.
fn render_addr(a: &Addr, orig: &[u8], t: &Table, dir: &[u8]) -> String {
    let local = Addr::piece(a.local, orig, t, dir);
    let domain = Addr::piece(a.domain, orig, t, dir);
    if domain.is_empty() {
        lossy(local)
    } else {
        format!("{}@{}", lossy(local), lossy(domain))
    }
}

/// A rule's name by index (empty if out of range).
fn rule_name(t: &Table, r: u16) -> String {
    lossy(rule_name_octets(t, r))
}

/// A rule's name as the table holds it (empty if out of range).
fn rule_name_octets(t: &Table, r: u16) -> &[u8] {
    t.rules.get(usize::from(r)).map_or(&[], |x| t.str(x.name))
}

/// A send connector's name by index (empty if out of range).
fn connector_name(t: &Table, c: u16) -> String {
    t.connectors
        .get(usize::from(c))
        .map(|c| lossy(t.str(c.name)))
        .unwrap_or_default()
}

/// The reply for a refused recipient: the engine's for relaying and too
/// many recipients, the rule's own for a rule's `reject`.
pub fn refusal(t: &Table, r: &Refusal) -> OwnedReply {
    match r {
        Refusal::Relay => Reason::RelayDenied.into(),
        Refusal::TooManyRecipients => Reason::TooManyRecipients.into(),
        Refusal::Rule(code, status, text) => {
            OwnedReply::new(*code, Some(*status), lossy(t.str(*text)))
        }
        Refusal::Filtered(c) => c.reason().unwrap_or(Reason::LocalError).into(),
    }
}

/// The recipient filter's decision in words (trace, log).
pub fn rcpt_check_words(c: &RcptCheck) -> String {
    match c {
        RcptCheck::Accept(v) => format!(
            "valid: {}",
            match v {
                Valid::Originating => "originating session, not filtered",
                Valid::Disabled => "agent disabled, accepted domain",
                Valid::Unchecked => "accepted domain, no source of valid recipients",
                Valid::Postmaster => "postmaster",
                Valid::Pattern => "a valid pattern matches",
                Valid::Directory => "in the directory",
                Valid::CallAhead => "call-ahead: the next hop answered 250",
            }
        ),
        RcptCheck::Relay => "relay denied: outside the accepted domains".to_string(),
        RcptCheck::Blocked => "blocked recipient".to_string(),
        RcptCheck::Unknown(s) => format!(
            "unknown recipient: {}",
            match s {
                Source::Patterns => "no valid pattern matches",
                Source::Directory => "not in the directory",
                Source::CallAhead => "call-ahead: the next hop refused it",
            }
        ),
        RcptCheck::Unverified => {
            "not verified: call-ahead's next hop is down, timed out or answered 4xx".to_string()
        }
        RcptCheck::Ask(_) => "call-ahead not asked".to_string(),
    }
}

/// The sender filter's decision in words (trace, log).
pub fn sender_check_words(c: &SenderCheck) -> &'static str {
    match c {
        SenderCheck::Originating => "originating session, not filtered",
        SenderCheck::Disabled => "agent disabled",
        SenderCheck::Pass => "passed",
        SenderCheck::Blank => "blank sender refused",
        SenderCheck::Blocked => "blocked sender refused",
        SenderCheck::Stamp => "blocked sender, stamped",
    }
}

/// The in-session reply for a refused message, `None` when accepted: the
/// one mapping from the pipeline's verdicts to SMTP replies.
pub fn verdict_reply(t: &Table, v: &Verdict) -> Option<OwnedReply> {
    match v {
        Verdict::Accepted { .. } => None,
        Verdict::HopCount => Some(Reason::HopCount.into()),
        Verdict::Blocked => Some(Reason::AccessDenied.into()),
        Verdict::TooBig => Some(Reason::TooBig.into()),
        Verdict::HeaderTooBig => Some(Reason::HeaderTooBig.into()),
        Verdict::Refused(r) => Some(refusal(t, r)),
        Verdict::Sender(c) => Some(c.reason().unwrap_or(Reason::LocalError).into()),
    }
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

/// Renders what the pipeline decided: each recipient, each header edit,
/// the rule execution log and the verdict's reply.
pub(super) fn render(c: &Collect<'_>, verdict: Verdict) -> Outcome {
    let t = c.t;
    let recipients: Vec<Recipient> = c.decisions.iter().map(|d| render_recipient(c, d)).collect();
    let edits = c
        .edits
        .iter()
        .map(|(a, e)| (*a, render_edit(t, c.dir, c.msg, e)))
        .collect();
    let mut log = Vec::new();
    for (agent, note) in &c.notes {
        let mut line = String::with_capacity(LOG_LINE_GUESS);
        let _ = write!(line, "{:?} {}: ", stage_of(*agent), agent_name(*agent));
        if !rule_note(t, note, &recipients, &mut line) {
            line.push_str(&agent_note(t, note, &recipients));
        }
        log.push(line);
    }
    let result = match verdict {
        Verdict::Accepted { routed: true } => "Routed",
        Verdict::Accepted { routed: false } => "NoAction",
        _ => "Rejected",
    };
    let reply = verdict_reply(t, &verdict).map(|r| r.to_string());
    log.push(format!("Message processing completed. Result: [{result}]."));
    let sender = match &c.final_sender {
        Some(a) => render_addr(a, c.sender, t, c.dir),
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

/// One recipient's decision: final address, connector, next hop, the
/// override and rule behind them, or the refusal.
fn render_recipient(c: &Collect<'_>, d: &Decision) -> Recipient {
    let t = c.t;
    let orig: &[u8] = d
        .original
        .and_then(|i| c.rcpts.get(usize::from(i)).copied())
        .unwrap_or(&[]);
    let final_addr = render_addr(&d.addr, orig, t, c.dir);
    let final_domain = lossy(crate::engine::addr::domain_of(final_addr.as_bytes()));
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
                .unwrap_or_else(|| final_domain.clone()),
        ),
    };
    let connector = d.connector.map(|ci| connector_name(t, ci));
    let rule = d.rule.map(|r| rule_name(t, r));
    let why = Why {
        refused: d.refused.as_ref(),
        route,
        connector: connector.as_deref(),
        rule: rule.as_deref().unwrap_or_default(),
        override_domain: override_domain.as_deref().unwrap_or_default(),
        final_domain: &final_domain,
    };
    Recipient {
        original: lossy(orig),
        reason: why.reason(),
        final_addr,
        connector,
        next_hop,
        route,
        override_domain,
        added_by: d.added_by.map(|r| rule_name(t, r)),
        rejected: d.refused.as_ref().map(|r| refusal(t, r).to_string()),
        rule,
    }
}

/// What a recipient's reason in words is made of.
struct Why<'a> {
    /// The refusal, if refused.
    refused: Option<&'a Refusal>,
    /// The override: "route_to", "use_connector" or "cmt".
    route: Option<&'static str>,
    /// The send connector's name.
    connector: Option<&'a str>,
    /// The deciding rule's name (empty without one).
    rule: &'a str,
    /// The override's domain (empty without one).
    override_domain: &'a str,
    /// The final address's domain.
    final_domain: &'a str,
}

impl Why<'_> {
    /// Why the recipient goes where it goes, or why it was refused.
    fn reason(&self) -> String {
        let (rule, od, fd) = (self.rule, self.override_domain, self.final_domain);
        match (self.refused, self.route, self.connector) {
            (Some(Refusal::TooManyRecipients), _, _) => {
                "more recipients than the policy's max_recipients".to_string()
            }
            (Some(Refusal::Relay), _, _) => {
                "recipient outside the accepted domains from an anonymous session".to_string()
            }
            (Some(Refusal::Rule(..)), _, _) => format!("refused by rule \"{rule}\""),
            (Some(Refusal::Filtered(c)), _, _) => {
                format!("recipient filter: {}", rcpt_check_words(c))
            }
            (None, Some("route_to"), _) => {
                format!("routing override to {od} by rule \"{rule}\"")
            }
            (None, Some("use_connector"), Some(cn)) => {
                format!("connector {cn} chosen by rule \"{rule}\"")
            }
            (None, Some("cmt"), _) => {
                format!("centralized mail flow: routed to the default accepted domain {od}")
            }
            (None, _, Some(cn)) => format!("address space of connector {cn} matches {fd}"),
            (None, _, None) => format!("no send connector matches {fd}"),
        }
    }
}

/// The final address of recipient `i`, for the log.
fn addr_of(recipients: &[Recipient], i: u16) -> &str {
    recipients
        .get(usize::from(i))
        .map_or("", |r| r.final_addr.as_str())
}

/// Writes the log line of a note a transport rule made to `out`; `false`
/// (nothing written) for the notes of other agents. Written in place, not
/// built from pieces: a table of 1,024 rules logs hundreds per message.
fn rule_note(t: &Table, note: &Note<'_>, rs: &[Recipient], out: &mut String) -> bool {
    let rule = |r: u16| RuleRef(t, r);
    let low = Low;
    let lossy = Lossy;
    let written = match *note {
        Note::HeaderFound(r, n, v) => {
            write!(out, "{}. Found header [{}: {}]", rule(r), low(n), lossy(v))
        }
        Note::HeaderNotFound(r, n) => {
            write!(out, "{}. Header [{}] was not found.", rule(r), low(n))
        }
        Note::AttachmentFound(r, n) => {
            write!(out, "{}. Found attachment [{}]", rule(r), lossy(n))
        }
        Note::HeaderValueExcluded(r, n, v) => write!(
            out,
            "{}. Header [{}: {}] is excluded by the rule's value pattern.",
            rule(r),
            low(n),
            lossy(v)
        ),
        Note::Applies(r, i) => {
            write!(out, "{}. Recipient [{}]. Conditions hold.", rule(r), addr_of(rs, i))
        }
        Note::Excepted(r, i) => write!(
            out,
            "{}. Recipient [{}]. An exception applies; rule skipped.",
            rule(r),
            addr_of(rs, i)
        ),
        Note::Rerouted(r, i, d) => write!(
            out,
            "{}. Recipient [{}]. Rerouted to [{}] via [UseOverrideDomain].",
            rule(r),
            addr_of(rs, i),
            lossy(d)
        ),
        Note::UseConnector(r, i, cn) => write!(
            out,
            "{}. Recipient [{}]. Routed via connector [{}] (criteria-based routing).",
            rule(r),
            addr_of(rs, i),
            connector_name(t, cn)
        ),
        Note::Refused(r, i) => write!(out, "{}. Recipient [{}]. Rejected.", rule(r), addr_of(rs, i)),
        Note::RuleRewrote(r, i) => {
            write!(out, "{}. Recipient rewritten to [{}].", rule(r), addr_of(rs, i))
        }
        Note::Added(r, i) => write!(out, "{}. Recipient [{}] added.", rule(r), addr_of(rs, i)),
        Note::Stopped(r, i) => write!(
            out,
            "{}. Recipient [{}]. Stop: no further rules.",
            rule(r),
            addr_of(rs, i)
        ),
        Note::Quarantined(i, d) => write!(
            out,
            "Recipient [{}]. DMARC quarantine: routed to [{}].",
            addr_of(rs, i),
            lossy(d)
        ),
        Note::RouteKept(r, i) => write!(
            out,
            "{}. Recipient [{}]. Already routed by centralized mail flow (cmt runs first); override not applied.",
            rule(r),
            addr_of(rs, i)
        ),
        _ => return false,
    };
    // Writing to a String cannot fail.
    written.is_ok()
}

/// The log line of a note made by an agent other than a transport rule
/// (and of the transport rules' attachment list); [`rule_note`] has the
/// rest.
fn agent_note(t: &Table, note: &Note<'_>, rs: &[Recipient]) -> String {
    match *note {
        Note::Attachment(n) => format!("Attachment [{}]", lossy(n)),
        Note::NoAttachment => "No attachment.".to_string(),
        Note::RelayDenied(i) => format!(
            "Recipient [{}]. Outside the accepted domains; relay denied.",
            addr_of(rs, i)
        ),
        Note::Recipient(i, c) => {
            format!("Recipient [{}]. {}.", addr_of(rs, i), rcpt_check_words(&c))
        }
        Note::Sender(SenderNote::Envelope(c)) => {
            format!("Envelope sender: {}.", sender_check_words(&c))
        }
        Note::Sender(SenderNote::FromBlocked(a, c)) => {
            format!("From: [{}]: {}.", lossy(a), sender_check_words(&c))
        }
        Note::Sender(SenderNote::StampRemoved) => format!(
            "Removed an incoming [{}] header.",
            lossy(t.str(t.sender_filter.stamp_name))
        ),
        Note::Sender(SenderNote::Stamped) => format!(
            "Stamped [{}: {}].",
            lossy(t.str(t.sender_filter.stamp_name)),
            lossy(t.str(t.sender_filter.stamp_value))
        ),
        Note::RecipientRewritten(i) => format!("Recipient rewritten to [{}].", addr_of(rs, i)),
        Note::RecipientRewrittenByDirectory(i) => {
            format!(
                "Recipient rewritten to [{}] by the directory.",
                addr_of(rs, i)
            )
        }
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
            addr_of(rs, i),
            t.default_domain
                .map(|d| lossy(t.str(d)))
                .unwrap_or_default()
        ),
        Note::CmtAlreadyStamped(i) => format!(
            "Recipient [{}]. Message already stamped; no override.",
            addr_of(rs, i)
        ),
        Note::HopCount(n, max) => format!("{n} Received: headers, over the limit of {max}."),
        Note::Blocked => "The client's network is blocked by the connection filter.".to_string(),
        Note::Connector(i, Some(cn)) => format!(
            "Recipient [{}]. Connector [{}].",
            addr_of(rs, i),
            connector_name(t, cn)
        ),
        Note::Connector(i, None) => {
            format!("Recipient [{}]. No send connector matches.", addr_of(rs, i))
        }
        // The cross-premises agents' notes, then a rule's (rule_note).
        _ => cross_premises_note(t, note).unwrap_or_default(),
    }
}

/// The cross-premises agents' notes in words.
fn cross_premises_note(t: &Table, note: &Note<'_>) -> Option<String> {
    Some(match *note {
        Note::Promoted(n) => format!("Promoted header [{}] to the organisation header.", lossy(n)),
        Note::OrganizationReplaced(n) => {
            format!("Removed header [{}]: promotion overwrites it.", lossy(n))
        }
        Note::CrossPremisesRemoved(n) => format!(
            "Removed header [{}] from mail not attributed to an organization connector.",
            lossy(n)
        ),
        Note::Demoted(c, n) => format!(
            "Connector [{}]. Copied header [{}] to its cross-premises twin.",
            connector_name(t, c),
            lossy(n)
        ),
        Note::OriginatorOrg(c) => format!(
            "Connector [{}]. Stamped [{}: {}].",
            connector_name(t, c),
            lossy(t.str(t.cross_premises.originator)),
            t.default_domain
                .map(|d| lossy(t.str(d)))
                .unwrap_or_default()
        ),
        _ => return None,
    })
}

/// A copy of the field at `start..end` of `block`, its name's first
/// `cut` octets replaced by `prefix`, as an [`HeaderEdit::Add`] (the value
/// as written, folding kept).
fn twin(block: &[u8], start: u32, end: u32, cut: u32, prefix: &[u8]) -> HeaderEdit {
    let text = block.get(start as usize..end as usize).unwrap_or(&[]);
    let colon = text.iter().position(|&b| b == b':').unwrap_or(text.len());
    let name = text.get(..colon).map(header::trim).unwrap_or(&[]);
    let rest = name.get(cut as usize..).unwrap_or(&[]);
    let value = text.get(colon + 1..).unwrap_or(&[]);
    let value = value.strip_suffix(b"\n").unwrap_or(value);
    let value = value.strip_suffix(b"\r").unwrap_or(value);
    let lead = value
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(value.len());
    HeaderEdit::Add {
        name: format!("{}{}", lossy(prefix), lossy(rest)),
        value: lossy(value.get(lead..).unwrap_or(&[])),
    }
}

/// `edit` for the copy through connector `c` only.
fn via(t: &Table, c: u16, edit: HeaderEdit) -> HeaderEdit {
    HeaderEdit::Via {
        connector: connector_name(t, c),
        edit: Box::new(edit),
    }
}

/// One engine edit (spans of the header block `block`, strings of the
/// table) as an owned [`HeaderEdit`].
fn render_edit(t: &Table, dir: &[u8], block: &[u8], e: &Edit) -> HeaderEdit {
    let span = |a: u32, b: u32| lossy(block.get(a as usize..b as usize).unwrap_or(&[]));
    match *e {
        Edit::Twin {
            start,
            end,
            cut,
            prefix,
            via: v,
        } => {
            let add = twin(block, start, end, cut, t.str(prefix));
            match v {
                Some(c) => via(t, c, add),
                None => add,
            }
        }
        Edit::AddVia(c, n, v) => via(
            t,
            c,
            HeaderEdit::Add {
                name: lossy(t.str(n)),
                value: lossy(t.str(v)),
            },
        ),
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
                to: render_addr(&a, block, t, dir),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::policy::Action;

    #[test]
    fn refusal_replies_read_as_before() {
        let c = crate::shell::policy::compile::compile(
            "[[rule]]\nthen = { reject = \"550 5.7.1 Refused by policy\" }\n",
        )
        .expect("rules");
        let t = &c.table;
        let Some(Action::Reject { code, status, text }) = t.actions.first().copied() else {
            panic!("{:?}", t.actions)
        };
        let reply = |v: Verdict| verdict_reply(t, &v).map(|r| r.to_string());
        assert_eq!(reply(Verdict::Accepted { routed: true }), None);
        for (v, want) in [
            (
                Verdict::HopCount,
                "554 5.4.14 Hop count exceeded - possible mail loop",
            ),
            (Verdict::Blocked, "554 5.7.1 Access denied"),
            (Verdict::TooBig, "552 5.3.4 Message too big"),
            (Verdict::HeaderTooBig, "552 5.3.4 Message header too big"),
            (
                Verdict::Refused(Refusal::Relay),
                "554 5.7.1 Relay access denied",
            ),
            (
                Verdict::Refused(Refusal::TooManyRecipients),
                "452 4.5.3 Too many recipients",
            ),
            (
                Verdict::Refused(Refusal::Rule(code, status, text)),
                "550 5.7.1 Refused by policy",
            ),
        ] {
            assert_eq!(reply(v).as_deref(), Some(want));
        }
    }

    proptest::proptest! {
        /// The rule log shows octets in place as it showed them through
        /// strings: invalid UTF-8 replaced per run, header names lower-cased.
        #[test]
        fn octets_are_written_as_the_lossy_strings_showed_them(
            b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40),
        ) {
            let old = String::from_utf8_lossy(&b).into_owned();
            proptest::prop_assert_eq!(Lossy(&b).to_string(), old.clone());
            proptest::prop_assert_eq!(Low(&b).to_string(), old.to_ascii_lowercase());
        }
    }

    #[test]
    fn a_rule_is_named_by_number_and_name() {
        let c = crate::shell::policy::compile::compile(
            "[[rule]]\nname = \"Big \\u00e9\"\nthen = { reject = \"550 5.7.1 Refused\" }\n",
        )
        .expect("rules");
        assert_eq!(RuleRef(&c.table, 0).to_string(), "Rule #1 (Big \u{e9})");
        assert_eq!(RuleRef(&c.table, 7).to_string(), "Rule #8 ()");
        assert_eq!(RuleRef(&c.table, u16::MAX).to_string(), "Rule #65536 ()");
    }
}
