//! One SMTP session: the socket I/O around an
//! [`engine::smtp::Receiver`](Receiver), and the decisions its events ask
//! for.
//!
//! Bytes from the socket go into the receiver; each event it hands out is
//! first noted in the transaction ([`Txn::note`]), which ends its borrow of
//! the input, then acted on by one short handler: [`Session::mail`],
//! [`Session::rcpt`], [`Session::chunk`], [`Session::end_of_message`],
//! [`Session::starttls`]. Replies queued by the receiver are flushed before
//! the next read ([`Session::read_more`]).
//!
//! The product's promise lives in [`Session::end_of_message`]: decide,
//! stamp, commit to the spool, and only when the commit is durable, `250`.

use super::daemon::{Live, Shared};
use super::edge::{self, ListResult, ListVerdict};
use super::listen::{reply_line, Listening, Slot};
use super::received::received;
use super::record::RecordClock;
use super::starttls::{self, Conn};
use crate::engine::policy::{
    allowed_network, attribute, harvest_exceeded, recipient_check, sender_check, Agent,
    Attribution, RcptCheck, SenderCheck, Table, Verdict,
};
use crate::engine::reply::{Reason, Reply};
use crate::engine::reputation::{Behaviour, RSET_FLOOD};
use crate::engine::smtp::{self, Event, Receiver};
use crate::shell::config::Limits;
use crate::shell::deadline::Deadline;
use crate::shell::directory::Directory;
use crate::shell::ops::counters::{self, Tally};
use crate::shell::ops::log::{self, Kind};
use crate::shell::ops::{metrics, stats};
use crate::shell::policy::mime::MimeScan;
use crate::shell::policy::render::{self, Outcome};
use crate::shell::policy::runtime::{self as pol, Policy};
use crate::shell::report::history;
use crate::shell::sender_auth::sign::BodyTap;
use crate::shell::spool::{self, Envelope, Route, SpoolError};
use crate::shell::time::now_secs;
use async_net::TcpStream;
use futures_lite::{future, AsyncWriteExt};
use smol::Executor;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

mod content_filter;
mod login;
mod sender_auth;

/// Octets read from a client at a time; small, so that a thousand idle
/// sessions stay cheap, large enough for a pipelined burst.
const READ_BUFFER: usize = 8 * 1024;

/// Runs one admitted connection to its end. The config and the policy the
/// session began with stay its own to the end, whatever SIGHUP or an
/// install does meanwhile.
pub(super) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    mode: Listening,
    sh: Arc<Shared>,
    _slot: Slot,
    ex: Arc<Executor<'static>>,
) {
    let _ = stream.set_nodelay(true);
    let live = sh.live();
    let policy: Arc<Policy> = sh.installer.current();
    let directory = sh.directory();
    let table = &policy.table;
    let mut att = attribute(table, &pol::ip16(peer.ip()), None);
    if att.blocked {
        refuse_connection(stream, peer, &live.cfg.hostname).await;
        return;
    }
    // Originating sessions and allowed networks skip the DNS lists, the
    // rate limits and protocol analysis.
    let exempt = att.originating || allowed_network(table, &pol::ip16(peer.ip()));
    if !exempt {
        if let Some(reason) = sh.edge.admit(table, peer.ip()) {
            refuse_at_connect(stream, peer, &live.cfg.hostname, reason).await;
            return;
        }
        if edge::analysing(table) {
            counters::count(Agent::ProtocolAnalysis, Tally::Passed);
        }
    }
    let mut watch = Watch {
        exempt,
        local: mode
            .local
            .or_else(|| stream.local_addr().ok().map(|a| a.ip())),
        ..Watch::default()
    };
    if !exempt && table.enabled(Agent::ConnectionFilter) && !table.dns_lists.is_empty() {
        // Asked now, awaited at the first RCPT: the client's HELO and
        // MAIL time hides the lookups' latency.
        let (sh2, pol, ip) = (sh.clone(), policy.clone(), peer.ip());
        watch.lists =
            Lists::Pending(ex.spawn(async move { sh2.edge.check_lists(&pol.table, ip).await }));
    }
    let tls = Box::pin(login::implicit_tls(
        stream, mode, &live, table, peer, &mut att,
    ));
    let Some(conn) = tls.await else {
        return;
    };
    let mut s = Session::new(&sh, &live, &policy, conn, peer, mode, att);
    s.directory = directory.as_deref();
    s.watch = watch;
    s.run().await;
    // Boxed: `end` owns the session, which would otherwise sit in this
    // future twice for the whole session.
    Box::pin(s.end()).await;
}

/// OnConnect's rate limit or protocol analysis refused the client: 421
/// and close, with no session.
async fn refuse_at_connect(mut stream: TcpStream, peer: SocketAddr, host: &str, reason: Reason) {
    let _ = stream.write_all(&reply_line(reason.reply(), host)).await;
    let (agent, why) = match reason {
        Reason::BadReputation => (Agent::ProtocolAnalysis, "blocked after misbehaviour"),
        _ => (Agent::ConnectionFilter, "over connections_per_minute"),
    };
    counters::refuse(agent, false, format_args!("{peer}: {why}"));
}

/// OnConnect's connection filter refused the client: 554 and close, with
/// no session.
async fn refuse_connection(mut stream: TcpStream, peer: SocketAddr, host: &str) {
    let _ = stream
        .write_all(&reply_line(Reason::AccessDenied.reply(), host))
        .await;
    counters::refuse(
        Agent::ConnectionFilter,
        true,
        format_args!("{peer}: blocked network"),
    );
}

/// Whether the session goes on after a step.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Flow {
    /// Keep going.
    Go,
    /// The session is over: the engine ended it, or the transport failed.
    Stop,
}

