//! DMARC evaluation (RFC 7489 §6.6) of one message: the From domain's
//! policy and organizational domain by the engine's tree walk
//! ([`crate::engine::dmarc::Walk`]), then alignment of the SPF and DKIM
//! passes with it.

use crate::engine::dmarc::{self, Mode, Policy, Walk};
use crate::shell::relay::dns::{AuthRecords, AuthType, Resolver};
use std::collections::HashMap;

/// The DMARC verdict of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmarcOutcome {
    /// `pass`, `fail`, `none` (no policy, or no usable From), `temperror`.
    pub result: &'static str,
    /// The RFC5322.From domain.
    pub domain: String,
    /// The published policy that applies (`p=`, or `sp=` for a
    /// subdomain), when a record was found.
    pub policy: Option<Policy>,
    /// What to do after `pct=`: the policy, or one step softer for mail
    /// outside the sampled share; `none` when the message passed.
    pub disposition: Policy,
}

/// What the other checks proved: the SPF-authenticated domain (a `pass`
/// only) and the DKIM `d=` of each passing signature.
#[derive(Debug, Clone, Default)]
pub struct Passes {
    /// SPF `pass` for this MAIL FROM (or HELO) domain.
    pub spf: Option<String>,
    /// `d=` of every signature that verified.
    pub dkim: Vec<String>,
}

/// Walks the DNS for `name`'s policy and organizational domain.
async fn walk(resolver: &Resolver, name: &str) -> dmarc::Found {
    let mut w = Walk::new(name.as_bytes());
    while let Some(q) = w.need() {
        let q = String::from_utf8_lossy(q).into_owned();
        match resolver.auth_lookup(&q, AuthType::Txt).await {
            Ok(AuthRecords::Texts(t)) => {
                let refs: Vec<&[u8]> = t.iter().map(Vec::as_slice).collect();
                w.answer(&refs, false);
            }
            Ok(_) => w.answer(&[], false),
            Err(_) => w.answer(&[], true),
        }
    }
    w.result()
}

/// Evaluates DMARC for From domain `from` (lower case) given `passes`;
/// `sample` is a number in 0..100 drawn for `pct=`.
pub async fn evaluate(
    resolver: &Resolver,
    from: &str,
    passes: &Passes,
    sample: u8,
) -> DmarcOutcome {
    let mut orgs: HashMap<String, String> = HashMap::new();
    let found = walk(resolver, from).await;
    let org_from = String::from_utf8_lossy(&found.organizational).to_ascii_lowercase();
    let Some((rec, at)) = found.record else {
        let result = if found.temperror { "temperror" } else { "none" };
        return DmarcOutcome {
            result,
            domain: from.to_string(),
            policy: None,
            disposition: Policy::None,
        };
    };
    let at = String::from_utf8_lossy(&at).to_ascii_lowercase();
    let policy = if at == from {
        rec.policy
    } else {
        rec.subdomain_policy
    };
    let mut aligned = false;
    let candidates = passes
        .spf
        .iter()
        .map(|d| (d, rec.spf_mode))
        .chain(passes.dkim.iter().map(|d| (d, rec.dkim_mode)));
    for (auth, mode) in candidates {
        let org_auth = if mode == Mode::Strict || auth == from {
            auth.clone()
        } else if let Some(o) = orgs.get(auth) {
            o.clone()
        } else {
            let o = String::from_utf8_lossy(&walk(resolver, auth).await.organizational)
                .to_ascii_lowercase();
            orgs.insert(auth.clone(), o.clone());
            o
        };
        if dmarc::aligned(
            from.as_bytes(),
            auth.as_bytes(),
            org_from.as_bytes(),
            org_auth.as_bytes(),
            mode,
        ) {
            aligned = true;
            break;
        }
    }
    let disposition = if aligned {
        Policy::None
    } else if sample < rec.pct {
        policy
    } else {
        softer(policy)
    };
    DmarcOutcome {
        result: if aligned { "pass" } else { "fail" },
        domain: from.to_string(),
        policy: Some(policy),
        disposition,
    }
}

/// The policy one step softer (RFC 7489 §6.6.4: mail outside `pct=`).
fn softer(p: Policy) -> Policy {
    match p {
        Policy::Reject => Policy::Quarantine,
        Policy::Quarantine | Policy::None => Policy::None,
    }
}
