//! The milter protocol, MTA side: version 6 as libmilter and Postfix speak
//! it (Sendmail 8.14's `mfdef.h`). Sans-IO and allocation-free: the shell
//! encodes each [`Command`] into a buffer it owns, feeds the octets a milter
//! sent to [`parse`], and asks [`step`] what a [`Response`] means at the
//! stage the conversation is at.
//!
//! A packet is a four-octet big-endian length (command octet plus data),
//! the command octet, then the data. Strings are NUL-terminated. A length
//! over [`MAX_MILTER_PACKET`] or a malformed packet is a [`MilterError`],
//! never a panic: the shell then follows the milter's `on_failure`.

use super::limits::{MAX_MILTER_PACKET, MILTER_MACRO_STAGES};
use core::fmt;

/// The protocol version sluice speaks (and offers in negotiation).
pub const VERSION: u32 = 6;
/// The oldest milter version still accepted (libmilter 8.13's is 2).
pub const OLDEST_VERSION: u32 = 2;

/// The command octets an MTA sends (`SMFIC_*`).
pub mod cmd {
    /// Option negotiation.
    pub const OPTNEG: u8 = b'O';
    /// Macros for the command that follows.
    pub const MACRO: u8 = b'D';
    /// Connection information.
    pub const CONNECT: u8 = b'C';
    /// HELO/EHLO name.
    pub const HELO: u8 = b'H';
    /// MAIL FROM and its ESMTP arguments.
    pub const MAIL: u8 = b'M';
    /// RCPT TO and its ESMTP arguments.
    pub const RCPT: u8 = b'R';
    /// DATA.
    pub const DATA: u8 = b'T';
    /// One header field.
    pub const HEADER: u8 = b'L';
    /// End of the header block.
    pub const EOH: u8 = b'N';
    /// A body chunk.
    pub const BODY: u8 = b'B';
    /// End of message: modifications and the final verdict follow.
    pub const BODYEOB: u8 = b'E';
    /// The message is abandoned; the connection (SMTP session) goes on.
    pub const ABORT: u8 = b'A';
    /// Close the milter session.
    pub const QUIT: u8 = b'Q';
    /// Close the milter session, a new one follows on the same socket.
    pub const QUIT_NC: u8 = b'K';
}

/// The reply octets a milter sends (`SMFIR_*`).
pub mod rsp {
    /// Add a recipient.
    pub const ADDRCPT: u8 = b'+';
    /// Delete a recipient.
    pub const DELRCPT: u8 = b'-';
    /// Add a recipient with ESMTP arguments.
    pub const ADDRCPT_PAR: u8 = b'2';
    /// The milter shuts down (421).
    pub const SHUTDOWN: u8 = b'4';
    /// Accept the message; no more events for it.
    pub const ACCEPT: u8 = b'a';
    /// Replace the body (a chunk of the new one).
    pub const REPLBODY: u8 = b'b';
    /// Go on.
    pub const CONTINUE: u8 = b'c';
    /// Accept and silently drop the message.
    pub const DISCARD: u8 = b'd';
    /// Change the envelope sender.
    pub const CHGFROM: u8 = b'e';
    /// The milter's connection failed (tempfail).
    pub const CONN_FAIL: u8 = b'f';
    /// Append a header field.
    pub const ADDHEADER: u8 = b'h';
    /// Insert a header field at an index.
    pub const INSHEADER: u8 = b'i';
    /// Change (or delete, empty value) the n-th field of a name.
    pub const CHGHEADER: u8 = b'm';
    /// Still working: reset the timeout.
    pub const PROGRESS: u8 = b'p';
    /// Quarantine the message, with a reason.
    pub const QUARANTINE: u8 = b'q';
    /// Reject (5xx).
    pub const REJECT: u8 = b'r';
    /// Send no more body chunks.
    pub const SKIP: u8 = b's';
    /// Temporary failure (4xx).
    pub const TEMPFAIL: u8 = b't';
    /// Reject or tempfail with this reply text.
    pub const REPLYCODE: u8 = b'y';
}

/// Action flags (`SMFIF_*`): which modifications a milter may make.
pub mod act {
    /// Add header fields.
    pub const ADDHDRS: u32 = 0x01;
    /// Replace the body.
    pub const CHGBODY: u32 = 0x02;
    /// Add recipients.
    pub const ADDRCPT: u32 = 0x04;
    /// Delete recipients.
    pub const DELRCPT: u32 = 0x08;
    /// Change or delete header fields (insert too).
    pub const CHGHDRS: u32 = 0x10;
    /// Quarantine.
    pub const QUARANTINE: u32 = 0x20;
    /// Change the envelope sender.
    pub const CHGFROM: u32 = 0x40;
    /// Add recipients with ESMTP arguments.
    pub const ADDRCPT_PAR: u32 = 0x80;
    /// Ask for macro lists per stage.
    pub const SETSYMLIST: u32 = 0x100;
    /// Every action sluice carries out (offered in negotiation).
    pub const ALL: u32 = 0x1FF;
}

