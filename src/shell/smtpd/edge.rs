//! The Edge agents' state in the daemon: the connection filter's DNS list
//! lookups (with their cache) and per-client rate limits, and protocol
//! analysis' per-client score.
//!
//! It lives in [`Shared`](super::daemon::Shared), not in the policy: a
//! policy install keeps it, a restart forgets it. Both tables are bounded:
//! [`MAX_LIST_CACHE`] answers (the one nearest to expiry goes first) and
//! [`MAX_CLIENTS`] client records (the least recently seen goes first).
//!
//! DNS lists are asked at connect time, concurrently, through sluice's own
//! resolver (`[dns] servers`, `timeout`, `attempts`), and awaited at the
//! first RCPT. A lookup that fails (timeout, SERVFAIL, no server) lets the
//! mail through: logged as a warning naming the agent and counted
//! `failed_open`; it is never a refusal and never cached.

use crate::engine::dnsbl::{self, listed};
use crate::engine::limits::{MAX_CLIENTS, MAX_DNS_NAME, MAX_LIST_CACHE};
use crate::engine::policy::{Agent, Table};
use crate::engine::reply::Reason;
use crate::engine::reputation::{Behaviour, Client};
use crate::shell::ops::counters::{self, Tally};
use crate::shell::ops::log;
use crate::shell::policy::runtime::ip16;
use crate::shell::relay::dns::{DnsConfig, Resolver};
use crate::shell::reply::OwnedReply;
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The Edge agents' daemon-wide state.
pub struct Edge {
    /// Milliseconds are counted from here (a monotonic clock).
    epoch: Instant,
    /// The resolver of list queries (`[dns]` of the config at start).
    resolver: Resolver,
    /// Query name → (A records, expiry).
    cache: Mutex<HashMap<String, (Vec<Ipv4Addr>, Instant)>>,
    /// Client address → its record.
    clients: Mutex<HashMap<IpAddr, Client>>,
}

/// What one DNS list said about a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListOutcome {
    /// Listed, with this answer.
    Listed(Ipv4Addr),
    /// Not listed (NXDOMAIN, no answer, or answers not among its codes).
    NotListed,
    /// The lookup failed; the mail goes through (fail-open).
    Failed(String),
}

/// One list's answer for a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListResult {
    /// The list's zone.
    pub zone: String,
    /// An allow list.
    pub allow: bool,
    /// The query name asked.
    pub query: String,
    /// What it said.
    pub outcome: ListOutcome,
}

/// The connection filter's decision from the DNS lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListVerdict {
    /// No list applies, or none listed the client.
    Pass,
    /// An allow list listed the client: the block lists are ignored.
    Allowed(String),
    /// A block list listed the client: refuse every RCPT with this reply.
    Blocked {
        /// The zone.
        zone: String,
        /// The refusal, `550 5.7.1` and the list's text.
        reply: OwnedReply,
    },
}

