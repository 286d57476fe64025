//! The appliance config (`sluice.toml`): listeners, TLS, spool, limits,
//! queue, DNS, syslog, serial upload. `config/sluice.toml` is the
//! normative sample: every key optional, defaults as the README says.
//! Relative paths are relative to the config file.
//!
//! The whole file is checked before the daemon opens anything: an unknown
//! key or section, a value of the wrong type and a bad value (in any
//! section, `[dns]` included) are each an error at `LINE:COL`, as the rule
//! file's are ([`schema`] finds the places, [`effective`] prints the
//! result back as TOML for `sluice config check`).

mod auth;
mod effective;
mod milter;
mod schema;

pub use auth::AuthConfig;
pub use milter::{MilterAddress, MilterConfig, OnFailure, MACRO_STAGES};

use crate::engine::smtp::BareLineEndings;
use crate::shell::policy::compile::Diag;
use crate::shell::relay::dns::{DnsConfig, RESOLV_CONF};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The embedded default: one loopback listener, everything under
/// `./sluice-data/`, so `sluice run` works on a fresh machine.
pub const DEFAULT_CONFIG: &str = r#"
hostname = "localhost"
state_dir = "sluice-data/state"
spool_dir = "sluice-data/spool"

[[listen]]
address = "127.0.0.1:2525"

[syslog]
target = "stderr"
"#;

/// The checked appliance config, with defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Name in the greeting, EHLO reply and Received: lines.
    pub hostname: String,
    /// The rule file; `None`: the embedded default policy.
    pub rules: Option<PathBuf>,
    /// Where the compiled policy and the control socket live.
    pub state_dir: PathBuf,
    /// Where the spool segments live.
    pub spool_dir: PathBuf,
    /// The listeners.
    pub listen: Vec<Listener>,
    /// Certificate and key for STARTTLS, if configured.
    pub tls: Option<TlsFiles>,
    /// Session limits.
    pub limits: Limits,
    /// Syslog target (`unix:PATH`, `udp:HOST:PORT`, `tcp:HOST:PORT`, `stderr`).
    pub syslog_target: String,
    /// Syslog facility name.
    pub syslog_facility: String,
    /// Serial device for rule uploads; `None`: no serial upload.
    pub upload_serial: Option<PathBuf>,
    /// Its speed (8N1).
    pub upload_baud: u32,
    /// `[metrics] listen`: where `GET /metrics` is served; `None`: off.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// The delivery queue's schedule and limits.
    pub queue: QueueConfig,
    /// `[dns]`, checked (servers from resolv.conf when it lists none).
    pub dns: DnsConfig,
    /// Extra CA roots for `tls = "verify"` connectors.
    pub ca: Option<PathBuf>,
    /// `[auth]`: SMTP AUTH for internal clients.
    pub auth: AuthConfig,
    /// `[metrics] syslog_interval`: how often the STATS line is logged.
    pub metrics_syslog_interval: Duration,
    /// `[[dkim]]`: the keys that sign originating mail, per From domain.
    pub dkim: Vec<crate::shell::sender_auth::sign::KeyFile>,
    /// `[[tls.client]]`: client certificates a send connector presents
    /// (`[[connector]] tls_certificate = "NAME"`), reloaded on SIGHUP.
    pub tls_clients: Vec<ClientCertFiles>,
    /// `[[milter]]`: the content filters, in the order they run.
    pub milters: Vec<MilterConfig>,
    /// `[report]`: the mail-flow history's settings.
    pub report: ReportConfig,
}

/// One `[[tls.client]]`: a named certificate chain and key presented to a
/// next hop that asks for a client certificate.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientCertFiles {
    /// The name connectors use.
    pub name: String,
    /// The certificate chain (PEM).
    pub certificate: PathBuf,
    /// The private key (PEM).
    pub key: PathBuf,
}

/// `[report]`: what the mail-flow history counts as this relay's and how
/// often it is written.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportConfig {
    /// This relay's location domains, lower case: a recipient rewritten to
    /// any other domain is counted (and logged) as redirected. Empty:
    /// nothing counts as redirected.
    pub local_domains: Vec<String>,
    /// How often the history's changed days are written to disk.
    pub flush_interval: Duration,
}

