//! Channels-first (`[N, C, H, W]`) depthwise kernels: one channel plane per
//! task, zero-padded so the inner loops need no bounds, AVX2 intrinsics for
//! stride 1.

use rayon::prelude::*;

use crate::cpu::Isa;

/// `x [N, C, H, W]` by filters `[C, 1, k, k]` plus `bias [C]`: `[N, C, OH, OW]`.
pub(super) fn forward(g: &Geometry, x: &[f32], weight: &[f32], bias: &[f32]) -> Vec<f32> {
    let isa = Isa::best();
    let mut out = vec![0.0f32; g.n * g.c * g.out_plane()];
    out.par_chunks_mut(g.out_plane()).zip(x.par_chunks(g.in_plane())).enumerate().for_each(|(plane, (out, x))| {
        let c = plane % g.c;
        out.fill(bias[c]);
        simd::correlate_plane(isa, g, &g.padded(x), g.filter(weight, c), out);
    });
    out
}

/// The gradient of `x`, given that of the output.
pub(super) fn input_grad(g: &Geometry, weight: &[f32], grad: &[f32]) -> Vec<f32> {
    let isa = Isa::best();
    // The input gradient of a stride-1 correlation is the correlation of
    // the output gradient with the filters turned by 180 degrees, on the
    // same geometry: turned once here, not per image.
    let turned: Vec<f32> = weight.chunks_exact(g.k * g.k).flat_map(|f| f.iter().rev()).copied().collect();
    let mut out = vec![0.0f32; g.n * g.c * g.in_plane()];
    out.par_chunks_mut(g.in_plane()).zip(grad.par_chunks(g.out_plane())).enumerate().for_each(
        |(plane, (out, grad))| {
            // Written before it is read: a fresh zeroed allocation read
            // first maps the shared zero page, and every first write then
            // costs a copy-on-write fault with a TLB shootdown.
            out.fill(0.0);
            let c = plane % g.c;
            if g.stride == 1 {
                simd::correlate_plane(isa, g, &g.padded(grad), g.filter(&turned, c), out);
            } else {
                simd::input_grad_plane(isa, g, grad, g.filter(weight, c), out);
            }
        },
    );
    out
}

/// The gradient of the filters (`[C, 1, k, k]`), given that of the output.
pub(super) fn filter_grad(g: &Geometry, x: &[f32], grad: &[f32]) -> Vec<f32> {
    let isa = Isa::best();
    let taps = g.k * g.k;
    let mut out = vec![0.0f32; g.c * taps];
    // One task per channel, images in order: the sums do not depend on the thread count.
    out.par_chunks_mut(taps).enumerate().for_each(|(c, out)| {
        let mut acc = vec![0.0f64; taps];
        for n in 0..g.n {
            let plane = n * g.c + c;
            let x = g.padded(&x[plane * g.in_plane()..][..g.in_plane()]);
            let grad = g.blocked(&grad[plane * g.out_plane()..][..g.out_plane()]);
            simd::weight_grad_plane(isa, g, &x, &grad, &mut acc);
        }
        out.iter_mut().zip(&acc).for_each(|(o, a)| *o = *a as f32);
    });
    out
}

/// `sum over images and positions of grad * box(x)` per channel (`[C]`).
pub(super) fn offset_grad(g: &Geometry, x: &[f32], grad: &[f32]) -> Vec<f32> {
    let mut out = vec![0.0f32; g.c];
    // One task per channel, images in order, as for the filter gradient.
    out.par_iter_mut().enumerate().for_each(|(c, out)| {
        let mut acc = 0.0f64;
        for n in 0..g.n {
            let plane = n * g.c + c;
            let boxed = g.box_sums(&g.padded(&x[plane * g.in_plane()..][..g.in_plane()]));
            let grad = &grad[plane * g.out_plane()..][..g.out_plane()];
            acc += boxed.iter().zip(grad).map(|(&b, &g)| b as f64 * g as f64).sum::<f64>();
        }
        *out = acc as f32;
    });
    out
}

/// Output columns computed together: one AVX2 vector.
const LANES: usize = 8;

/// Sizes of one depthwise convolution.
pub(super) struct Geometry {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub k: usize,
    pub stride: usize,
    pub oh: usize,
    pub ow: usize,
}

