//! Sender authentication on the way in (issue 11): SPF, DKIM and DMARC
//! verdicts of a message, and the `Authentication-Results` field (RFC 8601)
//! that carries them. The parsers and state machines are the engine's
//! ([`crate::engine::spf`], [`crate::engine::dkim`],
//! [`crate::engine::dmarc`]); this shell drives them with the resolver and
//! `ring`.

pub mod arc;
pub mod dkim;
pub mod dmarc;
pub mod sign;
pub mod spf;

use crate::shell::relay::dns::{AuthRecords, AuthType, Resolver};
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

/// The checks of one message.
#[derive(Debug, Clone)]
pub struct Report {
    /// SPF.
    pub spf: spf::SpfOutcome,
    /// DKIM, one per signature.
    pub dkim: Vec<dkim::Outcome>,
    /// DMARC.
    pub dmarc: dmarc::DmarcOutcome,
    /// ARC.
    pub arc: arc::ArcOutcome,
}

/// Where a message came from, as the session saw it.
#[derive(Debug, Clone)]
pub struct Envelope<'a> {
    /// The client address.
    pub ip: IpAddr,
    /// The HELO/EHLO name.
    pub helo: &'a str,
    /// MAIL FROM, empty for `<>`.
    pub mail_from: &'a str,
}

/// The message-side checks of one message (DKIM signatures and the ARC
/// chain), fed the message's octets in order as it arrives: it keeps the
/// header block until the body's offset is known, then hashes the body.
#[derive(Default)]
pub struct MessageTap {
    held: Vec<u8>,
    body_at: Option<usize>,
    started: Option<(dkim::Verifier, arc::ArcCheck, Vec<u8>)>,
}

impl MessageTap {
    /// The next octets of the message.
    pub fn feed(&mut self, bytes: &[u8]) {
        match self.started.as_mut() {
            Some((v, a, _)) => {
                v.feed_body(bytes);
                a.feed_body(bytes);
            }
            None => self.held.extend_from_slice(bytes),
        }
    }

    /// The body starts at offset `at`.
    pub fn body_at(&mut self, at: u64) {
        if self.started.is_some() {
            return;
        }
        let at = (at as usize).min(self.held.len());
        self.body_at = Some(at);
        let block = self.held[..at].to_vec();
        let rest = self.held.split_off(at);
        self.held = Vec::new();
        let (v, a) = (dkim::Verifier::new(&block), arc::ArcCheck::new(&block));
        self.started = Some((v, a, block));
        self.feed(&rest);
    }

    /// A tap over a whole message held in memory.
    pub fn over(msg: &[u8]) -> Self {
        let mut t = MessageTap::default();
        t.feed(msg);
        let at = crate::engine::header::end_of_headers(msg, true).unwrap_or(msg.len());
        t.body_at(at as u64);
        t
    }

    /// The header block, once known.
    pub fn header_block(&self) -> &[u8] {
        self.started.as_ref().map_or(&self.held[..], |s| &s.2[..])
    }
}

/// Runs SPF, DKIM and DMARC on `msg` (the whole stored message). Each DNS
/// wait is bounded by the resolver's timeout, SPF by `deadline` overall.
pub async fn check_message(
    resolver: &Resolver,
    host: &str,
    env: &Envelope<'_>,
    msg: &[u8],
    deadline: Duration,
) -> Report {
    finish(resolver, host, env, MessageTap::over(msg), deadline).await
}

