//! The per-record read deadline: a slow drip does not keep a session.
//!
//! A timeout per read lets a client that sends one octet a second (a
//! slowloris) hold a session forever. Like Postfix's
//! `smtpd_per_record_deadline`, the command or data timeout here covers a
//! whole record: it starts at the first wait after the client's last line
//! end and is not restarted by reads that bring no line end, so a command
//! line (or a line of content) must arrive within one timeout. A record
//! is also complete after [`RECORD`] octets without a line end (binary
//! BDAT chunks have none).

use std::time::{Duration, Instant};

/// Octets that count as a record when no line end comes: RFC 5322's line
/// limit (998 octets plus CRLF), rounded up.
const RECORD: usize = 1000;

/// When the record being read began to be waited for.
#[derive(Default)]
pub(super) struct RecordClock {
    /// The first wait of the current record (None: no record begun).
    since: Option<Instant>,
    /// Octets of the current record so far.
    octets: usize,
}

impl RecordClock {
    /// How long the next read may wait: what is left of `timeout` for the
    /// current record (a new record gets all of it).
    pub(super) fn wait(&mut self, timeout: Duration) -> Duration {
        let since = *self.since.get_or_insert_with(Instant::now);
        timeout.saturating_sub(since.elapsed())
    }

    /// Octets were read: a line end, or a record's worth of them, ends the
    /// record, so the next wait has the whole timeout again.
    pub(super) fn read(&mut self, octets: &[u8]) {
        match octets.iter().rposition(|&b| b == b'\n') {
            Some(i) => {
                self.octets = octets.len() - i - 1;
                self.since = None;
            }
            None => self.octets += octets.len(),
        }
        if self.octets >= RECORD {
            self.octets = 0;
            self.since = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drip_without_line_ends_keeps_the_record_open() {
        let mut c = RecordClock::default();
        let _ = c.wait(Duration::from_secs(60));
        assert!(c.since.is_some(), "the first wait begins a record");
        c.read(b"N");
        c.read(b"O");
        assert!(c.since.is_some(), "no line end: the record goes on");
        c.read(b"OP\r\nMA");
        assert!(c.since.is_none(), "a line end ends it");
        assert_eq!(c.octets, 2);
    }

    #[test]
    fn a_record_ends_after_a_thousand_octets_without_line_end() {
        let mut c = RecordClock::default();
        let _ = c.wait(Duration::from_secs(1));
        c.read(&[b'x'; 999]);
        assert!(c.since.is_some());
        c.read(b"x");
        assert!(c.since.is_none());
        assert_eq!(c.octets, 0);
    }

    #[test]
    fn the_wait_shrinks_within_a_record() {
        let mut c = RecordClock {
            since: Some(Instant::now() - Duration::from_secs(5)),
            octets: 0,
        };
        assert!(c.wait(Duration::from_secs(8)) <= Duration::from_secs(3));
        assert_eq!(c.wait(Duration::from_secs(2)), Duration::ZERO);
    }
}
