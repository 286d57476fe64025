//! DNS block and allow lists (RFC 5782), sans-IO: the query name for a
//! client address under a list's zone, and whether an answer counts.
//!
//! IPv4 `a.b.c.d` is asked as `d.c.b.a.ZONE`; IPv6 in nibble format, the 32
//! hexadecimal digits of the address in reverse order, lower case, each a
//! label (`1.0.0.0. ... .8.b.d.0.1.0.0.2.ZONE`, RFC 5782 §2.4). The shell
//! sends the A query and hands the answer's addresses to [`listed`].

use crate::engine::limits::{MAX_DNS_NAME, MAX_LIST_CODES};
use serde::{Deserialize, Serialize};

/// Which A answers of a list count as "listed".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Codes {
    /// Any answer in 127.0.0.0/8 (RFC 5782 §2.3), except 127.255.255.0/24,
    /// which providers use for errors ("query refused", "over quota").
    Any,
    /// Exactly one of these addresses (`count` of them are used).
    Listed {
        /// How many of `addrs` are used.
        count: u8,
        /// The return codes, e.g. 127.0.0.2.
        addrs: [[u8; 4]; MAX_LIST_CODES],
    },
    /// An answer in 127.0.0.0/8 whose last octet has one of these bits set
    /// (the bitmask lists publish, e.g. `0x04`).
    Mask(u8),
}

/// Writes the query name of `ip` (16 octets, IPv4-mapped for IPv4) under
/// `zone` into `out`; the name's length, or `None` when it does not fit
/// `out` or [`MAX_DNS_NAME`], or the zone is empty.
pub fn query_name(ip: &[u8; 16], zone: &[u8], out: &mut [u8]) -> Option<usize> {
    let zone = zone.strip_suffix(b".").unwrap_or(zone);
    if zone.is_empty() {
        return None;
    }
    let mut w = Writer { out, len: 0 };
    match ipv4_of(ip) {
        Some(v4) => {
            for octet in v4.iter().rev() {
                w.decimal(*octet)?;
                w.push(b'.')?;
            }
        }
        None => {
            for octet in ip.iter().rev() {
                w.push(hex(octet & 0x0f))?;
                w.push(b'.')?;
                w.push(hex(octet >> 4))?;
                w.push(b'.')?;
            }
        }
    }
    w.extend(zone)?;
    (w.len <= MAX_DNS_NAME).then_some(w.len)
}

/// Whether an A answer `answer` counts as listed under `codes`.
pub fn listed(codes: &Codes, answer: [u8; 4]) -> bool {
    let loopback = answer[0] == 127;
    match codes {
        Codes::Any => loopback && !(answer[1] == 255 && answer[2] == 255),
        Codes::Listed { count, addrs } => addrs
            .get(..usize::from(*count))
            .unwrap_or(&[])
            .contains(&answer),
        Codes::Mask(m) => loopback && answer[3] & m != 0,
    }
}

/// The IPv4 address of an IPv4-mapped one (`::ffff:a.b.c.d`).
pub fn ipv4_of(ip: &[u8; 16]) -> Option<[u8; 4]> {
    let (head, tail) = ip.split_at(12);
    if head != [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff] {
        return None;
    }
    let mut v4 = [0u8; 4];
    v4.copy_from_slice(tail);
    Some(v4)
}

/// A lower-case hexadecimal digit.
fn hex(n: u8) -> u8 {
    b"0123456789abcdef"[usize::from(n & 0x0f)]
}

/// Appends to a caller's buffer, refusing what does not fit.
struct Writer<'a> {
    /// The buffer.
    out: &'a mut [u8],
    /// Octets written.
    len: usize,
}