/// What to do after an event, once its borrow of the input has ended.
enum Action {
    /// Nothing beyond what [`Txn::note`] recorded.
    Nothing,
    /// MAIL, with its SIZE: check the spool's room.
    Mail(Option<u64>),
    /// RCPT: check relaying.
    Rcpt(Vec<u8>),
    /// Message octets arrived: append a full chunk to the spool.
    Chunk,
    /// The message is complete, this many octets.
    Message(u64),
    /// STARTTLS was answered 220: handshake.
    StartTls,
    /// AUTH ended with these credentials: check them.
    Auth(login::Credentials),
    /// The engine ended the session: send what is queued, then close.
    Disconnect,
}

/// The open transaction as the shell records it.
#[derive(Default)]
struct Txn {
    /// The client's HELO/EHLO name.
    helo: Vec<u8>,
    /// EHLO (not HELO) was used: the Received: protocol is ESMTP.
    esmtp: bool,
    /// The reverse path.
    from: Vec<u8>,
    /// The accepted forward paths.
    rcpts: Vec<Vec<u8>>,
    /// MAIL had SMTPUTF8.
    smtputf8: bool,
    /// MAIL had BODY=8BITMIME.
    body8bit: bool,
    /// The spool id of the message being received.
    id: u64,
    /// Octets received and not yet appended as a chunk.
    data: Vec<u8>,
    /// Where the body starts, once the header block has ended.
    body_offset: Option<u64>,
    /// A chunk append failed: the message will be refused at its end.
    failed: Option<SpoolError>,
    /// For a message appended in chunks: its first octets (the header
    /// block is within them) and the MIME part headers seen so far.
    head: Vec<u8>,
    /// Attachment names seen in the chunks appended so far.
    mime: Option<MimeScan>,
    /// Messages of this session may be DKIM-signed (originating, and a
    /// `[[dkim]]` key exists): their body hash is taken as they arrive.
    want_tap: bool,
    /// The body hash of the message being received, for signing.
    tap: Option<BodyTap>,
    /// Messages of this session are checked by sender authentication
    /// (non-originating, and `[authentication]` is on).
    want_verify: bool,
    /// The DKIM and ARC checks of the message being received.
    verify: Option<crate::shell::sender_auth::MessageTap>,
    /// The verdicts and the `Authentication-Results` field of the message.
    auth: Option<(crate::engine::policy::AuthVerdicts, String)>,
}

impl Txn {
    /// Records what `ev` says about the transaction and says what the
    /// session must do about it.
    fn note(&mut self, ev: Event<'_>, new_id: impl FnOnce() -> u64, peer: SocketAddr) -> Action {
        match ev {
            // OnConnect: the connection filter and the attribution ran
            // before the receiver was made, so there is nothing to decide.
            Event::Connect => Action::Nothing,
            Event::Helo { name, extended } => {
                self.helo = name.to_vec();
                self.esmtp = extended;
                Action::Nothing
            }
            Event::Mail(m) => {
                self.from = m.from.to_vec();
                self.rcpts.clear();
                self.smtputf8 = m.smtputf8;
                self.body8bit = m.body == smtp::Body::EightBitMime;
                Action::Mail(m.size)
            }
            Event::Rcpt(r) => Action::Rcpt(r.to_vec()),
            Event::DataStart => {
                self.begin_message(new_id());
                Action::Nothing
            }
            Event::Body(b) => {
                self.data.extend_from_slice(b);
                if let Some(t) = self.tap.as_mut() {
                    t.feed(b);
                }
                if let Some(t) = self.verify.as_mut() {
                    t.feed(b);
                }
                Action::Chunk
            }
            Event::EndOfHeaders { body_offset } => {
                self.body_offset = Some(body_offset);
                if let Some(t) = self.tap.as_mut() {
                    t.body_at(body_offset);
                }
                if let Some(t) = self.verify.as_mut() {
                    t.body_at(body_offset);
                }
                Action::Nothing
            }
            Event::MessageEnd { size } => Action::Message(size),
            Event::MessageRejected(reason) => {
                self.data.clear();
                log::event(
                    Kind::Reject,
                    None,
                    None,
                    format_args!(
                        "{peer} from=<{}> message: {}",
                        String::from_utf8_lossy(&self.from),
                        reason.reply().text
                    ),
                );
                Action::Nothing
            }
            Event::StartTls => Action::StartTls,
            Event::Auth {
                mechanism,
                login,
                secret,
            } => Action::Auth(login::Credentials::new(mechanism, login, secret)),
            Event::Rset
            | Event::Noop
            | Event::Help
            | Event::Vrfy
            | Event::Quit
            | Event::Reject(_) => Action::Nothing,
            // OnDisconnect: no agent and no log line of its own (the
            // reason, if any, was logged where it arose).
            Event::Disconnect => Action::Disconnect,
        }
    }

    /// DATA or the first BDAT: a new message with spool id `id`.
    fn begin_message(&mut self, id: u64) {
        self.id = id;
        self.data.clear();
        self.body_offset = None;
        self.failed = None;
        self.head = Vec::new();
        self.mime = None;
        self.tap = self.want_tap.then(BodyTap::default);
        self.verify = self
            .want_verify
            .then(crate::shell::sender_auth::MessageTap::default);
        self.auth = None;
    }

    /// The message's first octets: the whole message when it was never
    /// appended in chunks.
    fn head(&self) -> &[u8] {
        if self.head.is_empty() {
            &self.data
        } else {
            &self.head
        }
    }

    /// The Message-ID field's value, for the log.
    fn message_id(&self) -> Option<String> {
        crate::engine::header::find(pol::header_block(self.head()), b"Message-ID")
            .map(|v| String::from_utf8_lossy(crate::engine::header::trim(v)).into_owned())
    }

