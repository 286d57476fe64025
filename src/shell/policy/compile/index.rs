//! Builds the rule index of a compiled table (`engine::policy::index`):
//! each rule's key from its conditions, the two domain maps, the always
//! candidates and the header name hashes. The entries are counted against
//! `MAX_INDEX_ENTRIES`; the rule whose entries do not fit is the error's
//! place.

use super::emit::{count_index, Builder};
use crate::engine::limits::{MAX_INDEX_BUCKETS, MAX_INDEX_ENTRIES};
use crate::engine::policy::{
    key_domains, key_hash, name_hash, rule_key, DomainMap, KeySide, RuleIndex, Table,
};
use std::collections::BTreeSet;

/// The keyed rules of one side: rule number and its key's domain hashes.
type Keyed = Vec<(u16, Vec<u32>)>;

/// Fills `b`'s rule index from its rules and conditions (after every rule
/// is emitted), or counts the overflow when the entries do not fit.
pub(super) fn emit_index(b: &mut Builder) {
    let t = &*b.t;
    let mut always = vec![0u32; t.rules.len().div_ceil(32)];
    let mut keyed: [Keyed; 3] = [Vec::new(), Vec::new(), Vec::new()];
    for (r, rule) in t.rules.iter().enumerate() {
        match rule_key(t, rule) {
            None => {
                if let Some(w) = always.get_mut(r / 32) {
                    *w |= 1 << (r % 32);
                }
            }
            Some((side, k)) => {
                let hashes = key_domains(t, k).map(key_hash).collect();
                let i = match side {
                    KeySide::Recipient => 0,
                    KeySide::Sender => 1,
                    KeySide::Client => 2,
                };
                if let Some(k) = keyed.get_mut(i) {
                    k.push((r as u16, hashes));
                }
            }
        }
    }
    let [rm, sm, cm] = keyed.map(|k| buckets(&k));
    let counts: Vec<(u16, usize)> = [&rm.1, &sm.1, &cm.1]
        .into_iter()
        .flatten()
        .copied()
        .collect();
    let need: usize = counts.iter().map(|(_, n)| n).sum();
    let over = overflow(counts).and_then(|r| b.rule_at.get(usize::from(r)).copied());
    let fits = over.is_none() && need <= MAX_INDEX_ENTRIES;
    let index = fits
        .then(|| assemble(t, [rm.0, sm.0, cm.0], &always))
        .flatten();
    count_index(b, need, over);
    if let Some(index) = index {
        b.t.index = index;
    }
}

/// A map's buckets (a power of two, at least four times its distinct hashes,
/// at most `MAX_INDEX_BUCKETS`), each the ascending rules keyed by a
/// domain of its hashes; and each rule's number of entries.
fn buckets(keyed: &Keyed) -> (Vec<Vec<u16>>, Vec<(u16, usize)>) {
    let distinct: BTreeSet<u32> = keyed.iter().flat_map(|(_, h)| h.iter().copied()).collect();
    if distinct.is_empty() {
        return (Vec::new(), Vec::new());
    }
    let n = (4 * distinct.len())
        .next_power_of_two()
        .min(MAX_INDEX_BUCKETS);
    let mut bs: Vec<Vec<u16>> = vec![Vec::new(); n];
    let mut counts = Vec::new();
    for (r, hashes) in keyed {
        let mut mine = 0;
        for h in hashes {
            if let Some(bucket) = bs.get_mut(*h as usize & (n - 1)) {
                if bucket.last() != Some(r) {
                    bucket.push(*r);
                    mine += 1;
                }
            }
        }
        counts.push((*r, mine));
    }
    (bs, counts)
}

/// The first rule, in rule order, at which the maps' entries (each rule's
/// count) together exceed `MAX_INDEX_ENTRIES`.
fn overflow(mut all: Vec<(u16, usize)>) -> Option<u16> {
    all.sort_by_key(|(r, _)| *r);
    let mut total = 0;
    all.into_iter().find_map(|(r, n)| {
        total += n;
        (total > MAX_INDEX_ENTRIES).then_some(r)
    })
}