/// Protocol flags (`SMFIP_*`): the stages a milter wants left out
/// (`NO*`) and the ones it will not answer (`NR_*`).
pub mod proto {
    /// No connect event.
    pub const NOCONNECT: u32 = 0x01;
    /// No HELO event.
    pub const NOHELO: u32 = 0x02;
    /// No MAIL event.
    pub const NOMAIL: u32 = 0x04;
    /// No RCPT event.
    pub const NORCPT: u32 = 0x08;
    /// No body chunks.
    pub const NOBODY: u32 = 0x10;
    /// No header fields.
    pub const NOHDRS: u32 = 0x20;
    /// No end-of-headers event.
    pub const NOEOH: u32 = 0x40;
    /// No reply to header fields.
    pub const NR_HDR: u32 = 0x80;
    /// No unknown-command events.
    pub const NOUNKNOWN: u32 = 0x100;
    /// No DATA event.
    pub const NODATA: u32 = 0x200;
    /// The milter may answer a body chunk with SKIP.
    pub const SKIP: u32 = 0x400;
    /// Rejected recipients too (sluice sends only accepted ones and does
    /// not offer it).
    pub const RCPT_REJ: u32 = 0x800;
    /// No reply to connect.
    pub const NR_CONN: u32 = 0x1000;
    /// No reply to HELO.
    pub const NR_HELO: u32 = 0x2000;
    /// No reply to MAIL.
    pub const NR_MAIL: u32 = 0x4000;
    /// No reply to RCPT.
    pub const NR_RCPT: u32 = 0x8000;
    /// No reply to DATA.
    pub const NR_DATA: u32 = 0x10000;
    /// No reply to unknown commands.
    pub const NR_UNKN: u32 = 0x20000;
    /// No reply to end of headers.
    pub const NR_EOH: u32 = 0x40000;
    /// No reply to body chunks.
    pub const NR_BODY: u32 = 0x80000;
    /// Header values keep their leading space, both ways.
    pub const HDR_LEADSPC: u32 = 0x100000;
    /// What sluice offers: every step may be left out or left unanswered,
    /// SKIP, and leading spaces (not RCPT_REJ, not larger data sizes).
    pub const OFFERED: u32 = 0x1F_FFFF & !RCPT_REJ;
}

/// A stage of the milter conversation: what was last sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Stage {
    /// Option negotiation.
    Negotiate,
    /// Connection information.
    Connect,
    /// HELO.
    Helo,
    /// MAIL.
    Mail,
    /// RCPT.
    Rcpt,
    /// DATA.
    Data,
    /// A header field.
    Header,
    /// End of headers.
    EndOfHeaders,
    /// A body chunk.
    Body,
    /// End of message.
    EndOfMessage,
}

impl Stage {
    /// The stage's name, for logs and traces.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Negotiate => "negotiate",
            Stage::Connect => "connect",
            Stage::Helo => "helo",
            Stage::Mail => "mail",
            Stage::Rcpt => "rcpt",
            Stage::Data => "data",
            Stage::Header => "header",
            Stage::EndOfHeaders => "eoh",
            Stage::Body => "body",
            Stage::EndOfMessage => "eom",
        }
    }

    /// The macro stage index (`SMFIM_*`) a milter's symbol list names,
    /// and the command octet its macros are sent before.
    pub fn macro_index(self) -> Option<usize> {
        match self {
            Stage::Connect => Some(0),
            Stage::Helo => Some(1),
            Stage::Mail => Some(2),
            Stage::Rcpt => Some(3),
            Stage::Data => Some(4),
            Stage::EndOfMessage => Some(5),
            Stage::EndOfHeaders => Some(6),
            _ => None,
        }
    }

    /// The command octet of this stage's event.
    pub fn command(self) -> u8 {
        match self {
            Stage::Negotiate => cmd::OPTNEG,
            Stage::Connect => cmd::CONNECT,
            Stage::Helo => cmd::HELO,
            Stage::Mail => cmd::MAIL,
            Stage::Rcpt => cmd::RCPT,
            Stage::Data => cmd::DATA,
            Stage::Header => cmd::HEADER,
            Stage::EndOfHeaders => cmd::EOH,
            Stage::Body => cmd::BODY,
            Stage::EndOfMessage => cmd::BODYEOB,
        }
    }
}

/// The client's address family in a connect event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// IPv4 (`'4'`).
    Inet,
    /// IPv6 (`'6'`).
    Inet6,
    /// Unknown (`'U'`): no address or port follows.
    Unknown,
}

/// Something the MTA sends.
#[derive(Debug, Clone, Copy)]
pub enum Command<'a> {
    /// Option negotiation: the version (6, or an older one a config asks
    /// for), the actions and protocol flags offered.
    Negotiate {
        /// Protocol version offered.
        version: u32,
        /// Actions offered ([`act`]).
        actions: u32,
        /// Protocol flags offered ([`proto`]).
        protocol: u32,
    },
    /// Macros (name, value) for the event of `stage`.
    Macros {
        /// The stage whose event follows.
        stage: Stage,
        /// Pairs; names such as `j` or `{client_addr}`.
        pairs: &'a [(&'a [u8], &'a [u8])],
    },
    /// The client connected.
    Connect {
        /// Its host name (or its address in brackets when unresolved).
        host: &'a [u8],
        /// Address family.
        family: Family,
        /// Port.
        port: u16,
        /// Address in text form.
        addr: &'a [u8],
    },
    /// HELO/EHLO.
    Helo(&'a [u8]),
    /// MAIL FROM: the reverse path in angle brackets, then ESMTP
    /// arguments.
    Mail(&'a [&'a [u8]]),
    /// RCPT TO: the forward path in angle brackets, then arguments.
    Rcpt(&'a [&'a [u8]]),
    /// DATA.
    Data,
    /// A header field: name, value (unfolded as received, CRLFs kept).
    Header {
        /// Field name.
        name: &'a [u8],
        /// Field value.
        value: &'a [u8],
    },
    /// End of headers.
    EndOfHeaders,
    /// A body chunk of at most [`MILTER_CHUNK`](super::limits::MILTER_CHUNK)
    /// octets.
    Body(&'a [u8]),
    /// End of message.
    EndOfMessage,
    /// The message is abandoned.
    Abort,
    /// Close.
    Quit,
    /// Close; a new milter session follows on this socket.
    QuitNewConnection,
}

