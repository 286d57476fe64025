//! The milter client: the `content_filter` agent's driver. A session's
//! [`Chain`] connects each applicable milter at the first MAIL (connect and
//! HELO events, over a pooled connection when there is one), sends MAIL and
//! each RCPT at their command and the message (DATA, header fields, end of
//! headers, body chunks, end of message) at its end; each milter's verdict
//! and modifications are applied to the [`Message`] the next one sees. The
//! protocol coder is the engine's ([`crate::engine::milter`]); this module
//! does the I/O.
//!
//! * [`conn`]: one connection (TCP or unix socket), negotiation, timeouts.
//! * [`message`]: the message the milters see and change.

pub mod conn;
pub mod message;

use crate::engine::limits::MILTER_CHUNK;
use crate::engine::milter::{self, step, Command, Family, Final, Modification, Stage, Step};
use crate::shell::config::{MilterConfig, OnFailure, MACRO_STAGES};
use crate::shell::reply::OwnedReply;
use conn::{Conn, Failure};
pub use message::Message;
use std::net::SocketAddr;
use std::sync::Mutex;

/// The configured milters with their pools of idle connections.
pub struct Milters {
    /// In the order they run.
    list: Vec<Milter>,
}

/// One milter and its idle connections.
struct Milter {
    /// Its config.
    cfg: MilterConfig,
    /// Connections whose last conversation ended cleanly (`QUIT_NC`
    /// queued), at most `cfg.pool`.
    idle: Mutex<Vec<Conn>>,
}

/// What the milters may know of the session (their macros and events).
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// Our host name (`j`, `{daemon_name}`).
    pub hostname: &'a str,
    /// The spool id (`i`).
    pub queue_id: &'a str,
    /// The client.
    pub client: SocketAddr,
    /// Our address on the connection (`{daemon_addr}`).
    pub local: Option<std::net::IpAddr>,
    /// The HELO/EHLO name.
    pub helo: &'a [u8],
    /// The session is under TLS.
    pub tls: bool,
}

/// What happened to the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    /// Every milter accepted (or failed with `on_failure = "accept"`).
    Pass,
    /// A milter said discard: `250`, and nothing is stored.
    Discard {
        /// Which.
        milter: String,
    },
    /// A milter refused, or failed with `tempfail`/`reject`.
    Refuse {
        /// Which.
        milter: String,
        /// The SMTP reply.
        reply: OwnedReply,
        /// It failed (down, slow, garbage), not refused.
        failed: bool,
    },
}

/// One milter's part, for `sluice trace --milters` and the logs.
#[derive(Debug, Clone)]
pub struct Report {
    /// The milter's name.
    pub milter: String,
    /// Its replies and modifications, in words, in order.
    pub lines: Vec<String>,
    /// It failed: how, and what `on_failure` made of it.
    pub failure: Option<(String, OnFailure)>,
}

/// The milters' result.
pub struct Filtered {
    /// The verdict.
    pub fate: Fate,
    /// The message with every applied modification.
    pub message: Message,
    /// Per milter run.
    pub reports: Vec<Report>,
}

/// A milter's verdict on one message before it is applied.
enum Verdict {
    /// Accepted, with these modifications (body chunks concatenated).
    Accept(Vec<Owned>, Option<Vec<u8>>),
    /// Decided otherwise.
    Final(OwnedFinal),
}

/// A [`Final`] with its own text.
enum OwnedFinal {
    /// Discard.
    Discard,
    /// Reject, tempfail or shut down, as a reply.
    Reply(OwnedReply),
}

/// A modification kept until the milter's verdict (a milter that fails
/// half way leaves none of its modifications behind).
struct Owned {
    /// The command octet.
    kind: u8,
    /// The header index, if any.
    index: u32,
    /// Name, address or reason.
    a: Vec<u8>,
    /// Value or ESMTP arguments.
    b: Option<Vec<u8>>,
}

