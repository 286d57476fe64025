//! Hybrid mail flow in the rule file: `[cross_premises]` (the header pair
//! of cross-premises promotion and demotion, Exchange's by default) and a
//! send connector's `cross_premises` and `tls_certificate` keys; the
//! check of `tls_certificate` names against the appliance config's
//! `[[tls.client]]` certificates.

use super::cx::{get_bool, get_str, get_strs, get_table, Cx, Fields, Val, S};
use super::emit::Builder;
use super::model::Model;
use super::syntax::header_name;

/// The organisation headers' prefix (seed 002): what the header firewall
/// strips from anonymous mail and demotion copies.
pub(super) const DEFAULT_ORGANIZATION_PREFIX: &str = "X-MS-Exchange-Organization-";
/// The prefix Exchange carries organisation headers under across premises.
pub(super) const DEFAULT_CROSS_PREMISES_PREFIX: &str = "X-MS-Exchange-CrossPremises-";
/// The header naming the originating organisation (seed 002: CBR's
/// exception and the loop checks rely on it).
pub(super) const DEFAULT_ORIGINATOR_HEADER: &str = "X-OriginatorOrg";

/// `[cross_premises]` as given, defaults filled in.
pub(super) struct CrossPremisesM {
    /// `organization_prefix`.
    pub(super) organization: String,
    /// `cross_premises_prefix`.
    pub(super) cross_premises: String,
    /// `headers`: names after the prefix; empty (or `["*"]`): every one.
    pub(super) headers: Vec<String>,
    /// `originator_header`.
    pub(super) originator: String,
}

impl Default for CrossPremisesM {
    fn default() -> Self {
        CrossPremisesM {
            organization: DEFAULT_ORGANIZATION_PREFIX.into(),
            cross_premises: DEFAULT_CROSS_PREMISES_PREFIX.into(),
            headers: Vec::new(),
            originator: DEFAULT_ORIGINATOR_HEADER.into(),
        }
    }
}

/// A send connector's hybrid keys.
#[derive(Default)]
pub(super) struct ConnHybrid {
    /// `cross_premises`.
    pub(super) cross_premises: bool,
    /// `tls_certificate`: a `[[tls.client]]` name of the appliance config.
    pub(super) tls_certificate: Option<S>,
}

/// The keys of `[[connector]]` this module reads.
pub(super) const CONNECTOR_KEYS: [&str; 2] = ["cross_premises", "tls_certificate"];

/// A send connector's `cross_premises` and `tls_certificate`.
pub(super) fn parse_connector(cx: &mut Cx<'_>, f: &Fields<'_, '_>) -> ConnHybrid {
    let cross_premises = f
        .get("cross_premises")
        .and_then(|v| get_bool(cx, v, "cross_premises"))
        .unwrap_or(false);
    let tls_certificate = f
        .get("tls_certificate")
        .and_then(|v| get_str(cx, v, "tls_certificate"));
    if let Some(s) = &tls_certificate {
        if s.v.is_empty() {
            cx.err(s.at(), "tls_certificate: empty name");
        }
    }
    ConnHybrid {
        cross_premises,
        tls_certificate: tls_certificate.filter(|s| !s.v.is_empty()),
    }
}

/// One prefix or header name key of `[cross_premises]`, checked.
fn name_key(cx: &mut Cx<'_>, f: &Fields<'_, '_>, key: &str, into: &mut String) {
    if let Some(s) = f.get(key).and_then(|v| get_str(cx, v, key)) {
        match header_name(&s.v) {
            Ok(h) => *into = h,
            Err(e) => cx.err(s.at(), format!("{key}: {e}")),
        }
    }
}

