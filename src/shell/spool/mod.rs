//! The durable spool: append-only segment files of checksummed records.
//!
//! A segment (`seg-<16 hex>.log`) starts with [`SEGMENT_MAGIC`] and holds
//! frames of checksummed records ([`records`]: the on-disk format). A
//! message is a run of `Chunk` records (its octets as they arrived, for
//! large messages) closed by one `Message` record (envelope + last octets):
//! without that record the message does not exist. One writer thread
//! ([`writer`]) owns the open segment; sessions hand it framed records, and
//! one `fdatasync` makes durable every message committed since the
//! previous one (group commit). At start [`recovery`] reads every frame
//! whose CRC holds, cuts a torn tail and sets damage aside.
//!
//! This module is the API: [`Spool::open`], [`Spool::commit`], the status
//! records, and [`Stored`], a message as the queue sees it.

pub mod records;
pub mod recovery;
mod writer;

pub use records::{
    frame, frame_head, initial_states, read_reply, Envelope, Head, HeaderEdit, NextHop, RcptState,
    Route,
};
pub use recovery::{scan, Scan};
pub use writer::Durable;

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};
use writer::{Job, Segments, Writer};

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
/// Queued writer jobs; sessions wait (asynchronously) beyond it.
const QUEUE_DEPTH: usize = 1024;

/// Where segments that recovery could not use are kept for the operator.
pub const CORRUPT_DIR: &str = "corrupt";

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
    pub fn read_range(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        Reader::new(self).read_into(offset, len, &mut out)?;
        Ok(out)
    }

    /// The header block as received.
    pub fn read_head(&self) -> io::Result<Vec<u8>> {
        self.read_range(0, self.head_len() as usize)
    }

    /// Octets of the header block as received (the whole message when it
    /// has no body).
    pub fn head_len(&self) -> u64 {
        self.env
            .body_offset
            .unwrap_or(self.env.size)
            .min(self.env.size)
    }

    /// Reads the message octets back (every part, whatever the size says).
    pub fn read(&self) -> io::Result<Vec<u8>> {
        let len: u64 = self.parts.iter().map(|p| p.len).sum();
        self.read_range(0, len as usize)
    }
}

/// Reads a stored message's octets with `pread`, keeping the segment file
/// it read last open until [`Reader::release`]: a delivery streams the body
/// in chunks, mostly from one segment (one `open` for all, not one per
/// chunk).
pub struct Reader<'a> {
    m: &'a Stored,
    open: Option<(Arc<PathBuf>, Arc<File>)>,
}

/// The segment file read last, shared by every reader: deliveries read
/// mostly the segment being written, so one descriptor serves them all
/// (an `open` and a `close` fewer per read; at 4 KiB, two of each per
/// message). [`Spool::collect`] drops it with the segment.
static LAST_READ: LastRead = LastRead(Mutex::new(None));

/// One shared segment file, keyed by the segment's `Arc` (one per segment
/// file, held here, so never reused for another file).
struct LastRead(Mutex<Option<(Arc<PathBuf>, Arc<File>)>>);

impl LastRead {
    /// `path`'s file: the shared one if it is the segment read last, else
    /// opened and shared from now on.
    /// The lock is held across the `open` of a miss (one per segment), so
    /// that a [`LastRead::forget`] meanwhile cannot be undone by it.
    fn file(&self, path: &Arc<PathBuf>) -> io::Result<Arc<File>> {
        let Ok(mut last) = self.0.lock() else {
            return File::open(path.as_path()).map(Arc::new);
        };
        if let Some((p, f)) = last.as_ref() {
            if Arc::ptr_eq(p, path) {
                return Ok(f.clone());
            }
        }
        let f = Arc::new(File::open(path.as_path())?);
        *last = Some((path.clone(), f.clone()));
        Ok(f)
    }

    /// Lets go of the shared file if it is `path`'s (a deleted segment's
    /// space is freed when its last descriptor closes).
    fn forget(&self, path: &Path) {
        if let Ok(mut last) = self.0.lock() {
            if last.as_ref().is_some_and(|(p, _)| p.as_path() == path) {
                *last = None;
            }
        }
    }
}

