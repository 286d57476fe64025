//! The one table of SMTP replies: reason -> code, enhanced status, text.
//!
//! Every error the receiver gives carries a reply code and an RFC 3463
//! enhanced status code; the shell maps its own failures (full disk, too
//! many connections) through the same table.

/// Why a reply is sent; [`Reason::reply`] gives its code and text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Reason {
    /// `503 5.5.1`: the command is not allowed in this state.
    BadSequence,
    /// `503 5.5.1`: MAIL before HELO/EHLO.
    NeedHelo,
    /// `503 5.5.1`: RCPT or DATA before MAIL.
    NeedMail,
    /// `503 5.5.1`: MAIL inside a transaction.
    NestedMail,
    /// `503 5.5.1`: DATA after BDAT in the same transaction.
    DataAfterBdat,
    /// `503 5.5.1`: STARTTLS when TLS is already on.
    AlreadyTls,
    /// `503 5.5.1`: STARTTLS inside a mail transaction.
    TlsInTransaction,
    /// `554 5.5.1`: DATA or BDAT without an accepted recipient.
    NoValidRecipients,
    /// `500 5.5.2`: unknown command.
    Unrecognized,
    /// `500 5.5.2`: command line longer than the limit.
    LineTooLong,
    /// `501 5.5.4`: bad arguments to a command.
    Syntax,
    /// `501 5.1.7`: bad reverse path.
    BadSender,
    /// `501 5.1.3`: bad forward path.
    BadRecipient,
    /// `555 5.5.4`: MAIL/RCPT parameter not recognised.
    UnknownParameter,
    /// `553 5.6.7`: non-ASCII address without SMTPUTF8.
    NeedSmtpUtf8,
    /// `552 5.3.4`: declared or received size above the limit.
    TooBig,
    /// `552 5.3.4`: header block above the limit.
    HeaderTooBig,
    /// `452 4.5.3`: more recipients than allowed.
    TooManyRecipients,
    /// `550 5.6.11`: bare CR or LF in DATA while they are refused.
    BareLineEnding,
    /// `550 5.6.0`: a NUL octet in message content while NUL is refused.
    NulInContent,
    /// `500 5.5.2`: a NUL octet in a command line.
    NulInCommand,
    /// `501 5.5.2`: 8-bit octets in a command that allows none (anything
    /// but a MAIL or RCPT address under SMTPUTF8).
    EightBitCommand,
    /// `554 5.5.0`: content or commands sent before the 354 that DATA waits
    /// for (RFC 2920 §3.1), from a non-originating client; closes.
    ImproperPipelining,
    /// `502 5.5.1`: STARTTLS is not offered, EXPN and the like.
    NotImplemented,
    /// `421 4.7.0`: too many errors; the session closes.
    TooManyErrors,
    /// `421 4.4.2`: no command or data within the timeout.
    Timeout,
    /// `421 4.7.0`: too many connections from one address.
    TooManyFromIp,
    /// `421 4.3.2`: too many connections in total.
    TooManyConnections,
    /// `421 4.3.2`: the daemon is stopping.
    ShuttingDown,
    /// `452 4.3.1`: the spool is full or cannot be written.
    InsufficientStorage,
    /// `451 4.3.0`: a local error while handling the message.
    LocalError,
    /// `554 5.7.1`: recipient outside the accepted domains, anonymous session.
    RelayDenied,
    /// `554 5.7.1`: the connection filter refuses the client.
    AccessDenied,
    /// `554 5.4.14`: more Received: fields than the policy allows.
    HopCount,
    /// `550 5.1.1`: the recipient filter does not know the recipient.
    UnknownRecipient,
    /// `550 5.7.1`: the recipient filter blocks the recipient.
    BlockedRecipient,
    /// `450 4.1.1`: call-ahead could not verify the recipient (the next
    /// hop is down, timed out or answered 4xx).
    UnverifiedRecipient,
    /// `421 4.7.0`: more unknown recipients than `max_unknown`; closes.
    TooManyUnknown,
    /// `550 5.7.1`: the sender filter blocks the sender (MAIL or `From:`).
    BlockedSender,
    /// `550 5.7.1`: the sender filter refuses the blank sender `<>`.
    BlankSender,
    /// `421 4.7.0`: the connection filter's connections-per-minute limit.
    ConnectionRate,
    /// `450 4.7.1`: the connection filter's messages-per-minute limit.
    MessageRate,
    /// `421 4.7.0`: protocol analysis blocked the client for a while.
    BadReputation,
    /// `250 2.0.0 Ok` for RSET and NOOP.
    Ok,
    /// `250 2.1.0 Ok` for MAIL.
    SenderOk,
    /// `250 2.1.5 Ok` for RCPT.
    RecipientOk,
    /// `354` for DATA.
    StartData,
    /// `252 2.5.0` for VRFY.
    CannotVrfy,
    /// `214 2.0.0` for HELP.
    Help,
    /// `221 2.0.0` for QUIT.
    Bye,
    /// `220 2.0.0` for STARTTLS.
    ReadyTls,
    /// `235 2.7.0`: AUTH succeeded (RFC 4954 §6).
    AuthOk,
    /// `538 5.7.11`: AUTH before STARTTLS on a listener that needs TLS
    /// for it (RFC 4954 §6).
    EncryptionRequired,
    /// `503 5.5.1`: AUTH after a successful AUTH (RFC 4954 §4).
    AlreadyAuthenticated,
    /// `503 5.5.1`: AUTH inside a mail transaction (RFC 4954 §4).
    AuthInTransaction,
    /// `504 5.5.4`: AUTH with a mechanism that is not offered.
    UnknownMechanism,
    /// `501 5.0.0`: the client cancelled the exchange with `*` (RFC 4954 §4).
    AuthCancelled,
    /// `501 5.5.2`: an AUTH response that is not valid base64 (RFC 4954 §4).
    AuthBadBase64,
    /// `500 5.5.6`: an AUTH line longer than the limit (RFC 4954 §6).
    AuthLineTooLong,
    /// `535 5.7.8`: wrong credentials (RFC 4954 §6).
    AuthFailed,
    /// `421 4.7.0`: too many AUTH failures from this address; closes.
    AuthLockedOut,
    /// `454 4.7.0`: the credentials could not be checked now (RFC 4954 §6).
    AuthUnavailable,
    /// `550 5.7.1`: MAIL FROM an address the login may not use.
    SenderLoginMismatch,
}

