//! Banks of keys: small sets of normalised filters of one size.
//!
//! A bank file is safetensors with one f32 tensor `keys` `[K, H, W]` and, in
//! the header metadata, `name`, `source`, `licence` and `labels` (a JSON list).

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};

use crate::atomic;
use crate::error::{Error, Result};
use crate::kernel::{mean_and_centered_norm, normalise, KernelSize};
use crate::set::f32_bytes;

/// The published 8 master-key filters (CC BY 4.0), as distributed with
/// Lindeberg, Babaiee & Kiasari's model-fitting code.
const PUBLISHED8_TEXT: &str = include_str!("../data/published8.txt");
pub const PUBLISHED8_SOURCE: &str = "Babaiee, Kiasari, Rus, Grosu, \"The Quest for Universal Master Key Filters in DS-CNNs\" \
(arXiv 2509.11711, NeurIPS 2025); numbers as published by Lindeberg, Babaiee, Kiasari, \"Modelling and analysis of the 8 \
filters from the master key filters hypothesis\" (arXiv 2509.12746), github.com/tonylindeberg/masterfiltmodel \
model-fitting/8Filters.txt at af051cb0";
pub const PUBLISHED8_LICENCE: &str = "CC BY 4.0";

/// How a key is compared with a filter of another size: the key's centre
/// window of the filter's size is cut out (or the key is zero-padded around
/// its centre when the filter is larger; the offset is `floor((K - k) / 2)`
/// per axis), then re-normalised to zero mean and unit L2 norm.
pub const RESIZE_RULE: &str =
    "centre-crop: each key's centred window of the filter's size (zero-padded if larger), re-normalised";

/// Keys whose resized form has a centred norm below this are unusable at that size.
const RESIZED_KEY_TOLERANCE: f32 = 1e-6;

#[derive(Debug, Clone, PartialEq)]
pub struct Bank {
    pub name: String,
    pub kernel: KernelSize,
    /// `labels.len() * kernel.taps()` normalised taps.
    pub keys: Vec<f32>,
    pub labels: Vec<String>,
    pub source: String,
    pub licence: String,
}

impl Bank {
    /// Builds a bank, normalising each key that is not already zero-mean and
    /// unit-norm within `1e-5` (those are kept bit for bit, so a saved bank
    /// loads back unchanged); fails on constant or non-finite keys.
    pub fn new(
        name: &str,
        kernel: KernelSize,
        mut keys: Vec<f32>,
        labels: Vec<String>,
        source: &str,
        licence: &str,
    ) -> Result<Self, String> {
        let t = kernel.taps();
        if keys.is_empty() || keys.len() != labels.len() * t {
            return Err(format!(
                "bank `{name}`: expected {} labels x {t} taps, found {} values",
                labels.len(),
                keys.len()
            ));
        }
        if keys.iter().any(|v| !v.is_finite()) {
            return Err(format!("bank `{name}`: a key holds a non-finite value"));
        }
        for (i, key) in keys.chunks_exact_mut(t).enumerate() {
            let (mean, norm) = mean_and_centered_norm(key);
            let normalised = mean.abs() < 1e-5 && (norm - 1.0).abs() < 1e-5;
            if !normalised && !normalise(key, RESIZED_KEY_TOLERANCE) {
                return Err(format!(
                    "bank `{name}`: key {} ({}) is constant and cannot be normalised",
                    i + 1,
                    labels[i]
                ));
            }
        }
        Ok(Bank { name: name.into(), kernel, keys, labels, source: source.into(), licence: licence.into() })
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    pub fn key(&self, i: usize) -> &[f32] {
        let t = self.kernel.taps();
        &self.keys[i * t..(i + 1) * t]
    }

    /// The built-in bank `published8`.
    pub fn published8() -> Self {
        let keys = parse_filter_text(PUBLISHED8_TEXT).expect("built-in published8 parses");
        let labels = (1..=keys.1).map(|i| format!("key{i}")).collect();
        Bank::new("published8", keys.0, keys.2, labels, PUBLISHED8_SOURCE, PUBLISHED8_LICENCE)
            .expect("published8 is valid")
    }

    /// `k` keys of independent standard-normal taps (normalised), from a
    /// seeded ChaCha8 generator: the control a bank's coverage is compared
    /// with (random keys of the same number and size).
    pub fn random(k: usize, kernel: KernelSize, seed: u64) -> Self {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        // Box-Muller: two uniforms in (0, 1] give one standard normal.
        let mut normal = || {
            let (u, v): (f64, f64) = (1.0 - rng.random::<f64>(), rng.random::<f64>());
            ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
        };
        let keys = (0..k * kernel.taps()).map(|_| normal()).collect();
        let labels = (1..=k).map(|i| format!("random{i}")).collect();
        let name = format!("random{k}-seed{seed}");
        Bank::new(&name, kernel, keys, labels, &format!("{k} random normal keys, ChaCha8 seed {seed}"), "none")
            .expect("random keys are finite and not constant")
    }

    /// Names of the banks built into the tool.
    pub const BUILTIN: &'static [&'static str] = &["published8"];