impl Writer<'_> {
    /// One octet.
    fn push(&mut self, b: u8) -> Option<()> {
        *self.out.get_mut(self.len)? = b;
        self.len += 1;
        Some(())
    }

    /// Several octets.
    fn extend(&mut self, s: &[u8]) -> Option<()> {
        s.iter().try_for_each(|b| self.push(*b))
    }

    /// An octet in decimal, no leading zeros.
    fn decimal(&mut self, n: u8) -> Option<()> {
        if n >= 100 {
            self.push(b'0' + n / 100)?;
        }
        if n >= 10 {
            self.push(b'0' + n / 10 % 10)?;
        }
        self.push(b'0' + n % 10)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::{IpAddr, Ipv6Addr};

    fn ip16(ip: IpAddr) -> [u8; 16] {
        match ip {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            IpAddr::V6(v6) => v6.octets(),
        }
    }

    fn name(ip: &str, zone: &str) -> Option<String> {
        let mut buf = [0u8; MAX_DNS_NAME];
        let n = query_name(&ip16(ip.parse().unwrap()), zone.as_bytes(), &mut buf)?;
        Some(String::from_utf8(buf[..n].to_vec()).unwrap())
    }

    #[test]
    fn ipv4_is_reversed_octets() {
        assert_eq!(
            name("192.0.2.99", "zen.example").as_deref(),
            Some("99.2.0.192.zen.example")
        );
        assert_eq!(
            name("127.0.0.2", "bl.test.").as_deref(),
            Some("2.0.0.127.bl.test")
        );
        assert_eq!(name("10.100.255.0", "z").as_deref(), Some("0.255.100.10.z"));
    }

    #[test]
    fn ipv6_is_nibble_format() {
        // RFC 5782 §2.4's example.
        assert_eq!(
            name("2001:db8:1:2:3:4:567:89ab", "ugly.example.com").as_deref(),
            Some(
                "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.ugly.example.com"
            )
        );
        assert_eq!(
            name("::1", "bl.test").as_deref(),
            Some("1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.bl.test")
        );
    }

    #[test]
    fn too_long_or_empty_zone_gives_none() {
        let mut small = [0u8; 10];
        let ip = ip16("192.0.2.1".parse().unwrap());
        assert_eq!(query_name(&ip, b"bl.test", &mut small), None);
        assert_eq!(name("192.0.2.1", ""), None);
        assert_eq!(name("192.0.2.1", "."), None);
        let long = "a".repeat(250);
        assert_eq!(name("192.0.2.1", &long), None);
    }

    #[test]
    fn codes_any_listed_mask() {
        assert!(listed(&Codes::Any, [127, 0, 0, 2]));
        assert!(listed(&Codes::Any, [127, 0, 0, 11]));
        assert!(!listed(&Codes::Any, [127, 255, 255, 254]));
        assert!(!listed(&Codes::Any, [10, 0, 0, 2]));
        let mut addrs = [[0u8; 4]; MAX_LIST_CODES];
        addrs[0] = [127, 0, 0, 2];
        addrs[1] = [127, 0, 0, 4];
        let l = Codes::Listed { count: 2, addrs };
        assert!(listed(&l, [127, 0, 0, 2]));
        assert!(listed(&l, [127, 0, 0, 4]));
        assert!(!listed(&l, [127, 0, 0, 3]));
        // Unused slots (zeros) never match.
        assert!(!listed(&l, [0, 0, 0, 0]));
        let m = Codes::Mask(0x04);
        assert!(listed(&m, [127, 0, 0, 4]));
        assert!(listed(&m, [127, 0, 0, 6]));
        assert!(!listed(&m, [127, 0, 0, 2]));
        assert!(!listed(&m, [10, 0, 0, 4]));
    }

    proptest! {
        #[test]
        fn ipv4_names_parse_back(a: u8, b: u8, c: u8, d: u8) {
            let n = name(&format!("{a}.{b}.{c}.{d}"), "bl.test").unwrap();
            let labels: Vec<&str> = n.split('.').collect();
            prop_assert_eq!(labels.len(), 6);
            let back: Vec<u8> = labels[..4].iter().rev().map(|l| l.parse().unwrap()).collect();
            prop_assert_eq!(back, vec![a, b, c, d]);
        }

        #[test]
        fn ipv6_names_parse_back(octets: [u8; 16]) {
            let v6 = Ipv6Addr::from(octets);
            prop_assume!(v6.to_ipv4_mapped().is_none());
            let n = name(&v6.to_string(), "bl.test").unwrap();
            let labels: Vec<&str> = n.split('.').collect();
            prop_assert_eq!(labels.len(), 34);
            let digits: String = labels[..32].iter().rev().copied().collect();
            prop_assert_eq!(u128::from_str_radix(&digits, 16).unwrap(), u128::from(v6));
        }

        #[test]
        fn any_buffer_size_is_safe(octets: [u8; 16], size in 0usize..100) {
            let mut buf = vec![0u8; size];
            if let Some(n) = query_name(&octets, b"bl.test", &mut buf) {
                prop_assert!(n <= size);
            }
        }
    }
}
