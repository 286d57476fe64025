//! SPF, RFC 7208's `check_host()`, sans-IO and without allocation.
//!
//! The evaluator asks for one DNS lookup at a time and the shell answers:
//!
//! 1. [`Spf::new`] with the client address, the MAIL FROM (or HELO)
//!    identity and the HELO name;
//! 2. [`Spf::need`] gives a [`Need`]: a lookup ([`Need::Lookup`], a name and
//!    a type), or the result ([`Need::Done`]);
//! 3. [`Spf::answer`] takes the answer: the TXT strings of each record joined,
//!    the addresses of an A/AAAA answer, the names of an MX/PTR answer;
//!    NXDOMAIN and "no data" are both an empty answer; a timeout or SERVFAIL
//!    is [`Answer::Error`]. Then back to 2.
//!
//! `include` levels are an explicit stack of records ([`MAX_SPF_DEPTH`]).
//! The limits of §4.6.4 hold: ten DNS-querying terms, two void lookups,
//! ten names per `mx` and `ptr`. The `p` macro expands to "unknown".

pub mod macros;
pub mod record;

use crate::engine::limits::{
    MAX_DNS_NAME, MAX_SPF_DEPTH, MAX_SPF_EXPLANATION, MAX_SPF_NAMES, MAX_SPF_RECORD,
    SPF_LOOKUP_LIMIT, SPF_VOID_LIMIT,
};
use heapless::Vec;
use record::{Mechanism, Qualifier, Span, Term};

/// A `check_host()` result (RFC 7208 §2.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum SpfResult {
    /// No SPF record, or no valid domain to check.
    None,
    /// The domain makes no assertion.
    Neutral,
    /// The client is authorised.
    Pass,
    /// The client is not authorised.
    Fail,
    /// Probably not authorised.
    SoftFail,
    /// A transient DNS error.
    TempError,
    /// The published records are broken.
    PermError,
}

impl SpfResult {
    /// Its name in `Authentication-Results` (RFC 8601) and `Received-SPF`.
    pub const fn name(self) -> &'static str {
        match self {
            SpfResult::None => "none",
            SpfResult::Neutral => "neutral",
            SpfResult::Pass => "pass",
            SpfResult::Fail => "fail",
            SpfResult::SoftFail => "softfail",
            SpfResult::TempError => "temperror",
            SpfResult::PermError => "permerror",
        }
    }
}

impl Qualifier {
    fn result(self) -> SpfResult {
        match self {
            Qualifier::Pass => SpfResult::Pass,
            Qualifier::Fail => SpfResult::Fail,
            Qualifier::SoftFail => SpfResult::SoftFail,
            Qualifier::Neutral => SpfResult::Neutral,
        }
    }
}

/// A DNS record type the evaluator asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Rtype {
    /// TXT: SPF records and explanations.
    Txt,
    /// A: IPv4 addresses.
    A,
    /// AAAA: IPv6 addresses.
    Aaaa,
    /// MX: mail exchanger names.
    Mx,
    /// PTR: names of the client address.
    Ptr,
}

/// What the evaluator needs next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Need<'s> {
    /// Resolve `name` (no final dot) for `rtype`, then call [`Spf::answer`].
    Lookup {
        /// The name to look up.
        name: &'s [u8],
        /// The record type.
        rtype: Rtype,
    },
    /// The check is over.
    Done(SpfResult),
}

/// The answer to the last lookup.
#[derive(Debug, Clone, Copy)]
pub enum Answer<'a> {
    /// TXT records (each record's strings joined), or MX/PTR names. Empty
    /// for NXDOMAIN or no data.
    Records(&'a [&'a [u8]]),
    /// A/AAAA addresses, IPv4 ones IPv4-mapped. Empty for NXDOMAIN or no
    /// data.
    Addresses(&'a [[u8; 16]]),
    /// The lookup failed: timeout, SERVFAIL, or another RCODE.
    Error,
}

