//! The recipient directory's read side: a compact, read-only lookup table
//! over one octet slice, read by sessions without locks or allocation.
//!
//! The shell builds the table from an LDIF or CSV export
//! (`shell::directory`); this module only reads it. Every address of the
//! directory is kept as the keyed 64-bit SipHash-2-4 of its ASCII-lowercased
//! octets, sorted, with a 32-bit index into a pool of primary addresses:
//!
//! ```text
//! 0   magic  "SLDIR\0\0\x01"
//! 8   version          u64   (a digest of the content, as a policy's)
//! 16  k0, k1           u64 ×2 (the hash key, random per build)
//! 32  addresses n      u32
//! 36  pool length p    u32
//! 40  entries          u32   (directory objects, for `status`)
//! 44  reserved         u32   (0)
//! 48  hashes           u64 × n, strictly ascending
//! ..  targets          u32 × n: pool offset of the primary, or NO_TARGET
//! ..  pool             p octets: u16 length + the address, per primary
//! ```
//!
//! All integers are little-endian. 12 octets an address plus the pool.
//! Only hashes are kept: an unknown address is taken as known only if its
//! hash equals a stored one, which for a key the sender cannot know is a
//! chance of n / 2^64 (about 1.4e-14 for 2^18 addresses) per lookup; the
//! builder re-keys when two stored addresses collide (see `docs/DESIGN.md`).

use crate::engine::limits::{MAX_DIRECTORY_ADDRESSES, MAX_DIRECTORY_POOL};

/// The first eight octets of a directory table.
pub const MAGIC: [u8; 8] = *b"SLDIR\0\0\x01";
/// Octets before the hashes.
pub const HEADER: usize = 48;
/// The target of an address that is not rewritten (a primary, a target
/// address, or an entry without a primary).
pub const NO_TARGET: u32 = u32::MAX;

/// Why octets are not a directory table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum FormatError {
    /// Shorter than its header, or the wrong magic.
    NotADirectory,
    /// More addresses or pool octets than the capacities allow.
    TooLarge,
    /// The sizes in the header do not add up to the length.
    Truncated,
    /// The hashes are not strictly ascending.
    Unsorted,
    /// A target points outside the pool or past its end.
    BadTarget,
}

/// What the directory says about an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Hit<'a> {
    /// The primary address a secondary one is rewritten to; `None` for a
    /// primary address (or one the directory does not rewrite).
    pub primary: Option<&'a [u8]>,
    /// Where `primary` lies in the table's octets (offset, end), for
    /// pieces of a rewritten address.
    pub span: (u32, u32),
}

/// A directory table: borrowed octets, read in place.
#[derive(Debug, Clone, Copy)]
pub struct View<'a> {
    blob: &'a [u8],
    n: usize,
    k0: u64,
    k1: u64,
}

/// The little-endian u32 at `off` (0 when out of range).
fn u32_at(b: &[u8], off: usize) -> u32 {
    b.get(off..off + 4)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}

