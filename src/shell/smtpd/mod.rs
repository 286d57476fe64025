//! `sluice run`: listeners, one task per session, limits, timeouts, drain.
//!
//! Each session drives an [`engine::smtp::Receiver`](crate::engine::smtp::Receiver):
//! bytes from the socket go in, replies come out, and the events that need
//! a decision get one here. A message is answered `250` only after the
//! spool has synced it.

pub mod deadline;

use crate::engine::policy::{attribute, recipient_allowed, Table};
use crate::engine::reply::{Reason, Reply};
use crate::engine::smtp::{self, Event, Receiver};
use crate::shell::config::{Config, Limits};
use crate::shell::policy::install::{self, Installer};
use crate::shell::policy::runtime::{self as pol, MimeScan, Policy};
use crate::shell::relay::deliver::TlsClients;
use crate::shell::relay::dns::Resolver;
use crate::shell::relay::queue::Queue;
use crate::shell::smtpd::deadline::Deadlines;
use crate::shell::spool::{self, Envelope, Route, Spool, SpoolError};
use crate::shell::time::now_secs;
use crate::shell::tls;
use async_net::{TcpListener, TcpStream};
use futures_lite::{future, AsyncReadExt, AsyncWriteExt, StreamExt};
use smol::{Executor, Timer};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// Octets read from a client at a time; small, so that a thousand idle
/// sessions stay cheap, large enough for a pipelined burst.
const READ_BUFFER: usize = 8 * 1024;

/// State shared by every session of the daemon.
struct Shared {
    /// The appliance config and TLS, replaced as a whole on SIGHUP; a
    /// session keeps the one it began with.
    live: RwLock<Arc<Live>>,
    spool: Arc<Spool>,
    queue: Arc<Queue>,
    /// The installed policies; a session keeps the one it began with.
    installer: Arc<Installer>,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    active: AtomicUsize,
    /// Closed when the daemon stops; idle sessions then say 421 and end.
    stopping: smol::channel::Receiver<()>,
    /// The command and data timeouts of every session.
    deadlines: Deadlines,
}

/// What SIGHUP reloads: the appliance config and the TLS certificates.
struct Live {
    cfg: Config,
    tls: Option<futures_rustls::TlsAcceptor>,
}

impl Live {
    fn load(cfg: Config) -> Result<Live, String> {
        let acceptor = match &cfg.tls {
            Some(files) => Some(futures_rustls::TlsAcceptor::from(tls::server_config(
                files,
            )?)),
            None => None,
        };
        if acceptor.is_none() && cfg.listen.iter().any(|l| l.starttls) {
            crate::shell::ops::log::warn(format_args!(
                "starttls = true but no [tls] certificate: STARTTLS is not offered"
            ));
        }
        Ok(Live { cfg, tls: acceptor })
    }
}

impl Shared {
    fn live(&self) -> Arc<Live> {
        match self.live.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
}

/// Holds a connection slot; frees it when dropped.
struct Slot {
    sh: Arc<Shared>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.sh.active.fetch_sub(1, Ordering::SeqCst);
        if let Ok(mut m) = self.sh.per_ip.lock() {
            if let Some(n) = m.get_mut(&self.ip) {
                *n -= 1;
                if *n == 0 {
                    m.remove(&self.ip);
                }
            }
        }
    }
}

fn admit(sh: &Arc<Shared>, ip: IpAddr) -> Result<Slot, Reason> {
    let live = sh.live();
    let limits = &live.cfg.limits;
    let mut m = sh.per_ip.lock().map_err(|_| Reason::LocalError)?;
    if sh.active.load(Ordering::SeqCst) >= limits.connections {
        return Err(Reason::TooManyConnections);
    }
    let n = m.entry(ip).or_insert(0);
    if *n >= limits.connections_per_ip {
        return Err(Reason::TooManyFromIp);
    }
    *n += 1;
    sh.active.fetch_add(1, Ordering::SeqCst);
    Ok(Slot { sh: sh.clone(), ip })
}

