//! The durable spool: append-only segment files of checksummed records.
//!
//! A segment (`seg-<16 hex>.log`) starts with [`SEGMENT_MAGIC`] and holds
//! frames: `'S'`, payload length (u32 LE), CRC-32C of the payload (u32 LE),
//! payload. A payload is a postcard [`Head`] followed by raw message octets.
//! A message is a run of `Chunk` records (its octets as they arrived, for
//! large messages) closed by one `Message` record (envelope + last octets):
//! without that record the message does not exist. One writer thread owns
//! the open segment; sessions hand it framed records, and one `fdatasync`
//! makes durable every message committed since the previous one (group
//! commit). Recovery reads every frame whose CRC holds. A bad frame with
//! nothing valid after it is a torn tail (a crash mid-write; nothing in it
//! was acknowledged) and is cut. A bad frame with valid frames after it is
//! damage, not a crash: the damaged octets are skipped, the records after
//! them are read, the file is never cut, and a copy goes to `corrupt/`
//! for the operator. A segment of an unknown format is moved to
//! `corrupt/` whole, never truncated.
//!
//! The writer keeps [`PREALLOC_STEP`] octets of zeros written ahead of its
//! position (as databases pre-fill their write-ahead log), so that a group
//! commit overwrites blocks that exist: `fdatasync` then writes the data
//! alone, not also the inode for the grown size (on ext4 that halves the
//! sync, measured in bench/README.md). Zeros where a frame would start
//! are the unused end of a segment: recovery trims them silently, and a
//! segment that is closed is trimmed to its last frame.

use crate::shell::reply::OwnedReply;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// First octets of every segment file (format version 3: envelopes carry
/// the routing decisions, header edits and the Message-ID).
pub const SEGMENT_MAGIC: &[u8; 8] = b"SLSPOOL3";
/// A segment is closed and a new one begun past this size: large enough
/// for few files and large sequential writes (SD cards, eMMC), small
/// enough to be deleted soon once its messages are delivered.
pub const SEGMENT_MAX: u64 = 64 * 1024 * 1024;
/// Message octets a session holds before appending them as a chunk, so a
/// 36 MiB message never sits whole in memory.
pub const CHUNK: usize = 256 * 1024;
/// Largest frame accepted on recovery: a chunk or a message record with a
/// big envelope; anything larger is corruption.
const MAX_FRAME: u32 = 64 * 1024 * 1024;
/// Queued writer jobs; sessions wait (asynchronously) beyond it.
const QUEUE_DEPTH: usize = 1024;
/// Octets gathered into one write by the writer.
const BATCH_MAX: usize = 8 * 1024 * 1024;
/// Zeros kept written ahead of the writer's position. Each step costs one
/// sync of the grown inode (instead of one per commit); 1 MiB is some 250
/// small messages, and small enough that writing it is brief even on an SD
/// card (tens of milliseconds) and that a segment wastes little when closed.
const PREALLOC_STEP: u64 = 1024 * 1024;

const FRAME_HEAD: usize = 9;
const CASTAGNOLI: crc::Crc<u32, crc::Table<16>> =
    crc::Crc::<u32, crc::Table<16>>::new(&crc::CRC_32_ISCSI);

/// The envelope of a spooled message.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Envelope {
    /// Reverse path (empty for the null sender).
    pub from: Vec<u8>,
    /// Forward paths, in the order accepted.
    pub rcpts: Vec<Vec<u8>>,
    /// The client's HELO/EHLO name.
    pub helo: Vec<u8>,
    /// The client's address.
    pub peer: String,
    /// Unix time of acceptance, seconds.
    pub received: u64,
    /// Message size in octets.
    pub size: u64,
    /// SMTPUTF8 was requested.
    pub smtputf8: bool,
    /// BODY=8BITMIME was declared (or BDAT was used).
    pub body8bit: bool,
    /// The session was under TLS.
    pub tls: bool,
    /// Offset of the body (end of the header block), if one was found.
    pub body_offset: Option<u64>,
    /// Version of the policy that decided the routes.
    pub policy: u64,
    /// Per recipient: the policy's decision (final address, connector, next hop).
    pub routes: Vec<Route>,
    /// The message's Message-ID, for the log.
    pub message_id: Option<String>,
    /// Header edits to splice in when the message leaves.
    pub edits: Vec<crate::shell::policy::runtime::HeaderEdit>,
}

/// Where one recipient goes, as the policy decided at acceptance.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Route {
    /// The recipient as given (empty for one added by a rule).
    pub original: Vec<u8>,
    /// The final address.
    pub rcpt: Vec<u8>,
    /// The send connector's name.
    pub connector: Option<String>,
    /// The next hop.
    pub next_hop: crate::shell::policy::runtime::NextHop,
    /// A refusal (the recipient is to be bounced), e.g. "550 5.7.1 ...".
    pub refused: Option<String>,
}

/// The typed head of a record.
#[derive(Debug, Serialize, Deserialize)]
pub enum Head {
    /// Octets of message `id`, followed by more chunks or its Message record.
    Chunk {
        /// The message.
        id: u64,
    },
    /// The end of message `id`: its envelope; the last octets follow.
    Message {
        /// The message.
        id: u64,
        /// Its envelope.
        env: Envelope,
    },
    /// The sender of message `id` was warned of the delay (once).
    Warned {
        /// The message.
        id: u64,
    },
    /// A new delivery state of recipient `rcpt` (an index into the
    /// envelope's routes) of message `id`; the latest record wins.
    Status {
        /// The message.
        id: u64,
        /// The route's index.
        rcpt: u16,
        /// Its state.
        state: RcptState,
    },
}

/// Where one recipient of a spooled message stands.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum RcptState {
    /// Not yet tried.
    Pending,
    /// Tried; try again from `until` (Unix seconds).
    Deferred {
        /// Next attempt, Unix seconds.
        until: u64,
        /// Attempts so far.
        attempts: u32,
        /// The last reason, e.g. the remote reply.
        #[serde(with = "reply_text")]
        reason: OwnedReply,
    },
    /// The next hop said 250: it is off our hands.
    Delivered {
        /// When, Unix seconds.
        at: u64,
        /// The remote reply.
        #[serde(with = "reply_text")]
        reply: OwnedReply,
    },
    /// Permanently failed (a bounce is due to the sender).
    Bounced {
        /// When, Unix seconds.
        at: u64,
        /// Why: the remote reply or our reason.
        #[serde(with = "reply_text")]
        reason: OwnedReply,
    },
    /// Bounced, and the delivery status notification is spooled (or none
    /// was due: the sender was `<>`).
    Notified {
        /// When, Unix seconds.
        at: u64,
        /// Why it failed: the bounce's reply as text, or the operator's
        /// deletion (which is no reply).
        reason: String,
    },
}

/// A reply stored as its one-line text (`CODE X.Y.Z text`, as the log
/// shows it), the form records have always had on disk and in the
/// control socket's JSON.
mod reply_text {
    use crate::shell::reply::OwnedReply;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes the reply as its text.
    pub(super) fn serialize<S: Serializer>(r: &OwnedReply, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&r.to_string())
    }

    /// Reads a reply back from its text.
    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<OwnedReply, D::Error> {
        let text = String::deserialize(d)?;
        Ok(super::read_reply(&text))
    }
}

