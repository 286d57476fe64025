//! DMARC (RFC 7489, with the DNS tree walk of DMARCbis) sans-IO: the policy
//! record, identifier alignment, and the lookups that find the policy and
//! the organizational domain.
//!
//! The organizational domain comes from the **DNS tree walk**, not from the
//! public suffix list: the list is about 230 KB that a board on flash would
//! carry and that goes stale between firmware updates, while the walk asks
//! the DNS the domain owners publish (at most [`MAX_WALK`] `_dmarc` TXT
//! lookups per name, cached by the shell's resolver). DMARCbis (the
//! successor of RFC 7489) specifies this walk.
//!
//! [`Walk`] drives one discovery: [`Walk::need`] names the next
//! `_dmarc.<name>` TXT lookup, [`Walk::answer`] takes its records, until it
//! is done: the policy record found (if any), where, and the organizational
//! domain.

use crate::engine::dkim::tags;
use crate::engine::limits::MAX_DNS_NAME;
use heapless::Vec;

/// Lookups of one tree walk (DMARCbis §4.10: at most eight labels are
/// looked at, the first query included).
pub const MAX_WALK: usize = 8;

/// A requested policy (`p=`, `sp=`, `np=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Policy {
    /// `none`: monitor only.
    None,
    /// `quarantine`.
    Quarantine,
    /// `reject`.
    Reject,
}

impl Policy {
    /// Its name in `Authentication-Results` (`policy.published-domain-policy`).
    pub const fn name(self) -> &'static str {
        match self {
            Policy::None => "none",
            Policy::Quarantine => "quarantine",
            Policy::Reject => "reject",
        }
    }
}

/// Alignment mode (`adkim=`, `aspf=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Mode {
    /// `r`: same organizational domain.
    Relaxed,
    /// `s`: the same name.
    Strict,
}

/// `psd=` (DMARCbis): whether the record's domain is a public suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Psd {
    /// `y`: a public suffix domain.
    Yes,
    /// `n`: an organizational domain.
    No,
    /// `u` or absent: unknown.
    Unknown,
}

/// A parsed DMARC record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Record {
    /// `p=`.
    pub policy: Policy,
    /// `sp=` (defaults to `p=`).
    pub subdomain_policy: Policy,
    /// `np=`, for non-existent subdomains (defaults to `sp=`).
    pub nonexistent_policy: Policy,
    /// `pct=` (0..=100, default 100).
    pub pct: u8,
    /// `adkim=`.
    pub dkim_mode: Mode,
    /// `aspf=`.
    pub spf_mode: Mode,
    /// `psd=`.
    pub psd: Psd,
}

/// Why a TXT record is not a usable DMARC record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum RecordError {
    /// It does not start with `v=DMARC1`.
    NotDmarc,
    /// The tag list is malformed, or a known tag has a bad value.
    Syntax,
}

/// Parses a `_dmarc` TXT record (RFC 7489 §6.3). A record without `p=`
/// but with `rua=` is `p=none` (§6.6.3); unknown tags are ignored.
pub fn parse(txt: &[u8]) -> Result<Record, RecordError> {
    let mut all = tags::tags(txt);
    match all.next() {
        Some(Ok(t)) if t.name == b"v" && t.value == b"DMARC1" => {}
        _ => return Err(RecordError::NotDmarc),
    }
    tags::check(txt).map_err(|_| RecordError::Syntax)?;
    let get = |n: &[u8]| tags::get(txt, n);
    let policy = match get(b"p") {
        Some(p) => policy_of(p)?,
        None if get(b"rua").is_some() => Policy::None,
        None => return Err(RecordError::Syntax),
    };
    let subdomain_policy = get(b"sp").map(policy_of).transpose()?.unwrap_or(policy);
    let nonexistent_policy = get(b"np")
        .map(policy_of)
        .transpose()?
        .unwrap_or(subdomain_policy);
    let pct = match get(b"pct") {
        None => 100,
        Some(v) => match crate::engine::decimal::parse_u64(v) {
            Some(n) if n <= 100 => n as u8,
            _ => return Err(RecordError::Syntax),
        },
    };
    let psd = match get(b"psd") {
        None | Some(b"u") => Psd::Unknown,
        Some(b"y") => Psd::Yes,
        Some(b"n") => Psd::No,
        Some(_) => return Err(RecordError::Syntax),
    };
    Ok(Record {
        policy,
        subdomain_policy,
        nonexistent_policy,
        pct,
        dkim_mode: mode(get(b"adkim"))?,
        spf_mode: mode(get(b"aspf"))?,
        psd,
    })
}

fn policy_of(v: &[u8]) -> Result<Policy, RecordError> {
    match v {
        v if v.eq_ignore_ascii_case(b"none") => Ok(Policy::None),
        v if v.eq_ignore_ascii_case(b"quarantine") => Ok(Policy::Quarantine),
        v if v.eq_ignore_ascii_case(b"reject") => Ok(Policy::Reject),
        _ => Err(RecordError::Syntax),
    }
}

