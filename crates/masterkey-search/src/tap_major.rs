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

/// Asks the CPU to start loading `x` into cache.
#[inline(always)]
pub(crate) fn prefetch(x: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    for line in x.chunks(16) {
        // SAFETY: prefetching is a hint; it never faults.
        unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(line.as_ptr().cast()) };
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
    /// Whether a filter's angle bounds to every (padded) centroid at an
    /// earlier pass, `angles` (see [`Simd::best_abs`]), still prove `own` its
    /// best centroid now that each centroid's line has turned by `turn`
    /// (`padded` angles in [`ANGLE_STEP`]s, see [`turn_steps`]).
    fn settled(self, angles: &[u16], turn: &[u16], own: usize) -> bool;
    /// Returns the index of the largest `|dot|` (the first on ties) and writes
    /// into `angles` (both a multiple of [`LANES`] long, padding zero) the
    /// angle between the filter's line and each centroid's: from above for
    /// that best one, from below for every other, in [`ANGLE_STEP`]s.
    fn best_abs(self, dots: &[f32], angles: &mut [u16]) -> usize;
}

/// Angles between lines, in [0, pi/2], are kept in 16 bits, in steps of this
/// many radians: half the bytes of an f32 to read on every pass, and the
/// bound check becomes saturating integer arithmetic.
pub(crate) const ANGLE_STEP: f64 = std::f64::consts::FRAC_PI_2 / u16::MAX as f64;

/// How far a computed `|dot|` of a unit filter and a unit centroid can be
/// from the true `|cos|` (f32 products, both a rounding off unit norm); every
/// angle bound is widened by it.
pub(crate) const DOT_MARGIN: f32 = 2e-5;

/// `acos(x)` for `x` in [0, 1] as `sqrt(1 - x)` times a polynomial
/// (Abramowitz and Stegun 4.4.46, error below 2e-8 rad): in plain f32
/// arithmetic, so that the AVX2 lanes give the same bits; the callers keep a
/// whole [`ANGLE_STEP`] (2.4e-5 rad) in hand for its error and rounding.
/// (The book's first coefficient, 1.5707963050, is pi/2 to within f32's
/// resolution.)
const ACOS_POLY: [f32; 8] = [
    std::f32::consts::FRAC_PI_2,
    -0.214_598_8,
    0.088_978_99,
    -0.050_174_3,
    0.030_891_88,
    -0.017_088_126,
    0.006_670_09,
    -0.001_262_491_1,
];

#[inline(always)]
fn acos_steps(x: f32) -> f32 {
    let mut p = ACOS_POLY[7];
    for &a in ACOS_POLY[..7].iter().rev() {
        p = p * x + a;
    }
    (1.0 - x).sqrt() * p * (1.0 / ANGLE_STEP) as f32
}

/// The angle to a line at computed `|dot|` `abs_dot`, from below.
#[inline(always)]
fn angle_below(abs_dot: f32) -> u16 {
    ((acos_steps((abs_dot + DOT_MARGIN).min(1.0)).floor() as i32) - 1).clamp(0, u16::MAX as i32) as u16
}

/// The angle to a line at computed `|dot|` `abs_dot`, from above.
#[inline(always)]
fn angle_above(abs_dot: f32) -> u16 {
    ((acos_steps((abs_dot - DOT_MARGIN).clamp(0.0, 1.0)).ceil() as i32) + 1).clamp(0, u16::MAX as i32) as u16
}

/// How far a centroid's line has turned, given the `|cos|` between its old
/// and new direction (computed in f64), in [`ANGLE_STEP`]s from above.
pub(crate) fn turn_steps(abs_cos: f64) -> u16 {
    ((abs_cos.clamp(0.0, 1.0).acos() / ANGLE_STEP).ceil() + 1.0).min(u16::MAX as f64) as u16
}

/// [`Simd::best_abs`] in plain arithmetic, for any target.
#[inline(always)]
fn best_abs_portable(dots: &[f32], angles: &mut [u16]) -> usize {
    let mut best = 0;
    for (i, (d, a)) in dots.iter().zip(angles.iter_mut()).enumerate() {
        *a = angle_below(d.abs());
        if d.abs() > dots[best].abs() {
            best = i;
        }
    }
    angles[best] = angle_above(dots[best].abs());
    best
}

/// [`Simd::settled`] in plain arithmetic, for any target.
///
/// Angles between lines obey the triangle inequality: a filter at angle `a`
/// from the line of a centroid that turns by `t` ends between `a - t` and
/// `a + t` from it. The own centroid stays best while its bound from above
/// is below every other's from below.
#[inline(always)]
fn settled_portable(angles: &[u16], turn: &[u16], own: usize) -> bool {
    let own_above = angles[own] as u32 + turn[own] as u32;
    (0..angles.len()).all(|j| j == own || own_above < angles[j].saturating_sub(turn[j]) as u32)
}

