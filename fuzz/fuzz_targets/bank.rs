//! Any bytes as a bank file (safetensors or the published `Filter k:` text).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bank");
    std::fs::write(&path, data).unwrap();
    let _ = masterkey_core::Bank::load(&path);
});
