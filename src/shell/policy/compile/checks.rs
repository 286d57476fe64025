//! Whole-file checks: warnings about a model that compiles but is likely
//! not what the operator meant (unused groups, rules that never match,
//! connectors never chosen, CMT that loops).

use super::cx::Cx;
use super::model::{ActM, CondM, CondSet, ConnM, Model, RuleM, SpaceM};
use crate::engine::policy::{Agent, InboundKind, Location};
use std::collections::{HashMap, HashSet};

/// Every whole-file warning, in a fixed order: unused groups, each enabled
/// rule, CMT from anonymous connectors, each send connector.
pub(super) fn check_model(cx: &mut Cx<'_>, m: &Model) {
    let accepted: HashSet<&str> = m.accepted.iter().map(String::as_str).collect();
    for (g, used) in m.groups.iter().zip(m.group_used.iter()) {
        if !used {
            cx.warn(
                g.name.at(),
                format!("group \"{}\" is not used by any rule", g.name.v),
            );
        }
    }
    // rules that can never match, duplicate priorities, no action
    let mut prios: HashMap<u32, &str> = HashMap::new();
    for r in m.rules.iter().filter(|r| r.enabled) {
        check_rule(cx, m, &accepted, r);
        if let Some((p, pat)) = r.priority {
            if let Some(first) = prios.get(&p) {
                cx.warn(
                    pat,
                    format!(
                        "rules \"{first}\" and \"{}\" have the same priority {p}; file order decides",
                        r.name
                    ),
                );
            } else {
                prios.insert(p, &r.name);
            }
        }
        check_routes(cx, m, &accepted, r);
    }
    cmt_from_anonymous(cx, m);
    for (ci, c) in m.connectors.iter().enumerate() {
        check_connector(cx, m, ci, c);
    }
}

/// One rule on its own: an `if` that never holds, an `except` that always
/// vetoes, no action, or a reject beside a routing.
fn check_rule(cx: &mut Cx<'_>, m: &Model, accepted: &HashSet<&str>, r: &RuleM) {
    if let Some(why) = never_matches(m, accepted, &r.when) {
        cx.warn(
            r.when_at,
            format!("rule \"{}\" can never match: {why}", r.name),
        );
    }
    for (set, at) in &r.except {
        if set.is_empty() {
            cx.warn(
                *at,
                format!(
                    "rule \"{}\" never applies: this except set is empty, so it always vetoes",
                    r.name
                ),
            );
        } else if set.iter().all(|(c, _)| r.when.iter().any(|(w, _)| w == c)) {
            cx.warn(
                *at,
                format!(
                    "rule \"{}\" never applies: this except set holds whenever its if does",
                    r.name
                ),
            );
        }
    }
    if !r.has_then && !r.stop {
        cx.warn(r.at, format!("rule \"{}\" has no action", r.name));
    }
    let has = |f: fn(&ActM) -> bool| r.actions.iter().any(|(a, _)| f(a));
    if has(|a| matches!(a, ActM::Reject(..)))
        && has(|a| matches!(a, ActM::RouteTo(_) | ActM::UseConnector(_)))
    {
        cx.warn(
            r.at,
            format!(
                "rule \"{}\" both rejects and routes: the reject wins, the routing is never used",
                r.name
            ),
        );
    }
}

/// A rule's `route_to` that no send connector's address space covers.
fn check_routes(cx: &mut Cx<'_>, m: &Model, accepted: &HashSet<&str>, r: &RuleM) {
    for (a, at) in &r.actions {
        if let ActM::RouteTo(d) = a {
            let covered = m
                .connectors
                .iter()
                .any(|c| c.spaces.iter().any(|(s, _)| covers(s, d, accepted)));
            if !covered {
                cx.warn(
                    *at,
                    format!("route_to \"{d}\": no connector's address space covers it, so it has no route"),
                );
            }
        }
    }
}

