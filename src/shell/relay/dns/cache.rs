//! The cache of sender authentication's lookups (SPF records and their
//! `include:`/`a`/`mx` names, DKIM keys, DMARC records): an answer is kept
//! for its TTL, "no such name" and "no data" for [`AUTH_NEGATIVE_TTL`], so
//! that a busy edge asks the same sender domain once per TTL, not once per
//! message. Failures (timeouts, SERVFAIL) are never kept: the next message
//! asks again. Bounded by [`AUTH_CACHE_ENTRIES`].

use super::{AuthRecords, AuthType};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Answers kept at most. An edge sees a few hundred sender domains within
/// a TTL, each costing a handful of names (SPF, its includes, DMARC, one
/// or two DKIM keys); 4,096 entries of at most a few hundred octets each
/// stay around a megabyte even when full.
pub const AUTH_CACHE_ENTRIES: usize = 4096;

/// Seconds a negative answer (NXDOMAIN, no records of the type) is kept:
/// the SOA minimum is not read, and zones publish a few minutes.
pub const AUTH_NEGATIVE_TTL: u32 = 300;

/// Longest any answer is kept, whatever its TTL: a key or policy that was
/// changed must be seen within a day.
pub const AUTH_MAX_TTL: u32 = 86_400;

/// One kept answer and when it expires.
type Entry = (AuthRecords, Instant);

/// The answers by (lower-case name, type).
#[derive(Debug, Default)]
pub(super) struct AuthCache {
    map: Mutex<HashMap<(String, AuthType), Entry>>,
}

impl AuthCache {
    /// The kept answer for `name` and `kind`, if it has not expired.
    pub(super) fn get(&self, name: &str, kind: AuthType, now: Instant) -> Option<AuthRecords> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(&(name.to_string(), kind)) {
            Some((records, until)) if *until > now => Some(records.clone()),
            _ => None,
        }
    }

    /// Keeps `records` for `ttl` seconds (at most [`AUTH_MAX_TTL`]); a
    /// TTL of 0 keeps nothing. When full, expired answers go first, then
    /// the one that would expire soonest.
    pub(super) fn put(
        &self,
        name: &str,
        kind: AuthType,
        records: AuthRecords,
        ttl: u32,
        now: Instant,
    ) {
        let ttl = ttl.min(AUTH_MAX_TTL);
        if ttl == 0 {
            return;
        }
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let key = (name.to_string(), kind);
        if map.len() >= AUTH_CACHE_ENTRIES && !map.contains_key(&key) {
            map.retain(|_, (_, until)| *until > now);
            if map.len() >= AUTH_CACHE_ENTRIES {
                let soonest = map
                    .iter()
                    .min_by_key(|(_, (_, until))| *until)
                    .map(|(k, _)| k.clone());
                if let Some(k) = soonest {
                    map.remove(&k);
                }
            }
        }
        map.insert(key, (records, now + Duration::from_secs(u64::from(ttl))));
    }

    /// How many answers are kept (expired ones included until evicted).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn txt(s: &str) -> AuthRecords {
        AuthRecords::Texts(vec![s.as_bytes().to_vec()])
    }

    #[test]
    fn an_answer_is_kept_for_its_ttl_and_no_longer() {
        let c = AuthCache::default();
        let t0 = Instant::now();
        c.put("example.org", AuthType::Txt, txt("v=spf1 -all"), 60, t0);
        assert_eq!(
            c.get("example.org", AuthType::Txt, t0),
            Some(txt("v=spf1 -all"))
        );
        assert_eq!(c.get("example.org", AuthType::A, t0), None, "another type");
        assert_eq!(
            c.get("example.org", AuthType::Txt, t0 + Duration::from_secs(59)),
            Some(txt("v=spf1 -all"))
        );
        assert_eq!(
            c.get("example.org", AuthType::Txt, t0 + Duration::from_secs(60)),
            None
        );
    }

    #[test]
    fn ttl_zero_keeps_nothing_and_long_ttls_are_capped() {
        let c = AuthCache::default();
        let t0 = Instant::now();
        c.put("a.example", AuthType::Txt, txt("x"), 0, t0);
        assert_eq!(c.get("a.example", AuthType::Txt, t0), None);
        c.put("b.example", AuthType::Txt, txt("x"), u32::MAX, t0);
        let day = Duration::from_secs(u64::from(AUTH_MAX_TTL));
        assert!(c
            .get(
                "b.example",
                AuthType::Txt,
                t0 + day - Duration::from_secs(1)
            )
            .is_some());
        assert!(c.get("b.example", AuthType::Txt, t0 + day).is_none());
    }

    #[test]
    fn a_full_cache_drops_expired_then_the_soonest_to_expire() {
        let c = AuthCache::default();
        let t0 = Instant::now();
        for i in 0..AUTH_CACHE_ENTRIES {
            let ttl = match i {
                7 => 1,
                0 => 100,
                _ => 101 + (i % 50) as u32,
            };
            c.put(&format!("n{i}.example"), AuthType::Txt, txt("x"), ttl, t0);
        }
        assert_eq!(c.len(), AUTH_CACHE_ENTRIES);
        // n7 has expired: it makes the room.
        let t1 = t0 + Duration::from_secs(2);
        c.put("new.example", AuthType::Txt, txt("y"), 100, t1);
        assert_eq!(c.len(), AUTH_CACHE_ENTRIES);
        assert!(c.get("n7.example", AuthType::Txt, t1).is_none());
        // Nothing expired now: one of the soonest to expire (TTL 100) goes.
        c.put("newer.example", AuthType::Txt, txt("z"), 100, t1);
        assert_eq!(c.len(), AUTH_CACHE_ENTRIES);
        assert!(c.get("newer.example", AuthType::Txt, t1).is_some());
        assert!(
            c.get("n0.example", AuthType::Txt, t1).is_none(),
            "n0 had the shortest TTL"
        );
        // Replacing a kept name evicts nothing.
        c.put("newer.example", AuthType::Txt, txt("w"), 100, t1);
        assert_eq!(c.get("newer.example", AuthType::Txt, t1), Some(txt("w")));
        assert!(c.get("n1.example", AuthType::Txt, t1).is_some());
    }
}