impl Owned {
    /// Keeps `m`.
    fn keep(m: &Modification<'_>) -> Owned {
        let (index, a, b): (u32, &[u8], Option<&[u8]>) = match *m {
            Modification::AddHeader { name, value } => (0, name, Some(value)),
            Modification::InsertHeader { index, name, value }
            | Modification::ChangeHeader { index, name, value } => (index, name, Some(value)),
            Modification::ReplaceBody(b) => (0, b, None),
            Modification::AddRcpt { rcpt, args } => (0, rcpt, args),
            Modification::DeleteRcpt(r) => (0, r, None),
            Modification::ChangeFrom { from, args } => (0, from, args),
            Modification::Quarantine(r) => (0, r, None),
        };
        Owned {
            kind: milter::modification_command(m),
            index,
            a: a.to_vec(),
            b: b.map(<[u8]>::to_vec),
        }
    }

    /// The borrowed view again.
    fn view(&self) -> Modification<'_> {
        use milter::rsp;
        let b = self.b.as_deref().unwrap_or_default();
        match self.kind {
            rsp::ADDHEADER => Modification::AddHeader {
                name: &self.a,
                value: b,
            },
            rsp::INSHEADER => Modification::InsertHeader {
                index: self.index,
                name: &self.a,
                value: b,
            },
            rsp::CHGHEADER => Modification::ChangeHeader {
                index: self.index,
                name: &self.a,
                value: b,
            },
            rsp::ADDRCPT | rsp::ADDRCPT_PAR => Modification::AddRcpt {
                rcpt: &self.a,
                args: self.b.as_deref(),
            },
            rsp::DELRCPT => Modification::DeleteRcpt(&self.a),
            rsp::CHGFROM => Modification::ChangeFrom {
                from: &self.a,
                args: self.b.as_deref(),
            },
            rsp::QUARANTINE => Modification::Quarantine(&self.a),
            _ => Modification::ReplaceBody(&self.a),
        }
    }
}

/// The reply for a milter's reject without a reply code.
fn rejected() -> OwnedReply {
    OwnedReply::new(550, Some((5, 7, 1)), "Message content rejected")
}

/// The reply for a milter's tempfail, or a failed milter.
fn tempfailed() -> OwnedReply {
    OwnedReply::new(
        451,
        Some((4, 7, 1)),
        "Service unavailable - try again later",
    )
}

/// A milter's reply code and text as an SMTP reply: its last line, with
/// the class's `X.7.1` when it gives no enhanced code.
fn given_reply(code: u16, text: &[u8]) -> OwnedReply {
    let text = String::from_utf8_lossy(text);
    let last = text.lines().last().unwrap_or_default();
    let mut r = OwnedReply::parse(last).unwrap_or_else(|| OwnedReply::new(code, None, ""));
    r.code = code;
    if r.status.is_none() {
        r.status = Some(((code / 100) as u8, 7, 1));
    }
    if r.text.is_empty() {
        r.text = if code >= 500 {
            rejected().text
        } else {
            tempfailed().text
        };
    }
    r
}

impl Milters {
    /// The milters of the config, with empty pools.
    pub fn new(cfgs: &[MilterConfig]) -> Milters {
        Milters {
            list: cfgs
                .iter()
                .map(|c| Milter {
                    cfg: c.clone(),
                    idle: Mutex::new(Vec::new()),
                })
                .collect(),
        }
    }

    /// Whether any milter applies to a session: one its inbound connector
    /// names in `milters` (`selected`), or else, for an originating
    /// session, one marked `originating`, for any other session any.
    pub fn applies(&self, originating: bool, selected: Option<&[String]>) -> bool {
        self.list
            .iter()
            .any(|m| Self::runs(&m.cfg, originating, selected))
    }

    /// Whether milter `c` runs for such a session.
    fn runs(c: &MilterConfig, originating: bool, selected: Option<&[String]>) -> bool {
        match selected {
            Some(names) => names.contains(&c.name),
            None => !originating || c.originating,
        }
    }

