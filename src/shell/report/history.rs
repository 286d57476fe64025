//! The daemon's mail-flow history: per UTC day, for each recipient domain
//! (as addressed) and location (the domain after inbound rewriting), the
//! messages, bytes and redirected messages it accepted.
//!
//! Counting ([`record`]) takes one short mutex hold per accepted message
//! (a few map updates, no I/O); a background thread writes the days that
//! changed every `[report] flush_interval`, and [`flush`] runs once more at
//! shutdown. Each day is one file `history/YYYY-MM-DD.day` in the state
//! directory, written atomically (temporary file, fsync, rename, fsync of
//! the directory) and closed by a CRC-32, so a torn or altered file is
//! detected ([`decode`]) and skipped by the report, never trusted.
//!
//! File format (all integers unsigned LEB128 varints):
//! `"SLUHIST1"`, day (days since 1970-01-01), row count, then per row
//! domain length + octets, location length + octets, messages, bytes,
//! redirected; then the CRC-32 (ISO-HDLC) of everything before it, 4 octets
//! little-endian. About 30 + the two names' lengths octets per row.

use crate::shell::ops::log;
use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// Days kept on disk; older files are removed at each flush (a year and
/// a month, so a report can compare a month with the same month last year).
pub const MAX_DAYS: u32 = 400;
/// Rows (domain, location pairs) kept per day; later new pairs are added
/// to the [`OTHER`] row. Mail to a company's locations has a handful of
/// destinations; outbound mail to the whole Internet would have thousands,
/// which would make the day unbounded in memory and on disk. 256 rows of
/// ~50 octets keep a day under 13 KiB and 400 days under 5.2 MiB.
pub const MAX_DESTINATIONS_PER_DAY: usize = 256;
/// The domain and location of the row that takes what the cap left out.
pub const OTHER: &str = "(other)";
/// Longest name stored; a longer one (not a valid domain) counts as other.
const MAX_NAME: usize = 255;
/// The history files' directory under the state directory.
pub const DIR: &str = "history";
/// The first octets of a history file (format version 1).
const MAGIC: &[u8; 8] = b"SLUHIST1";
/// The file checksum.
const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

/// What is counted for one (domain, location) pair.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Accepted messages with at least one recipient there.
    pub messages: u64,
    /// Their size in octets (once per message).
    pub bytes: u64,
    /// Of those, the messages rewritten to a location not this relay's.
    pub redirected: u64,
}

impl Counts {
    /// Adds `o` to these counts.
    pub fn add(&mut self, o: &Counts) {
        self.messages += o.messages;
        self.bytes += o.bytes;
        self.redirected += o.redirected;
    }
}

/// One day's counts: recipient domain → location → counts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Day {
    /// The counts, ordered (so a file's octets depend only on its counts).
    pub rows: BTreeMap<String, BTreeMap<String, Counts>>,
    /// Number of (domain, location) rows.
    pub len: usize,
}

impl Day {
    /// Adds counts to a row, or to the [`OTHER`] row when the day is full
    /// or a name is too long.
    pub fn add(&mut self, domain: &str, location: &str, c: &Counts) {
        // The common case first: a row already there (two map lookups).
        if let Some(x) = self.rows.get_mut(domain).and_then(|m| m.get_mut(location)) {
            x.add(c);
            return;
        }
        let fits = domain.len() <= MAX_NAME && location.len() <= MAX_NAME;
        let has_other = self.rows.get(OTHER).is_some_and(|m| m.contains_key(OTHER));
        let named = self.len - usize::from(has_other);
        let (d, l) = if fits && named < MAX_DESTINATIONS_PER_DAY {
            (domain, location)
        } else {
            (OTHER, OTHER)
        };
        let inner = match self.rows.get_mut(d) {
            Some(m) => m,
            None => self.rows.entry(d.to_string()).or_default(),
        };
        match inner.get_mut(l) {
            Some(x) => x.add(c),
            None => {
                inner.insert(l.to_string(), *c);
                self.len += 1;
            }
        }
    }

    /// Every row as (domain, location, counts).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str, &Counts)> {
        self.rows
            .iter()
            .flat_map(|(d, m)| m.iter().map(move |(l, c)| (d.as_str(), l.as_str(), c)))
    }
}