/// Why a milter packet could not be used: the milter is then treated as
/// failed (its `on_failure`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum MilterError {
    /// The length field says more than [`MAX_MILTER_PACKET`].
    TooLong(u32),
    /// A zero length (no command octet).
    Empty,
    /// A known command whose data is wrong (the words say how).
    Malformed(&'static str),
    /// A command octet no milter sends.
    UnknownCommand(u8),
    /// A reply that has no meaning at this stage.
    Unexpected(u8, Stage),
    /// A modification the milter did not negotiate.
    NotNegotiated(u8),
    /// A protocol version sluice does not speak.
    Version(u32),
    /// Negotiation asked for actions or protocol steps not offered.
    Offer,
    /// The output buffer is too small for the command (see
    /// [`Command::encoded_len`]).
    BufferTooSmall,
}

impl fmt::Display for MilterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MilterError::TooLong(n) => write!(
                f,
                "packet length {n} over the limit of {MAX_MILTER_PACKET} octets"
            ),
            MilterError::Empty => f.write_str("empty packet"),
            MilterError::Malformed(w) => write!(f, "malformed packet: {w}"),
            MilterError::UnknownCommand(c) => write!(f, "unknown reply 0x{c:02x}"),
            MilterError::Unexpected(c, st) => {
                write!(f, "reply '{}' unexpected at {}", char::from(*c), st.name())
            }
            MilterError::NotNegotiated(c) => {
                write!(f, "modification '{}' not negotiated", char::from(*c))
            }
            MilterError::Version(v) => write!(f, "unsupported milter version {v}"),
            MilterError::Offer => f.write_str("negotiation asked for more than offered"),
            MilterError::BufferTooSmall => f.write_str("output buffer too small"),
        }
    }
}

