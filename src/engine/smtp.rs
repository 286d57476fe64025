//! The SMTP receive state machine (RFC 5321 for a relay), sans I/O.
//!
//! Driving it, in the style of quinn-proto:
//! 1. [`Receiver::greet`] once; the first [`Receiver::feed`] after it
//!    hands out [`Event::Connect`] (it consumes nothing), then send
//!    [`Receiver::output`].
//! 2. [`Receiver::feed`] the bytes read; it returns how many it consumed
//!    and at most one [`Event`]. Call it again with the rest until it
//!    returns no event; then send the output (RFC 2920: replies are flushed
//!    when the client's input is drained) and read more. A step with no
//!    event that consumed octets, or wrote a reply (the `250` of an empty
//!    BDAT chunk), is progress: feed the rest again before reading.
//! 3. Some events wait for a decision: [`Event::Mail`], [`Event::Rcpt`] and
//!    [`Event::MessageEnd`]. Until the shell calls [`Receiver::accept`],
//!    [`Receiver::accept_message`] or [`Receiver::reject`], `feed` consumes
//!    nothing. `MessageEnd` must only be accepted once the message is durable.
//! 4. After [`Event::StartTls`] the shell flushes the output, discards every
//!    byte it still holds from the client (pipelined cleartext after
//!    STARTTLS is an injection), performs the handshake and calls
//!    [`Receiver::tls_established`].
//! 5. When the session ends — after QUIT's reply, an error reply that
//!    closes (421, too many errors), [`Receiver::close_with`] (timeout,
//!    shutdown) or [`Receiver::connection_lost`] (the client went away) —
//!    the next `feed` hands out [`Event::Disconnect`], exactly once per
//!    session: flush the output, then close. [`Receiver::is_closed`] is
//!    true from then on.
//!
//! Only `<CR><LF>.<CR><LF>` ends DATA: a dot after a bare CR or LF never
//! does (SMTP smuggling). Bare CR or LF in DATA are refused or normalised
//! to CRLF, as configured. The engine allocates nothing; every buffer is a
//! fixed capacity from [`super::limits`].

use super::addr::parse_path;
use super::decimal::{fmt_u64, parse_u64};
use super::limits::{
    MAX_AUTH_DECODED, MAX_COMMAND_LINE, MAX_ERRORS, MAX_HEADER_BLOCK, MAX_RECIPIENTS, MAX_REPLY,
    REPLY_BUFFER,
};
use super::reply::{Reason, Reply};
use heapless::Vec;

/// The commands whose lines must be 7-bit (RFC 5321 §2.4; RFC 6531 allows
/// UTF-8 only in the MAIL and RCPT addresses).
const SEVEN_BIT_VERBS: [&[u8]; 10] = [
    b"EHLO",
    b"HELO",
    b"DATA",
    b"BDAT",
    b"RSET",
    b"NOOP",
    b"HELP",
    b"VRFY",
    b"QUIT",
    b"STARTTLS",
];
mod auth;
pub use auth::Mechanism;

/// What to do with a CR or LF that is not part of a CRLF pair in DATA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum BareLineEndings {
    /// Read the message to its real end, then refuse it with `550 5.6.11`.
    #[default]
    Refuse,
    /// Store a bare CR or LF as CRLF; it never ends a line for dot handling.
    Normalize,
}

/// Per-session settings of the receiver.
#[derive(Debug, Clone, Copy)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ReceiverConfig<'h> {
    /// Our host name, for the greeting and the EHLO reply.
    pub hostname: &'h str,
    /// Largest message accepted, in octets (advertised as SIZE).
    pub max_message_size: u64,
    /// Recipients per message; capped at [`MAX_RECIPIENTS`].
    pub max_recipients: u32,
    /// Whether STARTTLS is offered (a certificate is configured).
    pub starttls: bool,
    /// Whether the session is already TLS from the start (implicit TLS).
    pub tls: bool,
    /// Treatment of bare CR / LF in DATA.
    pub bare_line_endings: BareLineEndings,
    /// Whether the listener offers SMTP AUTH (PLAIN and LOGIN); only once
    /// TLS is on unless `auth_plaintext`.
    pub auth: bool,
    /// Whether AUTH is offered without TLS too (tests only).
    pub auth_plaintext: bool,
}

/// The BODY parameter of MAIL (RFC 6152, RFC 3030).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Body {
    /// No BODY parameter, or BODY=7BIT.
    SevenBit,
    /// BODY=8BITMIME.
    EightBitMime,
}

/// A parsed MAIL FROM command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Mail<'a> {
    /// The reverse path without angle brackets; empty for the null sender.
    pub from: &'a [u8],
    /// The SIZE parameter, if given.
    pub size: Option<u64>,
    /// The BODY parameter.
    pub body: Body,
    /// Whether SMTPUTF8 was requested.
    pub smtputf8: bool,
}

/// An event surfaced to the shell (the SMTP receive events of the
/// transport pipeline, seed 003: connect, helo/ehlo, starttls, mail, rcpt,
/// data, end-of-headers, end-of-data, rset, noop, help, reject, quit,
/// disconnect). A session's events begin with [`Event::Connect`] and end
/// with [`Event::Disconnect`], each handed out once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Event<'a> {
    /// The session began: the 220 greeting is queued (OnConnectEvent).
    /// Always the first event, handed out by the first `feed` after
    /// [`Receiver::greet`].
    Connect,
    /// HELO or EHLO was answered; `extended` for EHLO.
    Helo {
        /// The client's claimed name.
        name: &'a [u8],
        /// EHLO rather than HELO.
        extended: bool,
    },
    /// STARTTLS was answered with 220: flush, drop buffered input, handshake,
    /// then call [`Receiver::tls_established`].
    StartTls,
    /// MAIL FROM, waiting for accept or reject.
    Mail(Mail<'a>),
    /// RCPT TO (the forward path without brackets), waiting for a decision.
    Rcpt(&'a [u8]),
    /// The message content begins (354 sent, or the first BDAT chunk).
    DataStart,
    /// Message octets, dot-unstuffed, in order.
    Body(&'a [u8]),
    /// The header block ended; `body_offset` is where the body starts.
    EndOfHeaders {
        /// Offset of the first body octet in the message.
        body_offset: u64,
    },
    /// The message is complete (`size` octets): make it durable, then call
    /// [`Receiver::accept_message`], or [`Receiver::reject`].
    MessageEnd {
        /// Size of the message in octets.
        size: u64,
    },
    /// The engine refused the message (the reply is sent): discard it.
    MessageRejected(Reason),
    /// RSET: the transaction was reset.
    Rset,
    /// NOOP.
    Noop,
    /// HELP.
    Help,
    /// VRFY (answered 252).
    Vrfy,
    /// QUIT: the 221 reply is queued; [`Event::Disconnect`] follows.
    Quit,
    /// A command was refused with this reason (the reply is sent).
    Reject(Reason),
    /// AUTH PLAIN or LOGIN ended with these credentials, waiting for the
    /// shell's check: [`Receiver::auth_accepted`] or [`Receiver::reject`].
    Auth {
        /// The mechanism used.
        mechanism: Mechanism,
        /// The authentication identity (the login name).
        login: &'a [u8],
        /// The password.
        secret: &'a [u8],
    },
    /// The session is over (OnDisconnectEvent): flush the output, then
    /// close the connection. Handed out exactly once, as the last event.
    Disconnect,
}

/// What one call of [`Receiver::feed`] did.
#[must_use = "consumed bytes must be dropped from the input and the event handled"]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step<'a> {
    /// Input octets consumed; the caller drops them and feeds the rest.
    pub consumed: usize,
    /// The event, if any. `None`: feed more input after flushing output.
    pub event: Option<Event<'a>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    Mail,
    Rcpt,
    Message,
    Auth,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Command,
    /// A decision from the shell is awaited.
    Pending(Pending),
    /// Reading DATA content.
    Data,
    /// Reading a BDAT chunk: octets left, LAST flag, whether it is discarded.
    Bdat {
        remaining: u64,
        chunk: u64,
        last: bool,
        discard: bool,
    },
    /// STARTTLS answered; waiting for the handshake.
    AwaitTls,
    /// A 334 challenge was sent; the next line is the client's response.
    Auth(auth::Step),
    Closed,
}

/// Dot handling at the start of a DATA line.
/// The header-line scanner's state (see `Receiver::header_octet`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hdr {
    LineStart,
    CrAtStart,
    Name { wsp: bool },
    Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dot {
    /// Nothing held.
    Clear,
    /// A '.' at line start, held back.
    Held,
    /// ".\r" at line start, held back.
    HeldCr,
}

/// The receive side of one SMTP session. See the module docs for the
/// driving protocol. Holds about 6 KiB of fixed buffers.
#[derive(Debug)]
pub struct Receiver<'h> {
    cfg: ReceiverConfig<'h>,
    phase: Phase,
    line: Vec<u8, MAX_COMMAND_LINE>,
    /// The current command line overflowed; discard to its end.
    overlong: bool,
    /// `line` holds a finished command (events may borrow it until the
    /// next `feed`); clear it before reading the next one.
    line_done: bool,
    out: Vec<u8, REPLY_BUFFER>,
    tls: bool,
    greeted: bool,
    /// [`Event::Connect`] is due on the next `feed`.
    connect_due: bool,
    /// [`Event::Disconnect`] has been handed out.
    disconnected: bool,
    helo: bool,
    mail: bool,
    smtputf8: bool,
    rcpts: u32,
    bdat: bool,
    errors: u16,
    // message content state
    size: u64,
    data_error: Option<Reason>,
    line_start: bool,
    prev_cr: bool,
    dot: Dot,
    in_headers: bool,
    /// Where the scan of the current header line is (the grammar of
    /// [`super::header`], a byte at a time, so both agree on the body).
    hdr: Hdr,
    /// Offset of the current header line's first octet.
    hdr_line_at: u64,
    /// A field line has been seen (a continuation line before one is body).
    hdr_field_seen: bool,
    /// End of headers found, to hand out on the next `feed`.
    queued_eoh: Option<u64>,
    /// More input followed the command line being handled (RFC 2920
    /// §3.1: nothing may follow DATA before its 354).
    more_input: bool,
    /// The client may send after DATA without waiting (an originating
    /// client); others get `554 5.5.0` and the session ends.
    pipelining_trusted: bool,
    /// AUTH succeeded in this session.
    authenticated: bool,
    /// The decoded credentials of an AUTH exchange: the login, then the
    /// password from `auth_split` on. Zeroed once decided.
    auth_buf: Vec<u8, MAX_AUTH_DECODED>,
    /// Where the password starts in `auth_buf`.
    auth_split: usize,
}

