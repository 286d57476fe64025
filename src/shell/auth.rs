//! SMTP AUTH's credentials and brakes: the Dovecot-style passwd file
//! (`user:{SCHEME}hash`), the password hashes it may hold (SHA512-CRYPT,
//! BLF-CRYPT, ARGON2ID; never `{PLAIN}`), checks run off the session
//! threads a bounded number at once, and the per-address failure count
//! that slows a guesser down and then locks it out.
//!
//! Logins and passwords are never logged here; the session logs the login
//! once AUTH succeeded.

use crate::shell::policy::compile::Diag;
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A password hash scheme of the passwd file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `{SHA512-CRYPT}$6$...` (glibc crypt, `openssl passwd -6`).
    Sha512Crypt,
    /// `{BLF-CRYPT}$2b$...` (bcrypt; `$2a$` and `$2y$` read too).
    BlfCrypt,
    /// `{ARGON2ID}$argon2id$...` (PHC string).
    Argon2id,
}

/// Every scheme: its Dovecot name and the hash prefixes it writes.
const SCHEMES: [(Scheme, &str, &[&str]); 3] = [
    (Scheme::Sha512Crypt, "SHA512-CRYPT", &["$6$"]),
    (Scheme::BlfCrypt, "BLF-CRYPT", &["$2b$", "$2a$", "$2y$"]),
    (Scheme::Argon2id, "ARGON2ID", &["$argon2id$"]),
];

impl Scheme {
    /// Its Dovecot name, as in `{NAME}`.
    pub fn name(self) -> &'static str {
        SCHEMES.iter().find(|s| s.0 == self).map_or("?", |s| s.1)
    }

    /// The scheme named `name` (case-insensitive).
    pub fn from_name(name: &str) -> Option<Scheme> {
        SCHEMES
            .iter()
            .find(|s| s.1.eq_ignore_ascii_case(name))
            .map(|s| s.0)
    }

    /// The scheme whose hashes start like `hash`.
    fn of_hash(hash: &str) -> Option<Scheme> {
        SCHEMES
            .iter()
            .find(|s| s.2.iter().any(|p| hash.starts_with(p)))
            .map(|s| s.0)
    }
}

/// The default argon2id cost: 12 MiB, 2 passes, 1 lane, chosen so that one
/// check stays under about 100 ms on a Raspberry Pi 4 (estimated from
/// `sluice auth bench` here; docs/DESIGN.md, "SMTP AUTH"). OWASP's
/// 19 MiB x 2 would take an estimated 120-170 ms there.
pub const ARGON2_M_KIB: u32 = 12 * 1024;
/// argon2id passes.
pub const ARGON2_T: u32 = 2;
/// argon2id lanes (one: the checks are already run in parallel).
pub const ARGON2_P: u32 = 1;
/// bcrypt cost for new BLF-CRYPT hashes (2^10 rounds, about 60 ms here).
pub const BCRYPT_COST: u32 = 10;

/// One user's stored hash.
#[derive(Clone)]
struct Entry {
    scheme: Scheme,
    hash: String,
}

/// A loaded passwd file: login → hash.
pub struct Passwd {
    users: HashMap<String, Entry>,
}

impl std::fmt::Debug for Passwd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Passwd({} users)", self.users.len())
    }
}

impl Passwd {
    /// Reads and checks `path`; errors are `FILE:LINE:COL: message`.
    pub fn load(path: &Path) -> Result<Passwd, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{}:1:1: cannot read: {e}", path.display()))?;
        Passwd::parse(&text).map_err(|d| format!("{}:{d}", path.display()))
    }

    /// Parses passwd-file text: `login:{SCHEME}hash[:more fields]`, `#`
    /// comments and blank lines. The first bad line is the error.
    pub fn parse(text: &str) -> Result<Passwd, Diag> {
        let mut users = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let diag = |col: usize, message: String| Diag {
                line: i + 1,
                col,
                message,
            };
            let trimmed = line.trim_end_matches('\r');
            if trimmed.trim().is_empty() || trimmed.trim_start().starts_with('#') {
                continue;
            }
            let Some((login, rest)) = trimmed.split_once(':') else {
                return Err(diag(1, "expected login:{SCHEME}hash".into()));
            };
            if login.is_empty() || login.len() > 255 || login.contains(char::is_whitespace) {
                return Err(diag(
                    1,
                    "the login must be 1-255 characters without spaces".into(),
                ));
            }
            let col = login.chars().count() + 2;
            let field = rest.split(':').next().unwrap_or("");
            let entry = entry(field).map_err(|m| diag(col, m))?;
            if users.insert(login.to_string(), entry).is_some() {
                return Err(diag(1, format!("login {login:?} is listed twice")));
            }
        }
        Ok(Passwd { users })
    }

    /// Users listed.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether no user is listed.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// The stored hash of `login`, to check off the session thread.
    pub fn hash_of(&self, login: &str) -> Option<(Scheme, String)> {
        self.users.get(login).map(|e| (e.scheme, e.hash.clone()))
    }
}

