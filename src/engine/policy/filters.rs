//! The Edge protection agents that decide at SMTP command time: the
//! recipient filter (OnRcptCommand) and the sender filter's MAIL part
//! (OnMailCommand; its OnEndOfHeaders part runs in [`super::eval`]).
//!
//! Pure functions of the table and of the answers the shell's sources
//! give: the installed directory (`Option<bool>`, `None` when none is
//! installed) and a call-ahead probe ([`Probe`]). The shell asks the
//! sources; the engine decides.
//!
//! Both filters follow Exchange's Edge: they apply to mail from outside
//! (non-originating sessions); originating sessions are never filtered.

use super::super::addr::{domain_of, filter_matches, local_of};
use super::super::reply::Reason;
use super::eval::{is_accepted, Attribution};
use super::table::{Agent, Table};

/// What a call-ahead probe at the next hop answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Probe {
    /// `250` to `RCPT TO`: the recipient exists.
    Valid,
    /// `550`, `551` or `553`: it does not.
    Unknown,
    /// The next hop is down, timed out, or answered 4xx (or anything
    /// else): no verdict. Never cached as unknown.
    Failed,
}

/// Why the recipient filter takes a recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Valid {
    /// The session is originating: not filtered (relay permitted).
    Originating,
    /// The agent is disabled: only the accepted-domain check applies.
    Disabled,
    /// No source of valid recipients is configured (or installed).
    Unchecked,
    /// `postmaster@` an accepted domain (RFC 5321 §4.5.1).
    Postmaster,
    /// A `valid` pattern matches.
    Pattern,
    /// The installed directory has it.
    Directory,
    /// The call-ahead's next hop answered 250.
    CallAhead,
}

/// Which source found a recipient unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Source {
    /// No `valid` pattern matches (and no other source knows it).
    Patterns,
    /// The installed directory does not have it.
    Directory,
    /// The call-ahead's next hop answered 550/551/553.
    CallAhead,
}

/// The recipient filter's decision for one recipient at RCPT time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum RcptCheck {
    /// Taken, and why.
    Accept(Valid),
    /// Outside the accepted domains from an anonymous session: `554 5.7.1`.
    Relay,
    /// A `blocked` pattern matches: `550 5.7.1`.
    Blocked,
    /// Unknown: `550 5.1.1` (counts towards the tarpit and `max_unknown`).
    Unknown(Source),
    /// Call-ahead got no verdict: `450 4.1.1` (never a 550).
    Unverified,
    /// Not decided yet: ask the next hop of this send connector, then
    /// decide again with the [`Probe`].
    Ask(u16),
}

impl RcptCheck {
    /// The refusal's reply, `None` when taken (or still to ask).
    pub fn reason(&self) -> Option<Reason> {
        match self {
            RcptCheck::Accept(_) | RcptCheck::Ask(_) => None,
            RcptCheck::Relay => Some(Reason::RelayDenied),
            RcptCheck::Blocked => Some(Reason::BlockedRecipient),
            RcptCheck::Unknown(_) => Some(Reason::UnknownRecipient),
            RcptCheck::Unverified => Some(Reason::UnverifiedRecipient),
        }
    }
}