impl<'h> Receiver<'h> {
    /// A receiver for a new connection.
    pub fn new(cfg: ReceiverConfig<'h>) -> Self {
        let mut cfg = cfg;
        cfg.max_recipients = cfg.max_recipients.min(MAX_RECIPIENTS);
        Receiver {
            tls: cfg.tls,
            cfg,
            phase: Phase::Command,
            line: Vec::new(),
            overlong: false,
            line_done: false,
            out: Vec::new(),
            greeted: false,
            connect_due: false,
            disconnected: false,
            helo: false,
            mail: false,
            smtputf8: false,
            rcpts: 0,
            bdat: false,
            errors: 0,
            size: 0,
            data_error: None,
            line_start: true,
            prev_cr: false,
            dot: Dot::Clear,
            in_headers: true,
            hdr: Hdr::LineStart,
            hdr_line_at: 0,
            hdr_field_seen: false,
            queued_eoh: None,
            more_input: false,
            pipelining_trusted: false,
            authenticated: false,
            auth_buf: Vec::new(),
            auth_split: 0,
        }
    }

    // ---- getters -------------------------------------------------------

    /// Replies waiting to be sent.
    pub fn output(&self) -> &[u8] {
        &self.out
    }

    /// Whether the session is over: flush the output, then close.
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// Whether TLS is active.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Whether message content is being read (DATA or BDAT), so the shell
    /// applies the data timeout rather than the command timeout.
    pub fn in_data(&self) -> bool {
        matches!(self.phase, Phase::Data | Phase::Bdat { .. })
    }

    /// Whether a decision from the shell is awaited.
    pub fn is_pending(&self) -> bool {
        matches!(self.phase, Phase::Pending(_))
    }

    /// Recipients accepted in the current transaction.
    pub fn recipients(&self) -> u32 {
        self.rcpts
    }

    // ---- mutators ------------------------------------------------------

    /// Writes the 220 greeting; the next `feed` hands out
    /// [`Event::Connect`]. Only the first call does anything.
    pub fn greet(&mut self) {
        if !self.greeted {
            self.greeted = true;
            self.connect_due = true;
            self.write_line(220, None, &[self.cfg.hostname.as_bytes(), b" ESMTP sluice"]);
        }
    }

    /// Drops `n` sent octets from the front of the output.
    pub fn output_sent(&mut self, n: usize) {
        let n = n.min(self.out.len());
        if n == self.out.len() {
            self.out.clear();
        } else {
            let rest = self.out.len() - n;
            self.out.copy_within(n.., 0);
            self.out.truncate(rest);
        }
    }

    /// Accepts the pending MAIL or RCPT with the standard reply.
    pub fn accept(&mut self) {
        match self.phase {
            Phase::Pending(Pending::Mail) => {
                self.mail = true;
                self.rcpts = 0;
                self.write_reply(Reason::SenderOk.reply());
                self.phase = Phase::Command;
            }
            Phase::Pending(Pending::Rcpt) => {
                self.rcpts = self.rcpts.saturating_add(1);
                self.write_reply(Reason::RecipientOk.reply());
                self.phase = Phase::Command;
            }
            Phase::Pending(Pending::Message) => self.accept_message(""),
            _ => {}
        }
    }

    /// Accepts the finished message once it is durable:
    /// `250 2.0.0 Ok: queued as ID`; the transaction ends.
    pub fn accept_message(&mut self, queue_id: &str) {
        if self.phase == Phase::Pending(Pending::Message) {
            self.write_line(
                250,
                Some((2, 0, 0)),
                &[b"Ok: queued as ", queue_id.as_bytes()],
            );
            self.reset_transaction();
            self.phase = Phase::Command;
        }
    }

    /// Refuses the pending MAIL, RCPT or message with `reply`. A refused
    /// message ends the transaction; a 421 reply closes the session.
    pub fn reject(&mut self, reply: Reply<'_>) {
        let Phase::Pending(p) = self.phase else {
            return;
        };
        self.phase = Phase::Command;
        if p == Pending::Message {
            self.reset_transaction();
        }
        if p == Pending::Auth {
            self.forget_credentials();
        }
        self.error_reply(reply);
    }

    /// Ends the session with `reply` (timeouts, shutdown, limits): the
    /// reply is queued and the receiver is closed; the next `feed` hands
    /// out [`Event::Disconnect`].
    pub fn close_with(&mut self, reply: Reply<'_>) {
        if self.phase != Phase::Closed {
            self.write_reply(reply);
            self.phase = Phase::Closed;
        }
    }

    /// The client closed the connection, or the transport failed (a read
    /// or write error, a failed TLS handshake): the session ends without a
    /// reply. Queued output and an undelivered end of headers are dropped;
    /// the next `feed` hands out [`Event::Disconnect`] unless it already
    /// was. Nothing happens if the receiver is already closed.
    pub fn connection_lost(&mut self) {
        if self.phase != Phase::Closed {
            self.out.clear();
            self.queued_eoh = None;
            self.phase = Phase::Closed;
        }
    }

    /// The TLS handshake after STARTTLS succeeded: the session starts over
    /// (RFC 3207 §4.2: the client must send EHLO again).
    pub fn tls_established(&mut self) {
        if self.phase == Phase::AwaitTls {
            self.tls = true;
            self.helo = false;
            self.authenticated = false;
            self.reset_transaction();
            self.line.clear();
            self.overlong = false;
            self.phase = Phase::Command;
        }
    }

    // ---- input ---------------------------------------------------------

    /// Lets the client send content or commands right after DATA without
    /// waiting for the 354 (an originating client: the shell calls this
    /// once it knows). Others are refused, as Postfix's
    /// `smtpd_forbid_unauth_pipelining` does.
    pub fn trust_pipelining(&mut self, trusted: bool) {
        self.pipelining_trusted = trusted;
    }

    /// Consumes client octets; returns how many and at most one event.
    /// Bytes of a partial command line are kept inside (they count as
    /// consumed). Never panics, whatever the input.
    pub fn feed<'a>(&'a mut self, input: &'a [u8]) -> Step<'a> {
        if self.connect_due {
            self.connect_due = false;
            return Step {
                consumed: 0,
                event: Some(Event::Connect),
            };
        }
        if let Some(off) = self.queued_eoh.take() {
            return Step {
                consumed: 0,
                event: Some(Event::EndOfHeaders { body_offset: off }),
            };
        }
        if self.phase == Phase::Closed && !self.disconnected {
            self.disconnected = true;
            return Step {
                consumed: 0,
                event: Some(Event::Disconnect),
            };
        }
        match self.phase {
            Phase::Command | Phase::Auth(_) => self.feed_command(input),
            Phase::Data => {
                let step = self.feed_data(input);
                self.or_disconnect(step)
            }
            Phase::Bdat { .. } => {
                let step = self.feed_bdat(input);
                self.or_disconnect(step)
            }
            Phase::Pending(_) | Phase::AwaitTls | Phase::Closed => Step {
                consumed: 0,
                event: None,
            },
        }
    }

