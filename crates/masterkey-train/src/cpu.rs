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
