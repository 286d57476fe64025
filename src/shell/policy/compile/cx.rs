//! The compiler's diagnostics context ([`Cx`]: errors and warnings at byte
//! offsets, turned into lines and columns) and its typed access to the
//! TOML document kept with spans ([`S`], [`Fields`], the `get_*` helpers).

use super::emit::NCAPS;
use super::syntax::build_dfa;
use super::{Diag, Findings};
use crate::engine::policy::Table;
use std::collections::HashMap;
use std::ops::Range;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// Compilation context: the text (for positions), errors and warnings as
/// byte offsets, and the DFAs built so far (by pattern).
pub(super) struct Cx<'t> {
    /// The rule file.
    pub(super) text: &'t str,
    /// Byte offset of each line's start.
    lines: Vec<usize>,
    /// Errors at byte offsets.
    pub(super) errors: Vec<(usize, String)>,
    /// Warnings at byte offsets.
    warnings: Vec<(usize, String)>,
    /// Each pattern's DFA or error, built once.
    dfas: HashMap<String, Result<Vec<u8>, PatError>>,
}

/// Why a pattern does not compile, remembered per pattern so each
/// rule naming it gets the same error.
#[derive(Clone)]
pub(super) struct PatError {
    /// Byte offset of the problem in the pattern, when known.
    pub(super) offset: Option<usize>,
    /// What is wrong, naming the pattern.
    pub(super) message: String,
}

impl<'t> Cx<'t> {
    /// A context for `text`, with its line starts indexed.
    pub(super) fn new(text: &'t str) -> Self {
        let mut lines = vec![0];
        lines.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Cx {
            text,
            lines,
            errors: Vec::new(),
            warnings: Vec::new(),
            dfas: HashMap::new(),
        }
    }

    /// An error at byte offset `at`.
    pub(super) fn err(&mut self, at: usize, m: impl Into<String>) {
        self.errors.push((at, m.into()));
    }

    /// A warning at byte offset `at`.
    pub(super) fn warn(&mut self, at: usize, m: impl Into<String>) {
        self.warnings.push((at, m.into()));
    }

    /// 1-based line and column (in characters) of byte offset `at`.
    fn line_col(&self, at: usize) -> (usize, usize) {
        let at = at.min(self.text.len());
        let line = self.lines.partition_point(|&s| s <= at).max(1);
        let start = self.lines.get(line - 1).copied().unwrap_or(0);
        let col = match self.text.get(start..at) {
            Some(s) => s.chars().count(),
            None => at - start,
        };
        (line, col + 1)
    }

    /// The 1-based line of byte offset `at`.
    pub(super) fn line_of(&self, at: usize) -> usize {
        self.line_col(at).0
    }

    /// Offsets turned into positions, sorted, duplicates dropped.
    fn diags(&self, v: &[(usize, String)]) -> Vec<Diag> {
        let mut out: Vec<Diag> = v
            .iter()
            .map(|(at, m)| {
                let (line, col) = self.line_col(*at);
                Diag {
                    line,
                    col,
                    message: m.clone(),
                }
            })
            .collect();
        out.sort_by_key(|d| (d.line, d.col));
        out.dedup();
        out
    }

    /// The outcome of the compilation: the diagnostics with positions.
    pub(super) fn finish(
        self,
        table: Option<Box<Table>>,
        blob: Vec<u8>,
        sizes: Option<[usize; NCAPS]>,
    ) -> Findings {
        Findings {
            table,
            blob,
            sizes,
            errors: self.diags(&self.errors),
            warnings: self.diags(&self.warnings),
        }
    }

    /// Builds (or recalls) the sparse DFA of `pattern`.
    pub(super) fn dfa(&mut self, pattern: &str) -> Result<Vec<u8>, PatError> {
        if let Some(r) = self.dfas.get(pattern) {
            return r.clone();
        }
        let r = build_dfa(pattern);
        self.dfas.insert(pattern.to_string(), r.clone());
        r
    }
}

// ---- TOML access -----------------------------------------------------------

/// A TOML value with its byte range.
pub(super) type Val<'i> = Spanned<DeValue<'i>>;

/// A string value with the byte range of its TOML literal.
#[derive(Debug, Clone)]
pub(super) struct S {
    /// The string.
    pub(super) v: String,
    /// The byte range of its literal (quotes included).
    pub(super) span: Range<usize>,
}

impl S {
    /// Where the literal starts: where its diagnostics point.
    pub(super) fn at(&self) -> usize {
        self.span.start
    }
}

/// The known entries of one TOML table, in file order.
pub(super) struct Fields<'a, 'i> {
    /// Key, key position, value.
    pub(super) list: Vec<(&'a str, usize, &'a Val<'i>)>,
}

impl<'a, 'i> Fields<'a, 'i> {
    /// Collects `t`'s entries; a key not in `allowed` is an error at the key.
    pub(super) fn new(cx: &mut Cx<'_>, t: &'a DeTable<'i>, allowed: &[&str], ctx: &str) -> Self {
        let mut list = Vec::new();
        for (k, v) in t.iter() {
            let name: &str = k.get_ref().as_ref();
            if allowed.contains(&name) {
                list.push((name, k.span().start, v));
            } else {
                cx.err(k.span().start, unknown_key(name, allowed, ctx));
            }
        }
        list.sort_by_key(|e| e.1);
        Fields { list }
    }

    /// The value of `key`, if given.
    pub(super) fn get(&self, key: &str) -> Option<&'a Val<'i>> {
        self.list.iter().find(|e| e.0 == key).map(|e| e.2)
    }

