//! Unit tests of the SPF evaluator's protocol; the RFC 7208 community
//! suite runs in tests/spf_suite.rs.

use super::*;
use std::vec::Vec as StdVec;

/// A tiny zone: (name, type, records or addresses); absent names NXDOMAIN.
type Zone<'a> = &'a [(&'a str, Rtype, &'a [&'a str])];

fn ip(s: &str) -> [u8; 16] {
    match s.parse::<core::net::IpAddr>().expect("ip") {
        core::net::IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        core::net::IpAddr::V6(a) => a.octets(),
    }
}

/// Runs a check; the result and the lookups asked, in order.
fn check(zone: Zone<'_>, client: &str, from: &str) -> (SpfResult, StdVec<std::string::String>) {
    let id = Identity {
        ip: ip(client),
        mail_from: from.as_bytes(),
        helo: b"helo.example.org",
        receiver: b"mx.ours.example",
        now: 0,
    };
    let mut spf = std::boxed::Box::new(Spf::new(&id));
    let mut asked = StdVec::new();
    loop {
        let (name, rtype) = match spf.need() {
            Need::Done(r) => return (r, asked),
            Need::Lookup { name, rtype } => (
                std::string::String::from_utf8_lossy(name).into_owned(),
                rtype,
            ),
        };
        asked.push(format!("{rtype:?} {name}"));
        let hit = zone.iter().find(|(n, t, _)| *n == name && *t == rtype);
        let data: &[&str] = hit.map_or(&[], |h| h.2);
        if data == ["TIMEOUT"] {
            spf.answer(Answer::Error);
        } else if matches!(rtype, Rtype::A | Rtype::Aaaa) {
            let addrs: StdVec<[u8; 16]> = data.iter().map(|a| ip(a)).collect();
            spf.answer(Answer::Addresses(&addrs));
        } else {
            let recs: StdVec<&[u8]> = data.iter().map(|r| r.as_bytes()).collect();
            spf.answer(Answer::Records(&recs));
        }
        assert!(asked.len() < 100, "{asked:?}");
    }
}

#[test]
fn an_identity_too_long_to_check_has_an_empty_domain_not_a_panic() {
    // Found by the spf fuzz target: Spf::domain() sliced an empty sender
    // (a HELO name or MAIL FROM longer than the sender buffer), a panic
    // the shell reached after every such check.
    let long = "h".repeat(400);
    let id = Identity {
        ip: ip("192.0.2.1"),
        mail_from: b"",
        helo: long.as_bytes(),
        receiver: b"mx.ours.example",
        now: 0,
    };
    let mut spf = std::boxed::Box::new(Spf::new(&id));
    assert_eq!(spf.need(), Need::Done(SpfResult::None));
    assert_eq!(spf.domain(), b"");
    let from = format!("{}@example.com", "l".repeat(400));
    let id = Identity {
        mail_from: from.as_bytes(),
        ..id
    };
    assert_eq!(Spf::new(&id).domain(), b"");
}

#[test]
fn a_null_mx_is_no_match_not_a_lookup_of_nothing() {
    // Found by the spf fuzz target: the root name of a null MX (RFC 7505)
    // was looked up as "", which the resolver refuses: temperror.
    let zone: Zone<'_> = &[
        ("example.com", Rtype::Txt, &["v=spf1 mx ptr -all"]),
        ("example.com", Rtype::Mx, &["."]),
        ("1.2.0.192.in-addr.arpa", Rtype::Ptr, &["", "."]),
    ];
    let (r, asked) = check(zone, "192.0.2.1", "user@example.com");
    assert_eq!(r, SpfResult::Fail);
    assert_eq!(
        asked,
        [
            "Txt example.com",
            "Mx example.com",
            "Ptr 1.2.0.192.in-addr.arpa"
        ]
    );
}

#[test]
fn a_pass_through_include_and_mx() {
    let zone: Zone<'_> = &[
        (
            "example.com",
            Rtype::Txt,
            &["other text", "v=spf1 include:_spf.example.net mx -all"],
        ),
        (
            "_spf.example.net",
            Rtype::Txt,
            &["v=spf1 ip4:198.51.100.0/24 -all"],
        ),
        (
            "example.com",
            Rtype::Mx,
            &["mx1.example.com", "mx2.example.com"],
        ),
        ("mx2.example.com", Rtype::A, &["192.0.2.10"]),
    ];
    let (r, asked) = check(zone, "192.0.2.10", "user@example.com");
    assert_eq!(r, SpfResult::Pass);
    assert_eq!(
        asked,
        [
            "Txt example.com",
            "Txt _spf.example.net",
            "Mx example.com",
            "A mx1.example.com",
            "A mx2.example.com"
        ]
    );
    // The include's -all is "no match" in the parent; its pass would be ours.
    assert_eq!(
        check(zone, "198.51.100.7", "user@example.com").0,
        SpfResult::Pass
    );
    assert_eq!(
        check(zone, "203.0.113.1", "user@example.com").0,
        SpfResult::Fail
    );
}

#[test]
fn errors_and_limits() {
    let timeout: Zone<'_> = &[("example.com", Rtype::Txt, &["TIMEOUT"])];
    assert_eq!(
        check(timeout, "192.0.2.1", "a@example.com").0,
        SpfResult::TempError
    );
    let none: Zone<'_> = &[("example.com", Rtype::Txt, &["hello"])];
    assert_eq!(check(none, "192.0.2.1", "a@example.com").0, SpfResult::None);
    let two: Zone<'_> = &[("example.com", Rtype::Txt, &["v=spf1 -all", "v=spf1 +all"])];
    assert_eq!(
        check(two, "192.0.2.1", "a@example.com").0,
        SpfResult::PermError
    );
    // Three void lookups: permerror (RFC 7208 §4.6.4).
    let voids: Zone<'_> = &[(
        "example.com",
        Rtype::Txt,
        &["v=spf1 a:a.example.com a:b.example.com a:c.example.com -all"],
    )];
    let (r, asked) = check(voids, "192.0.2.1", "a@example.com");
    assert_eq!((r, asked.len()), (SpfResult::PermError, 4));
    // Eleven DNS-querying terms: permerror before the 11th is asked.
    let many = "v=spf1 a a a a a a a a a a a -all";
    let eleven: Zone<'_> = &[
        ("example.com", Rtype::Txt, &[many]),
        ("example.com", Rtype::A, &["192.0.2.9"]),
    ];
    let (r, asked) = check(eleven, "192.0.2.1", "a@example.com");
    assert_eq!((r, asked.len()), (SpfResult::PermError, 11));
}

