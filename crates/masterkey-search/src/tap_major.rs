//! Dot products of filters with a few keys, laid out for the compiler's
//! vectoriser (the trick of `masterkey_core::fit`, which keeps it private),
//! and compiled twice: for the build's baseline target and, picked at run
//! time, for AVX2 with fused multiply-add.

/// Keys are padded to a multiple of this many lanes.
pub(crate) const LANES: usize = 8;

/// The best key of one filter.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Best {
    pub key: usize,
    /// The signed dot product with it.
    pub dot: f32,
    /// The largest `|dot|` with any other key.
    pub second_abs: f32,
}

/// Filters handled together by [`TapMajorKeys::best_of_block`].
pub(crate) const BLOCK: usize = 4;

/// Keys laid out tap-major (`[tap][key]`, keys padded to a multiple of
/// [`LANES`]) so the inner loop over keys is a fixed-width multiply-add the
/// compiler vectorises. Unlike `masterkey_core::fit`, [`BLOCK`] filters share
/// each loaded row of keys, and the dot products live in local arrays (in
/// registers), so the multiply-adds form independent chains instead of one
/// chain through memory per filter.
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

    /// For each of [`BLOCK`] filters: the key with the largest `|<x, key>|`
    /// (the first on ties), that signed dot product, and the largest `|<x, key>|`
    /// of the other keys (0 if there are none).
    #[inline(always)]
    pub(crate) fn best_of_block(&self, xs: [&[f32]; BLOCK], m: impl MulAdd) -> [Best; BLOCK] {
        let xs = xs.map(|x| &x[..self.taps]);
        let mut best_key = [0usize; BLOCK];
        let mut best_dot = [0.0f32; BLOCK];
        let mut best_abs = [-1.0f32; BLOCK];
        let mut second_abs = [0.0f32; BLOCK];
        for group in 0..self.padded / LANES {
            let mut acc = [[0.0f32; LANES]; BLOCK];
            for t in 0..self.taps {
                let start = t * self.padded + group * LANES;
                let row: &[f32; LANES] = self.data[start..start + LANES].try_into().expect("a full lane group");
                for (acc, x) in acc.iter_mut().zip(&xs) {
                    let v = x[t];
                    for l in 0..LANES {
                        acc[l] = m.madd(v, row[l], acc[l]);
                    }
                }
            }
            // Selects, not branches: which key wins is unpredictable. Padding
            // keys are zero and key 0 is real, so they never win the strict `>`.
            for f in 0..BLOCK {
                for (l, &d) in acc[f].iter().enumerate() {
                    let better = d.abs() > best_abs[f];
                    second_abs[f] = if better { best_abs[f].max(second_abs[f]) } else { second_abs[f].max(d.abs()) };
                    best_abs[f] = if better { d.abs() } else { best_abs[f] };
                    best_dot[f] = if better { d } else { best_dot[f] };
                    best_key[f] = if better { group * LANES + l } else { best_key[f] };
                }
            }
        }
        std::array::from_fn(|f| Best { key: best_key[f], dot: best_dot[f], second_abs: second_abs[f] })
    }
}

/// `<a, b>` in [`LANES`] partial sums, so the compiler can vectorise it.
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32], m: impl MulAdd) -> f32 {
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

/// `a * b + c`, either rounded once (fused) or twice.
pub(crate) trait MulAdd: Copy {
    fn madd(self, a: f32, b: f32, c: f32) -> f32;
}

/// `f32::mul_add`: one instruction where FMA is enabled, a slow library call elsewhere.
#[derive(Clone, Copy)]
struct Fused;

impl MulAdd for Fused {
    #[inline(always)]
    fn madd(self, a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
}

#[derive(Clone, Copy)]
struct Separate;

impl MulAdd for Separate {
    #[inline(always)]
    fn madd(self, a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
}

/// A hot loop, generic over the multiply-add so it can be compiled twice.
/// Implementations mark `run` `#[inline(always)]`, so that it is compiled
/// into [`run_simd`]'s AVX2 copy.
pub(crate) trait SimdJob {
    type Output;
    fn run(self, m: impl MulAdd) -> Self::Output;
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
