//! Benchmark: the zero-copy header scanner against mail-parser.
//!
//! A deterministic corpus of real-looking messages (Received chains, DKIM and
//! ARC signatures, Exchange organisation headers, folded with SP or HTAB,
//! some with bare LF line endings) is generated with a tiny LCG. We measure
//! `header::scan` over the whole corpus, `header::find` of a header placed in
//! the middle of the block and of an absent header, and the same lookup done
//! by parsing with `mail_parser::MessageParser` and calling `.header(..)`.
//! Throughput is over whole-message bytes, so the figures compare directly.
//!
//! Run with `cargo bench --bench header_scan`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use mail_parser::MessageParser;
use sluice::engine::header::{self, Field, Status};

/// Messages in the corpus.
const MESSAGES: usize = 400;
/// Minimum wall time per measurement.
const TARGET: Duration = Duration::from_millis(1500);
/// The header looked up; present in most messages, in the middle of the block.
const PRESENT: &str = "X-RoutethroughTM";
/// A header no message has: the lookup scans every field.
const ABSENT: &str = "X-Not-There-At-All";

// ---------------------------------------------------------------------------
// Deterministic corpus
// ---------------------------------------------------------------------------

/// A 64-bit LCG (Knuth's MMIX constants); the high bits are good enough here.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }

    /// Uniform-ish in `lo..=hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() as usize) % (hi - lo + 1)
    }

    fn chance(&mut self, one_in: u64) -> bool {
        self.next() % one_in == 0
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.range(0, items.len() - 1)]
    }

    fn word(&mut self, len: usize) -> String {
        (0..len)
            .map(|_| (b'a' + (self.next() % 26) as u8) as char)
            .collect()
    }

    fn base64(&mut self, len: usize) -> String {
        const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        (0..len)
            .map(|_| B64[(self.next() % 64) as usize] as char)
            .collect()
    }

    fn ip(&mut self) -> String {
        format!(
            "{}.{}.{}.{}",
            self.range(10, 223),
            self.range(0, 255),
            self.range(0, 255),
            self.range(1, 254)
        )
    }
}

const FIRST: &[&str] = &[
    "Alice", "Bob", "Chloé", "Dmitri", "Eve", "Fatima", "Gunnar", "Hiro", "Ines", "Jürgen",
];
const LAST: &[&str] = &[
    "Martin", "Okafor", "Nakamura", "Schmidt", "Dubois", "García", "Kowalski", "Smith",
];
const DOMAINS: &[&str] = &[
    "contoso.com",
    "eu.contoso.com",
    "fabrikam.com",
    "mail.fabrikam.com",
    "example.org",
    "secure.com",
    "adatum.net",
];
const SUBJECTS: &[&str] = &[
    "Quarterly report",
    "Re: meeting tomorrow",
    "Fwd: invoice 2024-0113",
    "Your order has shipped",
    "Re: Re: routing override for secure.com",
    "Lunch?",
];
const ENCODED_SUBJECTS: &[&str] = &[
    "=?UTF-8?B?UmU6IFLDqXVuaW9uIGRlIGxhIHNlbWFpbmU=?=",
    "=?UTF-8?Q?Bestellbest=C3=A4tigung_Nr=2E_4711?=",
    "=?ISO-8859-1?Q?Caf=E9_=E0_midi?= =?UTF-8?B?8J+Ssw==?=",
];

/// Folding whitespace: mostly TAB or a few spaces.
fn fws(rng: &mut Lcg) -> &'static str {
    ["\t", " ", "    ", "        "][rng.range(0, 3)]
}

fn mailbox(rng: &mut Lcg) -> String {
    let first = rng.pick(FIRST);
    let last = rng.pick(LAST);
    let domain = rng.pick(DOMAINS);
    format!(
        "\"{first} {last}\" <{}.{}@{domain}>",
        first.to_lowercase(),
        last.to_lowercase()
    )
}

