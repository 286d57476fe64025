//! The sender_authentication agent in `sluice trace`: with `--helo NAME`
//! the same SPF, DKIM, DMARC and ARC checks the daemon runs at the end of
//! DATA (the config's `[dns]` servers answer), or with `--auth-results`
//! verdicts given by hand; either way the verdicts go into the rules as in
//! a session, and the results field and DMARC's decision are reported.

use crate::engine::policy::{Agent, AuthMethod, AuthResult, AuthVerdicts, Table};
use crate::shell::config::Config;
use crate::shell::policy::render::{HeaderEdit, Outcome};
use crate::shell::sender_auth::{self as auth, Envelope};
use serde_json::{json, Value};
use std::net::IpAddr;
use std::time::Duration;

/// Longest the SPF check of a trace may take, as in a session.
const SPF_DEADLINE: Duration = Duration::from_secs(20);

/// What the agent made of a traced message.
pub(super) struct AuthTrace {
    /// The verdicts the rules see (`None`: the message is not checked).
    pub verdicts: Option<AuthVerdicts>,
    /// The text lines, each starting `authentication:`.
    pub lines: Vec<String>,
    /// `authentication` in `--json`.
    pub json: Value,
    /// The `550 5.7.1` of a DMARC `p=reject` failure.
    pub refusal: Option<String>,
    /// The header edits the agent makes (results field, quarantine stamp).
    pub edits: Vec<HeaderEdit>,
}

/// What a trace asks of the agent.
pub(super) struct AuthAsk<'a> {
    /// `--helo`: run the real checks with this HELO name.
    pub helo: Option<&'a str>,
    /// `--auth-results`: verdicts given by hand, no DNS.
    pub given: Option<&'a str>,
    /// The client address (`--peer`).
    pub peer: IpAddr,
    /// MAIL FROM (`--from`), empty for `<>`.
    pub from: &'a str,
}

impl AuthTrace {
    /// Not checked, and nothing to say: no `[authentication]`, or an
    /// originating session, and no option asked for the checks.
    fn quiet() -> AuthTrace {
        AuthTrace {
            verdicts: None,
            lines: Vec::new(),
            json: Value::Null,
            refusal: None,
            edits: Vec::new(),
        }
    }

    /// Nothing checked, and why.
    fn skipped(why: &str) -> AuthTrace {
        AuthTrace {
            verdicts: None,
            lines: vec![format!("authentication: not checked: {why}")],
            json: json!({ "checked": false, "why": why }),
            refusal: None,
            edits: Vec::new(),
        }
    }
}

/// Runs the agent for a trace as the daemon would for the session:
/// `Err(2)` (message printed) for `--auth-results` it cannot read.
pub(super) fn run(
    t: &Table,
    originating: bool,
    cfg: Option<&Config>,
    ask: &AuthAsk<'_>,
    msg: &[u8],
) -> Result<AuthTrace, i32> {
    let asked = ask.helo.is_some() || ask.given.is_some();
    let skip = if !t.authentication.enabled {
        Some("the rule file has no [authentication]")
    } else if !t.enabled(Agent::SenderAuthentication) {
        Some("the agent is disabled")
    } else if originating {
        Some("the session is originating (inside mail is never verified)")
    } else {
        None
    };
    match skip {
        // Quiet unless asked: traces without the options stay as they were.
        Some(_) if !asked => return Ok(AuthTrace::quiet()),
        Some(why) => return Ok(AuthTrace::skipped(why)),
        None => {}
    }
    if let Some(words) = ask.given {
        return given(words).map_err(|e| {
            eprintln!("sluice: --auth-results: {e}");
            2
        });
    }
    let Some(helo) = ask.helo else {
        return Ok(AuthTrace::skipped(
            "give --helo NAME to run the checks, or --auth-results",
        ));
    };
    let host = cfg.map_or("localhost", |c| c.hostname.as_str());
    let resolver =
        crate::shell::relay::dns::Resolver::new(cfg.map(|c| c.dns.clone()).unwrap_or_default());
    let env = Envelope {
        ip: ask.peer,
        helo,
        mail_from: ask.from,
    };
    let report = smol::block_on(auth::check_message(
        &resolver,
        host,
        &env,
        msg,
        SPF_DEADLINE,
    ));
    Ok(checked(t, host, &report))
}