    /// Resolves a bank argument: a built-in name, a bank file (safetensors),
    /// or a text file in the published `Filter k:` layout.
    pub fn resolve(spec: &str) -> Result<Self> {
        if spec == "published8" {
            return Ok(Bank::published8());
        }
        let path = Path::new(spec);
        if !path.exists() {
            return Err(Error::invalid(
                path,
                format!("no such bank file, and not a built-in bank (built-in: {})", Bank::BUILTIN.join(", ")),
            ));
        }
        Bank::load(path)
    }

    /// The bank with every key resized to `kernel` by [`RESIZE_RULE`]. Keys
    /// that become constant at that size are dropped; the second value lists
    /// the original index of each key kept.
    pub fn resized(&self, kernel: KernelSize) -> (Vec<f32>, Vec<usize>) {
        if kernel == self.kernel {
            return (self.keys.clone(), (0..self.len()).collect());
        }
        let (mut out, mut kept) = (Vec::new(), Vec::new());
        let oh = self.kernel.h as isize - kernel.h as isize;
        let ow = self.kernel.w as isize - kernel.w as isize;
        // floor((K - k) / 2) for crops; padding is the mirror image.
        let (dy, dx) = (oh.div_euclid(2), ow.div_euclid(2));
        for i in 0..self.len() {
            let key = self.key(i);
            let mut small = vec![0.0f32; kernel.taps()];
            for r in 0..kernel.h {
                for c in 0..kernel.w {
                    let (sr, sc) = (r as isize + dy, c as isize + dx);
                    if sr >= 0 && sc >= 0 && (sr as usize) < self.kernel.h && (sc as usize) < self.kernel.w {
                        small[r * kernel.w + c] = key[sr as usize * self.kernel.w + sc as usize];
                    }
                }
            }
            if normalise(&mut small, RESIZED_KEY_TOLERANCE) {
                out.extend_from_slice(&small);
                kept.push(i);
            }
        }
        (out, kept)
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let data = f32_bytes(&self.keys);
        let view = TensorView::new(Dtype::F32, vec![self.len(), self.kernel.h, self.kernel.w], &data)
            .map_err(|e| Error::Other(format!("bank tensor: {e}")))?;
        let meta: BTreeMap<String, String> = [
            ("name".to_string(), self.name.clone()),
            ("source".to_string(), self.source.clone()),
            ("licence".to_string(), self.licence.clone()),
            ("labels".to_string(), serde_json::to_string(&self.labels).expect("labels serialise")),
        ]
        .into();
        let bytes = crate::safetensors_out::serialize_sorted(vec![("keys", view)], Some(meta))
            .map_err(|e| Error::invalid(path, format!("writing bank: {e}")))?;
        atomic::write_file(path, &bytes)
    }

    /// Loads a bank file: safetensors as written by [`Bank::save`], or text in
    /// the published `Filter k:` layout (detected from the content).
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = fs::read(path).map_err(|e| Error::io(path, e))?;
        if bytes.starts_with(b"Filter") {
            let text = String::from_utf8_lossy(&bytes);
            let (kernel, n, keys) = parse_filter_text(&text).map_err(|e| Error::invalid(path, e))?;
            let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            let labels = (1..=n).map(|i| format!("key{i}")).collect();
            return Bank::new(&name, kernel, keys, labels, &path.display().to_string(), "unknown")
                .map_err(|e| Error::invalid(path, e));
        }
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| Error::invalid(path, format!("expected a bank (safetensors or `Filter k:` text): {e}")))?;
        let tensors = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| Error::invalid(path, e.to_string()))?;
        let view = tensors
            .tensor("keys")
            .map_err(|_| Error::invalid(path, "expected a tensor `keys` [K, H, W], found none"))?;
        let shape = view.shape();
        if view.dtype() != Dtype::F32 || shape.len() != 3 {
            return Err(Error::invalid(
                path,
                format!("expected `keys` as f32 [K, H, W], found {:?} {:?}", view.dtype(), shape),
            ));
        }
        let kernel = KernelSize::new(shape[1], shape[2]);
        let keys: Vec<f32> =
            view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        let meta = meta.metadata().clone().unwrap_or_default();
        let get = |k: &str| meta.get(k).cloned().unwrap_or_default();
        let labels: Vec<String> = match meta.get("labels") {
            Some(l) => serde_json::from_str(l).map_err(|e| Error::invalid(path, format!("labels: {e}")))?,
            None => (1..=shape[0]).map(|i| format!("key{i}")).collect(),
        };
        let name = if get("name").is_empty() { path.display().to_string() } else { get("name") };
        Bank::new(&name, kernel, keys, labels, &get("source"), &get("licence")).map_err(|e| Error::invalid(path, e))
    }
}

