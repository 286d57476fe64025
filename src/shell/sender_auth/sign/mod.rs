//! DKIM signing of originating mail (RFC 6376, RFC 8463): per sender
//! domain, one signature per configured key (RSA and Ed25519 may both sign).
//!
//! The body hash is taken while the message is received ([`BodyTap`]), so
//! signing needs no second read of the spool; the signature is made over
//! the header block as it will leave (the policy's edits applied) and
//! stored with the message as a header edit before the `250`.

use crate::engine::dkim::{self, canon, signature::Canon};
use base64::Engine as _;
use ring::signature::{Ed25519KeyPair, RsaKeyPair};
use ring::{digest, rand};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;
use std::path::PathBuf;

/// The header fields signed when present, in this order; `From` is signed
/// once more than it occurs, so that no From can be added afterwards.
pub const SIGNED_HEADERS: &[&str] = &[
    "from",
    "to",
    "cc",
    "subject",
    "date",
    "message-id",
    "reply-to",
    "in-reply-to",
    "references",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
];

/// One `[[dkim]]` entry of the appliance config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFile {
    /// The signing domain (`d=`), matched against the From domain.
    pub domain: String,
    /// The selector (`s=`).
    pub selector: String,
    /// The PEM private key: RSA (PKCS#8 or PKCS#1) or Ed25519 (PKCS#8).
    pub key: PathBuf,
}

