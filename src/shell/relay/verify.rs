//! Call-ahead recipient verification for the recipient filter: `RCPT TO`
//! at a send connector's next hop (its smart hosts, else the recipient
//! domain's MX, as delivery would go), as Postfix's
//! `reject_unverified_recipient` does, with the connector's TLS policy.
//!
//! The engine's [`Client::verify`] speaks SMTP (EHLO, STARTTLS when the
//! connector's policy asks, `MAIL FROM:<>`, `RCPT TO:<addr>`, `QUIT`);
//! this module moves the octets, bounds the whole probe by
//! `call_ahead_timeout`, and remembers answers in a bounded cache:
//! `250` for `call_ahead_valid_ttl`, `550`/`551`/`553` for
//! `call_ahead_unknown_ttl`, at most [`CALL_AHEAD_CACHE`] addresses, the
//! least recently used evicted. A next hop that is down, times out or
//! answers anything else gives [`Probe::Failed`] (the recipient filter
//! answers `450 4.1.1`), which is never cached.

use super::deliver::{targets, timed, Attempt, Conn, TlsClients};
use super::dns::Resolver;
use crate::engine::client::{self, Client, Event, TlsMode};
use crate::engine::limits::CALL_AHEAD_CACHE;
use crate::engine::policy::{Probe, Table, TlsPolicy};
use crate::shell::spool::NextHop;
use async_net::TcpStream;
use futures_lite::future;
use rustls::pki_types::ServerName;
use std::collections::HashMap;
use std::io;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A call-ahead answer and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The answer.
    pub probe: Probe,
    /// From the cache (no probe was made).
    pub cached: bool,
    /// What the next hop said, or why there was no answer (for the log
    /// and `sluice trace`).
    pub detail: String,
}

/// One remembered answer.
struct Entry {
    /// 250 (true) or 550/551/553 (false).
    valid: bool,
    /// When it is forgotten.
    expires: Instant,
    /// Last use, for eviction.
    used: u64,
    /// What the next hop said.
    detail: String,
}

/// The bounded cache of answers, by connector and address.
#[derive(Default)]
struct Cache {
    /// The answers.
    map: HashMap<String, Entry>,
    /// A use counter (least recent = smallest).
    tick: u64,
}

impl Cache {
    /// A live answer for `key`, marked used; an expired one is dropped.
    fn get(&mut self, key: &str, now: Instant) -> Option<(bool, String)> {
        self.tick += 1;
        let tick = self.tick;
        match self.map.get_mut(key) {
            Some(e) if e.expires > now => {
                e.used = tick;
                Some((e.valid, e.detail.clone()))
            }
            Some(_) => {
                self.map.remove(key);
                None
            }
            None => None,
        }
    }

    /// Remembers an answer for `ttl`, evicting the least recently used
    /// entry when full.
    fn put(&mut self, key: String, valid: bool, ttl: Duration, detail: String, now: Instant) {
        if ttl.is_zero() {
            return;
        }
        if self.map.len() >= CALL_AHEAD_CACHE && !self.map.contains_key(&key) {
            let oldest = self
                .map
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.map.remove(&k);
            }
        }
        self.tick += 1;
        let entry = Entry {
            valid,
            expires: now + ttl,
            used: self.tick,
            detail,
        };
        self.map.insert(key, entry);
    }
}

/// Call-ahead for the daemon's sessions (and `sluice trace`): resolver,
/// TLS clients and the cache.
pub struct Verifier {
    /// Our name for EHLO.
    helo: String,
    /// Name lookups (MX, A/AAAA), as delivery does them.
    resolver: Resolver,
    /// TLS client configurations.
    tls: TlsClients,
    /// Remembered answers.
    cache: Mutex<Cache>,
}

impl Verifier {
    /// A verifier saying `helo` in EHLO.
    pub fn new(helo: String, resolver: Resolver, tls: TlsClients) -> Self {
        Verifier {
            helo,
            resolver,
            tls,
            cache: Mutex::new(Cache::default()),
        }
    }

