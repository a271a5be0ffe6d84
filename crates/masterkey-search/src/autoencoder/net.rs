//! The autoencoder itself: taps -> hidden -> 1 -> hidden (tanh) -> taps, with
//! the sign-invariant cosine loss `1 - |cos|`.
//!
//! The encoder is even, `enc(x) = enc(-x)`: its hidden unit `j` is
//! `(tanh(b_j + w_j.x) + tanh(b_j - w_j.x)) / 2`. `x` and `-x` are one key, so
//! they get one latent; an ordinary encoder has to learn that, and in practice
//! often spends two stretches of the latent on the two signs of a key instead,
//! leaving too little of the 1-D latent for the others.
//!
//! The forward and backward passes are written by hand: the network has a few
//! thousand parameters, and the analysis crates must build fast without a
//! deep-learning stack. A finite-difference test checks the gradients.
//! Everything runs in f64 so that the check is tight; the cost is immaterial.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

/// Samples per parallel work item of a mini-batch; fixed, so the summed
/// gradient does not depend on the thread count.
const SUB_BATCH: usize = 16;

/// All parameters in one vector (so Adam and the gradient check see one
/// array), with the offsets of each tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Net {
    pub taps: usize,
    pub hidden: usize,
    pub params: Vec<f64>,
}

/// Offsets of the tensors in [`Net::params`].
struct Layout {
    /// Encoder `[hidden][taps]` and bias `[hidden]`.
    w1: usize,
    b1: usize,
    /// Encoder output weights `[hidden]` and bias (the latent).
    w2: usize,
    b2: usize,
    /// Decoder input weights and biases `[hidden]`.
    v1: usize,
    c1: usize,
    /// Decoder output `[taps][hidden]` and bias `[taps]`.
    v2: usize,
    c2: usize,
    len: usize,
}

impl Layout {
    fn of(taps: usize, hidden: usize) -> Self {
        let w1 = 0;
        let b1 = w1 + hidden * taps;
        let w2 = b1 + hidden;
        let b2 = w2 + hidden;
        let v1 = b2 + 1;
        let c1 = v1 + hidden;
        let v2 = c1 + hidden;
        let c2 = v2 + taps * hidden;
        Layout { w1, b1, w2, b2, v1, c1, v2, c2, len: c2 + taps }
    }
}

/// Activations kept from the forward pass for the backward pass.
#[derive(Default)]
struct Activations {
    x: Vec<f64>,
    /// The encoder's two branches, `tanh(b + w.x)` and `tanh(b - w.x)`.
    plus: Vec<f64>,
    minus: Vec<f64>,
    /// Their mean, the encoder's hidden layer.
    h1: Vec<f64>,
    z: f64,
    h2: Vec<f64>,
    y: Vec<f64>,
}

impl Net {
    /// Xavier-uniform weights, except the encoder's first layer: its inputs
    /// have unit norm (not unit variance per tap), so its weights are drawn
    /// with unit variance, giving `w.x` unit variance. The encoder's biases
    /// are `+-[0.5, 1.5]`: at zero its even units would be constant zero.
    pub fn new(taps: usize, hidden: usize, rng: &mut ChaCha8Rng) -> Self {
        let l = Layout::of(taps, hidden);
        let mut params = vec![0.0; l.len];
        let mut fill = |params: &mut [f64], bound: f64| {
            for p in params {
                *p = rng.random_range(-bound..bound);
            }
        };
        let xavier = |fan_in: usize, fan_out: usize| (6.0 / (fan_in + fan_out) as f64).sqrt();
        fill(&mut params[l.w1..l.b1], 3f64.sqrt());
        fill(&mut params[l.w2..l.b2], xavier(hidden, 1));
        fill(&mut params[l.v1..l.c1], xavier(1, hidden));
        fill(&mut params[l.v2..l.c2], xavier(hidden, taps));
        for b in &mut params[l.b1..l.w2] {
            *b = rng.random_range(0.5..1.5) * if rng.random::<bool>() { 1.0 } else { -1.0 };
        }
        Net { taps, hidden, params }
    }

    fn layout(&self) -> Layout {
        Layout::of(self.taps, self.hidden)
    }

