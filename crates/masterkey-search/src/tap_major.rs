//! Dot products of filters with a few keys, and the k-means bound check, in
//! two instruction sets picked at run time: the build's baseline target
//! (plain arithmetic the compiler may vectorise) and AVX2 with fused
//! multiply-add (written out in intrinsics where the vectoriser falls short).

/// Keys are padded to a multiple of this many lanes.
pub(crate) const LANES: usize = 8;

/// Filters handled together by [`TapMajorKeys::dots_of_block`]: enough
/// independent multiply-add chains to hide the FMA latency.
pub(crate) const BLOCK: usize = 8;

/// Keys laid out tap-major (`[tap][key]`, keys padded to a multiple of
/// [`LANES`] with zeros) so that one row of [`LANES`] keys is one vector,
/// shared by the [`BLOCK`] filters of a block.
pub(crate) struct TapMajorKeys {
    taps: usize,
    padded: usize,
    data: Vec<f32>,
}

impl TapMajorKeys {
    pub(crate) fn new(keys: &[f32], taps: usize) -> Self {
        let n = keys.len() / taps;
        let padded = n.div_ceil(LANES).max(1) * LANES;
        let mut data = vec![0.0; taps * padded];
        for (k, key) in keys.chunks_exact(taps).enumerate() {
            for (t, &v) in key.iter().enumerate() {
                data[t * padded + k] = v;
            }
        }
        TapMajorKeys { taps, padded, data }
    }

    /// Keys rounded up to a multiple of [`LANES`].
    pub(crate) fn padded(&self) -> usize {
        self.padded
    }

    /// The signed dot products of [`BLOCK`] filters with every key (padding
    /// keys give 0): filter `f`'s are `out[f * padded..(f + 1) * padded]`.
    #[inline(always)]
    pub(crate) fn dots_of_block(&self, xs: [&[f32]; BLOCK], out: &mut [f32], m: impl Simd) {
        m.block_dots(self, xs.map(|x| &x[..self.taps]), &mut out[..BLOCK * self.padded]);
    }

    /// [`Self::dots_of_block`] in plain arithmetic, for any target.
    #[inline(always)]
    fn block_dots_portable(&self, xs: [&[f32]; BLOCK], out: &mut [f32]) {
        for group in 0..self.padded / LANES {
            let mut acc = [[0.0f32; LANES]; BLOCK];
            for t in 0..self.taps {
                let row = &self.data[t * self.padded + group * LANES..][..LANES];
                for (acc, x) in acc.iter_mut().zip(&xs) {
                    for l in 0..LANES {
                        acc[l] += x[t] * row[l];
                    }
                }
            }
            for (f, acc) in acc.iter().enumerate() {
                out[f * self.padded + group * LANES..][..LANES].copy_from_slice(acc);
            }
        }
    }

    /// [`Self::dots_of_block`] in AVX2 vectors: each tap costs one load of a
    /// key row and, per filter, one broadcast and one fused multiply-add
    /// (written out, because the vectoriser shuffles this loop badly; raw
    /// pointers, because bounds checks on nine slices spill registers).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn block_dots_avx2(&self, xs: [&[f32]; BLOCK], out: &mut [f32]) {
        use std::arch::x86_64::{
            _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_set1_ps, _mm256_setzero_ps, _mm256_storeu_ps,
        };
        assert!(xs.iter().all(|x| x.len() >= self.taps) && out.len() >= BLOCK * self.padded);
        let xs = xs.map(|x| x.as_ptr());
        for group in 0..self.padded / LANES {
            let mut acc = [_mm256_setzero_ps(); BLOCK];
            for (t, row) in self.data.chunks_exact(self.padded).enumerate() {
                // SAFETY: every `row` holds `padded` floats and every `x` at least `taps`.
                unsafe {
                    let row = _mm256_loadu_ps(row.as_ptr().add(group * LANES));
                    for (acc, x) in acc.iter_mut().zip(&xs) {
                        *acc = _mm256_fmadd_ps(_mm256_set1_ps(*x.add(t)), row, *acc);
                    }
                }
            }
            for (f, acc) in acc.iter().enumerate() {
                // SAFETY: `out` holds BLOCK * padded floats, checked above.
                unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(f * self.padded + group * LANES), *acc) };
            }
        }
    }
}

