//! Reading a directory export: LDIF as `ldifde` and `ldapsearch` write it,
//! or CSV with a header row as `csvde` writes it. Both give the same
//! records: per directory object, its `mail`, `proxyAddresses` and
//! `targetAddress` values with where each stood in the file.
//!
//! The format is told by the first line that is not blank or a comment:
//! `dn:` or `version:` is LDIF, anything else CSV.

use std::fmt;

/// An attribute the directory reads (every other one is ignored).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attr {
    /// `mail`.
    Mail,
    /// `proxyAddresses` (one value each; `SMTP:` primary, `smtp:` secondary).
    Proxy,
    /// `targetAddress` (a mail-enabled contact's external address).
    Target,
}

/// One attribute value and where it stood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Val {
    /// Which attribute.
    pub attr: Attr,
    /// The value as written (base64 decoded).
    pub text: String,
    /// 1-based line of the value.
    pub line: usize,
    /// 1-based column of the value.
    pub col: usize,
}

/// One directory object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The line it starts on.
    pub line: usize,
    /// Its address values, in file order.
    pub values: Vec<Val>,
}

/// What is wrong with an export, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub col: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: error: {}", self.line, self.col, self.message)
    }
}

/// An error at `line:col`.
pub fn err(line: usize, col: usize, message: impl Into<String>) -> Error {
    Error {
        line,
        col,
        message: message.into(),
    }
}

/// The attribute a (case-insensitive) name stands for; options after `;`
/// (`proxyAddresses;binary`) are ignored.
fn attr_of(name: &str) -> Option<Attr> {
    let base = name.split(';').next().unwrap_or(name);
    [
        ("mail", Attr::Mail),
        ("proxyaddresses", Attr::Proxy),
        ("targetaddress", Attr::Target),
    ]
    .iter()
    .find(|(n, _)| base.eq_ignore_ascii_case(n))
    .map(|(_, a)| *a)
}

/// Reads an export, LDIF or CSV (told by its first line).
pub fn parse(text: &str) -> Result<Vec<Record>, Error> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let first = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .unwrap_or("");
    let lower = first.to_ascii_lowercase();
    if lower.starts_with("dn:") || lower.starts_with("version:") {
        parse_ldif(text)
    } else {
        parse_csv(text)
    }
}

// ---------------------------------------------------------------------------
// LDIF (RFC 2849, as ldifde and ldapsearch write it)

/// A logical LDIF line (folded lines joined) and where it began.
struct Logical {
    line: usize,
    text: String,
}

/// Joins folded lines, drops comments, and cuts the file into records of
/// logical lines at blank lines.
fn ldif_records(text: &str) -> Result<Vec<Vec<Logical>>, Error> {
    let mut records: Vec<Vec<Logical>> = Vec::new();
    let mut cur: Vec<Logical> = Vec::new();
    let mut in_comment = false;
    for (i, raw) in text.split('\n').enumerate() {
        let n = i + 1;
        let l = raw.strip_suffix('\r').unwrap_or(raw);
        if let Some(rest) = l.strip_prefix(' ') {
            if in_comment {
                continue;
            }
            match cur.last_mut() {
                Some(last) => last.text.push_str(rest),
                None if rest.trim().is_empty() => {}
                None => {
                    return Err(err(
                        n,
                        1,
                        "a continuation line (one space first) with no line to continue",
                    ))
                }
            }
            continue;
        }
        in_comment = l.starts_with('#');
        if in_comment {
            continue;
        }
        if l.trim().is_empty() {
            if !cur.is_empty() {
                records.push(std::mem::take(&mut cur));
            }
            continue;
        }
        cur.push(Logical {
            line: n,
            text: l.to_string(),
        });
    }
    if !cur.is_empty() {
        records.push(cur);
    }
    Ok(records)
}

/// One logical line as `(name, value, column of the value)`.
fn ldif_attr(l: &Logical) -> Result<(&str, String, usize), Error> {
    let Some(colon) = l.text.find(':') else {
        return Err(err(l.line, 1, "expected `attribute: value`"));
    };
    let name = &l.text[..colon];
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b';' || b == b'.')
    {
        return Err(err(l.line, 1, format!("{name:?} is not an attribute name")));
    }
    let rest = &l.text[colon + 1..];
    if let Some(b64) = rest.strip_prefix(':') {
        let skip = b64.len() - b64.trim_start().len();
        let col = colon + 3 + skip;
        let bytes = base64(b64.trim())
            .ok_or_else(|| err(l.line, col, format!("{name}:: is not valid base64")))?;
        let v = String::from_utf8(bytes)
            .map_err(|_| err(l.line, col, format!("{name}:: does not decode to UTF-8")))?;
        return Ok((name, v, col));
    }
    if rest.starts_with('<') {
        return Err(err(
            l.line,
            colon + 2,
            format!("{name}:< (a value read from a URL) is not supported in an export"),
        ));
    }
    let skip = rest.len() - rest.trim_start_matches(' ').len();
    Ok((name, rest.trim().to_string(), colon + 2 + skip))
}

