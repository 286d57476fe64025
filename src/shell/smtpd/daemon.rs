//! `sluice run`: start-up (log, policy, spool recovery, queue, listeners,
//! control socket), the executor threads, SIGHUP reload and the drain on
//! SIGTERM.

use super::edge::Edge;
use super::listen::{accept_loop, bind, Listening};
use crate::shell::config::Config;
use crate::shell::deadline::Deadlines;
use crate::shell::directory::{self, Directory};
use crate::shell::ops::control::{self, control_handler, serve_uploads};
use crate::shell::ops::{log, metrics, stats};
use crate::shell::policy::install::Installer;
use crate::shell::relay::deliver::TlsClients;
use crate::shell::relay::dns::Resolver;
use crate::shell::relay::queue::Queue;
use crate::shell::relay::verify::Verifier;
use crate::shell::spool::{self, Scan, Spool};
use crate::shell::tls;
use async_net::TcpListener;
use futures_lite::StreamExt;
use smol::{Executor, Timer};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// State shared by every session of the daemon.
pub(super) struct Shared {
    /// The appliance config and TLS, replaced as a whole on SIGHUP; a
    /// session keeps the one it began with.
    pub(super) live: RwLock<Arc<Live>>,
    /// The durable spool every accepted message is committed to.
    pub(super) spool: Arc<Spool>,
    /// The delivery queue accepted messages are handed to.
    pub(super) queue: Arc<Queue>,
    /// The installed policies; a session keeps the one it began with.
    pub(super) installer: Arc<Installer>,
    /// The installed recipient directory; a session keeps the one it
    /// began with (see [`Shared::directory`]).
    pub(super) directory: Arc<directory::install::Store>,
    /// Sessions per client address, for `connections_per_ip`.
    pub(super) per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Sessions in all, for `connections` and the drain.
    pub(super) active: AtomicUsize,
    /// Closed when the daemon stops; idle sessions then say 421 and end.
    pub(super) stopping: smol::channel::Receiver<()>,
    /// The command and data timeouts of every session.
    pub(super) deadlines: Deadlines,
    /// The recipient filter's call-ahead (its cache is the daemon's).
    pub(super) verifier: Verifier,
    /// The Edge agents' state (DNS list cache, rate limits, protocol
    /// analysis scores): kept across policy installs, lost on restart.
    pub(super) edge: Arc<Edge>,
    /// SMTP AUTH's checks at once and failures per client address.
    pub(super) auth: Arc<crate::shell::auth::Guard>,
}

/// What SIGHUP reloads: the appliance config and the TLS certificates.
pub(super) struct Live {
    /// The appliance config.
    pub(super) cfg: Config,
    /// The STARTTLS acceptor, when `[tls]` has a certificate.
    pub(super) tls: Option<futures_rustls::TlsAcceptor>,
    /// The `[[dkim]]` keys, read at start and at each SIGHUP (a bad key
    /// stops the start, or keeps the running keys).
    pub(super) signer: crate::shell::sender_auth::sign::Signer,
    /// The delivery side's TLS configurations with the `[[tls.client]]`
    /// certificates; handed to the queue when this `Live` is installed.
    pub(super) clients: Option<TlsClients>,
    /// `[[milter]]` with their connection pools (new ones on SIGHUP).
    pub(super) milters: crate::shell::milter::Milters,
    /// `[auth] passwd_file`, loaded (reloaded with the config on SIGHUP).
    pub(super) passwd: Option<Arc<crate::shell::auth::Passwd>>,
}

impl Live {
    /// Builds the TLS acceptor for `cfg`; warns when STARTTLS is asked for
    /// without a certificate.
    fn load(cfg: Config) -> Result<Live, String> {
        let acceptor = match &cfg.tls {
            Some(files) => Some(futures_rustls::TlsAcceptor::from(tls::server_config(
                files,
            )?)),
            None => None,
        };
        if acceptor.is_none() && cfg.listen.iter().any(|l| l.starttls) {
            log::warn(format_args!(
                "starttls = true but no [tls] certificate: STARTTLS is not offered"
            ));
        }
        let signer = crate::shell::sender_auth::sign::Signer::load(&cfg.dkim)?;
        for (path, mode) in crate::shell::sender_auth::sign::Signer::loose_files(&cfg.dkim) {
            log::warn(format_args!(
                "DKIM key {}: mode {mode:04o}: readable by group or others; chmod 600 it",
                path.display()
            ));
        }
        let clients = Some(TlsClients::with_certificates(
            cfg.ca.as_deref(),
            &cfg.tls_clients,
        )?);
        let milters = crate::shell::milter::Milters::new(&cfg.milters);
        let passwd = match &cfg.auth.passwd_file {
            Some(p) => Some(Arc::new(crate::shell::auth::Passwd::load(p)?)),
            None => None,
        };
        Ok(Live {
            cfg,
            tls: acceptor,
            signer,
            clients,
            milters,
            passwd,
        })
    }
}