/// One password field: `{SCHEME}hash`, or a bare hash whose prefix names
/// its scheme. `{PLAIN}` and other schemes are refused.
fn entry(field: &str) -> Result<Entry, String> {
    let (named, hash) = match field.strip_prefix('{').and_then(|r| r.split_once('}')) {
        Some((name, hash)) => match Scheme::from_name(name) {
            Some(s) => (Some(s), hash),
            None if name.eq_ignore_ascii_case("PLAIN")
                || name.eq_ignore_ascii_case("CLEARTEXT") =>
            {
                return Err(format!(
                    "{{{name}}} is refused: store a hash (sluice auth passwd makes one)"
                ))
            }
            None => {
                return Err(format!(
                    "unknown scheme {{{name}}}: expected SHA512-CRYPT, BLF-CRYPT or ARGON2ID"
                ))
            }
        },
        None => (None, field),
    };
    let Some(by_prefix) = Scheme::of_hash(hash) else {
        return Err(match named {
            Some(s) => format!("not a {} hash", s.name()),
            None => "expected {SCHEME}hash with SHA512-CRYPT, BLF-CRYPT or ARGON2ID".into(),
        });
    };
    if named.is_some_and(|n| n != by_prefix) {
        return Err(format!(
            "the hash is {}, not {}",
            by_prefix.name(),
            named.map_or("?", Scheme::name)
        ));
    }
    if !well_formed(by_prefix, hash) {
        return Err(format!("malformed {} hash", by_prefix.name()));
    }
    Ok(Entry {
        scheme: by_prefix,
        hash: hash.to_string(),
    })
}

/// Whether `hash` parses as a hash of `scheme` (so that a typo is found
/// when the file is loaded, not at the first login).
fn well_formed(scheme: Scheme, hash: &str) -> bool {
    match scheme {
        Scheme::Sha512Crypt => sha_crypt::PasswordHashRef::new(hash).is_ok(),
        Scheme::BlfCrypt => hash.len() == 60,
        Scheme::Argon2id => password_hash::phc::PasswordHash::new(hash).is_ok(),
    }
}

/// Whether `secret` matches `hash` (constant time in the crates). CPU
/// heavy by design: call it through [`Guard::check`].
pub fn verify(scheme: Scheme, hash: &str, secret: &[u8]) -> bool {
    use password_hash::PasswordVerifier;
    match scheme {
        Scheme::Sha512Crypt => sha_crypt::ShaCrypt::default()
            .verify_password(secret, hash)
            .is_ok(),
        Scheme::BlfCrypt => bcrypt::verify(secret, hash).unwrap_or(false),
        Scheme::Argon2id => argon2::Argon2::default()
            .verify_password(secret, hash)
            .is_ok(),
    }
}

/// A new hash of `secret` with a random salt, in the passwd file's form
/// (`{SCHEME}hash`).
pub fn hash(scheme: Scheme, secret: &[u8]) -> Result<String, String> {
    use password_hash::PasswordHasher;
    let h = match scheme {
        Scheme::Sha512Crypt => sha_crypt::ShaCrypt::default()
            .hash_password(secret)
            .map(|h| h.to_string())
            .map_err(|e| e.to_string())?,
        Scheme::BlfCrypt => bcrypt::hash_with_result(secret, BCRYPT_COST)
            .map(|h| h.format_for_version(bcrypt::Version::TwoB))
            .map_err(|e| e.to_string())?,
        Scheme::Argon2id => return hash_argon2(secret, ARGON2_M_KIB, ARGON2_T),
    };
    Ok(format!("{{{}}}{h}", scheme.name()))
}

/// A new `{ARGON2ID}` hash of `secret` costing `m_kib` KiB and `t` passes
/// (one lane); `sluice auth bench` times other costs with it.
pub fn hash_argon2(secret: &[u8], m_kib: u32, t: u32) -> Result<String, String> {
    use password_hash::PasswordHasher;
    let h = argon2_with(m_kib, t)?
        .hash_password(secret)
        .map_err(|e| e.to_string())?;
    Ok(format!("{{ARGON2ID}}{h}"))
}

