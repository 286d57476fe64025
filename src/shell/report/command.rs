//! `sluice report [--days N] [--json] [--from-log FILE...] [--html FILE]`:
//! the destination table and the MX plan, from the daemon's history (the
//! state directory of the config) or from syslog files.

use super::history::{self, date, Day, Skipped};
use super::logs::{FromLogs, LineStats};
use super::plan::{self, Decision, Plan, Row};
use crate::shell::config::Config;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

/// Days reported when `--days` is not given.
const DEFAULT_DAYS: u32 = 30;

/// The command's options.
#[derive(Debug, Default)]
struct Opts {
    days: Option<u32>,
    json: bool,
    logs: Vec<PathBuf>,
    html: Option<PathBuf>,
}

/// Parses the options (`--from-log` takes every argument up to the next
/// option).
fn opts(args: &[&str]) -> Result<Opts, String> {
    let mut o = Opts::default();
    let mut it = args.iter().peekable();
    while let Some(a) = it.next() {
        match *a {
            "--json" => o.json = true,
            "--days" => {
                let n = it.next().ok_or("--days needs a number")?;
                let n: u32 = n
                    .parse()
                    .ok()
                    .filter(|n| (1..=history::MAX_DAYS).contains(n))
                    .ok_or(format!(
                        "--days {n:?}: a number of days from 1 to {}",
                        history::MAX_DAYS
                    ))?;
                o.days = Some(n);
            }
            "--html" => o.html = Some(PathBuf::from(it.next().ok_or("--html needs a file")?)),
            "--from-log" => {
                while let Some(f) = it.next_if(|f| !f.starts_with("--")) {
                    o.logs.push(PathBuf::from(f));
                }
                if o.logs.is_empty() {
                    return Err("--from-log needs at least one file".into());
                }
            }
            other => return Err(format!("report: unknown option {other:?}")),
        }
    }
    Ok(o)
}

/// Where the counts came from.
enum Source {
    /// The daemon's history: the state directory and what was skipped.
    History(PathBuf, Vec<Skipped>),
    /// Syslog files and what reading them found.
    Logs(Vec<PathBuf>, LineStats),
}

/// Runs the command; `cfg` is needed without `--from-log`. Exit code 0,
/// or 2 for bad options or unreadable files.
pub fn report_command(args: &[&str], cfg: Result<Config, String>) -> i32 {
    let o = match opts(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("sluice: {e}");
            return 2;
        }
    };
    let (days, source, local) = if o.logs.is_empty() {
        let cfg = match cfg {
            Ok(c) => c,
            Err(e) => {
                eprintln!("sluice: {e}");
                return 2;
            }
        };
        let last = history::today();
        let first = last.saturating_sub(o.days.unwrap_or(DEFAULT_DAYS) - 1);
        let (days, skipped) = history::load(&cfg.state_dir, first, last);
        let src = Source::History(cfg.state_dir.join(history::DIR), skipped);
        (days, src, cfg.report.local_domains.clone())
    } else {
        match read_logs(&o.logs, o.days) {
            Ok((days, stats)) => (days, Source::Logs(o.logs.clone(), stats), Vec::new()),
            Err(e) => {
                eprintln!("sluice: {e}");
                return 2;
            }
        }
    };
    let rows = plan::rows(&days);
    let plan = plan::plan(&rows, &local);
    let daily = plan::daily(&days);
    let text = text(&source, &days, &rows, &plan);
    if let Some(path) = &o.html {
        let page = super::html::page("sluice mail-flow report", &daily, &text);
        if let Err(e) = std::fs::write(path, page) {
            eprintln!("sluice: {}: {e}", path.display());
            return 2;
        }
    }
    if o.json {
        let v = to_json(&source, &days, &rows, &plan, &daily);
        outln!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        out!("{text}");
    }
    0
}

/// Reads the syslog files; with `days`, keeps the last `days` dates up to
/// the newest one found (lines of unknown date are kept).
fn read_logs(
    files: &[PathBuf],
    days: Option<u32>,
) -> Result<(BTreeMap<u32, Day>, LineStats), String> {
    let mut f = FromLogs::default();
    for p in files {
        let file = std::fs::File::open(p).map_err(|e| format!("{}: {e}", p.display()))?;
        f.read(file).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    if let (Some(n), Some(newest)) = (days, f.days.keys().copied().filter(|d| *d != 0).max()) {
        let first = newest.saturating_sub(n - 1);
        f.days.retain(|d, _| *d == 0 || *d >= first);
    }
    Ok((f.days, f.stats))
}

/// A share as a percentage with one decimal.
fn pct(part: f64, whole: f64) -> String {
    if whole <= 0.0 {
        "-".into()
    } else {
        format!("{:.1} %", 100.0 * part / whole)
    }
}

/// The layouts' names for people.
fn layout_title(name: &str) -> &'static str {
    match name {
        "load_shared" => "load-shared, equal preference",
        "per_location" => "one primary per location",
        _ => "single primary",
    }
}