    /// The milters of one SMTP session, in order (no connection yet).
    pub fn chain(&self, originating: bool, selected: Option<&[String]>) -> Chain<'_> {
        let slots = self
            .list
            .iter()
            .filter(|m| Self::runs(&m.cfg, originating, selected))
            .map(|m| Slot {
                milter: m,
                conn: None,
                state: State::Closed,
                report: Report {
                    milter: m.cfg.name.clone(),
                    lines: Vec::new(),
                    failure: None,
                },
                answered: false,
            })
            .collect();
        Chain {
            slots,
            refusal: None,
            discard: None,
        }
    }

    /// A whole conversation for one message (`sluice trace --milters`):
    /// MAIL, each RCPT, then the message, as a session would.
    pub async fn filter(
        &self,
        msg: Message,
        facts: &Facts<'_>,
        originating: bool,
        selected: Option<&[String]>,
        max: usize,
    ) -> Filtered {
        let mut chain = self.chain(originating, selected);
        let mut fate = chain.mail(facts, &msg.from).await.map(|f| f.fate);
        if fate.is_none() {
            for r in &msg.rcpts {
                if let Some(f) = chain.rcpt(facts, &msg.from, r).await {
                    fate = Some(f.fate);
                    break;
                }
            }
        }
        let out = match fate {
            None => chain.message(facts, msg, max).await,
            Some(fate) => Filtered {
                fate,
                message: msg,
                reports: chain.reports(),
            },
        };
        chain.end().await;
        out
    }
}

/// Where a milter's conversation stands in the SMTP session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// No connection (yet, or any more).
    Closed,
    /// Connect and HELO were sent; no transaction open.
    Idle,
    /// MAIL was sent and the milter still wants this message's events.
    Open,
    /// The milter has decided on this message before its end (accept:
    /// no more events; a refusal was answered) until the next MAIL.
    Decided,
    /// End of message was answered with accept: the socket may be pooled.
    Finished,
    /// The milter failed with `on_failure = "accept"`: left out for the
    /// rest of the session.
    Failed,
}

/// One milter in a session.
struct Slot<'m> {
    /// The milter.
    milter: &'m Milter,
    /// Its connection.
    conn: Option<Conn>,
    /// Where the conversation stands.
    state: State,
    /// What it did (for the trace and the logs).
    report: Report,
    /// It answered at least once on this connection.
    answered: bool,
}

/// A milter's verdict at MAIL or RCPT, for the session to answer with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Early {
    /// What happens: a refusal of this command (or discard, kept until
    /// the message's end).
    pub fate: Fate,
    /// The milter failed (`on_failure`) rather than refused: how.
    pub failure: Option<String>,
}

/// The milters of one SMTP session: connect and HELO go out with the
/// first MAIL, MAIL and each RCPT at their command (a refusal answers
/// that command), the message at its end.
pub struct Chain<'m> {
    /// The applicable milters, in order.
    slots: Vec<Slot<'m>>,
    /// A refusal at connect or HELO: every MAIL of the session gets it.
    refusal: Option<Early>,
    /// A milter asked to discard the message before its end.
    discard: Option<String>,
}

impl<'m> Chain<'m> {
    /// Whether the chain has any milter.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Each milter's part so far.
    pub fn reports(&self) -> Vec<Report> {
        self.slots.iter().map(|s| s.report.clone()).collect()
    }

