//! The spool's on-disk format: every record type and how a record is
//! framed. These types belong to the spool: the policy renders its next
//! hops and header edits into [`NextHop`] and [`HeaderEdit`] directly, and
//! what is on disk changes only when this file does.
//!
//! A frame is `'S'`, the payload's length (u32 LE), its CRC-32C (u32 LE),
//! then the payload: a postcard [`Head`] followed by raw message octets.
//! Replies are stored as their one-line text (`CODE X.Y.Z text`).

use crate::shell::reply::OwnedReply;
use serde::{Deserialize, Serialize};
use std::io::Read;

/// Largest frame accepted on recovery: a chunk or a message record with a
/// big envelope; anything larger is corruption.
pub(super) const MAX_FRAME: u32 = 64 * 1024 * 1024;
/// Octets before a frame's payload: `'S'`, length, CRC.
pub(super) const FRAME_HEAD: usize = 9;
/// The frame checksum, CRC-32C.
const CASTAGNOLI: crc::Crc<u32, crc::Table<16>> =
    crc::Crc::<u32, crc::Table<16>>::new(&crc::CRC_32_ISCSI);

/// The envelope of a spooled message.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Envelope {
    /// Reverse path (empty for the null sender).
    pub from: Vec<u8>,
    /// Forward paths, in the order accepted.
    pub rcpts: Vec<Vec<u8>>,
    /// The client's HELO/EHLO name.
    pub helo: Vec<u8>,
    /// The client's address.
    pub peer: String,
    /// Unix time of acceptance, seconds.
    pub received: u64,
    /// Message size in octets.
    pub size: u64,
    /// SMTPUTF8 was requested.
    pub smtputf8: bool,
    /// BODY=8BITMIME was declared (or BDAT was used).
    pub body8bit: bool,
    /// The session was under TLS.
    pub tls: bool,
    /// Offset of the body (end of the header block), if one was found.
    pub body_offset: Option<u64>,
    /// Version of the policy that decided the routes.
    pub policy: u64,
    /// Per recipient: the policy's decision (final address, connector, next hop).
    pub routes: Vec<Route>,
    /// The message's Message-ID, for the log.
    pub message_id: Option<String>,
    /// Header edits to splice in when the message leaves.
    pub edits: Vec<HeaderEdit>,
}

/// Where one recipient goes, as the policy decided at acceptance.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Route {
    /// The recipient as given (empty for one added by a rule).
    pub original: Vec<u8>,
    /// The final address.
    pub rcpt: Vec<u8>,
    /// The send connector's name.
    pub connector: Option<String>,
    /// The next hop.
    pub next_hop: NextHop,
    /// A refusal (the recipient is to be bounced), e.g. "550 5.7.1 ...".
    pub refused: Option<String>,
}

/// Where a recipient goes next, as the policy decided and the spool stores
/// it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NextHop {
    /// MX lookup of this domain.
    Mx(String),
    /// These smart hosts, in order.
    SmartHosts(Vec<String>),
    /// Nowhere (refused, or no connector matched).
    None,
}

/// A header edit to splice in when the message leaves, as the policy
/// rendered it and the spool stores it (offsets are into the message as
/// received).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HeaderEdit {
    /// Remove the field at this span of the message (name given for display).
    Remove {
        /// Start offset.
        start: usize,
        /// End offset (line ending included).
        end: usize,
        /// The field's name.
        name: String,
    },
    /// Rename the field name at this span.
    Rename {
        /// Start offset.
        start: usize,
        /// End of the name.
        end: usize,
        /// Old name.
        from: String,
        /// New name.
        to: String,
    },
    /// Put a complete field (line ending included) at the top of the
    /// header block.
    Prepend {
        /// The field's text.
        field: String,
    },
    /// Append a field.
    Add {
        /// Name.
        name: String,
        /// Value (may be empty).
        value: String,
    },
    /// Replace an address inside a field.
    Address {
        /// Start offset.
        start: usize,
        /// End offset.
        end: usize,
        /// The field's name.
        field: String,
        /// Old address.
        from: String,
        /// New address.
        to: String,
    },
    /// `edit` applies only to the copy sent through send connector
    /// `connector` (cross-premises demotion). Declared last, so records
    /// written before it decode unchanged.
    Via {
        /// The send connector's name.
        connector: String,
        /// The edit (never a `Via` itself).
        edit: Box<HeaderEdit>,
    },
}

impl HeaderEdit {
    /// The edits that apply to a copy sent through `connector`: every
    /// plain edit, and the `Via` edits of that connector unwrapped.
    pub fn for_connector<'e>(
        edits: &'e [HeaderEdit],
        connector: Option<&str>,
    ) -> Vec<&'e HeaderEdit> {
        edits
            .iter()
            .filter_map(|e| match e {
                HeaderEdit::Via { connector: c, edit } => {
                    (Some(c.as_str()) == connector).then_some(&**edit)
                }
                plain => Some(plain),
            })
            .collect()
    }
}

