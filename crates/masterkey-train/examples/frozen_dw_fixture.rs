//! Writes a frozen depthwise layer of `masterkey train` (published8 keys,
//! round-robin, channels-first) with set scale, offset and bias, a random
//! input, its output and the gradients of `sum(y * g)`, as JSON: the
//! fixture against which python/tests check `masterkey.torch`'s
//! `FrozenDepthwiseConv2d` (same weights, same input, same numbers).
//!
//! cargo run -p masterkey-train --example frozen_dw_fixture -- OUT.json

use burn::tensor::{Tensor, TensorData};
use masterkey_core::Bank;
use masterkey_train::dw::{DwMode, DwPlan, KeyChoice};
use masterkey_train::dw_op::Layout;
use masterkey_train::layers::{frozen, param, WeightInit};
use masterkey_train::rng::SplitMix;
use masterkey_train::TrainBackend as B;
use serde_json::{json, Value};

fn values<const D: usize>(t: Tensor<burn::backend::Flex, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().expect("f32 values")
}

fn case(stride: usize, learn_scale: bool, rng: &mut SplitMix) -> Value {
    let device = Default::default();
    let (n, c, h, w, k) = (2, 12, 11, 13, 7);
    let mut draw = |len: usize| (0..len).map(|_| rng.normal()).collect::<Vec<f32>>();
    let (scale, offset, bias) = (draw(c), draw(c), draw(c));
    let plan = DwPlan {
        mode: DwMode::Frozen,
        bank: Bank::published8(),
        keys: KeyChoice::RoundRobin,
        learn_scale,
        init_norm: None,
        transferred: None,
    };
    let mut layer = plan.build::<B>(0, c, k, stride, WeightInit::PytorchDefault, &mut SplitMix::new(1), &device);
    layer.scale =
        Some(if learn_scale { param(scale.clone(), [c], &device) } else { frozen(scale.clone(), [c], &device) });
    layer.offset = Some(param(offset.clone(), [c], &device));
    layer.bias = param(bias.clone(), [c], &device);
    let key = values(layer.filter.val().inner());
    let (xs, gs) = (draw(n * c * h * w), draw(n * c * h.div_ceil(stride) * w.div_ceil(stride)));
    let x = Tensor::<B, 4>::from_data(TensorData::new(xs.clone(), [n, c, h, w]), &device).require_grad();
    let y = layer.forward(x.clone(), Layout::ChannelsFirst);
    let g = Tensor::<B, 4>::from_data(TensorData::new(gs.clone(), y.dims()), &device);
    let grads = (y.clone() * g).sum().backward();
    let grad = |t: Tensor<B, 1>| values(t.grad(&grads).expect("a gradient"));
    json!({
        "stride": stride, "kernel": k, "learn_scale": learn_scale, "x_shape": [n, c, h, w], "y_shape": y.dims(),
        "x": xs, "g": gs, "key": key, "scale": scale, "offset": offset, "bias": bias,
        "y": values(y.inner()),
        "dx": values(x.grad(&grads).expect("a gradient")),
        "doffset": grad(layer.offset.as_ref().unwrap().val()),
        "dbias": grad(layer.bias.val()),
        "dscale": if learn_scale { json!(grad(layer.scale.as_ref().unwrap().val())) } else { Value::Null },
    })
}

fn main() {
    let out = std::env::args().nth(1).expect("usage: frozen_dw_fixture OUT.json");
    let mut rng = SplitMix::new(7);
    let cases: Vec<Value> =
        [(1, false), (2, false), (1, true), (2, true)].into_iter().map(|(s, l)| case(s, l, &mut rng)).collect();
    std::fs::write(&out, serde_json::to_vec(&json!({ "cases": cases })).unwrap()).expect("write the fixture");
}
