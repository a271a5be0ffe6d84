//! Channels-last (`[N, H, W, C]`) depthwise kernels. The channels of a pixel
//! are contiguous, so every tap is one vector multiply-add across channels
//! with no shuffles, and the rest of a ConvNeXt block (LayerNorm, the MLP's
//! matrix products, the residual sum) reads the same layout: no permute
//! copies, forward or backward.
//!
//! Each image is first spread into a zero-bordered buffer whose channels are
//! padded to whole vectors (one buffer per worker, reused), so the inner loops
//! carry no bounds. The buffer holds one vector's channels of every pixel
//! together (`[C / lanes][rows][width][lanes]`): in plain channels-last order
//! the vectors one channel group reads lie 256 bytes apart (64 channels), so
//! they fall into a quarter of the L1 cache's sets and evict each other;
//! blocked, a 7-row window of one group is 17 KB in a row (measured: forward
//! 1.28x faster than the plain order). The kernels are written once over
//! [`Vector`] and compiled for AVX-512, AVX2 and plain Rust; the widest the
//! CPU has is used.

use rayon::prelude::*;

use crate::cpu::{written, Isa};

/// Sizes of one channels-last depthwise convolution.
#[derive(Clone, Copy, Debug)]
pub(super) struct Shape {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub k: usize,
    pub stride: usize,
    pub oh: usize,
    pub ow: usize,
}

impl Shape {
    pub fn new([n, h, w, c]: [usize; 4], k: usize, stride: usize) -> Self {
        assert!(k % 2 == 1, "depthwise kernels are odd, found {k}");
        let out = |len: usize| (len + 2 * (k / 2) - k) / stride + 1;
        Shape { n, h, w, c, k, stride, oh: out(h), ow: out(w) }
    }

    fn image(&self) -> usize {
        self.h * self.w * self.c
    }

    fn out_image(&self) -> usize {
        self.oh * self.ow * self.c
    }

    fn taps(&self) -> usize {
        self.k * self.k
    }
}

impl Isa {
    /// Floats in one vector of the kernels built for this instruction set.
    fn lanes(self) -> usize {
        match self {
            Isa::Avx512 => 16,
            Isa::Avx2 | Isa::Portable => 8,
        }
    }
}

/// One correlation of a zero-bordered buffer (`(rows - 1) * stride + k` rows
/// of `width` pixels of `padded` floats, in blocks of `lanes` channels) with
/// `k x k` taps into `rows x cols` outputs of `channels` floats.
#[derive(Clone, Copy, Debug)]
struct Grid {
    rows: usize,
    cols: usize,
    width: usize,
    channels: usize,
    padded: usize,
    /// Channels of a pixel stored together; `padded` (one block) is plain
    /// channels-last order.
    lanes: usize,
    k: usize,
    stride: usize,
}

impl Grid {
    fn buffer_rows(&self) -> usize {
        (self.rows - 1) * self.stride + self.k
    }

    fn buffer_len(&self) -> usize {
        self.buffer_rows() * self.width * self.padded
    }

    /// Floats between channel `cv` and channel `cv + lanes` of a pixel.
    fn block_len(&self) -> usize {
        self.buffer_rows() * self.width * self.lanes
    }

    /// Index of channel `cv` of buffer pixel `(y, x)`.
    fn at(&self, y: usize, x: usize, cv: usize) -> usize {
        cv / self.lanes * self.block_len() + (y * self.width + x) * self.lanes + cv % self.lanes
    }

    /// The grid of a forward pass: outputs `oh x ow` read the input
    /// bordered by `k/2` (and cut where the stride leaves the last rows unread).
    fn forward(s: &Shape, isa: Isa) -> Grid {
        Grid {
            rows: s.oh,
            cols: s.ow,
            width: (s.ow - 1) * s.stride + s.k,
            channels: s.c,
            padded: s.c.div_ceil(isa.lanes()) * isa.lanes(),
            lanes: isa.lanes(),
            k: s.k,
            stride: s.stride,
        }
    }

