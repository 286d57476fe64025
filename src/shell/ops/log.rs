//! Operator log: one syslog message per event, so that one message can be
//! followed from accept to delivery with a single grep on its queue id.
//!
//! Events carry a MSGID ([`Kind`]: `RECEIVE REJECT RULE ROUTE SEND DEFER
//! BOUNCE POLICY STATS`; `-` for daemon lifecycle lines from [`info`] and
//! [`warn`]) and the queue id and Message-ID as structured data
//! `[sluice@32473 qid="..." msgid="..."]`; a STATS line ([`stats_line`])
//! brings its own structured data, the metrics.
//!
//! Before [`init`] (and for every CLI command) lines go straight to stderr.
//! After `init` callers only format the line and `try_send` it into a
//! bounded queue ([`QUEUE_LINES`] lines); a writer thread owns the socket. A
//! full queue drops the line and counts it, so a slow or absent syslog
//! server never blocks mail flow; the writer reports drops as a warning
//! ("N log messages dropped") as soon as a line gets through again.
//! [`stats`] gives (sent, dropped).
//!
//! Formats per target:
//! * `udp:HOST:PORT`: RFC 5424, one datagram per message:
//!   `<PRI>1 TIMESTAMP HOSTNAME sluice PROCID MSGID SD MSG`, UTC timestamps
//!   with microseconds.
//! * `tcp:HOST:PORT`: the same lines, RFC 6587 octet counting
//!   (`LEN SP MSG`); reconnects with backoff when the server goes away.
//! * `unix:PATH` (`/dev/log`): the local-socket format that syslog(3)
//!   writes, `<PRI>sluice[PID]: MSGID SD MSG`. The local daemons (rsyslog's
//!   imuxsock with its default parser, journald) do not parse RFC 5424 on
//!   that socket: a 5424 line comes out with app name `1`. They add their
//!   own timestamp and hostname; MSGID and SD stay in the text, so grep
//!   still finds them.
//! * `stderr` (foreground runs): `sluice[PID]: MSGID qid=Q msgid=M text`,
//!   `sluice[PID]: text` for lifecycle lines, `sluice[PID]: warning: text`.
//!
//! Control characters in the text or the SD values are written as `#ooo`
//! (octal, as rsyslog does), so one event is always one line; a line is
//! cut at [`MAX_LINE`] octets.

use crate::shell::time::civil_from_days;
use std::fmt::{self, Arguments, Write as _};
use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs, UdpSocket};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Entries (a line, or a [`Batch`] of a message's lines) the queue between
/// callers and the writer thread holds.
pub const QUEUE_LINES: usize = 4096;
/// Longest line sent, in octets (rsyslog's default limit is 8 KiB).
pub const MAX_LINE: usize = 8000;
/// Longest structured-data value, in octets, before escaping.
const MAX_SD_VALUE: usize = 512;
/// The SD-ID of sluice's structured data (32473 is the RFC 5612
/// documentation enterprise number).
const SD_ID: &str = "sluice@32473";
const APP_NAME: &str = "sluice";
/// First and longest wait before reconnecting to an absent server.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often an idle writer looks for drops to report.
const IDLE_TICK: Duration = Duration::from_millis(250);
/// Lines the writer takes from the queue at once: on a stream target
/// (stderr, a stream socket, TCP) they go out in one write, so a message's
/// RECEIVE, ROUTE and RULE lines cost one system call, not one each.
const BATCH_LINES: usize = 64;
/// How long a busy writer waits after a batch before it takes the next, so
/// that the lines of that millisecond go out together. A push to a writer
/// blocked on the queue is a futex wake-up, about 7 µs of the pushing session
/// thread on the benchmark's VM at two pushes per message; a millisecond
/// keeps the log close to real time.
const LINGER: Duration = Duration::from_millis(1);
/// Batches in a row that came within [`LINGER`] of the previous write before
/// the writer lingers: only a steady stream of lines is held back, not a
/// few in a row.
const BUSY_STREAK: u32 = 4;

/// What an event is about; its MSGID is the upper-case name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A message accepted and spooled.
    Receive,
    /// A connection, recipient or message refused.
    Reject,
    /// A line of the rule execution log.
    Rule,
    /// A recipient's route decision.
    Route,
    /// A delivery to the next hop.
    Send,
    /// A temporary delivery failure, retried later.
    Defer,
    /// A permanent failure, or a bounce sent back.
    Bounce,
    /// Policy table installed, refused or rolled back.
    Policy,
    /// The periodic counters (`[metrics] syslog_interval`).
    Stats,
}