impl Shared {
    /// The recipient directory new sessions begin with (`None` when none is
    /// installed): `lookup(addr)` says whether an address is a known
    /// recipient and, for a secondary one, its primary. Lock-free to read
    /// once held; an install swaps it for new sessions only.
    pub(super) fn directory(&self) -> Option<Arc<Directory>> {
        self.directory.current()
    }

    /// The config and TLS new sessions begin with.
    pub(super) fn live(&self) -> Arc<Live> {
        match self.live.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
}

/// Runs the daemon until SIGTERM or SIGINT, then drains and returns.
/// SIGHUP reloads the appliance config (`path`, or the embedded default)
/// and the TLS certificates, atomically; listeners and the spool stay.
pub fn run(cfg: Config, path: Option<PathBuf>) -> Result<(), String> {
    log::init(&cfg.syslog_target, &cfg.syslog_facility, &cfg.hostname)?;
    let (installer, directory) = open_state(&cfg)?;
    let mut live = Live::load(cfg.clone())?;
    let (spool, scan) = open_spool(&cfg)?;
    let queue = start_queue(&cfg, spool.clone(), installer.clone(), scan)?;
    if let Some(c) = live.clients.take() {
        queue.set_tls(c);
    }
    if let Err(e) = super::hybrid::certificates_cover_policy(&installer, &cfg) {
        // Started anyway (the policy was installed under another config):
        // such deliveries are deferred until the config declares it.
        log::warn(format_args!(
            "{e}; its mail is deferred until it is declared"
        ));
    }
    stats::register(&installer.current().table);
    stats::set_levels(queue.clone(), spool.clone(), installer.clone());
    let listeners = open_listeners(&cfg)?;
    let metrics_listener = open_metrics(&cfg)?;
    if let Some(dev) = cfg.upload_serial.clone() {
        serve_uploads(dev, cfg.upload_baud, installer.clone(), directory.clone())?;
    }
    let state_dir = cfg.state_dir.clone();
    crate::shell::report::history::start(
        &state_dir,
        &cfg.report.local_domains,
        cfg.report.flush_interval,
    )?;
    let edge = Arc::new(Edge::new(cfg.dns.clone()));
    let control_thread = control::serve(
        &state_dir,
        with_reputation(
            control_handler(installer.clone(), directory.clone(), queue.clone()),
            edge.clone(),
        ),
    )
    .map_err(|e| {
        format!(
            "control socket {}: {e}",
            control::socket_path(&state_dir).display()
        )
    })?;
    let (stop_tx, stop_rx) = smol::channel::bounded::<()>(1);
    let verifier = Verifier::new(
        cfg.hostname.clone(),
        Resolver::new(cfg.dns.clone()),
        TlsClients::new(cfg.ca.as_deref())?,
    );
    let shared = Arc::new(Shared {
        live: RwLock::new(Arc::new(live)),
        spool,
        queue,
        installer,
        directory,
        per_ip: Mutex::new(HashMap::new()),
        active: AtomicUsize::new(0),
        stopping: stop_rx,
        deadlines: Deadlines::new(),
        verifier,
        edge,
        auth: crate::shell::auth::Guard::new(cfg.auth.concurrent_checks),
    });
    serve(&shared, (listeners, metrics_listener), path, stop_tx)?;
    shared.spool.close();
    crate::shell::report::history::flush();
    let _ = std::fs::remove_file(control::socket_path(&state_dir));
    drop(control_thread);
    log::info(format_args!("stopped"));
    finish_log();
    Ok(())
}

/// The installed policy and directory of the state directory, each
/// logged as active.
fn open_state(cfg: &Config) -> Result<(Arc<Installer>, Arc<directory::install::Store>), String> {
    let installer = Arc::new(Installer::open(cfg)?);
    log::event(
        log::Kind::Policy,
        None,
        None,
        format_args!("version {:016X} active", installer.current().table.version),
    );
    let directory = Arc::new(directory::install::Store::open(&cfg.state_dir));
    if let Some(d) = directory.current() {
        log::event(
            log::Kind::Policy,
            None,
            None,
            format_args!(
                "directory version {:016X} active: {} addresses",
                d.version(),
                d.addresses()
            ),
        );
    }
    Ok((installer, directory))
}

/// The control socket's requests, plus `{"cmd":"reputation","ip":"IP"}`:
/// protocol analysis' current score of an address (`sluice trace --peer`).
fn with_reputation(base: control::Handler, edge: Arc<Edge>) -> control::Handler {
    Arc::new(move |req: &serde_json::Value| {
        if req["cmd"].as_str() != Some("reputation") {
            return base(req);
        }
        let Some(ip) = req["ip"].as_str().and_then(|s| s.parse::<IpAddr>().ok()) else {
            return serde_json::json!({ "ok": false, "errors": ["reputation needs \"ip\""] });
        };
        let (score, blocked) = edge.reputation_of(ip).unwrap_or((0, None));
        serde_json::json!({ "ok": true, "score": score, "blocked_for": blocked })
    })
}

/// Opens the spool and logs what recovery found.
fn open_spool(cfg: &Config) -> Result<(Arc<Spool>, Scan), String> {
    let (spool, scan) = Spool::open(&cfg.spool_dir)
        .map_err(|e| format!("spool {}: {e}", cfg.spool_dir.display()))?;
    let corrupt = cfg.spool_dir.join(spool::CORRUPT_DIR);
    for (path, good) in &scan.torn {
        log::warn(format_args!(
            "spool: cut a torn tail of {} at octet {good}",
            path.display()
        ));
    }
    for (path, from, to) in &scan.damaged {
        log::warn(format_args!(
            "spool: {} is damaged at octets {from}..{to}: skipped (the records after it are \
             read; a copy as found is in {}/); a message in the damaged range is lost",
            path.display(),
            corrupt.display()
        ));
    }
    for path in &scan.foreign {
        log::warn(format_args!(
            "spool: {} is not a {} segment: moved whole to {}/, not read",
            path.display(),
            String::from_utf8_lossy(spool::SEGMENT_MAGIC),
            corrupt.display()
        ));
    }
    log::info(format_args!(
        "spool: recovered {} message(s) from {}",
        scan.messages.len(),
        cfg.spool_dir.display()
    ));
    Ok((Arc::new(spool), scan))
}

/// The delivery queue, holding every recovered message.
fn start_queue(
    cfg: &Config,
    spool: Arc<Spool>,
    installer: Arc<Installer>,
    scan: Scan,
) -> Result<Arc<Queue>, String> {
    if cfg.queue.hold {
        log::warn(format_args!(
            "queue: on hold ([queue] hold = true): mail is accepted and spooled, nothing is delivered"
        ));
    }
    let resolver = Resolver::new(cfg.dns.clone());
    let tls_clients = TlsClients::new(cfg.ca.as_deref())?;
    let queue = Queue::new(
        spool,
        cfg.queue.clone(),
        cfg.hostname.clone(),
        installer,
        resolver,
        tls_clients,
        scan.messages,
    );
    if !queue.is_empty() {
        log::info(format_args!("queue: {} message(s) to deliver", queue.len()));
    }
    Ok(queue)
}

/// Binds `[metrics] listen`, if set; an address in use stops the start.
fn open_metrics(cfg: &Config) -> Result<Option<TcpListener>, String> {
    let Some(addr) = cfg.metrics_listen else {
        return Ok(None);
    };
    smol::block_on(async {
        bind(addr)
            .map(Some)
            .map_err(|e| format!("[metrics] listen on {addr}: {e}"))
    })
}

/// Binds every `[[listen]]` address; any failure stops the start.
fn open_listeners(cfg: &Config) -> Result<Vec<(TcpListener, Listening)>, String> {
    smol::block_on(async {
        let mut v = Vec::new();
        for l in &cfg.listen {
            let addr: SocketAddr = l
                .address
                .parse()
                .map_err(|e| format!("listen address {:?}: {e}", l.address))?;
            let sock = bind(addr).map_err(|e| format!("listen on {addr}: {e}"))?;
            let mode = Listening {
                starttls: l.starttls,
                implicit_tls: l.implicit_tls,
                auth: l.auth,
                local: Some(addr.ip()).filter(|ip| !ip.is_unspecified()),
            };
            v.push((sock, mode));
        }
        Ok(v)
    })
}

/// Runs the sessions, the scheduler and the deadline ticker on
/// [`session_threads`] threads until a stopping signal, then drains.
fn serve(
    shared: &Arc<Shared>,
    (listeners, metrics_listener): (Vec<(TcpListener, Listening)>, Option<TcpListener>),
    path: Option<PathBuf>,
    stop_tx: smol::channel::Sender<()>,
) -> Result<(), String> {
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
        let (accepts, _background) = start_tasks(&sh, &ex2, listeners);
        let _metrics = metrics_listener.map(|l| {
            if let Ok(a) = l.local_addr() {
                log::info(format_args!("metrics on http://{a}/metrics"));
            }
            ex2.spawn(metrics::serve(l, ex2.clone()))
        });
        let _stats = ex2.spawn(stats::every(sh.live().cfg.metrics_syslog_interval));
        let sig = loop {
            match signals.next().await {
                Some(Ok(async_signal::Signal::Hup)) => reload(&sh, path.as_deref()),
                Some(Ok(async_signal::Signal::Int)) => break "SIGINT",
                _ => break "SIGTERM",
            }
        };
        log::info(format_args!(
            "{sig}: stopping; sessions in flight may finish"
        ));
        drop(accepts); // cancels the accept loops: no new sessions
        stop_tx.close();
        drain(&sh).await;
        // Outbound sessions kept open for more mail end politely.
        sh.queue.close_sessions().await;
    }));
    end_tx.close();
    for w in workers {
        let _ = w.join();
    }
    Ok(())
}

