//! One-to-one matching of the keys of two banks.
//!
//! The weight of a pair is `|cos|` between the keys (the sign is free), or,
//! with symmetries on, the best `|cos|` over the symmetries of the square
//! applied to the key of B. The matching maximises the total weight
//! (Kuhn-Munkres on weights scaled to integers) and pairs `min(K_a, K_b)` keys.
//! Banks of different kernel sizes are compared at the common size
//! (smallest height, smallest width) through [`Bank::resized`]; keys that
//! become constant there are left unmatched.

use masterkey_core::{Bank, KernelSize, RESIZE_RULE};
use pathfinding::kuhn_munkres::kuhn_munkres;
use pathfinding::matrix::Matrix;
use serde::{Deserialize, Serialize};

/// A symmetry of the square, as a map of `h x w` taps (`out[r][c] = in[..]`).
/// Rotations are counter-clockwise, as `numpy.rot90`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Symmetry {
    Identity,
    Rot90,
    Rot180,
    Rot270,
    /// Mirror left-right: `out[r][c] = in[r][w-1-c]`.
    FlipLr,
    /// Mirror top-bottom: `out[r][c] = in[h-1-r][c]`.
    FlipUd,
    /// `out[r][c] = in[c][r]`.
    Transpose,
    /// `out[r][c] = in[n-1-c][n-1-r]`.
    AntiTranspose,
}

impl Symmetry {
    pub const ALL: [Symmetry; 8] = [
        Symmetry::Identity,
        Symmetry::Rot90,
        Symmetry::Rot180,
        Symmetry::Rot270,
        Symmetry::FlipLr,
        Symmetry::FlipUd,
        Symmetry::Transpose,
        Symmetry::AntiTranspose,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Symmetry::Identity => "identity",
            Symmetry::Rot90 => "rot90",
            Symmetry::Rot180 => "rot180",
            Symmetry::Rot270 => "rot270",
            Symmetry::FlipLr => "flip-lr",
            Symmetry::FlipUd => "flip-ud",
            Symmetry::Transpose => "transpose",
            Symmetry::AntiTranspose => "anti-transpose",
        }
    }

    /// Whether the map keeps an `h x w` shape: all do for square kernels;
    /// only identity, rot180 and the two flips for others.
    pub fn keeps_shape(self, kernel: KernelSize) -> bool {
        kernel.h == kernel.w
            || matches!(self, Symmetry::Identity | Symmetry::Rot180 | Symmetry::FlipLr | Symmetry::FlipUd)
    }

    /// The key mapped by this symmetry. Panics if it does not keep the shape.
    pub fn apply(self, key: &[f32], kernel: KernelSize) -> Vec<f32> {
        assert!(self.keeps_shape(kernel), "{} does not keep the shape {kernel}", self.name());
        let (h, w) = (kernel.h, kernel.w);
        let mut out = vec![0.0; key.len()];
        for r in 0..h {
            for c in 0..w {
                let (sr, sc) = match self {
                    Symmetry::Identity => (r, c),
                    Symmetry::Rot90 => (c, w - 1 - r),
                    Symmetry::Rot180 => (h - 1 - r, w - 1 - c),
                    Symmetry::Rot270 => (h - 1 - c, r),
                    Symmetry::FlipLr => (r, w - 1 - c),
                    Symmetry::FlipUd => (h - 1 - r, c),
                    Symmetry::Transpose => (c, r),
                    Symmetry::AntiTranspose => (h - 1 - c, w - 1 - r),
                };
                out[r * w + c] = key[sr * w + sc];
            }
        }
        out
    }
}

/// One matched pair: `sign * symmetry(B[b]) ≈ A[a]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyMatch {
    pub a: usize,
    pub b: usize,
    pub label_a: String,
    pub label_b: String,
    pub abs_cos: f64,
    /// `+1` or `-1`.
    pub sign: i8,
    pub symmetry: Symmetry,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    pub bank_a: String,
    pub bank_b: String,
    /// The kernel size the keys were compared at.
    pub kernel: String,
    pub resize_rule: String,
    pub symmetries: bool,
    /// Matched pairs, in the order of A's keys.
    pub pairs: Vec<KeyMatch>,
    /// Mean `|cos|` over the matched pairs.
    pub mean_abs_cos: f64,
    pub unmatched_a: Vec<String>,
    pub unmatched_b: Vec<String>,
}