/// The index from the maps' buckets, the always words and the conditions'
/// name hashes; `None` if something does not fit (counted before).
fn assemble(t: &Table, maps: [Vec<Vec<u16>>; 3], always: &[u32]) -> Option<RuleIndex> {
    let mut x = RuleIndex::new();
    let [rcpt, sender, client] = maps;
    x.recipient = map(rcpt)?;
    x.sender = map(sender)?;
    x.client = map(client)?;
    for w in always {
        x.always.push(*w).ok()?;
    }
    for c in &t.conditions {
        x.names.push(name_hash(t, c)).ok()?;
    }
    Some(x)
}

/// One map from its buckets (empty when there are none).
fn map(buckets: Vec<Vec<u16>>) -> Option<DomainMap> {
    let mut m = DomainMap::default();
    if buckets.is_empty() {
        return Some(m);
    }
    m.starts.push(0).ok()?;
    for b in buckets {
        for r in b {
            m.rules.push(r).ok()?;
        }
        m.starts.push(m.rules.len() as u16).ok()?;
    }
    Some(m)
}

#[cfg(test)]
mod tests {
    use super::super::compile;
    use crate::engine::policy::{Table, TableError};
    use crate::shell::fuzz::by_index_and_scan;
    use proptest::prelude::*;
    use std::net::IpAddr;

    const DOMAINS: [&str; 5] = [
        "a.example",
        "b.example",
        "c.example",
        "A.EXAMPLE",
        "d.example",
    ];
    const LOCALS: [&str; 3] = ["jo", "u", "x"];
    const HEADERS: [&str; 3] = ["X-A", "x-b", "Subject"];

    /// The head of every generated rule file.
    const HEAD: &str = "version = 1\n[domains]\naccepted = [\"a.example\", \"b.example\"]\n\
        default = \"a.example\"\n[groups]\nG = [\"*@a.example\", \"jo@c.example\"]\n\
        H = [\"jo@b.example\", \"*@C.example\"]\n\
        [[inbound]]\nname = \"org\"\nkind = \"organization\"\nclient_ips = [\"10.0.0.0/8\"]\n\
        [[connector]]\nname = \"internet\"\naddress_spaces = [\"*\"]\n";

    /// Condition `kind` (0..14) with choice `v`, as `key = value`.
    fn cond(kind: u8, v: usize) -> String {
        let d = DOMAINS[v % DOMAINS.len()];
        let d2 = DOMAINS[(v / 5) % DOMAINS.len()];
        let l = LOCALS[v % LOCALS.len()];
        let h = HEADERS[v % HEADERS.len()];
        match kind {
            0 => format!("recipient_domain = [\"{d}\", \"{d2}\"]"),
            1 => format!("sender_domain = \"{d}\""),
            2 if v % 2 == 0 => format!("sender = \"*@{d}\""),
            2 => format!("sender = \"{l}@{d}\""),
            3 => format!("recipient = [\"{l}@{d}\", \"{l}@{d2}\"]"),
            4 => "sender_group = \"G\"".into(),
            5 => "recipient_group = \"H\"".into(),
            6 => format!("recipient_location = \"{}\"", ["inside", "outside"][v % 2]),
            7 => format!("sender_location = \"{}\"", ["inside", "outside"][v % 2]),
            8 => format!("header = \"{h}\""),
            9 => format!("header = \"{h}\", header_value_matches = '(?i)^v1$'"),
            10 => format!("header = \"{h}\", header_value_not_matches = '^v'"),
            11 => format!("header_absent = \"{h}\""),
            12 => "attachment_name_matches = '\\.exe$'".into(),
            _ => format!(
                "client_network = [\"{}\"]",
                ["10.0.0.0/8", "10.1.2.0/24", "192.0.2.0/28", "10.1.0.0/16"][v % 4]
            ),
        }
    }

    /// A condition set of the kinds given (one header kind at most).
    fn condset(kinds: &[(u8, usize)]) -> String {
        let mut seen_header = false;
        let mut keys = std::collections::BTreeSet::new();
        let mut parts = Vec::new();
        for &(k, v) in kinds {
            let header = (8..=10).contains(&k);
            if (header && seen_header) || !keys.insert(if header { 8 } else { k }) {
                continue;
            }
            seen_header |= header;
            parts.push(cond(k, v));
        }
        format!("{{ {} }}", parts.join(", "))
    }