/// The identities of one check.
#[derive(Debug, Clone, Copy)]
pub struct Identity<'a> {
    /// The client address (IPv4-mapped for IPv4).
    pub ip: [u8; 16],
    /// The MAIL FROM address, or empty for `<>` (then the HELO identity
    /// is checked, as `postmaster@<helo>`).
    pub mail_from: &'a [u8],
    /// The HELO/EHLO name.
    pub helo: &'a [u8],
    /// This host's name (the `r` macro of explanations).
    pub receiver: &'a [u8],
    /// Seconds since the epoch (the `t` macro).
    pub now: u64,
}

type Name = Vec<u8, MAX_DNS_NAME>;

/// Where a record came from, which decides what "no record" means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// The checked domain itself: no record is `none`.
    Top,
    /// An `include`: a non-match result lets the parent go on.
    Include(Qualifier),
    /// A `redirect`: no record is `permerror`.
    Redirect,
}

/// One record under evaluation.
#[derive(Debug)]
struct Frame {
    domain: Name,
    record: Vec<u8, MAX_SPF_RECORD>,
    /// The next octet of the record to read terms from.
    pos: usize,
    origin: Origin,
    loaded: bool,
    redirect: Option<Span>,
    exp: Option<Span>,
}

/// The lookup in flight, and what its answer is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    /// Nothing asked yet.
    Idle,
    /// The TXT records of the top frame's domain.
    Record,
    /// The addresses of the target of `a` (or of `names[at]` for `mx`).
    Addresses {
        q: Qualifier,
        v4: u8,
        v6: u8,
        at: usize,
        mx: bool,
    },
    /// The names of an `mx` target.
    MxNames { q: Qualifier, v4: u8, v6: u8 },
    /// The PTR names of the client.
    PtrNames { q: Qualifier },
    /// The addresses of PTR name `names[at]`, to validate it.
    PtrCheck { q: Qualifier, at: usize },
    /// The A records of an `exists` target.
    Exists { q: Qualifier },
    /// The TXT of an `exp=` target (after a final `fail`).
    Explanation,
}

/// One SPF check in progress (about 26 KiB: the records of the include
/// stack and the names of one `mx` or `ptr` term).
#[derive(Debug)]
pub struct Spf {
    ip: [u8; 16],
    sender: Vec<u8, 320>,
    local_len: usize,
    helo: Name,
    receiver: Name,
    now: u64,
    frames: Vec<Frame, MAX_SPF_DEPTH>,
    op: Op,
    query: Name,
    rtype: Rtype,
    names: Vec<Name, MAX_SPF_NAMES>,
    /// The `ptr` target domain while its names are validated.
    ptr_target: Name,
    lookups: u8,
    voids: u8,
    result: Option<SpfResult>,
    /// The explanation was asked for (once, after a final `fail`).
    explained: bool,
    explanation: Vec<u8, MAX_SPF_EXPLANATION>,
}

impl Spf {
    /// A check of `id` (RFC 7208 §4: the domain of MAIL FROM, or the HELO
    /// name for `<>`).
    pub fn new(id: &Identity<'_>) -> Self {
        let mut s = Spf {
            ip: id.ip,
            sender: Vec::new(),
            local_len: 0,
            helo: Name::new(),
            receiver: Name::new(),
            now: id.now,
            frames: Vec::new(),
            op: Op::Idle,
            query: Name::new(),
            rtype: Rtype::Txt,
            names: Vec::new(),
            ptr_target: Name::new(),
            lookups: 0,
            voids: 0,
            result: None,
            explained: false,
            explanation: Vec::new(),
        };
        let _ = s.helo.extend_from_slice(trim_dot(id.helo));
        let _ = s.receiver.extend_from_slice(id.receiver);
        let from = if id.mail_from.is_empty() {
            None
        } else {
            Some(id.mail_from)
        };
        let (local, domain) =
            match from.and_then(|f| f.iter().rposition(|&b| b == b'@').map(|at| (f, at))) {
                Some((f, at)) => (&f[..at], &f[at + 1..]),
                None => (&b""[..], from.unwrap_or(id.helo)),
            };
        let local: &[u8] = if local.is_empty() {
            b"postmaster"
        } else {
            local
        };
        let domain = trim_dot(domain);
        if s.sender.extend_from_slice(local).is_err()
            || s.sender.push(b'@').is_err()
            || s.sender.extend_from_slice(domain).is_err()
        {
            // Nothing half-built is left for `domain()` to show.
            s.sender.clear();
            s.result = Some(SpfResult::None);
            return s;
        }
        s.local_len = local.len();
        if !valid_domain(domain) {
            s.result = Some(SpfResult::None);
            return s;
        }
        s.push_frame(domain, Origin::Top);
        s
    }