/// Runs the daemon until SIGTERM or SIGINT, then drains and returns.
/// SIGHUP reloads the appliance config (`path`, or the embedded default)
/// and the TLS certificates, atomically; listeners and the spool stay.
pub fn run(cfg: Config, path: Option<PathBuf>) -> Result<(), String> {
    crate::shell::ops::log::init(&cfg.syslog_target, &cfg.syslog_facility, &cfg.hostname)?;
    let installer = Arc::new(Installer::open(&cfg)?);
    crate::shell::ops::log::event(
        crate::shell::ops::log::Kind::Policy,
        None,
        None,
        format_args!("version {:016X} active", installer.current().table.version),
    );
    let live = Live::load(cfg.clone())?;
    let (spool, scan) = Spool::open(&cfg.spool_dir)
        .map_err(|e| format!("spool {}: {e}", cfg.spool_dir.display()))?;
    for (path, good) in &scan.torn {
        crate::shell::ops::log::warn(format_args!(
            "spool: cut a torn tail of {} at octet {good}",
            path.display()
        ));
    }
    for (path, from, to) in &scan.damaged {
        crate::shell::ops::log::warn(format_args!(
            "spool: {} is damaged at octets {from}..{to}: skipped (the records after it are \
             read; a copy as found is in {}/); a message in the damaged range is lost",
            path.display(),
            cfg.spool_dir.join(spool::CORRUPT_DIR).display()
        ));
    }
    for path in &scan.foreign {
        crate::shell::ops::log::warn(format_args!(
            "spool: {} is not a {} segment: moved whole to {}/, not read",
            path.display(),
            String::from_utf8_lossy(spool::SEGMENT_MAGIC),
            cfg.spool_dir.join(spool::CORRUPT_DIR).display()
        ));
    }
    crate::shell::ops::log::info(format_args!(
        "spool: recovered {} message(s) from {}",
        scan.messages.len(),
        cfg.spool_dir.display()
    ));
    if cfg.queue.hold {
        crate::shell::ops::log::warn(format_args!(
            "queue: on hold ([queue] hold = true): mail is accepted and spooled, nothing is delivered"
        ));
    }
    let spool = Arc::new(spool);
    let resolver = Resolver::new(cfg.dns.clone());
    let tls_clients = TlsClients::new(cfg.ca.as_deref())?;
    let queue = Queue::new(
        spool.clone(),
        cfg.queue.clone(),
        cfg.hostname.clone(),
        installer.clone(),
        resolver,
        tls_clients,
        scan.messages,
    );
    if !queue.is_empty() {
        crate::shell::ops::log::info(format_args!("queue: {} message(s) to deliver", queue.len()));
    }

    let (stop_tx, stop_rx) = smol::channel::bounded::<()>(1);
    let listeners: Vec<(TcpListener, bool)> = smol::block_on(async {
        let mut v = Vec::new();
        for l in &cfg.listen {
            let addr: SocketAddr = l
                .address
                .parse()
                .map_err(|e| format!("listen address {:?}: {e}", l.address))?;
            let sock = bind(addr).map_err(|e| format!("listen on {addr}: {e}"))?;
            v.push((sock, l.starttls));
        }
        Ok::<_, String>(v)
    })?;
    if let Some(dev) = cfg.upload_serial.clone() {
        serve_uploads(dev, cfg.upload_baud, installer.clone())?;
    }
    let state_dir = cfg.state_dir.clone();
    let control = install::serve_control(
        &state_dir,
        control_handler(installer.clone(), queue.clone()),
    )
    .map_err(|e| {
        format!(
            "control socket {}: {e}",
            install::socket_path(&state_dir).display()
        )
    })?;
    let shared = Arc::new(Shared {
        live: RwLock::new(Arc::new(live)),
        spool,
        queue: queue.clone(),
        installer,
        per_ip: Mutex::new(HashMap::new()),
        active: AtomicUsize::new(0),
        stopping: stop_rx,
        deadlines: Deadlines::new(),
    });
    let mut signals = async_signal::Signals::new([
        async_signal::Signal::Term,
        async_signal::Signal::Int,
        async_signal::Signal::Hup,
    ])
    .map_err(|e| format!("signals: {e}"))?;

    let ex = Arc::new(Executor::new());
    let (end_tx, end_rx) = smol::channel::bounded::<()>(1);
    let threads = session_threads(std::thread::available_parallelism().map_or(1, |n| n.get()));
    let workers: Vec<_> = (1..threads)
        .filter_map(|i| {
            let ex = ex.clone();
            let end = end_rx.clone();
            std::thread::Builder::new()
                .name(format!("smtp-{i}"))
                .spawn(move || smol::block_on(ex.run(end.recv())))
                .ok()
        })
        .collect();

    let sh = shared.clone();
    let ex2 = ex.clone();
    smol::block_on(ex.run(async move {
        let mut accepts = Vec::new();
        for (l, starttls) in listeners {
            if let Ok(a) = l.local_addr() {
                crate::shell::ops::log::info(format_args!("listening on {a}"));
            }
            accepts.push(ex2.spawn(accept_loop(l, starttls, sh.clone(), ex2.clone())));
        }
        // Delivery runs beside the sessions; it stops with the daemon (a
        // delivery cut short is retried at the next start).
        let _scheduler = ex2.spawn(sh.queue.clone().run(ex2.clone()));
        let _deadlines = ex2.spawn({
            let sh = sh.clone();
            async move {
                let shortest = || {
                    let limits = &sh.live().cfg.limits;
                    limits.command_timeout.min(limits.data_timeout)
                };
                sh.deadlines.keep(shortest).await;
            }
        });
        let sig = loop {
            match signals.next().await {
                Some(Ok(async_signal::Signal::Hup)) => reload(&sh, path.as_deref()),
                Some(Ok(async_signal::Signal::Int)) => break "SIGINT",
                _ => break "SIGTERM",
            }
        };
        crate::shell::ops::log::info(format_args!(
            "{sig}: stopping; sessions in flight may finish"
        ));
        drop(accepts); // cancels the accept loops: no new sessions
        stop_tx.close();
        let limit = sh.live().cfg.limits.data_timeout + Duration::from_secs(10);
        let start = std::time::Instant::now();
        while sh.active.load(Ordering::SeqCst) > 0 && start.elapsed() < limit {
            Timer::after(Duration::from_millis(20)).await;
        }
    }));
    end_tx.close();
    for w in workers {
        let _ = w.join();
    }
    shared.spool.close();
    let _ = std::fs::remove_file(install::socket_path(&state_dir));
    drop(control);
    crate::shell::ops::log::info(format_args!("stopped"));
    let (sent, dropped) = crate::shell::ops::log::stats();
    if dropped > 0 {
        eprintln!(
            "sluice: {dropped} of {} log messages were dropped (syslog too slow or absent)",
            sent + dropped
        );
    }
    crate::shell::ops::log::flush(Duration::from_secs(2));
    Ok(())
}