/// A reply: three-digit code, enhanced status (class.subject.detail) and text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Reply<'t> {
    /// The RFC 5321 reply code, e.g. 452.
    pub code: u16,
    /// The RFC 3463 enhanced status code, e.g. (4, 3, 1); `None` for 354.
    pub status: Option<(u8, u16, u16)>,
    /// The human-readable text.
    pub text: &'t str,
}

impl Reason {
    /// The reply for this reason, from the single table.
    pub const fn reply(self) -> Reply<'static> {
        use Reason::*;
        let (code, status, text): (u16, Option<(u8, u16, u16)>, &str) = match self {
            BadSequence => (503, Some((5, 5, 1)), "Bad sequence of commands"),
            NeedHelo => (503, Some((5, 5, 1)), "Send HELO/EHLO first"),
            NeedMail => (503, Some((5, 5, 1)), "Need MAIL command"),
            NestedMail => (503, Some((5, 5, 1)), "Nested MAIL command"),
            DataAfterBdat => (503, Some((5, 5, 1)), "DATA not allowed after BDAT"),
            AlreadyTls => (503, Some((5, 5, 1)), "TLS already active"),
            TlsInTransaction => (503, Some((5, 5, 1)), "MAIL transaction in progress"),
            NoValidRecipients => (554, Some((5, 5, 1)), "No valid recipients"),
            Unrecognized => (500, Some((5, 5, 2)), "Command unrecognized"),
            LineTooLong => (500, Some((5, 5, 2)), "Line too long"),
            Syntax => (
                501,
                Some((5, 5, 4)),
                "Syntax error in parameters or arguments",
            ),
            BadSender => (501, Some((5, 1, 7)), "Bad sender address syntax"),
            BadRecipient => (501, Some((5, 1, 3)), "Bad recipient address syntax"),
            UnknownParameter => (555, Some((5, 5, 4)), "Parameter not recognized"),
            NeedSmtpUtf8 => (553, Some((5, 6, 7)), "Non-ASCII address requires SMTPUTF8"),
            TooBig => (552, Some((5, 3, 4)), "Message too big"),
            HeaderTooBig => (552, Some((5, 3, 4)), "Message header too big"),
            TooManyRecipients => (452, Some((4, 5, 3)), "Too many recipients"),
            BareLineEnding => (
                550,
                Some((5, 6, 11)),
                "Bare CR or LF in message not allowed",
            ),
            NulInContent => (550, Some((5, 6, 0)), "NUL octet in message not allowed"),
            NulInCommand => (500, Some((5, 5, 2)), "NUL octet in command not allowed"),
            EightBitCommand => (
                501,
                Some((5, 5, 2)),
                "8-bit octets not allowed in this command",
            ),
            ImproperPipelining => (
                554,
                Some((5, 5, 0)),
                "Improper use of SMTP command pipelining",
            ),
            NotImplemented => (502, Some((5, 5, 1)), "Command not implemented"),
            TooManyErrors => (421, Some((4, 7, 0)), "Too many errors, closing connection"),
            Timeout => (421, Some((4, 4, 2)), "Error: timeout exceeded"),
            TooManyFromIp => (
                421,
                Some((4, 7, 0)),
                "Too many connections from your address",
            ),
            TooManyConnections => (421, Some((4, 3, 2)), "Too many connections, try later"),
            ShuttingDown => (421, Some((4, 3, 2)), "Service shutting down"),
            InsufficientStorage => (452, Some((4, 3, 1)), "Insufficient system storage"),
            LocalError => (451, Some((4, 3, 0)), "Local error in processing"),
            RelayDenied => (554, Some((5, 7, 1)), "Relay access denied"),
            AccessDenied => (554, Some((5, 7, 1)), "Access denied"),
            HopCount => (
                554,
                Some((5, 4, 14)),
                "Hop count exceeded - possible mail loop",
            ),
            UnknownRecipient => (
                550,
                Some((5, 1, 1)),
                "Recipient address rejected: User unknown",
            ),
            BlockedRecipient => (
                550,
                Some((5, 7, 1)),
                "Recipient address rejected: Recipient not authorized",
            ),
            UnverifiedRecipient => (
                450,
                Some((4, 1, 1)),
                "Recipient address rejected: unverified address, next hop unavailable",
            ),
            TooManyUnknown => (
                421,
                Some((4, 7, 0)),
                "Too many unknown recipients, closing connection",
            ),
            BlockedSender => (550, Some((5, 7, 1)), "Sender denied"),
            BlankSender => (550, Some((5, 7, 1)), "Blank sender denied"),
            ConnectionRate => (
                421,
                Some((4, 7, 0)),
                "Too many connections per minute from your address, try later",
            ),
            MessageRate => (
                450,
                Some((4, 7, 1)),
                "Too many messages per minute from your address, try later",
            ),
            BadReputation => (
                421,
                Some((4, 7, 0)),
                "Your address is blocked for a while after protocol errors, try later",
            ),
            Ok => (250, Some((2, 0, 0)), "Ok"),
            SenderOk => (250, Some((2, 1, 0)), "Ok"),
            RecipientOk => (250, Some((2, 1, 5)), "Ok"),
            StartData => (354, None, "End data with <CR><LF>.<CR><LF>"),
            CannotVrfy => (
                252,
                Some((2, 5, 0)),
                "Cannot VRFY user, but will accept message",
            ),
            Help => (
                214,
                Some((2, 0, 0)),
                "See RFC 5321 and https://www.rfc-editor.org/",
            ),
            Bye => (221, Some((2, 0, 0)), "Bye"),
            ReadyTls => (220, Some((2, 0, 0)), "Ready to start TLS"),
            AuthOk => (235, Some((2, 7, 0)), "Authentication successful"),
            EncryptionRequired => (
                538,
                Some((5, 7, 11)),
                "Encryption required for requested authentication mechanism",
            ),
            AlreadyAuthenticated => (503, Some((5, 5, 1)), "Already authenticated"),
            AuthInTransaction => (
                503,
                Some((5, 5, 1)),
                "AUTH not permitted during a mail transaction",
            ),
            UnknownMechanism => (504, Some((5, 5, 4)), "Unrecognized authentication type"),
            AuthCancelled => (501, Some((5, 0, 0)), "Authentication canceled"),
            AuthBadBase64 => (501, Some((5, 5, 2)), "Cannot decode response"),
            AuthLineTooLong => (
                500,
                Some((5, 5, 6)),
                "Authentication exchange line is too long",
            ),
            AuthFailed => (535, Some((5, 7, 8)), "Authentication credentials invalid"),
            AuthLockedOut => (
                421,
                Some((4, 7, 0)),
                "Too many authentication failures from your address, try later",
            ),
            AuthUnavailable => (454, Some((4, 7, 0)), "Temporary authentication failure"),
            SenderLoginMismatch => (
                550,
                Some((5, 7, 1)),
                "Sender address not owned by the authenticated user",
            ),
        };
        Reply { code, status, text }
    }
}

