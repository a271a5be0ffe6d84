//! AdamW without weight decay on vectors, and the warm-up + cosine schedule.

use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{AdamW, AdamWConfig, AdamWState, LearningRate, SimpleOptimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;

use crate::models::Network;

/// AdamW that decays only parameters of rank 2 and more. Every rank-1
/// parameter — norm scales and shifts, biases, DW offsets `b` and scales
/// `a`, layer scales, GRN — is left undecayed, timm's rule (`ndim <= 1`).
#[derive(Clone)]
pub struct AdamWNoDecayOnVectors {
    decayed: AdamW,
    undecayed: AdamW,
}

impl AdamWNoDecayOnVectors {
    pub fn new(weight_decay: f32) -> Self {
        // PyTorch's AdamW epsilon (burn's default is 1e-5).
        let config = AdamWConfig::new().with_epsilon(1e-8);
        AdamWNoDecayOnVectors {
            decayed: config.clone().with_weight_decay(weight_decay).build(),
            undecayed: config.with_weight_decay(0.0).build(),
        }
    }

    pub fn init<B: AutodiffBackend>(self) -> OptimizerAdaptor<Self, Network<B>, B> {
        OptimizerAdaptor::from(self)
    }
}

impl<B: Backend> SimpleOptimizer<B> for AdamWNoDecayOnVectors {
    type State<const D: usize> = AdamWState<B, D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<B, D>,
        grad: Tensor<B, D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<B, D>, Option<Self::State<D>>) {
        let inner = if D >= 2 { &self.decayed } else { &self.undecayed };
        SimpleOptimizer::<B>::step(inner, lr, tensor, grad, state)
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &B::Device) -> Self::State<D> {
        <AdamW as SimpleOptimizer<B>>::to_device(state, device)
    }
}

/// Linear warm-up from `peak / warmup` to `peak` over `warmup` steps, then
/// cosine decay to `floor` at `total` steps. A pure function of the step, so
/// a resumed run follows the same schedule.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub peak: f64,
    pub floor: f64,
    pub warmup: u64,
    pub total: u64,
}

impl Schedule {
    pub fn lr(&self, step: u64) -> f64 {
        if step < self.warmup {
            return self.peak * (step + 1) as f64 / self.warmup as f64;
        }
        let span = self.total.saturating_sub(self.warmup).max(1);
        let progress = ((step - self.warmup) as f64 / span as f64).min(1.0);
        self.floor + 0.5 * (self.peak - self.floor) * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::{filled, param};
    use crate::testing::{to_vec, Ad};
    use burn::module::{Module, Param};
    use burn::optim::{GradientsParams, Optimizer};

    #[test]
    fn schedule_warms_up_then_follows_a_cosine() {
        let s = Schedule { peak: 1.0, floor: 0.0, warmup: 4, total: 14 };
        assert_eq!(s.lr(0), 0.25);
        assert_eq!(s.lr(3), 1.0);
        assert!((s.lr(4) - 1.0).abs() < 1e-12);
        assert!((s.lr(9) - 0.5).abs() < 1e-12);
        assert!(s.lr(14).abs() < 1e-12 && s.lr(20).abs() < 1e-12);
    }

    #[derive(Module, Debug)]
    struct Two<B: Backend> {
        matrix: Param<Tensor<B, 2>>,
        vector: Param<Tensor<B, 1>>,
    }

    #[test]
    fn only_matrices_are_decayed() {
        let device = Default::default();
        let m = Two::<Ad> { matrix: param(vec![1.0; 4], [2, 2], &device), vector: filled(1.0, [2], &device) };
        // Zero gradients: Adam's update is 0, so only decay can move a weight.
        let loss = m.matrix.val().sum() * 0.0 + m.vector.val().sum() * 0.0;
        let grads = GradientsParams::from_grads(loss.backward(), &m);
        let mut optim = OptimizerAdaptor::<_, Two<Ad>, Ad>::from(AdamWNoDecayOnVectors::new(0.5));
        let m = optim.step(0.1, m, grads);
        assert!(to_vec(m.matrix.val()).iter().all(|&v| (v - 0.95).abs() < 1e-6));
        assert_eq!(to_vec(m.vector.val()), vec![1.0, 1.0]);
    }
}