impl Default for ReportConfig {
    fn default() -> Self {
        ReportConfig {
            local_domains: Vec::new(),
            flush_interval: Duration::from_secs(300),
        }
    }
}

/// `[queue]`: retries, warning, expiry, concurrency.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueConfig {
    /// Waits between attempts; the last repeats.
    pub retry: Vec<Duration>,
    /// A delay warning after this long (to the sender).
    pub warn_after: Duration,
    /// Give up (bounce) after this long.
    pub expire_after: Duration,
    /// Deliveries at once.
    pub concurrency: usize,
    /// Deliveries at once to one next hop.
    pub concurrency_per_destination: usize,
    /// The connection cache's bounds: an outbound session idle longer
    /// than `connection_cache_time` is closed, one carries at most
    /// `connection_cache_messages` messages, at most
    /// `connection_cache_size` sessions stay open (0 for any: no cache).
    pub connection_cache: crate::shell::relay::pool::Limits,
    /// Accept and spool, deliver nothing (a maintenance window at the
    /// next hop, or measuring the accept path alone). Warnings and expiry
    /// still run.
    pub hold: bool,
}

impl Default for QueueConfig {
    fn default() -> Self {
        let m = |n: u64| Duration::from_secs(60 * n);
        QueueConfig {
            retry: vec![m(1), m(5), m(15), m(30), m(60), m(120), m(240)],
            warn_after: m(240),
            expire_after: m(2 * 24 * 60),
            concurrency: 100,
            concurrency_per_destination: 10,
            connection_cache: crate::shell::relay::pool::Limits::default(),
            hold: false,
        }
    }
}

/// One listening socket.
#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    /// `ip:port`, e.g. `127.0.0.1:2525` or `[::1]:2525`.
    pub address: String,
    /// Offer STARTTLS here (needs `[tls]`).
    pub starttls: bool,
    /// `tls = "implicit"`: TLS from the first octet (RFC 8314, port 465).
    pub implicit_tls: bool,
    /// `auth = true`: offer SMTP AUTH here (once TLS is on).
    pub auth: bool,
}

/// PEM files for TLS.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsFiles {
    /// The certificate chain.
    pub certificate: PathBuf,
    /// The private key.
    pub key: PathBuf,
    /// CA certificates (PEM) that client certificates are verified
    /// against; when set, STARTTLS asks clients for a certificate (optional)
    /// and a verified one attributes the session by its name.
    pub client_ca: Option<PathBuf>,
}

/// Limits of the receive side.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Concurrent sessions in total.
    pub connections: usize,
    /// Concurrent sessions from one client address.
    pub connections_per_ip: usize,
    /// Wait for a command (RFC 5321 §4.5.3.2: at least 5 minutes).
    pub command_timeout: Duration,
    /// Wait for each block of message data (RFC 5321: 3 minutes; 10 by default).
    pub data_timeout: Duration,
    /// Bare CR / LF in DATA.
    pub bare_line_endings: BareLineEndings,
    /// Largest message in octets.
    pub max_message_size: u64,
    /// Recipients per message.
    pub max_recipients: u32,
    /// Free space the spool keeps; below it MAIL gets `452 4.3.1`.
    pub spool_reserve: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connections: 1000,
            connections_per_ip: 50,
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(600),
            bare_line_endings: BareLineEndings::Refuse,
            max_message_size: 36 * 1024 * 1024,
            max_recipients: 200,
            spool_reserve: 1024 * 1024,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Raw {
    hostname: Option<String>,
    rules: Option<String>,
    state_dir: Option<String>,
    spool_dir: Option<String>,
    listen: Option<Vec<RawListen>>,
    tls: Option<RawTls>,
    limits: RawLimits,
    syslog: RawSyslog,
    upload: RawUpload,
    metrics: RawMetrics,
    queue: RawQueue,
    dns: Option<toml::Value>,
    auth: auth::RawAuth,
    dkim: Option<Vec<RawDkim>>,
    milter: Option<Vec<milter::RawMilter>>,
    report: RawReport,
}