/// Scale of the integer weights handed to Kuhn-Munkres.
const WEIGHT_SCALE: f64 = 1e9;

/// The best (`|cos|`, signed cos, symmetry) of `b` mapped onto `a`; the first
/// symmetry in [`Symmetry::ALL`] order wins ties.
fn best_fit(a: &[f32], b: &[f32], kernel: KernelSize, symmetries: &[Symmetry]) -> (f64, f64, Symmetry) {
    let mut best = (-1.0, 0.0, Symmetry::Identity);
    for &s in symmetries {
        let mapped = s.apply(b, kernel);
        let cos: f64 = a.iter().zip(&mapped).map(|(&x, &y)| x as f64 * y as f64).sum();
        if cos.abs() > best.0 {
            best = (cos.abs(), cos, s);
        }
    }
    best
}

/// Matches the keys of `b` to those of `a` (see the module doc).
pub fn compare(a: &Bank, b: &Bank, symmetries: bool) -> Comparison {
    let kernel = KernelSize::new(a.kernel.h.min(b.kernel.h), a.kernel.w.min(b.kernel.w));
    let (keys_a, kept_a) = a.resized(kernel);
    let (keys_b, kept_b) = b.resized(kernel);
    let allowed: Vec<Symmetry> = if symmetries {
        Symmetry::ALL.into_iter().filter(|s| s.keeps_shape(kernel)).collect()
    } else {
        vec![Symmetry::Identity]
    };
    let taps = kernel.taps();
    let fits: Vec<Vec<(f64, f64, Symmetry)>> = keys_a
        .chunks_exact(taps)
        .map(|ka| keys_b.chunks_exact(taps).map(|kb| best_fit(ka, kb, kernel, &allowed)).collect())
        .collect();

    // Kuhn-Munkres wants no more rows than columns: rows are the smaller bank.
    let a_rows = kept_a.len() <= kept_b.len();
    let (rows, cols) = if a_rows { (kept_a.len(), kept_b.len()) } else { (kept_b.len(), kept_a.len()) };
    let mut pairs: Vec<(usize, usize)> = Vec::new();
    if rows > 0 {
        let weights = Matrix::from_fn(rows, cols, |(r, c)| {
            let (i, j) = if a_rows { (r, c) } else { (c, r) };
            (fits[i][j].0 * WEIGHT_SCALE).round() as i64
        });
        let (_, assignment) = kuhn_munkres(&weights);
        pairs = assignment.into_iter().enumerate().map(|(r, c)| if a_rows { (r, c) } else { (c, r) }).collect();
        pairs.sort_unstable();
    }
    let matches: Vec<KeyMatch> = pairs
        .iter()
        .map(|&(i, j)| {
            let (abs_cos, cos, symmetry) = fits[i][j];
            KeyMatch {
                a: kept_a[i],
                b: kept_b[j],
                label_a: a.labels[kept_a[i]].clone(),
                label_b: b.labels[kept_b[j]].clone(),
                abs_cos,
                sign: if cos < 0.0 { -1 } else { 1 },
                symmetry,
            }
        })
        .collect();
    let unmatched = |bank: &Bank, matched: Vec<usize>| -> Vec<String> {
        (0..bank.len()).filter(|i| !matched.contains(i)).map(|i| bank.labels[i].clone()).collect()
    };
    Comparison {
        bank_a: a.name.clone(),
        bank_b: b.name.clone(),
        kernel: kernel.to_string(),
        resize_rule: RESIZE_RULE.to_string(),
        symmetries,
        mean_abs_cos: matches.iter().map(|m| m.abs_cos).sum::<f64>() / matches.len().max(1) as f64,
        unmatched_a: unmatched(a, matches.iter().map(|m| m.a).collect()),
        unmatched_b: unmatched(b, matches.iter().map(|m| m.b).collect()),
        pairs: matches,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synthetic::{bank_of, gaussian};
    use rand::SeedableRng;

    fn random_keys(n: usize, kernel: KernelSize, seed: u64) -> Vec<f32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n * kernel.taps()).map(|_| gaussian(&mut rng)).collect()
    }

    #[test]
    fn symmetries_are_the_eight_maps_of_the_square() {
        let k = KernelSize::square(2);
        let m = [1.0, 2.0, 3.0, 4.0]; // [[1, 2], [3, 4]]
        let apply = |s: Symmetry| s.apply(&m, k);
        assert_eq!(apply(Symmetry::Rot90), [2.0, 4.0, 1.0, 3.0]); // numpy.rot90
        assert_eq!(apply(Symmetry::Rot180), [4.0, 3.0, 2.0, 1.0]);
        assert_eq!(apply(Symmetry::Rot270), [3.0, 1.0, 4.0, 2.0]);
        assert_eq!(apply(Symmetry::FlipLr), [2.0, 1.0, 4.0, 3.0]);
        assert_eq!(apply(Symmetry::FlipUd), [3.0, 4.0, 1.0, 2.0]);
        assert_eq!(apply(Symmetry::Transpose), [1.0, 3.0, 2.0, 4.0]);
        assert_eq!(apply(Symmetry::AntiTranspose), [4.0, 2.0, 3.0, 1.0]);
        // Rot90 composed with itself is Rot180; all eight images differ.
        assert_eq!(Symmetry::Rot90.apply(&apply(Symmetry::Rot90), k), apply(Symmetry::Rot180));
        let mut images: Vec<Vec<u32>> =
            Symmetry::ALL.iter().map(|&s| apply(s).iter().map(|v| v.to_bits()).collect()).collect();
        images.sort();
        images.dedup();
        assert_eq!(images.len(), 8);
        assert!(!Symmetry::Transpose.keeps_shape(KernelSize::new(3, 5)));
    }

    #[test]
    fn finds_rotated_and_flipped_keys_only_with_symmetries_and_names_the_map() {
        let kernel = KernelSize::square(5);
        let keys_a = random_keys(3, kernel, 1);
        let a = bank_of(&keys_a, kernel, "a");
        // B holds, in another order: rot90 of A's key 0, -flip-lr of A's key 1,
        // and A's key 2 unchanged.
        let mut keys_b = Vec::new();
        keys_b.extend(Symmetry::FlipLr.apply(a.key(1), kernel).iter().map(|v| -v));
        keys_b.extend(a.key(2));
        keys_b.extend(Symmetry::Rot90.apply(a.key(0), kernel));
        let b = bank_of(&keys_b, kernel, "b");

        let with = compare(&a, &b, true);
        let got: Vec<(usize, usize, i8, Symmetry)> =
            with.pairs.iter().map(|p| (p.a, p.b, p.sign, p.symmetry)).collect();
        // Rot270 undoes rot90; a flip undoes itself.
        assert_eq!(got, vec![(0, 2, 1, Symmetry::Rot270), (1, 0, -1, Symmetry::FlipLr), (2, 1, 1, Symmetry::Identity)]);
        assert!(with.pairs.iter().all(|p| p.abs_cos > 0.9999));

        let without = compare(&a, &b, false);
        assert!(without.pairs.iter().all(|p| p.symmetry == Symmetry::Identity));
        let pair_of = |a_key: usize| without.pairs.iter().find(|p| p.a == a_key).unwrap();
        assert!(pair_of(2).abs_cos > 0.9999);
        assert!(pair_of(0).abs_cos < 0.7 && pair_of(1).abs_cos < 0.7);
    }

    #[test]
    fn banks_of_different_sizes_match_the_smaller_count_at_the_smaller_kernel() {
        let big = Bank::published8();
        let small_keys: Vec<f32> = [6, 7, 4]
            .iter()
            .flat_map(|&i| big.resized(KernelSize::square(5)).0[i * 25..(i + 1) * 25].to_vec())
            .collect();
        let small = bank_of(&small_keys, KernelSize::square(5), "small");
        let cmp = compare(&big, &small, false);
        assert_eq!(cmp.kernel, "5x5");
        let got: Vec<(usize, usize)> = cmp.pairs.iter().map(|p| (p.a, p.b)).collect();
        assert_eq!(got, vec![(4, 2), (6, 0), (7, 1)]);
        assert!(cmp.mean_abs_cos > 0.9999);
        assert_eq!(cmp.unmatched_a.len(), 5);
        assert!(cmp.unmatched_b.is_empty());
    }
}