impl Kind {
    /// The RFC 5424 MSGID.
    pub fn msgid(self) -> &'static str {
        match self {
            Kind::Receive => "RECEIVE",
            Kind::Reject => "REJECT",
            Kind::Rule => "RULE",
            Kind::Route => "ROUTE",
            Kind::Send => "SEND",
            Kind::Defer => "DEFER",
            Kind::Bounce => "BOUNCE",
            Kind::Policy => "POLICY",
            Kind::Stats => "STATS",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Severity {
    Warning,
    Info,
}

impl Severity {
    fn code(self) -> u8 {
        match self {
            Severity::Warning => 4,
            Severity::Info => 6,
        }
    }
}

/// A mail event: MSGID from `kind`, the queue id and Message-ID in
/// structured data.
pub fn event(kind: Kind, queue_id: Option<&str>, message_id: Option<&str>, args: Arguments<'_>) {
    emit(&Record::event(kind, queue_id, message_id, args));
}

/// A mail event an operator should look at (severity warning, MSGID from
/// `kind`, no message ids), e.g. a refused policy install.
pub fn event_warn(kind: Kind, args: Arguments<'_>) {
    emit(&Record {
        severity: Severity::Warning,
        kind: Some(kind),
        queue_id: None,
        message_id: None,
        sd: None,
        args,
    });
}

/// Mail events that go to the writer together, when dropped: a message's
/// RECEIVE, ROUTE and RULE lines are one hand-off to the writer thread (one
/// wake-up of it) instead of one each. Lines keep their order.
#[derive(Default)]
pub struct Batch {
    lines: Vec<String>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Batch {
        Batch::default()
    }

    /// Like [`event`], held back until the batch is dropped.
    pub fn event(
        &mut self,
        kind: Kind,
        queue_id: Option<&str>,
        message_id: Option<&str>,
        args: Arguments<'_>,
    ) {
        let r = Record::event(kind, queue_id, message_id, args);
        match LOGGER.get() {
            Some(l) => self.lines.push(l.fmt.line(&r, SystemTime::now())),
            // Before `init`: straight to stderr, as `event` does.
            None => emit(&r),
        }
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        if let Some(l) = LOGGER.get() {
            if !self.lines.is_empty() {
                l.push(std::mem::take(&mut self.lines));
            }
        }
    }
}

/// A STATS line: `sd` is whole RFC 5424 SD-ELEMENTs, names and values
/// already valid (the caller, [`super::stats`], writes SD-NAMEs and
/// numbers only); the text follows. On the local socket and stderr the elements are in the text.
pub fn stats_line(sd: &str, args: Arguments<'_>) {
    emit(&Record {
        severity: Severity::Info,
        kind: Some(Kind::Stats),
        queue_id: None,
        message_id: None,
        sd: Some(sd),
        args,
    });
}

/// An ordinary daemon lifecycle line (MSGID `-`).
pub fn info(args: Arguments<'_>) {
    emit(&Record {
        severity: Severity::Info,
        kind: None,
        queue_id: None,
        message_id: None,
        sd: None,
        args,
    });
}

/// Something an operator should look at (severity warning, MSGID `-`).
pub fn warn(args: Arguments<'_>) {
    emit(&Record {
        severity: Severity::Warning,
        kind: None,
        queue_id: None,
        message_id: None,
        sd: None,
        args,
    });
}

/// Send every later line to `target` (`unix:PATH`, `udp:HOST:PORT`,
/// `tcp:HOST:PORT` or `stderr`) with `facility` (`mail`, `daemon`, `user`,
/// `local0`..`local7`), naming this host `hostname` in RFC 5424 lines.
/// Once, in `sluice run`; a second call is refused. An absent server is
/// not an error: the writer retries with backoff and counts the drops.
pub fn init(target: &str, facility: &str, hostname: &str) -> Result<(), String> {
    let t = parse_target(target)?;
    let facility = parse_facility(facility)?;
    if LOGGER.get().is_some() {
        return Err("syslog is already initialised".into());
    }
    let fmt = Format::new(t.style(), facility, hostname);
    let logger = Logger::start(t, fmt, QUEUE_LINES, &GLOBAL)?;
    LOGGER
        .set(logger)
        .map_err(|_| "syslog is already initialised".to_string())
}

/// (sent, dropped) since start: lines written to the target, and lines
/// lost to a full queue or an unreachable server.
pub fn stats() -> (u64, u64) {
    GLOBAL.stats()
}

/// Wait up to `timeout` for the queue to drain (at shutdown, so that the
/// last lines are not lost); true if it did.
pub fn flush(timeout: Duration) -> bool {
    match LOGGER.get() {
        Some(l) => l.flush(timeout),
        None => true,
    }
}

static LOGGER: OnceLock<Logger> = OnceLock::new();
static GLOBAL: Counters = Counters::new();

fn emit(r: &Record<'_>) {
    match LOGGER.get() {
        Some(l) => l.log(r),
        None => {
            let mut line = Format::stderr().line(r, SystemTime::now());
            line.push('\n');
            match io::stderr().lock().write_all(line.as_bytes()) {
                Ok(()) => GLOBAL.sent.fetch_add(1, Ordering::Relaxed),
                Err(_) => GLOBAL.dropped.fetch_add(1, Ordering::Relaxed),
            };
        }
    }
}

struct Record<'a> {
    severity: Severity,
    kind: Option<Kind>,
    queue_id: Option<&'a str>,
    message_id: Option<&'a str>,
    /// Structured data of its own (already RFC 5424 elements, escaped),
    /// written instead of the queue id and Message-ID ([`stats_line`]).
    sd: Option<&'a str>,
    args: Arguments<'a>,
}

impl<'a> Record<'a> {
    /// A mail event (severity info).
    fn event(
        kind: Kind,
        queue_id: Option<&'a str>,
        message_id: Option<&'a str>,
        args: Arguments<'a>,
    ) -> Self {
        Record {
            severity: Severity::Info,
            kind: Some(kind),
            queue_id,
            message_id,
            sd: None,
            args,
        }
    }
}

struct Counters {
    /// Lines written to the target.
    sent: AtomicU64,
    /// Lines lost: full queue, or the target refused them.
    dropped: AtomicU64,
    /// Lines put in the queue.
    queued: AtomicU64,
    /// Queued lines the writer has finished with (sent or dropped).
    done: AtomicU64,
}

impl Counters {
    const fn new() -> Self {
        Counters {
            sent: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            done: AtomicU64::new(0),
        }
    }

    fn stats(&self) -> (u64, u64) {
        (
            self.sent.load(Ordering::Relaxed),
            self.dropped.load(Ordering::Relaxed),
        )
    }
}

// ---- targets ---------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
    Stderr,
    Unix(PathBuf),
    Udp(String),
    Tcp(String),
}

