//! The delivery queue: every accepted message whose recipients are not all
//! final, rebuilt from the spool at start, delivered per next hop.
//!
//! A scheduler wakes when a message arrives and once a second; for each
//! message with due recipients (pending, or deferred until now) it groups
//! them by route (connector and next hop) and hands each group to
//! [`deliver::attempt`]. Each result is recorded in the spool before
//! anything else happens to that recipient, so retries survive a restart.
//! The record is not synced on its own: it rides on the next group commit,
//! and the scheduler syncs the spool at least once a second. A record lost
//! to a crash (or a crash between the next hop's `250` and the record)
//! means the recipient is tried again: a duplicate, the only one SMTP
//! allows, never a loss. Retry times follow `[queue] retry` (the last wait
//! repeats); the sender is warned once after `warn_after`; a recipient
//! still undelivered `expire_after` after acceptance is bounced. All three
//! go by the queue's [`Clock`]. Deliveries run at most `concurrency` at
//! once, `concurrency_per_destination` per next hop.
//!
//! Deliveries share a connection cache ([`super::pool`]): a session stays
//! open after its transaction for the next message to the same next hop.
//! So that this happens under load and not only by chance, a delivery
//! that ends hands its slot (and so the session it just kept) to the next
//! message held back for the same next hop, if one is waiting; the
//! scheduler's tick closes the sessions idle past the limit.

use crate::engine::client::TlsMode;
use crate::engine::policy::TlsPolicy;
use crate::shell::config::QueueConfig;
use crate::shell::deadline::Deadlines;
use crate::shell::policy::install::Installer;
use crate::shell::relay::deliver::{self, Attempt, Result1, Sessions, TlsClients};
use crate::shell::relay::dns::Resolver;
use crate::shell::relay::failure::Failure;
use crate::shell::reply::OwnedReply;
use crate::shell::spool::{NextHop, RcptState, Spool, Stored};
use smol::Executor;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Where the queue reads the time, in Unix seconds: retries, delay
/// warnings and expiry follow it. The daemon's is [`SystemClock`]; unit
/// tests move one by hand instead of sleeping through a retry schedule.
pub trait Clock: Send + Sync {
    /// Now, Unix seconds.
    fn now(&self) -> u64;
}

/// The system's clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> u64 {
        crate::shell::time::now_secs()
    }
}

/// What a report we made needs from the next hop: SMTPUTF8 when an
/// envelope address (the recipient as given or as routed) is not ASCII,
/// 8BITMIME when any octet of it is 0x80 or above (it quotes the original
/// headers, which may be UTF-8). So a host lacking them gets it deferred,
/// never corrupted.
fn report_flags(to: &[u8], routes: &[crate::shell::spool::Route], message: &[u8]) -> (bool, bool) {
    let smtputf8 = !to.is_ascii()
        || routes
            .iter()
            .any(|r| !r.rcpt.is_ascii() || !r.original.is_ascii());
    (smtputf8, !message.is_ascii())
}

/// Nothing more to do for a recipient: delivered, or bounced and the
/// sender told (a bounced one still owes its DSN).
fn settled(s: &RcptState) -> bool {
    matches!(s, RcptState::Delivered { .. } | RcptState::Notified { .. })
}

struct Entry {
    msg: Stored,
    /// A delivery task holds this message.
    busy: bool,
    /// In `waiting`: due, held back by a concurrency limit.
    waiting: bool,
}

/// Candidates the scheduler looks at between its full passes: new
/// messages and `retry` targets (`fresh`), and due messages a concurrency
/// limit held back (`waiting`, oldest first). A wake (a new message, a
/// finished delivery) looks only at these, so accepting mail costs the
/// same with a queue of ten messages or of a hundred thousand; the whole
/// queue is walked once a second (due retries, expiry, warnings, DSNs).
#[derive(Default)]
struct Candidates {
    fresh: VecDeque<u64>,
    waiting: VecDeque<u64>,
}

/// The queue shared by the sessions (which add messages) and the scheduler.
pub struct Queue {
    spool: Arc<Spool>,
    cfg: QueueConfig,
    helo: String,
    installer: Arc<Installer>,
    resolver: Resolver,
    /// The TLS client configurations; replaced on SIGHUP (the client
    /// certificates reload), a delivery keeps the one it began with.
    tls: std::sync::RwLock<Arc<TlsClients>>,
    /// By id, so oldest first: ids grow with time.
    entries: Mutex<BTreeMap<u64, Entry>>,
    /// Deliveries running, in total and per next hop.
    running: Mutex<Running>,
    wake: (smol::channel::Sender<()>, smol::channel::Receiver<()>),
    candidates: Mutex<Candidates>,
    /// `flush`: the next pass walks the whole queue.
    rescan: AtomicBool,
    /// The time retries, warnings and expiry go by.
    clock: Arc<dyn Clock>,
    /// Outbound sessions kept open between deliveries.
    sessions: Sessions,
    /// The deliveries' reply deadlines (no timer per reply: see
    /// [`Deadlines`]), checked by the daemon's deadline task.
    replies: Deadlines,
    /// Results that could not be written (the spool's device was full):
    /// applied in memory, written again at each pass until they land.
    unrecorded: Mutex<Vec<Unrecorded>>,
}

/// A message's recipient states not yet written to the spool.
type Unrecorded = (u64, Vec<(u16, RcptState)>);

/// Waiting messages a finished delivery looks at for one to the same
/// next hop (the oldest ones; the rest wait for the scheduler).
const HANDOFF_SCAN: usize = 64;

/// A queued message's state as the metrics name it ([`Queue::depth`]):
/// a delivery holds it, `[queue] hold` keeps it, a recipient is deferred,
/// a recipient was never tried, or only its bounce report is owed.
pub const DEPTH_STATES: [&str; 5] = ["active", "hold", "deferred", "pending", "bounce"];

/// Deliveries running: in total, and per next hop (a [`Group`]'s key).
type Running = (usize, HashMap<String, usize>);

/// A group of recipients of one message that share a route.
struct Group {
    key: String,
    connector: Option<String>,
    next_hop: NextHop,
    routes: Vec<u16>,
    attempts: Vec<u32>,
}

