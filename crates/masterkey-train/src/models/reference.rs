//! The reference model of the project's CPU training benchmarks (REFERENCE
//! §5): stem `Conv2d(in, W, 3x3, pad 1)`; `B` blocks at `W` channels, each
//! `x + Linear(4W->W)(GELU(Linear(W->4W)(LayerNorm(DWConv7x7(x)))))` (DW conv
//! with bias, LayerNorm over channels); global mean pool; `Linear(W->classes)`.
//! The benchmark's model is `W = 64`, `B = 4`; tests use smaller ones. Weights
//! are drawn as ConvNeXt draws them (`trunc_normal_(0.02)`).

use crate::dw_op::Layout;
use crate::gelu_op::gelu;
use crate::ModelBackend;
use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::dw::{DwConv, DwLayers, DwPlan};
use crate::layers::{global_mean_channels_last, to_channels_last, Conv, Dense, LastAxisNorm};
use crate::models::{ModelSpec, CONVNEXT_INIT};
use crate::rng::SplitMix;

#[derive(Module, Debug)]
pub struct ReferenceBlock<B: Backend> {
    pub dw: DwConv<B>,
    pub norm: LastAxisNorm<B>,
    pub expand: Dense<B>,
    pub project: Dense<B>,
}

#[derive(Module, Debug)]
pub struct Reference<B: Backend> {
    pub stem: Conv<B>,
    pub blocks: Vec<ReferenceBlock<B>>,
    pub head: Dense<B>,
}

impl<B: ModelBackend> Reference<B> {
    /// Width `spec.dims[0]`, `spec.depths[0]` blocks.
    pub fn new(spec: &ModelSpec, plan: &DwPlan, rng: &mut SplitMix, device: &B::Device) -> Self {
        let (w, init) = (spec.dims[0], spec.weight_init(CONVNEXT_INIT));
        let stem = Conv::new(spec.in_channels, w, 3, 1, true, true, init, rng, device);
        let blocks = (0..spec.depths[0])
            .map(|i| ReferenceBlock {
                dw: plan.build(i, w, spec.dw_kernel, 1, init, rng, device),
                norm: LastAxisNorm::new(w, device),
                expand: Dense::new(w, 4 * w, init, rng, device),
                project: Dense::new(4 * w, w, init, rng, device),
            })
            .collect();
        Reference { stem, blocks, head: Dense::new(w, spec.classes, init, rng, device) }
    }

    /// The forward pass, `trace` called with each stage's name and output.
    pub fn forward_traced(
        &self,
        x: Tensor<B, 4>,
        trace: &mut impl FnMut(&dyn Fn() -> String, &Tensor<B, 4>),
    ) -> Tensor<B, 2> {
        // Channels-last after the stem, as LayerNorm and the MLP read it: no
        // permutes inside the blocks.
        let mut x = to_channels_last(self.stem.forward(x));
        trace(&|| "stem".into(), &x);
        for (i, b) in self.blocks.iter().enumerate() {
            let y = b.dw.forward(x.clone(), Layout::ChannelsLast);
            x = x + b.project.forward(gelu(b.expand.forward(b.norm.forward(y))));
            trace(&|| format!("blocks.{i}"), &x);
        }
        self.head.forward(global_mean_channels_last(x))
    }
}

impl<B: Backend> DwLayers<B> for Reference<B> {
    fn dw_layers(&self) -> Vec<&DwConv<B>> {
        self.blocks.iter().map(|b| &b.dw).collect()
    }

    fn map_dw(mut self, f: &mut dyn FnMut(usize, DwConv<B>) -> DwConv<B>) -> Self {
        self.blocks = std::mem::take(&mut self.blocks)
            .into_iter()
            .enumerate()
            .map(|(i, mut block)| {
                block.dw = f(i, block.dw);
                block
            })
            .collect();
        self
    }
}