/// Appends `v` as an unsigned LEB128 varint.
fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// The file for day `day` with these counts.
pub fn encode(day: u32, d: &Day) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + d.len * 40);
    out.extend_from_slice(MAGIC);
    put_varint(&mut out, u64::from(day));
    put_varint(&mut out, d.len as u64);
    for (dom, loc, c) in d.iter() {
        for name in [dom, loc] {
            put_varint(&mut out, name.len() as u64);
            out.extend_from_slice(name.as_bytes());
        }
        for v in [c.messages, c.bytes, c.redirected] {
            put_varint(&mut out, v);
        }
    }
    let sum = CRC.checksum(&out);
    out.extend_from_slice(&sum.to_le_bytes());
    out
}

/// A reader over a file's body.
struct Cursor<'a> {
    data: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    /// The next varint.
    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.data.get(self.at).ok_or("ends inside a number")?;
            self.at += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err("a number is too long".into())
    }

    /// The next length-prefixed name.
    fn name(&mut self) -> Result<String, String> {
        let n = usize::try_from(self.varint()?).map_err(|_| "a name is too long")?;
        if n > MAX_NAME {
            return Err(format!("a name of {n} octets (at most {MAX_NAME})"));
        }
        let end = self.at.checked_add(n).ok_or("a name is too long")?;
        let b = self.data.get(self.at..end).ok_or("ends inside a name")?;
        self.at = end;
        String::from_utf8(b.to_vec()).map_err(|_| "a name is not UTF-8".to_string())
    }
}

/// Reads a history file: its day and counts, or why it cannot be trusted
/// (wrong magic, truncated, checksum mismatch, malformed rows).
pub fn decode(data: &[u8]) -> Result<(u32, Day), String> {
    if data.len() < MAGIC.len() + 4 {
        return Err(format!("truncated ({} octets)", data.len()));
    }
    if &data[..MAGIC.len()] != MAGIC {
        return Err("not a sluice history file (bad magic)".into());
    }
    let (body, sum) = data.split_at(data.len() - 4);
    let want = u32::from_le_bytes([sum[0], sum[1], sum[2], sum[3]]);
    if CRC.checksum(body) != want {
        return Err("checksum mismatch (truncated or damaged)".into());
    }
    let mut c = Cursor {
        data: body,
        at: MAGIC.len(),
    };
    let day = u32::try_from(c.varint()?).map_err(|_| "day out of range")?;
    let n = c.varint()?;
    if n > MAX_DESTINATIONS_PER_DAY as u64 + 1 {
        return Err(format!("{n} rows (at most {MAX_DESTINATIONS_PER_DAY})"));
    }
    let mut d = Day::default();
    for _ in 0..n {
        let dom = c.name()?;
        let loc = c.name()?;
        let counts = Counts {
            messages: c.varint()?,
            bytes: c.varint()?,
            redirected: c.varint()?,
        };
        d.add(&dom, &loc, &counts);
    }
    if c.at != body.len() {
        return Err("octets after the last row".into());
    }
    Ok((day, d))
}

/// `YYYY-MM-DD` of a day number.
pub fn date(day: u32) -> String {
    let (y, m, d) = crate::shell::time::civil_from_days(i64::from(day));
    format!("{y:04}-{m:02}-{d:02}")
}

/// The day number of `YYYY-MM-DD` (H. Hinnant's `days_from_civil`), if it
/// is a date from 1970 on.
pub fn parse_date(s: &str) -> Option<u32> {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    u32::try_from(era * 146_097 + doe - 719_468).ok()
}

/// The file name of a day.
fn file_name(day: u32) -> String {
    format!("{}.day", date(day))
}

/// Today's day number (UTC).
pub fn today() -> u32 {
    u32::try_from(crate::shell::time::now_secs() / 86_400).unwrap_or(0)
}

/// A file the report could not use, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Skipped {
    /// The file.
    pub file: PathBuf,
    /// Why it was skipped.
    pub reason: String,
}

/// The days `first..=last` found under `state_dir`, and the files in that
/// range (or not named as a day) that could not be read.
pub fn load(state_dir: &Path, first: u32, last: u32) -> (BTreeMap<u32, Day>, Vec<Skipped>) {
    let dir = state_dir.join(DIR);
    let mut days = BTreeMap::new();
    let mut skipped = Vec::new();
    let Ok(entries) = fs::read_dir(&dir) else {
        return (days, skipped);
    };
    let mut names: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    names.sort();
    for path in names {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with('.') {
            continue; // a flush in progress
        }
        let Some(day) = name
            .strip_suffix(".day")
            .or_else(|| name.strip_suffix(".day.damaged"))
            .and_then(parse_date)
        else {
            continue;
        };
        if day < first || day > last {
            continue;
        }
        if name.ends_with(".damaged") {
            skipped.push(Skipped {
                file: path.clone(),
                reason: "set aside by the daemon as damaged".into(),
            });
            continue;
        }
        match fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| decode(&b))
        {
            Ok((d, _)) if d != day => skipped.push(Skipped {
                file: path.clone(),
                reason: format!("holds day {} under another name", date(d)),
            }),
            Ok((_, counts)) => {
                days.insert(day, counts);
            }
            Err(reason) => skipped.push(Skipped { file: path, reason }),
        }
    }
    (days, skipped)
}

