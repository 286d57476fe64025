//! DKIM verification (RFC 6376, RFC 8463, RFC 8301) over a stored message:
//! the engine parses and canonicalizes, `ring` hashes and checks.
//!
//! The body is streamed once for every signature ([`Verifier::feed_body`]);
//! the keys are fetched by the caller ([`Verifier::key_names`]) so that the
//! DNS lookups stay in the async resolver.

use crate::engine::dkim::signature::{Algorithm, Signature};
use crate::engine::dkim::{self, canon, key, signature};
use crate::engine::header;
use ring::digest;
use std::collections::HashMap;

/// Signatures checked per message; later ones are reported `none` ("not
/// checked"). A message signed by its author, a mailing list and a
/// forwarder carries three; eight bounds the work a message can demand.
pub const MAX_SIGNATURES: usize = 8;

/// A result of RFC 8601 §2.7.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The signature verified.
    Pass,
    /// It did not (or its algorithm is refused, or it expired).
    Fail,
    /// The key or signature is unusable.
    PermError,
    /// The key could not be fetched for now.
    TempError,
    /// Not checked (over [`MAX_SIGNATURES`]).
    Neutral,
}

impl Verdict {
    /// Its name in `Authentication-Results`.
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
            Verdict::PermError => "permerror",
            Verdict::TempError => "temperror",
            Verdict::Neutral => "neutral",
        }
    }
}

/// One signature's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The verdict.
    pub verdict: Verdict,
    /// Why, in a few words (for the `reason=` and the trace).
    pub reason: &'static str,
    /// `d=` (empty when the field did not parse).
    pub domain: String,
    /// `s=`.
    pub selector: String,
    /// `a=`, when known.
    pub algorithm: Option<Algorithm>,
    /// `i=`, or `@d` by default (RFC 6376 §3.5).
    pub identity: String,
}

/// What the key lookup of one signature found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyAnswer {
    /// The TXT records at the key's name (strings of each joined).
    Records(Vec<Vec<u8>>),
    /// The lookup failed (timeout, SERVFAIL).
    Failed,
}

/// One DKIM-Signature field being checked.
struct Check {
    /// The raw field, as it is in the header block.
    field: Vec<u8>,
    body: canon::Body,
    hash: digest::Context,
}

/// The checks of one message.
pub struct Verifier {
    block: Vec<u8>,
    checks: Vec<Result<Check, (Verdict, &'static str)>>,
}

impl Verifier {
    /// Finds the DKIM-Signature fields of header `block` (the header block
    /// with its final blank line).
    pub fn new(block: &[u8]) -> Self {
        let mut checks = Vec::new();
        let count = header::find_all(block, b"DKIM-Signature").count();
        for nth in 0..count {
            let Some(raw) = dkim::raw_field(block, b"DKIM-Signature", nth) else {
                continue;
            };
            if nth >= MAX_SIGNATURES {
                checks.push(Err((Verdict::Neutral, "not checked: too many signatures")));
                continue;
            }
            checks.push(start(raw));
        }
        Verifier {
            block: block.to_vec(),
            checks,
        }
    }

    /// Whether the message carries no DKIM-Signature field.
    pub fn is_empty(&self) -> bool {
        self.checks.is_empty()
    }

    /// The key names to look up (`<s>._domainkey.<d>`), one per signature
    /// that got this far.
    pub fn key_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .checks
            .iter()
            .filter_map(|c| c.as_ref().ok())
            .filter_map(|c| parsed(&c.field).ok())
            .map(|s| key_name(&s))
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// The next octets of the body.
    pub fn feed_body(&mut self, chunk: &[u8]) {
        for c in self.checks.iter_mut().flatten() {
            let hash = &mut c.hash;
            c.body.feed(chunk, &mut |b: &[u8]| hash.update(b));
        }
    }

    /// Each signature's outcome, given the key lookups' answers by name.
    pub fn finish(self, keys: &HashMap<String, KeyAnswer>, now: u64) -> Vec<Outcome> {
        let block = self.block;
        let block = &block[..];
        self.checks
            .into_iter()
            .map(|c| match c {
                Ok(check) => conclude(block, check, keys, now),
                Err((verdict, reason)) => Outcome {
                    verdict,
                    reason,
                    domain: String::new(),
                    selector: String::new(),
                    algorithm: None,
                    identity: String::new(),
                },
            })
            .collect()
    }
}

fn parsed(field: &[u8]) -> Result<Signature<'_>, signature::SigError> {
    let colon = field.iter().position(|&b| b == b':').unwrap_or(field.len());
    let value = field.get(colon + 1..).unwrap_or(&[]);
    let value = value.strip_suffix(b"\r\n").unwrap_or(value);
    signature::parse(value)
}

