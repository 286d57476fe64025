//! The recipient directory: an export from Active Directory or LDAP turned
//! into the engine's compact lookup table (`engine::directory`), installed
//! like a rule file, and held by the daemon for the recipient filter and
//! inbound rewriting.
//!
//! * [`parse`] reads LDIF or CSV into records;
//! * [`build`] (here) turns records into the table: every address valid,
//!   each secondary mapped to its entry's primary;
//! * [`install`] keeps it in the state directory (generations, one pointer,
//!   rollback) and swaps it in for new sessions.
//!
//! One export gives both tables. Per directory object:
//! * its primary address is its `SMTP:` proxy address, else its `mail`,
//!   else its `targetAddress`;
//! * every address it has (`mail`, each `smtp:`/`SMTP:` proxy address, a
//!   proxy without a type prefix, `targetAddress`) is a valid recipient;
//!   proxy addresses of other types (`X500:`, `SIP:`, `X400:`) are not mail
//!   addresses and are skipped;
//! * each address other than the primary maps to the primary, except
//!   `targetAddress`: a mail-enabled contact's external address is where
//!   mail for the contact goes, not a name of ours for it, so it is valid
//!   but never rewritten (rewriting it would send it round again).
//!
//! Addresses compare ASCII case-insensitively. One address on two objects
//! with different primaries is an error (naming both lines).

pub mod install;
pub mod parse;

use crate::engine::directory::{self as table, Hit, View, HEADER, MAGIC, NO_TARGET};
use crate::engine::limits::{MAX_DIRECTORY_ADDRESSES, MAX_DIRECTORY_POOL};
use parse::{err, Attr, Error, Record};
use std::collections::HashMap;

/// An installed directory: the table's octets, validated once.
pub struct Directory {
    blob: Box<[u8]>,
}

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Directory {{ version: {:016X}, addresses: {} }}",
            self.version(),
            self.addresses()
        )
    }
}

impl Directory {
    /// Reads an export (LDIF or CSV) and builds its table. An error names
    /// the line and column.
    pub fn from_export(text: &str) -> Result<Directory, Error> {
        let records = parse::parse(text)?;
        let (items, entries) = collect(&records)?;
        Ok(Directory {
            blob: encode(&items, entries)?.into_boxed_slice(),
        })
    }

    /// A table read back from the state directory, checked whole.
    pub fn from_blob(blob: Vec<u8>) -> Result<Directory, String> {
        let v = View::open(&blob).map_err(|e| format!("{e:?}"))?;
        v.validate().map_err(|e| format!("{e:?}"))?;
        Ok(Directory {
            blob: blob.into_boxed_slice(),
        })
    }

    /// The engine's view of the table (O(1); the table was validated).
    pub fn view(&self) -> View<'_> {
        View::open(&self.blob).unwrap_or(View::empty())
    }

    /// Whether `addr` is a known recipient and, for a secondary address,
    /// its primary one. No lock, no allocation.
    pub fn lookup(&self, addr: &[u8]) -> Option<Hit<'_>> {
        self.view().lookup(addr)
    }

    /// The table's version (a digest of its addresses and primaries).
    pub fn version(&self) -> u64 {
        self.view().version()
    }

    /// Number of addresses.
    pub fn addresses(&self) -> usize {
        self.view().addresses()
    }

    /// Number of directory objects.
    pub fn entries(&self) -> u32 {
        self.view().entries()
    }

    /// The table's octets (what is written to the state directory).
    pub fn bytes(&self) -> &[u8] {
        &self.blob
    }
}

/// One address of the table: its lowercased key, its primary (as
/// written), and where it first stood.
struct Item {
    key: String,
    target: Option<String>,
    line: usize,
    col: usize,
}