/// One `[[dkim]]` as written.
#[derive(Deserialize)]
struct RawDkim {
    domain: String,
    selector: String,
    key: String,
}

/// `[report]` as written.
#[derive(Deserialize, Default)]
#[serde(default)]
struct RawReport {
    local_domains: Option<Vec<String>>,
    flush_interval: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawQueue {
    retry: Option<Vec<String>>,
    warn_after: Option<String>,
    expire_after: Option<String>,
    concurrency: Option<usize>,
    concurrency_per_destination: Option<usize>,
    connection_cache_time: Option<String>,
    connection_cache_messages: Option<u32>,
    connection_cache_size: Option<usize>,
    hold: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawSyslog {
    target: Option<String>,
    facility: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawUpload {
    serial: Option<String>,
    baud: Option<u32>,
}

/// `[metrics]` as written.
#[derive(Deserialize, Default)]
#[serde(default)]
struct RawMetrics {
    listen: Option<String>,
    syslog_interval: Option<String>,
}

#[derive(Deserialize)]
struct RawListen {
    address: String,
    #[serde(default)]
    starttls: bool,
    tls: Option<String>,
    #[serde(default)]
    auth: bool,
}

#[derive(Deserialize)]
struct RawTls {
    certificate: Option<String>,
    key: Option<String>,
    ca: Option<String>,
    client_ca: Option<String>,
    client: Option<Vec<RawClientCert>>,
}

/// `[[tls.client]]` as written.
#[derive(Deserialize)]
struct RawClientCert {
    name: Option<String>,
    certificate: Option<String>,
    key: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawLimits {
    connections: Option<usize>,
    connections_per_ip: Option<usize>,
    command_timeout: Option<String>,
    data_timeout: Option<String>,
    bare_line_endings: Option<String>,
    max_message_size: Option<toml::Value>,
    max_recipients: Option<u32>,
    spool_reserve: Option<toml::Value>,
}

/// A place in the config: the keys (and array indexes) from the top, so
/// an error found in a value can be reported at its line and column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    /// A key of a table.
    Key(String),
    /// An element of an array.
    Index(usize),
}

impl From<&str> for Seg {
    fn from(k: &str) -> Self {
        Seg::Key(k.to_string())
    }
}

/// A value that is read but not acceptable: where (its key path) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueError {
    /// The key path of the value, from the top of the file.
    pub path: Vec<Seg>,
    /// What is wrong with it.
    pub message: String,
}

impl ValueError {
    /// An error at the value of the dotted keys `keys`.
    pub fn at(keys: &[&str], message: impl Into<String>) -> Self {
        ValueError {
            path: keys.iter().map(|k| Seg::from(*k)).collect(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for ValueError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// The name errors in the embedded default are reported under.
pub const EMBEDDED: &str = "(embedded default)";

impl Config {
    /// Loads `path`, or the embedded default when `None`; errors are lines
    /// `FILE:LINE:COL: message`.
    pub fn load(path: Option<&Path>) -> Result<Config, String> {
        let (name, result) = Config::check_file(path);
        result.map_err(|diags| {
            diags
                .iter()
                .map(|d| format!("{name}:{d}"))
                .collect::<Vec<_>>()
                .join("\n")
        })
    }

    /// Reads and checks `path` (the embedded default when `None`): the
    /// name to report errors under, and the config or every error found
    /// (a file that cannot be read: one error at 1:1).
    pub fn check_file(path: Option<&Path>) -> (String, Result<Config, Vec<Diag>>) {
        let Some(p) = path else {
            return (
                EMBEDDED.to_string(),
                Config::check(DEFAULT_CONFIG, Path::new("."), Path::new(RESOLV_CONF)),
            );
        };
        let name = p.display().to_string();
        let result = match std::fs::read_to_string(p) {
            Ok(text) => {
                let base = p.parent().unwrap_or(Path::new("."));
                Config::check(&text, base, Path::new(RESOLV_CONF))
            }
            Err(e) => Err(vec![Diag {
                line: 1,
                col: 1,
                message: format!("cannot read: {e}"),
            }]),
        };
        (name, result)
    }

    /// Parses config text; relative paths are joined to `base`. Errors are
    /// lines `LINE:COL: message`.
    pub fn parse(text: &str, base: &Path) -> Result<Config, String> {
        Config::check(text, base, Path::new(RESOLV_CONF)).map_err(|diags| {
            diags
                .iter()
                .map(Diag::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        })
    }

    /// Parses and checks config text, every section: unknown keys and
    /// sections, types and values; `[dns] servers = []` takes the servers
    /// of `resolv_conf`. On failure every error found, in file order.
    pub fn check(text: &str, base: &Path, resolv_conf: &Path) -> Result<Config, Vec<Diag>> {
        let t = schema::Text::new(text);
        let root = match toml::de::DeTable::parse(text) {
            Ok(r) => r,
            Err(e) => return Err(vec![t.diag(e.span().map_or(0, |s| s.start), e.message())]),
        };
        let mut diags = schema::unknown_keys(&t, root.get_ref());
        let raw = match toml::from_str::<Raw>(text) {
            Ok(raw) => raw,
            Err(e) => {
                diags.push(t.diag(e.span().map_or(0, |s| s.start), e.message()));
                return Err(sorted(diags));
            }
        };
        match from_raw(raw, base, resolv_conf) {
            Ok(c) if diags.is_empty() => Ok(c),
            Ok(_) => Err(sorted(diags)),
            Err(errs) => {
                diags.extend(errs.iter().map(|e| schema::locate(&t, root.get_ref(), e)));
                Err(sorted(diags))
            }
        }
    }

    /// The parts of `new` that differ from `self` and that a SIGHUP does
    /// not reload (only the hostname, `[limits]` and the inbound TLS
    /// files are): listeners, paths, the rule file, `[queue]`, `[dns]`,
    /// `[tls] ca`, `[syslog]`, `[upload]`, `[report]`. Named as in the config
    /// file.
    pub fn restart_only_changes(&self, new: &Config) -> Vec<&'static str> {
        let mut out = Vec::new();
        let mut check = |changed: bool, name: &'static str| {
            if changed {
                out.push(name);
            }
        };
        check(self.listen != new.listen, "[[listen]]");
        check(self.spool_dir != new.spool_dir, "spool_dir");
        check(self.state_dir != new.state_dir, "state_dir");
        check(self.rules != new.rules, "rules");
        check(self.queue != new.queue, "[queue]");
        check(self.dns != new.dns, "[dns]");
        check(self.ca != new.ca, "[tls] ca");
        check(
            self.syslog_target != new.syslog_target || self.syslog_facility != new.syslog_facility,
            "[syslog]",
        );
        check(
            self.upload_serial != new.upload_serial || self.upload_baud != new.upload_baud,
            "[upload]",
        );
        check(
            self.metrics_listen != new.metrics_listen
                || self.metrics_syslog_interval != new.metrics_syslog_interval,
            "[metrics]",
        );
        check(self.report != new.report, "[report]");
        check(self.auth.restart_only(&new.auth), "[auth]");
        out
    }
}

/// Diagnostics in file order, each once.
fn sorted(mut diags: Vec<Diag>) -> Vec<Diag> {
    diags.sort_by_key(|d| (d.line, d.col));
    diags.dedup();
    diags
}

/// Keeps `r`'s value, or its error in `errs`.
fn keep<T>(errs: &mut Vec<ValueError>, r: Result<T, ValueError>) -> Option<T> {
    r.map_err(|e| errs.push(e)).ok()
}

/// The checked config from the deserialized file: every section's values
/// checked (every error found), defaults filled in.
fn from_raw(mut raw: Raw, base: &Path, resolv_conf: &Path) -> Result<Config, Vec<ValueError>> {
    let rel = |s: &str| -> PathBuf {
        let p = Path::new(s);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        }
    };
    let mut errs = Vec::new();
    let hostname = keep(&mut errs, hostname(raw.hostname));
    let limits = keep(&mut errs, limits(raw.limits));
    let listen = keep(&mut errs, listeners(raw.listen));
    let queue = keep(&mut errs, queue(raw.queue));
    let ca = raw.tls.as_ref().and_then(|t| t.ca.as_deref()).map(rel);
    let tls_clients = keep(
        &mut errs,
        tls_clients(raw.tls.as_mut().and_then(|t| t.client.take()), &rel),
    );
    let tls = keep(&mut errs, tls(raw.tls, &rel));
    let dns = keep(
        &mut errs,
        DnsConfig::from_toml_with_resolv_conf(raw.dns.as_ref(), resolv_conf),
    );
    let syslog = keep(&mut errs, syslog(raw.syslog));
    let metrics_syslog_interval = keep(&mut errs, syslog_interval(&raw.metrics));
    let metrics_listen = keep(&mut errs, metrics_listen(raw.metrics));
    let dkim = keep(&mut errs, dkim_keys(raw.dkim, &rel));
    let milters = keep(&mut errs, milter::milters(raw.milter));
    let report = keep(&mut errs, report(raw.report));
    let auth = keep(&mut errs, auth::auth(raw.auth, &rel));
    if let (Some(l), Some(a)) = (&listen, &auth) {
        if let Err(e) = auth::check_listeners(l, a, tls.as_ref().is_some_and(|t| t.is_some())) {
            errs.push(e);
        }
    }
    let (
        Some(hostname),
        Some(limits),
        Some(listen),
        Some(queue),
        Some(tls),
        Some(dns),
        Some((syslog_target, syslog_facility)),
        Some(metrics_listen),
        Some(dkim),
        Some(tls_clients),
        Some(milters),
        Some(report),
        Some(metrics_syslog_interval),
        Some(auth),
    ) = (
        hostname,
        limits,
        listen,
        queue,
        tls,
        dns,
        syslog,
        metrics_listen,
        dkim,
        tls_clients,
        milters,
        report,
        metrics_syslog_interval,
        auth,
    )
    else {
        return Err(errs);
    };
    if !errs.is_empty() {
        // A check across sections (listeners against [auth] and [tls]).
        return Err(errs);
    }
    Ok(Config {
        queue,
        dns,
        ca,
        hostname,
        rules: raw.rules.as_deref().map(rel),
        state_dir: rel(raw.state_dir.as_deref().unwrap_or("state")),
        spool_dir: rel(raw.spool_dir.as_deref().unwrap_or("spool")),
        listen,
        tls,
        limits,
        syslog_target,
        syslog_facility,
        upload_serial: raw.upload.serial.filter(|s| !s.is_empty()).map(|s| rel(&s)),
        upload_baud: raw.upload.baud.unwrap_or(115_200),
        metrics_listen,
        dkim,
        tls_clients,
        milters,
        report,
        metrics_syslog_interval,
        auth,
    })
}

/// `[[dkim]]`: a domain name, a selector (a DNS label sequence) and a key
/// file each; the keys themselves are read when the daemon starts.
fn dkim_keys(
    raw: Option<Vec<RawDkim>>,
    rel: &dyn Fn(&str) -> PathBuf,
) -> Result<Vec<crate::shell::sender_auth::sign::KeyFile>, ValueError> {
    let name_ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 253
            && s.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            })
    };
    let mut out = Vec::new();
    for (i, d) in raw.unwrap_or_default().into_iter().enumerate() {
        for (key, value) in [("domain", &d.domain), ("selector", &d.selector)] {
            if !name_ok(value) {
                return Err(ValueError {
                    path: vec!["dkim".into(), Seg::Index(i), key.into()],
                    message: format!("dkim {key} {value:?} is not a domain name"),
                });
            }
        }
        out.push(crate::shell::sender_auth::sign::KeyFile {
            domain: d.domain.to_ascii_lowercase(),
            selector: d.selector,
            key: rel(&d.key),
        });
    }
    Ok(out)
}

/// `[[tls.client]]`: each needs a name (unique), a certificate and a key.
/// The files are read when the daemon starts or reloads, not here.
fn tls_clients(
    raw: Option<Vec<RawClientCert>>,
    rel: &dyn Fn(&str) -> PathBuf,
) -> Result<Vec<ClientCertFiles>, ValueError> {
    let mut out: Vec<ClientCertFiles> = Vec::new();
    for (i, c) in raw.unwrap_or_default().into_iter().enumerate() {
        // An error at key `key` of this table, or at the table itself
        // (a missing key) when `key` is empty.
        let at = |key: &str, m: String| {
            let mut path = vec![Seg::from("tls"), Seg::from("client"), Seg::Index(i)];
            if !key.is_empty() {
                path.push(Seg::from(key));
            }
            ValueError { path, message: m }
        };
        let name = match c.name {
            Some(n) if !n.is_empty() => n,
            Some(_) => return Err(at("name", "[[tls.client]]: empty name".into())),
            None => {
                let m = "[[tls.client]] needs a name (connectors refer to it)";
                return Err(at("", m.into()));
            }
        };
        if out.iter().any(|o| o.name == name) {
            return Err(at(
                "name",
                format!("[[tls.client]] \"{name}\" is declared twice"),
            ));
        }
        let need = |v: Option<String>, key: &str| match v {
            Some(s) if !s.is_empty() => Ok(rel(&s)),
            Some(_) => Err(at(key, format!("[[tls.client]] \"{name}\": empty {key}"))),
            None => Err(at("", format!("[[tls.client]] \"{name}\" needs {key}"))),
        };
        let certificate = need(c.certificate, "certificate")?;
        let key = need(c.key, "key")?;
        out.push(ClientCertFiles {
            name,
            certificate,
            key,
        });
    }
    Ok(out)
}

/// `[report]`, checked: each local domain a domain name (stored lower
/// case), the flush interval from 1 s to 1 h.
fn report(raw: RawReport) -> Result<ReportConfig, ValueError> {
    let mut r = ReportConfig::default();
    for (i, d) in raw.local_domains.unwrap_or_default().iter().enumerate() {
        let ok = !d.is_empty()
            && d.len() <= 253
            && d.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !ok {
            return Err(ValueError {
                path: vec![
                    Seg::from("report"),
                    Seg::from("local_domains"),
                    Seg::Index(i),
                ],
                message: format!("report.local_domains: {d:?} is not a domain name"),
            });
        }
        r.local_domains.push(d.to_ascii_lowercase());
    }
    if let Some(f) = opt_duration(raw.flush_interval, &["report", "flush_interval"])? {
        if f < Duration::from_secs(1) || f > Duration::from_secs(3600) {
            return Err(ValueError::at(
                &["report", "flush_interval"],
                "report.flush_interval: from \"1s\" to \"1h\"",
            ));
        }
        r.flush_interval = f;
    }
    Ok(r)
}

/// `hostname`, or the kernel's host name, or `localhost`; checked.
fn hostname(h: Option<String>) -> Result<String, ValueError> {
    let hostname = match h {
        Some(h) => h,
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_string())
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "localhost".into()),
    };
    if hostname.is_empty()
        || hostname.len() > crate::engine::limits::MAX_HOSTNAME
        || hostname.bytes().any(|b| b <= b' ' || b == 0x7f)
    {
        return Err(ValueError::at(
            &["hostname"],
            format!("hostname {hostname:?} is not a valid host name"),
        ));
    }
    Ok(hostname)
}