/// Threads that run the sessions on a machine with `cores`: one core is
/// left to the spool writer, the log writer and the kernel's network work
/// (each a thread or softirq of its own), at least one and at most four.
/// On two cores one session thread used 15-30 % less CPU per message than
/// two (idle threads woke each other for every event) with the same or
/// better throughput (bench/README.md).
fn session_threads(cores: usize) -> usize {
    cores.saturating_sub(1).clamp(1, 4)
}

/// Our `Received:` field: the client's name and address, our name, the
/// protocol (RFC 3848 / RFC 6531 keywords), the queue id, the recipient
/// when there is only one, and the date.
fn received(host: &str, txn: &Txn, peer: SocketAddr, tls: bool, id: &str) -> String {
    let proto = match (txn.smtputf8, txn.esmtp, tls) {
        (true, _, false) => "UTF8SMTP",
        (true, _, true) => "UTF8SMTPS",
        (false, true, true) => "ESMTPS",
        (false, true, false) => "ESMTP",
        (false, false, true) => "SMTPS",
        (false, false, false) => "SMTP",
    };
    let helo: String = String::from_utf8_lossy(&txn.helo)
        .chars()
        .filter(|c| !c.is_control() && *c != '(' && *c != ')')
        .take(255)
        .collect();
    let rcpt = match txn.rcpts.as_slice() {
        [one] => format!("\r\n\tfor <{}>", String::from_utf8_lossy(one)),
        _ => String::new(),
    };
    format!(
        "Received: from {helo} ([{}])\r\n\tby {host} (sluice) with {proto} id {id}{rcpt};\r\n\t{}\r\n",
        peer.ip(),
        crate::shell::time::rfc5322(now_secs())
    )
}

/// A listening socket. An IPv6 one is IPv6 only (`IPV6_V6ONLY`), so that
/// `0.0.0.0:25` and `[::]:25` can both be configured, as on a dual-stack
/// box; the address is reusable at once after a restart.
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use rustix::net::{sockopt, AddressFamily, SocketType};
    let family = if addr.is_ipv6() {
        AddressFamily::INET6
    } else {
        AddressFamily::INET
    };
    let fd = rustix::net::socket(family, SocketType::STREAM, None)?;
    sockopt::set_socket_reuseaddr(&fd, true)?;
    if addr.is_ipv6() {
        sockopt::set_ipv6_v6only(&fd, true)?;
    }
    rustix::net::bind(&fd, &addr)?;
    rustix::net::listen(&fd, 1024)?;
    TcpListener::try_from(std::net::TcpListener::from(fd))
}

