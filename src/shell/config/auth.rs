//! `[auth]`: SMTP AUTH for internal clients (RFC 4954). The listeners
//! turn it on (`[[listen]] auth = true`); this section names the
//! credentials file and the brakes on guessing.

use super::{parse_duration, Listener, Seg, ValueError};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::{Table, Value};

/// `[auth]`, checked, defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthConfig {
    /// The Dovecot-style passwd file (`user:{SCHEME}hash`); reloaded on
    /// SIGHUP. `None`: no listener may have `auth = true`.
    pub passwd_file: Option<PathBuf>,
    /// Offer AUTH without TLS too. For tests only: passwords would cross
    /// the network in clear text.
    pub allow_plaintext: bool,
    /// Password checks running at once (each on a blocking thread); more
    /// wait their turn, so argon2 cannot take every core from SMTP.
    pub concurrent_checks: usize,
    /// The wait before a `535` reply, times the client address's failures
    /// so far (a guesser slows down with every miss).
    pub failure_delay: Duration,
    /// Failures from one address before it is locked out.
    pub max_failures: u32,
    /// How long a locked-out address gets `421 4.7.0` at AUTH; its
    /// failures are also forgotten this long after the last one.
    pub lockout: Duration,
    /// Login → the envelope senders it may use (`user@domain`,
    /// `*@domain`); a login not listed may use any.
    pub sender_login: BTreeMap<String, Vec<String>>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            passwd_file: None,
            allow_plaintext: false,
            concurrent_checks: 2,
            failure_delay: Duration::from_secs(1),
            max_failures: 5,
            lockout: Duration::from_secs(15 * 60),
            sender_login: BTreeMap::new(),
        }
    }
}

/// Longest `failure_delay`: the delay grows with each failure, and a
/// client waits at most 5 minutes for a reply (RFC 5321 §4.5.3.2).
const MAX_FAILURE_DELAY: Duration = Duration::from_secs(30);

/// Most password checks at once: each may hold argon2's memory.
const MAX_CONCURRENT_CHECKS: usize = 16;

/// `[auth]` as written.
#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct RawAuth {
    passwd_file: Option<String>,
    allow_plaintext: Option<bool>,
    concurrent_checks: Option<usize>,
    failure_delay: Option<String>,
    max_failures: Option<u32>,
    lockout: Option<String>,
    sender_login: BTreeMap<String, Vec<String>>,
}

/// Parses "500ms" or a [`parse_duration`] form ("2s", "1m").
fn delay(s: &str) -> Option<Duration> {
    match s.trim().strip_suffix("ms") {
        Some(ms) => ms.trim().parse().ok().map(Duration::from_millis),
        None => parse_duration(s),
    }
}

/// `[auth]`, checked.
pub(super) fn auth(raw: RawAuth, rel: &dyn Fn(&str) -> PathBuf) -> Result<AuthConfig, ValueError> {
    let d = AuthConfig::default();
    let failure_delay = match raw.failure_delay.as_deref() {
        None => d.failure_delay,
        Some(s) => delay(s).filter(|v| *v <= MAX_FAILURE_DELAY).ok_or_else(|| {
            ValueError::at(
                &["auth", "failure_delay"],
                format!("auth.failure_delay = {s:?}: expected e.g. \"500ms\" or \"1s\", at most 30s"),
            )
        })?,
    };
    let lockout = match raw.lockout.as_deref() {
        None => d.lockout,
        Some(s) => parse_duration(s).ok_or_else(|| {
            ValueError::at(
                &["auth", "lockout"],
                format!("auth.lockout = {s:?}: expected e.g. \"15m\""),
            )
        })?,
    };
    for (login, senders) in &raw.sender_login {
        if let Some(bad) = senders.iter().find(|a| !a.contains('@')) {
            return Err(ValueError {
                path: vec![
                    "auth".into(),
                    "sender_login".into(),
                    Seg::Key(login.clone()),
                ],
                message: format!(
                    "auth.sender_login.{login}: {bad:?} is not an address or *@domain"
                ),
            });
        }
    }
    Ok(AuthConfig {
        passwd_file: raw.passwd_file.filter(|p| !p.is_empty()).map(|p| rel(&p)),
        allow_plaintext: raw.allow_plaintext.unwrap_or(false),
        concurrent_checks: raw
            .concurrent_checks
            .unwrap_or(d.concurrent_checks)
            .clamp(1, MAX_CONCURRENT_CHECKS),
        failure_delay,
        max_failures: raw.max_failures.unwrap_or(d.max_failures).max(1),
        lockout,
        sender_login: raw.sender_login,
    })
}

/// A listener with `auth = true` needs `[auth] passwd_file` and TLS (or
/// `allow_plaintext`), and one with `tls = "implicit"` needs `[tls]`'s
/// certificate.
pub(super) fn check_listeners(
    listen: &[Listener],
    auth: &AuthConfig,
    have_cert: bool,
) -> Result<(), ValueError> {
    for (i, l) in listen.iter().enumerate() {
        let at = |k: &str, m: &str| ValueError {
            path: vec!["listen".into(), Seg::Index(i), k.into()],
            message: m.into(),
        };
        if l.auth && auth.passwd_file.is_none() {
            return Err(at("auth", "listen.auth = true needs [auth] passwd_file"));
        }
        let tls = have_cert && (l.starttls || l.implicit_tls);
        if l.auth && !tls && !auth.allow_plaintext {
            return Err(at(
                "auth",
                "listen.auth = true needs TLS to offer AUTH: starttls = true or tls = \"implicit\", \
                 and [tls] certificate and key",
            ));
        }
        if l.implicit_tls && !have_cert {
            return Err(at(
                "tls",
                "listen.tls = \"implicit\" needs [tls] certificate and key",
            ));
        }
    }
    Ok(())
}

impl AuthConfig {
    /// Whether a SIGHUP cannot apply the change from `self` to `new`:
    /// everything reloads (the passwd file too) but the number of checks
    /// at once, which sizes the daemon's semaphore.
    pub(super) fn restart_only(&self, new: &AuthConfig) -> bool {
        self.concurrent_checks != new.concurrent_checks
    }

    /// `[auth]` for the effective config.
    pub(super) fn effective(&self, path: fn(&Path) -> Value) -> Table {
        let mut t = Table::new();
        if let Some(p) = &self.passwd_file {
            t.insert("passwd_file".into(), path(p));
        }
        t.insert(
            "allow_plaintext".into(),
            Value::Boolean(self.allow_plaintext),
        );
        let n = |v: u64| Value::Integer(i64::try_from(v).unwrap_or(i64::MAX));
        t.insert("concurrent_checks".into(), n(self.concurrent_checks as u64));
        t.insert(
            "failure_delay".into(),
            Value::String(format!("{}ms", self.failure_delay.as_millis())),
        );
        t.insert("max_failures".into(), n(u64::from(self.max_failures)));
        t.insert(
            "lockout".into(),
            Value::String(format!("{}s", self.lockout.as_secs())),
        );
        let logins = self
            .sender_login
            .iter()
            .map(|(k, v)| {
                let list = v.iter().map(|a| Value::String(a.clone())).collect();
                (k.clone(), Value::Array(list))
            })
            .collect();
        t.insert("sender_login".into(), Value::Table(logins));
        t
    }
}