    /// The grid of the input gradient: a stride-1 correlation of the output
    /// gradient, spread `stride` apart and bordered by `k/2`, with the taps
    /// turned by 180 degrees, giving `h x w` values.
    fn input_grad(s: &Shape, isa: Isa) -> Grid {
        Grid { rows: s.h, cols: s.w, width: s.w + s.k - 1, stride: 1, ..Grid::forward(s, isa) }
    }

    /// Copies `src` into `buffer` (see [`Source`]); every other value
    /// (border, gaps, padded channels) is zero. `buffer` is empty or was last
    /// filled from a source of this size by this grid (each caller keeps one
    /// buffer per grid): then its zeros are still in place and only the
    /// pixels are copied again.
    fn spread(&self, isa: Isa, src: Source, buffer: &mut Vec<f32>) {
        kernels::spread(isa, self, src, buffer)
    }
}

/// An image to spread into a grid's buffer: `rows x cols` pixels of the
/// grid's channels, pixel `(i, j)` going to `(k/2 + i * step, k/2 + j * step)`
/// (those past the buffer are dropped).
#[derive(Clone, Copy)]
struct Source<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    step: usize,
}

impl Source<'_> {
    /// Image `n` of a batch of `rows x cols` images of `channels` floats.
    fn image(batch: &[f32], n: usize, rows: usize, cols: usize, channels: usize, step: usize) -> Source<'_> {
        let len = rows * cols * channels;
        Source { data: &batch[n * len..][..len], rows, cols, step }
    }
}

/// The image after image `n` in a batch of images of `len` values (empty
/// after the last).
fn next_image(batch: &[f32], len: usize, n: usize) -> &[f32] {
    batch.get((n + 1) * len..(n + 2) * len).unwrap_or(&[])
}

/// Asks for piece `piece` of `pieces` of `data` to be brought into the L2
/// cache (a hint: no effect on results). One request per 128 bytes: the L2
/// fetches lines in pairs.
#[inline(always)]
fn prefetch_piece(data: &[f32], piece: usize, pieces: usize) {
    let len = data.len().div_ceil(pieces.max(1));
    let start = (piece * len).min(data.len());
    let end = (start + len).min(data.len());
    for pair in (start..end).step_by(32) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `pair < data.len()`; a prefetch only hints, it never faults.
        unsafe {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
            _mm_prefetch::<_MM_HINT_T1>(data.as_ptr().add(pair).cast());
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = pair;
    }
}

/// Orders the streaming stores before this thread's later stores, such as
/// the one telling another thread the work is done (they bypass the usual
/// x86 store order).
fn fence_streams() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE is part of x86_64.
    unsafe {
        std::arch::x86_64::_mm_sfence()
    }
}

/// Taps as `[k * k][padded]` (channels contiguous, zero past `c`), from
/// filters `[C, 1, k, k]`, optionally turned by 180 degrees.
fn taps(weight: &[f32], s: &Shape, padded: usize, turned: bool) -> Vec<f32> {
    let taps = s.taps();
    let mut out = vec![0.0f32; taps * padded];
    for (c, filter) in weight.chunks_exact(taps).enumerate() {
        for (t, &v) in filter.iter().enumerate() {
            let t = if turned { taps - 1 - t } else { t };
            out[t * padded + c] = v;
        }
    }
    out
}

/// `x [N, H, W, C]` by filters `[C, 1, k, k]` plus `bias [C]`: `[N, OH, OW, C]`.
pub(super) fn forward(isa: Isa, s: &Shape, x: &[f32], weight: &[f32], bias: &[f32]) -> Vec<f32> {
    let grid = Grid::forward(s, isa);
    let taps = taps(weight, s, grid.padded, false);
    let mut padded_bias = bias.to_vec();
    padded_bias.resize(grid.padded, 0.0);
    // SAFETY: `correlate` writes every output of its grid, one image per chunk.
    unsafe {
        written(s.n * s.out_image(), |out| {
            out.par_chunks_mut(s.out_image()).enumerate().for_each_init(Vec::new, |buffer, (n, out)| {
                let (x, next) = (Source::image(x, n, s.h, s.w, s.c, 1), next_image(x, s.image(), n));
                kernels::correlate(isa, &grid, x, next, buffer, &taps, &padded_bias, out);
            });
        })
    }
}

