//! Byte buffers sized for a read or an encode.
//!
//! The release build is optimised for size (`opt-level = "z"`), where
//! `Vec::<u8>::resize(n, 0)` is a byte-at-a-time loop: zeroing a 64 KiB
//! delivery chunk that way took a tenth of sluice's CPU at 64 KiB per
//! message (bench/README.md). These go through `calloc` and `memcpy`.

/// Zeroes copied at a time: one page.
const ZEROS: [u8; 4096] = [0; 4096];

/// Sets `v`'s length to `len`: cut, or grown with zeroes (the caller
/// overwrites them; what was there stays).
pub fn set_len_zeroed(v: &mut Vec<u8>, len: usize) {
    if len <= v.len() {
        v.truncate(len);
        return;
    }
    if v.is_empty() && v.capacity() < len {
        // calloc: fresh pages come zeroed from the kernel.
        *v = vec![0; len];
        return;
    }
    v.reserve(len - v.len());
    while v.len() < len {
        let n = (len - v.len()).min(ZEROS.len());
        v.extend_from_slice(&ZEROS[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_with_zeroes_keeps_the_front_and_cuts() {
        let mut v = Vec::new();
        set_len_zeroed(&mut v, 10_000);
        assert_eq!(v.len(), 10_000);
        assert!(v.iter().all(|&b| b == 0));
        v[0] = 7;
        v[9_999] = 9;
        // Past a page, from a non-empty start: the front stays.
        set_len_zeroed(&mut v, 20_001);
        assert_eq!((v.len(), v[0], v[9_999]), (20_001, 7, 9));
        assert!(v[10_000..].iter().all(|&b| b == 0));
        set_len_zeroed(&mut v, 3);
        assert_eq!(v, [7, 0, 0]);
        // Empty with room: no new allocation needed, zeroes all the same.
        let mut w = Vec::with_capacity(100);
        w.extend_from_slice(&[1, 2, 3]);
        w.clear();
        set_len_zeroed(&mut w, 50);
        assert_eq!(w, [0; 50]);
        set_len_zeroed(&mut w, 0);
        assert!(w.is_empty());
    }
}
