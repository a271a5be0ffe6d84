use std::path::Path;
use masterkey_core::{DwLayer, Error, Result};

pub fn read(path: &Path) -> Result<Vec<DwLayer>> {
    Err(Error::invalid(path, "reader: in progress"))
}
