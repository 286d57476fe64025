//! `sluice trace` and `sluice pipeline`: the policy, offline.

use crate::engine::policy::{
    allowed_network, attribute, recipient_check, run_order, run_position, sender_check, Agent,
    AgentSlot, Attribution, Probe, RcptCheck, Table, ALSO_ON, STAGES,
};
use crate::shell::config::Config;
use crate::shell::directory::Directory;
use crate::shell::policy::compile;
use crate::shell::policy::render::{self, HeaderEdit, NextHop, Outcome};
use crate::shell::policy::runtime::{self, Policy};
use crate::shell::policy::trace_auth;
use crate::shell::relay::dns::DnsConfig;
use crate::shell::relay::splice::splice;
use crate::shell::relay::verify::{Verified, Verifier};
use serde_json::{json, Value};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// Loads and compiles the rule file for a command: `--rules FILE`, else
/// the config's `rules`, else the embedded default. Errors are printed.
pub fn load_rules(explicit: Option<&Path>, cfg: Option<&Config>) -> Result<Policy, i32> {
    let path: Option<PathBuf> = explicit
        .map(Path::to_path_buf)
        .or_else(|| cfg.and_then(|c| c.rules.clone()));
    let (text, name) = match &path {
        Some(p) => match std::fs::read_to_string(p) {
            Ok(t) => (t, p.display().to_string()),
            Err(e) => {
                eprintln!("sluice: {}: {e}", p.display());
                return Err(2);
            }
        },
        None => (
            runtime::DEFAULT_RULES.to_string(),
            "(embedded default rules)".to_string(),
        ),
    };
    match compile::compile(&text) {
        Ok(c) => Policy::new(c.table).map_err(|e| {
            eprintln!("{name}: the compiled policy is invalid: {e:?}");
            2
        }),
        Err(diags) => {
            for d in diags {
                eprintln!("{name}:{}:{}: error: {}", d.line, d.col, d.message);
            }
            Err(2)
        }
    }
}

/// `sluice trace`'s usage line.
const TRACE_USAGE: &str = "usage: sluice trace MESSAGE.eml --from A --to B [--to C ...] [--peer IP] [--tls-name N] [--auth LOGIN] [--helo NAME | --auth-results \"spf=pass dkim=pass ...\"] [--rules FILE] [--directory EXPORT] [--snapshots] [--milters] [--json]";

/// `sluice trace`'s command line.
struct TraceArgs {
    /// The message file.
    file: PathBuf,
    /// `--from`.
    from: String,
    /// `--to`, at least one.
    to: Vec<String>,
    /// `--peer`, loopback by default.
    peer: IpAddr,
    /// `--tls-name`: the client certificate's name.
    tls_name: Option<String>,
    /// `--rules`.
    rules_file: Option<PathBuf>,
    /// `--directory`: an export to trace with instead of the installed one.
    directory_file: Option<PathBuf>,
    /// `--json`.
    json_out: bool,
    /// `--snapshots`.
    snapshots: bool,
    /// `--milters`: run the config's milters on the message first.
    milters: bool,
    /// `--auth LOGIN`: the session authenticated (SMTP AUTH) as LOGIN.
    login: Option<String>,
    /// `--helo NAME`: run the sender authentication checks.
    helo: Option<String>,
    /// `--auth-results`: sender authentication verdicts given by hand.
    auth_results: Option<String>,
}