enum Key {
    Rsa(RsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

struct Loaded {
    domain: String,
    selector: String,
    key: Key,
}

/// The loaded signing keys.
#[derive(Default)]
pub struct Signer {
    keys: Vec<Loaded>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({} keys)", self.keys.len())
    }
}

/// Reads one key file; the error names the file and says what is wrong.
fn load_key(f: &KeyFile) -> Result<Key, String> {
    let path = f.key.display();
    let der = PrivateKeyDer::from_pem_file(&f.key).map_err(|e| format!("DKIM key {path}: {e}"))?;
    let bytes = der.secret_der();
    let rsa = match &der {
        PrivateKeyDer::Pkcs1(_) => RsaKeyPair::from_der(bytes).ok(),
        _ => RsaKeyPair::from_pkcs8(bytes).ok(),
    };
    if let Some(k) = rsa {
        let bits = k.public().modulus_len() * 8;
        if bits < 1024 {
            return Err(format!(
                "DKIM key {path}: RSA key of {bits} bits; 1024 at least (RFC 8301), 2048 advised"
            ));
        }
        return Ok(Key::Rsa(k));
    }
    Ed25519KeyPair::from_pkcs8_maybe_unchecked(bytes)
        .map(Key::Ed25519)
        .map_err(|_| format!("DKIM key {path}: neither an RSA nor an Ed25519 private key"))
}

impl Signer {
    /// Loads every key; the first bad one is the error (the daemon does
    /// not start, or a SIGHUP keeps the running keys).
    pub fn load(files: &[KeyFile]) -> Result<Signer, String> {
        let keys = files
            .iter()
            .map(|f| {
                load_key(f).map(|key| Loaded {
                    domain: f.domain.to_ascii_lowercase(),
                    selector: f.selector.clone(),
                    key,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Signer { keys })
    }

    /// The key files that group or others may read, with their modes: the
    /// daemon warns about each at start and on SIGHUP (a private key should
    /// be 0600 or 0400, owned by the user sluice runs as).
    pub fn loose_files(files: &[KeyFile]) -> Vec<(PathBuf, u32)> {
        use std::os::unix::fs::PermissionsExt as _;
        files
            .iter()
            .filter_map(|f| {
                let mode = std::fs::metadata(&f.key).ok()?.permissions().mode() & 0o7777;
                (mode & 0o044 != 0).then(|| (f.key.clone(), mode))
            })
            .collect()
    }

    /// Whether any key is configured.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The DKIM-Signature fields (each with its CRLF, RSA before Ed25519 as
    /// configured) for a message whose From domain is `domain`, with header
    /// block `head` (as it will leave) and body hash `body_hash`; empty when
    /// no key signs for `domain`.
    pub fn sign(&self, domain: &str, head: &[u8], body_hash: &[u8], now: u64) -> Vec<String> {
        let domain = domain.to_ascii_lowercase();
        let h = header_list(head);
        self.keys
            .iter()
            .filter(|k| k.domain == domain)
            .filter_map(|k| sign_one(k, head, &h, body_hash, now))
            .collect()
    }
}

/// `h=`: each signed name as often as it occurs, From once more.
fn header_list(head: &[u8]) -> String {
    let mut names = Vec::new();
    for name in SIGNED_HEADERS {
        let n = crate::engine::header::find_all(head, name.as_bytes()).count();
        let times = if *name == "from" { n + 1 } else { n };
        names.extend(std::iter::repeat_n(*name, times));
    }
    names.join(":")
}

/// One signature with key `k`.
fn sign_one(k: &Loaded, head: &[u8], h: &str, body_hash: &[u8], now: u64) -> Option<String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let alg = match k.key {
        Key::Rsa(_) => "rsa-sha256",
        Key::Ed25519(_) => "ed25519-sha256",
    };
    let unsigned = format!(
        "DKIM-Signature: v=1; a={alg}; c=relaxed/relaxed; d={}; s={};\r\n\tt={now}; h={};\r\n\tbh={};\r\n\tb=",
        k.domain,
        k.selector,
        fold_list(h),
        b64.encode(body_hash)
    );
    let mut data = Vec::with_capacity(1024);
    dkim::signed_fields(head, h.as_bytes(), |f| {
        canon::header(f, Canon::Relaxed, false, false, &mut |x: &[u8]| {
            data.extend_from_slice(x)
        })
    });
    let field = format!("{unsigned}\r\n");
    canon::header(
        field.as_bytes(),
        Canon::Relaxed,
        true,
        true,
        &mut |x: &[u8]| data.extend_from_slice(x),
    );
    let sig = match &k.key {
        Key::Rsa(key) => {
            let mut out = vec![0u8; key.public().modulus_len()];
            key.sign(
                &ring::signature::RSA_PKCS1_SHA256,
                &rand::SystemRandom::new(),
                &data,
                &mut out,
            )
            .ok()?;
            out
        }
        Key::Ed25519(key) => key
            .sign(digest::digest(&digest::SHA256, &data).as_ref())
            .as_ref()
            .to_vec(),
    };
    Some(format!("{unsigned}{}\r\n", fold(&b64.encode(sig))))
}

/// `h=` folded after every fourth name, so lines stay short.
fn fold_list(h: &str) -> String {
    let names: Vec<&str> = h.split(':').collect();
    names
        .chunks(4)
        .map(|c| c.join(":"))
        .collect::<Vec<_>>()
        .join(":\r\n\t ")
}

/// Base64 folded into lines of 72 characters.
fn fold(b64: &str) -> String {
    b64.as_bytes()
        .chunks(72)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join("\r\n\t ")
}

/// The relaxed body hash of a message, fed its octets in order while it is
/// received; the header block's end is given when it is known.
pub struct BodyTap {
    seen: u64,
    body_at: Option<u64>,
    held: Vec<u8>,
    body: canon::Body,
    hash: digest::Context,
}

impl Default for BodyTap {
    fn default() -> Self {
        BodyTap {
            seen: 0,
            body_at: None,
            held: Vec::new(),
            body: canon::Body::new(Canon::Relaxed, None),
            hash: digest::Context::new(&digest::SHA256),
        }
    }
}

impl BodyTap {
    /// A tap over a whole message held in memory whose body starts at `at`.
    pub fn over(msg: &[u8], at: u64) -> Self {
        let mut t = BodyTap::default();
        t.body_at(at);
        t.feed(msg);
        t
    }

    /// The next octets of the message (headers included).
    pub fn feed(&mut self, bytes: &[u8]) {
        let start = self.seen;
        self.seen += bytes.len() as u64;
        match self.body_at {
            Some(at) => {
                let skip = at.saturating_sub(start).min(bytes.len() as u64) as usize;
                let hash = &mut self.hash;
                self.body
                    .feed(&bytes[skip..], &mut |x: &[u8]| hash.update(x));
            }
            // Before the header block's end is known: keep the octets (at
            // most the header block and one read).
            None => self.held.extend_from_slice(bytes),
        }
    }

    /// The body starts at offset `at` of the message.
    pub fn body_at(&mut self, at: u64) {
        if self.body_at.is_some() {
            return;
        }
        self.body_at = Some(at);
        let held = std::mem::take(&mut self.held);
        let start = self.seen - held.len() as u64;
        self.seen = start;
        self.feed(&held);
    }

    /// The body hash (SHA-256 of the relaxed canonical body). A message
    /// whose header block never ended has an empty body.
    pub fn finish(mut self) -> Vec<u8> {
        if self.body_at.is_none() {
            self.held.clear();
        }
        let hash = &mut self.hash;
        self.body.finish(&mut |x: &[u8]| hash.update(x));
        self.hash.finish().as_ref().to_vec()
    }
}

#[cfg(test)]
mod tests;