/// The mail address in a value: `Some(Some((addr, primary)))`, or
/// `Some(None)` for a proxy address of another type (skipped).
fn address_of(v: &parse::Val) -> Result<Option<(&str, bool)>, Error> {
    let text = v.text.as_str();
    let (prefix, rest) = match text.split_once(':') {
        Some((p, r)) if !p.contains('@') && v.attr != Attr::Mail => (Some(p), r),
        _ => (None, text),
    };
    let primary = v.attr == Attr::Proxy && prefix == Some("SMTP");
    if prefix.is_some_and(|p| !p.eq_ignore_ascii_case("smtp")) {
        return Ok(None);
    }
    let a = rest.trim();
    if !a.contains('@') || !crate::engine::addr::valid_address(a.as_bytes(), true) {
        return Err(err(
            v.line,
            v.col,
            format!("{a:?} is not an e-mail address"),
        ));
    }
    if a.len() > usize::from(u16::MAX) {
        return Err(err(v.line, v.col, "address too long"));
    }
    Ok(Some((a, primary)))
}

/// One record's addresses, each once, with the primary it maps to.
fn record_items(r: &Record) -> Result<Vec<Item>, Error> {
    let mut addrs = Vec::new();
    let mut primary: Option<(&str, usize)> = None;
    let mut mail = None;
    let mut target = None;
    for v in &r.values {
        let Some((a, is_primary)) = address_of(v)? else {
            continue;
        };
        if is_primary {
            if let Some((p, line)) = primary.filter(|(p, _)| !p.eq_ignore_ascii_case(a)) {
                return Err(err(
                    v.line,
                    v.col,
                    format!(
                    "a second primary (SMTP:) address; the entry's primary {p} is on line {line}"
                ),
                ));
            }
            primary = Some((a, v.line));
        }
        match v.attr {
            Attr::Mail => mail = mail.or(Some(a)),
            Attr::Target => target = target.or(Some(a)),
            Attr::Proxy => {}
        }
        addrs.push((a, v.attr, v.line, v.col));
    }
    let primary = primary.map(|(p, _)| p).or(mail).or(target);
    let mut out: Vec<Item> = Vec::new();
    for (a, attr, line, col) in addrs {
        let maps = attr != Attr::Target && primary.is_some_and(|p| !p.eq_ignore_ascii_case(a));
        let to = primary.filter(|_| maps).map(str::to_string);
        let key = a.to_ascii_lowercase();
        match out.iter_mut().find(|o| o.key == key) {
            // Also a proxy of the same object: the mapping wins.
            Some(o) => o.target = o.target.take().or(to),
            None => out.push(Item {
                key,
                target: to,
                line,
                col,
            }),
        }
    }
    Ok(out)
}

