//! IDX files (MNIST, Fashion-MNIST): a big-endian header `0 0 type ndim`,
//! `ndim` u32 sizes, then the data; plain or gzip'd (detected by content).

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use masterkey_core::{Error, Result};

use super::ImageSet;

const UNSIGNED_BYTE: u8 = 0x08;

/// An IDX array of unsigned bytes.
pub struct IdxArray {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Reads `path`, gunzipping when it starts with the gzip magic.
pub fn read_idx(path: &Path) -> Result<IdxArray> {
    let mut raw = Vec::new();
    File::open(path).and_then(|mut f| f.read_to_end(&mut raw)).map_err(|e| Error::io(path, e))?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| Error::invalid(path, format!("expected gzip'd IDX, the gzip stream is broken: {e}")))?;
        out
    } else {
        raw
    };
    parse_idx(&bytes).map_err(|m| Error::invalid(path, m))
}

fn parse_idx(bytes: &[u8]) -> Result<IdxArray, String> {
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err("expected an IDX file (first two bytes 0), found something else".into());
    }
    if bytes[2] != UNSIGNED_BYTE {
        return Err(format!("expected IDX element type 0x08 (unsigned byte), found 0x{:02x}", bytes[2]));
    }
    let ndim = bytes[3] as usize;
    let header = 4 + 4 * ndim;
    if bytes.len() < header {
        return Err(format!("IDX header of {ndim} dimensions is truncated"));
    }
    let dims: Vec<usize> =
        (0..ndim).map(|i| u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().unwrap()) as usize).collect();
    let count: usize = dims.iter().product();
    if bytes.len() - header != count {
        return Err(format!("IDX header says {dims:?} ({count} bytes), found {} data bytes", bytes.len() - header));
    }
    Ok(IdxArray { dims, data: bytes[header..].to_vec() })
}

/// The first of `names` that exists in `dir`, or an error naming them all.
fn find(dir: &Path, stem: &str) -> Result<PathBuf> {
    for name in [format!("{stem}.gz"), stem.to_string()] {
        let path = dir.join(&name);
        if path.is_file() {
            return Ok(path);
        }
    }
    Err(Error::invalid(dir.join(stem), "missing: expected this IDX file (plain or .gz) in the data folder"))
}

/// The images and labels files of the `train` or `t10k` split of an
/// MNIST-layout folder.
pub fn split_files(dir: &Path, prefix: &str) -> Result<(PathBuf, PathBuf)> {
    Ok((find(dir, &format!("{prefix}-images-idx3-ubyte"))?, find(dir, &format!("{prefix}-labels-idx1-ubyte"))?))
}

/// Reads the `train` or `t10k` split of an MNIST-layout folder.
pub fn load_split(dir: &Path, prefix: &str, name: &str) -> Result<ImageSet> {
    let (images_path, labels_path) = split_files(dir, prefix)?;
    let images = read_idx(&images_path)?;
    let labels = read_idx(&labels_path)?;
    if images.dims.len() != 3 {
        return Err(Error::invalid(&images_path, format!("expected images [N, H, W], found {:?}", images.dims)));
    }
    if labels.dims.len() != 1 || labels.dims[0] != images.dims[0] {
        return Err(Error::invalid(
            &labels_path,
            format!("expected {} labels to match the images, found shape {:?}", images.dims[0], labels.dims),
        ));
    }
    let classes = labels.data.iter().copied().max().map_or(0, |m| m as usize + 1);
    ImageSet::new(
        name,
        images.data,
        labels.data.into_iter().map(u16::from).collect(),
        [1, images.dims[1], images.dims[2]],
        classes,
    )
    .map_err(|m| Error::invalid(&images_path, m))
}

/// Writes an IDX file of unsigned bytes (used to build test fixtures and
/// synthetic data sets).
pub fn write_idx(path: &Path, dims: &[usize], data: &[u8]) -> Result<()> {
    let mut bytes = vec![0, 0, UNSIGNED_BYTE, dims.len() as u8];
    for &d in dims {
        bytes.extend_from_slice(&(d as u32).to_be_bytes());
    }
    bytes.extend_from_slice(data);
    masterkey_core::atomic::write_file(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn reads_plain_and_gzip_and_names_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..2 * 3 * 4).map(|v| v as u8).collect();
        write_idx(&dir.path().join("train-images-idx3-ubyte"), &[2, 3, 4], &data).unwrap();
        let plain = std::fs::read(dir.path().join("train-images-idx3-ubyte")).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&[0, 0, 8, 1, 0, 0, 0, 2, 7, 3]).unwrap();
        std::fs::write(dir.path().join("train-labels-idx1-ubyte.gz"), gz.finish().unwrap()).unwrap();
        let set = load_split(dir.path(), "train", "t").unwrap();
        assert_eq!((set.len(), set.shape, set.classes), (2, [1, 3, 4], 8));
        assert_eq!(set.labels, vec![7, 3]);
        assert_eq!(set.pixels, data);

        let err = load_split(dir.path(), "t10k", "t").unwrap_err().to_string();
        assert!(err.contains("t10k-images-idx3-ubyte") && err.contains("missing"), "{err}");
        std::fs::write(dir.path().join("train-images-idx3-ubyte"), &plain[..plain.len() - 1]).unwrap();
        let err = load_split(dir.path(), "train", "t").unwrap_err().to_string();
        assert!(err.contains("train-images-idx3-ubyte") && err.contains("[2, 3, 4]"), "{err}");
        std::fs::write(dir.path().join("train-images-idx3-ubyte"), &plain).unwrap();
        std::fs::write(dir.path().join("train-labels-idx1-ubyte.gz"), [0x1f, 0x8b, 1, 2]).unwrap();
        let err = load_split(dir.path(), "train", "t").unwrap_err().to_string();
        assert!(err.contains("gzip"), "{err}");
    }
}
