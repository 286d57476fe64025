//! Replays the fuzz corpus on stable: every target of `sluice::shell::fuzz`
//! over every file of `fuzz/corpus/TARGET/` and `fuzz/regressions/TARGET/`
//! (the seeds, what campaigns kept, and each crash once fixed). A target
//! that panics on a file fails the test, naming the file.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

/// The files of `dir`, sorted; none when it does not exist.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    out.retain(|p| p.is_file());
    out.sort();
    out
}

/// Runs every target over its corpus and regressions; returns the failures
/// (target, file, panic message) and how many inputs ran.
fn replay() -> (Vec<String>, usize) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut failures = Vec::new();
    let mut ran = 0;
    for (name, target) in sluice::shell::fuzz::TARGETS {
        let corpus = files(&root.join("corpus").join(name));
        assert!(!corpus.is_empty(), "fuzz/corpus/{name}/ has no seed");
        for file in corpus
            .iter()
            .chain(&files(&root.join("regressions").join(name)))
        {
            let data = std::fs::read(file).unwrap_or_default();
            ran += 1;
            if let Err(e) = catch_unwind(AssertUnwindSafe(|| target(&data))) {
                let why = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failures.push(format!("{name}: {}: {why}", file.display()));
            }
        }
    }
    (failures, ran)
}

/// Every corpus and regression file passes its target (on a thread with a
/// large stack: the policy table is decoded by value, as the daemon does).
#[test]
fn corpus_and_regressions_replay() {
    let run = std::thread::Builder::new()
        .stack_size(64 << 20)
        .spawn(replay)
        .map(|h| h.join());
    let Ok(Ok((failures, ran))) = run else {
        panic!("the replay thread failed");
    };
    assert!(
        failures.is_empty(),
        "{} of {ran} inputs failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Each target has its cargo-fuzz entry point, and each entry point a target.
#[test]
fn every_target_has_a_fuzz_entry() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/fuzz_targets");
    let mut entries: Vec<String> = files(&dir)
        .iter()
        .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .collect();
    let mut names: Vec<String> = sluice::shell::fuzz::TARGETS
        .iter()
        .map(|(n, _)| n.to_string())
        .collect();
    entries.sort();
    names.sort();
    assert_eq!(entries, names);
}