    /// One rule of the generated file.
    fn rule(i: usize, when: &[(u8, usize)], except: &[(u8, usize)], act: u8, stop: bool) -> String {
        let then = match act % 5 {
            0 => "route_to = \"d.example\"".to_string(),
            1 => "reject = \"550 5.7.1 No\"".into(),
            2 => "rewrite_recipient = \"jo@c.example\"".into(),
            3 => "add_header = { \"X-Added\" = \"1\" }".into(),
            _ => "route_to = \"c.example\", add_header = { \"X-R\" = \"2\" }".into(),
        };
        let mut s = format!("[[rule]]\nname = \"r{i}\"\nif = {}\n", condset(when));
        if !except.is_empty() {
            s.push_str(&format!("except = [{}]\n", condset(except)));
        }
        s.push_str(&format!("then = {{ {then} }}\nstop = {stop}\n"));
        s
    }

    /// The generated rules: `if` kinds, `except` kinds, action, stop.
    type GenRule = (Vec<(u8, usize)>, Vec<(u8, usize)>, u8, bool);

    /// The generated rules of one file.
    type Rules = Vec<GenRule>;

    /// A rule file from generated rules.
    fn file(rules: &Rules) -> String {
        let mut s = String::from(HEAD);
        for (i, (w, e, a, stop)) in rules.iter().enumerate() {
            s.push_str(&rule(i, w, e, *a, *stop));
        }
        s
    }

