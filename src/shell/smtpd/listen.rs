//! Listening sockets and admission: a connection gets a session only
//! within `connections` and `connections_per_ip`; otherwise it gets a 421
//! naming our host and is closed.

use super::daemon::Shared;
use super::session;
use crate::engine::reply::{Reason, Reply};
use crate::shell::ops::{log, metrics};
use async_net::TcpListener;
use futures_lite::AsyncWriteExt;
use smol::{Executor, Timer};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// What a listener offers, from its `[[listen]]` entry.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Listening {
    /// STARTTLS is offered (when `[tls]` has a certificate).
    pub(super) starttls: bool,
    /// TLS from the first octet (RFC 8314).
    pub(super) implicit_tls: bool,
    /// SMTP AUTH is offered once TLS is on.
    pub(super) auth: bool,
    /// The address the listener is bound to, when it is one address (not
    /// 0.0.0.0 or ::): every session's local address, known without a
    /// `getsockname` per connection.
    pub(super) local: Option<IpAddr>,
}

/// Holds a connection slot; frees it when dropped.
pub(super) struct Slot {
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

/// Takes a connection slot for a client at `ip`, or says why not.
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

/// A listening socket. An IPv6 one is IPv6 only (`IPV6_V6ONLY`), so that
/// `0.0.0.0:25` and `[::]:25` can both be configured, as on a dual-stack
/// box; the address is reusable at once after a restart.
pub(super) fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
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

/// Accepts connections on `l` until cancelled; each admitted one runs its
/// session as a task of its own.
pub(super) async fn accept_loop(
    l: TcpListener,
    mode: Listening,
    sh: Arc<Shared>,
    ex: Arc<Executor<'static>>,
) {
    let name: Arc<str> = l
        .local_addr()
        .map_or_else(|_| String::new(), |a| a.to_string())
        .into();
    loop {
        let (stream, peer) = match l.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and the like: wait rather than spin.
                log::warn(format_args!("accept: {e}"));
                Timer::after(Duration::from_millis(100)).await;
                continue;
            }
        };
        let slot = admit(&sh, peer.ip());
        let sh = sh.clone();
        let ex2 = ex.clone();
        let name = name.clone();
        metrics::SESSIONS_TOTAL.add(&name, 1);
        ex.spawn(async move {
            match slot {
                Ok(slot) => {
                    metrics::SESSIONS_CURRENT.add(&name, 1);
                    session::serve(stream, peer, mode, sh, slot, ex2).await;
                    metrics::SESSIONS_CURRENT.sub(&name, 1);
                }
                Err(reason) => {
                    let mut s = stream;
                    let _ = s
                        .write_all(&reply_line(reason.reply(), &sh.live().cfg.hostname))
                        .await;
                    log::event(
                        log::Kind::Reject,
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

/// A 421 refusal before any session exists, naming our host (RFC 5321 §3.8);
/// counted in `sluice_rejected_total` as it is made (it is always sent).
pub(super) fn reply_line(r: Reply<'_>, host: &str) -> Vec<u8> {
    let (c, s, d) = r.status.unwrap_or((4, 0, 0));
    let line = format!("{} {c}.{s}.{d} {host} {}\r\n", r.code, r.text).into_bytes();
    metrics::count_refusals(&line);
    line
}

#[cfg(test)]
mod tests {
    /// `[::]:P` and `0.0.0.0:P` together, as a dual-stack board config has
    /// them (the sockets are only bound; nothing connects). The port the
    /// kernel picks for IPv6 may be held by another process's IPv4 socket
    /// on a busy machine: a few ports are tried, and one must work.
    #[test]
    fn ipv4_and_ipv6_wildcards_on_one_port() {
        let mut last = None;
        for _ in 0..20 {
            let Ok(v6) = super::bind("[::]:0".parse().expect("addr")) else {
                return; // no IPv6 on this machine
            };
            let port = v6.local_addr().expect("addr").port();
            match super::bind(std::net::SocketAddr::from(([0, 0, 0, 0], port))) {
                Ok(_) => return,
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => last = Some(e),
                Err(e) => panic!("{e:?}"),
            }
        }
        panic!("IPv4 wildcard refused on 20 ports the IPv6 wildcard had: {last:?}");
    }
}
