//! Serial-line upload of a rule file or a directory export: `sluice rules
//! send` / `sluice directory send --serial DEV FILE` on the operator's
//! side, [`serve_serial`] in the daemon.
//!
//! # Protocol
//!
//! The line runs 8N1, raw, at the configured baud rate (115200 by default).
//! Everything on it is a *frame*: a postcard message wrapped in an envelope
//! `Wire { payload: bytes, crc: u32 }` — `payload` is the postcard encoding
//! of the message, `crc` its CRC-32 (ISO-HDLC, the Ethernet/zlib one) — and
//! the envelope is postcard-serialised and COBS-encoded, so a frame contains
//! no 0x00 byte. Frames are delimited by 0x00: a sender writes `0x00 frame
//! 0x00`, a receiver ignores empty frames, so line noise before a frame is
//! cut off by the leading delimiter. A frame that does not COBS-decode, does
//! not parse, fails its CRC or is over 1 KiB is *bad*: during a session the
//! daemon answers it with `Nak BadFrame`; on an idle line it is noise, ignored.
//!
//! Operator to daemon (seq: `Begin` is 0, `Data` 1..=chunks, `End` chunks+1):
//!
//! * `Begin { session, len, chunks, file_hash }` — a new upload; `session` is
//!   a random non-zero id, `len` the file's length in octets, `chunks` =
//!   ceil(len / 256), `file_hash` the SHA-256 of the whole file (32 octets);
//! * `Data { session, seq, bytes }` — 1 to 256 octets of the file, in order,
//!   so a frame stays under ~280 octets and fits small UART buffers;
//! * `End { session, seq, file_hash }` — the whole file's SHA-256 again;
//! * `BeginFile { session, len, chunks, file_hash, kind }` — `Begin` for a
//!   file of `kind`: `Rules` or `Directory` (an LDIF/CSV export, applied as
//!   `directory apply` does, up to 64 MiB). It was added after the first
//!   version, as the enum's last variant, so `Begin` keeps its encoding and
//!   `rules send` still opens with it: a rule upload works with a daemon of
//!   either version (a daemon of the first version takes a `BeginFile` for
//!   a bad frame and the sender gives up after its retries).
//!
//! Daemon to operator:
//!
//! * `Ack { session, seq }` — frame `seq` received (a duplicate is re-acked,
//!   never appended twice); the `Ack` of `End` means "verified, applying";
//! * `Nak { session, seq, reason }` — `BadFrame` (resend at once), `OutOfOrder`,
//!   `NoSession` (the daemon has no such session: it timed out or restarted),
//!   `Invalid` (inconsistent lengths), `TooLarge` (over 1 MiB for a rule
//!   file, 64 MiB for a directory), `Mismatch` (the assembled file's length
//!   or SHA-256 is wrong: nothing was applied);
//! * `Result { session, ok, text }` — the outcome of applying the file exactly
//!   as `rules apply` (or `directory apply`) does: `ok` with the report, or the errors (`LINE:COL:
//!   error: ...`). A repeated `End` of an applied session gets the same
//!   `Result` again; the file is never applied twice.
//!
//! Stop-and-wait: the operator sends one frame and waits for its answer
//! (about 1 s plus the frame's time on the line); on silence or a `Nak
//! BadFrame` it resends, up to 10 times, then gives up (exit status 2). After
//! the `Ack` of `End` it waits up to 2 minutes for the `Result`. The daemon
//! forgets a session that goes 10 s without a frame, or that a `Begin` with a
//! new session id replaces: a truncated upload changes nothing, and the
//! daemon is ready for the next one. A daemon reply that is bad is ignored
//! (the operator's timeout resends, and the daemon re-acks the duplicate).
//!
//! Both sides run a reader thread that turns the device's bytes into a
//! channel, so the protocol code waits with plain timeouts and runs the same
//! over a serial port, a pseudo-terminal or the in-memory pipes of the tests.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Applies an uploaded file: `(kind, text, via)` → the report, or the errors.
pub type ApplyFn = Arc<dyn Fn(FileKind, &str, &str) -> Result<String, String> + Send + Sync>;

/// What an upload carries. `Begin` is a rule file (the protocol's first
/// version); `BeginFile` names the kind.
#[derive(Serialize, Deserialize, Debug, PartialEq, Eq, Clone, Copy)]
pub enum FileKind {
    /// A rule file, applied as `rules apply` does.
    Rules,
    /// A directory export (LDIF or CSV), applied as `directory apply` does.
    Directory,
}

impl FileKind {
    /// Largest file of this kind the daemon accepts over the line.
    pub fn max_len(self) -> u32 {
        match self {
            FileKind::Rules => MAX_FILE,
            FileKind::Directory => crate::shell::directory::install::MAX_EXPORT as u32,
        }
    }

    /// What stays as it was when an upload of this kind is refused.
    fn unchanged(self) -> &'static str {
        match self {
            FileKind::Rules => "the running policy is as it was",
            FileKind::Directory => "the installed directory is as it was",
        }
    }
}

/// Most file octets in one `Data` frame.
pub const CHUNK: usize = 256;
/// Largest rule file the daemon accepts over the line.
pub const MAX_FILE: u32 = 1 << 20;
/// Longest frame the daemon buffers (a `Data` frame is under 300 octets).
const MAX_UP_FRAME: usize = 1024;
/// Longest frame the operator buffers (a `Result` carries the report).
const MAX_DOWN_FRAME: usize = 80 * 1024;
/// Longest `Result` text; longer reports are cut.
const MAX_RESULT_TEXT: usize = 64 * 1024;

const FRAME_CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);
/// The whole file's SHA-256, carried by `Begin` and `End`.
type FileHash = [u8; 32];

fn sha256(data: &[u8]) -> FileHash {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, data).as_ref());
    out
}

/// The envelope of every frame.
#[derive(Serialize, Deserialize)]
struct Wire<'a> {
    #[serde(borrow)]
    payload: &'a [u8],
    crc: u32,
}

/// Operator → daemon.
#[derive(Serialize, Deserialize, Debug, PartialEq, Eq)]
enum Up<'a> {
    Begin {
        session: u32,
        len: u32,
        chunks: u32,
        file_hash: FileHash,
    },
    Data {
        session: u32,
        seq: u32,
        #[serde(borrow)]
        bytes: &'a [u8],
    },
    End {
        session: u32,
        seq: u32,
        file_hash: FileHash,
    },
    /// `Begin` for a file of the given kind (added after the first
    /// version, so it comes last and `Begin` keeps its encoding).
    BeginFile {
        session: u32,
        len: u32,
        chunks: u32,
        file_hash: FileHash,
        kind: FileKind,
    },
}

/// Why a frame was refused.
#[derive(Serialize, Deserialize, Debug, PartialEq, Eq, Clone, Copy)]
enum NakReason {
    BadFrame,
    OutOfOrder,
    NoSession,
    Invalid,
    TooLarge,
    Mismatch,
}

