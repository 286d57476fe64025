//! Outbound delivery: one attempt to hand some recipients of a spooled
//! message to their next hop.
//!
//! The next hop is a send connector's smart hosts, tried in order, or the
//! MX hosts of the domain (lowest preference first, equal ones shuffled,
//! A/AAAA when there is no MX; a null MX bounces at once). Each address is
//! tried until one takes the transaction; a connection failure, a refused
//! greeting or a 4xx before any recipient was accepted moves on to the
//! next. The engine's [`Client`] speaks SMTP; this module moves the octets:
//! TCP, TLS per the connector's policy, and the message streamed from the
//! spool with the header edits spliced into the header block only.
//!
//! With a connection cache ([`Attempt::pool`], see [`super::pool`]) a
//! session stays open after its transaction and the next message to the
//! same host, port and TLS identity goes over it: MAIL at once (RSET first
//! when a transaction was left open). A cached session that fails before
//! MAIL is answered (the next hop closed it while idle, a 421, a broken
//! pipe) was no attempt: the message goes over a new connection at once.

use crate::engine::client::{self, Client, Event, ServerReply, TlsMode};
use crate::shell::deadline::{Deadline, Deadlines};
use crate::shell::policy::render::HeaderEdit;
use crate::shell::relay::dns::{DnsError, Resolver};
use crate::shell::relay::failure::{at_host, Failure};
use crate::shell::relay::pool::{Key, Pool};
use crate::shell::relay::splice::splice;
use crate::shell::reply::OwnedReply;
use crate::shell::spool::{NextHop, RcptState, Reader, Stored};
use async_net::TcpStream;
use futures_lite::{future, AsyncReadExt, AsyncWriteExt};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// How long to wait for a connection, and for each reply (RFC 5321
/// §4.5.3.2 allows 5 minutes for most replies and 10 after the data).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const REPLY_TIMEOUT: Duration = Duration::from_secs(300);
/// The reply to the end of the data may take longer: the next hop may
/// scan or spool the message first (RFC 5321 §4.5.3.2.6).
const DATA_END_TIMEOUT: Duration = Duration::from_secs(600);
/// Octets read from the spool and written at a time while streaming.
const STREAM_CHUNK: usize = 64 * 1024;
/// How long closing a cached session may take (QUIT written and flushed).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// TLS client configurations, one per connector policy.
pub struct TlsClients {
    /// Encrypts without checking the certificate (opportunistic, required).
    pub any: Arc<ClientConfig>,
    /// Checks the certificate against the roots and the host's name.
    pub verify: Arc<ClientConfig>,
    /// Per `[[tls.client]]` name: the same two configurations, presenting
    /// that client certificate when the next hop asks for one.
    pub certs: std::collections::HashMap<String, (Arc<ClientConfig>, Arc<ClientConfig>)>,
}

/// Accepts any certificate but checks the handshake's signatures: for
/// opportunistic and `required` TLS, which must encrypt but cannot know
/// the right certificate (RFC 7435).
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

impl TlsClients {
    /// Builds both configurations; the roots for `verify` are the system's
    /// (`/etc/ssl/certs/ca-certificates.crt`) plus `extra_ca` (PEM).
    pub fn new(extra_ca: Option<&std::path::Path>) -> Result<TlsClients, String> {
        TlsClients::with_certificates(extra_ca, &[])
    }

    /// [`TlsClients::new`] plus a pair of configurations per client
    /// certificate of `clients` (`[[tls.client]]`); an unreadable file or a
    /// key that does not fit its certificate is an error naming both.
    pub fn with_certificates(
        extra_ca: Option<&std::path::Path>,
        clients: &[crate::shell::config::ClientCertFiles],
    ) -> Result<TlsClients, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = Arc::new(roots(extra_ca)?);
        let (any, verify) = client_pair(&provider, &roots, None)?;
        let mut certs = std::collections::HashMap::new();
        for c in clients {
            let cert = crate::shell::tls::load_client_cert(c)?;
            let pair = client_pair(&provider, &roots, Some(cert)).map_err(|e| {
                format!(
                    "[[tls.client]] \"{}\": {} / {}: {e}",
                    c.name,
                    c.certificate.display(),
                    c.key.display()
                )
            })?;
            certs.insert(c.name.clone(), pair);
        }
        Ok(TlsClients { any, verify, certs })
    }
}

/// The system's roots (`/etc/ssl/certs/ca-certificates.crt`) plus
/// `extra_ca` (PEM), for `tls = "verify"`.
fn roots(extra_ca: Option<&std::path::Path>) -> Result<rustls::RootCertStore, String> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let system = std::path::Path::new("/etc/ssl/certs/ca-certificates.crt");
    let mut files: Vec<&std::path::Path> = Vec::new();
    if system.exists() {
        files.push(system);
    }
    if let Some(p) = extra_ca {
        files.push(p);
    }
    for f in files {
        let certs =
            CertificateDer::pem_file_iter(f).map_err(|e| format!("{}: {e}", f.display()))?;
        for c in certs.flatten() {
            let _ = roots.add(c);
        }
    }
    Ok(roots)
}

