//! Installing a directory: the same generations, pointer and commit point
//! as the policy (`policy::install`), in a place of its own,
//! `STATE_DIR/directory/`: `gen-N/directory.bin` (the table) and
//! `state.json` naming the active and previous generations with their
//! version, address and entry counts, and when and how they came.
//!
//! An install reads and builds the export first (a bad file changes
//! nothing), writes the new generation and syncs it, then renames the
//! pointer over the old one: a power cut leaves the old directory or the
//! new one. The daemon swaps its `Arc` for new sessions; a session keeps
//! the directory it began with. With the daemon stopped, `sluice directory
//! apply` installs into the state directory itself and the daemon loads it
//! at start; an exclusive `flock` on `directory/.lock` keeps the two from
//! interleaving.

use super::Directory;
use crate::shell::policy::install::{collect_garbage, commit_pointer, read_pointer, stage_files};
use crate::shell::time::now_secs as now;
use serde_json::{json, Value};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

/// The directory's place in the state directory.
pub const SUBDIR: &str = "directory";
/// The table's file name in a generation.
const TABLE: &str = "directory.bin";
/// Largest export taken (over the control socket or the serial line): a
/// 262,144-address LDIF export with its other attributes is about 40 MiB.
pub const MAX_EXPORT: usize = 64 * 1024 * 1024;

/// A successful install.
#[derive(Debug, Clone, Copy)]
pub struct Applied {
    /// The new table's version.
    pub version: u64,
    /// Its addresses.
    pub addresses: usize,
    /// The directory objects they came from.
    pub entries: u32,
}

impl Applied {
    /// The one-line report of `directory apply`.
    pub fn report(&self) -> String {
        format!(
            "installed directory version {:016X}: {} addresses of {} entries",
            self.version, self.addresses, self.entries
        )
    }
}

/// The directory's place in `state_dir`.
pub fn dir_of(state_dir: &Path) -> PathBuf {
    state_dir.join(SUBDIR)
}

/// The directory a pointer entry names, read and checked.
fn load_entry(dir: &Path, entry: &Value) -> Result<Directory, String> {
    let gen = entry["dir"]
        .as_str()
        .filter(|g| g.starts_with("gen-") && !g.contains('/'))
        .ok_or_else(|| "no generation named".to_string())?;
    let blob = fs::read(dir.join(gen).join(TABLE)).map_err(|e| format!("{gen}: {e}"))?;
    Directory::from_blob(blob).map_err(|e| format!("{gen}: {e}"))
}

/// The installed directory: the active generation, else the previous one
/// (with a warning); `None` when nothing is installed or nothing loads.
fn load_installed(dir: &Path) -> Option<Directory> {
    let pointer = read_pointer(dir);
    if !pointer.is_object() {
        return None;
    }
    let warn = |what: &str| {
        crate::shell::ops::log::warn(format_args!("directory {}: {what}", dir.display()))
    };
    match load_entry(dir, &pointer["directory"]) {
        Ok(d) => return Some(d),
        Err(e) => warn(&format!("the installed directory does not load ({e})")),
    }
    match load_entry(dir, &pointer["previous"]) {
        Ok(d) => {
            warn("starting on the previous directory");
            Some(d)
        }
        Err(_) => {
            warn("no directory loads; recipients are not checked against one");
            None
        }
    }
}

/// Takes the lock that serialises installs (daemon and command line): an
/// exclusive `flock` on `dir/.lock`, held while the returned file is open.
fn lock(dir: &Path) -> std::io::Result<fs::File> {
    fs::create_dir_all(dir)?;
    let f = fs::File::create(dir.join(".lock"))?;
    rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)?;
    Ok(f)
}

/// Builds `text` and installs it in `state_dir` (the commit point is the
/// pointer's rename). A bad export or a write that fails changes nothing.
pub fn install(
    state_dir: &Path,
    text: &str,
    via: &str,
) -> Result<(Directory, Applied), Vec<String>> {
    if text.len() > MAX_EXPORT {
        return Err(vec![format!(
            "1:1: error: the export is {} octets; at most {MAX_EXPORT} are taken",
            text.len()
        )]);
    }
    let d = Directory::from_export(text).map_err(|e| vec![e.to_string()])?;
    let applied = Applied {
        version: d.version(),
        addresses: d.addresses(),
        entries: d.entries(),
    };
    let dir = dir_of(state_dir);
    let io = |e: std::io::Error| vec![format!("state {}: {e}", dir.display())];
    let _held = lock(&dir).map_err(io)?;
    let old = read_pointer(&dir);
    let gen = stage_files(&dir, &[(TABLE, d.bytes())]).map_err(io)?;
    let pointer = json!({
        "directory": {
            "dir": gen,
            "version": format!("{:016X}", applied.version),
            "addresses": applied.addresses,
            "entries": applied.entries,
            "installed_at": now(),
            "via": via,
        },
        "previous": old.get("directory").cloned().unwrap_or(Value::Null),
    });
    commit_pointer(&dir, &pointer).map_err(io)?;
    collect_garbage(&dir, &pointer);
    Ok((d, applied))
}

