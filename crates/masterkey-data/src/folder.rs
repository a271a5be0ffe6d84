//! ImageFolder (ImageNet layout): `root/<class>/<image>.{jpg,jpeg,png}`,
//! classes in sorted name order. Images are decoded when a batch needs them.

use std::path::{Path, PathBuf};

use image::imageops::{self, FilterType};
use image::RgbImage;
use masterkey_core::{Error, Result};

use masterkey_core::rng::SplitMix;

#[derive(Debug)]
pub struct FolderSet {
    pub root: PathBuf,
    pub class_names: Vec<String>,
    pub files: Vec<PathBuf>,
    pub labels: Vec<u16>,
}

fn is_image(path: &Path) -> bool {
    let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    matches!(ext.as_deref(), Some("jpg" | "jpeg" | "png"))
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .map(|e| e.map(|e| e.path()).map_err(|err| Error::io(dir, err)))
        .collect::<Result<_>>()?;
    entries.sort();
    Ok(entries)
}

impl FolderSet {
    /// Lists `root`; `classes` (from the training split) fixes the label of
    /// each class folder so that splits agree.
    pub fn open(root: &Path, classes: Option<&[String]>) -> Result<Self> {
        if !root.is_dir() {
            return Err(Error::invalid(root, "missing: expected a folder with one subfolder per class"));
        }
        let found: Vec<PathBuf> = sorted_entries(root)?.into_iter().filter(|p| p.is_dir()).collect();
        let class_names: Vec<String> = match classes {
            Some(c) => c.to_vec(),
            None => found.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect(),
        };
        let (mut files, mut labels) = (Vec::new(), Vec::new());
        for dir in &found {
            let name = dir.file_name().unwrap().to_string_lossy();
            let label = class_names
                .iter()
                .position(|c| *c == name)
                .ok_or_else(|| Error::invalid(dir, "class folder not present in the training split".to_string()))?;
            for file in sorted_entries(dir)?.into_iter().filter(|p| is_image(p)) {
                files.push(file);
                labels.push(label as u16);
            }
        }
        if files.is_empty() {
            return Err(Error::invalid(root, "expected JPEG or PNG images in class subfolders, found none"));
        }
        Ok(FolderSet { root: root.to_path_buf(), class_names, files, labels })
    }

    fn decode(&self, i: usize) -> Result<RgbImage> {
        let path = &self.files[i];
        let reader = image::ImageReader::open(path).map_err(|e| Error::io(path, e))?;
        let img = reader
            .with_guessed_format()
            .map_err(|e| Error::io(path, e))?
            .decode()
            .map_err(|e| Error::invalid(path, format!("cannot decode image: {e}")))?;
        Ok(img.to_rgb8())
    }

    /// Image `i` as `3 x size x size` bytes: random-resized crop (scale
    /// 0.08-1, aspect 3/4-4/3) and flip when `rng` is given, else resize
    /// the short side to `size * 8/7` and take the centre crop.
    pub fn load(&self, i: usize, size: usize, rng: Option<&mut SplitMix>) -> Result<Vec<u8>> {
        let img = self.decode(i)?;
        let (w, h) = img.dimensions();
        let out = match rng {
            Some(rng) => {
                let (x, y, cw, ch) = random_resized_crop(w, h, rng);
                let mut out = imageops::resize(
                    &imageops::crop_imm(&img, x, y, cw, ch).to_image(),
                    size as u32,
                    size as u32,
                    FilterType::Triangle,
                );
                if rng.uniform() < 0.5 {
                    imageops::flip_horizontal_in_place(&mut out);
                }
                out
            }
            None => {
                let short = (size as f32 * 8.0 / 7.0).round() as u32;
                let (rw, rh) = if w < h { (short, (h * short).div_ceil(w)) } else { ((w * short).div_ceil(h), short) };
                let resized = imageops::resize(&img, rw, rh, FilterType::Triangle);
                let (x, y) = ((rw - size as u32) / 2, (rh - size as u32) / 2);
                imageops::crop_imm(&resized, x, y, size as u32, size as u32).to_image()
            }
        };
        // Interleaved RGB to channel planes.
        let plane = size * size;
        let mut chw = vec![0u8; 3 * plane];
        for (p, px) in out.pixels().enumerate() {
            for c in 0..3 {
                chw[c * plane + p] = px.0[c];
            }
        }
        Ok(chw)
    }
}

/// torchvision's `RandomResizedCrop` box: 10 tries at a random area share
/// and log-uniform aspect, then the centre crop as fallback.
fn random_resized_crop(w: u32, h: u32, rng: &mut SplitMix) -> (u32, u32, u32, u32) {
    let area = (w * h) as f32;
    for _ in 0..10 {
        let target = area * (0.08 + rng.uniform() * 0.92);
        let log_ratio = (3.0f32 / 4.0).ln() + rng.uniform() * ((4.0f32 / 3.0).ln() - (3.0f32 / 4.0).ln());
        let ratio = log_ratio.exp();
        let cw = (target * ratio).sqrt().round() as u32;
        let ch = (target / ratio).sqrt().round() as u32;
        if cw > 0 && ch > 0 && cw <= w && ch <= h {
            return (rng.below((w - cw + 1) as usize) as u32, rng.below((h - ch + 1) as usize) as u32, cw, ch);
        }
    }
    let side = w.min(h);
    ((w - side) / 2, (h - side) / 2, side, side)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_classes_decodes_and_crops() {
        let dir = tempfile::tempdir().unwrap();
        for (class, colour) in [("cat", [200u8, 10, 10]), ("dog", [10, 10, 200])] {
            std::fs::create_dir_all(dir.path().join(class)).unwrap();
            let img = RgbImage::from_pixel(40, 30, image::Rgb(colour));
            img.save(dir.path().join(class).join("a.png")).unwrap();
            img.save(dir.path().join(class).join("b.jpg")).unwrap();
        }
        std::fs::write(dir.path().join("dog").join("notes.txt"), "not an image").unwrap();
        let set = FolderSet::open(dir.path(), None).unwrap();
        assert_eq!(set.class_names, vec!["cat", "dog"]);
        assert_eq!(set.labels, vec![0, 0, 1, 1]);
        let centre = set.load(2, 16, None).unwrap();
        assert_eq!(centre.len(), 3 * 256);
        assert!(centre[2 * 256] > 150 && centre[0] < 60, "blue plane last");
        let mut rng = SplitMix::new(1);
        assert_eq!(set.load(0, 16, Some(&mut rng)).unwrap().len(), 3 * 256);

        std::fs::write(dir.path().join("cat").join("c.png"), b"broken").unwrap();
        let set = FolderSet::open(dir.path(), None).unwrap();
        let err = set.load(2, 16, None).unwrap_err().to_string();
        assert!(err.contains("c.png") && err.contains("decode"), "{err}");
        let err = FolderSet::open(&dir.path().join("nope"), None).unwrap_err().to_string();
        assert!(err.contains("nope") && err.contains("missing"), "{err}");
    }
}