/// The recipient filter for `rcpt` from a session attributed `att`.
///
/// In order: outside the accepted domains, only originating sessions may
/// relay (this part runs even when the agent is disabled: no open relay);
/// originating sessions are not filtered further; `blocked` refuses; then
/// the sources of valid recipients, cheapest first: `valid` patterns, the
/// directory (`directory`: its answer, `None` when none is installed), the
/// call-ahead (`probe`: its answer, `None` when not asked yet). A recipient
/// is valid when any source knows it, unknown when the configured sources
/// that answered all do not; with no source configured, every recipient
/// of an accepted domain is taken. `postmaster@` an accepted domain is
/// always valid unless blocked.
pub fn recipient_check(
    t: &Table,
    att: &Attribution,
    rcpt: &[u8],
    directory: Option<bool>,
    probe: Option<Probe>,
) -> RcptCheck {
    let domain = domain_of(rcpt);
    if att.originating {
        return RcptCheck::Accept(Valid::Originating);
    }
    if !is_accepted(t, domain) {
        return RcptCheck::Relay;
    }
    if !t.enabled(Agent::RecipientFilter) {
        return RcptCheck::Accept(Valid::Disabled);
    }
    let rf = &t.recipient_filter;
    if t.list(rf.blocked).any(|p| filter_matches(p, rcpt)) {
        return RcptCheck::Blocked;
    }
    if local_of(rcpt).eq_ignore_ascii_case(b"postmaster") {
        return RcptCheck::Accept(Valid::Postmaster);
    }
    let patterns = rf.valid.count > 0;
    if patterns && t.list(rf.valid).any(|p| filter_matches(p, rcpt)) {
        return RcptCheck::Accept(Valid::Pattern);
    }
    let directory = if rf.directory { directory } else { None };
    if directory == Some(true) {
        return RcptCheck::Accept(Valid::Directory);
    }
    if let Some(c) = rf.call_ahead {
        return match probe {
            None => RcptCheck::Ask(c),
            Some(Probe::Valid) => RcptCheck::Accept(Valid::CallAhead),
            Some(Probe::Unknown) => RcptCheck::Unknown(Source::CallAhead),
            Some(Probe::Failed) => RcptCheck::Unverified,
        };
    }
    match (directory, patterns) {
        (Some(false), _) => RcptCheck::Unknown(Source::Directory),
        (_, true) => RcptCheck::Unknown(Source::Patterns),
        _ => RcptCheck::Accept(Valid::Unchecked),
    }
}

/// Whether a session that has now had `unknown` unknown recipients is past
/// the harvest limit (`max_unknown`; 0: no limit): the RCPT that made it so
/// gets `421 4.7.0` and the session closes.
pub fn harvest_exceeded(t: &Table, unknown: u32) -> bool {
    let max = t.recipient_filter.max_unknown;
    max > 0 && unknown > u32::from(max)
}

/// The sender filter's decision at MAIL FROM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum SenderCheck {
    /// Not filtered: an originating session.
    Originating,
    /// Not filtered: the agent is disabled.
    Disabled,
    /// Passed.
    Pass,
    /// `<>` while `blank_sender = "reject"`: `550 5.7.1`.
    Blank,
    /// A `blocked` pattern matches and the action is `reject`: `550 5.7.1`.
    Blocked,
    /// A `blocked` pattern matches and the action is `stamp`: taken, and
    /// the message is stamped at the end of its headers.
    Stamp,
}

impl SenderCheck {
    /// The refusal's reply, `None` when the sender is taken.
    pub fn reason(&self) -> Option<Reason> {
        match self {
            SenderCheck::Blank => Some(Reason::BlankSender),
            SenderCheck::Blocked => Some(Reason::BlockedSender),
            _ => None,
        }
    }
}

/// The sender filter for the envelope sender `sender` (empty for `<>`).
pub fn sender_check(t: &Table, att: &Attribution, sender: &[u8]) -> SenderCheck {
    if att.originating {
        return SenderCheck::Originating;
    }
    if !t.enabled(Agent::SenderFilter) {
        return SenderCheck::Disabled;
    }
    let sf = &t.sender_filter;
    if sender.is_empty() {
        return if sf.reject_blank {
            SenderCheck::Blank
        } else {
            SenderCheck::Pass
        };
    }
    sender_blocked(t, sender)
}

