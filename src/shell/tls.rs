//! rustls configurations built from the PEM files of the appliance config.

use super::config::TlsFiles;
use crate::engine::policy::tls_name_matches;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::Arc;

/// The server side of STARTTLS: the certificate chain and key of `files`,
/// TLS 1.2 and 1.3 with the ring provider, no client certificate required.
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.certificate)
        .map_err(|e| format!("{}: {e}", files.certificate.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", files.certificate.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{}: no certificate found",
            files.certificate.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| format!("{}: {e}", files.key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in
                CertificateDer::pem_file_iter(ca).map_err(|e| format!("{}: {e}", ca.display()))?
            {
                let c = c.map_err(|e| format!("{}: {e}", ca.display()))?;
                roots.add(c).map_err(|e| format!("{}: {e}", ca.display()))?;
            }
            // Optional: clients without a certificate stay welcome; a
            // certificate that does not verify fails the handshake.
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .allow_unauthenticated()
            .build()
            .map_err(|e| format!("{}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let cfg = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("TLS certificate {}: {e}", files.certificate.display()))?;
    Ok(Arc::new(cfg))
}

/// The name by which the (already verified) client certificate `cert`
/// attributes the session: for the first of `names` it is valid for, in
/// order, that name; a wildcard `*.domain` (which is no host name, so
/// rustls cannot check it) is matched against the certificate's DNS names
/// instead ([`tls_name_matches`]), and the certificate name that fits is
/// returned.
pub fn certificate_name<'n>(
    cert: &CertificateDer<'_>,
    names: impl Iterator<Item = &'n [u8]>,
) -> Option<String> {
    let parsed = rustls::server::ParsedCertificate::try_from(cert).ok()?;
    let dns = dns_names(cert.as_ref());
    for n in names {
        if n.starts_with(b"*.") {
            if let Some(d) = dns.iter().find(|d| tls_name_matches(n, d)) {
                return Some(String::from_utf8_lossy(d).into_owned());
            }
            continue;
        }
        let valid = std::str::from_utf8(n)
            .ok()
            .and_then(|s| rustls_pki_types::ServerName::try_from(s).ok())
            .is_some_and(|sn| rustls::client::verify_server_name(&parsed, &sn).is_ok());
        if valid {
            return Some(String::from_utf8_lossy(n).into_owned());
        }
    }
    None
}

/// One DER element: tag, contents, what follows. `None` when malformed.
fn der(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = b.split_first()?;
    let (&l0, rest) = rest.split_first()?;
    let (len, rest) = if l0 < 0x80 {
        (usize::from(l0), rest)
    } else {
        let n = usize::from(l0 & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let (lb, rest) = rest.split_at(n);
        (
            lb.iter().fold(0usize, |a, &x| (a << 8) | usize::from(x)),
            rest,
        )
    };
    if rest.len() < len {
        return None;
    }
    let (content, after) = rest.split_at(len);
    Some((tag, content, after))
}

/// The elements of a constructed DER value, in order.
fn der_items(mut b: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    std::iter::from_fn(move || {
        let (tag, content, rest) = der(b)?;
        b = rest;
        Some((tag, content))
    })
}

/// The dNSName entries of an X.509 certificate's subjectAltName extension
/// (RFC 5280 §4.2.1.6); empty when there is none or the DER is malformed.
fn dns_names(cert: &[u8]) -> Vec<Vec<u8>> {
    const SEQUENCE: u8 = 0x30;
    const EXTENSIONS: u8 = 0xa3; // [3] EXPLICIT, in TBSCertificate
    const SAN: &[u8] = &[0x55, 0x1d, 0x11]; // 2.5.29.17
    const DNS_NAME: u8 = 0x82; // GeneralName [2] IA5String
    let mut out = Vec::new();
    let Some((SEQUENCE, certificate, _)) = der(cert) else {
        return out;
    };
    let Some((SEQUENCE, tbs, _)) = der(certificate) else {
        return out;
    };
    let Some((_, exts)) = der_items(tbs).find(|(t, _)| *t == EXTENSIONS) else {
        return out;
    };
    let Some((SEQUENCE, exts, _)) = der(exts) else {
        return out;
    };
    for (tag, ext) in der_items(exts) {
        if tag != SEQUENCE {
            continue;
        }
        let mut it = der_items(ext);
        if it.next() != Some((0x06, SAN)) {
            continue;
        }
        // critical BOOLEAN (optional), then the OCTET STRING value
        let Some((_, value)) = it.find(|(t, _)| *t == 0x04) else {
            continue;
        };
        if let Some((SEQUENCE, names, _)) = der(value) {
            out.extend(
                der_items(names)
                    .filter(|(t, _)| *t == DNS_NAME)
                    .map(|(_, n)| n.to_vec()),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_der_gives_no_names_and_no_panic() {
        assert!(dns_names(&[]).is_empty());
        assert!(dns_names(&[0x30]).is_empty());
        assert!(dns_names(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]).is_empty());
        assert!(dns_names(&[0x30, 0x05, 0x30, 0x03, 0xa3, 0x01]).is_empty());
        for n in 0..64u8 {
            let junk: Vec<u8> = (0..n).map(|i| i.wrapping_mul(37) ^ 0x30).collect();
            let _ = dns_names(&junk);
        }
    }

    #[test]
    fn the_dns_names_of_a_subject_alt_name_extension() {
        // TBSCertificate with only a [3] extensions wrapper holding one
        // subjectAltName: DNS:a.test, IP 127.0.0.1 (skipped), DNS:b.test.
        let names = [
            &[0x82, 6][..],
            b"a.test",
            &[0x87, 4, 127, 0, 0, 1],
            &[0x82, 6],
            b"b.test",
        ]
        .concat();
        let gn = [&[0x30, names.len() as u8][..], &names].concat();
        let ext = [
            &[
                0x06,
                3,
                0x55,
                0x1d,
                0x11,
                0x01,
                1,
                0xff,
                0x04,
                gn.len() as u8,
            ][..],
            &gn,
        ]
        .concat();
        let ext = [&[0x30, ext.len() as u8][..], &ext].concat();
        let exts = [&[0x30, ext.len() as u8][..], &ext].concat();
        let wrapped = [&[0xa3, exts.len() as u8][..], &exts].concat();
        let tbs = [&[0x02, 1, 1][..], &wrapped].concat();
        let tbs = [&[0x30, tbs.len() as u8][..], &tbs].concat();
        let cert = [&[0x30, tbs.len() as u8][..], &tbs].concat();
        assert_eq!(
            dns_names(&cert),
            vec![b"a.test".to_vec(), b"b.test".to_vec()]
        );
    }
}
