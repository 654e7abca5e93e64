//! Replays the fuzzers' findings (fuzz/regressions/<target>/, every file) and their corpus
//! (fuzz/corpus/<target>/, up to a bounded sample) through the same invariant checks the cargo-fuzz
//! targets run, on stable Rust, so CI keeps every fixed finding fixed without nightly or libFuzzer.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use dualwrite_proxy::fuzz_checks::{check_control, check_frame, check_startup};
use dualwrite_rules::fuzz_checks::check_rewrite;

/// Corpus files replayed per target at most (the committed corpus is minimized and small).
const CORPUS_SAMPLE: usize = 3_000;

fn files(dir: &Path, limit: usize) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<PathBuf> = entries.filter_map(|e| Some(e.ok()?.path())).filter(|p| p.is_file()).collect();
    files.sort();
    // An even sample across the sorted (hash-named) files when the corpus outgrows the bound.
    let step = files.len().div_ceil(limit.max(1)).max(1);
    files.into_iter().step_by(step).collect()
}

/// Runs `check` on every regression input and a sample of the corpus of `target`; reports each input
/// that fails by name. Returns how many inputs ran.
fn replay(target: &str, check: fn(&[u8])) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let inputs: Vec<PathBuf> = files(&root.join("regressions").join(target), usize::MAX)
        .into_iter()
        .chain(files(&root.join("corpus").join(target), CORPUS_SAMPLE))
        .collect();
    let failed: Vec<String> = inputs
        .iter()
        .filter(|path| {
            let data = std::fs::read(path).expect("readable fuzz input");
            catch_unwind(AssertUnwindSafe(|| check(&data))).is_err()
        })
        .map(|p| p.display().to_string())
        .collect();
    assert!(failed.is_empty(), "{target}: {} input(s) break an invariant: {failed:#?}", failed.len());
    inputs.len()
}

#[test]
fn frame_inputs() {
    assert!(replay("frame", check_frame) > 0, "fuzz/corpus/frame is empty");
}

#[test]
fn startup_inputs() {
    assert!(replay("startup", check_startup) > 0, "fuzz/corpus/startup is empty");
}

#[test]
fn control_inputs() {
    assert!(replay("control", check_control) > 0, "fuzz/corpus/control is empty");
}

#[test]
fn rewrite_inputs() {
    assert!(replay("rewrite", check_rewrite) > 0, "fuzz/corpus/rewrite is empty");
}
