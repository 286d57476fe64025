//! The message as the milters see and change it: envelope, header fields,
//! body. Each milter sees what the ones before it left (as with Postfix);
//! when the last is done, [`Message::into_octets`] gives the octets to
//! store, rebuilt only if a header or the body changed.

use crate::engine::header;
use crate::engine::milter::Modification;

/// The header field milters' quarantine requests become: rules route on it
/// (e.g. to a quarantine connector).
pub const QUARANTINE_FIELD: &str = "X-Sluice-Quarantine";

/// One header field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// Its name.
    pub name: Vec<u8>,
    /// Its raw value: after the colon, leading space and CRLF folding
    /// kept, without the final CRLF.
    pub value: Vec<u8>,
}

/// The message being filtered.
#[derive(Debug, Clone)]
pub struct Message {
    /// The reverse path (no angle brackets; empty for `<>`).
    pub from: Vec<u8>,
    /// The forward paths (no angle brackets).
    pub rcpts: Vec<Vec<u8>>,
    /// The header fields, in order.
    pub fields: Vec<Field>,
    /// The message as received.
    original: Vec<u8>,
    /// Where the body starts in `original`.
    body_at: usize,
    /// The new body, once a milter replaced it (chunks concatenated).
    new_body: Option<Vec<u8>>,
    /// A header was added, changed or removed.
    headers_changed: bool,
    /// Why a milter asked for quarantine.
    pub quarantine: Option<String>,
}

impl Message {
    /// The message `octets` with its envelope.
    pub fn new(octets: Vec<u8>, from: Vec<u8>, rcpts: Vec<Vec<u8>>) -> Message {
        let end = header::end_of_headers(&octets, true).unwrap_or(octets.len());
        let mut it = header::fields(&octets[..end]);
        let mut fields = Vec::new();
        for f in it.by_ref() {
            fields.push(Field {
                name: f.name.to_vec(),
                value: f.value.to_vec(),
            });
        }
        let body_at = end.max(it.offset()).min(octets.len());
        Message {
            from,
            rcpts,
            fields,
            original: octets,
            body_at,
            new_body: None,
            headers_changed: false,
            quarantine: None,
        }
    }

    /// The body as it stands.
    pub fn body(&self) -> &[u8] {
        match &self.new_body {
            Some(b) => b,
            None => self.original.get(self.body_at..).unwrap_or_default(),
        }
    }

    /// Whether the header block or the body changed.
    pub fn changed(&self) -> bool {
        self.headers_changed || self.new_body.is_some()
    }

    /// The octets to store: the original ones when nothing changed,
    /// otherwise the fields, the blank line and the body; with where the
    /// body starts.
    pub fn into_octets(self) -> (Vec<u8>, usize) {
        if !self.changed() {
            return (self.original, self.body_at);
        }
        let body = match &self.new_body {
            Some(b) => b.as_slice(),
            None => self.original.get(self.body_at..).unwrap_or_default(),
        };
        let mut out = Vec::with_capacity(self.original.len() + 256);
        for f in &self.fields {
            out.extend_from_slice(&f.name);
            out.push(b':');
            out.extend_from_slice(&f.value);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        let at = out.len();
        out.extend_from_slice(body);
        (out, at)
    }

    /// Starts a body replacement (a milter's first `REPLBODY` chunk), or
    /// adds to it; `false` when the new body would pass `max` octets.
    pub fn replace_body(&mut self, chunk: &[u8], first: bool, max: usize) -> bool {
        let b = self.new_body.get_or_insert_with(Vec::new);
        if first {
            b.clear();
        }
        if b.len() + chunk.len() > max {
            return false;
        }
        b.extend_from_slice(chunk);
        true
    }

    /// Applies a modification other than a body chunk; `leadspc`: the
    /// milter gives header values with their leading space. Returns words
    /// for the trace.
    pub fn apply(&mut self, m: &Modification<'_>, leadspc: bool) -> String {
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        match *m {
            Modification::AddHeader { name, value } => {
                self.fields.push(field(name, value, leadspc));
                self.headers_changed = true;
                format!("add header {}: {}", text(name), text(value))
            }
            Modification::InsertHeader { index, name, value } => {
                let at = (index as usize).min(self.fields.len());
                self.fields.insert(at, field(name, value, leadspc));
                self.headers_changed = true;
                format!("insert header at {index} {}: {}", text(name), text(value))
            }
            Modification::ChangeHeader { index, name, value } => {
                self.change_header(index, name, value, leadspc);
                if value.is_empty() {
                    format!("delete header {} #{index}", text(name))
                } else {
                    format!("change header {} #{index}: {}", text(name), text(value))
                }
            }
            Modification::ReplaceBody(b) => format!("replace body ({} octets)", b.len()),
            Modification::AddRcpt { rcpt, .. } => {
                let r = bare(rcpt);
                if !self.rcpts.iter().any(|x| x.eq_ignore_ascii_case(r)) {
                    self.rcpts.push(r.to_vec());
                }
                format!("add recipient <{}>", text(r))
            }
            Modification::DeleteRcpt(rcpt) => {
                let r = bare(rcpt);
                self.rcpts.retain(|x| !x.eq_ignore_ascii_case(r));
                format!("delete recipient <{}>", text(r))
            }
            Modification::ChangeFrom { from, .. } => {
                self.from = bare(from).to_vec();
                format!("change sender to <{}>", text(&self.from))
            }
            Modification::Quarantine(reason) => {
                let reason = text(reason);
                if self.quarantine.is_none() {
                    self.fields.push(Field {
                        name: QUARANTINE_FIELD.as_bytes().to_vec(),
                        value: format!(" {}", one_line(&reason)).into_bytes(),
                    });
                    self.headers_changed = true;
                }
                self.quarantine = Some(reason.clone());
                format!("quarantine: {reason}")
            }
        }
    }

    /// `CHGHEADER`: the `index`-th field named `name` (from 1) gets
    /// `value`, or goes when it is empty; past the last one, it is added
    /// (as libmilter documents).
    fn change_header(&mut self, index: u32, name: &[u8], value: &[u8], leadspc: bool) {
        let pos = self
            .fields
            .iter()
            .enumerate()
            .filter(|(_, f)| f.name.eq_ignore_ascii_case(name))
            .nth((index.max(1) - 1) as usize)
            .map(|(i, _)| i);
        match (pos, value.is_empty()) {
            (Some(i), true) => {
                self.fields.remove(i);
            }
            (Some(i), false) => self.fields[i] = field(name, value, leadspc),
            (None, true) => return,
            (None, false) => self.fields.push(field(name, value, leadspc)),
        }
        self.headers_changed = true;
    }
}

/// A field from a milter's name and value: LF folding becomes CRLF, and
/// the space after the colon is added unless the milter gives it.
fn field(name: &[u8], value: &[u8], leadspc: bool) -> Field {
    let mut v = Vec::with_capacity(value.len() + 8);
    if !leadspc {
        v.push(b' ');
    }
    let mut prev = 0u8;
    for &b in value {
        if b == b'\n' && prev != b'\r' {
            v.push(b'\r');
        }
        v.push(b);
        prev = b;
    }
    Field {
        name: name.to_vec(),
        value: v,
    }
}

/// A header value as milters expect it without `HDR_LEADSPC`: the leading
/// space gone and folding as LF (the Sendmail and Postfix convention).
pub fn milter_value(raw: &[u8], leadspc: bool) -> Vec<u8> {
    let v = if leadspc {
        raw
    } else {
        let n = raw
            .iter()
            .position(|b| *b != b' ' && *b != b'\t')
            .unwrap_or(raw.len());
        &raw[n..]
    };
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        if v[i] == b'\r' && v.get(i + 1) == Some(&b'\n') {
            i += 1;
            continue;
        }
        out.push(v[i]);
        i += 1;
    }
    out
}