impl Geometry {
    pub fn new([n, c, h, w]: [usize; 4], k: usize, stride: usize) -> Self {
        assert!(k % 2 == 1, "depthwise kernels are odd, found {k}");
        let out = |len: usize| (len + 2 * (k / 2) - k) / stride + 1;
        Geometry { n, c, h, w, k, stride, oh: out(h), ow: out(w) }
    }

    /// The sum of every `k x k` window of a [`Self::padded`] plane that an
    /// output reads (`oh x ow`): a row pass, then a column pass.
    fn box_sums(&self, padded: &[f32]) -> Vec<f32> {
        let (hp, wp) = self.padded_dims();
        let (k, s) = (self.k, self.stride);
        let mut across = vec![0.0f32; hp * self.ow];
        for (row, sums) in padded.chunks_exact(wp).zip(across.chunks_exact_mut(self.ow)) {
            for (ox, sum) in sums.iter_mut().enumerate() {
                *sum = row[ox * s..][..k].iter().sum();
            }
        }
        let mut out = vec![0.0f32; self.oh * self.ow];
        for (oy, sums) in out.chunks_exact_mut(self.ow).enumerate() {
            for row in across.chunks_exact(self.ow).skip(oy * s).take(k) {
                sums.iter_mut().zip(row).for_each(|(o, &v)| *o += v);
            }
        }
        out
    }

    fn in_plane(&self) -> usize {
        self.h * self.w
    }

    fn out_plane(&self) -> usize {
        self.oh * self.ow
    }