impl TraceArgs {
    /// Reads the arguments; `Err` holds the exit status (0 after `--help`,
    /// 2 for bad input, the message printed).
    fn parse(args: &[&str]) -> Result<TraceArgs, i32> {
        let mut file = None;
        let mut from: Option<String> = None;
        let mut to: Vec<String> = Vec::new();
        let mut peer: IpAddr = IpAddr::from([127, 0, 0, 1]);
        let mut tls_name: Option<String> = None;
        let mut rules_file: Option<PathBuf> = None;
        let mut directory_file: Option<PathBuf> = None;
        let (mut json_out, mut snapshots, mut milters) = (false, false, false);
        let mut login: Option<String> = None;
        let (mut helo, mut auth_results): (Option<String>, Option<String>) = (None, None);
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut value = |what: &str| -> Result<String, i32> {
                it.next().map(|s| s.to_string()).ok_or_else(|| {
                    eprintln!("sluice: {what} needs a value\n{TRACE_USAGE}");
                    2
                })
            };
            match *a {
                "--from" => from = Some(value("--from")?),
                "--to" => to.push(value("--to")?),
                "--peer" => {
                    let v = value("--peer")?;
                    peer = v.parse().map_err(|_| {
                        eprintln!("sluice: --peer {v:?} is not an IP address");
                        2
                    })?;
                }
                "--tls-name" => tls_name = Some(value("--tls-name")?),
                "--auth" => login = Some(value("--auth")?),
                "--helo" => helo = Some(value("--helo")?),
                "--auth-results" => auth_results = Some(value("--auth-results")?),
                "--rules" => rules_file = Some(PathBuf::from(value("--rules")?)),
                "--directory" => directory_file = Some(PathBuf::from(value("--directory")?)),
                "--json" => json_out = true,
                "--snapshots" => snapshots = true,
                "--milters" => milters = true,
                "--help" | "-h" => {
                    outln!("{TRACE_USAGE}");
                    return Err(0);
                }
                f if file.is_none() && !f.starts_with("--") => file = Some(PathBuf::from(f)),
                other => {
                    eprintln!("sluice: unexpected argument {other:?}\n{TRACE_USAGE}");
                    return Err(2);
                }
            }
        }
        let (Some(file), Some(from)) = (file, from) else {
            eprintln!("sluice: trace needs a message file and --from\n{TRACE_USAGE}");
            return Err(2);
        };
        if to.is_empty() {
            eprintln!("sluice: trace needs at least one --to\n{TRACE_USAGE}");
            return Err(2);
        }
        check_addresses(&from, &to)?;
        Ok(TraceArgs {
            file,
            from,
            to,
            peer,
            tls_name,
            rules_file,
            directory_file,
            json_out,
            snapshots,
            milters,
            login,
            helo,
            auth_results,
        })
    }
}

/// The envelope addresses as the daemon would take them: `Err(2)`, the
/// message printed, for one that MAIL or RCPT would refuse.
fn check_addresses(from: &str, to: &[String]) -> Result<(), i32> {
    if !crate::engine::addr::valid_address(from.as_bytes(), false) {
        eprintln!(
            "sluice: --from {from:?} is not a valid address (MAIL FROM would refuse it: 501 5.1.7)"
        );
        return Err(2);
    }
    if let Some(bad) = to
        .iter()
        .find(|t| !crate::engine::addr::valid_address(t.as_bytes(), true))
    {
        eprintln!(
            "sluice: --to {bad:?} is not a valid address (RCPT TO would refuse it: 501 5.1.3)"
        );
        return Err(2);
    }
    Ok(())
}

/// The directory a trace runs with: the export `explicit` (LDIF or CSV),
/// else the one installed in the config's state directory, else none.
fn load_directory(explicit: Option<&Path>, cfg: Option<&Config>) -> Result<Option<Directory>, i32> {
    let Some(p) = explicit else {
        return Ok(cfg.and_then(|c| crate::shell::directory::install::installed(&c.state_dir)));
    };
    let text = std::fs::read_to_string(p).map_err(|e| {
        eprintln!("sluice: {}: {e}", p.display());
        2
    })?;
    Directory::from_export(&text).map(Some).map_err(|e| {
        eprintln!("{}:{e}", p.display());
        2
    })
}

/// `sluice trace`: exit 0 accepted, 1 rejected, 2 bad input.
pub fn trace_command(args: &[&str], cfg: Option<&Config>) -> i32 {
    let a = match TraceArgs::parse(args) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let msg = match std::fs::read(&a.file) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("sluice: {}: {e}", a.file.display());
            return 2;
        }
    };
    let pol = match load_rules(a.rules_file.as_deref(), cfg) {
        Ok(t) => t,
        Err(code) => return code,
    };
    let mut a = a;
    // Sender authentication checks the message as it arrived, before the
    // milters change it (as in a session).
    let arrived = a.milters.then(|| msg.clone());
    let (msg, milters) = match (a.milters, cfg) {
        (true, Some(c)) => trace_milters(c, &pol, &mut a, msg),
        _ => (msg, None),
    };
    let a = a;
    let directory = match load_directory(a.directory_file.as_deref(), cfg) {
        Ok(d) => d,
        Err(code) => return code,
    };
    let table: &Table = &pol.table;
    let mut att = attribute(
        table,
        &runtime::ip16(a.peer),
        a.tls_name.as_deref().map(str::as_bytes),
    );
    // SMTP AUTH makes the session originating, as in the daemon.
    att.originating |= a.login.is_some();
    let (out, filtered, sender_auth) = match decide_traced(
        &pol,
        &a,
        att,
        directory.as_ref(),
        cfg,
        &msg,
        arrived.as_deref(),
    ) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let sender = render::sender_check_words(&sender_check(table, &att, a.from.as_bytes()));
    let inbound = att
        .inbound
        .and_then(|i| table.inbound.get(usize::from(i)))
        .map(|c| String::from_utf8_lossy(table.str(c.name)).into_owned());
    let dns = cfg.map(|c| c.dns.clone()).unwrap_or_default();
    let mut edge = edge_trace(table, &att, a.peer, dns);
    if let Some(cfg) = cfg {
        daemon_score(&mut edge, cfg, a.peer);
    }
    let t = Traced {
        a: &a,
        table,
        att,
        msg: &msg,
        out,
        inbound,
        sender,
        filtered,
        edge,
        cfg,
        sender_auth,
    };
    let refused = milters.as_ref().is_some_and(|m| m.refusal.is_some());
    if a.json_out {
        print_json(&t, milters.as_ref());
    } else {
        if let Some(m) = &milters {
            for l in &m.lines {
                outln!("{l}");
            }
        }
        print_plain(&t);
    }
    let login_refused = sender_login_ok(&a, cfg) == Some(false);
    i32::from(t.out.result == "Rejected" || t.edge.refusal.is_some() || refused || login_refused)
}

