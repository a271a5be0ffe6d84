//! Eigenfilters, the classical baseline: the leading eigenvectors of the
//! second-moment matrix `sum x x^T / n` of the normalised filters. Sign
//! invariant by construction (`x` and `-x` add the same term), and zero-mean,
//! since every filter is orthogonal to the constant vector.

use masterkey_core::{Error, Result};
use nalgebra::{DMatrix, SymmetricEigen};
use rayon::prelude::*;

use crate::filters::NormalisedFilters;

/// Filters per parallel work item; fixed, so the sums do not depend on the thread count.
const CHUNK: usize = 8192;

#[derive(Debug, Clone, PartialEq)]
pub struct Eigenfilters {
    /// `taps * taps` eigenvectors, one per row, by descending eigenvalue.
    pub vectors: Vec<f32>,
    /// All eigenvalues, descending; they sum to 1 (each filter has unit norm).
    pub eigenvalues: Vec<f64>,
}

impl Eigenfilters {
    /// The `k` leading eigenfilters, `k * taps` values.
    pub fn leading(&self, k: usize) -> &[f32] {
        &self.vectors[..k * self.eigenvalues.len()]
    }

    /// The most keys worth taking: one direction (the constant one) is never
    /// taken by zero-mean filters.
    pub fn max_keys(&self) -> usize {
        self.eigenvalues.len().saturating_sub(1).max(1)
    }
}

/// Eigen-decomposes the second-moment matrix of `filters`.
pub fn eigenfilters(filters: &NormalisedFilters) -> Result<Eigenfilters> {
    if filters.is_empty() {
        return Err(Error::Other("eigenfilters need at least one live filter".into()));
    }
    let d = filters.taps();
    let partials: Vec<Vec<f64>> = filters
        .data
        .par_chunks(CHUNK * d)
        .map(|chunk| {
            let mut m = vec![0.0f64; d * d];
            for x in chunk.chunks_exact(d) {
                for (i, &xi) in x.iter().enumerate() {
                    let xi = xi as f64;
                    for (acc, &xj) in m[i * d + i..(i + 1) * d].iter_mut().zip(&x[i..]) {
                        *acc += xi * xj as f64;
                    }
                }
            }
            m
        })
        .collect();
    let mut upper = vec![0.0f64; d * d];
    for p in &partials {
        upper.iter_mut().zip(p).for_each(|(a, b)| *a += b);
    }
    let n = filters.len() as f64;
    let second_moment = DMatrix::from_fn(d, d, |i, j| upper[i.min(j) * d + i.max(j)] / n);
    let eigen = SymmetricEigen::new(second_moment);
    let mut order: Vec<usize> = (0..d).collect();
    order.sort_by(|&a, &b| eigen.eigenvalues[b].total_cmp(&eigen.eigenvalues[a]).then(a.cmp(&b)));
    let vectors = order
        .iter()
        .flat_map(|&i| eigen.eigenvectors.column(i).iter().map(|&v| v as f32).collect::<Vec<_>>())
        .collect();
    Ok(Eigenfilters { vectors, eigenvalues: order.iter().map(|&i| eigen.eigenvalues[i]).collect() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use masterkey_core::Bank;

    #[test]
    fn filters_made_of_two_orthogonal_keys_span_the_leading_two_eigenfilters() {
        // Keys 5 and 6 of published8 (wide x and y derivatives), made exactly
        // orthogonal (Gram-Schmidt).
        let bank = Bank::published8();
        let k5 = bank.key(4);
        let dot: f32 = k5.iter().zip(bank.key(5)).map(|(a, b)| a * b).sum();
        let mut k6: Vec<f32> = bank.key(5).iter().zip(k5).map(|(b, a)| b - dot * a).collect();
        masterkey_core::kernel::normalise(&mut k6, 0.0);
        let k6 = k6.as_slice();
        let mut data = Vec::new();
        for i in 0..200 {
            let angle = i as f32 * 0.1;
            let (c, s) = (angle.cos(), angle.sin());
            data.extend(k5.iter().zip(k6).map(|(a, b)| c * a + s * b));
        }
        let filters = NormalisedFilters { kernel: bank.kernel, data, group_index: (0..200).collect(), dead: 0 };
        let eig = eigenfilters(&filters).unwrap();
        assert!(eig.eigenvalues[0] + eig.eigenvalues[1] > 0.9999 && eig.eigenvalues[2] < 1e-6);
        assert!((eig.eigenvalues.iter().sum::<f64>() - 1.0).abs() < 1e-6);
        // Both keys lie in the span of the two leading eigenfilters.
        let lead = eig.leading(2);
        for key in [k5, k6] {
            let projected: f32 =
                lead.chunks_exact(49).map(|v| v.iter().zip(key).map(|(a, b)| a * b).sum::<f32>().powi(2)).sum();
            assert!(projected > 0.9999, "{projected}");
        }
        // Eigenfilters are zero-mean like the filters.
        for v in lead.chunks_exact(49) {
            assert!(v.iter().sum::<f32>().abs() < 1e-5);
        }
    }
}
