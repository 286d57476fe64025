//! Signatures made here verify in the verifier (the black-box test checks
//! them with dkimpy at a sink).

use super::*;
use crate::shell::sender_auth::dkim::{KeyAnswer, Verdict, Verifier};
use std::collections::HashMap;

const RSA_PEM: &str = include_str!("../../../../tests/dkim/rsa-test-only.key");
const FIXTURES: &str = include_str!("../../../../tests/dkim/dkimpy-signed.json");
const MSG: &[u8] = b"From: Joe <joe@football.example.com>\r\nTo: x@example.net\r\nSubject: hi\r\n\
Date: Sat, 5 Dec 2026 10:00:00 +0000\r\nMessage-ID: <1@football.example.com>\r\n\r\nHello,  world \r\n\r\n\r\n";

fn write(dir: &std::path::Path, name: &str, text: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write key");
    p
}

fn ed25519_pem() -> (Vec<u8>, Vec<u8>) {
    let rng = rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("generate");
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("pair");
    let b64 = base64::engine::general_purpose::STANDARD.encode(pkcs8.as_ref());
    let pem = format!("-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n");
    (
        pem.into_bytes(),
        ring::signature::KeyPair::public_key(&pair)
            .as_ref()
            .to_vec(),
    )
}

fn tmp() -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "sluice-sign-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&d).expect("tmp");
    d
}

fn body_hash(msg: &[u8], split: usize) -> Vec<u8> {
    let at = crate::engine::header::end_of_headers(msg, true).expect("eoh");
    let mut tap = BodyTap::default();
    for (i, chunk) in msg.chunks(split).enumerate() {
        tap.feed(chunk);
        if (i + 1) * split >= at && i % 2 == 1 {
            tap.body_at(at as u64); // told a little late, as the receiver does
        }
    }
    tap.body_at(at as u64);
    tap.finish()
}

#[test]
fn the_tap_hashes_the_same_whatever_the_split() {
    let one = body_hash(MSG, MSG.len());
    for split in [1, 3, 17, 64] {
        assert_eq!(body_hash(MSG, split), one, "split {split}");
    }
}

#[test]
fn rsa_and_ed25519_signatures_verify() {
    let dir = tmp();
    let (ed_pem, ed_pub) = ed25519_pem();
    let files = [
        KeyFile {
            domain: "football.example.com".into(),
            selector: "rsa".into(),
            key: write(&dir, "rsa.pem", RSA_PEM.as_bytes()),
        },
        KeyFile {
            domain: "football.example.com".into(),
            selector: "ed".into(),
            key: write(&dir, "ed.pem", &ed_pem),
        },
    ];
    let signer = Signer::load(&files).expect("keys load");
    let at = crate::engine::header::end_of_headers(MSG, true).expect("eoh");
    let fields = signer.sign(
        "Football.Example.com",
        &MSG[..at],
        &body_hash(MSG, 7),
        1_800_000_000,
    );
    assert_eq!(fields.len(), 2);
    assert!(fields[0].contains("a=rsa-sha256") && fields[1].contains("a=ed25519-sha256"));
    assert!(
        fields[0].contains("h=from:from:to:subject:\r\n\t date:message-id"),
        "{}",
        fields[0]
    );
    let signed = [fields.concat().as_bytes(), MSG].concat();
    let v: serde_json::Value = serde_json::from_str(FIXTURES).expect("json");
    let rsa_record = v["keys"]["rsa._domainkey.football.example.com"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let ed_record = format!(
        "v=DKIM1; k=ed25519; p={}",
        base64::engine::general_purpose::STANDARD.encode(ed_pub)
    );
    let keys: HashMap<String, KeyAnswer> = [
        (
            "rsa._domainkey.football.example.com".to_string(),
            KeyAnswer::Records(vec![rsa_record.into_bytes()]),
        ),
        (
            "ed._domainkey.football.example.com".to_string(),
            KeyAnswer::Records(vec![ed_record.into_bytes()]),
        ),
    ]
    .into();
    let at = crate::engine::header::end_of_headers(&signed, true).expect("eoh");
    let mut ver = Verifier::new(&signed[..at]);
    ver.feed_body(&signed[at..]);
    let out = ver.finish(&keys, 1_800_000_001);
    assert_eq!(
        out.iter().map(|o| o.verdict).collect::<Vec<_>>(),
        [Verdict::Pass, Verdict::Pass],
        "{out:?}"
    );
    assert!(signer
        .sign("other.example", &signed[..at], &[0; 32], 0)
        .is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_key_files_are_named() {
    let dir = tmp();
    let missing = KeyFile {
        domain: "x.example".into(),
        selector: "s".into(),
        key: dir.join("nope.pem"),
    };
    let e = Signer::load(&[missing]).expect_err("missing");
    assert!(e.contains("nope.pem"), "{e}");
    let junk = KeyFile {
        domain: "x.example".into(),
        selector: "s".into(),
        key: write(
            &dir,
            "junk.pem",
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        ),
    };
    let e = Signer::load(&[junk]).expect_err("junk");
    assert!(e.contains("junk.pem"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn readable_key_files_are_found() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tmp();
    let key = write(&dir, "k.pem", b"x");
    let f = KeyFile {
        domain: "x.example".into(),
        selector: "s".into(),
        key: key.clone(),
    };
    let set = |m: u32| std::fs::set_permissions(&key, std::fs::Permissions::from_mode(m));
    set(0o600).expect("chmod");
    assert!(Signer::loose_files(std::slice::from_ref(&f)).is_empty());
    set(0o640).expect("chmod");
    assert_eq!(
        Signer::loose_files(std::slice::from_ref(&f)),
        vec![(key.clone(), 0o640)]
    );
    set(0o604).expect("chmod");
    assert_eq!(
        Signer::loose_files(std::slice::from_ref(&f)),
        vec![(key.clone(), 0o604)]
    );
    let _ = std::fs::remove_dir_all(&dir);
}