    /// The explanation of a `fail` (from `exp=`), empty when there is none.
    pub fn explanation(&self) -> &[u8] {
        &self.explanation
    }

    /// The domain checked (the MAIL FROM domain, or the HELO name); empty
    /// when the identity was too long to check (the result is `none`).
    pub fn domain(&self) -> &[u8] {
        self.sender.get(self.local_len + 1..).unwrap_or(&[])
    }

    /// The next lookup, or the result.
    pub fn need(&mut self) -> Need<'_> {
        if self.op == Op::Idle {
            self.run();
        }
        match self.result {
            Some(r) if self.op == Op::Idle => Need::Done(r),
            _ => Need::Lookup {
                name: &self.query,
                rtype: self.rtype,
            },
        }
    }

    /// The answer to the lookup [`Spf::need`] asked for.
    pub fn answer(&mut self, a: Answer<'_>) {
        let op = core::mem::replace(&mut self.op, Op::Idle);
        match op {
            Op::Idle => {}
            Op::Record => self.got_record(a),
            Op::Explanation => self.got_explanation(a),
            Op::Addresses { q, v4, v6, at, mx } => self.got_addresses(a, q, (v4, v6), at, mx),
            Op::MxNames { q, v4, v6 } => self.got_mx(a, q, (v4, v6)),
            Op::PtrNames { q } => self.got_ptr(a, q),
            Op::PtrCheck { q, at } => self.got_ptr_check(a, q, at),
            Op::Exists { q } => match self.counted(a) {
                Some(true) => self.matched(q),
                Some(false) => {}
                None => {}
            },
        }
    }

    // ---- evaluation ------------------------------------------------------

    /// Evaluates terms until a lookup is needed or the check is over.
    fn run(&mut self) {
        while self.result.is_none() && self.op == Op::Idle {
            let Some(top) = self.frames.last() else {
                return;
            };
            if !top.loaded {
                self.ask(Rtype::Txt, None);
                self.op = Op::Record;
                return;
            }
            self.step();
        }
        if self.result == Some(SpfResult::Fail) && self.op == Op::Idle && !self.explained {
            self.explained = true;
            self.ask_explanation();
        }
    }

    /// Evaluates the top frame's next term (or its end).
    fn step(&mut self) {
        let Some(top) = self.frames.last_mut() else {
            return;
        };
        let span = record::terms_from(&top.record, top.pos).next();
        let Some(span) = span else {
            return self.end_of_record();
        };
        top.pos = span.1;
        match record::parse(&top.record, span) {
            Ok(Term::Directive(q, m)) => self.directive(q, m),
            Ok(_) => {}
            Err(_) => self.finish(SpfResult::PermError),
        }
    }

    /// No mechanism matched: `redirect`, or `neutral`.
    fn end_of_record(&mut self) {
        let Some(&Frame {
            redirect, origin, ..
        }) = self.frames.last()
        else {
            return;
        };
        let Some(spec) = redirect else {
            return self.frame_result(SpfResult::Neutral);
        };
        if !self.count_lookup() {
            return;
        }
        let Some(target) = self.expand_spec(spec) else {
            return;
        };
        let origin = match origin {
            Origin::Include(q) => Origin::Include(q),
            _ => Origin::Redirect,
        };
        let _ = self.frames.pop();
        self.push_frame(&target, origin);
    }

    /// One directive of the top frame.
    fn directive(&mut self, q: Qualifier, m: Mechanism) {
        match m {
            Mechanism::All => self.matched(q),
            Mechanism::Ip4 { net, len } | Mechanism::Ip6 { net, len } => {
                let v4 = matches!(m, Mechanism::Ip4 { .. });
                if v4 == macros::ipv4_of(&self.ip).is_some()
                    && record::in_network(&self.ip, &net, len, v4)
                {
                    self.matched(q);
                }
            }
            Mechanism::Include(spec) => {
                if self.count_lookup() {
                    if let Some(target) = self.expand_spec(spec) {
                        self.push_frame(&target, Origin::Include(q));
                    }
                }
            }
            Mechanism::A { domain, v4, v6 } => {
                if self.count_lookup() && self.ask_target(domain) {
                    let rtype = self.address_type();
                    self.rtype = rtype;
                    self.op = Op::Addresses {
                        q,
                        v4,
                        v6,
                        at: 0,
                        mx: false,
                    };
                }
            }
            Mechanism::Mx { domain, v4, v6 } => {
                if self.count_lookup() && self.ask_target(domain) {
                    self.rtype = Rtype::Mx;
                    self.op = Op::MxNames { q, v4, v6 };
                }
            }
            Mechanism::Ptr(domain) => self.ptr(q, domain),
            Mechanism::Exists(spec) => {
                if self.count_lookup() && self.ask_target(Some(spec)) {
                    self.rtype = Rtype::A; // always A (§5.7)
                    self.op = Op::Exists { q };
                }
            }
        }
    }

    /// `ptr`: the client's PTR names, each validated by its addresses.
    fn ptr(&mut self, q: Qualifier, domain: Option<Span>) {
        if !self.count_lookup() || !self.ask_target(domain) {
            return;
        }
        self.ptr_target.clear();
        let _ = self.ptr_target.extend_from_slice(&self.query);
        self.query.clear();
        if reverse_name(&self.ip, &mut self.query).is_none() {
            return self.finish(SpfResult::PermError);
        }
        self.rtype = Rtype::Ptr;
        self.op = Op::PtrNames { q };
    }

    /// A mechanism matched with qualifier `q`: the frame's result.
    fn matched(&mut self, q: Qualifier) {
        self.frame_result(q.result());
    }

    /// The top frame ended with `r`: the check's result, or back to the
    /// including record (§5.2's table).
    fn frame_result(&mut self, r: SpfResult) {
        let Some(frame) = self.frames.pop() else {
            return;
        };
        let Origin::Include(q) = frame.origin else {
            self.frames.push(frame).ok();
            return self.finish(r);
        };
        match r {
            SpfResult::Pass => self.matched(q),
            SpfResult::Fail | SpfResult::SoftFail | SpfResult::Neutral => {}
            SpfResult::TempError => self.finish(SpfResult::TempError),
            SpfResult::PermError | SpfResult::None => self.finish(SpfResult::PermError),
        }
    }

    /// The check is over with `r`.
    fn finish(&mut self, r: SpfResult) {
        self.result = Some(r);
        self.op = Op::Idle;
    }

    // ---- answers -----------------------------------------------------------

    /// The TXT records of the top frame's domain.
    fn got_record(&mut self, a: Answer<'_>) {
        let records: &[&[u8]] = match a {
            Answer::Records(r) => r,
            Answer::Addresses(_) => &[],
            Answer::Error => return self.finish(SpfResult::TempError),
        };
        let mut spf = records.iter().filter(|r| record::is_spf(r));
        let (Some(rec), None) = (spf.next(), spf.next()) else {
            let none = records.iter().all(|r| !record::is_spf(r));
            return self.no_record(none);
        };
        let Some(top) = self.frames.last_mut() else {
            return;
        };
        if top.record.extend_from_slice(rec).is_err() {
            return self.finish(SpfResult::PermError);
        }
        match record::check(&top.record) {
            Ok((redirect, exp)) => {
                top.redirect = redirect;
                top.exp = exp;
                top.loaded = true;
            }
            Err(_) => self.finish(SpfResult::PermError),
        }
    }

    /// No SPF record (`none`), or several (`permerror`, §4.5).
    fn no_record(&mut self, none: bool) {
        if !none {
            return self.finish(SpfResult::PermError);
        }
        let origin = self.frames.last().map(|f| f.origin);
        match origin {
            Some(Origin::Top) => self.finish(SpfResult::None),
            _ => self.finish(SpfResult::PermError),
        }
    }

    /// Whether the answer has addresses; counts a void one (§4.6.4). `None`
    /// when the check ended (an error or too many voids).
    fn counted(&mut self, a: Answer<'_>) -> Option<bool> {
        let found = match a {
            Answer::Records(r) => !r.is_empty(),
            Answer::Addresses(x) => !x.is_empty(),
            Answer::Error => {
                self.finish(SpfResult::TempError);
                return None;
            }
        };
        if !found {
            self.voids += 1;
            if self.voids > SPF_VOID_LIMIT {
                self.finish(SpfResult::PermError);
                return None;
            }
        }
        Some(found)
    }

    /// The addresses of an `a` target, or of the `mx` name at `at`.
    fn got_addresses(&mut self, a: Answer<'_>, q: Qualifier, cidr: (u8, u8), at: usize, mx: bool) {
        if !mx && self.counted(a) != Some(true) {
            return;
        }
        let addrs: &[[u8; 16]] = match a {
            Answer::Addresses(x) => x,
            Answer::Error => return self.finish(SpfResult::TempError),
            Answer::Records(_) => &[],
        };
        if addrs.iter().any(|x| self.covers(x, cidr)) {
            return self.matched(q);
        }
        if mx && at + 1 < self.names.len() {
            self.query.clear();
            let _ = self.query.extend_from_slice(&self.names[at + 1]);
            self.rtype = self.address_type();
            self.op = Op::Addresses {
                q,
                v4: cidr.0,
                v6: cidr.1,
                at: at + 1,
                mx,
            };
        }
    }

    /// The MX names of an `mx` target: each one's addresses in turn.
    fn got_mx(&mut self, a: Answer<'_>, q: Qualifier, cidr: (u8, u8)) {
        if self.counted(a) != Some(true) {
            return;
        }
        let Answer::Records(names) = a else {
            return;
        };
        if names.len() > MAX_SPF_NAMES {
            return self.finish(SpfResult::PermError);
        }
        self.keep_names(names);
        if let Some(first) = self.names.first() {
            self.query.clear();
            let _ = self.query.extend_from_slice(first);
            self.rtype = self.address_type();
            self.op = Op::Addresses {
                q,
                v4: cidr.0,
                v6: cidr.1,
                at: 0,
                mx: true,
            };
        }
    }

    /// The PTR names of the client: each one is validated in turn. A failed
    /// PTR lookup is no match (§5.5).
    fn got_ptr(&mut self, a: Answer<'_>, q: Qualifier) {
        let Answer::Records(names) = a else {
            return;
        };
        if names.is_empty() {
            self.voids += 1;
            if self.voids > SPF_VOID_LIMIT {
                self.finish(SpfResult::PermError);
            }
            return;
        }
        self.keep_names(&names[..names.len().min(MAX_SPF_NAMES)]);
        self.next_ptr_check(q, 0);
    }

    /// Asks for the addresses of PTR name `at` that lies in the target
    /// domain (the others cannot match).
    fn next_ptr_check(&mut self, q: Qualifier, from: usize) {
        let target = self.ptr_target.clone();
        let next = (from..self.names.len()).find(|&i| in_domain(&self.names[i], &target));
        if let Some(at) = next {
            self.query.clear();
            let _ = self.query.extend_from_slice(&self.names[at]);
            self.rtype = self.address_type();
            self.op = Op::PtrCheck { q, at };
        }
    }

    /// A PTR name's addresses: it is validated when one is the client's.
    fn got_ptr_check(&mut self, a: Answer<'_>, q: Qualifier, at: usize) {
        if let Answer::Addresses(x) = a {
            if x.contains(&self.ip) {
                return self.matched(q);
            }
        }
        // A DNS error skips the name (§5.5).
        self.next_ptr_check(q, at + 1);
    }

    /// The explanation TXT: one record, expanded (§6.2); any problem
    /// leaves no explanation.
    fn got_explanation(&mut self, a: Answer<'_>) {
        let Answer::Records([text]) = a else {
            return;
        };
        if !macros::valid(text, true) {
            return;
        }
        let domain = self
            .frames
            .last()
            .map(|f| f.domain.clone())
            .unwrap_or_default();
        let env = self.env(&domain);
        let mut out: Vec<u8, MAX_SPF_EXPLANATION> = Vec::new();
        if macros::expand(text, &env, true, &mut out).is_ok() {
            let printable = out.iter().all(|b| (0x20..0x7f).contains(b));
            if printable {
                self.explanation = out;
            }
        }
    }

    // ---- helpers ---------------------------------------------------------

    /// Starts a frame for `domain`'s record.
    fn push_frame(&mut self, domain: &[u8], origin: Origin) {
        let mut name = Name::new();
        if name.extend_from_slice(trim_dot(domain)).is_err() || !valid_domain(&name) {
            // A target that is no domain name: no record can be found.
            return match origin {
                Origin::Top => self.finish(SpfResult::None),
                _ => self.finish(SpfResult::PermError),
            };
        }
        let frame = Frame {
            domain: name,
            record: Vec::new(),
            pos: 0,
            origin,
            loaded: false,
            redirect: None,
            exp: None,
        };
        if self.frames.push(frame).is_err() {
            self.finish(SpfResult::PermError);
        }
    }

    /// Asks `rtype` for the top frame's domain (`None`) or `query`.
    fn ask(&mut self, rtype: Rtype, name: Option<&[u8]>) {
        self.query.clear();
        let name = match name {
            Some(n) => n,
            None => self.frames.last().map_or(&b""[..], |f| &f.domain[..]),
        };
        let _ = self.query.extend_from_slice(name);
        self.rtype = rtype;
    }

    /// Puts the target of a mechanism (its domain-spec, or the current
    /// domain) in `query`; false when the check ended or the target is no
    /// DNS name (the mechanism then does not match).
    fn ask_target(&mut self, spec: Option<Span>) -> bool {
        let target = match spec {
            Some(s) => match self.expand_spec(s) {
                Some(t) => t,
                None => return false,
            },
            None => self
                .frames
                .last()
                .map(|f| f.domain.clone())
                .unwrap_or_default(),
        };
        if !valid_domain(&target) {
            // No query can be made for it (a label over 63 octets): the
            // name does not exist, so the mechanism does not match.
            return false;
        }
        self.query = target;
        true
    }

    /// Expands a domain-spec of the top frame's record.
    fn expand_spec(&mut self, spec: Span) -> Option<Name> {
        let top = self.frames.last()?;
        let env = self.env(&top.domain);
        let mut out = Name::new();
        match macros::expand_domain(&top.record[spec.0..spec.1], &env, &mut out) {
            Ok(()) => Some(trim_dot_owned(out)),
            Err(_) => {
                self.finish(SpfResult::PermError);
                None
            }
        }
    }

    /// After a final `fail`: the `exp=` of the deciding record, if any.
    fn ask_explanation(&mut self) {
        let Some(spec) = self.frames.last().and_then(|f| f.exp) else {
            return;
        };
        let saved = self.result.take();
        if let Some(target) = self.expand_spec(spec) {
            self.query = target;
            self.rtype = Rtype::Txt;
            self.op = Op::Explanation;
        }
        // The explanation never changes the result.
        self.result = saved;
    }

    /// Counts a DNS-querying term; false (and `permerror`) past the limit.
    fn count_lookup(&mut self) -> bool {
        self.lookups += 1;
        if self.lookups > SPF_LOOKUP_LIMIT {
            self.finish(SpfResult::PermError);
            return false;
        }
        true
    }

    fn address_type(&self) -> Rtype {
        if macros::ipv4_of(&self.ip).is_some() {
            Rtype::A
        } else {
            Rtype::Aaaa
        }
    }

    /// Whether address `x` of an answer covers the client under the cidrs.
    fn covers(&self, x: &[u8; 16], (v4, v6): (u8, u8)) -> bool {
        let client_v4 = macros::ipv4_of(&self.ip).is_some();
        if client_v4 != macros::ipv4_of(x).is_some() {
            return false;
        }
        record::in_network(&self.ip, x, if client_v4 { v4 } else { v6 }, client_v4)
    }

    /// Keeps the names of an MX or PTR answer to look up in turn (up to
    /// [`MAX_SPF_NAMES`], the root left out).
    fn keep_names(&mut self, names: &[&[u8]]) {
        self.names.clear();
        for n in names {
            let n = trim_dot(n);
            if n.is_empty() {
                // The root: a null MX (RFC 7505 `MX 0 .`) or PTR names
                // nothing to look up; asking for "" failed as temperror.
                continue;
            }
            let mut name = Name::new();
            if name.extend_from_slice(n).is_ok() {
                let _ = self.names.push(name);
            }
        }
    }

    /// The macro environment with `domain` as the current domain.
    fn env<'a>(&'a self, domain: &'a [u8]) -> macros::Env<'a> {
        macros::Env {
            sender: &self.sender,
            local: &self.sender[..self.local_len],
            sender_domain: &self.sender[self.local_len + 1..],
            domain,
            ip: &self.ip,
            helo: &self.helo,
            receiver: &self.receiver,
            now: self.now,
        }
    }
}