/// The opportunistic and the verifying client configuration, presenting
/// `cert` when the server asks for a client certificate (none without).
fn client_pair(
    provider: &Arc<rustls::crypto::CryptoProvider>,
    roots: &Arc<rustls::RootCertStore>,
    cert: Option<crate::shell::tls::ClientCert>,
) -> Result<(Arc<ClientConfig>, Arc<ClientConfig>), String> {
    let verify = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots.clone());
    let any = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider.clone())));
    let (any, verify) = match cert {
        None => (any.with_no_client_auth(), verify.with_no_client_auth()),
        Some(c) => (
            any.with_client_auth_cert(c.chain.clone(), c.key.clone_key())
                .map_err(|e| e.to_string())?,
            verify
                .with_client_auth_cert(c.chain, c.key)
                .map_err(|e| e.to_string())?,
        ),
    };
    Ok((Arc::new(any), Arc::new(verify)))
}

/// What one attempt needs.
pub struct Attempt<'a> {
    /// Our name for EHLO.
    pub helo: &'a str,
    /// Name lookups.
    pub resolver: &'a Resolver,
    /// TLS configurations.
    pub tls: &'a TlsClients,
    /// The connector's TLS policy.
    pub mode: TlsMode,
    /// Where to go.
    pub next_hop: &'a NextHop,
    /// The send connector's name: its copy's header edits apply.
    pub connector: Option<&'a str>,
    /// The client certificate (`[[tls.client]]` name) presented at STARTTLS.
    pub certificate: Option<&'a str>,
    /// The connection cache: sessions are taken from it and kept in it
    /// (none: one connection per attempt, closed with QUIT).
    pub pool: Option<&'a Sessions>,
    /// Where each reply's deadline is kept, checked by the caller's ticking
    /// task (the daemon's, at most a second apart; none: a timer per reply).
    pub deadlines: Option<&'a Deadlines>,
}

/// An outbound session kept open between deliveries: the connection and
/// what the engine's client needs to go on with it.
pub struct Cached {
    conn: Conn,
    idle: client::Idle,
}

/// The connection cache of outbound sessions.
pub type Sessions = Pool<Cached>;

/// Ends cached sessions: QUIT written and flushed (a TLS session also
/// sends its close_notify), then the connection is dropped. For sessions
/// at the idle limit, evicted, or at shutdown.
pub async fn close(sessions: Vec<Cached>) {
    for mut c in sessions {
        let _ = timed(CLOSE_TIMEOUT, async {
            c.conn.write_all(client::QUIT).await?;
            c.conn.close().await
        })
        .await;
    }
}

/// What an attempt came to: a result per route, in order, and how many
/// messages the connection that carried the transaction had carried
/// before it (0: a new connection, or none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// A result per route.
    pub results: Vec<Result1>,
    /// Messages the connection carried before this one.
    pub reused: u32,
}

/// A next hop's reply as the shell keeps it (its text as UTF-8, lossily).
fn owned(r: &ServerReply<'_>) -> OwnedReply {
    OwnedReply::new(r.code, r.status, String::from_utf8_lossy(r.text))
}

/// How one recipient came out of an attempt (the caller turns "deferred"
/// into a retry time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Result1 {
    /// Accepted by the next hop (its reply).
    Delivered(OwnedReply),
    /// Try again later (the reason).
    Deferred(OwnedReply),
    /// Permanent failure (the reason).
    Bounced(OwnedReply),
}

impl Result1 {
    /// The reply or reason this result carries.
    pub fn reply(&self) -> &OwnedReply {
        match self {
            Result1::Delivered(r) | Result1::Deferred(r) | Result1::Bounced(r) => r,
        }
    }

    /// The spool state for this result at `now` (`attempts` counts this
    /// one).
    pub fn state(&self, attempts: u32, now: u64, retry_at: u64) -> RcptState {
        match self {
            Result1::Delivered(r) => RcptState::Delivered {
                at: now,
                reply: r.clone(),
            },
            Result1::Bounced(r) => RcptState::Bounced {
                at: now,
                reason: r.clone(),
            },
            Result1::Deferred(r) => RcptState::Deferred {
                until: retry_at,
                attempts,
                reason: r.clone(),
            },
        }
    }
}

