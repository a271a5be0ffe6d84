//! Images to network inputs. The evaluation transform is EfficientNet-Lite's
//! (project REFERENCE §4): resize so the shorter side is 256, crop the
//! centre 224 x 224, then `(x - 127) / 128` per channel, RGB, `[3, H, W]`.
//! Resizing is bilinear with antialiasing (a triangle filter widened when
//! shrinking, as PIL and torchvision do).

use std::path::{Path, PathBuf};

use image::imageops::{self, FilterType};
use image::RgbImage;
use masterkey_core::{Error, Result};
use rand::Rng;

use crate::efficientnet_lite0::INPUT_SIZE;

/// Shorter side after the first resize of the evaluation transform.
pub const RESIZE_SHORTER: u32 = 256;
const MEAN: f32 = 127.0;
const STD: f32 = 128.0;

/// One preprocessed image, `[3, 224, 224]` row-major.
pub type Input = Vec<f32>;

/// Decodes a PNG or JPEG file as 8-bit RGB (grey and alpha are converted).
pub fn load_rgb(path: &Path) -> Result<RgbImage> {
    let reader = image::ImageReader::open(path).map_err(|e| Error::io(path, e))?;
    let reader = reader.with_guessed_format().map_err(|e| Error::io(path, e))?;
    let decoded = reader.decode().map_err(|e| Error::invalid(path, format!("expected a PNG or JPEG image: {e}")))?;
    Ok(decoded.to_rgb8())
}

/// The evaluation transform.
pub fn eval_input(image: &RgbImage) -> Input {
    let (w, h) = image.dimensions();
    // The longer side is scaled by the same factor and truncated, as torchvision does.
    let (rw, rh) = if w <= h {
        (RESIZE_SHORTER, (h as u64 * RESIZE_SHORTER as u64 / w as u64) as u32)
    } else {
        ((w as u64 * RESIZE_SHORTER as u64 / h as u64) as u32, RESIZE_SHORTER)
    };
    let resized = imageops::resize(image, rw, rh, FilterType::Triangle);
    let side = INPUT_SIZE as u32;
    let left = ((rw - side) as f64 / 2.0).round() as u32;
    let top = ((rh - side) as f64 / 2.0).round() as u32;
    normalised(&imageops::crop_imm(&resized, left, top, side, side).to_image())
}

/// A random crop of 25% to 100% of the image's area with an aspect ratio
/// between 3:4 and 4:3 (log-uniform), resized to 224 x 224 and mirrored
/// with probability 1/2: varied views of a few photos for a label-free probe.
pub fn random_view(image: &RgbImage, rng: &mut impl Rng) -> Input {
    let (w, h) = image.dimensions();
    let area = w as f64 * h as f64;
    let log_ratios = (3.0f64 / 4.0).ln()..(4.0f64 / 3.0).ln();
    // Draws that do not fit are redrawn; a square of the shorter side is the fallback.
    let mut crop = None;
    for _ in 0..10 {
        let target = area * rng.random_range(0.25..1.0);
        let ratio = rng.random_range(log_ratios.clone()).exp();
        let cw = (target * ratio).sqrt().round() as u32;
        let ch = (target / ratio).sqrt().round() as u32;
        if (1..=w).contains(&cw) && (1..=h).contains(&ch) {
            let left = rng.random_range(0..=w - cw);
            let top = rng.random_range(0..=h - ch);
            crop = Some((left, top, cw, ch));
            break;
        }
    }
    let side = w.min(h);
    let (left, top, cw, ch) = crop.unwrap_or(((w - side) / 2, (h - side) / 2, side, side));
    let cropped = imageops::crop_imm(image, left, top, cw, ch).to_image();
    let mut view = imageops::resize(&cropped, INPUT_SIZE as u32, INPUT_SIZE as u32, FilterType::Triangle);
    if rng.random_bool(0.5) {
        imageops::flip_horizontal_in_place(&mut view);
    }
    normalised(&view)
}

/// `(x - 127) / 128`, channel-major.
fn normalised(image: &RgbImage) -> Input {
    let (w, h) = image.dimensions();
    let plane = (w * h) as usize;
    let mut out = vec![0.0f32; 3 * plane];
    for (i, pixel) in image.pixels().enumerate() {
        for c in 0..3 {
            out[c * plane + i] = (pixel[c] as f32 - MEAN) / STD;
        }
    }
    out
}

/// The image files of a folder (PNG and JPEG by extension), sorted by name.
pub fn folder_images(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
        if matches!(ext.as_deref(), Some("png" | "jpg" | "jpeg")) {
            files.push(path);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(Error::invalid(dir, "expected PNG or JPEG images (.png, .jpg, .jpeg), found none"));
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// A horizontal ramp: red = column, green = row, blue constant.
    fn ramp(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| image::Rgb([(x % 256) as u8, (y % 256) as u8, 200]))
    }

    #[test]
    fn eval_input_is_a_normalised_centre_crop() {
        let input = eval_input(&ramp(512, 256));
        assert_eq!(input.len(), 3 * 224 * 224);
        // The shorter side is already 256, so only the crop acts: rows 16..240.
        let plane = 224 * 224;
        assert!(input[2 * plane..].iter().all(|&b| (b - (200.0 - 127.0) / 128.0).abs() < 1e-6), "blue plane");
        let green_top = input[plane];
        let green_bottom = input[plane + 223 * 224];
        assert!((green_top - (16.0 - 127.0) / 128.0).abs() < 0.02, "row 16 of 256 at the top: {green_top}");
        assert!((green_bottom - (239.0 - 127.0) / 128.0).abs() < 0.02, "{green_bottom}");
    }

    #[test]
    fn random_views_are_seeded_and_differ() {
        let image = ramp(300, 200);
        let a = random_view(&image, &mut ChaCha8Rng::seed_from_u64(5));
        let b = random_view(&image, &mut ChaCha8Rng::seed_from_u64(5));
        let c = random_view(&image, &mut ChaCha8Rng::seed_from_u64(6));
        assert_eq!(a.len(), 3 * 224 * 224);
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn an_empty_folder_and_a_broken_image_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = folder_images(dir.path()).unwrap_err().to_string();
        assert!(err.contains("found none"), "{err}");
        let bad = dir.path().join("bad.png");
        std::fs::write(&bad, b"not a png").unwrap();
        assert_eq!(folder_images(dir.path()).unwrap(), vec![bad.clone()]);
        let err = load_rgb(&bad).unwrap_err().to_string();
        assert!(err.contains("bad.png") && err.contains("expected a PNG or JPEG"), "{err}");
    }
}