/// Parses `Filter k:` blocks of whitespace-separated rows. Returns the kernel
/// size, the number of filters and their taps (row 0 first).
fn parse_filter_text(text: &str) -> Result<(KernelSize, usize, Vec<f32>), String> {
    let mut filters: Vec<Vec<Vec<f32>>> = Vec::new();
    for (lineno, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if line.starts_with("Filter") {
            filters.push(Vec::new());
            continue;
        }
        let current = filters
            .last_mut()
            .ok_or_else(|| format!("line {}: numbers before the first `Filter k:` header", lineno + 1))?;
        let row: Result<Vec<f32>, _> = line.split_whitespace().map(str::parse::<f32>).collect();
        current.push(row.map_err(|e| format!("line {}: {e}", lineno + 1))?);
    }
    let first = filters.first().ok_or("expected at least one `Filter k:` block, found none")?;
    let kernel = KernelSize::new(first.len(), first.first().map_or(0, Vec::len));
    if kernel.taps() == 0 {
        return Err("filter 1 has no rows".into());
    }
    let mut taps = Vec::new();
    for (i, f) in filters.iter().enumerate() {
        if f.len() != kernel.h || f.iter().any(|r| r.len() != kernel.w) {
            return Err(format!("filter {}: expected {kernel} like filter 1, found rows of other lengths", i + 1));
        }
        taps.extend(f.iter().flatten());
    }
    Ok((kernel, filters.len(), taps))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published8_is_eight_normalised_7x7_keys() {
        let bank = Bank::published8();
        assert_eq!(bank.len(), 8);
        assert_eq!(bank.kernel, KernelSize::square(7));
        for i in 0..8 {
            let k = bank.key(i);
            let mean: f32 = k.iter().sum::<f32>() / 49.0;
            let norm: f32 = k.iter().map(|v| v * v).sum::<f32>().sqrt();
            assert!(mean.abs() < 1e-6 && (norm - 1.0).abs() < 1e-5, "key {i}: mean {mean} norm {norm}");
        }
        // Key 8 is the Gaussian blob: its maximum is the centre tap.
        let k8 = bank.key(7);
        let argmax = (0..49).max_by(|&a, &b| k8[a].total_cmp(&k8[b])).unwrap();
        assert_eq!(argmax, 24);
    }

    #[test]
    fn random_banks_are_seeded_and_normalised() {
        let a = Bank::random(5, KernelSize::square(7), 3);
        assert_eq!(a, Bank::random(5, KernelSize::square(7), 3));
        assert_ne!(a.keys, Bank::random(5, KernelSize::square(7), 4).keys);
        for i in 0..5 {
            let (mean, norm) = mean_and_centered_norm(a.key(i));
            assert!(mean.abs() < 1e-5 && (norm - 1.0).abs() < 1e-5);
        }
    }

    #[test]
    fn centre_crop_takes_the_middle_and_renormalises() {
        let mut keys = vec![0.0f32; 25];
        keys[12] = 1.0; // centre
        keys[7] = -1.0; // row 1, col 2: above the centre, inside the 3x3 window
        keys[0] = 5.0; // corner, outside the window
        let bank = Bank::new("t", KernelSize::square(5), keys, vec!["k".into()], "", "").unwrap();
        let (small, kept) = bank.resized(KernelSize::square(3));
        assert_eq!(kept, vec![0]);
        let argmax = (0..9).max_by(|&a, &b| small[a].total_cmp(&small[b])).unwrap();
        let argmin = (0..9).min_by(|&a, &b| small[a].total_cmp(&small[b])).unwrap();
        assert_eq!((argmax, argmin), (4, 1));
        let norm: f32 = small.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-6);
        // Padding back up puts the window in the middle again.
        let small_bank = Bank::new("s", KernelSize::square(3), small.clone(), vec!["k".into()], "", "").unwrap();
        let (big, _) = small_bank.resized(KernelSize::square(5));
        assert!((big[12] - small_bank.key(0)[4]).abs() < 1e-6, "{} vs {}", big[12], small_bank.key(0)[4]);
        assert!(big[0].abs() < 1e-6 && big[6] != 0.0);
    }

    #[test]
    fn bank_files_round_trip_and_bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.safetensors");
        let bank = Bank::published8();
        bank.save(&path).unwrap();
        assert_eq!(Bank::load(&path).unwrap(), bank);
        let text_path = dir.path().join("mine.txt");
        fs::write(&text_path, PUBLISHED8_TEXT).unwrap();
        assert_eq!(Bank::load(&text_path).unwrap().keys, bank.keys);
        let bad = dir.path().join("bad.bin");
        fs::write(&bad, b"\x10\x00\x00\x00\x00\x00\x00\x00{\"keys\":").unwrap();
        let err = Bank::load(&bad).unwrap_err().to_string();
        assert!(err.contains("bad.bin"), "{err}");
        let err = Bank::resolve("no-such-bank").unwrap_err().to_string();
        assert!(err.contains("built-in: published8"), "{err}");
    }
}