/// `<a, b>` in [`LANES`] partial sums, so the compiler can vectorise it.
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32], m: impl Simd) -> f32 {
    let mut acc = [0.0f32; LANES];
    let (a_body, b_body) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = a_body.remainder().iter().zip(b_body.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in a_body.zip(b_body) {
        for l in 0..LANES {
            acc[l] = m.madd(x[l], y[l], acc[l]);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// The instruction set a [`SimdJob`] is compiled for: AVX2 with multiply-adds
/// rounded once (fused), or the baseline with them rounded twice.
pub(crate) trait Simd: Copy {
    fn madd(self, a: f32, b: f32, c: f32) -> f32;
    fn block_dots(self, keys: &TapMajorKeys, xs: [&[f32]; BLOCK], out: &mut [f32]);
    /// Whether a filter's `|cos|` to every (padded) centroid at an earlier
    /// pass, `fits` (see [`quantise`]), still prove `own` its best centroid
    /// now that each has turned by an angle with the cosines and sines in
    /// `turn` (`padded` of each; see [`SETTLE_MARGIN`]).
    fn settled(self, fits: &[u16], turn: &[f32], own: usize) -> bool;
    /// Writes `|dots|` [`quantise`]d into `fits` (both a multiple of [`LANES`]
    /// long, padding zero) and returns the index of the largest `|dot|` (the
    /// first on ties).
    fn best_abs(self, dots: &[f32], fits: &mut [u16]) -> usize;
}

/// `|cos|` kept in 16 bits (at most half a step, 7.7e-6, off), which halves
/// the bytes the bound check reads on every pass.
const STEPS: f32 = u16::MAX as f32;

#[inline(always)]
fn quantise(abs_cos: f32) -> u16 {
    (abs_cos.min(1.0) * STEPS).round_ties_even() as u16
}

/// Widens every bound of [`Simd::settled`], so that rounding (f32 dot
/// products, filters or centroids a rounding off unit norm, [`quantise`]) can
/// never make a bound claim more than the arithmetic supports.
pub(crate) const SETTLE_MARGIN: f32 = 2e-5;

/// [`Simd::best_abs`] in plain arithmetic, for any target.
#[inline(always)]
fn best_abs_portable(dots: &[f32], fits: &mut [u16]) -> usize {
    let mut best = 0;
    for (i, (d, f)) in dots.iter().zip(fits.iter_mut()).enumerate() {
        *f = quantise(d.abs());
        if d.abs() > dots[best].abs() {
            best = i;
        }
    }
    best
}

/// [`Simd::settled`] in plain arithmetic, for any target.
///
/// A filter at angle `a` from the line of a centroid that turns by `t` ends
/// between `a - t` and `a + t` from it: `|cos|` at least `cos(a + t)` and at
/// most `cos(max(a - t, 0))`, `cos a * cos t -/+ sin a * sin t`. `sin a` comes
/// from `|cos|` widened by the margin, which errs on the safe side for both.
#[inline(always)]
fn settled_portable(fits: &[u16], turn: &[f32], own: usize) -> bool {
    let (cos, sin) = turn.split_at(fits.len());
    let turned = |j: usize| {
        let f = fits[j] as f32 / STEPS;
        let sin_f = ((1.0 - f * f).max(0.0) + 2.0 * SETTLE_MARGIN).sqrt();
        (f * cos[j] - sin_f * sin[j], if f >= cos[j] { 1.0 } else { f * cos[j] + sin_f * sin[j] })
    };
    let lower = turned(own).0 - SETTLE_MARGIN;
    (0..fits.len()).all(|j| j == own || turned(j).1 + SETTLE_MARGIN < lower)
}

/// [`Simd::settled`] in AVX2 vectors, [`LANES`] centroids at a time with no
/// scalar step (the check runs on every filter on every pass): lane-wise
/// maxima of the other centroids' upper bounds, the own lower bound picked
/// out of its lane, one comparison.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn settled_avx2(fits: &[u16], turn: &[f32], own: usize) -> bool {
    use std::arch::x86_64::*;
    let (cos, sin) = turn.split_at(fits.len());
    let margin = _mm256_set1_ps(SETTLE_MARGIN);
    let own_lane = _mm256_set1_epi32(own as i32);
    let mut lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let mut upper = _mm256_setzero_ps();
    let mut lower = _mm256_setzero_ps();
    for ((f, c), s) in fits.chunks_exact(LANES).zip(cos.chunks_exact(LANES)).zip(sin.chunks_exact(LANES)) {
        // SAFETY: `f`, `c` and `s` hold LANES values each.
        let (f, c, s) = unsafe {
            let f = _mm256_cvtepu16_epi32(_mm_loadu_si128(f.as_ptr().cast()));
            (
                _mm256_mul_ps(_mm256_cvtepi32_ps(f), _mm256_set1_ps(1.0 / STEPS)),
                _mm256_loadu_ps(c.as_ptr()),
                _mm256_loadu_ps(s.as_ptr()),
            )
        };
        let room = _mm256_max_ps(_mm256_fnmadd_ps(f, f, _mm256_set1_ps(1.0)), _mm256_setzero_ps());
        let sin_f = _mm256_sqrt_ps(_mm256_add_ps(room, _mm256_add_ps(margin, margin)));
        let (fc, ss) = (_mm256_mul_ps(f, c), _mm256_mul_ps(sin_f, s));
        let up = _mm256_blendv_ps(_mm256_add_ps(fc, ss), _mm256_set1_ps(1.0), _mm256_cmp_ps::<_CMP_GE_OQ>(f, c));
        let is_own = _mm256_castsi256_ps(_mm256_cmpeq_epi32(lane, own_lane));
        upper = _mm256_max_ps(upper, _mm256_andnot_ps(is_own, up));
        // The own lane's lower bound, in every lane (0 where `own` is in another group).
        let own_in_group = _mm256_and_si256(own_lane, _mm256_set1_epi32(LANES as i32 - 1));
        let picked = _mm256_permutevar8x32_ps(_mm256_sub_ps(fc, ss), own_in_group);
        let here =
            _mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_srli_epi32::<3>(lane), _mm256_srli_epi32::<3>(own_lane)));
        lower = _mm256_or_ps(lower, _mm256_and_ps(here, picked));
        lane = _mm256_add_epi32(lane, _mm256_set1_epi32(LANES as i32));
    }
    let beaten = _mm256_cmp_ps::<_CMP_LT_OQ>(_mm256_add_ps(upper, margin), _mm256_sub_ps(lower, margin));
    _mm256_movemask_ps(beaten) == 0xff
}

/// [`Simd::best_abs`] in AVX2 vectors: lane-wise maxima, one horizontal
/// maximum, then the first lane that equals it (no unpredictable branches).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn best_abs_avx2(dots: &[f32], fits: &mut [u16]) -> usize {
    use std::arch::x86_64::*;
    let magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(i32::MAX));
    let mut top = _mm256_setzero_ps();
    for (d, f) in dots.chunks_exact(LANES).zip(fits.chunks_exact_mut(LANES)) {
        // SAFETY: `d` holds LANES floats.
        let a = _mm256_and_ps(unsafe { _mm256_loadu_ps(d.as_ptr()) }, magnitude);
        let q = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_min_ps(a, _mm256_set1_ps(1.0)), _mm256_set1_ps(STEPS)));
        let q = _mm_packus_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256::<1>(q));
        // SAFETY: `f` holds LANES u16.
        unsafe { _mm_storeu_si128(f.as_mut_ptr().cast(), q) };
        top = _mm256_max_ps(top, a);
    }
    let half = _mm_max_ps(_mm256_castps256_ps128(top), _mm256_extractf128_ps::<1>(top));
    let quarter = _mm_max_ps(half, _mm_movehl_ps(half, half));
    let top = _mm256_set1_ps(_mm_cvtss_f32(_mm_max_ss(quarter, _mm_movehdup_ps(quarter))));
    for (g, d) in dots.chunks_exact(LANES).enumerate() {
        // SAFETY: `d` holds LANES floats.
        let a = _mm256_and_ps(unsafe { _mm256_loadu_ps(d.as_ptr()) }, magnitude);
        let hit = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(a, top));
        if hit != 0 {
            return g * LANES + hit.trailing_zeros() as usize;
        }
    }
    0
}

