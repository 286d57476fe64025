//! Hybrid mail flow in the daemon: the cross-premises agents' counters
//! and the check that the appliance config declares every client
//! certificate the installed policy's connectors name.

use crate::engine::policy::Agent;
use crate::shell::config::Config;
use crate::shell::ops::counters::{self, Tally};
use crate::shell::policy::install::Installer;
use crate::shell::policy::render::Outcome;

/// The cross-premises agents.
const AGENTS: [Agent; 2] = [Agent::CrossPremisesPromotion, Agent::CrossPremisesDemotion];

/// Counts what the cross-premises agents did with an accepted message:
/// `stamped` when one changed its headers (promoted, stripped or demoted
/// for some copy), `passed` when it ran and had nothing to do.
pub(super) fn count(outcome: &Outcome, enabled: impl Fn(Agent) -> bool) {
    for a in AGENTS.into_iter().filter(|a| enabled(*a)) {
        let acted = outcome.edits.iter().any(|(x, _)| *x == a);
        counters::count(a, if acted { Tally::Stamped } else { Tally::Passed });
    }
}

/// Whether `cfg` declares every `tls_certificate` the installed policy's
/// send connectors name; otherwise a SIGHUP keeps the running config (the
/// error says which connector and name).
pub(super) fn certificates_cover_policy(inst: &Installer, cfg: &Config) -> Result<(), String> {
    let policy = inst.current();
    let t = &policy.table;
    for c in &t.connectors {
        let Some(name) = c.tls_certificate.map(|s| t.str(s)) else {
            continue;
        };
        if !cfg.tls_clients.iter().any(|x| x.name.as_bytes() == name) {
            return Err(format!(
                "connector \"{}\" of the installed policy presents tls_certificate \"{}\", \
                 which the config does not declare as [[tls.client]]",
                String::from_utf8_lossy(t.str(c.name)),
                String::from_utf8_lossy(name)
            ));
        }
    }
    Ok(())
}