/// A reply sluice wrote, read back from its text. Its status is taken
/// whatever its class (the expiry's `554 4.4.7` has always been written
/// so); text that is no reply at all (never written by sluice) is kept
/// whole under a `554`.
pub fn read_reply(text: &str) -> OwnedReply {
    let Some(mut r) = OwnedReply::parse(text) else {
        return OwnedReply::new(554, None, text);
    };
    if r.status.is_none() {
        if let Some((word, rest)) = r.text.split_once(' ') {
            if let Some(status) = any_class_status(word) {
                r.status = Some(status);
                r.text = rest.to_string();
            }
        }
    }
    r
}

/// `X.Y.Z` of class 2, 4 or 5, in digits only.
fn any_class_status(word: &str) -> Option<crate::shell::reply::Status> {
    if !word.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None;
    }
    let mut parts = word.split('.');
    let a: u8 = parts.next()?.parse().ok()?;
    let b: u16 = parts.next()?.parse().ok()?;
    let c: u16 = parts.next()?.parse().ok()?;
    (parts.next().is_none() && matches!(a, 2 | 4 | 5)).then_some((a, b, c))
}

impl RcptState {
    /// Delivered or bounced: nothing more to do for this recipient.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            RcptState::Delivered { .. } | RcptState::Bounced { .. }
        )
    }
}

/// Why an append failed; every variant maps to `452 4.3.1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpoolError {
    /// The disk is full.
    NoSpace,
    /// Any other I/O failure (text for the log).
    Io(String),
    /// The writer has stopped.
    Closed,
}

impl std::fmt::Display for SpoolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SpoolError::NoSpace => f.write_str("no space left on the spool device"),
            SpoolError::Io(e) => write!(f, "spool write failed: {e}"),
            SpoolError::Closed => f.write_str("spool closed"),
        }
    }
}

fn io_err(e: &io::Error) -> SpoolError {
    if e.raw_os_error() == Some(28) || e.kind() == io::ErrorKind::StorageFull {
        SpoolError::NoSpace
    } else {
        SpoolError::Io(e.to_string())
    }
}

/// Frames one record: head, then `data`; returns where `data` starts in
/// `out`.
pub fn frame(head: &Head, data: &[u8], out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[b'S', 0, 0, 0, 0, 0, 0, 0, 0]);
    // Serialising a plain struct into a Vec cannot fail.
    let _ = postcard::to_io(head, &mut *out);
    let data_at = out.len();
    out.extend_from_slice(data);
    let payload = &out[start + FRAME_HEAD..];
    let len = payload.len() as u32;
    let crc = CASTAGNOLI.checksum(payload);
    out[start + 1..start + 5].copy_from_slice(&len.to_le_bytes());
    out[start + 5..start + 9].copy_from_slice(&crc.to_le_bytes());
    data_at
}

/// A part of a message's octets inside a segment.
#[derive(Debug, Clone)]
pub struct Part {
    /// The segment file.
    pub segment: Arc<PathBuf>,
    /// Offset of the octets in the file.
    pub offset: u64,
    /// Number of octets.
    pub len: u64,
}

/// A complete message found in the spool.
#[derive(Debug, Clone)]
pub struct Stored {
    /// Queue id.
    pub id: u64,
    /// Envelope.
    pub env: Envelope,
    /// Where its octets are, in order.
    pub parts: Vec<Part>,
    /// Per route (`env.routes`), its delivery state.
    pub states: Vec<RcptState>,
    /// The sender was warned of a delay.
    pub warned: bool,
}

impl Stored {
    /// Reads `len` octets at `offset` of the message (across its parts).
    pub fn read_range(&self, mut offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(len);
        for p in &self.parts {
            if out.len() == len {
                break;
            }
            if offset >= p.len {
                offset -= p.len;
                continue;
            }
            let take = ((p.len - offset) as usize).min(len - out.len());
            let mut f = File::open(p.segment.as_path())?;
            f.seek(SeekFrom::Start(p.offset + offset))?;
            // read_to_end fills the spare capacity without zeroing it first.
            let got = f.take(take as u64).read_to_end(&mut out)?;
            if got < take {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            offset = 0;
        }
        Ok(out)
    }

    /// The header block as received.
    pub fn read_head(&self) -> io::Result<Vec<u8>> {
        let n = self
            .env
            .body_offset
            .unwrap_or(self.env.size)
            .min(self.env.size);
        self.read_range(0, n as usize)
    }

    /// Reads the message octets back.
    pub fn read(&self) -> io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(self.env.size as usize);
        let mut open: Option<(Arc<PathBuf>, File)> = None;
        for p in &self.parts {
            let file = match &open {
                Some((path, f)) if Arc::ptr_eq(path, &p.segment) => f,
                _ => {
                    let f = File::open(p.segment.as_path())?;
                    &open.insert((p.segment.clone(), f)).1
                }
            };
            let start = out.len();
            out.resize(start + p.len as usize, 0);
            file.read_exact_at(&mut out[start..], p.offset)?;
        }
        Ok(out)
    }
}

/// Formats a queue id as operators see it.
pub fn format_id(id: u64) -> String {
    format!("{id:016X}")
}

/// Parses an operator's queue id.
pub fn parse_id(s: &str) -> Option<u64> {
    u64::from_str_radix(s.trim(), 16).ok()
}

/// What a scan of the spool found.
#[derive(Debug, Default)]
pub struct Scan {
    /// Complete messages, oldest first.
    pub messages: Vec<Stored>,
    /// Segments with a torn tail: path and the length that is good.
    pub torn: Vec<(PathBuf, u64)>,
    /// Segments whose end is preallocated zeros (the writer's, not
    /// damage): path and the length in use. Trimmed silently at start.
    pub unused: Vec<(PathBuf, u64)>,
    /// Damaged octet ranges skipped inside segments: path, from, to.
    pub damaged: Vec<(PathBuf, u64, u64)>,
    /// Files named like segments that do not start with [`SEGMENT_MAGIC`]
    /// (another format version, or not ours).
    pub foreign: Vec<PathBuf>,
    /// Highest segment number seen.
    pub last_segment: u64,
    /// Highest message id seen.
    pub last_id: u64,
    /// Per segment, the ids of the messages it holds records of.
    pub segment_ids: HashMap<PathBuf, HashSet<u64>>,
}

fn segment_number(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    let hex = name.strip_prefix("seg-")?.strip_suffix(".log")?;
    u64::from_str_radix(hex, 16).ok()
}