/// The report as text.
fn text(src: &Source, days: &BTreeMap<u32, Day>, rows: &[Row], p: &Plan) -> String {
    let mut s = String::new();
    let dated: Vec<u32> = days.keys().copied().filter(|d| *d != 0).collect();
    let span = match (dated.first(), dated.last()) {
        (Some(f), Some(l)) => format!(
            "{} .. {}, {} day(s) with mail",
            date(*f),
            date(*l),
            dated.len()
        ),
        _ => "no dated mail".into(),
    };
    match src {
        Source::History(dir, skipped) => {
            let _ = writeln!(
                s,
                "Mail flow from the history in {} ({span})",
                dir.display()
            );
            for k in skipped {
                let _ = writeln!(s, "skipped {}: {}", k.file.display(), k.reason);
            }
        }
        Source::Logs(files, st) => {
            let _ = writeln!(s, "Mail flow from {} syslog file(s) ({span})", files.len());
            let _ = writeln!(
                s,
                "lines: {} read, {} RECEIVE, {} ROUTE counted, {} refused recipients, {} ROUTE without \
                 RECEIVE, {} other sluice lines skipped, {} foreign lines skipped",
                st.read, st.receive, st.route, st.refused, st.unmatched, st.other_sluice, st.foreign
            );
        }
    }
    table(&mut s, rows);
    plan_text(&mut s, p);
    s
}

/// The destination table.
fn table(s: &mut String, rows: &[Row]) {
    let total: u64 = rows.iter().map(|r| r.counts.messages).sum();
    let red: u64 = rows.iter().map(|r| r.counts.redirected).sum();
    let _ = writeln!(
        s,
        "\n{:<28} {:<28} {:>9} {:>8} {:>12} {:>10} {:>8}",
        "DOMAIN", "LOCATION", "MESSAGES", "SHARE", "BYTES", "REDIRECTED", "SHARE"
    );
    for r in rows {
        let c = &r.counts;
        let _ = writeln!(
            s,
            "{:<28} {:<28} {:>9} {:>8} {:>12} {:>10} {:>8}",
            r.domain,
            r.location,
            c.messages,
            pct(c.messages as f64, total as f64),
            c.bytes,
            c.redirected,
            pct(c.redirected as f64, c.messages as f64)
        );
    }
    let bytes: u64 = rows.iter().map(|r| r.counts.bytes).sum();
    let _ = writeln!(
        s,
        "{:<28} {:<28} {:>9} {:>8} {:>12} {:>10} {:>8}",
        "total",
        "",
        total,
        pct(total as f64, total as f64),
        bytes,
        red,
        pct(red as f64, total as f64)
    );
}

/// The layouts, the decision and the MX records.
fn plan_text(s: &mut String, p: &Plan) {
    let _ = writeln!(
        s,
        "\nMX layouts for the mail rewritten from a shared domain to a location \
         ({} message(s), {} location(s)):",
        p.messages,
        p.locations.len()
    );
    for f in &p.locations {
        let _ = writeln!(
            s,
            "  {:<28} {:>9} messages {:>8}",
            f.location,
            f.messages,
            pct(f.messages as f64, p.messages as f64)
        );
    }
    for l in &p.layouts {
        let name = match &l.primary {
            Some(pr) => format!("{} ({pr})", layout_title(l.name)),
            None => layout_title(l.name).to_string(),
        };
        let _ = writeln!(
            s,
            "  {name:<46} redirects {:>7}, {:.0} octets cross between locations",
            pct(l.redirected_share, 1.0),
            l.crossing_bytes
        );
    }
    match (p.decision, p.recommended) {
        (Decision::Recommended, Some(i)) => {
            let _ = writeln!(
                s,
                "\nRecommended: {} (the least redirection).\nMX records to publish \
                 (RELAY(x): the host name of location x's ingress relay):",
                layout_title(p.layouts[i].name)
            );
            for m in &p.mx {
                let _ = writeln!(
                    s,
                    "  {}.\tIN MX {}\tRELAY({})",
                    m.domain, m.preference, m.relay_of
                );
            }
        }
        (d, _) => {
            let _ = writeln!(s, "\nNo recommendation: {}", why(d, p));
        }
    }
}