impl Edge {
    /// The state of a starting daemon, with the resolver of `[dns]`.
    pub fn new(dns: DnsConfig) -> Self {
        Edge {
            epoch: Instant::now(),
            resolver: Resolver::new(dns),
            cache: Mutex::new(HashMap::new()),
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// The resolver of `[dns]` (DNS lists, sender authentication).
    pub(super) fn resolver(&self) -> &Resolver {
        &self.resolver
    }

    /// Milliseconds since the daemon started.
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Asks every DNS list of `t` about `ip` at once (cache first).
    pub async fn check_lists(&self, t: &Table, ip: IpAddr) -> Vec<ListResult> {
        let mut lookups: Vec<Pin<Box<dyn Future<Output = ListResult> + Send + '_>>> = Vec::new();
        for l in &t.dns_lists {
            let zone = String::from_utf8_lossy(t.str(l.zone)).into_owned();
            let (allow, codes) = (l.allow, l.codes);
            lookups.push(Box::pin(async move {
                let query = query_name(ip, &zone);
                let outcome = match &query {
                    None => ListOutcome::Failed("query name too long".into()),
                    Some(q) => match self.lookup(q).await {
                        Ok(addrs) => addrs
                            .iter()
                            .find(|a| listed(&codes, a.octets()))
                            .map_or(ListOutcome::NotListed, |a| ListOutcome::Listed(*a)),
                        Err(e) => ListOutcome::Failed(e),
                    },
                };
                ListResult {
                    zone,
                    allow,
                    query: query.unwrap_or_default(),
                    outcome,
                }
            }));
        }
        crate::shell::join_all(lookups).await
    }

    /// The A records of a list query name: the cache, else the resolver.
    async fn lookup(&self, name: &str) -> Result<Vec<Ipv4Addr>, String> {
        let now = Instant::now();
        if let Ok(c) = self.cache.lock() {
            if let Some((addrs, exp)) = c.get(name) {
                if *exp > now {
                    crate::shell::ops::metrics::DNS_CACHE_HITS.add(1);
                    return Ok(addrs.clone());
                }
            }
        }
        let a = self
            .resolver
            .list_lookup(name)
            .await
            .map_err(|e| e.to_string())?;
        if let Ok(mut c) = self.cache.lock() {
            let ttl = a.ttl.min(crate::shell::relay::dns::LIST_MAX_TTL);
            let expires = Instant::now() + Duration::from_secs(u64::from(ttl));
            if c.len() >= MAX_LIST_CACHE && !c.contains_key(name) {
                c.retain(|_, (_, e)| *e > now);
                if c.len() >= MAX_LIST_CACHE {
                    let nearest = c
                        .iter()
                        .min_by_key(|(_, (_, e))| *e)
                        .map(|(k, _)| k.clone());
                    if let Some(k) = nearest {
                        c.remove(&k);
                    }
                }
            }
            c.insert(name.to_string(), (a.addrs.clone(), expires));
        }
        Ok(a.addrs)
    }

    /// OnConnect for a client that is neither originating nor in an
    /// allowed network: protocol analysis' block, then the connection
    /// rate. `Some` is the 421 to answer with.
    pub fn admit(&self, t: &Table, ip: IpAddr) -> Option<Reason> {
        let now = self.now();
        let analysing = analysing(t);
        let per_minute = if t.enabled(Agent::ConnectionFilter) {
            t.rate_limits.connections_per_minute
        } else {
            0
        };
        if !analysing && per_minute == 0 {
            return None;
        }
        self.with_client(ip, now, |c| {
            if analysing && c.blocked(now).is_some() {
                return Some(Reason::BadReputation);
            }
            (!c.connect(now, per_minute)).then_some(Reason::ConnectionRate)
        })
    }

    /// MAIL FROM: false when the client is over its messages per minute.
    pub fn admit_message(&self, t: &Table, ip: IpAddr) -> bool {
        let per_minute = t.rate_limits.messages_per_minute;
        if per_minute == 0 || !t.enabled(Agent::ConnectionFilter) {
            return true;
        }
        let now = self.now();
        self.with_client(ip, now, |c| c.message(now, per_minute))
    }

    /// Protocol analysis scores `b` for `ip` (when it is on); logs the
    /// block when the score reaches the threshold.
    pub fn score(&self, t: &Table, ip: IpAddr, b: Behaviour) {
        if !analysing(t) {
            return;
        }
        let now = self.now();
        let r = t.reputation;
        let block_ms = u64::from(r.block_for) * 1000;
        let blocked = self.with_client(ip, now, |c| {
            c.score_behaviour(now, b, r.threshold, block_ms)
        });
        if blocked {
            log::warn(format_args!(
                "protocol_analysis: {ip} reached the threshold ({}) with a {}: refused at connect for {}s",
                r.threshold,
                b.name(),
                r.block_for
            ));
        }
    }

    /// The score of `ip` now and the seconds of block left, if known.
    pub fn reputation_of(&self, ip: IpAddr) -> Option<(u32, Option<u64>)> {
        let now = self.now();
        let m = self.clients.lock().ok()?;
        let c = m.get(&ip)?;
        Some((c.score(now), c.blocked(now).map(|ms| ms.div_ceil(1000))))
    }

    /// Runs `f` on `ip`'s record, made if new; the least recently seen
    /// record goes when the table is full.
    fn with_client<R>(&self, ip: IpAddr, now: u64, f: impl FnOnce(&mut Client) -> R) -> R {
        let mut m = match self.clients.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if m.len() >= MAX_CLIENTS && !m.contains_key(&ip) {
            let oldest = m.iter().min_by_key(|(_, c)| c.last_seen).map(|(k, _)| *k);
            if let Some(k) = oldest {
                m.remove(&k);
            }
        }
        let c = m.entry(ip).or_insert_with(|| Client::new(now));
        f(c)
    }

    /// Clients remembered now (for tests and status).
    pub fn clients(&self) -> usize {
        self.clients.lock().map_or(0, |m| m.len())
    }
}

/// Whether protocol analysis runs under `t`.
pub fn analysing(t: &Table) -> bool {
    t.reputation.enabled && t.enabled(Agent::ProtocolAnalysis)
}

/// The query name of `ip` under `zone` (engine::dnsbl).
pub fn query_name(ip: IpAddr, zone: &str) -> Option<String> {
    let mut buf = [0u8; MAX_DNS_NAME];
    let n = dnsbl::query_name(&ip16(ip), zone.as_bytes(), &mut buf)?;
    Some(String::from_utf8_lossy(buf.get(..n)?).into_owned())
}

/// The decision from the lists' answers: an allow list wins, else the
/// first block list (in file order) that lists the client.
pub fn verdict(t: &Table, ip: IpAddr, results: &[ListResult]) -> ListVerdict {
    if let Some(r) = results
        .iter()
        .find(|r| r.allow && matches!(r.outcome, ListOutcome::Listed(_)))
    {
        return ListVerdict::Allowed(r.zone.clone());
    }
    for (r, l) in results.iter().zip(&t.dns_lists) {
        if !r.allow && matches!(r.outcome, ListOutcome::Listed(_)) {
            let text = String::from_utf8_lossy(t.str(l.reply))
                .replace("{client}", &ip.to_string())
                .replace("{zone}", &r.zone);
            return ListVerdict::Blocked {
                zone: r.zone.clone(),
                reply: OwnedReply::new(550, Some((5, 7, 1)), text),
            };
        }
    }
    ListVerdict::Pass
}

/// Logs and counts the lists' answers once per session: every failed
/// lookup (fail-open), and a pass when nothing refused the client.
pub fn tally(ip: IpAddr, results: &[ListResult], v: &ListVerdict) {
    for r in results {
        if let ListOutcome::Failed(e) = &r.outcome {
            counters::count(Agent::ConnectionFilter, Tally::FailedOpen);
            log::warn(format_args!(
                "connection_filter: {ip}: DNS list {} lookup {} failed ({e}); mail let through",
                r.zone, r.query
            ));
        }
    }
    if !matches!(v, ListVerdict::Blocked { .. }) {
        counters::count(Agent::ConnectionFilter, Tally::Passed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_names_for_both_families() {
        assert_eq!(
            query_name("127.0.0.2".parse().unwrap(), "bl.test").as_deref(),
            Some("2.0.0.127.bl.test")
        );
        let v6 = query_name("::1".parse().unwrap(), "bl.test").unwrap();
        assert!(v6.starts_with("1.0.0.0."), "{v6}");
        assert_eq!(v6.len(), 64 + "bl.test".len());
    }

    #[test]
    fn the_client_table_is_bounded_and_evicts_the_least_recent() {
        let e = Edge::new(DnsConfig::default());
        let mut t = Table::new();
        t.rate_limits.connections_per_minute = 1;
        let first: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(e.admit(&t, first), None);
        assert_eq!(e.admit(&t, first), Some(Reason::ConnectionRate));
        // Every later client is seen later than the first.
        std::thread::sleep(Duration::from_millis(5));
        for i in 0..MAX_CLIENTS as u32 {
            let ip = IpAddr::V4(Ipv4Addr::from(0x0b00_0000 + i));
            e.admit(&t, ip);
        }
        assert_eq!(e.clients(), MAX_CLIENTS);
        // The first client was the least recent: forgotten, so let in.
        assert_eq!(e.admit(&t, first), None);
    }

    #[test]
    fn protocol_analysis_blocks_past_the_threshold() {
        let e = Edge::new(DnsConfig::default());
        let mut t = Table::new();
        let ip: IpAddr = "10.0.0.9".parse().unwrap();
        // Off: nothing is scored.
        e.score(&t, ip, Behaviour::ForgedHelo);
        assert_eq!(e.reputation_of(ip), None);
        t.reputation.enabled = true;
        t.reputation.threshold = 6;
        t.reputation.block_for = 60;
        e.score(&t, ip, Behaviour::ForgedHelo);
        assert_eq!(e.reputation_of(ip), Some((5, None)));
        assert_eq!(e.admit(&t, ip), None);
        e.score(&t, ip, Behaviour::ProtocolError);
        assert_eq!(e.admit(&t, ip), Some(Reason::BadReputation));
        assert_eq!(e.reputation_of(ip), Some((0, Some(60))));
        let other: IpAddr = "10.0.0.10".parse().unwrap();
        assert_eq!(e.admit(&t, other), None);
    }
}
