//! `sluice report --from-log`: the mail flow from syslog files of one or
//! several relays, read from the RECEIVE and ROUTE lines that
//! [`crate::shell::ops::log`] writes.
//!
//! Every format sluice writes is read, as it arrives in a file: RFC 5424
//! (`<PRI>1 TIMESTAMP HOST sluice PID MSGID [SD] MSG`), the local-socket
//! format as rsyslog stores it (`TIMESTAMP HOST sluice[PID]: MSGID [SD]
//! MSG`, RFC 3339 or traditional timestamps) and the stderr format
//! (`sluice[PID]: MSGID qid=Q msgid=M MSG`). A ROUTE line takes the size
//! from the RECEIVE line of the same queue id and host just before it (the
//! daemon writes them together). The day is the timestamp's date when it
//! is RFC 3339; otherwise it is unknown (day 0). Lines that are not
//! sluice's are counted as foreign; sluice's other lines are counted and
//! skipped.

use super::history::{parse_date, Counts, Day};
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read};

/// Longest line read whole: sluice's lines are at most
/// [`crate::shell::ops::log::MAX_LINE`] octets plus a syslog prefix; a
/// longer one (or a file without line ends) is foreign and is skipped
/// without holding it in memory.
const MAX_READ_LINE: u64 = 64 * 1024;

/// What reading the logs found besides the counts.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct LineStats {
    /// Lines read.
    pub read: u64,
    /// RECEIVE lines used.
    pub receive: u64,
    /// ROUTE lines counted.
    pub route: u64,
    /// ROUTE lines of refused recipients (not counted).
    pub refused: u64,
    /// ROUTE lines without their RECEIVE line (counted, size unknown: 0).
    pub unmatched: u64,
    /// sluice's other lines (SEND, RULE, lifecycle, ...).
    pub other_sluice: u64,
    /// Lines that are not sluice's, or that could not be read.
    pub foreign: u64,
}

/// The counts per day (0: date unknown) and what the reading found.
#[derive(Debug, Default)]
pub struct FromLogs {
    /// Counts per day.
    pub days: BTreeMap<u32, Day>,
    /// Line statistics.
    pub stats: LineStats,
}

/// The message a host received last: its queue id, size and the pairs its
/// ROUTE lines counted so far (a pair counts once per message).
struct Current {
    qid: String,
    size: u64,
    pairs: Vec<(String, String)>,
}

/// A sluice mail line taken apart.
struct Line<'a> {
    day: u32,
    host: &'a str,
    msgid: &'a str,
    qid: &'a str,
    text: &'a str,
}

impl FromLogs {
    /// Reads one log stream into the counts.
    pub fn read(&mut self, input: impl Read) -> std::io::Result<()> {
        let mut r = BufReader::with_capacity(1 << 20, input);
        let mut buf = Vec::with_capacity(512);
        let mut current: HashMap<String, Current> = HashMap::new();
        loop {
            buf.clear();
            let n = (&mut r).take(MAX_READ_LINE).read_until(b'\n', &mut buf)?;
            if n == 0 {
                return Ok(());
            }
            self.stats.read += 1;
            if n as u64 == MAX_READ_LINE && buf.last() != Some(&b'\n') {
                // Longer than any line sluice writes: foreign; skip to its end.
                self.stats.foreign += 1;
                loop {
                    buf.clear();
                    let k = (&mut r).take(MAX_READ_LINE).read_until(b'\n', &mut buf)?;
                    if k == 0 || buf.last() == Some(&b'\n') {
                        break;
                    }
                }
                continue;
            }
            match std::str::from_utf8(&buf) {
                Ok(s) => self.line(s.trim_end_matches(['\n', '\r']), &mut current),
                Err(_) => self.stats.foreign += 1,
            }
        }
    }

    /// Counts one line.
    fn line(&mut self, s: &str, current: &mut HashMap<String, Current>) {
        let Some(l) = split(s) else {
            self.stats.foreign += 1;
            return;
        };
        match l.msgid {
            "RECEIVE" => {
                let size = field(l.text, "size=").and_then(|v| v.parse().ok());
                self.stats.receive += 1;
                let c = Current {
                    qid: l.qid.to_string(),
                    size: size.unwrap_or(0),
                    pairs: Vec::new(),
                };
                match current.get_mut(l.host) {
                    Some(x) => *x = c,
                    None => {
                        current.insert(l.host.to_string(), c);
                    }
                }
            }
            "ROUTE" => self.route(&l, current),
            _ => self.stats.other_sluice += 1,
        }
    }