/// A send connector that is never used or never chosen, or that ties
/// with an earlier one on an address space and cost.
fn check_connector(cx: &mut Cx<'_>, m: &Model, ci: usize, c: &ConnM) {
    let named = m.conn_named.get(ci).copied().unwrap_or(false);
    if c.spaces.is_empty() {
        if !named {
            cx.warn(
                c.name.at(),
                format!(
                    "connector \"{}\" is never used: it has no address space and no rule's use_connector names it",
                    c.name.v
                ),
            );
        }
        return;
    }
    for (s, sat) in &c.spaces {
        if let Some(d) = m
            .connectors
            .iter()
            .take(ci)
            .find(|d| d.cost == c.cost && d.spaces.iter().any(|(x, _)| x == s))
        {
            cx.warn(
                *sat,
                format!(
                    "connectors \"{}\" and \"{}\" both have address space \"{s}\" and cost {}: \"{}\" (first in the file) is chosen",
                    d.name.v, c.name.v, c.cost, d.name.v
                ),
            );
        }
    }
    if named {
        return;
    }
    if let Some(by) = beaten_by(m, ci, c) {
        cx.warn(
            c.name.at(),
            format!(
                "connector \"{}\" is never chosen: each of its address spaces is also on {} with a lower cost (or earlier in the file)",
                c.name.v,
                by.join(", ")
            ),
        );
    } else if m.accepted.is_empty() && c.spaces.iter().all(|(s, _)| *s == SpaceM::Accepted) {
        cx.warn(
            c.name.at(),
            format!(
                "connector \"{}\" is never used: its address space \"--\" means the accepted domains, and there are none",
                c.name.v
            ),
        );
    }
}

/// When every address space of connector `ci` is also on a connector that
/// wins over it (lower cost, or the same cost earlier in the file): the
/// quoted names of those winners.
fn beaten_by(m: &Model, ci: usize, c: &ConnM) -> Option<Vec<String>> {
    let winner = |s: &SpaceM| {
        m.connectors.iter().enumerate().find(|(di, d)| {
            *di != ci
                && (d.cost < c.cost || (d.cost == c.cost && *di < ci))
                && d.spaces.iter().any(|(x, _)| x == s)
        })
    };
    let mut by: Vec<String> = Vec::new();
    for (s, _) in &c.spaces {
        let (_, d) = winner(s)?;
        let n = format!("\"{}\"", d.name.v);
        if !by.contains(&n) {
            by.push(n);
        }
    }
    Some(by)
}

/// CMT from a connector whose sessions are anonymous (kind not
/// `organization`): the header firewall strips the stamp from its mail
/// when a trusted prefix covers the stamp header, so CMT never sees a
/// message from it as stamped and re-stamps and re-routes it on every
/// pass. Only when every agent involved runs: attribution (else no
/// session has a connector), the header firewall and CMT.
fn cmt_from_anonymous(cx: &mut Cx<'_>, m: &Model) {
    let runs = |a: Agent| m.agents.iter().any(|s| s.agent == a && s.enabled);
    if !m.cmt_enabled
        || !runs(Agent::Cmt)
        || !runs(Agent::HeaderFirewall)
        || !runs(Agent::Attribution)
    {
        return;
    }
    let stamp = m.cmt_stamp.as_bytes();
    let Some(prefix) = m
        .trusted
        .iter()
        .find(|p| crate::engine::policy::starts_with_ci(stamp, p.as_bytes()))
    else {
        return;
    };
    for (i, at) in m.cmt_from.iter().zip(m.cmt_from_at.iter()) {
        let Some(c) = m.inbound.get(usize::from(*i)) else {
            continue;
        };
        if c.kind == InboundKind::Organization {
            continue;
        }
        cx.warn(
            *at,
            format!(
                "[cmt] from_inbound \"{}\" is not an organization connector: its mail is anonymous, \
                 so the header firewall strips the stamp \"{}\" (trusted prefix \"{prefix}\") and a \
                 message from it is stamped and re-routed again on every pass",
                c.name.v, m.cmt_stamp
            ),
        );
    }
}

/// Whether space `s` matches `domain`.
pub(super) fn covers(s: &SpaceM, domain: &str, accepted: &HashSet<&str>) -> bool {
    match s {
        SpaceM::Any => true,
        SpaceM::Accepted => accepted.contains(domain),
        SpaceM::Domain(d) => d == domain,
        SpaceM::Subdomains(d) => domain
            .strip_suffix(d.as_str())
            .is_some_and(|p| p.len() > 1 && p.ends_with('.')),
    }
}