impl Queue {
    /// A queue over `spool`, starting with the messages recovered from it.
    pub fn new(
        spool: Arc<Spool>,
        cfg: QueueConfig,
        helo: String,
        installer: Arc<Installer>,
        resolver: Resolver,
        tls: TlsClients,
        recovered: Vec<Stored>,
    ) -> Arc<Queue> {
        let entries = recovered
            .into_iter()
            .filter(|m| m.states.iter().any(|s| !settled(s)))
            .map(|m| {
                (
                    m.id,
                    Entry {
                        msg: m,
                        busy: false,
                        waiting: false,
                    },
                )
            })
            .collect();
        let cfg_cache = cfg.connection_cache;
        Arc::new(Queue {
            spool,
            cfg,
            helo,
            installer,
            resolver,
            tls: std::sync::RwLock::new(Arc::new(tls)),
            entries: Mutex::new(entries),
            running: Mutex::new((0, HashMap::new())),
            wake: smol::channel::bounded(1),
            candidates: Mutex::new(Candidates::default()),
            // The first pass walks what was recovered.
            rescan: AtomicBool::new(true),
            clock: Arc::new(SystemClock),
            sessions: Sessions::new(cfg_cache),
            replies: Deadlines::new(),
            unrecorded: Mutex::new(Vec::new()),
        })
    }

    /// Wakes the deliveries whose reply wait has passed its deadline (the
    /// daemon's deadline task calls it every tick).
    pub fn check_replies(&self) -> usize {
        self.replies.check()
    }

    /// Closes the outbound sessions idle past the limit (and those
    /// retired), with QUIT.
    async fn close_idle(&self) {
        deliver::close(self.sessions.expired_at(std::time::Instant::now())).await;
    }

    /// Closes every cached outbound session with QUIT and keeps no more
    /// (shutdown).
    pub async fn close_sessions(&self) {
        deliver::close(self.sessions.drain()).await;
    }

    /// Messages waiting (for `status` and logs).
    pub fn len(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or(0)
    }

