//! The networks, generic over the backend, all built around [`DwConv`].

pub mod convnext;
pub mod mobilenetv2;
pub mod reference;

use crate::ModelBackend;
use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::dw::{DwConv, DwLayers, DwPlan};
use crate::layers::WeightInit;
use crate::rng::SplitMix;

pub use convnext::ConvNext;
pub use mobilenetv2::MobileNetV2;
pub use reference::Reference;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Arch {
    ConvNext,
    ConvNextV2,
    MobileNetV2,
    Reference,
}

/// Everything that fixes a network's shape; saved with every checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// As given on the command line, e.g. `convnextv2-atto`.
    pub name: String,
    pub arch: Arch,
    /// Blocks per stage (ConvNeXt) or blocks (`depths[0]`, reference model).
    pub depths: Vec<usize>,
    /// Channels per stage (ConvNeXt) or width (`dims[0]`, reference model).
    pub dims: Vec<usize>,
    /// MobileNetV2 width multiplier.
    pub width_mult: f32,
    /// The 28-64 px variant (see each model's documentation).
    pub small_input: bool,
    pub in_channels: usize,
    pub classes: usize,
    /// Initial layer scale `gamma` (`None`: no layer scale).
    pub layer_scale_init: Option<f32>,
    pub dw_kernel: usize,
    /// How conv and linear layers are initialised (`None`: the
    /// architecture's own).
    #[serde(default)]
    pub init: Option<InitScheme>,
}

/// A layer initialisation chosen for every conv and linear layer of a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InitScheme {
    /// ConvNeXt's: `trunc_normal_(std=0.02)`, biases zero.
    Convnext,
    /// PyTorch's default `Conv2d` / `Linear` initialisation.
    Pytorch,
}

masterkey_core::kebab_enum!(InitScheme, Convnext = "convnext", Pytorch = "pytorch");

/// ConvNeXt's init: `trunc_normal_(std=0.02)` for every conv and linear.
pub const CONVNEXT_INIT: WeightInit = WeightInit::TruncNormal(0.02);

/// Official ConvNeXt V1 layer-scale init.
pub const CONVNEXT_LAYER_SCALE_INIT: f32 = 1e-6;

impl ModelSpec {
    /// The initialisation of the layers that `official` initialises in the
    /// architecture's own recipe, unless another scheme was chosen.
    pub fn weight_init(&self, official: WeightInit) -> WeightInit {
        match self.init {
            None => official,
            Some(InitScheme::Convnext) => CONVNEXT_INIT,
            Some(InitScheme::Pytorch) => WeightInit::PytorchDefault,
        }
    }

    /// Refuses a specification no network can be built from (it may come
    /// from an edited or corrupt `state.json`).
    pub fn check(&self) -> Result<(), String> {
        let stages = match self.arch {
            Arch::ConvNext | Arch::ConvNextV2 => self.depths.len(),
            Arch::Reference => 1,
            Arch::MobileNetV2 => 0,
        };
        if self.depths.len() < stages || self.dims.len() < stages || self.dims[..stages].contains(&0) {
            return Err(format!(
                "expected {stages} stage(s) of depths and non-zero dims, found depths {:?}, dims {:?}",
                self.depths, self.dims
            ));
        }
        if stages > 0 && self.depths.len() != self.dims.len() {
            return Err(format!("expected as many depths as dims, found {:?} and {:?}", self.depths, self.dims));
        }
        if self.dw_kernel % 2 == 0 || self.in_channels == 0 || self.classes == 0 {
            return Err(format!(
                "expected an odd DW kernel, input channels and classes, found {}, {}, {}",
                self.dw_kernel, self.in_channels, self.classes
            ));
        }
        if !(self.width_mult.is_finite() && self.width_mult > 0.0) {
            return Err(format!("expected a positive width multiplier, found {}", self.width_mult));
        }
        Ok(())
    }