    /// Counts a ROUTE line for its message.
    fn route(&mut self, l: &Line<'_>, current: &mut HashMap<String, Current>) {
        if l.text.contains("refused=\"") {
            self.stats.refused += 1;
            return;
        }
        let (Some(to), Some(orig)) = (angle(l.text, "to=<"), angle(l.text, "orig=<")) else {
            self.stats.foreign += 1;
            return;
        };
        self.stats.route += 1;
        let pair = (
            super::history::domain_of(orig),
            super::history::domain_of(to),
        );
        let redirected = l.text.contains(" redirected=yes");
        let size = match current.get_mut(l.host) {
            Some(c) if c.qid == l.qid => {
                if c.pairs.contains(&pair) {
                    return; // the message is counted there already
                }
                c.pairs.push(pair.clone());
                c.size
            }
            _ => {
                self.stats.unmatched += 1;
                0
            }
        };
        let counts = Counts {
            messages: 1,
            bytes: size,
            redirected: u64::from(redirected),
        };
        self.days
            .entry(l.day)
            .or_default()
            .add(&pair.0, &pair.1, &counts);
    }
}

/// The value of `key` (e.g. `size=`) up to the next space.
fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let at = find_key(text, key)?;
    let v = &text[at + key.len()..];
    Some(v.split(' ').next().unwrap_or(v))
}

/// Where `key` starts in `text` at a word start.
fn find_key(text: &str, key: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = text[from..].find(key) {
        let at = from + i;
        if at == 0 || text.as_bytes()[at - 1] == b' ' {
            return Some(at);
        }
        from = at + key.len();
    }
    None
}

/// The address in `key…>` (e.g. `to=<a@b>`).
fn angle<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let at = find_key(text, key)? + key.len();
    let end = text[at..].find('>')?;
    Some(&text[at..at + end])
}

/// Takes a line apart, if it is a sluice line with a MSGID.
fn split(s: &str) -> Option<Line<'_>> {
    // The first words (no allocation: this runs for every line of the logs).
    let mut words = [(0usize, ""); 8];
    let mut n = 0;
    let mut at = 0;
    for t in s.split(' ') {
        if n == words.len() {
            break;
        }
        if !t.is_empty() {
            words[n] = (at, t);
            n += 1;
        }
        at += t.len() + 1;
    }
    let toks = &words[..n];
    let first = toks.first()?.1;
    // `<PRI>` glued to the first token (RFC 5424's `<PRI>1`, local `<PRI>sluice[`)
    let first = first
        .strip_prefix('<')
        .and_then(|r| r.split_once('>'))
        .map_or(first, |(_, rest)| rest);
    // RFC 5424 puts the version `1` before the timestamp.
    let stamp = if first == "1" {
        toks.get(1).map_or("", |t| t.1)
    } else {
        first
    };
    let day = stamp.get(..10).and_then(parse_date).unwrap_or(0);
    let (i, app) = toks.iter().enumerate().find_map(|(i, &(_, t))| {
        let t: &str = if i == 0 { first } else { t };
        let app =
            t == "sluice" || (t.starts_with("sluice[") && t.ends_with("]:")) || t == "sluice:";
        app.then_some((i, t))
    })?;
    // RFC 5424: HOST APP PROCID MSGID; the others: HOST APP[PID]: MSGID.
    let m = if app == "sluice" { i + 2 } else { i + 1 };
    let (mpos, msgid) = *toks.get(m)?;
    // A lifecycle line (MSGID `-`, or none in the stderr form).
    let mail = msgid.bytes().all(|b| b.is_ascii_uppercase());
    let host = if i >= 1 { toks[i - 1].1 } else { "-" };
    if !mail {
        return Some(Line {
            day,
            host,
            msgid: "-",
            qid: "",
            text: "",
        });
    }
    let rest = &s[mpos + msgid.len()..].trim_start();
    let (qid, text) = ids(rest);
    Some(Line {
        day,
        host,
        msgid,
        qid,
        text,
    })
}