    /// Drops the message's octets (it was committed or refused); a buffer
    /// grown by a large message is given back.
    fn forget_message(&mut self) {
        self.data.clear();
        self.head = Vec::new();
        if self.data.capacity() > 2 * spool::CHUNK {
            self.data = Vec::new();
        }
    }
}

/// The DNS lists' answers for this session.
#[derive(Default)]
enum Lists {
    /// Not asked (no list, exempt client, agent disabled).
    #[default]
    None,
    /// Asked at connect, not yet awaited.
    Pending(smol::Task<Vec<ListResult>>),
    /// Awaited at the first RCPT.
    Done(ListVerdict),
}

/// What the Edge agents watch in one session.
#[derive(Default)]
struct Watch {
    /// Originating or in an allowed network: nothing is checked or scored.
    exempt: bool,
    /// The DNS lists' answers.
    lists: Lists,
    /// RSETs since the last MAIL.
    rsets: u32,
    /// A MAIL command came.
    mail_seen: bool,
    /// Pipelining without EHLO was scored (once per session).
    pipelined: bool,
    /// Our address on this connection (a HELO naming it is forged).
    local: Option<IpAddr>,
}

/// A session in progress.
struct Session<'a> {
    /// The daemon's shared state.
    sh: &'a Shared,
    /// The config and TLS this session began with.
    live: &'a Live,
    /// The policy this session began with.
    policy: &'a Policy,
    /// The recipient directory this session began with (`None` when none
    /// is installed): valid recipients, and inbound rewriting.
    directory: Option<&'a Directory>,
    /// The client's address.
    peer: SocketAddr,
    /// Who the client is, by address (and certificate after STARTTLS).
    att: Attribution,
    /// The engine's receiver.
    rx: Receiver<'a>,
    /// The socket.
    conn: Conn,
    /// Input read and not yet consumed: `buf[start..end]`.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// The transaction.
    txn: Txn,
    /// This session's read deadline.
    deadline: Arc<Deadline>,
    /// Unknown recipients so far (the harvest limit counts them).
    unknown: u32,
    /// The Edge agents' view of the session.
    watch: Watch,
    /// The milters of this session (content_filter), made at the first
    /// MAIL when any applies.
    milters: Option<crate::shell::milter::Chain<'a>>,
    /// When the record being read began (the per-record deadline).
    record: RecordClock,
    /// The SMTP AUTH login, once AUTH succeeded.
    login: Option<String>,
}

impl<'a> Session<'a> {
    /// Greeting: a receiver with the smaller of the appliance's and the
    /// policy's limits, STARTTLS offered when the listener and `[tls]` allow.
    fn new(
        sh: &'a Shared,
        live: &'a Live,
        policy: &'a Policy,
        conn: Conn,
        peer: SocketAddr,
        mode: Listening,
        att: Attribution,
    ) -> Self {
        let limits = &live.cfg.limits;
        let table = &policy.table;
        let mut rx = Receiver::new(smtp::ReceiverConfig {
            hostname: &live.cfg.hostname,
            max_message_size: limits.max_message_size.min(table.limits.max_message_size),
            max_recipients: limits.max_recipients.min(table.limits.max_recipients),
            starttls: mode.starttls && live.tls.is_some(),
            tls: matches!(conn, Conn::Tls(_)),
            bare_line_endings: limits.bare_line_endings,
            auth: mode.auth && live.passwd.is_some(),
            auth_plaintext: live.cfg.auth.allow_plaintext,
        });
        rx.greet();
        rx.trust_pipelining(att.originating);
        let txn = Txn {
            want_tap: att.originating && !live.signer.is_empty(),
            want_verify: sender_auth::wanted(table, att.originating),
            ..Txn::default()
        };
        Session {
            sh,
            live,
            policy,
            directory: None,
            peer,
            att,
            rx,
            conn,
            buf: vec![0u8; READ_BUFFER],
            start: 0,
            end: 0,
            txn,
            deadline: sh.deadlines.register(),
            unknown: 0,
            watch: Watch::default(),
            milters: None,
            record: RecordClock::default(),
            login: None,
        }
    }

    /// DKIM-Signature fields for an originating message, over its header
    /// block as it will leave (`edits` applied) and the body hash `tap`
    /// took; none when no key signs for its From domain.
    fn dkim_signatures(
        &self,
        id: &str,
        tap: BodyTap,
        edits: &[render::HeaderEdit],
    ) -> Vec<render::HeaderEdit> {
        let head = self.txn.head();
        let end = self
            .txn
            .body_offset
            .map_or(head.len(), |b| (b as usize).min(head.len()));
        let refs: Vec<&render::HeaderEdit> = edits.iter().collect();
        let leaving = crate::shell::relay::splice::splice(&head[..end], &refs);
        let Some(domain) = crate::shell::sender_auth::from_domain(&leaving) else {
            return Vec::new();
        };
        let fields = self
            .live
            .signer
            .sign(&domain, &leaving, &tap.finish(), now_secs());
        if !fields.is_empty() {
            log::info(format_args!(
                "{id}: DKIM-signed for {domain} ({} signatures)",
                fields.len()
            ));
        }
        fields
            .into_iter()
            .map(|field| render::HeaderEdit::Prepend { field })
            .collect()
    }