/// Reads LDIF: records that start with `dn:`; `version:` and ldapsearch's
/// `search:`/`result:` trailer are skipped; `changetype` must be `add`.
pub fn parse_ldif(text: &str) -> Result<Vec<Record>, Error> {
    let mut out = Vec::new();
    for (ri, rec) in ldif_records(text)?.into_iter().enumerate() {
        let mut lines = rec.iter().peekable();
        if ri == 0 {
            if let Some(l) = lines.peek() {
                if ldif_attr(l)?.0.eq_ignore_ascii_case("version") {
                    lines.next();
                }
            }
        }
        let Some(first) = lines.next() else { continue };
        let (name, _, _) = ldif_attr(first)?;
        if !name.eq_ignore_ascii_case("dn") {
            let trailer = rec.iter().all(|l| {
                ldif_attr(l).is_ok_and(|(n, _, _)| {
                    ["search", "result"]
                        .iter()
                        .any(|t| n.eq_ignore_ascii_case(t))
                })
            });
            if trailer {
                continue;
            }
            return Err(err(
                first.line,
                1,
                format!("an entry starts with `dn:`, not `{name}:`"),
            ));
        }
        let mut values = Vec::new();
        for l in lines {
            let (name, v, col) = ldif_attr(l)?;
            if name.eq_ignore_ascii_case("changetype") && !v.eq_ignore_ascii_case("add") {
                return Err(err(
                    l.line,
                    col,
                    format!("changetype {v:?}: an export holds entries, not changes"),
                ));
            }
            if let Some(attr) = attr_of(name) {
                values.push(Val {
                    attr,
                    text: v,
                    line: l.line,
                    col,
                });
            }
        }
        out.push(Record {
            line: first.line,
            values,
        });
    }
    Ok(out)
}

/// Decodes standard base64 (padding optional); `None` if it is not.
fn base64(s: &str) -> Option<Vec<u8>> {
    let digit = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let s = s.trim_end_matches('=').as_bytes();
    if s.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= digit(c)? << (18 - 6 * i);
        }
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

// ---------------------------------------------------------------------------
// CSV (RFC 4180, as csvde writes it)

/// One CSV field and where it began.
struct Field {
    text: String,
    line: usize,
    col: usize,
}

/// A position in CSV text, counting lines and columns.
struct Cursor<'a> {
    chars: std::iter::Peekable<std::str::Chars<'a>>,
    line: usize,
    col: usize,
}

impl Cursor<'_> {
    /// The next character, without taking it.
    fn peek(&mut self) -> Option<char> {
        self.chars.peek().copied()
    }

    /// Takes the next character, moving the position past it.
    fn bump(&mut self) -> Option<char> {
        let c = self.chars.next()?;
        if c == '\n' {
            (self.line, self.col) = (self.line + 1, 1);
        } else {
            self.col += 1;
        }
        Some(c)
    }

    /// A quoted field's text, the cursor on its opening quote (`""` is a
    /// quote; commas and line breaks are text).
    fn quoted(&mut self) -> Result<String, Error> {
        let (line, col) = (self.line, self.col);
        self.bump();
        let mut f = String::new();
        loop {
            match self.bump() {
                None => return Err(err(line, col, "a quoted field is not closed")),
                Some('"') if self.peek() == Some('"') => {
                    self.bump();
                    f.push('"');
                }
                Some('"') => break,
                Some(c) => f.push(c),
            }
        }
        if !matches!(self.peek(), None | Some(',' | '\n' | '\r')) {
            return Err(err(
                self.line,
                self.col,
                "text after a closing quote (a quote inside a field is written \"\")",
            ));
        }
        Ok(f)
    }

    /// An unquoted field's text, up to a comma or the line's end.
    fn unquoted(&mut self) -> Result<String, Error> {
        let mut f = String::new();
        while let Some(c) = self.peek() {
            match c {
                ',' | '\n' | '\r' => break,
                '"' => {
                    return Err(err(
                        self.line,
                        self.col,
                        "a quote inside an unquoted field (quote the whole field)",
                    ))
                }
                _ => {
                    f.push(c);
                    self.bump();
                }
            }
        }
        Ok(f)
    }
}

