//! The input of every search method: the non-dead filters of one kernel size,
//! each normalised.

use masterkey_core::kernel::{is_dead, mean_and_centered_norm};
use masterkey_core::{Error, FilterSet, KernelSize, Result, SizeGroup};
use rayon::prelude::*;

/// Non-dead filters of one kernel size, each with zero mean and unit L2 norm.
#[derive(Debug, Clone, PartialEq)]
pub struct NormalisedFilters {
    pub kernel: KernelSize,
    /// `len() * kernel.taps()` normalised taps.
    pub data: Vec<f32>,
    /// Index in the size group of each filter kept.
    pub group_index: Vec<usize>,
    /// Filters of the group left out as dead.
    pub dead: usize,
}

impl NormalisedFilters {
    /// Normalises the group's filters, leaving out those flagged dead (and any
    /// whose centred norm is exactly zero, which cannot be normalised).
    pub fn from_group(group: &SizeGroup) -> Self {
        let taps = group.kernel.taps();
        let live: Vec<bool> = (0..group.len())
            .into_par_iter()
            .map(|i| !group.provenance[i].dead && !is_dead(mean_and_centered_norm(group.filter(i)).1, 0.0))
            .collect();
        let group_index: Vec<usize> = (0..group.len()).filter(|&i| live[i]).collect();
        let mut data = vec![0.0f32; group_index.len() * taps];
        data.par_chunks_mut(taps).zip(&group_index).for_each(|(out, &i)| {
            out.copy_from_slice(group.filter(i));
            masterkey_core::kernel::normalise(out, 0.0);
        });
        NormalisedFilters { kernel: group.kernel, dead: group.len() - group_index.len(), data, group_index }
    }

    pub fn len(&self) -> usize {
        self.group_index.len()
    }
    pub fn is_empty(&self) -> bool {
        self.group_index.is_empty()
    }
    pub fn taps(&self) -> usize {
        self.kernel.taps()
    }
    pub fn filter(&self, i: usize) -> &[f32] {
        let t = self.taps();
        &self.data[i * t..(i + 1) * t]
    }
}

/// The size group to search: `kernel` if given, else the group with the most
/// non-dead filters (the larger kernel on ties).
pub fn pick_group(set: &FilterSet, kernel: Option<KernelSize>) -> Result<&SizeGroup> {
    let sizes = || set.groups.keys().map(ToString::to_string).collect::<Vec<_>>().join(", ");
    match kernel {
        Some(k) => set
            .groups
            .get(&k)
            .ok_or_else(|| Error::Other(format!("no filters of kernel {k} in the set (it has: {})", sizes()))),
        None => set
            .groups
            .values()
            .max_by_key(|g| (g.len() - g.dead_count(), g.kernel))
            .ok_or_else(|| Error::Other("the set holds no filters".into())),
    }
}

/// Writes `values` centred and scaled to unit L2 norm into `out` (as f32);
/// `false`, leaving `out` as it was, if their centred norm is not above `min_norm`.
pub(crate) fn normalise_f64_into(values: &[f64], out: &mut [f32], min_norm: f64) -> bool {
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    let norm = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>().sqrt();
    if !(norm > min_norm) {
        return false;
    }
    for (o, v) in out.iter_mut().zip(values) {
        *o = ((v - mean) / norm) as f32;
    }
    true
}