    /// MAIL: a transaction left open is aborted, each milter is connected
    /// (connect and HELO events) if it is not, then gets MAIL. `Some`: the
    /// MAIL is refused (or the message will be discarded).
    pub async fn mail(&mut self, facts: &Facts<'_>, from: &[u8]) -> Option<Early> {
        self.abort().await;
        self.discard = None;
        for s in &mut self.slots {
            s.report.lines.clear();
            s.report.failure = None;
        }
        if let Some(r) = &self.refusal {
            return Some(r.clone());
        }
        for i in 0..self.slots.len() {
            let s = &mut self.slots[i];
            if s.state == State::Failed {
                continue;
            }
            if matches!(s.state, State::Closed) {
                if let Some(e) = s.introduce(facts).await {
                    if e.failure.is_none() && matches!(e.fate, Fate::Refuse { .. }) {
                        // Refused at connect or HELO: for the whole session.
                        self.refusal = Some(e.clone());
                    }
                    if let Some(e) = self.decided(e) {
                        self.abort().await;
                        return Some(e);
                    }
                    continue;
                }
            }
            let s = &mut self.slots[i];
            if s.state != State::Idle {
                continue;
            }
            let bracketed = format!("<{}>", String::from_utf8_lossy(from));
            let args: [&[u8]; 1] = [bracketed.as_bytes()];
            let r = s
                .step(facts, from, Stage::Mail, None, &Command::Mail(&args))
                .await;
            if s.state == State::Idle {
                s.state = State::Open;
            }
            if let Some(e) = r.and_then(|e| self.decided(e)) {
                self.abort().await;
                return Some(e);
            }
        }
        None
    }

    /// RCPT: each milter with the transaction open gets it. `Some`: this
    /// recipient is refused.
    pub async fn rcpt(&mut self, facts: &Facts<'_>, from: &[u8], rcpt: &[u8]) -> Option<Early> {
        for i in 0..self.slots.len() {
            let s = &mut self.slots[i];
            if s.state != State::Open {
                continue;
            }
            let bracketed = format!("<{}>", String::from_utf8_lossy(rcpt));
            let args: [&[u8]; 1] = [bracketed.as_bytes()];
            let r = s
                .step(facts, from, Stage::Rcpt, Some(rcpt), &Command::Rcpt(&args))
                .await;
            if let Some(e) = r {
                // A refused recipient leaves the transaction open
                // (libmilter stays in RCPT), a failure does not.
                if e.failure.is_none() && s.state == State::Decided {
                    s.state = State::Open;
                }
                if let Some(e) = self.decided(e) {
                    return Some(e);
                }
            }
        }
        None
    }

    /// What a verdict at MAIL or RCPT means for the session: a discard is
    /// kept for the message's end; a failure with `accept` is no verdict.
    fn decided(&mut self, e: Early) -> Option<Early> {
        match &e.fate {
            Fate::Discard { milter } => {
                self.discard = Some(milter.clone());
                None
            }
            Fate::Pass => None,
            Fate::Refuse { .. } => Some(e),
        }
    }

    /// The message: DATA, header fields, end of headers, body, end of
    /// message for each milter with the transaction open, in order, each
    /// seeing what the ones before it changed.
    pub async fn message(&mut self, facts: &Facts<'_>, mut msg: Message, max: usize) -> Filtered {
        if let Some(milter) = self.discard.take() {
            self.abort().await;
            return Filtered {
                fate: Fate::Discard { milter },
                message: msg,
                reports: self.reports(),
            };
        }
        for i in 0..self.slots.len() {
            let s = &mut self.slots[i];
            if s.state != State::Open {
                continue;
            }
            let fate = match s.content(facts, &msg, max).await {
                Ok(Verdict::Accept(mods, body)) => {
                    apply(&mut msg, &mods, body, &mut s.report.lines);
                    None
                }
                Ok(Verdict::Final(OwnedFinal::Discard)) => Some(Fate::Discard {
                    milter: s.milter.cfg.name.clone(),
                }),
                Ok(Verdict::Final(OwnedFinal::Reply(reply))) => Some(Fate::Refuse {
                    milter: s.milter.cfg.name.clone(),
                    reply,
                    failed: false,
                }),
                Err(f) => s.fail(f).map(|e| e.fate),
            };
            if let Some(fate) = fate {
                self.abort().await;
                return Filtered {
                    fate,
                    message: msg,
                    reports: self.reports(),
                };
            }
        }
        Filtered {
            fate: Fate::Pass,
            message: msg,
            reports: self.reports(),
        }
    }

