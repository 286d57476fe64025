//! Why a delivery did not go through, as one table: each [`Failure`]'s
//! reply code, enhanced status and text, in the spirit of Postfix's
//! `cleanup_strerror` and the engine's `Reason::reply`.
//!
//! Delivery, the queue and the DSN all work with the [`OwnedReply`] that
//! [`Failure::reply`] makes (or with a next hop's own reply), so a reply's
//! code and status travel as numbers and are never parsed back out of the
//! text sluice wrote.

use crate::shell::relay::dns::DnsError;
use crate::shell::reply::{OwnedReply, Status};

/// A delivery failure of sluice's own (a next hop's refusals are its replies).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The policy gave the recipient no next hop.
    NoRoute,
    /// No next hop host had an address.
    NoAddress,
    /// The domain has a null MX (RFC 7505).
    NullMx,
    /// The domain does not exist.
    NoSuchDomain,
    /// A next hop host has no address.
    HostNoAddress,
    /// A name lookup failed for now.
    DnsTemporary,
    /// No next hop host could be reached (no attempt made at all).
    NoAnswer,
    /// The connection to an address failed.
    Connect,
    /// A next hop answered every recipient with 4xx.
    AllDeferred,
    /// The session failed on I/O (a timeout, a reset).
    Io,
    /// The session stopped before this recipient was tried.
    NotTried,
    /// An 8-bit message and a next hop without 8BITMIME.
    No8BitMime,
    /// An SMTPUTF8 message and a next hop without SMTPUTF8.
    NoSmtpUtf8,
    /// The next hop's SIZE is smaller than the message.
    TooBig,
    /// TLS is required and the next hop does not offer STARTTLS.
    TlsRequired,
    /// The engine's client gave up (its reason follows).
    Protocol,
    /// The connection was not in the state STARTTLS needs.
    TlsState,
    /// The TLS handshake failed.
    TlsHandshake,
    /// The session ended before the transaction did.
    EndedEarly,
    /// A reply line did not fit the buffer.
    ReplyTooLong,
    /// The next hop closed the connection.
    Closed,
    /// The recipient was in the queue longer than `expire_after`.
    Expired,
    /// The connector's client certificate (`tls_certificate`) is not
    /// loaded: the appliance config does not declare it.
    NoClientCertificate,
}

impl Failure {
    /// The table: reply code, enhanced status, and the text the details
    /// follow (empty when the details are the whole text).
    fn parts(self) -> (u16, Status, &'static str) {
        use Failure::*;
        match self {
            NoRoute => (554, (5, 4, 4), "No route to this recipient"),
            NoAddress => (451, (4, 4, 3), "No address for the next hop"),
            NullMx => (550, (5, 1, 10), ""),
            NoSuchDomain => (550, (5, 1, 2), ""),
            HostNoAddress => (550, (5, 4, 4), ""),
            DnsTemporary => (451, (4, 4, 3), ""),
            NoAnswer => (451, (4, 4, 1), "No answer from the next hop"),
            Connect => (451, (4, 4, 1), ""),
            AllDeferred => (451, (4, 4, 2), "every recipient deferred by"),
            Io => (451, (4, 4, 2), ""),
            NotTried => (451, (4, 3, 0), "not tried"),
            No8BitMime => (
                451,
                (4, 6, 3),
                "the next hop does not offer 8BITMIME for this 8-bit message",
            ),
            NoSmtpUtf8 => (451, (4, 6, 7), "the next hop does not offer SMTPUTF8"),
            TooBig => (552, (5, 3, 4), "message too big for the next hop"),
            TlsRequired => (
                451,
                (4, 7, 10),
                "TLS is required and the next hop does not offer STARTTLS",
            ),
            Protocol => (451, (4, 4, 2), ""),
            TlsState => (451, (4, 7, 0), "TLS state"),
            TlsHandshake => (451, (4, 7, 5), "TLS handshake with"),
            EndedEarly => (451, (4, 4, 2), "the session ended early"),
            ReplyTooLong => (451, (4, 5, 0), "reply line too long"),
            Closed => (451, (4, 4, 2), "the next hop closed the connection"),
            // The status's class is 4 as sluice has always written it.
            Expired => (554, (4, 4, 7), "Message expired after"),
            NoClientCertificate => (
                451,
                (4, 3, 5),
                "the connector's client certificate is not declared in the appliance config:",
            ),
        }
    }

    /// The one way from a failure to its reply: the table's text, then a
    /// space and `detail` (the host, the address, the I/O error) when
    /// there is one.
    pub fn reply(self, detail: &str) -> OwnedReply {
        let (code, status, text) = self.parts();
        let text = match (text.is_empty(), detail.is_empty()) {
            (_, true) => text.to_string(),
            (true, false) => detail.to_string(),
            (false, false) => format!("{text} {detail}"),
        };
        OwnedReply::new(code, Some(status), text)
    }
}

impl From<&DnsError> for Failure {
    fn from(e: &DnsError) -> Self {
        match e {
            DnsError::NullMx => Failure::NullMx,
            DnsError::NoSuchDomain => Failure::NoSuchDomain,
            DnsError::NoAddress => Failure::HostNoAddress,
            DnsError::Temporary(_) => Failure::DnsTemporary,
        }
    }
}

/// `reply` with ` (host [address])` after its text: which next hop said it.
pub fn at_host(mut reply: OwnedReply, host: &str, addr: &std::net::SocketAddr) -> OwnedReply {
    reply.text.push_str(&format!(" ({host} [{addr}])"));
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_writes_the_replies_as_before() {
        assert_eq!(
            Failure::NoAnswer.reply("").to_string(),
            "451 4.4.1 No answer from the next hop"
        );
        assert_eq!(
            Failure::Connect
                .reply("mx.test [192.0.2.1:25]: refused")
                .to_string(),
            "451 4.4.1 mx.test [192.0.2.1:25]: refused"
        );
        assert_eq!(
            Failure::TlsHandshake
                .reply("mx.test failed: bad")
                .to_string(),
            "451 4.7.5 TLS handshake with mx.test failed: bad"
        );
        assert_eq!(
            Failure::Expired
                .reply("60s in the queue; last reason: x")
                .to_string(),
            "554 4.4.7 Message expired after 60s in the queue; last reason: x"
        );
        for dns in [
            DnsError::NullMx,
            DnsError::NoSuchDomain,
            DnsError::NoAddress,
            DnsError::Temporary("timeout".into()),
        ] {
            let code = if dns.is_temporary() { 451 } else { 550 };
            assert_eq!(
                Failure::from(&dns)
                    .reply(&format!("y.test: {dns}"))
                    .to_string(),
                format!("{code} {} y.test: {dns}", dns.status())
            );
        }
        let addr: std::net::SocketAddr = "192.0.2.1:25".parse().expect("addr");
        assert_eq!(
            at_host(Failure::Closed.reply(""), "mx.test", &addr).to_string(),
            "451 4.4.2 the next hop closed the connection (mx.test [192.0.2.1:25])"
        );
    }
}
