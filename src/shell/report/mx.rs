//! Seed 001's arithmetic: given how mail splits over locations, the share
//! that each MX layout would redirect (accept at one location's relay and
//! rewrite for another's).
//!
//! Model: one ingress relay per location; a message is redirected when the
//! relay that receives it is not at its final location.

/// One location's share of all mail (0.0..=1.0) and its bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Flow {
    /// The location-specific domain, e.g. `us.example.com`.
    pub location: String,
    /// Messages whose final address is at this location.
    pub messages: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// The redirected share of messages and the bytes that cross locations.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outcome {
    /// Share of all messages redirected, 0.0..=1.0.
    pub redirected: f64,
    /// Bytes expected to cross between locations.
    pub crossing_bytes: f64,
}

/// Totals of messages and bytes over all flows.
fn totals(flows: &[Flow]) -> (u64, u64) {
    flows
        .iter()
        .fold((0, 0), |(m, b), f| (m + f.messages, b + f.bytes))
}

/// Equal MX preference across every location's relay: each relay receives
/// 1/N of the mail, of which the part for other locations is redirected.
pub fn load_shared(flows: &[Flow]) -> Outcome {
    let (msgs, bytes) = totals(flows);
    let n = flows.len() as f64;
    if msgs == 0 || flows.is_empty() {
        return Outcome {
            redirected: 0.0,
            crossing_bytes: 0.0,
        };
    }
    let stay = 1.0 / n;
    Outcome {
        redirected: 1.0 - stay,
        crossing_bytes: bytes as f64 * (1.0 - stay),
    }
}

/// A single primary at `primary`: everything for other locations is
/// redirected.
pub fn single_primary(flows: &[Flow], primary: &str) -> Outcome {
    let (msgs, _) = totals(flows);
    if msgs == 0 {
        return Outcome {
            redirected: 0.0,
            crossing_bytes: 0.0,
        };
    }
    let (m, b) = flows
        .iter()
        .filter(|f| f.location != primary)
        .fold((0u64, 0u64), |(m, b), f| (m + f.messages, b + f.bytes));
    Outcome {
        redirected: m as f64 / msgs as f64,
        crossing_bytes: b as f64,
    }
}

/// One primary per location, the others as backups: every location's
/// own domain has its relay as primary (mail addressed to it arrives where
/// it belongs), and a domain shared by several locations (a flat domain
/// rewritten to more than one) gets as primary the relay of the location
/// that takes most of its mail. DNS gives one answer per domain, so mail
/// for a shared domain cannot be split by location before it arrives: each
/// shared domain redirects its minority share. `domains` holds each shared
/// domain's flows.
pub fn per_location(domains: &[Vec<Flow>]) -> Outcome {
    let mut msgs = 0u64;
    let mut redirected = 0f64;
    let mut crossing = 0f64;
    for flows in domains {
        let (m, _) = totals(flows);
        msgs += m;
        if let Some(p) = best_primary(flows) {
            let o = single_primary(flows, &p.location);
            redirected += o.redirected * m as f64;
            crossing += o.crossing_bytes;
        }
    }
    Outcome {
        redirected: if msgs == 0 {
            0.0
        } else {
            redirected / msgs as f64
        },
        crossing_bytes: crossing,
    }
}

/// The location with the most messages: the best single primary.
pub fn best_primary(flows: &[Flow]) -> Option<&Flow> {
    flows.iter().max_by_key(|f| f.messages)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seed's example flows: 70 % US, 30 % Europe.
    fn seed() -> Vec<Flow> {
        vec![
            Flow {
                location: "us".into(),
                messages: 70,
                bytes: 7000,
            },
            Flow {
                location: "eu".into(),
                messages: 30,
                bytes: 3000,
            },
        ]
    }

    /// Load-shared equal MX records redirect 50 % of all mail.
    #[test]
    fn seed_load_shared_redirects_half() {
        let o = load_shared(&seed());
        assert!((o.redirected - 0.50).abs() < 1e-9);
        assert!((o.crossing_bytes - 5000.0).abs() < 1e-6);
    }

    /// A US primary redirects 30 %.
    #[test]
    fn seed_us_primary_redirects_thirty() {
        let f = seed();
        let best = best_primary(&f).map(|f| f.location.clone());
        assert_eq!(best.as_deref(), Some("us"));
        let o = single_primary(&f, "us");
        assert!((o.redirected - 0.30).abs() < 1e-9);
        assert!((o.crossing_bytes - 3000.0).abs() < 1e-6);
        assert!((single_primary(&f, "eu").redirected - 0.70).abs() < 1e-9);
    }

    /// One primary per location: each shared domain redirects its
    /// minority; with the seed's single flat domain that is a US primary.
    #[test]
    fn per_location_redirects_each_domains_minority() {
        assert!((per_location(&[seed()]).redirected - 0.30).abs() < 1e-9);
        let eu_heavy = vec![
            Flow {
                location: "us".into(),
                messages: 20,
                bytes: 200,
            },
            Flow {
                location: "eu".into(),
                messages: 80,
                bytes: 800,
            },
        ];
        // 30 of 100 and 20 of 100 redirected: 25 %, 300 + 200 bytes.
        let o = per_location(&[seed(), eu_heavy]);
        assert!((o.redirected - 0.25).abs() < 1e-9);
        assert!((o.crossing_bytes - 3200.0).abs() < 1e-6);
        assert_eq!(per_location(&[]).redirected, 0.0);
    }

    /// No mail: nothing redirected, no division by zero.
    #[test]
    fn empty_is_zero() {
        assert_eq!(load_shared(&[]).redirected, 0.0);
        assert_eq!(single_primary(&[], "us").redirected, 0.0);
    }
}