    /// Abandons an open transaction (RSET, a refused MAIL, a refused or
    /// failed message): ABORT, no answer; the milter waits for MAIL.
    pub async fn abort(&mut self) {
        for s in &mut self.slots {
            if matches!(s.state, State::Open | State::Decided | State::Finished) {
                if let Some(c) = s.conn.as_mut() {
                    if c.queue(&Command::Abort).is_err() {
                        s.conn = None;
                        s.state = State::Closed;
                        continue;
                    }
                }
                s.state = State::Idle;
            }
        }
    }

    /// The session ended: a connection whose last message ended with
    /// accept goes back to its pool (`QUIT_NC`), the others say QUIT.
    pub async fn end(self) {
        for s in self.slots {
            let Some(c) = s.conn else {
                continue;
            };
            if s.state == State::Finished {
                s.milter.keep(c);
            } else {
                c.quit().await;
            }
        }
    }
}

impl Milter {
    /// Puts a connection back for the next session (`QUIT_NC` queued),
    /// or closes it when the pool is full.
    fn keep(&self, mut conn: Conn) {
        if conn.reset().is_err() || !conn.is_clean() {
            return;
        }
        if let Ok(mut p) = self.idle.lock() {
            if p.len() < self.cfg.pool {
                p.push(conn);
            }
        }
    }
}

/// Applies an accepting milter's modifications, in the order it sent them.
fn apply(msg: &mut Message, mods: &[Owned], body: Option<Vec<u8>>, lines: &mut Vec<String>) {
    for m in mods {
        lines.push(msg.apply(&m.view(), false));
    }
    if let Some(b) = body {
        lines.push(format!("replace body ({} octets)", b.len()));
        msg.replace_body(&b, true, usize::MAX);
    }
}

/// The early answer to an event.
enum Answer {
    /// Go on.
    Next,
    /// No more events for this message from this milter (accept).
    Accept,
    /// No more body chunks.
    SkipBody,
    /// A verdict.
    Final(OwnedFinal),
}

