//! Our `Received:` trace field (RFC 5321 §4.4), spliced in on the way out.

use crate::shell::time::{now_secs, rfc5322};
use std::net::SocketAddr;

/// What the field says of the transaction.
pub(super) struct Facts<'t> {
    /// The client's HELO/EHLO name, as it sent it.
    pub(super) helo: &'t [u8],
    /// EHLO was used.
    pub(super) esmtp: bool,
    /// MAIL had SMTPUTF8.
    pub(super) smtputf8: bool,
    /// The accepted recipients.
    pub(super) rcpts: &'t [Vec<u8>],
    /// The SMTP AUTH login, when the session authenticated.
    pub(super) login: Option<&'t str>,
}

/// The field: the client's name and address, our name, the protocol
/// (RFC 3848 / RFC 6531 keywords), the queue id, the recipient when there
/// is only one, and the date.
pub(super) fn received(host: &str, t: Facts<'_>, peer: SocketAddr, tls: bool, id: &str) -> String {
    let proto = match (t.smtputf8, t.esmtp, tls) {
        (true, _, false) => "UTF8SMTP",
        (true, _, true) => "UTF8SMTPS",
        (false, true, true) => "ESMTPS",
        (false, true, false) => "ESMTP",
        (false, false, true) => "SMTPS",
        (false, false, false) => "SMTP",
    };
    // RFC 3848 / RFC 6531: an "A" for an authenticated session, and the
    // login in a comment (as Postfix's authenticated header does).
    let (auth, who) = match t.login {
        Some(l) => (
            "A",
            format!(
                " (authenticated as {})",
                l.chars()
                    .filter(|c| !c.is_control() && *c != '(' && *c != ')')
                    .collect::<String>()
            ),
        ),
        None => ("", String::new()),
    };
    // The client's name is its own claim: no controls, no comment
    // delimiters, bounded.
    let helo: String = String::from_utf8_lossy(t.helo)
        .chars()
        .filter(|c| !c.is_control() && *c != '(' && *c != ')')
        .take(255)
        .collect();
    let rcpt = match t.rcpts {
        [one] => format!("\r\n\tfor <{}>", String::from_utf8_lossy(one)),
        _ => String::new(),
    };
    format!(
        "Received: from {helo} ([{}]){who}\r\n\tby {host} (sluice) with {proto}{auth} id {id}{rcpt};\r\n\t{}\r\n",
        peer.ip(),
        rfc5322(now_secs())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_keyword_and_single_recipient() {
        let rcpts = vec![b"a@x.test".to_vec()];
        let f = Facts {
            helo: b"client(evil)\r\nX: y",
            esmtp: true,
            smtputf8: false,
            rcpts: &rcpts,
            login: None,
        };
        let peer: SocketAddr = "192.0.2.7:4000".parse().expect("addr");
        let r = received("mx.test", f, peer, true, "0000000000000001");
        assert!(r.starts_with(
            "Received: from clientevilX: y ([192.0.2.7])\r\n\tby mx.test (sluice) with ESMTPS id 0000000000000001\r\n\tfor <a@x.test>;\r\n\t"
        ), "{r}");
        assert!(r.ends_with("\r\n"));
    }

    #[test]
    fn an_authenticated_session_is_esmtpsa_and_names_the_login() {
        let rcpts = vec![b"a@x.test".to_vec(), b"b@x.test".to_vec()];
        let f = |login| Facts {
            helo: b"scanner.test",
            esmtp: true,
            smtputf8: false,
            rcpts: &rcpts,
            login,
        };
        let peer: SocketAddr = "192.0.2.7:4000".parse().expect("addr");
        let r = received("mx.test", f(Some("scan(1)")), peer, true, "1");
        assert!(r.starts_with(
            "Received: from scanner.test ([192.0.2.7]) (authenticated as scan1)\r\n\tby mx.test (sluice) with ESMTPSA id 1;"
        ), "{r}");
        let r = received("mx.test", f(Some("scan")), peer, false, "1");
        assert!(r.contains("with ESMTPA id 1;"), "{r}");
        let r = received("mx.test", f(None), peer, true, "1");
        assert!(
            r.contains("with ESMTPS id 1;") && !r.contains("authenticated"),
            "{r}"
        );
    }
}
