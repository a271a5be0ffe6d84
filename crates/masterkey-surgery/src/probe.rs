//! Label-free evaluation of a surgically changed network: the original
//! network's outputs on a set of images are the reference, and a changed
//! network is scored by how often its top-1 class agrees, how much its top-5
//! overlaps, and the mean KL divergence `KL(original || changed)` of the
//! softmax outputs.

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use masterkey_core::{Bank, Error, Result};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::efficientnet_lite0::{EfficientNetLite0, CLASSES, INPUT_SIZE};
use crate::images::{self, Input};
use crate::replace::{replace_all, replace_layer, LayerFit};
use crate::state_dict::StateDict;

/// Images per forward pass: bounds the activations held at once (~80 MB per
/// activation tensor at 16 images) while keeping the matrix products large.
const BATCH: usize = 16;
/// Default number of random views of the shipped photos.
pub const DEFAULT_VIEWS: usize = 48;
pub const DEFAULT_SEED: u64 = 0;
/// Dead-filter tolerance of the replacement (as `fit` uses by default).
pub const DEAD_TOLERANCE: f32 = masterkey_core::kernel::DEFAULT_DEAD_TOLERANCE;

/// Where the probe's images come from.
#[derive(Debug, Clone, PartialEq)]
pub enum ImageSet {
    /// `views` random crops and mirror images of the photos that
    /// scikit-image and scikit-learn ship (fetched and verified), seeded.
    Shipped { views: usize, seed: u64 },
    /// Every PNG / JPEG of a folder, by the evaluation transform.
    Folder(PathBuf),
}

impl ImageSet {
    pub fn describe(&self) -> String {
        match self {
            ImageSet::Shipped { views, seed } => format!(
                "{views} random crops (25-100% of the area, aspect 3:4-4:3, mirrored half the time; seed {seed}) \
                 of the {} photos shipped by scikit-image and scikit-learn",
                masterkey_fetch::PHOTOS.len()
            ),
            ImageSet::Folder(dir) => format!("the images of {} (resize 256, centre crop 224)", dir.display()),
        }
    }

    /// The preprocessed images.
    pub fn inputs(&self) -> Result<Vec<Input>> {
        match self {
            ImageSet::Shipped { views, seed } => {
                let photos = masterkey_fetch::PHOTOS
                    .iter()
                    .map(|m| images::load_rgb(&masterkey_fetch::ensure(m)?))
                    .collect::<Result<Vec<_>>>()?;
                let mut rng = ChaCha8Rng::seed_from_u64(*seed);
                Ok((0..*views).map(|i| images::random_view(&photos[i % photos.len()], &mut rng)).collect())
            }
            ImageSet::Folder(dir) => images::folder_images(dir)?
                .iter()
                .map(|path| images::load_rgb(path).map(|image| images::eval_input(&image)))
                .collect(),
        }
    }
}

/// How closely a changed network follows the original on the probe images.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Agreement {
    pub images: usize,
    /// Share of images whose top-1 class is the original's.
    pub top1: f64,
    /// Mean share of the original's top-5 classes among the changed top-5.
    pub top5_overlap: f64,
    /// Mean `KL(original || changed)` of the softmax outputs, in nats.
    pub mean_kl: f64,
}

/// One layer replaced alone: its fit and the network's agreement.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerSensitivity {
    #[serde(flatten)]
    pub fit: LayerFit,
    #[serde(flatten)]
    pub agreement: Agreement,
}

/// The original network's outputs on a fixed image set, against which
/// changed weights are scored. Build it once and score many banks (as a
/// search's scorer would).
pub struct Probe<B: Backend> {
    original: StateDict,
    batches: Vec<Tensor<B, 4>>,
    /// `images x CLASSES` logits of the original network.
    reference: Vec<f32>,
    device: B::Device,
}

impl<B: Backend> Probe<B> {
    /// Runs the original network (an EfficientNet-Lite0 state dict) on the images.
    pub fn new(original: StateDict, inputs: &[Input], device: &B::Device) -> Result<Self> {
        if inputs.is_empty() {
            return Err(Error::Other("the probe needs at least one image".into()));
        }
        let pixels = 3 * INPUT_SIZE * INPUT_SIZE;
        let batches = inputs
            .chunks(BATCH)
            .map(|chunk| {
                let flat: Vec<f32> = chunk.iter().flat_map(|image| image.iter().copied()).collect();
                debug_assert_eq!(flat.len(), chunk.len() * pixels);
                Tensor::from_data(TensorData::new(flat, [chunk.len(), 3, INPUT_SIZE, INPUT_SIZE]), device)
            })
            .collect();
        let mut probe = Probe { original, batches, reference: Vec::new(), device: device.clone() };
        probe.reference = probe.logits(&probe.original)?;
        Ok(probe)
    }

    pub fn original(&self) -> &StateDict {
        &self.original
    }

    pub fn images(&self) -> usize {
        self.reference.len() / CLASSES
    }

    /// Logits of the network with these weights on every probe image.
    pub fn logits(&self, weights: &StateDict) -> Result<Vec<f32>> {
        let net = EfficientNetLite0::<B>::from_state_dict(weights, &self.device)?;
        let mut out = Vec::with_capacity(self.reference.len());
        for batch in &self.batches {
            let logits = net.forward(batch.clone()).into_data();
            out.extend(logits.to_vec::<f32>().map_err(|e| Error::Other(format!("reading logits: {e:?}")))?);
        }
        Ok(out)
    }

