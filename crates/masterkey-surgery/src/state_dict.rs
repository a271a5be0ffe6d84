//! A model's state dict held in memory: every float tensor by name. Both the
//! network and the filter replacement work on this form, so a replaced model
//! is the same dict with other depthwise values.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use masterkey_core::{atomic, DwLayer, Error, Result};
use masterkey_formats::NamedTensor;
use safetensors::tensor::{Dtype, TensorView};

#[derive(Debug, Clone)]
pub struct StateDict {
    /// The file it was read from, named in every error.
    pub source: PathBuf,
    tensors: Vec<NamedTensor>,
    index: HashMap<String, usize>,
}

impl StateDict {
    /// Reads every float tensor of a PyTorch checkpoint or safetensors file.
    pub fn read(path: &Path) -> Result<Self> {
        Ok(StateDict::new(path, masterkey_formats::read_state_dict(path)?))
    }

    pub fn new(source: &Path, tensors: Vec<NamedTensor>) -> Self {
        let index = tensors.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
        StateDict { source: source.to_path_buf(), tensors, index }
    }

    pub fn tensors(&self) -> &[NamedTensor] {
        &self.tensors
    }

    /// The values of tensor `name`, which must have exactly `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<&[f32]> {
        let tensor =
            self.index.get(name).map(|&i| &self.tensors[i]).ok_or_else(|| {
                Error::invalid(&self.source, format!("expected a tensor `{name}` {shape:?}, found none"))
            })?;
        if tensor.shape != shape {
            return Err(Error::invalid(
                &self.source,
                format!("expected tensor `{name}` of shape {shape:?}, found {:?}", tensor.shape),
            ));
        }
        Ok(&tensor.values)
    }

    /// Every depthwise weight (`[C, 1, kh, kw]` with a kernel larger than 1x1,
    /// found by shape as the readers do), in the dict's order.
    pub fn depthwise_layers(&self) -> Result<Vec<DwLayer>> {
        self.tensors
            .iter()
            .filter_map(|t| {
                let (channels, kernel) = masterkey_formats::dw_shape(&t.name, &t.shape)?;
                Some(
                    DwLayer::new(t.name.as_str(), kernel, channels, t.values.clone())
                        .map_err(|e| Error::invalid(&self.source, e)),
                )
            })
            .collect()
    }

    /// Overwrites the values of a depthwise layer read by
    /// [`StateDict::depthwise_layers`] (same name, same number of weights).
    pub fn set_layer(&mut self, layer: &DwLayer) -> Result<()> {
        let tensor = self.index.get(&layer.name).map(|&i| &mut self.tensors[i]);
        match tensor {
            Some(t) if t.values.len() == layer.weights.len() => {
                t.values.copy_from_slice(&layer.weights);
                Ok(())
            }
            _ => Err(Error::invalid(
                &self.source,
                format!("expected a tensor `{}` of {} values to replace, found none", layer.name, layer.weights.len()),
            )),
        }
    }

    /// Writes every tensor as f32 safetensors under its own name and shape
    /// (atomically), with `metadata` in the header.
    pub fn save_safetensors(&self, path: &Path, metadata: BTreeMap<String, String>) -> Result<()> {
        let bytes: Vec<Vec<u8>> =
            self.tensors.iter().map(|t| t.values.iter().flat_map(|v| v.to_le_bytes()).collect()).collect();
        let views = self
            .tensors
            .iter()
            .zip(&bytes)
            .map(|(t, data)| {
                TensorView::new(Dtype::F32, t.shape.clone(), data)
                    .map(|view| (t.name.as_str(), view))
                    .map_err(|e| Error::invalid(path, format!("tensor `{}`: {e}", t.name)))
            })
            .collect::<Result<Vec<_>>>()?;
        let serialized = masterkey_core::safetensors_out::serialize_sorted(views, Some(metadata))
            .map_err(|e| Error::invalid(path, format!("writing safetensors: {e}")))?;
        atomic::write_file(path, &serialized)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use masterkey_core::KernelSize;

    fn tensor(name: &str, shape: &[usize], values: Vec<f32>) -> NamedTensor {
        NamedTensor { name: name.into(), shape: shape.to_vec(), values }
    }

    fn sample() -> StateDict {
        StateDict::new(
            Path::new("m.pth"),
            vec![
                tensor("stem.weight", &[2, 1, 3, 3], (0..18).map(|v| v as f32).collect()),
                tensor("b.dw.weight", &[2, 1, 3, 3], (0..18).map(|v| -(v as f32)).collect()),
                tensor("b.pw.weight", &[2, 2, 1, 1], vec![1.0; 4]),
                tensor("b.bias", &[2], vec![0.5, -0.5]),
            ],
        )
    }

    #[test]
    fn depthwise_layers_are_found_by_shape_and_replaced_by_name() {
        let mut sd = sample();
        let layers = sd.depthwise_layers().unwrap();
        assert_eq!(layers.len(), 1, "the stem has a DW shape but is a stem");
        assert_eq!(
            (layers[0].name.as_str(), layers[0].kernel, layers[0].channels),
            ("b.dw.weight", KernelSize::square(3), 2)
        );
        let mut replaced = layers[0].clone();
        replaced.weights.iter_mut().for_each(|w| *w = 7.0);
        sd.set_layer(&replaced).unwrap();
        assert_eq!(sd.get("b.dw.weight", &[2, 1, 3, 3]).unwrap(), &[7.0; 18]);
        replaced.name = "missing".into();
        assert!(sd.set_layer(&replaced).unwrap_err().to_string().contains("m.pth"));
    }

    #[test]
    fn get_names_the_file_and_both_shapes() {
        let sd = sample();
        let err = sd.get("b.bias", &[3]).unwrap_err().to_string();
        assert!(err.contains("m.pth") && err.contains("[3]") && err.contains("[2]"), "{err}");
        let err = sd.get("nope", &[1]).unwrap_err().to_string();
        assert!(err.contains("`nope`") && err.contains("found none"), "{err}");
    }

    #[test]
    fn safetensors_round_trip_keeps_names_shapes_and_values() {
        let sd = sample();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.safetensors");
        sd.save_safetensors(&path, BTreeMap::from([("bank".to_string(), "published8".to_string())])).unwrap();
        let back = StateDict::read(&path).unwrap();
        for t in sd.tensors() {
            assert_eq!(back.get(&t.name, &t.shape).unwrap(), t.values.as_slice(), "{}", t.name);
        }
        assert_eq!(back.tensors().len(), sd.tensors().len());
    }
}