/// Where to connect, in order: (host name for TLS, address); call-ahead
/// ([`super::verify`]) asks the same hosts delivery would use.
pub(super) async fn targets(a: &Attempt<'_>) -> Result<Vec<(String, SocketAddr)>, Result1> {
    let mut out = Vec::new();
    let mut last_err = None;
    let hosts: Vec<(String, u16)> = match a.next_hop {
        NextHop::SmartHosts(list) => list
            .iter()
            .map(|h| match h.rsplit_once(':') {
                Some((name, port)) if !name.contains(':') => {
                    (name.to_string(), port.parse().unwrap_or(25))
                }
                _ => (h.clone(), 25),
            })
            .collect(),
        NextHop::Mx(domain) => match a.resolver.mx_hosts(domain).await {
            Ok(mx) => mx.into_iter().map(|m| (m.host, 25)).collect(),
            Err(e) => return Err(dns_failure(&e, domain)),
        },
        NextHop::None => return Err(Result1::Bounced(Failure::NoRoute.reply(""))),
    };
    for (host, port) in hosts {
        match a.resolver.addresses(&host, port).await {
            Ok(addrs) => out.extend(addrs.into_iter().map(|ad| (host.clone(), ad))),
            Err(e) => last_err = Some(dns_failure(&e, &host)),
        }
    }
    if out.is_empty() {
        return Err(last_err.unwrap_or_else(|| Result1::Deferred(Failure::NoAddress.reply(""))));
    }
    Ok(out)
}

/// A failed lookup of `name`: deferred when it may work later.
fn dns_failure(e: &DnsError, name: &str) -> Result1 {
    let why = Failure::from(e).reply(&format!("{name}: {e}"));
    if e.is_temporary() {
        Result1::Deferred(why)
    } else {
        Result1::Bounced(why)
    }
}

/// A connection, plain or after STARTTLS.
pub(super) enum Conn {
    Plain(TcpStream),
    Tls(Box<futures_rustls::client::TlsStream<TcpStream>>),
    Gone,
}

impl Conn {
    /// Reads some octets (0: closed).
    pub(super) async fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(b).await,
            Conn::Tls(s) => s.read(b).await,
            Conn::Gone => Ok(0),
        }
    }
    /// Writes all of `b`.
    pub(super) async fn write_all(&mut self, b: &[u8]) -> io::Result<()> {
        match self {
            Conn::Plain(s) => s.write_all(b).await,
            Conn::Tls(s) => s.write_all(b).await,
            Conn::Gone => Err(io::ErrorKind::NotConnected.into()),
        }
    }
    /// Flushes what was written.
    pub(super) async fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush().await,
            Conn::Tls(s) => s.flush().await,
            Conn::Gone => Ok(()),
        }
    }
    /// Flushes and closes the writing side (TLS: close_notify first).
    pub(super) async fn close(&mut self) -> io::Result<()> {
        match self {
            Conn::Plain(s) => s.close().await,
            Conn::Tls(s) => s.close().await,
            Conn::Gone => Ok(()),
        }
    }
}

/// `f`, or `TimedOut` after `d`.
pub(super) async fn timed<T>(
    d: Duration,
    f: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    future::or(f, async {
        async_io::Timer::after(d).await;
        Err(io::ErrorKind::TimedOut.into())
    })
    .await
}

/// Like [`timed`], with the wait kept in `d` (no timer: see [`Deadlines`]).
async fn within<T>(
    d: &Deadline,
    wait: Duration,
    f: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    d.arm(wait);
    let r = future::or(f, async {
        d.expired().await;
        Err(io::ErrorKind::TimedOut.into())
    })
    .await;
    d.disarm();
    r
}

/// The message's header block with the edits applied, and where the
/// original body starts.
/// The edits are those of the copy sent through `connector` (a
/// cross-premises connector's copy carries the demoted twins).
fn spliced_head(
    m: &Stored,
    connector: Option<&str>,
    reader: &mut Reader<'_>,
) -> io::Result<(Vec<u8>, u64)> {
    let head_len = m.head_len();
    let mut head = Vec::new();
    reader.read_into(0, head_len as usize, &mut head)?;
    let edits = HeaderEdit::for_connector(&m.env.edits, connector);
    Ok((splice(&head, &edits), head_len))
}

/// Outcome of one connection.
enum Session {
    /// The transaction ran: a result per recipient.
    Done(Vec<Result1>),
    /// Every recipient was refused for now (4xx): try the next address;
    /// these results stand if none is left.
    TempFailed(Vec<Result1>),
    /// Nothing was delivered; try the next address (the reason).
    Next(OwnedReply),
    /// The TLS handshake failed (the reason): with opportunistic TLS the
    /// same address is tried again in clear text, as RFC 7435 allows.
    TlsFailed(OwnedReply),
    /// Stop: every recipient failed permanently (the reason).
    Permanent(OwnedReply),
}

