//! The PNG pictures the commands write.

use std::path::Path;

use anyhow::Result;
use masterkey_core::fit::GroupFits;
use masterkey_core::{Bank, FilterSet, KernelSize};
use masterkey_render::FilterGrid;

/// The bank's keys in one row, in bank order.
pub fn bank_png(bank: &Bank, path: &Path) -> Result<()> {
    let filters = (0..bank.len()).map(|i| bank.key(i)).collect();
    FilterGrid { kernel: bank.kernel, filters, columns: bank.len() }.save_png(path)?;
    Ok(())
}

/// One row per key: the key resized to `kernel`, then the `per_key`
/// best-fitting filters of that size, normalised and multiplied by the sign
/// of their `a` so they all share the key's polarity.
pub fn samples_png(
    set: &FilterSet,
    fits: &GroupFits,
    bank: &Bank,
    kernel: KernelSize,
    per_key: usize,
    path: &Path,
) -> Result<()> {
    let group = &set.groups[&kernel];
    let group_fits = &fits[&kernel];
    let (keys, kept) = bank.resized(kernel);
    let t = kernel.taps();
    let mut cells: Vec<Vec<f32>> = Vec::new();
    for (row, &key_index) in kept.iter().enumerate() {
        cells.push(keys[row * t..(row + 1) * t].to_vec());
        let mut members: Vec<usize> =
            (0..group.len()).filter(|&i| group_fits[i].key == Some(key_index as u16)).collect();
        members.sort_by(|&a, &b| group_fits[b].abs_cos.total_cmp(&group_fits[a].abs_cos));
        for slot in 0..per_key {
            cells.push(match members.get(slot) {
                Some(&i) => {
                    let p = &group.provenance[i];
                    let sign = group_fits[i].a.signum();
                    group.filter(i).iter().map(|v| sign * (v - p.mean) / p.centered_norm).collect()
                }
                None => vec![0.0; t],
            });
        }
    }
    let filters = cells.iter().map(Vec::as_slice).collect();
    FilterGrid { kernel, filters, columns: per_key + 1 }.save_png(path)?;
    Ok(())
}