/// Folds a long `value` into lines of about `width` bytes at spaces.
fn fold(rng: &mut Lcg, value: &str, width: usize, eol: &str) -> String {
    let mut out = String::new();
    let mut line = 0;
    for (i, word) in value.split(' ').enumerate() {
        if i > 0 {
            if line + word.len() > width {
                out.push_str(eol);
                let w = fws(rng);
                out.push_str(w);
                line = w.len();
            } else {
                out.push(' ');
                line += 1;
            }
        }
        out.push_str(word);
        line += word.len();
    }
    out
}

/// Splits a long token (a signature) into folded chunks of `chunk` bytes.
fn fold_token(rng: &mut Lcg, token: &str, chunk: usize, eol: &str) -> String {
    let mut out = String::new();
    for (i, piece) in token.as_bytes().chunks(chunk).enumerate() {
        if i > 0 {
            out.push_str(eol);
            out.push_str(fws(rng));
        }
        out.push_str(std::str::from_utf8(piece).expect("base64 is ASCII"));
    }
    out
}

fn date(rng: &mut Lcg) -> String {
    format!(
        "{}, {} {} 2024 {:02}:{:02}:{:02} {}",
        rng.pick(&["Mon", "Tue", "Wed", "Thu", "Fri"]),
        rng.range(1, 28),
        rng.pick(&["Jan", "Feb", "Mar", "Apr", "May", "Jun"]),
        rng.range(0, 23),
        rng.range(0, 59),
        rng.range(0, 59),
        rng.pick(&["+0000", "+0100", "-0500", "+0900"])
    )
}

fn received(rng: &mut Lcg, eol: &str) -> String {
    let from = format!("{}.{}", rng.word(6), rng.pick(DOMAINS));
    let by = format!("{}.{}", rng.word(5), rng.pick(DOMAINS));
    let value = format!(
        "from {from} ({from} [{}]) by {by} ({}) with {} id {} for <{}@{}>; {}",
        rng.ip(),
        rng.ip(),
        rng.pick(&[
            "ESMTPS",
            "ESMTP",
            "SMTP",
            "Microsoft SMTP Server (version=TLS1_2)"
        ]),
        rng.base64(14).replace(['+', '/'], "x"),
        rng.word(7),
        rng.pick(DOMAINS),
        date(rng)
    );
    let width = rng.range(40, 76);
    fold(rng, &value, width, eol)
}

fn dkim(rng: &mut Lcg, eol: &str) -> String {
    let domain = rng.pick(DOMAINS);
    let head = format!(
        "v=1; a=rsa-sha256; c=relaxed/relaxed; d={domain}; s=selector{}; t={}; \
         h=From:To:Cc:Subject:Date:Message-ID:MIME-Version:Content-Type:References:In-Reply-To; \
         bh={};",
        rng.range(1, 2),
        1_700_000_000 + rng.range(0, 10_000_000),
        rng.base64(44)
    );
    let len = rng.range(170, 350);
    let b = rng.base64(len);
    let head = fold(rng, &head, 70, eol);
    let sep = fws(rng);
    let chunk = rng.range(60, 76);
    format!("{head}{eol}{sep}b={}", fold_token(rng, &b, chunk, eol))
}