/// The checks of a message whose octets `tap` saw.
pub async fn finish(
    resolver: &Resolver,
    host: &str,
    env: &Envelope<'_>,
    mut tap: MessageTap,
    deadline: Duration,
) -> Report {
    if tap.started.is_none() {
        // The header block never ended: it is the whole message.
        let n = tap.held.len() as u64;
        tap.body_at(n);
    }
    let block = tap.header_block().to_vec();
    let started = tap.started.take();
    // SPF and the signatures' key lookups ask DNS at the same time; DMARC
    // needs both results, so it comes after.
    let signatures = async {
        match started {
            Some((v, a, _)) => check_signatures(resolver, v, a).await,
            None => (Vec::new(), arc::ArcCheck::new(b"").finish(&HashMap::new())),
        }
    };
    let spf = spf::check(resolver, env.ip, env.mail_from, env.helo, host, deadline);
    let (spf, (dkim, arc)) = futures_lite::future::zip(spf, signatures).await;
    let passes = dmarc::Passes {
        spf: (spf.result == crate::engine::spf::SpfResult::Pass).then(|| spf.domain.clone()),
        dkim: dkim
            .iter()
            .filter(|d| d.verdict == dkim::Verdict::Pass)
            .map(|d| d.domain.clone())
            .collect(),
    };
    let dmarc = match from_domain(&block) {
        Some(from) => dmarc::evaluate(resolver, &from, &passes, sample(&block)).await,
        None => dmarc::DmarcOutcome {
            result: "none",
            domain: String::new(),
            policy: None,
            disposition: crate::engine::dmarc::Policy::None,
        },
    };
    Report {
        spf,
        dkim,
        dmarc,
        arc,
    }
}

/// Finishes the DKIM signatures and the ARC chain: one lookup per key name.
async fn check_signatures(
    resolver: &Resolver,
    v: dkim::Verifier,
    a: arc::ArcCheck,
) -> (Vec<dkim::Outcome>, arc::ArcOutcome) {
    let mut names = v.key_names();
    names.extend(a.key_names());
    names.sort();
    names.dedup();
    let lookups = names.iter().map(|name| async move {
        match resolver.auth_lookup(name, AuthType::Txt).await {
            Ok(AuthRecords::Texts(t)) => dkim::KeyAnswer::Records(t),
            Ok(_) => dkim::KeyAnswer::Records(Vec::new()),
            Err(_) => dkim::KeyAnswer::Failed,
        }
    });
    let answers = crate::shell::join_all(lookups.collect()).await;
    let keys: HashMap<String, dkim::KeyAnswer> = names.into_iter().zip(answers).collect();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let arc = a.finish(&keys);
    let dkim = if v.is_empty() {
        Vec::new()
    } else {
        v.finish(&keys, now)
    };
    (dkim, arc)
}

/// The domain of the single RFC5322.From address, lower case; `None` when
/// there is no From or it holds several addresses (DMARC cannot apply,
/// RFC 7489 §6.6.1).
pub fn from_domain(msg: &[u8]) -> Option<String> {
    let m = mail_parser::MessageParser::default().parse_headers(msg)?;
    let list = m.from()?.clone().into_list();
    let [one] = list.as_slice() else {
        return None;
    };
    let addr = one.address()?;
    let at = addr.rfind('@')?;
    let d = addr[at + 1..].trim_end_matches('.').to_ascii_lowercase();
    (!d.is_empty()).then_some(d)
}

/// A number in 0..100 for `pct=`, from the message's bytes and the clock.
fn sample(msg: &[u8]) -> u8 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let h = msg
        .iter()
        .take(4096)
        .fold(u64::from(t), |a, &b| a.rotate_left(5) ^ u64::from(b));
    (h % 100) as u8
}

/// The `Authentication-Results` field (RFC 8601) for `report`, as a whole
/// header line with its CRLF, folded one method per line.
pub fn results_field(host: &str, r: &Report) -> String {
    let mut parts = vec![host.to_string()];
    let spf = &r.spf;
    let mut s = format!(
        "spf={} smtp.{}={}",
        spf.result.name(),
        spf.identity,
        spf.domain
    );
    if !spf.explanation.is_empty() {
        s = format!(
            "spf={} ({}) smtp.{}={}",
            spf.result.name(),
            clean(&spf.explanation),
            spf.identity,
            spf.domain
        );
    }
    parts.push(s);
    if r.dkim.is_empty() {
        parts.push("dkim=none".into());
    }
    for d in &r.dkim {
        let mut s = format!("dkim={}", d.verdict.name());
        if !d.reason.is_empty() {
            s.push_str(&format!(" ({})", d.reason));
        }
        if !d.domain.is_empty() {
            s.push_str(&format!(" header.d={} header.s={}", d.domain, d.selector));
        }
        if let Some(a) = d.algorithm {
            s.push_str(&format!(" header.a={}", a.name()));
        }
        parts.push(s);
    }
    let dm = &r.dmarc;
    let mut s = format!("dmarc={}", dm.result);
    if let Some(p) = dm.policy {
        s.push_str(&format!(" (p={} dis={})", p.name(), dm.disposition.name()));
    }
    if !dm.domain.is_empty() {
        s.push_str(&format!(" header.from={}", dm.domain));
    }
    parts.push(s);
    let a = &r.arc;
    parts.push(match (a.result, a.reason) {
        ("none", _) => "arc=none".to_string(),
        (res, "") => format!("arc={res} (i={})", a.instances),
        (res, why) => format!("arc={res} ({why})"),
    });
    format!("Authentication-Results: {}\r\n", parts.join(";\r\n\t"))
}

