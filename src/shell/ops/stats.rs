//! Where the metrics meet the daemon: the label values the counters use
//! (inbound and send connector names), the levels read on demand (queue
//! depth, spool size and free space, the policy version), and the STATS
//! syslog line that carries every metric as RFC 5424 structured data every
//! `[metrics] syslog_interval`, for boxes watched only through syslog.

use super::log;
use super::metrics::{self, Level, View};
use crate::engine::policy::{Attribution, Table};
use crate::shell::policy::install::Installer;
use crate::shell::relay::queue::{Queue, DEPTH_STATES};
use crate::shell::spool::Spool;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

/// The label of a session no inbound connector attributes, and of a
/// recipient routed by MX without a send connector.
pub const NONE: &str = "none";

/// The SD-ID suffix of the STATS elements (RFC 5612's documentation
/// enterprise number, as the other lines use).
const SD_SUFFIX: &str = "@32473";

/// Longest structured data on one STATS line, in octets: well under the
/// 8 KiB rsyslog takes by default; more elements go on further lines.
const SD_BUDGET: usize = 4000;

/// The longest SD-NAME (RFC 5424 §6.3.2), for SD-IDs and PARAM-NAMEs.
const SD_NAME: usize = 32;

/// The inbound connector that attributes a session, by name, for
/// `sluice_messages_received_total`.
pub fn inbound_label<'a>(t: &'a Table, att: &Attribution) -> &'a str {
    att.inbound
        .and_then(|i| t.inbound.get(usize::from(i)))
        .and_then(|c| std::str::from_utf8(t.str(c.name)).ok())
        .unwrap_or(NONE)
}

/// A route's send connector, for the recipient counters.
pub fn connector_label(connector: Option<&str>) -> &str {
    connector.unwrap_or(NONE)
}

/// Registers the label values known at start, so they show as 0 from the
/// first scrape: the policy's connectors, and both TLS directions.
pub fn register(t: &Table) {
    let names = |it: &mut dyn Iterator<Item = &[u8]>| -> Vec<String> {
        let mut v: Vec<String> = it
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .collect();
        v.push(NONE.into());
        v
    };
    let inbound = names(&mut t.inbound.iter().map(|c| t.str(c.name)));
    metrics::MESSAGES_RECEIVED.register(inbound);
    let send = names(&mut t.connectors.iter().map(|c| t.str(c.name)));
    for f in [&metrics::DELIVERED, &metrics::DEFERRED, &metrics::BOUNCED] {
        f.register(send.clone());
    }
    for f in [&metrics::TLS_HANDSHAKES, &metrics::TLS_FAILURES] {
        f.register(["inbound".to_string(), "outbound".to_string()]);
    }
    metrics::DELIVERY_CONNECTIONS.register(["no".to_string(), "yes".to_string()]);
}

/// Hands the registry the function that reads the levels of `queue`,
/// `spool` and `installer` (a scrape, `sluice status`, a STATS line).
pub fn set_levels(queue: Arc<Queue>, spool: Arc<Spool>, installer: Arc<Installer>) {
    metrics::set_levels(Box::new(move || levels(&queue, &spool, &installer)));
}

/// A gauge with no label.
fn gauge(name: &'static str, help: &'static str, value: u64) -> Level {
    Level {
        name,
        help,
        label: None,
        value,
    }
}

/// The levels now: queue depth by state and the oldest message's age,
/// the spool's segments, octets and free space, the policy version.
fn levels(queue: &Queue, spool: &Spool, installer: &Installer) -> Vec<Level> {
    let (depth, oldest) = queue.depth();
    let mut v: Vec<Level> = DEPTH_STATES
        .iter()
        .zip(depth)
        .map(|(s, n)| Level {
            name: "sluice_queue_messages",
            help: "Messages in the queue, by state (active, hold, deferred, pending, bounce).",
            label: Some(("state", (*s).to_string())),
            value: n,
        })
        .collect();
    let (segments, bytes) = spool.usage();
    v.extend([
        gauge(
            "sluice_queue_oldest_message_age_seconds",
            "Age of the oldest message in the queue (0 when empty).",
            oldest,
        ),
        gauge(
            "sluice_spool_bytes",
            "Octets of the spool's segment files (preallocated room included).",
            bytes,
        ),
        gauge(
            "sluice_spool_segments",
            "Segment files in the spool.",
            segments,
        ),
        gauge(
            "sluice_spool_free_bytes",
            "Free octets on the spool's file system (for an unprivileged user).",
            spool.free_space().unwrap_or(0),
        ),
        Level {
            name: "sluice_policy_info",
            help:
                "The active policy: its version (as sluice status shows it) as a label; always 1.",
            label: Some((
                "version",
                format!("{:016X}", installer.current().table.version),
            )),
            value: 1,
        },
    ]);
    v
}

