//! The send side of SMTP (RFC 5321), sans I/O: the outbound client that
//! relays a spooled message to its next hop.
//!
//! Driving it mirrors [`super::smtp::Receiver`]: [`Client::feed`] the
//! server's octets; it returns how many it consumed and at most one
//! [`Event`]; send [`Client::output`] (commands) and confirm with
//! [`Client::output_sent`]. On [`Event::StartTls`] the shell performs the
//! handshake (checking the certificate as the connector's policy says) and
//! calls [`Client::tls_established`]. On [`Event::SendMessage`] it streams
//! the message (dot-stuffed with [`stuff`] for DATA, raw for BDAT) and then
//! calls [`Client::message_sent`]. Recipients' replies come one by one
//! ([`Event::Rcpt`]); the transaction ends with [`Event::Done`], or the
//! session with [`Event::Failed`].
//!
//! Extensions are used only when offered: PIPELINING (MAIL, every RCPT and
//! DATA in one flight), SIZE, 8BITMIME and SMTPUTF8 (a message that needs
//! one the server lacks is not sent: [`Failure::Needs8BitMime`] /
//! [`Failure::NeedsSmtpUtf8`], never a corrupted message), CHUNKING (BDAT).

use super::decimal::{first_word, fmt_u64, parse_u64};
use super::limits::MAX_COMMAND_LINE;
use heapless::Vec;

/// Commands waiting to be written: MAIL with its parameters and a flight
/// of pipelined RCPTs. More recipients than fit go in further flights as
/// the replies come (any number; see `pipeline_rcpts`).
pub const OUTPUT_BUFFER: usize = 4096;
/// `RCPT TO:<` + `>` + CRLF around each recipient's address.
const RCPT_OVERHEAD: usize = 12;

/// TLS policy of the connection (the send connector's `tls`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum TlsMode {
    /// STARTTLS when offered, clear text otherwise.
    Opportunistic,
    /// Never send in clear text.
    Required,
    /// Required, and the shell checks the certificate's name.
    Verify,
}

/// Settings of one outbound session.
#[derive(Debug, Clone, Copy)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ClientConfig<'a> {
    /// Our name for EHLO/HELO.
    pub helo: &'a str,
    /// TLS policy.
    pub tls: TlsMode,
    /// Whether TLS can be started at all (a client configuration exists).
    pub tls_available: bool,
}

/// The transaction to run.
#[derive(Debug, Clone, Copy)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Transaction<'a> {
    /// Reverse path (empty: the null sender).
    pub from: &'a [u8],
    /// Forward paths.
    pub rcpts: &'a [&'a [u8]],
    /// Message size in octets (for SIZE=).
    pub size: u64,
    /// The message has 8-bit octets (needs 8BITMIME).
    pub body8bit: bool,
    /// Addresses or headers need SMTPUTF8.
    pub smtputf8: bool,
}

/// A server reply: code, enhanced status if given, text of its last line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ServerReply<'a> {
    /// The three-digit code.
    pub code: u16,
    /// The enhanced status code (RFC 3463), if the reply carries one.
    pub status: Option<(u8, u16, u16)>,
    /// The text after the code (and enhanced code).
    pub text: &'a [u8],
}

impl ServerReply<'_> {
    /// 2xx or 3xx.
    pub fn is_positive(&self) -> bool {
        self.code < 400
    }
    /// 4xx: try again later.
    pub fn is_temporary(&self) -> bool {
        (400..500).contains(&self.code)
    }
}

/// Why the session cannot deliver (everything pending is deferred, or
/// bounced when `permanent`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Failure {
    /// The greeting, EHLO/HELO, MAIL or DATA was refused (see the reply).
    Refused,
    /// TLS is required and the server does not offer STARTTLS.
    TlsNotOffered,
    /// The message is 8-bit and the server lacks 8BITMIME.
    Needs8BitMime,
    /// The message needs SMTPUTF8 and the server lacks it.
    NeedsSmtpUtf8,
    /// The server's SIZE limit is below the message size.
    TooBig,
    /// A reply could not be parsed, or a line was too long.
    Protocol,
    /// No recipient was accepted.
    NoRecipients,
}

/// What happened; see the module docs for what the shell does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Event<'a> {
    /// Perform the TLS handshake, then call [`Client::tls_established`].
    StartTls,
    /// Recipient `index` got `reply` (positive: accepted).
    Rcpt {
        /// Index into the envelope's recipients.
        index: u16,
        /// The server's reply to its RCPT.
        reply: ServerReply<'a>,
    },
    /// Stream the message now (`bdat`: raw after the BDAT command already
    /// sent; else dot-stuffed, then [`Client::message_sent`] writes the end).
    SendMessage {
        /// BDAT LAST (raw octets) rather than DATA (dot-stuffed).
        bdat: bool,
    },
    /// The reply to the end of the message: positive means delivered to
    /// every recipient accepted before.
    Done(ServerReply<'a>),
    /// The session ends without delivery; `reply` is the server's, if any.
    Failed {
        /// Why.
        why: Failure,
        /// The server's reply that caused it, if any.
        reply: Option<ServerReply<'a>>,
    },
}

/// What a feed did.
#[must_use = "consumed octets must be dropped and the event handled"]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step<'a> {
    /// Octets consumed.
    pub consumed: usize,
    /// The event, if any.
    pub event: Option<Event<'a>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Greeting,
    Ehlo,
    Helo,
    StartTls,
    AwaitTls,
    /// Waiting for the MAIL reply, then `rcpt_next` RCPT replies, then DATA's.
    Mail,
    Rcpt,
    Data,
    Sending,
    EndOfData,
    Quit,
    /// The transaction is over and the session stays open for another
    /// ([`Client::keep_open`]): nothing is sent until [`Client::resume`].
    Idle,
    /// A resumed session sent RSET (a transaction was left open).
    Rset,
    /// MAIL or DATA was refused on a session kept open: the replies to
    /// what was pipelined after it (`drain` of them) are read and dropped,
    /// then the session is idle (RSET before the next MAIL).
    Drain,
    Closed,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
struct Extensions {
    pipelining: bool,
    size: Option<u64>,
    eightbit: bool,
    smtputf8: bool,
    chunking: bool,
    starttls: bool,
}

/// The outbound session.
#[derive(Debug)]
pub struct Client<'a> {
    cfg: ClientConfig<'a>,
    env: Transaction<'a>,
    phase: Phase,
    ext: Extensions,
    tls: bool,
    line: Vec<u8, MAX_COMMAND_LINE>,
    out: Vec<u8, OUTPUT_BUFFER>,
    /// The next recipient whose reply is awaited.
    rcpt_next: u16,
    /// RCPT commands written so far (with PIPELINING, ahead of the replies).
    rcpt_sent: u16,
    accepted: u16,
    /// DATA was pipelined after the RCPTs (its reply is awaited).
    data_sent: bool,
    /// Every RCPT was refused while DATA was pipelined.
    no_rcpt: bool,
    bdat: bool,
    /// `line` holds a finished reply line (events borrow it until the next feed).
    line_done: bool,
    /// An event to hand out before reading more.
    queued: Option<Kind>,
    /// Verify mode ([`Client::verify`]): QUIT after the RCPT replies, never
    /// DATA or BDAT.
    verify: bool,
    /// After the transaction, stay open ([`Phase::Idle`]) rather than QUIT.
    keep: bool,
    /// A transaction was left open (MAIL accepted, nothing sent): the next
    /// one on this session starts with RSET.
    left_open: bool,
    /// MAIL got an answer other than 421: the session was alive for it.
    mail_answered: bool,
    /// Replies still to be dropped in [`Phase::Drain`].
    drain: u16,
}