    /// Agreement of the network with these weights with the original.
    pub fn agreement(&self, weights: &StateDict) -> Result<Agreement> {
        Ok(compare(&self.reference, &self.logits(weights)?))
    }

    /// Every depthwise filter replaced by its fit to `bank`.
    pub fn bank(&self, bank: &Bank) -> Result<(Agreement, Vec<LayerFit>)> {
        self.banks(std::slice::from_ref(bank))
    }

    /// Every depthwise filter replaced by its fit to the bank of its kernel
    /// size (see [`crate::replace::bank_for`]).
    pub fn banks(&self, banks: &[Bank]) -> Result<(Agreement, Vec<LayerFit>)> {
        let mut weights = self.original.clone();
        let fits = replace_all(&mut weights, banks, DEAD_TOLERANCE)?;
        Ok((self.agreement(&weights)?, fits))
    }

    /// Top-1 agreement with every depthwise filter replaced: a search scorer.
    pub fn score(&self, bank: &Bank) -> Result<f64> {
        Ok(self.bank(bank)?.0.top1)
    }

    /// Each depthwise layer replaced alone, in model order; `on_layer` sees
    /// each result as it comes (for progress).
    pub fn per_layer(&self, bank: &Bank, mut on_layer: impl FnMut(&LayerSensitivity)) -> Result<Vec<LayerSensitivity>> {
        let mut out = Vec::new();
        for layer in self.original.depthwise_layers()? {
            let (replaced, fit) = replace_layer(&layer, bank, DEAD_TOLERANCE);
            let mut weights = self.original.clone();
            weights.set_layer(&replaced)?;
            let result = LayerSensitivity { fit, agreement: self.agreement(&weights)? };
            on_layer(&result);
            out.push(result);
        }
        Ok(out)
    }
}

/// Top-1 agreement of EfficientNet-Lite0 at `model` with all its depthwise
/// filters replaced by their fit to `bank`, on the default probe images.
/// Runs the original network each call: to score many banks, build a
/// [`Probe`] once and call [`Probe::score`].
pub fn probe_agreement(model: &Path, bank: &Bank) -> Result<f64> {
    let images = ImageSet::Shipped { views: DEFAULT_VIEWS, seed: DEFAULT_SEED }.inputs()?;
    Probe::<crate::Cpu>::new(StateDict::read(model)?, &images, &Default::default())?.score(bank)
}

/// Compares two `images x CLASSES` logit tables.
fn compare(reference: &[f32], changed: &[f32]) -> Agreement {
    let images = reference.len() / CLASSES;
    let (mut top1, mut overlap, mut kl) = (0usize, 0usize, 0.0f64);
    for (p, q) in reference.chunks_exact(CLASSES).zip(changed.chunks_exact(CLASSES)) {
        let (tp, tq) = (top5(p), top5(q));
        top1 += usize::from(tp[0] == tq[0]);
        overlap += tp.iter().filter(|c| tq.contains(c)).count();
        let (lp, lq) = (log_softmax(p), log_softmax(q));
        kl += lp.iter().zip(&lq).map(|(a, b)| a.exp() * (a - b)).sum::<f64>();
    }
    let n = images.max(1) as f64;
    Agreement { images, top1: top1 as f64 / n, top5_overlap: overlap as f64 / (5.0 * n), mean_kl: kl / n }
}

/// The five largest logits' classes, largest first (ties: lower class first).
fn top5(logits: &[f32]) -> [usize; 5] {
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    [order[0], order[1], order[2], order[3], order[4]]
}

fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
    let log_sum = logits.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln() + max;
    logits.iter().map(|&v| v as f64 - log_sum).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(hot: &[(usize, f32)]) -> Vec<f32> {
        let mut r = vec![0.0; CLASSES];
        for &(c, v) in hot {
            r[c] = v;
        }
        r
    }

    #[test]
    fn identical_outputs_agree_fully_with_zero_kl() {
        let a = [row(&[(3, 5.0), (7, 4.0)]), row(&[(9, 2.0)])].concat();
        let agreement = compare(&a, &a);
        assert_eq!((agreement.images, agreement.top1, agreement.top5_overlap), (2, 1.0, 1.0));
        assert!(agreement.mean_kl.abs() < 1e-12);
    }

    #[test]
    fn metrics_count_top1_top5_and_kl() {
        // Image 1: same top-1; image 2: top-1 swapped with the runner-up.
        let p = [row(&[(1, 9.0), (2, 8.0), (3, 7.0), (4, 6.0), (5, 5.0)]), row(&[(10, 9.0), (11, 8.0)])].concat();
        let q = [row(&[(1, 9.0), (2, 8.0), (3, 7.0), (4, 6.0), (6, 5.5)]), row(&[(10, 8.0), (11, 9.0)])].concat();
        let a = compare(&p, &q);
        assert_eq!(a.top1, 0.5);
        // Image 1 shares 4 of 5 (5 is out, 6 is in); image 2's top-5 are 10, 11 and the three
        // lowest-numbered zero logits in both.
        assert!((a.top5_overlap - 0.9).abs() < 1e-12, "{}", a.top5_overlap);
        assert!(a.mean_kl > 0.0);
        // KL is not symmetric but both directions are positive here.
        assert!(compare(&q, &p).mean_kl > 0.0);
    }

    #[test]
    fn log_softmax_is_stable_for_large_logits() {
        let l = log_softmax(&[1000.0, 1000.0]);
        assert!((l[0] - (0.5f64).ln()).abs() < 1e-12 && (l[1] - l[0]).abs() < 1e-12);
    }
}