    fn forward_encoder(&self, x: &[f32], act: &mut Activations) {
        let (l, p, h) = (self.layout(), &self.params, self.hidden);
        act.x.clear();
        act.x.extend(x.iter().map(|&v| v as f64));
        act.plus.clear();
        act.minus.clear();
        for j in 0..h {
            let row = &p[l.w1 + j * self.taps..l.w1 + (j + 1) * self.taps];
            let wx = row.iter().zip(&act.x).map(|(w, x)| w * x).sum::<f64>();
            act.plus.push((p[l.b1 + j] + wx).tanh());
            act.minus.push((p[l.b1 + j] - wx).tanh());
        }
        act.h1.clear();
        act.h1.extend(act.plus.iter().zip(&act.minus).map(|(a, b)| 0.5 * (a + b)));
        act.z = p[l.b2] + p[l.w2..l.w2 + h].iter().zip(&act.h1).map(|(w, a)| w * a).sum::<f64>();
    }

    fn forward_decoder(&self, z: f64, act: &mut Activations) {
        let (l, p, h) = (self.layout(), &self.params, self.hidden);
        act.z = z;
        act.h2.clear();
        act.h2.extend((0..h).map(|j| (p[l.c1 + j] + p[l.v1 + j] * z).tanh()));
        act.y.clear();
        act.y.extend((0..self.taps).map(|t| {
            let row = &p[l.v2 + t * h..l.v2 + (t + 1) * h];
            p[l.c2 + t] + row.iter().zip(&act.h2).map(|(w, a)| w * a).sum::<f64>()
        }));
    }

    /// The latent of a normalised filter.
    pub fn encode(&self, x: &[f32]) -> f64 {
        let mut act = Activations::default();
        self.forward_encoder(x, &mut act);
        act.z
    }

    /// The decoder's output at latent `z` (not normalised).
    pub fn decode(&self, z: f64) -> Vec<f64> {
        let mut act = Activations::default();
        self.forward_decoder(z, &mut act);
        act.y
    }

    /// The loss `1 - |cos(y - mean(y), x)|` of one normalised filter; adds its
    /// gradient into `grad`.
    fn loss_and_grad(&self, x: &[f32], act: &mut Activations, grad: &mut [f64]) -> f64 {
        self.forward_encoder(x, act);
        let z = act.z;
        self.forward_decoder(z, act);
        let (l, p, h, d) = (self.layout(), &self.params, self.hidden, self.taps);

        // x is zero-mean, so <u, x> = <y, x> for the centred u = y - mean(y).
        let mean = act.y.iter().sum::<f64>() / d as f64;
        let norm = act.y.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>().sqrt().max(1e-12);
        let cos = act.y.iter().zip(&act.x).map(|(y, x)| y * x).sum::<f64>() / norm;
        let sign = if cos < 0.0 { -1.0 } else { 1.0 };
        // dL/du = -sign (x - cos u/|u|) / |u|. It is zero-mean (x and u are),
        // so back through the centring it is dL/dy unchanged.
        let gy: Vec<f64> =
            act.y.iter().zip(&act.x).map(|(y, x)| -sign * (x - cos * (y - mean) / norm) / norm).collect();

        // Decoder output layer.
        let mut gh2 = vec![0.0; h];
        for (t, &g) in gy.iter().enumerate() {
            grad[l.c2 + t] += g;
            let row = l.v2 + t * h;
            for j in 0..h {
                grad[row + j] += g * act.h2[j];
                gh2[j] += g * p[row + j];
            }
        }
        // Decoder input layer, back to the latent.
        let mut gz = 0.0;
        for j in 0..h {
            let ga = gh2[j] * (1.0 - act.h2[j] * act.h2[j]);
            grad[l.v1 + j] += ga * z;
            grad[l.c1 + j] += ga;
            gz += ga * p[l.v1 + j];
        }
        // Encoder.
        grad[l.b2] += gz;
        for j in 0..h {
            grad[l.w2 + j] += gz * act.h1[j];
            let gh = 0.5 * gz * p[l.w2 + j];
            let (dplus, dminus) = (1.0 - act.plus[j] * act.plus[j], 1.0 - act.minus[j] * act.minus[j]);
            grad[l.b1 + j] += gh * (dplus + dminus);
            let gwx = gh * (dplus - dminus);
            let row = l.w1 + j * d;
            for (g, x) in grad[row..row + d].iter_mut().zip(&act.x) {
                *g += gwx * x;
            }
        }
        1.0 - cos.abs()
    }