/// The typed head of a record.
#[derive(Debug, Serialize, Deserialize)]
pub enum Head {
    /// Octets of message `id`, followed by more chunks or its Message record.
    Chunk {
        /// The message.
        id: u64,
    },
    /// The end of message `id`: its envelope; the last octets follow.
    Message {
        /// The message.
        id: u64,
        /// Its envelope.
        env: Envelope,
    },
    /// The sender of message `id` was warned of the delay (once).
    Warned {
        /// The message.
        id: u64,
    },
    /// A new delivery state of recipient `rcpt` (an index into the
    /// envelope's routes) of message `id`; the latest record wins.
    Status {
        /// The message.
        id: u64,
        /// The route's index.
        rcpt: u16,
        /// Its state.
        state: RcptState,
    },
}

/// Where one recipient of a spooled message stands.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum RcptState {
    /// Not yet tried.
    Pending,
    /// Tried; try again from `until` (Unix seconds).
    Deferred {
        /// Next attempt, Unix seconds.
        until: u64,
        /// Attempts so far.
        attempts: u32,
        /// The last reason, e.g. the remote reply.
        #[serde(with = "reply_text")]
        reason: OwnedReply,
    },
    /// The next hop said 250: it is off our hands.
    Delivered {
        /// When, Unix seconds.
        at: u64,
        /// The remote reply.
        #[serde(with = "reply_text")]
        reply: OwnedReply,
    },
    /// Permanently failed (a bounce is due to the sender).
    Bounced {
        /// When, Unix seconds.
        at: u64,
        /// Why: the remote reply or our reason.
        #[serde(with = "reply_text")]
        reason: OwnedReply,
    },
    /// Bounced, and the delivery status notification is spooled (or none
    /// was due: the sender was `<>`).
    Notified {
        /// When, Unix seconds.
        at: u64,
        /// Why it failed: the bounce's reply as text, or the operator's
        /// deletion (which is no reply).
        reason: String,
    },
}

/// A reply stored as its one-line text (`CODE X.Y.Z text`, as the log
/// shows it), the form records have always had on disk and in the
/// control socket's JSON.
mod reply_text {
    use crate::shell::reply::OwnedReply;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes the reply as its text.
    pub(super) fn serialize<S: Serializer>(r: &OwnedReply, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&r.to_string())
    }

    /// Reads a reply back from its text.
    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<OwnedReply, D::Error> {
        let text = String::deserialize(d)?;
        Ok(super::read_reply(&text))
    }
}

/// A reply sluice wrote, read back from its text. Its status is taken
/// whatever its class (the expiry's `554 4.4.7` has always been written
/// so); text that is no reply at all (never written by sluice) is kept
/// whole under a `554`.
pub fn read_reply(text: &str) -> OwnedReply {
    let Some(mut r) = OwnedReply::parse(text) else {
        return OwnedReply::new(554, None, text);
    };
    if r.status.is_none() {
        if let Some((word, rest)) = r.text.split_once(' ') {
            if let Some(status) = any_class_status(word) {
                r.status = Some(status);
                r.text = rest.to_string();
            }
        }
    }
    r
}

/// `X.Y.Z` of class 2, 4 or 5, in digits only.
fn any_class_status(word: &str) -> Option<crate::shell::reply::Status> {
    if !word.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None;
    }
    let mut parts = word.split('.');
    let a: u8 = parts.next()?.parse().ok()?;
    let b: u16 = parts.next()?.parse().ok()?;
    let c: u16 = parts.next()?.parse().ok()?;
    (parts.next().is_none() && matches!(a, 2 | 4 | 5)).then_some((a, b, c))
}

impl RcptState {
    /// Delivered or bounced: nothing more to do for this recipient.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            RcptState::Delivered { .. } | RcptState::Bounced { .. }
        )
    }
}

/// Frames one record: head, then `data`; returns where `data` starts in
/// `out`.
pub fn frame(head: &Head, data: &[u8], out: &mut Vec<u8>) -> usize {
    let data_at = frame_head(head, data, out);
    out.extend_from_slice(data);
    data_at
}