/// Spawns the accept loops and, beside them, the delivery scheduler and
/// the deadline ticker. Dropping a returned task cancels it: the accept
/// loops are dropped first (no new sessions), the others when the drain is
/// over.
fn start_tasks(
    sh: &Arc<Shared>,
    ex: &Arc<Executor<'static>>,
    listeners: Vec<(TcpListener, Listening)>,
) -> (Vec<smol::Task<()>>, [smol::Task<()>; 2]) {
    let mut accepts = Vec::new();
    let names: Vec<String> = listeners
        .iter()
        .filter_map(|(l, _)| l.local_addr().ok().map(|a| a.to_string()))
        .collect();
    metrics::SESSIONS_TOTAL.register(names.clone());
    metrics::SESSIONS_CURRENT.register(names);
    metrics::AUTH_TOTAL.register(["success", "failure", "lockout"].map(String::from));
    for (l, starttls) in listeners {
        if let Ok(a) = l.local_addr() {
            log::info(format_args!("listening on {a}"));
        }
        accepts.push(ex.spawn(accept_loop(l, starttls, sh.clone(), ex.clone())));
    }
    // Delivery runs beside the sessions; it stops with the daemon (a
    // delivery cut short is retried at the next start).
    let scheduler = ex.spawn(sh.queue.clone().run(ex.clone()));
    let ticker = sh.clone();
    let deadlines = ex.spawn(async move {
        let shortest = || {
            let limits = &ticker.live().cfg.limits;
            limits.command_timeout.min(limits.data_timeout)
        };
        // The deliveries' reply deadlines at the same ticks (their
        // timeouts are minutes, the tick at most a second).
        let replies = || {
            ticker.queue.check_replies();
        };
        ticker.deadlines.keep(shortest, replies).await;
    });
    (accepts, [scheduler, deadlines])
}

