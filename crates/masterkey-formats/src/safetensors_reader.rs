use std::path::Path;
use masterkey_core::{DwLayer, Error, Result};

pub fn read_single(path: &Path) -> Result<Vec<DwLayer>> {
    Err(Error::invalid(path, "safetensors reader: in progress"))
}
pub fn read_sharded(path: &Path) -> Result<Vec<DwLayer>> {
    Err(Error::invalid(path, "safetensors reader: in progress"))
}
