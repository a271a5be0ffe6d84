//! IDX files (MNIST, Fashion-MNIST): a big-endian header `0 0 type ndim`,
//! `ndim` u32 sizes, then the data; plain or gzip'd (detected by content).

use std::io::Read;
use std::path::{Path, PathBuf};

use masterkey_core::{Error, Result};

use crate::ImageSet;

const UNSIGNED_BYTE: u8 = 0x08;

/// An IDX array of unsigned bytes.
#[derive(Debug)]
pub struct IdxArray {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Reads `path`, gunzipping when it starts with the gzip magic. A gzip'd
/// file is decompressed no further than its header declares (and one byte
/// more, to notice trailing data), so a small file cannot expand without end.
pub fn read_idx(path: &Path) -> Result<IdxArray> {
    let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if !raw.starts_with(&GZIP_MAGIC) {
        return parse_idx(raw).map_err(|m| Error::invalid(path, m));
    }
    let broken =
        |e: std::io::Error| Error::invalid(path, format!("expected gzip'd IDX, the gzip stream is broken: {e}"));
    let mut decoder = flate2::read::GzDecoder::new(&raw[..]);
    let mut head = vec![0u8; 4];
    decoder.read_exact(&mut head).map_err(broken)?;
    let ndim = head[3] as usize;
    head.resize(4 + 4 * ndim, 0);
    decoder.read_exact(&mut head[4..]).map_err(broken)?;
    let (dims, count) = parse_header(&head).map_err(|m| Error::invalid(path, m))?;
    let mut data = Vec::new();
    decoder.take(count as u64 + 1).read_to_end(&mut data).map_err(broken)?;
    if data.len() > count {
        return Err(Error::invalid(path, format!("IDX header says {dims:?} ({count} bytes), found more data bytes")));
    }
    check_length(&dims, count, data.len()).map_err(|m| Error::invalid(path, m))?;
    Ok(IdxArray { dims, data })
}

/// Dimensions and element count declared by a complete IDX header.
fn parse_header(bytes: &[u8]) -> Result<(Vec<usize>, usize), String> {
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err("expected an IDX file (first two bytes 0), found something else".into());
    }
    if bytes[2] != UNSIGNED_BYTE {
        return Err(format!("expected IDX element type 0x08 (unsigned byte), found 0x{:02x}", bytes[2]));
    }
    let ndim = bytes[3] as usize;
    if bytes.len() < 4 + 4 * ndim {
        return Err(format!("IDX header of {ndim} dimensions is truncated"));
    }
    let dims: Vec<usize> =
        (0..ndim).map(|i| u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().unwrap()) as usize).collect();
    let count = dims
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| format!("IDX header declares {dims:?}, more elements than memory can address"))?;
    Ok((dims, count))
}

fn check_length(dims: &[usize], count: usize, found: usize) -> Result<(), String> {
    if found != count {
        return Err(format!("IDX header says {dims:?} ({count} bytes), found {found} data bytes"));
    }
    Ok(())
}

fn parse_idx(mut bytes: Vec<u8>) -> Result<IdxArray, String> {
    let (dims, count) = parse_header(&bytes)?;
    bytes.drain(..4 + 4 * dims.len());
    check_length(&dims, count, bytes.len())?;
    Ok(IdxArray { dims, data: bytes })
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

    /// Declared sizes are checked before anything is allocated for them: a
    /// header whose element count overflows, and a small gzip'd file that
    /// expands far past what its header declares, are refused.
    #[test]
    fn sizes_are_checked_against_the_header_before_allocating() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("huge-idx");
        let mut huge = vec![0, 0, 8, 4];
        huge.extend([0xff; 16]);
        std::fs::write(&path, &huge).unwrap();
        let err = read_idx(&path).unwrap_err().to_string();
        assert!(err.contains("huge-idx") && err.contains("more elements than memory"), "{err}");

        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&[0, 0, 8, 1, 0, 0, 0, 3]).unwrap();
        gz.write_all(&vec![0u8; 64 << 20]).unwrap();
        let bomb = gz.finish().unwrap();
        assert!(bomb.len() < 100_000, "{} bytes", bomb.len());
        std::fs::write(&path, bomb).unwrap();
        let err = read_idx(&path).unwrap_err().to_string();
        assert!(err.contains("[3] (3 bytes), found more"), "{err}");
    }
}