/// One attempt for `routes` (indices into the envelope's routes) of `m`:
/// a result per route, in the same order.
pub async fn attempt(a: &Attempt<'_>, m: &Stored, routes: &[u16]) -> Outcome {
    let all = |r: Result1| Outcome {
        results: vec![r; routes.len()],
        reused: 0,
    };
    // A certificate the config no longer declares: defer (sending without
    // it would be attributed wrongly at the next hop).
    if let Some(name) = a.certificate.filter(|n| !a.tls.certs.contains_key(*n)) {
        return all(Result1::Deferred(Failure::NoClientCertificate.reply(name)));
    }
    let targets = match targets(a).await {
        Ok(t) => t,
        Err(r) => return all(r),
    };
    let mut last = Failure::NoAnswer.reply("");
    let mut tempfailed: Option<Vec<Result1>> = None;
    for (host, addr) in targets {
        match at_address(a, m, routes, &host, addr).await {
            Tried::Over(outcome) => return outcome,
            Tried::TempFailed(results, why) => {
                last = why;
                tempfailed = Some(results);
            }
            Tried::Next(why) => last = why,
            Tried::Permanent(why) => return all(Result1::Bounced(why)),
        }
    }
    // The last host that answered every recipient with 4xx keeps its
    // per-recipient replies; otherwise the last reason stands for all.
    Outcome {
        results: tempfailed.unwrap_or_else(|| vec![Result1::Deferred(last); routes.len()]),
        reused: 0,
    }
}

/// How one address came out.
enum Tried {
    /// The transaction ran: the attempt is over.
    Over(Outcome),
    /// Every recipient was refused for now (their results, and why).
    TempFailed(Vec<Result1>, OwnedReply),
    /// Nothing was delivered: the next address (why).
    Next(OwnedReply),
    /// Every recipient failed permanently (why).
    Permanent(OwnedReply),
}

/// The attempt at one address: over a cached session if there is one
/// (one closed while idle counts for nothing), else over new connections
/// (opportunistic TLS whose handshake fails: once more in clear text).
async fn at_address(
    a: &Attempt<'_>,
    m: &Stored,
    routes: &[u16],
    host: &str,
    addr: SocketAddr,
) -> Tried {
    let key = Key {
        host: host.to_string(),
        addr,
        mode: a.mode,
        certificate: a.certificate.map(str::to_string),
    };
    if let Some((cached, carried)) = take_cached(a, &key).await {
        crate::shell::ops::metrics::DELIVERY_CONNECTIONS.add("yes", 1);
        let end = session(a, m, routes, host, cached.conn, Start::Resume(cached.idle)).await;
        if end.mail_answered {
            return finish(a, key, end, carried, addr, host).await;
        }
        crate::shell::ops::log::info(format_args!(
            "deliver: the session to {host} [{addr}] kept open after {carried} message(s) failed before MAIL was answered; a new one"
        ));
    }
    // Opportunistic TLS that fails its handshake: once more in clear text.
    let mut use_tls = true;
    loop {
        let stream = match timed(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(s) => s,
            Err(e) => return Tried::Next(Failure::Connect.reply(&format!("{host} [{addr}]: {e}"))),
        };
        let _ = stream.set_nodelay(true);
        crate::shell::ops::metrics::DELIVERY_CONNECTIONS.add("no", 1);
        let conn = Conn::Plain(stream);
        let end = session(a, m, routes, host, conn, Start::New { use_tls }).await;
        if let Ok(Session::TlsFailed(why)) = &end.result {
            let why = at_host(why.clone(), host, &addr);
            if a.mode == TlsMode::Opportunistic && use_tls {
                crate::shell::ops::log::info(format_args!(
                    "deliver: {why}; opportunistic TLS, trying again without STARTTLS"
                ));
                use_tls = false;
                continue;
            }
            return Tried::Next(why);
        }
        return finish(a, key, end, 0, addr, host).await;
    }
}

/// A cached session for `key`, if one is idle (and not past the idle
/// limit: those found are closed now), with the messages it carried.
async fn take_cached(a: &Attempt<'_>, key: &Key) -> Option<(Cached, u32)> {
    let pool = a.pool?;
    let (found, stale) = pool.take(key, std::time::Instant::now());
    close(stale).await;
    found
}

/// What a session came to for the attempt; the session itself is kept in
/// the cache when it stays open (it carried `carried` messages before).
async fn finish(
    a: &Attempt<'_>,
    key: Key,
    end: SessionEnd,
    carried: u32,
    addr: SocketAddr,
    host: &str,
) -> Tried {
    if let (Some(pool), Some(kept)) = (a.pool, end.kept) {
        let evicted = pool.put(key, kept, carried + 1, std::time::Instant::now());
        close(evicted.into_iter().collect()).await;
    }
    match end.result {
        Ok(Session::Done(results)) => Tried::Over(Outcome {
            results,
            reused: carried,
        }),
        Ok(Session::TempFailed(results)) => Tried::TempFailed(
            results,
            Failure::AllDeferred.reply(&format!("{host} [{addr}]")),
        ),
        Ok(Session::Next(why) | Session::TlsFailed(why)) => Tried::Next(at_host(why, host, &addr)),
        Ok(Session::Permanent(why)) => Tried::Permanent(at_host(why, host, &addr)),
        Err(e) => Tried::Next(Failure::Io.reply(&format!("{host} [{addr}]: {e}"))),
    }
}