    fn filter<'a>(&self, weight: &'a [f32], c: usize) -> &'a [f32] {
        &weight[c * self.k * self.k..][..self.k * self.k]
    }

    /// The input row of output row `oy` and filter row `ky`, if inside.
    fn input_row(&self, oy: usize, ky: usize) -> Option<usize> {
        (oy * self.stride + ky).checked_sub(self.k / 2).filter(|&iy| iy < self.h)
    }

    /// The outputs `ox` whose input column `ox * stride + kx - k/2` is
    /// inside, and that column for the first of them; `None` if none is.
    fn columns(&self, kx: usize) -> Option<(std::ops::Range<usize>, usize)> {
        let pad = self.k / 2;
        let first = pad.saturating_sub(kx).div_ceil(self.stride);
        let end = (self.w + pad).saturating_sub(kx).div_ceil(self.stride).min(self.ow);
        (first < end).then(|| (first..end, first * self.stride + kx - pad))
    }

    /// Output columns rounded up to whole vectors of [`LANES`].
    fn ow_blocked(&self) -> usize {
        self.ow.div_ceil(LANES) * LANES
    }

    /// Rows and columns of [`Self::padded`].
    fn padded_dims(&self) -> (usize, usize) {
        ((self.oh - 1) * self.stride + self.k, (self.ow_blocked() - 1) * self.stride + self.k)
    }

    /// An `h x w` plane with `k/2` zeros around it (and more on the right,
    /// so that every lane of the last vector of a row reads inside): the
    /// inner loops then need no bounds.
    fn padded(&self, plane: &[f32]) -> Vec<f32> {
        let (hp, wp) = self.padded_dims();
        let pad = self.k / 2;
        let mut out = vec![0.0f32; hp * wp];
        for (iy, row) in plane.chunks_exact(self.w).enumerate().take(hp.saturating_sub(pad)) {
            let cols = self.w.min(wp - pad);
            out[(iy + pad) * wp + pad..][..cols].copy_from_slice(&row[..cols]);
        }
        out
    }

    /// An `oh x ow` plane with its rows padded by zeros to [`Self::ow_blocked`].
    fn blocked(&self, plane: &[f32]) -> Vec<f32> {
        let owb = self.ow_blocked();
        let mut out = vec![0.0f32; self.oh * owb];
        for (row, from) in out.chunks_exact_mut(owb).zip(plane.chunks_exact(self.ow)) {
            row[..self.ow].copy_from_slice(from);
        }
        out
    }

    /// Adds the correlation of a [`Self::padded`] plane with `filter` to
    /// `out` (`oh x ow`): [`LANES`] outputs at a time, held in registers
    /// through all `k * k` taps.
    #[inline(always)]
    fn correlate_plane_auto(&self, padded: &[f32], filter: &[f32], out: &mut [f32]) {
        let (_, wp) = self.padded_dims();
        let (k, s) = (self.k, self.stride);
        for (oy, out) in out.chunks_exact_mut(self.ow).enumerate() {
            for (block, out) in out.chunks_mut(LANES).enumerate() {
                let mut acc = [0.0f32; LANES];
                for ky in 0..k {
                    let row = &padded[(oy * s + ky) * wp..][..wp];
                    for (kx, &tap) in filter[ky * k..][..k].iter().enumerate() {
                        let first = block * LANES * s + kx;
                        if s == 1 {
                            let v: &[f32; LANES] = row[first..first + LANES].try_into().expect("LANES values");
                            for l in 0..LANES {
                                acc[l] += tap * v[l];
                            }
                        } else {
                            for (l, a) in acc.iter_mut().enumerate() {
                                *a += tap * row[first + l * s];
                            }
                        }
                    }
                }
                out.iter_mut().zip(&acc).for_each(|(o, a)| *o += a);
            }
        }
    }

    #[inline(always)]
    fn input_grad_plane(&self, grad: &[f32], filter: &[f32], out: &mut [f32]) {
        for (oy, grad) in grad.chunks_exact(self.ow).enumerate() {
            for ky in 0..self.k {
                let Some(iy) = self.input_row(oy, ky) else { continue };
                let row = &mut out[iy * self.w..][..self.w];
                for kx in 0..self.k {
                    let tap = filter[ky * self.k + kx];
                    let Some((cols, start)) = self.columns(kx) else { continue };
                    let grad = &grad[cols];
                    if self.stride == 1 {
                        row[start..].iter_mut().zip(grad).for_each(|(o, &g)| *o += tap * g);
                    } else {
                        row[start..].iter_mut().step_by(self.stride).zip(grad).for_each(|(o, &g)| *o += tap * g);
                    }
                }
            }
        }
    }

    /// Adds one image's contribution to a channel's filter gradient, from
    /// its [`Self::padded`] input and [`Self::blocked`] output gradient: per
    /// tap, [`LANES`] partial sums in registers, then one f64 sum.
    #[inline(always)]
    fn weight_grad_plane_auto(&self, padded: &[f32], grad: &[f32], acc: &mut [f64]) {
        let (_, wp) = self.padded_dims();
        let (k, s, owb) = (self.k, self.stride, self.ow_blocked());
        for (tap, acc) in acc.iter_mut().enumerate() {
            let (ky, kx) = (tap / k, tap % k);
            let mut lanes = [0.0f32; LANES];
            for (oy, grad) in grad.chunks_exact(owb).enumerate() {
                let row = &padded[(oy * s + ky) * wp..][..wp];
                for (block, g) in grad.chunks_exact(LANES).enumerate() {
                    let first = block * LANES * s + kx;
                    if s == 1 {
                        let v: &[f32; LANES] = row[first..first + LANES].try_into().expect("LANES values");
                        for l in 0..LANES {
                            lanes[l] += g[l] * v[l];
                        }
                    } else {
                        for (l, a) in lanes.iter_mut().enumerate() {
                            *a += g[l] * row[first + l * s];
                        }
                    }
                }
            }
            *acc += lanes.iter().map(|&v| v as f64).sum::<f64>();
        }
    }
}

/// The plane kernels built per instruction set (chosen at run time).
mod simd {
    use super::Geometry;
    use crate::cpu::{per_isa, Isa};

    per_isa!(fn correlate_plane_auto(g: &Geometry, padded: &[f32], filter: &[f32], out: &mut [f32])
        => Geometry::correlate_plane_auto, Geometry::correlate_plane_auto, Geometry::correlate_plane_auto);
    per_isa!(pub(super) fn input_grad_plane(g: &Geometry, grad: &[f32], filter: &[f32], out: &mut [f32])
        => Geometry::input_grad_plane, Geometry::input_grad_plane, Geometry::input_grad_plane);
    per_isa!(fn weight_grad_plane_auto(g: &Geometry, padded: &[f32], grad: &[f32], acc: &mut [f64])
        => Geometry::weight_grad_plane_auto, Geometry::weight_grad_plane_auto, Geometry::weight_grad_plane_auto);

