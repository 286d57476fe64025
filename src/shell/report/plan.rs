//! From counted mail to advice: the destination table, seed 001's
//! arithmetic for each MX layout ([`super::mx`]), the recommendation and
//! the MX records to publish.
//!
//! The layouts are worked on the mail that was rewritten from the domain
//! it was addressed to (a shared, flat domain) to a location's domain: that
//! is the mail whose ingress relay the shared domain's MX records choose.
//! Mail addressed to a location's own domain is not in it: its MX points at
//! that location in every layout, and when one relay redirects mail to
//! another, the second relay's copy would otherwise be counted twice.

use super::history::{Counts, Day};
use super::mx::{self, Flow};
use std::collections::BTreeMap;

/// Fewest rewritten messages to decide on: below it a location's share has
/// a sampling error of more than 1/sqrt(100) = 10 points, as large as the
/// differences between layouts in the seed's example (50 % against 30 %).
pub const MIN_MESSAGES: u64 = 100;

/// One destination row over the whole period.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// The recipient domain as addressed.
    pub domain: String,
    /// The domain after inbound rewriting.
    pub location: String,
    /// What was counted.
    pub counts: Counts,
}

/// The rows of all `days`, summed, most messages first.
pub fn rows(days: &BTreeMap<u32, Day>) -> Vec<Row> {
    let mut sum: BTreeMap<(&str, &str), Counts> = BTreeMap::new();
    for d in days.values() {
        for (dom, loc, c) in d.iter() {
            sum.entry((dom, loc)).or_default().add(c);
        }
    }
    let mut v: Vec<Row> = sum
        .into_iter()
        .map(|((d, l), c)| Row {
            domain: d.to_string(),
            location: l.to_string(),
            counts: c,
        })
        .collect();
    v.sort_by_key(|r| std::cmp::Reverse(r.counts.messages));
    v
}

/// Per day (known dates only), per location: the counts.
pub fn daily(days: &BTreeMap<u32, Day>) -> BTreeMap<u32, BTreeMap<String, Counts>> {
    let mut out: BTreeMap<u32, BTreeMap<String, Counts>> = BTreeMap::new();
    for (day, d) in days.iter().filter(|(day, _)| **day != 0) {
        let per = out.entry(*day).or_default();
        for (_, loc, c) in d.iter() {
            per.entry(loc.to_string()).or_default().add(c);
        }
    }
    out
}

/// One MX layout's outcome.
#[derive(Clone, Debug, PartialEq)]
pub struct Layout {
    /// `load_shared`, `per_location` or `single_primary`.
    pub name: &'static str,
    /// Share of the rewritten mail it would redirect.
    pub redirected_share: f64,
    /// Those messages.
    pub redirected_messages: f64,
    /// The bytes that would cross between locations.
    pub crossing_bytes: f64,
    /// The single primary's location (`single_primary` only).
    pub primary: Option<String>,
}

/// One MX record to publish: `domain MX preference <relay of location>`.
#[derive(Clone, Debug, PartialEq)]
pub struct Mx {
    /// The domain the record is for.
    pub domain: String,
    /// Its preference (lower first).
    pub preference: u16,
    /// The location whose ingress relay it names.
    pub relay_of: String,
}

/// Whether the data decide, and why not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// A layout is recommended.
    Recommended,
    /// Fewer rewritten messages than [`MIN_MESSAGES`].
    TooFew,
    /// The rewritten mail goes to one location only: nothing to choose.
    OneLocation,
    /// No mail was rewritten to a location.
    NoRewrittenMail,
}

impl Decision {
    /// The name in `--json`.
    pub fn name(self) -> &'static str {
        match self {
            Decision::Recommended => "recommended",
            Decision::TooFew => "too_few",
            Decision::OneLocation => "one_location",
            Decision::NoRewrittenMail => "no_rewritten_mail",
        }
    }
}

/// The arithmetic and the advice.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Rewritten mail per location, most first.
    pub locations: Vec<Flow>,
    /// Rewritten messages in all.
    pub messages: u64,
    /// The layouts, in the order.
    pub layouts: Vec<Layout>,
    /// Whether a layout is recommended.
    pub decision: Decision,
    /// The recommended layout's index in `layouts`.
    pub recommended: Option<usize>,
    /// The MX records to publish for it.
    pub mx: Vec<Mx>,
    /// The shared domains' flows (per location, every location present).
    pub domains: BTreeMap<String, Vec<Flow>>,
}

