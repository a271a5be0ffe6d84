//! The depthwise convolution as CubeCL kernels, for burn's GPU backends
//! (CUDA, and wgpu: Vulkan, Metal, DirectX, or Mesa's lavapipe on a CPU,
//! which is how the tests run them without a GPU). Written once: CubeCL
//! compiles them for each runtime at run time.
//!
//! Without them burn runs a depthwise convolution as a general grouped
//! convolution, and the frozen keys' offset gradient as a whole filter
//! gradient; these kernels compute exactly the four quantities the backward
//! steps of [`super`] need. Activations may be channels-first or
//! channels-last (a compile-time parameter of each kernel); every tensor is
//! read through its strides. Sums accumulate in f32; the two reductions
//! (filter and offset gradients) give one workgroup to each output value
//! and add up in shared memory, so no atomics are needed.

use burn::tensor::{Shape, TensorMetadata};

use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use cubecl::{calculate_cube_count_elemwise, prelude::*};

use super::{DepthwiseBackend, Layout};

/// Logical (n, c, h, w) strides of a 4-D activation tensor.
#[cube]
fn strides_nchw<F: Float>(t: &Tensor<F>, #[comptime] channels_last: bool) -> (usize, usize, usize, usize) {
    if channels_last {
        (t.stride(0), t.stride(3), t.stride(1), t.stride(2))
    } else {
        (t.stride(0), t.stride(1), t.stride(2), t.stride(3))
    }
}

/// Logical (N, C, H, W) sizes of a 4-D activation tensor.
#[cube]
fn shape_nchw<F: Float>(t: &Tensor<F>, #[comptime] channels_last: bool) -> (usize, usize, usize, usize) {
    if channels_last {
        (t.shape(0), t.shape(3), t.shape(1), t.shape(2))
    } else {
        (t.shape(0), t.shape(1), t.shape(2), t.shape(3))
    }
}

/// Split a linear index (in the memory order of the layout, so neighbouring threads
/// touch neighbouring addresses of a contiguous tensor) into logical (n, c, h, w).
#[cube]
fn decompose_nchw(
    pos: usize,
    c_size: usize,
    h_size: usize,
    w_size: usize,
    #[comptime] channels_last: bool,
) -> (usize, usize, usize, usize) {
    if channels_last {
        let c = pos % c_size;
        let r = pos / c_size;
        let w = r % w_size;
        let r = r / w_size;
        let h = r % h_size;
        let n = r / h_size;
        (n, c, h, w)
    } else {
        let w = pos % w_size;
        let r = pos / w_size;
        let h = r % h_size;
        let r = r / h_size;
        let c = r % c_size;
        let n = r / c_size;
        (n, c, h, w)
    }
}

/// In-place tree reduction of `smem[0..block_size]` (block_size a power of two).
/// Every unit of the cube must call it (it contains barriers). Result in smem[0].
#[cube]
fn cube_sum(smem: &mut SharedMemory<f32>, #[comptime] block_size: u32) {
    let unit = UNIT_POS_X;
    // NB: `block_size / 2` alone would be a *comptime* value and `half /= 2` would then
    // not be a runtime loop; `.runtime()` turns it into a runtime variable.
    let mut half = comptime![block_size / 2].runtime();
    while half > 0 {
        if unit < half {
            let a = smem[unit as usize];
            let b = smem[(unit + half) as usize];
            smem[unit as usize] = a + b;
        }
        sync_cube();
        half /= 2;
    }
}