/// `[cross_premises]`: the prefix pair, the names carried, the
/// originator header.
pub(super) fn parse_cross_premises(cx: &mut Cx<'_>, m: &mut Model, v: &Val<'_>) {
    let Some(t) = get_table(cx, v, "cross_premises") else {
        return;
    };
    let f = Fields::new(
        cx,
        t,
        &[
            "organization_prefix",
            "cross_premises_prefix",
            "headers",
            "originator_header",
        ],
        "[cross_premises]",
    );
    let x = &mut m.cross_premises;
    name_key(cx, &f, "organization_prefix", &mut x.organization);
    name_key(cx, &f, "cross_premises_prefix", &mut x.cross_premises);
    name_key(cx, &f, "originator_header", &mut x.originator);
    if x.organization.eq_ignore_ascii_case(&x.cross_premises) {
        let at = f
            .key_at("cross_premises_prefix")
            .or_else(|| f.key_at("organization_prefix"))
            .unwrap_or(0);
        cx.err(
            at,
            "cross_premises_prefix must differ from organization_prefix",
        );
    }
    if let Some(v) = f.get("headers") {
        let names = get_strs(cx, v, "headers");
        let every = names.iter().any(|s| s.v == "*");
        for s in names.iter().filter(|s| s.v != "*") {
            match header_name(&s.v) {
                Ok(h) if !every => x.headers.push(h),
                Ok(_) => cx.warn(s.at(), "\"*\" already carries every header"),
                Err(e) => cx.err(s.at(), format!("headers: {e}")),
            }
        }
    }
}

/// Warnings: a cross-premises connector without a default accepted
/// domain cannot stamp the originator header.
pub(super) fn check(cx: &mut Cx<'_>, m: &Model) {
    if m.default_domain.is_some() {
        return;
    }
    for c in m.connectors.iter().filter(|c| c.hybrid.cross_premises) {
        cx.warn(
            c.name.at(),
            format!(
                "connector \"{}\" is cross_premises but [domains] has no default: originating mail gets no {}",
                c.name.v, m.cross_premises.originator
            ),
        );
    }
}

/// Errors: a connector's `tls_certificate` that the appliance config does
/// not declare (`declared`: its `[[tls.client]]` names).
pub(super) fn check_certificates(cx: &mut Cx<'_>, m: &Model, declared: &[String]) {
    for c in &m.connectors {
        let Some(s) = &c.hybrid.tls_certificate else {
            continue;
        };
        if declared.contains(&s.v) {
            continue;
        }
        let known = if declared.is_empty() {
            "the appliance config declares none".to_string()
        } else {
            format!("declared: {}", declared.join(", "))
        };
        cx.err(
            s.at(),
            format!(
                "connector \"{}\": tls_certificate \"{}\" is not a [[tls.client]] of the appliance config ({known})",
                c.name.v, s.v
            ),
        );
    }
}

/// `[cross_premises]` into the table.
pub(super) fn emit(b: &mut Builder, m: &Model) {
    let x = &m.cross_premises;
    let organization = b.s(&x.organization, 0);
    let cross_premises = b.s(&x.cross_premises, 0);
    let headers = b.list(&x.headers, 0);
    let originator = b.s(&x.originator, 0);
    b.t.cross_premises = crate::engine::policy::CrossPremises {
        organization,
        cross_premises,
        headers,
        originator,
    };
}

#[cfg(test)]
mod tests {
    use crate::engine::policy::{attribute, Agent};
    use crate::shell::policy::compile::{compile, compile_declared};
    use crate::shell::policy::render::{HeaderEdit, Outcome};
    use crate::shell::policy::runtime::{decide, ip16, Arrival, Policy};
    use crate::shell::relay::splice::splice;
    use std::net::IpAddr;

    /// Exchange Online at 10.1.0.0/16 (organization), a partner at
    /// 10.2.0.0/16; mail for the cloud tenant leaves by a cross-premises
    /// connector, the rest to the Internet.
    const RULES: &str = r#"
[domains]
accepted = ["contoso.com"]
default = "contoso.com"
[[inbound]]
name = "exo"
kind = "organization"
client_ips = ["10.1.0.0/16"]
[[inbound]]
name = "partner"
kind = "partner"
client_ips = ["10.2.0.0/16"]
[[connector]]
name = "internet"
address_spaces = ["*"]
[[connector]]
name = "cloud"
address_spaces = ["contoso.mail.onmicrosoft.com"]
smart_hosts = ["127.0.0.1:2626"]
cross_premises = true
"#;

