//! DKIM key records (RFC 6376 §3.6.1): the TXT at `<s>._domainkey.<d>`.

use super::signature::Algorithm;
use super::tags::{self, TagError};

/// The key type (`k=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum KeyType {
    /// `rsa` (the default).
    Rsa,
    /// `ed25519` (RFC 8463).
    Ed25519,
}

/// Why a key record cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum KeyError {
    /// The tag list is malformed.
    Tags(TagError),
    /// `v=` is present and not `DKIM1`, or not the first tag.
    Version,
    /// `k=` names a type we do not know.
    KeyType,
    /// `p=` is missing.
    Missing,
    /// `p=` is empty: the key was revoked (§3.6.1).
    Revoked,
    /// `s=` excludes email.
    Service,
}

/// A parsed key record: slices of the TXT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key<'a> {
    /// `k=`.
    pub key_type: KeyType,
    /// `p=`: base64 of the public key (SubjectPublicKeyInfo for RSA, the
    /// 32 raw octets for Ed25519), with folding white space.
    pub public: &'a [u8],
    /// `h=`: the hash algorithms allowed, colon separated; `None` = any.
    pub hashes: Option<&'a [u8]>,
    /// `t=s`: the `i=` domain must equal `d=` exactly.
    pub strict: bool,
    /// `t=y`: the domain is testing DKIM.
    pub testing: bool,
}

impl Key<'_> {
    /// Whether this key may verify a signature made with `a` (its type,
    /// and its `h=` list).
    pub fn allows(&self, a: Algorithm) -> bool {
        let type_ok = match a {
            Algorithm::Ed25519Sha256 => self.key_type == KeyType::Ed25519,
            Algorithm::RsaSha256 | Algorithm::RsaSha1 => self.key_type == KeyType::Rsa,
        };
        let hash: &[u8] = if a == Algorithm::RsaSha1 {
            b"sha1"
        } else {
            b"sha256"
        };
        type_ok
            && self.hashes.is_none_or(|h| {
                h.split(|&b| b == b':')
                    .any(|x| crate::engine::header::trim(x).eq_ignore_ascii_case(hash))
            })
    }
}

/// Parses a key record.
pub fn parse(txt: &[u8]) -> Result<Key<'_>, KeyError> {
    tags::check(txt).map_err(KeyError::Tags)?;
    let mut first = true;
    let mut key = Key {
        key_type: KeyType::Rsa,
        public: b"",
        hashes: None,
        strict: false,
        testing: false,
    };
    let mut has_p = false;
    for t in tags::tags(txt) {
        let t = t.map_err(KeyError::Tags)?;
        match t.name {
            b"v" if !first || t.value != b"DKIM1" => return Err(KeyError::Version),
            b"k" if t.value.eq_ignore_ascii_case(b"rsa") => key.key_type = KeyType::Rsa,
            b"k" if t.value.eq_ignore_ascii_case(b"ed25519") => key.key_type = KeyType::Ed25519,
            b"k" => return Err(KeyError::KeyType),
            b"p" => {
                has_p = true;
                key.public = t.value;
            }
            b"h" => key.hashes = Some(t.value),
            b"t" => {
                for flag in t.value.split(|&b| b == b':') {
                    match crate::engine::header::trim(flag) {
                        b"s" => key.strict = true,
                        b"y" => key.testing = true,
                        _ => {}
                    }
                }
            }
            b"s" => {
                let email = t.value.split(|&b| b == b':').any(|s| {
                    let s = crate::engine::header::trim(s);
                    s == b"*" || s.eq_ignore_ascii_case(b"email")
                });
                if !email {
                    return Err(KeyError::Service);
                }
            }
            _ => {}
        }
        first = false;
    }
    match (has_p, key.public.is_empty()) {
        (false, _) => Err(KeyError::Missing),
        (true, true) => Err(KeyError::Revoked),
        (true, false) => Ok(key),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_records() {
        let k = parse(b"v=DKIM1; k=rsa; t=y:s; p=MIGfMA0G CSqGSIb3").expect("parses");
        assert_eq!(k.key_type, KeyType::Rsa);
        assert!(k.strict && k.testing);
        assert!(k.allows(Algorithm::RsaSha256) && !k.allows(Algorithm::Ed25519Sha256));
        let e =
            parse(b"v=DKIM1; k=ed25519; h=sha256; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=")
                .expect("ed");
        assert!(e.allows(Algorithm::Ed25519Sha256));
        let h = parse(b"h=sha1; p=AAAA").expect("h");
        assert!(!h.allows(Algorithm::RsaSha256) && h.allows(Algorithm::RsaSha1));
        assert_eq!(parse(b"v=DKIM1; p="), Err(KeyError::Revoked));
        assert_eq!(parse(b"v=DKIM1; k=rsa"), Err(KeyError::Missing));
        assert_eq!(parse(b"k=rsa; v=DKIM1; p=AAAA"), Err(KeyError::Version));
        assert_eq!(parse(b"v=DKIM2; p=AAAA"), Err(KeyError::Version));
        assert_eq!(parse(b"k=dsa; p=AAAA"), Err(KeyError::KeyType));
        assert_eq!(parse(b"s=tlsrpt; p=AAAA"), Err(KeyError::Service));
        assert_eq!(
            parse(b"p=AAAA; p=BBBB"),
            Err(KeyError::Tags(TagError::Duplicate))
        );
    }
}