    /// A step that closed the session without an event of its own (a
    /// refused BDAT chunk, answered once it is read, that was one error too
    /// many) hands out [`Event::Disconnect`] at once, so that `feed` never
    /// returns no event from a closed receiver before Disconnect.
    fn or_disconnect<'i>(&mut self, step: Step<'i>) -> Step<'i> {
        if step.event.is_none() && self.phase == Phase::Closed && !self.disconnected {
            self.disconnected = true;
            return Step {
                consumed: step.consumed,
                event: Some(Event::Disconnect),
            };
        }
        step
    }

    fn feed_command<'a>(&'a mut self, input: &'a [u8]) -> Step<'a> {
        if self.out.capacity() - self.out.len() < MAX_REPLY {
            // Flush before taking another command.
            return Step {
                consumed: 0,
                event: None,
            };
        }
        if self.line_done {
            self.line.clear();
            self.line_done = false;
        }
        let (consumed, complete) = match input.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (input.len(), false),
        };
        let chunk = input.get(..consumed).unwrap_or(&[]);
        if !self.overlong && self.line.extend_from_slice(chunk).is_err() {
            self.overlong = true;
            self.line.clear();
        }
        if !complete {
            return Step {
                consumed,
                event: None,
            };
        }
        self.line_done = true;
        if let Phase::Auth(step) = self.phase {
            let event = self.auth_response(step);
            return Step { consumed, event };
        }
        if self.overlong {
            self.overlong = false;
            self.line.clear();
            let ev = self.refuse(Reason::LineTooLong);
            return Step {
                consumed,
                event: Some(ev),
            };
        }
        self.more_input = input.len() > consumed;
        let event = self.command();
        Step { consumed, event }
    }

    /// Handles the complete command line in `self.line`.
    fn command(&mut self) -> Option<Event<'_>> {
        // Strip the line ending (CRLF, or a lenient bare LF).
        let mut end = self.line.len();
        if end > 0 && self.line[end - 1] == b'\n' {
            end -= 1;
        }
        if end > 0 && self.line[end - 1] == b'\r' {
            end -= 1;
        }
        self.line.truncate(end);
        if self.line.contains(&0) {
            return Some(self.refuse(Reason::NulInCommand));
        }
        let verb_end = self.line.iter().position(|&b| b == b' ').unwrap_or(end);
        let mut verb = [0u8; 8];
        let verb_len = verb_end.min(verb.len());
        for (d, s) in verb.iter_mut().zip(self.line.iter().take(verb_len)) {
            *d = s.to_ascii_uppercase();
        }
        let verb = if verb_end > 8 {
            &b""[..]
        } else {
            &verb[..verb_len]
        };
        let arg_start = (verb_end + 1).min(end);
        // Only MAIL and RCPT may carry 8-bit octets (an SMTPUTF8 address,
        // checked by each); another known command with them is malformed.
        if !self.line.is_ascii() && SEVEN_BIT_VERBS.contains(&verb) {
            return Some(self.refuse(Reason::EightBitCommand));
        }
        match verb {
            b"EHLO" | b"HELO" => self.cmd_helo(arg_start, verb == b"EHLO"),
            b"MAIL" => self.cmd_mail(arg_start),
            b"RCPT" => self.cmd_rcpt(arg_start),
            b"DATA" => self.cmd_data(arg_start),
            b"BDAT" => self.cmd_bdat(arg_start),
            b"RSET" => {
                if arg_start < end {
                    return Some(self.refuse(Reason::Syntax));
                }
                self.reset_transaction();
                self.write_reply(Reason::Ok.reply());
                Some(Event::Rset)
            }
            b"NOOP" => {
                self.write_reply(Reason::Ok.reply());
                Some(Event::Noop)
            }
            b"HELP" => {
                self.write_reply(Reason::Help.reply());
                Some(Event::Help)
            }
            b"VRFY" => {
                if arg_start >= end {
                    return Some(self.refuse(Reason::Syntax));
                }
                self.write_reply(Reason::CannotVrfy.reply());
                Some(Event::Vrfy)
            }
            b"QUIT" => {
                self.write_reply(Reason::Bye.reply());
                self.phase = Phase::Closed;
                Some(Event::Quit)
            }
            b"STARTTLS" => self.cmd_starttls(arg_start),
            b"AUTH" => self.cmd_auth(arg_start),
            _ => Some(
                self.refuse(if verb == b"EXPN" || verb == b"TURN" || verb == b"ETRN" {
                    Reason::NotImplemented
                } else {
                    Reason::Unrecognized
                }),
            ),
        }
    }

    fn cmd_helo(&mut self, arg: usize, extended: bool) -> Option<Event<'_>> {
        let name_end = self.line[arg..]
            .iter()
            .position(|&b| b == b' ')
            .map_or(self.line.len(), |i| arg + i);
        if arg >= name_end {
            return Some(self.refuse(Reason::Syntax));
        }
        self.reset_transaction();
        self.helo = true;
        let host = self.cfg.hostname.as_bytes();
        if extended {
            let mut size_buf = [0u8; 20];
            let size = fmt_u64(self.cfg.max_message_size, &mut size_buf);
            self.write_raw(&[b"250-", host, b"\r\n"]);
            self.write_raw(&[b"250-PIPELINING\r\n250-SIZE ", size, b"\r\n"]);
            self.write_raw(&[b"250-8BITMIME\r\n250-SMTPUTF8\r\n250-CHUNKING\r\n"]);
            if self.cfg.starttls && !self.tls {
                self.write_raw(&[b"250-STARTTLS\r\n"]);
            }
            if self.auth_offered() && !self.authenticated {
                // RFC 4954's form, and the `AUTH=` form older Outlook
                // versions look for.
                self.write_raw(&[b"250-AUTH PLAIN LOGIN\r\n250-AUTH=PLAIN LOGIN\r\n"]);
            }
            self.write_raw(&[b"250 ENHANCEDSTATUSCODES\r\n"]);
        } else {
            self.write_raw(&[b"250 ", host, b"\r\n"]);
        }
        Some(Event::Helo {
            name: &self.line[arg..name_end],
            extended,
        })
    }

    fn cmd_mail(&mut self, arg: usize) -> Option<Event<'_>> {
        if !self.helo {
            return Some(self.refuse(Reason::NeedHelo));
        }
        if self.mail {
            return Some(self.refuse(Reason::NestedMail));
        }
        let Some(rest) = strip_keyword(&self.line[arg..], b"FROM:") else {
            return Some(self.refuse(Reason::Syntax));
        };
        let rest_start = self.line.len() - rest.len();
        let (path, params) = match parse_path(rest, true) {
            Some(v) => v,
            None => return Some(self.refuse(Reason::BadSender)),
        };
        let path = (rest_start + path.0, rest_start + path.1);
        let params_start = rest_start + params;
        let mut size = None;
        let mut body = Body::SevenBit;
        let mut smtputf8 = false;
        let mut seen = 0u8;
        for p in self.line[params_start..].split(|&b| b == b' ') {
            if p.is_empty() {
                continue;
            }
            let (key, value) = match p.iter().position(|&b| b == b'=') {
                Some(i) => (&p[..i], Some(&p[i + 1..])),
                None => (p, None),
            };
            let bit;
            if key.eq_ignore_ascii_case(b"SIZE") {
                bit = 1;
                match value.and_then(parse_u64) {
                    Some(n) => size = Some(n),
                    None => return Some(self.refuse(Reason::Syntax)),
                }
            } else if key.eq_ignore_ascii_case(b"BODY") {
                bit = 2;
                match value {
                    Some(v) if v.eq_ignore_ascii_case(b"7BIT") => body = Body::SevenBit,
                    Some(v) if v.eq_ignore_ascii_case(b"8BITMIME") => body = Body::EightBitMime,
                    Some(_) => return Some(self.refuse(Reason::UnknownParameter)),
                    None => return Some(self.refuse(Reason::Syntax)),
                }
            } else if key.eq_ignore_ascii_case(b"SMTPUTF8") {
                bit = 4;
                if value.is_some() {
                    return Some(self.refuse(Reason::Syntax));
                }
                smtputf8 = true;
            } else {
                return Some(self.refuse(Reason::UnknownParameter));
            }
            if seen & bit != 0 {
                return Some(self.refuse(Reason::Syntax));
            }
            seen |= bit;
        }
        if let Some(n) = size {
            if n > self.cfg.max_message_size {
                return Some(self.refuse(Reason::TooBig));
            }
        }
        if !smtputf8 && !self.line[path.0..path.1].is_ascii() {
            return Some(self.refuse(Reason::NeedSmtpUtf8));
        }
        self.smtputf8 = smtputf8;
        self.phase = Phase::Pending(Pending::Mail);
        Some(Event::Mail(Mail {
            from: &self.line[path.0..path.1],
            size,
            body,
            smtputf8,
        }))
    }

    fn cmd_rcpt(&mut self, arg: usize) -> Option<Event<'_>> {
        if !self.mail {
            return Some(self.refuse(Reason::NeedMail));
        }
        if self.bdat {
            return Some(self.refuse(Reason::BadSequence));
        }
        let Some(rest) = strip_keyword(&self.line[arg..], b"TO:") else {
            return Some(self.refuse(Reason::Syntax));
        };
        let rest_start = self.line.len() - rest.len();
        let (path, params) = match parse_path(rest, false) {
            Some(v) => v,
            None => return Some(self.refuse(Reason::BadRecipient)),
        };
        let path = (rest_start + path.0, rest_start + path.1);
        if self.line[rest_start + params..].iter().any(|&b| b != b' ') {
            return Some(self.refuse(Reason::UnknownParameter));
        }
        if !self.smtputf8 && !self.line[path.0..path.1].is_ascii() {
            return Some(self.refuse(Reason::NeedSmtpUtf8));
        }
        if self.rcpts >= self.cfg.max_recipients {
            return Some(self.refuse(Reason::TooManyRecipients));
        }
        self.phase = Phase::Pending(Pending::Rcpt);
        Some(Event::Rcpt(&self.line[path.0..path.1]))
    }

    fn cmd_data(&mut self, arg: usize) -> Option<Event<'_>> {
        if arg < self.line.len() {
            return Some(self.refuse(Reason::Syntax));
        }
        if !self.mail {
            return Some(self.refuse(Reason::NeedMail));
        }
        if self.bdat {
            return Some(self.refuse(Reason::DataAfterBdat));
        }
        if self.rcpts == 0 {
            return Some(self.refuse(Reason::NoValidRecipients));
        }
        if self.more_input && !self.pipelining_trusted {
            // RFC 2920 §3.1: DATA ends a pipelined group; whatever came
            // with it was sent blind (the smuggling of a second message).
            self.write_reply(Reason::ImproperPipelining.reply());
            self.phase = Phase::Closed;
            return Some(Event::Reject(Reason::ImproperPipelining));
        }
        self.write_reply(Reason::StartData.reply());
        self.start_content();
        self.phase = Phase::Data;
        Some(Event::DataStart)
    }

    fn cmd_bdat(&mut self, arg: usize) -> Option<Event<'_>> {
        let args = &self.line[arg..];
        let mut words = args.split(|&b| b == b' ').filter(|w| !w.is_empty());
        let size = words.next().and_then(parse_u64);
        let last = match words.next() {
            None => Some(false),
            Some(w) if w.eq_ignore_ascii_case(b"LAST") => Some(true),
            Some(_) => None,
        };
        let (Some(size), Some(last), None) = (size, last, words.next()) else {
            // Without a valid size the chunk cannot be skipped: its octets
            // would be read as commands. Refuse and close.
            self.write_reply(Reason::Syntax.reply());
            self.phase = Phase::Closed;
            return Some(Event::Reject(Reason::Syntax));
        };
        let refuse = if !self.mail {
            Some(Reason::NeedMail)
        } else if self.rcpts == 0 {
            Some(Reason::NoValidRecipients)
        } else {
            None
        };
        if let Some(reason) = refuse {
            // RFC 3030: the chunk follows regardless; read and drop it.
            self.phase = Phase::Bdat {
                remaining: size,
                chunk: size,
                last,
                discard: true,
            };
            self.data_error = Some(reason);
            if size == 0 {
                return self
                    .finish_chunk(0, last, true)
                    .event
                    .or(Some(Event::Reject(reason)));
            }
            return Some(Event::Reject(reason));
        }
        let first = !self.bdat;
        if first {
            self.bdat = true;
            self.start_content();
        }
        self.phase = Phase::Bdat {
            remaining: size,
            chunk: size,
            last,
            discard: false,
        };
        if first {
            // An empty first chunk finishes on the next `feed`.
            Some(Event::DataStart)
        } else if size == 0 {
            self.finish_chunk(0, last, false).event
        } else {
            None
        }
    }

    fn cmd_starttls(&mut self, arg: usize) -> Option<Event<'_>> {
        if arg < self.line.len() {
            return Some(self.refuse(Reason::Syntax));
        }
        if self.tls {
            return Some(self.refuse(Reason::AlreadyTls));
        }
        if !self.cfg.starttls {
            return Some(self.refuse(Reason::NotImplemented));
        }
        if self.mail {
            return Some(self.refuse(Reason::TlsInTransaction));
        }
        self.write_reply(Reason::ReadyTls.reply());
        self.phase = Phase::AwaitTls;
        Some(Event::StartTls)
    }

    // ---- message content -----------------------------------------------

    fn start_content(&mut self) {
        self.size = 0;
        self.data_error = None;
        self.line_start = true;
        self.prev_cr = false;
        self.dot = Dot::Clear;
        self.in_headers = true;
        self.hdr = Hdr::LineStart;
        self.hdr_line_at = 0;
        self.hdr_field_seen = false;
        self.queued_eoh = None;
    }

    /// Returns a Body event for `bytes` (after size and header accounting),
    /// or no event when the message is already refused. Octets up to a
    /// limit (the message size, the header block) are handed out and none
    /// past it, so that the events do not depend on where the input was
    /// split.
    fn emit<'i>(&mut self, consumed: usize, bytes: &'i [u8]) -> Step<'i> {
        let none = Step {
            consumed,
            event: None,
        };
        if bytes.is_empty() || self.data_error.is_some() {
            return none;
        }
        let start = self.size;
        self.size = self.size.saturating_add(bytes.len() as u64);
        let room = self.cfg.max_message_size.saturating_sub(start);
        let mut keep = usize::try_from(room).map_or(bytes.len(), |r| r.min(bytes.len()));
        if keep < bytes.len() {
            self.data_error = Some(Reason::TooBig);
        }
        if self.in_headers {
            if let Some(cut) = self.header_run(start, bytes.get(..keep).unwrap_or(&[])) {
                keep = cut;
                self.data_error = Some(Reason::HeaderTooBig);
            }
        }
        match bytes.get(..keep) {
            Some(kept) if !kept.is_empty() => Step {
                consumed,
                event: Some(Event::Body(kept)),
            },
            _ => none,
        }
    }

    /// Scans `bytes`, at offset `start` of the message, as header octets:
    /// notes the end of headers if they hold it; `Some(i)` when the header
    /// block runs past [`MAX_HEADER_BLOCK`] at `bytes[i]`.
    fn header_run(&mut self, start: u64, bytes: &[u8]) -> Option<usize> {
        for (i, &b) in bytes.iter().enumerate() {
            let at = start + i as u64;
            if let Some(body) = self.header_octet(b, at) {
                self.in_headers = false;
                self.queued_eoh = Some(body);
                return None;
            }
            if at >= MAX_HEADER_BLOCK as u64 {
                return Some(i);
            }
        }
        None
    }

    /// One octet of the header block at offset `at`; returns where the body
    /// starts when this octet decides it: after a blank line (CRLF or LF),
    /// or at the start of a line that is not a field line (no colon, an
    /// empty name or one with a byte outside `!`..=`~`, a lone CR, a
    /// continuation before any field), as [`super::header`] decides.
    fn header_octet(&mut self, b: u8, at: u64) -> Option<u64> {
        let line_at = self.hdr_line_at;
        match self.hdr {
            Hdr::LineStart => match b {
                b'\n' => return Some(at + 1),
                b'\r' => self.hdr = Hdr::CrAtStart,
                b' ' | b'\t' if self.hdr_field_seen => self.hdr = Hdr::Value,
                b':' => return Some(line_at),
                b'!'..=b'~' => self.hdr = Hdr::Name { wsp: false },
                _ => return Some(line_at),
            },
            Hdr::CrAtStart => {
                return Some(if b == b'\n' { at + 1 } else { line_at });
            }
            Hdr::Name { wsp } => match b {
                b':' => {
                    self.hdr = Hdr::Value;
                    self.hdr_field_seen = true;
                }
                b' ' | b'\t' => self.hdr = Hdr::Name { wsp: true },
                b'!'..=b'~' if !wsp => {}
                _ => return Some(line_at),
            },
            Hdr::Value => {
                if b == b'\n' {
                    self.hdr = Hdr::LineStart;
                    self.hdr_line_at = at + 1;
                }
            }
        }
        None
    }

    /// A NUL at `i` of DATA: the run before it goes out first; then it is
    /// dropped (normalising) or refuses the message.
    fn at_nul<'i>(
        &mut self,
        input: &'i [u8],
        run: &mut usize,
        i: &mut usize,
        normalize: bool,
    ) -> Option<Step<'i>> {
        if *run < *i && (normalize || self.data_error.is_none()) {
            return Some(self.emit(*i, &input[*run..*i]));
        }
        self.line_start = false;
        *i += 1;
        if normalize {
            *run = *i;
        } else {
            self.nul();
        }
        None
    }

    /// A NUL octet in the content: refused unless line endings are
    /// normalised (then the scanner drops it).
    fn nul(&mut self) {
        if self.cfg.bare_line_endings == BareLineEndings::Refuse && self.data_error.is_none() {
            self.data_error = Some(Reason::NulInContent);
        }
    }

    fn bare(&mut self) {
        if self.cfg.bare_line_endings == BareLineEndings::Refuse && self.data_error.is_none() {
            self.data_error = Some(Reason::BareLineEnding);
        }
    }

    fn feed_data<'i>(&mut self, input: &'i [u8]) -> Step<'i> {
        // Runs of a refused message yield no event: keep scanning.
        let mut off = 0;
        loop {
            let rest = input.get(off..).unwrap_or(&[]);
            let step = self.scan_data(rest);
            off += step.consumed;
            if step.event.is_some() || off >= input.len() || self.phase != Phase::Data {
                return Step {
                    consumed: off,
                    event: step.event,
                };
            }
        }
    }

    /// The octet `b` at `i` after a held '.' at line start (or after ".\r"):
    /// the end of the message, a normalised line ending to emit, or `None`
    /// to scan on from `i` with the run starting at `run`.
    fn after_dot(
        &mut self,
        b: u8,
        i: &mut usize,
        run: &mut usize,
        normalize: bool,
    ) -> Option<Step<'static>> {
        let held_cr = self.dot == Dot::HeldCr;
        self.dot = Dot::Clear;
        if !held_cr {
            // A held '.' at line start, never part of a run.
            if b == b'\r' {
                self.dot = Dot::HeldCr;
                *i += 1;
            }
            // Else ".." is a stuffed dot; a '.' before other text is
            // dropped too (RFC 5321 §4.5.2). A bare LF after it is handled
            // as any bare LF.
            *run = *i;
            return None;
        }
        if b == b'\n' {
            // <CRLF>.<CRLF>: the end of the message.
            return Some(self.finish_content(*i + 1));
        }
        // ".\r" then something else: the dot goes, the CR is bare.
        self.bare();
        if normalize {
            return Some(self.emit(*i, b"\r\n"));
        }
        *run = *i;
        None
    }

    /// Scans DATA octets up to the next event: a run to emit as it is, a
    /// normalised line ending, or the end of the message.
    fn scan_data<'i>(&mut self, input: &'i [u8]) -> Step<'i> {
        let normalize = self.cfg.bare_line_endings == BareLineEndings::Normalize;
        let mut run = 0; // start of the octets to emit as they are
        let mut i = 0;
        loop {
            // Inside a line nothing but CR and LF changes the state: skip
            // to the next one (memchr: many octets at a time).
            if self.dot == Dot::Clear && !self.prev_cr && !self.line_start {
                match input
                    .get(i..)
                    .and_then(|r| memchr::memchr3(b'\r', b'\n', 0, r))
                {
                    Some(k) => i += k,
                    None => break,
                }
            }
            let Some(&b) = input.get(i) else {
                break;
            };
            if self.dot != Dot::Clear {
                if let Some(step) = self.after_dot(b, &mut i, &mut run, normalize) {
                    return step;
                }
                continue;
            }
            if self.prev_cr && b != b'\n' {
                // The CR before this octet was bare (and already emitted).
                if run < i && (normalize || self.data_error.is_none()) {
                    // Hand out what came before first, so that the header
                    // accounting (and the events) do not depend on where
                    // the input was split.
                    return self.emit(i, &input[run..i]);
                }
                self.prev_cr = false;
                if normalize {
                    return self.emit(i, b"\n");
                }
                self.bare();
            }
            if b == 0 {
                if let Some(step) = self.at_nul(input, &mut run, &mut i, normalize) {
                    return step;
                }
                continue;
            }
            if self.line_start && b == b'.' {
                if run < i {
                    return self.emit(i, &input[run..i]);
                }
                self.dot = Dot::Held;
                self.line_start = false;
                i += 1;
                run = i;
                continue;
            }
            self.line_start = false;
            if b == b'\n' {
                if self.prev_cr {
                    self.line_start = true;
                } else if normalize {
                    if run < i {
                        return self.emit(i, &input[run..i]);
                    }
                    // A bare LF is stored as CRLF (but starts no line).
                    return self.emit(i + 1, b"\r\n");
                } else if run < i && self.data_error.is_none() {
                    // As for a bare CR: what came before goes out first.
                    return self.emit(i, &input[run..i]);
                } else {
                    self.bare();
                }
            }
            self.prev_cr = b == b'\r';
            i += 1;
        }
        self.emit(input.len(), input.get(run..).unwrap_or(&[]))
    }

    fn feed_bdat<'i>(&mut self, input: &'i [u8]) -> Step<'i> {
        let Phase::Bdat {
            remaining,
            chunk,
            last,
            discard,
        } = self.phase
        else {
            return Step {
                consumed: 0,
                event: None,
            };
        };
        if remaining == 0 {
            return self.finish_chunk(chunk, last, discard);
        }
        let mut n = usize::try_from(remaining)
            .unwrap_or(usize::MAX)
            .min(input.len());
        // A NUL octet: refused, or dropped when normalising (the octets
        // before it go out first, then the NUL alone with no event).
        let mut drop_nul = false;
        if let Some(k) = memchr::memchr(0, input.get(..n).unwrap_or(&[])) {
            if self.cfg.bare_line_endings == BareLineEndings::Normalize {
                drop_nul = k == 0;
                n = k.max(1);
            } else if k > 0 && !discard && self.data_error.is_none() {
                // The octets before it go out first, as in DATA, so that
                // the events do not depend on where the input was split.
                n = k;
            } else if !discard {
                self.nul();
            }
        }
        let left = remaining - n as u64;
        self.phase = Phase::Bdat {
            remaining: left,
            chunk,
            last,
            discard,
        };
        let step = if discard || drop_nul {
            Step {
                consumed: n,
                event: None,
            }
        } else {
            self.emit(n, &input[..n])
        };
        if step.event.is_none() && left == 0 {
            // Nothing to hand out: finish the chunk in this same call.
            return Step {
                consumed: n,
                event: self.finish_chunk(chunk, last, discard).event,
            };
        }
        step
    }

    fn finish_chunk(&mut self, chunk: u64, last: bool, discard: bool) -> Step<'static> {
        self.phase = Phase::Command;
        if discard {
            // The refusal of this chunk: reply now that it is consumed.
            let reason = self.data_error.take().unwrap_or(Reason::BadSequence);
            self.error_reply(reason.reply());
            return Step {
                consumed: 0,
                event: None,
            };
        }
        if last {
            return self.finish_content(0);
        }
        if let Some(reason) = self.data_error {
            self.reset_transaction();
            self.error_reply(reason.reply());
            return Step {
                consumed: 0,
                event: Some(Event::MessageRejected(reason)),
            };
        }
        let mut buf = [0u8; 20];
        let n = fmt_u64(chunk, &mut buf);
        self.write_line(250, Some((2, 0, 0)), &[n, b" octets received"]);
        Step {
            consumed: 0,
            event: None,
        }
    }

    fn finish_content(&mut self, consumed: usize) -> Step<'static> {
        if let Some(reason) = self.data_error {
            self.reset_transaction();
            self.phase = Phase::Command;
            self.error_reply(reason.reply());
            return Step {
                consumed,
                event: Some(Event::MessageRejected(reason)),
            };
        }
        self.phase = Phase::Pending(Pending::Message);
        Step {
            consumed,
            event: Some(Event::MessageEnd { size: self.size }),
        }
    }

    // ---- helpers -------------------------------------------------------

    fn reset_transaction(&mut self) {
        self.mail = false;
        self.smtputf8 = false;
        self.rcpts = 0;
        self.bdat = false;
        self.data_error = None;
    }

    /// Writes the error reply for `reason`, counts it, and returns the event.
    fn refuse(&mut self, reason: Reason) -> Event<'static> {
        self.error_reply(reason.reply());
        Event::Reject(reason)
    }

    fn error_reply(&mut self, reply: Reply<'_>) {
        self.write_reply(reply);
        if reply.closes() {
            self.phase = Phase::Closed;
            return;
        }
        self.errors = self.errors.saturating_add(1);
        if self.errors >= MAX_ERRORS {
            self.write_reply(Reason::TooManyErrors.reply());
            self.phase = Phase::Closed;
        }
    }

    fn write_reply(&mut self, reply: Reply<'_>) {
        if reply.code == 421 {
            // RFC 5321 §3.8: a closing 421 names the server.
            let host = self.cfg.hostname.as_bytes();
            self.write_line(
                reply.code,
                reply.status,
                &[host, b" ", reply.text.as_bytes()],
            );
        } else {
            self.write_line(reply.code, reply.status, &[reply.text.as_bytes()]);
        }
    }

    fn write_line(&mut self, code: u16, status: Option<(u8, u16, u16)>, text: &[&[u8]]) {
        let mut head = [0u8; 24];
        let mut n = 0;
        let mut put = |s: &[u8], n: &mut usize| {
            for &c in s {
                if let Some(slot) = head.get_mut(*n) {
                    *slot = c;
                    *n += 1;
                }
            }
        };
        let mut b = [0u8; 20];
        put(fmt_u64(u64::from(code), &mut b), &mut n);
        put(b" ", &mut n);
        if let Some((c, s, d)) = status {
            put(fmt_u64(u64::from(c), &mut b), &mut n);
            put(b".", &mut n);
            put(fmt_u64(u64::from(s), &mut b), &mut n);
            put(b".", &mut n);
            put(fmt_u64(u64::from(d), &mut b), &mut n);
            put(b" ", &mut n);
        }
        if let Some(h) = head.get(..n) {
            self.write_raw(&[h]);
        }
        // Keep room for the CRLF; the text is cut rather than overflow.
        for part in text {
            let room = self.out.capacity().saturating_sub(self.out.len() + 2);
            let part: &[u8] = part.get(..part.len().min(room)).unwrap_or(&[]);
            // Replies never carry line breaks from the caller's text.
            for &c in part {
                let c = if c == b'\r' || c == b'\n' { b' ' } else { c };
                let _ = self.out.push(c);
            }
        }
        self.write_raw(&[b"\r\n"]);
    }

    fn write_raw(&mut self, parts: &[&[u8]]) {
        for p in parts {
            // The caller checked that MAX_REPLY is free; never overflow.
            let room = self.out.capacity() - self.out.len();
            let p = p.get(..p.len().min(room)).unwrap_or(&[]);
            let _ = self.out.extend_from_slice(p);
        }
    }
}

