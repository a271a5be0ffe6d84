//! The discrete analogue of the Gaussian, `T(n; s) = exp(-s) I_|n|(s)`, where
//! `I_n` is the modified Bessel function of integer order and `s = sigma^2`.
//!
//! Computed by Miller's backward recurrence
//! `I_{n-1}(s) = I_{n+1}(s) + (2n / s) I_n(s)`, started far above the orders
//! wanted and normalised with the exact identity
//! `sum_{n in Z} exp(-s) I_|n|(s) = 1`. Nothing is ever exponentiated, so
//! there is no overflow for large `s` (`exp(100)` never appears) and full
//! relative accuracy for small `s` (no `1 - exp(-s)`-style cancellation).

/// Values above this are scaled down during the recurrence; it is far from
/// `f64::MAX` so that one more step (a factor of at most `2n / s`) cannot
/// overflow.
const RESCALE_ABOVE: f64 = 1e250;

/// Orders the recurrence starts above both the highest order wanted and
/// `2 s`: the unwanted (growing) solution it picks up at the start decays,
/// relative to `I_n`, by a large factor per step from there down, and
/// `T(n; s)` beyond that start is negligible in the normalising sum.
const EXTRA_ORDERS: usize = 60;

/// `T(n; s) = exp(-s) I_n(s)` for `n = 0..=max_order`. Panics unless `s` is
/// positive and finite (callers validate sigma first).
pub fn discrete_gaussian(s: f64, max_order: usize) -> Vec<f64> {
    assert!(s > 0.0 && s.is_finite(), "the variance s must be positive and finite, found {s}");
    let start = max_order + 2 * s.ceil() as usize + EXTRA_ORDERS;
    let mut values = vec![0.0f64; max_order + 1];
    // The recurrence runs on an arbitrarily scaled sequence: only ratios matter
    // until the final normalisation.
    let (mut above, mut here) = (0.0f64, 1.0f64);
    let mut sum_positive_orders = 0.0f64;
    for n in (1..=start).rev() {
        if n <= max_order {
            values[n] = here;
        }
        sum_positive_orders += here;
        let below = above + (2.0 * n as f64 / s) * here;
        above = here;
        here = below;
        if here > RESCALE_ABOVE {
            let f = 1.0 / RESCALE_ABOVE;
            above *= f;
            here *= f;
            sum_positive_orders *= f;
            values.iter_mut().for_each(|v| *v *= f);
        }
    }
    values[0] = here;
    let total = here + 2.0 * sum_positive_orders;
    values.iter_mut().for_each(|v| *v /= total);
    values
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference values from the power series of `I_n`, summed in 80-digit
    /// decimal arithmetic.
    const REFERENCE: &[(f64, usize, f64)] = &[
        (1.0, 0, 0.4657596075936404),
        (1.0, 1, 0.2079104153497085),
        (4.0, 3, 6.112433802966629e-2),
        (0.36, 0, 0.7204647977006937),
        (0.01, 0, 0.9900745851497075),
        (0.01, 1, 4.950311047118275e-3),
        (0.01, 3, 2.062616711616872e-8),
        (100.0, 0, 3.994437929909668e-2),
        (100.0, 10, 2.417668271825883e-2),
        (100.0, 16, 1.106525843052878e-2),
    ];

    #[test]
    fn matches_the_power_series_from_small_to_large_variance() {
        for &(s, n, expected) in REFERENCE {
            let got = discrete_gaussian(s, n)[n];
            assert!((got - expected).abs() <= 1e-13 * expected, "T({n}; {s}) = {got:e}, expected {expected:e}");
        }
    }

    #[test]
    fn sums_to_one_over_the_lattice_without_overflow() {
        for s in [0.01, 0.36, 1.0, 25.0, 100.0] {
            let half = discrete_gaussian(s, 200);
            assert!(half.iter().all(|v| v.is_finite() && *v >= 0.0), "s = {s}");
            let total = half[0] + 2.0 * half[1..].iter().sum::<f64>();
            assert!((total - 1.0).abs() < 1e-14, "s = {s}: sum {total}");
            // Decreasing in |n|: the kernel is unimodal.
            assert!(half.windows(2).all(|w| w[1] <= w[0]), "s = {s}");
        }
    }
}
