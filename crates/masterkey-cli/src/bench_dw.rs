//! `masterkey bench dw`: the depthwise operation of `masterkey-train`
//! against PyTorch's grouped convolution, in the same command.

use std::time::Instant;

use anyhow::Result;
use masterkey_train::burn::tensor::backend::Backend;
use masterkey_train::burn::tensor::{Tensor, TensorData};
use masterkey_train::dw_op::{depthwise, depthwise_offset, Layout};
use masterkey_train::rng::SplitMix;
use masterkey_train::ModelAutodiffBackend;

use crate::bench::{median, run_reference_with, torch_device, TORCH_PACKAGES};
use crate::device::{Device, OnDevice};
use crate::ui;

const DW_SCRIPT: &str = include_str!("bench_dw.py");

/// Median seconds of `repeats` calls of `f`, each waited for on the device
/// (a GPU runs its queue asynchronously).
fn timed<B: Backend>(device: &B::Device, repeats: usize, mut f: impl FnMut()) -> f64 {
    median(
        (0..repeats)
            .map(|_| {
                let t0 = Instant::now();
                f();
                B::sync(device).expect("the device finishes its work");
                t0.elapsed().as_secs_f64()
            })
            .collect(),
    )
}

/// The timings of [`ours`] in both layouts, on one backend, and its name.
struct Timings {
    shape: [usize; 4],
    k: usize,
    repeats: usize,
}

impl OnDevice for Timings {
    type Output = ([[f64; 3]; 2], String);
    fn run<B: ModelAutodiffBackend>(self) -> Result<Self::Output> {
        let first = ours::<B>(self.shape, self.k, self.repeats, Layout::ChannelsFirst);
        let last = ours::<B>(self.shape, self.k, self.repeats, Layout::ChannelsLast);
        Ok(([first, last], B::name(&Default::default())))
    }
}

/// Median seconds of the forward, trainable forward + backward and frozen
/// forward + backward of masterkey's operation with activations in `layout`.
fn ours<B: ModelAutodiffBackend>(shape: [usize; 4], k: usize, repeats: usize, layout: Layout) -> [f64; 3] {
    let [n, c, h, w] = shape;
    let dims = match layout {
        Layout::ChannelsFirst => shape,
        Layout::ChannelsLast => [n, h, w, c],
    };
    let mut rng = SplitMix::new(1);
    let mut draw = |len: usize| (0..len).map(|_| rng.normal()).collect::<Vec<f32>>();
    let (xs, ws, gs) = (draw(n * c * h * w), draw(c * k * k), draw(n * c * h * w));
    let device = Default::default();
    let tensor = |v: &[f32], shape: [usize; 4]| Tensor::<B, 4>::from_data(TensorData::new(v.to_vec(), shape), &device);
    let vector = |v: Vec<f32>| Tensor::<B, 1>::from_data(TensorData::new(v, [c]), &device).require_grad();

    let x = Tensor::<B::InnerBackend, 4>::from_data(TensorData::new(xs.clone(), dims), &device);
    let weight = Tensor::<B::InnerBackend, 4>::from_data(TensorData::new(ws.clone(), [c, 1, k, k]), &device);
    let bias = Tensor::<B::InnerBackend, 1>::zeros([c], &device);
    let forward = timed::<B>(&device, repeats, || {
        std::hint::black_box(depthwise(x.clone(), weight.clone(), bias.clone(), 1, layout));
    });
    // Inputs made once: a clone shares the data, so only the operation is timed (as in the script).
    let (x_data, g, weight) = (tensor(&xs, dims), tensor(&gs, dims), tensor(&ws, [c, 1, k, k]));
    let backward = |frozen: bool| {
        timed::<B>(&device, repeats, || {
            let x = x_data.clone().require_grad();
            let bias = vector(vec![0.0; c]);
            let y = if frozen {
                depthwise_offset(x.clone(), weight.clone(), vector(vec![0.0; c]), bias, 1, layout)
            } else {
                depthwise(x.clone(), weight.clone().require_grad(), bias, 1, layout)
            };
            let grads = (y * g.clone()).sum().backward();
            std::hint::black_box(x.grad(&grads));
        })
    };
    [forward, backward(false), backward(true)]
}

pub fn bench_dw(shape: [usize; 4], k: usize, repeats: usize, device: Device) -> Result<()> {
    let [n, c, h, w] = shape;
    let ([first, last], backend) = device.run(Timings { shape, k, repeats })?;
    let dir = tempfile::tempdir()?;
    let mut args: Vec<String> = [n, c, h, w, k, repeats].iter().map(|v| v.to_string()).collect();
    args.push(torch_device(device).to_string());
    let reply = run_reference_with(TORCH_PACKAGES, DW_SCRIPT, dir.path(), &args)?;
    let theirs = |layout: &str, what: &str| reply[layout][what].as_f64().unwrap_or(f64::NAN);
    let threads = std::thread::available_parallelism().map_or(1, |p| p.get());
    println!(
        "bench dw: depthwise {k}x{k} convolution, stride 1, padding {}, on {n}x{c}x{h}x{w} f32, median of {repeats}, \
         {threads} cores; masterkey on {backend}; PyTorch {} on {} ({} threads) in the same command; forward + \
         backward = (y * g).sum() and its gradients",
        k / 2,
        reply["torch"].as_str().unwrap_or("?"),
        reply["device"].as_str().unwrap_or("?"),
        reply["threads"]
    );
    let mut t = ui::table(&[
        "operation",
        "layout",
        "masterkey ms",
        "PyTorch ms, same layout",
        "vs same layout",
        "vs PyTorch channels-last",
    ]);
    let operations = [
        ("forward (no autograd)", "forward_s"),
        ("forward + backward, trainable filters", "forward_backward_s"),
        ("forward + backward, frozen keys + learnable offset (PyTorch: trainable)", "forward_backward_s"),
    ];
    for (i, (name, what)) in operations.into_iter().enumerate() {
        for (layout, times, key) in [("NCHW", first, "nchw"), ("channels-last", last, "channels_last")] {
            let (same, channels_last) = (theirs(key, what), theirs("channels_last", what));
            t.add_row(vec![
                name.to_string(),
                layout.to_string(),
                format!("{:.1}", times[i] * 1e3),
                format!("{:.1}", same * 1e3),
                format!("{:.2}x", same / times[i]),
                format!("{:.2}x", channels_last / times[i]),
            ]);
        }
    }
    println!("{t}");
    println!("(ratios = PyTorch's median time / masterkey's; above 1 masterkey is faster)");
    Ok(())
}
