//! The effective config as TOML: every key with the value the daemon uses,
//! defaults filled in, for `sluice config check`. Read back, it gives the
//! same [`Config`].

use super::{Config, Limits, QueueConfig};
use crate::engine::smtp::BareLineEndings;
use crate::shell::relay::dns::DnsConfig;
use std::path::Path;
use std::time::Duration;
use toml::{Table, Value};

impl Config {
    /// The config as TOML, every default filled in; paths absolute,
    /// `[dns] servers` as used (from resolv.conf when the file lists none).
    pub fn effective_toml(&self) -> String {
        let mut top = Table::new();
        top.insert("hostname".into(), s(&self.hostname));
        if let Some(r) = &self.rules {
            top.insert("rules".into(), path(r));
        }
        top.insert("state_dir".into(), path(&self.state_dir));
        top.insert("spool_dir".into(), path(&self.spool_dir));
        let listen = self.listen.iter().map(|l| {
            let mut t = Table::new();
            t.insert("address".into(), s(&l.address));
            t.insert("starttls".into(), Value::Boolean(l.starttls));
            // Written only when set, so that a config without them reads
            // as it did before they existed.
            if l.implicit_tls {
                t.insert("tls".into(), s("implicit"));
            }
            if l.auth {
                t.insert("auth".into(), Value::Boolean(true));
            }
            Value::Table(t)
        });
        top.insert("listen".into(), Value::Array(listen.collect()));
        let tls = self.tls_table();
        if !tls.is_empty() {
            top.insert("tls".into(), Value::Table(tls));
        }
        top.insert("limits".into(), Value::Table(limits(&self.limits)));
        top.insert("queue".into(), Value::Table(queue(&self.queue)));
        top.insert("dns".into(), Value::Table(dns(&self.dns)));
        let mut syslog = Table::new();
        syslog.insert("target".into(), s(&self.syslog_target));
        syslog.insert("facility".into(), s(&self.syslog_facility));
        top.insert("syslog".into(), Value::Table(syslog));
        let mut upload = Table::new();
        let serial = self.upload_serial.as_deref().map_or(s(""), path);
        upload.insert("serial".into(), serial);
        upload.insert("baud".into(), Value::Integer(i64::from(self.upload_baud)));
        top.insert("upload".into(), Value::Table(upload));
        let mut metrics = Table::new();
        let listen = self.metrics_listen.map_or(s(""), |a| s(&a.to_string()));
        metrics.insert("listen".into(), listen);
        metrics.insert(
            "syslog_interval".into(),
            duration(self.metrics_syslog_interval),
        );
        top.insert("metrics".into(), Value::Table(metrics));
        if !self.dkim.is_empty() {
            let dkim = self.dkim.iter().map(|k| {
                let mut t = Table::new();
                t.insert("domain".into(), s(&k.domain));
                t.insert("selector".into(), s(&k.selector));
                t.insert("key".into(), path(&k.key));
                Value::Table(t)
            });
            top.insert("dkim".into(), Value::Array(dkim.collect()));
        }
        if !self.milters.is_empty() {
            let list = self
                .milters
                .iter()
                .map(|m| Value::Table(super::milter::effective(m)));
            top.insert("milter".into(), Value::Array(list.collect()));
        }
        let mut report = Table::new();
        let local = self.report.local_domains.iter().map(|d| s(d)).collect();
        report.insert("local_domains".into(), Value::Array(local));
        report.insert(
            "flush_interval".into(),
            s(&format!("{}s", self.report.flush_interval.as_secs())),
        );
        top.insert("report".into(), Value::Table(report));
        top.insert("auth".into(), Value::Table(self.auth.effective(path)));
        let body = toml::to_string(&top).unwrap_or_default();
        format!("# sluice: the effective config, every default filled in\n\n{body}")
    }

    /// `[tls]`: the server's files and the outbound CA, as far as given.
    fn tls_table(&self) -> Table {
        let mut t = Table::new();
        if let Some(f) = &self.tls {
            t.insert("certificate".into(), path(&f.certificate));
            t.insert("key".into(), path(&f.key));
            if let Some(c) = &f.client_ca {
                t.insert("client_ca".into(), path(c));
            }
        }
        if let Some(c) = &self.ca {
            t.insert("ca".into(), path(c));
        }
        if !self.tls_clients.is_empty() {
            let list = self
                .tls_clients
                .iter()
                .map(|c| {
                    let mut e = Table::new();
                    e.insert("name".into(), s(&c.name));
                    e.insert("certificate".into(), path(&c.certificate));
                    e.insert("key".into(), path(&c.key));
                    Value::Table(e)
                })
                .collect();
            t.insert("client".into(), Value::Array(list));
        }
        t
    }
}