impl fmt::Display for NakReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NakReason::BadFrame => "damaged frame",
            NakReason::OutOfOrder => "frame out of order",
            NakReason::NoSession => {
                "no such upload session (it timed out, or the daemon restarted)"
            }
            NakReason::Invalid => "inconsistent upload (lengths do not add up)",
            NakReason::TooLarge => "file too large",
            NakReason::Mismatch => "the assembled file's length or checksum is wrong",
        })
    }
}

/// Daemon → operator.
#[derive(Serialize, Deserialize, Debug, PartialEq, Eq)]
enum Down<'a> {
    Ack {
        session: u32,
        seq: u32,
    },
    Nak {
        session: u32,
        seq: u32,
        reason: NakReason,
    },
    Result {
        session: u32,
        ok: bool,
        #[serde(borrow)]
        text: &'a str,
    },
}

// ---------------------------------------------------------------------------
// Framing

/// `0x00 COBS(Wire { postcard(msg), crc32 }) 0x00`.
fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, postcard::Error> {
    let payload = postcard::to_stdvec(msg)?;
    let wire = Wire {
        payload: &payload,
        crc: FRAME_CRC.checksum(&payload),
    };
    let body = postcard::to_stdvec_cobs(&wire)?;
    let mut out = Vec::with_capacity(body.len() + 1);
    out.push(0);
    out.extend_from_slice(&body);
    if out.last() != Some(&0) {
        out.push(0);
    }
    Ok(out)
}

/// `payload` framed as the line carries it (COBS of the payload and its
/// CRC), without the delimiters: lets the fuzz target (`shell::fuzz`)
/// reach the message decoder past the checksum.
pub(crate) fn wrap(payload: &[u8]) -> Vec<u8> {
    let wire = Wire {
        payload,
        crc: FRAME_CRC.checksum(payload),
    };
    let mut body = postcard::to_stdvec_cobs(&wire).unwrap_or_default();
    if body.last() == Some(&0) {
        body.pop();
    }
    body
}

/// Whether a frame the board sent (without delimiters) decodes as one of
/// its answers: the fuzz target's check on what the server says.
pub(crate) fn decodes_as_down(frame: &mut [u8]) -> bool {
    decode::<Down<'_>>(frame).is_some()
}

/// An upload server that applies nothing (every file "applied" with an
/// empty message), at 115200 baud: the fuzz target's board.
pub(crate) fn fuzz_server() -> UploadServer {
    let apply: ApplyFn = Arc::new(|_, _, _| Ok(String::new()));
    UploadServer::new(apply, "fuzz".into(), Timing::for_baud(115_200))
}