/// How a session ended: its result for the attempt, the session if it
/// stays open for another message, and whether MAIL was answered.
struct SessionEnd {
    result: io::Result<Session>,
    kept: Option<Cached>,
    mail_answered: bool,
}

/// How a session begins.
#[derive(Clone, Copy)]
enum Start {
    /// A new connection: the greeting, EHLO, STARTTLS if `use_tls`.
    New { use_tls: bool },
    /// A session kept open after an earlier transaction.
    Resume(client::Idle),
}

/// One SMTP transaction with `host` over `conn` for `routes` of `m`.
async fn session(
    a: &Attempt<'_>,
    m: &Stored,
    routes: &[u16],
    host: &str,
    conn: Conn,
    start: Start,
) -> SessionEnd {
    let mut reader = Reader::new(m);
    let spliced = spliced_head(m, a.connector, &mut reader);
    // No spool descriptor of its own held while the next hop answers; the
    // body's read takes the shared one again (or opens the file).
    reader.release();
    let (head, body_at) = match spliced {
        Ok(x) => x,
        Err(e) => {
            return SessionEnd {
                result: Err(e),
                kept: None,
                // The spool failed us, not the session: a new connection
                // would not help (the session is dropped, unused).
                mail_answered: true,
            };
        }
    };
    let rcpts: Vec<&[u8]> = routes
        .iter()
        .filter_map(|i| m.env.routes.get(usize::from(*i)).map(|r| r.rcpt.as_slice()))
        .collect();
    let size = head.len() as u64 + (m.env.size - body_at);
    let env = client::Transaction {
        from: &m.env.from,
        rcpts: &rcpts,
        size,
        body8bit: m.env.body8bit,
        smtputf8: m.env.smtputf8,
    };
    let cfg = client::ClientConfig {
        helo: a.helo,
        tls: a.mode,
        tls_available: !matches!(start, Start::New { use_tls: false }),
    };
    let mut cl = match start {
        Start::New { .. } => Client::new(cfg, env),
        Start::Resume(idle) => Client::resume(cfg, env, idle),
    };
    if a.pool.is_some_and(|p| p.limits().enabled()) {
        cl.keep_open();
    }
    let mut t = Transaction {
        a,
        m,
        host,
        cl,
        conn,
        reader,
        head,
        body_at,
        results: vec![None; rcpts.len()],
        buf: vec![0u8; 8192],
        start: 0,
        end: 0,
        data_sent: false,
        deadline: a.deadlines.map(Deadlines::register),
    };
    let result = t.run().await;
    if result.is_ok() && t.cl.draining() {
        // A refused MAIL: read the pipelined replies so that the session
        // can be kept; one that fails here is dropped.
        let _ = t.drain().await;
    }
    let kept = match (&result, t.cl.idle()) {
        (Ok(_), Some(idle)) => Some(Cached {
            conn: std::mem::replace(&mut t.conn, Conn::Gone),
            idle,
        }),
        _ => None,
    };
    SessionEnd {
        result,
        kept,
        mail_answered: t.cl.mail_answered(),
    }
}

/// A client event with the next hop's reply owned, so that acting on it
/// may use the client again.
enum Said {
    /// Perform the TLS handshake.
    StartTls,
    /// A recipient's reply.
    Rcpt(u16, OwnedReply),
    /// Stream the message (`true`: BDAT).
    SendMessage(bool),
    /// The reply to the end of the message.
    Done(OwnedReply),
    /// The session ends without delivery, with the reply that caused it.
    Failed(client::Failure, Option<OwnedReply>),
}

impl From<Event<'_>> for Said {
    fn from(ev: Event<'_>) -> Self {
        match ev {
            Event::StartTls => Said::StartTls,
            Event::Rcpt { index, reply } => Said::Rcpt(index, owned(&reply)),
            Event::SendMessage { bdat } => Said::SendMessage(bdat),
            Event::Done(reply) => Said::Done(owned(&reply)),
            Event::Failed { why, reply } => Said::Failed(why, reply.map(|r| owned(&r))),
        }
    }
}