/// Why a condition set can never hold, if it is contradictory.
fn never_matches(m: &Model, accepted: &HashSet<&str>, set: &CondSet) -> Option<String> {
    let conds: Vec<&CondM> = set.iter().map(|(c, _)| c).collect();
    empty_list(&conds)
        .or_else(|| sender_location_conflict(m, &conds))
        .or_else(|| recipient_location_conflict(m, accepted, &conds))
        .or_else(|| header_conflict(&conds))
}

/// A list condition with an empty list matches nothing.
fn empty_list(conds: &[&CondM]) -> Option<String> {
    for c in conds {
        match c {
            CondM::Sender(l)
            | CondM::Recipient(l)
            | CondM::SenderDomain(l)
            | CondM::RecipientDomain(l)
            | CondM::AuthenticatedAs(l)
                if l.is_empty() =>
            {
                return Some("a condition has an empty list".into());
            }
            CondM::ClientNetwork(l) if l.is_empty() => {
                return Some("client_network is an empty list".into());
            }
            _ => {}
        }
    }
    None
}

/// `sender_location` against an `inbound` whose kind fixes the sender's
/// location the other way.
fn sender_location_conflict(m: &Model, conds: &[&CondM]) -> Option<String> {
    let loc = conds.iter().find_map(|c| match c {
        CondM::SenderLocation(l) => Some(*l),
        _ => None,
    })?;
    for c in conds {
        let CondM::Inbound(i) = c else {
            continue;
        };
        let Some(ib) = m.inbound.get(usize::from(*i)) else {
            continue;
        };
        let inside = ib.kind == InboundKind::Organization;
        if inside != (loc == Location::Inside) {
            return Some(format!(
                "inbound \"{}\" is {} connector, so its sender is always {}",
                ib.name.v,
                if inside {
                    "an organization"
                } else {
                    "a partner"
                },
                if inside { "inside" } else { "outside" }
            ));
        }
    }
    None
}

/// `recipient_location` against recipient lists whose domains are all on
/// the other side of the accepted domains.
fn recipient_location_conflict(
    m: &Model,
    accepted: &HashSet<&str>,
    conds: &[&CondM],
) -> Option<String> {
    let loc = conds.iter().find_map(|c| match c {
        CondM::RecipientLocation(l) => Some(*l),
        _ => None,
    })?;
    let want_inside = loc == Location::Inside;
    for c in conds {
        let (what, domains): (&str, Vec<&str>) = match c {
            CondM::RecipientDomain(l) => {
                ("recipient_domain", l.iter().map(String::as_str).collect())
            }
            CondM::Recipient(l) => ("recipient", l.iter().map(|a| dom_of(a)).collect()),
            CondM::RecipientGroup(g) => match m.groups.get(usize::from(*g)) {
                Some(g) if !g.members.is_empty() => (
                    "recipient_group",
                    g.members.iter().map(|a| dom_of(a)).collect(),
                ),
                _ => continue,
            },
            _ => continue,
        };
        if !domains.is_empty() && domains.iter().all(|d| accepted.contains(d) != want_inside) {
            return Some(if want_inside {
                format!("recipient_location = \"inside\" but no domain of {what} is accepted")
            } else {
                format!("recipient_location = \"outside\" but every domain of {what} is accepted")
            });
        }
    }
    None
}

/// A header both required and absent, or required to match and not to
/// match the same pattern.
fn header_conflict(conds: &[&CondM]) -> Option<String> {
    for c in conds {
        if let CondM::HeaderAbsent(h) = c {
            if conds
                .iter()
                .any(|o| o.needs_header().is_some_and(|x| x.eq_ignore_ascii_case(h)))
            {
                return Some(format!("header \"{h}\" must be both present and absent"));
            }
        }
        if let CondM::HeaderMatches(h, p) = c {
            if conds.iter().any(|o| {
                matches!(o, CondM::HeaderNotMatches(h2, p2) if h2.eq_ignore_ascii_case(h) && p2 == p)
            }) {
                return Some(format!(
                    "header \"{h}\" must both match and not match the same pattern"
                ));
            }
        }
    }
    None
}

/// The domain of `local@domain` (empty without an `@`).
fn dom_of(addr: &str) -> &str {
    addr.rsplit_once('@').map_or("", |(_, d)| d)
}