/// Splits CSV into rows of fields (RFC 4180: `"` quotes, `""` inside
/// quotes, quoted fields may hold commas and line breaks; CRLF or LF).
fn csv_rows(text: &str) -> Result<Vec<Vec<Field>>, Error> {
    let mut cur = Cursor {
        chars: text.chars().peekable(),
        line: 1,
        col: 1,
    };
    let mut rows = Vec::new();
    let mut row: Vec<Field> = Vec::new();
    loop {
        let (line, col) = (cur.line, cur.col);
        let quoted = cur.peek() == Some('"');
        let text = if quoted {
            cur.quoted()?
        } else {
            cur.unquoted()?
        };
        row.push(Field {
            text,
            line,
            col: col + usize::from(quoted),
        });
        let (l, c) = (cur.line, cur.col);
        match cur.bump() {
            Some(',') => continue,
            Some('\r') if cur.peek() == Some('\n') => {
                cur.bump();
            }
            Some('\n') | None => {}
            Some(_) => {
                return Err(err(
                    l,
                    c,
                    "a carriage return alone (lines end in CRLF or LF)",
                ))
            }
        }
        rows.push(std::mem::take(&mut row));
        if cur.peek().is_none() {
            break;
        }
    }
    // Blank lines (one empty field) carry nothing.
    rows.retain(|r| !(r.len() == 1 && r[0].text.is_empty()));
    Ok(rows)
}

