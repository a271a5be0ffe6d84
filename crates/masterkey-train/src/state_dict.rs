//! A network's weights under PyTorch's names and layouts, saved as
//! safetensors, so that a PyTorch module built like it loads them with
//! `load_state_dict` (the parity benchmark starts both from the same weights).
//!
//! Names follow the module fields (`stages.1.blocks.0.expand.weight`);
//! linear weights are transposed to PyTorch's `[out, in]`. A trainable DW
//! layer is `dw.weight` and `dw.bias`; a frozen one is `dw.key` (the base
//! filters), `dw.scale` (`a`), `dw.offset` (`b`) and `dw.bias`, its applied
//! filter being `scale * key + offset`.

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::Param;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use masterkey_core::{atomic, Error, Result};
use safetensors::tensor::{Dtype, TensorView};

use crate::dw::DwConv;
use crate::layers::{Conv, Dense, LastAxisNorm};
use crate::models::convnext::ConvNext;
use crate::models::Network;

/// One named tensor: shape and row-major values.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedTensor {
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

/// Named tensors in name order.
pub type StateDict = BTreeMap<String, NamedTensor>;

fn values<B: Backend, const D: usize>(t: Tensor<B, D>) -> NamedTensor {
    let shape = t.dims().to_vec();
    NamedTensor { shape, values: t.into_data().convert::<f32>().to_vec().expect("f32 values") }
}

struct Writer<'a>(&'a mut StateDict);

impl Writer<'_> {
    fn put<B: Backend, const D: usize>(&mut self, name: String, p: &Param<Tensor<B, D>>) {
        self.0.insert(name, values(p.val()));
    }
    fn conv<B: Backend>(&mut self, at: &str, c: &Conv<B>) {
        self.put(format!("{at}.weight"), &c.weight);
        if let Some(b) = &c.bias {
            self.put(format!("{at}.bias"), b);
        }
    }
    fn dense<B: Backend>(&mut self, at: &str, d: &Dense<B>) {
        self.0.insert(format!("{at}.weight"), values(d.weight.val().transpose()));
        self.put(format!("{at}.bias"), &d.bias);
    }
    fn norm<B: Backend>(&mut self, at: &str, n: &LastAxisNorm<B>) {
        self.put(format!("{at}.weight"), &n.gamma);
        self.put(format!("{at}.bias"), &n.beta);
    }
    fn dw<B: Backend>(&mut self, at: &str, dw: &DwConv<B>) {
        self.put(format!("{at}.bias"), &dw.bias);
        match (&dw.scale, &dw.offset) {
            // PyTorch has no scale-space layer: the rendered filters, as a plain DW conv's.
            _ if dw.scalespace.is_some() => {
                self.0.insert(format!("{at}.weight"), values(dw.effective_filter()));
            }
            (Some(scale), Some(offset)) => {
                self.put(format!("{at}.key"), &dw.filter);
                self.put(format!("{at}.scale"), scale);
                self.put(format!("{at}.offset"), offset);
            }
            _ => self.put(format!("{at}.weight"), &dw.filter),
        }
    }
}

fn convnext<B: Backend>(m: &ConvNext<B>, out: &mut StateDict) {
    let mut w = Writer(out);
    w.conv("stem", &m.stem);
    w.norm("stem_norm", &m.stem_norm);
    for (s, stage) in m.stages.iter().enumerate() {
        if let Some(down) = &stage.downsample {
            w.norm(&format!("stages.{s}.downsample.norm"), &down.norm);
            w.conv(&format!("stages.{s}.downsample.conv"), &down.conv);
        }
        for (b, block) in stage.blocks.iter().enumerate() {
            let at = format!("stages.{s}.blocks.{b}");
            w.dw(&format!("{at}.dw"), &block.dw);
            w.norm(&format!("{at}.norm"), &block.norm);
            w.dense(&format!("{at}.expand"), &block.expand);
            if let Some(grn) = &block.grn {
                w.put(format!("{at}.grn.gamma"), &grn.gamma);
                w.put(format!("{at}.grn.beta"), &grn.beta);
            }
            w.dense(&format!("{at}.project"), &block.project);
            if let Some(gamma) = &block.layer_scale {
                w.put(format!("{at}.layer_scale"), gamma);
            }
        }
    }
    w.norm("head_norm", &m.head_norm);
    w.dense("head", &m.head);
}

/// The weights of `model` under PyTorch names (ConvNeXt networks only).
pub fn state_dict<B: Backend>(model: &Network<B>) -> Result<StateDict> {
    let mut out = StateDict::new();
    match model {
        Network::ConvNext(m) => convnext(m, &mut out),
        _ => return Err(Error::Other("PyTorch-named weights are written for ConvNeXt networks only".into())),
    }
    Ok(out)
}

/// Writes `dict` as a safetensors file (f32, names sorted), atomically.
pub fn save(dict: &StateDict, path: &Path) -> Result<()> {
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = dict
        .iter()
        .map(|(name, t)| (name.clone(), t.values.iter().flat_map(|v| v.to_le_bytes()).collect(), t.shape.clone()))
        .collect();
    let views = bytes
        .iter()
        .map(|(name, data, shape)| {
            TensorView::new(Dtype::F32, shape.clone(), data).map(|v| (name.clone(), v)).map_err(|e| e.to_string())
        })
        .collect::<std::result::Result<Vec<_>, String>>()
        .map_err(|e| Error::invalid(path, e))?;
    let serialized = safetensors::serialize(views, None).map_err(|e| Error::invalid(path, e.to_string()))?;
    atomic::write_file(path, &serialized)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dw::{DwMode, DwPlan};
    use crate::models::ModelSpec;
    use crate::testing::Cpu;
    use masterkey_core::Bank;

    #[test]
    fn convnext_weights_get_pytorch_names_and_layouts_and_round_trip_through_safetensors() {
        let mut spec = ModelSpec::named("convnext-atto", 1, 10, true).unwrap();
        (spec.depths, spec.dims) = (vec![1, 1], vec![8, 16]);
        for (mode, dw_names) in [(DwMode::Trainable, vec!["weight"]), (DwMode::Frozen, vec!["key", "scale", "offset"])]
        {
            let plan = DwPlan { mode, ..DwPlan::trainable(Bank::published8()) };
            let net = Network::<Cpu>::new(&spec, &plan, 3, &Default::default());
            let dict = state_dict(&net).unwrap();
            for name in dw_names {
                assert!(dict.contains_key(&format!("stages.1.blocks.0.dw.{name}")), "{mode}: no dw.{name}");
            }
            let Network::ConvNext(m) = &net else { unreachable!() };
            let expand = &dict["stages.1.blocks.0.expand.weight"];
            assert_eq!(expand.shape, vec![64, 16]);
            let ours: Vec<f32> = m.stages[1].blocks[0].expand.weight.val().into_data().to_vec().unwrap();
            // PyTorch's [out, in] is the transpose of burn's [in, out].
            assert_eq!(expand.values[5 * 16 + 3], ours[3 * 64 + 5]);
            assert_eq!(dict["stages.1.downsample.conv.weight"].shape, vec![16, 8, 2, 2]);

            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("init.safetensors");
            save(&dict, &path).unwrap();
            let bytes = std::fs::read(&path).unwrap();
            let read = safetensors::SafeTensors::deserialize(&bytes).unwrap();
            assert_eq!(read.names().len(), dict.len());
            let head = read.tensor("head.weight").unwrap();
            assert_eq!(head.shape(), &[10, 16]);
            let first = f32::from_le_bytes(head.data()[..4].try_into().unwrap());
            assert_eq!(first, dict["head.weight"].values[0]);
        }
    }
}