/// A modification, sent only in answer to end of message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Modification<'a> {
    /// Append a header field.
    AddHeader {
        /// Name.
        name: &'a [u8],
        /// Value.
        value: &'a [u8],
    },
    /// Insert a header field before the `index`-th (0: first).
    InsertHeader {
        /// Position among all fields.
        index: u32,
        /// Name.
        name: &'a [u8],
        /// Value.
        value: &'a [u8],
    },
    /// Change the `index`-th (from 1) field named `name`; an empty value
    /// deletes it.
    ChangeHeader {
        /// Occurrence of the name, from 1.
        index: u32,
        /// Name.
        name: &'a [u8],
        /// New value (empty: delete).
        value: &'a [u8],
    },
    /// A chunk of the new body (chunks concatenate).
    ReplaceBody(&'a [u8]),
    /// Add a recipient (with ESMTP arguments, if any).
    AddRcpt {
        /// The address (angle brackets optional).
        rcpt: &'a [u8],
        /// Arguments (`ADDRCPT_PAR`).
        args: Option<&'a [u8]>,
    },
    /// Delete a recipient.
    DeleteRcpt(&'a [u8]),
    /// Change the envelope sender.
    ChangeFrom {
        /// The new reverse path.
        from: &'a [u8],
        /// ESMTP arguments, if any.
        args: Option<&'a [u8]>,
    },
    /// Quarantine the message, with a reason.
    Quarantine(&'a [u8]),
}

/// A packet a milter sent, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Response<'a> {
    /// Negotiation answer.
    Negotiate(Negotiated, MacroLists<'a>),
    /// Accept: no more events for this message.
    Accept,
    /// Go on.
    Continue,
    /// Accept and drop silently.
    Discard,
    /// Reject (the MTA's 5xx).
    Reject,
    /// Temporary failure (the MTA's 4xx).
    Tempfail,
    /// Reject or tempfail with this reply.
    ReplyCode {
        /// 4xx or 5xx.
        code: u16,
        /// The whole reply text, code included (may be multi-line).
        text: &'a [u8],
    },
    /// No more body chunks.
    Skip,
    /// Still working.
    Progress,
    /// The milter is shutting down or its own connection failed.
    Shutdown,
    /// A modification.
    Modify(Modification<'a>),
}

/// What both sides agreed in option negotiation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Negotiated {
    /// The milter's version.
    pub version: u32,
    /// Actions the milter may take.
    pub actions: u32,
    /// Steps left out or left unanswered.
    pub protocol: u32,
}

/// The macro lists a milter asked for (`SMFIR_SETSYMLIST` data after the
/// negotiation's three words): per stage index, space-separated names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MacroLists<'a> {
    /// Per macro stage index ([`Stage::macro_index`]).
    pub lists: [Option<&'a [u8]>; MILTER_MACRO_STAGES],
}

impl<'a> MacroLists<'a> {
    /// The milter's own list for `stage`, if it sent one.
    pub fn get(&self, stage: Stage) -> Option<&'a [u8]> {
        stage.macro_index().and_then(|i| self.lists[i])
    }
}

impl Negotiated {
    /// Checks the milter's answer against what was offered.
    pub fn check(self, offered_actions: u32, offered_protocol: u32) -> Result<Self, MilterError> {
        if !(OLDEST_VERSION..=VERSION).contains(&self.version) {
            return Err(MilterError::Version(self.version));
        }
        // Data-size bits (MDS) are ignored: sluice never sends chunks
        // larger than the default.
        let protocol = self.protocol & 0x0FFF_FFFF;
        if self.actions & !offered_actions != 0 || protocol & !offered_protocol != 0 {
            return Err(MilterError::Offer);
        }
        Ok(Negotiated { protocol, ..self })
    }

    /// Whether the event of `stage` is sent at all.
    pub fn sends(&self, stage: Stage) -> bool {
        let flag = match stage {
            Stage::Connect => proto::NOCONNECT,
            Stage::Helo => proto::NOHELO,
            Stage::Mail => proto::NOMAIL,
            Stage::Rcpt => proto::NORCPT,
            Stage::Data => proto::NODATA,
            Stage::Header => proto::NOHDRS,
            Stage::EndOfHeaders => proto::NOEOH,
            Stage::Body => proto::NOBODY,
            Stage::Negotiate | Stage::EndOfMessage => 0,
        };
        self.protocol & flag == 0
    }

    /// Whether the milter answers the event of `stage`.
    pub fn replies(&self, stage: Stage) -> bool {
        let flag = match stage {
            Stage::Connect => proto::NR_CONN,
            Stage::Helo => proto::NR_HELO,
            Stage::Mail => proto::NR_MAIL,
            Stage::Rcpt => proto::NR_RCPT,
            Stage::Data => proto::NR_DATA,
            Stage::Header => proto::NR_HDR,
            Stage::EndOfHeaders => proto::NR_EOH,
            Stage::Body => proto::NR_BODY,
            Stage::Negotiate | Stage::EndOfMessage => 0,
        };
        self.protocol & flag == 0
    }

    /// Header values are sent and taken with their leading space.
    pub fn leading_space(&self) -> bool {
        self.protocol & proto::HDR_LEADSPC != 0
    }

    /// The action flag a modification needs.
    fn allows(&self, m: &Modification<'_>) -> bool {
        let need = match m {
            Modification::AddHeader { .. } => act::ADDHDRS,
            Modification::InsertHeader { .. } | Modification::ChangeHeader { .. } => act::CHGHDRS,
            Modification::ReplaceBody(_) => act::CHGBODY,
            Modification::AddRcpt { args: None, .. } => act::ADDRCPT | act::ADDRCPT_PAR,
            Modification::AddRcpt { args: Some(_), .. } => act::ADDRCPT_PAR,
            Modification::DeleteRcpt(_) => act::DELRCPT,
            Modification::ChangeFrom { .. } => act::CHGFROM,
            Modification::Quarantine(_) => act::QUARANTINE,
        };
        self.actions & need != 0
    }
}

/// What a response means for the conversation at `stage`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step<'a> {
    /// Send the next event.
    Next,
    /// This milter is done with the message: no modifications from it
    /// (before end of message) or its modifications stand (at it).
    Accept,
    /// Stop sending body chunks; go on to end of message.
    SkipBody,
    /// Keep waiting (progress): the timeout starts again.
    Wait,
    /// A modification; more packets follow until the final verdict.
    Modify(Modification<'a>),
    /// The message's fate is decided.
    Final(Final<'a>),
}

/// A milter's verdict that ends the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Final<'a> {
    /// Accept, and drop silently.
    Discard,
    /// Refuse permanently (sluice's 550 5.7.1 unless a reply was given).
    Reject,
    /// Refuse for now (sluice's 451 4.7.1 unless a reply was given).
    Tempfail,
    /// This reply (4xx or 5xx), code and text as the milter gave them.
    Reply {
        /// The reply code.
        code: u16,
        /// The full text.
        text: &'a [u8],
    },
    /// The milter shut down: 421.
    Shutdown,
}

/// What `r`, the milter's answer to the event of `stage`, means.
/// Modifications outside end of message, or not negotiated, and SKIP
/// outside the body, are protocol errors.
pub fn step<'a>(n: &Negotiated, stage: Stage, r: Response<'a>) -> Result<Step<'a>, MilterError> {
    let unexpected = |c| Err(MilterError::Unexpected(c, stage));
    Ok(match r {
        Response::Negotiate(..) => return unexpected(cmd::OPTNEG),
        Response::Continue if stage == Stage::EndOfMessage => Step::Accept,
        Response::Continue => Step::Next,
        Response::Accept => Step::Accept,
        Response::Progress => Step::Wait,
        Response::Skip if stage == Stage::Body => Step::SkipBody,
        Response::Skip => return unexpected(rsp::SKIP),
        Response::Discard => Step::Final(Final::Discard),
        Response::Reject => Step::Final(Final::Reject),
        Response::Tempfail => Step::Final(Final::Tempfail),
        Response::ReplyCode { code, text } => Step::Final(Final::Reply { code, text }),
        Response::Shutdown => Step::Final(Final::Shutdown),
        Response::Modify(m) => {
            if stage != Stage::EndOfMessage {
                return unexpected(modification_command(&m));
            }
            if !n.allows(&m) {
                return Err(MilterError::NotNegotiated(modification_command(&m)));
            }
            Step::Modify(m)
        }
    })
}

/// The command octet of a modification (for errors and traces).
pub fn modification_command(m: &Modification<'_>) -> u8 {
    match m {
        Modification::AddHeader { .. } => rsp::ADDHEADER,
        Modification::InsertHeader { .. } => rsp::INSHEADER,
        Modification::ChangeHeader { .. } => rsp::CHGHEADER,
        Modification::ReplaceBody(_) => rsp::REPLBODY,
        Modification::AddRcpt { args: None, .. } => rsp::ADDRCPT,
        Modification::AddRcpt { args: Some(_), .. } => rsp::ADDRCPT_PAR,
        Modification::DeleteRcpt(_) => rsp::DELRCPT,
        Modification::ChangeFrom { .. } => rsp::CHGFROM,
        Modification::Quarantine(_) => rsp::QUARANTINE,
    }
}

/// Decodes the first packet in `input`: `Ok(None)` until it is complete;
/// `Ok(Some((response, consumed)))` once it is. A length over the limit is
/// refused as soon as the length field is in.
pub fn parse(input: &[u8]) -> Result<Option<(Response<'_>, usize)>, MilterError> {
    let Some(head) = input.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    if len == 0 {
        return Err(MilterError::Empty);
    }
    if len as usize > MAX_MILTER_PACKET - 4 {
        return Err(MilterError::TooLong(len));
    }
    let total = 4 + len as usize;
    let Some(packet) = input.get(4..total) else {
        return Ok(None);
    };
    let (c, data) = (packet[0], &packet[1..]);
    Ok(Some((decode(c, data)?, total)))
}