/// One message: headers in a realistic order, then a short body.
fn message(rng: &mut Lcg, n: usize) -> Vec<u8> {
    let eol = if rng.chance(8) { "\n" } else { "\r\n" };
    let mut h: Vec<String> = Vec::new();
    for _ in 0..rng.range(2, 12) {
        h.push(format!("Received: {}", received(rng, eol)));
    }
    if rng.chance(2) {
        let i = rng.range(1, 3);
        let t = 1_700_000_000 + rng.range(0, 9_999_999);
        let sep = fws(rng);
        let d = rng.pick(DOMAINS);
        let sig = rng.base64(300);
        let sig = fold_token(rng, &sig, 72, eol);
        h.push(format!(
            "ARC-Seal: i={i}; a=rsa-sha256; t={t}; cv=pass;{eol}{sep}d={d}; s=arc-2024; b={sig}"
        ));
        h.push(format!("ARC-Message-Signature: i={i}; {}", dkim(rng, eol)));
        let results = format!(
            "mx.{} ; spf=pass smtp.mailfrom={} ; dmarc=pass action=none header.from={} ; \
             dkim=pass header.d={}",
            rng.pick(DOMAINS),
            rng.pick(DOMAINS),
            rng.pick(DOMAINS),
            rng.pick(DOMAINS)
        );
        let results = fold(rng, &results, 64, eol);
        h.push(format!("ARC-Authentication-Results: i={i}; {results}"));
    }
    if !rng.chance(5) {
        h.push(format!("DKIM-Signature: {}", dkim(rng, eol)));
    }
    h.push(format!("From: {}", mailbox(rng)));
    let to: Vec<String> = (0..rng.range(1, 4)).map(|_| mailbox(rng)).collect();
    h.push(format!("To: {}", fold(rng, &to.join(", "), 70, eol)));
    if rng.chance(2) {
        let cc: Vec<String> = (0..rng.range(1, 5)).map(|_| mailbox(rng)).collect();
        h.push(format!("Cc: {}", fold(rng, &cc.join(", "), 70, eol)));
    }
    let subject = if rng.chance(3) {
        rng.pick(ENCODED_SUBJECTS).to_string()
    } else {
        rng.pick(SUBJECTS).to_string()
    };
    h.push(format!("Subject: {subject}"));
    // The looked-up header sits in the middle of the block (7 in 8 messages).
    if !rng.chance(8) {
        let mid = h.len() / 2;
        h.insert(
            mid,
            format!(
                "X-RoutethroughTM: {}",
                rng.pick(&["eu-hub", "secure-relay", "1"])
            ),
        );
    }
    h.push(format!("Date: {}", date(rng)));
    h.push(format!(
        "Message-ID: <{}.{}@{}>",
        rng.base64(20).replace(['+', '/'], "x"),
        n,
        rng.pick(DOMAINS)
    ));
    h.push("MIME-Version: 1.0".to_string());
    let boundary = format!("----=_Part_{}_{}", n, rng.word(12));
    h.push(format!(
        "Content-Type: multipart/alternative;{eol}{}boundary=\"{boundary}\";{eol}{}charset=\"utf-8\"",
        fws(rng),
        fws(rng)
    ));
    for name in [
        "AuthAs: Anonymous",
        "AuthSource: EX01.contoso.com",
        "Network-Message-Id: 4c0a2b5e-1f1d-4f35-9b0e-08dc0a1b2c3d",
        "SCL: 1",
        "MessageDirectionality: Incoming",
        "OriginalArrivalTime: 01 Jan 2024 10:00:00.0000 (UTC)",
    ] {
        if !rng.chance(4) {
            h.push(format!("X-MS-Exchange-Organization-{name}"));
        }
    }
    if rng.chance(2) {
        h.push(format!(
            "X-MS-Exchange-Organization-AntiSpam-Report: {}",
            fold(
                rng,
                "CIP:203.0.113.7;CTRY:NL;LANG:en;SCL:1;SRV:;IPV:NLI;SFV:NSPM;H:mail.example.org;PTR:mail.example.org;CAT:NONE;SFS:(13230031)(4636009)(376002);DIR:INB; more; fields",
                60,
                eol
            )
        ));
    }
    let mut out = String::new();
    for field in &h {
        out.push_str(field);
        out.push_str(eol);
    }
    out.push_str(eol);
    out.push_str(&format!(
        "--{boundary}{eol}Content-Type: text/plain; charset=utf-8{eol}{eol}"
    ));
    for _ in 0..rng.range(2, 8) {
        out.push_str(&format!(
            "{} {} {}.{eol}",
            rng.word(5),
            rng.word(8),
            rng.word(4)
        ));
    }
    out.push_str(&format!("--{boundary}--{eol}"));
    out.into_bytes()
}

