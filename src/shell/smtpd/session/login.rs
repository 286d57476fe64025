//! SMTP AUTH in a session (RFC 4954): the implicit-TLS handshake of a
//! `tls = "implicit"` listener (RFC 8314), the check of the credentials
//! the engine's exchange produced, the failure delay and lockout, and
//! `sender_login`. An authenticated session is originating.
//!
//! The login appears in the log only once AUTH succeeded; a password
//! never does.

use super::super::daemon::Live;
use super::super::listen::Listening;
use super::super::starttls::{self, Conn};
use super::Session;
use crate::engine::policy::{Attribution, Table};
use crate::engine::reply::Reason;
use crate::engine::smtp::Mechanism;
use crate::shell::auth::{sender_allowed, AfterFailure};
use crate::shell::ops::log::{self, Kind};
use crate::shell::ops::metrics;
use async_net::TcpStream;
use std::net::SocketAddr;

/// The credentials of one AUTH exchange, copied out of the engine. The
/// password is zeroed when dropped.
pub(super) struct Credentials {
    /// PLAIN or LOGIN.
    mechanism: Mechanism,
    /// The login as sent (not valid UTF-8: it cannot match any user).
    login: String,
    /// The password.
    secret: Vec<u8>,
}

impl Credentials {
    /// Copies the engine's credentials.
    pub(super) fn new(mechanism: Mechanism, login: &[u8], secret: &[u8]) -> Self {
        Credentials {
            mechanism,
            login: String::from_utf8(login.to_vec()).unwrap_or_default(),
            secret: secret.to_vec(),
        }
    }
}

impl Drop for Credentials {
    fn drop(&mut self) {
        self.secret.iter_mut().for_each(|b| *b = 0);
    }
}

/// The connection a session begins on: the plain socket, or on an
/// implicit-TLS listener the socket after the TLS handshake (which may
/// attribute the client by its certificate). `None`: the handshake failed
/// or no certificate is configured; the connection is closed.
pub(super) async fn implicit_tls(
    stream: TcpStream,
    mode: Listening,
    live: &Live,
    table: &Table,
    peer: SocketAddr,
    att: &mut Attribution,
) -> Option<Conn> {
    let mut conn = Conn::Plain(stream);
    if !mode.implicit_tls {
        return Some(conn);
    }
    let Some(acceptor) = live.tls.clone() else {
        log::warn(format_args!(
            "implicit TLS listener without a [tls] certificate: closing {peer}"
        ));
        return None;
    };
    let timeout = live.cfg.limits.command_timeout;
    starttls::upgrade(&mut conn, acceptor, timeout, table, peer, att)
        .await
        .then_some(conn)
}

impl Session<'_> {
    /// Checks the credentials of an AUTH exchange: `235` and an
    /// originating session, or `535 5.7.8` after a delay that grows with
    /// the address's failures, or `421 4.7.0` once it is locked out.
    pub(super) async fn authenticate(&mut self, c: Credentials) {
        let ip = self.peer.ip();
        let guard = self.sh.auth.clone();
        if guard.locked(ip) {
            metrics::AUTH_TOTAL.add("lockout", 1);
            log::event(
                Kind::Reject,
                None,
                None,
                format_args!(
                    "auth: {}: address locked out after AUTH failures",
                    self.peer
                ),
            );
            self.rx.reject(Reason::AuthLockedOut.reply());
            return;
        }
        let Some(passwd) = self.live.passwd.clone() else {
            self.rx.reject(Reason::AuthUnavailable.reply());
            return;
        };
        let ok = match passwd.hash_of(&c.login) {
            Some((scheme, hash)) => guard.check(scheme, hash, c.secret.clone()).await,
            None => {
                // As long as a wrong password takes: no login enumeration.
                guard.check_unknown(c.secret.clone()).await;
                false
            }
        };
        if ok {
            guard.succeeded(ip);
            metrics::AUTH_TOTAL.add("success", 1);
            log::info(format_args!(
                "auth: {} authenticated as {} ({})",
                self.peer,
                c.login,
                c.mechanism.name()
            ));
            self.att.originating = true;
            self.originating_changed();
            self.login = Some(c.login.clone());
            self.rx.auth_accepted();
            return;
        }
        self.auth_failed().await;
    }

    /// A failed AUTH: counted, logged without the login, delayed, refused.
    pub(super) async fn auth_failed(&mut self) {
        let a = &self.live.cfg.auth;
        let after = self
            .sh
            .auth
            .failed(self.peer.ip(), a.failure_delay, a.max_failures, a.lockout);
        metrics::AUTH_TOTAL.add("failure", 1);
        match after {
            AfterFailure::Delay(wait) => {
                log::event(
                    Kind::Reject,
                    None,
                    None,
                    format_args!(
                        "auth: {}: authentication failed (reply in {} ms)",
                        self.peer,
                        wait.as_millis()
                    ),
                );
                async_io::Timer::after(wait).await;
                self.rx.reject(Reason::AuthFailed.reply());
            }
            AfterFailure::LockedOut => {
                metrics::AUTH_TOTAL.add("lockout", 1);
                log::event(
                    Kind::Reject,
                    None,
                    None,
                    format_args!(
                        "auth: {}: authentication failed {} times: locked out for {} s",
                        self.peer,
                        a.max_failures,
                        a.lockout.as_secs()
                    ),
                );
                self.rx.reject(Reason::AuthLockedOut.reply());
            }
        }
    }

    /// `sender_login`: an authenticated session may only use the envelope
    /// senders its login is bound to (`550 5.7.1` otherwise); `false` when
    /// MAIL was refused.
    pub(super) fn sender_login(&mut self) -> bool {
        let Some(login) = self.login.as_deref() else {
            return true;
        };
        let Some(allowed) = self.live.cfg.auth.sender_login.get(login) else {
            return true;
        };
        let from = String::from_utf8_lossy(&self.txn.from);
        if sender_allowed(allowed, &from) {
            return true;
        }
        log::event(
            Kind::Reject,
            None,
            None,
            format_args!(
                "auth: {} login={login} from=<{from}>: sender not bound to the login",
                self.peer
            ),
        );
        self.rx.reject(Reason::SenderLoginMismatch.reply());
        false
    }
}