/// Reads every segment in `dir` (read-only; safe while the daemon runs).
pub fn scan(dir: &Path) -> io::Result<Scan> {
    let mut segs: Vec<(u64, PathBuf)> = match fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let p = e.path();
                segment_number(&p).map(|n| (n, p))
            })
            .collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    segs.sort();
    let mut scan = Scan::default();
    let mut chunks: HashMap<u64, Vec<Part>> = HashMap::new();
    let mut statuses: HashMap<u64, Vec<(u16, RcptState)>> = HashMap::new();
    let mut warned: HashSet<u64> = HashSet::new();
    for (n, path) in segs {
        scan.last_segment = scan.last_segment.max(n);
        let path = Arc::new(path);
        let len = fs::metadata(path.as_path())?.len();
        let found = scan_segment(&path, &mut chunks, &mut statuses, &mut warned, &mut scan)?;
        if found.is_some() {
            // Known even with no record in it (a run without mail), so that
            // it is collected like the others.
            scan.segment_ids
                .entry(path.as_path().to_path_buf())
                .or_default();
        }
        match found {
            None if len >= SEGMENT_MAGIC.len() as u64 => {
                scan.foreign.push(path.as_path().to_path_buf());
            }
            // Shorter than the magic: a crash while the segment was made.
            None => scan.torn.push((path.as_path().to_path_buf(), 0)),
            Some((good, true)) if good < len => {
                scan.unused.push((path.as_path().to_path_buf(), good));
            }
            Some((good, false)) if good < len => {
                scan.torn.push((path.as_path().to_path_buf(), good))
            }
            Some(_) => {}
        }
    }
    // Replay the status records in order: the latest one wins.
    for m in &mut scan.messages {
        m.warned = warned.contains(&m.id);
        for (rcpt, st) in statuses.remove(&m.id).unwrap_or_default() {
            if let Some(slot) = m.states.get_mut(usize::from(rcpt)) {
                *slot = st;
            }
        }
    }
    Ok(scan)
}

/// Reads one frame into `payload`; false when it is cut short, not a
/// frame, too large or fails its CRC.
fn read_frame(r: &mut impl Read, payload: &mut Vec<u8>) -> bool {
    let mut head = [0u8; FRAME_HEAD];
    if r.read_exact(&mut head).is_err() || head[0] != b'S' {
        return false;
    }
    let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]);
    let crc = u32::from_le_bytes([head[5], head[6], head[7], head[8]]);
    if len > MAX_FRAME {
        return false;
    }
    payload.resize(len as usize, 0);
    r.read_exact(payload).is_ok() && CASTAGNOLI.checksum(payload) == crc
}

/// What follows a bad frame at `at`.
enum AfterBad {
    /// A valid frame (CRC and record) starts here: the bad octets are damage.
    Frame(u64),
    /// Zeros to the end of the file: the writer's unused preallocation.
    Zeros,
    /// Anything else: a torn tail.
    Torn,
}

/// Looks past a bad frame at `at` in the segment at `path`. Only run after a
/// bad frame, so reading the rest of the segment into memory is fine.
fn after_bad_frame(path: &Path, at: u64) -> io::Result<AfterBad> {
    let mut f = File::open(path)?;
    f.seek(SeekFrom::Start(at))?;
    let mut rest = Vec::new();
    f.read_to_end(&mut rest)?;
    if rest.iter().all(|&b| b == 0) {
        return Ok(AfterBad::Zeros);
    }
    let mut payload = Vec::new();
    for (i, _) in rest.iter().enumerate().skip(1).filter(|(_, &b)| b == b'S') {
        let Some(head) = rest.get(i..i + FRAME_HEAD) else {
            break;
        };
        let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize;
        if len as u64 > u64::from(MAX_FRAME) || i + FRAME_HEAD + len > rest.len() {
            continue;
        }
        let mut frame = &rest[i..];
        if read_frame(&mut frame, &mut payload)
            && postcard::take_from_bytes::<Head>(&payload).is_ok()
        {
            return Ok(AfterBad::Frame(at + i as u64));
        }
    }
    Ok(AfterBad::Torn)
}

/// Where segments that recovery could not use are kept for the operator.
pub const CORRUPT_DIR: &str = "corrupt";

/// The states a message starts with: pending, or bounced for a recipient
/// the policy refused while the message itself was accepted.
pub fn initial_states(env: &Envelope) -> Vec<RcptState> {
    env.routes
        .iter()
        .map(|r| match &r.refused {
            Some(why) => RcptState::Bounced {
                at: env.received,
                reason: read_reply(why),
            },
            None => RcptState::Pending,
        })
        .collect()
}

/// Reads one segment's records into `scan`: `None` if it is not a segment
/// of ours, else the octets in use and whether only zeros follow them.
fn scan_segment(
    path: &Arc<PathBuf>,
    chunks: &mut HashMap<u64, Vec<Part>>,
    statuses: &mut HashMap<u64, Vec<(u16, RcptState)>>,
    warned: &mut HashSet<u64>,
    scan: &mut Scan,
) -> io::Result<Option<(u64, bool)>> {
    let file = File::open(path.as_path())?;
    let mut r = BufReader::with_capacity(256 * 1024, file);
    let mut magic = [0u8; 8];
    if r.read_exact(&mut magic).is_err() || &magic != SEGMENT_MAGIC {
        return Ok(None);
    }
    let mut pos = SEGMENT_MAGIC.len() as u64;
    let mut payload = Vec::new();
    loop {
        let parsed = if read_frame(&mut r, &mut payload) {
            postcard::take_from_bytes::<Head>(&payload).ok()
        } else {
            None
        };
        let Some((h, data)) = parsed else {
            // A bad frame: damage if a valid one follows, else the end.
            match after_bad_frame(path.as_path(), pos)? {
                AfterBad::Frame(next) => {
                    scan.damaged.push((path.as_path().to_path_buf(), pos, next));
                    r.seek(SeekFrom::Start(next))?;
                    pos = next;
                    continue;
                }
                AfterBad::Zeros => return Ok(Some((pos, true))),
                AfterBad::Torn => return Ok(Some((pos, false))),
            }
        };
        let record_id = match &h {
            Head::Chunk { id }
            | Head::Message { id, .. }
            | Head::Warned { id }
            | Head::Status { id, .. } => *id,
        };
        scan.segment_ids
            .entry(path.as_path().to_path_buf())
            .or_default()
            .insert(record_id);
        let data_off = pos + FRAME_HEAD as u64 + (payload.len() - data.len()) as u64;
        let part = Part {
            segment: path.clone(),
            offset: data_off,
            len: data.len() as u64,
        };
        match h {
            Head::Chunk { id } => chunks.entry(id).or_default().push(part),
            Head::Message { id, env } => {
                let mut parts = chunks.remove(&id).unwrap_or_default();
                if part.len > 0 || parts.is_empty() {
                    parts.push(part);
                }
                scan.last_id = scan.last_id.max(id);
                let states = initial_states(&env);
                scan.messages.push(Stored {
                    id,
                    env,
                    parts,
                    states,
                    warned: false,
                });
            }
            Head::Status { id, rcpt, state } => statuses.entry(id).or_default().push((rcpt, state)),
            Head::Warned { id } => {
                warned.insert(id);
            }
        }
        pos += (FRAME_HEAD + payload.len()) as u64;
    }
}