/// One unit per output element y[n, c, i, j].
#[cube(launch)]
fn dw_forward_kernel<F: Float>(
    x: &Tensor<F>,
    weight: &Tensor<F>,
    bias: &Tensor<F>,
    y: &mut Tensor<F>,
    stride: u32,
    num_elems: usize,
    #[comptime] k: u32,
    #[comptime] channels_last: bool,
    #[define(F)] _dtype: StorageType,
) {
    if ABSOLUTE_POS >= num_elems {
        terminate!();
    }
    let pad = comptime![(k / 2) as i32];

    let (_yn, yc, yh, yw) = shape_nchw(y, channels_last);
    let (n, c, i, j) = decompose_nchw(ABSOLUTE_POS, yc, yh, yw, channels_last);

    let (_xn, _xc, xh, xw) = shape_nchw(x, channels_last);
    let (xsn, xsc, xsh, xsw) = strides_nchw(x, channels_last);
    let x_base = n * xsn + c * xsc;
    let w_base = c * weight.stride(0);
    let (wsu, wsv) = (weight.stride(2), weight.stride(3));

    let h0 = (i as i32) * (stride as i32) - pad;
    let w0 = (j as i32) * (stride as i32) - pad;
    let (h_in, w_in) = (xh as i32, xw as i32);

    let mut acc = f32::cast_from(bias[c * bias.stride(0)]);
    #[unroll]
    for u in 0..k {
        let ih = h0 + u as i32;
        if ih >= 0 && ih < h_in {
            #[unroll]
            for v in 0..k {
                let iw = w0 + v as i32;
                if iw >= 0 && iw < w_in {
                    let xv = x[x_base + (ih as usize) * xsh + (iw as usize) * xsw];
                    let wv = weight[w_base + (u as usize) * wsu + (v as usize) * wsv];
                    acc += f32::cast_from(xv) * f32::cast_from(wv);
                }
            }
        }
    }

    let (ysn, ysc, ysh, ysw) = strides_nchw(y, channels_last);
    y[n * ysn + c * ysc + i * ysh + j * ysw] = F::cast_from(acc);
}

/// One unit per input-gradient element dx[n, c, h, w]; gathers over the output
/// positions whose window covers (h, w). No atomics.
#[cube(launch)]
fn dw_x_backward_kernel<F: Float>(
    weight: &Tensor<F>,
    grad: &Tensor<F>,
    dx: &mut Tensor<F>,
    stride: u32,
    num_elems: usize,
    #[comptime] k: u32,
    #[comptime] channels_last: bool,
    #[define(F)] _dtype: StorageType,
) {
    if ABSOLUTE_POS >= num_elems {
        terminate!();
    }
    let pad = comptime![(k / 2) as i32];
    let s = stride as i32;

    let (_xn, xc, xh, xw) = shape_nchw(dx, channels_last);
    let (n, c, h, w) = decompose_nchw(ABSOLUTE_POS, xc, xh, xw, channels_last);

    let (_gn, _gc, gh, gw) = shape_nchw(grad, channels_last);
    let (gsn, gsc, gsh, gsw) = strides_nchw(grad, channels_last);
    let g_base = n * gsn + c * gsc;
    let w_base = c * weight.stride(0);
    let (wsu, wsv) = (weight.stride(2), weight.stride(3));
    let (ho, wo) = (gh as i32, gw as i32);

    let hp = h as i32 + pad;
    let wp = w as i32 + pad;

    let mut acc = f32::new(0.0);
    #[unroll]
    for u in 0..k {
        // i * s + u - pad == h  <=>  i * s == h + pad - u
        let ti = hp - u as i32;
        if ti >= 0 && ti % s == 0 && ti / s < ho {
            let i = (ti / s) as usize;
            #[unroll]
            for v in 0..k {
                let tj = wp - v as i32;
                if tj >= 0 && tj % s == 0 && tj / s < wo {
                    let j = (tj / s) as usize;
                    let gv = grad[g_base + i * gsh + j * gsw];
                    let wv = weight[w_base + (u as usize) * wsu + (v as usize) * wsv];
                    acc += f32::cast_from(gv) * f32::cast_from(wv);
                }
            }
        }
    }

    let (dsn, dsc, dsh, dsw) = strides_nchw(dx, channels_last);
    dx[n * dsn + c * dsc + h * dsh + w * dsw] = F::cast_from(acc);
}

