//! Filters that are a sum of a few separable terms, `sum over t of col_t *
//! row_t^T`, correlated as a row pass then a column pass: `2k` multiply-adds
//! per term and output instead of `k * k`. Master keys drawn from a
//! scale-space bank are such filters: a Gaussian or Gaussian derivative is
//! one term, a DoG two, and a frozen layer's `a * key + b` adds one more (the
//! constant). The published eight keys are not: their singular values fall
//! off slowly (rank 7), and they keep the direct kernel.
//!
//! Factors come from Gaussian elimination with complete pivoting on each
//! filter ([`cross_terms`]); it stops when every remaining tap is below
//! [`Separable::TOLERANCE`] of the filter's largest, so the factored filter
//! differs from the given one by at most `k * TOLERANCE` of its norm
//! (Frobenius; 7e-6 for `k = 7`), the size of the f32 rounding of the sums
//! themselves: the path is exact to f32 precision, not an approximation
//! (tested against the bound and against the direct kernel).

use std::mem::MaybeUninit;

use super::{generic, Grid, Shape, Source, Vector};

/// `filter` (`k x k`, row-major) as terms `(column, row)` whose outer
/// products sum to it: Gaussian elimination with complete pivoting, each
/// step taking the largest remaining tap as pivot and removing its row and
/// column, until every remaining tap is below [`Separable::TOLERANCE`] of
/// the largest. The number of steps is the filter's numerical rank; for a
/// `7 x 7` filter this costs a few hundred flops, cheap enough to redo on
/// every call (a frozen layer's offset changes every step).
fn cross_terms(filter: &[f64], k: usize) -> Vec<(Vec<f64>, Vec<f64>)> {
    let mut rest = filter.to_vec();
    let largest =
        |m: &[f64]| m.iter().enumerate().fold((0, 0.0f64), |b, (i, &v)| if v.abs() > b.1 { (i, v.abs()) } else { b });
    let floor = Separable::TOLERANCE * largest(filter).1;
    let mut terms = Vec::new();
    loop {
        let (at, size) = largest(&rest);
        if size <= floor || size == 0.0 {
            return terms;
        }
        let (py, px) = (at / k, at % k);
        let pivot = rest[at];
        let col: Vec<f64> = (0..k).map(|y| rest[y * k + px] / pivot).collect();
        let row: Vec<f64> = rest[py * k..][..k].to_vec();
        for y in 0..k {
            for x in 0..k {
                rest[y * k + x] -= col[y] * row[x];
            }
        }
        terms.push((col, row));
    }
}

/// Per-channel factors of depthwise filters: filter `c` is the sum over
/// terms `t` of `cols[t][ky][c] * rows[t][kx][c]` (each `[terms][k][padded]`,
/// zero for a channel's unused terms and past `c`).
pub(super) struct Separable {
    terms: usize,
    rows: Vec<f32>,
    cols: Vec<f32>,
}

impl Separable {
    /// Residual taps below this fraction of a filter's largest are zero.
    pub const TOLERANCE: f64 = 1e-6;

    /// Factors filters `[C, 1, k, k]` (turned by 180 degrees if `turned`)
    /// when they have few enough terms for the two passes to pay: they do
    /// `2k` multiply-adds per term against the direct kernel's `k * k`, but
    /// also write and read back each term's row results, and both are mostly
    /// waiting on memory at training sizes. Measured at `k = 7` on
    /// 128x64x32x32 (`masterkey bench dw`): two terms ran as fast as the
    /// direct kernel or up to 1.15x faster (on 8 images, in cache), three
    /// 0.8x; so a term is charged `3k`.
    pub fn of(weight: &[f32], s: &Shape, padded: usize, turned: bool) -> Option<Separable> {
        let k = s.k;
        let factors: Vec<Vec<(Vec<f64>, Vec<f64>)>> = weight
            .chunks_exact(k * k)
            .map(|filter| {
                let tap = |i: usize| filter[if turned { k * k - 1 - i } else { i }] as f64;
                cross_terms(&(0..k * k).map(tap).collect::<Vec<_>>(), k)
            })
            .collect();
        let terms = factors.iter().map(Vec::len).max().unwrap_or(0);
        if terms * 3 * k > k * k {
            return None;
        }
        let mut rows = vec![0.0f32; terms * k * padded];
        let mut cols = vec![0.0f32; terms * k * padded];
        for (c, filter_terms) in factors.iter().enumerate() {
            for (t, (col, row)) in filter_terms.iter().enumerate() {
                for j in 0..k {
                    cols[(t * k + j) * padded + c] = col[j] as f32;
                    rows[(t * k + j) * padded + c] = row[j] as f32;
                }
            }
        }
        Some(Separable { terms, rows, cols })
    }

