//! `sluice dkim keygen`: a DKIM signing key for `[[dkim]]` and the DNS TXT
//! record that publishes its public half (RFC 6376 §3.6.1, RFC 8463).
//! Ed25519 keys come from `ring`; RSA keys from the `rsa` crate, since
//! `ring` cannot make them (192 KiB of the aarch64 board binary).

use base64::Engine as _;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::PathBuf;

/// `sluice dkim keygen`'s usage line.
const KEYGEN_USAGE: &str = "usage: sluice dkim keygen --domain D --selector S [--type ed25519|rsa] [--bits 2048] [--out FILE]";

/// The arguments of `dkim keygen`.
struct KeygenArgs {
    /// `--domain`.
    domain: String,
    /// `--selector`.
    selector: String,
    /// `--type rsa` (else Ed25519).
    rsa: bool,
    /// `--bits` (RSA only).
    bits: usize,
    /// `--out`, else `SELECTOR.DOMAIN.pem` here.
    out: PathBuf,
}

/// `sluice dkim ...`: exit 0 done, 1 the key could not be made or
/// written, 2 bad input.
pub(super) fn command(args: &[&str]) -> i32 {
    match args {
        ["keygen", rest @ ..] => match parse(rest) {
            Ok(a) => keygen(&a),
            Err(code) => code,
        },
        _ => {
            eprintln!("sluice: dkim: unknown command\n{KEYGEN_USAGE}");
            2
        }
    }
}

/// Whether `s` is a DNS name of letters, digits, `-` and `_` (as the
/// config's `[[dkim]]` checks it).
fn name_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Reads the arguments; `Err` holds the exit status, the message printed.
fn parse(args: &[&str]) -> Result<KeygenArgs, i32> {
    let bad = |m: String| {
        eprintln!("sluice: dkim keygen: {m}\n{KEYGEN_USAGE}");
        2
    };
    let (mut domain, mut selector, mut out) = (None, None, None);
    let (mut rsa, mut bits) = (false, 2048usize);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or_else(|| bad(format!("{a} needs a value")));
        match *a {
            "--domain" => domain = Some(value()?.trim_end_matches('.').to_ascii_lowercase()),
            "--selector" => selector = Some(value()?.to_string()),
            "--out" => out = Some(PathBuf::from(value()?)),
            "--type" => match *value()? {
                "ed25519" => rsa = false,
                "rsa" => rsa = true,
                t => return Err(bad(format!("--type {t:?}: ed25519 or rsa"))),
            },
            "--bits" => {
                let v = value()?;
                bits = v
                    .parse()
                    .ok()
                    .filter(|b| (1024..=4096).contains(b) && b % 8 == 0)
                    .ok_or_else(|| bad(format!("--bits {v:?}: 1024 to 4096")))?;
            }
            "--help" | "-h" => {
                outln!("{KEYGEN_USAGE}");
                return Err(0);
            }
            other => return Err(bad(format!("unexpected argument {other:?}"))),
        }
    }
    let (Some(domain), Some(selector)) = (domain, selector) else {
        return Err(bad("--domain and --selector are needed".into()));
    };
    for (what, v) in [("--domain", &domain), ("--selector", &selector)] {
        if !name_ok(v) {
            return Err(bad(format!("{what} {v:?} is not a domain name")));
        }
    }
    let out = out.unwrap_or_else(|| PathBuf::from(format!("{selector}.{domain}.pem")));
    Ok(KeygenArgs {
        domain,
        selector,
        rsa,
        bits,
        out,
    })
}

/// Makes the key, writes it (mode 0600, never over an existing file) and
/// prints the TXT record to publish.
fn keygen(a: &KeygenArgs) -> i32 {
    let made = if a.rsa { rsa(a.bits) } else { ed25519() };
    let (pkcs8, public) = match made {
        Ok(k) => k,
        Err(e) => {
            eprintln!("sluice: dkim keygen: {e}");
            return 1;
        }
    };
    if let Err(e) = write_key(&a.out, &pem("PRIVATE KEY", &pkcs8)) {
        eprintln!("sluice: dkim keygen: {}: {e}", a.out.display());
        return 1;
    }
    // The config resolves a relative key path against its own folder.
    let full = std::fs::canonicalize(&a.out).unwrap_or_else(|_| a.out.clone());
    eprintln!(
        "sluice: wrote {} (mode 0600); in the appliance config:\n  \
         [[dkim]]\n  domain = \"{}\"\n  selector = \"{}\"\n  key = \"{}\"\n\
         publish this record:",
        a.out.display(),
        a.domain,
        a.selector,
        full.display()
    );
    let b64 = base64::engine::general_purpose::STANDARD.encode(public);
    outln!(
        "{}",
        txt_record(
            &a.selector,
            &a.domain,
            &format!(
                "v=DKIM1; k={}; p={b64}",
                if a.rsa { "rsa" } else { "ed25519" }
            )
        )
    );
    0
}

