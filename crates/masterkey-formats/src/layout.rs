//! Conversions from the weight layouts of other frameworks to the project's
//! `[channel][row][column]` layout (row 0 at the top). Each takes a flat
//! slice in the source layout.

use masterkey_core::KernelSize;

/// TF / Keras / TF.js depthwise kernels `[kh, kw, C, mult]`: output channel
/// `c * mult + m` uses input channel `c`.
pub fn from_hwcm(data: &[f32], kernel: KernelSize, channels: usize, mult: usize) -> Vec<f32> {
    let out_channels = channels * mult;
    let mut out = vec![0.0; out_channels * kernel.taps()];
    for r in 0..kernel.h {
        for col in 0..kernel.w {
            for c in 0..channels {
                for m in 0..mult {
                    let src = ((r * kernel.w + col) * channels + c) * mult + m;
                    let dst = (c * mult + m) * kernel.taps() + r * kernel.w + col;
                    out[dst] = data[src];
                }
            }
        }
    }
    out
}

/// TFLite depthwise filters `[1, kh, kw, C]`.
pub fn from_1hwc(data: &[f32], kernel: KernelSize, channels: usize) -> Vec<f32> {
    from_hwcm(data, kernel, channels, 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hwcm_puts_each_channel_together_row_major() {
        // kh=2, kw=3, C=2, mult=1: value = 100*c + 10*r + col.
        let k = KernelSize::new(2, 3);
        let mut src = vec![0.0; 12];
        for r in 0..2 {
            for col in 0..3 {
                for c in 0..2 {
                    src[(r * 3 + col) * 2 + c] = (100 * c + 10 * r + col) as f32;
                }
            }
        }
        let out = from_1hwc(&src, k, 2);
        assert_eq!(&out[..6], &[0.0, 1.0, 2.0, 10.0, 11.0, 12.0]);
        assert_eq!(&out[6..], &[100.0, 101.0, 102.0, 110.0, 111.0, 112.0]);
    }

    #[test]
    fn hwcm_orders_multiplier_within_channel() {
        let k = KernelSize::new(1, 1);
        // C=2, mult=2: [c0m0, c0m1, c1m0, c1m1]
        assert_eq!(from_hwcm(&[1.0, 2.0, 3.0, 4.0], k, 2, 2), vec![1.0, 2.0, 3.0, 4.0]);
    }
}
