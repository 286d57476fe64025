//! Running the policy on a message: the installed [`Policy`] (table and
//! loaded DFAs) and [`decide`], which runs the engine's pipeline on a
//! message's envelope and header block. `sluice trace` and the daemon both
//! call [`decide`], so a trace shows exactly what the daemon would do;
//! [`render`] turns what the engine decided into the
//! [`Outcome`].

use super::mime::attachment_names;
use super::render::{self, Collect, Outcome};
use crate::engine::header;
use crate::engine::policy::{self, Agent, Attribution, Patterns, Table, TableError};
use regex_automata::dfa::Automaton;
use std::net::IpAddr;

/// The embedded default policy, used when the config names no rule file:
/// loopback clients are the organisation (they may relay), everything
/// leaves by MX lookup. So `sluice run` works on a fresh machine without
/// becoming an open relay: it listens on loopback only.
pub const DEFAULT_RULES: &str = r#"
version = 1
[[inbound]]
name = "loopback"
kind = "organization"
client_ips = ["127.0.0.0/8", "::1/128"]

[[connector]]
name = "internet"
address_spaces = ["*"]
"#;

/// An installed policy: the validated table and its patterns' DFAs, each
/// validated once here rather than on every match.
pub struct Policy {
    /// The compiled table.
    pub table: Box<Table>,
    /// The table's patterns, loaded once.
    dfas: Vec<regex_automata::dfa::sparse::DFA<Vec<u8>>>,
    /// Whether any rule looks at attachment names: if none does, messages
    /// are not MIME-parsed at all.
    pub needs_attachments: bool,
}

impl Policy {
    /// The milters inbound connector `i` names (`None`: every one).
    pub fn inbound_milters(&self, i: u16) -> Option<Vec<String>> {
        let ib = self.table.inbound.get(usize::from(i))?;
        let list = self.table.str(ib.milters?);
        Some(
            String::from_utf8_lossy(list)
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
        )
    }

