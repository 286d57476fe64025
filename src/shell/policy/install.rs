//! Installing policies: the state directory, the atomic swap and rollback
//! that `sluice rules apply`, `rules rollback` and `status` ask for over the
//! control socket (`ops::control`).
//!
//! The state directory holds one generation directory per installed policy
//! (`gen-N/policy.blob` and its source `gen-N/policy.toml`, written and
//! synced before anything points at them) and one pointer file,
//! `state.json`, naming the active generation and the one before it with
//! their version, when and how they were installed. `state.json` is
//! replaced by write, sync, rename, sync(dir): that rename is the single
//! commit point of an install and of a rollback, so a power cut at any
//! moment leaves the box booting on either the old or the new policy.
//! Generations no longer named by `state.json` (an install cut short, or
//! older than the previous one) are deleted afterwards and at start.
//! Sessions hold the policy they began with (an `Arc`); an install swaps the
//! pointer for new sessions only.

use crate::engine::policy::{Table, TableError};
use crate::shell::config::Config;
use crate::shell::policy::compile;
use crate::shell::policy::runtime::{Policy, DEFAULT_RULES};
use crate::shell::time::now_secs as now;
use serde_json::{json, Value};
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

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
    /// The state directory.
    state_dir: PathBuf,
    /// The active policy; a session keeps its `Arc` to its end.
    current: RwLock<Arc<Policy>>,
    /// Serialises installs and rollbacks.
    lock: Mutex<()>,
    /// The appliance config's `[[tls.client]]` names: a rule file whose
    /// connector names another `tls_certificate` is refused.
    certificates: RwLock<Vec<String>>,
}

/// Decodes a policy blob on a thread with a large stack (the table passes
/// through the stack by value in debug builds). `Err(None)`: the blob is whole but of another layout or format, made
/// by another version of sluice; `Err(Some(_))`: it is damaged.
fn decode_blob(blob: Vec<u8>) -> Result<Policy, Option<String>> {
    std::thread::Builder::new()
        .stack_size(32 << 20)
        .spawn(move || match Table::from_blob(&blob) {
            Ok(t) => Policy::new(Box::new(t)).map_err(|e| Some(format!("{e:?}"))),
            Err(TableError::Layout | TableError::Format(_)) => Err(None),
            Err(e) => Err(Some(format!("{e:?}"))),
        })
        .map_err(|e| Some(e.to_string()))?
        .join()
        .map_err(|_| Some("decoding the policy failed".to_string()))?
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

/// Makes a directory's entries durable (a rename is durable only then).
fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// The pointer file: the single commit point of the state directory.
const POINTER: &str = "state.json";

/// Reads the pointer file (`Null` when absent or unreadable).
pub(crate) fn read_pointer(dir: &Path) -> Value {
    fs::read_to_string(dir.join(POINTER))
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or(Value::Null)
}

/// Replaces the pointer file atomically and makes the rename durable.
pub(crate) fn commit_pointer(dir: &Path, pointer: &Value) -> io::Result<()> {
    write_atomic(dir, POINTER, pointer.to_string().as_bytes())?;
    sync_dir(dir)
}

/// Writes a new generation directory holding `blob` and `source`, every
/// file and the directory entries synced; returns its name. Nothing points
/// at it yet.
fn stage_generation(dir: &Path, source: &str, blob: &[u8]) -> io::Result<String> {
    stage_files(
        dir,
        &[("policy.blob", blob), ("policy.toml", source.as_bytes())],
    )
}

/// Writes a new generation directory `gen-N` in `dir` holding `files`
/// (name, octets), each file and the directory entries synced; returns
/// its name. Nothing points at it yet. (The directory installer shares it.)
pub(crate) fn stage_files(dir: &Path, files: &[(&str, &[u8])]) -> io::Result<String> {
    let next = generations(dir).into_iter().max().unwrap_or(0) + 1;
    let name = format!("gen-{next}");
    let gen = dir.join(&name);
    fs::create_dir(&gen)?;
    for (file, data) in files {
        let mut f = fs::File::create(gen.join(file))?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    sync_dir(&gen)?;
    sync_dir(dir)?;
    Ok(name)
}

/// The generation numbers present in `dir`.
fn generations(dir: &Path) -> Vec<u64> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("gen-"))
                .and_then(|n| n.parse().ok())
        })
        .collect()
}