/// `[metrics] listen`: the address `GET /metrics` is served on, if any.
fn metrics_listen(raw: RawMetrics) -> Result<Option<std::net::SocketAddr>, ValueError> {
    match raw.listen.as_deref() {
        None | Some("") => Ok(None),
        Some(a) => a.parse().map(Some).map_err(|e| {
            ValueError::at(
                &["metrics", "listen"],
                format!("{a:?} is not an ip:port address: {e}"),
            )
        }),
    }
}

/// The default `[metrics] syslog_interval`: a STATS line every 5 minutes.
pub const STATS_INTERVAL: Duration = Duration::from_secs(300);

/// `[metrics] syslog_interval`: a duration of at least one second
/// (default [`STATS_INTERVAL`]).
fn syslog_interval(raw: &RawMetrics) -> Result<Duration, ValueError> {
    let key = ["metrics", "syslog_interval"];
    let d = opt_duration(raw.syslog_interval.clone(), &key)?.unwrap_or(STATS_INTERVAL);
    if d.is_zero() {
        return Err(ValueError::at(
            &key,
            "metrics.syslog_interval must be at least \"1s\"".to_string(),
        ));
    }
    Ok(d)
}

/// `[syslog]` target and facility, defaults filled in, checked as the
/// logger will read them.
fn syslog(raw: RawSyslog) -> Result<(String, String), ValueError> {
    let target = raw.target.unwrap_or_else(|| "unix:/dev/log".into());
    let facility = raw.facility.unwrap_or_else(|| "mail".into());
    crate::shell::ops::log::check_target(&target)
        .map_err(|e| ValueError::at(&["syslog", "target"], e))?;
    crate::shell::ops::log::check_facility(&facility)
        .map_err(|e| ValueError::at(&["syslog", "facility"], e))?;
    Ok((target, facility))
}