/// The policy's outcome, the recipient filter's checks (with call-ahead's)
/// and the sender_authentication agent's trace.
type Decided = (
    Outcome,
    Vec<(RcptCheck, Option<Verified>)>,
    trace_auth::AuthTrace,
);

/// The recipient filter, the sender_authentication agent and the policy's
/// pipeline on the traced message `msg` (the agent checks it as it
/// `arrived`, before the milters), with the agent's verdicts in the rules
/// as in a session: `Err` holds the exit status of bad input.
fn decide_traced(
    pol: &Policy,
    a: &TraceArgs,
    att: Attribution,
    directory: Option<&Directory>,
    cfg: Option<&Config>,
    msg: &[u8],
    arrived: Option<&[u8]>,
) -> Result<Decided, i32> {
    let table: &Table = &pol.table;
    let rcpts: Vec<&[u8]> = a.to.iter().map(|s| s.as_bytes()).collect();
    let filtered = filter_recipients(table, &att, &rcpts, directory, cfg);
    let checks: Vec<RcptCheck> = filtered.iter().map(|(c, _)| *c).collect();
    let ask = trace_auth::AuthAsk {
        helo: a.helo.as_deref(),
        given: a.auth_results.as_deref(),
        peer: a.peer,
        from: &a.from,
    };
    let sender_auth = trace_auth::run(table, att.originating, cfg, &ask, arrived.unwrap_or(msg))?;
    let env = runtime::Arrival {
        attribution: att,
        client: a.peer,
        sender: a.from.as_bytes(),
        rcpts: &rcpts,
        directory,
        rcpt_checks: Some(&checks),
        auth: sender_auth.verdicts,
        login: a.login.as_deref(),
    };
    let mut out = runtime::decide(pol, &env, msg);
    trace_auth::apply(&sender_auth, &mut out);
    Ok((out, filtered, sender_auth))
}

/// What `--milters` found: lines for the text report, the JSON, and the
/// refusal (or discard) if a milter made one.
struct MilterTrace {
    /// `content filter: milter NAME: ...` lines.
    lines: Vec<String>,
    /// `content_filter` in `--json`.
    json: Value,
    /// The reply (or "discard") that ends the message.
    refusal: Option<String>,
}

/// Runs the config's milters on the message as the daemon would for the
/// peer (its inbound connector's `milters`, or by whether it is
/// originating; the agent disabled: none): the message, sender and
/// recipients they leave go on to the policy.
fn trace_milters(
    cfg: &Config,
    pol: &Policy,
    a: &mut TraceArgs,
    msg: Vec<u8>,
) -> (Vec<u8>, Option<MilterTrace>) {
    use crate::shell::milter::{Facts, Fate, Message, Milters};
    let att = attribute(
        &pol.table,
        &runtime::ip16(a.peer),
        a.tls_name.as_deref().map(str::as_bytes),
    );
    let selected = match att.inbound {
        _ if !pol
            .table
            .enabled(crate::engine::policy::Agent::ContentFilter) =>
        {
            Some(Vec::new())
        }
        Some(i) => pol.inbound_milters(i),
        None => None,
    };
    let ms = Milters::new(&cfg.milters);
    let m = Message::new(
        msg,
        a.from.as_bytes().to_vec(),
        a.to.iter().map(|t| t.as_bytes().to_vec()).collect(),
    );
    let facts = Facts {
        hostname: &cfg.hostname,
        queue_id: "TRACE",
        client: std::net::SocketAddr::new(a.peer, 0),
        local: None,
        helo: b"trace",
        tls: false,
    };
    let max = cfg.limits.max_message_size as usize;
    let f = futures_lite::future::block_on(ms.filter(
        m,
        &facts,
        att.originating,
        selected.as_deref(),
        max,
    ));
    let (mut lines, reports) = milter_lines(&f.reports);
    let refusal = match &f.fate {
        Fate::Pass => None,
        Fate::Discard { milter } => Some(format!("discarded by milter {milter}")),
        Fate::Refuse { milter, reply, .. } => Some(format!("{reply} (milter {milter})")),
    };
    if let Some(r) = &refusal {
        lines.push(format!("content filter: REFUSED {r}"));
    }
    a.from = String::from_utf8_lossy(&f.message.from).into_owned();
    a.to = f
        .message
        .rcpts
        .iter()
        .map(|r| String::from_utf8_lossy(r).into_owned())
        .collect();
    let json = json!({"milters": reports, "refusal": refusal});
    let (octets, _) = f.message.into_octets();
    (
        octets,
        Some(MilterTrace {
            lines,
            json,
            refusal,
        }),
    )
}

