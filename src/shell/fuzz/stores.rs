//! The shell's file and wire formats: the rule compiler and the policy
//! blob, serial upload frames, spool segments, DNS answers, directory
//! exports and the Dovecot passwd-file.

use super::{take, Dice};
use crate::engine::policy::table::Table;
use crate::engine::policy::{
    attribute, evaluate_linear, evaluate_with, Addr, Agent, Decision, Edit, Message, Note, Sink,
    Verdict,
};
use crate::shell::ops::upload;
use crate::shell::policy::compile;
use crate::shell::policy::runtime::{header_block, ip16};
use crate::shell::relay::dns;
use crate::shell::spool::records::{frame, Envelope, Head};
use crate::shell::spool::{recovery, SEGMENT_MAGIC};
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::OnceLock;

/// The rule compiler: any text compiles or is refused with diagnostics;
/// what compiles gives a blob that the engine's loader accepts, that
/// encodes the table it came with, and that evaluates the same with and
/// without its rule index.
pub fn rules(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(c) = compile::compile(text) {
        assert_eq!(
            compile::encode(&c.table),
            c.blob,
            "blob is not the table's encoding"
        );
        match Table::from_blob(&c.blob) {
            Ok(t) => same_by_index_and_scan(&t),
            Err(e) => panic!("the compiler's own blob is refused: {e:?}"),
        }
    }
}

/// Every sink call of one evaluation, as text, in order.
#[derive(Default)]
struct Calls(Vec<String>);

impl Sink<'_> for Calls {
    fn decision(&mut self, rcpt: u16, d: &Decision) {
        self.0.push(format!("decision {rcpt} {d:?}"));
    }
    fn edit(&mut self, a: Agent, e: Edit) {
        self.0.push(format!("edit {a:?} {e:?}"));
    }
    fn note(&mut self, a: Agent, n: Note<'_>) {
        self.0.push(format!("note {a:?} {n:?}"));
    }
    fn sender(&mut self, addr: &Addr) {
        self.0.push(format!("sender {addr:?}"));
    }
}

/// The messages a loaded table is evaluated on: (client, sender, message,
/// attachment names, recipients), inside and outside the sample's
/// networks and domains.
type Probe = (
    &'static str,
    &'static [u8],
    &'static [u8],
    &'static [&'static [u8]],
    &'static [&'static [u8]],
);

/// See [`Probe`].
const PROBES: [Probe; 3] = [
    (
        "127.0.0.1",
        b"jo@contoso.com",
        b"From: jo@contoso.com\r\nTo: a@fabrikam.com\r\nSubject: v1\r\nX-A: v1\r\n\r\nbody\r\n",
        &[b"a.exe"],
        &[b"a@fabrikam.com", b"b@eu.contoso.com", b"c@C.EXAMPLE"],
    ),
    (
        "192.0.2.9",
        b"",
        b"Received: x\r\nReceived: y\r\nX-B: w\r\n\r\n",
        &[],
        &[b"postmaster@contoso.com"],
    ),
    (
        "::1",
        b"u@a.example",
        b"Subject: hi\r\n\r\n",
        &[b"report.pdf"],
        &[b"jo@b.example", b"x@d.example", b"jo@b.example"],
    ),
];

/// A table that loads evaluates every probe without a panic, and the rule
/// index changes nothing: the indexed evaluation's verdict and sink calls
/// equal those of the linear one (the loader refuses an index untrue to
/// the rules, so this holds for any blob that loads).
fn same_by_index_and_scan(t: &Table) {
    for (client, sender, msg, atts, rcpts) in PROBES {
        let ip: IpAddr = client.parse().unwrap_or(IpAddr::from([127, 0, 0, 1]));
        let (a, b) = by_index_and_scan(t, ip, sender, msg, atts, rcpts);
        assert_eq!(a, b, "the index changed a decision");
    }
}

/// One message from `ip` evaluated by `t` with the rule index and without
/// it (`evaluate_with`, `evaluate_linear`): each verdict with its sink
/// calls. The property test of the index uses it too.
pub(crate) fn by_index_and_scan(
    t: &Table,
    ip: IpAddr,
    sender: &[u8],
    msg: &[u8],
    atts: &[&[u8]],
    rcpts: &[&[u8]],
) -> ((Verdict, Vec<String>), (Verdict, Vec<String>)) {
    let m = Message {
        attribution: attribute(t, &ip16(ip), None),
        client_ip: ip16(ip),
        sender,
        headers: header_block(msg),
        attachments: atts,
        size: msg.len() as u64,
        directory: None,
        rcpt_checks: None,
        auth: None,
        login: b"",
    };
    let (mut a, mut b) = (Calls::default(), Calls::default());
    let va = evaluate_with(t, t, &m, rcpts, &mut a);
    let vb = evaluate_linear(t, t, &m, rcpts, &mut b);
    ((va, a.0), (vb, b.0))
}