/// Decodes one packet's command octet and data.
fn decode(c: u8, data: &[u8]) -> Result<Response<'_>, MilterError> {
    let none = |r: Response<'static>| -> Result<Response<'_>, MilterError> {
        // Replies without data may not carry any (garbage otherwise).
        if data.is_empty() {
            Ok(r)
        } else {
            Err(MilterError::Malformed("data after a reply that takes none"))
        }
    };
    let m = |x| Ok(Response::Modify(x));
    match c {
        cmd::OPTNEG => negotiation(data),
        rsp::ACCEPT => none(Response::Accept),
        rsp::CONTINUE => none(Response::Continue),
        rsp::DISCARD => none(Response::Discard),
        rsp::REJECT => none(Response::Reject),
        rsp::TEMPFAIL => none(Response::Tempfail),
        rsp::SKIP => none(Response::Skip),
        rsp::PROGRESS => none(Response::Progress),
        rsp::SHUTDOWN | rsp::CONN_FAIL => none(Response::Shutdown),
        rsp::REPLYCODE => reply_code(data),
        rsp::ADDHEADER => {
            let (name, value) = two_strings(data)?;
            m(Modification::AddHeader { name, value })
        }
        rsp::INSHEADER | rsp::CHGHEADER => {
            let (index, rest) = word(data)?;
            let (name, value) = two_strings(rest)?;
            if c == rsp::INSHEADER {
                m(Modification::InsertHeader { index, name, value })
            } else {
                m(Modification::ChangeHeader { index, name, value })
            }
        }
        rsp::REPLBODY => m(Modification::ReplaceBody(data)),
        rsp::ADDRCPT => m(Modification::AddRcpt {
            rcpt: one_string(data)?,
            args: None,
        }),
        rsp::ADDRCPT_PAR => {
            let (rcpt, args) = string_and_optional(data)?;
            m(Modification::AddRcpt {
                rcpt,
                args: Some(args.unwrap_or_default()),
            })
        }
        rsp::DELRCPT => m(Modification::DeleteRcpt(one_string(data)?)),
        rsp::CHGFROM => {
            let (from, args) = string_and_optional(data)?;
            m(Modification::ChangeFrom { from, args })
        }
        rsp::QUARANTINE => m(Modification::Quarantine(one_string(data)?)),
        other => Err(MilterError::UnknownCommand(other)),
    }
}

/// The negotiation answer: version, actions, protocol flags, then
/// optional macro lists (stage word, NUL-terminated names).
fn negotiation(data: &[u8]) -> Result<Response<'_>, MilterError> {
    let (version, rest) = word(data)?;
    let (actions, rest) = word(rest)?;
    let (protocol, mut rest) = word(rest)?;
    let mut lists = MacroLists::default();
    while !rest.is_empty() {
        let (idx, r) = word(rest)?;
        let (names, r) = string(r)?;
        let slot = lists
            .lists
            .get_mut(idx as usize)
            .ok_or(MilterError::Malformed("macro list for an unknown stage"))?;
        *slot = Some(names);
        rest = r;
    }
    Ok(Response::Negotiate(
        Negotiated {
            version,
            actions,
            protocol,
        },
        lists,
    ))
}

/// `SMFIR_REPLYCODE`: a NUL-terminated reply whose code is 4xx or 5xx.
fn reply_code(data: &[u8]) -> Result<Response<'_>, MilterError> {
    let text = one_string(data)?;
    let code = match text {
        [a @ (b'4' | b'5'), b, c, rest @ ..]
            if b.is_ascii_digit()
                && c.is_ascii_digit()
                && matches!(rest.first(), None | Some(b' ' | b'-')) =>
        {
            u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0')
        }
        _ => return Err(MilterError::Malformed("reply code is not 4xx or 5xx")),
    };
    Ok(Response::ReplyCode { code, text })
}

/// A big-endian word and the rest.
fn word(data: &[u8]) -> Result<(u32, &[u8]), MilterError> {
    match data {
        [a, b, c, d, rest @ ..] => Ok((u32::from_be_bytes([*a, *b, *c, *d]), rest)),
        _ => Err(MilterError::Malformed("short word")),
    }
}

/// A NUL-terminated string and the rest.
fn string(data: &[u8]) -> Result<(&[u8], &[u8]), MilterError> {
    let nul = data
        .iter()
        .position(|&b| b == 0)
        .ok_or(MilterError::Malformed("string without its NUL"))?;
    Ok((&data[..nul], &data[nul + 1..]))
}

/// Exactly one NUL-terminated string.
fn one_string(data: &[u8]) -> Result<&[u8], MilterError> {
    match string(data)? {
        (s, []) => Ok(s),
        _ => Err(MilterError::Malformed("data after the string")),
    }
}

/// Exactly two NUL-terminated strings.
fn two_strings(data: &[u8]) -> Result<(&[u8], &[u8]), MilterError> {
    let (a, rest) = string(data)?;
    Ok((a, one_string(rest)?))
}

/// One string, optionally a second (ESMTP arguments).
fn string_and_optional(data: &[u8]) -> Result<(&[u8], Option<&[u8]>), MilterError> {
    let (a, rest) = string(data)?;
    if rest.is_empty() {
        return Ok((a, None));
    }
    Ok((a, Some(one_string(rest)?)))
}