fn key_name(s: &Signature<'_>) -> String {
    key_name_of(s.selector, s.domain)
}

/// `<selector>._domainkey.<domain>`, lower case.
pub(super) fn key_name_of(selector: &[u8], domain: &[u8]) -> String {
    format!(
        "{}._domainkey.{}",
        String::from_utf8_lossy(selector),
        String::from_utf8_lossy(domain)
    )
    .to_ascii_lowercase()
}

/// Starts the body hash of one field, or says why it cannot be checked.
fn start(raw: &[u8]) -> Result<Check, (Verdict, &'static str)> {
    let sig = parsed(raw).map_err(|_| (Verdict::PermError, "malformed signature"))?;
    let body = canon::Body::new(sig.body_canon, sig.length);
    Ok(Check {
        field: raw.to_vec(),
        body,
        hash: digest::Context::new(&digest::SHA256),
    })
}

/// The outcome of one signature once its body is hashed.
fn conclude(block: &[u8], check: Check, keys: &HashMap<String, KeyAnswer>, now: u64) -> Outcome {
    let Check {
        field,
        body,
        mut hash,
    } = check;
    let sig = match parsed(&field) {
        Ok(s) => s,
        Err(_) => return outcome_without(Verdict::PermError, "malformed signature"),
    };
    body.finish(&mut |b: &[u8]| hash.update(b));
    let body_hash = hash.finish();
    let (verdict, reason) = judge(block, &field, &sig, body_hash.as_ref(), keys, now);
    let identity = match sig.identity {
        Some(i) => String::from_utf8_lossy(i).into_owned(),
        None => format!("@{}", String::from_utf8_lossy(sig.domain)),
    };
    Outcome {
        verdict,
        reason,
        domain: String::from_utf8_lossy(sig.domain).to_ascii_lowercase(),
        selector: String::from_utf8_lossy(sig.selector).into_owned(),
        algorithm: Some(sig.algorithm),
        identity,
    }
}

fn outcome_without(verdict: Verdict, reason: &'static str) -> Outcome {
    Outcome {
        verdict,
        reason,
        domain: String::new(),
        selector: String::new(),
        algorithm: None,
        identity: String::new(),
    }
}

/// The checks of RFC 6376 §6.1 in order: algorithm, expiry, key, body
/// hash, signature.
fn judge(
    block: &[u8],
    field: &[u8],
    sig: &Signature<'_>,
    body_hash: &[u8],
    keys: &HashMap<String, KeyAnswer>,
    now: u64,
) -> (Verdict, &'static str) {
    if sig.algorithm == Algorithm::RsaSha1 {
        return (Verdict::Fail, "rsa-sha1 is not accepted (RFC 8301)");
    }
    if sig.expired(now) {
        return (Verdict::Fail, "signature expired");
    }
    let key = match usable_key(keys.get(&key_name(sig)), sig.algorithm) {
        Ok(k) => k,
        Err(e) => return e,
    };
    if key.strict && !identity_is_domain(sig) {
        return (Verdict::PermError, "i= is a subdomain and the key says t=s");
    }
    let mut want = [0u8; 64];
    match dkim::decode_base64(sig.body_hash, &mut want) {
        Some(32) if want[..32] == *body_hash => {}
        Some(_) => return (Verdict::Fail, "body hash did not verify"),
        None => return (Verdict::PermError, "malformed bh="),
    }
    check_signature(block, field, sig, &key)
}

/// The key record of a lookup, checked for use with `alg`.
pub(super) fn usable_key(
    answer: Option<&KeyAnswer>,
    alg: Algorithm,
) -> Result<key::Key<'_>, (Verdict, &'static str)> {
    let records = match answer {
        Some(KeyAnswer::Records(r)) => r,
        Some(KeyAnswer::Failed) | None => return Err((Verdict::TempError, "key lookup failed")),
    };
    let [txt] = records.as_slice() else {
        return Err((Verdict::PermError, "no single key record"));
    };
    let key = match key::parse(txt) {
        Ok(k) => k,
        Err(key::KeyError::Revoked) => return Err((Verdict::PermError, "key revoked")),
        Err(_) => return Err((Verdict::PermError, "malformed key record")),
    };
    if !key.allows(alg) {
        return Err((Verdict::PermError, "key does not allow the algorithm"));
    }
    Ok(key)
}

