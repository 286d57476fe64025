//! Reading the spool back: every segment's frames whose CRC holds, the
//! messages they complete and the latest state of each recipient.
//!
//! A bad frame with nothing valid after it is a torn tail (a crash
//! mid-write; nothing in it was acknowledged) and is cut. A bad frame with
//! valid frames after it is damage, not a crash: the damaged octets are
//! skipped, the records after them are read, the file is never cut, and a
//! copy goes to `corrupt/` for the operator. A segment of an unknown
//! format is moved to `corrupt/` whole, never truncated. Zeros where a
//! frame would start are the writer's unused preallocation: trimmed
//! silently.

use super::records::{initial_states, read_frame, Head, RcptState, FRAME_HEAD, MAX_FRAME};
use super::{Part, Stored, CORRUPT_DIR, SEGMENT_MAGIC};
use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

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

/// Makes the spool in `dir` fit to write after `scan`: cuts torn tails and
/// unused preallocation, moves foreign segments to `corrupt/` and copies
/// damaged ones there.
pub(crate) fn repair(dir: &Path, scan: &Scan) -> io::Result<()> {
    for (path, good) in scan.torn.iter().chain(&scan.unused) {
        if *good == 0 {
            // Torn inside its magic: the crash came while the segment was
            // made, and it holds nothing. Cut to nothing it would be found
            // torn again at every start, and never collected: removed.
            fs::remove_file(path)?;
            continue;
        }
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shell::spool::records::{frame, read_reply};
    use crate::shell::spool::testutil::*;
    use crate::shell::spool::{Spool, CHUNK};

    #[test]
    fn a_segment_torn_inside_its_magic_is_removed_once() {
        // Found by the spool fuzz target: cut to 0 octets, the segment
        // was torn again at every start and never collected.
        let dir = tmpdir("torn-magic");
        fs::create_dir_all(&dir).expect("mkdir");
        let seg = dir.join("seg-0000000000000001.log");
        fs::write(&seg, &SEGMENT_MAGIC[..4]).expect("write");
        let s = scan(&dir).expect("scan");
        assert_eq!(s.torn, vec![(seg.clone(), 0)]);
        repair(&dir, &s).expect("repair");
        assert!(!seg.exists());
        let again = scan(&dir).expect("scan again");
        assert!(again.torn.is_empty() && again.messages.is_empty());
        let (spool, s) = Spool::open(&dir).expect("open");
        assert!(s.torn.is_empty());
        spool.close();
        let _ = fs::remove_dir_all(&dir);
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
                    body[2 * CHUNK..].to_vec(),
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
            let p = spool
                .commit(id, &e, body[CHUNK..].to_vec())
                .await
                .expect("commit");
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

    #[test]
    fn a_torn_tail_is_cut_and_earlier_messages_survive() {
        let dir = tmpdir("torn");
        let (spool, _) = Spool::open(&dir).expect("open");
        let id = spool.new_id();
        smol::block_on(spool.commit(id, &env("a@x.test", 5), b"hello".to_vec())).expect("commit");
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
    fn damage_is_skipped_and_what_follows_is_read_never_cut() {
        let dir = tmpdir("damage");
        let (spool, _) = Spool::open(&dir).expect("open");
        for i in 0..3u64 {
            let id = spool.new_id();
            smol::block_on(spool.commit(id, &env("a@x.test", 1), vec![b'0' + i as u8]))
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
        smol::block_on(spool.commit(id, &env("a@x.test", 2), b"ok".to_vec())).expect("commit");
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
    fn chunks_without_their_message_record_are_not_a_message() {
        let dir = tmpdir("orphan");
        let (spool, _) = Spool::open(&dir).expect("open");
        let id = spool.new_id();
        smol::block_on(spool.append_chunk(id, b"partial")).expect("chunk");
        let id2 = spool.new_id();
        smol::block_on(spool.commit(id2, &env("a@x.test", 2), b"ok".to_vec())).expect("commit");
        spool.close();
        let s = scan(&dir).expect("scan");
        assert_eq!(s.messages.len(), 1);
        assert_eq!(s.messages[0].read().expect("read"), b"ok");
        let _ = fs::remove_dir_all(&dir);
    }
}