/// Logs the STATS line(s) every `interval` until cancelled.
pub async fn every(interval: Duration) {
    loop {
        smol::Timer::after(interval).await;
        let lines = stats_sd(&metrics::views());
        let n = lines.len();
        for (i, sd) in lines.iter().enumerate() {
            log::stats_line(sd, format_args!("counters since start ({} of {n})", i + 1));
        }
    }
}

/// The metrics as RFC 5424 SD-ELEMENTs, packed into as few lines as fit
/// `SD_BUDGET`: one `[sluice@32473 NAME="N" ...]` element with every
/// metric that has no label (names without the `sluice_` prefix), then one
/// element per labelled metric, `[NAME@32473 VALUE="N" ...]`, with its
/// non-zero samples only (two label values joined by `.`); a metric with
/// none is left out.
pub fn stats_sd(views: &[View]) -> Vec<String> {
    let mut plain = format!("[sluice{SD_SUFFIX}");
    let mut elements = Vec::new();
    for v in views {
        let short = v.name.strip_prefix("sluice_").unwrap_or(v.name);
        if v.labels.is_empty() {
            let n = v.samples.first().map_or(0, |s| s.1);
            let _ = write!(plain, " {}=\"{n}\"", sd_name(short));
            continue;
        }
        let mut e = format!("[{}{SD_SUFFIX}", sd_name(short));
        let mut any = false;
        for (values, n) in v.samples.iter().filter(|s| s.1 > 0) {
            let _ = write!(e, " {}=\"{n}\"", sd_name(&values.join(".")));
            any = true;
        }
        if any {
            e.push(']');
            elements.push(e);
        }
    }
    plain.push(']');
    let mut lines = vec![plain];
    for e in elements {
        match lines.last_mut() {
            Some(l) if l.len() + e.len() <= SD_BUDGET => l.push_str(&e),
            _ => lines.push(e),
        }
    }
    lines
}

/// `s` as an SD-NAME: printable US-ASCII but `=`, space, `]` and `"`
/// (each other octet becomes `_`), at most [`SD_NAME`] octets.
fn sd_name(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_graphic() && !matches!(c, '=' | ']' | '"') {
                c
            } else {
                '_'
            }
        })
        .take(SD_NAME)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shell::ops::metrics::Type;

    fn view(name: &'static str, labels: Vec<&'static str>, s: Vec<(Vec<&str>, u64)>) -> View {
        View {
            name,
            help: "h",
            kind: Type::Counter,
            labels,
            samples: s
                .into_iter()
                .map(|(v, n)| (v.into_iter().map(String::from).collect(), n))
                .collect(),
        }
    }

    #[test]
    fn stats_sd_has_one_element_per_metric_and_skips_zeros() {
        let views = [
            view("sluice_dns_queries_total", vec![], vec![(vec![], 7)]),
            view(
                "sluice_rejected_total",
                vec!["status"],
                vec![(vec!["5.1.1"], 2), (vec!["4.7.1"], 0)],
            ),
            view(
                "sluice_sessions",
                vec!["listener"],
                vec![(vec!["[::1]:25"], 0)],
            ),
            view(
                "sluice_agent_actions_total",
                vec!["agent", "action"],
                vec![(vec!["sender_filter", "rejected"], 1)],
            ),
        ];
        assert_eq!(
            stats_sd(&views),
            ["[sluice@32473 dns_queries_total=\"7\"]\
                 [rejected_total@32473 5.1.1=\"2\"]\
                 [agent_actions_total@32473 sender_filter.rejected=\"1\"]"]
        );
    }

    #[test]
    fn a_long_stats_sd_is_split_into_lines_and_names_are_sd_names() {
        let many: Vec<(Vec<&str>, u64)> = (0..400).map(|_| (vec!["x y]\"="], 1)).collect();
        let lines = stats_sd(&[view("sluice_a_total", vec!["l"], many.clone()), {
            view("sluice_b_total", vec!["l"], many)
        }]);
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(lines[1].starts_with("[a_total@32473 x_y___=\"1\""));
        assert!(lines[2].starts_with("[b_total@32473 "));
    }

    #[test]
    fn every_metric_name_makes_an_sd_id_and_an_unlabelled_one_a_param_name() {
        for v in metrics::views() {
            let short = v.name.strip_prefix("sluice_").unwrap_or(v.name);
            let len = if v.labels.is_empty() {
                short.len()
            } else {
                short.len() + SD_SUFFIX.len()
            };
            assert!(len <= SD_NAME, "{} is too long for an SD-NAME", v.name);
        }
    }
}