/// One cube per (tap, channel): CUBE_POS_X = u * k + v, CUBE_POS_Y = c.
/// The units of the cube stride over the N * Ho * Wo terms, then a shared-memory
/// tree reduction produces dweight[c, 0, u, v].
#[cube(launch)]
fn dw_weight_backward_kernel<F: Float>(
    x: &Tensor<F>,
    grad: &Tensor<F>,
    dweight: &mut Tensor<F>,
    stride: u32,
    #[comptime] k: u32,
    #[comptime] channels_last: bool,
    #[comptime] block_size: u32,
    #[define(F)] _dtype: StorageType,
) {
    let pad = comptime![(k / 2) as i32];
    let s = stride as i32;
    let tap = CUBE_POS_X;
    let u = tap / k;
    let v = tap % k;
    let c = CUBE_POS_Y as usize;

    let (xsn, xsc, xsh, xsw) = strides_nchw(x, channels_last);
    let (_xn, _xc, xh, xw) = shape_nchw(x, channels_last);
    let (gsn, gsc, gsh, gsw) = strides_nchw(grad, channels_last);
    let (gn, _gc, gh, gw) = shape_nchw(grad, channels_last);
    let (h_in, w_in) = (xh as i32, xw as i32);
    let du = u as i32 - pad;
    let dv = v as i32 - pad;

    let x_c = c * xsc;
    let g_c = c * gsc;
    let total = gn * gh * gw;

    let mut acc = f32::new(0.0);
    let mut t = UNIT_POS_X as usize;
    while t < total {
        let j = t % gw;
        let r = t / gw;
        let i = r % gh;
        let n = r / gh;
        let ih = (i as i32) * s + du;
        let iw = (j as i32) * s + dv;
        if ih >= 0 && ih < h_in && iw >= 0 && iw < w_in {
            let xv = x[n * xsn + x_c + (ih as usize) * xsh + (iw as usize) * xsw];
            let gv = grad[n * gsn + g_c + i * gsh + j * gsw];
            acc += f32::cast_from(xv) * f32::cast_from(gv);
        }
        t += block_size as usize;
    }

    let mut smem = SharedMemory::<f32>::new(comptime![block_size as usize]);
    smem[UNIT_POS_X as usize] = acc;
    sync_cube();
    cube_sum(&mut smem, block_size);

    if UNIT_POS_X == 0 {
        let idx = c * dweight.stride(0) + (u as usize) * dweight.stride(2) + (v as usize) * dweight.stride(3);
        dweight[idx] = F::cast_from(smem[0]);
    }
}

/// One cube per channel (CUBE_POS_X = c): sum over n, i, j of
/// grad[n, c, i, j] * (sum over the in-bounds taps of x at the window positions).
#[cube(launch)]
fn dw_offset_backward_kernel<F: Float>(
    x: &Tensor<F>,
    grad: &Tensor<F>,
    out: &mut Tensor<F>,
    stride: u32,
    #[comptime] k: u32,
    #[comptime] channels_last: bool,
    #[comptime] block_size: u32,
    #[define(F)] _dtype: StorageType,
) {
    let pad = comptime![(k / 2) as i32];
    let s = stride as i32;
    let c = CUBE_POS_X as usize;

    let (xsn, xsc, xsh, xsw) = strides_nchw(x, channels_last);
    let (_xn, _xc, xh, xw) = shape_nchw(x, channels_last);
    let (gsn, gsc, gsh, gsw) = strides_nchw(grad, channels_last);
    let (gn, _gc, gh, gw) = shape_nchw(grad, channels_last);
    let (h_in, w_in) = (xh as i32, xw as i32);

    let x_c = c * xsc;
    let g_c = c * gsc;
    let total = gn * gh * gw;

    let mut acc = f32::new(0.0);
    let mut t = UNIT_POS_X as usize;
    while t < total {
        let j = t % gw;
        let r = t / gw;
        let i = r % gh;
        let n = r / gh;
        let h0 = (i as i32) * s - pad;
        let w0 = (j as i32) * s - pad;
        let x_n = n * xsn + x_c;
        let mut window = f32::new(0.0);
        #[unroll]
        for u in 0..k {
            let ih = h0 + u as i32;
            if ih >= 0 && ih < h_in {
                #[unroll]
                for v in 0..k {
                    let iw = w0 + v as i32;
                    if iw >= 0 && iw < w_in {
                        window += f32::cast_from(x[x_n + (ih as usize) * xsh + (iw as usize) * xsw]);
                    }
                }
            }
        }
        acc += window * f32::cast_from(grad[n * gsn + g_c + i * gsh + j * gsw]);
        t += block_size as usize;
    }

    let mut smem = SharedMemory::<f32>::new(comptime![block_size as usize]);
    smem[UNIT_POS_X as usize] = acc;
    sync_cube();
    cube_sum(&mut smem, block_size);

    if UNIT_POS_X == 0 {
        out[c * out.stride(0)] = F::cast_from(smem[0]);
    }
}