    /// Mean loss and mean gradient over the filters `batch` of `data`
    /// (`taps` normalised taps each).
    pub fn batch_loss_and_grad(&self, data: &[f32], batch: &[usize]) -> (f64, Vec<f64>) {
        let d = self.taps;
        let partials: Vec<(f64, Vec<f64>)> = batch
            .par_chunks(SUB_BATCH)
            .map(|sub| {
                let mut grad = vec![0.0; self.params.len()];
                let mut act = Activations::default();
                let loss = sub
                    .iter()
                    .map(|&i| self.loss_and_grad(&data[i * d..(i + 1) * d], &mut act, &mut grad))
                    .sum::<f64>();
                (loss, grad)
            })
            .collect();
        let mut grad = vec![0.0; self.params.len()];
        let mut loss = 0.0;
        for (l, g) in &partials {
            loss += l;
            grad.iter_mut().zip(g).for_each(|(a, b)| *a += b);
        }
        let n = batch.len().max(1) as f64;
        grad.iter_mut().for_each(|g| *g /= n);
        (loss / n, grad)
    }
}

/// Adam (Kingma & Ba) with the usual defaults for the moment decays.
pub struct Adam {
    m: Vec<f64>,
    v: Vec<f64>,
    t: i32,
}

impl Adam {
    const BETA1: f64 = 0.9;
    const BETA2: f64 = 0.999;
    const EPS: f64 = 1e-8;

    pub fn new(len: usize) -> Self {
        Adam { m: vec![0.0; len], v: vec![0.0; len], t: 0 }
    }

    pub fn step(&mut self, params: &mut [f64], grad: &[f64], lr: f64) {
        self.t += 1;
        let (c1, c2) = (1.0 - Self::BETA1.powi(self.t), 1.0 - Self::BETA2.powi(self.t));
        for (((p, g), m), v) in params.iter_mut().zip(grad).zip(&mut self.m).zip(&mut self.v) {
            *m = Self::BETA1 * *m + (1.0 - Self::BETA1) * g;
            *v = Self::BETA2 * *v + (1.0 - Self::BETA2) * g * g;
            *p -= lr * (*m / c1) / ((*v / c2).sqrt() + Self::EPS);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn gradients_match_central_finite_differences() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let (taps, hidden) = (9, 4);
        let mut net = Net::new(taps, hidden, &mut rng);
        // Non-zero biases, so their gradients are exercised away from zero.
        for p in net.params.iter_mut() {
            *p += rng.random_range(-0.3..0.3);
        }
        let mut data: Vec<f32> = (0..3 * taps).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        for x in data.chunks_exact_mut(taps) {
            masterkey_core::kernel::normalise(x, 0.0);
        }
        let batch = [0, 1, 2];
        let (_, grad) = net.batch_loss_and_grad(&data, &batch);
        let h = 1e-6;
        for i in 0..net.params.len() {
            let mut plus = net.clone();
            plus.params[i] += h;
            let mut minus = net.clone();
            minus.params[i] -= h;
            let numeric =
                (plus.batch_loss_and_grad(&data, &batch).0 - minus.batch_loss_and_grad(&data, &batch).0) / (2.0 * h);
            assert!(
                (numeric - grad[i]).abs() < 1e-6 * (1.0 + numeric.abs()),
                "param {i}: analytic {} numeric {numeric}",
                grad[i]
            );
        }
    }

    #[test]
    fn adam_minimises_a_quadratic() {
        let mut p = vec![3.0, -2.0];
        let mut adam = Adam::new(2);
        for _ in 0..2000 {
            let g: Vec<f64> = p.iter().map(|v| 2.0 * v).collect();
            adam.step(&mut p, &g, 0.01);
        }
        assert!(p.iter().all(|v| v.abs() < 1e-2), "{p:?}");
    }
}