/// SIGHUP: loads the config and certificates anew and swaps them in for
/// new sessions; on any error the running ones stay.
fn reload(sh: &Shared, path: Option<&std::path::Path>) {
    let result = Config::load(path).and_then(|cfg| {
        let old = sh.live();
        for section in old.cfg.restart_only_changes(&cfg) {
            crate::shell::ops::log::warn(format_args!(
                "SIGHUP: {section} changed; takes effect after a restart"
            ));
        }
        Live::load(cfg)
    });
    match result {
        Ok(live) => {
            match sh.live.write() {
                Ok(mut g) => *g = Arc::new(live),
                Err(p) => *p.into_inner() = Arc::new(live),
            }
            crate::shell::ops::log::info(format_args!(
                "SIGHUP: configuration and certificates reloaded"
            ));
        }
        Err(e) => crate::shell::ops::log::warn(format_args!(
            "SIGHUP: reload refused, running config kept: {e}"
        )),
    }
}

/// The control socket's requests: policy commands (install) and queue
/// commands (`queue_state`, `queue_flush`, `queue_retry`, `queue_delete`
/// with an `id`).
fn control_handler(inst: Arc<Installer>, queue: Arc<Queue>) -> install::Handler {
    use serde_json::json;
    Arc::new(move |req: &serde_json::Value| {
        let id = req["id"].as_str().and_then(spool::parse_id);
        match (req["cmd"].as_str(), id) {
            (Some("queue_state"), _) => queue.inspect(),
            (Some("queue_flush"), _) => {
                queue.flush();
                json!({ "ok": true, "queued": queue.len() })
            }
            (Some("queue_retry"), Some(id)) => match queue.retry(id) {
                true => json!({ "ok": true }),
                false => json!({ "ok": false, "errors": ["no such message in the queue"] }),
            },
            (Some("queue_delete"), Some(id)) => match smol::block_on(queue.delete(id)) {
                Ok(true) => json!({ "ok": true }),
                Ok(false) => {
                    json!({ "ok": false, "errors": ["no such message in the queue, or it is being delivered"] })
                }
                Err(e) => json!({ "ok": false, "errors": [e] }),
            },
            (Some("queue_retry" | "queue_delete"), None) => {
                json!({ "ok": false, "errors": ["a queue id is needed"] })
            }
            _ => install::handle(&inst, req),
        }
    })
}

/// Starts the serial upload listener: uploads are applied as `rules apply`.
fn serve_uploads(dev: PathBuf, baud: u32, inst: Arc<Installer>) -> Result<(), String> {
    let apply: crate::shell::ops::upload::ApplyFn = Arc::new(
        move |text: &str, via: &str| match inst.apply_text(text, via) {
            Ok(a) => Ok(format!(
                "installed policy version {:016X}{}",
                a.version,
                a.warnings
                    .iter()
                    .map(|w| format!("\n{w}"))
                    .collect::<String>()
            )),
            Err(errs) => Err(errs.join("\n")),
        },
    );
    std::thread::Builder::new()
        .name("serial-upload".into())
        .spawn(move || {
            if let Err(e) = crate::shell::ops::upload::serve_serial(&dev, baud, apply) {
                crate::shell::ops::log::warn(format_args!(
                    "serial upload on {}: {e}",
                    dev.display()
                ));
            }
        })
        .map(|_| ())
        .map_err(|e| format!("serial upload thread: {e}"))
}

async fn accept_loop(l: TcpListener, starttls: bool, sh: Arc<Shared>, ex: Arc<Executor<'static>>) {
    loop {
        let (stream, peer) = match l.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and the like: wait rather than spin.
                crate::shell::ops::log::warn(format_args!("accept: {e}"));
                Timer::after(Duration::from_millis(100)).await;
                continue;
            }
        };
        let slot = admit(&sh, peer.ip());
        let sh = sh.clone();
        ex.spawn(async move {
            match slot {
                Ok(slot) => session(stream, peer, starttls, sh, slot).await,
                Err(reason) => {
                    let mut s = stream;
                    let _ = s
                        .write_all(&reply_line(reason.reply(), &sh.live().cfg.hostname))
                        .await;
                    crate::shell::ops::log::event(
                        crate::shell::ops::log::Kind::Reject,
                        None,
                        None,
                        format_args!("{peer}: {}", reason.reply().text),
                    );
                }
            }
        })
        .detach();
    }
}

/// A 421 refusal before any session exists, naming our host (RFC 5321 §3.8).
fn reply_line(r: Reply<'_>, host: &str) -> Vec<u8> {
    let (c, s, d) = r.status.unwrap_or((4, 0, 0));
    format!("{} {c}.{s}.{d} {host} {}\r\n", r.code, r.text).into_bytes()
}