    /// Floats of the row-pass results one channel group needs.
    pub fn scratch_len(&self, g: &Grid) -> usize {
        self.terms * plane(g)
    }
}

/// Floats from one row of row-pass results to the next: a vector more than
/// the row, so that the column pass, walking down a column, does not hit
/// the same few L1 sets (32 vectors of 64 bytes apart would use 2 of 64).
fn line(g: &Grid) -> usize {
    (g.cols + 1) * g.lanes
}

/// Floats of one term's row-pass results (`buffer_rows` lines).
fn plane(g: &Grid) -> usize {
    g.buffer_rows() * line(g)
}

/// [`super::generic::correlate`] for factored filters: per channel group,
/// every term's row pass over all buffer rows into `scratch`, then one
/// column pass summing the terms.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) fn correlate<V: Vector>(
    g: &Grid,
    src: Source,
    next: &[f32],
    buffer: &mut Vec<f32>,
    filters: &Separable,
    bias: &[f32],
    out: &mut [MaybeUninit<f32>],
    scratch: &mut Vec<f32>,
) {
    let k = g.k;
    assert!(g.lanes == V::LANES && g.padded.is_multiple_of(V::LANES) && bias.len() >= g.padded);
    assert!(filters.rows.len() >= filters.terms * k * g.padded && filters.cols.len() == filters.rows.len());
    assert!(out.len() >= g.rows * g.cols * g.channels);
    generic::spread::<V>(g, src, buffer);
    scratch.resize(filters.scratch_len(g), 0.0);
    for cv in (0..g.padded).step_by(V::LANES) {
        // SAFETY (both passes): `spread` sized `buffer` for `g`, `scratch` holds
        // `terms` planes of `buffer_rows x cols` vectors, the asserts bound the rest.
        unsafe {
            let input = buffer.as_ptr().add(generic::at::<V>(g, 0, 0, cv));
            match (g.stride, k) {
                (1, 5) => block_unit::<V, 5>(g, filters, input, scratch, bias, out, cv, next),
                (1, 7) => block_unit::<V, 7>(g, filters, input, scratch, bias, out, cv, next),
                _ => block_any::<V>(g, filters, input, scratch, bias, out, cv, next),
            }
        }
    }
    super::fence_streams();
}

