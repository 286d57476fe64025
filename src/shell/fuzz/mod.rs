//! Fuzz target bodies: one function per parser, each taking the fuzzer's
//! octets, asserting the parser's invariants and panicking only when one
//! is broken.
//!
//! `fuzz/fuzz_targets/NAME.rs` (cargo-fuzz, nightly) calls these, and
//! `tests/fuzz_replay.rs` (stable `cargo test`) runs every one of them over
//! `fuzz/corpus/NAME/` and `fuzz/regressions/NAME/`. They live in the std
//! shell because they allocate (transcripts, temporary files); the engine
//! stays `no_std` and allocation-free. Nothing in the daemon calls them, so
//! the release build's link-time optimisation leaves them out.

mod parsers;
mod session;
mod stores;

pub use parsers::{dkim, header, milter, spf};
pub use session::{auth, client, receiver};
#[cfg(test)]
pub(crate) use stores::by_index_and_scan;
pub use stores::{blob, directory, dns, passwd, rules, spool, upload};

/// A fuzz target body: the fuzzer's input in, a panic on a broken invariant.
pub type Target = fn(&[u8]);

/// Every target, by the name of its `fuzz/fuzz_targets/NAME.rs`, its
/// `fuzz/corpus/NAME/` and `fuzz/regressions/NAME/`.
pub const TARGETS: &[(&str, Target)] = &[
    ("receiver", receiver),
    ("header", header),
    ("client", client),
    ("rules", rules),
    ("blob", blob),
    ("upload", upload),
    ("spool", spool),
    ("dns", dns),
    ("milter", milter),
    ("spf", spf),
    ("dkim", dkim),
    ("auth", auth),
    ("directory", directory),
    ("passwd", passwd),
];

/// A small deterministic generator (xorshift) seeded from input octets, so
/// that the split points and choices a target makes are part of its input
/// and a saved crash replays exactly.
struct Dice(u64);

impl Dice {
    /// A generator seeded with `seed` (never zero inside).
    fn new(seed: &[u8]) -> Dice {
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        for &b in seed {
            s = (s ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        Dice(s | 1)
    }

    /// The next value in `0..n` (`n` > 0).
    fn below(&mut self, n: usize) -> usize {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        (x % n.max(1) as u64) as usize
    }
}

/// Cuts `input` into chunks whose lengths `dice` picks (1 to `max` octets),
/// the way reads of a socket might arrive.
fn chunks<'a>(input: &'a [u8], dice: &mut Dice, max: usize) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = input;
    while !rest.is_empty() {
        let n = (1 + dice.below(max)).min(rest.len());
        let (a, b) = rest.split_at(n);
        out.push(a);
        rest = b;
    }
    out
}

/// Splits the input into a header of `n` octets (zero-filled when the
/// input is shorter) and the rest.
fn take<const N: usize>(data: &[u8]) -> ([u8; N], &[u8]) {
    let mut head = [0u8; N];
    let n = data.len().min(N);
    head[..n].copy_from_slice(&data[..n]);
    (head, &data[n..])
}
