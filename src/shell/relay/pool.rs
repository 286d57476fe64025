//! The connection cache: outbound SMTP sessions kept open between
//! deliveries, per next hop, so that the next message to the same place
//! skips the connect, the greeting, EHLO and the TLS handshake (Postfix's
//! connection cache).
//!
//! A session is filed under its [`Key`]: the host's name (also the TLS
//! name, SNI and the name a verified certificate must carry), its address
//! and port, the send connector's TLS policy and the client certificate
//! it presents. Only a delivery with the same key takes it, so a session
//! never carries mail for another TLS policy or under another
//! certificate. Three bounds ([`Limits`]): how long a session may stay
//! idle, how many messages one session carries, how many are kept in all
//! (the oldest goes first). The cache only holds the sessions; opening,
//! using and closing them (QUIT) is [`super::deliver`]'s.

use crate::engine::client::TlsMode;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Default idle limit: as Postfix's `smtp_connection_cache_time_limit`.
pub const DEFAULT_IDLE: Duration = Duration::from_secs(2);
/// Default number of messages one session carries before it is closed.
pub const DEFAULT_MESSAGES: u32 = 100;
/// Default number of idle sessions kept in all.
pub const DEFAULT_SESSIONS: usize = 64;

/// The bounds of the cache (`[queue] connection_cache_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// A session idle longer than this is closed, never used (0: no cache).
    pub idle: Duration,
    /// Messages one session carries at most (0 or 1: no reuse).
    pub messages: u32,
    /// Idle sessions kept in all (0: no cache).
    pub sessions: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            idle: DEFAULT_IDLE,
            messages: DEFAULT_MESSAGES,
            sessions: DEFAULT_SESSIONS,
        }
    }
}

impl Limits {
    /// Whether sessions are kept at all.
    pub fn enabled(&self) -> bool {
        !self.idle.is_zero() && self.messages > 1 && self.sessions > 0
    }
}

/// What a session may be reused for: the same host (name and address)
/// under the same TLS identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    /// The host's name: SNI and the name a verified certificate carries.
    pub host: String,
    /// Its address and port.
    pub addr: SocketAddr,
    /// The send connector's TLS policy.
    pub mode: TlsMode,
    /// The client certificate presented (`[[tls.client]]` name), if any.
    pub certificate: Option<String>,
}

/// An idle session with what the cache knows of it.
struct Entry<C> {
    key: Key,
    conn: C,
    /// Messages it carried so far.
    carried: u32,
    /// Idle since.
    since: Instant,
}

/// The idle sessions, oldest first; `C` is the session (the connection
/// and the client's state), opaque here.
pub struct Pool<C> {
    limits: Limits,
    state: Mutex<State<C>>,
}

/// The cache's contents.
struct State<C> {
    /// Idle sessions, oldest first.
    idle: VecDeque<Entry<C>>,
    /// Sessions never to be used again, waiting to be closed.
    retired: Vec<C>,
    /// Shut down: nothing more is kept.
    closed: bool,
}

impl<C> Pool<C> {
    /// An empty cache with `limits`.
    pub fn new(limits: Limits) -> Self {
        Pool {
            limits,
            state: Mutex::new(State {
                idle: VecDeque::new(),
                retired: Vec::new(),
                closed: false,
            }),
        }
    }

    /// The cache's bounds.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The idle sessions, under the lock (a poisoned lock still holds
    /// sound data: every change is one push or remove).
    fn lock(&self) -> std::sync::MutexGuard<'_, State<C>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most recently idle session for `key` not idle too long, with
    /// the messages it carried; it leaves the cache. Sessions past the
    /// idle limit are handed back too, to be closed.
    pub fn take(&self, key: &Key, now: Instant) -> (Option<(C, u32)>, Vec<C>) {
        let stale = self.expired_at(now);
        let mut st = self.lock();
        let found = st
            .idle
            .iter()
            .rposition(|e| &e.key == key)
            .and_then(|i| st.idle.remove(i))
            .map(|e| (e.conn, e.carried));
        (found, stale)
    }