/// AVX2 with FMA; only made by [`run_fused`], once the CPU is known to have them.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Fused;

#[cfg(target_arch = "x86_64")]
impl Simd for Fused {
    #[inline(always)]
    fn madd(self, a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }

    #[inline(always)]
    fn block_dots(self, keys: &TapMajorKeys, xs: [&[f32]; BLOCK], out: &mut [f32]) {
        // SAFETY: a `Fused` exists only where the CPU has AVX2 and FMA.
        unsafe { keys.block_dots_avx2(xs, out) }
    }

    #[inline(always)]
    fn settled(self, fits: &[u16], turn: &[f32], own: usize) -> bool {
        // SAFETY: a `Fused` exists only where the CPU has AVX2 and FMA.
        unsafe { settled_avx2(fits, turn, own) }
    }

    #[inline(always)]
    fn best_abs(self, dots: &[f32], fits: &mut [u16]) -> usize {
        // SAFETY: a `Fused` exists only where the CPU has AVX2 and FMA.
        unsafe { best_abs_avx2(dots, fits) }
    }
}

#[derive(Clone, Copy)]
struct Separate;

impl Simd for Separate {
    #[inline(always)]
    fn madd(self, a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }

    #[inline(always)]
    fn block_dots(self, keys: &TapMajorKeys, xs: [&[f32]; BLOCK], out: &mut [f32]) {
        keys.block_dots_portable(xs, out)
    }