    /// Validates `table` and loads its DFAs.
    pub fn new(table: Box<Table>) -> Result<Policy, TableError> {
        table.validate()?;
        let dfas = (0..table.dfas.len())
            .map(|i| {
                table
                    .dfa(i as u16)
                    .map(|d| d.to_owned())
                    .ok_or(TableError::BadPattern(i as u16))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let needs_attachments = table.enabled(Agent::TransportRules)
            && table
                .conditions
                .iter()
                .any(|c| matches!(c, policy::Condition::AttachmentMatches(_)));
        Ok(Policy {
            table,
            dfas,
            needs_attachments,
        })
    }
}

impl Patterns for Policy {
    fn is_match(&self, dfa: u16, hay: &[u8]) -> bool {
        self.dfas.get(usize::from(dfa)).is_some_and(|d| {
            matches!(
                d.try_search_fwd(&regex_automata::Input::new(hay)),
                Ok(Some(_))
            )
        })
    }
}

/// An IP address as the engine wants it: 16 octets, IPv4-mapped for IPv4.
pub fn ip16(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The header block of `msg` (up to and including the blank line).
pub fn header_block(msg: &[u8]) -> &[u8] {
    let end = header::end_of_headers(msg, true).unwrap_or(msg.len());
    msg.get(..end).unwrap_or(msg)
}

/// Who sends to whom, from where: the envelope the pipeline decides on.
#[derive(Debug, Clone, Copy)]
pub struct Arrival<'a> {
    /// The session's attribution.
    pub attribution: Attribution,
    /// The client's address.
    pub client: IpAddr,
    /// The envelope sender (empty for `<>`).
    pub sender: &'a [u8],
    /// The recipients, in order.
    pub rcpts: &'a [&'a [u8]],
    /// The directory the session began with, if one is installed (inbound
    /// rewriting of secondary addresses).
    pub directory: Option<&'a crate::shell::directory::Directory>,
    /// The recipient filter's RCPT-time answers per recipient (a trace);
    /// `None` in a session, whose recipients passed it at RCPT.
    pub rcpt_checks: Option<&'a [crate::engine::policy::RcptCheck]>,
    /// The sender authentication verdicts (`None`: not checked).
    pub auth: Option<crate::engine::policy::AuthVerdicts>,
    /// The SMTP AUTH login of the session, if it authenticated
    /// (`authenticated_as`).
    pub login: Option<&'a str>,
}

/// Runs the pipeline for `msg`, as the daemon does at the end of DATA, and
/// renders the outcome.
pub fn decide(p: &Policy, env: &Arrival<'_>, msg: &[u8]) -> Outcome {
    let names = if p.needs_attachments {
        attachment_names(msg)
    } else {
        Vec::new()
    };
    decide_with(p, env, msg, names, msg.len() as u64)
}

/// [`decide`] for a message too large to hold whole: `head` holds at least
/// its header block, `names` its attachment names, `size` its real size.
pub fn decide_with(
    p: &Policy,
    env: &Arrival<'_>,
    head: &[u8],
    names: Vec<Vec<u8>>,
    size: u64,
) -> Outcome {
    let (attribution, client, sender, rcpts, msg) =
        (env.attribution, env.client, env.sender, env.rcpts, head);
    let t: &Table = &p.table;
    let name_refs: Vec<&[u8]> = names.iter().map(|n| n.as_slice()).collect();
    let headers = header_block(msg);
    let m = policy::Message {
        attribution,
        client_ip: ip16(client),
        sender,
        headers,
        attachments: &name_refs,
        size,
        directory: env.directory.map(|d| d.view()),
        rcpt_checks: env.rcpt_checks,
        auth: env.auth,
        login: env.login.map_or(&[][..], str::as_bytes),
    };
    let dir = env.directory.map_or(&[][..], |d| d.bytes());
    let mut c = Collect::new(t, dir, headers, rcpts, sender);
    let verdict = policy::evaluate_with(t, p, &m, rcpts, &mut c);
    render::render(&c, verdict)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shell::policy::mime::MIME_SAMPLE;
    use crate::shell::policy::render::HeaderEdit;
    use crate::shell::relay::splice::splice;
    use proptest::prelude::*;

    fn sample() -> (Policy, Vec<u8>) {
        let c = crate::shell::policy::compile::compile(include_str!("../../../config/rules.toml"))
            .expect("sample");
        let blob = c.blob.clone();
        (Policy::new(c.table).expect("policy"), blob)
    }

    /// Decodes on a big stack: the table passes through it by value.
    fn from_blob(blob: Vec<u8>) -> Policy {
        std::thread::Builder::new()
            .stack_size(32 << 20)
            .spawn(move || {
                Policy::new(Box::new(Table::from_blob(&blob).expect("blob"))).expect("policy")
            })
            .expect("thread")
            .join()
            .expect("join")
    }

    fn digest(o: &Outcome) -> String {
        format!(
            "{} {:?} {:?} {:?} {:?} {}",
            o.result,
            o.reply,
            o.recipients
                .iter()
                .map(|r| (
                    &r.final_addr,
                    &r.connector,
                    &r.next_hop,
                    r.route,
                    &r.rejected
                ))
                .collect::<Vec<_>>(),
            o.edits,
            o.log,
            o.sender
        )
    }

    #[test]
    fn the_log_names_the_attachments_a_rule_looks_at() {
        let (direct, _) = sample();
        let run = |peer: &str, msg: &[u8]| {
            let ip: IpAddr = peer.parse().expect("ip");
            let rc: [&[u8]; 1] = [b"user@contoso.com"];
            let env = Arrival {
                attribution: policy::attribute(&direct.table, &ip16(ip), None),
                client: ip,
                sender: b"a@example.org",
                rcpts: &rc,
                directory: None,
                rcpt_checks: None,
                auth: None,
                login: None,
            };
            decide(&direct, &env, msg).log
        };
        let r5 = "OnResolvedMessage transport_rules: Rule #5 (Refuse executables from outside). ";
        let log = run("192.0.2.1", MIME_SAMPLE);
        // MIME's one attachment part: filename* (RFC 2231) wins over name
        let names: Vec<&str> = log
            .iter()
            .map(String::as_str)
            .filter(|l| l.contains("Attachment ["))
            .collect();
        assert_eq!(
            names,
            ["OnResolvedMessage transport_rules: Attachment [invoice one.SCR]"],
            "{log:#?}"
        );
        let found = format!("{r5}Found attachment [invoice one.SCR]");
        assert!(log.contains(&found), "{log:#?}");
        // no attachment at all
        let log = run("192.0.2.1", b"Subject: x\r\n\r\nb\r\n");
        assert!(
            log.iter()
                .any(|l| l == "OnResolvedMessage transport_rules: No attachment."),
            "{log:#?}"
        );
        // from inside, rule #5 stops at sender_location: no attachment lines
        let log = run("127.0.0.1", MIME_SAMPLE);
        assert!(!log.iter().any(|l| l.contains("ttachment")), "{log:#?}");
    }

    #[test]
    fn the_blob_decides_exactly_like_the_compiled_table() {
        let (direct, blob) = sample();
        let decoded = from_blob(blob);
        assert_eq!(*decoded.table, *direct.table);
        let cases: [(&str, &str, &[&str], &[u8]); 5] = [
            ("127.0.0.1", "jaap@contoso.com", &["x@gmail.com", "b@secure.com", "c@contoso.com"], b"X-RoutethroughTM: On\r\nSubject: a\r\n\r\nb\r\n"),
            ("127.0.0.2", "user@contoso.com", &["x@gmail.com", "y@contoso.com"], b"Subject: cmt\r\n\r\nb\r\n"),
            ("192.0.2.1", "a@example.org", &["johnny@contoso.com", "x@gmail.com"], b"To: johnny@contoso.com\r\nX-MS-Exchange-Organization-SCL: 1\r\nX-Forefront-Antispam-Report: x\r\n\r\nb\r\n"),
            ("127.0.0.1", "ceo@contoso.com", &["x@fabrikam.com", "y@eu.fabrikam.com"], b"Subject: j\r\n\r\nb\r\n"),
            ("192.0.2.1", "a@example.org", &["user@contoso.com"], b"Content-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\nContent-Disposition: attachment; filename=a.exe\r\n\r\nx\r\n--B--\r\n"),
        ];
        for (peer, from, rcpts, msg) in cases {
            let ip: IpAddr = peer.parse().expect("ip");
            let rc: Vec<&[u8]> = rcpts.iter().map(|r| r.as_bytes()).collect();
            let a1 = policy::attribute(&direct.table, &ip16(ip), None);
            let a2 = policy::attribute(&decoded.table, &ip16(ip), None);
            assert_eq!(a1, a2);
            let o1 = decide(
                &direct,
                &Arrival {
                    attribution: a1,
                    client: ip,
                    sender: from.as_bytes(),
                    rcpts: &rc,
                    directory: None,
                    rcpt_checks: None,
                    auth: None,
                    login: None,
                },
                msg,
            );
            let o2 = decide(
                &decoded,
                &Arrival {
                    attribution: a2,
                    client: ip,
                    sender: from.as_bytes(),
                    rcpts: &rc,
                    directory: None,
                    rcpt_checks: None,
                    auth: None,
                    login: None,
                },
                msg,
            );
            assert_eq!(digest(&o1), digest(&o2));
            // And the engine's own pattern path (DFAs loaded per match) agrees too.
            let mut c = Collect::new(&direct.table, &[], header_block(msg), &rc, from.as_bytes());
            let names = attachment_names(msg);
            let refs: Vec<&[u8]> = names.iter().map(|n| n.as_slice()).collect();
            let m = policy::Message {
                attribution: a1,
                client_ip: ip16(ip),
                sender: from.as_bytes(),
                headers: header_block(msg),
                attachments: &refs,
                size: msg.len() as u64,
                directory: None,
                rcpt_checks: None,
                auth: None,
                login: b"",
            };
            let v = policy::evaluate(&direct.table, &m, &rc, &mut c);
            assert_eq!(digest(&render::render(&c, v)), digest(&o1));
        }
    }

    fn outcome(rules: &str, peer: &str, from: &str, rcpts: &[&str], msg: &[u8]) -> Outcome {
        let c = crate::shell::policy::compile::compile(rules).expect("rules");
        let p = Policy::new(c.table).expect("policy");
        let ip: IpAddr = peer.parse().expect("ip");
        let rc: Vec<&[u8]> = rcpts.iter().map(|r| r.as_bytes()).collect();
        let env = Arrival {
            attribution: policy::attribute(&p.table, &ip16(ip), None),
            client: ip,
            sender: from.as_bytes(),
            rcpts: &rc,
            directory: None,
            rcpt_checks: None,
            auth: None,
            login: None,
        };
        decide(&p, &env, msg)
    }

    #[test]
    fn the_directory_rewrites_secondaries_inbound_and_a_rewrite_entry_wins() {
        let sample = include_str!("../../../config/rules.toml");
        let c = crate::shell::policy::compile::compile(sample).expect("rules");
        let p = Policy::new(c.table).expect("policy");
        let d = crate::shell::directory::Directory::from_export(
            "mail,proxyAddresses\n\
             anna@eu.contoso.com,smtp:Anna@contoso.com\n\
             johnny@dir.contoso.com,smtp:johnny@contoso.com\n",
        )
        .expect("directory");
        let rc: Vec<&[u8]> = vec![
            b"ANNA@contoso.com",
            b"johnny@contoso.com",
            b"bob@contoso.com",
        ];
        let msg = b"To: anna@contoso.com\r\nSubject: a\r\n\r\nb\r\n";
        let run = |ip: &str, directory| {
            let ip: IpAddr = ip.parse().expect("ip");
            let env = Arrival {
                attribution: policy::attribute(&p.table, &ip16(ip), None),
                client: ip,
                sender: b"x@outside.example",
                rcpts: &rc,
                directory,
                rcpt_checks: None,
                auth: None,
                login: None,
            };
            decide(&p, &env, msg)
        };
        let o = run("192.0.2.1", Some(&d));
        let finals: Vec<&str> = o.recipients.iter().map(|r| r.final_addr.as_str()).collect();
        assert_eq!(
            finals,
            [
                "anna@eu.contoso.com",
                "johnny@eu.contoso.com",
                "bob@contoso.com"
            ],
            "the [[rewrite]] entry for johnny wins over the directory"
        );
        assert!(
            o.log
                .iter()
                .any(|l| l
                    .contains("Recipient rewritten to [anna@eu.contoso.com] by the directory.")),
            "{:#?}",
            o.log
        );
        assert!(
            o.edits
                .iter()
                .any(|e| format!("{e:?}").contains("anna@eu.contoso.com")),
            "the To: field too: {:?}",
            o.edits
        );
        // Without a directory nothing of it is rewritten.
        let o = run("192.0.2.1", None);
        assert_eq!(o.recipients[0].final_addr, "ANNA@contoso.com");
        // `[[agent]] name = "inbound_rewrite" enabled = false` switches the
        // directory's rewriting off too.
        let off = format!("{sample}\n[[agent]]\nname = \"inbound_rewrite\"\nenabled = false\n");
        let p = Policy::new(
            crate::shell::policy::compile::compile(&off)
                .expect("rules")
                .table,
        )
        .expect("policy");
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        let env = Arrival {
            attribution: policy::attribute(&p.table, &ip16(ip), None),
            client: ip,
            sender: b"x@outside.example",
            rcpts: &rc,
            directory: Some(&d),
            rcpt_checks: None,
            auth: None,
            login: None,
        };
        let o = decide(&p, &env, msg);
        assert_eq!(o.recipients[0].final_addr, "ANNA@contoso.com");
        assert!(o.edits.is_empty() || !format!("{:?}", o.edits).contains("anna@eu.contoso.com"));
    }

    #[test]
    fn the_sender_stamp_is_seen_by_rules_and_a_forged_one_is_not() {
        let rules = concat!(
            "[domains]\naccepted = [\"contoso.com\"]\n",
            "[[inbound]]\nname = \"org\"\nkind = \"organization\"\nclient_ips = \"10.0.0.0/8\"\n",
            "[[connector]]\nname = \"all\"\naddress_spaces = [\"*\"]\n",
            "[sender_filter]\nblocked = [\"spam.example\"]\naction = \"stamp\"\n",
            "[[rule]]\nname = \"Flag\"\nif = { header = \"X-Sluice-Sender-Filter\" }\n",
            "then = { add_header = { \"X-Flag\" = \"yes\" } }\n",
        );
        let added = |o: &Outcome| -> Vec<String> {
            o.edits
                .iter()
                .filter_map(|(_, e)| match e {
                    HeaderEdit::Add { name, .. } => Some(name.clone()),
                    _ => None,
                })
                .collect()
        };
        let plain = b"From: a@ok.example\r\n\r\nb\r\n";
        let forged = b"X-Sluice-Sender-Filter: blocked\r\nFrom: a@ok.example\r\n\r\nb\r\n";
        let to = ["u@contoso.com"];
        let o = outcome(rules, "192.0.2.1", "x@spam.example", &to, plain);
        assert_eq!(added(&o), ["X-Sluice-Sender-Filter", "X-Flag"]);
        let o = outcome(rules, "192.0.2.1", "a@ok.example", &to, forged);
        assert!(added(&o).is_empty(), "{:?}", o.edits);
        assert!(o
            .edits
            .iter()
            .any(|(a, e)| *a == Agent::SenderFilter && matches!(e, HeaderEdit::Remove { .. })));
        // From inside the header is the organisation's own: kept and seen.
        let o = outcome(rules, "10.0.0.1", "a@ok.example", &to, forged);
        assert_eq!(added(&o), ["X-Flag"]);
    }

    #[test]
    fn the_first_agent_of_resolved_message_to_route_a_recipient_keeps_it() {
        let sample = include_str!("../../../config/rules.toml");
        let swapped = format!("{sample}\n[[agent]]\nname = \"transport_rules\"\npriority = 3\n");
        let msg = b"X-RoutethroughTM: On\r\nSubject: a\r\n\r\nb\r\n";
        let rcpt = ["x@gmail.com"];
        let o = outcome(sample, "127.0.0.2", "a@contoso.com", &rcpt, msg);
        assert_eq!(o.recipients[0].route, Some("route_to"));
        assert!(o.edits.is_empty());
        let o = outcome(&swapped, "127.0.0.2", "a@contoso.com", &rcpt, msg);
        assert_eq!(o.recipients[0].route, Some("cmt"));
        assert_eq!(o.recipients[0].connector.as_deref(), Some("onprem"));
        assert_eq!(o.edits.len(), 1, "stamped");
        // A rule's reject still wins when CMT ran first, and a refused
        // recipient leaves no stamp.
        let reject = format!(
            "{swapped}\n[[rule]]\nname = \"No gmail\"\nif = {{ recipient_domain = [\"gmail.com\"] }}\nthen = {{ reject = \"550 5.7.1 No\" }}\n"
        );
        let o = outcome(
            &reject,
            "127.0.0.2",
            "a@contoso.com",
            &rcpt,
            b"Subject: a\r\n\r\nb\r\n",
        );
        assert_eq!(o.result, "Rejected");
        assert!(o.recipients[0].rejected.is_some() && o.recipients[0].route.is_none());
        assert!(o.edits.is_empty(), "{:?}", o.edits);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        #[test]
        fn the_pipeline_never_panics(
            headers in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..80), 0..12),
            rcpts in proptest::collection::vec("[a-z@.]{0,20}", 0..5),
            from in "[a-z@.]{0,20}",
            peer in prop_oneof![Just("127.0.0.1"), Just("127.0.0.2"), Just("192.0.2.1"), Just("::1")],
        ) {
            let (p, _) = sample();
            let mut msg = Vec::new();
            for (i, h) in headers.iter().enumerate() {
                let name: &[u8] = [&b"X-RoutethroughTM"[..], b"To", b"Received", b"X-MS-Exchange-Organization-Foo", b"X-OriginatorOrg"][i % 5];
                msg.extend_from_slice(name);
                msg.extend_from_slice(b": ");
                msg.extend_from_slice(h);
                msg.extend_from_slice(b"\r\n");
            }
            msg.extend_from_slice(b"\r\nbody\r\n");
            let ip: IpAddr = peer.parse().expect("ip");
            let rc: Vec<&[u8]> = rcpts.iter().map(|r| r.as_bytes()).collect();
            let a = policy::attribute(&p.table, &ip16(ip), None);
            let o = decide(&p, &Arrival { attribution: a, client: ip, sender: from.as_bytes(), rcpts: &rc, directory: None, rcpt_checks: None, auth: None, login: None }, &msg);
            let all: Vec<&HeaderEdit> = o.edits.iter().map(|(_, e)| e).collect();
            let spliced = splice(&msg, &all);
            prop_assert!(spliced.ends_with(b"\r\nbody\r\n"));
        }
    }
}