/// `[limits]`, defaults filled in.
fn limits(l: RawLimits) -> Result<Limits, ValueError> {
    let d = Limits::default();
    let bare = match l.bare_line_endings.as_deref() {
        None | Some("refuse") => BareLineEndings::Refuse,
        Some("normalize") => BareLineEndings::Normalize,
        Some(o) => {
            return Err(ValueError::at(
                &["limits", "bare_line_endings"],
                format!("limits.bare_line_endings = {o:?}: expected \"refuse\" or \"normalize\""),
            ))
        }
    };
    Ok(Limits {
        connections: l.connections.unwrap_or(d.connections).max(1),
        connections_per_ip: l.connections_per_ip.unwrap_or(d.connections_per_ip).max(1),
        command_timeout: opt_duration(l.command_timeout, &["limits", "command_timeout"])?
            .unwrap_or(d.command_timeout),
        data_timeout: opt_duration(l.data_timeout, &["limits", "data_timeout"])?
            .unwrap_or(d.data_timeout),
        bare_line_endings: bare,
        max_message_size: opt_size(l.max_message_size, &["limits", "max_message_size"])?
            .unwrap_or(d.max_message_size),
        max_recipients: l
            .max_recipients
            .unwrap_or(d.max_recipients)
            .clamp(1, crate::engine::limits::MAX_RECIPIENTS),
        spool_reserve: opt_size(l.spool_reserve, &["limits", "spool_reserve"])?
            .unwrap_or(d.spool_reserve),
    })
}