/// argon2id costing `m_kib` KiB and `t` passes, [`ARGON2_P`] lanes.
fn argon2_with(m_kib: u32, t: u32) -> Result<argon2::Argon2<'static>, String> {
    let params = argon2::Params::new(m_kib, t, ARGON2_P, None).map_err(|e| e.to_string())?;
    Ok(argon2::Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        params,
    ))
}

/// An ARGON2ID hash at the default cost, of no password anyone knows: an
/// unknown login is checked against it, so that its 535 takes as long as a
/// wrong password's and does not tell which logins exist.
fn decoy() -> (Scheme, String) {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let h = DECOY.get_or_init(|| {
        let mut secret = [0u8; 16];
        // A fixed secret if the system has no randomness: it only costs time.
        let _ = getrandom_fill(&mut secret);
        hash_argon2(&secret, ARGON2_M_KIB, ARGON2_T)
            .ok()
            .and_then(|h| h.split_once('}').map(|(_, h)| h.to_string()))
            .unwrap_or_default()
    });
    (Scheme::Argon2id, h.clone())
}

/// Random octets from the system, through password-hash's salt source.
fn getrandom_fill(out: &mut [u8]) -> Result<(), String> {
    let salt = password_hash::try_generate_salt().map_err(|e| e.to_string())?;
    for (o, s) in out.iter_mut().zip(salt.iter()) {
        *o = *s;
    }
    Ok(())
}

/// One client address's failures.
#[derive(Clone, Copy)]
struct Failures {
    /// Failures since the last success (or since they were forgotten).
    count: u32,
    /// The last one.
    last: Instant,
    /// Locked out until then.
    locked_until: Option<Instant>,
}

/// What a failed AUTH leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// Wait this long, then `535 5.7.8`.
    Delay(Duration),
    /// The address is locked out now: `421 4.7.0`.
    LockedOut,
}

/// Addresses whose failures are remembered; beyond it the oldest is
/// forgotten (as the Edge agents' client tables, 4,096 entries).
const MAX_TRACKED: usize = crate::engine::limits::MAX_CLIENTS;

/// The daemon's brakes on password checks: how many run at once, and the
/// failures per client address.
pub struct Guard {
    /// Permits for checks running at once.
    permits: async_lock::Semaphore,
    /// Failures by client address.
    failures: Mutex<HashMap<IpAddr, Failures>>,
}

impl Guard {
    /// A guard letting `concurrent` checks run at once.
    pub fn new(concurrent: usize) -> Arc<Guard> {
        Arc::new(Guard {
            permits: async_lock::Semaphore::new(concurrent.max(1)),
            failures: Mutex::new(HashMap::new()),
        })
    }

    /// Checks `secret` against `hash` on a blocking thread once a permit
    /// is free; the session's thread only waits.
    pub async fn check(&self, scheme: Scheme, hash: String, secret: Vec<u8>) -> bool {
        let _permit = self.permits.acquire().await;
        smol::unblock(move || {
            let ok = verify(scheme, &hash, &secret);
            let mut secret = secret;
            secret.iter_mut().for_each(|b| *b = 0);
            ok
        })
        .await
    }

    /// Spends a check's time on an unknown login, as [`Guard::check`]
    /// does (against [`decoy`], made on the blocking thread the first time).
    pub async fn check_unknown(&self, secret: Vec<u8>) {
        let _permit = self.permits.acquire().await;
        smol::unblock(move || {
            let (scheme, hash) = decoy();
            let _ = verify(scheme, &hash, &secret);
            let mut secret = secret;
            secret.iter_mut().for_each(|b| *b = 0);
        })
        .await;
    }

    /// Whether `ip` is locked out now.
    pub fn locked(&self, ip: IpAddr) -> bool {
        let now = Instant::now();
        self.failures.lock().is_ok_and(|m| {
            m.get(&ip)
                .and_then(|f| f.locked_until)
                .is_some_and(|t| t > now)
        })
    }

    /// A failure from `ip`: the delay before the 535 (`delay` times the
    /// failures so far, at most 30 s), or a lockout at the `max`-th.
    pub fn failed(&self, ip: IpAddr, delay: Duration, max: u32, lockout: Duration) -> AfterFailure {
        let now = Instant::now();
        let Ok(mut m) = self.failures.lock() else {
            return AfterFailure::Delay(delay);
        };
        if m.len() >= MAX_TRACKED && !m.contains_key(&ip) {
            if let Some(oldest) = m.iter().min_by_key(|(_, f)| f.last).map(|(k, _)| *k) {
                m.remove(&oldest);
            }
        }
        let f = m.entry(ip).or_insert(Failures {
            count: 0,
            last: now,
            locked_until: None,
        });
        if now.duration_since(f.last) > lockout || f.locked_until.is_some_and(|t| t <= now) {
            // Old failures are forgiven; so is a lockout that is over.
            f.count = 0;
            f.locked_until = None;
        }
        f.count = f.count.saturating_add(1);
        f.last = now;
        if f.count >= max {
            f.locked_until = Some(now + lockout);
            return AfterFailure::LockedOut;
        }
        let wait = delay.saturating_mul(f.count).min(Duration::from_secs(30));
        AfterFailure::Delay(wait)
    }