/// One frame's bytes (between delimiters, without them) → its message.
/// `None`: the frame is bad. Decodes in place.
fn decode<'a, T: Deserialize<'a>>(frame: &'a mut [u8]) -> Option<T> {
    let wire: Wire<'a> = postcard::from_bytes_cobs(frame).ok()?;
    if FRAME_CRC.checksum(wire.payload) != wire.crc {
        return None;
    }
    match postcard::take_from_bytes::<T>(wire.payload) {
        Ok((msg, [])) => Some(msg),
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// Link: a byte stream cut into frames, read with timeouts

enum Chunk {
    Bytes(Vec<u8>),
    Closed(io::Error),
}

enum Next {
    Frame(Vec<u8>),
    /// A frame longer than the buffer limit was dropped (counts as bad).
    Oversize,
    Timeout,
    Closed(io::Error),
}

struct Link {
    rx: mpsc::Receiver<Chunk>,
    w: Box<dyn Write + Send>,
    buf: Vec<u8>,
    frames: VecDeque<Next>,
    skipping: bool,
    max: usize,
    closed: bool,
    stop: Arc<AtomicBool>,
}

impl Link {
    /// Starts a reader thread on `r`; frames longer than `max` are dropped.
    fn new<R, W>(r: R, w: W, max: usize) -> io::Result<Link>
    where
        R: Read + Send + 'static,
        W: Write + Send + 'static,
    {
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        std::thread::Builder::new()
            .name("serial-read".into())
            .spawn(move || read_loop(r, tx, &stop2))?;
        Ok(Link {
            rx,
            w: Box::new(w),
            buf: Vec::new(),
            frames: VecDeque::new(),
            skipping: false,
            max,
            closed: false,
            stop,
        })
    }

    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        self.w.write_all(frame)?;
        self.w.flush()
    }

    fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if b == 0 {
                if self.skipping {
                    self.frames.push_back(Next::Oversize);
                } else if !self.buf.is_empty() {
                    self.frames
                        .push_back(Next::Frame(std::mem::take(&mut self.buf)));
                }
                self.skipping = false;
                self.buf.clear();
            } else if !self.skipping {
                if self.buf.len() >= self.max {
                    self.skipping = true;
                    self.buf.clear();
                } else {
                    self.buf.push(b);
                }
            }
        }
    }

    /// The next complete frame, waiting until `deadline` at most.
    fn next(&mut self, deadline: Instant) -> Next {
        loop {
            if let Some(n) = self.frames.pop_front() {
                return n;
            }
            if self.closed {
                return Next::Closed(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the line is closed",
                ));
            }
            let wait = deadline.saturating_duration_since(Instant::now());
            if wait.is_zero() {
                return Next::Timeout;
            }
            match self.rx.recv_timeout(wait) {
                Ok(Chunk::Bytes(b)) => self.feed(&b),
                Ok(Chunk::Closed(e)) => {
                    self.closed = true;
                    return Next::Closed(e);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => return Next::Timeout,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    self.closed = true;
                    return Next::Closed(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the line's reader ended",
                    ));
                }
            }
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn read_loop<R: Read>(mut r: R, tx: mpsc::Sender<Chunk>, stop: &AtomicBool) {
    let mut buf = [0u8; 512];
    while !stop.load(Ordering::Relaxed) {
        match r.read(&mut buf) {
            Ok(0) => {
                let _ = tx.send(Chunk::Closed(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "end of file on the line",
                )));
                return;
            }
            Ok(n) => {
                if tx.send(Chunk::Bytes(buf[..n].to_vec())).is_err() {
                    return;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::TimedOut
                        | io::ErrorKind::WouldBlock
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => {
                let _ = tx.send(Chunk::Closed(e));
                return;
            }
        }
    }
}

/// Opens `dev` at `baud` 8N1, raw. A pseudo-terminal may refuse the serial
/// settings: then the character device is opened as it is (socat's `raw`
/// already made it raw).
fn open_link(dev: &Path, baud: u32, max: usize) -> io::Result<Link> {
    let name = dev.to_string_lossy();
    let opened = serialport::new(name, baud)
        .data_bits(serialport::DataBits::Eight)
        .parity(serialport::Parity::None)
        .stop_bits(serialport::StopBits::One)
        .flow_control(serialport::FlowControl::None)
        .timeout(Duration::from_millis(250))
        .open_native();
    match opened {
        Ok(port) => {
            use serialport::SerialPort as _;
            let _ = port.clear(serialport::ClearBuffer::Input);
            let writer = port.try_clone_native().map_err(io::Error::from)?;
            Link::new(port, writer, max)
        }
        Err(e) => {
            use std::os::unix::fs::FileTypeExt;
            let err = io::Error::from(e);
            let is_char = std::fs::metadata(dev)
                .map(|m| m.file_type().is_char_device())
                .unwrap_or(false);
            if !is_char {
                return Err(err);
            }
            use rustix::fs::{Mode, OFlags};
            // O_NOCTTY: the daemon must not acquire the line as its
            // controlling terminal.
            let f = match rustix::fs::open(
                dev,
                OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
                Mode::empty(),
            ) {
                Ok(fd) => std::fs::File::from(fd),
                Err(_) => return Err(err),
            };
            if !std::io::IsTerminal::is_terminal(&f) {
                return Err(err);
            }
            let w = f.try_clone()?;
            Link::new(f, w, max)
        }
    }
}

// ---------------------------------------------------------------------------
// Timing

#[derive(Clone, Copy, Debug)]
struct Timing {
    /// The operator's wait for an answer to one frame.
    ack: Duration,
    /// Resends of one frame before giving up.
    retries: u32,
    /// The operator's wait for the `Result` once `End` is acked.
    result: Duration,
    /// The daemon forgets a session this long without a frame.
    stall: Duration,
}

impl Timing {
    fn for_baud(baud: u32) -> Timing {
        // A maximal frame there and a short answer back, twice over.
        let bits = (MAX_UP_FRAME as u64 + 64) * 10 * 2;
        let line_ms = bits * 1000 / u64::from(baud.max(300));
        Timing {
            ack: Duration::from_millis(1000 + line_ms),
            retries: 10,
            result: Duration::from_secs(120),
            stall: Duration::from_secs(10),
        }
    }
}

// ---------------------------------------------------------------------------
// Daemon side

/// Serves uploads on `dev` forever; returns only if the first open fails.
pub fn serve_serial(dev: &Path, baud: u32, apply: ApplyFn) -> io::Result<()> {
    let via = format!("serial {}", dev.display());
    let mut rx = UploadServer::new(apply, via, Timing::for_baud(baud));
    let mut first = true;
    // Failures in a row (an open that fails, or a line that fails within a
    // minute): each waits twice as long, up to 30 s; only the first is logged.
    let mut streak = 0u32;
    // A failure was logged: log the next successful open too.
    let mut noted = false;
    loop {
        if streak > 0 {
            std::thread::sleep(
                Duration::from_secs(1u64 << streak.min(5)).min(Duration::from_secs(30)),
            );
        }
        let mut link = match open_link(dev, baud, MAX_UP_FRAME) {
            Ok(l) => l,
            Err(e) if first => return Err(e),
            Err(e) => {
                if streak == 0 {
                    crate::shell::ops::log::warn(format_args!(
                        "serial upload: cannot reopen {}: {e}; retrying",
                        dev.display()
                    ));
                    noted = true;
                }
                streak += 1;
                continue;
            }
        };
        if first || noted {
            noted = false;
            crate::shell::ops::log::info(format_args!(
                "serial upload: listening on {} at {baud} 8N1",
                dev.display()
            ));
        }
        first = false;
        let opened = Instant::now();
        let e = rx.run(&mut link);
        drop(link);
        if opened.elapsed() > Duration::from_secs(60) {
            streak = 0;
        }
        if streak == 0 {
            crate::shell::ops::log::warn(format_args!(
                "serial upload: {} failed ({e}); reopening",
                dev.display()
            ));
            noted = true;
        }
        streak += 1;
    }
}

struct Session {
    id: u32,
    kind: FileKind,
    len: u32,
    chunks: u32,
    file_hash: FileHash,
    /// The next `Data` seq expected (1-based).
    next: u32,
    data: Vec<u8>,
    last: Instant,
}

struct Done {
    id: u32,
    end_seq: u32,
    reply: Vec<u8>,
}

/// The daemon's protocol state: at most one session in progress, and the
/// last finished one (to answer a repeated `End`).
pub(crate) struct UploadServer {
    apply: ApplyFn,
    via: String,
    timing: Timing,
    cur: Option<Session>,
    done: Option<Done>,
}

impl UploadServer {
    fn new(apply: ApplyFn, via: String, timing: Timing) -> UploadServer {
        UploadServer {
            apply,
            via,
            timing,
            cur: None,
            done: None,
        }
    }

    /// Serves frames until the link fails; returns that error.
    fn run(&mut self, link: &mut Link) -> io::Error {
        loop {
            let deadline = match &self.cur {
                Some(s) => s.last + self.timing.stall,
                None => Instant::now() + Duration::from_secs(3600),
            };
            match link.next(deadline) {
                Next::Frame(mut f) => {
                    for reply in self.on_frame(&mut f) {
                        // A lost answer is recovered by the operator's resend.
                        let _ = link.send(&reply);
                    }
                }
                Next::Oversize => {
                    for reply in self.bad_frame() {
                        let _ = link.send(&reply);
                    }
                }
                Next::Timeout => self.expire(Instant::now()),
                Next::Closed(e) => {
                    if let Some(s) = self.cur.take() {
                        crate::shell::ops::log::warn(format_args!(
                            "serial upload: session {:08x} dropped with the line; nothing applied",
                            s.id
                        ));
                    }
                    return e;
                }
            }
        }
    }

    fn expire(&mut self, now: Instant) {
        if let Some(s) = &self.cur {
            if now >= s.last + self.timing.stall {
                crate::shell::ops::log::warn(format_args!(
                    "serial upload: session {:08x} stalled after {} of {} octets; discarded, nothing applied",
                    s.id,
                    s.data.len(),
                    s.len
                ));
                self.cur = None;
            }
        }
    }

    /// A bad frame during a session gets a `Nak` (the operator resends at
    /// once); on an idle line it is noise and gets nothing (a damaged `Begin`
    /// is resent after the operator's timeout).
    fn bad_frame(&self) -> Vec<Vec<u8>> {
        match &self.cur {
            Some(s) => reply(&Down::Nak {
                session: s.id,
                seq: s.next,
                reason: NakReason::BadFrame,
            }),
            None => Vec::new(),
        }
    }

    /// One frame in → the frames to answer with.
    pub(crate) fn on_frame(&mut self, frame: &mut [u8]) -> Vec<Vec<u8>> {
        let Some(msg) = decode::<Up<'_>>(frame) else {
            return self.bad_frame();
        };
        let now = Instant::now();
        match msg {
            Up::Begin {
                session,
                len,
                chunks,
                file_hash,
            } => self.begin(session, (len, chunks, file_hash), FileKind::Rules, now),
            Up::BeginFile {
                session,
                len,
                chunks,
                file_hash,
                kind,
            } => self.begin(session, (len, chunks, file_hash), kind, now),
            Up::Data {
                session,
                seq,
                bytes,
            } => self.data(session, seq, bytes, now),
            Up::End {
                session,
                seq,
                file_hash,
            } => self.end(session, seq, file_hash),
        }
    }

    /// A `Begin` or `BeginFile`: `(len, chunks, file_hash)` of a file of
    /// `kind`.
    fn begin(
        &mut self,
        id: u32,
        (len, chunks, file_hash): (u32, u32, FileHash),
        kind: FileKind,
        now: Instant,
    ) -> Vec<Vec<u8>> {
        let ack = Down::Ack {
            session: id,
            seq: 0,
        };
        if let Some(s) = &mut self.cur {
            if s.id == id
                && s.kind == kind
                && s.len == len
                && s.chunks == chunks
                && s.file_hash == file_hash
            {
                s.last = now;
                return reply(&ack);
            }
        }
        if self.done.as_ref().is_some_and(|d| d.id == id) {
            return reply(&ack);
        }
        let nak = |reason| {
            reply(&Down::Nak {
                session: id,
                seq: 0,
                reason,
            })
        };
        if len > kind.max_len() {
            return nak(NakReason::TooLarge);
        }
        if id == 0 || u64::from(chunks) != u64::from(len).div_ceil(CHUNK as u64) {
            return nak(NakReason::Invalid);
        }
        if let Some(old) = self.cur.take() {
            crate::shell::ops::log::warn(format_args!(
                "serial upload: session {:08x} replaced by {id:08x} after {} of {} octets; nothing applied",
                old.id,
                old.data.len(),
                old.len
            ));
        }
        self.cur = Some(Session {
            id,
            kind,
            len,
            chunks,
            file_hash,
            next: 1,
            data: Vec::with_capacity(len.min(MAX_FILE) as usize),
            last: now,
        });
        reply(&ack)
    }

    fn data(&mut self, id: u32, seq: u32, bytes: &[u8], now: Instant) -> Vec<Vec<u8>> {
        let ack = Down::Ack { session: id, seq };
        let nak = |seq, reason| {
            reply(&Down::Nak {
                session: id,
                seq,
                reason,
            })
        };
        let Some(s) = self.cur.as_mut().filter(|s| s.id == id) else {
            if self.done.as_ref().is_some_and(|d| d.id == id) {
                return reply(&ack);
            }
            return nak(seq, NakReason::NoSession);
        };
        s.last = now;
        if seq < s.next {
            return reply(&ack); // a duplicate: its Ack was lost
        }
        if seq > s.next {
            return nak(s.next, NakReason::OutOfOrder);
        }
        if bytes.is_empty()
            || bytes.len() > CHUNK
            || seq > s.chunks
            || s.data.len() + bytes.len() > s.len as usize
        {
            self.cur = None;
            return nak(seq, NakReason::Invalid);
        }
        s.data.extend_from_slice(bytes);
        s.next += 1;
        reply(&ack)
    }

    fn end(&mut self, id: u32, seq: u32, file_hash: FileHash) -> Vec<Vec<u8>> {
        if let Some(d) = &self.done {
            if d.id == id && d.end_seq == seq {
                return vec![d.reply.clone()];
            }
        }
        let Some(s) = self.cur.take_if(|s| s.id == id) else {
            return reply(&Down::Nak {
                session: id,
                seq,
                reason: NakReason::NoSession,
            });
        };
        if seq < s.next {
            // End before the last Data was acked cannot happen with a
            // well-behaved sender; keep the session.
            let next = s.next;
            self.cur = Some(s);
            return reply(&Down::Nak {
                session: id,
                seq: next,
                reason: NakReason::OutOfOrder,
            });
        }
        if seq != s.chunks + 1
            || s.next != s.chunks + 1
            || s.data.len() != s.len as usize
            || file_hash != s.file_hash
            || sha256(&s.data) != file_hash
        {
            crate::shell::ops::log::warn(format_args!(
                "serial upload: session {id:08x}: assembled file does not match its length or SHA-256; nothing applied"
            ));
            return reply(&Down::Nak {
                session: id,
                seq,
                reason: NakReason::Mismatch,
            });
        }
        let mut out = reply(&Down::Ack { session: id, seq });
        let (ok, text) = match std::str::from_utf8(&s.data) {
            Err(e) => (false, format!("the file is not UTF-8 ({e})")),
            Ok(text) => match (self.apply)(s.kind, text, &self.via) {
                Ok(report) => (true, report),
                Err(errors) => (false, errors),
            },
        };
        crate::shell::ops::log::info(format_args!(
            "serial upload: session {id:08x}: {} octets {}",
            s.len,
            if ok { "applied" } else { "refused" }
        ));
        let text = cut(&text, MAX_RESULT_TEXT);
        let result = reply(&Down::Result {
            session: id,
            ok,
            text,
        });
        if let Some(r) = result.first() {
            self.done = Some(Done {
                id,
                end_seq: seq,
                reply: r.clone(),
            });
        }
        out.extend(result);
        out
    }
}