/// The action for a sender address (envelope or `From:`): blocked or
/// stamped when a `blocked` pattern matches, else passed.
pub fn sender_blocked(t: &Table, addr: &[u8]) -> SenderCheck {
    let sf = &t.sender_filter;
    if !t.list(sf.blocked).any(|p| filter_matches(p, addr)) {
        SenderCheck::Pass
    } else if sf.stamp {
        SenderCheck::Stamp
    } else {
        SenderCheck::Blocked
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::policy::{AgentSlot, List, Stage, Str};

    /// A table with `strings` in the pool, each its own list item.
    fn table(strings: &[&str]) -> Box<Table> {
        let mut t = Box::<Table>::default();
        for s in strings {
            let off = t.strings.len() as u32;
            t.strings.extend_from_slice(s.as_bytes()).expect("pool");
            t.items
                .push(Str {
                    off,
                    len: s.len() as u32,
                })
                .expect("items");
        }
        t
    }

    fn list(first: u16, count: u16) -> List {
        List { first, count }
    }

    const OUTSIDE: Attribution = Attribution {
        inbound: None,
        originating: false,
        blocked: false,
    };
    const INSIDE: Attribution = Attribution {
        inbound: Some(0),
        originating: true,
        blocked: false,
    };

    /// contoso.com accepted; valid: jaap@contoso.com, *.eu.contoso.com;
    /// blocked: ceo@contoso.com.
    fn filtered() -> Box<Table> {
        let mut t = table(&[
            "contoso.com",
            "jaap@contoso.com",
            "*.eu.contoso.com",
            "ceo@contoso.com",
            "x.eu.contoso.com",
        ]);
        t.accepted = list(0, 1);
        t.recipient_filter.valid = list(1, 2);
        t.recipient_filter.blocked = list(3, 1);
        t
    }

    #[test]
    fn patterns_decide_known_unknown_and_blocked() {
        let t = filtered();
        let c = |r: &[u8]| recipient_check(&t, &OUTSIDE, r, None, None);
        assert_eq!(c(b"Jaap@Contoso.com"), RcptCheck::Accept(Valid::Pattern));
        assert_eq!(
            c(b"nobody@contoso.com"),
            RcptCheck::Unknown(Source::Patterns)
        );
        assert_eq!(c(b"ceo@contoso.com"), RcptCheck::Blocked);
        assert_eq!(c(b"x@gmail.com"), RcptCheck::Relay);
        assert_eq!(
            c(b"postmaster@contoso.com"),
            RcptCheck::Accept(Valid::Postmaster)
        );
        assert_eq!(
            RcptCheck::Unknown(Source::Patterns).reason(),
            Some(Reason::UnknownRecipient)
        );
        assert_eq!(Reason::UnknownRecipient.reply().code, 550);
    }

    #[test]
    fn originating_sessions_are_not_filtered() {
        let t = filtered();
        let c = |r: &[u8]| recipient_check(&t, &INSIDE, r, None, None);
        assert_eq!(c(b"ceo@contoso.com"), RcptCheck::Accept(Valid::Originating));
        assert_eq!(c(b"x@gmail.com"), RcptCheck::Accept(Valid::Originating));
        let s = table(&["spam.example"]);
        assert_eq!(
            sender_check(&s, &INSIDE, b"a@spam.example"),
            SenderCheck::Originating
        );
    }

    #[test]
    fn without_a_source_every_accepted_recipient_is_taken() {
        let mut t = table(&["contoso.com"]);
        t.accepted = list(0, 1);
        let c = |t: &Table, d| recipient_check(t, &OUTSIDE, b"who@contoso.com", d, None);
        assert_eq!(c(&t, Some(false)), RcptCheck::Accept(Valid::Unchecked));
        t.recipient_filter.directory = true;
        // directory = true but none installed: no answer, taken.
        assert_eq!(c(&t, None), RcptCheck::Accept(Valid::Unchecked));
        assert_eq!(c(&t, Some(true)), RcptCheck::Accept(Valid::Directory));
        assert_eq!(c(&t, Some(false)), RcptCheck::Unknown(Source::Directory));
    }

    #[test]
    fn call_ahead_is_asked_last_and_its_failure_is_never_a_550() {
        let mut t = filtered();
        t.connectors
            .push(crate::engine::policy::Connector {
                name: Str::default(),
                spaces: Default::default(),
                smart_hosts: List::default(),
                tls: crate::engine::policy::TlsPolicy::Opportunistic,
                cost: 10,
                cross_premises: false,
                tls_certificate: None,
            })
            .expect("connector");
        t.recipient_filter.call_ahead = Some(0);
        t.recipient_filter.directory = true;
        let c = |d, p| recipient_check(&t, &OUTSIDE, b"new@contoso.com", d, p);
        assert_eq!(c(None, None), RcptCheck::Ask(0));
        assert_eq!(c(Some(false), None), RcptCheck::Ask(0));
        assert_eq!(c(Some(true), None), RcptCheck::Accept(Valid::Directory));
        assert_eq!(
            c(None, Some(Probe::Valid)),
            RcptCheck::Accept(Valid::CallAhead)
        );
        assert_eq!(
            c(None, Some(Probe::Unknown)),
            RcptCheck::Unknown(Source::CallAhead)
        );
        assert_eq!(c(None, Some(Probe::Failed)), RcptCheck::Unverified);
        assert_eq!(
            RcptCheck::Unverified.reason().map(|r| r.reply().code),
            Some(450)
        );
        // A pattern still decides without asking.
        assert_eq!(
            recipient_check(&t, &OUTSIDE, b"jaap@contoso.com", None, None),
            RcptCheck::Accept(Valid::Pattern)
        );
    }

    #[test]
    fn disabled_keeps_only_the_accepted_domains() {
        let mut t = filtered();
        t.agents
            .push(AgentSlot {
                agent: Agent::RecipientFilter,
                stage: Stage::OnRcptCommand,
                priority: 1,
                enabled: false,
            })
            .expect("agent");
        let c = |r: &[u8]| recipient_check(&t, &OUTSIDE, r, None, None);
        assert_eq!(c(b"ceo@contoso.com"), RcptCheck::Accept(Valid::Disabled));
        assert_eq!(c(b"x@gmail.com"), RcptCheck::Relay);
    }

    #[test]
    fn harvest_limit_counts_past_max_unknown() {
        let mut t = Box::<Table>::default();
        assert!(!harvest_exceeded(&t, 1000));
        t.recipient_filter.max_unknown = 3;
        assert!(!harvest_exceeded(&t, 3));
        assert!(harvest_exceeded(&t, 4));
    }

    #[test]
    fn sender_filter_blocks_stamps_and_refuses_blank() {
        let mut t = table(&["spam.example", "*.bulk.example", "bad@ok.example"]);
        t.sender_filter.blocked = list(0, 3);
        let c = |t: &Table, s: &[u8]| sender_check(t, &OUTSIDE, s);
        assert_eq!(c(&t, b"x@spam.example"), SenderCheck::Blocked);
        assert_eq!(c(&t, b"x@a.bulk.example"), SenderCheck::Blocked);
        assert_eq!(c(&t, b"x@bulk.example"), SenderCheck::Pass);
        assert_eq!(c(&t, b"BAD@ok.example"), SenderCheck::Blocked);
        assert_eq!(c(&t, b"good@ok.example"), SenderCheck::Pass);
        assert_eq!(c(&t, b""), SenderCheck::Pass);
        t.sender_filter.reject_blank = true;
        assert_eq!(c(&t, b""), SenderCheck::Blank);
        t.sender_filter.stamp = true;
        assert_eq!(c(&t, b"x@spam.example"), SenderCheck::Stamp);
        assert_eq!(SenderCheck::Stamp.reason(), None);
        assert_eq!(
            SenderCheck::Blank.reason().map(|r| r.reply().status),
            Some(Some((5, 7, 1)))
        );
    }
}