/// Strips a case-insensitive keyword such as `FROM:`, allowing spaces
/// after the colon (many clients send `MAIL FROM: <a@b>`).
fn strip_keyword<'l>(s: &'l [u8], kw: &[u8]) -> Option<&'l [u8]> {
    let head = s.get(..kw.len())?;
    if !head.eq_ignore_ascii_case(kw) {
        return None;
    }
    let mut rest = &s[kw.len()..];
    while let [b' ', tail @ ..] = rest {
        rest = tail;
    }
    Some(rest)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use proptest::prelude::*;
    use std::format;
    use std::string::String;
    use std::vec::Vec as StdVec;

    fn cfg() -> ReceiverConfig<'static> {
        ReceiverConfig {
            hostname: "mx.test",
            max_message_size: 10_000,
            max_recipients: 3,
            starttls: true,
            tls: false,
            bare_line_endings: BareLineEndings::Refuse,
            auth: false,
            auth_plaintext: false,
        }
    }

    /// What a session did: events (bodies merged), message bodies, replies.
    #[derive(Debug, Default, PartialEq, Eq)]
    struct Log {
        events: StdVec<String>,
        bodies: StdVec<StdVec<u8>>,
        body: StdVec<u8>,
        out: StdVec<u8>,
    }

    impl Log {
        fn replies(&self) -> StdVec<String> {
            String::from_utf8_lossy(&self.out)
                .split("\r\n")
                .filter(|l| !l.is_empty() && l.as_bytes().get(3) != Some(&b'-'))
                .map(|l| {
                    let mut w = l.splitn(3, ' ');
                    let (code, second) = (w.next().unwrap_or(""), w.next().unwrap_or(""));
                    if second.starts_with(|c: char| c.is_ascii_digit()) && second.contains('.') {
                        format!("{code} {second}")
                    } else {
                        l.chars().take(9).collect()
                    }
                })
                .collect()
        }
    }

    /// Drives the receiver over `chunks` like the shell does: decisions are
    /// accepted (a recipient containing "deny" is refused with 550 5.1.1),
    /// output is flushed whenever the engine waits for input.
    fn drive_with(rx: &mut Receiver<'_>, chunks: &[&[u8]], log: &mut Log) {
        for chunk in chunks {
            let mut pos = 0;
            loop {
                let step = rx.feed(&chunk[pos..]);
                pos += step.consumed;
                let Some(ev) = step.event else {
                    log.out.extend_from_slice(rx.output());
                    let n = rx.output().len();
                    rx.output_sent(n);
                    if pos >= chunk.len() || rx.is_closed() || rx.phase == Phase::AwaitTls {
                        break;
                    }
                    continue;
                };
                let name = match ev {
                    Event::Body(b) => {
                        log.body.extend_from_slice(b);
                        continue;
                    }
                    Event::Helo { name, extended } => {
                        format!("helo({},{extended})", String::from_utf8_lossy(name))
                    }
                    Event::Mail(m) => format!(
                        "mail({},{:?},{:?},{})",
                        String::from_utf8_lossy(m.from),
                        m.size,
                        m.body,
                        m.smtputf8
                    ),
                    Event::Rcpt(r) => format!("rcpt({})", String::from_utf8_lossy(r)),
                    Event::EndOfHeaders { body_offset } => format!("eoh({body_offset})"),
                    Event::MessageEnd { size } => format!("end({size})"),
                    other => format!("{other:?}"),
                };
                let deny = name.contains("deny");
                log.events.push(name);
                if rx.is_pending() {
                    if deny {
                        rx.reject(Reply {
                            code: 550,
                            status: Some((5, 1, 1)),
                            text: "No such user",
                        });
                    } else if log.events.last().is_some_and(|e| e.starts_with("end(")) {
                        log.bodies.push(core::mem::take(&mut log.body));
                        rx.accept_message("Q1");
                    } else {
                        rx.accept();
                    }
                }
                if log
                    .events
                    .last()
                    .is_some_and(|e| e.starts_with("MessageRejected"))
                {
                    log.body.clear();
                }
            }
        }
    }

    /// A session of a trusted (originating) client: most tests send a
    /// whole session in one chunk, DATA and its content together.
    fn session(c: ReceiverConfig<'static>, chunks: &[&[u8]]) -> Log {
        session_of(c, chunks, true)
    }

    fn session_of(c: ReceiverConfig<'static>, chunks: &[&[u8]], trusted: bool) -> Log {
        let mut rx = Receiver::new(c);
        rx.trust_pipelining(trusted);
        let mut log = Log::default();
        rx.greet();
        // As the shell does, feed before the first read: Connect comes out
        // whatever the input (even none).
        drive_with(&mut rx, &[b""], &mut log);
        drive_with(&mut rx, chunks, &mut log);
        log
    }

    #[test]
    fn content_before_the_354_closes_an_untrusted_session() {
        let input = cat(&[TXN, b"DATA\r\nSubject: x\r\n\r\nbody\r\n.\r\n"]);
        let log = session_of(cfg(), &[&input], false);
        assert_eq!(log.replies().last().map(String::as_str), Some("554 5.5.0"));
        assert!(log.bodies.is_empty(), "{log:?}");
        assert_eq!(log.events.last().map(String::as_str), Some("Disconnect"));
        // DATA alone, then the content after the 354: accepted.
        let log = session_of(cfg(), &[TXN, b"DATA\r\n", b"body\r\n.\r\n"], false);
        assert_eq!(log.bodies.len(), 1, "{log:?}");
        // A trusted client may send it all at once.
        assert_eq!(session(cfg(), &[&input]).bodies.len(), 1);
    }

    #[test]
    fn a_nul_in_the_content_is_refused_or_dropped() {
        for end in [&b"\r\n\x00.\r\n"[..], b"\r\n.\x00\r\n", b"a\x00b"] {
            let input = cat(&[
                TXN,
                b"DATA\r\n",
                b"Subject: x\r\n\r\nbody",
                end,
                b"more\r\n.\r\n",
            ]);
            let log = session(cfg(), &[&input]);
            assert!(log.bodies.is_empty(), "{log:?}");
            assert_eq!(log.replies().last().map(String::as_str), Some("550 5.6.0"));
            let log = session(proptest_cfg(true), &[&input]);
            assert_eq!(log.bodies.len(), 1, "{log:?}");
            assert!(!log.bodies[0].contains(&0), "{log:?}");
        }
        // BDAT: refused, or dropped.
        let input = cat(&[TXN, b"BDAT 5 LAST\r\na\x00b\r\n"]);
        let log = session(cfg(), &[&input]);
        assert_eq!(log.replies().last().map(String::as_str), Some("550 5.6.0"));
        let log = session(proptest_cfg(true), &[&input]);
        assert_eq!(log.bodies, [b"ab\r\n".to_vec()], "{log:?}");
    }

    #[test]
    fn nul_and_8bit_commands_get_their_own_replies() {
        let input =
            cat(&[b"EHLO c\r\nNOOP a\x00b\r\nHELO h\xc3\xa9\r\nMAIL FROM:<a@x> FOO=\xc3\xa9\r\n"]);
        let r = session(cfg(), &[&input]).replies();
        assert_eq!(
            &r[r.len() - 3..],
            ["500 5.5.2", "501 5.5.2", "555 5.5.4"],
            "{r:?}"
        );
    }

    macro_rules! replies {
        ($input:expr) => {
            session(cfg(), &[$input]).replies()
        };
        ($cfg:expr, $input:expr) => {
            session($cfg, &[$input]).replies()
        };
    }

    const HELLO: &[u8] = b"EHLO c.test\r\n";
    const TXN: &[u8] = b"EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n";

    fn cat(parts: &[&[u8]]) -> StdVec<u8> {
        parts.concat()
    }

    // ---- greeting and EHLO ---------------------------------------------

    #[test]
    fn greeting_and_ehlo_advertise_the_extensions() {
        let log = session(cfg(), &[HELLO]);
        let out = String::from_utf8_lossy(&log.out);
        assert!(out.starts_with("220 mx.test ESMTP sluice\r\n250-mx.test\r\n"));
        for ext in [
            "PIPELINING",
            "SIZE 10000",
            "8BITMIME",
            "SMTPUTF8",
            "CHUNKING",
            "STARTTLS",
            "ENHANCEDSTATUSCODES",
        ] {
            assert!(out.contains(ext), "{ext} missing in {out}");
        }
        let mut c = cfg();
        c.starttls = false;
        let out = session(c, &[HELLO]).out;
        assert!(!String::from_utf8_lossy(&out).contains("STARTTLS"));
    }

    #[test]
    fn helo_needs_a_name() {
        assert_eq!(
            replies!(b"HELO\r\nHELO c\r\n"),
            ["220 mx.te", "501 5.5.4", "250 mx.te"]
        );
    }

    // ---- sequence errors -----------------------------------------------

    #[test]
    fn bad_sequences_get_503() {
        assert_eq!(replies!(b"MAIL FROM:<a@x.test>\r\n")[1], "503 5.5.1");
        assert_eq!(
            replies!(b"EHLO c\r\nRCPT TO:<b@y.test>\r\n")[2],
            "503 5.5.1"
        );
        assert_eq!(replies!(b"EHLO c\r\nDATA\r\n")[2], "503 5.5.1");
        let nested = cat(&[TXN, b"MAIL FROM:<c@x.test>\r\n"]);
        assert_eq!(replies!(&nested)[4], "503 5.5.1");
    }

    #[test]
    fn data_without_an_accepted_recipient_is_554() {
        let r = replies!(b"EHLO c\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<deny@y.test>\r\nDATA\r\n");
        assert_eq!(r[2..], ["250 2.1.0", "550 5.1.1", "554 5.5.1"]);
    }

    #[test]
    fn unknown_and_unimplemented_commands() {
        assert_eq!(
            replies!(b"FOO\r\nEXPN list\r\nVRFY x\r\nHELP\r\nNOOP\r\n")[1..],
            [
                "500 5.5.2",
                "502 5.5.1",
                "252 2.5.0",
                "214 2.0.0",
                "250 2.0.0"
            ]
        );
    }

    #[test]
    fn an_overlong_line_is_refused_and_the_session_goes_on() {
        let mut input = StdVec::from(&b"NOOP "[..]);
        input.extend(core::iter::repeat_n(b'x', MAX_COMMAND_LINE + 10));
        input.extend_from_slice(b"\r\nNOOP\r\n");
        assert_eq!(replies!(&input)[1..], ["500 5.5.2", "250 2.0.0"]);
    }

    #[test]
    fn too_many_errors_close_the_session() {
        let input = b"BAD\r\n".repeat(25);
        let r = replies!(&input);
        assert_eq!(r.len(), 1 + MAX_ERRORS as usize + 1);
        assert_eq!(r.last().map(String::as_str), Some("421 4.7.0"));
    }

    // ---- MAIL and RCPT -------------------------------------------------

    #[test]
    fn mail_parameters() {
        let log = session(
            cfg(),
            &[b"EHLO c\r\nMAIL FROM: <a@x.test> SIZE=100 BODY=8BITMIME\r\n"],
        );
        assert_eq!(log.events[2], "mail(a@x.test,Some(100),EightBitMime,false)");
        assert_eq!(
            replies!(b"EHLO c\r\nMAIL FROM:<a@x.test> SIZE=10001\r\n")[2],
            "552 5.3.4"
        );
        assert_eq!(
            replies!(b"EHLO c\r\nMAIL FROM:<a@x.test> RET=FULL\r\n")[2],
            "555 5.5.4"
        );
        assert_eq!(
            replies!(b"EHLO c\r\nMAIL FROM:<a@x.test> SIZE=1 SIZE=2\r\n")[2],
            "501 5.5.4"
        );
        assert_eq!(
            replies!(b"EHLO c\r\nMAIL FROM:a@x.test\r\n")[2],
            "501 5.1.7"
        );
        assert_eq!(
            replies!(b"EHLO c\r\nMAIL TO:<a@x.test>\r\n")[2],
            "501 5.5.4"
        );
        let log = session(cfg(), &[b"EHLO c\r\nMAIL FROM:<>\r\n"]);
        assert_eq!(log.events[2], "mail(,None,SevenBit,false)");
    }

    #[test]
    fn source_routes_are_dropped_and_postmaster_is_a_recipient() {
        let log = session(
            cfg(),
            &[b"EHLO c\r\nMAIL FROM:<@r.test:a@x.test>\r\nRCPT TO:<Postmaster>\r\n"],
        );
        assert_eq!(log.events[2], "mail(a@x.test,None,SevenBit,false)");
        assert_eq!(log.events[3], "rcpt(Postmaster)");
    }

    #[test]
    fn rcpt_errors() {
        assert_eq!(
            replies!(&cat(&[TXN, b"RCPT TO:<bad address@y>\r\n"]))[4],
            "501 5.1.3"
        );
        assert_eq!(
            replies!(&cat(&[TXN, b"RCPT TO:<c@y.test> NOTIFY=NEVER\r\n"]))[4],
            "555 5.5.4"
        );
        assert_eq!(replies!(&cat(&[TXN, b"RCPT TO:<>\r\n"]))[4], "501 5.1.3");
    }

    #[test]
    fn utf8_addresses_need_smtputf8() {
        let r = replies!("EHLO c\r\nMAIL FROM:<jösé@exämple.test>\r\n".as_bytes());
        assert_eq!(r[2], "553 5.6.7");
        let log = session(
            cfg(),
            &[
                "EHLO c\r\nMAIL FROM:<jösé@exämple.test> SMTPUTF8\r\nRCPT TO:<ü@y.test>\r\n"
                    .as_bytes(),
            ],
        );
        assert_eq!(log.replies()[2..], ["250 2.1.0", "250 2.1.5"]);
    }

    #[test]
    fn the_recipient_limit_is_452() {
        let input = cat(&[
            TXN,
            b"RCPT TO:<c@y.test>\r\nRCPT TO:<d@y.test>\r\nRCPT TO:<e@y.test>\r\n",
        ]);
        assert_eq!(
            replies!(&input)[3..],
            ["250 2.1.5", "250 2.1.5", "250 2.1.5", "452 4.5.3"]
        );
    }

    // ---- DATA ----------------------------------------------------------

    #[test]
    fn data_is_dot_unstuffed_and_headers_end_is_reported() {
        let log = session(
            cfg(),
            &[TXN, b"DATA\r\nSubject: x\r\n\r\n..a\r\n.b\r\n.\r\nQUIT\r\n"],
        );
        assert_eq!(log.bodies, [b"Subject: x\r\n\r\n.a\r\nb\r\n".to_vec()]);
        assert!(log.events.contains(&"eoh(14)".into()), "{:?}", log.events);
        assert_eq!(log.replies()[4..], ["354 End d", "250 2.0.0", "221 2.0.0"]);
    }

    #[test]
    fn a_line_that_is_not_a_field_ends_the_headers_there() {
        // No blank line: the body starts at the first line without a colon
        // (as the header scanner and Postfix's cleanup say), so a long body
        // is not refused as an oversized header block.
        let mut msg = b"Subject: x\r\nthis is body\r\n".to_vec();
        msg.extend(b"more body\r\n".repeat(12_000));
        let mut c = cfg();
        c.max_message_size = 1 << 20;
        let log = session(c, &[TXN, b"DATA\r\n", &msg, b".\r\n"]);
        assert!(
            log.events.contains(&"eoh(12)".into()),
            "{:?}",
            &log.events[..5]
        );
        assert_eq!(log.bodies, [msg]);
        assert_eq!(&log.replies()[4..], ["354 End d", "250 2.0.0"]);
    }

    #[test]
    fn an_empty_message_and_a_message_without_headers() {
        let log = session(cfg(), &[TXN, b"DATA\r\n.\r\nDATA\r\n"]);
        assert_eq!(log.bodies, [StdVec::<u8>::new()]);
        let log = session(cfg(), &[TXN, b"DATA\r\n\r\nbody\r\n.\r\n"]);
        assert!(log.events.contains(&"eoh(2)".into()));
    }

    #[test]
    fn only_crlf_dot_crlf_ends_data() {
        for fake in [
            &b"\n.\r\n"[..],
            b"\r.\r\n",
            b"\n.\n",
            b"\r\n.\n",
            b"\n.\r",
            b"\r\n.\r",
        ] {
            let smuggle = cat(&[
                b"DATA\r\nSubject: s\r\n\r\nhi",
                fake,
                b"MAIL FROM:<evil@x.test>\r\nRCPT TO:<v@y.test>\r\nDATA\r\nsmuggled\r\n.\r\n",
            ]);
            let log = session(cfg(), &[TXN, &smuggle]);
            assert_eq!(log.replies()[4..], ["354 End d", "550 5.6.11"], "{fake:?}");
            assert!(log.bodies.is_empty());
            let mut c = cfg();
            c.bare_line_endings = BareLineEndings::Normalize;
            let log = session(c, &[TXN, &smuggle]);
            assert_eq!(log.replies()[4..], ["354 End d", "250 2.0.0"], "{fake:?}");
            assert_eq!(log.bodies.len(), 1);
            let body = String::from_utf8_lossy(&log.bodies[0]).into_owned();
            assert!(
                body.contains("MAIL FROM:<evil@x.test>\r\n") && body.contains("smuggled"),
                "{body:?}"
            );
            assert!(
                !body.contains("\r\r") && !body.replace("\r\n", "").contains('\n'),
                "{body:?}"
            );
        }
    }

    #[test]
    fn the_size_limit_reads_to_the_end_then_refuses() {
        let big = [
            &b"DATA\r\n"[..],
            &b"0123456789\r\n".repeat(1000),
            b".\r\nNOOP\r\n",
        ]
        .concat();
        let log = session(cfg(), &[TXN, &big]);
        assert_eq!(log.replies()[4..], ["354 End d", "552 5.3.4", "250 2.0.0"]);
        assert!(log.events.iter().any(|e| e.contains("TooBig")));
    }

    #[test]
    fn the_header_block_limit() {
        let mut c = cfg();
        c.max_message_size = 1 << 20;
        let hdr = b"X-Long: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n".repeat(1100);
        let log = session(c, &[TXN, b"DATA\r\n", &hdr, b"\r\nbody\r\n.\r\n"]);
        assert_eq!(log.replies()[4..], ["354 End d", "552 5.3.4"]);
    }

    // ---- BDAT ----------------------------------------------------------

    #[test]
    fn bdat_chunks_are_taken_verbatim() {
        let log = session(
            cfg(),
            &[TXN, b"BDAT 9\r\nab\r\n.\r\ncdBDAT 3 LAST\r\nxyzQUIT\r\n"],
        );
        assert_eq!(log.bodies, [b"ab\r\n.\r\ncdxyz".to_vec()]);
        assert_eq!(log.replies()[4..], ["250 2.0.0", "250 2.0.0", "221 2.0.0"]);
        let log = session(cfg(), &[TXN, b"BDAT 0 LAST\r\n"]);
        assert_eq!(log.bodies, [StdVec::<u8>::new()]);
    }

    /// The content handed out before a message is refused.
    fn content_before_refusal(c: ReceiverConfig<'static>, chunks: &[&[u8]]) -> StdVec<u8> {
        let mut rx = Receiver::new(c);
        rx.trust_pipelining(true);
        rx.greet();
        let mut seen = StdVec::new();
        for chunk in chunks {
            let mut pos = 0;
            loop {
                let step = rx.feed(&chunk[pos..]);
                pos += step.consumed;
                match step.event {
                    Some(Event::Body(b)) => seen.extend_from_slice(b),
                    Some(Event::Mail(_) | Event::Rcpt(_)) => rx.accept(),
                    Some(_) => {}
                    None if pos >= chunk.len() => break,
                    None => {}
                }
                let n = rx.output().len();
                rx.output_sent(n);
            }
        }
        seen
    }

    #[test]
    fn content_up_to_a_limit_is_handed_out_however_it_is_split() {
        // Found by the receiver fuzz target: fed whole, a run that crossed
        // the size limit was dropped whole; octet by octet, its octets up
        // to the limit went out first.
        let small = ReceiverConfig {
            max_message_size: 10,
            ..cfg()
        };
        let input = cat(&[TXN, b"DATA\r\nA: 1\r\n\r\nbody text\r\n.\r\n"]);
        let octets: StdVec<&[u8]> = input.chunks(1).collect();
        let whole = content_before_refusal(small, &[&input]);
        assert_eq!(whole, b"A: 1\r\n\r\nbo");
        assert_eq!(content_before_refusal(small, &octets), whole);
        // The header block's bound, the same way.
        let long = cat(&[
            TXN,
            b"DATA\r\nX: ",
            &[b'a'; MAX_HEADER_BLOCK],
            b"\r\n\r\n.\r\n",
        ]);
        let big = ReceiverConfig {
            max_message_size: 10_000_000,
            ..cfg()
        };
        let whole = content_before_refusal(big, &[&long]);
        assert_eq!(whole.len(), MAX_HEADER_BLOCK);
        let octets: StdVec<&[u8]> = long.chunks(1).collect();
        assert_eq!(content_before_refusal(big, &octets), whole);
    }

    #[test]
    fn a_nul_in_bdat_is_refused_alike_however_the_chunk_is_split() {
        // Found by the receiver fuzz target: whole, "x" was never handed
        // out; octet by octet it was, before the refusal.
        let input = cat(&[TXN, b"BDAT 3 LAST\r\nx\0y"]);
        let whole = content_before_refusal(cfg(), &[&input]);
        let octets: StdVec<&[u8]> = input.chunks(1).collect();
        assert_eq!(whole, b"x");
        assert_eq!(content_before_refusal(cfg(), &octets), whole);
        let r = replies!(
            b"EHLO c\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nBDAT 3 LAST\r\nx\0yQUIT\r\n"
        );
        assert_eq!(r[4..], ["550 5.6.0", "221 2.0.0"]);
    }

    #[test]
    fn a_refused_bdat_chunk_is_consumed() {
        let r = replies!(b"EHLO c\r\nBDAT 5\r\nNOOP\rNOOP\r\n");
        assert_eq!(r[2..], ["503 5.5.1", "250 2.0.0"]);
        let r = replies!(b"EHLO c\r\nMAIL FROM:<a@x.test>\r\nBDAT 4 LAST\r\nQUITNOOP\r\n");
        assert_eq!(r[2..], ["250 2.1.0", "554 5.5.1", "250 2.0.0"]);
    }

    #[test]
    fn bdat_syntax_errors_close_and_data_after_bdat_is_refused() {
        let r = replies!(&cat(&[TXN, b"BDAT x\r\nNOOP\r\n"]));
        assert_eq!(r[4..], ["501 5.5.4"]);
        let r = replies!(&cat(&[TXN, b"BDAT 1\r\nxDATA\r\n"]));
        assert_eq!(r[4..], ["250 2.0.0", "503 5.5.1"]);
    }

    // ---- STARTTLS ------------------------------------------------------

    #[test]
    fn starttls_stops_reading_and_the_session_starts_over() {
        let mut rx = Receiver::new(cfg());
        let mut log = Log::default();
        rx.greet();
        // Pipelined cleartext after STARTTLS must never be executed.
        drive_with(
            &mut rx,
            &[b"EHLO c\r\nSTARTTLS\r\nMAIL FROM:<inject@x.test>\r\n"],
            &mut log,
        );
        assert_eq!(log.events.last().map(String::as_str), Some("StartTls"));
        assert_eq!(log.replies()[2], "220 2.0.0");
        assert_eq!(log.replies().len(), 3);
        rx.tls_established();
        drive_with(
            &mut rx,
            &[b"MAIL FROM:<a@x.test>\r\nEHLO c\r\nSTARTTLS\r\n"],
            &mut log,
        );
        assert_eq!(log.replies()[3..], ["503 5.5.1", "250 ENHAN", "503 5.5.1"]);
        assert!(!String::from_utf8_lossy(&log.out).ends_with("STARTTLS\r\n"));
    }

    #[test]
    fn starttls_when_not_offered_or_with_arguments() {
        let mut c = cfg();
        c.starttls = false;
        assert_eq!(replies!(c, b"EHLO c\r\nSTARTTLS\r\n")[2], "502 5.5.1");
        assert_eq!(replies!(b"EHLO c\r\nSTARTTLS now\r\n")[2], "501 5.5.4");
    }

    // ---- pipelining and output -----------------------------------------

    #[test]
    fn a_long_pipelined_burst_is_answered_in_order() {
        let input = b"NOOP\r\n".repeat(600);
        let r = replies!(&input);
        assert_eq!(r.len(), 601);
        assert!(r[1..].iter().all(|l| l == "250 2.0.0"));
    }

    #[test]
    fn nothing_is_read_while_a_decision_is_pending() {
        let mut rx = Receiver::new(cfg());
        rx.greet();
        let input = b"EHLO c\r\nMAIL FROM:<a@x.test>\r\nNOOP\r\n";
        let s = rx.feed(input);
        assert_eq!((s.consumed, s.event), (0, Some(Event::Connect)));
        let s = rx.feed(input);
        let n = s.consumed;
        let s = rx.feed(&input[n..]);
        let n2 = s.consumed;
        assert!(matches!(s.event, Some(Event::Mail(_))));
        let s = rx.feed(&input[n + n2..]);
        assert_eq!((s.consumed, s.event), (0, None));
        rx.accept();
        let s = rx.feed(&input[n + n2..]);
        assert_eq!(s.event, Some(Event::Noop));
    }

    // ---- connect and disconnect ----------------------------------------

    fn count(log: &Log, event: &str) -> usize {
        log.events.iter().filter(|e| *e == event).count()
    }

    #[test]
    fn connect_is_the_first_event_and_comes_once() {
        let mut rx = Receiver::new(cfg());
        // Nothing before the greeting.
        assert_eq!(rx.feed(b"").event, None);
        rx.greet();
        rx.greet();
        let s = rx.feed(b"NOOP\r\n");
        assert_eq!((s.consumed, s.event), (0, Some(Event::Connect)));
        // The greeting is still queued when Connect is handed out.
        assert_eq!(rx.output(), b"220 mx.test ESMTP sluice\r\n");
        let s = rx.feed(b"NOOP\r\n");
        assert_eq!(s.event, Some(Event::Noop));
        assert_eq!(rx.feed(b"").event, None);
        let log = session(cfg(), &[TXN]);
        assert_eq!(log.events[..2], ["Connect", "helo(c.test,true)"]);
        assert_eq!(count(&log, "Connect"), 1);
    }

    #[test]
    fn disconnect_comes_once_after_quit() {
        let mut rx = Receiver::new(cfg());
        rx.greet();
        let input = b"NOOP\r\nQUIT\r\nNOOP\r\n";
        let mut pos = 0;
        let mut events = StdVec::new();
        for _ in 0..10 {
            let s = rx.feed(&input[pos..]);
            pos += s.consumed;
            let event = s.event.map(|e| format!("{e:?}"));
            if event.as_deref() == Some("Disconnect") {
                // QUIT's reply is queued before the session ends.
                assert!(rx.output().ends_with(b"221 2.0.0 Bye\r\n"));
            }
            events.extend(event);
        }
        assert_eq!(events, ["Connect", "Noop", "Quit", "Disconnect"]);
        assert_eq!(pos, 12, "nothing is read after QUIT");
        assert!(rx.is_closed());
        // Closing again changes nothing.
        rx.connection_lost();
        rx.close_with(Reason::Timeout.reply());
        assert_eq!(rx.feed(b"").event, None);
        let log = session(cfg(), &[TXN, b"QUIT\r\n", b"NOOP\r\n"]);
        assert_eq!(log.events[log.events.len() - 2..], ["Quit", "Disconnect"]);
        assert_eq!(count(&log, "Disconnect"), 1);
    }

    #[test]
    fn disconnect_comes_once_after_too_many_errors() {
        let log = session(cfg(), &[&b"BAD\r\n".repeat(25)]);
        assert_eq!(log.events.last().map(String::as_str), Some("Disconnect"));
        assert_eq!(count(&log, "Disconnect"), 1);
        assert_eq!(count(&log, "Reject(Unrecognized)"), MAX_ERRORS as usize);
        // A refused BDAT chunk is answered once read; the 20th error closes
        // the session in the same step, which hands out Disconnect.
        let mut input = b"BAD\r\n".repeat(MAX_ERRORS as usize - 1);
        input.extend_from_slice(b"EHLO c\r\nBDAT 5\r\nEHLO c\r\n");
        let log = session(cfg(), &[&input]);
        assert_eq!(
            log.events[log.events.len() - 2..],
            ["Reject(NeedMail)", "Disconnect"]
        );
        assert_eq!(log.replies().last().map(String::as_str), Some("421 4.7.0"));
        // A BDAT without a valid size closes too.
        let log = session(cfg(), &[TXN, b"BDAT x\r\n"]);
        assert_eq!(
            log.events[log.events.len() - 2..],
            ["Reject(Syntax)", "Disconnect"]
        );
    }

    #[test]
    fn no_disconnect_while_the_session_is_open() {
        let input = cat(&[TXN, b"DATA\r\nSubject: x\r\n\r\nhi\r\n.\r\nRSET\r\nBAD\r\n"]);
        let log = session(cfg(), &[&input, b"", b"NOOP\r\n"]);
        assert_eq!(count(&log, "Disconnect"), 0, "{:?}", log.events);
        assert_eq!(log.events.last().map(String::as_str), Some("Noop"));
        // Waiting for a decision, or for the TLS handshake, is not the end.
        let mut rx = Receiver::new(cfg());
        rx.greet();
        let mut log = Log::default();
        drive_with(&mut rx, &[b"EHLO c\r\nSTARTTLS\r\n"], &mut log);
        for _ in 0..3 {
            assert_eq!(rx.feed(b"").event, None);
        }
        assert!(!rx.is_closed());
    }

    #[test]
    fn disconnect_after_close_with_or_a_lost_connection() {
        let mut rx = Receiver::new(cfg());
        rx.greet();
        assert_eq!(rx.feed(b"").event, Some(Event::Connect));
        rx.close_with(Reason::Timeout.reply());
        assert!(String::from_utf8_lossy(rx.output()).contains("\r\n421 4.4.2 mx.test "));
        assert_eq!(rx.feed(b"NOOP\r\n").event, Some(Event::Disconnect));
        assert_eq!(rx.feed(b"NOOP\r\n").event, None);

        // The client goes away in the middle of a message.
        let mut rx = Receiver::new(cfg());
        rx.trust_pipelining(true);
        rx.greet();
        let mut log = Log::default();
        drive_with(&mut rx, &[TXN, b"DATA\r\nSubject: x\r\n"], &mut log);
        assert!(rx.in_data());
        rx.connection_lost();
        assert!(rx.is_closed() && rx.output().is_empty());
        let s = rx.feed(b"\r\n.\r\n");
        assert_eq!((s.consumed, s.event), (0, Some(Event::Disconnect)));
        rx.connection_lost();
        assert_eq!(rx.feed(b"").event, None);

        // Connect still comes first when the session is closed at once.
        let mut rx = Receiver::new(cfg());
        rx.greet();
        rx.close_with(Reason::ShuttingDown.reply());
        assert_eq!(rx.feed(b"").event, Some(Event::Connect));
        assert_eq!(rx.feed(b"").event, Some(Event::Disconnect));
        assert_eq!(rx.feed(b"").event, None);
    }

    // ---- properties ----------------------------------------------------

    const HEADER_PIECES: [&[u8]; 14] = [
        b"Subject: x",
        b"X-A:1",
        b"\r\n",
        b"\n",
        b"\r",
        b" folded",
        b"\t",
        b"no colon",
        b"a",
        b":",
        b"Name :v",
        b"\xc3\xa9",
        b"\x00",
        b".",
    ];

    fn proptest_cfg(normalize: bool) -> ReceiverConfig<'static> {
        let mut c = cfg();
        c.starttls = false; // STARTTLS discards input by design
        c.max_message_size = 2000;
        if normalize {
            c.bare_line_endings = BareLineEndings::Normalize;
        }
        c
    }

    /// Inputs that look like SMTP: command words, dots, CR, LF and noise.
    fn smtpish() -> impl Strategy<Value = StdVec<u8>> {
        let atoms = prop_oneof![
            Just(b"EHLO c\r\n".to_vec()),
            Just(b"MAIL FROM:<a@x.test>\r\n".to_vec()),
            Just(b"RCPT TO:<b@y.test>\r\n".to_vec()),
            Just(b"DATA\r\n".to_vec()),
            Just(b"BDAT 5\r\n".to_vec()),
            Just(b"BDAT 3 LAST\r\n".to_vec()),
            Just(b"\r\n.\r\n".to_vec()),
            Just(b"\r\n".to_vec()),
            Just(b".".to_vec()),
            Just(b"\r".to_vec()),
            Just(b"\n".to_vec()),
            Just(b"RSET\r\n".to_vec()),
            proptest::collection::vec(any::<u8>(), 0..12),
        ];
        proptest::collection::vec(atoms, 0..40).prop_map(|v| v.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        #[test]
        fn arbitrary_bytes_never_panic(input in proptest::collection::vec(any::<u8>(), 0..3000), normalize: bool) {
            let log = session(proptest_cfg(normalize), &[&input]);
            // Connect first and once; Disconnect at most once, and last.
            prop_assert_eq!(log.events.first().map(String::as_str), Some("Connect"));
            prop_assert_eq!(count(&log, "Connect"), 1);
            let ends = count(&log, "Disconnect");
            prop_assert!(ends <= 1, "{:?}", log.events);
            if ends == 1 {
                prop_assert_eq!(log.events.last().map(String::as_str), Some("Disconnect"));
            }
        }

        #[test]
        fn splitting_the_input_changes_nothing(input in smtpish(), cut in any::<prop::sample::Index>(), cut2 in any::<prop::sample::Index>(), normalize: bool) {
            let whole = session(proptest_cfg(normalize), &[&input]);
            let (a, b) = (cut.index(input.len() + 1), cut2.index(input.len() + 1));
            let (a, b) = (a.min(b), a.max(b));
            let split = session(proptest_cfg(normalize), &[&input[..a], &input[a..b], &input[b..]]);
            prop_assert_eq!(&whole.events, &split.events);
            prop_assert_eq!(&whole.bodies, &split.bodies);
            prop_assert_eq!(&whole.out, &split.out);
            // Byte by byte, the hardest split of all.
            let bytes: StdVec<&[u8]> = input.chunks(1).collect();
            let one = session(proptest_cfg(normalize), &bytes);
            prop_assert_eq!(&whole.events, &one.events);
            prop_assert_eq!(&whole.bodies, &one.bodies);
        }

        #[test]
        fn the_end_of_headers_agrees_with_the_header_scanner(
            parts in proptest::collection::vec(0..HEADER_PIECES.len(), 0..40),
            cut in any::<prop::sample::Index>(),
        ) {
            let body: StdVec<u8> = parts.iter().flat_map(|&i| HEADER_PIECES[i].iter().copied()).collect();
            let input = cat(&[TXN, b"DATA\r\n", &body, b"\r\n.\r\n"]);
            let at = cut.index(input.len() + 1);
            let log = session(proptest_cfg(true), &[&input[..at], &input[at..]]);
            prop_assume!(log.bodies.len() == 1);
            let stored = &log.bodies[0];
            let scanner = crate::engine::header::end_of_headers(stored, true);
            let eoh = log.events.iter().find_map(|e| e.strip_prefix("eoh(")
                .and_then(|r| r.strip_suffix(')')).and_then(|n| n.parse::<usize>().ok()));
            match eoh {
                Some(off) => prop_assert_eq!(Some(off), scanner, "{:?}", stored),
                // No end seen: every line was a field, up to the end.
                None => prop_assert_eq!(Some(stored.len()), scanner, "{:?}", stored),
            }
        }

        #[test]
        fn a_stored_body_never_holds_a_bare_line_ending_when_normalizing(body in proptest::collection::vec(prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'.'), Just(b'a')], 0..200)) {
            let input = cat(&[TXN, b"DATA\r\n", &body, b"\r\n.\r\n"]);
            let log = session(proptest_cfg(true), &[&input]);
            for b in &log.bodies {
                let s = String::from_utf8_lossy(b).replace("\r\n", "");
                prop_assert!(!s.contains('\r') && !s.contains('\n'), "{:?}", b);
            }
        }
    }
}
