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

use crate::engine::client::{self, Client, Event, Failure, ServerReply, TlsMode};
use crate::shell::policy::runtime::{splice, HeaderEdit, NextHop};
use crate::shell::relay::dns::{DnsError, Resolver};
use crate::shell::spool::{RcptState, Stored};
use crate::shell::time::now_secs as now;
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

/// TLS client configurations, one per connector policy.
pub struct TlsClients {
    /// Encrypts without checking the certificate (opportunistic, required).
    pub any: Arc<ClientConfig>,
    /// Checks the certificate against the roots and the host's name.
    pub verify: Arc<ClientConfig>,
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
        use rustls::pki_types::pem::PemObject;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
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
        let verify = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let any = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth();
        Ok(TlsClients {
            any: Arc::new(any),
            verify: Arc::new(verify),
        })
    }
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
}

fn text(r: &ServerReply<'_>) -> String {
    match r.status {
        Some((a, b, c)) => format!("{} {a}.{b}.{c} {}", r.code, String::from_utf8_lossy(r.text)),
        None => format!("{} {}", r.code, String::from_utf8_lossy(r.text)),
    }
}

/// How one recipient came out of an attempt (the caller turns "deferred"
/// into a retry time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Result1 {
    /// Accepted by the next hop (its reply).
    Delivered(String),
    /// Try again later (the reason).
    Deferred(String),
    /// Permanent failure (the reason).
    Bounced(String),
}

impl Result1 {
    /// The spool state for this result (`attempts` counts this one).
    pub fn state(&self, attempts: u32, retry_at: u64) -> RcptState {
        match self {
            Result1::Delivered(r) => RcptState::Delivered {
                at: now(),
                reply: r.clone(),
            },
            Result1::Bounced(r) => RcptState::Bounced {
                at: now(),
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

/// Where to connect, in order: (host name for TLS, address).
async fn targets(a: &Attempt<'_>) -> Result<Vec<(String, SocketAddr)>, Result1> {
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
        NextHop::None => {
            return Err(Result1::Bounced(
                "554 5.4.4 No route to this recipient".into(),
            ))
        }
    };
    for (host, port) in hosts {
        match a.resolver.addresses(&host, port).await {
            Ok(addrs) => out.extend(addrs.into_iter().map(|ad| (host.clone(), ad))),
            Err(e) => last_err = Some(dns_failure(&e, &host)),
        }
    }
    if out.is_empty() {
        return Err(last_err
            .unwrap_or_else(|| Result1::Deferred("451 4.4.3 No address for the next hop".into())));
    }
    Ok(out)
}

fn dns_failure(e: &DnsError, name: &str) -> Result1 {
    let why = format!("{} {name}: {e}", e.status());
    if e.is_temporary() {
        Result1::Deferred(format!("451 {why}"))
    } else {
        Result1::Bounced(format!("550 {why}"))
    }
}

/// A connection, plain or after STARTTLS.
enum Conn {
    Plain(TcpStream),
    Tls(Box<futures_rustls::client::TlsStream<TcpStream>>),
    Gone,
}

impl Conn {
    async fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(b).await,
            Conn::Tls(s) => s.read(b).await,
            Conn::Gone => Ok(0),
        }
    }
    async fn write_all(&mut self, b: &[u8]) -> io::Result<()> {
        match self {
            Conn::Plain(s) => s.write_all(b).await,
            Conn::Tls(s) => s.write_all(b).await,
            Conn::Gone => Err(io::ErrorKind::NotConnected.into()),
        }
    }
    async fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush().await,
            Conn::Tls(s) => s.flush().await,
            Conn::Gone => Ok(()),
        }
    }
}

async fn timed<T>(
    d: Duration,
    f: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    future::or(f, async {
        async_io::Timer::after(d).await;
        Err(io::ErrorKind::TimedOut.into())
    })
    .await
}

/// The message's header block with the edits applied, and where the
/// original body starts.
fn spliced_head(m: &Stored) -> io::Result<(Vec<u8>, u64)> {
    let head_len = m.env.body_offset.unwrap_or(m.env.size).min(m.env.size);
    let head = m.read_head()?;
    let edits: Vec<&HeaderEdit> = m.env.edits.iter().collect();
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
    Next(String),
    /// The TLS handshake failed (the reason): with opportunistic TLS the
    /// same address is tried again in clear text, as RFC 7435 allows.
    TlsFailed(String),
    /// Stop: every recipient failed permanently (the reason).
    Permanent(String),
}

