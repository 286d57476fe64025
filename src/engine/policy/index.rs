//! The rule index: which transport rules can apply to a recipient, so that
//! evaluation looks at those alone and one message costs about the same
//! with 16 or 1,024 rules.
//!
//! A rule's *key* is the first sender or recipient condition of its `if`
//! set (`sender`, `sender_domain`, `sender_group`, `recipient`,
//! `recipient_domain`, `recipient_group`) that comes before any condition
//! writing to the rule log (header and attachment conditions log what they
//! found even when they fail). Every such condition needs the address's
//! domain to equal one of a fixed set of domains, so a rule whose key
//! names none of the domain's hash is certain to fail its `if` set before
//! it logs anything: skipping it changes neither decisions nor the log.
//! Keyed rules are listed in the bucket of each of their key's domains,
//! in the recipient or the sender map; every other rule is *always* a
//! candidate. A `client_network` condition whose networks are all IPv4
//! /16 or longer (IPv6 /112) keys a rule too, in the client map, by the
//! first 14 octets of its addresses (15 for a /24 or longer). Hash collisions only add candidates, which are evaluated in
//! full, so the index is exact.
//!
//! The index also holds the hash of every header condition's field name:
//! evaluation collects the hashes of the fields the rules can see once per
//! message, and a condition whose name's hash is not among them knows the
//! field is absent without scanning the header block.
//!
//! The shell's compiler builds the index; [`Table::validate`] checks every
//! entry against the rules ([`Table::index_ok`]).

use super::super::addr::domain_of;
use super::super::limits::{MAX_CONDITIONS, MAX_INDEX_BUCKETS, MAX_INDEX_ENTRIES, MAX_RULES};
use super::table::{Condition, List, Rule, Span, Table};
use heapless::Vec;
use serde::{Deserialize, Serialize};

/// Words of a bitset over rules.
pub const RULE_WORDS: usize = MAX_RULES.div_ceil(32);

/// The hash of the index and of header names: 32-bit FNV-1a of the octets,
/// ASCII letters lowered (the conditions compare ignoring ASCII case).
pub fn key_hash(s: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in s {
        h ^= u32::from(b.to_ascii_lowercase());
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// Which address a rule's key is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum KeySide {
    /// The recipient (per recipient).
    Recipient,
    /// The envelope sender (per message).
    Sender,
    /// The client's address (per message).
    Client,
}

/// The domains of a rule's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Key {
    /// A list of domains.
    Domains(List),
    /// A list of address patterns (`user@domain`, `*@domain`): their domains.
    Addresses(List),
    /// Client networks of prefix [`NET_KEY_BITS`] or longer: the first
    /// [`NET_KEY_OCTETS`] octets of each.
    Networks(Span),
}

/// A `client_network` condition is a key when each of its networks is at
/// least this long a prefix: an IPv4 network of /16 or longer (IPv4 is
/// stored IPv4-mapped, 96 bits before it), an IPv6 one of /112 or longer.
/// Every address such a network contains shares its first octets.
pub const NET_KEY_BITS: u8 = 112;

/// The octets of an address that a network key hashes
/// ([`NET_KEY_BITS`] / 8).
pub const NET_KEY_OCTETS: usize = NET_KEY_BITS as usize / 8;

/// A network of this prefix or longer (IPv4 /24, IPv6 /120) is keyed by
/// one octet more, so that the many /24s of one /16 do not share a key;
/// the client's address is looked up by both lengths.
pub const NET_KEY_LONG_BITS: u8 = NET_KEY_BITS + 8;

/// One map of the index: the rules keyed by a domain, by the domain's hash.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DomainMap {
    /// Bucket offsets: bucket `b` holds `rules[starts[b]..starts[b + 1]]`.
    /// Empty for an empty map, else a power of two of buckets plus one.
    pub starts: Vec<u16, { MAX_INDEX_BUCKETS + 1 }>,
    /// Rule numbers, ascending within a bucket.
    pub rules: Vec<u16, MAX_INDEX_ENTRIES>,
}

impl DomainMap {
    /// The number of buckets (0 for an empty map).
    pub fn buckets(&self) -> usize {
        self.starts.len().saturating_sub(1)
    }

    /// The bucket a hash falls in (`None` for an empty map).
    pub fn bucket_of(&self, h: u32) -> Option<usize> {
        let n = self.buckets();
        (n > 0).then(|| h as usize & (n - 1))
    }

    /// The rules of bucket `b` (empty when out of range).
    pub fn bucket(&self, b: usize) -> &[u16] {
        let (Some(a), Some(e)) = (self.starts.get(b), self.starts.get(b + 1)) else {
            return &[];
        };
        self.rules
            .get(usize::from(*a)..usize::from(*e))
            .unwrap_or(&[])
    }

    /// The rules keyed by a domain of hash `h` (and any sharing its bucket).
    pub fn lookup(&self, h: u32) -> &[u16] {
        self.bucket_of(h).map_or(&[], |b| self.bucket(b))
    }

