//! The shell's owned SMTP reply: an [`engine::reply::Reply`](Reply) whose
//! text outlives the engine's borrow.
//!
//! Every answer sluice produces or records (the receiver's replies, the
//! policy's refusals, delivery deferrals, a next hop's reply quoted in a
//! DSN) is a [`Reply`] or an [`OwnedReply`] made from one, so the reply
//! code and the enhanced status code travel as numbers and are never
//! parsed back out of a string sluice wrote itself.

use crate::engine::reply::{Reason, Reply};
use std::fmt;

/// An enhanced status code (RFC 3463): class, subject, detail.
pub type Status = (u8, u16, u16);

/// A reply with its own text: code, optional enhanced status, text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedReply {
    /// The three-digit reply code.
    pub code: u16,
    /// The enhanced status code, when the reply carries one.
    pub status: Option<Status>,
    /// The text after the code(s), one line.
    pub text: String,
}

impl OwnedReply {
    /// A reply from its parts.
    pub fn new(code: u16, status: Option<Status>, text: impl Into<String>) -> Self {
        OwnedReply {
            code,
            status,
            text: text.into(),
        }
    }

    /// Reads a reply written as `CODE [X.Y.Z] text` (a next hop's last reply
    /// line, or one of ours as stored in the spool). `None` when it does not
    /// start with a three-digit code.
    pub fn parse(line: &str) -> Option<Self> {
        let line = line.trim_end_matches(['\r', '\n']);
        let code_str = line.get(..3)?;
        if !code_str.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let code: u16 = code_str.parse().ok()?;
        let rest = line.get(3..).unwrap_or("");
        let rest = rest.strip_prefix([' ', '-']).unwrap_or(rest);
        let (status, text) = match rest.split_once(' ') {
            Some((first, tail)) => match parse_status(first, code) {
                Some(s) => (Some(s), tail),
                None => (None, rest),
            },
            None => match parse_status(rest, code) {
                Some(s) => (Some(s), ""),
                None => (None, rest),
            },
        };
        Some(OwnedReply::new(code, status, text))
    }

    /// The borrowed engine view of this reply.
    pub fn as_reply(&self) -> Reply<'_> {
        Reply {
            code: self.code,
            status: self.status,
            text: &self.text,
        }
    }

    /// 4xx: try again later.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// The enhanced status as `X.Y.Z`, or the one implied by the code's
    /// class (`4.0.0` / `5.0.0` / `2.0.0`) when the reply has none, as a DSN
    /// needs one (RFC 3464 §2.3.4).
    pub fn status_or_class(&self) -> String {
        match self.status {
            Some((a, b, c)) => format!("{a}.{b}.{c}"),
            None => format!("{}.0.0", self.code / 100),
        }
    }
}

/// `X.Y.Z` whose class agrees with the reply code's first digit.
fn parse_status(word: &str, code: u16) -> Option<Status> {
    let mut parts = word.split('.');
    let a: u8 = parts.next()?.parse().ok()?;
    let b: u16 = parts.next()?.parse().ok()?;
    let c: u16 = parts.next()?.parse().ok()?;
    if parts.next().is_some() || u16::from(a) != code / 100 || !matches!(a, 2 | 4 | 5) {
        return None;
    }
    Some((a, b, c))
}

impl From<Reply<'_>> for OwnedReply {
    fn from(r: Reply<'_>) -> Self {
        OwnedReply::new(r.code, r.status, r.text)
    }
}

impl From<Reason> for OwnedReply {
    fn from(r: Reason) -> Self {
        r.reply().into()
    }
}

/// `CODE X.Y.Z text` (or `CODE text` without a status), one line, no CRLF:
/// the form the log, the spool and a DSN's Diagnostic-Code use.
impl fmt::Display for OwnedReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status {
            Some((a, b, c)) => write!(f, "{} {a}.{b}.{c} {}", self.code, self.text),
            None => write!(f, "{} {}", self.code, self.text),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_parse_agree() {
        let r = OwnedReply::new(451, Some((4, 4, 1)), "No answer from the next hop");
        assert_eq!(r.to_string(), "451 4.4.1 No answer from the next hop");
        assert_eq!(OwnedReply::parse(&r.to_string()), Some(r));
    }

    #[test]
    fn a_reply_without_status_keeps_its_text() {
        let r = OwnedReply::parse("550 No such user here\r\n").expect("reply");
        assert_eq!(r, OwnedReply::new(550, None, "No such user here"));
        assert_eq!(r.status_or_class(), "5.0.0");
        assert!(r.code >= 500 && !r.is_transient());
    }

    #[test]
    fn a_status_of_another_class_is_text() {
        let r = OwnedReply::parse("451 5.1.1 odd").expect("reply");
        assert_eq!(r.status, None);
        assert_eq!(r.text, "5.1.1 odd");
    }

    #[test]
    fn continuation_dash_status_only_and_garbage() {
        assert_eq!(
            OwnedReply::parse("250-2.0.0"),
            Some(OwnedReply::new(250, Some((2, 0, 0)), ""))
        );
        assert_eq!(OwnedReply::parse("hello"), None);
        assert_eq!(OwnedReply::parse("45"), None);
    }

    #[test]
    fn from_the_engine_table() {
        let r = OwnedReply::from(Reason::InsufficientStorage);
        assert_eq!(r.to_string(), "452 4.3.1 Insufficient system storage");
        assert_eq!(r.as_reply(), Reason::InsufficientStorage.reply());
    }
}
