//! The SMTP AUTH exchange (RFC 4954) for the PLAIN (RFC 4616) and LOGIN
//! mechanisms, sans I/O: the command, the 334 challenges, base64, the `*`
//! cancel. It ends in [`Event::Auth`] with the decoded login and password;
//! the shell checks them and calls [`Receiver::auth_accepted`] or
//! [`Receiver::reject`]. Nothing is allocated: credentials live in the
//! receiver's fixed buffer and are zeroed once decided.

use super::{Event, Pending, Phase, Receiver};
use crate::engine::limits::{MAX_AUTH_DECODED, MAX_AUTH_LINE};
use crate::engine::reply::Reason;
use base64ct::{Base64, Encoding};

/// A SASL mechanism the receiver offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Mechanism {
    /// RFC 4616: authzid NUL authcid NUL password, in one response.
    Plain,
    /// The de-facto LOGIN: user name and password, one challenge each.
    Login,
}

impl Mechanism {
    /// Its name as in the EHLO reply and in `Received:` comments.
    pub const fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Login => "LOGIN",
        }
    }
}

/// Which response the exchange waits for after a 334.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// PLAIN without an initial response: the whole PLAIN message.
    Plain,
    /// LOGIN: the user name.
    LoginUser,
    /// LOGIN: the password.
    LoginPassword,
}

/// `334 ` with base64 "Username:" (the LOGIN challenge clients expect).
const CHALLENGE_USER: &[u8] = b"334 VXNlcm5hbWU6\r\n";
/// `334 ` with base64 "Password:".
const CHALLENGE_PASSWORD: &[u8] = b"334 UGFzc3dvcmQ6\r\n";
/// `334 ` with an empty challenge (PLAIN without an initial response).
const CHALLENGE_EMPTY: &[u8] = b"334 \r\n";

/// What a base64 response decoded to.
enum Decoded {
    /// The octets (written to the caller's buffer), this many.
    Octets(usize),
    /// `*`: the client cancelled.
    Cancel,
    /// Not base64.
    Bad,
    /// Longer than [`MAX_AUTH_DECODED`].
    TooLong,
}

/// Decodes one response: `=` is the empty response (RFC 4954 §4).
fn decode(text: &[u8], out: &mut [u8; MAX_AUTH_DECODED]) -> Decoded {
    match text {
        b"*" => return Decoded::Cancel,
        b"=" => return Decoded::Octets(0),
        _ => {}
    }
    if text.len() > MAX_AUTH_DECODED.div_ceil(3) * 4 {
        return Decoded::TooLong;
    }
    match Base64::decode(text, out) {
        Ok(d) => Decoded::Octets(d.len()),
        Err(_) => Decoded::Bad,
    }
}

impl<'h> Receiver<'h> {
    /// Whether AUTH is offered now: on an AUTH listener, once TLS is on
    /// (or in clear text where the configuration allows it, for tests).
    pub(super) fn auth_offered(&self) -> bool {
        self.cfg.auth && (self.tls || self.cfg.auth_plaintext)
    }

    /// Whether the session authenticated.
    pub fn is_authenticated(&self) -> bool {
        self.authenticated
    }

    /// The shell found the credentials of [`Event::Auth`] good:
    /// `235 2.7.0`, and the session is authenticated from now on.
    pub fn auth_accepted(&mut self) {
        if self.phase == Phase::Pending(Pending::Auth) {
            self.forget_credentials();
            self.authenticated = true;
            self.write_reply(Reason::AuthOk.reply());
            self.phase = Phase::Command;
        }
    }

    /// Zeroes the decoded credentials.
    pub(super) fn forget_credentials(&mut self) {
        self.auth_buf.iter_mut().for_each(|b| *b = 0);
        self.auth_buf.clear();
        self.auth_split = 0;
    }