/// Encodes one reply; a reply that cannot be encoded (it cannot happen) is dropped.
fn reply(msg: &Down<'_>) -> Vec<Vec<u8>> {
    encode(msg).into_iter().collect()
}

/// `s` cut to at most `max` octets on a character boundary.
fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

// ---------------------------------------------------------------------------
// Operator side

/// What an upload came to.
#[derive(Debug, PartialEq, Eq)]
enum UploadResult {
    /// The daemon installed the file: its report.
    Applied(String),
    /// The daemon refused the file: its errors.
    Refused(String),
    /// The upload did not get through.
    Failed(String),
}

/// Sends FILE's text (a file of `kind`) on `dev`; prints the daemon's
/// answer. Exit status 0: applied; 1: refused (errors printed); 2: the
/// upload did not get through.
pub fn send_command(dev: &Path, baud: u32, file: &Path, kind: FileKind) -> i32 {
    let text = match std::fs::read(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("sluice: {}: {e}", file.display());
            return 2;
        }
    };
    if text.len() > kind.max_len() as usize {
        eprintln!(
            "sluice: {}: {} octets; the serial upload takes at most {}",
            file.display(),
            text.len(),
            kind.max_len()
        );
        return 1;
    }
    let mut link = match open_link(dev, baud, MAX_DOWN_FRAME) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("sluice: cannot open {}: {e}", dev.display());
            return 2;
        }
    };
    // As `rules apply` prints: the report's first line on stdout, what
    // follows (warnings) and the errors on stderr, each named `FILE:`.
    let name = file.display();
    match upload(
        &mut link,
        &text,
        new_session_id(),
        kind,
        Timing::for_baud(baud),
    ) {
        UploadResult::Applied(report) => {
            let mut lines = report.lines();
            outln!("{}", lines.next().unwrap_or("installed"));
            for w in lines {
                eprintln!("{name}:{w}");
            }
            0
        }
        UploadResult::Refused(errors) => {
            for e in errors.lines() {
                eprintln!("{name}:{e}");
            }
            eprintln!(
                "sluice: the daemon on {} refused the file; nothing changed, {}",
                dev.display(),
                kind.unchanged()
            );
            1
        }
        UploadResult::Failed(why) => {
            eprintln!("sluice: upload over {} failed: {why}", dev.display());
            2
        }
    }
}