impl Slot<'_> {
    /// Connects (from the pool when it can) and sends connect and HELO;
    /// `Some` when the milter decided or failed. A pooled connection that
    /// fails before its first answer (the milter closed it while idle) is
    /// replaced by a new one, once.
    async fn introduce(&mut self, facts: &Facts<'_>) -> Option<Early> {
        let pooled = self.milter.idle.lock().ok().and_then(|mut p| p.pop());
        let reused = pooled.is_some();
        self.conn = match pooled {
            Some(c) => Some(c),
            None => match Conn::open(&self.milter.cfg).await {
                Ok(c) => Some(c),
                Err(f) => return self.fail(f),
            },
        };
        self.answered = false;
        match self.hello(facts).await {
            Ok(a) => self.early(a),
            Err(_) if reused && !self.answered => {
                self.conn = match Conn::open(&self.milter.cfg).await {
                    Ok(c) => Some(c),
                    Err(f) => return self.fail(f),
                };
                match self.hello(facts).await {
                    Ok(a) => self.early(a),
                    Err(f) => self.fail(f),
                }
            }
            Err(f) => self.fail(f),
        }
    }

    /// The connect and HELO events.
    async fn hello(&mut self, facts: &Facts<'_>) -> Result<Answer, Failure> {
        let ip = facts.client.ip().to_string();
        let host = format!("[{ip}]");
        let family = if facts.client.is_ipv4() {
            Family::Inet
        } else {
            Family::Inet6
        };
        let connect = Command::Connect {
            host: host.as_bytes(),
            family,
            port: facts.client.port(),
            addr: ip.as_bytes(),
        };
        self.state = State::Idle;
        let a = self
            .event(facts, b"", Stage::Connect, None, &connect)
            .await?;
        if !matches!(a, Answer::Next) {
            return Ok(a);
        }
        self.event(facts, b"", Stage::Helo, None, &Command::Helo(facts.helo))
            .await
    }

    /// Sends one envelope event and makes its answer a verdict for the
    /// session, if it is one.
    async fn step(
        &mut self,
        facts: &Facts<'_>,
        from: &[u8],
        stage: Stage,
        rcpt: Option<&[u8]>,
        cmd: &Command<'_>,
    ) -> Option<Early> {
        match self.event(facts, from, stage, rcpt, cmd).await {
            Ok(a) => self.early(a),
            Err(f) => self.fail(f),
        }
    }

    /// An early answer as the session sees it: accept ends this milter's
    /// part in the message; a verdict refuses the command (or discards).
    fn early(&mut self, a: Answer) -> Option<Early> {
        let name = self.milter.cfg.name.clone();
        match a {
            Answer::Next | Answer::SkipBody => None,
            Answer::Accept => {
                self.state = State::Decided;
                None
            }
            Answer::Final(f) => {
                self.state = State::Decided;
                let fate = match f {
                    OwnedFinal::Discard => Fate::Discard { milter: name },
                    OwnedFinal::Reply(reply) => Fate::Refuse {
                        milter: name,
                        reply,
                        failed: false,
                    },
                };
                Some(Early {
                    fate,
                    failure: None,
                })
            }
        }
    }

    /// The milter failed: logged in its report, the connection dropped;
    /// `on_failure` decides (accept: it is left out from now on).
    fn fail(&mut self, f: Failure) -> Option<Early> {
        let cfg = &self.milter.cfg;
        let why = f.to_string();
        self.report.failure = Some((why.clone(), cfg.on_failure));
        self.conn = None;
        let reply = match cfg.on_failure {
            OnFailure::Accept => {
                self.state = State::Failed;
                return None;
            }
            OnFailure::Tempfail => tempfailed(),
            OnFailure::Reject => rejected(),
        };
        self.state = State::Closed;
        Some(Early {
            fate: Fate::Refuse {
                milter: cfg.name.clone(),
                reply,
                failed: true,
            },
            failure: Some(why),
        })
    }

    /// The message's events and the verdict at its end.
    async fn content(
        &mut self,
        facts: &Facts<'_>,
        msg: &Message,
        max: usize,
    ) -> Result<Verdict, Failure> {
        macro_rules! early {
            ($e:expr) => {
                match $e {
                    Answer::Next | Answer::SkipBody => {}
                    Answer::Accept => {
                        self.state = State::Decided;
                        return Ok(Verdict::Accept(Vec::new(), None));
                    }
                    Answer::Final(v) => {
                        self.state = State::Decided;
                        return Ok(Verdict::Final(v));
                    }
                }
            };
        }
        let from = &msg.from;
        early!(
            self.event(facts, from, Stage::Data, None, &Command::Data)
                .await?
        );
        let lead = self.conn.as_ref().is_some_and(|c| c.neg.leading_space());
        for fld in &msg.fields {
            let value = message::milter_value(&fld.value, lead);
            let h = Command::Header {
                name: &fld.name,
                value: &value,
            };
            early!(self.event(facts, from, Stage::Header, None, &h).await?);
        }
        let eoh = Command::EndOfHeaders;
        early!(
            self.event(facts, from, Stage::EndOfHeaders, None, &eoh)
                .await?
        );
        for chunk in msg.body().chunks(MILTER_CHUNK) {
            let b = Command::Body(chunk);
            match self.event(facts, from, Stage::Body, None, &b).await? {
                Answer::SkipBody => break,
                e => early!(e),
            }
        }
        let v = self.end_of_message(facts, from, max).await?;
        self.state = match v {
            Verdict::Accept(..) => State::Finished,
            Verdict::Final(_) => State::Decided,
        };
        Ok(v)
    }

    /// Sends one event (with its macros) unless the milter left it out,
    /// and reads its answer unless the milter does not give one.
    async fn event(
        &mut self,
        facts: &Facts<'_>,
        from: &[u8],
        stage: Stage,
        rcpt: Option<&[u8]>,
        cmd: &Command<'_>,
    ) -> Result<Answer, Failure> {
        let cfg = &self.milter.cfg;
        let c = self.conn.as_mut().ok_or(Failure::Closed(stage))?;
        if !c.neg.sends(stage) {
            return Ok(Answer::Next);
        }
        queue_macros(cfg, c, facts, from, stage, rcpt)?;
        c.queue(cmd)?;
        c.stage = stage;
        if !c.neg.replies(stage) {
            return Ok(Answer::Next);
        }
        let neg = c.neg;
        loop {
            let r = c.answer(cfg.command_timeout).await?;
            self.answered = true;
            let a = match step(&neg, stage, r).map_err(Failure::Protocol)? {
                Step::Wait => continue,
                Step::Next => Answer::Next,
                Step::SkipBody => Answer::SkipBody,
                Step::Accept => Answer::Accept,
                Step::Final(f) => Answer::Final(own(f)),
                // `step` allows modifications at end of message only.
                Step::Modify(_) => Answer::Next,
            };
            if !matches!(a, Answer::Next) {
                let words = answer_words(&a);
                self.report
                    .lines
                    .push(format!("{words} at {}", stage.name()));
            }
            return Ok(a);
        }
    }

    /// End of message: modifications until the verdict.
    async fn end_of_message(
        &mut self,
        facts: &Facts<'_>,
        from: &[u8],
        max: usize,
    ) -> Result<Verdict, Failure> {
        let cfg = &self.milter.cfg;
        let c = self
            .conn
            .as_mut()
            .ok_or(Failure::Closed(Stage::EndOfMessage))?;
        queue_macros(cfg, c, facts, from, Stage::EndOfMessage, None)?;
        c.queue(&Command::EndOfMessage)?;
        c.stage = Stage::EndOfMessage;
        let neg = c.neg;
        let mut mods = Vec::new();
        let mut body: Option<Vec<u8>> = None;
        loop {
            let r = c.answer(cfg.eom_timeout).await?;
            self.answered = true;
            match step(&neg, Stage::EndOfMessage, r).map_err(Failure::Protocol)? {
                Step::Wait | Step::Next | Step::SkipBody => {}
                Step::Modify(Modification::ReplaceBody(b)) => {
                    let nb = body.get_or_insert_with(Vec::new);
                    if nb.len() + b.len() > max {
                        return Err(Failure::TooLarge);
                    }
                    nb.extend_from_slice(b);
                }
                Step::Modify(m) => mods.push(Owned::keep(&m)),
                Step::Accept => {
                    self.report.lines.push("accept at eom".into());
                    return Ok(Verdict::Accept(mods, body));
                }
                Step::Final(f) => {
                    let a = Answer::Final(own(f));
                    self.report
                        .lines
                        .push(format!("{} at eom", answer_words(&a)));
                    let Answer::Final(f) = a else {
                        return Ok(Verdict::Accept(mods, body));
                    };
                    return Ok(Verdict::Final(f));
                }
            }
        }
    }
}