/// What a session kept open ([`Client::idle`]) carries into its next
/// transaction ([`Client::resume`]): the extensions EHLO announced,
/// whether TLS is up, and whether a transaction must be reset first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Idle {
    ext: Extensions,
    tls: bool,
    rset: bool,
}

impl Idle {
    /// Whether the session runs over TLS (STARTTLS succeeded).
    pub fn tls(&self) -> bool {
        self.tls
    }

    /// Whether the next transaction begins with RSET.
    pub fn needs_rset(&self) -> bool {
        self.rset
    }
}

/// The command that ends a session kept open ([`Client::idle`]) that will
/// not be resumed: the shell writes it when the session is closed.
pub const QUIT: &[u8] = b"QUIT\r\n";

fn parse_reply(line: &[u8]) -> Option<(ServerReply<'_>, bool)> {
    let code = line.get(..3)?;
    if !code.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = code.iter().fold(0u16, |a, &d| a * 10 + u16::from(d - b'0'));
    let more = line.get(3) == Some(&b'-');
    let mut text = line.get(4..).unwrap_or(&[]);
    while let [rest @ .., b'\r' | b'\n'] = text {
        text = rest;
    }
    let mut status = None;
    let word_end = text.iter().position(|&b| b == b' ').unwrap_or(text.len());
    let mut parts = text.get(..word_end).unwrap_or(&[]).split(|&b| b == b'.');
    if let (Some(a), Some(b), Some(c), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    {
        let num = |p: &[u8]| -> Option<u16> {
            if p.is_empty() || p.len() > 3 || !p.iter().all(u8::is_ascii_digit) {
                return None;
            }
            Some(p.iter().fold(0u16, |x, &d| x * 10 + u16::from(d - b'0')))
        };
        if let (Some(a), Some(b), Some(c)) = (num(a), num(b), num(c)) {
            if a < 10 && u16::from(code[0] - b'0') == a {
                status = Some((a as u8, b, c));
                text = text.get(word_end + 1..).unwrap_or(&[]);
            }
        }
    }
    Some((
        ServerReply {
            code: n,
            status,
            text,
        },
        more,
    ))
}

impl<'a> Client<'a> {
    /// A client for one transaction of `env` on a new connection.
    pub fn new(cfg: ClientConfig<'a>, env: Transaction<'a>) -> Self {
        Client {
            cfg,
            env,
            phase: Phase::Greeting,
            ext: Extensions::default(),
            tls: false,
            line: Vec::new(),
            out: Vec::new(),
            rcpt_next: 0,
            rcpt_sent: 0,
            accepted: 0,
            data_sent: false,
            no_rcpt: false,
            bdat: false,
            line_done: false,
            queued: None,
            verify: false,
            keep: false,
            left_open: false,
            mail_answered: false,
            drain: 0,
        }
    }

    /// A client for one transaction of `env` on a session kept open
    /// after an earlier one (`idle`, from [`Client::idle`]): no greeting,
    /// EHLO or STARTTLS; RSET first when that one left a transaction open,
    /// then MAIL (already in [`Client::output`]). It stays open after the
    /// transaction ([`Client::keep_open`]): it came from a cache, and the
    /// cache decides whether it goes back or is closed with [`QUIT`].
    pub fn resume(cfg: ClientConfig<'a>, env: Transaction<'a>, idle: Idle) -> Self {
        let mut c = Client::new(cfg, env);
        c.ext = idle.ext;
        c.tls = idle.tls;
        c.keep = true;
        if idle.rset {
            c.command(&[b"RSET"]);
            c.phase = Phase::Rset;
        } else {
            // A message the session cannot take fails at once, as an event.
            c.queued = c.send_transaction();
        }
        c
    }

    /// Keeps the session open after this transaction (whatever its end
    /// of data's reply, or when no recipient was accepted) instead of
    /// sending QUIT, so that another message can use it: see
    /// [`Client::idle`].
    pub fn keep_open(&mut self) {
        self.keep = true;
    }

    /// The session, if it is open and between transactions (after
    /// [`Client::keep_open`]) and every event was handed out (the failure
    /// that follows a last refused RCPT comes at the next feed): what
    /// [`Client::resume`] needs.
    pub fn idle(&self) -> Option<Idle> {
        (self.phase == Phase::Idle && self.queued.is_none()).then_some(Idle {
            ext: self.ext,
            tls: self.tls,
            rset: self.left_open,
        })
    }

    /// Whether the replies to commands pipelined after a refused MAIL are
    /// still to be read ([`Client::feed`] drops them): then the session
    /// becomes idle, and can be kept.
    pub fn draining(&self) -> bool {
        self.phase == Phase::Drain
    }

    /// Whether MAIL got an answer other than 421. A resumed session that
    /// fails before this ([`Client::resume`]) was closed while idle: the
    /// message can go over a new one, as if nothing had been tried.
    pub fn mail_answered(&self) -> bool {
        self.mail_answered
    }

    /// A client that only verifies recipients (call-ahead, as Postfix's
    /// `reject_unverified_recipient` probes): EHLO (STARTTLS per `cfg`),
    /// `MAIL FROM:<env.from>` (the null sender for a probe), a `RCPT TO`
    /// per recipient, then `QUIT` — never DATA. Each recipient's reply
    /// comes as [`Event::Rcpt`]; a session that ends earlier as
    /// [`Event::Failed`].
    pub fn verify(cfg: ClientConfig<'a>, env: Transaction<'a>) -> Self {
        let mut c = Client::new(cfg, env);
        c.verify = true;
        c
    }

    /// Commands waiting to be sent.
    pub fn output(&self) -> &[u8] {
        &self.out
    }

    /// Drops `n` sent octets of output.
    pub fn output_sent(&mut self, n: usize) {
        let n = n.min(self.out.len());
        let rest = self.out.len() - n;
        self.out.copy_within(n.., 0);
        self.out.truncate(rest);
    }

    /// Whether the session is over (after QUIT's reply or a failure).
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// Recipients accepted so far.
    pub fn accepted(&self) -> u16 {
        self.accepted
    }

    /// The TLS handshake after STARTTLS succeeded: EHLO again (RFC 3207).
    pub fn tls_established(&mut self) {
        if self.phase == Phase::AwaitTls {
            self.tls = true;
            self.ext = Extensions::default();
            self.command(&[b"EHLO ", self.cfg.helo.as_bytes()]);
            self.phase = Phase::Ehlo;
        }
    }

    /// The whole message was written after [`Event::SendMessage`]: for
    /// DATA this writes the final `.` line (the caller's stuffed message
    /// must end with CRLF).
    pub fn message_sent(&mut self) {
        if self.phase == Phase::Sending {
            if !self.bdat {
                self.raw(b".\r\n");
            }
            self.phase = Phase::EndOfData;
        }
    }

    fn raw(&mut self, b: &[u8]) {
        let room = self.out.capacity() - self.out.len();
        let _ = self
            .out
            .extend_from_slice(b.get(..b.len().min(room)).unwrap_or(&[]));
    }

    fn command(&mut self, parts: &[&[u8]]) {
        for p in parts {
            self.raw(p);
        }
        self.raw(b"\r\n");
    }

    fn room(&self) -> usize {
        self.out.capacity() - self.out.len()
    }

    /// With PIPELINING: writes as many of the remaining RCPT commands as
    /// fit whole in the output buffer, then DATA once every RCPT is out
    /// (unless BDAT follows). Called again as replies arrive, so any
    /// number of recipients goes out in flights that fit.
    fn pipeline_rcpts(&mut self) {
        let rcpts = self.env.rcpts;
        while let Some(r) = rcpts.get(usize::from(self.rcpt_sent)) {
            if self.room() < RCPT_OVERHEAD + r.len() {
                return;
            }
            self.command(&[b"RCPT TO:<", r, b">"]);
            self.rcpt_sent += 1;
        }
        if self.verify {
            return;
        }
        if !self.ext.chunking && !self.data_sent && self.room() >= b"DATA\r\n".len() {
            self.command(&[b"DATA"]);
            self.data_sent = true;
        }
    }

    /// Consumes server octets: at most one reply line per call. Replies
    /// are read one line at a time; an event's reply text borrows the
    /// client until the next call.
    pub fn feed<'s>(&'s mut self, input: &[u8]) -> Step<'s> {
        if let Some(k) = self.queued.take() {
            return Step {
                consumed: 0,
                event: Some(self.event(k)),
            };
        }
        if matches!(
            self.phase,
            Phase::Closed | Phase::AwaitTls | Phase::Sending | Phase::Idle
        ) {
            return Step {
                consumed: 0,
                event: None,
            };
        }
        let (consumed, complete) = match input.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (input.len(), false),
        };
        if self.line_done {
            self.line.clear();
            self.line_done = false;
        }
        if self
            .line
            .extend_from_slice(input.get(..consumed).unwrap_or(&[]))
            .is_err()
        {
            self.line.clear();
            let event = self.fail(Failure::Protocol, false);
            return Step {
                consumed,
                event: event.map(|k| self.event(k)),
            };
        }
        if !complete {
            return Step {
                consumed,
                event: None,
            };
        }
        self.line_done = true;
        let kind = self.on_line();
        Step {
            consumed,
            event: kind.map(|k| self.event(k)),
        }
    }

    /// Builds the event, its reply text borrowing the line buffer.
    fn event(&self, k: Kind) -> Event<'_> {
        let reply = || parse_reply(&self.line).map(|(r, _)| r);
        match k {
            Kind::StartTls => Event::StartTls,
            Kind::SendMessage(bdat) => Event::SendMessage { bdat },
            Kind::Rcpt(index) => match reply() {
                Some(reply) => Event::Rcpt { index, reply },
                None => Event::Failed {
                    why: Failure::Protocol,
                    reply: None,
                },
            },
            Kind::Done => match reply() {
                Some(r) => Event::Done(r),
                None => Event::Failed {
                    why: Failure::Protocol,
                    reply: None,
                },
            },
            Kind::Failed(why, with_reply) => Event::Failed {
                why,
                reply: if with_reply { reply() } else { None },
            },
        }
    }

    fn fail(&mut self, why: Failure, with_reply: bool) -> Option<Kind> {
        let unsent = matches!(
            why,
            Failure::Needs8BitMime | Failure::NeedsSmtpUtf8 | Failure::TooBig
        );
        if self.keep && unsent {
            // Refused before MAIL was written: nothing to reset.
            self.phase = Phase::Idle;
            return Some(Kind::Failed(why, with_reply));
        }
        if self.keep && why == Failure::NoRecipients {
            // MAIL stands without a recipient: RSET before the next one.
            self.left_open = true;
            self.phase = Phase::Idle;
            return Some(Kind::Failed(why, with_reply));
        }
        if self.phase != Phase::Greeting || with_reply {
            self.command(&[b"QUIT"]);
        }
        self.phase = Phase::Closed;
        Some(Kind::Failed(why, with_reply))
    }

    /// MAIL or DATA refused (not 421) on a session kept open: the
    /// transaction failed, the session did not. `pending` replies to
    /// commands pipelined after it are dropped first ([`Phase::Drain`]);
    /// the next transaction begins with RSET (RFC 5321 §4.1.1.5).
    fn refused_keeping_open(&mut self, pending: u16) -> Option<Kind> {
        self.left_open = true;
        self.drain = pending;
        self.phase = if pending == 0 {
            Phase::Idle
        } else {
            Phase::Drain
        };
        Some(Kind::Failed(Failure::Refused, true))
    }

    fn send_transaction(&mut self) -> Option<Kind> {
        let env = self.env;
        if env.body8bit && !self.ext.eightbit {
            return self.fail(Failure::Needs8BitMime, false);
        }
        if env.smtputf8 && !self.ext.smtputf8 {
            return self.fail(Failure::NeedsSmtpUtf8, false);
        }
        if self.ext.size.is_some_and(|max| max > 0 && env.size > max) {
            return self.fail(Failure::TooBig, false);
        }
        let mut size = [0u8; 20];
        let size = fmt_u64(env.size, &mut size);
        self.raw(b"MAIL FROM:<");
        self.raw(env.from);
        self.raw(b">");
        if self.ext.size.is_some() {
            self.raw(b" SIZE=");
            self.raw(size);
        }
        if env.body8bit {
            self.raw(b" BODY=8BITMIME");
        }
        if env.smtputf8 {
            self.raw(b" SMTPUTF8");
        }
        self.raw(b"\r\n");
        self.phase = Phase::Mail;
        self.rcpt_next = 0;
        self.rcpt_sent = 0;
        if self.ext.pipelining {
            // RFC 2920: MAIL, the RCPTs and DATA (or nothing for BDAT) in
            // one flight, as far as the buffer holds them.
            self.pipeline_rcpts();
        }
        None
    }

    fn next_after_rcpts(&mut self) -> Option<Kind> {
        if self.accepted == 0 {
            if self.data_sent {
                // The pipelined DATA's reply (554 or 503) is still to come.
                self.phase = Phase::Data;
                self.no_rcpt = true;
                return None;
            }
            return self.fail(Failure::NoRecipients, false);
        }
        if self.ext.chunking {
            let mut size = [0u8; 20];
            let n = fmt_u64(self.env.size, &mut size);
            let mut cmd: Vec<u8, 32> = Vec::new();
            let _ = cmd.extend_from_slice(b"BDAT ");
            let _ = cmd.extend_from_slice(n);
            let _ = cmd.extend_from_slice(b" LAST");
            self.command(&[&cmd]);
            self.bdat = true;
            self.phase = Phase::Sending;
            return Some(Kind::SendMessage(true));
        }
        if !self.data_sent {
            self.command(&[b"DATA"]);
            self.data_sent = true;
        }
        self.phase = Phase::Data;
        None
    }

    fn on_line(&mut self) -> Option<Kind> {
        let Some((r, more)) = parse_reply(&self.line) else {
            return self.fail(Failure::Protocol, false);
        };
        let (code, positive) = (r.code, r.is_positive());
        // Note the extensions from EHLO's lines as they come.
        if self.phase == Phase::Ehlo && positive {
            note_extension(&mut self.ext, r.text);
        }
        if more {
            return None; // a multi-line reply goes on
        }
        match self.phase {
            Phase::Greeting => {
                if code != 220 {
                    return self.fail(Failure::Refused, true);
                }
                self.command(&[b"EHLO ", self.cfg.helo.as_bytes()]);
                self.phase = Phase::Ehlo;
                None
            }
            Phase::Ehlo | Phase::Helo => self.on_hello(code, positive),
            Phase::StartTls => {
                if code != 220 {
                    if self.cfg.tls == TlsMode::Opportunistic {
                        return self.send_transaction();
                    }
                    return self.fail(Failure::TlsNotOffered, true);
                }
                self.phase = Phase::AwaitTls;
                Some(Kind::StartTls)
            }
            Phase::Mail => {
                self.mail_answered = code != 421;
                if !positive && self.keep && code != 421 {
                    // The RCPTs and DATA pipelined after it are refused too.
                    return self.refused_keeping_open(self.rcpt_sent + u16::from(self.data_sent));
                }
                self.on_mail(positive)
            }
            Phase::Rcpt => self.on_rcpt(positive),
            Phase::Data => {
                if self.no_rcpt {
                    return self.fail(Failure::NoRecipients, false);
                }
                if code != 354 && self.keep && code != 421 {
                    return self.refused_keeping_open(0);
                }
                if code != 354 {
                    return self.fail(Failure::Refused, true);
                }
                self.phase = Phase::Sending;
                Some(Kind::SendMessage(false))
            }
            Phase::EndOfData => {
                if self.keep {
                    self.phase = Phase::Idle;
                } else {
                    self.command(&[b"QUIT"]);
                    self.phase = Phase::Quit;
                }
                Some(Kind::Done)
            }
            Phase::Rset => {
                if !positive {
                    return self.fail(Failure::Refused, true);
                }
                self.left_open = false;
                self.send_transaction()
            }
            Phase::Quit => {
                self.phase = Phase::Closed;
                None
            }
            Phase::Drain => {
                self.drain = self.drain.saturating_sub(1);
                self.phase = match (code, self.drain) {
                    // 354: the server took the pipelined DATA after all; the
                    // session is in no state to reuse.
                    (421 | 354, _) => Phase::Closed,
                    (_, 0) => Phase::Idle,
                    _ => Phase::Drain,
                };
                None
            }
            Phase::AwaitTls | Phase::Sending | Phase::Idle | Phase::Closed => None,
        }
    }

    /// The reply to EHLO or HELO: HELO after a refused EHLO, then STARTTLS
    /// when offered and possible, else the transaction (or a failure when
    /// TLS is required and not offered).
    fn on_hello(&mut self, code: u16, positive: bool) -> Option<Kind> {
        if !positive {
            if self.phase == Phase::Ehlo && code >= 500 && !self.tls {
                // RFC 5321 §3.2: fall back to HELO.
                self.command(&[b"HELO ", self.cfg.helo.as_bytes()]);
                self.phase = Phase::Helo;
                return None;
            }
            return self.fail(Failure::Refused, true);
        }
        let must_tls = self.cfg.tls != TlsMode::Opportunistic;
        if !self.tls && self.ext.starttls && self.cfg.tls_available {
            self.command(&[b"STARTTLS"]);
            self.phase = Phase::StartTls;
            return None;
        }
        if !self.tls && must_tls {
            return self.fail(Failure::TlsNotOffered, false);
        }
        self.send_transaction()
    }

    /// The reply to MAIL: the first RCPT (unless pipelined already).
    fn on_mail(&mut self, positive: bool) -> Option<Kind> {
        if !positive {
            // Pipelined RCPTs and DATA will be refused too; the
            // QUIT after them ends the session.
            return self.fail(Failure::Refused, true);
        }
        self.phase = Phase::Rcpt;
        if !self.ext.pipelining {
            if let Some(r) = self.env.rcpts.first() {
                self.command(&[b"RCPT TO:<", r, b">"]);
                self.rcpt_sent = 1;
            }
        }
        if self.env.rcpts.is_empty() {
            return self.next_after_rcpts();
        }
        None
    }

    /// The reply to one RCPT: counted; the next RCPT, or what follows them.
    fn on_rcpt(&mut self, positive: bool) -> Option<Kind> {
        let index = self.rcpt_next;
        self.rcpt_next += 1;
        if positive {
            self.accepted += 1;
        }
        let n = self.env.rcpts.len() as u16;
        if self.rcpt_next < n {
            if self.ext.pipelining {
                self.pipeline_rcpts();
            } else if let Some(r) = self.env.rcpts.get(usize::from(self.rcpt_next)) {
                self.command(&[b"RCPT TO:<", r, b">"]);
                self.rcpt_sent = self.rcpt_next + 1;
            }
        } else if self.verify {
            self.command(&[b"QUIT"]);
            self.phase = Phase::Quit;
        } else if let Some(k) = self.next_after_rcpts() {
            // The last recipient's reply comes first; the next
            // step's event follows on the next feed.
            self.queued = Some(k);
        }
        Some(Kind::Rcpt(index))
    }
}