impl Target {
    fn style(&self) -> Style {
        match self {
            Target::Stderr => Style::Plain,
            Target::Unix(_) => Style::Local,
            Target::Udp(_) | Target::Tcp(_) => Style::Rfc5424,
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Stderr => f.write_str("stderr"),
            Target::Unix(p) => write!(f, "unix:{}", p.display()),
            Target::Udp(a) => write!(f, "udp:{a}"),
            Target::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

/// Checks a `[syslog] target` as [`init`] reads it, without opening it
/// (the config check, before the daemon starts).
pub fn check_target(s: &str) -> Result<(), String> {
    parse_target(s).map(|_| ())
}

/// Checks a `[syslog] facility` as [`init`] reads it.
pub fn check_facility(s: &str) -> Result<(), String> {
    parse_facility(s).map(|_| ())
}

fn parse_target(s: &str) -> Result<Target, String> {
    let bad = |why: &str| format!("syslog target {s:?}: {why}");
    if s == "stderr" {
        return Ok(Target::Stderr);
    }
    let (scheme, rest) = s
        .split_once(':')
        .ok_or_else(|| bad("expected unix:PATH, udp:HOST:PORT, tcp:HOST:PORT or stderr"))?;
    match scheme {
        "unix" if rest.is_empty() => Err(bad("empty path")),
        "unix" => Ok(Target::Unix(PathBuf::from(rest))),
        "udp" | "tcp" => {
            let (host, port) = rest
                .rsplit_once(':')
                .ok_or_else(|| bad("expected HOST:PORT"))?;
            let host_ok = !host.is_empty()
                && (!host.contains(':') || (host.starts_with('[') && host.ends_with(']')));
            if !host_ok {
                return Err(bad("expected HOST:PORT (an IPv6 address in brackets)"));
            }
            match port.parse::<u16>() {
                Ok(p) if p != 0 => {}
                _ => return Err(bad("bad port")),
            }
            Ok(if scheme == "udp" {
                Target::Udp(rest.to_string())
            } else {
                Target::Tcp(rest.to_string())
            })
        }
        _ => Err(bad(
            "expected unix:PATH, udp:HOST:PORT, tcp:HOST:PORT or stderr",
        )),
    }
}

fn parse_facility(s: &str) -> Result<u8, String> {
    let code = match s {
        "user" => 1,
        "mail" => 2,
        "daemon" => 3,
        "local0" => 16,
        "local1" => 17,
        "local2" => 18,
        "local3" => 19,
        "local4" => 20,
        "local5" => 21,
        "local6" => 22,
        "local7" => 23,
        _ => {
            return Err(format!(
                "syslog facility {s:?}: expected mail, daemon, user or local0..local7"
            ))
        }
    };
    Ok(code)
}

// ---- formatting ------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Style {
    /// RFC 5424 (network targets).
    Rfc5424,
    /// `<PRI>sluice[PID]: ...` (the local socket).
    Local,
    /// `sluice[PID]: ...` (stderr).
    Plain,
}

struct Format {
    style: Style,
    facility: u8,
    hostname: String,
    pid: u32,
}

impl Format {
    fn new(style: Style, facility: u8, hostname: &str) -> Self {
        // HOSTNAME = NILVALUE / 1*255PRINTUSASCII
        let mut h: String = hostname
            .chars()
            .map(|c| if c.is_ascii_graphic() { c } else { '_' })
            .take(255)
            .collect();
        if h.is_empty() {
            h.push('-');
        }
        Format {
            style,
            facility,
            hostname: h,
            pid: std::process::id(),
        }
    }

    fn stderr() -> Self {
        Format::new(Style::Plain, 2, "-")
    }

    fn pri(&self, severity: Severity) -> u8 {
        self.facility * 8 + severity.code()
    }

    fn line(&self, r: &Record<'_>, now: SystemTime) -> String {
        let mut out = String::with_capacity(160);
        let msgid = r.kind.map_or("-", Kind::msgid);
        // Writing to a String cannot fail; a Display impl that fails only
        // leaves the text short.
        match self.style {
            Style::Rfc5424 => {
                let _ = write!(
                    out,
                    "<{}>1 {} {} {APP_NAME} {} {msgid} ",
                    self.pri(r.severity),
                    Timestamp(now),
                    self.hostname,
                    self.pid
                );
                if !write_sd(&mut out, r) {
                    out.push('-');
                }
                out.push(' ');
            }
            Style::Local => {
                let _ = write!(out, "<{}>{APP_NAME}[{}]: ", self.pri(r.severity), self.pid);
                if r.kind.is_some() {
                    out.push_str(msgid);
                    out.push(' ');
                    if write_sd(&mut out, r) {
                        out.push(' ');
                    }
                }
            }
            Style::Plain => {
                let _ = write!(out, "{APP_NAME}[{}]: ", self.pid);
                if r.severity == Severity::Warning {
                    out.push_str("warning: ");
                }
                if r.kind.is_some() {
                    out.push_str(msgid);
                    out.push(' ');
                    if let Some(sd) = r.sd.filter(|s| !s.is_empty()) {
                        out.push_str(sd);
                        out.push(' ');
                    }
                    for (name, v) in [("qid", r.queue_id), ("msgid", r.message_id)] {
                        if let Some(v) = v {
                            let _ = write!(out, "{name}=");
                            let _ = Clean::new(&mut out, MAX_SD_VALUE, false).write_str(v);
                            out.push(' ');
                        }
                    }
                }
            }
        }
        let room = MAX_LINE.saturating_sub(out.len());
        let _ = Clean::new(&mut out, room, false).write_fmt(r.args);
        out
    }
}

/// Writes `[sluice@32473 qid="..." msgid="..."]`; false if there is nothing
/// to write.
fn write_sd(out: &mut String, r: &Record<'_>) -> bool {
    if let Some(sd) = r.sd {
        out.push_str(sd);
        return !sd.is_empty();
    }
    if r.queue_id.is_none() && r.message_id.is_none() {
        return false;
    }
    out.push('[');
    out.push_str(SD_ID);
    for (name, v) in [("qid", r.queue_id), ("msgid", r.message_id)] {
        if let Some(v) = v {
            let _ = write!(out, " {name}=\"");
            let _ = Clean::new(out, MAX_SD_VALUE, true).write_str(v);
            out.push('"');
        }
    }
    out.push(']');
    true
}

/// A `fmt::Write` into a String that writes control characters as `#ooo`,
/// escapes `"`, `\` and `]` when `sd` (RFC 5424 §6.3.3), and stops after
/// `room` octets (on a character boundary).
struct Clean<'a> {
    out: &'a mut String,
    room: usize,
    sd: bool,
}

impl<'a> Clean<'a> {
    fn new(out: &'a mut String, room: usize, sd: bool) -> Self {
        Clean { out, room, sd }
    }

    fn put(&mut self, s: &str) -> bool {
        if s.len() > self.room {
            self.room = 0;
            return false;
        }
        self.room -= s.len();
        self.out.push_str(s);
        true
    }
}

impl fmt::Write for Clean<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // Runs of plain text are copied whole; the characters that need
        // care are all ASCII, so a byte search finds them.
        let sd = self.sd;
        let special = |b: u8| b.is_ascii_control() || (sd && matches!(b, b'"' | b'\\' | b']'));
        let mut rest = s;
        while !rest.is_empty() {
            let run = rest.bytes().position(special).unwrap_or(rest.len());
            if run > 0 {
                let (plain, after) = rest.split_at(run);
                if plain.len() > self.room {
                    // Out of room: as much as fits, on a character
                    // boundary; the rest is cut, silently.
                    let mut cut = self.room;
                    while !plain.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    self.put(&plain[..cut]);
                    self.room = 0;
                    return Ok(());
                }
                self.put(plain);
                rest = after;
                continue;
            }
            let b = rest.as_bytes()[0];
            let esc: [u8; 4];
            let text: &str = match b {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b']' => "\\]",
                _ => {
                    esc = [b'#', b'0' + (b >> 6), b'0' + ((b >> 3) & 7), b'0' + (b & 7)];
                    std::str::from_utf8(&esc).unwrap_or("#???")
                }
            };
            if !self.put(text) {
                return Ok(());
            }
            rest = &rest[1..];
        }
        Ok(())
    }
}