/// One channel group at stride 1 with `K` known: the row pass computes
/// every term from one load of its inputs, the column pass walks down a
/// column keeping the inputs of `N` outputs in registers (as the direct
/// kernel does along a row); `next` is prefetched a piece per column.
///
/// # Safety
/// As in [`correlate`]; `input` is the group's block of the buffer.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn block_unit<V: Vector, const K: usize>(
    g: &Grid,
    filters: &Separable,
    input: *const f32,
    scratch: &mut [f32],
    bias: &[f32],
    out: &mut [MaybeUninit<f32>],
    cv: usize,
    next: &[f32],
) {
    let plane = plane(g);
    // SAFETY: the caller's bounds.
    unsafe {
        for y in 0..g.buffer_rows() {
            let (from, to) = (input.add(y * g.width * V::LANES), scratch.as_mut_ptr().add(y * line(g)));
            let mut o = 0;
            while o < g.cols {
                o += match (V::LANES, g.cols - o) {
                    (16, 8..) => rows_sliding::<V, K, 8>(filters, g.padded, cv, from, to, plane, o),
                    (_, 4..) => rows_sliding::<V, K, 4>(filters, g.padded, cv, from, to, plane, o),
                    _ => rows_sliding::<V, K, 1>(filters, g.padded, cv, from, to, plane, o),
                };
            }
        }
        let pieces = g.padded / V::LANES * g.cols;
        for ox in 0..g.cols {
            super::prefetch_piece(next, cv / V::LANES * g.cols + ox, pieces);
            let mut oy = 0;
            while oy < g.rows {
                oy += match (V::LANES, g.rows - oy) {
                    (16, 8..) => column_sliding::<V, K, 8>(g, filters, scratch, bias, out, oy, ox, cv),
                    (_, 4..) => column_sliding::<V, K, 4>(g, filters, scratch, bias, out, oy, ox, cv),
                    _ => column::<V, 1>(g, filters, scratch, bias, out, oy, ox, cv),
                };
            }
        }
    }
}

/// Outputs `o..o + N` of the row pass of every term, from one load of the
/// `N + K - 1` inputs.
///
/// # Safety
/// As [`Vector::zero`]; `from` holds `o + N + K - 1` vectors, `to` holds
/// `terms` planes `plane` apart of at least `o + N` vectors.
#[inline(always)]
unsafe fn rows_sliding<V: Vector, const K: usize, const N: usize>(
    filters: &Separable,
    padded: usize,
    cv: usize,
    from: *const f32,
    to: *mut f32,
    plane: usize,
    o: usize,
) -> usize {
    // SAFETY: the caller's bounds.
    unsafe {
        let mut inputs = [V::zero(); 16];
        for (i, input) in inputs.iter_mut().enumerate().take(N + K - 1) {
            *input = V::load(from.add((o + i) * V::LANES));
        }
        for t in 0..filters.terms {
            let taps = filters.rows.as_ptr().add(t * K * padded + cv);
            let mut acc = [V::zero(); N];
            for kx in 0..K {
                let tap = V::load(taps.add(kx * padded));
                for (j, acc) in acc.iter_mut().enumerate() {
                    *acc = V::mul_add(tap, inputs[j + kx], *acc);
                }
            }
            for (j, acc) in acc.iter().enumerate() {
                acc.store(to.add(t * plane + (o + j) * V::LANES));
            }
        }
    }
    N
}

/// Outputs `(oy..oy + N, ox)`: the column pass of every term, the
/// `N + K - 1` row-pass results of a term loaded once.
///
/// # Safety
/// As in [`correlate`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn column_sliding<V: Vector, const K: usize, const N: usize>(
    g: &Grid,
    filters: &Separable,
    scratch: &[f32],
    bias: &[f32],
    out: &mut [MaybeUninit<f32>],
    oy: usize,
    ox: usize,
    cv: usize,
) -> usize {
    let (line, plane) = (line(g), plane(g));
    // SAFETY: the caller's bounds; rows `oy + N + K - 2 < buffer_rows`.
    unsafe {
        let mut acc = [V::zero(); N];
        for t in 0..filters.terms {
            let column = scratch.as_ptr().add(t * plane + oy * line + ox * V::LANES);
            let mut inputs = [V::zero(); 16];
            for (i, input) in inputs.iter_mut().enumerate().take(N + K - 1) {
                *input = V::load(column.add(i * line));
            }
            let taps = filters.cols.as_ptr().add(t * K * g.padded + cv);
            for ky in 0..K {
                let tap = V::load(taps.add(ky * g.padded));
                for (j, acc) in acc.iter_mut().enumerate() {
                    *acc = V::mul_add(tap, inputs[j + ky], *acc);
                }
            }
        }
        for (j, acc) in acc.iter().enumerate() {
            generic::store_pixels(g, &[*acc], bias, out, oy + j, ox, cv);
        }
    }
    N
}

