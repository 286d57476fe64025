//! What each agent of the pipeline did since the daemon started: one set of
//! atomic counters per agent, bumped where the agent acts and shown by
//! `sluice status` (and later exported as metrics). Counting never blocks
//! and never allocates.
//!
//! [`refuse`] is the one way an agent's in-session refusal is reported: the
//! REJECT syslog line that names the agent, and its count.

use crate::engine::limits::MAX_AGENTS;
use crate::engine::policy::{Agent, AGENTS};
use crate::shell::ops::log::{self, Kind};
use serde_json::{json, Map, Value};
use std::fmt::Arguments;
use std::sync::atomic::{AtomicU64, Ordering};

/// What an agent did with one session, message or recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tally {
    /// Refused with a permanent (5xx) reply.
    Rejected,
    /// Refused with a temporary (4xx) reply, or the session closed with 421.
    Deferred,
    /// Let through with a header stamped for the rules to act on.
    Stamped,
    /// A dependency (DNS, a next hop) did not answer; the documented
    /// fail-open choice let the mail through.
    FailedOpen,
    /// Checked and let through.
    Passed,
}

/// Every tally, in the order `sluice status` shows them.
pub const TALLIES: [(Tally, &str); 5] = [
    (Tally::Rejected, "rejected"),
    (Tally::Deferred, "deferred"),
    (Tally::Stamped, "stamped"),
    (Tally::FailedOpen, "failed_open"),
    (Tally::Passed, "passed"),
];

/// One row of counters per built-in agent, in [`AGENTS`] order.
static COUNTS: [[AtomicU64; TALLIES.len()]; MAX_AGENTS] =
    [const { [const { AtomicU64::new(0) }; TALLIES.len()] }; MAX_AGENTS];

/// Where `a` and `t` sit in [`COUNTS`].
fn slot(a: Agent, t: Tally) -> Option<&'static AtomicU64> {
    let row = AGENTS.iter().position(|x| x.0 == a)?;
    let col = TALLIES.iter().position(|x| x.0 == t)?;
    COUNTS.get(row)?.get(col)
}

/// Counts one `t` for agent `a`.
pub fn count(a: Agent, t: Tally) {
    if let Some(c) = slot(a, t) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// The current count of `t` for agent `a`.
pub fn get(a: Agent, t: Tally) -> u64 {
    slot(a, t).map_or(0, |c| c.load(Ordering::Relaxed))
}

/// An agent refused something in the session: the REJECT line, which
/// starts with the agent's name, and its count (`Rejected` for a 5xx reply,
/// `Deferred` for a 4xx one).
pub fn refuse(a: Agent, permanent: bool, args: Arguments<'_>) {
    count(
        a,
        if permanent {
            Tally::Rejected
        } else {
            Tally::Deferred
        },
    );
    log::event(
        Kind::Reject,
        None,
        None,
        format_args!("{}: {args}", crate::shell::policy::render::agent_name(a)),
    );
}

/// Every agent's counters, by rule-file name, for `sluice status`.
pub fn snapshot() -> Value {
    let mut agents = Map::new();
    for (a, _, _, name) in AGENTS {
        let mut row = Map::new();
        for (t, tname) in TALLIES {
            row.insert(tname.into(), json!(get(a, t)));
        }
        agents.insert(name.into(), Value::Object(row));
    }
    Value::Object(agents)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_count_lands_in_its_agent_and_tally_only() {
        let before = snapshot();
        count(Agent::SenderFilter, Tally::Stamped);
        refuse(Agent::SenderFilter, false, format_args!("test"));
        let after = snapshot();
        let d = |agent: &str, t: &str| {
            after[agent][t].as_u64().unwrap() - before[agent][t].as_u64().unwrap()
        };
        assert_eq!(d("sender_filter", "stamped"), 1);
        assert_eq!(d("sender_filter", "deferred"), 1);
        assert_eq!(d("sender_filter", "rejected"), 0);
        assert_eq!(d("protocol_analysis", "stamped"), 0);
        assert_eq!(after.as_object().unwrap().len(), AGENTS.len());
    }
}