/// [`frame`] without the data: the frame's start in `out` (its length and
/// CRC count `data`, which the caller writes right after). Returns where
/// the data starts in `out` (its end).
pub fn frame_head(head: &Head, data: &[u8], out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[b'S', 0, 0, 0, 0, 0, 0, 0, 0]);
    // Serialising a plain struct into a Vec cannot fail.
    let _ = postcard::to_io(head, &mut *out);
    let data_at = out.len();
    let head_octets = &out[start + FRAME_HEAD..];
    let len = (head_octets.len() + data.len()) as u32;
    let mut crc = CASTAGNOLI.digest();
    crc.update(head_octets);
    crc.update(data);
    let crc = crc.finalize();
    out[start + 1..start + 5].copy_from_slice(&len.to_le_bytes());
    out[start + 5..start + 9].copy_from_slice(&crc.to_le_bytes());
    data_at
}

/// Reads one frame into `payload`; false when it is cut short, not a
/// frame, too large or fails its CRC.
pub(super) fn read_frame(r: &mut impl Read, payload: &mut Vec<u8>) -> bool {
    let mut head = [0u8; FRAME_HEAD];
    if r.read_exact(&mut head).is_err() || head[0] != b'S' {
        return false;
    }
    let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]);
    let crc = u32::from_le_bytes([head[5], head[6], head[7], head[8]]);
    if len > MAX_FRAME {
        return false;
    }
    crate::shell::buf::set_len_zeroed(payload, len as usize);
    r.read_exact(payload).is_ok() && CASTAGNOLI.checksum(payload) == crc
}

