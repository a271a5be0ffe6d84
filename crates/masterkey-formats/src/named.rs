//! Depthwise layers among the named tensors of a state dict, where no graph
//! says which convolutions are grouped: a DW weight is a 4-D tensor
//! `[C, 1, kh, kw]` (PyTorch layout, one input channel per group) with
//! `C >= 2` and a kernel larger than 1x1. The one ambiguity, a normal
//! convolution on a single-channel input, is resolved by the name hint:
//! tensors whose name marks a stem (`stem`, `conv_stem`) are skipped.

use masterkey_core::KernelSize;

/// If a tensor of this name and shape is a depthwise weight, its channel count
/// and kernel size.
pub fn dw_shape(name: &str, shape: &[usize]) -> Option<(usize, KernelSize)> {
    match *shape {
        [c, 1, kh, kw] if c >= 2 && kh * kw > 1 && !name.to_ascii_lowercase().contains("stem") => {
            Some((c, KernelSize::new(kh, kw)))
        }
        _ => None,
    }
}

/// Compares names so that numbered parts sort by value (`blocks.2` before
/// `blocks.10`): the model order for formats that store names sorted.
pub fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    fn chunks(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let bytes = s.as_bytes();
        for i in 1..=bytes.len() {
            if i == bytes.len() || bytes[i].is_ascii_digit() != bytes[start].is_ascii_digit() {
                out.push((bytes[start].is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        out
    }
    let (ca, cb) = (chunks(a), chunks(b));
    for (x, y) in ca.iter().zip(&cb) {
        let ord = match (x, y) {
            ((true, p), (true, q)) => {
                let (p, q) = (p.trim_start_matches('0'), q.trim_start_matches('0'));
                p.len().cmp(&q.len()).then(p.cmp(q))
            }
            ((_, p), (_, q)) => p.cmp(q),
        };
        if ord.is_ne() {
            return ord;
        }
    }
    ca.len().cmp(&cb.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dw_shapes() {
        assert_eq!(dw_shape("blocks.0.conv_dw.weight", &[32, 1, 3, 3]), Some((32, KernelSize::square(3))));
        assert_eq!(dw_shape("x", &[32, 1, 3, 5]), Some((32, KernelSize::new(3, 5))));
        assert_eq!(dw_shape("pw", &[32, 1, 1, 1]), None);
        assert_eq!(dw_shape("conv", &[32, 3, 3, 3]), None);
        assert_eq!(dw_shape("conv_stem.weight", &[32, 1, 3, 3]), None);
        assert_eq!(dw_shape("bias", &[32]), None);
    }

    #[test]
    fn natural_order() {
        let mut names = vec!["blocks.10.w", "blocks.2.w", "blocks.1.w", "a"];
        names.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(names, vec!["a", "blocks.1.w", "blocks.2.w", "blocks.10.w"]);
    }
}