/// A TOML string.
fn s(v: &str) -> Value {
    Value::String(v.to_string())
}

/// A path as a TOML string, made absolute (the output may be read back
/// from another folder).
fn path(p: &Path) -> Value {
    let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    s(&abs.display().to_string())
}

/// A count as a TOML integer (saturating).
fn int(n: u64) -> Value {
    Value::Integer(i64::try_from(n).unwrap_or(i64::MAX))
}

/// A duration in the largest unit that writes it exactly ("4h", "90s").
fn duration(d: Duration) -> Value {
    let secs = d.as_secs();
    let (n, unit) = match secs {
        0 => (0, "s"),
        _ if secs % 86_400 == 0 => (secs / 86_400, "d"),
        _ if secs % 3600 == 0 => (secs / 3600, "h"),
        _ if secs % 60 == 0 => (secs / 60, "m"),
        _ => (secs, "s"),
    };
    s(&format!("{n}{unit}"))
}

/// `[limits]`.
fn limits(l: &Limits) -> Table {
    let mut t = Table::new();
    t.insert("connections".into(), int(l.connections as u64));
    t.insert(
        "connections_per_ip".into(),
        int(l.connections_per_ip as u64),
    );
    t.insert("command_timeout".into(), duration(l.command_timeout));
    t.insert("data_timeout".into(), duration(l.data_timeout));
    let bare = match l.bare_line_endings {
        BareLineEndings::Refuse => "refuse",
        BareLineEndings::Normalize => "normalize",
    };
    t.insert("bare_line_endings".into(), s(bare));
    t.insert("max_message_size".into(), int(l.max_message_size));
    t.insert("max_recipients".into(), int(u64::from(l.max_recipients)));
    t.insert("spool_reserve".into(), int(l.spool_reserve));
    t
}

/// `[queue]`.
fn queue(q: &QueueConfig) -> Table {
    let mut t = Table::new();
    let retry = q.retry.iter().map(|d| duration(*d)).collect();
    t.insert("retry".into(), Value::Array(retry));
    t.insert("warn_after".into(), duration(q.warn_after));
    t.insert("expire_after".into(), duration(q.expire_after));
    t.insert("concurrency".into(), int(q.concurrency as u64));
    t.insert(
        "concurrency_per_destination".into(),
        int(q.concurrency_per_destination as u64),
    );
    let cache = &q.connection_cache;
    t.insert("connection_cache_time".into(), duration(cache.idle));
    t.insert(
        "connection_cache_messages".into(),
        int(u64::from(cache.messages)),
    );
    t.insert("connection_cache_size".into(), int(cache.sessions as u64));
    t.insert("hold".into(), Value::Boolean(q.hold));
    t
}

/// `[dns]`: servers as used, the static tables sorted by name.
fn dns(d: &DnsConfig) -> Table {
    let mut t = Table::new();
    let servers = d.servers.iter().map(|a| s(&a.to_string())).collect();
    t.insert("servers".into(), Value::Array(servers));
    let mut hosts = Table::new();
    for (name, addrs) in &d.static_hosts {
        let list = addrs.iter().map(|a| s(&a.to_string())).collect();
        hosts.insert(name.clone(), Value::Array(list));
    }
    t.insert("static".into(), Value::Table(hosts));
    let mut mx = Table::new();
    for (domain, list) in &d.static_mx {
        let pairs = list
            .iter()
            .map(|(pref, host)| Value::Array(vec![Value::Integer(i64::from(*pref)), s(host)]));
        mx.insert(domain.clone(), Value::Array(pairs.collect()));
    }
    t.insert("static_mx".into(), Value::Table(mx));
    let timeout = if d.timeout.subsec_nanos() == 0 {
        int(d.timeout.as_secs())
    } else {
        Value::Float(d.timeout.as_secs_f64())
    };
    t.insert("timeout".into(), timeout);
    t.insert("attempts".into(), Value::Integer(i64::from(d.attempts)));
    t
}