/// A new Ed25519 key: its PKCS#8 document and its 32-octet public key.
fn ed25519() -> Result<(Vec<u8>, Vec<u8>), String> {
    use ring::signature::{Ed25519KeyPair, KeyPair as _};
    let rng = ring::rand::SystemRandom::new();
    let doc = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| "no random numbers".to_string())?;
    let pair = Ed25519KeyPair::from_pkcs8(doc.as_ref()).map_err(|e| e.to_string())?;
    Ok((doc.as_ref().to_vec(), pair.public_key().as_ref().to_vec()))
}

/// A new RSA key of `bits` bits (exponent 65537): its PKCS#8 document and
/// its SubjectPublicKeyInfo (DER), the `p=` of an RSA key record.
fn rsa(bits: usize) -> Result<(Vec<u8>, Vec<u8>), String> {
    use rsa::pkcs8::{EncodePrivateKey as _, EncodePublicKey as _};
    let mut rng = getrandom::SysRng;
    let key = rsa::PrivateKey::new(&mut rng, bits).map_err(|e| e.to_string())?;
    let doc = key.to_pkcs8_der().map_err(|e| e.to_string())?;
    let public = key
        .to_public_key()
        .to_public_key_der()
        .map_err(|e| e.to_string())?;
    Ok((doc.as_bytes().to_vec(), public.as_bytes().to_vec()))
}

/// `der` as PEM with `label`, 64 characters a line.
fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut s = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        s.push_str(&String::from_utf8_lossy(chunk));
        s.push('\n');
    }
    s.push_str(&format!("-----END {label}-----\n"));
    s
}

/// Writes `text` to a new file `path`, mode 0600 from its creation on; an
/// existing file is an error (a key is never overwritten).
fn write_key(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

/// The zone-file line `S._domainkey.D. IN TXT "..."`, the value split into
/// quoted strings of at most 255 octets (RFC 1035 §3.3.14).
fn txt_record(selector: &str, domain: &str, value: &str) -> String {
    let parts: Vec<String> = value
        .as_bytes()
        .chunks(255)
        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
        .collect();
    format!("{selector}._domainkey.{domain}. IN TXT {}", parts.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_records_are_split_into_strings_of_255() {
        let v = "x".repeat(600);
        let r = txt_record("s", "d.example", &v);
        assert!(r.starts_with("s._domainkey.d.example. IN TXT \""), "{r}");
        let strings: Vec<&str> = r.split('"').skip(1).step_by(2).collect();
        assert_eq!(
            strings.iter().map(|s| s.len()).collect::<Vec<_>>(),
            [255, 255, 90]
        );
    }

    #[test]
    fn an_ed25519_key_loads_as_a_signing_key() {
        let (doc, public) = ed25519().expect("key");
        assert_eq!(public.len(), 32);
        let dir = std::env::temp_dir().join(format!("sluice-keygen-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("k.pem");
        let _ = std::fs::remove_file(&path);
        write_key(&path, &pem("PRIVATE KEY", &doc)).expect("write");
        assert!(write_key(&path, "x").is_err(), "overwrote a key");
        let f = crate::shell::sender_auth::sign::KeyFile {
            domain: "d.example".into(),
            selector: "s".into(),
            key: path.clone(),
        };
        let signer = crate::shell::sender_auth::sign::Signer::load(std::slice::from_ref(&f));
        assert!(signer.is_ok_and(|s| !s.is_empty()));
        assert!(crate::shell::sender_auth::sign::Signer::loose_files(&[f]).is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_rsa_key_loads_as_a_signing_key() {
        let (doc, public) = rsa(2048).expect("key");
        // SubjectPublicKeyInfo of a 2048-bit key: 294 octets.
        assert_eq!(public.len(), 294);
        let dir = std::env::temp_dir().join(format!("sluice-keygen-rsa-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("r.pem");
        let _ = std::fs::remove_file(&path);
        write_key(&path, &pem("PRIVATE KEY", &doc)).expect("write");
        let f = crate::shell::sender_auth::sign::KeyFile {
            domain: "d.example".into(),
            selector: "s".into(),
            key: path,
        };
        let signer = crate::shell::sender_auth::sign::Signer::load(&[f]);
        assert!(signer.is_ok_and(|s| !s.is_empty()));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_arguments_are_exit_2() {
        assert_eq!(parse(&["--domain", "d.example"]).err(), Some(2));
        assert_eq!(
            parse(&["--domain", "d ex", "--selector", "s"]).err(),
            Some(2)
        );
        assert_eq!(
            parse(&["--domain", "d.example", "--selector", "s", "--type", "dsa"]).err(),
            Some(2)
        );
        let a = parse(&["--domain", "D.example.", "--selector", "s1"]).expect("ok");
        assert_eq!(a.out, PathBuf::from("s1.d.example.pem"));
    }
}