fn trim_dot(d: &[u8]) -> &[u8] {
    d.strip_suffix(b".").unwrap_or(d)
}

fn trim_dot_owned(mut n: Name) -> Name {
    if n.last() == Some(&b'.') {
        n.pop();
    }
    n
}

/// A domain check_host() can look at (§4.3): labels of 1 to 63 octets, at
/// least two of them.
fn valid_domain(d: &[u8]) -> bool {
    let d = trim_dot(d);
    if d.is_empty() || d.len() > MAX_DNS_NAME {
        return false;
    }
    let mut labels = 0;
    for l in d.split(|&b| b == b'.') {
        if l.is_empty() || l.len() > 63 {
            return false;
        }
        labels += 1;
    }
    labels >= 2
}

/// Whether `name` is `domain` or below it (case-insensitive).
fn in_domain(name: &[u8], domain: &[u8]) -> bool {
    let (name, domain) = (trim_dot(name), trim_dot(domain));
    if name.len() < domain.len() || !name[name.len() - domain.len()..].eq_ignore_ascii_case(domain)
    {
        return false;
    }
    name.len() == domain.len() || name[name.len() - domain.len() - 1] == b'.'
}

/// The PTR query name of `ip`: `d.c.b.a.in-addr.arpa` or the nibbles under
/// `ip6.arpa`.
fn reverse_name(ip: &[u8; 16], out: &mut Name) -> Option<()> {
    let zone: &[u8] = if macros::ipv4_of(ip).is_some() {
        b"in-addr.arpa"
    } else {
        b"ip6.arpa"
    };
    let mut buf = [0u8; MAX_DNS_NAME];
    let n = crate::engine::dnsbl::query_name(ip, zone, &mut buf)?;
    out.extend_from_slice(&buf[..n]).ok()
}

#[cfg(test)]
mod tests;