/// Reads CSV with a header row: the columns `mail`, `proxyAddresses`,
/// `targetAddress` (any case; others ignored). A cell of a multi-valued
/// attribute holds its values separated by `;`, as `csvde` writes them.
pub fn parse_csv(text: &str) -> Result<Vec<Record>, Error> {
    let mut rows = csv_rows(text)?.into_iter();
    let Some(header) = rows.next() else {
        return Ok(Vec::new());
    };
    let cols: Vec<Option<Attr>> = header.iter().map(|f| attr_of(f.text.trim())).collect();
    if cols.iter().all(Option::is_none) {
        let h = header.first().map_or(1, |f| f.line);
        return Err(err(
            h,
            1,
            "the header row names none of the columns mail, proxyAddresses, targetAddress",
        ));
    }
    let mut out = Vec::new();
    for row in rows {
        let line = row.first().map_or(0, |f| f.line);
        if row.len() != cols.len() {
            let last = row.last().map_or(1, |f| f.col);
            return Err(err(
                line,
                last,
                format!(
                    "{} fields, but the header row has {}",
                    row.len(),
                    cols.len()
                ),
            ));
        }
        let mut values = Vec::new();
        for (f, attr) in row.iter().zip(&cols) {
            let Some(attr) = *attr else { continue };
            let mut off = 0;
            for part in f.text.split(';') {
                let v = part.trim();
                if !v.is_empty() {
                    values.push(Val {
                        attr,
                        text: v.to_string(),
                        line: f.line,
                        col: f.col + off,
                    });
                }
                off += part.chars().count() + 1;
            }
        }
        out.push(Record { line, values });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn texts(r: &Record) -> Vec<(Attr, &str)> {
        r.values.iter().map(|v| (v.attr, v.text.as_str())).collect()
    }

    const LDIF: &str = "version: 1\n\
# a comment\n \
that is folded\n\
\n\
dn: CN=Johnny Cash,OU=Users,DC=contoso,DC=com\n\
changetype: add\n\
objectClass: user\n\
Mail: johnny@contoso.com\n\
proxyAddresses: SMTP:johnny@eu.cont\n oso.com\n\
proxyaddresses:: c210cDpqb2hubnlAY29udG9zby5jb20=\n\
proxyAddresses: X500:/o=contoso/ou=first\n\
\n\
\n\
dn: CN=Contact\n\
targetAddress: SMTP:ext@fabrikam.com\n\
\n\
# search result\n\
search: 2\n\
result: 0 Success\n";

    #[test]
    fn ldif_as_ldifde_and_ldapsearch_write_it() {
        let r = parse(LDIF).expect("parses");
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].line, 5);
        assert_eq!(
            texts(&r[0]),
            vec![
                (Attr::Mail, "johnny@contoso.com"),
                (Attr::Proxy, "SMTP:johnny@eu.contoso.com"),
                (Attr::Proxy, "smtp:johnny@contoso.com"),
                (Attr::Proxy, "X500:/o=contoso/ou=first"),
            ]
        );
        assert_eq!((r[0].values[0].line, r[0].values[0].col), (8, 7));
        assert_eq!(texts(&r[1]), vec![(Attr::Target, "SMTP:ext@fabrikam.com")]);
    }

    #[test]
    fn bad_ldif_names_the_line_and_column() {
        let cases = [
            ("dn: a\nmail x@y\n", 2, 1, "attribute: value"),
            ("dn: a\nmail:: !!!\n", 2, 8, "base64"),
            ("dn: a\nmail:< file:///x\n", 2, 6, "URL"),
            ("version: 1\n\nmail: x@y\n", 3, 1, "starts with `dn:`"),
            ("dn: a\nchangetype: delete\n", 2, 13, "changes"),
            ("dn: a\nma il: x@y\n", 2, 1, "attribute name"),
        ];
        for (text, line, col, what) in cases {
            let e = parse(text).expect_err(text);
            assert_eq!((e.line, e.col), (line, col), "{text:?}: {e}");
            assert!(e.message.contains(what), "{text:?}: {e}");
        }
        let e = parse_ldif(" folded first\n").expect_err("orphan");
        assert_eq!(e.line, 1);
    }

    #[test]
    fn csv_as_csvde_writes_it() {
        let text = "DN,objectClass,mail,proxyAddresses,targetAddress\r\n\
\"CN=Cash\\, Johnny,OU=Users\",user,johnny@contoso.com,\"SMTP:johnny@eu.contoso.com;smtp:johnny@contoso.com\",\r\n\
\r\n\
\"CN=Contact\",contact,,,SMTP:ext@fabrikam.com\r\n";
        let r = parse(text).expect("parses");
        assert_eq!(r.len(), 2);
        assert_eq!(
            texts(&r[0]),
            vec![
                (Attr::Mail, "johnny@contoso.com"),
                (Attr::Proxy, "SMTP:johnny@eu.contoso.com"),
                (Attr::Proxy, "smtp:johnny@contoso.com"),
            ]
        );
        assert_eq!(r[0].values[2].col, 81);
        assert_eq!(texts(&r[1]), vec![(Attr::Target, "SMTP:ext@fabrikam.com")]);
        assert_eq!(r[1].line, 4);
    }

    #[test]
    fn bad_csv_names_the_line_and_column() {
        let cases = [
            ("mail,x\na@b\n", 2, 1, "1 fields"),
            ("mail\n\"a@b\n", 2, 1, "not closed"),
            ("mail\n\"a@b\"x\n", 2, 6, "closing quote"),
            ("mail\na\"b\n", 2, 2, "quote inside"),
            ("name,dn\nx,y\n", 1, 1, "none of the columns"),
        ];
        for (text, line, col, what) in cases {
            let e = parse(text).expect_err(text);
            assert_eq!((e.line, e.col), (line, col), "{text:?}: {e}");
            assert!(e.message.contains(what), "{text:?}: {e}");
        }
    }

    /// An LDIF value folded at any width and a CSV cell quoted either way
    /// read back as the same value.
    fn fold(line: &str, width: usize) -> String {
        let mut out = String::new();
        let mut rest = line;
        let mut first = true;
        while !rest.is_empty() {
            let mut cut = width.min(rest.len());
            while !rest.is_char_boundary(cut) {
                cut += 1;
            }
            if !first {
                out.push_str("\n ");
            }
            out.push_str(&rest[..cut]);
            rest = &rest[cut..];
            first = false;
        }
        out
    }

    proptest! {
        #[test]
        fn folding_and_quoting_keep_values(
            local in "[a-z0-9.]{1,30}", domain in "[a-z]{1,20}\\.[a-z]{2,6}", width in 2usize..40,
        ) {
            let addr = format!("{local}@{domain}");
            let ldif = format!("dn: cn=x\n{}\n", fold(&format!("proxyAddresses: smtp:{addr}"), width));
            let r = parse(&ldif).expect("ldif");
            prop_assert_eq!(r[0].values[0].text.clone(), format!("smtp:{addr}"));
            let csv = format!("mail,proxyAddresses\n\"{addr}\",smtp:{addr}\n");
            let r = parse(&csv).expect("csv");
            prop_assert_eq!(r[0].values[0].text.clone(), addr.clone());
            prop_assert_eq!(r[0].values[1].text.clone(), format!("smtp:{addr}"));
        }

        #[test]
        fn any_text_is_parsed_or_refused_without_a_panic(s in "[ -~\n\r\"#:,;]{0,200}") {
            let _ = parse(&s);
            let _ = parse_ldif(&s);
            let _ = parse_csv(&s);
        }
    }
}