/// The gradient of `x`, given that of the output.
pub(super) fn input_grad(isa: Isa, s: &Shape, weight: &[f32], grad: &[f32]) -> Vec<f32> {
    let grid = Grid::input_grad(s, isa);
    let taps = taps(weight, s, grid.padded, true);
    let zeros = vec![0.0f32; grid.padded];
    // SAFETY: as in `forward`.
    unsafe {
        written(s.n * s.image(), |out| {
            out.par_chunks_mut(s.image()).enumerate().for_each_init(Vec::new, |buffer, (n, out)| {
                let (grad, next) =
                    (Source::image(grad, n, s.oh, s.ow, s.c, s.stride), next_image(grad, s.out_image(), n));
                kernels::correlate(isa, &grid, grad, next, buffer, &taps, &zeros, out);
            });
        })
    }
}

/// The gradient of the filters (`[C, 1, k, k]`), given that of the output:
/// one partial sum per image, added in image order in f64, so the result
/// does not depend on the number of threads.
pub(super) fn filter_grad(isa: Isa, s: &Shape, x: &[f32], grad: &[f32]) -> Vec<f32> {
    let grid = Grid::forward(s, isa);
    let per_image = s.taps() * grid.padded;
    let mut partials = vec![0.0f32; s.n * per_image];
    partials.par_chunks_mut(per_image).enumerate().for_each_init(
        || (Vec::new(), Vec::new()),
        |(buffer, spread_grad), (n, partial)| {
            grid.spread(isa, Source::image(x, n, s.h, s.w, s.c, 1), buffer);
            let grad = &grad[n * s.out_image()..][..s.out_image()];
            let grad = if grid.padded == s.c {
                grad
            } else {
                let plain = Grid { k: 1, width: s.ow, stride: 1, lanes: grid.padded, ..grid };
                plain.spread(isa, Source { data: grad, rows: s.oh, cols: s.ow, step: 1 }, spread_grad);
                spread_grad.as_slice()
            };
            kernels::filter_grad(isa, &grid, buffer, grad, partial);
        },
    );
    let mut out = vec![0.0f32; s.c * s.taps()];
    out.par_chunks_mut(s.taps()).enumerate().for_each(|(c, filter)| {
        for (t, value) in filter.iter_mut().enumerate() {
            *value = partials.chunks_exact(per_image).map(|p| p[t * grid.padded + c] as f64).sum::<f64>() as f32;
        }
    });
    out
}

/// `sum over images and pixels of grad * box(x)` per channel (`[C]`), `box`
/// summing each `k x k` window an output reads: the gradient of an offset
/// added to every tap. A row pass then a column pass, `2k` additions per
/// value instead of the `k * k` multiply-adds of the filter gradient.
pub(super) fn offset_grad(isa: Isa, s: &Shape, x: &[f32], grad: &[f32]) -> Vec<f32> {
    let grid = Grid::forward(s, isa);
    let mut partials = vec![0.0f64; s.n * s.c];
    partials.par_chunks_mut(s.c).enumerate().for_each_init(
        || (Vec::new(), Vec::new()),
        |(buffer, across), (n, partial)| {
            grid.spread(isa, Source::image(x, n, s.h, s.w, s.c, 1), buffer);
            kernels::box_grad(isa, &grid, buffer, &grad[n * s.out_image()..][..s.out_image()], across, partial);
        },
    );
    (0..s.c).map(|c| partials.chunks_exact(s.c).map(|p| p[c]).sum::<f64>() as f32).collect()
}

