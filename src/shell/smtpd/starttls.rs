//! The client connection, plain or after STARTTLS, and the STARTTLS
//! handshake with attribution by client certificate.

use crate::engine::policy::{attribute, Attribution, Table};
use crate::shell::ops::{log, metrics};
use crate::shell::policy::runtime as pol;
use crate::shell::tls;
use async_net::TcpStream;
use futures_lite::{future, AsyncReadExt, AsyncWriteExt};
use smol::Timer;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

/// A client connection, plain or after STARTTLS.
pub(super) enum Conn {
    /// Before STARTTLS.
    Plain(TcpStream),
    /// After a completed handshake.
    Tls(Box<futures_rustls::server::TlsStream<TcpStream>>),
    /// Mid-handshake, or after a failed one.
    Gone,
}

impl Conn {
    /// Reads what the client sent; 0 at its end.
    pub(super) async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf).await,
            Conn::Tls(s) => s.read(buf).await,
            Conn::Gone => Ok(0),
        }
    }

    /// Writes and flushes `data`.
    pub(super) async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Conn::Plain(s) => s.write_all(data).await,
            Conn::Tls(s) => {
                s.write_all(data).await?;
                s.flush().await
            }
            Conn::Gone => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    /// Ends TLS with a close_notify; a plain connection just drops.
    pub(super) async fn close(self) {
        if let Conn::Tls(mut s) = self {
            let _ = s.close().await;
        }
    }
}

/// Upgrades a plain connection to TLS within `timeout`. A verified client
/// certificate whose name an inbound connector lists attributes the
/// session anew (`att`). On failure the connection is gone and the session
/// ends (the failure is logged).
pub(super) async fn upgrade(
    conn: &mut Conn,
    acceptor: futures_rustls::TlsAcceptor,
    timeout: Duration,
    table: &Table,
    peer: SocketAddr,
    att: &mut Attribution,
) -> bool {
    let Conn::Plain(plain) = std::mem::replace(conn, Conn::Gone) else {
        return false;
    };
    let hs = future::or(async { Some(acceptor.accept(plain).await) }, async {
        Timer::after(timeout).await;
        None
    })
    .await;
    match hs {
        Some(Ok(s)) => {
            if let Some(name) = certificate_name(&s, table) {
                *att = attribute(table, &pol::ip16(peer.ip()), Some(name.as_bytes()));
                log::info(format_args!(
                    "TLS client {peer} attributed by certificate name {name}"
                ));
            }
            *conn = Conn::Tls(Box::new(s));
            metrics::TLS_HANDSHAKES.add("inbound", 1);
            true
        }
        Some(Err(e)) => {
            log::info(format_args!("TLS handshake with {peer} failed: {e}"));
            metrics::TLS_FAILURES.add("inbound", 1);
            false
        }
        None => {
            metrics::TLS_FAILURES.add("inbound", 1);
            false
        }
    }
}

/// The name in the client's verified certificate that an inbound
/// connector's `tls_certificate_name` matches, if any.
fn certificate_name(
    s: &futures_rustls::server::TlsStream<TcpStream>,
    table: &Table,
) -> Option<String> {
    let names = table
        .inbound
        .iter()
        .filter_map(|c| c.tls_name)
        .map(|n| table.str(n));
    s.get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| tls::certificate_name(c, names))
}