    /// The appliance's session limits.
    fn limits(&self) -> &'a Limits {
        &self.live.cfg.limits
    }

    /// The installed policy's table.
    fn table(&self) -> &'a Table {
        &self.policy.table
    }

    /// Feeds, replies and reads until the session is over.
    async fn run(&mut self) {
        loop {
            if self.feed().await == Flow::Stop {
                return;
            }
            let Ok(flushed) = self.flush().await else {
                return;
            };
            if flushed && self.start < self.end {
                // The reply buffer was full: feed the rest before reading.
                continue;
            }
            if self.read_more().await == Flow::Stop {
                return;
            }
        }
    }

    /// Feeds the input to the receiver and acts on each event, until the
    /// engine wants more input.
    async fn feed(&mut self) -> Flow {
        loop {
            let step = self.rx.feed(&self.buf[self.start..self.end]);
            self.start += step.consumed;
            let Some(ev) = step.event else {
                if step.consumed > 0 && self.start < self.end {
                    continue;
                }
                return Flow::Go;
            };
            let pipelined = !self.txn.esmtp && self.start < self.end && is_command(&ev);
            let seen = observe(&mut self.watch, &self.live.cfg.hostname, &ev, pipelined);
            let spool = &self.sh.spool;
            let action = self.txn.note(ev, || spool.new_id(), self.peer);
            if let Some(b) = seen {
                self.score(b);
            }
            if self.act(action).await == Flow::Stop {
                return Flow::Stop;
            }
        }
    }

    /// One handler per action. Each handler's future is boxed: an idle
    /// session then holds only the read's state, not the largest handler's
    /// (end of data with milters, signing and sender authentication), which
    /// keeps the per-session memory small (README "Resource exhaustion").
    async fn act(&mut self, action: Action) -> Flow {
        match action {
            Action::Nothing => Flow::Go,
            Action::Disconnect => {
                // After QUIT's 221, a reply that closes (421, too many
                // errors), or a timeout or shutdown (`close_with`).
                let _ = self.flush().await;
                Flow::Stop
            }
            Action::Mail(size) => {
                Box::pin(self.mail(size)).await;
                Flow::Go
            }
            Action::Rcpt(r) => {
                Box::pin(self.rcpt(r)).await;
                Flow::Go
            }
            Action::Chunk => {
                Box::pin(self.chunk()).await;
                Flow::Go
            }
            Action::Message(size) => {
                Box::pin(self.end_of_message(size)).await;
                Flow::Go
            }
            Action::StartTls => Box::pin(self.starttls()).await,
            Action::Auth(c) => {
                Box::pin(self.authenticate(c)).await;
                Flow::Go
            }
        }
    }

    /// MAIL (OnMailCommand): the connection filter's message rate, the
    /// sender filter, then refused `452 4.3.1` when the spool has less room
    /// than the declared size plus the reserve.
    async fn mail(&mut self, size: Option<u64>) {
        // A client may have become originating by its certificate since
        // connect: it is exempt from then on.
        let exempt = self.watch.exempt || self.att.originating;
        if !exempt && !self.sh.edge.admit_message(self.table(), self.peer.ip()) {
            counters::refuse(
                Agent::ConnectionFilter,
                false,
                format_args!(
                    "{} from=<{}>: over messages_per_minute",
                    self.peer,
                    String::from_utf8_lossy(&self.txn.from)
                ),
            );
            self.rx.reject(Reason::MessageRate.reply());
            return;
        }
        if !self.sender_login() || !self.sender_filter() {
            return;
        }
        let need = size
            .unwrap_or(0)
            .saturating_add(self.limits().spool_reserve);
        match self.sh.spool.room_for(need) {
            Err(free) => {
                log::warn(format_args!(
                    "spool has {free} octets free, below the reserve: refusing mail"
                ));
                self.rx.reject(refusal(&Refusal::SpoolFull));
            }
            Ok(()) => match self.milter_mail().await {
                Some(reply) => self.rx.reject(reply.as_reply()),
                None => self.rx.accept(),
            },
        }
    }

    /// OnMailCommand's sender filter: `false` when it refused the sender
    /// (`550 5.7.1`, blocked or blank); a stamp waits for the end of the
    /// headers, where the pipeline adds it.
    fn sender_filter(&mut self) -> bool {
        let check = sender_check(self.table(), &self.att, &self.txn.from);
        match check {
            SenderCheck::Originating | SenderCheck::Disabled => true,
            SenderCheck::Pass => {
                counters::count(Agent::SenderFilter, Tally::Passed);
                true
            }
            SenderCheck::Stamp => true,
            SenderCheck::Blank | SenderCheck::Blocked => {
                let reply = check
                    .reason()
                    .map_or_else(|| refusal(&Refusal::SpoolWrite), |r| r.reply());
                counters::refuse(
                    Agent::SenderFilter,
                    true,
                    format_args!(
                        "{} from=<{}>: {}",
                        self.peer,
                        String::from_utf8_lossy(&self.txn.from),
                        render::sender_check_words(&check)
                    ),
                );
                self.rx.reject(reply);
                false
            }
        }
    }

    /// RCPT (OnRcptCommand): the connection filter's DNS block lists
    /// (refused `550 5.7.1` at RCPT, as Exchange does, so the log has the
    /// envelope), then the recipient filter: accepted domains (or relaying
    /// for an originating client), blocked, valid patterns, the directory
    /// and call-ahead. An unknown recipient turns the tarpit on for the
    /// rest of the session and counts towards `max_unknown`.
    async fn rcpt(&mut self, r: Vec<u8>) {
        if let Some(reply) = self.listed().await {
            counters::refuse(
                Agent::ConnectionFilter,
                true,
                format_args!(
                    "{} from=<{}> to=<{}>: {}",
                    self.peer,
                    String::from_utf8_lossy(&self.txn.from),
                    String::from_utf8_lossy(&r),
                    reply
                ),
            );
            self.refuse_rcpt(reply.as_reply());
            return;
        }
        let (check, asked) = self.recipient_filter(&r).await;
        if matches!(check, RcptCheck::Unknown(_)) {
            self.unknown = self.unknown.saturating_add(1);
        }
        self.tarpit().await;
        let Some(reason) = check.reason() else {
            if !matches!(
                check,
                RcptCheck::Accept(crate::engine::policy::Valid::Originating)
            ) {
                counters::count(Agent::RecipientFilter, Tally::Passed);
            }
            if let Some(reply) = self.milter_rcpt(&r).await {
                self.rx.reject(reply.as_reply());
                return;
            }
            self.txn.rcpts.push(r);
            self.rx.accept();
            return;
        };
        let harvest =
            matches!(check, RcptCheck::Unknown(_)) && harvest_exceeded(self.table(), self.unknown);
        let reply = if harvest {
            Reason::TooManyUnknown.reply()
        } else {
            reason.reply()
        };
        counters::refuse(
            Agent::RecipientFilter,
            reply.code >= 500,
            format_args!(
                "{} from=<{}> to=<{}>: {}{asked}{}",
                self.peer,
                String::from_utf8_lossy(&self.txn.from),
                String::from_utf8_lossy(&r),
                render::rcpt_check_words(&check),
                if harvest {
                    "; too many unknown recipients, closing"
                } else {
                    ""
                }
            ),
        );
        self.refuse_rcpt(reply);
    }

    /// The recipient filter's decision for `r`, asking the session's
    /// directory and, when the decision needs it, call-ahead; with the
    /// call-ahead detail for the log.
    async fn recipient_filter(&self, r: &[u8]) -> (RcptCheck, String) {
        let t = self.table();
        // The directory the session began with (None: none installed).
        let directory = self.directory.map(|d| d.lookup(r).is_some());
        let check = recipient_check(t, &self.att, r, directory, None);
        let RcptCheck::Ask(c) = check else {
            return (check, String::new());
        };
        let v = self.sh.verifier.check(t, c, r).await;
        let check = recipient_check(t, &self.att, r, directory, Some(v.probe));
        let asked = format!(
            " (call-ahead{}: {})",
            if v.cached { ", cached" } else { "" },
            v.detail
        );
        (check, asked)
    }

    /// The tarpit: once the session has had an unknown recipient, each
    /// RCPT reply (that one's included) waits `tarpit` first. The wait
    /// happens while no read is pending, so it never counts against the
    /// client's command timeout.
    async fn tarpit(&self) {
        let ms = self.table().recipient_filter.tarpit_ms;
        if self.unknown > 0 && ms > 0 {
            async_io::Timer::after(std::time::Duration::from_millis(u64::from(ms))).await;
        }
    }

    /// Refuses a RCPT; protocol analysis scores a 5xx refusal (directory
    /// harvest). Every RCPT refusal goes through here.
    fn refuse_rcpt(&mut self, reply: Reply<'_>) {
        if reply.code >= 500 {
            self.score(Behaviour::RefusedRecipient);
        }
        self.rx.reject(reply);
    }

    /// The DNS block lists' refusal for this client, if any: the answers
    /// asked at connect are awaited at the first RCPT (logged and counted
    /// then), and kept for the session's later RCPTs. A client that became
    /// originating by its TLS certificate is not checked.
    async fn listed(&mut self) -> Option<crate::shell::reply::OwnedReply> {
        if let Lists::Pending(_) = self.watch.lists {
            let Lists::Pending(task) = std::mem::take(&mut self.watch.lists) else {
                return None;
            };
            let results = task.await;
            let ip = self.peer.ip();
            let v = edge::verdict(self.table(), ip, &results);
            edge::tally(ip, &results, &v);
            self.watch.lists = Lists::Done(v);
        }
        match &self.watch.lists {
            Lists::Done(ListVerdict::Blocked { reply, .. }) if !self.att.originating => {
                Some(reply.clone())
            }
            _ => None,
        }
    }

    /// Protocol analysis scores `b` for this client (not when exempt).
    fn score(&self, b: Behaviour) {
        if !self.watch.exempt && !self.att.originating {
            self.sh.edge.score(self.table(), self.peer.ip(), b);
        }
    }

    /// Message octets: once a chunk's worth is here, it goes to the spool
    /// (a large message is never held whole in memory). A failed append is
    /// remembered and refuses the message at its end.
    async fn chunk(&mut self) {
        if self.txn.data.len() < spool::CHUNK || self.filtering() {
            return;
        }
        let txn = &mut self.txn;
        if txn.head.is_empty() {
            // The first octets hold the header block.
            txn.head = txn.data.clone();
        }
        if self.policy.needs_attachments {
            txn.mime
                .get_or_insert_with(MimeScan::default)
                .feed(&txn.data);
        }
        if txn.failed.is_none() {
            if let Err(e) = self.sh.spool.append_chunk(txn.id, &txn.data).await {
                txn.failed = Some(e);
            }
        }
        txn.data.clear();
    }

    /// End of message: decide, stamp, commit, and only once the commit is
    /// durable, `250`. A refusal by the policy or a failed commit answers
    /// with its reply instead, and nothing is queued.
    async fn end_of_message(&mut self, size: u64) {
        let id = spool::format_id(self.txn.id);
        if self.sender_authentication(&id).await.is_none() {
            return;
        }
        let Some(size) = self.content_filter(&id, size).await else {
            return;
        };
        let message_id = self.txn.message_id();
        let outcome = self.decide(size);
        if let Some(reply) = render::verdict_reply(self.table(), &outcome.verdict) {
            self.txn.forget_message();
            if let Verdict::Sender(c) = outcome.verdict {
                counters::refuse(
                    Agent::SenderFilter,
                    true,
                    format_args!(
                        "{} from=<{}> id={id}: {} (From: header)",
                        self.peer,
                        String::from_utf8_lossy(&self.txn.from),
                        render::sender_check_words(&c)
                    ),
                );
            }
            self.log_refused(&id, message_id.as_deref(), &outcome);
            self.rx.reject(reply.as_reply());
            return;
        }
        if outcome
            .edits
            .iter()
            .any(|(a, e)| *a == Agent::SenderFilter && matches!(e, render::HeaderEdit::Add { .. }))
        {
            counters::count(Agent::SenderFilter, Tally::Stamped);
        }
        super::hybrid::count(&outcome, |a| self.table().enabled(a));
        let env = self.stamp(&id, &outcome, size, message_id);
        let committed = self.commit(&env).await;
        self.txn.forget_message();
        match committed {
            Ok(parts) => {
                self.rx.accept_message(&id);
                metrics::MESSAGES_RECEIVED.add(stats::inbound_label(self.table(), &self.att), 1);
                log_accepted(&id, &env, &outcome, self.peer, self.login.as_deref());
                // Queued after its RECEIVE/ROUTE/RULE lines, so the log
                // never shows a delivery before the acceptance.
                self.sh.queue.add(spool::Stored {
                    warned: false,
                    id: self.txn.id,
                    states: spool::initial_states(&env),
                    env,
                    parts,
                });
            }
            Err(e) => {
                log::event(
                    Kind::Reject,
                    Some(&id),
                    env.message_id.as_deref(),
                    format_args!("{}: {e}", self.peer),
                );
                self.rx.reject(refusal(&Refusal::SpoolWrite));
            }
        }
    }

    /// Runs the policy's pipeline on the message (its octets, or its head
    /// and the attachment names when it was appended in chunks).
    fn decide(&mut self, size: u64) -> Outcome {
        let rcpts: Vec<&[u8]> = self.txn.rcpts.iter().map(Vec::as_slice).collect();
        let env = pol::Arrival {
            attribution: self.att,
            client: self.peer.ip(),
            sender: &self.txn.from,
            rcpts: &rcpts,
            directory: self.directory,
            rcpt_checks: None,
            auth: self.txn.auth.as_ref().map(|a| a.0),
            login: self.login.as_deref(),
        };
        if self.txn.head.is_empty() {
            return pol::decide(self.policy, &env, &self.txn.data);
        }
        let names = match self.txn.mime.take() {
            Some(mut scan) => {
                scan.feed(&self.txn.data);
                scan.names()
            }
            None => Vec::new(),
        };
        pol::decide_with(self.policy, &env, &self.txn.head, names, size)
    }

    /// The spool envelope: routes as decided, our `Received:` field first
    /// among the header edits (RFC 5321 §4.4), then the policy's.
    fn stamp(
        &mut self,
        id: &str,
        outcome: &Outcome,
        size: u64,
        message_id: Option<String>,
    ) -> Envelope {
        let routes = outcome
            .recipients
            .iter()
            .map(|r| Route {
                original: r.original.as_bytes().to_vec(),
                rcpt: r.final_addr.as_bytes().to_vec(),
                connector: r.connector.clone(),
                next_hop: r.next_hop.clone(),
                refused: r.rejected.clone(),
            })
            .collect();
        let tls = self.rx.is_tls();
        let trace = received(
            &self.live.cfg.hostname,
            self.received_facts(),
            self.peer,
            tls,
            id,
        );
        let mut edits = vec![render::HeaderEdit::Prepend { field: trace }];
        edits.extend(self.auth_edits());
        edits.extend(outcome.edits.iter().map(|(_, e)| e.clone()));
        if let Some(tap) = self.txn.tap.take() {
            edits.extend(self.dkim_signatures(id, tap, &edits));
        }
        Envelope {
            from: std::mem::take(&mut self.txn.from),
            rcpts: std::mem::take(&mut self.txn.rcpts),
            helo: self.txn.helo.clone(),
            peer: self.peer.to_string(),
            received: now_secs(),
            size,
            smtputf8: self.txn.smtputf8,
            body8bit: self.txn.body8bit,
            tls,
            body_offset: self.txn.body_offset,
            policy: self.table().version,
            message_id,
            routes,
            edits,
        }
    }

    /// What the `Received:` field says of the transaction.
    fn received_facts(&self) -> super::received::Facts<'_> {
        super::received::Facts {
            helo: &self.txn.helo,
            esmtp: self.txn.esmtp,
            smtputf8: self.txn.smtputf8,
            rcpts: &self.txn.rcpts,
            login: self.login.as_deref(),
        }
    }

    /// Appends the message's last octets with its envelope and waits until
    /// the spool has synced it (group commit).
    async fn commit(&mut self, env: &Envelope) -> Result<Vec<spool::Part>, SpoolError> {
        match self.txn.failed.take() {
            Some(e) => Err(e),
            None => {
                self.sh
                    .spool
                    .commit(self.txn.id, env, std::mem::take(&mut self.txn.data))
                    .await
            }
        }
    }

    /// The rule execution log, then the REJECT line of a message the policy
    /// refused.
    fn log_refused(&self, id: &str, message_id: Option<&str>, outcome: &Outcome) {
        for l in &outcome.log {
            log::event(Kind::Rule, Some(id), message_id, format_args!("{l}"));
        }
        log::event(
            Kind::Reject,
            Some(id),
            message_id,
            format_args!(
                "{} from=<{}>: {}",
                self.peer,
                String::from_utf8_lossy(&self.txn.from),
                outcome.reply.clone().unwrap_or_default()
            ),
        );
    }

    /// STARTTLS: send the 220, forget everything the client sent after
    /// STARTTLS in clear text (RFC 3207 §4.2, the command injection flaw),
    /// then handshake.
    async fn starttls(&mut self) -> Flow {
        if self.flush().await.is_err() {
            return Flow::Stop;
        }
        self.start = self.end;
        let Some(acceptor) = self.live.tls.clone() else {
            return Flow::Stop;
        };
        let timeout = self.limits().command_timeout;
        let table = self.table();
        if !starttls::upgrade(
            &mut self.conn,
            acceptor,
            timeout,
            table,
            self.peer,
            &mut self.att,
        )
        .await
        {
            return Flow::Stop;
        }
        self.rx.tls_established();
        // A client certificate may have made the client originating.
        self.originating_changed();
        Flow::Go
    }

    /// What follows from the client's originating flag once a certificate or
    /// AUTH has set it: pipelining after DATA is trusted, outbound mail is
    /// tapped for DKIM signing, and sender authentication is skipped.
    pub(super) fn originating_changed(&mut self) {
        self.rx.trust_pipelining(self.att.originating);
        self.txn.want_tap = self.att.originating && !self.live.signer.is_empty();
        self.txn.want_verify = sender_auth::wanted(self.table(), self.att.originating);
    }

    /// Sends the replies the receiver has queued. `Ok(true)` if there were
    /// any.
    async fn flush(&mut self) -> std::io::Result<bool> {
        if self.rx.output().is_empty() {
            return Ok(false);
        }
        metrics::count_refusals(self.rx.output());
        self.conn.write_all(self.rx.output()).await?;
        let n = self.rx.output().len();
        self.rx.output_sent(n);
        Ok(true)
    }

    /// Reads more input within the command or data timeout. A timeout, or
    /// a stopping daemon between commands, queues the 421 that ends the
    /// session; the end of input or a read error stops it.
    async fn read_more(&mut self) -> Flow {
        if self.rx.is_closed() {
            // Not reached: a closed receiver hands out Disconnect (which
            // ends the session) before it returns no event.
            return Flow::Stop;
        }
        // Keep unread octets at the front.
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            // The engine always consumes input unless a decision is
            // pending, which cannot be the case here.
            log::warn(format_args!(
                "session {}: input stalled; closing",
                self.peer
            ));
            return Flow::Stop;
        }
        match self.read_within_deadline().await {
            Some(Ok(0)) | Some(Err(_)) => Flow::Stop,
            Some(Ok(n)) => {
                self.record.read(&self.buf[self.end..self.end + n]);
                self.end += n;
                Flow::Go
            }
            None => {
                let reason = if self.sh.stopping.is_closed() {
                    Reason::ShuttingDown
                } else {
                    Reason::Timeout
                };
                // The engine now hands out Disconnect, which sends the
                // 421 and ends the session.
                self.rx.close_with(reason.reply());
                Flow::Go
            }
        }
    }

    /// One read, or `None` when the deadline passed first (or, between
    /// commands, the daemon began to stop). The timeout covers a whole
    /// record (see `record`), not each read.
    async fn read_within_deadline(&mut self) -> Option<std::io::Result<usize>> {
        let in_data = self.rx.in_data();
        let limits = self.limits();
        let wait = if in_data {
            limits.data_timeout
        } else {
            limits.command_timeout
        };
        let wait = self.record.wait(wait);
        let deadline = self.deadline.clone();
        let stopping = &self.sh.stopping;
        deadline.arm(wait);
        let read = future::or(
            async { Some(self.conn.read(&mut self.buf[self.end..]).await) },
            async {
                if in_data {
                    deadline.expired().await;
                } else {
                    // Between commands a stopping daemon says goodbye.
                    future::or(deadline.expired(), async {
                        let _ = stopping.recv().await;
                    })
                    .await;
                }
                None
            },
        )
        .await;
        deadline.disarm();
        read
    }

    /// The session ended. Without the engine's Disconnect only if the
    /// client went away or the transport failed (end of input, a read or
    /// write error, a failed TLS handshake, stalled input): the engine is
    /// told, so that its Disconnect, the last event, comes exactly once per
    /// session. It logs nothing.
    async fn end(mut self) {
        if !self.watch.mail_seen {
            self.score(Behaviour::NoMail);
        }
        if let Some(chain) = self.milters.take() {
            chain.end().await;
        }
        self.rx.connection_lost();
        while let Some(ev) = self.rx.feed(&[]).event {
            debug_assert!(matches!(ev, Event::Disconnect), "{ev:?}");
        }
        self.conn.close().await;
    }
}