    /// Files a session for `key` that has carried `carried` messages.
    /// Returned to be closed: this one when it may carry no more (or the
    /// cache is off), or the oldest one when the cache is full.
    pub fn put(&self, key: Key, conn: C, carried: u32, now: Instant) -> Option<C> {
        let mut st = self.lock();
        if st.closed || !self.limits.enabled() || carried >= self.limits.messages {
            return Some(conn);
        }
        let evicted = if st.idle.len() >= self.limits.sessions {
            st.idle.pop_front().map(|e| e.conn)
        } else {
            None
        };
        st.idle.push_back(Entry {
            key,
            conn,
            carried,
            since: now,
        });
        evicted
    }

    /// Removes and returns the sessions idle for longer than the limit
    /// at `now`, to be closed.
    pub fn expired_at(&self, now: Instant) -> Vec<C> {
        let mut st = self.lock();
        let limit = self.limits.idle;
        let mut out = std::mem::take(&mut st.retired);
        // Oldest first: the expired ones are at the front.
        while st
            .idle
            .front()
            .is_some_and(|e| now.saturating_duration_since(e.since) > limit)
        {
            if let Some(e) = st.idle.pop_front() {
                out.push(e.conn);
            }
        }
        out
    }

    /// Retires every idle session: none is used again, the next
    /// [`Pool::expired_at`] hands them back to be closed (the TLS client
    /// configurations changed: the certificates may have).
    pub fn retire(&self) {
        let mut st = self.lock();
        let all: Vec<C> = st.idle.drain(..).map(|e| e.conn).collect();
        st.retired.extend(all);
    }

    /// Closes the cache (shutdown): returns every idle session, to be
    /// closed; from now on [`Pool::put`] keeps none.
    pub fn drain(&self) -> Vec<C> {
        let mut st = self.lock();
        st.closed = true;
        let mut out = std::mem::take(&mut st.retired);
        out.extend(st.idle.drain(..).map(|e| e.conn));
        out
    }

    /// Idle sessions now.
    pub fn len(&self) -> usize {
        self.lock().idle.len()
    }

    /// Whether no session is idle.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(host: &str, port: u16, mode: TlsMode, cert: Option<&str>) -> Key {
        Key {
            host: host.into(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            mode,
            certificate: cert.map(String::from),
        }
    }

    fn limits(idle: u64, messages: u32, sessions: usize) -> Limits {
        Limits {
            idle: Duration::from_secs(idle),
            messages,
            sessions,
        }
    }

    #[test]
    fn a_session_goes_only_to_the_same_host_port_and_tls_identity() {
        let p: Pool<&str> = Pool::new(Limits::default());
        let t = Instant::now();
        let k = key("mx.test", 25, TlsMode::Opportunistic, None);
        assert!(p.put(k.clone(), "s1", 1, t).is_none());
        // Another policy, certificate, port or name: not this session.
        for other in [
            key("mx.test", 25, TlsMode::Required, None),
            key("mx.test", 25, TlsMode::Verify, None),
            key("mx.test", 25, TlsMode::Opportunistic, Some("edge")),
            key("mx.test", 26, TlsMode::Opportunistic, None),
            key("mx2.test", 25, TlsMode::Opportunistic, None),
        ] {
            assert!(p.take(&other, t).0.is_none(), "{other:?}");
        }
        let with_cert = key("mx.test", 25, TlsMode::Opportunistic, Some("edge"));
        assert!(p.put(with_cert.clone(), "s2", 3, t).is_none());
        assert_eq!(p.take(&k, t).0, Some(("s1", 1)));
        assert!(p.take(&k, t).0.is_none(), "taken once");
        assert_eq!(p.take(&with_cert, t).0, Some(("s2", 3)));
        assert!(p.is_empty());
    }