/// A client connection, plain or after STARTTLS.
enum Conn {
    Plain(TcpStream),
    Tls(Box<futures_rustls::server::TlsStream<TcpStream>>),
    Gone,
}

impl Conn {
    async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf).await,
            Conn::Tls(s) => s.read(buf).await,
            Conn::Gone => Ok(0),
        }
    }

    async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Conn::Plain(s) => s.write_all(data).await,
            Conn::Tls(s) => {
                s.write_all(data).await?;
                s.flush().await
            }
            Conn::Gone => Err(io::ErrorKind::NotConnected.into()),
        }
    }
}

/// The open transaction as the shell records it.
#[derive(Default)]
struct Txn {
    helo: Vec<u8>,
    /// EHLO (not HELO) was used: the Received: protocol is ESMTP.
    esmtp: bool,
    from: Vec<u8>,
    rcpts: Vec<Vec<u8>>,
    smtputf8: bool,
    body8bit: bool,
    id: u64,
    data: Vec<u8>,
    body_offset: Option<u64>,
    failed: Option<SpoolError>,
    /// For a message appended in chunks: its first octets (the header
    /// block is within them) and the MIME part headers seen so far.
    head: Vec<u8>,
    mime: Option<MimeScan>,
}

/// What to do after an event, once its borrow of the input has ended.
enum Action {
    Nothing,
    Mail(Option<u64>),
    Rcpt(Vec<u8>),
    Chunk,
    Message(u64),
    StartTls,
    /// The engine ended the session: send what is queued, then close.
    Disconnect,
}

