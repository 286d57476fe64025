//! The daemon's control side: the control socket (a Unix socket in the
//! state directory, one JSON request and one JSON reply a line), the
//! requests `sluice` commands send over it (policy install and rollback,
//! status, the queue), and the serial upload listener, which installs what
//! it receives as `rules apply` does.

use crate::shell::directory::install::Store;
use crate::shell::policy::install::Installer;
use crate::shell::relay::queue::Queue;
use crate::shell::spool;
use serde_json::{json, Value};
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Largest request on the control socket: a directory export of the
/// largest size taken (`directory::install::MAX_EXPORT`), JSON-escaped,
/// with room to spare; a rule file is far under it.
pub const MAX_REQUEST: usize = 80 * 1024 * 1024;

/// The control socket's path in a state directory.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join("control.sock")
}

/// Answers one control request.
pub type Handler = Arc<dyn Fn(&Value) -> Value + Send + Sync>;

/// Serves the control socket of `state_dir` on a thread of its own
/// (requests are rare and an install compiles for a moment; no session
/// waits on it).
pub fn serve(state_dir: &Path, handler: Handler) -> io::Result<std::thread::JoinHandle<()>> {
    let path = socket_path(state_dir);
    let _ = fs::remove_file(&path);
    let listener = std::os::unix::net::UnixListener::bind(&path)?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?;
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let reply = answer(&conn, &handler);
                let _ = conn.write_all(format!("{reply}\n").as_bytes());
            }
        })
}

/// Reads one request line from `conn` (30 s at most, `MAX_REQUEST` bytes at
/// most) and returns the handler's reply, or the error that stopped it.
fn answer(conn: &std::os::unix::net::UnixStream, handler: &Handler) -> Value {
    let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(30)));
    let mut line = Vec::new();
    let read = BufReader::new(conn)
        .take(MAX_REQUEST as u64 + 1)
        .read_until(b'\n', &mut line);
    match read {
        Ok(_) if line.len() > MAX_REQUEST => {
            json!({ "ok": false, "errors": ["request too large"] })
        }
        Ok(_) => match serde_json::from_slice::<Value>(&line) {
            Ok(req) => handler(&req),
            Err(e) => json!({ "ok": false, "errors": [format!("bad request: {e}")] }),
        },
        Err(e) => json!({ "ok": false, "errors": [e.to_string()] }),
    }
}

/// Sends one request to the daemon's control socket; `None` when no daemon
/// listens there.
pub fn request(state_dir: &Path, req: &Value) -> Option<Result<Value, String>> {
    let mut s = std::os::unix::net::UnixStream::connect(socket_path(state_dir)).ok()?;
    let mut run = || -> Result<Value, String> {
        s.write_all(format!("{req}\n").as_bytes())
            .map_err(|e| e.to_string())?;
        let mut line = Vec::new();
        BufReader::new(&s)
            .read_until(b'\n', &mut line)
            .map_err(|e| e.to_string())?;
        serde_json::from_slice(&line).map_err(|e| format!("bad reply from the daemon: {e}"))
    };
    Some(run())
}

/// The control socket's requests: policy commands (install) and queue
/// commands (`queue_state`, `queue_flush`, `queue_retry`, `queue_delete`
/// with an `id`).
pub fn control_handler(inst: Arc<Installer>, dir: Arc<Store>, queue: Arc<Queue>) -> Handler {
    Arc::new(move |req: &Value| {
        let id = req["id"].as_str().and_then(spool::parse_id);
        match (req["cmd"].as_str(), id) {
            (Some("queue_state"), _) => queue.inspect(),
            (Some("queue_flush"), _) => {
                queue.flush();
                json!({ "ok": true, "queued": queue.len() })
            }
            (Some("queue_retry"), Some(id)) => match queue.retry(id) {
                true => json!({ "ok": true }),
                false => json!({ "ok": false, "errors": ["no such message in the queue"] }),
            },
            (Some("queue_delete"), Some(id)) => match smol::block_on(queue.delete(id)) {
                Ok(true) => json!({ "ok": true }),
                Ok(false) => {
                    json!({ "ok": false, "errors": ["no such message in the queue, or it is being delivered"] })
                }
                Err(e) => json!({ "ok": false, "errors": [e] }),
            },
            (Some("queue_retry" | "queue_delete"), None) => {
                json!({ "ok": false, "errors": ["a queue id is needed"] })
            }
            (Some("directory_apply"), _) => directory_apply(&dir, req),
            (Some("status"), _) => {
                let mut s = policy_request(&inst, req);
                s["directory"] = dir.status();
                s
            }
            _ => policy_request(&inst, req),
        }
    })
}