/// `[[listen]]`, each address an `ip:port` (default: 127.0.0.1:2525).
fn listeners(raw: Option<Vec<RawListen>>) -> Result<Vec<Listener>, ValueError> {
    let Some(list) = raw else {
        return Ok(vec![Listener {
            address: "127.0.0.1:2525".into(),
            starttls: false,
            implicit_tls: false,
            auth: false,
        }]);
    };
    let mut out = Vec::new();
    for (i, l) in list.into_iter().enumerate() {
        if let Err(e) = l.address.parse::<std::net::SocketAddr>() {
            return Err(ValueError {
                path: vec!["listen".into(), Seg::Index(i), "address".into()],
                message: format!("listen address {:?}: {e}", l.address),
            });
        }
        let implicit_tls = match l.tls.as_deref() {
            None | Some("none") => false,
            Some("starttls") => {
                if !l.starttls {
                    // `tls = "starttls"` is the same as `starttls = true`.
                    out.push(Listener {
                        address: l.address,
                        starttls: true,
                        implicit_tls: false,
                        auth: l.auth,
                    });
                    continue;
                }
                false
            }
            Some("implicit") => true,
            Some(o) => {
                return Err(ValueError {
                    path: vec!["listen".into(), Seg::Index(i), "tls".into()],
                    message: format!(
                        "listen.tls = {o:?}: expected \"implicit\", \"starttls\" or \"none\""
                    ),
                })
            }
        };
        out.push(Listener {
            address: l.address,
            starttls: l.starttls && !implicit_tls,
            implicit_tls,
            auth: l.auth,
        });
    }
    Ok(out)
}