fn mode(v: Option<&[u8]>) -> Result<Mode, RecordError> {
    match v {
        None | Some(b"r") => Ok(Mode::Relaxed),
        Some(b"s") => Ok(Mode::Strict),
        Some(_) => Err(RecordError::Syntax),
    }
}

/// Whether an authenticated domain is aligned with the From domain under
/// `mode`; `org_from` and `org_auth` are their organizational domains.
pub fn aligned(from: &[u8], auth: &[u8], org_from: &[u8], org_auth: &[u8], mode: Mode) -> bool {
    let eq = |a: &[u8], b: &[u8]| trim_dot(a).eq_ignore_ascii_case(trim_dot(b));
    match mode {
        Mode::Strict => eq(from, auth),
        Mode::Relaxed => eq(org_from, org_auth),
    }
}

fn trim_dot(d: &[u8]) -> &[u8] {
    d.strip_suffix(b".").unwrap_or(d)
}

type Name = Vec<u8, MAX_DNS_NAME>;

/// The outcome of a tree walk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The policy record that applies, and the domain it was found at.
    pub record: Option<(Record, Name)>,
    /// The organizational domain of the name walked.
    pub organizational: Name,
    /// A lookup failed on the way (timeout): the result is uncertain.
    pub temperror: bool,
}

/// One DMARCbis tree walk from `name` (§4.10): `_dmarc.<name>`, then
/// shorter names; more than [`MAX_WALK`] labels jump to the seven
/// rightmost after the first query.
#[derive(Debug)]
pub struct Walk {
    name: Name,
    /// Where the current candidate starts in `name`.
    at: usize,
    query: Vec<u8, { MAX_DNS_NAME + 7 }>,
    asked: usize,
    /// The first record found (the one that applies to `name`).
    policy: Option<(Record, Name)>,
    /// The shortest domain with a record that is no public suffix, or the
    /// candidate below a `psd=y` record.
    org: Option<Name>,
    /// The candidate looked at just before the current one.
    below: Option<usize>,
    done: bool,
    temperror: bool,
}

impl Walk {
    /// A walk from `name` (a From domain, a DKIM `d=`, an SPF domain).
    pub fn new(name: &[u8]) -> Self {
        let mut n = Name::new();
        let trimmed = trim_dot(name);
        let ok = n.extend_from_slice(trimmed).is_ok() && !trimmed.is_empty();
        let mut w = Walk {
            name: n,
            at: 0,
            query: Vec::new(),
            asked: 0,
            policy: None,
            org: None,
            below: None,
            done: !ok,
            temperror: false,
        };
        w.set_query();
        w
    }

    /// The next TXT name to look up, or `None` when the walk is done.
    pub fn need(&self) -> Option<&[u8]> {
        (!self.done).then_some(&self.query[..])
    }

    /// The TXT records at the name [`Walk::need`] gave (empty for NXDOMAIN
    /// or no data); `failed` for a timeout or SERVFAIL.
    pub fn answer(&mut self, records: &[&[u8]], failed: bool) {
        if self.done {
            return;
        }
        self.asked += 1;
        self.temperror |= failed;
        let mut valid = records.iter().filter_map(|r| parse(r).ok());
        // Several DMARC records at one name are treated as none (§6.6.3).
        if let (Some(rec), None) = (valid.next(), valid.next()) {
            self.found(rec);
        }
        if !self.done {
            self.advance();
        }
    }

    /// What the walk found.
    pub fn result(&self) -> Found {
        let organizational = match &self.org {
            Some(o) => o.clone(),
            None => self.name.clone(),
        };
        Found {
            record: self.policy.clone(),
            organizational,
            temperror: self.temperror,
        }
    }

    fn candidate(&self) -> &[u8] {
        &self.name[self.at..]
    }

    fn found(&mut self, rec: Record) {
        let here = Name::from_slice(self.candidate()).unwrap_or_default();
        if self.policy.is_none() {
            self.policy = Some((rec, here.clone()));
        }
        match rec.psd {
            Psd::No => {
                self.org = Some(here);
                self.done = true;
            }
            Psd::Yes => {
                // The organizational domain is the name one label below.
                let below = self
                    .below
                    .map(|b| Name::from_slice(&self.name[b..]).unwrap_or_default());
                self.org = Some(below.unwrap_or(here));
                self.done = true;
            }
            Psd::Unknown => self.org = Some(here),
        }
    }

    /// Drops labels from the left; stops at the last label (a TLD holds no
    /// organizational record) or after [`MAX_WALK`] queries.
    fn advance(&mut self) {
        if self.asked >= MAX_WALK {
            self.done = true;
            return;
        }
        let labels = self.candidate().split(|&b| b == b'.').count();
        if labels <= 2 {
            self.done = true; // the next candidate would be a single label
            return;
        }
        self.below = Some(self.at);
        // After the first query, a long name jumps to its 7 rightmost labels.
        let skip = if self.asked == 1 && labels > MAX_WALK {
            labels - (MAX_WALK - 1)
        } else {
            1
        };
        for _ in 0..skip {
            match self.name[self.at..].iter().position(|&b| b == b'.') {
                Some(d) => self.at += d + 1,
                None => break,
            }
        }
        self.set_query();
    }