/// Text for a comment: printable ASCII, no parentheses.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '(' && c != ')' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// `report` as the JSON of `sluice auth verify --json`.
pub fn report_json(r: &Report) -> serde_json::Value {
    serde_json::json!({
        "spf": {
            "result": r.spf.result.name(),
            "domain": r.spf.domain,
            "identity": r.spf.identity,
            "explanation": r.spf.explanation,
        },
        "dkim": r.dkim.iter().map(|d| serde_json::json!({
            "result": d.verdict.name(),
            "domain": d.domain,
            "selector": d.selector,
            "algorithm": d.algorithm.map(|a| a.name()),
            "reason": d.reason,
        })).collect::<Vec<_>>(),
        "dmarc": {
            "result": r.dmarc.result,
            "domain": r.dmarc.domain,
            "policy": r.dmarc.policy.map(|p| p.name()),
            "disposition": r.dmarc.disposition.name(),
        },
        "arc": {
            "result": r.arc.result,
            "reason": r.arc.reason,
            "instances": r.arc.instances,
            "sealers": r.arc.sealers,
        },
    })
}

/// What a message's checks mean for it: the verdicts the rules see, and
/// what DMARC asks for once trusted ARC sealers are taken into account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// The verdicts (rule conditions `spf`, `dkim`, `dmarc`, `arc`).
    pub verdicts: crate::engine::policy::AuthVerdicts,
    /// DMARC `p=reject` failed and `honor_reject` holds: `550 5.7.1`.
    pub reject: bool,
    /// A passing ARC chain from a trusted sealer excused a DMARC failure.
    pub excused: bool,
}

/// Decides on `r` under `[authentication]`: `trusted` sealers (lower
/// case) and `honor_reject`. A reject that is not honoured quarantines.
pub fn decide(r: &Report, trusted: &[String], honor_reject: bool) -> Decision {
    use crate::engine::dmarc::Policy;
    use crate::engine::policy::{AuthResult, AuthVerdicts};
    let by_name = |n: &str| {
        AuthResult::ALL
            .iter()
            .find(|x| x.1 == n)
            .map_or(AuthResult::None, |x| x.0)
    };
    let dkim = [
        dkim::Verdict::Pass,
        dkim::Verdict::Fail,
        dkim::Verdict::PermError,
        dkim::Verdict::TempError,
        dkim::Verdict::Neutral,
    ]
    .into_iter()
    .find(|v| r.dkim.iter().any(|d| d.verdict == *v))
    .map_or(AuthResult::None, |v| by_name(v.name()));
    let excused = r.dmarc.result == "fail"
        && r.arc.result == "pass"
        && r.arc.sealers.iter().any(|s| trusted.contains(s));
    let failed = r.dmarc.result == "fail" && !excused;
    let reject = failed && honor_reject && r.dmarc.disposition == Policy::Reject;
    let quarantine = failed
        && (r.dmarc.disposition == Policy::Quarantine
            || (r.dmarc.disposition == Policy::Reject && !honor_reject));
    Decision {
        verdicts: AuthVerdicts {
            spf: by_name(r.spf.result.name()),
            dkim,
            dmarc: by_name(r.dmarc.result),
            arc: by_name(r.arc.result),
            quarantine,
        },
        reject,
        excused,
    }
}
