//! Decimal numbers in protocol text (`SIZE=`, `BDAT n`, reply codes):
//! parsed and written without allocation, for the receiver and the client.

/// Parses a decimal number of 1 to 19 digits (nothing else; no sign, no
/// spaces); `None` when it is not one or does not fit.
pub fn parse_u64(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 {
        return None;
    }
    let mut n: u64 = 0;
    for &c in s {
        if !c.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
    }
    Some(n)
}

/// Writes `n` in decimal at the end of `buf`; the digits written.
pub fn fmt_u64(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 || i == 0 {
            break;
        }
    }
    &buf[i..]
}

/// The text up to the first space (all of it without one).
pub fn first_word(s: &[u8]) -> Option<&[u8]> {
    s.split(|&b| b == b' ').next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_limits() {
        let mut buf = [0u8; 20];
        assert_eq!(fmt_u64(0, &mut buf), b"0");
        assert_eq!(fmt_u64(u64::MAX, &mut buf), b"18446744073709551615");
        assert_eq!(parse_u64(b"1234"), Some(1234));
        assert_eq!(
            parse_u64(b"9999999999999999999"),
            Some(9_999_999_999_999_999_999)
        );
        assert_eq!(parse_u64(b"18446744073709551615"), None);
        assert_eq!(parse_u64(b""), None);
        assert_eq!(parse_u64(b"12 "), None);
        assert_eq!(parse_u64(b"-1"), None);
        assert_eq!(first_word(b"1000 x").and_then(parse_u64), Some(1000));
        assert_eq!(first_word(b"").and_then(parse_u64), None);
    }
}
