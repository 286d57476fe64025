//! What the daemon remembers of one client address between sessions: the
//! connection filter's rate-limit buckets and protocol analysis' score.
//! Sans-IO: the shell passes the time (milliseconds on a monotonic clock)
//! and keeps the records in a table bounded by [`MAX_CLIENTS`].
//!
//! * Rate limits are token buckets: `N` per minute allows a burst of `N`,
//!   then one more every `60/N` seconds.
//! * The score adds the weight of each [`Behaviour`] seen and loses one
//!   point per [`DECAY_MS`] (linear decay). When it reaches the threshold
//!   the address is blocked for `block_for` and its score starts again at
//!   zero.
//!
//! [`MAX_CLIENTS`]: crate::engine::limits::MAX_CLIENTS

/// The score loses one point per minute without new misbehaviour.
pub const DECAY_MS: u64 = 60_000;

/// RSETs in one session beyond this are a flood: each further one scores.
pub const RSET_FLOOD: u32 = 10;

/// Misbehaviour that protocol analysis scores, each with a fixed weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Behaviour {
    /// A RCPT the session refused with a 5xx reply (unknown, relay denied,
    /// blocked): directory harvest.
    RefusedRecipient,
    /// A command refused with a 5xx reply by the receiver (syntax, bad
    /// sequence, unknown command).
    ProtocolError,
    /// Bare CR or LF in DATA (the message was refused): smuggling attempt.
    BareLineEnding,
    /// Commands pipelined without EHLO (PIPELINING was never offered), or
    /// anything sent after DATA before its 354 (RFC 2920 §3.1).
    Pipelining,
    /// An RSET beyond [`RSET_FLOOD`] in one session.
    RsetFlood,
    /// HELO/EHLO naming our own host name or address.
    ForgedHelo,
    /// A session that ended without a MAIL command.
    NoMail,
}

impl Behaviour {
    /// The points it adds to the score.
    pub const fn weight(self) -> u32 {
        match self {
            Behaviour::RefusedRecipient | Behaviour::ProtocolError | Behaviour::NoMail => 1,
            Behaviour::RsetFlood | Behaviour::Pipelining => 2,
            Behaviour::BareLineEnding => 3,
            Behaviour::ForgedHelo => 5,
        }
    }

    /// Its name in logs and traces.
    pub const fn name(self) -> &'static str {
        match self {
            Behaviour::RefusedRecipient => "refused recipient",
            Behaviour::ProtocolError => "protocol error",
            Behaviour::BareLineEnding => "bare line ending",
            Behaviour::Pipelining => "improper pipelining",
            Behaviour::RsetFlood => "RSET flood",
            Behaviour::ForgedHelo => "forged HELO",
            Behaviour::NoMail => "connection without mail",
        }
    }
}

/// A token in [`Bucket`] units: one minute in milliseconds, so that a
/// limit of `N` per minute refills exactly `N` units a millisecond.
const TOKEN: u64 = 60_000;

/// A token bucket, in units of 1/[`TOKEN`] token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Bucket {
    /// Units left.
    units: u64,
    /// When it was last refilled; `None`: never used (full).
    at: Option<u64>,
}

impl Bucket {
    /// Takes one token under a limit of `per_minute`; false when empty.
    fn take(&mut self, now: u64, per_minute: u32) -> bool {
        let cap = u64::from(per_minute) * TOKEN;
        let units = match self.at {
            None => cap,
            Some(at) => {
                let refill = now.saturating_sub(at).saturating_mul(u64::from(per_minute));
                self.units.saturating_add(refill).min(cap)
            }
        };
        self.at = Some(now);
        if units >= TOKEN {
            self.units = units - TOKEN;
            true
        } else {
            self.units = units;
            false
        }
    }
}

/// One client address's record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Client {
    /// Last time anything was recorded (for eviction).
    pub last_seen: u64,
    /// Connections per minute.
    connections: Bucket,
    /// Messages per minute.
    messages: Bucket,
    /// Score points at `score_at`.
    points: u32,
    /// When `points` was last brought up to date.
    score_at: u64,
    /// Refused at connect until then (0: not blocked).
    blocked_until: u64,
}

impl Client {
    /// A client first seen at `now`.
    pub fn new(now: u64) -> Self {
        Client {
            last_seen: now,
            ..Client::default()
        }
    }

    /// A connection: false when it is over `per_minute` (0: no limit).
    pub fn connect(&mut self, now: u64, per_minute: u32) -> bool {
        self.last_seen = now;
        per_minute == 0 || self.connections.take(now, per_minute)
    }