#[test]
fn the_null_sender_checks_helo_and_fail_gets_its_explanation() {
    let zone: Zone<'_> = &[
        (
            "helo.example.org",
            Rtype::Txt,
            &["v=spf1 -all exp=why.example.org"],
        ),
        (
            "why.example.org",
            Rtype::Txt,
            &["%{i} is not one of %{d}'s senders"],
        ),
    ];
    let id = Identity {
        ip: ip("192.0.2.1"),
        mail_from: b"",
        helo: b"helo.example.org",
        receiver: b"",
        now: 0,
    };
    let mut spf = std::boxed::Box::new(Spf::new(&id));
    let mut n = 0;
    let r = loop {
        match spf.need() {
            Need::Done(r) => break r,
            Need::Lookup { name, .. } => {
                let name = std::string::String::from_utf8_lossy(name).into_owned();
                let data: StdVec<&[u8]> = zone
                    .iter()
                    .filter(|z| z.0 == name)
                    .flat_map(|z| z.2.iter().map(|s| s.as_bytes()))
                    .collect();
                spf.answer(Answer::Records(&data));
            }
        }
        n += 1;
        assert!(n < 10);
    };
    assert_eq!(r, SpfResult::Fail);
    assert_eq!(spf.domain(), b"helo.example.org");
    assert_eq!(
        spf.explanation(),
        b"192.0.2.1 is not one of helo.example.org's senders"
    );
}

#[test]
fn ipv6_clients_match_ip6_and_aaaa() {
    let zone: Zone<'_> = &[
        (
            "example.com",
            Rtype::Txt,
            &["v=spf1 ip4:192.0.2.0/24 a//64 -all"],
        ),
        ("example.com", Rtype::Aaaa, &["2001:db8:1:2::1"]),
    ];
    assert_eq!(
        check(zone, "2001:db8:1:2::99", "a@example.com").0,
        SpfResult::Pass
    );
    assert_eq!(
        check(zone, "2001:db8:1:3::99", "a@example.com").0,
        SpfResult::Fail
    );
    assert_eq!(
        check(zone, "192.0.2.99", "a@example.com").0,
        SpfResult::Pass
    );
}
