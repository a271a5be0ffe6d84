//! Outputs are written beside their destination and renamed into place, so a
//! failed or killed run never leaves a partial file that looks complete.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Writes `bytes` to `path` atomically.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    write_file_with(path, |f| f.write_all(bytes))
}

/// Runs `fill` on a temporary file next to `path`, then renames it over `path`.
pub fn write_file_with(path: &Path, fill: impl FnOnce(&mut fs::File) -> std::io::Result<()>) -> Result<()> {
    let dir = parent_of(path);
    fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let mut tmp =
        tempfile::Builder::new().prefix(".masterkey-partial-").tempfile_in(&dir).map_err(|e| Error::io(&dir, e))?;
    set_mode(tmp.path(), 0o644)?;
    fill(tmp.as_file_mut()).map_err(|e| Error::io(path, e))?;
    tmp.as_file().sync_all().map_err(|e| Error::io(path, e))?;
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}

/// Fills a temporary directory next to `path`, then moves it to `path`,
/// replacing whatever was there only once the new content is complete.
pub fn write_dir_with(path: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let dir = parent_of(path);
    fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let tmp =
        tempfile::Builder::new().prefix(".masterkey-partial-").tempdir_in(&dir).map_err(|e| Error::io(&dir, e))?;
    set_mode(tmp.path(), 0o755)?;
    fill(tmp.path())?;
    if path.exists() {
        let old =
            tempfile::Builder::new().prefix(".masterkey-old-").tempdir_in(&dir).map_err(|e| Error::io(&dir, e))?;
        let parked = old.path().join("previous");
        fs::rename(path, &parked).map_err(|e| Error::io(path, e))?;
        fs::rename(tmp.keep(), path).map_err(|e| Error::io(path, e))?;
        drop(old);
    } else {
        fs::rename(tmp.keep(), path).map_err(|e| Error::io(path, e))?;
    }
    Ok(())
}

/// Temporary files and folders are created private (0600 / 0700); outputs get
/// the usual modes instead.
fn set_mode(path: &Path, mode: u32) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|e| Error::io(path, e))?;
    }
    #[cfg(not(unix))]
    let _ = (path, mode);
    Ok(())
}