    /// A message (MAIL FROM): false when it is over `per_minute` (0: no
    /// limit).
    pub fn message(&mut self, now: u64, per_minute: u32) -> bool {
        self.last_seen = now;
        per_minute == 0 || self.messages.take(now, per_minute)
    }

    /// The score at `now`, decay applied.
    pub fn score(&self, now: u64) -> u32 {
        let decayed = now.saturating_sub(self.score_at) / DECAY_MS;
        self.points
            .saturating_sub(u32::try_from(decayed).unwrap_or(u32::MAX))
    }

    /// Scores `b`; when the score reaches `threshold` the address is
    /// blocked until `now + block_for` and the score starts again at zero.
    /// True when this blocked it.
    pub fn score_behaviour(
        &mut self,
        now: u64,
        b: Behaviour,
        threshold: u32,
        block_for: u64,
    ) -> bool {
        let elapsed = now.saturating_sub(self.score_at);
        let kept = self.score(now);
        // Keep the part of a minute already elapsed towards the next point.
        self.score_at = if kept == 0 {
            now
        } else {
            now - elapsed % DECAY_MS
        };
        self.points = kept.saturating_add(b.weight());
        self.last_seen = now;
        if threshold > 0 && self.points >= threshold {
            self.points = 0;
            self.score_at = now;
            self.blocked_until = now.saturating_add(block_for);
            return true;
        }
        false
    }

    /// Whether the address is blocked at `now`; milliseconds left.
    pub fn blocked(&self, now: u64) -> Option<u64> {
        (self.blocked_until > now).then(|| self.blocked_until - now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_a_token_bucket() {
        let mut c = Client::default();
        // A burst of 3, then refused.
        assert!(c.connect(1000, 3));
        assert!(c.connect(1001, 3));
        assert!(c.connect(1002, 3));
        assert!(!c.connect(1003, 3));
        assert!(!c.connect(10_000, 3));
        // One token back every 20 s.
        assert!(c.connect(21_003, 3));
        assert!(!c.connect(21_004, 3));
        // A full minute refills everything, never beyond the burst.
        for i in 0..3 {
            assert!(c.connect(500_000 + i, 3));
        }
        assert!(!c.connect(500_010, 3));
        // No limit.
        assert!((0..100).all(|i| c.connect(600_000 + i, 0)));
    }

    #[test]
    fn messages_are_counted_apart_from_connections() {
        let mut c = Client::default();
        assert!(c.message(0, 1));
        assert!(!c.message(1, 1));
        assert!(c.connect(2, 1));
    }

    #[test]
    fn score_decays_one_point_a_minute() {
        let mut c = Client::default();
        for _ in 0..5 {
            assert!(!c.score_behaviour(0, Behaviour::ProtocolError, 100, 1000));
        }
        assert_eq!(c.score(0), 5);
        assert_eq!(c.score(DECAY_MS - 1), 5);
        assert_eq!(c.score(DECAY_MS), 4);
        assert_eq!(c.score(3 * DECAY_MS + 5), 2);
        assert_eq!(c.score(99 * DECAY_MS), 0);
        // Scoring keeps the elapsed part of a minute.
        c.score_behaviour(DECAY_MS + DECAY_MS / 2, Behaviour::NoMail, 100, 1000);
        assert_eq!(c.score(DECAY_MS + DECAY_MS / 2), 5);
        assert_eq!(c.score(2 * DECAY_MS), 4);
    }

    #[test]
    fn threshold_blocks_for_the_time_given_then_starts_again() {
        let mut c = Client::default();
        assert!(!c.score_behaviour(10, Behaviour::ForgedHelo, 8, 5000));
        assert_eq!(c.blocked(10), None);
        assert!(c.score_behaviour(20, Behaviour::BareLineEnding, 8, 5000));
        assert_eq!(c.blocked(20), Some(5000));
        assert_eq!(c.blocked(5019), Some(1));
        assert_eq!(c.blocked(5020), None);
        assert_eq!(c.score(5020), 0);
        // Threshold 0: never blocks.
        let mut d = Client::default();
        assert!(!(0..100).any(|_| d.score_behaviour(0, Behaviour::ForgedHelo, 0, 5000)));
    }

    #[test]
    fn weights_are_fixed() {
        assert_eq!(Behaviour::ForgedHelo.weight(), 5);
        assert_eq!(Behaviour::RefusedRecipient.weight(), 1);
    }
}