    /// A success from `ip` forgets its failures.
    pub fn succeeded(&self, ip: IpAddr) {
        if let Ok(mut m) = self.failures.lock() {
            m.remove(&ip);
        }
    }
}

/// Whether `sender` (an envelope address) is one of `allowed`
/// (`user@domain` or `*@domain`, case-insensitive).
pub fn sender_allowed(allowed: &[String], sender: &str) -> bool {
    allowed.iter().any(|a| match a.strip_prefix("*@") {
        Some(domain) => sender
            .rsplit_once('@')
            .is_some_and(|(_, d)| d.eq_ignore_ascii_case(domain)),
        None => a.eq_ignore_ascii_case(sender),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `openssl passwd -6 -salt saltsalt secret`.
    const SHA512: &str =
        "$6$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1";

    #[test]
    fn a_passwd_file_with_each_scheme() {
        let bcrypt = hash(Scheme::BlfCrypt, b"secret").expect("bcrypt");
        let text = format!(
            "# comment\n\nalice:{{SHA512-CRYPT}}{SHA512}::::::\nbob:{bcrypt}\ncarol:{}\n",
            hash(Scheme::Argon2id, b"secret").expect("argon2")
        );
        let p = Passwd::parse(&text).expect("parses");
        assert_eq!(p.len(), 3);
        for user in ["alice", "bob", "carol"] {
            let (s, h) = p.hash_of(user).expect("listed");
            assert!(verify(s, &h, b"secret"), "{user}");
            assert!(!verify(s, &h, b"Secret"), "{user}");
        }
        assert!(p.hash_of("dave").is_none());
    }

    #[test]
    fn bad_lines_name_their_line_and_column() {
        let e = Passwd::parse("alice:{SHA512-CRYPT}$6$x$y\nbob:{PLAIN}secret\n");
        let e = e.expect_err("refused");
        assert_eq!((e.line, e.col), (2, 5));
        assert!(e.message.contains("{PLAIN} is refused"), "{}", e.message);
        let e = Passwd::parse("\n\nno colon here\n").expect_err("refused");
        assert_eq!(e.line, 3);
        let e = Passwd::parse("a:{ARGON2ID}$6$x$y\n").expect_err("refused");
        assert!(e.message.contains("not ARGON2ID"), "{}", e.message);
        let e = Passwd::parse("a:{MD5-CRYPT}$1$x$y\n").expect_err("refused");
        assert!(e.message.contains("unknown scheme"), "{}", e.message);
    }

    #[test]
    fn failures_grow_the_delay_then_lock_out() {
        let g = Guard::new(1);
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        let d = Duration::from_millis(100);
        let lock = Duration::from_secs(60);
        assert_eq!(g.failed(ip, d, 3, lock), AfterFailure::Delay(d));
        assert_eq!(g.failed(ip, d, 3, lock), AfterFailure::Delay(d * 2));
        assert!(!g.locked(ip));
        assert_eq!(g.failed(ip, d, 3, lock), AfterFailure::LockedOut);
        assert!(g.locked(ip));
        let other: IpAddr = "192.0.2.2".parse().expect("ip");
        assert!(!g.locked(other));
        g.succeeded(ip);
        assert!(!g.locked(ip));
    }

    #[test]
    fn the_decoy_is_a_default_cost_argon2id_hash_nobody_knows() {
        let (scheme, h) = decoy();
        assert_eq!(scheme, Scheme::Argon2id);
        assert!(h.starts_with("$argon2id$v=19$m=12288,t=2,p=1$"), "{h}");
        assert!(!verify(scheme, &h, b""));
        assert_eq!(decoy().1, h, "made once");
        smol::block_on(Guard::new(1).check_unknown(b"guess".to_vec()));
    }

    #[test]
    fn sender_login_patterns() {
        let allowed = vec![
            "scan@example.com".to_string(),
            "*@apps.example.com".to_string(),
        ];
        assert!(sender_allowed(&allowed, "SCAN@example.com"));
        assert!(sender_allowed(&allowed, "x@APPS.example.com"));
        assert!(!sender_allowed(&allowed, "ceo@example.com"));
        assert!(!sender_allowed(&allowed, ""));
    }
}