    /// `AUTH mechanism [initial-response]`.
    pub(super) fn cmd_auth(&mut self, arg: usize) -> Option<Event<'_>> {
        if !self.cfg.auth {
            return Some(self.refuse(Reason::NotImplemented));
        }
        if !self.helo {
            return Some(self.refuse(Reason::NeedHelo));
        }
        if self.authenticated {
            return Some(self.refuse(Reason::AlreadyAuthenticated));
        }
        if !self.auth_offered() {
            return Some(self.refuse(Reason::EncryptionRequired));
        }
        if self.mail {
            return Some(self.refuse(Reason::AuthInTransaction));
        }
        if self.line.len() + 2 > MAX_AUTH_LINE {
            return Some(self.refuse(Reason::AuthLineTooLong));
        }
        // The words are copied out of the line first: the decoder writes
        // into the receiver.
        let mut text = [0u8; MAX_AUTH_LINE];
        let (mech, initial) = {
            let args = self.line.get(arg..).unwrap_or(&[]);
            let mut words = args.split(|&b| b == b' ').filter(|w| !w.is_empty());
            let mech = match words.next() {
                Some(m) if m.eq_ignore_ascii_case(b"PLAIN") => Some(Mechanism::Plain),
                Some(m) if m.eq_ignore_ascii_case(b"LOGIN") => Some(Mechanism::Login),
                Some(_) => None,
                None => return Some(self.refuse(Reason::Syntax)),
            };
            let initial = words.next().map(|w| {
                let n = w.len().min(text.len());
                text[..n].copy_from_slice(&w[..n]);
                n
            });
            if words.next().is_some() {
                return Some(self.refuse(Reason::Syntax));
            }
            (mech, initial)
        };
        let Some(mech) = mech else {
            return Some(self.refuse(Reason::UnknownMechanism));
        };
        self.forget_credentials();
        let Some(n) = initial else {
            let (step, challenge) = match mech {
                Mechanism::Plain => (Step::Plain, CHALLENGE_EMPTY),
                Mechanism::Login => (Step::LoginUser, CHALLENGE_USER),
            };
            self.write_raw(&[challenge]);
            self.phase = Phase::Auth(step);
            return None;
        };
        let step = match mech {
            Mechanism::Plain => Step::Plain,
            Mechanism::Login => Step::LoginUser,
        };
        self.take_response(step, &text[..n])
    }

    /// A response line while the exchange is waiting for one.
    pub(super) fn auth_response(&mut self, step: Step) -> Option<Event<'_>> {
        self.phase = Phase::Command;
        if self.overlong {
            self.overlong = false;
            self.line.clear();
            self.forget_credentials();
            return Some(self.refuse(Reason::AuthLineTooLong));
        }
        let mut end = self.line.len();
        if end > 0 && self.line[end - 1] == b'\n' {
            end -= 1;
        }
        if end > 0 && self.line[end - 1] == b'\r' {
            end -= 1;
        }
        if end + 2 > MAX_AUTH_LINE {
            self.forget_credentials();
            return Some(self.refuse(Reason::AuthLineTooLong));
        }
        let mut text = [0u8; MAX_AUTH_LINE];
        text[..end].copy_from_slice(&self.line[..end]);
        self.line.clear();
        self.take_response(step, &text[..end])
    }

    /// Decodes one response and moves the exchange on: the next challenge,
    /// [`Event::Auth`], or a refusal that ends it.
    fn take_response(&mut self, step: Step, text: &[u8]) -> Option<Event<'_>> {
        let mut out = [0u8; MAX_AUTH_DECODED];
        let n = match decode(text, &mut out) {
            Decoded::Octets(n) => n,
            Decoded::Cancel => return self.end_exchange(Reason::AuthCancelled),
            Decoded::Bad => return self.end_exchange(Reason::AuthBadBase64),
            Decoded::TooLong => return self.end_exchange(Reason::AuthLineTooLong),
        };
        let got = &out[..n];
        let ok = match step {
            Step::Plain => self.plain(got),
            Step::LoginUser => {
                let ok = !got.is_empty() && self.auth_buf.extend_from_slice(got).is_ok();
                self.auth_split = self.auth_buf.len();
                if ok {
                    self.write_raw(&[CHALLENGE_PASSWORD]);
                    self.phase = Phase::Auth(Step::LoginPassword);
                    out.iter_mut().for_each(|b| *b = 0);
                    return None;
                }
                false
            }
            Step::LoginPassword => self.auth_buf.extend_from_slice(got).is_ok(),
        };
        out.iter_mut().for_each(|b| *b = 0);
        if !ok {
            // Decodable but not a credential (no login, a PLAIN message
            // without its NULs, or acting for someone else): a failure.
            return self.end_exchange(Reason::AuthFailed);
        }
        let mechanism = match step {
            Step::Plain => Mechanism::Plain,
            Step::LoginUser | Step::LoginPassword => Mechanism::Login,
        };
        self.phase = Phase::Pending(Pending::Auth);
        let (login, secret) = self
            .auth_buf
            .split_at(self.auth_split.min(self.auth_buf.len()));
        Some(Event::Auth {
            mechanism,
            login,
            secret,
        })
    }

    /// A PLAIN message: `authzid NUL authcid NUL password`. Keeps the login
    /// and password; an authorization id other than the login itself is
    /// refused (nobody may act for another user here).
    fn plain(&mut self, msg: &[u8]) -> bool {
        let mut parts = msg.splitn(3, |&b| b == 0);
        let (Some(authz), Some(login), Some(secret)) = (parts.next(), parts.next(), parts.next())
        else {
            return false;
        };
        if login.is_empty() || (!authz.is_empty() && authz != login) {
            return false;
        }
        let ok = self.auth_buf.extend_from_slice(login).is_ok();
        self.auth_split = self.auth_buf.len();
        ok && self.auth_buf.extend_from_slice(secret).is_ok()
    }

    /// Ends the exchange with an error reply.
    fn end_exchange(&mut self, reason: Reason) -> Option<Event<'static>> {
        self.forget_credentials();
        self.phase = Phase::Command;
        Some(self.refuse(reason))
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::super::{BareLineEndings, ReceiverConfig};
    use super::*;
    use std::string::String;
    use std::vec::Vec as StdVec;

    fn cfg(tls: bool) -> ReceiverConfig<'static> {
        ReceiverConfig {
            hostname: "mx.test",
            max_message_size: 10_000,
            max_recipients: 3,
            starttls: true,
            tls,
            bare_line_endings: BareLineEndings::Refuse,
            auth: true,
            auth_plaintext: false,
        }
    }

    /// Runs lines through a receiver; an AUTH event is accepted when the
    /// password is "right" (refused 535 otherwise). Returns the reply
    /// lines' first 9 characters and the credentials the shell saw.
    fn run(c: ReceiverConfig<'static>, input: &[&[u8]]) -> (StdVec<String>, StdVec<String>) {
        let mut rx = Receiver::new(c);
        rx.greet();
        let mut out = StdVec::new();
        let mut seen = StdVec::new();
        let _ = rx.feed(b"");
        for chunk in input {
            let mut pos = 0;
            loop {
                let step = rx.feed(&chunk[pos..]);
                pos += step.consumed;
                match step.event {
                    Some(Event::Auth {
                        mechanism,
                        login,
                        secret,
                    }) => {
                        let ok = secret == b"right";
                        seen.push(std::format!(
                            "{}:{}:{}",
                            mechanism.name(),
                            String::from_utf8_lossy(login),
                            String::from_utf8_lossy(secret)
                        ));
                        if ok {
                            rx.auth_accepted();
                        } else {
                            rx.reject(Reason::AuthFailed.reply());
                        }
                    }
                    Some(_) => {
                        if rx.is_pending() {
                            rx.accept();
                        }
                    }
                    None => {
                        out.extend_from_slice(rx.output());
                        let n = rx.output().len();
                        rx.output_sent(n);
                        if pos >= chunk.len() || rx.is_closed() {
                            break;
                        }
                    }
                }
            }
        }
        let replies = String::from_utf8_lossy(&out)
            .split("\r\n")
            .filter(|l| !l.is_empty() && l.as_bytes().get(3) != Some(&b'-'))
            .map(|l| l.chars().take(10).collect::<String>().trim_end().into())
            .collect();
        (replies, seen)
    }

    fn b64(s: &[u8]) -> String {
        let mut buf = [0u8; 2048];
        String::from(Base64::encode(s, &mut buf).expect("fits"))
    }

    #[test]
    fn plain_with_an_initial_response() {
        let line = std::format!("AUTH PLAIN {}\r\n", b64(b"\0alice\0right"));
        let (r, seen) = run(
            cfg(true),
            &[b"EHLO c\r\n", line.as_bytes(), b"AUTH PLAIN\r\n"],
        );
        assert_eq!(r, ["220 mx.tes", "250 ENHANC", "235 2.7.0", "503 5.5.1"]);
        assert_eq!(seen, ["PLAIN:alice:right"]);
    }

    #[test]
    fn plain_after_an_empty_challenge_and_login_in_two_steps() {
        let plain = std::format!("{}\r\n", b64(b"bob\0bob\0wrong"));
        let (r, seen) = run(cfg(true), &[b"EHLO c\r\nAUTH PLAIN\r\n", plain.as_bytes()]);
        assert_eq!(r, ["220 mx.tes", "250 ENHANC", "334", "535 5.7.8"]);
        assert_eq!(seen, ["PLAIN:bob:wrong"]);
        let user = std::format!("{}\r\n", b64(b"carol"));
        let pass = std::format!("{}\r\n", b64(b"right"));
        let (r, seen) = run(
            cfg(true),
            &[
                b"EHLO c\r\nAUTH LOGIN\r\n",
                user.as_bytes(),
                pass.as_bytes(),
            ],
        );
        assert_eq!(
            r,
            [
                "220 mx.tes",
                "250 ENHANC",
                "334 VXNlcm",
                "334 UGFzc3",
                "235 2.7.0"
            ]
        );
        assert_eq!(seen, ["LOGIN:carol:right"]);
    }

    #[test]
    fn offered_only_with_tls_unless_plaintext_is_allowed() {
        let (r, _) = run(cfg(false), &[b"EHLO c\r\nAUTH PLAIN\r\n"]);
        assert_eq!(r[2], "538 5.7.11");
        let mut rx = Receiver::new(cfg(false));
        rx.greet();
        let _ = rx.feed(b"");
        let _ = rx.feed(b"EHLO c\r\n");
        assert!(!String::from_utf8_lossy(rx.output()).contains("AUTH"));
        let mut c = cfg(false);
        c.auth_plaintext = true;
        let mut rx = Receiver::new(c);
        rx.greet();
        let _ = rx.feed(b"");
        let _ = rx.feed(b"EHLO c\r\n");
        let out = String::from_utf8_lossy(rx.output()).into_owned();
        assert!(
            out.contains("250-AUTH PLAIN LOGIN\r\n250-AUTH=PLAIN LOGIN\r\n"),
            "{out}"
        );
        let mut c = cfg(true);
        c.auth = false;
        let (r, _) = run(c, &[b"EHLO c\r\nAUTH PLAIN\r\n"]);
        assert_eq!(r[2], "502 5.5.1");
    }

    #[test]
    fn cancel_bad_base64_unknown_mechanism_and_long_lines() {
        let (r, seen) = run(
            cfg(true),
            &[b"EHLO c\r\nAUTH LOGIN\r\n*\r\nAUTH PLAIN !!!!\r\nAUTH CRAM-MD5\r\nAUTH\r\n"],
        );
        assert_eq!(
            r,
            [
                "220 mx.tes",
                "250 ENHANC",
                "334 VXNlcm",
                "501 5.0.0",
                "501 5.5.2",
                "504 5.5.4",
                "501 5.5.4"
            ]
        );
        assert!(seen.is_empty());
        let long = std::format!("AUTH PLAIN {}\r\n", "QUFB".repeat(300));
        let (r, _) = run(cfg(true), &[b"EHLO c\r\n", long.as_bytes(), b"NOOP\r\n"]);
        assert_eq!(&r[2..], ["500 5.5.6", "250 2.0.0"]);
        // An over-long response, beyond even the command line buffer.
        let huge = std::format!("{}\r\n", "QUFB".repeat(1000));
        let (r, _) = run(
            cfg(true),
            &[b"EHLO c\r\nAUTH PLAIN\r\n", huge.as_bytes(), b"NOOP\r\n"],
        );
        assert_eq!(&r[2..], ["334", "500 5.5.6", "250 2.0.0"]);
    }

    #[test]
    fn plain_for_someone_else_or_without_nuls_fails() {
        let other = std::format!("AUTH PLAIN {}\r\n", b64(b"admin\0alice\0right"));
        let junk = std::format!("AUTH PLAIN {}\r\n", b64(b"alice right"));
        let (r, seen) = run(
            cfg(true),
            &[b"EHLO c\r\n", other.as_bytes(), junk.as_bytes()],
        );
        assert_eq!(&r[2..], ["535 5.7.8", "535 5.7.8"]);
        assert!(seen.is_empty());
    }

    #[test]
    fn not_in_a_transaction_and_forgotten_after_starttls() {
        let line = std::format!("AUTH PLAIN {}\r\n", b64(b"\0alice\0right"));
        let (r, _) = run(
            cfg(true),
            &[b"EHLO c\r\nMAIL FROM:<a@b.test>\r\n", line.as_bytes()],
        );
        assert_eq!(&r[2..], ["250 2.1.0", "503 5.5.1"]);
        let mut c = cfg(false);
        c.auth_plaintext = true;
        let mut rx = Receiver::new(c);
        rx.greet();
        let _ = rx.feed(b"");
        let _ = rx.feed(b"EHLO c\r\n");
        let step = rx.feed(line.as_bytes());
        assert!(matches!(step.event, Some(Event::Auth { .. })));
        rx.auth_accepted();
        assert!(rx.is_authenticated());
        let _ = rx.feed(b"STARTTLS\r\n");
        rx.tls_established();
        assert!(!rx.is_authenticated());
    }
}