/// Each milter's replies and modifications, as trace lines and JSON.
fn milter_lines(reports: &[crate::shell::milter::Report]) -> (Vec<String>, Vec<Value>) {
    let mut lines = Vec::new();
    let mut out = Vec::new();
    for r in reports {
        for l in &r.lines {
            lines.push(format!("content filter: milter {}: {l}", r.milter));
        }
        if let Some((why, on)) = &r.failure {
            lines.push(format!(
                "content filter: milter {}: failed: {why}; on_failure = {}",
                r.milter,
                on.name()
            ));
        }
        out.push(json!({"milter": r.milter, "actions": r.lines,
            "failure": r.failure.as_ref().map(|(w, on)| json!({"error": w, "on_failure": on.name()}))}));
    }
    (lines, out)
}

/// Everything one trace found, for printing.
struct Traced<'a> {
    a: &'a TraceArgs,
    table: &'a Table,
    att: Attribution,
    msg: &'a [u8],
    out: Outcome,
    inbound: Option<String>,
    /// The sender filter's decision, in words.
    sender: &'static str,
    /// The recipient filter's decision per recipient, with call-ahead's.
    filtered: Vec<(RcptCheck, Option<Verified>)>,
    edge: EdgeTrace,
    /// The appliance config (`[auth] sender_login`), when there is one.
    cfg: Option<&'a Config>,
    /// The sender_authentication agent's checks and decision.
    sender_auth: trace_auth::AuthTrace,
}

/// The AUTH decision of `--auth LOGIN`: originating, and whether
/// `[auth] sender_login` lets the login use the envelope sender.
fn sender_login_ok(a: &TraceArgs, cfg: Option<&Config>) -> Option<bool> {
    let login = a.login.as_deref()?;
    let allowed = cfg.and_then(|c| c.auth.sender_login.get(login));
    Some(allowed.is_none_or(|list| crate::shell::auth::sender_allowed(list, &a.from)))
}

/// `--auth` in the text report.
fn auth_line(a: &TraceArgs, cfg: Option<&Config>) -> Option<String> {
    let ok = sender_login_ok(a, cfg)?;
    let login = a.login.as_deref().unwrap_or_default();
    Some(if ok {
        format!("auth: authenticated as {login}: originating (may relay), sender allowed")
    } else {
        format!(
            "auth: authenticated as {login}: sender_login refuses <{}>: 550 5.7.1",
            a.from
        )
    })
}

/// `--auth` in `--json`: null without it.
fn auth_json(a: &TraceArgs, cfg: Option<&Config>) -> Value {
    match sender_login_ok(a, cfg) {
        Some(ok) => json!({ "login": a.login, "originating": true, "sender_allowed": ok }),
        None => Value::Null,
    }
}

/// `sluice trace --json`: one JSON document.
fn print_json(t: &Traced<'_>, milters: Option<&MilterTrace>) {
    let (a, table) = (t.a, t.table);
    let mut doc = to_json(
        &t.out,
        table,
        a.peer,
        t.inbound.clone(),
        t.att.originating,
        a.tls_name.as_deref(),
        &a.from,
    );
    if a.snapshots {
        doc["snapshots"] = Value::Array(snapshot_list(table, t.msg, &t.out));
    }
    doc["sender_filter"] = json!(t.sender);
    doc["auth"] = auth_json(a, t.cfg);
    doc["authentication"] = t.sender_auth.json.clone();
    if let Some(list) = doc["recipients"].as_array_mut() {
        for (r, (c, v)) in list.iter_mut().zip(t.filtered.iter()) {
            r["recipient_filter"] = filter_json(c, v.as_ref());
        }
    }
    doc["connection_filter"] = t.edge.json.clone();
    doc["protocol_analysis"] = t.edge.reputation.clone();
    if let Some(r) = &t.edge.refusal {
        doc["result"] = json!("Rejected");
        doc["reply"] = json!(r);
    }
    if let Some(m) = milters {
        doc["content_filter"] = m.json.clone();
        if let Some(r) = &m.refusal {
            doc["result"] = json!("Rejected");
            doc["reply"] = json!(r);
        }
    }
    outln!("{doc}");
}

