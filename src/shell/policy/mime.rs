//! Attachment names for the `attachment_name_matches` condition: found by
//! mail-parser in a whole message ([`attachment_names`]), or in a message
//! streamed in pieces too large to hold ([`MimeScan`]), which keeps only
//! the MIME part header lines that name attachments.

use mail_parser::MimeHeaders;

/// File names of the message's attachments (MIME parts), via mail-parser.
pub fn attachment_names(msg: &[u8]) -> Vec<Vec<u8>> {
    let Some(m) = mail_parser::MessageParser::default().parse(msg) else {
        return Vec::new();
    };
    m.attachments()
        .filter_map(|p| p.attachment_name().map(|n| n.as_bytes().to_vec()))
        .collect()
}

/// Collects the MIME part header lines (Content-Type, Content-Disposition
/// and their continuations) of a message streamed in pieces, so attachment
/// names can be found without holding the message whole.
#[derive(Debug, Default)]
pub struct MimeScan {
    /// The line being read (up to [`MIME_LINE`] octets).
    line: Vec<u8>,
    /// The line being read is longer than [`MIME_LINE`]: skipped.
    long: bool,
    /// The last line kept was a part header field: its continuations are kept too.
    keep: bool,
    /// The kept fields, each made a MIME part of its own.
    out: Vec<u8>,
}

/// Longest line looked at (RFC 5322's limit); a longer one is skipped.
const MIME_LINE: usize = 998;

/// Most octets of part header lines kept, so a hostile message cannot
/// make the scan hold much of it.
const MIME_KEEP: usize = 256 * 1024;

impl MimeScan {
    /// Feeds message octets in order.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let (piece, done) = match bytes.iter().position(|&b| b == b'\n') {
                Some(i) => (&bytes[..=i], true),
                None => (bytes, false),
            };
            bytes = &bytes[piece.len()..];
            if self.line.len() + piece.len() <= MIME_LINE {
                self.line.extend_from_slice(piece);
            } else {
                self.long = true;
            }
            if done {
                self.end_line();
            }
        }
    }

    /// Keeps the line just completed if it is (or continues) a
    /// Content-Type or Content-Disposition field.
    fn end_line(&mut self) {
        let l = std::mem::take(&mut self.line);
        let long = std::mem::replace(&mut self.long, false);
        let cont = matches!(l.first(), Some(b' ' | b'\t'));
        let starts = |p: &[u8]| l.get(..p.len()).is_some_and(|h| h.eq_ignore_ascii_case(p));
        if !long && (starts(b"content-type:") || starts(b"content-disposition:")) {
            self.keep = true;
            if self.out.len() + l.len() + 16 <= MIME_KEEP {
                // Each kept field becomes a part of its own.
                self.out.extend_from_slice(b"--=sluice=\r\n");
                self.out.extend_from_slice(&l);
            }
        } else if cont && self.keep && !long {
            if self.out.len() + l.len() <= MIME_KEEP {
                self.out.extend_from_slice(&l);
            }
        } else {
            if self.keep {
                self.out.extend_from_slice(b"\r\nx\r\n");
            }
            self.keep = false;
        }
    }

    /// The attachment names found (decoded by mail-parser).
    pub fn names(mut self) -> Vec<Vec<u8>> {
        if !self.line.is_empty() {
            self.end_line();
        }
        if self.keep {
            self.out.extend_from_slice(b"\r\nx\r\n");
        }
        let mut m =
            b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"=sluice=\"\r\n\r\n"
                .to_vec();
        m.extend_from_slice(&self.out);
        m.extend_from_slice(b"--=sluice=--\r\n");
        attachment_names(&m)
    }
}

/// A multipart message with one attachment whose name is given twice
/// (RFC 2047 `name` and RFC 2231 `filename*`), for the tests here and in
/// [`runtime`](super::runtime).
#[cfg(test)]
pub(super) const MIME_SAMPLE: &[u8] = b"From: a@b.test\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"XX\"\r\n\r\n--XX\r\nContent-Type: text/plain\r\n\r\nhello\r\n--XX\r\nContent-Type: application/octet-stream;\r\n name=\"=?utf-8?q?r=C3=A9sum=C3=A9.exe?=\"\r\nContent-Disposition: attachment;\r\n\tfilename*=utf-8''invoice%20one.SCR\r\n\r\nAAAA\r\n--XX--\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attachment_names_whole_and_streamed_agree() {
        let whole = attachment_names(MIME_SAMPLE);
        assert!(!whole.is_empty());
        for split in [1, 7, 50, MIME_SAMPLE.len()] {
            let mut s = MimeScan::default();
            for piece in MIME_SAMPLE.chunks(split) {
                s.feed(piece);
            }
            let names = s.names();
            for n in &whole {
                assert!(
                    names.contains(n),
                    "{split}: {:?} not in {:?}",
                    String::from_utf8_lossy(n),
                    names
                );
            }
        }
    }
}