struct Job {
    frames: Vec<u8>,
    id: u64,
    /// Where the message octets start in `frames` and how many (a
    /// Chunk's or Message's data; zero for Status records).
    data: (usize, usize),
    /// A Message record (it closes the id's parts).
    closes: bool,
    /// Answer only once the batch is on stable storage (commits). Status
    /// records need not wait: they ride on the next sync (see [`Spool::sync`]).
    sync: bool,
    done: Option<smol::channel::Sender<Result<Vec<Part>, SpoolError>>>,
}

/// The daemon's handle on the spool.
pub struct Spool {
    dir: PathBuf,
    /// Per segment, the message ids it holds records of; the writer adds,
    /// [`Spool::collect`] deletes segments whose messages are all done.
    segments: Arc<Mutex<Segments>>,
    tx: smol::channel::Sender<Job>,
    durable: Arc<Mutex<Durable>>,
    next_id: AtomicU64,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl Spool {
    /// Opens the spool: recovers what is there (cutting a torn tail), then
    /// starts the writer on a fresh segment.
    pub fn open(dir: &Path) -> io::Result<(Spool, Scan)> {
        fs::create_dir_all(dir)?;
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            // The spool directory's own entry, on first start.
            File::open(parent)?.sync_all()?;
        }
        let scan = scan(dir)?;
        for (path, good) in scan.torn.iter().chain(&scan.unused) {
            // A torn tail is what a crash leaves; nothing in it was
            // acknowledged. Unused preallocation goes the same way (no new
            // record is ever appended to an old segment).
            let f = OpenOptions::new().write(true).open(path)?;
            f.set_len(*good)?;
            f.sync_all()?;
        }
        let corrupt = dir.join(CORRUPT_DIR);
        let keep = |p: &Path, suffix: &str| -> io::Result<PathBuf> {
            fs::create_dir_all(&corrupt)?;
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
            Ok(corrupt.join(format!("{}{suffix}", name.unwrap_or_default())))
        };
        for path in &scan.foreign {
            // Not ours to read, and not ours to cut: out of the way, whole
            // (never over an earlier one of the same name).
            let mut to = keep(path, "")?;
            let mut n = 1;
            while to.exists() {
                to = keep(path, &format!(".{n}"))?;
                n += 1;
            }
            fs::rename(path, to)?;
        }
        for (path, _, _) in &scan.damaged {
            // The file stays (its good records are live); a copy as it was,
            // once (the damage is found again at every start).
            let to = keep(path, ".damaged")?;
            if !to.exists() {
                fs::copy(path, to)?;
            }
        }
        if !scan.foreign.is_empty() || !scan.damaged.is_empty() {
            File::open(dir)?.sync_all()?;
            File::open(&corrupt)?.sync_all()?;
        }
        let now_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        let next_id = now_us.max(scan.last_id + 1);
        let segments = Arc::new(Mutex::new(Segments {
            ids: scan.segment_ids.clone(),
            current: PathBuf::new(),
        }));
        let durable = Arc::new(Mutex::new(Durable::default()));
        let mut w = Writer {
            segments: segments.clone(),
            durable: durable.clone(),
            dirty: false,
            dir: dir.to_path_buf(),
            file: None,
            path: Arc::new(PathBuf::new()),
            open_parts: HashMap::new(),
            seg: scan.last_segment,
            pos: 0,
            filled: 0,
            prefill_failed: None,
            failed: HashSet::new(),
        };
        w.rotate()?;
        let (tx, rx) = smol::channel::bounded(QUEUE_DEPTH);
        let handle = std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || w.run(rx))?;
        Ok((
            Spool {
                dir: dir.to_path_buf(),
                segments,
                durable,
                tx,
                next_id: AtomicU64::new(next_id),
                writer: Mutex::new(Some(handle)),
            },
            scan,
        ))
    }

    /// Deletes the segments (other than the one being written, and any
    /// touched in the last minute) whose every message is done: `live`
    /// says whether a message still has work. Returns how many went.
    pub fn collect(&self, live: impl Fn(u64) -> bool) -> usize {
        let recent = SystemTime::now() - std::time::Duration::from_secs(60);
        let Ok(mut segs) = self.segments.lock() else {
            return 0;
        };
        let current = segs.current.clone();
        let dead: Vec<PathBuf> = segs
            .ids
            .iter()
            .filter(|(path, ids)| {
                **path != current
                    && !ids.iter().any(|id| live(*id))
                    && fs::metadata(path)
                        .and_then(|m| m.modified())
                        .is_ok_and(|t| t < recent)
            })
            .map(|(p, _)| p.clone())
            .collect();
        let mut n = 0;
        for p in dead {
            if fs::remove_file(&p).is_ok() {
                segs.ids.remove(&p);
                n += 1;
            }
        }
        if n > 0 {
            let _ = File::open(&self.dir).and_then(|d| d.sync_all());
        }
        n
    }

    /// A new, unique queue id.
    pub fn new_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// How far the spool is on stable storage, and how many syncs it took.
    pub fn durable(&self) -> Durable {
        self.durable.lock().map(|d| d.clone()).unwrap_or_default()
    }

    /// Makes everything written so far durable (a no-op when nothing was
    /// written since the last sync).
    pub async fn sync(&self) -> Result<(), SpoolError> {
        self.run_job(Vec::new(), 0, (0, 0), false, true)
            .await
            .map(|_| ())
    }

    /// Hands the writer a job and waits for its answer (after the sync
    /// when `sync`).
    async fn run_job(
        &self,
        frames: Vec<u8>,
        id: u64,
        data: (usize, usize),
        closes: bool,
        sync: bool,
    ) -> Result<Vec<Part>, SpoolError> {
        let (done, wait) = smol::channel::bounded(1);
        self.tx
            .send(Job {
                frames,
                id,
                data,
                closes,
                sync,
                done: Some(done),
            })
            .await
            .map_err(|_| SpoolError::Closed)?;
        wait.recv().await.map_err(|_| SpoolError::Closed)?
    }

    /// Free octets on the spool's file system, if known.
    pub fn free_space(&self) -> Option<u64> {
        let s = rustix::fs::statvfs(&self.dir).ok()?;
        Some(s.f_bavail.saturating_mul(s.f_frsize))
    }

    /// Appends message octets (not yet durable; a later [`Spool::commit`]
    /// of the same id fails if this write failed).
    pub async fn append_chunk(&self, id: u64, data: &[u8]) -> Result<(), SpoolError> {
        let mut frames = Vec::with_capacity(data.len() + 32);
        let at = frame(&Head::Chunk { id }, data, &mut frames);
        self.tx
            .send(Job {
                frames,
                id,
                data: (at, data.len()),
                closes: false,
                sync: false,
                done: None,
            })
            .await
            .map_err(|_| SpoolError::Closed)
    }

    /// Appends the message record and returns once it is on stable
    /// storage, with where the message's octets are.
    pub async fn commit(
        &self,
        id: u64,
        env: &Envelope,
        tail: &[u8],
    ) -> Result<Vec<Part>, SpoolError> {
        let mut frames = Vec::with_capacity(tail.len() + 256);
        let at = frame(
            &Head::Message {
                id,
                env: env.clone(),
            },
            tail,
            &mut frames,
        );
        self.run_job(frames, id, (at, tail.len()), true, true).await
    }

    /// Records that the sender of `id` was warned of a delay (synced).
    pub async fn record_warned(&self, id: u64) -> Result<(), SpoolError> {
        let mut frames = Vec::new();
        frame(&Head::Warned { id }, &[], &mut frames);
        self.run_job(frames, id, (0, 0), false, true)
            .await
            .map(|_| ())
    }

    /// Records new states of recipients of message `id`.
    ///
    /// Returns once the records are written, not synced: losing one to a
    /// power cut means a recipient is tried again (a duplicate, never a
    /// loss), so they ride on the next commit's sync or on [`Spool::sync`],
    /// which the queue calls at least once a second.
    pub async fn record(&self, id: u64, states: &[(u16, RcptState)]) -> Result<(), SpoolError> {
        let mut frames = Vec::new();
        for (rcpt, state) in states {
            frame(
                &Head::Status {
                    id,
                    rcpt: *rcpt,
                    state: state.clone(),
                },
                &[],
                &mut frames,
            );
        }
        self.run_job(frames, id, (0, 0), false, false)
            .await
            .map(|_| ())
    }

    /// Stops the writer after it has written (and synced) all queued jobs.
    pub fn close(&self) {
        self.tx.close();
        if let Ok(mut g) = self.writer.lock() {
            if let Some(h) = g.take() {
                let _ = h.join();
            }
        }
    }
}

