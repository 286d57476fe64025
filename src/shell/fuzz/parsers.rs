//! The engine's record and packet parsers: the header scanner (against
//! mail-parser), milter packets, SPF records (through the evaluator) and
//! DKIM/ARC tag lists.

use super::{take, Dice};
use crate::engine::dkim::{arc, key, signature, tags};
use crate::engine::header::{self, Field, Status};
use crate::engine::limits::MAX_HEADER_BLOCK;
use crate::engine::milter::{self, act, proto, Command, Family, Response, Stage};
use crate::engine::spf::{Answer, Identity, Need, Rtype, Spf};

/// Whether `inner` lies inside `outer` (a zero-copy field must).
fn within(outer: &[u8], inner: &[u8]) -> bool {
    let (o, i) = (outer.as_ptr() as usize, inner.as_ptr() as usize);
    inner.is_empty() || (i >= o && i + inner.len() <= o + outer.len())
}

/// A block mail-parser and the scanner must read alike: CRLF lines of
/// printable ASCII, each `token: value` or a continuation, then a blank
/// line. (On other input the two are lenient in different ways, by design.)
fn plain_block(block: &[u8]) -> bool {
    let Some(fields) = block.strip_suffix(b"\r\n\r\n") else {
        return false;
    };
    let mut first = true;
    fields.split(|&b| b == b'\n').all(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let printable = line
            .iter()
            .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b));
        let name_end = line.iter().position(|&b| b == b':');
        let ok = match (line.first(), name_end) {
            (Some(b' ' | b'\t'), _) => !first && line.iter().any(|&b| b != b' ' && b != b'\t'),
            (Some(_), Some(n)) => {
                n <= 32
                    && line[..n]
                        .iter()
                        .all(|&b| b.is_ascii_alphanumeric() || b == b'-')
            }
            _ => false,
        };
        first = false;
        printable && ok
    }) && fields.split(|&b| b == b'\n').all(|l| l.ends_with(b"\r"))
        || fields.is_empty()
}

/// The header scanner: `scan`, `fields` and `end_of_headers` agree; fields
/// are slices of the input with valid names; a prefix scanned as partial
/// never contradicts the whole; on plain blocks mail-parser finds the same
/// field names in the same order.
pub fn header(data: &[u8]) {
    let mut slots = [Field::EMPTY; 64];
    let Ok(Status::Complete { fields: n, body }) = header::scan(data, true, &mut slots) else {
        return;
    };
    assert!(body <= data.len() && body <= MAX_HEADER_BLOCK);
    assert_eq!(header::end_of_headers(data, true), Some(body));
    let block = &data[..body];
    let found: Vec<Field<'_>> = header::fields(block).collect();
    assert_eq!(found.as_slice(), &slots[..n], "fields() and scan() differ");
    for f in &slots[..n] {
        assert!(within(block, f.name) && within(block, f.value));
        assert!(!f.name.is_empty() && f.name.iter().all(|&b| b > b' ' && b < 0x7f && b != b':'));
        assert!(header::find(block, f.name).is_some());
    }
    let cut = data.len() / 2;
    if let Ok(Status::Partial { fields: k }) = header::scan(&data[..cut], false, &mut slots) {
        assert!(k <= n, "a prefix has more final fields than the whole");
        assert_eq!(&slots[..k], &found[..k], "a prefix's final fields changed");
    }
    if plain_block(block) {
        // Every field read raw (a map that names one field makes the rest
        // use the default, raw): what is compared is where fields begin
        // and end, not mail-parser's reading of a value (it drops a
        // Message-ID it cannot read, for one).
        let raw = mail_parser::MessageParser::new().header_raw(mail_parser::HeaderName::Subject);
        let parsed = raw.parse_headers(block);
        let theirs: Vec<&str> = parsed
            .iter()
            .flat_map(|m| m.headers())
            .map(|h| h.name())
            .collect();
        let ours: Vec<String> = found
            .iter()
            .map(|f| f.name.escape_ascii().to_string())
            .collect();
        assert_eq!(
            ours.len(),
            theirs.len(),
            "field count differs from mail-parser: {ours:?} {theirs:?}"
        );
        for (a, b) in ours.iter().zip(&theirs) {
            assert!(
                a.eq_ignore_ascii_case(b),
                "field name differs from mail-parser: {a} {b}"
            );
        }
    }
}

/// Milter packets: every response the input holds parses within its
/// bounds, a partial packet stays partial, each answer is judged at a
/// stage; commands built from the input encode to their announced length.
pub fn milter(data: &[u8]) {
    const STAGES: [Stage; 9] = [
        Stage::Connect,
        Stage::Helo,
        Stage::Mail,
        Stage::Rcpt,
        Stage::Data,
        Stage::Header,
        Stage::EndOfHeaders,
        Stage::Body,
        Stage::EndOfMessage,
    ];
    let mut negotiated = milter::Negotiated {
        version: 6,
        actions: act::ALL,
        protocol: 0,
    };
    let mut rest = data;
    let mut i = 0;
    while let Ok(Some((r, used))) = milter::parse(rest) {
        assert!(used > 4 && used <= rest.len());
        assert!(
            matches!(milter::parse(&rest[..used - 1]), Ok(None)),
            "a cut packet parsed"
        );
        if let Response::Negotiate(n, lists) = r {
            for s in STAGES {
                let _ = lists.get(s);
            }
            if let Ok(n) = n.check(act::ALL, proto::OFFERED) {
                negotiated = n;
            }
        }
        let _ = milter::step(&negotiated, STAGES[i % STAGES.len()], r);
        rest = &rest[used..];
        i += 1;
    }
    encode_commands(data);
}