/// One channel group for any stride and size: each term's row pass, then
/// the column pass `N` outputs along a row at a time.
///
/// # Safety
/// As in [`block_unit`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn block_any<V: Vector>(
    g: &Grid,
    filters: &Separable,
    input: *const f32,
    scratch: &mut [f32],
    bias: &[f32],
    out: &mut [MaybeUninit<f32>],
    cv: usize,
    next: &[f32],
) {
    let (k, plane) = (g.k, plane(g));
    // SAFETY: the caller's bounds.
    unsafe {
        for t in 0..filters.terms {
            let taps = filters.rows.as_ptr().add(t * k * g.padded + cv);
            let across = scratch.as_mut_ptr().add(t * plane);
            for y in 0..g.buffer_rows() {
                let from = input.add(y * g.width * V::LANES);
                let to = across.add(y * line(g));
                pass::<V>(from, g.stride * V::LANES, taps, g.padded, k, to, g.cols);
            }
        }
        let pieces = g.padded / V::LANES * g.rows;
        for oy in 0..g.rows {
            super::prefetch_piece(next, cv / V::LANES * g.rows + oy, pieces);
            let mut ox = 0;
            while ox < g.cols {
                ox += match g.cols - ox {
                    8.. => column::<V, 8>(g, filters, scratch, bias, out, oy, ox, cv),
                    4..8 => column::<V, 4>(g, filters, scratch, bias, out, oy, ox, cv),
                    _ => column::<V, 1>(g, filters, scratch, bias, out, oy, ox, cv),
                };
            }
        }
    }
}

/// One row pass: `to[o] = sum over j of taps[j] * from[o * step + j]` for
/// `count` outputs, vectors `V::LANES` apart in `to`, `taps` `stride` apart.
///
/// # Safety
/// As [`Vector::zero`]; `from` holds `(count - 1) * step / LANES + k` vectors,
/// `to` holds `count`, and `taps` `k` vectors `stride` apart.
#[inline(always)]
unsafe fn pass<V: Vector>(
    from: *const f32,
    step: usize,
    taps: *const f32,
    stride: usize,
    k: usize,
    to: *mut f32,
    count: usize,
) {
    // SAFETY: the caller's bounds.
    unsafe {
        let mut o = 0;
        while o + 4 <= count {
            let mut acc = [V::zero(); 4];
            for j in 0..k {
                let tap = V::load(taps.add(j * stride));
                for (i, acc) in acc.iter_mut().enumerate() {
                    *acc = V::mul_add(tap, V::load(from.add((o + i) * step + j * V::LANES)), *acc);
                }
            }
            for (i, acc) in acc.iter().enumerate() {
                acc.store(to.add((o + i) * V::LANES));
            }
            o += 4;
        }
        for o in o..count {
            let mut acc = V::zero();
            for j in 0..k {
                acc = V::mul_add(V::load(taps.add(j * stride)), V::load(from.add(o * step + j * V::LANES)), acc);
            }
            acc.store(to.add(o * V::LANES));
        }
    }
}

/// `N` outputs of row `oy` from column `ox`, channels `cv..cv + LANES`: the
/// column pass over every term's row-pass results.
///
/// # Safety
/// As in [`correlate`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn column<V: Vector, const N: usize>(
    g: &Grid,
    filters: &Separable,
    scratch: &[f32],
    bias: &[f32],
    out: &mut [MaybeUninit<f32>],
    oy: usize,
    ox: usize,
    cv: usize,
) -> usize {
    let (k, plane) = (g.k, plane(g));
    // SAFETY: the caller's bounds; rows `oy * stride + ky < buffer_rows`.
    unsafe {
        let mut acc = [V::zero(); N];
        for t in 0..filters.terms {
            let taps = filters.cols.as_ptr().add(t * k * g.padded + cv);
            let across = scratch.as_ptr().add(t * plane + ox * V::LANES);
            for ky in 0..k {
                let tap = V::load(taps.add(ky * g.padded));
                let row = across.add((oy * g.stride + ky) * line(g));
                for (j, acc) in acc.iter_mut().enumerate() {
                    *acc = V::mul_add(tap, V::load(row.add(j * V::LANES)), *acc);
                }
            }
        }
        generic::store_pixels(g, &acc, bias, out, oy, ox, cv);
    }
    N
}