/// Writes `data` to `dir/name` atomically and durably.
fn write_atomic(dir: &Path, name: &str, data: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, dir.join(name))?;
    fs::File::open(dir)?.sync_all()
}

/// The daemon's counters and where they go.
struct Recorder {
    /// `state_dir/history`.
    dir: PathBuf,
    /// `[report] local_domains`, lower case: this relay's locations.
    local: Vec<String>,
    /// Days counted and not yet written (`dirty`) or still current.
    days: Mutex<BTreeMap<u32, (Day, bool)>>,
}

/// The daemon's recorder, once [`start`] ran.
static RECORDER: OnceLock<Recorder> = OnceLock::new();

/// Starts counting (the daemon, once): loads today's file to go on from
/// it (a damaged one is renamed `….damaged`, a warning logged, and today
/// starts from zero) and starts the flush thread.
pub fn start(state_dir: &Path, local_domains: &[String], every: Duration) -> Result<(), String> {
    let dir = state_dir.join(DIR);
    fs::create_dir_all(&dir).map_err(|e| format!("history {}: {e}", dir.display()))?;
    let today = today();
    let path = dir.join(file_name(today));
    let mut days = BTreeMap::new();
    match fs::read(&path) {
        Ok(b) => match decode(&b) {
            Ok((d, counts)) if d == today => {
                days.insert(today, (counts, false));
            }
            other => {
                let why = other.err().unwrap_or_else(|| "holds another day".into());
                let aside = dir.join(format!("{}.damaged", file_name(today)));
                let _ = fs::rename(&path, &aside);
                log::warn(format_args!(
                    "history: {} is damaged ({why}): set aside as {}; today's counts start from zero",
                    path.display(),
                    aside.display()
                ));
            }
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => log::warn(format_args!("history: {}: {e}", path.display())),
    }
    let rec = Recorder {
        dir,
        local: local_domains
            .iter()
            .map(|d| d.to_ascii_lowercase())
            .collect(),
        days: Mutex::new(days),
    };
    if RECORDER.set(rec).is_err() {
        return Ok(()); // already running (tests start more than one daemon)
    }
    std::thread::Builder::new()
        .name("history".into())
        .spawn(move || loop {
            std::thread::sleep(every);
            flush();
        })
        .map(|_| ())
        .map_err(|e| format!("history thread: {e}"))
}

/// The domain of an address (after the last `@`), lower case.
pub fn domain_of(addr: &str) -> String {
    let a = addr.trim_start_matches('<').trim_end_matches('>');
    a.rsplit_once('@')
        .map_or(a, |(_, d)| d)
        .to_ascii_lowercase()
}

/// Whether a recipient addressed to `domain` and rewritten to `location`
/// is redirected: rewritten to a domain that is none of `[report]
/// local_domains` (always false before [`start`], or with none listed).
pub fn is_redirected(domain: &str, location: &str) -> bool {
    RECORDER.get().is_some_and(|r| {
        !r.local.is_empty()
            && !domain.eq_ignore_ascii_case(location)
            && !r.local.iter().any(|l| l.eq_ignore_ascii_case(location))
    })
}

/// The (domain, location) pairs of a message's accepted recipients, from
/// (original address, final address, accepted).
pub fn pairs<'a>(rcpts: impl Iterator<Item = (&'a str, &'a str, bool)>) -> Vec<(String, String)> {
    rcpts
        .filter(|(_, _, ok)| *ok)
        .map(|(o, f, _)| (domain_of(o), domain_of(f)))
        .collect()
}

/// [`is_redirected`] for a recipient's original and final addresses.
pub fn redirected_addr(original: &str, final_addr: &str) -> bool {
    is_redirected(&domain_of(original), &domain_of(final_addr))
}

