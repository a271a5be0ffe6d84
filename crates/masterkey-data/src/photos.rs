//! A natural-image classification task without labels, the Exemplar-CNN way
//! (Dosovitskiy et al., "Discriminative Unsupervised Feature Learning with
//! Convolutional Neural Networks", NeurIPS 2014): seed patches are drawn from
//! photos, each seed is its own class, and every sample is a random
//! transformation of its seed (position, scale, rotation, flip, contrast and
//! colour). Train and test samples are independent draws of those
//! transformations; no photo is held out, because a class lives in one photo.

use image::RgbImage;
use masterkey_core::rng::SplitMix;
use masterkey_core::{Error, Result};

use crate::ImageSet;

/// The task's sizes and its seed (`--dataset photos` takes the size and
/// the seed from the data settings a checkpoint keeps, the rest as default).
#[derive(Debug, Clone, PartialEq)]
pub struct ExemplarSpec {
    /// Seed patches, one class each, spread over the photos in turn.
    pub classes: usize,
    pub train_per_class: usize,
    pub test_per_class: usize,
    /// Side of the samples, in pixels (RGB).
    pub size: usize,
    /// Side of a seed patch in the photo, in photo pixels.
    pub patch: usize,
    pub seed: u64,
}

impl Default for ExemplarSpec {
    fn default() -> Self {
        ExemplarSpec { classes: 100, train_per_class: 100, test_per_class: 20, size: 32, patch: 64, seed: 0 }
    }
}

/// The ranges of the random transformations (Exemplar-CNN's, colour kept
/// simpler: a gain per channel instead of the principal-component powers).
const MAX_SHIFT: f32 = 0.2; // of the patch side
const SCALES: (f32, f32) = (0.7, 1.4);
const MAX_ROTATION_DEG: f32 = 20.0;
const CONTRASTS: (f32, f32) = (0.7, 1.4);
const CHANNEL_GAINS: (f32, f32) = (0.8, 1.2);
const MAX_BRIGHTNESS: f32 = 0.1 * 255.0;
/// Candidate positions per seed; the one with the most gradient energy is
/// kept, as Exemplar-CNN favours patches with structure over flat sky.
const CANDIDATES: usize = 8;

fn log_uniform(rng: &mut SplitMix, (lo, hi): (f32, f32)) -> f32 {
    (lo.ln() + rng.uniform() * (hi.ln() - lo.ln())).exp()
}

fn symmetric(rng: &mut SplitMix, half_width: f32) -> f32 {
    (2.0 * rng.uniform() - 1.0) * half_width
}

/// Bilinear sample of `photo` at `(x, y)` (pixel centres at integers),
/// clamped to the border.
fn sample(photo: &RgbImage, x: f32, y: f32) -> [f32; 3] {
    let (w, h) = (photo.width() as f32, photo.height() as f32);
    let (x, y) = (x.clamp(0.0, w - 1.0), y.clamp(0.0, h - 1.0));
    let (x0, y0) = (x.floor(), y.floor());
    let (fx, fy) = (x - x0, y - y0);
    let (x0, y0) = (x0 as u32, y0 as u32);
    let (x1, y1) = ((x0 + 1).min(photo.width() - 1), (y0 + 1).min(photo.height() - 1));
    let mut out = [0.0; 3];
    for (c, value) in out.iter_mut().enumerate() {
        let at = |x: u32, y: u32| photo.get_pixel(x, y).0[c] as f32;
        let top = at(x0, y0) * (1.0 - fx) + at(x1, y0) * fx;
        let bottom = at(x0, y1) * (1.0 - fx) + at(x1, y1) * fx;
        *value = top * (1.0 - fy) + bottom * fy;
    }
    out
}

/// Sum of squared horizontal and vertical differences of the grey values in
/// the `side`-pixel square at `(x, y)`.
fn gradient_energy(photo: &RgbImage, x: u32, y: u32, side: u32) -> f64 {
    let grey = |x: u32, y: u32| photo.get_pixel(x, y).0.iter().map(|&v| v as f64).sum::<f64>() / 3.0;
    let mut energy = 0.0;
    for j in y..y + side - 1 {
        for i in x..x + side - 1 {
            let g = grey(i, j);
            energy += (grey(i + 1, j) - g).powi(2) + (grey(i, j + 1) - g).powi(2);
        }
    }
    energy
}