    fn run(rules: &str, peer: &str, rcpts: &[&str], msg: &[u8]) -> Outcome {
        let c = compile(rules).expect("rules");
        let p = Policy::new(c.table).expect("policy");
        let ip: IpAddr = peer.parse().expect("ip");
        let rc: Vec<&[u8]> = rcpts.iter().map(|r| r.as_bytes()).collect();
        let env = Arrival {
            attribution: attribute(&p.table, &ip16(ip), None),
            client: ip,
            sender: b"a@contoso.com",
            rcpts: &rc,
            directory: None,
            rcpt_checks: None,
            auth: None,
            login: None,
        };
        decide(&p, &env, msg)
    }

    /// The header block of the copy sent through `connector`.
    fn copy(o: &Outcome, msg: &[u8], connector: Option<&str>) -> String {
        let all: Vec<HeaderEdit> = o.edits.iter().map(|(_, e)| e.clone()).collect();
        let edits = HeaderEdit::for_connector(&all, connector);
        let out = splice(msg, &edits);
        let head = crate::shell::policy::runtime::header_block(&out);
        String::from_utf8_lossy(head).into_owned()
    }

    const ORG: &[u8] = b"X-MS-Exchange-Organization-SCL: -1\r\n\
        X-MS-Exchange-Organization-AuthAs: Internal\r\nSubject: s\r\n\r\nbody\r\n";

    #[test]
    fn only_the_copy_through_the_cross_premises_connector_is_demoted() {
        let rcpts = ["u@contoso.mail.onmicrosoft.com", "x@example.org"];
        let o = run(RULES, "10.1.0.5", &rcpts, ORG);
        let cloud = copy(&o, ORG, Some("cloud"));
        assert!(
            cloud.contains("X-MS-Exchange-CrossPremises-SCL: -1\r\n"),
            "{cloud}"
        );
        assert!(cloud.contains("X-MS-Exchange-CrossPremises-AuthAs: Internal\r\n"));
        assert!(
            cloud.contains("X-MS-Exchange-Organization-SCL: -1\r\n"),
            "kept"
        );
        assert!(
            cloud.contains("X-OriginatorOrg: contoso.com\r\n"),
            "{cloud}"
        );
        let internet = copy(&o, ORG, Some("internet"));
        assert!(!internet.contains("CrossPremises"), "{internet}");
        assert!(!internet.contains("X-OriginatorOrg"), "{internet}");
    }

    #[test]
    fn originating_mail_gets_the_originator_header_once() {
        let rcpts = ["u@contoso.mail.onmicrosoft.com"];
        let o = run(RULES, "10.1.0.5", &rcpts, ORG);
        let cloud = copy(&o, ORG, Some("cloud"));
        assert!(
            cloud.contains("X-OriginatorOrg: contoso.com\r\n"),
            "{cloud}"
        );
        assert!(cloud.contains("X-MS-Exchange-CrossPremises-AuthAs: Internal\r\n"));
        assert!(
            o.log.iter().any(
                |l| l.starts_with("OnRoutedMessage cross_premises_demotion: Connector [cloud]")
            ),
            "{:#?}",
            o.log
        );
        let has = b"X-OriginatorOrg: fabrikam.com\r\nSubject: s\r\n\r\nb\r\n";
        let o = run(RULES, "10.1.0.5", &rcpts, has);
        let cloud = copy(&o, has, Some("cloud"));
        assert_eq!(cloud.matches("X-OriginatorOrg").count(), 1, "{cloud}");
    }