    /// A lower bound on the number of weights of this network: those of its
    /// pointwise and head layers, which every DW mode keeps. A checkpoint
    /// whose model file cannot hold them is refused before the network is
    /// built, so a few edited bytes cannot make it allocate gigabytes.
    pub fn weight_floor(&self) -> u64 {
        let product = |a: usize, b: usize| (a as u64).saturating_mul(b as u64);
        let blocks = |depth: usize, dim: usize| product(dim, dim).saturating_mul(8).saturating_mul(depth as u64);
        match self.arch {
            Arch::ConvNext | Arch::ConvNextV2 => {
                let last = self.dims.last().copied().unwrap_or(0);
                let stages = self.depths.iter().zip(&self.dims).map(|(&depth, &dim)| blocks(depth, dim));
                stages.fold(product(last, self.classes), u64::saturating_add)
            }
            Arch::Reference => {
                let (depth, dim) = (self.depths.first().copied().unwrap_or(0), self.dims.first().copied().unwrap_or(0));
                blocks(depth, dim).saturating_add(product(dim, self.classes))
            }
            // The head alone: at least 90% of 1280 * max(width, 1) inputs.
            Arch::MobileNetV2 => product((1152.0 * self.width_mult.max(1.0)) as usize, self.classes),
        }
    }

    /// Names accepted by [`ModelSpec::named`].
    pub fn names() -> Vec<String> {
        let mut names: Vec<String> = convnext::PRESETS
            .iter()
            .flat_map(|(size, _, _)| [format!("convnext-{size}"), format!("convnextv2-{size}")])
            .collect();
        names.extend(["mobilenetv2".to_string(), "reference".to_string()]);
        names
    }

    /// The official configuration of `name`: ConvNeXt V1 with layer scale
    /// 1e-6, V2 without (GRN instead), DW kernels 7x7 (MobileNetV2: 3x3);
    /// the reference model at width 64 with 4 blocks.
    pub fn named(name: &str, in_channels: usize, classes: usize, small_input: bool) -> Result<Self, String> {
        let base = |arch, depths: &[usize], dims: &[usize], layer_scale_init, dw_kernel| ModelSpec {
            name: name.to_string(),
            arch,
            depths: depths.to_vec(),
            dims: dims.to_vec(),
            width_mult: 1.0,
            small_input,
            in_channels,
            classes,
            layer_scale_init,
            dw_kernel,
            init: None,
        };
        if let Some((family, size)) = name.split_once('-') {
            if let Some((_, depths, dims)) = convnext::PRESETS.iter().find(|p| p.0 == size) {
                match family {
                    "convnext" => return Ok(base(Arch::ConvNext, depths, dims, Some(CONVNEXT_LAYER_SCALE_INIT), 7)),
                    "convnextv2" => return Ok(base(Arch::ConvNextV2, depths, dims, None, 7)),
                    _ => {}
                }
            }
        }
        match name {
            "mobilenetv2" => Ok(base(Arch::MobileNetV2, &[], &[], None, 3)),
            "reference" => Ok(base(Arch::Reference, &[4], &[64], None, 7)),
            _ => Err(format!("unknown model `{name}`; known: {}", Self::names().join(", "))),
        }
    }
}

/// Any of the networks. Variants differ in size, but a network is built
/// once per run and moved, never stored in bulk, so boxing would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Network<B: Backend> {
    ConvNext(ConvNext<B>),
    MobileNetV2(MobileNetV2<B>),
    Reference(Reference<B>),
}

impl<B: ModelBackend> Network<B> {
    /// Builds `spec` with weights drawn from `seed`.
    pub fn new(spec: &ModelSpec, plan: &DwPlan, seed: u64, device: &B::Device) -> Self {
        let mut rng = SplitMix::new(seed);
        match spec.arch {
            Arch::ConvNext => Network::ConvNext(ConvNext::new(spec, false, plan, &mut rng, device)),
            Arch::ConvNextV2 => Network::ConvNext(ConvNext::new(spec, true, plan, &mut rng, device)),
            Arch::MobileNetV2 => Network::MobileNetV2(MobileNetV2::new(spec, plan, &mut rng, device)),
            Arch::Reference => Network::Reference(Reference::new(spec, plan, &mut rng, device)),
        }
    }

    /// `[N, C, H, W]` images to `[N, classes]` logits.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        self.forward_traced(x, &mut |_, _| {})
    }

    /// [`Network::forward`], `trace` called with the name and output of
    /// every stage (stem, each block, ...) in order.
    pub fn forward_traced(
        &self,
        x: Tensor<B, 4>,
        trace: &mut impl FnMut(&dyn Fn() -> String, &Tensor<B, 4>),
    ) -> Tensor<B, 2> {
        match self {
            Network::ConvNext(m) => m.forward_traced(x, trace),
            Network::MobileNetV2(m) => m.forward_traced(x, trace),
            Network::Reference(m) => m.forward_traced(x, trace),
        }
    }

    /// The first stage whose output on `x` holds a NaN or an infinity
    /// (`logits` when only the head's does), or `None`.
    pub fn first_non_finite(&self, x: Tensor<B, 4>) -> Option<String> {
        let finite = |t: &Tensor<B, 4>| t.clone().into_data().iter::<f32>().all(f32::is_finite);
        let mut first = None;
        let logits = self.forward_traced(x, &mut |name, y| {
            if first.is_none() && !finite(y) {
                first = Some(name());
            }
        });
        let logits_finite = logits.into_data().iter::<f32>().all(f32::is_finite);
        first.or_else(|| (!logits_finite).then(|| "logits".to_string()))
    }
}