    /// Whether the queue is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The live state of every message in the queue, for `sluice queue
    /// list|show` over the control socket: per message its id, whether a
    /// delivery holds it now (`busy`), whether the sender was warned, and
    /// its per-recipient states as the queue has them (which include what
    /// `flush` and `retry` changed and the spool does not record).
    pub fn inspect(&self) -> serde_json::Value {
        let messages: Vec<serde_json::Value> = match self.entries.lock() {
            Ok(e) => e
                .values()
                .map(|x| {
                    serde_json::json!({
                        "id": crate::shell::spool::format_id(x.msg.id),
                        "busy": x.busy,
                        "warned": x.msg.warned,
                        "states": serde_json::to_value(&x.msg.states).unwrap_or_default(),
                    })
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        serde_json::json!({ "ok": true, "now": self.clock.now(), "messages": messages })
    }

    /// The queue's depth for the metrics: messages per state, in
    /// [`DEPTH_STATES`] order, and the age in seconds of the oldest message
    /// (0 when empty). Walks the queue under its lock: for a scrape or the
    /// STATS line, not for the hot path.
    pub fn depth(&self) -> ([u64; DEPTH_STATES.len()], u64) {
        let mut n = [0u64; DEPTH_STATES.len()];
        let now = self.clock.now();
        let mut oldest = now;
        if let Ok(e) = self.entries.lock() {
            for x in e.values() {
                oldest = oldest.min(x.msg.env.received);
                let has = |f: fn(&RcptState) -> bool| x.msg.states.iter().any(f);
                let state = if x.busy {
                    0
                } else if self.cfg.hold {
                    1
                } else if has(|s| matches!(s, RcptState::Deferred { .. })) {
                    2
                } else if has(|s| matches!(s, RcptState::Pending)) {
                    3
                } else {
                    4
                };
                n[state] += 1;
            }
        }
        (n, now.saturating_sub(oldest))
    }

    /// Takes a newly accepted message and wakes the scheduler.
    pub fn add(&self, msg: Stored) {
        if msg.states.iter().all(settled) {
            return;
        }
        let id = msg.id;
        if let Ok(mut e) = self.entries.lock() {
            e.insert(
                msg.id,
                Entry {
                    msg,
                    busy: false,
                    waiting: false,
                },
            );
        }
        if let Ok(mut c) = self.candidates.lock() {
            c.fresh.push_back(id);
        }
        let _ = self.wake.0.try_send(());
    }

    /// Makes every deferred recipient due now (`sluice queue flush`).
    pub fn flush(&self) {
        if let Ok(mut e) = self.entries.lock() {
            for entry in e.values_mut() {
                for s in &mut entry.msg.states {
                    if let RcptState::Deferred { until, .. } = s {
                        *until = 0;
                    }
                }
            }
        }
        self.rescan.store(true, Ordering::Relaxed);
        let _ = self.wake.0.try_send(());
    }

    /// The wait before the next attempt after `attempts` attempts.
    fn retry_after(&self, attempts: u32) -> Duration {
        let i = (attempts.max(1) as usize - 1).min(self.cfg.retry.len().saturating_sub(1));
        self.cfg
            .retry
            .get(i)
            .copied()
            .unwrap_or(Duration::from_secs(4 * 3600))
    }

    /// Runs the scheduler on `ex` until the executor stops.
    pub async fn run(self: Arc<Self>, ex: Arc<Executor<'static>>) {
        let mut tick: u32 = 0;
        let mut last_full = std::time::Instant::now();
        // One timer, set again only when it fires: a new one per wake
        // would wake the reactor thread twice per message (insert,
        // remove). Set from when it fired, so a slow pass is not followed
        // by passes that catch up.
        let mut second = async_io::Timer::after(Duration::from_secs(1));
        loop {
            // true: the second passed (a full pass is due).
            let ticked = futures_lite::future::or(
                async {
                    let _ = self.wake.1.recv().await;
                    false
                },
                async {
                    (&mut second).await;
                    true
                },
            )
            .await;
            if ticked {
                second.set_after(Duration::from_secs(1));
            }
            self.close_idle().await;
            let full = self.rescan.swap(false, Ordering::Relaxed)
                || ticked
                || last_full.elapsed() >= Duration::from_secs(1);
            if !full {
                // A wake: new messages, freed slots.
                if !self.cfg.hold {
                    let ids = self.next_candidates();
                    self.start(&ex, ids);
                }
                continue;
            }
            last_full = std::time::Instant::now();
            self.record_again().await;
            // Delivery results are written unsynced (a lost one is a retry,
            // never a loss); make them durable at least once a second.
            if let Err(e) = self.spool.sync().await {
                crate::shell::ops::log::warn(format_args!("queue: spool sync: {e}"));
            }
            self.expire().await;
            for id in self.unnotified() {
                self.notify(id).await;
            }
            for id in self.to_warn() {
                self.warn(id).await;
            }
            // Every half minute, delete spool segments whose messages are done.
            tick = tick.wrapping_add(1);
            if tick % 30 == 0 {
                let n = self
                    .spool
                    .collect(|id| self.entries.lock().map_or(true, |e| e.contains_key(&id)));
                if n > 0 {
                    crate::shell::ops::log::info(format_args!(
                        "spool: {n} finished segment(s) deleted"
                    ));
                }
            }
            if self.cfg.hold {
                continue;
            }
            // The whole queue, oldest first; the lists start over.
            let ids: Vec<u64> = match (self.entries.lock(), self.candidates.lock()) {
                (Ok(mut e), Ok(mut c)) => {
                    c.fresh.clear();
                    c.waiting.clear();
                    e.values_mut().for_each(|x| x.waiting = false);
                    e.keys().copied().collect()
                }
                _ => Vec::new(),
            };
            self.start(&ex, ids);
        }
    }

    /// The candidates of a wake: every fresh id, then as many waiting ones
    /// as deliveries may start (the rest keep their place).
    fn next_candidates(&self) -> Vec<u64> {
        let free = match self.running.lock() {
            Ok(r) => self.cfg.concurrency.saturating_sub(r.0),
            Err(_) => 0,
        };
        let Ok(mut c) = self.candidates.lock() else {
            return Vec::new();
        };
        let mut ids: Vec<u64> = c.fresh.drain(..).collect();
        let n = free.min(c.waiting.len());
        ids.extend(c.waiting.drain(..n));
        ids
    }

    /// Starts a delivery for each of `ids` that is due and fits.
    fn start(self: &Arc<Self>, ex: &Arc<Executor<'static>>, ids: Vec<u64>) {
        for (id, groups) in self.due(ids) {
            let q = self.clone();
            ex.spawn(async move { q.deliver(id, groups).await })
                .detach();
        }
    }

    /// Messages with bounced recipients whose sender has not been told.
    fn unnotified(&self) -> Vec<u64> {
        match self.entries.lock() {
            Ok(e) => e
                .values()
                .filter(|x| {
                    !x.busy
                        && x.msg
                            .states
                            .iter()
                            .any(|s| matches!(s, RcptState::Bounced { .. }))
                })
                .map(|x| x.msg.id)
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Messages with recipients deferred longer than `warn_after` whose
    /// sender was not warned yet.
    fn to_warn(&self) -> Vec<u64> {
        let limit = self.cfg.warn_after.as_secs();
        let t = self.clock.now();
        match self.entries.lock() {
            Ok(e) => e
                .values()
                .filter(|x| {
                    !x.busy
                        && !x.msg.warned
                        && !x.msg.env.from.is_empty()
                        && t >= x.msg.env.received.saturating_add(limit)
                        && x.msg
                            .states
                            .iter()
                            .any(|s| matches!(s, RcptState::Deferred { .. }))
                })
                .map(|x| x.msg.id)
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Sends the delay warning for `id` once, and records that it did.
    async fn warn(&self, id: u64) {
        let Some(msg) = self
            .entries
            .lock()
            .ok()
            .and_then(|e| e.get(&id).map(|x| x.msg.clone()))
        else {
            return;
        };
        let qid = crate::shell::spool::format_id(id);
        let waiting: Vec<crate::shell::relay::dsn::Failed<'_>> = msg
            .states
            .iter()
            .zip(&msg.env.routes)
            .filter_map(|(s, route)| match s {
                RcptState::Deferred { reason, .. } => {
                    Some(crate::shell::relay::dsn::Failed { route, reason })
                }
                _ => None,
            })
            .collect();
        let head = msg.read_head().unwrap_or_default();
        let until = msg.env.received + self.cfg.expire_after.as_secs();
        if let Some(report) = crate::shell::relay::dsn::delayed(
            &self.helo,
            &qid,
            &msg.env,
            &head,
            &waiting,
            self.clock.now(),
            until,
        ) {
            match self.inject(&msg.env.from, report).await {
                Ok(w) => crate::shell::ops::log::event(
                    crate::shell::ops::log::Kind::Defer,
                    Some(&qid),
                    msg.env.message_id.as_deref(),
                    format_args!(
                        "delay warning {} to=<{}>",
                        crate::shell::spool::format_id(w),
                        String::from_utf8_lossy(&msg.env.from)
                    ),
                ),
                Err(e) => {
                    crate::shell::ops::log::event(
                        crate::shell::ops::log::Kind::Defer,
                        Some(&qid),
                        msg.env.message_id.as_deref(),
                        format_args!("the delay warning could not be spooled: {e}"),
                    );
                    return;
                }
            }
        }
        if self.spool.record_warned(id).await.is_ok() {
            if let Ok(mut e) = self.entries.lock() {
                if let Some(entry) = e.get_mut(&id) {
                    entry.msg.warned = true;
                }
            }
        }
    }

    /// Makes the deferred recipients of `id` due now; false if unknown.
    pub fn retry(&self, id: u64) -> bool {
        let found = match self.entries.lock() {
            Ok(mut e) => match e.get_mut(&id) {
                Some(entry) => {
                    for s in &mut entry.msg.states {
                        if let RcptState::Deferred { until, .. } = s {
                            *until = 0;
                        }
                    }
                    true
                }
                None => false,
            },
            Err(_) => false,
        };
        if found {
            if let Ok(mut c) = self.candidates.lock() {
                c.fresh.push_back(id);
            }
        }
        let _ = self.wake.0.try_send(());
        found
    }

    /// Removes `id` from the queue without a bounce (the operator's
    /// decision, recorded in the spool); false if unknown or being delivered.
    pub async fn delete(&self, id: u64) -> Result<bool, String> {
        let changes: Vec<(u16, RcptState)> = match self.entries.lock() {
            Ok(mut e) => match e.get_mut(&id) {
                Some(entry) if !entry.busy => {
                    entry.busy = true;
                    entry
                        .msg
                        .states
                        .iter()
                        .enumerate()
                        .filter(|(_, s)| !settled(s))
                        .map(|(i, _)| {
                            (
                                i as u16,
                                RcptState::Notified {
                                    at: self.clock.now(),
                                    reason: "deleted by the operator".into(),
                                },
                            )
                        })
                        .collect()
                }
                _ => return Ok(false),
            },
            Err(_) => return Err("queue lock poisoned".into()),
        };
        let r = self
            .spool
            .record(id, &changes)
            .await
            .map_err(|e| e.to_string());
        if let Ok(mut e) = self.entries.lock() {
            if r.is_ok() {
                e.remove(&id);
            } else if let Some(entry) = e.get_mut(&id) {
                entry.busy = false;
            }
        }
        r.map(|()| true)
    }

    /// Spools the DSN for the bounced recipients of `id` (none for a
    /// message from `<>`), then marks them notified. The DSN goes through
    /// the same pipeline as any message: the policy routes it.
    async fn notify(&self, id: u64) {
        let Some(msg) = self
            .entries
            .lock()
            .ok()
            .and_then(|e| e.get(&id).map(|x| x.msg.clone()))
        else {
            return;
        };
        let bounced: Vec<(u16, OwnedReply)> = msg
            .states
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match s {
                RcptState::Bounced { reason, .. } => Some((i as u16, reason.clone())),
                _ => None,
            })
            .collect();
        let qid = crate::shell::spool::format_id(id);
        let head = msg.read_head().unwrap_or_default();
        let failed: Vec<crate::shell::relay::dsn::Failed<'_>> = bounced
            .iter()
            .filter_map(|(i, reason)| {
                msg.env
                    .routes
                    .get(usize::from(*i))
                    .map(|route| crate::shell::relay::dsn::Failed { route, reason })
            })
            .collect();
        let t = self.clock.now();
        if let Some(report) =
            crate::shell::relay::dsn::build(&self.helo, &qid, &msg.env, &head, &failed, t)
        {
            match self.inject(&msg.env.from, report).await {
                Ok(dsn_id) => crate::shell::ops::log::event(
                    crate::shell::ops::log::Kind::Bounce,
                    Some(&qid),
                    msg.env.message_id.as_deref(),
                    format_args!(
                        "dsn={} to=<{}>",
                        crate::shell::spool::format_id(dsn_id),
                        String::from_utf8_lossy(&msg.env.from)
                    ),
                ),
                Err(e) => {
                    // Keep the recipients bounced: the DSN is tried again.
                    crate::shell::ops::log::event(
                        crate::shell::ops::log::Kind::Bounce,
                        Some(&qid),
                        msg.env.message_id.as_deref(),
                        format_args!("the DSN could not be spooled: {e}"),
                    );
                    return;
                }
            }
        }
        let changes: Vec<(u16, RcptState)> = bounced
            .into_iter()
            .map(|(i, reason)| {
                let reason = reason.to_string();
                (i, RcptState::Notified { at: t, reason })
            })
            .collect();
        if self.spool.record(id, &changes).await.is_ok() {
            self.apply(id, &changes);
        }
        self.forget_if_done(id);
    }

    /// Spools a message we made (a DSN) from `<>` to `to`, routed by the
    /// policy as local, originating mail, and queues it.
    async fn inject(&self, to: &[u8], message: Vec<u8>) -> Result<u64, String> {
        let policy = self.installer.current();
        let attribution = crate::engine::policy::Attribution {
            inbound: None,
            originating: true,
            blocked: false,
        };
        let rcpts: [&[u8]; 1] = [to];
        let penv = crate::shell::policy::runtime::Arrival {
            attribution,
            client: std::net::IpAddr::from([127, 0, 0, 1]),
            sender: b"",
            rcpts: &rcpts,
            directory: None,
            rcpt_checks: None,
            auth: None,
            login: None,
        };
        let out = crate::shell::policy::runtime::decide(&policy, &penv, &message);
        let routes = out
            .recipients
            .iter()
            .filter(|r| r.added_by.is_none())
            .map(|r| crate::shell::spool::Route {
                original: r.original.as_bytes().to_vec(),
                rcpt: r.final_addr.as_bytes().to_vec(),
                connector: r.connector.clone(),
                next_hop: r.next_hop.clone(),
                refused: r.rejected.clone(),
            })
            .collect::<Vec<_>>();
        let (smtputf8, body8bit) = report_flags(to, &routes, &message);
        let env = crate::shell::spool::Envelope {
            from: Vec::new(),
            rcpts: vec![to.to_vec()],
            helo: self.helo.as_bytes().to_vec(),
            peer: "127.0.0.1:0".into(),
            received: self.clock.now(),
            size: message.len() as u64,
            smtputf8,
            body8bit,
            tls: false,
            body_offset: crate::engine::header::end_of_headers(&message, true).map(|n| n as u64),
            policy: policy.table.version,
            message_id: crate::engine::header::find(
                crate::shell::policy::runtime::header_block(&message),
                b"Message-ID",
            )
            .map(|v| String::from_utf8_lossy(crate::engine::header::trim(v)).into_owned()),
            routes,
            edits: out.edits.iter().map(|(_, e)| e.clone()).collect(),
        };
        let id = self.spool.new_id();
        let parts = self
            .spool
            .commit(id, &env, message)
            .await
            .map_err(|e| e.to_string())?;
        let mut states = crate::shell::spool::initial_states(&env);
        // A DSN that cannot be delivered is never bounced in turn.
        for s in &mut states {
            if let RcptState::Bounced { at, reason } = s {
                *s = RcptState::Notified {
                    at: *at,
                    reason: reason.to_string(),
                };
            }
        }
        // Our own reports are never warned about in turn.
        self.add(Stored {
            id,
            env,
            parts,
            states,
            warned: true,
        });
        Ok(id)
    }

    /// Bounces recipients whose time is up.
    async fn expire(&self) {
        let t = self.clock.now();
        let limit = self.cfg.expire_after.as_secs();
        // (message, its Message-ID, the recipients bounced)
        type Expired = (u64, Option<String>, Vec<(u16, RcptState)>);
        let mut expired: Vec<Expired> = Vec::new();
        if let Ok(mut e) = self.entries.lock() {
            for entry in e.values_mut().filter(|e| !e.busy) {
                if t < entry.msg.env.received.saturating_add(limit) {
                    continue;
                }
                let mut changes = Vec::new();
                for (i, s) in entry.msg.states.iter_mut().enumerate() {
                    if let RcptState::Deferred { reason, .. } = s {
                        let st = RcptState::Bounced {
                            at: t,
                            reason: Failure::Expired
                                .reply(&format!("{limit}s in the queue; last reason: {reason}")),
                        };
                        *s = st.clone();
                        changes.push((i as u16, st));
                    }
                }
                if !changes.is_empty() {
                    for (i, _) in &changes {
                        let route = entry.msg.env.routes.get(usize::from(*i));
                        let connector = route.and_then(|r| r.connector.as_deref());
                        crate::shell::ops::metrics::BOUNCED
                            .add(crate::shell::ops::stats::connector_label(connector), 1);
                    }
                    expired.push((entry.msg.id, entry.msg.env.message_id.clone(), changes));
                }
            }
        }
        for (id, message_id, changes) in expired {
            let qid = crate::shell::spool::format_id(id);
            if let Err(e) = self.spool.record(id, &changes).await {
                crate::shell::ops::log::warn(format_args!(
                    "queue: recording the expiry of {}: {e}",
                    crate::shell::spool::format_id(id)
                ));
            }
            crate::shell::ops::log::event(
                crate::shell::ops::log::Kind::Bounce,
                Some(&qid),
                message_id.as_deref(),
                format_args!("expired: {} recipient(s) after {limit}s", changes.len()),
            );
            self.forget_if_done(id);
        }
    }

    /// The TLS client configurations deliveries use now.
    fn tls(&self) -> Arc<TlsClients> {
        match self.tls.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Replaces the TLS client configurations (SIGHUP reloaded the client
    /// certificates); deliveries under way keep theirs.
    pub fn set_tls(&self, tls: TlsClients) {
        let tls = Arc::new(tls);
        match self.tls.write() {
            Ok(mut g) => *g = tls,
            Err(p) => *p.into_inner() = tls,
        }
        // A session kept open presents the old certificate: none is used
        // again, the next tick closes them.
        self.sessions.retire();
    }

    /// Picks the messages with due recipients and marks them busy, within
    /// the concurrency limits.
    fn due(&self, ids: Vec<u64>) -> Vec<(u64, Vec<Group>)> {
        let t = self.clock.now();
        let mut out = Vec::new();
        let (Ok(mut entries), Ok(mut running), Ok(mut cands)) = (
            self.entries.lock(),
            self.running.lock(),
            self.candidates.lock(),
        ) else {
            return out;
        };
        let mut ids = ids.into_iter();
        while let Some(id) = ids.next() {
            if running.0 >= self.cfg.concurrency {
                // No slot left: the rest wait for one, in their order.
                for id in std::iter::once(id).chain(ids) {
                    if let Some(e) = entries.get_mut(&id) {
                        if !e.busy && !e.waiting {
                            e.waiting = true;
                            cands.waiting.push_back(id);
                        }
                    }
                }
                break;
            }
            let Some(entry) = entries.get_mut(&id).filter(|e| !e.busy) else {
                continue;
            };
            entry.waiting = false;
            let groups = groups_due(&entry.msg, t);
            if groups.is_empty() {
                continue;
            }
            if !self.take_slots(&mut running, &groups) {
                entry.waiting = true;
                cands.waiting.push_back(id);
                continue;
            }
            entry.busy = true;
            out.push((entry.msg.id, groups));
        }
        out
    }

    /// Counts a delivery of `groups` as running, if it fits the limits
    /// (in total and per next hop).
    fn take_slots(&self, running: &mut Running, groups: &[Group]) -> bool {
        let (total, per) = running;
        let fits = *total < self.cfg.concurrency
            && groups.iter().all(|g| {
                per.get(&g.key).copied().unwrap_or(0) < self.cfg.concurrency_per_destination
            });
        if fits {
            *total += 1;
            for g in groups {
                *per.entry(g.key.clone()).or_insert(0) += 1;
            }
        }
        fits
    }

    /// One delivery of message `id`: an attempt per group, each result
    /// logged and recorded; then, while a message for the same next hop
    /// waits, that one in the same slot (the session just kept goes to
    /// it); then the slots are free.
    async fn deliver(self: Arc<Self>, id: u64, groups: Vec<Group>) {
        let (mut id, mut groups) = (id, groups);
        let mut handed = 0;
        loop {
            self.deliver_one(id, &groups).await;
            if let Ok(mut e) = self.entries.lock() {
                if let Some(entry) = e.get_mut(&id) {
                    entry.busy = false;
                }
            }
            self.forget_if_done(id);
            handed += 1;
            if handed >= self.cfg.connection_cache.messages {
                break;
            }
            match self.waiting_for(&groups) {
                Some((next, g)) => (id, groups) = (next, g),
                None => break,
            }
        }
        self.release(&groups);
        // A slot is free: messages held back by the concurrency limits go
        // now, not at the next tick.
        let _ = self.wake.0.try_send(());
    }

    /// The attempts for message `id`'s `groups`, each recorded.
    async fn deliver_one(&self, id: u64, groups: &[Group]) {
        let msg = match self.entries.lock() {
            Ok(e) => e.get(&id).map(|e| e.msg.clone()),
            Err(_) => None,
        };
        let Some(msg) = msg else { return };
        let policy = self.installer.current();
        let tls = self.tls();
        for g in groups {
            let certificate = client_certificate(&policy, g.connector.as_deref());
            let attempt = Attempt {
                helo: &self.helo,
                resolver: &self.resolver,
                tls: &tls,
                mode: tls_mode(&policy, g.connector.as_deref()),
                next_hop: &g.next_hop,
                connector: g.connector.as_deref(),
                certificate: certificate.as_deref(),
                pool: Some(&self.sessions),
                deadlines: Some(&self.replies),
            };
            let outcome = deliver::attempt(&attempt, &msg, &g.routes).await;
            let how = Sent {
                certificate: certificate.as_deref(),
                reused: outcome.reused,
            };
            self.record_results(&msg, g, &outcome.results, how).await;
        }
    }

    /// A message held back by the concurrency limits whose due recipients
    /// all go to the one next hop of `groups`: it leaves the waiting list,
    /// marked busy, with its groups. None unless the cache is on and
    /// `groups` is one next hop; only the oldest [`HANDOFF_SCAN`] waiting
    /// messages are looked at.
    fn waiting_for(&self, groups: &[Group]) -> Option<(u64, Vec<Group>)> {
        let [done] = groups else { return None };
        if !self.cfg.connection_cache.enabled() || self.cfg.hold {
            return None;
        }
        let t = self.clock.now();
        let (Ok(mut entries), Ok(mut cands)) = (self.entries.lock(), self.candidates.lock()) else {
            return None;
        };
        for i in 0..cands.waiting.len().min(HANDOFF_SCAN) {
            let Some(&id) = cands.waiting.get(i) else {
                break;
            };
            let Some(entry) = entries.get_mut(&id).filter(|e| !e.busy) else {
                continue;
            };
            let next = groups_due(&entry.msg, t);
            if let [g] = next.as_slice() {
                if g.key == done.key {
                    entry.busy = true;
                    entry.waiting = false;
                    cands.waiting.remove(i);
                    return Some((id, next));
                }
            }
        }
        None
    }

    /// Logs and records the `results` of an attempt for group `g` of `msg`:
    /// each recipient's new state, deferred ones with their next time.
    async fn record_results(&self, msg: &Stored, g: &Group, results: &[Result1], how: Sent<'_>) {
        let t = self.clock.now();
        let changes: Vec<(u16, RcptState)> = g
            .routes
            .iter()
            .zip(&g.attempts)
            .zip(results)
            .map(|((i, a), r)| {
                let next = a + 1;
                (*i, r.state(next, t, t + self.retry_after(next).as_secs()))
            })
            .collect();
        let qid = crate::shell::spool::format_id(msg.id);
        for ((i, _), r) in changes.iter().zip(results) {
            log_result(&qid, msg, *i, r, how);
            count_result(g.connector.as_deref(), r);
        }
        let recorded = self.spool.record(msg.id, &changes).await;
        if recorded.is_ok() {
            self.superseded(msg.id, &changes);
        }
        if let Err(e) = recorded {
            // Not recorded (the spool's device is full, say): the states are
            // still applied in memory, so this process does not send a
            // delivered message again at every retry, and the record is
            // written again at each pass (`record_again`). A restart before
            // it lands sends the message once more: a duplicate, never a
            // loss, as the spool on disk still has it pending.
            crate::shell::ops::log::warn(format_args!(
                "queue: recording results of {qid}: {e} (kept in memory, written again later)"
            ));
            if let Ok(mut u) = self.unrecorded.lock() {
                u.push((msg.id, changes.clone()));
            }
        }
        self.apply(msg.id, &changes);
    }

    /// Drops the unwritten results of `id`'s recipients that `changes`
    /// (just written) supersede: written later, they would undo them.
    fn superseded(&self, id: u64, changes: &[(u16, RcptState)]) {
        if let Ok(mut u) = self.unrecorded.lock() {
            u.retain_mut(|(i, old)| {
                if *i == id {
                    old.retain(|(r, _)| !changes.iter().any(|(c, _)| c == r));
                }
                !old.is_empty()
            });
        }
    }

    /// Writes the results that could not be written before, in their
    /// order; those that fail again wait for the next pass.
    async fn record_again(&self) {
        let pending = match self.unrecorded.lock() {
            Ok(mut u) => std::mem::take(&mut *u),
            Err(_) => return,
        };
        let mut left = Vec::new();
        for (id, changes) in pending {
            if !left.is_empty() || self.spool.record(id, &changes).await.is_err() {
                left.push((id, changes));
            }
        }
        if let Ok(mut u) = self.unrecorded.lock() {
            left.append(&mut u);
            *u = left;
        }
    }

    /// Sets the queue's copy of recipient states of `id` (once recorded).
    fn apply(&self, id: u64, changes: &[(u16, RcptState)]) {
        if let Ok(mut e) = self.entries.lock() {
            if let Some(entry) = e.get_mut(&id) {
                for (i, st) in changes {
                    if let Some(slot) = entry.msg.states.get_mut(usize::from(*i)) {
                        *slot = st.clone();
                    }
                }
            }
        }
    }

    /// Frees the slots a delivery of `groups` held.
    fn release(&self, groups: &[Group]) {
        if let Ok(mut running) = self.running.lock() {
            let (total, per) = &mut *running;
            *total = total.saturating_sub(1);
            for g in groups {
                if let Some(n) = per.get_mut(&g.key) {
                    *n = n.saturating_sub(1);
                }
            }
        }
    }

    fn forget_if_done(&self, id: u64) {
        if let Ok(mut e) = self.entries.lock() {
            if e.get(&id)
                .is_some_and(|x| !x.busy && x.msg.states.iter().all(settled))
            {
                e.remove(&id);
            }
        }
    }
}

/// The recipients of `msg` due at `t` (pending, or deferred until then),
/// grouped by route (connector and next hop).
fn groups_due(msg: &Stored, t: u64) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    for (i, (route, state)) in msg.env.routes.iter().zip(&msg.states).enumerate() {
        let attempts = match state {
            RcptState::Pending => 0,
            RcptState::Deferred {
                until, attempts, ..
            } if *until <= t => *attempts,
            _ => continue,
        };
        let key = format!(
            "{}|{:?}",
            route.connector.as_deref().unwrap_or("-"),
            route.next_hop
        );
        match groups.iter_mut().find(|g| g.key == key) {
            Some(g) => {
                g.routes.push(i as u16);
                g.attempts.push(attempts);
            }
            None => groups.push(Group {
                key,
                connector: route.connector.clone(),
                next_hop: route.next_hop.clone(),
                routes: vec![i as u16],
                attempts: vec![attempts],
            }),
        }
    }
    groups
}

/// The TLS policy of the send connector named `connector` (opportunistic
/// when there is none, or it is gone from the policy).
fn tls_mode(policy: &crate::shell::policy::runtime::Policy, connector: Option<&str>) -> TlsMode {
    connector
        .and_then(|name| {
            policy
                .table
                .connectors
                .iter()
                .find(|c| policy.table.str(c.name) == name.as_bytes())
        })
        .map_or(TlsMode::Opportunistic, |c| match c.tls {
            TlsPolicy::Opportunistic => TlsMode::Opportunistic,
            TlsPolicy::Required => TlsMode::Required,
            TlsPolicy::Verify => TlsMode::Verify,
        })
}

/// The `[[tls.client]]` name the send connector named `connector`
/// presents at STARTTLS (`tls_certificate`), if any.
fn client_certificate(
    policy: &crate::shell::policy::runtime::Policy,
    connector: Option<&str>,
) -> Option<String> {
    let t = &policy.table;
    let c = t
        .connectors
        .iter()
        .find(|c| Some(t.str(c.name)) == connector.map(str::as_bytes))?;
    c.tls_certificate
        .map(|s| String::from_utf8_lossy(t.str(s)).into_owned())
}

/// Counts one recipient's result by its send connector
/// (`sluice_recipients_{delivered,deferred,bounced}_total`).
fn count_result(connector: Option<&str>, r: &Result1) {
    use crate::shell::ops::metrics::{BOUNCED, DEFERRED, DELIVERED};
    let family = match r {
        Result1::Delivered(_) => &DELIVERED,
        Result1::Deferred(_) => &DEFERRED,
        Result1::Bounced(_) => &BOUNCED,
    };
    family.add(crate::shell::ops::stats::connector_label(connector), 1);
}

/// How an attempt went out, for its log lines.
#[derive(Clone, Copy)]
struct Sent<'a> {
    /// The client certificate the connector presents, if any.
    certificate: Option<&'a str>,
    /// Messages the connection carried before this one.
    reused: u32,
}

/// The log line for recipient `i` of `msg` after an attempt: SEND, DEFER
/// or BOUNCE with the reply, the client certificate the connector
/// presents (`cert=NAME`), if any, and on SEND how many messages the
/// connection carried before (`reused=N`, 0 for a new connection).
fn log_result(qid: &str, msg: &Stored, i: u16, r: &Result1, how: Sent<'_>) {
    use crate::shell::ops::log::{event, Kind};
    let rcpt = msg
        .env
        .routes
        .get(usize::from(i))
        .map(|r| String::from_utf8_lossy(&r.rcpt).into_owned())
        .unwrap_or_default();
    let kind = match r {
        Result1::Delivered(_) => Kind::Send,
        Result1::Deferred(_) => Kind::Defer,
        Result1::Bounced(_) => Kind::Bounce,
    };
    event(
        kind,
        Some(qid),
        msg.env.message_id.as_deref(),
        format_args!(
            "to=<{rcpt}> {}{}{}",
            r.reply(),
            how.certificate
                .map(|c| format!(" cert={c}"))
                .unwrap_or_default(),
            match r {
                Result1::Delivered(_) => format!(" reused={}", how.reused),
                _ => String::new(),
            }
        ),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(original: &str, rcpt: &str) -> crate::shell::spool::Route {
        crate::shell::spool::Route {
            original: original.as_bytes().to_vec(),
            rcpt: rcpt.as_bytes().to_vec(),
            connector: None,
            next_hop: NextHop::Mx("example.test".into()),
            refused: None,
        }
    }

    #[test]
    fn report_flags_follow_the_octets_and_the_addresses() {
        let ascii = b"Subject: Undelivered\r\n\r\nplain\r\n";
        let r = [route("a@example.test", "a@example.test")];
        assert_eq!(report_flags(b"a@example.test", &r, ascii), (false, false));
        // A quoted UTF-8 header makes the report 8-bit, not SMTPUTF8.
        let quoted = "Subject: Undelivered\r\n\r\nSubject: caf\u{e9}\r\n".as_bytes();
        assert_eq!(report_flags(b"a@example.test", &r, quoted), (false, true));
        assert_eq!(
            report_flags(b"a@example.test", &r, &[b'x', 0x80]),
            (false, true)
        );
        // A UTF-8 sender (the report's recipient) needs SMTPUTF8.
        let u = "j\u{f6}rg@example.test";
        let ru = [route(u, u)];
        assert_eq!(report_flags(u.as_bytes(), &ru, ascii), (true, false));
        // Or only the routed address, after a rewrite.
        let rw = [route("a@example.test", "\u{e4}@example.test")];
        assert_eq!(report_flags(b"a@example.test", &rw, ascii), (true, false));
    }

    use crate::shell::config::Config;
    use crate::shell::relay::dns::DnsConfig;
    use crate::shell::spool::{initial_states, Envelope, Route};
    use std::path::PathBuf;
    use std::sync::atomic::AtomicU64;

    /// A clock the test moves by hand.
    struct ManualClock(AtomicU64);

    impl Clock for ManualClock {
        fn now(&self) -> u64 {
            self.0.load(Ordering::SeqCst)
        }
    }

    impl ManualClock {
        fn set(&self, t: u64) {
            self.0.store(t, Ordering::SeqCst);
        }
    }

    /// When the test messages arrive.
    const T0: u64 = 1_700_000_000;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// A queue with `cfg` over a fresh spool in a scratch directory, on a
    /// manual clock at [`T0`]; also the spool and the directory.
    fn queue(name: &str, cfg: QueueConfig) -> (Arc<Queue>, Arc<ManualClock>, Arc<Spool>, PathBuf) {
        let base = std::env::temp_dir().join(format!("sluice-queue-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).expect("mkdir");
        let config = Config::parse("state_dir = \"state\"\n", &base).expect("config");
        let installer = Arc::new(Installer::open(&config).expect("installer"));
        let (spool, _) = Spool::open(&base.join("spool")).expect("spool");
        let spool = Arc::new(spool);
        let mut q = Queue::new(
            spool.clone(),
            cfg,
            "relay.test".into(),
            installer,
            Resolver::new(DnsConfig::default()),
            TlsClients::new(None).expect("tls"),
            Vec::new(),
        );
        let clock = Arc::new(ManualClock(AtomicU64::new(T0)));
        Arc::get_mut(&mut q).expect("a fresh queue").clock = clock.clone();
        (q, clock, spool, base)
    }

    /// Spools and queues a message from `a@x.test` to one recipient whose
    /// next hop refuses connections (a port nothing listens on).
    fn add_message(q: &Queue, spool: &Spool) -> u64 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        add_to(
            q,
            spool,
            NextHop::SmartHosts(vec![format!("127.0.0.1:{port}")]),
        )
    }

    /// Spools and queues a message from `a@x.test` to one recipient
    /// whose next hop is `next_hop`.
    fn add_to(q: &Queue, spool: &Spool, next_hop: NextHop) -> u64 {
        let body = b"Subject: t\r\n\r\nbody\r\n";
        let env = Envelope {
            from: b"a@x.test".to_vec(),
            rcpts: vec![b"b@y.test".to_vec()],
            helo: b"client".to_vec(),
            peer: "127.0.0.1:1".into(),
            received: T0,
            size: body.len() as u64,
            smtputf8: false,
            body8bit: false,
            tls: false,
            body_offset: Some(14),
            policy: 0,
            message_id: None,
            routes: vec![Route {
                next_hop,
                ..route("b@y.test", "b@y.test")
            }],
            edits: Vec::new(),
        };
        let id = spool.new_id();
        let parts = smol::block_on(spool.commit(id, &env, body.to_vec())).expect("commit");
        let states = initial_states(&env);
        q.add(Stored {
            id,
            env,
            parts,
            states,
            warned: false,
        });
        id
    }

    /// Runs the deliveries of `id` due now; whether there was one.
    fn deliver_due(q: &Arc<Queue>, id: u64) -> bool {
        let due = q.due(vec![id]);
        let any = !due.is_empty();
        for (id, groups) in due {
            smol::block_on(q.clone().deliver(id, groups));
        }
        any
    }

    fn state(q: &Queue, id: u64) -> RcptState {
        q.entries.lock().expect("lock")[&id].msg.states[0].clone()
    }

    /// The reports sluice spooled (messages from `<>`), as text.
    fn reports(spool: &Spool, dir: &std::path::Path) -> Vec<String> {
        smol::block_on(spool.sync()).expect("sync");
        crate::shell::spool::scan(&dir.join("spool"))
            .expect("scan")
            .messages
            .iter()
            .filter(|m| m.env.from.is_empty())
            .map(|m| String::from_utf8_lossy(&m.read().expect("read")).into_owned())
            .collect()
    }

    #[test]
    fn a_deferred_recipient_is_retried_at_the_schedules_times() {
        let cfg = QueueConfig {
            retry: vec![secs(60), secs(300)],
            warn_after: secs(1_000_000),
            expire_after: secs(1_000_000),
            ..QueueConfig::default()
        };
        let (q, clock, spool, dir) = queue("retry", cfg);
        let id = add_message(&q, &spool);
        // At once, after 60 s, then every 300 s: the last wait repeats.
        let mut at = T0;
        for (n, wait) in [60u64, 300, 300, 300].into_iter().enumerate() {
            if at > T0 {
                clock.set(at - 1);
                assert!(!deliver_due(&q, id), "not before {at}");
            }
            clock.set(at);
            assert!(deliver_due(&q, id), "attempt {} at {at}", n + 1);
            let RcptState::Deferred {
                until,
                attempts,
                reason,
            } = state(&q, id)
            else {
                panic!("not deferred: {:?}", state(&q, id));
            };
            assert_eq!((until, attempts), (at + wait, n as u32 + 1));
            assert_eq!((reason.code, reason.status), (451, Some((4, 4, 1))));
            at += wait;
        }
        spool.close();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_finished_delivery_takes_the_next_waiting_message_for_its_next_hop() {
        let cfg = QueueConfig {
            concurrency_per_destination: 1,
            ..QueueConfig::default()
        };
        let (q, _clock, spool, dir) = queue("handoff", cfg);
        let hop = |p: u16| NextHop::SmartHosts(vec![format!("127.0.0.1:{p}")]);
        let (a, b) = (add_to(&q, &spool, hop(9)), add_to(&q, &spool, hop(9)));
        let other = add_to(&q, &spool, hop(10));
        // One delivery per next hop: `b` waits for `a`'s slot.
        let due = q.due(vec![a, b, other]);
        let started: Vec<u64> = due.iter().map(|(id, _)| *id).collect();
        assert_eq!(started, [a, other]);
        let (_, groups_other) = &due[1];
        assert!(q.waiting_for(groups_other).is_none(), "not for another hop");
        let (_, groups_a) = &due[0];
        let next = q.waiting_for(groups_a).map(|(id, g)| (id, g.len()));
        assert_eq!(next, Some((b, 1)), "a's slot (and session) goes to b");
        assert!(q.entries.lock().expect("lock")[&b].busy);
        assert!(q.candidates.lock().expect("lock").waiting.is_empty());
        assert!(q.waiting_for(groups_a).is_none(), "once");
        spool.close();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_sender_is_warned_once_at_warn_after() {
        let cfg = QueueConfig {
            retry: vec![secs(60)],
            warn_after: secs(600),
            expire_after: secs(3600),
            ..QueueConfig::default()
        };
        let (q, clock, spool, dir) = queue("warn", cfg);
        let id = add_message(&q, &spool);
        assert!(deliver_due(&q, id));
        clock.set(T0 + 599);
        assert!(q.to_warn().is_empty(), "not before warn_after");
        clock.set(T0 + 600);
        assert_eq!(q.to_warn(), vec![id]);
        smol::block_on(q.warn(id));
        assert!(q.entries.lock().expect("lock")[&id].msg.warned);
        clock.set(T0 + 3000);
        assert!(q.to_warn().is_empty(), "once");
        let r = reports(&spool, &dir);
        assert_eq!(r.len(), 1, "one warning");
        assert!(
            r[0].contains("Action: delayed\r\nStatus: 4.4.1\r\n"),
            "{}",
            r[0]
        );
        let until = crate::shell::time::rfc5322(T0 + 3600);
        assert!(r[0].contains(&format!("Will-Retry-Until: {until}\r\n")));
        spool.close();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn expiry_bounces_after_expire_after_with_the_expiry_reply() {
        let cfg = QueueConfig {
            retry: vec![secs(60)],
            warn_after: secs(1_000_000),
            expire_after: secs(1000),
            ..QueueConfig::default()
        };
        let (q, clock, spool, dir) = queue("expire", cfg);
        let id = add_message(&q, &spool);
        assert!(deliver_due(&q, id));
        clock.set(T0 + 999);
        smol::block_on(q.expire());
        assert!(matches!(state(&q, id), RcptState::Deferred { .. }));
        clock.set(T0 + 1000);
        smol::block_on(q.expire());
        let RcptState::Bounced { at, reason } = state(&q, id) else {
            panic!("not bounced: {:?}", state(&q, id));
        };
        assert_eq!(at, T0 + 1000);
        assert_eq!((reason.code, reason.status), (554, Some((4, 4, 7))));
        let text = reason.to_string();
        assert!(
            text.starts_with(
                "554 4.4.7 Message expired after 1000s in the queue; last reason: 451 4.4.1 127.0.0.1 [127.0.0.1:"
            ),
            "{text}"
        );
        clock.set(T0 + 5000);
        assert!(!deliver_due(&q, id), "never tried again");
        // As recorded, the reply reads back the same, status and all.
        smol::block_on(spool.sync()).expect("sync");
        let s = crate::shell::spool::scan(&dir.join("spool")).expect("scan");
        assert_eq!(s.messages[0].states[0], state(&q, id));
        // The DSN carries the expiry's status.
        assert_eq!(q.unnotified(), vec![id]);
        smol::block_on(q.notify(id));
        assert!(q.unnotified().is_empty());
        let r = reports(&spool, &dir);
        assert_eq!(r.len(), 1, "one DSN");
        assert!(
            r[0].contains("Action: failed\r\nStatus: 4.4.7\r\n"),
            "{}",
            r[0]
        );
        assert!(r[0].contains(&format!("Diagnostic-Code: smtp; {text}\r\n")));
        spool.close();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