impl Command<'_> {
    /// Octets the encoded packet takes (length field included).
    pub fn encoded_len(&self) -> usize {
        5 + match self {
            Command::Negotiate { .. } => 12,
            Command::Macros { pairs, .. } => {
                1 + pairs
                    .iter()
                    .map(|(n, v)| n.len() + v.len() + 2)
                    .sum::<usize>()
            }
            Command::Connect {
                host, family, addr, ..
            } => {
                host.len()
                    + 2
                    + match family {
                        Family::Unknown => 0,
                        _ => 2 + addr.len() + 1,
                    }
            }
            Command::Helo(s) => s.len() + 1,
            Command::Mail(args) | Command::Rcpt(args) => args.iter().map(|a| a.len() + 1).sum(),
            Command::Header { name, value } => name.len() + value.len() + 2,
            Command::Body(b) => b.len(),
            Command::Data
            | Command::EndOfHeaders
            | Command::EndOfMessage
            | Command::Abort
            | Command::Quit
            | Command::QuitNewConnection => 0,
        }
    }

    /// Encodes the packet into `out`; returns the octets written.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, MilterError> {
        let n = self.encoded_len();
        if out.len() < n || n > MAX_MILTER_PACKET {
            return Err(MilterError::BufferTooSmall);
        }
        let mut w = Writer { out, at: 0 };
        // n - 4 fits: n is at most MAX_MILTER_PACKET.
        w.put(&u32::try_from(n - 4).unwrap_or(u32::MAX).to_be_bytes());
        match self {
            Command::Negotiate {
                version,
                actions,
                protocol,
            } => {
                w.put(&[cmd::OPTNEG]);
                w.put(&version.to_be_bytes());
                w.put(&actions.to_be_bytes());
                w.put(&protocol.to_be_bytes());
            }
            Command::Macros { stage, pairs } => {
                w.put(&[cmd::MACRO, stage.command()]);
                for (name, value) in pairs.iter() {
                    w.cstr(name);
                    w.cstr(value);
                }
            }
            Command::Connect {
                host,
                family,
                port,
                addr,
            } => {
                w.put(&[cmd::CONNECT]);
                w.cstr(host);
                match family {
                    Family::Unknown => w.put(b"U"),
                    f => {
                        w.put(if *f == Family::Inet { b"4" } else { b"6" });
                        w.put(&port.to_be_bytes());
                        w.cstr(addr);
                    }
                }
            }
            Command::Helo(s) => {
                w.put(&[cmd::HELO]);
                w.cstr(s);
            }
            Command::Mail(args) | Command::Rcpt(args) => {
                w.put(&[if matches!(self, Command::Mail(_)) {
                    cmd::MAIL
                } else {
                    cmd::RCPT
                }]);
                for a in args.iter() {
                    w.cstr(a);
                }
            }
            Command::Header { name, value } => {
                w.put(&[cmd::HEADER]);
                w.cstr(name);
                w.cstr(value);
            }
            Command::Body(b) => {
                w.put(&[cmd::BODY]);
                w.put(b);
            }
            Command::Data => w.put(&[cmd::DATA]),
            Command::EndOfHeaders => w.put(&[cmd::EOH]),
            Command::EndOfMessage => w.put(&[cmd::BODYEOB]),
            Command::Abort => w.put(&[cmd::ABORT]),
            Command::Quit => w.put(&[cmd::QUIT]),
            Command::QuitNewConnection => w.put(&[cmd::QUIT_NC]),
        }
        Ok(w.at)
    }
}

/// Writes into a slice already checked to be large enough.
struct Writer<'o> {
    /// The buffer.
    out: &'o mut [u8],
    /// Octets written.
    at: usize,
}

impl Writer<'_> {
    /// Appends `b` (the caller checked the room).
    fn put(&mut self, b: &[u8]) {
        if let Some(dst) = self.out.get_mut(self.at..self.at + b.len()) {
            dst.copy_from_slice(b);
        }
        self.at += b.len();
    }

    /// Appends `s` and its NUL.
    fn cstr(&mut self, s: &[u8]) {
        self.put(s);
        self.put(&[0]);
    }
}