/// `[queue]`, defaults filled in (an empty retry list is the default one).
fn queue(q: RawQueue) -> Result<QueueConfig, ValueError> {
    let qd = QueueConfig::default();
    let mut retry = Vec::new();
    for (i, d) in q.retry.iter().flatten().enumerate() {
        retry.push(parse_duration(d).ok_or_else(|| ValueError {
            path: vec!["queue".into(), "retry".into(), Seg::Index(i)],
            message: format!("queue.retry: {d:?} is not a duration such as \"5m\""),
        })?);
    }
    Ok(QueueConfig {
        retry: if retry.is_empty() { qd.retry } else { retry },
        warn_after: opt_duration(q.warn_after, &["queue", "warn_after"])?.unwrap_or(qd.warn_after),
        expire_after: opt_duration(q.expire_after, &["queue", "expire_after"])?
            .unwrap_or(qd.expire_after),
        concurrency: q.concurrency.unwrap_or(qd.concurrency).max(1),
        concurrency_per_destination: q
            .concurrency_per_destination
            .unwrap_or(qd.concurrency_per_destination)
            .max(1),
        connection_cache: crate::shell::relay::pool::Limits {
            idle: opt_duration(q.connection_cache_time, &["queue", "connection_cache_time"])?
                .unwrap_or(qd.connection_cache.idle),
            messages: q
                .connection_cache_messages
                .unwrap_or(qd.connection_cache.messages),
            sessions: q
                .connection_cache_size
                .unwrap_or(qd.connection_cache.sessions),
        },
        hold: q.hold.unwrap_or(false),
    })
}