fn out_size(size: usize, k: usize, stride: usize) -> usize {
    (size + 2 * (k / 2) - k) / stride + 1
}

fn check_kernel_size(k: usize) {
    assert!(k % 2 == 1, "depthwise conv: kernel size must be odd, got {k}");
}

/// Threads per cube for the reduction kernels: a power of two <= 256 and <= the device limit.
fn reduce_block_size<R: CubeRuntime>(client: &ComputeClient<R>) -> u32 {
    let hw = client.properties().hardware.max_units_per_cube;
    let max = hw.clamp(1, 256);
    1u32 << (31 - max.leading_zeros())
}

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> DepthwiseBackend for CubeBackend<R, F, I, BT> {
    /// y = depthwise_conv2d(x, weight) + bias, same layout as x.
    fn depthwise(
        x: CubeTensor<R>,
        weight: CubeTensor<R>,
        bias: CubeTensor<R>,
        stride: usize,
        layout: Layout,
    ) -> CubeTensor<R> {
        let channels_last = layout == Layout::ChannelsLast;
        let x = into_contiguous(x);
        let weight = into_contiguous(weight);
        let bias = into_contiguous(bias);
        let [n, c, h, w] = layout.nchw(x.shape().dims());
        let [wc, _, k, k2] = weight.shape().dims();
        assert_eq!(wc, c);
        assert_eq!(k, k2);
        check_kernel_size(k);
        let (ho, wo) = (out_size(h, k, stride), out_size(w, k, stride));

        let client = x.client.clone();
        let y = empty_device_dtype::<R>(
            client.clone(),
            x.device.clone(),
            Shape::new(layout.dims_from_nchw([n, c, ho, wo])),
            x.dtype,
        );
        let num_elems = n * c * ho * wo;
        let cube_dim = CubeDim::new(&client, num_elems);
        let cube_count = calculate_cube_count_elemwise(&client, num_elems, cube_dim);
        let dtype = x.dtype;

        dw_forward_kernel::launch::<R>(
            &client,
            cube_count,
            cube_dim,
            x.into_tensor_arg(),
            weight.into_tensor_arg(),
            bias.into_tensor_arg(),
            y.clone().into_tensor_arg(),
            stride as u32,
            num_elems,
            k as u32,
            channels_last,
            dtype.into(),
        );
        y
    }

    /// dx (shape/layout of x).
    fn depthwise_x_backward(
        x: CubeTensor<R>,
        weight: CubeTensor<R>,
        output_grad: CubeTensor<R>,
        stride: usize,
        layout: Layout,
    ) -> CubeTensor<R> {
        let channels_last = layout == Layout::ChannelsLast;
        let weight = into_contiguous(weight);
        let grad = into_contiguous(output_grad);
        let [n, c, h, w] = layout.nchw(x.shape().dims());
        let k = weight.shape().dims::<4>()[2];
        check_kernel_size(k);
        let [gn, gc, gh, gw] = layout.nchw(grad.shape().dims());
        assert_eq!([gn, gc, gh, gw], [n, c, out_size(h, k, stride), out_size(w, k, stride)]);

        let client = grad.client.clone();
        let dx = empty_device_dtype::<R>(
            client.clone(),
            grad.device.clone(),
            Shape::new(layout.dims_from_nchw([n, c, h, w])),
            grad.dtype,
        );
        let num_elems = n * c * h * w;
        let cube_dim = CubeDim::new(&client, num_elems);
        let cube_count = calculate_cube_count_elemwise(&client, num_elems, cube_dim);
        let dtype = grad.dtype;

        dw_x_backward_kernel::launch::<R>(
            &client,
            cube_count,
            cube_dim,
            weight.into_tensor_arg(),
            grad.into_tensor_arg(),
            dx.clone().into_tensor_arg(),
            stride as u32,
            num_elems,
            k as u32,
            channels_last,
            dtype.into(),
        );
        dx
    }

    /// dweight [C, 1, k, k].
    fn depthwise_weight_backward(
        x: CubeTensor<R>,
        weight: CubeTensor<R>,
        output_grad: CubeTensor<R>,
        stride: usize,
        layout: Layout,
    ) -> CubeTensor<R> {
        let channels_last = layout == Layout::ChannelsLast;
        let x = into_contiguous(x);
        let grad = into_contiguous(output_grad);
        let [_n, c, _h, _w] = layout.nchw(x.shape().dims());
        let [wc, _, k, _] = weight.shape().dims::<4>();
        assert_eq!(wc, c);
        check_kernel_size(k);

        let client = x.client.clone();
        let dweight = empty_device_dtype::<R>(client.clone(), x.device.clone(), Shape::new([c, 1, k, k]), x.dtype);
        let block = reduce_block_size(&client);
        let dtype = x.dtype;

        dw_weight_backward_kernel::launch::<R>(
            &client,
            CubeCount::Static((k * k) as u32, c as u32, 1),
            CubeDim::new_1d(block),
            x.into_tensor_arg(),
            grad.into_tensor_arg(),
            dweight.clone().into_tensor_arg(),
            stride as u32,
            k as u32,
            channels_last,
            block,
            dtype.into(),
        );
        dweight
    }

    /// Per-channel [C]: sum_{n,i,j} grad[n,c,i,j] * sum_{taps} x[n,c,tap position].
    fn depthwise_offset_backward(
        x: CubeTensor<R>,
        output_grad: CubeTensor<R>,
        kernel: usize,
        stride: usize,
        layout: Layout,
    ) -> CubeTensor<R> {
        let channels_last = layout == Layout::ChannelsLast;
        check_kernel_size(kernel);
        let x = into_contiguous(x);
        let grad = into_contiguous(output_grad);
        let [_n, c, _h, _w] = layout.nchw(x.shape().dims());

        let client = x.client.clone();
        let out = empty_device_dtype::<R>(client.clone(), x.device.clone(), Shape::new([c]), x.dtype);
        let block = reduce_block_size(&client);
        let dtype = x.dtype;

        dw_offset_backward_kernel::launch::<R>(
            &client,
            CubeCount::Static(c as u32, 1, 1),
            CubeDim::new_1d(block),
            x.into_tensor_arg(),
            grad.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            stride as u32,
            kernel as u32,
            channels_last,
            block,
            dtype.into(),
        );
        out
    }
}