/// What the spool knows of its segments.
#[derive(Default)]
struct Segments {
    ids: HashMap<PathBuf, HashSet<u64>>,
    /// The segment being written (never collected).
    current: PathBuf,
}

struct Writer {
    segments: Arc<Mutex<Segments>>,
    dir: PathBuf,
    file: Option<File>,
    path: Arc<PathBuf>,
    /// Octet runs of messages whose Message record is not written yet.
    open_parts: HashMap<u64, Vec<Part>>,
    seg: u64,
    pos: u64,
    /// Octets of the segment that exist (frames, then preallocated zeros).
    filled: u64,
    /// When writing the zeros last failed (the disk was full).
    prefill_failed: Option<Instant>,
    /// Messages with a failed chunk write: their commit must fail.
    failed: HashSet<u64>,
    durable: Arc<Mutex<Durable>>,
    /// Octets written since the last sync.
    dirty: bool,
}

/// How far the spool is known to be on stable storage.
#[derive(Debug, Clone, Default)]
pub struct Durable {
    /// The segment last synced, and up to which octet.
    pub segment: PathBuf,
    /// Octets of `segment` synced.
    pub upto: u64,
    /// `fdatasync` calls that acknowledged commits (group commits).
    pub syncs: u64,
}

impl Writer {
    /// Starts the next segment and makes its directory entry durable.
    fn rotate(&mut self) -> io::Result<()> {
        self.seg += 1;
        let path = self.dir.join(format!("seg-{:016x}.log", self.seg));
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        f.write_all_at(SEGMENT_MAGIC, 0)?;
        let filled = prefill(&f, SEGMENT_MAGIC.len() as u64, &mut self.prefill_failed);
        f.sync_all()?;
        File::open(&self.dir)?.sync_all()?;
        self.file = Some(f);
        self.filled = filled;
        if let Ok(mut s) = self.segments.lock() {
            s.current = path.clone();
            s.ids.entry(path.clone()).or_default();
        }
        self.path = Arc::new(path);
        self.pos = SEGMENT_MAGIC.len() as u64;
        Ok(())
    }

    fn run(mut self, rx: smol::channel::Receiver<Job>) {
        let mut batch: Vec<u8> = Vec::new();
        let mut jobs: Vec<Job> = Vec::new();
        while let Ok(first) = rx.recv_blocking() {
            batch.clear();
            jobs.clear();
            batch.extend_from_slice(&first.frames);
            jobs.push(first);
            while batch.len() < BATCH_MAX {
                match rx.try_recv() {
                    Ok(j) => {
                        batch.extend_from_slice(&j.frames);
                        jobs.push(j);
                    }
                    Err(_) => break,
                }
            }
            let result = self.write_batch(&batch, jobs.iter().any(|j| j.sync));
            // Where the batch landed, to know each message's octets.
            // (Unused when the write failed: then `pos` did not move.)
            let mut at = self.pos.saturating_sub(batch.len() as u64);
            for j in jobs.drain(..) {
                let frame_at = at;
                at += j.frames.len() as u64;
                let r = match &result {
                    Err(e) => {
                        self.failed.insert(j.id);
                        self.open_parts.remove(&j.id);
                        Err(e.clone())
                    }
                    Ok(()) if self.failed.contains(&j.id) => {
                        self.open_parts.remove(&j.id);
                        Err(SpoolError::Io(
                            "an earlier part of this message was not written".into(),
                        ))
                    }
                    Ok(()) if j.frames.is_empty() => Ok(Vec::new()), // a sync alone
                    Ok(()) => {
                        if let Ok(mut s) = self.segments.lock() {
                            s.ids
                                .entry(self.path.as_path().to_path_buf())
                                .or_default()
                                .insert(j.id);
                        }
                        let part = Part {
                            segment: self.path.clone(),
                            offset: frame_at + j.data.0 as u64,
                            len: j.data.1 as u64,
                        };
                        if j.closes {
                            let mut parts = self.open_parts.remove(&j.id).unwrap_or_default();
                            if part.len > 0 || parts.is_empty() {
                                parts.push(part);
                            }
                            Ok(parts)
                        } else {
                            if j.data.1 > 0 {
                                self.open_parts.entry(j.id).or_default().push(part);
                            }
                            Ok(Vec::new())
                        }
                    }
                };
                if let Some(done) = j.done {
                    self.failed.remove(&j.id);
                    let _ = done.try_send(r);
                }
            }
        }
        // Closed: what was written without a sync is made durable too,
        // and the unused preallocation goes.
        if let Some(f) = &self.file {
            if self.dirty {
                let _ = f.sync_data();
            }
            if f.set_len(self.pos).is_ok() {
                let _ = f.sync_all();
            }
        }
    }