// ---------------------------------------------------------------------------
// Measurement
// ---------------------------------------------------------------------------

struct Figures {
    bytes_per_s: f64,
    msgs_per_s: f64,
}

/// Runs `f` over the corpus until `TARGET` has elapsed; returns the rates.
fn measure<'c>(
    label: &str,
    corpus: &'c [Vec<u8>],
    mut f: impl FnMut(&'c [u8]) -> usize,
) -> Figures {
    let bytes: usize = corpus.iter().map(Vec::len).sum();
    // Warm-up pass.
    let mut sink = 0usize;
    for m in corpus {
        sink = sink.wrapping_add(f(black_box(m.as_slice())));
    }
    let start = Instant::now();
    let mut passes = 0u64;
    while start.elapsed() < TARGET {
        for m in corpus {
            sink = sink.wrapping_add(f(black_box(m.as_slice())));
        }
        passes += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    black_box(sink);
    let fig = Figures {
        bytes_per_s: bytes as f64 * passes as f64 / secs,
        msgs_per_s: corpus.len() as f64 * passes as f64 / secs,
    };
    println!(
        "{label:<42} {:>8.1} MB/s {:>12.0} msg/s  ({passes} passes, {secs:.2} s)",
        fig.bytes_per_s / 1e6,
        fig.msgs_per_s
    );
    fig
}

fn main() {
    let mut rng = Lcg(0x5eed_d282_c40d);
    let corpus: Vec<Vec<u8>> = (0..MESSAGES).map(|n| message(&mut rng, n)).collect();
    let bytes: usize = corpus.iter().map(Vec::len).sum();

    // Sanity: every block scans completely, and both libraries agree on the lookups.
    let mut slots = [Field::EMPTY; 128];
    let mut header_bytes = 0;
    let mut field_count = 0;
    let mut present = 0;
    let parser = MessageParser::default();
    for m in &corpus {
        match header::scan(m, true, &mut slots) {
            Ok(Status::Complete { fields, body }) => {
                header_bytes += body;
                field_count += fields;
                assert_eq!(header::fields(m).count(), fields);
            }
            other => panic!("scan gave {other:?}"),
        }
        let ours = header::find(m, PRESENT.as_bytes());
        let theirs = parser
            .parse(m)
            .expect("mail-parser parses")
            .header(PRESENT)
            .is_some();
        assert_eq!(ours.is_some(), theirs, "lookup disagreement");
        present += usize::from(ours.is_some());
        assert!(header::find(m, ABSENT.as_bytes()).is_none());
    }
    println!(
        "corpus: {} messages, {} bytes ({} header bytes, {} fields, {PRESENT} in {present})",
        corpus.len(),
        bytes,
        header_bytes,
        field_count
    );

    measure("header::scan", &corpus, |m| {
        match header::scan(m, true, &mut slots) {
            Ok(Status::Complete { fields, .. }) => fields,
            _ => 0,
        }
    });
    let find = measure(&format!("header::find {PRESENT}"), &corpus, |m| {
        header::find(m, black_box(PRESENT.as_bytes())).map_or(0, <[u8]>::len)
    });
    measure("header::find (absent)", &corpus, |m| {
        header::find(m, black_box(ABSENT.as_bytes())).map_or(0, <[u8]>::len)
    });
    let theirs = measure(
        &format!("mail-parser parse+header {PRESENT}"),
        &corpus,
        |m| {
            MessageParser::default().parse(m).map_or(0, |msg| {
                usize::from(msg.header(black_box(PRESENT)).is_some())
            })
        },
    );
    measure("mail-parser parse+header (absent)", &corpus, |m| {
        MessageParser::default().parse(m).map_or(0, |msg| {
            usize::from(msg.header(black_box(ABSENT)).is_some())
        })
    });
    let _ = find.bytes_per_s;
    println!("ratio: {:.1}x", find.msgs_per_s / theirs.msgs_per_s);
}