async fn session(
    stream: TcpStream,
    peer: SocketAddr,
    starttls: bool,
    sh: Arc<Shared>,
    _slot: Slot,
) {
    let _ = stream.set_nodelay(true);
    // The config and the policy this session began with stay its own.
    let live = sh.live();
    let limits: &Limits = &live.cfg.limits;
    // The policy this session began with stays its policy to the end.
    let policy: Arc<Policy> = sh.installer.current();
    let table: &Table = &policy.table;
    let mut att = attribute(table, &pol::ip16(peer.ip()), None);
    if att.blocked {
        let mut s = stream;
        let _ = s
            .write_all(&reply_line(
                Reason::AccessDenied.reply(),
                &live.cfg.hostname,
            ))
            .await;
        crate::shell::ops::log::event(
            crate::shell::ops::log::Kind::Reject,
            None,
            None,
            format_args!("{peer}: connection filter"),
        );
        return;
    }
    let offer_tls = starttls && live.tls.is_some();
    // The smaller of the appliance's and the policy's limits applies.
    let mut rx = Receiver::new(smtp::Config {
        hostname: &live.cfg.hostname,
        max_message_size: limits.max_message_size.min(table.limits.max_message_size),
        max_recipients: limits.max_recipients.min(table.limits.max_recipients),
        starttls: offer_tls,
        tls: false,
        bare_line_endings: limits.bare_line_endings,
    });
    let mut conn = Conn::Plain(stream);
    let mut buf = vec![0u8; READ_BUFFER];
    let (mut start, mut end) = (0usize, 0usize);
    let mut txn = Txn::default();
    let deadline = sh.deadlines.register();
    rx.greet();
    'session: loop {
        // Feed what we have until the engine wants more input.
        loop {
            let step = rx.feed(&buf[start..end]);
            start += step.consumed;
            let Some(ev) = step.event else {
                if step.consumed > 0 && start < end {
                    continue;
                }
                break;
            };
            let action = match ev {
                // OnConnect: the connection filter and the attribution ran
                // before the receiver was made (a blocked client is refused
                // before it has a session), so there is nothing to decide.
                Event::Connect => Action::Nothing,
                Event::Helo { name, extended } => {
                    txn.helo = name.to_vec();
                    txn.esmtp = extended;
                    Action::Nothing
                }
                Event::Mail(m) => {
                    txn.from = m.from.to_vec();
                    txn.rcpts.clear();
                    txn.smtputf8 = m.smtputf8;
                    txn.body8bit = m.body == smtp::Body::EightBitMime;
                    Action::Mail(m.size)
                }
                Event::Rcpt(r) => Action::Rcpt(r.to_vec()),
                Event::DataStart => {
                    txn.id = sh.spool.new_id();
                    txn.data.clear();
                    txn.body_offset = None;
                    txn.failed = None;
                    txn.head = Vec::new();
                    txn.mime = None;
                    Action::Nothing
                }
                Event::Body(b) => {
                    txn.data.extend_from_slice(b);
                    Action::Chunk
                }
                Event::EndOfHeaders { body_offset } => {
                    txn.body_offset = Some(body_offset);
                    Action::Nothing
                }
                Event::MessageEnd { size } => Action::Message(size),
                Event::MessageRejected(reason) => {
                    txn.data.clear();
                    crate::shell::ops::log::event(
                        crate::shell::ops::log::Kind::Reject,
                        None,
                        None,
                        format_args!(
                            "{peer} from=<{}> message: {}",
                            String::from_utf8_lossy(&txn.from),
                            reason.reply().text
                        ),
                    );
                    Action::Nothing
                }
                Event::StartTls => Action::StartTls,
                Event::Rset
                | Event::Noop
                | Event::Help
                | Event::Vrfy
                | Event::Quit
                | Event::Reject(_) => Action::Nothing,
                // OnDisconnect: no agent and no log line of its own (the
                // reason, if any, was logged where it arose).
                Event::Disconnect => Action::Disconnect,
            };
            match action {
                Action::Nothing => {}
                Action::Disconnect => {
                    // After QUIT's 221, a reply that closes (421, too many
                    // errors), or a timeout or shutdown (`close_with`).
                    if !rx.output().is_empty() {
                        let _ = conn.write_all(rx.output()).await;
                        let n = rx.output().len();
                        rx.output_sent(n);
                    }
                    break 'session;
                }
                Action::Mail(size) => {
                    let need = size.unwrap_or(0).saturating_add(limits.spool_reserve);
                    match sh.spool.free_space() {
                        Some(free) if free < need => {
                            crate::shell::ops::log::warn(format_args!(
                                "spool has {free} octets free, below the reserve: refusing mail"
                            ));
                            rx.reject(Reason::InsufficientStorage.reply());
                        }
                        _ => rx.accept(),
                    }
                }
                Action::Rcpt(r) => {
                    if recipient_allowed(table, &att, &r) {
                        txn.rcpts.push(r);
                        rx.accept();
                    } else {
                        crate::shell::ops::log::event(
                            crate::shell::ops::log::Kind::Reject,
                            None,
                            None,
                            format_args!(
                                "{peer} from=<{}> to=<{}>: relay access denied",
                                String::from_utf8_lossy(&txn.from),
                                String::from_utf8_lossy(&r)
                            ),
                        );
                        rx.reject(Reason::RelayDenied.reply());
                    }
                }
                Action::Chunk => {
                    if txn.data.len() >= spool::CHUNK {
                        if txn.head.is_empty() {
                            // The first octets hold the header block.
                            txn.head = txn.data.clone();
                        }
                        if policy.needs_attachments {
                            txn.mime
                                .get_or_insert_with(MimeScan::default)
                                .feed(&txn.data);
                        }
                        if txn.failed.is_none() {
                            if let Err(e) = sh.spool.append_chunk(txn.id, &txn.data).await {
                                txn.failed = Some(e);
                            }
                        }
                        txn.data.clear();
                    }
                }
                Action::Message(size) => {
                    let id = spool::format_id(txn.id);
                    let head: &[u8] = if txn.head.is_empty() {
                        &txn.data
                    } else {
                        &txn.head
                    };
                    let message_id = crate::engine::header::find(
                        pol::header_block(head),
                        b"Message-ID",
                    )
                    .map(|v| String::from_utf8_lossy(crate::engine::header::trim(v)).into_owned());
                    let rcpts: Vec<&[u8]> = txn.rcpts.iter().map(Vec::as_slice).collect();
                    let penv = pol::Envelope {
                        attribution: att,
                        client: peer.ip(),
                        sender: &txn.from,
                        rcpts: &rcpts,
                    };
                    let outcome = if txn.head.is_empty() {
                        pol::decide(&policy, &penv, &txn.data)
                    } else {
                        let names = match txn.mime.take() {
                            Some(mut scan) => {
                                scan.feed(&txn.data);
                                scan.names()
                            }
                            None => Vec::new(),
                        };
                        pol::decide_with(&policy, &penv, &txn.head, names, size)
                    };
                    let refusal = pol::verdict_reply(table, &outcome.verdict);
                    if let Some((code, status, text)) = refusal {
                        let status = Some(status);
                        txn.data.clear();
                        txn.head = Vec::new();
                        // The rule execution log first: why it was refused.
                        for l in &outcome.log {
                            crate::shell::ops::log::event(
                                crate::shell::ops::log::Kind::Rule,
                                Some(&id),
                                message_id.as_deref(),
                                format_args!("{l}"),
                            );
                        }
                        crate::shell::ops::log::event(
                            crate::shell::ops::log::Kind::Reject,
                            Some(&id),
                            message_id.as_deref(),
                            format_args!(
                                "{peer} from=<{}>: {}",
                                String::from_utf8_lossy(&txn.from),
                                outcome.reply.clone().unwrap_or_default()
                            ),
                        );
                        rx.reject(Reply {
                            code,
                            status,
                            text: &text,
                        });
                        continue;
                    }
                    let routes: Vec<Route> = outcome
                        .recipients
                        .iter()
                        .map(|r| Route {
                            original: r.original.as_bytes().to_vec(),
                            rcpt: r.final_addr.as_bytes().to_vec(),
                            connector: r.connector.clone(),
                            next_hop: r.next_hop.clone(),
                            refused: r.rejected.clone(),
                        })
                        .collect();
                    // Our trace field (RFC 5321 §4.4), spliced in on the way out.
                    let mut edits = vec![pol::HeaderEdit::Prepend {
                        field: received(&live.cfg.hostname, &txn, peer, rx.is_tls(), &id),
                    }];
                    edits.extend(outcome.edits.iter().map(|(_, e)| e.clone()));
                    let env = Envelope {
                        from: std::mem::take(&mut txn.from),
                        rcpts: std::mem::take(&mut txn.rcpts),
                        helo: txn.helo.clone(),
                        peer: peer.to_string(),
                        received: now_secs(),
                        size,
                        smtputf8: txn.smtputf8,
                        body8bit: txn.body8bit,
                        tls: rx.is_tls(),
                        body_offset: txn.body_offset,
                        policy: table.version,
                        message_id: message_id.clone(),
                        routes,
                        edits,
                    };
                    let result = match txn.failed.take() {
                        Some(e) => Err(e),
                        None => sh.spool.commit(txn.id, &env, &txn.data).await,
                    };
                    txn.data.clear();
                    txn.head = Vec::new();
                    if txn.data.capacity() > 2 * spool::CHUNK {
                        txn.data = Vec::new();
                    }
                    match result {
                        Ok(parts) => {
                            rx.accept_message(&id);
                            // One hand-off to the log writer for all of them.
                            let mut lines = crate::shell::ops::log::Batch::new();
                            lines.event(
                                crate::shell::ops::log::Kind::Receive,
                                Some(&id),
                                message_id.as_deref(),
                                format_args!(
                                    "from=<{}> rcpts={} size={size} peer={peer} tls={} result={}",
                                    String::from_utf8_lossy(&env.from),
                                    env.rcpts.len(),
                                    env.tls,
                                    outcome.result
                                ),
                            );
                            for r in &outcome.recipients {
                                lines.event(
                                    crate::shell::ops::log::Kind::Route,
                                    Some(&id),
                                    message_id.as_deref(),
                                    format_args!(
                                        "to=<{}> orig=<{}> connector={} next_hop={} {}",
                                        r.final_addr,
                                        r.original,
                                        r.connector.as_deref().unwrap_or("-"),
                                        match &r.next_hop {
                                            pol::NextHop::Mx(d) => format!("mx:{d}"),
                                            pol::NextHop::SmartHosts(h) => h.join(","),
                                            pol::NextHop::None => "-".into(),
                                        },
                                        r.rejected
                                            .as_deref()
                                            .map(|x| format!("refused=\"{x}\""))
                                            .unwrap_or_else(|| r.reason.clone())
                                    ),
                                );
                            }
                            // Also when no rule acted: the log then says
                            // which rules were evaluated and that none held.
                            for l in &outcome.log {
                                lines.event(
                                    crate::shell::ops::log::Kind::Rule,
                                    Some(&id),
                                    message_id.as_deref(),
                                    format_args!("{l}"),
                                );
                            }
                            drop(lines);
                            // Queued after its RECEIVE/ROUTE/RULE lines, so the
                            // log never shows a delivery before the acceptance.
                            sh.queue.add(spool::Stored {
                                warned: false,
                                id: txn.id,
                                states: spool::initial_states(&env),
                                env: env.clone(),
                                parts,
                            });
                        }
                        Err(e) => {
                            crate::shell::ops::log::event(
                                crate::shell::ops::log::Kind::Reject,
                                Some(&id),
                                message_id.as_deref(),
                                format_args!("{peer}: {e}"),
                            );
                            rx.reject(Reason::InsufficientStorage.reply());
                        }
                    }
                }
                Action::StartTls => {
                    // Send the 220, then forget everything the client sent
                    // after STARTTLS in clear text (RFC 3207 §4.2, the
                    // STARTTLS command injection flaw).
                    if conn.write_all(rx.output()).await.is_err() {
                        break 'session;
                    }
                    let n = rx.output().len();
                    rx.output_sent(n);
                    start = end;
                    let Some(acceptor) = live.tls.clone() else {
                        break 'session;
                    };
                    let Conn::Plain(plain) = std::mem::replace(&mut conn, Conn::Gone) else {
                        break 'session;
                    };
                    let hs = future::or(async { Some(acceptor.accept(plain).await) }, async {
                        Timer::after(limits.command_timeout).await;
                        None
                    })
                    .await;
                    match hs {
                        Some(Ok(s)) => {
                            // A verified client certificate may attribute the
                            // session to an inbound connector by its name.
                            let names = table
                                .inbound
                                .iter()
                                .filter_map(|c| c.tls_name)
                                .map(|n| table.str(n));
                            let by_cert = s
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|c| c.first())
                                .and_then(|c| tls::certificate_name(c, names));
                            if let Some(name) = by_cert {
                                att =
                                    attribute(table, &pol::ip16(peer.ip()), Some(name.as_bytes()));
                                crate::shell::ops::log::info(format_args!(
                                    "TLS client {peer} attributed by certificate name {name}"
                                ));
                            }
                            conn = Conn::Tls(Box::new(s));
                            rx.tls_established();
                        }
                        Some(Err(e)) => {
                            crate::shell::ops::log::info(format_args!(
                                "TLS handshake with {peer} failed: {e}"
                            ));
                            break 'session;
                        }
                        None => break 'session,
                    }
                }
            }
        }
        let flushed = !rx.output().is_empty();
        if flushed {
            if conn.write_all(rx.output()).await.is_err() {
                break;
            }
            let n = rx.output().len();
            rx.output_sent(n);
        }
        if rx.is_closed() {
            // Not reached: a closed receiver hands out Disconnect (which
            // ends the session above) before it returns no event.
            break;
        }
        if flushed && start < end {
            // The reply buffer was full: feed the rest before reading.
            continue;
        }
        // Keep unread octets at the front; read more.
        if start > 0 {
            buf.copy_within(start..end, 0);
            end -= start;
            start = 0;
        }
        if end == buf.len() {
            // The engine always consumes input unless a decision is
            // pending, which cannot be the case here.
            crate::shell::ops::log::warn(format_args!("session {peer}: input stalled; closing"));
            break;
        }
        let in_data = rx.in_data();
        let wait = if in_data {
            limits.data_timeout
        } else {
            limits.command_timeout
        };
        deadline.arm(wait);
        let read = future::or(async { Some(conn.read(&mut buf[end..]).await) }, async {
            if in_data {
                deadline.expired().await;
            } else {
                // Between commands a stopping daemon says goodbye.
                future::or(deadline.expired(), async {
                    let _ = sh.stopping.recv().await;
                })
                .await;
            }
            None
        })
        .await;
        deadline.disarm();
        match read {
            Some(Ok(0)) | Some(Err(_)) => break,
            Some(Ok(n)) => end += n,
            None => {
                let reason = if sh.stopping.is_closed() {
                    Reason::ShuttingDown
                } else {
                    Reason::Timeout
                };
                rx.close_with(reason.reply());
                // The engine now hands out Disconnect, which sends the
                // 421 and ends the session.
                continue;
            }
        }
    }
    // Here the session ended without the engine's Disconnect only if the
    // client went away or the transport failed (end of input, a read or
    // write error, a failed TLS handshake, stalled input): tell the engine,
    // so that its Disconnect, the last event, comes exactly once per
    // session. It logs nothing, as before.
    rx.connection_lost();
    while let Some(ev) = rx.feed(&[]).event {
        debug_assert!(matches!(ev, Event::Disconnect), "{ev:?}");
    }
    if let Conn::Tls(mut s) = conn {
        let _ = s.close().await;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_core_is_left_to_the_writers() {
        let t: Vec<usize> = [1, 2, 3, 4, 8, 64].map(super::session_threads).to_vec();
        assert_eq!(t, [1, 1, 2, 3, 4, 4]);
    }

    /// `[::]:P` and `0.0.0.0:P` together, as a dual-stack board config has
    /// them (the sockets are only bound; nothing connects).
    #[test]
    fn ipv4_and_ipv6_wildcards_on_one_port() {
        let Ok(v6) = super::bind("[::]:0".parse().expect("addr")) else {
            return; // no IPv6 on this machine
        };
        let port = v6.local_addr().expect("addr").port();
        let v4 = super::bind(std::net::SocketAddr::from(([0, 0, 0, 0], port)));
        assert!(v4.is_ok(), "{v4:?}");
    }
}