// Index loops, not iterator adaptors, so that everything inlines into the
// AVX-512 and AVX2 builds of `kernels::box_grad`; `L` is the grid's `lanes`.
#[inline(always)]
fn box_grad_auto<const L: usize>(g: &Grid, buffer: &[f32], grad: &[f32], across: &mut Vec<f32>, acc: &mut [f64]) {
    assert_eq!(g.lanes, L);
    let (c, s, k) = (g.channels, g.stride, g.k);
    across.resize(g.buffer_rows() * g.cols * L, 0.0);
    let mut window = vec![0.0f32; g.cols * L];
    for (b, block) in buffer.chunks_exact(g.block_len()).enumerate() {
        across.fill(0.0);
        for (row, sums) in block.chunks_exact(g.width * L).zip(across.chunks_exact_mut(g.cols * L)) {
            for ox in 0..g.cols {
                let sum = &mut sums[ox * L..][..L];
                for kx in 0..k {
                    let pixel = &row[(ox * s + kx) * L..][..L];
                    for i in 0..L {
                        sum[i] += pixel[i];
                    }
                }
            }
        }
        let first = b * L;
        let used = L.min(c - first);
        let acc = &mut acc[first..][..used];
        for (oy, grad) in grad.chunks_exact(g.cols * c).enumerate() {
            window.fill(0.0);
            for ky in 0..k {
                let sums = &across[(oy * s + ky) * g.cols * L..][..g.cols * L];
                for i in 0..g.cols * L {
                    window[i] += sums[i];
                }
            }
            for ox in 0..g.cols {
                let (boxed, grad) = (&window[ox * L..][..used], &grad[ox * c + first..][..used]);
                for i in 0..used {
                    acc[i] += (boxed[i] * grad[i]) as f64;
                }
            }
        }
    }
}

/// A vector of f32 lanes; everything the kernels need of it.
trait Vector: Copy {
    const LANES: usize;
    /// # Safety
    /// The CPU runs the implementation's instructions.
    unsafe fn zero() -> Self;
    /// # Safety
    /// As [`Self::zero`], and `LANES` floats are readable at `p`.
    unsafe fn load(p: *const f32) -> Self;
    /// # Safety
    /// As [`Self::zero`], and `LANES` floats are writable at `p`.
    unsafe fn store(self, p: *mut f32);
    /// Stores past the caches: for outputs nothing reads again soon, which
    /// then cost no read of the line before the write.
    /// # Safety
    /// As [`Self::store`], and `p` is aligned to the vector's size.
    unsafe fn stream(self, p: *mut f32);
    /// `a * b + c`.
    /// # Safety
    /// As [`Self::zero`].
    unsafe fn mul_add(a: Self, b: Self, c: Self) -> Self;
    /// # Safety
    /// As [`Self::zero`].
    unsafe fn add(self, other: Self) -> Self;
}

/// Eight lanes in plain Rust, for CPUs without AVX2 (not fused: `mul_add`
/// would call a libm routine where the CPU has no FMA).
#[derive(Clone, Copy)]
struct Portable([f32; 8]);

impl Vector for Portable {
    const LANES: usize = 8;

    #[inline(always)]
    unsafe fn zero() -> Self {
        Portable([0.0; 8])
    }

    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        // SAFETY: the caller guarantees 8 readable floats.
        Portable(unsafe { p.cast::<[f32; 8]>().read_unaligned() })
    }

    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        // SAFETY: the caller guarantees 8 writable floats.
        unsafe { p.cast::<[f32; 8]>().write_unaligned(self.0) }
    }

    #[inline(always)]
    unsafe fn stream(self, p: *mut f32) {
        // SAFETY: as `store`.
        unsafe { self.store(p) }
    }

    #[inline(always)]
    unsafe fn mul_add(a: Self, b: Self, c: Self) -> Self {
        Portable(std::array::from_fn(|i| a.0[i] * b.0[i] + c.0[i]))
    }

    #[inline(always)]
    unsafe fn add(self, other: Self) -> Self {
        Portable(std::array::from_fn(|i| self.0[i] + other.0[i]))
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::Vector;

    #[derive(Clone, Copy)]
    pub(super) struct Avx2(__m256);

    // SAFETY (all methods): the caller guarantees AVX2 + FMA and valid pointers.
    impl Vector for Avx2 {
        const LANES: usize = 8;

        #[inline(always)]
        unsafe fn zero() -> Self {
            Avx2(unsafe { _mm256_setzero_ps() })
        }

        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            Avx2(unsafe { _mm256_loadu_ps(p) })
        }

        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            unsafe { _mm256_storeu_ps(p, self.0) }
        }

        #[inline(always)]
        unsafe fn stream(self, p: *mut f32) {
            unsafe { _mm256_stream_ps(p, self.0) }
        }

        #[inline(always)]
        unsafe fn mul_add(a: Self, b: Self, c: Self) -> Self {
            Avx2(unsafe { _mm256_fmadd_ps(a.0, b.0, c.0) })
        }

        #[inline(always)]
        unsafe fn add(self, other: Self) -> Self {
            Avx2(unsafe { _mm256_add_ps(self.0, other.0) })
        }
    }

    #[derive(Clone, Copy)]
    pub(super) struct Avx512(__m512);

    // SAFETY (all methods): the caller guarantees AVX-512F and valid pointers.
    impl Vector for Avx512 {
        const LANES: usize = 16;

        #[inline(always)]
        unsafe fn zero() -> Self {
            Avx512(unsafe { _mm512_setzero_ps() })
        }

        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            Avx512(unsafe { _mm512_loadu_ps(p) })
        }

        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            unsafe { _mm512_storeu_ps(p, self.0) }
        }

        #[inline(always)]
        unsafe fn stream(self, p: *mut f32) {
            unsafe { _mm512_stream_ps(p, self.0) }
        }

        #[inline(always)]
        unsafe fn mul_add(a: Self, b: Self, c: Self) -> Self {
            Avx512(unsafe { _mm512_fmadd_ps(a.0, b.0, c.0) })
        }

        #[inline(always)]
        unsafe fn add(self, other: Self) -> Self {
            Avx512(unsafe { _mm512_add_ps(self.0, other.0) })
        }
    }
}

