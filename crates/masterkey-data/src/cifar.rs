//! CIFAR-10 / CIFAR-100 binary versions: fixed-size records of label
//! byte(s) and a 3x32x32 image (channel planes, row-major).

use std::path::Path;

use masterkey_core::{Error, Result};

use crate::ImageSet;

const IMAGE_BYTES: usize = 3 * 32 * 32;

/// Appends the records of `path`; the last label byte is the label (CIFAR-100
/// records hold a coarse and then a fine label: the fine one is used).
fn read_records(path: &Path, label_bytes: usize, images: &mut Vec<u8>, labels: &mut Vec<u16>) -> Result<()> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let record = label_bytes + IMAGE_BYTES;
    if bytes.is_empty() || bytes.len() % record != 0 {
        return Err(Error::invalid(
            path,
            format!("expected whole {record}-byte CIFAR records, found {} bytes", bytes.len()),
        ));
    }
    for r in bytes.chunks_exact(record) {
        labels.push(r[label_bytes - 1] as u16);
        images.extend_from_slice(&r[label_bytes..]);
    }
    Ok(())
}

/// CIFAR-10: `data_batch_{1..5}.bin` (train) or `test_batch.bin`; CIFAR-100:
/// `train.bin` or `test.bin`. Files may sit in `dir` or its
/// `cifar-10-batches-bin` / `cifar-100-binary` subfolder (as unpacked).
pub fn load_split(dir: &Path, classes: usize, train: bool) -> Result<ImageSet> {
    let (sub, files, label_bytes): (&str, Vec<String>, usize) = match (classes, train) {
        (10, true) => ("cifar-10-batches-bin", (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(), 1),
        (10, false) => ("cifar-10-batches-bin", vec!["test_batch.bin".into()], 1),
        (100, true) => ("cifar-100-binary", vec!["train.bin".into()], 2),
        (100, false) => ("cifar-100-binary", vec!["test.bin".into()], 2),
        _ => return Err(Error::Other(format!("CIFAR has 10 or 100 classes, not {classes}"))),
    };
    let root = if dir.join(sub).is_dir() { dir.join(sub) } else { dir.to_path_buf() };
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    for f in &files {
        let path = root.join(f);
        if !path.is_file() {
            return Err(Error::invalid(&path, format!("missing: expected the CIFAR-{classes} binary file here")));
        }
        read_records(&path, label_bytes, &mut images, &mut labels)?;
    }
    if let Some(&bad) = labels.iter().find(|&&l| l as usize >= classes) {
        return Err(Error::invalid(root.join(&files[0]), format!("label {bad} out of range for {classes} classes")));
    }
    ImageSet::new(&format!("cifar{classes}"), images, labels, [3, 32, 32], classes)
        .map_err(|m| Error::invalid(&root, m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_records_and_rejects_truncated_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut rec = vec![3u8, 9u8];
        rec.extend((0..IMAGE_BYTES).map(|i| (i % 251) as u8));
        std::fs::write(dir.path().join("test.bin"), [rec.clone(), rec.clone()].concat()).unwrap();
        let set = load_split(dir.path(), 100, false).unwrap();
        assert_eq!((set.len(), set.labels[0], set.shape), (2, 9, [3, 32, 32]));
        assert_eq!(&set.pixels[..3], &[0, 1, 2]);
        std::fs::write(dir.path().join("test.bin"), &rec[..100]).unwrap();
        let err = load_split(dir.path(), 100, false).unwrap_err().to_string();
        assert!(err.contains("test.bin") && err.contains("3074-byte"), "{err}");
        let err = load_split(dir.path(), 10, true).unwrap_err().to_string();
        assert!(err.contains("data_batch_1.bin") && err.contains("missing"), "{err}");
    }
}