    fn write_batch(&mut self, batch: &[u8], sync: bool) -> Result<(), SpoolError> {
        if self.pos + batch.len() as u64 > SEGMENT_MAX && self.pos > SEGMENT_MAGIC.len() as u64 {
            if let Some(f) = &self.file {
                f.sync_data().map_err(|e| io_err(&e))?;
                // Its unused zeros (should this not reach the disk before a
                // crash, recovery trims them).
                let _ = f.set_len(self.pos);
                self.filled = self.pos;
            }
            self.rotate().map_err(|e| io_err(&e))?;
        }
        let Some(f) = &self.file else {
            return Err(SpoolError::Closed);
        };
        let sync = sync && (self.dirty || !batch.is_empty());
        let end = self.pos + batch.len() as u64;
        let mut filled = self.filled;
        let grow = end > filled || filled - end < FRAME_HEAD as u64;
        let failed = &mut self.prefill_failed;
        let res = f.write_all_at(batch, self.pos).and_then(|()| {
            if grow {
                // Past the zeros: the next step, before the sync, so that
                // one inode update covers both.
                filled = prefill(f, end, failed);
            }
            if sync {
                f.sync_data()
            } else {
                Ok(())
            }
        });
        match res {
            Ok(()) => {
                self.filled = filled.max(end);
                self.pos = end;
                self.dirty = !sync && (self.dirty || !batch.is_empty());
                if sync {
                    if let Ok(mut d) = self.durable.lock() {
                        d.segment = self.path.as_path().to_path_buf();
                        d.upto = self.pos;
                        d.syncs += 1;
                    }
                }
                Ok(())
            }
            Err(e) => {
                // Cut whatever part of the batch reached the file, so the
                // next frames follow good ones.
                let _ = f.set_len(self.pos);
                self.filled = self.pos;
                Err(io_err(&e))
            }
        }
    }
}

/// Writes [`PREALLOC_STEP`] zeros at `from` (the end of what is in use)
/// and returns where the segment now ends. Best effort: when the disk has
/// no room for them the file is cut back to `from`, the spool goes on
/// without (each sync then also writes the inode, as without this) and
/// tries again [`PREFILL_RETRY`] after the `failed` time.
fn prefill(f: &File, from: u64, failed: &mut Option<Instant>) -> u64 {
    if failed.is_some_and(|t| t.elapsed() < PREFILL_RETRY) {
        return from;
    }
    let zeros = vec![0u8; ZEROS_LEN as usize];
    let written = (0..PREALLOC_STEP / ZEROS_LEN)
        .try_for_each(|i| f.write_all_at(&zeros, from + i * ZEROS_LEN));
    match written {
        Ok(()) => {
            *failed = None;
            from + PREALLOC_STEP
        }
        Err(_) => {
            let _ = f.set_len(from);
            *failed = Some(Instant::now());
            from
        }
    }
}

/// Octets of zeros [`prefill`] writes at a time (allocated per
/// step: an immutable static would sit in the binary's read-only data).
const ZEROS_LEN: u64 = 64 * 1024;