/// Encodes commands whose strings are pieces of `data`: each must take
/// exactly `encoded_len` octets, and refuse a buffer one octet short.
fn encode_commands(data: &[u8]) {
    let mut dice = Dice::new(data.get(..8).unwrap_or(data));
    let piece = |d: &mut Dice| {
        let a = d.below(data.len() + 1);
        &data[a..(a + d.below(64)).min(data.len())]
    };
    let (a, b, c) = (piece(&mut dice), piece(&mut dice), piece(&mut dice));
    let args = [a, b];
    let pairs = [(a, b), (c, a)];
    let commands = [
        Command::Negotiate {
            version: 6,
            actions: act::ALL,
            protocol: proto::OFFERED,
        },
        Command::Macros {
            stage: Stage::Mail,
            pairs: &pairs,
        },
        Command::Connect {
            host: a,
            family: Family::Inet6,
            port: 25,
            addr: b,
        },
        Command::Connect {
            host: c,
            family: Family::Unknown,
            port: 0,
            addr: b"",
        },
        Command::Helo(a),
        Command::Mail(&args),
        Command::Rcpt(&args[..1]),
        Command::Header { name: b, value: c },
        Command::Body(data),
        Command::EndOfMessage,
    ];
    let mut buf = vec![0u8; data.len() + 512];
    for cmd in commands {
        let len = cmd.encoded_len();
        assert_eq!(cmd.encode(&mut buf), Ok(len), "{cmd:?}");
        assert!(
            cmd.encode(&mut buf[..len - 1]).is_err(),
            "short buffer taken"
        );
    }
}

/// What the SPF evaluator is told for a lookup: the next input line as a
/// record list, an address list or names, or an error.
fn spf_answer<'a>(
    rtype: Rtype,
    line: Option<&'a [u8]>,
    records: &'a mut Vec<&'a [u8]>,
    addrs: &'a mut Vec<[u8; 16]>,
) -> Answer<'a> {
    let Some(line) = line else {
        return Answer::Error;
    };
    match rtype {
        Rtype::Txt | Rtype::Mx | Rtype::Ptr => {
            records.extend(line.split(|&b| b == b'|'));
            Answer::Records(records)
        }
        Rtype::A | Rtype::Aaaa => {
            for c in line.chunks(16) {
                let mut ip = [0u8; 16];
                ip[..c.len()].copy_from_slice(c);
                if rtype == Rtype::A {
                    ip = [
                        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, ip[0], ip[1], ip[2], ip[3],
                    ];
                }
                addrs.push(ip);
            }
            Answer::Addresses(addrs)
        }
    }
}

/// SPF: `[ip 16][sender]\n` then one line per DNS answer (the first is
/// the sender domain's TXT; `|` separates records). The evaluation ends
/// within the RFC's lookup limits, whatever the records say.
pub fn spf(data: &[u8]) {
    let (ip, rest) = take::<16>(data);
    let mut lines = rest.split(|&b| b == b'\n');
    let sender = lines.next().unwrap_or(b"");
    let mut spf = Spf::new(&Identity {
        ip,
        mail_from: sender,
        helo: b"helo.example",
        receiver: b"mx.example",
        now: 1_700_000_000,
    });
    for round in 0.. {
        assert!(round < 200, "SPF evaluation does not end");
        let rtype = match spf.need() {
            Need::Done(_) => break,
            Need::Lookup { name, rtype } => {
                assert!(
                    !name.is_empty() && name.len() <= 255,
                    "bad lookup name {:?} ({rtype:?})",
                    name.escape_ascii().to_string()
                );
                rtype
            }
        };
        let (mut records, mut addrs) = (Vec::new(), Vec::new());
        spf.answer(spf_answer(rtype, lines.next(), &mut records, &mut addrs));
    }
    let _ = (spf.explanation(), spf.domain());
}

/// DKIM and ARC tag lists: signature, key, ARC seal, message signature and
/// results parse without panicking; what parses keeps its slices inside
/// the input; a block's ARC chain is judged.
pub fn dkim(data: &[u8]) {
    let _ = tags::check(data);
    for t in tags::tags(data).take(64).flatten() {
        assert!(within(data, t.name) && within(data, t.value));
        let mut out = [0u8; 256];
        let _ = tags::squeeze(t.value, &mut out);
    }
    if let Ok(s) = signature::parse(data) {
        assert!(within(data, s.domain) && within(data, s.selector));
        assert!(s.signed_headers().all(|h| within(data, h)));
        let _ = s.expired(1_700_000_000);
    }
    if let Ok(k) = key::parse(data) {
        assert!(within(data, k.public));
    }
    let _ = arc::parse_seal(data);
    let _ = arc::parse_ams(data);
    let _ = arc::aar_instance(data);
    let _ = arc::chain(data);
    let mut out = [0u8; 512];
    let _ = crate::engine::dkim::decode_base64(data, &mut out);
}