/// An address without its angle brackets.
pub fn bare(a: &[u8]) -> &[u8] {
    let a = header::trim(a);
    a.strip_prefix(b"<")
        .and_then(|x| x.strip_suffix(b">"))
        .unwrap_or(a)
}

/// Text on one line (a reason that becomes a header value).
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] =
        b"From: a@example.org\r\nSubject: hi\r\nX-Tag: one\r\nX-Tag: two\r\n\r\nbody\r\n";

    fn msg() -> Message {
        Message::new(
            MSG.to_vec(),
            b"a@example.org".to_vec(),
            vec![b"b@example.org".to_vec()],
        )
    }

    #[test]
    fn an_unchanged_message_is_stored_as_received() {
        let (octets, at) = msg().into_octets();
        assert_eq!(octets, MSG);
        assert_eq!(&octets[at..], b"body\r\n");
    }

    #[test]
    fn header_edits_rebuild_the_header_block() {
        let mut m = msg();
        m.apply(
            &Modification::AddHeader {
                name: b"X-Spam",
                value: b"Yes",
            },
            false,
        );
        m.apply(
            &Modification::InsertHeader {
                index: 0,
                name: b"X-First",
                value: b"1\n\tfolded",
            },
            false,
        );
        m.apply(
            &Modification::ChangeHeader {
                index: 2,
                name: b"x-tag",
                value: b"",
            },
            false,
        );
        m.apply(
            &Modification::ChangeHeader {
                index: 1,
                name: b"Subject",
                value: b"[spam] hi",
            },
            false,
        );
        let (octets, at) = m.into_octets();
        assert_eq!(
            String::from_utf8_lossy(&octets),
            "X-First: 1\r\n\tfolded\r\nFrom: a@example.org\r\nSubject: [spam] hi\r\n\
             X-Tag: one\r\nX-Spam: Yes\r\n\r\nbody\r\n"
        );
        assert_eq!(&octets[at..], b"body\r\n");
    }

    #[test]
    fn body_and_envelope_changes() {
        let mut m = msg();
        assert!(m.replace_body(b"new ", true, 100));
        assert!(m.replace_body(b"body\r\n", false, 100));
        assert!(!m.replace_body(&[b'x'; 200], false, 100), "over the limit");
        m.apply(
            &Modification::AddRcpt {
                rcpt: b"<c@example.org>",
                args: None,
            },
            false,
        );
        m.apply(&Modification::DeleteRcpt(b"<B@example.org>"), false);
        m.apply(
            &Modification::ChangeFrom {
                from: b"<s@example.org>",
                args: None,
            },
            false,
        );
        m.apply(&Modification::Quarantine(b"looks bad"), false);
        assert_eq!(m.rcpts, vec![b"c@example.org".to_vec()]);
        assert_eq!(m.from, b"s@example.org");
        assert_eq!(m.quarantine.as_deref(), Some("looks bad"));
        let (octets, at) = m.into_octets();
        assert_eq!(&octets[at..], b"new body\r\n");
        assert!(String::from_utf8_lossy(&octets).contains("X-Sluice-Quarantine: looks bad\r\n"));
    }

    #[test]
    fn values_go_to_milters_without_the_leading_space_and_with_lf_folding() {
        assert_eq!(milter_value(b" a\r\n\tb", false), b"a\n\tb");
        assert_eq!(milter_value(b" a", true), b" a");
    }
}