/// The kernels over any [`Vector`], with raw pointers inside: bounds checks
/// on every tap are what kept the first, checked versions slow. Each entry
/// point asserts the lengths its loops rely on.
mod generic {
    use std::mem::MaybeUninit;

    use super::{Grid, Source, Vector};

    /// Output pixels of a row computed together: independent multiply-add
    /// chains that hide the FMA latency.
    const GROUP: usize = 8;

    /// [`Grid::spread`].
    #[inline(always)]
    pub(super) fn spread<V: Vector>(g: &Grid, src: Source, buffer: &mut Vec<f32>) {
        prepare(g, buffer);
        for i in 0..src.rows {
            for cv in (0..g.padded).step_by(g.lanes) {
                spread_row::<V>(g, src, i, cv, buffer);
            }
        }
    }

    /// Sizes `buffer` for `g`, zero-filled unless it already has that size.
    fn prepare(g: &Grid, buffer: &mut Vec<f32>) {
        if buffer.len() != g.buffer_len() {
            buffer.clear();
            buffer.resize(g.buffer_len(), 0.0);
        }
    }

    /// Copies channels `cv..cv + lanes` of row `i` of `src` into the buffer
    /// (whole groups as vectors: written as slice copies, each became a call
    /// to `memcpy`).
    #[inline(always)]
    fn spread_row<V: Vector>(g: &Grid, src: Source, i: usize, cv: usize, buffer: &mut [f32]) {
        let (c, border) = (g.channels, g.k / 2);
        let y = border + i * src.step;
        if y >= g.buffer_rows() {
            return;
        }
        let row = &src.data[i * src.cols * c..][..src.cols * c];
        if src.step == 1 && g.lanes == c {
            let cols = src.cols.min(g.width - border);
            buffer[g.at(y, border, 0)..][..cols * c].copy_from_slice(&row[..cols * c]);
            return;
        }
        let used = g.lanes.min(c - cv);
        for (j, pixel) in row.chunks_exact(c).enumerate() {
            let x = border + j * src.step;
            if x >= g.width {
                break;
            }
            let (group, dst) = (&pixel[cv..][..used], &mut buffer[g.at(y, x, cv)..][..used]);
            if used == V::LANES {
                // SAFETY: both slices hold `LANES` floats.
                unsafe { V::load(group.as_ptr()).store(dst.as_mut_ptr()) }
            } else {
                dst.copy_from_slice(group);
            }
        }
    }

