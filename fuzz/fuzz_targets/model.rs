//! Any bytes as a model file: the format is detected from the content
//! (safetensors, sharded index, PyTorch zip and legacy pickle, ONNX, TFLite,
//! TF.js model JSON and weight manifest), so one target reaches every reader.
//! A reader may refuse the bytes; it must not panic, hang or allocate more
//! than the file justifies.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model");
    std::fs::write(&path, data).unwrap();
    let _ = masterkey_formats::read_model(&path);
});