/// Deletes the generations the pointer does not name (in any of its
/// entries' `dir`), and a pointer temporary left by a crash. Best effort:
/// leftovers are harmless.
pub(crate) fn collect_garbage(dir: &Path, pointer: &Value) {
    let keep = |n: u64| {
        let name = format!("gen-{n}");
        pointer
            .as_object()
            .into_iter()
            .flatten()
            .any(|(_, e)| e["dir"].as_str() == Some(name.as_str()))
    };
    for n in generations(dir) {
        if !keep(n) {
            let _ = fs::remove_dir_all(dir.join(format!("gen-{n}")));
        }
    }
    let _ = fs::remove_file(dir.join(format!(".{POINTER}.tmp")));
}

/// Compiles the source kept in generation directory `gen` again, for a
/// blob of an older layout.
fn recompile(gen: &Path) -> Result<Policy, String> {
    let name = gen.display();
    let source = fs::read_to_string(gen.join("policy.toml")).map_err(|e| format!("{name}: {e}"))?;
    let (policy, _, _) = compile(&source).map_err(|e| format!("{name}: {}", e.join("; ")))?;
    crate::shell::ops::log::info(format_args!(
        "{name}: policy blob of another sluice version; compiled again from its source"
    ));
    Ok(policy)
}

/// Loads the policy of the generation named by `entry` (a pointer's
/// `policy` or `previous`).
fn load_entry(dir: &Path, entry: &Value) -> Result<Policy, String> {
    let gen = entry["dir"]
        .as_str()
        .filter(|g| g.starts_with("gen-") && !g.contains('/'))
        .ok_or_else(|| "no generation named".to_string())?;
    let blob = fs::read(dir.join(gen).join("policy.blob")).map_err(|e| format!("{gen}: {e}"))?;
    match decode_blob(blob) {
        Ok(p) => Ok(p),
        // An upgrade changed the table's layout: the generation's source
        // compiles into the current one (same text, same version).
        Err(None) => recompile(&dir.join(gen)),
        Err(Some(e)) => Err(format!("{gen}: {e}")),
    }
}

/// Compiles a rule file into a policy, its blob and its warnings; the
/// errors as `LINE:COL: error: ...`.
fn compile(source: &str) -> Result<(Policy, Vec<u8>, Vec<String>), Vec<String>> {
    compile_declared(source, None)
}

