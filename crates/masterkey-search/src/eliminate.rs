//! Greedy backward elimination: from many candidate keys, repeatedly drop the
//! one whose removal lowers the score least.

use rayon::prelude::*;

use crate::scorer::Scorer;

/// The candidates left after one removal, and their score.
#[derive(Debug, Clone, PartialEq)]
pub struct Survivors {
    /// Indices into the candidates, ascending.
    pub kept: Vec<usize>,
    pub score: f64,
}

/// Eliminates candidates (`taps` taps each, normalised) one at a time down to
/// `down_to`; returns the survivors after every removal, largest set first.
/// Trial removals are scored in parallel; the lowest index wins ties, so the
/// path does not depend on the thread count.
pub fn eliminate(
    candidates: &[f32],
    taps: usize,
    down_to: usize,
    scorer: &dyn Scorer,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Vec<Survivors> {
    let total = candidates.len() / taps;
    let mut kept: Vec<usize> = (0..total).collect();
    let mut path = Vec::new();
    while kept.len() > down_to.max(1) {
        let scores: Vec<f64> = (0..kept.len())
            .into_par_iter()
            .map(|drop| {
                let keys: Vec<f32> = kept
                    .iter()
                    .enumerate()
                    .filter(|&(i, _)| i != drop)
                    .flat_map(|(_, &c)| candidates[c * taps..(c + 1) * taps].iter().copied())
                    .collect();
                scorer.score(&keys, taps)
            })
            .collect();
        let (drop, score) =
            scores
                .iter()
                .enumerate()
                .fold((0, f64::NEG_INFINITY), |best, (i, &s)| if s > best.1 { (i, s) } else { best });
        kept.remove(drop);
        path.push(Survivors { kept: kept.clone(), score });
        progress(total - kept.len(), total - down_to.max(1));
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scores a set by how many of the "good" one-tap keys it holds.
    struct CountGood;
    impl Scorer for CountGood {
        fn score(&self, bank: &[f32], taps: usize) -> f64 {
            bank.chunks_exact(taps).filter(|k| k[0] > 0.5).count() as f64
        }
    }

    #[test]
    fn drops_the_least_useful_candidates_first() {
        // Candidates 1 and 3 are good.
        let candidates = [0.0, 1.0, 0.0, 1.0, 0.0];
        let path = eliminate(&candidates, 1, 2, &CountGood, &|_, _| {});
        assert_eq!(path.len(), 3);
        assert_eq!(path.last().unwrap().kept, vec![1, 3]);
        assert_eq!(path.last().unwrap().score, 2.0);
        // Ties go to the lowest index: candidate 0 is dropped first.
        assert_eq!(path[0].kept, vec![1, 2, 3, 4]);
    }
}
