//! Replays every seed corpus under `fuzz/corpus/<target>/` through the body its fuzz target
//! runs (`lanparty_lite::fuzz_entry`), so `cargo test` catches a regression on a known input
//! without a nightly toolchain or libFuzzer.

use std::collections::BTreeSet;
use std::fs;
use std::panic;
use std::path::{Path, PathBuf};

use lanparty_lite::fuzz_entry::TARGETS;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn names_in(dir: &Path, suffix: &str) -> BTreeSet<String> {
    fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter_map(|name| name.strip_suffix(suffix).map(String::from))
        .collect()
}

#[test]
fn every_seed_runs_clean_and_each_corpus_has_valid_and_invalid_seeds() {
    let mut failures = Vec::new();
    let mut one_sided = Vec::new();
    for (name, body) in TARGETS {
        let dir = fuzz_dir().join("corpus").join(name);
        let files: Vec<PathBuf> = match fs::read_dir(&dir) {
            Ok(entries) => entries.map(|e| e.unwrap().path()).collect(),
            Err(e) => panic!("corpus of {name} is missing at {}: {e}", dir.display()),
        };
        assert!(
            !files.is_empty(),
            "corpus of {name} at {} is empty",
            dir.display()
        );
        let (mut accepted, mut rejected) = (0, 0);
        for file in files {
            let bytes = fs::read(&file).unwrap();
            match panic::catch_unwind(|| body(&bytes)) {
                Ok(true) => accepted += 1,
                Ok(false) => rejected += 1,
                Err(panic) => {
                    let why = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    failures.push(format!("{name}: {}: {why}", file.display()));
                }
            }
        }
        if accepted == 0 || rejected == 0 {
            one_sided.push(format!("{name}: {accepted} accepted, {rejected} rejected"));
        }
    }
    assert!(
        failures.is_empty(),
        "seeds that panic:\n{}",
        failures.join("\n")
    );
    assert!(
        one_sided.is_empty(),
        "each corpus needs valid and invalid seeds:\n{}",
        one_sided.join("\n")
    );
}

#[test]
fn fuzz_targets_and_corpora_match_the_shared_bodies() {
    let bodies: BTreeSet<String> = TARGETS.iter().map(|(n, _)| n.to_string()).collect();
    assert_eq!(
        names_in(&fuzz_dir().join("fuzz_targets"), ".rs"),
        bodies,
        "fuzz/fuzz_targets/*.rs and fuzz_entry::TARGETS disagree"
    );
    assert_eq!(
        names_in(&fuzz_dir().join("corpus"), ""),
        bodies,
        "fuzz/corpus/* and fuzz_entry::TARGETS disagree"
    );
}
