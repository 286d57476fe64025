//! Delivery status notifications (RFC 3464): the bounce a sender gets for
//! recipients that failed permanently or expired.
//!
//! A DSN is a `multipart/report; report-type=delivery-status` message from
//! the null sender `<>` to the original envelope sender, with a readable
//! part, the machine-readable status per recipient (the remote reply
//! quoted in `Diagnostic-Code`), and the original message's headers. A
//! message whose own sender is `<>` never gets one (RFC 5321 §6.1).
//!
//! With a non-ASCII address (an SMTPUTF8 message) the status part is
//! `message/global-delivery-status` with the `utf-8` address type, and
//! 8-bit original headers go back as `message/global-headers` (RFC 6533);
//! the report type names the status part (RFC 6522).

use crate::shell::reply::OwnedReply;
use crate::shell::spool::{Envelope, Route};
use crate::shell::time::rfc5322;

/// One failed recipient.
pub struct Failed<'a> {
    /// Its route (final and original address).
    pub route: &'a Route,
    /// The reply or reason, e.g. `550 5.1.1 No such user (mx.example [192.0.2.1])`.
    pub reason: &'a OwnedReply,
}

/// `s` with control characters as spaces, for one header line.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// The DSN for `failed` recipients of the message `qid` (`headers`: its
/// header block); `None` when the sender is `<>`.
pub fn build(
    host: &str,
    qid: &str,
    env: &Envelope,
    headers: &[u8],
    failed: &[Failed<'_>],
    now: u64,
) -> Option<Vec<u8>> {
    report(host, qid, env, headers, failed, now, None)
}

/// The delay warning (RFC 3464 `Action: delayed`) for recipients still
/// being retried; `until` is when sluice gives up.
pub fn delayed(
    host: &str,
    qid: &str,
    env: &Envelope,
    headers: &[u8],
    waiting: &[Failed<'_>],
    now: u64,
    until: u64,
) -> Option<Vec<u8>> {
    report(host, qid, env, headers, waiting, now, Some(until))
}

/// What the parts of one report share.
struct Report<'a> {
    host: &'a str,
    qid: &'a str,
    env: &'a Envelope,
    failed: &'a [Failed<'a>],
    /// A delay warning: when sluice gives up.
    delayed_until: Option<u64>,
    /// `delivery-status` or `global-delivery-status` (RFC 6533).
    status_type: &'static str,
    boundary: String,
}

