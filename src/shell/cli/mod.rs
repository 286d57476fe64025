//! The operator's command line: `run`, `config check`, `queue`, `rules`,
//! `directory`, `auth`, `status`, `pipeline`, `trace`, `help` (the usage text lists
//! them all).

mod auth;
mod dkim;

use crate::shell::config::Config;
use crate::shell::ops::upload::FileKind;
use crate::shell::spool;
use std::io::Write;
use std::path::PathBuf;

const USAGE: &str = "\
usage: sluice <command> [--config FILE]

  run                          serve SMTP (no --config: embedded default,
                               127.0.0.1:2525, data under ./sluice-data/)
  queue list [--json]          per recipient: state, attempts, next attempt,
                               reason; from the running daemon's queue, or
                               the spool files when no daemon answers
  queue show ID [--json|--raw] one message: envelope, states and content
  queue retry ID | delete ID | flush
                               ask the running daemon to retry now, drop a
                               message (no bounce), or retry everything
  config check [FILE]          check the appliance config (FILE, else
                               --config, else the embedded default): print
                               it with every default filled in, or each
                               error as FILE:LINE:COL: message
  rules check FILE             compile a rule file: sizes, warnings, errors
  rules apply FILE|-           install it in the running daemon, atomically
  rules rollback               go back to the previous policy
  rules send --serial DEV [--baud N] FILE
                               upload a rule file over a serial line
  directory check FILE         read a directory export (LDIF or CSV): counts,
                               or the first error as FILE:LINE:COL
  directory apply FILE|-       install it (the running daemon's, or the state
                               directory's when no daemon runs), atomically
  directory send --serial DEV [--baud N] FILE
                               upload a directory export over a serial line
  status [--json]              the active and previous policies, the
                               installed directory
  pipeline [--rules FILE]      events and the agents on each, by priority
  trace MESSAGE.eml --from A --to B [--to C ...] [--peer IP] [--tls-name N]
        [--auth LOGIN] [--helo NAME | --auth-results \"spf=pass ...\"]
        [--rules FILE] [--directory EXPORT] [--snapshots] [--milters] [--json]
                               run the policy offline: decisions + rule log
                               (--helo: with the sender authentication checks)
  auth verify MESSAGE.eml --ip IP --helo NAME --from ADDR [--json]
                               SPF, DKIM and DMARC of a message with the
                               config's resolver: the Authentication-Results
                               field it would get (or JSON)
  dkim keygen --domain D --selector S [--type ed25519|rsa] [--bits 2048]
        [--out FILE]           write a new DKIM signing key (mode 0600) and
                               print the DNS TXT record to publish
  auth passwd [--scheme S] [--user NAME]
                               read a password (terminal or stdin), print
                               its passwd-file hash ({ARGON2ID} by default;
                               SHA512-CRYPT, BLF-CRYPT)
  auth check FILE              check a passwd file: users, or the first bad
                               line as FILE:LINE:COL
  auth bench [--scheme S] [--count N] [--m-kib K --t T]
                               time one password check at the default cost
  help                         this text

";

/// Set once standard output is found closed: nothing more is written.
static STDOUT_CLOSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Writes to standard output through a locked handle. When the reader has
/// gone away (`EPIPE`, as `sluice trace ... | head` does), the rest of the
/// output is dropped quietly and the command ends with its own status; any
/// other write error is reported once on standard error.
pub fn out(args: std::fmt::Arguments<'_>) {
    use std::sync::atomic::Ordering;
    if STDOUT_CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let mut o = std::io::stdout().lock();
    if let Err(e) = o.write_fmt(args).and_then(|()| o.flush()) {
        STDOUT_CLOSED.store(true, Ordering::Relaxed);
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            eprintln!("sluice: standard output: {e}");
        }
    }
}

/// Runs the command line `args` (without the program name); returns the
/// exit status: 0 ok, 1 failure (e.g. unknown queue id), 2 usage error.
pub fn main(args: &[String]) -> i32 {
    let mut config: Option<PathBuf> = None;
    let mut words: Vec<&str> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--config" | "-c" => match it.next() {
                Some(f) => config = Some(PathBuf::from(f)),
                None => return usage("--config needs a file"),
            },
            s => {
                if let Some(f) = s.strip_prefix("--config=") {
                    config = Some(PathBuf::from(f));
                } else {
                    words.push(s);
                }
            }
        }
    }
    command(&words, config)
}