/// The queue id and the message text after the structured data
/// (`[sluice@32473 qid="Q" ...] MSG`, `- MSG`) or the stderr form
/// (`qid=Q msgid=M MSG`).
fn ids(rest: &str) -> (&str, &str) {
    if let Some(sd) = rest.strip_prefix('[') {
        let b = sd.as_bytes();
        let mut end = None;
        let mut k = 0;
        while k < b.len() {
            match b[k] {
                b'\\' => k += 1,
                b']' => {
                    end = Some(k);
                    break;
                }
                _ => {}
            }
            k += 1;
        }
        let Some(end) = end else {
            return ("", rest);
        };
        let inner = &sd[..end];
        let qid = inner
            .find("qid=\"")
            .and_then(|q| {
                let v = &inner[q + 5..];
                v.find('"').map(|e| &v[..e])
            })
            .unwrap_or("");
        return (qid, sd[end + 1..].trim_start());
    }
    if let Some(r) = rest.strip_prefix("- ") {
        return ("", r);
    }
    let mut text = rest;
    let mut qid = "";
    if let Some(r) = text.strip_prefix("qid=") {
        let (q, r) = r.split_once(' ').unwrap_or((r, ""));
        qid = q;
        text = r;
    }
    if let Some(r) = text.strip_prefix("msgid=") {
        text = r.split_once(' ').map_or("", |(_, r)| r);
    }
    (qid, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> FromLogs {
        let mut f = FromLogs::default();
        f.read(text.as_bytes()).unwrap();
        f
    }

    #[test]
    fn every_format_is_read() {
        let f = read(concat!(
            "<22>1 2026-11-22T08:46:13.632440Z us1 sluice 42 RECEIVE [sluice@32473 qid=\"Q1\" msgid=\"<a\\]b>\"] from=<a@x> rcpts=2 size=100 peer=1.2.3.4:5 tls=false result=NoAction\n",
            "<22>1 2026-11-22T08:46:13.632440Z us1 sluice 42 ROUTE [sluice@32473 qid=\"Q1\"] to=<j@eu.c.com> orig=<j@c.com> connector=internet next_hop=mx:eu.c.com redirected=yes routed\n",
            "<22>1 2026-11-22T08:46:13.632440Z us1 sluice 42 ROUTE [sluice@32473 qid=\"Q1\"] to=<k@eu.c.com> orig=<k@c.com> connector=internet next_hop=mx:eu.c.com redirected=yes routed\n",
            "2026-11-23T01:00:00+01:00 eu1 sluice[7]: RECEIVE [sluice@32473 qid=\"Q1\"] from=<> rcpts=1 size=50 peer=x tls=true result=NoAction\n",
            "2026-11-23T01:00:00+01:00 eu1 sluice[7]: ROUTE [sluice@32473 qid=\"Q1\"] to=<w@us.c.com> orig=<w@c.com> connector=x next_hop=- routed\n",
            "Nov 23 01:00:00 eu1 sluice[7]: ROUTE [sluice@32473 qid=\"Q9\"] to=<w@us.c.com> orig=<w@us.c.com> connector=x next_hop=- refused=\"550 no\"\n",
            "sluice[9]: RECEIVE qid=Q5 msgid=<m@x> from=<a@b> rcpts=1 size=7 peer=p tls=false result=NoAction\n",
            "sluice[9]: ROUTE qid=Q5 msgid=<m@x> to=<z@us.c.com> orig=<z@us.c.com> connector=x next_hop=- routed\n",
            "sluice[9]: SEND qid=Q5 to=<z@us.c.com> 250 ok\n",
            "Nov 23 01:00:00 eu1 postfix/smtpd[1]: connect from x\n",
            "garbage\n",
        ));
        assert_eq!(f.stats.read, 11);
        assert_eq!(f.stats.foreign, 2);
        assert_eq!(f.stats.other_sluice, 1);
        assert_eq!(f.stats.refused, 1);
        assert_eq!(f.stats.route, 4);
        assert_eq!(f.stats.unmatched, 0);
        let d1 = &f.days[&parse_date("2026-11-22").unwrap()];
        let c = d1.rows["c.com"]["eu.c.com"];
        assert_eq!((c.messages, c.bytes, c.redirected), (1, 100, 1));
        let d2 = &f.days[&parse_date("2026-11-23").unwrap()];
        assert_eq!(d2.rows["c.com"]["us.c.com"].bytes, 50);
        assert_eq!(f.days[&0].rows["us.c.com"]["us.c.com"].bytes, 7);
    }

    #[test]
    fn an_overlong_line_is_foreign_and_skipped() {
        let long = "x".repeat(200_000);
        let f = read(&format!(
            "{long}\nsluice[9]: RECEIVE qid=Q msgid=<m> from=<> size=1 result=x\n{long}"
        ));
        assert_eq!((f.stats.read, f.stats.foreign, f.stats.receive), (3, 2, 1));
    }
}