/// After the disk had no room for the zeros, the next try waits this long
/// (a full disk would otherwise cost every commit a failed 1 MiB write).
const PREFILL_RETRY: std::time::Duration = std::time::Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    fn env(from: &str, size: u64) -> Envelope {
        Envelope {
            from: from.as_bytes().to_vec(),
            rcpts: vec![b"b@example.test".to_vec()],
            helo: b"client".to_vec(),
            peer: "127.0.0.1:1".into(),
            received: 1,
            size,
            smtputf8: false,
            body8bit: false,
            tls: false,
            body_offset: None,
            policy: 0,
            routes: Vec::new(),
            message_id: None,
            edits: Vec::new(),
        }
    }

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sluice-spool-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn commit_then_recover_in_chunks() {
        let dir = tmpdir("recover");
        let (spool, scan0) = Spool::open(&dir).expect("open");
        assert!(scan0.messages.is_empty());
        let id = spool.new_id();
        let body: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
        smol::block_on(async {
            spool.append_chunk(id, &body[..CHUNK]).await.expect("chunk");
            spool
                .append_chunk(id, &body[CHUNK..2 * CHUNK])
                .await
                .expect("chunk");
            spool
                .commit(
                    id,
                    &env("a@example.test", body.len() as u64),
                    &body[2 * CHUNK..],
                )
                .await
                .expect("commit");
        });
        spool.close();
        let (spool2, scan) = Spool::open(&dir).expect("reopen");
        assert_eq!(scan.messages.len(), 1);
        assert_eq!(scan.messages[0].id, id);
        assert_eq!(scan.messages[0].read().expect("read"), body);
        assert!(spool2.new_id() > id);
        spool2.close();
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn commit_reports_the_parts_that_recovery_finds_and_states_replay() {
        let dir = tmpdir("states");
        let (spool, _) = Spool::open(&dir).expect("open");
        let id = spool.new_id();
        let body: Vec<u8> = (0..300_000u32).map(|i| (i % 97) as u8).collect();
        let mut e = env("a@x.test", body.len() as u64);
        e.routes = vec![
            route("b@y.test", None),
            route("c@y.test", None),
            route("d@y.test", Some("550 5.7.1 no")),
        ];
        let parts = smol::block_on(async {
            spool.append_chunk(id, &body[..CHUNK]).await.expect("chunk");
            let p = spool.commit(id, &e, &body[CHUNK..]).await.expect("commit");
            spool
                .record(
                    id,
                    &[(
                        0,
                        RcptState::Deferred {
                            until: 5,
                            attempts: 1,
                            reason: read_reply("451 later"),
                        },
                    )],
                )
                .await
                .expect("status");
            spool
                .record(
                    id,
                    &[(
                        0,
                        RcptState::Delivered {
                            at: 9,
                            reply: read_reply("250 ok"),
                        },
                    )],
                )
                .await
                .expect("status");
            p
        });
        spool.close();
        let s = scan(&dir).expect("scan");
        let m = &s.messages[0];
        assert_eq!(m.parts.len(), parts.len());
        for (a, b) in m.parts.iter().zip(&parts) {
            assert_eq!(
                (a.segment.as_path(), a.offset, a.len),
                (b.segment.as_path(), b.offset, b.len)
            );
        }
        assert_eq!(m.read().expect("read"), body);
        assert_eq!(
            m.states[0],
            RcptState::Delivered {
                at: 9,
                reply: read_reply("250 ok")
            }
        );
        assert_eq!(m.states[1], RcptState::Pending);
        assert!(
            matches!(m.states[2], RcptState::Bounced { .. }),
            "refused by policy: bounce due"
        );
        let _ = fs::remove_dir_all(&dir);
    }

    fn route(rcpt: &str, refused: Option<&str>) -> Route {
        Route {
            original: rcpt.as_bytes().to_vec(),
            rcpt: rcpt.as_bytes().to_vec(),
            connector: Some("internet".into()),
            next_hop: crate::shell::policy::runtime::NextHop::Mx("y.test".into()),
            refused: refused.map(str::to_string),
        }
    }

    #[test]
    fn segments_whose_messages_are_done_are_collected() {
        let dir = tmpdir("collect");
        let (spool, _) = Spool::open(&dir).expect("open");
        let (a, b) = (spool.new_id(), spool.new_id());
        smol::block_on(spool.commit(a, &env("a@x.test", 1), b"a")).expect("commit");
        smol::block_on(spool.commit(b, &env("b@x.test", 1), b"b")).expect("commit");
        spool.close();
        let old: Vec<PathBuf> = fs::read_dir(&dir)
            .expect("dir")
            .map(|e| e.expect("entry").path())
            .collect();
        let (spool, _) = Spool::open(&dir).expect("reopen"); // a new current segment
                                                             // Make the old segment look older than a minute.
        let past = SystemTime::now() - std::time::Duration::from_secs(120);
        for p in &old {
            File::options()
                .write(true)
                .open(p)
                .expect("open")
                .set_modified(past)
                .expect("mtime");
        }
        assert_eq!(spool.collect(|id| id == b), 0, "b still has work");
        assert_eq!(spool.collect(|_| false), 1);
        assert!(old.iter().all(|p| !p.exists()));
        assert_eq!(
            fs::read_dir(&dir).expect("dir").count(),
            1,
            "the current segment stays"
        );
        spool.close();
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_torn_tail_is_cut_and_earlier_messages_survive() {
        let dir = tmpdir("torn");
        let (spool, _) = Spool::open(&dir).expect("open");
        let id = spool.new_id();
        smol::block_on(spool.commit(id, &env("a@x.test", 5), b"hello")).expect("commit");
        spool.close();
        // Simulate a crash in the middle of the next frame.
        let seg = scan(&dir).expect("scan").messages[0].parts[0]
            .segment
            .clone();
        let mut torn = Vec::new();
        frame(
            &Head::Message {
                id: id + 1,
                env: env("b@x.test", 5),
            },
            b"world",
            &mut torn,
        );
        torn.truncate(torn.len() - 3);
        let f = OpenOptions::new()
            .append(true)
            .open(seg.as_path())
            .expect("open seg");
        std::io::Write::write_all(&mut &f, &torn).expect("append");
        let before = fs::metadata(seg.as_path()).expect("meta").len();
        let (spool2, scan) = Spool::open(&dir).expect("reopen");
        assert_eq!(scan.messages.len(), 1);
        assert_eq!(scan.torn.len(), 1);
        assert!(fs::metadata(seg.as_path()).expect("meta").len() < before);
        spool2.close();
        let _ = fs::remove_dir_all(&dir);
    }

    /// A spool in `dir` holding one message: the spool, its segment, and
    /// the octets of the segment in use.
    fn one_message(dir: &Path) -> (Spool, Arc<PathBuf>, u64) {
        let (spool, _) = Spool::open(dir).expect("open");
        let id = spool.new_id();
        let parts =
            smol::block_on(spool.commit(id, &env("a@x.test", 5), b"hello")).expect("commit");
        let used = parts[0].offset + parts[0].len;
        (spool, parts[0].segment.clone(), used)
    }

    /// The segment as a crash would leave it (the writer still open), in a
    /// spool directory of its own: that directory and the copy.
    fn crashed_copy(dir: &Path, seg: &Path) -> (PathBuf, PathBuf) {
        let copy = dir.join("crashed");
        fs::create_dir_all(&copy).expect("mkdir");
        let crashed = copy.join(seg.file_name().expect("name"));
        fs::copy(seg, &crashed).expect("copy");
        (copy, crashed)
    }

    #[test]
    fn preallocated_zeros_are_the_unused_end_not_a_torn_tail() {
        let dir = tmpdir("prealloc");
        let (spool, seg, used) = one_message(&dir);
        // While the daemon runs (or after a crash) zeros follow the frames.
        let len = fs::metadata(seg.as_path()).expect("meta").len();
        assert_eq!(
            len,
            SEGMENT_MAGIC.len() as u64 + PREALLOC_STEP,
            "{used} used"
        );
        let s = scan(&dir).expect("scan");
        assert_eq!(s.messages.len(), 1);
        assert!(
            s.torn.is_empty() && s.damaged.is_empty(),
            "{:?} {:?}",
            s.torn,
            s.damaged
        );
        assert_eq!(s.unused, vec![(seg.as_path().to_path_buf(), used)]);
        // A crash leaves them there: the next start trims them, silently.
        let (copy, crashed) = crashed_copy(&dir, &seg);
        let (spool2, s2) = Spool::open(&copy).expect("open the crashed copy");
        assert_eq!(s2.messages.len(), 1);
        assert!(s2.torn.is_empty() && s2.damaged.is_empty());
        assert_eq!(fs::metadata(&crashed).expect("meta").len(), used);
        spool2.close();
        // A clean stop trims the segment to its last frame.
        spool.close();
        assert_eq!(fs::metadata(seg.as_path()).expect("meta").len(), used);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_preallocation_grows_ahead_of_the_writer() {
        let dir = tmpdir("grow");
        let (spool, _) = Spool::open(&dir).expect("open");
        let body = vec![b'm'; 700 * 1024];
        let mut last = None;
        for i in 0..3 {
            let id = spool.new_id();
            let parts =
                smol::block_on(spool.commit(id, &env("a@x.test", body.len() as u64), &body))
                    .expect("commit");
            let p = parts.last().expect("part").clone();
            let used = p.offset + p.len;
            let len = fs::metadata(p.segment.as_path()).expect("meta").len();
            assert!(
                len > used && len - used <= PREALLOC_STEP,
                "message {i}: {len} octets for {used} used"
            );
            last = Some(used);
        }
        let s = scan(&dir).expect("scan");
        assert_eq!(s.messages.len(), 3);
        for m in &s.messages {
            assert_eq!(m.read().expect("read"), body);
        }
        assert_eq!(s.unused.len(), 1);
        assert_eq!(Some(s.unused[0].1), last);
        spool.close();
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_segment_without_records_is_collected_too() {
        let dir = tmpdir("empty");
        let (spool, _) = Spool::open(&dir).expect("open");
        spool.close(); // a run without mail
        let first: Vec<PathBuf> = fs::read_dir(&dir)
            .expect("dir")
            .map(|e| e.expect("entry").path())
            .collect();
        assert_eq!(first.len(), 1);
        let old = SystemTime::now() - std::time::Duration::from_secs(120);
        File::options()
            .write(true)
            .open(&first[0])
            .and_then(|f| f.set_modified(old))
            .expect("age it");
        let (spool, _) = Spool::open(&dir).expect("reopen");
        assert_eq!(spool.collect(|_| false), 1);
        assert!(!first[0].exists());
        spool.close();
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn zeros_then_junk_is_still_a_torn_tail() {
        let dir = tmpdir("zerojunk");
        let (spool, seg, used) = one_message(&dir);
        let (copy, crashed) = crashed_copy(&dir, &seg);
        spool.close();
        let f = OpenOptions::new()
            .append(true)
            .open(&crashed)
            .expect("open");
        std::io::Write::write_all(&mut &f, b"Sjunk").expect("append");
        let (spool2, s) = Spool::open(&copy).expect("open");
        assert_eq!(s.messages.len(), 1);
        assert_eq!(s.torn, vec![(crashed.clone(), used)]);
        assert!(s.unused.is_empty());
        assert_eq!(fs::metadata(&crashed).expect("meta").len(), used);
        spool2.close();
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn commits_are_durable_when_they_return_and_share_syncs() {
        let dir = tmpdir("group");
        let (spool, _) = Spool::open(&dir).expect("open");
        let spool = Arc::new(spool);
        const N: usize = 64;
        let ex = smol::Executor::new();
        let tasks: Vec<_> = (0..N)
            .map(|i| {
                let sp = spool.clone();
                ex.spawn(async move {
                    let id = sp.new_id();
                    let body = vec![b'a' + (i % 26) as u8; 2000];
                    let parts = sp
                        .commit(id, &env("a@x.test", 2000), &body)
                        .await
                        .expect("commit");
                    // Acknowledged: the record is inside what was synced.
                    let d = sp.durable();
                    let last = parts.last().expect("part");
                    assert_eq!(d.segment, *last.segment.as_path());
                    assert!(d.upto >= last.offset + last.len, "{d:?} vs {last:?}");
                })
            })
            .collect();
        smol::block_on(ex.run(async {
            for t in tasks {
                t.await;
            }
        }));
        let d = spool.durable();
        assert!(
            d.syncs >= 1 && d.syncs < N as u64,
            "{} syncs for {N} concurrent commits",
            d.syncs
        );
        if let Ok(sp) = Arc::try_unwrap(spool) {
            sp.close();
        }
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn status_records_ride_on_the_next_sync() {
        let dir = tmpdir("lazy");
        let (spool, _) = Spool::open(&dir).expect("open");
        let id = spool.new_id();
        let mut e = env("a@x.test", 2);
        e.routes.push(Route {
            original: b"b@example.test".to_vec(),
            rcpt: b"b@example.test".to_vec(),
            connector: None,
            next_hop: crate::shell::policy::runtime::NextHop::None,
            refused: None,
        });
        smol::block_on(spool.commit(id, &e, b"ok")).expect("commit");
        let after_commit = spool.durable();
        assert_eq!(after_commit.syncs, 1);
        let st = RcptState::Delivered {
            at: 1,
            reply: read_reply("250 ok"),
        };
        smol::block_on(spool.record(id, &[(0, st)])).expect("record");
        assert_eq!(
            spool.durable().syncs,
            1,
            "a status record does not wait for a sync"
        );
        smol::block_on(spool.sync()).expect("sync");
        let d = spool.durable();
        assert_eq!(d.syncs, 2);
        assert!(
            d.upto > after_commit.upto,
            "the status record is inside the synced range"
        );
        smol::block_on(spool.sync()).expect("sync");
        assert_eq!(spool.durable().syncs, 2, "nothing new: no sync");
        spool.close();
        let s = scan(&dir).expect("scan");
        assert!(matches!(
            s.messages[0].states[0],
            RcptState::Delivered { .. }
        ));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn damage_is_skipped_and_what_follows_is_read_never_cut() {
        let dir = tmpdir("damage");
        let (spool, _) = Spool::open(&dir).expect("open");
        for i in 0..3u64 {
            let id = spool.new_id();
            smol::block_on(spool.commit(id, &env("a@x.test", 1), &[b'0' + i as u8]))
                .expect("commit");
        }
        spool.close();
        let s = scan(&dir).expect("scan");
        let p = s.messages[1].parts[0].clone();
        let mut bytes = fs::read(p.segment.as_path()).expect("read");
        bytes[p.offset as usize] ^= 0x40;
        fs::write(p.segment.as_path(), &bytes).expect("write");
        let len = bytes.len() as u64;
        let (spool2, s) = Spool::open(&dir).expect("reopen");
        let got: Vec<Vec<u8>> = s.messages.iter().map(|m| m.read().expect("read")).collect();
        assert_eq!(
            got,
            [b"0".to_vec(), b"2".to_vec()],
            "the third message is read"
        );
        assert_eq!(s.damaged.len(), 1);
        assert!(s.torn.is_empty(), "damage is not a torn tail");
        assert_eq!(
            fs::metadata(p.segment.as_path()).expect("meta").len(),
            len,
            "never cut"
        );
        let copy = dir.join(CORRUPT_DIR).join(format!(
            "{}.damaged",
            p.segment.file_name().expect("name").to_string_lossy()
        ));
        assert_eq!(fs::read(&copy).expect("copy"), bytes);
        spool2.close();
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_segment_of_another_format_is_moved_aside_whole() {
        let dir = tmpdir("foreign");
        fs::create_dir_all(&dir).expect("dir");
        let old = dir.join("seg-0000000000000001.log");
        let content = b"SLSPOOL1 some older records that this version cannot read".to_vec();
        fs::write(&old, &content).expect("write");
        let (spool, s) = Spool::open(&dir).expect("open");
        assert_eq!(s.foreign, std::slice::from_ref(&old));
        assert!(!old.exists());
        let moved = dir.join(CORRUPT_DIR).join("seg-0000000000000001.log");
        assert_eq!(fs::read(&moved).expect("moved"), content, "kept whole");
        // New mail still goes in.
        let id = spool.new_id();
        smol::block_on(spool.commit(id, &env("a@x.test", 2), b"ok")).expect("commit");
        spool.close();
        // A second old file of the same name does not overwrite the first.
        fs::write(&old, b"SLSPOOL2 another").expect("write");
        let (spool, _) = Spool::open(&dir).expect("open");
        spool.close();
        assert_eq!(fs::read(&moved).expect("moved"), content);
        assert!(dir
            .join(CORRUPT_DIR)
            .join("seg-0000000000000001.log.1")
            .exists());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn replies_are_stored_as_their_text() {
        // The bytes a state with a plain `String` reason had on disk.
        #[derive(Serialize)]
        enum OldState {
            _Pending,
            Deferred {
                until: u64,
                attempts: u32,
                reason: String,
            },
        }
        let text = "554 4.4.7 Message expired after 60s in the queue; last reason: 451 4.4.1 x";
        let old = postcard::to_allocvec(&OldState::Deferred {
            until: 7,
            attempts: 2,
            reason: text.into(),
        })
        .expect("encode");
        let new = RcptState::Deferred {
            until: 7,
            attempts: 2,
            reason: read_reply(text),
        };
        assert_eq!(postcard::to_allocvec(&new).expect("encode"), old);
        let back: RcptState = postcard::from_bytes(&old).expect("decode");
        assert_eq!(back, new);
        // The expiry's status survives, though its class is not the code's.
        let RcptState::Deferred { reason, .. } = back else {
            panic!("not deferred");
        };
        assert_eq!(reason.status, Some((4, 4, 7)));
        assert_eq!(reason.to_string(), text);
        assert_eq!(read_reply("250 ok").to_string(), "250 ok");
    }

    #[test]
    fn chunks_without_their_message_record_are_not_a_message() {
        let dir = tmpdir("orphan");
        let (spool, _) = Spool::open(&dir).expect("open");
        let id = spool.new_id();
        smol::block_on(spool.append_chunk(id, b"partial")).expect("chunk");
        let id2 = spool.new_id();
        smol::block_on(spool.commit(id2, &env("a@x.test", 2), b"ok")).expect("commit");
        spool.close();
        let s = scan(&dir).expect("scan");
        assert_eq!(s.messages.len(), 1);
        assert_eq!(s.messages[0].read().expect("read"), b"ok");
        let _ = fs::remove_dir_all(&dir);
    }
}