/// Runs one command (`words`, the options taken out) with the config file
/// given by `--config`, if any.
fn command(words: &[&str], config: Option<PathBuf>) -> i32 {
    let cfg = || Config::load(config.as_deref());
    match words {
        ["run"] => match cfg().and_then(|c| crate::shell::smtpd::run(c, config.clone())) {
            Ok(()) => 0,
            Err(e) => fail(&e),
        },
        ["queue", rest @ ..] => match cfg() {
            Ok(c) => queue(&c, rest),
            Err(e) => fail(&e),
        },
        ["config", "check"] => config_check(config.as_deref()),
        ["config", "check", file] => config_check(Some(std::path::Path::new(file))),
        ["rules", "check", file] => {
            // Connectors' tls_certificate names are checked against the
            // config's [[tls.client]] (--config, else the embedded default).
            let certs: Option<Vec<String>> = cfg()
                .ok()
                .map(|c| c.tls_clients.iter().map(|x| x.name.clone()).collect());
            crate::shell::policy::compile::check_command(
                std::path::Path::new(file),
                certs.as_deref(),
            )
        }
        ["rules", "apply", file] => match cfg() {
            Ok(c) => rules_apply(&c, file),
            Err(e) => fail(&e),
        },
        ["rules", "rollback"] => match cfg() {
            Ok(c) => control(
                &c,
                serde_json::json!({ "cmd": "rollback", "via": via() }),
                "",
            ),
            Err(e) => fail(&e),
        },
        ["rules", "send", rest @ ..] => send(rest, FileKind::Rules),
        ["directory", "check", file] => directory_check(file),
        ["directory", "apply", file] => match cfg() {
            Ok(c) => directory_apply(&c, file),
            Err(e) => fail(&e),
        },
        ["directory", "send", rest @ ..] => send(rest, FileKind::Directory),
        ["auth", "verify", rest @ ..] => match cfg() {
            Ok(c) => auth_verify(&c, rest),
            Err(e) => fail(&e),
        },
        ["auth", rest @ ..] => auth::command(rest),
        ["dkim", rest @ ..] => dkim::command(rest),
        ["status", rest @ ..] => match cfg() {
            Ok(c) => status(&c, rest.contains(&"--json")),
            Err(e) => fail(&e),
        },
        ["trace", rest @ ..] => match cfg() {
            Ok(c) => crate::shell::policy::trace::trace_command(rest, Some(&c)),
            Err(e) => {
                eprintln!("sluice: {e}");
                2
            }
        },
        ["report", rest @ ..] => crate::shell::report::command::report_command(rest, cfg()),
        ["pipeline", rest @ ..] => match cfg() {
            Ok(c) => crate::shell::policy::trace::pipeline_command(rest, Some(&c)),
            Err(e) => fail(&e),
        },
        ["help"] | ["--help"] | ["-h"] => {
            out!("{USAGE}");
            0
        }
        ["--version"] | ["version"] => {
            outln!("sluice {}", env!("CARGO_PKG_VERSION"));
            0
        }
        [] => usage("no command"),
        [w, ..] => usage(&format!("unknown or not yet available command {w:?}")),
    }
}