/// Queues the macros of `stage`: the milter's own list if it sent one,
/// else the configured one; macros without a value are left out.
fn queue_macros(
    cfg: &MilterConfig,
    c: &mut Conn,
    facts: &Facts<'_>,
    from: &[u8],
    stage: Stage,
    rcpt: Option<&[u8]>,
) -> Result<(), Failure> {
    let Some(idx) = stage.macro_index() else {
        return Ok(());
    };
    let cfg_pos = MACRO_STAGES.iter().position(|(_, s)| *s == stage);
    let names: Vec<String> = match c.lists.get(idx).cloned().flatten() {
        Some(own) => own,
        None => cfg_pos
            .and_then(|p| cfg.macros.get(p).cloned())
            .unwrap_or_default(),
    };
    let values: Vec<(Vec<u8>, Vec<u8>)> = names
        .iter()
        .filter_map(|n| {
            macro_value(n, facts, from, rcpt).map(|v| {
                let mut v = v.into_bytes();
                v.truncate(crate::engine::limits::MAX_MILTER_MACRO);
                (n.clone().into_bytes(), v)
            })
        })
        .collect();
    if values.is_empty() {
        return Ok(());
    }
    let pairs: Vec<(&[u8], &[u8])> = values
        .iter()
        .map(|(n, v)| (n.as_slice(), v.as_slice()))
        .collect();
    c.queue(&Command::Macros {
        stage,
        pairs: &pairs,
    })
}

