//! The inputs the `checkpoint` fuzz target found (fuzz/regressions/checkpoint/),
//! replayed as the target feeds them: a u32 length, that many bytes of
//! state.json, the rest model.mpk. Each must be refused in one line or read,
//! never panic.

use std::path::Path;

use masterkey_train::checkpoint::{MODEL_FILE, STATE_FILE};
use masterkey_train::train::load_trained;

#[test]
fn checkpoint_findings_are_refused_in_one_line() {
    let found = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/regressions/checkpoint");
    let mut replayed = 0;
    for entry in std::fs::read_dir(&found).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let (len, rest) = data.split_first_chunk::<4>().expect("a length");
        let (state, model) = rest.split_at((u32::from_le_bytes(*len) as usize).min(rest.len()));
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(STATE_FILE), state).unwrap();
        std::fs::write(dir.path().join(MODEL_FILE), model).unwrap();
        if let Err(e) = load_trained::<masterkey_train::CpuBackend>(dir.path()) {
            assert_eq!(e.to_string().lines().count(), 1, "{}: {e}", path.display());
        }
        replayed += 1;
    }
    assert!(replayed > 0, "no inputs in {}", found.display());
}