/// `sluice auth verify MESSAGE.eml --ip IP --helo NAME --from ADDR [--json]`:
/// exit 0 when the checks ran (whatever they found), 2 on bad input.
fn auth_verify(cfg: &Config, args: &[&str]) -> i32 {
    let (mut file, mut ip, mut helo, mut from, mut json) = (None, None, None, None, false);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match *a {
            "--ip" => ip = it.next().and_then(|v| v.parse::<std::net::IpAddr>().ok()),
            "--helo" => helo = it.next().map(|v| v.to_string()),
            "--from" => from = it.next().map(|v| v.trim_matches(['<', '>']).to_string()),
            "--json" => json = true,
            f if file.is_none() && !f.starts_with("--") => file = Some(f.to_string()),
            other => return usage(&format!("auth verify: unexpected {other:?}")),
        }
    }
    let (Some(file), Some(ip), Some(helo), Some(from)) = (file, ip, helo, from) else {
        return usage("auth verify needs MESSAGE.eml, --ip IP, --helo NAME and --from ADDR");
    };
    let msg = match std::fs::read(&file) {
        Ok(m) => m,
        Err(e) => return usage(&format!("{file}: {e}")),
    };
    let resolver = crate::shell::relay::dns::Resolver::new(cfg.dns.clone());
    let env = crate::shell::sender_auth::Envelope {
        ip,
        helo: &helo,
        mail_from: &from,
    };
    let deadline = std::time::Duration::from_secs(20);
    let report = smol::block_on(crate::shell::sender_auth::check_message(
        &resolver,
        &cfg.hostname,
        &env,
        &msg,
        deadline,
    ));
    if json {
        outln!("{}", crate::shell::sender_auth::report_json(&report));
    } else {
        out!(
            "{}",
            crate::shell::sender_auth::results_field(&cfg.hostname, &report)
        );
    }
    0
}

/// `sluice config check [FILE]`: the effective config as TOML on standard
/// output (exit 0), or each error as `FILE:LINE:COL: message` on standard
/// error (exit 1).
fn config_check(path: Option<&std::path::Path>) -> i32 {
    match Config::check_file(path) {
        (_, Ok(c)) => {
            out!("{}", c.effective_toml());
            0
        }
        (name, Err(diags)) => {
            for d in diags {
                eprintln!("{name}:{d}");
            }
            1
        }
    }
}

fn usage(msg: &str) -> i32 {
    eprintln!("sluice: {msg}\n\n{USAGE}");
    2
}

fn fail(msg: &str) -> i32 {
    eprintln!("sluice: {msg}");
    1
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// What the running daemon's queue holds for one message.
struct LiveEntry {
    /// A delivery holds it now.
    busy: bool,
    /// Per route, the state as the queue has it.
    states: Vec<spool::RcptState>,
}

/// Where `queue list|show` got the states from.
enum Source {
    /// The running daemon answered on the control socket: its queue's
    /// entries, by id (a message it no longer holds is finished, and the
    /// spool's record of it is final).
    Daemon(std::collections::HashMap<u64, LiveEntry>),
    /// No daemon answered (why): the spool files only.
    Spool(String),
}

impl Source {
    fn word(&self) -> &'static str {
        match self {
            Source::Daemon(_) => "daemon",
            Source::Spool(_) => "spool",
        }
    }

    fn header(&self) -> String {
        match self {
            Source::Daemon(_) => "source: daemon (live queue state)".to_string(),
            Source::Spool(why) => format!("source: spool files ({why})"),
        }
    }
}

/// Asks the running daemon for its queue's state.
fn live_queue(cfg: &Config) -> Source {
    let sock = crate::shell::ops::control::socket_path(&cfg.state_dir);
    let reply = match crate::shell::ops::control::request(
        &cfg.state_dir,
        &serde_json::json!({ "cmd": "queue_state" }),
    ) {
        None => return Source::Spool(format!("no daemon listening on {}", sock.display())),
        Some(Err(e)) => return Source::Spool(format!("the daemon did not answer: {e}")),
        Some(Ok(r)) => r,
    };
    if reply["ok"].as_bool() != Some(true) {
        return Source::Spool("the daemon refused the queue_state request".to_string());
    }
    let mut live = std::collections::HashMap::new();
    for m in reply["messages"].as_array().into_iter().flatten() {
        let Some(id) = m["id"].as_str().and_then(spool::parse_id) else {
            continue;
        };
        let Ok(states) = serde_json::from_value::<Vec<spool::RcptState>>(m["states"].clone())
        else {
            continue;
        };
        let busy = m["busy"].as_bool().unwrap_or(false);
        live.insert(id, LiveEntry { busy, states });
    }
    Source::Daemon(live)
}