/// [`correlate`] compiled for each instruction set.
pub(super) mod kernels {
    use std::mem::MaybeUninit;

    use super::super::{Grid, Portable, Source};
    use super::Separable;
    use crate::cpu::per_isa;

    per_isa!(pub(in super::super) fn correlate(
        g: &Grid,
        src: Source,
        next: &[f32],
        buffer: &mut Vec<f32>,
        filters: &Separable,
        bias: &[f32],
        out: &mut [MaybeUninit<f32>],
        scratch: &mut Vec<f32>,
    ) => super::correlate::<super::super::x86::Avx512>, super::correlate::<super::super::x86::Avx2>,
        super::correlate::<Portable>);
}

#[cfg(test)]
mod tests {
    use masterkey_core::Bank;

    use super::super::{forward, input_grad, Shape};
    use super::Separable;
    use crate::cpu::Isa;
    use crate::dw_op::nchw;
    use crate::rng::SplitMix;

    /// A sampled Gaussian of scale `sigma` over `k` taps.
    fn gaussian(k: usize, sigma: f64) -> Vec<f64> {
        let centre = (k / 2) as f64;
        (0..k).map(|i| (-(i as f64 - centre).powi(2) / (2.0 * sigma * sigma)).exp()).collect()
    }

    /// Per channel `a * key + b`, cycling through `keys` (`k x k` each).
    fn frozen_filters(keys: &[Vec<f64>], c: usize, rng: &mut SplitMix) -> Vec<f32> {
        (0..c)
            .flat_map(|ch| {
                let (a, b) = (1.0 + rng.normal() as f64, 0.1 * rng.normal() as f64);
                keys[ch % keys.len()].iter().map(move |&v| (a * v + b) as f32).collect::<Vec<_>>()
            })
            .collect()
    }

    /// A first Gaussian derivative along x (one separable term) and a
    /// difference of Gaussians (two).
    fn scale_space_keys(k: usize) -> (Vec<f64>, Vec<f64>) {
        let (g1, g2) = (gaussian(k, 1.0), gaussian(k, 2.0));
        let centre = (k / 2) as f64;
        let derivative: Vec<f64> = (0..k * k).map(|i| g1[i / k] * -(((i % k) as f64) - centre) * g1[i % k]).collect();
        let dog: Vec<f64> = (0..k * k).map(|i| g1[i / k] * g1[i % k] - 0.25 * g2[i / k] * g2[i % k]).collect();
        (derivative, dog)
    }

    fn transposed(v: &[f32], [a, b, rest]: [usize; 3]) -> Vec<f32> {
        let mut out = vec![0.0f32; v.len()];
        for n in 0..v.len() / (a * b * rest) {
            for i in 0..a {
                for j in 0..b {
                    for r in 0..rest {
                        out[((n * b + j) * a + i) * rest + r] = v[((n * a + i) * b + j) * rest + r];
                    }
                }
            }
        }
        out
    }

