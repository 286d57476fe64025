//! Chains sealed by dkimpy (fixtures in tests/dkim/dkimpy-arc.json, made by
//! tests/dkim/make_fixtures.py) validated here, and the ways they break.

use super::*;

const FIXTURES: &str = include_str!("../../../../tests/dkim/dkimpy-arc.json");

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

fn check(msg: &str, keys: &HashMap<String, KeyAnswer>) -> ArcOutcome {
    let msg = msg.as_bytes();
    let at = crate::engine::header::end_of_headers(msg, true).expect("headers");
    let mut c = ArcCheck::new(&msg[..at]);
    for chunk in msg[at..].chunks(5) {
        c.feed_body(chunk);
    }
    c.finish(keys)
}

#[test]
fn dkimpy_chains_pass() {
    let (keys, cases) = fixtures();
    for (name, msg) in &cases {
        let o = check(msg, &keys);
        assert_eq!((o.result, o.reason), ("pass", ""), "{name}");
    }
    let two = &cases.iter().find(|c| c.0 == "two-hops").expect("case").1;
    let o = check(two, &keys);
    assert_eq!(o.instances, 2);
    assert_eq!(o.sealers, ["fwd.example.net", "lists.example.org"]);
    assert_eq!(
        check("From: a@example.com\r\n\r\nhi\r\n", &keys).result,
        "none"
    );
}

#[test]
fn broken_chains_fail() {
    let (keys, cases) = fixtures();
    let two = &cases.iter().find(|c| c.0 == "two-hops").expect("case").1;
    let body = two.replace("Hi.\r\n", "Hi there.\r\n");
    assert_eq!(
        check(&body, &keys).reason,
        "ARC-Message-Signature body hash did not verify"
    );
    // The oldest results rewritten: the seals no longer verify.
    let aar = two.replacen(
        "spf=pass smtp.mailfrom=football",
        "spf=fail smtp.mailfrom=football",
        1,
    );
    let o = check(&aar, &keys);
    assert_eq!(o.result, "fail", "{o:?}");
    // A set's seal removed: the structure is broken.
    let start = two.find("ARC-Seal: i=1").expect("seal 1");
    let end = start + two[start..].find("\r\nARC-").expect("next field") + 2;
    let cut = format!("{}{}", &two[..start], &two[end..]);
    assert_eq!(check(&cut, &keys).reason, "ARC sets incomplete or repeated");
    let mut no_key = keys.clone();
    no_key.insert("rsa._domainkey.fwd.example.net".into(), KeyAnswer::Failed);
    assert_eq!(check(two, &no_key).reason, "key lookup failed");
}