/// Why the data do not decide.
fn why(d: Decision, p: &Plan) -> String {
    match d {
        Decision::TooFew => format!(
            "too few data to decide: {} rewritten message(s), at least {} are needed",
            p.messages,
            plan::MIN_MESSAGES
        ),
        Decision::OneLocation => {
            "all rewritten mail goes to one location: nothing to choose".into()
        }
        Decision::NoRewrittenMail => {
            "no mail was rewritten from a shared domain to a location: nothing to plan".into()
        }
        Decision::Recommended => String::new(),
    }
}

/// The report as JSON (the shape is in docs/INTERFACES.md).
fn to_json(
    src: &Source,
    days: &BTreeMap<u32, Day>,
    rows: &[Row],
    p: &Plan,
    daily: &BTreeMap<u32, BTreeMap<String, history::Counts>>,
) -> Value {
    let total: u64 = rows.iter().map(|r| r.counts.messages).sum();
    let share = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let dests: Vec<Value> = rows
        .iter()
        .map(|r| {
            let c = &r.counts;
            json!({"domain": r.domain, "location": r.location, "messages": c.messages,
                   "bytes": c.bytes, "redirected": c.redirected,
                   "share": share(c.messages, total), "redirected_share": share(c.redirected, c.messages)})
        })
        .collect();
    let red: u64 = rows.iter().map(|r| r.counts.redirected).sum();
    let bytes: u64 = rows.iter().map(|r| r.counts.bytes).sum();
    let daily: Vec<Value> = daily
        .iter()
        .map(|(d, per)| {
            let locs: serde_json::Map<String, Value> = per
                .iter()
                .map(|(l, c)| (l.clone(), json!({"messages": c.messages, "bytes": c.bytes, "redirected": c.redirected})))
                .collect();
            json!({"day": date(*d), "locations": locs})
        })
        .collect();
    let layouts: Vec<Value> = p
        .layouts
        .iter()
        .map(|l| {
            json!({"name": l.name, "redirected_share": l.redirected_share,
                        "redirected_messages": l.redirected_messages,
                        "crossing_bytes": l.crossing_bytes, "primary": l.primary})
        })
        .collect();
    let recommendation = p.recommended.map(|i| {
        let mx: Vec<Value> = p
            .mx
            .iter()
            .map(
                |m| json!({"domain": m.domain, "preference": m.preference, "relay_of": m.relay_of}),
            )
            .collect();
        json!({"layout": p.layouts[i].name, "mx": mx})
    });
    let locations: Vec<Value> = p
        .locations
        .iter()
        .map(|f| {
            json!({"location": f.location, "messages": f.messages, "bytes": f.bytes,
                        "share": share(f.messages, p.messages)})
        })
        .collect();
    let mut v = json!({
        "days_with_mail": days.keys().filter(|d| **d != 0).count(),
        "totals": {"messages": total, "bytes": bytes, "redirected": red,
                   "redirected_share": share(red, total)},
        "destinations": dests,
        "daily": daily,
        "plan": {"messages": p.messages, "locations": locations, "layouts": layouts,
                 "decision": p.decision.name(), "why": why(p.decision, p),
                 "min_messages": plan::MIN_MESSAGES, "recommendation": recommendation},
    });
    add_source(&mut v, src);
    v
}

/// The source's fields of the JSON report: where the counts came from and
/// what was skipped (history files) or how the lines were taken (logs).
fn add_source(v: &mut Value, src: &Source) {
    match src {
        Source::History(dir, skipped) => {
            v["source"] = json!("history");
            v["history_dir"] = json!(dir.display().to_string());
            v["skipped"] = skipped
                .iter()
                .map(|k| json!({"file": k.file.display().to_string(), "reason": k.reason}))
                .collect();
        }
        Source::Logs(files, st) => {
            v["source"] = json!("logs");
            v["files"] = files
                .iter()
                .map(|f| json!(f.display().to_string()))
                .collect();
            v["lines"] = serde_json::to_value(st).unwrap_or(Value::Null);
            v["skipped"] = json!([]);
        }
    }
}