/// One recipient's state in detail: address, state word, attempts, next
/// attempt (Unix seconds) and the last reason or reply.
fn recipient_json(route: Option<&spool::Route>, s: &spool::RcptState) -> serde_json::Value {
    let (attempts, next, reason) = match s {
        spool::RcptState::Pending => (0, None, None),
        spool::RcptState::Deferred {
            until,
            attempts,
            reason,
        } => (*attempts, Some(*until), Some(reason.to_string())),
        spool::RcptState::Delivered { reply, .. } => (0, None, Some(reply.to_string())),
        spool::RcptState::Bounced { reason, .. } => (0, None, Some(reason.to_string())),
        spool::RcptState::Notified { reason, .. } => (0, None, Some(reason.clone())),
    };
    serde_json::json!({
        "rcpt": route.map(|r| lossy(&r.rcpt)),
        "state": state_word(s),
        "attempts": attempts,
        "next_attempt": next,
        "reason": reason,
    })
}

/// A recipient's state on one line, for the text outputs.
fn recipient_line(route: Option<&spool::Route>, s: &spool::RcptState, now: u64) -> String {
    let rcpt = route.map(|r| lossy(&r.rcpt)).unwrap_or_default();
    let detail = match s {
        spool::RcptState::Pending => String::new(),
        spool::RcptState::Deferred {
            until,
            attempts,
            reason,
        } => {
            let next = if *until <= now {
                "due now".to_string()
            } else {
                format!("next in {}", age(until - now))
            };
            format!("  ({attempts} attempt(s), {next}) {reason}")
        }
        spool::RcptState::Delivered { reply, .. } => format!("  {reply}"),
        spool::RcptState::Bounced { reason, .. } => format!("  {reason}"),
        spool::RcptState::Notified { reason, .. } => format!("  {reason}"),
    };
    format!("<{rcpt}>  {}{detail}", state_word(s))
}

/// What `queue list|show` show: the spool's messages with the daemon's
/// states laid over them, and where the states came from.
struct QueueView {
    source: Source,
    messages: Vec<spool::Stored>,
    /// Per message: a delivery holds it now (`None`: no daemon answered).
    busy: Vec<Option<bool>>,
    /// Unix seconds, for ages and next attempts.
    now: u64,
}

/// `sluice queue ...`: list and show read the queue; the other commands go
/// to the daemon.
fn queue(cfg: &Config, args: &[&str]) -> i32 {
    if !matches!(args.first(), None | Some(&"list" | &"show" | &"--json")) {
        return queue_control(cfg, args);
    }
    let view = match queue_view(cfg) {
        Ok(v) => v,
        Err(e) => return fail(&e),
    };
    match args {
        ["list"] | [] => queue_list(&view),
        ["list", "--json"] | ["--json", "list"] => {
            let v: Vec<_> = view
                .messages
                .iter()
                .zip(&view.busy)
                .map(|(m, b)| summary(&view, m, *b))
                .collect();
            outln!("{}", serde_json::Value::Array(v));
            0
        }
        ["show", rest @ ..] => queue_show(&view, rest),
        _ => queue_control(cfg, args),
    }
}