/// A failure report or a delay warning (`delayed_until`); `None` when the
/// sender is `<>`.
fn report(
    host: &str,
    qid: &str,
    env: &Envelope,
    headers: &[u8],
    failed: &[Failed<'_>],
    now: u64,
    delayed_until: Option<u64>,
) -> Option<Vec<u8>> {
    if env.from.is_empty() {
        return None;
    }
    let global = !env.from.is_ascii()
        || failed
            .iter()
            .any(|f| !f.route.rcpt.is_ascii() || !f.route.original.is_ascii());
    let r = Report {
        host,
        qid,
        env,
        failed,
        delayed_until,
        status_type: if global {
            "global-delivery-status"
        } else {
            "delivery-status"
        },
        boundary: format!("{qid}/{host}"),
    };
    let mut m = r.top(now);
    r.readable(&mut m);
    r.status(&mut m);
    Some(r.quoted_headers(m, headers))
}

impl Report<'_> {
    /// The header block and the readable part's start.
    fn top(&self, now: u64) -> String {
        let (host, qid, status_type, boundary) =
            (self.host, self.qid, self.status_type, &self.boundary);
        let mut m = String::new();
        m.push_str(&format!(
            "From: Mail Delivery System <MAILER-DAEMON@{host}>\r\n"
        ));
        m.push_str(&format!(
            "To: <{}>\r\n",
            String::from_utf8_lossy(&self.env.from)
        ));
        m.push_str(if self.delayed_until.is_some() {
            "Subject: Delayed Mail (still being retried)\r\n"
        } else {
            "Subject: Undelivered Mail Returned to Sender\r\n"
        });
        m.push_str(&format!("Date: {}\r\n", rfc5322(now)));
        m.push_str(&format!("Message-ID: <{qid}.{now}.dsn@{host}>\r\n"));
        m.push_str("Auto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n");
        m.push_str(&format!(
            "Content-Type: multipart/report; report-type={status_type};\r\n\tboundary=\"{boundary}\"\r\n\r\n"
        ));
        m.push_str("This is a MIME-encapsulated message.\r\n\r\n");
        m.push_str(&format!(
            "--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        ));
        m
    }

    /// The readable part's text: what happened, and each recipient's reason.
    fn readable(&self, m: &mut String) {
        let (host, qid) = (self.host, self.qid);
        match self.delayed_until {
            Some(until) => m.push_str(&format!(
                "This is the mail system at host {host}.\r\n\r\nYour message (queue id {qid}) is delayed for the recipients below.\r\nDelivery is still being tried until {}; you need not resend it.\r\n\r\n",
                rfc5322(until)
            )),
            None => m.push_str(&format!(
                "This is the mail system at host {host}.\r\n\r\nYour message (queue id {qid}) could not be delivered to the\r\nrecipients below. The reason follows each one.\r\n\r\n"
            )),
        }
        for f in self.failed {
            m.push_str(&format!(
                "<{}>: {}\r\n",
                String::from_utf8_lossy(&f.route.rcpt),
                clean(&f.reason.to_string())
            ));
        }
    }

    /// The machine-readable part (RFC 3464): per recipient its addresses,
    /// action, status (from its reply) and the reply itself.
    fn status(&self, m: &mut String) {
        let addr = |a: &[u8]| {
            let kind = if a.is_ascii() { "rfc822" } else { "utf-8" };
            format!("{kind}; {}", String::from_utf8_lossy(a))
        };
        m.push_str(&format!(
            "\r\n--{}\r\nContent-Type: message/{}\r\n\r\n",
            self.boundary, self.status_type
        ));
        m.push_str(&format!(
            "Reporting-MTA: dns; {}\r\nX-Sluice-Queue-ID: {}\r\n",
            self.host, self.qid
        ));
        m.push_str(&format!("Arrival-Date: {}\r\n", rfc5322(self.env.received)));
        for f in self.failed {
            m.push_str(&format!("\r\nFinal-Recipient: {}\r\n", addr(&f.route.rcpt)));
            if !f.route.original.is_empty() && f.route.original != f.route.rcpt {
                m.push_str(&format!(
                    "Original-Recipient: {}\r\n",
                    addr(&f.route.original)
                ));
            }
            let action = if self.delayed_until.is_some() {
                "delayed"
            } else {
                "failed"
            };
            m.push_str(&format!(
                "Action: {action}\r\nStatus: {}\r\n",
                f.reason.status_or_class()
            ));
            if let Some(until) = self.delayed_until {
                m.push_str(&format!("Will-Retry-Until: {}\r\n", rfc5322(until)));
            }
            m.push_str(&format!(
                "Diagnostic-Code: smtp; {}\r\n",
                clean(&f.reason.to_string())
            ));
        }
    }

    /// The report so far in `m`, then the original `headers` as the last
    /// part, and the closing boundary.
    fn quoted_headers(&self, mut m: String, headers: &[u8]) -> Vec<u8> {
        let headers_type = if headers.is_ascii() {
            "text/rfc822-headers"
        } else {
            "message/global-headers"
        };
        m.push_str(&format!(
            "\r\n--{}\r\nContent-Type: {headers_type}\r\n\r\n",
            self.boundary
        ));
        let mut out = m.into_bytes();
        let mut h = headers.to_vec();
        while h.ends_with(b"\r\n\r\n") || h.ends_with(b"\n\n") {
            h.pop();
        }
        out.extend_from_slice(&h);
        if !out.ends_with(b"\r\n") {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(format!("\r\n--{}--\r\n", self.boundary).as_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shell::spool::NextHop;

    fn env(from: &str) -> Envelope {
        Envelope {
            from: from.as_bytes().to_vec(),
            rcpts: vec![b"x@y.test".to_vec()],
            helo: b"c".to_vec(),
            peer: "127.0.0.1:1".into(),
            received: 0,
            size: 10,
            smtputf8: false,
            body8bit: false,
            tls: false,
            body_offset: Some(10),
            policy: 0,
            message_id: None,
            routes: Vec::new(),
            edits: Vec::new(),
        }
    }

    #[test]
    fn a_dsn_quotes_the_remote_reply_and_is_multipart_report() {
        let route = Route {
            original: b"x@y.test".to_vec(),
            rcpt: b"x@eu.y.test".to_vec(),
            connector: None,
            next_hop: NextHop::Mx("y.test".into()),
            refused: None,
        };
        let f = [Failed {
            route: &route,
            reason: &OwnedReply::new(550, Some((5, 1, 1)), "No such user (mx.y.test [192.0.2.1])"),
        }];
        let d = String::from_utf8(
            build(
                "edge1.test",
                "Q1",
                &env("a@b.test"),
                b"Subject: hi\r\n\r\n",
                &f,
                60,
            )
            .expect("dsn"),
        )
        .expect("utf8");
        assert!(d.contains("Content-Type: multipart/report; report-type=delivery-status;"));
        assert!(d.contains("Final-Recipient: rfc822; x@eu.y.test\r\nOriginal-Recipient: rfc822; x@y.test\r\nAction: failed\r\nStatus: 5.1.1\r\n"));
        assert!(d.contains("Diagnostic-Code: smtp; 550 5.1.1 No such user"));
        assert!(d.contains("text/rfc822-headers\r\n\r\nSubject: hi\r\n"));
        let parsed = mail_parser::MessageParser::default()
            .parse(d.as_bytes())
            .expect("parses");
        assert_eq!(parsed.parts.len(), 4, "root + 3 parts");
        assert!(
            build("edge1.test", "Q1", &env(""), b"", &f, 60).is_none(),
            "never to <>"
        );
    }

    #[test]
    fn a_dsn_for_utf8_addresses_is_the_global_kind() {
        let route = Route {
            original: "ünïcode@exämple.test".as_bytes().to_vec(),
            rcpt: "ünïcode@exämple.test".as_bytes().to_vec(),
            connector: None,
            next_hop: NextHop::Mx("exämple.test".into()),
            refused: None,
        };
        let f = [Failed {
            route: &route,
            reason: &OwnedReply::new(550, Some((5, 1, 1)), "No such user"),
        }];
        let d = String::from_utf8(
            build(
                "edge1.test",
                "Q2",
                &env("jösé@exämple.test"),
                "Subject: grüße\r\n\r\n".as_bytes(),
                &f,
                60,
            )
            .expect("dsn"),
        )
        .expect("utf8");
        assert!(
            d.contains("multipart/report; report-type=global-delivery-status;"),
            "{d}"
        );
        assert!(d.contains("Content-Type: message/global-delivery-status\r\n"));
        assert!(d.contains("Final-Recipient: utf-8; ünïcode@exämple.test\r\n"));
        assert!(d.contains("Content-Type: message/global-headers\r\n\r\nSubject: grüße\r\n"));
        // ASCII addresses but 8-bit headers: the classic status part, the
        // headers as global-headers.
        let ascii = Route {
            original: b"x@y.test".to_vec(),
            rcpt: b"x@y.test".to_vec(),
            connector: None,
            next_hop: NextHop::Mx("y.test".into()),
            refused: None,
        };
        let f = [Failed {
            route: &ascii,
            reason: &OwnedReply::new(550, Some((5, 1, 1)), "No such user"),
        }];
        let d = String::from_utf8(
            build(
                "edge1.test",
                "Q3",
                &env("a@b.test"),
                "Subject: ü\r\n\r\n".as_bytes(),
                &f,
                60,
            )
            .expect("dsn"),
        )
        .expect("utf8");
        assert!(
            d.contains("report-type=delivery-status;")
                && d.contains("Final-Recipient: rfc822; x@y.test")
        );
        assert!(d.contains("Content-Type: message/global-headers"));
    }
}
