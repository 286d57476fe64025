//! The spool's writer thread: it owns the open segment, appends the
//! frames sessions hand it, and makes a batch durable with one
//! `fdatasync` for every commit in it (group commit).
//!
//! The writer keeps [`PREALLOC_STEP`] octets of zeros written ahead of its
//! position (as databases pre-fill their write-ahead log), so that a group
//! commit overwrites blocks that exist: `fdatasync` then writes the data
//! alone, not also the inode for the grown size (on ext4 that halves the
//! sync, measured in bench/README.md). A segment that is closed is trimmed
//! to its last frame.

use super::records::FRAME_HEAD;
use super::{Part, SpoolError, SEGMENT_MAGIC, SEGMENT_MAX};
use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Octets gathered into one write by the writer.
const BATCH_MAX: usize = 8 * 1024 * 1024;
/// Buffers one `pwritev` takes at most (Linux's `IOV_MAX`); a batch of
/// more jobs is written in several calls.
const IOV_MAX: usize = 1024;
/// Zeros kept written ahead of the writer's position. Each step costs one
/// sync of the grown inode (instead of one per commit); 1 MiB is some 250
/// small messages, and small enough that writing it is brief even on an SD
/// card (tens of milliseconds) and that a segment wastes little when closed.
pub(super) const PREALLOC_STEP: u64 = 1024 * 1024;

pub(super) fn io_err(e: &io::Error) -> SpoolError {
    if e.raw_os_error() == Some(28) || e.kind() == io::ErrorKind::StorageFull {
        SpoolError::NoSpace
    } else {
        SpoolError::Io(e.to_string())
    }
}

/// One hand-off to the writer: framed records and what to answer.
pub(super) struct Job {
    /// The framed records (the last one's data may be in `tail`).
    pub(super) frames: Vec<u8>,
    /// Octets written right after `frames`, the end of its last frame: a
    /// committed message's octets, handed over rather than copied.
    pub(super) tail: Vec<u8>,
    /// The message they belong to.
    pub(super) id: u64,
    /// Where the message octets start in `frames` and how many (a
    /// Chunk's or Message's data; zero for Status records).
    pub(super) data: (usize, usize),
    /// A Message record (it closes the id's parts).
    pub(super) closes: bool,
    /// Answer only once the batch is on stable storage (commits). Status
    /// records need not wait: they ride on the next sync (see
    /// [`super::Spool::sync`]).
    pub(super) sync: bool,
    /// Where the answer goes (none for chunks).
    pub(super) done: Option<smol::channel::Sender<Result<Vec<Part>, SpoolError>>>,
}

impl Job {
    /// Octets the job writes.
    pub(super) fn len(&self) -> usize {
        self.frames.len() + self.tail.len()
    }
}

/// What the spool knows of its segments.
#[derive(Default)]
pub(super) struct Segments {
    /// Per segment, the message ids it holds records of.
    pub(super) ids: HashMap<PathBuf, HashSet<u64>>,
    /// The segment being written (never collected).
    pub(super) current: PathBuf,
}

/// The writer thread's state.
pub(super) struct Writer {
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
    /// A writer for `dir` whose next segment follows `last_segment`.
    pub(super) fn new(
        dir: PathBuf,
        segments: Arc<Mutex<Segments>>,
        durable: Arc<Mutex<Durable>>,
        last_segment: u64,
    ) -> Writer {
        Writer {
            segments,
            durable,
            dirty: false,
            dir,
            file: None,
            path: Arc::new(PathBuf::new()),
            open_parts: HashMap::new(),
            seg: last_segment,
            pos: 0,
            filled: 0,
            prefill_failed: None,
            failed: HashSet::new(),
        }
    }