/// Notes one line of an EHLO reply (`KEYWORD [ARGS]`) in `ext`.
fn note_extension(ext: &mut Extensions, text: &[u8]) {
    let kw = text.split(|&b| b == b' ').next().unwrap_or(&[]);
    let arg = text.get(kw.len() + 1..).unwrap_or(&[]);
    let up = |s: &[u8], w: &[u8]| s.eq_ignore_ascii_case(w);
    if up(kw, b"PIPELINING") {
        ext.pipelining = true;
    } else if up(kw, b"8BITMIME") {
        ext.eightbit = true;
    } else if up(kw, b"SMTPUTF8") {
        ext.smtputf8 = true;
    } else if up(kw, b"CHUNKING") {
        ext.chunking = true;
    } else if up(kw, b"STARTTLS") {
        ext.starttls = true;
    } else if up(kw, b"SIZE") {
        ext.size = Some(first_word(arg).and_then(parse_u64).unwrap_or(0));
    }
}

/// What an event is, before its reply text is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    StartTls,
    SendMessage(bool),
    Rcpt(u16),
    Done,
    Failed(Failure, bool),
}

/// Dot-stuffs message octets for DATA (RFC 5321 §4.5.2), handing `emit`
/// the output in runs: a line that begins with `.` gets another.
/// `at_line_start` carries the state between calls (start with `true`).
/// No buffer of its own: the caller's `emit` decides where the octets go.
pub fn stuff_runs(input: &[u8], at_line_start: &mut bool, mut emit: impl FnMut(&[u8])) {
    let mut rest = input;
    while let Some(&first) = rest.first() {
        if *at_line_start && first == b'.' {
            emit(b".");
        }
        // A line at a time (memchr finds its end), handed on whole.
        let len = memchr::memchr(b'\n', rest).map_or(rest.len(), |i| i + 1);
        let (line, tail) = rest.split_at(len);
        emit(line);
        *at_line_start = line.last() == Some(&b'\n');
        rest = tail;
    }
}