/// The directory installed in `state_dir`, read without changing anything
/// (for `sluice trace`); `None` when none is installed or loads.
pub fn installed(state_dir: &Path) -> Option<Directory> {
    load_installed(&dir_of(state_dir))
}

/// What the state directory says about the directory (daemon or not).
pub fn state_status(state_dir: &Path) -> Value {
    let pointer = read_pointer(&dir_of(state_dir));
    json!({
        "directory": pointer["directory"].clone(),
        "previous": pointer["previous"].clone(),
    })
}

/// The daemon's directory: the active one (if any) and how to replace it.
pub struct Store {
    /// The state directory (the directory lives in its `directory/`).
    state_dir: PathBuf,
    /// The active directory; a session keeps its `Arc` to its end.
    current: RwLock<Option<Arc<Directory>>>,
    /// Serialises installs within the daemon.
    lock: Mutex<()>,
}

impl Store {
    /// Loads the installed directory of `state_dir`, if any, and removes
    /// generations an install cut short left behind.
    pub fn open(state_dir: &Path) -> Store {
        let dir = dir_of(state_dir);
        let loaded = load_installed(&dir);
        if dir.exists() {
            collect_garbage(&dir, &read_pointer(&dir));
        }
        Store {
            state_dir: state_dir.to_path_buf(),
            current: RwLock::new(loaded.map(Arc::new)),
            lock: Mutex::new(()),
        }
    }

    /// The active directory (`None` when none is installed).
    pub fn current(&self) -> Option<Arc<Directory>> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Builds and installs an export, then swaps it in for new sessions.
    pub fn apply_text(&self, text: &str, via: &str) -> Result<Applied, Vec<String>> {
        let refused = |errors: Vec<String>| {
            crate::shell::ops::log::event_warn(
                crate::shell::ops::log::Kind::Policy,
                format_args!(
                    "directory install via {via} refused: {}",
                    errors.first().map(String::as_str).unwrap_or("-")
                ),
            );
            errors
        };
        let _g = self
            .lock
            .lock()
            .map_err(|_| refused(vec!["install lock poisoned".to_string()]))?;
        let (d, applied) = install(&self.state_dir, text, via).map_err(refused)?;
        let d = Some(Arc::new(d));
        match self.current.write() {
            Ok(mut g) => *g = d,
            Err(p) => *p.into_inner() = d,
        }
        crate::shell::ops::log::event(
            crate::shell::ops::log::Kind::Policy,
            None,
            None,
            format_args!("directory {} via {via}", applied.report()),
        );
        Ok(applied)
    }

    /// The installed directory as `sluice status` shows it, with what the
    /// daemon holds.
    pub fn status(&self) -> Value {
        let mut v = state_status(&self.state_dir);
        v["active_version"] = match self.current() {
            Some(d) => format!("{:016X}", d.version()).into(),
            None => Value::Null,
        };
        v
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn state(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sluice-dir-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).expect("mkdir");
        d
    }

    const A: &str = "mail,proxyAddresses\nu@eu.example,smtp:u@example\n";
    const B: &str = "mail,proxyAddresses\nu@us.example,smtp:u@example\n";

    #[test]
    fn installs_swap_survive_a_restart_and_a_bad_file_changes_nothing() {
        let s = state("swap");
        let store = Store::open(&s);
        assert!(store.current().is_none());
        let a = store.apply_text(A, "test").expect("A");
        let held = store.current().expect("A is active");
        let b = store.apply_text(B, "test").expect("B");
        assert_ne!(a.version, b.version);
        // A session that began on A keeps A.
        assert_eq!(
            held.lookup(b"u@example").and_then(|h| h.primary),
            Some(&b"u@eu.example"[..])
        );
        let before = state_status(&s);
        let e = store.apply_text("mail\n\"x\n", "test").expect_err("bad");
        assert!(e[0].starts_with("2:1: error:"), "{e:?}");
        assert_eq!(state_status(&s), before);
        let reopened = Store::open(&s);
        let d = reopened.current().expect("B after restart");
        assert_eq!(d.version(), b.version);
        assert_eq!(
            state_status(&s)["previous"]["version"],
            format!("{:016X}", a.version)
        );
        let gens = fs::read_dir(dir_of(&s)).unwrap().filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().starts_with("gen-"))
        });
        assert_eq!(gens.count(), 2);
    }

    #[test]
    fn a_torn_generation_is_not_loaded() {
        let s = state("torn");
        let store = Store::open(&s);
        let a = store.apply_text(A, "test").expect("A");
        let gen = read_pointer(&dir_of(&s))["directory"]["dir"]
            .as_str()
            .unwrap()
            .to_string();
        let f = dir_of(&s).join(&gen).join(TABLE);
        let bytes = fs::read(&f).unwrap();
        fs::write(&f, &bytes[..bytes.len() - 1]).unwrap();
        assert!(Store::open(&s).current().is_none(), "no previous: none");
        fs::write(&f, &bytes).unwrap();
        assert_eq!(Store::open(&s).current().unwrap().version(), a.version);
    }
}
