//! Tests of the rule-file compiler, through its entry points.

use super::emit::CAPS;
use super::*;
use crate::engine::limits::{MAX_AGENTS, MAX_DFAS, MAX_GROUPS, MAX_INBOUND, MAX_ITEMS, MAX_RULES};
use crate::engine::policy::{
    run_order, Action, Agent, Condition, Direction, InboundKind, List, Location, Rule, Space,
    Stage, Str, TlsPolicy, AGENTS,
};
use regex_automata::dfa::Automaton;
use std::net::Ipv6Addr;

const SAMPLE: &str = include_str!("../../../../config/rules.toml");

fn ok(text: &str) -> Compiled {
    match compile(text) {
        Ok(c) => c,
        Err(e) => panic!("expected to compile, got {e:#?}"),
    }
}

fn errs(text: &str) -> Vec<Diag> {
    match compile(text) {
        Ok(c) => panic!("expected errors, compiled with warnings {:?}", c.warnings),
        Err(e) => e,
    }
}

fn warnings(text: &str) -> Vec<String> {
    ok(text).warnings.into_iter().map(|d| d.message).collect()
}

fn s(t: &Table, x: Str) -> &str {
    std::str::from_utf8(t.str(x)).unwrap()
}

fn list(t: &Table, l: List) -> Vec<String> {
    t.list(l)
        .map(|b| String::from_utf8(b.to_vec()).unwrap())
        .collect()
}

fn dfa_matches(t: &Table, i: u16, hay: &str) -> bool {
    let d = t.dfa(i).expect("dfa loads");
    matches!(
        d.try_search_fwd(&regex_automata::Input::new(hay)),
        Ok(Some(_))
    )
}

// ---- the normative sample ----------------------------------------------

#[test]
fn the_normative_sample_compiles_without_warnings() {
    assert_eq!(SAMPLE, include_str!("../../../../config/rules.toml"));
    let c = ok(SAMPLE);
    assert!(c.warnings.is_empty(), "{:#?}", c.warnings);
    let t = &c.table;
    let names: Vec<&str> = t.rules.iter().map(|r| s(t, r.name)).collect();
    assert_eq!(
        names,
        [
            "Route via Trend",
            "Sales via Trend",
            "Cloud to cloud via on-premises",
            "Journal executives",
            "Refuse executables from outside"
        ]
    );
    let prios: Vec<u32> = t.rules.iter().map(|r| r.priority).collect();
    assert_eq!(prios, [1, 2, 3, 4, 5]);
    assert!(t.rules[4].stop && !t.rules[0].stop);
    assert_eq!(
        list(t, t.accepted),
        ["contoso.com", "eu.contoso.com", "us.contoso.com"]
    );
    assert_eq!(t.default_domain.map(|d| s(t, d)), Some("contoso.com"));
}

#[test]
fn the_sample_connectors_and_spaces() {
    let c = ok(SAMPLE);
    let t = &c.table;
    let names: Vec<&str> = t.connectors.iter().map(|c| s(t, c.name)).collect();
    assert_eq!(
        names,
        ["internet", "trend", "fabrikam", "onprem", "journal"]
    );
    let spaces = |i: usize| -> Vec<Space> {
        let sp = t.connectors[i].spaces;
        t.spaces[usize::from(sp.first)..][..usize::from(sp.count)].to_vec()
    };
    assert_eq!(spaces(0), [Space::Any]);
    match spaces(2).as_slice() {
        [Space::Domain(a), Space::Subdomains(b)] => {
            assert_eq!((s(t, *a), s(t, *b)), ("fabrikam.com", "fabrikam.com"));
        }
        o => panic!("fabrikam spaces {o:?}"),
    }
    assert_eq!(spaces(3), [Space::Accepted]);
    assert_eq!(t.connectors[3].cost, 1);
    assert_eq!(t.connectors[0].cost, DEFAULT_COST);
    assert_eq!(t.connectors[1].tls, TlsPolicy::Required);
    assert_eq!(t.connectors[2].tls, TlsPolicy::Verify);
    assert_eq!(t.connectors[0].tls, TlsPolicy::Opportunistic);
    assert_eq!(
        list(t, t.connectors[2].smart_hosts),
        ["mx1.fabrikam.example", "mx2.fabrikam.example:2525"]
    );
    assert!(list(t, t.connectors[0].smart_hosts).is_empty());
}

#[test]
fn the_sample_inbound_cmt_firewall_limits() {
    let c = ok(SAMPLE);
    let t = &c.table;
    let names: Vec<&str> = t.inbound.iter().map(|i| s(t, i.name)).collect();
    assert_eq!(
        names,
        ["exchange-online", "exchange-onprem", "partner-fabrikam"]
    );
    assert_eq!(t.inbound[0].kind, InboundKind::Organization);
    assert_eq!(t.inbound[2].kind, InboundKind::Partner);
    assert_eq!(
        t.inbound[0].tls_name.map(|n| s(t, n)),
        Some("mail.protection.outlook.com")
    );
    // 127.0.0.2/32 as ::ffff:127.0.0.2/128
    let n = t.nets[usize::from(t.inbound[0].nets.first)];
    assert_eq!(n.prefix, 128);
    assert_eq!(
        n.addr,
        Ipv6Addr::from([0, 0, 0, 0, 0, 0xffff, 0x7f00, 2]).octets()
    );
    let onprem = t.inbound[1].nets;
    assert_eq!(onprem.count, 2);
    assert_eq!(
        t.nets[usize::from(onprem.first) + 1].addr,
        Ipv6Addr::LOCALHOST.octets()
    );
    assert!(t.cmt.enabled);
    assert_eq!(t.cmt.from_inbound, 0b1, "exchange-online is inbound 0");
    assert_eq!(s(t, t.cmt.stamp), DEFAULT_STAMP);
    assert_eq!(list(t, t.trusted_prefixes), ["X-MS-Exchange-Organization-"]);
    assert_eq!(t.renames.len(), 1);
    assert_eq!(
        s(t, t.renames[0].1),
        "X-Forefront-Antispam-Report-Untrusted"
    );
    assert_eq!(t.limits.max_hops, 30);
    assert_eq!(t.limits.max_message_size, 36 * 1024 * 1024);
    assert_eq!(t.limits.max_recipients, 200);
    assert_eq!(t.agents.len(), MAX_AGENTS);
    assert!(t.agents.iter().all(|a| a.enabled));
}