    /// [`Grid::at`] for channel groups of `V`, without its divisions.
    #[inline(always)]
    fn at<V: Vector>(g: &Grid, y: usize, x: usize, cv: usize) -> usize {
        cv / V::LANES * g.block_len() + (y * g.width + x) * V::LANES
    }

    /// Correlates `src` into `out`, channel group by channel group (a
    /// group's window of rows stays in the L1 cache from one output row to
    /// the next), after spreading it into `buffer`; meanwhile asks for `next`
    /// (the next image's source, or nothing) to be brought into the L2 cache,
    /// a piece per row, so that its spread copies from L2 instead of waiting
    /// on memory.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn correlate<V: Vector>(
        g: &Grid,
        src: Source,
        next: &[f32],
        buffer: &mut Vec<f32>,
        taps: &[f32],
        bias: &[f32],
        out: &mut [MaybeUninit<f32>],
    ) {
        assert!(g.lanes == V::LANES && g.padded.is_multiple_of(V::LANES));
        assert!(taps.len() >= g.k * g.k * g.padded && bias.len() >= g.padded);
        assert!(out.len() >= g.rows * g.cols * g.channels);
        spread::<V>(g, src, buffer);
        let pieces = g.padded / V::LANES * g.rows;
        for cv in (0..g.padded).step_by(V::LANES) {
            for oy in 0..g.rows {
                super::prefetch_piece(next, cv / V::LANES * g.rows + oy, pieces);
                // SAFETY (every arm): `spread` sized `buffer` for `g`, the asserts above bound the rest.
                unsafe {
                    match (g.stride, g.k) {
                        (1, 3) => row_unit::<V, 3>(g, buffer, taps, bias, out, oy, cv),
                        (1, 5) => row_unit::<V, 5>(g, buffer, taps, bias, out, oy, cv),
                        (1, 7) => row_unit::<V, 7>(g, buffer, taps, bias, out, oy, cv),
                        _ => row_any::<V>(g, buffer, taps, bias, out, oy, cv),
                    }
                }
            }
        }
        super::fence_streams();
    }

    /// Output row `oy`, channels `cv..cv + LANES`, for any stride and size.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn row_any<V: Vector>(
        g: &Grid,
        buffer: &[f32],
        taps: &[f32],
        bias: &[f32],
        out: &mut [MaybeUninit<f32>],
        oy: usize,
        cv: usize,
    ) {
        let mut ox = 0;
        while ox < g.cols {
            // SAFETY: as in `correlate`.
            ox += unsafe {
                match g.cols - ox {
                    GROUP.. => pixels::<V, GROUP>(g, buffer, taps, bias, out, oy, ox, cv),
                    4..GROUP => pixels::<V, 4>(g, buffer, taps, bias, out, oy, ox, cv),
                    _ => pixels::<V, 1>(g, buffer, taps, bias, out, oy, ox, cv),
                }
            };
        }
    }

    /// [`row_any`] at stride 1 with a `K x K` kernel known at compile time:
    /// the `N + K - 1` input vectors a row of taps reads for `N` outputs are
    /// loaded once and kept in registers (AVX-512: 8 outputs, 14 inputs and
    /// a tap in its 32 registers; 8-lane vectors: 4 outputs in 16), instead
    /// of one load per multiply-add.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn row_unit<V: Vector, const K: usize>(
        g: &Grid,
        buffer: &[f32],
        taps: &[f32],
        bias: &[f32],
        out: &mut [MaybeUninit<f32>],
        oy: usize,
        cv: usize,
    ) {
        let mut ox = 0;
        while ox < g.cols {
            // SAFETY: as in `correlate`.
            ox += unsafe {
                match (V::LANES, g.cols - ox) {
                    (16, 8..) => sliding::<V, K, 8>(g, buffer, taps, bias, out, oy, ox, cv),
                    (_, 4..) => sliding::<V, K, 4>(g, buffer, taps, bias, out, oy, ox, cv),
                    _ => pixels::<V, 1>(g, buffer, taps, bias, out, oy, ox, cv),
                }
            };
        }
    }

    /// `N` output pixels as in [`pixels`], stride 1, inputs held in registers.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn sliding<V: Vector, const K: usize, const N: usize>(
        g: &Grid,
        buffer: &[f32],
        taps: &[f32],
        bias: &[f32],
        out: &mut [MaybeUninit<f32>],
        oy: usize,
        ox: usize,
        cv: usize,
    ) -> usize {
        let cp = g.padded;
        // SAFETY: rows oy + ky < buffer_rows and columns ox + N + K - 2 < width
        // (`width = cols - 1 + K`, `ox + N <= cols`); taps hold `padded` floats per tap.
        unsafe {
            let mut acc = [V::zero(); N];
            let window = buffer.as_ptr().add(at::<V>(g, oy, ox, cv));
            for ky in 0..K {
                let row = window.add(ky * g.width * V::LANES);
                // N + K - 1 <= 14 values; a fixed array so the loops unroll into registers.
                let mut inputs = [V::zero(); 16];
                for (i, input) in inputs.iter_mut().enumerate().take(N + K - 1) {
                    *input = V::load(row.add(i * V::LANES));
                }
                let tap_row = taps.as_ptr().add(ky * K * cp + cv);
                for kx in 0..K {
                    let tap = V::load(tap_row.add(kx * cp));
                    for (j, acc) in acc.iter_mut().enumerate() {
                        *acc = V::mul_add(tap, inputs[j + kx], *acc);
                    }
                }
            }
            store_pixels(g, &acc, bias, out, oy, ox, cv);
        }
        N
    }

    /// Writes `acc + bias` for `N` output pixels from column `ox` of row
    /// `oy`, channels `cv..cv + LANES` (only those below `channels`).
    ///
    /// # Safety
    /// As [`Vector::zero`]; the pixels are inside `rows x cols` of `out`.
    #[inline(always)]
    unsafe fn store_pixels<V: Vector, const N: usize>(
        g: &Grid,
        acc: &[V; N],
        bias: &[f32],
        out: &mut [MaybeUninit<f32>],
        oy: usize,
        ox: usize,
        cv: usize,
    ) {
        let c = g.channels;
        // SAFETY: the caller's bounds; `lanes` holds any vector's lanes.
        unsafe {
            let bias = V::load(bias.as_ptr().add(cv));
            for (j, acc) in acc.iter().enumerate() {
                let value = acc.add(bias);
                let dst = out.as_mut_ptr().cast::<f32>().add((oy * g.cols + ox + j) * c + cv);
                if cv + V::LANES > c {
                    let mut lanes = [0.0f32; 16];
                    value.store(lanes.as_mut_ptr());
                    std::ptr::copy_nonoverlapping(lanes.as_ptr(), dst, c - cv);
                } else if (dst as usize).is_multiple_of(V::LANES * 4) {
                    value.stream(dst);
                } else {
                    value.store(dst);
                }
            }
        }
    }

    /// `N` output pixels of row `oy` from column `ox`, channels `cv..cv + LANES`.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn pixels<V: Vector, const N: usize>(
        g: &Grid,
        buffer: &[f32],
        taps: &[f32],
        bias: &[f32],
        out: &mut [MaybeUninit<f32>],
        oy: usize,
        ox: usize,
        cv: usize,
    ) -> usize {
        let (k, s, cp) = (g.k, g.stride, g.padded);
        // SAFETY: rows oy * s + ky < buffer_rows and columns (ox + N - 1) * s + kx < width;
        // taps and bias hold `padded` floats per tap; outputs are inside `rows x cols`.
        unsafe {
            let mut acc = [V::zero(); N];
            let window = buffer.as_ptr().add(at::<V>(g, oy * s, ox * s, cv));
            for ky in 0..k {
                let row = window.add(ky * g.width * V::LANES);
                let tap_row = taps.as_ptr().add(ky * k * cp + cv);
                for kx in 0..k {
                    let tap = V::load(tap_row.add(kx * cp));
                    for (j, acc) in acc.iter_mut().enumerate() {
                        *acc = V::mul_add(tap, V::load(row.add((j * s + kx) * V::LANES)), *acc);
                    }
                }
            }
            store_pixels(g, &acc, bias, out, oy, ox, cv);
        }
        N
    }

    /// Adds one image's filter gradient to `acc` (`[k * k][padded]`), from
    /// its spread input and its output gradient with `padded` floats per pixel.
    #[inline(always)]
    pub(super) fn filter_grad<V: Vector>(g: &Grid, buffer: &[f32], grad: &[f32], acc: &mut [f32]) {
        assert!(g.lanes == V::LANES && g.padded.is_multiple_of(V::LANES) && buffer.len() >= g.buffer_len());
        assert!(grad.len() >= g.rows * g.cols * g.padded && acc.len() >= g.k * g.k * g.padded);
        let (k, cp) = (g.k, g.padded);
        for oy in 0..g.rows {
            for ky in 0..k {
                for cv in (0..cp).step_by(V::LANES) {
                    let mut kx = 0;
                    while kx < k {
                        // SAFETY: as in `correlate`; `kx + N <= k` in every arm.
                        kx += unsafe {
                            match k - kx {
                                7.. => tap_sums::<V, 7>(g, buffer, grad, acc, oy, ky, kx, cv),
                                5..7 => tap_sums::<V, 5>(g, buffer, grad, acc, oy, ky, kx, cv),
                                3..5 => tap_sums::<V, 3>(g, buffer, grad, acc, oy, ky, kx, cv),
                                _ => tap_sums::<V, 1>(g, buffer, grad, acc, oy, ky, kx, cv),
                            }
                        };
                    }
                }
            }
        }
    }

    /// Taps `(ky, kx..kx + N)` of channels `cv..cv + LANES`, summed over
    /// output row `oy` in registers, then added to `acc`.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tap_sums<V: Vector, const N: usize>(
        g: &Grid,
        buffer: &[f32],
        grad: &[f32],
        acc: &mut [f32],
        oy: usize,
        ky: usize,
        kx: usize,
        cv: usize,
    ) -> usize {
        let (s, cp) = (g.stride, g.padded);
        // SAFETY: see `filter_grad`.
        unsafe {
            let row = buffer.as_ptr().add(at::<V>(g, oy * s + ky, kx, cv));
            let grad = grad.as_ptr().add(oy * g.cols * cp + cv);
            let mut sums = [V::zero(); N];
            for ox in 0..g.cols {
                let d = V::load(grad.add(ox * cp));
                let x = row.add(ox * s * V::LANES);
                for (j, sum) in sums.iter_mut().enumerate() {
                    *sum = V::mul_add(V::load(x.add(j * V::LANES)), d, *sum);
                }
            }
            for (j, sum) in sums.iter().enumerate() {
                let p = acc.as_mut_ptr().add((ky * g.k + kx + j) * cp + cv);
                V::load(p).add(*sum).store(p);
            }
        }
        N
    }
}