    #[test]
    fn the_most_recently_idle_session_is_taken_first() {
        let p: Pool<&str> = Pool::new(Limits::default());
        let t = Instant::now();
        let k = key("mx.test", 25, TlsMode::Opportunistic, None);
        assert!(p.put(k.clone(), "old", 1, t).is_none());
        assert!(p.put(k.clone(), "new", 1, t).is_none());
        assert_eq!(p.take(&k, t).0, Some(("new", 1)));
        assert_eq!(p.take(&k, t).0, Some(("old", 1)));
    }

    #[test]
    fn idle_sessions_expire_at_the_time_limit() {
        let p: Pool<&str> = Pool::new(limits(2, 100, 64));
        let t = Instant::now();
        let k = key("mx.test", 25, TlsMode::Opportunistic, None);
        assert!(p.put(k.clone(), "a", 1, t).is_none());
        assert!(p
            .put(k.clone(), "b", 1, t + Duration::from_secs(1))
            .is_none());
        assert!(
            p.expired_at(t + Duration::from_secs(2)).is_empty(),
            "at the limit"
        );
        let (found, stale) = p.take(&k, t + Duration::from_millis(2500));
        assert_eq!(stale, ["a"], "past the limit: closed, not used");
        assert_eq!(found, Some(("b", 1)));
        assert!(p.put(k.clone(), "c", 1, t).is_none());
        assert_eq!(p.expired_at(t + Duration::from_secs(3)), ["c"]);
        assert!(p.is_empty());
    }

    #[test]
    fn a_session_that_carried_its_share_is_closed() {
        let p: Pool<&str> = Pool::new(limits(2, 3, 64));
        let t = Instant::now();
        let k = key("mx.test", 25, TlsMode::Opportunistic, None);
        assert!(p.put(k.clone(), "a", 2, t).is_none());
        assert_eq!(p.put(k.clone(), "b", 3, t), Some("b"));
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn a_full_cache_closes_its_oldest_session() {
        let p: Pool<u32> = Pool::new(limits(2, 100, 3));
        let t = Instant::now();
        for i in 0..3 {
            let k = key("mx.test", 25 + i as u16, TlsMode::Opportunistic, None);
            assert!(p.put(k, i, 1, t).is_none());
        }
        let k = key("mx.test", 99, TlsMode::Opportunistic, None);
        assert_eq!(p.put(k, 3, 1, t), Some(0), "the oldest goes");
        assert_eq!(p.len(), 3);
        let mut all = p.drain();
        all.sort_unstable();
        assert_eq!(all, [1, 2, 3]);
        assert!(p.is_empty());
        // Shut down: nothing more is kept.
        let k = key("mx.test", 25, TlsMode::Opportunistic, None);
        assert_eq!(p.put(k, 4, 1, t), Some(4));
    }

    #[test]
    fn retired_sessions_are_never_used_and_come_back_to_be_closed() {
        let p: Pool<&str> = Pool::new(Limits::default());
        let t = Instant::now();
        let k = key("mx.test", 25, TlsMode::Verify, Some("edge"));
        assert!(p.put(k.clone(), "a", 1, t).is_none());
        p.retire();
        let (found, stale) = p.take(&k, t);
        assert_eq!((found, stale), (None, vec!["a"]));
        assert!(p.put(k.clone(), "b", 1, t).is_none(), "new ones are kept");
        assert_eq!(p.take(&k, t).0, Some(("b", 1)));
    }

    #[test]
    fn a_zero_bound_turns_the_cache_off() {
        let t = Instant::now();
        let k = key("mx.test", 25, TlsMode::Opportunistic, None);
        for l in [limits(0, 100, 64), limits(2, 1, 64), limits(2, 100, 0)] {
            let p: Pool<&str> = Pool::new(l);
            assert!(!l.enabled());
            assert_eq!(p.put(k.clone(), "a", 1, t), Some("a"), "{l:?}");
            assert!(p.is_empty());
        }
        assert!(Limits::default().enabled());
    }
}
