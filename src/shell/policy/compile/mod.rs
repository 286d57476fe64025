//! The rule-file compiler behind `sluice rules check` / `apply`: the
//! operator's TOML rule file (`config/rules.toml` is the normative sample)
//! is parsed keeping spans, checked, and compiled into the engine's
//! fixed-size [`Table`], then encoded as the postcard blob the daemon
//! installs. Every error and warning names a 1-based line and column.
//!
//! Defaults of missing keys: `version` 1; no accepted domain, no default
//! domain; `[[inbound]] kind` "partner"; `[[connector]] tls`
//! "opportunistic", `cost` 10, no smart hosts (MX lookup); `[cmt] enabled`
//! false, `stamp_header` [`DEFAULT_STAMP`]; `[limits]` 30 hops, 36 MiB,
//! 200 recipients; no `[header_firewall]` section: trusted prefix
//! [`DEFAULT_TRUSTED_PREFIX`] (a section without `trusted_prefixes`: none);
//! `[[rule]] name` "Rule N" (N its place in the file),
//! `priority` after every explicit one in file order, `stop` false,
//! `enabled` true; `[[agent]]` every agent enabled at its default priority.
//!
//! Precedence per recipient, as the engine applies it with the built-in
//! agent priorities: a rule's `reject` > the first rule's `route_to` /
//! `use_connector` > CMT > address spaces. `[[agent]]` priorities order
//! the agents of one event; with CMT before the transport rules, CMT's
//! override stands (a rule's `reject` still wins).

mod checks;
mod cx;
mod edge;
mod emit;
mod filters;
mod hybrid;
mod index;
mod model;
mod syntax;

use crate::engine::policy::Table;
use checks::check_model;
use cx::Cx;
pub(crate) use cx::{edit_distance, unknown_key};
use emit::{emit, Builder, CAPS, NCAPS};
use model::parse_model;
use std::fmt;
use std::path::Path;
use toml::de::DeTable;

/// The CMT stamp header when `[cmt] stamp_header` is not given (the name
/// Exchange's Centralized Mail Flow agent uses, seed 002).
pub const DEFAULT_STAMP: &str = "X-MS-Exchange-Organization-CentralizedMailFlowOverrideSet";

/// The header firewall's trusted prefix when the rule file has no
/// `[header_firewall]` section: fields named so are removed from
/// anonymous mail (as Exchange's edge does), so an Internet sender cannot
/// forge the CMT stamp, an SCL or an authentication verdict.
pub const DEFAULT_TRUSTED_PREFIX: &str = "X-MS-Exchange-Organization-";

/// A send connector's cost when `cost` is not given; the lower cost wins a
/// tie of address-space specificity.
pub const DEFAULT_COST: u32 = 10;

/// Stack of the compiler thread: the table is ~600 KiB and debug builds
/// copy it through the stack, which a 2 MiB test thread may not hold.
const COMPILER_STACK: usize = 32 << 20;

/// One error or warning: a 1-based line and column in the rule file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diag {
    /// Line, from 1.
    pub line: usize,
    /// Column in characters, from 1.
    pub col: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Diag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.line, self.col, self.message)
    }
}

/// A rule file that compiled: the validated table, the warnings (which do
/// not fail the check) and the blob to install.
#[derive(Debug)]
pub struct Compiled {
    /// The compiled policy (boxed: it is ~600 KiB).
    pub table: Box<Table>,
    /// Warnings, sorted by position.
    pub warnings: Vec<Diag>,
    /// `encode(&table)`: postcard with a CRC-32C.
    pub blob: Vec<u8>,
}

/// Parses, checks and compiles a rule file; on failure every error found,
/// sorted by position. The blob is verified to decode back to the table.
pub fn compile(text: &str) -> Result<Compiled, Vec<Diag>> {
    compile_declared(text, None)
}

/// [`compile`], checking each connector's `tls_certificate` against the
/// appliance config's `[[tls.client]]` names when `certificates` is given
/// (an undeclared name is an error at its position).
pub fn compile_declared(
    text: &str,
    certificates: Option<&[String]>,
) -> Result<Compiled, Vec<Diag>> {
    let o = run(text, certificates);
    match (o.errors.is_empty(), o.table) {
        (true, Some(table)) => Ok(Compiled {
            table,
            warnings: o.warnings,
            blob: o.blob,
        }),
        _ => Err(o.errors),
    }
}

/// Encodes a table as the blob the daemon and the serial upload carry:
/// postcard with a CRC-32C ([`crate::engine::policy::crc32`]).
pub fn encode(table: &Table) -> Vec<u8> {
    postcard::to_allocvec_crc32(table, crate::engine::policy::crc32()).unwrap_or_default()
}