/// RFC 3339 in UTC with microseconds: `2026-11-22T08:46:13.632440Z`.
struct Timestamp(SystemTime);

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = d.as_secs();
        let days = i64::try_from(secs / 86_400).unwrap_or(0);
        let rem = secs % 86_400;
        let (y, m, dd) = civil_from_days(days);
        write!(
            f,
            "{y:04}-{m:02}-{dd:02}T{:02}:{:02}:{:02}.{:06}Z",
            rem / 3600,
            rem / 60 % 60,
            rem % 60,
            d.subsec_micros()
        )
    }
}

/// RFC 6587 §3.4.1 octet counting: `LEN SP MSG`, appended to `out`.
fn octet_frame(line: &[u8], out: &mut Vec<u8>) {
    let _ = write!(out, "{} ", line.len());
    out.extend_from_slice(line);
}

// ---- the queue and the writer ------------------------------------------------

struct Logger {
    tx: SyncSender<Vec<String>>,
    fmt: Format,
    counters: &'static Counters,
}

impl Logger {
    /// A logger and the writer for its queue of `capacity` lines, not yet
    /// running (tests hold the writer back to fill the queue).
    fn channel(
        target: Target,
        fmt: Format,
        capacity: usize,
        counters: &'static Counters,
    ) -> (Logger, Writer, Receiver<Vec<String>>) {
        let (tx, rx) = mpsc::sync_channel(capacity);
        let writer = Writer {
            report: Format {
                style: fmt.style,
                facility: fmt.facility,
                hostname: fmt.hostname.clone(),
                pid: fmt.pid,
            },
            target,
            conn: None,
            retry_at: Instant::now(),
            backoff: BACKOFF_MIN,
            down: false,
            reported: counters.dropped.load(Ordering::Relaxed),
            counters,
        };
        (Logger { tx, fmt, counters }, writer, rx)
    }

    fn start(
        target: Target,
        fmt: Format,
        capacity: usize,
        counters: &'static Counters,
    ) -> Result<Logger, String> {
        let (logger, writer, rx) = Logger::channel(target, fmt, capacity, counters);
        std::thread::Builder::new()
            .name("sluice-log".into())
            .spawn(move || writer.run(&rx))
            .map_err(|e| format!("syslog writer thread: {e}"))?;
        Ok(logger)
    }

    fn log(&self, r: &Record<'_>) {
        self.push(vec![self.fmt.line(r, SystemTime::now())]);
    }

