use std::path::PathBuf;

use crate::kernel::KernelSize;

/// One depthwise convolution layer as a reader found it, already mapped to the
/// project's layout: `channels` filters of `kernel` taps each, one after the
/// other, each row-major with row 0 at the top.
#[derive(Debug, Clone, PartialEq)]
pub struct DwLayer {
    /// The layer's name in the model (tensor or node name).
    pub name: String,
    pub kernel: KernelSize,
    pub channels: usize,
    pub weights: Vec<f32>,
}

impl DwLayer {
    /// Builds a layer, checking that the weight count matches the shape and
    /// that every weight is finite.
    pub fn new(
        name: impl Into<String>,
        kernel: KernelSize,
        channels: usize,
        weights: Vec<f32>,
    ) -> Result<Self, String> {
        let name = name.into();
        let expected = kernel.taps() * channels;
        if weights.len() != expected {
            return Err(format!(
                "layer `{name}`: expected {expected} weights for {channels} filters of {kernel}, found {}",
                weights.len()
            ));
        }
        if let Some(i) = weights.iter().position(|v| !v.is_finite()) {
            return Err(format!(
                "layer `{name}`: channel {} holds a non-finite weight ({})",
                i / kernel.taps(),
                weights[i]
            ));
        }
        Ok(DwLayer { name, kernel, channels, weights })
    }

    pub fn filter(&self, channel: usize) -> &[f32] {
        let t = self.kernel.taps();
        &self.weights[channel * t..(channel + 1) * t]
    }
}

/// Every depthwise layer of one model file, in the model's order.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelFilters {
    pub source: PathBuf,
    /// Short format name, e.g. `onnx`, `pytorch-zip`.
    pub format: String,
    pub layers: Vec<DwLayer>,
}