    /// A generated rule: 1-3 `if` kinds, 0-1 `except` kinds, action, stop.
    fn arb_rule() -> impl Strategy<Value = GenRule> {
        (
            proptest::collection::vec((0u8..14, 0usize..25), 1..4),
            proptest::collection::vec((0u8..14, 0usize..25), 0..2),
            0u8..5,
            proptest::bool::weighted(0.2),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

        #[test]
        fn the_indexed_evaluation_equals_the_linear_one(
            rules in proptest::collection::vec(arb_rule(), 0..24),
            peer in prop_oneof![Just("10.1.2.3"), Just("192.0.2.1"), Just("10.9.9.9")],
            sender in (0usize..3, 0usize..6),
            headers in proptest::collection::vec((0usize..3, 0usize..3), 0..4),
            exe in any::<bool>(),
            rcpts in proptest::collection::vec((0usize..3, 0usize..5), 1..4),
        ) {
            let text = file(&rules);
            let c = compile(&text).unwrap_or_else(|e| panic!("{text}\n{:?}", e.first()));
            let t = &*c.table;
            let sender = match sender.1 {
                5 => String::new(),
                d => format!("{}@{}", LOCALS[sender.0], DOMAINS[d]),
            };
            let mut msg = String::new();
            for (h, v) in headers {
                msg.push_str(&format!("{}: {}\r\n", HEADERS[h], ["v1", "V1", "other"][v]));
            }
            msg.push_str("\r\nbody\r\n");
            let atts: Vec<&[u8]> = if exe { vec![b"a.exe", b"b.txt"] } else { vec![] };
            let rs: Vec<String> = rcpts
                .iter()
                .map(|(l, d)| format!("{}@{}", LOCALS[*l], DOMAINS[*d]))
                .collect();
            let rs: Vec<&[u8]> = rs.iter().map(|r| r.as_bytes()).collect();
            let ip: IpAddr = peer.parse().expect("ip");
            let (a, b) = by_index_and_scan(t, ip, sender.as_bytes(), msg.as_bytes(), &atts, &rs);
            prop_assert_eq!(a, b, "{}", text);
        }
    }

    /// A compiled file of a few rules of every key kind.
    fn sample() -> Box<Table> {
        let rules: Rules = vec![
            (vec![(0, 1)], vec![], 0, false),
            (vec![(11, 0), (2, 3)], vec![], 1, false),
            (vec![(8, 0)], vec![], 2, false),
            (vec![(5, 0)], vec![(12, 0)], 3, true),
            (vec![(13, 0)], vec![], 0, false),
            (vec![(13, 1), (8, 1)], vec![], 0, false),
        ];
        compile(&file(&rules)).expect("compiles").table
    }

    #[test]
    fn rules_are_keyed_by_their_first_condition_before_a_logging_one() {
        let t = sample();
        let x = &t.index;
        // r0 by recipient domain, r1 by sender (after header_absent, which
        // logs nothing), r2 and r4 always (a header condition alone; a /8
        // network is no key), r3 by recipient group, r5 by its /24.
        assert_eq!(x.always.as_slice(), &[0b10100]);
        assert_eq!(x.sender.rules.as_slice(), &[1]);
        let mut rcpt: Vec<u16> = x.recipient.rules.to_vec();
        rcpt.sort_unstable();
        rcpt.dedup();
        assert_eq!(rcpt, [0, 3]);
        assert_eq!(x.client.rules.as_slice(), &[5]);
        assert_eq!(x.client.buckets(), 4);
        assert_eq!(x.names.len(), t.conditions.len());
        assert!(t.validate().is_ok());
    }

    #[test]
    fn the_validator_refuses_a_corrupt_index() {
        let t = sample();
        let mut bad = t.clone();
        bad.index.sender.rules[0] = 0;
        assert_eq!(bad.validate(), Err(TableError::BadRuleIndex), "wrong rule");
        let mut bad = t.clone();
        bad.index.always[0] |= 1;
        assert_eq!(
            bad.validate(),
            Err(TableError::BadRuleIndex),
            "keyed rule always"
        );
        let mut bad = t.clone();
        bad.index.always[0] &= !0b100;
        assert_eq!(bad.validate(), Err(TableError::BadRuleIndex), "rule lost");
        let mut bad = t.clone();
        bad.index.always[0] |= 1 << 9;
        assert_eq!(
            bad.validate(),
            Err(TableError::BadRuleIndex),
            "no such rule"
        );
        let mut bad = t.clone();
        bad.index.names[0] ^= 1;
        assert_eq!(bad.validate(), Err(TableError::BadRuleIndex), "name hash");
        let mut bad = t.clone();
        bad.index.names.pop();
        assert_eq!(bad.validate(), Err(TableError::BadRuleIndex), "names short");
        let mut bad = t.clone();
        let n = bad.index.recipient.starts.len();
        bad.index.recipient.starts[n - 1] -= 1;
        assert_eq!(bad.validate(), Err(TableError::BadRuleIndex), "offsets");
        let mut bad = t.clone();
        bad.index.sender = Default::default();
        assert_eq!(bad.validate(), Err(TableError::BadRuleIndex), "map lost");
        let mut bad = t.clone();
        let moved = bad.index.client.starts[1] ^ 1;
        bad.index.client.starts[1] = moved;
        assert_eq!(
            bad.validate(),
            Err(TableError::BadRuleIndex),
            "wrong bucket"
        );
        let mut bad = t.clone();
        bad.index.sender = Default::default();
        // Through the blob as well.
        let blob = super::super::encode(&bad);
        let back = std::thread::Builder::new()
            .stack_size(32 << 20)
            .spawn(move || Table::from_blob(&blob).map(|_| ()))
            .expect("thread")
            .join()
            .expect("join");
        assert_eq!(back, Err(TableError::BadRuleIndex));
    }

    #[test]
    fn too_many_index_entries_is_a_compile_error_at_the_rule() {
        let members: Vec<String> = (0..8).map(|i| format!("\"*@g{i}.example\"")).collect();
        let big = format!("Big = [{}]\n[[inbound]]", members.join(", "));
        let mut text = HEAD.replace("[[inbound]]", &big);
        for i in 0..1024 {
            text.push_str(&format!(
                "[[rule]]\nname = \"r{i}\"\nif = {{ sender_group = \"Big\" }}\nthen = {{ route_to = \"d.example\" }}\n"
            ));
        }
        let Err(e) = compile(&text) else {
            panic!("too many entries compiled");
        };
        let d = e
            .iter()
            .find(|d| d.message.contains("too many rule index entries"))
            .unwrap_or_else(|| panic!("{:?}", e.first()));
        assert!(d.message.contains("MAX_INDEX_ENTRIES"), "{}", d.message);
        let head = HEAD.lines().count() + 1;
        assert!(d.line > head, "placed at a rule, not in the head: {d:?}");
    }
}