    #[inline(always)]
    fn settled(self, fits: &[u16], turn: &[f32], own: usize) -> bool {
        settled_portable(fits, turn, own)
    }

    #[inline(always)]
    fn best_abs(self, dots: &[f32], fits: &mut [u16]) -> usize {
        best_abs_portable(dots, fits)
    }
}

/// A hot loop, generic over the multiply-add so it can be compiled twice.
/// Implementations mark `run` `#[inline(always)]`, so that it is compiled
/// into [`run_simd`]'s AVX2 copy.
pub(crate) trait SimdJob {
    type Output;
    fn run(self, m: impl Simd) -> Self::Output;
}

/// Runs `job` compiled for AVX2 + FMA when the CPU has them, else for the
/// build's baseline target. Results may differ in the last bit between the
/// two, never between runs or thread counts on one machine.
pub(crate) fn run_simd<J: SimdJob>(job: J) -> J::Output {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2 and FMA, checked just above.
        return unsafe { run_fused(job) };
    }
    job.run(Separate)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn run_fused<J: SimdJob>(job: J) -> J::Output {
    job.run(Fused)
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn has_avx2() -> bool {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }

    #[test]
    fn avx2_bound_check_and_best_key_agree_with_the_portable_ones() {
        if !has_avx2() {
            return;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let padded = 2 * LANES;
        let (mut settled, mut open) = (0, 0);
        for _ in 0..5000 {
            let own = rng.random_range(0..padded);
            let dots: Vec<f32> =
                (0..padded).map(|j| rng.random_range(-1.0f32..1.0) * if j == own { 1.0 } else { 0.5 }).collect();
            let (mut fits, mut fits_avx2) = (vec![0u16; padded], vec![0u16; padded]);
            // SAFETY: the CPU has AVX2 and FMA, checked above.
            assert_eq!(best_abs_portable(&dots, &mut fits), unsafe { best_abs_avx2(&dots, &mut fits_avx2) });
            assert_eq!(fits, fits_avx2);
            let turn: Vec<f32> = {
                let cos: Vec<f32> = (0..padded).map(|_| 1.0 - rng.random_range(0.0f32..0.02)).collect();
                let sin: Vec<f32> = cos.iter().map(|c| (1.0 - c * c).sqrt()).collect();
                [cos, sin].concat()
            };
            // SAFETY: as above.
            let avx2 = unsafe { settled_avx2(&fits, &turn, own) };
            assert_eq!(settled_portable(&fits, &turn, own), avx2);
            if avx2 {
                settled += 1
            } else {
                open += 1
            }
        }
        assert!(settled > 100 && open > 100, "{settled} settled, {open} open");
    }

    #[test]
    fn avx2_block_dots_agree_with_the_portable_ones() {
        if !has_avx2() {
            return;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        let (taps, k) = (49, 11);
        let keys: Vec<f32> = (0..k * taps).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let filters: Vec<f32> = (0..BLOCK * taps).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let keys = TapMajorKeys::new(&keys, taps);
        let xs = std::array::from_fn(|f| &filters[f * taps..(f + 1) * taps]);
        let (mut plain, mut avx2) = (vec![0.0; BLOCK * keys.padded()], vec![0.0; BLOCK * keys.padded()]);
        keys.block_dots_portable(xs, &mut plain);
        // SAFETY: the CPU has AVX2 and FMA, checked above.
        unsafe { keys.block_dots_avx2(xs, &mut avx2) };
        for (a, b) in plain.iter().zip(&avx2) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
        assert!(plain.chunks_exact(keys.padded()).all(|d| d[k..].iter().all(|&v| v == 0.0)));
    }
}