/// Reads the queue: the daemon first, then the spool. A message accepted
/// in between is in the spool (with its first states) rather than
/// missing, and one the daemon finished in between has its final states
/// in the spool.
fn queue_view(cfg: &Config) -> Result<QueueView, String> {
    let source = live_queue(cfg);
    let scan = spool::scan(&cfg.spool_dir)
        .map_err(|e| format!("spool {}: {e}", cfg.spool_dir.display()))?;
    let (messages, busy) = scan
        .messages
        .iter()
        .map(|m| {
            let mut m = m.clone();
            let busy = match &source {
                Source::Daemon(live) => match live.get(&m.id) {
                    Some(l) => {
                        if l.states.len() == m.states.len() {
                            m.states = l.states.clone();
                        }
                        Some(l.busy)
                    }
                    None => Some(false),
                },
                Source::Spool(_) => None,
            };
            (m, busy)
        })
        .unzip();
    Ok(QueueView {
        source,
        messages,
        busy,
        now: crate::shell::time::now_secs(),
    })
}

/// One message as `queue list --json` gives it.
fn summary(view: &QueueView, m: &spool::Stored, busy: Option<bool>) -> serde_json::Value {
    serde_json::json!({
        "id": spool::format_id(m.id),
        "from": lossy(&m.env.from),
        "rcpts": m.env.rcpts.iter().map(|r| lossy(r)).collect::<Vec<_>>(),
        "size": m.env.size,
        "received": m.env.received,
        "age": view.now.saturating_sub(m.env.received),
        "states": m.states.iter().map(state_word).collect::<Vec<_>>(),
        "recipients": m
            .states
            .iter()
            .enumerate()
            .map(|(i, s)| recipient_json(m.env.routes.get(i), s))
            .collect::<Vec<_>>(),
        "source": view.source.word(),
        "busy": busy,
    })
}

/// `queue list`: a line per message, a line per recipient.
fn queue_list(view: &QueueView) -> i32 {
    let now = view.now;
    outln!("{}", view.source.header());
    outln!(
        "{:<16}  {:>9}  {:>7}  sender -> recipients",
        "id",
        "size",
        "age"
    );
    for (m, b) in view.messages.iter().zip(&view.busy) {
        let rcpts: Vec<String> = m.env.rcpts.iter().map(|r| lossy(r)).collect();
        outln!(
            "{:<16}  {:>9}  {:>7}  <{}> -> {}{}",
            spool::format_id(m.id),
            m.env.size,
            age(now.saturating_sub(m.env.received)),
            lossy(&m.env.from),
            rcpts.join(", "),
            if *b == Some(true) {
                "  [in delivery]"
            } else {
                ""
            }
        );
        for (i, s) in m.states.iter().enumerate() {
            outln!("    {}", recipient_line(m.env.routes.get(i), s, now));
        }
    }
    outln!("{} message(s)", view.messages.len());
    0
}

/// `queue show ID [--json|--raw]`: one message, as text, JSON or its octets.
fn queue_show(view: &QueueView, args: &[&str]) -> i32 {
    let mut id = None;
    let mut mode = "text";
    for a in args {
        match *a {
            "--json" => mode = "json",
            "--raw" => mode = "raw",
            s => id = Some(s),
        }
    }
    let Some(id) = id else {
        return usage("queue show needs a queue id");
    };
    let found = spool::parse_id(id).and_then(|n| {
        view.messages
            .iter()
            .zip(&view.busy)
            .find(|(m, _)| m.id == n)
    });
    let Some((m, b)) = found else {
        return fail(&format!("no message {id} in the spool"));
    };
    let bytes = match m.read() {
        Ok(b) => b,
        Err(e) => return fail(&format!("reading {id}: {e}")),
    };
    match mode {
        "raw" => {
            let mut out = std::io::stdout().lock();
            match out.write_all(&bytes).and_then(|()| out.flush()) {
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
                Err(_) => return 1,
                Ok(()) => {}
            }
        }
        "json" => outln!("{}", show_json(view, m, *b, &bytes)),
        _ => show_text(view, m, *b, &bytes),
    }
    0
}