/// A seed patch: the photo it lies in and its centre.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Seed {
    photo: usize,
    centre: (f32, f32),
}

fn draw_seeds(photos: &[(String, RgbImage)], spec: &ExemplarSpec) -> Vec<Seed> {
    (0..spec.classes)
        .map(|class| {
            let photo = class % photos.len();
            let img = &photos[photo].1;
            let side = spec.patch as u32;
            let mut rng = SplitMix::for_item(spec.seed, 0x5eed_7a7c, class as u64);
            let best = (0..CANDIDATES)
                .map(|_| {
                    let x = rng.below((img.width() - side + 1) as usize) as u32;
                    let y = rng.below((img.height() - side + 1) as usize) as u32;
                    (gradient_energy(img, x, y, side), x, y)
                })
                .max_by(|a, b| a.0.total_cmp(&b.0))
                .expect("at least one candidate");
            let centre = (best.1 as f32 + spec.patch as f32 / 2.0 - 0.5, best.2 as f32 + spec.patch as f32 / 2.0 - 0.5);
            Seed { photo, centre }
        })
        .collect()
}

/// One random transformation of `seed`, written as `3 x size x size` bytes.
fn render(photos: &[(String, RgbImage)], seed: Seed, spec: &ExemplarSpec, rng: &mut SplitMix, out: &mut [u8]) {
    let patch = spec.patch as f32;
    let centre = (seed.centre.0 + symmetric(rng, MAX_SHIFT * patch), seed.centre.1 + symmetric(rng, MAX_SHIFT * patch));
    let scale = log_uniform(rng, SCALES);
    let (sin, cos) = symmetric(rng, MAX_ROTATION_DEG).to_radians().sin_cos();
    let flip = rng.uniform() < 0.5;
    let contrast = log_uniform(rng, CONTRASTS);
    let gains = [0; 3].map(|_| log_uniform(rng, CHANNEL_GAINS));
    let brightness = symmetric(rng, MAX_BRIGHTNESS);

    let size = spec.size;
    // Photo pixels per output pixel; each output pixel averages 2x2 samples
    // so that the shrink from the patch does not alias.
    let step = scale * patch / size as f32;
    let mut values = vec![[0f32; 3]; size * size];
    for (v, row) in values.chunks_exact_mut(size).enumerate() {
        for (u, value) in row.iter_mut().enumerate() {
            let u = if flip { size - 1 - u } else { u };
            for (du, dv) in [(-0.25, -0.25), (0.25, -0.25), (-0.25, 0.25), (0.25, 0.25)] {
                let (px, py) = (
                    (u as f32 + 0.5 + du - size as f32 / 2.0) * step,
                    (v as f32 + 0.5 + dv - size as f32 / 2.0) * step,
                );
                let (x, y) = (centre.0 + cos * px - sin * py, centre.1 + sin * px + cos * py);
                let s = sample(&photos[seed.photo].1, x, y);
                value.iter_mut().zip(s).for_each(|(acc, s)| *acc += s / 4.0);
            }
        }
    }
    let mean: f32 = values.iter().flat_map(|p| p.iter()).sum::<f32>() / (3 * size * size) as f32;
    let plane = size * size;
    for (p, value) in values.iter().enumerate() {
        for c in 0..3 {
            let v = mean + (value[c] * gains[c] - mean) * contrast + brightness;
            out[c * plane + p] = v.round().clamp(0.0, 255.0) as u8;
        }
    }
}

/// Decodes the photos at `paths` as RGB, each named by its file stem.
pub fn decode_all(paths: &[std::path::PathBuf]) -> Result<Vec<(String, RgbImage)>> {
    paths
        .iter()
        .map(|path| {
            let img = image::ImageReader::open(path)
                .and_then(|r| r.with_guessed_format())
                .map_err(|e| Error::io(path, e))?
                .decode()
                .map_err(|e| Error::invalid(path, format!("expected a PNG or JPEG photo: {e}")))?;
            let name =
                path.file_stem().map_or_else(|| path.display().to_string(), |s| s.to_string_lossy().into_owned());
            Ok((name, img.to_rgb8()))
        })
        .collect()
}