impl<'a> Reader<'a> {
    /// A reader of `m`; no file is opened before the first read.
    pub fn new(m: &'a Stored) -> Reader<'a> {
        Reader { m, open: None }
    }

    /// Replaces `out`'s content with the `len` octets at `offset` of the
    /// message (across its parts); fewer only if the message ends first.
    pub fn read_into(&mut self, mut offset: u64, len: usize, out: &mut Vec<u8>) -> io::Result<()> {
        out.clear();
        for p in &self.m.parts {
            if out.len() == len {
                break;
            }
            if offset >= p.len {
                offset -= p.len;
                continue;
            }
            let take = ((p.len - offset) as usize).min(len - out.len());
            let start = out.len();
            crate::shell::buf::set_len_zeroed(out, start + take);
            self.file(&p.segment)?
                .read_exact_at(&mut out[start..], p.offset + offset)?;
            offset = 0;
        }
        Ok(())
    }

    /// Lets go of the segment file kept open: a delivery that has streamed
    /// its message holds no descriptor of its own while it waits for the
    /// reply (the one shared descriptor of the segment read last stays).
    pub fn release(&mut self) {
        self.open = None;
    }

    /// The open segment file at `path` (its own unless it is the last one).
    fn file(&mut self, path: &Arc<PathBuf>) -> io::Result<&File> {
        let open = match self.open.take() {
            Some((p, f)) if Arc::ptr_eq(&p, path) || p == *path => (p, f),
            _ => (path.clone(), LAST_READ.file(path)?),
        };
        Ok(&self.open.insert(open).1)
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
    /// The last `statvfs` of the spool's file system: free octets, and
    /// when (ms since `opened`). See [`Spool::room_for`].
    free_seen: AtomicU64,
    free_seen_at: AtomicU64,
    opened: std::time::Instant,
}

/// How long a free-space reading answers [`Spool::room_for`] without
/// asking the file system again, and only while it exceeds the need by
/// [`FREE_MARGIN`]: more than any spool can take in that time (a fast SSD
/// writes some 50 MiB in 100 ms). Near the limit every MAIL asks.
const FREE_FRESH_MS: u64 = 100;
/// See [`FREE_FRESH_MS`].
const FREE_MARGIN: u64 = 256 * 1024 * 1024;

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
        recovery::repair(dir, &scan)?;
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
        let mut w = Writer::new(
            dir.to_path_buf(),
            segments.clone(),
            durable.clone(),
            scan.last_segment,
        );
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
                free_seen: AtomicU64::new(0),
                free_seen_at: AtomicU64::new(0),
                opened: std::time::Instant::now(),
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
            LAST_READ.forget(&p);
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
        self.run_job(Vec::new(), Vec::new(), 0, (0, 0), false, true)
            .await
            .map(|_| ())
    }