/// The [`generic`] kernels compiled for each [`Isa`], each over its vector type.
mod kernels {
    use std::mem::MaybeUninit;

    use super::{generic, Grid, Portable, Source};
    use crate::cpu::per_isa;

    per_isa!(pub(super) fn correlate(
        g: &Grid,
        src: Source,
        next: &[f32],
        buffer: &mut Vec<f32>,
        taps: &[f32],
        bias: &[f32],
        out: &mut [MaybeUninit<f32>],
    ) => generic::correlate::<super::x86::Avx512>, generic::correlate::<super::x86::Avx2>, generic::correlate::<Portable>);
    per_isa!(pub(super) fn spread(g: &Grid, src: Source, buffer: &mut Vec<f32>) => generic::spread::<super::x86::Avx512>, generic::spread::<super::x86::Avx2>, generic::spread::<Portable>);
    per_isa!(pub(super) fn filter_grad(g: &Grid, buffer: &[f32], grad: &[f32], acc: &mut [f32])
        => generic::filter_grad::<super::x86::Avx512>, generic::filter_grad::<super::x86::Avx2>,
            generic::filter_grad::<Portable>);
    // The box sums in plain loops the compiler vectorises.
    per_isa!(pub(super) fn box_grad(g: &Grid, buffer: &[f32], grad: &[f32], across: &mut Vec<f32>, acc: &mut [f64])
        => super::box_grad_auto::<16>, super::box_grad_auto::<8>, super::box_grad_auto::<8>);
}
