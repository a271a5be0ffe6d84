//! A search scorer driven by network behaviour, as in the paper: a candidate
//! bank is scored by how closely EfficientNet-Lite0 follows its original
//! outputs once the depthwise filters of the bank's kernel size are replaced
//! by their fits (layers of other sizes stay as trained).
//!
//! The score is minus the mean `KL(original || replaced)`, not top-1
//! agreement: on the few dozen images a scorer can afford per call, top-1
//! moves in whole images and ties most trial removals, while the divergence
//! ranks every one of them.

use std::sync::Mutex;

use burn::tensor::backend::Backend;
use masterkey_core::{Bank, DwLayer, Error, KernelSize, Result};
use masterkey_search::Scorer;

use crate::probe::{Probe, DEAD_TOLERANCE};
use crate::replace::replace_layer;

pub struct ProbeScorer<B: Backend> {
    probe: Probe<B>,
    kernel: KernelSize,
    /// The network's depthwise layers of `kernel`, read once.
    layers: Vec<DwLayer>,
    images: String,
    /// The first error a score call met (its score was minus infinity).
    failure: Mutex<Option<Error>>,
}

impl<B: Backend> ProbeScorer<B> {
    /// Scores banks of `kernel` keys; fails if the network has no depthwise
    /// layer of that size. `images` describes the probe's images.
    pub fn new(probe: Probe<B>, kernel: KernelSize, images: String) -> Result<Self> {
        let layers: Vec<DwLayer> =
            probe.original().depthwise_layers()?.into_iter().filter(|l| l.kernel == kernel).collect();
        if layers.is_empty() {
            return Err(Error::Other(format!(
                "the probe network has no {kernel} depthwise layer for a {kernel} bank to replace"
            )));
        }
        Ok(ProbeScorer { probe, kernel, layers, images, failure: Mutex::new(None) })
    }

    /// Minus the mean KL divergence with the `kernel` layers fitted to `bank`.
    pub fn try_score(&self, bank: &Bank) -> Result<f64> {
        let mut weights = self.probe.original().clone();
        for layer in &self.layers {
            weights.set_layer(&replace_layer(layer, bank, DEAD_TOLERANCE).0)?;
        }
        Ok(-self.probe.agreement(&weights)?.mean_kl)
    }

    /// The error of the first score call that failed, if any: a search whose
    /// scorer failed must not be reported as if it had succeeded.
    pub fn failure(&self) -> Option<Error> {
        self.failure.lock().map_or(None, |mut f| f.take())
    }
}

impl<B: Backend> Scorer for ProbeScorer<B>
where
    Probe<B>: Sync,
{
    fn score(&self, keys: &[f32], taps: usize) -> f64 {
        debug_assert_eq!(taps, self.kernel.taps());
        let labels = (1..=keys.len() / taps).map(|i| format!("key{i}")).collect();
        let result = Bank::new("candidate", self.kernel, keys.to_vec(), labels, "search candidate", "-")
            .map_err(Error::Other)
            .and_then(|bank| self.try_score(&bank));
        result.unwrap_or_else(|e| {
            if let Ok(mut failure) = self.failure.lock() {
                failure.get_or_insert(e);
            }
            f64::NEG_INFINITY
        })
    }

    fn describe(&self) -> String {
        format!(
            "minus the mean KL(original || replaced) of EfficientNet-Lite0 with its {} {} depthwise layers fitted to \
             the keys, on {}",
            self.layers.len(),
            self.kernel,
            self.images
        )
    }
}