/// `sluice trace`: the text report.
fn print_plain(t: &Traced<'_>) {
    let a = t.a;
    print_text(
        t.table,
        &t.out,
        a.peer,
        t.inbound.as_deref(),
        t.att.originating,
        &a.from,
    );
    outln!("sender filter: {}", t.sender);
    if let Some(l) = auth_line(a, t.cfg) {
        outln!("{l}");
    }
    for l in &t.sender_auth.lines {
        outln!("{l}");
    }
    for (to, (c, v)) in a.to.iter().zip(t.filtered.iter()) {
        outln!("recipient filter <{to}>: {}", render::rcpt_check_words(c));
        if let Some(v) = v {
            outln!(
                "    call-ahead: {}{}: {}",
                probe_word(v.probe),
                if v.cached { " (cached)" } else { "" },
                v.detail
            );
        }
    }
    for l in &t.edge.lines {
        outln!("{l}");
    }
    if a.snapshots {
        print_snapshots(t.table, t.msg, &t.out);
    }
}

/// What the connection filter's DNS lists and rate limits and protocol
/// analysis make of the peer, for `sluice trace`.
struct EdgeTrace {
    /// `connection_filter` in `--json`.
    json: Value,
    /// `protocol_analysis` in `--json`.
    reputation: Value,
    /// The text lines.
    lines: Vec<String>,
    /// The RCPT refusal of a listed client.
    refusal: Option<String>,
}

/// Protocol analysis' current score of `peer`, asked of the running
/// daemon of `cfg` over its control socket; nothing when none runs.
fn daemon_score(edge: &mut EdgeTrace, cfg: &Config, peer: IpAddr) {
    let req = json!({ "cmd": "reputation", "ip": peer.to_string() });
    let Some(Ok(v)) = crate::shell::ops::control::request(&cfg.state_dir, &req) else {
        return;
    };
    if v["ok"] != json!(true) {
        return;
    }
    edge.reputation["score"] = v["score"].clone();
    edge.reputation["blocked_for"] = v["blocked_for"].clone();
    if let Some(last) = edge.lines.last_mut() {
        if let Some(head) = last.strip_suffix("(no running daemon: no score)") {
            let blocked = v["blocked_for"]
                .as_u64()
                .map(|s| format!(", blocked for {s}s more"))
                .unwrap_or_default();
            *last = format!("{head}(running daemon: score {}{blocked})", v["score"]);
        }
    }
}