/// `[tls]`'s server side. The table may hold only `ca` (outbound
/// verification); a server certificate needs both its chain and its key.
fn tls(raw: Option<RawTls>, rel: &dyn Fn(&str) -> PathBuf) -> Result<Option<TlsFiles>, ValueError> {
    match raw {
        Some(RawTls {
            certificate: Some(c),
            key: Some(k),
            client_ca,
            ..
        }) => Ok(Some(TlsFiles {
            certificate: rel(&c),
            key: rel(&k),
            client_ca: client_ca.as_deref().map(rel),
        })),
        Some(RawTls {
            certificate: None,
            key: None,
            client_ca: None,
            ..
        })
        | None => Ok(None),
        Some(RawTls {
            certificate: None,
            key: None,
            client_ca: Some(_),
            ..
        }) => Err(ValueError::at(
            &["tls", "client_ca"],
            "tls.client_ca needs tls.certificate and tls.key",
        )),
        Some(t) => Err(ValueError::at(
            &[
                "tls",
                if t.certificate.is_some() {
                    "certificate"
                } else {
                    "key"
                },
            ],
            "tls.certificate and tls.key go together: give both or neither",
        )),
    }
}

fn opt_duration(v: Option<String>, key: &[&str]) -> Result<Option<Duration>, ValueError> {
    v.map(|s| {
        parse_duration(&s).ok_or_else(|| {
            ValueError::at(
                key,
                format!(
                    "{} = {s:?}: expected e.g. \"30s\", \"5m\", \"1h\", \"2d\"",
                    key.join(".")
                ),
            )
        })
    })
    .transpose()
}

fn opt_size(v: Option<toml::Value>, key: &[&str]) -> Result<Option<u64>, ValueError> {
    let name = key.join(".");
    match v {
        None => Ok(None),
        Some(toml::Value::Integer(n)) if n >= 0 => Ok(Some(n as u64)),
        Some(toml::Value::String(s)) => parse_size(&s).map(Some).ok_or_else(|| {
            ValueError::at(
                key,
                format!("{name} = {s:?}: expected e.g. \"36 MiB\", \"512 KiB\", \"1000\""),
            )
        }),
        Some(o) => Err(ValueError::at(
            key,
            format!("{name} = {o}: expected a size such as \"36 MiB\""),
        )),
    }
}

/// Parses "30s", "5m", "1h", "2d" (a bare number is seconds).
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult = match unit.trim() {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return None,
    };
    Some(Duration::from_secs(n.checked_mul(mult)?))
}

/// Parses "36 MiB", "512 KiB", "10MB", "1000" into octets.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1024,
        "m" | "mb" => 1000 * 1000,
        "mib" => 1024 * 1024,
        "g" | "gb" => 1000 * 1000 * 1000,
        "gib" => 1024 * 1024 * 1024,
        _ => return None,
    };
    n.checked_mul(mult)
}

#[cfg(test)]
mod tests;