/// What protocol analysis makes of an event (before the transaction
/// notes it); `pipelined`: more input followed a command line from a
/// client that did not EHLO.
fn observe(w: &mut Watch, hostname: &str, ev: &Event<'_>, pipelined: bool) -> Option<Behaviour> {
    if w.exempt {
        return None;
    }
    if pipelined && !w.pipelined {
        w.pipelined = true;
        return Some(Behaviour::Pipelining);
    }
    match ev {
        Event::Reject(Reason::ImproperPipelining) => Some(Behaviour::Pipelining),
        Event::Reject(reason) if reason.reply().code >= 500 => Some(Behaviour::ProtocolError),
        // A smuggling attempt: a bare line ending or a NUL in the content.
        Event::MessageRejected(Reason::BareLineEnding | Reason::NulInContent) => {
            Some(Behaviour::BareLineEnding)
        }
        Event::Rset => {
            w.rsets = w.rsets.saturating_add(1);
            (w.rsets > RSET_FLOOD).then_some(Behaviour::RsetFlood)
        }
        // A flood is RSETs with no mail between them: a relay that reuses
        // its connection sends one RSET per message, which is no flood.
        Event::Mail(_) => {
            w.mail_seen = true;
            w.rsets = 0;
            None
        }
        Event::Helo { name, .. } => {
            forged_helo(name, hostname, w.local).then_some(Behaviour::ForgedHelo)
        }
        _ => None,
    }
}