/// Counts one accepted message of `bytes` octets for its recipients'
/// (domain, location) pairs (each pair once). Nothing before [`start`].
pub fn record(pairs: &[(String, String)], bytes: u64) {
    let Some(r) = RECORDER.get() else {
        return;
    };
    let mut seen: Vec<&(String, String)> = Vec::with_capacity(pairs.len());
    for p in pairs {
        if !seen.contains(&p) {
            seen.push(p);
        }
    }
    let counts: Vec<Counts> = seen
        .iter()
        .map(|(dom, loc)| Counts {
            messages: 1,
            bytes,
            redirected: u64::from(is_redirected(dom, loc)),
        })
        .collect();
    let day = today();
    // The only lock on the accept path: held for these map updates alone.
    let mut days = match r.days.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    let (d, dirty) = days.entry(day).or_default();
    *dirty = true;
    for ((dom, loc), c) in seen.iter().zip(&counts) {
        d.add(dom, loc, c);
    }
}

/// Writes every day that changed since the last flush; forgets the past
/// days once written and removes files older than [`MAX_DAYS`]. A write
/// error is logged and retried at the next flush.
pub fn flush() {
    let Some(r) = RECORDER.get() else {
        return;
    };
    let today = today();
    // Encode under the lock (no I/O there), write after it.
    let files: Vec<(u32, Vec<u8>)> = {
        let mut days = match r.days.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let out = days
            .iter_mut()
            .filter(|(_, (_, dirty))| *dirty)
            .map(|(day, (d, dirty))| {
                *dirty = false;
                (*day, encode(*day, d))
            })
            .collect();
        days.retain(|day, _| *day >= today);
        out
    };
    for (day, bytes) in files {
        if let Err(e) = write_atomic(&r.dir, &file_name(day), &bytes) {
            log::warn(format_args!(
                "history: writing {}: {e}",
                r.dir.join(file_name(day)).display()
            ));
            if let Ok(mut days) = r.days.lock() {
                if let Ok((_, d)) = decode(&bytes) {
                    days.entry(day).or_insert((d, true));
                }
            }
        }
    }
    prune(&r.dir, today);
}

/// Removes day files older than [`MAX_DAYS`] before `today`.
fn prune(dir: &Path, today: u32) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        let day = name.split('.').next().and_then(parse_date);
        if day.is_some_and(|d| d + MAX_DAYS <= today) {
            let _ = fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(m: u64, b: u64, r: u64) -> Counts {
        Counts {
            messages: m,
            bytes: b,
            redirected: r,
        }
    }

    #[test]
    fn round_trip() {
        let mut d = Day::default();
        d.add("contoso.com", "us.contoso.com", &c(7, 700, 0));
        d.add("contoso.com", "eu.contoso.com", &c(3, 300, 3));
        d.add("contoso.com", "eu.contoso.com", &c(1, 10, 1));
        let f = encode(20_000, &d);
        let (day, back) = decode(&f).unwrap();
        assert_eq!(day, 20_000);
        assert_eq!(back, d);
        assert_eq!(back.rows["contoso.com"]["eu.contoso.com"], c(4, 310, 4));
    }

    #[test]
    fn damage_is_detected() {
        let mut d = Day::default();
        d.add("a.test", "b.test", &c(1, 2, 0));
        let f = encode(1, &d);
        for cut in 0..f.len() {
            assert!(decode(&f[..cut]).is_err(), "cut at {cut}");
        }
        for i in 0..f.len() {
            let mut g = f.clone();
            g[i] ^= 0x10;
            assert!(decode(&g).is_err(), "flip at {i}");
        }
    }

    #[test]
    fn the_cap_fills_the_other_row() {
        let mut d = Day::default();
        for i in 0..MAX_DESTINATIONS_PER_DAY + 10 {
            d.add(&format!("d{i}.test"), "loc.test", &c(1, 1, 0));
        }
        assert_eq!(d.len, MAX_DESTINATIONS_PER_DAY + 1);
        assert_eq!(d.rows[OTHER][OTHER], c(10, 10, 0));
        // an existing row still counts as itself
        d.add("d0.test", "loc.test", &c(1, 1, 0));
        assert_eq!(d.rows["d0.test"]["loc.test"], c(2, 2, 0));
        let (_, back) = decode(&encode(3, &d)).unwrap();
        assert!(back == d, "the full day reads back as written");
    }

    #[test]
    fn dates() {
        for day in [0u32, 11_016, 20_000, 20_792, 47_541] {
            assert_eq!(parse_date(&date(day)), Some(day));
        }
        assert_eq!(parse_date("2026-13-01"), None);
        assert_eq!(parse_date("20261201xx"), None);
        assert_eq!(domain_of("<Johnny@EU.contoso.com>"), "eu.contoso.com");
    }
}