/// One attempt for `routes` (indices into the envelope's routes) of `m`:
/// a result per route, in the same order.
pub async fn attempt(a: &Attempt<'_>, m: &Stored, routes: &[u16]) -> Vec<Result1> {
    let targets = match targets(a).await {
        Ok(t) => t,
        Err(r) => return vec![r; routes.len()],
    };
    let mut last = "451 4.4.1 No answer from the next hop".to_string();
    let mut tempfailed: Option<Vec<Result1>> = None;
    for (host, addr) in targets {
        // Opportunistic TLS that fails its handshake: once more in clear text.
        let mut use_tls = true;
        loop {
            let stream = match timed(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
                Ok(s) => s,
                Err(e) => {
                    last = format!("451 4.4.1 {host} [{addr}]: {e}");
                    break;
                }
            };
            let _ = stream.set_nodelay(true);
            match session(a, m, routes, &host, Conn::Plain(stream), use_tls).await {
                Ok(Session::Done(results)) => return results,
                Ok(Session::TempFailed(results)) => {
                    last = format!("451 4.4.2 every recipient deferred by {host} [{addr}]");
                    tempfailed = Some(results);
                }
                Ok(Session::Next(why)) => last = format!("{why} ({host} [{addr}])"),
                Ok(Session::TlsFailed(why)) => {
                    last = format!("{why} ({host} [{addr}])");
                    if a.mode == TlsMode::Opportunistic && use_tls {
                        crate::shell::ops::log::info(format_args!(
                            "deliver: {last}; opportunistic TLS, trying again without STARTTLS"
                        ));
                        use_tls = false;
                        continue;
                    }
                }
                Ok(Session::Permanent(why)) => {
                    return vec![Result1::Bounced(format!("{why} ({host} [{addr}])")); routes.len()]
                }
                Err(e) => last = format!("451 4.4.2 {host} [{addr}]: {e}"),
            }
            break;
        }
    }
    // The last host that answered every recipient with 4xx keeps its
    // per-recipient replies; otherwise the last reason stands for all.
    tempfailed.unwrap_or_else(|| vec![Result1::Deferred(last); routes.len()])
}

