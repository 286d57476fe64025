//! Splicing a message's header edits into its header block: the policy
//! decided the edits at the end of DATA (spans of the original header
//! block), the spool keeps the original bytes, and at delivery the edited
//! header block goes out, then the body streams from the spool untouched.

use crate::engine::header;
use crate::shell::policy::render::HeaderEdit;

/// The message with `edits` applied: spans replaced or removed, added
/// fields placed at the end of the header block. The body is untouched.
pub fn splice(msg: &[u8], edits: &[&HeaderEdit]) -> Vec<u8> {
    let head_end = header::end_of_headers(msg, true).unwrap_or(msg.len());
    // Added fields go before the blank line that ends the headers.
    let insert_at = if msg
        .get(..head_end)
        .is_some_and(|h| h.ends_with(b"\r\n\r\n"))
    {
        head_end - 2
    } else if msg.get(..head_end).is_some_and(|h| h.ends_with(b"\n\n")) {
        head_end - 1
    } else {
        head_end
    };
    let mut spans: Vec<(usize, usize, Vec<u8>)> = Vec::new();
    let mut added = Vec::new();
    for e in edits {
        match e {
            HeaderEdit::Prepend { field } => spans.push((0, 0, field.as_bytes().to_vec())),
            HeaderEdit::Remove { start, end, .. } => spans.push((*start, *end, Vec::new())),
            HeaderEdit::Rename { start, end, to, .. }
            | HeaderEdit::Address { start, end, to, .. } => {
                spans.push((*start, *end, to.as_bytes().to_vec()))
            }
            // A copy's own edits are unwrapped by the caller
            // (HeaderEdit::for_connector); here they go nowhere.
            HeaderEdit::Via { .. } => {}
            HeaderEdit::Add { name, value } => {
                added.extend_from_slice(name.as_bytes());
                added.push(b':');
                if !value.is_empty() {
                    added.push(b' ');
                    added.extend_from_slice(value.as_bytes());
                }
                added.extend_from_slice(b"\r\n");
            }
        }
    }
    // Prepends (0..0) first, then spans in order.
    spans.sort_by_key(|s| (s.0, s.1));
    let mut out = Vec::with_capacity(msg.len() + added.len());
    let mut pos = 0;
    for (s, e, with) in spans {
        if s < pos || e > insert_at.max(s) && e > head_end {
            continue; // overlapping or outside the header block: skip
        }
        out.extend_from_slice(msg.get(pos..s).unwrap_or(&[]));
        out.extend_from_slice(&with);
        pos = e;
    }
    if pos <= insert_at {
        out.extend_from_slice(msg.get(pos..insert_at).unwrap_or(&[]));
        out.extend_from_slice(&added);
        out.extend_from_slice(msg.get(insert_at..).unwrap_or(&[]));
    } else {
        out.extend_from_slice(&added);
        out.extend_from_slice(msg.get(pos..).unwrap_or(&[]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prepended_field_goes_first_even_when_the_first_field_is_removed() {
        let msg = b"X-MS-Exchange-Organization-SCL: 1\r\nSubject: s\r\n\r\nbody\r\n";
        let edits = [
            HeaderEdit::Remove {
                start: 0,
                end: 35,
                name: "X-MS-Exchange-Organization-SCL".into(),
            },
            HeaderEdit::Prepend {
                field: "Received: from a by b; Sun, 22 Nov 2026 08:00:00 +0000\r\n".into(),
            },
        ];
        let refs: Vec<&HeaderEdit> = edits.iter().collect();
        assert_eq!(
            splice(msg, &refs),
            b"Received: from a by b; Sun, 22 Nov 2026 08:00:00 +0000\r\nSubject: s\r\n\r\nbody\r\n"
                .to_vec()
        );
    }

    #[test]
    fn splice_applies_edits_and_keeps_the_body() {
        let msg = b"A: 1\r\nX-Drop: 2\r\nTo: johnny@contoso.com\r\n\r\nbody\r\n";
        let edits = [
            HeaderEdit::Remove {
                start: 6,
                end: 17,
                name: "X-Drop".into(),
            },
            HeaderEdit::Address {
                start: 21,
                end: 39,
                field: "To".into(),
                from: "johnny@contoso.com".into(),
                to: "johnny@eu.contoso.com".into(),
            },
            HeaderEdit::Add {
                name: "X-Journaled".into(),
                value: "yes".into(),
            },
        ];
        let refs: Vec<&HeaderEdit> = edits.iter().collect();
        let out = splice(msg, &refs);
        assert_eq!(
            out,
            b"A: 1\r\nTo: johnny@eu.contoso.com\r\nX-Journaled: yes\r\n\r\nbody\r\n".to_vec()
        );
    }
}