/// [`compile`], checking connectors' `tls_certificate` against the
/// appliance config's `[[tls.client]]` names when given.
fn compile_declared(
    source: &str,
    certificates: Option<&[String]>,
) -> Result<(Policy, Vec<u8>, Vec<String>), Vec<String>> {
    let c = compile::compile_declared(source, certificates).map_err(|diags| {
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

/// The `[[tls.client]]` names of `cfg`.
fn certificate_names(cfg: &Config) -> Vec<String> {
    cfg.tls_clients.iter().map(|c| c.name.clone()).collect()
}

/// The pointer and the policy it names as active; if that does not load,
/// the previous one, which then becomes the active one (with a warning).
/// `None` when neither loads or nothing is installed.
fn load_installed(dir: &Path) -> Result<(Value, Option<Policy>), String> {
    let mut pointer = read_pointer(dir);
    if !pointer.is_object() {
        if dir.join(POINTER).exists() {
            crate::shell::ops::log::warn(format_args!(
                "state {}: {POINTER} is unreadable; starting from the config's rules",
                dir.display()
            ));
        }
        return Ok((pointer, None));
    }
    let e = match load_entry(dir, &pointer["policy"]) {
        Ok(p) => return Ok((pointer, Some(p))),
        Err(e) => e,
    };
    crate::shell::ops::log::warn(format_args!(
        "state {}: the installed policy does not load ({e})",
        dir.display()
    ));
    match load_entry(dir, &pointer["previous"]) {
        Ok(p) => {
            crate::shell::ops::log::warn(format_args!(
                "state {}: starting on the previous policy",
                dir.display()
            ));
            // It is the active one now; the broken one goes.
            pointer = json!({ "policy": pointer["previous"].clone(), "previous": Value::Null });
            commit_pointer(dir, &pointer).map_err(|e| format!("state {}: {e}", dir.display()))?;
            Ok((pointer, Some(p)))
        }
        Err(e) => {
            crate::shell::ops::log::warn(format_args!(
                "state {}: the previous policy does not load either ({e}); starting from the config's rules",
                dir.display()
            ));
            Ok((pointer, None))
        }
    }
}

/// The policy a state directory starts on when none of its own loads.
struct FirstPolicy {
    /// The rule file's text.
    source: String,
    /// Where it came from, for the pointer's `via`.
    via: String,
    /// The compiled policy.
    policy: Policy,
    /// Its blob.
    blob: Vec<u8>,
}

/// The policy to install when none loads from the state directory: a
/// `policy.toml` of the layout before generations, else the config's rule
/// file, else the embedded default.
fn first_policy(dir: &Path, cfg: &Config, pointer: &Value) -> Result<FirstPolicy, String> {
    // A state dir of the layout before generations (policy.toml beside
    // policy.blob, no pointer): the box keeps its installed policy.
    let legacy_path = dir.join("policy.toml");
    let legacy = (pointer.is_null() && !dir.join(POINTER).exists())
        .then(|| fs::read_to_string(&legacy_path).ok())
        .flatten()
        .and_then(|text| compile(&text).ok().map(|c| (text, c)));
    if let Some((text, (policy, blob, _))) = legacy {
        crate::shell::ops::log::info(format_args!(
            "state {}: policy.toml of the older layout taken over as the installed policy",
            dir.display()
        ));
        return Ok(FirstPolicy {
            source: text,
            via: "state (older layout)".to_string(),
            policy,
            blob,
        });
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
    Ok(FirstPolicy {
        source,
        via,
        policy,
        blob,
    })
}

impl Installer {
    /// Opens the state directory and the policy to start on: the one
    /// `state.json` names as active; if that does not load, the previous
    /// one (with a warning); else the config's rule file (or the embedded
    /// default), which is then installed.
    pub fn open(cfg: &Config) -> Result<Installer, String> {
        let dir = cfg.state_dir.clone();
        fs::create_dir_all(&dir).map_err(|e| format!("state {}: {e}", dir.display()))?;
        let _ = fs::set_permissions(&dir, fs::Permissions::from_mode(0o700));
        let (pointer, loaded) = load_installed(&dir)?;
        if let Some(p) = loaded {
            collect_garbage(&dir, &pointer);
            return Ok(Installer {
                state_dir: dir,
                current: RwLock::new(Arc::new(p)),
                lock: Mutex::new(()),
                certificates: RwLock::new(certificate_names(cfg)),
            });
        }
        let first = first_policy(&dir, cfg, &pointer)?;
        let inst = Installer {
            state_dir: dir,
            current: RwLock::new(Arc::new(first.policy)),
            lock: Mutex::new(()),
            certificates: RwLock::new(certificate_names(cfg)),
        };
        let version = inst.current().table.version;
        inst.write_state(&first.source, &first.blob, version, &first.via)
            .map_err(|e| format!("state {}: {e}", inst.state_dir.display()))?;
        Ok(inst)
    }

    /// The `[[tls.client]]` names installs are checked against.
    pub fn certificate_names(&self) -> Vec<String> {
        match self.certificates.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Sets the `[[tls.client]]` names (SIGHUP reloaded the config).
    pub fn set_certificate_names(&self, names: Vec<String>) {
        match self.certificates.write() {
            Ok(mut g) => *g = names,
            Err(p) => *p.into_inner() = names,
        }
    }

    /// The active policy (a session keeps this `Arc` to its end).
    pub fn current(&self) -> Arc<Policy> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Makes `p` the active policy; sessions under way keep theirs. Counted
    /// as an install (`sluice_policy_installs_total`).
    fn swap(&self, p: Policy) {
        crate::shell::ops::metrics::POLICY_INSTALLS.add(1);
        let p = Arc::new(p);
        match self.current.write() {
            Ok(mut g) => *g = p,
            Err(poisoned) => *poisoned.into_inner() = p,
        }
    }

    /// Writes the new state: a new generation directory, then the pointer
    /// naming it active and the old active one previous (the commit
    /// point), then the generations no longer named are deleted.
    fn write_state(&self, source: &str, blob: &[u8], version: u64, via: &str) -> io::Result<()> {
        let d = &self.state_dir;
        let old = read_pointer(d);
        let gen = stage_generation(d, source, blob)?;
        let pointer = json!({
            "policy": { "dir": gen, "version": format!("{version:016X}"), "installed_at": now(), "via": via },
            "previous": old.get("policy").cloned().unwrap_or(Value::Null),
        });
        commit_pointer(d, &pointer)?;
        collect_garbage(d, &pointer);
        Ok(())
    }

    /// Checks and compiles `source`, then installs it atomically: written
    /// to the state directory, then swapped in for new sessions. A file
    /// that does not compile changes nothing.
    pub fn apply_text(&self, source: &str, via: &str) -> Result<Applied, Vec<String>> {
        let refused = |errors: Vec<String>| {
            crate::shell::ops::log::event_warn(
                crate::shell::ops::log::Kind::Policy,
                format_args!(
                    "install via {via} refused: {} error(s), first: {}",
                    errors.len(),
                    errors.first().map(String::as_str).unwrap_or("-")
                ),
            );
            errors
        };
        let names = self.certificate_names();
        let (policy, blob, warnings) = compile_declared(source, Some(&names)).map_err(refused)?;
        let version = policy.table.version;
        let _g = self
            .lock
            .lock()
            .map_err(|_| refused(vec!["install lock poisoned".to_string()]))?;
        self.write_state(source, &blob, version, via)
            .map_err(|e| refused(vec![format!("state {}: {e}", self.state_dir.display())]))?;
        self.swap(policy);
        crate::shell::ops::log::event(
            crate::shell::ops::log::Kind::Policy,
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
        let old = read_pointer(d);
        if !old["previous"].is_object() {
            return Err("no previous policy to roll back to".to_string());
        }
        let policy = load_entry(d, &old["previous"])?;
        let version = policy.table.version;
        // One pointer rewrite swaps the two; it records how the now-current
        // policy came back.
        let mut back = old["previous"].clone();
        back["installed_at"] = now().into();
        back["via"] = format!("rollback, {via}").into();
        let pointer = json!({ "policy": back, "previous": old["policy"].clone() });
        commit_pointer(d, &pointer).map_err(|e| format!("state {}: {e}", d.display()))?;
        self.swap(policy);
        crate::shell::ops::log::event(
            crate::shell::ops::log::Kind::Policy,
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
    let pointer = read_pointer(state_dir);
    json!({
        "state_dir": state_dir.display().to_string(),
        "policy": pointer["policy"].clone(),
        "previous": pointer["previous"].clone(),
        "running": false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: &str = "\n# policy B\n";
    const C: &str = "\n# policy C\n";

    fn src(extra: &str) -> String {
        format!("{DEFAULT_RULES}{extra}")
    }

    fn version_of(source: &str) -> u64 {
        compile(source).expect("compiles").0.table.version
    }

    /// A state directory holding policy B with the embedded default as the
    /// previous one, and the config that opens it.
    fn setup(name: &str) -> (PathBuf, Config) {
        let base =
            std::env::temp_dir().join(format!("sluice-install-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        fs::create_dir_all(&base).expect("mkdir");
        let cfg = Config::parse("state_dir = \"state\"\n", &base).expect("config");
        let inst = Installer::open(&cfg).expect("open");
        inst.apply_text(&src(B), "test").expect("apply B");
        let dir = cfg.state_dir.clone();
        (dir, cfg)
    }

    fn active(cfg: &Config) -> u64 {
        Installer::open(cfg)
            .expect("reopen")
            .current()
            .table
            .version
    }

    fn gens(dir: &Path) -> Vec<u64> {
        let mut g = generations(dir);
        g.sort();
        g
    }

    /// The pointer an install of `source` staged as `gen` would commit.
    fn next_pointer(dir: &Path, gen: &str, source: &str) -> Value {
        json!({
            "policy": { "dir": gen, "version": format!("{:016X}", version_of(source)), "installed_at": now(), "via": "test" },
            "previous": read_pointer(dir)["policy"].clone(),
        })
    }

    #[test]
    fn an_install_and_a_reboot_keep_the_new_policy_and_the_previous_one() {
        let (dir, cfg) = setup("plain");
        assert_eq!(active(&cfg), version_of(&src(B)));
        let st = state_status(&dir);
        assert_eq!(
            st["policy"]["version"],
            format!("{:016X}", version_of(&src(B)))
        );
        assert_eq!(
            st["previous"]["version"],
            format!("{:016X}", version_of(DEFAULT_RULES))
        );
        assert_eq!(
            gens(&dir).len(),
            2,
            "only the active and previous generations stay"
        );
    }

    #[test]
    fn a_state_dir_of_the_older_layout_keeps_its_policy() {
        let base =
            std::env::temp_dir().join(format!("sluice-install-legacy-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        let dir = base.join("state");
        fs::create_dir_all(&dir).expect("mkdir");
        // policy.{toml,blob} side by side, as before generations.
        let (_, blob, _) = compile(&src(C)).expect("compiles");
        fs::write(dir.join("policy.toml"), src(C)).expect("write");
        fs::write(dir.join("policy.blob"), &blob).expect("write");
        let cfg = Config::parse("state_dir = \"state\"\n", &base).expect("config");
        assert_eq!(
            active(&cfg),
            version_of(&src(C)),
            "taken over, not the default"
        );
        assert_eq!(
            state_status(&dir)["policy"]["via"],
            "state (older layout)",
            "and written in the new layout"
        );
        let _ = fs::remove_dir_all(&base);
    }

    #[test]
    fn a_crash_while_staging_the_generation_boots_on_the_old_policy() {
        let (dir, cfg) = setup("stage");
        // Cut off mid-way: the directory and half a blob, no source.
        let (_, blob, _) = compile(&src(C)).expect("compiles");
        let gen = dir.join("gen-99");
        fs::create_dir(&gen).expect("mkdir");
        fs::write(gen.join("policy.blob"), &blob[..blob.len() / 2]).expect("write");
        assert_eq!(active(&cfg), version_of(&src(B)));
        assert!(!gen.exists(), "the torn generation is cleaned up at start");
        // And the next install still works and keeps B as previous.
        let inst = Installer::open(&cfg).expect("open");
        inst.apply_text(&src(C), "test").expect("apply C");
        assert_eq!(active(&cfg), version_of(&src(C)));
        assert_eq!(
            state_status(&dir)["previous"]["version"],
            format!("{:016X}", version_of(&src(B)))
        );
    }

    #[test]
    fn a_crash_after_staging_before_the_pointer_boots_on_the_old_policy() {
        let (dir, cfg) = setup("staged");
        let (_, blob, _) = compile(&src(C)).expect("compiles");
        stage_generation(&dir, &src(C), &blob).expect("stage");
        assert_eq!(gens(&dir).len(), 3);
        assert_eq!(active(&cfg), version_of(&src(B)));
        assert_eq!(gens(&dir).len(), 2);
    }

    #[test]
    fn a_crash_before_the_pointer_rename_boots_on_the_old_policy() {
        let (dir, cfg) = setup("tmp");
        let (_, blob, _) = compile(&src(C)).expect("compiles");
        let gen = stage_generation(&dir, &src(C), &blob).expect("stage");
        let p = next_pointer(&dir, &gen, &src(C)).to_string();
        // Whole or torn, a pointer temporary is not the pointer.
        for tmp in [&p[..], &p[..p.len() / 2]] {
            fs::write(dir.join(format!(".{POINTER}.tmp")), tmp).expect("write");
            assert_eq!(active(&cfg), version_of(&src(B)));
        }
        assert!(!dir.join(format!(".{POINTER}.tmp")).exists());
    }

    #[test]
    fn a_crash_after_the_pointer_rename_boots_on_the_new_policy() {
        let (dir, cfg) = setup("renamed");
        let (_, blob, _) = compile(&src(C)).expect("compiles");
        let gen = stage_generation(&dir, &src(C), &blob).expect("stage");
        let p = next_pointer(&dir, &gen, &src(C));
        commit_pointer(&dir, &p).expect("commit");
        // Crashed before the garbage collection: three generations.
        assert_eq!(gens(&dir).len(), 3);
        assert_eq!(active(&cfg), version_of(&src(C)));
        assert_eq!(gens(&dir).len(), 2, "the oldest generation goes at start");
        assert_eq!(
            state_status(&dir)["previous"]["version"],
            format!("{:016X}", version_of(&src(B)))
        );
    }

    #[test]
    fn a_rollback_cut_before_or_after_its_commit_is_all_or_nothing() {
        let (dir, cfg) = setup("rollback");
        let old = read_pointer(&dir);
        let flipped =
            json!({ "policy": old["previous"].clone(), "previous": old["policy"].clone() });
        fs::write(dir.join(format!(".{POINTER}.tmp")), flipped.to_string()).expect("write");
        assert_eq!(
            active(&cfg),
            version_of(&src(B)),
            "before the rename: unchanged"
        );
        commit_pointer(&dir, &flipped).expect("commit");
        assert_eq!(
            active(&cfg),
            version_of(DEFAULT_RULES),
            "after it: rolled back"
        );
        // And the real thing, twice, goes back and forth.
        let inst = Installer::open(&cfg).expect("open");
        assert_eq!(
            inst.rollback("test").expect("rollback").version,
            version_of(&src(B))
        );
        assert_eq!(active(&cfg), version_of(&src(B)));
        assert!(state_status(&dir)["policy"]["via"]
            .as_str()
            .is_some_and(|v| v.starts_with("rollback")));
        assert_eq!(
            inst.rollback("test").expect("rollback").version,
            version_of(DEFAULT_RULES)
        );
    }

    #[test]
    fn a_broken_active_generation_falls_back_to_the_previous_one() {
        let (dir, cfg) = setup("broken");
        let gen = read_pointer(&dir)["policy"]["dir"]
            .as_str()
            .expect("dir")
            .to_string();
        fs::write(dir.join(&gen).join("policy.blob"), b"not a blob").expect("write");
        assert_eq!(active(&cfg), version_of(DEFAULT_RULES));
        assert!(read_pointer(&dir)["previous"].is_null());
        assert!(!dir.join(&gen).exists());
    }

    #[test]
    fn a_blob_of_another_layout_is_compiled_again_from_its_source() {
        let (dir, cfg) = setup("layout");
        let gen = read_pointer(&dir)["policy"]["dir"]
            .as_str()
            .expect("dir")
            .to_string();
        let before = active(&cfg);
        // Whole (its CRC holds) but not today's table: an older version's.
        let old =
            postcard::to_allocvec_crc32(&(1u16, "an older table"), crate::engine::policy::crc32())
                .expect("encode");
        fs::write(dir.join(&gen).join("policy.blob"), old).expect("write");
        assert_eq!(active(&cfg), before, "same source, same version");
        assert!(dir.join(&gen).exists(), "the generation is kept");
    }

    #[test]
    fn a_refused_file_changes_nothing() {
        let (dir, cfg) = setup("refused");
        let before = read_pointer(&dir);
        let inst = Installer::open(&cfg).expect("open");
        assert!(inst.apply_text("this is = = not toml", "test").is_err());
        assert_eq!(read_pointer(&dir), before);
        assert_eq!(gens(&dir).len(), 2);
        assert_eq!(active(&cfg), version_of(&src(B)));
    }
}