/// The macros Postfix sends by default, per stage (its `milter_*_macros`
/// settings), plus `{client_addr}`, `{client_name}` and `{client_port}` at
/// connect: what milters written for Postfix expect.
pub fn default_macros(stage: Stage) -> &'static [&'static str] {
    match stage {
        Stage::Connect => &[
            "j",
            "{daemon_name}",
            "{daemon_addr}",
            "v",
            "_",
            "{client_addr}",
            "{client_name}",
            "{client_port}",
        ],
        Stage::Helo => &["{tls_version}", "{cipher}", "{cipher_bits}"],
        Stage::Mail => &[
            "i",
            "{auth_type}",
            "{auth_authen}",
            "{auth_author}",
            "{mail_addr}",
            "{mail_host}",
            "{mail_mailer}",
        ],
        Stage::Rcpt => &["i", "{rcpt_addr}", "{rcpt_host}", "{rcpt_mailer}"],
        Stage::Data | Stage::EndOfHeaders | Stage::EndOfMessage => &["i"],
        _ => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A packet as a milter would send it.
    fn packet<'b>(c: u8, data: &[u8], buf: &'b mut [u8]) -> &'b [u8] {
        let len = (data.len() + 1) as u32;
        buf[..4].copy_from_slice(&len.to_be_bytes());
        buf[4] = c;
        buf[5..5 + data.len()].copy_from_slice(data);
        &buf[..5 + data.len()]
    }

    fn parse_one(c: u8, data: &[u8]) -> Result<Response<'static>, MilterError> {
        // Leaked for the 'static borrow; tests only.
        let buf: &'static mut [u8] = Box::leak(vec![0u8; data.len() + 5].into_boxed_slice());
        let p = packet(c, data, buf);
        let (r, used) = parse(p)?.expect("complete");
        assert_eq!(used, p.len());
        Ok(r)
    }

    const ALL: Negotiated = Negotiated {
        version: 6,
        actions: act::ALL,
        protocol: 0,
    };

    #[test]
    fn negotiation_is_encoded_as_libmilter_expects() {
        let mut out = [0u8; 32];
        let n = Command::Negotiate {
            version: VERSION,
            actions: act::ALL,
            protocol: proto::OFFERED,
        }
        .encode(&mut out)
        .expect("fits");
        assert_eq!(n, 17);
        assert_eq!(&out[..5], &[0, 0, 0, 13, b'O']);
        assert_eq!(&out[5..9], &6u32.to_be_bytes());
        assert_eq!(&out[9..13], &0x1FFu32.to_be_bytes());
        assert_eq!(
            u32::from_be_bytes([out[13], out[14], out[15], out[16]]) & proto::RCPT_REJ,
            0
        );
    }

    #[test]
    fn negotiation_answer_with_macro_lists() {
        let mut data = [0u8; 12].to_vec();
        data[..4].copy_from_slice(&6u32.to_be_bytes());
        data[4..8].copy_from_slice(&(act::ADDHDRS | act::SETSYMLIST).to_be_bytes());
        data[8..12].copy_from_slice(&(proto::NR_HDR | proto::NOHELO).to_be_bytes());
        data.extend_from_slice(&2u32.to_be_bytes());
        data.extend_from_slice(b"{mail_addr} i\0");
        let Response::Negotiate(n, lists) = parse_one(b'O', &data).expect("ok") else {
            panic!("negotiate");
        };
        let n = n.check(act::ALL, proto::OFFERED).expect("within the offer");
        assert!(!n.sends(Stage::Helo));
        assert!(n.sends(Stage::Mail));
        assert!(!n.replies(Stage::Header));
        assert!(n.replies(Stage::Rcpt));
        assert_eq!(lists.get(Stage::Mail), Some(&b"{mail_addr} i"[..]));
        assert_eq!(lists.get(Stage::Rcpt), None);
        let more = Negotiated {
            protocol: proto::RCPT_REJ,
            ..n
        };
        assert_eq!(
            more.check(act::ALL, proto::OFFERED),
            Err(MilterError::Offer)
        );
        let old = Negotiated { version: 1, ..n };
        assert_eq!(
            old.check(act::ALL, proto::OFFERED),
            Err(MilterError::Version(1))
        );
    }

    #[test]
    fn every_event_encodes() {
        let mut out = [0u8; 256];
        let from: [&[u8]; 2] = [b"<a@example.org>", b"SIZE=10"];
        let pairs: [(&[u8], &[u8]); 2] = [(b"j", b"mx.test"), (b"{client_addr}", b"192.0.2.1")];
        let cases: [(Command<'_>, &[u8]); 13] = [
            (
                Command::Connect {
                    host: b"[192.0.2.1]",
                    family: Family::Inet,
                    port: 25,
                    addr: b"192.0.2.1",
                },
                b"C[192.0.2.1]\x004\x00\x19192.0.2.1\x00",
            ),
            (
                Command::Connect {
                    host: b"x",
                    family: Family::Unknown,
                    port: 0,
                    addr: b"",
                },
                b"Cx\0U",
            ),
            (Command::Helo(b"client.test"), b"Hclient.test\0"),
            (Command::Mail(&from), b"M<a@example.org>\0SIZE=10\0"),
            (Command::Rcpt(&from[..1]), b"R<a@example.org>\0"),
            (Command::Data, b"T"),
            (
                Command::Header {
                    name: b"Subject",
                    value: b"hi",
                },
                b"LSubject\0hi\0",
            ),
            (Command::EndOfHeaders, b"N"),
            (Command::Body(b"body\r\n"), b"Bbody\r\n"),
            (Command::EndOfMessage, b"E"),
            (Command::Abort, b"A"),
            (Command::Quit, b"Q"),
            (
                Command::Macros {
                    stage: Stage::Connect,
                    pairs: &pairs,
                },
                b"DCj\0mx.test\0{client_addr}\x00192.0.2.1\0",
            ),
        ];
        for (c, want) in cases {
            let n = c.encode(&mut out).expect("fits");
            assert_eq!(n, c.encoded_len());
            assert_eq!(&out[..4], &((want.len()) as u32).to_be_bytes());
            assert_eq!(&out[4..n], want, "{c:?}");
        }
        let mut small = [0u8; 4];
        assert_eq!(
            Command::Helo(b"client.test").encode(&mut small),
            Err(MilterError::BufferTooSmall)
        );
    }

    #[test]
    fn every_reply_decodes_and_steps() {
        let st = Stage::Rcpt;
        let cases: [(u8, &[u8], Step<'_>); 9] = [
            (b'a', b"", Step::Accept),
            (b'c', b"", Step::Next),
            (b'd', b"", Step::Final(Final::Discard)),
            (b'r', b"", Step::Final(Final::Reject)),
            (b't', b"", Step::Final(Final::Tempfail)),
            (b'p', b"", Step::Wait),
            (b'4', b"", Step::Final(Final::Shutdown)),
            (b'f', b"", Step::Final(Final::Shutdown)),
            (
                b'y',
                b"550 5.7.1 no thanks\0",
                Step::Final(Final::Reply {
                    code: 550,
                    text: b"550 5.7.1 no thanks",
                }),
            ),
        ];
        for (c, data, want) in cases {
            let r = parse_one(c, data).expect("decodes");
            assert_eq!(step(&ALL, st, r), Ok(want), "{}", char::from(c));
        }
        let skip = parse_one(b's', b"").expect("decodes");
        assert_eq!(step(&ALL, Stage::Body, skip), Ok(Step::SkipBody));
        assert_eq!(
            step(&ALL, Stage::Rcpt, skip),
            Err(MilterError::Unexpected(b's', Stage::Rcpt))
        );
        let cont = parse_one(b'c', b"").expect("decodes");
        assert_eq!(step(&ALL, Stage::EndOfMessage, cont), Ok(Step::Accept));
    }

    #[test]
    fn every_modification_decodes() {
        let idx = |i: u32, rest: &[u8]| {
            let mut v = i.to_be_bytes().to_vec();
            v.extend_from_slice(rest);
            v
        };
        let ins = idx(0, b"X-First\0one\0");
        let chg = idx(2, b"Subject\0\0");
        let cases: [(u8, &[u8], Modification<'_>); 10] = [
            (
                b'h',
                b"X-Spam\0Yes\0",
                Modification::AddHeader {
                    name: b"X-Spam",
                    value: b"Yes",
                },
            ),
            (
                b'i',
                &ins,
                Modification::InsertHeader {
                    index: 0,
                    name: b"X-First",
                    value: b"one",
                },
            ),
            (
                b'm',
                &chg,
                Modification::ChangeHeader {
                    index: 2,
                    name: b"Subject",
                    value: b"",
                },
            ),
            (
                b'b',
                b"new body\r\n",
                Modification::ReplaceBody(b"new body\r\n"),
            ),
            (
                b'+',
                b"<b@example.org>\0",
                Modification::AddRcpt {
                    rcpt: b"<b@example.org>",
                    args: None,
                },
            ),
            (
                b'2',
                b"<b@example.org>\0NOTIFY=NEVER\0",
                Modification::AddRcpt {
                    rcpt: b"<b@example.org>",
                    args: Some(b"NOTIFY=NEVER"),
                },
            ),
            (
                b'-',
                b"<c@example.org>\0",
                Modification::DeleteRcpt(b"<c@example.org>"),
            ),
            (
                b'e',
                b"<s@example.org>\0",
                Modification::ChangeFrom {
                    from: b"<s@example.org>",
                    args: None,
                },
            ),
            (
                b'e',
                b"<s@example.org>\0SIZE=1\0",
                Modification::ChangeFrom {
                    from: b"<s@example.org>",
                    args: Some(b"SIZE=1"),
                },
            ),
            (
                b'q',
                b"suspicious\0",
                Modification::Quarantine(b"suspicious"),
            ),
        ];
        for (c, data, want) in cases {
            let r = parse_one(c, data).expect("decodes");
            assert_eq!(r, Response::Modify(want));
            assert_eq!(step(&ALL, Stage::EndOfMessage, r), Ok(Step::Modify(want)));
            assert_eq!(
                step(&ALL, Stage::Body, r),
                Err(MilterError::Unexpected(c, Stage::Body)),
                "modifications only at end of message"
            );
        }
        let only_headers = Negotiated {
            actions: act::ADDHDRS,
            ..ALL
        };
        let r = parse_one(b'b', b"x").expect("decodes");
        assert_eq!(
            step(&only_headers, Stage::EndOfMessage, r),
            Err(MilterError::NotNegotiated(b'b'))
        );
    }

    #[test]
    fn partial_input_waits_and_bad_input_is_an_error() {
        assert_eq!(parse(&[]), Ok(None));
        assert_eq!(parse(&[0, 0, 0]), Ok(None));
        assert_eq!(parse(&[0, 0, 0, 2, b'c']), Ok(None));
        assert_eq!(parse(&[0, 0, 0, 0]), Err(MilterError::Empty));
        // Refused on the length field alone, before the data arrives.
        assert_eq!(
            parse(&[0xFF, 0xFF, 0xFF, 0xFF]),
            Err(MilterError::TooLong(u32::MAX))
        );
        let over = (MAX_MILTER_PACKET as u32).to_be_bytes();
        assert!(matches!(parse(&over), Err(MilterError::TooLong(_))));
        assert_eq!(
            parse(&[0, 0, 0, 1, b'Z']),
            Err(MilterError::UnknownCommand(b'Z'))
        );
        assert!(matches!(
            parse(&[0, 0, 0, 2, b'c', b'x']),
            Err(MilterError::Malformed(_))
        ));
        assert!(matches!(
            parse_one(b'h', b"X-No-Nul"),
            Err(MilterError::Malformed(_))
        ));
        assert!(matches!(
            parse_one(b'y', b"250 ok\0"),
            Err(MilterError::Malformed(_))
        ));
        assert!(matches!(
            parse_one(b'i', b"\0\0"),
            Err(MilterError::Malformed(_))
        ));
        assert!(matches!(
            parse_one(b'O', &[0, 0, 0, 6]),
            Err(MilterError::Malformed(_))
        ));
        // Two packets back to back: the first is consumed alone.
        let two = [0, 0, 0, 1, b'c', 0, 0, 0, 1, b'a'];
        assert_eq!(parse(&two), Ok(Some((Response::Continue, 5))));
        assert_eq!(parse(&two[5..]), Ok(Some((Response::Accept, 5))));
    }

    #[test]
    fn postfix_default_macros_are_offered() {
        assert!(default_macros(Stage::Connect).contains(&"j"));
        assert!(default_macros(Stage::Connect).contains(&"{daemon_name}"));
        assert!(default_macros(Stage::Connect).contains(&"{client_addr}"));
        assert!(default_macros(Stage::Mail).contains(&"{auth_authen}"));
        assert!(default_macros(Stage::Mail).contains(&"{mail_addr}"));
        assert!(default_macros(Stage::Rcpt).contains(&"{rcpt_addr}"));
        assert_eq!(default_macros(Stage::EndOfMessage), &["i"]);
    }
}