#[test]
fn the_sample_rewrites_exact_before_wildcard() {
    let c = ok(SAMPLE);
    let t = &c.table;
    let rw: Vec<(Direction, &str, &str)> = t
        .rewrites
        .iter()
        .map(|r| (r.direction, s(t, r.from), s(t, r.to)))
        .collect();
    assert_eq!(
        rw,
        [
            (
                Direction::Inbound,
                "johnny@contoso.com",
                "johnny@eu.contoso.com"
            ),
            (
                Direction::Inbound,
                "willie@contoso.com",
                "willie@us.contoso.com"
            ),
            (Direction::Outbound, "*@eu.contoso.com", "*@contoso.com"),
            (Direction::Outbound, "*@us.contoso.com", "*@contoso.com"),
        ]
    );
}

/// The conditions of condition set `set`.
fn conds_of(t: &Table, set: u16) -> Vec<Condition> {
    let sp = t.condsets[usize::from(set)];
    t.conditions[usize::from(sp.first)..][..usize::from(sp.count)].to_vec()
}

/// The actions of rule `r`.
fn acts_of(t: &Table, r: &Rule) -> Vec<Action> {
    t.actions[usize::from(r.actions.first)..][..usize::from(r.actions.count)].to_vec()
}

#[test]
fn the_sample_rules_conditions_and_patterns() {
    let c = ok(SAMPLE);
    let t = &c.table;
    assert_eq!(
        t.dfas.len(),
        3,
        "two header patterns and one attachment pattern"
    );
    let conds = |set: u16| conds_of(t, set);
    let acts = |r: &Rule| acts_of(t, r);
    // rule 1: header X-RoutethroughTM not matching ^public$, except secure domains
    let r = &t.rules[0];
    let [Condition::HeaderNotMatches(h, d)] = conds(r.when)[..] else {
        panic!("{:?}", conds(r.when))
    };
    assert_eq!(s(t, h), "X-RoutethroughTM");
    assert!(dfa_matches(t, d, "PUBLIC") && dfa_matches(t, d, "public"));
    assert!(!dfa_matches(t, d, "On") && !dfa_matches(t, d, "not public"));
    assert_eq!(r.except.count, 1);
    let [Condition::RecipientDomain(l)] = conds(r.except.first)[..] else {
        panic!()
    };
    assert_eq!(list(t, l), ["secure.com", "secure.eu"]);
    let [Action::RouteTo(d)] = acts(r)[..] else {
        panic!()
    };
    assert_eq!(s(t, d), "trend.local");
    // rule 2: group and location (location first: it is cheaper)
    let r = &t.rules[1];
    assert_eq!(
        conds(r.when),
        [
            Condition::RecipientLocation(Location::Outside),
            Condition::SenderGroup(0)
        ]
    );
    assert_eq!(s(t, t.groups[0].name), "TrendUsers");
    assert_eq!(
        list(t, t.groups[0].members),
        ["jaap@contoso.com", "*@sales.contoso.com"]
    );
    // rule 3: inbound, use_connector onprem, except X-OriginatorOrg
    let r = &t.rules[2];
    assert_eq!(
        conds(r.when),
        [
            Condition::Inbound(0),
            Condition::RecipientLocation(Location::Inside)
        ]
    );
    assert_eq!(acts(r), [Action::UseConnector(3)]);
    let [Condition::HeaderMatches(h, d)] = conds(r.except.first)[..] else {
        panic!()
    };
    assert_eq!(s(t, h), "X-OriginatorOrg");
    assert!(dfa_matches(t, d, "contoso.com") && dfa_matches(t, d, "EU.Contoso.com"));
    assert!(!dfa_matches(t, d, "fabrikam.com") && !dfa_matches(t, d, "xcontoso.com"));
}

#[test]
fn the_sample_rules_actions_and_attachment_pattern() {
    let c = ok(SAMPLE);
    let t = &c.table;
    let conds = |set: u16| conds_of(t, set);
    let acts = |r: &Rule| acts_of(t, r);
    // rule 4: add a recipient and a header
    let r = &t.rules[3];
    match acts(r)[..] {
        [Action::AddRecipient(a), Action::AddHeader(n, v)] => {
            assert_eq!(s(t, a), "journal@journaling.contoso.com");
            assert_eq!((s(t, n), s(t, v)), ("X-Journaled", "yes"));
        }
        ref o => panic!("{o:?}"),
    }
    // rule 5: attachment pattern and reject
    let r = &t.rules[4];
    let [Condition::SenderLocation(Location::Outside), Condition::AttachmentMatches(d)] =
        conds(r.when)[..]
    else {
        panic!("{:?}", conds(r.when))
    };
    assert!(dfa_matches(t, d, "invoice.EXE") && dfa_matches(t, d, "a.js"));
    assert!(!dfa_matches(t, d, "a.exe.txt") && !dfa_matches(t, d, "report.pdf"));
    match acts(r)[..] {
        [Action::Reject { code, status, text }] => {
            assert_eq!((code, status), (550, (5, 7, 1)));
            assert_eq!(s(t, text), "Executable attachments are refused");
        }
        ref o => panic!("{o:?}"),
    }
}

#[test]
fn the_version_is_a_hash_of_the_text() {
    let a = ok(SAMPLE);
    let b = ok(SAMPLE);
    assert_eq!(a.table.version, b.table.version);
    assert_eq!(a.blob, b.blob);
    assert_eq!(a.table.version, fnv1a64(SAMPLE));
    let c = ok(&format!("{SAMPLE}\n# a comment\n"));
    assert_ne!(a.table.version, c.table.version);
    assert_eq!(fnv1a64(""), 0xcbf2_9ce4_8422_2325);
    assert_eq!(fnv1a64("a"), 0xaf63_dc4c_8601_ec8c);
}