/// Whether an event ends a command line (more input after it, from a
/// client that was not offered PIPELINING, is a violation).
fn is_command(ev: &Event<'_>) -> bool {
    matches!(
        ev,
        Event::Helo { .. }
            | Event::Mail(_)
            | Event::Rcpt(_)
            | Event::DataStart
            | Event::Rset
            | Event::Noop
            | Event::Help
            | Event::Vrfy
            | Event::Reject(_)
    )
}

/// A HELO/EHLO name that is our own host name, or our address (bare or
/// as a literal): a client claiming to be us.
fn forged_helo(name: &[u8], hostname: &str, local: Option<IpAddr>) -> bool {
    let name = String::from_utf8_lossy(name);
    let name = name.trim();
    if name.eq_ignore_ascii_case(hostname) {
        return true;
    }
    let inner = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .unwrap_or(name);
    let inner = inner
        .get(..5)
        .filter(|p| p.eq_ignore_ascii_case("ipv6:"))
        .map_or(inner, |_| &inner[5..]);
    matches!((inner.parse::<IpAddr>(), local), (Ok(a), Some(l)) if a == l)
}

/// The RECEIVE line, a ROUTE line per recipient and the rule execution log
/// of an accepted message, handed to the log writer at once; the message
/// is counted in the mail-flow history (a ROUTE line says `redirected=yes`
/// when its recipient is rewritten to another relay's location).
fn log_accepted(
    id: &str,
    env: &Envelope,
    outcome: &Outcome,
    peer: SocketAddr,
    login: Option<&str>,
) {
    let flows = history::pairs(outcome.recipients.iter().map(|r| {
        let accepted = r.rejected.is_none();
        (r.original.as_str(), r.final_addr.as_str(), accepted)
    }));
    history::record(&flows, env.size);
    let mid = env.message_id.as_deref();
    let mut lines = log::Batch::new();
    lines.event(
        Kind::Receive,
        Some(id),
        mid,
        format_args!(
            "from=<{}> rcpts={} size={} peer={peer} tls={}{} result={}",
            String::from_utf8_lossy(&env.from),
            env.rcpts.len(),
            env.size,
            env.tls,
            login.map(|l| format!(" login={l}")).unwrap_or_default(),
            outcome.result
        ),
    );
    for r in &outcome.recipients {
        lines.event(
            Kind::Route,
            Some(id),
            mid,
            format_args!(
                "to=<{}> orig=<{}> connector={} next_hop={} {}{}",
                r.final_addr,
                r.original,
                r.connector.as_deref().unwrap_or("-"),
                match &r.next_hop {
                    render::NextHop::Mx(d) => format!("mx:{d}"),
                    render::NextHop::SmartHosts(h) => h.join(","),
                    render::NextHop::None => "-".into(),
                },
                if history::redirected_addr(&r.original, &r.final_addr) {
                    "redirected=yes "
                } else {
                    ""
                },
                r.rejected
                    .as_deref()
                    .map(|x| format!("refused=\"{x}\""))
                    .unwrap_or_else(|| r.reason.clone())
            ),
        );
    }
    // Also when no rule acted: the log then says which rules were
    // evaluated and that none held.
    for l in &outcome.log {
        lines.event(Kind::Rule, Some(id), mid, format_args!("{l}"));
    }
}