/// The reference tests of the CPU kernels, run on a GPU backend: wgpu (on
/// Mesa's lavapipe where the machine has no GPU; `scripts/test`) and
/// CUDA (`scripts/gpu-check`).
#[cfg(test)]
mod tests {
    use super::super::tests::{
        forward_and_every_gradient_match_the_references_on, offset_gradient_is_the_filter_gradient_summed_over_taps_on,
    };

    #[cfg(feature = "wgpu")]
    #[test]
    fn forward_and_every_gradient_match_the_references_on_wgpu() {
        forward_and_every_gradient_match_the_references_on::<crate::WgpuBackend>(&Default::default());
    }

    #[cfg(feature = "wgpu")]
    #[test]
    fn offset_gradient_is_the_filter_gradient_summed_over_taps_on_wgpu() {
        offset_gradient_is_the_filter_gradient_summed_over_taps_on::<crate::WgpuBackend>(&Default::default());
    }

    #[cfg(feature = "cuda")]
    #[test]
    fn forward_and_every_gradient_match_the_references_on_cuda() {
        forward_and_every_gradient_match_the_references_on::<crate::CudaBackend>(&Default::default());
    }

    #[cfg(feature = "cuda")]
    #[test]
    fn offset_gradient_is_the_filter_gradient_summed_over_taps_on_cuda() {
        offset_gradient_is_the_filter_gradient_summed_over_taps_on::<crate::CudaBackend>(&Default::default());
    }
}
