use masterkey_core::{DwLayer, Error, Result};
use std::path::Path;

pub fn read(path: &Path) -> Result<Vec<DwLayer>> {
    Err(Error::invalid(path, "reader: in progress"))
}
