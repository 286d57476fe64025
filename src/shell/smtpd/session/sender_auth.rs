//! The sender_authentication agent in a session: SPF, DKIM, DMARC and ARC
//! of non-originating mail at the end of DATA, before the message is
//! filtered, decided and stored. The DKIM and ARC body hashes were taken
//! while the message arrived (`Txn::verify`); the DNS lookups run here,
//! each bounded by the resolver's timeout and SPF by [`SPF_DEADLINE`].

use super::Session;
use crate::engine::policy::{Agent, Table};
use crate::engine::reply::Reply;
use crate::shell::ops::counters::{self, Tally};
use crate::shell::ops::log;
use crate::shell::policy::render::HeaderEdit;
use crate::shell::sender_auth::{self as auth, Envelope};
use std::time::Duration;

/// Longest an SPF check may take in a session (a slow DNS server makes it
/// `temperror`, and the message goes on).
pub(super) const SPF_DEADLINE: Duration = Duration::from_secs(20);

/// Whether the messages of a session are checked: the agent is on
/// (`[authentication]` present, `[[agent]]` not disabled) and the client
/// is not originating (inside mail is never verified).
pub(super) fn wanted(t: &Table, originating: bool) -> bool {
    !originating && t.authentication.enabled && t.enabled(Agent::SenderAuthentication)
}

impl Session<'_> {
    /// Runs the checks on the message just received. `None`: the message
    /// was refused (DMARC `p=reject`, `550 5.7.1`); `Some(())`: go on, the
    /// verdicts in `txn.auth` for the rules and the stored field.
    pub(super) async fn sender_authentication(&mut self, id: &str) -> Option<()> {
        let Some(tap) = self.txn.verify.take() else {
            return Some(()); // not checked
        };
        let helo = String::from_utf8_lossy(&self.txn.helo).into_owned();
        let from = String::from_utf8_lossy(&self.txn.from).into_owned();
        let env = Envelope {
            ip: self.peer.ip(),
            helo: &helo,
            mail_from: &from,
        };
        let host = &self.live.cfg.hostname;
        let report = auth::finish(self.sh.edge.resolver(), host, &env, tap, SPF_DEADLINE).await;
        let a = &self.table().authentication;
        let trusted: Vec<String> = self
            .table()
            .list(a.trusted_sealers)
            .map(|s| String::from_utf8_lossy(s).to_ascii_lowercase())
            .collect();
        let decision = auth::decide(&report, &trusted, a.honor_reject);
        let field = auth::results_field(host, &report);
        log::info(format_args!(
            "{id}: sender_authentication: {}{}",
            summary(&report),
            if decision.excused {
                " (DMARC failure excused: trusted ARC sealer)"
            } else {
                ""
            }
        ));
        if decision.reject {
            self.refuse_dmarc(id, &report.dmarc.domain);
            return None;
        }
        counters::count(Agent::SenderAuthentication, Tally::Stamped);
        self.txn.auth = Some((decision.verdicts, field));
        Some(())
    }

    /// DMARC `p=reject` failed: `550 5.7.1`, counted and logged by name.
    fn refuse_dmarc(&mut self, id: &str, domain: &str) {
        counters::refuse(
            Agent::SenderAuthentication,
            true,
            format_args!(
                "{} from=<{}> id={id}: DMARC policy of {domain} is reject",
                self.peer,
                String::from_utf8_lossy(&self.txn.from)
            ),
        );
        self.txn.forget_message();
        let text = format!("Message rejected per DMARC policy of {domain}");
        self.rx.reject(Reply {
            code: 550,
            status: Some((5, 7, 1)),
            text: &text,
        });
    }

    /// The header edits of the agent: our `Authentication-Results` on top,
    /// and any field claiming our host name removed (RFC 8601 §5: only we
    /// speak for our authserv-id), and the quarantine stamp.
    pub(super) fn auth_edits(&self) -> Vec<HeaderEdit> {
        let Some((verdicts, field)) = self.txn.auth.as_ref() else {
            return Vec::new();
        };
        let mut edits = forged_results(
            self.txn.head(),
            self.txn.body_offset,
            &self.live.cfg.hostname,
        );
        edits.push(HeaderEdit::Prepend {
            field: field.clone(),
        });
        if verdicts.quarantine && self.table().authentication.quarantine_route.is_none() {
            edits.push(HeaderEdit::Prepend {
                field: "X-Sluice-Quarantine: dmarc\r\n".to_string(),
            });
        }
        edits
    }
}

/// `Remove` edits for the `Authentication-Results` fields of `head` whose
/// authserv-id is `host`.
fn forged_results(head: &[u8], body_at: Option<u64>, host: &str) -> Vec<HeaderEdit> {
    let end = body_at.map_or(head.len(), |b| (b as usize).min(head.len()));
    let block = &head[..end];
    let mut out = Vec::new();
    let mut it = crate::engine::header::fields(block);
    loop {
        let start = it.offset();
        let Some(f) = it.next() else {
            break;
        };
        if !f.name_eq(b"Authentication-Results") {
            continue;
        }
        let v = crate::engine::header::trim(f.value);
        let id_end = v.iter().position(|&b| b == b';').unwrap_or(v.len());
        let id = crate::engine::header::trim(&v[..id_end]);
        let id = id.split(|b| b.is_ascii_whitespace()).next().unwrap_or(&[]);
        if id.eq_ignore_ascii_case(host.as_bytes()) {
            out.push(HeaderEdit::Remove {
                start,
                end: it.offset(),
                name: "Authentication-Results".to_string(),
            });
        }
    }
    out
}

/// `spf=pass dkim=pass dmarc=pass arc=none` for the log.
fn summary(r: &auth::Report) -> String {
    let dkim = if r.dkim.is_empty() {
        "none".to_string()
    } else {
        r.dkim
            .iter()
            .map(|d| d.verdict.name())
            .collect::<Vec<_>>()
            .join(",")
    };
    format!(
        "spf={} dkim={} dmarc={} arc={}",
        r.spf.result.name(),
        dkim,
        r.dmarc.result,
        r.arc.result
    )
}