/// The trace of checks that ran: the decision under `[authentication]`,
/// the results field, and the refusal or quarantine DMARC asks for.
fn checked(t: &Table, host: &str, report: &auth::Report) -> AuthTrace {
    let a = &t.authentication;
    let trusted: Vec<String> = t
        .list(a.trusted_sealers)
        .map(|s| String::from_utf8_lossy(s).to_ascii_lowercase())
        .collect();
    let d = auth::decide(report, &trusted, a.honor_reject);
    let field = auth::results_field(host, report);
    let action = if d.reject {
        "reject"
    } else if d.verdicts.quarantine {
        "quarantine"
    } else {
        "none"
    };
    let refusal = d.reject.then(|| {
        format!(
            "550 5.7.1 Message rejected per DMARC policy of {}",
            report.dmarc.domain
        )
    });
    let mut edits = vec![HeaderEdit::Prepend {
        field: field.clone(),
    }];
    let stamp = d.verdicts.quarantine && a.quarantine_route.is_none();
    if stamp {
        edits.push(HeaderEdit::Prepend {
            field: "X-Sluice-Quarantine: dmarc\r\n".to_string(),
        });
    }
    let mut lines = vec![format!(
        "authentication: {}",
        field.split_whitespace().collect::<Vec<_>>().join(" ")
    )];
    lines.push(action_line(action, d.excused, refusal.as_deref(), stamp));
    let mut doc = auth::report_json(report);
    doc["checked"] = json!(true);
    doc["field"] = json!(field);
    doc["verdicts"] = verdicts_json(&d.verdicts);
    doc["dmarc_action"] = json!(action);
    doc["excused"] = json!(d.excused);
    doc["reply"] = json!(refusal);
    if d.reject {
        edits.clear(); // a refused message is not stored
    }
    AuthTrace {
        verdicts: Some(d.verdicts),
        lines,
        json: doc,
        refusal,
        edits,
    }
}

/// The `authentication: DMARC ...` line of the text report.
fn action_line(action: &str, excused: bool, refusal: Option<&str>, stamp: bool) -> String {
    let mut l = format!("authentication: DMARC action: {action}");
    if let Some(r) = refusal {
        l.push_str(&format!(": {r} (at end of DATA, before the rules run)"));
    } else if action == "quarantine" {
        l.push_str(if stamp {
            " (X-Sluice-Quarantine: dmarc)"
        } else {
            " (routed by [authentication] quarantine)"
        });
    }
    if excused {
        l.push_str(" (DMARC failure excused: trusted ARC sealer)");
    }
    l
}

/// `--auth-results "spf=pass dkim=fail ..."`: the verdicts as given
/// (methods left out are `none`); DMARC's policy is not known, so nothing
/// is refused or quarantined.
fn given(words: &str) -> Result<AuthTrace, String> {
    let mut v = AuthVerdicts {
        spf: AuthResult::None,
        dkim: AuthResult::None,
        dmarc: AuthResult::None,
        arc: AuthResult::None,
        quarantine: false,
    };
    for w in words.split(|c: char| c.is_whitespace() || c == ';' || c == ',') {
        if w.is_empty() {
            continue;
        }
        let (m, r) = w
            .split_once('=')
            .ok_or_else(|| format!("{w:?} is not METHOD=RESULT"))?;
        let r = AuthResult::ALL
            .iter()
            .find(|x| x.1.eq_ignore_ascii_case(r))
            .map(|x| x.0)
            .ok_or_else(|| format!("{r:?} is not a result"))?;
        let slot = match m.to_ascii_lowercase().as_str() {
            "spf" => &mut v.spf,
            "dkim" => &mut v.dkim,
            "dmarc" => &mut v.dmarc,
            "arc" => &mut v.arc,
            _ => return Err(format!("{m:?} is not spf, dkim, dmarc or arc")),
        };
        *slot = r;
    }
    Ok(AuthTrace {
        verdicts: Some(v),
        lines: vec![format!(
            "authentication: given: spf={} dkim={} dmarc={} arc={} (not checked)",
            v.spf.name(),
            v.dkim.name(),
            v.dmarc.name(),
            v.arc.name()
        )],
        json: json!({ "checked": false, "given": true, "verdicts": verdicts_json(&v) }),
        refusal: None,
        edits: Vec::new(),
    })
}

/// The verdicts the rules see, by method.
fn verdicts_json(v: &AuthVerdicts) -> Value {
    json!({
        "spf": v.of(AuthMethod::Spf).name(),
        "dkim": v.of(AuthMethod::Dkim).name(),
        "dmarc": v.of(AuthMethod::Dmarc).name(),
        "arc": v.of(AuthMethod::Arc).name(),
        "quarantine": v.quarantine,
    })
}

/// Folds the agent's trace into the policy's outcome: its header edits
/// first, and a DMARC refusal makes the message rejected.
pub(super) fn apply(a: &AuthTrace, out: &mut Outcome) {
    let mine = a
        .edits
        .iter()
        .map(|e| (Agent::SenderAuthentication, e.clone()));
    let rest = std::mem::take(&mut out.edits);
    out.edits = mine.chain(rest).collect();
    if let Some(r) = &a.refusal {
        out.result = "Rejected";
        out.reply = Some(r.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_results_become_verdicts() {
        let t = given("spf=pass dkim=fail; dmarc=PermError").expect("ok");
        let v = t.verdicts.expect("verdicts");
        assert_eq!(v.spf, AuthResult::Pass);
        assert_eq!(v.dkim, AuthResult::Fail);
        assert_eq!(v.dmarc, AuthResult::PermError);
        assert_eq!(v.arc, AuthResult::None);
        assert!(t.refusal.is_none() && !v.quarantine);
    }

    #[test]
    fn bad_given_results_are_refused() {
        assert!(given("spf").is_err());
        assert!(given("spf=maybe").is_err());
        assert!(given("sender=pass").is_err());
    }
}