    /// The offsets and rule numbers are well formed for `nrules` rules:
    /// a power of two of buckets, offsets from 0 to the end without going
    /// back, rules in range and strictly ascending within each bucket.
    fn shape_ok(&self, nrules: usize) -> bool {
        if self.starts.is_empty() {
            return self.rules.is_empty();
        }
        let n = self.buckets();
        n.is_power_of_two()
            && self.starts.first() == Some(&0)
            && self.starts.last().map(|e| usize::from(*e)) == Some(self.rules.len())
            && self.starts.windows(2).all(|w| w[0] <= w[1])
            && (0..n).all(|b| {
                let rs = self.bucket(b);
                rs.windows(2).all(|w| w[0] < w[1]) && rs.iter().all(|r| usize::from(*r) < nrules)
            })
    }
}

/// The compiled rule index (see the module's documentation).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RuleIndex {
    /// Rules keyed by a recipient condition, by the recipient's domain.
    pub recipient: DomainMap,
    /// Rules keyed by a sender condition, by the sender's domain.
    pub sender: DomainMap,
    /// Rules keyed by a client network condition, by the client address's
    /// first [`NET_KEY_OCTETS`] octets.
    pub client: DomainMap,
    /// The rules without a key, always candidates: a bit per rule, in
    /// `rules.len().div_ceil(32)` words.
    pub always: Vec<u32, RULE_WORDS>,
    /// Per condition: [`key_hash`] of a header condition's field name, 0
    /// for any other condition.
    pub names: Vec<u32, MAX_CONDITIONS>,
}

impl RuleIndex {
    /// An empty index (a table without rules or conditions).
    pub const fn new() -> Self {
        RuleIndex {
            recipient: DomainMap {
                starts: Vec::new(),
                rules: Vec::new(),
            },
            sender: DomainMap {
                starts: Vec::new(),
                rules: Vec::new(),
            },
            client: DomainMap {
                starts: Vec::new(),
                rules: Vec::new(),
            },
            always: Vec::new(),
            names: Vec::new(),
        }
    }

    /// The map of keys about `side`.
    pub fn map(&self, side: KeySide) -> &DomainMap {
        match side {
            KeySide::Recipient => &self.recipient,
            KeySide::Sender => &self.sender,
            KeySide::Client => &self.client,
        }
    }

    /// Whether rule `r` is always a candidate.
    pub fn is_always(&self, r: usize) -> bool {
        self.always
            .get(r / 32)
            .is_some_and(|w| w & (1 << (r % 32)) != 0)
    }
}

/// Whether evaluating `c` may write to the rule log (header and attachment
/// conditions note what they found, also when they fail).
fn logs(c: &Condition) -> bool {
    matches!(
        c,
        Condition::HeaderPresent(_)
            | Condition::HeaderMatches(..)
            | Condition::HeaderNotMatches(..)
            | Condition::AttachmentMatches(_)
    )
}

/// The key condition `c` gives, if it is a sender or recipient condition.
fn key_of(t: &Table, c: &Condition) -> Option<(KeySide, Key)> {
    let group = |g: &u16| t.groups.get(usize::from(*g)).map(|g| g.members);
    match c {
        Condition::Sender(l) => Some((KeySide::Sender, Key::Addresses(*l))),
        Condition::SenderDomain(l) => Some((KeySide::Sender, Key::Domains(*l))),
        Condition::SenderGroup(g) => Some((KeySide::Sender, Key::Addresses(group(g)?))),
        Condition::Recipient(l) => Some((KeySide::Recipient, Key::Addresses(*l))),
        Condition::RecipientDomain(l) => Some((KeySide::Recipient, Key::Domains(*l))),
        Condition::RecipientGroup(g) => Some((KeySide::Recipient, Key::Addresses(group(g)?))),
        Condition::ClientNetwork(sp) => {
            let start = usize::from(sp.first);
            let nets = t.nets.get(start..start + usize::from(sp.count))?;
            let keyed = !nets.is_empty() && nets.iter().all(|n| n.prefix >= NET_KEY_BITS);
            keyed.then_some((KeySide::Client, Key::Networks(*sp)))
        }
        _ => None,
    }
}

/// A rule's index key: its first sender or recipient condition before any
/// condition that logs; `None` when it has none (an always candidate).
pub fn rule_key(t: &Table, rule: &Rule) -> Option<(KeySide, Key)> {
    let span = t.condsets.get(usize::from(rule.when))?;
    let first = usize::from(span.first);
    let conds = t.conditions.get(first..first + usize::from(span.count))?;
    conds
        .iter()
        .take_while(|c| !logs(c))
        .find_map(|c| key_of(t, c))
}