/// Runs the connection filter's DNS lists for `peer` with real lookups
/// against `dns` (the `[dns] servers` of the config given), as the daemon
/// would at connect; rate limits and protocol analysis' score are the
/// running daemon's and only described.
fn edge_trace(t: &Table, att: &Attribution, peer: IpAddr, dns: DnsConfig) -> EdgeTrace {
    use crate::shell::smtpd::edge::{analysing, verdict, Edge, ListOutcome, ListVerdict};
    let mut lines = Vec::new();
    let exempt = if att.originating {
        Some("originating")
    } else if allowed_network(t, &runtime::ip16(peer)) {
        Some("allowed_networks")
    } else {
        None
    };
    let enabled = t.enabled(Agent::ConnectionFilter);
    let mut lists = Vec::new();
    let mut refusal = None;
    let mut decision = "no DNS list".to_string();
    if !enabled {
        decision = "disabled".into();
    } else if let Some(why) = exempt {
        decision = format!("not checked ({why})");
    } else if !t.dns_lists.is_empty() {
        let results = smol::block_on(Edge::new(dns).check_lists(t, peer));
        for r in &results {
            let (answer, outcome) = match &r.outcome {
                ListOutcome::Listed(a) => (Some(a.to_string()), "listed".to_string()),
                ListOutcome::NotListed => (None, "not listed".to_string()),
                ListOutcome::Failed(e) => (None, format!("lookup failed, fail-open ({e})")),
            };
            let kind = if r.allow { "allow list" } else { "block list" };
            lines.push(format!(
                "OnConnect connection_filter: {kind} {} asked {}: {outcome}{}",
                r.zone,
                r.query,
                answer
                    .as_deref()
                    .map(|a| format!(" ({a})"))
                    .unwrap_or_default()
            ));
            lists.push(json!({ "zone": r.zone, "allow": r.allow, "query": r.query, "answer": answer, "outcome": outcome }));
        }
        decision = match verdict(t, peer, &results) {
            ListVerdict::Pass => "pass".into(),
            ListVerdict::Allowed(z) => format!("allow-listed by {z}"),
            ListVerdict::Blocked { zone, reply } => {
                refusal = Some(reply.to_string());
                format!("refused at RCPT by {zone}: {reply}")
            }
        };
    }
    lines.push(format!("OnRcptCommand connection_filter: {decision}"));
    let r = t.rate_limits;
    let rep = t.reputation;
    let on = analysing(t);
    lines.push(format!(
        "protocol_analysis: {}",
        if on {
            format!(
                "on, threshold {}, block_for {}s (no running daemon: no score)",
                rep.threshold, rep.block_for
            )
        } else {
            "off".into()
        }
    ));
    EdgeTrace {
        json: json!({
            "enabled": enabled, "exempt": exempt, "lists": lists, "decision": decision,
            "rate_limits": { "connections_per_minute": r.connections_per_minute, "messages_per_minute": r.messages_per_minute },
        }),
        reputation: json!({ "enabled": on, "threshold": rep.threshold, "block_for": rep.block_for, "score": null }),
        lines,
        refusal,
    }
}

/// The recipient filter's RCPT-time decision for each recipient, as the
/// daemon makes it; call-ahead really asks the next hop (there is no cache
/// across traces); the directory is the one the trace runs with.
fn filter_recipients(
    t: &Table,
    att: &Attribution,
    rcpts: &[&[u8]],
    directory: Option<&Directory>,
    cfg: Option<&Config>,
) -> Vec<(RcptCheck, Option<Verified>)> {
    let mut verifier: Option<Result<Verifier, String>> = None;
    let mut out = Vec::new();
    for r in rcpts {
        let known = directory.map(|d| d.lookup(r).is_some());
        let mut check = recipient_check(t, att, r, known, None);
        let mut asked = None;
        if let RcptCheck::Ask(c) = check {
            let answer = match verifier.get_or_insert_with(|| trace_verifier(cfg)) {
                Ok(v) => smol::block_on(v.check(t, c, r)),
                Err(e) => Verified {
                    probe: Probe::Failed,
                    cached: false,
                    detail: e.clone(),
                },
            };
            check = recipient_check(t, att, r, known, Some(answer.probe));
            asked = Some(answer);
        }
        out.push((check, asked));
    }
    out
}

/// A call-ahead verifier from the config's `[dns]` and `ca` (defaults
/// without a config).
fn trace_verifier(cfg: Option<&Config>) -> Result<Verifier, String> {
    let (helo, dns, ca) = match cfg {
        Some(c) => (c.hostname.clone(), c.dns.clone(), c.ca.clone()),
        None => ("localhost".to_string(), Default::default(), None),
    };
    let tls = crate::shell::relay::deliver::TlsClients::new(ca.as_deref())
        .or_else(|_| crate::shell::relay::deliver::TlsClients::new(None));
    let resolver = crate::shell::relay::dns::Resolver::new(dns);
    tls.map(|tls| Verifier::new(helo, resolver, tls))
        .map_err(|e| format!("TLS client setup failed: {e}"))
}

/// A call-ahead answer in a word.
fn probe_word(p: Probe) -> &'static str {
    match p {
        Probe::Valid => "valid",
        Probe::Unknown => "unknown",
        Probe::Failed => "failed",
    }
}

/// A recipient's `recipient_filter` in `--json` output.
fn filter_json(c: &RcptCheck, v: Option<&Verified>) -> Value {
    json!({
        "decision": render::rcpt_check_words(c),
        "reply": c.reason().map(|r| crate::shell::reply::OwnedReply::from(r).to_string()),
        "call_ahead": v.map(|v| json!({
            "answer": probe_word(v.probe), "cached": v.cached, "detail": v.detail,
        })),
    })
}

/// The header block before and after each agent, as text.
fn print_snapshots(t: &Table, msg: &[u8], out: &Outcome) {
    for s in snapshot_list(t, msg, out) {
        outln!(
            "\n--- before {}\n{}--- after {}\n{}",
            s["agent"].as_str().unwrap_or(""),
            s["before"].as_str().unwrap_or(""),
            s["agent"].as_str().unwrap_or(""),
            s["after"].as_str().unwrap_or("")
        );
    }
}

