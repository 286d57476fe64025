//! ARC chain validation (RFC 8617 §5.2): structure, the newest
//! ARC-Message-Signature, then every ARC-Seal from the newest down. The
//! sealers of a passing chain are what `trusted_arc_sealers` matches.

use super::dkim::{key_name_of, usable_key, verify_data, KeyAnswer, Verdict};
use crate::engine::dkim::arc::{self, MessageSignature};
use crate::engine::dkim::{self as edkim, canon};
use ring::digest;
use std::collections::HashMap;

/// The chain's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArcOutcome {
    /// `pass`, `fail` or `none` (no ARC fields).
    pub result: &'static str,
    /// Why it failed, in a few words.
    pub reason: &'static str,
    /// Number of ARC sets.
    pub instances: usize,
    /// `d=` of each ARC-Seal, newest first (only when the chain passed).
    pub sealers: Vec<String>,
}

/// One message's chain being checked.
pub struct ArcCheck {
    block: Vec<u8>,
    sets: usize,
    broken: Option<&'static str>,
    body: Option<(canon::Body, digest::Context)>,
}

fn newest_ams(block: &[u8], n: usize) -> Option<MessageSignature<'_>> {
    let raw = arc::set_field(block, arc::AMS, u8::try_from(n).ok()?)?;
    let colon = raw.iter().position(|&b| b == b':')?;
    arc::parse_ams(&raw[colon + 1..]).ok()
}

fn seal_of(block: &[u8], i: u8) -> Option<arc::Seal<'_>> {
    let raw = arc::set_field(block, arc::SEAL, i)?;
    let colon = raw.iter().position(|&b| b == b':')?;
    arc::parse_seal(&raw[colon + 1..]).ok()
}

impl ArcCheck {
    /// Checks the structure of the chain in header `block`.
    pub fn new(block: &[u8]) -> Self {
        let (sets, broken) = match arc::chain(block) {
            Ok(n) => (n, None),
            Err(arc::ChainError::Syntax) => (0, Some("malformed ARC field")),
            Err(arc::ChainError::Structure) => (0, Some("ARC sets incomplete or repeated")),
            Err(arc::ChainError::Validation) => {
                (0, Some("a sealer recorded cv=fail, or cv= out of place"))
            }
        };
        let body = newest_ams(block, sets).map(|ams| {
            (
                canon::Body::new(ams.body_canon, ams.length),
                digest::Context::new(&digest::SHA256),
            )
        });
        ArcCheck {
            block: block.to_vec(),
            sets,
            broken,
            body,
        }
    }

    /// The key names to look up: the newest AMS's and every seal's.
    pub fn key_names(&self) -> Vec<String> {
        if self.broken.is_some() || self.sets == 0 {
            return Vec::new();
        }
        let mut names: Vec<String> = (1..=self.sets)
            .filter_map(|i| seal_of(&self.block, i as u8))
            .map(|s| key_name_of(s.selector, s.domain))
            .collect();
        if let Some(ams) = newest_ams(&self.block, self.sets) {
            names.push(key_name_of(ams.selector, ams.domain));
        }
        names.sort();
        names.dedup();
        names
    }

    /// The next octets of the body.
    pub fn feed_body(&mut self, chunk: &[u8]) {
        if let Some((b, h)) = self.body.as_mut() {
            b.feed(chunk, &mut |x: &[u8]| h.update(x));
        }
    }

    /// The chain's verdict, given the key lookups' answers by name.
    pub fn finish(self, keys: &HashMap<String, KeyAnswer>) -> ArcOutcome {
        let outcome = |result, reason, sealers| ArcOutcome {
            result,
            reason,
            instances: self.sets,
            sealers,
        };
        if let Some(why) = self.broken {
            return outcome("fail", why, Vec::new());
        }
        if self.sets == 0 {
            return outcome("none", "", Vec::new());
        }
        let block = &self.block[..];
        if let Err(why) = check_ams(block, self.sets, self.body, keys) {
            return outcome("fail", why, Vec::new());
        }
        let mut sealers = Vec::new();
        for i in (1..=self.sets as u8).rev() {
            match check_seal(block, i, keys) {
                Ok(domain) => sealers.push(domain),
                Err(why) => return outcome("fail", why, Vec::new()),
            }
        }
        outcome("pass", "", sealers)
    }
}

/// The newest ARC-Message-Signature: body hash, then signature.
fn check_ams(
    block: &[u8],
    n: usize,
    body: Option<(canon::Body, digest::Context)>,
    keys: &HashMap<String, KeyAnswer>,
) -> Result<(), &'static str> {
    let ams = newest_ams(block, n).ok_or("malformed ARC-Message-Signature")?;
    let (b, mut hash) = body.ok_or("malformed ARC-Message-Signature")?;
    b.finish(&mut |x: &[u8]| hash.update(x));
    let mut want = [0u8; 64];
    match edkim::decode_base64(ams.body_hash, &mut want) {
        Some(32) if want[..32] == *hash.finish().as_ref() => {}
        _ => return Err("ARC-Message-Signature body hash did not verify"),
    }
    let key = usable_key(
        keys.get(&key_name_of(ams.selector, ams.domain)),
        ams.algorithm,
    )
    .map_err(|e| e.1)?;
    let raw = arc::set_field(block, arc::AMS, n as u8).ok_or("malformed ARC-Message-Signature")?;
    let mut data = Vec::with_capacity(1024);
    let c = ams.header_canon;
    edkim::signed_fields(block, ams.headers, |f| {
        canon::header(f, c, false, false, &mut |x: &[u8]| {
            data.extend_from_slice(x)
        })
    });
    canon::header(raw, c, true, true, &mut |x: &[u8]| {
        data.extend_from_slice(x)
    });
    match verify_data(ams.algorithm, &key, &data, ams.signature) {
        (Verdict::Pass, _) => Ok(()),
        _ => Err("ARC-Message-Signature did not verify"),
    }
}

/// ARC-Seal `i`: its signature over sets 1..=i; the sealer's domain.
fn check_seal(
    block: &[u8],
    i: u8,
    keys: &HashMap<String, KeyAnswer>,
) -> Result<String, &'static str> {
    let seal = seal_of(block, i).ok_or("malformed ARC-Seal")?;
    let key = usable_key(
        keys.get(&key_name_of(seal.selector, seal.domain)),
        seal.algorithm,
    )
    .map_err(|e| e.1)?;
    let mut data = Vec::with_capacity(2048);
    arc::seal_input(block, i, &mut |x: &[u8]| data.extend_from_slice(x))
        .ok_or("ARC set missing")?;
    match verify_data(seal.algorithm, &key, &data, seal.signature) {
        (Verdict::Pass, _) => Ok(String::from_utf8_lossy(seal.domain).to_ascii_lowercase()),
        _ => Err("ARC-Seal did not verify"),
    }
}

#[cfg(test)]
mod tests;