/// The states a message starts with: pending, or bounced for a recipient
/// the policy refused while the message itself was accepted.
pub fn initial_states(env: &Envelope) -> Vec<RcptState> {
    env.routes
        .iter()
        .map(|r| match &r.refused {
            Some(why) => RcptState::Bounced {
                at: env.received,
                reason: read_reply(why),
            },
            None => RcptState::Pending,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_head_and_its_data_written_after_it_are_the_whole_frame() {
        let head = Head::Chunk { id: 7 };
        for data in [&b""[..], b"x", &[0xA5; 70_000]] {
            let mut whole = Vec::new();
            let at = frame(&head, data, &mut whole);
            let mut split = b"before".to_vec();
            let at2 = frame_head(&head, data, &mut split);
            assert_eq!(at2, split.len(), "the data starts at the end");
            split.extend_from_slice(data);
            assert_eq!(&split[6..], &whole[..]);
            assert_eq!(at2 - 6, at);
            let mut payload = Vec::new();
            assert!(read_frame(&mut &whole[..], &mut payload), "it reads back");
        }
    }

    /// The record shapes as they were when the envelope held the policy's
    /// own types and the states plain strings (format version 3).
    mod old {
        use serde::Serialize;

        #[derive(Serialize)]
        pub(super) enum NextHop {
            Mx(String),
            SmartHosts(Vec<String>),
            None,
        }
        #[derive(Serialize)]
        pub(super) enum HeaderEdit {
            Remove {
                start: usize,
                end: usize,
                name: String,
            },
            Rename {
                start: usize,
                end: usize,
                from: String,
                to: String,
            },
            Prepend {
                field: String,
            },
            Add {
                name: String,
                value: String,
            },
            Address {
                start: usize,
                end: usize,
                field: String,
                from: String,
                to: String,
            },
        }

        #[derive(Serialize)]
        pub(super) struct Envelope {
            pub(super) from: Vec<u8>,
            pub(super) rcpts: Vec<Vec<u8>>,
            pub(super) helo: Vec<u8>,
            pub(super) peer: String,
            pub(super) received: u64,
            pub(super) size: u64,
            pub(super) smtputf8: bool,
            pub(super) body8bit: bool,
            pub(super) tls: bool,
            pub(super) body_offset: Option<u64>,
            pub(super) policy: u64,
            pub(super) routes: Vec<Route>,
            pub(super) message_id: Option<String>,
            pub(super) edits: Vec<HeaderEdit>,
        }
        #[derive(Serialize)]
        pub(super) struct Route {
            pub(super) original: Vec<u8>,
            pub(super) rcpt: Vec<u8>,
            pub(super) connector: Option<String>,
            pub(super) next_hop: NextHop,
            pub(super) refused: Option<String>,
        }
        #[derive(Serialize)]
        pub(super) enum State {
            Pending,
            Deferred {
                until: u64,
                attempts: u32,
                reason: String,
            },
            Delivered {
                at: u64,
                reply: String,
            },
            Bounced {
                at: u64,
                reason: String,
            },
            Notified {
                at: u64,
                reason: String,
            },
        }
        #[derive(Serialize)]
        pub(super) enum Head {
            Chunk { id: u64 },
            Message { id: u64, env: Envelope },
            Warned { id: u64 },
            Status { id: u64, rcpt: u16, state: State },
        }
    }

    fn old_envelope() -> old::Envelope {
        let route = |hop| old::Route {
            original: b"a@y.test".to_vec(),
            rcpt: b"b@y.test".to_vec(),
            connector: Some("internet".into()),
            next_hop: hop,
            refused: Some("550 5.7.1 no".into()),
        };
        old::Envelope {
            from: b"s@x.test".to_vec(),
            rcpts: vec![b"a@y.test".to_vec()],
            helo: b"client".to_vec(),
            peer: "192.0.2.1:1234".into(),
            received: 1_700_000_000,
            size: 4242,
            smtputf8: true,
            body8bit: false,
            tls: true,
            body_offset: Some(300),
            policy: 7,
            routes: vec![
                route(old::NextHop::Mx("y.test".into())),
                route(old::NextHop::SmartHosts(vec!["relay:2525".into()])),
                route(old::NextHop::None),
            ],
            message_id: Some("<m@x.test>".into()),
            edits: vec![
                old::HeaderEdit::Prepend {
                    field: "Received: x\r\n".into(),
                },
                old::HeaderEdit::Remove {
                    start: 1,
                    end: 300,
                    name: "X-A".into(),
                },
                old::HeaderEdit::Rename {
                    start: 2,
                    end: 5,
                    from: "X-B".into(),
                    to: "X-C".into(),
                },
                old::HeaderEdit::Add {
                    name: "X-D".into(),
                    value: String::new(),
                },
                old::HeaderEdit::Address {
                    start: 9,
                    end: 20,
                    field: "To".into(),
                    from: "a@y.test".into(),
                    to: "b@y.test".into(),
                },
            ],
        }
    }

    #[test]
    fn records_of_the_old_shape_decode_and_encode_the_same() {
        let states = [
            old::State::Pending,
            old::State::Deferred {
                until: 5,
                attempts: 2,
                reason: "451 4.4.1 mx.y.test [192.0.2.9:25]: refused".into(),
            },
            old::State::Delivered {
                at: 6,
                reply: "250 2.0.0 Ok: queued as X".into(),
            },
            old::State::Bounced {
                at: 7,
                reason: "550 5.1.1 No such user (mx.y.test [192.0.2.9:25])".into(),
            },
            old::State::Notified {
                at: 8,
                reason: "deleted by the operator".into(),
            },
        ];
        let mut heads = vec![
            old::Head::Chunk { id: 1 },
            old::Head::Message {
                id: 1,
                env: old_envelope(),
            },
            old::Head::Warned { id: 1 },
        ];
        heads.extend(states.into_iter().map(|state| old::Head::Status {
            id: 1,
            rcpt: 2,
            state,
        }));
        for h in &heads {
            let bytes = postcard::to_allocvec(h).expect("encode old");
            let new: Head = postcard::from_bytes(&bytes).expect("decode as new");
            assert_eq!(postcard::to_allocvec(&new).expect("encode new"), bytes);
        }
        let bytes = postcard::to_allocvec(&heads[1]).expect("encode");
        let Head::Message { env, .. } = postcard::from_bytes(&bytes).expect("decode") else {
            panic!("not a message");
        };
        assert_eq!(
            env.routes[1].next_hop,
            NextHop::SmartHosts(vec!["relay:2525".into()])
        );
        assert_eq!(env.edits.len(), 5);
        assert_eq!(
            env.edits[4],
            HeaderEdit::Address {
                start: 9,
                end: 20,
                field: "To".into(),
                from: "a@y.test".into(),
                to: "b@y.test".into(),
            }
        );
        assert_eq!(
            initial_states(&env)[0],
            RcptState::Bounced {
                at: 1_700_000_000,
                reason: OwnedReply::new(550, Some((5, 7, 1)), "no"),
            }
        );
    }

    #[test]
    fn replies_are_stored_as_their_text() {
        // The bytes a state with a plain `String` reason had on disk.
        #[derive(Serialize)]
        enum OldState {
            _Pending,
            Deferred {
                until: u64,
                attempts: u32,
                reason: String,
            },
        }
        let text = "554 4.4.7 Message expired after 60s in the queue; last reason: 451 4.4.1 x";
        let old = postcard::to_allocvec(&OldState::Deferred {
            until: 7,
            attempts: 2,
            reason: text.into(),
        })
        .expect("encode");
        let new = RcptState::Deferred {
            until: 7,
            attempts: 2,
            reason: read_reply(text),
        };
        assert_eq!(postcard::to_allocvec(&new).expect("encode"), old);
        let back: RcptState = postcard::from_bytes(&old).expect("decode");
        assert_eq!(back, new);
        // The expiry's status survives, though its class is not the code's.
        let RcptState::Deferred { reason, .. } = back else {
            panic!("not deferred");
        };
        assert_eq!(reason.status, Some((4, 4, 7)));
        assert_eq!(reason.to_string(), text);
        assert_eq!(read_reply("250 ok").to_string(), "250 ok");
    }
}
