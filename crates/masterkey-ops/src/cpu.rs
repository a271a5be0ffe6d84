//! Helpers shared by the CPU implementations of this crate's operations.

use burn::backend::flex::FlexTensor;

/// The values of a CPU f32 tensor in row-major order, copied only where the
/// tensor is a strided view.
pub(crate) fn values(t: &FlexTensor) -> std::borrow::Cow<'_, [f32]> {
    match t.as_slice::<f32>() {
        Some(s) if t.is_contiguous() => std::borrow::Cow::Borrowed(s),
        _ => std::borrow::Cow::Owned(t.to_contiguous().as_slice::<f32>().expect("f32 tensor").to_vec()),
    }
}

/// A fresh buffer of `len` values that `fill` writes completely: not
/// zero-filled first, which would be a full pass over memory for nothing.
///
/// # Safety
/// `fill` must write every one of the `len` values.
pub(crate) unsafe fn written(len: usize, fill: impl FnOnce(&mut [std::mem::MaybeUninit<f32>])) -> Vec<f32> {
    // SAFETY: the caller guarantees `fill` writes all `len` values.
    let [out] = unsafe { written_all([len], |[out]| fill(out)) };
    out
}

/// A fresh buffer of `len` values per entry of `lens`, which `fill` writes
/// completely (several outputs of one pass; see [`written`]).
///
/// # Safety
/// `fill` must write every value of every buffer.
pub(crate) unsafe fn written_all<const N: usize>(
    lens: [usize; N],
    fill: impl FnOnce([&mut [std::mem::MaybeUninit<f32>]; N]),
) -> [Vec<f32>; N] {
    let mut buffers = lens.map(Vec::with_capacity);
    let mut spare = buffers.iter_mut().zip(lens).map(|(b, len)| &mut b.spare_capacity_mut()[..len]);
    fill(std::array::from_fn(|_| spare.next().expect("one slice per buffer")));
    for (buffer, len) in buffers.iter_mut().zip(lens) {
        // SAFETY: the caller guarantees `fill` wrote all `len` values.
        unsafe { buffer.set_len(len) };
    }
    buffers
}

/// `values` as the `f32`s they hold once written.
///
/// # Safety
/// Every value must have been written.
pub(crate) unsafe fn assume_written(values: &[std::mem::MaybeUninit<f32>]) -> &[f32] {
    // SAFETY: `MaybeUninit<f32>` has the layout of `f32`; the caller
    // guarantees every value is initialised.
    unsafe { &*(values as *const [std::mem::MaybeUninit<f32>] as *const [f32]) }
}

/// The instruction set the CPU kernels run on, chosen at run time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) enum Isa {
    Avx512,
    Avx2,
    Portable,
}

impl Isa {
    /// The widest one this CPU has.
    pub fn best() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma");
            if avx2 && std::is_x86_feature_detected!("avx512f") {
                return Isa::Avx512;
            }
            if avx2 {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    }

    /// Every one this CPU runs, widest first (the tests run them all).
    #[cfg(test)]
    pub fn available() -> Vec<Isa> {
        let best = Isa::best();
        [Isa::Avx512, Isa::Avx2, Isa::Portable].into_iter().skip_while(|&isa| isa != best).collect()
    }
}

/// `$vis fn $name(isa: Isa, args..)` running, for `isa`, `$avx512` compiled
/// with AVX-512F, `$avx2` compiled with AVX2 and FMA, or `$plain` compiled
/// for the build's baseline. The callees are `#[inline(always)]` loops, so
/// each build is vectorised for its instruction set.
macro_rules! per_isa {
    ($vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) => $avx512:path, $avx2:path, $plain:path) => {
        #[allow(clippy::too_many_arguments)] // the callee's arguments, forwarded
        $vis fn $name(isa: $crate::cpu::Isa, $($arg: $ty),*) {
            #[cfg(not(target_arch = "x86_64"))]
            let _ = isa;
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                fn avx512($($arg: $ty),*) {
                    $avx512($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) {
                    $avx2($($arg),*)
                }
                match isa {
                    // SAFETY: `Isa::best` names these only where the CPU has the features.
                    $crate::cpu::Isa::Avx512 => return unsafe { avx512($($arg),*) },
                    $crate::cpu::Isa::Avx2 => return unsafe { avx2($($arg),*) },
                    $crate::cpu::Isa::Portable => {}
                }
            }
            $plain($($arg),*)
        }
    };
}

pub(crate) use per_isa;