/// `queue show ID --json`: the summary plus the envelope, content,
/// stored states, routes and edits.
fn show_json(
    view: &QueueView,
    m: &spool::Stored,
    busy: Option<bool>,
    bytes: &[u8],
) -> serde_json::Value {
    let mut v = summary(view, m, busy);
    v["helo"] = lossy(&m.env.helo).into();
    v["peer"] = m.env.peer.clone().into();
    v["smtputf8"] = m.env.smtputf8.into();
    v["tls"] = m.env.tls.into();
    v["body"] = lossy(bytes).into();
    v["policy"] = format!("{:016X}", m.env.policy).into();
    v["states"] = serde_json::to_value(&m.states).unwrap_or_default();
    v["routes"] = m
        .env
        .routes
        .iter()
        .map(|r| {
            serde_json::json!({
                "original": lossy(&r.original), "rcpt": lossy(&r.rcpt),
                "connector": r.connector, "refused": r.refused,
                "next_hop": serde_json::to_value(&r.next_hop).unwrap_or_default(),
            })
        })
        .collect::<Vec<_>>()
        .into();
    v["edits"] = serde_json::to_value(&m.env.edits).unwrap_or_default();
    v
}

/// `queue show ID`: the envelope and states as lines, then the message.
fn show_text(view: &QueueView, m: &spool::Stored, busy: Option<bool>, bytes: &[u8]) {
    let now = view.now;
    outln!("{}", view.source.header());
    outln!("id:        {}", spool::format_id(m.id));
    outln!("from:      <{}>", lossy(&m.env.from));
    for r in &m.env.rcpts {
        outln!("to:        <{}>", lossy(r));
    }
    outln!("size:      {}", m.env.size);
    outln!("age:       {}", age(now.saturating_sub(m.env.received)));
    outln!("client:    {} ({})", m.env.peer, lossy(&m.env.helo));
    outln!("tls:       {}", m.env.tls);
    if busy == Some(true) {
        outln!("delivery:  in progress");
    }
    for (i, s) in m.states.iter().enumerate() {
        outln!("state:     {}", recipient_line(m.env.routes.get(i), s, now));
    }
    outln!();
    out!("{}", lossy(bytes));
}

/// `queue retry|delete|flush`: commands for the running daemon.
fn queue_control(cfg: &Config, args: &[&str]) -> i32 {
    match args {
        ["flush"] => queue_command(cfg, serde_json::json!({ "cmd": "queue_flush" })),
        ["retry", id] => queue_command(cfg, serde_json::json!({ "cmd": "queue_retry", "id": id })),
        ["delete", id] => {
            queue_command(cfg, serde_json::json!({ "cmd": "queue_delete", "id": id }))
        }
        _ => usage("queue: list [--json] | show ID [--json|--raw] | retry ID | delete ID | flush"),
    }
}

fn age(s: u64) -> String {
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

/// How an install came, for `sluice status`: over SSH (from where) or local.
fn via() -> String {
    match std::env::var("SSH_CONNECTION") {
        Ok(conn) => format!("ssh from {}", conn.split_whitespace().next().unwrap_or("?")),
        Err(_) => "command line".to_string(),
    }
}

/// Sends a control request and prints the outcome, diagnostics prefixed
/// with `prefix` (the file name): 0 ok, 1 refused, 2 no daemon.
fn control(cfg: &Config, req: serde_json::Value, prefix: &str) -> i32 {
    let sock = crate::shell::ops::control::socket_path(&cfg.state_dir);
    match crate::shell::ops::control::request(&cfg.state_dir, &req) {
        None => {
            eprintln!("sluice: no daemon listening on {}", sock.display());
            2
        }
        Some(Err(e)) => fail(&e),
        Some(Ok(reply)) => {
            for w in reply["warnings"].as_array().into_iter().flatten() {
                eprintln!("{prefix}{}", w.as_str().unwrap_or(""));
            }
            if reply["ok"].as_bool() == Some(true) {
                outln!(
                    "installed policy version {}",
                    reply["version"].as_str().unwrap_or("?")
                );
                0
            } else {
                for e in reply["errors"].as_array().into_iter().flatten() {
                    eprintln!("{prefix}{}", e.as_str().unwrap_or(""));
                }
                eprintln!("sluice: nothing changed; the running policy is as it was");
                1
            }
        }
    }
}

/// The text of FILE, or of standard input for `-`; the error as text.
fn read_input(file: &str) -> Result<String, String> {
    if file == "-" {
        let mut t = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut t)
            .map_err(|e| format!("standard input: {e}"))?;
        Ok(t)
    } else {
        std::fs::read_to_string(file).map_err(|e| format!("{file}: {e}"))
    }
}