    /// Verifies `rcpt` at the next hop of connector `conn` of `t`: from the
    /// cache when it has a live answer, else by a probe bounded by the
    /// table's `call_ahead_timeout`.
    pub async fn check(&self, t: &Table, conn: u16, rcpt: &[u8]) -> Verified {
        let rf = &t.recipient_filter;
        let name = t
            .connectors
            .get(usize::from(conn))
            .map(|c| String::from_utf8_lossy(t.str(c.name)).into_owned())
            .unwrap_or_default();
        let key = format!("{name}\n{}", String::from_utf8_lossy(rcpt).to_lowercase());
        if let Some((valid, detail)) = self.lock().get(&key, Instant::now()) {
            let probe = if valid { Probe::Valid } else { Probe::Unknown };
            return Verified {
                probe,
                cached: true,
                detail,
            };
        }
        let limit = Duration::from_secs(u64::from(rf.call_ahead_timeout.max(1)));
        let (probe, detail) = future::or(self.probe(t, conn, rcpt), async {
            async_io::Timer::after(limit).await;
            (
                Probe::Failed,
                format!("no answer within {} s", limit.as_secs()),
            )
        })
        .await;
        let ttl = match probe {
            Probe::Valid => Some((true, rf.valid_ttl)),
            Probe::Unknown => Some((false, rf.unknown_ttl)),
            Probe::Failed => None,
        };
        if let Some((valid, secs)) = ttl {
            let ttl = Duration::from_secs(u64::from(secs));
            self.lock()
                .put(key, valid, ttl, detail.clone(), Instant::now());
        }
        Verified {
            probe,
            cached: false,
            detail,
        }
    }

    /// The cache, also after a panic elsewhere.
    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One probe: each host of the next hop in turn until one answers the
    /// RCPT with 2xx or 550/551/553.
    async fn probe(&self, t: &Table, conn: u16, rcpt: &[u8]) -> (Probe, String) {
        let Some(c) = t.connectors.get(usize::from(conn)) else {
            return (Probe::Failed, "no such connector".into());
        };
        let next_hop = if c.smart_hosts.count > 0 {
            NextHop::SmartHosts(
                t.list(c.smart_hosts)
                    .map(|h| String::from_utf8_lossy(h).into_owned())
                    .collect(),
            )
        } else {
            let domain = crate::engine::addr::domain_of(rcpt);
            NextHop::Mx(String::from_utf8_lossy(domain).into_owned())
        };
        let attempt = Attempt {
            helo: &self.helo,
            resolver: &self.resolver,
            tls: &self.tls,
            mode: tls_mode(c.tls),
            next_hop: &next_hop,
            connector: None,
            certificate: None,
            pool: None,
            deadlines: None,
        };
        let hosts = match targets(&attempt).await {
            Ok(h) => h,
            Err(r) => return (Probe::Failed, r.reply().to_string()),
        };
        let mut last = String::from("no next hop");
        for (host, addr) in hosts {
            match self.ask(&attempt, &host, addr, rcpt).await {
                Ok((Some(p), said)) => return (p, format!("{host} [{addr}]: {said}")),
                Ok((None, said)) => last = format!("{host} [{addr}]: {said}"),
                Err(e) => last = format!("{host} [{addr}]: {e}"),
            }
        }
        (Probe::Failed, last)
    }

    /// One SMTP session with `host`: the RCPT's verdict, if it gave one,
    /// and what was said.
    async fn ask(
        &self,
        a: &Attempt<'_>,
        host: &str,
        addr: std::net::SocketAddr,
        rcpt: &[u8],
    ) -> io::Result<(Option<Probe>, String)> {
        // The whole probe is bounded by the caller; this only keeps a
        // connect from outliving it needlessly.
        let stream = timed(Duration::from_secs(60), TcpStream::connect(addr)).await?;
        let _ = stream.set_nodelay(true);
        let rcpts = [rcpt];
        let env = client::Transaction {
            from: b"",
            rcpts: &rcpts,
            size: 0,
            body8bit: false,
            smtputf8: false,
        };
        let cfg = client::ClientConfig {
            helo: a.helo,
            tls: a.mode,
            tls_available: true,
        };
        let mut p = ProbeSession {
            a,
            host,
            cl: Client::verify(cfg, env),
            conn: Conn::Plain(stream),
            buf: vec![0u8; 4096],
            start: 0,
            end: 0,
        };
        p.run().await
    }
}

/// The engine's TLS mode for a connector's policy.
fn tls_mode(p: TlsPolicy) -> TlsMode {
    match p {
        TlsPolicy::Opportunistic => TlsMode::Opportunistic,
        TlsPolicy::Required => TlsMode::Required,
        TlsPolicy::Verify => TlsMode::Verify,
    }
}

/// What an RCPT reply means for call-ahead: 2xx valid, 550/551/553
/// unknown, anything else no verdict.
pub fn classify(code: u16) -> Option<Probe> {
    match code {
        200..=299 => Some(Probe::Valid),
        550 | 551 | 553 => Some(Probe::Unknown),
        _ => None,
    }
}