impl Reply<'_> {
    /// Whether this reply reports an error (4xx or 5xx).
    pub const fn is_error(&self) -> bool {
        self.code >= 400
    }

    /// Whether the session must close after this reply (421).
    pub const fn closes(&self) -> bool {
        self.code == 421
    }
}

impl From<Reason> for Reply<'static> {
    fn from(r: Reason) -> Self {
        r.reply()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_has_an_enhanced_code_of_its_class() {
        use Reason::*;
        let all = [
            BadSequence,
            NeedHelo,
            NeedMail,
            NestedMail,
            DataAfterBdat,
            AlreadyTls,
            TlsInTransaction,
            NoValidRecipients,
            Unrecognized,
            LineTooLong,
            Syntax,
            BadSender,
            BadRecipient,
            UnknownParameter,
            NeedSmtpUtf8,
            TooBig,
            HeaderTooBig,
            TooManyRecipients,
            BareLineEnding,
            NulInContent,
            NulInCommand,
            EightBitCommand,
            ImproperPipelining,
            NotImplemented,
            TooManyErrors,
            Timeout,
            TooManyFromIp,
            TooManyConnections,
            ShuttingDown,
            InsufficientStorage,
            LocalError,
            RelayDenied,
            AccessDenied,
            HopCount,
            UnknownRecipient,
            BlockedRecipient,
            UnverifiedRecipient,
            TooManyUnknown,
            BlockedSender,
            BlankSender,
            ConnectionRate,
            MessageRate,
            BadReputation,
            EncryptionRequired,
            AlreadyAuthenticated,
            AuthInTransaction,
            UnknownMechanism,
            AuthCancelled,
            AuthBadBase64,
            AuthLineTooLong,
            AuthFailed,
            AuthLockedOut,
            AuthUnavailable,
            SenderLoginMismatch,
        ];
        for r in all {
            let rep = r.reply();
            assert!(rep.is_error(), "{r:?}");
            let (class, _, _) = rep.status.expect("errors carry an enhanced code");
            assert_eq!(u16::from(class), rep.code / 100, "{r:?}");
            assert!(!rep.text.is_empty());
        }
    }
}