fn rules_apply(cfg: &Config, file: &str) -> i32 {
    let (text, name) = match read_input(file) {
        Ok(t) => (t, file.to_string()),
        Err(e) => return fail(&e),
    };
    let req = serde_json::json!({ "cmd": "apply", "source": text, "via": via() });
    control(cfg, req, &format!("{name}:"))
}

/// `sluice directory check FILE`: the counts and the table's size, or the
/// first error as `FILE:LINE:COL: error: ...` (exit 1).
fn directory_check(file: &str) -> i32 {
    let text = match read_input(file) {
        Ok(t) => t,
        Err(e) => return fail(&e),
    };
    match crate::shell::directory::Directory::from_export(&text) {
        Ok(d) => {
            let n = d.addresses().max(1);
            outln!(
                "{file}: {} addresses of {} entries, version {:016X}; table {} octets ({:.1} per address)",
                d.addresses(),
                d.entries(),
                d.version(),
                d.bytes().len(),
                d.bytes().len() as f64 / n as f64
            );
            0
        }
        Err(e) => {
            eprintln!("{file}:{e}");
            1
        }
    }
}

/// `sluice directory apply FILE|-`: installs the export in the running
/// daemon over the control socket; with no daemon, in the state directory
/// (the daemon loads it at start). 0 installed, 1 refused.
fn directory_apply(cfg: &Config, file: &str) -> i32 {
    let text = match read_input(file) {
        Ok(t) => t,
        Err(e) => return fail(&e),
    };
    let req = serde_json::json!({ "cmd": "directory_apply", "source": text, "via": via() });
    let reply = match crate::shell::ops::control::request(&cfg.state_dir, &req) {
        Some(Ok(r)) => r,
        Some(Err(e)) => return fail(&e),
        None => match crate::shell::directory::install::install(&cfg.state_dir, &text, &via()) {
            Ok((_, a)) => {
                serde_json::json!({ "ok": true, "report": format!("{} (no daemon running: in the state directory, loaded at start)", a.report()) })
            }
            Err(errors) => serde_json::json!({ "ok": false, "errors": errors }),
        },
    };
    if reply["ok"].as_bool() == Some(true) {
        outln!("{}", reply["report"].as_str().unwrap_or("installed"));
        return 0;
    }
    for e in reply["errors"].as_array().into_iter().flatten() {
        eprintln!("{file}:{}", e.as_str().unwrap_or(""));
    }
    eprintln!("sluice: nothing changed; the installed directory is as it was");
    1
}

/// `rules send` and `directory send`: `--serial DEV [--baud N] FILE`.
fn send(args: &[&str], kind: FileKind) -> i32 {
    let mut dev = None;
    let mut baud = 115_200u32;
    let mut file = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match *a {
            "--serial" => dev = it.next().copied(),
            "--baud" => match it.next().and_then(|b| b.parse().ok()) {
                Some(b) => baud = b,
                None => return usage("--baud needs a number"),
            },
            f => file = Some(f),
        }
    }
    match (dev, file) {
        (Some(d), Some(f)) => crate::shell::ops::upload::send_command(
            std::path::Path::new(d),
            baud,
            std::path::Path::new(f),
            kind,
        ),
        _ => usage(match kind {
            FileKind::Rules => "rules send --serial DEV [--baud N] FILE",
            FileKind::Directory => "directory send --serial DEV [--baud N] FILE",
        }),
    }
}