fn identity_is_domain(sig: &Signature<'_>) -> bool {
    match sig.identity {
        None => true,
        Some(i) => {
            let at = i.iter().rposition(|&b| b == b'@').map_or(0, |a| a + 1);
            i[at..].eq_ignore_ascii_case(sig.domain)
        }
    }
}

/// The header hash and the signature (§3.7): the fields of `h=`, then this
/// field without its `b=` value and final CRLF.
fn check_signature(
    block: &[u8],
    field: &[u8],
    sig: &Signature<'_>,
    key: &key::Key<'_>,
) -> (Verdict, &'static str) {
    let mut data = Vec::with_capacity(1024);
    let c = sig.header_canon;
    dkim::signed_fields(block, sig.headers, |f| {
        canon::header(f, c, false, false, &mut |b: &[u8]| {
            data.extend_from_slice(b)
        })
    });
    canon::header(field, c, true, true, &mut |b: &[u8]| {
        data.extend_from_slice(b)
    });
    verify_data(sig.algorithm, key, &data, sig.signature)
}

/// Checks signature `b` (base64, as in `b=`) of `data` (the canonical
/// header octets) with `key`.
pub(super) fn verify_data(
    alg: Algorithm,
    key: &key::Key<'_>,
    data: &[u8],
    b: &[u8],
) -> (Verdict, &'static str) {
    let mut public = vec![0u8; crate::engine::limits::MAX_DKIM_BASE64];
    let Some(n) = dkim::decode_base64(key.public, &mut public) else {
        return (Verdict::PermError, "malformed key");
    };
    public.truncate(n);
    let mut signed = vec![0u8; crate::engine::limits::MAX_DKIM_BASE64];
    let Some(n) = dkim::decode_base64(b, &mut signed) else {
        return (Verdict::PermError, "malformed b=");
    };
    signed.truncate(n);
    let ok = match alg {
        Algorithm::Ed25519Sha256 => {
            // RFC 8463 §3: Ed25519 signs the SHA-256 of the header data.
            let digest = digest::digest(&digest::SHA256, data);
            ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &public)
                .verify(digest.as_ref(), &signed)
                .is_ok()
        }
        Algorithm::RsaSha256 | Algorithm::RsaSha1 => {
            let Some(pkcs1) = rsa_public_key(&public) else {
                return (Verdict::PermError, "malformed RSA key");
            };
            if rsa_bits(pkcs1) < 1024 {
                return (
                    Verdict::PermError,
                    "RSA key shorter than 1024 bits (RFC 8301)",
                );
            }
            ring::signature::UnparsedPublicKey::new(
                &ring::signature::RSA_PKCS1_1024_8192_SHA256_FOR_LEGACY_USE_ONLY,
                pkcs1,
            )
            .verify(data, &signed)
            .is_ok()
        }
    };
    if ok {
        (Verdict::Pass, "")
    } else {
        (Verdict::Fail, "signature did not verify")
    }
}

/// One DER element: tag, content, and what follows it.
fn der(buf: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = buf.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 3 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |a, &b| (a << 8) | usize::from(b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The PKCS#1 RSAPublicKey of a key published as SubjectPublicKeyInfo (as
/// RFC 6376 says), or as a bare RSAPublicKey (as some publish it).
fn rsa_public_key(spki: &[u8]) -> Option<&[u8]> {
    let (tag, inner, _) = der(spki)?;
    if tag != 0x30 {
        return None;
    }
    let (first, _, after) = der(inner)?;
    if first == 0x02 {
        return Some(spki); // RSAPublicKey: SEQUENCE { INTEGER n, INTEGER e }
    }
    let (bits_tag, bits, _) = der(after)?;
    match (bits_tag, bits.split_first()) {
        (0x03, Some((0, key))) => Some(key),
        _ => None,
    }
}

/// The modulus length in bits of a PKCS#1 RSAPublicKey.
fn rsa_bits(pkcs1: &[u8]) -> usize {
    let Some((_, seq, _)) = der(pkcs1) else {
        return 0;
    };
    let Some((_, n, _)) = der(seq) else {
        return 0;
    };
    let n = match n.iter().position(|&b| b != 0) {
        Some(i) => &n[i..],
        None => return 0,
    };
    n.len() * 8 - n.first().map_or(8, |b| b.leading_zeros() as usize)
}

#[cfg(test)]
mod tests;