/// A random non-zero session id (std's per-process random hash keys).
fn new_session_id() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(t.as_nanos());
    }
    let v = h.finish();
    let id = (v ^ (v >> 32)) as u32;
    if id == 0 {
        1
    } else {
        id
    }
}

/// The operator's half: Begin (a rule file; `BeginFile` for other kinds,
/// so a rule upload reaches a daemon of the first version), Data..., End,
/// then the Result.
fn upload(link: &mut Link, text: &[u8], session: u32, kind: FileKind, t: Timing) -> UploadResult {
    let len = text.len() as u32;
    let chunks = text.chunks(CHUNK).count() as u32;
    let file_hash = sha256(text);
    let begin = match kind {
        FileKind::Rules => Up::Begin {
            session,
            len,
            chunks,
            file_hash,
        },
        kind => Up::BeginFile {
            session,
            len,
            chunks,
            file_hash,
            kind,
        },
    };
    if let Err(o) = exchange(link, &begin, session, 0, t, true) {
        return o;
    }
    for (i, bytes) in text.chunks(CHUNK).enumerate() {
        let seq = i as u32 + 1;
        let data = Up::Data {
            session,
            seq,
            bytes,
        };
        if let Err(o) = exchange(link, &data, session, seq, t, true) {
            return o;
        }
    }
    let end_seq = chunks + 1;
    let end = Up::End {
        session,
        seq: end_seq,
        file_hash,
    };
    match exchange(link, &end, session, end_seq, t, true) {
        Err(o) => o,
        // Acked: the daemon is applying; wait for the Result, asking again
        // (a repeated End gets the same Result) if it is lost.
        Ok(()) => {
            let slow = Timing { ack: t.result, ..t };
            match exchange(link, &end, session, u32::MAX, slow, false) {
                Err(o) => o,
                Ok(()) => UploadResult::Failed("no result from the daemon".into()),
            }
        }
    }
}

