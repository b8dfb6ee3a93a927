//! Replays the fuzz regression inputs (`testdata/fuzz-regressions/<target>/`: a diverse slice of
//! the corpus `scripts/fuzz.sh` found, plus every input that once crashed a target) through the
//! same checks as the fuzz targets in `fuzz/`: no panic, and the targets' invariants.

use std::panic::catch_unwind;
use std::path::{Path, PathBuf};

use gateway_proto::invariants as checks;

/// Runs `check` on every file of the target's directory; fails naming each input that panics.
fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/fuzz-regressions")
        .join(target);
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|error| panic!("cannot list {}: {error}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "no regression inputs in {}: the fuzz corpus slice is missing",
        dir.display()
    );
    let failed: Vec<String> = files
        .iter()
        .filter(|file| {
            let data = std::fs::read(file)
                .unwrap_or_else(|error| panic!("cannot read {}: {error}", file.display()));
            // The panic message (printed above the failure) says which invariant broke.
            catch_unwind(|| check(&data)).is_err()
        })
        .map(|file| file.display().to_string())
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} {target} inputs failed: {failed:#?}",
        failed.len(),
        files.len()
    );
}

#[test]
fn client_hello_inputs_keep_the_parser_invariants() {
    replay("client_hello", checks::client_hello);
}

#[test]
fn config_inputs_keep_the_parser_invariants() {
    replay("config", checks::config);
}

#[test]
fn secrets_inputs_keep_the_substitution_invariants() {
    replay("secrets", checks::secrets);
}
