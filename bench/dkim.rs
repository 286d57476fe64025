//! Benchmark: DKIM verification and signing throughput, messages per
//! second on one core (issue 11).
//!
//! The message is 4 KiB (a 6-field header block, text body). Verification
//! checks two signatures, `rsa-sha256` (2048 bits) and `ed25519-sha256`,
//! with the key records already at hand, as when the resolver's cache
//! holds them: what is measured is the header canonicalisation, the body
//! hash and the two signature checks. Signing is the body hash (the
//! session's `BodyTap`) plus one signature per key: RSA alone, Ed25519
//! alone, and both (the two-signature setup).
//!
//! Run with `cargo bench --bench dkim`.

use base64::Engine as _;
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use sluice::engine::header::end_of_headers;
use sluice::shell::sender_auth::dkim::{KeyAnswer, Verdict, Verifier};
use sluice::shell::sender_auth::sign::{BodyTap, KeyFile, Signer};
use std::collections::HashMap;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The 2048-bit RSA test key and its published record (test data).
const RSA_PEM: &str = include_str!("../tests/dkim/rsa-test-only.key");
const FIXTURES: &str = include_str!("../tests/dkim/dkimpy-signed.json");
const DOMAIN: &str = "football.example.com";
/// Signing time given to the signer and the verifier.
const NOW: u64 = 1_800_000_000;
/// Messages per measurement.
const N: u32 = 2_000;

/// A 4,096-octet message from `DOMAIN`.
fn message() -> Vec<u8> {
    let mut m = format!(
        "From: Joe <joe@{DOMAIN}>\r\nTo: Jaap <jaap@contoso.com>\r\nSubject: quarterly figures\r\n\
         Date: Sat, 5 Dec 2026 10:00:00 +0000\r\nMessage-ID: <bench@{DOMAIN}>\r\n\
         MIME-Version: 1.0\r\n\r\n"
    )
    .into_bytes();
    let line = b"The figures for the quarter are attached below, as agreed.   \r\n";
    while m.len() + line.len() <= 4096 {
        m.extend_from_slice(line);
    }
    m.resize(4094, b'.');
    m.extend_from_slice(b"\r\n");
    m
}

/// A freshly made Ed25519 key as PEM, and its public key octets.
fn ed25519_pem() -> (String, Vec<u8>) {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("generate");
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("pair");
    let b64 = base64::engine::general_purpose::STANDARD.encode(pkcs8.as_ref());
    let pem = format!("-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n");
    (pem, pair.public_key().as_ref().to_vec())
}

/// A `[[dkim]]` entry whose key is written to `dir/name`.
fn key_file(dir: &Path, selector: &str, name: &str, pem: &str) -> KeyFile {
    let path: PathBuf = dir.join(name);
    std::fs::write(&path, pem).expect("write key");
    KeyFile {
        domain: DOMAIN.into(),
        selector: selector.into(),
        key: path,
    }
}

/// The DKIM-Signature fields `signer` makes for `msg`, body hash included.
fn sign(signer: &Signer, msg: &[u8]) -> Vec<String> {
    let at = end_of_headers(msg, true).expect("header block");
    let mut tap = BodyTap::default();
    tap.feed(msg);
    tap.body_at(at as u64);
    signer.sign(DOMAIN, &msg[..at], &tap.finish(), NOW)
}

/// The outcomes of verifying `signed` with `keys`.
fn verify(signed: &[u8], keys: &HashMap<String, KeyAnswer>) -> Vec<Verdict> {
    let at = end_of_headers(signed, true).expect("header block");
    let mut v = Verifier::new(&signed[..at]);
    v.feed_body(&signed[at..]);
    v.finish(keys, NOW + 1).iter().map(|o| o.verdict).collect()
}

/// Messages per second of `f` over `N` calls.
fn rate(mut f: impl FnMut()) -> f64 {
    f(); // warm up
    let start = Instant::now();
    for _ in 0..N {
        f();
    }
    f64::from(N) / start.elapsed().as_secs_f64()
}

fn main() {
    let dir = std::env::temp_dir().join(format!("sluice-bench-dkim-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let (ed_pem, ed_pub) = ed25519_pem();
    let rsa = key_file(&dir, "rsa", "rsa.pem", RSA_PEM);
    let ed = key_file(&dir, "ed", "ed.pem", &ed_pem);
    let load = |f: &[KeyFile]| Signer::load(f).expect("keys load");
    let (both, rsa_only, ed_only) = (load(&[rsa.clone(), ed.clone()]), load(&[rsa]), load(&[ed]));
    let msg = message();
    let signed = [sign(&both, &msg).concat().as_bytes(), &msg].concat();
    let fixtures: serde_json::Value = serde_json::from_str(FIXTURES).expect("fixtures");
    let rsa_record = fixtures["keys"][format!("rsa._domainkey.{DOMAIN}")]
        .as_str()
        .expect("rsa record")
        .to_string();
    let ed_record = format!(
        "v=DKIM1; k=ed25519; p={}",
        base64::engine::general_purpose::STANDARD.encode(ed_pub)
    );
    let keys: HashMap<String, KeyAnswer> = [
        (format!("rsa._domainkey.{DOMAIN}"), rsa_record),
        (format!("ed._domainkey.{DOMAIN}"), ed_record),
    ]
    .into_iter()
    .map(|(k, v)| (k, KeyAnswer::Records(vec![v.into_bytes()])))
    .collect();
    let verdicts = verify(&signed, &keys);
    assert_eq!(
        verdicts,
        [Verdict::Pass, Verdict::Pass],
        "the bench's signatures verify"
    );
    println!(
        "message: {} octets, signed: {} octets",
        msg.len(),
        signed.len()
    );
    let v = rate(|| {
        black_box(verify(black_box(&signed), &keys));
    });
    println!(
        "verify rsa-2048 + ed25519, keys cached: {v:>9.0} msg/s ({:.1} µs)",
        1e6 / v
    );
    for (name, s) in [
        ("rsa-2048", &rsa_only),
        ("ed25519", &ed_only),
        ("rsa-2048 + ed25519", &both),
    ] {
        let r = rate(|| {
            black_box(sign(s, black_box(&msg)));
        });
        println!(
            "sign {name:<19}                {r:>9.0} msg/s ({:.1} µs)",
            1e6 / r
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