impl<B: Backend> DwLayers<B> for Network<B> {
    fn dw_layers(&self) -> Vec<&DwConv<B>> {
        match self {
            Network::ConvNext(m) => m.dw_layers(),
            Network::MobileNetV2(m) => m.dw_layers(),
            Network::Reference(m) => m.dw_layers(),
        }
    }

    fn map_dw(self, f: &mut dyn FnMut(usize, DwConv<B>) -> DwConv<B>) -> Self {
        match self {
            Network::ConvNext(m) => Network::ConvNext(m.map_dw(f)),
            Network::MobileNetV2(m) => Network::MobileNetV2(m.map_dw(f)),
            Network::Reference(m) => Network::Reference(m.map_dw(f)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dw::DwMode;
    use crate::testing::Cpu;
    use masterkey_core::Bank;

    #[test]
    fn presets_have_the_official_parameter_counts() {
        let device = Default::default();
        let plan = DwPlan::trainable(Bank::published8());
        let count = |name| {
            Network::<Cpu>::new(&ModelSpec::named(name, 3, 1000, false).unwrap(), &plan, 0, &device).num_params()
        };
        // timm: convnext_atto 3.70M, convnextv2_atto 3.71M.
        for (name, millions) in [("convnext-atto", 3.70), ("convnextv2-atto", 3.71)] {
            let m = count(name) as f64 / 1e6;
            assert!((m - millions).abs() < 0.01, "{name}: {m:.3}M parameters");
        }
        // torchvision mobilenet_v2: 3,504,872, plus the DW biases kept here
        // (7,136) and BatchNorm running mean and variance, which burn counts
        // as parameters (2 x 17,056 channels).
        assert_eq!(count("mobilenetv2"), 3_504_872 + 7_136 + 34_112);
        assert!(ModelSpec::named("convnext-huge", 3, 10, false).unwrap_err().contains("convnextv2-tiny"));
    }

    #[test]
    fn a_seed_gives_every_dw_mode_the_same_other_weights() {
        use crate::state_dict::state_dict;
        let device = Default::default();
        let mut spec = ModelSpec::named("convnext-atto", 1, 10, true).unwrap();
        (spec.depths, spec.dims, spec.init) = (vec![1, 1], vec![8, 16], Some(InitScheme::Pytorch));
        let weights = |mode| {
            let plan = DwPlan { mode, ..DwPlan::trainable(Bank::published8()) };
            state_dict(&Network::<Cpu>::new(&spec, &plan, 5, &device)).unwrap()
        };
        let trainable = weights(DwMode::Trainable);
        for mode in [DwMode::Frozen, DwMode::BankInit, DwMode::RandomFrozen] {
            let other = weights(mode);
            for (name, tensor) in &trainable {
                if !name.contains(".dw.weight") {
                    assert_eq!(other.get(name), Some(tensor), "{mode}: {name} differs from trainable's");
                }
            }
        }
    }

    #[test]
    fn every_model_maps_small_and_large_images_to_logits_in_every_mode() {
        let device = Default::default();
        for mode in [DwMode::Trainable, DwMode::Frozen, DwMode::RandomFrozen] {
            let plan = DwPlan { mode, ..DwPlan::trainable(Bank::published8()) };
            for (name, small, size) in
                [("convnextv2-atto", true, 28), ("mobilenetv2", true, 32), ("convnext-atto", false, 64)]
            {
                let mut spec = ModelSpec::named(name, 1, 10, small).unwrap();
                if spec.arch == Arch::MobileNetV2 {
                    spec.width_mult = 0.35;
                }
                let net = Network::<Cpu>::new(&spec, &plan, 1, &device);
                let x = Tensor::<Cpu, 4>::zeros([2, 1, size, size], &device);
                let out = net.forward(x);
                assert_eq!(out.dims(), [2, 10], "{name}");
                assert!(net.dw_layers().iter().all(|l| l.is_frozen() == (mode != DwMode::Trainable)));
            }
        }
    }
}
