//! A small, deterministic Nelder-Mead minimiser inside a box.
//!
//! Standard coefficients (reflection 1, expansion 2, contraction 1/2,
//! shrink 1/2); every trial point is clamped into the box, which keeps the
//! search feasible without penalty terms. With two or three parameters and a
//! good start from a grid, this is all the optimiser the fits need.

/// Where the search stops: after `max_evaluations`, or once the simplex's
/// objective values agree to `value_tolerance` and its vertices to
/// `point_tolerance` in every coordinate.
#[derive(Debug, Clone, Copy)]
pub struct Stopping {
    pub max_evaluations: usize,
    pub value_tolerance: f64,
    pub point_tolerance: f64,
}

/// Minimises `f` from `start`, with initial steps `step` per coordinate, each
/// coordinate kept in `[lower[i], upper[i]]`. Returns the best point and its
/// value. `f` may return `f64::INFINITY` for points it cannot evaluate.
pub fn minimise(
    f: &mut impl FnMut(&[f64]) -> f64,
    start: &[f64],
    step: &[f64],
    lower: &[f64],
    upper: &[f64],
    stopping: Stopping,
) -> (Vec<f64>, f64) {
    let n = start.len();
    let clamp = |p: &mut Vec<f64>| {
        for i in 0..n {
            p[i] = p[i].clamp(lower[i], upper[i]);
        }
    };
    let mut evaluations = 0usize;
    let mut eval = |p: &[f64], evaluations: &mut usize| {
        *evaluations += 1;
        f(p)
    };

    let mut simplex: Vec<(Vec<f64>, f64)> = Vec::with_capacity(n + 1);
    let first = start.to_vec();
    simplex.push((first.clone(), eval(&first, &mut evaluations)));
    for i in 0..n {
        let mut p = first.clone();
        // Step inwards when the start sits on the upper bound.
        p[i] = if p[i] + step[i] <= upper[i] { p[i] + step[i] } else { p[i] - step[i] };
        clamp(&mut p);
        let v = eval(&p, &mut evaluations);
        simplex.push((p, v));
    }

    while evaluations < stopping.max_evaluations {
        simplex.sort_by(|a, b| a.1.total_cmp(&b.1));
        if converged(&simplex, stopping) {
            break;
        }
        let centroid: Vec<f64> =
            (0..n).map(|i| simplex[..n].iter().map(|(p, _)| p[i]).sum::<f64>() / n as f64).collect();
        let along = |t: f64| -> Vec<f64> {
            let worst = &simplex[n].0;
            let mut p: Vec<f64> = (0..n).map(|i| centroid[i] + t * (centroid[i] - worst[i])).collect();
            clamp(&mut p);
            p
        };
        let (best, second_worst, worst) = (simplex[0].1, simplex[n - 1].1, simplex[n].1);
        let reflected = along(1.0);
        let fr = eval(&reflected, &mut evaluations);
        if fr < best {
            let expanded = along(2.0);
            let fe = eval(&expanded, &mut evaluations);
            simplex[n] = if fe < fr { (expanded, fe) } else { (reflected, fr) };
        } else if fr < second_worst {
            simplex[n] = (reflected, fr);
        } else {
            // Contract towards the better of the worst point and its reflection.
            let (contracted, fc) = if fr < worst {
                let p = along(0.5);
                let v = eval(&p, &mut evaluations);
                (p, v)
            } else {
                let p = along(-0.5);
                let v = eval(&p, &mut evaluations);
                (p, v)
            };
            if fc < fr.min(worst) {
                simplex[n] = (contracted, fc);
            } else {
                let anchor = simplex[0].0.clone();
                for vertex in simplex.iter_mut().skip(1) {
                    let p: Vec<f64> = (0..n).map(|i| anchor[i] + 0.5 * (vertex.0[i] - anchor[i])).collect();
                    let v = eval(&p, &mut evaluations);
                    *vertex = (p, v);
                }
            }
        }
    }
    simplex.sort_by(|a, b| a.1.total_cmp(&b.1));
    simplex.swap_remove(0)
}

fn converged(sorted: &[(Vec<f64>, f64)], stopping: Stopping) -> bool {
    let (best, worst) = (&sorted[0], &sorted[sorted.len() - 1]);
    let values_agree = (worst.1 - best.1).abs() <= stopping.value_tolerance;
    let points_agree =
        sorted[1..].iter().all(|(p, _)| p.iter().zip(&best.0).all(|(a, b)| (a - b).abs() <= stopping.point_tolerance));
    values_agree && points_agree
}

#[cfg(test)]
mod tests {
    use super::*;

    const STOP: Stopping = Stopping { max_evaluations: 2000, value_tolerance: 1e-14, point_tolerance: 1e-9 };

    #[test]
    fn finds_the_minimum_of_the_rosenbrock_valley() {
        let mut f = |p: &[f64]| (1.0 - p[0]).powi(2) + 100.0 * (p[1] - p[0] * p[0]).powi(2);
        let (p, v) = minimise(&mut f, &[-1.2, 1.0], &[0.5, 0.5], &[-5.0, -5.0], &[5.0, 5.0], STOP);
        assert!(v < 1e-12 && (p[0] - 1.0).abs() < 1e-5 && (p[1] - 1.0).abs() < 1e-5, "{p:?} {v}");
    }

    #[test]
    fn stays_inside_the_box_and_stops_on_its_edge() {
        // Unconstrained minimum at (3, -2); the box stops x at 1.
        let f = |p: &[f64]| (p[0] - 3.0).powi(2) + (p[1] + 2.0).powi(2);
        let mut seen_outside = false;
        let mut g = |p: &[f64]| {
            seen_outside |= p[0] > 1.0;
            f(p)
        };
        let (p, _) = minimise(&mut g, &[0.0, 0.0], &[0.3, 0.3], &[-1.0, -5.0], &[1.0, 5.0], STOP);
        assert!(!seen_outside);
        assert!((p[0] - 1.0).abs() < 1e-7 && (p[1] + 2.0).abs() < 1e-5, "{p:?}");
    }
}
