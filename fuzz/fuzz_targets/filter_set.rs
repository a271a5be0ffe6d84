//! Any bytes as a saved filter set: the input is split into the set's three
//! files (`set.json`, `filters.csv`, `filters.safetensors`) at the offsets
//! its first four bytes give.
#![no_main]

use libfuzzer_sys::fuzz_target;
use masterkey_core::set::{FILTERS_FILE, METADATA_FILE, SET_FILE};

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let rest = &data[4..];
    let first = (u16::from_le_bytes([data[0], data[1]]) as usize).min(rest.len());
    let second = (first + u16::from_le_bytes([data[2], data[3]]) as usize).min(rest.len());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(SET_FILE), &rest[..first]).unwrap();
    std::fs::write(dir.path().join(METADATA_FILE), &rest[first..second]).unwrap();
    std::fs::write(dir.path().join(FILTERS_FILE), &rest[second..]).unwrap();
    let _ = masterkey_core::FilterSet::load(dir.path());
});