/// Works the layouts for `rows`; `local` (this relay's locations) are
/// locations even when no mail was rewritten to them.
pub fn plan(rows: &[Row], local: &[String]) -> Plan {
    let rewritten: Vec<&Row> = rows
        .iter()
        .filter(|r| r.domain != r.location && r.domain != super::history::OTHER)
        .collect();
    let mut locs: BTreeMap<String, (u64, u64)> = local
        .iter()
        .map(|l| (l.to_ascii_lowercase(), (0, 0)))
        .collect();
    for r in &rewritten {
        let e = locs.entry(r.location.clone()).or_default();
        e.0 += r.counts.messages;
        e.1 += r.counts.bytes;
    }
    let mut locations: Vec<Flow> = locs
        .iter()
        .map(|(l, (m, b))| Flow {
            location: l.clone(),
            messages: *m,
            bytes: *b,
        })
        .collect();
    locations.sort_by(|a, b| {
        b.messages
            .cmp(&a.messages)
            .then(a.location.cmp(&b.location))
    });
    let mut domains: BTreeMap<String, Vec<Flow>> = BTreeMap::new();
    for r in &rewritten {
        let flows = domains.entry(r.domain.clone()).or_insert_with(|| {
            locations
                .iter()
                .map(|l| Flow {
                    location: l.location.clone(),
                    messages: 0,
                    bytes: 0,
                })
                .collect()
        });
        if let Some(f) = flows.iter_mut().find(|f| f.location == r.location) {
            f.messages += r.counts.messages;
            f.bytes += r.counts.bytes;
        }
    }
    let messages: u64 = locations.iter().map(|f| f.messages).sum();
    let layouts = layouts(&domains, &locations, messages);
    let used = locations.iter().filter(|f| f.messages > 0).count();
    let decision = if messages == 0 {
        Decision::NoRewrittenMail
    } else if used < 2 {
        Decision::OneLocation
    } else if messages < MIN_MESSAGES {
        Decision::TooFew
    } else {
        Decision::Recommended
    };
    let recommended = (decision == Decision::Recommended).then(|| best(&layouts));
    let mx = recommended.map_or_else(Vec::new, |i| records(&layouts[i], &domains, &locations));
    Plan {
        locations,
        messages,
        layouts,
        decision,
        recommended,
        mx,
        domains,
    }
}

/// The three layouts' outcomes over the shared domains.
fn layouts(domains: &BTreeMap<String, Vec<Flow>>, locations: &[Flow], total: u64) -> Vec<Layout> {
    let primary = mx::best_primary(locations).map(|f| f.location.clone());
    let sum = |f: &dyn Fn(&[Flow]) -> mx::Outcome| {
        domains.values().fold((0.0, 0.0), |(m, b), flows| {
            let o = f(flows);
            let msgs: u64 = flows.iter().map(|f| f.messages).sum();
            (m + o.redirected * msgs as f64, b + o.crossing_bytes)
        })
    };
    let layout = |name, (m, b): (f64, f64), primary: Option<String>| Layout {
        name,
        redirected_share: if total == 0 { 0.0 } else { m / total as f64 },
        redirected_messages: m,
        crossing_bytes: b,
        primary,
    };
    let flows: Vec<Vec<Flow>> = domains.values().cloned().collect();
    let per = mx::per_location(&flows);
    let p = primary.clone().unwrap_or_default();
    vec![
        layout("load_shared", sum(&mx::load_shared), None),
        layout(
            "per_location",
            (per.redirected * total as f64, per.crossing_bytes),
            None,
        ),
        layout(
            "single_primary",
            sum(&|f: &[Flow]| mx::single_primary(f, &p)),
            primary,
        ),
    ]
}

/// The layout with the least redirection; on a tie one primary per
/// location (it keeps every location's relay as a backup and adapts per
/// domain), then the single primary.
fn best(layouts: &[Layout]) -> usize {
    let rank = |n: &str| match n {
        "per_location" => 0,
        "single_primary" => 1,
        _ => 2,
    };
    let mut best = 0;
    for (i, l) in layouts.iter().enumerate() {
        let b = &layouts[best];
        let d = l.redirected_share - b.redirected_share;
        if d < -1e-9 || (d.abs() <= 1e-9 && rank(l.name) < rank(b.name)) {
            best = i;
        }
    }
    best
}