    fn close(got: &[f32], want: &[f32], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: lengths");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() <= 1e-5 * w.abs().max(1.0), "{what}[{i}]: {g} vs {w}");
        }
    }

    /// Frozen scale-space keys take the two passes, forward and input
    /// gradient, on every instruction set, and give what the direct
    /// channels-first kernels give.
    #[test]
    fn low_rank_filters_take_the_separable_path_and_match_the_direct_kernels() {
        for (n, c, h, w) in [(2, 19, 11, 13), (1, 16, 7, 6), (2, 3, 4, 9)] {
            // Two terms at k = 7 (the register kernels at stride 1), three at k = 9.
            for (k, stride) in [(7, 1), (7, 2), (9, 1), (9, 2)] {
                let mut rng = SplitMix::new((k * 10 + stride + c) as u64);
                let (derivative, dog) = scale_space_keys(k);
                let keys = if k == 7 { vec![derivative] } else { vec![derivative, dog] };
                let weight = frozen_filters(&keys, c, &mut rng);
                let (x, bias): (Vec<f32>, Vec<f32>) =
                    ((0..n * c * h * w).map(|_| rng.normal()).collect(), (0..c).map(|_| rng.normal()).collect());
                let g = nchw::Geometry::new([n, c, h, w], k, stride);
                let grad: Vec<f32> = (0..n * c * g.oh * g.ow).map(|_| rng.normal()).collect();
                let shape = Shape::new([n, h, w, c], k, stride);
                let (x_last, grad_last) = (transposed(&x, [c, h * w, 1]), transposed(&grad, [c, g.oh * g.ow, 1]));
                for isa in Isa::available() {
                    let what = format!("{isa:?} n{n} c{c} {h}x{w} k{k} s{stride}");
                    let padded = c.div_ceil(isa.lanes()) * isa.lanes();
                    let factored = Separable::of(&weight, &shape, padded, false).expect("factored");
                    assert_eq!(factored.terms, keys.len() + 1, "{what}: terms");
                    let out = transposed(&forward(isa, &shape, &x_last, &weight, &bias), [g.oh * g.ow, c, 1]);
                    close(&out, &nchw::forward(&g, &x, &weight, &bias), &format!("{what} forward"));
                    let dx = transposed(&input_grad(isa, &shape, &weight, &grad_last), [h * w, c, 1]);
                    close(&dx, &nchw::input_grad(&g, &weight, &grad), &format!("{what} input grad"));
                }
            }
        }
    }

    /// The factored filters are the given ones within the documented bound.
    #[test]
    fn factors_rebuild_the_filters_within_the_bound() {
        let k = 9;
        let (derivative, dog) = scale_space_keys(k);
        let weight = frozen_filters(&[derivative, dog], 6, &mut SplitMix::new(3));
        let shape = Shape::new([1, 11, 11, 6], k, 1);
        for turned in [false, true] {
            let f = Separable::of(&weight, &shape, 8, turned).expect("factored");
            for (ch, filter) in weight.chunks_exact(k * k).enumerate() {
                let mut error = 0.0f64;
                for ky in 0..k {
                    for kx in 0..k {
                        let rebuilt: f64 = (0..f.terms)
                            .map(|t| f.cols[(t * k + ky) * 8 + ch] as f64 * f.rows[(t * k + kx) * 8 + ch] as f64)
                            .sum();
                        let (sy, sx) = if turned { (k - 1 - ky, k - 1 - kx) } else { (ky, kx) };
                        error += (rebuilt - filter[sy * k + sx] as f64).powi(2);
                    }
                }
                let norm = filter.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
                // The dropped taps plus the f32 rounding of the factors.
                let bound = k as f64 * Separable::TOLERANCE + 1e-6;
                assert!(error.sqrt() <= bound * norm, "channel {ch}: {} > {}", error.sqrt(), bound * norm);
            }
        }
    }

    /// The published keys (rank 7), random filters and, at k = 7, a DoG
    /// plus offset (three terms) keep the direct kernel.
    #[test]
    fn filters_with_more_terms_are_not_factored() {
        let shape = Shape::new([1, 9, 9, 8], 7, 1);
        let published = Bank::published8().keys;
        assert!(Separable::of(&published, &shape, 8, false).is_none());
        let mut rng = SplitMix::new(5);
        let random: Vec<f32> = (0..8 * 49).map(|_| rng.normal()).collect();
        assert!(Separable::of(&random, &shape, 8, false).is_none());
        let dog = frozen_filters(&[scale_space_keys(7).1], 8, &mut rng);
        assert!(Separable::of(&dog, &shape, 8, false).is_none());
    }
}