    /// Stride 1, the common case, in AVX2 intrinsics where the CPU has
    /// them (the vectoriser leaves the tap loop scalar-heavy).
    pub(super) fn correlate_plane(isa: Isa, g: &Geometry, padded: &[f32], filter: &[f32], out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if g.stride == 1 && isa != Isa::Portable {
            // SAFETY: every other `Isa` means AVX2 and FMA; the slices are checked inside.
            return unsafe { super::avx2::correlate_stride1(g, padded, filter, out) };
        }
        correlate_plane_auto(isa, g, padded, filter, out)
    }

    pub(super) fn weight_grad_plane(isa: Isa, g: &Geometry, padded: &[f32], grad: &[f32], acc: &mut [f64]) {
        #[cfg(target_arch = "x86_64")]
        if g.stride == 1 && isa != Isa::Portable {
            // SAFETY: as above.
            return unsafe { super::avx2::weight_grad_stride1(g, padded, grad, acc) };
        }
        weight_grad_plane_auto(isa, g, padded, grad, acc)
    }
}

/// Stride-1 kernels in AVX2 intrinsics: raw pointers inside, because bounds
/// checks on every tap are what kept the vectorised version slow.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{Geometry, LANES};

    /// Vectors of one output row computed together: independent multiply-add
    /// chains that hide the FMA latency.
    const GROUP: usize = 4;

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn correlate_stride1(g: &Geometry, padded: &[f32], filter: &[f32], out: &mut [f32]) {
        let (hp, wp) = g.padded_dims();
        let (k, blocks) = (g.k, g.ow_blocked() / LANES);
        assert!(padded.len() >= hp * wp && filter.len() >= k * k && out.len() >= g.oh * g.ow);
        for oy in 0..g.oh {
            let mut block = 0;
            while block < blocks {
                let n = GROUP.min(blocks - block);
                let mut acc = [_mm256_setzero_ps(); GROUP];
                for ky in 0..k {
                    // SAFETY: row oy + ky < hp and columns up to blocks * LANES + k - 1 <= wp, by `padded_dims`.
                    unsafe {
                        let row = padded.as_ptr().add((oy + ky) * wp + block * LANES);
                        for kx in 0..k {
                            let tap = _mm256_set1_ps(*filter.get_unchecked(ky * k + kx));
                            for (j, acc) in acc.iter_mut().enumerate().take(n) {
                                *acc = _mm256_fmadd_ps(tap, _mm256_loadu_ps(row.add(j * LANES + kx)), *acc);
                            }
                        }
                    }
                }
                for (j, acc) in acc.iter().enumerate().take(n) {
                    let mut lanes = [0.0f32; LANES];
                    // SAFETY: `lanes` holds LANES floats.
                    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), *acc) };
                    let start = (block + j) * LANES;
                    let end = (start + LANES).min(g.ow);
                    for (o, v) in out[oy * g.ow + start..oy * g.ow + end].iter_mut().zip(lanes) {
                        *o += v;
                    }
                }
                block += n;
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn weight_grad_stride1(g: &Geometry, padded: &[f32], grad: &[f32], acc: &mut [f64]) {
        let (hp, wp) = g.padded_dims();
        let (k, owb) = (g.k, g.ow_blocked());
        assert!(padded.len() >= hp * wp && grad.len() >= g.oh * owb && acc.len() >= k * k);
        for (tap, total) in acc.iter_mut().enumerate().take(k * k) {
            let (ky, kx) = (tap / k, tap % k);
            let mut sums = [_mm256_setzero_ps(); GROUP];
            for oy in 0..g.oh {
                // SAFETY: as in `correlate_stride1`; `grad` rows are `owb` long.
                unsafe {
                    let row = padded.as_ptr().add((oy + ky) * wp + kx);
                    let grad = grad.as_ptr().add(oy * owb);
                    for b in 0..owb / LANES {
                        let s = &mut sums[b % GROUP];
                        *s = _mm256_fmadd_ps(
                            _mm256_loadu_ps(grad.add(b * LANES)),
                            _mm256_loadu_ps(row.add(b * LANES)),
                            *s,
                        );
                    }
                }
            }
            let mut lanes = [0.0f32; LANES];
            for s in sums {
                // SAFETY: `lanes` holds LANES floats.
                unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), s) };
                *total += lanes.iter().map(|&v| v as f64).sum::<f64>();
            }
        }
    }
}
