//! The paper's route to master keys: train an autoencoder with a 1-D latent
//! on the normalised filters, decode candidates spread uniformly along the
//! latent range of the training filters, drop candidates greedily
//! ([`crate::eliminate`]) under a [`Scorer`], then resample the latent
//! locally around each survivor ("resample locally around the best and
//! repeat", as the paper describes its search).

mod net;

use masterkey_core::{Error, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

pub use net::{Adam, Net};

use crate::eliminate::{eliminate, Survivors};
use crate::filters::{normalise_f64_into, NormalisedFilters};
use crate::scorer::{FitObjective, Scorer};
use crate::Progress;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AutoencoderOptions {
    /// Units of the encoder's and the decoder's hidden layer.
    pub hidden: usize,
    /// Adam steps, one mini-batch each.
    pub steps: usize,
    pub batch: usize,
    /// Peak learning rate; it decays to zero along a half cosine.
    pub learning_rate: f64,
    /// Candidates decoded uniformly along the latent.
    pub candidates: usize,
    /// Rounds of local resampling around the survivors (0: none). Round `r`
    /// tries, for each survivor in turn, `2 * refine_samples` latents evenly
    /// spaced within `+-spacing / 2^r` of it (`spacing` being the candidates'),
    /// and keeps the one that scores best if it beats the current set.
    pub refine_rounds: usize,
    pub refine_samples: usize,
    /// What the default scorer measures (ignored when a scorer is given).
    pub objective: FitObjective,
    /// Filters the default scorer fits per call.
    pub score_sample: usize,
    pub seed: u64,
}

impl Default for AutoencoderOptions {
    fn default() -> Self {
        AutoencoderOptions {
            hidden: 32,
            steps: 3000,
            batch: 256,
            learning_rate: 3e-2,
            candidates: 50,
            refine_rounds: 3,
            refine_samples: 4,
            objective: FitObjective::MeanAbsCos,
            score_sample: 20_000,
            seed: 1,
        }
    }
}

impl AutoencoderOptions {
    pub fn describe(&self, scorer: &str) -> String {
        format!(
            "autoencoder (1-D latent, even encoder, hidden {}, loss 1-|cos|, Adam lr {} cosine decay, {} steps of batch {}, seed {}; \
             {} candidates uniform along the latent; greedy backward elimination and {} rounds of local resampling ({} per side) by {scorer})",
            self.hidden, self.learning_rate, self.steps, self.batch, self.seed, self.candidates, self.refine_rounds, self.refine_samples
        )
    }
}

/// A trained autoencoder, its candidates, the elimination path and the banks.
#[derive(Debug, Clone, PartialEq)]
pub struct AutoencoderRun {
    pub net: Net,
    /// Mean loss over the last 10% of the training steps.
    pub final_loss: f64,
    /// Smallest and largest latent of the training filters.
    pub latent_range: (f64, f64),
    /// Latents of the candidates that decode to a non-constant filter, ascending.
    pub candidate_latents: Vec<f64>,
    /// Survivors (indices into `candidate_latents`) after each removal, down to one.
    pub path: Vec<Survivors>,
    /// Latents of the bank of K keys, for K = 1..=k_max, after local resampling.
    pub bank_latents: Vec<Vec<f64>>,
}

impl AutoencoderRun {
    /// The bank of `k` keys (`k * taps` normalised values).
    pub fn keys(&self, k: usize) -> Vec<f32> {
        self.bank_latents[k - 1]
            .iter()
            .flat_map(|&z| decode_normalised(&self.net, z).expect("bank latents decode"))
            .collect()
    }
}

/// Trains, decodes the candidates, eliminates down to one key and resamples
/// locally the banks of 1..=k_max keys.
pub fn run(
    filters: &NormalisedFilters,
    options: &AutoencoderOptions,
    k_max: usize,
    scorer: &dyn Scorer,
    progress: &Progress<'_>,
) -> Result<AutoencoderRun> {
    if filters.is_empty() {
        return Err(Error::Other("the autoencoder needs at least one live filter".into()));
    }
    if options.candidates < 2 || options.hidden < 1 || options.batch < 1 || options.steps < 1 {
        return Err(Error::Other(
            "the autoencoder needs at least two candidates, one hidden unit, one step and one filter per batch".into(),
        ));
    }
    let taps = filters.taps();
    let (net, final_loss) = train(filters, options, progress);
    let latents: Vec<f64> = filters.data.par_chunks(taps).map(|x| net.encode(x)).collect();
    let lo = latents.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = latents.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let spacing = (hi - lo) / (options.candidates - 1) as f64;
    let (candidate_latents, candidates): (Vec<f64>, Vec<Vec<f32>>) = (0..options.candidates)
        .filter_map(|i| {
            let z = lo + spacing * i as f64;
            decode_normalised(&net, z).map(|key| (z, key))
        })
        .unzip();
    if candidates.len() < k_max {
        return Err(Error::Other(format!(
            "the autoencoder decoded {} usable candidates, fewer than the {k_max} keys asked for",
            candidates.len()
        )));
    }
    let path = eliminate(&candidates.concat(), taps, 1, scorer, &|done, total| {
        progress("eliminating candidates", done, total)
    });
    let all: Vec<usize> = (0..candidates.len()).collect();
    let bank_latents = (1..=k_max)
        .map(|k| {
            progress("resampling around the survivors", k - 1, k_max);
            let kept = path.iter().find(|s| s.kept.len() == k).map_or(&all, |s| &s.kept);
            let start: Vec<f64> = kept.iter().map(|&c| candidate_latents[c]).collect();
            resample_locally(&net, start, spacing, (lo, hi), options, scorer)
        })
        .collect();
    Ok(AutoencoderRun { net, final_loss, latent_range: (lo, hi), candidate_latents, path, bank_latents })
}

/// Coordinate ascent on the survivors' latents (see [`AutoencoderOptions::refine_rounds`]).
fn resample_locally(
    net: &Net,
    mut latents: Vec<f64>,
    spacing: f64,
    range: (f64, f64),
    options: &AutoencoderOptions,
    scorer: &dyn Scorer,
) -> Vec<f64> {
    let mut keys: Vec<Vec<f32>> =
        latents.iter().map(|&z| decode_normalised(net, z).expect("survivors decode")).collect();
    let mut best = scorer.score(&keys.concat(), net.taps);
    let samples = options.refine_samples.max(1);
    for round in 0..options.refine_rounds {
        let reach = spacing / (1u64 << round.min(62)) as f64;
        for i in 0..latents.len() {
            let trials: Vec<f64> = (1..=samples)
                .flat_map(|j| [-1.0, 1.0].map(|side| latents[i] + side * reach * j as f64 / samples as f64))
                .map(|z| z.clamp(range.0, range.1))
                .collect();
            let scored: Vec<Option<(f64, Vec<f32>)>> = trials
                .par_iter()
                .map(|&z| {
                    let key = decode_normalised(net, z)?;
                    let mut trial = keys.clone();
                    trial[i] = key.clone();
                    Some((scorer.score(&trial.concat(), net.taps), key))
                })
                .collect();
            for (z, s) in trials.iter().zip(scored) {
                if let Some((score, key)) = s.filter(|(score, _)| *score > best) {
                    (best, latents[i], keys[i]) = (score, *z, key);
                }
            }
        }
    }
    latents
}

fn train(filters: &NormalisedFilters, options: &AutoencoderOptions, progress: &Progress<'_>) -> (Net, f64) {
    let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
    let mut net = Net::new(filters.taps(), options.hidden, &mut rng);
    let mut adam = Adam::new(net.params.len());
    let mut order: Vec<usize> = (0..filters.len()).collect();
    order.shuffle(&mut rng);
    let batch = options.batch.min(order.len());
    let mut at = 0;
    let tail_from = options.steps - options.steps / 10;
    let (mut tail_loss, mut tail_steps) = (0.0, 0);
    for step in 0..options.steps {
        if at + batch > order.len() {
            order.shuffle(&mut rng);
            at = 0;
        }
        let (loss, grad) = net.batch_loss_and_grad(&filters.data, &order[at..at + batch]);
        at += batch;
        let lr =
            options.learning_rate * 0.5 * (1.0 + (std::f64::consts::PI * step as f64 / options.steps as f64).cos());
        adam.step(&mut net.params, &grad, lr);
        if step >= tail_from {
            tail_loss += loss;
            tail_steps += 1;
        }
        if step % 50 == 0 {
            progress("training the autoencoder", step, options.steps);
        }
    }
    (net, tail_loss / tail_steps.max(1) as f64)
}

/// The decoder's output at `z`, normalised; `None` if it is constant.
fn decode_normalised(net: &Net, z: f64) -> Option<Vec<f32>> {
    let y = net.decode(z);
    let mut out = vec![0.0; y.len()];
    normalise_f64_into(&y, &mut out, 1e-9).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::compare;
    use crate::scorer::FitScorer;
    use crate::synthetic::{bank_of, shifted_copies};
    use masterkey_core::Bank;

    #[test]
    fn recovers_published8_from_shifted_noisy_copies() {
        let bank = Bank::published8();
        let filters = shifted_copies(&bank, 150, 0.07, 11);
        let options = AutoencoderOptions::default();
        let scorer = FitScorer::new(&filters, options.objective, options.score_sample);
        let run = run(&filters, &options, 8, &scorer, &|_, _, _| {}).unwrap();
        // 7% noise caps the mean |cos| of a filter to its true key near 0.9976.
        assert!(run.final_loss < 0.005, "final loss {}", run.final_loss);
        let cmp = compare(&bank, &bank_of(&run.keys(8), bank.kernel, "ae"), false);
        assert_eq!(cmp.pairs.len(), 8);
        for p in &cmp.pairs {
            assert!(p.abs_cos >= 0.98, "key {} matched {} at |cos| {}", p.a, p.b, p.abs_cos);
        }
        // The elimination path runs from all candidates but one down to one.
        assert_eq!(run.path.first().unwrap().kept.len(), run.candidate_latents.len() - 1);
        assert_eq!(run.path.last().unwrap().kept.len(), 1);
        assert_eq!(run.bank_latents.iter().map(Vec::len).collect::<Vec<_>>(), (1..=8).collect::<Vec<_>>());
    }

    #[test]
    fn same_seed_gives_the_same_network_on_any_thread_count() {
        let filters = shifted_copies(&Bank::published8(), 20, 0.1, 3);
        let options = AutoencoderOptions {
            steps: 30,
            batch: 100,
            candidates: 6,
            refine_rounds: 1,
            ..AutoencoderOptions::default()
        };
        let scorer = FitScorer::new(&filters, options.objective, options.score_sample);
        let go = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| run(&filters, &options, 3, &scorer, &|_, _, _| {}).unwrap())
        };
        let one = go(1);
        let three = go(3);
        assert_eq!(
            one.net.params.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            three.net.params.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
        assert_eq!(one.bank_latents, three.bank_latents);
    }
}