/// Sends `msg` until `Ack { seq: want }` (Ok) or a `Result` or a fatal `Nak`
/// (Err with the outcome) arrives, resending on silence or `Nak BadFrame`.
/// With `send_first` false, the first round only waits.
fn exchange(
    link: &mut Link,
    msg: &Up<'_>,
    session: u32,
    want: u32,
    t: Timing,
    send_first: bool,
) -> Result<(), UploadResult> {
    let frame =
        encode(msg).map_err(|e| UploadResult::Failed(format!("cannot encode a frame: {e}")))?;
    let mut tries = 0;
    let mut send = send_first;
    'send: loop {
        if !send {
            send = true;
        } else if tries > t.retries {
            return Err(UploadResult::Failed(format!(
                "no answer from the daemon after {} tries (is `sluice run` listening on the other end, at the same baud rate?)",
                tries
            )));
        } else {
            tries += 1;
            link.send(&frame)
                .map_err(|e| UploadResult::Failed(format!("write: {e}")))?;
        }
        let deadline = Instant::now() + t.ack;
        loop {
            let mut f = match link.next(deadline) {
                Next::Frame(f) => f,
                Next::Oversize => continue,
                Next::Timeout => continue 'send,
                Next::Closed(e) => return Err(UploadResult::Failed(format!("read: {e}"))),
            };
            let Some(reply) = decode::<Down<'_>>(&mut f) else {
                continue; // a damaged answer: wait, and resend on the timeout
            };
            match reply {
                Down::Ack { session: s, seq } if s == session && seq == want => return Ok(()),
                Down::Result {
                    session: s,
                    ok,
                    text,
                } if s == session => {
                    return Err(if ok {
                        UploadResult::Applied(text.to_string())
                    } else {
                        UploadResult::Refused(text.to_string())
                    })
                }
                Down::Nak {
                    reason: NakReason::BadFrame,
                    ..
                } => continue 'send,
                Down::Nak {
                    session: s,
                    reason: NakReason::OutOfOrder,
                    ..
                } if s == session => continue 'send,
                Down::Nak {
                    session: s,
                    seq,
                    reason,
                } if s == session => {
                    return Err(UploadResult::Failed(format!(
                        "the daemon refused frame {seq}: {reason}; nothing was applied"
                    )))
                }
                _ => {} // stale: another session's or an earlier frame's answer
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Reader end of an in-memory pipe.
    struct PipeR {
        rx: mpsc::Receiver<Vec<u8>>,
        pending: Vec<u8>,
    }

    impl Read for PipeR {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.pending.is_empty() {
                match self.rx.recv_timeout(Duration::from_millis(100)) {
                    Ok(b) => self.pending = b,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        return Err(io::ErrorKind::TimedOut.into())
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(0),
                }
            }
            let n = buf.len().min(self.pending.len());
            buf[..n].copy_from_slice(&self.pending[..n]);
            self.pending.drain(..n);
            Ok(n)
        }
    }

    type Filter = Box<dyn FnMut(&[u8]) -> Vec<u8> + Send>;
    /// Every (text, via) the daemon applied.
    type Applied = Arc<Mutex<Vec<(String, String)>>>;

    /// Writer end: each write (one frame) goes through `filter` (the line's faults).
    struct PipeW {
        tx: mpsc::Sender<Vec<u8>>,
        filter: Filter,
    }

    impl Write for PipeW {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let out = (self.filter)(buf);
            if !out.is_empty() {
                let _ = self.tx.send(out);
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn pipe(filter: Filter) -> (PipeR, PipeW) {
        let (tx, rx) = mpsc::channel();
        (
            PipeR {
                rx,
                pending: Vec::new(),
            },
            PipeW { tx, filter },
        )
    }

    fn clean() -> Filter {
        Box::new(|b: &[u8]| b.to_vec())
    }

    fn fast() -> Timing {
        Timing {
            ack: Duration::from_millis(300),
            retries: 5,
            result: Duration::from_secs(5),
            stall: Duration::from_millis(500),
        }
    }

    /// Applies: records every text; refuses texts containing "bad".
    fn recorder() -> (ApplyFn, Applied) {
        let log = Arc::new(Mutex::new(Vec::new()));
        let log2 = log.clone();
        let apply: ApplyFn = Arc::new(move |kind: FileKind, text: &str, via: &str| {
            let text = &match kind {
                FileKind::Rules => text.to_string(),
                FileKind::Directory => format!("directory:{text}"),
            };
            log2.lock()
                .unwrap()
                .push((text.to_string(), via.to_string()));
            if text.contains("bad") {
                Err("3:7: error: unknown key `bad`\n5:1: error: second problem".to_string())
            } else {
                Ok(format!("installed policy version {:016X}", text.len()))
            }
        });
        (apply, log)
    }

    /// A daemon on a thread and an operator link, with `up` filtering the
    /// operator's frames. The daemon thread ends when the operator link drops.
    fn setup(up: Filter, apply: ApplyFn) -> (Link, std::thread::JoinHandle<()>) {
        let (up_r, up_w) = pipe(up);
        let (down_r, down_w) = pipe(clean());
        let daemon = std::thread::spawn(move || {
            let mut link = Link::new(up_r, down_w, MAX_UP_FRAME).unwrap();
            let mut rx = UploadServer::new(apply, "serial test".into(), fast());
            let _ = rx.run(&mut link);
        });
        let op = Link::new(down_r, up_w, MAX_DOWN_FRAME).unwrap();
        (op, daemon)
    }

    fn sample(n: usize) -> Vec<u8> {
        (0..n)
            .map(|i| b"[domains]\naccepted = [\"x.test\"]\n\0\x01"[i % 34])
            .collect()
    }

    /// Is `frame` (as written: 0x00 COBS 0x00) a Data frame?
    fn data_seq(frame: &[u8]) -> Option<u32> {
        let mut f: Vec<u8> = frame.iter().copied().filter(|&b| b != 0).collect();
        match decode::<Up<'_>>(&mut f)? {
            Up::Data { seq, .. } => Some(seq),
            _ => None,
        }
    }

    #[test]
    fn frames_round_trip() {
        let msg = Up::Data {
            session: 7,
            seq: 3,
            bytes: &[0, 0, 1, 2, 0, 255],
        };
        let wire = encode(&msg).unwrap();
        assert_eq!(wire[0], 0);
        assert_eq!(*wire.last().unwrap(), 0);
        assert!(!wire[1..wire.len() - 1].contains(&0));
        let mut body = wire[1..wire.len() - 1].to_vec();
        assert_eq!(decode::<Up<'_>>(&mut body), Some(msg));
        // A full Data frame stays small.
        let big = vec![0xAAu8; CHUNK];
        let f = encode(&Up::Data {
            session: u32::MAX,
            seq: u32::MAX,
            bytes: &big,
        })
        .unwrap();
        assert!(f.len() < 300, "{}", f.len());
        // Every single-bit error is caught.
        for i in 1..wire.len() - 1 {
            for bit in 0..8 {
                let mut g = wire[1..wire.len() - 1].to_vec();
                g[i - 1] ^= 1 << bit;
                if g.contains(&0) {
                    continue; // the link would split it in two bad frames
                }
                assert_eq!(decode::<Up<'_>>(&mut g), None, "byte {i} bit {bit}");
            }
        }
    }

    #[test]
    fn garbage_never_panics() {
        let (apply, log) = recorder();
        let mut rx = UploadServer::new(apply, "t".into(), fast());
        let mut seed = 0x1234_5678u32;
        for n in 0..4000 {
            if n == 2000 {
                // From here on a session is open: bad frames get a Nak.
                let mut b = encode(&Up::Begin {
                    session: 1,
                    len: 10,
                    chunks: 1,
                    file_hash: [0; 32],
                })
                .unwrap();
                b.retain(|&x| x != 0);
                assert_eq!(rx.on_frame(&mut b).len(), 1);
            }
            let mut f: Vec<u8> = (0..(n % 300) + 1)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 17;
                    seed ^= seed << 5;
                    (seed as u8).max(1)
                })
                .collect();
            let replies = rx.on_frame(&mut f);
            if n < 2000 {
                assert!(replies.is_empty(), "noise on an idle line gets no answer");
                continue;
            }
            assert_eq!(replies.len(), 1);
            let mut r = replies[0].clone();
            r.retain(|&b| b != 0);
            assert!(matches!(
                decode::<Down<'_>>(&mut r),
                Some(Down::Nak {
                    reason: NakReason::BadFrame,
                    ..
                })
            ));
            let _ = decode::<Down<'_>>(&mut f);
        }
        assert!(rx.cur.is_some());
        assert!(log.lock().unwrap().is_empty());
    }

    #[test]
    fn good_upload() {
        let (apply, log) = recorder();
        let (mut op, daemon) = setup(clean(), apply);
        let text = sample(1000);
        let out = upload(&mut op, &text, 42, FileKind::Rules, fast());
        assert_eq!(
            out,
            UploadResult::Applied("installed policy version 00000000000003E8".into())
        );
        drop(op);
        daemon.join().unwrap();
        let log = log.lock().unwrap();
        assert_eq!(log.len(), 1);
        assert_eq!(log[0].0.as_bytes(), &text[..]);
        assert_eq!(log[0].1, "serial test");
    }

    #[test]
    fn a_directory_upload_is_applied_as_a_directory_and_rules_keep_their_begin() {
        let (apply, log) = recorder();
        let (mut op, daemon) = setup(clean(), apply);
        let text = sample(700);
        let out = upload(&mut op, &text, 43, FileKind::Directory, fast());
        assert!(matches!(out, UploadResult::Applied(_)), "{out:?}");
        let out = upload(&mut op, &text, 44, FileKind::Rules, fast());
        assert!(matches!(out, UploadResult::Applied(_)), "{out:?}");
        drop(op);
        daemon.join().unwrap();
        let log = log.lock().unwrap();
        assert!(log[0].0.starts_with("directory:"), "applied as a directory");
        assert_eq!(log[1].0.as_bytes(), &text[..], "applied as rules");
        // A rule upload still opens with the first version's Begin, whose
        // encoding is unchanged (variant 0), and BeginFile is a new variant.
        let begin = postcard::to_stdvec(&Up::Begin {
            session: 1,
            len: 0,
            chunks: 0,
            file_hash: [0; 32],
        })
        .unwrap();
        assert_eq!(begin[0], 0);
        let file = postcard::to_stdvec(&Up::BeginFile {
            session: 1,
            len: 0,
            chunks: 0,
            file_hash: [0; 32],
            kind: FileKind::Directory,
        })
        .unwrap();
        assert_eq!(file[0], 3);
    }

    #[test]
    fn a_directory_may_be_larger_than_a_rule_file_but_not_unbounded() {
        let (apply, _log) = recorder();
        let mut rx = UploadServer::new(apply, "t".into(), fast());
        for (session, len, want) in [
            (5, MAX_FILE + 1, "Ack"),
            (6, FileKind::Directory.max_len() + 1, "TooLarge"),
        ] {
            let mut f = encode(&Up::BeginFile {
                session,
                len,
                chunks: len.div_ceil(CHUNK as u32),
                file_hash: [0; 32],
                kind: FileKind::Directory,
            })
            .unwrap();
            f.retain(|&b| b != 0);
            let mut r = rx.on_frame(&mut f).remove(0);
            r.retain(|&b| b != 0);
            let r = format!("{:?}", decode::<Down<'_>>(&mut r).unwrap());
            assert!(r.contains(want), "{r}");
        }
    }

    #[test]
    fn empty_and_exact_chunk_files() {
        for n in [0, CHUNK, 2 * CHUNK, 2 * CHUNK + 1] {
            let (apply, log) = recorder();
            let (mut op, daemon) = setup(clean(), apply);
            let text = sample(n);
            assert!(matches!(
                upload(&mut op, &text, 9, FileKind::Rules, fast()),
                UploadResult::Applied(_)
            ));
            drop(op);
            daemon.join().unwrap();
            assert_eq!(log.lock().unwrap()[0].0.as_bytes(), &text[..]);
        }
    }

    #[test]
    fn corrupted_frame_is_resent_and_applied_once() {
        let (apply, log) = recorder();
        let hits = Arc::new(Mutex::new(Vec::new()));
        let hits2 = hits.clone();
        let mut done = false;
        let filter: Filter = Box::new(move |b: &[u8]| {
            let mut out = b.to_vec();
            if let Some(seq) = data_seq(b) {
                hits2.lock().unwrap().push(seq);
                if seq == 2 && !done {
                    done = true;
                    out[20] ^= 0x40; // one flipped bit in the middle of the frame
                    if out[20] == 0 {
                        out[20] = 0x55;
                    }
                }
            }
            out
        });
        let (mut op, daemon) = setup(filter, apply);
        let text = sample(700);
        let t = Timing {
            ack: Duration::from_secs(3),
            ..fast()
        };
        let t0 = Instant::now();
        assert!(matches!(
            upload(&mut op, &text, 5, FileKind::Rules, t),
            UploadResult::Applied(_)
        ));
        // Resent on the Nak, not after the timeout.
        assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
        drop(op);
        daemon.join().unwrap();
        assert_eq!(*hits.lock().unwrap(), vec![1, 2, 2, 3]);
        let log = log.lock().unwrap();
        assert_eq!(log.len(), 1);
        assert_eq!(log[0].0.as_bytes(), &text[..]);
    }

    #[test]
    fn lost_acks_do_not_duplicate_data() {
        // To the daemon, a lost Ack looks like the same frame twice: every
        // frame arrives twice here.
        let (apply, log) = recorder();
        let filter: Filter = Box::new(|b: &[u8]| {
            let mut out = b.to_vec();
            out.extend_from_slice(b); // every frame arrives twice
            out
        });
        let (mut op, daemon) = setup(filter, apply);
        let text = sample(600);
        assert!(matches!(
            upload(&mut op, &text, 77, FileKind::Rules, fast()),
            UploadResult::Applied(_)
        ));
        drop(op);
        daemon.join().unwrap();
        let log = log.lock().unwrap();
        assert_eq!(log.len(), 1, "applied once");
        assert_eq!(log[0].0.as_bytes(), &text[..]);
    }

    #[test]
    fn lost_result_is_repeated_not_reapplied() {
        let (apply, log) = recorder();
        let (up_r, up_w) = pipe(clean());
        // Drop the daemon's first Result on the way back.
        let mut dropped = false;
        let (down_r, down_w) = pipe(Box::new(move |b: &[u8]| {
            let mut f: Vec<u8> = b.iter().copied().filter(|&x| x != 0).collect();
            if !dropped && matches!(decode::<Down<'_>>(&mut f), Some(Down::Result { .. })) {
                dropped = true;
                return Vec::new();
            }
            b.to_vec()
        }));
        let daemon = std::thread::spawn(move || {
            let mut link = Link::new(up_r, down_w, MAX_UP_FRAME).unwrap();
            let mut rx = UploadServer::new(apply, "t".into(), fast());
            let _ = rx.run(&mut link);
        });
        let mut op = Link::new(down_r, up_w, MAX_DOWN_FRAME).unwrap();
        let t = Timing {
            result: Duration::from_millis(300),
            ..fast()
        };
        assert!(matches!(
            upload(&mut op, &sample(300), 3, FileKind::Rules, t),
            UploadResult::Applied(_)
        ));
        drop(op);
        daemon.join().unwrap();
        assert_eq!(log.lock().unwrap().len(), 1);
    }

    #[test]
    fn truncated_upload_changes_nothing_and_next_session_works() {
        let (apply, log) = recorder();
        // The line dies after Data 2: nothing more arrives.
        let filter: Filter = Box::new(|b: &[u8]| match data_seq(b) {
            Some(s) if s >= 3 => Vec::new(),
            _ => b.to_vec(),
        });
        let (up_r, up_w) = pipe(filter);
        let (down_r, down_w) = pipe(clean());
        let (up2_r, up2_w) = pipe(clean());
        let (down2_r, down2_w) = pipe(clean());
        let apply2 = apply.clone();
        let daemon = std::thread::spawn(move || {
            // The same UploadServer state across two links, as in serve_serial.
            let mut rx = UploadServer::new(apply2, "t".into(), fast());
            let mut link = Link::new(up_r, down_w, MAX_UP_FRAME).unwrap();
            let _ = rx.run(&mut link);
            assert!(rx.cur.is_none());
            let mut link = Link::new(up2_r, down2_w, MAX_UP_FRAME).unwrap();
            let _ = rx.run(&mut link);
        });
        let mut op = Link::new(down_r, up_w, MAX_DOWN_FRAME).unwrap();
        let t = Timing {
            retries: 1,
            ..fast()
        };
        let out = upload(&mut op, &sample(1000), 11, FileKind::Rules, t);
        assert!(matches!(out, UploadResult::Failed(_)), "{out:?}");
        drop(op);
        assert!(log.lock().unwrap().is_empty());
        let mut op2 = Link::new(down2_r, up2_w, MAX_DOWN_FRAME).unwrap();
        assert!(matches!(
            upload(&mut op2, b"ok = 1\n", 12, FileKind::Rules, fast()),
            UploadResult::Applied(_)
        ));
        drop(op2);
        daemon.join().unwrap();
        let log = log.lock().unwrap();
        assert_eq!(log.len(), 1);
        assert_eq!(log[0].0, "ok = 1\n");
    }

    #[test]
    fn stalled_session_is_discarded() {
        let (apply, log) = recorder();
        let mut rx = UploadServer::new(apply, "t".into(), fast());
        let text = sample(600);
        let hash = sha256(&text);
        let mut frame = |m: &Up<'_>| {
            let mut f = encode(m).unwrap();
            f.retain(|&b| b != 0);
            rx.on_frame(&mut f)
        };
        frame(&Up::Begin {
            session: 1,
            len: 600,
            chunks: 3,
            file_hash: hash,
        });
        frame(&Up::Data {
            session: 1,
            seq: 1,
            bytes: &text[..256],
        });
        rx.expire(Instant::now() + Duration::from_secs(1));
        assert!(rx.cur.is_none());
        let mut f = encode(&Up::Data {
            session: 1,
            seq: 2,
            bytes: &text[256..512],
        })
        .unwrap();
        f.retain(|&b| b != 0);
        let mut r = rx.on_frame(&mut f).remove(0);
        r.retain(|&b| b != 0);
        assert!(matches!(
            decode::<Down<'_>>(&mut r),
            Some(Down::Nak {
                reason: NakReason::NoSession,
                ..
            })
        ));
        assert!(log.lock().unwrap().is_empty());
    }

    #[test]
    fn new_session_replaces_a_half_finished_one() {
        let (apply, log) = recorder();
        let filter: Filter = Box::new(|b: &[u8]| match data_seq(b) {
            Some(s) if s >= 2 => Vec::new(),
            _ => b.to_vec(),
        });
        let (up_r, up_w) = pipe(filter);
        let (down_r, down_w) = pipe(clean());
        let (mut op, daemon) = {
            let apply = apply.clone();
            let d = std::thread::spawn(move || {
                let mut link = Link::new(up_r, down_w, MAX_UP_FRAME).unwrap();
                let mut rx = UploadServer::new(
                    apply,
                    "t".into(),
                    Timing {
                        stall: Duration::from_secs(60),
                        ..fast()
                    },
                );
                let _ = rx.run(&mut link);
            });
            (Link::new(down_r, up_w, MAX_DOWN_FRAME).unwrap(), d)
        };
        let t = Timing {
            retries: 0,
            ..fast()
        };
        assert!(matches!(
            upload(&mut op, &sample(1000), 1, FileKind::Rules, t),
            UploadResult::Failed(_)
        ));
        // A short file (one chunk) from a new session goes through at once.
        assert!(matches!(
            upload(&mut op, b"short", 2, FileKind::Rules, fast()),
            UploadResult::Applied(_)
        ));
        drop(op);
        daemon.join().unwrap();
        let log = log.lock().unwrap();
        assert_eq!(log.len(), 1);
        assert_eq!(log[0].0, "short");
    }

    #[test]
    fn bad_rules_come_back_as_errors() {
        let (apply, log) = recorder();
        let (mut op, daemon) = setup(clean(), apply);
        let out = upload(&mut op, b"[domains]\nbad = 1\n", 8, FileKind::Rules, fast());
        assert_eq!(
            out,
            UploadResult::Refused(
                "3:7: error: unknown key `bad`\n5:1: error: second problem".into()
            )
        );
        drop(op);
        daemon.join().unwrap();
        assert_eq!(log.lock().unwrap().len(), 1);
    }

    #[test]
    fn not_utf8_is_refused_without_applying() {
        let (apply, log) = recorder();
        let (mut op, daemon) = setup(clean(), apply);
        let out = upload(&mut op, b"a = \"\xff\"\n", 8, FileKind::Rules, fast());
        assert!(
            matches!(out, UploadResult::Refused(ref t) if t.contains("UTF-8")),
            "{out:?}"
        );
        drop(op);
        daemon.join().unwrap();
        assert!(log.lock().unwrap().is_empty());
    }

    #[test]
    fn the_file_hash_is_sha_256() {
        // FIPS 180-2, appendix B.1.
        let want = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let got: String = sha256(b"abc").iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn hash_mismatch_applies_nothing() {
        let (apply, log) = recorder();
        let mut rx = UploadServer::new(apply, "t".into(), fast());
        let text = b"abc";
        let mut send = |m: &Up<'_>| {
            let mut f = encode(m).unwrap();
            f.retain(|&b| b != 0);
            let mut r = rx.on_frame(&mut f).remove(0);
            r.retain(|&b| b != 0);
            format!("{:?}", decode::<Down<'_>>(&mut r).unwrap())
        };
        send(&Up::Begin {
            session: 4,
            len: 3,
            chunks: 1,
            file_hash: sha256(b"abd"),
        });
        send(&Up::Data {
            session: 4,
            seq: 1,
            bytes: text,
        });
        let r = send(&Up::End {
            session: 4,
            seq: 2,
            file_hash: sha256(b"abd"),
        });
        assert!(r.contains("Mismatch"), "{r}");
        assert!(log.lock().unwrap().is_empty());
    }

    #[test]
    fn oversized_and_inconsistent_begins_are_refused() {
        let (apply, _log) = recorder();
        let mut rx = UploadServer::new(apply, "t".into(), fast());
        for (len, chunks, want) in [
            (
                MAX_FILE + 1,
                (MAX_FILE + 1).div_ceil(CHUNK as u32),
                "TooLarge",
            ),
            (300, 1, "Invalid"),
        ] {
            let mut f = encode(&Up::Begin {
                session: 3,
                len,
                chunks,
                file_hash: [0; 32],
            })
            .unwrap();
            f.retain(|&b| b != 0);
            let mut r = rx.on_frame(&mut f).remove(0);
            r.retain(|&b| b != 0);
            let r = format!("{:?}", decode::<Down<'_>>(&mut r).unwrap());
            assert!(r.contains(want), "{r}");
        }
        assert!(rx.cur.is_none());
    }

    #[test]
    fn line_noise_and_overlong_runs_are_skipped() {
        let (apply, log) = recorder();
        let mut first = true;
        let filter: Filter = Box::new(move |b: &[u8]| {
            let mut out = Vec::new();
            if first {
                // A login banner, then a run longer than any frame, before Begin.
                first = false;
                out.extend_from_slice(b"\r\nlogin: ");
                out.extend(std::iter::repeat_n(0x55u8, 5000));
            }
            out.extend_from_slice(b);
            out
        });
        let (mut op, daemon) = setup(filter, apply);
        let text = sample(900);
        assert!(matches!(
            upload(&mut op, &text, 6, FileKind::Rules, fast()),
            UploadResult::Applied(_)
        ));
        drop(op);
        daemon.join().unwrap();
        let log = log.lock().unwrap();
        assert_eq!(log.len(), 1);
        assert_eq!(log[0].0.as_bytes(), &text[..]);
    }

    #[test]
    fn only_terminals_are_opened() {
        assert!(open_link(Path::new("/dev/null"), 115_200, 64).is_err());
        assert!(open_link(Path::new("/nonexistent/ttyS9"), 115_200, 64).is_err());
        let dir = std::env::temp_dir().join(format!("sluice-upload-{}", std::process::id()));
        std::fs::write(&dir, b"x").unwrap();
        assert!(open_link(&dir, 115_200, 64).is_err());
        let _ = std::fs::remove_file(&dir);
    }

    #[test]
    fn over_a_pseudo_terminal() {
        let (master, slave) = match serialport::TTYPort::pair() {
            Ok(pair) => pair,
            Err(e) => {
                // No ptys in this sandbox: fine on a laptop, not in CI.
                assert!(
                    std::env::var_os("CI").is_none(),
                    "CI is set and no pseudo-terminal pair: {e}"
                );
                return;
            }
        };
        let (apply, log) = recorder();
        let mw = master.try_clone_native().unwrap();
        let sw = slave.try_clone_native().unwrap();
        let daemon = std::thread::spawn(move || {
            let mut link = Link::new(slave, sw, MAX_UP_FRAME).unwrap();
            let mut rx = UploadServer::new(apply, "t".into(), fast());
            // Serve until the first upload has been answered.
            let deadline = Instant::now() + Duration::from_secs(10);
            while rx.done.is_none() && Instant::now() < deadline {
                if let Next::Frame(mut f) = link.next(Instant::now() + Duration::from_millis(100)) {
                    for r in rx.on_frame(&mut f) {
                        link.send(&r).unwrap();
                    }
                }
            }
            // Let the operator read the Result before the pty closes.
            std::thread::sleep(Duration::from_millis(300));
        });
        let mut op = Link::new(master, mw, MAX_DOWN_FRAME).unwrap();
        let text = sample(5000);
        assert!(matches!(
            upload(&mut op, &text, 99, FileKind::Rules, fast()),
            UploadResult::Applied(_)
        ));
        daemon.join().unwrap();
        assert_eq!(log.lock().unwrap()[0].0.as_bytes(), &text[..]);
    }
}
