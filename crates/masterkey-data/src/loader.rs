//! Deterministic batches: the epoch's order is a seeded shuffle, and each
//! sample's augmentation draws from its own `(seed, epoch, index)` stream, so
//! a batch does not depend on threads or on where a run was resumed. Batches
//! are assembled in parallel on a producer thread one step ahead of training.

use std::ops::ControlFlow;
use std::sync::mpsc::sync_channel;

use masterkey_core::Result;
use rayon::prelude::*;

use crate::{CropAndFlip, Dataset, Split};
use masterkey_core::rng::SplitMix;

pub struct Batch {
    /// `[N, C, H, W]` normalised pixels.
    pub images: Vec<f32>,
    pub labels: Vec<i64>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// Stream ids that keep the shuffles and augmentations of a seed apart.
const SHUFFLE_STREAM: u64 = 1;
const AUGMENT_STREAM: u64 = 2;

/// `indices` in the order of epoch `epoch` (0-based).
pub fn epoch_order(indices: &[usize], seed: u64, epoch: usize) -> Vec<usize> {
    let mut order = indices.to_vec();
    SplitMix::for_item(seed, SHUFFLE_STREAM, epoch as u64).shuffle(&mut order);
    order
}

/// How samples are augmented: `None` for evaluation.
#[derive(Debug, Clone, Copy)]
pub struct Augment {
    pub seed: u64,
    pub epoch: usize,
    /// Zero padding of the random crop, in pixels.
    pub crop_padding: usize,
}

impl Augment {
    /// The random stream of sample `index` in this epoch.
    fn stream(self, index: usize) -> SplitMix {
        SplitMix::for_item(self.seed ^ AUGMENT_STREAM, self.epoch as u64, index as u64)
    }

    /// The crop and flip that sample `index` of an in-memory set gets in this
    /// epoch (what a PyTorch run replays to see the same images).
    pub fn crop_and_flip(self, index: usize) -> CropAndFlip {
        CropAndFlip::draw(&mut self.stream(index), self.crop_padding)
    }
}

fn make_batch(data: &Dataset, split: &Split, indices: &[usize], augment: Option<Augment>) -> Result<Batch> {
    let per: usize = data.shape.iter().product();
    let mut images = vec![0f32; indices.len() * per];
    images.par_chunks_mut(per).zip(indices.par_iter()).try_for_each(|(out, &i)| {
        let mut rng = augment.map(|a| a.stream(i));
        data.fill(split, i, rng.as_mut().zip(augment.map(|a| a.crop_padding)), out)
    })?;
    let labels = indices.iter().map(|&i| split.labels()[i] as i64).collect();
    Ok(Batch { images, labels })
}

/// Calls `step` with every batch of `order` (the last one may be short),
/// until it returns `Break`.
pub fn for_each_batch(
    data: &Dataset,
    split: &Split,
    order: &[usize],
    batch_size: usize,
    augment: Option<Augment>,
    mut step: impl FnMut(Batch) -> Result<ControlFlow<()>>,
) -> Result<()> {
    std::thread::scope(|scope| {
        let (tx, rx) = sync_channel::<Result<Batch>>(1);
        scope.spawn(move || {
            for chunk in order.chunks(batch_size) {
                let batch = make_batch(data, split, chunk, augment);
                let failed = batch.is_err();
                if tx.send(batch).is_err() || failed {
                    return;
                }
            }
        });
        for batch in rx {
            if step(batch?)?.is_break() {
                break;
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ImageSet, Normalisation};

    fn tiny() -> Dataset {
        let set =
            ImageSet::new("t", (0..10 * 16).map(|v| v as u8).collect(), (0..10).collect(), [1, 4, 4], 10).unwrap();
        Dataset {
            name: "t".into(),
            classes: 10,
            shape: [1, 4, 4],
            normalisation: Normalisation { mean: vec![0.0], std: vec![1.0 / 255.0] },
            train: Split::Memory(set.clone()),
            test: Split::Memory(set),
        }
    }

    #[test]
    fn batches_cover_the_order_and_augmentation_is_reproducible() {
        let data = tiny();
        let order = epoch_order(&(0..10).collect::<Vec<_>>(), 7, 0);
        assert_ne!(order, epoch_order(&(0..10).collect::<Vec<_>>(), 7, 1));
        let collect = |augment| {
            let mut seen = Vec::new();
            for_each_batch(&data, &data.train, &order, 4, augment, |b| {
                seen.push((b.labels.clone(), b.images.clone()));
                Ok(ControlFlow::Continue(()))
            })
            .unwrap();
            seen
        };
        let plain = collect(None);
        assert_eq!(plain.iter().map(|b| b.0.len()).collect::<Vec<_>>(), vec![4, 4, 2]);
        let labels: Vec<i64> = plain.iter().flat_map(|b| b.0.clone()).collect();
        assert_eq!(labels, order.iter().map(|&i| i as i64).collect::<Vec<_>>());
        // Unaugmented, normalised with std 1/255: pixels come back as bytes.
        assert_eq!(plain[0].1[0], (order[0] * 16) as f32);
        let augment = Some(Augment { seed: 1, epoch: 0, crop_padding: 2 });
        assert_eq!(
            collect(augment).iter().map(|b| &b.1).collect::<Vec<_>>(),
            collect(augment).iter().map(|b| &b.1).collect::<Vec<_>>()
        );
        assert_ne!(collect(augment)[0].1, plain[0].1);
        // Stopping early ends the producer too.
        let mut calls = 0;
        for_each_batch(&data, &data.train, &order, 2, None, |_| {
            calls += 1;
            Ok(ControlFlow::Break(()))
        })
        .unwrap();
        assert_eq!(calls, 1);
    }

    #[test]
    fn crop_and_flip_reports_what_each_augmented_sample_got() {
        let data = tiny();
        let Split::Memory(set) = &data.train else { unreachable!() };
        let order = epoch_order(&(0..10).collect::<Vec<_>>(), 3, 2);
        let augment = Augment { seed: 3, epoch: 2, crop_padding: 2 };
        let mut images = Vec::new();
        for_each_batch(&data, &data.train, &order, 4, Some(augment), |b| {
            images.extend(b.images);
            Ok(ControlFlow::Continue(()))
        })
        .unwrap();
        let mut draws = Vec::new();
        for (&i, got) in order.iter().zip(images.chunks(16)) {
            let draw = augment.crop_and_flip(i);
            let mut want = vec![0.0; 16];
            draw.apply(set.image(i), [1, 4, 4], 2, &mut want);
            // Normalised with std 1/255: the bytes, up to rounding.
            assert_eq!(got.iter().map(|v| v.round()).collect::<Vec<_>>(), want, "sample {i}");
            draws.push(draw);
        }
        assert!(draws.iter().any(|d| d.flip) && draws.iter().any(|d| !d.flip));
        assert!(draws.iter().any(|d| d.dx != 0 || d.dy != 0));
    }
}