    /// Hands the writer a job and waits for its answer (after the sync
    /// when `sync`).
    async fn run_job(
        &self,
        frames: Vec<u8>,
        tail: Vec<u8>,
        id: u64,
        data: (usize, usize),
        closes: bool,
        sync: bool,
    ) -> Result<Vec<Part>, SpoolError> {
        let (done, wait) = smol::channel::bounded(1);
        self.tx
            .send(Job {
                frames,
                tail,
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

    /// The spool's segments: how many, and their octets on disk
    /// (preallocated room included). Stats each segment: for a scrape,
    /// not for the hot path.
    pub fn usage(&self) -> (u64, u64) {
        let paths: Vec<PathBuf> = match self.segments.lock() {
            Ok(s) => s.ids.keys().cloned().collect(),
            Err(_) => return (0, 0),
        };
        let bytes = paths
            .iter()
            .filter_map(|p| fs::metadata(p).ok())
            .map(|m| m.len())
            .sum();
        (paths.len() as u64, bytes)
    }

    /// Free octets on the spool's file system, if known.
    pub fn free_space(&self) -> Option<u64> {
        let s = rustix::fs::statvfs(&self.dir).ok()?;
        Some(s.f_bavail.saturating_mul(s.f_frsize))
    }

    /// Whether the spool has `need` octets free: `Err(free)` when it has
    /// not (unknown counts as room). Asks the file system at each call
    /// unless a reading less than [`FREE_FRESH_MS`] old showed far more
    /// room ([`FREE_MARGIN`] beyond `need`): under load that saves a
    /// `statvfs` per message, and near a full disk nothing changes.
    pub fn room_for(&self, need: u64) -> Result<(), u64> {
        let now = self.opened.elapsed().as_millis() as u64 + 1;
        let seen_at = self.free_seen_at.load(Ordering::Relaxed);
        let seen = self.free_seen.load(Ordering::Relaxed);
        if seen_at != 0
            && now - seen_at.min(now) < FREE_FRESH_MS
            && seen >= need.saturating_add(FREE_MARGIN)
        {
            return Ok(());
        }
        let Some(free) = self.free_space() else {
            return Ok(());
        };
        self.free_seen.store(free, Ordering::Relaxed);
        self.free_seen_at.store(now, Ordering::Relaxed);
        if free < need {
            Err(free)
        } else {
            Ok(())
        }
    }

    /// Appends message octets (not yet durable; a later [`Spool::commit`]
    /// of the same id fails if this write failed).
    pub async fn append_chunk(&self, id: u64, data: &[u8]) -> Result<(), SpoolError> {
        let mut frames = Vec::with_capacity(data.len() + 32);
        let at = frame(&Head::Chunk { id }, data, &mut frames);
        self.tx
            .send(Job {
                frames,
                tail: Vec::new(),
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
    /// The octets are handed to the writer as they are (no copy).
    pub async fn commit(
        &self,
        id: u64,
        env: &Envelope,
        tail: Vec<u8>,
    ) -> Result<Vec<Part>, SpoolError> {
        let mut frames = Vec::with_capacity(256);
        let at = frame_head(
            &Head::Message {
                id,
                env: env.clone(),
            },
            &tail,
            &mut frames,
        );
        let data = (at, tail.len());
        self.run_job(frames, tail, id, data, true, true).await
    }

    /// Records that the sender of `id` was warned of a delay (synced).
    pub async fn record_warned(&self, id: u64) -> Result<(), SpoolError> {
        let mut frames = Vec::new();
        frame(&Head::Warned { id }, &[], &mut frames);
        self.run_job(frames, Vec::new(), id, (0, 0), false, true)
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
        self.run_job(frames, Vec::new(), id, (0, 0), false, false)
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

/// What the tests of the spool's modules share: an envelope, a route, a
/// scratch directory, a spool holding one message.
#[cfg(test)]
pub(crate) mod testutil {
    use super::*;

    pub(crate) fn env(from: &str, size: u64) -> Envelope {
        Envelope {
            from: from.as_bytes().to_vec(),
            rcpts: vec![b"b@example.test".to_vec()],
            helo: b"client".to_vec(),
            peer: "127.0.0.1:1".into(),
            received: 1,
            size,
            ..Envelope::default()
        }
    }

    pub(crate) fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sluice-spool-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    pub(crate) fn route(rcpt: &str, refused: Option<&str>) -> Route {
        Route {
            original: rcpt.as_bytes().to_vec(),
            rcpt: rcpt.as_bytes().to_vec(),
            connector: Some("internet".into()),
            next_hop: NextHop::Mx("y.test".into()),
            refused: refused.map(str::to_string),
        }
    }

    /// A message whose octets `text` lie in `dir` as `pieces` parts, each
    /// after a few octets of other data, alternating between two segment
    /// files (as a message written in chunks across a rotation would).
    pub(crate) fn stored_in_parts(dir: &Path, text: &[u8], pieces: usize) -> Stored {
        fs::create_dir_all(dir).expect("mkdir");
        let segs = [dir.join("seg-a.log"), dir.join("seg-b.log")].map(Arc::new);
        let mut files = [Vec::new(), Vec::new()];
        let step = text.len().div_ceil(pieces.max(1)).max(1);
        let mut parts = Vec::new();
        for (i, piece) in text.chunks(step).enumerate() {
            let f = &mut files[i % 2];
            f.extend_from_slice(b"junk");
            parts.push(Part {
                segment: segs[i % 2].clone(),
                offset: f.len() as u64,
                len: piece.len() as u64,
            });
            f.extend_from_slice(piece);
        }
        for (path, bytes) in segs.iter().zip(&files) {
            fs::write(path.as_path(), bytes).expect("write");
        }
        Stored {
            id: 1,
            env: env("a@x.test", text.len() as u64),
            parts,
            states: Vec::new(),
            warned: false,
        }
    }

    /// A spool in `dir` holding one message: the spool, its segment, and
    /// the octets of the segment in use.
    pub(crate) fn one_message(dir: &Path) -> (Spool, Arc<PathBuf>, u64) {
        let (spool, _) = Spool::open(dir).expect("open");
        let id = spool.new_id();
        let parts = smol::block_on(spool.commit(id, &env("a@x.test", 5), b"hello".to_vec()))
            .expect("commit");
        let used = parts[0].offset + parts[0].len;
        (spool, parts[0].segment.clone(), used)
    }

    /// The segment as a crash would leave it (the writer still open), in a
    /// spool directory of its own: that directory and the copy.
    pub(crate) fn crashed_copy(dir: &Path, seg: &Path) -> (PathBuf, PathBuf) {
        let copy = dir.join("crashed");
        fs::create_dir_all(&copy).expect("mkdir");
        let crashed = copy.join(seg.file_name().expect("name"));
        fs::copy(seg, &crashed).expect("copy");
        (copy, crashed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use testutil::*;

    #[test]
    fn the_reader_reads_any_range_across_parts_and_segments() {
        let dir = tmpdir("reader");
        let text: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        let m = stored_in_parts(&dir, &text, 7);
        let mut r = Reader::new(&m);
        let mut out = vec![9u8; 3]; // replaced, not appended to
        for (at, len) in [(0, 1000), (0, 1), (140, 300), (142, 2), (999, 1), (500, 0)] {
            r.read_into(at, len, &mut out).expect("read");
            assert_eq!(out, &text[at as usize..at as usize + len], "{at}+{len}");
        }
        // Past the end: what there is.
        r.read_into(990, 50, &mut out).expect("read");
        assert_eq!(out, &text[990..]);
        // Released, it reads on (the shared descriptor, or the file again).
        r.release();
        r.read_into(3, 400, &mut out).expect("read");
        assert_eq!(out, &text[3..403]);
        assert_eq!(m.read().expect("read"), text);
        assert_eq!(m.read_range(10, 20).expect("read"), &text[10..30]);
        // A segment that went (collect forgets the shared descriptor): an
        // error, not a short read.
        drop(r);
        LAST_READ.forget(m.parts[1].segment.as_path());
        fs::remove_file(m.parts[1].segment.as_path()).expect("rm");
        assert!(Reader::new(&m).read_into(0, 1000, &mut out).is_err());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn readers_share_the_segment_read_last_until_it_is_forgotten() {
        let dir = tmpdir("lastread");
        let m = stored_in_parts(&dir, b"0123456789", 4);
        let cache = LastRead(Mutex::new(None));
        let seg = &m.parts[0].segment;
        let first = cache.file(seg).expect("open");
        // Moved away, the segment is still read through the shared file.
        let moved = dir.join("moved");
        fs::rename(seg.as_path(), &moved).expect("mv");
        let again = cache.file(seg).expect("shared");
        assert!(Arc::ptr_eq(&first, &again));
        // The same path in another Arc is another segment: opened anew.
        let other = Arc::new(seg.as_path().to_path_buf());
        assert!(cache.file(&other).is_err());
        fs::rename(&moved, seg.as_path()).expect("mv back");
        let _ = cache.file(seg).expect("open");
        cache.forget(seg.as_path());
        fs::rename(seg.as_path(), &moved).expect("mv");
        assert!(cache.file(seg).is_err(), "forgotten: opened anew");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn room_for_asks_again_unless_a_fresh_reading_shows_far_more() {
        let dir = tmpdir("room");
        let (spool, _) = Spool::open(&dir).expect("open");
        let free = spool.free_space().expect("statvfs");
        assert_eq!(spool.room_for(1), Ok(()));
        // Just after a reading: a need within the margin of it asks again.
        let big = free.saturating_add(1);
        assert!(matches!(spool.room_for(big), Err(f) if f < big));
        assert_eq!(spool.room_for(0), Ok(()));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn segments_whose_messages_are_done_are_collected() {
        let dir = tmpdir("collect");
        let (spool, _) = Spool::open(&dir).expect("open");
        let (a, b) = (spool.new_id(), spool.new_id());
        smol::block_on(spool.commit(a, &env("a@x.test", 1), b"a".to_vec())).expect("commit");
        smol::block_on(spool.commit(b, &env("b@x.test", 1), b"b".to_vec())).expect("commit");
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
}