/// The little-endian u64 at `off` (0 when out of range).
fn u64_at(b: &[u8], off: usize) -> u64 {
    b.get(off..off + 8)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

impl<'a> View<'a> {
    /// Reads the header and checks that the sizes add up (O(1)); lookups on
    /// a table that passed only this never panic, but [`View::validate`]
    /// is what proves the order and the targets (once, at install).
    pub fn open(blob: &'a [u8]) -> Result<View<'a>, FormatError> {
        if blob.len() < HEADER || blob.get(..8) != Some(&MAGIC[..]) {
            return Err(FormatError::NotADirectory);
        }
        let n = u32_at(blob, 32) as usize;
        let pool = u32_at(blob, 36) as usize;
        if n > MAX_DIRECTORY_ADDRESSES || pool > MAX_DIRECTORY_POOL {
            return Err(FormatError::TooLarge);
        }
        if blob.len() != HEADER + 12 * n + pool {
            return Err(FormatError::Truncated);
        }
        Ok(View {
            blob,
            n,
            k0: u64_at(blob, 16),
            k1: u64_at(blob, 24),
        })
    }

    /// Checks every hash is above the one before and every target names a
    /// whole pool string (O(n)).
    pub fn validate(&self) -> Result<(), FormatError> {
        let mut prev = None;
        for i in 0..self.n {
            let h = self.hash_at(i);
            if prev.is_some_and(|p| p >= h) {
                return Err(FormatError::Unsorted);
            }
            prev = Some(h);
            let t = self.target_at(i);
            if t != NO_TARGET && self.pool_str(t).is_none() {
                return Err(FormatError::BadTarget);
            }
        }
        Ok(())
    }

    /// An empty view (no directory installed): every lookup misses.
    pub const fn empty() -> View<'static> {
        View {
            blob: &[],
            n: 0,
            k0: 0,
            k1: 0,
        }
    }

    /// The table's version (a digest of its content).
    pub fn version(&self) -> u64 {
        u64_at(self.blob, 8)
    }

    /// Number of addresses.
    pub fn addresses(&self) -> usize {
        self.n
    }

    /// Number of directory objects the addresses came from.
    pub fn entries(&self) -> u32 {
        u32_at(self.blob, 40)
    }

    /// The table's octets (rewritten addresses point into them).
    pub fn bytes(&self) -> &'a [u8] {
        self.blob
    }

    /// The `i`th hash.
    fn hash_at(&self, i: usize) -> u64 {
        u64_at(self.blob, HEADER + 8 * i)
    }

    /// The `i`th target.
    fn target_at(&self, i: usize) -> u32 {
        u32_at(self.blob, HEADER + 8 * self.n + 4 * i)
    }

    /// The pool string at pool offset `t` and its span in the table
    /// (`None` for [`NO_TARGET`] or an offset outside the pool).
    fn pool_str(&self, t: u32) -> Option<(&'a [u8], (u32, u32))> {
        if t == NO_TARGET {
            return None;
        }
        let base = (HEADER + 12 * self.n).checked_add(t as usize)?;
        let len = self
            .blob
            .get(base..base.checked_add(2)?)
            .map(|l| u16::from_le_bytes([l[0], l[1]]))? as usize;
        let s = self.blob.get(base + 2..base + 2 + len)?;
        Some((s, ((base + 2) as u32, (base + 2 + len) as u32)))
    }

    /// Whether `addr` is in the directory (compared ASCII case-insensitively)
    /// and, for a secondary address, its primary. No allocation, O(log n).
    pub fn lookup(&self, addr: &[u8]) -> Option<Hit<'a>> {
        if self.n == 0 {
            return None;
        }
        let h = hash(self.k0, self.k1, addr);
        let (mut lo, mut hi) = (0usize, self.n);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let m = self.hash_at(mid);
            if m < h {
                lo = mid + 1;
            } else if m > h {
                hi = mid;
            } else {
                let t = self.target_at(mid);
                return Some(match self.pool_str(t) {
                    Some((s, span)) => Hit {
                        primary: Some(s),
                        span,
                    },
                    None => Hit {
                        primary: None,
                        span: (0, 0),
                    },
                });
            }
        }
        None
    }
}

/// One SipHash round.
#[inline(always)]
fn round(v: &mut [u64; 4]) {
    v[0] = v[0].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(13) ^ v[0];
    v[0] = v[0].rotate_left(32);
    v[2] = v[2].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(16) ^ v[2];
    v[0] = v[0].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(21) ^ v[0];
    v[2] = v[2].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(17) ^ v[2];
    v[2] = v[2].rotate_left(32);
}

/// SipHash-2-4 with key (k0, k1) of `data` ASCII-lowercased: the key of an
/// address in the table (the builder uses it too).
pub fn hash(k0: u64, k1: u64, data: &[u8]) -> u64 {
    let mut v = [
        k0 ^ 0x736f_6d65_7073_6575,
        k1 ^ 0x646f_7261_6e64_6f6d,
        k0 ^ 0x6c79_6765_6e65_7261,
        k1 ^ 0x7465_6462_7974_6573,
    ];
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        for (d, s) in w.iter_mut().zip(c) {
            *d = s.to_ascii_lowercase();
        }
        let m = u64::from_le_bytes(w);
        v[3] ^= m;
        round(&mut v);
        round(&mut v);
        v[0] ^= m;
    }
    let mut w = [0u8; 8];
    for (d, s) in w.iter_mut().zip(chunks.remainder()) {
        *d = s.to_ascii_lowercase();
    }
    let m = u64::from_le_bytes(w) | ((data.len() as u64) << 56);
    v[3] ^= m;
    round(&mut v);
    round(&mut v);
    v[0] ^= m;
    v[2] ^= 0xff;
    for _ in 0..4 {
        round(&mut v);
    }
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(deprecated)]
    fn the_hash_is_siphash_2_4_of_the_lowercased_octets() {
        use core::hash::Hasher;
        for s in [
            "",
            "a",
            "1234567",
            "12345678",
            "Johnny@Contoso.COM",
            "x@y.example.org",
        ] {
            let mut h = core::hash::SipHasher::new_with_keys(7, 11);
            h.write(s.to_ascii_lowercase().as_bytes());
            assert_eq!(hash(7, 11, s.as_bytes()), h.finish(), "{s}");
        }
    }

    #[test]
    fn garbage_is_refused_and_never_panics() {
        assert_eq!(View::open(b"short").err(), Some(FormatError::NotADirectory));
        let mut b = [0u8; HEADER + 12];
        b[..8].copy_from_slice(&MAGIC);
        b[32] = 2; // two addresses, but room for one
        assert_eq!(View::open(&b).err(), Some(FormatError::Truncated));
        b[32] = 1;
        let v = View::open(&b).expect("sizes add up");
        // Target 0 of an empty pool is not a string.
        assert_eq!(v.validate(), Err(FormatError::BadTarget));
        let _ = v.lookup(b"x@y"); // answers, whatever it says, without a panic
        assert_eq!(View::empty().lookup(b"a@b"), None);
    }
}
