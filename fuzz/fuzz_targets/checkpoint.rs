//! Any bytes as a checkpoint folder that `masterkey eval` and
//! `train --source-checkpoint` load: a little-endian u32 length, that many
//! bytes of `state.json`, the rest `model.mpk` (burn's named MessagePack).
//! Loading may refuse them; it must not panic, hang or allocate more than
//! the files justify (the network is built from state.json, so its size is
//! checked against model.mpk's before it is built).
#![no_main]

use libfuzzer_sys::fuzz_target;
use masterkey_train::checkpoint::{MODEL_FILE, STATE_FILE};

fuzz_target!(|data: &[u8]| {
    let Some((len, rest)) = data.split_first_chunk::<4>() else { return };
    let (state, model) = rest.split_at((u32::from_le_bytes(*len) as usize).min(rest.len()));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(STATE_FILE), state).unwrap();
    std::fs::write(dir.path().join(MODEL_FILE), model).unwrap();
    let _ = masterkey_train::train::load_trained::<masterkey_train::CpuBackend>(dir.path());
});