fn status(cfg: &Config, json_out: bool) -> i32 {
    let v = match crate::shell::ops::control::request(
        &cfg.state_dir,
        &serde_json::json!({ "cmd": "status" }),
    ) {
        Some(Ok(v)) => v,
        Some(Err(e)) => return fail(&e),
        None => {
            let mut v = crate::shell::policy::install::state_status(&cfg.state_dir);
            v["directory"] = crate::shell::directory::install::state_status(&cfg.state_dir);
            v
        }
    };
    if json_out {
        outln!("{v}");
        return 0;
    }
    let running = v["running"].as_bool() == Some(true);
    outln!(
        "daemon:   {}",
        if running { "running" } else { "not running" }
    );
    for (label, key) in [("policy:", "policy"), ("previous:", "previous")] {
        let p = &v[key];
        if p.is_null() {
            outln!("{label:<9} none");
        } else {
            outln!(
                "{label:<9} version {} installed {} via {}",
                p["version"].as_str().unwrap_or("?"),
                p["installed_at"]
                    .as_u64()
                    .map(crate::shell::time::utc)
                    .unwrap_or_default(),
                p["via"].as_str().unwrap_or("?")
            );
        }
    }
    print_directory(&v["directory"]);
    print_agent_counts(&v["agents"]);
    0
}

/// The installed directory's line of `sluice status`.
fn print_directory(v: &serde_json::Value) {
    let d = &v["directory"];
    if d.is_null() {
        outln!("directory: none");
        return;
    }
    outln!(
        "directory: version {} {} addresses {} entries installed {} via {}",
        d["version"].as_str().unwrap_or("?"),
        d["addresses"].as_u64().unwrap_or(0),
        d["entries"].as_u64().unwrap_or(0),
        d["installed_at"]
            .as_u64()
            .map(crate::shell::time::utc)
            .unwrap_or_default(),
        d["via"].as_str().unwrap_or("?")
    );
}

/// The agents that acted since the daemon started, a line each (agents
/// with nothing counted are left out).
fn print_agent_counts(agents: &serde_json::Value) {
    let Some(agents) = agents.as_object() else {
        return;
    };
    for (name, row) in agents {
        let counts: Vec<String> = row
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(_, n)| n.as_u64().unwrap_or(0) > 0)
            .map(|(t, n)| format!("{t} {n}"))
            .collect();
        if !counts.is_empty() {
            outln!("agent:    {name}: {}", counts.join(", "));
        }
    }
}

/// One word for a recipient's state, as `queue list` shows it.
fn state_word(s: &spool::RcptState) -> &'static str {
    match s {
        spool::RcptState::Pending => "pending",
        spool::RcptState::Deferred { .. } => "deferred",
        spool::RcptState::Delivered { .. } => "delivered",
        spool::RcptState::Bounced { .. } => "bounced",
        spool::RcptState::Notified { .. } => "bounced",
    }
}

/// A queue command for the running daemon: 0 done, 1 refused, 2 no daemon.
fn queue_command(cfg: &Config, req: serde_json::Value) -> i32 {
    match crate::shell::ops::control::request(&cfg.state_dir, &req) {
        None => {
            eprintln!(
                "sluice: no daemon listening on {}",
                crate::shell::ops::control::socket_path(&cfg.state_dir).display()
            );
            2
        }
        Some(Err(e)) => fail(&e),
        Some(Ok(r)) if r["ok"].as_bool() == Some(true) => 0,
        Some(Ok(r)) => {
            for e in r["errors"].as_array().into_iter().flatten() {
                eprintln!("sluice: {}", e.as_str().unwrap_or(""));
            }
            1
        }
    }
}
