use masterkey_core::{DwLayer, Error, Result};
use std::path::Path;

pub fn read_zip(path: &Path) -> Result<Vec<DwLayer>> {
    Err(Error::invalid(path, "torch reader: in progress"))
}
pub fn read_legacy(path: &Path) -> Result<Vec<DwLayer>> {
    Err(Error::invalid(path, "torch reader: in progress"))
}