/// Waits for the sessions in flight, at most a data timeout and 10 s.
async fn drain(sh: &Shared) {
    let limit = sh.live().cfg.limits.data_timeout + Duration::from_secs(10);
    let start = std::time::Instant::now();
    while sh.active.load(Ordering::SeqCst) > 0 && start.elapsed() < limit {
        Timer::after(Duration::from_millis(20)).await;
    }
}

/// Says how many log lines were dropped, and gives the writer 2 s to send
/// the rest.
fn finish_log() {
    let (sent, dropped) = log::stats();
    if dropped > 0 {
        eprintln!(
            "sluice: {dropped} of {} log messages were dropped (syslog too slow or absent)",
            sent + dropped
        );
    }
    log::flush(Duration::from_secs(2));
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

/// SIGHUP: loads the config and certificates anew and swaps them in for
/// new sessions; on any error the running ones stay.
fn reload(sh: &Shared, path: Option<&Path>) {
    let result = Config::load(path).and_then(|cfg| {
        let old = sh.live();
        for section in old.cfg.restart_only_changes(&cfg) {
            log::warn(format_args!(
                "SIGHUP: {section} changed; takes effect after a restart"
            ));
        }
        super::hybrid::certificates_cover_policy(&sh.installer, &cfg)?;
        Live::load(cfg)
    });
    match result {
        Ok(mut live) => {
            if let Some(c) = live.clients.take() {
                sh.queue.set_tls(c);
            }
            sh.installer.set_certificate_names(
                live.cfg
                    .tls_clients
                    .iter()
                    .map(|c| c.name.clone())
                    .collect(),
            );
            match sh.live.write() {
                Ok(mut g) => *g = Arc::new(live),
                Err(p) => *p.into_inner() = Arc::new(live),
            }
            log::info(format_args!(
                "SIGHUP: configuration, certificates and passwd file reloaded"
            ));
        }
        Err(e) => log::warn(format_args!(
            "SIGHUP: reload refused, running config kept: {e}"
        )),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_core_is_left_to_the_writers() {
        let t: Vec<usize> = [1, 2, 3, 4, 8, 64].map(super::session_threads).to_vec();
        assert_eq!(t, [1, 1, 2, 3, 4, 4]);
    }
}