/// [`Simd::settled`] in 128-bit integer vectors, eight centroids at a time:
/// saturating differences, the own lane masked out, the lowest of all found
/// by `minpos`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn settled_avx2(angles: &[u16], turn: &[u16], own: usize) -> bool {
    use std::arch::x86_64::*;
    let own_lane = _mm_set1_epi16(own as i16);
    let mut lane = _mm_setr_epi16(0, 1, 2, 3, 4, 5, 6, 7);
    let mut lowest = _mm_set1_epi16(-1);
    for (a, t) in angles.chunks_exact(LANES).zip(turn.chunks_exact(LANES)) {
        // SAFETY: `a` and `t` hold LANES u16 each.
        let (a, t) = unsafe { (_mm_loadu_si128(a.as_ptr().cast()), _mm_loadu_si128(t.as_ptr().cast())) };
        let below = _mm_or_si128(_mm_subs_epu16(a, t), _mm_cmpeq_epi16(lane, own_lane));
        lowest = _mm_min_epu16(lowest, below);
        lane = _mm_add_epi16(lane, _mm_set1_epi16(LANES as i16));
    }
    let others_below = (_mm_cvtsi128_si32(_mm_minpos_epu16(lowest)) & 0xffff) as u32;
    (angles[own] as u32 + turn[own] as u32) < others_below
}

/// [`Simd::best_abs`] in AVX2 vectors: lane-wise maxima, one horizontal
/// maximum, then the first lane that equals it (no unpredictable branches);
/// the bounds from below by the same arithmetic as [`angle_below`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn best_abs_avx2(dots: &[f32], angles: &mut [u16]) -> usize {
    use std::arch::x86_64::*;
    let magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(i32::MAX));
    let one = _mm256_set1_ps(1.0);
    let mut top = _mm256_setzero_ps();
    for (d, out) in dots.chunks_exact(LANES).zip(angles.chunks_exact_mut(LANES)) {
        // SAFETY: `d` holds LANES floats.
        let a = _mm256_and_ps(unsafe { _mm256_loadu_ps(d.as_ptr()) }, magnitude);
        let x = _mm256_min_ps(_mm256_add_ps(a, _mm256_set1_ps(DOT_MARGIN)), one);
        let mut p = _mm256_set1_ps(ACOS_POLY[7]);
        for &c in ACOS_POLY[..7].iter().rev() {
            p = _mm256_add_ps(_mm256_mul_ps(p, x), _mm256_set1_ps(c));
        }
        let steps = _mm256_mul_ps(
            _mm256_mul_ps(_mm256_sqrt_ps(_mm256_sub_ps(one, x)), p),
            _mm256_set1_ps((1.0 / ANGLE_STEP) as f32),
        );
        let q = _mm256_sub_epi32(_mm256_cvtps_epi32(_mm256_floor_ps(steps)), _mm256_set1_epi32(1));
        let q = _mm_packus_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256::<1>(q));
        // SAFETY: `out` holds LANES u16.
        unsafe { _mm_storeu_si128(out.as_mut_ptr().cast(), q) };
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
            let best = g * LANES + hit.trailing_zeros() as usize;
            angles[best] = angle_above(dots[best].abs());
            return best;
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
    fn settled(self, angles: &[u16], turn: &[u16], own: usize) -> bool {
        // SAFETY: a `Fused` exists only where the CPU has AVX2 and FMA.
        unsafe { settled_avx2(angles, turn, own) }
    }

    #[inline(always)]
    fn best_abs(self, dots: &[f32], angles: &mut [u16]) -> usize {
        // SAFETY: a `Fused` exists only where the CPU has AVX2 and FMA.
        unsafe { best_abs_avx2(dots, angles) }
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
    fn settled(self, angles: &[u16], turn: &[u16], own: usize) -> bool {
        settled_portable(angles, turn, own)
    }

    #[inline(always)]
    fn best_abs(self, dots: &[f32], angles: &mut [u16]) -> usize {
        best_abs_portable(dots, angles)
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
            let favoured = rng.random_range(0..padded);
            let dots: Vec<f32> =
                (0..padded).map(|j| rng.random_range(-1.0f32..1.0) * if j == favoured { 1.0 } else { 0.5 }).collect();
            let (mut angles, mut angles_avx2) = (vec![0u16; padded], vec![0u16; padded]);
            let own = best_abs_portable(&dots, &mut angles);
            // SAFETY: the CPU has AVX2 and FMA, checked above.
            assert_eq!(own, unsafe { best_abs_avx2(&dots, &mut angles_avx2) });
            assert_eq!(angles, angles_avx2);
            let turn: Vec<u16> = (0..padded).map(|_| turn_steps(1.0 - rng.random_range(0.0..0.02))).collect();
            // SAFETY: as above.
            let avx2 = unsafe { settled_avx2(&angles, &turn, own) };
            assert_eq!(settled_portable(&angles, &turn, own), avx2);
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

    #[test]
    fn angle_bounds_bracket_the_true_angle_within_the_dot_margin() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        for i in 0..200_000 {
            // Half the samples crowd |cos| = 1, where acos is steepest.
            let truth: f64 =
                if i % 2 == 0 { rng.random_range(0.0..1.0) } else { 1.0 - rng.random_range(0.0..1e-3f64).powi(2) };
            let computed = (truth as f32 + rng.random_range(-0.99..0.99) * DOT_MARGIN).max(0.0);
            let angle = truth.acos();
            let (below, above) = (angle_below(computed) as f64 * ANGLE_STEP, angle_above(computed) as f64 * ANGLE_STEP);
            assert!(
                below <= angle && angle <= above,
                "|cos| {truth} computed {computed}: {below} <= {angle} <= {above}"
            );
            assert!(turn_steps(truth) as f64 * ANGLE_STEP >= angle);
        }
        // The bounds are tight away from |cos| = 1: a few steps, not a blur.
        let (below, above) = (angle_below(0.5), angle_above(0.5));
        assert!(above - below < 8, "{below}..{above}");
    }
}
