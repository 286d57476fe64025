//! Installing policies: the state directory, the atomic swap, rollback,
//! and the control socket that `sluice rules apply`, `rules rollback` and
//! `status` talk to.
//!
//! The state directory holds the active policy (`policy.blob`, its source
//! `policy.toml`, and `policy.json`: version, when, how) and the one before
//! it (`previous.*`). Files are written to a temporary name, synced, renamed
//! into place, and the directory synced: a power cut leaves either the old
//! or the new policy, never half of one. A daemon starts on `policy.blob`
//! when present. Sessions hold the policy they began with (an `Arc`); an
//! install swaps the pointer for new sessions only.

use super::config::Config;
use super::policy::{Policy, DEFAULT_RULES};
use super::rules;
use crate::engine::policy::Table;
use serde_json::{json, Value};
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

/// Largest request on the control socket (a rule file with a few thousand
/// rewrite entries is well under it).
pub const MAX_REQUEST: usize = 8 * 1024 * 1024;

/// The control socket's path in a state directory.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join("control.sock")
}

/// A successful install.
#[derive(Debug, Clone)]
pub struct Applied {
    /// The new policy's version.
    pub version: u64,
    /// The compiler's warnings, as `LINE:COL: warning: ...`.
    pub warnings: Vec<String>,
}

/// The daemon's policies: the active one, and how to replace it.
pub struct Installer {
    state_dir: PathBuf,
    current: RwLock<Arc<Policy>>,
    /// Serialises installs and rollbacks.
    lock: Mutex<()>,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Decodes a blob on a thread with a large stack (the table passes through
/// the stack by value in debug builds).
pub fn decode_blob(blob: Vec<u8>) -> Result<Policy, String> {
    std::thread::Builder::new()
        .stack_size(32 << 20)
        .spawn(move || {
            Table::from_blob(&blob)
                .map_err(|e| format!("{e:?}"))
                .and_then(|t| Policy::new(Box::new(t)).map_err(|e| format!("{e:?}")))
        })
        .map_err(|e| e.to_string())?
        .join()
        .map_err(|_| "decoding the policy failed".to_string())?
}

/// Writes `data` to `dir/name` atomically: temporary file, sync, rename.
fn write_atomic(dir: &Path, name: &str, data: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, dir.join(name))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

fn compile(source: &str) -> Result<(Policy, Vec<u8>, Vec<String>), Vec<String>> {
    let c = rules::compile(source).map_err(|diags| {
        diags
            .iter()
            .map(|d| format!("{}:{}: error: {}", d.line, d.col, d.message))
            .collect::<Vec<_>>()
    })?;
    let warnings = c
        .warnings
        .iter()
        .map(|d| format!("{}:{}: warning: {}", d.line, d.col, d.message))
        .collect();
    let blob = c.blob;
    let policy =
        Policy::new(c.table).map_err(|e| vec![format!("the compiled policy is invalid: {e:?}")])?;
    Ok((policy, blob, warnings))
}

impl Installer {
    /// Opens the state directory and the policy to start on: the installed
    /// one, else the config's rule file (or the embedded default), which is
    /// then installed.
    pub fn open(cfg: &Config) -> Result<Installer, String> {
        let dir = cfg.state_dir.clone();
        fs::create_dir_all(&dir).map_err(|e| format!("state {}: {e}", dir.display()))?;
        let _ = fs::set_permissions(&dir, fs::Permissions::from_mode(0o700));
        if let Ok(blob) = fs::read(dir.join("policy.blob")) {
            match decode_blob(blob) {
                Ok(p) => {
                    return Ok(Installer {
                        state_dir: dir,
                        current: RwLock::new(Arc::new(p)),
                        lock: Mutex::new(()),
                    })
                }
                Err(e) => super::log::warn(format_args!(
                    "state {}: the installed policy does not load ({e}); starting from the config's rules",
                    dir.display()
                )),
            }
        }
        let (source, name, via) = match &cfg.rules {
            Some(p) => (
                fs::read_to_string(p).map_err(|e| format!("rules {}: {e}", p.display()))?,
                p.display().to_string(),
                format!("config {}", p.display()),
            ),
            None => (
                DEFAULT_RULES.to_string(),
                "(embedded default rules)".into(),
                "embedded default".into(),
            ),
        };
        let (policy, blob, _) = compile(&source).map_err(|errs| {
            errs.iter()
                .map(|e| format!("{name}:{e}"))
                .collect::<Vec<_>>()
                .join("\n")
        })?;
        let inst = Installer {
            state_dir: dir,
            current: RwLock::new(Arc::new(policy)),
            lock: Mutex::new(()),
        };
        let version = inst.current().table.version;
        inst.write_state(&source, &blob, version, &via)
            .map_err(|e| format!("state {}: {e}", inst.state_dir.display()))?;
        Ok(inst)
    }

    /// The active policy (a session keeps this `Arc` to its end).
    pub fn current(&self) -> Arc<Policy> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn swap(&self, p: Policy) {
        let p = Arc::new(p);
        match self.current.write() {
            Ok(mut g) => *g = p,
            Err(poisoned) => *poisoned.into_inner() = p,
        }
    }

    /// Writes the new state: current files become `previous.*`, the new
    /// ones `policy.*`; each file is written atomically, then the directory
    /// is synced.
    fn write_state(&self, source: &str, blob: &[u8], version: u64, via: &str) -> io::Result<()> {
        let d = &self.state_dir;
        let meta =
            json!({ "version": format!("{version:016X}"), "installed_at": now(), "via": via });
        // Stage the new files first, so a failure leaves the old state whole.
        write_atomic(d, "incoming.blob", blob)?;
        write_atomic(d, "incoming.toml", source.as_bytes())?;
        write_atomic(d, "incoming.json", meta.to_string().as_bytes())?;
        for ext in ["blob", "toml", "json"] {
            let cur = d.join(format!("policy.{ext}"));
            if cur.exists() {
                fs::rename(&cur, d.join(format!("previous.{ext}")))?;
            }
        }
        for ext in ["blob", "toml", "json"] {
            fs::rename(
                d.join(format!("incoming.{ext}")),
                d.join(format!("policy.{ext}")),
            )?;
        }
        sync_dir(d)
    }

    /// Checks and compiles `source`, then installs it atomically: written
    /// to the state directory, then swapped in for new sessions. A file
    /// that does not compile changes nothing.
    pub fn apply_text(&self, source: &str, via: &str) -> Result<Applied, Vec<String>> {
        let (policy, blob, warnings) = compile(source)?;
        let version = policy.table.version;
        let _g = self
            .lock
            .lock()
            .map_err(|_| vec!["install lock poisoned".to_string()])?;
        self.write_state(source, &blob, version, via)
            .map_err(|e| vec![format!("state {}: {e}", self.state_dir.display())])?;
        self.swap(policy);
        super::log::event(
            super::log::Kind::Policy,
            None,
            None,
            format_args!("version {version:016X} installed via {via}"),
        );
        Ok(Applied { version, warnings })
    }

    /// Goes back to the previous policy (which then becomes the current one,
    /// and the current one the previous).
    pub fn rollback(&self, via: &str) -> Result<Applied, String> {
        let _g = self
            .lock
            .lock()
            .map_err(|_| "install lock poisoned".to_string())?;
        let d = &self.state_dir;
        let blob = fs::read(d.join("previous.blob"))
            .map_err(|_| "no previous policy to roll back to".to_string())?;
        let policy = decode_blob(blob)?;
        let version = policy.table.version;
        // Swap the file sets through temporary names, then sync.
        for ext in ["blob", "toml", "json"] {
            let (cur, prev, tmp) = (
                d.join(format!("policy.{ext}")),
                d.join(format!("previous.{ext}")),
                d.join(format!("swap.{ext}")),
            );
            let step = || -> io::Result<()> {
                if cur.exists() {
                    fs::rename(&cur, &tmp)?;
                }
                if prev.exists() {
                    fs::rename(&prev, &cur)?;
                }
                if tmp.exists() {
                    fs::rename(&tmp, &prev)?;
                }
                Ok(())
            };
            step().map_err(|e| format!("state {}: {e}", d.display()))?;
        }
        // Record how the now-current policy was installed.
        let meta = json!({ "version": format!("{version:016X}"), "installed_at": now(), "via": format!("rollback, {via}") });
        write_atomic(d, "policy.json", meta.to_string().as_bytes()).map_err(|e| e.to_string())?;
        sync_dir(d).map_err(|e| e.to_string())?;
        self.swap(policy);
        super::log::event(
            super::log::Kind::Policy,
            None,
            None,
            format_args!("version {version:016X} restored by rollback via {via}"),
        );
        Ok(Applied {
            version,
            warnings: Vec::new(),
        })
    }

    /// The active and previous policies, as `sluice status` shows them.
    pub fn status(&self) -> Value {
        let mut v = state_status(&self.state_dir);
        v["running"] = true.into();
        v["active_version"] = format!("{:016X}", self.current().table.version).into();
        v
    }
}

/// What the state directory says (works with the daemon stopped).
pub fn state_status(state_dir: &Path) -> Value {
    let read = |name: &str| -> Value {
        fs::read_to_string(state_dir.join(name))
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or(Value::Null)
    };
    json!({
        "state_dir": state_dir.display().to_string(),
        "policy": read("policy.json"),
        "previous": read("previous.json"),
        "running": false,
    })
}

/// Handles one control request (a JSON object) and returns the reply.
pub fn handle(inst: &Installer, req: &Value) -> Value {
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
            s
        }
        _ => json!({ "ok": false, "errors": ["unknown command"] }),
    }
}