    #[test]
    fn organization_mail_is_promoted_and_promotion_overwrites() {
        let msg = b"X-MS-Exchange-CrossPremises-SCL: -1\r\n\
            X-MS-Exchange-Organization-SCL: 9\r\n\
            X-MS-Exchange-CrossPremises-AuthAs: Internal\r\nSubject: s\r\n\r\nb\r\n";
        let o = run(RULES, "10.1.0.5", &["u@contoso.com"], msg);
        let out = copy(&o, msg, Some("internet"));
        assert!(
            out.contains("X-MS-Exchange-Organization-SCL: -1\r\n"),
            "{out}"
        );
        assert!(!out.contains("X-MS-Exchange-Organization-SCL: 9"), "{out}");
        assert!(out.contains("X-MS-Exchange-Organization-AuthAs: Internal\r\n"));
        assert!(
            out.contains("X-MS-Exchange-CrossPremises-SCL: -1\r\n"),
            "kept"
        );
        assert!(o
            .edits
            .iter()
            .all(|(a, _)| *a == Agent::CrossPremisesPromotion));
    }

    #[test]
    fn cross_premises_headers_from_anonymous_and_partner_mail_are_stripped() {
        let msg = b"X-MS-Exchange-CrossPremises-AuthAs: Internal\r\nSubject: s\r\n\r\nb\r\n";
        for peer in ["192.0.2.1", "10.2.0.1"] {
            let o = run(RULES, peer, &["u@contoso.com"], msg);
            let out = copy(&o, msg, Some("internet"));
            assert!(!out.contains("CrossPremises"), "{peer}: {out}");
            assert!(!out.contains("Organization"), "{peer}: {out}");
        }
        // Switched off, nothing is stripped or promoted.
        let off =
            format!("{RULES}[[agent]]\nname = \"cross_premises_promotion\"\nenabled = false\n");
        let o = run(&off, "192.0.2.1", &["u@contoso.com"], msg);
        assert!(o.edits.is_empty(), "{:?}", o.edits);
    }

    #[test]
    fn demotion_can_be_switched_off_and_narrowed_to_a_list() {
        let rcpts = ["u@contoso.mail.onmicrosoft.com"];
        let off =
            format!("{RULES}[[agent]]\nname = \"cross_premises_demotion\"\nenabled = false\n");
        let o = run(&off, "10.1.0.5", &rcpts, ORG);
        assert!(o.edits.is_empty(), "{:?}", o.edits);
        let narrow = format!(
            "{RULES}[cross_premises]\nheaders = [\"scl\"]\norganization_prefix = \"X-MS-Exchange-Organization-\"\n"
        );
        let o = run(&narrow, "10.1.0.5", &rcpts, ORG);
        let cloud = copy(&o, ORG, Some("cloud"));
        assert!(
            cloud.contains("X-MS-Exchange-CrossPremises-SCL: -1"),
            "{cloud}"
        );
        assert!(!cloud.contains("CrossPremises-AuthAs"), "{cloud}");
    }

    #[test]
    fn bad_sections_and_undeclared_certificates_name_their_position() {
        let same = format!(
            "{RULES}[cross_premises]\ncross_premises_prefix = \"X-MS-Exchange-Organization-\"\n"
        );
        let e = compile(&same).expect_err("same prefixes");
        assert!(e[0].message.contains("must differ"), "{e:?}");
        let cert = RULES.replace(
            "cross_premises = true",
            "cross_premises = true\ntls_certificate = \"edge\"",
        );
        let line = cert
            .lines()
            .position(|l| l.starts_with("tls_certificate"))
            .expect("line")
            + 1;
        assert!(compile(&cert).is_ok(), "unchecked without a config");
        let e = compile_declared(&cert, Some(&["other".to_string()])).expect_err("undeclared");
        assert_eq!((e[0].line, e[0].col), (line, 19), "{e:?}");
        assert!(e[0].message.contains("\"edge\"") && e[0].message.contains("other"));
        let ok = compile_declared(&cert, Some(&["edge".to_string()])).expect("declared");
        let t = &ok.table;
        let c = t.connectors.get(1).expect("cloud");
        assert_eq!(c.tls_certificate.map(|s| t.str(s)), Some(&b"edge"[..]));
        assert!(c.cross_premises);
        let w = compile(&cert.replace("default = \"contoso.com\"\n", "")).expect("warns");
        assert!(w
            .warnings
            .iter()
            .any(|d| d.message.contains("X-OriginatorOrg")));
    }
}
