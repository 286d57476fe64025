//! Messages signed by dkimpy (an independent implementation; fixtures made
//! by tests/dkim's generator and kept in tests/dkim/dkimpy-signed.json)
//! verified here, and the ways a check fails.

use super::*;

const FIXTURES: &str = include_str!("../../../../tests/dkim/dkimpy-signed.json");
/// A 512-bit RSA key: too short (RFC 8301 asks for at least 1024).
const SHORT_KEY: &str = "v=DKIM1; p=MFwwDQYJKoZIhvcNAQEBBQADSwAwSAJBAOheSCYzdSW/hOVE+BlDSdxZGozpeDDFXYWlf3M3cgg9h0CwIgvOje4UmX5F35C8F8N1EMoyg0l5e71l+6Y3/dMCAwEAAQ==";

fn fixtures() -> (HashMap<String, KeyAnswer>, Vec<(String, String)>) {
    let v: serde_json::Value = serde_json::from_str(FIXTURES).expect("json");
    let keys = v["keys"]
        .as_object()
        .expect("keys")
        .iter()
        .map(|(k, t)| {
            (
                k.clone(),
                KeyAnswer::Records(vec![t.as_str().unwrap_or("").as_bytes().to_vec()]),
            )
        })
        .collect();
    let cases = v["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap_or("").to_string(),
                c["message"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    (keys, cases)
}

fn verify(msg: &[u8], keys: &HashMap<String, KeyAnswer>, split: usize) -> Vec<Outcome> {
    let at = crate::engine::header::end_of_headers(msg, true).expect("headers end");
    let mut v = Verifier::new(&msg[..at]);
    for chunk in msg[at..].chunks(split) {
        v.feed_body(chunk);
    }
    v.finish(keys, 1_800_000_000)
}

fn verdicts(o: &[Outcome]) -> Vec<(Verdict, &'static str)> {
    o.iter().map(|x| (x.verdict, x.reason)).collect()
}

#[test]
fn dkimpy_signatures_verify() {
    let (keys, cases) = fixtures();
    for (name, msg) in &cases {
        for split in [1, 7, 4096] {
            let out = verify(msg.as_bytes(), &keys, split);
            assert!(!out.is_empty(), "{name}");
            assert!(
                out.iter().all(|o| o.verdict == Verdict::Pass),
                "{name} split {split}: {out:?}"
            );
            assert!(
                out.iter().all(|o| o.domain == "football.example.com"),
                "{name}"
            );
        }
    }
}

#[test]
fn tampering_and_bad_keys() {
    let (keys, cases) = fixtures();
    let msg = &cases.iter().find(|c| c.0 == "rsa-relaxed").expect("case").1;
    let body = msg.replace("We lost the game", "We won the game");
    assert_eq!(
        verdicts(&verify(body.as_bytes(), &keys, 64)),
        [(Verdict::Fail, "body hash did not verify")]
    );
    let subject = msg.replace("Is dinner ready?", "Is lunch ready?");
    assert_eq!(
        verdicts(&verify(subject.as_bytes(), &keys, 64)),
        [(Verdict::Fail, "signature did not verify")]
    );
    // Relaxed canonicalization forgives re-folding and case in names.
    let refolded = msg.replace(
        "Subject: Is dinner ready?",
        "SUBJECT:   Is dinner\r\n\tready?",
    );
    assert_eq!(
        verdicts(&verify(refolded.as_bytes(), &keys, 64)),
        [(Verdict::Pass, "")]
    );
    let name = "rsa._domainkey.football.example.com".to_string();
    let with = |answer: KeyAnswer| {
        let mut k = keys.clone();
        k.insert(name.clone(), answer);
        verdicts(&verify(msg.as_bytes(), &k, 64))
    };
    assert_eq!(
        with(KeyAnswer::Failed),
        [(Verdict::TempError, "key lookup failed")]
    );
    assert_eq!(
        with(KeyAnswer::Records(vec![])),
        [(Verdict::PermError, "no single key record")]
    );
    assert_eq!(
        with(KeyAnswer::Records(vec![b"v=DKIM1; p=".to_vec()])),
        [(Verdict::PermError, "key revoked")]
    );
    assert_eq!(
        with(KeyAnswer::Records(vec![SHORT_KEY.as_bytes().to_vec()])),
        [(
            Verdict::PermError,
            "RSA key shorter than 1024 bits (RFC 8301)"
        )]
    );
    assert_eq!(
        with(KeyAnswer::Records(vec![
            b"v=DKIM1; k=ed25519; p=AAAA".to_vec()
        ])),
        [(Verdict::PermError, "key does not allow the algorithm")]
    );
}

#[test]
fn length_limits_and_broken_fields() {
    let (keys, cases) = fixtures();
    let msg = &cases.iter().find(|c| c.0 == "rsa-length").expect("case").1;
    // l= covers what was signed: text appended after it does not break it.
    let appended = format!("{msg}P.S. appended by a list\r\n");
    assert_eq!(
        verdicts(&verify(appended.as_bytes(), &keys, 64)),
        [(Verdict::Pass, "")]
    );
    let broken = msg.replacen("b=", "b=!!!", 1);
    let out = verify(broken.as_bytes(), &keys, 64);
    assert_ne!(out[0].verdict, Verdict::Pass, "{out:?}");
    let sha1 = msg.replacen("a=rsa-sha256", "a=rsa-sha1", 1);
    assert_eq!(
        verdicts(&verify(sha1.as_bytes(), &keys, 64)),
        [(Verdict::Fail, "rsa-sha1 is not accepted (RFC 8301)")]
    );
    let garbled = msg.replacen("v=1;", "v=1; v=1;", 1);
    assert_eq!(
        verdicts(&verify(garbled.as_bytes(), &keys, 64)),
        [(Verdict::PermError, "malformed signature")]
    );
}