/// A next hop in `--json` output: `{"mx": D}`, `{"smart_hosts": [...]}` or null.
fn next_hop_json(n: &NextHop) -> Value {
    match n {
        NextHop::Mx(d) => json!({ "mx": d }),
        NextHop::SmartHosts(h) => json!({ "smart_hosts": h }),
        NextHop::None => Value::Null,
    }
}

/// `sluice trace --json`: the outcome as one JSON document.
fn to_json(
    out: &Outcome,
    t: &Table,
    peer: IpAddr,
    inbound: Option<String>,
    originating: bool,
    tls_name: Option<&str>,
    from: &str,
) -> Value {
    let recipients: Vec<Value> = out
        .recipients
        .iter()
        .map(|r| {
            json!({
                "original": r.original, "final": r.final_addr, "connector": r.connector,
                "next_hop": next_hop_json(&r.next_hop), "override": r.route,
                "override_domain": r.override_domain, "rule": r.rule, "added_by": r.added_by,
                "rejected": r.rejected, "reason": r.reason,
                "tls_certificate": r.connector.as_deref().and_then(|c| client_certificate(t, c)),
            })
        })
        .collect();
    let mut added = Vec::new();
    let mut removed = Vec::new();
    let mut renamed = Vec::new();
    let mut rewritten = Vec::new();
    for (_, e) in &out.edits {
        match e {
            HeaderEdit::Add { name, value } => added.push(json!({ "name": name, "value": value })),
            HeaderEdit::Prepend { field } => added.push(json!({ "field": field })),
            HeaderEdit::Remove { name, .. } => removed.push(json!(name)),
            HeaderEdit::Rename { from, to, .. } => renamed.push(json!({ "from": from, "to": to })),
            HeaderEdit::Address {
                field, from, to, ..
            } => rewritten.push(json!({ "name": field, "from": from, "to": to })),
            HeaderEdit::Via { connector, edit } => {
                if let HeaderEdit::Add { name, value } = &**edit {
                    added.push(json!({ "name": name, "value": value, "connector": connector }));
                }
            }
        }
    }
    json!({
        "result": out.result,
        "reply": out.reply,
        "policy_version": format!("{:016X}", t.version),
        "session": { "peer": peer.to_string(), "inbound": inbound, "originating": originating, "tls_name": tls_name },
        "sender": { "original": from, "final": out.sender },
        "recipients": recipients,
        "headers_added": added,
        "headers_removed": removed,
        "headers_renamed": renamed,
        "headers_rewritten": rewritten,
        "log": out.log,
    })
}

/// Header block before and after each agent that changed it.
fn snapshot_list(t: &Table, msg: &[u8], out: &Outcome) -> Vec<Value> {
    let mut list = Vec::new();
    let mut done: Vec<&HeaderEdit> = Vec::new();
    let mut agents: Vec<Agent> = Vec::new();
    for (a, _) in &out.edits {
        if !agents.contains(a) {
            agents.push(*a);
        }
    }
    // In the order the agents ran (events in pipeline order, agents of an
    // event by priority), whatever order their edits came in.
    agents.sort_by_key(|a| run_position(t, *a));
    let snap = |label: String, before: &[u8], after: &[u8]| {
        json!({
            "agent": label,
            "before": String::from_utf8_lossy(runtime::header_block(before)),
            "after": String::from_utf8_lossy(runtime::header_block(after)),
        })
    };
    for a in agents {
        let before = splice(msg, &done);
        let mine: Vec<&HeaderEdit> = out
            .edits
            .iter()
            .filter(|(x, _)| *x == a)
            .map(|(_, e)| e)
            .collect();
        // Edits of one connector's copy: a snapshot per copy, and the
        // later agents' snapshots go on without them.
        let mut copies: Vec<&str> = Vec::new();
        for e in &mine {
            if let HeaderEdit::Via { connector, .. } = e {
                if !copies.contains(&connector.as_str()) {
                    copies.push(connector);
                }
            }
        }
        let plain = mine.iter().any(|e| !matches!(e, HeaderEdit::Via { .. }));
        done.extend(mine.iter().filter(|e| !matches!(e, HeaderEdit::Via { .. })));
        if plain {
            let after = splice(msg, &done);
            list.push(snap(render::agent_name(a).to_string(), &before, &after));
        }
        for c in copies {
            let mut copy = done.clone();
            copy.extend(mine.iter().filter_map(|e| match e {
                HeaderEdit::Via { connector, edit } if connector == c => Some(&**edit),
                _ => None,
            }));
            let after = splice(msg, &copy);
            let label = format!("{} (the copy via connector {c})", render::agent_name(a));
            list.push(snap(label, &splice(msg, &done), &after));
        }
    }
    list
}