/// The policy requests (`apply`, `rollback`, `status`): what the installer
/// answers.
fn policy_request(inst: &Installer, req: &Value) -> Value {
    let via = req["via"].as_str().unwrap_or("control socket").to_string();
    match req["cmd"].as_str() {
        Some("apply") => match req["source"].as_str() {
            Some(src) => match inst.apply_text(src, &via) {
                Ok(a) => {
                    json!({ "ok": true, "version": format!("{:016X}", a.version), "warnings": a.warnings })
                }
                Err(errors) => json!({ "ok": false, "errors": errors }),
            },
            None => json!({ "ok": false, "errors": ["apply needs \"source\""] }),
        },
        Some("rollback") => match inst.rollback(&via) {
            Ok(a) => {
                json!({ "ok": true, "version": format!("{:016X}", a.version), "warnings": [] })
            }
            Err(e) => json!({ "ok": false, "errors": [e] }),
        },
        Some("status") => {
            let mut s = inst.status();
            s["ok"] = true.into();
            s["agents"] = super::counters::snapshot();
            s["metrics"] = super::metrics::snapshot();
            s
        }
        _ => json!({ "ok": false, "errors": ["unknown command"] }),
    }
}

/// `directory_apply` with `source` (an LDIF or CSV export) and `via`:
/// builds and installs it; the counts, or the error naming the line.
fn directory_apply(dir: &Store, req: &Value) -> Value {
    let via = req["via"].as_str().unwrap_or("control socket");
    match req["source"].as_str() {
        Some(src) => match dir.apply_text(src, via) {
            Ok(a) => json!({
                "ok": true,
                "version": format!("{:016X}", a.version),
                "addresses": a.addresses,
                "entries": a.entries,
                "report": a.report(),
            }),
            Err(errors) => json!({ "ok": false, "errors": errors }),
        },
        None => json!({ "ok": false, "errors": ["directory_apply needs \"source\""] }),
    }
}

/// Starts the serial upload listener: a rule file is applied as `rules
/// apply` does, a directory export as `directory apply` does.
pub fn serve_uploads(
    dev: PathBuf,
    baud: u32,
    inst: Arc<Installer>,
    dir: Arc<Store>,
) -> Result<(), String> {
    use crate::shell::ops::upload::FileKind;
    let apply: crate::shell::ops::upload::ApplyFn =
        Arc::new(move |kind: FileKind, text: &str, via: &str| match kind {
            FileKind::Rules => match inst.apply_text(text, via) {
                Ok(a) => Ok(format!(
                    "installed policy version {:016X}{}",
                    a.version,
                    a.warnings
                        .iter()
                        .map(|w| format!("\n{w}"))
                        .collect::<String>()
                )),
                Err(errs) => Err(errs.join("\n")),
            },
            FileKind::Directory => dir
                .apply_text(text, via)
                .map(|a| a.report())
                .map_err(|errs| errs.join("\n")),
        });
    std::thread::Builder::new()
        .name("serial-upload".into())
        .spawn(move || {
            if let Err(e) = crate::shell::ops::upload::serve_serial(&dev, baud, apply) {
                crate::shell::ops::log::warn(format_args!(
                    "serial upload on {}: {e}",
                    dev.display()
                ));
            }
        })
        .map(|_| ())
        .map_err(|e| format!("serial upload thread: {e}"))
}