async fn session(
    a: &Attempt<'_>,
    m: &Stored,
    routes: &[u16],
    host: &str,
    mut conn: Conn,
    use_tls: bool,
) -> io::Result<Session> {
    let rcpts: Vec<&[u8]> = routes
        .iter()
        .filter_map(|i| m.env.routes.get(usize::from(*i)).map(|r| r.rcpt.as_slice()))
        .collect();
    let (head, body_at) = spliced_head(m)?;
    let size = head.len() as u64 + (m.env.size - body_at);
    let env = client::Envelope {
        from: &m.env.from,
        rcpts: &rcpts,
        size,
        body8bit: m.env.body8bit,
        smtputf8: m.env.smtputf8,
    };
    let cfg = client::Config {
        helo: a.helo,
        tls: a.mode,
        tls_available: use_tls,
    };
    let mut cl = Client::new(cfg, env);
    let mut results: Vec<Option<Result1>> = vec![None; rcpts.len()];
    let mut buf = vec![0u8; 8192];
    let (mut start, mut end) = (0usize, 0usize);
    // The message is out: the next reply is the end of data's.
    let mut data_sent = false;
    loop {
        // Feed what the server said.
        loop {
            let step = cl.feed(&buf[start..end]);
            start += step.consumed;
            let Some(ev) = step.event else {
                if step.consumed > 0 && start < end {
                    continue;
                }
                break;
            };
            match ev {
                Event::Rcpt { index, reply } => {
                    let t = text(&reply);
                    if let Some(slot) = results.get_mut(usize::from(index)) {
                        *slot = match reply.code {
                            200..=299 => None, // accepted: the end of data decides
                            400..=499 => Some(Result1::Deferred(t)),
                            _ => Some(Result1::Bounced(t)),
                        };
                    }
                }
                Event::Done(reply) => {
                    let t = text(&reply);
                    let done = results
                        .iter()
                        .map(|r| match r {
                            Some(r) => r.clone(),
                            None if reply.is_positive() => Result1::Delivered(t.clone()),
                            None if reply.is_temporary() => Result1::Deferred(t.clone()),
                            None => Result1::Bounced(t.clone()),
                        })
                        .collect();
                    let _ = conn.write_all(cl.output()).await;
                    let _ = conn.flush().await;
                    return Ok(Session::Done(done));
                }
                Event::Failed { why, reply } => {
                    let t = reply.map(|r| text(&r));
                    return Ok(match (why, reply) {
                        (Failure::NoRecipients, _) => {
                            let done: Vec<Result1> = results
                                .iter()
                                .map(|r| {
                                    r.clone().unwrap_or_else(|| {
                                        Result1::Deferred("451 4.3.0 not tried".into())
                                    })
                                })
                                .collect();
                            // All 4xx: another MX may take them (RFC 5321 §5.1).
                            if done.iter().all(|r| matches!(r, Result1::Deferred(_))) {
                                Session::TempFailed(done)
                            } else {
                                Session::Done(done)
                            }
                        }
                        (Failure::Needs8BitMime, _) => Session::Next(
                            "451 4.6.3 the next hop does not offer 8BITMIME for this 8-bit message"
                                .into(),
                        ),
                        (Failure::NeedsSmtpUtf8, _) => {
                            Session::Next("451 4.6.7 the next hop does not offer SMTPUTF8".into())
                        }
                        (Failure::TooBig, _) => {
                            Session::Permanent("552 5.3.4 message too big for the next hop".into())
                        }
                        (Failure::TlsNotOffered, _) => Session::Next(
                            "451 4.7.10 TLS is required and the next hop does not offer STARTTLS"
                                .into(),
                        ),
                        (Failure::Refused, Some(r)) if r.code >= 500 && r.code != 554 => {
                            Session::Permanent(t.unwrap_or_default())
                        }
                        _ => Session::Next(t.unwrap_or_else(|| format!("451 4.4.2 {why:?}"))),
                    });
                }
                Event::StartTls => {
                    conn.write_all(cl.output()).await?;
                    let n = cl.output().len();
                    cl.output_sent(n);
                    let Conn::Plain(plain) = std::mem::replace(&mut conn, Conn::Gone) else {
                        return Ok(Session::Next("451 4.7.0 TLS state".into()));
                    };
                    let cfg = if a.mode == TlsMode::Verify {
                        a.tls.verify.clone()
                    } else {
                        a.tls.any.clone()
                    };
                    let name = ServerName::try_from(host.to_string())
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
                    let tls = timed(
                        REPLY_TIMEOUT,
                        futures_rustls::TlsConnector::from(cfg).connect(name, plain),
                    )
                    .await;
                    match tls {
                        Ok(s) => {
                            conn = Conn::Tls(Box::new(s));
                            start = end; // nothing read in clear text counts after STARTTLS
                            cl.tls_established();
                        }
                        Err(e) => {
                            return Ok(Session::TlsFailed(format!(
                                "451 4.7.5 TLS handshake with {host} failed: {e}"
                            )))
                        }
                    }
                }
                Event::SendMessage { bdat } => {
                    conn.write_all(cl.output()).await?;
                    let n = cl.output().len();
                    cl.output_sent(n);
                    stream_message(&mut conn, m, &head, body_at, bdat).await?;
                    cl.message_sent();
                    data_sent = true;
                }
            }
        }
        if !cl.output().is_empty() {
            conn.write_all(cl.output()).await?;
            conn.flush().await?;
            let n = cl.output().len();
            cl.output_sent(n);
        }
        if cl.is_closed() {
            return Ok(Session::Next("451 4.4.2 the session ended early".into()));
        }
        if start > 0 {
            buf.copy_within(start..end, 0);
            end -= start;
            start = 0;
        }
        if end == buf.len() {
            return Ok(Session::Next("451 4.5.0 reply line too long".into()));
        }
        let wait = if data_sent {
            DATA_END_TIMEOUT
        } else {
            REPLY_TIMEOUT
        };
        let n = timed(wait, conn.read(&mut buf[end..])).await?;
        if n == 0 {
            return Ok(Session::Next(
                "451 4.4.2 the next hop closed the connection".into(),
            ));
        }
        end += n;
    }
}

/// Writes the spliced header block and then the body from the spool, in
/// chunks, dot-stuffed for DATA (BDAT sends octets as they are).
async fn stream_message(
    conn: &mut Conn,
    m: &Stored,
    head: &[u8],
    body_at: u64,
    bdat: bool,
) -> io::Result<()> {
    let mut line_start = true;
    // One buffer for the stuffed octets of every part (at most twice a part).
    let mut stuffed = Vec::new();
    send_part(conn, head, bdat, &mut line_start, &mut stuffed).await?;
    let mut at = body_at;
    while at < m.env.size {
        let n = ((m.env.size - at) as usize).min(STREAM_CHUNK);
        let data = m.read_range(at, n)?;
        at += n as u64;
        send_part(conn, &data, bdat, &mut line_start, &mut stuffed).await?;
    }
    if !bdat && !line_start {
        // DATA must end with CRLF before the final dot.
        conn.write_all(b"\r\n").await?;
    }
    conn.flush().await
}

async fn send_part(
    conn: &mut Conn,
    data: &[u8],
    bdat: bool,
    line_start: &mut bool,
    out: &mut Vec<u8>,
) -> io::Result<()> {
    if bdat {
        return conn.write_all(data).await;
    }
    out.clear();
    client::stuff_runs(data, line_start, |run| out.extend_from_slice(run));
    conn.write_all(out).await
}