    /// Where `key` is written, if given.
    pub(super) fn key_at(&self, key: &str) -> Option<usize> {
        self.list.iter().find(|e| e.0 == key).map(|e| e.1)
    }
}

/// The error for an unknown key: the nearest known one when it is a
/// likely typo, else every known key.
pub(crate) fn unknown_key(name: &str, allowed: &[&str], ctx: &str) -> String {
    let near = allowed
        .iter()
        .map(|a| (edit_distance(name, a), *a))
        .min_by_key(|(d, _)| *d);
    match near {
        Some((d, a)) if d <= 2 && d < name.len() => {
            format!("unknown key \"{name}\" in {ctx} (did you mean \"{a}\"?)")
        }
        _ => format!(
            "unknown key \"{name}\" in {ctx} (expected one of: {})",
            allowed.join(", ")
        ),
    }
}

/// Levenshtein distance in characters, for the typo hint.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev.get(j).copied().unwrap_or(0) + usize::from(ca != *cb);
            let del = prev.get(j + 1).copied().unwrap_or(0) + 1;
            let ins = cur.get(j).copied().unwrap_or(0) + 1;
            cur.push(sub.min(del).min(ins));
        }
        prev = cur;
    }
    prev.last().copied().unwrap_or(0)
}

/// The error for a value of the wrong TOML type.
pub(super) fn type_err(cx: &mut Cx<'_>, v: &Val<'_>, key: &str, want: &str) {
    cx.err(
        v.span().start,
        format!("\"{key}\" must be {want}, not a {}", v.get_ref().type_str()),
    );
}

/// A string value.
pub(super) fn get_str(cx: &mut Cx<'_>, v: &Val<'_>, key: &str) -> Option<S> {
    match v.get_ref() {
        DeValue::String(s) => Some(S {
            v: s.to_string(),
            span: v.span(),
        }),
        _ => {
            type_err(cx, v, key, "a string");
            None
        }
    }
}

/// A string or an array of strings.
pub(super) fn get_strs(cx: &mut Cx<'_>, v: &Val<'_>, key: &str) -> Vec<S> {
    match v.get_ref() {
        DeValue::String(s) => vec![S {
            v: s.to_string(),
            span: v.span(),
        }],
        DeValue::Array(a) => {
            let mut out = Vec::new();
            for e in a.iter() {
                match e.get_ref() {
                    DeValue::String(s) => out.push(S {
                        v: s.to_string(),
                        span: e.span(),
                    }),
                    _ => type_err(cx, e, key, "a list of strings"),
                }
            }
            out
        }
        _ => {
            type_err(cx, v, key, "a string or a list of strings");
            Vec::new()
        }
    }
}

/// A boolean value.
pub(super) fn get_bool(cx: &mut Cx<'_>, v: &Val<'_>, key: &str) -> Option<bool> {
    match v.get_ref() {
        DeValue::Boolean(b) => Some(*b),
        _ => {
            type_err(cx, v, key, "true or false");
            None
        }
    }
}

/// An integer value within `lo..=hi`.
pub(super) fn get_int(cx: &mut Cx<'_>, v: &Val<'_>, key: &str, lo: i64, hi: i64) -> Option<i64> {
    match v.get_ref() {
        DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
            Ok(n) if (lo..=hi).contains(&n) => Some(n),
            _ => {
                cx.err(
                    v.span().start,
                    format!("\"{key}\" = {i} is out of range ({lo} to {hi})"),
                );
                None
            }
        },
        _ => {
            type_err(cx, v, key, "an integer");
            None
        }
    }
}

/// A table value.
pub(super) fn get_table<'a, 'i>(
    cx: &mut Cx<'_>,
    v: &'a Val<'i>,
    key: &str,
) -> Option<&'a DeTable<'i>> {
    match v.get_ref() {
        DeValue::Table(t) => Some(t),
        _ => {
            type_err(cx, v, key, "a table");
            None
        }
    }
}

/// An array of tables (`[[key]]` or `key = [{...}, ...]`), each with the
/// position of its header or brace.
pub(super) fn get_tables<'a, 'i>(
    cx: &mut Cx<'_>,
    v: &'a Val<'i>,
    key: &str,
) -> Vec<(&'a DeTable<'i>, usize)> {
    match v.get_ref() {
        DeValue::Array(a) => {
            let mut out = Vec::new();
            for e in a.iter() {
                match e.get_ref() {
                    DeValue::Table(t) => out.push((t, e.span().start)),
                    _ => type_err(cx, e, key, "a list of tables"),
                }
            }
            out
        }
        DeValue::Table(_) => {
            cx.err(
                v.span().start,
                format!("\"{key}\" must be an array of tables: write [[{key}]]"),
            );
            Vec::new()
        }
        _ => {
            type_err(cx, v, key, "an array of tables");
            Vec::new()
        }
    }
}

/// A table of string values (`{ "a" = "b", ... }`), in file order.
pub(super) fn get_str_map(cx: &mut Cx<'_>, v: &Val<'_>, key: &str) -> Vec<(S, S)> {
    let Some(t) = get_table(cx, v, key) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (k, val) in t.iter() {
        let name = S {
            v: k.get_ref().to_string(),
            span: k.span(),
        };
        if let Some(s) = get_str(cx, val, &format!("{key}.{}", name.v)) {
            out.push((name, s));
        }
    }
    out.sort_by_key(|(k, _)| k.at());
    out
}