    fn set_query(&mut self) {
        self.query.clear();
        let _ = self.query.extend_from_slice(b"_dmarc.");
        let at = self.at;
        let _ = self.query.extend_from_slice(&self.name[at..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::String;
    use std::vec::Vec as StdVec;

    #[test]
    fn records() {
        let r =
            parse(b"v=DMARC1; p=reject; sp=quarantine; pct=50; adkim=s; rua=mailto:x@example.com")
                .expect("ok");
        assert_eq!(r.policy, Policy::Reject);
        assert_eq!(r.subdomain_policy, Policy::Quarantine);
        assert_eq!(r.nonexistent_policy, Policy::Quarantine);
        assert_eq!(
            (r.pct, r.dkim_mode, r.spf_mode),
            (50, Mode::Strict, Mode::Relaxed)
        );
        assert_eq!(
            parse(b"v=DMARC1; rua=mailto:x@example.com").map(|r| r.policy),
            Ok(Policy::None)
        );
        assert_eq!(parse(b"v=DMARC1"), Err(RecordError::Syntax));
        assert_eq!(parse(b"p=reject; v=DMARC1"), Err(RecordError::NotDmarc));
        assert_eq!(parse(b"v=spf1 -all"), Err(RecordError::NotDmarc));
        assert_eq!(parse(b"v=DMARC1; p=block"), Err(RecordError::Syntax));
        assert_eq!(
            parse(b"v=DMARC1; p=none; pct=101"),
            Err(RecordError::Syntax)
        );
        assert_eq!(
            parse(b"v=DMARC1; p=none; adkim=x"),
            Err(RecordError::Syntax)
        );
    }

    fn walk(name: &str, zone: &[(&str, &str)]) -> (Found, StdVec<String>) {
        let mut w = Walk::new(name.as_bytes());
        let mut asked = StdVec::new();
        while let Some(q) = w.need() {
            let q = String::from_utf8_lossy(q).into_owned();
            let recs: StdVec<&[u8]> = zone
                .iter()
                .filter(|z| z.0 == q)
                .map(|z| z.1.as_bytes())
                .collect();
            asked.push(q);
            w.answer(&recs, false);
        }
        (w.result(), asked)
    }

    #[test]
    fn the_tree_walk_finds_policy_and_organizational_domain() {
        let zone = [("_dmarc.example.com", "v=DMARC1; p=reject; sp=none")];
        let (f, asked) = walk("mail.eu.example.com", &zone);
        assert_eq!(
            asked,
            [
                "_dmarc.mail.eu.example.com",
                "_dmarc.eu.example.com",
                "_dmarc.example.com"
            ]
        );
        let (rec, at) = f.record.expect("found");
        assert_eq!((rec.policy, &at[..]), (Policy::Reject, &b"example.com"[..]));
        assert_eq!(&f.organizational[..], b"example.com");
        // A record at the From domain itself applies; the walk goes on for
        // the organizational domain.
        let zone = [
            ("_dmarc.eu.example.com", "v=DMARC1; p=quarantine"),
            ("_dmarc.example.com", "v=DMARC1; p=reject"),
        ];
        let (f, _) = walk("eu.example.com", &zone);
        assert_eq!(f.record.map(|r| r.0.policy), Some(Policy::Quarantine));
        assert_eq!(&f.organizational[..], b"example.com");
        // psd=y: the organizational domain is the name below the suffix.
        let zone = [("_dmarc.gov.example", "v=DMARC1; p=reject; psd=y")];
        let (f, _) = walk("a.agency.gov.example", &zone);
        assert_eq!(&f.organizational[..], b"agency.gov.example");
        // Nothing published: the name is its own organizational domain.
        let (f, asked) = walk("example.org", &[]);
        assert_eq!(
            (f.record, &f.organizational[..], asked.len()),
            (None, &b"example.org"[..], 1)
        );
    }

    #[test]
    fn long_names_jump_to_seven_labels() {
        let (_, asked) = walk("a.b.c.d.e.f.g.h.i.j.example.com", &[]);
        assert_eq!(asked[0], "_dmarc.a.b.c.d.e.f.g.h.i.j.example.com");
        assert_eq!(asked[1], "_dmarc.f.g.h.i.j.example.com");
        assert!(asked.len() <= MAX_WALK);
        assert_eq!(asked.last().map(String::as_str), Some("_dmarc.example.com"));
    }

    #[test]
    fn alignment() {
        assert!(aligned(
            b"mail.example.com",
            b"example.com",
            b"example.com",
            b"example.com",
            Mode::Relaxed
        ));
        assert!(!aligned(
            b"mail.example.com",
            b"example.com",
            b"example.com",
            b"example.com",
            Mode::Strict
        ));
        assert!(aligned(
            b"Example.COM.",
            b"example.com",
            b"",
            b"",
            Mode::Strict
        ));
        assert!(!aligned(
            b"example.com",
            b"example.net",
            b"example.com",
            b"example.net",
            Mode::Relaxed
        ));
    }
}