/// The domains a key names (with repeats, as the lists hold them), or
/// for networks the octets of their addresses that are hashed.
pub fn key_domains(t: &Table, k: Key) -> impl Iterator<Item = &[u8]> + '_ {
    let (l, addresses, sp) = match k {
        Key::Domains(l) => (l, false, Span::default()),
        Key::Addresses(l) => (l, true, Span::default()),
        Key::Networks(sp) => (List::default(), false, sp),
    };
    let start = usize::from(sp.first);
    let nets = t
        .nets
        .get(start..start + usize::from(sp.count))
        .unwrap_or(&[]);
    t.list(l)
        .map(move |s| if addresses { domain_of(s) } else { s })
        .chain(
            nets.iter()
                .map(|n| net_key(&n.addr, n.prefix >= NET_KEY_LONG_BITS)),
        )
}

/// The octets of an address (IPv4-mapped for IPv4) that a network key
/// hashes: [`NET_KEY_OCTETS`], one more for a `long` key
/// ([`NET_KEY_LONG_BITS`]).
pub fn net_key(ip: &[u8; 16], long: bool) -> &[u8] {
    ip.get(..NET_KEY_OCTETS + usize::from(long)).unwrap_or(&[])
}

/// The hash [`RuleIndex::names`] holds for condition `c`.
pub fn name_hash(t: &Table, c: &Condition) -> u32 {
    match c {
        Condition::HeaderPresent(n)
        | Condition::HeaderAbsent(n)
        | Condition::HeaderMatches(n, _)
        | Condition::HeaderNotMatches(n, _) => key_hash(t.str(*n)),
        _ => 0,
    }
}

impl Table {
    /// The rule index is whole and true to the rules: both maps well
    /// formed; every entry a rule whose key names a domain of that bucket;
    /// every keyed rule in the bucket of each of its domains and not
    /// always, every other rule always; the header name hashes those of
    /// the conditions. A corrupt index could skip a rule that applies, so
    /// it is refused like any bad reference.
    pub fn index_ok(&self) -> bool {
        let x = &self.index;
        let n = self.rules.len();
        let words_ok =
            x.always.len() == n.div_ceil(32) && (n..x.always.len() * 32).all(|r| !x.is_always(r));
        words_ok
            && x.names.len() == self.conditions.len()
            && x.names
                .iter()
                .zip(self.conditions.iter())
                .all(|(h, c)| *h == name_hash(self, c))
            && [KeySide::Recipient, KeySide::Sender, KeySide::Client]
                .iter()
                .all(|s| x.map(*s).shape_ok(n) && self.entries_ok(*s))
            && self
                .rules
                .iter()
                .enumerate()
                .all(|(r, rule)| match rule_key(self, rule) {
                    None => x.is_always(r),
                    Some((side, k)) => !x.is_always(r) && self.listed(r, side, k),
                })
    }

    /// Every entry of the map of `side` is a rule keyed on that side by a
    /// domain whose hash falls in the entry's bucket.
    fn entries_ok(&self, side: KeySide) -> bool {
        let map = self.index.map(side);
        (0..map.buckets()).all(|b| {
            map.bucket(b).iter().all(|r| {
                let key = self
                    .rules
                    .get(usize::from(*r))
                    .and_then(|rule| rule_key(self, rule));
                match key {
                    Some((s, k)) if s == side => {
                        key_domains(self, k).any(|d| map.bucket_of(key_hash(d)) == Some(b))
                    }
                    _ => false,
                }
            })
        })
    }

    /// Rule `r` is in the bucket of each domain of its key.
    fn listed(&self, r: usize, side: KeySide, k: Key) -> bool {
        let map = self.index.map(side);
        key_domains(self, k).all(|d| map.lookup(key_hash(d)).binary_search(&(r as u16)).is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_ignores_ascii_case() {
        assert_eq!(key_hash(b"Contoso.COM"), key_hash(b"contoso.com"));
        assert_ne!(key_hash(b"contoso.com"), key_hash(b"contoso.org"));
        assert_eq!(key_hash(b""), 0x811c_9dc5);
    }

    #[test]
    fn a_map_finds_its_buckets_and_refuses_bad_shapes() {
        let mut m = DomainMap::default();
        assert!(m.shape_ok(0));
        assert_eq!(m.lookup(7), &[] as &[u16]);
        for s in [0u16, 1, 1, 3, 3] {
            m.starts.push(s).expect("room");
        }
        for r in [4u16, 2, 5] {
            m.rules.push(r).expect("room");
        }
        assert_eq!(m.buckets(), 4);
        assert_eq!(m.lookup(4), &[4]);
        assert_eq!(m.lookup(1), &[] as &[u16]);
        assert_eq!(m.lookup(2 + 4 * 9), &[2, 5]);
        assert!(m.shape_ok(6));
        assert!(!m.shape_ok(5), "rule 5 out of range");
        let mut bad = m.clone();
        bad.rules.swap(1, 2);
        assert!(!bad.shape_ok(6), "not ascending in a bucket");
        let mut bad = m.clone();
        bad.starts.pop();
        assert!(!bad.shape_ok(6), "three buckets");
        let mut bad = m;
        bad.starts[2] = 0;
        assert!(!bad.shape_ok(6), "offsets go back");
    }
}