    /// Never blocks: a full queue drops the lines.
    fn push(&self, lines: Vec<String>) {
        let n = lines.len() as u64;
        match self.tx.try_send(lines) {
            Ok(()) => {
                self.counters.queued.fetch_add(n, Ordering::Relaxed);
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.counters.dropped.fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    fn flush(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let queued = self.counters.queued.load(Ordering::Relaxed);
            if self.counters.done.load(Ordering::Relaxed) >= queued {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Whether the writer is busy: [`BUSY_STREAK`] batches in a row, each
/// within [`LINGER`] of the previous write.
#[derive(Default)]
struct Pace {
    streak: u32,
}

impl Pace {
    /// Counts a batch that came `gap` after the previous write.
    fn busy(&mut self, gap: Duration) -> bool {
        self.streak = if gap <= LINGER {
            self.streak.saturating_add(1)
        } else {
            0
        };
        self.streak >= BUSY_STREAK
    }
}

enum Conn {
    Stderr,
    Udp(UdpSocket),
    UnixDgram(UnixDatagram),
    /// Some systems have a stream socket at /dev/log: lines end with LF.
    UnixStream(UnixStream),
    Tcp(TcpStream),
}

struct Writer {
    target: Target,
    /// Formats the drop reports.
    report: Format,
    conn: Option<Conn>,
    /// No connection attempt before this.
    retry_at: Instant,
    backoff: Duration,
    /// The target failed and that was said on stderr.
    down: bool,
    /// Drops already reported.
    reported: u64,
    counters: &'static Counters,
}

impl Writer {
    fn run(mut self, rx: &Receiver<Vec<String>>) {
        let mut lines = Vec::with_capacity(BATCH_LINES);
        let mut pace = Pace::default();
        let mut written = Instant::now();
        loop {
            let next = rx.recv_timeout(IDLE_TICK);
            let busy = pace.busy(written.elapsed());
            // Before the next lines, so the report comes first.
            self.report_drops();
            match next {
                Ok(first) => {
                    lines.extend(first);
                    while lines.len() < BATCH_LINES {
                        match rx.try_recv() {
                            Ok(more) => lines.extend(more),
                            Err(_) => break,
                        }
                    }
                    let n = lines.len() as u64;
                    let sent = self.deliver(&lines) as u64;
                    self.counters.sent.fetch_add(sent, Ordering::Relaxed);
                    self.counters.dropped.fetch_add(n - sent, Ordering::Relaxed);
                    self.counters.done.fetch_add(n, Ordering::Relaxed);
                    lines.clear();
                    // A full batch means more are waiting: no pause then.
                    if busy && n < BATCH_LINES as u64 {
                        std::thread::sleep(LINGER);
                    }
                    written = Instant::now();
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    /// "N log messages dropped", once the target takes lines again.
    fn report_drops(&mut self) {
        let dropped = self.counters.dropped.load(Ordering::Relaxed);
        if dropped <= self.reported || (self.conn.is_none() && Instant::now() < self.retry_at) {
            return;
        }
        let n = dropped - self.reported;
        let r = Record {
            severity: Severity::Warning,
            kind: None,
            queue_id: None,
            message_id: None,
            sd: None,
            args: format_args!("{n} log messages dropped"),
        };
        let line = self.report.line(&r, SystemTime::now());
        if self.deliver(std::slice::from_ref(&line)) == 1 {
            self.reported = dropped;
            self.counters.sent.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Sends lines in order, connecting first if need be; how many went
    /// (the rest are lost).
    fn deliver(&mut self, lines: &[String]) -> usize {
        // A connection that worked may have gone stale (server restarted):
        // one fresh connection is tried at once before backing off.
        let mut last_err = None;
        let mut done = 0;
        for _ in 0..2 {
            if self.conn.is_none() {
                if Instant::now() < self.retry_at {
                    return done;
                }
                match connect(&self.target) {
                    Ok(c) => self.conn = Some(c),
                    Err(e) => {
                        last_err = Some(e);
                        break;
                    }
                }
            }
            let Some(conn) = self.conn.as_mut() else {
                break;
            };
            match send(conn, &lines[done..]) {
                Ok(()) => {
                    self.backoff = BACKOFF_MIN;
                    if self.down {
                        self.down = false;
                        stderr_note(format_args!("syslog {}: sending again", self.target));
                    }
                    return lines.len();
                }
                Err((went, e)) => {
                    done += went;
                    self.conn = None;
                    last_err = Some(e);
                }
            }
        }
        self.retry_at = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        if !self.down {
            self.down = true;
            let e = last_err.map_or_else(|| "unavailable".to_string(), |e| e.to_string());
            stderr_note(format_args!(
                "syslog {}: {e}; log lines are dropped (and counted) until it is back",
                self.target
            ));
        }
        done
    }
}

/// A note about the syslog target itself, on stderr (the target is down).
fn stderr_note(args: Arguments<'_>) {
    let _ = writeln!(
        io::stderr().lock(),
        "{APP_NAME}[{}]: warning: {args}",
        std::process::id()
    );
}

fn resolve(addr: &str) -> io::Result<Vec<SocketAddr>> {
    let addrs: Vec<SocketAddr> = addr.to_socket_addrs()?.collect();
    if addrs.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "host has no address",
        ));
    }
    Ok(addrs)
}

fn connect(target: &Target) -> io::Result<Conn> {
    match target {
        Target::Stderr => Ok(Conn::Stderr),
        Target::Udp(addr) => {
            let mut last = None;
            for a in resolve(addr)? {
                let local: SocketAddr = if a.is_ipv4() {
                    ([0, 0, 0, 0], 0).into()
                } else {
                    ([0u16; 8], 0).into()
                };
                let r = UdpSocket::bind(local).and_then(|s| {
                    s.connect(a)?;
                    s.set_write_timeout(Some(WRITE_TIMEOUT))?;
                    Ok(s)
                });
                match r {
                    Ok(s) => return Ok(Conn::Udp(s)),
                    Err(e) => last = Some(e),
                }
            }
            Err(last.unwrap_or_else(|| io::Error::other("no address")))
        }
        Target::Tcp(addr) => {
            let mut last = None;
            for a in resolve(addr)? {
                let r = TcpStream::connect_timeout(&a, CONNECT_TIMEOUT).and_then(|s| {
                    s.set_write_timeout(Some(WRITE_TIMEOUT))?;
                    s.set_nodelay(true)?;
                    Ok(s)
                });
                match r {
                    Ok(s) => return Ok(Conn::Tcp(s)),
                    Err(e) => last = Some(e),
                }
            }
            Err(last.unwrap_or_else(|| io::Error::other("no address")))
        }
        Target::Unix(path) => {
            let s = UnixDatagram::unbound()?;
            match s.connect(path) {
                Ok(()) => {
                    s.set_write_timeout(Some(WRITE_TIMEOUT))?;
                    Ok(Conn::UnixDgram(s))
                }
                // EPROTOTYPE: a stream socket at that path.
                Err(e) if e.raw_os_error() == Some(91) => {
                    let s = UnixStream::connect(path)?;
                    s.set_write_timeout(Some(WRITE_TIMEOUT))?;
                    Ok(Conn::UnixStream(s))
                }
                Err(e) => Err(e),
            }
        }
    }
}

/// Sends `lines` in order: one datagram each, or one write for all on a
/// stream. On an error, how many had gone (none, on a stream: a write cut
/// short may have delivered a part, which the next attempt repeats).
fn send(conn: &mut Conn, lines: &[String]) -> Result<(), (usize, io::Error)> {
    let stream = |lines: &[String], frame: fn(&[u8], &mut Vec<u8>)| {
        let mut buf = Vec::with_capacity(lines.iter().map(|l| l.len() + 8).sum());
        for l in lines {
            frame(l.as_bytes(), &mut buf);
        }
        buf
    };
    let lf = |l: &[u8], b: &mut Vec<u8>| {
        b.extend_from_slice(l);
        b.push(b'\n');
    };
    match conn {
        Conn::Stderr => io::stderr()
            .lock()
            .write_all(&stream(lines, lf))
            .map_err(|e| (0, e)),
        Conn::Udp(s) => datagrams(lines, |l| s.send(l)),
        Conn::UnixDgram(s) => datagrams(lines, |l| s.send(l)),
        Conn::UnixStream(s) => s.write_all(&stream(lines, lf)).map_err(|e| (0, e)),
        Conn::Tcp(s) => {
            if !tcp_open(s) {
                return Err((
                    0,
                    io::Error::new(
                        io::ErrorKind::ConnectionReset,
                        "server closed the connection",
                    ),
                ));
            }
            s.write_all(&stream(lines, octet_frame)).map_err(|e| (0, e))
        }
    }
}

/// One datagram per line; on an error, how many went.
fn datagrams(
    lines: &[String],
    mut send: impl FnMut(&[u8]) -> io::Result<usize>,
) -> Result<(), (usize, io::Error)> {
    for (i, l) in lines.iter().enumerate() {
        send(l.as_bytes()).map_err(|e| (i, e))?;
    }
    Ok(())
}

/// False if the server has closed the connection (a write would still
/// succeed once and lose the line).
fn tcp_open(s: &TcpStream) -> bool {
    if s.set_nonblocking(true).is_err() {
        return false;
    }
    let mut b = [0u8; 1];
    let r = s.peek(&mut b);
    if s.set_nonblocking(false).is_err() {
        return false;
    }
    match r {
        Ok(0) => false,
        Ok(_) => true,
        Err(e) => e.kind() == io::ErrorKind::WouldBlock,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::net::TcpListener;

    #[test]
    fn pace_lingers_only_on_a_steady_stream() {
        let mut p = Pace::default();
        let short = LINGER / 4;
        let long = LINGER * 3;
        for _ in 1..BUSY_STREAK {
            assert!(!p.busy(short), "a few batches in a row are not a stream");
        }
        assert!(p.busy(short));
        assert!(p.busy(Duration::ZERO), "the batch gathered while lingering");
        assert!(!p.busy(long), "a pause ends it");
        assert!(!p.busy(short));
    }

    fn leak() -> &'static Counters {
        Box::leak(Box::new(Counters::new()))
    }

    fn rec<'a>(
        kind: Option<Kind>,
        qid: Option<&'a str>,
        mid: Option<&'a str>,
        args: Arguments<'a>,
    ) -> Record<'a> {
        Record {
            severity: Severity::Info,
            kind,
            queue_id: qid,
            message_id: mid,
            sd: None,
            args,
        }
    }

    fn fmt(style: Style) -> Format {
        let mut f = Format::new(style, 2, "edge1.test");
        f.pid = 4242;
        f
    }

    /// 2026-11-22T08:46:13.632440Z
    fn t0() -> SystemTime {
        UNIX_EPOCH + Duration::new(1_795_337_173, 632_440_999)
    }

    #[test]
    fn timestamps() {
        assert_eq!(Timestamp(t0()).to_string(), "2026-11-22T08:46:13.632440Z");
        assert_eq!(
            Timestamp(UNIX_EPOCH).to_string(),
            "1970-01-01T00:00:00.000000Z"
        );
        // 2000-02-29 and 2100-03-01 (not a leap year).
        let d = |days: u64| UNIX_EPOCH + Duration::from_secs(days * 86_400 + 86_399);
        assert_eq!(
            Timestamp(d(11_016)).to_string(),
            "2000-02-29T23:59:59.000000Z"
        );
        assert_eq!(
            Timestamp(d(47_541)).to_string(),
            "2100-03-01T23:59:59.000000Z"
        );
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn rfc5424_event() {
        let f = fmt(Style::Rfc5424);
        let l = f.line(
            &rec(
                Some(Kind::Receive),
                Some("0123ABCD"),
                Some("<a\"b\\c]d@x>"),
                format_args!("from=<a@b> size={}", 12),
            ),
            t0(),
        );
        assert_eq!(
            l,
            "<22>1 2026-11-22T08:46:13.632440Z edge1.test sluice 4242 RECEIVE \
             [sluice@32473 qid=\"0123ABCD\" msgid=\"<a\\\"b\\\\c\\]d@x>\"] from=<a@b> size=12"
        );
    }

    #[test]
    fn rfc5424_absent_parts() {
        let f = fmt(Style::Rfc5424);
        let l = f.line(&rec(None, None, None, format_args!("listening")), t0());
        assert_eq!(
            l,
            "<22>1 2026-11-22T08:46:13.632440Z edge1.test sluice 4242 - - listening"
        );
        let l = f.line(
            &rec(Some(Kind::Rule), Some("Q1"), None, format_args!("x")),
            t0(),
        );
        assert!(l.ends_with(" RULE [sluice@32473 qid=\"Q1\"] x"), "{l}");
        let l = f.line(
            &rec(Some(Kind::Policy), None, None, format_args!("v1")),
            t0(),
        );
        assert!(l.ends_with(" POLICY - v1"), "{l}");
        let mut w = rec(None, None, None, format_args!("careful"));
        w.severity = Severity::Warning;
        assert!(f.line(&w, t0()).starts_with("<20>1 "));
        let h = Format::new(Style::Rfc5424, 2, "");
        assert!(h.line(&w, t0()).contains("Z - sluice "));
        let h = Format::new(Style::Rfc5424, 2, "exämple host");
        assert!(h.line(&w, t0()).contains("Z ex_mple_host sluice "));
    }

    #[test]
    fn pri_and_facilities() {
        let mut w = rec(None, None, None, format_args!("w"));
        w.severity = Severity::Warning;
        let i = rec(None, None, None, format_args!("i"));
        for (name, code) in [
            ("user", 1),
            ("mail", 2),
            ("daemon", 3),
            ("local0", 16),
            ("local7", 23),
        ] {
            let fac = parse_facility(name).unwrap();
            assert_eq!(fac, code);
            let f = Format::new(Style::Rfc5424, fac, "h");
            assert!(f
                .line(&i, t0())
                .starts_with(&format!("<{}>1 ", code * 8 + 6)));
            assert!(f
                .line(&w, t0())
                .starts_with(&format!("<{}>1 ", code * 8 + 4)));
        }
        assert!(parse_facility("kernel").is_err());
        assert!(parse_facility("local8").is_err());
    }

    #[test]
    fn local_and_plain_styles() {
        let ev = rec(
            Some(Kind::Route),
            Some("Q1"),
            Some("<m@x>"),
            format_args!("to=<a@b>"),
        );
        let f = fmt(Style::Local);
        assert_eq!(
            f.line(&ev, t0()),
            "<22>sluice[4242]: ROUTE [sluice@32473 qid=\"Q1\" msgid=\"<m@x>\"] to=<a@b>"
        );
        assert_eq!(
            f.line(&rec(None, None, None, format_args!("stopped")), t0()),
            "<22>sluice[4242]: stopped"
        );
        let f = fmt(Style::Plain);
        assert_eq!(
            f.line(&ev, t0()),
            "sluice[4242]: ROUTE qid=Q1 msgid=<m@x> to=<a@b>"
        );
        let mut w = rec(None, None, None, format_args!("disk low"));
        w.severity = Severity::Warning;
        assert_eq!(f.line(&w, t0()), "sluice[4242]: warning: disk low");
    }

    #[test]
    fn control_characters_and_length() {
        let f = fmt(Style::Rfc5424);
        let l = f.line(
            &rec(
                Some(Kind::Rule),
                Some("Q\n1"),
                None,
                format_args!("subject=a\r\nX-Evil: 1\tend\u{7f}"),
            ),
            t0(),
        );
        assert!(!l.contains(['\r', '\n', '\t', '\u{7f}']), "{l}");
        assert!(l.contains("qid=\"Q#0121\""), "{l}");
        assert!(l.ends_with("subject=a#015#012X-Evil: 1#011end#177"), "{l}");
        let long = "é".repeat(10_000);
        let l = f.line(
            &rec(Some(Kind::Rule), Some(&long), None, format_args!("{long}")),
            t0(),
        );
        assert!(l.len() <= MAX_LINE, "{}", l.len());
        assert!(l.contains(&format!("qid=\"{}\"]", "é".repeat(MAX_SD_VALUE / 2))));
    }

    #[test]
    fn targets() {
        assert_eq!(parse_target("stderr").unwrap(), Target::Stderr);
        assert_eq!(
            parse_target("unix:/dev/log").unwrap(),
            Target::Unix("/dev/log".into())
        );
        assert_eq!(
            parse_target("udp:127.0.0.1:514").unwrap(),
            Target::Udp("127.0.0.1:514".into())
        );
        assert_eq!(
            parse_target("tcp:[::1]:601").unwrap(),
            Target::Tcp("[::1]:601".into())
        );
        assert_eq!(
            parse_target("tcp:logs.example:601").unwrap(),
            Target::Tcp("logs.example:601".into())
        );
        for bad in [
            "",
            "unix:",
            "udp:",
            "udp:host",
            "udp:host:0",
            "udp:host:x",
            "udp::514",
            "tcp:::1:514",
            "file:/x",
            "/dev/log",
            "udp:h:70000",
        ] {
            assert!(parse_target(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_target("udp:h:1").unwrap().style(), Style::Rfc5424);
        assert_eq!(parse_target("unix:/x").unwrap().style(), Style::Local);
        assert_eq!(parse_target("stderr").unwrap().style(), Style::Plain);
    }

    #[test]
    fn octet_counting() {
        let framed = |l: &[u8]| {
            let mut out = Vec::new();
            octet_frame(l, &mut out);
            out
        };
        assert_eq!(framed(b"<22>1 - - - - - - x"), b"19 <22>1 - - - - - - x");
        assert_eq!(framed("é".as_bytes()), "2 é".as_bytes());
        assert_eq!(framed(b""), b"0 ");
        // A batch is the frames one after the other.
        let mut two = Vec::new();
        octet_frame(b"a", &mut two);
        octet_frame(b"bc", &mut two);
        assert_eq!(two, b"1 a2 bc");
    }

    #[test]
    fn a_batch_is_one_write_on_a_stream_and_a_datagram_per_line() {
        let lines: Vec<String> = ["one", "two", "three"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (a, mut b) = UnixStream::pair().unwrap();
        let mut conn = Conn::UnixStream(a);
        assert!(send(&mut conn, &lines).is_ok());
        drop(conn);
        let mut got = String::new();
        std::io::Read::read_to_string(&mut b, &mut got).unwrap();
        assert_eq!(got, "one\ntwo\nthree\n");

        let (a, b) = UnixDatagram::pair().unwrap();
        let mut conn = Conn::UnixDgram(a);
        assert!(send(&mut conn, &lines).is_ok());
        let mut buf = [0u8; 64];
        for want in &lines {
            let n = b.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], want.as_bytes());
        }
        // With the peer gone nothing goes, and the error says how much did.
        drop(b);
        let Err((went, _)) = send(&mut conn, &lines) else {
            panic!("sending to a closed peer succeeded");
        };
        assert_eq!(went, 0);
    }

    #[test]
    fn clean_copies_plain_runs_and_escapes_the_rest_within_its_room() {
        // The character-at-a-time definition, to compare with.
        fn reference(s: &str, room: usize, sd: bool) -> String {
            let mut out = String::new();
            let mut left = room;
            for c in s.chars() {
                let t = if c.is_ascii_control() {
                    format!("#{:03o}", c as u32)
                } else if sd && matches!(c, '"' | '\\' | ']') {
                    format!("\\{c}")
                } else {
                    c.to_string()
                };
                if t.len() > left {
                    break;
                }
                left -= t.len();
                out.push_str(&t);
            }
            out
        }
        let inputs = [
            "plain text",
            "a\r\nX-Evil: 1\tend\u{7f}",
            "quote \" back \\ bracket ] done",
            "caf\u{e9} \u{1F600} na\u{ef}ve",
            "",
            "\u{0}\u{1}",
        ];
        for s in inputs {
            for sd in [false, true] {
                for room in 0..s.len() + 8 {
                    let mut out = String::new();
                    let _ = Clean::new(&mut out, room, sd).write_str(s);
                    assert_eq!(out, reference(s, room, sd), "{s:?} room {room} sd {sd}");
                }
            }
        }
        // Two writes share the room.
        let mut out = String::new();
        let mut c = Clean::new(&mut out, 6, false);
        let _ = c.write_str("abcd");
        let _ = c.write_str("\u{e9}\u{e9}");
        assert_eq!(out, "abcd\u{e9}");
    }

    /// Reads RFC 6587 octet-counted frames.
    fn read_frame(r: &mut impl BufRead) -> Option<String> {
        let mut len = Vec::new();
        r.read_until(b' ', &mut len).ok()?;
        if len.is_empty() {
            return None;
        }
        let n: usize = std::str::from_utf8(&len[..len.len() - 1])
            .ok()?
            .parse()
            .ok()?;
        let mut msg = vec![0; n];
        r.read_exact(&mut msg).ok()?;
        Some(String::from_utf8(msg).unwrap())
    }

    fn ev(l: &Logger, qid: &str, text: &str) {
        l.log(&rec(
            Some(Kind::Receive),
            Some(qid),
            None,
            format_args!("{text}"),
        ));
    }

    #[test]
    fn full_queue_drops_and_reports() {
        let rx_sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx_sock
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let target = Target::Udp(rx_sock.local_addr().unwrap().to_string());
        let c = leak();
        let (l, w, rx) = Logger::channel(target, fmt(Style::Rfc5424), 2, c);
        // The writer is not running: the third and later lines are dropped,
        // at once.
        let start = Instant::now();
        for i in 0..1000 {
            ev(&l, "Q1", &format!("line {i}"));
        }
        assert!(start.elapsed() < Duration::from_secs(1));
        assert_eq!(c.stats(), (0, 998));
        std::thread::spawn(move || w.run(&rx));
        let mut got = Vec::new();
        let mut buf = [0u8; 9000];
        for _ in 0..3 {
            let n = rx_sock.recv(&mut buf).unwrap();
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        assert!(got[0].starts_with("<20>1 "), "{got:?}");
        assert!(
            got[0].ends_with(" sluice 4242 - - 998 log messages dropped"),
            "{got:?}"
        );
        assert!(got[1].ends_with("] line 0"), "{got:?}");
        assert!(got[2].ends_with("] line 1"), "{got:?}");
        assert!(l.flush(Duration::from_secs(5)));
        assert_eq!(c.stats(), (3, 998));
    }

    #[test]
    fn a_steady_stream_arrives_whole_and_in_order() {
        // 20,000 lines a second: the writer lingers between batches, and
        // no line is lost or reordered for it.
        let srv = TcpListener::bind("127.0.0.1:0").unwrap();
        let target = Target::Tcp(srv.local_addr().unwrap().to_string());
        let c = leak();
        let l = Logger::start(target, fmt(Style::Rfc5424), QUEUE_LINES, c).unwrap();
        let n = 3000;
        let reader = std::thread::spawn(move || {
            let (s, _) = srv.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut r = BufReader::new(s);
            (0..n)
                .map(|_| read_frame(&mut r).unwrap())
                .collect::<Vec<_>>()
        });
        for i in 0..n {
            ev(&l, "Q1", &format!("line {i}"));
            std::thread::sleep(Duration::from_micros(50));
        }
        assert!(l.flush(Duration::from_secs(10)));
        let got = reader.join().unwrap();
        for (i, line) in got.iter().enumerate() {
            assert!(line.ends_with(&format!("] line {i}")), "{i}: {line}");
        }
        assert_eq!(c.stats(), (n as u64, 0));
    }

    #[test]
    fn tcp_octet_counting_and_reconnect() {
        let srv = TcpListener::bind("127.0.0.1:0").unwrap();
        let target = Target::Tcp(srv.local_addr().unwrap().to_string());
        let c = leak();
        let l = Logger::start(target, fmt(Style::Rfc5424), 64, c).unwrap();
        ev(&l, "Q1", "first");
        ev(&l, "Q1", "with\nnewline and \u{e9}");
        let (s, _) = srv.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut r = BufReader::new(s);
        let a = read_frame(&mut r).unwrap();
        let b = read_frame(&mut r).unwrap();
        assert!(
            a.starts_with("<22>1 ") && a.ends_with("[sluice@32473 qid=\"Q1\"] first"),
            "{a}"
        );
        assert!(b.ends_with("] with#012newline and \u{e9}"), "{b}");
        assert!(l.flush(Duration::from_secs(5)));
        // The server goes away and comes back on the same port: the writer
        // notices the closed connection and reconnects.
        drop(r);
        std::thread::sleep(Duration::from_millis(100));
        ev(&l, "Q2", "after reconnect");
        let (s, _) = srv.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut r = BufReader::new(s);
        let a = read_frame(&mut r).unwrap();
        assert!(a.ends_with("qid=\"Q2\"] after reconnect"), "{a}");
        assert!(l.flush(Duration::from_secs(5)));
        assert_eq!(c.stats(), (3, 0));
    }

    #[test]
    fn tcp_server_absent_then_back() {
        // A port with nothing listening.
        let port = {
            let s = TcpListener::bind("127.0.0.1:0").unwrap();
            s.local_addr().unwrap().port()
        };
        let c = leak();
        let l = Logger::start(
            Target::Tcp(format!("127.0.0.1:{port}")),
            fmt(Style::Rfc5424),
            64,
            c,
        )
        .unwrap();
        let start = Instant::now();
        for i in 0..10 {
            ev(&l, "Q1", &format!("lost {i}"));
        }
        assert!(start.elapsed() < Duration::from_millis(500));
        assert!(l.flush(Duration::from_secs(5)));
        assert_eq!(c.stats(), (0, 10));
        let srv = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut r = None;
        srv.set_nonblocking(true).unwrap();
        while r.is_none() && Instant::now() < deadline {
            ev(&l, "Q2", "again");
            std::thread::sleep(Duration::from_millis(100));
            if let Ok((s, _)) = srv.accept() {
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                r = Some(BufReader::new(s));
            }
        }
        let mut r = r.expect("the writer reconnected");
        let first = read_frame(&mut r).unwrap();
        let m = first.rsplit_once("- - ").unwrap().1;
        let n: u64 = m
            .strip_suffix(" log messages dropped")
            .unwrap()
            .parse()
            .unwrap();
        assert!(n >= 10, "{first}");
        let next = read_frame(&mut r).unwrap();
        assert!(next.ends_with("qid=\"Q2\"] again"), "{next}");
    }

    #[test]
    fn unix_missing_socket_then_present() {
        let dir = std::env::temp_dir().join(format!("sluice-log-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log");
        let c = leak();
        let l = Logger::start(Target::Unix(path.clone()), fmt(Style::Local), 64, c).unwrap();
        ev(&l, "Q1", "nobody listens");
        assert!(l.flush(Duration::from_secs(5)));
        assert_eq!(c.stats(), (0, 1));
        let srv = UnixDatagram::bind(&path).unwrap();
        srv.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut got = Vec::new();
        let mut buf = [0u8; 9000];
        while got.len() < 2 && Instant::now() < deadline {
            ev(&l, "Q2", "here");
            while let Ok(n) = srv.recv(&mut buf) {
                got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
        assert!(got.len() >= 2, "{got:?}");
        assert!(
            got[0].starts_with("<20>sluice[4242]: ") && got[0].ends_with(" log messages dropped"),
            "{got:?}"
        );
        assert_eq!(
            got[1],
            "<22>sluice[4242]: RECEIVE [sluice@32473 qid=\"Q2\"] here"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn stuck_unix_receiver_never_blocks_callers() {
        // A syslog daemon that stopped reading: after net.unix.max_dgram_qlen
        // datagrams the writer's send blocks (until its write timeout).
        let dir = std::env::temp_dir().join(format!("sluice-log-stuck-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log");
        let srv = UnixDatagram::bind(&path).unwrap();
        let c = leak();
        let l = Logger::start(Target::Unix(path), fmt(Style::Local), 8, c).unwrap();
        let start = Instant::now();
        for i in 0..5000 {
            ev(&l, "Q1", &format!("line {i}"));
        }
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{:?}",
            start.elapsed()
        );
        let (sent, dropped) = c.stats();
        assert!(dropped >= 4000, "sent {sent} dropped {dropped}");
        drop(srv);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn init_rejects_bad_config() {
        assert!(init("file:/x", "mail", "h").is_err());
        assert!(init("stderr", "kernel", "h").is_err());
        assert!(LOGGER.get().is_none());
    }

    /// A driver for trying the module against a real syslog server by
    /// hand: `SLUICE_LOG_TARGET=udp:127.0.0.1:5514 cargo test --lib
    /// log::tests::driver -- --ignored`.
    #[test]
    #[ignore]
    fn driver() {
        let target = std::env::var("SLUICE_LOG_TARGET").unwrap_or_else(|_| "stderr".into());
        init(&target, "mail", "edge1.test").unwrap();
        let mid = Some("<life@client.test>");
        info(format_args!("listening on 127.0.0.1:25"));
        event(
            Kind::Receive,
            Some("0001"),
            mid,
            format_args!("from=<a@client.test> size=10"),
        );
        event(
            Kind::Rule,
            Some("0001"),
            mid,
            format_args!("rule 1 \"x\" matched"),
        );
        event(
            Kind::Route,
            Some("0001"),
            mid,
            format_args!("to=<b@example.test> mx:example.test"),
        );
        event(
            Kind::Defer,
            Some("0001"),
            mid,
            format_args!("to=<b@example.test> 451 later"),
        );
        event(
            Kind::Send,
            Some("0001"),
            mid,
            format_args!("to=<b@example.test> 250 ok"),
        );
        warn(format_args!("spool is filling"));
        assert!(flush(Duration::from_secs(5)));
        eprintln!("stats {:?}", stats());
    }
}
