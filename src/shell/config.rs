//! The appliance config (`sluice.toml`): listeners, TLS, spool, limits.
//!
//! The format is `../shared/sluice.sample.toml`: every key optional, keys
//! this version does not use yet (queue, dns, syslog, upload) are accepted
//! and ignored. Relative paths are relative to the config file.

use crate::engine::smtp::BareLineEndings;
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
#[derive(Debug, Clone)]
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
    /// The delivery queue's schedule and limits.
    pub queue: QueueConfig,
    /// The `[dns]` table as written (the resolver reads it).
    pub dns: Option<toml::Value>,
    /// Extra CA roots for `tls = "verify"` connectors.
    pub ca: Option<PathBuf>,
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
}

/// PEM files for TLS.
#[derive(Debug, Clone)]
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
#[derive(Debug, Clone)]
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
    queue: RawQueue,
    dns: Option<toml::Value>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawQueue {
    retry: Option<Vec<String>>,
    warn_after: Option<String>,
    expire_after: Option<String>,
    concurrency: Option<usize>,
    concurrency_per_destination: Option<usize>,
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

#[derive(Deserialize)]
struct RawListen {
    address: String,
    #[serde(default)]
    starttls: bool,
}

#[derive(Deserialize)]
struct RawTls {
    certificate: Option<String>,
    key: Option<String>,
    ca: Option<String>,
    client_ca: Option<String>,
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

impl Config {
    /// Loads `path`, or the embedded default when `None`.
    pub fn load(path: Option<&Path>) -> Result<Config, String> {
        match path {
            Some(p) => {
                let text =
                    std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
                let base = p.parent().unwrap_or(Path::new("."));
                Config::parse(&text, base).map_err(|e| format!("{}: {e}", p.display()))
            }
            None => Config::parse(DEFAULT_CONFIG, Path::new(".")),
        }
    }

    /// The parts of `new` that differ from `self` and that a SIGHUP does
    /// not reload (only the hostname, `[limits]` and the inbound TLS
    /// files are): listeners, paths, the rule file, `[queue]`, `[dns]`,
    /// `[tls] ca`, `[syslog]`, `[upload]`. Named as in the config file.
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
        out
    }

    /// Parses config text; relative paths are joined to `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Config, String> {
        let raw: Raw = toml::from_str(text).map_err(|e| e.to_string())?;
        let rel = |s: &str| -> PathBuf {
            let p = Path::new(s);
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        let hostname = match raw.hostname {
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
            return Err(format!("hostname {hostname:?} is not a valid host name"));
        }
        let d = Limits::default();
        let l = raw.limits;
        let bare = match l.bare_line_endings.as_deref() {
            None | Some("refuse") => BareLineEndings::Refuse,
            Some("normalize") => BareLineEndings::Normalize,
            Some(o) => {
                return Err(format!(
                    "limits.bare_line_endings = {o:?}: expected \"refuse\" or \"normalize\""
                ))
            }
        };
        let limits = Limits {
            connections: l.connections.unwrap_or(d.connections).max(1),
            connections_per_ip: l.connections_per_ip.unwrap_or(d.connections_per_ip).max(1),
            command_timeout: opt_duration(l.command_timeout, "limits.command_timeout")?
                .unwrap_or(d.command_timeout),
            data_timeout: opt_duration(l.data_timeout, "limits.data_timeout")?
                .unwrap_or(d.data_timeout),
            bare_line_endings: bare,
            max_message_size: opt_size(l.max_message_size, "limits.max_message_size")?
                .unwrap_or(d.max_message_size),
            max_recipients: l
                .max_recipients
                .unwrap_or(d.max_recipients)
                .clamp(1, crate::engine::limits::MAX_RECIPIENTS),
            spool_reserve: opt_size(l.spool_reserve, "limits.spool_reserve")?
                .unwrap_or(d.spool_reserve),
        };
        let listen = match raw.listen {
            Some(v) => v
                .into_iter()
                .map(|l| Listener {
                    address: l.address,
                    starttls: l.starttls,
                })
                .collect(),
            None => vec![Listener {
                address: "127.0.0.1:2525".into(),
                starttls: false,
            }],
        };
        let qd = QueueConfig::default();
        let q = raw.queue;
        let retry = match q.retry {
            Some(list) => list
                .iter()
                .map(|d| {
                    parse_duration(d).ok_or_else(|| {
                        format!("queue.retry: {d:?} is not a duration such as \"5m\"")
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
            None => qd.retry.clone(),
        };
        let queue = QueueConfig {
            retry: if retry.is_empty() {
                qd.retry.clone()
            } else {
                retry
            },
            warn_after: opt_duration(q.warn_after, "queue.warn_after")?.unwrap_or(qd.warn_after),
            expire_after: opt_duration(q.expire_after, "queue.expire_after")?
                .unwrap_or(qd.expire_after),
            concurrency: q.concurrency.unwrap_or(qd.concurrency).max(1),
            concurrency_per_destination: q
                .concurrency_per_destination
                .unwrap_or(qd.concurrency_per_destination)
                .max(1),
            hold: q.hold.unwrap_or(false),
        };
        let ca = raw.tls.as_ref().and_then(|t| t.ca.as_deref()).map(rel);
        // `[tls]` may hold only `ca` (outbound verification); a server
        // certificate needs both its chain and its key.
        let tls = match raw.tls {
            Some(RawTls {
                certificate: Some(c),
                key: Some(k),
                client_ca,
                ..
            }) => Some(TlsFiles {
                certificate: rel(&c),
                key: rel(&k),
                client_ca: client_ca.as_deref().map(rel),
            }),
            Some(RawTls {
                certificate: None,
                key: None,
                client_ca: None,
                ..
            })
            | None => None,
            Some(RawTls {
                certificate: None,
                key: None,
                client_ca: Some(_),
                ..
            }) => return Err("tls.client_ca needs tls.certificate and tls.key".into()),
            Some(_) => {
                return Err("tls.certificate and tls.key go together: give both or neither".into())
            }
        };
        Ok(Config {
            queue,
            dns: raw.dns,
            ca,
            hostname,
            rules: raw.rules.as_deref().map(rel),
            state_dir: rel(raw.state_dir.as_deref().unwrap_or("state")),
            spool_dir: rel(raw.spool_dir.as_deref().unwrap_or("spool")),
            listen,
            tls,
            limits,
            syslog_target: raw.syslog.target.unwrap_or_else(|| "unix:/dev/log".into()),
            syslog_facility: raw.syslog.facility.unwrap_or_else(|| "mail".into()),
            upload_serial: raw.upload.serial.filter(|s| !s.is_empty()).map(|s| rel(&s)),
            upload_baud: raw.upload.baud.unwrap_or(115_200),
        })
    }
}

fn opt_duration(v: Option<String>, key: &str) -> Result<Option<Duration>, String> {
    v.map(|s| {
        parse_duration(&s)
            .ok_or_else(|| format!("{key} = {s:?}: expected e.g. \"30s\", \"5m\", \"1h\", \"2d\""))
    })
    .transpose()
}

fn opt_size(v: Option<toml::Value>, key: &str) -> Result<Option<u64>, String> {
    match v {
        None => Ok(None),
        Some(toml::Value::Integer(n)) if n >= 0 => Ok(Some(n as u64)),
        Some(toml::Value::String(s)) => parse_size(&s).map(Some).ok_or_else(|| {
            format!("{key} = {s:?}: expected e.g. \"36 MiB\", \"512 KiB\", \"1000\"")
        }),
        Some(o) => Err(format!("{key} = {o}: expected a size such as \"36 MiB\"")),
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
mod tests {
    use super::*;

    #[test]
    fn the_normative_sample_parses() {
        let text = include_str!("../../config/sluice.toml");
        let c = Config::parse(text, Path::new("/etc/sluice")).expect("sample parses");
        assert_eq!(c.hostname, "edge1.contoso.com");
        assert_eq!(c.listen.len(), 2);
        assert_eq!(c.spool_dir, Path::new("/etc/sluice/spool"));
        assert_eq!(c.limits.command_timeout, Duration::from_secs(300));
        assert_eq!(c.limits.data_timeout, Duration::from_secs(600));
        assert_eq!(
            c.tls.map(|t| t.key),
            Some(PathBuf::from("/etc/sluice/tls/edge1.key"))
        );
    }

    #[test]
    fn the_shared_normative_sample_is_accepted_as_written() {
        // The normative file itself (beside the project), not only our copy.
        let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/sluice.sample.toml");
        let Ok(text) = std::fs::read_to_string(&shared) else {
            assert!(
                std::env::var_os("CI").is_none(),
                "{} is missing",
                shared.display()
            );
            return;
        };
        assert_eq!(
            text,
            include_str!("../../config/sluice.toml"),
            "config/sluice.toml drifted from the sample"
        );
        let c = Config::parse(&text, Path::new("/etc/sluice")).expect("sample parses");
        assert_eq!(c.listen.len(), 2);
        assert!(c.listen.iter().all(|l| l.starttls));
        assert_eq!(c.limits.connections, 1000);
        assert_eq!(c.limits.connections_per_ip, 50);
        assert_eq!(c.limits.bare_line_endings, BareLineEndings::Refuse);
        assert_eq!(c.queue.retry.len(), 7);
        assert_eq!(c.queue.retry[6], Duration::from_secs(4 * 3600));
        assert_eq!(c.queue.warn_after, Duration::from_secs(4 * 3600));
        assert_eq!(c.queue.expire_after, Duration::from_secs(2 * 86400));
        assert_eq!(c.queue.concurrency, 100);
        assert_eq!(c.queue.concurrency_per_destination, 10);
    }

    #[test]
    fn tls_may_hold_only_the_outbound_ca() {
        let c =
            Config::parse("[tls]\nca = \"ca.pem\"\n", Path::new("/etc/sluice")).expect("ca only");
        assert!(c.tls.is_none());
        assert_eq!(c.ca, Some(PathBuf::from("/etc/sluice/ca.pem")));
        let e = Config::parse("[tls]\ncertificate = \"c.pem\"\n", Path::new("/x")).unwrap_err();
        assert!(e.contains("go together"), "{e}");
    }

    #[test]
    fn the_embedded_default_parses() {
        let c = Config::load(None).expect("default");
        assert_eq!(c.listen[0].address, "127.0.0.1:2525");
        assert!(c.tls.is_none());
    }

    #[test]
    fn a_reload_names_the_sections_that_need_a_restart() {
        let base = "hostname = \"a\"\n[[listen]]\naddress = \"127.0.0.1:25\"\n";
        let old = Config::parse(base, Path::new(".")).expect("old");
        let same = Config::parse(
            &format!("{base}[limits]\nconnections = 5\n"),
            Path::new("."),
        )
        .expect("limits");
        assert!(old.restart_only_changes(&same).is_empty());
        let new = Config::parse(
            "hostname = \"b\"\nspool_dir = \"s2\"\n[[listen]]\naddress = \"127.0.0.1:26\"\n\
             [queue]\nretry = [\"1s\"]\n[dns]\nservers = [\"127.0.0.1:53\"]\n[tls]\ncertificate = \"c.pem\"\nkey = \"k.pem\"\nca = \"ca.pem\"\n\
             [syslog]\ntarget = \"stderr\"\n[upload]\nbaud = 9600\n",
            Path::new("."),
        )
        .expect("new");
        assert_eq!(
            old.restart_only_changes(&new),
            [
                "[[listen]]",
                "spool_dir",
                "[queue]",
                "[dns]",
                "[tls] ca",
                "[syslog]",
                "[upload]"
            ]
        );
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("36 MiB"), Some(36 * 1024 * 1024));
        assert_eq!(parse_size("1 KiB"), Some(1024));
        assert_eq!(parse_size("1000"), Some(1000));
        assert_eq!(parse_size("12 parsecs"), None);
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("2d"), Some(Duration::from_secs(172800)));
        assert_eq!(parse_duration("soon"), None);
    }

    #[test]
    fn errors_name_line_and_column() {
        let e = Config::parse(
            "hostname = \"a\"\n[limits]\nconnections = \"many\"\n",
            Path::new("."),
        )
        .expect_err("bad type");
        assert!(e.contains("line 3"), "{e}");
        let e = Config::parse(
            "[limits]\nbare_line_endings = \"sometimes\"\n",
            Path::new("."),
        )
        .expect_err("bad value");
        assert!(e.contains("bare_line_endings"), "{e}");
    }
}