#[test]
fn the_blob_round_trips() {
    let c = ok(SAMPLE);
    assert_eq!(c.blob, encode(&c.table));
    // from_blob returns the ~600 KiB table by value: a big stack
    std::thread::Builder::new()
        .stack_size(COMPILER_STACK)
        .spawn(move || {
            let back = Table::from_blob(&c.blob).expect("decodes");
            assert!(back == *c.table);
            let mut bad = c.blob.clone();
            let mid = bad.len() / 2;
            bad[mid] ^= 0x40;
            assert!(Table::from_blob(&bad).is_err());
        })
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn the_check_report_of_the_sample() {
    let o = run(SAMPLE, None);
    let out = report("rules.toml", &o);
    assert!(out.contains("rules             5 / 1024\n"), "{out}");
    assert!(out.contains("connectors        5 / 64\n"), "{out}");
    assert!(out.contains("dfas              3 / 256\n"), "{out}");
    assert!(out.contains(" / 65536 bytes\n"), "{out}");
    assert!(out.contains(&format!(
        "blob: {} bytes, version {:016X}\n",
        o.blob.len(),
        fnv1a64(SAMPLE)
    )));
    assert!(!out.contains("error") && !out.contains("warning"), "{out}");
    println!("{out}");
}

#[test]
fn the_check_command_exit_status() {
    let dir = std::env::temp_dir().join(format!("sluice-rules-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.toml");
    std::fs::write(&good, SAMPLE).unwrap();
    assert_eq!(check_command(&good, None), 0);
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[[rule]]\nprority = 1\n").unwrap();
    assert_eq!(check_command(&bad, None), 1);
    assert_eq!(check_command(&dir.join("missing.toml"), None), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

// ---- minimal files and defaults ----------------------------------------

#[test]
fn a_file_with_only_domains_is_valid() {
    let c = ok("[domains]\naccepted = [\"example.com\"]\n");
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    assert_eq!(list(&c.table, c.table.accepted), ["example.com"]);
    assert!(c.table.rules.is_empty() && c.table.connectors.is_empty());
    assert!(!c.table.cmt.enabled);
    let c = ok("[domains]\n");
    assert!(c.warnings.is_empty());
    let c = ok("");
    assert!(c.warnings.is_empty());
    assert_eq!(c.table.agents.len(), MAX_AGENTS);
}

#[test]
fn domains_are_lowercased_and_ipv6_networks_kept() {
    let c = ok(concat!(
        "[domains]\naccepted = [\"Example.COM\"]\ndefault = \"example.com\"\n",
        "[connection_filter]\nblocked_networks = [\"2001:db8::/32\", \"198.51.100.0/24\"]\n",
    ));
    let t = &c.table;
    assert_eq!(list(t, t.accepted), ["example.com"]);
    assert_eq!(t.blocked.count, 2);
    let n = t.nets[usize::from(t.blocked.first)];
    assert_eq!(n.prefix, 32);
    assert_eq!(&n.addr[..4], &[0x20, 0x01, 0x0d, 0xb8]);
    let v4 = t.nets[usize::from(t.blocked.first) + 1];
    assert_eq!(v4.prefix, 96 + 24);
    assert!(v4.contains(
        &std::net::Ipv4Addr::new(198, 51, 100, 7)
            .to_ipv6_mapped()
            .octets()
    ));
    assert!(!v4.contains(
        &std::net::Ipv4Addr::new(198, 51, 101, 7)
            .to_ipv6_mapped()
            .octets()
    ));
}

#[test]
fn rule_order_priorities_and_disabled_rules() {
    let c = ok(concat!(
        "[[rule]]\nname = \"c\"\nthen = { add_header = { X-A = \"1\" } }\n",
        "[[rule]]\nname = \"b\"\npriority = 7\nthen = { add_header = { X-A = \"1\" } }\n",
        "[[rule]]\nname = \"off\"\npriority = 1\nenabled = false\nthen = { add_header = { X-A = \"1\" } }\n",
        "[[rule]]\nname = \"a\"\npriority = 2\nthen = { add_header = { X-A = \"1\" } }\n",
        "[[rule]]\nname = \"d\"\nthen = { add_header = { X-A = \"1\" } }\n",
    ));
    let t = &c.table;
    let order: Vec<(&str, u32)> = t.rules.iter().map(|r| (s(t, r.name), r.priority)).collect();
    assert_eq!(order, [("a", 2), ("b", 7), ("c", 8), ("d", 9)]);
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    // the rules without conditions share one empty condition set
    assert_eq!(t.condsets.len(), 1);
    // identical strings are stored once
    assert_eq!(t.strings.windows(3).filter(|w| w == b"X-A").count(), 1);
}

#[test]
fn without_a_header_firewall_section_organization_headers_are_trusted_only() {
    let c = ok("[domains]\naccepted = [\"a.test\"]\n");
    let t = &c.table;
    assert_eq!(list(t, t.trusted_prefixes), [DEFAULT_TRUSTED_PREFIX]);
    assert!(t.renames.is_empty());
    // an explicit section keeps its own meaning: no prefixes, nothing stripped
    let c = ok("[header_firewall]\nrename_untrusted = { \"X-A\" = \"X-B\" }\n");
    let t = &c.table;
    assert!(list(t, t.trusted_prefixes).is_empty());
    assert_eq!(t.renames.len(), 1);
}

#[test]
fn agents_can_be_disabled_and_reprioritised() {
    let c = ok("[[agent]]\nname = \"cmt\"\nenabled = false\n[[agent]]\nname = \"hop_count\"\npriority = 5\n");
    let t = &c.table;
    assert_eq!(t.agents.len(), MAX_AGENTS);
    assert!(!t.enabled(Agent::Cmt));
    assert!(t.enabled(Agent::TransportRules));
    assert_eq!(
        t.agent(Agent::HopCount).map(|a| (a.priority, a.stage)),
        Some((5, Stage::OnEndOfData))
    );
    // Emitted in run order (hop count after the rest of its event), which
    // the engine then takes as it is.
    let order: Vec<Agent> = t.agents.iter().map(|a| a.agent).collect();
    let want: Vec<Agent> = run_order(t).iter().map(|a| a.agent).collect();
    assert_eq!(order, want);
    let mut builtin: Vec<Agent> = AGENTS.iter().map(|a| a.0).collect();
    builtin.sort_by_key(|a| order.iter().position(|o| o == a));
    assert_eq!(builtin, order, "every agent once");
}

#[test]
fn limits_and_rewrite_order() {
    let c = ok(concat!(
        "[limits]\nmax_hops = 12\nmax_message_size = \"1 MiB\"\nmax_recipients = 50\n",
        "[[rewrite]]\ndirection = \"outbound\"\nmap = { \"*@b.com\" = \"*@a.com\", \"z@b.com\" = \"zed@a.com\" }\n",
        "[[rewrite]]\ndirection = \"inbound\"\nmap = { \"*@a.com\" = \"*@b.com\" }\n",
        "[[rewrite]]\ndirection = \"inbound\"\nmap = { \"ann@a.com\" = \"*@c.com\" }\n",
    ));
    let t = &c.table;
    assert_eq!(
        (
            t.limits.max_hops,
            t.limits.max_message_size,
            t.limits.max_recipients
        ),
        (12, 1 << 20, 50)
    );
    let froms: Vec<&str> = t.rewrites.iter().map(|r| s(t, r.from)).collect();
    assert_eq!(froms, ["ann@a.com", "*@a.com", "z@b.com", "*@b.com"]);
    let c = ok("[limits]\nmax_message_size = 1000\n");
    assert_eq!(c.table.limits.max_message_size, 1000);
    assert_eq!(c.table.limits.max_hops, 30);
}

#[test]
fn disabled_rules_are_checked_but_not_compiled_or_warned_about() {
    let text = "[[rule]]\nenabled = false\nif = { sender_domain = [] }\n";
    let c = ok(text);
    assert!(
        c.table.rules.is_empty() && c.warnings.is_empty(),
        "{:?}",
        c.warnings
    );
    let e = errs("[[rule]]\nenabled = false\nthen = { reject = \"nope\" }\n");
    assert_eq!((e[0].line, e[0].col), (3, 19));
}

// ---- errors: line and column -------------------------------------------

/// Rule files with one error each: the line, the column and a piece of
/// the message expected.
const ERROR_CASES: &[(&str, usize, usize, &str)] = &[
    // TOML syntax
    ("[domains]\naccepted = [\"a.com\"\n", 2, 20, "unclosed array"),
    ("version = 1\nversion = 2\n", 2, 1, "duplicate key"),
    ("x = \"abc\n", 1, 9, "string"),
    // unknown keys, with a suggestion
    ("[[rule]]\nprority = 1\n", 2, 1, "did you mean \"priority\""),
    ("[domains]\naccepted = []\nfoo = 1\n", 3, 1, "unknown key \"foo\" in [domains]"),
    ("[[rule]]\nif = { sender_lcation = \"inside\" }\n", 2, 8, "did you mean \"sender_location\""),
    // types
    ("[[connector]]\nname = \"x\"\ncost = \"cheap\"\n", 3, 8, "\"cost\" must be an integer"),
    ("[connector]\nname = \"x\"\n", 1, 1, "write [[connector]]"),
    ("version = 2\n", 1, 11, "version 1"),
    // references
    (
        "[[connector]]\nname = \"a\"\naddress_spaces = [\"*\"]\n[[rule]]\nthen = { use_connector = \"b\" }\n",
        5,
        26,
        "unknown connector \"b\" (known: \"a\")",
    ),
    ("[[rule]]\nif = { sender_group = \"Nobody\" }\n", 2, 23, "unknown group \"Nobody\""),
    ("[[rule]]\nif = { inbound = \"x\" }\n", 2, 18, "unknown inbound connector"),
    ("[cmt]\nfrom_inbound = [\"ghost\"]\n", 2, 17, "unknown inbound connector \"ghost\""),
    // duplicates
    (
        "[[connector]]\nname = \"a\"\naddress_spaces = [\"*\"]\n[[connector]]\nname = \"a\"\naddress_spaces = [\"x.com\"]\n",
        5,
        8,
        "duplicate connector name \"a\" (first on line 2)",
    ),
    ("[[inbound]]\nname = \"i\"\nclient_ips = \"10.0.0.0/8\"\n[[inbound]]\nname = \"i\"\n", 5, 8, "duplicate inbound"),
    // values
    ("[[inbound]]\nname = \"i\"\nclient_ips = [\"10.0.0.0/8\", \"10.1.2.0/33\"]\n", 3, 29, "bad network \"10.1.2.0/33\""),
    ("[[inbound]]\nname = \"i\"\nclient_ips = \"10.0.0.300\"\n", 3, 14, "bad network"),
    ("[[connector]]\nname = \"c\"\naddress_spaces = [\"*.\"]\n", 3, 19, "bad address space"),
    ("[[connector]]\nname = \"c\"\naddress_spaces = [\"a b.com\"]\n", 3, 19, "bad address space"),
    ("[[connector]]\nname = \"c\"\naddress_spaces = [\"*\"]\ntls = \"maybe\"\n", 4, 7, "bad TLS policy"),
    ("[[connector]]\nname = \"c\"\naddress_spaces = [\"*\"]\nsmart_hosts = [\"h.example:0\"]\n", 4, 16, "bad smart host"),
    ("[groups]\nG = [\"nobody\"]\n", 2, 6, "bad address \"nobody\""),
    ("[groups]\nG = [\"a@b@\"]\n", 2, 6, "bad address"),
    ("[domains]\naccepted = [\"a..com\"]\n", 2, 13, "bad domain \"a..com\": empty label"),
    ("[domains]\naccepted = [\"a.com\"]\ndefault = \"b.com\"\n", 3, 11, "not among the accepted"),
    (
        "[[rule]]\nthen = { reject = \"550 4.7.1 No\" }\n",
        2,
        19,
        "the class of 4.7.1 does not match the reply code 550",
    ),
    ("[[rule]]\nthen = { reject = \"250 2.0.0 Fine\" }\n", 2, 19, "4xx or 5xx"),
    ("[[rule]]\nthen = { reject = \"550 5.7.1\" }\n", 2, 19, "text is missing"),
    ("[[rule]]\nthen = { reject = \"550 5.7 No\" }\n", 2, 19, "X.Y.Z"),
    // patterns: the column of the problem inside a literal string
    ("[[rule]]\nif = { header = \"X\", header_value_matches = '(abc' }\n", 2, 46, "unclosed group"),
    ("[[rule]]\nif = { attachment_name_matches = 'a\\p{Nope}' }\n", 2, 36, "Unicode property not found"),
    ("[[rule]]\nif = { attachment_name_matches = '\\bexe\\b' }\n", 2, 35, "(?-u:\\b)"),
    ("[[rule]]\nif = { header_value_matches = 'x' }\n", 2, 8, "needs \"header\""),
    (
        "[[rule]]\nif = { header = \"X\", header_value_matches = '(?i)[a-z]{1,30}x[a-z]{20}' }\n",
        2,
        45,
        "too complex",
    ),
    // rule shape
    ("[[rule]]\nexcept = { header = \"X\" }\n", 2, 10, "except = [{"),
    (
        "[[connector]]\nname = \"a\"\n[[rule]]\nthen = { route_to = \"x.com\", use_connector = \"a\" }\n",
        4,
        30,
        "exclude each other",
    ),
    ("[[rule]]\nthen = { add_header = { \"X-A\" = \"a\\r\\nBcc: x@y.com\" } }\n", 2, 33, "control character"),
    ("[[rule]]\nthen = { remove_header = \"Bad Name\" }\n", 2, 26, "bad header name"),
    ("[[rule]]\nname = \"r\"\n[[rule]]\nname = \"r\"\n", 4, 8, "duplicate rule name"),
    ("[[rule]]\npriority = 0\n", 2, 12, "out of range"),
    // CMT and agents
    ("[cmt]\nenabled = true\n", 2, 1, "CMT needs [domains] default"),
    ("[[agent]]\nname = \"spam_filter\"\n", 2, 8, "unknown agent"),
    ("[limits]\nmax_message_size = \"lots\"\n", 2, 20, "max_message_size"),
    ("[limits]\nmax_recipients = 5000\n", 2, 18, "out of range"),
    // the recipient and sender filters
    ("[recipient_filter]\nvalids = []\n", 2, 1, "did you mean \"valid\""),
    ("[recipient_filter]\nvalid = [\"a@b@\"]\n", 2, 10, "bad address"),
    ("[recipient_filter]\nblocked = [\"*.\"]\n", 2, 12, "bad pattern"),
    ("[recipient_filter]\ncall_ahead = \"nope\"\n", 2, 14, "unknown connector \"nope\""),
    ("[recipient_filter]\ntarpit = \"2 fortnights\"\n", 2, 10, "expected a duration"),
    ("[recipient_filter]\ntarpit = \"2h\"\n", 2, 10, "longer than"),
    ("[recipient_filter]\nmax_unknown = -1\n", 2, 15, "out of range"),
    ("[recipient_filter]\nmax_unknown = 20\n", 2, 15, "out of range"),
    (
        "[[connector]]\nname = \"mx\"\naddress_spaces = [\"*\"]\n[recipient_filter]\ncall_ahead = \"mx\"\n",
        5,
        14,
        "has no smart_hosts",
    ),
    ("[recipient_filter]\ndirectory = \"yes\"\n", 2, 13, "true or false"),
    ("[sender_filter]\naction = \"drop\"\n", 2, 10, "bad action"),
    ("[sender_filter]\nblank_sender = \"maybe\"\n", 2, 16, "bad blank_sender"),
    ("[sender_filter]\nblocked = 3\n", 2, 11, "a string or a list"),
    (
        "[[rule]]\nname = \"r\"\nif = { dmarc = \"softfail\" }\nthen = { add_header = { \"X\" = \"1\" } }\n",
        3,
        16,
        "one of none, pass, fail",
    ),
];

#[test]
fn authentication_conditions_compile_to_result_sets() {
    use crate::engine::policy::{AuthMethod, AuthResult};
    let c = ok(
        "[[rule]]\nname = \"r\"\nif = { dkim = \"pass\", spf = [\"fail\", \"SoftFail\"] }\n\
        then = { add_header = { \"X-Auth\" = \"1\" } }\n",
    );
    let conds: Vec<Condition> = c.table.conditions.iter().copied().collect();
    assert!(
        conds.contains(&Condition::Auth(AuthMethod::Dkim, AuthResult::Pass.bit())),
        "{conds:?}"
    );
    let spf = AuthResult::Fail.bit() | AuthResult::SoftFail.bit();
    assert!(
        conds.contains(&Condition::Auth(AuthMethod::Spf, spf)),
        "{conds:?}"
    );
}

#[test]
fn errors_name_line_and_column() {
    for (text, line, col, want) in ERROR_CASES {
        let e = errs(text);
        assert!(
            e.iter()
                .any(|d| d.line == *line && d.col == *col && d.message.contains(want)),
            "{text:?}: want {line}:{col} {want:?}, got {e:#?}"
        );
    }
}

#[test]
fn every_error_of_a_file_is_reported() {
    let e =
        errs("[domains]\naccepted = [\"a..b\", \"ok.com\", \"-x.com\"]\n[[rule]]\nprority = 1\n");
    assert_eq!(e.len(), 3, "{e:#?}");
    assert!(e
        .windows(2)
        .all(|w| (w[0].line, w[0].col) <= (w[1].line, w[1].col)));
}

// ---- warnings ----------------------------------------------------------

const BASE: &str = concat!(
    "[domains]\naccepted = [\"contoso.com\"]\ndefault = \"contoso.com\"\n",
    "[[inbound]]\nname = \"org\"\nkind = \"organization\"\nclient_ips = \"10.0.0.0/8\"\n",
    "[[inbound]]\nname = \"partner\"\nclient_ips = \"192.0.2.0/24\"\n",
    "[[connector]]\nname = \"internet\"\naddress_spaces = [\"*\"]\n",
);

fn warns_with(extra: &str) -> Vec<String> {
    warnings(&format!("{BASE}{extra}"))
}

fn has(ws: &[String], want: &str) -> bool {
    ws.iter().any(|w| w.contains(want))
}

#[test]
fn the_base_has_no_warning() {
    assert!(warns_with("").is_empty(), "{:?}", warns_with(""));
}

#[test]
fn rules_that_can_never_match() {
    let cases = [
        ("if = { inbound = \"partner\", sender_location = \"inside\" }", "a partner connector"),
        ("if = { inbound = \"org\", sender_location = \"outside\" }", "an organization connector"),
        (
            "if = { recipient_location = \"inside\", recipient_domain = [\"gmail.com\", \"x.org\"] }",
            "no domain of recipient_domain is accepted",
        ),
        (
            "if = { recipient_location = \"outside\", recipient = \"a@contoso.com\" }",
            "every domain of recipient is accepted",
        ),
        ("if = { header = \"X-A\", header_absent = \"x-a\" }", "both present and absent"),
        (
            "if = { header = \"X-A\", header_value_matches = 'a', header_value_not_matches = 'a' }",
            "both match and not match",
        ),
        ("if = { sender_domain = [] }", "empty list"),
        ("except = [{}]", "except set is empty"),
        (
            "if = { header = \"X-A\", sender_location = \"inside\" }\nexcept = [{ sender_location = \"inside\" }]",
            "holds whenever its if does",
        ),
    ];
    for (cond, want) in cases {
        let ws = warns_with(&format!(
            "[[rule]]\nname = \"r\"\n{cond}\nthen = {{ add_header = {{ X-B = \"1\" }} }}\n"
        ));
        assert!(has(&ws, want), "{cond}: want {want:?}, got {ws:?}");
    }
    // and the plausible ones do not warn
    for cond in [
        "if = { inbound = \"org\", sender_location = \"inside\" }",
        "if = { recipient_location = \"inside\", recipient_domain = [\"gmail.com\", \"contoso.com\"] }",
        "if = { header = \"X-A\", header_absent = \"X-B\" }",
        "except = [{ header = \"X-A\" }]",
    ] {
        let ws = warns_with(&format!(
            "[[rule]]\nname = \"r\"\n{cond}\nthen = {{ add_header = {{ X-B = \"1\" }} }}\n"
        ));
        assert!(ws.is_empty(), "{cond}: {ws:?}");
    }
}

#[test]
fn unused_groups_and_unreached_connectors() {
    let ws = warns_with("[groups]\nLonely = [\"a@contoso.com\"]\n");
    assert!(has(&ws, "group \"Lonely\" is not used"), "{ws:?}");
    let ws = warns_with("[[connector]]\nname = \"spare\"\nsmart_hosts = [\"relay.example\"]\n");
    assert!(has(&ws, "connector \"spare\" is never used"), "{ws:?}");
    // named by use_connector: reached
    let ws = warns_with(concat!(
        "[[connector]]\nname = \"spare\"\nsmart_hosts = [\"relay.example\"]\n",
        "[[rule]]\nthen = { use_connector = \"spare\" }\n"
    ));
    assert!(ws.is_empty(), "{ws:?}");
    // the same space at a higher cost: never chosen
    let ws = warns_with(concat!(
        "[[connector]]\nname = \"cheap\"\naddress_spaces = [\"x.com\"]\ncost = 1\n",
        "[[connector]]\nname = \"dear\"\naddress_spaces = [\"x.com\"]\ncost = 5\n",
    ));
    assert!(has(&ws, "connector \"dear\" is never chosen"), "{ws:?}");
    assert!(!has(&ws, "\"cheap\" is never"), "{ws:?}");
    // an accepted domain named exactly beats "--", whatever the costs
    let ws = warns_with(concat!(
        "[[connector]]\nname = \"org\"\naddress_spaces = [\"--\"]\ncost = 1\n",
        "[[connector]]\nname = \"dear\"\naddress_spaces = [\"contoso.com\"]\n",
    ));
    assert!(!has(&ws, "never chosen"), "{ws:?}");
    // the same space and cost: a tie
    let ws = warns_with(concat!(
        "[[connector]]\nname = \"a\"\naddress_spaces = [\"x.com\", \"y.com\"]\n",
        "[[connector]]\nname = \"b\"\naddress_spaces = [\"x.com\"]\n",
    ));
    assert!(
        has(
            &ws,
            "connectors \"a\" and \"b\" both have address space \"x.com\" and cost 10"
        ),
        "{ws:?}"
    );
}

#[test]
fn other_warnings() {
    let rule = "then = { add_header = { X-B = \"1\" } }\n";
    let ws = warns_with(&format!(
        "[[rule]]\nname = \"a\"\npriority = 3\n{rule}[[rule]]\nname = \"b\"\npriority = 3\n{rule}"
    ));
    assert!(
        has(&ws, "rules \"a\" and \"b\" have the same priority 3"),
        "{ws:?}"
    );
    let ws = warns_with("[[rule]]\nname = \"idle\"\nif = { header = \"X\" }\n");
    assert!(has(&ws, "has no action"), "{ws:?}");
    let ws = warns_with("[[inbound]]\nname = \"nobody\"\n");
    assert!(has(&ws, "attributes no session"), "{ws:?}");
    let ws = warns_with("[connection_filter]\nblocked_networks = \"10.1.2.3/8\"\n");
    assert!(has(&ws, "the network is 10.0.0.0/8"), "{ws:?}");
    let ws = warns_with("[cmt]\nenabled = true\n");
    assert!(has(&ws, "never applies"), "{ws:?}");
    let ws = warns_with("[cmt]\nfrom_inbound = [\"org\"]\n");
    assert!(has(&ws, "not enabled"), "{ws:?}");
    let ws = warns_with(
        "[[rewrite]]\ndirection = \"inbound\"\nmap = { \"a@contoso.com\" = \"a@contoso.com\" }\n",
    );
    assert!(has(&ws, "rewritten to itself"), "{ws:?}");
    let ws = warns_with("[[agent]]\nname = \"cmt\"\npriority = 1\n");
    assert!(has(&ws, "same priority 1"), "{ws:?}");
    let ws = warnings("[[rule]]\nthen = { route_to = \"nowhere.example\" }\n");
    assert!(has(&ws, "no connector's address space covers it"), "{ws:?}");
    let ws = warns_with("[[rule]]\nif = { header = \"X\", header_value_matches = '(?i)\\w+@\\w+' }\nthen = { add_header = { X-B = \"1\" } }\n");
    assert!(has(&ws, "large DFA"), "{ws:?}");
}

#[test]
fn cmt_from_an_anonymous_connector_warns_when_the_firewall_strips_the_stamp() {
    let want = "[cmt] from_inbound \"partner\" is not an organization connector: its mail is \
                anonymous, so the header firewall strips the stamp \
                \"X-MS-Exchange-Organization-CentralizedMailFlowOverrideSet\" (trusted prefix \
                \"X-MS-Exchange-Organization-\") and a message from it is stamped and \
                re-routed again on every pass";
    let cmt = "[cmt]\nenabled = true\nfrom_inbound = [\"org\", \"partner\"]\n";
    // the default firewall (no section): warned, on the name in from_inbound
    let c = ok(&format!("{BASE}{cmt}"));
    let w: Vec<&Diag> = c.warnings.iter().filter(|d| d.message == want).collect();
    assert_eq!(w.len(), 1, "{:?}", c.warnings);
    assert_eq!((w[0].line, w[0].col), (16, 24), "{:?}", w[0]);
    assert_eq!(
        c.warnings.len(),
        1,
        "only partner, not org: {:?}",
        c.warnings
    );
    // an explicit prefix covering the stamp, in another case: warned
    let ws = warns_with(&format!(
        "{cmt}[header_firewall]\ntrusted_prefixes = [\"x-ms-exchange-\"]\n"
    ));
    assert!(
        has(&ws, "from_inbound \"partner\" is not an organization"),
        "{ws:?}"
    );
    // the stamp survives: no warning
    for extra in [
        // a section without trusted_prefixes strips nothing
        "[header_firewall]\nrename_untrusted = { \"X-A\" = \"X-B\" }\n",
        // a prefix that does not cover the stamp
        "[header_firewall]\ntrusted_prefixes = [\"X-Other-\"]\n",
        // a stamp header outside the trusted prefix
        "[header_firewall]\ntrusted_prefixes = [\"X-MS-Exchange-Organization-\"]\n",
        // the firewall disabled
        "[[agent]]\nname = \"header_firewall\"\nenabled = false\n",
        // CMT disabled as an agent
        "[[agent]]\nname = \"cmt\"\nenabled = false\n",
    ] {
        let text = if extra.contains("X-MS-Exchange-Organization-\"]") {
            format!("{BASE}{}stamp_header = \"X-Cmt-Stamp\"\n{extra}", cmt)
        } else {
            format!("{BASE}{cmt}{extra}")
        };
        let ws = warnings(&text);
        assert!(
            !has(&ws, "is not an organization connector"),
            "{extra}: {ws:?}"
        );
    }
    // CMT not enabled, or only organization connectors: no warning
    let ws = warns_with("[cmt]\nenabled = false\nfrom_inbound = [\"partner\"]\n");
    assert!(!has(&ws, "is not an organization connector"), "{ws:?}");
    let ws = warns_with("[cmt]\nenabled = true\nfrom_inbound = [\"org\"]\n");
    assert!(ws.is_empty(), "{ws:?}");
}

// ---- capacities --------------------------------------------------------

#[test]
fn too_many_rules_names_the_capacity() {
    let mut text = String::new();
    for i in 0..=MAX_RULES {
        text.push_str(&format!(
            "[[rule]]\nname = \"r{i}\"\nthen = {{ add_header = {{ X-N = \"{i}\" }} }}\n"
        ));
    }
    let e = errs(&text);
    assert_eq!(e.len(), 1, "{e:#?}");
    assert_eq!(e[0].message, "too many rules (1025 > 1024, MAX_RULES)");
    assert_eq!(e[0].line, 3 * MAX_RULES + 2, "at the 1025th rule's name");
    // exactly at capacity compiles
    let at_cap: String = text
        .lines()
        .take(3 * MAX_RULES)
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(ok(&at_cap).table.rules.len(), MAX_RULES);
}

#[test]
fn other_capacities_are_errors_not_panics() {
    let mut text = String::from("[groups]\n");
    for i in 0..=MAX_GROUPS {
        text.push_str(&format!("g{i} = \"a@b{i}.com\"\n"));
    }
    assert!(errs(&text).iter().any(|d| d.message.contains("MAX_GROUPS")));
    let mut text = String::new();
    for i in 0..=MAX_INBOUND {
        text.push_str(&format!(
            "[[inbound]]\nname = \"i{i}\"\nclient_ips = \"10.0.0.{i}\"\n"
        ));
    }
    assert!(errs(&text)
        .iter()
        .any(|d| d.message.contains("MAX_INBOUND")));
    let mut text = String::from("[domains]\naccepted = [\n");
    for i in 0..=MAX_ITEMS {
        text.push_str(&format!("\"d{i}.example\",\n"));
    }
    text.push_str("]\n");
    let e = errs(&text);
    assert!(
        e.iter().any(|d| d
            .message
            // one more than the domains: the default header firewall's
            // trusted prefix (no [header_firewall] section)
            .contains("too many list items (4098 > 4096, MAX_ITEMS)")),
        "{e:?}"
    );
    let long = "x".repeat(60);
    let mut text = String::from("[domains]\naccepted = [\n");
    for i in 0..1200 {
        text.push_str(&format!("\"{long}.d{i}.example\",\n"));
    }
    text.push_str("]\n");
    assert!(errs(&text)
        .iter()
        .any(|d| d.message.contains("MAX_STRING_BYTES")));
    let mut text = String::new();
    for i in 0..2 {
        text.push_str(&format!(
            "[[rule]]\nif = {{ header = \"X\", header_value_matches = '(?i)\\w+@\\w+\\.c{i}' }}\nthen = {{ add_header = {{ X-N = \"1\" }} }}\n"
        ));
    }
    let e = errs(&text);
    assert!(
        e.iter().any(|d| d.message.contains("MAX_DFA_BYTES")),
        "{e:?}"
    );
    let mut text = String::new();
    for i in 0..=MAX_DFAS {
        text.push_str(&format!(
            "[[rule]]\nif = {{ attachment_name_matches = '^x{i}$' }}\nthen = {{ reject = \"550 5.7.1 No\" }}\n"
        ));
    }
    let e = errs(&text);
    assert!(
        e.iter()
            .any(|d| d.message == "too many patterns (257 > 256, MAX_DFAS)"),
        "{e:?}"
    );
}

// ---- no panics ---------------------------------------------------------

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    let deep = format!("a = {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
    assert!(!errs(&deep).is_empty());
    let deep = format!("a = {}1{}\n", "{ b = ".repeat(50_000), " }".repeat(50_000));
    assert!(!errs(&deep).is_empty());
    let pat = format!(
        "[[rule]]\nif = {{ attachment_name_matches = '{}a{}' }}\n",
        "(".repeat(5000),
        ")".repeat(5000)
    );
    assert!(errs(&pat).iter().any(|d| d.message.contains("bad pattern")));
}

#[test]
fn a_report_with_errors_and_warnings() {
    let text = "[domains]\naccepted = [\"a.com\"]\n[groups]\nG = \"x@a.com\"\n[[rule]]\nprority = 1\nthen = { reject = \"550 5.7.1 No\" }\n";
    let o = run(text, None);
    let out = report("f.toml", &o);
    assert!(out.contains("not compiled: 1 error\n"), "{out}");
    let tail: Vec<&str> = out.lines().skip(CAPS.len() + 1).collect();
    assert_eq!(
        tail,
        [
            "f.toml:4:1: warning: group \"G\" is not used by any rule",
            "f.toml:6:1: error: unknown key \"prority\" in [[rule]] (did you mean \"priority\"?)",
        ],
        "{out}"
    );
    println!("{out}");
}

use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,300}") {
        let _ = compile(&text);
    }

    #[test]
    fn toml_shaped_text_never_panics(
        lines in proptest::collection::vec(
            "(\\[\\[?(rule|connector|inbound|agent|rewrite)\\]\\]?|[a-z_]{1,12} = (\"[ -~]{0,12}\"|[0-9]{1,3}|true|\\[\"[a-z*.@-]{0,10}\"\\]|\\{ [a-z_]{1,10} = \"[ -~]{0,8}\" \\}))",
            0..20,
        )
    ) {
        let _ = compile(&lines.join("\n"));
    }

    #[test]
    fn mutated_samples_never_panic(
        edits in proptest::collection::vec((0usize..4000, 0usize..6, "[ -~\n]{0,4}"), 1..4)
    ) {
        let mut text = SAMPLE.to_string();
        for (at, del, ins) in edits {
            let mut at = at % (text.len() + 1);
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            let mut end = (at + del).min(text.len());
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.replace_range(at..end, &ins);
        }
        match compile(&text) {
            Ok(c) => {
                prop_assert!(c.table.validate().is_ok());
                prop_assert_eq!(c.blob, encode(&c.table));
            }
            Err(e) => prop_assert!(!e.is_empty() && e.iter().all(|d| d.line >= 1 && d.col >= 1)),
        }
    }
}

#[test]
fn the_recipient_and_sender_filters_compile() {
    let c = ok(concat!(
        "[domains]\naccepted = [\"contoso.com\"]\n",
        "[[connector]]\nname = \"exchange\"\naddress_spaces = [\"--\"]\nsmart_hosts = [\"10.0.0.5\"]\n",
        "[recipient_filter]\nvalid = [\"Jaap@Contoso.com\", \"*.EU.contoso.com\", \"sales.contoso.com\"]\n",
        "blocked = [\"ceo@contoso.com\"]\ndirectory = true\ncall_ahead = \"exchange\"\n",
        "tarpit = \"1500ms\"\nmax_unknown = 10\ncall_ahead_timeout = \"3s\"\n",
        "call_ahead_valid_ttl = \"2h\"\ncall_ahead_unknown_ttl = \"5m\"\n",
        "[sender_filter]\nblocked = [\"spam.example\", \"*.bulk.example\", \"x@y.example\"]\n",
        "action = \"stamp\"\nblank_sender = \"reject\"\n",
    ));
    let t = &c.table;
    let r = &t.recipient_filter;
    assert_eq!(
        list(t, r.valid),
        ["Jaap@contoso.com", "*.eu.contoso.com", "sales.contoso.com"]
    );
    assert_eq!(list(t, r.blocked), ["ceo@contoso.com"]);
    assert!(r.directory);
    assert_eq!(r.call_ahead, Some(0));
    assert_eq!((r.tarpit_ms, r.max_unknown), (1500, 10));
    assert_eq!(
        (r.call_ahead_timeout, r.valid_ttl, r.unknown_ttl),
        (3, 7200, 300)
    );
    let sf = &t.sender_filter;
    assert_eq!(
        list(t, sf.blocked),
        ["spam.example", "*.bulk.example", "x@y.example"]
    );
    assert!(sf.stamp && sf.reject_blank);
    assert_eq!(s(t, sf.stamp_name), crate::engine::policy::SENDER_STAMP);
    // defaults
    let c = ok("[recipient_filter]\n[sender_filter]\n");
    let r = &c.table.recipient_filter;
    assert_eq!((r.tarpit_ms, r.max_unknown, r.call_ahead), (0, 0, None));
    assert_eq!(
        (r.call_ahead_timeout, r.valid_ttl, r.unknown_ttl),
        (10, 86400, 3600)
    );
    assert!(!c.table.sender_filter.stamp && !c.table.sender_filter.reject_blank);
}

#[test]
fn the_recipient_filter_can_be_disabled_and_timeouts_without_call_ahead_warn() {
    let c = ok("[[agent]]\nname = \"recipient_filter\"\nenabled = false\n");
    assert!(!c.table.enabled(Agent::RecipientFilter));
    let ws = warnings("[recipient_filter]\ncall_ahead_timeout = \"3s\"\n");
    assert!(
        ws.iter()
            .any(|w| w.contains("no effect without call_ahead")),
        "{ws:?}"
    );
}

#[test]
fn an_inbound_connector_names_its_milters() {
    let base = "version = 1\n[domains]\naccepted = [\"contoso.com\"]\n\
                [[inbound]]\nname = \"org\"\nkind = \"organization\"\nclient_ips = [\"10.0.0.0/8\"]\n";
    let c = ok(&format!("{base}milters = [\"rspamd\", \"dkim\"]\n"));
    let t = &c.table;
    assert_eq!(t.inbound[0].milters.map(|m| s(t, m)), Some("rspamd,dkim"));
    let none = ok(base);
    assert_eq!(none.table.inbound[0].milters, None, "absent: every milter");
    let e = errs(&format!("{base}milters = [\"no way\"]\n"));
    assert_eq!((e[0].line, e[0].col), (8, 12), "{e:?}");
    assert!(e[0].message.contains("not a milter name"), "{e:?}");
}

#[test]
fn authenticated_as_is_a_list_of_logins() {
    let c = ok(r#"
[[rule]]
name = "scanner"
if = { authenticated_as = ["Scanner", "*"] }
then = { add_header = { "X-Scanner" = "yes" } }
"#);
    let t = &c.table;
    let Condition::AuthenticatedAs(l) = conds_of(t, t.rules[0].when)[0] else {
        panic!("{:?}", conds_of(t, t.rules[0].when));
    };
    assert_eq!(list(t, l), ["Scanner", "*"]);
    let e = errs("[[rule]]\nif = { authenticated_as = [\"bad login\"] }\n");
    assert_eq!((e[0].line, e[0].col), (2, 28), "{e:?}");
    assert!(e[0].message.contains("not a login name"), "{e:?}");
    let w = warnings("[[rule]]\nif = { authenticated_as = [] }\n");
    assert!(w.iter().any(|m| m.contains("empty list")), "{w:?}");
}