/// Dot-stuffs message octets for DATA into `out` (see [`stuff_runs`]);
/// returns the octets written, or `None` when `out` is too small (it must
/// hold `input.len() * 2`).
pub fn stuff(input: &[u8], at_line_start: &mut bool, out: &mut [u8]) -> Option<usize> {
    let mut n = 0;
    let mut room = true;
    stuff_runs(input, at_line_start, |run| {
        match out.get_mut(n..n + run.len()) {
            Some(dst) if room => dst.copy_from_slice(run),
            _ => room = false,
        }
        n += run.len();
    });
    room.then_some(n)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use crate::engine::smtp::{self, Receiver};
    use std::format;
    use std::string::String;
    use std::vec::Vec as V;

    fn cfg(tls: TlsMode) -> ClientConfig<'static> {
        ClientConfig {
            helo: "edge1.test",
            tls,
            tls_available: true,
        }
    }

    fn env<'a>(rcpts: &'a [&'a [u8]], body8bit: bool, size: u64) -> Transaction<'a> {
        Transaction {
            from: b"a@x.test",
            rcpts,
            size,
            body8bit,
            smtputf8: false,
        }
    }

    fn describe(e: &Event<'_>) -> String {
        match e {
            Event::Rcpt { index, reply } => format!("rcpt{index}:{}", reply.code),
            Event::Done(r) => format!("done:{}", r.code),
            Event::Failed { why, reply } => {
                format!("failed:{why:?}:{}", reply.map_or(0, |r| r.code))
            }
            Event::StartTls => "starttls".into(),
            Event::SendMessage { bdat } => format!("send:{}", if *bdat { "bdat" } else { "data" }),
        }
    }

    /// Our client against our receiver, in memory. Returns the client's
    /// events and the message octets the receiver stored.
    fn pair(rcpts: &[&[u8]], msg: &[u8]) -> (V<String>, V<V<u8>>) {
        pair_max(10, rcpts, msg)
    }

    fn pair_max(max_recipients: u32, rcpts: &[&[u8]], msg: &[u8]) -> (V<String>, V<V<u8>>) {
        let mut rx = Receiver::new(smtp::ReceiverConfig {
            hostname: "mx.test",
            max_message_size: 1 << 20,
            max_recipients,
            starttls: false,
            tls: false,
            bare_line_endings: smtp::BareLineEndings::Refuse,
            auth: false,
            auth_plaintext: false,
        });
        let mut cl = Client::new(
            cfg(TlsMode::Opportunistic),
            env(rcpts, false, msg.len() as u64),
        );
        let (mut events, mut stored, mut body) = (V::new(), V::new(), V::new());
        // Client octets the receiver has not taken yet (it stops reading
        // while its replies wait to be sent).
        let mut c2s: V<u8> = V::new();
        rx.greet();
        for _ in 0..1000 {
            // server -> client
            let s2c: V<u8> = rx.output().to_vec();
            rx.output_sent(s2c.len());
            let mut pos = 0;
            loop {
                let st = cl.feed(&s2c[pos..]);
                pos += st.consumed;
                let Some(ev) = st.event else {
                    if pos >= s2c.len() || st.consumed == 0 {
                        break;
                    }
                    continue;
                };
                events.push(describe(&ev));
                if let Event::SendMessage { bdat } = ev {
                    c2s.extend_from_slice(cl.output());
                    let n = cl.output().len();
                    cl.output_sent(n);
                    if bdat {
                        c2s.extend_from_slice(msg);
                    } else {
                        let mut out = std::vec![0u8; msg.len() * 2];
                        let mut ls = true;
                        let k = stuff(msg, &mut ls, &mut out).expect("room");
                        c2s.extend_from_slice(&out[..k]);
                    }
                    cl.message_sent();
                }
            }
            c2s.extend_from_slice(cl.output());
            let n = cl.output().len();
            cl.output_sent(n);
            if c2s.is_empty() && s2c.is_empty() {
                break;
            }
            // client -> server
            let pos = serve(&mut rx, &c2s, &mut body, &mut stored);
            c2s.drain(..pos.min(c2s.len()));
            if cl.is_closed() && rx.is_closed() {
                break;
            }
        }
        (events, stored)
    }

    /// Feeds the receiver the client's octets `c2s` and decides as a
    /// policy would (a recipient `deny...` refused); the octets taken.
    fn serve(rx: &mut Receiver<'_>, c2s: &[u8], body: &mut V<u8>, stored: &mut V<V<u8>>) -> usize {
        let mut pos = 0;
        loop {
            if rx.is_closed() {
                break;
            }
            let st = rx.feed(&c2s[pos..]);
            pos += st.consumed;
            match st.event {
                Some(smtp::Event::Body(b)) => body.extend_from_slice(b),
                Some(smtp::Event::Rcpt(r)) => {
                    if r.starts_with(b"deny") {
                        rx.reject(crate::engine::reply::Reply {
                            code: 550,
                            status: Some((5, 1, 1)),
                            text: "no",
                        });
                    } else {
                        rx.accept();
                    }
                }
                Some(smtp::Event::Mail(_)) => rx.accept(),
                Some(smtp::Event::MessageEnd { .. }) => {
                    stored.push(core::mem::take(body));
                    rx.accept_message("Q");
                }
                Some(_) => {}
                None if pos >= c2s.len() || st.consumed == 0 => break,
                None => {}
            }
        }
        pos
    }

    /// The client against a scripted server: `script` is what the server
    /// says, one reply per step.
    fn scripted(c: ClientConfig<'_>, e: Transaction<'_>, script: &[&[u8]]) -> (V<String>, String) {
        let mut cl = Client::new(c, e);
        on_script(&mut cl, script)
    }

    /// Runs `cl` against `script` (one server reply per step): its events
    /// and everything it sent, the output waiting at the start included.
    fn on_script(cl: &mut Client<'_>, script: &[&[u8]]) -> (V<String>, String) {
        let mut events = V::new();
        let mut sent = String::from_utf8_lossy(cl.output()).into_owned();
        let n = cl.output().len();
        cl.output_sent(n);
        for reply in script {
            let mut pos = 0;
            loop {
                let st = cl.feed(&reply[pos..]);
                pos += st.consumed;
                match st.event {
                    Some(ev) => {
                        let (send, tls) = (
                            matches!(ev, Event::SendMessage { .. }),
                            matches!(ev, Event::StartTls),
                        );
                        events.push(describe(&ev));
                        if send {
                            cl.message_sent();
                        }
                        if tls {
                            cl.tls_established();
                        }
                    }
                    None if pos >= reply.len() || st.consumed == 0 => break,
                    None => {}
                }
            }
            sent.push_str(&String::from_utf8_lossy(cl.output()));
            let n = cl.output().len();
            cl.output_sent(n);
        }
        (events, sent)
    }

    const MSG: &[u8] = b"Subject: t\r\n\r\n.leading dot\r\n..two\r\nend\r\n";

    fn verified(script: &[&[u8]], rcpts: &[&[u8]]) -> (V<String>, String) {
        let e = Transaction {
            from: b"",
            rcpts,
            size: 0,
            body8bit: false,
            smtputf8: false,
        };
        let mut cl = Client::verify(cfg(TlsMode::Opportunistic), e);
        let mut events = V::new();
        let mut sent = String::new();
        for reply in script {
            let mut pos = 0;
            loop {
                let st = cl.feed(&reply[pos..]);
                pos += st.consumed;
                match st.event {
                    Some(ev) => events.push(describe(&ev)),
                    None if pos >= reply.len() || st.consumed == 0 => break,
                    None => {}
                }
            }
            sent.push_str(&String::from_utf8_lossy(cl.output()));
            let n = cl.output().len();
            cl.output_sent(n);
        }
        (events, sent)
    }

    /// A server that pipelines and speaks 8BITMIME: greeting and EHLO.
    const HELLO: [&[u8]; 2] = [
        b"220 mx.test\r\n",
        b"250-mx.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n",
    ];

    /// A whole transaction's replies after [`HELLO`]: MAIL, one RCPT,
    /// DATA, the end of data.
    const ONE: [&[u8]; 4] = [b"250 ok\r\n", b"250 ok\r\n", b"354 go\r\n", b"250 ok\r\n"];

    /// A client kept open after one transaction to `b@y.test`: its idle state.
    fn kept_open() -> Idle {
        let rcpts: [&[u8]; 1] = [b"b@y.test"];
        let mut cl = Client::new(cfg(TlsMode::Opportunistic), env(&rcpts, false, 10));
        cl.keep_open();
        let mut script: V<&[u8]> = HELLO.to_vec();
        script.extend_from_slice(&ONE);
        let (ev, sent) = on_script(&mut cl, &script);
        assert_eq!(ev, ["rcpt0:250", "send:data", "done:250"]);
        assert!(!sent.contains("QUIT"), "{sent}");
        assert!(cl.mail_answered());
        cl.idle().expect("idle after the transaction")
    }

    #[test]
    fn a_session_kept_open_carries_a_second_transaction_without_ehlo() {
        let idle = kept_open();
        assert!(!idle.tls() && !idle.needs_rset());
        // The next message: MAIL, RCPT and DATA in one flight, no EHLO.
        let two: [&[u8]; 1] = [b"c@y.test"];
        let mut next = Client::resume(cfg(TlsMode::Opportunistic), env(&two, true, 20), idle);
        next.keep_open();
        let (ev, sent) = on_script(&mut next, &ONE);
        assert_eq!(ev, ["rcpt0:250", "send:data", "done:250"]);
        let flight = "MAIL FROM:<a@x.test> BODY=8BITMIME\r\nRCPT TO:<c@y.test>\r\nDATA\r\n";
        assert!(sent.starts_with(flight), "{sent}");
        assert!(!sent.contains("EHLO") && !sent.contains("QUIT"), "{sent}");
        assert_eq!(next.idle(), Some(idle), "idle again, the same session");
    }

    #[test]
    fn a_transaction_left_open_is_reset_before_the_next_mail() {
        let rcpts: [&[u8]; 1] = [b"b@y.test"];
        let mut cl = Client::new(cfg(TlsMode::Opportunistic), env(&rcpts, false, 10));
        cl.keep_open();
        let mut script: V<&[u8]> = HELLO.to_vec();
        script.extend_from_slice(&[b"250 ok\r\n", b"550 5.1.1 no\r\n", b"554 no rcpt\r\n"]);
        let (ev, sent) = on_script(&mut cl, &script);
        assert_eq!(ev, ["rcpt0:550", "failed:NoRecipients:0"]);
        assert!(!sent.contains("QUIT"), "{sent}");
        let idle = cl.idle().expect("kept open");
        assert!(idle.needs_rset());
        let mut next = Client::resume(cfg(TlsMode::Opportunistic), env(&rcpts, false, 10), idle);
        assert_eq!(next.output(), b"RSET\r\n", "RSET alone, then MAIL");
        let (ev, sent) = on_script(&mut next, &[b"250 reset\r\n", b"250 ok\r\n", b"250 ok\r\n"]);
        assert_eq!(ev, ["rcpt0:250"]);
        let flight = "RSET\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n";
        assert!(sent.starts_with(flight), "{sent}");
        // A refused RSET ends the session.
        let mut next = Client::resume(cfg(TlsMode::Opportunistic), env(&rcpts, false, 10), idle);
        let (ev, _) = on_script(&mut next, &[b"421 4.3.2 bye\r\n"]);
        assert_eq!(ev, ["failed:Refused:421"]);
        assert!(!next.mail_answered() && next.is_closed());
    }

    #[test]
    fn a_refused_mail_keeps_the_session_after_the_pipelined_replies() {
        let idle = kept_open();
        let two: [&[u8]; 2] = [b"b@y.test", b"c@y.test"];
        let mut next = Client::resume(cfg(TlsMode::Opportunistic), env(&two, false, 10), idle);
        next.keep_open();
        let (ev, sent) = on_script(&mut next, &[b"550 5.7.1 sender refused\r\n"]);
        assert_eq!(ev, ["failed:Refused:550"]);
        assert!(next.mail_answered() && next.draining() && next.idle().is_none());
        // Two RCPTs and DATA were pipelined: their three replies are dropped.
        let drop: [&[u8]; 3] = [
            b"503 5.5.1 no\r\n",
            b"503-5.5.1 no\r\n503 5.5.1 no\r\n",
            b"503 5.5.1 no\r\n",
        ];
        let (ev, more) = on_script(&mut next, &drop[..2]);
        assert!(ev.is_empty() && next.draining(), "{ev:?}");
        let (ev, more2) = on_script(&mut next, &drop[2..]);
        assert!(ev.is_empty() && !next.draining(), "{ev:?}");
        assert!(!format!("{sent}{more}{more2}").contains("QUIT"));
        let idle = next.idle().expect("idle after the drain");
        assert!(idle.needs_rset(), "RSET before the next MAIL");
        // A 421 while draining closes it.
        let mut next = Client::resume(cfg(TlsMode::Opportunistic), env(&two, false, 10), idle);
        next.keep_open();
        let script: [&[u8]; 3] = [
            b"250 reset\r\n",
            b"451 4.3.0 later\r\n",
            b"421 4.3.2 bye\r\n",
        ];
        let (ev, _) = on_script(&mut next, &script);
        assert_eq!(ev, ["failed:Refused:451"]);
        assert!(next.is_closed() && next.idle().is_none());
        // A session not kept open: QUIT at once, as before.
        let rcpts: [&[u8]; 1] = [b"b@y.test"];
        let mut cl = Client::new(cfg(TlsMode::Opportunistic), env(&rcpts, false, 10));
        let mut script: V<&[u8]> = HELLO.to_vec();
        script.push(b"550 5.7.1 no\r\n");
        let (ev, sent) = on_script(&mut cl, &script);
        assert_eq!(ev, ["failed:Refused:550"]);
        assert!(sent.ends_with("QUIT\r\n") && !cl.draining(), "{sent}");
    }

    #[test]
    fn a_refused_data_or_a_message_too_big_keeps_the_session() {
        let idle = kept_open();
        let one: [&[u8]; 1] = [b"b@y.test"];
        let mut next = Client::resume(cfg(TlsMode::Opportunistic), env(&one, false, 10), idle);
        next.keep_open();
        let script: [&[u8]; 3] = [b"250 ok\r\n", b"250 ok\r\n", b"451 4.3.0 not now\r\n"];
        let (ev, sent) = on_script(&mut next, &script);
        assert_eq!(ev, ["rcpt0:250", "failed:Refused:451"]);
        assert!(!sent.contains("QUIT"), "{sent}");
        assert!(next.idle().expect("kept").needs_rset());
        // Over the server's SIZE: refused before MAIL is written.
        let small = Idle {
            ext: Extensions {
                size: Some(5),
                ..idle.ext
            },
            ..idle
        };
        let mut next = Client::resume(cfg(TlsMode::Opportunistic), env(&one, false, 10), small);
        let (ev, sent) = on_script(&mut next, &[b""]);
        assert_eq!(ev, ["failed:TooBig:0"]);
        assert!(sent.is_empty(), "nothing written: {sent}");
        assert_eq!(next.idle(), Some(small), "idle, no RSET needed");
    }

    #[test]
    fn a_resumed_session_closed_while_idle_has_no_answer_to_mail() {
        let idle = kept_open();
        let rcpts: [&[u8]; 1] = [b"b@y.test"];
        // The server timed the idle session out: its 421 comes for MAIL.
        let mut next = Client::resume(cfg(TlsMode::Opportunistic), env(&rcpts, false, 10), idle);
        let (ev, _) = on_script(&mut next, &[b"421 4.4.2 idle too long\r\n"]);
        assert_eq!(ev, ["failed:Refused:421"]);
        assert!(!next.mail_answered());
        // A real refusal of MAIL is an answer.
        let mut next = Client::resume(cfg(TlsMode::Opportunistic), env(&rcpts, false, 10), idle);
        let (ev, _) = on_script(&mut next, &[b"451 4.3.0 later\r\n"]);
        assert_eq!(ev, ["failed:Refused:451"]);
        assert!(next.mail_answered());
        // A message the session cannot take fails at the first feed.
        let seven = Idle {
            ext: Extensions::default(),
            ..idle
        };
        let mut next = Client::resume(cfg(TlsMode::Opportunistic), env(&rcpts, true, 10), seven);
        let (ev, _) = on_script(&mut next, &[b""]);
        assert_eq!(ev, ["failed:Needs8BitMime:0"]);
    }

    #[test]
    fn verify_mode_asks_rcpt_then_quits_without_data() {
        for pipelining in [false, true] {
            let ehlo: &[u8] = if pipelining {
                b"250-mx.test\r\n250-PIPELINING\r\n250 CHUNKING\r\n"
            } else {
                b"250 mx.test\r\n"
            };
            let (events, sent) = verified(
                &[
                    b"220 mx.test\r\n",
                    ehlo,
                    b"250 2.1.0 ok\r\n",
                    b"550 5.1.1 no such user\r\n",
                    b"221 bye\r\n",
                ],
                &[b"nobody@contoso.com"],
            );
            assert_eq!(
                sent, "EHLO edge1.test\r\nMAIL FROM:<>\r\nRCPT TO:<nobody@contoso.com>\r\nQUIT\r\n",
                "pipelining {pipelining}"
            );
            assert_eq!(events.len(), 1, "{events:?}");
            assert!(events[0].contains("550"), "{events:?}");
        }
        let (events, sent) = verified(
            &[
                b"220 mx.test\r\n",
                b"250 mx.test\r\n",
                b"250 ok\r\n",
                b"250 2.1.5 ok\r\n",
            ],
            &[b"jaap@contoso.com"],
        );
        assert!(events[0].contains("250"), "{events:?}");
        assert!(
            !sent.contains("DATA") && sent.ends_with("QUIT\r\n"),
            "{sent}"
        );
    }

    #[test]
    fn against_our_receiver_with_pipelining_and_chunking() {
        let (events, stored) = pair(&[b"b@y.test", b"deny@y.test", b"c@y.test"], MSG);
        assert_eq!(
            events,
            [
                "rcpt0:250",
                "rcpt1:550",
                "rcpt2:250",
                "send:bdat",
                "done:250"
            ]
        );
        assert_eq!(stored, [MSG.to_vec()]);
    }

    #[test]
    fn more_recipients_than_one_flight_holds_all_go_out_whole() {
        // 300 addresses of ~50 octets: ~19 KB of RCPT commands, far more
        // than OUTPUT_BUFFER; they go in flights as the replies come.
        let names: V<V<u8>> = (0..300)
            .map(|i| format!("recipient-number-{i:04}@a-rather-long-domain.example").into_bytes())
            .collect();
        let mut rcpts: V<&[u8]> = names.iter().map(V::as_slice).collect();
        rcpts[7] = b"deny@y.test";
        let (events, stored) = pair_max(1000, &rcpts, MSG);
        let mut want: V<String> = (0..300)
            .map(|i| format!("rcpt{i}:{}", if i == 7 { 550 } else { 250 }))
            .collect();
        want.extend(["send:bdat".into(), "done:250".into()]);
        assert_eq!(events, want);
        assert_eq!(stored, [MSG.to_vec()]);
    }

    #[test]
    fn pipelined_flights_never_cut_a_command() {
        // A scripted PIPELINING server without CHUNKING: every command the
        // client writes is whole, and DATA comes after the last RCPT.
        let names: V<V<u8>> = (0..200)
            .map(|i| format!("r{i:03}-padding-padding-padding-padding@y.test").into_bytes())
            .collect();
        let rcpts: V<&[u8]> = names.iter().map(V::as_slice).collect();
        let mut script: V<&[u8]> = V::new();
        script.push(b"220 mx\r\n");
        script.push(b"250-mx\r\n250 PIPELINING\r\n");
        script.push(b"250 ok\r\n"); // MAIL
        script.extend(core::iter::repeat_n(&b"250 ok\r\n"[..], 200));
        script.push(b"354 go\r\n");
        script.push(b"250 queued\r\n");
        script.push(b"221 bye\r\n");
        let (events, sent) = scripted(cfg(TlsMode::Opportunistic), env(&rcpts, false, 10), &script);
        assert_eq!(events.len(), 202, "{events:?}");
        assert_eq!(events[199], "rcpt199:250");
        assert_eq!(events[200], "send:data");
        let lines: V<&str> = sent.split("\r\n").collect();
        let rcpt_lines: V<&str> = lines
            .iter()
            .copied()
            .filter(|l| l.starts_with("RCPT"))
            .collect();
        assert_eq!(rcpt_lines.len(), 200);
        for (i, l) in rcpt_lines.iter().enumerate() {
            assert_eq!(
                *l,
                format!("RCPT TO:<{}>", String::from_utf8_lossy(&names[i]))
            );
        }
        let data_at = lines.iter().position(|l| *l == "DATA").expect("DATA");
        let last_rcpt = lines
            .iter()
            .rposition(|l| l.starts_with("RCPT"))
            .expect("RCPT");
        assert!(data_at > last_rcpt);
    }

    #[test]
    fn every_recipient_refused_ends_without_data() {
        let (events, stored) = pair(&[b"deny1@y.test", b"deny2@y.test"], MSG);
        assert_eq!(events, ["rcpt0:550", "rcpt1:550", "failed:NoRecipients:0"]);
        assert!(stored.is_empty());
    }

    const EHLO_PLAIN: &[u8] =
        b"250-mx.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 100000\r\n";

    #[test]
    fn data_with_dot_stuffing_when_chunking_is_not_offered() {
        let (events, sent) = scripted(
            cfg(TlsMode::Opportunistic),
            env(&[b"b@y.test"], true, 10),
            &[
                b"220 mx\r\n",
                EHLO_PLAIN,
                b"250 2.1.0 ok\r\n",
                b"250 2.1.5 ok\r\n",
                b"354 go\r\n",
                b"250 2.0.0 queued\r\n",
                b"221 bye\r\n",
            ],
        );
        assert_eq!(events, ["rcpt0:250", "send:data", "done:250"]);
        assert!(sent.starts_with("EHLO edge1.test\r\nMAIL FROM:<a@x.test> SIZE=10 BODY=8BITMIME\r\nRCPT TO:<b@y.test>\r\nDATA\r\n"), "{sent}");
        assert!(sent.ends_with(".\r\nQUIT\r\n"), "{sent}");
    }

    #[test]
    fn an_8bit_message_is_not_sent_to_a_7bit_server() {
        let (events, sent) = scripted(
            cfg(TlsMode::Opportunistic),
            env(&[b"b@y.test"], true, 10),
            &[b"220 mx\r\n", b"250 mx.test\r\n"],
        );
        assert_eq!(events, ["failed:Needs8BitMime:0"]);
        assert!(!sent.contains("MAIL"), "{sent}");
    }

    #[test]
    fn the_server_size_limit_is_respected() {
        let (events, _) = scripted(
            cfg(TlsMode::Opportunistic),
            env(&[b"b@y.test"], false, 200_000),
            &[b"220 mx\r\n", EHLO_PLAIN],
        );
        assert_eq!(events, ["failed:TooBig:0"]);
    }

    #[test]
    fn required_tls_is_never_skipped() {
        let (events, sent) = scripted(
            cfg(TlsMode::Required),
            env(&[b"b@y.test"], false, 10),
            &[b"220 mx\r\n", EHLO_PLAIN],
        );
        assert_eq!(events, ["failed:TlsNotOffered:0"]);
        assert!(!sent.contains("MAIL"));
        let (events, sent) = scripted(
            cfg(TlsMode::Verify),
            env(&[b"b@y.test"], false, 10),
            &[
                b"220 mx\r\n",
                b"250-mx\r\n250 STARTTLS\r\n",
                b"220 go ahead\r\n",
                b"250-mx\r\n250 PIPELINING\r\n",
            ],
        );
        assert_eq!(events, ["starttls"]);
        assert!(sent.contains("STARTTLS\r\nEHLO edge1.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n"), "{sent}");
        // Opportunistic goes on in clear text when STARTTLS is refused.
        let (events, sent) = scripted(
            cfg(TlsMode::Opportunistic),
            env(&[b"b@y.test"], false, 10),
            &[
                b"220 mx\r\n",
                b"250-mx\r\n250 STARTTLS\r\n",
                b"454 4.7.0 not now\r\n",
            ],
        );
        assert!(events.is_empty());
        assert!(sent.ends_with("MAIL FROM:<a@x.test>\r\n"), "{sent}");
    }

    #[test]
    fn helo_fallback_and_refusals() {
        let (events, sent) = scripted(
            cfg(TlsMode::Opportunistic),
            env(&[b"b@y.test", b"c@y.test"], false, 10),
            &[
                b"220 mx\r\n",
                b"502 5.5.1 no EHLO\r\n",
                b"250 mx\r\n",
                b"250 ok\r\n",
                b"450 4.2.0 busy\r\n",
                b"250 ok\r\n",
                b"354 go\r\n",
                b"451 4.3.0 try later\r\n",
            ],
        );
        assert_eq!(events, ["rcpt0:450", "rcpt1:250", "send:data", "done:451"]);
        assert!(sent.starts_with("EHLO edge1.test\r\nHELO edge1.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nRCPT TO:<c@y.test>\r\nDATA\r\n"), "{sent}");
        let (events, _) = scripted(
            cfg(TlsMode::Opportunistic),
            env(&[b"b@y.test"], false, 10),
            &[b"554 5.7.1 go away\r\n"],
        );
        assert_eq!(events, ["failed:Refused:554"]);
        let (events, _) = scripted(
            cfg(TlsMode::Opportunistic),
            env(&[b"b@y.test"], false, 10),
            &[b"220 mx\r\n", EHLO_PLAIN, b"553 5.1.8 bad sender\r\n"],
        );
        assert_eq!(events, ["failed:Refused:553"]);
    }

    #[test]
    fn replies_parse_with_and_without_enhanced_codes() {
        let (r, more) = parse_reply(b"250-2.1.5 Recipient ok\r\n").expect("reply");
        assert_eq!(
            (r.code, r.status, r.text, more),
            (250, Some((2, 1, 5)), &b"Recipient ok"[..], true)
        );
        let (r, _) = parse_reply(b"550 No such user\r\n").expect("reply");
        assert_eq!((r.status, r.text), (None, &b"No such user"[..]));
        assert!(parse_reply(b"xyz\r\n").is_none());
    }

    #[test]
    fn stuffing_keeps_state_across_calls() {
        let mut ls = true;
        let mut out = [0u8; 64];
        let n1 = stuff(b".a\r\n", &mut ls, &mut out).expect("room");
        let n2 = stuff(b".b", &mut ls, &mut out[n1..]).expect("room");
        assert_eq!(&out[..n1 + n2], b"..a\r\n..b");
        assert_eq!(stuff(b"....", &mut true, &mut [0u8; 4]), None);
    }

    /// The byte-at-a-time definition of RFC 5321 §4.5.2 stuffing.
    fn stuff_reference(input: &[u8], at_line_start: &mut bool) -> V<u8> {
        let mut out = V::new();
        for &b in input {
            if *at_line_start && b == b'.' {
                out.push(b'.');
            }
            out.push(b);
            *at_line_start = b == b'\n';
        }
        out
    }

    proptest::proptest! {
        #[test]
        fn stuffing_equals_the_byte_at_a_time_definition(
            input in proptest::collection::vec(proptest::prop_oneof![
                proptest::strategy::Just(b'.'), proptest::strategy::Just(b'\n'),
                proptest::strategy::Just(b'\r'), proptest::strategy::Just(b'a'),
            ], 0..300),
            cut in 0usize..300,
            start in proptest::bool::ANY,
        ) {
            let cut = cut.min(input.len());
            let mut want_ls = start;
            let want = stuff_reference(&input, &mut want_ls);
            let mut ls = start;
            let mut out = std::vec![0u8; input.len() * 2];
            let n1 = stuff(&input[..cut], &mut ls, &mut out).expect("room");
            let n2 = stuff(&input[cut..], &mut ls, &mut out[n1..]).expect("room");
            proptest::prop_assert_eq!(&out[..n1 + n2], &want[..]);
            proptest::prop_assert_eq!(ls, want_ls);
        }
    }
}
