//! The `content_filter` agent in a session (OnEndOfData, after the hop
//! count; its milters follow the session from the first MAIL): a milter's
//! refusal answers MAIL or RCPT where it came; the milters see the message
//! before the policy decides, so rules act on what they added; their
//! verdict on the message answers the DATA, and their modifications are in
//! what is committed before the `250`.
//!
//! While milters apply to a session its message is held in memory instead
//! of being appended in chunks (a milter may replace the body, and nothing
//! is written before every modification is known); once they are done, a
//! large message goes to the spool in chunks as usual.

use super::Session;
use crate::engine::policy::Agent;
use crate::shell::milter::{Early, Facts, Fate, Filtered, Message};
use crate::shell::ops::counters::{self, Tally};
use crate::shell::ops::log::{self, Kind};
use crate::shell::reply::OwnedReply;
use crate::shell::sender_auth::sign::BodyTap;
use crate::shell::spool;

impl Session<'_> {
    /// Whether milters filter this session's mail (its chain was made at
    /// MAIL and holds a milter).
    pub(super) fn filtering(&self) -> bool {
        self.milters.as_ref().is_some_and(|c| !c.is_empty())
    }

    /// MAIL for the milters: the session's chain is made at the first
    /// MAIL when the agent is enabled and a milter applies (originating
    /// sessions: only `originating` milters; the inbound connector's
    /// `milters` list, if it has one); connect and HELO go out then, and
    /// MAIL. `Some`: the milter's reply to the MAIL.
    pub(super) async fn milter_mail(&mut self) -> Option<OwnedReply> {
        if self.milters.is_none() {
            if !self.table().enabled(Agent::ContentFilter) {
                return None;
            }
            let selected = self.selected_milters();
            let (live, orig) = (self.live, self.att.originating);
            if !live.milters.applies(orig, selected.as_deref()) {
                return None;
            }
            self.milters = Some(live.milters.chain(orig, selected.as_deref()));
        }
        let tls = self.rx.is_tls();
        let facts = Facts {
            hostname: &self.live.cfg.hostname,
            queue_id: "",
            client: self.peer,
            local: self.watch.local,
            helo: &self.txn.helo,
            tls,
        };
        let chain = self.milters.as_mut()?;
        let e = chain.mail(&facts, &self.txn.from).await?;
        Some(self.milter_refused(e, None))
    }

    /// RCPT for the milters. `Some`: the milter's reply to this RCPT.
    pub(super) async fn milter_rcpt(&mut self, rcpt: &[u8]) -> Option<OwnedReply> {
        let tls = self.rx.is_tls();
        let facts = Facts {
            hostname: &self.live.cfg.hostname,
            queue_id: "",
            client: self.peer,
            local: self.watch.local,
            helo: &self.txn.helo,
            tls,
        };
        let chain = self.milters.as_mut()?;
        let e = chain.rcpt(&facts, &self.txn.from, rcpt).await?;
        Some(self.milter_refused(e, Some(rcpt)))
    }

    /// A milter refused MAIL or RCPT (or failed with `tempfail` or
    /// `reject`): the REJECT line names it; the reply.
    fn milter_refused(&self, e: Early, rcpt: Option<&[u8]>) -> OwnedReply {
        let Fate::Refuse { milter, reply, .. } = e.fate else {
            return OwnedReply::new(
                451,
                Some((4, 7, 1)),
                "Service unavailable - try again later",
            );
        };
        if let Some(why) = &e.failure {
            log::warn(format_args!(
                "content_filter: milter {milter} failed: {why}; on_failure answers {reply}"
            ));
        }
        let to = rcpt.map_or_else(String::new, |r| {
            format!(" to=<{}>", String::from_utf8_lossy(r))
        });
        counters::refuse(
            Agent::ContentFilter,
            reply.code >= 500,
            format_args!(
                "{} from=<{}>{to}: milter {milter} {}: {reply}",
                self.peer,
                String::from_utf8_lossy(&self.txn.from),
                if e.failure.is_some() {
                    "failed"
                } else {
                    "refused"
                },
            ),
        );
        reply
    }

    /// The milters the session's inbound connector names (`None`: all).
    fn selected_milters(&self) -> Option<Vec<String>> {
        let i = self.att.inbound?;
        self.policy.inbound_milters(i)
    }

    /// Runs the milters on the message at its end. `Some(size)`: go on
    /// with the (maybe modified) message of that size; `None`: the message
    /// was answered (refused, or discarded with a `250`).
    pub(super) async fn content_filter(&mut self, id: &str, size: u64) -> Option<u64> {
        if !self.filtering() || self.txn.failed.is_some() {
            return Some(size);
        }
        let msg = Message::new(
            std::mem::take(&mut self.txn.data),
            std::mem::take(&mut self.txn.from),
            std::mem::take(&mut self.txn.rcpts),
        );
        let tls = self.rx.is_tls();
        let facts = Facts {
            hostname: &self.live.cfg.hostname,
            queue_id: id,
            client: self.peer,
            local: self.watch.local,
            helo: &self.txn.helo,
            tls,
        };
        let max = self
            .limits()
            .max_message_size
            .min(self.table().limits.max_message_size) as usize;
        let chain = self.milters.as_mut()?;
        let out = chain.message(&facts, msg, max).await;
        self.log_milters(id, &out);
        let Filtered { fate, message, .. } = out;
        let quarantine = message.quarantine.clone();
        self.txn.from = message.from.clone();
        self.txn.rcpts = message.rcpts.clone();
        match fate {
            Fate::Pass if self.txn.rcpts.is_empty() => {
                self.discarded(id, "every recipient was deleted");
                None
            }
            Fate::Pass => {
                let changed = message.changed();
                let (octets, at) = message.into_octets();
                if changed {
                    self.retap(&octets, at as u64);
                }
                let size = octets.len() as u64;
                self.txn.data = octets;
                if let Some(q) = quarantine {
                    counters::count(Agent::ContentFilter, Tally::Stamped);
                    log::info(format_args!(
                        "{id}: content_filter: quarantine requested: {q}"
                    ));
                } else {
                    counters::count(Agent::ContentFilter, Tally::Passed);
                }
                self.spill().await;
                Some(size)
            }
            Fate::Discard { milter } => {
                self.discarded(id, &format!("milter {milter} discarded it"));
                None
            }
            Fate::Refuse {
                milter,
                reply,
                failed,
            } => {
                counters::refuse(
                    Agent::ContentFilter,
                    reply.code >= 500,
                    format_args!(
                        "{} from=<{}> id={id}: milter {milter} {}: {reply}",
                        self.peer,
                        String::from_utf8_lossy(&self.txn.from),
                        if failed { "failed" } else { "refused" },
                    ),
                );
                self.txn.forget_message();
                self.rx.reject(reply.as_reply());
                None
            }
        }
    }

    /// A milter changed the message: its new body offset, and the DKIM
    /// body hash (signing) made over what is stored.
    fn retap(&mut self, octets: &[u8], at: u64) {
        self.txn.body_offset = Some(at);
        if self.txn.tap.is_some() {
            self.txn.tap = Some(BodyTap::over(octets, at));
        }
    }

    /// A discarded message: `250` (the client must not retry it) and
    /// nothing stored, logged with the reason.
    fn discarded(&mut self, id: &str, why: &str) {
        counters::count(Agent::ContentFilter, Tally::Rejected);
        log::event(
            Kind::Reject,
            Some(id),
            None,
            format_args!(
                "content_filter: {} from=<{}>: discarded: {why}",
                self.peer,
                String::from_utf8_lossy(&self.txn.from)
            ),
        );
        self.txn.forget_message();
        self.rx.accept_message(id);
    }

    /// A syslog line per milter that failed, naming it and what
    /// `on_failure` made of it; one counted `failed_open` per accept.
    fn log_milters(&self, id: &str, out: &Filtered) {
        for r in &out.reports {
            if let Some((why, on)) = &r.failure {
                log::warn(format_args!(
                    "{id}: content_filter: milter {} failed: {why}; on_failure = {}",
                    r.milter,
                    on.name()
                ));
                if *on == crate::shell::config::OnFailure::Accept {
                    counters::count(Agent::ContentFilter, Tally::FailedOpen);
                }
            }
        }
    }

    /// After the milters: a message held whole goes to the spool in
    /// chunks, as one received in chunks would have (its head kept for the
    /// policy); the last part stays for the commit.
    async fn spill(&mut self) {
        let txn = &mut self.txn;
        if txn.data.len() < 2 * spool::CHUNK {
            return;
        }
        let data = std::mem::take(&mut txn.data);
        let mut rest: &[u8] = &data;
        while rest.len() >= 2 * spool::CHUNK {
            let (piece, tail) = rest.split_at(spool::CHUNK);
            if txn.head.is_empty() {
                txn.head = piece.to_vec();
            }
            if self.policy.needs_attachments {
                txn.mime
                    .get_or_insert_with(crate::shell::policy::mime::MimeScan::default)
                    .feed(piece);
            }
            if txn.failed.is_none() {
                if let Err(e) = self.sh.spool.append_chunk(txn.id, piece).await {
                    txn.failed = Some(e);
                }
            }
            rest = tail;
        }
        txn.data = rest.to_vec();
    }
}