/// Preference 10 for `first`, then 20, 30, … for the others in `order`.
fn prefs(domain: &str, first: Option<&str>, order: &[Flow], out: &mut Vec<Mx>) {
    let mut p = 10u16;
    let mut add = |loc: &str, pref: u16| {
        out.push(Mx {
            domain: domain.to_string(),
            preference: pref,
            relay_of: loc.to_string(),
        })
    };
    if let Some(f) = first {
        add(f, p);
        p += 10;
    }
    for l in order.iter().filter(|l| Some(l.location.as_str()) != first) {
        add(&l.location, p);
        p = p.saturating_add(10);
    }
}

/// The MX records of a layout: every shared domain's, then every
/// location's own domain (its relay first, the others as backups).
fn records(l: &Layout, domains: &BTreeMap<String, Vec<Flow>>, locations: &[Flow]) -> Vec<Mx> {
    let mut out = Vec::new();
    for (d, flows) in domains {
        match l.name {
            "load_shared" => out.extend(locations.iter().map(|f| Mx {
                domain: d.clone(),
                preference: 10,
                relay_of: f.location.clone(),
            })),
            "per_location" => {
                let p = mx::best_primary(flows).map(|f| f.location.as_str());
                prefs(d, p, locations, &mut out);
            }
            _ => prefs(d, l.primary.as_deref(), locations, &mut out),
        }
    }
    for f in locations {
        prefs(&f.location, Some(&f.location), locations, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(d: &str, l: &str, m: u64) -> Row {
        Row {
            domain: d.into(),
            location: l.into(),
            counts: Counts {
                messages: m,
                bytes: m * 1000,
                redirected: 0,
            },
        }
    }

    /// The seed's 70/30 split: load-shared 50 %, a US primary 30 %,
    /// recommended with the US relay at 10 and Europe's at 20.
    #[test]
    fn seed_example() {
        let rows = [
            row("contoso.com", "us.contoso.com", 70),
            row("contoso.com", "eu.contoso.com", 30),
            // a redirect's second leg at the EU relay: not in the arithmetic
            row("eu.contoso.com", "eu.contoso.com", 30),
        ];
        let p = plan(&rows, &[]);
        assert_eq!(p.messages, 100);
        let share = |n: &str| p.layouts.iter().find(|l| l.name == n).unwrap();
        assert!((share("load_shared").redirected_share - 0.5).abs() < 1e-9);
        assert!((share("load_shared").crossing_bytes - 50_000.0).abs() < 1e-6);
        assert!((share("per_location").redirected_share - 0.3).abs() < 1e-9);
        assert!((share("single_primary").redirected_share - 0.3).abs() < 1e-9);
        assert_eq!(
            share("single_primary").primary.as_deref(),
            Some("us.contoso.com")
        );
        assert_eq!(p.decision, Decision::Recommended);
        assert_eq!(p.layouts[p.recommended.unwrap()].name, "per_location");
        let shared: Vec<(u16, &str)> =
            p.mx.iter()
                .filter(|m| m.domain == "contoso.com")
                .map(|m| (m.preference, m.relay_of.as_str()))
                .collect();
        assert_eq!(shared, [(10, "us.contoso.com"), (20, "eu.contoso.com")]);
        assert!(p.mx.iter().any(|m| m.domain == "eu.contoso.com"
            && m.preference == 10
            && m.relay_of == "eu.contoso.com"));
    }

    #[test]
    fn too_few_and_nothing_to_decide() {
        let p = plan(
            &[row("c.com", "us.c.com", 7), row("c.com", "eu.c.com", 3)],
            &[],
        );
        assert_eq!(p.decision, Decision::TooFew);
        assert!(p.recommended.is_none() && p.mx.is_empty());
        let p = plan(&[row("c.com", "us.c.com", 700)], &["us.c.com".into()]);
        assert_eq!(p.decision, Decision::OneLocation);
        assert_eq!(plan(&[], &[]).decision, Decision::NoRewrittenMail);
    }

    /// Two shared domains with opposite majorities: one primary per
    /// location beats any single primary.
    #[test]
    fn per_location_wins_with_opposite_majorities() {
        let rows = [
            row("a.com", "us.x.com", 80),
            row("a.com", "eu.x.com", 20),
            row("b.com", "us.x.com", 10),
            row("b.com", "eu.x.com", 90),
        ];
        let p = plan(&rows, &[]);
        let l = &p.layouts[p.recommended.unwrap()];
        assert_eq!(l.name, "per_location");
        assert!((l.redirected_share - 0.15).abs() < 1e-9);
    }
}