/// A macro's value, if sluice has one (it has no AUTH, so no `{auth_*}`).
fn macro_value(name: &str, f: &Facts<'_>, from: &[u8], rcpt: Option<&[u8]>) -> Option<String> {
    let bare = name.trim_start_matches('{').trim_end_matches('}');
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    Some(match bare {
        "j" | "daemon_name" => f.hostname.to_string(),
        "v" => format!("sluice {}", env!("CARGO_PKG_VERSION")),
        "i" if !f.queue_id.is_empty() => f.queue_id.to_string(),
        "_" => format!("[{ip}] [{ip}]", ip = f.client.ip()),
        "client_addr" => f.client.ip().to_string(),
        "client_name" | "client_ptr" => format!("[{}]", f.client.ip()),
        "client_port" => f.client.port().to_string(),
        "daemon_addr" | "if_addr" => f.local?.to_string(),
        "mail_addr" => text(from),
        "mail_mailer" | "rcpt_mailer" => "smtp".into(),
        "rcpt_addr" => text(rcpt?),
        "rcpt_host" => {
            let r = rcpt?;
            text(&r[r.iter().rposition(|b| *b == b'@')? + 1..])
        }
        "mail_host" => {
            let at = from.iter().rposition(|b| *b == b'@')?;
            text(&from[at + 1..])
        }
        "tls_version" if f.tls => "TLSv1.3".into(),
        _ => return None,
    })
}

/// A [`Final`] with its own text.
fn own(f: Final<'_>) -> OwnedFinal {
    match f {
        Final::Discard => OwnedFinal::Discard,
        Final::Reject => OwnedFinal::Reply(rejected()),
        Final::Tempfail | Final::Shutdown => OwnedFinal::Reply(tempfailed()),
        Final::Reply { code, text } => OwnedFinal::Reply(given_reply(code, text)),
    }
}

/// An answer in words, for the trace.
fn answer_words(a: &Answer) -> String {
    match a {
        Answer::Next => "continue".into(),
        Answer::Accept => "accept".into(),
        Answer::SkipBody => "skip".into(),
        Answer::Final(OwnedFinal::Discard) => "discard".into(),
        Answer::Final(OwnedFinal::Reply(r)) => format!("reply {r}"),
    }
}

#[cfg(test)]
mod tests {
    use super::given_reply;

    #[test]
    fn a_milter_reply_keeps_its_code_and_gets_an_enhanced_code() {
        let r = given_reply(554, b"554 5.7.1 Gtube pattern");
        assert_eq!((r.code, r.status), (554, Some((5, 7, 1))));
        assert_eq!(r.text, "Gtube pattern");
        let r = given_reply(450, b"450 busy");
        assert_eq!((r.code, r.status), (450, Some((4, 7, 1))));
        assert_eq!(r.text, "busy");
        let r = given_reply(550, b"550-5.7.1 first\r\n550 5.7.1 second");
        assert_eq!(r.text, "second");
    }
}