    /// Starts the next segment and makes its directory entry durable.
    pub(super) fn rotate(&mut self) -> io::Result<()> {
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

    /// Writes batches of jobs until the channel closes, then makes what
    /// was written durable and trims the unused preallocation.
    pub(super) fn run(mut self, rx: smol::channel::Receiver<Job>) {
        let mut jobs: Vec<Job> = Vec::new();
        while let Ok(first) = rx.recv_blocking() {
            let len = gather(&rx, first, &mut jobs);
            let result = self.write_batch(&jobs, len, jobs.iter().any(|j| j.sync));
            // Where the batch landed, to know each message's octets.
            // (Unused when the write failed: then `pos` did not move.)
            let mut at = self.pos.saturating_sub(len as u64);
            for j in jobs.drain(..) {
                let frame_at = at;
                at += j.len() as u64;
                let r = self.outcome(&j, frame_at, &result);
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

    /// The answer for job `j` whose frames landed at `frame_at`, after the
    /// batch's `result`: the parts of a closed message, or nothing.
    fn outcome(
        &mut self,
        j: &Job,
        frame_at: u64,
        result: &Result<(), SpoolError>,
    ) -> Result<Vec<Part>, SpoolError> {
        match result {
            Err(e) => {
                self.failed.insert(j.id);
                self.open_parts.remove(&j.id);
                return Err(e.clone());
            }
            Ok(()) if self.failed.contains(&j.id) => {
                self.open_parts.remove(&j.id);
                return Err(SpoolError::Io(
                    "an earlier part of this message was not written".into(),
                ));
            }
            Ok(()) if j.frames.is_empty() => return Ok(Vec::new()), // a sync alone
            Ok(()) => {}
        }
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

    /// Writes the frames of `jobs` (`len` octets in all) at the end of the
    /// segment (a new one when they would not fit), then syncs if `sync`.
    fn write_batch(&mut self, jobs: &[Job], len: usize, sync: bool) -> Result<(), SpoolError> {
        if self.pos + len as u64 > SEGMENT_MAX && self.pos > SEGMENT_MAGIC.len() as u64 {
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
        let sync = sync && (self.dirty || len > 0);
        let end = self.pos + len as u64;
        let mut filled = self.filled;
        let grow = end > filled || filled - end < FRAME_HEAD as u64;
        let failed = &mut self.prefill_failed;
        let res = write_jobs_at(f, jobs, self.pos).and_then(|()| {
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
                self.dirty = !sync && (self.dirty || len > 0);
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

/// Starts a batch with `first` and adds the jobs already waiting, up to
/// [`BATCH_MAX`] octets; returns the batch's octets.
fn gather(rx: &smol::channel::Receiver<Job>, first: Job, jobs: &mut Vec<Job>) -> usize {
    jobs.clear();
    let mut len = first.len();
    jobs.push(first);
    while len < BATCH_MAX {
        match rx.try_recv() {
            Ok(j) => {
                len += j.len();
                jobs.push(j);
            }
            Err(_) => break,
        }
    }
    len
}

/// Writes the frames of `jobs` one after another at `at`, straight from
/// the jobs' buffers (`pwritev`, [`IOV_MAX`] at a time). Gathering them
/// into one buffer first cost a copy of every message and kept a buffer
/// the size of the largest batch (megabytes with 50 sessions of 64 KiB
/// messages) for the daemon's life.
fn write_jobs_at(f: &File, jobs: &[Job], mut at: u64) -> io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = jobs
        .iter()
        .flat_map(|j| [&j.frames, &j.tail])
        .filter(|b| !b.is_empty())
        .map(|b| IoSlice::new(b))
        .collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        let n = rest.len().min(IOV_MAX);
        let written = match rustix::io::pwritev(f, &rest[..n], at) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(w) => w,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        at += written as u64;
        IoSlice::advance_slices(&mut rest, written);
    }
    Ok(())
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
    use crate::shell::spool::testutil::*;
    use crate::shell::spool::{read_reply, scan, NextHop, RcptState, Route, Spool};
    use std::fs;

    /// A job of `frames` and `tail` (no answer wanted).
    fn job(frames: Vec<u8>, tail: Vec<u8>) -> Job {
        Job {
            frames,
            tail,
            id: 1,
            data: (0, 0),
            closes: false,
            sync: false,
            done: None,
        }
    }

    #[test]
    fn a_batch_of_more_jobs_than_one_pwritev_takes_lands_whole_and_in_order() {
        let dir = tmpdir("pwritev");
        fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join("f");
        let f = File::create(&path).expect("create");
        // 2,600 jobs (over IOV_MAX buffers thrice), some empty, of varied
        // sizes, some with a tail.
        let jobs: Vec<Job> = (0..2600u32)
            .map(|i| {
                let n = (i as usize * 37) % 700;
                job(
                    vec![(i % 251) as u8; n],
                    vec![(i % 13) as u8; n / (1 + i as usize % 3)],
                )
            })
            .collect();
        write_jobs_at(&f, &jobs, 5).expect("write");
        let want: Vec<u8> = [0u8; 5]
            .iter()
            .copied()
            .chain(
                jobs.iter()
                    .flat_map(|j| j.frames.iter().chain(&j.tail).copied()),
            )
            .collect();
        assert_eq!(fs::read(&path).expect("read"), want);
        let _ = fs::remove_dir_all(&dir);
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
                smol::block_on(spool.commit(id, &env("a@x.test", body.len() as u64), body.clone()))
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
                        .commit(id, &env("a@x.test", 2000), body.clone())
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
            next_hop: NextHop::None,
            refused: None,
        });
        smol::block_on(spool.commit(id, &e, b"ok".to_vec())).expect("commit");
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
}