/// The train and test sets of the task on `photos` (each at least
/// `spec.patch` pixels on its shorter side).
pub fn exemplar_task(photos: &[(String, RgbImage)], spec: &ExemplarSpec) -> Result<(ImageSet, ImageSet)> {
    if photos.is_empty() || spec.classes == 0 || spec.train_per_class == 0 || spec.test_per_class == 0 {
        return Err(Error::Other("the exemplar task needs photos, classes and samples per class".into()));
    }
    if spec.classes > u16::MAX as usize + 1 || spec.size == 0 || spec.patch < 2 {
        return Err(Error::Other(format!(
            "the exemplar task cannot have {} classes of {} px",
            spec.classes, spec.size
        )));
    }
    if let Some((name, img)) = photos.iter().find(|(_, img)| img.width().min(img.height()) < spec.patch as u32) {
        return Err(Error::Other(format!(
            "photo `{name}` is {}x{}, smaller than the {} px seed patches",
            img.width(),
            img.height(),
            spec.patch
        )));
    }
    let seeds = draw_seeds(photos, spec);
    let per = 3 * spec.size * spec.size;
    let split = |which: u64, per_class: usize, name: &str| {
        let n = spec.classes * per_class;
        let mut pixels = vec![0u8; n * per];
        let labels: Vec<u16> = (0..n).map(|i| (i / per_class) as u16).collect();
        for (i, out) in pixels.chunks_exact_mut(per).enumerate() {
            let (class, sample) = (i / per_class, i % per_class);
            let mut rng = SplitMix::for_item(spec.seed ^ which, class as u64, sample as u64);
            render(photos, seeds[class], spec, &mut rng, out);
        }
        ImageSet::new(name, pixels, labels, [3, spec.size, spec.size], spec.classes).map_err(Error::Other)
    };
    Ok((split(0x7a1, spec.train_per_class, "photos train")?, split(0x7e57, spec.test_per_class, "photos test")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A photo with structure in one corner only (a checkerboard) and flat
    /// grey elsewhere.
    fn photo() -> RgbImage {
        RgbImage::from_fn(200, 150, |x, y| {
            if x < 100 && y < 100 {
                let on = ((x / 6) + (y / 6)) % 2 == 0;
                image::Rgb(if on { [250, 200, 30] } else { [10, 40, 90] })
            } else {
                image::Rgb([128, 128, 128])
            }
        })
    }

    #[test]
    fn seeds_prefer_structure_and_every_sample_is_its_own_draw() {
        let photos = vec![("board".to_string(), photo())];
        let spec = ExemplarSpec { classes: 3, train_per_class: 4, test_per_class: 2, size: 16, patch: 40, seed: 1 };
        let (train, test) = exemplar_task(&photos, &spec).unwrap();
        assert_eq!((train.len(), test.len(), train.shape, train.classes), (12, 6, [3, 16, 16], 3));
        assert_eq!(&train.labels[..5], &[0, 0, 0, 0, 1]);
        // Seeds overlap the checkerboard: samples are not flat grey.
        for i in 0..train.len() {
            let img = train.image(i);
            let (lo, hi) = (img.iter().min().unwrap(), img.iter().max().unwrap());
            assert!(hi - lo > 60, "sample {i} is flat: {lo}..{hi}");
        }
        // Transformations differ between samples and between the splits.
        assert_ne!(train.image(0), train.image(1));
        assert!((0..test.len()).all(|i| (0..train.len()).all(|j| test.image(i) != train.image(j))));
        // Seeded: the same task twice.
        let again = exemplar_task(&photos, &spec).unwrap().0;
        assert_eq!(train.pixels, again.pixels);
        let other = exemplar_task(&photos, &ExemplarSpec { seed: 2, ..spec.clone() }).unwrap().0;
        assert_ne!(train.pixels, other.pixels);
    }

    #[test]
    fn photos_smaller_than_a_patch_are_named() {
        let small = vec![("tiny".to_string(), RgbImage::new(30, 80))];
        let err = exemplar_task(&small, &ExemplarSpec::default()).unwrap_err().to_string();
        assert!(err.contains("tiny") && err.contains("30x80"), "{err}");
    }
}