/// The `[[tls.client]]` name send connector `name` presents, if any.
fn client_certificate(t: &Table, name: &str) -> Option<String> {
    let c = t
        .connectors
        .iter()
        .find(|c| t.str(c.name) == name.as_bytes())?;
    c.tls_certificate
        .map(|s| String::from_utf8_lossy(t.str(s)).into_owned())
}

/// `sluice trace`: the outcome as text for the operator.
fn print_text(
    t: &Table,
    out: &Outcome,
    peer: IpAddr,
    inbound: Option<&str>,
    originating: bool,
    from: &str,
) {
    outln!(
        "session: peer {peer}, inbound connector {}, {}",
        inbound.unwrap_or("(none)"),
        if originating {
            "originating"
        } else {
            "anonymous"
        }
    );
    outln!("sender:  <{from}> -> <{}>", out.sender);
    outln!(
        "result:  {}{}",
        out.result,
        out.reply
            .as_ref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default()
    );
    for r in &out.recipients {
        let hop = match &r.next_hop {
            NextHop::Mx(d) => format!("MX {d}"),
            NextHop::SmartHosts(h) => h.join(", "),
            NextHop::None => "-".into(),
        };
        let who = if r.original.is_empty() {
            format!("(added by {})", r.added_by.clone().unwrap_or_default())
        } else {
            r.original.clone()
        };
        outln!("recipient {who} -> {}", r.final_addr);
        match &r.rejected {
            Some(rep) => outln!("    rejected: {rep}"),
            None => outln!(
                "    connector {} via {hop}{}",
                r.connector.clone().unwrap_or_else(|| "-".into()),
                r.connector
                    .as_deref()
                    .and_then(|c| client_certificate(t, c))
                    .map(|n| format!(", client certificate {n}"))
                    .unwrap_or_default()
            ),
        }
        outln!("    why: {}", r.reason);
    }
    for (a, e) in &out.edits {
        let what = match e {
            HeaderEdit::Via { connector, edit } => match &**edit {
                HeaderEdit::Add { name, value } => {
                    format!("add {name}: {value} (the copy via connector {connector})")
                }
                other => format!("{other:?} (the copy via connector {connector})"),
            },
            HeaderEdit::Add { name, value } => format!("add {name}: {value}"),
            HeaderEdit::Prepend { field } => format!("prepend {}", field.trim_end()),
            HeaderEdit::Remove { name, .. } => format!("remove {name}"),
            HeaderEdit::Rename { from, to, .. } => format!("rename {from} -> {to}"),
            HeaderEdit::Address {
                field, from, to, ..
            } => format!("{field}: {from} -> {to}"),
        };
        outln!("header ({}): {what}", render::agent_name(*a));
    }
    outln!("rule log:");
    for l in &out.log {
        outln!("  > {l}");
    }
}

/// `sluice pipeline`: events in order, agents by priority.
pub fn pipeline_command(args: &[&str], cfg: Option<&Config>) -> i32 {
    let mut rules_file = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match *a {
            "--rules" => match it.next() {
                Some(f) => rules_file = Some(PathBuf::from(f)),
                None => {
                    eprintln!("sluice: --rules needs a file");
                    return 2;
                }
            },
            other => {
                eprintln!("sluice: pipeline: unexpected argument {other:?}");
                return 2;
            }
        }
    }
    let pol = match load_rules(rules_file.as_deref(), cfg) {
        Ok(t) => t,
        Err(code) => return code,
    };
    let table: &Table = &pol.table;
    // Every event is listed, as Get-TransportPipeline does; on each, its
    // agents in the order the pipeline runs them (by priority), an agent
    // that acts on several events under each of them.
    let order = run_order(table);
    for st in STAGES {
        outln!("{st:?}");
        let acts_on = |s: &&AgentSlot| s.stage == st || ALSO_ON.contains(&(s.agent, st));
        let mut here: Vec<&AgentSlot> = order.iter().filter(acts_on).collect();
        // A stable sort: equal priorities keep the run order.
        here.sort_by_key(|s| s.priority);
        for s in here {
            let line = format!(
                "  {:>3}  {:<20}{}",
                s.priority,
                render::agent_name(s.agent),
                if s.enabled { "" } else { "  [disabled]" }
            );
            outln!("{}", line.trim_end());
        }
    }
    0
}