/// Every address of every record, once, with its primary; the number of
/// objects that had an address. Refuses conflicts and more than the
/// capacity, naming the line.
fn collect(records: &[Record]) -> Result<(Vec<Item>, u32), Error> {
    let mut items: Vec<Item> = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut entries = 0u32;
    for r in records {
        let got = record_items(r)?;
        entries += u32::from(!got.is_empty());
        for Item {
            key,
            target,
            line,
            col,
        } in got
        {
            if let Some(&i) = seen.get(&key) {
                let old = &items[i];
                let same = match (&old.target, &target) {
                    (Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
                    (a, b) => a.is_none() && b.is_none(),
                };
                if !same {
                    let show = |t: &Option<String>| t.clone().unwrap_or_else(|| "itself".into());
                    return Err(err(
                        line,
                        col,
                        format!(
                            "{key} maps to {} here, but to {} on line {}",
                            show(&target),
                            show(&old.target),
                            old.line
                        ),
                    ));
                }
                continue;
            }
            if items.len() == MAX_DIRECTORY_ADDRESSES {
                return Err(err(line, col, format!(
                    "the directory holds at most {MAX_DIRECTORY_ADDRESSES} addresses; this one is over"
                )));
            }
            seen.insert(key.clone(), items.len());
            items.push(Item {
                key,
                target,
                line,
                col,
            });
        }
    }
    Ok((items, entries))
}

/// Two random 64-bit hash keys (std's per-process random hash state).
fn random_keys(round: u64) -> (u64, u64) {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(round);
    let k0 = h.finish();
    h.write_u64(k0);
    (k0, h.finish())
}

/// The table's version: the first eight octets of the SHA-256 of its
/// addresses and primaries in order (the same export, the same version).
fn version_of(items: &[Item]) -> u64 {
    let mut keys: Vec<(&str, &str)> = items
        .iter()
        .map(|i| (i.key.as_str(), i.target.as_deref().unwrap_or("")))
        .collect();
    keys.sort_unstable();
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for (k, t) in keys {
        ctx.update(k.as_bytes());
        ctx.update(b"\0");
        ctx.update(t.to_ascii_lowercase().as_bytes());
        ctx.update(b"\n");
    }
    let d = ctx.finish();
    let mut v = [0u8; 8];
    v.copy_from_slice(&d.as_ref()[..8]);
    u64::from_be_bytes(v)
}

/// The pool of primaries (each once, u16 length + octets) and each item's
/// target offset.
fn pool_of(items: &[Item]) -> Result<(Vec<u8>, Vec<u32>), Error> {
    let mut pool = Vec::new();
    let mut at: HashMap<&str, u32> = HashMap::new();
    let mut targets = Vec::with_capacity(items.len());
    for i in items {
        let Some(t) = i.target.as_deref() else {
            targets.push(NO_TARGET);
            continue;
        };
        let off = match at.get(t) {
            Some(&o) => o,
            None => {
                if pool.len() + 2 + t.len() > MAX_DIRECTORY_POOL {
                    return Err(err(
                        i.line,
                        i.col,
                        format!("the primary addresses take more than {MAX_DIRECTORY_POOL} octets"),
                    ));
                }
                let o = pool.len() as u32;
                pool.extend_from_slice(&(t.len() as u16).to_le_bytes());
                pool.extend_from_slice(t.as_bytes());
                at.insert(t, o);
                o
            }
        };
        targets.push(off);
    }
    Ok((pool, targets))
}

/// Lays the table out (see `engine::directory`); re-keys the hash in the
/// rare case two addresses share a hash.
fn encode(items: &[Item], entries: u32) -> Result<Vec<u8>, Error> {
    let (pool, targets) = pool_of(items)?;
    for round in 0..16 {
        let (k0, k1) = random_keys(round);
        let mut rows: Vec<(u64, u32)> = items
            .iter()
            .zip(&targets)
            .map(|(i, &t)| (table::hash(k0, k1, i.key.as_bytes()), t))
            .collect();
        rows.sort_unstable_by_key(|r| r.0);
        if rows.windows(2).any(|w| w[0].0 == w[1].0) {
            continue;
        }
        let n = rows.len();
        let mut b = Vec::with_capacity(HEADER + 12 * n + pool.len());
        b.extend_from_slice(&MAGIC);
        b.extend_from_slice(&version_of(items).to_le_bytes());
        b.extend_from_slice(&k0.to_le_bytes());
        b.extend_from_slice(&k1.to_le_bytes());
        for x in [n as u32, pool.len() as u32, entries, 0] {
            b.extend_from_slice(&x.to_le_bytes());
        }
        rows.iter()
            .for_each(|r| b.extend_from_slice(&r.0.to_le_bytes()));
        rows.iter()
            .for_each(|r| b.extend_from_slice(&r.1.to_le_bytes()));
        b.extend_from_slice(&pool);
        return Ok(b);
    }
    Err(err(1, 1, "could not find a hash key without collisions"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SEED: &str = "dn: CN=Johnny Cash (rewrite),OU=Rewrite,DC=relay\n\
mail: johnny@eu.contoso.com\n\
proxyAddresses: SMTP:johnny@eu.contoso.com\n\
proxyAddresses: smtp:Johnny@Contoso.com\n\
proxyAddresses: X500:/o=relay/cn=johnny\n\
\n\
dn: CN=Willie\n\
mail: willie@contoso.com\n\
proxyAddresses: smtp:willie@us.contoso.com\n\
\n\
dn: CN=Contact\n\
mail: partner@contoso.com\n\
targetAddress: SMTP:partner@fabrikam.example\n";

    fn primary<'a>(d: &'a Directory, a: &str) -> Option<Option<&'a str>> {
        d.lookup(a.as_bytes())
            .map(|h| h.primary.map(|p| std::str::from_utf8(p).unwrap()))
    }

    #[test]
    fn secondaries_map_to_the_primary_and_every_address_is_valid() {
        let d = Directory::from_export(SEED).expect("builds");
        assert_eq!(d.entries(), 3);
        assert_eq!(d.addresses(), 6);
        // Seed 001: the flat address is a secondary of the rewrite object.
        assert_eq!(
            primary(&d, "johnny@contoso.com"),
            Some(Some("johnny@eu.contoso.com"))
        );
        assert_eq!(
            primary(&d, "JOHNNY@CONTOSO.COM"),
            Some(Some("johnny@eu.contoso.com"))
        );
        assert_eq!(primary(&d, "johnny@eu.contoso.com"), Some(None));
        // No SMTP: proxy: mail is the primary.
        assert_eq!(
            primary(&d, "willie@us.contoso.com"),
            Some(Some("willie@contoso.com"))
        );
        // targetAddress is valid, never rewritten.
        assert_eq!(primary(&d, "partner@fabrikam.example"), Some(None));
        assert_eq!(primary(&d, "partner@contoso.com"), Some(None));
        assert_eq!(primary(&d, "nobody@contoso.com"), None);
        assert_eq!(primary(&d, "/o=relay/cn=johnny"), None);
    }

    #[test]
    fn the_version_follows_the_content_not_the_hash_key() {
        let a = Directory::from_export(SEED).expect("a");
        let b = Directory::from_export(SEED).expect("b");
        assert_eq!(a.version(), b.version());
        let c = Directory::from_export(&SEED.replace("willie@us", "willie@eu")).expect("c");
        assert_ne!(a.version(), c.version());
        let back = Directory::from_blob(a.bytes().to_vec()).expect("reloads");
        assert_eq!(
            primary(&back, "johnny@contoso.com"),
            Some(Some("johnny@eu.contoso.com"))
        );
    }

    #[test]
    fn conflicts_and_bad_addresses_name_the_line() {
        let two = format!("{SEED}\ndn: CN=Other\nmail: other@contoso.com\nproxyAddresses: smtp:johnny@contoso.com\n");
        let e = Directory::from_export(&two).expect_err("conflict");
        assert_eq!((e.line, e.col), (17, 17), "{e}");
        assert!(e.message.contains("line 4"), "{e}");
        let e = Directory::from_export("dn: x\nmail: not-an-address\n").expect_err("bad");
        assert_eq!((e.line, e.col), (2, 7), "{e}");
        let e = Directory::from_export(
            "dn: x\nproxyAddresses: SMTP:a@b.c\nproxyAddresses: SMTP:d@b.c\n",
        )
        .expect_err("two primaries");
        assert_eq!(e.line, 3, "{e}");
    }

    #[test]
    fn more_than_the_capacity_is_refused_at_the_address_over_it() {
        let mut csv = String::from("mail\n");
        for i in 0..=MAX_DIRECTORY_ADDRESSES {
            csv.push_str(&format!("u{i}@contoso.com\n"));
        }
        let e = Directory::from_export(&csv).expect_err("over");
        assert_eq!(e.line, MAX_DIRECTORY_ADDRESSES + 2, "{e}");
        assert!(e.message.contains("at most"), "{e}");
    }

    proptest! {
        #[test]
        fn every_address_is_found_and_others_are_not(n in 1usize..200, probe in "[a-z]{1,12}") {
            let mut ldif = String::new();
            for i in 0..n {
                ldif.push_str(&format!(
                    "dn: cn=u{i}\nproxyAddresses: SMTP:u{i}@eu.example\nproxyAddresses: smtp:u{i}@example\n\n"
                ));
            }
            let d = Directory::from_export(&ldif).expect("builds");
            prop_assert_eq!(d.addresses(), 2 * n);
            for i in 0..n {
                let want = format!("u{i}@eu.example");
                prop_assert_eq!(primary(&d, &format!("U{i}@EXAMPLE")), Some(Some(want.as_str())));
                prop_assert_eq!(primary(&d, &want), Some(None));
            }
            prop_assert_eq!(primary(&d, &format!("{probe}@example")), None);
        }
    }
}