/// The blob of the repository's sample rule file, compiled once.
fn sample_blob() -> &'static [u8] {
    static BLOB: OnceLock<Vec<u8>> = OnceLock::new();
    BLOB.get_or_init(|| {
        compile::compile(include_str!("../../../config/rules.toml"))
            .map(|c| c.blob)
            .unwrap_or_default()
    })
}

/// Replaces the last four octets of `blob` with the CRC-32C of the rest,
/// so that a mutated blob gets past the checksum to the validator.
fn reseal(blob: &mut Vec<u8>) {
    let body = blob.len().saturating_sub(4);
    blob.truncate(body);
    let mut d = crate::engine::policy::crc32();
    d.update(blob);
    blob.extend_from_slice(&d.finalize().to_le_bytes());
}

/// The policy table loader (`Table::from_blob`, then `validate`), with
/// random blobs: `[mode]rest`. Mode 0: the rest as it is. Mode 1: the rest,
/// resealed. Otherwise the sample rule file's blob with octets of the rest
/// written at positions the rest picks, resealed. Never a panic; what
/// loads validates again and evaluates the same with and without its index.
pub fn blob(data: &[u8]) {
    let ([mode], rest) = take::<1>(data);
    let mut b = match mode % 3 {
        0 | 1 => rest.to_vec(),
        _ => sample_blob().to_vec(),
    };
    if mode % 3 == 2 && b.len() > 4 {
        let room = b.len() - 4;
        for p in rest.chunks_exact(3) {
            let at = usize::from(u16::from_le_bytes([p[0], p[1]])) * (room / 65536 + 1);
            if let Some(x) = b.get_mut(at % room) {
                *x = p[2];
            }
        }
    }
    if mode % 3 != 0 {
        reseal(&mut b);
    }
    if let Ok(t) = Table::from_blob(&b) {
        assert!(t.validate().is_ok(), "a loaded table fails validation");
        same_by_index_and_scan(&t);
    }
}

/// Serial upload frames as the board reads them: `[mode]rest`. Even
/// modes: the rest is the line, `0x00`-delimited frames. Odd modes: the
/// rest is `[len]payload` items, each sent as a valid frame (COBS, CRC),
/// so that the message decoder and the session logic are reached. Every
/// answer the board sends is a delimited frame that decodes.
pub fn upload(data: &[u8]) {
    let ([mode], rest) = take::<1>(data);
    let mut frames: Vec<Vec<u8>> = Vec::new();
    if mode & 1 == 0 {
        frames.extend(
            rest.split(|&b| b == 0)
                .filter(|f| !f.is_empty())
                .map(<[u8]>::to_vec),
        );
    } else {
        let mut at = 0;
        while let Some(&len) = rest.get(at) {
            let end = (at + 1 + usize::from(len)).min(rest.len());
            frames.push(upload::wrap(&rest[at + 1..end]));
            at = end;
        }
    }
    let mut server = upload::fuzz_server();
    for mut f in frames {
        for answer in server.on_frame(&mut f) {
            assert!(answer.len() > 2 && answer.first() == Some(&0) && answer.last() == Some(&0));
            let mut inner = answer[1..answer.len() - 1].to_vec();
            assert!(
                upload::decodes_as_down(&mut inner),
                "an answer does not decode"
            );
        }
    }
}