/// `sluice rules check FILE`: prints the table sizes against their
/// capacities, the blob size and version, then every warning and error as
/// `FILE:LINE:COL: warning|error: ...`; returns the exit status (0: no error).
pub fn check_command(path: &Path, certificates: Option<&[String]>) -> i32 {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{}: error: {e}", path.display());
            return 1;
        }
    };
    let o = run(&text, certificates);
    out!("{}", report(&path.display().to_string(), &o));
    i32::from(!o.errors.is_empty())
}

// ---- driver ----------------------------------------------------------------

/// Everything one compilation found, for `compile` and `check_command`.
struct Findings {
    /// The table, when emission ran (also with errors).
    table: Option<Box<Table>>,
    /// The blob, when there were no errors.
    blob: Vec<u8>,
    /// Entries each capacity-bound table needed (even beyond capacity).
    sizes: Option<[usize; NCAPS]>,
    /// Errors, sorted by position.
    errors: Vec<Diag>,
    /// Warnings, sorted by position.
    warnings: Vec<Diag>,
}

/// Runs the compiler on a thread with a large stack (see [`COMPILER_STACK`]).
fn run(text: &str, certificates: Option<&[String]>) -> Findings {
    let spawned = std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("rules".into())
            .stack_size(COMPILER_STACK)
            .spawn_scoped(s, || run_here(text, certificates))
            .map(|h| h.join())
    });
    match spawned {
        Ok(Ok(o)) => o,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(e) => Findings {
            table: None,
            blob: Vec::new(),
            sizes: None,
            errors: vec![Diag {
                line: 1,
                col: 1,
                message: format!("cannot start the compiler thread: {e}"),
            }],
            warnings: Vec::new(),
        },
    }
}

/// Parses, checks, emits and verifies on the current thread.
fn run_here(text: &str, certificates: Option<&[String]>) -> Findings {
    let mut cx = Cx::new(text);
    let root = match DeTable::parse(text) {
        Ok(r) => r,
        Err(e) => {
            let at = e.span().map_or(0, |s| s.start);
            cx.err(at, e.message().to_string());
            return cx.finish(None, Vec::new(), None);
        }
    };
    let model = parse_model(&mut cx, root.get_ref());
    check_model(&mut cx, &model);
    hybrid::check(&mut cx, &model);
    if let Some(declared) = certificates {
        hybrid::check_certificates(&mut cx, &model, declared);
    }
    let mut b = Builder::new();
    emit(&mut cx, &mut b, &model, text);
    let sizes = b.sizes();
    for (i, c) in b.counters.iter().enumerate() {
        if let (Some(at), Some(info)) = (c.over, CAPS.get(i)) {
            cx.err(
                at,
                format!(
                    "too many {} ({} > {}, {})",
                    info.noun, c.need, info.max, info.konst
                ),
            );
        }
    }
    let table = b.t;
    let mut blob = Vec::new();
    if cx.errors.is_empty() {
        if let Err(e) = table.validate() {
            cx.err(
                0,
                format!("internal error: the compiled table is invalid ({e:?})"),
            );
        } else {
            blob = encode(&table);
            match Table::from_blob(&blob) {
                Ok(back) if back == *table => {}
                Ok(_) => cx.err(0, "internal error: the blob does not decode to the table"),
                Err(e) => cx.err(
                    0,
                    format!("internal error: the blob does not decode ({e:?})"),
                ),
            }
        }
    }
    cx.finish(Some(table), blob, Some(sizes))
}

/// The text `check_command` prints for one outcome.
fn report(file: &str, o: &Findings) -> String {
    let mut out = String::new();
    if let Some(sizes) = &o.sizes {
        for (info, need) in CAPS.iter().zip(sizes.iter()) {
            let unit = if info.bytes { " bytes" } else { "" };
            out.push_str(&format!(
                "{:<12}{:>7} / {}{unit}\n",
                info.label, need, info.max
            ));
        }
    }
    match (&o.table, o.errors.is_empty()) {
        (Some(t), true) => out.push_str(&format!(
            "blob: {} bytes, version {:016X}\n",
            o.blob.len(),
            t.version
        )),
        _ => out.push_str(&format!(
            "not compiled: {} error{}\n",
            o.errors.len(),
            if o.errors.len() == 1 { "" } else { "s" }
        )),
    }
    let mut all: Vec<(&Diag, &str)> = o
        .errors
        .iter()
        .map(|d| (d, "error"))
        .chain(o.warnings.iter().map(|d| (d, "warning")))
        .collect();
    all.sort_by_key(|(d, _)| (d.line, d.col));
    for (d, kind) in all {
        out.push_str(&format!(
            "{file}:{}:{}: {kind}: {}\n",
            d.line, d.col, d.message
        ));
    }
    out
}

/// 64-bit FNV-1a of the rule file's text: the policy's version.
fn fnv1a64(text: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests;
