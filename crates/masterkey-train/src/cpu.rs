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
    let mut out = Vec::with_capacity(len);
    fill(&mut out.spare_capacity_mut()[..len]);
    // SAFETY: the caller guarantees `fill` wrote all `len` values.
    unsafe { out.set_len(len) };
    out
}
