//! rustls configurations built from the PEM files of the appliance config.

use crate::engine::addr::tls_name_matches;
use crate::shell::config::TlsFiles;
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
    // The certificate's DNS names, read (by webpki) only if a wildcard
    // pattern comes up.
    let mut dns: Option<Vec<&str>> = None;
    for n in names {
        if n.starts_with(b"*.") {
            let dns = dns.get_or_insert_with(|| {
                webpki::EndEntityCert::try_from(cert)
                    .map(|c| c.valid_dns_names().collect())
                    .unwrap_or_default()
            });
            if let Some(d) = dns.iter().find(|d| tls_name_matches(n, d.as_bytes())) {
                return Some((*d).to_string());
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

/// A `[[tls.client]]` certificate loaded: its chain and key.
pub struct ClientCert {
    /// The chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The private key.
    pub key: PrivateKeyDer<'static>,
}

/// Reads one `[[tls.client]]`'s PEM files; an unreadable or empty file is
/// an error naming the certificate and the file (a key that does not fit
/// the certificate is refused when the client configuration is built).
pub fn load_client_cert(c: &crate::shell::config::ClientCertFiles) -> Result<ClientCert, String> {
    let what = |p: &std::path::Path, e: &dyn std::fmt::Display| {
        format!("[[tls.client]] \"{}\": {}: {e}", c.name, p.display())
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&c.certificate)
        .map_err(|e| what(&c.certificate, &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| what(&c.certificate, &e))?;
    if chain.is_empty() {
        return Err(what(&c.certificate, &"no certificate found"));
    }
    let key = PrivateKeyDer::from_pem_file(&c.key).map_err(|e| what(&c.key, &e))?;
    Ok(ClientCert { chain, key })
}