/// Answers one control request.
pub type Handler = Arc<dyn Fn(&Value) -> Value + Send + Sync>;

/// Serves the control socket of `state_dir` on a thread of its own
/// (requests are rare and an install compiles for a moment; no session
/// waits on it).
pub fn serve_control(
    state_dir: &Path,
    handler: Handler,
) -> io::Result<std::thread::JoinHandle<()>> {
    let path = socket_path(state_dir);
    let _ = fs::remove_file(&path);
    let listener = std::os::unix::net::UnixListener::bind(&path)?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?;
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(30)));
                let mut line = Vec::new();
                let read = BufReader::new(&conn)
                    .take(MAX_REQUEST as u64 + 1)
                    .read_until(b'\n', &mut line);
                let reply = match read {
                    Ok(_) if line.len() > MAX_REQUEST => {
                        json!({ "ok": false, "errors": ["request too large"] })
                    }
                    Ok(_) => match serde_json::from_slice::<Value>(&line) {
                        Ok(req) => handler(&req),
                        Err(e) => json!({ "ok": false, "errors": [format!("bad request: {e}")] }),
                    },
                    Err(e) => json!({ "ok": false, "errors": [e.to_string()] }),
                };
                let _ = conn.write_all(format!("{reply}\n").as_bytes());
            }
        })
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