/// One session's moving parts: the engine's client, the connection, the
/// replies read and not yet fed, and a result per recipient so far.
struct Transaction<'a> {
    a: &'a Attempt<'a>,
    m: &'a Stored,
    host: &'a str,
    cl: Client<'a>,
    conn: Conn,
    /// Reads the body from the spool.
    reader: Reader<'a>,
    /// The spliced header block, and where the original body starts.
    head: Vec<u8>,
    body_at: u64,
    /// `None`: no answer yet, or accepted (the end of data decides).
    results: Vec<Option<Result1>>,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// The message is out: the next reply is the end of data's.
    data_sent: bool,
    /// The reply deadline (none: a timer per read).
    deadline: Option<Arc<Deadline>>,
}

impl Transaction<'_> {
    /// Feeds what the next hop says to the client and acts on its events
    /// until the session is over.
    async fn run(&mut self) -> io::Result<Session> {
        loop {
            while let Some(said) = self.next_event() {
                if let Some(over) = self.on_event(said).await? {
                    return Ok(over);
                }
            }
            if let Some(over) = self.write_and_read().await? {
                return Ok(over);
            }
        }
    }

    /// Reads the replies the client drops after a refused MAIL until it is
    /// idle, or the session ends (each read within the reply timeout).
    async fn drain(&mut self) -> io::Result<()> {
        while self.cl.draining() {
            let fed = self.next_event().is_some();
            if !fed && self.cl.draining() && self.write_and_read().await?.is_some() {
                break;
            }
        }
        Ok(())
    }

    /// The client's next event from the replies read so far, if any.
    fn next_event(&mut self) -> Option<Said> {
        loop {
            let step = self.cl.feed(&self.buf[self.start..self.end]);
            self.start += step.consumed;
            match step.event {
                Some(ev) => return Some(ev.into()),
                None if step.consumed > 0 && self.start < self.end => continue,
                None => return None,
            }
        }
    }

    /// Acts on one event; `Some` when the session is over.
    async fn on_event(&mut self, said: Said) -> io::Result<Option<Session>> {
        match said {
            Said::Rcpt(index, reply) => {
                if let Some(slot) = self.results.get_mut(usize::from(index)) {
                    *slot = match reply.code {
                        200..=299 => None, // accepted: the end of data decides
                        400..=499 => Some(Result1::Deferred(reply)),
                        _ => Some(Result1::Bounced(reply)),
                    };
                }
                Ok(None)
            }
            Said::Done(reply) => {
                let done = self.done(&reply);
                let _ = self.conn.write_all(self.cl.output()).await;
                let _ = self.conn.flush().await;
                Ok(Some(Session::Done(done)))
            }
            Said::Failed(why, reply) => Ok(Some(self.failed(why, reply))),
            Said::StartTls => self.start_tls().await,
            Said::SendMessage(bdat) => {
                self.send_message(bdat).await?;
                Ok(None)
            }
        }
    }

    /// Streams the message after what the client has to say (BDAT's
    /// command), and the end of data after it: a small message goes out in
    /// one write, not three (head, body, dot).
    async fn send_message(&mut self, bdat: bool) -> io::Result<()> {
        // Room for the whole of a small message (and its stuffing and
        // dot), so that the buffer is not grown as it fills.
        let rest = self.m.env.size.saturating_sub(self.body_at) as usize;
        let room = (self.head.len() + rest).min(2 * STREAM_CHUNK) + 64;
        let mut out = Vec::with_capacity(self.cl.output().len() + room);
        out.extend_from_slice(self.cl.output());
        self.cl.output_sent(out.len());
        let m = Streamed {
            head: &self.head,
            body_at: self.body_at,
            size: self.m.env.size,
            bdat,
        };
        let streamed = stream_message(&mut self.conn, &mut self.reader, &m, &mut out).await;
        self.reader.release();
        streamed?;
        self.cl.message_sent();
        out.extend_from_slice(self.cl.output());
        self.cl.output_sent(self.cl.output().len());
        self.conn.write_all(&out).await?;
        self.conn.flush().await?;
        self.data_sent = true;
        Ok(())
    }

    /// Every recipient's result after the end of data's `reply`.
    fn done(&self, reply: &OwnedReply) -> Vec<Result1> {
        self.results
            .iter()
            .map(|r| match r {
                Some(r) => r.clone(),
                None if reply.code < 400 => Result1::Delivered(reply.clone()),
                None if reply.is_transient() => Result1::Deferred(reply.clone()),
                None => Result1::Bounced(reply.clone()),
            })
            .collect()
    }

    /// What a session the client gave up on comes to.
    fn failed(&self, why: client::Failure, reply: Option<OwnedReply>) -> Session {
        match (why, reply) {
            (client::Failure::NoRecipients, _) => {
                let done: Vec<Result1> = self
                    .results
                    .iter()
                    .map(|r| {
                        r.clone()
                            .unwrap_or_else(|| Result1::Deferred(Failure::NotTried.reply("")))
                    })
                    .collect();
                // All 4xx: another MX may take them (RFC 5321 §5.1).
                if done.iter().all(|r| matches!(r, Result1::Deferred(_))) {
                    Session::TempFailed(done)
                } else {
                    Session::Done(done)
                }
            }
            (client::Failure::Needs8BitMime, _) => Session::Next(Failure::No8BitMime.reply("")),
            (client::Failure::NeedsSmtpUtf8, _) => Session::Next(Failure::NoSmtpUtf8.reply("")),
            (client::Failure::TooBig, _) => Session::Permanent(Failure::TooBig.reply("")),
            (client::Failure::TlsNotOffered, _) => Session::Next(Failure::TlsRequired.reply("")),
            (client::Failure::Refused, Some(r)) if r.code >= 500 && r.code != 554 => {
                Session::Permanent(r)
            }
            (why, r) => {
                Session::Next(r.unwrap_or_else(|| Failure::Protocol.reply(&format!("{why:?}"))))
            }
        }
    }

    /// Sends STARTTLS's command and shakes hands; `Some` when that failed.
    async fn start_tls(&mut self) -> io::Result<Option<Session>> {
        self.send_output().await?;
        let Conn::Plain(plain) = std::mem::replace(&mut self.conn, Conn::Gone) else {
            return Ok(Some(Session::Next(Failure::TlsState.reply(""))));
        };
        let (any, verify) = match self.a.certificate {
            None => (&self.a.tls.any, &self.a.tls.verify),
            Some(name) => match self.a.tls.certs.get(name) {
                Some((any, verify)) => (any, verify),
                None => {
                    return Ok(Some(Session::Next(
                        Failure::NoClientCertificate.reply(name),
                    )))
                }
            },
        };
        let cfg = if self.a.mode == TlsMode::Verify {
            verify.clone()
        } else {
            any.clone()
        };
        let name = ServerName::try_from(self.host.to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let tls = timed(
            REPLY_TIMEOUT,
            futures_rustls::TlsConnector::from(cfg).connect(name, plain),
        )
        .await;
        match tls {
            Ok(s) => {
                self.conn = Conn::Tls(Box::new(s));
                self.start = self.end; // nothing read in clear text counts after STARTTLS
                self.cl.tls_established();
                crate::shell::ops::metrics::TLS_HANDSHAKES.add("outbound", 1);
                Ok(None)
            }
            Err(e) => {
                crate::shell::ops::metrics::TLS_FAILURES.add("outbound", 1);
                let why = format!("{} failed: {e}", self.host);
                Ok(Some(Session::TlsFailed(Failure::TlsHandshake.reply(&why))))
            }
        }
    }

    /// Writes what the client has to say (no flush).
    async fn send_output(&mut self) -> io::Result<()> {
        self.conn.write_all(self.cl.output()).await?;
        let n = self.cl.output().len();
        self.cl.output_sent(n);
        Ok(())
    }

    /// Sends the client's output, then reads more of the next hop's
    /// replies; `Some` when the session is over.
    async fn write_and_read(&mut self) -> io::Result<Option<Session>> {
        if !self.cl.output().is_empty() {
            self.send_output().await?;
            self.conn.flush().await?;
        }
        if self.cl.is_closed() {
            return Ok(Some(Session::Next(Failure::EndedEarly.reply(""))));
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            return Ok(Some(Session::Next(Failure::ReplyTooLong.reply(""))));
        }
        let wait = if self.data_sent {
            DATA_END_TIMEOUT
        } else {
            REPLY_TIMEOUT
        };
        let read = self.conn.read(&mut self.buf[self.end..]);
        let n = match &self.deadline {
            Some(d) => within(d, wait, read).await?,
            None => timed(wait, read).await?,
        };
        if n == 0 {
            return Ok(Some(Session::Next(Failure::Closed.reply(""))));
        }
        self.end += n;
        Ok(None)
    }
}

