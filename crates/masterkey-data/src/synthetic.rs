//! A small synthetic classification set for tests and smoke runs: grey
//! `size x size` images of stripes with random phase and noise; the class
//! (9 of them) is the stripes' orientation (horizontal, vertical, diagonal)
//! times their period (2, 4 or 8 px), so it can be told apart anywhere in the
//! image, as a pooled convolutional network must.

use std::path::Path;

use masterkey_core::Result;

use crate::idx::write_idx;
use crate::ImageSet;
use masterkey_core::rng::SplitMix;

pub const CLASSES: usize = 9;

/// `n` images; image `i` has class `i mod 9`.
pub fn make(n: usize, size: usize, seed: u64) -> ImageSet {
    let mut rng = SplitMix::new(seed);
    let mut pixels = Vec::with_capacity(n * size * size);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let class = i % CLASSES;
        let period = [2.0f32, 4.0, 8.0][class % 3];
        let phase = rng.uniform() * std::f32::consts::TAU;
        for y in 0..size {
            for x in 0..size {
                let along = match class / 3 {
                    0 => y as f32,
                    1 => x as f32,
                    _ => (x + y) as f32 / std::f32::consts::SQRT_2,
                };
                let wave = (std::f32::consts::TAU * along / period + phase).sin();
                let v = 128.0 + 70.0 * wave + 50.0 * (rng.uniform() - 0.5);
                pixels.push(v.clamp(0.0, 255.0) as u8);
            }
        }
        labels.push(class as u16);
    }
    ImageSet::new("synthetic", pixels, labels, [1, size, size], CLASSES).expect("consistent sizes")
}

/// Writes `train` and `t10k` splits in MNIST layout (plain IDX) into `dir`.
pub fn write_idx_folder(dir: &Path, train: usize, test: usize, size: usize, seed: u64) -> Result<()> {
    for (prefix, n, s) in [("train", train, seed), ("t10k", test, seed ^ 0xface)] {
        let set = make(n, size, s);
        write_idx(&dir.join(format!("{prefix}-images-idx3-ubyte")), &[n, size, size], &set.pixels)?;
        let labels: Vec<u8> = set.labels.iter().map(|&l| l as u8).collect();
        write_idx(&dir.join(format!("{prefix}-labels-idx1-ubyte")), &[n], &labels)?;
    }
    Ok(())
}