/// One probe session's moving parts.
struct ProbeSession<'a> {
    a: &'a Attempt<'a>,
    host: &'a str,
    cl: Client<'a>,
    conn: Conn,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl ProbeSession<'_> {
    /// Runs the client to the RCPT's reply (or a failure), then sends QUIT.
    async fn run(&mut self) -> io::Result<(Option<Probe>, String)> {
        loop {
            let step = self.cl.feed(&self.buf[self.start..self.end]);
            self.start += step.consumed;
            match step.event {
                Some(Event::Rcpt { reply, .. }) => {
                    let said = format!(
                        "{} {}",
                        reply.code,
                        String::from_utf8_lossy(reply.text).trim()
                    );
                    let verdict = classify(reply.code);
                    // The client has queued QUIT; say it and go.
                    let _ = self.conn.write_all(self.cl.output()).await;
                    let _ = self.conn.flush().await;
                    return Ok((verdict, said));
                }
                Some(Event::Failed { why, reply }) => {
                    let said = match reply {
                        Some(r) => format!(
                            "{why:?}: {} {}",
                            r.code,
                            String::from_utf8_lossy(r.text).trim()
                        ),
                        None => format!("{why:?}"),
                    };
                    let _ = self.conn.write_all(self.cl.output()).await;
                    return Ok((None, said));
                }
                Some(Event::StartTls) => self.start_tls().await?,
                Some(_) => return Ok((None, "unexpected state".into())),
                None if step.consumed > 0 && self.start < self.end => continue,
                None => self.write_and_read().await?,
            }
        }
    }

    /// STARTTLS was answered 220: the handshake, with the connector's policy.
    async fn start_tls(&mut self) -> io::Result<()> {
        self.conn.write_all(self.cl.output()).await?;
        let n = self.cl.output().len();
        self.cl.output_sent(n);
        let Conn::Plain(plain) = std::mem::replace(&mut self.conn, Conn::Gone) else {
            return Err(io::ErrorKind::NotConnected.into());
        };
        let cfg = if self.a.mode == TlsMode::Verify {
            self.a.tls.verify.clone()
        } else {
            self.a.tls.any.clone()
        };
        let name = ServerName::try_from(self.host.to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let tls = futures_rustls::TlsConnector::from(cfg)
            .connect(name, plain)
            .await
            .inspect_err(|_| crate::shell::ops::metrics::TLS_FAILURES.add("outbound", 1))?;
        crate::shell::ops::metrics::TLS_HANDSHAKES.add("outbound", 1);
        self.conn = Conn::Tls(Box::new(tls));
        self.start = self.end;
        self.cl.tls_established();
        Ok(())
    }

    /// Sends the client's output, then reads more replies.
    async fn write_and_read(&mut self) -> io::Result<()> {
        if !self.cl.output().is_empty() {
            self.conn.write_all(self.cl.output()).await?;
            self.conn.flush().await?;
            let n = self.cl.output().len();
            self.cl.output_sent(n);
        }
        if self.cl.is_closed() {
            return Err(io::Error::other("the session ended early"));
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            return Err(io::Error::other("reply too long"));
        }
        let n = self.conn.read(&mut self.buf[self.end..]).await?;
        if n == 0 {
            return Err(io::Error::other("connection closed"));
        }
        self.end += n;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_is_bounded_and_evicts_the_least_recent() {
        let now = Instant::now();
        let mut c = Cache::default();
        let hour = Duration::from_secs(3600);
        for i in 0..CALL_AHEAD_CACHE {
            c.put(format!("a{i}"), true, hour, String::new(), now);
        }
        assert!(c.get("a0", now).is_some()); // a0 is now the most recent
        c.put("new".into(), false, hour, String::new(), now);
        assert_eq!(c.map.len(), CALL_AHEAD_CACHE);
        assert!(c.get("a1", now).is_none(), "a1 was the least recent");
        assert!(c.get("a0", now).is_some());
        assert_eq!(c.get("new", now).map(|x| x.0), Some(false));
        // expiry
        assert!(c.get("new", now + hour + Duration::from_secs(1)).is_none());
        // a zero TTL remembers nothing
        c.put("zero".into(), true, Duration::ZERO, String::new(), now);
        assert!(c.get("zero", now).is_none());
    }

    #[test]
    fn replies_classify_as_postfix_does() {
        assert_eq!(classify(250), Some(Probe::Valid));
        assert_eq!(classify(551), Some(Probe::Unknown));
        assert_eq!(classify(553), Some(Probe::Unknown));
        assert_eq!(classify(550), Some(Probe::Unknown));
        assert_eq!(classify(450), None);
        assert_eq!(classify(421), None);
        assert_eq!(classify(554), None);
    }
}