/// The message as streamed: the spliced header block, then the original
/// from `body_at` to `size`; dot-stuffed for DATA, as it is for BDAT.
struct Streamed<'a> {
    head: &'a [u8],
    body_at: u64,
    size: u64,
    bdat: bool,
}

/// Appends the message to `out`, writing `out` whenever it holds
/// [`STREAM_CHUNK`] octets, and leaves the last of it there for the
/// caller to write with the end of data.
async fn stream_message(
    conn: &mut Conn,
    reader: &mut Reader<'_>,
    m: &Streamed<'_>,
    out: &mut Vec<u8>,
) -> io::Result<()> {
    let mut line_start = true;
    append(out, m.head, m.bdat, &mut line_start);
    let mut data = Vec::new();
    let mut at = m.body_at;
    while at < m.size {
        if out.len() >= STREAM_CHUNK {
            conn.write_all(out).await?;
            out.clear();
        }
        let n = ((m.size - at) as usize).min(STREAM_CHUNK);
        reader.read_into(at, n, &mut data)?;
        if data.len() < n {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        at += n as u64;
        append(out, &data, m.bdat, &mut line_start);
    }
    if !m.bdat && !line_start {
        // DATA must end with CRLF before the final dot.
        out.extend_from_slice(b"\r\n");
    }
    Ok(())
}

/// Appends `data` to `out`, dot-stuffed unless for BDAT.
fn append(out: &mut Vec<u8>, data: &[u8], bdat: bool, line_start: &mut bool) {
    if bdat {
        out.extend_from_slice(data);
    } else {
        client::stuff_runs(data, line_start, |run| out.extend_from_slice(run));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shell::spool::testutil::{stored_in_parts, tmpdir};
    use std::fs;

    /// Dot-stuffing written out plainly: a line that begins with `.` gets
    /// another.
    fn stuffed(text: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for line in text.split_inclusive(|&b| b == b'\n') {
            if line.first() == Some(&b'.') {
                out.push(b'.');
            }
            out.extend_from_slice(line);
        }
        out
    }

    /// What `stream_message` writes for `m` and leaves in its buffer,
    /// received over a loopback connection.
    fn streamed(m: &Stored, s: &Streamed<'_>) -> (Vec<u8>, Vec<u8>) {
        smol::block_on(async {
            let l = async_net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = l.local_addr().expect("addr");
            let mut conn = Conn::Plain(TcpStream::connect(addr).await.expect("connect"));
            let (mut peer, _) = l.accept().await.expect("accept");
            let send = async {
                let mut out = Vec::new();
                let mut reader = Reader::new(m);
                stream_message(&mut conn, &mut reader, s, &mut out)
                    .await
                    .expect("stream");
                conn.close().await.expect("close");
                out
            };
            let receive = async {
                let mut got = Vec::new();
                peer.read_to_end(&mut got).await.expect("read");
                got
            };
            let (out, got) = future::zip(send, receive).await;
            (got, out)
        })
    }

    #[test]
    fn a_message_streams_stuffed_in_chunks_and_its_last_part_stays_for_the_end_of_data() {
        let dir = tmpdir("stream");
        let head = b"Subject: dots\r\n\r\n";
        let mut text = head.to_vec();
        // Lines that begin with a dot, some across the chunk boundaries,
        // and no line end at the very end.
        while text.len() < 3 * STREAM_CHUNK {
            text.extend_from_slice(b".a dotted line\r\nplain line ");
            text.extend_from_slice(&[b'x'; 37]);
            text.extend_from_slice(b"\r\n..two\r\n");
        }
        text.extend_from_slice(b".last");
        let m = stored_in_parts(&dir, &text, 5);
        let spliced = b"Received: by us\r\nSubject: dots\r\n\r\n";
        let body = &text[head.len()..];
        let s = Streamed {
            head: spliced,
            body_at: head.len() as u64,
            size: text.len() as u64,
            bdat: false,
        };
        let (written, rest) = streamed(&m, &s);
        assert!(!written.is_empty() && !rest.is_empty() && rest.len() < 3 * STREAM_CHUNK);
        let mut want = stuffed(&[&spliced[..], body].concat());
        want.extend_from_slice(b"\r\n"); // before the dot, which the client adds
        assert_eq!([written, rest].concat(), want);

        // BDAT: the octets as they are.
        let s = Streamed { bdat: true, ..s };
        let (written, rest) = streamed(&m, &s);
        assert_eq!([written, rest].concat(), [&spliced[..], body].concat());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_small_message_is_left_whole_for_one_write_with_the_end_of_data() {
        let dir = tmpdir("stream-small");
        let text = b"Subject: s\r\n\r\n.one\r\ntwo\r\n";
        let m = stored_in_parts(&dir, text, 2);
        let s = Streamed {
            head: b"Subject: s\r\n\r\n",
            body_at: 14,
            size: text.len() as u64,
            bdat: false,
        };
        let (written, rest) = streamed(&m, &s);
        assert!(written.is_empty(), "nothing written before the end of data");
        assert_eq!(rest, b"Subject: s\r\n\r\n..one\r\ntwo\r\n");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_reply_wait_kept_in_a_deadline_times_out_and_disarms() {
        let set = Deadlines::new();
        let d = set.register();
        let never = future::pending::<io::Result<()>>();
        let r = smol::block_on(within(&d, Duration::ZERO, never));
        assert_eq!(r.map_err(|e| e.kind()), Err(io::ErrorKind::TimedOut));
        let r = smol::block_on(within(&d, Duration::from_secs(60), async { Ok(7) }));
        assert_eq!(r.ok(), Some(7));
        // Disarmed after each wait: the checker wakes nobody.
        assert_eq!(set.check(), 0);
    }
}