/// Why the receive side refuses something of its own accord (the engine's
/// refusals come with their [`Reason`] already).
enum Refusal {
    /// The spool has less room than the reserve.
    SpoolFull,
    /// Appending or syncing the message failed (the error is logged where
    /// it happened).
    SpoolWrite,
}

/// The one mapping from the receive side's own failures to a reply.
fn refusal(r: &Refusal) -> Reply<'static> {
    match r {
        Refusal::SpoolFull | Refusal::SpoolWrite => Reason::InsufficientStorage.reply(),
    }
}

#[cfg(test)]
mod tests {
    use super::{forged_helo, observe, Watch};
    use crate::engine::reputation::Behaviour;
    use crate::engine::smtp::{Body, Event, Mail};

    #[test]
    fn an_rset_per_message_is_no_flood_but_rsets_without_mail_are() {
        let mail = Event::Mail(Mail {
            from: b"a@example.org",
            size: None,
            body: Body::SevenBit,
            smtputf8: false,
        });
        let mut w = Watch::default();
        let flood = |w: &mut Watch, ev: &Event<'_>| {
            observe(w, "mx.example", ev, false) == Some(Behaviour::RsetFlood)
        };
        // A relay reusing its connection: MAIL ... RSET, thirty times.
        for _ in 0..30 {
            assert!(!flood(&mut w, &mail));
            assert!(!flood(&mut w, &Event::Rset));
        }
        let floods = (0..30).filter(|_| flood(&mut w, &Event::Rset)).count();
        assert!(floods > 0, "thirty RSETs in a row are a flood");
    }

    #[test]
    fn a_helo_naming_us_is_forged() {
        let local = Some("192.0.2.25".parse().expect("ip"));
        assert!(forged_helo(b"EDGE1.test", "edge1.test", local));
        assert!(forged_helo(b"[192.0.2.25]", "edge1.test", local));
        assert!(forged_helo(b"192.0.2.25", "edge1.test", local));
        assert!(!forged_helo(b"client.test", "edge1.test", local));
        assert!(!forged_helo(b"[192.0.2.26]", "edge1.test", local));
        let v6 = Some("2001:db8::25".parse().expect("ip"));
        assert!(forged_helo(b"[IPv6:2001:db8::25]", "edge1.test", v6));
        assert!(!forged_helo(b"[IPv6:2001:db8::25]", "edge1.test", None));
    }
}