/// A scratch directory for this process's spool scans, emptied.
fn scratch() -> PathBuf {
    let d = std::env::temp_dir().join(format!("sluice-fuzz-spool-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    let _ = std::fs::create_dir_all(&d);
    d
}

/// A segment of well-formed records that the input describes: each
/// `[kind][len]data` is a Chunk, Message or Warned record of one of a few
/// messages; returns its octets and the ids of the Message records.
fn segment(rest: &[u8]) -> (Vec<u8>, BTreeSet<u64>) {
    let mut out = SEGMENT_MAGIC.to_vec();
    let mut ids = BTreeSet::new();
    let mut at = 0;
    while let (Some(&kind), Some(&len)) = (rest.get(at), rest.get(at + 1)) {
        let data = rest
            .get(at + 2..(at + 2 + usize::from(len)).min(rest.len()))
            .unwrap_or(&[]);
        at += 2 + data.len();
        let id = u64::from(kind >> 2 & 7) + 1;
        let head = match kind & 3 {
            0 | 3 => Head::Chunk { id },
            1 => Head::Message {
                id,
                env: envelope(data.len() as u64),
            },
            _ => Head::Warned { id },
        };
        if kind & 3 == 1 {
            ids.insert(id);
        }
        frame(&head, data, &mut out);
    }
    (out, ids)
}

/// A plain envelope of `size` octets, one recipient.
fn envelope(size: u64) -> Envelope {
    Envelope {
        from: b"a@x.example".to_vec(),
        rcpts: vec![b"b@y.example".to_vec()],
        helo: b"client".to_vec(),
        peer: "127.0.0.1:1".into(),
        received: 1,
        size,
        ..Envelope::default()
    }
}

/// Spool recovery: `[mode][cut 2][flip 2]rest` makes one segment (mode
/// bit 0: well-formed records from the rest, else the magic and the rest
/// raw), cut at `cut` and with one octet flipped if mode bit 1. The scan
/// stays within the file, a cut never invents a message, repair is
/// final (a second scan finds nothing to cut) and loses no message.
pub fn spool(data: &[u8]) {
    let ([mode, c0, c1, f0, f1], rest) = take::<5>(data);
    let (mut seg, ids) = if mode & 1 == 1 {
        segment(rest)
    } else {
        ([&SEGMENT_MAGIC[..], rest].concat(), BTreeSet::new())
    };
    let whole = seg.len();
    let cut = usize::from(u16::from_le_bytes([c0, c1])) % (whole + 1);
    if mode & 4 != 0 {
        seg.truncate(cut);
    }
    if mode & 2 != 0 && !seg.is_empty() {
        let at = usize::from(u16::from_le_bytes([f0, f1])) % seg.len();
        seg[at] ^= 1 << (mode >> 5);
    }
    let dir = scratch();
    let path = dir.join("seg-0000000000000001.log");
    if std::fs::write(&path, &seg).is_err() {
        return;
    }
    let Ok(scan) = recovery::scan(&dir) else {
        return;
    };
    let len = seg.len() as u64;
    assert!(scan
        .torn
        .iter()
        .chain(&scan.unused)
        .all(|(_, good)| *good <= len));
    assert!(scan.damaged.iter().all(|(_, a, b)| a < b && *b <= len));
    let found: BTreeSet<u64> = scan.messages.iter().map(|m| m.id).collect();
    if mode & 2 == 0 && mode & 1 == 1 {
        assert!(
            found.is_subset(&ids),
            "a message appeared that was never written"
        );
        if mode & 4 == 0 {
            assert_eq!(found, ids, "an intact segment lost a message");
        }
    }
    if recovery::repair(&dir, &scan).is_ok() {
        if let Ok(again) = recovery::scan(&dir) {
            assert!(
                again.torn.is_empty() && again.unused.is_empty(),
                "repair left a tail: {:?} {:?} then {:?} {:?} (segment {} octets)",
                scan.torn,
                scan.unused,
                again.torn,
                again.unused,
                seg.len()
            );
            let after: BTreeSet<u64> = again.messages.iter().map(|m| m.id).collect();
            assert_eq!(found, after, "repair changed the messages");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The resolver's answer parser: `[qtype]answer`, judged as the answer to
/// a query for `example.org` with the answer's own id. A truncated answer
/// carries no records.
pub fn dns(data: &[u8]) {
    let ([qtype], answer) = take::<1>(data);
    let id = answer
        .get(..2)
        .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
    if let Ok(Some(r)) = dns::fuzz_parse(answer, id, "example.org", qtype) {
        assert!(!r.0 || r.1 == 0, "a truncated answer has records");
    }
}

/// Directory exports: the same text through the format sniffer, the LDIF
/// and the CSV parsers; every record's line is within the text.
pub fn directory(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let lines = text.lines().count() + 1;
    use crate::shell::directory::parse;
    for records in [
        parse::parse(text),
        parse::parse_ldif(text),
        parse::parse_csv(text),
    ]
    .into_iter()
    .flatten()
    {
        assert!(records.iter().all(|r| r.line >= 1 && r.line <= lines));
    }
}

/// The Dovecot passwd-file parser: any text loads or is refused; a login
/// that loads can be looked up.
pub fn passwd(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(p) = crate::shell::auth::Passwd::parse(text) {
        let mut dice = Dice::new(data);
        let login = text.lines().nth(dice.below(p.len() + 1)).unwrap_or("");
        let login = login.split(':').next().unwrap_or("");
        let _ = p.hash_of(login);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The blob target starts from a real blob: the sample rule file
    /// compiles, and resealing its blob changes nothing.
    #[test]
    fn the_sample_blob_loads_and_reseals_to_itself() {
        let b = sample_blob();
        assert!(b.len() > 4);
        let mut again = b.to_vec();
        reseal(&mut again);
        assert_eq!(again, b);
        let run = std::thread::Builder::new()
            .stack_size(64 << 20)
            .spawn(|| Table::from_blob(sample_blob()).is_ok())
            .map(|h| h.join());
        assert!(matches!(run, Ok(Ok(true))));
    }
}
