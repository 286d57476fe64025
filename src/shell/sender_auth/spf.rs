//! Drives the engine's SPF evaluator ([`crate::engine::spf`]) with the
//! daemon's resolver, under one overall deadline.

use crate::engine::spf::{Answer, Identity, Need, Rtype, Spf, SpfResult};
use crate::shell::relay::dns::{AuthRecords, AuthType, Resolver};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// What one SPF check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpfOutcome {
    /// The result.
    pub result: SpfResult,
    /// The domain checked (MAIL FROM's, or the HELO name for `<>`).
    pub domain: String,
    /// The explanation of a `fail` (`exp=`), empty when none.
    pub explanation: String,
    /// The identity checked: `mailfrom` or `helo` (RFC 8601 `smtp.*`).
    pub identity: &'static str,
}

/// Runs `check_host()` for the client `ip`, MAIL FROM `from` (empty for
/// `<>`) and HELO `helo`. A check still running at `deadline` (a slow DNS
/// server) is `temperror`: the session never waits longer.
pub async fn check(
    resolver: &Resolver,
    ip: IpAddr,
    from: &str,
    helo: &str,
    host: &str,
    deadline: Duration,
) -> SpfOutcome {
    let ip16 = match ip {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let id = Identity {
        ip: ip16,
        mail_from: from.as_bytes(),
        helo: helo.as_bytes(),
        receiver: host.as_bytes(),
        now,
    };
    let mut spf = Box::new(Spf::new(&id));
    let end = Instant::now() + deadline;
    let result = loop {
        let (name, rtype) = match spf.need() {
            Need::Done(r) => break r,
            Need::Lookup { name, rtype } => (String::from_utf8_lossy(name).into_owned(), rtype),
        };
        let Some(left) = end.checked_duration_since(Instant::now()) else {
            break SpfResult::TempError;
        };
        let answer = futures_lite::future::or(
            async { Some(lookup(resolver, &name, rtype).await) },
            async {
                async_io::Timer::after(left).await;
                None
            },
        )
        .await;
        match answer {
            Some(a) => feed(&mut spf, a),
            None => break SpfResult::TempError,
        }
    };
    SpfOutcome {
        result,
        domain: String::from_utf8_lossy(spf.domain()).to_ascii_lowercase(),
        explanation: String::from_utf8_lossy(spf.explanation()).into_owned(),
        identity: if from.is_empty() { "helo" } else { "mailfrom" },
    }
}

/// One lookup; `None` when it failed (timeout, SERVFAIL).
async fn lookup(resolver: &Resolver, name: &str, rtype: Rtype) -> Option<AuthRecords> {
    let kind = match rtype {
        Rtype::Txt => AuthType::Txt,
        Rtype::A => AuthType::A,
        Rtype::Aaaa => AuthType::Aaaa,
        Rtype::Mx => AuthType::Mx,
        Rtype::Ptr => AuthType::Ptr,
    };
    resolver.auth_lookup(name, kind).await.ok()
}

fn feed(spf: &mut Spf, a: Option<AuthRecords>) {
    match a {
        None => spf.answer(Answer::Error),
        Some(AuthRecords::Texts(t)) => {
            let refs: Vec<&[u8]> = t.iter().map(Vec::as_slice).collect();
            spf.answer(Answer::Records(&refs));
        }
        Some(AuthRecords::Names(n)) => {
            let refs: Vec<&[u8]> = n.iter().map(|s| s.as_bytes()).collect();
            spf.answer(Answer::Records(&refs));
        }
        Some(AuthRecords::Addresses(a)) => {
            let ips: Vec<[u8; 16]> = a
                .iter()
                .map(|ip| match ip {
                    IpAddr::V4(v) => v.to_ipv6_mapped().octets(),
                    IpAddr::V6(v) => v.octets(),
                })
                .collect();
            spf.answer(Answer::Addresses(&ips));
        }
    }
}
